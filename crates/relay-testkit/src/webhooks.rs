//! Vendors calling us: senders that sign and post webhooks the way HubSpot, Mailchimp and Brevo
//! do (docs/vendors/{hubspot,mailchimp,brevo}.md "Webhooks"), and the one HubSpot read that
//! `ingest` needs (a contact's email by id). The signing here is written from the vendors' docs,
//! independently of relay-ingest's verifier, so a test where both agree means something.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::newsletter::FakeMailchimp;

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `X-HubSpot-Signature-v3` for a request HubSpot makes to `url` (no escapes HubSpot decodes
/// in our URLs, so the URL is signed as is).
pub fn hubspot_signature_v3(
    secret: &str,
    method: &str,
    url: &str,
    body: &str,
    timestamp_ms: i64,
) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{method}{url}{body}{timestamp_ms}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// One `contact.propertyChange` entry as HubSpot batches them.
pub fn hubspot_property_change(
    event_id: i64,
    contact_id: i64,
    property: &str,
    value: &str,
    occurred_at_ms: i64,
) -> Value {
    json!({
        "eventId": event_id, "subscriptionId": 4242, "portalId": 62515, "appId": 54321,
        "occurredAt": occurred_at_ms, "subscriptionType": "contact.propertyChange",
        "attemptNumber": 0, "objectId": contact_id, "propertyName": property,
        "propertyValue": value, "changeSource": "EMAIL", "sourceId": "unsubscribe-link"
    })
}

/// A contact directory answering `GET /crm/v3/objects/contacts/{id}` like HubSpot's CRM.
pub struct HubSpotContacts {
    addr: SocketAddr,
    contacts: Arc<Mutex<BTreeMap<i64, String>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for HubSpotContacts {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[derive(Clone)]
struct ContactsState {
    token: String,
    contacts: Arc<Mutex<BTreeMap<i64, String>>>,
}

async fn read_contact(
    State(s): State<ContactsState>,
    Path(id): Path<i64>,
    headers: HeaderMap,
) -> Response {
    let bearer = format!("Bearer {}", s.token);
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(bearer.as_str())
    {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"status": "error", "category": "INVALID_AUTHENTICATION"})),
        )
            .into_response();
    }
    let email = s
        .contacts
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&id)
        .cloned();
    match email {
        Some(email) => Json(json!({
            "id": id.to_string(), "properties": {"email": email, "hs_object_id": id.to_string()},
            "archived": false
        }))
        .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"status": "error", "category": "OBJECT_NOT_FOUND"})),
        )
            .into_response(),
    }
}

impl HubSpotContacts {
    pub async fn start(token: &str) -> HubSpotContacts {
        let contacts = Arc::new(Mutex::new(BTreeMap::new()));
        let app = Router::new()
            .route("/crm/v3/objects/contacts/{id}", get(read_contact))
            .with_state(ContactsState {
                token: token.to_owned(),
                contacts: contacts.clone(),
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        HubSpotContacts {
            addr,
            contacts,
            server,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn insert(&self, id: i64, email: &str) {
        self.contacts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, email.to_owned());
    }

    /// As a privacy deletion does, before HubSpot sends its webhook.
    pub fn remove(&self, id: i64) {
        self.contacts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }
}

/// Posts a HubSpot webhook batch to `url`, signed with `secret` at `timestamp_ms`.
pub async fn send_hubspot(
    url: &str,
    secret: &str,
    events: &[Value],
    timestamp_ms: i64,
) -> (StatusCode, String) {
    let body = Value::Array(events.to_vec()).to_string();
    let signature = hubspot_signature_v3(secret, "POST", url, &body, timestamp_ms);
    send_hubspot_raw(url, &body, &signature, timestamp_ms).await
}

/// Posts `body` with the given signature headers, for tampering tests.
pub async fn send_hubspot_raw(
    url: &str,
    body: &str,
    signature: &str,
    timestamp_ms: i64,
) -> (StatusCode, String) {
    let answer = reqwest::Client::new()
        .post(url)
        .header(header::CONTENT_TYPE, "application/json")
        .header("X-HubSpot-Signature-v3", signature)
        .header("X-HubSpot-Signature-Version", "v3")
        .header("X-HubSpot-Request-Timestamp", timestamp_ms.to_string())
        .body(body.to_owned())
        .send()
        .await
        .expect("hubspot webhook send");
    finish(answer).await
}

async fn finish(answer: reqwest::Response) -> (StatusCode, String) {
    let status = StatusCode::from_u16(answer.status().as_u16()).expect("status");
    (status, answer.text().await.unwrap_or_default())
}

/// Mailchimp's list webhook form for an unsubscribe, as its webhook guide shows it.
pub fn mailchimp_unsubscribe(list_id: &str, email: &str, fired_at: &str) -> Vec<(String, String)> {
    [
        ("type", "unsubscribe"),
        ("fired_at", fired_at),
        ("data[action]", "unsub"),
        ("data[reason]", "manual"),
        ("data[id]", "8a25ff1d98"),
        ("data[list_id]", list_id),
        ("data[email]", email),
        ("data[email_type]", "html"),
        ("data[merges][EMAIL]", email),
        ("data[ip_opt]", "10.20.10.30"),
        ("data[campaign_id]", "cb398d21d2"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Mailchimp's list webhook form for an address change (`upemail`), as its webhook guide shows it.
pub fn mailchimp_upemail(
    list_id: &str,
    old_email: &str,
    new_email: &str,
    fired_at: &str,
) -> Vec<(String, String)> {
    [
        ("type", "upemail"),
        ("fired_at", fired_at),
        ("data[list_id]", list_id),
        ("data[new_id]", "51da8c3259"),
        ("data[new_email]", new_email),
        ("data[old_email]", old_email),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Mailchimp's time format for `fired_at` (UTC).
pub fn mailchimp_time(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
    let text = humantime::format_rfc3339_seconds(t).to_string();
    text.trim_end_matches('Z').replacen('T', " ", 1)
}

/// Posts a Mailchimp webhook form (`application/x-www-form-urlencoded`).
pub async fn send_mailchimp(url: &str, form: &[(String, String)]) -> (StatusCode, String) {
    let answer = reqwest::Client::new()
        .post(url)
        .form(form)
        .send()
        .await
        .expect("mailchimp webhook send");
    finish(answer).await
}

/// What Mailchimp does when a webhook is saved: a GET that must answer 200.
pub async fn validate_mailchimp_url(url: &str) -> StatusCode {
    let answer = reqwest::get(url).await.expect("mailchimp validation GET");
    StatusCode::from_u16(answer.status().as_u16()).expect("status")
}

/// The person clicks "unsubscribe" at the fake Mailchimp: the member becomes `unsubscribed`
/// there, and Mailchimp fires the list's webhook at `url`.
pub async fn unsubscribe_at_mailchimp(
    fake: &FakeMailchimp,
    url: &str,
    list_id: &str,
    email: &str,
    at_ms: i64,
) -> (StatusCode, String) {
    fake.set_member_status(list_id, email, "unsubscribed");
    send_mailchimp(
        url,
        &mailchimp_unsubscribe(list_id, email, &mailchimp_time(at_ms)),
    )
    .await
}

/// Posts a Brevo marketing webhook with the `Authorization` header the webhook was configured with.
pub async fn send_brevo(url: &str, authorization: &str, payload: &Value) -> (StatusCode, String) {
    let answer = reqwest::Client::new()
        .post(url)
        .header(header::AUTHORIZATION, authorization)
        .json(payload)
        .send()
        .await
        .expect("brevo webhook send");
    finish(answer).await
}

/// A Brevo `unsubscribed` marketing event (fields of developers.brevo.com/docs/marketing-webhooks).
pub fn brevo_unsubscribed(email: &str, list_ids: &[i64], at_ms: i64) -> Value {
    json!({
        "id": 123456, "camp_id": 42, "email": email, "campaign name": "November news",
        "date_sent": "2026-11-26 10:00:00", "date_event": "2026-11-26 11:00:00",
        "event": "unsubscribed", "list_id": list_ids, "tag": "",
        "ts_sent": at_ms / 1000 - 3600, "ts_event": at_ms / 1000, "ts": at_ms / 1000
    })
}
