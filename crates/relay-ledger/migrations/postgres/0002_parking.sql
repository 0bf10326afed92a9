-- Ledger schema v2 (PostgreSQL): parking. A delivery whose inline retry budget is spent waits as a copy
-- on its sink's retry topic. `parks` is the generation of the newest copy the ledger knows: a copy
-- of a lower generation is stale and does nothing (relay-ledger `Claim::ticket`). Kept equal to
-- migrations/sqlite/0002_parking.sql.
ALTER TABLE deliveries ADD COLUMN parks INTEGER NOT NULL DEFAULT 0;
