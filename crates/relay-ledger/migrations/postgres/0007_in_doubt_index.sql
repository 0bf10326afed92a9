-- Ledger schema v7 (PostgreSQL): the deliveries whose request may still be on the wire (claimed and
-- never answered, or answered with an unknown fate) are read for every wave's subjects
-- (`Dialect::in_doubt`). Without this index PostgreSQL scanned all of `deliveries` for it, so
-- each wave cost time in proportion to the ledger's size. Partial: it holds only those few rows,
-- and its predicate is written exactly as the query's so that both planners use it. A plain
-- CREATE INDEX (migrations run in a transaction) blocks writes to `deliveries` while it builds,
-- which on a large ledger takes a moment; the partial index is small. Kept equal to
-- migrations/sqlite/0007_in_doubt_index.sql.
CREATE INDEX deliveries_in_doubt ON deliveries (sink, subject_id)
    WHERE status = 'in_flight' OR error_class = 'unknown';
