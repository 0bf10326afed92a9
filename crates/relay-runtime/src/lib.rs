//! The runtime: one Kafka consumer group per sink (one per destination), routing by the purpose
//! map, batching and coalescing, retries within a per-item budget, parking on a per-sink retry
//! topic, the dead-letter topic, and offsets committed only after every outcome is durable
//! (DESIGN.md §3).
//!
//! Layout: `engine` decides a batch (route, plan, claim, deliver, park, finish) without seeing
//! Kafka; `consumer` (source topics) and `parked` (the retry topic) are the Kafka shells around it;
//! `outbox` writes the DLQ and the retry topic; `telemetry` holds metrics and readiness.
//!
//! Owns: the path of an event from Kafka to a sink and back to the ledger. Must not: name a
//! concrete sink (sinks arrive as `Arc<dyn Sink>`), or decide what is retryable (the sink's
//! `Outcome` says so).

#![forbid(unsafe_code)]

pub mod config;
mod consumer;
pub mod dead_letter;
mod decode;
mod engine;
pub mod lag;
pub mod log_fields;
mod lookahead;
mod message;
pub mod outbox;
mod parked;
pub mod parking;
mod publish;
pub mod registry;
mod retry;
mod route;
mod telemetry;
mod topic_reader;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use relay_delivery::Sink;
use relay_ledger::Ledger;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::{BatchConfig, EventRules, KafkaConfig, LivenessConfig, RetryConfig};
pub use decode::{Decoder, Rejected};
pub use message::{Message, Origin, ParkTicket};
pub use publish::{producer, publish, Publisher};
pub use registry::SchemaRegistry;
pub use retry::RetrySchedule;
pub use telemetry::{metric, Telemetry, METRICS};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Events are acknowledged in order, so the first `acknowledged` are on the topic.
    #[error(
        "publishing to {topic}: {acknowledged} of {total} event(s) acknowledged, then: {source}"
    )]
    Publish {
        topic: String,
        acknowledged: usize,
        total: usize,
        source: rdkafka::error::KafkaError,
    },
    #[error("creating the retry topic {topic}: {message}")]
    RetryTopic { topic: String, message: String },
    #[error("schema registry: {0}")]
    Registry(#[from] registry::RegistryError),
    #[error("shutdown while waiting for the schema registry")]
    ShutdownDuringDecode,
    #[error("sink task {sink} panicked or was cancelled: {message}")]
    Task { sink: String, message: String },
    /// Nothing is lost (the work was not committed, the next start reads it again), but the stop
    /// was not clean, which a supervisor or a batch job should be able to tell.
    #[error(
        "stopped with {batches} batch(es) of {sink} ({lane}) not yet durable: not committed, \
         they are read again on the next start"
    )]
    Abandoned {
        sink: String,
        lane: &'static str,
        batches: usize,
    },
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
    pub liveness: LivenessConfig,
    pub events: EventRules,
}

/// How long shutdown waits for the consumers to leave their groups (see [`consumer::Closing`]).
const CLOSE_LIMIT: Duration = Duration::from_secs(10);

/// Runs two consumers per sink (its source topics, its retry topic) until `shutdown` fires (or all
/// went idle, see [`RelayConfig::exit_when_idle`]). A failing sink task stops the others: better a
/// visible crash and a restart than a sink silently not consuming.
pub async fn run<L: Ledger>(
    config: RelayConfig,
    ledger: Arc<L>,
    sinks: Vec<SinkSpec>,
    telemetry: Telemetry,
    shutdown: CancellationToken,
) -> Result<(), RuntimeError> {
    telemetry.set_liveness(config.liveness.clone());
    let outbox: Arc<dyn outbox::Outbox> = Arc::new(outbox::KafkaOutbox::new(
        outbox::producer(&config.kafka)?,
        config.kafka.clone(),
    ));
    if config.kafka.create_retry_topics {
        let names: Vec<&str> = sinks.iter().map(|s| s.sink.name()).collect();
        outbox::create_retry_topics(&config.kafka, &names).await?;
    }
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
        // Every destination's series from the start, so a dashboard shows 0, not "no data".
        telemetry.set_circuit(&name, None);
        telemetry.set_paused(&name, None);
        telemetry.register_sink(spec.sink.clone());
        let routes = route::Routes {
            known: config.known_purposes.clone(),
            sink: spec.purposes,
            requires_email: spec.sink.requires_email(),
        };
        let engine = Arc::new(engine::Engine::new(
            spec.sink,
            routes,
            spec.retry,
            ledger.clone(),
            outbox.clone(),
            telemetry.clone(),
            config.events.clone(),
        ));
        let source = consumer::SourceWorker {
            kafka: config.kafka.clone(),
            engine: engine.clone(),
            batch: spec.batch.clone(),
            decoder: decoder.clone(),
            exit_when_idle: config.exit_when_idle,
            telemetry: telemetry.clone(),
        };
        let parked = parked::ParkedWorker {
            kafka: config.kafka.clone(),
            engine,
            batch: spec.batch,
            decoder: decoder.clone(),
            exit_when_idle: config.exit_when_idle,
            telemetry: telemetry.clone(),
        };
        let token = shutdown.clone();
        let sink = name.clone();
        tasks.spawn(async move { (sink, source.run(token).await) });
        let token = shutdown.clone();
        tasks.spawn(async move { (name, parked.run(token).await) });
    }
    let progress = tokio::spawn(log_progress(telemetry.clone(), shutdown.clone()));
    let mut first_error = None;
    let mut abandoned = None;
    while let Some(joined) = tasks.join_next().await {
        let failure = match joined {
            Ok((_, Ok(()))) => None,
            Ok((sink, Err(e))) => Some((sink, e)),
            Err(e) => Some((
                "?".to_owned(),
                RuntimeError::Task {
                    sink: "?".to_owned(),
                    message: e.to_string(),
                },
            )),
        };
        if let Some((sink, e)) = failure {
            if matches!(e, RuntimeError::Abandoned { .. }) {
                // Only after a shutdown; a failure, if there was one, is the better answer.
                match &abandoned {
                    None => abandoned = Some(e),
                    Some(_) => tracing::warn!(sink = %sink, error = %e, "work left"),
                }
                continue;
            }
            shutdown.cancel();
            // The first failure is returned, and said once by the caller; later ones only here.
            if first_error.is_some() {
                tracing::error!(sink = %sink, error = %e, "sink consumer failed as well");
            } else {
                tracing::warn!(sink = %sink, "sink consumer failed; stopping the others");
                first_error = Some(e);
            }
        }
    }
    progress.abort();
    consumer::closes_finished(CLOSE_LIMIT).await;
    first_error.or(abandoned).map_or(Ok(()), Err)
}

/// How often each busy sink says what it did.
const PROGRESS_EVERY: Duration = Duration::from_secs(60);

/// A line per sink and minute while it works or lags: events by outcome, and the lag left.
async fn log_progress(telemetry: Telemetry, shutdown: CancellationToken) {
    let mut before = telemetry.progress();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PROGRESS_EVERY) => {}
        }
        let now = telemetry.progress();
        for (sink, events, lag, outcomes) in telemetry::progress_lines(&before, &now) {
            tracing::info!(sink = %sink, events, lag, outcomes = %outcomes, "progress in the last minute");
        }
        before = now;
    }
}
