//! The property suite over the decoder, the validation and the JSON-lines parser: untrusted input
//! can neither crash the relay nor get in unchecked. Every input ends in exactly one outcome, a
//! valid event or one rejection whose code is from the documented set, the same outcome every
//! time, and never with contact data in the message.
//!
//! Runs on stable Rust with proptest, about 3 600 cases in CI (`cargo test -p relay-events --test
//! fuzz`; `PROPTEST_CASES=N` sets the count of every property for a longer run). Failures are
//! saved under `proptest-regressions/` and replayed first on the next run; reproductions worth
//! keeping go to `tests/corpus/` (see its README), which `corpus_inputs_keep_their_outcome` checks.

mod support;

use proptest::prelude::*;
use proptest::sample::{select, Index};
use relay_events::schemas::{self, BundledSchema};
use relay_events::{
    check_occurred_at, decode, decode_with_writer_schema, encode_single_object, json, ConsentEvent,
    Contact, DecodeError, ErrorCode, EventKind, Scope, DEFAULT_FUTURE_TOLERANCE_MS,
    MAX_OCCURRED_AT_MS,
};
use support::*;
use uuid::Uuid;

/// Contact values of [`sample`] that no error message may repeat.
const PII: &[&str] = &[EMAIL, "Mustermann", "1234567", "Seerhein", "Konstanz"];

fn config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    ProptestConfig {
        cases,
        // Shrinking a 100 000-character string takes long and says little more.
        max_shrink_iters: 256,
        ..ProptestConfig::default()
    }
}

/// The one outcome of `bytes`: asserts what must hold of it and returns it.
fn outcome(result: Result<ConsentEvent, DecodeError>) -> Result<ConsentEvent, ErrorCode> {
    match result {
        Ok(ev) => {
            assert_eq!(ev.validate(), Ok(()), "decode handed out an invalid event");
            // A decoded event re-encodes to itself: nothing it holds is lost or changed.
            assert_eq!(decode(&encode_single_object(&ev)).as_ref(), Ok(&ev));
            Ok(ev)
        }
        Err(e) => {
            let code = e.code();
            assert!(DECODE_CODES.contains(&code), "{code} from decoding: {e}");
            let text = format!("{e} {e:?}");
            for value in PII {
                assert!(!text.contains(value), "message shows {value}: {text}");
            }
            Err(code)
        }
    }
}

/// Both entry points the runtime uses: single-object frames, and Confluent bodies with the
/// writer schema from the registry.
fn check_frame(bytes: &[u8]) {
    let first = outcome(decode(bytes));
    assert_eq!(
        outcome(decode(bytes)),
        first,
        "decoding is not deterministic"
    );
    if bytes.len() >= 10 {
        for schema in schemas::all() {
            let _ = outcome(decode_with_writer_schema(&schema.schema, &bytes[10..]));
        }
    }
}

#[test]
fn corpus_inputs_keep_their_outcome() {
    let corpus = corpus();
    assert!(
        corpus.len() >= 20,
        "tests/corpus has {} files",
        corpus.len()
    );
    let now = 1_795_687_200_000;
    for entry in corpus {
        check_frame(&entry.bytes);
        let got = decode(&entry.bytes);
        match (entry.expected, &got) {
            (None, Ok(ev)) => {
                let clock =
                    check_occurred_at(ev.occurred_at_ms, None, now, DEFAULT_FUTURE_TOLERANCE_MS);
                if ev.occurred_at_ms == MAX_OCCURRED_AT_MS {
                    assert_eq!(
                        clock.map_err(|e| e.code()),
                        Err(ErrorCode::FutureOccurredAt),
                        "{}",
                        entry.name
                    );
                } else {
                    assert_eq!(clock, Ok(()), "{}", entry.name);
                }
            }
            (Some(code), Err(e)) => assert_eq!(e.code(), code, "{}: {e}", entry.name),
            (expected, got) => panic!("{}: expected {expected:?}, got {got:?}", entry.name),
        }
    }
}

/// Bytes as a broken or hostile producer might send them.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(Index, u8),
    Overwrite(Index, u8),
    Truncate(Index),
    Insert(Index, Vec<u8>),
    Remove(Index, Index),
    /// Replaces the byte at the index by a varint of the value: a length or count far beyond
    /// the message, or a negative one.
    HugeVarint(Index, i64),
}

fn zigzag(v: i64) -> Vec<u8> {
    let mut n = ((v << 1) ^ (v >> 63)) as u64;
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let huge = prop_oneof![
        select(vec![
            i64::MAX,
            i64::MIN,
            -1,
            1 << 20,
            (1 << 20) - 1,
            1 << 31,
            1 << 40,
            4097,
            1_000_000,
        ]),
        any::<i64>(),
    ];
    prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Overwrite(i, b)),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Remove(a, b)),
        (any::<Index>(), huge).prop_map(|(i, v)| Mutation::HugeVarint(i, v)),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        if bytes.is_empty() {
            break;
        }
        let len = bytes.len();
        match m {
            Mutation::FlipBit(i, bit) => bytes[i.index(len)] ^= 1 << bit,
            Mutation::Overwrite(i, b) => bytes[i.index(len)] = *b,
            Mutation::Truncate(i) => bytes.truncate(i.index(len)),
            Mutation::Insert(i, b) => {
                let at = i.index(len + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            Mutation::Remove(a, b) => {
                let (a, b) = (a.index(len), b.index(len));
                bytes.drain(a.min(b)..a.max(b));
            }
            Mutation::HugeVarint(i, v) => {
                let at = i.index(len);
                bytes.splice(at..=at, zigzag(*v));
            }
        }
    }
    bytes
}

/// Strings of every class the rules distinguish: empty, short arbitrary Unicode, short strings of
/// the characters the rules single out, and runs at and around the limits up to 100 000.
fn text() -> impl Strategy<Value = String> {
    let special = select(vec![
        'a', 'Z', '0', 'ß', '日', '-', '.', '@', '<', '>', ' ', '"', '\n', '\0', '\u{7f}',
        '\u{85}', '\u{202e}', '\u{2066}', '\u{2028}', '\u{200b}', '+', '/', ':', '_',
    ]);
    prop_oneof![
        Just(String::new()),
        prop::collection::vec(any::<char>(), 1..24).prop_map(String::from_iter),
        prop::collection::vec(special.clone(), 1..24).prop_map(String::from_iter),
        (
            special,
            select(vec![
                2usize, 16, 17, 63, 64, 65, 128, 129, 255, 256, 257, 100_000
            ])
        )
            .prop_map(|(c, n)| std::iter::repeat_n(c, n).collect()),
    ]
}

/// Mostly one of `valid`, sometimes anything: most generated events then break one rule or
/// none, so every rule is reached, not only the first one checked.
fn mostly(valid: Vec<&'static str>) -> impl Strategy<Value = String> {
    prop_oneof![
        8 => select(valid).prop_map(String::from),
        2 => text(),
    ]
}

fn mostly_optional(valid: Vec<&'static str>) -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        4 => Just(None),
        4 => select(valid).prop_map(|s| Some(s.to_owned())),
        1 => text().prop_map(Some),
    ]
}

fn email() -> impl Strategy<Value = Option<String>> {
    let valid = select(vec![
        EMAIL,
        "o'brien+tag@sub.example.co.uk",
        "x@xn--mller-kva.de",
        "A!#$%&*=?^_`{|}~z@example.com",
    ]);
    let bad = select(vec![
        "<script>@x.de",
        "max@müller.de",
        "max@localhost",
        "\"max\"@example.de",
        "max@example.d",
        ".max@example.de",
    ]);
    prop_oneof![
        3 => Just(None),
        6 => valid.prop_map(|s| Some(s.to_owned())),
        1 => bad.prop_map(|s| Some(s.to_owned())),
        1 => (text(), text()).prop_map(|(l, d)| Some(format!("{l}@{d}.de"))),
        1 => text().prop_map(Some),
    ]
}

fn occurred_at() -> impl Strategy<Value = i64> {
    prop_oneof![
        8 => 1..=MAX_OCCURRED_AT_MS,
        1 => select(vec![
            i64::MIN,
            -1,
            0,
            1,
            MAX_OCCURRED_AT_MS,
            MAX_OCCURRED_AT_MS + 1,
            i64::MAX,
        ]),
        1 => any::<i64>(),
    ]
}

fn subject_id() -> impl Strategy<Value = String> {
    let charset = select(vec!['a', 'Z', '7', '-', '_', '.', ':', '+', '=', '/']);
    prop_oneof![
        6 => Just("subj-42".to_owned()),
        3 => prop::collection::vec(charset, 1..300).prop_map(String::from_iter),
        1 => text(),
    ]
}

fn purposes() -> impl Strategy<Value = Vec<String>> {
    let known = ["newsletter", "ads_remarketing", "partner.in-gmbh:eu", "p:1"];
    let wild = prop_oneof![select(known.to_vec()).prop_map(String::from), text()];
    prop_oneof![
        8 => prop::sample::subsequence(known.to_vec(), 1..=known.len())
            .prop_map(|p| p.into_iter().map(String::from).collect()),
        2 => prop::collection::vec(wild, 0..40),
    ]
}

fn contact() -> impl Strategy<Value = Contact> {
    (
        email(),
        mostly_optional(vec!["+49 30 1234567", "(030) 123-456", "030/123456"]),
        (
            mostly_optional(vec!["Erika", "محمد", "Zoë"]),
            mostly_optional(vec!["Mustermann", "O'Brien-Smith"]),
            mostly_optional(vec!["Beispiel GmbH"]),
        ),
        (
            mostly_optional(vec!["Am Seerhein 8"]),
            mostly_optional(vec!["78467", "SW1A 1AA"]),
            mostly_optional(vec!["Konstanz", "Köln"]),
        ),
        (
            mostly_optional(vec!["DE", "FR"]),
            mostly_optional(vec!["50-249"]),
        ),
    )
        .prop_map(
            |(email, phone, (first, last, company), (street, postal, city), (country, size))| {
                Contact {
                    email,
                    phone,
                    first_name: first,
                    last_name: last,
                    company,
                    street,
                    postal_code: postal,
                    city,
                    country,
                    company_size: size,
                }
            },
        )
}

/// Events with the structure the Avro records can carry (purposes where the kind has them, a
/// notice version on grants) and anything at all in the fields.
fn event() -> impl Strategy<Value = ConsentEvent> {
    (
        select(EventKind::ALL.to_vec()),
        any::<u128>(),
        subject_id(),
        occurred_at(),
        mostly(vec!["web-form", "cmp", "newsletter-link"]),
        mostly(vec!["2026-10", "nl-1"]),
        any::<bool>(),
        purposes(),
        contact(),
    )
        .prop_map(
            |(kind, id, subject_id, occurred_at_ms, source, notice, flag, purposes, contact)| {
                let scope = match kind {
                    EventKind::ErasureRequested => Scope::All,
                    EventKind::Unsubscribed if flag => Scope::All,
                    _ => Scope::Purposes(purposes),
                };
                let notice_version = (kind == EventKind::ConsentGranted || flag).then_some(notice);
                ConsentEvent {
                    event_id: Uuid::from_u128(id),
                    kind,
                    subject_id,
                    occurred_at_ms,
                    source,
                    notice_version,
                    scope,
                    contact,
                }
            },
        )
}

fn bundled() -> impl Strategy<Value = &'static BundledSchema> {
    select(schemas::all().iter().collect::<Vec<_>>())
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        check_frame(&bytes);
    }

    #[test]
    fn mutated_valid_frames(
        frame in select(valid_frames()),
        mutations in prop::collection::vec(mutation(), 1..5),
    ) {
        check_frame(&mutate(frame, &mutations));
    }
}

proptest! {
    #![proptest_config(config(512))]

    /// A random body behind the header of every bundled version: past the frame check, into the
    /// Avro decoder and the field mapping.
    #[test]
    fn random_bodies_behind_known_headers(
        schema in bundled(),
        body in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut bytes = relay_events::wire::SINGLE_OBJECT_MAGIC.to_vec();
        bytes.extend_from_slice(&schema.fingerprint.to_le_bytes());
        bytes.extend_from_slice(&body);
        check_frame(&bytes);
    }

    /// Whatever a producer puts in the fields, extreme timestamps and 100 000-character strings
    /// included: decoding rejects exactly what validation rejects, with the same code, and hands
    /// out everything else unchanged, with the digest it had.
    #[test]
    fn decode_agrees_with_validate(ev in event()) {
        let frame = encode_single_object(&ev);
        match (ev.validate(), outcome(decode(&frame))) {
            (Ok(()), Ok(decoded)) => {
                prop_assert_eq!(&decoded, &ev);
                prop_assert_eq!(decoded.digest(), ev.digest());
            }
            (Err(want), Err(got)) => prop_assert_eq!(got, want.code()),
            (want, got) => prop_assert!(false, "validate says {:?}, decode {:?}", want, got),
        }
        for schema in schemas::versions(ev.kind) {
            let _ = outcome(decode(&support::frame(schema, &ev)));
        }
    }

    /// `publish` input: the same rules, and no panic on any line.
    #[test]
    fn json_lines(ev in event(), mutations in prop::collection::vec(mutation(), 0..3)) {
        let line = json::to_json(&ev).to_string();
        match json::from_json_line(&line) {
            Ok(parsed) => {
                prop_assert_eq!(ev.validate(), Ok(()));
                prop_assert_eq!(parsed, ev);
            }
            Err(json::JsonError::Invalid(e)) => {
                prop_assert_eq!(Some(e.code()), ev.validate().err().map(|e| e.code()));
            }
            // Out-of-range timestamps are written as numbers and may fail as such.
            Err(other) => prop_assert!(ev.validate().is_err(), "{other}"),
        }
        let mutated = String::from_utf8_lossy(&mutate(line.into_bytes(), &mutations)).into_owned();
        if let Ok(parsed) = json::from_json_line(&mutated) {
            prop_assert_eq!(parsed.validate(), Ok(()));
        }
    }
}
