//! `consent-relay import FILE`: consent decisions that exist only in spreadsheets and CRMs, loaded
//! as events with their original timestamps. A row becomes the same JSON line `publish` reads, so
//! both commands hold rows to exactly the same rules; its `event_id`, unless the file gives one,
//! is derived from the row's content (UUID v5), so a rerun of the same file publishes the same
//! events and the relay applies each once.

use std::collections::{BTreeSet, HashSet};

use relay_events::{normalize, ConsentEvent, EventKind, Scope};
use serde_json::{json, Map, Value};
use uuid::Uuid;

/// The namespace of imported event ids; changing it would give every imported row a new identity.
const IMPORT_NAMESPACE: Uuid = Uuid::from_u128(0x3f9a_1c77_52d4_4b8e_a0c3_9e61_7d25_b4f8);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    Jsonl,
}

impl Format {
    /// From the file name: `.jsonl`/`.ndjson`/`.json` are JSON lines, anything else CSV.
    pub fn guess(path: &std::path::Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl" | "ndjson" | "json") => Format::Jsonl,
            _ => Format::Csv,
        }
    }
}

/// Which CSV column holds which field (header names).
#[derive(Debug, Clone, clap::Args)]
pub struct Columns {
    /// Column with the subject id.
    #[arg(long, default_value = "subject_id")]
    pub subject_column: String,
    /// Column with the email address.
    #[arg(long, default_value = "email")]
    pub email_column: String,
    /// Column with the decision: grant, withdraw, unsubscribe, erase (or the event type names).
    #[arg(long, default_value = "decision")]
    pub decision_column: String,
    /// Column with the purposes, separated by --purpose-separator; `*` or empty on an
    /// unsubscribe means every purpose.
    #[arg(long, default_value = "purposes")]
    pub purposes_column: String,
    /// Column with when the person decided: RFC 3339 or Unix milliseconds.
    #[arg(long, default_value = "occurred_at")]
    pub occurred_at_column: String,
    /// Column with the consent text's version (required on grants).
    #[arg(long, default_value = "notice_version")]
    pub notice_version_column: String,
    /// Column with the channel the decision came from; rows without one get --source.
    #[arg(long, default_value = "source")]
    pub source_column: String,
    /// Column with an event id to keep; rows without one get an id derived from their content.
    #[arg(long, default_value = "event_id")]
    pub event_id_column: String,
    #[arg(long, default_value = ";")]
    pub purpose_separator: String,
    /// The `source` of rows that name none.
    #[arg(long, default_value = "import")]
    pub source: String,
}

/// A row that cannot be imported, with its number (1 = the first row after a CSV's header, the
/// first line of a JSON-lines file) and why; never a contact value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    pub row: usize,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct Parsed {
    pub events: Vec<ConsentEvent>,
    pub bad: Vec<BadRow>,
    /// Rows equal to an earlier one (the same derived event id): imported once.
    pub repeated: usize,
}

/// The rules every row is held to besides the event rules.
pub struct Rules<'a> {
    pub known_purposes: &'a BTreeSet<String>,
    pub now_ms: i64,
    pub future_tolerance_ms: i64,
}

pub fn parse(
    text: &str,
    format: Format,
    columns: &Columns,
    rules: &Rules<'_>,
) -> Result<Parsed, String> {
    let mut out = Parsed::default();
    let mut seen = HashSet::new();
    let mut accept = |row: usize, result: Result<ConsentEvent, String>| match result {
        Ok(ev) => {
            if seen.insert(ev.event_id) {
                out.events.push(ev);
            } else {
                out.repeated += 1;
            }
        }
        Err(reason) => out.bad.push(BadRow { row, reason }),
    };
    match format {
        Format::Jsonl => {
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() || line.trim_start().starts_with('#') {
                    continue;
                }
                let explicit_id = serde_json::from_str::<Value>(line)
                    .ok()
                    .is_some_and(|v| v.get("event_id").is_some_and(|id| !id.is_null()));
                let result = relay_events::json::from_json_line(line)
                    .map_err(|e| e.to_string())
                    .and_then(|ev| checked(ev, !explicit_id, rules));
                accept(i + 1, result);
            }
        }
        Format::Csv => {
            let mut records = csv_records(text.trim_start_matches('\u{feff}'));
            let header = records.next().ok_or("the file is empty")??;
            let index = |name: &str| header.iter().position(|h| h.trim() == name);
            let required = |name: &String| {
                index(name).ok_or_else(|| {
                    format!("no column {name:?} in the header ({})", header.join(","))
                })
            };
            let at = Cols {
                subject: required(&columns.subject_column)?,
                email: required(&columns.email_column)?,
                decision: required(&columns.decision_column)?,
                occurred_at: required(&columns.occurred_at_column)?,
                purposes: index(&columns.purposes_column),
                notice_version: index(&columns.notice_version_column),
                source: index(&columns.source_column),
                event_id: index(&columns.event_id_column),
            };
            for (i, record) in records.enumerate() {
                let row = i + 1;
                let result = record
                    .and_then(|fields| {
                        if fields.len() != header.len() {
                            return Err(format!(
                                "{} fields, the header has {}",
                                fields.len(),
                                header.len()
                            ));
                        }
                        csv_row(&fields, &at, columns)
                    })
                    .and_then(|(line, explicit_id)| {
                        relay_events::json::from_json_line(&line)
                            .map_err(|e| e.to_string())
                            .and_then(|ev| checked(ev, !explicit_id, rules))
                    });
                accept(row, result);
            }
        }
    }
    Ok(out)
}

struct Cols {
    subject: usize,
    email: usize,
    decision: usize,
    occurred_at: usize,
    purposes: Option<usize>,
    notice_version: Option<usize>,
    source: Option<usize>,
    event_id: Option<usize>,
}

/// The row as a `publish` JSON line, and whether it names its own event id.
fn csv_row(fields: &[String], at: &Cols, columns: &Columns) -> Result<(String, bool), String> {
    let get = |i: Option<usize>| i.map(|i| fields[i].trim()).filter(|v| !v.is_empty());
    let kind = match get(Some(at.decision)).unwrap_or("") {
        "grant" | "granted" | "ConsentGranted" => EventKind::ConsentGranted,
        "withdraw" | "withdrawn" | "ConsentWithdrawn" => EventKind::ConsentWithdrawn,
        "unsubscribe" | "unsubscribed" | "Unsubscribed" => EventKind::Unsubscribed,
        "erase" | "erasure" | "ErasureRequested" => EventKind::ErasureRequested,
        "" => return Err(format!("`{}` is empty", columns.decision_column)),
        other => {
            return Err(format!(
                "`{}` is {other:?}, not grant, withdraw, unsubscribe or erase",
                columns.decision_column
            ))
        }
    };
    let mut obj = Map::new();
    obj.insert("type".into(), json!(kind.name()));
    if let Some(id) = get(at.event_id) {
        obj.insert("event_id".into(), json!(id));
    }
    obj.insert(
        "subject_id".into(),
        json!(get(Some(at.subject)).unwrap_or("")),
    );
    let when = get(Some(at.occurred_at)).unwrap_or("");
    obj.insert(
        "occurred_at".into(),
        match when.parse::<i64>() {
            Ok(ms) => json!(ms),
            Err(_) => json!(when),
        },
    );
    obj.insert(
        "source".into(),
        json!(get(at.source).unwrap_or(&columns.source)),
    );
    if let Some(n) = get(at.notice_version) {
        obj.insert("notice_version".into(), json!(n));
    }
    let purposes: Vec<&str> = get(at.purposes)
        .map(|p| {
            p.split(columns.purpose_separator.as_str())
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .collect()
        })
        .unwrap_or_default();
    match kind {
        EventKind::ErasureRequested => {}
        EventKind::Unsubscribed if purposes.is_empty() || purposes == ["*"] => {
            obj.insert("all_purposes".into(), json!(true));
        }
        _ => {
            obj.insert("purposes".into(), json!(purposes));
        }
    }
    let email =
        get(Some(at.email)).ok_or_else(|| format!("`{}` is empty", columns.email_column))?;
    obj.insert("contact".into(), json!({ "email": email }));
    Ok((Value::Object(obj).to_string(), get(at.event_id).is_some()))
}

/// The rules beyond the event's own: known purposes, an email, the clock rule; and the derived id.
fn checked(
    mut ev: ConsentEvent,
    derive_id: bool,
    rules: &Rules<'_>,
) -> Result<ConsentEvent, String> {
    if let Scope::Purposes(purposes) = &ev.scope {
        if let Some(p) = purposes.iter().find(|p| !rules.known_purposes.contains(*p)) {
            return Err(format!("purpose {p:?} is not in the [purposes] table"));
        }
    }
    if ev.contact.email.is_none() {
        return Err("no email: the downstreams find people by it".into());
    }
    relay_events::check_occurred_at(
        ev.occurred_at_ms,
        None,
        rules.now_ms,
        rules.future_tolerance_ms,
    )
    .map_err(|e| e.to_string())?;
    if derive_id {
        ev.event_id = derived_id(&ev);
    }
    Ok(ev)
}

/// Everything the decision is, nothing of how the file spelled it (column order, spacing, case
/// of the email), so the same decision in a re-exported file keeps its id.
fn derived_id(ev: &ConsentEvent) -> Uuid {
    let scope = match &ev.scope {
        Scope::All => "*".to_owned(),
        Scope::Purposes(p) => {
            let mut p = p.clone();
            p.sort();
            p.join(",")
        }
    };
    let name = [
        ev.kind.name(),
        &ev.subject_id,
        &ev.occurred_at_ms.to_string(),
        &scope,
        &ev.source,
        ev.notice_version.as_deref().unwrap_or(""),
        &ev.contact
            .email
            .as_deref()
            .map(normalize::email_sha256)
            .unwrap_or_default(),
    ]
    .join("\u{1f}");
    Uuid::new_v5(&IMPORT_NAMESPACE, name.as_bytes())
}

/// RFC 4180 records: fields separated by commas, quoted with `"` (doubled inside), records by
/// CRLF or LF; a quoted field may span lines. An unterminated quote is an error for the rest.
fn csv_records(text: &str) -> impl Iterator<Item = Result<Vec<String>, String>> + '_ {
    let mut chars = text.chars().peekable();
    std::iter::from_fn(move || {
        chars.peek()?;
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        let mut was_quoted = false;
        loop {
            match (chars.next(), quoted) {
                (None, true) => return Some(Err("a quoted field is not closed".to_owned())),
                (None, false) => break,
                (Some('"'), true) if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                (Some('"'), true) => quoted = false,
                (Some('"'), false) if field.is_empty() && !was_quoted => {
                    quoted = true;
                    was_quoted = true;
                }
                (Some(','), false) => {
                    fields.push(std::mem::take(&mut field));
                    was_quoted = false;
                }
                (Some('\r'), false) if chars.peek() == Some(&'\n') => {}
                (Some('\n'), false) => break,
                (Some(c), _) => field.push(c),
            }
        }
        fields.push(field);
        Some(Ok(fields))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        columns: Columns,
    }

    fn columns(args: &[&str]) -> Columns {
        Cli::parse_from(std::iter::once("import").chain(args.iter().copied())).columns
    }

    fn rules(known: &BTreeSet<String>) -> Rules<'_> {
        Rules {
            known_purposes: known,
            now_ms: 1_800_000_000_000,
            future_tolerance_ms: 300_000,
        }
    }

    #[test]
    fn rows_become_events_and_bad_rows_are_named() {
        let known: BTreeSet<String> = ["newsletter".to_owned(), "ads".to_owned()].into();
        let csv = "subject_id,email,decision,purposes,occurred_at,notice_version\r\n\
            s1,Max@Example.de,grant,newsletter;ads,2024-05-01T10:00:00Z,n-2024\r\n\
            s2,\"e, with comma\"\"@x.de\",withdraw,newsletter,1714557600000,\r\n\
            s3,a@b.de,unsubscribe,*,2024-05-01T10:00:00+02:00,\n\
            s4,a@b.de,erase,,2024-05-01T10:00:00Z,\n\
            s5,a@b.de,grant,newsletter,2024-05-01T10:00:00Z,\n\
            s6,a@b.de,grant,unknown,2024-05-01T10:00:00Z,n\n\
            s7,,withdraw,newsletter,2024-05-01T10:00:00Z,\n\
            s8,a@b.de,maybe,newsletter,2024-05-01T10:00:00Z,\n\
            s9,a@b.de,withdraw,newsletter,2099-01-01T00:00:00Z,\n\
            s1,max@example.de,grant,ads;newsletter,2024-05-01T10:00:00Z,n-2024\n";
        let p = parse(csv, Format::Csv, &columns(&[]), &rules(&known)).unwrap();
        let bad: Vec<usize> = p.bad.iter().map(|b| b.row).collect();
        assert_eq!(bad, [2, 5, 6, 7, 8, 9], "{:?}", p.bad);
        assert!(p.bad[0].reason.contains("email"), "{:?}", p.bad[0]);
        assert!(p.bad[1].reason.contains("notice_version"), "{:?}", p.bad[1]);
        assert!(p.bad[2].reason.contains("\"unknown\""), "{:?}", p.bad[2]);
        assert!(p.bad[5].reason.contains("ahead"), "{:?}", p.bad[5]);
        for b in &p.bad {
            assert!(!b.reason.contains("a@b.de"), "no contact values: {b:?}");
        }
        assert_eq!(p.events.len(), 3);
        assert_eq!(
            p.repeated, 1,
            "the last row is the first, spelled differently"
        );
        assert_eq!(p.events[0].occurred_at_ms, 1_714_557_600_000);
        assert_eq!(p.events[0].source, "import");
        assert_eq!(p.events[1].scope, Scope::All);
        assert_eq!(p.events[1].occurred_at_ms, 1_714_550_400_000);
        assert_eq!(p.events[2].kind, EventKind::ErasureRequested);
        let again = parse(csv, Format::Csv, &columns(&[]), &rules(&known)).unwrap();
        assert_eq!(
            again.events.iter().map(|e| e.event_id).collect::<Vec<_>>(),
            p.events.iter().map(|e| e.event_id).collect::<Vec<_>>(),
            "a rerun has the same ids"
        );
    }

    #[test]
    fn columns_can_be_renamed_and_jsonl_is_publishs_format() {
        let known: BTreeSet<String> = ["newsletter".to_owned()].into();
        let csv = "Kunde;x,Mail,Aktion,Zweck,Zeit,Text,Kanal\nk1,a@b.de,grant,newsletter,1714557600000,n1,crm\n";
        let cols = columns(&[
            "--subject-column",
            "Kunde;x",
            "--email-column",
            "Mail",
            "--decision-column",
            "Aktion",
            "--purposes-column",
            "Zweck",
            "--occurred-at-column",
            "Zeit",
            "--notice-version-column",
            "Text",
            "--source-column",
            "Kanal",
        ]);
        let p = parse(csv, Format::Csv, &cols, &rules(&known)).unwrap();
        assert!(p.bad.is_empty(), "{:?}", p.bad);
        assert_eq!(
            (p.events[0].subject_id.as_str(), p.events[0].source.as_str()),
            ("k1", "crm")
        );

        let jsonl = "{\"type\":\"ConsentWithdrawn\",\"subject_id\":\"s1\",\"occurred_at\":\"2024-05-01T10:00:00Z\",\"source\":\"crm\",\"purposes\":[\"newsletter\"],\"contact\":{\"email\":\"a@b.de\"}}\n\nnot json\n";
        let p = parse(jsonl, Format::Jsonl, &columns(&[]), &rules(&known)).unwrap();
        assert_eq!(p.events.len(), 1);
        assert_eq!(p.bad.len(), 1);
        assert_eq!(p.bad[0].row, 3);
        assert_eq!(
            p.events[0].event_id.get_version_num(),
            5,
            "derived, not random"
        );
        let missing = parse(
            "email,decision\n",
            Format::Csv,
            &columns(&[]),
            &rules(&known),
        );
        assert!(missing.unwrap_err().contains("\"subject_id\""));
    }
}
