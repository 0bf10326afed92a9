//! `ledger show`: one subject's consent log, state per sink and deliveries, as text or JSON.

use std::fmt::Write;
use std::time::{Duration, UNIX_EPOCH};

use relay_ledger::SubjectReport;
use serde_json::json;

pub fn when(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

pub fn to_text(subject_id: &str, r: &SubjectReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "subject {subject_id}");
    let _ = writeln!(out, "\nconsent log ({} event(s)):", r.consent_log.len());
    for c in &r.consent_log {
        let _ = writeln!(
            out,
            "  {}  {:<17} {:<24} source={} notice={} event={}",
            when(c.occurred_at_ms),
            c.kind,
            c.purposes.join(","),
            c.source,
            c.notice_version.as_deref().unwrap_or("-"),
            c.event_id
        );
    }
    let _ = writeln!(out, "\ncurrent decision per sink and purpose:");
    for s in &r.state {
        let _ = writeln!(
            out,
            "  {:<10} {:<20} {:<9} as of {}  event={}",
            s.sink,
            s.target,
            s.action.as_str(),
            when(s.occurred_at_ms),
            s.event_id
        );
    }
    let _ = writeln!(out, "\ndeliveries:");
    for d in &r.deliveries {
        let _ = writeln!(
            out,
            "  {:<10} {:<20} {:<16} attempts={} event={}{}",
            d.key.sink,
            d.key.target,
            d.status.as_str(),
            d.attempts,
            d.key.event_id,
            d.error
                .as_deref()
                .map(|e| format!("  error: {e}"))
                .unwrap_or_default()
        );
    }
    if !r.rejections.is_empty() {
        let _ = writeln!(out, "\nrejected (dead-lettered) messages:");
        for x in &r.rejections {
            let _ = writeln!(
                out,
                "  {:<10} {}/{}@{} {}: {}",
                x.sink, x.topic, x.partition, x.offset, x.code, x.message
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
        })).collect::<Vec<_>>(),
        "state": r.state.iter().map(|s| json!({
            "sink": s.sink, "target": s.target, "action": s.action.as_str(),
            "occurred_at": when(s.occurred_at_ms), "event_id": s.event_id.to_string(),
        })).collect::<Vec<_>>(),
        "deliveries": r.deliveries.iter().map(|d| json!({
            "event_id": d.key.event_id.to_string(), "sink": d.key.sink, "target": d.key.target,
            "status": d.status.as_str(), "attempts": d.attempts,
            "error_class": d.error_class, "error": d.error, "updated_at": when(d.updated_at_ms),
        })).collect::<Vec<_>>(),
        "rejections": r.rejections.iter().map(|x| json!({
            "sink": x.sink, "topic": x.topic, "partition": x.partition, "offset": x.offset,
            "event_id": x.event_id.map(|i| i.to_string()), "code": x.code, "message": x.message,
        })).collect::<Vec<_>>(),
    })
}

/// `ledger audit`: what a data-subject request needs — the proof of each consent decision (GDPR
/// Art. 7(1): what was decided, when, through which channel, under which notice) and every
/// recipient the person's data went to (Art. 15(1)(c)), from the deliveries that reached a sink.
pub fn to_audit(subject_id: &str, r: &SubjectReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "audit of subject {subject_id}");
    let _ = writeln!(out, "\nconsent decisions ({}):", r.consent_log.len());
    for c in &r.consent_log {
        let _ = writeln!(
            out,
            "  {}  {} for {} via {} (notice {}), event {}",
            when(c.occurred_at_ms),
            c.kind,
            c.purposes.join(", "),
            c.source,
            c.notice_version.as_deref().unwrap_or("-"),
            c.event_id
        );
    }
    let mut recipients: std::collections::BTreeMap<(&str, &str), (i64, i64, usize)> =
        std::collections::BTreeMap::new();
    for d in r.deliveries.iter().filter(|d| {
        matches!(
            d.status,
            relay_ledger::Status::Applied | relay_ledger::Status::AlreadyApplied
        )
    }) {
        let e = recipients
            .entry((d.key.sink.as_str(), d.key.target.as_str()))
            .or_insert((d.updated_at_ms, d.updated_at_ms, 0));
        e.0 = e.0.min(d.updated_at_ms);
        e.1 = e.1.max(d.updated_at_ms);
        e.2 += 1;
    }
    let _ = writeln!(
        out,
        "\nrecipients (sink, purpose or * for the whole subject):"
    );
    if recipients.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for ((sink, target), (first, last, n)) in recipients {
        let _ = writeln!(
            out,
            "  {sink:<10} {target:<20} {n} change(s), first {}, last {}",
            when(first),
            when(last)
        );
    }
    out
}
