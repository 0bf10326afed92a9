//! Mailchimp list (audience) webhooks: form-encoded POSTs, a GET to validate the URL, no
//! signature (docs/vendors/mailchimp.md "Webhooks").

use std::collections::HashMap;

use relay_events::{normalize, EventKind, Scope};

use crate::config::MailchimpIngest;
use crate::notice::{parse_utc_datetime, Notice, Vendor};

/// Equal in time whatever the inputs share, so the path secret cannot be found byte by byte.
pub fn secret_matches(given: &str, secret: &str) -> bool {
    let (a, b) = (given.as_bytes(), secret.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a webhook post turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Decision(Notice),
    /// `upemail`: a member of a mapped list changed their address (hashes only); their next
    /// unsubscribe there names the new one.
    AddressChange {
        list_id: String,
        old_sha256: String,
        new_sha256: String,
    },
    /// Not a consent decision (a subscribe, a profile change, a bounce), or a list
    /// with no purposes configured: acknowledged, counted, nothing published.
    Ignored(&'static str),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Malformed {
    #[error("Mailchimp webhook without {0}")]
    Missing(&'static str),
    #[error("Mailchimp webhook with fired_at {0:?}, not YYYY-MM-DD HH:MM:SS")]
    FiredAt(String),
}

/// A form field that is there and not empty.
fn field<'a>(form: &'a HashMap<String, String>, name: &'static str) -> Result<&'a str, Malformed> {
    form.get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or(Malformed::Missing(name))
}

pub fn parse(
    config: &MailchimpIngest,
    form: &HashMap<String, String>,
) -> Result<Parsed, Malformed> {
    let field = |name| field(form, name);
    let kind = match field("type")? {
        "unsubscribe" => EventKind::Unsubscribed,
        // Mailchimp cleans an address on a hard bounce or an abuse report; only the latter is
        // the person's decision (a bounce says the address is dead, not what they want).
        "cleaned" if form.get("data[reason]").map(String::as_str) == Some("abuse") => {
            EventKind::ConsentWithdrawn
        }
        "cleaned" => return Ok(Parsed::Ignored("bounce")),
        "upemail" => return address_change(config, form),
        "subscribe" | "profile" | "campaign" => return Ok(Parsed::Ignored("no_decision")),
        _ => return Ok(Parsed::Ignored("unknown_type")),
    };
    let list_id = field("data[list_id]")?;
    let email = field("data[email]")?;
    let fired_at = field("fired_at")?;
    let occurred_at_ms =
        parse_utc_datetime(fired_at).ok_or_else(|| Malformed::FiredAt(fired_at.to_owned()))?;
    let Some(purposes) = config.lists.get(list_id) else {
        tracing::warn!(
            list_id,
            "Mailchimp webhook for a list not in ingest.mailchimp.lists"
        );
        return Ok(Parsed::Ignored("unmapped_list"));
    };
    // Mailchimp sends no id of its own; this tuple is what a retry of the same webhook repeats.
    let vendor_key = format!(
        "{list_id}:{}:{}:{fired_at}",
        form.get("type").map_or("", String::as_str),
        normalize::email_sha256(email)
    );
    Ok(Parsed::Decision(Notice {
        vendor: Vendor::Mailchimp,
        vendor_key,
        vendor_ref: format!("list {list_id}"),
        lists: vec![list_id.to_owned()],
        kind,
        scope: Scope::Purposes(purposes.clone()),
        email: Some(email.to_owned()),
        email_hash: None,
        occurred_at_ms,
    }))
}

fn address_change(
    config: &MailchimpIngest,
    form: &HashMap<String, String>,
) -> Result<Parsed, Malformed> {
    let field = |name| field(form, name);
    let list_id = field("data[list_id]")?;
    let (old, new) = (field("data[old_email]")?, field("data[new_email]")?);
    if !config.lists.contains_key(list_id) {
        return Ok(Parsed::Ignored("unmapped_list"));
    }
    Ok(Parsed::AddressChange {
        list_id: list_id.to_owned(),
        old_sha256: normalize::email_sha256(old),
        new_sha256: normalize::email_sha256(new),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> MailchimpIngest {
        toml::from_str("path_secret = \"x\"\n[lists]\na6b5da1054 = [\"newsletter\"]\n").unwrap()
    }

    /// The unsubscribe example of Mailchimp's webhook guide, field for field.
    fn unsubscribe() -> HashMap<String, String> {
        [
            ("type", "unsubscribe"),
            ("fired_at", "2009-03-26 21:40:57"),
            ("data[action]", "unsub"),
            ("data[reason]", "manual"),
            ("data[id]", "8a25ff1d98"),
            ("data[list_id]", "a6b5da1054"),
            ("data[email]", "api+unsub@mailchimp.com"),
            ("data[email_type]", "html"),
            ("data[merges][EMAIL]", "api+unsub@mailchimp.com"),
            ("data[merges][FNAME]", "Mailchimp"),
            ("data[merges][LNAME]", "API"),
            ("data[merges][INTERESTS]", "Group1,Group2"),
            ("data[ip_opt]", "10.20.10.30"),
            ("data[campaign_id]", "cb398d21d2"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    #[test]
    fn an_unsubscribe_becomes_one_for_the_lists_purposes() {
        let Parsed::Decision(n) = parse(&config(), &unsubscribe()).unwrap() else {
            panic!("not a decision")
        };
        assert_eq!(n.kind, EventKind::Unsubscribed);
        assert_eq!(n.scope, Scope::Purposes(vec!["newsletter".into()]));
        assert_eq!(n.occurred_at_ms, 1_238_103_657_000);
        assert_eq!(n.email.as_deref(), Some("api+unsub@mailchimp.com"));
        let again = parse(&config(), &unsubscribe()).unwrap();
        assert_eq!(again, Parsed::Decision(n), "a retry is the same notice");
    }

    #[test]
    fn abuse_withdraws_bounces_and_profile_changes_do_not() {
        let mut form = unsubscribe();
        form.insert("type".into(), "cleaned".into());
        form.insert("data[reason]".into(), "abuse".into());
        assert!(matches!(
            parse(&config(), &form).unwrap(),
            Parsed::Decision(Notice {
                kind: EventKind::ConsentWithdrawn,
                ..
            })
        ));
        form.insert("data[reason]".into(), "hard".into());
        assert_eq!(parse(&config(), &form).unwrap(), Parsed::Ignored("bounce"));
        form.insert("type".into(), "profile".into());
        assert_eq!(
            parse(&config(), &form).unwrap(),
            Parsed::Ignored("no_decision")
        );
        let mut other = unsubscribe();
        other.insert("data[list_id]".into(), "zzz".into());
        assert_eq!(
            parse(&config(), &other).unwrap(),
            Parsed::Ignored("unmapped_list")
        );
        other.remove("data[email]");
        assert_eq!(
            parse(&config(), &other),
            Err(Malformed::Missing("data[email]"))
        );
    }

    /// The upemail example of Mailchimp's webhook guide.
    #[test]
    fn an_address_change_is_followed_by_hash() {
        let form: HashMap<String, String> = [
            ("type", "upemail"),
            ("fired_at", "2009-03-26 22:15:09"),
            ("data[list_id]", "a6b5da1054"),
            ("data[new_id]", "51da8c3259"),
            ("data[new_email]", "api+new@mailchimp.com"),
            ("data[old_email]", "api+old@mailchimp.com"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let parsed = parse(&config(), &form).unwrap();
        assert_eq!(
            parsed,
            Parsed::AddressChange {
                list_id: "a6b5da1054".into(),
                old_sha256: normalize::email_sha256("api+old@mailchimp.com"),
                new_sha256: normalize::email_sha256("api+new@mailchimp.com"),
            }
        );
        assert!(!format!("{parsed:?}").contains("mailchimp.com"));
        let mut other = form.clone();
        other.insert("data[list_id]".into(), "zzz".into());
        assert_eq!(
            parse(&config(), &other).unwrap(),
            Parsed::Ignored("unmapped_list")
        );
        other.remove("data[old_email]");
        assert_eq!(
            parse(&config(), &other),
            Err(Malformed::Missing("data[old_email]"))
        );
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(secret_matches("abc", "abc"));
        assert!(!secret_matches("abd", "abc"));
        assert!(!secret_matches("ab", "abc"));
    }
}
