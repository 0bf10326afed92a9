//! One wave of a batch at the destination: claim, deliver and classify, round after round, until
//! every item has an outcome.
//!
//! - An item that fails on its own (`Outcome::Retryable`) is charged an attempt. A request that
//!   failed as a whole for several items says nothing about which one is at fault (a batch API
//!   answers 500 for one poisoned input): its items are split in two and tried again uncharged,
//!   so a poisoned item is isolated in a few quick rounds while the others go through. An item
//!   whose attempts or time budget is spent is parked (or dead-lettered, once its total budget is
//!   spent).
//! - A destination that is unavailable (429, `Retry-After`, unreachable) or refuses us, or one
//!   where every request of a round failed, pauses the wave with backoff and charges nobody
//!   (except that the time budget of failing items keeps running: an item is never held inline
//!   longer than `item_budget_ms` past its first failure).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use relay_delivery::{join_all, BoxFuture, Outcome, OutcomeClass, SinkItem};
use relay_events::ErrorCode;
use relay_ledger::{Finish, InDoubt, Ledger, Park, Status, Uncertain};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use super::locks::Held;
use super::{key, scrubbed, Abandoned, BatchContext, Engine};
use crate::decode::Rejected;
use crate::message::{now_ms, ParkTicket};
use crate::retry::RetrySchedule;
use crate::telemetry::metric;

/// Why an item waiting for another batch of this sink with the same person was parked: that batch
/// retries a failure for the person, or has held the person for [`LOCK_WAIT_MAX`], and must not
/// hold this one for its whole inline budget.
const DEFERRED: &str = "deferred: another batch was retrying or stuck with this person";
/// The longest an item waits for a busy batch with the same person. A healthy batch under a
/// backlog holds a person for well under a second; one that waits longer sits in a destination's
/// pause, a rate limit, or a ledger or broker retry that it does not report as a failure.
const LOCK_WAIT_MAX: Duration = Duration::from_secs(10);

/// An item still under way, with what this run charged it.
#[derive(Clone)]
struct Pending {
    item: SinkItem,
    /// Failed attempts charged to the item in this run.
    charged: u32,
    /// When it first failed in this run.
    first_failure: Option<Instant>,
    last_error: String,
    /// The attempt number of its latest claim.
    attempt: u32,
    /// Whether this wave has sent it already.
    sent: bool,
}

impl Pending {
    fn new(item: SinkItem) -> Pending {
        Pending {
            item,
            charged: 0,
            first_failure: None,
            last_error: String::new(),
            attempt: 0,
            sent: false,
        }
    }
}

/// What a round learned about the destination.
#[derive(Default)]
struct Verdict {
    /// The destination refuses us (its reason).
    refused: Option<String>,
    /// The destination is unavailable (its reason), for at least `after` if it said.
    unavailable: Option<String>,
    after: Option<Duration>,
    /// Every request of a round of several failed for all its items.
    every_request_failed: bool,
    /// Some item reached an outcome.
    progress: bool,
}

impl Verdict {
    fn destination_trouble(&self) -> Option<&str> {
        self.refused
            .as_deref()
            .or(self.unavailable.as_deref())
            .or(self
                .every_request_failed
                .then_some("every request of the last attempt failed"))
    }
}

impl<L: Ledger> Engine<L> {
    /// Delivers a wave. Its subjects that no other batch of this sink is working on go at once,
    /// together; each of the others goes as soon as the batch holding it lets go.
    pub(super) async fn deliver_wave(
        &self,
        wave: Vec<SinkItem>,
        ctx: &BatchContext<'_>,
        shutdown: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let subjects: BTreeSet<String> = wave.iter().map(|i| i.event.subject_id.clone()).collect();
        let (held, busy) = self.locks.try_acquire(subjects);
        let (blocked, free): (Vec<SinkItem>, Vec<SinkItem>) = wave
            .into_iter()
            .partition(|i| busy.contains(&i.event.subject_id));
        let mut waiting: BTreeMap<String, Vec<SinkItem>> = BTreeMap::new();
        for item in blocked {
            waiting
                .entry(item.event.subject_id.clone())
                .or_default()
                .push(item);
        }
        // Subjects taken from a busy holder, not yet delivered. A holder lets go of the subjects
        // of a round together, so their waiters all wake in one pass over `parts` (join_all
        // polls every part once per wake-up): each puts its subject here and yields once, and the
        // first to run again delivers them all in one request instead of one request each.
        let ready: std::sync::Mutex<Vec<(Held, Vec<SinkItem>)>> = Default::default();
        let ready = &ready;
        let mut parts: Vec<BoxFuture<'_, Result<(), Abandoned>>> = Vec::new();
        if !free.is_empty() {
            parts.push(Box::pin(self.deliver_locked(free, held, ctx, shutdown)));
        }
        for (subject, items) in waiting {
            parts.push(Box::pin(async move {
                // A busy holder is waited for, up to a bound; one retrying a failure for this
                // person is not.
                let held = tokio::select! {
                    _ = shutdown.cancelled() => return Err(Abandoned),
                    _ = tokio::time::sleep(LOCK_WAIT_MAX) => None,
                    held = self.locks.acquire_unless_failing(subject) => held,
                };
                match held {
                    Some(held) => {
                        ready.lock().expect("ready poisoned").push((held, items));
                        tokio::task::yield_now().await;
                        let taken = std::mem::take(&mut *ready.lock().expect("ready poisoned"));
                        let mut taken = taken.into_iter();
                        // Another waiter took this one with its own.
                        let Some((mut held, mut items)) = taken.next() else {
                            return Ok(());
                        };
                        for (other, more) in taken {
                            held.absorb(other);
                            items.extend(more);
                        }
                        self.deliver_locked(items, held, ctx, shutdown).await
                    }
                    // The other batch is stuck with this person (an item failing inline): park
                    // these too rather than hold back this whole batch; they come back soon and
                    // are decided then, version rule included.
                    None => {
                        let deferred = items
                            .into_iter()
                            .map(|item| Pending {
                                last_error: DEFERRED.to_owned(),
                                ..Pending::new(item)
                            })
                            .collect();
                        self.park(deferred, ctx, &mut Vec::new(), shutdown).await
                    }
                }
            }));
        }
        join_all(parts).await.into_iter().collect()
    }

    /// Delivers `wave`, whose subjects `held` holds, releasing each subject once its items are
    /// done.
    async fn deliver_locked(
        &self,
        wave: Vec<SinkItem>,
        mut held: Held,
        ctx: &BatchContext<'_>,
        shutdown: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let sink = self.name().to_owned();
        let mut groups: Vec<Vec<Pending>> = vec![wave.into_iter().map(Pending::new).collect()];
        let mut schedule = RetrySchedule::new(&self.retry);
        // Whole-subject withdrawals that were applied per purpose instead; recorded last, so that
        // a crash before their purposes are done redoes the narrowing.
        let mut narrowed: Vec<Finish> = Vec::new();
        let mut attempt = 0u32;
        // Per subject, until when a request of unknown fate may still land at this destination;
        // what this wave applies before then is re-asserted then.
        let mut uncertain: HashMap<String, i64> = HashMap::new();
        loop {
            let mut claimed = Vec::with_capacity(groups.len());
            for group in groups {
                let group = self
                    .claim_group(group, ctx, &mut narrowed, shutdown)
                    .await?;
                if !group.is_empty() {
                    claimed.push(group);
                }
            }
            if claimed.is_empty() {
                self.telemetry.set_paused(&sink, None);
                return self.finish_narrowed(&narrowed, shutdown).await;
            }
            attempt += 1;
            let mut marks = Vec::new();
            for p in claimed.iter_mut().flatten() {
                // Claimed before, but not sent by this wave: a process that died, or the
                // partition's previous owner, may have sent it, and that request may still land.
                // (A parked copy's earlier attempts were answered; one of unknown fate left a
                // bound already.)
                if !p.sent && p.attempt > 1 && ctx.ticket(p.item.event.event_id).is_none() {
                    let until = now_ms().saturating_add(self.redelivery_window_ms());
                    marks.push(self.uncertain_mark(&p.item, until));
                }
                p.sent = true;
            }
            if attempt == 1 {
                // Read after the claims: a request someone else claimed before them may still be
                // on the wire (its delivery is in flight), and one claimed after them was
                // superseded and is not sent.
                let subjects: Vec<String> = claimed
                    .iter()
                    .flatten()
                    .map(|p| p.item.event.subject_id.clone())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let own: Vec<Uuid> = claimed
                    .iter()
                    .flatten()
                    .map(|p| p.item.event.event_id)
                    .collect();
                let in_doubt = InDoubt {
                    window_ms: self.redelivery_window_ms(),
                    exclude: &own,
                };
                let now = now_ms();
                uncertain = self
                    .durable("uncertain", shutdown, || {
                        self.ledger.uncertain(&sink, &subjects, now, &in_doubt)
                    })
                    .await?;
            }
            self.record_uncertain(marks, &mut uncertain, shutdown)
                .await?;

            let sent = claimed.len();
            let mut answered: Vec<Vec<(Pending, Outcome)>> = Vec::with_capacity(sent);
            for group in claimed {
                answered.push(self.deliver_group(group).await);
            }
            let whole_failed = |g: &[(Pending, Outcome)]| {
                g.iter()
                    .all(|(_, o)| matches!(o, Outcome::Retryable { .. }))
            };
            let mut verdict = Verdict {
                every_request_failed: sent >= 2 && answered.iter().all(|g| whole_failed(g)),
                ..Verdict::default()
            };
            for (_, outcome) in answered.iter().flatten() {
                match outcome {
                    Outcome::Applied
                    | Outcome::AlreadyApplied
                    | Outcome::AwaitingConfirmation
                    | Outcome::Permanent { .. } => verdict.progress = true,
                    // A hint on an item-level failure is honoured for the next round, but does
                    // not pause the destination.
                    Outcome::Retryable { after, .. } => verdict.after = verdict.after.max(*after),
                    Outcome::Unavailable { after, reason } => {
                        verdict.after = verdict.after.max(*after);
                        verdict.unavailable.get_or_insert_with(|| reason.clone());
                    }
                    // A destination that does not answer in time is as unavailable as one that
                    // cannot be reached.
                    Outcome::Unknown { reason } => {
                        verdict.unavailable.get_or_insert_with(|| reason.clone());
                    }
                    Outcome::Refused { reason } => {
                        verdict.refused.get_or_insert_with(|| reason.clone());
                    }
                }
            }
            // Blame items only when the destination itself is fine.
            let blame = verdict.destination_trouble().is_none();

            let mut finished = Vec::new();
            let mut next: Vec<Vec<Pending>> = Vec::new();
            let mut to_park: Vec<Pending> = Vec::new();
            let mut split_any = false;
            let mut reassert: BTreeMap<Uuid, i64> = BTreeMap::new();
            let wall = now_ms();
            let now = Instant::now();
            // Requests of unknown fate first, so that whatever this round applied for the same
            // person is re-asserted too, whatever the order of the answers.
            let marks: Vec<Uncertain> = answered
                .iter()
                .flatten()
                .filter(|(_, o)| matches!(o, Outcome::Unknown { .. }))
                .map(|(p, _)| {
                    let late = i64::try_from(self.retry.late_landing_ms).unwrap_or(i64::MAX);
                    self.uncertain_mark(&p.item, wall.saturating_add(late))
                })
                .collect();
            for m in &marks {
                let until = uncertain.entry(m.subject_id.clone()).or_insert(m.until_ms);
                *until = (*until).max(m.until_ms);
            }
            for group in answered {
                // A request that failed for all its items says nothing about which one is at
                // fault: split it, uncharged, so that a poisoned item ends up alone.
                let split = blame && group.len() >= 2 && whole_failed(&group);
                let mut kept = Vec::new();
                for (mut p, outcome) in group {
                    self.count_outcome(&outcome);
                    let k = key(&sink, &p.item);
                    let subject_id = p.item.event.subject_id.clone();
                    match outcome {
                        Outcome::Applied
                        | Outcome::AlreadyApplied
                        | Outcome::AwaitingConfirmation => {
                            let event_id = p.item.event.event_id;
                            if ctx.reasserts(event_id) {
                                self.count_reassertion("sent");
                                info!(sink = %sink, event_id = %event_id, "newest decision re-asserted after a request of unknown fate");
                            }
                            if let Some(&until) = uncertain.get(&subject_id).filter(|&&u| u > wall)
                            {
                                let at = reassert.entry(event_id).or_insert(until);
                                *at = (*at).max(until);
                            }
                            finished.push(Finish {
                                key: k,
                                subject_id,
                                status: match outcome {
                                    Outcome::Applied => Status::Applied,
                                    Outcome::AwaitingConfirmation => Status::AwaitingConfirmation,
                                    _ => Status::AlreadyApplied,
                                },
                                error_class: None,
                                error: None,
                            });
                        }
                        Outcome::Permanent { reason } if ctx.reasserts(p.item.event.event_id) => {
                            // The decision was applied before; only sending it again failed. It
                            // stays applied, with the failure on record.
                            self.count_reassertion("failed");
                            warn!(sink = %sink, event_id = %p.item.event.event_id, error = %reason, "re-assertion refused for good; the delivery stays applied");
                            finished.push(Finish {
                                key: k,
                                subject_id,
                                status: Status::Applied,
                                error_class: Some(OutcomeClass::Permanent.as_str().to_owned()),
                                error: Some(format!("re-assertion failed: {reason}")),
                            });
                        }
                        Outcome::Permanent { reason } => {
                            mark_whole(
                                &mut narrowed,
                                &p.item,
                                Status::DeadLettered,
                                format!("{}: {reason}", p.item.change.target_key()),
                            );
                            let why = Rejected {
                                code: ErrorCode::DownstreamPermanent,
                                message: reason.clone(),
                                event_id: Some(p.item.event.event_id),
                                subject_id: Some(subject_id.clone()),
                            };
                            self.dead_letter(ctx.message(p.item.event.event_id), &why, shutdown)
                                .await?;
                            finished.push(Finish {
                                key: k,
                                subject_id,
                                status: Status::DeadLettered,
                                error_class: Some(OutcomeClass::Permanent.as_str().to_owned()),
                                error: Some(reason),
                            });
                        }
                        Outcome::Retryable { reason, .. } => {
                            finished.push(retrying(
                                k,
                                subject_id,
                                OutcomeClass::Retryable,
                                &reason,
                            ));
                            // The time budget runs from the first failure whatever the verdict.
                            p.first_failure.get_or_insert(now);
                            if blame && !split {
                                p.charged += 1;
                            }
                            p.last_error = reason;
                            kept.push((p, true));
                        }
                        Outcome::Unavailable { reason, .. } => {
                            finished.push(retrying(
                                k,
                                subject_id,
                                OutcomeClass::Unavailable,
                                &reason,
                            ));
                            p.last_error = reason;
                            kept.push((p, false));
                        }
                        Outcome::Refused { reason } => {
                            finished.push(retrying(k, subject_id, OutcomeClass::Refused, &reason));
                            p.last_error = reason;
                            kept.push((p, false));
                        }
                        Outcome::Unknown { reason } => {
                            // Retried like an unavailable destination; and whatever is applied for
                            // this person until the request can no longer land is re-asserted
                            // (the bound was taken above).
                            warn!(sink = %sink, event_id = %p.item.event.event_id, error = %reason, late_landing_ms = self.retry.late_landing_ms, "request of unknown fate: it may still be applied; this person's newest decision will be re-asserted");
                            finished.push(retrying(k, subject_id, OutcomeClass::Unknown, &reason));
                            p.last_error = reason;
                            kept.push((p, false));
                        }
                    }
                }
                // Only an item that failed on its own this round can have spent its budget: one
                // waiting for an unavailable or refusing destination is not blamed for it.
                let mut group = Vec::new();
                for (p, own_failure) in kept {
                    if own_failure && self.budget_spent(&p, now) {
                        to_park.push(p);
                    } else {
                        group.push(p);
                    }
                }
                if split && group.len() >= 2 {
                    split_any = true;
                    let second = group.split_off(group.len() / 2);
                    next.push(group);
                    next.push(second);
                } else if !group.is_empty() {
                    next.push(group);
                }
            }

            // Whoever waits for these people stops waiting: they are parked rather than tied to
            // this batch's retries.
            held.mark_failing(
                next.iter()
                    .flatten()
                    .chain(&to_park)
                    .map(|p| &p.item.event.subject_id),
            );
            self.set_circuit(verdict.refused.as_deref());
            // The bounds first, then the copies, then the finish: a crash in between redoes the
            // delivery, which marks and copies again, and a copy is never missing for a delivery
            // that is recorded applied while a bound is open.
            self.record_uncertain(marks, &mut uncertain, shutdown)
                .await?;
            self.schedule_reassertions(reassert, ctx, shutdown).await?;
            self.durable("finish", shutdown, || self.ledger.finish(&finished))
                .await?;
            if !to_park.is_empty() {
                self.park(to_park, ctx, &mut narrowed, shutdown).await?;
            }
            held.keep_only(
                &next
                    .iter()
                    .flatten()
                    .map(|p| p.item.event.subject_id.clone())
                    .collect(),
            );
            if next.is_empty() {
                self.telemetry.set_paused(&sink, None);
                return self.finish_narrowed(&narrowed, shutdown).await;
            }

            let pending: usize = next.iter().map(Vec::len).sum();
            let delay = match verdict.destination_trouble() {
                Some(reason) => {
                    self.telemetry.set_paused(&sink, Some(reason));
                    let delay = schedule.next_delay(verdict.after);
                    if verdict.refused.is_none() {
                        warn!(sink = %sink, attempt, items = pending, delay_ms = delay.as_millis() as u64, error = %reason, "destination unavailable; its items wait");
                    }
                    delay
                }
                None => {
                    self.telemetry.set_paused(&sink, None);
                    if verdict.progress {
                        schedule = RetrySchedule::new(&self.retry);
                    }
                    // Halves of a request that failed for all its items go at once: that is not
                    // a repeat of the same request but the search for the item at fault, and the
                    // others in it should not wait.
                    let delay = if split_any {
                        Duration::ZERO
                    } else {
                        schedule.next_delay(verdict.after)
                    };
                    let example = next
                        .iter()
                        .flatten()
                        .map(|p| p.last_error.as_str())
                        .next()
                        .unwrap_or_default();
                    warn!(sink = %sink, attempt, items = pending, requests = next.len(), delay_ms = delay.as_millis() as u64, error = %example, "items failed; retrying within their budget");
                    delay
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return Err(Abandoned),
                _ = tokio::time::sleep(delay) => {}
            }
            groups = next;
        }
    }

    /// Claims one group's items; returns those to send, with the state they had (narrowed parts
    /// of a whole-subject withdrawal start fresh).
    async fn claim_group(
        &self,
        group: Vec<Pending>,
        ctx: &BatchContext<'_>,
        narrowed: &mut Vec<Finish>,
        shutdown: &CancellationToken,
    ) -> Result<Vec<Pending>, Abandoned> {
        let items = group.iter().map(|p| p.item.clone()).collect();
        let mut state: HashMap<(Uuid, String), Pending> = group
            .into_iter()
            .map(|p| {
                (
                    (p.item.event.event_id, p.item.change.target_key().to_owned()),
                    p,
                )
            })
            .collect();
        let to_send = self.claim(items, ctx, narrowed, shutdown).await?;
        Ok(to_send
            .into_iter()
            .map(|(item, attempt)| {
                let mut p = state
                    .remove(&(item.event.event_id, item.change.target_key().to_owned()))
                    .unwrap_or_else(|| Pending::new(item));
                p.attempt = attempt;
                p
            })
            .collect())
    }

    /// Delivers one group in one call of the sink; exactly one outcome per item, scrubbed of the
    /// item's own contact data.
    async fn deliver_group(&self, group: Vec<Pending>) -> Vec<(Pending, Outcome)> {
        let items: Vec<SinkItem> = group.iter().map(|p| p.item.clone()).collect();
        let mut outcomes = self.sink.deliver(&items).await;
        if outcomes.len() != items.len() {
            // A sink bug must not crash the other sinks, nor drop anything: hold the batch and
            // open the circuit, so it is visible and alerted on.
            let reason = format!(
                "sink returned {} outcomes for {} items (a bug in the sink)",
                outcomes.len(),
                items.len()
            );
            outcomes = vec![Outcome::Refused { reason }; items.len()];
        }
        group
            .into_iter()
            .zip(outcomes)
            .map(|(p, o)| {
                let o = scrubbed(o, &p.item.event.contact);
                (p, o)
            })
            .collect()
    }

    fn budget_spent(&self, p: &Pending, now: Instant) -> bool {
        p.charged >= self.retry.item_attempts
            || p.first_failure
                .is_some_and(|at| now.duration_since(at) >= self.retry.item_budget())
    }

    /// Parks the items whose inline budget is spent: one copy per message on the retry topic,
    /// then the ledger. Items whose total budget is spent too are dead-lettered instead.
    async fn park(
        &self,
        items: Vec<Pending>,
        ctx: &BatchContext<'_>,
        narrowed: &mut Vec<Finish>,
        shutdown: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let sink = self.name().to_owned();
        let mut by_event: BTreeMap<Uuid, Vec<Pending>> = BTreeMap::new();
        for p in items {
            by_event.entry(p.item.event.event_id).or_default().push(p);
        }
        let now = now_ms();
        let mut parks = Vec::new();
        let mut dead = Vec::new();
        for (event_id, items) in by_event {
            let msg = ctx.message(event_id);
            let reason = items[0].last_error.clone();
            let (parks_so_far, first_failed_ms) = match &msg.ticket {
                Some(t) => (t.parks, t.first_failed_ms),
                None => {
                    let failing_for = items
                        .iter()
                        .filter_map(|p| p.first_failure)
                        .map(|at| at.elapsed())
                        .max()
                        .unwrap_or_default();
                    let ms = i64::try_from(failing_for.as_millis()).unwrap_or(i64::MAX);
                    (0, now.saturating_sub(ms))
                }
            };
            let failing_for = Duration::from_millis(
                u64::try_from(now.saturating_sub(first_failed_ms)).unwrap_or(0),
            );
            if failing_for >= self.retry.parked_budget() {
                let message = format!(
                    "still failing after {} parked retries over {}s: {reason}",
                    parks_so_far,
                    failing_for.as_secs()
                );
                let why = Rejected {
                    code: ErrorCode::RetriesExhausted,
                    message: message.clone(),
                    event_id: Some(event_id),
                    subject_id: Some(items[0].item.event.subject_id.clone()),
                };
                self.dead_letter(msg, &why, shutdown).await?;
                for p in &items {
                    mark_whole(narrowed, &p.item, Status::DeadLettered, message.clone());
                    dead.push(Finish {
                        key: key(&sink, &p.item),
                        subject_id: p.item.event.subject_id.clone(),
                        status: Status::DeadLettered,
                        error_class: Some(ErrorCode::RetriesExhausted.as_str().to_owned()),
                        error: Some(message.clone()),
                    });
                }
                continue;
            }
            let parks_now = parks_so_far.saturating_add(1);
            let ticket = ParkTicket {
                parks: parks_now,
                first_failed_ms,
                due_ms: now.saturating_add(
                    i64::try_from(self.retry.parked_delay(parks_now).as_millis())
                        .unwrap_or(i64::MAX),
                ),
                reason: reason.clone(),
                reassert: msg.ticket.as_ref().is_some_and(|t| t.reassert),
            };
            self.until_done("park", shutdown, || async {
                self.outbox
                    .park(msg, &sink, &ticket)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await?;
            warn!(
                sink = %sink, event_id = %event_id, parks = parks_now,
                due_in_s = (ticket.due_ms - now) / 1000, error = %reason,
                "item parked on the retry topic; the rest of its partition proceeds"
            );
            self.telemetry.add(
                metric::PARKED_ITEMS_TOTAL,
                vec![("sink", sink.clone())],
                items.len() as f64,
            );
            self.count("parked", items.len());
            for p in &items {
                parks.push(Park {
                    key: key(&sink, &p.item),
                    subject_id: p.item.event.subject_id.clone(),
                    parks: ticket.parks,
                    error: reason.clone(),
                });
                // A whole-subject withdrawal applied per purpose is not done while one of its
                // purposes waits: it is parked under the same copy, which narrows it again.
                if let Some(at) = narrowed
                    .iter()
                    .position(|f| f.key.event_id == p.item.event.event_id)
                {
                    let whole = narrowed.remove(at);
                    parks.push(Park {
                        key: whole.key,
                        subject_id: whole.subject_id,
                        parks: ticket.parks,
                        error: reason.clone(),
                    });
                }
            }
        }
        if !dead.is_empty() {
            self.durable("finish", shutdown, || self.ledger.finish(&dead))
                .await?;
        }
        if !parks.is_empty() {
            self.durable("park", shutdown, || self.ledger.park(&parks))
                .await?;
        }
        Ok(())
    }
}

impl<L: Ledger> Engine<L> {
    fn uncertain_mark(&self, item: &SinkItem, until_ms: i64) -> Uncertain {
        Uncertain {
            subject_id: item.event.subject_id.clone(),
            sink: self.name().to_owned(),
            until_ms,
        }
    }

    /// How long a request sent by someone else (a process that died, the partition's previous
    /// owner) may still land: it may have been sent just now, and take the request timeout plus
    /// the late-landing margin.
    pub(super) fn redelivery_window_ms(&self) -> i64 {
        let timeout = self
            .sink
            .destinations()
            .iter()
            .map(|d| d.request_timeout())
            .max()
            .unwrap_or_default();
        i64::try_from((timeout + self.retry.late_landing()).as_millis()).unwrap_or(i64::MAX)
    }

    /// Makes `marks` durable and adds them to the wave's view.
    async fn record_uncertain(
        &self,
        marks: Vec<Uncertain>,
        uncertain: &mut HashMap<String, i64>,
        shutdown: &CancellationToken,
    ) -> Result<(), Abandoned> {
        if marks.is_empty() {
            return Ok(());
        }
        self.durable("mark_uncertain", shutdown, || {
            self.ledger.mark_uncertain(&marks)
        })
        .await?;
        for m in marks {
            let until = uncertain.entry(m.subject_id).or_insert(m.until_ms);
            *until = (*until).max(m.until_ms);
        }
        Ok(())
    }

    /// Puts a re-assertion copy of each event's message on the retry topic, due when the requests
    /// of unknown fate for its person can no longer land. Then it is claimed again: sent if it is
    /// still the newest decision, a no-op if a newer one came (that one has a copy of its own).
    async fn schedule_reassertions(
        &self,
        due: BTreeMap<Uuid, i64>,
        ctx: &BatchContext<'_>,
        shutdown: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let sink = self.name().to_owned();
        for (event_id, until) in due {
            let msg = ctx.message(event_id);
            let ticket = ParkTicket {
                parks: msg.ticket.as_ref().map_or(0, |t| t.parks),
                first_failed_ms: until,
                due_ms: until,
                reason: "re-assertion: a request of unknown fate for this person may land until \
                         this copy is due"
                    .to_owned(),
                reassert: true,
            };
            self.until_done("park", shutdown, || async {
                self.outbox
                    .park(msg, &sink, &ticket)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await?;
            self.count_reassertion("scheduled");
            info!(sink = %sink, event_id = %event_id, due_in_ms = until - now_ms(), "decision applied while a request of unknown fate may still land: re-assertion scheduled");
        }
        Ok(())
    }
}

fn retrying(
    key: relay_ledger::DeliveryKey,
    subject_id: String,
    class: OutcomeClass,
    reason: &str,
) -> Finish {
    Finish {
        key,
        subject_id,
        status: Status::Retrying,
        error_class: Some(class.as_str().to_owned()),
        error: Some(reason.to_owned()),
    }
}

/// A whole-subject withdrawal applied per purpose is not done while one of its purposes is
/// dead-lettered; a replay then decides it again.
fn mark_whole(narrowed: &mut [Finish], item: &SinkItem, status: Status, error: String) {
    if let Some(whole) = narrowed
        .iter_mut()
        .find(|f| f.key.event_id == item.event.event_id)
    {
        whole.status = status;
        whole.error_class = Some(OutcomeClass::Permanent.as_str().to_owned());
        whole.error = Some(error);
    }
}
