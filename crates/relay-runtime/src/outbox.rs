//! Where the engine puts what leaves a partition's path: the dead-letter topic and the sink's retry
//! topic. A trait, so that the engine runs against an in-memory outbox in tests; the Kafka one
//! waits for the broker's acknowledgement of every write, because an offset is committed past a
//! message only once its copy is durable.

#[cfg(test)]
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use relay_delivery::BoxFuture;

use crate::config::KafkaConfig;
use crate::dead_letter::header;
use crate::decode::Rejected;
use crate::message::{Message, ParkTicket};

/// A write to a topic that did not succeed; the engine retries it (the batch cannot be committed
/// past the message meanwhile).
#[derive(Debug, thiserror::Error)]
#[error("writing to {topic}: {source}")]
pub struct OutboxError {
    pub topic: String,
    pub source: KafkaError,
}

pub trait Outbox: Send + Sync + 'static {
    /// Writes `msg` to the dead-letter topic with `why`, as rejected by `sink`.
    fn dead_letter<'a>(
        &'a self,
        msg: &'a Message,
        sink: &'a str,
        why: &'a Rejected,
    ) -> BoxFuture<'a, Result<(), OutboxError>>;

    /// Writes a copy of `msg` to `sink`'s retry topic, carrying `ticket`.
    fn park<'a>(
        &'a self,
        msg: &'a Message,
        sink: &'a str,
        ticket: &'a ParkTicket,
    ) -> BoxFuture<'a, Result<(), OutboxError>>;
}

/// The producer of the outbox. It takes messages as large as a consumer fetches by default
/// (`fetch.max.bytes`, 50 MiB; a larger value in `kafka.properties` wins), so that whatever was
/// consumed can be dead-lettered; a broker whose topic takes less answers MessageSizeTooLarge,
/// and the DLQ record then goes without the payload.
pub(crate) fn producer(kafka: &KafkaConfig) -> Result<FutureProducer, crate::RuntimeError> {
    let fetch = kafka
        .properties
        .get("fetch.max.bytes")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(52_428_800);
    // librdkafka's ceiling; the headers and protocol framing need room on top of the payload.
    let max = (fetch + 1_048_576).min(1_000_000_000);
    let mut cfg = rdkafka::config::ClientConfig::new();
    cfg.set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("linger.ms", "5")
        // Every write is awaited (a batch's dead letters up to 64 at once, each sink's within its
        // 2 MiB payload budget), so little is queued; the default (1 GiB) would let a burst of
        // large dead letters from every sink pile up in memory. When it is full a write waits
        // (up to its 30 s queue timeout, then the engine retries it): nothing is committed past it.
        .set("queue.buffering.max.kbytes", "16384")
        .set("message.timeout.ms", "30000")
        .set("message.max.bytes", max.to_string());
    for (k, v) in kafka
        .properties
        .iter()
        .filter(|(k, _)| k.as_str() != "fetch.max.bytes")
    {
        cfg.set(k, v);
    }
    cfg.create().map_err(crate::RuntimeError::Kafka)
}

/// Creates the retry topic of each sink that lacks one. Production brokers usually do not create
/// topics on first use, and the parked consumer must find its topic.
pub(crate) async fn create_retry_topics(
    kafka: &KafkaConfig,
    sinks: &[&str],
) -> Result<(), crate::RuntimeError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let mut cfg = rdkafka::config::ClientConfig::new();
    cfg.set("bootstrap.servers", &kafka.bootstrap_servers);
    for (k, v) in &kafka.properties {
        cfg.set(k, v);
    }
    let admin: AdminClient<DefaultClientContext> = cfg.create()?;
    let names: Vec<String> = sinks.iter().map(|s| kafka.retry_topic(s)).collect();
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| NewTopic::new(n, kafka.retry_topic_partitions, TopicReplication::Fixed(-1)))
        .collect();
    let results = admin
        .create_topics(
            &topics,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(crate::RuntimeError::RetryTopic {
                    topic,
                    message: format!(
                        "{code}; create it beforehand or allow the relay to (kafka.create_retry_topics)"
                    ),
                })
            }
        }
    }
    Ok(())
}

/// The outbox on Kafka.
#[derive(Clone)]
pub struct KafkaOutbox {
    producer: FutureProducer,
    kafka: KafkaConfig,
}

/// Why a DLQ record went without its payload (and perhaps its key).
const PAYLOAD_OMITTED: &str = "consent-relay-payload-omitted";

impl KafkaOutbox {
    pub fn new(producer: FutureProducer, kafka: KafkaConfig) -> KafkaOutbox {
        KafkaOutbox { producer, kafka }
    }

    async fn send(
        &self,
        topic: &str,
        headers: OwnedHeaders,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) -> Result<(), KafkaError> {
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }
}

fn too_large(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)
    )
}

fn dlq_headers(msg: &Message, sink: &str, why: &Rejected) -> OwnedHeaders {
    let partition = msg.origin.partition.to_string();
    let offset = msg.origin.offset.to_string();
    let event_id = why.event_id.map(|id| id.to_string());
    let mut pairs: Vec<(&str, &str)> = vec![
        (header::ERROR_CODE, why.code.as_str()),
        (header::ERROR_MESSAGE, why.message.as_str()),
        (header::SINK, sink),
        (header::ORIGINAL_TOPIC, msg.origin.topic.as_str()),
        (header::ORIGINAL_PARTITION, partition.as_str()),
        (header::ORIGINAL_OFFSET, offset.as_str()),
    ];
    if let Some(id) = &event_id {
        pairs.push((header::EVENT_ID, id.as_str()));
    }
    pairs.iter().fold(OwnedHeaders::new(), |h, (key, value)| {
        h.insert(Header {
            key,
            value: Some(*value),
        })
    })
}

impl Outbox for KafkaOutbox {
    fn dead_letter<'a>(
        &'a self,
        msg: &'a Message,
        sink: &'a str,
        why: &'a Rejected,
    ) -> BoxFuture<'a, Result<(), OutboxError>> {
        Box::pin(async move {
            let topic = self.kafka.dlq_topic.as_str();
            let failed = |source| OutboxError {
                topic: topic.to_owned(),
                source,
            };
            let headers = dlq_headers(msg, sink, why);
            let key = msg.key.as_deref();
            let full = self
                .send(topic, headers.clone(), key, Some(&msg.payload))
                .await;
            match full {
                Err(e) if too_large(&e) => {}
                other => return other.map_err(failed),
            }
            // The message is larger than the dead-letter topic takes. Its origin is in the
            // headers, so the bytes can still be found on the source topic while it retains them.
            let omitted = |what: &str| {
                headers.clone().insert(Header {
                    key: PAYLOAD_OMITTED,
                    value: Some(&format!(
                        "{what} omitted: the message ({} bytes) is larger than {topic} accepts; \
                         read it at its origin",
                        msg.payload.len()
                    )),
                })
            };
            match self.send(topic, omitted("payload"), key, None).await {
                Err(e) if too_large(&e) => self
                    .send(topic, omitted("payload and key"), None, None)
                    .await
                    .map_err(failed),
                other => other.map_err(failed),
            }
        })
    }

    fn park<'a>(
        &'a self,
        msg: &'a Message,
        sink: &'a str,
        ticket: &'a ParkTicket,
    ) -> BoxFuture<'a, Result<(), OutboxError>> {
        Box::pin(async move {
            let topic = self.kafka.retry_topic(sink);
            let headers = crate::parking::headers(
                sink,
                &msg.origin,
                msg.event().map(|e| e.event_id),
                msg.produced_at,
                ticket,
            );
            self.send(&topic, headers, msg.key.as_deref(), Some(&msg.payload))
                .await
                .map_err(|source| OutboxError { topic, source })
        })
    }
}

/// An outbox that keeps what it is given, for tests of the engine.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct MemoryOutbox {
    pub dead_letters: Mutex<Vec<(Message, String, Rejected)>>,
    pub parked: Mutex<Vec<(Message, String, ParkTicket)>>,
}

#[cfg(test)]
impl Outbox for MemoryOutbox {
    fn dead_letter<'a>(
        &'a self,
        msg: &'a Message,
        sink: &'a str,
        why: &'a Rejected,
    ) -> BoxFuture<'a, Result<(), OutboxError>> {
        self.dead_letters.lock().expect("outbox poisoned").push((
            msg.clone(),
            sink.to_owned(),
            why.clone(),
        ));
        Box::pin(async { Ok(()) })
    }

    fn park<'a>(
        &'a self,
        msg: &'a Message,
        sink: &'a str,
        ticket: &'a ParkTicket,
    ) -> BoxFuture<'a, Result<(), OutboxError>> {
        self.parked.lock().expect("outbox poisoned").push((
            msg.clone(),
            sink.to_owned(),
            ticket.clone(),
        ));
        Box::pin(async { Ok(()) })
    }
}
