//! Statements shared by both backends. The schemas are kept identical and `$N` placeholders work
//! in SQLite too, so each statement exists once and the backends cannot drift apart.

pub(crate) const CREATE_MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS ledger_migrations (
    version       BIGINT PRIMARY KEY,
    applied_at_ms BIGINT NOT NULL
)";

pub(crate) const APPLIED_MIGRATIONS: &str =
    "SELECT version FROM ledger_migrations ORDER BY version";

pub(crate) const MIGRATION_APPLIED: &str =
    "SELECT version FROM ledger_migrations WHERE version = $1";

pub(crate) const RECORD_MIGRATION: &str =
    "INSERT INTO ledger_migrations (version, applied_at_ms) VALUES ($1, $2)";

/// Returns the event id when the entry is new, nothing when the event was logged before.
pub(crate) const INSERT_CONSENT: &str = r#"INSERT INTO consent_log
    (event_id, subject_id, kind, purposes, occurred_at_ms, source, notice_version, email_sha256,
     topic, "partition", "offset", recorded_at_ms, payload_digest, late)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id"#;

/// Binds: event_id.
pub(crate) const CONSENT_DIGEST: &str =
    "SELECT payload_digest FROM consent_log WHERE event_id = $1";

/// Binds: event_id, sink, target.
pub(crate) const DELIVERY_STATUS: &str = "SELECT status, attempts, parks FROM deliveries
WHERE event_id = $1 AND sink = $2 AND target = $3";

/// The states a claim is compared with. Binds: subject_id, sink, target. A purpose claim needs its
/// own state and the global one; a whole-subject (`*`) claim needs every state of the subject at
/// the sink, to spare purposes granted after it.
pub(crate) const STATES_FOR_CLAIM: &str = "SELECT sink, target, action, occurred_at_ms, event_id
FROM subject_state WHERE subject_id = $1 AND sink = $2 AND ($3 = '*' OR target IN ($3, '*'))";

/// Binds: subject_id, sink, target, action, occurred_at_ms, event_id, now.
pub(crate) const UPSERT_STATE: &str = "INSERT INTO subject_state
    (subject_id, sink, target, action, occurred_at_ms, event_id, updated_at_ms)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (subject_id, sink, target) DO UPDATE SET
    action = excluded.action,
    occurred_at_ms = excluded.occurred_at_ms,
    event_id = excluded.event_id,
    updated_at_ms = excluded.updated_at_ms";

/// Claim outcome; the attempt count is computed by the caller from the row it read in the same
/// transaction. Error columns are kept: the last failure stays visible while a retry is in flight.
/// Binds: event_id, sink, target, subject_id, status, attempts, now.
pub(crate) const UPSERT_CLAIMED: &str = "INSERT INTO deliveries
    (event_id, sink, target, subject_id, status, attempts, created_at_ms, updated_at_ms)
VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
ON CONFLICT (event_id, sink, target) DO UPDATE SET
    status = excluded.status,
    attempts = excluded.attempts,
    updated_at_ms = excluded.updated_at_ms";

/// Binds: event_id, sink, target, subject_id, parks, error, now. Only a delivery still under way
/// is parked; one finished meanwhile keeps its final status. The generation never goes back: two
/// copies parked concurrently may be recorded in either order.
pub(crate) const UPSERT_PARKED: &str = "INSERT INTO deliveries
    (event_id, sink, target, subject_id, status, attempts, error_class, error, created_at_ms,
     updated_at_ms, parks)
VALUES ($1, $2, $3, $4, 'parked', 0, 'retryable', $6, $7, $7, $5)
ON CONFLICT (event_id, sink, target) DO UPDATE SET
    status = excluded.status,
    error_class = excluded.error_class,
    error = excluded.error,
    updated_at_ms = excluded.updated_at_ms,
    parks = CASE WHEN excluded.parks > deliveries.parks THEN excluded.parks
                 ELSE deliveries.parks END
WHERE deliveries.status IN ('in_flight', 'retrying', 'parked')";

/// Binds: event_id, sink, target, subject_id, status, error_class, error, now. A delivery that
/// reached its downstream (or the DLQ) is never relabelled superseded: that happens when a batch
/// that was applied but not committed comes back together with a newer event.
pub(crate) const UPSERT_FINISHED: &str = "INSERT INTO deliveries
    (event_id, sink, target, subject_id, status, attempts, error_class, error, created_at_ms,
     updated_at_ms)
VALUES ($1, $2, $3, $4, $5, 0, $6, $7, $8, $8)
ON CONFLICT (event_id, sink, target) DO UPDATE SET
    status = excluded.status,
    error_class = excluded.error_class,
    error = excluded.error,
    updated_at_ms = excluded.updated_at_ms
WHERE excluded.status <> 'superseded'
    OR deliveries.status NOT IN ('applied', 'already_applied', 'dead_lettered')";

pub(crate) const INSERT_REJECTION: &str = r#"INSERT INTO rejections
    (sink, topic, "partition", "offset", event_id, subject_id, code, message, recorded_at_ms)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (sink, topic, "partition", "offset") DO NOTHING"#;

pub(crate) const REPORT_CONSENT: &str = r#"SELECT event_id, subject_id, kind, purposes,
    occurred_at_ms, source, notice_version, email_sha256, topic, "partition", "offset",
    payload_digest, late
FROM consent_log WHERE subject_id = $1 ORDER BY occurred_at_ms, event_id"#;

/// Consent-log entries that may concern a purpose. Binds: `%"<purpose>"%`, `%"*"%`. The LIKE is a
/// pre-filter on the JSON text; the caller checks the purposes exactly.
pub(crate) const CONSENT_FOR_PURPOSE: &str = r#"SELECT event_id, subject_id, kind, purposes,
    occurred_at_ms, source, notice_version, email_sha256, topic, "partition", "offset",
    payload_digest, late
FROM consent_log WHERE purposes LIKE $1 OR purposes LIKE $2
ORDER BY subject_id, occurred_at_ms, event_id"#;

pub(crate) const REPORT_DELIVERIES: &str = "SELECT event_id, sink, target, status, attempts,
    error_class, error, updated_at_ms
FROM deliveries WHERE subject_id = $1 ORDER BY updated_at_ms, event_id, sink, target";

pub(crate) const REPORT_STATE: &str = "SELECT sink, target, action, occurred_at_ms, event_id
FROM subject_state WHERE subject_id = $1 ORDER BY sink, target";

pub(crate) const REPORT_REJECTIONS: &str = r#"SELECT sink, topic, "partition", "offset", event_id,
    subject_id, code, message
FROM rejections WHERE subject_id = $1 ORDER BY recorded_at_ms, topic, "partition", "offset", sink"#;
