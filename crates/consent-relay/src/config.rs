//! The configuration, in layers: embedded defaults (`defaults.toml`) → the `--config` TOML file →
//! environment variables. Secrets come from the environment: `CONSENT_RELAY_HUBSPOT_TOKEN`,
//! `CONSENT_RELAY_KAFKA_SASL_PASSWORD`, `CONSENT_RELAY_LEDGER_URL`; any other key can be set with
//! `CONSENT_RELAY__SECTION__KEY=value` (value parsed as TOML, else taken as a string). Everything
//! is validated at start and all problems are reported at once, each naming its key.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use relay_runtime::{BatchConfig, EventRules, KafkaConfig, LivenessConfig, RetryConfig};
use serde::Deserialize;

use crate::origins::Origins;

use crate::sinks::SinkConfig;

const DEFAULTS: &str = include_str!("defaults.toml");
const ENV_PREFIX: &str = "CONSENT_RELAY__";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    kafka: KafkaConfig,
    ledger: LedgerConfig,
    log: LogConfig,
    admin: AdminConfig,
    #[serde(default)]
    liveness: LivenessConfig,
    #[serde(default)]
    events: EventRules,
    #[serde(default)]
    purposes: BTreeMap<String, PurposeConfig>,
    #[serde(default)]
    sinks: BTreeMap<String, toml::Table>,
    #[serde(default)]
    ingest: Option<relay_ingest::IngestConfig>,
    /// `[reconcile.<sink or destination>]`: how often `run` reconciles it.
    #[serde(default)]
    reconcile: BTreeMap<String, ReconcileSection>,
    #[serde(default)]
    recipients: BTreeMap<String, RecipientSection>,
}

/// `[recipients."<destination>"]`: who a destination is in law, as `ledger audit` names it to a
/// data subject (GDPR Art. 15(1)(c)); the service, account and data categories come from the
/// sink's own configuration.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RecipientSection {
    /// The legal entity, as the privacy notice names it ("Meta Platforms Ireland Ltd.").
    pub entity: String,
    /// Its role: "processor (Art. 28)", "controller", "joint controller (Art. 26)".
    #[serde(default)]
    pub role: Option<String>,
    /// The data categories in the notice's words, instead of the ones derived from the sink's
    /// configuration.
    #[serde(default)]
    pub data: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReconcileSection {
    /// How often, e.g. `"6h"`, counted from the last finished run the ledger remembers.
    interval: String,
    /// As `reconcile --restore-grants`.
    #[serde(default)]
    restore_grants: bool,
}

/// One scheduled reconcile of `run` (`[reconcile.<sink>]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledReconcile {
    /// `hubspot`, `audiences`, `newsletter`, or one destination (`audiences.meta-eu`).
    pub sink: String,
    pub interval: std::time::Duration,
    pub restore_grants: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    pub url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin HTTP server (`/metrics`, `/healthz`, `/readyz`) during `run`.
    pub listen: std::net::SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurposeConfig {
    /// What the person agreed to, for operators reading the config and the ledger.
    #[serde(default)]
    pub description: String,
    /// Why the purpose's data may be processed, as `ledger audit` tells a data subject (GDPR Art.
    /// 15(1)(c) with Art. 13(1)(c)); every purpose the relay carries rests on consent.
    #[serde(default = "default_legal_basis")]
    pub legal_basis: String,
}

fn default_legal_basis() -> String {
    "consent, GDPR Art. 6(1)(a)".to_owned()
}

/// The runtime settings every sink has, next to its own.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    pub enabled: bool,
    pub batch: BatchConfig,
    pub retry: RetryConfig,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub ledger: LedgerConfig,
    pub log: LogConfig,
    pub admin: AdminConfig,
    pub liveness: LivenessConfig,
    pub events: EventRules,
    pub purposes: BTreeMap<String, PurposeConfig>,
    pub sinks: Vec<SinkEntry>,
    /// `[ingest]`: the vendors' webhooks (`consent-relay ingest`); checked only when that command
    /// runs, because each pod holds only its own command's secrets.
    pub ingest: Option<relay_ingest::IngestConfig>,
    pub reconcile: Vec<ScheduledReconcile>,
    /// By destination (`audiences.meta-eu`, `hubspot`, …).
    pub recipients: BTreeMap<String, RecipientSection>,
    /// Where the file set each key, for problems found after loading (`[ingest]`).
    pub origins: Origins,
}

/// One `[sinks.NAME]` table: the runtime's settings and the sink's own configuration.
#[derive(Debug, Clone)]
pub struct SinkEntry {
    pub name: String,
    pub settings: SinkSettings,
    pub config: Arc<dyn SinkConfig>,
}

impl Config {
    /// Every configured destination (`hubspot`, `audiences.meta-eu`, …), enabled or not.
    pub fn destinations(&self) -> Vec<String> {
        self.sinks
            .iter()
            .flat_map(|e| e.config.destinations())
            .collect()
    }

    /// The destinations `name` stands for: itself, or all of a sink's (`audiences`).
    pub fn destinations_named(&self, name: &str) -> Vec<String> {
        self.destinations()
            .into_iter()
            .filter(|d| names_destination(name, d))
            .collect()
    }

    pub fn known_purposes(&self) -> BTreeSet<String> {
        self.purposes.keys().cloned().collect()
    }

    /// The `[ingest]` section with its secrets, or every problem with it.
    pub fn ingest(&self) -> Result<relay_ingest::IngestConfig, ConfigError> {
        let Some(ingest) = &self.ingest else {
            return Err(ConfigError::Invalid(vec![
                "ingest: no [ingest] section (see deploy/consent-relay.example.toml)".to_owned(),
            ]));
        };
        let problems = ingest.problems(&self.known_purposes());
        if problems.is_empty() {
            Ok(ingest.clone())
        } else {
            Err(ConfigError::Invalid(
                problems
                    .into_iter()
                    .map(|p| self.origins.annotate(p))
                    .collect(),
            ))
        }
    }
}

/// `--sink` and `[reconcile.*]` name a destination (`audiences.meta-eu`) or a whole sink
/// (`audiences`), as `run --sink` takes it.
pub fn names_destination(name: &str, destination: &str) -> bool {
    destination == name
        || destination
            .strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('.'))
}

/// Whether the command about to run calls the downstreams, and so needs the sinks' credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secrets {
    /// `run`, `config check`: a missing credential of an enabled sink is a problem.
    Required,
    /// `run --sink`, `reconcile --sink`: the credentials of these sink sections only (a
    /// destination `audiences.meta-eu` names its section), enabled in the file or not.
    Of(Vec<String>),
    /// Commands that only read the ledger or the broker: credentials may be absent, so that an
    /// operator or the DPO needs none of them.
    NotNeeded,
}

/// Loads the layers and validates the result.
pub fn load(path: Option<&Path>, secrets: Secrets) -> Result<Config, ConfigError> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    load_with(path, &env, secrets)
}

/// [`load`] with the given environment, for a command that needs the credentials.
#[cfg(test)]
fn load_with_env(path: Option<&Path>, env: &[(String, String)]) -> Result<Config, ConfigError> {
    load_with(path, env, Secrets::Required)
}

fn load_with(
    path: Option<&Path>,
    env: &[(String, String)],
    secrets: Secrets,
) -> Result<Config, ConfigError> {
    let mut table = parse(DEFAULTS, "embedded defaults")?;
    let mut origins = Origins::default();
    if let Some(path) = path {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        merge(&mut table, parse(&text, &path.display().to_string())?);
        origins = Origins::scan(&path.display().to_string(), &text);
    }
    let set_by = apply_env(&mut table, env)?;

    let mut problems = Vec::new();
    let Some(file) = deserialize_all::<FileConfig>(table.clone(), "", &set_by, &mut problems)
    else {
        // The sinks' own keys are checked anyway, so that one attempt shows every mistake.
        if let Some(toml::Value::Table(sinks)) = table.get("sinks") {
            for (name, section) in sinks {
                let toml::Value::Table(section) = section else {
                    continue;
                };
                match runtime_settings(name, section.clone(), &set_by) {
                    Ok((_, rest)) => {
                        if let Some(Err(p)) = crate::sinks::parse(name, rest, env, &set_by) {
                            problems.extend(p);
                        }
                    }
                    Err(p) => problems.extend(p),
                }
            }
        }
        return Err(ConfigError::Invalid(located(said_once(problems), &origins)));
    };
    let mut sinks = Vec::new();
    for (name, section) in file.sinks {
        let (settings, section) = match runtime_settings(&name, section, &set_by) {
            Ok(split) => split,
            Err(p) => {
                problems.extend(p);
                continue;
            }
        };
        let config = match crate::sinks::parse(&name, section, env, &set_by) {
            None => {
                problems.push(format!(
                    "sinks.{name}: unknown sink (known: {})",
                    crate::sinks::KNOWN.join(", ")
                ));
                continue;
            }
            Some(Err(p)) => {
                problems.extend(p);
                continue;
            }
            Some(Ok(config)) => config,
        };
        // A disabled sink may lack its secrets (each pod holds only its own sink's), and so may
        // every sink for a command that never calls one.
        let secrets_needed = match &secrets {
            Secrets::Required => settings.enabled,
            Secrets::Of(sections) => sections
                .iter()
                .any(|s| s.split('.').next() == Some(name.as_str())),
            Secrets::NotNeeded => false,
        };
        problems.extend(
            config
                .problems()
                .into_iter()
                .filter(|p| secrets_needed || !p.missing_secret)
                .map(|p| match p.key.as_str() {
                    "" => format!("sinks.{name}: {}", p.message),
                    key => format!("sinks.{name}.{key}: {}", p.message),
                }),
        );
        let prefix = format!("sinks.{name}");
        problems.extend(relay_runtime::config::validate_sink(
            &settings.batch,
            &settings.retry,
            &prefix,
        ));
        if settings.enabled && config.purposes().is_empty() {
            problems.push(format!(
                "sinks.{name}: routes no purpose, so it would consume every event and apply none; \
                 map one under [sinks.{name}] or set enabled = false"
            ));
        }
        for (key, purpose) in config.purpose_keys() {
            if !file.purposes.contains_key(&purpose) {
                problems.push(format!(
                    "sinks.{name}.{key}: purpose {purpose:?} is not in the [purposes] table"
                ));
            }
        }
        sinks.push(SinkEntry {
            name,
            settings,
            config,
        });
    }
    problems.extend(relay_runtime::config::validate_kafka(&file.kafka));
    let mut ledger = file.ledger;
    if let Some(url) = env
        .iter()
        .find(|(k, _)| k == "CONSENT_RELAY_LEDGER_URL")
        .map(|(_, v)| v)
    {
        ledger.url = url.clone();
    }
    if !(ledger.url.starts_with("sqlite://")
        || ledger.url.starts_with("postgres://")
        || ledger.url.starts_with("postgresql://"))
    {
        problems.push("ledger.url: must start with sqlite:// or postgres://".to_owned());
    }
    if let Err(e) = file
        .log
        .level
        .parse::<tracing_subscriber::filter::EnvFilter>()
    {
        problems.push(format!("log.level: {e}"));
    }
    let mut kafka = file.kafka;
    if let Some((_, pw)) = env
        .iter()
        .find(|(k, _)| k == "CONSENT_RELAY_KAFKA_SASL_PASSWORD")
    {
        kafka
            .properties
            .insert("sasl.password".to_owned(), pw.clone());
    }
    let mut reconcile = Vec::new();
    for (name, section) in file.reconcile {
        let section_name = name.split('.').next().unwrap_or_default();
        let known = sinks.iter().any(|e| {
            e.name == name || (e.name == section_name && e.config.destinations().contains(&name))
        });
        if !known {
            problems.push(format!(
                "reconcile.{name}: no such sink or destination under [sinks]"
            ));
        } else if !["hubspot", "audiences", "newsletter"].contains(&section_name) {
            problems.push(format!(
                "reconcile.{name}: only hubspot, audiences and newsletter can be reconciled"
            ));
        }
        match humantime::parse_duration(&section.interval) {
            Ok(interval) if interval >= std::time::Duration::from_secs(1) => {
                reconcile.push(ScheduledReconcile {
                    sink: name,
                    interval,
                    restore_grants: section.restore_grants,
                })
            }
            Ok(_) => problems.push(format!("reconcile.{name}.interval: at least 1s")),
            Err(e) => problems.push(format!("reconcile.{name}.interval: {e}")),
        }
    }
    let destinations: BTreeSet<String> =
        sinks.iter().flat_map(|e| e.config.destinations()).collect();
    // Sinks that failed to load list no destinations: no second, misleading problem about them.
    let sinks_loaded = problems.iter().all(|p| !p.starts_with("sinks."));
    for (name, r) in &file.recipients {
        if sinks_loaded && !destinations.contains(name) {
            problems.push(format!(
                "recipients.{name}: no such destination (configured: {})",
                destinations.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        if r.entity.trim().is_empty() {
            problems.push(format!(
                "recipients.{name}.entity: must name the legal entity"
            ));
        }
    }
    let mut ingest = file.ingest;
    if let Some(ingest) = &mut ingest {
        ingest.apply_env(env);
    }
    finish(
        problems,
        Config {
            kafka,
            ledger,
            log: file.log,
            admin: file.admin,
            liveness: file.liveness,
            events: file.events,
            purposes: file.purposes,
            sinks,
            ingest,
            reconcile,
            recipients: file.recipients,
            origins,
        },
    )
}

/// `problems` without repeats, in order: one mistake is one line, however many sections lead to
/// it.
fn said_once(mut problems: Vec<String>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    problems.retain(|p| seen.insert(p.clone()));
    problems
}

fn finish(problems: Vec<String>, config: Config) -> Result<Config, ConfigError> {
    let problems = said_once(problems);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid(located(problems, &config.origins)))
    }
}

fn located(problems: Vec<String>, origins: &Origins) -> Vec<String> {
    problems.into_iter().map(|p| origins.annotate(p)).collect()
}

fn parse(text: &str, origin: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|e| ConfigError::Parse {
        origin: origin.to_owned(),
        message: e.to_string(),
    })
}

/// Later layers win key by key; tables merge, everything else is replaced.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Which environment variable set each key (dotted path), to name it in a problem with the key.
pub type SetBy = BTreeMap<String, String>;

/// Deserializes `table` as `T`, collecting every problem rather than the first: each key serde
/// rejects (unknown, or of the wrong type) is reported with its full path under `prefix` and the
/// variable that set it, then removed so that the next attempt finds the next one. `None` when
/// there was any problem.
pub fn deserialize_all<T: serde::de::DeserializeOwned>(
    mut table: toml::Table,
    prefix: &str,
    set_by: &SetBy,
    problems: &mut Vec<String>,
) -> Option<T> {
    let mut clean = true;
    let mut removed: Vec<Vec<String>> = Vec::new();
    // A file has far fewer keys than this; the bound only guards against an error that removing
    // its key does not clear.
    for _ in 0..100 {
        let error = match T::deserialize(toml::Value::Table(table.clone())) {
            Ok(value) => return clean.then_some(value),
            Err(e) => e.to_string(),
        };
        clean = false;
        // toml words it "<message>\nin `<path>`"; the path is absent at the top level.
        let error = error.trim();
        let (message, at) = match error.rsplit_once("\nin `") {
            Some((m, rest)) => (m.trim().to_owned(), rest.trim_end_matches('`').to_owned()),
            None => (error.trim().to_owned(), String::new()),
        };
        let mut path: Vec<String> = at
            .split('.')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let field_named = |prefix: &str| {
            message
                .strip_prefix(prefix)
                .and_then(|m| m.split_once('`'))
                .map(|(f, _)| f.to_owned())
        };
        if let Some(field) = field_named("unknown field `") {
            path.push(field);
        }
        if let Some(field) = field_named("missing field `") {
            // Missing only because its bad value was taken out to find the next problem, which
            // is reported already: its table goes too (then defaulted, or missing in turn).
            let mut at = path.clone();
            at.push(field);
            if removed.contains(&at) {
                if path.is_empty() || !remove_key(&mut table, &path) {
                    return None;
                }
                removed.push(path);
                continue;
            }
        }
        let key = [prefix.to_owned(), path.join(".")]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(".");
        let origin = set_by
            .get(&key)
            .map(|var| format!(" (set by {var})"))
            .unwrap_or_default();
        let label = if key.is_empty() {
            "configuration"
        } else {
            key.as_str()
        };
        problems.push(format!("{label}: {message}{origin}"));
        // A missing field cannot be removed to find the next problem; removing its table
        // would only add a misleading one.
        if path.is_empty() || message.starts_with("missing field") || !remove_key(&mut table, &path)
        {
            return None;
        }
        removed.push(path);
    }
    None
}

/// Removes the key at `path`; false if there is none (an array element, a missing field).
fn remove_key(table: &mut toml::Table, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut node = table;
    for segment in parents {
        node = match node.get_mut(segment) {
            Some(toml::Value::Table(t)) => t,
            _ => return false,
        };
    }
    node.remove(last).is_some()
}

fn apply_env(table: &mut toml::Table, env: &[(String, String)]) -> Result<SetBy, ConfigError> {
    let mut set_by = SetBy::new();
    for (name, value) in env {
        if let Some(rest) = name.strip_prefix(ENV_PREFIX) {
            let path: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
            if path.iter().any(String::is_empty) {
                return Err(ConfigError::Parse {
                    origin: name.clone(),
                    message: "empty key segment".to_owned(),
                });
            }
            // A value that parses as TOML keeps its type (numbers, booleans, arrays); anything
            // else is a string.
            let parsed = format!("v = {value}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(value.clone()));
            let mut node = &mut *table;
            for segment in &path[..path.len() - 1] {
                let entry = node
                    .entry(segment.clone())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                node = match entry {
                    toml::Value::Table(t) => t,
                    _ => {
                        return Err(ConfigError::Parse {
                            origin: name.clone(),
                            message: format!("{segment} is not a table"),
                        })
                    }
                };
            }
            node.insert(path[path.len() - 1].clone(), parsed);
            set_by.insert(path.join("."), name.clone());
        }
    }
    Ok(set_by)
}

/// Takes the runtime's settings (`enabled`, `batch`, `retry`) out of a `[sinks.NAME]` table; the
/// rest is the sink's own configuration, which rejects unknown keys itself.
/// Every problem of `batch` and `retry` is reported, each with its full key (and the variable
/// that set it).
fn runtime_settings(
    name: &str,
    mut section: toml::Table,
    set_by: &SetBy,
) -> Result<(SinkSettings, toml::Table), Vec<String>> {
    let mut problems = Vec::new();
    let enabled = match section.remove("enabled") {
        None => true,
        Some(toml::Value::Boolean(b)) => b,
        Some(_) => {
            problems.push(format!("sinks.{name}.enabled: expected true or false"));
            true
        }
    };
    let max_events = crate::sinks::default_max_events(name);
    let mut table = |key: &str| match section.remove(key) {
        None => Ok(toml::Table::new()),
        Some(toml::Value::Table(t)) => Ok(t),
        Some(_) => Err(format!("sinks.{name}.{key}: expected a table")),
    };
    let batch = table("batch").map(|mut t| {
        t.entry("max_events")
            .or_insert(toml::Value::Integer(max_events as i64));
        t
    });
    let retry = table("retry");
    let mut settings = |t: Result<toml::Table, String>, key: &str| {
        match t {
            Ok(t) => Some(t),
            Err(p) => {
                problems.push(p);
                None
            }
        }
        .map(|t| (t, format!("sinks.{name}.{key}")))
    };
    let batch = settings(batch, "batch");
    let retry = settings(retry, "retry");
    let batch = batch
        .and_then(|(t, prefix)| deserialize_all::<BatchConfig>(t, &prefix, set_by, &mut problems));
    let retry = retry
        .and_then(|(t, prefix)| deserialize_all::<RetryConfig>(t, &prefix, set_by, &mut problems));
    match (batch, retry) {
        (Some(batch), Some(retry)) if problems.is_empty() => Ok((
            SinkSettings {
                enabled,
                batch,
                retry,
            },
            section,
        )),
        _ => Err(problems),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        f
    }

    const HUBSPOT: &str = r#"
[purposes.newsletter]
description = "Newsletter"

[sinks.hubspot]
base_url = "http://127.0.0.1:1"
[sinks.hubspot.batch]
max_events = 50
[sinks.hubspot.purposes.newsletter]
subscription_ids = [12345]
legal_basis = "CONSENT_WITH_NOTICE"
legal_basis_explanation = "Signed up on the website"
"#;

    #[test]
    fn defaults_alone_are_valid() {
        let c = load_with_env(None, &[]).unwrap();
        assert_eq!(c.kafka.bootstrap_servers, "127.0.0.1:9092");
        assert_eq!(c.ledger.url, "sqlite://consent-relay.db");
        assert!(c.sinks.is_empty());
    }

    #[test]
    fn the_example_config_in_deploy_is_valid() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/consent-relay.example.toml");
        let env: Vec<(String, String)> = [
            ("CONSENT_RELAY_HUBSPOT_TOKEN", "pat-eu1-x"),
            ("CONSENT_RELAY_AUDIENCES_META_EU_TOKEN", "meta"),
            ("CONSENT_RELAY_AUDIENCES_GOOGLE_EU_TOKEN", "google"),
            ("CONSENT_RELAY_AUDIENCES_LINKEDIN_TOKEN", "linkedin"),
            ("CONSENT_RELAY_AUDIENCES_X_CONSUMER_KEY", "x-ck"),
            ("CONSENT_RELAY_AUDIENCES_X_CONSUMER_SECRET", "x-cs"),
            ("CONSENT_RELAY_AUDIENCES_X_ACCESS_TOKEN", "1-x-at"),
            ("CONSENT_RELAY_AUDIENCES_X_ACCESS_TOKEN_SECRET", "x-ats"),
            ("CONSENT_RELAY_AUDIENCES_NETWORK_TOKEN", "network"),
            (
                "CONSENT_RELAY__SINKS__NEWSLETTER__LISTS__MAIN__API_KEY",
                "xkeysib-1",
            ),
            (
                "CONSENT_RELAY__SINKS__NEWSLETTER__LISTS__PRODUCT__API_KEY",
                "abc-us21",
            ),
            (
                "CONSENT_RELAY__SINKS__PARTNER__PARTNERS__IN_GMBH__SIGNING_SECRET",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            ),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .into();
        let c = load_with_env(Some(&path), &env).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = c.sinks.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["audiences", "hubspot", "newsletter", "partner"]);
        let missing = c.ingest().unwrap_err().to_string();
        assert!(
            missing.contains("CONSENT_RELAY_INGEST_HUBSPOT_CLIENT_SECRET"),
            "{missing}"
        );
        let mut env = env;
        env.extend(
            [
                ("CONSENT_RELAY_INGEST_HUBSPOT_CLIENT_SECRET", "hs-secret"),
                ("CONSENT_RELAY_INGEST_HUBSPOT_TOKEN", "pat-eu1-read"),
                (
                    "CONSENT_RELAY_INGEST_MAILCHIMP_PATH_SECRET",
                    "6f1c0d3a9e2b4c7d8e9f0a1b2c3d4e5f",
                ),
                ("CONSENT_RELAY_INGEST_BREVO_TOKEN", "brevo-webhook-token"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        let c = load_with_env(Some(&path), &env).unwrap_or_else(|e| panic!("{e}"));
        let ingest = c.ingest().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !format!("{ingest:?}").contains("hs-secret"),
            "secrets stay out of Debug"
        );
    }

    #[test]
    fn kafka_is_validated_once_however_many_sinks_share_it() {
        let both = format!(
            "{HUBSPOT}[sinks.partner]\nenabled = false\n[sinks.partner.partners.in_gmbh]\n\
             endpoint = \"https://partner.example/hook\"\npurpose = \"newsletter\"\n\
             fields = [\"email\"]\n"
        );
        let f = write(&both);
        let env = [(
            "CONSENT_RELAY__KAFKA__BOOTSTRAP_SERVERS".to_owned(),
            "\" \"".to_owned(),
        )];
        let err = load_with(Some(f.path()), &env, Secrets::NotNeeded)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err.matches("kafka.bootstrap_servers: must not be empty")
                .count(),
            1,
            "{err}"
        );
    }

    #[test]
    fn file_and_env_layers_override_and_secrets_come_from_env() {
        let f = write(HUBSPOT);
        let env = [
            (
                "CONSENT_RELAY_HUBSPOT_TOKEN".to_owned(),
                "secret".to_owned(),
            ),
            (
                "CONSENT_RELAY__KAFKA__BOOTSTRAP_SERVERS".to_owned(),
                "kafka:9093".to_owned(),
            ),
            (
                "CONSENT_RELAY__SINKS__HUBSPOT__BATCH__LINGER_MS".to_owned(),
                "25".to_owned(),
            ),
        ];
        let c = load_with_env(Some(f.path()), &env).unwrap();
        assert_eq!(c.kafka.bootstrap_servers, "kafka:9093");
        let hubspot = &c.sinks[0];
        assert_eq!(hubspot.settings.batch.max_events, 50);
        assert_eq!(hubspot.settings.batch.linger_ms, 25);
        assert!(
            hubspot.config.problems().is_empty(),
            "the token came from the environment"
        );

        let err = load_with_env(Some(f.path()), &env[1..])
            .unwrap_err()
            .to_string();
        assert!(err.contains("sinks.hubspot.token"), "{err}");
        let disabled = HUBSPOT.replace("[sinks.hubspot]", "[sinks.hubspot]\nenabled = false");
        let f = write(&disabled);
        assert!(
            load_with_env(Some(f.path()), &[]).is_ok(),
            "a disabled sink needs no secrets"
        );
        // A command that only reads needs none either, but every other problem still counts.
        let f = write(HUBSPOT);
        assert!(load_with(Some(f.path()), &[], Secrets::NotNeeded).is_ok());
        let broken = HUBSPOT.replace("http://127.0.0.1:1", "ftp://x");
        let f = write(&broken);
        let err = load_with(Some(f.path()), &[], Secrets::NotNeeded)
            .unwrap_err()
            .to_string();
        assert!(err.contains("sinks.hubspot.base_url"), "{err}");
        assert!(!err.contains("token"), "{err}");

        // `run --sink partner` needs the partner's secret, not HubSpot's token, enabled or not.
        let both = format!(
            "{HUBSPOT}[sinks.partner]\nenabled = false\n[sinks.partner.partners.in_gmbh]\n\
             endpoint = \"https://partner.example/hook\"\npurpose = \"newsletter\"\n\
             fields = [\"email\"]\n"
        );
        let f = write(&both);
        let partner_only = Secrets::Of(vec!["partner".into()]);
        let err = load_with(Some(f.path()), &[], partner_only.clone())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sinks.partner.partners.in_gmbh.signing_secret"),
            "{err}"
        );
        assert!(!err.contains("sinks.hubspot"), "{err}");
        let secret = [(
            "CONSENT_RELAY__SINKS__PARTNER__PARTNERS__IN_GMBH__SIGNING_SECRET".to_owned(),
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned(),
        )];
        assert!(load_with(Some(f.path()), &secret, partner_only.clone()).is_ok());
        let err = load_with(Some(f.path()), &secret, Secrets::Of(vec!["hubspot".into()]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sinks.hubspot.token"), "{err}");

        // A partner's purpose is reported at the partner's own key.
        let f = write(&both.replace("purpose = \"newsletter\"", "purpose = \"leads\""));
        let err = load_with(Some(f.path()), &secret, partner_only)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "sinks.partner.partners.in_gmbh.purpose: purpose \"leads\" is not in the [purposes] table"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_sink_filter_names_its_destinations_and_only_them() {
        assert!(names_destination("audiences", "audiences.meta-eu"));
        assert!(names_destination("audiences.meta-eu", "audiences.meta-eu"));
        assert!(names_destination("hubspot", "hubspot"));
        assert!(!names_destination("audiences.meta", "audiences.meta-eu"));
        assert!(!names_destination("audience", "audiences.meta-eu"));
    }

    #[test]
    fn recipients_name_configured_destinations() {
        let f = write(&format!(
            "{HUBSPOT}[recipients.hubspot]\nentity = \"HubSpot Ireland Ltd.\"\nrole = \"processor\"\n"
        ));
        let c = load_with(Some(f.path()), &[], Secrets::NotNeeded).unwrap();
        assert_eq!(c.recipients["hubspot"].entity, "HubSpot Ireland Ltd.");
        let f = write(&format!(
            "{HUBSPOT}[recipients.hubspots]\nentity = \"x\"\n[recipients.hubspot]\nentity = \" \"\n"
        ));
        let err = load_with(Some(f.path()), &[], Secrets::NotNeeded)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("recipients.hubspots: no such destination"),
            "{err}"
        );
        assert!(err.contains("recipients.hubspot.entity"), "{err}");
    }

    #[test]
    fn an_enabled_sink_without_purposes_is_refused() {
        let f = write(
            "[purposes.newsletter]\ndescription = \"Newsletter\"\n\
             [sinks.hubspot]\nbase_url = \"http://127.0.0.1:1\"\n",
        );
        let err = load_with(Some(f.path()), &[], Secrets::NotNeeded)
            .unwrap_err()
            .to_string();
        assert!(err.contains("sinks.hubspot: routes no purpose"), "{err}");
    }

    /// Issue 12: three unknown keys were reported one at a time, a sink's own keys apart from the
    /// rest, and a bad value set by a variable without naming it.
    #[test]
    fn every_unknown_key_and_bad_value_is_reported_at_once_with_its_origin() {
        let text = HUBSPOT.replace(
            "[sinks.hubspot]\n",
            "[sinks.hubspot]\ncolour = \"blue\"\ntimeout = \"soon\"\n",
        ) + "[kafka]\nfoo = 1\nbar = 2\n[ledger]\nbaz = 3\n";
        let f = write(&text);
        let env = [
            (
                "CONSENT_RELAY__KAFKA__SESSION_TIMEOUT_MS".to_owned(),
                "abc".to_owned(),
            ),
            (
                "CONSENT_RELAY__ADMIN__LISTEN".to_owned(),
                "nowhere".to_owned(),
            ),
        ];
        let err = load_with(Some(f.path()), &env, Secrets::NotNeeded)
            .unwrap_err()
            .to_string();
        for key in [
            "kafka.foo: unknown field",
            "kafka.bar: unknown field",
            "ledger.baz: unknown field",
            "kafka.session_timeout_ms: invalid type",
            "admin.listen: invalid socket address syntax (set by CONSENT_RELAY__ADMIN__LISTEN)",
        ] {
            assert!(err.contains(key), "{key} missing from:\n{err}");
        }
        // The bad value is reported once, not again as a missing field once it is taken out.
        assert!(!err.contains("missing field"), "{err}");
        assert!(
            err.contains("(set by CONSENT_RELAY__KAFKA__SESSION_TIMEOUT_MS)"),
            "{err}"
        );
        assert!(err.contains("sinks.hubspot.colour: unknown field"), "{err}");
        assert!(
            err.contains("sinks.hubspot.timeout: unknown field"),
            "{err}"
        );
        let f = write(&HUBSPOT.replace(
            "[sinks.hubspot]\n",
            "[sinks.hubspot]\ncolour = \"blue\"\nshade = 1\n",
        ));
        let err = load_with(Some(f.path()), &[], Secrets::NotNeeded)
            .unwrap_err()
            .to_string();
        assert!(err.contains("sinks.hubspot.colour: unknown field"), "{err}");
        assert!(err.contains("sinks.hubspot.shade: unknown field"), "{err}");
    }

    #[test]
    fn reconcile_schedules_name_a_configured_sink_and_a_duration() {
        let env = [("CONSENT_RELAY_HUBSPOT_TOKEN".into(), "t".into())];
        let f = write(&format!(
            "{HUBSPOT}\n[reconcile.hubspot]\ninterval = \"6h\"\nrestore_grants = true\n"
        ));
        let config = load_with_env(Some(f.path()), &env).unwrap();
        assert_eq!(
            config.reconcile,
            vec![ScheduledReconcile {
                sink: "hubspot".into(),
                interval: std::time::Duration::from_secs(6 * 3600),
                restore_grants: true,
            }]
        );
        let f = write(&format!(
            "{HUBSPOT}\n[reconcile.audiences]\ninterval = \"6h\"\n[reconcile.hubspot]\ninterval = \"often\"\n"
        ));
        let err = load_with_env(Some(f.path()), &env).unwrap_err().to_string();
        assert!(err.contains("reconcile.audiences: no such sink"), "{err}");
        assert!(err.contains("reconcile.hubspot.interval"), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let f = write("[kafka]\nbootstrap_server = \"x\"\n");
        let err = load_with_env(Some(f.path()), &[]).unwrap_err().to_string();
        assert!(err.contains("bootstrap_server"), "{err}");

        let f = write(&format!("{HUBSPOT}\n[sinks.hubspot.purposes.ads]\nsubscription_ids = [1]\nlegal_basis_explanation = \"x\"\n"));
        let err = load_with_env(
            Some(f.path()),
            &[("CONSENT_RELAY_HUBSPOT_TOKEN".into(), "t".into())],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(
                "sinks.hubspot.purposes.ads: purpose \"ads\" is not in the [purposes] table"
            ),
            "{err}"
        );

        // Every problem of the runtime's settings, each with its full key, its line or variable.
        let f = write(&HUBSPOT.replace(
            "max_events = 50",
            "max_events = 50\nlinger = 3\nmax_in_flight = \"many\"",
        ));
        let env = [(
            "CONSENT_RELAY__SINKS__HUBSPOT__RETRY__ATTEMPTS".to_owned(),
            "3".to_owned(),
        )];
        let err = load_with(Some(f.path()), &env, Secrets::NotNeeded)
            .unwrap_err()
            .to_string();
        for wanted in [
            "sinks.hubspot.batch.linger: unknown field",
            "sinks.hubspot.batch.max_in_flight: invalid type",
            "sinks.hubspot.retry.attempts: unknown field",
            "(set by CONSENT_RELAY__SINKS__HUBSPOT__RETRY__ATTEMPTS)",
        ] {
            assert!(err.contains(wanted), "{wanted} not in:\n{err}");
        }
        assert!(
            !err.contains("\n ("),
            "no line break before a location: {err}"
        );

        let f = write("[sinks.mailchimp]\nenabled = true\n[ledger]\nurl = \"mysql://x\"\n");
        let err = load_with_env(Some(f.path()), &[]).unwrap_err().to_string();
        assert!(
            err.contains("sinks.mailchimp") && err.contains("ledger.url"),
            "all problems at once: {err}"
        );
    }
}
