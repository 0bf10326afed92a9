-- Ledger schema v3 (PostgreSQL): what `consent-relay ingest` needs. Kept equal to
-- migrations/sqlite/0003_ingest.sql.

-- A vendor's notification names a person by email only; ingest finds the subject through the
-- hash the consent log already keeps.
CREATE INDEX consent_log_email_sha256 ON consent_log (email_sha256);

-- Notifications about people the ledger has never seen: kept (hash only, never the address) so
-- that nothing a vendor told us is dropped, and an operator can follow up. One row per derived
-- event id, so a vendor's retries do not add rows.
CREATE TABLE ingest_unknown_contacts (
    event_id       TEXT   NOT NULL PRIMARY KEY,
    vendor         TEXT   NOT NULL,
    kind           TEXT   NOT NULL,
    purposes       TEXT   NOT NULL,
    email_sha256   TEXT,
    vendor_ref     TEXT   NOT NULL,
    occurred_at_ms BIGINT NOT NULL,
    recorded_at_ms BIGINT NOT NULL
);
CREATE INDEX ingest_unknown_contacts_email_sha256 ON ingest_unknown_contacts (email_sha256);
