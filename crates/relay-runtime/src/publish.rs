//! Publishing events (`publish`, `import`, `ingest`): encode, key by `subject_id`, wait for the broker.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use relay_events::{ConsentEvent, EventKind};

use crate::config::KafkaConfig;
use crate::registry::SchemaRegistry;
use crate::RuntimeError;

/// A producer with the configured security properties; idempotent so a retried send does not
/// duplicate (duplicates would be harmless, but noisy in the ledger). A send the broker does not
/// acknowledge within 10 s fails: `publish` is a person waiting, `ingest` answers a vendor that
/// gives up after seconds and retries.
pub fn producer(kafka: &KafkaConfig) -> Result<FutureProducer, RuntimeError> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "10000");
    for (k, v) in &kafka.properties {
        cfg.set(k, v);
    }
    cfg.create().map_err(RuntimeError::Kafka)
}

/// Encodes and sends `events` to `topic` in order, keyed by `subject_id` so each person's events
/// share a partition. With a registry, Confluent framing (registering the schema under
/// `<topic>-value`); without, single-object encoding.
pub async fn publish(
    kafka: &KafkaConfig,
    topic: &str,
    events: &[ConsentEvent],
) -> Result<(), RuntimeError> {
    Publisher::new(kafka)?.send(topic, events).await
}

/// A producer kept for many sends (`ingest` answers each webhook only after its events are
/// acknowledged, and a producer per request would cost a broker connection each time).
pub struct Publisher {
    producer: FutureProducer,
    registry: Option<SchemaRegistry>,
    /// Registered schema ids per (topic, kind): a registry is asked once per process.
    ids: Mutex<HashMap<(String, EventKind), u32>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
}

impl Publisher {
    pub fn new(kafka: &KafkaConfig) -> Result<Publisher, RuntimeError> {
        Ok(Publisher {
            producer: producer(kafka)?,
            registry: kafka
                .schema_registry_url
                .as_deref()
                .map(SchemaRegistry::new),
            ids: Mutex::new(HashMap::new()),
        })
    }

    /// Sends `events` in order and returns once the broker acknowledged every one of them (as
    /// durable as the producer's `acks` make it: all in-sync replicas by default).
    pub async fn send(&self, topic: &str, events: &[ConsentEvent]) -> Result<(), RuntimeError> {
        let mut acked = 0;
        let failed = |acknowledged: usize| {
            move |source: KafkaError| RuntimeError::Publish {
                topic: topic.to_owned(),
                acknowledged,
                total: events.len(),
                source,
            }
        };
        let mut pending = VecDeque::new();
        for ev in events {
            let bytes = match &self.registry {
                None => relay_events::encode_single_object(ev),
                Some(registry) => {
                    let key = (topic.to_owned(), ev.kind);
                    let known = self.ids.lock().ok().and_then(|ids| ids.get(&key).copied());
                    let id = match known {
                        Some(id) => id,
                        None => {
                            let subject = format!("{topic}-value");
                            let id = registry
                                .register(&subject, relay_events::schema_json(ev.kind))
                                .await
                                .map_err(RuntimeError::Registry)?;
                            if let Ok(mut ids) = self.ids.lock() {
                                ids.insert(key, id);
                            }
                            id
                        }
                    };
                    relay_events::encode_confluent(id, ev)
                }
            };
            let key = ev.subject_id.as_str();
            // send_result enqueues at once, so the events leave in order without a round trip each.
            loop {
                match self
                    .producer
                    .send_result(FutureRecord::to(topic).key(key).payload(&bytes))
                {
                    Ok(delivery) => {
                        pending.push_back(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        let Some(oldest) = pending.pop_front() else {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        };
                        acknowledged(oldest).await.map_err(failed(acked))?;
                        acked += 1;
                    }
                    Err((e, _)) => return Err(failed(acked)(e)),
                }
            }
        }
        for delivery in pending {
            acknowledged(delivery).await.map_err(failed(acked))?;
            acked += 1;
        }
        Ok(())
    }
}

pub(crate) async fn acknowledged(delivery: DeliveryFuture) -> Result<(), KafkaError> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(e),
        Err(_canceled) => Err(KafkaError::Canceled),
    }
}
