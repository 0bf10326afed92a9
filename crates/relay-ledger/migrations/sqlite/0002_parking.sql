-- Ledger schema v2 (SQLite): parking. A delivery whose inline retry budget is spent waits as a copy
-- on its sink's retry topic; park_id names that copy, so only it may act on the delivery
-- (relay-ledger `Claim::ticket`). Kept equal to migrations/postgres/0002_parking.sql.
ALTER TABLE deliveries ADD COLUMN park_id TEXT;
