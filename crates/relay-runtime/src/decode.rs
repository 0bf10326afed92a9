//! Turns message bytes into a valid event, or into the reason it goes to the dead-letter topic.

use std::sync::Arc;

use relay_events::{ConsentEvent, DecodeError, ErrorCode, Frame};
use tokio_util::sync::CancellationToken;
use tracing::warn;
use uuid::Uuid;

use crate::engine::Abandoned;
use crate::registry::{RegistryError, SchemaRegistry};
use crate::retry::RetrySchedule;

/// Why a message or an event did not become deliveries. Goes into the DLQ headers and the ledger;
/// never carries raw PII.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub code: ErrorCode,
    pub message: String,
    pub event_id: Option<Uuid>,
    pub subject_id: Option<String>,
}

impl Rejected {
    pub fn decode(err: &DecodeError) -> Rejected {
        Rejected {
            code: err.code(),
            message: err.to_string(),
            event_id: None,
            subject_id: None,
        }
    }
}

/// A decode failure that is not the message's fault: the registry could not be asked. The message
/// must wait, not go to the DLQ.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct RegistryUnavailable(pub RegistryError);

#[derive(Debug, Clone)]
pub struct Decoder {
    registry: Option<SchemaRegistry>,
}

impl Decoder {
    pub fn new(registry: Option<SchemaRegistry>) -> Decoder {
        Decoder { registry }
    }

    /// Decodes `bytes`, waiting (with backoff, until `shutdown`) while the schema registry cannot
    /// be asked: that is not the message's fault, so it must not go to the DLQ.
    pub(crate) async fn decode_patiently(
        &self,
        bytes: &[u8],
        shutdown: &CancellationToken,
    ) -> Result<Result<Arc<ConsentEvent>, Rejected>, Abandoned> {
        let mut schedule = RetrySchedule::new(&crate::RetryConfig::default());
        let mut attempt = 0u32;
        loop {
            match self.decode(bytes).await {
                Ok(decoded) => return Ok(decoded.map(Arc::new)),
                Err(RegistryUnavailable(e)) => {
                    attempt += 1;
                    warn!(attempt, error = %e, "schema registry unavailable; the message waits");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Err(Abandoned),
                        _ = tokio::time::sleep(schedule.next_delay(None)) => {}
                    }
                }
            }
        }
    }

    pub async fn decode(
        &self,
        bytes: &[u8],
    ) -> Result<Result<ConsentEvent, Rejected>, RegistryUnavailable> {
        let frame = match relay_events::split_frame(bytes) {
            Ok(frame) => frame,
            Err(e) => return Ok(Err(Rejected::decode(&e))),
        };
        match frame {
            Frame::SingleObject { .. } => {
                Ok(relay_events::decode(bytes).map_err(|e| Rejected::decode(&e)))
            }
            Frame::Confluent { schema_id, body } => {
                let Some(registry) = &self.registry else {
                    return Ok(Err(Rejected {
                        code: ErrorCode::UnknownSchema,
                        message: format!(
                            "Confluent-framed message (schema id {schema_id}) but no schema registry is configured"
                        ),
                        event_id: None,
                        subject_id: None,
                    }));
                };
                match registry.schema(schema_id).await {
                    Ok(writer) => Ok(relay_events::decode_with_writer_schema(&writer, body)
                        .map_err(|e| Rejected::decode(&e))),
                    Err(e) if e.is_unknown_schema() => Ok(Err(Rejected {
                        code: ErrorCode::UnknownSchema,
                        message: e.to_string(),
                        event_id: None,
                        subject_id: None,
                    })),
                    Err(e) => Err(RegistryUnavailable(e)),
                }
            }
        }
    }
}
