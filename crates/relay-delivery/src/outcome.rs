use std::time::Duration;

/// The fate of one item at a downstream, as a sink reports it. The same classification drives
/// retries, metrics labels and the ledger status; nothing else decides what is retryable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The downstream changed state as asked.
    Applied,
    /// The downstream already was in the asked state (an idempotent repeat).
    AlreadyApplied,
    /// Try again later; `after` is the downstream's own `Retry-After`, if it gave one.
    Retryable {
        after: Option<Duration>,
        reason: String,
    },
    /// Retrying will not help: the item goes to the dead-letter topic with `reason`.
    Permanent { reason: String },
    /// The destination refuses us as a client (bad credentials, missing permission, endpoint gone):
    /// nothing is wrong with the item, an operator must act. The runtime opens the sink's circuit:
    /// consumption pauses, nothing is dead-lettered, and it probes again with backoff.
    Refused { reason: String },
}

impl Outcome {
    pub fn retryable(reason: impl Into<String>) -> Outcome {
        Outcome::Retryable {
            after: None,
            reason: reason.into(),
        }
    }

    pub fn permanent(reason: impl Into<String>) -> Outcome {
        Outcome::Permanent {
            reason: reason.into(),
        }
    }

    /// What a later request of the same delivery to the same destination gets without being sent,
    /// when this outcome (with HTTP `status`) says the destination would answer it the same way: a
    /// 429 or a refusal. `None`: send the next one. `who` names the destination in the reason.
    pub fn unsent_after(&self, status: Option<u16>, who: &str) -> Option<Outcome> {
        match self {
            Outcome::Retryable { after, .. } if status == Some(429) => Some(Outcome::Retryable {
                after: *after,
                reason: format!("not sent: {who} answered 429 earlier in this delivery"),
            }),
            Outcome::Refused { reason } => Some(Outcome::Refused {
                reason: format!("not sent: {who} refused us earlier ({reason})"),
            }),
            _ => None,
        }
    }

    /// Whether the item is done at the downstream (applied now or before).
    pub fn is_done(&self) -> bool {
        matches!(self, Outcome::Applied | Outcome::AlreadyApplied)
    }

    /// A short, stable label for logs, metrics and the ledger's error class.
    pub fn class(&self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::AlreadyApplied => "already_applied",
            Outcome::Retryable { .. } => "retryable",
            Outcome::Permanent { .. } => "permanent",
            Outcome::Refused { .. } => "refused",
        }
    }

    /// Of two outcomes for parts of the same item, the one that decides the item's fate:
    /// refused beats permanent beats retryable beats applied beats already-applied. Refused wins
    /// so that an item is never dead-lettered for a part that was not even tried.
    pub fn worst(self, other: Outcome) -> Outcome {
        fn rank(o: &Outcome) -> u8 {
            match o {
                Outcome::AlreadyApplied => 0,
                Outcome::Applied => 1,
                Outcome::Retryable { .. } => 2,
                Outcome::Permanent { .. } => 3,
                Outcome::Refused { .. } => 4,
            }
        }
        match (self, other) {
            (Outcome::Retryable { after: a, reason }, Outcome::Retryable { after: b, .. }) => {
                Outcome::Retryable {
                    after: a.max(b),
                    reason,
                }
            }
            (a, b) => {
                if rank(&b) > rank(&a) {
                    b
                } else {
                    a
                }
            }
        }
    }
}
