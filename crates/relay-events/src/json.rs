//! The JSON-lines input of `consent-relay publish`. Upstream teams write these lines by hand, so
//! the parser is strict (unknown keys are errors, naming the key) and its messages point at the key
//! at fault, never echo a contact value.
//!
//! ```json
//! {"type":"ConsentGranted","subject_id":"s-1","occurred_at":"2026-11-26T10:00:00Z",
//!  "source":"web-form","notice_version":"2026-10","purposes":["newsletter"],
//!  "contact":{"email":"max@example.de"}}
//! ```
//! `event_id` is optional (a v4 UUID is generated), `occurred_at` is RFC 3339 or integer
//! milliseconds, `all_purposes` exists only for `Unsubscribed`, `purposes` not for
//! `ErasureRequested`. `contact` takes the keys of the newest `Contact` record: `email`, `phone`,
//! `first_name`, `last_name`, `company`, and since v2 `street`, `postal_code`, `city`, `country`
//! (ISO 3166-1 alpha-2) and `company_size`.

use std::time::UNIX_EPOCH;

use serde_json::{Map, Value};
use uuid::Uuid;

use crate::{
    format_timestamp_ms, parse_event_id, ConsentEvent, Contact, EventKind, Scope, ValidationError,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("not valid JSON: {0}")]
    Syntax(String),
    #[error("a line must be a JSON object")]
    NotAnObject,
    #[error("unknown event type `{0}` (expected ConsentGranted, ConsentWithdrawn, Unsubscribed or ErasureRequested)")]
    UnknownType(String),
    #[error("unknown key `{key}` for {kind}")]
    UnknownKey { key: String, kind: &'static str },
    #[error("`{key}` must be {expected}")]
    WrongType { key: String, expected: &'static str },
    #[error("`{key}` {reason}")]
    InvalidValue { key: &'static str, reason: String },
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}

const COMMON_KEYS: &[&str] = &[
    "type",
    "event_id",
    "subject_id",
    "occurred_at",
    "source",
    "notice_version",
    "contact",
];
const CONTACT_KEYS: &[&str] = &[
    "email",
    "phone",
    "first_name",
    "last_name",
    "company",
    "street",
    "postal_code",
    "city",
    "country",
    "company_size",
];

/// Keys beyond [`COMMON_KEYS`], mirroring the fields of each Avro record.
fn extra_keys(kind: EventKind) -> &'static [&'static str] {
    match kind {
        EventKind::ConsentGranted | EventKind::ConsentWithdrawn => &["purposes"],
        EventKind::Unsubscribed => &["purposes", "all_purposes"],
        EventKind::ErasureRequested => &[],
    }
}

/// Parses and validates one line.
pub fn from_json_line(line: &str) -> Result<ConsentEvent, JsonError> {
    let ev = from_json_line_unvalidated(line).map_err(|mut all| all.swap_remove(0))?;
    ev.validate()?;
    Ok(ev)
}

/// Parses one line into an event without [`ConsentEvent::validate`], for a caller that reports
/// every problem of it ([`ConsentEvent::problems`]). Every structural problem (unknown keys, a
/// missing or mistyped field) is returned, never an empty list; only a line that is no JSON
/// object, or has no usable `type`, stops at that.
pub fn from_json_line_unvalidated(line: &str) -> Result<ConsentEvent, Vec<JsonError>> {
    let value: Value =
        serde_json::from_str(line).map_err(|e| vec![JsonError::Syntax(e.to_string())])?;
    let Value::Object(mut obj) = value else {
        return Err(vec![JsonError::NotAnObject]);
    };
    let kind = match obj.get("type") {
        None | Some(Value::Null) => return Err(vec![ValidationError::MissingField("type").into()]),
        Some(Value::String(name)) => {
            EventKind::from_name(name).ok_or_else(|| vec![JsonError::UnknownType(name.clone())])?
        }
        Some(_) => return Err(vec![wrong_type("type", "a string")]),
    };
    let mut problems: Vec<JsonError> = obj
        .keys()
        .filter(|k| !COMMON_KEYS.contains(&k.as_str()) && !extra_keys(kind).contains(&k.as_str()))
        .map(|key| JsonError::UnknownKey {
            key: key.clone(),
            kind: kind.name(),
        })
        .collect();

    let event_id = ok(
        &mut problems,
        match obj.remove("event_id") {
            None | Some(Value::Null) => Ok(Uuid::new_v4()),
            Some(Value::String(s)) => parse_event_id(&s).map_err(JsonError::from),
            Some(_) => Err(wrong_type("event_id", "a UUID string")),
        },
    );
    let subject_id = ok(&mut problems, required_string(&mut obj, "subject_id"));
    let occurred_at_ms = ok(
        &mut problems,
        match obj.remove("occurred_at") {
            None | Some(Value::Null) => Err(ValidationError::MissingField("occurred_at").into()),
            Some(Value::String(s)) => parse_timestamp(&s),
            Some(Value::Number(n)) => n.as_i64().ok_or_else(|| {
                wrong_type(
                    "occurred_at",
                    "an RFC 3339 timestamp or integer milliseconds",
                )
            }),
            Some(_) => Err(wrong_type(
                "occurred_at",
                "an RFC 3339 timestamp or integer milliseconds",
            )),
        },
    );
    let source = ok(&mut problems, required_string(&mut obj, "source"));
    let notice_version = ok(&mut problems, optional_string(&mut obj, "notice_version"));

    let scope = ok(
        &mut problems,
        match kind {
            EventKind::ConsentGranted | EventKind::ConsentWithdrawn => {
                match string_list(&mut obj, "purposes") {
                    Ok(Some(p)) => Ok(Scope::Purposes(p)),
                    Ok(None) => Err(ValidationError::MissingField("purposes").into()),
                    Err(e) => Err(e),
                }
            }
            EventKind::Unsubscribed => {
                let all = match obj.remove("all_purposes") {
                    None | Some(Value::Null) => Ok(false),
                    Some(Value::Bool(b)) => Ok(b),
                    Some(_) => Err(wrong_type("all_purposes", "true or false")),
                };
                match (all, string_list(&mut obj, "purposes")) {
                    (Err(e), _) | (_, Err(e)) => Err(e),
                    (Ok(all), Ok(purposes)) => {
                        let purposes = purposes.unwrap_or_default();
                        match (all, purposes.is_empty()) {
                            (true, true) => Ok(Scope::All),
                            // Hand-written input: a list next to all_purposes is more likely a
                            // mistake than intended, even though the Avro reader would let
                            // all_purposes win.
                            (true, false) => Err(JsonError::InvalidValue {
                                key: "purposes",
                                reason: "must be empty or absent when all_purposes is true".into(),
                            }),
                            (false, _) => Ok(Scope::Purposes(purposes)),
                        }
                    }
                }
            }
            EventKind::ErasureRequested => Ok(Scope::All),
        },
    );

    let contact = match obj.remove("contact") {
        None | Some(Value::Null) => Some(Contact::default()),
        Some(Value::Object(mut c)) => {
            for key in c.keys().filter(|k| !CONTACT_KEYS.contains(&k.as_str())) {
                problems.push(JsonError::UnknownKey {
                    key: format!("contact.{key}"),
                    kind: kind.name(),
                });
            }
            let mut field = |name: &'static str| -> Option<String> {
                match c.remove(name) {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => Some(s),
                    Some(_) => {
                        problems.push(wrong_type(format!("contact.{name}"), "a string or null"));
                        None
                    }
                }
            };
            Some(Contact {
                email: field("email"),
                phone: field("phone"),
                first_name: field("first_name"),
                last_name: field("last_name"),
                company: field("company"),
                street: field("street"),
                postal_code: field("postal_code"),
                city: field("city"),
                country: field("country"),
                company_size: field("company_size"),
            })
        }
        Some(_) => {
            problems.push(wrong_type("contact", "an object"));
            None
        }
    };

    match (
        event_id,
        subject_id,
        occurred_at_ms,
        source,
        notice_version,
        scope,
        contact,
    ) {
        (
            Some(event_id),
            Some(subject_id),
            Some(occurred_at_ms),
            Some(source),
            Some(notice_version),
            Some(scope),
            Some(contact),
        ) if problems.is_empty() => Ok(ConsentEvent {
            event_id,
            kind,
            subject_id,
            occurred_at_ms,
            source,
            notice_version,
            scope,
            contact,
        }),
        _ => Err(problems),
    }
}

/// The same shape [`from_json_line`] reads; `occurred_at` as RFC 3339 with milliseconds where
/// representable, so that the line round-trips exactly.
pub fn to_json(ev: &ConsentEvent) -> Value {
    let mut obj = Map::new();
    let mut put = |k: &str, v: Value| {
        obj.insert(k.to_owned(), v);
    };
    put("type", ev.kind.name().into());
    put("event_id", ev.event_id.to_string().into());
    put("subject_id", ev.subject_id.clone().into());
    put("occurred_at", format_timestamp(ev.occurred_at_ms));
    put("source", ev.source.clone().into());
    if let Some(v) = &ev.notice_version {
        put("notice_version", v.clone().into());
    }
    match (ev.kind, &ev.scope) {
        (EventKind::ErasureRequested, _) => {}
        (EventKind::Unsubscribed, Scope::All) => put("all_purposes", true.into()),
        (_, Scope::Purposes(p)) => put("purposes", p.clone().into()),
        (_, Scope::All) => put("purposes", Value::Array(Vec::new())),
    }
    let c = &ev.contact;
    let mut contact = Map::new();
    for (k, v) in [
        ("email", &c.email),
        ("phone", &c.phone),
        ("first_name", &c.first_name),
        ("last_name", &c.last_name),
        ("company", &c.company),
        ("street", &c.street),
        ("postal_code", &c.postal_code),
        ("city", &c.city),
        ("country", &c.country),
        ("company_size", &c.company_size),
    ] {
        if let Some(v) = v {
            contact.insert(k.to_owned(), v.clone().into());
        }
    }
    put("contact", Value::Object(contact));
    Value::Object(obj)
}

/// The value, or `None` with its problem noted.
fn ok<T>(problems: &mut Vec<JsonError>, r: Result<T, JsonError>) -> Option<T> {
    r.map_err(|e| problems.push(e)).ok()
}

fn wrong_type(key: impl Into<String>, expected: &'static str) -> JsonError {
    JsonError::WrongType {
        key: key.into(),
        expected,
    }
}

fn required_string(obj: &mut Map<String, Value>, key: &'static str) -> Result<String, JsonError> {
    match obj.remove(key) {
        None | Some(Value::Null) => Err(ValidationError::MissingField(key).into()),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(wrong_type(key, "a string")),
    }
}

fn optional_string(
    obj: &mut Map<String, Value>,
    key: &'static str,
) -> Result<Option<String>, JsonError> {
    match obj.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(wrong_type(key, "a string or null")),
    }
}

fn string_list(
    obj: &mut Map<String, Value>,
    key: &'static str,
) -> Result<Option<Vec<String>>, JsonError> {
    match obj.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::String(s) => Ok(s),
                _ => Err(wrong_type(key, "an array of strings")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(wrong_type(key, "an array of strings")),
    }
}

/// RFC 3339. humantime only reads UTC (`Z`, `+00:00`); other offsets are applied here because
/// hand-written lines from a German team will say `+01:00`.
fn parse_timestamp(s: &str) -> Result<i64, JsonError> {
    let bad = |detail: String| {
        JsonError::InvalidValue {
        key: "occurred_at",
        reason: format!(
            "is not an RFC 3339 timestamp such as 2026-11-26T10:00:00Z or 2026-11-26T11:00:00+01:00 ({detail})"
        ),
    }
    };
    let (utc, offset_ms) = match split_offset(s) {
        Some((head, offset_ms)) => (format!("{head}Z"), offset_ms),
        None => (s.to_owned(), 0),
    };
    let t = humantime::parse_rfc3339(&utc).map_err(|e| bad(e.to_string()))?;
    let since_epoch = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| bad("before 1970".into()))?;
    let ms = i64::try_from(since_epoch.as_millis()).map_err(|_| bad("out of range".into()))?;
    Ok(ms - offset_ms)
}

/// `("2026-11-26T11:00:00", 3_600_000)` for `2026-11-26T11:00:00+01:00`; `None` for UTC and for
/// anything without a numeric offset.
fn split_offset(s: &str) -> Option<(&str, i64)> {
    let cut = s.len().checked_sub(6)?;
    let (head, tail) = (s.get(..cut)?, s.get(cut..)?.as_bytes());
    let sign = match tail[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits = [tail[1], tail[2], tail[4], tail[5]];
    if tail[3] != b':' || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let d = |i: usize| i64::from(digits[i] - b'0');
    let (hours, minutes) = (d(0) * 10 + d(1), d(2) * 10 + d(3));
    if hours > 23 || minutes > 59 {
        return None;
    }
    Some((head, sign * (hours * 60 + minutes) * 60_000))
}

fn format_timestamp(ms: i64) -> Value {
    // Anything unprintable (invalid anyway) stays a number, so the line still says what it was.
    format_timestamp_ms(ms).map_or_else(|| Value::from(ms), Value::String)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn line(v: Value) -> String {
        v.to_string()
    }

    fn grant_json() -> Value {
        json!({
            "type": "ConsentGranted",
            "event_id": "0b9f4a4e-6c1d-4b3a-9a57-2f1d3c4e5f60",
            "subject_id": "subj-42",
            "occurred_at": "2026-11-26T10:00:00Z",
            "source": "web-form",
            "notice_version": "2026-10",
            "purposes": ["newsletter"],
            "contact": {"email": "max@example.de", "phone": null, "first_name": "Max",
                        "last_name": "Mustermann", "company": "in-GmbH"}
        })
    }

    #[test]
    fn parses_the_documented_shape() {
        let ev = from_json_line(&line(grant_json())).unwrap();
        assert_eq!(ev.kind, EventKind::ConsentGranted);
        assert_eq!(
            ev.event_id.to_string(),
            "0b9f4a4e-6c1d-4b3a-9a57-2f1d3c4e5f60"
        );
        assert_eq!(ev.occurred_at_ms, 1_795_687_200_000);
        assert_eq!(ev.scope, Scope::Purposes(vec!["newsletter".into()]));
        assert_eq!(ev.notice_version.as_deref(), Some("2026-10"));
        assert_eq!(ev.contact.email.as_deref(), Some("max@example.de"));
        assert_eq!(ev.contact.phone, None);
        assert_eq!(ev.contact.company.as_deref(), Some("in-GmbH"));
    }

    #[test]
    fn round_trips_through_to_json() {
        let lines = [
            grant_json(),
            json!({"type": "ConsentWithdrawn", "subject_id": "s", "occurred_at": 1_795_687_200_123_i64,
                   "source": "portal", "purposes": ["a", "b"]}),
            json!({"type": "Unsubscribed", "subject_id": "s", "occurred_at": "2026-11-26T10:00:00.5Z",
                   "source": "newsletter-link", "all_purposes": true,
                   "contact": {"email": "max@example.de"}}),
            json!({"type": "Unsubscribed", "subject_id": "s", "occurred_at": "2026-11-26T10:00:00Z",
                   "source": "newsletter-link", "purposes": ["newsletter"], "all_purposes": false}),
            json!({"type": "ErasureRequested", "subject_id": "s", "occurred_at": "2026-11-26T10:00:00Z",
                   "source": "portal", "notice_version": null}),
        ];
        for l in lines {
            let ev = from_json_line(&line(l.clone())).unwrap_or_else(|e| panic!("{e}: {l}"));
            let back = from_json_line(&line(to_json(&ev))).unwrap();
            assert_eq!(back, ev);
        }
    }

    #[test]
    fn postal_address_and_company_size_round_trip() {
        let mut v = grant_json();
        v["contact"]["street"] = json!("Am Seerhein 8");
        v["contact"]["postal_code"] = json!("78467");
        v["contact"]["city"] = json!("Konstanz");
        v["contact"]["country"] = json!("DE");
        v["contact"]["company_size"] = json!("50-249");
        let ev = from_json_line(&line(v)).unwrap();
        let c = &ev.contact;
        assert_eq!(c.street.as_deref(), Some("Am Seerhein 8"));
        assert_eq!(c.postal_code.as_deref(), Some("78467"));
        assert_eq!(c.city.as_deref(), Some("Konstanz"));
        assert_eq!(c.country.as_deref(), Some("DE"));
        assert_eq!(c.company_size.as_deref(), Some("50-249"));
        let back = to_json(&ev);
        assert_eq!(back["contact"]["company_size"], "50-249");
        assert_eq!(from_json_line(&line(back)), Ok(ev));
    }

    #[test]
    fn event_id_is_generated_when_absent() {
        let mut v = grant_json();
        v.as_object_mut().unwrap().remove("event_id");
        let a = from_json_line(&line(v.clone())).unwrap();
        let b = from_json_line(&line(v)).unwrap();
        assert_ne!(a.event_id, b.event_id);
        assert_eq!(a.event_id.get_version_num(), 4);
    }

    #[test]
    fn timestamps() {
        let at = |t: Value| {
            let mut v = grant_json();
            v["occurred_at"] = t;
            from_json_line(&line(v)).map(|e| e.occurred_at_ms)
        };
        assert_eq!(at(json!("2026-11-26T10:00:00Z")), Ok(1_795_687_200_000));
        assert_eq!(
            at(json!("2026-11-26T11:00:00+01:00")),
            Ok(1_795_687_200_000)
        );
        assert_eq!(
            at(json!("2026-11-26T05:30:00-04:30")),
            Ok(1_795_687_200_000)
        );
        assert_eq!(
            at(json!("2026-11-26T10:00:00.250+00:00")),
            Ok(1_795_687_200_250)
        );
        assert_eq!(at(json!(1_795_687_200_000_i64)), Ok(1_795_687_200_000));
        for bad in [
            json!("26.11.2026 10:00"),
            json!("2026-11-26"),
            json!(1.5),
            json!(true),
        ] {
            let err = at(bad.clone()).unwrap_err();
            assert!(err.to_string().contains("occurred_at"), "{bad}: {err}");
        }
        assert_eq!(
            at(json!(0)).unwrap_err(),
            JsonError::Invalid(ValidationError::InvalidField {
                field: crate::Field::OccurredAt,
                reason: "must be after 1970-01-01T00:00:00Z".into()
            })
        );
    }

    #[test]
    fn missing_required_fields_are_named() {
        for key in [
            "type",
            "subject_id",
            "occurred_at",
            "source",
            "notice_version",
            "purposes",
        ] {
            let mut v = grant_json();
            v.as_object_mut().unwrap().remove(key);
            let err = from_json_line(&line(v)).unwrap_err();
            assert!(
                matches!(&err, JsonError::Invalid(ValidationError::MissingField(k)) if *k == key),
                "{key}: {err:?}"
            );
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn every_structural_problem_of_a_line_is_named() {
        let all = from_json_line_unvalidated(
            r#"{"type":"ConsentGranted","subjectid":"s","occurred_at":"yesterday","source":7,"purposes":"newsletter","contact":{"email":"a@b.de","fax":"1","phone":5}}"#,
        )
        .unwrap_err();
        let text: Vec<String> = all.iter().map(ToString::to_string).collect();
        for needle in [
            "unknown key `subjectid`",
            "subject_id",
            "occurred_at",
            "`source` must be a string",
            "`purposes` must be an array of strings",
            "unknown key `contact.fax`",
            "`contact.phone` must be a string or null",
        ] {
            assert!(
                text.iter().any(|t| t.contains(needle)),
                "{needle} not in {text:?}"
            );
        }
        assert_eq!(text.len(), 7, "{text:?}");
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let mut v = grant_json();
        v["purpose"] = json!("newsletter");
        let err = from_json_line(&line(v)).unwrap_err();
        assert_eq!(err.to_string(), "unknown key `purpose` for ConsentGranted");

        let mut v = grant_json();
        v["contact"]["fax"] = json!("+49 30 123456");
        let err = from_json_line(&line(v)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown key `contact.fax` for ConsentGranted"
        );

        let erasure = json!({"type": "ErasureRequested", "subject_id": "s", "source": "portal",
                             "occurred_at": "2026-11-26T10:00:00Z", "purposes": ["newsletter"]});
        assert!(matches!(
            from_json_line(&line(erasure)),
            Err(JsonError::UnknownKey { key, .. }) if key == "purposes"
        ));
        let mut v = grant_json();
        v["all_purposes"] = json!(true);
        assert!(matches!(
            from_json_line(&line(v)),
            Err(JsonError::UnknownKey { .. })
        ));
    }

    #[test]
    fn other_errors() {
        assert!(matches!(from_json_line("{"), Err(JsonError::Syntax(_))));
        assert_eq!(from_json_line("[1]"), Err(JsonError::NotAnObject));
        let mut v = grant_json();
        v["type"] = json!("ConsentGiven");
        assert_eq!(
            from_json_line(&line(v)),
            Err(JsonError::UnknownType("ConsentGiven".into()))
        );
        let mut v = grant_json();
        v["purposes"] = json!("newsletter");
        assert!(matches!(
            from_json_line(&line(v)),
            Err(JsonError::WrongType { .. })
        ));
        for id in ["not-a-uuid", "{0b9f4a4e-6c1d-4b3a-9a57-2f1d3c4e5f60}"] {
            let mut v = grant_json();
            v["event_id"] = json!(id);
            assert!(matches!(
                from_json_line(&line(v)),
                Err(JsonError::Invalid(ValidationError::InvalidField {
                    field: crate::Field::EventId,
                    ..
                }))
            ));
        }
        let unsub = json!({"type": "Unsubscribed", "subject_id": "s", "source": "x",
                           "occurred_at": 1, "all_purposes": true, "purposes": ["a"]});
        assert!(matches!(
            from_json_line(&line(unsub)),
            Err(JsonError::InvalidValue {
                key: "purposes",
                ..
            })
        ));
    }

    #[test]
    fn invalid_contact_is_rejected_without_echoing_it() {
        let mut v = grant_json();
        v["contact"]["email"] = json!("max.mustermann-at-example.de");
        let err = from_json_line(&line(v)).unwrap_err();
        assert_eq!(
            err,
            JsonError::Invalid(ValidationError::InvalidEmail("email has no '@'"))
        );
        assert!(!err.to_string().contains("mustermann"));
        let mut v = grant_json();
        v["contact"]["phone"] = json!(4930123456_i64);
        let err = from_json_line(&line(v)).unwrap_err();
        assert_eq!(err.to_string(), "`contact.phone` must be a string or null");
    }
}
