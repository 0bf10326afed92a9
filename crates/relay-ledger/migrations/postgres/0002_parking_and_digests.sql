-- Ledger schema v2 (PostgreSQL): parking, payload digests, late events. A delivery whose inline
-- retry budget is spent waits as a copy on its sink's retry topic. `parks` is the generation of the
-- newest copy the ledger knows: a copy of a lower generation is stale and does nothing
-- (relay-ledger `Claim::ticket`). Kept equal to migrations/sqlite/0002_parking_and_digests.sql.
ALTER TABLE deliveries ADD COLUMN parks INTEGER NOT NULL DEFAULT 0;

-- Digests of event payloads (relay_events `ConsentEvent::digest`): the same event_id with another
-- digest is a conflicting duplicate, rejected; the first decision stands. NULL for rows logged
-- before this version, whose later duplicates cannot be checked. `late` marks an event whose
-- occurred_at was older than the configured horizon when it arrived (a backfill, or a producer
-- that held it back).
ALTER TABLE consent_log ADD COLUMN payload_digest TEXT;
ALTER TABLE consent_log ADD COLUMN late BOOLEAN NOT NULL DEFAULT FALSE;
