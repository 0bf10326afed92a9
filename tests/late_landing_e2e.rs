//! A request the relay gave up on (a timeout) that the downstream applies anyway, later than the
//! person's newer withdrawal, must not have the last word. The fakes hold the first grant 8 s
//! against a 3 s client timeout and then apply it; the withdrawal is published 1.5 s after the
//! grant and applied long before the held grant lands. The relay re-asserts the withdrawal once
//! the held grant can no longer land (timeout plus `retry.late_landing_ms`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::Method;
use consent_relay_e2e::*;
use relay_events::normalize;
use relay_ledger::Status;
use relay_runtime::{RetryConfig, SinkSpec};
use relay_sink_audiences::{AudiencesConfig, AudiencesSink};
use relay_testkit::audiences;
use relay_testkit::late::LateApply;

const TIMEOUT_MS: u64 = 3_000;
const HOLD: Duration = Duration::from_secs(8);
/// The held grant lands 5 s after the client gave up; the margin must exceed that (with slack for
/// a loaded machine).
const LATE_LANDING_MS: u64 = 9_000;
const ROUNDS: usize = 3;

fn retry() -> RetryConfig {
    RetryConfig {
        late_landing_ms: LATE_LANDING_MS,
        // The withdrawal waits behind the grant's retry and is parked for a moment: it must be
        // applied well before the held grant lands, or there is nothing to overrule.
        parked_initial_delay_ms: 300,
        parked_max_delay_ms: 1_000,
        ..quick_retries()
    }
}

/// What the test needs of one downstream.
trait Downstream {
    fn late(&self) -> LateApply;
    /// Whether the person is subscribed / in the audience now.
    fn granted(&self, subject: &str) -> bool;
}

struct HubSpot<'a>(&'a Harness);

impl Downstream for HubSpot<'_> {
    fn late(&self) -> LateApply {
        self.0.fake.late()
    }

    fn granted(&self, subject: &str) -> bool {
        self.0
            .fake
            .subscription_status(&email_of(subject), NEWSLETTER)
            .as_deref()
            == Some("SUBSCRIBED")
    }
}

struct Meta(audiences::FakePlatform);

impl Downstream for Meta {
    fn late(&self) -> LateApply {
        self.0.late()
    }

    fn granted(&self, subject: &str) -> bool {
        let email = normalize::meta_email(&email_of(subject)).expect("normalizes");
        self.0
            .members("111")
            .contains(&normalize::sha256_hex(&email))
    }
}

/// Three rounds, one person each: grant (held), withdrawal 1.5 s later; the person ends
/// withdrawn within the timeout plus the margin, and stays so.
async fn rounds(
    h: &Harness,
    downstream: &dyn Downstream,
    sink: &str,
    purpose: &str,
    grant_needle: (Method, &str),
) {
    let late = downstream.late();
    // The relay must be consuming already: a grant and a withdrawal fetched in one batch are
    // coalesced, and the grant is never sent.
    let warmup = grant("warmup", T0, purpose);
    h.publish(std::slice::from_ref(&warmup)).await;
    h.reaches("warmup", warmup.event_id, sink, Status::Applied, PATIENCE)
        .await;
    for round in 0..ROUNDS {
        let subject = format!("late-{round}");
        late.hold(grant_needle.0.clone(), grant_needle.1, HOLD, 1);
        let g = grant(&subject, T0, purpose);
        let w = withdraw(&subject, T0 + 1_000, purpose);
        let started = Instant::now();
        h.publish(std::slice::from_ref(&g)).await;
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        h.publish(std::slice::from_ref(&w)).await;

        h.reaches(&subject, w.event_id, sink, Status::Applied, PATIENCE)
            .await;
        let withdrawn_after = started.elapsed();
        assert_eq!(
            late.landed(),
            round,
            "round {round}: the withdrawal must be applied before the held grant lands \
             (applied after {withdrawn_after:?}, the grant lands {HOLD:?} after it was sent)"
        );
        assert_eq!(late.held(), round + 1, "round {round}: the grant was held");
        eventually("the held grant lands", PATIENCE, || async {
            (late.landed() > round).then_some(())
        })
        .await;
        eventually("the withdrawal is re-asserted", PATIENCE, || async {
            (!downstream.granted(&subject)).then_some(())
        })
        .await;
        let took = started.elapsed();
        // Timeout plus margin, plus what a loaded CI machine needs to take the copy off the
        // retry topic and send it.
        let bound = Duration::from_millis(TIMEOUT_MS + LATE_LANDING_MS) + Duration::from_secs(8);
        assert!(
            took <= bound,
            "round {round}: withdrawn again after {took:?} (bound {bound:?}; withdrawal applied \
             after {withdrawn_after:?})"
        );
        // The downstream shows the re-assertion as soon as it applied it; the ledger records it
        // once the answer is back, a moment later.
        eventually("the re-assertion is recorded", PATIENCE, || async {
            let report = h.report(&subject).await;
            let row = report
                .deliveries
                .iter()
                .find(|d| d.key.event_id == w.event_id && d.key.sink == sink)
                .expect("withdrawal delivery")
                .clone();
            (row.reasserts >= 1 && row.status == Status::Applied).then_some(())
        })
        .await;
        // Nothing undoes it afterwards.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!downstream.granted(&subject), "round {round}: flapped back");
        assert_eq!(late.held(), round + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hubspot_grant_applied_after_its_timeout_never_outlives_the_newer_withdrawal() {
    let h = Harness::new().await;
    let mut api = h.hubspot_config();
    api.limits.request_timeout_ms = TIMEOUT_MS;
    let spec = SinkSpec {
        purposes: api.purposes.keys().cloned().collect(),
        sink: Arc::new(relay_sink_hubspot::HubSpotSink::new(api).expect("hubspot sink")),
        batch: quick_batches(),
        retry: retry(),
    };
    let relay = h.start_sinks(vec![spec]);
    rounds(
        &h,
        &HubSpot(&h),
        "hubspot",
        "newsletter",
        (Method::POST, "\"SUBSCRIBED\""),
    )
    .await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meta_addition_applied_after_its_timeout_never_outlives_the_newer_removal() {
    let h = Harness::new().await;
    let meta = audiences::meta::start("ads-token").await;
    let config: AudiencesConfig = toml::from_str(&format!(
        r#"
[purposes]
ads_remarketing = ["meta"]
[audiences.meta]
platform = "meta"
base_url = "{}"
token = "ads-token"
audience_id = "111"
[audiences.meta.limits]
request_timeout_ms = {TIMEOUT_MS}
"#,
        meta.base_url()
    ))
    .expect("audiences config");
    let sinks: Vec<SinkSpec> = AudiencesSink::per_audience(config)
        .expect("audiences sinks")
        .into_iter()
        .map(|sink| SinkSpec {
            purposes: sink.purposes(),
            sink: Arc::new(sink),
            batch: quick_batches(),
            retry: retry(),
        })
        .collect();
    let sink = sinks[0].sink.name().to_owned();
    let relay = h.start_sinks(sinks);
    // Additions are POSTs to the audience's users edge, removals DELETEs.
    rounds(
        &h,
        &Meta(meta),
        &sink,
        "ads_remarketing",
        (Method::POST, ""),
    )
    .await;
    relay.stop().await;
}
