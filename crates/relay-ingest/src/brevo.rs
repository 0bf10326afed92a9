//! Brevo marketing webhooks: one JSON object per POST, authenticated the way the webhook was
//! configured at Brevo (docs/vendors/brevo.md "Webhooks").

use base64::Engine;
use relay_events::{normalize, EventKind, Scope};
use serde::Deserialize;
use serde_json::Value;

use crate::config::{BrevoAuth, BrevoIngest};
use crate::mailchimp::secret_matches;
use crate::notice::{Notice, Vendor};

/// Whether the `Authorization` header is what the webhook was configured to send.
pub fn authorized(config: &BrevoIngest, header: Option<&str>) -> bool {
    let Some(header) = header else {
        return false;
    };
    match config.auth {
        BrevoAuth::Bearer => header
            .strip_prefix("Bearer ")
            .is_some_and(|t| secret_matches(t.trim(), config.token.expose())),
        BrevoAuth::Basic => {
            let expected = base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                config.username,
                config.password.expose()
            ));
            header
                .strip_prefix("Basic ")
                .is_some_and(|c| secret_matches(c.trim(), &expected))
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct Payload {
    pub event: String,
    #[serde(default)]
    pub email: Option<String>,
    /// The webhook's id at Brevo (not the event's).
    #[serde(default)]
    pub id: Option<Value>,
    #[serde(default)]
    pub camp_id: Option<Value>,
    /// UTC seconds; `date_event` is in the account's local time zone, so it is not used.
    #[serde(default)]
    pub ts_event: Option<i64>,
    #[serde(default)]
    pub ts: Option<i64>,
    /// A number or a list of numbers.
    #[serde(default)]
    pub list_id: Option<Value>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Decision(Notice),
    Ignored(&'static str),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Malformed {
    #[error("Brevo webhook without {0}")]
    Missing(&'static str),
}

fn list_ids(v: &Option<Value>) -> Vec<String> {
    match v {
        Some(Value::Array(items)) => items.iter().filter_map(id_text).collect(),
        Some(other) => id_text(other).into_iter().collect(),
        None => Vec::new(),
    }
}

fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

pub fn parse(config: &BrevoIngest, p: &Payload) -> Result<Parsed, Malformed> {
    let kind = match p.event.as_str() {
        "unsubscribed" | "unsubscribe" => EventKind::Unsubscribed,
        // A spam complaint: the person withdrew, not only from this list.
        "spam" => EventKind::ConsentWithdrawn,
        _ => return Ok(Parsed::Ignored("no_decision")),
    };
    let email = p
        .email
        .as_deref()
        .filter(|e| !e.is_empty())
        .ok_or(Malformed::Missing("email"))?;
    let seconds = p.ts_event.or(p.ts).ok_or(Malformed::Missing("ts_event"))?;
    let lists = list_ids(&p.list_id);
    let mut purposes: Vec<String> = lists
        .iter()
        .filter_map(|l| config.lists.get(l))
        .flatten()
        .cloned()
        .collect();
    if purposes.is_empty() {
        purposes = config.purposes.clone();
    }
    purposes.sort();
    purposes.dedup();
    if purposes.is_empty() {
        tracing::warn!(lists = %relay_runtime::log_fields::list(&lists), "Brevo webhook for lists not in ingest.brevo.lists, and no ingest.brevo.purposes");
        return Ok(Parsed::Ignored("unmapped_list"));
    }
    let camp = p.camp_id.as_ref().and_then(id_text).unwrap_or_default();
    let hook = p.id.as_ref().and_then(id_text).unwrap_or_default();
    let vendor_key = format!(
        "{hook}:{}:{camp}:{}:{seconds}",
        p.event,
        normalize::email_sha256(email)
    );
    Ok(Parsed::Decision(Notice {
        vendor: Vendor::Brevo,
        vendor_key,
        vendor_ref: format!("campaign {camp} lists {}", lists.join(",")),
        lists,
        kind,
        scope: Scope::Purposes(purposes),
        email: Some(email.to_owned()),
        email_hash: None,
        occurred_at_ms: seconds.saturating_mul(1000),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn config(auth: &str) -> BrevoIngest {
        let mut c: BrevoIngest = toml::from_str(&format!(
            "auth = \"{auth}\"\nusername = \"relay\"\npurposes = [\"newsletter\"]\n[lists]\n7 = [\"product_updates\"]\n"
        ))
        .unwrap();
        c.token = Secret::new("t0ken");
        c.password = Secret::new("pw");
        c
    }

    #[test]
    fn bearer_and_basic_are_checked_as_configured() {
        let bearer = config("bearer");
        assert!(authorized(&bearer, Some("Bearer t0ken")));
        assert!(!authorized(&bearer, Some("Bearer t0kem")));
        assert!(!authorized(&bearer, None));
        let basic = config("basic");
        // base64("relay:pw")
        assert!(authorized(&basic, Some("Basic cmVsYXk6cHc=")));
        assert!(!authorized(&basic, Some("Bearer t0ken")));
    }

    /// The "Marked as Spam" example of developers.brevo.com/docs/marketing-webhooks.
    #[test]
    fn the_documented_spam_example_withdraws_the_default_purposes() {
        let p: Payload = serde_json::from_str(
            r#"{"id": 123456, "camp_id": 12, "email": "example@domain.com", "campaign name": "My First Campaign ",
                "date_sent": "2020-10-09 00:00:00", "date_event": "2020-10-09 00:00:00", "event": "spam",
                "reason": "undesired", "tag": "", "ts_sent": 1604933619, "ts_event": 1604933737, "ts": 1604937337}"#,
        )
        .unwrap();
        let Parsed::Decision(n) = parse(&config("bearer"), &p).unwrap() else {
            panic!("not a decision")
        };
        assert_eq!(n.kind, EventKind::ConsentWithdrawn);
        assert_eq!(n.occurred_at_ms, 1_604_933_737_000);
        assert_eq!(n.scope, Scope::Purposes(vec!["newsletter".into()]));
    }

    #[test]
    fn an_unsubscribe_from_a_configured_list_withdraws_its_purposes() {
        let p: Payload = serde_json::from_str(
            r#"{"id": 1, "camp_id": 3, "email": "a@b.de", "event": "unsubscribed", "list_id": [7, 99], "ts_event": 1700000000}"#,
        )
        .unwrap();
        let Parsed::Decision(n) = parse(&config("bearer"), &p).unwrap() else {
            panic!("not a decision")
        };
        assert_eq!(n.scope, Scope::Purposes(vec!["product_updates".into()]));
        let opened: Payload =
            serde_json::from_str(r#"{"event": "opened", "email": "a@b.de"}"#).unwrap();
        assert_eq!(
            parse(&config("bearer"), &opened).unwrap(),
            Parsed::Ignored("no_decision")
        );
        let timeless: Payload =
            serde_json::from_str(r#"{"event": "spam", "email": "a@b.de"}"#).unwrap();
        assert_eq!(
            parse(&config("bearer"), &timeless),
            Err(Malformed::Missing("ts_event"))
        );
    }
}
