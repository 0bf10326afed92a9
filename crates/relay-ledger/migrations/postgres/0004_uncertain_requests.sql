-- Ledger schema v4 (PostgreSQL): requests of unknown fate. A request that timed out or broke after
-- it was written may still be applied by the downstream, later than a newer decision of the same
-- person. `uncertain` says until when such a request may land, per (subject, sink); a decision
-- applied before then is re-asserted at that time (relay-runtime engine). `reasserts` counts how
-- often a delivery was re-asserted. Kept equal to migrations/sqlite/0004_uncertain_requests.sql.
CREATE TABLE uncertain (
    subject_id TEXT   NOT NULL,
    sink       TEXT   NOT NULL,
    until_ms   BIGINT NOT NULL,
    PRIMARY KEY (subject_id, sink)
);

ALTER TABLE deliveries ADD COLUMN reasserts INTEGER NOT NULL DEFAULT 0;
