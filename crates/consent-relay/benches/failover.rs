//! What a `kill -9` of one of two relay instances costs (issue #9), on the test broker:
//!
//! ```sh
//! cargo bench -p consent-relay --bench failover      # FAILOVER_TRIALS=5 for more trials
//! ```
//!
//! Two `consent-relay run` processes share the HubSpot group on an 8-partition topic while a
//! grant for a new person is published every 25 ms. One process is killed with SIGKILL; every
//! event published in the 30 s after the kill is timed from publish to HubSpot receipt. Events of
//! the survivor's partitions should not notice (cooperative-sticky assignment revokes nothing of
//! theirs); the killed instance's partitions wait until the group gives them away.
//!
//! Two scenarios: dynamic membership (the survivor takes the partitions over once the group's
//! session timeout, 10 s, expires), and static membership with the killed instance restarted at
//! once under the same `kafka.instance_id`, as a Kubernetes pod is (it takes its partitions back
//! when it has rejoined; nothing moves to the survivor).
//!
//! Prints, per scenario, the latency of events on the survivor's partitions and the pause of those
//! on the killed instance's partitions (median over trials of the longest wait).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use relay_testkit::broker;
use relay_testkit::hubspot::FakeHubSpot;

const BIN: &str = env!("CARGO_BIN_EXE_consent-relay");
const TOKEN: &str = "pat-failover-bench";

fn trials() -> usize {
    std::env::var("FAILOVER_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Setup {
    _dir: tempfile::TempDir,
    config: PathBuf,
    topic: String,
    fake: FakeHubSpot,
}

async fn setup() -> Setup {
    let fake = FakeHubSpot::start(TOKEN).await;
    let topic = broker::unique_name("failover");
    broker::create_topic(&topic, 8).await;
    broker::create_topic(&format!("{topic}.dlq"), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("consent-relay.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[kafka]
bootstrap_servers = "{bootstrap}"
topics = ["{topic}"]
dlq_topic = "{topic}.dlq"
retry_topic_prefix = "{topic}.retry"
group_prefix = "{group}"

[ledger]
url = "sqlite://{ledger}"

[purposes.newsletter]
description = "Newsletter"

[sinks.hubspot]
base_url = "{base}"
[sinks.hubspot.batch]
linger_ms = 20
[sinks.hubspot.purposes.newsletter]
subscription_ids = [12345]
legal_basis = "CONSENT_WITH_NOTICE"
legal_basis_explanation = "Newsletter sign-up"
"#,
            bootstrap = broker::bootstrap(),
            group = broker::unique_name("failover"),
            ledger = dir.path().join("ledger.db").display(),
            base = fake.base_url(),
        ),
    )
    .unwrap();
    Setup {
        _dir: dir,
        config,
        topic,
        fake,
    }
}

fn relay(config: &Path, instance: Option<&str>, admin: u16) -> Child {
    let mut c = Command::new(BIN);
    c.arg("--config")
        .arg(config)
        .arg("run")
        .env("CONSENT_RELAY_HUBSPOT_TOKEN", TOKEN)
        .env(
            "CONSENT_RELAY__ADMIN__LISTEN",
            format!("\"127.0.0.1:{admin}\""),
        )
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(id) = instance {
        c.env("CONSENT_RELAY__KAFKA__INSTANCE_ID", id);
    }
    c.spawn().expect("start consent-relay")
}

async fn ready(admin: u16) {
    let url = format!("http://127.0.0.1:{admin}/readyz");
    let started = Instant::now();
    loop {
        if let Ok(r) = reqwest::get(&url).await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "relay never ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn grant_line(subject: &str) -> Vec<u8> {
    let event = relay_events::ConsentEvent {
        event_id: uuid::Uuid::new_v4(),
        kind: relay_events::EventKind::ConsentGranted,
        subject_id: subject.to_owned(),
        occurred_at_ms: 1_795_651_200_000,
        source: "failover-bench".to_owned(),
        notice_version: Some("nl-1".to_owned()),
        scope: relay_events::Scope::Purposes(vec!["newsletter".to_owned()]),
        contact: relay_events::Contact {
            email: Some(format!("{subject}@example.org")),
            ..relay_events::Contact::default()
        },
    };
    relay_events::encode_single_object(&event)
}

/// Publishes a grant for a new person every 25 ms until stopped; returns (person, sent at).
fn keep_publishing(
    topic: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(String, Instant)>> {
    tokio::spawn(async move {
        let producer = broker::producer();
        let mut sent = Vec::new();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let person = format!("p{i}-{}", fastrand::u32(..));
            let at = Instant::now();
            broker::publish_raw(&producer, &topic, &person, &grant_line(&person)).await;
            sent.push((person, at));
            i += 1;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        sent
    })
}

/// Latencies (publish → HubSpot receipt) of the events sent after `from`.
fn latencies(fake: &FakeHubSpot, sent: &[(String, Instant)], from: Instant) -> Vec<Duration> {
    let requests = fake.requests();
    sent.iter()
        .filter(|(_, at)| *at >= from)
        .map(|(person, at)| {
            let needle = format!("\"{person}@example.org\"");
            requests
                .iter()
                .find(|r| r.body.contains(&needle))
                .map_or(Duration::MAX, |r| r.at.saturating_duration_since(*at))
        })
        .collect()
}

struct Outcome {
    survivor_p50: Duration,
    survivor_max: Duration,
    killed_pause: Duration,
    unaffected: f64,
}

/// One trial: two instances, kill -9 of one, optionally restarted at once with the same id.
async fn trial(static_membership: bool) -> Outcome {
    let s = setup().await;
    let (a_port, b_port) = (free_port(), free_port());
    let ids = static_membership.then_some(("relay-a", "relay-b"));
    let mut a = relay(&s.config, ids.map(|i| i.0), a_port);
    let mut b = relay(&s.config, ids.map(|i| i.1), b_port);
    ready(a_port).await;
    ready(b_port).await;
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = keep_publishing(s.topic.clone(), stop.clone());
    // Both own partitions and are caught up.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let killed_at = Instant::now();
    a.kill().unwrap(); // SIGKILL
    a.wait().unwrap();
    let restarted = Mutex::new(None);
    if static_membership {
        *restarted.lock().unwrap() = Some(relay(&s.config, ids.map(|i| i.0), a_port));
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    stop.store(true, Ordering::Relaxed);
    let sent = publisher.await.unwrap();
    // Let the last ones through before timing.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut lat = latencies(&s.fake, &sent, killed_at);
    b.kill().unwrap();
    b.wait().unwrap();
    if let Some(mut r) = restarted.lock().unwrap().take() {
        r.kill().unwrap();
        r.wait().unwrap();
    }
    lat.sort_unstable();
    // Events that did not wait for the group are the survivor's; the others' longest wait is the
    // killed instance's pause.
    let threshold = Duration::from_secs(1);
    let quick: Vec<Duration> = lat.iter().copied().filter(|d| *d < threshold).collect();
    let slow_max = lat.iter().copied().filter(|d| *d >= threshold).max();
    Outcome {
        survivor_p50: quick.get(quick.len() / 2).copied().unwrap_or_default(),
        survivor_max: quick.last().copied().unwrap_or_default(),
        killed_pause: slow_max.unwrap_or_default(),
        unaffected: quick.len() as f64 / lat.len().max(1) as f64,
    }
}

fn ms(d: Duration) -> String {
    if d == Duration::MAX {
        "never".to_owned()
    } else {
        format!("{:.0}", d.as_secs_f64() * 1000.0)
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = trials();
    println!(
        "kill -9 of one of two instances, {n} trial(s) per scenario (test broker, 8 partitions)"
    );
    println!(
        "{:<44} {:>10} {:>10} {:>12} {:>11}",
        "scenario", "quick p50", "quick max", "killed pause", "unaffected"
    );
    for (name, static_membership) in [
        ("dynamic membership, survivor takes over", false),
        ("static membership, killed one restarted", true),
    ] {
        let mut outcomes = Vec::new();
        for _ in 0..n {
            outcomes.push(trial(static_membership).await);
        }
        let median = |f: fn(&Outcome) -> Duration| {
            let mut v: Vec<Duration> = outcomes.iter().map(f).collect();
            v.sort_unstable();
            v[v.len() / 2]
        };
        let unaffected = outcomes.iter().map(|o| o.unaffected).sum::<f64>() / outcomes.len() as f64;
        println!(
            "{name:<44} {:>8}ms {:>8}ms {:>10}ms {:>10.0}%",
            ms(median(|o| o.survivor_p50)),
            ms(median(|o| o.survivor_max)),
            ms(median(|o| o.killed_pause)),
            unaffected * 100.0
        );
    }
}
