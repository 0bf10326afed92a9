use std::time::{Duration, SystemTime};

use crate::Outcome;

/// Maps an HTTP status to an outcome: 2xx applied; 429, and any 5xx that comes with a
/// `Retry-After`, unavailable (the destination asks us to hold off: it pauses, no item is blamed),
/// as is 408 (the server gave up waiting for us, like a timeout); the other 5xx but 501 retryable (charged to the items of the request, which the runtime
/// splits to find a poisoned one); 401, 403, 410, 426 and any 3xx refused (credentials,
/// permission, endpoint gone, API version sunset, endpoint moved: the destination, not the item,
/// is the problem); every other status permanent. `retry_after` is the raw `Retry-After` header. `detail` is the downstream's own
/// error text, kept for the ledger and the DLQ.
pub fn classify_status(
    status: u16,
    retry_after: Option<&str>,
    detail: impl Into<String>,
) -> Outcome {
    match status {
        200..=299 => Outcome::Applied,
        408 | 429 => Outcome::Unavailable {
            after: retry_after.and_then(|v| parse_retry_after(v, SystemTime::now())),
            reason: format!("HTTP {status}: {}", detail.into()),
        },
        500 | 502..=599 => {
            match retry_after.and_then(|v| parse_retry_after(v, SystemTime::now())) {
                Some(after) => Outcome::Unavailable {
                    after: Some(after),
                    reason: format!("HTTP {status}: {}", detail.into()),
                },
                None => Outcome::Retryable {
                    after: None,
                    reason: format!("HTTP {status}: {}", detail.into()),
                },
            }
        }
        // A 3xx too: redirects are not followed (a followed 301/302 turns a POST into a GET), and
        // an endpoint that moved is the destination's matter for an operator, not the item's.
        300..=399 | 401 | 403 | 410 | 426 => Outcome::Refused {
            reason: format!("HTTP {status}: {}", detail.into()),
        },
        _ => Outcome::Permanent {
            reason: format!("HTTP {status}: {}", detail.into()),
        },
    }
}

/// Maps a transport error (no HTTP status) to an outcome. A failure to connect makes the
/// destination unavailable: nothing was sent. Any later failure (a timeout, a connection reset
/// after the request was written, a broken response body) leaves the request's fate unknown: the
/// downstream may have applied it, or may still apply it. A request we could not even build is
/// permanent.
pub fn classify_transport(err: &reqwest::Error) -> Outcome {
    // reqwest's own message names the URL, and some APIs put an email address in the path: the
    // reason (logged, stored, dead-lettered) names the server (scheme, host, port), never the path.
    let to = err
        .url()
        .map(|u| format!(" to {}", u.origin().ascii_serialization()))
        .unwrap_or_default();
    let kind = if err.is_timeout() {
        "timeout"
    } else if err.is_connect() {
        "connection failed"
    } else if err.is_body() || err.is_decode() {
        "response body failed"
    } else {
        "request failed"
    };
    let cause = std::error::Error::source(err)
        .map(|c| format!(": {c}"))
        .unwrap_or_default();
    if err.is_builder() {
        Outcome::permanent(format!("request could not be built{cause}"))
    } else if err.is_connect() {
        Outcome::unavailable(format!("transport error{to}: {kind}{cause}"))
    } else {
        Outcome::Unknown {
            reason: format!("transport error{to}: {kind}{cause}"),
        }
    }
}

/// Parses `Retry-After` (RFC 9110 §10.2.3): delta-seconds or an HTTP-date. A date in the past
/// means "now" (zero); anything unparsable is ignored.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(status: u16) -> crate::OutcomeClass {
        classify_status(status, None, "x").class()
    }

    #[test]
    fn statuses_map_to_classes() {
        for s in [200, 201, 204, 207] {
            assert_eq!(class(s), "applied", "{s}");
        }
        for s in [500, 502, 503, 504, 599] {
            assert_eq!(class(s), "retryable", "{s}");
        }
        for s in [408, 429] {
            assert_eq!(class(s), "unavailable", "{s}");
        }
        assert_eq!(
            classify_status(503, Some("5"), "x").class(),
            "unavailable",
            "a 5xx with Retry-After pauses the destination"
        );
        for s in [400, 404, 409, 422, 501] {
            assert_eq!(class(s), "permanent", "{s}");
        }
        for s in [301, 302, 307, 308, 401, 403, 410, 426] {
            assert_eq!(class(s), "refused", "{s}");
        }
    }

    #[test]
    fn retry_after_seconds_and_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }

    #[test]
    fn retry_after_is_carried_on_429() {
        match classify_status(429, Some("3"), "slow down") {
            Outcome::Unavailable { after, reason } => {
                assert_eq!(after, Some(Duration::from_secs(3)));
                assert!(reason.contains("slow down"));
            }
            other => panic!("expected unavailable, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn transport_reasons_name_the_server_but_never_the_path() {
        // Nothing listens on port 9 of loopback: the connection is refused.
        let err = reqwest::Client::new()
            .get("http://127.0.0.1:9/contacts/max%40example.de")
            .send()
            .await
            .unwrap_err();
        let outcome = classify_transport(&err);
        assert_eq!(outcome.class(), "unavailable");
        let Outcome::Unavailable { reason, .. } = outcome else {
            unreachable!()
        };
        // Which server could not be reached, so that an operator knows where to look.
        assert!(
            reason.starts_with("transport error to http://127.0.0.1:9: connection failed"),
            "{reason}"
        );
        assert!(
            !reason.contains("example.de") && !reason.contains("/contacts"),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn a_request_that_was_sent_but_not_answered_is_of_unknown_fate() {
        // A server that reads the request and never answers: the client gives up, but the request
        // was written and may be applied.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(socket);
        });
        let err = reqwest::Client::new()
            .post(format!("http://{addr}/x"))
            .timeout(Duration::from_millis(200))
            .body("{}")
            .send()
            .await
            .unwrap_err();
        let outcome = classify_transport(&err);
        assert_eq!(outcome.class(), "unknown", "{outcome:?}");
        assert!(outcome.reason().unwrap().contains("timeout"), "{outcome:?}");
        // Later requests of the same delivery were not sent: those are merely unavailable.
        assert_eq!(outcome.unsent_after("x").unwrap().class(), "unavailable");
        server.abort();
    }

    #[test]
    fn worst_outcome_decides() {
        assert_eq!(
            Outcome::Refused { reason: "r".into() }
                .worst(Outcome::Unknown { reason: "u".into() })
                .class(),
            "unknown",
            "a part that may still land decides"
        );
        let r = Outcome::retryable("r");
        assert_eq!(
            Outcome::Applied.worst(Outcome::AlreadyApplied),
            Outcome::Applied
        );
        assert_eq!(Outcome::AlreadyApplied.worst(r.clone()), r);
        assert_eq!(
            r.clone().worst(Outcome::permanent("p")),
            Outcome::permanent("p")
        );
        let late = Outcome::Retryable {
            after: Some(Duration::from_secs(5)),
            reason: "b".into(),
        };
        match r.worst(late) {
            Outcome::Retryable { after, .. } => assert_eq!(after, Some(Duration::from_secs(5))),
            other => panic!("{other:?}"),
        }
    }
}
