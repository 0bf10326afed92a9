//! Metrics and readiness. The metrics are rendered in the Prometheus text format by hand: a few
//! counters, gauges and histograms do not need a registry crate, and every metric is declared up
//! front so `/metrics` lists it (`# HELP`/`# TYPE`) even before its first sample.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use relay_delivery::{LatencyHistogram, Sink, LATENCY_BUCKETS};

use crate::config::LivenessConfig;

/// The names of every metric the relay exports. Code uses these constants, never a spelled-out
/// name, so that a misspelt metric is a compile error rather than a silently missing series.
pub mod metric {
    pub const CONSUMER_LAG: &str = "consent_relay_consumer_lag_messages";
    pub const OLDEST_UNAPPLIED_AGE: &str = "consent_relay_oldest_unapplied_age_seconds";
    pub const OLDEST_UNAPPLIED_WITHDRAWAL_AGE: &str =
        "consent_relay_oldest_unapplied_withdrawal_age_seconds";
    pub const WITHDRAWAL_SLO: &str = "consent_relay_withdrawal_slo_seconds";
    pub const STALLED: &str = "consent_relay_stalled_seconds";
    pub const DESTINATION_PAUSED: &str = "consent_relay_destination_paused";
    pub const PARKED_ITEMS: &str = "consent_relay_parked_items";
    pub const PARKED_OLDEST_AGE: &str = "consent_relay_parked_oldest_age_seconds";
    pub const PARKED_ITEMS_TOTAL: &str = "consent_relay_parked_items_total";
    pub const EVENTS: &str = "consent_relay_events_total";
    pub const RETRIES: &str = "consent_relay_retries_total";
    pub const DLQ_MESSAGES: &str = "consent_relay_dlq_messages_total";
    pub const CIRCUIT_OPEN: &str = "consent_relay_circuit_open";
    pub const RATE_LIMIT_WAIT: &str = "consent_relay_rate_limit_wait_seconds_total";
    pub const DOWNSTREAM_REQUEST_DURATION: &str =
        "consent_relay_downstream_request_duration_seconds";
    pub const LEDGER_TRANSACTION_DURATION: &str =
        "consent_relay_ledger_transaction_duration_seconds";
    pub const REBALANCES: &str = "consent_relay_rebalances_total";
    pub const COMMITS: &str = "consent_relay_commits_total";
    pub const LOOKAHEAD_WITHDRAWALS: &str = "consent_relay_lookahead_withdrawals_total";
    pub const RECONCILE_SUBJECTS: &str = "consent_relay_reconcile_subjects_total";
    pub const RECONCILE_REQUESTS: &str = "consent_relay_reconcile_requests_total";
    pub const RECONCILE_LAST_FINISHED: &str =
        "consent_relay_reconcile_last_finished_timestamp_seconds";
    pub const UNKNOWN_OUTCOMES: &str = "consent_relay_unknown_outcomes_total";
    pub const REASSERTIONS: &str = "consent_relay_reassertions_total";
}

/// Every metric the relay exports: name, type, help. The deploy artefacts (alerts, dashboard) may
/// reference only these; a test checks that.
pub const METRICS: &[(&str, &str, &str)] = &[
    (
        metric::RECONCILE_SUBJECTS,
        "counter",
        "Reconcile figures per destination: (subject, purpose) pairs checked, in sync, repaired, reported (a grant the downstream does not show, left alone), failed.",
    ),
    (
        metric::RECONCILE_REQUESTS,
        "counter",
        "Requests reconcile sent to a downstream, reads and repairs, per destination.",
    ),
    (
        metric::RECONCILE_LAST_FINISHED,
        "gauge",
        "When each scheduled reconcile of `run` last finished (Unix seconds, kept in the ledger across restarts); alert when it falls behind its interval.",
    ),
    (
        metric::UNKNOWN_OUTCOMES,
        "counter",
        "Requests whose fate is unknown (timed out, or the connection broke after they were written): the downstream may still apply them.",
    ),
    (
        metric::REASSERTIONS,
        "counter",
        "Re-assertions of a person's newest decision after a request of unknown fate, by stage: scheduled (a copy waits on the retry topic until the late request can no longer land), sent (the decision went again), skipped (a newer decision is re-asserted instead).",
    ),
    (
        metric::LOOKAHEAD_WITHDRAWALS,
        "counter",
        "Withdrawals, unsubscribes and erasures applied ahead of their partition's backlog by the lookahead.",
    ),
    (
        metric::CONSUMER_LAG,
        "gauge",
        "Log end offset minus committed offset, per assigned partition.",
    ),
    (
        metric::OLDEST_UNAPPLIED_AGE,
        "gauge",
        "Age of the oldest consumed event whose outcome is not yet durable, parked ones included (0 when idle).",
    ),
    (
        metric::OLDEST_UNAPPLIED_WITHDRAWAL_AGE,
        "gauge",
        "Age of the oldest consumed withdrawal, unsubscribe or erasure without a durable outcome, parked ones included (0 when none).",
    ),
    (
        metric::WITHDRAWAL_SLO,
        "gauge",
        "The configured age a withdrawal may reach without an outcome (liveness.withdrawal_slo_ms).",
    ),
    (
        metric::STALLED,
        "gauge",
        "Seconds since the sink last made progress, while it has lag or work in flight (0 otherwise).",
    ),
    (
        metric::DESTINATION_PAUSED,
        "gauge",
        "1 while the sink waits for its destination (unavailable, rate-limited, refusing us, or failing every request).",
    ),
    (
        metric::PARKED_ITEMS,
        "gauge",
        "Parked copies the sink's parked consumer holds, waiting for their next attempt.",
    ),
    (
        metric::PARKED_OLDEST_AGE,
        "gauge",
        "Time since the first failure of the oldest parked copy held (0 when none).",
    ),
    (
        metric::PARKED_ITEMS_TOTAL,
        "counter",
        "Items parked on the retry topic after their inline retry budget was spent.",
    ),
    (metric::EVENTS, "counter", "Events by outcome at a sink."),
    (
        metric::RETRIES,
        "counter",
        "Delivery retries by class (retryable, unavailable, unknown, refused).",
    ),
    (
        metric::DLQ_MESSAGES,
        "counter",
        "Messages written to the dead-letter topic, by error code.",
    ),
    (
        metric::CIRCUIT_OPEN,
        "gauge",
        "1 while the sink's destination refuses us (3xx/401/403/410/426) and consumption is paused.",
    ),
    (
        metric::RATE_LIMIT_WAIT,
        "counter",
        "Time requests waited for a rate-limit permit or a Retry-After pause.",
    ),
    (
        metric::DOWNSTREAM_REQUEST_DURATION,
        "histogram",
        "Downstream HTTP request latency by status class.",
    ),
    (
        metric::LEDGER_TRANSACTION_DURATION,
        "histogram",
        "Ledger transaction latency by operation.",
    ),
    (
        metric::REBALANCES,
        "counter",
        "Consumer group rebalances (assignments and revocations).",
    ),
    (
        metric::COMMITS,
        "counter",
        "Offset commits the broker acknowledged, after a durable batch.",
    ),
];

type Labels = Vec<(&'static str, String)>;
type Histogram = LatencyHistogram;

#[derive(Debug, Default)]
struct Samples {
    values: BTreeMap<(&'static str, Labels), f64>,
    histograms: BTreeMap<(&'static str, Labels), Histogram>,
}

/// What readiness and the liveness gauges know of one sink.
#[derive(Debug, Clone)]
struct SinkHealth {
    assigned: bool,
    circuit: Option<String>,
    ledger_error: Option<String>,
    /// Since when, and why, the sink waits for its destination.
    paused: Option<(Instant, String)>,
    last_progress: Instant,
    /// Per lane (source, parked): when the oldest event without a durable outcome and the oldest
    /// such withdrawal were produced.
    unapplied: BTreeMap<Lane, Unapplied>,
    /// Parked copies held, and when the oldest of them first failed.
    parked: (usize, Option<SystemTime>),
}

impl Default for SinkHealth {
    fn default() -> Self {
        SinkHealth {
            assigned: false,
            circuit: None,
            ledger_error: None,
            paused: None,
            last_progress: Instant::now(),
            unapplied: BTreeMap::new(),
            parked: (0, None),
        }
    }
}

/// Where a sink's unapplied events wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Lane {
    /// The batch in flight from the source topics.
    Source,
    /// Copies held by the parked consumer.
    Parked,
}

/// When the oldest unapplied event, and the oldest unapplied withdrawal, of a lane were produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Unapplied {
    pub any: Option<SystemTime>,
    pub withdrawal: Option<SystemTime>,
}

/// The shared telemetry of one process: metrics and the readiness of each sink.
#[derive(Default, Clone)]
pub struct Telemetry {
    samples: Arc<Mutex<Samples>>,
    health: Arc<Mutex<BTreeMap<String, SinkHealth>>>,
    sinks: Arc<Mutex<Vec<Arc<dyn Sink>>>>,
    liveness: Arc<Mutex<LivenessConfig>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

/// One sink's progress: events by outcome so far, and its consumer lag.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    pub events: BTreeMap<String, u64>,
    pub lag: i64,
}

/// What happened at each sink between two [`Telemetry::progress`] readings: (sink, events, lag,
/// `outcome=n` pairs). A sink that handled nothing and has no lag is left out: an idle relay
/// stays quiet.
pub(crate) fn progress_lines(
    before: &BTreeMap<String, Progress>,
    now: &BTreeMap<String, Progress>,
) -> Vec<(String, u64, i64, String)> {
    let mut lines = Vec::new();
    for (sink, p) in now {
        let earlier = before.get(sink);
        let delta: Vec<(&str, u64)> = p
            .events
            .iter()
            .map(|(outcome, n)| {
                let was = earlier
                    .and_then(|e| e.events.get(outcome))
                    .copied()
                    .unwrap_or(0);
                (outcome.as_str(), n.saturating_sub(was))
            })
            .filter(|(_, d)| *d > 0)
            .collect();
        let events: u64 = delta.iter().map(|(_, d)| d).sum();
        if events == 0 && p.lag <= 0 {
            continue;
        }
        let outcomes = crate::log_fields::counts(delta.iter().map(|(o, d)| (*o, *d)));
        lines.push((sink.clone(), events, p.lag, outcomes));
    }
    lines
}

impl Telemetry {
    pub fn new() -> Telemetry {
        Telemetry::default()
    }

    /// Adds to a reconcile figure (`checked`, `in_sync`, `repaired`, `reported`, `failed`) of
    /// `sink` (a destination name).
    pub fn reconciled(&self, sink: &str, figure: &'static str, by: u64) {
        self.add(
            metric::RECONCILE_SUBJECTS,
            vec![("sink", sink.to_owned()), ("result", figure.to_owned())],
            by as f64,
        );
    }

    /// Counts requests reconcile sent to `sink`'s downstream.
    pub fn reconcile_requests(&self, sink: &str, by: u64) {
        self.add(
            metric::RECONCILE_REQUESTS,
            vec![("sink", sink.to_owned())],
            by as f64,
        );
    }

    /// Records when the scheduled reconcile `name` last finished (ms since the epoch).
    pub fn reconcile_finished(&self, name: &str, at_ms: i64) {
        self.set(
            metric::RECONCILE_LAST_FINISHED,
            vec![("reconcile", name.to_owned())],
            at_ms as f64 / 1000.0,
        );
    }

    /// Sets what counts as stalled (the default until then: `LivenessConfig::default()`).
    pub fn set_liveness(&self, liveness: LivenessConfig) {
        *self.liveness.lock().expect("liveness lock poisoned") = liveness;
    }

    fn samples(&self) -> std::sync::MutexGuard<'_, Samples> {
        self.samples.lock().expect("metrics lock poisoned")
    }

    pub(crate) fn register_sink(&self, sink: Arc<dyn Sink>) {
        self.health
            .lock()
            .expect("health lock poisoned")
            .insert(sink.name().to_owned(), SinkHealth::default());
        self.sinks.lock().expect("sinks lock poisoned").push(sink);
    }

    pub(crate) fn add(&self, name: &'static str, labels: Labels, by: f64) {
        *self.samples().values.entry((name, labels)).or_insert(0.0) += by;
    }

    pub(crate) fn set(&self, name: &'static str, labels: Labels, value: f64) {
        self.samples().values.insert((name, labels), value);
    }

    /// Drops the samples of `name` whose labels match `keep == false`, e.g. partitions no longer
    /// assigned: a stale lag is worse than none.
    pub(crate) fn retain(&self, name: &'static str, keep: impl Fn(&Labels) -> bool) {
        self.samples()
            .values
            .retain(|(n, labels), _| *n != name || keep(labels));
    }

    pub(crate) fn observe(&self, name: &'static str, labels: Labels, duration: Duration) {
        self.samples()
            .histograms
            .entry((name, labels))
            .or_default()
            .observe(duration.as_secs_f64());
    }

    /// Marks what of `sink` waits in `lane` without a durable outcome (`Unapplied::default()` when
    /// nothing does).
    pub(crate) fn set_unapplied(&self, sink: &str, lane: Lane, unapplied: Unapplied) {
        self.with_health(sink, |h| {
            h.unapplied.insert(lane, unapplied);
        });
    }

    /// Records the parked copies `sink` holds and when the oldest of them first failed.
    pub(crate) fn set_parked(&self, sink: &str, held: usize, oldest_failure: Option<SystemTime>) {
        self.with_health(sink, |h| h.parked = (held, oldest_failure));
    }

    /// A batch of `sink` became durable: it made progress.
    pub(crate) fn progressed(&self, sink: &str) {
        self.with_health(sink, |h| h.last_progress = Instant::now());
    }

    /// Marks `sink` as waiting for its destination, or not (`None`).
    pub(crate) fn set_paused(&self, sink: &str, reason: Option<&str>) {
        self.set(
            metric::DESTINATION_PAUSED,
            vec![("sink", sink.to_owned())],
            f64::from(u8::from(reason.is_some())),
        );
        self.with_health(sink, |h| match reason {
            None => h.paused = None,
            Some(reason) => match &mut h.paused {
                Some((_, r)) => reason.clone_into(r),
                None => h.paused = Some((Instant::now(), reason.to_owned())),
            },
        });
    }

    pub(crate) fn set_assigned(&self, sink: &str, assigned: bool) {
        self.with_health(sink, |h| h.assigned = assigned);
    }

    pub(crate) fn set_circuit(&self, sink: &str, reason: Option<&str>) {
        self.set(
            metric::CIRCUIT_OPEN,
            vec![("sink", sink.to_owned())],
            f64::from(u8::from(reason.is_some())),
        );
        self.with_health(sink, |h| h.circuit = reason.map(str::to_owned));
    }

    pub(crate) fn set_ledger_error(&self, sink: &str, error: Option<String>) {
        self.with_health(sink, |h| h.ledger_error = error);
    }

    fn with_health(&self, sink: &str, f: impl FnOnce(&mut SinkHealth)) {
        let mut health = self.health.lock().expect("health lock poisoned");
        f(health.entry(sink.to_owned()).or_default());
    }

    /// Ready when every sink has partitions, reached its ledger, has no open circuit, has not
    /// waited for its destination or made no progress for `stall_after_ms`, and holds no
    /// withdrawal older than the SLO. Otherwise the reasons, one per line.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let liveness = self
            .liveness
            .lock()
            .expect("liveness lock poisoned")
            .clone();
        let lag = self.lag_by_sink();
        let health = self.health.lock().expect("health lock poisoned");
        let stall_after = Duration::from_millis(liveness.stall_after_ms);
        let slo = Duration::from_millis(liveness.withdrawal_slo_ms);
        let now = SystemTime::now();
        let mut reasons = Vec::new();
        if health.is_empty() {
            reasons.push("no sink is running".to_owned());
        }
        for (sink, h) in health.iter() {
            if !h.assigned {
                reasons.push(format!("{sink}: no partitions assigned yet"));
            }
            if let Some(c) = &h.circuit {
                reasons.push(format!("{sink}: circuit open: {c}"));
            }
            if let Some(e) = &h.ledger_error {
                reasons.push(format!("{sink}: ledger unreachable: {e}"));
            }
            match &h.paused {
                Some((since, why)) if h.circuit.is_none() && since.elapsed() >= stall_after => {
                    reasons.push(format!(
                        "{sink}: destination paused for {}s: {why}",
                        since.elapsed().as_secs()
                    ))
                }
                _ => {}
            }
            let stalled = stalled_for(h, lag.get(sink).copied().unwrap_or(0));
            if h.paused.is_none() && stalled >= stall_after {
                reasons.push(format!(
                    "{sink}: stalled: no progress for {}s while it has work",
                    stalled.as_secs()
                ));
            }
            let oldest = oldest_withdrawal(h);
            if let Some(age) = oldest.and_then(|t| now.duration_since(t).ok()) {
                if age > slo {
                    reasons.push(format!(
                        "{sink}: a withdrawal has waited {}s without an outcome (SLO {}s)",
                        age.as_secs(),
                        slo.as_secs()
                    ));
                }
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }

    /// Per sink: events by outcome so far, and its consumer lag now (the periodic progress line).
    pub(crate) fn progress(&self) -> BTreeMap<String, Progress> {
        let lag = self.lag_by_sink();
        let mut out: BTreeMap<String, Progress> = BTreeMap::new();
        for ((name, labels), v) in &self.samples().values {
            if *name != metric::EVENTS {
                continue;
            }
            let label = |k: &str| labels.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
            if let (Some(sink), Some(outcome)) = (label("sink"), label("outcome")) {
                *out.entry(sink)
                    .or_default()
                    .events
                    .entry(outcome)
                    .or_default() += *v as u64;
            }
        }
        for (sink, lag) in lag {
            out.entry(sink).or_default().lag = lag;
        }
        out
    }

    /// Total consumer lag per sink, from the lag gauges.
    fn lag_by_sink(&self) -> BTreeMap<String, i64> {
        let mut out = BTreeMap::new();
        for ((name, labels), v) in &self.samples().values {
            if *name != metric::CONSUMER_LAG {
                continue;
            }
            if let Some((_, sink)) = labels.iter().find(|(k, _)| *k == "sink") {
                *out.entry(sink.clone()).or_insert(0) += *v as i64;
            }
        }
        out
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        // Destination statistics live in the sinks' HTTP fronts; fold them in at scrape time.
        let sinks = self.sinks.lock().expect("sinks lock poisoned").clone();
        for sink in &sinks {
            let mut wait = Duration::ZERO;
            for d in sink.destinations() {
                wait += d.stats().rate_limit_wait;
            }
            self.set(
                metric::RATE_LIMIT_WAIT,
                vec![("sink", sink.name().to_owned())],
                wait.as_secs_f64(),
            );
        }
        let mut latency: BTreeMap<(String, &'static str), Histogram> = BTreeMap::new();
        for sink in &sinks {
            for d in sink.destinations() {
                for (class, h) in d.latency() {
                    latency
                        .entry((sink.name().to_owned(), class))
                        .or_default()
                        .merge(&h);
                }
            }
        }

        let now = SystemTime::now();
        let age = |t: Option<SystemTime>| {
            t.map_or(0.0, |t| {
                now.duration_since(t).unwrap_or_default().as_secs_f64()
            })
        };
        let lag = self.lag_by_sink();
        let gauges: Vec<(String, [(&'static str, f64); 5])> = {
            let health = self.health.lock().expect("health lock poisoned");
            health
                .iter()
                .map(|(sink, h)| {
                    let oldest_any = h.unapplied.values().filter_map(|u| u.any).min();
                    let stalled = stalled_for(h, lag.get(sink).copied().unwrap_or(0));
                    (
                        sink.clone(),
                        [
                            (metric::OLDEST_UNAPPLIED_AGE, age(oldest_any)),
                            (
                                metric::OLDEST_UNAPPLIED_WITHDRAWAL_AGE,
                                age(oldest_withdrawal(h)),
                            ),
                            (metric::STALLED, stalled.as_secs_f64()),
                            (metric::PARKED_ITEMS, h.parked.0 as f64),
                            (metric::PARKED_OLDEST_AGE, age(h.parked.1)),
                        ],
                    )
                })
                .collect()
        };
        for (sink, values) in gauges {
            for (name, value) in values {
                self.set(name, vec![("sink", sink.clone())], value);
            }
        }
        let slo = self
            .liveness
            .lock()
            .expect("liveness lock poisoned")
            .withdrawal_slo_ms;
        self.set(metric::WITHDRAWAL_SLO, vec![], slo as f64 / 1000.0);

        let samples = self.samples();
        let mut out = String::new();
        for (name, kind, help) in METRICS {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            if *kind == "histogram" {
                let mut series: Vec<(Labels, Histogram)> = samples
                    .histograms
                    .iter()
                    .filter(|((n, _), _)| n == name)
                    .map(|((_, l), h)| (l.clone(), h.clone()))
                    .collect();
                if *name == metric::DOWNSTREAM_REQUEST_DURATION {
                    series.extend(latency.iter().map(|((sink, class), h)| {
                        (
                            vec![
                                ("sink", sink.clone()),
                                ("status_class", (*class).to_owned()),
                            ],
                            h.clone(),
                        )
                    }));
                }
                for (labels, h) in series {
                    for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
                        let mut l = labels.clone();
                        l.push(("le", bound.to_string()));
                        let _ = writeln!(
                            out,
                            "{name}_bucket{} {}",
                            fmt_labels(&l),
                            h.buckets.get(i).copied().unwrap_or(0)
                        );
                    }
                    let mut l = labels.clone();
                    l.push(("le", "+Inf".to_owned()));
                    let _ = writeln!(out, "{name}_bucket{} {}", fmt_labels(&l), h.count);
                    let _ = writeln!(out, "{name}_sum{} {}", fmt_labels(&labels), h.sum);
                    let _ = writeln!(out, "{name}_count{} {}", fmt_labels(&labels), h.count);
                }
            } else {
                for ((_, labels), v) in samples.values.iter().filter(|((n, _), _)| n == name) {
                    let _ = writeln!(out, "{name}{} {v}", fmt_labels(labels));
                }
            }
        }
        out
    }
}

/// How long a sink has made no progress while it has work: lag, or a batch in flight. Parked copies
/// waiting for their due time are not work yet.
fn stalled_for(h: &SinkHealth, lag: i64) -> Duration {
    let in_flight = h
        .unapplied
        .get(&Lane::Source)
        .is_some_and(|u| u.any.is_some());
    let has_work = lag > 0 || in_flight;
    if has_work {
        h.last_progress.elapsed()
    } else {
        Duration::ZERO
    }
}

fn oldest_withdrawal(h: &SinkHealth) -> Option<SystemTime> {
    h.unapplied.values().filter_map(|u| u.withdrawal).min()
}

fn fmt_labels(labels: &Labels) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_declared_even_without_samples() {
        let text = Telemetry::new().render();
        for (name, kind, _) in METRICS {
            assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{name}");
        }
    }

    #[test]
    fn samples_render_with_escaped_labels_and_stale_ones_go() {
        let t = Telemetry::new();
        let lag = |p: &str| {
            vec![
                ("sink", "hubspot".to_owned()),
                ("topic", "t\"x".to_owned()),
                ("partition", p.to_owned()),
            ]
        };
        t.set("consent_relay_consumer_lag_messages", lag("0"), 5.0);
        t.set("consent_relay_consumer_lag_messages", lag("1"), 7.0);
        t.add(
            "consent_relay_events_total",
            vec![("sink", "hubspot".into()), ("outcome", "applied".into())],
            2.0,
        );
        t.add(
            "consent_relay_events_total",
            vec![("sink", "hubspot".into()), ("outcome", "applied".into())],
            1.0,
        );
        t.retain("consent_relay_consumer_lag_messages", |l| {
            l.iter().any(|(k, v)| *k == "partition" && v == "1")
        });
        let text = t.render();
        assert!(!text.contains("partition=\"0\""), "{text}");
        assert!(text.contains("consent_relay_consumer_lag_messages{sink=\"hubspot\",topic=\"t\\\"x\",partition=\"1\"} 7\n"), "{text}");
        assert!(
            text.contains("consent_relay_events_total{sink=\"hubspot\",outcome=\"applied\"} 3\n"),
            "{text}"
        );
    }

    #[test]
    fn histograms_are_cumulative() {
        let t = Telemetry::new();
        let l = || vec![("op", "claim".to_owned())];
        t.observe(
            "consent_relay_ledger_transaction_duration_seconds",
            l(),
            Duration::from_millis(3),
        );
        t.observe(
            "consent_relay_ledger_transaction_duration_seconds",
            l(),
            Duration::from_millis(300),
        );
        let text = t.render();
        assert!(text.contains("consent_relay_ledger_transaction_duration_seconds_bucket{op=\"claim\",le=\"0.005\"} 1\n"), "{text}");
        assert!(text.contains("consent_relay_ledger_transaction_duration_seconds_bucket{op=\"claim\",le=\"0.5\"} 2\n"), "{text}");
        assert!(text.contains("consent_relay_ledger_transaction_duration_seconds_bucket{op=\"claim\",le=\"+Inf\"} 2\n"), "{text}");
        assert!(
            text.contains(
                "consent_relay_ledger_transaction_duration_seconds_count{op=\"claim\"} 2\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn the_progress_line_says_what_each_busy_sink_did_and_nothing_for_an_idle_one() {
        let t = Telemetry::new();
        let count = |sink: &str, outcome: &str, n: f64| {
            t.add(
                metric::EVENTS,
                vec![("sink", sink.to_owned()), ("outcome", outcome.to_owned())],
                n,
            )
        };
        count("hubspot", "applied", 10.0);
        count("idle", "applied", 3.0);
        let before = t.progress();
        count("hubspot", "applied", 5.0);
        count("hubspot", "superseded", 2.0);
        t.set(
            metric::CONSUMER_LAG,
            vec![
                ("sink", "lagging".to_owned()),
                ("topic", "t".to_owned()),
                ("partition", "0".to_owned()),
            ],
            40.0,
        );
        let lines = progress_lines(&before, &t.progress());
        assert_eq!(
            lines,
            [
                (
                    "hubspot".to_owned(),
                    7,
                    0,
                    "applied=5 superseded=2".to_owned()
                ),
                ("lagging".to_owned(), 0, 40, String::new()),
            ]
        );
    }

    #[test]
    fn readiness_lists_every_reason() {
        let t = Telemetry::new();
        assert!(t.readiness().is_err(), "no sink yet");
        t.set_assigned("hubspot", true);
        assert!(t.readiness().is_ok());
        t.set_circuit("hubspot", Some("HTTP 401: bad token"));
        let reasons = t.readiness().unwrap_err();
        assert_eq!(
            reasons,
            vec!["hubspot: circuit open: HTTP 401: bad token".to_owned()]
        );
    }
}
