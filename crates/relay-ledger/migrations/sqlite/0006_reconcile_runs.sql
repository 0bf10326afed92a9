-- Ledger schema v6 (SQLite): when each scheduled reconcile of `run` last finished, by the
-- name of its `[reconcile.<name>]` section (`hubspot`, `audiences`, `audiences.meta`), so that
-- the schedule survives restarts: a relay restarted more often than its
-- interval still reconciles. Kept equal to migrations/postgres/0006_reconcile_runs.sql.
CREATE TABLE reconcile_runs (
    name           TEXT   NOT NULL PRIMARY KEY,
    finished_at_ms BIGINT NOT NULL
);
