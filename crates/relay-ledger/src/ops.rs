//! The statement-level operations, written once and stamped out for each backend's connection
//! type. Generic functions over `sqlx::Database` would need a wall of higher-ranked bounds; the
//! bodies are identical because the schemas and statements are, so a macro is the plainer way.
//! What differs per backend — how a write transaction is serialized — stays in the backend.

macro_rules! backend_ops {
    ($conn:ty) => {
        /// Decides one claim inside the caller's (already serialized) transaction and writes its
        /// outcome.
        async fn claim_one(
            conn: &mut $conn,
            claim: &$crate::Claim,
            now: i64,
        ) -> Result<$crate::Decision, $crate::LedgerError> {
            use $crate::{codec, rule, sql, Decision, Status};
            let event_id = codec::uuid_text(claim.key.event_id);
            let delivery: Option<codec::DeliveryStatusRow> = sqlx::query_as(sql::DELIVERY_STATUS)
                .bind(&event_id)
                .bind(&claim.key.sink)
                .bind(&claim.key.target)
                .fetch_optional(&mut *conn)
                .await?;
            let delivery = delivery.map(codec::delivery_status).transpose()?;
            let states: Vec<codec::StateTuple> = sqlx::query_as(sql::STATES_FOR_CLAIM)
                .bind(&claim.subject_id)
                .bind(&claim.key.sink)
                .bind(&claim.key.target)
                .fetch_all(&mut *conn)
                .await?;
            let states = codec::all(states, codec::state)?;

            let decision = rule::decide(claim, delivery, &states);
            let (status, attempts) = match &decision {
                Decision::Duplicate { .. } => return Ok(decision),
                Decision::Superseded { .. } => {
                    (Status::Superseded, delivery.map_or(0, |d| d.attempts))
                }
                Decision::Proceed { attempt } | Decision::ProceedExcept { attempt, .. } => {
                    let attempt = *attempt;
                    sqlx::query(sql::UPSERT_STATE)
                        .bind(&claim.subject_id)
                        .bind(&claim.key.sink)
                        .bind(&claim.key.target)
                        .bind(claim.action.as_str())
                        .bind(claim.occurred_at_ms)
                        .bind(&event_id)
                        .bind(now)
                        .execute(&mut *conn)
                        .await?;
                    (Status::InFlight, attempt)
                }
            };
            sqlx::query(sql::UPSERT_CLAIMED)
                .bind(&event_id)
                .bind(&claim.key.sink)
                .bind(&claim.key.target)
                .bind(&claim.subject_id)
                .bind(status.as_str())
                .bind(codec::attempts_db(attempts))
                .bind(now)
                .execute(&mut *conn)
                .await?;
            Ok(decision)
        }

        async fn upsert_parked(
            conn: &mut $conn,
            p: &$crate::Park,
            now: i64,
        ) -> Result<(), $crate::LedgerError> {
            use $crate::{codec, sql};
            sqlx::query(sql::UPSERT_PARKED)
                .bind(codec::uuid_text(p.key.event_id))
                .bind(&p.key.sink)
                .bind(&p.key.target)
                .bind(&p.subject_id)
                .bind(codec::attempts_db(p.parks))
                .bind(&p.error)
                .bind(now)
                .execute(&mut *conn)
                .await?;
            Ok(())
        }

        /// Logs `r`; returns whether it conflicts with an entry of the same event logged before
        /// with another payload digest.
        async fn insert_consent(
            conn: &mut $conn,
            r: &$crate::ConsentRecord,
            now: i64,
        ) -> Result<bool, $crate::LedgerError> {
            use $crate::{codec, sql};
            let inserted: Option<String> = sqlx::query_scalar(sql::INSERT_CONSENT)
                .bind(codec::uuid_text(r.event_id))
                .bind(&r.subject_id)
                .bind(&r.kind)
                .bind(codec::purposes_text(&r.purposes))
                .bind(r.occurred_at_ms)
                .bind(&r.source)
                .bind(&r.notice_version)
                .bind(&r.email_sha256)
                .bind(&r.topic)
                .bind(r.partition)
                .bind(r.offset)
                .bind(now)
                .bind(&r.payload_digest)
                .bind(r.late)
                .fetch_optional(&mut *conn)
                .await?;
            if inserted.is_some() {
                return Ok(false);
            }
            let stored: Option<String> = sqlx::query_scalar(sql::CONSENT_DIGEST)
                .bind(codec::uuid_text(r.event_id))
                .fetch_one(&mut *conn)
                .await?;
            Ok(matches!((stored, &r.payload_digest), (Some(a), Some(b)) if &a != b))
        }

        async fn upsert_finished(
            conn: &mut $conn,
            f: &$crate::Finish,
            now: i64,
        ) -> Result<(), $crate::LedgerError> {
            use $crate::{codec, sql};
            sqlx::query(sql::UPSERT_FINISHED)
                .bind(codec::uuid_text(f.key.event_id))
                .bind(&f.key.sink)
                .bind(&f.key.target)
                .bind(&f.subject_id)
                .bind(f.status.as_str())
                .bind(&f.error_class)
                .bind(&f.error)
                .bind(now)
                .execute(&mut *conn)
                .await?;
            Ok(())
        }

        async fn insert_rejection(
            conn: &mut $conn,
            r: &$crate::Rejection,
            now: i64,
        ) -> Result<(), $crate::LedgerError> {
            use $crate::{codec, sql};
            sqlx::query(sql::INSERT_REJECTION)
                .bind(&r.sink)
                .bind(&r.topic)
                .bind(r.partition)
                .bind(r.offset)
                .bind(r.event_id.map(codec::uuid_text))
                .bind(&r.subject_id)
                .bind(&r.code)
                .bind(&r.message)
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
