//! What `consent-relay ingest` and `import` ask of the ledger: which subject an email hash
//! belongs to, a record of notifications about people the ledger does not know, and which events
//! are logged already. Kept apart from the claim and finish statements, which it never touches.

use serde::Serialize;
use uuid::Uuid;

use crate::{now_ms, AnyLedger, LedgerError};

/// Binds: email_sha256. The newest decision wins because a person who changed subject ids (a
/// merge upstream) is meant by their latest one.
const SUBJECT_FOR_EMAIL: &str = "SELECT subject_id FROM consent_log WHERE email_sha256 = $1
ORDER BY occurred_at_ms DESC, recorded_at_ms DESC LIMIT 1";

/// Binds: email_sha256. Every subject an address was logged under, newest first (`ledger audit
/// --email` must answer for all of them).
const SUBJECTS_FOR_EMAIL: &str = "SELECT subject_id FROM consent_log WHERE email_sha256 = $1
GROUP BY subject_id ORDER BY MAX(occurred_at_ms) DESC, subject_id";

const INSERT_UNKNOWN: &str = "INSERT INTO ingest_unknown_contacts
    (event_id, vendor, kind, purposes, email_sha256, vendor_ref, occurred_at_ms, recorded_at_ms)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (event_id) DO NOTHING";

const SELECT_UNKNOWN: &str = "SELECT event_id, vendor, kind, purposes, email_sha256, vendor_ref,
    occurred_at_ms, recorded_at_ms
FROM ingest_unknown_contacts ORDER BY recorded_at_ms, event_id";

/// A vendor's notification about someone the ledger has no subject for. Never the raw address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnknownContact {
    /// The event id the notification would have had, derived from the vendor's own id: a retry
    /// of the same notification maps to the same row.
    pub event_id: Uuid,
    /// `hubspot`, `mailchimp`, `brevo`.
    pub vendor: String,
    /// The event type it would have become (`Unsubscribed`, ...).
    pub kind: String,
    /// Purposes it would have named, `["*"]` for all.
    pub purposes: Vec<String>,
    /// SHA-256 of the normalized email, when the notification carried one.
    pub email_sha256: Option<String>,
    /// The vendor's own reference (list id, contact id, event id), for following up there.
    pub vendor_ref: String,
    pub occurred_at_ms: i64,
    /// Set by the ledger; ignored on insert.
    pub recorded_at_ms: i64,
}

type UnknownRow = (
    String,
    String,
    String,
    String,
    Option<String>,
    String,
    i64,
    i64,
);

fn from_row(row: UnknownRow) -> Result<UnknownContact, LedgerError> {
    let (event_id, vendor, kind, purposes, email_sha256, vendor_ref, occurred_at_ms, recorded) =
        row;
    Ok(UnknownContact {
        event_id: Uuid::parse_str(&event_id)
            .map_err(|e| LedgerError::Corrupt(format!("ingest_unknown_contacts.event_id: {e}")))?,
        vendor,
        kind,
        purposes: serde_json::from_str(&purposes)
            .map_err(|e| LedgerError::Corrupt(format!("ingest_unknown_contacts.purposes: {e}")))?,
        email_sha256,
        vendor_ref,
        occurred_at_ms,
        recorded_at_ms: recorded,
    })
}

/// How many ids one `IN (...)` list binds; far below both backends' parameter limits.
const IDS_PER_QUERY: usize = 500;

impl AnyLedger {
    /// Those of `event_ids` the consent log has, i.e. events some consumer has seen.
    pub async fn logged_event_ids(
        &self,
        event_ids: &[Uuid],
    ) -> Result<std::collections::HashSet<Uuid>, LedgerError> {
        let mut out = std::collections::HashSet::new();
        for chunk in event_ids.chunks(IDS_PER_QUERY) {
            let list: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT event_id FROM consent_log WHERE event_id IN ({})",
                list.join(", ")
            );
            let ids: Vec<String> = match self {
                AnyLedger::Sqlite(l) => {
                    let mut q = sqlx::query_scalar(&sql);
                    for id in chunk {
                        q = q.bind(id.to_string());
                    }
                    q.fetch_all(l.pool()).await?
                }
                AnyLedger::Postgres(l) => {
                    let mut q = sqlx::query_scalar(&sql);
                    for id in chunk {
                        q = q.bind(id.to_string());
                    }
                    q.fetch_all(l.pool()).await?
                }
            };
            for id in ids {
                out.insert(
                    Uuid::parse_str(&id)
                        .map_err(|e| LedgerError::Corrupt(format!("consent_log.event_id: {e}")))?,
                );
            }
        }
        Ok(out)
    }

    /// Every subject whose logged events carried this email hash, newest first.
    pub async fn subjects_for_email(&self, email_sha256: &str) -> Result<Vec<String>, LedgerError> {
        Ok(match self {
            AnyLedger::Sqlite(l) => {
                sqlx::query_scalar(SUBJECTS_FOR_EMAIL)
                    .bind(email_sha256)
                    .fetch_all(l.pool())
                    .await?
            }
            AnyLedger::Postgres(l) => {
                sqlx::query_scalar(SUBJECTS_FOR_EMAIL)
                    .bind(email_sha256)
                    .fetch_all(l.pool())
                    .await?
            }
        })
    }

    /// The subject whose newest logged event carried this email hash, if any.
    pub async fn subject_for_email(
        &self,
        email_sha256: &str,
    ) -> Result<Option<String>, LedgerError> {
        Ok(match self {
            AnyLedger::Sqlite(l) => {
                sqlx::query_scalar(SUBJECT_FOR_EMAIL)
                    .bind(email_sha256)
                    .fetch_optional(l.pool())
                    .await?
            }
            AnyLedger::Postgres(l) => {
                sqlx::query_scalar(SUBJECT_FOR_EMAIL)
                    .bind(email_sha256)
                    .fetch_optional(l.pool())
                    .await?
            }
        })
    }

    /// Records a notification about an unknown person; a second record of the same event id is
    /// a vendor's retry and changes nothing. Returns whether the row is new.
    pub async fn record_unknown_contact(&self, c: &UnknownContact) -> Result<bool, LedgerError> {
        let purposes = serde_json::to_string(&c.purposes)
            .map_err(|e| LedgerError::Corrupt(format!("purposes: {e}")))?;
        let now = now_ms();
        // One statement text, typed per backend by where it is executed.
        macro_rules! insert {
            () => {
                sqlx::query(INSERT_UNKNOWN)
                    .bind(c.event_id.to_string())
                    .bind(&c.vendor)
                    .bind(&c.kind)
                    .bind(&purposes)
                    .bind(&c.email_sha256)
                    .bind(&c.vendor_ref)
                    .bind(c.occurred_at_ms)
                    .bind(now)
            };
        }
        let done = match self {
            AnyLedger::Sqlite(l) => insert!().execute(l.pool()).await?.rows_affected(),
            AnyLedger::Postgres(l) => insert!().execute(l.pool()).await?.rows_affected(),
        };
        Ok(done == 1)
    }

    /// Every recorded unknown contact, oldest first.
    pub async fn unknown_contacts(&self) -> Result<Vec<UnknownContact>, LedgerError> {
        let rows = match self {
            AnyLedger::Sqlite(l) => {
                sqlx::query_as::<_, UnknownRow>(SELECT_UNKNOWN)
                    .fetch_all(l.pool())
                    .await?
            }
            AnyLedger::Postgres(l) => {
                sqlx::query_as::<_, UnknownRow>(SELECT_UNKNOWN)
                    .fetch_all(l.pool())
                    .await?
            }
        };
        rows.into_iter().map(from_row).collect()
    }
}
