//! Issue #13 end to end: a person unsubscribes *at* a downstream (the fake Mailchimp fires its
//! list webhook; HubSpot sends a signed opt-out), `ingest` publishes the decision, and every other
//! downstream follows through the real broker and ledger, once, and for good.

use std::sync::Arc;
use std::time::Duration;

use consent_relay_e2e::*;
use relay_ingest::{metrics, Ingest, IngestConfig, KafkaPublish, ListWriters, Metrics, Vendor};
use relay_ledger::Status;
use relay_runtime::{BatchConfig, SinkSpec};
use relay_sink_newsletter::{NewsletterConfig, NewsletterSink};
use relay_sink_partner::{PartnerSink, PartnerSinkConfig};
use relay_testkit::newsletter::FakeMailchimp;
use relay_testkit::partner::FakePartner;
use relay_testkit::webhooks::{self, HubSpotContacts};
use tokio_util::sync::CancellationToken;

const HUBSPOT_SECRET: &str = "7c0b3f54-5a2e-4d8e-9f1a-3b6c2d1e0f9a";
const HUBSPOT_READ_TOKEN: &str = "pat-ingest-read";
const PATH_SECRET: &str = "4b1e9f0c2d7a4e3b8c6d5f1a0e9b8c7d";
const LIST: &str = "a6b5da1054";
const PARTNER_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The acceptance bound: from the webhook to every downstream.
const WITHIN: Duration = Duration::from_secs(10);
const PURPOSES: [&str; 3] = ["newsletter", "ads_remarketing", "partner_in_gmbh"];
const MAILCHIMP_KEY: &str = "mc-key-us21";

struct Loop {
    h: Harness,
    ads: AdPlatforms,
    partner: FakePartner,
    mailchimp: FakeMailchimp,
    contacts: HubSpotContacts,
    metrics: Metrics,
    url: String,
    relay: Option<Running>,
    stop: CancellationToken,
}

fn partner_spec(fake: &FakePartner) -> SinkSpec {
    let config: PartnerSinkConfig = toml::from_str(&format!(
        "[partners.in_gmbh]\nendpoint = \"{}\"\nsigning_secret = \"{PARTNER_SECRET}\"\npurpose = \"partner_in_gmbh\"\nfields = [\"email\"]\n",
        fake.endpoint()
    ))
    .expect("partner config");
    SinkSpec {
        purposes: config.purposes(),
        sink: Arc::new(PartnerSink::new(config).expect("partner sink")),
        batch: BatchConfig {
            max_events: 100,
            linger_ms: 50,
            withdrawal_linger_ms: 0,
            ..BatchConfig::default()
        },
        retry: quick_retries(),
    }
}

/// The newsletter sink on the fake Mailchimp's list: the vendor the unsubscribe came from is told
/// the same decision again, which must change nothing there.
fn newsletter_spec(fake: &FakeMailchimp) -> SinkSpec {
    let config: NewsletterConfig = toml::from_str(&format!(
        "[purposes]\nnewsletter = [\"main\"]\n[lists.main]\nprovider = \"mailchimp\"\nbase_url = \"{}\"\napi_key = \"{MAILCHIMP_KEY}\"\nlist_id = \"{LIST}\"\n",
        fake.base_url()
    ))
    .expect("newsletter config");
    SinkSpec {
        purposes: config.purposes(),
        sink: Arc::new(NewsletterSink::new(config).expect("newsletter sink")),
        batch: BatchConfig {
            max_events: 100,
            linger_ms: 50,
            withdrawal_linger_ms: 0,
            ..BatchConfig::default()
        },
        retry: quick_retries(),
    }
}

impl Loop {
    async fn start() -> Loop {
        let h = Harness::new().await;
        let ads = AdPlatforms::start().await;
        let partner = FakePartner::start(PARTNER_SECRET).await;
        let mailchimp = FakeMailchimp::start(MAILCHIMP_KEY, &[LIST]).await;
        let contacts = HubSpotContacts::start(HUBSPOT_READ_TOKEN).await;
        let relay = h.start_sinks(vec![
            h.hubspot_spec(),
            ads.spec(),
            partner_spec(&partner),
            newsletter_spec(&mailchimp),
        ]);

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        // One list and one subscription type stand for all three purposes, so that one
        // vendor-side unsubscribe reaches HubSpot, the audiences and the partner.
        let mut config: IngestConfig = toml::from_str(&format!(
            r#"
listen = "127.0.0.1:0"
public_url = "{url}"
[hubspot]
api_base_url = "{}"
[hubspot.subscriptions]
{NEWSLETTER} = {PURPOSES:?}
[mailchimp]
[mailchimp.lists]
{LIST} = {PURPOSES:?}
"#,
            contacts.base_url()
        ))
        .expect("ingest config");
        config.apply_env(
            &[
                ("CONSENT_RELAY_INGEST_HUBSPOT_CLIENT_SECRET", HUBSPOT_SECRET),
                ("CONSENT_RELAY_INGEST_HUBSPOT_TOKEN", HUBSPOT_READ_TOKEN),
                ("CONSENT_RELAY_INGEST_MAILCHIMP_PATH_SECRET", PATH_SECRET),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        assert_eq!(
            config.problems(&PURPOSES.map(String::from).into()),
            Vec::<String>::new()
        );
        let metrics = Metrics::default();
        let publish = KafkaPublish {
            publisher: relay_runtime::Publisher::new(&h.kafka()).expect("publisher"),
            topic: h.topic.clone(),
        };
        // The newsletter sink runs here as one sink, not one per list as `run` builds it.
        let mut writers = ListWriters::default();
        writers.insert(Vendor::Mailchimp, LIST, "newsletter");
        let ingest = Ingest::new(config, h.ledger.clone(), Arc::new(publish), metrics.clone())
            .with_list_writers(writers);
        let stop = CancellationToken::new();
        tokio::spawn(relay_ingest::serve(listener, ingest, stop.clone()));
        Loop {
            h,
            ads,
            partner,
            mailchimp,
            contacts,
            metrics,
            url,
            relay: Some(relay),
            stop,
        }
    }

    /// The person signed up upstream for all three purposes, and every downstream has them.
    async fn signed_up(&self, who: &str) {
        let grants: Vec<_> = PURPOSES.iter().map(|p| grant(who, T0, p)).collect();
        self.h.publish(&grants).await;
        let email = email_of(who);
        eventually(&format!("{who} everywhere"), PATIENCE, || async {
            (self
                .h
                .fake
                .subscription_status(&email, NEWSLETTER)
                .as_deref()
                == Some("SUBSCRIBED")
                && self.ads.presence(&email) == [true; 4]
                && self.partner.lead(who).is_some()
                && self.mailchimp.member_status(LIST, &email).as_deref() == Some("subscribed"))
            .then_some(())
        })
        .await;
    }

    /// Within the acceptance bound: HubSpot unsubscribed for the purpose, the hash out of the
    /// Meta and Google audiences (and the others), the partner told to stop.
    async fn withdrawn_everywhere(&self, who: &str) {
        let email = email_of(who);
        eventually(&format!("{who} withdrawn everywhere"), WITHIN, || async {
            let withdrawn_at_partner = self.partner.deliveries().iter().any(|d| {
                d.kind == "consent.withdrawn" && d.data.to_string().contains(&format!("\"{who}\""))
            });
            (self
                .h
                .fake
                .subscription_status(&email, NEWSLETTER)
                .as_deref()
                == Some("UNSUBSCRIBED")
                && self.ads.presence(&email) == [false; 4]
                && withdrawn_at_partner)
                .then_some(())
        })
        .await;
    }

    /// The vendor-sourced entries of the subject's consent log (what `ledger audit` prints).
    async fn logged_from(&self, who: &str, vendor: &str) -> Vec<relay_ledger::ConsentRecord> {
        self.h
            .report(who)
            .await
            .consent_log
            .into_iter()
            .filter(|c| c.source == vendor)
            .collect()
    }

    /// An older decision from upstream, published after the vendor's: it must not re-subscribe.
    async fn stale_grant_is_superseded(&self, who: &str, before_ms: i64) {
        let stale = grant(who, before_ms, "newsletter");
        self.h.publish(std::slice::from_ref(&stale)).await;
        self.h
            .reaches(who, stale.event_id, "hubspot", Status::Superseded, PATIENCE)
            .await;
        assert_eq!(
            self.h
                .fake
                .subscription_status(&email_of(who), NEWSLETTER)
                .as_deref(),
            Some("UNSUBSCRIBED"),
            "the stale grant did not re-subscribe"
        );
        assert_eq!(self.ads.presence(&email_of(who)), [false; 4]);
    }

    async fn stop(mut self) {
        self.stop.cancel();
        if let Some(relay) = self.relay.take() {
            relay.stop().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsubscribe_at_mailchimp_reaches_every_other_downstream_once_and_for_good() {
    let l = Loop::start().await;
    l.signed_up("mia").await;
    let email = email_of("mia");
    let hook = format!("{}/webhooks/mailchimp/{PATH_SECRET}", l.url);
    assert_eq!(webhooks::validate_mailchimp_url(&hook).await, http::OK);

    // Mailchimp's times have whole seconds.
    let at_ms = (webhooks::now_ms() - 2_000) / 1000 * 1000;
    let before = l.mailchimp.requests().len();
    let (status, body) =
        webhooks::unsubscribe_at_mailchimp(&l.mailchimp, &hook, LIST, &email, at_ms).await;
    assert_eq!(status, http::OK, "{body}");
    // Mailchimp retries the same webhook (e.g. our answer was lost): twice more.
    let form = webhooks::mailchimp_unsubscribe(LIST, &email, &webhooks::mailchimp_time(at_ms));
    for _ in 0..2 {
        assert_eq!(webhooks::send_mailchimp(&hook, &form).await.0, http::OK);
    }
    l.withdrawn_everywhere("mia").await;

    let logged = l.logged_from("mia", "mailchimp").await;
    assert_eq!(logged.len(), 1, "three webhooks, one event: {logged:?}");
    let unsubscribe = &logged[0];
    assert_eq!(
        (unsubscribe.kind.as_str(), unsubscribe.occurred_at_ms),
        ("Unsubscribed", at_ms),
        "the vendor's decision at the vendor's time"
    );
    let report = l.h.report("mia").await;
    let applied: Vec<_> = report
        .deliveries
        .iter()
        .filter(|d| d.key.event_id == unsubscribe.event_id && d.key.sink == "hubspot")
        .collect();
    assert_eq!(applied.len(), 1);
    assert_eq!(applied[0].status, Status::Applied, "applied once");
    assert_eq!(
        l.h.fake.status_changes(&email),
        2,
        "subscribed once, unsubscribed once"
    );
    assert_eq!(l.metrics.get(metrics::PUBLISHED, Vendor::Mailchimp), 3);
    // The echo: the newsletter sink tells Mailchimp the same decision, which changes nothing.
    let echo = eventually("the newsletter sink decided the echo", PATIENCE, || async {
        l.h.report("mia")
            .await
            .deliveries
            .into_iter()
            .find(|d| {
                d.key.event_id == unsubscribe.event_id && d.key.sink.starts_with("newsletter")
            })
            .filter(|d| d.status.is_final())
    })
    .await;
    assert!(
        matches!(echo.status, Status::Applied | Status::AlreadyApplied),
        "{echo:?}"
    );

    l.stale_grant_is_superseded("mia", at_ms - 60_000).await;
    assert_eq!(
        l.mailchimp.member_status(LIST, &email).as_deref(),
        Some("unsubscribed"),
        "nobody re-subscribed the person where they unsubscribed"
    );
    let subscribes = |r: &&relay_testkit::recorded::RecordedRequest| {
        [
            "\"status\":\"subscribed\"",
            "\"status_if_new\":\"subscribed\"",
            "\"status\":\"pending\"",
        ]
        .iter()
        .any(|s| r.body.contains(s))
    };
    assert!(
        l.mailchimp.requests()[..before]
            .iter()
            .any(|r| subscribes(&r)),
        "the sign-up's request is what a re-subscribe would look like"
    );
    let resubscribing: Vec<_> = l.mailchimp.requests()[before..]
        .iter()
        .filter(subscribes)
        .map(|r| format!("{} {} {}", r.method, r.path, r.body))
        .collect();
    assert!(resubscribing.is_empty(), "no flapping: {resubscribing:?}");
    l.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_hubspot_opt_out_does_the_same_and_forged_or_stale_ones_do_nothing() {
    let l = Loop::start().await;
    l.signed_up("hugo").await;
    let email = email_of("hugo");
    l.contacts.insert(501, &email);
    let hook = format!("{}{}", l.url, relay_ingest::HUBSPOT_PATH);
    let at_ms = webhooks::now_ms() - 2_000;
    let property = format!("hs_email_optout_{NEWSLETTER}");
    let batch = [webhooks::hubspot_property_change(
        7001, 501, &property, "true", at_ms,
    )];

    // A tampered body and a stale timestamp: 401, nothing published.
    let body = serde_json::Value::Array(batch.to_vec()).to_string();
    let now = webhooks::now_ms();
    let signature = webhooks::hubspot_signature_v3(HUBSPOT_SECRET, "POST", &hook, &body, now);
    let tampered = body.replace("\"objectId\":501", "\"objectId\":502");
    assert_eq!(
        webhooks::send_hubspot_raw(&hook, &tampered, &signature, now)
            .await
            .0,
        http::UNAUTHORIZED
    );
    let stale = now - 5 * 60 * 1000 - 1_000;
    assert_eq!(
        webhooks::send_hubspot(&hook, HUBSPOT_SECRET, &batch, stale)
            .await
            .0,
        http::UNAUTHORIZED
    );
    assert_eq!(l.metrics.get(metrics::REJECTED, Vendor::HubSpot), 2);
    assert_eq!(l.metrics.get(metrics::PUBLISHED, Vendor::HubSpot), 0);

    // The genuine webhook, delivered three times (HubSpot retries with the same eventId).
    for _ in 0..3 {
        let (status, body) =
            webhooks::send_hubspot(&hook, HUBSPOT_SECRET, &batch, webhooks::now_ms()).await;
        assert_eq!(status, http::OK, "{body}");
    }
    l.withdrawn_everywhere("hugo").await;
    let logged = l.logged_from("hugo", "hubspot").await;
    assert_eq!(
        logged.len(),
        1,
        "one event for three deliveries: {logged:?}"
    );
    assert_eq!(
        (logged[0].kind.as_str(), logged[0].occurred_at_ms),
        ("Unsubscribed", at_ms)
    );
    assert_eq!(l.h.fake.status_changes(&email), 2, "applied once");
    assert!(
        l.logged_from("hugo", "e2e-test").await.len() == PURPOSES.len(),
        "the tampered and stale requests added nothing to the log"
    );

    l.stale_grant_is_superseded("hugo", at_ms - 60_000).await;
    l.stop().await;
}

/// A GDPR deletion in HubSpot: the webhook comes once the contact and its address are gone. The
/// contact is known by the address ingest read when it was created; the erasure is published for
/// the person, reaches the partner (addressed by subject id), is dead-lettered for want of an
/// address where one is needed, and stands against an older grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hubspot_privacy_deletion_erases_the_person_it_names_by_contact_id() {
    let l = Loop::start().await;
    l.signed_up("eva").await;
    let email = email_of("eva");
    let hook = format!("{}{}", l.url, relay_ingest::HUBSPOT_PATH);
    let entry = |event_id: i64, kind: &str, at: i64| {
        serde_json::json!({"eventId": event_id, "subscriptionId": 4243, "portalId": 62515,
            "appId": 54321, "occurredAt": at, "subscriptionType": kind, "attemptNumber": 0,
            "objectId": 601, "changeSource": "CRM_UI"})
    };
    l.contacts.insert(601, &email);
    let created_at = webhooks::now_ms() - 5_000;
    let (status, body) = webhooks::send_hubspot(
        &hook,
        HUBSPOT_SECRET,
        &[entry(8001, "contact.creation", created_at)],
        webhooks::now_ms(),
    )
    .await;
    assert_eq!(status, http::OK, "{body}");
    assert_eq!(l.metrics.get(metrics::PUBLISHED, Vendor::HubSpot), 0);

    // Learned after the answer.
    eventually("the contact's address is learned", PATIENCE, || async {
        l.metrics
            .render()
            .contains(
                "consent_relay_ingest_address_changes_total{vendor=\"hubspot\",reason=\"contact_learned\"} 1",
            )
            .then_some(())
    })
    .await;
    l.contacts.remove(601);
    let deleted_at = webhooks::now_ms() - 1_000;
    let deletion = [entry(8002, "contact.privacyDeletion", deleted_at)];
    for _ in 0..2 {
        let (status, body) =
            webhooks::send_hubspot(&hook, HUBSPOT_SECRET, &deletion, webhooks::now_ms()).await;
        assert_eq!(status, http::OK, "{body}");
    }
    eventually("the partner is told of the erasure", WITHIN, || async {
        l.partner
            .deliveries()
            .iter()
            .any(|d| d.kind == "subject.erased" && d.data.to_string().contains("\"eva\""))
            .then_some(())
    })
    .await;
    let logged = l.logged_from("eva", "hubspot").await;
    assert_eq!(logged.len(), 1, "two deliveries, one event: {logged:?}");
    assert_eq!(
        (
            logged[0].kind.as_str(),
            logged[0].occurred_at_ms,
            logged[0].email_sha256.as_deref()
        ),
        ("ErasureRequested", deleted_at, None),
        "the vendor's decision at its time, without an address"
    );
    let erasure = logged[0].event_id;
    l.h.reaches("eva", erasure, "hubspot", Status::DeadLettered, PATIENCE)
        .await;
    assert!(
        l.h.report("eva")
            .await
            .rejections
            .iter()
            .any(|r| r.code == "missing_email"),
        "dead-lettered with the reason"
    );

    // An older upstream grant published afterwards loses to the erasure.
    let stale = grant("eva", deleted_at - 60_000, "newsletter");
    l.h.publish(std::slice::from_ref(&stale)).await;
    l.h.reaches(
        "eva",
        stale.event_id,
        "hubspot",
        Status::Superseded,
        PATIENCE,
    )
    .await;
    l.stop().await;
}

/// Mailchimp reports the relay's own unsubscribe back (a list webhook with the API source on),
/// with the time the request landed: later than the withdrawal it repeats. Published, it would
/// outrank a grant the person gave in between (a relay behind a backlog applies withdrawals
/// first, minutes after they were made); it must change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relays_own_unsubscribe_coming_back_from_mailchimp_changes_nothing() {
    let l = Loop::start().await;
    l.signed_up("ole").await;
    let email = email_of("ole");
    let hook = format!("{}/webhooks/mailchimp/{PATH_SECRET}", l.url);
    l.mailchimp.fire_webhooks_for_api_changes(&hook);

    // Upstream unsubscribes the person from everything (so that the list's every purpose is
    // what the relay withdrew there: all of the webhook is the echo).
    let withdrawn_at = webhooks::now_ms() - 60_000;
    l.h.publish(&[unsubscribe_all("ole", withdrawn_at)]).await;
    l.withdrawn_everywhere("ole").await;
    let answers = eventually("Mailchimp reported the change back", PATIENCE, || async {
        let answers = l.mailchimp.webhook_answers();
        (!answers.is_empty()).then_some(answers)
    })
    .await;
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0].0, 200, "{answers:?}");
    assert!(answers[0].1.contains(r#""echoes":1"#), "{answers:?}");
    assert_eq!(l.metrics.get(metrics::PUBLISHED, Vendor::Mailchimp), 0);
    assert!(l.logged_from("ole", "mailchimp").await.is_empty());

    // The grant the person gave after the withdrawal, before the echo's time, stands.
    let regranted = grant("ole", withdrawn_at + 30_000, "newsletter");
    l.h.publish(std::slice::from_ref(&regranted)).await;
    l.h.reaches(
        "ole",
        regranted.event_id,
        "hubspot",
        Status::Applied,
        PATIENCE,
    )
    .await;
    assert_eq!(
        l.h.fake.subscription_status(&email, NEWSLETTER).as_deref(),
        Some("SUBSCRIBED")
    );
    l.stop().await;
}

/// Status codes as the test senders return them.
mod http {
    pub use axum::http::StatusCode;
    pub const OK: StatusCode = StatusCode::OK;
    pub const UNAUTHORIZED: StatusCode = StatusCode::UNAUTHORIZED;
}
