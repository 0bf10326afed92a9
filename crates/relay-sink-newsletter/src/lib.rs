//! The newsletter sink: makes newsletter lists at Brevo and Mailchimp follow consent events. Each
//! list names its provider in the config; a purpose maps to one or more lists.
//!
//! | event | Brevo (per list) | Mailchimp (per audience) |
//! |---|---|---|
//! | grant of a purpose | `POST /contacts` with `listIds`, `emailBlacklisted: false`, `updateEnabled` | `PUT …/members/{md5}` `status`/`status_if_new` = `subscribed` |
//! | withdrawal of a purpose | `PUT /contacts/{email}` with `unlinkListIds` | `PUT …/members/{md5}` = `unsubscribed` |
//! | global unsubscribe | the same on every list, plus `emailBlacklisted: true` | `unsubscribed` on every audience |
//! | erasure | `DELETE /contacts/{email}` | `POST …/members/{md5}/actions/delete-permanent` |
//!
//! A grant adds the address at once because the upstream grant of a newsletter purpose is the
//! confirmed double opt-in (see [`NewsletterConfig`]). Where a provider will not re-subscribe:
//! - Mailchimp, a member who unsubscribed (a compliance state): the grant sets it `pending`, which
//!   sends Mailchimp's own opt-in email; the outcome is awaiting confirmation, and the person's
//!   click subscribes them. A member Mailchimp will not even ask (a bounced one, where it refuses
//!   `pending` too) is permanent, with a reason that says the person must use a signup form.
//! - Mailchimp, a permanently deleted address (after an erasure) cannot be re-imported: permanent,
//!   with the same advice.
//! - Brevo re-subscribes a blocklisted contact when the grant sends `emailBlacklisted: false`: the
//!   newer grant is the person's decision, so that is what it does.
//!
//! Requests never carry contact
//! attributes, so Brevo's rename of a blocklisted contact, which would lift the blocklist, cannot
//! happen.
//!
//! Layout: `config` (the `[sinks.newsletter]` section), `request` (items → one call per item and
//! list, grouped by address), `client` (sending through each list's `Destination`, mapping answers
//! to one outcome per item).
//!
//! Owns: the providers' payloads and response shapes. Must not: sleep, retry, log an email
//! address, or put one into an outcome reason (reasons reach the ledger and the DLQ).

#![forbid(unsafe_code)]

mod client;
mod config;
mod read;
mod request;

pub use client::NewsletterSink;
pub use config::{BrevoList, ListConfig, MailchimpList, NewsletterConfig};
pub use read::{ListPage, ListStatus, BREVO_PAGE, MAILCHIMP_PAGE};
pub use relay_delivery::{ConfigError, ConfigProblem};
