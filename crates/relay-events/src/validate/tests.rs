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
    assert_eq!(
        code(with(|e| e.event_id = Uuid::nil())),
        ErrorCode::InvalidEventId
    );
    assert_eq!(
        code(with(|e| e.subject_id.clear())),
        ErrorCode::InvalidSubjectId
    );
    assert_eq!(
        code(with(|e| e.subject_id = "x".repeat(257))),
        ErrorCode::InvalidSubjectId
    );
    assert_eq!(with(|e| e.subject_id = "x".repeat(256)), Ok(()));
    assert_eq!(
        code(with(|e| e.subject_id = "a\nb".into())),
        ErrorCode::InvalidSubjectId
    );
    assert_eq!(
        code(with(|e| e.occurred_at_ms = 0)),
        ErrorCode::InvalidOccurredAt
    );
    assert_eq!(code(with(|e| e.source.clear())), ErrorCode::InvalidSource);
    assert_eq!(
        with(|e| e.notice_version = None),
        Err(ValidationError::MissingField("notice_version"))
    );
    assert_eq!(
        code(with(|e| e.notice_version = Some(String::new()))),
        ErrorCode::InvalidNoticeVersion
    );
}

#[test]
fn subject_id_charset() {
    for ok in [
        "subj-42",
        "crm:12345",
        "a.b_c-d",
        "dXNlcjE2Mg==",
        "tenant/42+x",
        "A",
    ] {
        assert_eq!(with(|e| e.subject_id = ok.into()), Ok(()), "{ok}");
    }
    for bad in [
        "\u{202e}",
        "subj\u{202e}24",
        "subj 42",
        " subj",
        "subj\t42",
        "max@example.de",
        "ü",
        "subj\u{200b}",
        "<script>",
        "a,b",
        "\u{0}",
    ] {
        let err = with(|e| e.subject_id = bad.into()).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidSubjectId, "{bad:?}");
        assert!(err.to_string().starts_with("field `subject_id` "), "{err}");
        assert!(!err.to_string().contains(bad), "{err}");
    }
    // The charset is checked before the length, so a long non-ASCII id says what is wrong.
    let err = with(|e| e.subject_id = "ü".repeat(200)).unwrap_err();
    assert!(err.to_string().contains("ASCII"), "{err}");
}

#[test]
fn occurred_at_must_be_renderable() {
    assert_eq!(with(|e| e.occurred_at_ms = 1), Ok(()));
    assert_eq!(with(|e| e.occurred_at_ms = MAX_OCCURRED_AT_MS), Ok(()));
    for bad in [i64::MIN, -1, 0, MAX_OCCURRED_AT_MS + 1, i64::MAX] {
        let err = with(|e| e.occurred_at_ms = bad).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidOccurredAt, "{bad}");
    }
    assert_eq!(
        with(|e| e.occurred_at_ms = 253_402_300_800_000)
            .unwrap_err()
            .to_string(),
        "field `occurred_at` must not be later than 9999-12-31T23:59:59.999Z"
    );
}

#[test]
fn event_ids_only_in_canonical_form() {
    let canonical = "0b9f4a4e-6c1d-4b3a-9a57-2f1d3c4e5f60";
    assert_eq!(
        parse_event_id(canonical).map(|u| u.to_string()),
        Ok(canonical.to_owned())
    );
    for bad in [
        "{0b9f4a4e-6c1d-4b3a-9a57-2f1d3c4e5f60}",
        "urn:uuid:0b9f4a4e-6c1d-4b3a-9a57-2f1d3c4e5f60",
        "0B9F4A4E-6C1D-4B3A-9A57-2F1D3C4E5F60",
        "0b9f4a4e6c1d4b3a9a572f1d3c4e5f60",
        " 0b9f4a4e-6c1d-4b3a-9a57-2f1d3c4e5f60",
        "0b9f4a4e-6c1d-4b3a-9a57-2f1d3c4e5f6",
        "not-a-uuid",
        "",
    ] {
        let err = parse_event_id(bad).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidEventId, "{bad}");
        assert!(bad.is_empty() || !err.to_string().contains(bad), "{err}");
    }
}

#[test]
fn free_text_limits_name_the_field() {
    type Set = fn(&mut ConsentEvent, String);
    let cases: &[(Set, &str, usize, ErrorCode)] = &[
        (
            |e, v| e.source = v,
            "source",
            MAX_SOURCE_CHARS,
            ErrorCode::InvalidSource,
        ),
        (
            |e, v| e.notice_version = Some(v),
            "notice_version",
            MAX_NOTICE_VERSION_CHARS,
            ErrorCode::InvalidNoticeVersion,
        ),
        (
            |e, v| e.contact.first_name = Some(v),
            "contact.first_name",
            MAX_NAME_CHARS,
            ErrorCode::InvalidContact,
        ),
        (
            |e, v| e.contact.last_name = Some(v),
            "contact.last_name",
            MAX_NAME_CHARS,
            ErrorCode::InvalidContact,
        ),
        (
            |e, v| e.contact.company = Some(v),
            "contact.company",
            MAX_COMPANY_CHARS,
            ErrorCode::InvalidContact,
        ),
        (
            |e, v| e.contact.street = Some(v),
            "contact.street",
            MAX_STREET_CHARS,
            ErrorCode::InvalidContact,
        ),
        (
            |e, v| e.contact.postal_code = Some(v),
            "contact.postal_code",
            MAX_POSTAL_CODE_CHARS,
            ErrorCode::InvalidContact,
        ),
        (
            |e, v| e.contact.city = Some(v),
            "contact.city",
            MAX_CITY_CHARS,
            ErrorCode::InvalidContact,
        ),
        (
            |e, v| e.contact.company_size = Some(v),
            "contact.company_size",
            MAX_COMPANY_SIZE_CHARS,
            ErrorCode::InvalidContact,
        ),
    ];
    for &(set, name, max, code) in cases {
        // Multi-byte characters: the limits count characters, not bytes.
        assert_eq!(with(|e| set(e, "ß".repeat(max))), Ok(()), "{name}");
        for bad in [
            "ß".repeat(max + 1),
            "x".repeat(100_000),
            "a\nb".into(),
            "a\u{1b}[2Jb".into(),
            "a\u{85}b".into(),
            "a\u{202e}b".into(),
            "a\u{2066}b".into(),
            "a\u{2028}b".into(),
        ] {
            let err = with(|e| set(e, bad.clone())).unwrap_err();
            assert_eq!(err.code(), code, "{name}");
            let text = err.to_string();
            assert!(text.starts_with(&format!("field `{name}` ")), "{text}");
            assert!(!text.contains(&bad), "{text}");
        }
    }
    // Right-to-left text itself is fine: only the formatting controls are refused.
    assert_eq!(with(|e| e.contact.last_name = Some("محمد".into())), Ok(()));
    assert_eq!(
        with(|e| e.source = "   ".into()).unwrap_err().code(),
        ErrorCode::InvalidSource
    );
}

#[test]
fn country_is_iso_alpha_2() {
    assert_eq!(with(|e| e.contact.country = Some("DE".into())), Ok(()));
    for bad in ["de", "DEU", "Germany", "D", "", "D1", "ÄB"] {
        let err = with(|e| e.contact.country = Some(bad.into())).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidContact, "{bad}");
    }
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
    let code = |r: Result<(), ValidationError>| r.unwrap_err().code();
    assert_eq!(
        code(with(|e| e.scope = purposes(&[]))),
        ErrorCode::InvalidPurposes
    );
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
    assert_eq!(
        with(|e| e.scope = purposes(&["ads_remarketing", "partner.in-gmbh:eu"])),
        Ok(())
    );
    let many: Vec<String> = (0..=MAX_PURPOSES).map(|i| format!("p{i}")).collect();
    assert_eq!(
        code(with(|e| e.scope = Scope::Purposes(many))),
        ErrorCode::InvalidPurposes
    );
    let long = "p".repeat(MAX_PURPOSE_CHARS + 1);
    assert_eq!(
        code(with(|e| e.scope = purposes(&[&long]))),
        ErrorCode::InvalidPurposes
    );
    for bad in ["max@example.de", "news letter", "news\u{202e}", "ä"] {
        let err = with(|e| e.scope = purposes(&[bad])).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidPurposes, "{bad}");
        assert!(!err.to_string().contains(bad), "{err}");
    }
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
        assert_eq!(err.code(), ErrorCode::InvalidEmail);
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
        &format!("+49 {}", " ".repeat(40)),
    ] {
        let err = with(|e| e.contact.phone = Some(bad.to_string())).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidPhone);
        assert!(bad.is_empty() || !err.to_string().contains(bad), "{err}");
    }
}

#[test]
fn what_the_ad_platforms_and_list_providers_take() {
    for ok in [
        "max@example.de",
        "Max.Mustermann+newsletter@Example.DE",
        "o'brien@example.ie",
        "a!#$%&'*+-/=?^_`{|}~z@example.com",
        "x@sub.example.co.uk",
        "x@xn--mller-kva.de",
        "x@example.xn--p1ai",
        "x@123.example.com",
        "x@a-b.io",
    ] {
        assert_eq!(with(|e| e.contact.email = Some(ok.into())), Ok(()), "{ok}");
    }
    for bad in [
        "<script>@x.de",
        "<max@example.de>",
        "Max <max@example.de>",
        "\"max\"@example.de",
        "max(comment)@example.de",
        "ma,x@example.de",
        "max;@example.de",
        "ma\\x@example.de",
        ".max@example.de",
        "max.@example.de",
        "ma..x@example.de",
        "max@müller.de",
        "mäx@example.de",
        "max@-example.de",
        "max@example-.de",
        "max@exa_mple.de",
        "max@example.d",
        "max@example.123",
        "max@[127.0.0.1]",
        "max@example.de\u{202e}",
        "max@x.de\u{0}",
    ] {
        let err = with(|e| e.contact.email = Some(bad.into())).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidEmail, "{bad}");
        let text = err.to_string();
        assert!(text.starts_with("email "), "{text}");
        assert!(!text.contains(bad) && !text.contains("max"), "{text}");
    }
    let long_label = format!("max@{}.de", "a".repeat(64));
    assert_eq!(
        with(|e| e.contact.email = Some(long_label)),
        Err(ValidationError::InvalidEmail(
            "email domain has a label longer than 63 characters"
        ))
    );
}

#[test]
fn codes_are_stable() {
    assert_eq!(
        ValidationError::MissingEmail.code(),
        ErrorCode::MissingEmail
    );
    assert_eq!(
        ValidationError::UnknownPurpose("x".into()).code(),
        ErrorCode::UnknownPurpose
    );
    assert_eq!(
        DecodeError::UnknownFingerprint(1).code(),
        ErrorCode::UnknownSchema
    );
    assert_eq!(DecodeError::TrailingBytes(1).code(), ErrorCode::Undecodable);
    assert_eq!(
        DecodeError::Invalid(ValidationError::InvalidEmail("email has no '@'")).code(),
        ErrorCode::InvalidEmail
    );
    let names: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    let mut unique = names.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "{names:?}");
    for name in names {
        assert!(
            name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{name}"
        );
    }
}

/// The producers' and operators' documentation lists exactly the codes of [`ErrorCode::ALL`].
#[test]
fn every_code_is_documented() {
    let readme = include_str!("../../../../README.md");
    let rules = include_str!("../../../../docs/event-rules.md");
    for code in ErrorCode::ALL {
        let quoted = format!("`{code}`");
        assert!(readme.contains(&quoted), "README.md lacks {quoted}");
        assert!(
            rules.contains(&quoted),
            "docs/event-rules.md lacks {quoted}"
        );
    }
}

#[test]
fn a_replay_helps_only_where_the_cause_lay_outside_the_event() {
    assert!(ErrorCode::DownstreamPermanent.replay_can_fix());
    assert!(ErrorCode::UnknownPurpose.replay_can_fix());
    // Replayed once its date has come, a future-dated grant would outrank what was decided since.
    assert!(!ErrorCode::FutureOccurredAt.replay_can_fix());
    assert!(!ErrorCode::MissingEmail.replay_can_fix());
    assert!(!ErrorCode::InvalidEmail.replay_can_fix());
}
