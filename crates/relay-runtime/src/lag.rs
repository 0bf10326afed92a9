//! Consumer lag, computed from the broker: log end offset (ListOffsets) minus the group's committed
//! offset, per partition. Used by the relay's own metrics and by `consent-relay lag`, which works
//! against any broker without a running relay.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Message, Timestamp};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::config::KafkaConfig;

const TIMEOUT: Duration = Duration::from_secs(10);

/// One partition's position of one group. Serialized for `lag --json` with every field present
/// (`null` when unknown), so that scripts can rely on its shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartitionLag {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    /// The next offset the group will read; `None` if it never committed here.
    pub committed: Option<i64>,
    /// The first offset still in the log.
    pub log_start: i64,
    /// The offset the next produced message will get.
    pub log_end: i64,
    /// Messages the group has not committed past yet.
    pub lag: i64,
    /// How long ago the oldest uncommitted message was produced, in seconds (`lag` CLI only).
    pub oldest_unapplied_age_seconds: Option<f64>,
    /// The group's state as the coordinator reports it (`Stable`, `Empty`, `Dead` for a group
    /// that does not exist, …); `None` where it could not be asked (`lag` CLI only).
    pub group_state: Option<String>,
    /// The member the partition is assigned to, as `kafka-consumer-groups --describe` shows it;
    /// `None` while no member holds it.
    pub member: Option<Member>,
}

/// A group member holding a partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    pub consumer_id: String,
    pub host: String,
    pub client_id: String,
}

/// Lag of `partitions` for the group `consumer` belongs to. Blocking: call from a blocking task.
pub fn lag_of<C: ConsumerContext, K: Consumer<C>>(
    consumer: &K,
    group: &str,
    partitions: &TopicPartitionList,
) -> KafkaResult<Vec<PartitionLag>> {
    let committed = consumer.committed_offsets(partitions.clone(), TIMEOUT)?;
    let mut out = Vec::new();
    for e in committed.elements() {
        let (low, high) = consumer.fetch_watermarks(e.topic(), e.partition(), TIMEOUT)?;
        let committed = match e.offset() {
            Offset::Offset(o) if o >= 0 => Some(o),
            _ => None,
        };
        out.push(PartitionLag {
            group: group.to_owned(),
            topic: e.topic().to_owned(),
            partition: e.partition(),
            committed,
            log_start: low,
            log_end: high,
            lag: backlog(committed, low, high),
            oldest_unapplied_age_seconds: None,
            group_state: None,
            member: None,
        });
    }
    Ok(out)
}

/// `consent-relay lag`: the lag of `group` on every partition of `topics`, with the age of each
/// partition's oldest uncommitted message. Joins no group, commits nothing.
pub fn describe(
    kafka: &KafkaConfig,
    group: &str,
    topics: &[String],
) -> KafkaResult<Vec<PartitionLag>> {
    let consumer: BaseConsumer = client(kafka, group).create()?;
    let mut tpl = TopicPartitionList::new();
    for topic in topics {
        let md = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
        for t in md.topics() {
            for p in t.partitions() {
                tpl.add_partition(t.name(), p.id());
            }
        }
    }
    let mut lags = lag_of(&consumer, group, &tpl)?;
    // Who holds what: best effort, since a broker may not answer DescribeGroups; the offsets
    // above are the answer that matters.
    if let Ok(list) = consumer.fetch_group_list(Some(group), TIMEOUT) {
        // Kafka describes a group it does not know as `Dead`; some brokers leave it out.
        if !list.groups().iter().any(|g| g.name() == group) {
            for l in lags.iter_mut() {
                l.group_state = Some("Dead".to_owned());
            }
        }
        if let Some(info) = list.groups().iter().find(|g| g.name() == group) {
            let mut holders = std::collections::HashMap::new();
            for m in info.members() {
                let member = Member {
                    consumer_id: m.id().to_owned(),
                    host: m.client_host().trim_start_matches('/').to_owned(),
                    client_id: m.client_id().to_owned(),
                };
                for tp in m.assignment().map(assigned).unwrap_or_default() {
                    holders.insert(tp, member.clone());
                }
            }
            for l in lags.iter_mut() {
                l.group_state = Some(info.state().to_owned());
                l.member = holders.get(&(l.topic.clone(), l.partition)).cloned();
            }
        }
    }
    let reader: BaseConsumer = client(kafka, group).create()?;
    for l in lags.iter_mut().filter(|l| l.lag > 0) {
        l.oldest_unapplied_age_seconds = age_at(
            &reader,
            &l.topic,
            l.partition,
            l.committed.unwrap_or(l.log_start).max(l.log_start),
        )?;
    }
    Ok(lags)
}

/// The partitions of a consumer-protocol member assignment (version, then per topic its name and
/// partitions, then user data); what cannot be read is left out.
fn assigned(bytes: &[u8]) -> Vec<(String, i32)> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (b.get(..n)?, b.get(n..)?);
        *b = rest;
        Some(head)
    }
    fn i16_(b: &mut &[u8]) -> Option<i16> {
        take(b, 2).map(|x| i16::from_be_bytes([x[0], x[1]]))
    }
    fn i32_(b: &mut &[u8]) -> Option<i32> {
        take(b, 4).map(|x| i32::from_be_bytes([x[0], x[1], x[2], x[3]]))
    }
    let mut out = Vec::new();
    let mut b = bytes;
    let parse = |b: &mut &[u8], out: &mut Vec<(String, i32)>| -> Option<()> {
        i16_(b)?;
        for _ in 0..i32_(b)?.max(0) {
            let len = usize::try_from(i16_(b)?).ok()?;
            let topic = String::from_utf8_lossy(take(b, len)?).into_owned();
            for _ in 0..i32_(b)?.max(0) {
                out.push((topic.clone(), i32_(b)?));
            }
        }
        Some(())
    };
    let _ = parse(&mut b, &mut out);
    out
}

/// A client that reads `group`'s committed offsets and the log end offsets without joining the
/// group.
pub(crate) fn probe(kafka: &KafkaConfig, group: &str) -> KafkaResult<BaseConsumer> {
    client(kafka, group).create()
}

fn client(kafka: &KafkaConfig, group: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    for (k, v) in &kafka.properties {
        cfg.set(k, v);
    }
    cfg
}

/// The age of the message at `offset`, read without a group.
fn age_at(
    reader: &BaseConsumer,
    topic: &str,
    partition: i32,
    offset: i64,
) -> KafkaResult<Option<f64>> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    reader.assign(&tpl)?;
    let deadline = std::time::Instant::now() + TIMEOUT;
    while std::time::Instant::now() < deadline {
        match reader.poll(Duration::from_millis(200)) {
            Some(Ok(m)) if m.partition() == partition && m.topic() == topic => {
                return Ok(produced_at(&m).map(|t| {
                    SystemTime::now()
                        .duration_since(t)
                        .unwrap_or_default()
                        .as_secs_f64()
                }));
            }
            Some(Err(e)) => return Err(e),
            _ => {}
        }
    }
    Ok(None)
}

/// When a message was produced (or appended, for log-append-time topics).
pub fn produced_at(m: &impl Message) -> Option<SystemTime> {
    match m.timestamp() {
        Timestamp::CreateTime(ms) | Timestamp::LogAppendTime(ms) if ms >= 0 => {
            Some(UNIX_EPOCH + Duration::from_millis(ms as u64))
        }
        _ => None,
    }
}

/// What a group has still to read of a partition holding offsets `low..high`. A group that never
/// committed starts at the beginning (auto.offset.reset = earliest), so everything still in the
/// log is its lag, as it is for a commit behind the log's start (retention). A commit beyond the
/// end reads as caught up, not as a negative lag: a watermark read a moment before the commit
/// lands there (the test broker does it), and a stall alarm must not fire for it.
fn backlog(committed: Option<i64>, low: i64, high: i64) -> i64 {
    let from = committed.unwrap_or(low).max(low);
    (high - from).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_never_negative() {
        assert_eq!(backlog(Some(7), 5, 10), 3);
        assert_eq!(backlog(Some(10), 5, 10), 0);
        assert_eq!(backlog(None, 5, 10), 5);
        assert_eq!(backlog(Some(2), 5, 10), 5, "behind retention");
        assert_eq!(
            backlog(Some(40), 5, 10),
            0,
            "beyond the end: caught up, never negative"
        );
    }

    #[test]
    fn a_member_assignment_reads_as_its_partitions() {
        // Version 1; one topic "ab" with partitions 0 and 7; empty user data.
        let bytes = [
            0, 1, 0, 0, 0, 1, 0, 2, b'a', b'b', 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0,
        ];
        assert_eq!(
            assigned(&bytes),
            [("ab".to_owned(), 0), ("ab".to_owned(), 7)]
        );
        // Cut short: what was read stands, nothing panics.
        assert_eq!(assigned(&bytes[..18]), [("ab".to_owned(), 0)]);
        assert!(assigned(&[]).is_empty());
    }
}
