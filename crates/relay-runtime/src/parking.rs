//! Parked copies on a sink's retry topic: their headers, reading them back (the parked consumer,
//! `parked list`), and `parked retry`, which makes copies due at once.
//!
//! A copy is the original message (key and bytes) with headers saying where it came from, why it
//! was parked and when it is due. It carries its generation (how often the item was parked), so
//! that a copy overtaken by a newer one, or whose delivery was finished meanwhile, does nothing
//! when it comes back. Copies are written before the ledger records them: a copy is never
//! missing for a delivery the ledger says is parked.

use std::time::{Duration, SystemTime};

use rdkafka::error::KafkaResult;
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders, OwnedMessage, Timestamp};
use serde::Serialize;
use uuid::Uuid;

use crate::config::KafkaConfig;
use crate::dead_letter::header as dlq;
use crate::message::{Origin, ParkTicket};

/// Header names of a parked copy (besides the DLQ's origin and event-id headers).
pub mod header {
    pub const SINK: &str = "consent-relay-parked-sink";
    pub const PARKS: &str = "consent-relay-parks";
    pub const FIRST_FAILED_MS: &str = "consent-relay-first-failed-ms";
    pub const DUE_MS: &str = "consent-relay-due-ms";
    pub const ORIGINAL_TIMESTAMP_MS: &str = "consent-relay-original-timestamp-ms";
    /// `true` on a re-assertion copy (see `ParkTicket::reassert`).
    pub const REASSERT: &str = "consent-relay-reassert";
}

/// The headers of a copy of a message from `origin`, parked for `sink` under `ticket`.
pub(crate) fn headers(
    sink: &str,
    origin: &Origin,
    event_id: Option<Uuid>,
    produced_at: Option<SystemTime>,
    ticket: &ParkTicket,
) -> OwnedHeaders {
    let mut pairs: Vec<(&str, String)> = vec![
        (header::SINK, sink.to_owned()),
        (header::PARKS, ticket.parks.to_string()),
        (header::FIRST_FAILED_MS, ticket.first_failed_ms.to_string()),
        (header::DUE_MS, ticket.due_ms.to_string()),
        (dlq::ERROR_MESSAGE, ticket.reason.clone()),
        (dlq::ORIGINAL_TOPIC, origin.topic.clone()),
        (dlq::ORIGINAL_PARTITION, origin.partition.to_string()),
        (dlq::ORIGINAL_OFFSET, origin.offset.to_string()),
    ];
    if let Some(id) = event_id {
        pairs.push((dlq::EVENT_ID, id.to_string()));
    }
    if let Some(ms) = produced_at.and_then(unix_ms) {
        pairs.push((header::ORIGINAL_TIMESTAMP_MS, ms.to_string()));
    }
    if ticket.reassert {
        pairs.push((header::REASSERT, "true".to_owned()));
    }
    pairs.iter().fold(OwnedHeaders::new(), |h, (key, value)| {
        h.insert(Header {
            key,
            value: Some(value.as_str()),
        })
    })
}

/// What a parked copy says about itself.
#[derive(Debug, Clone)]
pub(crate) struct Copy {
    pub sink: String,
    pub origin: Origin,
    pub produced_at: Option<SystemTime>,
    pub ticket: ParkTicket,
}

/// Reads a copy's headers; `Err` names what is missing or malformed (someone else wrote to the
/// retry topic, or a version that writes other headers).
pub(crate) fn read(msg: &OwnedMessage) -> Result<Copy, String> {
    let get = |name: &str| -> Result<String, String> {
        header_value(msg, name).ok_or_else(|| format!("parked copy lacks header {name}"))
    };
    let parse = |name: &str| -> Result<i64, String> {
        get(name)?
            .parse()
            .map_err(|_| format!("parked copy has a malformed header {name}"))
    };
    let ticket = ParkTicket {
        parks: u32::try_from(parse(header::PARKS)?)
            .map_err(|_| format!("parked copy has a malformed header {}", header::PARKS))?,
        first_failed_ms: parse(header::FIRST_FAILED_MS)?,
        due_ms: parse(header::DUE_MS)?,
        reason: header_value(msg, dlq::ERROR_MESSAGE).unwrap_or_default(),
        reassert: header_value(msg, header::REASSERT).as_deref() == Some("true"),
    };
    let partition = i32::try_from(parse(dlq::ORIGINAL_PARTITION)?)
        .map_err(|_| "parked copy has a malformed original partition".to_owned())?;
    Ok(Copy {
        sink: get(header::SINK)?,
        origin: Origin {
            topic: get(dlq::ORIGINAL_TOPIC)?,
            partition,
            offset: parse(dlq::ORIGINAL_OFFSET)?,
        },
        produced_at: header_value(msg, header::ORIGINAL_TIMESTAMP_MS)
            .and_then(|v| v.parse::<u64>().ok())
            .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
            .or_else(|| match msg.timestamp() {
                Timestamp::CreateTime(ms) | Timestamp::LogAppendTime(ms) => u64::try_from(ms)
                    .ok()
                    .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms)),
                Timestamp::NotAvailable => None,
            }),
        ticket,
    })
}

fn header_value(msg: &OwnedMessage, name: &str) -> Option<String> {
    msg.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

fn unix_ms(t: SystemTime) -> Option<i64> {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
}

/// One copy on a retry topic, for `parked list` and `parked retry`.
#[derive(Debug, Clone, Serialize)]
pub struct ParkedCopy {
    pub sink: String,
    pub retry_partition: i32,
    pub retry_offset: i64,
    pub event_id: Option<String>,
    /// The Kafka key: the subject id.
    pub subject_id: Option<String>,
    pub parks: u32,
    pub first_failed_ms: i64,
    pub due_ms: i64,
    pub reason: String,
    pub original_topic: String,
    pub original_partition: i32,
    pub original_offset: i64,
    #[serde(skip)]
    pub message: OwnedMessage,
}

/// Reads the whole retry topic of `sink` without a consumer group (nothing is committed),
/// stopping at the end offsets it saw at the start. Blocking: call from a blocking task.
pub fn read_all(kafka: &KafkaConfig, sink: &str) -> KafkaResult<Vec<ParkedCopy>> {
    let topic = kafka.retry_topic(sink);
    let mut copies = Vec::new();
    crate::topic_reader::read_topic(
        kafka,
        &topic,
        "parked-reader",
        |m| {
            if let Ok(copy) = read(&m) {
                copies.push(ParkedCopy {
                    sink: copy.sink,
                    retry_partition: m.partition(),
                    retry_offset: m.offset(),
                    event_id: header_value(&m, dlq::EVENT_ID),
                    subject_id: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    parks: copy.ticket.parks,
                    first_failed_ms: copy.ticket.first_failed_ms,
                    due_ms: copy.ticket.due_ms,
                    reason: copy.ticket.reason,
                    original_topic: copy.origin.topic,
                    original_partition: copy.origin.partition,
                    original_offset: copy.origin.offset,
                    message: m,
                });
            }
        },
        |_, _| {},
    )?;
    Ok(copies)
}

/// Writes each copy again with its due time set to now, so that the parked consumer tries it at
/// once. The generation stays: whichever of the two copies comes first acts; the other then finds
/// the delivery finished, or parked again under a newer generation, and does nothing.
pub async fn retry_now(
    kafka: &KafkaConfig,
    copies: &[ParkedCopy],
) -> Result<(), crate::RuntimeError> {
    let producer = crate::producer(kafka)?;
    let now = crate::message::now_ms().to_string();
    for c in copies {
        let mut headers = OwnedHeaders::new();
        if let Some(original) = c.message.headers() {
            for h in original.iter() {
                let value = if h.key == header::DUE_MS {
                    Some(now.as_bytes())
                } else {
                    h.value
                };
                headers = headers.insert(Header { key: h.key, value });
            }
        }
        let topic = kafka.retry_topic(&c.sink);
        let mut record: rdkafka::producer::FutureRecord<'_, [u8], [u8]> =
            rdkafka::producer::FutureRecord::to(&topic).headers(headers);
        if let Some(key) = c.message.key() {
            record = record.key(key);
        }
        if let Some(payload) = c.message.payload() {
            record = record.payload(payload);
        }
        producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| crate::RuntimeError::Kafka(e))?;
    }
    Ok(())
}
