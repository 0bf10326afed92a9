//! Never stall, never skip (issue #9): one item, message or destination in trouble must not hold
//! back anyone else's withdrawal — and still nothing is skipped. Real broker, real ledger, fakes
//! that answer the way the vendors document.

use std::time::{Duration, Instant};

use consent_relay_e2e::*;
use relay_ledger::Status;
use relay_runtime::RetryConfig;
use relay_testkit::broker;

/// Retries for the parking tests: a poisoned item is parked after three attempts, comes back
/// after 3 s (then 4 s), and is dead-lettered 12 s after its first failure.
fn parking() -> RetryConfig {
    RetryConfig {
        item_attempts: 3,
        item_budget_ms: 10_000,
        parked_initial_delay_ms: 3_000,
        parked_max_delay_ms: 4_000,
        parked_budget_ms: 12_000,
        ..quick_retries()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_unsubscribe_answered_without_results_is_applied_and_its_partition_moves_on() {
    // One partition, so that the grant after the unsubscribe waits behind it if anything does.
    let h = Harness::with_partitions(1).await;
    h.fake.set_terse_unsubscribe_all(true);
    h.publish(&[grant("warm-up", T0, "newsletter")]).await;
    let relay = h.start();
    eventually("the relay consumes", PATIENCE, || async {
        h.fake
            .subscription_status(&email_of("warm-up"), NEWSLETTER)
            .map(|_| ())
    })
    .await;

    let unsubscribe = unsubscribe_all("ulla", T0 + 1);
    let other = grant("otto", T0 + 2, "newsletter");
    let published = Instant::now();
    h.publish(&[grant("ulla", T0, "newsletter")]).await;
    h.publish(&[unsubscribe.clone(), other.clone()]).await;
    eventually(
        "the other subject's grant reaches HubSpot",
        Duration::from_secs(10),
        || async {
            h.fake
                .subscription_status(&email_of("otto"), NEWSLETTER)
                .filter(|s| s == "SUBSCRIBED")
        },
    )
    .await;
    assert!(published.elapsed() < Duration::from_secs(10));
    h.reaches(
        "ulla",
        unsubscribe.event_id,
        "hubspot",
        Status::Applied,
        Duration::from_secs(5),
    )
    .await;
    assert!(h.fake.unsubscribed_from_all(&email_of("ulla")));
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_subject_is_parked_and_dead_lettered_while_999_others_are_applied() {
    let h = Harness::new().await;
    // Any request naming these two fails as a whole with 500, as a batch API does for one input
    // it cannot process.
    h.fake.set_poisoned(&email_of("poison-a"), true);
    h.fake.set_poisoned(&email_of("poison-b"), true);
    let mut events: Vec<_> = (0..998)
        .map(|i| grant(&format!("h{i}"), T0, "newsletter"))
        .collect();
    let grant_a = grant("poison-a", T0, "newsletter");
    let grant_b = grant("poison-b", T0, "newsletter");
    events.insert(300, grant_a.clone());
    events.insert(700, grant_b.clone());
    h.publish(&events).await;

    let mut spec = h.hubspot_spec();
    spec.retry = parking();
    let relay = h.start_sinks(vec![spec]);

    // The healthy ones are all applied and committed, the poisoned ones parked.
    eventually("998 healthy grants applied", PATIENCE, || async {
        (0..998)
            .all(|i| {
                h.fake
                    .subscription_status(&email_of(&format!("h{i}")), NEWSLETTER)
                    .is_some()
            })
            .then_some(())
    })
    .await;
    h.reaches(
        "poison-a",
        grant_a.event_id,
        "hubspot",
        Status::Parked,
        PATIENCE,
    )
    .await;
    h.reaches(
        "poison-b",
        grant_b.event_id,
        "hubspot",
        Status::Parked,
        PATIENCE,
    )
    .await;
    eventually("every offset committed", PATIENCE, || async {
        (h.committed("hubspot").await == 1_000).then_some(())
    })
    .await;

    // A withdrawal of poison-a arrives while its grant is parked, and HubSpot takes it.
    h.fake.set_poisoned(&email_of("poison-a"), false);
    let withdrawal = withdraw("poison-a", T0 + 1_000, "newsletter");
    h.publish(std::slice::from_ref(&withdrawal)).await;
    h.reaches(
        "poison-a",
        withdrawal.event_id,
        "hubspot",
        Status::Applied,
        Duration::from_secs(10),
    )
    .await;
    // The parked grant comes back, finds the newer decision, and is never sent.
    h.reaches(
        "poison-a",
        grant_a.event_id,
        "hubspot",
        Status::Superseded,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        h.fake
            .subscription_status(&email_of("poison-a"), NEWSLETTER)
            .as_deref(),
        Some("UNSUBSCRIBED"),
        "the stale grant never re-subscribed"
    );

    // poison-b keeps failing: dead-lettered with its reason once its budget is spent.
    h.reaches(
        "poison-b",
        grant_b.event_id,
        "hubspot",
        Status::DeadLettered,
        Duration::from_secs(40),
    )
    .await;
    let report = h.report("poison-b").await;
    let delivery = report
        .deliveries
        .iter()
        .find(|d| d.key.event_id == grant_b.event_id)
        .unwrap();
    assert_eq!(delivery.error_class.as_deref(), Some("retries_exhausted"));
    assert!(
        delivery
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("HTTP 500"),
        "{delivery:?}"
    );
    let letters = broker::read_all(&h.dlq_topic, 1, Duration::from_secs(10)).await;
    assert_eq!(letters.len(), 1, "one dead letter, for poison-b");
    assert_eq!(
        letters[0].header("consent-relay-error-code"),
        Some("retries_exhausted")
    );
    assert_eq!(
        letters[0].header("consent-relay-event-id"),
        Some(grant_b.event_id.to_string().as_str())
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_too_large_for_the_dead_letter_topic_goes_there_without_its_payload() {
    let h = Harness::with_partitions(1).await;
    let before: Vec<_> = (0..5)
        .map(|i| grant(&format!("b{i}"), T0, "newsletter"))
        .collect();
    let after: Vec<_> = (0..5)
        .map(|i| grant(&format!("a{i}"), T0, "newsletter"))
        .collect();
    h.publish(&before).await;
    let producer = broker::producer_with(&[("message.max.bytes", "2000000")]);
    let huge = vec![0x7b; 1_200_000];
    broker::publish_raw(&producer, &h.topic, "huge", &huge).await;
    h.publish(&after).await;

    // The relay's producer is limited to 1 MB, as a DLQ topic with Kafka's default
    // max.message.bytes would be: the 1.2 MB message cannot be written whole.
    let mut kafka = h.kafka();
    kafka
        .properties
        .insert("message.max.bytes".to_owned(), "1000000".to_owned());
    let relay = h.start_with_kafka(kafka, vec![h.hubspot_spec()]);
    eventually("the ten valid grants are applied", PATIENCE, || async {
        before
            .iter()
            .chain(&after)
            .all(|e| {
                h.fake
                    .subscription_status(&email_of(&e.subject_id), NEWSLETTER)
                    .is_some()
            })
            .then_some(())
    })
    .await;
    let letters = broker::read_all(&h.dlq_topic, 1, Duration::from_secs(10)).await;
    assert_eq!(letters.len(), 1);
    let l = &letters[0];
    assert_eq!(l.header("consent-relay-error-code"), Some("undecodable"));
    assert_eq!(
        l.header("consent-relay-original-topic"),
        Some(h.topic.as_str())
    );
    assert_eq!(l.header("consent-relay-original-offset"), Some("5"));
    assert!(l.payload.is_empty(), "the payload is left out");
    assert!(
        l.header("consent-relay-payload-omitted")
            .is_some_and(|r| r.contains("1200000 bytes")),
        "{:?}",
        l.headers
    );
    // The ledger records it under the message's key, the subject id by contract.
    let rejections = h.report("huge").await.rejections;
    assert_eq!(rejections.len(), 1, "{rejections:?}");
    assert_eq!(
        (rejections[0].code.as_str(), rejections[0].offset),
        ("undecodable", 5)
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_google_429_pauses_google_alone_for_exactly_its_retry_after() {
    let h = Harness::new().await;
    let p = AdPlatforms::start().await;
    p.google
        .push_response(relay_testkit::recorded::ScriptedResponse::json(
            429,
            serde_json::json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
            "message": "Quota exceeded for quota metric 'Ingestion requests'"}}),
            vec![("Retry-After".to_owned(), "30".to_owned())],
        ));
    let relay = h.start_sinks(p.specs_per_audience());
    let ads = "ads_remarketing";
    h.publish(&[grant("gina", T0, ads)]).await;

    let limited_at = eventually("Google answers 429", PATIENCE, || async {
        p.google.requests().first().map(|_| Instant::now())
    })
    .await;
    // Meta, LinkedIn and X go on meanwhile.
    eventually(
        "the other platforms apply",
        Duration::from_secs(10),
        || async { (p.presence(&email_of("gina")) == [true, false, true, true]).then_some(()) },
    )
    .await;
    h.publish(&[grant("gus", T0, ads)]).await;
    eventually("and keep applying", Duration::from_secs(10), || async {
        (p.presence(&email_of("gus")) == [true, false, true, true]).then_some(())
    })
    .await;
    assert!(limited_at.elapsed() < Duration::from_secs(25));
    assert_eq!(p.google.requests().len(), 1, "nothing more to Google yet");

    // Google resumes after its Retry-After: not before, not twice as late.
    eventually("Google resumes", Duration::from_secs(45), || async {
        (p.google.requests().len() >= 2).then(Instant::now)
    })
    .await;
    let waited = limited_at.elapsed();
    assert!(
        waited >= Duration::from_secs(29) && waited < Duration::from_secs(40),
        "Google was asked again after {waited:?}"
    );
    eventually("Google has both", Duration::from_secs(10), || async {
        (p.presence(&email_of("gina")) == [true; 4] && p.presence(&email_of("gus")) == [true; 4])
            .then_some(())
    })
    .await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_invalid_message_is_dead_lettered_whole_when_the_topic_takes_it() {
    let h = Harness::with_partitions(1).await;
    let producer = broker::producer_with(&[("message.max.bytes", "2000000")]);
    let huge = vec![0x7b; 1_200_000];
    broker::publish_raw(&producer, &h.topic, "huge", &huge).await;
    let valid = grant("v", T0, "newsletter");
    h.publish(std::slice::from_ref(&valid)).await;
    // The relay's own producer takes what its consumer fetches (not librdkafka's 1 MB default).
    let relay = h.start();
    h.reaches("v", valid.event_id, "hubspot", Status::Applied, PATIENCE)
        .await;
    let letters = broker::read_all(&h.dlq_topic, 1, Duration::from_secs(10)).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0].payload.len(),
        1_200_000,
        "the bytes as they came"
    );
    assert_eq!(letters[0].header("consent-relay-payload-omitted"), None);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawal_behind_a_backlog_goes_ahead_and_the_backlog_still_drains_in_order() {
    // One partition and a slow HubSpot, so that draining the backlog takes seconds.
    let h = Harness::with_partitions(1).await;
    h.fake.set_response_delay(Duration::from_millis(100));
    let first = grant("wanda", T0, "newsletter");
    let backlog: Vec<_> = (0..20_000)
        .map(|i| grant(&format!("queued-{i}"), T0, "newsletter"))
        .collect();
    let unsubscribe = unsubscribe_all("wanda", T0 + 1);
    // Nora's newer grant comes before her older withdrawal: that pair is left in order, and the
    // grant stands.
    let newer_grant = grant("nora", T0 + 10, "newsletter");
    let older_withdrawal = withdraw("nora", T0 + 5, "newsletter");
    let last = grant("zeno", T0, "newsletter");
    h.publish(std::slice::from_ref(&first)).await;
    h.publish(&backlog).await;
    h.publish(&[
        newer_grant.clone(),
        unsubscribe.clone(),
        older_withdrawal.clone(),
        last.clone(),
    ])
    .await;
    let total = 20_005;

    let relay = h.start();
    eventually("wanda's unsubscribe reaches HubSpot", PATIENCE, || async {
        h.fake
            .unsubscribed_from_all(&email_of("wanda"))
            .then_some(())
    })
    .await;
    assert!(
        h.fake
            .subscription_status(&email_of("zeno"), NEWSLETTER)
            .is_none(),
        "the unsubscribe went ahead of the backlog, not after it"
    );
    assert!(
        h.committed("hubspot").await < total,
        "the commit frontier did not move with the lookahead"
    );

    eventually("the backlog drains", Duration::from_secs(120), || async {
        (h.committed("hubspot").await == total).then_some(())
    })
    .await;
    h.reaches(
        "wanda",
        unsubscribe.event_id,
        "hubspot",
        Status::Applied,
        PATIENCE,
    )
    .await;
    assert!(h.fake.unsubscribed_from_all(&email_of("wanda")));
    h.reaches(
        "nora",
        older_withdrawal.event_id,
        "hubspot",
        Status::Superseded,
        PATIENCE,
    )
    .await;
    assert_eq!(
        h.fake
            .subscription_status(&email_of("nora"), NEWSLETTER)
            .as_deref(),
        Some("SUBSCRIBED")
    );
    assert_eq!(
        h.fake.status_changes(&email_of("nora")),
        1,
        "nora was never unsubscribed on the way"
    );
    assert_eq!(
        h.fake
            .subscription_status(&email_of("zeno"), NEWSLETTER)
            .as_deref(),
        Some("SUBSCRIBED")
    );
    relay.stop().await;
}
