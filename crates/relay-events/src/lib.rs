//! Consent events: types, the Avro codec for both wire framings, validation, normalization and
//! hashing of identifiers.
//!
//! Owns: what an event *is* and how its bytes look. Must not: do I/O of any kind. Looking up a
//! writer schema in a schema registry is the caller's business; this crate only splits the frame and
//! decodes against a schema it is handed.

#![forbid(unsafe_code)]

mod clock;
mod digest;
mod event;
pub mod json;
pub mod normalize;
pub mod schemas;
mod validate;
pub mod wire;

pub use clock::{
    check_occurred_at, format_timestamp_ms, is_older_than_horizon, ClockReference,
    DEFAULT_AGE_HORIZON_MS, DEFAULT_FUTURE_TOLERANCE_MS, MAX_OCCURRED_AT_MS,
};
pub use event::{Action, ConsentEvent, Contact, EventKind, Scope};
pub use validate::{
    parse_event_id, DecodeError, ErrorCode, Field, ValidationError, MAX_CITY_CHARS,
    MAX_COMPANY_CHARS, MAX_COMPANY_SIZE_CHARS, MAX_EMAIL_BYTES, MAX_EMAIL_LOCAL_BYTES,
    MAX_NAME_CHARS, MAX_NOTICE_VERSION_CHARS, MAX_PHONE_CHARS, MAX_POSTAL_CODE_CHARS, MAX_PURPOSES,
    MAX_PURPOSE_CHARS, MAX_SOURCE_CHARS, MAX_STREET_CHARS, MAX_SUBJECT_ID_CHARS,
};
pub use wire::{
    decode, decode_with_writer_schema, encode_confluent, encode_single_object, schema_json,
    split_frame, Frame,
};
