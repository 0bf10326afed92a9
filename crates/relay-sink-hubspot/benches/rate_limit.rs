//! How close the sink gets to HubSpot's burst limit without being told off.
//!
//! Drives `BENCH_EVENTS` withdrawals (default 1000) through `HubSpotSink::deliver` in batches of
//! 100 items, one request per withdrawal (`max_inputs_per_request = 1`), against a fake HubSpot
//! that allows 10 requests per rolling second, with the sink's own limiter set to the same 10 per
//! second. Items that come back retryable are delivered again at once, as the runtime would after
//! its backoff; the destination's pause holds them meanwhile. Then, as the baseline, the same
//! against an unlimited fake with an unlimited sink.
//!
//! Target: at least 95 % of the allowed rate, at most 0.5 % of requests answered 429.
//!
//! Run: `cargo bench -p relay-sink-hubspot --bench rate_limit`; `BENCH_EVENTS=200` for a quick
//! one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_delivery::{Change, DestinationConfig, Outcome, Sink, SinkItem};
use relay_events::{ConsentEvent, Contact, EventKind, Scope};
use relay_sink_hubspot::{HubSpotConfig, HubSpotSink, LegalBasis, PurposeConfig};
use relay_testkit::hubspot::FakeHubSpot;

const TOKEN: &str = "bench-token";
const PURPOSE: &str = "newsletter";
const BATCH: usize = 100;
const ALLOWED: u32 = 10;
const WINDOW: Duration = Duration::from_secs(1);

/// What one run measured.
struct Run {
    requests: usize,
    rate_limited: usize,
    elapsed: Duration,
    applied: usize,
    deliveries: usize,
}

impl Run {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

fn main() {
    let events: usize = match std::env::var("BENCH_EVENTS") {
        Ok(v) => v.parse().expect("BENCH_EVENTS must be a number of events"),
        Err(_) => 1000,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (limited, baseline) = runtime.block_on(async {
        let limited = run(events, Some((ALLOWED, WINDOW))).await;
        let baseline = run(events, None).await;
        (limited, baseline)
    });

    let allowed = f64::from(ALLOWED) / WINDOW.as_secs_f64();
    let share = 100.0 * limited.rate_limited as f64 / limited.requests as f64;
    let ratio = 100.0 * limited.rate() / allowed;
    println!("rate_limit: {events} withdrawals, {BATCH} items per delivery, 1 request per item");
    println!(
        "limited  (fake and sink: {ALLOWED} requests per {} ms rolling window)",
        WINDOW.as_millis()
    );
    println!("  requests sent      {}", limited.requests);
    println!(
        "  429 answers        {} ({share:.2} % of requests; target <= 0.5 %)",
        limited.rate_limited
    );
    println!(
        "  achieved rate      {:.2} req/s = {ratio:.1} % of the allowed {allowed:.0} req/s \
         (target >= 95 %)",
        limited.rate()
    );
    println!(
        "  total time         {:.2} s over {} deliveries",
        limited.elapsed.as_secs_f64(),
        limited.deliveries
    );
    println!("  events applied     {} of {events}", limited.applied);
    println!("baseline (no limits)");
    println!(
        "  requests sent      {}, 429 answers {}",
        baseline.requests, baseline.rate_limited
    );
    println!(
        "  achieved rate      {:.0} req/s, total time {:.2} s",
        baseline.rate(),
        baseline.elapsed.as_secs_f64()
    );
    println!("  events applied     {} of {events}", baseline.applied);
    let verdict = if ratio >= 95.0 && share <= 0.5 {
        "met"
    } else {
        "MISSED"
    };
    println!("target {verdict}");
    assert_eq!(limited.applied, events, "every event applied (limited)");
    assert_eq!(baseline.applied, events, "every event applied (baseline)");
}

async fn run(events: usize, limit: Option<(u32, Duration)>) -> Run {
    let fake = FakeHubSpot::start(TOKEN).await;
    if let Some((max, window)) = limit {
        fake.set_rate_limit(max, window);
    }
    let sink = HubSpotSink::new(HubSpotConfig {
        base_url: fake.base_url(),
        token: Some(TOKEN.into()),
        max_inputs_per_request: 1,
        limits: DestinationConfig {
            max_requests_per_window: limit.map(|(max, _)| max),
            window_ms: limit.map_or(10_000, |(_, window)| window.as_millis() as u64),
            ..DestinationConfig::default()
        },
        purposes: BTreeMap::from([(
            PURPOSE.to_owned(),
            PurposeConfig {
                subscription_ids: vec![12345],
                legal_basis: LegalBasis::ConsentWithNotice,
                legal_basis_explanation: "Newsletter sign-up".to_owned(),
                create_contact: false,
            },
        )]),
        ..HubSpotConfig::default()
    })
    .expect("sink config");

    let items: Vec<SinkItem> = (0..events).map(withdrawal).collect();
    let started = Instant::now();
    let mut applied = 0;
    let mut deliveries = 0;
    for batch in items.chunks(BATCH) {
        let mut pending = batch.to_vec();
        while !pending.is_empty() {
            let outcomes = sink.deliver(&pending).await;
            deliveries += 1;
            let mut retry = Vec::new();
            for (item, outcome) in pending.into_iter().zip(outcomes) {
                match outcome {
                    Outcome::Applied | Outcome::AlreadyApplied | Outcome::AwaitingConfirmation => {
                        applied += 1
                    }
                    Outcome::Retryable { .. }
                    | Outcome::Unavailable { .. }
                    | Outcome::Unknown { .. } => retry.push(item),
                    Outcome::Permanent { reason } | Outcome::Refused { reason } => {
                        panic!("unexpected failure: {reason}")
                    }
                }
            }
            pending = retry;
        }
    }
    let elapsed = started.elapsed();
    Run {
        requests: fake.requests().len(),
        rate_limited: fake.rate_limited_count(),
        elapsed,
        applied,
        deliveries,
    }
}

fn withdrawal(i: usize) -> SinkItem {
    SinkItem {
        event: Arc::new(ConsentEvent {
            event_id: uuid::Uuid::new_v4(),
            kind: EventKind::ConsentWithdrawn,
            subject_id: format!("subject-{i}"),
            occurred_at_ms: 1_767_225_600_000,
            source: "bench".to_owned(),
            notice_version: None,
            scope: Scope::Purposes(vec![PURPOSE.to_owned()]),
            contact: Contact {
                email: Some(format!("bench{i}@example.de")),
                ..Contact::default()
            },
        }),
        change: Change::Withdraw(PURPOSE.to_owned()),
    }
}
