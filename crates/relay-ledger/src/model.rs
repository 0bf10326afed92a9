use std::future::Future;

use relay_events::Action;
use uuid::Uuid;

/// The identity of one delivery: an event, a sink, and the target within the sink (a purpose
/// name, or `*` for the whole subject). An event with two purposes is two deliveries, because it
/// may be fresh for one purpose and stale for the other.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeliveryKey {
    pub event_id: Uuid,
    pub sink: String,
    pub target: String,
}

/// A request to apply one delivery, checked against the version rule.
#[derive(Debug, Clone)]
pub struct Claim {
    pub key: DeliveryKey,
    pub subject_id: String,
    pub action: Action,
    pub occurred_at_ms: i64,
    /// A replay from the dead-letter topic (`consent-relay dlq replay`): a dead-lettered delivery
    /// is decided again (version rule included) instead of being a duplicate.
    pub replay: bool,
    /// Set when the claim comes from a parked copy (the retry topic): the copy's generation (1 for
    /// the first park of the delivery). A copy of a lower generation than the newest the ledger
    /// knows is stale (a newer copy exists) and is a duplicate. A copy of a generation the ledger
    /// has not recorded yet proceeds: copies are written before the ledger records them, so it is
    /// the newest. A claim without a ticket (from the source topic) always may proceed.
    pub ticket: Option<u32>,
    /// A re-assertion (see [`Uncertain`]): an applied delivery is decided again, version rule
    /// included, so that it is sent once more if it is still the subject's newest decision. When
    /// it is not, it is a duplicate (the newer decision is re-asserted on its own) and its row is
    /// left as it is.
    pub reassert: bool,
}

/// What the ledger decided for a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Apply it. `attempt` counts claims of this delivery, starting at 1 (a redelivery after a
    /// crash between the downstream call and the commit is attempt 2).
    Proceed { attempt: u32 },
    /// Apply this whole-subject withdrawal, but not to the purposes in `keep`: the person granted
    /// those after it (a late global unsubscribe must not undo a newer grant). Otherwise like
    /// `Proceed`.
    ProceedExcept { attempt: u32, keep: Vec<String> },
    /// This delivery already has a final status; do nothing.
    Duplicate { status: Status },
    /// A newer decision (by `occurred_at`, ties going to withdrawal/erasure) is already known for
    /// this subject, target and sink: the event was recorded as superseded and must not be applied.
    Superseded { by: Uuid },
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Claimed; the downstream call may or may not have happened.
    InFlight,
    /// Waiting for a retry after a retryable failure.
    Retrying,
    /// Its inline retry budget is spent: a copy waits on the sink's retry topic (see
    /// [`Ledger::park`]) while the rest of its partition proceeds.
    Parked,
    Applied,
    AlreadyApplied,
    /// The downstream could not apply a grant directly (the person once unsubscribed there) and
    /// asked the person to confirm it: Mailchimp's double opt-in email for a member in a
    /// compliance state. Nothing more for the relay to do; the person decides.
    AwaitingConfirmation,
    Superseded,
    /// The event's purposes do not route to this sink.
    NotRouted,
    DeadLettered,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::InFlight => "in_flight",
            Status::Retrying => "retrying",
            Status::Parked => "parked",
            Status::Applied => "applied",
            Status::AlreadyApplied => "already_applied",
            Status::AwaitingConfirmation => "awaiting_confirmation",
            Status::Superseded => "superseded",
            Status::NotRouted => "not_routed",
            Status::DeadLettered => "dead_lettered",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        [
            Status::InFlight,
            Status::Retrying,
            Status::Parked,
            Status::Applied,
            Status::AlreadyApplied,
            Status::AwaitingConfirmation,
            Status::Superseded,
            Status::NotRouted,
            Status::DeadLettered,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }

    /// Final statuses end a delivery; a claim of a final delivery is a duplicate.
    pub fn is_final(self) -> bool {
        !matches!(self, Status::InFlight | Status::Retrying | Status::Parked)
    }
}

/// A request of unknown fate (it timed out, or broke after it was written) for `subject_id` at
/// `sink`, which the downstream may still apply until `until_ms`: later than a newer decision of
/// the same person, undoing it. Every decision of the subject applied at the sink before then is
/// re-asserted at `until_ms`, so the newest one is the last to land.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uncertain {
    pub subject_id: String,
    pub sink: String,
    pub until_ms: i64,
}

/// How [`Ledger::uncertain`] reads deliveries that may have a request on the wire.
#[derive(Debug, Clone, Copy)]
pub struct InDoubt<'a> {
    /// How long such a request may still land after its delivery's last update: a request
    /// timeout plus the late-landing margin.
    pub window_ms: i64,
    /// The events the caller itself is sending (its own claims are in flight too).
    pub exclude: &'a [Uuid],
}

/// The recorded end (or intermediate state) of a delivery.
#[derive(Debug, Clone)]
pub struct Finish {
    pub key: DeliveryKey,
    pub subject_id: String,
    pub status: Status,
    /// `retryable` / `permanent` / a validation code; `None` on success.
    pub error_class: Option<String>,
    /// The downstream's or the validator's message. Must not contain raw PII.
    pub error: Option<String>,
}

/// A delivery whose inline retry budget is spent and whose copy now waits on the retry topic.
#[derive(Debug, Clone)]
pub struct Park {
    pub key: DeliveryKey,
    pub subject_id: String,
    /// The generation of the copy now on the retry topic; see [`Claim::ticket`]. The ledger keeps
    /// the highest it was told.
    pub parks: u32,
    /// The last failure, for `ledger show`. Must not contain raw PII.
    pub error: String,
}

/// One event's entry in the consent log (proof of consent, GDPR Art. 7(1)), written once per event.
#[derive(Debug, Clone)]
pub struct ConsentRecord {
    pub event_id: Uuid,
    pub subject_id: String,
    /// `ConsentGranted`, `ConsentWithdrawn`, `Unsubscribed`, `ErasureRequested`.
    pub kind: String,
    /// Purpose names, or `["*"]` for the whole subject.
    pub purposes: Vec<String>,
    pub occurred_at_ms: i64,
    pub source: String,
    pub notice_version: Option<String>,
    /// SHA-256 of the normalized email, if the event carried one.
    pub email_sha256: Option<String>,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// `relay_events::ConsentEvent::digest` of the event as first logged; `None` for entries
    /// logged before digests were kept.
    pub payload_digest: Option<String>,
    /// `occurred_at` was older than the configured horizon when the event arrived (a backfill, or
    /// a producer that held it back): accepted, and marked.
    pub late: bool,
    /// SHA-256 of the email as Google normalizes it, `+tag` kept, and without the `+tag` where
    /// that differs (`relay_events::normalize::google_email_sha256s`): `reconcile` re-sends
    /// removals to Google with these. `None` without an email, and for entries logged before
    /// they were kept (schema v5).
    pub google_email_sha256: Option<String>,
    pub google_email_plus_sha256: Option<String>,
}

/// A message that could not be turned into deliveries and went to the dead-letter topic.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub sink: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Set when the message decoded far enough to have one.
    pub event_id: Option<Uuid>,
    pub subject_id: Option<String>,
    /// Stable machine-readable code (`undecodable`, `unknown_schema`, `invalid_email`, ...).
    pub code: String,
    pub message: String,
}

/// A delivery as stored, for `ledger show`.
#[derive(Debug, Clone)]
pub struct DeliveryRow {
    pub key: DeliveryKey,
    pub status: Status,
    pub attempts: u32,
    /// How often it was sent again after being applied, because a request of unknown fate for the
    /// same subject might have landed after it.
    pub reasserts: u32,
    pub error_class: Option<String>,
    pub error: Option<String>,
    pub updated_at_ms: i64,
    /// How often `reconcile` re-sent this decision and the downstream applied it, and when last.
    pub repairs: u32,
    pub repaired_at_ms: Option<i64>,
}

/// The newest decision known per (subject, target, sink).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectState {
    pub sink: String,
    pub target: String,
    pub action: Action,
    pub occurred_at_ms: i64,
    pub event_id: Uuid,
}

/// Everything the ledger knows about one subject.
#[derive(Debug, Clone, Default)]
pub struct SubjectReport {
    pub consent_log: Vec<ConsentRecord>,
    pub deliveries: Vec<DeliveryRow>,
    pub state: Vec<SubjectState>,
    pub rejections: Vec<Rejection>,
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("unsupported ledger URL {0:?}: use sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    #[error("ledger database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("ledger migration {version} failed: {source}")]
    Migration { version: i64, source: sqlx::Error },
    #[error("ledger holds a value this version does not understand: {0}")]
    Corrupt(String),
    #[error("no ledger: {0} (only `run` and `ledger migrate` create one; check [ledger] url)")]
    Missing(String),
    #[error("cannot open the ledger at {target}: {source}")]
    Open { target: String, source: sqlx::Error },
    #[error(
        "the ledger at {target} has schema version {found}, this version reads {want}: run `consent-relay ledger migrate` of this version (as the schema's owner), or start `run`, which migrates"
    )]
    Schema {
        target: String,
        found: i64,
        want: i64,
    },
}

/// The ledger operations. Every method is one transaction.
pub trait Ledger: Send + Sync + 'static {
    /// Appends consent-log entries; an event already logged is left as it is. Returns the ids of
    /// events already logged with another payload digest: conflicting duplicates, which the caller
    /// rejects (the first decision stands).
    fn log_events(
        &self,
        records: &[ConsentRecord],
    ) -> impl Future<Output = Result<Vec<Uuid>, LedgerError>> + Send;

    /// Decides each claim in order, in one transaction (see [`Decision`]). The version rule:
    /// a claim is superseded when the subject state for (subject, target, sink) — or, for a
    /// purpose target, the state for (subject, `*`, sink) — is newer by (`occurred_at`, action
    /// rank), or equal but from another event. A proceeding claim becomes the subject state and
    /// its delivery row is set to `in_flight` with `attempts + 1`.
    fn claim(
        &self,
        claims: &[Claim],
    ) -> impl Future<Output = Result<Vec<Decision>, LedgerError>> + Send;

    /// Records the status of deliveries (insert or update), in one transaction.
    fn finish(&self, rows: &[Finish]) -> impl Future<Output = Result<(), LedgerError>> + Send;

    /// Marks deliveries parked under a copy on the retry topic, which must already be durable
    /// there. A delivery that reached a final status meanwhile (a redelivery applied it) keeps it.
    fn park(&self, rows: &[Park]) -> impl Future<Output = Result<(), LedgerError>> + Send;

    /// Records requests of unknown fate; a subject's bound only ever moves later.
    fn mark_uncertain(
        &self,
        marks: &[Uncertain],
    ) -> impl Future<Output = Result<(), LedgerError>> + Send;

    /// Of `subjects`, those with a request at `sink` that may still land after `now_ms`, and
    /// until when: the recorded bounds, and deliveries of other events than `in_doubt.exclude`
    /// whose request may be on the wire (claimed and not answered, or of unknown fate), until
    /// their last update plus `in_doubt.window_ms`.
    fn uncertain(
        &self,
        sink: &str,
        subjects: &[String],
        now_ms: i64,
        in_doubt: &InDoubt<'_>,
    ) -> impl Future<Output = Result<std::collections::HashMap<String, i64>, LedgerError>> + Send;

    /// Records messages sent to the dead-letter topic before they became deliveries.
    fn record_rejections(
        &self,
        rejections: &[Rejection],
    ) -> impl Future<Output = Result<(), LedgerError>> + Send;

    /// The consent-log entries that concern `purpose` (naming it, or the whole subject), ordered by
    /// subject and `occurred_at`. The input of [`crate::suppression_list`].
    fn consent_for_purpose(
        &self,
        purpose: &str,
    ) -> impl Future<Output = Result<Vec<ConsentRecord>, LedgerError>> + Send;

    /// Everything known about one subject.
    fn subject_report(
        &self,
        subject_id: &str,
    ) -> impl Future<Output = Result<SubjectReport, LedgerError>> + Send;
}
