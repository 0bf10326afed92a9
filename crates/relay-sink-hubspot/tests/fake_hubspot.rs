//! The sink against the fake HubSpot of relay-testkit: outcomes per item and the state they leave.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use relay_delivery::{Outcome, OutcomeClass, Sink, SinkItem, Target};
use relay_events::{Action, Contact};
use relay_sink_hubspot::{HubSpotConfig, HubSpotSink, LegalBasis, PurposeConfig};
use relay_testkit::hubspot::{
    FakeHubSpot, ScriptedResponse, BATCH_WRITE_PATH, GDPR_DELETE_PATH, UNSUBSCRIBE_ALL_PATH,
    UPSERT_PATH,
};
use relay_testkit::items::ItemFixture;
use serde_json::{json, Value};

const TOKEN: &str = "pat-test-token";
const NEWSLETTER_IDS: [i64; 2] = [1001, 1002];
const EVENTS_ID: i64 = 2001;
/// The purpose whose grants create the contact first.
const WEBINAR_ID: i64 = 3001;

fn config(base_url: String, max_inputs: usize) -> HubSpotConfig {
    let mut config = HubSpotConfig {
        base_url,
        token: Some(TOKEN.into()),
        max_inputs_per_request: max_inputs,
        ..HubSpotConfig::default()
    };
    config.purposes.insert(
        "newsletter".into(),
        PurposeConfig {
            subscription_ids: NEWSLETTER_IDS.to_vec(),
            legal_basis: LegalBasis::ConsentWithNotice,
            legal_basis_explanation: "Opted in on the newsletter form".into(),
            create_contact: false,
        },
    );
    config.purposes.insert(
        "events".into(),
        PurposeConfig {
            subscription_ids: vec![EVENTS_ID],
            legal_basis: LegalBasis::LegitimateInterestClient,
            legal_basis_explanation: "Customer event invitations".into(),
            create_contact: false,
        },
    );
    config.purposes.insert(
        "webinar".into(),
        PurposeConfig {
            subscription_ids: vec![WEBINAR_ID],
            legal_basis: LegalBasis::ConsentWithNotice,
            legal_basis_explanation: "Signed up for a webinar".into(),
            create_contact: true,
        },
    );
    config
}

async fn setup(max_inputs: usize) -> (FakeHubSpot, HubSpotSink) {
    let fake = FakeHubSpot::start(TOKEN).await;
    let sink = HubSpotSink::new(config(fake.base_url(), max_inputs)).unwrap();
    (fake, sink)
}

fn item(email: Option<&str>, action: Action, target: Target) -> SinkItem {
    ItemFixture::new(action, target)
        .email(email)
        .notice("nl-2026-01")
        .build()
}

fn grant(email: &str, purpose: &str) -> SinkItem {
    item(Some(email), Action::Grant, Target::Purpose(purpose.into()))
}

fn withdraw(email: &str, purpose: &str) -> SinkItem {
    item(
        Some(email),
        Action::Withdraw,
        Target::Purpose(purpose.into()),
    )
}

fn unsubscribe_all(email: &str) -> SinkItem {
    item(Some(email), Action::Withdraw, Target::All)
}

fn erase(email: &str) -> SinkItem {
    item(Some(email), Action::Erase, Target::All)
}

/// The wait a rate-limited account asks for: limits make the destination unavailable.
fn retry_after(outcome: &Outcome) -> Option<Duration> {
    match outcome {
        Outcome::Unavailable { after, .. } => *after,
        other => panic!("expected unavailable, got {other:?}"),
    }
}

fn reason(outcome: &Outcome) -> &str {
    outcome
        .reason()
        .unwrap_or_else(|| panic!("expected a failure, got {outcome:?}"))
}

fn with_contact(mut item: SinkItem, contact: Contact) -> SinkItem {
    Arc::get_mut(&mut item.event).unwrap().contact = contact;
    item
}

fn body(request: &relay_testkit::hubspot::RecordedRequest) -> Value {
    serde_json::from_str(&request.body).unwrap()
}

#[tokio::test]
async fn sink_identity() {
    let (_fake, sink) = setup(100).await;
    assert_eq!(sink.name(), "hubspot");
    assert!(sink.requires_email());
}

#[tokio::test]
async fn grant_subscribes_with_legal_basis() {
    let (fake, sink) = setup(100).await;
    let outcomes = sink.deliver(&[grant("Max@Example.DE", "newsletter")]).await;
    assert_eq!(outcomes, [Outcome::Applied]);
    for id in NEWSLETTER_IDS {
        assert_eq!(
            fake.subscription_status("max@example.de", id).as_deref(),
            Some("SUBSCRIBED")
        );
    }

    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("POST", BATCH_WRITE_PATH)
    );
    assert!(request
        .headers
        .contains(&("authorization".into(), format!("Bearer {TOKEN}"))));
    let body: Value = serde_json::from_str(&request.body).unwrap();
    assert_eq!(
        body["inputs"][0],
        json!({
            "subscriberIdString": "max@example.de",
            "channel": "EMAIL",
            "statusState": "SUBSCRIBED",
            "subscriptionId": NEWSLETTER_IDS[0],
            "legalBasis": "CONSENT_WITH_NOTICE",
            "legalBasisExplanation": "Opted in on the newsletter form (notice nl-2026-01)",
        })
    );
}

#[tokio::test]
async fn withdraw_unsubscribes_and_a_repeat_is_already_applied() {
    let (fake, sink) = setup(100).await;
    let email = "anna@example.de";
    assert_eq!(
        sink.deliver(&[grant(email, "events")]).await,
        [Outcome::Applied]
    );
    assert_eq!(
        sink.deliver(&[withdraw(email, "events")]).await,
        [Outcome::Applied]
    );
    assert_eq!(
        fake.subscription_status(email, EVENTS_ID).as_deref(),
        Some("UNSUBSCRIBED")
    );
    assert_eq!(
        sink.deliver(&[withdraw(email, "events")]).await,
        [Outcome::AlreadyApplied]
    );
    assert_eq!(fake.status_changes(email), 2, "the repeat changed nothing");
}

#[tokio::test]
async fn an_unsubscribe_all_answer_without_results_is_done_for_every_input_no_error_names() {
    let (fake, sink) = setup(100).await;
    fake.set_terse_unsubscribe_all(true);
    let outcomes = sink
        .deliver(&[
            unsubscribe_all("eva@example.de"),
            unsubscribe_all("bad@@example.de"),
        ])
        .await;
    assert_eq!(outcomes[0], Outcome::Applied);
    assert!(
        matches!(&outcomes[1], Outcome::Permanent { reason } if reason.contains("VALIDATION_ERROR")),
        "{:?}",
        outcomes[1]
    );
    assert!(fake.unsubscribed_from_all("eva@example.de"));
}

#[tokio::test]
async fn repeated_grant_is_already_applied() {
    let (fake, sink) = setup(100).await;
    let email = "ben@example.de";
    assert_eq!(
        sink.deliver(&[grant(email, "newsletter")]).await,
        [Outcome::Applied]
    );
    assert_eq!(
        sink.deliver(&[grant(email, "newsletter")]).await,
        [Outcome::AlreadyApplied]
    );
    assert_eq!(fake.status_changes(email), NEWSLETTER_IDS.len());
}

#[tokio::test]
async fn global_unsubscribe_opts_out_of_everything() {
    let (fake, sink) = setup(100).await;
    let email = "carla@example.de";
    sink.deliver(&[grant(email, "newsletter")]).await;

    let outcomes = sink
        .deliver(&[unsubscribe_all(email), unsubscribe_all("dora@example.de")])
        .await;
    assert_eq!(outcomes, [Outcome::Applied, Outcome::Applied]);
    assert!(fake.unsubscribed_from_all(email));
    assert!(fake.unsubscribed_from_all("dora@example.de"));
    for id in NEWSLETTER_IDS {
        assert_eq!(
            fake.subscription_status(email, id).as_deref(),
            Some("UNSUBSCRIBED")
        );
    }
    let last = fake.requests().pop().unwrap();
    assert_eq!(
        last.path,
        format!("{UNSUBSCRIBE_ALL_PATH}?channel=EMAIL&verbose=true")
    );
    assert_eq!(
        serde_json::from_str::<Value>(&last.body).unwrap(),
        json!({"inputs": [email, "dora@example.de"]})
    );

    assert_eq!(
        sink.deliver(&[unsubscribe_all(email)]).await,
        [Outcome::AlreadyApplied]
    );
}

#[tokio::test]
async fn gdpr_delete_of_known_and_unknown_contacts() {
    let (fake, sink) = setup(100).await;
    let known = "emil@example.de";
    let unknown = "nobody@example.de";
    let created = with_contact(
        grant(known, "webinar"),
        Contact {
            email: Some(known.into()),
            first_name: Some("Emil".into()),
            ..Contact::default()
        },
    );
    sink.deliver(&[grant(known, "newsletter"), created]).await;
    assert!(fake.contact_properties(known).is_some());

    let outcomes = sink.deliver(&[erase(known), erase(unknown)]).await;
    assert_eq!(outcomes, [Outcome::Applied, Outcome::Applied]);
    assert!(fake.is_blocklisted(known));
    assert!(fake.is_blocklisted(unknown));
    assert_eq!(fake.subscription_status(known, NEWSLETTER_IDS[0]), None);
    assert_eq!(
        fake.contact_properties(known),
        None,
        "properties are gone too"
    );
    assert!(!fake.state()["contacts"].to_string().contains("Emil"));

    let deletes: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path == GDPR_DELETE_PATH)
        .map(|r| serde_json::from_str::<Value>(&r.body).unwrap())
        .collect();
    assert_eq!(
        deletes,
        [
            json!({"objectId": known, "idProperty": "email"}),
            json!({"objectId": unknown, "idProperty": "email"}),
        ]
    );
}

#[tokio::test]
async fn gdpr_delete_not_found_counts_only_when_hubspot_says_so() {
    let (fake, sink) = setup(100).await;
    fake.push_response(ScriptedResponse::json(
        404,
        json!({"status": "error", "message": "resource not found", "category": "OBJECT_NOT_FOUND"}),
        Vec::new(),
    ));
    assert_eq!(
        sink.deliver(&[erase("f@example.de")]).await,
        [Outcome::Applied]
    );

    // An empty 404 is a wrong URL, not a missing contact.
    fake.push_response(ScriptedResponse::json(404, Value::Null, Vec::new()));
    fake.push_response(ScriptedResponse {
        status: 404,
        headers: Vec::new(),
        body: String::new(),
    });
    let outcomes = sink
        .deliver(&[erase("g@example.de"), erase("h@example.de")])
        .await;
    assert!(
        matches!(outcomes[0], Outcome::Permanent { .. }),
        "{outcomes:?}"
    );
    assert!(
        matches!(outcomes[1], Outcome::Permanent { .. }),
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn multi_status_rejects_only_the_invalid_input() {
    let (fake, sink) = setup(100).await;
    let emails = [
        "a@example.de",
        "b@example.de",
        "not-an-email",
        "d@example.de",
        "e@example.de",
    ];
    let items: Vec<_> = emails.iter().map(|e| grant(e, "events")).collect();
    let outcomes = sink.deliver(&items).await;

    for (i, outcome) in outcomes.iter().enumerate() {
        if i == 2 {
            let reason = reason(outcome);
            assert!(matches!(outcome, Outcome::Permanent { .. }));
            assert!(reason.contains("Invalid email address"), "{reason}");
            assert!(reason.contains("VALIDATION_ERROR"), "{reason}");
            assert!(!reason.contains("not-an-email"), "{reason}");
        } else {
            assert_eq!(*outcome, Outcome::Applied, "item {i}");
            assert_eq!(
                fake.subscription_status(emails[i], EVENTS_ID).as_deref(),
                Some("SUBSCRIBED")
            );
        }
    }
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn server_error_is_retryable_and_changes_nothing() {
    let (fake, sink) = setup(100).await;
    fake.push_response(ScriptedResponse::server_error());
    let outcomes = sink.deliver(&[grant("i@example.de", "events")]).await;
    assert!(
        matches!(&outcomes[0], Outcome::Retryable { after: None, .. }),
        "{outcomes:?}"
    );
    assert!(reason(&outcomes[0]).starts_with("HTTP 500"), "{outcomes:?}");
    assert_eq!(fake.subscription_status("i@example.de", EVENTS_ID), None);
}

#[tokio::test]
async fn retry_after_holds_the_next_request_to_the_account() {
    let (fake, sink) = setup(1).await;
    fake.push_response(ScriptedResponse::rate_limited(3));
    let outcomes = sink
        .deliver(&[
            grant("j@example.de", "events"),
            grant("k@example.de", "events"),
        ])
        .await;
    assert_eq!(retry_after(&outcomes[0]), Some(Duration::from_secs(3)));
    assert!(reason(&outcomes[0]).contains("RATE_LIMITS"), "{outcomes:?}");
    assert_eq!(outcomes[1], Outcome::Applied, "the delivery goes on");

    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    let gap = requests[1].at.duration_since(requests[0].at);
    assert!(gap >= Duration::from_secs(3), "next request after {gap:?}");
}

#[tokio::test]
async fn a_full_window_at_hubspot_pauses_the_account() {
    let (fake, sink) = setup(1).await;
    let window = Duration::from_millis(800);
    fake.set_rate_limit(2, window);
    let items: Vec<_> = (0..3)
        .map(|i| grant(&format!("w{i}@example.de"), "events"))
        .collect();
    assert_eq!(sink.deliver(&items).await, vec![Outcome::Applied; 3]);

    // The second answer said `X-HubSpot-RateLimit-Remaining: 0`; the sink's own limiter (100 per
    // 10 s) would not have waited.
    let requests = fake.requests();
    let gap = requests[2].at.duration_since(requests[1].at);
    assert!(gap >= window, "third request after {gap:?}");
    assert_eq!(fake.rate_limited_count(), 0);
}

#[tokio::test]
async fn a_secondly_429_without_retry_after_pauses_for_the_named_window() {
    let (fake, sink) = setup(1).await;
    let window = Duration::from_millis(1500);
    fake.set_rate_limit(1, window);
    // Fill HubSpot's window behind the sink's back, as another client of the account would.
    let other_client = reqwest::Client::new()
        .post(format!("{}{BATCH_WRITE_PATH}", fake.base_url()))
        .bearer_auth(TOKEN)
        .json(&json!({"inputs": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(other_client.status(), 400, "an empty batch is invalid");

    let outcomes = sink
        .deliver(&[
            grant("x@example.de", "events"),
            grant("y@example.de", "events"),
        ])
        .await;
    assert_eq!(retry_after(&outcomes[0]), Some(Duration::from_secs(2)));
    assert_eq!(outcomes[1], Outcome::Applied);
    assert_eq!(fake.rate_limited_count(), 1);
    let requests = fake.requests();
    assert_eq!(requests.len(), 3);
    let gap = requests[2].at.duration_since(requests[1].at);
    assert!(gap >= window, "next request after {gap:?}");
}

#[tokio::test]
async fn a_spent_daily_limit_ends_the_delivery() {
    let (fake, sink) = setup(1).await;
    fake.set_daily_limit(1);
    let outcomes = sink
        .deliver(&[
            grant("d1@example.de", "events"),
            grant("d2@example.de", "events"),
        ])
        .await;
    assert_eq!(outcomes[0], Outcome::Applied);
    let wait = retry_after(&outcomes[1]).expect("retry after midnight UTC");
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_secs(86_400),
        "{wait:?}"
    );
    assert!(reason(&outcomes[1]).contains("daily"), "{outcomes:?}");
    assert_eq!(
        fake.requests().len(),
        1,
        "the last answer said Daily-Remaining: 0"
    );
}

#[tokio::test]
async fn a_daily_429_is_retryable_until_midnight_and_ends_the_delivery() {
    let (fake, sink) = setup(1).await;
    fake.push_response(ScriptedResponse::daily_limited());
    let outcomes = sink
        .deliver(&[
            grant("e1@example.de", "events"),
            grant("e2@example.de", "events"),
        ])
        .await;
    for outcome in &outcomes {
        let wait = retry_after(outcome).expect("retry after midnight UTC");
        assert!(
            wait > Duration::from_secs(1) && wait <= Duration::from_secs(86_400),
            "{wait:?}"
        );
    }
    assert!(reason(&outcomes[0]).contains("daily limit"), "{outcomes:?}");
    assert!(reason(&outcomes[1]).starts_with("not sent"), "{outcomes:?}");
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn a_bad_token_is_refused_and_ends_the_delivery() {
    let (fake, sink) = setup(1).await;
    fake.set_token("rotated");
    let outcomes = sink
        .deliver(&[
            grant("m@example.de", "events"),
            erase("n@example.de"),
            unsubscribe_all("o@example.de"),
        ])
        .await;
    for outcome in &outcomes {
        assert!(matches!(outcome, Outcome::Refused { .. }), "{outcome:?}");
    }
    let first = reason(&outcomes[0]);
    assert!(first.starts_with("HTTP 401"), "{first}");
    assert!(first.contains("INVALID_AUTHENTICATION"), "{first}");
    assert!(first.contains("correlationId"), "{first}");
    assert!(reason(&outcomes[1]).starts_with("not sent"), "{outcomes:?}");
    assert_eq!(fake.requests().len(), 1, "nothing else sent");
}

#[tokio::test]
async fn a_grant_with_create_contact_upserts_only_allow_listed_properties_first() {
    let fake = FakeHubSpot::start(TOKEN).await;
    let mut config = config(fake.base_url(), 100);
    config.contact_properties = vec![
        relay_sink_hubspot::ContactProperty::Email,
        relay_sink_hubspot::ContactProperty::Firstname,
        relay_sink_hubspot::ContactProperty::Lastname,
        relay_sink_hubspot::ContactProperty::Company,
    ];
    let sink = HubSpotSink::new(config).unwrap();
    let it = with_contact(
        grant("ignored@example.de", "webinar"),
        Contact {
            email: Some("Lena@Example.DE".into()),
            first_name: Some("Lena".into()),
            last_name: Some("Vogt".into()),
            company: None,
            phone: Some("+49 30 1234567".into()),
            ..Contact::default()
        },
    );
    let event_id = it.event.event_id.to_string();
    assert_eq!(sink.deliver(&[it]).await, [Outcome::Applied]);

    let requests = fake.requests();
    let paths: Vec<_> = requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, [UPSERT_PATH, BATCH_WRITE_PATH]);
    let upsert = body(&requests[0]);
    assert_eq!(
        upsert,
        json!({"inputs": [{
            "id": "lena@example.de",
            "idProperty": "email",
            "properties": {"email": "lena@example.de", "firstname": "Lena", "lastname": "Vogt"},
            "objectWriteTraceId": event_id,
        }]})
    );
    let sent: BTreeSet<_> = upsert["inputs"][0]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert!(sent
        .iter()
        .all(|k| ["email", "firstname", "lastname", "company"].contains(&k.as_str())));
    assert!(
        !requests[0].body.contains("1234567"),
        "phone is not allow-listed"
    );

    let properties = fake.contact_properties("lena@example.de").unwrap();
    assert_eq!(properties["firstname"], "Lena");
    assert!(!properties.contains_key("phone"));
    assert!(fake.unknown_properties().is_empty());
    assert_eq!(
        fake.subscription_status("lena@example.de", WEBINAR_ID)
            .as_deref(),
        Some("SUBSCRIBED")
    );

    // A redelivery changes nothing at HubSpot: upsert by email, then NO_STATUS_CHANGE.
    let again = with_contact(
        grant("lena@example.de", "webinar"),
        Contact {
            email: Some("lena@example.de".into()),
            ..Contact::default()
        },
    );
    assert_eq!(sink.deliver(&[again]).await, [Outcome::AlreadyApplied]);
}

#[tokio::test]
async fn without_create_contact_no_contact_is_upserted() {
    let (fake, sink) = setup(100).await;
    let outcomes = sink
        .deliver(&[
            grant("p@example.de", "events"),
            withdraw("q@example.de", "webinar"),
        ])
        .await;
    assert_eq!(outcomes, [Outcome::Applied, Outcome::Applied]);
    assert!(fake.requests().iter().all(|r| r.path != UPSERT_PATH));
    assert_eq!(fake.contact_properties("p@example.de"), None);
}

#[tokio::test]
async fn a_hundred_grants_with_three_invalid_emails() {
    let (fake, sink) = setup(100).await;
    let invalid = [3, 50, 97];
    let emails: Vec<String> = (0..100)
        .map(|i| match i {
            3 => "no-at-sign.example.de".to_owned(),
            50 => "two@@example.de".to_owned(),
            97 => "nodot@example".to_owned(),
            _ => format!("bulk{i}@example.de"),
        })
        .collect();
    let items: Vec<_> = emails.iter().map(|e| grant(e, "webinar")).collect();
    let outcomes = sink.deliver(&items).await;

    let requests = fake.requests();
    let paths: Vec<_> = requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, [UPSERT_PATH, BATCH_WRITE_PATH]);
    let correlation_id = {
        // The 207's only correlation id is its header; the fake recorded no answers, so read it
        // back from the reason and check its shape.
        let reason = reason(&outcomes[invalid[0]]);
        let start = reason.find("(correlationId ").expect("correlation id") + 15;
        reason[start..reason.len() - 1].to_owned()
    };
    assert_eq!(uuid::Uuid::parse_str(&correlation_id).map(|_| ()), Ok(()));
    for (i, outcome) in outcomes.iter().enumerate() {
        if invalid.contains(&i) {
            let Outcome::Permanent { reason } = outcome else {
                panic!("item {i}: {outcome:?}");
            };
            assert!(
                reason.starts_with("HubSpot rejected the input: Property values were not valid"),
                "{reason}"
            );
            assert!(reason.contains("INVALID_EMAIL"), "{reason}");
            assert!(reason.contains("[VALIDATION_ERROR]"), "{reason}");
            assert!(
                reason.ends_with(&format!("(correlationId {correlation_id})")),
                "{reason}"
            );
            assert!(!reason.contains(&emails[i]), "{reason}");
        } else {
            assert_eq!(*outcome, Outcome::Applied, "item {i}");
        }
    }
    // The status write skipped the three whose contact could not be created.
    assert_eq!(body(&requests[1])["inputs"].as_array().unwrap().len(), 97);
    assert_eq!(
        fake.subscription_status("bulk0@example.de", WEBINAR_ID)
            .as_deref(),
        Some("SUBSCRIBED")
    );
    assert_eq!(fake.subscription_status(&emails[3], WEBINAR_ID), None);
}

#[tokio::test]
async fn large_batches_are_split_at_the_limit() {
    let (fake, sink) = setup(3).await;
    fake.set_max_inputs(3);
    let items: Vec<_> = (0..7)
        .map(|i| grant(&format!("user{i}@example.de"), "events"))
        .collect();
    let outcomes = sink.deliver(&items).await;
    assert_eq!(outcomes, vec![Outcome::Applied; 7]);

    let sizes: Vec<usize> = fake
        .requests()
        .iter()
        .map(|r| {
            let body: Value = serde_json::from_str(&r.body).unwrap();
            body["inputs"].as_array().unwrap().len()
        })
        .collect();
    assert_eq!(sizes, [3, 3, 1]);
}

#[tokio::test]
async fn the_fake_rejects_batches_over_its_limit() {
    let (fake, sink) = setup(5).await;
    fake.set_max_inputs(4);
    let items: Vec<_> = (0..5)
        .map(|i| grant(&format!("n{i}@example.de"), "events"))
        .collect();
    let outcomes = sink.deliver(&items).await;
    for outcome in &outcomes {
        assert!(matches!(outcome, Outcome::Permanent { .. }), "{outcome:?}");
        assert!(
            reason(outcome).contains("exceeds the limit of 4"),
            "{outcome:?}"
        );
    }
}

#[tokio::test]
async fn missing_email_is_permanent_without_a_request() {
    let (fake, sink) = setup(100).await;
    let outcomes = sink
        .deliver(&[item(None, Action::Grant, Target::Purpose("events".into()))])
        .await;
    assert_eq!(outcomes, [Outcome::permanent("event has no email")]);
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn a_contacts_later_change_waits_for_its_failed_earlier_one() {
    let (fake, sink) = setup(100).await;
    fake.push_response(ScriptedResponse::server_error());
    let outcomes = sink
        .deliver(&[
            unsubscribe_all("o@example.de"),
            grant("o@example.de", "events"),
            grant("p@example.de", "events"),
        ])
        .await;
    assert!(reason(&outcomes[0]).starts_with("HTTP 500"), "{outcomes:?}");
    assert!(
        reason(&outcomes[1]).starts_with("held back"),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[2], Outcome::Applied);
    assert_eq!(fake.subscription_status("o@example.de", EVENTS_ID), None);
}

#[tokio::test]
async fn a_change_applied_before_a_timeout_is_already_applied_on_retry() {
    let fake = FakeHubSpot::start(TOKEN).await;
    let mut config = config(fake.base_url(), 100);
    config.limits.request_timeout_ms = 100;
    let sink = HubSpotSink::new(config).unwrap();
    fake.set_response_delay(Duration::from_millis(500));
    let outcomes = sink.deliver(&[grant("q@example.de", "events")]).await;
    assert!(
        reason(&outcomes[0]).contains("transport error"),
        "{outcomes:?}"
    );
    assert_eq!(
        fake.subscription_status("q@example.de", EVENTS_ID)
            .as_deref(),
        Some("SUBSCRIBED"),
        "HubSpot applied it although the client gave up"
    );

    fake.set_response_delay(Duration::ZERO);
    assert_eq!(
        sink.deliver(&[grant("q@example.de", "events")]).await,
        [Outcome::AlreadyApplied]
    );
    assert_eq!(fake.status_changes("q@example.de"), 1);
}

#[tokio::test]
async fn a_request_without_an_answer_ends_the_delivery() {
    let fake = FakeHubSpot::start(TOKEN).await;
    let mut config = config(fake.base_url(), 100);
    config.limits.request_timeout_ms = 100;
    let sink = HubSpotSink::new(config).unwrap();
    fake.set_response_delay(Duration::from_millis(500));
    // Two calls: the GDPR delete (erasures go first), then the status write.
    let outcomes = sink
        .deliver(&[grant("t@example.de", "events"), erase("u@example.de")])
        .await;
    assert_eq!(outcomes[1].class(), OutcomeClass::Unknown, "{outcomes:?}");
    assert_eq!(
        outcomes[0].class(),
        OutcomeClass::Unavailable,
        "{outcomes:?}"
    );
    assert!(reason(&outcomes[0]).starts_with("not sent"), "{outcomes:?}");
    assert_eq!(fake.requests().len(), 1, "a second timeout not waited for");
}

#[tokio::test]
async fn state_dump_is_served_without_auth() {
    let (fake, sink) = setup(100).await;
    sink.deliver(&[grant("r@example.de", "events"), erase("s@example.de")])
        .await;
    let dump: Value = reqwest::get(format!("{}/__fake/state", fake.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dump, fake.state());
    assert_eq!(
        dump["contacts"]["r@example.de"]["subscriptions"][EVENTS_ID.to_string()],
        "SUBSCRIBED"
    );
    assert_eq!(dump["blocklist"], json!(["s@example.de"]));
}
