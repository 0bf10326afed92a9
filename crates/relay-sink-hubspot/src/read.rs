//! Reading HubSpot's state back, for `consent-relay reconcile`: the CRM contacts page by page
//! (their email addresses, which the ledger never stores), and the v4 subscription statuses of a
//! batch of addresses (docs/vendors/hubspot.md §10). Requests go through the sink's destination,
//! so they share its rate limits with the delivery path.

use std::collections::BTreeMap;

use relay_events::normalize;
use serde::Deserialize;

use crate::client::HubSpotSink;

/// Lists CRM contacts, `limit` (at most 100) per page, `after` as the cursor.
pub const LIST_CONTACTS_PATH: &str = "/crm/v3/objects/contacts";
/// Reads subscription statuses for up to 100 addresses (docs/vendors/hubspot.md §1c, §10).
pub const BATCH_READ_PATH: &str = "/communication-preferences/v4/statuses/batch/read?channel=EMAIL";
/// Contacts per page and addresses per batch read: HubSpot's documented page maximum.
pub const READ_PAGE: usize = 100;

/// One page of contacts: their normalized addresses, and the cursor of the next page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContactPage {
    pub emails: Vec<String>,
    pub next: Option<String>,
}

/// HubSpot's status of one subscription type for one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStatus {
    Subscribed,
    Unsubscribed,
    NotSpecified,
}

#[derive(Deserialize)]
struct ListAnswer {
    #[serde(default)]
    results: Vec<ListedContact>,
    paging: Option<Paging>,
}

#[derive(Deserialize)]
struct ListedContact {
    #[serde(default)]
    properties: BTreeMap<String, Option<String>>,
}

#[derive(Deserialize)]
struct Paging {
    next: Option<NextPage>,
}

#[derive(Deserialize)]
struct NextPage {
    after: String,
}

#[derive(Deserialize)]
struct ReadAnswer {
    #[serde(default)]
    results: Vec<ReadResult>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReadResult {
    subscriber_id_string: String,
    #[serde(default)]
    statuses: Vec<ReadEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReadEntry {
    subscription_id: i64,
    status: String,
    #[serde(default)]
    channel: Option<String>,
}

impl HubSpotSink {
    /// The subscription type ids of each configured purpose.
    pub fn purpose_subscriptions(&self) -> BTreeMap<String, Vec<i64>> {
        self.config
            .purposes
            .iter()
            .map(|(p, c)| (p.clone(), c.subscription_ids.clone()))
            .collect()
    }

    /// One page of CRM contacts (their `email` property, normalized; contacts without one are
    /// left out). The error names the HTTP status and never an address.
    pub async fn list_contacts(&self, after: Option<&str>) -> Result<ContactPage, String> {
        let mut query = vec![
            ("limit", READ_PAGE.to_string()),
            ("properties", "email".to_owned()),
            ("archived", "false".to_owned()),
        ];
        if let Some(after) = after {
            query.push(("after", after.to_owned()));
        }
        let request = self
            .destination
            .http()
            .get(format!("{}{LIST_CONTACTS_PATH}", self.base_url))
            .bearer_auth(self.token.expose())
            .query(&query);
        let reply = self
            .destination
            .send(request)
            .await
            .map_err(|o| format!("listing contacts: {}", o.reason().unwrap_or("failed")))?;
        if !reply.is_success() {
            return Err(format!(
                "listing contacts: HubSpot answered {}",
                reply.status
            ));
        }
        let answer: ListAnswer = serde_json::from_slice(&reply.body)
            .map_err(|e| format!("listing contacts: unreadable answer: {e}"))?;
        Ok(ContactPage {
            emails: answer
                .results
                .into_iter()
                .filter_map(|c| c.properties.get("email").cloned().flatten())
                .map(|e| normalize::email(&e))
                .filter(|e| !e.is_empty())
                .collect(),
            next: answer.paging.and_then(|p| p.next).map(|n| n.after),
        })
    }

    /// The EMAIL-channel statuses of `emails` (at most [`READ_PAGE`]), by normalized address and
    /// subscription type id. An address HubSpot does not know has no entry.
    pub async fn read_statuses(
        &self,
        emails: &[String],
    ) -> Result<BTreeMap<String, BTreeMap<i64, ReadStatus>>, String> {
        let request = self
            .destination
            .http()
            .post(format!("{}{BATCH_READ_PATH}", self.base_url))
            .bearer_auth(self.token.expose())
            .json(&serde_json::json!({ "inputs": emails }));
        let reply = self
            .destination
            .send(request)
            .await
            .map_err(|o| format!("reading statuses: {}", o.reason().unwrap_or("failed")))?;
        // 207: some inputs failed (unknown addresses among them); the results are still good.
        if !reply.is_success() {
            return Err(format!(
                "reading statuses: HubSpot answered {}",
                reply.status
            ));
        }
        let answer: ReadAnswer = serde_json::from_slice(&reply.body)
            .map_err(|e| format!("reading statuses: unreadable answer: {e}"))?;
        let mut out: BTreeMap<String, BTreeMap<i64, ReadStatus>> = BTreeMap::new();
        for result in answer.results {
            let entry = out
                .entry(normalize::email(&result.subscriber_id_string))
                .or_default();
            for s in result.statuses {
                if s.channel.as_deref().is_some_and(|c| c != "EMAIL") {
                    continue;
                }
                let status = match s.status.as_str() {
                    "SUBSCRIBED" => ReadStatus::Subscribed,
                    "UNSUBSCRIBED" => ReadStatus::Unsubscribed,
                    _ => ReadStatus::NotSpecified,
                };
                entry.insert(s.subscription_id, status);
            }
        }
        Ok(out)
    }
}
