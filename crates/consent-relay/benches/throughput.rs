//! How fast `consent-relay run` drains a backlog, and how quickly a withdrawal gets through
//! (issue #11), on the test broker, against the in-process fakes:
//!
//! ```sh
//! cargo bench -p consent-relay --bench throughput
//! # THROUGHPUT_EVENTS=5000000   backlog size (default 1 000 000)
//! # THROUGHPUT_CASES=hubspot    only the cases whose name contains one of these (comma-separated)
//! # THROUGHPUT_TRIALS=20        trials of the withdrawal-behind-a-backlog measurement (0: skip)
//! # THROUGHPUT_BASELINE=PATH    also run every case with this consent-relay binary (an older
//! #                             build), in the same run, against the same backlog
//! # THROUGHPUT_HOSTILE=26025    hostile messages for the memory bound under hostile input (0: skip)
//! # THROUGHPUT_BASELINE_TRIALS=3 trials of the overtake measurement for the baseline (default:
//! #                             THROUGHPUT_TRIALS; an old build may take a minute per trial)
//! ```
//!
//! 1. Produces N events (grants of one or two of four purposes, withdrawals of one, global
//!    unsubscribes; about four events per person) to a fresh 8-partition topic, then reads the
//!    topic with a minimal rdkafka consumer: the raw rate every ratio below is taken against.
//! 2. Per case (HubSpot only, the four audiences only, every sink; SQLite and PostgreSQL ledger)
//!    starts the relay binary with a fresh consumer group and ledger, times it from ready to every
//!    group having committed the whole backlog, and reports events/s, the ratio to the raw rate,
//!    requests per item per destination against the fewest the vendor's batch limit allows, the
//!    relay's peak RSS, and where the ledger's time went. Then, caught up and idle, it times global
//!    unsubscribes from publish to their receipt by every destination of the case, beside a raw
//!    consumer's produce → consume latency (`fetch.wait.max.ms` 100).
//! 3. Publishes one unsubscribe behind 100 000 grants on a one-partition topic and times, over
//!    fresh relays, drain start → HubSpot receipt of the unsubscribe.
//! 4. Hostile input (issue 15): random bytes, bit-flipped and truncated frames, allocation bombs
//!    and 100 000-character fields, one in six messages valid, through every sink; the relay's peak
//!    RSS while it gives every message an outcome.
//!
//! The downstream is not the limit: the fakes answer at once and the relay's own request limits
//! are lifted, so what is measured is the relay.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use relay_events::{ConsentEvent, Contact, EventKind, Scope};
use relay_testkit::downstreams::{self as fakes, Downstreams};
use relay_testkit::recorded::RecordedRequest;
use relay_testkit::{broker, postgres};

const BIN: &str = env!("CARGO_BIN_EXE_consent-relay");
const PARTITIONS: i32 = 8;
/// A drain that commits nothing for this long is reported as stalled and abandoned.
const STALL: Duration = Duration::from_secs(60);
const PURPOSES: [&str; 4] = [
    "newsletter",
    "product_updates",
    "ads_remarketing",
    "partner_in_gmbh",
];
/// Unsubscribes timed on an idle relay, per case.
const LATENCY_SAMPLES: usize = 40;
const OVERTAKE_BACKLOG: usize = 100_000;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn email(person: usize) -> String {
    format!("p{person}@example.org")
}

fn event(kind: EventKind, person: usize, scope: Scope, occurred_at_ms: i64) -> ConsentEvent {
    ConsentEvent {
        event_id: uuid::Uuid::new_v4(),
        kind,
        subject_id: format!("s{person}"),
        occurred_at_ms,
        source: "throughput-bench".to_owned(),
        notice_version: Some("nl-3".to_owned()),
        scope,
        contact: Contact {
            email: Some(email(person)),
            first_name: Some("Anna".to_owned()),
            last_name: Some("Muster".to_owned()),
            company: Some("Beispiel GmbH".to_owned()),
            city: Some("Karlsruhe".to_owned()),
            ..Contact::default()
        },
    }
}

/// The i-th event of the backlog mix: 62 % grants of one or two purposes, 28 % withdrawals of
/// one, 10 % global unsubscribes, for N/4 people.
fn mix_event(rng: &mut fastrand::Rng, people: usize, base_ms: i64, i: usize) -> ConsentEvent {
    let person = rng.usize(..people);
    let at = base_ms + i as i64;
    let one = |rng: &mut fastrand::Rng| PURPOSES[rng.usize(..PURPOSES.len())].to_owned();
    match rng.u8(..100) {
        0..62 => {
            let mut purposes = vec![one(rng)];
            if rng.bool() {
                let second = one(rng);
                if second != purposes[0] {
                    purposes.push(second);
                }
            }
            event(
                EventKind::ConsentGranted,
                person,
                Scope::Purposes(purposes),
                at,
            )
        }
        62..90 => event(
            EventKind::ConsentWithdrawn,
            person,
            Scope::Purposes(vec![one(rng)]),
            at,
        ),
        _ => event(EventKind::Unsubscribed, person, Scope::All, at),
    }
}

fn producer() -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", broker::bootstrap())
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "500000")
        .create()
        .expect("producer")
}

/// Sends `n` events from `make` and waits until the broker has them all; prints progress.
fn produce(topic: &str, n: usize, mut make: impl FnMut(usize) -> ConsentEvent) -> Duration {
    produce_bytes(topic, n, |i| {
        let e = make(i);
        (e.subject_id.clone(), relay_events::encode_single_object(&e))
    })
}

/// Sends `n` (key, payload) pairs from `make`; as [`produce`].
fn produce_bytes(
    topic: &str,
    n: usize,
    mut make: impl FnMut(usize) -> (String, Vec<u8>),
) -> Duration {
    let producer = producer();
    let started = Instant::now();
    for i in 0..n {
        let (key, payload) = make(i);
        let mut record = BaseRecord::to(topic).key(&key).payload(&payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((err, r)) if err.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    producer.poll(Duration::from_millis(50));
                    record = r;
                }
                Err((err, _)) => panic!("producing to {topic}: {err}"),
            }
        }
        if i % 10_000 == 0 {
            producer.poll(Duration::ZERO);
        }
        if n >= 100_000 && (i + 1) % (n / 5) == 0 {
            eprintln!("  produced {}/{n}", i + 1);
        }
    }
    producer
        .flush(Duration::from_secs(300))
        .expect("flush producer");
    started.elapsed()
}

/// Hostile input of the kinds issue 15 names, around valid events: every fifth message of each
/// kind below is valid. Single-object framing: a 10-byte header, then the Avro body.
fn hostile_message(rng: &mut fastrand::Rng, base_ms: i64, i: usize) -> (String, Vec<u8>) {
    let valid = event(
        EventKind::ConsentGranted,
        40_000_000 + i,
        Scope::Purposes(vec!["newsletter".to_owned()]),
        base_ms + i as i64,
    );
    let key = valid.subject_id.clone();
    let mut frame = relay_events::encode_single_object(&valid);
    let body = 10;
    match i % 6 {
        // Random bytes, up to 2 KiB.
        0 => frame = (0..rng.usize(1..2048)).map(|_| rng.u8(..)).collect(),
        // A valid frame with bits flipped in its body.
        1 => {
            for _ in 0..rng.usize(1..8) {
                let at = rng.usize(body..frame.len());
                frame[at] ^= 1 << rng.u8(..8);
            }
        }
        // Truncated.
        2 => frame.truncate(rng.usize(1..frame.len())),
        // An allocation bomb: the first length prefix claims up to 2^62 bytes.
        3 => {
            frame.truncate(body);
            let claimed: i64 = 1 << rng.u32(20..62);
            let mut zigzag = ((claimed << 1) ^ (claimed >> 63)) as u64;
            while zigzag >= 0x80 {
                frame.push((zigzag as u8) | 0x80);
                zigzag >>= 7;
            }
            frame.push(zigzag as u8);
            frame.extend((0..64).map(|_| rng.u8(..)));
        }
        // 100 000-character free text.
        4 => {
            let mut long = valid.clone();
            long.source = "x".repeat(100_000);
            frame = relay_events::encode_single_object(&long);
        }
        _ => {}
    }
    (key, frame)
}

/// Peak RSS while the relay (every sink, SQLite) drains `n` hostile messages; every one must
/// get an outcome (all groups commit the whole topic).
async fn hostile(n: usize, bin: &Build, f: &Downstreams) -> Option<(Duration, f64)> {
    let topic = broker::unique_name("throughput-hostile");
    broker::create_topic(&topic, PARTITIONS).await;
    let t = topic.clone();
    tokio::task::spawn_blocking(move || {
        let mut rng = fastrand::Rng::with_seed(15);
        let base = now_ms() - 3_600_000;
        produce_bytes(&t, n, |i| hostile_message(&mut rng, base, i))
    })
    .await
    .unwrap();
    let case = Case {
        sinks: Sinks::All,
        backend: Backend::Sqlite,
        bin: bin.clone(),
    };
    let mut relay = start_relay(&bin.path, &[&topic], case.sinks, case.backend, f).await;
    relay.ready().await;
    let started = Instant::now();
    let destinations = case.destinations();
    if drain(&relay, "hostile", &topic, &destinations, n)
        .await
        .is_err()
    {
        relay.stop().await;
        return None;
    }
    let drained = started.elapsed();
    let peak = relay.peak_rss_mib();
    relay.stop().await;
    Some((drained, peak))
}

/// A raw consumer's rate over the whole topic: first message to the n-th.
fn raw_consume(topic: &str, n: usize) -> f64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker::bootstrap())
        .set("group.id", broker::unique_name("raw"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("raw consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut first = None;
    let mut seen = 0usize;
    let deadline = Instant::now() + Duration::from_secs(600);
    while seen < n {
        assert!(Instant::now() < deadline, "raw consumer stalled at {seen}");
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.expect("raw consume");
            std::hint::black_box(m.payload());
            first.get_or_insert_with(Instant::now);
            seen += 1;
        }
    }
    n as f64 / first.unwrap().elapsed().as_secs_f64()
}

/// A raw consumer's produce → consume latency, caught up, waiting at most 100 ms per fetch.
fn raw_latency(topic: &str) -> Vec<Duration> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker::bootstrap())
        .set("group.id", broker::unique_name("raw-latency"))
        .set("auto.offset.reset", "latest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("raw consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    // Until the assignment is there, messages would be missed.
    let started = Instant::now();
    while consumer.assignment().map(|a| a.count()).unwrap_or(0) == 0 {
        consumer.poll(Duration::from_millis(100));
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "raw latency consumer never assigned"
        );
    }
    for _ in 0..10 {
        consumer.poll(Duration::from_millis(100));
    }
    let producer = producer_now();
    let mut out = Vec::new();
    for i in 0..LATENCY_SAMPLES {
        let sent = Instant::now();
        producer
            .send(BaseRecord::to(topic).key("k").payload(&i.to_string()))
            .expect("send");
        producer.flush(Duration::from_secs(10)).expect("flush");
        loop {
            if let Some(m) = consumer.poll(Duration::from_millis(10)) {
                m.expect("consume");
                out.push(sent.elapsed());
                break;
            }
            assert!(
                sent.elapsed() < Duration::from_secs(10),
                "raw latency message lost"
            );
        }
        std::thread::sleep(Duration::from_millis(50 + fastrand::u64(..100)));
    }
    out
}

/// A producer that sends at once (timing single messages).
fn producer_now() -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", broker::bootstrap())
        .set("linger.ms", "0")
        .create()
        .expect("producer")
}

#[derive(Clone, Copy, PartialEq)]
enum Sinks {
    HubSpot,
    Audiences,
    All,
}

#[derive(Clone, Copy, PartialEq)]
enum Backend {
    Sqlite,
    Postgres,
}

struct Case {
    sinks: Sinks,
    backend: Backend,
    /// The binary under test: this build, or `THROUGHPUT_BASELINE`.
    bin: Build,
}

#[derive(Clone)]
struct Build {
    label: &'static str,
    path: String,
}

impl Case {
    fn name(&self) -> String {
        let sinks = match self.sinks {
            Sinks::HubSpot => "hubspot",
            Sinks::Audiences => "audiences",
            Sinks::All => "all sinks",
        };
        let backend = match self.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        };
        match self.bin.label {
            "" => format!("{sinks}, {backend}"),
            label => format!("{sinks}, {backend} [{label}]"),
        }
    }

    /// The relay destinations of the case, by their runtime names.
    fn destinations(&self) -> Vec<&'static str> {
        let audiences = [
            "audiences.meta",
            "audiences.google",
            "audiences.linkedin",
            "audiences.x",
        ];
        match self.sinks {
            Sinks::HubSpot => vec!["hubspot"],
            Sinks::Audiences => audiences.to_vec(),
            Sinks::All => {
                let mut all = vec!["hubspot"];
                all.extend(audiences);
                all.extend(["newsletter.main", "newsletter.product", "partner.in_gmbh"]);
                all
            }
        }
    }
}

/// The most items one request of a destination may carry (its vendor's limit, as configured).
fn max_batch(destination: &str) -> usize {
    match destination {
        "hubspot" => 100,
        "audiences.meta" | "audiences.google" => 10_000,
        "audiences.linkedin" => 5_000,
        "audiences.x" => 2_500,
        "newsletter.main" => 150,
        "newsletter.product" => 500,
        _ => 1,
    }
}

/// No limit worth the name: the downstream must not be what is measured.
const UNLIMITED: &str = "max_requests_per_window = 100000000\nmax_concurrency = 8";

fn sinks_toml(sinks: Sinks, f: &Downstreams) -> String {
    let hubspot = format!(
        r#"
[sinks.hubspot]
base_url = "{base}"
token = "{token}"
[sinks.hubspot.limits]
{UNLIMITED}
[sinks.hubspot.purposes.newsletter]
subscription_ids = [12345]
legal_basis = "CONSENT_WITH_NOTICE"
legal_basis_explanation = "Newsletter sign-up with double opt-in"
[sinks.hubspot.purposes.product_updates]
subscription_ids = [23456]
legal_basis = "CONSENT_WITH_NOTICE"
legal_basis_explanation = "Opted in to product updates"
"#,
        base = f.hubspot.base_url(),
        token = fakes::TOKEN,
    );
    let audiences = format!(
        r#"
[sinks.audiences]
[sinks.audiences.purposes]
ads_remarketing = ["meta", "google", "linkedin", "x"]
[sinks.audiences.audiences.meta]
platform = "meta"
base_url = "{meta}"
token = "{token}"
audience_id = "{meta_id}"
[sinks.audiences.audiences.meta.limits]
{UNLIMITED}
[sinks.audiences.audiences.google]
platform = "google"
base_url = "{google}"
token = "{token}"
operating_account_id = "1234567890"
product_destination_id = "{google_id}"
consent_purposes = ["ads_remarketing"]
[sinks.audiences.audiences.google.limits]
{UNLIMITED}
[sinks.audiences.audiences.linkedin]
platform = "linkedin"
base_url = "{linkedin}"
token = "{token}"
segment_id = "{linkedin_id}"
linkedin_version = "202601"
[sinks.audiences.audiences.linkedin.limits]
{UNLIMITED}
[sinks.audiences.audiences.x]
platform = "x"
base_url = "{x}"
consumer_key = "{ck}"
consumer_secret = "{cs}"
access_token = "{at}"
access_token_secret = "{ats}"
account_id = "demo"
custom_audience_id = "{x_id}"
[sinks.audiences.audiences.x.limits]
{UNLIMITED}
"#,
        meta = f.meta.base_url(),
        google = f.google.base_url(),
        linkedin = f.linkedin.base_url(),
        x = f.x.base_url(),
        token = fakes::TOKEN,
        meta_id = fakes::META_AUDIENCE,
        google_id = fakes::GOOGLE_AUDIENCE,
        linkedin_id = fakes::LINKEDIN_SEGMENT,
        x_id = fakes::X_AUDIENCE,
        ck = fakes::X_CONSUMER_KEY,
        cs = fakes::X_CONSUMER_SECRET,
        at = fakes::X_ACCESS_TOKEN,
        ats = fakes::X_ACCESS_TOKEN_SECRET,
    );
    let rest = format!(
        r#"
[sinks.newsletter]
[sinks.newsletter.purposes]
newsletter = ["main"]
product_updates = ["product"]
[sinks.newsletter.lists.main]
provider = "brevo"
base_url = "{brevo}"
api_key = "{token}"
list_id = {brevo_list}
[sinks.newsletter.lists.main.limits]
{UNLIMITED}
[sinks.newsletter.lists.product]
provider = "mailchimp"
base_url = "{mailchimp}"
api_key = "{mailchimp_key}"
list_id = "{mailchimp_list}"
[sinks.newsletter.lists.product.limits]
{UNLIMITED}

[sinks.partner]
[sinks.partner.partners.in_gmbh]
endpoint = "{partner}"
signing_secret = "{partner_secret}"
purpose = "partner_in_gmbh"
fields = ["first_name", "last_name", "company", "email", "city"]
[sinks.partner.partners.in_gmbh.limits]
{UNLIMITED}
"#,
        brevo = f.brevo.base_url(),
        mailchimp = f.mailchimp.base_url(),
        token = fakes::TOKEN,
        brevo_list = fakes::BREVO_LIST,
        mailchimp_key = fakes::MAILCHIMP_KEY,
        mailchimp_list = fakes::MAILCHIMP_LIST,
        partner = f.partner.endpoint(),
        partner_secret = fakes::PARTNER_SECRET,
    );
    match sinks {
        Sinks::HubSpot => hubspot,
        Sinks::Audiences => audiences,
        Sinks::All => format!("{hubspot}{audiences}{rest}"),
    }
}

struct Relay {
    child: Child,
    admin: u16,
    _dir: tempfile::TempDir,
    log: PathBuf,
    group_prefix: String,
    pg: Option<String>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_relay(
    bin: &str,
    topics: &[&str],
    sinks: Sinks,
    backend: Backend,
    f: &Downstreams,
) -> Relay {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, pg) = match backend {
        Backend::Sqlite => (
            format!("sqlite://{}", dir.path().join("ledger.db").display()),
            None,
        ),
        Backend::Postgres => {
            let url = postgres::fresh_database().await;
            (url.clone(), Some(url))
        }
    };
    let group_prefix = broker::unique_name("throughput");
    let dlq = broker::unique_name("throughput.dlq");
    let config = dir.path().join("consent-relay.toml");
    let topics: Vec<String> = topics.iter().map(|t| format!("\"{t}\"")).collect();
    std::fs::write(
        &config,
        format!(
            r#"
[kafka]
bootstrap_servers = "{bootstrap}"
topics = [{topics}]
dlq_topic = "{dlq}"
retry_topic_prefix = "{group_prefix}.retry"
group_prefix = "{group_prefix}"

[ledger]
url = "{ledger}"

[purposes.newsletter]
description = "Newsletter"
[purposes.product_updates]
description = "Product updates"
[purposes.ads_remarketing]
description = "Ad audiences"
[purposes.partner_in_gmbh]
description = "Partner hand-off"
{sinks}"#,
            bootstrap = broker::bootstrap(),
            topics = topics.join(", "),
            sinks = sinks_toml(sinks, f),
        ),
    )
    .unwrap();
    let admin = free_port();
    let log = dir.path().join("relay.log");
    let child = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env(
            "CONSENT_RELAY__ADMIN__LISTEN",
            format!("\"127.0.0.1:{admin}\""),
        )
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start consent-relay");
    Relay {
        child,
        admin,
        _dir: dir,
        log,
        group_prefix,
        pg,
    }
}

impl Relay {
    async fn ready(&mut self) {
        let url = format!("http://127.0.0.1:{}/readyz", self.admin);
        let started = Instant::now();
        loop {
            if let Ok(r) = reqwest::get(&url).await {
                if r.status().is_success() {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("relay exited ({status}); log: {}", self.log_tail());
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "relay never ready; log: {}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.admin))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// Peak resident set size (VmHWM), in MiB.
    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    }

    async fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(url) = self.pg.take() {
            postgres::drop_database(&url).await;
        }
    }
}

/// Waits until every destination's group committed all `n` messages of `topic`, printing progress
/// every 10 s; gives up after `STALL` without progress and returns the destinations behind.
async fn drain(
    relay: &Relay,
    name: &str,
    topic: &str,
    destinations: &[&str],
    n: usize,
) -> Result<(), String> {
    let started = Instant::now();
    let mut progress = Instant::now();
    let (mut last_done, mut moved) = (0i64, Instant::now());
    loop {
        let mut done = 0i64;
        let mut behind = Vec::new();
        for d in destinations {
            let c = committed(&format!("{}.{d}", relay.group_prefix), topic).await;
            if c < n as i64 {
                behind.push(format!("{d} {:.0} %", 100.0 * c as f64 / n as f64));
            }
            done += c;
        }
        if done >= (n * destinations.len()) as i64 {
            return Ok(());
        }
        if done != last_done {
            (last_done, moved) = (done, Instant::now());
        } else if moved.elapsed() > STALL {
            eprintln!(
                "  {name}: no progress for {} s, giving up; behind: {}; log:\n{}",
                STALL.as_secs(),
                behind.join(", "),
                relay.log_tail()
            );
            return Err(behind.join(", "));
        }
        if progress.elapsed() > Duration::from_secs(10) {
            progress = Instant::now();
            eprintln!(
                "  {name}: {:.0} % after {:.0} s",
                100.0 * done as f64 / (n * destinations.len()) as f64,
                started.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sum over partitions of what `group` committed on `topic`.
async fn committed(group: &str, topic: &str) -> i64 {
    broker::committed_offsets(group, topic)
        .await
        .into_iter()
        .filter_map(|(_, o)| o)
        .sum()
}

/// The value of a counter or histogram sum with these labels, summed over the other labels.
fn metric_sum(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (head, value) = l.rsplit_once(' ')?;
            let (metric, rest) = head.split_once('{').unwrap_or((head, ""));
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .sum()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::MAX;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> String {
    if d == Duration::MAX {
        "never".to_owned()
    } else {
        format!("{:.0}", d.as_secs_f64() * 1000.0)
    }
}

/// Whether `r` concerns `person` at some destination: its address in the clear (HubSpot, Brevo,
/// the partner), as SHA-256 (the audiences) or as Mailchimp's subscriber hash.
fn mentions(r: &RecordedRequest, needles: &[String]) -> bool {
    needles
        .iter()
        .any(|n| r.body.contains(n.as_str()) || r.path.contains(n.as_str()))
}

fn needles(person: usize) -> Vec<String> {
    let e = email(person);
    vec![
        format!("\"{e}\""),
        relay_events::normalize::email_sha256(&e),
        relay_testkit::newsletter::subscriber_hash(&e),
    ]
}

/// Waits until every recording of `destinations` received a request about `person` from index
/// `from` on; returns the latest receipt.
async fn received_by_all(
    f: &Downstreams,
    destinations: &[&str],
    from: &BTreeMap<&str, usize>,
    person: usize,
    timeout: Duration,
) -> Option<Instant> {
    let needles = needles(person);
    let pred = |r: &RecordedRequest| mentions(r, &needles);
    let started = Instant::now();
    loop {
        let found: Vec<Option<Instant>> = f
            .recordings()
            .into_iter()
            .filter(|(name, _)| destinations.contains(name))
            .map(|(name, rec)| rec.find_request(from[name], &pred))
            .collect();
        if found.iter().all(Option::is_some) {
            return found.into_iter().flatten().max();
        }
        if started.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn marks(f: &Downstreams) -> BTreeMap<&'static str, usize> {
    f.recordings()
        .into_iter()
        .map(|(name, r)| (name, r.request_count()))
        .collect()
}

struct CaseResult {
    name: String,
    /// Destinations still behind when the drain stopped moving.
    stalled: Option<String>,
    events_per_s: f64,
    peak_rss_mib: f64,
    latency: Vec<Duration>,
    /// destination → (requests, items)
    requests: Vec<(&'static str, f64, f64)>,
    /// ledger op → seconds spent
    ledger: Vec<(String, f64)>,
    drain: Duration,
}

async fn run_case(case: &Case, backlog: &str, n: usize, f: &Downstreams) -> CaseResult {
    let live = broker::unique_name("throughput-live");
    broker::create_topic(&live, 1).await;
    let before = marks(f);
    let mut relay = start_relay(
        &case.bin.path,
        &[backlog, &live],
        case.sinks,
        case.backend,
        f,
    )
    .await;
    relay.ready().await;
    let started = Instant::now();
    let destinations = case.destinations();
    let stalled = drain(&relay, &case.name(), backlog, &destinations, n)
        .await
        .err();
    let drain = started.elapsed();
    let metrics = relay.metrics().await;
    if let Some(behind) = stalled {
        relay.stop().await;
        return CaseResult {
            name: case.name(),
            stalled: Some(behind),
            events_per_s: f64::NAN,
            peak_rss_mib: f64::NAN,
            latency: Vec::new(),
            requests: Vec::new(),
            ledger: Vec::new(),
            drain,
        };
    }
    let after = marks(f);
    let requests = destinations
        .iter()
        .map(|d| {
            let items = ["applied", "already_applied"]
                .iter()
                .map(|o| {
                    metric_sum(
                        &metrics,
                        "consent_relay_events_total",
                        &[("sink", d), ("outcome", o)],
                    )
                })
                .sum();
            (*d, (after[d] - before[d]) as f64, items)
        })
        .collect();
    let ledger = [
        "log_events",
        "claim",
        "uncertain",
        "mark_uncertain",
        "finish",
        "park",
        "record_rejections",
    ]
    .iter()
    .map(|op| {
        (
            (*op).to_owned(),
            metric_sum(
                &metrics,
                "consent_relay_ledger_transaction_duration_seconds_sum",
                &[("op", op)],
            ),
        )
    })
    .filter(|(_, s)| *s > 0.0)
    .collect();

    // Caught up and idle: global unsubscribes, one at a time.
    let producer = producer_now();
    let mut latency = Vec::new();
    for i in 0..LATENCY_SAMPLES {
        let person = 10_000_000 + i;
        let from = marks(f);
        let e = event(EventKind::Unsubscribed, person, Scope::All, now_ms());
        let payload = relay_events::encode_single_object(&e);
        let sent = Instant::now();
        producer
            .send(BaseRecord::to(&live).key(&e.subject_id).payload(&payload))
            .expect("send");
        producer.flush(Duration::from_secs(10)).expect("flush");
        match received_by_all(f, &destinations, &from, person, Duration::from_secs(20)).await {
            Some(at) => latency.push(at.saturating_duration_since(sent)),
            None => latency.push(Duration::MAX),
        }
        tokio::time::sleep(Duration::from_millis(50 + fastrand::u64(..100))).await;
    }
    latency.sort_unstable();
    let peak_rss_mib = relay.peak_rss_mib();
    relay.stop().await;
    let result = CaseResult {
        name: case.name(),
        stalled: None,
        events_per_s: n as f64 / drain.as_secs_f64(),
        peak_rss_mib,
        latency,
        requests,
        ledger,
        drain,
    };
    eprintln!(
        "  {}: {:.0} events/s, peak {:.0} MiB",
        result.name, result.events_per_s, result.peak_rss_mib
    );
    result
}

/// Drain start → HubSpot receipt of one unsubscribe published behind `OVERTAKE_BACKLOG` grants.
async fn overtake(bin: &Build, trials: usize, f: &Downstreams) -> Vec<Duration> {
    let topic = broker::unique_name("throughput-overtake");
    broker::create_topic(&topic, 1).await;
    let base = now_ms() - 3_600_000;
    let withdrawer = 20_000_000;
    let t = topic.clone();
    tokio::task::spawn_blocking(move || {
        produce(&t, OVERTAKE_BACKLOG + 1, |i| {
            if i < OVERTAKE_BACKLOG {
                event(
                    EventKind::ConsentGranted,
                    30_000_000 + i,
                    Scope::Purposes(vec!["newsletter".to_owned()]),
                    base + i as i64,
                )
            } else {
                event(
                    EventKind::Unsubscribed,
                    withdrawer,
                    Scope::All,
                    base + i as i64,
                )
            }
        })
    })
    .await
    .unwrap();
    let mut out = Vec::new();
    for trial in 0..trials {
        let from = marks(f);
        let mut relay = start_relay(&bin.path, &[&topic], Sinks::HubSpot, Backend::Sqlite, f).await;
        relay.ready().await;
        let started = Instant::now();
        let got =
            received_by_all(f, &["hubspot"], &from, withdrawer, Duration::from_secs(120)).await;
        out.push(got.map_or(Duration::MAX, |at| at.saturating_duration_since(started)));
        eprintln!(
            "  overtake{} trial {}: {} ms",
            bin.label,
            trial + 1,
            ms(*out.last().unwrap())
        );
        relay.stop().await;
    }
    out.sort_unstable();
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = env_or("THROUGHPUT_EVENTS", 1_000_000);
    let trials: usize = env_or("THROUGHPUT_TRIALS", 20);
    let filter: Vec<String> = std::env::var("THROUGHPUT_CASES")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let f = Downstreams::start_anywhere().await.expect("fakes");

    let backlog = broker::unique_name("throughput");
    broker::create_topic(&backlog, PARTITIONS).await;
    eprintln!("producing {n} events to {backlog} ({PARTITIONS} partitions)");
    let t = backlog.clone();
    let produced = tokio::task::spawn_blocking(move || {
        let mut rng = fastrand::Rng::with_seed(11);
        let base = now_ms() - 2 * n as i64 - 60_000;
        let people = (n / 4).max(1);
        produce(&t, n, |i| mix_event(&mut rng, people, base, i))
    })
    .await
    .unwrap();
    let t = backlog.clone();
    let raw_rate = tokio::task::spawn_blocking(move || raw_consume(&t, n))
        .await
        .unwrap();
    let latency_topic = broker::unique_name("throughput-raw-latency");
    broker::create_topic(&latency_topic, 1).await;
    let mut raw_lat = tokio::task::spawn_blocking(move || raw_latency(&latency_topic))
        .await
        .unwrap();
    raw_lat.sort_unstable();

    let mut builds = vec![Build {
        label: "",
        path: BIN.to_owned(),
    }];
    if let Ok(path) = std::env::var("THROUGHPUT_BASELINE") {
        builds.push(Build {
            label: "baseline",
            path,
        });
    }
    let cases: Vec<Case> = [Sinks::HubSpot, Sinks::Audiences, Sinks::All]
        .into_iter()
        .flat_map(|sinks| {
            [Backend::Sqlite, Backend::Postgres]
                .into_iter()
                .flat_map(move |backend| [(sinks, backend)])
        })
        .flat_map(|(sinks, backend)| {
            builds.iter().map(move |bin| Case {
                sinks,
                backend,
                bin: bin.clone(),
            })
        })
        .filter(|c| filter.is_empty() || filter.iter().any(|f| c.name().contains(f.as_str())))
        .collect();
    let mut results = Vec::new();
    for case in &cases {
        eprintln!("case {}", case.name());
        results.push(run_case(case, &backlog, n, &f).await);
    }
    let hostile_n: usize = env_or("THROUGHPUT_HOSTILE", 26_025);
    let mut hostile_runs = Vec::new();
    if hostile_n > 0 {
        for bin in &builds {
            eprintln!("hostile input: {hostile_n} messages, every sink, sqlite");
            hostile_runs.push((bin.label, hostile(hostile_n, bin, &f).await));
        }
    }
    let mut overtaken = Vec::new();
    if trials > 0 {
        let baseline_trials: usize = env_or("THROUGHPUT_BASELINE_TRIALS", trials);
        for bin in &builds {
            let trials = if bin.label.is_empty() {
                trials
            } else {
                baseline_trials
            };
            eprintln!("withdrawal behind {OVERTAKE_BACKLOG} grants, {trials} trials");
            overtaken.push((bin.label, overtake(bin, trials, &f).await));
        }
    }

    println!();
    println!(
        "backlog: {n} events on {PARTITIONS} partitions, produced in {:.1} s; raw consume {:.0} msg/s; \
         raw produce→consume p50 {} ms, p99 {} ms (fetch.wait.max.ms 100)",
        produced.as_secs_f64(),
        raw_rate,
        ms(percentile(&raw_lat, 0.5)),
        ms(percentile(&raw_lat, 0.99)),
    );
    println!();
    println!(
        "{:<33} {:>9} {:>10} {:>8} {:>9} {:>15}",
        "case", "drain s", "events/s", "× raw", "peak MiB", "unsub p50/p99"
    );
    for r in &results {
        if let Some(behind) = &r.stalled {
            println!(
                "{:<33} stalled after {:.0} s, behind: {behind}",
                r.name,
                r.drain.as_secs_f64()
            );
            continue;
        }
        println!(
            "{:<33} {:>9.1} {:>10.0} {:>8.4} {:>9.0} {:>9}/{} ms",
            r.name,
            r.drain.as_secs_f64(),
            r.events_per_s,
            r.events_per_s / raw_rate,
            r.peak_rss_mib,
            ms(percentile(&r.latency, 0.5)),
            ms(percentile(&r.latency, 0.99)),
        );
    }
    println!();
    println!(
        "{:<33} {:<20} {:>9} {:>9} {:>11} {:>8}",
        "case", "destination", "requests", "items", "per item", "× best"
    );
    for r in &results {
        for (d, requests, items) in &r.requests {
            let best = (items / max_batch(d) as f64).ceil().max(1.0);
            println!(
                "{:<33} {:<20} {:>9.0} {:>9.0} {:>11.5} {:>8.2}",
                r.name,
                d,
                requests,
                items,
                requests / items.max(1.0),
                requests / best
            );
        }
    }
    println!();
    println!(
        "ledger time per op (seconds, summed over the sinks' transactions; drain time beside)"
    );
    for r in &results {
        let ops: Vec<String> = r
            .ledger
            .iter()
            .map(|(op, s)| format!("{op} {s:.1}"))
            .collect();
        println!(
            "{:<33} drain {:.1}: {}",
            r.name,
            r.drain.as_secs_f64(),
            ops.join(", ")
        );
    }
    for (label, run) in &hostile_runs {
        let label = if label.is_empty() {
            String::new()
        } else {
            format!(" [{label}]")
        };
        match run {
            Some((drained, peak)) => println!(
                "hostile input{label}: {hostile_n} messages (random bytes, bit flips, truncations, \
                 allocation bombs, 100 000-character fields, 1 in 6 valid), every sink, sqlite: \
                 drained in {:.1} s, peak RSS {peak:.0} MiB",
                drained.as_secs_f64()
            ),
            None => println!("hostile input{label}: stalled"),
        }
    }
    for (label, overtaken) in &overtaken {
        println!();
        println!(
            "unsubscribe behind {OVERTAKE_BACKLOG} grants (1 partition, hubspot, sqlite){}, drain start → receipt over {} trials: p50 {} ms, p99 {} ms, max {} ms",
            if label.is_empty() { String::new() } else { format!(" [{label}]") },
            overtaken.len(),
            ms(percentile(overtaken, 0.5)),
            ms(percentile(overtaken, 0.99)),
            ms(*overtaken.last().unwrap()),
        );
    }
}
