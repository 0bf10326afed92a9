//! Issue #5 end to end through the broker: the newsletter list and the partner hand-off.

use std::sync::Arc;
use std::time::Duration;

use consent_relay_e2e::*;
use relay_events::{ConsentEvent, EventKind, Scope};
use relay_runtime::{BatchConfig, RetryConfig, SinkSpec};
use relay_sink_newsletter::{NewsletterConfig, NewsletterSink};
use relay_sink_partner::{PartnerSink, PartnerSinkConfig};
use relay_testkit::newsletter::{FakeBrevo, FakeMailchimp};
use relay_testkit::partner::FakePartner;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const BREVO_KEY: &str = "xkeysib-test";
const LIST: i64 = 7;

fn retry() -> RetryConfig {
    RetryConfig {
        initial_delay_ms: 50,
        max_delay_ms: 500,
        factor: 2.0,
        ramp_attempts: 5,
        ..RetryConfig::default()
    }
}

fn partner_spec(fake: &FakePartner) -> SinkSpec {
    let config: PartnerSinkConfig = toml::from_str(&format!(
        r#"
[partners.in_gmbh]
endpoint = "{}"
signing_secret = "{SECRET}"
purpose = "partner_in_gmbh"
fields = ["first_name", "last_name", "company", "email"]
"#,
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
        retry: retry(),
    }
}

fn lead_grant(subject: &str, at: i64, purpose: &str) -> ConsentEvent {
    let mut ev = grant(subject, at, purpose);
    ev.contact.first_name = Some("Erika".into());
    ev.contact.last_name = Some("Mustermann".into());
    ev.contact.company = Some("Beispiel GmbH".into());
    ev.contact.phone = Some("+49 30 1234567".into());
    ev.contact.city = Some("Berlin".into());
    ev
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partner_gets_exactly_the_allow_listed_fields_and_only_with_consent() {
    let h = Harness::new().await;
    let partner = FakePartner::start(SECRET).await;
    let relay = h.start_sinks(vec![partner_spec(&partner)]);

    let consented = lead_grant("lena", T0, "partner_in_gmbh");
    let other = lead_grant("otto", T0, "newsletter");
    // The same event twice: a producer retry.
    h.publish(&[other.clone(), consented.clone(), consented.clone()])
        .await;
    let lead = eventually("the lead arrives", PATIENCE, || async {
        partner.lead("lena")
    })
    .await;

    let mut keys: Vec<&str> = lead
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "company",
            "email",
            "event_id",
            "first_name",
            "last_name",
            "notice_version",
            "occurred_at",
            "purpose",
            "subject_id"
        ],
        "allow-listed contact fields plus the consent record; no phone, no city"
    );
    assert_eq!(lead["email"], email_of("lena"));
    let report = eventually("both copies consumed", PATIENCE, || async {
        let r = h.report("lena").await;
        (r.deliveries.iter().any(|d| d.status.is_final())).then_some(r)
    })
    .await;
    assert_eq!(report.deliveries.len(), 1);
    let leads: Vec<_> = partner
        .deliveries()
        .into_iter()
        .filter(|d| d.kind == "lead.consented")
        .collect();
    assert_eq!(
        leads.len(),
        1,
        "one lead, one webhook-id, however often the event arrives"
    );
    assert_eq!(
        leads[0].id,
        consented.event_id.to_string(),
        "webhook-id is our event id"
    );
    assert!(
        partner.lead("otto").is_none(),
        "no consent for the partner, nothing sent"
    );
    assert!(
        partner
            .requests()
            .iter()
            .all(|r| !r.body.contains(&email_of("otto"))),
        "not even a request mentioning the other person"
    );

    let withdrawal = withdraw("lena", T0 + 1_000, "partner_in_gmbh");
    h.publish(std::slice::from_ref(&withdrawal)).await;
    eventually("the partner deletes the lead", PATIENCE, || async {
        partner.lead("lena").is_none().then_some(())
    })
    .await;
    let notice = partner
        .deliveries()
        .into_iter()
        .find(|d| d.kind == "consent.withdrawn")
        .expect("withdrawal notice");
    assert_eq!(notice.id, withdrawal.event_id.to_string());
    assert!(
        notice.data.get("email").is_none(),
        "a withdrawal notice carries identifiers only"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsubscribe_leaves_the_list_without_waiting_for_the_batch_linger() {
    let h = Harness::new().await;
    let brevo = FakeBrevo::start(BREVO_KEY, &[LIST]).await;
    let config: NewsletterConfig = toml::from_str(&format!(
        r#"
[purposes]
newsletter = ["main"]
[lists.main]
provider = "brevo"
base_url = "{}"
api_key = "{BREVO_KEY}"
list_id = {LIST}
"#,
        brevo.base_url()
    ))
    .expect("newsletter config");
    let linger = Duration::from_secs(8);
    let spec = SinkSpec {
        purposes: config.purposes(),
        sink: Arc::new(NewsletterSink::new(config).expect("newsletter sink")),
        batch: BatchConfig {
            max_events: 100,
            linger_ms: linger.as_millis() as u64,
            withdrawal_linger_ms: 0,
            ..BatchConfig::default()
        },
        retry: retry(),
    };
    let relay = h.start_sinks(vec![spec]);
    let email = email_of("nina");
    h.publish(&[grant("nina", T0, "newsletter")]).await;
    eventually("on the list", PATIENCE, || async {
        brevo
            .contact(&email)
            .filter(|c| c.list_ids.contains(&LIST))
            .map(|_| ())
    })
    .await;

    let mut unsubscribe = withdraw("nina", T0 + 1_000, "newsletter");
    unsubscribe.kind = EventKind::Unsubscribed;
    unsubscribe.scope = Scope::Purposes(vec!["newsletter".into()]);
    h.publish(&[unsubscribe]).await;
    // Grants may wait out the 8 s linger; an unsubscribe must not.
    eventually(
        "off the list well within the grant linger",
        linger / 2,
        || async {
            brevo
                .contact(&email)
                .filter(|c| !c.list_ids.contains(&LIST))
                .map(|_| ())
        },
    )
    .await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailchimp_regrant_after_a_withdrawal_ends_pending_and_the_ledger_says_so() {
    const AUDIENCE: &str = "a1b2c3";
    const KEY: &str = "mc-key-us1";
    let h = Harness::new().await;
    let mailchimp = FakeMailchimp::start(KEY, &[AUDIENCE]).await;
    let config: NewsletterConfig = toml::from_str(&format!(
        r#"
[purposes]
newsletter = ["mc"]
[lists.mc]
provider = "mailchimp"
base_url = "{}"
api_key = "{KEY}"
list_id = "{AUDIENCE}"
"#,
        mailchimp.base_url()
    ))
    .expect("newsletter config");
    let spec = SinkSpec {
        purposes: config.purposes(),
        sink: Arc::new(NewsletterSink::new(config).expect("newsletter sink")),
        batch: quick_batches(),
        retry: retry(),
    };
    let sink = spec.sink.name().to_owned();
    let relay = h.start_sinks(vec![spec]);
    let email = email_of("mona");
    let status = || mailchimp.member_status(AUDIENCE, &email);
    let first = grant("mona", T0, "newsletter");
    let withdrawal = withdraw("mona", T0 + 1_000, "newsletter");
    let regrant = grant("mona", T0 + 2_000, "newsletter");
    for (event, want) in [
        (&first, "subscribed"),
        (&withdrawal, "unsubscribed"),
        (&regrant, "pending"),
    ] {
        h.publish(std::slice::from_ref(event)).await;
        eventually(want, PATIENCE, || async {
            (status().as_deref() == Some(want)).then_some(())
        })
        .await;
    }
    h.reaches(
        "mona",
        regrant.event_id,
        &sink,
        relay_ledger::Status::AwaitingConfirmation,
        PATIENCE,
    )
    .await;
    assert_eq!(mailchimp.confirmations_sent(&email), 1, "one opt-in email");
    // Nothing was dead-lettered: the re-grant converged on Mailchimp's own path.
    assert!(h.report("mona").await.rejections.is_empty());
    relay.stop().await;
}
