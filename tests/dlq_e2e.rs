//! DESIGN.md §3.5: permanent failures go to the DLQ and can be replayed once the cause is fixed;
//! the replay goes to the sink that gave up only, and the version rule still holds.

use std::sync::Arc;
use std::time::Duration;

use consent_relay_e2e::*;
use relay_ledger::Status;
use relay_runtime::dead_letter::{self, DeadLetter};
use relay_runtime::{BatchConfig, RetryConfig, SinkSpec};
use relay_sink_partner::{PartnerSink, PartnerSinkConfig};
use relay_testkit::broker;
use relay_testkit::hubspot::ScriptedResponse;
use relay_testkit::partner::FakePartner;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn rejected_by_hubspot() -> ScriptedResponse {
    ScriptedResponse::json(
        400,
        serde_json::json!({
            "status": "error",
            "message": "Property values were not valid",
            "category": "VALIDATION_ERROR",
            "correlationId": "4f3c1f52-0000-4000-8000-000000000000"
        }),
        vec![],
    )
}

async fn dead_letters(h: &Harness, want: usize) -> Vec<DeadLetter> {
    let kafka = h.kafka();
    eventually(&format!("{want} dead letters"), PATIENCE, || {
        let kafka = kafka.clone();
        async move {
            let letters =
                tokio::task::spawn_blocking(move || dead_letter::read_all(&kafka, |_, _| {}))
                    .await
                    .unwrap()
                    .expect("read the DLQ");
            (letters.len() == want).then_some(letters)
        }
    })
    .await
}

/// Waits until HubSpot's delivery of `event` reaches `want`. Waiting for the wanted status, not
/// for any final one, matters after a replay: the dead-lettered record is final too and would be
/// read back before the replayed copy has been consumed.
async fn reaches(h: &Harness, subject: &str, event: uuid::Uuid, want: Status) {
    let last = std::sync::Mutex::new(None);
    let reached = tokio::time::timeout(PATIENCE, async {
        loop {
            let now = h
                .report(subject)
                .await
                .deliveries
                .iter()
                .find(|d| d.key.event_id == event && d.key.sink == "hubspot")
                .map(|d| d.status);
            if now == Some(want) {
                return;
            }
            *last.lock().unwrap() = now;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        reached.is_ok(),
        "{subject}'s HubSpot delivery stayed {:?}, wanted {want:?}",
        last.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_replay_for_their_sink_only_and_stale_replays_are_superseded() {
    let h = Harness::new().await;
    let partner = FakePartner::start(SECRET).await;
    let partner_config: PartnerSinkConfig = toml::from_str(&format!(
        "[partners.in_gmbh]\nendpoint = \"{}\"\nsigning_secret = \"{SECRET}\"\npurpose = \"partner_in_gmbh\"\nfields = [\"email\"]\n",
        partner.endpoint()
    ))
    .unwrap();
    let partner_spec = SinkSpec {
        purposes: partner_config.purposes(),
        sink: Arc::new(PartnerSink::new(partner_config).unwrap()),
        batch: BatchConfig {
            max_events: 100,
            linger_ms: 50,
            withdrawal_linger_ms: 0,
            ..BatchConfig::default()
        },
        retry: RetryConfig {
            initial_delay_ms: 50,
            max_delay_ms: 500,
            factor: 2.0,
            ramp_attempts: 5,
            ..RetryConfig::default()
        },
    };

    // HubSpot rejects the first two writes for good (e.g. a misconfigured property).
    h.fake.push_response(rejected_by_hubspot());
    h.fake.push_response(rejected_by_hubspot());
    let relay = h.start_with_partner(partner_spec);
    let fixed = grant("fred", T0, "newsletter");
    h.publish(std::slice::from_ref(&fixed)).await;
    reaches(&h, "fred", fixed.event_id, Status::DeadLettered).await;
    let stale = grant("gert", T0, "newsletter");
    h.publish(std::slice::from_ref(&stale)).await;
    reaches(&h, "gert", stale.event_id, Status::DeadLettered).await;
    // Gert withdraws before anyone replays his grant.
    let newer = withdraw("gert", T0 + 1_000, "newsletter");
    h.publish(std::slice::from_ref(&newer)).await;
    reaches(&h, "gert", newer.event_id, Status::Applied).await;
    // And a garbage message, which both sinks dead-letter.
    broker::publish_raw(&broker::producer(), &h.topic, "junk", b"not avro").await;

    let letters = dead_letters(&h, 4).await;
    let hubspot: Vec<DeadLetter> = letters
        .iter()
        .filter(|l| l.sink == "hubspot")
        .cloned()
        .collect();
    assert_eq!(hubspot.len(), 3, "{letters:?}");
    let permanent: Vec<_> = hubspot
        .iter()
        .filter(|l| l.code == "downstream_permanent")
        .cloned()
        .collect();
    assert_eq!(permanent.len(), 2);
    assert!(permanent
        .iter()
        .all(|l| l.message.contains("VALIDATION_ERROR")));

    // The cause is fixed (HubSpot accepts again): replay every HubSpot dead letter.
    let mut progress = Vec::new();
    dead_letter::replay(&h.kafka(), &hubspot, |n| progress.push(n))
        .await
        .expect("replay");
    assert_eq!(
        progress.last(),
        Some(&hubspot.len()),
        "progress up to all of them"
    );
    reaches(&h, "fred", fixed.event_id, Status::Applied).await;
    assert_eq!(
        h.fake
            .subscription_status(&email_of("fred"), NEWSLETTER)
            .as_deref(),
        Some("SUBSCRIBED")
    );
    // The replayed grant is older than the withdrawal.
    reaches(&h, "gert", stale.event_id, Status::Superseded).await;
    assert_eq!(
        h.fake
            .subscription_status(&email_of("gert"), NEWSLETTER)
            .as_deref(),
        Some("UNSUBSCRIBED")
    );

    // The garbage came back for HubSpot alone: HubSpot dead-letters it again, the partner sink
    // ignores the copy.
    let after = dead_letters(&h, 5).await;
    let undecodable: Vec<_> = after
        .iter()
        .filter(|l| l.code == "undecodable")
        .map(|l| l.sink.as_str())
        .collect();
    assert_eq!(undecodable.iter().filter(|s| **s == "hubspot").count(), 2);
    assert_eq!(undecodable.iter().filter(|s| **s == "partner").count(), 1);
    relay.stop().await;
}
