//! Where the binary's logs go and what they look like: human lines (coloured only on a terminal)
//! or JSON lines with real JSON values. tracing-subscriber's own JSON format writes every field as
//! a string or number, so the lists and counts of `relay_runtime::log_fields` would reach log
//! pipelines as text; this format writes them as arrays and objects.

use std::fmt;

use relay_runtime::log_fields;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::{Config, LogFormat};

pub fn init(config: &Config, format: Option<LogFormat>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    // Colours only for a person at a terminal, never into files or pipes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format.unwrap_or(config.log.format) {
        LogFormat::Json => builder.event_format(JsonLines).init(),
        LogFormat::Human => builder.init(),
    }
}

/// One JSON object per event: `timestamp`, `level`, `fields` (with `message`), `target`, the
/// layout of tracing-subscriber's JSON format.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let mut fields = Fields(Map::new());
        event.record(&mut fields);
        let meta = event.metadata();
        // A record of the `log` crate (librdkafka's Rust binding logs through it) arrives with
        // the target "log" and its own in `log.target`: name the real one, as the human format
        // does, and leave out the bridge's file and line fields.
        let target = match fields.0.remove("log.target") {
            Some(Value::String(target)) => {
                fields.0.retain(|name, _| !name.starts_with("log."));
                target
            }
            _ => meta.target().to_owned(),
        };
        let mut record = Map::new();
        record.insert("timestamp".into(), Value::String(timestamp));
        record.insert("level".into(), Value::String(meta.level().to_string()));
        record.insert("fields".into(), Value::Object(fields.0));
        record.insert("target".into(), Value::String(target));
        writeln!(writer, "{}", Value::Object(record))
    }
}

struct Fields(Map<String, Value>);

impl Fields {
    fn text(&mut self, field: &Field, text: String) {
        let name = field.name();
        let value = if log_fields::LISTS.contains(&name) {
            Value::Array(
                text.split(log_fields::LIST_SEPARATOR)
                    .filter(|item| !item.is_empty())
                    .map(|item| Value::String(item.to_owned()))
                    .collect(),
            )
        } else if log_fields::COUNTS.contains(&name) {
            Value::Object(counts(&text))
        } else {
            Value::String(text)
        };
        self.0.insert(name.to_owned(), value);
    }

    fn value(&mut self, field: &Field, value: Value) {
        self.0.insert(field.name().to_owned(), value);
    }
}

/// `a=1 b=2` as `{"a":1,"b":2}`; a pair that is not one is kept as text.
fn counts(text: &str) -> Map<String, Value> {
    text.split_whitespace()
        .map(|pair| match pair.split_once('=') {
            Some((name, n)) => (
                name.to_owned(),
                n.parse::<u64>()
                    .map_or_else(|_| Value::String(n.to_owned()), Value::from),
            ),
            None => (pair.to_owned(), Value::Null),
        })
        .collect()
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.text(field, format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.text(field, value.to_owned());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.text(field, value.to_string());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.value(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.value(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.value(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.value(field, value.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shared buffer the subscriber writes into.
    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn records_of_the_log_crate_name_their_own_target() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(JsonLines)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            // What tracing-log makes of a `log` record.
            tracing::info!(log.target = "rdkafka::client", log.line = 7u64, "from log");
            tracing::info!(sinks = "a", "from tracing");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["target"], "rdkafka::client");
        assert_eq!(
            lines[0]["fields"],
            serde_json::json!({"message": "from log"})
        );
        assert_eq!(lines[1]["target"], module_path!());
    }

    #[test]
    fn counts_become_numbers() {
        let c = counts("applied=3 superseded=12");
        assert_eq!(
            Value::Object(c),
            serde_json::json!({"applied": 3, "superseded": 12})
        );
    }
}
