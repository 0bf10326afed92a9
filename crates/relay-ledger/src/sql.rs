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

pub(crate) const REPORT_CONSENT: &str = r#"SELECT event_id, subject_id, kind, purposes,
    occurred_at_ms, source, notice_version, email_sha256, topic, "partition", "offset",
    payload_digest, late, google_email_sha256, google_email_plus_sha256
FROM consent_log WHERE subject_id = $1 ORDER BY occurred_at_ms, event_id"#;

/// Consent-log entries that may concern a purpose. Binds: `%"<purpose>"%`, `%"*"%`. The LIKE is a
/// pre-filter on the JSON text; the caller checks the purposes exactly.
pub(crate) const CONSENT_FOR_PURPOSE: &str = r#"SELECT event_id, subject_id, kind, purposes,
    occurred_at_ms, source, notice_version, email_sha256, topic, "partition", "offset",
    payload_digest, late, google_email_sha256, google_email_plus_sha256
FROM consent_log WHERE purposes LIKE $1 OR purposes LIKE $2
ORDER BY subject_id, occurred_at_ms, event_id"#;

pub(crate) const REPORT_DELIVERIES: &str = "SELECT event_id, sink, target, status, attempts,
    reasserts, error_class, error, updated_at_ms, repairs, repaired_at_ms
FROM deliveries WHERE subject_id = $1 ORDER BY updated_at_ms, event_id, sink, target";

pub(crate) const REPORT_STATE: &str = "SELECT sink, target, action, occurred_at_ms, event_id
FROM subject_state WHERE subject_id = $1 ORDER BY sink, target";

pub(crate) const REPORT_REJECTIONS: &str = r#"SELECT sink, topic, "partition", "offset", event_id,
    subject_id, code, message
FROM rejections WHERE subject_id = $1 ORDER BY recorded_at_ms, topic, "partition", "offset", sink"#;
