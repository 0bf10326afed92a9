//! The batch statements: each reads or writes a whole batch's rows in one round trip. The rows
//! travel as one JSON array of arrays bound as text, which both backends unpack in SQL
//! (`json_each` in SQLite, `json_array_elements` in PostgreSQL), so the statement text is fixed
//! (prepared once, cached by sqlx) whatever the batch size, and the Rust around it is shared.
//! Only the unpacking differs per backend; the tables, conflict targets and `WHERE` guards are the
//! ones of the single-row statements they replace, so a batch behaves exactly like its rows
//! written one after the other (see `ops.rs` for how duplicates inside one batch are kept apart).

/// The statements of one backend, field for field the same meaning.
pub(crate) struct Dialect {
    /// Delivery rows of some events at one sink. Binds: sink, `[event_id, ...]`.
    /// Returns: event_id, target, status, attempts, parks.
    pub deliveries: &'static str,
    /// Subject states of some subjects at one sink. Binds: sink, `[subject_id, ...]`.
    /// Returns: subject_id, sink, target, action, occurred_at_ms, event_id.
    pub states: &'static str,
    /// Binds: `[[subject_id, sink, target, action, occurred_at_ms, event_id], ...]`, now.
    pub upsert_states: &'static str,
    /// Claim outcomes; error columns are kept, so the last failure stays visible while a retry is
    /// in flight. Binds: `[[event_id, sink, target, subject_id, status, attempts, reasserts],
    /// ...]`, now; `reasserts` is added to the row's count.
    pub upsert_claimed: &'static str,
    /// Binds: `[[event_id, sink, target, subject_id, status, error_class, error], ...]`, now.
    /// A delivery that reached its downstream (or the DLQ) is never relabelled superseded: that
    /// happens when a batch that was applied but not committed comes back with a newer event.
    pub upsert_finished: &'static str,
    /// Binds: `[[event_id, sink, target, subject_id, parks, error], ...]`, now. Only a delivery
    /// still under way is parked; one finished meanwhile keeps its final status. The generation
    /// never goes back: two copies parked concurrently may be recorded in either order.
    pub upsert_parked: &'static str,
    /// Binds: `[[event_id, subject_id, kind, purposes, occurred_at_ms, source, notice_version,
    /// email_sha256, topic, partition, offset, payload_digest, late], ...]`, now.
    /// Returns the event ids that were new; an event logged before is left as it was.
    pub insert_consent: &'static str,
    /// Binds: `[event_id, ...]`. Returns: event_id, payload_digest.
    pub consent_digests: &'static str,
    /// Binds: `[[sink, topic, partition, offset, event_id, subject_id, code, message], ...]`, now.
    pub insert_rejections: &'static str,
    /// Binds: `[[subject_id, sink, until_ms], ...]`. A bound only moves later.
    pub upsert_uncertain: &'static str,
    /// Binds: `[[event_id, sink, target, subject_id, status], ...]`, now. A reconcile repair
    /// re-sent the decision the delivery row is about: the row counts it (`repairs`,
    /// `repaired_at_ms`) and keeps what the delivery path did (status, time, `reasserts`), so a
    /// repair of a delivery `run` is working on changes nothing of that work. A row is inserted
    /// where the decision has none at this destination (an erasure re-sent where only its
    /// purposes were delivered), with no attempts: the delivery path never sent it.
    pub record_repairs: &'static str,
    /// Binds: sink, `[subject_id, ...]`, now. Returns: subject_id, until_ms of bounds after now.
    pub uncertain: &'static str,
    /// Deliveries of some subjects at one sink whose request may be on the wire: claimed and never
    /// answered, or answered with an unknown fate, updated after a time. Binds: sink,
    /// `[subject_id, ...]`, since. Returns: subject_id, event_id, updated_at_ms.
    pub in_doubt: &'static str,
}

macro_rules! dialect {
    ($rows:literal, $list:literal, $first_list:literal, $col:ident) => {
        Dialect {
            deliveries: concat!(
                "SELECT event_id, target, status, attempts, parks FROM deliveries
WHERE sink = $1 AND event_id IN ",
                $list
            ),
            states: concat!(
                "SELECT subject_id, sink, target, action, occurred_at_ms, event_id
FROM subject_state WHERE sink = $1 AND subject_id IN ",
                $list
            ),
            upsert_states: concat!(
                "INSERT INTO subject_state
    (subject_id, sink, target, action, occurred_at_ms, event_id, updated_at_ms)
SELECT ",
                $col!(0, text),
                ", ",
                $col!(1, text),
                ", ",
                $col!(2, text),
                ", ",
                $col!(3, text),
                ", ",
                $col!(4, bigint),
                ", ",
                $col!(5, text),
                ", $2 FROM ",
                $rows,
                " WHERE true
ON CONFLICT (subject_id, sink, target) DO UPDATE SET
    action = excluded.action,
    occurred_at_ms = excluded.occurred_at_ms,
    event_id = excluded.event_id,
    updated_at_ms = excluded.updated_at_ms"
            ),
            upsert_claimed: concat!(
                "INSERT INTO deliveries
    (event_id, sink, target, subject_id, status, attempts, reasserts, created_at_ms,
     updated_at_ms)
SELECT ",
                $col!(0, text),
                ", ",
                $col!(1, text),
                ", ",
                $col!(2, text),
                ", ",
                $col!(3, text),
                ", ",
                $col!(4, text),
                ", ",
                $col!(5, int),
                ", ",
                $col!(6, int),
                ", $2, $2 FROM ",
                $rows,
                " WHERE true
ON CONFLICT (event_id, sink, target) DO UPDATE SET
    status = excluded.status,
    attempts = excluded.attempts,
    reasserts = deliveries.reasserts + excluded.reasserts,
    updated_at_ms = excluded.updated_at_ms"
            ),
            upsert_finished: concat!(
                "INSERT INTO deliveries
    (event_id, sink, target, subject_id, status, attempts, error_class, error, created_at_ms,
     updated_at_ms)
SELECT ",
                $col!(0, text),
                ", ",
                $col!(1, text),
                ", ",
                $col!(2, text),
                ", ",
                $col!(3, text),
                ", ",
                $col!(4, text),
                ", 0, ",
                $col!(5, text),
                ", ",
                $col!(6, text),
                ", $2, $2 FROM ",
                $rows,
                " WHERE true
ON CONFLICT (event_id, sink, target) DO UPDATE SET
    status = excluded.status,
    error_class = excluded.error_class,
    error = excluded.error,
    updated_at_ms = excluded.updated_at_ms
WHERE excluded.status <> 'superseded'
    OR deliveries.status NOT IN ('applied', 'already_applied', 'awaiting_confirmation',
                                 'dead_lettered')"
            ),
            upsert_parked: concat!(
                "INSERT INTO deliveries
    (event_id, sink, target, subject_id, status, attempts, error_class, error, created_at_ms,
     updated_at_ms, parks)
SELECT ",
                $col!(0, text),
                ", ",
                $col!(1, text),
                ", ",
                $col!(2, text),
                ", ",
                $col!(3, text),
                ", 'parked', 0, 'retryable', ",
                $col!(5, text),
                ", $2, $2, ",
                $col!(4, int),
                " FROM ",
                $rows,
                " WHERE true
ON CONFLICT (event_id, sink, target) DO UPDATE SET
    status = excluded.status,
    error_class = excluded.error_class,
    error = excluded.error,
    updated_at_ms = excluded.updated_at_ms,
    parks = CASE WHEN excluded.parks > deliveries.parks THEN excluded.parks
                 ELSE deliveries.parks END
WHERE deliveries.status IN ('in_flight', 'retrying', 'parked')"
            ),
            insert_consent: concat!(
                r#"INSERT INTO consent_log
    (event_id, subject_id, kind, purposes, occurred_at_ms, source, notice_version, email_sha256,
     topic, "partition", "offset", payload_digest, late, google_email_sha256,
     google_email_plus_sha256, recorded_at_ms)
SELECT "#,
                $col!(0, text),
                ", ",
                $col!(1, text),
                ", ",
                $col!(2, text),
                ", ",
                $col!(3, text),
                ", ",
                $col!(4, bigint),
                ", ",
                $col!(5, text),
                ", ",
                $col!(6, text),
                ", ",
                $col!(7, text),
                ", ",
                $col!(8, text),
                ", ",
                $col!(9, int),
                ", ",
                $col!(10, bigint),
                ", ",
                $col!(11, text),
                ", ",
                $col!(12, boolean),
                ", ",
                $col!(13, text),
                ", ",
                $col!(14, text),
                ", $2 FROM ",
                $rows,
                " WHERE true
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id"
            ),
            consent_digests: concat!(
                "SELECT event_id, payload_digest FROM consent_log WHERE event_id IN ",
                $first_list
            ),
            insert_rejections: concat!(
                r#"INSERT INTO rejections
    (sink, topic, "partition", "offset", event_id, subject_id, code, message, recorded_at_ms)
SELECT "#,
                $col!(0, text),
                ", ",
                $col!(1, text),
                ", ",
                $col!(2, int),
                ", ",
                $col!(3, bigint),
                ", ",
                $col!(4, text),
                ", ",
                $col!(5, text),
                ", ",
                $col!(6, text),
                ", ",
                $col!(7, text),
                ", $2 FROM ",
                $rows,
                r#" WHERE true
ON CONFLICT (sink, topic, "partition", "offset") DO NOTHING"#
            ),
            upsert_uncertain: concat!(
                "INSERT INTO uncertain (subject_id, sink, until_ms) SELECT ",
                $col!(0, text),
                ", ",
                $col!(1, text),
                ", ",
                $col!(2, bigint),
                " FROM ",
                $rows,
                " WHERE true
ON CONFLICT (subject_id, sink) DO UPDATE SET
    until_ms = CASE WHEN excluded.until_ms > uncertain.until_ms THEN excluded.until_ms
                    ELSE uncertain.until_ms END"
            ),
            record_repairs: concat!(
                "INSERT INTO deliveries
    (event_id, sink, target, subject_id, status, attempts, created_at_ms, updated_at_ms, repairs,
     repaired_at_ms)
SELECT ",
                $col!(0, text),
                ", ",
                $col!(1, text),
                ", ",
                $col!(2, text),
                ", ",
                $col!(3, text),
                ", ",
                $col!(4, text),
                ", 0, $2, $2, 1, $2 FROM ",
                $rows,
                " WHERE true
ON CONFLICT (event_id, sink, target) DO UPDATE SET
    repairs = deliveries.repairs + 1, repaired_at_ms = excluded.repaired_at_ms"
            ),
            uncertain: concat!(
                "SELECT subject_id, until_ms FROM uncertain
WHERE sink = $1 AND until_ms > $3 AND subject_id IN ",
                $list
            ),
            in_doubt: concat!(
                "SELECT subject_id, event_id, updated_at_ms FROM deliveries
WHERE sink = $1 AND updated_at_ms > $3 AND (status = 'in_flight' OR error_class = 'unknown')
    AND subject_id IN ",
                $list
            ),
        }
    };
}

/// SQLite: `json_extract` yields each JSON value as its SQL type (text, integer, NULL; true and
/// false as 1 and 0, which is how the BOOLEAN column stores them anyway).
macro_rules! sqlite_col {
    ($i:literal, $ty:ident) => {
        concat!("json_extract(value, '$[", $i, "]')")
    };
}

/// PostgreSQL: `->>` yields text (SQL NULL for JSON null), cast to the column's type.
macro_rules! postgres_col {
    ($i:literal, text) => {
        concat!("r->>", $i)
    };
    ($i:literal, $ty:ident) => {
        concat!("(r->>", $i, ")::", stringify!($ty))
    };
}

pub(crate) const SQLITE: Dialect = dialect!(
    "json_each($1)",
    "(SELECT value FROM json_each($2))",
    "(SELECT value FROM json_each($1))",
    sqlite_col
);

pub(crate) const POSTGRES: Dialect = dialect!(
    "json_array_elements($1::text::json) AS r",
    "(SELECT json_array_elements_text($2::text::json))",
    "(SELECT json_array_elements_text($1::text::json))",
    postgres_col
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_backend_unpacks_rows_its_own_way() {
        assert!(SQLITE.upsert_states.contains("json_extract(value, '$[4]')"));
        assert!(POSTGRES.upsert_states.contains("(r->>4)::bigint"));
        assert!(POSTGRES.insert_consent.contains("(r->>12)::boolean"));
        assert!(SQLITE
            .deliveries
            .ends_with("(SELECT value FROM json_each($2))"));
    }
}
