//! `consent-relay`: the one binary. Reads the configuration, wires the enabled sinks into the
//! runtime, and offers the operator commands (DESIGN.md §6).
//!
//! Owns: the CLI, configuration layering and validation, logging setup, signal handling, and the
//! choice of concrete sinks and ledger backend. Must not: contain delivery logic of its own.

mod admin;
mod config;
mod import;
mod ledger_report;
mod logging;
mod malloc;
mod origins;
mod probe;
mod progress;
mod reconcile;
mod sigpipe;
mod sinks;

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use relay_runtime::{RelayConfig, SinkSpec, Telemetry};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, LogFormat};

#[derive(Parser)]
#[command(
    name = "consent-relay",
    version,
    about = "Propagates consent decisions from Kafka to every downstream",
    after_help = "Examples:
  consent-relay -c relay.toml config check            every problem of a config, at once
  consent-relay -c relay.toml run --sink hubspot      one sink (also: audiences, audiences.meta-eu)
  consent-relay -c relay.toml lag                     lag of every enabled sink's group
  consent-relay -c relay.toml ledger audit --email person@example.de
  consent-relay -c relay.toml dlq replay --sink hubspot --code downstream_permanent --dry-run
  consent-relay -c relay.toml reconcile --sink hubspot --dry-run

Exit status: 0 done; 1 failed (a rejected filter or file included); 2 invalid configuration or
command line; 3 `ledger audit` found no record; 75 `run` stopped with work not yet durable (not
committed: the next start does it)."
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

// Parsed once per process; boxing `import`'s column flags would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Consume and propagate events: one consumer group per destination (and one for its retry
    /// topic).
    #[command(
        after_help = "Examples:\n  consent-relay -c relay.toml run                      every enabled sink\n  consent-relay -c relay.toml run --sink audiences.meta-eu\n  consent-relay -c relay.toml run --exit-when-idle 10   a batch job: stop once caught up"
    )]
    Run {
        /// Run only these sinks (default: every enabled sink): a sink (`hubspot`, `audiences`,
        /// `newsletter`, `partner`) or one destination (`audiences.meta-eu`).
        #[arg(long = "sink")]
        sinks: Vec<String>,
        /// Exit once every sink has its partitions and saw nothing new for this many seconds.
        #[arg(long, value_name = "SECONDS")]
        exit_when_idle: Option<u64>,
    },
    /// Publish events given as JSON lines (a file, or stdin with `-`) to the events topic.
    #[command(
        after_help = "Examples:\n  consent-relay -c relay.toml publish events.jsonl\n  producer | consent-relay -c relay.toml publish - --topic consent.events.staging"
    )]
    Publish {
        /// JSON lines, one event each (see deploy/sample-events.jsonl).
        #[arg(default_value = "-")]
        input: PathBuf,
        /// Topic to publish to (default: the first of `kafka.topics`).
        #[arg(long)]
        topic: Option<String>,
    },
    /// Receive the vendors' own notifications (HubSpot, Mailchimp, Brevo webhooks), verify them,
    /// and publish each decision as a consent event before answering; see `[ingest]`.
    #[command(
        after_help = "Examples:\n  consent-relay -c relay.toml ingest            the webhook server on ingest.listen\n  consent-relay -c relay.toml ingest --poll     webhooks, and Mailchimp's unsubscribes since the stored cursor, polled"
    )]
    Ingest {
        /// Also poll the vendors that have a `poll` section (`[ingest.mailchimp.poll]`: each
        /// list's members unsubscribed since the last poll), where webhooks cannot be used. The
        /// cursor is kept in the ledger; run it in one replica (more only repeat its work).
        #[arg(long)]
        poll: bool,
    },
    /// Load existing consent decisions (CSV, or JSON lines as `publish` reads them) as events with
    /// their original timestamps. Rows that break a rule are listed (row number and reason) and
    /// skipped; event ids are derived from each row, so a rerun repeats the same events.
    #[command(
        after_help = "Examples:\n  consent-relay -c relay.toml import decisions.csv --dry-run\n  consent-relay -c relay.toml import decisions.csv --email-column mail --occurred-at-column changed"
    )]
    Import {
        /// The file of decisions: CSV with a header row, or JSON lines.
        file: PathBuf,
        /// Default: JSON lines for .jsonl/.ndjson/.json, CSV otherwise.
        #[arg(long, value_enum)]
        format: Option<import::Format>,
        /// Check every row and report; publish nothing.
        #[arg(long)]
        dry_run: bool,
        /// Topic to publish to (default: the first of `kafka.topics`).
        #[arg(long)]
        topic: Option<String>,
        #[command(flatten)]
        columns: import::Columns,
    },
    /// Consumer lag per group and partition (like `kafka-consumer-groups --describe`), with the
    /// age of the oldest unapplied event. Needs only the broker, not a running relay.
    #[command(
        after_help = "Examples:\n  consent-relay -c relay.toml lag\n  consent-relay -c relay.toml lag --group consent-relay.hubspot --json"
    )]
    Lag {
        /// Groups to describe (default: the group of each destination of every enabled sink); a
        /// destination's `<group>.parked` is described on its retry topic.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The dead-letter topic: what was given up on and why; replay after fixing the cause.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Parked items: those whose inline retries ran out, waiting on their sink's retry topic.
    Parked {
        #[command(subcommand)]
        command: ParkedCommand,
    },
    /// The bundled event schemas: versions, fingerprints, and that each reads its predecessor.
    Schemas {
        #[command(subcommand)]
        command: SchemasCommand,
    },
    /// Suppression lists for marketing.
    Suppression {
        #[command(subcommand)]
        command: SuppressionCommand,
    },
    /// Make a downstream show the ledger's newest decisions again. HubSpot and the newsletter
    /// lists are read back and repaired towards less consent (a grant they do not show is
    /// reported, not restored, unless --restore-grants); ad audiences (Meta, Google, LinkedIn, X, generic)
    /// get their removals re-sent from the ledger's email hashes. Exits 1 when a repair failed.
    #[command(
        after_help = "Examples:\n  consent-relay -c relay.toml reconcile --sink hubspot --dry-run\n  consent-relay -c relay.toml reconcile --sink audiences --destination meta-eu"
    )]
    Reconcile {
        /// `hubspot` or `audiences` (every audience), or a destination (`audiences.meta-eu`).
        #[arg(long)]
        sink: String,
        /// Only this destination of the sink (an audience name, e.g. `meta-eu`).
        #[arg(long)]
        destination: Option<String>,
        /// Read and compare, list what would change, send no change.
        #[arg(long)]
        dry_run: bool,
        /// Also re-subscribe people HubSpot shows unsubscribed whose newest decision is a grant.
        #[arg(long)]
        restore_grants: bool,
        /// Also write the figures as Prometheus text to this file (textfile collector).
        #[arg(long, value_name = "PATH")]
        metrics_file: Option<PathBuf>,
    },
    /// Inspect the ledger.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// The configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Every dead-lettered message: sink, error code and reason, origin.
    #[command(
        after_help = "Examples:\n  consent-relay -c relay.toml dlq list --code missing_email\n  consent-relay -c relay.toml dlq list --sink hubspot --json"
    )]
    List {
        /// Only those of this destination: a sink (hubspot, audiences, newsletter, partner) or one of its destinations (audiences.<audience>, newsletter.<list>, partner.<partner>; `config check` lists them).
        #[arg(long)]
        sink: Option<String>,
        /// Only messages with this error code (e.g. downstream_permanent, missing_email).
        #[arg(long)]
        code: Option<String>,
        /// Only the message(s) of this event (a UUID).
        #[arg(long)]
        event_id: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put dead-lettered messages of one sink back on their original topic, for that sink alone.
    /// The version rule still applies: a replay older than a newer decision is superseded.
    #[command(
        after_help = "Examples:\n  consent-relay -c relay.toml dlq replay --sink hubspot --code downstream_permanent --dry-run\n  consent-relay -c relay.toml dlq replay --sink partner.in_gmbh --event-id 0b9c…"
    )]
    Replay {
        /// The destination whose dead letters to replay: a sink (hubspot, audiences, newsletter, partner) or one of its destinations (audiences.<audience>, newsletter.<list>, partner.<partner>; `config check` lists them).
        #[arg(long)]
        sink: String,
        /// Only messages with this error code (e.g. downstream_permanent, missing_email).
        #[arg(long)]
        code: Option<String>,
        /// Only the message(s) of this event (a UUID).
        #[arg(long)]
        event_id: Option<String>,
        /// Say what would be replayed, and replay nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum ParkedCommand {
    /// Every item still parked: sink, event, subject, how often parked, since when, when due,
    /// and the last failure.
    #[command(
        after_help = "Examples:\n  consent-relay -c relay.toml parked list\n  consent-relay -c relay.toml parked list --sink hubspot --all --json"
    )]
    List {
        /// Only those of this destination (default: every enabled one): a sink (hubspot, audiences, newsletter, partner) or one of its destinations (audiences.<audience>, newsletter.<list>, partner.<partner>; `config check` lists them).
        #[arg(long)]
        sink: Option<String>,
        /// Also copies whose item has been decided since (applied, superseded, dead-lettered).
        #[arg(long)]
        all: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Make parked items of one sink due now, instead of at their next scheduled retry. The
    /// version rule still applies: an item a newer decision overtook is superseded.
    #[command(after_help = "Examples:\n  consent-relay -c relay.toml parked retry --sink hubspot")]
    Retry {
        /// The sink whose parked items to retry.
        #[arg(long)]
        sink: String,
        /// Only the item of this event.
        #[arg(long)]
        event_id: Option<String>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Load the configuration as `run` would (embedded defaults, the file, CONSENT_RELAY__*
    /// variables, the enabled sinks' credentials from the environment) and report every problem
    /// at once, each with its full key; exit 2 if there is one. Contacts nothing, unless
    /// `--connect`.
    #[command(
        after_help = "Examples:\n  consent-relay -c relay.toml config check\n  consent-relay -c relay.toml config check --no-secrets     on a machine without the pods' secrets\n  consent-relay -c relay.toml config check --connect        also reach the broker, the ledger, each downstream"
    )]
    Check {
        /// Do not require credentials: check a file away from the pod's environment.
        #[arg(long)]
        no_secrets: bool,
        /// Then probe what the configuration names: the broker and its topics, the ledger and its
        /// schema (read-only), each enabled destination's API (`HEAD /`); exit 1 if one fails.
        #[arg(long)]
        connect: bool,
        /// Check `[ingest]` too, with its secrets, as the `ingest` pod would.
        #[arg(long)]
        ingest: bool,
    },
}

#[derive(Subcommand)]
enum SchemasCommand {
    /// List every bundled schema version and check backward compatibility; exits non-zero if a
    /// version cannot read its predecessor.
    Check,
}

#[derive(Subcommand)]
enum SuppressionCommand {
    /// Everyone whose newest decision for the purpose is a withdrawal, unsubscribe or erasure:
    /// subject_id and the SHA-256 of the normalized email, never the raw address. The row count
    /// goes to stderr.
    #[command(
        after_help = "Examples:\n  consent-relay -c relay.toml suppression export --purpose newsletter --format meta --output meta.csv\n  consent-relay -c relay.toml suppression export --purpose ads_remarketing --since 2026-11-01 --format google"
    )]
    Export {
        /// A purpose of the `[purposes]` table, e.g. newsletter.
        #[arg(long)]
        purpose: String,
        /// `csv`: subject_id, email_sha256, decision (withdraw, unsubscribe, erase), occurred_at,
        /// event_id, source. `sha256`: one email hash per line, nothing else, the hash of the
        /// trimmed, lowercased address as Meta, LinkedIn, X and generic audiences take it. `meta`: the same under
        /// the header `email`, a customer list Meta's Ads Manager reads. `google`: header
        /// `Email`, the hashes of the address as Google normalizes it (gmail dots and +tags
        /// removed, and the +tag variant too), for a Customer Match upload. `hubspot-ids`: header
        /// `subject_id`, the subject ids (HubSpot takes no hashes; import them against a contact
        /// property holding the subject id). A subject without the needed hash is left out and
        /// counted.
        #[arg(long, value_enum, default_value_t = SuppressionFormat::Csv)]
        format: SuppressionFormat,
        /// Write to this file (replaced whole, only once complete) instead of stdout.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Only people whose newest decision was made (`occurred_at`) at or after this time: RFC
        /// 3339 in UTC (2026-11-01T00:00:00Z) or a date (2026-11-01, midnight UTC). A decision
        /// made earlier but logged later (a replay, a backfill) is not in a later window: for
        /// an incremental list, overlap the windows or export in full.
        #[arg(long, value_name = "TIME", value_parser = parse_since)]
        since: Option<i64>,
    },
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Everything the ledger knows of one subject: consent log, per-sink state, deliveries.
    #[command(after_help = "Examples:\n  consent-relay -c relay.toml ledger show subj-42")]
    Show {
        /// The subject id as upstream sends it (`subject_id` of the events).
        subject_id: String,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// For a data-subject request: the proof of each consent decision, every recipient the
    /// person's data went to (who, what data, what was done there), and the events that reached
    /// no one. Says so when the ledger holds nothing about the subject.
    #[command(
        after_help = "Examples:\n  consent-relay -c relay.toml ledger audit subj-42\n  consent-relay -c relay.toml ledger audit --email person@example.de --json"
    )]
    Audit {
        /// The subject id as upstream sends it (`subject_id` of the events).
        #[arg(required_unless_present = "email")]
        subject_id: Option<String>,
        /// Find the subject by email address instead (the ledger keeps only its SHA-256).
        #[arg(long, conflicts_with = "subject_id")]
        email: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Create the ledger or bring its schema to this version's, and say which it has. Only `run`
    /// does this too; `ingest` needs a current ledger. Run it first (as the schema's owner) where
    /// the relay connects with a role that may not change the schema.
    Migrate,
    /// Decisions `ingest` heard about people the ledger does not know (email hash only), to
    /// follow up at the vendor or upstream.
    #[command(
        after_help = "Examples:\n  consent-relay -c relay.toml ledger unknown-contacts --json"
    )]
    UnknownContacts {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    malloc::fix_mmap_threshold();
    let cli = Cli::parse();
    sigpipe::end_quietly_on_a_closed_pipe();
    // Only the commands that call the downstreams need their credentials: an operator or the DPO
    // reads the ledger and the broker without holding any.
    let secrets = match &cli.command {
        Command::Run { sinks, .. } if !sinks.is_empty() => config::Secrets::Of(sinks.clone()),
        Command::Reconcile { sink, .. } => config::Secrets::Of(vec![sink.clone()]),
        Command::Run { .. }
        | Command::Config {
            command: ConfigCommand::Check {
                no_secrets: false, ..
            },
        } => config::Secrets::Required,
        _ => config::Secrets::NotNeeded,
    };
    let config = match config::load(cli.config.as_deref(), secrets) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("consent-relay: {e}");
            return ExitCode::from(2);
        }
    };
    let cli_format = cli.log_format.unwrap_or(config.log.format);
    logging::init(&config, cli.log_format);
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
    let servers = config.kafka.bootstrap_servers.clone();
    let result = runtime
        .block_on(dispatch(cli.command, config))
        .map_err(|e| e.naming_broker(&servers));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Said once: as a log record where logs are machine-read, as a plain line otherwise.
        Err(e) => {
            match (&e, cli_format) {
                // An answer, not a failure: never an ERROR record.
                (AppError::NoRecord(_), _) | (_, LogFormat::Human) => {
                    eprintln!("consent-relay: {e}")
                }
                // Nothing lost, nothing for a person to do: the next start carries on.
                (AppError::Runtime(relay_runtime::RuntimeError::Abandoned { .. }), _) => {
                    tracing::warn!(error = %e, "exiting")
                }
                (_, LogFormat::Json) => tracing::error!(error = %e, "exiting"),
            }
            match e {
                // A configuration problem found late (`[ingest]`) exits like one found at load.
                AppError::Config(_) => ExitCode::from(2),
                AppError::NoRecord(_) => ExitCode::from(EXIT_NO_RECORD),
                AppError::Runtime(relay_runtime::RuntimeError::Abandoned { .. }) => {
                    ExitCode::from(EXIT_WORK_LEFT)
                }
                _ => ExitCode::FAILURE,
            }
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
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("broker {servers}: {source}")]
    Broker {
        servers: String,
        source: Box<relay_runtime::RuntimeError>,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// A data-subject lookup found nothing: an answer, not a failure, but one a script must be
    /// able to tell from "found" (exit 3).
    #[error("{0}")]
    NoRecord(String),
}

impl AppError {
    /// A broker error names the broker: librdkafka's own text does not.
    fn naming_broker(self, servers: &str) -> Self {
        match self {
            AppError::Runtime(
                source @ (relay_runtime::RuntimeError::Kafka(_)
                | relay_runtime::RuntimeError::Publish { .. }),
            ) => AppError::Broker {
                servers: servers.to_owned(),
                source: Box::new(source),
            },
            e => e,
        }
    }
}

/// The exit status of `ledger audit` when the ledger holds nothing about the subject.
const EXIT_NO_RECORD: u8 = 3;
/// The exit status of `run` stopped while batches were not yet durable (sysexits' EX_TEMPFAIL).
const EXIT_WORK_LEFT: u8 = 75;

async fn dispatch(command: Command, config: Config) -> Result<(), AppError> {
    match command {
        Command::Run {
            sinks,
            exit_when_idle,
        } => run(config, sinks, exit_when_idle.map(Duration::from_secs)).await,
        Command::Publish { input, topic } => publish(config, input, topic).await,
        Command::Ingest { poll } => ingest(config, poll).await,
        Command::Import {
            file,
            format,
            dry_run,
            topic,
            columns,
        } => import_file(config, file, format, dry_run, topic, columns).await,
        Command::Lag { groups, json } => lag(config, groups, json).await,
        Command::Reconcile {
            sink,
            destination,
            dry_run,
            restore_grants,
            metrics_file,
        } => {
            let options = reconcile::Options {
                sink,
                destination,
                dry_run,
                restore_grants,
                log: false,
            };
            reconcile_command(config, options, metrics_file).await
        }
        Command::Config {
            command: ConfigCommand::Check {
                ingest, connect, ..
            },
        } => {
            // `[ingest]` is checked where `ingest` runs: a sink's pod holds none of its secrets.
            if ingest {
                config.ingest()?;
            }
            config_summary(&config);
            if !connect {
                return Ok(());
            }
            println!("\nprobes:");
            let probes = probe::all(&config).await;
            for p in &probes {
                match &p.outcome {
                    Ok(said) => println!("  ok    {:<24} {}: {said}", p.what, p.target),
                    Err(why) => println!("  FAIL  {:<24} {}: {why}", p.what, p.target),
                }
            }
            let failed = probes.iter().filter(|p| p.outcome.is_err()).count();
            if failed > 0 {
                return Err(AppError::Usage(format!(
                    "config check --connect: {failed} of {} probes failed",
                    probes.len()
                )));
            }
            Ok(())
        }
        Command::Dlq { command } => dlq(config, command).await,
        Command::Parked { command } => parked(config, command).await,
        Command::Schemas {
            command: SchemasCommand::Check,
        } => schemas_check(),
        Command::Suppression {
            command:
                SuppressionCommand::Export {
                    purpose,
                    format,
                    output,
                    since,
                },
        } => suppression_export(config, &purpose, format, output, since).await,
        Command::Ledger {
            command:
                LedgerCommand::Audit {
                    subject_id,
                    email,
                    json,
                },
        } => {
            let ledger = relay_ledger::open_read_only(&config.ledger.url).await?;
            let recipients: std::collections::BTreeMap<String, ledger_report::Recipient> = config
                .sinks
                .iter()
                .flat_map(|entry| entry.config.recipients())
                .map(|(destination, mut r)| {
                    if let Some(named) = config.recipients.get(&destination) {
                        r.entity = Some(named.entity.clone());
                        r.role.clone_from(&named.role);
                        if let Some(data) = &named.data {
                            r.data.clone_from(data);
                        }
                    }
                    (destination, r)
                })
                .collect();
            let bases: ledger_report::LegalBases = config
                .purposes
                .iter()
                .map(|(name, p)| (name.clone(), p.legal_basis.clone()))
                .collect();
            let (subjects, email_hash) = match (subject_id, email) {
                (Some(s), _) => (vec![s], None),
                (None, Some(email)) => {
                    let hash = relay_events::normalize::email_sha256(&email);
                    (ledger.subjects_for_email(&hash).await?, Some(hash))
                }
                (None, None) => return Err(AppError::Usage("give a SUBJECT_ID or --email".into())),
            };
            // Vendors' decisions about this address for no subject the ledger knows (`ingest`).
            let unheard: Vec<relay_ledger::UnknownContact> = match &email_hash {
                Some(hash) => ledger
                    .unknown_contacts()
                    .await?
                    .into_iter()
                    .filter(|u| u.email_sha256.as_deref() == Some(hash.as_str()))
                    .collect(),
                None => Vec::new(),
            };
            let mut known = !unheard.is_empty();
            let mut audits = Vec::new();
            for subject_id in &subjects {
                let report = relay_ledger::Ledger::subject_report(&ledger, subject_id).await?;
                known |= ledger_report::holds_anything(&report);
                if json {
                    audits.push(ledger_report::audit_json(
                        subject_id,
                        &report,
                        &recipients,
                        &bases,
                    ));
                } else {
                    print!(
                        "{}",
                        ledger_report::to_audit(subject_id, &report, &recipients, &bases)
                    );
                }
            }
            match (&email_hash, json) {
                (Some(hash), true) => println!(
                    "{}",
                    serde_json::json!({
                        "email_sha256": hash, "known": known, "subjects": audits,
                        "unknown_contacts": unheard,
                    })
                ),
                (None, true) => println!("{}", audits.pop().unwrap_or_default()),
                (Some(hash), false) => {
                    if subjects.is_empty() {
                        println!(
                            "the ledger holds no subject with this email address (SHA-256 {hash})"
                        );
                    }
                    if !unheard.is_empty() {
                        println!(
                            "\ndecisions vendors reported about this address for no known subject ({}), see `ledger unknown-contacts`:",
                            unheard.len()
                        );
                        for u in &unheard {
                            println!(
                                "  {} {} for {} from {} ({})",
                                ledger_report::when(u.occurred_at_ms),
                                u.kind,
                                u.purposes.join(", "),
                                u.vendor,
                                u.vendor_ref.escape_debug()
                            );
                        }
                    }
                }
                (None, false) => {}
            }
            if !known {
                let of = if email_hash.is_some() {
                    "this email address (looked up by its SHA-256)"
                } else {
                    "this subject"
                };
                return Err(AppError::NoRecord(format!("no record of {of} (exit 3)")));
            }
            Ok(())
        }
        Command::Ledger {
            command: LedgerCommand::Migrate,
        } => {
            let ledger = relay_ledger::open(&config.ledger.url).await?;
            let applied = ledger.applied_migrations().await?;
            println!(
                "ledger {}: schema version {} (applied: {})",
                relay_ledger::redact(&config.ledger.url),
                applied.last().copied().unwrap_or(0),
                applied
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            ledger.close().await;
            Ok(())
        }
        Command::Ledger {
            command: LedgerCommand::UnknownContacts { json },
        } => {
            let ledger = relay_ledger::open_read_only(&config.ledger.url).await?;
            let unknown = ledger.unknown_contacts().await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&unknown).unwrap_or_default()
                );
            } else {
                print!("{}", ledger_report::to_unknown_contacts(&unknown));
            }
            Ok(())
        }
        Command::Ledger {
            command: LedgerCommand::Show { subject_id, json },
        } => {
            let ledger = relay_ledger::open_read_only(&config.ledger.url).await?;
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
    // `--sink audiences` runs every destination of the section, `--sink audiences.meta-eu` one.
    let known: Vec<String> = config
        .sinks
        .iter()
        .flat_map(|e| std::iter::once(e.name.clone()).chain(e.config.destinations()))
        .collect();
    if let Some(unknown) = only.iter().find(|s| !known.contains(s)) {
        return Err(AppError::Usage(format!(
            "--sink {unknown}: not configured (configured: {})",
            known.join(", ")
        )));
    }
    let mut sinks = Vec::new();
    for entry in &config.sinks {
        let whole = if only.is_empty() {
            entry.settings.enabled
        } else {
            only.contains(&entry.name)
        };
        let prefix = format!("{}.", entry.name);
        if !whole && !only.iter().any(|s| s.starts_with(&prefix)) {
            // Not run here, and its credentials may be absent (each pod holds its own sink's).
            continue;
        }
        let built = entry
            .config
            .build()
            .map_err(|e| AppError::Usage(format!("sinks.{}: {e}", entry.name)))?;
        for b in built {
            if !(whole || only.iter().any(|s| s == b.sink.name())) {
                continue;
            }
            sinks.push(SinkSpec {
                sink: b.sink,
                purposes: b.purposes,
                batch: entry.settings.batch.clone(),
                retry: entry.settings.retry.clone(),
            });
        }
    }
    if sinks.is_empty() {
        return Err(AppError::Usage(
            "no sink is enabled: configure one under [sinks] (see deploy/consent-relay.example.toml)"
                .to_owned(),
        ));
    }
    for (purpose, def) in &config.purposes {
        let served_by: Vec<&str> = sinks
            .iter()
            .filter(|s| s.purposes.contains(purpose))
            .map(|s| s.sink.name())
            .collect();
        tracing::info!(purpose, description = %def.description, sinks = %relay_runtime::log_fields::list(&served_by), "purpose map");
    }
    let ledger = Arc::new(relay_ledger::open(&config.ledger.url).await?);
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));
    let telemetry = Telemetry::new();
    let listener = tokio::net::TcpListener::bind(config.admin.listen)
        .await
        .map_err(|source| AppError::Io {
            path: format!("admin.listen {}", config.admin.listen),
            source,
        })?;
    tracing::info!(listen = %config.admin.listen, "admin server: /metrics /healthz /readyz");
    let admin = tokio::spawn(admin::serve(listener, telemetry.clone(), shutdown.clone()));
    tracing::info!(
        sinks = sinks.len(),
        ledger = ledger_kind(&config.ledger.url),
        "starting"
    );
    let running: Vec<String> = sinks.iter().map(|s| s.sink.name().to_owned()).collect();
    let scheduled = spawn_reconciles(
        &config,
        &running,
        ledger.clone(),
        telemetry.clone(),
        shutdown.clone(),
    );
    let relay = RelayConfig {
        kafka: config.kafka.clone(),
        known_purposes: config.known_purposes(),
        exit_when_idle,
        liveness: config.liveness.clone(),
        events: config.events.clone(),
    };
    let result = relay_runtime::run(relay, ledger, sinks, telemetry, shutdown.clone()).await;
    shutdown.cancel();
    for task in scheduled {
        let _ = task.await;
    }
    let _ = admin.await;
    result?;
    Ok(())
}

/// The `[reconcile.<sink>]` schedules of `run`: each in its own task, due one interval after the
/// last finished run the ledger remembers (at once if that is past; one interval after start if
/// there is none), then every interval; figures to `/metrics`, lines to the log. A failed run is
/// logged and tried again one interval later. Stops at shutdown, abandoning a run in progress (a
/// rerun starts over, which is safe: see reconcile.rs).
/// The scheduled reconciles of the destinations this process runs (`run --sink X` holds only X's
/// credentials).
fn spawn_reconciles(
    config: &Config,
    running: &[String],
    ledger: Arc<relay_ledger::AnyLedger>,
    telemetry: Telemetry,
    shutdown: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    config
        .reconcile
        .iter()
        // A schedule runs where every destination it names runs: a pod of one audience does not
        // reconcile the others (with one pod per destination, each would repeat it).
        .filter(|schedule| {
            let named = config.destinations_named(&schedule.sink);
            let here = !named.is_empty() && named.iter().all(|d| running.contains(d));
            if !here {
                tracing::info!(reconcile = %schedule.sink, "scheduled reconcile left to the process that runs all it names");
            }
            here
        })
        .map(|schedule| {
            let config = config.clone();
            let ledger = ledger.clone();
            let telemetry = telemetry.clone();
            let shutdown = shutdown.clone();
            let schedule = schedule.clone();
            tokio::spawn(async move {
                let options = reconcile::Options {
                    sink: schedule.sink.clone(),
                    destination: None,
                    dry_run: false,
                    restore_grants: schedule.restore_grants,
                    log: true,
                };
                let interval_ms = i64::try_from(schedule.interval.as_millis()).unwrap_or(i64::MAX);
                let mut due_ms = match ledger.reconcile_finished(&schedule.sink).await {
                    Ok(Some(last)) => {
                        telemetry.reconcile_finished(&schedule.sink, last);
                        // A time in the future came from a clock that was ahead: not a reason to
                        // wait longer than one interval.
                        last.min(relay_ledger::now_ms()).saturating_add(interval_ms)
                    }
                    Ok(None) => relay_ledger::now_ms().saturating_add(interval_ms),
                    Err(e) => {
                        tracing::warn!(sink = %schedule.sink, error = %e, "reading the last reconcile from the ledger failed; the first run is one interval after start");
                        relay_ledger::now_ms().saturating_add(interval_ms)
                    }
                };
                let next_in = Duration::from_secs(u64::try_from((due_ms - relay_ledger::now_ms()) / 1000).unwrap_or(0));
                tracing::info!(
                    sink = %schedule.sink,
                    interval = %humantime::format_duration(schedule.interval),
                    next_in = %humantime::format_duration(next_in),
                    "reconcile scheduled"
                );
                loop {
                    let wait = u64::try_from(due_ms.saturating_sub(relay_ledger::now_ms())).unwrap_or(0);
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                    }
                    let run = reconcile::run(&config, &options, &ledger, &telemetry);
                    let outcome = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        outcome = run => outcome,
                    };
                    let finished = relay_ledger::now_ms();
                    due_ms = finished.saturating_add(interval_ms);
                    match outcome {
                        Ok(results) => {
                            for (destination, figures) in &results {
                                tracing::info!(
                                    "{}",
                                    reconcile::summary(destination, figures, false)
                                );
                            }
                            telemetry.reconcile_finished(&schedule.sink, finished);
                            if let Err(e) = ledger.record_reconcile_finished(&schedule.sink, finished).await {
                                tracing::warn!(sink = %schedule.sink, error = %e, "recording the finished reconcile in the ledger failed; after a restart it runs again at once");
                            }
                        }
                        Err(e) => tracing::warn!(sink = %schedule.sink, error = %e, "scheduled reconcile failed"),
                    }
                }
            })
        })
        .collect()
}

/// What `config check` found valid, for the operator to compare with what they meant.
fn config_summary(config: &Config) {
    println!("configuration ok");
    println!("  ledger: {}", ledger_kind(&config.ledger.url));
    println!(
        "  broker: {}, topics {}, dead letters to {}",
        config.kafka.bootstrap_servers,
        config.kafka.topics.join(", "),
        config.kafka.dlq_topic
    );
    println!(
        "  purposes: {}",
        config
            .purposes
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    );
    for entry in &config.sinks {
        let state = if entry.settings.enabled {
            "enabled"
        } else {
            "disabled"
        };
        let purposes: Vec<String> = entry.config.purposes().into_iter().collect();
        println!(
            "  sink {} ({state}): destinations {}; purposes {}",
            entry.name,
            entry.config.destinations().join(", "),
            purposes.join(", ")
        );
    }
    for schedule in &config.reconcile {
        println!(
            "  reconcile {} every {}",
            schedule.sink,
            humantime::format_duration(schedule.interval)
        );
    }
}

async fn reconcile_command(
    config: Config,
    options: reconcile::Options,
    metrics_file: Option<PathBuf>,
) -> Result<(), AppError> {
    // A mistyped path must fail, not compare with an empty ledger: never created or migrated.
    // A dry run only reads; a real one records its repairs (`Ledger::record_repairs`).
    let ledger = if options.dry_run {
        relay_ledger::open_read_only(&config.ledger.url).await?
    } else {
        relay_ledger::open_current(&config.ledger.url).await?
    };
    let telemetry = Telemetry::new();
    let results = reconcile::run(&config, &options, &ledger, &telemetry)
        .await
        .map_err(AppError::Usage)?;
    for (destination, figures) in &results {
        println!(
            "{}",
            reconcile::summary(destination, figures, options.dry_run)
        );
    }
    if let Some(path) = metrics_file {
        std::fs::write(&path, telemetry.render()).map_err(|source| AppError::Io {
            path: path.display().to_string(),
            source,
        })?;
    }
    let failed: u64 = results.iter().map(|(_, f)| f.failed).sum();
    if failed > 0 {
        return Err(AppError::Usage(format!(
            "{failed} repair(s) failed, listed above; rerun to retry them"
        )));
    }
    Ok(())
}

async fn ingest(config: Config, poll: bool) -> Result<(), AppError> {
    let settings = config.ingest()?;
    let polled = settings
        .mailchimp
        .as_ref()
        .is_some_and(|m| m.poll.is_some());
    if poll && !polled {
        return Err(AppError::Usage(
            "ingest --poll: nothing to poll; configure [ingest.mailchimp.poll] (see deploy/consent-relay.example.toml)".into(),
        ));
    }
    let polled_only = settings
        .mailchimp
        .as_ref()
        .is_some_and(|m| m.poll.is_some() && m.path_secret.is_blank());
    if polled_only && !poll {
        return Err(AppError::Usage(
            "ingest: [ingest.mailchimp] has no path_secret, so no webhook route, and is heard only by polling: run `ingest --poll`".into(),
        ));
    }
    let topic = settings
        .topic
        .clone()
        .unwrap_or_else(|| config.kafka.topics[0].clone());
    // Written, never migrated: `run` (or `ledger migrate`) owns the schema.
    let ledger = Arc::new(relay_ledger::open_current(&config.ledger.url).await?);
    let publisher = relay_runtime::Publisher::new(&config.kafka)?;
    let metrics = relay_ingest::Metrics::default();
    let bind = |addr: std::net::SocketAddr, what: &'static str| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AppError::Io {
                path: format!("{what} {addr}"),
                source,
            })
    };
    let listener = bind(settings.listen, "ingest.listen").await?;
    let admin_listener = bind(config.admin.listen, "admin.listen").await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));
    let admin = tokio::spawn(admin::serve_ingest(
        admin_listener,
        metrics.clone(),
        shutdown.clone(),
    ));
    tracing::info!(
        listen = %settings.listen,
        public_url = %settings.public_url,
        topic,
        hubspot = settings.hubspot.is_some(),
        mailchimp = settings.mailchimp.is_some(),
        brevo = settings.brevo.is_some(),
        poll,
        "ingest: serving the vendors' webhooks"
    );
    let mut ingest = relay_ingest::Ingest::new(
        settings,
        ledger,
        Arc::new(relay_ingest::KafkaPublish { publisher, topic }),
        metrics,
    );
    if let Some(writers) = list_writers(&config) {
        ingest = ingest.with_list_writers(writers);
    }
    let poller = poll.then(|| {
        let (ingest, shutdown) = (ingest.clone(), shutdown.clone());
        tokio::spawn(async move { ingest.poll_until(shutdown).await })
    });
    let served = relay_ingest::serve(listener, ingest, shutdown.clone()).await;
    shutdown.cancel();
    if let Some(poller) = poller {
        let _ = poller.await;
    }
    let _ = admin.await;
    served.map_err(|source| AppError::Io {
        path: "ingest server".to_owned(),
        source,
    })
}

/// Which newsletter destination writes which vendor list, as the newsletter sink names them
/// (`newsletter.<name>`), whether or not this process runs the sink: `ingest` tells the relay's
/// own unsubscribes, reported back by the vendor, by the list they were written to.
fn list_writers(config: &Config) -> Option<relay_ingest::ListWriters> {
    use relay_sink_newsletter::{ListConfig, NewsletterConfig};
    let entry = config.sinks.iter().find(|s| s.name == "newsletter")?;
    let newsletter = entry.config.as_any().downcast_ref::<NewsletterConfig>()?;
    let mut writers = relay_ingest::ListWriters::default();
    for (name, list) in &newsletter.lists {
        let destination = format!("newsletter.{name}");
        match list {
            ListConfig::Mailchimp(m) => {
                writers.insert(relay_ingest::Vendor::Mailchimp, &m.list_id, &destination)
            }
            ListConfig::Brevo(b) => writers.insert(
                relay_ingest::Vendor::Brevo,
                &b.list_id.to_string(),
                &destination,
            ),
        }
    }
    Some(writers)
}

/// Events per broker round: large enough to keep the producer busy, small enough for a progress
/// line that moves.
const IMPORT_CHUNK: usize = 5_000;

async fn import_file(
    config: Config,
    file: PathBuf,
    format: Option<import::Format>,
    dry_run: bool,
    topic: Option<String>,
    columns: import::Columns,
) -> Result<(), AppError> {
    let text = std::fs::read_to_string(&file).map_err(|source| AppError::Io {
        path: file.display().to_string(),
        source,
    })?;
    let now_ms = relay_ledger::now_ms();
    let known = config.known_purposes();
    let rules = import::Rules {
        known_purposes: &known,
        now_ms,
        future_tolerance_ms: config.events.future_tolerance_ms,
    };
    let format = format.unwrap_or_else(|| import::Format::guess(&file));
    let parsed = import::parse(&text, format, &columns, &rules)
        .map_err(|e| AppError::Usage(format!("{}: {e}", file.display())))?;
    for bad in &parsed.bad {
        println!("row {}: {}", bad.row, bad.reason);
    }
    let rows = parsed.events.len() + parsed.bad.len() + parsed.repeated;
    let topic = topic.unwrap_or_else(|| config.kafka.topics[0].clone());
    if dry_run {
        println!(
            "dry run of {}: {rows} row(s), {} valid, {} bad, {} repeating an earlier row; nothing published",
            file.display(),
            parsed.events.len(),
            parsed.bad.len(),
            parsed.repeated
        );
        return match parsed.bad.len() {
            0 => Ok(()),
            n => Err(AppError::Usage(format!("{n} bad row(s), listed above"))),
        };
    }
    // A rerun after a partial import: what a consumer has logged needs no second copy. Only read,
    // never created: before the first `run` nothing was consumed, so every row is published (a
    // mistyped path costs duplicates, which the consumers recognise by their ids).
    let ids: Vec<uuid::Uuid> = parsed.events.iter().map(|e| e.event_id).collect();
    let logged = match relay_ledger::open_read_only(&config.ledger.url).await {
        Ok(ledger) => ledger.logged_event_ids(&ids).await?,
        Err(relay_ledger::LedgerError::Missing(what)) => {
            eprintln!("import: no ledger yet ({what}): nothing consumed, every row is published");
            Default::default()
        }
        Err(e) => return Err(e.into()),
    };
    let fresh: Vec<_> = parsed
        .events
        .into_iter()
        .filter(|e| !logged.contains(&e.event_id))
        .collect();
    let publisher = relay_runtime::Publisher::new(&config.kafka)?;
    let mut progress =
        progress::Progress::new("import".to_owned(), Some(fresh.len() as u64), false);
    let mut done = 0;
    for chunk in fresh.chunks(IMPORT_CHUNK) {
        publisher.send(&topic, chunk).await?;
        done += chunk.len();
        progress.update(done as u64, "published");
    }
    progress.finish();
    println!(
        "imported {}: {rows} row(s), {} published to {topic}, {} already in the ledger, {} bad, {} repeating an earlier row",
        file.display(),
        fresh.len(),
        logged.len(),
        parsed.bad.len(),
        parsed.repeated
    );
    match parsed.bad.len() {
        0 => Ok(()),
        n => Err(AppError::Usage(format!(
            "{n} bad row(s) not imported, listed above; fix them and rerun (imported rows keep their ids)"
        ))),
    }
}

/// Checks `dlq` filters before reading the topic: a misspelt one would match nothing and look like
/// an empty dead-letter topic.
fn check_dlq_filters(config: &Config, command: &DlqCommand) -> Result<(), AppError> {
    let (sink, code, event_id) = match command {
        DlqCommand::List {
            sink,
            code,
            event_id,
            ..
        } => (sink.as_deref(), code.as_deref(), event_id.as_deref()),
        DlqCommand::Replay {
            sink,
            code,
            event_id,
            ..
        } => (Some(sink.as_str()), code.as_deref(), event_id.as_deref()),
    };
    let mut problems = Vec::new();
    if let Some(sink) = sink {
        if config.destinations_named(sink).is_empty() {
            problems.push(format!(
                "--sink {sink}: no such destination (configured: {})",
                config.destinations().join(", ")
            ));
        }
    }
    if let Some(code) = code {
        let known = relay_events::ErrorCode::ALL.map(|c| c.as_str());
        if !known.contains(&code) {
            problems.push(format!(
                "--code {code}: no such error code (known: {})",
                known.join(", ")
            ));
        }
    }
    if let Some(id) = event_id {
        if uuid::Uuid::parse_str(id).is_err() {
            problems.push(format!("--event-id {id}: not a UUID"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(AppError::Usage(problems.join("; ")))
    }
}

fn matches_dlq_filters(
    letter: &relay_runtime::dead_letter::DeadLetter,
    code: Option<&str>,
    event_id: Option<&str>,
) -> bool {
    code.is_none_or(|c| letter.code == c)
        && event_id.is_none_or(|id| {
            letter
                .event_id
                .as_deref()
                .is_some_and(|e| e.eq_ignore_ascii_case(id))
        })
}

async fn dlq(config: Config, command: DlqCommand) -> Result<(), AppError> {
    check_dlq_filters(&config, &command)?;
    let kafka = config.kafka.clone();
    let letters = tokio::task::spawn_blocking(move || {
        let mut progress =
            progress::Progress::new(format!("dlq read {}", kafka.dlq_topic), None, false);
        let read = relay_runtime::dead_letter::read_all(&kafka, |done, total| {
            // A small topic is read in well under a second: no lines for it.
            if total >= 1_000 {
                progress.total = Some(total);
                progress.update(done, "read");
            }
        });
        progress.finish();
        read
    })
    .await
    .map_err(|e| AppError::Usage(format!("dlq read failed: {e}")))?
    .map_err(relay_runtime::RuntimeError::Kafka)?;
    let (letters, duplicates) = relay_runtime::dead_letter::distinct(letters);
    if duplicates > 0 {
        // On stderr, so that `--json` output stays one document.
        eprintln!(
            "{duplicates} repeated cop(ies) of dead letters left out: one copy per sink and original message is shown and replayed"
        );
    }
    match command {
        DlqCommand::List {
            sink,
            code,
            event_id,
            json,
        } => {
            let letters: Vec<_> = letters
                .into_iter()
                .filter(|l| {
                    sink.as_ref()
                        .is_none_or(|s| config::names_destination(s, &l.sink))
                })
                .filter(|l| matches_dlq_filters(l, code.as_deref(), event_id.as_deref()))
                .collect();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&letters).unwrap_or_default()
                );
                return Ok(());
            }
            let now = relay_ledger::now_ms();
            let rows: Vec<[String; 8]> = letters
                .iter()
                .map(|l| {
                    [
                        format!("{}@{}", l.dlq_partition, l.dlq_offset),
                        l.dead_lettered_at_ms.map_or("-".to_owned(), |at| {
                            humantime::format_duration(Duration::from_secs(
                                u64::try_from((now - at) / 1000).unwrap_or(0),
                            ))
                            .to_string()
                        }),
                        l.sink.clone(),
                        l.code.clone(),
                        l.subject_id
                            .as_deref()
                            .map_or("-".to_owned(), |s| s.escape_debug().to_string()),
                        l.event_id.clone().unwrap_or_else(|| "-".to_owned()),
                        format!(
                            "{}/{}@{}",
                            l.original_topic,
                            l.original_partition
                                .map_or("?".to_owned(), |p| p.to_string()),
                            l.original_offset.map_or("?".to_owned(), |o| o.to_string())
                        ),
                        l.message.escape_debug().to_string(),
                    ]
                })
                .collect();
            const HEADER: [&str; 8] = [
                "DLQ", "AGE", "SINK", "CODE", "SUBJECT", "EVENT", "ORIGIN", "REASON",
            ];
            print_table(&HEADER, &rows, |_| false);
            Ok(())
        }
        DlqCommand::Replay {
            sink,
            code,
            event_id,
            dry_run,
        } => {
            let chosen: Vec<_> = letters
                .into_iter()
                .filter(|l| config::names_destination(&sink, &l.sink))
                .filter(|l| matches_dlq_filters(l, code.as_deref(), event_id.as_deref()))
                .collect();
            let hopeless = chosen
                .iter()
                .filter(|l| {
                    relay_events::ErrorCode::ALL
                        .iter()
                        .find(|c| c.as_str() == l.code)
                        .is_some_and(|c| !c.replay_can_fix())
                })
                .count();
            if hopeless > 0 {
                eprintln!(
                    "warning: {hopeless} of these were dead-lettered for the event itself (e.g. missing_email, invalid_*, future_occurred_at): a replay puts the same bytes back, to be dead-lettered again or (a future date) to outrank the decisions made since; publish a corrected event (a new event_id) instead, or choose with --code"
                );
            }
            if dry_run {
                for l in &chosen {
                    println!(
                        "would replay {}@{} event={} code={}",
                        l.dlq_partition,
                        l.dlq_offset,
                        l.event_id.as_deref().unwrap_or("-"),
                        l.code
                    );
                }
                println!(
                    "dry run: {} message(s) for sink {sink} would be replayed",
                    chosen.len()
                );
                return Ok(());
            }
            let mut progress = progress::Progress::new(
                format!("dlq replay {sink}"),
                Some(chosen.len() as u64),
                false,
            );
            let replayed = relay_runtime::dead_letter::replay(&config.kafka, &chosen, |done| {
                progress.update(done as u64, "replayed")
            })
            .await;
            progress.finish();
            replayed.map_err(|e| {
                AppError::Usage(format!(
                    "dlq replay to {}: {e}",
                    config.kafka.bootstrap_servers
                ))
            })?;
            println!("replayed {} message(s) for sink {sink}", chosen.len());
            Ok(())
        }
    }
}

/// One parked item as `parked list` shows it: its newest copy and what the ledger says of it.
#[derive(serde::Serialize)]
struct ParkedItem {
    #[serde(flatten)]
    copy: relay_runtime::parking::ParkedCopy,
    /// The delivery's status in the ledger (`parked`, or what it became since).
    status: String,
}

/// The newest copy of each (sink, event) on the retry topics of `sinks`, with its ledger status.
async fn parked_items(config: &Config, sinks: Vec<String>) -> Result<Vec<ParkedItem>, AppError> {
    let mut newest: std::collections::BTreeMap<
        (String, String),
        relay_runtime::parking::ParkedCopy,
    > = Default::default();
    for sink in sinks {
        let kafka = config.kafka.clone();
        let copies =
            tokio::task::spawn_blocking(move || relay_runtime::parking::read_all(&kafka, &sink))
                .await
                .map_err(|e| AppError::Usage(format!("reading the retry topic failed: {e}")))?
                .map_err(relay_runtime::RuntimeError::Kafka)?;
        for c in copies {
            let key = (c.sink.clone(), c.event_id.clone().unwrap_or_default());
            if newest.get(&key).is_none_or(|kept| c.parks >= kept.parks) {
                newest.insert(key, c);
            }
        }
    }
    let ledger = relay_ledger::open_read_only(&config.ledger.url).await?;
    let mut items = Vec::new();
    for ((sink, event_id), copy) in newest {
        let report = match &copy.subject_id {
            Some(subject) => relay_ledger::Ledger::subject_report(&ledger, subject).await?,
            None => Default::default(),
        };
        let status = report
            .deliveries
            .iter()
            .filter(|d| d.key.sink == sink && d.key.event_id.to_string() == event_id)
            .map(|d| d.status.as_str())
            .min_by_key(|s| *s != "parked")
            .unwrap_or("unknown")
            .to_owned();
        items.push(ParkedItem { copy, status });
    }
    Ok(items)
}

async fn parked(config: Config, command: ParkedCommand) -> Result<(), AppError> {
    let enabled: Vec<String> = config
        .sinks
        .iter()
        .filter(|e| e.settings.enabled)
        .flat_map(|e| e.config.destinations())
        .collect();
    let known = |s: &str| !config.destinations_named(s).is_empty();
    match command {
        ParkedCommand::List { sink, all, json } => {
            let sinks = match sink {
                Some(s) if !known(&s) => {
                    return Err(AppError::Usage(format!("--sink {s}: not configured")))
                }
                Some(s) => config.destinations_named(&s),
                None => enabled,
            };
            let items: Vec<ParkedItem> = parked_items(&config, sinks)
                .await?
                .into_iter()
                .filter(|i| all || i.status == "parked")
                .collect();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&items).unwrap_or_default()
                );
                return Ok(());
            }
            println!(
                "{:<24} {:<38} {:<20} {:>5} {:<20} {:<20} {:<13} REASON",
                "SINK", "EVENT", "SUBJECT", "PARKS", "FAILING-SINCE", "DUE", "STATUS"
            );
            for i in &items {
                let c = &i.copy;
                println!(
                    "{:<24} {:<38} {:<20} {:>5} {:<20} {:<20} {:<13} {}",
                    c.sink,
                    c.event_id.as_deref().unwrap_or("-"),
                    c.subject_id.as_deref().unwrap_or("-"),
                    c.parks,
                    ledger_report::when(c.first_failed_ms),
                    ledger_report::when(c.due_ms),
                    i.status,
                    c.reason
                );
            }
            Ok(())
        }
        ParkedCommand::Retry { sink, event_id } => {
            if !known(&sink) {
                return Err(AppError::Usage(format!("--sink {sink}: not configured")));
            }
            let destinations = config.destinations_named(&sink);
            let chosen: Vec<relay_runtime::parking::ParkedCopy> =
                parked_items(&config, destinations)
                    .await?
                    .into_iter()
                    .filter(|i| i.status == "parked")
                    .filter(|i| event_id.is_none() || i.copy.event_id == event_id)
                    .map(|i| i.copy)
                    .collect();
            relay_runtime::parking::retry_now(&config.kafka, &chosen).await?;
            println!("{} parked item(s) of {sink} due now", chosen.len());
            Ok(())
        }
    }
}

/// `suppression export`'s file formats.
#[derive(Clone, Copy, clap::ValueEnum)]
enum SuppressionFormat {
    Csv,
    Sha256,
    Meta,
    Google,
    HubspotIds,
}

/// One value per line under `header` (none for `None`): the text, how many subjects it holds,
/// and how many gave no value.
fn one_per_line<'a>(
    header: Option<&str>,
    values: impl Iterator<Item = Vec<&'a str>>,
) -> (String, usize, usize) {
    let mut text = header.map_or_else(String::new, |h| format!("{h}\n"));
    let (mut subjects, mut without) = (0, 0);
    for found in values {
        if found.is_empty() {
            without += 1;
            continue;
        }
        subjects += 1;
        for v in found {
            text.push_str(v);
            text.push('\n');
        }
    }
    (text, subjects, without)
}

/// `--since`: RFC 3339 in UTC, or a date meaning its midnight UTC; milliseconds since the epoch.
fn parse_since(text: &str) -> Result<i64, String> {
    // humantime reads only UTC and ignores an offset after fractional seconds: refuse one
    // rather than be hours off.
    if text
        .split_once('T')
        .is_some_and(|(_, time)| time.contains(['+', '-']))
    {
        return Err("UTC only: write the time with Z, e.g. 2026-11-01T08:30:00Z".to_owned());
    }
    let full = if text.len() == 10 {
        format!("{text}T00:00:00Z")
    } else {
        text.to_owned()
    };
    let at = humantime::parse_rfc3339_weak(&full).map_err(|e| {
        format!("{e}: expected 2026-11-01 or 2026-11-01T08:30:00Z (UTC; offsets are not read)")
    })?;
    let ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| "before 1970".to_owned())?
        .as_millis();
    i64::try_from(ms).map_err(|_| "too far in the future".to_owned())
}

async fn suppression_export(
    config: Config,
    purpose: &str,
    format: SuppressionFormat,
    output: Option<PathBuf>,
    since: Option<i64>,
) -> Result<(), AppError> {
    if !config.purposes.contains_key(purpose) {
        return Err(AppError::Usage(format!(
            "--purpose {purpose}: not in the [purposes] table"
        )));
    }
    let ledger = relay_ledger::open_read_only(&config.ledger.url).await?;
    let records = relay_ledger::Ledger::consent_for_purpose(&ledger, purpose).await?;
    // The newest decision of each person first, then the window: a person who withdrew before
    // --since and has not changed their mind since is not news, one who granted again is not
    // suppressed at all.
    let list: Vec<_> = relay_ledger::suppression_list(&records)
        .into_iter()
        .filter(|s| since.is_none_or(|t| s.occurred_at_ms >= t))
        .collect();
    let (text, rows, left_out) = match format {
        SuppressionFormat::Csv => (ledger_report::to_suppression_csv(&list), list.len(), 0),
        SuppressionFormat::Sha256 | SuppressionFormat::Meta => {
            let header = matches!(format, SuppressionFormat::Meta).then_some("email");
            one_per_line(
                header,
                list.iter()
                    .map(|s| s.email_sha256.as_deref().into_iter().collect()),
            )
        }
        SuppressionFormat::Google => one_per_line(
            Some("Email"),
            list.iter().map(|s| {
                [&s.google_email_sha256, &s.google_email_plus_sha256]
                    .into_iter()
                    .filter_map(|h| h.as_deref())
                    .collect()
            }),
        ),
        SuppressionFormat::HubspotIds => one_per_line(
            Some("subject_id"),
            list.iter().map(|s| vec![s.subject_id.as_str()]),
        ),
    };
    let target = match &output {
        Some(path) => {
            // Complete or not at all: a list that marketing imports must not be a torn one.
            let mut partial = path.as_os_str().to_owned();
            partial.push(".partial");
            let written = std::fs::File::create(&partial)
                .and_then(|mut f| {
                    std::io::Write::write_all(&mut f, text.as_bytes())?;
                    f.sync_all()
                })
                .and_then(|()| std::fs::rename(&partial, path));
            if let Err(source) = written {
                let _ = std::fs::remove_file(&partial);
                return Err(AppError::Io {
                    path: path.display().to_string(),
                    source,
                });
            }
            path.display().to_string()
        }
        None => {
            print!("{text}");
            "stdout".to_owned()
        }
    };
    let without_email = if left_out > 0 {
        format!(" ({left_out} without the hash this format needs left out)")
    } else {
        String::new()
    };
    eprintln!("suppression export: {rows} suppressed for {purpose} to {target}{without_email}");
    Ok(())
}

fn schemas_check() -> Result<(), AppError> {
    use relay_events::schemas;
    println!(
        "{:<40} {:>7}  {:<16}  {:<16}",
        "SCHEMA", "VERSION", "FINGERPRINT", "APACHE-AVRO FP"
    );
    for s in schemas::all() {
        println!(
            "{:<40} {:>7}  {:016x}  {:016x}",
            s.full_name(),
            s.version,
            s.fingerprint,
            s.apache_avro_fingerprint
        );
    }
    let mut failures = Vec::new();
    for line in schemas::evolution_report() {
        match line {
            Ok(ok) => println!("ok    {ok}"),
            Err(e) => {
                println!("FAIL  {e}");
                failures.push(e);
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(AppError::Usage(format!(
            "{} incompatible schema version(s)",
            failures.len()
        )))
    }
}

/// The consumer groups of the enabled sinks' destinations.
fn sink_groups(config: &Config) -> Vec<String> {
    config
        .sinks
        .iter()
        .filter(|e| e.settings.enabled)
        .flat_map(|e| e.config.destinations())
        .map(|d| config.kafka.group_id(&d))
        .collect()
}

async fn lag(config: Config, groups: Vec<String>, json: bool) -> Result<(), AppError> {
    let groups = if groups.is_empty() {
        sink_groups(&config)
    } else {
        groups
    };
    if groups.is_empty() {
        return Err(AppError::Usage(
            "no sink is enabled and no --group given".to_owned(),
        ));
    }
    // A destination's `.parked` group reads its retry topic, not the source topics.
    let retry_topics: std::collections::BTreeMap<String, String> = config
        .destinations()
        .into_iter()
        .map(|d| {
            (
                config.kafka.parked_group_id(&d),
                config.kafka.retry_topic(&d),
            )
        })
        .collect();
    let mut rows = Vec::new();
    for group in groups {
        let kafka = config.kafka.clone();
        let topics = retry_topics
            .get(&group)
            .map_or_else(|| kafka.topics.clone(), |t| vec![t.clone()]);
        let lags = tokio::task::spawn_blocking(move || {
            relay_runtime::lag::describe(&kafka, &group, &topics)
        })
        .await
        .map_err(|e| AppError::Usage(format!("lag task failed: {e}")))?
        .map_err(relay_runtime::RuntimeError::Kafka)?;
        rows.extend(lags);
    }
    // A group nobody ever ran looks like one with everything to do: say which it is (on stderr,
    // so `--json` stays parseable).
    let mut unknown: Vec<&str> = rows
        .iter()
        .filter(|r| r.group_state.as_deref() == Some("Dead"))
        .map(|r| r.group.as_str())
        .collect();
    unknown.dedup();
    for group in unknown {
        if rows
            .iter()
            .filter(|r| r.group == group)
            .all(|r| r.committed.is_none())
        {
            eprintln!(
                "warning: consumer group {group} does not exist (no members, no committed offsets): its lag is the whole log"
            );
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
        return Ok(());
    }
    let table: Vec<[String; 11]> = rows
        .iter()
        .map(|r| {
            let member = r.member.as_ref();
            [
                r.group.clone(),
                r.topic.clone(),
                r.partition.to_string(),
                r.committed.map_or("-".to_owned(), |o| o.to_string()),
                r.log_end.to_string(),
                r.lag.to_string(),
                member.map_or("-".to_owned(), |m| m.consumer_id.clone()),
                member.map_or("-".to_owned(), |m| m.host.clone()),
                member.map_or("-".to_owned(), |m| m.client_id.clone()),
                r.oldest_unapplied_age_seconds
                    .map_or("-".to_owned(), |s| format!("{s:.1}s")),
                r.group_state.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    const HEADER: [&str; 11] = [
        "GROUP",
        "TOPIC",
        "PARTITION",
        "CURRENT-OFFSET",
        "LOG-END-OFFSET",
        "LAG",
        "CONSUMER-ID",
        "HOST",
        "CLIENT-ID",
        "OLDEST-UNAPPLIED",
        "STATE",
    ];
    // kafka-consumer-groups' columns in its order, ours after them; names left-aligned, figures
    // right-aligned, as it prints them.
    print_table(&HEADER, &table, |column| {
        (2..=5).contains(&column) || column == 9
    });
    Ok(())
}

/// Prints `header` and `rows` with every column as wide as its widest value, so long names do not
/// break the columns; `right(column)` right-aligns a column of figures.
fn print_table<const N: usize>(
    header: &[&str; N],
    rows: &[[String; N]],
    right: impl Fn(usize) -> bool,
) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let text: Vec<String> = cells
            .zip(widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if right(i) {
                    format!("{c:>w$}")
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        println!("{}", text.join(" ").trim_end());
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
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
    // The consumers hold every event to the clock rule; one that would be dead-lettered as
    // future_occurred_at is refused here, before anything is sent.
    let now_ms = relay_ledger::now_ms();
    for (n, line) in reader.lines().enumerate() {
        let line = line.map_err(|source| AppError::Io {
            path: input.display().to_string(),
            source,
        })?;
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        // Every problem of a line, not only the first: the structural ones (unknown keys, missing
        // or mistyped fields); if there are none, each rule, the clock rule and the purposes.
        let ev = match relay_events::json::from_json_line_unvalidated(&line) {
            Ok(ev) => ev,
            Err(all) => {
                problems.extend(all.iter().map(|e| format!("line {}: {e}", n + 1)));
                continue;
            }
        };
        let mut found: Vec<String> = ev.problems().iter().map(ToString::to_string).collect();
        if let Err(e) = relay_events::check_occurred_at(
            ev.occurred_at_ms,
            None,
            now_ms,
            config.events.future_tolerance_ms,
        ) {
            found.push(e.to_string());
        }
        // Every consumer would dead-letter it as unknown_purpose.
        if let relay_events::Scope::Purposes(purposes) = &ev.scope {
            for p in purposes
                .iter()
                .filter(|p| !config.purposes.contains_key(*p))
            {
                found.push(format!("purpose {p:?} is not in the [purposes] table"));
            }
        }
        if found.is_empty() {
            events.push(ev);
        }
        problems.extend(found.into_iter().map(|f| format!("line {}: {f}", n + 1)));
    }
    if problems.is_empty() && events.is_empty() {
        return Err(AppError::Usage(format!(
            "{}: no events (only blank or comment lines); nothing published",
            input.display()
        )));
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
