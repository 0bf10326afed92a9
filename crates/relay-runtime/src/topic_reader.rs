//! Reading a whole topic once, for the commands that list it (`dlq list|replay`, `parked list`):
//! from each partition's start up to the end offset it had when the read began, without a
//! consumer group (nothing is committed), so an empty topic answers at once and a long one ends
//! when its last message is read rather than after a silence.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::TopicPartitionList;

use crate::config::KafkaConfig;

const TIMEOUT: Duration = Duration::from_secs(10);
/// Ends a read whose end offsets are never reached (a broker that under-reports them, or offsets
/// taken by transaction markers); said in a WARN line, since the answer is then incomplete.
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
        .set("enable.auto.offset.store", "false");
    for (k, v) in &kafka.properties {
        cfg.set(k, v);
    }
    let consumer: BaseConsumer = cfg.create()?;
    let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
    let mut tpl = TopicPartitionList::new();
    let mut remaining = BTreeMap::new();
    let mut ends = BTreeMap::new();
    let mut total = 0;
    for t in metadata.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            let (low, high) = consumer.fetch_watermarks(topic, p.id(), TIMEOUT)?;
            if high > low {
                tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Offset(low))?;
                remaining.insert(p.id(), high);
                ends.insert(p.id(), high);
                total += u64::try_from(high - low).unwrap_or(0);
            }
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
                let m = m.detach();
                if remaining
                    .get(&m.partition())
                    .is_some_and(|end| m.offset() + 1 >= *end)
                {
                    remaining.remove(&m.partition());
                }
                // Written after the read began: not part of this answer, and no sign of progress.
                if ends
                    .get(&m.partition())
                    .is_some_and(|end| m.offset() < *end)
                {
                    quiet_since = Instant::now();
                    read += 1;
                    each(m);
                    progress(read, total);
                }
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
