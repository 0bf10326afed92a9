-- Ledger schema v9 (SQLite): the vendor's own id of a contact and the hash of the address it had,
-- for notifications that name the contact only after its address is gone (a HubSpot
-- `contact.privacyDeletion` arrives once the contact is deleted). Learned from the notifications
-- that do carry or let ingest read the address (contact creation, address change, opt-outs).
-- Hashes only, never an address. Kept equal to migrations/postgres/0009_ingest_contact_refs.sql.
CREATE TABLE ingest_contact_refs (
    vendor         TEXT   NOT NULL,
    contact_ref    TEXT   NOT NULL,
    email_sha256   TEXT   NOT NULL,
    recorded_at_ms BIGINT NOT NULL,
    PRIMARY KEY (vendor, contact_ref)
);
