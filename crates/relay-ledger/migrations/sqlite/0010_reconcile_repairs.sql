-- Ledger schema v10 (SQLite): what `reconcile` re-sent for a delivery, beside what the delivery
-- path did (status, time and `reasserts` stay the delivery path's): how often the decision was
-- re-sent by a repair the downstream applied, and when last; and the vendor time of each contact
-- address ingest learned. Kept equal to migrations/postgres/0010_reconcile_repairs.sql.
ALTER TABLE deliveries ADD COLUMN repairs INTEGER NOT NULL DEFAULT 0;
ALTER TABLE deliveries ADD COLUMN repaired_at_ms BIGINT;

-- The vendor's time of the report that taught ingest a contact's address: a late retry of an
-- older report must not replace a newer address.
ALTER TABLE ingest_contact_refs ADD COLUMN occurred_at_ms BIGINT NOT NULL DEFAULT 0;
