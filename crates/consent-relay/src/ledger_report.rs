//! `ledger show`, `ledger audit` and `suppression export`: what the ledger holds, as text, JSON or
//! CSV.
//!
//! The ledger may hold anything an older version accepted (a year-10000 timestamp, a subject id
//! of one U+202E, 100 000-character strings), and these are the commands a DPO runs on a data
//! subject request, so nothing in a row may make them fail: every timestamp renders, or says it
//! is invalid, and text output shows control and bidi characters escaped.

use std::borrow::Cow;
use std::fmt::Write;

use relay_ledger::{SubjectReport, Suppressed};
use serde_json::json;

/// RFC 3339 where representable, else `invalid (N ms)`: the raw value stays visible.
pub fn when(ms: i64) -> String {
    relay_events::format_timestamp_ms(ms).unwrap_or_else(|| format!("invalid ({ms} ms)"))
}

/// `s` for a terminal or a spreadsheet: control characters, line separators and bidi formatting
/// characters as `\u{…}`, so a stored value can neither move the cursor, forge a line nor flip
/// the rest of the line. Values that pass today's validation come through unchanged.
fn shown(s: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(
                c,
                '\u{061C}'
                    | '\u{200E}'
                    | '\u{200F}'
                    | '\u{202A}'..='\u{202E}'
                    | '\u{2066}'..='\u{2069}'
                    | '\u{2028}'
                    | '\u{2029}'
            )
    };
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            let _ = write!(out, "\\u{{{:04x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

pub fn to_text(subject_id: &str, r: &SubjectReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "subject {}", shown(subject_id));
    let _ = writeln!(out, "\nconsent log ({} event(s)):", r.consent_log.len());
    for c in &r.consent_log {
        let _ = writeln!(
            out,
            "  {}  {:<17} {:<24} source={} notice={} event={}{}",
            when(c.occurred_at_ms),
            shown(&c.kind),
            shown(&c.purposes.join(",")),
            shown(&c.source),
            shown(c.notice_version.as_deref().unwrap_or("-")),
            c.event_id,
            if c.late {
                "  (late: older than the horizon when it arrived)"
            } else {
                ""
            }
        );
    }
    // Columns as wide as the longest destination name (`newsletter.product`, `audiences.meta-eu`).
    let width = r
        .state
        .iter()
        .map(|s| shown(&s.sink).chars().count())
        .chain(
            r.deliveries
                .iter()
                .map(|d| shown(&d.key.sink).chars().count()),
        )
        .max()
        .unwrap_or(0)
        // A name no configuration would hold (the ledger may hold anything) widens nothing.
        .clamp(10, 40);
    let _ = writeln!(out, "\ncurrent decision per sink and purpose:");
    for s in &r.state {
        let _ = writeln!(
            out,
            "  {:<width$} {:<20} {:<9} as of {}  event={}",
            shown(&s.sink),
            shown(&s.target),
            s.action.as_str(),
            when(s.occurred_at_ms),
            s.event_id
        );
    }
    let _ = writeln!(out, "\ndeliveries (by destination, purpose, time):");
    let mut deliveries: Vec<_> = r.deliveries.iter().collect();
    deliveries.sort_by(|a, b| {
        (&a.key.sink, &a.key.target, a.updated_at_ms).cmp(&(
            &b.key.sink,
            &b.key.target,
            b.updated_at_ms,
        ))
    });
    for d in deliveries {
        // The text of a superseded or narrowed row says by what: a note, not an error.
        let label = match d.status {
            relay_ledger::Status::DeadLettered
            | relay_ledger::Status::Retrying
            | relay_ledger::Status::Parked
            | relay_ledger::Status::InFlight => "error",
            _ => "note",
        };
        let _ = writeln!(
            out,
            "  {:<width$} {:<20} {:<16} attempts={}{} event={}{}{}",
            shown(&d.key.sink),
            shown(&d.key.target),
            d.status.as_str(),
            d.attempts,
            match (d.reasserts, d.repairs) {
                (0, 0) => String::new(),
                (n, 0) => format!(" re-asserted={n}"),
                (0, r) => format!(" repaired={r}"),
                (n, r) => format!(" re-asserted={n} repaired={r}"),
            },
            d.key.event_id,
            if d.status == relay_ledger::Status::AwaitingConfirmation {
                "  (the downstream asked the person to confirm: its opt-in email)"
            } else {
                ""
            },
            d.error
                .as_deref()
                .map(|e| format!("  {label}: {}", shown(e)))
                .unwrap_or_default()
        );
    }
    if !r.rejections.is_empty() {
        let _ = writeln!(out, "\nrejected (dead-lettered) messages:");
        for x in &r.rejections {
            let _ = writeln!(
                out,
                "  {:<10} {}/{}@{} {}: {}",
                shown(&x.sink),
                shown(&x.topic),
                x.partition,
                x.offset,
                shown(&x.code),
                shown(&x.message)
            );
        }
    }
    out
}

pub fn to_json(subject_id: &str, r: &SubjectReport) -> serde_json::Value {
    json!({
        "subject_id": subject_id,
        "consent_log": r.consent_log.iter().map(|c| json!({
            "event_id": c.event_id.to_string(), "kind": c.kind, "purposes": c.purposes,
            "occurred_at": when(c.occurred_at_ms), "source": c.source,
            "notice_version": c.notice_version, "email_sha256": c.email_sha256,
            "topic": c.topic, "partition": c.partition, "offset": c.offset,
            "late": c.late, "payload_digest": c.payload_digest,
        })).collect::<Vec<_>>(),
        "state": r.state.iter().map(|s| json!({
            "sink": s.sink, "target": s.target, "action": s.action.as_str(),
            "occurred_at": when(s.occurred_at_ms), "event_id": s.event_id.to_string(),
        })).collect::<Vec<_>>(),
        "deliveries": r.deliveries.iter().map(|d| json!({
            "event_id": d.key.event_id.to_string(), "sink": d.key.sink, "target": d.key.target,
            "status": d.status.as_str(), "attempts": d.attempts, "reasserts": d.reasserts,
            "error_class": d.error_class, "error": d.error, "updated_at": when(d.updated_at_ms),
        })).collect::<Vec<_>>(),
        "rejections": r.rejections.iter().map(|x| json!({
            "sink": x.sink, "topic": x.topic, "partition": x.partition, "offset": x.offset,
            "event_id": x.event_id.map(|i| i.to_string()), "code": x.code, "message": x.message,
        })).collect::<Vec<_>>(),
    })
}

/// Whether the ledger holds anything about the subject of `r`: a decision, a delivery, a state or
/// a dead-lettered event.
pub fn holds_anything(r: &SubjectReport) -> bool {
    !(r.consent_log.is_empty()
        && r.deliveries.is_empty()
        && r.state.is_empty()
        && r.rejections.is_empty())
}

/// One recipient of personal data as a data-subject request names it (GDPR Art. 15(1)(c)): from
/// the configuration, by the destination name the ledger records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The service and account that receives it, e.g. "Meta (Custom Audience 123)".
    pub name: String,
    /// What it receives, e.g. "SHA-256 of the email address".
    pub data: String,
    /// The legal entity and its role (processor, controller), as the privacy notice names them:
    /// `[recipients."<destination>"]`.
    pub entity: Option<String>,
    pub role: Option<String>,
}

impl Recipient {
    /// A recipient as its sink's configuration describes it; [`Recipient::entity`] and
    /// [`Recipient::role`] come from `[recipients]`.
    pub fn of(name: String, data: String) -> Recipient {
        Recipient {
            name,
            data,
            entity: None,
            role: None,
        }
    }

    /// "Meta Platforms Ireland Ltd. (processor): Meta (Custom Audience 123)".
    fn title(&self) -> String {
        let role = self
            .role
            .as_deref()
            .map_or_else(String::new, |r| format!(" ({r})"));
        match &self.entity {
            Some(entity) => format!("{entity}{role}: {}", self.name),
            None => format!("{}{role}", self.name),
        }
    }
}

/// What the person's decisions made a destination do, per target.
#[derive(Debug, Default)]
struct Changes {
    /// By (target, what was done): how often, first and last time.
    done: std::collections::BTreeMap<(String, Change), Done>,
}

/// What a delivery did at its destination. Declared in the order of their texts, the order the
/// audit lists them in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Change {
    AppliedUnlogged,
    Erased,
    Granted,
    InProgress,
    Repaired,
    Refused,
    Unchanged,
    AwaitingConfirmation,
    Withdrawn,
}

impl Change {
    /// The stable name in `--json`.
    fn code(self) -> &'static str {
        match self {
            Change::AppliedUnlogged => "applied_unlogged",
            Change::Erased => "erased",
            Change::Granted => "granted",
            Change::InProgress => "in_progress",
            Change::Repaired => "repaired",
            Change::Refused => "refused",
            Change::Unchanged => "unchanged",
            Change::AwaitingConfirmation => "awaiting_confirmation",
            Change::Withdrawn => "withdrawn",
        }
    }

    fn text(self) -> &'static str {
        match self {
            Change::AppliedUnlogged => "applied (decision not in the consent log)",
            Change::Erased => "erased (deleted)",
            Change::Granted => "granted (added / subscribed)",
            Change::InProgress => "in progress (may have been received)",
            Change::Repaired => "re-sent by reconcile, applied",
            Change::Refused => "sent and refused by the recipient (not applied)",
            Change::Unchanged => "sent, already so there (no change)",
            Change::AwaitingConfirmation => {
                "sent, awaiting the person's confirmation (not subscribed)"
            }
            Change::Withdrawn => "withdrawn (removed / unsubscribed)",
        }
    }
}

/// How often, first and last time; for a refusal or work still in progress, the newest reason
/// the recipient (or the connection to it) gave.
#[derive(Debug)]
struct Done {
    count: usize,
    first: i64,
    last: i64,
    reason: Option<String>,
}

/// What a delivery of an event of `kind` with this status did at its destination; `None` when
/// nothing was sent there (superseded, not routed, or dead-lettered before a request).
fn done_for(kind: Option<&str>, d: &relay_ledger::DeliveryRow) -> Option<Change> {
    use relay_ledger::Status;
    // A row reconcile made for a decision the delivery path never sent there: only its repairs
    // are changes.
    if d.attempts == 0 && d.repairs > 0 {
        return None;
    }
    let action = kind
        .and_then(relay_events::EventKind::from_name)
        .map(|k| k.action());
    Some(match d.status {
        Status::Applied => match action {
            Some(relay_events::Action::Grant) => Change::Granted,
            Some(relay_events::Action::Withdraw) => Change::Withdrawn,
            Some(relay_events::Action::Erase) => Change::Erased,
            None => Change::AppliedUnlogged,
        },
        Status::AlreadyApplied => Change::Unchanged,
        Status::AwaitingConfirmation => Change::AwaitingConfirmation,
        Status::InFlight | Status::Retrying | Status::Parked => Change::InProgress,
        // A request that went and was refused for good; one never sent (no email) did not.
        Status::DeadLettered
            if d.error_class.as_deref() != Some(relay_events::ErrorCode::MissingEmail.as_str()) =>
        {
            Change::Refused
        }
        Status::DeadLettered | Status::Superseded | Status::NotRouted => return None,
    })
}

/// The audit's content, rendered as text or JSON.
struct Audit<'a> {
    report: &'a SubjectReport,
    by_destination: std::collections::BTreeMap<&'a str, Changes>,
}

impl<'a> Audit<'a> {
    fn new(report: &'a SubjectReport) -> Audit<'a> {
        let kinds: std::collections::HashMap<uuid::Uuid, &str> = report
            .consent_log
            .iter()
            .map(|c| (c.event_id, c.kind.as_str()))
            .collect();
        let mut by_destination: std::collections::BTreeMap<&str, Changes> = Default::default();
        for d in &report.deliveries {
            // What reconcile re-sent is a change there too, whatever the delivery path's status
            // (a withdrawal dead-lettered for want of an address, removed from the list by it).
            if let (repairs @ 1.., Some(at)) = (d.repairs, d.repaired_at_ms) {
                let e = by_destination
                    .entry(d.key.sink.as_str())
                    .or_default()
                    .done
                    .entry((d.key.target.clone(), Change::Repaired))
                    .or_insert(Done {
                        count: 0,
                        first: at,
                        last: at,
                        reason: None,
                    });
                e.count += repairs as usize;
                e.first = e.first.min(at);
                e.last = e.last.max(at);
            }
            let Some(done) = done_for(kinds.get(&d.key.event_id).copied(), d) else {
                continue;
            };
            let e = by_destination
                .entry(d.key.sink.as_str())
                .or_default()
                .done
                .entry((d.key.target.clone(), done))
                .or_insert(Done {
                    count: 0,
                    first: d.updated_at_ms,
                    last: d.updated_at_ms,
                    reason: None,
                });
            e.count += 1;
            e.first = e.first.min(d.updated_at_ms);
            // An applied delivery may keep the error of an attempt before: not a reason.
            let reason = matches!(
                d.status,
                relay_ledger::Status::DeadLettered
                    | relay_ledger::Status::Retrying
                    | relay_ledger::Status::Parked
            )
            .then(|| d.error.clone())
            .flatten();
            if reason.is_some() && (d.updated_at_ms >= e.last || e.reason.is_none()) {
                e.reason = reason;
            }
            e.last = e.last.max(d.updated_at_ms);
        }
        Audit {
            report,
            by_destination,
        }
    }

    fn knows_nothing(&self) -> bool {
        !holds_anything(self.report)
    }
}

fn recipient_of<'r>(
    recipients: &'r std::collections::BTreeMap<String, Recipient>,
    destination: &str,
) -> Cow<'r, Recipient> {
    match recipients.get(destination) {
        Some(r) => Cow::Borrowed(r),
        None => Cow::Owned(Recipient::of(
            format!(
                "{} (no longer configured: see the configuration of the time)",
                shown(destination)
            ),
            "unknown to this configuration".to_owned(),
        )),
    }
}

/// `ledger audit`: what a data-subject request needs — the proof of each consent decision (GDPR
/// Art. 7(1): what was decided, when, through which channel, under which notice), every recipient
/// the person's data went to with what it received and what was done there (Art. 15(1)(c)), and
/// the events that reached no one (dead-lettered).
pub fn to_audit(
    subject_id: &str,
    r: &SubjectReport,
    recipients: &std::collections::BTreeMap<String, Recipient>,
    bases: &LegalBases,
) -> String {
    let audit = Audit::new(r);
    let mut out = String::new();
    let _ = writeln!(out, "audit of subject {}", shown(subject_id));
    if audit.knows_nothing() {
        let _ = writeln!(
            out,
            "\nthe ledger holds no record of this subject: no consent decision, no delivery, no \
             dead-lettered event (check the subject id, or look it up with --email)"
        );
        return out;
    }
    let _ = writeln!(out, "\nconsent decisions ({}):", r.consent_log.len());
    for c in &r.consent_log {
        let _ = writeln!(
            out,
            "  {}  {} for {} via {} (notice {}{}), event {}",
            when(c.occurred_at_ms),
            shown(&c.kind),
            shown(&c.purposes.join(", ")),
            shown(&c.source),
            shown(c.notice_version.as_deref().unwrap_or("-")),
            basis_of(bases, &c.purposes)
                .map_or_else(String::new, |b| format!("; legal basis: {b}")),
            c.event_id
        );
    }
    let _ = writeln!(
        out,
        "\nrecipients (who received the person's data, what, and what was done there):"
    );
    if audit.by_destination.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for (destination, changes) in &audit.by_destination {
        let recipient = recipient_of(recipients, destination);
        let _ = writeln!(out, "  {} [{}]", recipient.title(), shown(destination));
        let _ = writeln!(out, "    data: {}", recipient.data);
        for ((target, done), d) in &changes.done {
            let _ = writeln!(
                out,
                "    {:<20} {}: {}×, first {}, last {}{}{}",
                shown(target),
                done.text(),
                d.count,
                when(d.first),
                when(d.last),
                basis_of(bases, std::slice::from_ref(target))
                    .map_or_else(String::new, |b| format!("; legal basis: {b}")),
                d.reason
                    .as_deref()
                    .map_or_else(String::new, |r| format!("; reason: {}", shown(r)))
            );
        }
    }
    let awaiting: Vec<_> = r
        .deliveries
        .iter()
        .filter(|d| d.status == relay_ledger::Status::AwaitingConfirmation)
        .collect();
    if !awaiting.is_empty() {
        let _ = writeln!(
            out,
            "
awaiting the person's confirmation (the downstream sent its opt-in email; subscribed only once they confirm):"
        );
        for d in awaiting {
            let _ = writeln!(
                out,
                "  {:<10} {:<20} since {}  event={}",
                shown(&d.key.sink),
                shown(&d.key.target),
                when(d.updated_at_ms),
                d.key.event_id
            );
        }
    }
    if !r.rejections.is_empty() {
        let _ = writeln!(
            out,
            "\nevents of this subject that did not reach a sink (dead-lettered before any request; `dlq list` shows them):"
        );
        for x in &r.rejections {
            let _ = writeln!(
                out,
                "  did not reach {:<20} {}: {} (event {}, {}/{}@{})",
                shown(&x.sink),
                shown(&x.code),
                shown(&x.message),
                x.event_id.map_or_else(|| "-".to_owned(), |i| i.to_string()),
                shown(&x.topic),
                x.partition,
                x.offset
            );
        }
    }
    out
}

/// Purpose → its legal basis as configured (`[purposes.<name>] legal_basis`).
pub type LegalBases = std::collections::BTreeMap<String, String>;

/// The legal bases of `purposes`, distinct, `; `-separated; `None` when none is known (a
/// withdrawal of every purpose, `*`).
fn basis_of(bases: &LegalBases, purposes: &[String]) -> Option<String> {
    let mut found: Vec<&str> = purposes
        .iter()
        .filter_map(|p| bases.get(p).map(String::as_str))
        .collect();
    found.sort_unstable();
    found.dedup();
    (!found.is_empty()).then(|| found.join("; "))
}

/// `ledger audit --json`: the same as [`to_audit`], as data.
pub fn audit_json(
    subject_id: &str,
    r: &SubjectReport,
    recipients: &std::collections::BTreeMap<String, Recipient>,
    bases: &LegalBases,
) -> serde_json::Value {
    let audit = Audit::new(r);
    json!({
        "subject_id": subject_id,
        "known": !audit.knows_nothing(),
        "consent_decisions": r.consent_log.iter().map(|c| json!({
            "occurred_at": when(c.occurred_at_ms), "kind": c.kind, "purposes": c.purposes,
            "source": c.source, "notice_version": c.notice_version,
            "legal_basis": basis_of(bases, &c.purposes),
            "event_id": c.event_id.to_string(), "late": c.late,
        })).collect::<Vec<_>>(),
        "recipients": audit.by_destination.iter().map(|(destination, changes)| {
            let recipient = recipient_of(recipients, destination);
            json!({
                "destination": destination, "name": recipient.name, "data": recipient.data,
                "entity": recipient.entity, "role": recipient.role,
                "changes": changes.done.iter().map(|((target, done), d)| json!({
                    "target": target, "done": done.code(), "count": d.count,
                    "first": when(d.first), "last": when(d.last), "reason": d.reason,
                    "legal_basis": basis_of(bases, std::slice::from_ref(target)),
                })).collect::<Vec<_>>(),
            })
        }).collect::<Vec<_>>(),
        "awaiting_confirmation": r.deliveries.iter()
            .filter(|d| d.status == relay_ledger::Status::AwaitingConfirmation)
            .map(|d| json!({
                "destination": d.key.sink, "target": d.key.target,
                "since": when(d.updated_at_ms), "event_id": d.key.event_id.to_string(),
            })).collect::<Vec<_>>(),
        "dead_lettered": r.rejections.iter().map(|x| json!({
            "sink": x.sink, "code": x.code, "message": x.message,
            "event_id": x.event_id.map(|i| i.to_string()),
            "topic": x.topic, "partition": x.partition, "offset": x.offset,
        })).collect::<Vec<_>>(),
    })
}

const SUPPRESSION_CSV_HEADER: &str = "subject_id,email_sha256,decision,occurred_at,event_id,source";

/// `suppression export`: the header line and one line per suppressed subject, each ending in a
/// newline.
pub fn to_suppression_csv(list: &[Suppressed]) -> String {
    let mut out = format!("{SUPPRESSION_CSV_HEADER}\n");
    for s in list {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{}",
            csv(&shown(&s.subject_id)),
            csv(&shown(s.email_sha256.as_deref().unwrap_or(""))),
            s.decision,
            when(s.occurred_at_ms),
            s.event_id,
            csv(&shown(&s.source))
        );
    }
    out
}

/// A CSV field, quoted when it needs to be (RFC 4180).
fn csv(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

/// `ledger unknown-contacts`: one line per decision about a person the ledger does not know.
pub fn to_unknown_contacts(rows: &[relay_ledger::UnknownContact]) -> String {
    let mut out = format!(
        "{:<24} {:<10} {:<17} {:<24} {:<64} {:<36} VENDOR-REF\n",
        "OCCURRED", "VENDOR", "KIND", "PURPOSES", "EMAIL-SHA256", "EVENT"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<24} {:<10} {:<17} {:<24} {:<64} {:<36} {}\n",
            when(r.occurred_at_ms),
            shown(&r.vendor),
            shown(&r.kind),
            shown(&r.purposes.join(",")),
            r.email_sha256.as_deref().unwrap_or("-"),
            r.event_id,
            shown(&r.vendor_ref)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use relay_events::Action;
    use relay_ledger::{
        Claim, ConsentRecord, DeliveryKey, Finish, Ledger, Rejection, SqliteLedger, Status,
    };
    use uuid::Uuid;

    use super::*;

    /// Every kind of i64 a timestamp column can hold, with what it must render as.
    const EXTREMES: [(i64, &str); 6] = [
        (i64::MIN, "invalid (-9223372036854775808 ms)"),
        (-1, "invalid (-1 ms)"),
        (0, "1970-01-01T00:00:00.000Z"),
        (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
        (253_402_300_800_000, "invalid (253402300800000 ms)"),
        (i64::MAX, "invalid (9223372036854775807 ms)"),
    ];

    /// Strings no current producer can send, but an older relay stored as sent.
    fn odd_strings() -> Vec<String> {
        vec![
            "x".repeat(100_000),
            "\u{202e}".into(),
            "line\nbreak\r\u{2028}".into(),
            "\u{1b}[2J\u{1b}[31mred".into(),
            "nul\u{0}\u{7f}\u{85}".into(),
            "comma,\"quote\"".into(),
            "ümlaut 日本語 👩‍👩‍👧 محمد".into(),
            String::new(),
        ]
    }

    const SUBJECT: &str = "\u{202e}subject";

    async fn ledger_with_extremes(dir: &std::path::Path) -> SqliteLedger {
        let url = format!("sqlite://{}", dir.join("ledger.db").display());
        let ledger = SqliteLedger::open(&url).await.expect("open ledger");
        let odd = odd_strings();
        let mut records = Vec::new();
        let mut claims = Vec::new();
        for (i, &(ms, _)) in EXTREMES.iter().enumerate() {
            let text = &odd[i % odd.len()];
            for (subject, kind) in [
                (SUBJECT.to_owned(), "ConsentWithdrawn"),
                // One subject per value for the suppression list, which keeps only the newest.
                (
                    format!("{}-{i}", odd[(i + 1) % odd.len()]),
                    "ErasureRequested",
                ),
            ] {
                records.push(ConsentRecord {
                    event_id: Uuid::new_v4(),
                    subject_id: subject,
                    kind: kind.into(),
                    purposes: vec!["newsletter".into(), text.clone()],
                    occurred_at_ms: ms,
                    source: text.clone(),
                    notice_version: Some(odd[(i + 2) % odd.len()].clone()),
                    email_sha256: Some(text.clone()),
                    topic: text.clone(),
                    partition: i32::MIN,
                    offset: i64::MAX,
                    payload_digest: Some(text.clone()),
                    late: i % 2 == 0,
                    google_email_sha256: None,
                    google_email_plus_sha256: None,
                });
            }
            claims.push(Claim {
                key: DeliveryKey {
                    event_id: records[records.len() - 2].event_id,
                    sink: text.clone(),
                    // A target per value, so that the version rule keeps a state row for each.
                    target: format!("p{i}{text}"),
                },
                subject_id: SUBJECT.into(),
                action: Action::Withdraw,
                occurred_at_ms: ms,
                replay: false,
                ticket: None,
                reassert: false,
            });
        }
        ledger.log_events(&records).await.expect("log");
        ledger.claim(&claims).await.expect("claim");
        let finishes: Vec<Finish> = claims
            .iter()
            .enumerate()
            .map(|(i, c)| Finish {
                key: c.key.clone(),
                subject_id: c.subject_id.clone(),
                status: [
                    Status::Applied,
                    Status::AlreadyApplied,
                    Status::DeadLettered,
                ][i % 3],
                error_class: Some(odd[i % odd.len()].clone()),
                error: Some(odd[(i + 3) % odd.len()].clone()),
            })
            .collect();
        ledger.finish(&finishes).await.expect("finish");
        let rejections: Vec<Rejection> = odd
            .iter()
            .map(|text| Rejection {
                sink: text.clone(),
                topic: text.clone(),
                partition: i32::MAX,
                offset: i64::MIN,
                event_id: None,
                subject_id: Some(SUBJECT.into()),
                code: text.clone(),
                message: text.clone(),
            })
            .collect();
        ledger.record_rejections(&rejections).await.expect("reject");
        ledger
    }

    fn assert_no_raw_controls(what: &str, text: &str) {
        for bad in [
            '\u{202e}', '\u{1b}', '\u{0}', '\u{7f}', '\u{85}', '\u{2028}', '\r',
        ] {
            assert!(!text.contains(bad), "{what} shows {bad:?} raw");
        }
    }

    #[tokio::test]
    async fn whatever_the_ledger_holds_renders() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = ledger_with_extremes(dir.path()).await;
        let report = ledger.subject_report(SUBJECT).await.expect("report");
        assert_eq!(report.consent_log.len(), EXTREMES.len());
        assert_eq!(report.state.len(), EXTREMES.len());
        assert_eq!(report.deliveries.len(), EXTREMES.len());

        let text = to_text(SUBJECT, &report);
        let audit = to_audit(SUBJECT, &report, &Default::default(), &Default::default());
        let json = to_json(SUBJECT, &report).to_string();
        for (ms, rendered) in EXTREMES {
            assert!(text.contains(rendered), "show lacks {rendered} for {ms}");
            assert!(audit.contains(rendered), "audit lacks {rendered} for {ms}");
            assert!(
                json.contains(&format!("\"occurred_at\":\"{rendered}\"")),
                "show --json lacks {rendered} for {ms}"
            );
        }
        assert!(
            text.starts_with("subject \\u{202e}subject\n"),
            "{}",
            &text[..40]
        );
        assert!(text.contains(&"x".repeat(100_000)));
        assert!(text.contains("ümlaut 日本語 👩‍👩‍👧 محمد"));
        assert_no_raw_controls("show", &text);
        assert_no_raw_controls("audit", &audit);
        // JSON carries the values as data (escaped by JSON where JSON requires it).
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["subject_id"], SUBJECT);

        let purpose = ledger
            .consent_for_purpose("newsletter")
            .await
            .expect("purpose");
        let list = relay_ledger::suppression_list(&purpose);
        let csv = to_suppression_csv(&list);
        for (ms, rendered) in EXTREMES {
            assert!(
                csv.contains(rendered),
                "suppression lacks {rendered} for {ms}"
            );
        }
        assert_no_raw_controls("suppression", &csv);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], SUPPRESSION_CSV_HEADER);
        // A newline in a stored value neither splits a row nor hides in a quoted field.
        assert_eq!(lines.len(), 1 + list.len(), "{csv:.300}");
        ledger.close().await;
    }

    #[test]
    fn when_renders_every_i64() {
        for (ms, rendered) in EXTREMES {
            assert_eq!(when(ms), rendered);
        }
        assert_eq!(when(1_795_687_200_123), "2026-11-26T10:00:00.123Z");
    }

    #[test]
    fn shown_escapes_only_what_could_mislead() {
        assert_eq!(shown("subj-42 Müller محمد"), "subj-42 Müller محمد");
        assert_eq!(
            shown("a\u{202e}b\nc\u{1b}"),
            "a\\u{202e}b\\u{000a}c\\u{001b}"
        );
    }

    #[test]
    fn a_delivery_awaiting_confirmation_and_a_reasserted_one_are_named_as_such() {
        let row = |status, reasserts| relay_ledger::DeliveryRow {
            key: DeliveryKey {
                event_id: Uuid::nil(),
                sink: "newsletter".into(),
                target: "newsletter".into(),
            },
            status,
            attempts: 2,
            reasserts,
            error_class: None,
            error: None,
            updated_at_ms: 1_795_687_200_123,
            repairs: reasserts,
            repaired_at_ms: Some(1_795_687_200_123),
        };
        let report = SubjectReport {
            deliveries: vec![
                row(Status::AwaitingConfirmation, 0),
                row(Status::Applied, 1),
            ],
            ..SubjectReport::default()
        };
        let text = to_text("mona", &report);
        assert!(text.contains("awaiting_confirmation"), "{text}");
        assert!(text.contains("asked the person to confirm"), "{text}");
        assert!(text.contains("re-asserted=1 repaired=1"), "{text}");
        let audit = to_audit("mona", &report, &Default::default(), &Default::default());
        assert!(
            audit.contains("awaiting the person's confirmation"),
            "{audit}"
        );
        let json = to_json("mona", &report);
        assert_eq!(json["deliveries"][0]["status"], "awaiting_confirmation");
        assert_eq!(json["deliveries"][1]["reasserts"], 1);
    }

    /// Issue 12: the audit names each recipient, what it received and what was done there, lists
    /// the events that reached no one, and says when the ledger knows nothing of the subject.
    #[test]
    fn the_audit_names_recipients_what_they_got_and_the_dead_letters() {
        use relay_ledger::{ConsentRecord, DeliveryKey, DeliveryRow, Rejection, Status};
        let grant = uuid::Uuid::new_v4();
        let withdrawal = uuid::Uuid::new_v4();
        let record = |event_id, kind: &str, at| ConsentRecord {
            event_id,
            subject_id: "s".into(),
            kind: kind.into(),
            purposes: vec!["ads".into()],
            occurred_at_ms: at,
            source: "web".into(),
            notice_version: None,
            email_sha256: None,
            topic: "t".into(),
            partition: 0,
            offset: 0,
            payload_digest: None,
            late: false,
            google_email_sha256: None,
            google_email_plus_sha256: None,
        };
        let delivered = |event_id, sink: &str, at| DeliveryRow {
            key: DeliveryKey {
                event_id,
                sink: sink.into(),
                target: "ads".into(),
            },
            status: Status::Applied,
            attempts: 1,
            reasserts: 0,
            error_class: None,
            error: None,
            updated_at_ms: at,
            repairs: 0,
            repaired_at_ms: None,
        };
        let report = SubjectReport {
            consent_log: vec![
                record(grant, "ConsentGranted", 1_000),
                record(withdrawal, "ConsentWithdrawn", 2_000),
            ],
            deliveries: vec![
                delivered(grant, "audiences.meta", 1_500),
                delivered(withdrawal, "audiences.meta", 2_500),
                delivered(grant, "audiences.gone", 1_500),
                // Still under way: it may have been received.
                DeliveryRow {
                    status: Status::Parked,
                    error: Some("HTTP 503 from api.brevo.com".into()),
                    ..delivered(withdrawal, "newsletter.main", 2_600)
                },
                // Never sent (no email): not a recipient.
                DeliveryRow {
                    status: Status::DeadLettered,
                    error_class: Some("missing_email".into()),
                    ..delivered(withdrawal, "partner.in_gmbh", 2_600)
                },
                // Dead-lettered for want of an address, then removed by reconcile.
                DeliveryRow {
                    status: Status::DeadLettered,
                    error_class: Some("missing_email".into()),
                    repairs: 2,
                    repaired_at_ms: Some(3_000),
                    ..delivered(withdrawal, "audiences.x", 2_600)
                },
            ],
            rejections: vec![Rejection {
                sink: "partner.in_gmbh".into(),
                topic: "consent.events".into(),
                partition: 3,
                offset: 42,
                event_id: Some(withdrawal),
                subject_id: Some("s".into()),
                code: "missing_email".into(),
                message: "a withdrawal needs the email".into(),
            }],
            ..SubjectReport::default()
        };
        let recipients = std::collections::BTreeMap::from([(
            "audiences.meta".to_owned(),
            Recipient {
                entity: Some("Meta Platforms Ireland Ltd.".into()),
                role: Some("processor".into()),
                ..Recipient::of(
                    "Meta (Custom Audience 111)".into(),
                    "SHA-256 of the normalized email address".into(),
                )
            },
        )]);
        let bases = LegalBases::from([("ads".to_owned(), "consent, GDPR Art. 6(1)(a)".to_owned())]);
        let audit = to_audit("s", &report, &recipients, &bases);
        assert!(
            audit.contains("; legal basis: consent, GDPR Art. 6(1)(a)), event"),
            "each decision with its legal basis: {audit}"
        );
        assert!(
            audit.contains("1×, first 1970-01-01T00:00:01.500Z, last 1970-01-01T00:00:01.500Z; legal basis: consent, GDPR Art. 6(1)(a)"),
            "each recipient's change too: {audit}"
        );
        assert!(
            audit.contains(
                "Meta Platforms Ireland Ltd. (processor): Meta (Custom Audience 111) [audiences.meta]"
            ),
            "{audit}"
        );
        assert!(
            audit.contains("data: SHA-256 of the normalized email address"),
            "{audit}"
        );
        assert!(
            audit.contains("in progress (may have been received): 1×")
                && audit.contains("; reason: HTTP 503 from api.brevo.com"),
            "work under way says why: {audit}"
        );
        assert!(
            audit.contains("granted (added / subscribed): 1×"),
            "{audit}"
        );
        assert!(
            audit.contains("withdrawn (removed / unsubscribed): 1×"),
            "{audit}"
        );
        assert!(
            audit.contains("re-sent by reconcile, applied: 2×"),
            "a repair is a change at its destination, whatever the delivery's status: {audit}"
        );
        assert!(
            audit.contains("audiences.gone (no longer configured"),
            "{audit}"
        );
        assert!(
            audit.contains("in progress (may have been received): 1×"),
            "{audit}"
        );
        assert!(!audit.contains("[partner.in_gmbh]"), "never sent: {audit}");
        assert!(
            audit.contains("partner.in_gmbh      missing_email: a withdrawal needs the email"),
            "{audit}"
        );
        let json = audit_json("s", &report, &recipients, &bases);
        assert_eq!(json["known"], true);
        assert_eq!(json["recipients"][1]["name"], "Meta (Custom Audience 111)");
        assert_eq!(
            json["recipients"][1]["entity"],
            "Meta Platforms Ireland Ltd."
        );
        assert_eq!(json["recipients"][1]["role"], "processor");
        assert!(json["recipients"][0]["entity"].is_null());
        assert_eq!(json["recipients"][1]["changes"][0]["count"], 1);
        let codes: Vec<&str> = json["recipients"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["changes"].as_array().unwrap())
            .map(|c| c["done"].as_str().unwrap())
            .collect();
        for code in ["granted", "withdrawn", "in_progress"] {
            assert!(codes.contains(&code), "a stable code, not prose: {codes:?}");
        }
        assert_eq!(
            json["consent_decisions"][0]["legal_basis"],
            "consent, GDPR Art. 6(1)(a)"
        );
        assert_eq!(json["dead_lettered"][0]["code"], "missing_email");

        let nothing = to_audit("who", &SubjectReport::default(), &recipients, &bases);
        assert!(
            nothing.contains("the ledger holds no record of this subject"),
            "{nothing}"
        );
        assert_eq!(
            audit_json("who", &SubjectReport::default(), &recipients, &bases)["known"],
            false
        );
    }
}
