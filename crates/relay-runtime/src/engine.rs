//! The batch engine of one sink: given decoded messages, it decides every message's fate against
//! the ledger, lets the sink apply what is fresh, and returns once every outcome is durable (in
//! the ledger, the DLQ or the retry topic), so that the caller may commit every offset of the
//! batch. It never sees Kafka: the shells in `consumer.rs` (source topics) and `parked.rs` (the
//! retry topic) fetch, decode and commit around it, and tests drive it with an in-memory ledger,
//! outbox and a scripted sink.
//!
//! What it guarantees about time: an item that fails on its own is retried inline within its
//! budget (`RetryConfig::item_attempts`, `item_budget_ms`) and then parked, so one item never
//! holds its partition longer than that. A destination that is unavailable or refuses us pauses
//! the whole batch, uncharged: that is backpressure, and it is visible (metrics, `/readyz`).

mod attempt;
mod locks;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use relay_delivery::{Change, Outcome, Sink, SinkItem, Target};
use relay_events::{ConsentEvent, ErrorCode};
use relay_ledger::{ConsentRecord, DeliveryKey, Finish, Ledger, Rejection, Status};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use crate::config::{EventRules, RetryConfig};
use crate::decode::Rejected;
use crate::message::{now_ms, Message, ParkTicket};
use crate::outbox::Outbox;
use crate::retry::RetrySchedule;
use crate::route::{self, Routed, Routes};
use crate::telemetry::{metric, Telemetry};

/// Dead letters of one batch written side by side: enough to hide the broker's round trip, few
/// enough that polling them all on every wake-up stays cheap.
const DEAD_LETTERS_AT_ONCE: usize = 64;

/// The batch was given up because of shutdown; nothing past its start may be committed.
#[derive(Debug)]
pub(crate) struct Abandoned;

pub(crate) struct Engine<L> {
    pub sink: Arc<dyn Sink>,
    pub routes: Routes,
    pub retry: RetryConfig,
    pub ledger: Arc<L>,
    pub outbox: Arc<dyn Outbox>,
    pub telemetry: Telemetry,
    pub rules: EventRules,
    /// Whether the destination currently refuses us (3xx/401/403/410/426).
    circuit_open: AtomicBool,
    /// The subjects batches of this engine are working on, one batch per subject at a time.
    locks: Arc<locks::SubjectLocks>,
}

/// What the items of one batch need to know about the messages they came from.
struct BatchContext<'a> {
    batch: &'a [Message],
    /// event id → index of its message in the batch.
    origin_of: BTreeMap<Uuid, usize>,
    /// Events replayed from the DLQ for this sink.
    replays: BTreeSet<Uuid>,
}

impl BatchContext<'_> {
    fn message(&self, event_id: Uuid) -> &Message {
        &self.batch[self.origin_of[&event_id]]
    }

    fn ticket(&self, event_id: Uuid) -> Option<&ParkTicket> {
        self.origin_of
            .get(&event_id)
            .and_then(|&i| self.batch[i].ticket.as_ref())
    }

    /// Whether the event comes as a re-assertion copy.
    fn reasserts(&self, event_id: Uuid) -> bool {
        self.ticket(event_id).is_some_and(|t| t.reassert)
    }
}

impl<L: Ledger> Engine<L> {
    pub fn new(
        sink: Arc<dyn Sink>,
        routes: Routes,
        retry: RetryConfig,
        ledger: Arc<L>,
        outbox: Arc<dyn Outbox>,
        telemetry: Telemetry,
        rules: EventRules,
    ) -> Engine<L> {
        Engine {
            sink,
            routes,
            retry,
            ledger,
            outbox,
            telemetry,
            rules,
            circuit_open: AtomicBool::new(false),
            locks: Default::default(),
        }
    }

    pub fn name(&self) -> &str {
        self.sink.name()
    }

    /// Whether `m` is a withdrawal this engine would apply without rejecting anything: what the
    /// lookahead may take ahead of its partition's backlog. Whatever would be rejected (the clock
    /// rule, routing) stays for the source lane, so that nothing is dead-lettered twice.
    pub fn may_go_ahead(&self, m: &Message) -> bool {
        let Some(event) = m.event() else {
            return false;
        };
        m.is_withdrawal()
            && m.replay_for.is_none()
            && m.ticket.is_none()
            && relay_events::check_occurred_at(
                event.occurred_at_ms,
                m.produced_at.and_then(unix_ms),
                now_ms(),
                self.rules.future_tolerance_ms,
            )
            .is_ok()
            && matches!(route::route(event, &self.routes), Routed::Items(_))
    }

    /// Decides, applies and records every message of the batch. Returns only when every outcome
    /// is durable, or on shutdown.
    pub async fn process(
        &self,
        batch: &[Message],
        shutdown: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let sink = self.name().to_owned();
        let mut consent_log = Vec::new();
        let mut rejected: Vec<(usize, Rejected)> = Vec::new();
        let mut not_routed = Vec::new();
        let mut items: Vec<SinkItem> = Vec::new();
        let mut origin_of: BTreeMap<Uuid, usize> = BTreeMap::new();
        // Events that pass the clock rule, by message: what the consent log is asked to hold.
        let mut logged: BTreeMap<Uuid, usize> = BTreeMap::new();
        // Withdrawals this sink cannot apply (no email): dead-lettered, but their decision still
        // enters the version rule, so that an older grant arriving later cannot re-subscribe.
        let mut unapplicable: Vec<(SinkItem, String)> = Vec::new();
        let replays: BTreeSet<Uuid> = batch
            .iter()
            .filter(|m| m.replay_for.is_some())
            .filter_map(|m| m.event().map(|e| e.event_id))
            .collect();
        // Of several parked copies of one event in a batch, the one of the newest generation
        // speaks for all: if any of them is live, it is.
        let mut newest_copy: BTreeMap<Uuid, usize> = BTreeMap::new();
        for (index, m) in batch.iter().enumerate() {
            if let (Some(t), Some(event)) = (&m.ticket, m.event()) {
                // A re-assertion copy speaks for the others: it is decided like them when its
                // delivery is not final, and re-asserts it when it is.
                let newer = newest_copy
                    .get(&event.event_id)
                    .and_then(|&i| batch[i].ticket.as_ref())
                    .is_none_or(|kept| !kept.reassert && (t.reassert || t.parks >= kept.parks));
                if newer {
                    newest_copy.insert(event.event_id, index);
                }
            }
        }

        for (index, m) in batch.iter().enumerate() {
            if m.replay_for.as_deref().is_some_and(|s| s != sink) {
                // Replayed for another sink: this sink has already decided this message once.
                continue;
            }
            let event = match &m.decoded {
                Ok(event) => event,
                Err(why) => {
                    rejected.push((index, why.clone()));
                    continue;
                }
            };
            if m.ticket.is_some() && newest_copy.get(&event.event_id) != Some(&index) {
                continue;
            }
            // An event dated in the future would win the version rule against every real
            // decision until then: it never enters it (docs/event-rules.md).
            let broker_ms = m.produced_at.and_then(unix_ms);
            if let Err(e) = relay_events::check_occurred_at(
                event.occurred_at_ms,
                broker_ms,
                now_ms(),
                self.rules.future_tolerance_ms,
            ) {
                rejected.push((
                    index,
                    Rejected {
                        code: e.code(),
                        message: e.to_string(),
                        event_id: Some(event.event_id),
                        subject_id: Some(event.subject_id.clone()),
                    },
                ));
                continue;
            }
            logged.insert(event.event_id, index);
            let record = |event: &ConsentEvent| self.consent_record(event, m);
            match route::route(event, &self.routes) {
                // Not a decision about this person that the consent log may record.
                Routed::Rejected(why)
                    if matches!(
                        why.code,
                        ErrorCode::UnknownPurpose | ErrorCode::InvalidPurposes
                    ) =>
                {
                    rejected.push((index, why));
                    continue;
                }
                Routed::Rejected(why) => {
                    consent_log.push(record(event));
                    if event.action() != relay_events::Action::Grant {
                        let lenient = Routes {
                            requires_email: false,
                            ..self.routes.clone()
                        };
                        if let Routed::Items(routed) = route::route(event, &lenient) {
                            origin_of.insert(event.event_id, index);
                            unapplicable
                                .extend(routed.into_iter().map(|i| (i, why.message.clone())));
                        }
                    }
                    rejected.push((index, why));
                }
                Routed::Elsewhere => {
                    consent_log.push(record(event));
                    not_routed.push(Finish {
                        key: DeliveryKey {
                            event_id: event.event_id,
                            sink: sink.clone(),
                            target: Target::All.key().to_owned(),
                        },
                        subject_id: event.subject_id.clone(),
                        status: Status::NotRouted,
                        error_class: None,
                        error: None,
                    });
                }
                Routed::Items(routed) => {
                    consent_log.push(record(event));
                    origin_of.insert(event.event_id, index);
                    items.extend(routed);
                }
            }
        }
        let ctx = BatchContext {
            batch,
            origin_of,
            replays,
        };

        if !consent_log.is_empty() {
            let conflicts: BTreeSet<Uuid> = self
                .durable("log_events", shutdown, || {
                    self.ledger.log_events(&consent_log)
                })
                .await?
                .into_iter()
                .collect();
            if !conflicts.is_empty() {
                // The same event id with another payload: a producer bug or a forged id. The
                // decision logged first stands; this one is rejected, whatever else it would have
                // been.
                let conflicting = |id: &Uuid| conflicts.contains(id);
                rejected
                    .retain(|(i, _)| !batch[*i].event().is_some_and(|e| conflicting(&e.event_id)));
                items.retain(|i| !conflicting(&i.event.event_id));
                unapplicable.retain(|(i, _)| !conflicting(&i.event.event_id));
                not_routed.retain(|f| !conflicting(&f.key.event_id));
                for id in &conflicts {
                    let index = logged[id];
                    let event = batch[index].event().expect("logged events decoded");
                    warn!(sink = %sink, event_id = %id, "conflicting duplicate: this event id was logged with another payload; rejected");
                    rejected.push((
                        index,
                        Rejected {
                            code: ErrorCode::ConflictingDuplicate,
                            message: "an event with this event_id and another payload was logged \
                                      before; the first decision stands"
                                .to_owned(),
                            event_id: Some(*id),
                            subject_id: Some(event.subject_id.clone()),
                        },
                    ));
                }
            }
        }
        // Side by side: each write waits for the broker's acknowledgement, and a batch of
        // hostile input is mostly rejections (their payloads are already in memory, and the
        // producer's queue bounds what it holds).
        for chunk in rejected.chunks(DEAD_LETTERS_AT_ONCE) {
            relay_delivery::join_all(
                chunk
                    .iter()
                    .map(|(index, why)| self.dead_letter(&batch[*index], why, shutdown))
                    .collect(),
            )
            .await
            .into_iter()
            .collect::<Result<(), Abandoned>>()?;
        }
        if !rejected.is_empty() {
            let rows: Vec<Rejection> = rejected
                .iter()
                .map(|(index, why)| rejection(&sink, &batch[*index], why))
                .collect();
            self.durable("record_rejections", shutdown, || {
                self.ledger.record_rejections(&rows)
            })
            .await?;
        }
        if !unapplicable.is_empty() {
            self.record_unapplicable(unapplicable, &ctx, shutdown)
                .await?;
        }

        let plan = route::plan(items);
        self.count("not_routed", not_routed.len());
        self.count("superseded", plan.superseded.len());
        let mut finished = not_routed;
        for (stale, newer) in &plan.superseded {
            finished.push(Finish {
                key: key(&sink, stale),
                subject_id: stale.event.subject_id.clone(),
                status: Status::Superseded,
                error_class: None,
                error: Some(format!(
                    "superseded in the same batch by event {}",
                    newer.event.event_id
                )),
            });
        }
        if !plan.superseded.is_empty() {
            self.keep_doubts(&plan.superseded, shutdown).await?;
        }
        if !finished.is_empty() {
            self.durable("finish", shutdown, || self.ledger.finish(&finished))
                .await?;
        }

        for wave in plan.waves {
            self.deliver_wave(wave, &ctx, shutdown).await?;
        }
        self.telemetry.progressed(&sink);
        debug!(sink = %sink, events = batch.len(), rejected = rejected.len(), "batch durable");
        Ok(())
    }

    /// Before events superseded inside the batch are recorded so: one whose delivery was claimed
    /// and never answered (by a process that died, or the partition's previous owner) may have a
    /// request on the wire, and recording it superseded would erase the only trace of that. Its
    /// subject is marked uncertain, so that the newer decision is re-asserted once that request
    /// can no longer land.
    async fn keep_doubts(
        &self,
        superseded: &[(SinkItem, SinkItem)],
        shutdown: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let subjects: Vec<String> = superseded
            .iter()
            .map(|(stale, _)| stale.event.subject_id.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let in_doubt = relay_ledger::InDoubt {
            window_ms: self.redelivery_window_ms(),
            exclude: &[],
        };
        let now = now_ms();
        let bounds = self
            .durable("uncertain", shutdown, || {
                self.ledger
                    .uncertain(self.name(), &subjects, now, &in_doubt)
            })
            .await?;
        let marks: Vec<relay_ledger::Uncertain> = bounds
            .into_iter()
            .map(|(subject_id, until_ms)| relay_ledger::Uncertain {
                subject_id,
                sink: self.name().to_owned(),
                until_ms,
            })
            .collect();
        if !marks.is_empty() {
            self.durable("mark_uncertain", shutdown, || {
                self.ledger.mark_uncertain(&marks)
            })
            .await?;
        }
        Ok(())
    }

    /// Claims withdrawals this sink cannot apply (so the version rule knows them) and records them
    /// dead-lettered; their messages are already in the DLQ.
    async fn record_unapplicable(
        &self,
        items: Vec<(SinkItem, String)>,
        ctx: &BatchContext<'_>,
        shutdown: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let reasons: BTreeMap<Uuid, String> = items
            .iter()
            .map(|(i, r)| (i.event.event_id, r.clone()))
            .collect();
        let mut narrowed = Vec::new();
        let claimed = self
            .claim(
                items.into_iter().map(|(i, _)| i).collect(),
                ctx,
                &mut narrowed,
                shutdown,
            )
            .await?;
        let mut rows: Vec<Finish> = claimed
            .iter()
            .map(|(item, _)| Finish {
                key: key(self.name(), item),
                subject_id: item.event.subject_id.clone(),
                status: Status::DeadLettered,
                error_class: Some(ErrorCode::MissingEmail.as_str().to_owned()),
                error: reasons.get(&item.event.event_id).cloned(),
            })
            .collect();
        for mut whole in narrowed {
            whole.status = Status::DeadLettered;
            whole.error_class = Some(ErrorCode::MissingEmail.as_str().to_owned());
            rows.push(whole);
        }
        if !rows.is_empty() {
            self.durable("finish", shutdown, || self.ledger.finish(&rows))
                .await?;
        }
        Ok(())
    }

    /// Claims `items` against the version rule and returns those to apply, with their attempt
    /// numbers. A late whole-subject
    /// withdrawal that the ledger narrows (the person granted some purposes after it) becomes one
    /// withdrawal per purpose of this sink except those, claimed in turn.
    async fn claim(
        &self,
        mut items: Vec<SinkItem>,
        ctx: &BatchContext<'_>,
        narrowed: &mut Vec<Finish>,
        shutdown: &CancellationToken,
    ) -> Result<Vec<(SinkItem, u32)>, Abandoned> {
        use relay_ledger::{Claim, Decision};
        let sink = self.name().to_owned();
        let mut to_send = Vec::new();
        while !items.is_empty() {
            let claims: Vec<Claim> = items
                .iter()
                .map(|item| {
                    let reassert = ctx.reasserts(item.event.event_id);
                    Claim {
                        key: key(&sink, item),
                        subject_id: item.event.subject_id.clone(),
                        action: item.action(),
                        occurred_at_ms: item.event.occurred_at_ms,
                        replay: ctx.replays.contains(&item.event.event_id),
                        // A re-assertion is not a retry of a failure: any copy generation goes.
                        ticket: ctx
                            .ticket(item.event.event_id)
                            .filter(|_| !reassert)
                            .map(|t| t.parks),
                        reassert,
                    }
                })
                .collect();
            let decisions = self
                .durable("claim", shutdown, || self.ledger.claim(&claims))
                .await?;
            let mut per_purpose = Vec::new();
            for (item, decision) in items.into_iter().zip(decisions) {
                match decision {
                    Decision::Proceed { attempt } => to_send.push((item, attempt)),
                    Decision::ProceedExcept { keep, .. } => {
                        info!(sink = %sink, event_id = %item.event.event_id, kept = %crate::log_fields::list(&keep), "late whole-subject withdrawal applied per purpose: newer grants stand");
                        // Only a global unsubscribe is narrowed (rule.rs): an erasure asks for
                        // everything and must never turn into withdrawals.
                        debug_assert_eq!(item.change, Change::WithdrawAll);
                        per_purpose.extend(
                            self.routes
                                .sink
                                .iter()
                                .filter(|p| !keep.contains(*p))
                                .map(|p| SinkItem {
                                    event: item.event.clone(),
                                    change: Change::Withdraw(p.clone()),
                                }),
                        );
                        narrowed.push(Finish {
                            key: key(&sink, &item),
                            subject_id: item.event.subject_id.clone(),
                            status: Status::Applied,
                            error_class: None,
                            error: Some(format!(
                                "applied per purpose; newer grants stand for {}",
                                keep.join(", ")
                            )),
                        });
                    }
                    Decision::Duplicate { status } if ctx.reasserts(item.event.event_id) => {
                        self.count_reassertion("skipped");
                        debug!(sink = %sink, event_id = %item.event.event_id, status = status.as_str(), "not re-asserted: a newer decision is re-asserted instead")
                    }
                    Decision::Duplicate { status } => {
                        self.count("duplicate", 1);
                        debug!(sink = %sink, event_id = %item.event.event_id, status = status.as_str(), "duplicate, skipped")
                    }
                    Decision::Superseded { by } => {
                        self.count("superseded", 1);
                        debug!(sink = %sink, event_id = %item.event.event_id, by = %by, "superseded, not applied")
                    }
                }
            }
            items = per_purpose;
        }
        Ok(to_send)
    }

    async fn finish_narrowed(
        &self,
        narrowed: &[Finish],
        shutdown: &CancellationToken,
    ) -> Result<(), Abandoned> {
        if !narrowed.is_empty() {
            self.durable("finish", shutdown, || self.ledger.finish(narrowed))
                .await?;
        }
        Ok(())
    }

    /// Opens the circuit when the destination refuses us, closes it on the next answer that is
    /// not a refusal. While open, the batch is probed with backoff and nothing is dead-lettered.
    fn set_circuit(&self, refused: Option<&str>) {
        self.telemetry.set_circuit(self.name(), refused);
        let was_open = self.circuit_open.swap(refused.is_some(), Ordering::Relaxed);
        match (was_open, refused) {
            (false, Some(reason)) => error!(
                sink = self.name(), error = %reason,
                "circuit open: the destination refuses us; consumption paused until it accepts again (fix credentials or endpoint)"
            ),
            (true, None) => info!(
                sink = self.name(),
                "circuit closed: the destination accepts requests again"
            ),
            _ => {}
        }
    }

    async fn dead_letter(
        &self,
        msg: &Message,
        why: &Rejected,
        shutdown: &CancellationToken,
    ) -> Result<(), Abandoned> {
        self.until_done("dead-letter", shutdown, || async {
            self.outbox
                .dead_letter(msg, self.name(), why)
                .await
                .map_err(|e| e.to_string())
        })
        .await?;
        error!(
            sink = self.name(), topic = %msg.origin.topic, partition = msg.origin.partition,
            offset = msg.origin.offset, event_id = why.event_id.map(tracing::field::display), code = %why.code,
            error = %why.message, "event dead-lettered"
        );
        self.count("dead_lettered", 1);
        self.telemetry.add(
            metric::DLQ_MESSAGES,
            vec![
                ("sink", self.name().to_owned()),
                ("code", why.code.as_str().to_owned()),
            ],
            1.0,
        );
        Ok(())
    }

    /// Runs a ledger transaction until it succeeds: an outcome that is not durable must not be
    /// committed past, so the partition waits instead. Timed for the latency histogram; a failure
    /// makes the process unready until the ledger answers again.
    async fn durable<T, E, F, Fut>(
        &self,
        op: &'static str,
        shutdown: &CancellationToken,
        f: F,
    ) -> Result<T, Abandoned>
    where
        E: std::fmt::Display,
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.until_done(op, shutdown, || async {
            let started = Instant::now();
            let result = f().await.map_err(|e| e.to_string());
            self.telemetry.observe(
                metric::LEDGER_TRANSACTION_DURATION,
                vec![("op", op.to_owned())],
                started.elapsed(),
            );
            self.telemetry
                .set_ledger_error(self.name(), result.as_ref().err().cloned());
            result
        })
        .await
    }

    /// Counts a sink's answer for one item; dead-lettering is counted where the DLQ write happens.
    fn count_outcome(&self, outcome: &Outcome) {
        match outcome {
            Outcome::Applied => self.count("applied", 1),
            Outcome::AlreadyApplied => self.count("already_applied", 1),
            Outcome::AwaitingConfirmation => self.count("awaiting_confirmation", 1),
            Outcome::Permanent { .. } => {}
            Outcome::Retryable { .. }
            | Outcome::Unavailable { .. }
            | Outcome::Unknown { .. }
            | Outcome::Refused { .. } => {
                if let Outcome::Unknown { .. } = outcome {
                    self.telemetry.add(
                        metric::UNKNOWN_OUTCOMES,
                        vec![("sink", self.name().to_owned())],
                        1.0,
                    );
                }
                self.telemetry.add(
                    metric::RETRIES,
                    vec![
                        ("sink", self.name().to_owned()),
                        ("class", outcome.class().as_str().to_owned()),
                    ],
                    1.0,
                )
            }
        }
    }

    fn count_reassertion(&self, stage: &'static str) {
        self.telemetry.add(
            metric::REASSERTIONS,
            vec![
                ("sink", self.name().to_owned()),
                ("stage", stage.to_owned()),
            ],
            1.0,
        );
    }

    fn count(&self, outcome: &'static str, n: usize) {
        if n > 0 {
            self.telemetry.add(
                metric::EVENTS,
                vec![
                    ("sink", self.name().to_owned()),
                    ("outcome", outcome.to_owned()),
                ],
                n as f64,
            );
        }
    }

    /// Retries an infrastructure step (ledger, DLQ, retry topic) until it succeeds or shutdown:
    /// nothing may be committed past a message whose outcome is not durable. Every failure is
    /// logged with what it was talking to, and the wait is bounded by the retry schedule.
    async fn until_done<T, F, Fut>(
        &self,
        what: &str,
        shutdown: &CancellationToken,
        f: F,
    ) -> Result<T, Abandoned>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        let mut schedule = RetrySchedule::new(&self.retry);
        let mut attempt = 0u32;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    attempt += 1;
                    let delay = schedule.next_delay(None);
                    warn!(sink = self.name(), attempt, error = %e, "{what} failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Err(Abandoned),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

fn key(sink: &str, item: &SinkItem) -> DeliveryKey {
    DeliveryKey {
        event_id: item.event.event_id,
        sink: sink.to_owned(),
        target: item.change.target_key().to_owned(),
    }
}

fn unix_ms(t: SystemTime) -> Option<i64> {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
}

impl<L> Engine<L> {
    fn consent_record(&self, event: &ConsentEvent, msg: &Message) -> ConsentRecord {
        let late = relay_events::is_older_than_horizon(
            event.occurred_at_ms,
            now_ms(),
            self.rules.late_after_ms,
        );
        ConsentRecord {
            payload_digest: Some(event.digest()),
            late,
            ..consent_record(event, msg)
        }
    }
}

fn consent_record(event: &ConsentEvent, msg: &Message) -> ConsentRecord {
    let email = event.contact.email.as_deref();
    let (google, google_plus) = email
        .and_then(relay_events::normalize::google_email_sha256s)
        .unzip();
    ConsentRecord {
        event_id: event.event_id,
        subject_id: event.subject_id.clone(),
        kind: event.kind.name().to_owned(),
        purposes: match &event.scope {
            relay_events::Scope::Purposes(p) => p.clone(),
            relay_events::Scope::All => vec![Target::All.key().to_owned()],
        },
        occurred_at_ms: event.occurred_at_ms,
        source: event.source.clone(),
        notice_version: event.notice_version.clone(),
        email_sha256: email.map(relay_events::normalize::email_sha256),
        google_email_sha256: google,
        google_email_plus_sha256: google_plus.flatten(),
        topic: msg.origin.topic.clone(),
        partition: msg.origin.partition,
        offset: msg.origin.offset,
        payload_digest: None,
        late: false,
    }
}

fn rejection(sink: &str, msg: &Message, why: &Rejected) -> Rejection {
    // A message that did not decode far enough still has its key, the subject id by contract
    // (DESIGN.md §2), so that `ledger show` and `audit` list it for the person.
    let key = msg
        .key
        .as_deref()
        .and_then(|k| std::str::from_utf8(k).ok())
        .filter(|k| !k.is_empty() && k.len() <= relay_events::MAX_SUBJECT_ID_CHARS);
    Rejection {
        sink: sink.to_owned(),
        topic: msg.origin.topic.clone(),
        partition: msg.origin.partition,
        offset: msg.origin.offset,
        event_id: why.event_id,
        subject_id: why.subject_id.clone().or_else(|| key.map(str::to_owned)),
        code: why.code.as_str().to_owned(),
        message: why.message.clone(),
    }
}

/// Removes the item's own contact data from a downstream's reason: reasons are logged, stored in
/// the ledger and put in DLQ headers, and vendors echo what they rejected (names, phone numbers).
fn scrubbed(outcome: Outcome, contact: &relay_events::Contact) -> Outcome {
    let scrub = |reason: String| {
        let values = [
            &contact.email,
            &contact.phone,
            &contact.first_name,
            &contact.last_name,
            &contact.street,
            &contact.postal_code,
            &contact.city,
        ];
        let mut reason = values
            .into_iter()
            .flatten()
            .filter(|v| v.trim().len() >= 3)
            .fold(reason, |r, v| r.replace(v.trim(), "<redacted>"));
        // Short values (a two-letter name) only as whole words, not inside other words.
        for v in values.into_iter().flatten().filter(|v| {
            let len = v.trim().len();
            (1..3).contains(&len)
        }) {
            reason = reason
                .split(' ')
                .map(|w| if w == v.trim() { "<redacted>" } else { w })
                .collect::<Vec<_>>()
                .join(" ");
        }
        relay_delivery::redact_emails(&reason)
    };
    match outcome {
        Outcome::Retryable { after, reason } => Outcome::Retryable {
            after,
            reason: scrub(reason),
        },
        Outcome::Unavailable { after, reason } => Outcome::Unavailable {
            after,
            reason: scrub(reason),
        },
        Outcome::Permanent { reason } => Outcome::Permanent {
            reason: scrub(reason),
        },
        Outcome::Unknown { reason } => Outcome::Unknown {
            reason: scrub(reason),
        },
        Outcome::Refused { reason } => Outcome::Refused {
            reason: scrub(reason),
        },
        done => done,
    }
}
