//! Where each key of the configuration file was written, so that a problem names its line as
//! well as its key ("sinks.hubspot.base_url: … (relay.toml:31)"). Keys set by an environment
//! variable say so already; embedded defaults have no line worth naming.

use std::collections::BTreeMap;

/// Full dotted key → 1-based line, for one file.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    file: String,
    lines: BTreeMap<String, usize>,
}

impl Origins {
    /// Scans `text` (which has parsed as TOML already) for `[table]` headers and `key = value`
    /// lines. A scanner, not a parser: a layout it does not follow (a multi-line string holding
    /// `=`) can only cost or misplace a line number, never a problem.
    pub fn scan(file: &str, text: &str) -> Origins {
        let mut lines = BTreeMap::new();
        let mut table: Vec<String> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(header) = line.strip_prefix('[') {
                let header = header.trim_start_matches('[');
                let Some((name, _)) = header.split_once(']') else {
                    continue;
                };
                table = segments(name);
                lines.entry(table.join(".")).or_insert(i + 1);
                continue;
            }
            let Some((key, _)) = line.split_once('=') else {
                continue;
            };
            let key = segments(key);
            if key.is_empty() || key.iter().any(|s| s.is_empty()) {
                continue;
            }
            let full: Vec<String> = table.iter().cloned().chain(key).collect();
            lines.entry(full.join(".")).or_insert(i + 1);
        }
        Origins {
            file: file.to_owned(),
            lines,
        }
    }

    /// `problem` ("key: message") with where its key was written: its own line, or that of the
    /// nearest table holding it (a missing key). Unchanged when an environment variable set it
    /// or the file does not mention it.
    pub fn annotate(&self, problem: String) -> String {
        let problem = full_key(problem.trim_end());
        if self.lines.is_empty() || problem.contains("(set by ") {
            return problem;
        }
        let Some((key, _)) = problem.split_once(": ") else {
            return problem;
        };
        if let Some(line) = self.lines.get(key) {
            return format!("{problem} ({}:{line})", self.file);
        }
        let mut parent = key;
        while let Some((up, _)) = parent.rsplit_once('.') {
            if let Some(line) = self.lines.get(up) {
                return format!("{problem} (in [{up}], {}:{line})", self.file);
            }
            parent = up;
        }
        problem
    }
}

/// serde names an unknown key by its table ("sinks.hubspot.batch: unknown field `linger`, …"):
/// the problem is said of the key itself, so it names it in full and finds its own line.
fn full_key(problem: &str) -> String {
    let Some((key, message)) = problem.split_once(": ") else {
        return problem.to_owned();
    };
    let field = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(field, _)| field);
    match field {
        Some(field) if !key.ends_with(&format!(".{field}")) && key != field => {
            format!("{key}.{field}: {message}")
        }
        _ => problem.to_owned(),
    }
}

/// `a . "b.c"` → `["a", "b.c"]`: dotted key segments without quotes or spaces.
fn segments(key: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    for c in key.trim().chars() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '.') => out.push(std::mem::take(&mut current).trim().to_owned()),
            (None, c) if c.is_whitespace() => {}
            (_, c) => current.push(c),
        }
    }
    out.push(current.trim().to_owned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"# consent relay
[kafka]
bootstrap_servers = "b:9092"

[sinks.hubspot]
base_url = "http://x"
purposes.newsletter.subscription_ids = [1]
[sinks."audiences".audiences.meta-eu]
platform = "meta"
tags = [
  "a = b",
]
"#;

    #[test]
    fn problems_name_the_line_of_their_key_or_table() {
        let o = Origins::scan("relay.toml", FILE);
        assert_eq!(
            o.annotate("kafka.bootstrap_servers: empty".into()),
            "kafka.bootstrap_servers: empty (relay.toml:3)"
        );
        assert_eq!(
            o.annotate("sinks.hubspot.purposes.newsletter.subscription_ids: x".into()),
            "sinks.hubspot.purposes.newsletter.subscription_ids: x (relay.toml:7)"
        );
        assert_eq!(
            o.annotate("sinks.hubspot.token: missing".into()),
            "sinks.hubspot.token: missing (in [sinks.hubspot], relay.toml:5)"
        );
        assert_eq!(
            o.annotate("sinks.audiences.audiences.meta-eu.platform: bad".into()),
            "sinks.audiences.audiences.meta-eu.platform: bad (relay.toml:9)"
        );
        assert_eq!(
            o.annotate("ledger.url: bad (set by CONSENT_RELAY__LEDGER__URL)".into()),
            "ledger.url: bad (set by CONSENT_RELAY__LEDGER__URL)"
        );
        assert_eq!(o.annotate("ledger.url: bad".into()), "ledger.url: bad");
        // serde names the table of an unknown key, and ends its message with a line break.
        assert_eq!(
            o.annotate("sinks.hubspot: unknown field `base_url`, expected `x`\n".into()),
            "sinks.hubspot.base_url: unknown field `base_url`, expected `x` (relay.toml:6)"
        );
        assert_eq!(
            o.annotate("sinks.hubspot.colour: unknown field `colour`".into()),
            "sinks.hubspot.colour: unknown field `colour` (in [sinks.hubspot], relay.toml:5)"
        );
        assert_eq!(
            o.annotate("configuration: odd".into()),
            "configuration: odd"
        );
    }
}
