use std::time::Duration;

/// The fate of one item at a downstream, as a sink reports it. The same classification drives
/// retries, parking, metrics labels and the ledger status; nothing else decides what is retryable.
///
/// Two retryable classes, because they call for opposite reactions: [`Outcome::Retryable`] is a
/// failure of this item (or of a request it was part of) that may pass on a later try, and is
/// charged to the item's retry budget, after which the item is parked so that everyone else
/// proceeds. [`Outcome::Unavailable`] says the destination as a whole cannot take requests now
/// (rate limit, `Retry-After`, unreachable, out of budget): the destination pauses, and no item is
/// blamed for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The downstream changed state as asked.
    Applied,
    /// The downstream already was in the asked state (an idempotent repeat).
    AlreadyApplied,
    /// The downstream would not apply a grant directly and asked the person to confirm it (a
    /// double opt-in email): done as far as the relay is concerned, recorded as awaiting
    /// confirmation.
    AwaitingConfirmation,
    /// This item failed in a way a later attempt may fix (a 5xx, a vendor's transient per-item
    /// error, an answer that lists no result for it). `after` is the downstream's own hint.
    Retryable {
        after: Option<Duration>,
        reason: String,
    },
    /// The destination asked us to hold off (429, `Retry-After`), could not be reached (connection
    /// refused or reset, timeout), or our own daily budget for it is spent. Nothing is wrong with
    /// the item: the destination pauses for `after` (or the backoff) and the item is tried again.
    Unavailable {
        after: Option<Duration>,
        reason: String,
    },
    /// The request was sent but its fate is unknown: it timed out, or the connection broke after
    /// it was written. The downstream may still apply it later, after a retry or a newer decision
    /// of the same person has gone through. Retried like [`Outcome::Unavailable`]; in addition the
    /// runtime re-asserts the person's newest decision once the request can no longer land.
    Unknown { reason: String },
    /// Retrying will not help: the item goes to the dead-letter topic with `reason`.
    Permanent { reason: String },
    /// The destination refuses us as a client (bad credentials, missing permission, endpoint gone):
    /// nothing is wrong with the item, an operator must act. The runtime opens the destination's
    /// circuit: consumption pauses, nothing is dead-lettered, and it probes again with backoff.
    Refused { reason: String },
}

impl Outcome {
    pub fn retryable(reason: impl Into<String>) -> Outcome {
        Outcome::Retryable {
            after: None,
            reason: reason.into(),
        }
    }

    pub fn unavailable(reason: impl Into<String>) -> Outcome {
        Outcome::Unavailable {
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
    /// when this outcome says the destination would answer it the same way: it is unavailable or
    /// refuses us. `None`: send the next one. `who` names the destination in the reason.
    pub fn unsent_after(&self, who: &str) -> Option<Outcome> {
        match self {
            Outcome::Unavailable { after, reason } => Some(Outcome::Unavailable {
                after: *after,
                reason: format!(
                    "not sent: {who} was unavailable earlier in this delivery ({reason})"
                ),
            }),
            Outcome::Refused { reason } => Some(Outcome::Refused {
                reason: format!("not sent: {who} refused us earlier ({reason})"),
            }),
            // Not sent, so certainly not applied: only the request that went is in doubt.
            Outcome::Unknown { reason } => Some(Outcome::Unavailable {
                after: None,
                reason: format!(
                    "not sent: {who} did not answer earlier in this delivery ({reason})"
                ),
            }),
            _ => None,
        }
    }

    /// Whether the item is done at the downstream (applied now or before).
    pub fn is_done(&self) -> bool {
        matches!(
            self,
            Outcome::Applied | Outcome::AlreadyApplied | Outcome::AwaitingConfirmation
        )
    }

    /// The outcome's class, for logs, metrics and the ledger's error class.
    pub fn class(&self) -> OutcomeClass {
        match self {
            Outcome::Applied => OutcomeClass::Applied,
            Outcome::AlreadyApplied => OutcomeClass::AlreadyApplied,
            Outcome::AwaitingConfirmation => OutcomeClass::AwaitingConfirmation,
            Outcome::Retryable { .. } => OutcomeClass::Retryable,
            Outcome::Unavailable { .. } => OutcomeClass::Unavailable,
            Outcome::Unknown { .. } => OutcomeClass::Unknown,
            Outcome::Permanent { .. } => OutcomeClass::Permanent,
            Outcome::Refused { .. } => OutcomeClass::Refused,
        }
    }

    /// The reason of a failure; `None` for success.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Outcome::Applied | Outcome::AlreadyApplied | Outcome::AwaitingConfirmation => None,
            Outcome::Retryable { reason, .. }
            | Outcome::Unavailable { reason, .. }
            | Outcome::Unknown { reason }
            | Outcome::Permanent { reason }
            | Outcome::Refused { reason } => Some(reason),
        }
    }

    /// Of two outcomes for parts of the same item, the one that decides the item's fate:
    /// unknown beats refused beats unavailable beats permanent beats retryable beats applied beats
    /// already-applied. Refused and unavailable win so that an item is never dead-lettered for a
    /// part that was not even tried; unknown wins over everything because a part that may still
    /// land must be re-asserted whatever happened to the others.
    pub fn worst(self, other: Outcome) -> Outcome {
        fn rank(o: &Outcome) -> u8 {
            match o {
                Outcome::AlreadyApplied => 0,
                Outcome::Applied | Outcome::AwaitingConfirmation => 1,
                Outcome::Retryable { .. } => 2,
                Outcome::Permanent { .. } => 3,
                Outcome::Unavailable { .. } => 4,
                Outcome::Refused { .. } => 5,
                Outcome::Unknown { .. } => 6,
            }
        }
        match (self, other) {
            (Outcome::Retryable { after: a, reason }, Outcome::Retryable { after: b, .. }) => {
                Outcome::Retryable {
                    after: a.max(b),
                    reason,
                }
            }
            (Outcome::Unavailable { after: a, reason }, Outcome::Unavailable { after: b, .. }) => {
                Outcome::Unavailable {
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

/// The class of an [`Outcome`]: a metric label and the ledger's `error_class`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OutcomeClass {
    Applied,
    AlreadyApplied,
    AwaitingConfirmation,
    Retryable,
    Unavailable,
    Unknown,
    Permanent,
    Refused,
}

impl OutcomeClass {
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeClass::Applied => "applied",
            OutcomeClass::AlreadyApplied => "already_applied",
            OutcomeClass::AwaitingConfirmation => "awaiting_confirmation",
            OutcomeClass::Retryable => "retryable",
            OutcomeClass::Unavailable => "unavailable",
            OutcomeClass::Unknown => "unknown",
            OutcomeClass::Permanent => "permanent",
            OutcomeClass::Refused => "refused",
        }
    }
}

impl std::fmt::Display for OutcomeClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for OutcomeClass {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}
