//! Reading a list back, for `consent-relay reconcile` (docs/vendors/mailchimp.md §10,
//! brevo.md §10): Mailchimp's audience members (every status, `count`/`offset` paging) and the
//! contacts of a Brevo list (`limit`/`offset` paging; only the list's members, with their
//! blocklist flag). Requests go through the list's destination, so they share its limits.

use serde::Deserialize;

use crate::client::{NewsletterSink, Provider};
use crate::request::mailchimp_list_path;
use relay_events::normalize;

/// Mailchimp members per page (its maximum `count`).
pub const MAILCHIMP_PAGE: usize = 1_000;
/// Brevo list contacts per page (UNCONFIRMED maximum; 500 is what Brevo's own examples use).
pub const BREVO_PAGE: usize = 500;

/// What a list shows for one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStatus {
    /// Mailchimp `subscribed`; a Brevo list member that is not blocklisted.
    Subscribed,
    /// Mailchimp `unsubscribed` or `cleaned`; a blocklisted Brevo list member.
    Unsubscribed,
    /// Mailchimp `pending` (awaiting confirmation), `transactional` or `archived`.
    Other,
}

/// One page of a list: normalized addresses and their status, and the offset of the next page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    pub members: Vec<(String, ListStatus)>,
    pub next_offset: Option<usize>,
    /// How many the provider says the list holds, when it says.
    pub total: Option<u64>,
}

#[derive(Deserialize)]
struct MailchimpMembers {
    #[serde(default)]
    members: Vec<MailchimpMember>,
    total_items: Option<u64>,
}

#[derive(Deserialize)]
struct MailchimpMember {
    email_address: String,
    status: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BrevoContacts {
    #[serde(default)]
    contacts: Vec<BrevoContact>,
    count: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BrevoContact {
    email: Option<String>,
    #[serde(default)]
    email_blacklisted: bool,
}

impl NewsletterSink {
    /// The one list of a per-list sink (`newsletter.<list>`), and its provider's name.
    pub fn single_list(&self) -> Option<(&str, &'static str)> {
        let (name, list) = self.lists.iter().next()?;
        Some((
            name.as_str(),
            match list.provider {
                Provider::Brevo => "brevo",
                Provider::Mailchimp { .. } => "mailchimp",
            },
        ))
    }

    /// One page of `list`, from `offset`. The error names the HTTP status, never an address.
    pub async fn read_list(&self, list: &str, offset: usize) -> Result<ListPage, String> {
        let Some(client) = self.lists.get(list) else {
            return Err(format!("list {list:?} is not configured"));
        };
        let (url, query, page) = match &client.provider {
            Provider::Mailchimp { list_id } => (
                format!(
                    "{}{}/members",
                    client.base_url,
                    mailchimp_list_path(list_id)
                ),
                vec![
                    ("count", MAILCHIMP_PAGE.to_string()),
                    ("offset", offset.to_string()),
                    (
                        "fields",
                        "members.email_address,members.status,total_items".to_owned(),
                    ),
                ],
                MAILCHIMP_PAGE,
            ),
            Provider::Brevo => {
                let list_id = match self.config.lists.get(list) {
                    Some(crate::ListConfig::Brevo(b)) => b.list_id,
                    _ => return Err(format!("list {list:?} is not a Brevo list")),
                };
                (
                    format!("{}/contacts/lists/{list_id}/contacts", client.base_url),
                    vec![
                        ("limit", BREVO_PAGE.to_string()),
                        ("offset", offset.to_string()),
                        ("sort", "asc".to_owned()),
                    ],
                    BREVO_PAGE,
                )
            }
        };
        let request = client.http().get(url).query(&query);
        let reply = client
            .send(request)
            .await
            .map_err(|o| format!("reading list {list}: {}", o.reason().unwrap_or("failed")))?;
        if let Provider::Brevo = client.provider {
            client.honor_brevo_rate_limit(&reply);
        }
        if !reply.is_success() {
            return Err(format!(
                "reading list {list}: the provider answered {}",
                reply.status
            ));
        }
        let unreadable =
            |e: serde_json::Error| format!("reading list {list}: unreadable answer: {e}");
        let (members, total): (Vec<(String, ListStatus)>, Option<u64>) = match client.provider {
            Provider::Mailchimp { .. } => {
                let body: MailchimpMembers =
                    serde_json::from_slice(&reply.body).map_err(unreadable)?;
                (
                    body.members
                        .into_iter()
                        .map(|m| {
                            let status = match m.status.as_str() {
                                "subscribed" => ListStatus::Subscribed,
                                "unsubscribed" | "cleaned" => ListStatus::Unsubscribed,
                                _ => ListStatus::Other,
                            };
                            (normalize::email(&m.email_address), status)
                        })
                        .collect(),
                    body.total_items,
                )
            }
            Provider::Brevo => {
                let body: BrevoContacts =
                    serde_json::from_slice(&reply.body).map_err(unreadable)?;
                (
                    body.contacts
                        .into_iter()
                        .filter_map(|c| {
                            let status = if c.email_blacklisted {
                                ListStatus::Unsubscribed
                            } else {
                                ListStatus::Subscribed
                            };
                            c.email.map(|e| (normalize::email(&e), status))
                        })
                        .collect(),
                    body.count,
                )
            }
        };
        let full = members.len() == page;
        let more = match total {
            Some(t) => ((offset + members.len()) as u64) < t && !members.is_empty(),
            None => full,
        };
        Ok(ListPage {
            next_offset: more.then_some(offset + members.len()),
            members,
            total,
        })
    }
}
