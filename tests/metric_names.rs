//! Every metric name the repository mentions is one the relay exports: the alert rules, the
//! dashboard, every document, and the code that records samples. A misspelt name in
//! `Telemetry::add` or in an alert would otherwise just never show a value. What is exported is
//! relay-runtime's `METRICS` (every one rendered even without samples, tested in telemetry.rs)
//! and `ingest`'s counters; `the_binary_relays_exports_metrics_and_leaks_no_pii` checks the alerts
//! and the dashboard against a running relay's `/metrics` as well.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const PREFIX: &str = "consent_relay_";

/// The exported names, histograms with their series suffixes.
fn exported() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (name, kind, _) in relay_runtime::METRICS {
        names.insert((*name).to_owned());
        if *kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names.extend(
        relay_ingest::metrics::METRICS
            .iter()
            .map(|(n, _)| (*n).to_owned()),
    );
    names
}

/// The `consent_relay_*` names in `text`. A bare prefix or one followed by `*` or `…` stands for
/// a family of names ("`consent_relay_ingest_*`"), not a name; one followed by `::` is a crate.
fn mentioned(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find(PREFIX) {
        let tail = &rest[at..];
        let len = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..len];
        let next = tail[len..].chars().next();
        let preceded_by_word = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        // `consent_relay_ingest_{received,…}_total` names several: each is checked. A `{x}` of
        // one name (a `format!` placeholder) is a family, not a list, and skipped.
        let list = tail[len..]
            .find(['}', '\n'])
            .filter(|&close| close > 0 && tail.as_bytes()[len + close] == b'}')
            .filter(|&close| tail[len + 1..len + close].contains(','))
            .filter(|&close| {
                tail[len + 1..len + close]
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_,… .".contains(c))
            });
        if name.ends_with('_') && tail[len..].starts_with('{') && !preceded_by_word {
            if let Some(close) = list {
                let after = &tail[len + close + 1..];
                let suffix_len = after
                    .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                    .unwrap_or(after.len());
                let suffix = &after[..suffix_len];
                for part in tail[len + 1..len + close].split(',') {
                    let part = part.trim();
                    if !part.is_empty() && part != "…" && part != "..." {
                        names.insert(format!("{name}{part}{suffix}"));
                    }
                }
            }
        } else if name.len() > PREFIX.len()
            && !name.ends_with('_')
            && !matches!(next, Some('*' | '…'))
            && !tail[len..].starts_with("::")
            && !preceded_by_word
        {
            names.insert(name.to_owned());
        }
        rest = &tail[len..];
    }
    names
}

/// The repository's files of the kinds that may name metrics, outside build output.
fn files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if !matches!(name.as_str(), "target" | ".git" | "node_modules") {
                    dirs.push(path);
                }
            } else if ["md", "yaml", "yml", "json", "rs", "toml"]
                .iter()
                .any(|ext| name.ends_with(&format!(".{ext}")))
            {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_metric_the_repository_names_is_exported() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let exported = exported();
    let mut unknown = Vec::new();
    let mut checked = 0;
    let mut named_in: Vec<PathBuf> = Vec::new();
    for path in files(&root) {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let names = mentioned(&text);
        if !names.is_empty() {
            named_in.push(path.clone());
        }
        for name in names {
            checked += 1;
            if !exported.contains(&name) {
                unknown.push(format!(
                    "{}: {name}",
                    path.strip_prefix(&root).unwrap().display()
                ));
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} mentions found: is the walk right?"
    );
    // The artefacts operators rely on are among what was read, each naming metrics.
    for artefact in [
        "deploy/prometheus/alerts.yaml",
        "deploy/prometheus/alerts.test.yaml",
        "deploy/grafana/consent-relay.json",
        "README.md",
        "deploy/README.md",
    ] {
        assert!(
            named_in.contains(&root.join(artefact)),
            "{artefact} was not read or names no metric"
        );
    }
    assert!(
        unknown.is_empty(),
        "names no exported metric:\n{}",
        unknown.join("\n")
    );
}

#[test]
fn mentions_are_read_as_names_and_families_are_skipped() {
    let text = "`consent_relay_events_total{sink=\"x\"}`, consent_relay_ingest_* and \
                consent_relay_, rate(consent_relay_retries_total[5m]), my_consent_relay_x, \
                consent_relay_e2e::setup";
    assert_eq!(
        mentioned(text).into_iter().collect::<Vec<_>>(),
        ["consent_relay_events_total", "consent_relay_retries_total"]
    );
    assert!(mentioned("format!(\"consent_relay_{kind}_total\")").is_empty());
    assert_eq!(
        mentioned("`consent_relay_ingest_{received,published,…}_total`")
            .into_iter()
            .collect::<Vec<_>>(),
        [
            "consent_relay_ingest_published_total",
            "consent_relay_ingest_received_total"
        ]
    );
    assert!(exported().contains("consent_relay_downstream_request_duration_seconds_bucket"));
}
