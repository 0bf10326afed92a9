//! The dead-letter topic: the original bytes, with headers that say why and where they came from;
//! reading it back and replaying messages once their cause is fixed (DESIGN.md §3.5).

use rdkafka::error::KafkaResult;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::FutureRecord;
use serde::Serialize;

use crate::config::KafkaConfig;

/// Header names on every dead-lettered message.
pub mod header {
    pub const ERROR_CODE: &str = "consent-relay-error-code";
    pub const ERROR_MESSAGE: &str = "consent-relay-error-message";
    pub const SINK: &str = "consent-relay-sink";
    pub const ORIGINAL_TOPIC: &str = "consent-relay-original-topic";
    pub const ORIGINAL_PARTITION: &str = "consent-relay-original-partition";
    pub const ORIGINAL_OFFSET: &str = "consent-relay-original-offset";
    pub const EVENT_ID: &str = "consent-relay-event-id";
    /// On a message `dlq replay` put back on its original topic: the one sink that decides it
    /// again. Every other sink ignores the copy.
    pub const REPLAY_SINK: &str = "consent-relay-replay-sink";
}

/// The sink a replayed copy is meant for, if `msg` is one.
pub fn replay_target(msg: &OwnedMessage) -> Option<String> {
    let headers = msg.headers()?;
    headers
        .iter()
        .find(|h| h.key == header::REPLAY_SINK)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// One message on the dead-letter topic, with its headers decoded.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub dlq_partition: i32,
    pub dlq_offset: i64,
    pub sink: String,
    pub code: String,
    pub message: String,
    pub event_id: Option<String>,
    pub original_topic: String,
    pub original_partition: Option<i32>,
    pub original_offset: Option<i64>,
    /// When it was dead-lettered (the DLQ message's timestamp), in ms since the epoch.
    pub dead_lettered_at_ms: Option<i64>,
    /// The original message's key: the subject id, as producers key consent events.
    pub subject_id: Option<String>,
    #[serde(skip)]
    pub key: Option<Vec<u8>>,
    #[serde(skip)]
    pub payload: Vec<u8>,
}

/// Reads the whole dead-letter topic (see [`crate::topic_reader`]); `progress` gets (read, held).
/// Blocking: call from a blocking task.
pub fn read_all(
    kafka: &KafkaConfig,
    progress: impl FnMut(u64, u64),
) -> KafkaResult<Vec<DeadLetter>> {
    let mut letters = Vec::new();
    crate::topic_reader::read_topic(
        kafka,
        &kafka.dlq_topic,
        "dlq-reader",
        |m| letters.push(dead_letter(&m)),
        progress,
    )?;
    letters.sort_by_key(|l| (l.dlq_partition, l.dlq_offset));
    Ok(letters)
}

fn dead_letter(m: &OwnedMessage) -> DeadLetter {
    let get = |name: &str| -> Option<String> {
        m.headers()?
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    DeadLetter {
        dlq_partition: m.partition(),
        dlq_offset: m.offset(),
        sink: get(header::SINK).unwrap_or_default(),
        code: get(header::ERROR_CODE).unwrap_or_default(),
        message: get(header::ERROR_MESSAGE).unwrap_or_default(),
        event_id: get(header::EVENT_ID),
        original_topic: get(header::ORIGINAL_TOPIC).unwrap_or_default(),
        original_partition: get(header::ORIGINAL_PARTITION).and_then(|p| p.parse().ok()),
        original_offset: get(header::ORIGINAL_OFFSET).and_then(|o| o.parse().ok()),
        dead_lettered_at_ms: m.timestamp().to_millis(),
        subject_id: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
    }
}

/// One copy per dead letter: the first of those a sink wrote for the same original message
/// (topic, partition, offset), and how many later copies were dropped. A second copy happens when
/// the process dies between the DLQ write and the ledger's record of it (the redelivered message
/// is dead-lettered again), or when several purposes of one event fail for good. Letters whose
/// origin is unknown (written by another tool) are all kept.
pub fn distinct(letters: Vec<DeadLetter>) -> (Vec<DeadLetter>, usize) {
    let mut seen = std::collections::HashSet::new();
    let before = letters.len();
    let kept: Vec<DeadLetter> = letters
        .into_iter()
        .filter(|l| match (l.original_partition, l.original_offset) {
            (Some(p), Some(o)) => seen.insert((l.sink.clone(), l.original_topic.clone(), p, o)),
            _ => true,
        })
        .collect();
    let dropped = before - kept.len();
    (kept, dropped)
}

/// How many letters go to the producer before their acknowledgements are awaited: enough to keep
/// it busy, and the step of the progress `replay` reports.
pub const REPLAY_CHUNK: usize = 500;

/// A replay that stopped: how far it got, so the operator knows what was sent.
#[derive(Debug, thiserror::Error)]
#[error("{sent} of {total} message(s) replayed and acknowledged, then the broker failed (the next ones may be partly sent: replaying them again is harmless): {source}")]
pub struct ReplayError {
    pub sent: usize,
    pub total: usize,
    pub source: crate::RuntimeError,
}

/// Puts `letters` back on their original topics with their original keys and bytes, each marked
/// for the sink that dead-lettered it; that sink decides them again (the version rule included, so
/// a replay older than a newer decision is superseded), every other sink ignores the copies.
/// Calls `sent` with the running count after each acknowledged chunk.
pub async fn replay(
    kafka: &KafkaConfig,
    letters: &[DeadLetter],
    mut sent: impl FnMut(usize),
) -> Result<(), ReplayError> {
    let failed = |done: usize| {
        move |source| ReplayError {
            sent: done,
            total: letters.len(),
            source,
        }
    };
    let producer = crate::producer(kafka).map_err(failed(0))?;
    let mut done = 0;
    for chunk in letters.chunks(REPLAY_CHUNK) {
        let mut pending = Vec::with_capacity(chunk.len());
        for l in chunk {
            let headers = OwnedHeaders::new().insert(Header {
                key: header::REPLAY_SINK,
                value: Some(l.sink.as_str()),
            });
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&l.original_topic)
                .payload(l.payload.as_slice())
                .headers(headers);
            if let Some(key) = &l.key {
                record = record.key(key.as_slice());
            }
            // Enqueued at once, in order; a chunk is far below the producer's queue.
            let delivery = producer
                .send_result(record)
                .map_err(|(e, _)| failed(done)(crate::RuntimeError::Kafka(e)))?;
            pending.push(delivery);
        }
        for delivery in pending {
            crate::publish::acknowledged(delivery)
                .await
                .map_err(|e| failed(done)(crate::RuntimeError::Kafka(e)))?;
        }
        done += chunk.len();
        sent(done);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(dlq_offset: i64, sink: &str, origin: Option<(i32, i64)>) -> DeadLetter {
        DeadLetter {
            dlq_partition: 0,
            dlq_offset,
            sink: sink.into(),
            code: "downstream_permanent".into(),
            message: String::new(),
            event_id: None,
            original_topic: "consent.events".into(),
            original_partition: origin.map(|o| o.0),
            original_offset: origin.map(|o| o.1),
            dead_lettered_at_ms: None,
            subject_id: None,
            key: None,
            payload: Vec::new(),
        }
    }

    #[test]
    fn one_copy_per_sink_and_origin_is_kept_the_first() {
        let (kept, dropped) = distinct(vec![
            letter(0, "hubspot", Some((1, 7))),
            letter(1, "newsletter", Some((1, 7))),
            letter(2, "hubspot", Some((1, 7))),
            letter(3, "hubspot", Some((2, 7))),
            letter(4, "hubspot", None),
            letter(5, "hubspot", None),
        ]);
        assert_eq!(dropped, 1);
        assert_eq!(
            kept.iter().map(|l| l.dlq_offset).collect::<Vec<_>>(),
            [0, 1, 3, 4, 5]
        );
    }
}
