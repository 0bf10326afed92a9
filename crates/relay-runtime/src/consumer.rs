//! The Kafka shell around a sink's engine for the source topics: join the group, collect a batch,
//! decode it, hand it to the engine, and commit its offsets once the engine says every outcome is
//! durable. Also keeps the lag gauges of its partitions.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Message as _, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use relay_ledger::Ledger;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};

use crate::config::{BatchConfig, KafkaConfig};
use crate::decode::Decoder;
use crate::engine::{Abandoned, Engine};
use crate::message::{Message, Origin};
use crate::telemetry::{metric, Lane, Telemetry, Unapplied};
use crate::RuntimeError;

/// A batch handed to the engine, and what to commit once it (and every batch before it) is durable.
struct InFlight {
    task: AbortOnDropHandle<Result<(), Abandoned>>,
    offsets: TopicPartitionList,
    unapplied: Unapplied,
    events: usize,
    /// Payload bytes the batch holds.
    bytes: usize,
}

/// Events in flight per consumer: two full batches (one delivered while the next is claimed), and
/// at least this many, so that small batches (an idle relay, one that waits for an item's
/// retries, a PostgreSQL ledger that works several transactions at once) still go side by side
/// up to `max_in_flight`. Each held event costs memory.
const MIN_EVENTS_IN_FLIGHT: usize = 2_000;

/// How much one client of ours fetches before it is asked for it. librdkafka's defaults (64 MiB
/// queued and 50 MiB per fetch response, each client) are sized for one consumer per process;
/// a relay runs three per destination (source, lookahead, parked). A response is buffered whole
/// and its messages keep it alive until the last of them is copied out, so the bound of one
/// client is about its queue plus one response. Measured: hostile input with messages up to
/// 100 KB through every sink peaks at 76–90 MiB RSS (README, Performance); messages near the
/// broker's 1 MB limit cost more, up to a response per client.
#[derive(Clone, Copy)]
pub(crate) struct Prefetch {
    queued_max_kbytes: &'static str,
    /// `fetch.max.bytes`: librdkafka insists on at least `message.max.bytes` (1 000 000; a
    /// larger value in `kafka.properties` raises this one with it); a single larger message is
    /// still fetched, alone (KIP-74).
    fetch_max_bytes: u64,
    /// `max.partition.fetch.bytes`, the part of a response one partition may fill.
    partition_fetch_max_bytes: &'static str,
    /// `fetch.queue.backoff.ms`: how long a partition waits to be fetched again once its queue
    /// is over the bound (librdkafka: 1 000 ms).
    queue_backoff_ms: &'static str,
}

impl Prefetch {
    /// The source lane: 2 MiB queued is ~10 000 events of 205 B, one of the largest batches,
    /// and a response of 1 MiB another ~5 000, so a backlog of real events never waits for a
    /// fetch (the queue lasts longer than the default backoff at the rates we reach).
    pub(crate) const SOURCE: Prefetch = Prefetch {
        queued_max_kbytes: "2048",
        fetch_max_bytes: 1_048_576,
        partition_fetch_max_bytes: "1048576",
        queue_backoff_ms: "1000",
    };
    /// The lookahead (it keeps only withdrawals, and reads one partition at a time) and the
    /// parked lane (a trickle of retries), sixteen clients with eight destinations: small, but
    /// a full queue is looked at again after 10 ms, not a second, or the lookahead would read
    /// one queue's worth per second and a withdrawal would no longer overtake a backlog.
    pub(crate) const SIDE: Prefetch = Prefetch {
        queued_max_kbytes: "256",
        fetch_max_bytes: 1_048_576,
        partition_fetch_max_bytes: "262144",
        queue_backoff_ms: "10",
    };

    /// Sets the bounds; `properties` (applied after, and winning) may raise `message.max.bytes`,
    /// which librdkafka wants `fetch.max.bytes` to be at least.
    pub(crate) fn apply(self, cfg: &mut ClientConfig, properties: &BTreeMap<String, String>) {
        let message_max = properties
            .get("message.max.bytes")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        cfg.set("queued.max.messages.kbytes", self.queued_max_kbytes)
            .set(
                "fetch.max.bytes",
                self.fetch_max_bytes.max(message_max).to_string(),
            )
            .set("max.partition.fetch.bytes", self.partition_fetch_max_bytes)
            .set("fetch.queue.backoff.ms", self.queue_backoff_ms);
    }
}

/// Payload bytes in flight per consumer: a batch stops at half of it, and the next one starts
/// only while half is free. Real events are a few hundred bytes, so this hardly binds for them
/// (half is ~5 000 events of 205 B, twice the largest default batch, and as many as the events
/// limit lets into flight for it); it binds for messages up to the broker's size limit, which a
/// buggy or hostile producer may send by the thousand, and which would otherwise hold hundreds of
/// MiB per sink before they are dead-lettered.
const BYTES_IN_FLIGHT: usize = 2 * 1024 * 1024;

fn events_in_flight_limit(batch: &BatchConfig) -> usize {
    (2 * batch.max_events).max(MIN_EVENTS_IN_FLIGHT)
}

/// Everything one sink's source consumer needs.
pub(crate) struct SourceWorker<L> {
    pub kafka: KafkaConfig,
    pub engine: Arc<Engine<L>>,
    pub batch: BatchConfig,
    pub decoder: Decoder,
    pub exit_when_idle: Option<Duration>,
    pub telemetry: Telemetry,
}

/// librdkafka's callbacks: rebalances feed metrics and readiness, and wake the lag refresher so
/// that partitions no longer assigned disappear at once.
pub(crate) struct RelayContext {
    pub sink: String,
    pub telemetry: Telemetry,
    pub rebalanced: Arc<Notify>,
    /// Whether this consumer's assignment is what readiness reports (the source consumer's is;
    /// a parked consumer often has no partition of a small retry topic, and that is fine).
    pub reports_assignment: bool,
    /// Where the partitions' log ends are kept from librdkafka's statistics, for the lookahead
    /// (source consumers only): the high watermarks of the fetch responses, no extra requests.
    pub log_ends: Option<Arc<LogEnds>>,
}

/// The high watermark last seen per (topic, partition).
pub(crate) type LogEnds = std::sync::Mutex<std::collections::HashMap<(String, i32), i64>>;

/// How often librdkafka reports statistics (the log ends) to a source consumer.
const STATISTICS_INTERVAL_MS: &str = "250";

/// librdkafka's own log lines, as tracing events with the sink named. Its errors are about the
/// broker connection, never about a consent change, so they are warnings (ERROR is reserved for
/// dead-lettered events).
impl ClientContext for RelayContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => {
                warn!(sink = %self.sink, facility = fac, "librdkafka: {log_message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                info!(sink = %self.sink, facility = fac, "librdkafka: {log_message}")
            }
            RDKafkaLogLevel::Debug => {
                debug!(sink = %self.sink, facility = fac, "librdkafka: {log_message}")
            }
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        warn!(sink = %self.sink, error = %error, "kafka client error: {reason}");
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(log_ends) = &self.log_ends else {
            return;
        };
        let mut ends = log_ends.lock().unwrap_or_else(|e| e.into_inner());
        for (name, topic) in statistics.topics {
            for (id, p) in topic.partitions {
                // librdkafka lists an internal partition -1 and reports -1 for unknown offsets.
                if id >= 0 && p.hi_offset >= 0 {
                    ends.insert((name.clone(), id), p.hi_offset);
                }
            }
        }
    }
}

impl ConsumerContext for RelayContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let assigned = consumer.assignment().map(|a| a.count()).unwrap_or(0);
        let (what, changed) = match rebalance {
            Rebalance::Assign(tpl) => ("assigned", tpl.count()),
            Rebalance::Revoke(tpl) => ("revoked", tpl.count()),
            Rebalance::Error(_) => ("error", 0),
        };
        info!(sink = %self.sink, rebalance = what, changed, partitions = assigned, "rebalance");
        self.telemetry
            .add(metric::REBALANCES, vec![("sink", self.sink.clone())], 1.0);
        if self.reports_assignment {
            self.telemetry.set_assigned(&self.sink, assigned > 0);
        }
        self.rebalanced.notify_one();
    }
}

pub(crate) type RelayConsumer = StreamConsumer<RelayContext>;

/// Holds a consumer and, when dropped, closes it on a thread of its own. Closing leaves the group
/// and waits for the broker (seconds while a rebalance is under way, and without end when the
/// coordinator does not answer, as tansu's can after a member vanished mid-join). Done inline it
/// would block an async worker; done with `spawn_blocking` it would block the runtime's shutdown,
/// which waits for blocking tasks without a bound. [`closes_finished`] gives shutdown a bounded
/// wait instead: a close that has not finished by then is abandoned to the process exit, and the
/// group notices the member's absence by its session timeout (or static membership).
pub(crate) struct Closing(Option<Arc<RelayConsumer>>);

/// Consumers being closed right now, for [`closes_finished`].
static CLOSES_IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Closing {
    pub fn new(consumer: RelayConsumer) -> Closing {
        Closing(Some(Arc::new(consumer)))
    }
}

impl std::ops::Deref for Closing {
    type Target = Arc<RelayConsumer>;
    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("present until dropped")
    }
}

impl Drop for Closing {
    fn drop(&mut self) {
        if let Some(consumer) = self.0.take() {
            release(consumer);
        }
    }
}

/// Gives up a reference to a consumer; the last one closes it on a thread of its own. Every
/// reference besides the worker's [`Closing`] (one upgraded from a `Weak` for a moment) must be
/// given up this way: if the worker stopped meanwhile, that moment's reference is the last, and
/// dropping it inline would close the consumer on an async worker thread.
pub(crate) fn release(consumer: Arc<RelayConsumer>) {
    let Some(consumer) = Arc::into_inner(consumer) else {
        return;
    };
    use std::sync::atomic::Ordering::SeqCst;
    CLOSES_IN_FLIGHT.fetch_add(1, SeqCst);
    let spawned = std::thread::Builder::new()
        .name("kafka-close".to_owned())
        .spawn(move || {
            drop(consumer);
            CLOSES_IN_FLIGHT.fetch_sub(1, SeqCst);
        });
    if let Err(e) = spawned {
        // The consumer went down with the closure: closed inline, on this thread.
        CLOSES_IN_FLIGHT.fetch_sub(1, SeqCst);
        tracing::warn!(error = %e, "no thread for closing a consumer; closed inline");
    }
}

/// Runs `f` on the consumer behind `weak`, if it is still there (see [`release`]).
pub(crate) fn with_consumer<R>(
    weak: &std::sync::Weak<RelayConsumer>,
    f: impl FnOnce(&RelayConsumer) -> R,
) -> Option<R> {
    let consumer = weak.upgrade()?;
    let result = f(&consumer);
    release(consumer);
    Some(result)
}

/// Waits until every consumer dropped so far has closed (left its group), or `limit` passed.
/// Returns whether all did.
pub(crate) async fn closes_finished(limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let open = CLOSES_IN_FLIGHT.load(std::sync::atomic::Ordering::SeqCst);
        if open == 0 {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                consumers = open,
                waited_ms = limit.as_millis() as u64,
                "consumers still closing; leaving them to the group's session timeout"
            );
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How long a stopping consumer waits for its last commits to be answered.
pub(crate) const LAST_COMMIT_LIMIT: Duration = Duration::from_secs(10);

const FETCH_WAIT_MAX_MS: &str = "100";
const QUEUED_MIN_MESSAGES: &str = "20000";

/// A consumer in `group` for `topics`, with offsets stored and committed by us only, incremental
/// (cooperative-sticky) rebalances, and static membership when an instance id is configured.
pub(crate) fn create_consumer(
    kafka: &KafkaConfig,
    group: &str,
    member: &str,
    topics: &[String],
    prefetch: Prefetch,
    context: RelayContext,
) -> Result<RelayConsumer, RuntimeError> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("group.id", group)
        .set("client.id", format!("consent-relay.{member}"))
        // A new group must start at the beginning: skipping a withdrawal is the one thing we
        // may never do.
        .set("auto.offset.reset", "earliest")
        // Offsets are stored and committed by us, after every outcome is durable.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // Incremental rebalances: a member joining or leaving moves only the partitions that
        // change hands, the others keep being consumed.
        .set("partition.assignment.strategy", "cooperative-sticky")
        // librdkafka's default (500 ms) is what an idle relay adds to every withdrawal with a
        // broker that answers a fetch only when the wait is over (tansu); Kafka answers as soon as
        // a message is there, so the shorter wait costs an idle consumer only more empty fetches.
        .set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS)
        .set("queued.min.messages", QUEUED_MIN_MESSAGES)
        .set("session.timeout.ms", kafka.session_timeout_ms.to_string())
        .set(
            "max.poll.interval.ms",
            kafka.max_poll_interval_ms.to_string(),
        );
    if let Some(instance) = &kafka.instance_id {
        cfg.set("group.instance.id", format!("{instance}.{member}"));
    }
    prefetch.apply(&mut cfg, &kafka.properties);
    if context.log_ends.is_some() {
        cfg.set("statistics.interval.ms", STATISTICS_INTERVAL_MS);
    }
    for (k, v) in &kafka.properties {
        cfg.set(k, v);
    }
    let consumer: RelayConsumer = cfg.create_with_context(context)?;
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    Ok(consumer)
}

/// Commits offsets on a thread of its own, so that neither an async worker nor the consumer's
/// loop waits for the broker: the loop hands over what to commit and goes on. Commits that queue
/// up while one is on its way are merged (the highest offset per partition), and each is counted
/// once the broker acknowledged it. A commit the coordinator never answers (tansu, after a member
/// vanished mid-join) holds only this thread; shutdown waits for it at most a bound. A commit
/// that fails only means redelivery, which the ledger recognises.
pub(crate) struct Committer {
    tx: Option<std::sync::mpsc::Sender<TopicPartitionList>>,
    drained: Option<tokio::sync::oneshot::Receiver<()>>,
    sink: String,
}

impl Committer {
    pub fn start(consumer: &Arc<RelayConsumer>, sink: &str, telemetry: &Telemetry) -> Committer {
        let (tx, rx) = std::sync::mpsc::channel::<TopicPartitionList>();
        let (done, drained) = tokio::sync::oneshot::channel();
        let (consumer, name, telemetry) = (consumer.clone(), sink.to_owned(), telemetry.clone());
        let spawned = std::thread::Builder::new()
            .name("kafka-commit".to_owned())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
                    for tpl in std::iter::once(first).chain(rx.try_iter()) {
                        for e in tpl.elements() {
                            if let Offset::Offset(o) = e.offset() {
                                let at = next.entry((e.topic().to_owned(), e.partition())).or_insert(o);
                                *at = (*at).max(o);
                            }
                        }
                    }
                    let mut tpl = TopicPartitionList::new();
                    for ((topic, partition), offset) in &next {
                        let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
                    }
                    match consumer.commit(&tpl, CommitMode::Sync) {
                        Ok(()) => telemetry.add(metric::COMMITS, vec![("sink", name.clone())], 1.0),
                        Err(e) => warn!(sink = %name, error = %e, "offset commit failed; the batch will be redelivered and recognised"),
                    }
                }
                release(consumer);
                let _ = done.send(());
            });
        match spawned {
            Ok(_) => Committer {
                tx: Some(tx),
                drained: Some(drained),
                sink: sink.to_owned(),
            },
            Err(e) => {
                warn!(sink, error = %e, "no thread for offset commits; nothing will be committed");
                Committer {
                    tx: None,
                    drained: None,
                    sink: sink.to_owned(),
                }
            }
        }
    }

    pub fn commit(&self, tpl: TopicPartitionList) {
        if tpl.count() > 0 {
            if let Some(tx) = &self.tx {
                let _ = tx.send(tpl);
            }
        }
    }

    /// Waits until everything handed over is committed (or failed), at most `limit`.
    pub async fn finish(mut self, limit: Duration) {
        drop(self.tx.take());
        if let Some(drained) = self.drained.take() {
            if tokio::time::timeout(limit, drained).await.is_err() {
                warn!(
                    sink = %self.sink,
                    waited_ms = limit.as_millis() as u64,
                    "last offset commit not answered; the last batches may be redelivered and recognised"
                );
            }
        }
    }
}

/// The offsets after the last message of each partition in `batch`.
fn next_offsets(batch: &[Message]) -> TopicPartitionList {
    let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for m in batch {
        let e = next
            .entry((m.origin.topic.as_str(), m.origin.partition))
            .or_insert(0);
        *e = (*e).max(m.origin.offset + 1);
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in &next {
        // Only fails for an invalid offset, which a consumed message's cannot be.
        let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    tpl
}

/// What of `messages` waits for an outcome: when the oldest event and the oldest withdrawal were
/// produced.
pub(crate) fn unapplied(messages: &[Message]) -> Unapplied {
    Unapplied {
        any: messages.iter().filter_map(|m| m.produced_at).min(),
        withdrawal: messages
            .iter()
            .filter(|m| m.is_withdrawal())
            .filter_map(|m| m.produced_at)
            .min(),
    }
}

impl<L: Ledger> SourceWorker<L> {
    fn name(&self) -> &str {
        self.engine.name()
    }

    pub(crate) async fn run(self, shutdown: CancellationToken) -> Result<(), RuntimeError> {
        let group = self.kafka.group_id(self.name());
        let rebalanced = Arc::new(Notify::new());
        let context = RelayContext {
            sink: self.name().to_owned(),
            telemetry: self.telemetry.clone(),
            rebalanced: rebalanced.clone(),
            reports_assignment: true,
            log_ends: self.batch.lookahead.then(Default::default),
        };
        let log_ends = context.log_ends.clone();
        let consumer = Closing::new(create_consumer(
            &self.kafka,
            &group,
            self.name(),
            &self.kafka.topics,
            Prefetch::SOURCE,
            context,
        )?);
        // Tied to this future: if the worker is dropped (crash, abort), the refresher goes too and
        // releases the consumer, so the group can hand its partitions to someone else.
        let probe = Arc::new(crate::lag::probe(&self.kafka, &group)?);
        let lag_refresher = AbortOnDropHandle::new(tokio::spawn(refresh_lag(
            Arc::downgrade(&*consumer),
            probe,
            self.name().to_owned(),
            group.clone(),
            self.telemetry.clone(),
            rebalanced,
            Duration::from_millis(self.kafka.lag_refresh_interval_ms),
        )));
        let _lookahead = log_ends.map(|log_ends| {
            let lookahead = crate::lookahead::Lookahead {
                kafka: self.kafka.clone(),
                engine: self.engine.clone(),
                decoder: self.decoder.clone(),
                telemetry: self.telemetry.clone(),
                group: format!("{group}.lookahead"),
                chunk: self.batch.max_events,
                log_ends,
            };
            AbortOnDropHandle::new(tokio::spawn(
                lookahead.run(Arc::downgrade(&*consumer), shutdown.clone()),
            ))
        });
        info!(sink = self.name(), group = %group, topics = %crate::log_fields::list(&self.kafka.topics), "consumer started");
        // Batches in flight, oldest first. They run side by side (the engine keeps one person's
        // items in one batch at a time), so that one batch waiting for an item's retries does not
        // hold back the next ones; offsets are committed strictly in order, each batch once it
        // and every batch before it are durable.
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let committer = Committer::start(&consumer, self.name(), &self.telemetry);
        let mut last_message = Instant::now();
        let mut assigned_at = None;
        let idle_tick = Duration::from_millis(250);
        let mut stop = false;
        let mut abandoned = 0;
        while !stop || !in_flight.is_empty() {
            tokio::select! {
                biased;
                done = async { (&mut in_flight.front_mut().expect("guarded").task).await },
                    if !in_flight.is_empty() => {
                    let front = in_flight.pop_front().expect("guarded");
                    match done {
                        Ok(Ok(())) => {
                            committer.commit(front.offsets);
                        }
                        Ok(Err(Abandoned)) => {
                            abandoned = in_flight.len() + 1;
                            break;
                        }
                        Err(e) => {
                            return Err(RuntimeError::Task {
                                sink: self.name().to_owned(),
                                message: e.to_string(),
                            })
                        }
                    }
                    self.report(&in_flight);
                }
                _ = shutdown.cancelled(), if !stop => stop = true,
                m = consumer.recv(), if !stop
                    && in_flight.len() < self.batch.max_in_flight
                    && in_flight.iter().map(|b| b.events).sum::<usize>()
                        < events_in_flight_limit(&self.batch)
                    // A batch takes up to half, so the next one starts only while half is free.
                    && in_flight.iter().map(|b| b.bytes).sum::<usize>() <= BYTES_IN_FLIGHT / 2 => {
                    let first = match m {
                        Ok(m) => m.detach(),
                        Err(e) => {
                            warn!(sink = self.name(), error = %e, "kafka consumer error");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                    };
                    last_message = Instant::now();
                    // Filling the batch is not cancelled midway: a message taken from the
                    // consumer must end up in a batch, or a later commit would pass it.
                    let messages = match self
                        .fill_batch(first, &consumer, &shutdown, &mut last_message)
                        .await
                    {
                        Ok(filled) => filled,
                        // Shutdown while the schema registry was being waited for: nothing of
                        // the batch was decided, so nothing of it is committed.
                        Err(Abandoned) => {
                            stop = true;
                            continue;
                        }
                    };
                    let unapplied = unapplied(&messages);
                    let bytes = messages.iter().map(|m| m.payload.len()).sum();
                    let offsets = next_offsets(&messages);
                    let events = messages.len();
                    let engine = self.engine.clone();
                    let token = shutdown.clone();
                    let task = AbortOnDropHandle::new(tokio::spawn(async move {
                        engine.process(&messages, &token).await
                    }));
                    in_flight.push_back(InFlight {
                        task,
                        offsets,
                        unapplied,
                        events,
                        bytes,
                    });
                    self.report(&in_flight);
                }
                _ = tokio::time::sleep(idle_tick), if !stop && self.exit_when_idle.is_some() && in_flight.is_empty() => {
                    let idle_for = self.exit_when_idle.unwrap_or_default();
                    let assigned = consumer.assignment().map(|a| a.count() > 0).unwrap_or(false);
                    // Idle time counts from the assignment on: before it, nothing could arrive.
                    match assigned_at {
                        None if assigned => assigned_at = Some(Instant::now()),
                        Some(at) if assigned && at.max(last_message).elapsed() >= idle_for => {
                            info!(sink = self.name(), "idle: exiting as asked");
                            stop = true;
                        }
                        _ => {}
                    }
                }
            }
        }
        committer.finish(LAST_COMMIT_LIMIT).await;
        drop(lag_refresher);
        self.telemetry.set_assigned(self.name(), false);
        self.telemetry.retain(metric::CONSUMER_LAG, |l| {
            !l.iter().any(|(k, v)| *k == "sink" && v == self.name())
        });
        info!(sink = self.name(), "consumer stopped");
        if abandoned > 0 {
            return Err(RuntimeError::Abandoned {
                sink: self.name().to_owned(),
                lane: "source topics",
                batches: abandoned,
            });
        }
        Ok(())
    }

    /// Reports what the batches in flight hold without an outcome yet.
    fn report(&self, in_flight: &VecDeque<InFlight>) {
        let merged = in_flight
            .iter()
            .fold(Unapplied::default(), |acc, b| Unapplied {
                any: acc.any.into_iter().chain(b.unapplied.any).min(),
                withdrawal: acc
                    .withdrawal
                    .into_iter()
                    .chain(b.unapplied.withdrawal)
                    .min(),
            });
        self.telemetry
            .set_unapplied(self.name(), Lane::Source, merged);
    }

    /// Collects and decodes more messages after `first` until the batch is full, or its linger is
    /// over (shorter once a withdrawal is in it) and no message is ready. Messages already
    /// fetched are always taken: under a backlog batches fill to `max_events` whatever the
    /// linger, while on an idle relay a withdrawal leaves at once.
    async fn fill_batch(
        &self,
        first: OwnedMessage,
        consumer: &RelayConsumer,
        shutdown: &CancellationToken,
        last_message: &mut Instant,
    ) -> Result<Vec<Message>, Abandoned> {
        let started = tokio::time::Instant::now();
        let mut deadline = started + self.batch.linger();
        let first_decoded = self.decode(&first, shutdown).await?;
        if first_decoded.is_withdrawal() {
            deadline = deadline.min(started + self.batch.withdrawal_linger());
        }
        // The decoded message holds its own copy of the payload: the Kafka message is dropped at
        // once, not kept beside it (twice the bytes in flight, for messages near the size limit).
        drop(first);
        let mut bytes = first_decoded.payload.len();
        let mut messages = vec![first_decoded];
        // Half the payload budget: the next batch starts while this one is in flight, unless
        // its messages are large (see BYTES_IN_FLIGHT).
        while messages.len() < self.batch.max_events && bytes < BYTES_IN_FLIGHT / 2 {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                m = consumer.recv() => match m {
                    Ok(m) => {
                        let m = m.detach();
                        let decoded = self.decode(&m, shutdown).await?;
                        if decoded.is_withdrawal() {
                            deadline = deadline.min(tokio::time::Instant::now() + self.batch.withdrawal_linger());
                        }
                        bytes += decoded.payload.len();
                        messages.push(decoded);
                        *last_message = Instant::now();
                    }
                    Err(e) => warn!(sink = self.name(), error = %e, "kafka consumer error"),
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        Ok(messages)
    }

    async fn decode(
        &self,
        m: &OwnedMessage,
        shutdown: &CancellationToken,
    ) -> Result<Message, Abandoned> {
        decode_message(&self.decoder, m, shutdown).await
    }
}

/// A source message as the engine sees it. Waits for the schema registry as long as it takes
/// (or until shutdown): an unknown schema id is not a reason to dead-letter.
pub(crate) async fn decode_message(
    decoder: &Decoder,
    m: &OwnedMessage,
    shutdown: &CancellationToken,
) -> Result<Message, Abandoned> {
    let payload = m.payload().unwrap_or_default().to_vec();
    let decoded = decoder.decode_patiently(&payload, shutdown).await?;
    Ok(Message {
        origin: Origin {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
        },
        key: m.key().map(<[u8]>::to_vec),
        payload,
        produced_at: crate::lag::produced_at(m),
        decoded,
        replay_for: crate::dead_letter::replay_target(m),
        ticket: None,
    })
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
        let assignment = match with_consumer(&consumer, |c| c.assignment()) {
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
        telemetry.retain(metric::CONSUMER_LAG, |labels| {
            let get = |k: &str| labels.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
            get("sink").as_deref() != Some(sink.as_str())
                || get("topic")
                    .zip(get("partition"))
                    .is_some_and(|tp| assigned.contains(&tp))
        });
        for l in lags {
            telemetry.set(
                metric::CONSUMER_LAG,
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
