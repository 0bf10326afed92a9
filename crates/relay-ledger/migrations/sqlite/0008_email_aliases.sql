-- Ledger schema v8 (SQLite): the addresses a vendor said a person changed to, so that
-- `ingest` finds them by the new one. Hashes only, never an address. Kept equal to
-- migrations/postgres/0008_email_aliases.sql.

-- An address a vendor reported the person changed to (Mailchimp's `upemail`), and the subject of
-- the address it replaced: their next unsubscribe there names the new address.
CREATE TABLE ingest_email_aliases (
    email_sha256   TEXT   NOT NULL PRIMARY KEY,
    subject_id     TEXT   NOT NULL,
    vendor         TEXT   NOT NULL,
    vendor_ref     TEXT   NOT NULL,
    recorded_at_ms BIGINT NOT NULL
);
