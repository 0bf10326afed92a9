//! The delivery layer shared by all sinks: the `Sink` trait, the per-item `Outcome`, and the one
//! place that classifies HTTP results (retryable or permanent) and reads `Retry-After`.
//!
//! Owns: the contract between the runtime and the sinks. Must not: name a concrete sink, sleep,
//! retry, or know about Kafka and the ledger.

mod classify;
mod outcome;
mod sink;

pub use classify::{classify_status, classify_transport, parse_retry_after};
pub use outcome::Outcome;
pub use sink::{BoxFuture, Sink, SinkItem, Target};
