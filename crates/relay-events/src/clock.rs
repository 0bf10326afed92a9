//! The clock rule for `occurred_at` and the one way to print a millisecond timestamp. Pure: the
//! caller hands in the current time and the message's broker timestamp.
//!
//! `occurred_at` is the version of a decision (newest wins), so a producer that can date an event
//! into the future can make it unbeatable: a grant dated 2030 supersedes every withdrawal until
//! 2030. Hence an upper bound, against clocks the producer does not control (see
//! [`check_occurred_at`] and `docs/event-rules.md`).

use std::fmt;
use std::time::{Duration, UNIX_EPOCH};

use crate::ValidationError;

/// The last millisecond RFC 3339 can write: 9999-12-31T23:59:59.999Z.
pub const MAX_OCCURRED_AT_MS: i64 = 253_402_300_799_999;
/// How far `occurred_at` may be ahead of the reference clocks by default: what NTP-synchronised
/// machines never exceed, and short enough that a future-dated event wins for minutes at most.
pub const DEFAULT_FUTURE_TOLERANCE_MS: i64 = 5 * 60 * 1000;
/// Events older than this (by default) are accepted but flagged: longer than a message is
/// expected to wait in the topic, so such an event was backfilled or held back somewhere.
pub const DEFAULT_AGE_HORIZON_MS: i64 = 30 * 24 * 60 * 60 * 1000;

/// The clock an event was found to be ahead of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClockReference {
    /// The relay's own clock when it checked the event.
    RelayClock,
    /// The timestamp Kafka carries with the message (CreateTime or LogAppendTime).
    BrokerTimestamp,
}

impl fmt::Display for ClockReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClockReference::RelayClock => "the relay's clock",
            ClockReference::BrokerTimestamp => "the message's broker timestamp",
        })
    }
}

/// Rejects an `occurred_at` more than `tolerance_ms` ahead of `now_ms` (the relay's clock), or
/// ahead of the message's broker timestamp by as much, when there is one.
///
/// Each reference can only make the rule stricter, never looser, so a reference the producer
/// controls costs nothing in safety:
/// - The relay's clock is ours and the one reference a producer cannot move. Alone it would let
///   a message wait in the topic (lag, an outage, a DLQ replay much later) until a future date
///   it carried has passed.
/// - The broker timestamp records when the message was written: with LogAppendTime the broker's
///   clock, with CreateTime (the default) the producing client's. Nobody publishes a decision
///   before it was made, so `occurred_at` beyond it is wrong however late we read the message.
///   A CreateTime set into the future is caught by the relay's clock; one set into the past only
///   rejects the producer's own events.
///
/// `broker_timestamp_ms` of `None` or ≤ 0 (Kafka's -1 for "no timestamp") is ignored. A negative
/// `tolerance_ms` counts as 0. The relay's clock is reported first when both are exceeded.
pub fn check_occurred_at(
    occurred_at_ms: i64,
    broker_timestamp_ms: Option<i64>,
    now_ms: i64,
    tolerance_ms: i64,
) -> Result<(), ValidationError> {
    let tolerance_ms = tolerance_ms.max(0);
    let broker = broker_timestamp_ms
        .filter(|&ts| ts > 0)
        .map(|ts| (ClockReference::BrokerTimestamp, ts));
    for (reference, at) in [(ClockReference::RelayClock, now_ms)]
        .into_iter()
        .chain(broker)
    {
        let ahead_ms = occurred_at_ms.saturating_sub(at);
        if ahead_ms > tolerance_ms {
            return Err(ValidationError::FutureOccurredAt {
                ahead_ms,
                tolerance_ms,
                reference,
            });
        }
    }
    Ok(())
}

/// Whether `occurred_at_ms` lies more than `horizon_ms` before `now_ms`: such an event is applied
/// like any other, and the ledger flags it as late. A negative `horizon_ms` counts as 0.
pub fn is_older_than_horizon(occurred_at_ms: i64, now_ms: i64, horizon_ms: i64) -> bool {
    occurred_at_ms < now_ms.saturating_sub(horizon_ms.max(0))
}

/// RFC 3339 in UTC with milliseconds (`2026-11-26T10:00:00.000Z`) for 1970-01-01 up to
/// [`MAX_OCCURRED_AT_MS`]; `None` outside, where the formatter (humantime) has no answer.
pub fn format_timestamp_ms(ms: i64) -> Option<String> {
    if !(0..=MAX_OCCURRED_AT_MS).contains(&ms) {
        return None;
    }
    let t = UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs());
    Some(humantime::format_rfc3339_millis(t).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    const NOW: i64 = 1_795_687_200_000;
    const TOL: i64 = DEFAULT_FUTURE_TOLERANCE_MS;

    fn reference(r: Result<(), ValidationError>) -> Option<ClockReference> {
        match r {
            Ok(()) => None,
            Err(ValidationError::FutureOccurredAt { reference, .. }) => Some(reference),
            Err(other) => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn up_to_the_tolerance_ahead_of_the_relay_clock_passes() {
        assert_eq!(check_occurred_at(NOW + TOL, None, NOW, TOL), Ok(()));
        assert_eq!(check_occurred_at(NOW - 86_400_000, None, NOW, TOL), Ok(()));
        let err = check_occurred_at(NOW + TOL + 1, None, NOW, TOL).unwrap_err();
        assert_eq!(err.code(), ErrorCode::FutureOccurredAt);
        assert_eq!(
            err.to_string(),
            "field `occurred_at` is 300001 ms ahead of the relay's clock (tolerance 300000 ms)"
        );
    }

    #[test]
    fn the_broker_timestamp_only_tightens() {
        // Written an hour ago, dated half an hour after writing: wrong, although "now" is later.
        let written = NOW - 3_600_000;
        assert_eq!(
            reference(check_occurred_at(
                written + 1_800_000,
                Some(written),
                NOW,
                TOL
            )),
            Some(ClockReference::BrokerTimestamp)
        );
        // A CreateTime from a producer clock running a day ahead does not loosen the rule.
        assert_eq!(
            reference(check_occurred_at(
                NOW + 3_600_000,
                Some(NOW + 86_400_000),
                NOW,
                TOL
            )),
            Some(ClockReference::RelayClock)
        );
        // No timestamp (-1), or none at all: the relay's clock alone.
        for ts in [Some(-1), Some(0), None] {
            assert_eq!(check_occurred_at(NOW + TOL, ts, NOW, TOL), Ok(()));
        }
    }

    #[test]
    fn extremes_neither_overflow_nor_pass() {
        for at in [i64::MAX, MAX_OCCURRED_AT_MS + 1] {
            assert!(check_occurred_at(at, None, NOW, TOL).is_err());
            assert!(check_occurred_at(at, Some(i64::MIN), NOW, TOL).is_err());
        }
        assert!(check_occurred_at(i64::MAX, None, i64::MIN, 0).is_err());
        assert_eq!(
            check_occurred_at(i64::MIN, Some(i64::MAX), i64::MAX, i64::MAX),
            Ok(())
        );
        assert_eq!(check_occurred_at(NOW, None, NOW, -5), Ok(()));
        assert!(check_occurred_at(NOW + 1, None, NOW, -5).is_err());
    }

    #[test]
    fn the_horizon_flags_old_events_only() {
        let horizon = DEFAULT_AGE_HORIZON_MS;
        assert!(!is_older_than_horizon(NOW, NOW, horizon));
        assert!(!is_older_than_horizon(NOW - horizon, NOW, horizon));
        assert!(is_older_than_horizon(NOW - horizon - 1, NOW, horizon));
        assert!(!is_older_than_horizon(NOW + 1, NOW, horizon));
        assert!(is_older_than_horizon(i64::MIN, NOW, horizon));
        assert!(!is_older_than_horizon(i64::MIN, i64::MIN, i64::MAX));
        assert!(!is_older_than_horizon(i64::MAX, NOW, -1));
    }

    #[test]
    fn every_i64_formats_or_says_it_cannot() {
        assert_eq!(
            format_timestamp_ms(0).as_deref(),
            Some("1970-01-01T00:00:00.000Z")
        );
        assert_eq!(
            format_timestamp_ms(MAX_OCCURRED_AT_MS).as_deref(),
            Some("9999-12-31T23:59:59.999Z")
        );
        for ms in [i64::MIN, -1, MAX_OCCURRED_AT_MS + 1, i64::MAX] {
            assert_eq!(format_timestamp_ms(ms), None, "{ms}");
        }
    }
}
