//! End to end through the real broker, the real ledger and the fake HubSpot: the acceptance of the
//! walking skeleton (issue #2).

use std::time::Duration;

use consent_relay_e2e::*;
use relay_ledger::Status;
use relay_runtime::dead_letter::header;
use relay_testkit::broker;
use relay_testkit::hubspot::ScriptedResponse;

fn status_of(h: &Harness, subject: &str, subscription: i64) -> Option<String> {
    h.fake.subscription_status(&email_of(subject), subscription)
}

async fn wait_for_status(h: &Harness, subject: &str, subscription: i64, want: &str) {
    eventually(
        &format!("{subject} {want} at {subscription}"),
        PATIENCE,
        || async { (status_of(h, subject, subscription).as_deref() == Some(want)).then_some(()) },
    )
    .await;
}

/// Waits until the ledger has a final status for `event_id` at HubSpot.
async fn wait_for_final(h: &Harness, subject: &str, event_id: uuid::Uuid) -> Status {
    eventually(&format!("final status of {event_id}"), PATIENCE, || async {
        h.report(subject)
            .await
            .deliveries
            .iter()
            .find(|d| d.key.event_id == event_id && d.key.sink == "hubspot")
            .map(|d| d.status)
            .filter(|s| s.is_final())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_withdraw_grant_ends_subscribed() {
    let h = Harness::new().await;
    let relay = h.start();
    let events = [
        grant("anna", T0, "newsletter"),
        withdraw("anna", T0 + 1_000, "newsletter"),
        grant("anna", T0 + 2_000, "newsletter"),
    ];
    // One at a time, so that each goes through the ledger's version rule rather than in-batch
    // coalescing (tested below and in relay-runtime).
    for ev in &events {
        h.publish(std::slice::from_ref(ev)).await;
        let status = wait_for_final(&h, "anna", ev.event_id).await;
        assert_eq!(status, Status::Applied);
    }
    assert_eq!(
        status_of(&h, "anna", NEWSLETTER).as_deref(),
        Some("SUBSCRIBED")
    );
    let report = h.report("anna").await;
    assert_eq!(
        report.consent_log.len(),
        3,
        "every decision is in the consent log"
    );
    assert!(report
        .consent_log
        .iter()
        .all(|c| c.email_sha256.as_deref().is_some_and(|x| x.len() == 64)));
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_grant_never_resubscribes() {
    let h = Harness::new().await;
    let relay = h.start();
    let first = grant("bert", T0, "newsletter");
    let withdrawal = withdraw("bert", T0 + 1_000, "newsletter");
    let stale = grant("bert", T0 + 500, "newsletter");
    for ev in [&first, &withdrawal] {
        h.publish(std::slice::from_ref(ev)).await;
        wait_for_final(&h, "bert", ev.event_id).await;
    }
    h.publish(std::slice::from_ref(&stale)).await;
    assert_eq!(
        wait_for_final(&h, "bert", stale.event_id).await,
        Status::Superseded
    );
    assert_eq!(
        status_of(&h, "bert", NEWSLETTER).as_deref(),
        Some("UNSUBSCRIBED")
    );
    let state = h.report("bert").await.state;
    assert_eq!(state.len(), 1);
    assert_eq!(
        state[0].event_id, withdrawal.event_id,
        "the withdrawal stays the newest decision"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_equal_timestamps_the_withdrawal_wins_in_either_order() {
    let h = Harness::new().await;
    let relay = h.start();
    // Withdrawal first, then a grant with the same timestamp: the grant is superseded.
    let w = withdraw("cleo", T0, "newsletter");
    let g = grant("cleo", T0, "newsletter");
    h.publish(std::slice::from_ref(&w)).await;
    wait_for_final(&h, "cleo", w.event_id).await;
    h.publish(std::slice::from_ref(&g)).await;
    assert_eq!(
        wait_for_final(&h, "cleo", g.event_id).await,
        Status::Superseded
    );
    // Grant first, then the withdrawal with the same timestamp: the withdrawal applies.
    let g = grant("dirk", T0, "newsletter");
    let w = withdraw("dirk", T0, "newsletter");
    h.publish(std::slice::from_ref(&g)).await;
    wait_for_final(&h, "dirk", g.event_id).await;
    h.publish(std::slice::from_ref(&w)).await;
    assert_eq!(
        wait_for_final(&h, "dirk", w.event_id).await,
        Status::Applied
    );
    // Both in one batch, grant last: coalesced to the withdrawal.
    let w = withdraw("emil", T0, "newsletter");
    let g = grant("emil", T0, "newsletter");
    h.publish(&[w.clone(), g.clone()]).await;
    assert_eq!(
        wait_for_final(&h, "emil", g.event_id).await,
        Status::Superseded
    );
    assert_eq!(
        wait_for_final(&h, "emil", w.event_id).await,
        Status::Applied
    );

    for subject in ["cleo", "dirk", "emil"] {
        assert_eq!(
            status_of(&h, subject, NEWSLETTER).as_deref(),
            Some("UNSUBSCRIBED"),
            "{subject}"
        );
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_twice_is_applied_once() {
    let h = Harness::new().await;
    let relay = h.start();
    let ev = grant("fritz", T0, "newsletter");
    h.publish(std::slice::from_ref(&ev)).await;
    wait_for_final(&h, "fritz", ev.event_id).await;
    h.publish(std::slice::from_ref(&ev)).await;
    // A later event of the same subject on the same partition proves the copy was consumed.
    let marker = grant("fritz", T0 + 1, "product_updates");
    h.publish(std::slice::from_ref(&marker)).await;
    wait_for_final(&h, "fritz", marker.event_id).await;

    let writes = h
        .fake
        .requests()
        .into_iter()
        .filter(|r| {
            r.path.ends_with("/statuses/batch/write") && r.body.contains(&format!("{NEWSLETTER}"))
        })
        .count();
    assert_eq!(writes, 1, "the redelivered copy must not reach HubSpot");
    let report = h.report("fritz").await;
    let delivery = report
        .deliveries
        .iter()
        .find(|d| d.key.event_id == ev.event_id)
        .unwrap();
    assert_eq!(delivery.status, Status::Applied);
    assert_eq!(
        delivery.attempts, 1,
        "the copy was recognised as a duplicate, not claimed again"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_invalid_events_go_to_the_dlq_and_offsets_advance() {
    let h = Harness::new().await;
    let producer = broker::producer();
    broker::publish_raw(&producer, &h.topic, "gina", b"\x00\x01not avro at all").await;
    let mut no_email = grant("gina", T0, "newsletter");
    no_email.contact.email = None;
    h.publish(std::slice::from_ref(&no_email)).await;
    let unknown_purpose = grant("gina", T0 + 1, "lottery");
    h.publish(std::slice::from_ref(&unknown_purpose)).await;
    let good = grant("gina", T0 + 2, "newsletter");
    h.publish(std::slice::from_ref(&good)).await;

    let relay = h.start();
    assert_eq!(
        wait_for_final(&h, "gina", good.event_id).await,
        Status::Applied
    );

    let dlq = broker::read_all(&h.dlq_topic, 3, PATIENCE).await;
    assert_eq!(
        dlq.len(),
        3,
        "garbage, missing email and unknown purpose are dead-lettered"
    );
    let codes: Vec<&str> = dlq
        .iter()
        .map(|m| m.header(header::ERROR_CODE).unwrap())
        .collect();
    assert!(codes.contains(&"missing_email"), "{codes:?}");
    assert!(codes.contains(&"unknown_purpose"), "{codes:?}");
    assert_eq!(codes.len(), 3);
    for m in &dlq {
        assert_eq!(m.header(header::ORIGINAL_TOPIC), Some(h.topic.as_str()));
        assert!(m.header(header::ORIGINAL_OFFSET).is_some());
        assert!(!m
            .header(header::ERROR_MESSAGE)
            .unwrap_or_default()
            .is_empty());
        assert_eq!(m.header(header::SINK), Some("hubspot"));
        assert_eq!(
            m.key.as_deref(),
            Some(&b"gina"[..]),
            "the original key travels along"
        );
    }
    let garbage = dlq
        .iter()
        .find(|m| m.payload.starts_with(b"\x00\x01not avro"))
        .expect("original bytes kept");
    assert!(garbage.header(header::EVENT_ID).is_none());

    // All three are in the ledger under the subject, the undecodable one under its message key.
    let rejections = h.report("gina").await.rejections;
    assert_eq!(rejections.len(), 3, "{rejections:?}");

    // All four messages share gina's partition; its committed offset moves past the last.
    let last = dlq
        .iter()
        .map(|m| {
            m.header(header::ORIGINAL_OFFSET)
                .unwrap()
                .parse::<i64>()
                .unwrap()
        })
        .max()
        .unwrap();
    let partition: i32 = dlq[0]
        .header(header::ORIGINAL_PARTITION)
        .unwrap()
        .parse()
        .unwrap();
    eventually("offsets committed past the batch", PATIENCE, || async {
        let committed = broker::committed_offsets(&h.group(), &h.topic).await;
        committed
            .iter()
            .find(|(p, _)| *p == partition)
            .and_then(|(_, o)| *o)
            .filter(|o| *o >= last + 2)
    })
    .await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_until_applied_once() {
    let h = Harness::new().await;
    h.fake.push_response(ScriptedResponse::server_error());
    h.fake.push_response(ScriptedResponse::server_error());
    let relay = h.start();
    let ev = grant("hanna", T0, "newsletter");
    h.publish(std::slice::from_ref(&ev)).await;
    assert_eq!(
        wait_for_final(&h, "hanna", ev.event_id).await,
        Status::Applied
    );
    assert_eq!(h.fake.requests().len(), 3, "500, 500, then 200");
    assert_eq!(h.fake.status_changes(&email_of("hanna")), 1);
    let report = h.report("hanna").await;
    assert_eq!(report.deliveries[0].attempts, 3);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let h = Harness::new().await;
    h.fake.push_response(ScriptedResponse::rate_limited(2));
    let relay = h.start();
    let ev = withdraw("ida", T0, "newsletter");
    h.publish(std::slice::from_ref(&ev)).await;
    assert_eq!(
        wait_for_final(&h, "ida", ev.event_id).await,
        Status::Applied
    );
    let requests = h.fake.requests();
    assert_eq!(requests.len(), 2);
    let gap = requests[1].at.duration_since(requests[0].at);
    assert!(
        gap >= Duration::from_secs(2),
        "retried after {gap:?}, before Retry-After: 2"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_apply_and_commit_has_no_duplicate_effect() {
    let h = Harness::new().await;
    // HubSpot applies the change, then takes its time to answer: the relay dies in between.
    h.fake.set_response_delay(Duration::from_secs(30));
    let relay = h.start();
    let ev = grant("jana", T0, "newsletter");
    h.publish(std::slice::from_ref(&ev)).await;
    wait_for_status(&h, "jana", NEWSLETTER, "SUBSCRIBED").await;
    relay.kill().await;

    let in_flight = h.report("jana").await.deliveries;
    assert_eq!(
        in_flight[0].status,
        Status::InFlight,
        "claimed, applied downstream, not recorded"
    );
    assert!(broker::committed_offsets(&h.group(), &h.topic)
        .await
        .iter()
        .all(|(_, o)| o.is_none()));

    h.fake.set_response_delay(Duration::ZERO);
    let relay = h.start();
    assert_eq!(
        wait_for_final(&h, "jana", ev.event_id).await,
        Status::AlreadyApplied
    );
    assert_eq!(
        h.fake.status_changes(&email_of("jana")),
        1,
        "the repeat was a no-op at HubSpot"
    );
    assert_eq!(
        status_of(&h, "jana", NEWSLETTER).as_deref(),
        Some("SUBSCRIBED")
    );
    let report = h.report("jana").await;
    assert_eq!(report.deliveries.len(), 1);
    assert_eq!(report.deliveries[0].attempts, 2);
    assert_eq!(report.consent_log.len(), 1);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_all_reaches_hubspot_and_a_later_grant_resubscribes() {
    let h = Harness::new().await;
    let relay = h.start();
    let g = grant("kai", T0, "newsletter");
    let u = unsubscribe_all("kai", T0 + 1_000);
    let later = grant("kai", T0 + 2_000, "product_updates");
    h.publish(&[g.clone(), u.clone(), later.clone()]).await;
    assert_eq!(
        wait_for_final(&h, "kai", later.event_id).await,
        Status::Applied
    );
    assert_eq!(wait_for_final(&h, "kai", u.event_id).await, Status::Applied);
    assert_ne!(
        status_of(&h, "kai", NEWSLETTER).as_deref(),
        Some("SUBSCRIBED"),
        "the older grant stays undone"
    );
    assert_eq!(
        status_of(&h, "kai", PRODUCT_UPDATES).as_deref(),
        Some("SUBSCRIBED")
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_global_unsubscribe_does_not_undo_a_newer_grant() {
    let h = Harness::new().await;
    let relay = h.start();
    let older = grant("lutz", T0, "newsletter");
    let newer = grant("lutz", T0 + 2_000, "product_updates");
    // Published last (as from another topic), but the person unsubscribed between the two grants.
    let late = unsubscribe_all("lutz", T0 + 1_000);
    for ev in [&older, &newer, &late] {
        h.publish(std::slice::from_ref(ev)).await;
        assert_eq!(
            wait_for_final(&h, "lutz", ev.event_id).await,
            Status::Applied
        );
    }
    assert_eq!(
        status_of(&h, "lutz", NEWSLETTER).as_deref(),
        Some("UNSUBSCRIBED")
    );
    assert_eq!(
        status_of(&h, "lutz", PRODUCT_UPDATES).as_deref(),
        Some("SUBSCRIBED"),
        "the grant given after the unsubscribe stands"
    );
    assert!(!h.fake.unsubscribed_from_all(&email_of("lutz")));
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawal_without_email_still_stops_an_older_grant() {
    let h = Harness::new().await;
    let relay = h.start();
    // The withdrawal cannot reach HubSpot (no email: dead-lettered), but the person's decision
    // stands: a grant given before it and delivered after it must not subscribe them.
    let mut withdrawal = withdraw("mona", T0 + 1_000, "newsletter");
    withdrawal.contact.email = None;
    h.publish(std::slice::from_ref(&withdrawal)).await;
    assert_eq!(
        wait_for_final(&h, "mona", withdrawal.event_id).await,
        Status::DeadLettered
    );
    let older = grant("mona", T0, "newsletter");
    h.publish(std::slice::from_ref(&older)).await;
    assert_eq!(
        wait_for_final(&h, "mona", older.event_id).await,
        Status::Superseded
    );
    assert_eq!(
        status_of(&h, "mona", NEWSLETTER),
        None,
        "nothing was sent to HubSpot"
    );
    assert_eq!(h.report("mona").await.rejections.len(), 1);
    relay.stop().await;
}
