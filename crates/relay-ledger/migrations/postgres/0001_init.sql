-- Ledger schema v1 (PostgreSQL). Kept column-for-column equal to migrations/sqlite/0001_init.sql so
-- one set of queries serves both backends: uuids are hyphenated TEXT, times are Unix milliseconds.
-- No raw email, phone or name is stored anywhere (DESIGN.md §4); subjects are keyed by subject_id.

-- The fate of each (event, sink, target): the idempotency record (DESIGN.md §3.2).
CREATE TABLE deliveries (
    event_id      TEXT    NOT NULL,
    sink          TEXT    NOT NULL,
    target        TEXT    NOT NULL,
    subject_id    TEXT    NOT NULL,
    status        TEXT    NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    error_class   TEXT,
    error         TEXT,
    created_at_ms BIGINT  NOT NULL,
    updated_at_ms BIGINT  NOT NULL,
    PRIMARY KEY (event_id, sink, target)
);
CREATE INDEX deliveries_subject_id ON deliveries (subject_id);

-- The newest applied decision per (subject, target, sink): what the version rule compares with.
CREATE TABLE subject_state (
    subject_id     TEXT   NOT NULL,
    sink           TEXT   NOT NULL,
    target         TEXT   NOT NULL,
    action         TEXT   NOT NULL,
    occurred_at_ms BIGINT NOT NULL,
    event_id       TEXT   NOT NULL,
    updated_at_ms  BIGINT NOT NULL,
    PRIMARY KEY (subject_id, sink, target)
);

-- Append-only proof of consent (GDPR Art. 7(1)); purposes is a JSON array of strings.
CREATE TABLE consent_log (
    event_id       TEXT    NOT NULL PRIMARY KEY,
    subject_id     TEXT    NOT NULL,
    kind           TEXT    NOT NULL,
    purposes       TEXT    NOT NULL,
    occurred_at_ms BIGINT  NOT NULL,
    source         TEXT    NOT NULL,
    notice_version TEXT,
    email_sha256   TEXT,
    topic          TEXT    NOT NULL,
    "partition"    INTEGER NOT NULL,
    "offset"       BIGINT  NOT NULL,
    recorded_at_ms BIGINT  NOT NULL
);
CREATE INDEX consent_log_subject_id ON consent_log (subject_id);

-- Messages dead-lettered before they became deliveries; one row per sink and source position.
CREATE TABLE rejections (
    sink           TEXT    NOT NULL,
    topic          TEXT    NOT NULL,
    "partition"    INTEGER NOT NULL,
    "offset"       BIGINT  NOT NULL,
    event_id       TEXT,
    subject_id     TEXT,
    code           TEXT    NOT NULL,
    message        TEXT    NOT NULL,
    recorded_at_ms BIGINT  NOT NULL,
    PRIMARY KEY (sink, topic, "partition", "offset")
);
CREATE INDEX rejections_subject_id ON rejections (subject_id);
