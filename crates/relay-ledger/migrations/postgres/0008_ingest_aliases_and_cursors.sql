-- Ledger schema v8 (PostgreSQL): what `ingest` keeps between notifications: the addresses a
-- vendor said a person changed to, so that the new one finds them, and how far each poll has
-- read. Hashes only, never an address. Kept equal to
-- migrations/sqlite/0008_ingest_aliases_and_cursors.sql.

-- An address a vendor reported the person changed to (Mailchimp's `upemail`), and the subject of
-- the address it replaced: their next unsubscribe there names the new address.
CREATE TABLE ingest_email_aliases (
    email_sha256   TEXT   NOT NULL PRIMARY KEY,
    subject_id     TEXT   NOT NULL,
    vendor         TEXT   NOT NULL,
    vendor_ref     TEXT   NOT NULL,
    recorded_at_ms BIGINT NOT NULL
);

-- `ingest --poll`: per polled source (`mailchimp:<list id>`), the vendor time up to which every
-- decision has been published; the next poll reads from there (minus an overlap).
CREATE TABLE ingest_poll_cursors (
    source        TEXT   NOT NULL PRIMARY KEY,
    cursor_ms     BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
