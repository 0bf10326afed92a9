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
        }
    }

    /// Of two outcomes for parts of the same item, the one that decides the item's fate:
    /// permanent beats retryable beats applied beats already-applied.
    pub fn worst(self, other: Outcome) -> Outcome {
        fn rank(o: &Outcome) -> u8 {
            match o {
                Outcome::AlreadyApplied => 0,
                Outcome::Applied => 1,
                Outcome::Retryable { .. } => 2,
                Outcome::Permanent { .. } => 3,
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
