//! What the property suite (`fuzz.rs`) and the allocation test (`alloc.rs`) share: valid frames
//! of every bundled schema version, the regression corpus, and the set of codes a decode may end
//! in.

// Each test binary includes this module and uses its own part of it.
#![allow(dead_code)]

use std::path::PathBuf;

use relay_events::schemas::{self, BundledSchema};
use relay_events::wire::{encode_with_schema, SINGLE_OBJECT_MAGIC};
use relay_events::{ConsentEvent, Contact, ErrorCode, EventKind, Scope};
use uuid::Uuid;

/// The codes decoding can end in. The others (unknown purpose, missing email, future
/// occurred_at, conflicting duplicate, downstream permanent) need configuration, a clock, the
/// ledger or a destination, which decoding has not.
pub const DECODE_CODES: [ErrorCode; 12] = [
    ErrorCode::Undecodable,
    ErrorCode::UnknownSchema,
    ErrorCode::MissingField,
    ErrorCode::InvalidEventId,
    ErrorCode::InvalidSubjectId,
    ErrorCode::InvalidOccurredAt,
    ErrorCode::InvalidSource,
    ErrorCode::InvalidNoticeVersion,
    ErrorCode::InvalidPurposes,
    ErrorCode::InvalidEmail,
    ErrorCode::InvalidPhone,
    ErrorCode::InvalidContact,
];

pub const EMAIL: &str = "erika.mustermann@example.de";

/// A valid event of `kind` with every field its kind allows set.
pub fn sample(kind: EventKind) -> ConsentEvent {
    ConsentEvent {
        event_id: Uuid::from_u128(0x0b9f_4a4e_6c1d_4b3a_9a57_2f1d_3c4e_5f60 + kind as u128),
        kind,
        subject_id: "subj-42".into(),
        occurred_at_ms: 1_795_687_200_123,
        source: "web-form".into(),
        notice_version: (kind != EventKind::ErasureRequested).then(|| "2026-10".into()),
        scope: match kind {
            EventKind::ConsentGranted | EventKind::ConsentWithdrawn => {
                Scope::Purposes(vec!["newsletter".into(), "ads_remarketing".into()])
            }
            EventKind::Unsubscribed | EventKind::ErasureRequested => Scope::All,
        },
        contact: Contact {
            email: Some(EMAIL.into()),
            phone: Some("+49 30 1234567".into()),
            first_name: Some("Erika".into()),
            last_name: Some("Mustermann".into()),
            company: Some("Beispiel GmbH".into()),
            street: Some("Am Seerhein 8".into()),
            postal_code: Some("78467".into()),
            city: Some("Konstanz".into()),
            country: Some("DE".into()),
            company_size: Some("50-249".into()),
        },
    }
}

/// A single-object frame of `ev` written with `schema` (any bundled version).
pub fn frame(schema: &BundledSchema, ev: &ConsentEvent) -> Vec<u8> {
    let mut out = SINGLE_OBJECT_MAGIC.to_vec();
    out.extend_from_slice(&schema.fingerprint.to_le_bytes());
    out.extend_from_slice(&encode_with_schema(&schema.schema, ev).expect("bundled schema encodes"));
    out
}

/// Valid frames: every sample kind (and a scoped unsubscribe, a bare withdrawal) written by every
/// bundled version of its record.
pub fn valid_frames() -> Vec<Vec<u8>> {
    let mut events: Vec<ConsentEvent> = EventKind::ALL.into_iter().map(sample).collect();
    let mut scoped = sample(EventKind::Unsubscribed);
    scoped.scope = Scope::Purposes(vec!["newsletter".into()]);
    events.push(scoped);
    let mut bare = sample(EventKind::ConsentWithdrawn);
    bare.contact = Contact::default();
    bare.notice_version = None;
    events.push(bare);
    let mut out = Vec::new();
    for ev in &events {
        for schema in schemas::versions(ev.kind) {
            out.push(frame(schema, ev));
        }
    }
    out
}

pub fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// One regression input: `<expected code or ok>--<what>.bin`.
pub struct CorpusEntry {
    pub name: String,
    /// `None` for inputs that must decode.
    pub expected: Option<ErrorCode>,
    pub bytes: Vec<u8>,
}

pub fn corpus() -> Vec<CorpusEntry> {
    let mut entries: Vec<CorpusEntry> = std::fs::read_dir(corpus_dir())
        .expect("tests/corpus")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "bin"))
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let (code, _) = name
                .split_once("--")
                .unwrap_or_else(|| panic!("{name}: not <code>--<what>.bin"));
            let expected = (code != "ok").then(|| {
                *ErrorCode::ALL
                    .iter()
                    .find(|c| c.as_str() == code)
                    .unwrap_or_else(|| panic!("{name}: unknown code {code}"))
            });
            CorpusEntry {
                name,
                expected,
                bytes: std::fs::read(&path).unwrap(),
            }
        })
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    entries
}
