//! The HubSpot sink: makes HubSpot's email subscription statuses follow consent events.
//!
//! - grant of a purpose → v4 batch write `SUBSCRIBED` for each of the purpose's subscription types,
//!   with the configured legal basis and an explanation naming the notice version;
//! - withdrawal of a purpose → the same with `UNSUBSCRIBED`;
//! - global unsubscribe → v4 batch unsubscribe-all;
//! - erasure → CRM GDPR delete (HubSpot blocklists the address even when no contact exists).
//!
//! Layout: `config` (the `[sinks.hubspot]` section), `request` (items → requests: payload shapes,
//! batch limits, per-contact order), `client` (sending, and mapping answers to one outcome per item).
//!
//! Owns: HubSpot's payloads and response shapes. Must not: sleep, retry, log an email address, or
//! put one into an outcome reason (reasons reach the ledger and the DLQ).

mod client;
mod config;
mod request;

pub use client::HubSpotSink;
pub use config::{ConfigError, ConfigProblem, HubSpotConfig, LegalBasis, PurposeConfig};
