//! The webhook server in-process, with a recording publisher and a real (SQLite) ledger: what
//! each vendor's request turns into, and what is refused.

mod common;

use std::sync::Arc;

use axum::http::StatusCode;
use common::{record, Recorder};
use relay_events::{normalize, ConsentEvent, EventKind, Scope};
use relay_ingest::{metrics, Ingest, IngestConfig, Metrics, Vendor};
use relay_ledger::{ConsentRecord, Ledger};
use relay_testkit::webhooks::{self, HubSpotContacts};
use serde_json::json;

const SECRET: &str = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy";
const PATH_SECRET: &str = "0123456789abcdef0123456789abcdef";
const TOKEN: &str = "pat-ingest";

struct Server {
    url: String,
    recorder: Arc<Recorder>,
    ledger: Arc<relay_ledger::AnyLedger>,
    metrics: Metrics,
    contacts: HubSpotContacts,
    _dir: tempfile::TempDir,
}

async fn known(ledger: &relay_ledger::AnyLedger, subject: &str, email: &str) {
    ledger.log_events(&[record(subject, email)]).await.unwrap();
}

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(
        relay_ledger::open(&format!("sqlite://{}", dir.path().join("l.db").display()))
            .await
            .unwrap(),
    );
    known(&ledger, "anna", "anna@example.de").await;
    let contacts = HubSpotContacts::start(TOKEN).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut config: IngestConfig = toml::from_str(&format!(
        r#"
listen = "127.0.0.1:0"
public_url = "{url}"
[hubspot]
api_base_url = "{}"
[hubspot.subscriptions]
12345 = ["newsletter"]
[mailchimp]
[mailchimp.lists]
a6b5da1054 = ["newsletter", "ads_remarketing"]
[brevo]
auth = "bearer"
purposes = ["newsletter"]
"#,
        contacts.base_url()
    ))
    .unwrap();
    config.apply_env(
        &[
            ("CONSENT_RELAY_INGEST_HUBSPOT_CLIENT_SECRET", SECRET),
            ("CONSENT_RELAY_INGEST_HUBSPOT_TOKEN", TOKEN),
            ("CONSENT_RELAY_INGEST_MAILCHIMP_PATH_SECRET", PATH_SECRET),
            ("CONSENT_RELAY_INGEST_BREVO_TOKEN", "brevo-token"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let known_purposes = ["newsletter", "ads_remarketing"].map(String::from).into();
    assert_eq!(config.problems(&known_purposes), Vec::<String>::new());
    assert!(
        !format!("{config:?}").contains(SECRET),
        "secrets stay out of Debug"
    );
    let recorder = Arc::new(Recorder::default());
    let metrics = Metrics::default();
    let ingest = Ingest::new(config, ledger.clone(), recorder.clone(), metrics.clone());
    tokio::spawn(relay_ingest::serve(
        listener,
        ingest,
        tokio_util::sync::CancellationToken::new(),
    ));
    Server {
        url,
        recorder,
        ledger,
        metrics,
        contacts,
        _dir: dir,
    }
}

impl Server {
    fn published(&self) -> Vec<ConsentEvent> {
        self.recorder.events.lock().unwrap().clone()
    }

    /// Waits until `n` contact addresses were learned: that happens after the webhook's answer.
    async fn learned(&self, n: u64) {
        let series = format!(
            "consent_relay_ingest_address_changes_total{{vendor=\"hubspot\",reason=\"contact_learned\"}} {n}"
        );
        for _ in 0..500 {
            if self.metrics.render().contains(&series) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("{series} never came:\n{}", self.metrics.render());
    }
}

#[tokio::test]
async fn a_signed_hubspot_opt_out_is_published_for_the_known_subject() {
    let s = start().await;
    s.contacts.insert(7, "Anna@Example.de");
    let url = format!("{}{}", s.url, relay_ingest::HUBSPOT_PATH);
    let at = webhooks::now_ms() - 1_000;
    let batch = [webhooks::hubspot_property_change(
        1,
        7,
        "hs_email_optout_12345",
        "true",
        at,
    )];
    let (status, body) = webhooks::send_hubspot(&url, SECRET, &batch, webhooks::now_ms()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let published = s.published();
    assert_eq!(published.len(), 1);
    let ev = &published[0];
    assert_eq!(
        (
            ev.kind,
            ev.subject_id.as_str(),
            ev.source.as_str(),
            ev.occurred_at_ms
        ),
        (EventKind::Unsubscribed, "anna", "hubspot", at)
    );
    assert_eq!(ev.scope, Scope::Purposes(vec!["newsletter".into()]));

    // Tampered body, stale timestamp, wrong secret: 401, nothing published.
    let body = json!(batch).to_string();
    let sig = webhooks::hubspot_signature_v3(SECRET, "POST", &url, &body, webhooks::now_ms());
    let tampered = body.replace("\"true\"", "\"false\"");
    let (status, _) = webhooks::send_hubspot_raw(&url, &tampered, &sig, webhooks::now_ms()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let stale = webhooks::now_ms() - 5 * 60 * 1000 - 1_000;
    let (status, _) = webhooks::send_hubspot(&url, SECRET, &batch, stale).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) =
        webhooks::send_hubspot(&url, "another-secret", &batch, webhooks::now_ms()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(s.published().len(), 1, "nothing more published");
    assert_eq!(s.metrics.get(metrics::REJECTED, Vendor::HubSpot), 3);
    assert_eq!(s.metrics.get(metrics::RECEIVED, Vendor::HubSpot), 4);
    assert_eq!(s.metrics.get(metrics::PUBLISHED, Vendor::HubSpot), 1);
    let text = s.metrics.render();
    assert!(
        text.contains(
            "consent_relay_ingest_rejected_total{vendor=\"hubspot\",reason=\"stale_timestamp\"} 1"
        ),
        "{text}"
    );

    // A privacy deletion arrives once HubSpot has removed the contact, its address with it: the
    // contact is known by the address ingest read for its opt-out, so the erasure is published
    // for its subject (by hash; the event carries no address).
    s.learned(1).await;
    s.contacts.remove(7);
    let deletion = |event_id: i64, contact: i64| json!({"eventId": event_id, "portalId": 62515, "occurredAt": at, "subscriptionType": "contact.privacyDeletion", "objectId": contact, "attemptNumber": 0});
    let (status, body) =
        webhooks::send_hubspot(&url, SECRET, &[deletion(9, 7)], webhooks::now_ms()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let published = s.published();
    assert_eq!(published.len(), 2, "{published:?}");
    let erasure = &published[1];
    assert_eq!(
        (
            erasure.kind,
            erasure.subject_id.as_str(),
            erasure.source.as_str()
        ),
        (EventKind::ErasureRequested, "anna", "hubspot")
    );
    assert_eq!(erasure.scope, Scope::All);
    assert_eq!(erasure.contact.email, None);

    // A contact created in HubSpot and deleted before any decision: learned from its creation
    // (the address read then), so its privacy deletion finds the subject too.
    s.contacts.insert(11, "anna@example.de");
    let created = json!({"eventId": 10, "portalId": 62515, "occurredAt": at, "subscriptionType": "contact.creation", "objectId": 11, "attemptNumber": 0});
    let (status, _) = webhooks::send_hubspot(&url, SECRET, &[created], webhooks::now_ms()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s.published().len(), 2, "a creation is no decision");
    s.learned(2).await;
    s.contacts.remove(11);
    let (status, _) =
        webhooks::send_hubspot(&url, SECRET, &[deletion(12, 11)], webhooks::now_ms()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s.published()[2].subject_id, "anna");
    let text = s.metrics.render();
    assert!(
        text.contains(
            "consent_relay_ingest_address_changes_total{vendor=\"hubspot\",reason=\"contact_learned\"} 2"
        ),
        "{text}"
    );

    // A contact ingest never heard of: recorded as unknown, not dropped.
    let (status, _) =
        webhooks::send_hubspot(&url, SECRET, &[deletion(13, 8)], webhooks::now_ms()).await;
    assert_eq!(status, StatusCode::OK);
    let unknown = s.ledger.unknown_contacts().await.unwrap();
    assert_eq!(unknown.len(), 1);
    assert_eq!(
        (unknown[0].kind.as_str(), unknown[0].vendor_ref.as_str()),
        ("ErasureRequested", "contact 8")
    );
    assert_eq!(s.published().len(), 3);

    // An address change and the deletion in one batch: the deletion finds the new address.
    let change = webhooks::hubspot_property_change(14, 21, "email", "anna@example.de", at);
    let (status, _) = webhooks::send_hubspot(
        &url,
        SECRET,
        &[change, deletion(15, 21)],
        webhooks::now_ms(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s.published().len(), 4);
    assert_eq!(s.published()[3].subject_id, "anna");
}

#[tokio::test]
async fn mailchimp_validation_retries_and_unknown_people() {
    let s = start().await;
    let url = format!("{}/webhooks/mailchimp/{PATH_SECRET}", s.url);
    assert_eq!(webhooks::validate_mailchimp_url(&url).await, StatusCode::OK);
    let wrong = format!("{}/webhooks/mailchimp/{}", s.url, "x".repeat(32));
    assert_eq!(
        webhooks::validate_mailchimp_url(&wrong).await,
        StatusCode::UNAUTHORIZED
    );

    let form =
        webhooks::mailchimp_unsubscribe("a6b5da1054", "anna@example.de", "2026-11-26 10:00:00");
    for _ in 0..3 {
        let (status, body) = webhooks::send_mailchimp(&url, &form).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let published = s.published();
    assert_eq!(published.len(), 3, "each retry is published again");
    assert!(
        published
            .iter()
            .all(|e| e.event_id == published[0].event_id),
        "with one event id"
    );
    assert_eq!(
        published[0].scope,
        Scope::Purposes(vec!["newsletter".into(), "ads_remarketing".into()])
    );
    assert_eq!(published[0].source, "mailchimp");

    let (status, _) = webhooks::send_mailchimp(&wrong, &form).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let stranger =
        webhooks::mailchimp_unsubscribe("a6b5da1054", "who@example.de", "2026-11-26 10:00:00");
    let (status, body) = webhooks::send_mailchimp(&url, &stranger).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("\"unknown\":1"), "{body}");
    let unknown = s.ledger.unknown_contacts().await.unwrap();
    assert_eq!(unknown.len(), 1);
    assert_eq!(
        unknown[0].email_sha256.as_deref(),
        Some(normalize::email_sha256("who@example.de").as_str())
    );
    assert_eq!(
        s.published().len(),
        3,
        "an unknown person publishes nothing"
    );
}

#[tokio::test]
async fn a_mailchimp_address_change_is_followed() {
    let s = start().await;
    let url = format!("{}/webhooks/mailchimp/{PATH_SECRET}", s.url);
    let list = "a6b5da1054";
    let moved = webhooks::mailchimp_upemail(
        list,
        "anna@example.de",
        "anna.neu@example.de",
        "2026-11-26 10:00:00",
    );
    let (status, body) = webhooks::send_mailchimp(&url, &moved).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, r#"{"followed":1}"#)
    );
    let stranger = webhooks::mailchimp_upemail(
        list,
        "who@example.de",
        "who.neu@example.de",
        "2026-11-26 10:00:00",
    );
    let (status, body) = webhooks::send_mailchimp(&url, &stranger).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, r#"{"followed":0}"#)
    );
    let text = s.metrics.render();
    for outcome in ["followed", "unknown_address"] {
        assert!(
            text.contains(&format!(
                "consent_relay_ingest_address_changes_total{{vendor=\"mailchimp\",reason=\"{outcome}\"}} 1"
            )),
            "{text}"
        );
    }
    assert!(s.published().is_empty(), "an address change is no decision");

    // Her next unsubscribe names the new address, and is hers.
    let unsubscribe =
        webhooks::mailchimp_unsubscribe(list, "anna.neu@example.de", "2026-11-26 10:05:00");
    let (status, body) = webhooks::send_mailchimp(&url, &unsubscribe).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let published = s.published();
    assert_eq!(published.len(), 1, "{published:?}");
    assert_eq!(published[0].subject_id, "anna");
    assert_eq!(
        published[0].contact.email.as_deref(),
        Some("anna.neu@example.de"),
        "the address the vendor holds now, for the other downstreams"
    );
}

/// The newsletter sink's withdrawal lands at Mailchimp, and Mailchimp's webhook reports it: the
/// vendor's time is when the relay's request landed, later than the decision it repeats, so it
/// must not be published as a decision of its own (it would outrank a grant given in between).
#[tokio::test]
async fn the_relays_own_withdrawal_coming_back_is_no_new_decision() {
    let s = start().await;
    let url = format!("{}/webhooks/mailchimp/{PATH_SECRET}", s.url);
    let withdrawal = ConsentRecord {
        event_id: uuid::Uuid::new_v4(),
        kind: "Unsubscribed".into(),
        occurred_at_ms: 2_000,
        offset: 1,
        ..record("anna", "anna@example.de")
    };
    s.ledger
        .log_events(std::slice::from_ref(&withdrawal))
        .await
        .unwrap();
    let claim = relay_ledger::Claim {
        key: relay_ledger::DeliveryKey {
            event_id: withdrawal.event_id,
            sink: "newsletter.main".into(),
            target: "newsletter".into(),
        },
        subject_id: "anna".into(),
        action: relay_events::Action::Withdraw,
        occurred_at_ms: 2_000,
        replay: false,
        ticket: None,
        reassert: false,
    };
    s.ledger.claim(std::slice::from_ref(&claim)).await.unwrap();
    let now = webhooks::now_ms();
    let landed = webhooks::mailchimp_time(now);

    // The list stands for two purposes; the relay withdrew one: the other may be the person's
    // own decision, and is published.
    let echo = webhooks::mailchimp_unsubscribe("a6b5da1054", "anna@example.de", &landed);
    let (status, body) = webhooks::send_mailchimp(&url, &echo).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let published = s.published();
    assert_eq!(published.len(), 1, "{published:?}");
    assert_eq!(
        published[0].scope,
        Scope::Purposes(vec!["ads_remarketing".into()])
    );

    // Once the relay withdrew both (at any destination), the same notice is only the echo.
    let both = ConsentRecord {
        event_id: uuid::Uuid::new_v4(),
        kind: "ConsentWithdrawn".into(),
        purposes: vec!["ads_remarketing".into()],
        offset: 2,
        ..withdrawal.clone()
    };
    s.ledger
        .log_events(std::slice::from_ref(&both))
        .await
        .unwrap();
    let mut to_meta = claim.clone();
    to_meta.key.event_id = both.event_id;
    to_meta.key.sink = "audiences.meta".into();
    to_meta.key.target = "ads_remarketing".into();
    s.ledger
        .claim(std::slice::from_ref(&to_meta))
        .await
        .unwrap();
    let (status, body) = webhooks::send_mailchimp(&url, &echo).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains(r#""echoes":1"#), "{body}");
    assert_eq!(s.published().len(), 1, "nothing more");
    assert!(s
        .metrics
        .render()
        .contains(r#"consent_relay_ingest_ignored_total{vendor="mailchimp",reason="echo"} 1"#));

    // The same unsubscribe long after the relay's delivery is the person's own decision.
    let later = webhooks::mailchimp_unsubscribe(
        "a6b5da1054",
        "anna@example.de",
        &webhooks::mailchimp_time(now + 3_600_000),
    );
    let (status, body) = webhooks::send_mailchimp(&url, &later).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(s.published().len(), 2);
}

#[tokio::test]
async fn brevo_needs_its_credentials_and_a_failed_publish_is_a_503() {
    let s = start().await;
    let url = format!("{}{}", s.url, relay_ingest::BREVO_PATH);
    let payload = webhooks::brevo_unsubscribed("anna@example.de", &[3], 1_764_000_000_000);
    let (status, _) = webhooks::send_brevo(&url, "Bearer wrong", &payload).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(s.published().is_empty());

    *s.recorder.broken.lock().unwrap() = true;
    let (status, _) = webhooks::send_brevo(&url, "Bearer brevo-token", &payload).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "so that Brevo retries"
    );
    assert_eq!(s.metrics.get(metrics::FAILED, Vendor::Brevo), 1);

    *s.recorder.broken.lock().unwrap() = false;
    *s.recorder.slow.lock().unwrap() = true;
    let asked = std::time::Instant::now();
    let (status, _) = webhooks::send_brevo(&url, "Bearer brevo-token", &payload).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a broker that does not answer"
    );
    assert!(
        asked.elapsed() < std::time::Duration::from_secs(6),
        "answered within the vendors' timeouts: {:?}",
        asked.elapsed()
    );
    assert_eq!(s.metrics.get(metrics::FAILED, Vendor::Brevo), 2);

    *s.recorder.slow.lock().unwrap() = false;
    let (status, _) = webhooks::send_brevo(&url, "Bearer brevo-token", &payload).await;
    assert_eq!(status, StatusCode::OK);
    let published = s.published();
    assert_eq!(published.len(), 1);
    assert_eq!(
        (published[0].kind, published[0].occurred_at_ms),
        (EventKind::Unsubscribed, 1_764_000_000_000)
    );
}
