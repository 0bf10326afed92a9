//! The runtime: one Kafka consumer group per sink, routing by the purpose map, batching and
//! coalescing, retries with backoff, the dead-letter topic, and offsets committed only after every
//! outcome is durable in the ledger (DESIGN.md §3).
//!
//! Owns: the path of an event from Kafka to a sink and back to the ledger. Must not: name a
//! concrete sink (sinks arrive as `Arc<dyn Sink>`), or decide what is retryable (the sink's
//! `Outcome` says so).

pub mod config;
mod consumer;
pub mod dead_letter;
mod decode;
pub mod lag;
mod publish;
pub mod registry;
mod retry;
mod route;
mod telemetry;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use relay_delivery::Sink;
use relay_ledger::Ledger;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::{BatchConfig, KafkaConfig, RetryConfig};
pub use decode::{Decoder, Rejected};
pub use publish::{producer, publish};
pub use registry::SchemaRegistry;
pub use retry::RetrySchedule;
pub use telemetry::{Telemetry, METRICS};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("schema registry: {0}")]
    Registry(#[from] registry::RegistryError),
    #[error("shutdown while waiting for the schema registry")]
    ShutdownDuringDecode,
    #[error("sink task {sink} panicked or was cancelled: {message}")]
    Task { sink: String, message: String },
}

/// One sink with its share of the configuration.
#[derive(Clone)]
pub struct SinkSpec {
    pub sink: Arc<dyn Sink>,
    /// The purposes that route to this sink.
    pub purposes: BTreeSet<String>,
    pub batch: BatchConfig,
    pub retry: RetryConfig,
}

/// What all sinks of one process share.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub kafka: KafkaConfig,
    /// Every purpose of the configured purpose map.
    pub known_purposes: BTreeSet<String>,
    /// Stop once every sink had its partitions and saw no message for this long (for batch runs
    /// and the demo); `None` runs until shutdown.
    pub exit_when_idle: Option<Duration>,
}

/// Runs one consumer per sink until `shutdown` fires (or all went idle, see
/// [`RelayConfig::exit_when_idle`]). A failing sink task stops the others: better a visible crash
/// and a restart than a sink silently not consuming.
pub async fn run<L: Ledger>(
    config: RelayConfig,
    ledger: Arc<L>,
    sinks: Vec<SinkSpec>,
    telemetry: Telemetry,
    shutdown: CancellationToken,
) -> Result<(), RuntimeError> {
    let producer = producer(&config.kafka)?;
    let dead_letters = dead_letter::DeadLetters::new(producer, config.kafka.dlq_topic.clone());
    let decoder = Decoder::new(
        config
            .kafka
            .schema_registry_url
            .as_deref()
            .map(SchemaRegistry::new),
    );
    let mut tasks = JoinSet::new();
    for spec in sinks {
        let name = spec.sink.name().to_owned();
        telemetry.register_sink(spec.sink.clone());
        let routes = route::Routes {
            known: config.known_purposes.clone(),
            sink: spec.purposes,
            requires_email: spec.sink.requires_email(),
        };
        let worker = consumer::SinkWorker {
            kafka: config.kafka.clone(),
            sink: spec.sink,
            routes,
            batch: spec.batch,
            retry: spec.retry,
            ledger: ledger.clone(),
            decoder: decoder.clone(),
            dead_letters: dead_letters.clone(),
            exit_when_idle: config.exit_when_idle,
            circuit_open: Default::default(),
            telemetry: telemetry.clone(),
        };
        let token = shutdown.clone();
        tasks.spawn(async move { (name, worker.run(token).await) });
    }
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let failure = match joined {
            Ok((_, Ok(()))) => None,
            Ok((_, Err(e))) => Some(e),
            Err(e) => Some(RuntimeError::Task {
                sink: "?".to_owned(),
                message: e.to_string(),
            }),
        };
        if let Some(e) = failure {
            tracing::error!(error = %e, "sink consumer failed; stopping the others");
            shutdown.cancel();
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}
