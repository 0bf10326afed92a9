//! Rows as the database returns them (plain tuples, identical for both backends because the
//! schemas are) and their checked conversion into the public types. A value this build does not
//! understand is an error, never a silent default: guessing a status could re-apply an event.

use relay_events::Action;
use uuid::Uuid;

use crate::{
    ConsentRecord, DeliveryKey, DeliveryRow, LedgerError, Rejection, Status, SubjectState,
};

/// status, attempts, parks
pub(crate) type DeliveryStatusRow = (String, i32, i32);

/// event_id, sink, target, status, attempts, reasserts, error_class, error, updated_at_ms,
/// repairs, repaired_at_ms
pub(crate) type DeliveryTuple = (
    String,
    String,
    String,
    String,
    i32,
    i32,
    Option<String>,
    Option<String>,
    i64,
    i32,
    Option<i64>,
);

/// sink, target, action, occurred_at_ms, event_id
pub(crate) type StateTuple = (String, String, String, i64, String);

/// event_id, subject_id, kind, purposes, occurred_at_ms, source, notice_version, email_sha256,
/// topic, partition, offset, payload_digest, late, google_email_sha256, google_email_plus_sha256
pub(crate) type ConsentTuple = (
    String,
    String,
    String,
    String,
    i64,
    String,
    Option<String>,
    Option<String>,
    String,
    i32,
    i64,
    Option<String>,
    bool,
    Option<String>,
    Option<String>,
);

/// sink, topic, partition, offset, event_id, subject_id, code, message
pub(crate) type RejectionTuple = (
    String,
    String,
    i32,
    i64,
    Option<String>,
    Option<String>,
    String,
    String,
);

/// Hyphenated, so ids read the same in both backends and in `psql`/`sqlite3`.
pub(crate) fn uuid_text(id: Uuid) -> String {
    id.hyphenated().to_string()
}

pub(crate) fn uuid(text: &str) -> Result<Uuid, LedgerError> {
    Uuid::parse_str(text).map_err(|_| LedgerError::Corrupt(format!("event id {text:?}")))
}

pub(crate) fn status(text: &str) -> Result<Status, LedgerError> {
    Status::parse(text).ok_or_else(|| LedgerError::Corrupt(format!("delivery status {text:?}")))
}

pub(crate) fn action(text: &str) -> Result<Action, LedgerError> {
    Action::parse(text).ok_or_else(|| LedgerError::Corrupt(format!("action {text:?}")))
}

pub(crate) fn attempts(value: i32) -> Result<u32, LedgerError> {
    u32::try_from(value).map_err(|_| LedgerError::Corrupt(format!("attempts {value}")))
}

/// Attempts are stored as a 32-bit INTEGER; a count beyond that is pinned rather than wrapped.
pub(crate) fn attempts_db(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// JSON rather than a joined string, so a purpose name can never split into two.
pub(crate) fn purposes_text(purposes: &[String]) -> String {
    serde_json::to_string(purposes).expect("a list of strings always serializes")
}

pub(crate) fn purposes(text: &str) -> Result<Vec<String>, LedgerError> {
    serde_json::from_str(text).map_err(|_| LedgerError::Corrupt(format!("purposes {text:?}")))
}

pub(crate) fn delivery_status(
    (st, n, parks): DeliveryStatusRow,
) -> Result<crate::rule::DeliveryState, LedgerError> {
    Ok(crate::rule::DeliveryState {
        status: status(&st)?,
        attempts: attempts(n)?,
        parks: u32::try_from(parks).map_err(|_| LedgerError::Corrupt(format!("parks {parks}")))?,
    })
}

pub(crate) fn delivery(row: DeliveryTuple) -> Result<DeliveryRow, LedgerError> {
    let (
        event_id,
        sink,
        target,
        st,
        n,
        reasserts,
        error_class,
        error,
        updated_at_ms,
        repairs,
        repaired_at_ms,
    ) = row;
    Ok(DeliveryRow {
        key: DeliveryKey {
            event_id: uuid(&event_id)?,
            sink,
            target,
        },
        status: status(&st)?,
        attempts: attempts(n)?,
        reasserts: attempts(reasserts)?,
        error_class,
        error,
        updated_at_ms,
        repairs: attempts(repairs)?,
        repaired_at_ms,
    })
}

pub(crate) fn state(row: StateTuple) -> Result<SubjectState, LedgerError> {
    let (sink, target, act, occurred_at_ms, event_id) = row;
    Ok(SubjectState {
        sink,
        target,
        action: action(&act)?,
        occurred_at_ms,
        event_id: uuid(&event_id)?,
    })
}

pub(crate) fn consent(row: ConsentTuple) -> Result<ConsentRecord, LedgerError> {
    let (event_id, subject_id, kind, purposes_json, occurred_at_ms, source, notice_version) =
        (row.0, row.1, row.2, row.3, row.4, row.5, row.6);
    Ok(ConsentRecord {
        event_id: uuid(&event_id)?,
        subject_id,
        kind,
        purposes: purposes(&purposes_json)?,
        occurred_at_ms,
        source,
        notice_version,
        email_sha256: row.7,
        topic: row.8,
        partition: row.9,
        offset: row.10,
        payload_digest: row.11,
        late: row.12,
        google_email_sha256: row.13,
        google_email_plus_sha256: row.14,
    })
}

pub(crate) fn rejection(row: RejectionTuple) -> Result<Rejection, LedgerError> {
    let (sink, topic, partition, offset, event_id, subject_id, code, message) = row;
    Ok(Rejection {
        sink,
        topic,
        partition,
        offset,
        event_id: event_id.as_deref().map(uuid).transpose()?,
        subject_id,
        code,
        message,
    })
}

/// Runs `convert` over every row, stopping at the first value this build cannot read.
pub(crate) fn all<T, U>(
    rows: Vec<T>,
    convert: impl Fn(T) -> Result<U, LedgerError>,
) -> Result<Vec<U>, LedgerError> {
    rows.into_iter().map(convert).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purposes_round_trip_even_with_commas() {
        let list = vec![
            "newsletter".to_owned(),
            "odd,name".to_owned(),
            "*".to_owned(),
        ];
        assert_eq!(purposes(&purposes_text(&list)).unwrap(), list);
    }

    #[test]
    fn unknown_values_are_corrupt_not_defaulted() {
        assert!(matches!(status("done"), Err(LedgerError::Corrupt(_))));
        assert!(matches!(action("maybe"), Err(LedgerError::Corrupt(_))));
        assert!(matches!(uuid("not-a-uuid"), Err(LedgerError::Corrupt(_))));
        assert!(matches!(attempts(-1), Err(LedgerError::Corrupt(_))));
    }
}
