//! The runtime's part of the configuration. The binary reads the TOML file and hands these down as
//! values; every field is documented in `deploy/consent-relay.example.toml`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// How to reach Kafka and which topics to read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port...]`.
    pub bootstrap_servers: String,
    /// Topics carrying consent events, keyed by `subject_id`.
    #[serde(default = "default_topics")]
    pub topics: Vec<String>,
    /// Where undecodable, invalid and permanently failed events go.
    #[serde(default = "default_dlq_topic")]
    pub dlq_topic: String,
    /// Each sink parks the items whose inline retry budget is spent on its own retry topic
    /// `<retry_topic_prefix>.<sink>`, consumed by the group `<group_prefix>.<sink>.parked`.
    #[serde(default = "default_retry_topic_prefix")]
    pub retry_topic_prefix: String,
    /// Whether `run` creates a missing retry topic (one partition per `retry_topic_partitions`);
    /// turn it off where the relay may not create topics and create them beforehand.
    #[serde(default = "default_true")]
    pub create_retry_topics: bool,
    /// Partitions of a retry topic the relay creates.
    #[serde(default = "default_retry_topic_partitions")]
    pub retry_topic_partitions: i32,
    /// Each sink consumes in its own group `<group_prefix>.<sink>`.
    #[serde(default = "default_group_prefix")]
    pub group_prefix: String,
    /// Static group membership (librdkafka `group.instance.id`): a stable name per instance, e.g.
    /// the pod name. A member that restarts within `session_timeout_ms` gets its partitions back
    /// without a rebalance. Each consumer uses `<instance_id>.<sink>` (and `….parked`).
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Confluent-compatible schema registry; without it, single-object encoding against the
    /// bundled schemas is the only accepted framing.
    #[serde(default)]
    pub schema_registry_url: Option<String>,
    /// librdkafka `session.timeout.ms`.
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u32,
    /// librdkafka `max.poll.interval.ms`: how long a sink may hold its partitions while a
    /// downstream is down before the group reassigns them (nothing is lost either way).
    #[serde(default = "default_max_poll_interval_ms")]
    pub max_poll_interval_ms: u32,
    /// How often each sink refreshes its consumer-lag metric (also after every rebalance).
    #[serde(default = "default_lag_refresh_interval_ms")]
    pub lag_refresh_interval_ms: u64,
    /// Further librdkafka properties, e.g. `security.protocol`, `sasl.mechanisms`,
    /// `sasl.username`, `ssl.ca.location`. Secrets come from the environment (see the binary).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_topics() -> Vec<String> {
    vec!["consent.events".to_owned()]
}
fn default_dlq_topic() -> String {
    "consent.events.dlq".to_owned()
}
fn default_retry_topic_prefix() -> String {
    "consent.events.retry".to_owned()
}
fn default_true() -> bool {
    true
}
fn default_retry_topic_partitions() -> i32 {
    1
}
fn default_group_prefix() -> String {
    "consent-relay".to_owned()
}
fn default_session_timeout_ms() -> u32 {
    10_000
}
fn default_lag_refresh_interval_ms() -> u64 {
    15_000
}
fn default_max_poll_interval_ms() -> u32 {
    600_000
}

impl KafkaConfig {
    pub fn group_id(&self, sink: &str) -> String {
        format!("{}.{sink}", self.group_prefix)
    }

    /// The group that works `sink`'s retry topic.
    pub fn parked_group_id(&self, sink: &str) -> String {
        format!("{}.{sink}.parked", self.group_prefix)
    }

    /// Where `sink` parks items.
    pub fn retry_topic(&self, sink: &str) -> String {
        format!("{}.{sink}", self.retry_topic_prefix)
    }
}

/// How a sink's consumer groups events into calls.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most events handed to the sink at once.
    #[serde(default = "default_max_events")]
    pub max_events: usize,
    /// How long to wait for more events once the first of a batch arrived.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// The linger once a withdrawal, unsubscribe or erasure is in the batch: withdrawals must not
    /// wait behind grants (DESIGN.md §3.7).
    #[serde(default)]
    pub withdrawal_linger_ms: u64,
    /// Batches in flight at once. While one waits (an item's inline retries), the next ones go on;
    /// offsets are still committed strictly in order, and one person's items are in one batch at
    /// a time.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Whether withdrawals may be applied ahead of a backlog of their partition (read ahead by
    /// a client of their own, offsets still committed strictly in order; `lookahead.rs`).
    #[serde(default = "default_lookahead")]
    pub lookahead: bool,
}

fn default_lookahead() -> bool {
    true
}

fn default_max_in_flight() -> usize {
    8
}

fn default_max_events() -> usize {
    100
}
fn default_linger_ms() -> u64 {
    200
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_events: default_max_events(),
            linger_ms: default_linger_ms(),
            withdrawal_linger_ms: 0,
            max_in_flight: default_max_in_flight(),
            lookahead: default_lookahead(),
        }
    }
}

impl BatchConfig {
    pub fn linger(&self) -> Duration {
        Duration::from_millis(self.linger_ms)
    }
    pub fn withdrawal_linger(&self) -> Duration {
        Duration::from_millis(self.withdrawal_linger_ms.min(self.linger_ms))
    }
}

/// Retries, the per-item budget and parking (DESIGN.md §3.4).
///
/// A destination that is unavailable (429, `Retry-After`, unreachable) or refuses us pauses: its
/// items wait with backoff, uncharged, as long as it takes (backpressure; visible in metrics and
/// `/readyz`). An item that fails on its own (a 5xx, a vendor's per-item error) is retried inline
/// within `item_attempts` and `item_budget_ms`, then parked on the sink's retry topic so that the
/// rest of its partition proceeds; parked items come back after `parked_initial_delay_ms`
/// (growing by `factor` up to `parked_max_delay_ms`) and are dead-lettered once
/// `parked_budget_ms` has passed since their first failure.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Upper bound of the first delay (full jitter draws from `[0, bound]`).
    #[serde(default = "default_initial_delay_ms")]
    pub initial_delay_ms: u64,
    /// Upper bound of any delay (a downstream's `Retry-After` may ask for longer and gets it).
    #[serde(default = "default_max_delay_ms")]
    pub max_delay_ms: u64,
    /// Growth factor of the bound per attempt.
    #[serde(default = "default_factor")]
    pub factor: f32,
    /// Attempts over which the bound grows before it stays at `max_delay_ms`.
    #[serde(default = "default_ramp_attempts")]
    pub ramp_attempts: usize,
    /// Failed attempts an item may have inline before it is parked.
    #[serde(default = "default_item_attempts")]
    pub item_attempts: u32,
    /// Time an item may keep failing inline, from its first failure, before it is parked.
    #[serde(default = "default_item_budget_ms")]
    pub item_budget_ms: u64,
    /// Delay before a parked item's first retry; later ones grow by `factor`.
    #[serde(default = "default_parked_initial_delay_ms")]
    pub parked_initial_delay_ms: u64,
    /// Longest delay between two retries of a parked item.
    #[serde(default = "default_parked_max_delay_ms")]
    pub parked_max_delay_ms: u64,
    /// Time from an item's first failure after which a parked item that still fails is
    /// dead-lettered with its last reason.
    #[serde(default = "default_parked_budget_ms")]
    pub parked_budget_ms: u64,
    /// How long after the relay gave up on a request (a timeout, a connection broken after the
    /// request was written) the downstream may still apply it. Decisions of that person applied
    /// meanwhile are sent again once this has passed, so that a late request cannot have the last
    /// word. Must exceed the longest time a downstream takes to apply a request it has received.
    #[serde(default = "default_late_landing_ms")]
    pub late_landing_ms: u64,
}

fn default_initial_delay_ms() -> u64 {
    200
}
fn default_max_delay_ms() -> u64 {
    30_000
}
fn default_factor() -> f32 {
    2.0
}
fn default_ramp_attempts() -> usize {
    10
}
fn default_item_attempts() -> u32 {
    3
}
fn default_item_budget_ms() -> u64 {
    60_000
}
fn default_parked_initial_delay_ms() -> u64 {
    5_000
}
fn default_parked_max_delay_ms() -> u64 {
    3_600_000
}
fn default_parked_budget_ms() -> u64 {
    86_400_000
}
fn default_late_landing_ms() -> u64 {
    60_000
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_delay_ms: default_initial_delay_ms(),
            max_delay_ms: default_max_delay_ms(),
            factor: default_factor(),
            ramp_attempts: default_ramp_attempts(),
            item_attempts: default_item_attempts(),
            item_budget_ms: default_item_budget_ms(),
            parked_initial_delay_ms: default_parked_initial_delay_ms(),
            parked_max_delay_ms: default_parked_max_delay_ms(),
            parked_budget_ms: default_parked_budget_ms(),
            late_landing_ms: default_late_landing_ms(),
        }
    }
}

impl RetryConfig {
    pub fn item_budget(&self) -> Duration {
        Duration::from_millis(self.item_budget_ms)
    }

    pub fn late_landing(&self) -> Duration {
        Duration::from_millis(self.late_landing_ms)
    }

    pub fn parked_budget(&self) -> Duration {
        Duration::from_millis(self.parked_budget_ms)
    }

    /// The delay before a parked item's `parks`-th retry (1 for the first): exponential by
    /// `factor` from `parked_initial_delay_ms`, capped at `parked_max_delay_ms`, with jitter of up
    /// to a tenth so that items parked together do not all come back at once.
    pub fn parked_delay(&self, parks: u32) -> Duration {
        let exponent = i32::try_from(parks.saturating_sub(1)).unwrap_or(i32::MAX);
        let grown = self.parked_initial_delay_ms as f64 * f64::from(self.factor).powi(exponent);
        let capped = grown.min(self.parked_max_delay_ms as f64);
        let jittered = capped * (1.0 - 0.1 * fastrand::f64());
        Duration::from_millis(jittered.max(0.0) as u64)
    }
}

/// How the relay judges an event's `occurred_at` (docs/event-rules.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRules {
    /// How far in the future (against the relay's clock and the message's broker timestamp) an
    /// event may be dated before it is rejected (`future_occurred_at`): a far-future grant would
    /// otherwise win the version rule against every real withdrawal until then.
    #[serde(default = "default_future_tolerance_ms")]
    pub future_tolerance_ms: i64,
    /// Events dated further back than this are accepted (backfills are legitimate) and marked
    /// late in the consent log.
    #[serde(default = "default_late_after_ms")]
    pub late_after_ms: i64,
}

fn default_future_tolerance_ms() -> i64 {
    relay_events::DEFAULT_FUTURE_TOLERANCE_MS
}
fn default_late_after_ms() -> i64 {
    relay_events::DEFAULT_AGE_HORIZON_MS
}

impl Default for EventRules {
    fn default() -> Self {
        EventRules {
            future_tolerance_ms: default_future_tolerance_ms(),
            late_after_ms: default_late_after_ms(),
        }
    }
}

/// What counts as stalled, for `/readyz` and the metrics.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LivenessConfig {
    /// A destination paused (unavailable, refusing us) or a sink without progress while it has
    /// work for this long is named in `/readyz`.
    #[serde(default = "default_stall_after_ms")]
    pub stall_after_ms: u64,
    /// The age a withdrawal, unsubscribe or erasure may reach without an outcome; exported as
    /// `consent_relay_withdrawal_slo_seconds` for the alert that compares the oldest one with it.
    #[serde(default = "default_withdrawal_slo_ms")]
    pub withdrawal_slo_ms: u64,
}

fn default_stall_after_ms() -> u64 {
    60_000
}
fn default_withdrawal_slo_ms() -> u64 {
    300_000
}

impl Default for LivenessConfig {
    fn default() -> Self {
        LivenessConfig {
            stall_after_ms: default_stall_after_ms(),
            withdrawal_slo_ms: default_withdrawal_slo_ms(),
        }
    }
}

/// Checks the `[kafka]` values serde cannot; returns every problem, each naming its key. Once
/// per configuration: every sink shares the section.
pub fn validate_kafka(kafka: &KafkaConfig) -> Vec<String> {
    let mut problems = Vec::new();
    if kafka.bootstrap_servers.trim().is_empty() {
        problems.push("kafka.bootstrap_servers: must not be empty".to_owned());
    }
    if kafka.topics.is_empty() || kafka.topics.iter().any(|t| t.trim().is_empty()) {
        problems.push("kafka.topics: needs at least one non-empty topic".to_owned());
    }
    if kafka.topics.contains(&kafka.dlq_topic) {
        problems.push("kafka.dlq_topic: must not be one of kafka.topics".to_owned());
    }
    if let Some(url) = &kafka.schema_registry_url {
        match reqwest::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {}
            _ => problems.push(format!(
                "kafka.schema_registry_url: {url:?} is not an http(s) URL"
            )),
        }
    }
    if kafka.retry_topic_partitions < 1 {
        problems.push("kafka.retry_topic_partitions: must be at least 1".to_owned());
    }
    if kafka
        .topics
        .iter()
        .any(|t| t.starts_with(&format!("{}.", kafka.retry_topic_prefix)))
    {
        problems
            .push("kafka.retry_topic_prefix: a topic of kafka.topics starts with it".to_owned());
    }
    problems
}

/// Checks a sink's `batch` and `retry` values serde cannot; `prefix` is the sink's section
/// (`sinks.hubspot`). Returns every problem, each naming its full key.
pub fn validate_sink(batch: &BatchConfig, retry: &RetryConfig, prefix: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if batch.max_events == 0 {
        problems.push(format!("{prefix}.batch.max_events: must be at least 1"));
    }
    if batch.max_in_flight == 0 {
        problems.push(format!("{prefix}.batch.max_in_flight: must be at least 1"));
    }
    if retry.initial_delay_ms == 0 || retry.max_delay_ms < retry.initial_delay_ms {
        problems.push(format!(
            "{prefix}.retry: need 0 < initial_delay_ms <= max_delay_ms"
        ));
    }
    if retry.factor.is_nan() || retry.factor < 1.0 {
        problems.push(format!("{prefix}.retry.factor: must be >= 1.0"));
    }
    if retry.item_attempts == 0 {
        problems.push(format!("{prefix}.retry.item_attempts: must be at least 1"));
    }
    if retry.late_landing_ms == 0 {
        // Zero would re-assert at once, while a late request may still land.
        problems.push(format!(
            "{prefix}.retry.late_landing_ms: must be at least 1 (how late a downstream may apply a request the relay gave up on)"
        ));
    }
    if retry.parked_initial_delay_ms == 0
        || retry.parked_max_delay_ms < retry.parked_initial_delay_ms
    {
        problems.push(format!(
            "{prefix}.retry: need 0 < parked_initial_delay_ms <= parked_max_delay_ms"
        ));
    }
    if retry.parked_budget_ms < retry.item_budget_ms {
        problems.push(format!(
            "{prefix}.retry.parked_budget_ms: must be at least item_budget_ms"
        ));
    }
    problems
}
