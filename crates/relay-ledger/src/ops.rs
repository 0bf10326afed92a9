//! The statement-level operations, written once and stamped out for each backend's connection
//! type. Generic functions over `sqlx::Database` would need a wall of higher-ranked bounds; the
//! bodies are identical because the schemas and statements are, so a macro is the plainer way.
//! What differs per backend — how a write transaction is serialized — stays in the backend.

/// Splits `items` into rounds in which no key occurs twice: round k holds the k-th occurrence of
/// each key, in the items' order. A statement with conditional upserts sees only the rows as they
/// were before it, so two rows of one key in one statement would not see each other; in rounds,
/// each row sees the one before it, as it would one statement at a time.
pub(crate) fn rounds<'a, T, K: std::hash::Hash + Eq>(
    items: &'a [T],
    key: impl Fn(&'a T) -> K,
) -> Vec<Vec<&'a T>> {
    let mut seen: std::collections::HashMap<K, usize> = std::collections::HashMap::new();
    let mut rounds: Vec<Vec<&T>> = Vec::new();
    for item in items {
        let n = seen.entry(key(item)).or_insert(0);
        if rounds.len() <= *n {
            rounds.push(Vec::new());
        }
        rounds[*n].push(item);
        *n += 1;
    }
    rounds
}

/// A JSON array of rows, the one parameter a [`crate::sets::Dialect`] statement unpacks.
pub(crate) fn rows_json(rows: impl Iterator<Item = serde_json::Value>) -> String {
    serde_json::Value::Array(rows.collect()).to_string()
}

macro_rules! backend_ops {
    ($conn:ty, $dialect:expr) => {
        /// Decides `claims` inside the caller's (already serialized) transaction and writes the
        /// outcomes: per sink one read of the delivery rows and one of the subject states, the
        /// decisions in memory (rule.rs), then one write of each table.
        async fn claim_all(
            conn: &mut $conn,
            claims: &[$crate::Claim],
            now: i64,
        ) -> Result<Vec<$crate::Decision>, $crate::LedgerError> {
            use $crate::{codec, ops::rows_json, rule, DeliveryKey};
            use serde_json::json;
            let dialect = &$dialect;
            let mut known = rule::Known::default();
            let mut sinks: Vec<&str> = claims.iter().map(|c| c.key.sink.as_str()).collect();
            sinks.sort_unstable();
            sinks.dedup();
            for sink in sinks {
                let of_sink = || claims.iter().filter(move |c| c.key.sink == sink);
                let events = rows_json(of_sink().map(|c| json!(codec::uuid_text(c.key.event_id))));
                let rows: Vec<(String, String, String, i32, i32)> =
                    sqlx::query_as(dialect.deliveries)
                        .bind(sink)
                        .bind(events)
                        .fetch_all(&mut *conn)
                        .await?;
                for (event_id, target, status, attempts, parks) in rows {
                    let key = DeliveryKey {
                        event_id: codec::uuid(&event_id)?,
                        sink: sink.to_owned(),
                        target,
                    };
                    let state = codec::delivery_status((status, attempts, parks))?;
                    known.deliveries.insert(key, state);
                }
                let mut subjects: Vec<&str> = of_sink().map(|c| c.subject_id.as_str()).collect();
                subjects.sort_unstable();
                subjects.dedup();
                let rows: Vec<(String, String, String, String, i64, String)> =
                    sqlx::query_as(dialect.states)
                        .bind(sink)
                        .bind(rows_json(subjects.into_iter().map(|s| json!(s))))
                        .fetch_all(&mut *conn)
                        .await?;
                for (subject, sink, target, action, at, event_id) in rows {
                    let state = codec::state((sink, target, action, at, event_id))?;
                    known.states.entry(subject).or_default().push(state);
                }
            }

            let (decisions, writes) = rule::decide_all(claims, known);
            if !writes.states.is_empty() {
                let rows = writes.states.iter().map(|(subject, s)| {
                    json!([
                        subject,
                        s.sink,
                        s.target,
                        s.action.as_str(),
                        s.occurred_at_ms,
                        codec::uuid_text(s.event_id)
                    ])
                });
                sqlx::query(dialect.upsert_states)
                    .bind(rows_json(rows))
                    .bind(now)
                    .execute(&mut *conn)
                    .await?;
            }
            if !writes.claimed.is_empty() {
                let rows = writes
                    .claimed
                    .iter()
                    .map(|(key, subject, status, attempts, reasserts)| {
                        json!([
                            codec::uuid_text(key.event_id),
                            key.sink,
                            key.target,
                            subject,
                            status.as_str(),
                            codec::attempts_db(*attempts),
                            codec::attempts_db(*reasserts)
                        ])
                    });
                sqlx::query(dialect.upsert_claimed)
                    .bind(rows_json(rows))
                    .bind(now)
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(decisions)
        }

        async fn park_all(
            conn: &mut $conn,
            parks: &[$crate::Park],
            now: i64,
        ) -> Result<(), $crate::LedgerError> {
            use $crate::{codec, ops};
            for round in ops::rounds(parks, |p| &p.key) {
                let rows = round.iter().map(|p| {
                    serde_json::json!([
                        codec::uuid_text(p.key.event_id),
                        p.key.sink,
                        p.key.target,
                        p.subject_id,
                        codec::attempts_db(p.parks),
                        p.error
                    ])
                });
                sqlx::query($dialect.upsert_parked)
                    .bind(ops::rows_json(rows))
                    .bind(now)
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(())
        }

        /// Logs `records`; returns, in their order, the ids of those that conflict with an entry
        /// of the same event logged before (or earlier in the batch) with another payload digest.
        async fn log_all(
            conn: &mut $conn,
            records: &[$crate::ConsentRecord],
            now: i64,
        ) -> Result<Vec<uuid::Uuid>, $crate::LedgerError> {
            use $crate::{codec, ops};
            use serde_json::json;
            // Later copies of an id in the batch could insert nothing (the first copy's row is
            // there by then), so only first copies are sent.
            let mut seen = std::collections::HashSet::new();
            let rows = records.iter().filter(|r| seen.insert(r.event_id)).map(|r| {
                json!([
                    codec::uuid_text(r.event_id),
                    r.subject_id,
                    r.kind,
                    codec::purposes_text(&r.purposes),
                    r.occurred_at_ms,
                    r.source,
                    r.notice_version,
                    r.email_sha256,
                    r.topic,
                    r.partition,
                    r.offset,
                    r.payload_digest,
                    r.late,
                    r.google_email_sha256,
                    r.google_email_plus_sha256
                ])
            });
            let ids: Vec<String> = sqlx::query_scalar($dialect.insert_consent)
                .bind(ops::rows_json(rows))
                .bind(now)
                .fetch_all(&mut *conn)
                .await?;
            let mut inserted = std::collections::HashSet::new();
            for id in ids {
                inserted.insert(codec::uuid(&id)?);
            }
            // Each inserted id's first copy is new; every other record met an entry logged before.
            let mut firsts = std::collections::HashSet::new();
            let known: Vec<&$crate::ConsentRecord> = records
                .iter()
                .filter(|r| !(inserted.contains(&r.event_id) && firsts.insert(r.event_id)))
                .collect();
            if known.is_empty() {
                return Ok(Vec::new());
            }
            let ids = ops::rows_json(known.iter().map(|r| json!(codec::uuid_text(r.event_id))));
            let stored: Vec<(String, Option<String>)> =
                sqlx::query_as($dialect.consent_digests)
                    .bind(ids)
                    .fetch_all(&mut *conn)
                    .await?;
            let mut digests = std::collections::HashMap::new();
            for (id, digest) in stored {
                digests.insert(codec::uuid(&id)?, digest);
            }
            Ok(known
                .into_iter()
                .filter(|r| {
                    matches!(
                        (digests.get(&r.event_id), &r.payload_digest),
                        (Some(Some(a)), Some(b)) if a != b
                    )
                })
                .map(|r| r.event_id)
                .collect())
        }

        async fn finish_all(
            conn: &mut $conn,
            finishes: &[$crate::Finish],
            now: i64,
        ) -> Result<(), $crate::LedgerError> {
            use $crate::{codec, ops};
            for round in ops::rounds(finishes, |f| &f.key) {
                let rows = round.iter().map(|f| {
                    serde_json::json!([
                        codec::uuid_text(f.key.event_id),
                        f.key.sink,
                        f.key.target,
                        f.subject_id,
                        f.status.as_str(),
                        f.error_class,
                        f.error
                    ])
                });
                sqlx::query($dialect.upsert_finished)
                    .bind(ops::rows_json(rows))
                    .bind(now)
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(())
        }

        async fn mark_all_uncertain(
            conn: &mut $conn,
            marks: &[$crate::Uncertain],
        ) -> Result<(), $crate::LedgerError> {
            use $crate::ops;
            // Bounds long past say nothing any more; a day keeps them for `ledger show`.
            sqlx::query("DELETE FROM uncertain WHERE until_ms < $1")
                .bind($crate::now_ms().saturating_sub(86_400_000))
                .execute(&mut *conn)
                .await?;
            for round in ops::rounds(marks, |m| (&m.subject_id, &m.sink)) {
                let rows = round
                    .iter()
                    .map(|m| serde_json::json!([m.subject_id, m.sink, m.until_ms]));
                sqlx::query($dialect.upsert_uncertain)
                    .bind(ops::rows_json(rows))
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(())
        }

        async fn read_uncertain(
            conn: &mut $conn,
            sink: &str,
            subjects: &[String],
            now: i64,
            in_doubt: &$crate::InDoubt<'_>,
        ) -> Result<std::collections::HashMap<String, i64>, $crate::LedgerError> {
            use $crate::{codec, ops};
            let list = ops::rows_json(subjects.iter().map(|s| serde_json::json!(s)));
            let rows: Vec<(String, i64)> = sqlx::query_as($dialect.uncertain)
                .bind(sink)
                .bind(&list)
                .bind(now)
                .fetch_all(&mut *conn)
                .await?;
            let mut bounds: std::collections::HashMap<String, i64> = rows.into_iter().collect();
            let since = now.saturating_sub(in_doubt.window_ms);
            let rows: Vec<(String, String, i64)> = sqlx::query_as($dialect.in_doubt)
                .bind(sink)
                .bind(&list)
                .bind(since)
                .fetch_all(&mut *conn)
                .await?;
            for (subject, event_id, updated_at_ms) in rows {
                if in_doubt.exclude.contains(&codec::uuid(&event_id)?) {
                    continue;
                }
                let until = updated_at_ms.saturating_add(in_doubt.window_ms);
                let bound = bounds.entry(subject).or_insert(until);
                *bound = (*bound).max(until);
            }
            Ok(bounds)
        }

        async fn reject_all(
            conn: &mut $conn,
            rejections: &[$crate::Rejection],
            now: i64,
        ) -> Result<(), $crate::LedgerError> {
            use $crate::{codec, ops};
            // A position is recorded once; later copies in the batch would insert nothing.
            let mut seen = std::collections::HashSet::new();
            let rows = rejections
                .iter()
                .filter(|r| seen.insert((&r.sink, &r.topic, r.partition, r.offset)))
                .map(|r| {
                    serde_json::json!([
                        r.sink,
                        r.topic,
                        r.partition,
                        r.offset,
                        r.event_id.map(codec::uuid_text),
                        r.subject_id,
                        r.code,
                        r.message
                    ])
                });
            sqlx::query($dialect.insert_rejections)
                .bind(ops::rows_json(rows))
                .bind(now)
                .execute(&mut *conn)
                .await?;
            Ok(())
        }

        /// Reads the four parts of a subject report; the caller runs it in one transaction so
        /// they come from the same snapshot.
        async fn read_consent_for_purpose(
            conn: &mut $conn,
            purpose: &str,
        ) -> Result<Vec<$crate::ConsentRecord>, $crate::LedgerError> {
            use $crate::{codec, sql};
            let rows: Vec<codec::ConsentTuple> = sqlx::query_as(sql::CONSENT_FOR_PURPOSE)
                .bind(format!("%\"{purpose}\"%"))
                .bind("%\"*\"%")
                .fetch_all(&mut *conn)
                .await?;
            let records = codec::all(rows, codec::consent)?;
            Ok(records
                .into_iter()
                .filter(|r| r.purposes.iter().any(|p| p == purpose || p == "*"))
                .collect())
        }

        async fn read_report(
            conn: &mut $conn,
            subject_id: &str,
        ) -> Result<$crate::SubjectReport, $crate::LedgerError> {
            use $crate::{codec, sql};
            let consent: Vec<codec::ConsentTuple> = sqlx::query_as(sql::REPORT_CONSENT)
                .bind(subject_id)
                .fetch_all(&mut *conn)
                .await?;
            let deliveries: Vec<codec::DeliveryTuple> = sqlx::query_as(sql::REPORT_DELIVERIES)
                .bind(subject_id)
                .fetch_all(&mut *conn)
                .await?;
            let state: Vec<codec::StateTuple> = sqlx::query_as(sql::REPORT_STATE)
                .bind(subject_id)
                .fetch_all(&mut *conn)
                .await?;
            let rejections: Vec<codec::RejectionTuple> = sqlx::query_as(sql::REPORT_REJECTIONS)
                .bind(subject_id)
                .fetch_all(&mut *conn)
                .await?;
            Ok($crate::SubjectReport {
                consent_log: codec::all(consent, codec::consent)?,
                deliveries: codec::all(deliveries, codec::delivery)?,
                state: codec::all(state, codec::state)?,
                rejections: codec::all(rejections, codec::rejection)?,
            })
        }
    };
}

pub(crate) use backend_ops;

#[cfg(test)]
mod tests {
    #[test]
    fn rounds_hold_each_key_once_in_order() {
        let items = ["a1", "b1", "a2", "c1", "a3", "b2"];
        let rounds = super::rounds(&items, |s| s.as_bytes()[0]);
        assert_eq!(
            rounds,
            [vec![&"a1", &"b1", &"c1"], vec![&"a2", &"b2"], vec![&"a3"]]
        );
        assert!(super::rounds(&[] as &[u8], |b| *b).is_empty());
    }
}
