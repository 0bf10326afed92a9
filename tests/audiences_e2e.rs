//! Issue #4 end to end through the broker and the ledger: ad audiences follow the newest decision,
//! and a stale grant never re-adds anyone.

use consent_relay_e2e::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audiences_follow_the_newest_decision_and_stale_grants_never_re_add() {
    let h = Harness::new().await;
    let p = AdPlatforms::start().await;
    let relay = h.start_sinks(vec![p.spec()]);
    let ads = "ads_remarketing";

    // One event at a time, so the ledger's version rule decides (not in-batch coalescing).
    let steps = [
        grant("ada", T0, ads),
        withdraw("ada", T0 + 1_000, ads),
        withdraw("bob", T0, ads),
        grant("bob", T0 + 1_000, ads),
        grant("cem", T0, ads),
        withdraw("cem", T0 + 2_000, ads),
        grant("cem", T0 + 1_000, ads),
    ];
    for ev in &steps {
        h.publish(std::slice::from_ref(ev)).await;
        eventually(&format!("{} decided", ev.event_id), PATIENCE, || async {
            let r = h.report(&ev.subject_id).await;
            r.deliveries
                .iter()
                .any(|d| d.key.event_id == ev.event_id && d.status.is_final())
                .then_some(())
        })
        .await;
    }
    assert_eq!(
        p.presence(&email_of("ada")),
        [false; 4],
        "granted then withdrew: absent everywhere"
    );
    assert_eq!(
        p.presence(&email_of("bob")),
        [true; 4],
        "withdrew then granted: present everywhere"
    );
    assert_eq!(
        p.presence(&email_of("cem")),
        [false; 4],
        "the stale grant did not re-add"
    );
    let cem = h.report("cem").await;
    let stale = cem
        .deliveries
        .iter()
        .find(|d| d.key.event_id == steps[6].event_id)
        .unwrap();
    assert_eq!(stale.status, relay_ledger::Status::Superseded);

    // Only hashes left the process.
    for fake in [&p.meta, &p.google, &p.linkedin, &p.x] {
        for r in fake.requests() {
            for who in ["ada", "bob", "cem"] {
                assert!(!r.body.contains(&email_of(who)) && !r.path.contains(&email_of(who)));
            }
        }
    }
    relay.stop().await;
}
