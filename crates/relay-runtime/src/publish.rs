//! Publishing events (the `publish` command): encode, key by `subject_id`, wait for the broker.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use std::collections::VecDeque;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use relay_events::{ConsentEvent, EventKind};

use crate::config::KafkaConfig;
use crate::registry::SchemaRegistry;
use crate::RuntimeError;

/// A producer with the configured security properties; idempotent so a retried send does not
/// duplicate (duplicates would be harmless, but noisy in the ledger).
pub fn producer(kafka: &KafkaConfig) -> Result<FutureProducer, RuntimeError> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000");
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
    let producer = producer(kafka)?;
    let registry = kafka
        .schema_registry_url
        .as_deref()
        .map(SchemaRegistry::new);
    let mut ids = std::collections::HashMap::<EventKind, u32>::new();
    let mut pending = VecDeque::new();
    for ev in events {
        let bytes = match &registry {
            None => relay_events::encode_single_object(ev),
            Some(registry) => {
                let id = match ids.get(&ev.kind) {
                    Some(id) => *id,
                    None => {
                        let subject = format!("{topic}-value");
                        let id = registry
                            .register(&subject, relay_events::schema_json(ev.kind))
                            .await
                            .map_err(RuntimeError::Registry)?;
                        ids.insert(ev.kind, id);
                        id
                    }
                };
                relay_events::encode_confluent(id, ev)
            }
        };
        let key = ev.subject_id.as_str();
        // send_result enqueues at once, so the events leave in order without a round trip each.
        loop {
            match producer.send_result(FutureRecord::to(topic).key(key).payload(&bytes)) {
                Ok(delivery) => {
                    pending.push_back(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    let Some(oldest) = pending.pop_front() else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    acknowledged(oldest).await?;
                }
                Err((e, _)) => return Err(RuntimeError::Kafka(e)),
            }
        }
    }
    for delivery in pending {
        acknowledged(delivery).await?;
    }
    Ok(())
}

async fn acknowledged(delivery: DeliveryFuture) -> Result<(), RuntimeError> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(RuntimeError::Kafka(e)),
        Err(_canceled) => Err(RuntimeError::Kafka(KafkaError::Canceled)),
    }
}
