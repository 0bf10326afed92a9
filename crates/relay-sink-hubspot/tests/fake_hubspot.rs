//! The sink against the fake HubSpot of relay-testkit: outcomes per item and the state they leave.

use std::sync::Arc;
use std::time::Duration;

use relay_delivery::{Outcome, Sink, SinkItem, Target};
use relay_events::{Action, ConsentEvent, Contact, EventKind, Scope};
use relay_sink_hubspot::{HubSpotConfig, HubSpotSink, LegalBasis, PurposeConfig};
use relay_testkit::hubspot::{
    FakeHubSpot, ScriptedResponse, BATCH_WRITE_PATH, GDPR_DELETE_PATH, UNSUBSCRIBE_ALL_PATH,
};
use serde_json::{json, Value};

const TOKEN: &str = "pat-test-token";
const NEWSLETTER_IDS: [i64; 2] = [1001, 1002];
const EVENTS_ID: i64 = 2001;

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
        },
    );
    config.purposes.insert(
        "events".into(),
        PurposeConfig {
            subscription_ids: vec![EVENTS_ID],
            legal_basis: LegalBasis::LegitimateInterestClient,
            legal_basis_explanation: "Customer event invitations".into(),
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
    let kind = match (action, &target) {
        (Action::Grant, _) => EventKind::ConsentGranted,
        (Action::Withdraw, Target::All) => EventKind::Unsubscribed,
        (Action::Withdraw, Target::Purpose(_)) => EventKind::ConsentWithdrawn,
        (Action::Erase, _) => EventKind::ErasureRequested,
    };
    let scope = match &target {
        Target::Purpose(p) => Scope::Purposes(vec![p.clone()]),
        Target::All => Scope::All,
    };
    SinkItem {
        event: Arc::new(ConsentEvent {
            event_id: uuid::Uuid::new_v4(),
            kind,
            subject_id: "subject-1".into(),
            occurred_at_ms: 1_767_225_600_000,
            source: "web-form".into(),
            notice_version: Some("nl-2026-01".into()),
            scope,
            contact: Contact {
                email: email.map(str::to_owned),
                ..Contact::default()
            },
        }),
        action,
        target,
    }
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

fn retry_after(outcome: &Outcome) -> Option<Duration> {
    match outcome {
        Outcome::Retryable { after, .. } => *after,
        other => panic!("expected retryable, got {other:?}"),
    }
}

fn reason(outcome: &Outcome) -> &str {
    match outcome {
        Outcome::Retryable { reason, .. } | Outcome::Permanent { reason } => reason,
        other => panic!("expected a failure, got {other:?}"),
    }
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
    assert_eq!(last.path, format!("{UNSUBSCRIBE_ALL_PATH}?channel=EMAIL"));
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
    sink.deliver(&[grant(known, "newsletter")]).await;

    let outcomes = sink.deliver(&[erase(known), erase(unknown)]).await;
    assert_eq!(outcomes, [Outcome::Applied, Outcome::Applied]);
    assert!(fake.is_blocklisted(known));
    assert!(fake.is_blocklisted(unknown));
    assert_eq!(fake.subscription_status(known, NEWSLETTER_IDS[0]), None);

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
    assert_eq!(retry_after(&outcomes[0]), None);
    assert!(reason(&outcomes[0]).starts_with("HTTP 500"), "{outcomes:?}");
    assert_eq!(fake.subscription_status("i@example.de", EVENTS_ID), None);
}

#[tokio::test]
async fn rate_limit_carries_retry_after_and_stops_the_delivery() {
    let (fake, sink) = setup(2).await;
    fake.push_response(ScriptedResponse::rate_limited(2));
    let items = [
        grant("j@example.de", "events"),
        grant("k@example.de", "events"),
        grant("l@example.de", "events"),
    ];
    let outcomes = sink.deliver(&items).await;
    for outcome in &outcomes {
        assert_eq!(retry_after(outcome), Some(Duration::from_secs(2)));
    }
    assert!(reason(&outcomes[0]).contains("RATE_LIMITS"), "{outcomes:?}");
    assert!(reason(&outcomes[2]).starts_with("not sent"), "{outcomes:?}");
    assert_eq!(fake.requests().len(), 1, "nothing is sent after a 429");
}

#[tokio::test]
async fn bad_token_is_permanent() {
    let (fake, sink) = setup(100).await;
    fake.set_token("rotated");
    let outcomes = sink.deliver(&[grant("m@example.de", "events")]).await;
    assert!(
        matches!(outcomes[0], Outcome::Permanent { .. }),
        "{outcomes:?}"
    );
    let reason = reason(&outcomes[0]);
    assert!(reason.starts_with("HTTP 401"), "{reason}");
    assert!(reason.contains("INVALID_AUTHENTICATION"), "{reason}");
    assert!(reason.contains("correlationId"), "{reason}");
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
    let sink = HubSpotSink::new(HubSpotConfig {
        request_timeout_ms: 100,
        ..config(fake.base_url(), 100)
    })
    .unwrap();
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
