//! The sink against the fake partner of relay-testkit, which verifies every signature and keeps
//! leads by subject: what left our system, field by field, and what the partner holds afterwards.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use relay_delivery::{DestinationConfig, Outcome, Sink, SinkItem, Target};
use relay_events::Action;
use relay_sink_partner::{
    LeadField, PartnerConfig, PartnerSink, PartnerSinkConfig, CONSENT_WITHDRAWN, LEAD_CONSENTED,
    SUBJECT_ERASED,
};
use relay_testkit::items::{self, ItemFixture};
use relay_testkit::partner::{FakePartner, ScriptedResponse};
use serde_json::{json, Value};

/// `whsec_` + base64 of 32 bytes, as a partner would issue it.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwMfKQ9r8GKYo=";
const PURPOSE: &str = "partner_in_gmbh";
/// What the privacy policy says in-GmbH receives: name, company, email and postal address, phone
/// and company size.
const IN_GMBH_FIELDS: [LeadField; 10] = [
    LeadField::FirstName,
    LeadField::LastName,
    LeadField::Company,
    LeadField::Email,
    LeadField::Street,
    LeadField::PostalCode,
    LeadField::City,
    LeadField::Country,
    LeadField::Phone,
    LeadField::CompanySize,
];
const META: [&str; 5] = [
    "subject_id",
    "event_id",
    "purpose",
    "notice_version",
    "occurred_at",
];

fn partner(endpoint: String, purpose: &str, fields: &[LeadField]) -> PartnerConfig {
    PartnerConfig {
        endpoint,
        signing_secret: Some(SECRET.into()),
        purpose: purpose.into(),
        fields: fields.to_vec(),
        limits: DestinationConfig::default(),
    }
}

fn sink(partners: Vec<(&str, PartnerConfig)>) -> PartnerSink {
    PartnerSink::new(PartnerSinkConfig {
        partners: partners
            .into_iter()
            .map(|(name, p)| (name.to_owned(), p))
            .collect(),
    })
    .unwrap()
}

async fn in_gmbh() -> (FakePartner, PartnerSink) {
    let fake = FakePartner::start(SECRET).await;
    let sink = sink(vec![(
        "in_gmbh",
        partner(fake.endpoint(), PURPOSE, &IN_GMBH_FIELDS),
    )]);
    (fake, sink)
}

fn item(subject: &str, action: Action, target: Target) -> SinkItem {
    ItemFixture::new(action, target)
        .subject(subject)
        .occurred_at_ms(1_795_687_200_000)
        .notice("sphinx-2026-10")
        .contact(items::full_contact())
        .build()
}

fn grant(subject: &str) -> SinkItem {
    item(subject, Action::Grant, Target::Purpose(PURPOSE.into()))
}

fn withdraw(subject: &str) -> SinkItem {
    item(subject, Action::Withdraw, Target::Purpose(PURPOSE.into()))
}

fn keys(data: &Value) -> BTreeSet<String> {
    data.as_object().unwrap().keys().cloned().collect()
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn reason(outcome: &Outcome) -> &str {
    match outcome {
        Outcome::Retryable { reason, .. }
        | Outcome::Permanent { reason }
        | Outcome::Refused { reason } => reason,
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn sink_identity_and_routing() {
    let (_fake, sink) = in_gmbh().await;
    assert_eq!(sink.name(), "partner");
    assert!(!sink.requires_email());
    assert_eq!(sink.destinations().len(), 1);
    let config = PartnerSinkConfig {
        partners: [(
            "in_gmbh".to_owned(),
            partner("https://x".into(), PURPOSE, &[LeadField::Email]),
        )]
        .into(),
    };
    assert_eq!(config.purposes(), BTreeSet::from([PURPOSE.to_owned()]));
}

#[tokio::test]
async fn a_grant_sends_one_signed_lead_with_exactly_the_allow_listed_fields() {
    let (fake, sink) = in_gmbh().await;
    let it = grant("subj-1");
    assert_eq!(
        sink.deliver(std::slice::from_ref(&it)).await,
        [Outcome::Applied]
    );

    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    let event_id = it.event.event_id.to_string();
    assert_eq!(
        header(&request.headers, "webhook-id"),
        Some(event_id.as_str())
    );
    let sent_at: u64 = header(&request.headers, "webhook-timestamp")
        .unwrap()
        .parse()
        .unwrap();
    assert!(now_secs().abs_diff(sent_at) <= 5);
    assert!(header(&request.headers, "webhook-signature").is_some_and(|s| s.starts_with("v1,")));
    assert_eq!(
        header(&request.headers, "content-type"),
        Some("application/json")
    );

    // The fake verified the signature and stored the lead as received.
    let deliveries = fake.deliveries();
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].kind, LEAD_CONSENTED);
    let lead = fake.lead("subj-1").unwrap();
    let mut expected: BTreeSet<String> = META.iter().map(|k| (*k).to_owned()).collect();
    expected.extend(IN_GMBH_FIELDS.iter().map(|f| f.key().to_owned()));
    assert_eq!(keys(&lead), expected);
    assert_eq!(lead["postal_code"], "50672");
    assert_eq!(lead["company_size"], "50-249");
    assert_eq!(lead["event_id"], event_id.as_str());
    assert_eq!(lead["purpose"], PURPOSE);
    let body: Value = serde_json::from_str(&request.body).unwrap();
    assert_eq!(body["type"], LEAD_CONSENTED);
    assert_eq!(body["timestamp"], "2026-11-26T10:00:00.000Z");
}

#[tokio::test]
async fn nothing_outside_the_allow_list_leaves() {
    let fake = FakePartner::start(SECRET).await;
    let sink = sink(vec![(
        "narrow",
        partner(
            fake.endpoint(),
            PURPOSE,
            &[LeadField::Email, LeadField::Company],
        ),
    )]);
    sink.deliver(&[grant("subj-2")]).await;
    let lead = fake.lead("subj-2").unwrap();
    let mut expected: BTreeSet<String> = META.iter().map(|k| (*k).to_owned()).collect();
    expected.extend(["email".to_owned(), "company".to_owned()]);
    assert_eq!(keys(&lead), expected);
    let body = &fake.requests()[0].body;
    for private in ["Mustermann", "Venloer", "50672", "1234567", "50-249"] {
        assert!(!body.contains(private), "{private} left: {body}");
    }
}

#[tokio::test]
async fn another_purpose_sends_nothing() {
    let (fake, sink) = in_gmbh().await;
    let outcomes = sink
        .deliver(&[item(
            "subj-3",
            Action::Grant,
            Target::Purpose("newsletter".into()),
        )])
        .await;
    assert_eq!(
        outcomes,
        [Outcome::permanent(
            "no partner is configured for purpose \"newsletter\""
        )]
    );
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn a_withdrawal_deletes_the_partners_copy() {
    let (fake, sink) = in_gmbh().await;
    sink.deliver(&[grant("subj-4"), grant("subj-5")]).await;
    let it = withdraw("subj-4");
    assert_eq!(
        sink.deliver(std::slice::from_ref(&it)).await,
        [Outcome::Applied]
    );
    assert_eq!(fake.lead("subj-4"), None);
    assert!(fake.lead("subj-5").is_some());

    let notice = fake.deliveries().pop().unwrap();
    assert_eq!(notice.kind, CONSENT_WITHDRAWN);
    assert_eq!(
        notice.data,
        json!({
            "subject_id": "subj-4",
            "event_id": it.event.event_id.to_string(),
            "purpose": PURPOSE,
            "occurred_at": "2026-11-26T10:00:00.000Z",
        })
    );
}

#[tokio::test]
async fn global_unsubscribe_and_erasure_reach_every_partner() {
    let first = FakePartner::start(SECRET).await;
    let second = FakePartner::start(SECRET).await;
    let sink = sink(vec![
        (
            "in_gmbh",
            partner(first.endpoint(), PURPOSE, &IN_GMBH_FIELDS),
        ),
        (
            "other",
            partner(second.endpoint(), "partner_other", &[LeadField::Email]),
        ),
    ]);
    sink.deliver(&[grant("subj-6")]).await;
    assert!(
        second.requests().is_empty(),
        "the other partner's purpose was not granted"
    );

    let outcomes = sink
        .deliver(&[
            item("subj-6", Action::Withdraw, Target::All),
            item("subj-7", Action::Erase, Target::All),
        ])
        .await;
    assert_eq!(outcomes, [Outcome::Applied, Outcome::Applied]);
    assert_eq!(first.lead("subj-6"), None);
    for fake in [&first, &second] {
        let kinds: Vec<_> = fake
            .deliveries()
            .into_iter()
            .filter(|d| d.kind != LEAD_CONSENTED)
            .map(|d| (d.kind, keys(&d.data)))
            .collect();
        assert_eq!(
            kinds,
            [
                (
                    CONSENT_WITHDRAWN.to_owned(),
                    BTreeSet::from(
                        ["subject_id", "event_id", "purpose", "occurred_at"].map(String::from)
                    )
                ),
                (
                    SUBJECT_ERASED.to_owned(),
                    BTreeSet::from(["subject_id", "event_id", "occurred_at"].map(String::from))
                ),
            ]
        );
    }
    assert_eq!(second.deliveries()[0].data["purpose"], "partner_other");
}

#[tokio::test]
async fn a_redelivery_has_the_same_webhook_id_and_the_partner_keeps_one_lead() {
    let (fake, sink) = in_gmbh().await;
    let it = grant("subj-8");
    sink.deliver(std::slice::from_ref(&it)).await;
    assert_eq!(
        sink.deliver(std::slice::from_ref(&it)).await,
        [Outcome::Applied]
    );

    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    let ids: Vec<_> = requests
        .iter()
        .map(|r| header(&r.headers, "webhook-id").unwrap().to_owned())
        .collect();
    assert_eq!(ids, vec![it.event.event_id.to_string(); 2]);
    assert_eq!(
        requests[0].body, requests[1].body,
        "the same bytes every time"
    );
    let duplicates: Vec<bool> = fake.deliveries().iter().map(|d| d.duplicate).collect();
    assert_eq!(duplicates, [false, true]);
    assert_eq!(fake.leads().len(), 1);
}

#[tokio::test]
async fn a_partner_that_answers_410_is_refused_and_not_sent_more() {
    let (fake, sink) = in_gmbh().await;
    fake.push_response(ScriptedResponse::json(
        410,
        json!({"error": "endpoint disabled"}),
        vec![],
    ));
    let outcomes = sink.deliver(&[grant("subj-9"), grant("subj-10")]).await;
    assert!(
        matches!(outcomes[0], Outcome::Refused { .. }),
        "{outcomes:?}"
    );
    assert!(reason(&outcomes[0]).starts_with("HTTP 410"), "{outcomes:?}");
    assert!(
        matches!(outcomes[1], Outcome::Refused { .. }),
        "{outcomes:?}"
    );
    assert!(reason(&outcomes[1]).starts_with("not sent"), "{outcomes:?}");
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn throttling_and_server_errors_are_retryable_then_go_through() {
    let (fake, sink) = in_gmbh().await;
    fake.push_response(ScriptedResponse::json(
        429,
        json!({"error": "slow down"}),
        vec![("Retry-After".into(), "1".into())],
    ));
    let it = grant("subj-11");
    let outcomes = sink.deliver(std::slice::from_ref(&it)).await;
    match &outcomes[0] {
        Outcome::Unavailable { after, reason } => {
            assert_eq!(*after, Some(Duration::from_secs(1)));
            assert!(reason.starts_with("HTTP 429"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    fake.push_response(ScriptedResponse::json(503, json!({}), vec![]));
    assert!(matches!(
        sink.deliver(std::slice::from_ref(&it)).await[0],
        Outcome::Retryable { .. }
    ));
    assert_eq!(
        sink.deliver(std::slice::from_ref(&it)).await,
        [Outcome::Applied]
    );
    assert!(fake.lead("subj-11").is_some());
}

#[tokio::test]
async fn a_wrong_secret_is_refused_by_the_partner() {
    let fake = FakePartner::start("whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYX").await;
    let sink = sink(vec![(
        "in_gmbh",
        partner(fake.endpoint(), PURPOSE, &IN_GMBH_FIELDS),
    )]);
    let outcomes = sink.deliver(&[grant("subj-12")]).await;
    assert!(
        matches!(outcomes[0], Outcome::Refused { .. }),
        "{outcomes:?}"
    );
    assert!(reason(&outcomes[0]).starts_with("HTTP 401"), "{outcomes:?}");
    assert!(fake.leads().is_empty());
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let (fake, sink) = in_gmbh().await;
    let elsewhere = FakePartner::start(SECRET).await;
    fake.push_response(ScriptedResponse {
        status: 307,
        headers: vec![("Location".into(), elsewhere.endpoint())],
        body: String::new(),
    });
    let outcomes = sink.deliver(&[grant("subj-13")]).await;
    assert!(
        matches!(outcomes[0], Outcome::Refused { .. }),
        "{outcomes:?}"
    );
    assert!(reason(&outcomes[0]).starts_with("HTTP 307"), "{outcomes:?}");
    assert!(elsewhere.requests().is_empty());
}

#[tokio::test]
async fn one_partner_failing_retries_the_item_and_the_other_dedupes_the_repeat() {
    let first = FakePartner::start(SECRET).await;
    let second = FakePartner::start(SECRET).await;
    let sink = sink(vec![
        ("a", partner(first.endpoint(), PURPOSE, &[LeadField::Email])),
        (
            "b",
            partner(second.endpoint(), PURPOSE, &[LeadField::Email]),
        ),
    ]);
    second.push_response(ScriptedResponse::json(500, json!({}), vec![]));
    let it = grant("subj-14");
    let outcomes = sink.deliver(std::slice::from_ref(&it)).await;
    assert!(
        matches!(outcomes[0], Outcome::Retryable { .. }),
        "{outcomes:?}"
    );
    assert_eq!(
        sink.deliver(std::slice::from_ref(&it)).await,
        [Outcome::Applied]
    );
    assert_eq!(first.deliveries().iter().filter(|d| d.duplicate).count(), 1);
    assert_eq!(first.leads().len(), 1);
    assert!(second.lead("subj-14").is_some());
}

#[tokio::test]
async fn the_fake_partner_rejects_stale_and_unsigned_webhooks() {
    let (fake, sink) = in_gmbh().await;
    sink.deliver(&[grant("subj-15")]).await;
    let signed = fake.requests().pop().unwrap();
    let resend = |timestamp: String, signature: Option<String>| {
        let mut request = reqwest::Client::new()
            .post(fake.endpoint())
            .header("content-type", "application/json")
            .header("webhook-id", "replayed")
            .header("webhook-timestamp", timestamp)
            .body(signed.body.clone());
        if let Some(signature) = signature {
            request = request.header("webhook-signature", signature);
        }
        request.send()
    };
    // A valid signature over a timestamp more than five minutes old: a replay.
    let old = now_secs() - 301;
    let key = base64_key(SECRET);
    let signature = sign(&key, "replayed", old, signed.body.as_bytes());
    let response = resend(old.to_string(), Some(signature)).await.unwrap();
    assert_eq!(response.status(), 400);
    // A fresh timestamp with the old signature, or none at all.
    let response = resend(
        now_secs().to_string(),
        header(&signed.headers, "webhook-signature").map(str::to_owned),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 401);
    let response = resend(now_secs().to_string(), None).await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        fake.deliveries().len(),
        1,
        "only the sink's own webhook passed"
    );
}

fn base64_key(secret: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap()
}

fn sign(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}
