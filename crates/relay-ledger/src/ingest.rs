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

/// Binds: email_sha256. Every subject an address was logged under, newest first, then the one a
/// vendor said the address replaced (`ledger audit --email` must answer for all of them).
const SUBJECTS_FOR_EMAIL: &str = "SELECT subject_id FROM (
    SELECT subject_id, MAX(occurred_at_ms) AS newest FROM consent_log WHERE email_sha256 = $1
    GROUP BY subject_id
    UNION ALL
    SELECT subject_id, -1 AS newest FROM ingest_email_aliases WHERE email_sha256 = $1
) AS found GROUP BY subject_id ORDER BY MAX(newest) DESC, subject_id";

/// Binds: email_sha256. Asked only when the consent log does not know the address: an address
/// upstream ever named wins over what a vendor said.
const SUBJECT_FOR_ALIAS: &str =
    "SELECT subject_id FROM ingest_email_aliases WHERE email_sha256 = $1";

/// Binds: email_sha256, subject_id, vendor, vendor_ref, recorded_at_ms. The newest report of an
/// address change wins.
const UPSERT_ALIAS: &str = "INSERT INTO ingest_email_aliases
    (email_sha256, subject_id, vendor, vendor_ref, recorded_at_ms) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (email_sha256) DO UPDATE SET subject_id = excluded.subject_id,
    vendor = excluded.vendor, vendor_ref = excluded.vendor_ref,
    recorded_at_ms = excluded.recorded_at_ms";

/// Binds: vendor, contact_ref, email_sha256, occurred_at_ms, recorded_at_ms. The address known
/// last wins (by the vendor's time of a change, or the time ingest read the address): a late
/// retry of an older report changes nothing.
const UPSERT_CONTACT_REF: &str = "INSERT INTO ingest_contact_refs
    (vendor, contact_ref, email_sha256, occurred_at_ms, recorded_at_ms)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (vendor, contact_ref) DO UPDATE SET email_sha256 = excluded.email_sha256,
    occurred_at_ms = excluded.occurred_at_ms, recorded_at_ms = excluded.recorded_at_ms
WHERE excluded.occurred_at_ms >= ingest_contact_refs.occurred_at_ms";

/// Binds: vendor, contact_ref.
const CONTACT_REF: &str =
    "SELECT email_sha256 FROM ingest_contact_refs WHERE vendor = $1 AND contact_ref = $2";

/// Binds: source.
const POLL_CURSOR: &str = "SELECT cursor_ms FROM ingest_poll_cursors WHERE source = $1";

/// Binds: source, cursor_ms, updated_at_ms.
const UPSERT_POLL_CURSOR: &str =
    "INSERT INTO ingest_poll_cursors (source, cursor_ms, updated_at_ms)
VALUES ($1, $2, $3)
ON CONFLICT (source) DO UPDATE SET cursor_ms = excluded.cursor_ms,
    updated_at_ms = excluded.updated_at_ms";

/// Binds: subject_id, from_ms, to_ms, except_event_id. The withdrawals the relay was delivering
/// for the subject in the window: first claimed before its end, and last claimed or finished
/// after its start (a request lands between its claim and its finish; a parked copy sends
/// nothing until it is claimed again). A first attempt the downstream answered "already so"
/// changed nothing there, so no vendor reports it back; after a retry the earlier attempt may
/// have landed. A reconcile repair of the withdrawal in the window counts too, whatever the
/// delivery's own status (it may have been dead-lettered for want of an address).
const WITHDRAWALS_DELIVERED: &str = "SELECT d.sink, d.target, c.kind FROM deliveries d
JOIN consent_log c ON c.event_id = d.event_id
WHERE d.subject_id = $1
  AND c.kind IN ('ConsentWithdrawn', 'Unsubscribed', 'ErasureRequested')
  AND d.event_id <> $4
  AND ((d.status NOT IN ('not_routed', 'superseded', 'dead_lettered')
        AND NOT (d.status = 'already_applied' AND d.attempts <= 1)
        AND d.created_at_ms <= $3 AND d.updated_at_ms >= $2)
       OR d.repaired_at_ms BETWEEN $2 AND $3)";

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

/// A withdrawal delivery as `ingest` weighs a vendor's notice against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveredWithdrawal {
    /// The sink (destination) it went to.
    pub sink: String,
    /// The purpose it withdrew there, `*` for all.
    pub target: String,
    /// `ConsentWithdrawn`, `Unsubscribed` or `ErasureRequested`.
    pub kind: String,
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

/// Runs one statement on whichever backend this is: `$query` is written once and typed per
/// backend where it expands. `execute` yields the rows affected; any other sqlx method
/// (`fetch_all`, `fetch_optional`) its rows.
macro_rules! on_backend {
    ($ledger:expr, execute $query:expr) => {
        match $ledger {
            AnyLedger::Sqlite(l) => $query.execute(l.pool()).await?.rows_affected(),
            AnyLedger::Postgres(l) => $query.execute(l.pool()).await?.rows_affected(),
        }
    };
    ($ledger:expr, $run:ident $query:expr) => {
        match $ledger {
            AnyLedger::Sqlite(l) => $query.$run(l.pool()).await?,
            AnyLedger::Postgres(l) => $query.$run(l.pool()).await?,
        }
    };
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
            let ids: Vec<String> = on_backend!(
                self,
                fetch_all chunk
                    .iter()
                    .fold(sqlx::query_scalar(&sql), |q, id| q.bind(id.to_string()))
            );
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
        Ok(on_backend!(
            self,
            fetch_all sqlx::query_scalar(SUBJECTS_FOR_EMAIL).bind(email_sha256)
        ))
    }

    /// The subject whose newest logged event carried this email hash, else the subject of the
    /// address a vendor said this one replaced, if any.
    pub async fn subject_for_email(
        &self,
        email_sha256: &str,
    ) -> Result<Option<String>, LedgerError> {
        for sql in [SUBJECT_FOR_EMAIL, SUBJECT_FOR_ALIAS] {
            let found: Option<String> = on_backend!(
                self,
                fetch_optional sqlx::query_scalar(sql).bind(email_sha256)
            );
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// Records that a vendor now knows `subject_id` by the address hashed as `email_sha256`.
    pub async fn record_email_alias(
        &self,
        email_sha256: &str,
        subject_id: &str,
        vendor: &str,
        vendor_ref: &str,
    ) -> Result<(), LedgerError> {
        on_backend!(
            self,
            execute sqlx::query(UPSERT_ALIAS)
                .bind(email_sha256)
                .bind(subject_id)
                .bind(vendor)
                .bind(vendor_ref)
                .bind(now_ms())
        );
        Ok(())
    }

    /// The withdrawals the relay was delivering for `subject_id` at some time between `from_ms`
    /// and `to_ms`, one per delivery: what a vendor's notice of that time may merely repeat. The
    /// notice's own event (`except`, a vendor's retry of it) is left out: it is a duplicate, not
    /// an echo.
    pub async fn withdrawals_delivered_between(
        &self,
        subject_id: &str,
        from_ms: i64,
        to_ms: i64,
        except: Uuid,
    ) -> Result<Vec<DeliveredWithdrawal>, LedgerError> {
        let rows: Vec<(String, String, String)> = on_backend!(
            self,
            fetch_all sqlx::query_as(WITHDRAWALS_DELIVERED)
                .bind(subject_id)
                .bind(from_ms)
                .bind(to_ms)
                .bind(except.to_string())
        );
        Ok(rows
            .into_iter()
            .map(|(sink, target, kind)| DeliveredWithdrawal { sink, target, kind })
            .collect())
    }

    /// Records that `vendor` knows a contact as `contact_ref` (HubSpot: `<portal>:<contact id>`)
    /// with the address hashed as `email_sha256`, as of `occurred_at_ms` (the vendor's time of an
    /// address change, or when ingest read the address): what a notice naming only the contact,
    /// once its address is gone, is matched by.
    pub async fn record_contact_ref(
        &self,
        vendor: &str,
        contact_ref: &str,
        email_sha256: &str,
        occurred_at_ms: i64,
    ) -> Result<(), LedgerError> {
        on_backend!(
            self,
            execute sqlx::query(UPSERT_CONTACT_REF)
                .bind(vendor)
                .bind(contact_ref)
                .bind(email_sha256)
                .bind(occurred_at_ms)
                .bind(now_ms())
        );
        Ok(())
    }

    /// The hash of the address `vendor`'s contact `contact_ref` last had, if ingest learned it.
    pub async fn contact_email_sha256(
        &self,
        vendor: &str,
        contact_ref: &str,
    ) -> Result<Option<String>, LedgerError> {
        Ok(on_backend!(
            self,
            fetch_optional sqlx::query_scalar(CONTACT_REF).bind(vendor).bind(contact_ref)
        ))
    }

    /// How far the poll of `source` has published everything, if it ever finished one.
    pub async fn poll_cursor(&self, source: &str) -> Result<Option<i64>, LedgerError> {
        Ok(on_backend!(
            self,
            fetch_optional sqlx::query_scalar(POLL_CURSOR).bind(source)
        ))
    }

    /// Records that the poll of `source` has published everything up to `cursor_ms`.
    pub async fn set_poll_cursor(&self, source: &str, cursor_ms: i64) -> Result<(), LedgerError> {
        on_backend!(
            self,
            execute sqlx::query(UPSERT_POLL_CURSOR)
                .bind(source)
                .bind(cursor_ms)
                .bind(now_ms())
        );
        Ok(())
    }

    /// Records a notification about an unknown person; a second record of the same event id is
    /// a vendor's retry and changes nothing. Returns whether the row is new.
    pub async fn record_unknown_contact(&self, c: &UnknownContact) -> Result<bool, LedgerError> {
        let purposes = serde_json::to_string(&c.purposes)
            .map_err(|e| LedgerError::Corrupt(format!("purposes: {e}")))?;
        let done = on_backend!(
            self,
            execute sqlx::query(INSERT_UNKNOWN)
                .bind(c.event_id.to_string())
                .bind(&c.vendor)
                .bind(&c.kind)
                .bind(&purposes)
                .bind(&c.email_sha256)
                .bind(&c.vendor_ref)
                .bind(c.occurred_at_ms)
                .bind(now_ms())
        );
        Ok(done == 1)
    }

    /// Every recorded unknown contact, oldest first.
    pub async fn unknown_contacts(&self) -> Result<Vec<UnknownContact>, LedgerError> {
        let rows: Vec<UnknownRow> = on_backend!(self, fetch_all sqlx::query_as(SELECT_UNKNOWN));
        rows.into_iter().map(from_row).collect()
    }
}
