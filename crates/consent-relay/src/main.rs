//! `consent-relay`: the one binary. Reads the configuration, wires the enabled sinks into the
//! runtime, and offers the operator commands (DESIGN.md §6).
//!
//! Owns: the CLI, configuration layering and validation, logging setup, signal handling, and the
//! choice of concrete sinks and ledger backend. Must not: contain delivery logic of its own.

mod config;
mod ledger_report;

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use relay_runtime::{RelayConfig, SinkSpec};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, LogFormat};

#[derive(Parser)]
#[command(
    name = "consent-relay",
    version,
    about = "Propagates consent decisions from Kafka to every downstream"
)]
struct Cli {
    /// The TOML configuration file, layered over the embedded defaults.
    #[arg(long, short, global = true, env = "CONSENT_RELAY_CONFIG")]
    config: Option<PathBuf>,
    /// Log format; overrides `log.format`.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume and propagate events: one consumer group per sink.
    Run {
        /// Run only these sinks (default: every enabled sink).
        #[arg(long = "sink")]
        sinks: Vec<String>,
        /// Exit once every sink has its partitions and saw nothing new for this many seconds.
        #[arg(long, value_name = "SECONDS")]
        exit_when_idle: Option<u64>,
    },
    /// Publish events given as JSON lines (a file, or stdin with `-`) to the events topic.
    Publish {
        /// JSON lines, one event each (see deploy/sample-events.jsonl).
        #[arg(default_value = "-")]
        input: PathBuf,
        /// Topic to publish to (default: the first of `kafka.topics`).
        #[arg(long)]
        topic: Option<String>,
    },
    /// Inspect the ledger.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Everything the ledger knows of one subject: consent log, per-sink state, deliveries.
    Show {
        subject_id: String,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("consent-relay: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config, cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("consent-relay: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "exiting");
            eprintln!("consent-relay: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error(transparent)]
    Runtime(#[from] relay_runtime::RuntimeError),
    #[error(transparent)]
    Ledger(#[from] relay_ledger::LedgerError),
    #[error("{0}")]
    Usage(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

async fn dispatch(command: Command, config: Config) -> Result<(), AppError> {
    match command {
        Command::Run {
            sinks,
            exit_when_idle,
        } => run(config, sinks, exit_when_idle.map(Duration::from_secs)).await,
        Command::Publish { input, topic } => publish(config, input, topic).await,
        Command::Ledger {
            command: LedgerCommand::Show { subject_id, json },
        } => {
            let ledger = relay_ledger::open(&config.ledger.url).await?;
            let report = relay_ledger::Ledger::subject_report(&ledger, &subject_id).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&ledger_report::to_json(&subject_id, &report))
                        .unwrap_or_default()
                );
            } else {
                print!("{}", ledger_report::to_text(&subject_id, &report));
            }
            Ok(())
        }
    }
}

async fn run(
    config: Config,
    only: Vec<String>,
    exit_when_idle: Option<Duration>,
) -> Result<(), AppError> {
    let mut sinks = Vec::new();
    if let Some((settings, api)) = &config.hubspot {
        if settings.enabled && (only.is_empty() || only.iter().any(|s| s == "hubspot")) {
            let sink = relay_sink_hubspot::HubSpotSink::new(api.clone())
                .map_err(|e| AppError::Usage(format!("sinks.hubspot: {e}")))?;
            sinks.push(SinkSpec {
                sink: Arc::new(sink),
                purposes: api.purposes.keys().cloned().collect(),
                batch: settings.batch.clone(),
                retry: settings.retry.clone(),
            });
        }
    }
    if let Some(unknown) = only.iter().find(|s| s.as_str() != "hubspot") {
        return Err(AppError::Usage(format!(
            "--sink {unknown}: no such sink (known: hubspot)"
        )));
    }
    if sinks.is_empty() {
        return Err(AppError::Usage(
            "no sink is enabled: configure [sinks.hubspot] (see deploy/consent-relay.example.toml)"
                .to_owned(),
        ));
    }
    for (purpose, def) in &config.purposes {
        let served_by: Vec<&str> = sinks
            .iter()
            .filter(|s| s.purposes.contains(purpose))
            .map(|s| s.sink.name())
            .collect();
        tracing::info!(purpose, description = %def.description, sinks = ?served_by, "purpose map");
    }
    let ledger = Arc::new(relay_ledger::open(&config.ledger.url).await?);
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));
    tracing::info!(
        sinks = sinks.len(),
        ledger = ledger_kind(&config.ledger.url),
        "starting"
    );
    let relay = RelayConfig {
        kafka: config.kafka.clone(),
        known_purposes: config.known_purposes(),
        exit_when_idle,
    };
    relay_runtime::run(relay, ledger, sinks, shutdown).await?;
    Ok(())
}

fn ledger_kind(url: &str) -> &'static str {
    if url.starts_with("sqlite:") {
        "sqlite"
    } else {
        "postgres"
    }
}

/// SIGTERM (Kubernetes, systemd) and Ctrl-C both mean: finish or abandon the in-flight batch,
/// commit nothing past it, exit.
async fn signal_shutdown(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
                    let _ = ctrl_c.await;
                    token.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
    token.cancel();
}

async fn publish(config: Config, input: PathBuf, topic: Option<String>) -> Result<(), AppError> {
    let reader: Box<dyn BufRead> = if input.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(&input).map_err(|source| AppError::Io {
            path: input.display().to_string(),
            source,
        })?;
        Box::new(std::io::BufReader::new(file))
    };
    let mut events = Vec::new();
    let mut problems = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.map_err(|source| AppError::Io {
            path: input.display().to_string(),
            source,
        })?;
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        match relay_events::json::from_json_line(&line) {
            Ok(ev) => events.push(ev),
            Err(e) => problems.push(format!("line {}: {e}", n + 1)),
        }
    }
    if !problems.is_empty() {
        return Err(AppError::Usage(format!(
            "nothing published; fix these first:\n  {}",
            problems.join("\n  ")
        )));
    }
    let topic = topic.unwrap_or_else(|| config.kafka.topics[0].clone());
    relay_runtime::publish(&config.kafka, &topic, &events).await?;
    println!("published {} event(s) to {topic}", events.len());
    Ok(())
}

fn init_logging(config: &Config, format: Option<LogFormat>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format.unwrap_or(config.log.format) {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}
