//! The rules every event must pass before it reaches a downstream, the error types the DLQ names,
//! and the one list of DLQ codes. Messages say what is wrong and which field, never the offending
//! value: the raw email or phone would otherwise end up in logs and DLQ headers (DESIGN.md §6: PII
//! is never logged). The rules are written out for producers in `docs/event-rules.md`.

use std::collections::HashSet;
use std::fmt;

use uuid::Uuid;

use crate::clock::{ClockReference, MAX_OCCURRED_AT_MS};
use crate::{ConsentEvent, EventKind, Scope};

/// Longest accepted `subject_id`, in characters (all ASCII, so also bytes): it is a Kafka key and
/// a ledger key, not a document.
pub const MAX_SUBJECT_ID_CHARS: usize = 256;
/// Longest `source`: a system name such as `web-form` or `newsletter-link`.
pub const MAX_SOURCE_CHARS: usize = 128;
/// Longest `notice_version`: a version label of a consent text, not the text.
pub const MAX_NOTICE_VERSION_CHARS: usize = 128;
/// Most purposes in one event; the purpose map of a deployment has a handful.
pub const MAX_PURPOSES: usize = 32;
/// Longest purpose name: names are configuration keys.
pub const MAX_PURPOSE_CHARS: usize = 64;
/// Longest email address in bytes (RFC 5321 path limit less the angle brackets).
pub const MAX_EMAIL_BYTES: usize = 254;
/// Longest local part of an email address in bytes (RFC 5321).
pub const MAX_EMAIL_LOCAL_BYTES: usize = 64;
/// Longest phone number as entered, separators included.
pub const MAX_PHONE_CHARS: usize = 32;
// The contact limits are generous for real names and addresses, and small enough that one event
// stays a few KiB and that a value fits the downstreams' text fields (Mailchimp's take 255).
/// Longest `contact.first_name` or `contact.last_name`.
pub const MAX_NAME_CHARS: usize = 128;
/// Longest `contact.company`.
pub const MAX_COMPANY_CHARS: usize = 255;
/// Longest `contact.street` (street and house number).
pub const MAX_STREET_CHARS: usize = 255;
/// Longest `contact.city`.
pub const MAX_CITY_CHARS: usize = 128;
/// Longest `contact.postal_code`; the longest national formats have 10.
pub const MAX_POSTAL_CODE_CHARS: usize = 16;
/// Longest `contact.company_size`, a head-count band such as `50-249`.
pub const MAX_COMPANY_SIZE_CHARS: usize = 64;

/// Why an event was rejected, as the stable value of the DLQ header `consent-relay-error-code`,
/// the ledger's rejection code and the metrics label. The one list: `README.md` and
/// `docs/event-rules.md` document exactly these (a test checks it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorCode {
    /// The bytes are not a frame, or not Avro of the writer schema.
    Undecodable,
    /// The frame names a schema we do not know (fingerprint, registry id, record name).
    UnknownSchema,
    /// A required field is absent.
    MissingField,
    InvalidEventId,
    InvalidSubjectId,
    /// Not after the epoch, or later than the last renderable millisecond of year 9999.
    InvalidOccurredAt,
    /// More than the tolerance ahead of the relay's clock or the message's broker timestamp
    /// ([`crate::check_occurred_at`]); raised by the runtime, which knows both.
    FutureOccurredAt,
    InvalidSource,
    InvalidNoticeVersion,
    /// The purpose list: empty, too long, a malformed or repeated name, or wrong for the kind.
    InvalidPurposes,
    InvalidEmail,
    InvalidPhone,
    /// Any other contact field: names, company, postal address, country, company size.
    InvalidContact,
    /// Raised by the runtime, which knows the configured purposes.
    UnknownPurpose,
    /// Raised by the runtime, which knows which purposes need an email.
    MissingEmail,
    /// Same `event_id` as an event already in the ledger, different payload digest
    /// ([`ConsentEvent::digest`]); raised by the runtime. The first decision stands.
    ConflictingDuplicate,
    /// The destination rejected the request for good; raised by the runtime.
    DownstreamPermanent,
    /// A parked item still failed when its total retry budget was spent; raised by the runtime.
    RetriesExhausted,
    /// A message on a retry topic that is not a parked copy this sink can read; raised by the
    /// runtime.
    InvalidParkedCopy,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 19] = [
        ErrorCode::Undecodable,
        ErrorCode::UnknownSchema,
        ErrorCode::MissingField,
        ErrorCode::InvalidEventId,
        ErrorCode::InvalidSubjectId,
        ErrorCode::InvalidOccurredAt,
        ErrorCode::FutureOccurredAt,
        ErrorCode::InvalidSource,
        ErrorCode::InvalidNoticeVersion,
        ErrorCode::InvalidPurposes,
        ErrorCode::InvalidEmail,
        ErrorCode::InvalidPhone,
        ErrorCode::InvalidContact,
        ErrorCode::UnknownPurpose,
        ErrorCode::MissingEmail,
        ErrorCode::ConflictingDuplicate,
        ErrorCode::DownstreamPermanent,
        ErrorCode::RetriesExhausted,
        ErrorCode::InvalidParkedCopy,
    ];

    /// Whether `dlq replay` can help: the cause lay outside the event (a downstream, the
    /// configuration) and may be fixed by now. For the others the event's own bytes are at fault,
    /// and a replay dead-letters them again: a corrected event (a new `event_id`) must be
    /// published instead. Not `future_occurred_at` either: replayed once its time has come, the
    /// event would pass the clock rule and outrank every real decision made meanwhile (clock.rs).
    pub fn replay_can_fix(self) -> bool {
        matches!(
            self,
            ErrorCode::UnknownSchema
                | ErrorCode::UnknownPurpose
                | ErrorCode::DownstreamPermanent
                | ErrorCode::RetriesExhausted
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Undecodable => "undecodable",
            ErrorCode::UnknownSchema => "unknown_schema",
            ErrorCode::MissingField => "missing_field",
            ErrorCode::InvalidEventId => "invalid_event_id",
            ErrorCode::InvalidSubjectId => "invalid_subject_id",
            ErrorCode::InvalidOccurredAt => "invalid_occurred_at",
            ErrorCode::FutureOccurredAt => "future_occurred_at",
            ErrorCode::InvalidSource => "invalid_source",
            ErrorCode::InvalidNoticeVersion => "invalid_notice_version",
            ErrorCode::InvalidPurposes => "invalid_purposes",
            ErrorCode::InvalidEmail => "invalid_email",
            ErrorCode::InvalidPhone => "invalid_phone",
            ErrorCode::InvalidContact => "invalid_contact",
            ErrorCode::UnknownPurpose => "unknown_purpose",
            ErrorCode::MissingEmail => "missing_email",
            ErrorCode::ConflictingDuplicate => "conflicting_duplicate",
            ErrorCode::DownstreamPermanent => "downstream_permanent",
            ErrorCode::RetriesExhausted => "retries_exhausted",
            ErrorCode::InvalidParkedCopy => "invalid_parked_copy",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A field that a rule other than the email and phone rules applies to; names it in messages and
/// picks the DLQ code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    EventId,
    SubjectId,
    OccurredAt,
    Source,
    NoticeVersion,
    Purposes,
    FirstName,
    LastName,
    Company,
    Street,
    PostalCode,
    City,
    Country,
    CompanySize,
}

impl Field {
    /// The name as producers write it (`contact.` for the contact record's fields).
    pub fn name(self) -> &'static str {
        match self {
            Field::EventId => "event_id",
            Field::SubjectId => "subject_id",
            Field::OccurredAt => "occurred_at",
            Field::Source => "source",
            Field::NoticeVersion => "notice_version",
            Field::Purposes => "purposes",
            Field::FirstName => "contact.first_name",
            Field::LastName => "contact.last_name",
            Field::Company => "contact.company",
            Field::Street => "contact.street",
            Field::PostalCode => "contact.postal_code",
            Field::City => "contact.city",
            Field::Country => "contact.country",
            Field::CompanySize => "contact.company_size",
        }
    }

    pub fn code(self) -> ErrorCode {
        match self {
            Field::EventId => ErrorCode::InvalidEventId,
            Field::SubjectId => ErrorCode::InvalidSubjectId,
            Field::OccurredAt => ErrorCode::InvalidOccurredAt,
            Field::Source => ErrorCode::InvalidSource,
            Field::NoticeVersion => ErrorCode::InvalidNoticeVersion,
            Field::Purposes => ErrorCode::InvalidPurposes,
            Field::FirstName
            | Field::LastName
            | Field::Company
            | Field::Street
            | Field::PostalCode
            | Field::City
            | Field::Country
            | Field::CompanySize => ErrorCode::InvalidContact,
        }
    }
}

/// Why an event was rejected. [`ValidationError::code`] is the stable value of the DLQ error header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("missing required field `{0}`")]
    MissingField(&'static str),
    /// `reason` is written by this crate and never contains the field's value.
    #[error("field `{}` {reason}", field.name())]
    InvalidField { field: Field, reason: String },
    /// The text is the whole message, e.g. "email has no '@'".
    #[error("{0}")]
    InvalidEmail(&'static str),
    #[error("{0}")]
    InvalidPhone(&'static str),
    #[error(
        "field `occurred_at` is {ahead_ms} ms ahead of {reference} (tolerance {tolerance_ms} ms)"
    )]
    FutureOccurredAt {
        ahead_ms: i64,
        tolerance_ms: i64,
        reference: ClockReference,
    },
    /// Raised by the runtime, which knows which purposes need an email (configuration).
    #[error("a purpose of this event needs an email address, but the event has none")]
    MissingEmail,
    /// Raised by the runtime, which knows the configured purposes. Purpose names are not PII, and
    /// their charset keeps an email address out of them.
    #[error("unknown purpose `{0}`")]
    UnknownPurpose(String),
}

impl ValidationError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ValidationError::MissingField(_) => ErrorCode::MissingField,
            ValidationError::InvalidField { field, .. } => field.code(),
            ValidationError::InvalidEmail(_) => ErrorCode::InvalidEmail,
            ValidationError::InvalidPhone(_) => ErrorCode::InvalidPhone,
            ValidationError::FutureOccurredAt { .. } => ErrorCode::FutureOccurredAt,
            ValidationError::MissingEmail => ErrorCode::MissingEmail,
            ValidationError::UnknownPurpose(_) => ErrorCode::UnknownPurpose,
        }
    }

    fn invalid(field: Field, reason: impl Into<String>) -> Self {
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
    /// A length or block count larger than the bytes left to hold it: corruption or an
    /// allocation bomb, refused before anything is allocated for it.
    #[error("Avro {what} of {declared} exceeds the {remaining} bytes left in the message")]
    ImplausibleLength {
        what: &'static str,
        declared: i64,
        remaining: usize,
    },
    #[error("Avro value nested deeper than {0} levels")]
    TooDeep(usize),
    /// The apache-avro message with any embedded value cut off (see `wire::avro_message`).
    #[error("Avro: {0}")]
    Avro(String),
    #[error("{0} trailing bytes after the Avro body")]
    TrailingBytes(usize),
    #[error("invalid event: {0}")]
    Invalid(#[from] ValidationError),
}

impl DecodeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::TooShort { .. }
            | DecodeError::UnknownMagic(_)
            | DecodeError::Truncated
            | DecodeError::ImplausibleLength { .. }
            | DecodeError::TooDeep(_)
            | DecodeError::Avro(_)
            | DecodeError::TrailingBytes(_) => ErrorCode::Undecodable,
            DecodeError::NeedsRegistry { .. }
            | DecodeError::UnknownFingerprint(_)
            | DecodeError::UnknownRecord(_) => ErrorCode::UnknownSchema,
            DecodeError::MissingField(_) => ErrorCode::MissingField,
            DecodeError::Invalid(v) => v.code(),
        }
    }
}

/// An `event_id` as it must be written: the canonical 36-character lowercase hyphenated form
/// (`0b9f4a4e-6c1d-4b3a-9a57-2f1d3c4e5f60`). The other forms a UUID parser takes (`{…}`,
/// `urn:uuid:…`, no hyphens, upper case) would let one event travel under several spellings of
/// its idempotency key through systems that compare ids as text.
pub fn parse_event_id(text: &str) -> Result<Uuid, ValidationError> {
    let not_canonical = || {
        ValidationError::invalid(
            Field::EventId,
            "is not a UUID in canonical form (36 characters, lowercase hex, hyphenated)",
        )
    };
    let id = Uuid::try_parse(text).map_err(|_| not_canonical())?;
    let mut canonical = Uuid::encode_buffer();
    if text != id.hyphenated().encode_lower(&mut canonical) {
        return Err(not_canonical());
    }
    Ok(id)
}

impl ConsentEvent {
    /// Checks everything that can be checked without configuration and without a clock (the
    /// clock rule is [`crate::check_occurred_at`]); the first problem wins.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self.problems().into_iter().next() {
            Some(first) => Err(first),
            None => Ok(()),
        }
    }

    /// Every problem [`Self::validate`] would find one after the other, in its order: what a
    /// producer fixing a file wants to see at once.
    pub fn problems(&self) -> Vec<ValidationError> {
        let mut out = Vec::new();
        if self.event_id.is_nil() {
            // A shared idempotency key would make every later event look like a redelivery.
            out.push(ValidationError::invalid(
                Field::EventId,
                "must not be the nil UUID",
            ));
        }
        out.extend(check_subject_id(&self.subject_id).err());
        out.extend(check_occurred_at_range(self.occurred_at_ms).err());
        match check_text(Field::Source, &self.source, MAX_SOURCE_CHARS) {
            Err(e) => out.push(e),
            Ok(()) if self.source.trim().is_empty() => {
                out.push(ValidationError::invalid(Field::Source, "must not be blank"))
            }
            Ok(()) => {}
        }
        match &self.notice_version {
            None if self.kind == EventKind::ConsentGranted => {
                out.push(ValidationError::MissingField("notice_version"))
            }
            None => {}
            Some(v) => match check_text(Field::NoticeVersion, v, MAX_NOTICE_VERSION_CHARS) {
                Err(e) => out.push(e),
                Ok(()) if v.trim().is_empty() => out.push(ValidationError::invalid(
                    Field::NoticeVersion,
                    "must not be blank",
                )),
                Ok(()) => {}
            },
        }
        out.extend(self.check_scope().err());
        self.check_contact(&mut out);
        out
    }

    fn check_scope(&self) -> Result<(), ValidationError> {
        match (&self.scope, self.kind) {
            (Scope::All, EventKind::ConsentGranted | EventKind::ConsentWithdrawn) => {
                Err(ValidationError::invalid(
                    Field::Purposes,
                    format!("must list purposes for {}", self.kind.name()),
                ))
            }
            (Scope::Purposes(_), EventKind::ErasureRequested) => Err(ValidationError::invalid(
                Field::Purposes,
                "must be absent: an erasure request covers every purpose",
            )),
            (Scope::Purposes(purposes), _) => check_purposes(purposes),
            (Scope::All, _) => Ok(()),
        }
    }

    fn check_contact(&self, out: &mut Vec<ValidationError>) {
        let c = &self.contact;
        if let Some(email) = &c.email {
            out.extend(check_email(email).err());
        }
        if let Some(phone) = &c.phone {
            out.extend(check_phone(phone).err());
        }
        for (field, value, max) in [
            (Field::FirstName, &c.first_name, MAX_NAME_CHARS),
            (Field::LastName, &c.last_name, MAX_NAME_CHARS),
            (Field::Company, &c.company, MAX_COMPANY_CHARS),
            (Field::Street, &c.street, MAX_STREET_CHARS),
            (Field::PostalCode, &c.postal_code, MAX_POSTAL_CODE_CHARS),
            (Field::City, &c.city, MAX_CITY_CHARS),
            (Field::CompanySize, &c.company_size, MAX_COMPANY_SIZE_CHARS),
        ] {
            if let Some(value) = value {
                out.extend(check_text(field, value, max).err());
            }
        }
        if let Some(country) = &c.country {
            if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
                out.push(ValidationError::invalid(
                    Field::Country,
                    "must be an ISO 3166-1 alpha-2 code: two upper-case letters A-Z",
                ));
            }
        }
    }
}

/// `occurred_at` must name an instant every reader can print: after the epoch (0 is what a
/// producer sends when it forgot to set it) and no later than 9999-12-31T23:59:59.999Z, the end of
/// RFC 3339. The clock rule comes on top of this, in the runtime.
fn check_occurred_at_range(occurred_at_ms: i64) -> Result<(), ValidationError> {
    if occurred_at_ms <= 0 {
        return Err(ValidationError::invalid(
            Field::OccurredAt,
            "must be after 1970-01-01T00:00:00Z",
        ));
    }
    if occurred_at_ms > MAX_OCCURRED_AT_MS {
        return Err(ValidationError::invalid(
            Field::OccurredAt,
            "must not be later than 9999-12-31T23:59:59.999Z",
        ));
    }
    Ok(())
}

/// Bidirectional formatting characters (Unicode's Bidi_Control set): an override or isolate can
/// make a value display as something else in a terminal, a CSV or an admin UI ("Trojan Source").
/// Right-to-left text needs none of them.
fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// The rule of every free-text field: at most `max` characters (Unicode scalar values), no control characters (C0, DEL, C1: a newline could forge a log line or split a CSV
/// row), no line or paragraph separators, no bidi controls.
fn check_text(field: Field, value: &str, max: usize) -> Result<(), ValidationError> {
    // Counting stops at the limit, so a 1 MiB value costs no more than a short one.
    if value.chars().nth(max).is_some() {
        return Err(ValidationError::invalid(
            field,
            format!("is longer than {max} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ValidationError::invalid(
            field,
            "contains control characters",
        ));
    }
    if value
        .chars()
        .any(|c| is_bidi_control(c) || matches!(c, '\u{2028}' | '\u{2029}'))
    {
        return Err(ValidationError::invalid(
            field,
            "contains bidirectional-formatting or line-separator characters",
        ));
    }
    Ok(())
}

/// The charset of `subject_id`: ASCII letters, digits and `-_.:+=/`. It is a pseudonymous id
/// produced by a system, the Kafka key, the ledger key and the one identifier logs may carry, so it
/// has no use for whitespace, control, bidi or other non-ASCII characters; `+=/` admit base64 ids,
/// `:` namespaced ones (`crm:12345`). No `@`: an email address is not a pseudonym.
fn is_subject_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '+' | '=' | '/')
}

fn check_subject_id(subject_id: &str) -> Result<(), ValidationError> {
    if subject_id.is_empty() {
        return Err(ValidationError::invalid(
            Field::SubjectId,
            "must not be empty",
        ));
    }
    if !subject_id.chars().all(is_subject_id_char) {
        return Err(ValidationError::invalid(
            Field::SubjectId,
            "may only contain ASCII letters, digits and - _ . : + = /",
        ));
    }
    // All ASCII by now, so bytes are characters.
    if subject_id.len() > MAX_SUBJECT_ID_CHARS {
        return Err(ValidationError::invalid(
            Field::SubjectId,
            format!("is longer than {MAX_SUBJECT_ID_CHARS} characters"),
        ));
    }
    Ok(())
}

/// Purpose names are keys of the purpose map: ASCII letters, digits and `_-.:`.
fn check_purposes(purposes: &[String]) -> Result<(), ValidationError> {
    let invalid = |reason: String| Err(ValidationError::invalid(Field::Purposes, reason));
    if purposes.is_empty() {
        return invalid("must not be empty".into());
    }
    if purposes.len() > MAX_PURPOSES {
        return invalid(format!("lists more than {MAX_PURPOSES} purposes"));
    }
    let mut seen = HashSet::with_capacity(purposes.len());
    for purpose in purposes {
        if purpose.is_empty() {
            return invalid("contains an empty purpose name".into());
        }
        if purpose.len() > MAX_PURPOSE_CHARS {
            return invalid(format!(
                "contains a name longer than {MAX_PURPOSE_CHARS} characters"
            ));
        }
        if !purpose
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
        {
            return invalid(
                "contains a name with characters other than ASCII letters, digits and _ - . :"
                    .into(),
            );
        }
        // Safe to name: the charset above admits no contact data.
        if !seen.insert(purpose.as_str()) {
            return invalid(format!("lists `{purpose}` more than once"));
        }
    }
    Ok(())
}

/// The characters RFC 5322 allows in a dot-atom (`atext`) besides letters and digits.
const ATEXT_SPECIALS: &str = "!#$%&'*+-/=?^_`{|}~";

/// What every downstream accepts (Meta, Google, LinkedIn and X hash it; Brevo, Mailchimp and
/// HubSpot store it and send mail to it): an ASCII dot-atom local part (RFC 5322 `atext` and
/// single dots; no quoted strings, so no spaces, quotes, `<`, `>`, `(`, `)`, `,`, `;`, `\`) of at
/// most 64 bytes, and a domain of at least two dot-separated labels of letters, digits and inner
/// hyphens (at most 63 each), whose last label (the TLD) is letters only or an `xn--` A-label,
/// at most 254 bytes in all. Internationalized domains must be sent as A-labels (`xn--…`);
/// non-ASCII local parts (SMTPUTF8) are refused because the list providers refuse them.
fn check_email(email: &str) -> Result<(), ValidationError> {
    let err = |reason| Err(ValidationError::InvalidEmail(reason));
    // Lengths in bytes, as RFC 5321 counts octets.
    if email.len() > MAX_EMAIL_BYTES {
        return err("email is longer than 254 characters");
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return err("email contains whitespace or control characters");
    }
    if !email.is_ascii() {
        return err("email contains non-ASCII characters (send the domain as xn-- A-labels)");
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
    if local.len() > MAX_EMAIL_LOCAL_BYTES {
        return err("email local part is longer than 64 characters");
    }
    if !local
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '.' || ATEXT_SPECIALS.contains(c))
    {
        return err("email local part contains characters outside the RFC 5322 dot-atom set");
    }
    if local.split('.').any(str::is_empty) {
        return err("email local part has a leading, trailing or double dot");
    }
    if domain.is_empty() {
        return err("email has an empty domain");
    }
    if !domain.contains('.') {
        return err("email domain has no dot");
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.iter().any(|l| l.is_empty()) {
        return err("email domain has an empty label");
    }
    for label in &labels {
        if label.len() > 63 {
            return err("email domain has a label longer than 63 characters");
        }
        if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return err("email domain contains characters other than letters, digits, '-' and '.'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return err("email domain has a label starting or ending with '-'");
        }
    }
    let tld = labels[labels.len() - 1];
    let a_label = tld.len() > 4 && tld[..4].eq_ignore_ascii_case("xn--");
    if !a_label && (tld.len() < 2 || !tld.chars().all(|c| c.is_ascii_alphabetic())) {
        return err("email domain has no top-level domain of at least two letters");
    }
    Ok(())
}

fn check_phone(phone: &str) -> Result<(), ValidationError> {
    let err = |reason| Err(ValidationError::InvalidPhone(reason));
    if phone.chars().nth(MAX_PHONE_CHARS).is_some() {
        return err("phone is longer than 32 characters");
    }
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
mod tests;
