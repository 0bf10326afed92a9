//! The crate as its users see it: a hand-written `publish` line through both framings and back.

use relay_events::{
    decode, decode_with_writer_schema, encode_confluent, encode_single_object, json, schema_json,
    schemas, split_frame, Action, DecodeError, ErrorCode, EventKind, Frame, Scope, ValidationError,
};

const LINE: &str = r#"{"type":"Unsubscribed","subject_id":"subj-7","occurred_at":"2026-11-26T10:00:00Z","source":"newsletter-link","all_purposes":true,"contact":{"email":"erika@example.de"}}"#;

#[test]
fn a_publish_line_survives_both_framings() {
    let ev = json::from_json_line(LINE).unwrap();
    assert_eq!(ev.scope, Scope::All);
    assert_eq!(ev.action(), Action::Withdraw);

    assert_eq!(decode(&encode_single_object(&ev)), Ok(ev.clone()));

    let bytes = encode_confluent(3, &ev);
    let Frame::Confluent { schema_id: 3, body } = split_frame(&bytes).unwrap() else {
        panic!("not a Confluent frame with id 3");
    };
    let writer = apache_avro::Schema::parse_str(schema_json(EventKind::Unsubscribed)).unwrap();
    assert_eq!(decode_with_writer_schema(&writer, body), Ok(ev.clone()));

    assert_eq!(
        json::from_json_line(&json::to_json(&ev).to_string()),
        Ok(ev)
    );
}

#[test]
fn dlq_codes_are_reachable_from_outside() {
    let mut ev = json::from_json_line(LINE).unwrap();
    ev.contact.email = Some("erika.example.de".into());
    let err = decode(&encode_single_object(&ev)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidEmail);
    assert!(matches!(
        err,
        DecodeError::Invalid(ValidationError::InvalidEmail(_))
    ));
    assert_eq!(decode(b"").unwrap_err().code(), ErrorCode::Undecodable);
    assert_eq!(schemas::all().len(), 8);
}
