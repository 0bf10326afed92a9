use relay_delivery::{Change, Outcome, SinkItem};
use relay_events::normalize;
use reqwest::Method;
use serde_json::{json, Value};

use crate::config::{ListConfig, NewsletterConfig};

/// What one call does to one address on one list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Add the address to the list (or make it active again).
    Subscribe,
    /// Take the address off the list; `global` for a global unsubscribe, which also blocks the
    /// address for all email where the provider can (Brevo's `emailBlacklisted`).
    Unsubscribe { global: bool },
    /// Erase the address from the provider.
    Delete,
}

/// One HTTP request for one (item, list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Index of the item this call serves.
    pub item: usize,
    /// The list's name in the config.
    pub list: String,
    pub op: Op,
    pub method: Method,
    /// Path and query, relative to the list's base URL.
    pub path: String,
    pub body: Option<Value>,
}

/// What to do for a batch of items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Per item: the outcome already known without calling a provider, or `None` when the item
    /// has at least one call.
    pub settled: Vec<Option<Outcome>>,
    /// Calls grouped by normalized address, each group in item order. Groups touch different
    /// addresses and may run side by side; within a group a call must wait for the one before.
    pub chains: Vec<Vec<Call>>,
}

/// Turns items into provider calls: one call per (item, list).
pub fn plan(items: &[SinkItem], config: &NewsletterConfig) -> Plan {
    let mut settled = Vec::with_capacity(items.len());
    let mut chains: Vec<(String, Vec<Call>)> = Vec::new();
    for (index, item) in items.iter().enumerate() {
        match plan_item(index, item, config) {
            Ok((email, calls)) => {
                settled.push(None);
                match chains.iter_mut().find(|(e, _)| *e == email) {
                    Some((_, chain)) => chain.extend(calls),
                    None => chains.push((email, calls)),
                }
            }
            Err(outcome) => settled.push(Some(outcome)),
        }
    }
    Plan {
        settled,
        chains: chains.into_iter().map(|(_, calls)| calls).collect(),
    }
}

/// The calls for one item and the address they are about, or why the item needs none.
fn plan_item(
    index: usize,
    item: &SinkItem,
    config: &NewsletterConfig,
) -> Result<(String, Vec<Call>), Outcome> {
    let email = item
        .event
        .contact
        .email
        .as_deref()
        .map(normalize::email)
        .filter(|e| !e.is_empty())
        .ok_or_else(|| Outcome::permanent("event has no email"))?;
    let (op, lists): (Op, Vec<&String>) = match &item.change {
        Change::Grant(purpose) | Change::Withdraw(purpose) => {
            let lists = config.purposes.get(purpose).ok_or_else(|| {
                Outcome::permanent(format!(
                    "purpose {purpose:?} has no newsletter list configured"
                ))
            })?;
            let op = match item.change {
                Change::Grant(_) => Op::Subscribe,
                _ => Op::Unsubscribe { global: false },
            };
            (op, lists.iter().collect())
        }
        Change::WithdrawAll => (
            Op::Unsubscribe { global: true },
            config.lists.keys().collect(),
        ),
        Change::Erase => (Op::Delete, config.lists.keys().collect()),
    };
    let calls = lists
        .into_iter()
        .filter_map(|name| {
            let list = config.lists.get(name)?;
            let (method, path, body) = match list {
                ListConfig::Brevo(b) => brevo(op, &email, b.list_id),
                ListConfig::Mailchimp(m) => mailchimp(op, &email, &m.list_id),
            };
            Some(Call {
                item: index,
                list: name.clone(),
                op,
                method,
                path,
                body,
            })
        })
        .collect();
    Ok((email, calls))
}

/// Brevo (docs/vendors/brevo.md §6), one contact per request. The batch update
/// (`POST /contacts/batch`) is all or nothing: one unknown address fails the whole batch with a
/// 404 (sendinblue/APIv3-php-library #257), which would tie the fate of unrelated people together.
///
/// No request ever carries `attributes`: Brevo renames a contact whose `EMAIL` attribute changes,
/// and renaming a blocklisted contact lifts the blocklist and re-subscribes it
/// (docs/vendors/brevo.md §6). Keeping contact data out of the requests also keeps the newsletter
/// provider minimal.
fn brevo(op: Op, email: &str, list_id: i64) -> (Method, String, Option<Value>) {
    let contact = format!(
        "/contacts/{}?identifierType=email_id",
        encode_segment(email)
    );
    match op {
        // Create, or with `updateEnabled` update: one idempotent call whether or not the contact
        // exists. `emailBlacklisted: false` lifts an earlier global unsubscribe, which this newer
        // grant supersedes (the runtime's version rule guarantees it is newer).
        Op::Subscribe => (
            Method::POST,
            "/contacts".to_owned(),
            Some(json!({
                "email": email,
                "listIds": [list_id],
                "emailBlacklisted": false,
                "updateEnabled": true,
            })),
        ),
        Op::Unsubscribe { global: false } => (
            Method::PUT,
            contact,
            Some(json!({ "unlinkListIds": [list_id] })),
        ),
        Op::Unsubscribe { global: true } => (
            Method::PUT,
            contact,
            Some(json!({ "emailBlacklisted": true, "unlinkListIds": [list_id] })),
        ),
        Op::Delete => (Method::DELETE, contact, None),
    }
}

/// Mailchimp (docs/vendors/mailchimp.md §6): upsert by subscriber hash, permanent delete on
/// erasure.
fn mailchimp(op: Op, email: &str, list_id: &str) -> (Method, String, Option<Value>) {
    let member = format!("/lists/{list_id}/members/{}", subscriber_hash(email));
    let status = |s: &str| json!({ "email_address": email, "status": s, "status_if_new": s });
    match op {
        // Only new members are set subscribed: an existing one keeps its status, which the answer
        // tells (client.rs decides from it). Setting `status` would make a member pending its
        // opt-in confirmation subscribed without that confirmation.
        Op::Subscribe => (
            Method::PUT,
            member,
            Some(json!({ "email_address": email, "status_if_new": "subscribed" })),
        ),
        // An unknown address becomes an unsubscribed member: Mailchimp then refuses to import it
        // as subscribed later, which protects the withdrawal against stale list imports.
        Op::Unsubscribe { .. } => (Method::PUT, member, Some(status("unsubscribed"))),
        Op::Delete => (
            Method::POST,
            format!("{member}/actions/delete-permanent"),
            None,
        ),
    }
}

/// The path Mailchimp answers with its list (to tell a missing member from a missing list).
pub fn mailchimp_list_path(list_id: &str) -> String {
    format!("/lists/{list_id}")
}

pub use normalize::mailchimp_subscriber_hash as subscriber_hash;

/// Percent-encodes everything but RFC 3986 unreserved characters. `+` must not stay literal: some
/// servers read it as a space in a path, and `a+tag@x.de` would name another contact.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {

    use relay_delivery::{DestinationConfig, Target};
    use relay_events::{Action, Contact};

    use super::*;
    use crate::config::{BrevoList, MailchimpList};
    use relay_testkit::items::ItemFixture;

    fn config() -> NewsletterConfig {
        let mut c = NewsletterConfig::default();
        c.lists.insert(
            "main".into(),
            ListConfig::Brevo(BrevoList {
                base_url: "http://b/v3".into(),
                api_key: Some("k".into()),
                list_id: 7,
                limits: DestinationConfig::default(),
            }),
        );
        c.lists.insert(
            "product".into(),
            ListConfig::Mailchimp(MailchimpList {
                base_url: Some("http://m/3.0".into()),
                api_key: Some("k-us1".into()),
                list_id: "abc123".into(),
                limits: DestinationConfig::default(),
            }),
        );
        c.purposes.insert("newsletter".into(), vec!["main".into()]);
        c.purposes
            .insert("product_news".into(), vec!["product".into()]);
        c
    }

    fn item(email: Option<&str>, action: Action, target: Target) -> SinkItem {
        ItemFixture::new(action, target)
            .subject("s")
            .occurred_at_ms(1_700_000_000_000)
            .notice("n1")
            .contact(Contact {
                email: email.map(str::to_owned),
                first_name: Some("Max".into()),
                street: Some("Venloer Straße 47".into()),
                ..Contact::default()
            })
            .build()
    }

    fn purpose(p: &str) -> Target {
        Target::Purpose(p.into())
    }

    fn shape(call: &Call) -> (String, &str, String, Option<Value>) {
        (
            call.method.to_string(),
            call.list.as_str(),
            call.path.clone(),
            call.body.clone(),
        )
    }

    #[test]
    fn mailchimp_hash_is_md5_of_the_lowercased_address() {
        // MD5("urist.mcvankab@freddiesjokes.com"), Mailchimp's own documentation example.
        assert_eq!(
            subscriber_hash(" Urist.McVankab@FreddiesJokes.com "),
            "62eeb292278cc15f5817cb78f7790b08"
        );
    }

    #[test]
    fn addresses_are_fully_percent_encoded_in_brevo_paths() {
        assert_eq!(encode_segment("a.b+tag@x-y.de"), "a.b%2Btag%40x-y.de");
        assert_eq!(encode_segment("ä@x.de"), "%C3%A4%40x.de");
    }

    #[test]
    fn grant_and_withdrawal_per_provider() {
        let plan = plan(
            &[
                item(
                    Some(" Max@Example.DE"),
                    Action::Grant,
                    purpose("newsletter"),
                ),
                item(
                    Some("anna@example.de"),
                    Action::Grant,
                    purpose("product_news"),
                ),
                item(
                    Some("max@example.de"),
                    Action::Withdraw,
                    purpose("newsletter"),
                ),
                item(
                    Some("anna@example.de"),
                    Action::Withdraw,
                    purpose("product_news"),
                ),
            ],
            &config(),
        );
        assert_eq!(plan.settled, vec![None; 4]);
        let hash = subscriber_hash("anna@example.de");
        let chains: Vec<Vec<_>> = plan
            .chains
            .iter()
            .map(|chain| chain.iter().map(shape).collect())
            .collect();
        assert_eq!(
            chains,
            vec![
                vec![
                    (
                        "POST".into(),
                        "main",
                        "/contacts".into(),
                        Some(json!({"email": "max@example.de", "listIds": [7],
                                    "emailBlacklisted": false, "updateEnabled": true}))
                    ),
                    (
                        "PUT".into(),
                        "main",
                        "/contacts/max%40example.de?identifierType=email_id".into(),
                        Some(json!({"unlinkListIds": [7]}))
                    ),
                ],
                vec![
                    (
                        "PUT".into(),
                        "product",
                        format!("/lists/abc123/members/{hash}"),
                        Some(json!({"email_address": "anna@example.de",
                                    "status_if_new": "subscribed"}))
                    ),
                    (
                        "PUT".into(),
                        "product",
                        format!("/lists/abc123/members/{hash}"),
                        Some(
                            json!({"email_address": "anna@example.de", "status": "unsubscribed",
                                    "status_if_new": "unsubscribed"})
                        )
                    ),
                ],
            ]
        );
    }

    #[test]
    fn global_unsubscribe_and_erasure_reach_every_list() {
        let plan = plan(
            &[
                item(Some("a@b.de"), Action::Withdraw, Target::All),
                item(Some("a@b.de"), Action::Erase, Target::All),
            ],
            &config(),
        );
        let hash = subscriber_hash("a@b.de");
        let calls: Vec<_> = plan.chains[0].iter().map(shape).collect();
        assert_eq!(
            calls,
            vec![
                (
                    "PUT".into(),
                    "main",
                    "/contacts/a%40b.de?identifierType=email_id".into(),
                    Some(json!({"emailBlacklisted": true, "unlinkListIds": [7]}))
                ),
                (
                    "PUT".into(),
                    "product",
                    format!("/lists/abc123/members/{hash}"),
                    Some(json!({"email_address": "a@b.de", "status": "unsubscribed",
                                "status_if_new": "unsubscribed"}))
                ),
                (
                    "DELETE".into(),
                    "main",
                    "/contacts/a%40b.de?identifierType=email_id".into(),
                    None
                ),
                (
                    "POST".into(),
                    "product",
                    format!("/lists/abc123/members/{hash}/actions/delete-permanent"),
                    None
                ),
            ]
        );
    }

    #[test]
    fn no_request_carries_contact_attributes() {
        // The event has a first name and a street; none of it may leave, and above all no
        // `EMAIL` attribute (Brevo's rename lifts a blocklist).
        let items = [
            item(Some("a@b.de"), Action::Grant, purpose("newsletter")),
            item(Some("a@b.de"), Action::Withdraw, purpose("newsletter")),
            item(Some("a@b.de"), Action::Withdraw, Target::All),
            item(Some("a@b.de"), Action::Erase, Target::All),
        ];
        let plan = plan(&items, &config());
        for call in plan.chains.iter().flatten() {
            let body = call.body.clone().unwrap_or(Value::Null).to_string();
            for forbidden in ["attributes", "EMAIL", "Max", "Venloer"] {
                assert!(!body.contains(forbidden), "{forbidden} in {body}");
            }
        }
    }

    #[test]
    fn items_that_need_no_call() {
        let plan = plan(
            &[
                item(None, Action::Grant, purpose("newsletter")),
                item(Some("a@b.de"), Action::Grant, purpose("lottery")),
            ],
            &config(),
        );
        assert!(plan.chains.is_empty());
        let reasons: Vec<_> = plan
            .settled
            .iter()
            .map(|o| match o {
                Some(Outcome::Permanent { reason }) => reason.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            reasons,
            [
                "event has no email",
                "purpose \"lottery\" has no newsletter list configured",
            ]
        );
    }
}
