-- Ledger schema v6 (SQLite): when each reconcile last finished, by its name (`hubspot`,
-- `audiences`, `audiences.meta`: the `--sink` of the run, or the `[reconcile.<name>]` of a
-- schedule), so that `run`'s schedule survives restarts: a relay restarted more often than its
-- interval still reconciles. Kept equal to migrations/postgres/0006_reconcile_runs.sql.
CREATE TABLE reconcile_runs (
    name           TEXT   NOT NULL PRIMARY KEY,
    finished_at_ms BIGINT NOT NULL
);
