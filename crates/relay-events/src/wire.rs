//! The two framings of DESIGN.md §2 and the Avro codec behind them.
//!
//! Records are converted to and from [`apache_avro::types::Value`] by hand: the derive feature is
//! off, and the mapping (`all_purposes` ⇒ [`Scope::All`], kind-specific fields) is not a plain
//! struct mapping anyway.

use std::borrow::Cow;
use std::io::Read;

use apache_avro::schema::{RecordSchema, UnionSchema};
use apache_avro::{error::Details, types::Value, Schema};

use crate::{
    parse_event_id, schemas, ConsentEvent, Contact, DecodeError, EventKind, Scope, ValidationError,
};

mod bounds;

/// First byte of a Confluent-framed message.
pub const CONFLUENT_MAGIC: u8 = 0x00;
/// First two bytes of an Avro single-object encoding.
pub const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];

const CONFLUENT_HEADER_LEN: usize = 1 + 4;
const SINGLE_OBJECT_HEADER_LEN: usize = 2 + 8;

/// Length prefixes beyond this are corruption, not data: Kafka's default message size limit is
/// 1 MiB, and apache-avro's default would let one prefix ask for 512 MiB. apache-avro keeps this
/// limit process-wide and lets only the first setter win, so the first decode here fixes it for
/// the process. Our own check ([`bounds`]) is tighter and runs first; this stays as the backstop
/// for any other apache-avro use in the process.
const MAX_AVRO_ALLOCATION: usize = 1024 * 1024;

/// A message split into its header and Avro body, before any schema is involved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Magic byte 0, then the schema registry id (big-endian).
    Confluent { schema_id: u32, body: &'a [u8] },
    /// 0xC3 0x01, then the CRC-64-AVRO fingerprint of the writer schema (little-endian).
    SingleObject { fingerprint: u64, body: &'a [u8] },
}

pub fn split_frame(bytes: &[u8]) -> Result<Frame<'_>, DecodeError> {
    let too_short = |needed| DecodeError::TooShort {
        len: bytes.len(),
        needed,
    };
    match bytes {
        [] => Err(too_short(1)),
        [CONFLUENT_MAGIC, rest @ ..] => {
            let (id, body) = rest
                .split_first_chunk::<4>()
                .ok_or(too_short(CONFLUENT_HEADER_LEN))?;
            Ok(Frame::Confluent {
                schema_id: u32::from_be_bytes(*id),
                body,
            })
        }
        [0xC3] => Err(too_short(SINGLE_OBJECT_HEADER_LEN)),
        [0xC3, 0x01, rest @ ..] => {
            let (fp, body) = rest
                .split_first_chunk::<8>()
                .ok_or(too_short(SINGLE_OBJECT_HEADER_LEN))?;
            Ok(Frame::SingleObject {
                fingerprint: u64::from_le_bytes(*fp),
                body,
            })
        }
        [0xC3, second, ..] => Err(DecodeError::UnknownMagic(format!("0xc3 {second:#04x}"))),
        [first, ..] => Err(DecodeError::UnknownMagic(format!("{first:#04x}"))),
    }
}

/// Decodes a single-object frame against the bundled schemas, resolving whichever bundled version
/// wrote it to the newest version of the same record. Returns only valid events.
pub fn decode(bytes: &[u8]) -> Result<ConsentEvent, DecodeError> {
    match split_frame(bytes)? {
        Frame::Confluent { schema_id, .. } => Err(DecodeError::NeedsRegistry { schema_id }),
        Frame::SingleObject { fingerprint, body } => {
            let writer = schemas::by_fingerprint(fingerprint)
                .ok_or(DecodeError::UnknownFingerprint(fingerprint))?;
            let reader = schemas::newest(writer.kind);
            decode_body(&writer.decoding, &reader.decoding, body)
        }
    }
}

/// Decodes the body of a Confluent frame whose writer schema the caller fetched from the registry,
/// resolving it to our newest bundled version of the record with the same full name.
pub fn decode_with_writer_schema(
    writer: &Schema,
    body: &[u8],
) -> Result<ConsentEvent, DecodeError> {
    let name = schemas::full_name(writer)
        .ok_or_else(|| DecodeError::UnknownRecord("<not a named schema>".into()))?;
    let reader = schemas::by_full_name(&name).ok_or(DecodeError::UnknownRecord(name))?;
    decode_body(writer, &reader.decoding, body)
}

/// Avro single-object encoding with the newest schema of the event's record.
pub fn encode_single_object(ev: &ConsentEvent) -> Vec<u8> {
    let schema = schemas::newest(ev.kind);
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&SINGLE_OBJECT_MAGIC);
    out.extend_from_slice(&schema.fingerprint.to_le_bytes());
    out.extend_from_slice(&encode_bundled(&schema.schema, ev));
    out
}

/// Confluent framing; `schema_id` is what the registry assigned to [`schema_json`]`(ev.kind)`.
pub fn encode_confluent(schema_id: u32, ev: &ConsentEvent) -> Vec<u8> {
    let schema = schemas::newest(ev.kind);
    let mut out = Vec::with_capacity(128);
    out.push(CONFLUENT_MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(&encode_bundled(&schema.schema, ev));
    out
}

/// The newest schema text of `kind`'s record, for registering with a schema registry.
pub fn schema_json(kind: EventKind) -> &'static str {
    schemas::newest(kind).json
}

/// The bare Avro body of `ev` written with any compatible schema of its record (another version,
/// a registry's copy). Fails if `schema` lacks a default for a field the event cannot fill.
pub fn encode_with_schema(
    schema: &Schema,
    ev: &ConsentEvent,
) -> Result<Vec<u8>, apache_avro::Error> {
    let value = to_value(ev).resolve(schema)?;
    apache_avro::to_avro_datum(schema, value)
}

/// Encoding is infallible for the bundled schemas: [`to_value`] fills every field they have. An
/// event that would not validate still encodes, and the consumer dead-letters it.
fn encode_bundled(schema: &Schema, ev: &ConsentEvent) -> Vec<u8> {
    encode_with_schema(schema, ev).unwrap_or_else(|e| {
        panic!(
            "bundled schema {} rejects an event: {}",
            ev.kind.name(),
            avro_message(&e)
        )
    })
}

pub(crate) fn decode_body(
    writer: &Schema,
    reader: &Schema,
    body: &[u8],
) -> Result<ConsentEvent, DecodeError> {
    apache_avro::util::max_allocation_bytes(MAX_AVRO_ALLOCATION);
    let reader_name = schemas::full_name(reader).unwrap_or_default();
    let kind = reader_name
        .rsplit('.')
        .next()
        .and_then(EventKind::from_name)
        .ok_or_else(|| DecodeError::UnknownRecord(reader_name.clone()))?;
    bounds::check(writer, body)?;
    let (writer, reader) = (uuids_as_strings(writer), uuids_as_strings(reader));
    let mut input = TrackedSlice {
        rest: body,
        ran_out: false,
    };
    let result = apache_avro::from_avro_datum(&writer, &mut input, Some(&reader));
    // apache-avro reads a string cut short by the end of input as null, so a truncated body can
    // "succeed" with a field missing; only the reader knows it ran dry. `bounds::check` has
    // caught that already; this keeps the guarantee should the two ever disagree.
    if input.ran_out {
        return Err(DecodeError::Truncated);
    }
    let value = result.map_err(avro_error)?;
    if !input.rest.is_empty() {
        return Err(DecodeError::TrailingBytes(input.rest.len()));
    }
    let ev = from_value(kind, value)?;
    ev.validate()?;
    Ok(ev)
}

/// `schema` with its top-level `uuid` fields read as plain strings. apache-avro turns a uuid
/// string into a `Uuid` while decoding and so forgets how it was written: `{…}`, `urn:uuid:…`,
/// upper case, and any 16-byte string (taken as raw bytes) would all pass. Reading the text lets
/// [`parse_event_id`] insist on the canonical form. The wire format of the two is the same.
/// Borrows when there is nothing to change (the bundled schemas' decoding copies), so only a
/// registry writer schema is copied per message.
pub(crate) fn uuids_as_strings(schema: &Schema) -> Cow<'_, Schema> {
    let Schema::Record(record) = schema else {
        return Cow::Borrowed(schema);
    };
    let is_uuid = |s: &Schema| match s {
        Schema::Uuid => true,
        Schema::Union(u) => u.variants().iter().any(|v| matches!(v, Schema::Uuid)),
        _ => false,
    };
    if !record.fields.iter().any(|f| is_uuid(&f.schema)) {
        return Cow::Borrowed(schema);
    }
    let as_string = |s: &Schema| {
        if matches!(s, Schema::Uuid) {
            Schema::String
        } else {
            s.clone()
        }
    };
    let mut record: RecordSchema = record.clone();
    for field in &mut record.fields {
        field.schema = match &field.schema {
            Schema::Union(u) => UnionSchema::new(u.variants().iter().map(as_string).collect())
                .map_or_else(|_| field.schema.clone(), Schema::Union),
            other => as_string(other),
        };
    }
    Cow::Owned(Schema::Record(record))
}

struct TrackedSlice<'a> {
    rest: &'a [u8],
    ran_out: bool,
}

impl Read for TrackedSlice<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !buf.is_empty() && self.rest.is_empty() {
            self.ran_out = true;
        }
        self.rest.read(buf)
    }
}

fn avro_error(e: apache_avro::Error) -> DecodeError {
    match e.details() {
        Details::GetField(name) => DecodeError::MissingField(name.clone()),
        _ => DecodeError::Avro(avro_message(&e)),
    }
}

/// apache-avro's messages embed `{:?}` dumps of values, which may be an email address. Keep the
/// message up to the first quote or bracket, where such a dump starts.
fn avro_message(e: &apache_avro::Error) -> String {
    let full = e.to_string();
    match full.find(['"', '\'', '`', '(', '[', '{']) {
        Some(cut) => format!(
            "{} (details withheld)",
            full[..cut].trim_end_matches([' ', ':'])
        ),
        None => full,
    }
}

/// Every field any version of any record might have; resolution against the target schema drops
/// what it lacks and fills defaults for what it has and this lacks.
fn to_value(ev: &ConsentEvent) -> Value {
    let string = |s: &str| Value::String(s.to_owned());
    let optional = |s: &Option<String>| s.as_deref().map_or(Value::Null, string);
    let (purposes, all_purposes) = match &ev.scope {
        Scope::Purposes(p) => (p.iter().map(|p| string(p)).collect(), false),
        Scope::All => (Vec::new(), true),
    };
    let notice_version = match (&ev.notice_version, ev.kind) {
        // The grant schema has no null; "" fails validation on the consumer, as it should.
        (None, EventKind::ConsentGranted) => string(""),
        (v, _) => optional(v),
    };
    let c = &ev.contact;
    let contact = Value::Record(vec![
        ("email".into(), optional(&c.email)),
        ("phone".into(), optional(&c.phone)),
        ("first_name".into(), optional(&c.first_name)),
        ("last_name".into(), optional(&c.last_name)),
        ("company".into(), optional(&c.company)),
        ("street".into(), optional(&c.street)),
        ("postal_code".into(), optional(&c.postal_code)),
        ("city".into(), optional(&c.city)),
        ("country".into(), optional(&c.country)),
        ("company_size".into(), optional(&c.company_size)),
    ]);
    Value::Record(vec![
        // String and Long rather than Uuid and TimestampMillis: they also resolve against writer
        // schemas without the logical types.
        ("event_id".into(), Value::String(ev.event_id.to_string())),
        ("subject_id".into(), string(&ev.subject_id)),
        ("occurred_at".into(), Value::Long(ev.occurred_at_ms)),
        ("source".into(), string(&ev.source)),
        ("notice_version".into(), notice_version),
        ("purposes".into(), Value::Array(purposes)),
        ("all_purposes".into(), Value::Boolean(all_purposes)),
        ("contact".into(), contact),
    ])
}

/// The record's fields, taken out one by one.
struct Fields(Vec<(String, Value)>);

impl Fields {
    fn of(value: Value, what: &str) -> Result<Fields, DecodeError> {
        match unwrap_union(value) {
            Value::Record(fields) => Ok(Fields(fields)),
            other => Err(wrong_type(what, "a record", &other)),
        }
    }

    fn take(&mut self, name: &str) -> Option<Value> {
        let i = self.0.iter().position(|(n, _)| n == name)?;
        Some(self.0.swap_remove(i).1)
    }

    fn required(&mut self, name: &'static str) -> Result<Value, DecodeError> {
        self.take(name)
            .ok_or(DecodeError::Invalid(ValidationError::MissingField(name)))
    }

    fn string(&mut self, name: &'static str) -> Result<String, DecodeError> {
        match unwrap_union(self.required(name)?) {
            Value::String(s) => Ok(s),
            other => Err(wrong_type(name, "a string", &other)),
        }
    }

    fn optional_string(&mut self, name: &'static str) -> Result<Option<String>, DecodeError> {
        match self.take(name).map(unwrap_union) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(wrong_type(name, "a string or null", &other)),
        }
    }
}

fn string_array(field: &str, value: Value) -> Result<Vec<String>, DecodeError> {
    match unwrap_union(value) {
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::String(s) => Ok(s),
                other => Err(wrong_type(field, "an array of strings", &other)),
            })
            .collect(),
        other => Err(wrong_type(field, "an array of strings", &other)),
    }
}

fn unwrap_union(value: Value) -> Value {
    match value {
        Value::Union(_, inner) => *inner,
        other => other,
    }
}

/// Names the Avro type found, never the value.
fn wrong_type(field: &str, expected: &str, found: &Value) -> DecodeError {
    let found = apache_avro::types::ValueKind::from(found);
    DecodeError::Avro(format!(
        "field `{field}` should be {expected}, found {found:?}"
    ))
}

fn from_value(kind: EventKind, value: Value) -> Result<ConsentEvent, DecodeError> {
    let mut f = Fields::of(value, kind.name())?;
    let event_id = match unwrap_union(f.required("event_id")?) {
        Value::String(s) => parse_event_id(&s)?,
        other => return Err(wrong_type("event_id", "a UUID string", &other)),
    };
    let occurred_at_ms = match unwrap_union(f.required("occurred_at")?) {
        Value::TimestampMillis(ms) | Value::Long(ms) => ms,
        Value::Int(ms) => i64::from(ms),
        other => return Err(wrong_type("occurred_at", "timestamp-millis", &other)),
    };
    let subject_id = f.string("subject_id")?;
    let source = f.string("source")?;
    let notice_version = f.optional_string("notice_version")?;
    let scope = match kind {
        EventKind::ConsentGranted | EventKind::ConsentWithdrawn => {
            Scope::Purposes(string_array("purposes", f.required("purposes")?)?)
        }
        EventKind::Unsubscribed => {
            let all = match f.take("all_purposes").map(unwrap_union) {
                None => false,
                Some(Value::Boolean(b)) => b,
                Some(other) => return Err(wrong_type("all_purposes", "a boolean", &other)),
            };
            let purposes = match f.take("purposes") {
                Some(v) => string_array("purposes", v)?,
                None => Vec::new(),
            };
            // A global unsubscribe wins over any list that came with it.
            if all {
                Scope::All
            } else {
                Scope::Purposes(purposes)
            }
        }
        EventKind::ErasureRequested => Scope::All,
    };
    let mut c = Fields::of(f.required("contact")?, "contact")?;
    let contact = Contact {
        email: c.optional_string("email")?,
        phone: c.optional_string("phone")?,
        first_name: c.optional_string("first_name")?,
        last_name: c.optional_string("last_name")?,
        company: c.optional_string("company")?,
        // v2 fields: absent from a v1 writer, the v2 reader fills them with their null default.
        street: c.optional_string("street")?,
        postal_code: c.optional_string("postal_code")?,
        city: c.optional_string("city")?,
        country: c.optional_string("country")?,
        company_size: c.optional_string("company_size")?,
    };
    Ok(ConsentEvent {
        event_id,
        kind,
        subject_id,
        occurred_at_ms,
        source,
        notice_version,
        scope,
        contact,
    })
}

#[cfg(test)]
mod tests;
