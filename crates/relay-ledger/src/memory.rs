//! An in-memory ledger for tests of the code above the ledger (the runtime's batch engine): the
//! same version rule ([`crate::rule::decide`]) and the same write rules as the SQL backends, held
//! in one mutex, so every operation is one atomic step as a transaction is. It is not durable and
//! [`crate::open`] never returns it: a ledger that dies with the process cannot back an offset
//! commit.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::rule::{self, DeliveryState};
use crate::{
    now_ms, Claim, ConsentRecord, Decision, DeliveryKey, DeliveryRow, Finish, InDoubt, Ledger,
    LedgerError, Park, Rejection, Status, SubjectReport, SubjectState, Uncertain,
};

#[derive(Debug, Default)]
pub struct MemoryLedger {
    tables: Mutex<Tables>,
}

#[derive(Debug, Default)]
struct Tables {
    deliveries: BTreeMap<DeliveryKey, Delivery>,
    /// (subject, sink, target) → newest decision.
    states: BTreeMap<(String, String, String), SubjectState>,
    consent_log: BTreeMap<uuid::Uuid, ConsentRecord>,
    rejections: BTreeMap<(String, String, i32, i64), Rejection>,
    /// (subject, sink) → until when a request of unknown fate may land.
    uncertain: BTreeMap<(String, String), i64>,
}

#[derive(Debug, Clone)]
struct Delivery {
    subject_id: String,
    status: Status,
    attempts: u32,
    parks: u32,
    reasserts: u32,
    error_class: Option<String>,
    error: Option<String>,
    updated_at_ms: i64,
}

impl MemoryLedger {
    pub fn new() -> MemoryLedger {
        MemoryLedger::default()
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().expect("memory ledger poisoned")
    }

    /// A delivery's status, for assertions.
    pub fn status(&self, key: &DeliveryKey) -> Option<Status> {
        self.tables().deliveries.get(key).map(|d| d.status)
    }

    /// Every delivery with its status, in key order, for assertions.
    pub fn statuses(&self) -> Vec<(DeliveryKey, Status)> {
        self.tables()
            .deliveries
            .iter()
            .map(|(k, d)| (k.clone(), d.status))
            .collect()
    }
}

impl Ledger for MemoryLedger {
    async fn log_events(&self, records: &[ConsentRecord]) -> Result<Vec<uuid::Uuid>, LedgerError> {
        let mut t = self.tables();
        let mut conflicts = Vec::new();
        for r in records {
            let stored = t.consent_log.entry(r.event_id).or_insert_with(|| r.clone());
            if matches!((&stored.payload_digest, &r.payload_digest), (Some(a), Some(b)) if a != b) {
                conflicts.push(r.event_id);
            }
        }
        Ok(conflicts)
    }

    async fn claim(&self, claims: &[Claim]) -> Result<Vec<Decision>, LedgerError> {
        let now = now_ms();
        let mut t = self.tables();
        let mut known = rule::Known::default();
        for claim in claims {
            if let Some(d) = t.deliveries.get(&claim.key) {
                let state = DeliveryState {
                    status: d.status,
                    attempts: d.attempts,
                    parks: d.parks,
                };
                known.deliveries.insert(claim.key.clone(), state);
            }
            if !known.states.contains_key(&claim.subject_id) {
                let states = t
                    .states
                    .iter()
                    .filter(|((subject, _, _), _)| *subject == claim.subject_id)
                    .map(|(_, s)| s.clone())
                    .collect();
                known.states.insert(claim.subject_id.clone(), states);
            }
        }
        let (decisions, writes) = rule::decide_all(claims, known);
        for (subject, state) in writes.states {
            let key = (subject, state.sink.clone(), state.target.clone());
            t.states.insert(key, state);
        }
        for (key, subject_id, status, attempts, reasserts) in writes.claimed {
            let row = t.deliveries.entry(key).or_insert_with(|| Delivery {
                subject_id,
                status,
                attempts,
                parks: 0,
                reasserts: 0,
                error_class: None,
                error: None,
                updated_at_ms: now,
            });
            row.status = status;
            row.attempts = attempts;
            row.reasserts += reasserts;
            row.updated_at_ms = now;
        }
        Ok(decisions)
    }

    async fn finish(&self, rows: &[Finish]) -> Result<(), LedgerError> {
        let now = now_ms();
        let mut t = self.tables();
        for f in rows {
            let row = t
                .deliveries
                .entry(f.key.clone())
                .or_insert_with(|| Delivery {
                    subject_id: f.subject_id.clone(),
                    status: f.status,
                    attempts: 0,
                    parks: 0,
                    reasserts: 0,
                    error_class: None,
                    error: None,
                    updated_at_ms: now,
                });
            let reached = matches!(
                row.status,
                Status::Applied
                    | Status::AlreadyApplied
                    | Status::AwaitingConfirmation
                    | Status::DeadLettered
            );
            if f.status == Status::Superseded && reached {
                continue;
            }
            row.status = f.status;
            row.error_class.clone_from(&f.error_class);
            row.error.clone_from(&f.error);
            row.updated_at_ms = now;
        }
        Ok(())
    }

    async fn park(&self, rows: &[Park]) -> Result<(), LedgerError> {
        let now = now_ms();
        let mut t = self.tables();
        for p in rows {
            let row = t
                .deliveries
                .entry(p.key.clone())
                .or_insert_with(|| Delivery {
                    subject_id: p.subject_id.clone(),
                    status: Status::InFlight,
                    attempts: 0,
                    parks: 0,
                    reasserts: 0,
                    error_class: None,
                    error: None,
                    updated_at_ms: now,
                });
            if row.status.is_final() {
                continue;
            }
            row.status = Status::Parked;
            row.parks = row.parks.max(p.parks);
            row.error_class = Some("retryable".to_owned());
            row.error = Some(p.error.clone());
            row.updated_at_ms = now;
        }
        Ok(())
    }

    async fn mark_uncertain(&self, marks: &[Uncertain]) -> Result<(), LedgerError> {
        let mut t = self.tables();
        for m in marks {
            let until = t
                .uncertain
                .entry((m.subject_id.clone(), m.sink.clone()))
                .or_insert(m.until_ms);
            *until = (*until).max(m.until_ms);
        }
        Ok(())
    }

    async fn uncertain(
        &self,
        sink: &str,
        subjects: &[String],
        now_ms: i64,
        in_doubt: &InDoubt<'_>,
    ) -> Result<std::collections::HashMap<String, i64>, LedgerError> {
        let t = self.tables();
        let mut bounds: std::collections::HashMap<String, i64> = subjects
            .iter()
            .filter_map(|s| {
                let until = *t.uncertain.get(&(s.clone(), sink.to_owned()))?;
                (until > now_ms).then(|| (s.clone(), until))
            })
            .collect();
        for (key, d) in &t.deliveries {
            let doubtful =
                d.status == Status::InFlight || d.error_class.as_deref() == Some("unknown");
            let until = d.updated_at_ms.saturating_add(in_doubt.window_ms);
            if key.sink == sink
                && doubtful
                && until > now_ms
                && subjects.contains(&d.subject_id)
                && !in_doubt.exclude.contains(&key.event_id)
            {
                let bound = bounds.entry(d.subject_id.clone()).or_insert(until);
                *bound = (*bound).max(until);
            }
        }
        Ok(bounds)
    }

    async fn record_rejections(&self, rejections: &[Rejection]) -> Result<(), LedgerError> {
        let mut t = self.tables();
        for r in rejections {
            t.rejections
                .entry((r.sink.clone(), r.topic.clone(), r.partition, r.offset))
                .or_insert_with(|| r.clone());
        }
        Ok(())
    }

    async fn consent_for_purpose(&self, purpose: &str) -> Result<Vec<ConsentRecord>, LedgerError> {
        let t = self.tables();
        let mut out: Vec<ConsentRecord> = t
            .consent_log
            .values()
            .filter(|r| r.purposes.iter().any(|p| p == purpose || p == "*"))
            .cloned()
            .collect();
        out.sort_by(|a, b| {
            (&a.subject_id, a.occurred_at_ms, a.event_id).cmp(&(
                &b.subject_id,
                b.occurred_at_ms,
                b.event_id,
            ))
        });
        Ok(out)
    }

    async fn subject_report(&self, subject_id: &str) -> Result<SubjectReport, LedgerError> {
        let t = self.tables();
        let mut consent_log: Vec<ConsentRecord> = t
            .consent_log
            .values()
            .filter(|r| r.subject_id == subject_id)
            .cloned()
            .collect();
        consent_log.sort_by_key(|r| (r.occurred_at_ms, r.event_id));
        let mut deliveries: Vec<DeliveryRow> = t
            .deliveries
            .iter()
            .filter(|(_, d)| d.subject_id == subject_id)
            .map(|(k, d)| DeliveryRow {
                key: k.clone(),
                status: d.status,
                attempts: d.attempts,
                reasserts: d.reasserts,
                error_class: d.error_class.clone(),
                error: d.error.clone(),
                updated_at_ms: d.updated_at_ms,
                // Reconcile runs against the SQL backends only.
                repairs: 0,
                repaired_at_ms: None,
            })
            .collect();
        deliveries.sort_by(|a, b| (a.updated_at_ms, &a.key).cmp(&(b.updated_at_ms, &b.key)));
        Ok(SubjectReport {
            consent_log,
            deliveries,
            state: t
                .states
                .iter()
                .filter(|((s, _, _), _)| s == subject_id)
                .map(|(_, s)| s.clone())
                .collect(),
            rejections: t
                .rejections
                .values()
                .filter(|r| r.subject_id.as_deref() == Some(subject_id))
                .cloned()
                .collect(),
        })
    }
}
