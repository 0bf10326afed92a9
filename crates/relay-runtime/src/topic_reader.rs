//! Reading a whole topic once, for the commands that list it (`dlq list|replay`, `parked list`):
//! each partition from its start until a fetch finds nothing more (librdkafka's partition EOF),
//! without a consumer group (nothing is committed), so an empty topic answers at once and a long
//! one ends when its last message is read rather than after a silence.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::OwnedMessage;
use rdkafka::TopicPartitionList;

use crate::config::KafkaConfig;

const TIMEOUT: Duration = Duration::from_secs(10);
/// Ends a read whose partitions never report their end (a leader that does not answer); said in
/// a WARN line, since the answer is then incomplete.
const QUIET: Duration = Duration::from_secs(10);

/// Calls `each` with every message of `topic`, in order per partition, and `progress` with
/// (messages read, messages the partitions hold) as it goes. Blocking: call from a blocking task.
pub fn read_topic(
    kafka: &KafkaConfig,
    topic: &str,
    reader: &str,
    mut each: impl FnMut(OwnedMessage),
    mut progress: impl FnMut(u64, u64),
) -> KafkaResult<()> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("group.id", format!("{}.{reader}", kafka.group_prefix))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // The end is where a fetch finds nothing more: ListOffsets' answer alone was seen stale
        // on the test broker (a read stopped one message short, every time, for a minute).
        .set("enable.partition.eof", "true");
    for (k, v) in &kafka.properties {
        cfg.set(k, v);
    }
    let consumer: BaseConsumer = cfg.create()?;
    let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
    let mut tpl = TopicPartitionList::new();
    let mut remaining = BTreeSet::new();
    // For the progress figure only.
    let mut total = 0;
    for t in metadata.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            if let Ok((low, high)) = consumer.fetch_watermarks(topic, p.id(), TIMEOUT) {
                total += u64::try_from(high - low).unwrap_or(0);
            }
            tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)?;
            remaining.insert(p.id());
        }
    }
    if remaining.is_empty() {
        return Ok(());
    }
    consumer.assign(&tpl)?;
    let mut read = 0;
    let mut quiet_since = Instant::now();
    while !remaining.is_empty() && quiet_since.elapsed() < QUIET {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                quiet_since = Instant::now();
                read += 1;
                each(m.detach());
                progress(read, total.max(read));
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                remaining.remove(&partition);
            }
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    if !remaining.is_empty() {
        tracing::warn!(
            topic,
            read,
            held = total,
            partitions = remaining.len(),
            "stopped reading after {}s without a message before the end of every partition: the answer may be incomplete",
            QUIET.as_secs()
        );
    }
    Ok(())
}
