//! One sink's consumer: read a batch, decide every event's fate, make it durable, then commit.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use relay_delivery::{Outcome, Sink, SinkItem, Target};
use relay_events::ConsentEvent;
use relay_ledger::{
    Claim, ConsentRecord, Decision, DeliveryKey, Finish, Ledger, Rejection, Status,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, error, info, warn};

use crate::config::{BatchConfig, KafkaConfig, RetryConfig};
use crate::dead_letter::DeadLetters;
use crate::decode::{Decoder, Rejected};
use crate::retry::RetrySchedule;
use crate::route::{self, Routed, Routes};
use crate::telemetry::Telemetry;
use crate::RuntimeError;

/// Everything one sink's consumer needs.
pub(crate) struct SinkWorker<L> {
    pub kafka: KafkaConfig,
    pub sink: Arc<dyn Sink>,
    pub routes: Routes,
    pub batch: BatchConfig,
    pub retry: RetryConfig,
    pub ledger: Arc<L>,
    pub decoder: Decoder,
    pub dead_letters: DeadLetters,
    pub exit_when_idle: Option<Duration>,
    /// Whether the destination currently refuses us (401/403/410/426).
    pub circuit_open: AtomicBool,
    pub telemetry: Telemetry,
}

/// librdkafka's callbacks: rebalances and commits feed metrics and readiness, and wake the lag
/// refresher so that partitions no longer assigned disappear at once.
pub(crate) struct RelayContext {
    sink: String,
    telemetry: Telemetry,
    rebalanced: Arc<Notify>,
}

impl ClientContext for RelayContext {}

impl ConsumerContext for RelayContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let assigned = consumer.assignment().map(|a| a.count()).unwrap_or(0);
        let what = match rebalance {
            Rebalance::Assign(_) => "assigned",
            Rebalance::Revoke(_) => "revoked",
            Rebalance::Error(_) => "error",
        };
        info!(sink = %self.sink, rebalance = what, partitions = assigned, "rebalance");
        self.telemetry.add(
            "consent_relay_rebalances_total",
            vec![("sink", self.sink.clone())],
            1.0,
        );
        self.telemetry.set_assigned(&self.sink, assigned > 0);
        self.rebalanced.notify_one();
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) => self.telemetry.add(
                "consent_relay_commits_total",
                vec![("sink", self.sink.clone())],
                1.0,
            ),
            Err(e) => {
                warn!(sink = %self.sink, error = %e, "offset commit failed; the batch will be redelivered and recognised")
            }
        }
    }
}

type RelayConsumer = StreamConsumer<RelayContext>;

/// The batch was given up because of shutdown; nothing past its start may be committed.
struct Abandoned;

struct Received {
    msg: OwnedMessage,
    decoded: Result<Arc<ConsentEvent>, Rejected>,
    /// Set on a copy that `dlq replay` put back for one sink; every other sink ignores it.
    replay_for: Option<String>,
}

/// Where an item came from, for the DLQ and the logs.
#[derive(Clone)]
struct Origin {
    index: usize,
}

impl<L: Ledger> SinkWorker<L> {
    fn name(&self) -> &str {
        self.sink.name()
    }

    fn create_consumer(&self, rebalanced: Arc<Notify>) -> Result<RelayConsumer, RuntimeError> {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.kafka.bootstrap_servers)
            .set("group.id", self.kafka.group_id(self.name()))
            .set("client.id", format!("consent-relay.{}", self.name()))
            // A new group must start at the beginning: skipping a withdrawal is the one thing we
            // may never do.
            .set("auto.offset.reset", "earliest")
            // Offsets are stored and committed by us, after the ledger holds every outcome.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set(
                "session.timeout.ms",
                self.kafka.session_timeout_ms.to_string(),
            )
            .set(
                "max.poll.interval.ms",
                self.kafka.max_poll_interval_ms.to_string(),
            );
        for (k, v) in &self.kafka.properties {
            cfg.set(k, v);
        }
        let context = RelayContext {
            sink: self.name().to_owned(),
            telemetry: self.telemetry.clone(),
            rebalanced,
        };
        let consumer: RelayConsumer = cfg
            .create_with_context(context)
            .map_err(RuntimeError::Kafka)?;
        let topics: Vec<&str> = self.kafka.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(RuntimeError::Kafka)?;
        Ok(consumer)
    }

    pub(crate) async fn run(self, shutdown: CancellationToken) -> Result<(), RuntimeError> {
        let rebalanced = Arc::new(Notify::new());
        let consumer = Arc::new(self.create_consumer(rebalanced.clone())?);
        // Tied to this future: if the worker is dropped (crash, abort), the refresher goes too and
        // releases the consumer, so the group can hand its partitions to someone else.
        let probe = Arc::new(
            crate::lag::probe(&self.kafka, &self.kafka.group_id(self.name()))
                .map_err(RuntimeError::Kafka)?,
        );
        let lag_refresher = AbortOnDropHandle::new(tokio::spawn(refresh_lag(
            Arc::downgrade(&consumer),
            probe,
            self.name().to_owned(),
            self.kafka.group_id(self.name()),
            self.telemetry.clone(),
            rebalanced,
            Duration::from_millis(self.kafka.lag_refresh_interval_ms),
        )));
        info!(sink = self.name(), group = %self.kafka.group_id(self.name()), topics = ?self.kafka.topics, "consumer started");
        let mut last_message = Instant::now();
        let mut assigned_at = None;
        let mut last_commit = None;
        loop {
            let batch = match self
                .collect_batch(&consumer, &shutdown, &mut last_message, &mut assigned_at)
                .await
            {
                Ok(Some(batch)) => batch,
                // Shutdown while the schema registry was being waited for: nothing of this batch
                // was decided, so nothing is committed.
                Ok(None) | Err(RuntimeError::ShutdownDuringDecode) => break,
                Err(e) => return Err(e),
            };
            if batch.is_empty() {
                continue;
            }
            let oldest = batch
                .iter()
                .filter_map(|r| crate::lag::produced_at(&r.msg))
                .min();
            self.telemetry.set_oldest_unapplied(self.name(), oldest);
            let processed = self.process(&batch, &shutdown).await;
            self.telemetry.set_oldest_unapplied(self.name(), None);
            match processed {
                Ok(()) => last_commit = Some(self.commit(&consumer, &batch)),
                Err(Abandoned) => {
                    info!(
                        sink = self.name(),
                        events = batch.len(),
                        "shutdown: in-flight batch abandoned, not committed"
                    );
                    break;
                }
            }
            if shutdown.is_cancelled() {
                break;
            }
        }
        // Commits are asynchronous; repeat the last one synchronously so that it has landed before
        // the group hands the partitions to someone else.
        if let Some(tpl) = last_commit {
            let c = consumer.clone();
            let _ = tokio::task::spawn_blocking(move || c.commit(&tpl, CommitMode::Sync)).await;
        }
        drop(lag_refresher);
        self.telemetry.set_assigned(self.name(), false);
        self.telemetry
            .retain("consent_relay_consumer_lag_messages", |l| {
                !l.iter().any(|(k, v)| *k == "sink" && v == self.name())
            });
        info!(sink = self.name(), "consumer stopped");
        Ok(())
    }

    /// Waits for the first message, then collects more until the batch is full or its linger is
    /// over. `None` means stop: shutdown, or idle long enough with `exit_when_idle`.
    async fn collect_batch(
        &self,
        consumer: &RelayConsumer,
        shutdown: &CancellationToken,
        last_message: &mut Instant,
        assigned_at: &mut Option<Instant>,
    ) -> Result<Option<Vec<Received>>, RuntimeError> {
        let idle_tick = Duration::from_millis(250);
        let first = loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                m = consumer.recv() => match m {
                    Ok(m) => break m.detach(),
                    Err(e) => {
                        warn!(sink = self.name(), error = %e, "kafka consumer error");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
                _ = tokio::time::sleep(idle_tick), if self.exit_when_idle.is_some() => {
                    let idle_for = self.exit_when_idle.unwrap_or_default();
                    let assigned = consumer.assignment().map(|a| a.count() > 0).unwrap_or(false);
                    // Idle time counts from the assignment on: before it, nothing could arrive.
                    match *assigned_at {
                        None if assigned => *assigned_at = Some(Instant::now()),
                        Some(at) if assigned && at.max(*last_message).elapsed() >= idle_for => {
                            info!(sink = self.name(), "idle: exiting as asked");
                            return Ok(None);
                        }
                        _ => {}
                    }
                }
            }
        };
        *last_message = Instant::now();
        let mut batch = vec![self.receive(first, shutdown).await?];
        let started = tokio::time::Instant::now();
        let mut deadline = started + self.batch.linger();
        let urgent = |r: &Received| matches!(&r.decoded, Ok(ev) if ev.action() != relay_events::Action::Grant);
        if urgent(&batch[0]) {
            deadline = deadline.min(started + self.batch.withdrawal_linger());
        }
        while batch.len() < self.batch.max_events {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(deadline) => break,
                m = consumer.recv() => match m {
                    Ok(m) => {
                        let r = self.receive(m.detach(), shutdown).await?;
                        if urgent(&r) {
                            deadline = deadline.min(tokio::time::Instant::now() + self.batch.withdrawal_linger());
                        }
                        batch.push(r);
                        *last_message = Instant::now();
                    }
                    Err(e) => warn!(sink = self.name(), error = %e, "kafka consumer error"),
                },
            }
        }
        Ok(Some(batch))
    }

    async fn receive(
        &self,
        msg: OwnedMessage,
        shutdown: &CancellationToken,
    ) -> Result<Received, RuntimeError> {
        let payload = msg.payload().unwrap_or_default().to_vec();
        let decoded = self
            .until_done("schema registry", shutdown, || async {
                self.decoder
                    .decode(&payload)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|Abandoned| RuntimeError::ShutdownDuringDecode)?;
        let replay_for = crate::dead_letter::replay_target(&msg);
        Ok(Received {
            msg,
            decoded: decoded.map(Arc::new),
            replay_for,
        })
    }

    /// Decides, applies and records every event of the batch. Returns only when every outcome is
    /// durable in the ledger (and the DLQ), or on shutdown.
    async fn process(
        &self,
        batch: &[Received],
        shutdown: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let sink = self.name().to_owned();
        let mut consent_log = Vec::new();
        let mut rejected: Vec<(usize, Rejected)> = Vec::new();
        let mut not_routed = Vec::new();
        let mut items: Vec<SinkItem> = Vec::new();
        let mut origin_of: BTreeMap<uuid::Uuid, Origin> = BTreeMap::new();
        // Withdrawals this sink cannot apply (no email): dead-lettered, but their decision still
        // enters the version rule, so that an older grant arriving later cannot re-subscribe.
        let mut unapplicable: Vec<(SinkItem, String)> = Vec::new();
        let replays: BTreeSet<uuid::Uuid> = batch
            .iter()
            .filter(|r| r.replay_for.is_some())
            .filter_map(|r| r.decoded.as_ref().ok().map(|e| e.event_id))
            .collect();

        for (index, r) in batch.iter().enumerate() {
            if r.replay_for.as_deref().is_some_and(|s| s != sink) {
                // Replayed for another sink: this sink has already decided this message once.
                continue;
            }
            let event = match &r.decoded {
                Ok(event) => event,
                Err(why) => {
                    rejected.push((index, why.clone()));
                    continue;
                }
            };
            match route::route(event, &self.routes) {
                Routed::Rejected(why) if why.code == "unknown_purpose" => {
                    rejected.push((index, why));
                    continue;
                }
                Routed::Rejected(why) => {
                    consent_log.push(consent_record(event, &r.msg));
                    if event.action() != relay_events::Action::Grant {
                        let lenient = Routes {
                            requires_email: false,
                            ..self.routes.clone()
                        };
                        if let Routed::Items(routed) = route::route(event, &lenient) {
                            unapplicable
                                .extend(routed.into_iter().map(|i| (i, why.message.clone())));
                        }
                    }
                    rejected.push((index, why));
                }
                Routed::Elsewhere => {
                    consent_log.push(consent_record(event, &r.msg));
                    not_routed.push(Finish {
                        key: DeliveryKey {
                            event_id: event.event_id,
                            sink: sink.clone(),
                            target: "*".to_owned(),
                        },
                        subject_id: event.subject_id.clone(),
                        status: Status::NotRouted,
                        error_class: None,
                        error: None,
                    });
                }
                Routed::Items(routed) => {
                    consent_log.push(consent_record(event, &r.msg));
                    origin_of.insert(event.event_id, Origin { index });
                    items.extend(routed);
                }
            }
        }

        if !consent_log.is_empty() {
            self.durable("log_events", shutdown, || {
                self.ledger.log_events(&consent_log)
            })
            .await?;
        }
        for (index, why) in &rejected {
            self.dead_letter(&batch[*index].msg, why, shutdown).await?;
        }
        if !rejected.is_empty() {
            let rows: Vec<Rejection> = rejected
                .iter()
                .map(|(index, why)| rejection(&sink, &batch[*index].msg, why))
                .collect();
            self.durable("record_rejections", shutdown, || {
                self.ledger.record_rejections(&rows)
            })
            .await?;
        }

        if !unapplicable.is_empty() {
            self.record_unapplicable(unapplicable, &replays, shutdown)
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
        if !finished.is_empty() {
            self.durable("finish", shutdown, || self.ledger.finish(&finished))
                .await?;
        }

        for wave in plan.waves {
            self.apply(wave, batch, &origin_of, &replays, shutdown)
                .await?;
        }
        debug!(sink = %sink, events = batch.len(), rejected = rejected.len(), "batch durable");
        Ok(())
    }

    /// Claims the items against the version rule, delivers those that proceed, and retries the
    /// retryable ones (re-claiming before each attempt) until every item has a final outcome.
    async fn apply(
        &self,
        wave: Vec<SinkItem>,
        batch: &[Received],
        origin_of: &BTreeMap<uuid::Uuid, Origin>,
        replays: &BTreeSet<uuid::Uuid>,
        shutdown: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let sink = self.name().to_owned();
        let mut pending = wave;
        let mut schedule = RetrySchedule::new(&self.retry);
        let mut attempt = 0u32;
        // Whole-subject withdrawals that were applied per purpose instead; recorded last, so that a
        // crash before their purposes are done redoes the narrowing.
        let mut narrowed = Vec::new();
        loop {
            let to_send = self
                .claim(pending, replays, &mut narrowed, shutdown)
                .await?;
            if to_send.is_empty() {
                return self.finish_narrowed(&narrowed, shutdown).await;
            }
            attempt += 1;
            let mut outcomes = self.sink.deliver(&to_send).await;
            if outcomes.len() != to_send.len() {
                // A sink bug must not crash the other sinks, nor drop anything: hold the batch
                // and open the circuit, so it is visible and alerted on.
                let reason = format!(
                    "sink returned {} outcomes for {} items (a bug in the sink)",
                    outcomes.len(),
                    to_send.len()
                );
                outcomes = vec![Outcome::Refused { reason }; to_send.len()];
            }

            let mut finished = Vec::new();
            let mut retry = Vec::new();
            let mut retry_after = None;
            let mut last_reason = String::new();
            let mut refused = None;
            for (item, outcome) in to_send.into_iter().zip(outcomes) {
                let outcome = scrubbed(outcome, &item.event.contact);
                let k = key(&sink, &item);
                let subject_id = item.event.subject_id.clone();
                self.count_outcome(&outcome);
                match outcome {
                    Outcome::Applied | Outcome::AlreadyApplied => finished.push(Finish {
                        key: k,
                        subject_id,
                        status: if outcome == Outcome::Applied {
                            Status::Applied
                        } else {
                            Status::AlreadyApplied
                        },
                        error_class: None,
                        error: None,
                    }),
                    Outcome::Permanent { reason } => {
                        // A whole-subject withdrawal applied per purpose is not done while one of
                        // its purposes is dead-lettered; a replay then decides it again.
                        if let Some(whole) = narrowed
                            .iter_mut()
                            .find(|f| f.key.event_id == item.event.event_id)
                        {
                            whole.status = Status::DeadLettered;
                            whole.error_class = Some("permanent".to_owned());
                            whole.error = Some(format!("{}: {reason}", item.target.key()));
                        }
                        let why = Rejected {
                            code: "downstream_permanent".to_owned(),
                            message: reason.clone(),
                            event_id: Some(item.event.event_id),
                            subject_id: Some(subject_id.clone()),
                        };
                        let msg = &batch[origin_of[&item.event.event_id].index].msg;
                        self.dead_letter(msg, &why, shutdown).await?;
                        finished.push(Finish {
                            key: k,
                            subject_id,
                            status: Status::DeadLettered,
                            error_class: Some("permanent".to_owned()),
                            error: Some(reason),
                        });
                    }
                    Outcome::Retryable { after, reason } => {
                        retry_after = retry_after.max(after);
                        last_reason.clone_from(&reason);
                        finished.push(Finish {
                            key: k,
                            subject_id,
                            status: Status::Retrying,
                            error_class: Some("retryable".to_owned()),
                            error: Some(reason),
                        });
                        retry.push(item);
                    }
                    Outcome::Refused { reason } => {
                        refused = Some(reason.clone());
                        finished.push(Finish {
                            key: k,
                            subject_id,
                            status: Status::Retrying,
                            error_class: Some("refused".to_owned()),
                            error: Some(reason),
                        });
                        retry.push(item);
                    }
                }
            }
            self.set_circuit(refused.as_deref());
            self.durable("finish", shutdown, || self.ledger.finish(&finished))
                .await?;
            if retry.is_empty() {
                return self.finish_narrowed(&narrowed, shutdown).await;
            }
            let delay = schedule.next_delay(retry_after);
            if refused.is_none() {
                warn!(sink = %sink, attempt, items = retry.len(), delay_ms = delay.as_millis() as u64, error = %last_reason, "retryable failure; partitions wait");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Err(Abandoned),
                _ = tokio::time::sleep(delay) => {}
            }
            pending = retry;
        }
    }

    /// Claims `items` against the version rule and returns those to apply. A late whole-subject
    /// withdrawal that the ledger narrows (the person granted some purposes after it) becomes one
    /// withdrawal per purpose of this sink except those, claimed in turn.
    async fn claim(
        &self,
        mut items: Vec<SinkItem>,
        replays: &std::collections::BTreeSet<uuid::Uuid>,
        narrowed: &mut Vec<Finish>,
        shutdown: &CancellationToken,
    ) -> Result<Vec<SinkItem>, Abandoned> {
        let sink = self.name().to_owned();
        let mut to_send = Vec::new();
        while !items.is_empty() {
            let claims: Vec<Claim> = items
                .iter()
                .map(|item| Claim {
                    key: key(&sink, item),
                    subject_id: item.event.subject_id.clone(),
                    action: item.action,
                    occurred_at_ms: item.event.occurred_at_ms,
                    replay: replays.contains(&item.event.event_id),
                })
                .collect();
            let decisions = self
                .durable("claim", shutdown, || self.ledger.claim(&claims))
                .await?;
            let mut per_purpose = Vec::new();
            for (item, decision) in items.into_iter().zip(decisions) {
                match decision {
                    Decision::Proceed { .. } => to_send.push(item),
                    Decision::ProceedExcept { keep, .. } => {
                        info!(sink = %sink, event_id = %item.event.event_id, kept = ?keep, "late whole-subject withdrawal applied per purpose: newer grants stand");
                        per_purpose.extend(
                            self.routes
                                .sink
                                .iter()
                                .filter(|p| !keep.contains(*p))
                                .map(|p| SinkItem {
                                    event: item.event.clone(),
                                    action: item.action,
                                    target: Target::Purpose(p.clone()),
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

    /// Claims withdrawals this sink cannot apply (so the version rule knows them) and records them
    /// dead-lettered; their messages are already in the DLQ.
    async fn record_unapplicable(
        &self,
        items: Vec<(SinkItem, String)>,
        replays: &BTreeSet<uuid::Uuid>,
        shutdown: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let reasons: BTreeMap<uuid::Uuid, String> = items
            .iter()
            .map(|(i, r)| (i.event.event_id, r.clone()))
            .collect();
        let mut narrowed = Vec::new();
        let claimed = self
            .claim(
                items.into_iter().map(|(i, _)| i).collect(),
                replays,
                &mut narrowed,
                shutdown,
            )
            .await?;
        let mut rows: Vec<Finish> = claimed
            .iter()
            .map(|item| Finish {
                key: key(self.name(), item),
                subject_id: item.event.subject_id.clone(),
                status: Status::DeadLettered,
                error_class: Some("missing_email".to_owned()),
                error: reasons.get(&item.event.event_id).cloned(),
            })
            .collect();
        for mut whole in narrowed {
            whole.status = Status::DeadLettered;
            whole.error_class = Some("missing_email".to_owned());
            rows.push(whole);
        }
        if !rows.is_empty() {
            self.durable("finish", shutdown, || self.ledger.finish(&rows))
                .await?;
        }
        Ok(())
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
    /// not a refusal. While open, the sink's partitions wait and the batch is probed with backoff.
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
        msg: &OwnedMessage,
        why: &Rejected,
        shutdown: &CancellationToken,
    ) -> Result<(), Abandoned> {
        self.until_done("dead-letter", shutdown, || async {
            self.dead_letters
                .send(msg, self.name(), why)
                .await
                .map_err(|e| e.to_string())
        })
        .await?;
        error!(
            sink = self.name(), topic = msg.topic(), partition = msg.partition(), offset = msg.offset(),
            event_id = ?why.event_id, code = %why.code, error = %why.message,
            "event dead-lettered"
        );
        self.count("dead_lettered", 1);
        self.telemetry.add(
            "consent_relay_dlq_messages_total",
            vec![("sink", self.name().to_owned()), ("code", why.code.clone())],
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
                "consent_relay_ledger_transaction_duration_seconds",
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
            Outcome::Permanent { .. } => {}
            Outcome::Retryable { .. } | Outcome::Refused { .. } => self.telemetry.add(
                "consent_relay_retries_total",
                vec![
                    ("sink", self.name().to_owned()),
                    ("class", outcome.class().to_owned()),
                ],
                1.0,
            ),
        }
    }

    fn count(&self, outcome: &'static str, n: usize) {
        if n > 0 {
            self.telemetry.add(
                "consent_relay_events_total",
                vec![
                    ("sink", self.name().to_owned()),
                    ("outcome", outcome.to_owned()),
                ],
                n as f64,
            );
        }
    }

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

    /// Commits, per partition, the offset after the batch's last message. Everything in the batch
    /// is durable by now; a commit that fails only means redelivery, which the ledger recognises.
    fn commit(&self, consumer: &RelayConsumer, batch: &[Received]) -> TopicPartitionList {
        let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for r in batch {
            let e = next
                .entry((r.msg.topic().to_owned(), r.msg.partition()))
                .or_insert(0);
            *e = (*e).max(r.msg.offset() + 1);
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in &next {
            if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
                warn!(sink = self.name(), error = %e, "building commit list");
            }
        }
        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
            warn!(sink = self.name(), error = %e, "commit failed; the batch will be redelivered and recognised");
        }
        tpl
    }
}

fn key(sink: &str, item: &SinkItem) -> DeliveryKey {
    DeliveryKey {
        event_id: item.event.event_id,
        sink: sink.to_owned(),
        target: item.target.key().to_owned(),
    }
}

fn consent_record(event: &ConsentEvent, msg: &OwnedMessage) -> ConsentRecord {
    ConsentRecord {
        event_id: event.event_id,
        subject_id: event.subject_id.clone(),
        kind: event.kind.name().to_owned(),
        purposes: match &event.scope {
            relay_events::Scope::Purposes(p) => p.clone(),
            relay_events::Scope::All => vec!["*".to_owned()],
        },
        occurred_at_ms: event.occurred_at_ms,
        source: event.source.clone(),
        notice_version: event.notice_version.clone(),
        email_sha256: event
            .contact
            .email
            .as_deref()
            .map(relay_events::normalize::email_sha256),
        topic: msg.topic().to_owned(),
        partition: msg.partition(),
        offset: msg.offset(),
    }
}

fn rejection(sink: &str, msg: &OwnedMessage, why: &Rejected) -> Rejection {
    Rejection {
        sink: sink.to_owned(),
        topic: msg.topic().to_owned(),
        partition: msg.partition(),
        offset: msg.offset(),
        event_id: why.event_id,
        subject_id: why.subject_id.clone(),
        code: why.code.clone(),
        message: why.message.clone(),
    }
}

/// Keeps `consent_relay_consumer_lag_messages` right for this sink: refreshed on a timer and after
/// every rebalance, from the broker's log end offsets and the group's committed offsets; partitions
/// no longer assigned are removed, never left stale.
async fn refresh_lag(
    consumer: std::sync::Weak<RelayConsumer>,
    probe: Arc<rdkafka::consumer::BaseConsumer>,
    sink: String,
    group: String,
    telemetry: Telemetry,
    rebalanced: Arc<Notify>,
    every: Duration,
) {
    loop {
        tokio::select! {
            _ = rebalanced.notified() => {}
            _ = tokio::time::sleep(every) => {}
        }
        // Only the (instant) assignment comes from the group member, and only a weak reference is
        // kept: broker round trips go through a separate client, so a crashed or stopping worker
        // releases its partitions at once instead of after a slow lag query.
        let assignment = match consumer.upgrade().map(|c| c.assignment()) {
            Some(Ok(a)) => a,
            Some(Err(e)) => {
                debug!(sink = %sink, error = %e, "no assignment; keeping the last lag values");
                continue;
            }
            None => return,
        };
        let (p, g) = (probe.clone(), group.clone());
        let lags =
            tokio::task::spawn_blocking(move || crate::lag::lag_of(p.as_ref(), &g, &assignment))
                .await;
        let lags = match lags {
            Ok(Ok(lags)) => lags,
            Ok(Err(e)) => {
                debug!(sink = %sink, error = %e, "lag refresh failed; keeping the last values");
                continue;
            }
            Err(_) => return,
        };
        let assigned: std::collections::BTreeSet<(String, String)> = lags
            .iter()
            .map(|l| (l.topic.clone(), l.partition.to_string()))
            .collect();
        telemetry.retain("consent_relay_consumer_lag_messages", |labels| {
            let get = |k: &str| labels.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
            get("sink").as_deref() != Some(sink.as_str())
                || get("topic")
                    .zip(get("partition"))
                    .is_some_and(|tp| assigned.contains(&tp))
        });
        for l in lags {
            telemetry.set(
                "consent_relay_consumer_lag_messages",
                vec![
                    ("sink", sink.clone()),
                    ("topic", l.topic),
                    ("partition", l.partition.to_string()),
                ],
                l.lag as f64,
            );
        }
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
        Outcome::Permanent { reason } => Outcome::Permanent {
            reason: scrub(reason),
        },
        Outcome::Refused { reason } => Outcome::Refused {
            reason: scrub(reason),
        },
        done => done,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_events::Contact;

    #[test]
    fn reasons_lose_the_items_own_contact_data() {
        let contact = Contact {
            email: Some("erika@example.de".into()),
            phone: Some("+49 30 1234567".into()),
            first_name: Some("Li".into()),
            last_name: Some("Mustermann".into()),
            ..Contact::default()
        };
        let echoed = Outcome::permanent(
            "phone +49 30 1234567 of Li Mustermann (erika@example.de) is invalid; Lisbon office",
        );
        let Outcome::Permanent { reason } = scrubbed(echoed, &contact) else {
            unreachable!()
        };
        assert_eq!(
            reason,
            "phone <redacted> of <redacted> <redacted> (<redacted>) is invalid; Lisbon office"
        );
        assert_eq!(scrubbed(Outcome::Applied, &contact), Outcome::Applied);
    }
}
