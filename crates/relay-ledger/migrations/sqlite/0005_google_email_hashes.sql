-- Ledger schema v5 (SQLite): the hashes under which Google knows an address. Google removes the
-- dots (and, by default, a +tag) of gmail.com and googlemail.com addresses before hashing, so
-- its hash of such an address is not `email_sha256`, and the ledger holds no address to re-hash.
-- `reconcile` re-sends removals to Google with these. `google_email_sha256` keeps a +tag,
-- `google_email_plus_sha256` is the hash without it, only where that differs. Both are NULL
-- for events without an email and for entries logged before v5. Kept equal to
-- migrations/postgres/0005_google_email_hashes.sql.
ALTER TABLE consent_log ADD COLUMN google_email_sha256 TEXT;
ALTER TABLE consent_log ADD COLUMN google_email_plus_sha256 TEXT;
