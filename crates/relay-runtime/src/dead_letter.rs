//! The dead-letter topic: the original bytes, with headers that say why and where they came from.

use std::time::Duration;

use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::decode::Rejected;

/// Header names on every dead-lettered message.
pub mod header {
    pub const ERROR_CODE: &str = "consent-relay-error-code";
    pub const ERROR_MESSAGE: &str = "consent-relay-error-message";
    pub const SINK: &str = "consent-relay-sink";
    pub const ORIGINAL_TOPIC: &str = "consent-relay-original-topic";
    pub const ORIGINAL_PARTITION: &str = "consent-relay-original-partition";
    pub const ORIGINAL_OFFSET: &str = "consent-relay-original-offset";
    pub const EVENT_ID: &str = "consent-relay-event-id";
}

#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
}

impl DeadLetters {
    pub fn new(producer: FutureProducer, topic: String) -> DeadLetters {
        DeadLetters { producer, topic }
    }

    /// Writes `msg` to the DLQ and waits for the broker's acknowledgement.
    pub async fn send(
        &self,
        msg: &OwnedMessage,
        sink: &str,
        why: &Rejected,
    ) -> Result<(), rdkafka::error::KafkaError> {
        let partition = msg.partition().to_string();
        let offset = msg.offset().to_string();
        let event_id = why.event_id.map(|id| id.to_string());
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: header::ERROR_CODE,
                value: Some(why.code.as_str()),
            })
            .insert(Header {
                key: header::ERROR_MESSAGE,
                value: Some(why.message.as_str()),
            })
            .insert(Header {
                key: header::SINK,
                value: Some(sink),
            })
            .insert(Header {
                key: header::ORIGINAL_TOPIC,
                value: Some(msg.topic()),
            })
            .insert(Header {
                key: header::ORIGINAL_PARTITION,
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: header::ORIGINAL_OFFSET,
                value: Some(offset.as_str()),
            });
        if let Some(id) = &event_id {
            headers = headers.insert(Header {
                key: header::EVENT_ID,
                value: Some(id.as_str()),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.topic).headers(headers);
        if let Some(key) = msg.key() {
            record = record.key(key);
        }
        if let Some(payload) = msg.payload() {
            record = record.payload(payload);
        }
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }
}
