//! `consent-relay reconcile`: make a downstream show the ledger's newest decision again, whatever
//! happened to requests whose fate was unknown, or to people changed by hand at the vendor.
//!
//! - HubSpot (readable): page through the CRM contacts (100 a page), read their v4 subscription
//!   statuses (100 a request), hash each address as the ledger does
//!   (`relay_events::normalize::email_sha256`) and join on the hash with the ledger's newest
//!   decision per (subject, purpose). A downstream that shows more consent than the ledger is
//!   repaired through the sink's own request builder (`Sink::deliver`); one that shows less is
//!   reported and left alone unless `--restore-grants`.
//! - Ad audiences (write-only): re-send removals, at the platform's full batch size, for everyone
//!   whose newest decision for every purpose routed to the audience is a withdrawal or erasure.
//!   Hashes only: the ledger's, or for Google the ones the ledger keeps of Google's normalization.
//!
//! Each repair the downstream applied is recorded on the delivery of the decision it re-sent
//! (`Ledger::record_repairs`): `ledger audit` shows it, and `ingest` takes the vendor's report of
//! it for the relay's own change. Nothing else is written, and a rerun after a crash starts over:
//! HubSpot's state is read again (what was repaired is now in sync), and removals are idempotent
//! at every platform.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use relay_delivery::{Change, Outcome, Sink, SinkItem, Target};
use relay_events::{normalize, Action, ConsentEvent, Contact, EventKind, Scope};
use relay_ledger::{effective, AnyLedger, DeliveryKey, Repair, SinkState, Status};
use relay_runtime::Telemetry;
use relay_sink_audiences::{AudiencesConfig, AudiencesSink, BatchPosition, LedgerHash};
use relay_sink_hubspot::{HubSpotConfig, HubSpotSink, ReadStatus, READ_PAGE};
use relay_sink_newsletter::{ListStatus, NewsletterConfig, NewsletterSink};

use crate::config::Config;
use crate::progress::Progress;

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// `hubspot`, `audiences`, or a destination name (`audiences.meta-eu`).
    pub sink: String,
    /// One destination of the sink (`meta-eu` or `audiences.meta-eu`).
    pub destination: Option<String>,
    pub dry_run: bool,
    pub restore_grants: bool,
    /// Per-pair lines and progress as log lines (scheduled runs inside `run`) instead of stdout
    /// and stderr.
    pub log: bool,
}

/// One per-pair or per-destination line: stdout for the command, the log inside `run`.
/// Sorts one difference between the ledger and a downstream, and says so: in sync, or more
/// consent downstream than in the ledger (reported and left alone unless `--restore-grants`), or
/// to repair (only announced in a dry run). True: send the repair now.
fn triage(
    options: &Options,
    figures: &mut Figures,
    line: &str,
    less: bool,
    more: bool,
    vendor: &str,
) -> bool {
    if !(less || (more && options.restore_grants)) {
        if more {
            figures.reported += 1;
            say(
                options,
                format!("report  {line} (left alone: the person may have unsubscribed at {vendor}; --restore-grants re-subscribes)"),
            );
        } else {
            figures.in_sync += 1;
        }
        return false;
    }
    let verb = if options.dry_run {
        "would repair"
    } else {
        "repair"
    };
    say(options, format!("{verb}  {line}"));
    if options.dry_run {
        figures.repaired += 1;
        return false;
    }
    true
}

fn say(options: &Options, line: String) {
    if options.log {
        tracing::info!(target: "consent_relay::reconcile", "{line}");
    } else {
        println!("{line}");
    }
}

/// The figures of one destination's run. A "pair" is a (subject, purpose).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Figures {
    /// Pairs compared with the downstream (readable APIs), or subjects with a decision (audiences).
    pub checked: u64,
    pub in_sync: u64,
    /// Pairs changed towards the ledger (or, dry run, that would be); removals re-sent for
    /// audiences.
    pub repaired: u64,
    /// Pairs where the downstream shows less consent than the ledger, left alone.
    pub reported: u64,
    /// Repairs that did not go through.
    pub failed: u64,
    /// Downstream contacts the ledger has no subject for (not compared).
    pub unknown: u64,
    /// Subjects the ledger has no email hash for (cannot be addressed).
    pub no_hash: u64,
    /// Requests sent (reads and repairs).
    pub requests: u64,
    /// Repairs made whose record in the ledger failed (said as they happen).
    pub unrecorded: u64,
}

impl Figures {
    fn export(&self, telemetry: &Telemetry, destination: &str) {
        for (figure, value) in [
            ("checked", self.checked),
            ("in_sync", self.in_sync),
            ("repaired", self.repaired),
            ("reported", self.reported),
            ("failed", self.failed),
            ("unknown", self.unknown),
            ("no_hash", self.no_hash),
        ] {
            telemetry.reconciled(destination, figure, value);
        }
        telemetry.reconcile_requests(destination, self.requests);
    }
}

/// Runs reconcile for the chosen sink and destinations; prints the per-pair lines and a summary
/// per destination on stdout, and adds the figures to `telemetry`. Returns the figures, by
/// destination.
pub async fn run(
    config: &Config,
    options: &Options,
    ledger: &AnyLedger,
    telemetry: &Telemetry,
) -> Result<Vec<(String, Figures)>, String> {
    let (section, only) = match options.sink.split_once('.') {
        Some((s, d)) => (s.to_owned(), Some(d.to_owned())),
        None => (options.sink.clone(), None),
    };
    let wanted = options
        .destination
        .as_deref()
        .map(|d| {
            d.strip_prefix(&format!("{section}."))
                .unwrap_or(d)
                .to_owned()
        })
        .or(only);
    let entry = config
        .sinks
        .iter()
        .find(|e| e.name == section)
        .ok_or_else(|| format!("--sink {section}: not configured under [sinks]"))?;
    let any = entry.config.as_any();
    if let Some(hubspot) = any.downcast_ref::<HubSpotConfig>() {
        if wanted.as_deref().is_some_and(|d| d != "hubspot") {
            return Err("HubSpot has one destination, `hubspot`".to_owned());
        }
        let figures = hubspot_run(hubspot, options, ledger).await?;
        figures.export(telemetry, "hubspot");
        return Ok(vec![("hubspot".to_owned(), figures)]);
    }
    if let Some(audiences) = any.downcast_ref::<AudiencesConfig>() {
        return audiences_run(audiences, wanted.as_deref(), options, ledger, telemetry).await;
    }
    if let Some(newsletter) = any.downcast_ref::<NewsletterConfig>() {
        return newsletter_run(newsletter, wanted.as_deref(), options, ledger, telemetry).await;
    }
    Err(format!(
        "reconcile of `{section}` is not implemented: partner webhooks can neither be read back \
         nor told to forget without the person's address"
    ))
}

/// What HubSpot shows for one purpose: any of its subscription types subscribed, else any
/// unsubscribed, else nothing.
fn shown(statuses: Option<&BTreeMap<i64, ReadStatus>>, ids: &[i64]) -> ReadStatus {
    let Some(statuses) = statuses else {
        return ReadStatus::NotSpecified;
    };
    let of: Vec<ReadStatus> = ids
        .iter()
        .filter_map(|id| statuses.get(id).copied())
        .collect();
    if of.contains(&ReadStatus::Subscribed) {
        ReadStatus::Subscribed
    } else if of.contains(&ReadStatus::Unsubscribed) {
        ReadStatus::Unsubscribed
    } else {
        ReadStatus::NotSpecified
    }
}

fn status_name(s: ReadStatus) -> &'static str {
    match s {
        ReadStatus::Subscribed => "SUBSCRIBED",
        ReadStatus::Unsubscribed => "UNSUBSCRIBED",
        ReadStatus::NotSpecified => "NOT_SPECIFIED",
    }
}

/// The ledger's decisions of one sink, by subject, and the subject of each email hash.
struct LedgerView {
    by_subject: HashMap<String, BTreeMap<String, SinkState>>,
    by_hash: HashMap<String, String>,
}

fn view(states: Vec<SinkState>) -> LedgerView {
    let mut by_subject: HashMap<String, BTreeMap<String, SinkState>> = HashMap::new();
    let mut by_hash: HashMap<String, String> = HashMap::new();
    for s in states {
        if let Some(hash) = &s.email_sha256 {
            by_hash
                .entry(hash.clone())
                .or_insert_with(|| s.subject_id.clone());
        }
        by_subject
            .entry(s.subject_id.clone())
            .or_default()
            .insert(s.target.clone(), s);
    }
    LedgerView {
        by_subject,
        by_hash,
    }
}

/// A repair of `destination` that the downstream applied (or put to the person to confirm), as
/// the ledger records it; `None` for any other answer (already so: nothing was changed there).
fn repair_of(destination: &str, item: &SinkItem, outcome: &Outcome) -> Option<Repair> {
    let status = match outcome {
        Outcome::Applied => Status::Applied,
        Outcome::AwaitingConfirmation => Status::AwaitingConfirmation,
        _ => return None,
    };
    Some(Repair {
        key: DeliveryKey {
            event_id: item.event.event_id,
            sink: destination.to_owned(),
            target: item.change.target_key().to_owned(),
        },
        subject_id: item.event.subject_id.clone(),
        status,
    })
}

/// Records `repairs`; a failure is said and counted, and the run goes on: the repairs are made,
/// and stopping would leave the rest of the downstream unrepaired.
async fn record(
    ledger: &AnyLedger,
    options: &Options,
    figures: &mut Figures,
    destination: &str,
    repairs: &[Repair],
) {
    if repairs.is_empty() {
        return;
    }
    if let Err(e) = ledger.record_repairs(repairs).await {
        figures.unrecorded += repairs.len() as u64;
        say(
            options,
            format!(
                "warning: {} repair(s) made at {destination} but not recorded in the ledger: {e}",
                repairs.len()
            ),
        );
    }
}

/// A sink item that re-asserts `state` for `email` (the address as HubSpot listed it), so that
/// the sink builds exactly the request the event itself would have.
fn repair_item(state: &SinkState, purpose: &str, email: &str) -> SinkItem {
    let (kind, change) = match (state.action, state.target.as_str()) {
        (Action::Erase, _) => (EventKind::ErasureRequested, Change::Erase),
        (Action::Withdraw, "*") => (EventKind::Unsubscribed, Change::WithdrawAll),
        (Action::Withdraw, _) => (
            EventKind::ConsentWithdrawn,
            Change::Withdraw(purpose.to_owned()),
        ),
        (Action::Grant, _) => (EventKind::ConsentGranted, Change::Grant(purpose.to_owned())),
    };
    let scope = match change.target() {
        Target::All => Scope::All,
        Target::Purpose(p) => Scope::Purposes(vec![p]),
    };
    let event = ConsentEvent {
        event_id: uuid::Uuid::parse_str(&state.event_id).unwrap_or_else(|_| uuid::Uuid::new_v4()),
        kind,
        subject_id: state.subject_id.clone(),
        occurred_at_ms: state.occurred_at_ms,
        source: "reconcile".to_owned(),
        notice_version: state.notice_version.clone(),
        scope,
        contact: Contact {
            email: Some(email.to_owned()),
            ..Contact::default()
        },
    };
    SinkItem {
        event: Arc::new(event),
        change,
    }
}

async fn hubspot_run(
    config: &HubSpotConfig,
    options: &Options,
    ledger: &AnyLedger,
) -> Result<Figures, String> {
    let sink = HubSpotSink::new(config.clone()).map_err(|e| format!("sinks.hubspot: {e}"))?;
    let ledger_view = view(
        ledger
            .sink_states("hubspot")
            .await
            .map_err(|e| e.to_string())?,
    );
    let purposes = sink.purpose_subscriptions();
    let mut figures = Figures::default();
    let mut progress = Progress::new("reconcile hubspot".to_owned(), None, options.log);
    let mut contacts = 0u64;
    let mut after: Option<String> = None;
    loop {
        let page = sink.list_contacts(after.as_deref()).await?;
        figures.requests += 1;
        for emails in page.emails.chunks(READ_PAGE) {
            let statuses = sink.read_statuses(emails).await?;
            figures.requests += 1;
            // Items to send for this page, with the (subject, purpose) pairs each stands for.
            let mut items: Vec<SinkItem> = Vec::new();
            let mut pairs_of_item: Vec<u64> = Vec::new();
            for email in emails {
                contacts += 1;
                let hash = normalize::email_sha256(email);
                let Some(subject) = ledger_view.by_hash.get(&hash) else {
                    figures.unknown += 1;
                    continue;
                };
                let states = &ledger_view.by_subject[subject];
                let all = states.get("*");
                // A whole-subject repair (unsubscribe-all, erasure) is one item for all pairs.
                let mut whole: Option<(SinkItem, u64)> = None;
                for (purpose, ids) in &purposes {
                    let Some(decision) = effective(states.get(purpose), all) else {
                        continue;
                    };
                    figures.checked += 1;
                    let at = shown(statuses.get(email), ids);
                    let erased_but_listed = decision.action == Action::Erase;
                    let less = decision.action != Action::Grant
                        && (at == ReadStatus::Subscribed || erased_but_listed);
                    let more = decision.action == Action::Grant && at != ReadStatus::Subscribed;
                    let line = format!(
                        "subject={subject} purpose={purpose} hubspot={} ledger={}",
                        if erased_but_listed && at != ReadStatus::Subscribed {
                            "CONTACT_EXISTS"
                        } else {
                            status_name(at)
                        },
                        decision.action.as_str()
                    );
                    if !triage(options, &mut figures, &line, less, more, "HubSpot") {
                        continue;
                    }
                    // One unsubscribe-all or GDPR delete per contact, however many purposes.
                    if decision.target == "*" || decision.action == Action::Erase {
                        match &mut whole {
                            Some((_, n)) => *n += 1,
                            None => whole = Some((repair_item(decision, purpose, email), 1)),
                        }
                    } else {
                        items.push(repair_item(decision, purpose, email));
                        pairs_of_item.push(1);
                    }
                }
                if let Some((item, n)) = whole {
                    items.push(item);
                    pairs_of_item.push(n);
                }
            }
            if !items.is_empty() {
                let outcomes = sink.deliver(&items).await;
                // The sink sends one request per call it plans; count them as planned.
                figures.requests += outcomes.len().div_ceil(READ_PAGE) as u64;
                let repairs: Vec<Repair> = items
                    .iter()
                    .zip(&outcomes)
                    .filter_map(|(item, outcome)| repair_of(sink.name(), item, outcome))
                    .collect();
                record(ledger, options, &mut figures, sink.name(), &repairs).await;
                for ((item, outcome), pairs) in items.iter().zip(&outcomes).zip(&pairs_of_item) {
                    if outcome.is_done() {
                        figures.repaired += pairs;
                    } else {
                        figures.failed += pairs;
                        say(
                            options,
                            format!(
                                "failed  subject={} {}",
                                item.event.subject_id,
                                outcome.reason().unwrap_or("not applied")
                            ),
                        );
                    }
                }
            }
        }
        progress.update(contacts, "contacts read");
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    progress.finish();
    Ok(figures)
}

/// The subjects `audience` must not hold: every purpose routed to it has a withdrawal or erasure
/// as its newest decision (a whole-subject one counting for all). Their email hashes as the
/// platform knows them, in subject order, each with the decisions its removal re-sends, and the
/// count of those without one; plus how many subjects have any decision.
fn removals(
    states: Vec<SinkState>,
    purposes: &[String],
    platform: LedgerHash,
) -> (Vec<Removal>, u64, u64) {
    let view = view(states);
    let mut subjects: Vec<&String> = view.by_subject.keys().collect();
    subjects.sort();
    let mut hashes = Vec::new();
    let mut no_hash = 0;
    let mut checked = 0;
    for subject in subjects {
        let states = &view.by_subject[subject];
        let all = states.get("*");
        let decisions: Vec<&SinkState> = purposes
            .iter()
            .filter_map(|p| effective(states.get(p.as_str()), all))
            .chain(if purposes.is_empty() { all } else { None })
            .collect();
        if decisions.is_empty() {
            continue;
        }
        checked += 1;
        if decisions.iter().any(|d| d.action == Action::Grant) {
            continue;
        }
        let Some(hash) = states.values().find_map(|s| platform_hash(s, platform)) else {
            no_hash += 1;
            continue;
        };
        let mut decisions: Vec<(&str, &str)> = decisions
            .iter()
            .map(|d| (d.event_id.as_str(), d.target.as_str()))
            .collect();
        decisions.sort_unstable();
        decisions.dedup();
        let decisions = decisions
            .into_iter()
            .map(|(event_id, target)| (subject.clone(), event_id.to_owned(), target.to_owned()))
            .collect();
        match hashes.last_mut() {
            // One address under two subject ids: one removal.
            Some(Removal {
                hash: last,
                decisions: d,
            }) if *last == hash => d.extend::<Vec<_>>(decisions),
            _ => hashes.push(Removal { hash, decisions }),
        }
    }
    (hashes, no_hash, checked)
}

/// An address an audience must not hold, and the decisions (subject, event id, target) its
/// removal re-sends.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Removal {
    hash: String,
    decisions: Vec<(String, String, String)>,
}

impl Removal {
    /// The ledger's record of this removal at `destination`, once the platform applied it.
    fn repairs(&self, destination: &str) -> impl Iterator<Item = Repair> + '_ {
        let destination = destination.to_owned();
        self.decisions
            .iter()
            .filter_map(move |(subject, event_id, target)| {
                Some(Repair {
                    key: DeliveryKey {
                        event_id: uuid::Uuid::parse_str(event_id).ok()?,
                        sink: destination.clone(),
                        target: target.clone(),
                    },
                    subject_id: subject.clone(),
                    status: Status::Applied,
                })
            })
    }
}

/// The hash of the subject's address that `platform` knows, of those the ledger keeps.
fn platform_hash(state: &SinkState, platform: LedgerHash) -> Option<String> {
    match platform {
        LedgerHash::Email => state.email_sha256.clone(),
        LedgerHash::Google { plus_removed } => {
            let without_tag = state
                .google_email_plus_sha256
                .as_ref()
                .filter(|_| plus_removed);
            without_tag.or(state.google_email_sha256.as_ref()).cloned()
        }
    }
}

async fn audiences_run(
    config: &AudiencesConfig,
    wanted: Option<&str>,
    options: &Options,
    ledger: &AnyLedger,
    telemetry: &Telemetry,
) -> Result<Vec<(String, Figures)>, String> {
    let sinks =
        AudiencesSink::per_audience(config.clone()).map_err(|e| format!("sinks.audiences: {e}"))?;
    if let Some(w) = wanted {
        if !config.audiences.contains_key(w) {
            return Err(format!(
                "--destination {w}: no such audience (configured: {})",
                config
                    .audiences
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    if options.restore_grants {
        say(
            options,
            "note: --restore-grants has no effect on audiences: only removals are re-sent"
                .to_owned(),
        );
    }
    let mut out = Vec::new();
    for sink in &sinks {
        let destination = sink.name().to_owned();
        let audience = destination
            .strip_prefix("audiences.")
            .unwrap_or(&destination)
            .to_owned();
        if wanted.is_some_and(|w| w != audience) {
            continue;
        }
        for name in sink.audience_names() {
            let purposes = sink.purposes_of(&name);
            let states = ledger
                .sink_states(&destination)
                .await
                .map_err(|e| e.to_string())?;
            let (hashes, no_hash, checked) = removals(states, &purposes, sink.ledger_hash(&name));
            let batch = sink.batch_size(&name).unwrap_or(1_000).max(1);
            let mut figures = Figures {
                checked,
                no_hash,
                in_sync: checked - no_hash - hashes.len() as u64,
                ..Figures::default()
            };
            let batches = hashes.len().div_ceil(batch);
            if options.dry_run {
                figures.repaired = hashes.len() as u64;
                say(options, format!(
                    "would re-send {} removal(s) to {destination} in {batches} request(s) of up to {batch}",
                    hashes.len()
                ));
                figures.export(telemetry, &destination);
                out.push((destination.clone(), figures));
                continue;
            }
            let mut progress = Progress::new(
                format!("reconcile {destination}"),
                Some(hashes.len() as u64),
                options.log,
            );
            let session_id = fastrand_id();
            for (seq, chunk) in hashes.chunks(batch).enumerate() {
                let position = (batches > 1).then_some(BatchPosition {
                    session_id,
                    seq: seq + 1,
                    last: seq + 1 == batches,
                    total: hashes.len(),
                });
                let mut attempt = 0;
                let chunk_hashes: Vec<String> = chunk.iter().map(|r| r.hash.clone()).collect();
                loop {
                    attempt += 1;
                    let outcome = sink.remove_hashes(&name, &chunk_hashes, position).await;
                    figures.requests += 1;
                    if outcome.is_done() {
                        figures.repaired += chunk.len() as u64;
                        let repairs: Vec<Repair> =
                            chunk.iter().flat_map(|r| r.repairs(&destination)).collect();
                        record(ledger, options, &mut figures, &destination, &repairs).await;
                        break;
                    }
                    let retry = matches!(
                        outcome,
                        Outcome::Retryable { .. } | Outcome::Unavailable { .. }
                    ) && attempt < 3;
                    if !retry {
                        figures.failed += chunk.len() as u64;
                        say(
                            options,
                            format!(
                                "failed  {destination}: batch {} of {batches}: {}",
                                seq + 1,
                                outcome.reason().unwrap_or("not applied")
                            ),
                        );
                        break;
                    }
                    let wait = match &outcome {
                        Outcome::Unavailable { after: Some(a), .. } => *a,
                        _ => Duration::from_secs(attempt),
                    };
                    tokio::time::sleep(wait.min(Duration::from_secs(60))).await;
                }
                progress.update(figures.repaired + figures.failed, "removals");
            }
            progress.finish();
            figures.export(telemetry, &destination);
            out.push((destination.clone(), figures));
        }
    }
    Ok(out)
}

/// The decision that stands for a subject on a list fed by several purposes: the newest grant if
/// any purpose is granted (the list keeps them), else the newest withdrawal or erasure.
fn list_decision<'a>(
    states: &'a BTreeMap<String, SinkState>,
    purposes: &[String],
) -> Option<&'a SinkState> {
    let all = states.get("*");
    let decisions: Vec<&SinkState> = purposes
        .iter()
        .filter_map(|p| effective(states.get(p.as_str()), all))
        .collect();
    let newest = |want_grant: bool| {
        decisions
            .iter()
            .filter(|d| (d.action == Action::Grant) == want_grant)
            .max_by_key(|d| d.occurred_at_ms)
            .copied()
    };
    newest(true).or_else(|| newest(false))
}

async fn newsletter_run(
    config: &NewsletterConfig,
    wanted: Option<&str>,
    options: &Options,
    ledger: &AnyLedger,
    telemetry: &Telemetry,
) -> Result<Vec<(String, Figures)>, String> {
    if let Some(w) = wanted {
        if !config.lists.contains_key(w) {
            return Err(format!(
                "--destination {w}: no such list (configured: {})",
                config.lists.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    let sinks =
        NewsletterSink::per_list(config.clone()).map_err(|e| format!("sinks.newsletter: {e}"))?;
    let mut out = Vec::new();
    for sink in &sinks {
        let Some((list, provider)) = sink.single_list() else {
            continue;
        };
        let list = list.to_owned();
        if wanted.is_some_and(|w| w != list) {
            continue;
        }
        let destination = sink.name().to_owned();
        let purposes: Vec<String> = sink.purposes().into_iter().collect();
        let ledger_view = view(
            ledger
                .sink_states(&destination)
                .await
                .map_err(|e| e.to_string())?,
        );
        let mut figures = Figures::default();
        let mut progress = Progress::new(format!("reconcile {destination}"), None, options.log);
        let mut read = 0u64;
        let mut offset = 0usize;
        let mut stuck = 0;
        let mut seen: std::collections::HashSet<String> = Default::default();
        loop {
            let page = sink.read_list(&list, offset).await?;
            figures.requests += 1;
            if let Some(total) = page.total {
                progress.total = Some(total);
            }
            let mut items = Vec::new();
            for (email, status) in &page.members {
                // Stepping back after removals may show a member twice.
                if !seen.insert(email.clone()) {
                    continue;
                }
                read += 1;
                let hash = normalize::email_sha256(email);
                let Some(subject) = ledger_view.by_hash.get(&hash) else {
                    figures.unknown += 1;
                    continue;
                };
                let Some(decision) = list_decision(&ledger_view.by_subject[subject], &purposes)
                else {
                    continue;
                };
                figures.checked += 1;
                let less = match decision.action {
                    Action::Erase => true,
                    Action::Withdraw => *status == ListStatus::Subscribed,
                    Action::Grant => false,
                };
                let more = decision.action == Action::Grant && *status == ListStatus::Unsubscribed;
                let shown = match status {
                    ListStatus::Subscribed => "subscribed",
                    ListStatus::Unsubscribed => "unsubscribed",
                    ListStatus::Other => "other",
                };
                let line = format!(
                    "subject={subject} list={list} {provider}={shown} ledger={}",
                    decision.action.as_str()
                );
                if !triage(options, &mut figures, &line, less, more, provider) {
                    continue;
                }
                let purpose = if decision.target == "*" {
                    purposes.first().cloned().unwrap_or_default()
                } else {
                    decision.target.clone()
                };
                items.push(repair_item(decision, &purpose, email));
            }
            let mut repaired_here = 0usize;
            if !items.is_empty() {
                let outcomes = sink.deliver(&items).await;
                figures.requests += items.len() as u64;
                let repairs: Vec<Repair> = items
                    .iter()
                    .zip(&outcomes)
                    .filter_map(|(item, outcome)| repair_of(&destination, item, outcome))
                    .collect();
                record(ledger, options, &mut figures, &destination, &repairs).await;
                for (item, outcome) in items.iter().zip(&outcomes) {
                    if outcome.is_done() {
                        figures.repaired += 1;
                        // Off the list now: Brevo unlinks (or deletes), a Mailchimp erasure
                        // deletes; a Mailchimp unsubscribe keeps the member.
                        if item.action() == Action::Erase
                            || (provider == "brevo" && item.action() != Action::Grant)
                        {
                            repaired_here += 1;
                        }
                    } else {
                        figures.failed += 1;
                        say(
                            options,
                            format!(
                                "failed  subject={} {}",
                                item.event.subject_id,
                                outcome.reason().unwrap_or("not applied")
                            ),
                        );
                    }
                }
            }
            progress.update(read, "members read");
            match page.next_offset {
                // A repair that takes a member off the list (Brevo unlink, erasure) shifts the
                // members behind it forward: step back by every repair of this page, so that none
                // is skipped (one read twice is merely in sync the second time).
                // A downstream that keeps answering "done" without changing would hold the run
                // on one page: after three reads that did not advance, move on.
                Some(next) => {
                    let back = next - repaired_here.min(next);
                    stuck = if back <= offset { stuck + 1 } else { 0 };
                    offset = if stuck > 3 { next } else { back };
                }
                None => break,
            }
        }
        progress.finish();
        figures.export(telemetry, &destination);
        out.push((destination, figures));
    }
    Ok(out)
}

/// A Meta upload session id: any number not reused soon.
fn fastrand_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos());
    u64::try_from(nanos % u128::from(u64::MAX))
        .unwrap_or(1)
        .max(1)
}

/// The summary line of one destination.
pub fn summary(destination: &str, f: &Figures, dry_run: bool) -> String {
    let repaired = if dry_run { "to repair" } else { "repaired" };
    if destination.starts_with("audiences.") {
        format!(
            "reconcile {destination}: checked {} subject(s), in sync {} (granted, left in), {repaired} {} (removals re-sent; the platform cannot be read back), reported {}, failed {}, without an email hash {}, {} request(s)",
            f.checked, f.in_sync, f.repaired, f.reported, f.failed, f.no_hash, f.requests
        ) + &unrecorded(f)
    } else {
        format!(
            "reconcile {destination}: checked {} (subject, purpose) pair(s), in sync {}, {repaired} {}, reported {}, failed {}, contacts unknown to the ledger {}, {} request(s)",
            f.checked, f.in_sync, f.repaired, f.reported, f.failed, f.unknown, f.requests
        ) + &unrecorded(f)
    }
}

fn unrecorded(f: &Figures) -> String {
    match f.unrecorded {
        0 => String::new(),
        n => format!(", {n} repair(s) not recorded in the ledger"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(subject: &str, target: &str, action: Action, at: i64) -> SinkState {
        SinkState {
            subject_id: subject.into(),
            target: target.into(),
            action,
            occurred_at_ms: at,
            event_id: uuid::Uuid::new_v4().to_string(),
            email_sha256: Some(normalize::email_sha256(&format!("{subject}@x.de"))),
            google_email_sha256: Some(format!("google-{subject}")),
            google_email_plus_sha256: (subject == "a").then(|| "google-a-untagged".to_owned()),
            notice_version: None,
        }
    }

    #[test]
    fn an_audience_loses_only_those_without_a_newer_grant_for_any_routed_purpose() {
        let purposes = vec!["ads".to_owned(), "retarget".to_owned()];
        let states = vec![
            st("a", "ads", Action::Withdraw, 5),
            st("b", "ads", Action::Withdraw, 5),
            st("b", "retarget", Action::Grant, 6),
            st("c", "ads", Action::Grant, 5),
            st("c", "*", Action::Erase, 7),
            st("d", "ads", Action::Grant, 9),
            st("d", "*", Action::Withdraw, 7),
            st("e", "other", Action::Withdraw, 7),
        ];
        let (found, no_hash, checked) = removals(states.clone(), &purposes, LedgerHash::Email);
        let hashes: Vec<&str> = found.iter().map(|r| r.hash.as_str()).collect();
        assert_eq!(
            hashes,
            vec![
                normalize::email_sha256("a@x.de"),
                normalize::email_sha256("c@x.de")
            ]
        );
        assert_eq!((no_hash, checked), (0, 4));
        // Each removal records the decisions it re-sends: a's withdrawal of ads, c's erasure
        // (which decides ads and retarget alike, recorded once).
        let repairs: Vec<(String, String, String)> = found
            .iter()
            .flat_map(|r| r.repairs("audiences.meta"))
            .map(|r| (r.subject_id, r.key.sink, r.key.target))
            .collect();
        let expect = |s: &str, t: &str| (s.to_owned(), "audiences.meta".to_owned(), t.to_owned());
        assert_eq!(repairs, vec![expect("a", "ads"), expect("c", "*")]);
        assert_eq!(
            found[1].decisions[0].1, states[4].event_id,
            "the erasure's own event"
        );
        let google = |plus_removed| {
            removals(
                states.clone(),
                &purposes,
                LedgerHash::Google { plus_removed },
            )
            .0
            .into_iter()
            .map(|r| r.hash)
            .collect::<Vec<_>>()
        };
        assert_eq!(google(true), vec!["google-a-untagged", "google-c"]);
        assert_eq!(google(false), vec!["google-a", "google-c"]);
    }

    #[test]
    fn what_hubspot_shows_for_a_purpose() {
        let s = BTreeMap::from([(1, ReadStatus::Unsubscribed), (2, ReadStatus::Subscribed)]);
        assert_eq!(shown(Some(&s), &[1, 2]), ReadStatus::Subscribed);
        assert_eq!(shown(Some(&s), &[1]), ReadStatus::Unsubscribed);
        assert_eq!(shown(Some(&s), &[3]), ReadStatus::NotSpecified);
        assert_eq!(shown(None, &[1]), ReadStatus::NotSpecified);
    }
}
