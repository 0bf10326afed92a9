//! Withdrawal latency with and without a poisoned subject (issue #9), beside the broker's raw
//! produce → consume latency, all measured in one run on the test broker:
//!
//! ```sh
//! cargo bench -p consent-relay-e2e --bench liveness        # LIVENESS_TRIALS=300 for more trials
//! ```
//!
//! - raw: a plain consumer with librdkafka's defaults, as the relay's, reading what a producer
//!   sends one message at a time;
//! - healthy: the relay with the HubSpot sink and the shipped batch and retry settings, a steady
//!   stream of grants (one every 20 ms) and a withdrawal every 40 ms, each for a new person;
//!   latency is from handing the withdrawal to the producer to the fake HubSpot receiving the
//!   request that names that person;
//! - poisoned: the same, and one person whose every request HubSpot answers with 500 has a grant
//!   in the stream every 2 s: their items are split off, retried and parked while the others' go
//!   on. (Each costs a few requests of HubSpot's rate limit, 100 per 10 s by default: a person
//!   failing several times a second would eat it and slow everyone, correctly, down.)
//!
//! Prints p50/p99 per case and the poisoned/healthy ratio; the target is ≤ 2×.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use consent_relay_e2e::*;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use relay_events::ConsentEvent;
use relay_runtime::{BatchConfig, RetryConfig};
use relay_testkit::broker;

fn trials() -> usize {
    std::env::var("LIVENESS_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    let rank = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[rank.min(samples.len() - 1)]
}

async fn send(producer: &FutureProducer, topic: &str, event: &ConsentEvent) {
    let bytes = relay_events::encode_single_object(event);
    producer
        .send(
            FutureRecord::to(topic)
                .key(event.subject_id.as_str())
                .payload(&bytes),
            Duration::from_secs(10),
        )
        .await
        .expect("produce");
}

/// Produce → consume latency of a plain consumer, one message at a time.
async fn raw(n: usize) -> Vec<Duration> {
    let topic = broker::unique_name("bench-raw");
    broker::create_topic(&topic, 4).await;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker::bootstrap())
        .set("group.id", broker::unique_name("bench-raw"))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let producer = broker::producer();
    // The group join takes seconds: wait for a first message before measuring.
    send(&producer, &topic, &grant("warm-up", T0, "newsletter")).await;
    tokio::time::timeout(Duration::from_secs(60), consumer.recv())
        .await
        .expect("the raw consumer joins")
        .expect("warm-up message");
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let event = withdraw(&format!("raw{i}"), T0, "newsletter");
        let sent = Instant::now();
        send(&producer, &topic, &event).await;
        tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("consumed")
            .expect("message");
        samples.push(sent.elapsed());
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    samples
}

/// Publish → HubSpot latency of withdrawals through the relay, with a stream of grants around them
/// and, if `poisoned`, one person whose requests always fail.
async fn relay(n: usize, poisoned: bool) -> Vec<Duration> {
    let h = Harness::new().await;
    let poison = "poisoned-person";
    h.fake.set_poisoned(&email_of(poison), poisoned);
    let mut spec = h.hubspot_spec();
    spec.batch = BatchConfig::default();
    spec.retry = RetryConfig::default();
    let telemetry = relay_runtime::Telemetry::new();
    let relay = h.start_observed(h.kafka(), vec![spec], telemetry.clone());
    let ready = Instant::now();
    while telemetry.readiness().is_err() {
        assert!(ready.elapsed() < Duration::from_secs(60), "relay not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let producer = broker::producer();
    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let (producer, topic, stop) = (producer.clone(), h.topic.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                send(
                    &producer,
                    &topic,
                    &grant(&format!("g{i}"), T0, "newsletter"),
                )
                .await;
                if poisoned && i % 100 == 0 {
                    let at = T0 + i64::try_from(i).unwrap_or(0);
                    send(&producer, &topic, &grant(poison, at, "newsletter")).await;
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let person = format!("w{i}");
        let needle = format!("\"{}\"", email_of(&person));
        let seen = h.fake.requests().len();
        let sent = Instant::now();
        send(&producer, &h.topic, &withdraw(&person, T0, "newsletter")).await;
        let arrived = loop {
            if let Some(r) = h
                .fake
                .requests_after(seen)
                .into_iter()
                .find(|r| r.body.contains(&needle))
            {
                break r.at;
            }
            assert!(
                sent.elapsed() < Duration::from_secs(120),
                "{person} never arrived"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        samples.push(arrived.saturating_duration_since(sent));
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    stop.store(true, Ordering::Relaxed);
    background.await.expect("background producer");
    relay.stop().await;
    samples
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = trials();
    println!("withdrawal latency, {n} trials per case (test broker, fake HubSpot, SQLite ledger)");
    let mut raw = raw(n).await;
    let mut healthy = relay(n, false).await;
    let mut poisoned = relay(n, true).await;
    println!("{:<34} {:>9} {:>9}", "case", "p50 ms", "p99 ms");
    let mut rows = Vec::new();
    for (name, samples) in [
        ("raw produce -> consume", &mut raw),
        ("relay, healthy", &mut healthy),
        ("relay, one poisoned subject", &mut poisoned),
    ] {
        let (p50, p99) = (percentile(samples, 0.5), percentile(samples, 0.99));
        println!("{name:<34} {:>9.1} {:>9.1}", ms(p50), ms(p99));
        rows.push((p50, p99));
    }
    let (h50, h99) = rows[1];
    let (p50, p99) = rows[2];
    let ratio50 = ms(p50) / ms(h50);
    let ratio99 = ms(p99) / ms(h99);
    println!(
        "poisoned / healthy: p50 {ratio50:.2}x, p99 {ratio99:.2}x (target <= 2x): {}",
        if ratio99 <= 2.0 && ratio50 <= 2.0 {
            "met"
        } else {
            "NOT met"
        }
    );
}
