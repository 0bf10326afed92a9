//! The Kafka shell that works a sink's retry topic: it holds parked copies until they are due,
//! hands due ones to the sink's engine (which re-claims them under the version rule, so a newer
//! decision supersedes them, and parks or dead-letters them again if they still fail), and commits
//! the retry topic's offsets up to the first copy still held.
//!
//! Copies are held in memory, ordered by due time, because their delays differ (a copy parked for
//! the fifth time waits longer than one parked once) and a retry topic is read in offset order.
//! The hold is bounded: past `MAX_HELD` copies the consumer pauses its partitions until some are
//! done. Nothing held is lost on a crash: the retry topic is committed only past copies done.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rdkafka::consumer::Consumer;
use rdkafka::message::{Message as _, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use relay_events::ErrorCode;
use relay_ledger::Ledger;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{BatchConfig, KafkaConfig};
use crate::consumer::{
    create_consumer, unapplied, Closing, Committer, Prefetch, RelayContext, LAST_COMMIT_LIMIT,
};
use crate::decode::{Decoder, Rejected};
use crate::engine::{Abandoned, Engine};
use crate::message::{now_ms, Message, Origin};
use crate::telemetry::{Lane, Telemetry, Unapplied};
use crate::RuntimeError;

/// Copies held at most before the consumer stops fetching.
const MAX_HELD: usize = 10_000;

pub(crate) struct ParkedWorker<L> {
    pub kafka: KafkaConfig,
    pub engine: Arc<Engine<L>>,
    pub batch: BatchConfig,
    pub decoder: Decoder,
    pub exit_when_idle: Option<Duration>,
    pub telemetry: Telemetry,
}

/// One copy waiting for its due time.
struct Held {
    raw: OwnedMessage,
    message: Message,
    due_ms: i64,
}

/// The copies held, and per partition the offsets not yet done (held or in process), from which
/// the commit frontier follows.
#[derive(Default)]
struct Hold {
    by_due: BTreeMap<(i64, i32, i64), Held>,
    outstanding: BTreeMap<i32, BTreeSet<i64>>,
    /// Per partition, the offset after the last copy received.
    seen: BTreeMap<i32, i64>,
    /// Per partition, the last offset committed.
    committed: BTreeMap<i32, i64>,
}

impl Hold {
    fn insert(&mut self, held: Held) {
        let (p, o) = (held.raw.partition(), held.raw.offset());
        self.outstanding.entry(p).or_default().insert(o);
        let seen = self.seen.entry(p).or_insert(0);
        *seen = (*seen).max(o + 1);
        self.by_due.insert((held.due_ms, p, o), held);
    }

    /// Up to `max` copies due at `now`, oldest due first.
    fn take_due(&mut self, now: i64, max: usize) -> Vec<Held> {
        let keys: Vec<_> = self
            .by_due
            .range(..=(now, i32::MAX, i64::MAX))
            .take(max)
            .map(|(k, _)| *k)
            .collect();
        keys.iter().filter_map(|k| self.by_due.remove(k)).collect()
    }

    fn done(&mut self, copies: &[Held]) {
        for h in copies {
            if let Some(set) = self.outstanding.get_mut(&h.raw.partition()) {
                set.remove(&h.raw.offset());
            }
        }
    }

    /// Forgets partitions this member no longer owns: their copies are someone else's now.
    fn retain_partitions(&mut self, assigned: &BTreeSet<i32>) {
        self.by_due.retain(|(_, p, _), _| assigned.contains(p));
        self.outstanding.retain(|p, _| assigned.contains(p));
        self.seen.retain(|p, _| assigned.contains(p));
        self.committed.retain(|p, _| assigned.contains(p));
    }

    /// Per partition, the offset everything before which is done, where it moved since the last
    /// commit.
    fn frontier(&mut self, topic: &str) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (&p, &seen) in &self.seen {
            let next = self
                .outstanding
                .get(&p)
                .and_then(|s| s.first().copied())
                .unwrap_or(seen);
            if self.committed.get(&p) != Some(&next) {
                let _ = tpl.add_partition_offset(topic, p, Offset::Offset(next));
                self.committed.insert(p, next);
            }
        }
        tpl
    }

    fn next_due(&self) -> Option<i64> {
        self.by_due.keys().next().map(|(due, _, _)| *due)
    }

    /// Re-assertion copies are of decisions already applied: they are neither unapplied nor
    /// failing, and must not age the withdrawal SLO.
    fn unapplied(&self) -> Unapplied {
        let held: Vec<Message> = self
            .by_due
            .values()
            .filter(|h| !h.message.ticket.as_ref().is_some_and(|t| t.reassert))
            .map(|h| h.message.clone())
            .collect();
        unapplied(&held)
    }

    fn oldest_failure(&self) -> Option<SystemTime> {
        self.by_due
            .values()
            .filter_map(|h| h.message.ticket.as_ref())
            .filter(|t| !t.reassert)
            .map(|t| t.first_failed_ms)
            .min()
            .and_then(|ms| u64::try_from(ms).ok())
            .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
    }
}

impl<L: Ledger> ParkedWorker<L> {
    fn name(&self) -> &str {
        self.engine.name()
    }

    pub(crate) async fn run(self, shutdown: CancellationToken) -> Result<(), RuntimeError> {
        let topic = self.kafka.retry_topic(self.name());
        let group = self.kafka.parked_group_id(self.name());
        let context = RelayContext {
            sink: self.name().to_owned(),
            telemetry: self.telemetry.clone(),
            rebalanced: Arc::new(Notify::new()),
            reports_assignment: false,
            log_ends: None,
        };
        let member = format!("{}.parked", self.name());
        let consumer = Closing::new(create_consumer(
            &self.kafka,
            &group,
            &member,
            std::slice::from_ref(&topic),
            Prefetch::SIDE,
            context,
        )?);
        info!(sink = self.name(), group = %group, topic = %topic, "parked consumer started");
        let mut hold = Hold::default();
        let mut paused = false;
        let mut last_message = Instant::now();
        let mut last_commit = None;
        let mut abandoned = false;
        let committer = Committer::start(&consumer, self.name(), &self.telemetry);
        loop {
            self.report(&hold);
            let wait = match hold.next_due() {
                Some(due) => Duration::from_millis(u64::try_from(due - now_ms()).unwrap_or(0)),
                None => Duration::from_millis(500),
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                m = consumer.recv() => match m {
                    Ok(m) => {
                        last_message = Instant::now();
                        let m = m.detach();
                        match self.held(m, &shutdown).await {
                            Ok(held) => hold.insert(held),
                            Err(Abandoned) => break,
                        }
                    }
                    Err(e) => {
                        warn!(sink = self.name(), topic = %topic, error = %e, "kafka consumer error");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
                _ = tokio::time::sleep(wait) => {}
            }
            if let Ok(assignment) = consumer.assignment() {
                let assigned: BTreeSet<i32> = assignment
                    .elements()
                    .iter()
                    .map(|e| e.partition())
                    .collect();
                hold.retain_partitions(&assigned);
                // Past the bound, stop fetching (a paused member still polls, so it stays in the
                // group) until enough copies are done.
                let full = hold.by_due.len() >= MAX_HELD;
                if full != paused {
                    let result = if full {
                        consumer.pause(&assignment)
                    } else {
                        consumer.resume(&assignment)
                    };
                    match result {
                        Ok(()) => paused = full,
                        Err(e) => warn!(sink = self.name(), error = %e, "pausing the retry topic"),
                    }
                }
            }
            let due = hold.take_due(now_ms(), self.batch.max_events);
            if !due.is_empty() {
                let messages: Vec<Message> = due.iter().map(|h| h.message.clone()).collect();
                // The copies in process still wait for an outcome.
                let held = hold.unapplied();
                let in_process = unapplied(&messages);
                self.telemetry.set_unapplied(
                    self.name(),
                    Lane::Parked,
                    Unapplied {
                        any: held.any.into_iter().chain(in_process.any).min(),
                        withdrawal: held
                            .withdrawal
                            .into_iter()
                            .chain(in_process.withdrawal)
                            .min(),
                    },
                );
                match self.engine.process(&messages, &shutdown).await {
                    Ok(()) => hold.done(&due),
                    Err(Abandoned) => {
                        abandoned = true;
                        break;
                    }
                }
            }
            let frontier = hold.frontier(&topic);
            if last_commit.as_ref() != Some(&frontier) {
                committer.commit(frontier.clone());
                last_commit = Some(frontier);
            }
            // Copies not yet due do not keep a run alive: they are durable on the retry topic and
            // the next run takes them up.
            let nothing_due = hold.next_due().is_none_or(|due| due > now_ms());
            if self
                .exit_when_idle
                .is_some_and(|idle| last_message.elapsed() >= idle && nothing_due)
            {
                info!(
                    sink = self.name(),
                    waiting = hold.by_due.len(),
                    "parked consumer idle: exiting as asked; copies not yet due stay on the retry topic"
                );
                break;
            }
        }
        committer.finish(LAST_COMMIT_LIMIT).await;
        self.telemetry
            .set_unapplied(self.name(), Lane::Parked, Unapplied::default());
        self.telemetry.set_parked(self.name(), 0, None);
        info!(sink = self.name(), "parked consumer stopped");
        if abandoned {
            return Err(RuntimeError::Abandoned {
                sink: self.name().to_owned(),
                lane: "retry topic",
                batches: 1,
            });
        }
        Ok(())
    }

    fn report(&self, hold: &Hold) {
        self.telemetry
            .set_unapplied(self.name(), Lane::Parked, hold.unapplied());
        self.telemetry
            .set_parked(self.name(), hold.by_due.len(), hold.oldest_failure());
    }

    /// Turns a copy from the retry topic into a held message. A copy this version cannot read
    /// (headers missing, or written for another sink) is due at once and goes to the DLQ as such.
    async fn held(
        &self,
        raw: OwnedMessage,
        shutdown: &CancellationToken,
    ) -> Result<Held, Abandoned> {
        let payload = raw.payload().unwrap_or_default().to_vec();
        let key = raw.key().map(<[u8]>::to_vec);
        let copy = crate::parking::read(&raw).and_then(|c| {
            if c.sink == self.name() {
                Ok(c)
            } else {
                Err(format!("parked copy is for sink {:?}", c.sink))
            }
        });
        let held = match copy {
            Ok(copy) => {
                let decoded = self.decoder.decode_patiently(&payload, shutdown).await?;
                let due_ms = copy.ticket.due_ms;
                Held {
                    message: Message {
                        origin: copy.origin,
                        key,
                        payload,
                        produced_at: copy.produced_at,
                        decoded,
                        replay_for: None,
                        ticket: Some(copy.ticket),
                    },
                    due_ms,
                    raw,
                }
            }
            Err(reason) => Held {
                message: Message {
                    origin: Origin {
                        topic: raw.topic().to_owned(),
                        partition: raw.partition(),
                        offset: raw.offset(),
                    },
                    key,
                    payload,
                    produced_at: crate::lag::produced_at(&raw),
                    decoded: Err(Rejected {
                        code: ErrorCode::InvalidParkedCopy,
                        message: reason,
                        event_id: None,
                        subject_id: None,
                    }),
                    replay_for: None,
                    ticket: None,
                },
                due_ms: 0,
                raw,
            },
        };
        Ok(held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Timestamp;

    fn held(partition: i32, offset: i64, due_ms: i64) -> Held {
        let raw = OwnedMessage::new(
            None,
            None,
            "retry".to_owned(),
            Timestamp::NotAvailable,
            partition,
            offset,
            None,
        );
        Held {
            message: Message {
                origin: Origin {
                    topic: "src".to_owned(),
                    partition,
                    offset,
                },
                key: None,
                payload: Vec::new(),
                produced_at: None,
                decoded: Err(Rejected {
                    code: ErrorCode::Undecodable,
                    message: String::new(),
                    event_id: None,
                    subject_id: None,
                }),
                replay_for: None,
                ticket: None,
            },
            due_ms,
            raw,
        }
    }

    fn offsets(tpl: &TopicPartitionList) -> Vec<(i32, i64)> {
        tpl.elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => (e.partition(), o),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn the_frontier_stops_at_the_first_copy_not_done_and_moves_only_forward() {
        let mut hold = Hold::default();
        hold.insert(held(0, 10, 500));
        hold.insert(held(0, 11, 100));
        hold.insert(held(0, 12, 300));
        hold.insert(held(1, 4, 100));
        // Nothing done: commit the first offset of each partition (nothing past it).
        assert_eq!(offsets(&hold.frontier("retry")), [(0, 10), (1, 4)]);
        assert!(
            hold.frontier("retry").count() == 0,
            "unchanged: nothing to commit"
        );

        // Due at 300: offsets 11 and 12 of partition 0, and partition 1's only copy.
        let due = hold.take_due(300, 10);
        let mut taken: Vec<(i32, i64)> = due
            .iter()
            .map(|h| (h.raw.partition(), h.raw.offset()))
            .collect();
        taken.sort_unstable();
        assert_eq!(taken, [(0, 11), (0, 12), (1, 4)]);
        hold.done(&due);
        // Partition 0 still waits for offset 10 (due later): its frontier does not move.
        assert_eq!(offsets(&hold.frontier("retry")), [(1, 5)]);
        let rest = hold.take_due(500, 10);
        hold.done(&rest);
        assert_eq!(offsets(&hold.frontier("retry")), [(0, 13)]);
        assert_eq!(hold.next_due(), None);
    }

    #[test]
    fn copies_of_partitions_handed_to_another_member_are_forgotten() {
        let mut hold = Hold::default();
        hold.insert(held(0, 1, 100));
        hold.insert(held(1, 1, 100));
        hold.retain_partitions(&BTreeSet::from([1]));
        let due = hold.take_due(100, 10);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].raw.partition(), 1);
    }
}
