//! Operations (issue #6) and the circuit (issue #3): consumer lag as the metric and the `lag`
//! command report it, across a blocked sink, a rebalance, and recovery.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use consent_relay_e2e::*;
use relay_runtime::Telemetry;

fn total(lag: &BTreeMap<(String, i32), i64>) -> i64 {
    lag.values().sum()
}

/// Lag arithmetic runs on librdkafka's mock cluster: its log end offsets are right, the test
/// broker's under-report (DESIGN.md §8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_metric_and_lag_command_agree_through_a_refused_token_and_recovery() {
    let h = Harness::on_mock_cluster(3).await;
    // HubSpot refuses the relay's token: 401 opens the circuit.
    h.fake.set_token("rotated-token");
    let events: Vec<_> = (0..10_000)
        .map(|i| grant(&format!("s{i}"), T0 + i, "newsletter"))
        .collect();
    h.publish(&events).await;
    let relay = h.start();

    let reasons = eventually("readiness reports the open circuit", PATIENCE, || async {
        h.telemetry
            .readiness()
            .err()
            .filter(|r| r.iter().any(|r| r.contains("circuit open")))
    })
    .await;
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("hubspot: circuit open: HTTP 401")),
        "{reasons:?}"
    );
    assert!(h
        .telemetry
        .render()
        .contains("consent_relay_circuit_open{sink=\"hubspot\"} 1"));

    let metric = eventually(
        "the lag metric shows the whole backlog",
        PATIENCE,
        || async {
            let lag = scraped_lag(&h.telemetry);
            (lag.len() == 3 && total(&lag) == 10_000).then_some(lag)
        },
    )
    .await;
    let kafka = h.kafka();
    let group = h.group();
    let topics = kafka.topics.clone();
    let described =
        tokio::task::spawn_blocking(move || relay_runtime::lag::describe(&kafka, &group, &topics))
            .await
            .unwrap()
            .expect("lag command");
    let command: BTreeMap<(String, i32), i64> = described
        .iter()
        .map(|l| ((l.topic.clone(), l.partition), l.lag))
        .collect();
    assert_eq!(metric, command, "metric and command agree per partition");
    assert!(described
        .iter()
        .all(|l| l.committed.is_none() && l.oldest_unapplied_age_seconds.is_some()));

    // Nothing was given up on while the token was wrong.
    let text = h.telemetry.render();
    assert!(!text.contains("outcome=\"dead_lettered\""), "{text}");
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("consent_relay_dlq_messages_total{")),
        "{text}"
    );

    // The token is fixed (rotated back): everything is applied and the lag drains to zero.
    h.fake.set_token(TOKEN);
    eventually("the lag metric drains", PATIENCE, || async {
        let lag = scraped_lag(&h.telemetry);
        (lag.len() == 3 && total(&lag) == 0).then_some(())
    })
    .await;
    let kafka = h.kafka();
    let group = h.group();
    let topics = kafka.topics.clone();
    let described =
        tokio::task::spawn_blocking(move || relay_runtime::lag::describe(&kafka, &group, &topics))
            .await
            .unwrap()
            .expect("lag command");
    assert!(described.iter().all(|l| l.lag == 0), "{described:?}");
    assert_eq!(
        described
            .iter()
            .map(|l| l.committed.unwrap_or(0))
            .sum::<i64>(),
        10_000
    );
    for i in [0, 4_999, 9_999] {
        assert_eq!(
            h.fake
                .subscription_status(&email_of(&format!("s{i}")), NEWSLETTER)
                .as_deref(),
            Some("SUBSCRIBED")
        );
    }
    assert!(
        h.telemetry.readiness().is_ok(),
        "{:?}",
        h.telemetry.readiness()
    );
    assert!(h
        .telemetry
        .render()
        .contains("consent_relay_circuit_open{sink=\"hubspot\"} 0"));
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_rebalance_no_instance_reports_partitions_it_does_not_own() {
    let h = Harness::new().await;
    let events: Vec<_> = (0..40)
        .map(|i| grant(&format!("r{i}"), T0, "newsletter"))
        .collect();
    h.publish(&events).await;
    let first = h.start();
    eventually(
        "the first instance owns all four partitions",
        PATIENCE,
        || async { (scraped_lag(&h.telemetry).len() == 4).then_some(()) },
    )
    .await;

    let second_telemetry = Telemetry::new();
    let second = h.start_instance(second_telemetry.clone());
    let (a, b) = eventually(
        "the partitions are split between the two",
        PATIENCE,
        || async {
            let a: BTreeSet<_> = scraped_lag(&h.telemetry).into_keys().collect();
            let b: BTreeSet<_> = scraped_lag(&second_telemetry).into_keys().collect();
            (!a.is_empty() && !b.is_empty() && a.len() + b.len() == 4 && a.is_disjoint(&b))
                .then_some((a, b))
        },
    )
    .await;
    // Settled, it stays that way: no instance keeps reporting a partition it gave away.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let a_now: BTreeSet<_> = scraped_lag(&h.telemetry).into_keys().collect();
    let b_now: BTreeSet<_> = scraped_lag(&second_telemetry).into_keys().collect();
    assert_eq!(
        (a_now, b_now),
        (a, b),
        "each partition reported once, by its owner"
    );
    assert!(h
        .telemetry
        .render()
        .contains("consent_relay_rebalances_total{sink=\"hubspot\"}"));

    second.stop().await;
    assert!(
        scraped_lag(&second_telemetry).is_empty(),
        "a stopped instance reports nothing"
    );
    eventually(
        "the first instance takes all four back",
        PATIENCE,
        || async { (scraped_lag(&h.telemetry).len() == 4).then_some(()) },
    )
    .await;
    first.stop().await;
}
