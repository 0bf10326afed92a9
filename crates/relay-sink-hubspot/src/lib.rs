//! The HubSpot sink: makes HubSpot's email subscription statuses follow consent events.
//!
//! - grant of a purpose → for purposes with `create_contact`, first a CRM batch upsert of the
//!   contact by email with only the allow-listed `contact_properties`; then a v4 batch write
//!   `SUBSCRIBED` for each of the purpose's subscription types, with the configured legal basis and
//!   an explanation naming the notice version (not sent when the upsert failed);
//! - withdrawal of a purpose → the same write with `UNSUBSCRIBED`;
//! - global unsubscribe → v4 batch unsubscribe-all;
//! - erasure → CRM GDPR delete (HubSpot blocklists the address even when no contact exists).
//!
//! Every request goes through one `relay_delivery::Destination` per sink: the account's burst
//! window (`[limits]`, 100 per 10 s by default), `Retry-After` and the pauses HubSpot's own
//! rate-limit headers and 429 policies ask for. A refusal (401, 403), a spent daily limit or a
//! request without an answer (timeout, connection failure) ends the delivery: what is left is not
//! sent. After a burst-limit 429 the next request waits out the window instead.
//!
//! Layout: `config` (the `[sinks.hubspot]` section), `request` (items → requests: payload shapes,
//! batch limits, per-contact order), `client` (sending, rate-limit signals, and mapping answers to
//! one outcome per input; `relay_delivery::driver` runs the requests and folds the outcomes per
//! item).
//!
//! Owns: HubSpot's payloads, response shapes and rate-limit signals. Must not: sleep, retry, log an
//! email address, or put one into an outcome reason (reasons reach the ledger and the DLQ).

#![forbid(unsafe_code)]

mod client;
mod config;
mod read;
mod request;

pub use client::HubSpotSink;
pub use config::{ContactProperty, HubSpotConfig, LegalBasis, PurposeConfig};
pub use read::{ContactPage, ReadStatus, BATCH_READ_PATH, LIST_CONTACTS_PATH, READ_PAGE};
pub use relay_delivery::{ConfigError, ConfigProblem};
