//! Consent events: types, the Avro codec for both wire framings, validation, normalization and
//! hashing of identifiers.
//!
//! Owns: what an event *is* and how its bytes look. Must not: do I/O of any kind. Looking up a
//! writer schema in a schema registry is the caller's business; this crate only splits the frame and
//! decodes against a schema it is handed.

mod event;
pub mod json;
pub mod normalize;
pub mod schemas;
mod validate;
pub mod wire;

pub use event::{Action, ConsentEvent, Contact, EventKind, Scope};
pub use validate::{DecodeError, ValidationError, MAX_SUBJECT_ID_CHARS};
pub use wire::{
    decode, decode_with_writer_schema, encode_confluent, encode_single_object, schema_json,
    split_frame, Frame,
};
