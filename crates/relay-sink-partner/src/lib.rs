//! The partner sink: hands leads to partners (in-GmbH for "sphinx open online" is the first) and
//! tells them when consent ends, as webhooks after the Standard Webhooks spec v1.
//!
//! Each partner is gated by one consent purpose and has an allow-list of contact fields:
//!
//! | event | payload `type` | `data` |
//! |---|---|---|
//! | grant of the partner's purpose | `lead.consented` | `subject_id`, `event_id`, `purpose`, `notice_version`, `occurred_at` and the allow-listed contact fields the event has |
//! | withdrawal of it, or a global unsubscribe | `consent.withdrawn` (stop using the lead, delete it) | `subject_id`, `event_id`, `purpose`, `occurred_at` |
//! | erasure | `subject.erased` | `subject_id`, `event_id`, `occurred_at` |
//!
//! Nothing outside the allow-list ever leaves. Notices name the person by `subject_id` only, the
//! key every lead carries: a global unsubscribe or an erasure goes to every partner, and a partner
//! that never had the person must not learn their address from it.
//!
//! Every request carries `webhook-id` (our event id: the partner's idempotency key, the same on
//! every redelivery), `webhook-timestamp` (the attempt, unix seconds) and `webhook-signature`
//! (`v1,` + base64 HMAC-SHA256 of `id.timestamp.body` with the partner's `whsec_` secret). The
//! body's `timestamp` is when the event occurred, so a redelivery sends the same bytes.
//!
//! Answers map through the delivery layer's classifier: 2xx applied; 429 and 5xx retryable with
//! `Retry-After`; 410 (the partner disabled the endpoint), 401, 403 and any 3xx (redirects are not
//! followed: the endpoint moved) refused, which opens the runtime's circuit and raises an alert
//! instead of retrying forever; other statuses permanent.
//!
//! Layout: `config` (the `[sinks.partner]` section), `request` (items → payloads, the signature),
//! `client` (sending through each partner's `Destination`, one outcome per item).
//!
//! Owns: the webhook contract with partners. Must not: sleep, retry, log contact data, or send a
//! field that is not allow-listed.

#![forbid(unsafe_code)]

mod client;
mod config;
mod request;

pub use client::PartnerSink;
pub use config::{LeadField, PartnerConfig, PartnerSinkConfig};
pub use relay_delivery::{ConfigError, ConfigProblem};
pub use request::{CONSENT_WITHDRAWN, LEAD_CONSENTED, SUBJECT_ERASED};
