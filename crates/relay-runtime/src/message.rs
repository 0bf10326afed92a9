//! A consumed message as the engine sees it: where the event first arrived, its bytes, what
//! decoding made of them, and — for a parked copy — the ticket it carries. Built by the Kafka
//! shells (or a test) so that the engine never touches rdkafka types.

use std::sync::Arc;
use std::time::SystemTime;

use relay_events::ConsentEvent;

use crate::decode::Rejected;

/// Where a message first arrived on a source topic. A parked copy keeps its original's origin, so
/// that the DLQ, the ledger and `dlq replay` always name the source position.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// What a copy on a retry topic carries besides the original key and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkTicket {
    /// How often the item was parked, this copy included: the copy's generation. A copy of an
    /// older generation than the newest the ledger knows does nothing.
    pub parks: u32,
    /// When the item first failed, in Unix milliseconds: the total budget counts from here.
    pub first_failed_ms: i64,
    /// When the copy is due for its next attempt, in Unix milliseconds.
    pub due_ms: i64,
    /// The failure that parked it.
    pub reason: String,
    /// A re-assertion copy: the delivery was applied while a request of unknown fate for the same
    /// person could still land, and is sent again (if still the newest decision) once it cannot.
    pub reassert: bool,
}

#[derive(Debug, Clone)]
pub struct Message {
    pub origin: Origin,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// When the original was produced (broker timestamp), if known.
    pub produced_at: Option<SystemTime>,
    pub decoded: Result<Arc<ConsentEvent>, Rejected>,
    /// Set on a copy that `dlq replay` put back for one sink; every other sink ignores it.
    pub replay_for: Option<String>,
    /// Set on a parked copy read from a retry topic.
    pub ticket: Option<ParkTicket>,
}

impl Message {
    pub fn event(&self) -> Option<&Arc<ConsentEvent>> {
        self.decoded.as_ref().ok()
    }

    /// Whether the message carries a withdrawal, unsubscribe or erasure: what must not wait.
    pub fn is_withdrawal(&self) -> bool {
        self.event()
            .is_some_and(|e| e.action() != relay_events::Action::Grant)
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
