//! Test and demo support: fake downstream APIs (axum on 127.0.0.1:0) that follow the documented
//! vendor APIs closely enough that a real account would accept the same requests, plus broker and
//! ledger helpers so each test gets its own topics and database, and the sink items sink tests
//! deliver (`items`).
//!
//! Owns: fakes and fixtures. Must not: be a dependency of production code paths (only tests, benches
//! and the demo's fake-downstreams binary use it).

#![forbid(unsafe_code)]

pub mod audiences;
pub mod broker;
pub mod downstreams;
pub mod hubspot;
pub mod items;
pub mod late;
pub mod newsletter;
pub mod partner;
pub mod postgres;
pub mod recorded;
pub mod registry;
pub mod webhooks;
