use apache_avro::schema_compatibility::SchemaCompatibility;
use uuid::Uuid;

use super::*;
use crate::schemas::BundledSchema;
use crate::ErrorCode;

const EMAIL: &str = "max.mustermann@example.de";

fn sample(kind: EventKind) -> ConsentEvent {
    let scope = match kind {
        EventKind::ConsentGranted | EventKind::ConsentWithdrawn => {
            Scope::Purposes(vec!["newsletter".into(), "ads_remarketing".into()])
        }
        EventKind::Unsubscribed => Scope::All,
        EventKind::ErasureRequested => Scope::All,
    };
    ConsentEvent {
        event_id: Uuid::from_u128(0x0b9f_4a4e_6c1d_4b3a_9a57_2f1d_3c4e_5f60 + kind as u128),
        kind,
        subject_id: "subj-42".into(),
        occurred_at_ms: 1_795_687_200_123,
        source: "web-form".into(),
        notice_version: (kind == EventKind::ConsentGranted).then(|| "2026-10".into()),
        scope,
        contact: Contact {
            email: Some(EMAIL.into()),
            phone: Some("+49 30 1234567".into()),
            first_name: Some("Max".into()),
            last_name: Some("Müstermann".into()),
            company: (kind != EventKind::ErasureRequested).then(|| "in-GmbH".into()),
            street: Some("Am Seerhein 8".into()),
            postal_code: Some("78467".into()),
            city: Some("Konstanz".into()),
            country: Some("DE".into()),
            company_size: (kind == EventKind::ConsentGranted).then(|| "50-249".into()),
        },
    }
}

/// More shapes than [`sample`]: scoped unsubscribe, optional fields set and unset.
fn samples() -> Vec<ConsentEvent> {
    let mut out: Vec<_> = EventKind::ALL.into_iter().map(sample).collect();
    let mut scoped = sample(EventKind::Unsubscribed);
    scoped.scope = Scope::Purposes(vec!["newsletter".into()]);
    scoped.notice_version = Some("2026-10".into());
    out.push(scoped);
    let mut bare = sample(EventKind::ConsentWithdrawn);
    bare.contact = Contact::default();
    out.push(bare);
    out
}

fn parse_json(json: &serde_json::Value) -> Schema {
    Schema::parse_str(&json.to_string()).unwrap()
}

fn bundled_json(kind: EventKind) -> serde_json::Value {
    serde_json::from_str(schema_json(kind)).unwrap()
}

/// The field names of the `Contact` record in the record schema `json`.
fn contact_fields(json: &str) -> Vec<String> {
    let json: serde_json::Value = serde_json::from_str(json).unwrap();
    let contact = json["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "contact")
        .unwrap();
    contact["type"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_owned())
        .collect()
}

/// `ev` as a newer reader sees it after `writer` wrote it: the contact fields `writer` has no
/// field for are lost on the way and come back as their null default.
fn as_written_by(writer: &BundledSchema, ev: &ConsentEvent) -> ConsentEvent {
    let known = contact_fields(writer.json);
    let mut ev = ev.clone();
    let c = &mut ev.contact;
    for (name, slot) in [
        ("email", &mut c.email),
        ("phone", &mut c.phone),
        ("first_name", &mut c.first_name),
        ("last_name", &mut c.last_name),
        ("company", &mut c.company),
        ("street", &mut c.street),
        ("postal_code", &mut c.postal_code),
        ("city", &mut c.city),
        ("country", &mut c.country),
        ("company_size", &mut c.company_size),
    ] {
        if !known.iter().any(|k| k == name) {
            *slot = None;
        }
    }
    ev
}

#[test]
fn every_kind_round_trips_through_single_object_framing() {
    for ev in samples() {
        let bytes = encode_single_object(&ev);
        assert_eq!(decode(&bytes), Ok(ev.clone()), "{:?}", ev.kind);
    }
}

#[test]
fn every_kind_round_trips_through_confluent_framing() {
    for ev in samples() {
        let bytes = encode_confluent(4711, &ev);
        let Ok(Frame::Confluent { schema_id, body }) = split_frame(&bytes) else {
            panic!("not a Confluent frame");
        };
        assert_eq!(schema_id, 4711);
        // What the runtime does with the schema text it got back from the registry.
        let writer = Schema::parse_str(schema_json(ev.kind)).unwrap();
        assert_eq!(decode_with_writer_schema(&writer, body), Ok(ev.clone()));
    }
}

#[test]
fn headers_carry_the_fingerprint_little_endian_and_the_id_big_endian() {
    let ev = sample(EventKind::ConsentGranted);
    let newest = schemas::newest(ev.kind);
    let bytes = encode_single_object(&ev);
    assert_eq!(bytes[..2], [0xC3, 0x01]);
    assert_eq!(bytes[2..10], newest.fingerprint.to_le_bytes());
    assert_eq!(
        newest.fingerprint,
        schemas::crc64_avro(
            schemas::parsing_canonical_form(newest.json)
                .unwrap()
                .as_bytes()
        )
    );
    let bytes = encode_confluent(0x0102_0304, &ev);
    assert_eq!(bytes[..5], [0x00, 0x01, 0x02, 0x03, 0x04]);
}

#[test]
fn frames_with_the_apache_avro_fingerprint_decode_too() {
    for ev in samples() {
        let mut bytes = encode_single_object(&ev);
        bytes[2..10].copy_from_slice(
            &schemas::newest(ev.kind)
                .apache_avro_fingerprint
                .to_le_bytes(),
        );
        assert_eq!(decode(&bytes), Ok(ev));
    }
}

#[test]
fn split_frame_rejects_short_and_unknown_headers() {
    let short = |b: &[u8]| matches!(split_frame(b), Err(DecodeError::TooShort { .. }));
    assert!(short(&[]));
    assert!(short(&[0x00, 0, 0, 1]));
    assert!(short(&[0xC3]));
    assert!(short(&[0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7]));
    assert_eq!(
        split_frame(b"{\"type\":\"ConsentGranted\"}"),
        Err(DecodeError::UnknownMagic("0x7b".into()))
    );
    assert_eq!(
        split_frame(&[0xC3, 0x02, 0, 0, 0, 0, 0, 0, 0, 0]),
        Err(DecodeError::UnknownMagic("0xc3 0x02".into()))
    );
    assert_eq!(
        split_frame(&[0x00, 0, 0, 0, 7]),
        Ok(Frame::Confluent {
            schema_id: 7,
            body: &[]
        })
    );
    assert_eq!(
        split_frame(&[0xC3, 0x01, 0x8a, 0x8f, 0x25, 0xcc, 0xe7, 0x24, 0xdd, 0x63, 0x02]),
        Ok(Frame::SingleObject {
            fingerprint: 0x63dd_24e7_cc25_8f8a,
            body: &[0x02]
        })
    );
    for e in [
        split_frame(&[]).unwrap_err(),
        split_frame(&[0x7b]).unwrap_err(),
    ] {
        assert_eq!(e.code(), ErrorCode::Undecodable);
    }
}

#[test]
fn decode_needs_a_registry_for_confluent_frames() {
    let bytes = encode_confluent(12, &sample(EventKind::ConsentGranted));
    let err = decode(&bytes).unwrap_err();
    assert_eq!(err, DecodeError::NeedsRegistry { schema_id: 12 });
    assert_eq!(err.code(), ErrorCode::UnknownSchema);
}

#[test]
fn unknown_fingerprint_is_reported() {
    let mut bytes = encode_single_object(&sample(EventKind::ConsentGranted));
    bytes[2] ^= 0xff;
    let fp = u64::from_le_bytes(bytes[2..10].try_into().unwrap());
    let err = decode(&bytes).unwrap_err();
    assert_eq!(err, DecodeError::UnknownFingerprint(fp));
    assert_eq!(err.code(), ErrorCode::UnknownSchema);
}

#[test]
fn every_truncation_is_an_error() {
    for ev in samples() {
        let bytes = encode_single_object(&ev);
        for len in 0..bytes.len() {
            let err = decode(&bytes[..len]).expect_err(&format!("{:?} cut at {len}", ev.kind));
            if len >= SINGLE_OBJECT_HEADER_LEN {
                assert_eq!(err.code(), ErrorCode::Undecodable, "{err}");
            }
        }
    }
}

#[test]
fn trailing_bytes_are_an_error() {
    let mut bytes = encode_single_object(&sample(EventKind::Unsubscribed));
    bytes.extend_from_slice(&[0, 0]);
    assert_eq!(decode(&bytes), Err(DecodeError::TrailingBytes(2)));
}

#[test]
fn garbage_never_panics_or_decodes_silently_wrong() {
    // xorshift64*: deterministic, no extra dependency.
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next = || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let mut decoded = 0;
    for round in 0..5_000 {
        let kind = EventKind::ALL[round % 4];
        let len = (next() % 200) as usize;
        let mut bytes = SINGLE_OBJECT_MAGIC.to_vec();
        bytes.extend_from_slice(&schemas::newest(kind).fingerprint.to_le_bytes());
        bytes.extend((0..len).map(|_| next() as u8));
        if let Ok(ev) = decode(&bytes) {
            // Whatever random bytes decode to, decode only hands out events that validate.
            assert_eq!(ev.validate(), Ok(()));
            decoded += 1;
        }
        let raw: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let _ = decode(&raw);
        let _ = decode_with_writer_schema(&schemas::newest(kind).schema, &raw);
    }
    assert!(decoded < 50, "{decoded} random bodies decoded");
}

#[test]
fn a_huge_length_prefix_is_refused_not_allocated() {
    let ev = sample(EventKind::ErasureRequested);
    let mut bytes = encode_single_object(&ev);
    // The first field is event_id, a string: replace its length by a zig-zag varint of 2^40.
    bytes.truncate(SINGLE_OBJECT_HEADER_LEN);
    bytes.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x40]);
    assert!(decode(&bytes).is_err());
}

#[test]
fn malformed_email_in_a_valid_body_is_invalid_email_without_the_address() {
    let mut ev = sample(EventKind::ConsentGranted);
    let bad = "max.mustermann(at)example.de";
    ev.contact.email = Some(bad.into());
    for err in [
        decode(&encode_single_object(&ev)).unwrap_err(),
        decode_with_writer_schema(
            &schemas::newest(ev.kind).schema,
            &encode_confluent(1, &ev)[CONFLUENT_HEADER_LEN..],
        )
        .unwrap_err(),
    ] {
        assert!(
            matches!(err, DecodeError::Invalid(ValidationError::InvalidEmail(_))),
            "{err:?}"
        );
        assert_eq!(err.code(), ErrorCode::InvalidEmail);
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(
                !text.contains(bad) && !text.contains("mustermann"),
                "{text}"
            );
        }
        assert_eq!(err.to_string(), "invalid event: email has no '@'");
    }
}

#[test]
fn avro_errors_do_not_leak_values() {
    // A registry schema whose occurred_at is a string: resolution fails on the value, which here
    // is an email address, and apache-avro's own message would print it.
    let mut json = bundled_json(EventKind::ConsentWithdrawn);
    json["fields"][2]["type"] = "string".into();
    let writer = parse_json(&json);
    let body = apache_avro::to_avro_datum(
        &writer,
        Value::Record(vec![
            ("event_id".into(), Value::String(Uuid::new_v4().to_string())),
            ("subject_id".into(), Value::String("s".into())),
            ("occurred_at".into(), Value::String(EMAIL.into())),
            ("source".into(), Value::String("x".into())),
            (
                "notice_version".into(),
                Value::Union(0, Box::new(Value::Null)),
            ),
            (
                "purposes".into(),
                Value::Array(vec![Value::String("newsletter".into())]),
            ),
            (
                "contact".into(),
                Value::Record(
                    contact_fields(schema_json(EventKind::ConsentWithdrawn))
                        .into_iter()
                        .map(|f| (f, Value::Union(0, Box::new(Value::Null))))
                        .collect(),
                ),
            ),
        ]),
    )
    .unwrap();
    let err = decode_with_writer_schema(&writer, &body).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Undecodable);
    for text in [err.to_string(), format!("{err:?}")] {
        assert!(
            !text.contains(EMAIL) && !text.contains("mustermann"),
            "{text}"
        );
    }
}

#[test]
fn global_unsubscribe_wins_over_a_list() {
    let schema = &schemas::newest(EventKind::Unsubscribed).schema;
    let mut value = to_value(&sample(EventKind::Unsubscribed));
    if let Value::Record(fields) = &mut value {
        for (name, v) in fields.iter_mut() {
            if name == "purposes" {
                *v = Value::Array(vec![Value::String("newsletter".into())]);
            }
        }
    }
    let body = apache_avro::to_avro_datum(schema, value.resolve(schema).unwrap()).unwrap();
    let ev = decode_with_writer_schema(schema, &body).unwrap();
    assert_eq!(ev.scope, Scope::All);
}

#[test]
fn confluent_writer_must_name_a_known_record() {
    let body = &encode_confluent(1, &sample(EventKind::ConsentGranted))[CONFLUENT_HEADER_LEN..];
    let mut json = bundled_json(EventKind::ConsentGranted);
    json["name"] = "ConsentGiven".into();
    let err = decode_with_writer_schema(&parse_json(&json), body).unwrap_err();
    assert_eq!(
        err,
        DecodeError::UnknownRecord("de.consentrelay.events.ConsentGiven".into())
    );
    assert_eq!(err.code(), ErrorCode::UnknownSchema);
    let string = Schema::parse_str(r#""string""#).unwrap();
    assert!(matches!(
        decode_with_writer_schema(&string, body),
        Err(DecodeError::UnknownRecord(_))
    ));
}

/// DESIGN.md §2: each schema version can read the data of the previous one. Generic over the
/// bundled version list, so a new `vN.avsc` is covered by adding it to `schemas::SOURCES`.
#[test]
fn each_bundled_version_reads_the_previous_one() {
    for kind in EventKind::ALL {
        let versions: Vec<&BundledSchema> = schemas::versions(kind).collect();
        assert_eq!(versions.first().map(|s| s.version), Some(1), "{kind:?}");
        let events: Vec<ConsentEvent> = samples().into_iter().filter(|e| e.kind == kind).collect();
        for v in &versions {
            // Every version parses (schemas::all() would have panicked) and round-trips alone.
            for ev in &events {
                let body = encode_with_schema(&v.schema, ev).unwrap();
                assert_eq!(
                    decode_body(&v.schema, &v.schema, &body),
                    Ok(as_written_by(v, ev)),
                    "{}",
                    v.file_name
                );
            }
        }
        for pair in versions.windows(2) {
            let (old, new) = (pair[0], pair[1]);
            SchemaCompatibility::can_read(&old.schema, &new.schema)
                .unwrap_or_else(|e| panic!("{} cannot read {}: {e}", new.file_name, old.file_name));
            let mut lost_something = false;
            for ev in &events {
                let body = encode_with_schema(&old.schema, ev).unwrap();
                let expected = as_written_by(old, ev);
                lost_something |= expected != *ev;
                assert_eq!(
                    decode_body(&old.schema, &new.schema, &body),
                    Ok(expected),
                    "{} reading {}",
                    new.file_name,
                    old.file_name
                );
            }
            // Otherwise the samples set none of the fields the new version added, and the
            // resolution of their defaults went untested.
            if contact_fields(new.json).len() > contact_fields(old.json).len() {
                assert!(
                    lost_something,
                    "samples set no field new in {}",
                    new.file_name
                );
            }
        }
    }
}

/// During a rolling upgrade, consumers still on v1 (with a schema registry) read what upgraded
/// producers write; they skip the v2 fields.
#[test]
fn each_bundled_version_also_reads_the_next_one() {
    for kind in EventKind::ALL {
        let versions: Vec<&BundledSchema> = schemas::versions(kind).collect();
        for pair in versions.windows(2) {
            let (old, new) = (pair[0], pair[1]);
            SchemaCompatibility::can_read(&new.schema, &old.schema)
                .unwrap_or_else(|e| panic!("{} cannot read {}: {e}", old.file_name, new.file_name));
            for ev in samples().iter().filter(|e| e.kind == kind) {
                let body = encode_with_schema(&new.schema, ev).unwrap();
                assert_eq!(
                    decode_body(&new.schema, &old.schema, &body),
                    Ok(as_written_by(old, ev))
                );
            }
        }
    }
}

/// Messages written before the upgrade sit in Kafka for the retention period: single-object
/// frames naming a v1 fingerprint (either of the two) decode, with the v2 fields empty.
#[test]
fn v1_single_object_frames_decode_with_the_new_fields_empty() {
    for ev in samples() {
        let v1 = schemas::versions(ev.kind).next().unwrap();
        assert_eq!(v1.version, 1);
        assert_ne!(schemas::newest(ev.kind).version, 1);
        let body = encode_with_schema(&v1.schema, &ev).unwrap();
        for fingerprint in [v1.fingerprint, v1.apache_avro_fingerprint] {
            let mut frame = SINGLE_OBJECT_MAGIC.to_vec();
            frame.extend_from_slice(&fingerprint.to_le_bytes());
            frame.extend_from_slice(&body);
            let decoded = decode(&frame).unwrap();
            let c = &decoded.contact;
            assert_eq!(
                [
                    &c.street,
                    &c.postal_code,
                    &c.city,
                    &c.country,
                    &c.company_size
                ],
                [&None::<String>; 5]
            );
            assert_eq!(c.email, ev.contact.email);
            assert_eq!(decoded, as_written_by(v1, &ev));
        }
    }
}

/// A frame from another implementation, as an upstream service still on v1 sends it: Python
/// `avro` 1.12.2 wrote this ConsentGranted with the v1 schema (logical types stripped, which
/// leaves the binary encoding as it is) and we framed it with v1's fingerprint. The v2 reader
/// decodes it with the v2 fields empty.
#[test]
fn a_v1_frame_written_by_python_avro_decodes_with_the_new_fields_empty() {
    const FRAME: &str = "c30136e3905d925bd5bb4830623966346134652d366331642d346233612d396135372d32\
        66316433633465356636300e7375626a2d343280d4e1f4c268107765622d666f726d0e323032362d313002\
        1e706172746e65725f696e5f676d626800021c6d6178406578616d706c652e64650002064d617800021a42\
        6569737069656c20476d6248";
    let bytes: Vec<u8> = (0..FRAME.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&FRAME[i..i + 2], 16).unwrap())
        .collect();
    let ev = decode(&bytes).unwrap();
    assert_eq!(
        ev,
        ConsentEvent {
            event_id: Uuid::from_u128(0x0b9f_4a4e_6c1d_4b3a_9a57_2f1d_3c4e_5f60),
            kind: EventKind::ConsentGranted,
            subject_id: "subj-42".into(),
            occurred_at_ms: 1_795_687_200_000,
            source: "web-form".into(),
            notice_version: Some("2026-10".into()),
            scope: Scope::Purposes(vec!["partner_in_gmbh".into()]),
            contact: Contact {
                email: Some("max@example.de".into()),
                first_name: Some("Max".into()),
                company: Some("Beispiel GmbH".into()),
                ..Contact::default()
            },
        }
    );
}

/// The next version as a future author would write it: the newest plus an optional field with a
/// default. Kept in the test, not in `schemas/`, so that it proves the resolution path against a
/// registry-only writer without becoming a contract.
fn withdrawn_next() -> (Schema, String) {
    let mut json = bundled_json(EventKind::ConsentWithdrawn);
    json["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "channel", "type": ["null", "string"], "default": null}));
    (parse_json(&json), json.to_string())
}

#[test]
fn an_unbundled_next_version_reads_our_data_and_we_read_its() {
    let current = schemas::newest(EventKind::ConsentWithdrawn);
    let (next, next_json) = withdrawn_next();
    let next_fingerprint = schemas::fingerprint_of_json(&next_json).unwrap();
    assert_ne!(next_fingerprint, current.fingerprint);
    let current = &current.schema;
    SchemaCompatibility::mutual_read(current, &next).unwrap();

    let ev = sample(EventKind::ConsentWithdrawn);
    // The next version reads our data: `channel` comes from its default.
    let current_body = encode_with_schema(current, &ev).unwrap();
    assert_eq!(decode_body(current, &next, &current_body), Ok(ev.clone()));
    // We read its data (a newer producer behind a registry): `channel` is skipped.
    let next_body = encode_with_schema(&next, &ev).unwrap();
    assert!(next_body.len() > current_body.len());
    assert_eq!(decode_with_writer_schema(&next, &next_body), Ok(ev.clone()));
    // Without a registry, an unbundled version is unknown rather than misread.
    let mut frame = SINGLE_OBJECT_MAGIC.to_vec();
    frame.extend_from_slice(&next_fingerprint.to_le_bytes());
    frame.extend_from_slice(&next_body);
    assert!(matches!(
        decode(&frame),
        Err(DecodeError::UnknownFingerprint(_))
    ));
}

#[test]
fn confluent_writer_without_optional_fields_gets_the_defaults() {
    // An older producer's registry schema: no notice_version, no all_purposes, no contact.company.
    let mut json = bundled_json(EventKind::Unsubscribed);
    let drop = |fields: &mut serde_json::Value, name: &str| {
        fields.as_array_mut().unwrap().retain(|f| f["name"] != name);
    };
    drop(&mut json["fields"], "notice_version");
    drop(&mut json["fields"], "all_purposes");
    let contact = json["fields"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|f| f["name"] == "contact")
        .unwrap();
    drop(&mut contact["type"]["fields"], "company");
    let writer = parse_json(&json);
    let reader = &schemas::newest(EventKind::Unsubscribed).schema;
    SchemaCompatibility::can_read(&writer, reader).unwrap();

    let mut ev = sample(EventKind::Unsubscribed);
    ev.scope = Scope::Purposes(vec!["newsletter".into()]);
    let body = encode_with_schema(&writer, &ev).unwrap();
    let decoded = decode_with_writer_schema(&writer, &body).unwrap();
    ev.contact.company = None;
    assert_eq!(decoded, ev);
}

#[test]
fn confluent_writer_without_a_required_field_is_missing_field() {
    let mut json = bundled_json(EventKind::ConsentWithdrawn);
    json["fields"]
        .as_array_mut()
        .unwrap()
        .retain(|f| f["name"] != "source");
    let writer = parse_json(&json);
    let body = encode_with_schema(&writer, &sample(EventKind::ConsentWithdrawn)).unwrap();
    let err = decode_with_writer_schema(&writer, &body).unwrap_err();
    assert_eq!(err, DecodeError::MissingField("source".into()));
    assert_eq!(err.code(), ErrorCode::MissingField);
}

/// A body whose event_id is `id` as written, for spellings a `ConsentEvent` cannot hold.
fn body_with_event_id(schema: &Schema, ev: &ConsentEvent, id: &str) -> Vec<u8> {
    let mut value = to_value(ev);
    if let Value::Record(fields) = &mut value {
        fields[0].1 = Value::String(id.into());
    }
    // Resolving against the uuid logical type would parse (and so normalise) the id; a producer
    // writes the string as it has it.
    apache_avro::to_avro_datum(
        &uuids_as_strings(schema),
        value.resolve(&uuids_as_strings(schema)).unwrap(),
    )
    .unwrap()
}

#[test]
fn event_ids_in_other_spellings_are_refused_in_both_framings() {
    let ev = sample(EventKind::ConsentGranted);
    let canonical = ev.event_id.to_string();
    for id in [
        format!("{{{canonical}}}"),
        format!("urn:uuid:{canonical}"),
        canonical.to_uppercase(),
        canonical.replace('-', ""),
        // 16 bytes: apache-avro's uuid type would take them as a binary UUID.
        "abcdefghijklmnop".to_owned(),
    ] {
        for version in schemas::versions(ev.kind) {
            let body = body_with_event_id(&version.schema, &ev, &id);
            let mut frame = SINGLE_OBJECT_MAGIC.to_vec();
            frame.extend_from_slice(&version.fingerprint.to_le_bytes());
            frame.extend_from_slice(&body);
            for err in [
                decode(&frame).unwrap_err(),
                decode_with_writer_schema(&version.schema, &body).unwrap_err(),
            ] {
                assert_eq!(err.code(), ErrorCode::InvalidEventId, "{id}: {err}");
            }
        }
    }
    let version = schemas::newest(ev.kind);
    let body = body_with_event_id(&version.schema, &ev, &canonical);
    assert_eq!(decode_with_writer_schema(&version.schema, &body), Ok(ev));
}

/// A registry writer with a recursive type the reader does not know: the bounds check follows
/// the reference, and a chain deeper than the limit is refused before apache-avro recurses.
#[test]
fn recursive_writer_types_are_followed_to_a_limit() {
    let mut json = bundled_json(EventKind::ConsentWithdrawn);
    json["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "name": "chain",
            "type": ["null", {"type": "record", "name": "Link", "fields": [
                {"name": "next", "type": ["null", "Link"]}
            ]}],
            "default": null
        }));
    let writer = parse_json(&json);
    let ev = sample(EventKind::ConsentWithdrawn);
    let base = encode_with_schema(&writer, &ev).unwrap();
    // The body ends with the chain's union index 0 (null); replace it by `depth` links.
    let chain = |depth: usize| {
        let mut body = base[..base.len() - 1].to_vec();
        body.extend(std::iter::repeat_n(0x02, depth));
        body.push(0x00);
        body
    };
    assert_eq!(decode_with_writer_schema(&writer, &chain(5)), Ok(ev));
    let err = decode_with_writer_schema(&writer, &chain(100_000)).unwrap_err();
    assert_eq!(err, DecodeError::TooDeep(bounds::MAX_DEPTH));
    assert_eq!(err.code(), ErrorCode::Undecodable);
}

#[test]
fn lengths_and_counts_must_fit_in_the_message() {
    let ev = sample(EventKind::ConsentWithdrawn);
    let schema = &schemas::newest(ev.kind).schema;
    let body = encode_with_schema(schema, &ev).unwrap();
    // event_id is the first field: its length prefix, 36 as the zig-zag varint 0x48.
    assert_eq!(body[0], 0x48);
    let mut long = body.clone();
    long[0] = 0x7e; // 63 bytes: more than the event id, less than the body
    assert!(decode_with_writer_schema(schema, &long).is_err());
    let mut beyond = body.clone();
    beyond.splice(0..1, [0xfe, 0xff, 0x7f]); // 1 048 575
    assert_eq!(
        decode_with_writer_schema(schema, &beyond),
        Err(DecodeError::ImplausibleLength {
            what: "length",
            declared: 1_048_575,
            remaining: body.len() - 1
        })
    );
}
