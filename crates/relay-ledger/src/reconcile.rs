//! What `consent-relay reconcile` asks of the ledger: the newest decision per (subject, target)
//! of one sink, with the email hash the consent log holds for the subject, and a record of each
//! repair it made. It never decides versions: a repair re-sends a decision the ledger holds.

use relay_events::Action;

use crate::{codec, now_ms, AnyLedger, DeliveryKey, LedgerError, Status};

/// Binds: sink. The subject's email hashes are the deciding event's, or else those of the
/// subject's newest logged event that carried an email (an erasure or a global unsubscribe may
/// come without one).
const SINK_STATES: &str = "SELECT s.subject_id, s.target, s.action, s.occurred_at_ms, s.event_id,
    e.email_sha256, e.google_email_sha256, e.google_email_plus_sha256,
    (SELECT c.notice_version FROM consent_log c WHERE c.event_id = s.event_id) AS notice_version
FROM subject_state s
LEFT JOIN consent_log e ON e.event_id = COALESCE(
    (SELECT c.event_id FROM consent_log c
      WHERE c.event_id = s.event_id AND c.email_sha256 IS NOT NULL),
    (SELECT c.event_id FROM consent_log c
      WHERE c.subject_id = s.subject_id AND c.email_sha256 IS NOT NULL
      ORDER BY c.occurred_at_ms DESC, c.recorded_at_ms DESC LIMIT 1))
WHERE s.sink = $1 ORDER BY s.subject_id, s.target";

/// Binds: name.
const LAST_FINISHED: &str = "SELECT finished_at_ms FROM reconcile_runs WHERE name = $1";

/// Binds: name, finished_at_ms. The latest write wins, so that a time recorded by a clock that
/// was ahead is corrected by the next run.
const RECORD_FINISHED: &str = "INSERT INTO reconcile_runs (name, finished_at_ms) VALUES ($1, $2)
ON CONFLICT (name) DO UPDATE SET finished_at_ms = excluded.finished_at_ms";

/// Repairs per transaction: a large audience's removals are tens of thousands, and each
/// transaction holds SQLite's write lock (or the subjects' locks) while it lasts.
const REPAIRS_PER_TRANSACTION: usize = 500;

/// A decision reconcile re-sent to a downstream that did not show it, and what the downstream
/// answered (applied, or awaiting the person's confirmation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    pub key: DeliveryKey,
    pub subject_id: String,
    pub status: Status,
}

/// The newest decision for one (subject, target) of a sink, as reconcile compares it with a
/// downstream. Never the raw address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkState {
    pub subject_id: String,
    /// A purpose name, or `*` for the whole subject.
    pub target: String,
    pub action: Action,
    pub occurred_at_ms: i64,
    pub event_id: String,
    /// SHA-256 of the normalized email (`relay_events::normalize::email_sha256`).
    pub email_sha256: Option<String>,
    /// Google's hashes of the same address (`relay_ledger::ConsentRecord::google_email_sha256`),
    /// from the same consent-log entry; `None` where that entry predates them.
    pub google_email_sha256: Option<String>,
    pub google_email_plus_sha256: Option<String>,
    /// The notice version of the deciding event (for re-asserting a grant).
    pub notice_version: Option<String>,
}

type Row = (
    String,
    String,
    String,
    i64,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

impl AnyLedger {
    /// Every (subject, target) state of `sink` (a destination name: `hubspot`,
    /// `audiences.<audience>`, `newsletter.<list>`), ordered by subject and target.
    pub async fn sink_states(&self, sink: &str) -> Result<Vec<SinkState>, LedgerError> {
        let rows: Vec<Row> = match self {
            AnyLedger::Sqlite(l) => {
                sqlx::query_as(SINK_STATES)
                    .bind(sink)
                    .fetch_all(l.pool())
                    .await?
            }
            AnyLedger::Postgres(l) => {
                sqlx::query_as(SINK_STATES)
                    .bind(sink)
                    .fetch_all(l.pool())
                    .await?
            }
        };
        rows.into_iter()
            .map(|row| {
                let (subject_id, target, action, occurred_at_ms, event_id) =
                    (row.0, row.1, row.2, row.3, row.4);
                Ok(SinkState {
                    subject_id,
                    target,
                    action: codec::action(&action)?,
                    occurred_at_ms,
                    event_id,
                    email_sha256: row.5,
                    google_email_sha256: row.6,
                    google_email_plus_sha256: row.7,
                    notice_version: row.8,
                })
            })
            .collect()
    }
}

impl AnyLedger {
    /// When the reconcile `name` (its `--sink`, or its `[reconcile.<name>]` schedule) last
    /// finished, in ms since the epoch.
    pub async fn reconcile_finished(&self, name: &str) -> Result<Option<i64>, LedgerError> {
        Ok(match self {
            AnyLedger::Sqlite(l) => {
                sqlx::query_scalar(LAST_FINISHED)
                    .bind(name)
                    .fetch_optional(l.pool())
                    .await?
            }
            AnyLedger::Postgres(l) => {
                sqlx::query_scalar(LAST_FINISHED)
                    .bind(name)
                    .fetch_optional(l.pool())
                    .await?
            }
        })
    }

    /// Records repairs on the deliveries of the decisions they re-sent: what
    /// `ledger audit` reports as done there and when, and what `ingest` recognises as the relay's
    /// own change when the vendor reports it back.
    pub async fn record_repairs(&self, repairs: &[Repair]) -> Result<(), LedgerError> {
        let now = now_ms();
        // The same delivery twice in one statement would be an error in PostgreSQL ("cannot
        // affect row a second time"): each round holds a key once.
        let rounds = crate::ops::rounds(repairs, |r| &r.key);
        let rows = |chunk: &[&Repair]| {
            crate::ops::rows_json(chunk.iter().map(|r| {
                serde_json::json!([
                    codec::uuid_text(r.key.event_id),
                    r.key.sink,
                    r.key.target,
                    r.subject_id,
                    r.status.as_str()
                ])
            }))
        };
        // Each transaction taken as the delivery path takes its own: SQLite's write lock first,
        // PostgreSQL's subject locks (sorted), so that a repair never deadlocks with a claim or
        // finish of the same rows.
        for round in &rounds {
            for chunk in round.chunks(REPAIRS_PER_TRANSACTION) {
                match self {
                    AnyLedger::Sqlite(l) => {
                        let mut tx = l.write_tx().await?;
                        sqlx::query(crate::sets::SQLITE.record_repairs)
                            .bind(rows(chunk))
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                        tx.commit().await?;
                    }
                    AnyLedger::Postgres(l) => {
                        let subjects = chunk.iter().map(|r| r.subject_id.as_str());
                        let mut tx = l.locked_tx(subjects).await?;
                        sqlx::query(crate::sets::POSTGRES.record_repairs)
                            .bind(rows(chunk))
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                        tx.commit().await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Records that the reconcile `name` finished at `at_ms`.
    pub async fn record_reconcile_finished(
        &self,
        name: &str,
        at_ms: i64,
    ) -> Result<(), LedgerError> {
        match self {
            AnyLedger::Sqlite(l) => {
                sqlx::query(RECORD_FINISHED)
                    .bind(name)
                    .bind(at_ms)
                    .execute(l.pool())
                    .await?;
            }
            AnyLedger::Postgres(l) => {
                sqlx::query(RECORD_FINISHED)
                    .bind(name)
                    .bind(at_ms)
                    .execute(l.pool())
                    .await?;
            }
        }
        Ok(())
    }
}

/// Of a purpose's own state and the subject's whole-subject (`*`) state, the one that decides:
/// the newer by `occurred_at`, ties going to the stronger action (erasure, then withdrawal), as the
/// version rule orders them.
pub fn effective<'a>(
    purpose: Option<&'a SinkState>,
    all: Option<&'a SinkState>,
) -> Option<&'a SinkState> {
    fn rank(a: Action) -> u8 {
        match a {
            Action::Grant => 0,
            Action::Withdraw => 1,
            Action::Erase => 2,
        }
    }
    match (purpose, all) {
        (Some(p), Some(a)) => {
            if (a.occurred_at_ms, rank(a.action)) >= (p.occurred_at_ms, rank(p.action)) {
                Some(a)
            } else {
                Some(p)
            }
        }
        (p, a) => p.or(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(target: &str, action: Action, at: i64) -> SinkState {
        SinkState {
            subject_id: "s".into(),
            target: target.into(),
            action,
            occurred_at_ms: at,
            event_id: "e".into(),
            email_sha256: None,
            google_email_sha256: None,
            google_email_plus_sha256: None,
            notice_version: None,
        }
    }

    #[test]
    fn the_newer_state_decides_and_ties_go_to_less_consent() {
        let grant = st("news", Action::Grant, 10);
        let unsub = st("*", Action::Withdraw, 10);
        assert_eq!(effective(Some(&grant), Some(&unsub)), Some(&unsub));
        let later = st("news", Action::Grant, 11);
        assert_eq!(effective(Some(&later), Some(&unsub)), Some(&later));
        assert_eq!(effective(None, Some(&unsub)), Some(&unsub));
        assert_eq!(effective(None, None), None);
    }
}
