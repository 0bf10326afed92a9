//! The engine without a broker: an in-memory ledger and outbox, and a sink that answers from a
//! script. The clock is tokio's paused one, so backoff costs no wall time.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relay_delivery::{BoxFuture, Outcome, Sink, SinkItem};
use relay_events::{ConsentEvent, Contact, EventKind, Scope};
use relay_ledger::{DeliveryKey, MemoryLedger, Status};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Engine;
use crate::config::{EventRules, RetryConfig};
use crate::message::{now_ms, Message, Origin, ParkTicket};
use crate::outbox::MemoryOutbox;
use crate::route::Routes;
use crate::telemetry::Telemetry;

const SINK: &str = "hubspot";
const PURPOSE: &str = "newsletter";

type Script = dyn Fn(usize, &[SinkItem]) -> Vec<Outcome> + Send + Sync;

/// A sink that answers each call from `script` (call number from 0, the items) and records the
/// subjects of every call.
struct Scripted {
    script: Box<Script>,
    calls: Mutex<Vec<Vec<String>>>,
}

impl Scripted {
    fn new(script: impl Fn(usize, &[SinkItem]) -> Vec<Outcome> + Send + Sync + 'static) -> Self {
        Scripted {
            script: Box::new(script),
            calls: Mutex::new(Vec::new()),
        }
    }

    fn calls(&self) -> Vec<Vec<String>> {
        self.calls.lock().unwrap().clone()
    }
}

impl Sink for Scripted {
    fn name(&self) -> &str {
        SINK
    }

    fn requires_email(&self) -> bool {
        true
    }

    fn deliver<'a>(&'a self, items: &'a [SinkItem]) -> BoxFuture<'a, Vec<Outcome>> {
        let n = {
            let mut calls = self.calls.lock().unwrap();
            calls.push(items.iter().map(|i| i.event.subject_id.clone()).collect());
            calls.len() - 1
        };
        let outcomes = (self.script)(n, items);
        Box::pin(async move { outcomes })
    }
}

/// A batch API that fails as a whole with a 500 whenever `poisoned` is among its inputs.
fn poisoned_by(poisoned: &'static str) -> Scripted {
    Scripted::new(move |_, items| {
        if items.iter().any(|i| i.event.subject_id == poisoned) {
            vec![Outcome::retryable("HTTP 500: internal error"); items.len()]
        } else {
            vec![Outcome::Applied; items.len()]
        }
    })
}

struct Setup {
    engine: Engine<MemoryLedger>,
    ledger: Arc<MemoryLedger>,
    outbox: Arc<MemoryOutbox>,
    sink: Arc<Scripted>,
}

fn retry() -> RetryConfig {
    RetryConfig {
        initial_delay_ms: 100,
        max_delay_ms: 2_000,
        item_attempts: 3,
        ..RetryConfig::default()
    }
}

fn setup(sink: Scripted, retry: RetryConfig) -> Setup {
    let ledger = Arc::new(MemoryLedger::new());
    let outbox = Arc::new(MemoryOutbox::default());
    let sink = Arc::new(sink);
    let routes = Routes {
        known: BTreeSet::from([PURPOSE.to_owned()]),
        sink: BTreeSet::from([PURPOSE.to_owned()]),
        requires_email: true,
    };
    let engine = Engine::new(
        sink.clone(),
        routes,
        retry,
        ledger.clone(),
        outbox.clone(),
        Telemetry::new(),
        EventRules::default(),
    );
    Setup {
        engine,
        ledger,
        outbox,
        sink,
    }
}

/// Another engine of the same destination, ledger and outbox, with `sink` answering: the same
/// relay after the downstream changed its mind (fixed, or refusing).
fn same_ledger(s: &Setup, sink: Arc<dyn Sink>, retry: RetryConfig) -> Engine<MemoryLedger> {
    Engine::new(
        sink,
        s.engine.routes.clone(),
        retry,
        s.ledger.clone(),
        s.outbox.clone(),
        Telemetry::new(),
        EventRules::default(),
    )
}

fn event(kind: EventKind, subject: &str, at: i64) -> Arc<ConsentEvent> {
    Arc::new(ConsentEvent {
        event_id: Uuid::new_v4(),
        kind,
        subject_id: subject.to_owned(),
        occurred_at_ms: at,
        source: "test".to_owned(),
        notice_version: Some("v1".to_owned()),
        scope: Scope::Purposes(vec![PURPOSE.to_owned()]),
        contact: Contact {
            email: Some(format!("{subject}@example.de")),
            ..Contact::default()
        },
    })
}

fn message(offset: i64, event: &Arc<ConsentEvent>) -> Message {
    Message {
        origin: Origin {
            topic: "consent.events".to_owned(),
            partition: 0,
            offset,
        },
        key: Some(event.subject_id.as_bytes().to_vec()),
        payload: vec![0xc3, 0x01],
        produced_at: None,
        decoded: Ok(event.clone()),
        replay_for: None,
        ticket: None,
    }
}

fn key(event: &ConsentEvent) -> DeliveryKey {
    DeliveryKey {
        event_id: event.event_id,
        sink: SINK.to_owned(),
        target: PURPOSE.to_owned(),
    }
}

fn grants(n: usize, at: i64) -> Vec<Arc<ConsentEvent>> {
    (0..n)
        .map(|i| event(EventKind::ConsentGranted, &format!("s{i}"), at))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_poisoned_item_is_isolated_and_parked_while_the_rest_of_its_batch_is_applied() {
    let s = setup(poisoned_by("s37"), retry());
    let events = grants(100, 1_000);
    let batch: Vec<Message> = events
        .iter()
        .enumerate()
        .map(|(i, e)| message(i as i64, e))
        .collect();
    s.engine
        .process(&batch, &CancellationToken::new())
        .await
        .expect("the batch becomes durable");

    for e in &events {
        let want = if e.subject_id == "s37" {
            Status::Parked
        } else {
            Status::Applied
        };
        assert_eq!(s.ledger.status(&key(e)), Some(want), "{}", e.subject_id);
    }
    let parked = s.outbox.parked.lock().unwrap().clone();
    assert_eq!(parked.len(), 1, "one copy on the retry topic");
    let (copy, sink, ticket) = &parked[0];
    assert_eq!((copy.origin.offset, sink.as_str()), (37, SINK));
    assert_eq!(ticket.parks, 1);
    assert!(ticket.due_ms > now_ms(), "due later, not at once");
    // Isolation by halving: about log2(100) splits, then the item alone for its attempts.
    let calls = s.sink.calls();
    assert!(calls.len() <= 20, "{} calls", calls.len());
    assert_eq!(calls.last().unwrap(), &["s37".to_owned()]);
    assert!(s.outbox.dead_letters.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_parked_item_is_superseded_by_a_newer_decision_and_never_sent_again() {
    let s = setup(poisoned_by("p"), retry());
    let grant = event(EventKind::ConsentGranted, "p", 1_000);
    let cancel = CancellationToken::new();
    s.engine
        .process(&[message(0, &grant)], &cancel)
        .await
        .unwrap();
    assert_eq!(s.ledger.status(&key(&grant)), Some(Status::Parked));
    let (mut copy, _, ticket) = s.outbox.parked.lock().unwrap()[0].clone();
    copy.ticket = Some(ticket);

    // The person withdraws meanwhile; the withdrawal is applied (the sink accepts it once the
    // poisoned grant is no longer in the request).
    let sink_ok = setup(
        Scripted::new(|_, i| vec![Outcome::Applied; i.len()]),
        retry(),
    );
    let withdrawal = event(EventKind::ConsentWithdrawn, "p", 2_000);
    let engine = same_ledger(&s, sink_ok.sink.clone(), retry());
    engine
        .process(&[message(1, &withdrawal)], &cancel)
        .await
        .unwrap();
    assert_eq!(s.ledger.status(&key(&withdrawal)), Some(Status::Applied));

    // The parked grant comes back: superseded, not sent.
    engine.process(&[copy], &cancel).await.unwrap();
    assert_eq!(s.ledger.status(&key(&grant)), Some(Status::Superseded));
    assert_eq!(sink_ok.sink.calls(), vec![vec!["p".to_owned()]]);
}

#[tokio::test(start_paused = true)]
async fn a_parked_item_that_keeps_failing_is_dead_lettered_once_its_total_budget_is_spent() {
    let s = setup(poisoned_by("p"), retry());
    let grant = event(EventKind::ConsentGranted, "p", 1_000);
    let cancel = CancellationToken::new();
    s.engine
        .process(&[message(0, &grant)], &cancel)
        .await
        .unwrap();
    let (mut copy, _, ticket) = s.outbox.parked.lock().unwrap()[0].clone();

    // Parked again while within the total budget: a new copy, a longer delay.
    copy.ticket = Some(ticket.clone());
    s.engine.process(&[copy.clone()], &cancel).await.unwrap();
    let again = s.outbox.parked.lock().unwrap()[1].2.clone();
    assert_eq!(again.parks, 2);
    assert_eq!(s.ledger.status(&key(&grant)), Some(Status::Parked));

    // The older copy is stale now: it does nothing.
    let calls = s.sink.calls().len();
    s.engine.process(&[copy.clone()], &cancel).await.unwrap();
    assert_eq!(s.sink.calls().len(), calls, "a stale copy sends nothing");

    // The live copy, a day after the first failure: dead-lettered with its reason.
    copy.ticket = Some(ParkTicket {
        first_failed_ms: now_ms() - 25 * 3_600_000,
        ..again
    });
    s.engine.process(&[copy], &cancel).await.unwrap();
    assert_eq!(s.ledger.status(&key(&grant)), Some(Status::DeadLettered));
    let dead = s.outbox.dead_letters.lock().unwrap().clone();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].2.code, relay_events::ErrorCode::RetriesExhausted);
    assert!(
        dead[0].2.message.contains("HTTP 500"),
        "{}",
        dead[0].2.message
    );
}

#[tokio::test(start_paused = true)]
async fn an_unavailable_destination_pauses_the_batch_uncharged_and_honours_retry_after() {
    let s = setup(
        Scripted::new(|n, items| {
            if n < 4 {
                vec![
                    Outcome::Unavailable {
                        after: Some(Duration::from_secs(30)),
                        reason: "HTTP 429: slow down".into()
                    };
                    items.len()
                ]
            } else {
                vec![Outcome::Applied; items.len()]
            }
        }),
        retry(),
    );
    let events = grants(10, 1_000);
    let batch: Vec<Message> = events
        .iter()
        .enumerate()
        .map(|(i, e)| message(i as i64, e))
        .collect();
    let started = tokio::time::Instant::now();
    s.engine
        .process(&batch, &CancellationToken::new())
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(120) && waited < Duration::from_secs(125),
        "four pauses of exactly Retry-After (30 s), not more: {waited:?}"
    );
    assert!(
        s.outbox.parked.lock().unwrap().is_empty(),
        "nobody is blamed"
    );
    assert_eq!(
        s.sink.calls().len(),
        5,
        "never split: one request per attempt"
    );
    for e in &events {
        assert_eq!(s.ledger.status(&key(e)), Some(Status::Applied));
    }
}

#[tokio::test(start_paused = true)]
async fn a_destination_failing_every_request_is_an_outage_not_a_poison() {
    // Fails everything for 20 calls, then recovers: the items wait, they are not parked.
    let s = setup(
        Scripted::new(|n, items| {
            if n < 20 {
                vec![Outcome::retryable("HTTP 503: down"); items.len()]
            } else {
                vec![Outcome::Applied; items.len()]
            }
        }),
        retry(),
    );
    let events = grants(8, 1_000);
    let batch: Vec<Message> = events
        .iter()
        .enumerate()
        .map(|(i, e)| message(i as i64, e))
        .collect();
    s.engine
        .process(&batch, &CancellationToken::new())
        .await
        .unwrap();
    assert!(s.outbox.parked.lock().unwrap().is_empty());
    for e in &events {
        assert_eq!(s.ledger.status(&key(e)), Some(Status::Applied));
    }
    // Split once to tell a poison from an outage, then two requests per attempt, not more, as
    // long as the outage lasts.
    let sizes: Vec<usize> = s.sink.calls().iter().map(Vec::len).collect();
    assert_eq!(sizes[0], 8, "{sizes:?}");
    assert!(sizes[1..20].iter().all(|n| *n == 4), "{sizes:?}");
}

#[tokio::test(start_paused = true)]
async fn a_refusing_destination_opens_the_circuit_and_nothing_is_dead_lettered() {
    let s = setup(
        Scripted::new(|n, items| {
            if n < 3 {
                vec![
                    Outcome::Refused {
                        reason: "HTTP 401: bad token".into()
                    };
                    items.len()
                ]
            } else {
                vec![Outcome::Applied; items.len()]
            }
        }),
        retry(),
    );
    let e = event(EventKind::ConsentWithdrawn, "w", 1_000);
    s.engine
        .process(&[message(0, &e)], &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(s.ledger.status(&key(&e)), Some(Status::Applied));
    assert!(s.outbox.dead_letters.lock().unwrap().is_empty());
    assert!(s.outbox.parked.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn of_two_copies_of_one_parked_event_only_the_live_one_acts() {
    let s = setup(poisoned_by("p"), retry());
    let grant = event(EventKind::ConsentGranted, "p", 1_000);
    let cancel = CancellationToken::new();
    s.engine
        .process(&[message(0, &grant)], &cancel)
        .await
        .unwrap();
    let (copy, _, first) = s.outbox.parked.lock().unwrap()[0].clone();
    let mut stale = copy.clone();
    stale.ticket = Some(first.clone());
    // Parked again (a crash after the copy was written redelivered the original).
    s.engine
        .process(&[message(0, &grant)], &cancel)
        .await
        .unwrap();
    let second = s.outbox.parked.lock().unwrap()[1].2.clone();
    let mut live = copy;
    live.ticket = Some(second.clone());

    let fixed = setup(
        Scripted::new(|_, i| vec![Outcome::Applied; i.len()]),
        retry(),
    );
    let engine = same_ledger(&s, fixed.sink.clone(), retry());
    engine.process(&[stale, live], &cancel).await.unwrap();
    assert_eq!(s.ledger.status(&key(&grant)), Some(Status::Applied));
    assert_eq!(
        fixed.sink.calls().len(),
        1,
        "applied once, by the live copy"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_abandons_a_waiting_batch_without_an_outcome() {
    let s = setup(
        Scripted::new(|_, items| vec![Outcome::unavailable("connection refused"); items.len()]),
        retry(),
    );
    let e = event(EventKind::ConsentWithdrawn, "w", 1_000);
    let cancel = CancellationToken::new();
    let stopper = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        stopper.cancel();
    });
    assert!(s.engine.process(&[message(0, &e)], &cancel).await.is_err());
    assert_eq!(s.ledger.status(&key(&e)), Some(Status::Retrying));
}

/// A sink that takes 100 ms per call and records, per subject, how many of its calls overlapped.
struct Slow {
    in_flight: Mutex<std::collections::BTreeMap<String, usize>>,
    overlaps: Mutex<Vec<String>>,
    poisoned: &'static str,
    /// How long each request takes.
    delay: Duration,
}

impl Sink for Slow {
    fn name(&self) -> &str {
        SINK
    }

    fn requires_email(&self) -> bool {
        true
    }

    fn deliver<'a>(&'a self, items: &'a [SinkItem]) -> BoxFuture<'a, Vec<Outcome>> {
        Box::pin(async move {
            let subjects: BTreeSet<String> =
                items.iter().map(|i| i.event.subject_id.clone()).collect();
            for s in &subjects {
                let mut in_flight = self.in_flight.lock().unwrap();
                let n = in_flight.entry(s.clone()).or_default();
                *n += 1;
                if *n > 1 {
                    self.overlaps.lock().unwrap().push(s.clone());
                }
            }
            tokio::time::sleep(self.delay).await;
            for s in &subjects {
                *self.in_flight.lock().unwrap().get_mut(s).unwrap() -= 1;
            }
            if subjects.contains(self.poisoned) {
                vec![Outcome::retryable("HTTP 500: internal error"); items.len()]
            } else {
                vec![Outcome::Applied; items.len()]
            }
        })
    }
}

fn engine_with(sink: Arc<dyn Sink>) -> (Engine<MemoryLedger>, Arc<MemoryLedger>) {
    let ledger = Arc::new(MemoryLedger::new());
    let routes = Routes {
        known: BTreeSet::from([PURPOSE.to_owned()]),
        sink: BTreeSet::from([PURPOSE.to_owned()]),
        requires_email: true,
    };
    let engine = Engine::new(
        sink,
        routes,
        retry(),
        ledger.clone(),
        Arc::new(MemoryOutbox::default()),
        Telemetry::new(),
        EventRules::default(),
    );
    (engine, ledger)
}

#[tokio::test(start_paused = true)]
async fn a_batch_waiting_for_an_items_retries_does_not_hold_back_the_next_one() {
    let sink = Arc::new(Slow {
        in_flight: Default::default(),
        overlaps: Default::default(),
        delay: Duration::from_millis(100),
        poisoned: "p",
    });
    let (engine, ledger) = engine_with(sink.clone());
    let cancel = CancellationToken::new();
    let first = [
        message(0, &event(EventKind::ConsentGranted, "p", 1_000)),
        message(1, &event(EventKind::ConsentGranted, "a", 1_000)),
    ];
    let withdrawal = event(EventKind::ConsentWithdrawn, "b", 1_000);
    let second = [message(2, &withdrawal)];
    let started = tokio::time::Instant::now();
    let (a, b) = tokio::join!(
        async {
            engine.process(&first, &cancel).await.unwrap();
            started.elapsed()
        },
        async {
            engine.process(&second, &cancel).await.unwrap();
            started.elapsed()
        }
    );
    assert_eq!(ledger.status(&key(&withdrawal)), Some(Status::Applied));
    assert!(
        b < Duration::from_millis(250) && a > b * 3,
        "the withdrawal took {b:?}, the batch with the poisoned item {a:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn one_persons_items_are_sent_by_one_batch_at_a_time() {
    let sink = Arc::new(Slow {
        in_flight: Default::default(),
        overlaps: Default::default(),
        delay: Duration::from_millis(100),
        poisoned: "nobody",
    });
    let (engine, ledger) = engine_with(sink.clone());
    let cancel = CancellationToken::new();
    let grant = event(EventKind::ConsentGranted, "s", 1_000);
    let withdrawal = event(EventKind::ConsentWithdrawn, "s", 2_000);
    let other = event(EventKind::ConsentGranted, "o", 1_000);
    let first = [message(0, &grant), message(1, &other)];
    let second = [message(2, &withdrawal)];
    let (a, b) = tokio::join!(
        engine.process(&first, &cancel),
        engine.process(&second, &cancel)
    );
    a.unwrap();
    b.unwrap();
    assert!(
        sink.overlaps.lock().unwrap().is_empty(),
        "never two requests about s at once"
    );
    // Whichever was claimed first, the newest decision stands.
    assert_eq!(ledger.status(&key(&withdrawal)), Some(Status::Applied));
    assert!(matches!(
        ledger.status(&key(&grant)),
        Some(Status::Applied | Status::Superseded)
    ));
}

#[tokio::test(start_paused = true)]
async fn a_persons_item_waiting_on_a_stuck_batch_is_parked_not_waited_for() {
    let sink = Arc::new(Slow {
        in_flight: Default::default(),
        overlaps: Default::default(),
        delay: Duration::from_millis(100),
        poisoned: "p",
    });
    let ledger = Arc::new(MemoryLedger::new());
    let outbox = Arc::new(MemoryOutbox::default());
    let engine = Engine::new(
        sink.clone(),
        Routes {
            known: BTreeSet::from([PURPOSE.to_owned()]),
            sink: BTreeSet::from([PURPOSE.to_owned()]),
            requires_email: true,
        },
        retry(),
        ledger.clone(),
        outbox.clone(),
        Telemetry::new(),
        EventRules::default(),
    );
    let cancel = CancellationToken::new();
    let stuck = [message(0, &event(EventKind::ConsentGranted, "p", 1_000))];
    let newer = event(EventKind::ConsentWithdrawn, "p", 2_000);
    let other = event(EventKind::ConsentWithdrawn, "o", 2_000);
    let next = [message(1, &newer), message(2, &other)];
    let started = tokio::time::Instant::now();
    let (a, b) = tokio::join!(
        async {
            engine.process(&stuck, &cancel).await.unwrap();
            started.elapsed()
        },
        async {
            // Arrives while the first batch is retrying p's grant.
            tokio::time::sleep(Duration::from_millis(50)).await;
            engine.process(&next, &cancel).await.unwrap();
            started.elapsed()
        }
    );
    assert!(b < Duration::from_millis(600), "the next batch took {b:?}");
    assert!(a > b, "{a:?} vs {b:?}");
    assert_eq!(ledger.status(&key(&other)), Some(Status::Applied));
    assert_eq!(ledger.status(&key(&newer)), Some(Status::Parked));
    let parked = outbox.parked.lock().unwrap();
    assert!(parked
        .iter()
        .any(|(m, _, t)| m.origin.offset == 1 && t.reason.starts_with("deferred")));
}

/// Under a backlog a healthy batch can be slow (the ledger, the downstream): a person's next item
/// waits for it instead of being parked, which would only add work.
#[tokio::test(start_paused = true)]
async fn a_persons_item_waiting_on_a_slow_but_healthy_batch_waits_and_is_not_parked() {
    let sink = Arc::new(Slow {
        in_flight: Default::default(),
        overlaps: Default::default(),
        delay: Duration::from_secs(2),
        poisoned: "nobody",
    });
    let (engine, ledger) = engine_with(sink.clone());
    let cancel = CancellationToken::new();
    let grant = event(EventKind::ConsentGranted, "p", 1_000);
    let newer = event(EventKind::ConsentWithdrawn, "p", 2_000);
    let (first, second) = (message(0, &grant), message(1, &newer));
    tokio::join!(
        async {
            engine
                .process(std::slice::from_ref(&first), &cancel)
                .await
                .unwrap()
        },
        async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            engine
                .process(std::slice::from_ref(&second), &cancel)
                .await
                .unwrap()
        }
    );
    assert_eq!(ledger.status(&key(&grant)), Some(Status::Applied));
    assert_eq!(ledger.status(&key(&newer)), Some(Status::Applied));
    assert!(
        sink.overlaps.lock().unwrap().is_empty(),
        "one batch at a time per person"
    );
}

/// A sink that takes `delay` per call and records the subjects of each call.
struct Timed {
    delay: Duration,
    calls: Mutex<Vec<Vec<String>>>,
}

impl Sink for Timed {
    fn name(&self) -> &str {
        SINK
    }

    fn requires_email(&self) -> bool {
        true
    }

    fn deliver<'a>(&'a self, items: &'a [SinkItem]) -> BoxFuture<'a, Vec<Outcome>> {
        self.calls
            .lock()
            .unwrap()
            .push(items.iter().map(|i| i.event.subject_id.clone()).collect());
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            vec![Outcome::Applied; items.len()]
        })
    }
}

/// Under a backlog, batches side by side share people: the items one batch waited for go out
/// together once the holder lets go of them, not one request per person.
#[tokio::test(start_paused = true)]
async fn people_freed_together_by_another_batch_go_out_in_one_request() {
    let sink = Arc::new(Timed {
        delay: Duration::from_millis(100),
        calls: Mutex::default(),
    });
    let (engine, ledger) = engine_with(sink.clone());
    let cancel = CancellationToken::new();
    let people: Vec<String> = (0..10).map(|n| format!("s{n}")).collect();
    let first: Vec<Message> = people
        .iter()
        .enumerate()
        .map(|(i, p)| message(i as i64, &event(EventKind::ConsentGranted, p, 1_000)))
        .collect();
    let withdrawals: Vec<Arc<ConsentEvent>> = people
        .iter()
        .map(|p| event(EventKind::ConsentWithdrawn, p, 2_000))
        .collect();
    let second: Vec<Message> = withdrawals
        .iter()
        .enumerate()
        .map(|(i, e)| message(10 + i as i64, e))
        .collect();
    tokio::join!(
        async { engine.process(&first, &cancel).await.unwrap() },
        async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            engine.process(&second, &cancel).await.unwrap()
        }
    );
    let calls = sink.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[1].len(), 10, "{calls:?}");
    for w in &withdrawals {
        assert_eq!(ledger.status(&key(w)), Some(Status::Applied));
    }
}

#[tokio::test(start_paused = true)]
async fn a_grant_dated_in_the_future_is_rejected_and_never_outranks_a_withdrawal() {
    let s = setup(
        Scripted::new(|_, i| vec![Outcome::Applied; i.len()]),
        retry(),
    );
    let cancel = CancellationToken::new();
    // Year 10000, and a quarter of an hour ahead of the relay's clock.
    let far = event(EventKind::ConsentGranted, "f", 253_402_300_800_000);
    let ahead = event(EventKind::ConsentGranted, "g", now_ms() + 15 * 60_000);
    s.engine
        .process(&[message(0, &far), message(1, &ahead)], &cancel)
        .await
        .unwrap();
    let dead = s.outbox.dead_letters.lock().unwrap().clone();
    // (The decoder already refuses year 10000 as invalid_occurred_at; the engine's own check
    // stops it all the same.)
    let codes: Vec<_> = dead.iter().map(|(_, _, why)| why.code).collect();
    assert_eq!(codes, [relay_events::ErrorCode::FutureOccurredAt; 2]);
    assert!(s.sink.calls().is_empty(), "neither reached the destination");
    assert_eq!(s.ledger.status(&key(&ahead)), None, "never claimed");
    // A withdrawal of now still takes effect.
    let withdrawal = event(EventKind::ConsentWithdrawn, "g", now_ms());
    s.engine
        .process(&[message(2, &withdrawal)], &cancel)
        .await
        .unwrap();
    assert_eq!(s.ledger.status(&key(&withdrawal)), Some(Status::Applied));
}

/// Found while writing the operators' walkthrough: a withdrawal dead-lettered for want of an
/// email entered the version rule, and its corrected copy (another event id, the same time, now
/// with the email) was then dropped as superseded: the person stayed in the audience.
#[tokio::test(start_paused = true)]
async fn a_corrected_withdrawal_of_one_without_an_email_is_applied() {
    let s = setup(
        Scripted::new(|_, i| vec![Outcome::Applied; i.len()]),
        retry(),
    );
    let cancel = CancellationToken::new();
    let grant = event(EventKind::ConsentGranted, "w", 1_000);
    s.engine
        .process(&[message(0, &grant)], &cancel)
        .await
        .unwrap();
    let mut without = (*event(EventKind::ConsentWithdrawn, "w", 2_000)).clone();
    without.contact.email = None;
    let without = Arc::new(without);
    s.engine
        .process(&[message(1, &without)], &cancel)
        .await
        .unwrap();
    let dead = s.outbox.dead_letters.lock().unwrap().clone();
    assert_eq!(dead.len(), 1, "dead-lettered: no email");
    let corrected = event(EventKind::ConsentWithdrawn, "w", 2_000);
    s.engine
        .process(&[message(2, &corrected)], &cancel)
        .await
        .unwrap();
    assert_eq!(s.ledger.status(&key(&corrected)), Some(Status::Applied));
    assert_eq!(
        s.sink.calls().len(),
        2,
        "the grant, then the corrected withdrawal"
    );
    // A grant of the same time as that withdrawal still loses.
    let tied = event(EventKind::ConsentGranted, "w", 2_000);
    s.engine
        .process(&[message(3, &tied)], &cancel)
        .await
        .unwrap();
    assert_eq!(s.ledger.status(&key(&tied)), Some(Status::Superseded));
}

#[tokio::test(start_paused = true)]
async fn the_same_event_id_with_another_payload_is_rejected_and_the_first_decision_stands() {
    let s = setup(
        Scripted::new(|_, i| vec![Outcome::Applied; i.len()]),
        retry(),
    );
    let cancel = CancellationToken::new();
    let first = event(EventKind::ConsentWithdrawn, "d", 1_000);
    s.engine
        .process(&[message(0, &first)], &cancel)
        .await
        .unwrap();
    // A redelivery (same payload) is a plain duplicate.
    s.engine
        .process(&[message(0, &first)], &cancel)
        .await
        .unwrap();
    assert!(s.outbox.dead_letters.lock().unwrap().is_empty());
    // The same id, another payload (here a grant dated later): rejected, not applied.
    let mut forged = (*first).clone();
    forged.kind = EventKind::ConsentGranted;
    forged.occurred_at_ms = 2_000;
    let forged = Arc::new(forged);
    s.engine
        .process(&[message(1, &forged)], &cancel)
        .await
        .unwrap();
    let dead = s.outbox.dead_letters.lock().unwrap().clone();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].2.code,
        relay_events::ErrorCode::ConflictingDuplicate
    );
    assert_eq!(dead[0].0.origin.offset, 1);
    assert_eq!(s.sink.calls().len(), 1, "only the first was sent");
    assert_eq!(s.ledger.status(&key(&first)), Some(Status::Applied));
    let report = relay_ledger::Ledger::subject_report(s.ledger.as_ref(), "d")
        .await
        .unwrap();
    assert_eq!(report.consent_log.len(), 1);
    assert_eq!(report.consent_log[0].kind, "ConsentWithdrawn");
    assert_eq!(report.rejections.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_old_event_is_applied_and_marked_late() {
    let s = setup(
        Scripted::new(|_, i| vec![Outcome::Applied; i.len()]),
        retry(),
    );
    let old = event(EventKind::ConsentGranted, "o", 1_000);
    let recent = event(EventKind::ConsentGranted, "r", now_ms() - 1_000);
    s.engine
        .process(
            &[message(0, &old), message(1, &recent)],
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(s.ledger.status(&key(&old)), Some(Status::Applied));
    let late = |subject: &str| {
        let ledger = s.ledger.clone();
        let subject = subject.to_owned();
        async move {
            relay_ledger::Ledger::subject_report(ledger.as_ref(), &subject)
                .await
                .unwrap()
                .consent_log[0]
                .late
        }
    };
    assert!(late("o").await);
    assert!(!late("r").await);
}

#[tokio::test]
async fn the_consent_log_keeps_the_hashes_reconcile_needs_and_never_the_address() {
    let s = setup(
        Scripted::new(|_, i| vec![Outcome::Applied; i.len()]),
        retry(),
    );
    let mut gmail = (*event(EventKind::ConsentWithdrawn, "g", now_ms())).clone();
    gmail.contact.email = Some("Jo.Doe+news@gmail.com".to_owned());
    let gmail = Arc::new(gmail);
    s.engine
        .process(&[message(0, &gmail)], &CancellationToken::new())
        .await
        .unwrap();
    let report = relay_ledger::Ledger::subject_report(s.ledger.as_ref(), "g")
        .await
        .unwrap();
    let logged = &report.consent_log[0];
    let hash = |normalized: &str| relay_events::normalize::sha256_hex(normalized);
    assert_eq!(
        logged.email_sha256.as_deref(),
        Some(hash("jo.doe+news@gmail.com").as_str())
    );
    assert_eq!(
        logged.google_email_sha256.as_deref(),
        Some(hash("jodoe+news@gmail.com").as_str())
    );
    assert_eq!(
        logged.google_email_plus_sha256.as_deref(),
        Some(hash("jodoe@gmail.com").as_str())
    );
    assert!(!format!("{logged:?}").contains("gmail"));
}

/// The margin is wall-clock time (the ledger's bounds are): long enough that a loaded machine
/// does not pass it before the test looks, short enough to wait out.
const LATE_LANDING_MS: u64 = 1_500;

fn reasserting_retry() -> RetryConfig {
    RetryConfig {
        late_landing_ms: LATE_LANDING_MS,
        ..retry()
    }
}

fn wait_out_the_margin() {
    std::thread::sleep(Duration::from_millis(LATE_LANDING_MS + 100));
}

/// The copies on the retry topic so far, as the parked consumer would hand them back.
fn copies(s: &Setup) -> Vec<(Message, ParkTicket)> {
    s.outbox
        .parked
        .lock()
        .unwrap()
        .iter()
        .map(|(m, _, t)| {
            let mut m = m.clone();
            m.ticket = Some(t.clone());
            (m, t.clone())
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn after_a_grant_of_unknown_fate_the_newest_decision_is_reasserted_once_it_cannot_land() {
    // The first request times out (the downstream may still apply it); everything else works.
    let s = setup(
        Scripted::new(|n, items| {
            if n == 0 {
                vec![
                    Outcome::Unknown {
                        reason: "transport error: timeout".into()
                    };
                    items.len()
                ]
            } else {
                vec![Outcome::Applied; items.len()]
            }
        }),
        reasserting_retry(),
    );
    let cancel = CancellationToken::new();
    let grant = event(EventKind::ConsentGranted, "p", 1_000);
    let withdrawal = event(EventKind::ConsentWithdrawn, "p", 2_000);
    s.engine
        .process(&[message(0, &grant)], &cancel)
        .await
        .unwrap();
    assert_eq!(s.ledger.status(&key(&grant)), Some(Status::Applied));
    s.engine
        .process(&[message(1, &withdrawal)], &cancel)
        .await
        .unwrap();
    assert_eq!(s.ledger.status(&key(&withdrawal)), Some(Status::Applied));
    assert_eq!(
        s.sink.calls().len(),
        3,
        "the grant twice, the withdrawal once"
    );

    // Both were applied while the first request could still land: each has a re-assertion copy,
    // due when it no longer can.
    let due = copies(&s);
    assert_eq!(due.len(), 2);
    for (m, t) in &due {
        assert!(t.reassert, "{t:?}");
        assert!(
            t.due_ms > now_ms() && t.due_ms <= now_ms() + LATE_LANDING_MS as i64,
            "{t:?}"
        );
        assert_eq!(m.ticket.as_ref().unwrap().due_ms, t.due_ms);
    }
    wait_out_the_margin();

    // The grant's copy does nothing (a newer decision exists); the withdrawal's goes again, and
    // schedules nothing more: the bound has passed.
    let calls = s.sink.calls().len();
    s.engine
        .process(&[due[0].0.clone()], &cancel)
        .await
        .unwrap();
    assert_eq!(
        s.sink.calls().len(),
        calls,
        "the stale grant is not re-asserted"
    );
    s.engine
        .process(&[due[1].0.clone()], &cancel)
        .await
        .unwrap();
    assert_eq!(s.sink.calls().len(), calls + 1, "the withdrawal goes again");
    assert_eq!(copies(&s).len(), 2, "no further copy");
    let report = relay_ledger::Ledger::subject_report(&*s.ledger, "p")
        .await
        .unwrap();
    let row = |e: &ConsentEvent| {
        report
            .deliveries
            .iter()
            .find(|d| d.key == key(e))
            .unwrap()
            .clone()
    };
    assert_eq!(row(&withdrawal).reasserts, 1);
    assert_eq!(row(&withdrawal).status, Status::Applied);
    assert_eq!(row(&grant).reasserts, 0);
    assert_eq!(row(&grant).status, Status::Applied);
}

#[tokio::test(start_paused = true)]
async fn a_delivery_claimed_before_by_someone_else_counts_as_possibly_in_flight() {
    let s = setup(
        Scripted::new(|_, items| vec![Outcome::Applied; items.len()]),
        reasserting_retry(),
    );
    let grant = event(EventKind::ConsentGranted, "p", 1_000);
    // Another owner (or a process that died) claimed it and never recorded an outcome.
    let claim = relay_ledger::Claim {
        key: key(&grant),
        subject_id: "p".into(),
        action: relay_events::Action::Grant,
        occurred_at_ms: 1_000,
        replay: false,
        ticket: None,
        reassert: false,
    };
    relay_ledger::Ledger::claim(&*s.ledger, &[claim])
        .await
        .unwrap();
    s.engine
        .process(&[message(0, &grant)], &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(s.ledger.status(&key(&grant)), Some(Status::Applied));
    let due = copies(&s);
    assert_eq!(due.len(), 1, "the redelivered grant is re-asserted later");
    assert!(due[0].1.reassert);
}

#[tokio::test(start_paused = true)]
async fn without_a_request_of_unknown_fate_nothing_is_reasserted() {
    let s = setup(
        Scripted::new(|n, items| {
            if n == 0 {
                vec![Outcome::unavailable("transport error: connection failed"); items.len()]
            } else {
                vec![Outcome::Applied; items.len()]
            }
        }),
        reasserting_retry(),
    );
    let grant = event(EventKind::ConsentGranted, "p", 1_000);
    s.engine
        .process(&[message(0, &grant)], &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(s.ledger.status(&key(&grant)), Some(Status::Applied));
    assert!(
        copies(&s).is_empty(),
        "a request that was never sent cannot land late"
    );
}

/// Another owner (or a process that died) claimed `event` and never recorded an answer.
async fn claimed_elsewhere(s: &Setup, event: &ConsentEvent) {
    let claim = relay_ledger::Claim {
        key: key(event),
        subject_id: event.subject_id.clone(),
        action: event.action(),
        occurred_at_ms: event.occurred_at_ms,
        replay: false,
        ticket: None,
        reassert: false,
    };
    relay_ledger::Ledger::claim(&*s.ledger, &[claim])
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_newer_decision_after_a_grant_someone_else_may_be_sending_is_reasserted() {
    let s = setup(
        Scripted::new(|_, items| vec![Outcome::Applied; items.len()]),
        reasserting_retry(),
    );
    let grant = event(EventKind::ConsentGranted, "p", 1_000);
    let withdrawal = event(EventKind::ConsentWithdrawn, "p", 2_000);
    claimed_elsewhere(&s, &grant).await;
    s.engine
        .process(&[message(1, &withdrawal)], &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(s.ledger.status(&key(&withdrawal)), Some(Status::Applied));
    let due = copies(&s);
    assert_eq!(
        due.len(),
        1,
        "the withdrawal is re-asserted after the grant's window"
    );
    assert_eq!(due[0].0.event().unwrap().event_id, withdrawal.event_id);
}

#[tokio::test(start_paused = true)]
async fn a_grant_in_flight_elsewhere_and_superseded_in_the_batch_still_gets_its_withdrawal_reasserted(
) {
    let s = setup(
        Scripted::new(|_, items| vec![Outcome::Applied; items.len()]),
        reasserting_retry(),
    );
    let grant = event(EventKind::ConsentGranted, "p", 1_000);
    let withdrawal = event(EventKind::ConsentWithdrawn, "p", 2_000);
    claimed_elsewhere(&s, &grant).await;
    // The new owner fetches both at once: the grant is superseded inside the batch, never sent.
    s.engine
        .process(
            &[message(0, &grant), message(1, &withdrawal)],
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(s.ledger.status(&key(&grant)), Some(Status::Superseded));
    assert_eq!(s.ledger.status(&key(&withdrawal)), Some(Status::Applied));
    let due = copies(&s);
    assert_eq!(due.len(), 1, "{due:?}");
    assert_eq!(due[0].0.event().unwrap().event_id, withdrawal.event_id);
}

#[tokio::test(start_paused = true)]
async fn a_parked_item_applied_later_is_not_reasserted_and_a_failed_reassertion_stays_applied() {
    // Parked after definite failures (HTTP 500), applied when it comes back: its earlier
    // attempts were answered, so nothing can land late.
    let s = setup(poisoned_by("p"), reasserting_retry());
    let grant = event(EventKind::ConsentGranted, "p", 1_000);
    let cancel = CancellationToken::new();
    s.engine
        .process(&[message(0, &grant)], &cancel)
        .await
        .unwrap();
    let (copy, _) = copies(&s).pop().unwrap();
    let ok = same_ledger(
        &s,
        Arc::new(Scripted::new(|_, i| vec![Outcome::Applied; i.len()])),
        reasserting_retry(),
    );
    ok.process(std::slice::from_ref(&copy), &cancel)
        .await
        .unwrap();
    assert_eq!(s.ledger.status(&key(&grant)), Some(Status::Applied));
    assert_eq!(copies(&s).len(), 1, "no re-assertion copy");

    // A re-assertion the downstream refuses for good: the decision was applied; it stays so.
    let refusing = same_ledger(
        &s,
        Arc::new(Scripted::new(|_, i| {
            vec![Outcome::permanent("HTTP 400: nope"); i.len()]
        })),
        reasserting_retry(),
    );
    let mut again = copy;
    again.ticket = Some(ParkTicket {
        reassert: true,
        ..again.ticket.unwrap()
    });
    refusing.process(&[again], &cancel).await.unwrap();
    assert_eq!(s.ledger.status(&key(&grant)), Some(Status::Applied));
    assert!(s.outbox.dead_letters.lock().unwrap().is_empty());
}
