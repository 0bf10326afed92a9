//! Shared harness for the end-to-end tests: a real broker (tansu, started by `scripts/broker`), a
//! real ledger, the fake HubSpot, and the relay running in-process as it runs in production.
//! Every harness has its own topics, consumer groups and ledger, so tests run in parallel.

#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use relay_events::normalize;
use relay_events::{ConsentEvent, Contact, EventKind, Scope};
use relay_ledger::{AnyLedger, Ledger, SubjectReport};
use relay_runtime::{BatchConfig, KafkaConfig, RelayConfig, RetryConfig, SinkSpec, Telemetry};
use relay_sink_audiences::{AudiencesConfig, AudiencesSink};
use relay_sink_hubspot::{HubSpotConfig, HubSpotSink};
use relay_testkit::audiences::x::OAuthCredentials;
use relay_testkit::audiences::{self, FakePlatform};
use relay_testkit::broker;
use relay_testkit::hubspot::FakeHubSpot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const TOKEN: &str = "pat-test-token";
pub const NEWSLETTER: i64 = 12345;
pub const PRODUCT_UPDATES: i64 = 23456;

pub struct Harness {
    pub bootstrap: String,
    pub topic: String,
    pub dlq_topic: String,
    pub group_prefix: String,
    pub fake: FakeHubSpot,
    pub ledger_url: String,
    pub ledger: Arc<AnyLedger>,
    pub telemetry: Telemetry,
    /// Set to decode and publish with Confluent framing through a schema registry.
    pub schema_registry_url: Option<String>,
    /// Whether the relay creates its retry topics (the mock cluster cannot; its harness creates
    /// them beforehand).
    create_retry_topics: bool,
    _dir: tempfile::TempDir,
    /// librdkafka's in-process cluster, for tests of lag arithmetic (its watermarks are right,
    /// tansu's under-report; see DESIGN.md §8).
    _mock: Option<MockCluster<'static, DefaultProducerContext>>,
}

/// A relay running in a task; dropping it does not stop it, [`Running::stop`] or
/// [`Running::kill`] do.
pub struct Running {
    token: CancellationToken,
    handle: JoinHandle<Result<(), relay_runtime::RuntimeError>>,
}

impl Running {
    /// A graceful shutdown, as on SIGTERM.
    pub async fn stop(self) {
        self.token.cancel();
        let result = tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("relay did not stop within 30 s");
        result.expect("relay task panicked").expect("relay failed");
    }

    /// A crash: the task is aborted wherever it is, nothing gets to finish.
    pub async fn kill(self) {
        self.handle.abort();
        let _ = self.handle.await;
    }
}

impl Harness {
    /// On the test broker (tansu), with a 4-partition topic.
    pub async fn new() -> Harness {
        Harness::with_partitions(4).await
    }

    /// On the test broker (tansu), with a topic of `partitions` partitions.
    pub async fn with_partitions(partitions: i32) -> Harness {
        let topic = broker::unique_name("consent-e2e");
        let dlq_topic = format!("{topic}.dlq");
        broker::create_topic(&topic, partitions).await;
        broker::create_topic(&dlq_topic, 1).await;
        Harness::with(broker::bootstrap(), topic, dlq_topic, None).await
    }

    /// On librdkafka's mock cluster, with a topic of `partitions` partitions.
    pub async fn on_mock_cluster(partitions: i32) -> Harness {
        let mock = MockCluster::new(1).expect("mock cluster");
        let topic = broker::unique_name("consent-mock");
        let dlq_topic = format!("{topic}.dlq");
        mock.create_topic(&topic, partitions, 1)
            .expect("mock topic");
        mock.create_topic(&dlq_topic, 1, 1).expect("mock dlq topic");
        let mut h = Harness::with(mock.bootstrap_servers(), topic, dlq_topic, None).await;
        // librdkafka's mock cluster does not serve CreateTopics (DESIGN.md §8).
        let retry_topic = h.kafka().retry_topic("hubspot");
        mock.create_topic(&retry_topic, 1, 1)
            .expect("mock retry topic");
        h.create_retry_topics = false;
        h._mock = Some(mock);
        h
    }

    async fn with(
        bootstrap: String,
        topic: String,
        dlq_topic: String,
        mock: Option<MockCluster<'static, DefaultProducerContext>>,
    ) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger_url = format!("sqlite://{}", dir.path().join("ledger.db").display());
        let ledger = Arc::new(relay_ledger::open(&ledger_url).await.expect("ledger"));
        Harness {
            bootstrap,
            group_prefix: broker::unique_name("relay"),
            topic,
            dlq_topic,
            fake: FakeHubSpot::start(TOKEN).await,
            ledger_url,
            ledger,
            telemetry: Telemetry::new(),
            schema_registry_url: None,
            create_retry_topics: true,
            _dir: dir,
            _mock: mock,
        }
    }

    pub fn kafka(&self) -> KafkaConfig {
        let text = format!(
            "bootstrap_servers = {:?}\ntopics = [{:?}]\ndlq_topic = {:?}\ngroup_prefix = {:?}\nsession_timeout_ms = 6000\nlag_refresh_interval_ms = 300\n",
            self.bootstrap,
            self.topic,
            self.dlq_topic,
            self.group_prefix
        );
        let mut kafka: KafkaConfig = toml::from_str(&text).expect("kafka config");
        kafka.schema_registry_url = self.schema_registry_url.clone();
        kafka.create_retry_topics = self.create_retry_topics;
        kafka.retry_topic_prefix = format!("{}.retry", self.topic);
        kafka
    }

    pub fn group(&self) -> String {
        self.kafka().group_id("hubspot")
    }

    pub fn hubspot_config(&self) -> HubSpotConfig {
        let text = format!(
            r#"
base_url = {:?}
token = {TOKEN:?}
[purposes.newsletter]
subscription_ids = [{NEWSLETTER}]
legal_basis = "CONSENT_WITH_NOTICE"
legal_basis_explanation = "Newsletter sign-up with double opt-in"
[purposes.product_updates]
subscription_ids = [{PRODUCT_UPDATES}]
legal_basis = "CONSENT_WITH_NOTICE"
legal_basis_explanation = "Product updates in the customer portal"
"#,
            self.fake.base_url()
        );
        toml::from_str(&text).expect("hubspot config")
    }

    pub fn retry(&self) -> RetryConfig {
        quick_retries()
    }

    /// Starts the relay with the HubSpot sink, as `consent-relay run` would.
    pub fn start(&self) -> Running {
        self.start_instance(self.telemetry.clone())
    }

    /// Starts the relay with the given sinks (the HubSpot fake is then unused).
    pub fn start_sinks(&self, sinks: Vec<SinkSpec>) -> Running {
        let known = sinks
            .iter()
            .flat_map(|s| s.purposes.iter().cloned())
            .chain(["newsletter".to_owned(), "partner_in_gmbh".to_owned()])
            .collect();
        self.run(sinks, known, self.telemetry.clone())
    }

    /// Starts the relay with the given sinks and Kafka settings.
    pub fn start_with_kafka(&self, kafka: KafkaConfig, sinks: Vec<SinkSpec>) -> Running {
        self.start_observed(kafka, sinks, self.telemetry.clone())
    }

    /// Starts the relay with the given sinks, Kafka settings and telemetry of its own, as one
    /// more process would.
    pub fn start_observed(
        &self,
        kafka: KafkaConfig,
        sinks: Vec<SinkSpec>,
        telemetry: Telemetry,
    ) -> Running {
        let known = sinks
            .iter()
            .flat_map(|s| s.purposes.iter().cloned())
            .collect();
        self.run_on(kafka, sinks, known, telemetry)
    }

    fn run(
        &self,
        sinks: Vec<SinkSpec>,
        known_purposes: BTreeSet<String>,
        telemetry: Telemetry,
    ) -> Running {
        self.run_on(self.kafka(), sinks, known_purposes, telemetry)
    }

    fn run_on(
        &self,
        kafka: KafkaConfig,
        sinks: Vec<SinkSpec>,
        known_purposes: BTreeSet<String>,
        telemetry: Telemetry,
    ) -> Running {
        let config = RelayConfig {
            kafka,
            known_purposes,
            exit_when_idle: None,
            liveness: Default::default(),
            events: Default::default(),
        };
        let token = CancellationToken::new();
        let handle = tokio::spawn(relay_runtime::run(
            config,
            self.ledger.clone(),
            sinks,
            telemetry,
            token.clone(),
        ));
        Running { token, handle }
    }

    /// Starts the relay with the HubSpot sink and one more.
    pub fn start_with_partner(&self, other: SinkSpec) -> Running {
        let known = self
            .hubspot_config()
            .purposes
            .keys()
            .cloned()
            .chain(other.purposes.iter().cloned())
            .collect();
        self.run(
            vec![self.hubspot_spec(), other],
            known,
            self.telemetry.clone(),
        )
    }

    pub fn hubspot_spec(&self) -> SinkSpec {
        let api = self.hubspot_config();
        SinkSpec {
            purposes: api.purposes.keys().cloned().collect(),
            sink: Arc::new(HubSpotSink::new(api).expect("hubspot sink")),
            batch: quick_batches(),
            retry: self.retry(),
        }
    }

    /// Starts one more relay instance in the same consumer group, with its own telemetry, as a
    /// second pod would.
    pub fn start_instance(&self, telemetry: Telemetry) -> Running {
        let spec = self.hubspot_spec();
        let known = spec
            .purposes
            .iter()
            .cloned()
            .chain(["partner_in_gmbh".to_owned()])
            .collect();
        self.run(vec![spec], known, telemetry)
    }

    pub async fn publish(&self, events: &[ConsentEvent]) {
        relay_runtime::publish(&self.kafka(), &self.topic, events)
            .await
            .expect("publish");
    }

    pub async fn report(&self, subject: &str) -> SubjectReport {
        self.ledger
            .subject_report(subject)
            .await
            .expect("subject report")
    }
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long the tests wait for the relay: consumer-group joins on the test broker take seconds.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub fn email_of(subject: &str) -> String {
    format!("{subject}@example.de")
}

fn event(kind: EventKind, subject: &str, at_ms: i64, scope: Scope) -> ConsentEvent {
    ConsentEvent {
        event_id: Uuid::new_v4(),
        kind,
        subject_id: subject.to_owned(),
        occurred_at_ms: at_ms,
        source: "e2e-test".to_owned(),
        notice_version: (kind == EventKind::ConsentGranted)
            .then(|| "newsletter-2026-05".to_owned()),
        scope,
        contact: Contact {
            email: Some(email_of(subject)),
            ..Contact::default()
        },
    }
}

pub fn grant(subject: &str, at_ms: i64, purpose: &str) -> ConsentEvent {
    event(
        EventKind::ConsentGranted,
        subject,
        at_ms,
        Scope::Purposes(vec![purpose.to_owned()]),
    )
}

pub fn withdraw(subject: &str, at_ms: i64, purpose: &str) -> ConsentEvent {
    event(
        EventKind::ConsentWithdrawn,
        subject,
        at_ms,
        Scope::Purposes(vec![purpose.to_owned()]),
    )
}

pub fn unsubscribe_all(subject: &str, at_ms: i64) -> ConsentEvent {
    event(EventKind::Unsubscribed, subject, at_ms, Scope::All)
}

/// A base timestamp: 2026-11-26T00:00:00Z.
pub const T0: i64 = 1_795_651_200_000;

/// The consumer-lag gauge of a relay's `/metrics` text, by (topic, partition).
pub fn scraped_lag(telemetry: &Telemetry) -> std::collections::BTreeMap<(String, i32), i64> {
    let mut out = std::collections::BTreeMap::new();
    for line in telemetry.render().lines() {
        let Some(rest) = line.strip_prefix("consent_relay_consumer_lag_messages{") else {
            continue;
        };
        let (labels, value) = rest.split_once("} ").expect("sample line");
        let label = |k: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
                .expect("label")
        };
        out.insert(
            (
                label("topic"),
                label("partition").parse().expect("partition"),
            ),
            value.parse::<f64>().expect("value") as i64,
        );
    }
    out
}

/// Batches as the e2e tests use them: small linger, withdrawals at once.
pub fn quick_batches() -> BatchConfig {
    BatchConfig {
        max_events: 100,
        linger_ms: 50,
        withdrawal_linger_ms: 0,
        ..BatchConfig::default()
    }
}

/// Retries as the e2e tests use them: short delays.
pub fn quick_retries() -> RetryConfig {
    RetryConfig {
        initial_delay_ms: 50,
        max_delay_ms: 500,
        factor: 2.0,
        ramp_attempts: 5,
        ..RetryConfig::default()
    }
}

const ADS_TOKEN: &str = "ads-token";
/// X signs with OAuth 1.0a: consumer key and secret, access token and secret.
const X_CREDENTIALS: [&str; 4] = ["ads-ck", "ads-cs", "1-ads-at", "ads-ats"];

/// The four fake ad platforms with one audience each, as the audiences sink sees them.
pub struct AdPlatforms {
    pub meta: FakePlatform,
    pub google: FakePlatform,
    pub linkedin: FakePlatform,
    pub x: FakePlatform,
}

impl AdPlatforms {
    pub async fn start() -> AdPlatforms {
        AdPlatforms {
            meta: audiences::meta::start(ADS_TOKEN).await,
            google: audiences::google::start(ADS_TOKEN).await,
            linkedin: audiences::linkedin::start(ADS_TOKEN).await,
            x: audiences::x::start_oauth(OAuthCredentials::new(
                X_CREDENTIALS[0],
                X_CREDENTIALS[1],
                X_CREDENTIALS[2],
                X_CREDENTIALS[3],
            ))
            .await,
        }
    }

    /// The sink configuration: purpose `ads_remarketing` to all four audiences.
    pub fn config(&self) -> AudiencesConfig {
        toml::from_str(&format!(
            r#"
[purposes]
ads_remarketing = ["meta", "google", "linkedin", "x"]
[audiences.meta]
platform = "meta"
base_url = "{}"
token = "{ADS_TOKEN}"
audience_id = "111"
[audiences.google]
platform = "google"
base_url = "{}"
token = "{ADS_TOKEN}"
operating_account_id = "1234567890"
product_destination_id = "222"
consent_purposes = ["ads_remarketing"]
[audiences.linkedin]
platform = "linkedin"
base_url = "{}"
token = "{ADS_TOKEN}"
segment_id = "333"
linkedin_version = "202601"
[audiences.x]
platform = "x"
base_url = "{}"
consumer_key = "{ck}"
consumer_secret = "{cs}"
access_token = "{at}"
access_token_secret = "{ats}"
account_id = "acc"
custom_audience_id = "444"
"#,
            self.meta.base_url(),
            self.google.base_url(),
            self.linkedin.base_url(),
            self.x.base_url(),
            ck = X_CREDENTIALS[0],
            cs = X_CREDENTIALS[1],
            at = X_CREDENTIALS[2],
            ats = X_CREDENTIALS[3],
        ))
        .expect("audiences config")
    }

    /// All four audiences as one sink (`audiences`).
    pub fn spec(&self) -> SinkSpec {
        let config = self.config();
        SinkSpec {
            purposes: config.purposes.keys().cloned().collect(),
            sink: Arc::new(AudiencesSink::new(config).expect("audiences sink")),
            batch: quick_batches(),
            retry: quick_retries(),
        }
    }

    /// One sink per audience (`audiences.meta`, …), each in its own consumer group, as
    /// `consent-relay run` builds them.
    pub fn specs_per_audience(&self) -> Vec<SinkSpec> {
        AudiencesSink::per_audience(self.config())
            .expect("audiences sinks")
            .into_iter()
            .map(|sink| SinkSpec {
                purposes: sink.purposes(),
                sink: Arc::new(sink),
                batch: quick_batches(),
                retry: quick_retries(),
            })
            .collect()
    }

    /// Whether the person's hashed email is in each platform's audience.
    pub fn presence(&self, email: &str) -> [bool; 4] {
        let hash = |n: Option<String>| normalize::sha256_hex(&n.expect("normalizes"));
        [
            self.meta
                .members("111")
                .contains(&hash(normalize::meta_email(email))),
            self.google
                .members("222")
                .contains(&hash(normalize::google_email(email, true))),
            self.linkedin
                .members("333")
                .contains(&hash(normalize::linkedin_email(email))),
            self.x
                .members("444")
                .contains(&hash(normalize::x_email(email))),
        ]
    }
}

impl Harness {
    /// The status of `event`'s delivery at `sink` (any target), as the ledger has it.
    pub async fn status(
        &self,
        subject: &str,
        event: Uuid,
        sink: &str,
    ) -> Option<relay_ledger::Status> {
        self.report(subject)
            .await
            .deliveries
            .iter()
            .find(|d| d.key.event_id == event && d.key.sink == sink)
            .map(|d| d.status)
    }

    /// Waits until `event`'s delivery at `sink` has status `want`, and says where it stood if it
    /// never gets there.
    pub async fn reaches(
        &self,
        subject: &str,
        event: Uuid,
        sink: &str,
        want: relay_ledger::Status,
        timeout: Duration,
    ) {
        let mut last = None;
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            last = self.status(subject, event, sink).await;
            if last == Some(want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{sink} delivery of {event} ({subject}) stayed {last:?}, wanted {want:?}");
    }

    /// Offsets the group of `sink` committed, summed over its partitions of the events topic.
    pub async fn committed(&self, sink: &str) -> i64 {
        let kafka = self.kafka();
        let group = kafka.group_id(sink);
        let topics = kafka.topics.clone();
        tokio::task::spawn_blocking(move || relay_runtime::lag::describe(&kafka, &group, &topics))
            .await
            .expect("lag task")
            .expect("lag")
            .iter()
            .map(|l| l.committed.unwrap_or(0))
            .sum()
    }
}
