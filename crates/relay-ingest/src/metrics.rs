//! Counters per vendor, in the Prometheus text format (the same hand-rolled exposition as
//! relay-runtime's, so the crate needs no metrics library).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::notice::Vendor;

pub const RECEIVED: &str = "consent_relay_ingest_received_total";
pub const VERIFIED: &str = "consent_relay_ingest_verified_total";
pub const REJECTED: &str = "consent_relay_ingest_rejected_total";
pub const PUBLISHED: &str = "consent_relay_ingest_published_total";
pub const UNKNOWN: &str = "consent_relay_ingest_unknown_contacts_total";
pub const IGNORED: &str = "consent_relay_ingest_ignored_total";
pub const FAILED: &str = "consent_relay_ingest_failed_total";
pub const ADDRESS_CHANGES: &str = "consent_relay_ingest_address_changes_total";
pub const POLLS: &str = "consent_relay_ingest_polls_total";

/// Every counter `ingest` exports: name and help.
pub const METRICS: [(&str, &str); 9] = [
    (RECEIVED, "Webhook requests received, per vendor."),
    (
        VERIFIED,
        "Requests whose signature, secret or credentials checked out.",
    ),
    (
        REJECTED,
        "Requests refused with 401, per vendor and reason; nothing was published.",
    ),
    (
        PUBLISHED,
        "Consent events published to Kafka and acknowledged, per vendor.",
    ),
    (
        UNKNOWN,
        "Decisions about people the ledger does not know, recorded (hash only).",
    ),
    (
        IGNORED,
        "Notifications that are no consent decision (or map to no purpose), per reason.",
    ),
    (
        FAILED,
        "Requests answered 5xx (the vendor retries) and poll pages not published, per stage: ledger, lookup, publish.",
    ),
    (
        ADDRESS_CHANGES,
        "Addresses a vendor reported, per outcome: followed, unknown_address (a Mailchimp address change), contact_learned, contact_gone, learn_failed (a HubSpot contact's address, for its privacy deletion).",
    ),
    (
        POLLS,
        "Polls of a vendor's list (`ingest --poll`), per outcome: ok, failed.",
    ),
];

/// (metric, vendor, reason or "") → count.
type Counts = BTreeMap<(&'static str, Vendor, &'static str), u64>;

#[derive(Debug, Clone, Default)]
pub struct Metrics {
    counts: Arc<Mutex<Counts>>,
}

impl Metrics {
    pub fn add(&self, name: &'static str, vendor: Vendor, reason: &'static str, by: u64) {
        if let Ok(mut c) = self.counts.lock() {
            *c.entry((name, vendor, reason)).or_insert(0) += by;
        }
    }

    pub fn get(&self, name: &str, vendor: Vendor) -> u64 {
        self.counts.lock().map_or(0, |c| {
            c.iter()
                .filter(|((n, v, _), _)| *n == name && *v == vendor)
                .map(|(_, n)| n)
                .sum()
        })
    }

    pub fn render(&self) -> String {
        let counts = self.counts.lock().map(|c| c.clone()).unwrap_or_default();
        let mut out = String::new();
        for (name, help) in METRICS {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
            for vendor in Vendor::ALL {
                let rows: Vec<_> = counts
                    .iter()
                    .filter(|((n, v, _), _)| *n == name && *v == vendor)
                    .collect();
                if rows.is_empty() {
                    // Every vendor shows from the start, so a rate() has a baseline.
                    out.push_str(&format!("{name}{{vendor=\"{}\"}} 0\n", vendor.as_str()));
                }
                for ((_, _, reason), n) in rows {
                    if reason.is_empty() {
                        out.push_str(&format!("{name}{{vendor=\"{}\"}} {n}\n", vendor.as_str()));
                    } else {
                        out.push_str(&format!(
                            "{name}{{vendor=\"{}\",reason=\"{reason}\"}} {n}\n",
                            vendor.as_str()
                        ));
                    }
                }
            }
        }
        out
    }
}
