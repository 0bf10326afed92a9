//! The audiences sink: keeps ad-platform audiences in line with consent, sending only hashes.
//!
//! - grant of a purpose → add the person to the purpose's audiences;
//! - withdrawal of a purpose → remove them from those audiences;
//! - global unsubscribe and erasure → remove them from every configured audience.
//!
//! The person is identified by SHA-256 of their email (and, where an audience takes it, phone),
//! normalized the way each platform asks (`relay_events::normalize`). Raw identifiers never leave
//! the process, and never appear in a log line or an outcome reason.
//!
//! Platforms: Meta Custom Audiences, Google Customer Match through the Data Manager API, LinkedIn
//! DMP segments, X custom audiences, and `generic`: a network we ship no client for, spoken to over
//! a small JSON contract (docs/vendors/generic-audience.md; XING, which the privacy policy names,
//! offers no audience API at all: docs/vendors/xing.md). Audiences on one platform account share one
//! `relay_delivery::Destination` (rate limit, daily budget, `Retry-After` pause).
//!
//! Layout: `config` (the `[sinks.audiences]` section), `platform` (`AudiencePlatform`, what every
//! platform module provides), `request` (items → per-audience adds and removes, hashing, the
//! request shape), `meta` / `google` / `linkedin` / `x` / `generic` (each platform's
//! payloads and the mapping of its answers to outcomes), `client` (the requests in order, one
//! audience at a time, and sending them; the `relay_delivery::driver` runs them, stops an account
//! once a whole request to it was unavailable (429, `Retry-After`, unreachable), unanswered or
//! refused, and folds the outcomes per item).
//!
//! Credentials: Meta, Google, LinkedIn and generic audiences take one `token`; X signs every request with OAuth 1.0a
//! (HMAC-SHA1, `oauth1`) from four credentials (consumer key and secret, access token and secret).
//! The binary fills each from [`credential_env_var`]. Google's access tokens expire hourly; the
//! binary must keep `token` fresh.
//!
//! Owns: the platforms' payloads and response shapes. Must not: sleep, retry, or put a raw email
//! or phone into a request, a log line or an outcome reason.

#![forbid(unsafe_code)]

mod client;
mod config;
mod generic;
mod google;
mod linkedin;
mod meta;
mod oauth1;
mod platform;
mod reconcile;
mod request;
mod x;

pub use client::AudiencesSink;
pub use config::{
    credential_env_var, token_env_var, AudienceConfig, AudiencesConfig, GenericAudience,
    GoogleAudience, LinkedInAudience, MetaAudience, MetaSchema, XAudience,
};
pub use platform::AudiencePlatform;
pub use reconcile::{BatchPosition, LedgerHash};
pub use relay_delivery::{ConfigError, ConfigProblem};
