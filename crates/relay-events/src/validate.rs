//! The rules every event must pass before it reaches a downstream, and the two error types the DLQ
//! names. Messages say what is wrong, never the offending value: the raw email or phone would
//! otherwise end up in logs and DLQ headers (DESIGN.md §6: PII is never logged).

use std::collections::HashSet;

use crate::{ConsentEvent, EventKind, Scope};

/// Longest accepted `subject_id`, in characters: it is a Kafka key and a ledger key, not a document.
pub const MAX_SUBJECT_ID_CHARS: usize = 256;

/// Why an event was rejected. [`ValidationError::code`] is the stable value of the DLQ error header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("missing required field `{0}`")]
    MissingField(&'static str),
    /// `reason` is written by this crate and never contains the field's value.
    #[error("field `{field}` {reason}")]
    InvalidField { field: &'static str, reason: String },
    /// The text is the whole message, e.g. "email has no '@'".
    #[error("{0}")]
    InvalidEmail(&'static str),
    #[error("{0}")]
    InvalidPhone(&'static str),
    /// Raised by the runtime, which knows which purposes need an email (configuration).
    #[error("a purpose of this event needs an email address, but the event has none")]
    MissingEmail,
    /// Raised by the runtime, which knows the configured purposes. Purpose names are not PII.
    #[error("unknown purpose `{0}`")]
    UnknownPurpose(String),
}

impl ValidationError {
    /// Stable snake_case code for the DLQ header and metrics labels.
    pub fn code(&self) -> &'static str {
        match self {
            ValidationError::MissingField(_) => "missing_field",
            ValidationError::InvalidField { .. } => "invalid_field",
            ValidationError::InvalidEmail(_) => "invalid_email",
            ValidationError::InvalidPhone(_) => "invalid_phone",
            ValidationError::MissingEmail => "missing_email",
            ValidationError::UnknownPurpose(_) => "unknown_purpose",
        }
    }

    fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        ValidationError::InvalidField {
            field,
            reason: reason.into(),
        }
    }
}

/// Why bytes did not become an event. Every variant ends in the DLQ, none is dropped (DESIGN.md §2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message too short: {len} bytes, the frame needs at least {needed}")]
    TooShort { len: usize, needed: usize },
    /// The hex of the leading byte(s), e.g. "0x7b" or "0xc3 0x02".
    #[error("unknown magic byte(s) {0}")]
    UnknownMagic(String),
    /// [`crate::decode`] only knows the bundled schemas; a Confluent frame names a registry id.
    #[error("Confluent-framed message (schema id {schema_id}) needs its writer schema from the schema registry")]
    NeedsRegistry { schema_id: u32 },
    #[error("no bundled schema has fingerprint {0:#018x}")]
    UnknownFingerprint(u64),
    #[error("no bundled schema for record `{0}`")]
    UnknownRecord(String),
    /// The writer schema has neither this field nor the reader a default for it.
    #[error("missing required field `{0}`")]
    MissingField(String),
    #[error("Avro body ends before the record does")]
    Truncated,
    /// The apache-avro message with any embedded value cut off (see `wire::avro_message`).
    #[error("Avro: {0}")]
    Avro(String),
    #[error("{0} trailing bytes after the Avro body")]
    TrailingBytes(usize),
    #[error("invalid event: {0}")]
    Invalid(#[from] ValidationError),
}

impl DecodeError {
    /// Stable snake_case code for the DLQ header and metrics labels.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::TooShort { .. }
            | DecodeError::UnknownMagic(_)
            | DecodeError::Truncated
            | DecodeError::Avro(_)
            | DecodeError::TrailingBytes(_) => "undecodable",
            DecodeError::NeedsRegistry { .. }
            | DecodeError::UnknownFingerprint(_)
            | DecodeError::UnknownRecord(_) => "unknown_schema",
            DecodeError::MissingField(_) => "missing_field",
            DecodeError::Invalid(v) => v.code(),
        }
    }
}

impl ConsentEvent {
    /// Checks everything that can be checked without configuration; the first problem wins.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.event_id.is_nil() {
            // A shared idempotency key would make every later event look like a redelivery.
            return Err(ValidationError::invalid(
                "event_id",
                "must not be the nil UUID",
            ));
        }
        check_subject_id(&self.subject_id)?;
        if self.occurred_at_ms <= 0 {
            return Err(ValidationError::invalid(
                "occurred_at",
                "must be after 1970-01-01T00:00:00Z",
            ));
        }
        if self.source.is_empty() {
            return Err(ValidationError::invalid("source", "must not be empty"));
        }
        if self.kind == EventKind::ConsentGranted {
            match &self.notice_version {
                None => return Err(ValidationError::MissingField("notice_version")),
                Some(v) if v.is_empty() => {
                    return Err(ValidationError::invalid(
                        "notice_version",
                        "must not be empty",
                    ))
                }
                Some(_) => {}
            }
        }
        self.check_scope()?;
        if let Some(email) = &self.contact.email {
            check_email(email)?;
        }
        if let Some(phone) = &self.contact.phone {
            check_phone(phone)?;
        }
        Ok(())
    }

    fn check_scope(&self) -> Result<(), ValidationError> {
        match (&self.scope, self.kind) {
            (Scope::All, EventKind::ConsentGranted | EventKind::ConsentWithdrawn) => {
                Err(ValidationError::invalid(
                    "purposes",
                    format!("must list purposes for {}", self.kind.name()),
                ))
            }
            (Scope::Purposes(_), EventKind::ErasureRequested) => Err(ValidationError::invalid(
                "purposes",
                "must be absent: an erasure request covers every purpose",
            )),
            (Scope::Purposes(purposes), _) => check_purposes(purposes),
            (Scope::All, _) => Ok(()),
        }
    }
}

fn check_subject_id(subject_id: &str) -> Result<(), ValidationError> {
    if subject_id.is_empty() {
        return Err(ValidationError::invalid("subject_id", "must not be empty"));
    }
    if subject_id.chars().count() > MAX_SUBJECT_ID_CHARS {
        return Err(ValidationError::invalid(
            "subject_id",
            format!("is longer than {MAX_SUBJECT_ID_CHARS} characters"),
        ));
    }
    // subject_id is the one identifier logs may carry; a newline in it could forge log lines.
    if subject_id.chars().any(char::is_control) {
        return Err(ValidationError::invalid(
            "subject_id",
            "contains control characters",
        ));
    }
    Ok(())
}

fn check_purposes(purposes: &[String]) -> Result<(), ValidationError> {
    if purposes.is_empty() {
        return Err(ValidationError::invalid("purposes", "must not be empty"));
    }
    let mut seen = HashSet::with_capacity(purposes.len());
    for purpose in purposes {
        if purpose.is_empty() {
            return Err(ValidationError::invalid(
                "purposes",
                "contains an empty purpose name",
            ));
        }
        if !seen.insert(purpose.as_str()) {
            return Err(ValidationError::invalid(
                "purposes",
                format!("lists `{purpose}` more than once"),
            ));
        }
    }
    Ok(())
}

/// Syntax only, deliberately simpler than RFC 5322: what the ad platforms and mail providers accept.
fn check_email(email: &str) -> Result<(), ValidationError> {
    let err = |reason| Err(ValidationError::InvalidEmail(reason));
    // Lengths in bytes, as RFC 5321 counts octets.
    if email.len() > 254 {
        return err("email is longer than 254 characters");
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return err("email contains whitespace or control characters");
    }
    let Some((local, domain)) = email.split_once('@') else {
        return err("email has no '@'");
    };
    if domain.contains('@') {
        return err("email has more than one '@'");
    }
    if local.is_empty() {
        return err("email has an empty local part");
    }
    if local.len() > 64 {
        return err("email local part is longer than 64 characters");
    }
    if domain.is_empty() {
        return err("email has an empty domain");
    }
    if !domain.contains('.') {
        return err("email domain has no dot");
    }
    if domain.split('.').any(str::is_empty) {
        return err("email domain has an empty label");
    }
    Ok(())
}

fn check_phone(phone: &str) -> Result<(), ValidationError> {
    let err = |reason| Err(ValidationError::InvalidPhone(reason));
    if !phone
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '+' | '-' | '(' | ')' | '/'))
    {
        return err("phone contains characters other than digits, spaces, '+', '-', '(', ')', '/'");
    }
    let digits = phone.chars().filter(char::is_ascii_digit).count();
    if digits < 6 {
        return err("phone has fewer than 6 digits");
    }
    if digits > 20 {
        return err("phone has more than 20 digits");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Contact;
    use uuid::Uuid;

    fn grant() -> ConsentEvent {
        ConsentEvent {
            event_id: Uuid::from_u128(0x0123_4567_89ab_4def_8123_4567_89ab_cdef),
            kind: EventKind::ConsentGranted,
            subject_id: "subj-42".into(),
            occurred_at_ms: 1_795_000_000_000,
            source: "web-form".into(),
            notice_version: Some("2026-10".into()),
            scope: Scope::Purposes(vec!["newsletter".into(), "ads_remarketing".into()]),
            contact: Contact {
                email: Some("max.mustermann@example.de".into()),
                phone: Some("+49 (30) 123-4567".into()),
                ..Contact::default()
            },
        }
    }

    fn with(f: impl FnOnce(&mut ConsentEvent)) -> Result<(), ValidationError> {
        let mut ev = grant();
        f(&mut ev);
        ev.validate()
    }

    #[test]
    fn a_complete_grant_is_valid() {
        assert_eq!(grant().validate(), Ok(()));
    }

    #[test]
    fn header_rules() {
        let code = |r: Result<(), ValidationError>| r.unwrap_err().code();
        assert_eq!(code(with(|e| e.event_id = Uuid::nil())), "invalid_field");
        assert_eq!(code(with(|e| e.subject_id.clear())), "invalid_field");
        assert_eq!(
            code(with(|e| e.subject_id = "x".repeat(257))),
            "invalid_field"
        );
        assert_eq!(with(|e| e.subject_id = "ü".repeat(256)), Ok(()));
        assert_eq!(
            code(with(|e| e.subject_id = "a\nb".into())),
            "invalid_field"
        );
        assert_eq!(code(with(|e| e.occurred_at_ms = 0)), "invalid_field");
        assert_eq!(code(with(|e| e.source.clear())), "invalid_field");
        assert_eq!(
            with(|e| e.notice_version = None),
            Err(ValidationError::MissingField("notice_version"))
        );
        assert_eq!(
            code(with(|e| e.notice_version = Some(String::new()))),
            "invalid_field"
        );
    }

    #[test]
    fn notice_version_is_optional_except_for_grants() {
        assert_eq!(
            with(|e| {
                e.kind = EventKind::ConsentWithdrawn;
                e.notice_version = None;
            }),
            Ok(())
        );
    }

    #[test]
    fn purposes_rules() {
        let purposes = |p: &[&str]| Scope::Purposes(p.iter().map(|s| s.to_string()).collect());
        assert!(with(|e| e.scope = purposes(&[])).is_err());
        assert!(with(|e| e.scope = purposes(&["newsletter", ""])).is_err());
        let dup = with(|e| e.scope = purposes(&["newsletter", "newsletter"])).unwrap_err();
        assert!(
            dup.to_string().contains("`newsletter` more than once"),
            "{dup}"
        );
        assert!(with(|e| e.scope = Scope::All).is_err());
        assert!(with(|e| {
            e.kind = EventKind::ErasureRequested;
            e.scope = purposes(&["newsletter"]);
        })
        .is_err());
        assert_eq!(
            with(|e| {
                e.kind = EventKind::ErasureRequested;
                e.scope = Scope::All;
            }),
            Ok(())
        );
        assert_eq!(
            with(|e| {
                e.kind = EventKind::Unsubscribed;
                e.scope = Scope::All;
            }),
            Ok(())
        );
    }

    #[test]
    fn email_rules_name_the_problem_but_not_the_address() {
        let cases: &[(&str, &str)] = &[
            ("max.mustermann.example.de", "email has no '@'"),
            ("max@mustermann@example.de", "email has more than one '@'"),
            ("@example.de", "email has an empty local part"),
            ("max@", "email has an empty domain"),
            ("max@localhost", "email domain has no dot"),
            ("max@example..de", "email domain has an empty label"),
            ("max@example.de.", "email domain has an empty label"),
            (
                "max mustermann@example.de",
                "email contains whitespace or control characters",
            ),
            (
                " max@example.de",
                "email contains whitespace or control characters",
            ),
            (
                "max@example.de\u{7}",
                "email contains whitespace or control characters",
            ),
        ];
        for (email, expected) in cases {
            let err = with(|e| e.contact.email = Some(email.to_string())).unwrap_err();
            assert_eq!(err, ValidationError::InvalidEmail(expected), "{email:?}");
            assert_eq!(err.code(), "invalid_email");
            assert!(!err.to_string().contains(email.trim()), "{err}");
        }
        let long_local = format!("{}@example.de", "a".repeat(65));
        assert!(with(|e| e.contact.email = Some(long_local)).is_err());
        assert_eq!(
            with(|e| e.contact.email = Some(format!("{}@example.de", "a".repeat(64)))),
            Ok(())
        );
        let too_long = format!("max@{}.de", "a".repeat(250));
        assert!(with(|e| e.contact.email = Some(too_long)).is_err());
        assert_eq!(with(|e| e.contact.email = None), Ok(()));
    }

    #[test]
    fn phone_rules() {
        for ok in [
            "+49 30 1234567",
            "030/123456",
            "(030) 123-456",
            "123456",
            &"1".repeat(20),
        ] {
            assert_eq!(
                with(|e| e.contact.phone = Some(ok.to_string())),
                Ok(()),
                "{ok}"
            );
        }
        for bad in [
            "12345",
            &"1".repeat(21),
            "+49 30 12345x",
            "+49.30.123456",
            "",
        ] {
            let err = with(|e| e.contact.phone = Some(bad.to_string())).unwrap_err();
            assert_eq!(err.code(), "invalid_phone");
            assert!(bad.is_empty() || !err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn codes_are_stable() {
        assert_eq!(ValidationError::MissingEmail.code(), "missing_email");
        assert_eq!(
            ValidationError::UnknownPurpose("x".into()).code(),
            "unknown_purpose"
        );
        assert_eq!(DecodeError::UnknownFingerprint(1).code(), "unknown_schema");
        assert_eq!(DecodeError::TrailingBytes(1).code(), "undecodable");
        assert_eq!(
            DecodeError::Invalid(ValidationError::InvalidEmail("email has no '@'")).code(),
            "invalid_email"
        );
    }
}
