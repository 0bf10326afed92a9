//! Metrics and readiness. The metrics are rendered in the Prometheus text format by hand: a few
//! counters, gauges and histograms do not need a registry crate, and every metric is declared up
//! front so `/metrics` lists it (`# HELP`/`# TYPE`) even before its first sample.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use relay_delivery::{LatencyHistogram, Sink, LATENCY_BUCKETS};

/// Every metric the relay exports: name, type, help. The deploy artefacts (alerts, dashboard) may
/// reference only these; a test checks that.
pub const METRICS: &[(&str, &str, &str)] = &[
    (
        "consent_relay_consumer_lag_messages",
        "gauge",
        "Log end offset minus committed offset, per assigned partition.",
    ),
    (
        "consent_relay_oldest_unapplied_age_seconds",
        "gauge",
        "Age of the oldest consumed event whose outcome is not yet durable (0 when idle).",
    ),
    (
        "consent_relay_events_total",
        "counter",
        "Events by outcome at a sink.",
    ),
    (
        "consent_relay_retries_total",
        "counter",
        "Delivery retries by class (retryable, refused).",
    ),
    (
        "consent_relay_dlq_messages_total",
        "counter",
        "Messages written to the dead-letter topic, by error code.",
    ),
    (
        "consent_relay_circuit_open",
        "gauge",
        "1 while the sink's destination refuses us (401/403/410/426) and consumption is paused.",
    ),
    (
        "consent_relay_rate_limit_wait_seconds_total",
        "counter",
        "Time requests waited for a rate-limit permit or a Retry-After pause.",
    ),
    (
        "consent_relay_downstream_request_duration_seconds",
        "histogram",
        "Downstream HTTP request latency by status class.",
    ),
    (
        "consent_relay_ledger_transaction_duration_seconds",
        "histogram",
        "Ledger transaction latency by operation.",
    ),
    (
        "consent_relay_rebalances_total",
        "counter",
        "Consumer group rebalances (assignments and revocations).",
    ),
    (
        "consent_relay_commits_total",
        "counter",
        "Offset commits after a durable batch.",
    ),
];

type Labels = Vec<(&'static str, String)>;
type Histogram = LatencyHistogram;

#[derive(Debug, Default)]
struct Samples {
    values: BTreeMap<(&'static str, Labels), f64>,
    histograms: BTreeMap<(&'static str, Labels), Histogram>,
}

/// Why a sink is not ready.
#[derive(Debug, Clone, Default)]
struct SinkHealth {
    assigned: bool,
    circuit: Option<String>,
    ledger_error: Option<String>,
}

/// The shared telemetry of one process: metrics and the readiness of each sink.
#[derive(Default, Clone)]
pub struct Telemetry {
    samples: Arc<Mutex<Samples>>,
    health: Arc<Mutex<BTreeMap<String, SinkHealth>>>,
    sinks: Arc<Mutex<Vec<Arc<dyn Sink>>>>,
    /// Per sink: when the oldest event of the batch in flight was produced.
    oldest_unapplied: Arc<Mutex<BTreeMap<String, SystemTime>>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Telemetry {
    pub fn new() -> Telemetry {
        Telemetry::default()
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

    /// Marks when the oldest not-yet-durable event of `sink` was produced; `None` when idle.
    pub(crate) fn set_oldest_unapplied(&self, sink: &str, produced_at: Option<SystemTime>) {
        let mut map = self.oldest_unapplied.lock().expect("oldest lock poisoned");
        match produced_at {
            Some(t) => map.insert(sink.to_owned(), t),
            None => map.remove(sink),
        };
    }

    pub(crate) fn set_assigned(&self, sink: &str, assigned: bool) {
        self.with_health(sink, |h| h.assigned = assigned);
    }

    pub(crate) fn set_circuit(&self, sink: &str, reason: Option<&str>) {
        self.set(
            "consent_relay_circuit_open",
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

    /// Ready when every sink has partitions, reached its ledger, and has no open circuit.
    /// Otherwise the reasons, one per line.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let health = self.health.lock().expect("health lock poisoned");
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
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
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
                "consent_relay_rate_limit_wait_seconds_total",
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
        let ages: Vec<(String, f64)> = {
            let oldest = self.oldest_unapplied.lock().expect("oldest lock poisoned");
            sinks
                .iter()
                .map(|s| {
                    let age = oldest.get(s.name()).map_or(0.0, |t| {
                        now.duration_since(*t).unwrap_or_default().as_secs_f64()
                    });
                    (s.name().to_owned(), age)
                })
                .collect()
        };
        for (sink, age) in ages {
            self.set(
                "consent_relay_oldest_unapplied_age_seconds",
                vec![("sink", sink)],
                age,
            );
        }

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
                if *name == "consent_relay_downstream_request_duration_seconds" {
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
