//! One behavioural suite, run against both backends: each `async fn` below takes a ledger URL and
//! is called from a SQLite test (a file in a temporary directory) and a PostgreSQL test (a fresh
//! database on the local server), so the two cannot drift apart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_events::Action;
use relay_ledger::{
    open, AnyLedger, Claim, ConsentRecord, Decision, DeliveryKey, DeliveryRow, Finish, InDoubt,
    Ledger, Park, Rejection, Repair, Status, SubjectReport, SubjectState, Uncertain,
};
use uuid::Uuid;

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
                    super::$name(&url).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let url = relay_testkit::postgres::fresh_database().await;
                    super::$name(&url).await;
                    // Only reached on success: a failed test leaves its database for inspection.
                    relay_testkit::postgres::drop_database(&url).await;
                }
            )*
        }
    };
}

suite!(
    proceed_duplicate_and_redelivery_after_crash,
    stale_grant_is_superseded_by_newer_withdrawal,
    equal_timestamps_go_to_the_higher_action_in_either_order,
    global_withdrawal_supersedes_older_purpose_grants_only,
    purposes_of_one_event_are_decided_independently,
    a_slice_is_decided_in_order,
    finish_records_status_and_later_claims_are_duplicates,
    consent_log_is_idempotent,
    rejections_are_recorded_once,
    subject_report_holds_only_that_subject_in_order,
    migrations_are_idempotent,
    concurrent_claims_keep_the_newest_version,
    suppression_list_follows_the_newest_decision_per_subject,
    an_applied_delivery_is_never_relabelled_superseded,
    only_the_copy_a_delivery_is_parked_under_may_act,
    a_logged_event_with_another_digest_is_reported_as_a_conflict,
    conflicting_decisions_in_one_batch_decide_as_one_after_another,
    the_same_row_twice_in_one_write_applies_in_order,
    copies_of_an_event_in_one_log_write_are_compared_with_the_first,
    reconcile_runs_are_remembered,
    reconcile_repairs_are_recorded_on_the_decisions_deliveries,
    ingest_finds_subjects_by_email_hash_and_keeps_unknown_contacts_once,
    ingest_follows_address_changes_keeps_poll_cursors_and_sees_its_own_withdrawals,
    sink_states_carry_the_deciding_events_hash_or_the_subjects_newest,
    a_reassertion_sends_the_newest_decision_again_and_nothing_else,
    uncertain_bounds_only_move_later_and_expire,
    a_delivery_claimed_and_not_answered_makes_its_subject_uncertain,
);

const HUBSPOT: &str = "hubspot";
const NEWSLETTER: &str = "newsletter";

fn claim(
    event_id: Uuid,
    sink: &str,
    target: &str,
    subject: &str,
    action: Action,
    at: i64,
) -> Claim {
    Claim {
        key: DeliveryKey {
            event_id,
            sink: sink.into(),
            target: target.into(),
        },
        subject_id: subject.into(),
        action,
        occurred_at_ms: at,
        replay: false,
        ticket: None,
        reassert: false,
    }
}

/// A claim of a new event on the HubSpot sink, the sink most tests use.
fn fresh(subject: &str, target: &str, action: Action, at: i64) -> Claim {
    claim(Uuid::new_v4(), HUBSPOT, target, subject, action, at)
}

fn finish(c: &Claim, status: Status) -> Finish {
    Finish {
        key: c.key.clone(),
        subject_id: c.subject_id.clone(),
        status,
        error_class: None,
        error: None,
    }
}

fn state_of(c: &Claim) -> SubjectState {
    SubjectState {
        sink: c.key.sink.clone(),
        target: c.key.target.clone(),
        action: c.action,
        occurred_at_ms: c.occurred_at_ms,
        event_id: c.key.event_id,
    }
}

async fn decide(ledger: &AnyLedger, claims: &[Claim]) -> Vec<Decision> {
    ledger.claim(claims).await.expect("claim")
}

async fn decide_one(ledger: &AnyLedger, claim: &Claim) -> Decision {
    let mut decisions = decide(ledger, std::slice::from_ref(claim)).await;
    assert_eq!(decisions.len(), 1);
    decisions.remove(0)
}

async fn report(ledger: &AnyLedger, subject: &str) -> SubjectReport {
    ledger.subject_report(subject).await.expect("report")
}

fn delivery<'r>(report: &'r SubjectReport, key: &DeliveryKey) -> &'r DeliveryRow {
    report
        .deliveries
        .iter()
        .find(|d| &d.key == key)
        .unwrap_or_else(|| panic!("no delivery {key:?} in {:?}", report.deliveries))
}

fn proceed(attempt: u32) -> Decision {
    Decision::Proceed { attempt }
}

fn superseded_by(c: &Claim) -> Decision {
    Decision::Superseded { by: c.key.event_id }
}

async fn proceed_duplicate_and_redelivery_after_crash(url: &str) {
    let l = open(url).await.unwrap();
    let c = fresh("s1", NEWSLETTER, Action::Grant, 100);

    assert_eq!(decide_one(&l, &c).await, proceed(1));
    // No finish: the process died after (or before) calling the downstream. The same event comes
    // back and is its own subject state, so it proceeds again.
    assert_eq!(decide_one(&l, &c).await, proceed(2));
    let r = report(&l, "s1").await;
    let d = delivery(&r, &c.key);
    assert_eq!((d.status, d.attempts), (Status::InFlight, 2));

    l.finish(&[finish(&c, Status::Applied)]).await.unwrap();
    assert_eq!(
        decide_one(&l, &c).await,
        Decision::Duplicate {
            status: Status::Applied
        }
    );

    let r = report(&l, "s1").await;
    assert_eq!(r.deliveries.len(), 1);
    let d = delivery(&r, &c.key);
    assert_eq!((d.status, d.attempts), (Status::Applied, 2));
    assert_eq!(r.state, [state_of(&c)]);
}

async fn stale_grant_is_superseded_by_newer_withdrawal(url: &str) {
    let l = open(url).await.unwrap();
    let withdraw = fresh("s1", NEWSLETTER, Action::Withdraw, 200);
    let stale = fresh("s1", NEWSLETTER, Action::Grant, 100);
    let newer = fresh("s1", NEWSLETTER, Action::Grant, 300);

    assert_eq!(decide_one(&l, &withdraw).await, proceed(1));
    assert_eq!(decide_one(&l, &stale).await, superseded_by(&withdraw));

    let r = report(&l, "s1").await;
    let d = delivery(&r, &stale.key);
    assert_eq!((d.status, d.attempts), (Status::Superseded, 0));
    assert_eq!(
        r.state,
        [state_of(&withdraw)],
        "a stale grant must not move the state"
    );

    // Superseded is final: the stale grant redelivered is a duplicate, not a second decision.
    assert_eq!(
        decide_one(&l, &stale).await,
        Decision::Duplicate {
            status: Status::Superseded
        }
    );
    // A grant newer than the withdrawal is a real change of mind.
    assert_eq!(decide_one(&l, &newer).await, proceed(1));
    assert_eq!(report(&l, "s1").await.state, [state_of(&newer)]);
}

async fn equal_timestamps_go_to_the_higher_action_in_either_order(url: &str) {
    let l = open(url).await.unwrap();
    let at = 1_700_000_000_000;

    // Grant first, then a withdrawal with the same timestamp: the withdrawal is newer.
    let grant = fresh("a", NEWSLETTER, Action::Grant, at);
    let withdraw = fresh("a", NEWSLETTER, Action::Withdraw, at);
    assert_eq!(decide_one(&l, &grant).await, proceed(1));
    assert_eq!(decide_one(&l, &withdraw).await, proceed(1));
    assert_eq!(report(&l, "a").await.state, [state_of(&withdraw)]);

    // Withdrawal first: the grant with the same timestamp loses.
    let withdraw = fresh("b", NEWSLETTER, Action::Withdraw, at);
    let grant = fresh("b", NEWSLETTER, Action::Grant, at);
    assert_eq!(decide_one(&l, &withdraw).await, proceed(1));
    assert_eq!(decide_one(&l, &grant).await, superseded_by(&withdraw));
    assert_eq!(report(&l, "b").await.state, [state_of(&withdraw)]);

    // Erasure outranks withdrawal on a tie.
    let erase = fresh("c", NEWSLETTER, Action::Erase, at);
    let withdraw = fresh("c", NEWSLETTER, Action::Withdraw, at);
    assert_eq!(decide_one(&l, &erase).await, proceed(1));
    assert_eq!(decide_one(&l, &withdraw).await, superseded_by(&erase));

    // Two different events with the very same version: the first known one stays.
    let first = fresh("d", NEWSLETTER, Action::Grant, at);
    let second = fresh("d", NEWSLETTER, Action::Grant, at);
    assert_eq!(decide_one(&l, &first).await, proceed(1));
    assert_eq!(decide_one(&l, &second).await, superseded_by(&first));
}

async fn global_withdrawal_supersedes_older_purpose_grants_only(url: &str) {
    let l = open(url).await.unwrap();
    let s = "s1";
    let early_grant = fresh(s, NEWSLETTER, Action::Grant, 100);
    let global = fresh(s, "*", Action::Withdraw, 200);
    let older_grant = fresh(s, NEWSLETTER, Action::Grant, 150);
    let older_other_purpose = fresh(s, "ads", Action::Grant, 50);
    let newer_grant = fresh(s, NEWSLETTER, Action::Grant, 300);

    assert_eq!(decide_one(&l, &early_grant).await, proceed(1));
    assert_eq!(decide_one(&l, &global).await, proceed(1));
    assert_eq!(decide_one(&l, &older_grant).await, superseded_by(&global));
    assert_eq!(
        decide_one(&l, &older_other_purpose).await,
        superseded_by(&global)
    );
    assert_eq!(decide_one(&l, &newer_grant).await, proceed(1));

    // The global state belongs to its sink: the same stale event is fresh for another sink.
    let mut elsewhere = older_grant.clone();
    elsewhere.key.sink = "newsletter_list".into();
    assert_eq!(decide_one(&l, &elsewhere).await, proceed(1));

    // With both a purpose state and the global state newer, the newest one is named.
    let purpose_withdraw = fresh(s, NEWSLETTER, Action::Withdraw, 400);
    let global_later = fresh(s, "*", Action::Erase, 500);
    let very_old = fresh(s, NEWSLETTER, Action::Grant, 10);
    assert_eq!(
        decide(&l, &[purpose_withdraw.clone(), global_later.clone()]).await,
        [proceed(1), proceed(1)]
    );
    assert_eq!(
        decide_one(&l, &very_old).await,
        superseded_by(&global_later)
    );

    assert_eq!(
        report(&l, s).await.state,
        [
            state_of(&global_later),
            state_of(&purpose_withdraw),
            state_of(&elsewhere)
        ]
    );
}

async fn purposes_of_one_event_are_decided_independently(url: &str) {
    let l = open(url).await.unwrap();
    let withdraw = fresh("s1", NEWSLETTER, Action::Withdraw, 200);
    assert_eq!(decide_one(&l, &withdraw).await, proceed(1));

    // One grant event for two purposes: stale for the newsletter, fresh for ads.
    let event = Uuid::new_v4();
    let for_newsletter = claim(event, HUBSPOT, NEWSLETTER, "s1", Action::Grant, 150);
    let for_ads = claim(event, HUBSPOT, "ads", "s1", Action::Grant, 150);
    let both = [for_newsletter.clone(), for_ads.clone()];
    assert_eq!(
        decide(&l, &both).await,
        [superseded_by(&withdraw), proceed(1)]
    );

    let r = report(&l, "s1").await;
    assert_eq!(delivery(&r, &for_newsletter.key).status, Status::Superseded);
    assert_eq!(delivery(&r, &for_ads.key).status, Status::InFlight);
    assert_eq!(r.state, [state_of(&for_ads), state_of(&withdraw)]);

    l.finish(&[finish(&for_ads, Status::Applied)])
        .await
        .unwrap();
    assert_eq!(
        decide(&l, &both).await,
        [
            Decision::Duplicate {
                status: Status::Superseded
            },
            Decision::Duplicate {
                status: Status::Applied
            }
        ]
    );
}

async fn a_slice_is_decided_in_order(url: &str) {
    let l = open(url).await.unwrap();
    let g100 = fresh("s1", NEWSLETTER, Action::Grant, 100);
    let w200 = fresh("s1", NEWSLETTER, Action::Withdraw, 200);
    let g150 = fresh("s1", NEWSLETTER, Action::Grant, 150);

    // Each claim sees the effect of the ones before it in the same slice, including the first
    // claim coming back after the withdrawal overtook it.
    let slice = [g100.clone(), w200.clone(), g150.clone(), g100.clone()];
    assert_eq!(
        decide(&l, &slice).await,
        [
            proceed(1),
            proceed(1),
            superseded_by(&w200),
            superseded_by(&w200)
        ]
    );
    let r = report(&l, "s1").await;
    let d = delivery(&r, &g100.key);
    assert_eq!(
        (d.status, d.attempts),
        (Status::Superseded, 1),
        "superseding keeps the attempt count"
    );
    assert_eq!(r.state, [state_of(&w200)]);

    // The same delivery twice in one slice is a redelivery of itself.
    let g300 = fresh("s1", NEWSLETTER, Action::Grant, 300);
    assert_eq!(
        decide(&l, &[g300.clone(), g300.clone()]).await,
        [proceed(1), proceed(2)]
    );
}

async fn finish_records_status_and_later_claims_are_duplicates(url: &str) {
    let l = open(url).await.unwrap();

    // Finishing a delivery that was never claimed (the event does not route to this sink)
    // creates the row, with no attempt, and leaves the subject state alone.
    let unrouted = claim(Uuid::new_v4(), "partner", "*", "s1", Action::Grant, 100);
    l.finish(&[finish(&unrouted, Status::NotRouted)])
        .await
        .unwrap();
    assert_eq!(
        decide_one(&l, &unrouted).await,
        Decision::Duplicate {
            status: Status::NotRouted
        }
    );
    let r = report(&l, "s1").await;
    assert_eq!(delivery(&r, &unrouted.key).attempts, 0);
    assert!(
        r.state.is_empty(),
        "finish must not touch subject state: {:?}",
        r.state
    );

    // A retryable failure is not final: the next claim is the next attempt, and the last error
    // stays visible while that attempt is in flight.
    let c = fresh("s1", NEWSLETTER, Action::Grant, 200);
    assert_eq!(decide_one(&l, &c).await, proceed(1));
    let mut retry = finish(&c, Status::Retrying);
    retry.error_class = Some("retryable".into());
    retry.error = Some("503 Service Unavailable".into());
    l.finish(&[retry]).await.unwrap();
    let d = delivery(&report(&l, "s1").await, &c.key).clone();
    assert_eq!((d.status, d.attempts), (Status::Retrying, 1));
    assert_eq!(d.error_class.as_deref(), Some("retryable"));
    assert_eq!(decide_one(&l, &c).await, proceed(2));
    let d = delivery(&report(&l, "s1").await, &c.key).clone();
    assert_eq!((d.status, d.attempts), (Status::InFlight, 2));
    assert_eq!(d.error.as_deref(), Some("503 Service Unavailable"));

    // A permanent failure is final and records the downstream's error.
    let mut dead = finish(&c, Status::DeadLettered);
    dead.error_class = Some("permanent".into());
    dead.error = Some("400 invalid subscription type".into());
    l.finish(&[dead]).await.unwrap();
    assert_eq!(
        decide_one(&l, &c).await,
        Decision::Duplicate {
            status: Status::DeadLettered
        }
    );
    let d = delivery(&report(&l, "s1").await, &c.key).clone();
    assert_eq!((d.status, d.attempts), (Status::DeadLettered, 2));
    assert_eq!(d.error_class.as_deref(), Some("permanent"));
    assert_eq!(d.error.as_deref(), Some("400 invalid subscription type"));

    // A successful finish after a failure clears the error.
    l.finish(&[finish(&c, Status::Applied)]).await.unwrap();
    let d = delivery(&report(&l, "s1").await, &c.key).clone();
    assert_eq!(
        (d.status, d.error_class, d.error),
        (Status::Applied, None, None)
    );
}

fn record(subject: &str, kind: &str, purposes: &[&str], at: i64, offset: i64) -> ConsentRecord {
    ConsentRecord {
        event_id: Uuid::new_v4(),
        subject_id: subject.into(),
        kind: kind.into(),
        purposes: purposes.iter().map(|p| p.to_string()).collect(),
        occurred_at_ms: at,
        source: "web-form".into(),
        notice_version: Some("2025-01".into()),
        email_sha256: Some("a".repeat(64)),
        topic: "consent.events".into(),
        partition: 3,
        offset,
        payload_digest: None,
        late: false,
        google_email_sha256: None,
        google_email_plus_sha256: None,
    }
}

async fn consent_log_is_idempotent(url: &str) {
    let l = open(url).await.unwrap();
    let grant = record(
        "s1",
        "ConsentGranted",
        &[NEWSLETTER, "ads,partner"],
        200,
        10,
    );
    let mut grant = grant;
    grant.google_email_sha256 = Some("c".repeat(64));
    grant.google_email_plus_sha256 = Some("d".repeat(64));
    let mut unsubscribe = record("s1", "Unsubscribed", &["*"], 100, 11);
    unsubscribe.notice_version = None;
    unsubscribe.email_sha256 = None;

    l.log_events(std::slice::from_ref(&grant)).await.unwrap();
    // The same event again (a redelivery, here with different details) leaves the first entry.
    let mut again = grant.clone();
    again.kind = "ConsentWithdrawn".into();
    again.offset = 99;
    l.log_events(&[again, unsubscribe.clone()]).await.unwrap();
    l.log_events(std::slice::from_ref(&unsubscribe))
        .await
        .unwrap();

    let r = report(&l, "s1").await;
    // Ordered by occurred_at, not by arrival.
    assert_eq!(
        format!("{:?}", r.consent_log),
        format!("{:?}", [unsubscribe, grant])
    );
}

fn rejection(sink: &str, offset: i64, subject: Option<&str>, code: &str) -> Rejection {
    Rejection {
        sink: sink.into(),
        topic: "consent.events".into(),
        partition: 1,
        offset,
        event_id: subject.map(|_| Uuid::new_v4()),
        subject_id: subject.map(str::to_owned),
        code: code.into(),
        message: format!("{code} at offset {offset}"),
    }
}

async fn rejections_are_recorded_once(url: &str) {
    let l = open(url).await.unwrap();
    let first = rejection(HUBSPOT, 7, Some("s1"), "invalid_email");
    let mut same_position = rejection(HUBSPOT, 7, Some("s1"), "unknown_schema");
    same_position.message = "a replay must not overwrite the first record".into();
    let other_sink = rejection("meta", 7, Some("s1"), "invalid_email");
    let undecodable = rejection(HUBSPOT, 8, None, "undecodable");

    l.record_rejections(std::slice::from_ref(&first))
        .await
        .unwrap();
    l.record_rejections(&[same_position, other_sink.clone(), undecodable])
        .await
        .unwrap();

    let r = report(&l, "s1").await;
    let mut got: Vec<String> = r.rejections.iter().map(|x| format!("{x:?}")).collect();
    got.sort();
    let mut want = vec![format!("{first:?}"), format!("{other_sink:?}")];
    want.sort();
    assert_eq!(got, want);
}

async fn subject_report_holds_only_that_subject_in_order(url: &str) {
    let l = open(url).await.unwrap();
    let mine = record("me", "ConsentGranted", &[NEWSLETTER], 100, 1);
    let theirs = record("them", "ConsentGranted", &[NEWSLETTER], 100, 2);
    l.log_events(&[mine.clone(), theirs.clone()]).await.unwrap();

    let c_news = claim(mine.event_id, HUBSPOT, NEWSLETTER, "me", Action::Grant, 100);
    let c_list = claim(
        mine.event_id,
        "newsletter_list",
        NEWSLETTER,
        "me",
        Action::Grant,
        100,
    );
    let c_them = claim(
        theirs.event_id,
        HUBSPOT,
        NEWSLETTER,
        "them",
        Action::Grant,
        100,
    );
    assert_eq!(
        decide(&l, &[c_list.clone(), c_them.clone()]).await,
        [proceed(1), proceed(1)]
    );
    // Distinct update times, so the delivery order is observable.
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(decide_one(&l, &c_news).await, proceed(1));
    tokio::time::sleep(Duration::from_millis(5)).await;
    l.finish(&[finish(&c_list, Status::Applied)]).await.unwrap();
    let rej = rejection(HUBSPOT, 50, Some("me"), "invalid_email");
    l.record_rejections(&[
        rej.clone(),
        rejection(HUBSPOT, 51, Some("them"), "invalid_email"),
    ])
    .await
    .unwrap();

    let r = report(&l, "me").await;
    assert_eq!(format!("{:?}", r.consent_log), format!("{:?}", [mine]));
    let keys: Vec<_> = r.deliveries.iter().map(|d| (&d.key, d.status)).collect();
    assert_eq!(
        keys,
        [
            (&c_news.key, Status::InFlight),
            (&c_list.key, Status::Applied)
        ],
        "deliveries by last update"
    );
    assert!(r
        .deliveries
        .windows(2)
        .all(|w| w[0].updated_at_ms <= w[1].updated_at_ms));
    // By sink, then target.
    assert_eq!(r.state, [state_of(&c_news), state_of(&c_list)]);
    assert_eq!(format!("{:?}", r.rejections), format!("{:?}", [rej]));

    let nobody = report(&l, "nobody").await;
    assert!(nobody.consent_log.is_empty() && nobody.deliveries.is_empty());
    assert!(nobody.state.is_empty() && nobody.rejections.is_empty());
}

async fn migrations_are_idempotent(url: &str) {
    // Two instances starting at once on a new database, then a restart.
    let (a, b) = tokio::join!(open(url), open(url));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        a.applied_migrations().await.unwrap(),
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    );
    assert_eq!(
        b.applied_migrations().await.unwrap(),
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    );

    let c = fresh("s1", NEWSLETTER, Action::Grant, 100);
    assert_eq!(decide_one(&a, &c).await, proceed(1));
    a.close().await;
    b.close().await;

    let reopened = open(url).await.unwrap();
    assert_eq!(
        reopened.applied_migrations().await.unwrap(),
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    );
    assert_eq!(
        decide(&reopened, &[c]).await,
        [proceed(2)],
        "data survives a reopen"
    );
}

/// One claim as seen by the task that made it.
#[derive(Debug, Clone)]
struct Observed {
    event_id: Uuid,
    version: (i64, Action),
    decision: Decision,
    started: Instant,
    ended: Instant,
}

/// Two instances (two pools) race conflicting versions of one (subject, target, sink): grants at
/// even and withdrawals at odd timestamps, each task in its own scrambled order. Whatever the
/// interleaving, the newest version must win, and no claim may proceed after an equal-or-newer
/// one has already proceeded.
async fn concurrent_claims_keep_the_newest_version(url: &str) {
    const ROUNDS: i64 = 15;
    const PER_TASK: i64 = 10;
    let ledgers = [
        Arc::new(open(url).await.unwrap()),
        Arc::new(open(url).await.unwrap()),
    ];
    let mut superseded_total = 0;

    for round in 0..ROUNDS {
        let subject = format!("race-{round}");
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let tasks: Vec<_> = (0..2_i64)
            .map(|parity| {
                let ledger = ledgers[parity as usize].clone();
                let barrier = barrier.clone();
                let subject = subject.clone();
                tokio::spawn(async move {
                    let action = if parity == 0 {
                        Action::Grant
                    } else {
                        Action::Withdraw
                    };
                    barrier.wait().await;
                    let mut seen = Vec::new();
                    for i in 0..PER_TASK {
                        // 7 is coprime with PER_TASK, so this visits every slot once.
                        let slot = (i * 7 + round * 3 + parity * 5) % PER_TASK;
                        let at = 1_000 + 2 * slot + parity;
                        let c = fresh(&subject, NEWSLETTER, action, at);
                        let started = Instant::now();
                        let decision = ledger.claim(std::slice::from_ref(&c)).await.unwrap();
                        seen.push(Observed {
                            event_id: c.key.event_id,
                            version: (at, action),
                            decision: decision[0].clone(),
                            started,
                            ended: Instant::now(),
                        });
                    }
                    seen
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }

        let newest = all.iter().max_by_key(|o| o.version).unwrap();
        assert_eq!(
            newest.decision,
            proceed(1),
            "the newest version always proceeds"
        );
        let r = ledgers[0].subject_report(&subject).await.unwrap();
        assert_eq!(r.state.len(), 1);
        assert_eq!(
            (r.state[0].event_id, r.state[0].occurred_at_ms),
            (newest.event_id, newest.version.0),
            "final state must be the newest version"
        );

        let proceeded: Vec<_> = all.iter().filter(|o| o.decision == proceed(1)).collect();
        for earlier in &proceeded {
            for later in &proceeded {
                if earlier.ended < later.started {
                    assert!(
                        later.version > earlier.version,
                        "{later:?} proceeded after the newer {earlier:?} had"
                    );
                }
            }
        }
        for o in &all {
            let expected_status = match &o.decision {
                Decision::Proceed { .. } | Decision::ProceedExcept { .. } => Status::InFlight,
                Decision::Superseded { by } => {
                    superseded_total += 1;
                    let winner = all.iter().find(|w| w.event_id == *by).expect("known event");
                    assert!(
                        winner.version > o.version,
                        "{o:?} superseded by older {winner:?}"
                    );
                    assert_eq!(winner.decision, proceed(1), "superseded by a non-winner");
                    assert!(winner.started < o.ended);
                    Status::Superseded
                }
                Decision::Duplicate { .. } => panic!("fresh events cannot be duplicates: {o:?}"),
            };
            let key = DeliveryKey {
                event_id: o.event_id,
                sink: HUBSPOT.into(),
                target: NEWSLETTER.into(),
            };
            assert_eq!(delivery(&r, &key).status, expected_status);
        }
    }
    // Scrambled orders make some claims arrive after newer ones in every round.
    assert!(superseded_total > 0);
}

async fn suppression_list_follows_the_newest_decision_per_subject(url: &str) {
    let l = open(url).await.unwrap();
    l.log_events(&[
        record("withdrew", "ConsentGranted", &[NEWSLETTER], 100, 1),
        record("withdrew", "ConsentWithdrawn", &[NEWSLETTER, "ads"], 200, 2),
        record("regranted", "ConsentWithdrawn", &[NEWSLETTER], 100, 3),
        record("regranted", "ConsentGranted", &[NEWSLETTER], 200, 4),
        record("unsubscribed_all", "ConsentGranted", &[NEWSLETTER], 100, 5),
        record("unsubscribed_all", "Unsubscribed", &["*"], 150, 6),
        record("erased", "ErasureRequested", &["*"], 300, 7),
        record(
            "other_purpose",
            "ConsentWithdrawn",
            &["newsletter_weekly"],
            100,
            8,
        ),
        record("ads_only", "ConsentWithdrawn", &["ads"], 100, 9),
    ])
    .await
    .unwrap();
    let records = l.consent_for_purpose(NEWSLETTER).await.unwrap();
    assert!(records
        .iter()
        .all(|r| r.purposes.iter().any(|p| p == NEWSLETTER || p == "*")));
    let list = relay_ledger::suppression_list(&records);
    let got: Vec<(&str, &str)> = list
        .iter()
        .map(|s| (s.subject_id.as_str(), s.decision))
        .collect();
    assert_eq!(
        got,
        [
            ("erased", "erase"),
            ("unsubscribed_all", "unsubscribe"),
            ("withdrew", "withdraw")
        ]
    );
    assert!(list
        .iter()
        .all(|s| s.email_sha256.as_deref().is_some_and(|h| h.len() == 64)));
}

async fn an_applied_delivery_is_never_relabelled_superseded(url: &str) {
    let l = open(url).await.unwrap();
    // Applied but not committed; redelivered with a newer event, in-batch coalescing then calls
    // it superseded. The record must keep what really happened.
    let c = fresh("s1", NEWSLETTER, Action::Grant, 100);
    assert_eq!(decide_one(&l, &c).await, proceed(1));
    l.finish(&[finish(&c, Status::Applied)]).await.unwrap();
    l.finish(&[finish(&c, Status::Superseded)]).await.unwrap();
    assert_eq!(
        delivery(&report(&l, "s1").await, &c.key).status,
        Status::Applied
    );
    // A delivery still in flight may be superseded.
    let d = fresh("s1", NEWSLETTER, Action::Withdraw, 200);
    assert_eq!(decide_one(&l, &d).await, proceed(1));
    l.finish(&[finish(&d, Status::Superseded)]).await.unwrap();
    assert_eq!(
        delivery(&report(&l, "s1").await, &d.key).status,
        Status::Superseded
    );
}

async fn only_the_copy_a_delivery_is_parked_under_may_act(url: &str) {
    let l = open(url).await.unwrap();
    let c = fresh("s1", NEWSLETTER, Action::Withdraw, 100);
    assert_eq!(decide_one(&l, &c).await, proceed(1));
    let park = |parks: u32| Park {
        key: c.key.clone(),
        subject_id: "s1".into(),
        parks,
        error: "HTTP 500: internal error".into(),
    };
    l.park(&[park(1)]).await.unwrap();
    let d = delivery(&report(&l, "s1").await, &c.key).clone();
    assert_eq!(d.status, Status::Parked);
    assert_eq!(d.error.as_deref(), Some("HTTP 500: internal error"));

    // The parked copy proceeds, and still does when redelivered after a crash.
    let copy = |generation: u32| Claim {
        ticket: Some(generation),
        ..c.clone()
    };
    assert_eq!(decide_one(&l, &copy(1)).await, proceed(2));
    assert_eq!(decide_one(&l, &copy(1)).await, proceed(3));
    // Parked again: the first copy is stale from now on, the second proceeds.
    l.park(&[park(2)]).await.unwrap();
    assert_eq!(
        decide_one(&l, &copy(1)).await,
        Decision::Duplicate {
            status: Status::Parked
        }
    );
    assert_eq!(decide_one(&l, &copy(2)).await, proceed(4));
    // Two parks recorded out of order keep the newer generation.
    l.park(&[park(4)]).await.unwrap();
    l.park(&[park(3)]).await.unwrap();
    assert_eq!(
        decide_one(&l, &copy(3)).await,
        Decision::Duplicate {
            status: Status::Parked
        }
    );
    // A redelivery from the source topic may always proceed.
    assert_eq!(decide_one(&l, &c).await, proceed(5));
    // Once final, a late park leaves the delivery as it is.
    l.finish(&[finish(&c, Status::Applied)]).await.unwrap();
    l.park(&[park(9)]).await.unwrap();
    assert_eq!(
        delivery(&report(&l, "s1").await, &c.key).status,
        Status::Applied
    );
    assert_eq!(
        decide_one(&l, &copy(9)).await,
        Decision::Duplicate {
            status: Status::Applied
        }
    );
}

async fn a_logged_event_with_another_digest_is_reported_as_a_conflict(url: &str) {
    let l = open(url).await.unwrap();
    let with = |digest: Option<&str>| ConsentRecord {
        payload_digest: digest.map(str::to_owned),
        late: true,
        google_email_sha256: None,
        google_email_plus_sha256: None,
        ..record("s1", "ConsentWithdrawn", &[NEWSLETTER], 100, 7)
    };
    let first = with(Some("aaaa"));
    let same = ConsentRecord {
        event_id: first.event_id,
        ..with(Some("aaaa"))
    };
    let other = ConsentRecord {
        event_id: first.event_id,
        ..with(Some("bbbb"))
    };
    let unknown = ConsentRecord {
        event_id: first.event_id,
        ..with(None)
    };
    assert!(l
        .log_events(std::slice::from_ref(&first))
        .await
        .unwrap()
        .is_empty());
    assert!(
        l.log_events(&[same]).await.unwrap().is_empty(),
        "a redelivery"
    );
    assert!(
        l.log_events(&[unknown]).await.unwrap().is_empty(),
        "nothing to compare"
    );
    assert_eq!(
        l.log_events(&[other]).await.unwrap(),
        [first.event_id],
        "same id, another payload"
    );
    let r = report(&l, "s1").await;
    assert_eq!(r.consent_log.len(), 1, "the first entry stands");
    assert_eq!(r.consent_log[0].payload_digest.as_deref(), Some("aaaa"));
    assert!(r.consent_log[0].late);
}

/// The ledger decides a batch in one statement per table; the outcome must be what claiming the
/// same claims one at a time gives.
async fn conflicting_decisions_in_one_batch_decide_as_one_after_another(url: &str) {
    let batch = open(url).await.unwrap();
    // Earlier state: s2 withdrew at 50.
    let w50 = fresh("s2", NEWSLETTER, Action::Withdraw, 50);
    assert_eq!(decide_one(&batch, &w50).await, proceed(1));

    let g100 = fresh("s1", NEWSLETTER, Action::Grant, 100);
    let w200 = fresh("s1", NEWSLETTER, Action::Withdraw, 200);
    let g40 = fresh("s2", NEWSLETTER, Action::Grant, 40);
    let g60 = fresh("s2", NEWSLETTER, Action::Grant, 60);
    let product = fresh("s3", "product", Action::Grant, 300);
    let all = fresh("s3", "*", Action::Withdraw, 250);
    let news = fresh("s3", NEWSLETTER, Action::Grant, 100);
    let other_sink = claim(
        g100.key.event_id,
        "meta",
        NEWSLETTER,
        "s1",
        Action::Grant,
        100,
    );
    let claims = [
        g100.clone(),
        g40.clone(),
        w200.clone(),
        product.clone(),
        g100.clone(),
        news.clone(),
        g60.clone(),
        all.clone(),
        other_sink.clone(),
        g60.clone(),
    ];
    let want = [
        proceed(1),
        superseded_by(&w50),
        proceed(1),
        proceed(1),
        superseded_by(&w200),
        proceed(1),
        proceed(1),
        Decision::ProceedExcept {
            attempt: 1,
            keep: vec!["product".into()],
        },
        proceed(1),
        proceed(2),
    ];
    assert_eq!(decide(&batch, &claims).await, want);

    // The same claims one at a time, on a ledger of their own, leave the same tables.
    let dir = tempfile::tempdir().unwrap();
    let single = open(&format!(
        "sqlite://{}",
        dir.path().join("single.db").display()
    ))
    .await
    .unwrap();
    assert_eq!(decide_one(&single, &w50).await, proceed(1));
    let mut one_by_one = Vec::new();
    for c in &claims {
        one_by_one.push(decide_one(&single, c).await);
    }
    assert_eq!(one_by_one, want);
    for subject in ["s1", "s2", "s3"] {
        let (b, s) = (
            report(&batch, subject).await,
            report(&single, subject).await,
        );
        let rows = |r: &SubjectReport| {
            let mut d: Vec<_> = r
                .deliveries
                .iter()
                .map(|d| (d.key.clone(), d.status, d.attempts))
                .collect();
            d.sort_by(|a, b| a.0.cmp(&b.0));
            let mut st = r.state.clone();
            st.sort_by(|a, b| (&a.sink, &a.target).cmp(&(&b.sink, &b.target)));
            (d, st)
        };
        assert_eq!(rows(&b), rows(&s), "{subject}");
    }
    let s1 = report(&batch, "s1").await;
    assert_eq!(
        (
            delivery(&s1, &g100.key).status,
            delivery(&s1, &g100.key).attempts
        ),
        (Status::Superseded, 1)
    );
    assert_eq!(
        delivery(&report(&batch, "s2").await, &g60.key).attempts,
        2,
        "the second copy is a redelivery of the first"
    );
}

async fn the_same_row_twice_in_one_write_applies_in_order(url: &str) {
    let l = open(url).await.unwrap();
    let a = fresh("s1", NEWSLETTER, Action::Grant, 100);
    let b = fresh("s1", "product", Action::Grant, 100);
    let c = fresh("s1", "ads", Action::Withdraw, 100);
    decide(&l, &[a.clone(), b.clone(), c.clone()]).await;
    // Applied, then superseded in the same write: the applied delivery is not relabelled. The
    // other way round, the second write wins as it would one statement at a time.
    l.finish(&[
        finish(&a, Status::Applied),
        finish(&b, Status::Superseded),
        finish(&a, Status::Superseded),
        finish(&b, Status::Applied),
    ])
    .await
    .unwrap();
    let r = report(&l, "s1").await;
    assert_eq!(delivery(&r, &a.key).status, Status::Applied);
    assert_eq!(delivery(&r, &b.key).status, Status::Applied);

    // Two parks of one delivery in one write keep the newer generation; a park after a finish
    // in the same write leaves the final status.
    let park = |k: &Claim, parks: u32| Park {
        key: k.key.clone(),
        subject_id: "s1".into(),
        parks,
        error: format!("HTTP 503 (generation {parks})"),
    };
    l.park(&[park(&c, 3), park(&c, 2)]).await.unwrap();
    let d = delivery(&report(&l, "s1").await, &c.key).clone();
    assert_eq!(d.status, Status::Parked);
    assert_eq!(d.error.as_deref(), Some("HTTP 503 (generation 2)"));
    assert_eq!(
        decide_one(
            &l,
            &Claim {
                ticket: Some(2),
                ..c.clone()
            }
        )
        .await,
        Decision::Duplicate {
            status: Status::Parked
        },
        "generation 3 is the newest"
    );
    l.finish(&[finish(&a, Status::Applied)]).await.unwrap();
    l.park(&[park(&a, 1), park(&a, 2)]).await.unwrap();
    assert_eq!(
        delivery(&report(&l, "s1").await, &a.key).status,
        Status::Applied
    );

    // The same rejected position twice in one write is recorded once, as first seen.
    let first = rejection(HUBSPOT, 9, Some("s1"), "invalid_email");
    let again = rejection(HUBSPOT, 9, Some("s1"), "unknown_schema");
    l.record_rejections(&[first.clone(), again]).await.unwrap();
    let r = report(&l, "s1").await;
    assert_eq!(
        r.rejections
            .iter()
            .map(|x| format!("{x:?}"))
            .collect::<Vec<_>>(),
        [format!("{first:?}")]
    );
}

async fn copies_of_an_event_in_one_log_write_are_compared_with_the_first(url: &str) {
    let l = open(url).await.unwrap();
    let with = |id: Uuid, digest: &str, offset: i64| ConsentRecord {
        event_id: id,
        payload_digest: Some(digest.to_owned()),
        ..record("s1", "ConsentGranted", &[NEWSLETTER], 100, offset)
    };
    let old = with(Uuid::new_v4(), "aaaa", 1);
    l.log_events(std::slice::from_ref(&old)).await.unwrap();
    let new = Uuid::new_v4();
    let conflicts = l
        .log_events(&[
            with(new, "cccc", 2),
            with(old.event_id, "aaaa", 3),
            with(new, "cccc", 4),
            with(new, "dddd", 5),
            with(old.event_id, "bbbb", 6),
            with(new, "eeee", 7),
        ])
        .await
        .unwrap();
    assert_eq!(
        conflicts,
        [new, old.event_id, new],
        "in order, each copy against the entry logged first"
    );
    let r = report(&l, "s1").await;
    let logged: Vec<(Uuid, Option<&str>, i64)> = r
        .consent_log
        .iter()
        .map(|e| (e.event_id, e.payload_digest.as_deref(), e.offset))
        .collect();
    assert_eq!(logged.len(), 2);
    assert!(logged.contains(&(old.event_id, Some("aaaa"), 1)));
    assert!(logged.contains(&(new, Some("cccc"), 2)));
}

async fn ingest_finds_subjects_by_email_hash_and_keeps_unknown_contacts_once(url: &str) {
    let l = open(url).await.unwrap();
    let mut old = record("old-id", "ConsentGranted", &[NEWSLETTER], 100, 1);
    old.email_sha256 = Some("a".repeat(64));
    let mut merged = record("new-id", "ConsentGranted", &[NEWSLETTER], 200, 2);
    merged.email_sha256 = Some("a".repeat(64));
    let logged = [old.event_id, merged.event_id, Uuid::new_v4()];
    l.log_events(&[old, merged]).await.unwrap();
    assert_eq!(
        l.logged_event_ids(&logged).await.unwrap(),
        logged[..2].iter().copied().collect()
    );
    assert_eq!(
        l.subject_for_email(&"a".repeat(64))
            .await
            .unwrap()
            .as_deref(),
        Some("new-id"),
        "the subject of the newest decision"
    );
    assert_eq!(l.subject_for_email(&"b".repeat(64)).await.unwrap(), None);

    let unknown = relay_ledger::UnknownContact {
        event_id: Uuid::new_v4(),
        vendor: "mailchimp".into(),
        kind: "Unsubscribed".into(),
        purposes: vec![NEWSLETTER.into()],
        email_sha256: Some("b".repeat(64)),
        vendor_ref: "list a6b5da1054".into(),
        occurred_at_ms: 300,
        recorded_at_ms: 0,
    };
    assert!(l.record_unknown_contact(&unknown).await.unwrap());
    assert!(
        !l.record_unknown_contact(&unknown).await.unwrap(),
        "a vendor's retry adds nothing"
    );
    let kept = l.unknown_contacts().await.unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(
        relay_ledger::UnknownContact {
            recorded_at_ms: 0,
            ..kept[0].clone()
        },
        unknown
    );
    assert!(kept[0].recorded_at_ms > 0);
}

async fn ingest_follows_address_changes_keeps_poll_cursors_and_sees_its_own_withdrawals(url: &str) {
    let l = open(url).await.unwrap();
    let (old_hash, new_hash) = ("a".repeat(64), "c".repeat(64));
    // A vendor's contact id maps to the hash of its newest address, per vendor.
    assert_eq!(
        l.contact_email_sha256("hubspot", "62515:7").await.unwrap(),
        None
    );
    l.record_contact_ref("hubspot", "62515:7", &old_hash, 100)
        .await
        .unwrap();
    l.record_contact_ref("hubspot", "62515:7", &new_hash, 200)
        .await
        .unwrap();
    // A late retry of the older report changes nothing.
    l.record_contact_ref("hubspot", "62515:7", &old_hash, 100)
        .await
        .unwrap();
    l.record_contact_ref("brevo", "62515:7", &old_hash, 300)
        .await
        .unwrap();
    assert_eq!(
        l.contact_email_sha256("hubspot", "62515:7").await.unwrap(),
        Some(new_hash.clone())
    );
    assert_eq!(
        l.contact_email_sha256("hubspot", "1:7").await.unwrap(),
        None
    );
    let mut granted = record("s1", "ConsentGranted", &[NEWSLETTER], 100, 1);
    granted.email_sha256 = Some(old_hash.clone());
    l.log_events(&[granted]).await.unwrap();

    // Mailchimp's upemail: the new address finds the subject of the old one ...
    assert_eq!(l.subject_for_email(&new_hash).await.unwrap(), None);
    l.record_email_alias(&new_hash, "s1", "mailchimp", "list a6b5da1054")
        .await
        .unwrap();
    assert_eq!(
        l.subject_for_email(&new_hash).await.unwrap().as_deref(),
        Some("s1")
    );
    assert_eq!(l.subjects_for_email(&new_hash).await.unwrap(), ["s1"]);
    // ... and a later report of the same address for someone else replaces it.
    l.record_email_alias(&new_hash, "s2", "mailchimp", "list a6b5da1054")
        .await
        .unwrap();
    assert_eq!(
        l.subject_for_email(&new_hash).await.unwrap().as_deref(),
        Some("s2")
    );
    // An address upstream named wins over what a vendor said about it.
    l.record_email_alias(&old_hash, "s3", "mailchimp", "x")
        .await
        .unwrap();
    assert_eq!(
        l.subject_for_email(&old_hash).await.unwrap().as_deref(),
        Some("s1")
    );
    assert_eq!(l.subjects_for_email(&old_hash).await.unwrap(), ["s1", "s3"]);

    // Poll cursors, one per source, the newest write wins.
    assert_eq!(l.poll_cursor("mailchimp:a6b5da1054").await.unwrap(), None);
    l.set_poll_cursor("mailchimp:a6b5da1054", 1_000)
        .await
        .unwrap();
    l.set_poll_cursor("mailchimp:a6b5da1054", 2_000)
        .await
        .unwrap();
    l.set_poll_cursor("mailchimp:other", 5).await.unwrap();
    assert_eq!(
        l.poll_cursor("mailchimp:a6b5da1054").await.unwrap(),
        Some(2_000)
    );

    // The relay's own withdrawal, delivered to HubSpot and to a newsletter destination: what a
    // vendor's webhook of that time repeats. A grant, an unrouted or a superseded delivery is not.
    let withdrawal = record("s1", "Unsubscribed", &[NEWSLETTER], 200, 2);
    let grant = record("s1", "ConsentGranted", &["ads"], 300, 3);
    l.log_events(&[withdrawal.clone(), grant.clone()])
        .await
        .unwrap();
    let to_hubspot = claim(
        withdrawal.event_id,
        HUBSPOT,
        NEWSLETTER,
        "s1",
        Action::Withdraw,
        200,
    );
    let to_list = claim(
        withdrawal.event_id,
        "newsletter.main",
        NEWSLETTER,
        "s1",
        Action::Withdraw,
        200,
    );
    let granted = claim(grant.event_id, HUBSPOT, "ads", "s1", Action::Grant, 300);
    let unrouted = claim(
        withdrawal.event_id,
        "partner",
        "*",
        "s1",
        Action::Withdraw,
        200,
    );
    let started = relay_ledger::now_ms();
    decide(&l, &[to_hubspot.clone(), to_list.clone(), granted.clone()]).await;
    // In flight: seen from its claim on, not in a window that starts later.
    let seen = |from: i64, to: i64| {
        let l = &l;
        async move {
            let mut sinks: Vec<String> = l
                .withdrawals_delivered_between("s1", from, to, Uuid::nil())
                .await
                .unwrap()
                .into_iter()
                .map(|d| {
                    assert_eq!(
                        (d.kind.as_str(), d.target.as_str()),
                        ("Unsubscribed", NEWSLETTER)
                    );
                    d.sink
                })
                .collect();
            sinks.sort();
            sinks
        }
    };
    let claimed = relay_ledger::now_ms();
    let both = ["hubspot", "newsletter.main"];
    assert_eq!(seen(started, started + 7_200_000).await, both);
    assert!(seen(0, started - 1).await.is_empty(), "claimed later");
    assert!(
        seen(claimed + 1, claimed + 60_000).await.is_empty(),
        "claimed before the window"
    );
    l.finish(&[
        finish(&to_hubspot, Status::Applied),
        finish(&to_list, Status::AlreadyApplied),
        finish(&granted, Status::Applied),
        finish(&unrouted, Status::NotRouted),
    ])
    .await
    .unwrap();
    let done = relay_ledger::now_ms();
    assert_eq!(
        seen(started, done).await,
        ["hubspot"],
        "not the grant, not the unrouted, not a first attempt that changed nothing"
    );
    assert!(
        seen(done + 1, done + 60_000).await.is_empty(),
        "finished before the window"
    );
    // A retried delivery that ends "already so" may owe that to its earlier attempt.
    let retried = claim(
        withdrawal.event_id,
        "newsletter.other",
        NEWSLETTER,
        "s1",
        Action::Withdraw,
        200,
    );
    decide(&l, std::slice::from_ref(&retried)).await;
    l.finish(&[finish(&retried, Status::Retrying)])
        .await
        .unwrap();
    decide(&l, std::slice::from_ref(&retried)).await;
    l.finish(&[finish(&retried, Status::AlreadyApplied)])
        .await
        .unwrap();
    assert_eq!(
        seen(started, relay_ledger::now_ms()).await,
        ["hubspot", "newsletter.other"],
        "a retry's earlier attempt may have landed"
    );
    assert!(
        l.withdrawals_delivered_between("s1", started, done, withdrawal.event_id)
            .await
            .unwrap()
            .is_empty(),
        "the notice's own event is its duplicate, not its echo"
    );
}

/// (subject, target, action, email hash, notice version) of one sink state.
type StateRow<'a> = (&'a str, &'a str, Action, Option<&'a str>, Option<&'a str>);

async fn sink_states_carry_the_deciding_events_hash_or_the_subjects_newest(url: &str) {
    let l = open(url).await.unwrap();
    // s1: a grant with an email hash, then an unsubscribe without one.
    let mut grant = record("s1", "ConsentGranted", &[NEWSLETTER], 100, 1);
    grant.email_sha256 = Some("1".repeat(64));
    let mut unsub = record("s1", "Unsubscribed", &["*"], 200, 2);
    unsub.email_sha256 = None;
    unsub.notice_version = None;
    // s2: a withdrawal with its own hash; another sink's state is not listed.
    let mut withdraw = record("s2", "ConsentWithdrawn", &[NEWSLETTER], 150, 3);
    withdraw.email_sha256 = Some("2".repeat(64));
    l.log_events(&[grant.clone(), unsub.clone(), withdraw.clone()])
        .await
        .unwrap();
    let decisions = l
        .claim(&[
            claim(
                grant.event_id,
                HUBSPOT,
                NEWSLETTER,
                "s1",
                Action::Grant,
                100,
            ),
            claim(unsub.event_id, HUBSPOT, "*", "s1", Action::Withdraw, 200),
            claim(
                withdraw.event_id,
                HUBSPOT,
                NEWSLETTER,
                "s2",
                Action::Withdraw,
                150,
            ),
            claim(
                withdraw.event_id,
                "audiences.meta",
                NEWSLETTER,
                "s2",
                Action::Withdraw,
                150,
            ),
        ])
        .await
        .unwrap();
    assert!(decisions
        .iter()
        .all(|d| matches!(d, Decision::Proceed { .. })));
    let states = l.sink_states(HUBSPOT).await.unwrap();
    let got: Vec<StateRow> = states
        .iter()
        .map(|s| {
            (
                s.subject_id.as_str(),
                s.target.as_str(),
                s.action,
                s.email_sha256.as_deref(),
                s.notice_version.as_deref(),
            )
        })
        .collect();
    let one = "1".repeat(64);
    let two = "2".repeat(64);
    assert_eq!(
        got,
        vec![
            ("s1", "*", Action::Withdraw, Some(one.as_str()), None),
            (
                "s1",
                NEWSLETTER,
                Action::Grant,
                Some(one.as_str()),
                Some("2025-01")
            ),
            (
                "s2",
                NEWSLETTER,
                Action::Withdraw,
                Some(two.as_str()),
                Some("2025-01")
            ),
        ]
    );
    // The whole-subject unsubscribe is newer than the grant: it decides.
    let s1: Vec<_> = states.iter().filter(|s| s.subject_id == "s1").collect();
    let decided = relay_ledger::effective(
        s1.iter().find(|s| s.target == NEWSLETTER).copied(),
        s1.iter().find(|s| s.target == "*").copied(),
    )
    .unwrap();
    assert_eq!(decided.action, Action::Withdraw);
}

async fn a_reassertion_sends_the_newest_decision_again_and_nothing_else(url: &str) {
    let l = open(url).await.unwrap();
    let grant = fresh("s1", "newsletter", Action::Grant, 1_000);
    assert_eq!(decide_one(&l, &grant).await, proceed(1));
    l.finish(&[finish(&grant, Status::Applied)]).await.unwrap();
    let again = |c: &Claim| Claim {
        reassert: true,
        ..c.clone()
    };
    // Still the newest: it goes again, and the ledger counts it.
    assert_eq!(decide_one(&l, &again(&grant)).await, proceed(2));
    l.finish(&[finish(&grant, Status::Applied)]).await.unwrap();
    let d = delivery(&report(&l, "s1").await, &grant.key).clone();
    assert_eq!((d.status, d.attempts, d.reasserts), (Status::Applied, 2, 1));

    // A newer withdrawal: the grant's re-assertion does nothing and its row stays applied (not
    // relabelled superseded); the withdrawal's goes.
    let withdrawal = fresh("s1", "newsletter", Action::Withdraw, 2_000);
    assert_eq!(decide_one(&l, &withdrawal).await, proceed(1));
    l.finish(&[finish(&withdrawal, Status::Applied)])
        .await
        .unwrap();
    assert_eq!(
        decide_one(&l, &again(&grant)).await,
        Decision::Duplicate {
            status: Status::Applied
        }
    );
    assert_eq!(decide_one(&l, &again(&withdrawal)).await, proceed(2));
    let r = report(&l, "s1").await;
    assert_eq!(delivery(&r, &grant.key).reasserts, 1);
    assert_eq!(delivery(&r, &grant.key).status, Status::Applied);
    assert_eq!(delivery(&r, &withdrawal.key).reasserts, 1);
    assert_eq!(
        r.state.iter().map(|s| s.event_id).collect::<Vec<_>>(),
        [withdrawal.key.event_id]
    );

    // A whole-subject erasure newer than both: neither purpose decision is re-asserted.
    let erasure = fresh("s1", "*", Action::Erase, 3_000);
    assert_eq!(decide_one(&l, &erasure).await, proceed(1));
    l.finish(&[finish(&erasure, Status::Applied)])
        .await
        .unwrap();
    l.finish(&[finish(&withdrawal, Status::Applied)])
        .await
        .unwrap();
    assert!(matches!(
        decide_one(&l, &again(&withdrawal)).await,
        Decision::Duplicate { .. }
    ));
    // A re-assertion never revives a dead-lettered or superseded delivery.
    let stale = fresh("s1", "newsletter", Action::Grant, 500);
    assert_eq!(decide_one(&l, &stale).await, superseded_by(&erasure));
    assert!(matches!(
        decide_one(&l, &again(&stale)).await,
        Decision::Duplicate {
            status: Status::Superseded
        }
    ));
}

async fn uncertain_bounds_only_move_later_and_expire(url: &str) {
    let l = open(url).await.unwrap();
    // Relative to now: bounds more than a day old are pruned.
    let t = relay_ledger_now();
    let mark = |subject: &str, sink: &str, until_ms: i64| Uncertain {
        subject_id: subject.into(),
        sink: sink.into(),
        until_ms: t + until_ms,
    };
    l.mark_uncertain(&[
        mark("s1", HUBSPOT, 5_000),
        mark("s1", HUBSPOT, 3_000),
        mark("s2", HUBSPOT, 2_000),
        mark("s1", NEWSLETTER, 9_000),
    ])
    .await
    .unwrap();
    l.mark_uncertain(&[mark("s2", HUBSPOT, 1_000)])
        .await
        .unwrap();
    let subjects = ["s1".to_owned(), "s2".to_owned(), "s3".to_owned()];
    let at = |now: i64| {
        let l = l.clone();
        let subjects = subjects.clone();
        async move {
            let mut found: Vec<(String, i64)> = l
                .uncertain(
                    HUBSPOT,
                    &subjects,
                    t + now,
                    &InDoubt {
                        window_ms: 0,
                        exclude: &[],
                    },
                )
                .await
                .unwrap()
                .into_iter()
                .collect();
            found.sort();
            found
        }
    };
    assert_eq!(
        at(1_500).await,
        [("s1".to_owned(), t + 5_000), ("s2".to_owned(), t + 2_000)]
    );
    // A bound is exclusive: at its time the request can no longer land.
    assert_eq!(at(2_000).await, [("s1".to_owned(), t + 5_000)]);
    assert!(at(5_000).await.is_empty());
}

async fn a_delivery_claimed_and_not_answered_makes_its_subject_uncertain(url: &str) {
    let l = open(url).await.unwrap();
    // Someone (another owner, a process that died) claimed a grant and never recorded an answer.
    let grant = fresh("s1", "newsletter", Action::Grant, 1_000);
    assert_eq!(decide_one(&l, &grant).await, proceed(1));
    let subjects = ["s1".to_owned(), "s2".to_owned()];
    let now = relay_ledger_now();
    let window = 60_000;
    let read = |exclude: Vec<Uuid>| {
        let l = l.clone();
        let subjects = subjects.clone();
        async move {
            l.uncertain(
                HUBSPOT,
                &subjects,
                now,
                &InDoubt {
                    window_ms: window,
                    exclude: &exclude,
                },
            )
            .await
            .unwrap()
        }
    };
    let bounds = read(vec![]).await;
    assert_eq!(bounds.len(), 1, "{bounds:?}");
    let until = bounds["s1"];
    assert!(
        until > now && until <= now + window + 5_000,
        "{until} vs {now}"
    );
    // The caller's own claim is not a doubt about someone else's request.
    assert!(read(vec![grant.key.event_id]).await.is_empty());
    // Of unknown fate it stays in doubt; answered, it no longer is.
    l.finish(&[Finish {
        error_class: Some("unknown".into()),
        ..finish(&grant, Status::Retrying)
    }])
    .await
    .unwrap();
    assert_eq!(read(vec![]).await.len(), 1);
    l.finish(&[finish(&grant, Status::Applied)]).await.unwrap();
    assert!(read(vec![]).await.is_empty());
}

fn relay_ledger_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn reconcile_repairs_are_recorded_on_the_decisions_deliveries(url: &str) {
    let l = open(url).await.unwrap();
    let withdrawal = record("s1", "ConsentWithdrawn", &[NEWSLETTER], 100, 1);
    l.log_events(std::slice::from_ref(&withdrawal))
        .await
        .unwrap();
    let done = claim(
        withdrawal.event_id,
        HUBSPOT,
        NEWSLETTER,
        "s1",
        Action::Withdraw,
        100,
    );
    let busy = fresh("s2", NEWSLETTER, Action::Withdraw, 100);
    decide(&l, &[done.clone(), busy.clone()]).await;
    l.finish(&[finish(&done, Status::AlreadyApplied)])
        .await
        .unwrap();
    let repair = |c: &Claim, status| Repair {
        key: c.key.clone(),
        subject_id: c.subject_id.clone(),
        status,
    };
    // A decision whose delivery row is elsewhere (an erasure re-sent to a destination that
    // never had a row for it) gets one.
    let erased = Claim {
        key: DeliveryKey {
            sink: "newsletter.main".into(),
            target: "*".into(),
            ..done.key.clone()
        },
        ..done.clone()
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    let before = relay_ledger::now_ms();
    l.record_repairs(&[
        repair(&done, Status::Applied),
        repair(&done, Status::Applied),
        repair(&busy, Status::Applied),
        repair(&erased, Status::Applied),
    ])
    .await
    .unwrap();
    let rows = report(&l, "s1").await.deliveries;
    let row = |sink: &str| rows.iter().find(|d| d.key.sink == sink).unwrap().clone();
    let repaired = row(HUBSPOT);
    assert_eq!(
        (repaired.status, repaired.reasserts, repaired.repairs),
        (Status::AlreadyApplied, 0, 2),
        "twice in one call: each counted; what the delivery path did stays"
    );
    assert!(repaired.updated_at_ms < before);
    assert!(repaired.repaired_at_ms.unwrap() >= before);
    let inserted = row("newsletter.main");
    assert_eq!(
        (
            inserted.key.target.as_str(),
            inserted.status,
            inserted.repairs
        ),
        ("*", Status::Applied, 1)
    );
    let busy_row = report(&l, "s2").await.deliveries.remove(0);
    assert_eq!(
        (busy_row.status, busy_row.reasserts, busy_row.repairs),
        (Status::InFlight, 0, 1),
        "a delivery run is working on keeps its state; the repair is counted beside it"
    );
    // The vendor's report of the repair is the relay's own change (an echo); a report of
    // another time is not.
    let now = relay_ledger::now_ms();
    let echoes = l
        .withdrawals_delivered_between("s1", now - 60_000, now + 60_000, Uuid::new_v4())
        .await
        .unwrap();
    assert!(
        echoes.iter().any(|d| d.sink == "newsletter.main"),
        "{echoes:?}"
    );
    let later = l
        .withdrawals_delivered_between("s1", now + 60_000, now + 120_000, Uuid::new_v4())
        .await
        .unwrap();
    assert!(later.is_empty(), "{later:?}");
    l.record_repairs(&[]).await.unwrap();
}

async fn reconcile_runs_are_remembered(url: &str) {
    let l = open(url).await.unwrap();
    assert_eq!(l.reconcile_finished("hubspot").await.unwrap(), None);
    l.record_reconcile_finished("hubspot", 2_000).await.unwrap();
    l.record_reconcile_finished("audiences.meta", 5_000)
        .await
        .unwrap();
    // The latest record wins, even an earlier time: one written by a clock that was ahead is
    // corrected by the next run.
    l.record_reconcile_finished("hubspot", 1_000).await.unwrap();
    assert_eq!(l.reconcile_finished("hubspot").await.unwrap(), Some(1_000));
    l.record_reconcile_finished("hubspot", 3_000).await.unwrap();
    l.close().await;
    let l = open(url).await.unwrap();
    assert_eq!(l.reconcile_finished("hubspot").await.unwrap(), Some(3_000));
    assert_eq!(
        l.reconcile_finished("audiences.meta").await.unwrap(),
        Some(5_000)
    );
}
