//! The delivery layer shared by all sinks: the `Sink` trait, the per-item `Outcome`, and the one
//! place that classifies HTTP results (retryable, refused or permanent) and reads `Retry-After`, and
//! `Destination`: rate limits, daily budget, concurrency bound and the `Retry-After` gate per account.
//! And the `driver` every sink delivers through: sending in order, hold-back of a person whose
//! change failed, stopping a lane that cannot take more, the merge of per-part outcomes.
//! Also the configuration primitives every sink uses: `Secret` (never shown by `Debug`) and the one
//! configuration error (`ConfigError`, `ConfigProblem`).
//!
//! Owns: the contract between the runtime and the sinks, and the shared HTTP front of every sink.
//! Must not: name a concrete sink, retry, or know about Kafka and the ledger. The only waiting it
//! does is for a rate-limit permit or a `Retry-After` pause.

#![forbid(unsafe_code)]

mod classify;
mod config_error;
mod destination;
pub mod driver;
mod join;
mod outcome;
mod redact;
mod secret;
mod sink;

pub use classify::{classify_status, classify_transport, parse_retry_after};
pub use config_error::{check_https_url, ConfigError, ConfigProblem, ConfigProblems};
pub use destination::{
    Destination, DestinationConfig, DestinationStats, LatencyHistogram, Reply, LATENCY_BUCKETS,
};
pub use join::join_all;
pub use outcome::{Outcome, OutcomeClass};
pub use redact::{body_excerpt, redact_emails};
pub use secret::Secret;
pub use sink::{BoxFuture, Change, Sink, SinkItem, Target};
