//! Withdrawals ahead of the backlog. While a partition's source lane is far behind its log end
//! (a backfill, a replay, a restart after an outage), a withdrawal published now would wait until
//! every grant before it is through. The lookahead reads ahead of the source lane with a client
//! of its own, and hands the withdrawals it finds to the same engine at once. Correctness does not
//! depend on order (the ledger's version rule decides every event by its `occurred_at`, and the
//! engine's subject locks keep one person's items in one batch at a time); the lookahead never
//! commits an offset, so the commit frontier stays exactly the source lane's. When the source lane
//! gets there, the ledger knows those withdrawals as final and they are duplicates.
//!
//! A withdrawal goes ahead only if nothing the lookahead has read before it, in its partition,
//! is a newer grant of the same person: such a pair is left in order, because some downstreams
//! (Mailchimp's compliance states) cannot take a re-subscribe after an unsubscribe. Anything the
//! engine would reject (clock rule, routing) is also left to the source lane, so nothing is
//! dead-lettered twice. Must not: commit offsets, join the consumer group, hold more than one
//! chunk of withdrawals and one window's newest-grant table per partition.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Weak};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message as _, Offset, TopicPartitionList};
use relay_ledger::Ledger;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::KafkaConfig;
use crate::consumer::{decode_message, with_consumer, LogEnds, Prefetch, RelayConsumer};
use crate::decode::Decoder;
use crate::engine::{Abandoned, Engine};
use crate::telemetry::{metric, Telemetry};

/// How far behind its log end the source lane must be before the lookahead reads ahead: closer
/// than this, the source lane's next batches hold those messages anyway.
const MIN_BACKLOG: i64 = 2_000;
/// How far ahead of the source lane the lookahead reads, per partition. Bounds the newest-grant
/// table and the messages read twice.
const WINDOW: i64 = 250_000;
/// How often an idle lookahead looks at the source lane's positions.
const IDLE: Duration = Duration::from_millis(100);
/// A fetch that brings nothing for this long ends the scan (the broker or the partition moved).
const FETCH_PATIENCE: Duration = Duration::from_secs(5);

pub(crate) struct Lookahead<L> {
    pub kafka: KafkaConfig,
    pub engine: Arc<Engine<L>>,
    pub decoder: Decoder,
    pub telemetry: Telemetry,
    /// The client's group id: never joined and never committed to, but librdkafka wants one.
    pub group: String,
    /// Most withdrawals handed to the engine at once.
    pub chunk: usize,
    /// The source consumer's view of the log ends (see `RelayContext::log_ends`).
    pub log_ends: Arc<LogEnds>,
}

/// How far one partition was read ahead, and the newest grant per person read so far.
#[derive(Default)]
struct Scan {
    next: i64,
    newest_grant: HashMap<u64, i64>,
}

impl<L: Ledger> Lookahead<L> {
    pub(crate) async fn run(self, source: Weak<RelayConsumer>, shutdown: CancellationToken) {
        let reader = match self.reader() {
            Ok(r) => Reader(Some(r)),
            Err(e) => {
                warn!(sink = self.engine.name(), error = %e, "no lookahead: cannot create its Kafka client");
                return;
            }
        };
        let mut scans: HashMap<(String, i32), Scan> = HashMap::new();
        loop {
            let Some(positions) = with_consumer(&source, |c| c.position().ok()).flatten() else {
                return;
            };
            let mut ranges = Vec::new();
            let mut assigned = Vec::new();
            for e in positions.elements() {
                let Offset::Offset(position) = e.offset() else {
                    continue;
                };
                let tp = (e.topic().to_owned(), e.partition());
                assigned.push(tp.clone());
                let ends = self.log_ends.lock().unwrap_or_else(|e| e.into_inner());
                let Some(&high) = ends.get(&tp) else {
                    continue;
                };
                drop(ends);
                let scan = scans.entry(tp.clone()).or_default();
                if scan.next < position {
                    // The source lane is past what was read ahead: start over from it.
                    *scan = Scan {
                        next: position,
                        newest_grant: HashMap::new(),
                    };
                }
                let until = high.min(position + WINDOW);
                if high - position >= MIN_BACKLOG && scan.next < until {
                    ranges.push((tp, until));
                }
            }
            scans.retain(|tp, _| assigned.contains(tp));
            if ranges.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(IDLE) => continue,
                }
            }
            for (tp, until) in ranges {
                let scan = scans.get_mut(&tp).expect("ranges come from scans");
                if self
                    .scan(reader.get(), &tp, until, scan, &shutdown)
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }

    fn reader(&self) -> Result<StreamConsumer, rdkafka::error::KafkaError> {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.kafka.bootstrap_servers)
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("fetch.wait.max.ms", "100");
        Prefetch::SIDE.apply(&mut cfg, &self.kafka.properties);
        for (k, v) in &self.kafka.properties {
            cfg.set(k, v);
        }
        cfg.create()
    }

    /// Reads `tp` from `scan.next` up to `until`, handing the withdrawals that may go ahead to the
    /// engine in chunks. Stops early when the broker has nothing for a while.
    async fn scan(
        &self,
        reader: &StreamConsumer,
        (topic, partition): &(String, i32),
        until: i64,
        scan: &mut Scan,
        shutdown: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let sink = self.engine.name();
        let mut tpl = TopicPartitionList::new();
        if tpl
            .add_partition_offset(topic, *partition, Offset::Offset(scan.next))
            .and_then(|()| reader.assign(&tpl))
            .is_err()
        {
            warn!(
                sink,
                topic, partition, "lookahead: cannot read the partition"
            );
            return Ok(());
        }
        let from = scan.next;
        let mut ahead = Vec::new();
        let mut sent = 0usize;
        while scan.next < until {
            let m = tokio::select! {
                _ = shutdown.cancelled() => return Err(Abandoned),
                m = tokio::time::timeout(FETCH_PATIENCE, reader.recv()) => m,
            };
            let m = match m {
                Ok(Ok(m)) => m.detach(),
                Ok(Err(e)) => {
                    warn!(sink, topic, partition, error = %e, "lookahead: kafka error; pausing it");
                    break;
                }
                Err(_) => break,
            };
            if m.topic() != topic || m.partition() != *partition || m.offset() < scan.next {
                continue;
            }
            if m.offset() >= until {
                break;
            }
            scan.next = m.offset() + 1;
            let message = decode_message(&self.decoder, &m, shutdown).await?;
            let Some(event) = message.event() else {
                continue;
            };
            let person = person_key(&event.subject_id);
            if event.action() == relay_events::Action::Grant {
                let newest = scan.newest_grant.entry(person).or_insert(i64::MIN);
                *newest = (*newest).max(event.occurred_at_ms);
                continue;
            }
            let newer_grant_before = scan
                .newest_grant
                .get(&person)
                .is_some_and(|&granted| granted > event.occurred_at_ms);
            if newer_grant_before || !self.engine.may_go_ahead(&message) {
                continue;
            }
            ahead.push(message);
            if ahead.len() >= self.chunk {
                sent += ahead.len();
                self.engine.process(&ahead, shutdown).await?;
                ahead.clear();
            }
        }
        if !ahead.is_empty() {
            sent += ahead.len();
            self.engine.process(&ahead, shutdown).await?;
        }
        let _ = reader.unassign();
        if sent > 0 {
            self.telemetry.add(
                metric::LOOKAHEAD_WITHDRAWALS,
                vec![("sink", sink.to_owned())],
                sent as f64,
            );
            info!(
                sink,
                topic,
                partition,
                from,
                to = scan.next,
                withdrawals = sent,
                "lookahead: withdrawals applied ahead of the backlog"
            );
        } else {
            debug!(
                sink,
                topic,
                partition,
                from,
                to = scan.next,
                "lookahead: nothing to take ahead"
            );
        }
        Ok(())
    }
}

/// The lookahead's client, destroyed on a thread of its own: destroying a client waits for its
/// broker threads, which must not happen on an async worker.
struct Reader(Option<StreamConsumer>);

impl Reader {
    fn get(&self) -> &StreamConsumer {
        self.0.as_ref().expect("present until dropped")
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if let Some(reader) = self.0.take() {
            let _ = std::thread::Builder::new()
                .name("kafka-close".to_owned())
                .spawn(move || drop(reader));
        }
    }
}

/// A person's key in the newest-grant table. A collision only makes the lookahead leave a
/// withdrawal to the source lane.
fn person_key(subject_id: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    subject_id.hash(&mut h);
    h.finish()
}
