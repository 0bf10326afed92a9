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
    /// Each sink consumes in its own group `<group_prefix>.<sink>`.
    #[serde(default = "default_group_prefix")]
    pub group_prefix: String,
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

/// Backoff for retryable failures. Retries never end while the failure stays retryable: after
/// `ramp_attempts` the delay stays at `max_delay_ms` and the sink's partitions wait (backpressure).
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

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_delay_ms: default_initial_delay_ms(),
            max_delay_ms: default_max_delay_ms(),
            factor: default_factor(),
            ramp_attempts: default_ramp_attempts(),
        }
    }
}

/// Checks the values serde cannot; returns every problem, each naming its key.
pub fn validate(
    kafka: &KafkaConfig,
    batch: &BatchConfig,
    retry: &RetryConfig,
    prefix: &str,
) -> Vec<String> {
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
    if batch.max_events == 0 {
        problems.push(format!("{prefix}.batch.max_events: must be at least 1"));
    }
    if retry.initial_delay_ms == 0 || retry.max_delay_ms < retry.initial_delay_ms {
        problems.push(format!(
            "{prefix}.retry: need 0 < initial_delay_ms <= max_delay_ms"
        ));
    }
    if retry.factor.is_nan() || retry.factor < 1.0 {
        problems.push(format!("{prefix}.retry.factor: must be >= 1.0"));
    }
    problems
}
