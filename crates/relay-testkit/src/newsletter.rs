//! Fake newsletter providers on `127.0.0.1`: Brevo (contacts with list memberships and the email
//! blocklist) and Mailchimp (audience members by subscriber hash), with the auth, error bodies,
//! rate limits and vendor states of `docs/vendors/brevo.md` and `docs/vendors/mailchimp.md` §6.
//!
//! Tests read their state, script failures (`push_response`) and seed what a person did at the
//! vendor directly (`insert_contact`, `set_member_status`). `GET /__fake/state` dumps the state as
//! JSON for the demo; the `/__fake/` prefix marks paths the vendors do not have.
//!
//! Vendor behaviour modelled because the sink must cope with it:
//! - Brevo: renaming a blocklisted contact (an update whose `attributes.EMAIL` differs) lifts the
//!   blocklist, as Brevo documents, so a test can prove the sink never sends one; the
//!   `x-sib-ratelimit-*` headers on every answer and a 429 once the window is used up.
//! - Mailchimp: `subscribed` for an unsubscribed or cleaned member is 400 "Member In Compliance
//!   State"; `pending` (re-confirmation: Mailchimp sends its opt-in email) is accepted for an
//!   unsubscribed member, and for a cleaned (bounced) one only when the test says so, because
//!   Mailchimp does not document that case (`set_cleaned_accepts_pending`); any write to a permanently deleted address is 400 "Forgotten Email Not Subscribed";
//!   more simultaneous requests than allowed (10 by default) are 429.
//!
//! What the vendors do not document, the fakes decide like this: unknown JSON fields are rejected
//! (strictness catches typos in our client); Brevo list ids must exist, and unlinking a list the
//! contact is not on is accepted; a Mailchimp subscriber hash must match the body's
//! `email_address`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use base64::Engine;
use md5::{Digest, Md5};
use relay_events::normalize;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::recorded::record;
pub use crate::recorded::{RecordedRequest, ScriptedResponse};

/// `GET` path of the JSON state dump of either fake (not a vendor endpoint).
pub const STATE_PATH: &str = "/__fake/state";
/// Mailchimp's limit of simultaneous connections per account (docs/vendors/mailchimp.md §6).
const MAILCHIMP_MAX_CONNECTIONS: usize = 10;

pub(crate) fn lock<T>(shared: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that panicked while holding the lock must not hide the state from the others.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn json_response(
    status: StatusCode,
    content_type: &'static str,
    body: &Value,
) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    (status, headers, body.to_string()).into_response()
}

pub(crate) async fn serve(listener: tokio::net::TcpListener, app: Router, what: &'static str) {
    let addr = listener.local_addr().ok();
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("fake {what} on {addr:?} stopped: {e}");
    }
}

/// Good enough to reject what a provider surely rejects: no `@`, two `@`, no dot in the domain,
/// whitespace inside.
fn is_valid_email(raw: &str) -> bool {
    let Some((local, domain)) = raw.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !raw.chars().any(char::is_whitespace)
}

// ---------------------------------------------------------------------------------------------
// Brevo

/// A running fake Brevo (`/v3`). The server stops when this value is dropped.
pub struct FakeBrevo {
    addr: SocketAddr,
    shared: Arc<Mutex<BrevoState>>,
    server: tokio::task::JoinHandle<()>,
}

/// One Brevo contact as the fake holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrevoContact {
    pub id: u64,
    pub email_blacklisted: bool,
    pub list_ids: BTreeSet<i64>,
    /// Attributes other than `EMAIL`, as sent.
    pub attributes: BTreeMap<String, Value>,
}

struct BrevoState {
    api_key: String,
    lists: BTreeSet<i64>,
    contacts: BTreeMap<String, BrevoContact>,
    next_id: u64,
    window: Option<RateWindow>,
    script: VecDeque<ScriptedResponse>,
    requests: Vec<RecordedRequest>,
}

/// A fixed window: `limit` requests, counted from the window's first request.
struct RateWindow {
    limit: u32,
    length: Duration,
    started: Option<Instant>,
    used: u32,
}

impl RateWindow {
    /// Counts one request; returns `(allowed, remaining, seconds until reset)`.
    fn take(&mut self, now: Instant) -> (bool, u32, u64) {
        let started = match self.started {
            Some(s) if now.duration_since(s) < self.length => s,
            _ => {
                self.used = 0;
                *self.started.insert(now)
            }
        };
        let allowed = self.used < self.limit;
        if allowed {
            self.used += 1;
        }
        let reset = (self.length - now.duration_since(started))
            .as_secs_f64()
            .ceil() as u64;
        (allowed, self.limit - self.used, reset)
    }
}

impl BrevoState {
    fn dump(&self) -> Value {
        json!({ "lists": self.lists, "contacts": self.contacts })
    }

    /// A 400 for the first list id the fake does not have.
    fn check_lists(&self, ids: &[i64]) -> Option<Response> {
        let id = ids.iter().find(|id| !self.lists.contains(id))?;
        Some(invalid_parameter(&format!("List ID {id} does not exist")))
    }
}

impl FakeBrevo {
    /// Starts the fake on a free port of 127.0.0.1, accepting `api_key`, with the lists `lists`.
    ///
    /// # Panics
    /// If no port can be bound: a test cannot go on without its fake.
    pub async fn start(api_key: &str, lists: &[i64]) -> FakeBrevo {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), api_key, lists)
            .await
            .expect("bind the fake Brevo on 127.0.0.1")
    }

    /// Starts the fake on `addr` (the demo uses a fixed port).
    pub async fn start_on(
        addr: SocketAddr,
        api_key: &str,
        lists: &[i64],
    ) -> std::io::Result<FakeBrevo> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Mutex::new(BrevoState {
            api_key: api_key.to_owned(),
            lists: lists.iter().copied().collect(),
            contacts: BTreeMap::new(),
            next_id: 1,
            window: None,
            script: VecDeque::new(),
            requests: Vec::new(),
        }));
        let app = Router::new()
            .route("/v3/contacts", post(brevo_create))
            .route(
                "/v3/contacts/{identifier}",
                put(brevo_update).delete(brevo_delete),
            )
            .route(
                "/v3/contacts/lists/{list_id}/contacts",
                get(brevo_list_contacts),
            )
            .route(STATE_PATH, get(brevo_state))
            .fallback(|| async { brevo_error(StatusCode::NOT_FOUND, "not_found", "Invalid route") })
            .layer(middleware::from_fn_with_state(shared.clone(), brevo_gate))
            .with_state(shared.clone());
        let server = tokio::spawn(serve(listener, app, "Brevo"));
        Ok(FakeBrevo {
            addr,
            shared,
            server,
        })
    }

    /// `http://127.0.0.1:<port>/v3`, to use as a list's `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v3", self.addr)
    }

    /// Answers with 429 once `limit` requests came within `window` (counted from the window's
    /// first request), and sends the `x-sib-ratelimit-*` headers on every answer.
    pub fn set_rate_limit(&self, limit: u32, window: Duration) {
        lock(&self.shared).window = Some(RateWindow {
            limit,
            length: window,
            started: None,
            used: 0,
        });
    }

    /// Queues an answer for the next request to a Brevo endpoint.
    pub fn push_response(&self, response: ScriptedResponse) {
        lock(&self.shared).script.push_back(response);
    }

    /// Seeds a contact as if it came from elsewhere (an import, the Brevo UI).
    pub fn insert_contact(&self, email: &str, blacklisted: bool, lists: &[i64]) {
        let mut state = lock(&self.shared);
        let id = state.next_id;
        state.next_id += 1;
        state.contacts.insert(
            normalize::email(email),
            BrevoContact {
                id,
                email_blacklisted: blacklisted,
                list_ids: lists.iter().copied().collect(),
                attributes: BTreeMap::new(),
            },
        );
    }

    pub fn contact(&self, email: &str) -> Option<BrevoContact> {
        lock(&self.shared)
            .contacts
            .get(&normalize::email(email))
            .cloned()
    }

    pub fn is_blocklisted(&self, email: &str) -> bool {
        self.contact(email).is_some_and(|c| c.email_blacklisted)
    }

    /// Every request so far, in arrival order, rejected ones included.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared).requests.clone()
    }

    /// The same JSON as `GET /__fake/state`.
    pub fn state(&self) -> Value {
        lock(&self.shared).dump()
    }
}

impl Drop for FakeBrevo {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Records every request, then answers from the script, checks the key and the rate limit, and
/// adds the rate-limit headers.
async fn brevo_gate(
    State(shared): State<Arc<Mutex<BrevoState>>>,
    request: Request,
    next: Next,
) -> Response {
    let (request, complete) = record(request, |r| lock(&shared).requests.push(r)).await;
    if request.uri().path().starts_with("/__fake/") {
        return next.run(request).await;
    }
    if !complete {
        return brevo_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_parameter",
            "Request body too large",
        );
    }
    let (scripted, authorized, window) = {
        let mut state = lock(&shared);
        let authorized = request
            .headers()
            .get("api-key")
            .is_some_and(|v| v.as_bytes() == state.api_key.as_bytes());
        let window = state
            .window
            .as_mut()
            .map(|w| (w.limit, w.take(Instant::now())));
        (state.script.pop_front(), authorized, window)
    };
    let mut response = if let Some(scripted) = scripted {
        scripted.into_response()
    } else if !authorized {
        brevo_error(StatusCode::UNAUTHORIZED, "unauthorized", "Key not found")
    } else if let Some((_, (false, _, _))) = window {
        brevo_error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "The expected rate limit is exceeded.",
        )
    } else {
        next.run(request).await
    };
    if let Some((limit, (_, remaining, reset))) = window {
        let headers = response.headers_mut();
        for (name, value) in [
            ("x-sib-ratelimit-limit", limit.to_string()),
            ("x-sib-ratelimit-remaining", remaining.to_string()),
            ("x-sib-ratelimit-reset", reset.to_string()),
        ] {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
    }
    response
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CreateContact {
    email: String,
    #[serde(default)]
    attributes: Map<String, Value>,
    email_blacklisted: Option<bool>,
    #[serde(default)]
    list_ids: Vec<i64>,
    #[serde(default)]
    update_enabled: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct UpdateContact {
    #[serde(default)]
    attributes: Map<String, Value>,
    email_blacklisted: Option<bool>,
    #[serde(default)]
    list_ids: Vec<i64>,
    #[serde(default)]
    unlink_list_ids: Vec<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IdentifierQuery {
    identifier_type: Option<String>,
}

async fn brevo_create(State(shared): State<Arc<Mutex<BrevoState>>>, body: Bytes) -> Response {
    let create: CreateContact = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return brevo_error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    };
    if !is_valid_email(&create.email) {
        return invalid_parameter("Invalid email address");
    }
    let email = normalize::email(&create.email);
    let mut state = lock(&shared);
    if let Some(response) = state.check_lists(&create.list_ids) {
        return response;
    }
    if let Some(contact) = state.contacts.get_mut(&email) {
        if !create.update_enabled {
            return brevo_error(
                StatusCode::BAD_REQUEST,
                "duplicate_parameter",
                "Unable to create contact, email is already associated with another Contact",
            );
        }
        apply(
            contact,
            create.email_blacklisted,
            &create.list_ids,
            &[],
            create.attributes,
        );
        return StatusCode::NO_CONTENT.into_response();
    }
    let id = state.next_id;
    state.next_id += 1;
    let mut contact = BrevoContact {
        id,
        email_blacklisted: false,
        list_ids: BTreeSet::new(),
        attributes: BTreeMap::new(),
    };
    apply(
        &mut contact,
        create.email_blacklisted,
        &create.list_ids,
        &[],
        create.attributes,
    );
    state.contacts.insert(email, contact);
    json_response(
        StatusCode::CREATED,
        "application/json",
        &json!({ "id": id }),
    )
}

async fn brevo_update(
    State(shared): State<Arc<Mutex<BrevoState>>>,
    Path(identifier): Path<String>,
    Query(query): Query<IdentifierQuery>,
    body: Bytes,
) -> Response {
    let email = match contact_email(&identifier, &query) {
        Ok(email) => email,
        Err(message) => return invalid_parameter(&message),
    };
    let mut update: UpdateContact = match serde_json::from_slice(&body) {
        Ok(u) => u,
        Err(e) => return brevo_error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    };
    let mut state = lock(&shared);
    if let Some(response) = state.check_lists(&update.list_ids) {
        return response;
    }
    let Some(mut contact) = state.contacts.remove(&email) else {
        return contact_not_found();
    };
    let rename = update
        .attributes
        .remove("EMAIL")
        .and_then(|v| v.as_str().map(normalize::email))
        .filter(|new| *new != email);
    let key = match rename {
        Some(new) if state.contacts.contains_key(&new) => {
            state.contacts.insert(email, contact);
            return brevo_error(
                StatusCode::BAD_REQUEST,
                "duplicate_parameter",
                "Unable to update contact, email is already associated with another Contact",
            );
        }
        Some(new) => {
            // Brevo: "If a blocklisted contact's email address is updated, it is going to remove
            // that blocklisting … and they will be resubscribed."
            contact.email_blacklisted = false;
            new
        }
        None => email,
    };
    apply(
        &mut contact,
        update.email_blacklisted,
        &update.list_ids,
        &update.unlink_list_ids,
        update.attributes,
    );
    state.contacts.insert(key, contact);
    StatusCode::NO_CONTENT.into_response()
}

async fn brevo_delete(
    State(shared): State<Arc<Mutex<BrevoState>>>,
    Path(identifier): Path<String>,
    Query(query): Query<IdentifierQuery>,
) -> Response {
    let email = match contact_email(&identifier, &query) {
        Ok(email) => email,
        Err(message) => return invalid_parameter(&message),
    };
    match lock(&shared).contacts.remove(&email) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => contact_not_found(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    limit: Option<usize>,
    offset: Option<usize>,
    sort: Option<String>,
}

/// Brevo's "get contacts in a list": the list's members (blocklisted ones included, with
/// `emailBlacklisted`), `limit` (default 50, at most 500 here) from `offset`, oldest first with
/// `sort=asc`; `count` is the list's size. An unknown list is 404; an empty one `{"contacts": [],
/// "count": 0}`.
async fn brevo_list_contacts(
    State(shared): State<Arc<Mutex<BrevoState>>>,
    Path(list_id): Path<i64>,
    Query(query): Query<PageQuery>,
) -> Response {
    let limit = query.limit.unwrap_or(50);
    if limit == 0 || limit > 500 {
        return brevo_error(
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "limit must be between 1 and 500",
        );
    }
    let state = lock(&shared);
    if !state.lists.contains(&list_id) {
        return brevo_error(
            StatusCode::NOT_FOUND,
            "document_not_found",
            "List ID does not exist",
        );
    }
    let mut members: Vec<(&String, &BrevoContact)> = state
        .contacts
        .iter()
        .filter(|(_, c)| c.list_ids.contains(&list_id))
        .collect();
    members.sort_by_key(|(_, c)| c.id);
    if query.sort.as_deref() != Some("asc") {
        members.reverse();
    }
    let page: Vec<Value> = members
        .iter()
        .skip(query.offset.unwrap_or(0))
        .take(limit)
        .map(|(email, c)| {
            json!({
                "email": email,
                "id": c.id,
                "emailBlacklisted": c.email_blacklisted,
                "smsBlacklisted": false,
                "listIds": c.list_ids,
                "attributes": c.attributes,
            })
        })
        .collect();
    let body = json!({ "contacts": page, "count": members.len() });
    drop(state);
    json_response(StatusCode::OK, "application/json", &body)
}

async fn brevo_state(State(shared): State<Arc<Mutex<BrevoState>>>) -> Response {
    json_response(StatusCode::OK, "application/json", &lock(&shared).dump())
}

/// The fake supports addressing contacts by email only (`identifierType=email_id`, or none with
/// an address as the identifier); the error is a 400's message.
fn contact_email(identifier: &str, query: &IdentifierQuery) -> Result<String, String> {
    match query.identifier_type.as_deref() {
        Some("email_id") => Ok(normalize::email(identifier)),
        None if identifier.contains('@') => Ok(normalize::email(identifier)),
        other => Err(format!(
            "this fake supports only identifierType=email_id, not {other:?}"
        )),
    }
}

fn invalid_parameter(message: &str) -> Response {
    brevo_error(StatusCode::BAD_REQUEST, "invalid_parameter", message)
}

fn apply(
    contact: &mut BrevoContact,
    blacklisted: Option<bool>,
    link: &[i64],
    unlink: &[i64],
    attributes: Map<String, Value>,
) {
    if let Some(b) = blacklisted {
        contact.email_blacklisted = b;
    }
    contact.list_ids.extend(link);
    for id in unlink {
        contact.list_ids.remove(id);
    }
    contact.attributes.extend(attributes);
}

fn contact_not_found() -> Response {
    brevo_error(
        StatusCode::NOT_FOUND,
        "document_not_found",
        "Contact does not exist",
    )
}

/// Brevo's error body: `{"code","message"}` (docs/vendors/brevo.md §6).
fn brevo_error(status: StatusCode, code: &str, message: &str) -> Response {
    json_response(
        status,
        "application/json",
        &json!({ "code": code, "message": message }),
    )
}

// ---------------------------------------------------------------------------------------------
// Mailchimp

/// A running fake Mailchimp Marketing API (`/3.0`). The server stops when this value is dropped.
pub struct FakeMailchimp {
    addr: SocketAddr,
    shared: Arc<Mutex<MailchimpState>>,
    server: tokio::task::JoinHandle<()>,
}

/// One audience member as the fake holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    pub email_address: String,
    /// `subscribed`, `unsubscribed`, `cleaned`, `pending` or `transactional`.
    pub status: String,
}

struct MailchimpState {
    api_key: String,
    lists: BTreeSet<String>,
    /// (list id, subscriber hash) → member.
    members: BTreeMap<(String, String), Member>,
    /// (list id, subscriber hash) of permanently deleted members.
    forgotten: BTreeSet<(String, String)>,
    /// Whether a cleaned member may be set to `pending` (undocumented at Mailchimp).
    cleaned_accepts_pending: bool,
    /// Opt-in emails Mailchimp would have sent (a member set to `pending`), by address.
    confirmations_sent: BTreeMap<String, usize>,
    max_connections: usize,
    in_flight: usize,
    max_in_flight: usize,
    delay: Duration,
    script: VecDeque<ScriptedResponse>,
    requests: Vec<RecordedRequest>,
    /// A list webhook with the `api` source on: every unsubscribe made through the API is
    /// reported to this URL, as Mailchimp does for changes from any enabled source.
    api_webhook: Option<String>,
    /// The answers (status, body) the webhook got, in order.
    webhook_answers: Arc<Mutex<Vec<(u16, String)>>>,
    /// (list id, subscriber hash) → when the member last changed, and their unsubscribes
    /// (newest last), what `last_changed` and the member activity answer.
    changed: BTreeMap<(String, String), i64>,
    unsubscribes: BTreeMap<(String, String), Vec<i64>>,
    /// When each member last became `subscribed` (`timestamp_opt`).
    opted_in: BTreeMap<(String, String), i64>,
}

impl MailchimpState {
    /// Records a member's status as it changes at `at_ms`: an unsubscribe is member activity.
    fn set_status(
        &mut self,
        key: (String, String),
        email: String,
        status: &str,
        at_ms: i64,
        activity: bool,
    ) {
        let was = self.members.get(&key).map(|m| m.status.clone());
        if activity && status == "unsubscribed" && was.as_deref() != Some("unsubscribed") {
            self.unsubscribes
                .entry(key.clone())
                .or_default()
                .push(at_ms);
        }
        if status == "subscribed" && was.as_deref() != Some("subscribed") {
            self.opted_in.insert(key.clone(), at_ms);
        }
        self.changed.insert(key.clone(), at_ms);
        self.members.insert(
            key,
            Member {
                email_address: email,
                status: status.to_owned(),
            },
        );
    }
}

impl MailchimpState {
    fn dump(&self) -> Value {
        let mut lists = Map::new();
        for list in &self.lists {
            let members: Map<String, Value> = self
                .members
                .iter()
                .filter(|((l, _), _)| l == list)
                .map(|((_, hash), m)| (hash.clone(), json!(m)))
                .collect();
            let forgotten: Vec<&String> = self
                .forgotten
                .iter()
                .filter(|(l, _)| l == list)
                .map(|(_, hash)| hash)
                .collect();
            lists.insert(
                list.clone(),
                json!({ "members": members, "forgotten": forgotten }),
            );
        }
        json!({ "lists": lists })
    }
}

/// Lowercase hex MD5 of the lowercased address: Mailchimp's subscriber hash.
pub fn subscriber_hash(email: &str) -> String {
    Md5::digest(normalize::email(email).as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl FakeMailchimp {
    /// Starts the fake on a free port of 127.0.0.1, accepting `api_key`, with the audiences `lists`.
    ///
    /// # Panics
    /// If no port can be bound: a test cannot go on without its fake.
    pub async fn start(api_key: &str, lists: &[&str]) -> FakeMailchimp {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), api_key, lists)
            .await
            .expect("bind the fake Mailchimp on 127.0.0.1")
    }

    /// Starts the fake on `addr` (the demo uses a fixed port).
    pub async fn start_on(
        addr: SocketAddr,
        api_key: &str,
        lists: &[&str],
    ) -> std::io::Result<FakeMailchimp> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Mutex::new(MailchimpState {
            api_key: api_key.to_owned(),
            lists: lists.iter().map(|l| (*l).to_owned()).collect(),
            members: BTreeMap::new(),
            forgotten: BTreeSet::new(),
            cleaned_accepts_pending: false,
            confirmations_sent: BTreeMap::new(),
            max_connections: MAILCHIMP_MAX_CONNECTIONS,
            in_flight: 0,
            max_in_flight: 0,
            delay: Duration::ZERO,
            script: VecDeque::new(),
            requests: Vec::new(),
            api_webhook: None,
            webhook_answers: Arc::default(),
            changed: BTreeMap::new(),
            unsubscribes: BTreeMap::new(),
            opted_in: BTreeMap::new(),
        }));
        let app = Router::new()
            .route("/3.0/lists/{list_id}", get(mailchimp_list))
            .route("/3.0/lists/{list_id}/members", get(mailchimp_members))
            .route("/3.0/lists/{list_id}/members/{hash}", put(mailchimp_upsert))
            .route(
                "/3.0/lists/{list_id}/members/{hash}/activity",
                get(mailchimp_activity),
            )
            .route(
                "/3.0/lists/{list_id}/members/{hash}/actions/delete-permanent",
                post(mailchimp_delete_permanent),
            )
            .route(STATE_PATH, get(mailchimp_state))
            .fallback(|| async { not_found() })
            .layer(middleware::from_fn_with_state(
                shared.clone(),
                mailchimp_gate,
            ))
            .with_state(shared.clone());
        let server = tokio::spawn(serve(listener, app, "Mailchimp"));
        Ok(FakeMailchimp {
            addr,
            shared,
            server,
        })
    }

    /// `http://127.0.0.1:<port>/3.0`, to use as a list's `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}/3.0", self.addr)
    }

    /// Requests at once beyond which the fake answers 429 (default 10, Mailchimp's limit).
    pub fn set_max_connections(&self, max: usize) {
        lock(&self.shared).max_connections = max;
    }

    /// Answers every Mailchimp request `delay` late, after its state change is applied.
    pub fn set_response_delay(&self, delay: Duration) {
        lock(&self.shared).delay = delay;
    }

    /// The most requests the fake had in flight at once.
    pub fn max_in_flight(&self) -> usize {
        lock(&self.shared).max_in_flight
    }

    /// Queues an answer for the next request to a Mailchimp endpoint.
    pub fn push_response(&self, response: ScriptedResponse) {
        lock(&self.shared).script.push_back(response);
    }

    /// Seeds a member as if the person acted at Mailchimp (e.g. clicked "unsubscribe").
    pub fn set_member_status(&self, list_id: &str, email: &str, status: &str) {
        self.set_member_status_at(list_id, email, status, crate::webhooks::now_ms());
    }

    /// The member's status changes at `at_ms` (the person clicked "unsubscribe" then).
    pub fn set_member_status_at(&self, list_id: &str, email: &str, status: &str, at_ms: i64) {
        lock(&self.shared).set_status(
            (list_id.to_owned(), subscriber_hash(email)),
            normalize::email(email),
            status,
            at_ms,
            true,
        );
    }

    /// As [`Self::set_member_status_at`], but leaving no member activity (an unsubscribe
    /// Mailchimp's activity feed does not show, or one beyond its last 50 events).
    pub fn set_member_status_without_activity_at(
        &self,
        list_id: &str,
        email: &str,
        status: &str,
        at_ms: i64,
    ) {
        lock(&self.shared).set_status(
            (list_id.to_owned(), subscriber_hash(email)),
            normalize::email(email),
            status,
            at_ms,
            false,
        );
    }

    /// Registers a list webhook at `url` that fires for API-made changes too (Mailchimp's
    /// `sources.api`): the relay's own unsubscribes come back to `ingest` as webhooks.
    pub fn fire_webhooks_for_api_changes(&self, url: &str) {
        lock(&self.shared).api_webhook = Some(url.to_owned());
    }

    /// What `ingest` answered to the webhooks fired so far (status, body).
    pub fn webhook_answers(&self) -> Vec<(u16, String)> {
        let answers = lock(&self.shared).webhook_answers.clone();
        let answers = answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        answers
    }

    /// Lets a cleaned member be set to `pending` too (Mailchimp's behaviour there is undocumented).
    pub fn set_cleaned_accepts_pending(&self, accepts: bool) {
        lock(&self.shared).cleaned_accepts_pending = accepts;
    }

    /// How many opt-in confirmation emails the address would have received.
    pub fn confirmations_sent(&self, email: &str) -> usize {
        lock(&self.shared)
            .confirmations_sent
            .get(&normalize::email(email))
            .copied()
            .unwrap_or(0)
    }

    /// The member's status, or `None` when the address is not in the audience.
    pub fn member_status(&self, list_id: &str, email: &str) -> Option<String> {
        lock(&self.shared)
            .members
            .get(&(list_id.to_owned(), subscriber_hash(email)))
            .map(|m| m.status.clone())
    }

    /// Whether the address was permanently deleted from the audience.
    pub fn is_forgotten(&self, list_id: &str, email: &str) -> bool {
        lock(&self.shared)
            .forgotten
            .contains(&(list_id.to_owned(), subscriber_hash(email)))
    }

    /// Every request so far, in arrival order, rejected ones included.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared).requests.clone()
    }

    /// The same JSON as `GET /__fake/state`.
    pub fn state(&self) -> Value {
        lock(&self.shared).dump()
    }
}

impl Drop for FakeMailchimp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Takes a connection slot for the life of the request.
struct Connection(Arc<Mutex<MailchimpState>>);

impl Drop for Connection {
    fn drop(&mut self) {
        lock(&self.0).in_flight -= 1;
    }
}

/// Records every request, then answers from the script, checks the key and the connection limit,
/// and delays the answer.
async fn mailchimp_gate(
    State(shared): State<Arc<Mutex<MailchimpState>>>,
    request: Request,
    next: Next,
) -> Response {
    let (request, complete) = record(request, |r| lock(&shared).requests.push(r)).await;
    if request.uri().path().starts_with("/__fake/") {
        return next.run(request).await;
    }
    if !complete {
        return problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Invalid Resource",
            "Body too large",
        );
    }
    let (scripted, authorized, over_limit, delay) = {
        let mut state = lock(&shared);
        state.in_flight += 1;
        state.max_in_flight = state.max_in_flight.max(state.in_flight);
        let authorized = is_authorized(request.headers(), &state.api_key);
        let over_limit = state.in_flight > state.max_connections;
        (
            state.script.pop_front(),
            authorized,
            over_limit,
            state.delay,
        )
    };
    let _slot = Connection(shared.clone());
    let response = if let Some(scripted) = scripted {
        scripted.into_response()
    } else if !authorized {
        problem(
            StatusCode::UNAUTHORIZED,
            "API Key Invalid",
            "Your API key may be invalid, or you've attempted to access the wrong datacenter.",
        )
    } else if over_limit {
        problem(
            StatusCode::TOO_MANY_REQUESTS,
            "Too Many Requests",
            "You have exceeded the limit of 10 simultaneous connections.",
        )
    } else {
        next.run(request).await
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    response
}

/// HTTP Basic with any user name and the key as the password, or an OAuth-style Bearer token.
fn is_authorized(headers: &HeaderMap, api_key: &str) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    if let Some(token) = value.strip_prefix("Bearer ") {
        return token == api_key;
    }
    value
        .strip_prefix("Basic ")
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|pair| pair.split_once(':').map(|(_, key)| key == api_key))
        .unwrap_or(false)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpsertMember {
    email_address: String,
    status: Option<String>,
    status_if_new: Option<String>,
}

const STATUSES: [&str; 5] = [
    "subscribed",
    "unsubscribed",
    "cleaned",
    "pending",
    "transactional",
];

async fn mailchimp_list(
    State(shared): State<Arc<Mutex<MailchimpState>>>,
    Path(list_id): Path<String>,
) -> Response {
    if !lock(&shared).lists.contains(&list_id) {
        return not_found();
    }
    json_response(
        StatusCode::OK,
        "application/json",
        &json!({ "id": list_id, "name": format!("Audience {list_id}") }),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MembersQuery {
    count: Option<usize>,
    offset: Option<usize>,
    fields: Option<String>,
    status: Option<String>,
    unsubscribed_since: Option<String>,
}

/// Mailchimp's "list members info": every member whatever its status (or those of `status`),
/// `count` (default 10, at most 1 000) from `offset`, with `total_items`. `unsubscribed_since`
/// (ISO 8601) keeps members unsubscribed since then, and is an error with any `status` but
/// `unsubscribed`. `fields` is accepted and ignored (the fake always sends `email_address`,
/// `status`, `last_changed` and `timestamp_opt`). An empty audience answers `{"members": [], "total_items": 0}`.
async fn mailchimp_members(
    State(shared): State<Arc<Mutex<MailchimpState>>>,
    Path(list_id): Path<String>,
    Query(query): Query<MembersQuery>,
) -> Response {
    let count = query.count.unwrap_or(10);
    if count > 1_000 {
        return invalid_resource("count must be at most 1000");
    }
    let _ = query.fields;
    let since = match &query.unsubscribed_since {
        None => None,
        Some(_) if query.status.as_deref() != Some("unsubscribed") => {
            return invalid_resource("unsubscribed_since can only be used with status=unsubscribed")
        }
        Some(text) => match parse_iso8601_ms(text) {
            Some(ms) => Some(ms),
            None => return invalid_resource("unsubscribed_since: not an ISO 8601 time"),
        },
    };
    let state = lock(&shared);
    if !state.lists.contains(&list_id) {
        return not_found();
    }
    let all: Vec<(&(String, String), &Member)> = state
        .members
        .iter()
        .filter(|((l, _), _)| *l == list_id)
        .filter(|(_, m)| query.status.as_ref().is_none_or(|s| *s == m.status))
        .filter(|(key, _)| {
            since.is_none_or(|since| {
                state
                    .unsubscribes
                    .get(*key)
                    .and_then(|u| u.last())
                    .is_some_and(|at| *at >= since)
            })
        })
        .collect();
    let page: Vec<Value> = all
        .iter()
        .skip(query.offset.unwrap_or(0))
        .take(count)
        .map(|(key, m)| {
            json!({
                "id": subscriber_hash(&m.email_address),
                "email_address": m.email_address,
                "status": m.status,
                "list_id": list_id,
                "last_changed": iso8601(state.changed.get(*key).copied().unwrap_or(0)),
                // Mailchimp sends an empty string for a member who never opted in.
                "timestamp_opt": state.opted_in.get(*key).map_or_else(String::new, |t| iso8601(*t)),
            })
        })
        .collect();
    let body = json!({ "members": page, "list_id": list_id, "total_items": all.len() });
    drop(state);
    json_response(StatusCode::OK, "application/json", &body)
}

/// Mailchimp's "view recent activity 50": the member's newest events first, `action` filtering
/// them (the fake knows only `unsub`).
async fn mailchimp_activity(
    State(shared): State<Arc<Mutex<MailchimpState>>>,
    Path((list_id, hash)): Path<(String, String)>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let state = lock(&shared);
    let key = (list_id.clone(), hash.clone());
    if !state.members.contains_key(&key) {
        return not_found();
    }
    let wanted = |action: &str| {
        query
            .get("action")
            .is_none_or(|list| list.split(',').any(|a| a == action))
    };
    let activity: Vec<Value> = state
        .unsubscribes
        .get(&key)
        .into_iter()
        .flatten()
        .rev()
        .take(50)
        .filter(|_| wanted("unsub"))
        .map(|at| {
            json!({"action": "unsub", "timestamp": iso8601(*at), "type": "", "campaign_id": "",
                   "title": "", "parent_campaign": ""})
        })
        .collect();
    let body = json!({"email_id": hash, "list_id": list_id, "total_items": activity.len(),
                      "activity": activity});
    drop(state);
    json_response(StatusCode::OK, "application/json", &body)
}

/// `2015-10-21T15:41:36+00:00`, Mailchimp's time format in its API.
pub fn iso8601(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    let text = humantime::format_rfc3339_seconds(t).to_string();
    format!("{}+00:00", text.trim_end_matches('Z'))
}

/// Reads [`iso8601`] back (UTC offsets only: the fake's clients send those).
fn parse_iso8601_ms(text: &str) -> Option<i64> {
    let utc = text
        .strip_suffix("+00:00")
        .map_or_else(|| text.to_owned(), |t| format!("{t}Z"));
    let t = humantime::parse_rfc3339(&utc).ok()?;
    i64::try_from(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis()).ok()
}

async fn mailchimp_upsert(
    State(shared): State<Arc<Mutex<MailchimpState>>>,
    Path((list_id, hash)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let upsert: UpsertMember = match serde_json::from_slice(&body) {
        Ok(u) => u,
        Err(e) => return invalid_resource(&e.to_string()),
    };
    if !is_valid_email(&upsert.email_address) {
        return invalid_resource("Please provide a valid email address.");
    }
    if subscriber_hash(&upsert.email_address) != hash {
        return invalid_resource("The subscriber hash does not match email_address.");
    }
    for status in [&upsert.status, &upsert.status_if_new]
        .into_iter()
        .flatten()
    {
        if !STATUSES.contains(&status.as_str()) {
            return invalid_resource(&format!("{status:?} is not a valid status."));
        }
    }
    let email = normalize::email(&upsert.email_address);
    let mut state = lock(&shared);
    if !state.lists.contains(&list_id) {
        return not_found();
    }
    let key = (list_id.clone(), hash.clone());
    if state.forgotten.contains(&key) {
        return problem(
            StatusCode::BAD_REQUEST,
            "Forgotten Email Not Subscribed",
            &format!(
                "{email} was permanently deleted and cannot be re-imported. The contact must \
                 re-subscribe to get back on the list."
            ),
        );
    }
    let status = match state.members.get(&key) {
        Some(member) => {
            let wanted = upsert.status.unwrap_or_else(|| member.status.clone());
            let refused = match (wanted.as_str(), member.status.as_str()) {
                ("subscribed", "unsubscribed" | "cleaned") => true,
                ("pending", "cleaned") => !state.cleaned_accepts_pending,
                _ => false,
            };
            if refused {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "Member In Compliance State",
                    &format!(
                        "{email} is in a compliance state due to unsubscribe, bounce, or \
                         compliance review and cannot be subscribed."
                    ),
                );
            }
            wanted
        }
        None => match upsert.status_if_new {
            Some(status) => status,
            None => return invalid_resource("status_if_new: Required for new members."),
        },
    };
    let was = state.members.get(&key).map(|m| m.status.clone());
    if status == "pending" && was.as_deref() != Some("pending") {
        *state.confirmations_sent.entry(email.clone()).or_default() += 1;
    }
    state.set_status(key, email.clone(), &status, crate::webhooks::now_ms(), true);
    if let Some(url) = state.api_webhook.clone() {
        if status == "unsubscribed" && was.as_deref() != Some("unsubscribed") {
            // Mailchimp fires its webhooks after the change, not inside the API call.
            let form = crate::webhooks::mailchimp_unsubscribe(
                &list_id,
                &email,
                &crate::webhooks::mailchimp_time(crate::webhooks::now_ms()),
            );
            let answers = state.webhook_answers.clone();
            tokio::spawn(async move {
                let answer = crate::webhooks::send_mailchimp(&url, &form).await;
                answers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((answer.0.as_u16(), answer.1));
            });
        }
    }
    json_response(
        StatusCode::OK,
        "application/json",
        &json!({
            "id": hash,
            "email_address": email,
            "status": status,
            "list_id": list_id,
        }),
    )
}

async fn mailchimp_delete_permanent(
    State(shared): State<Arc<Mutex<MailchimpState>>>,
    Path((list_id, hash)): Path<(String, String)>,
) -> Response {
    let mut state = lock(&shared);
    let key = (list_id, hash);
    if state.members.remove(&key).is_none() {
        return not_found();
    }
    state.forgotten.insert(key);
    StatusCode::NO_CONTENT.into_response()
}

async fn mailchimp_state(State(shared): State<Arc<Mutex<MailchimpState>>>) -> Response {
    json_response(StatusCode::OK, "application/json", &lock(&shared).dump())
}

fn not_found() -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "Resource Not Found",
        "The requested resource could not be found.",
    )
}

fn invalid_resource(detail: &str) -> Response {
    problem(StatusCode::BAD_REQUEST, "Invalid Resource", detail)
}

/// Mailchimp's `application/problem+json` error (docs/vendors/mailchimp.md §6).
fn problem(status: StatusCode, title: &str, detail: &str) -> Response {
    json_response(
        status,
        "application/problem+json; charset=utf-8",
        &json!({
            "type": "https://mailchimp.com/developer/marketing/docs/errors/",
            "title": title,
            "status": status.as_u16(),
            "detail": detail,
            "instance": uuid::Uuid::new_v4().to_string(),
        }),
    )
}

impl crate::recorded::Recording for FakeBrevo {
    fn request_count(&self) -> usize {
        lock(&self.shared).requests.len()
    }
    fn find_request(
        &self,
        from: usize,
        pred: &dyn Fn(&RecordedRequest) -> bool,
    ) -> Option<std::time::Instant> {
        crate::recorded::find_from(&lock(&self.shared).requests, from, pred)
    }
}

impl crate::recorded::Recording for FakeMailchimp {
    fn request_count(&self) -> usize {
        lock(&self.shared).requests.len()
    }
    fn find_request(
        &self,
        from: usize,
        pred: &dyn Fn(&RecordedRequest) -> bool,
    ) -> Option<std::time::Instant> {
        crate::recorded::find_from(&lock(&self.shared).requests, from, pred)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriber_hash_matches_mailchimps_example() {
        assert_eq!(
            subscriber_hash("Urist.McVankab@freddiesjokes.com"),
            "62eeb292278cc15f5817cb78f7790b08"
        );
    }

    #[test]
    fn rate_window_counts_and_resets() {
        let mut w = RateWindow {
            limit: 2,
            length: Duration::from_secs(10),
            started: None,
            used: 0,
        };
        let t0 = Instant::now();
        assert_eq!(w.take(t0), (true, 1, 10));
        assert_eq!(w.take(t0 + Duration::from_millis(2_500)), (true, 0, 8));
        assert_eq!(w.take(t0 + Duration::from_secs(3)), (false, 0, 7));
        assert_eq!(w.take(t0 + Duration::from_secs(10)), (true, 1, 10));
    }

    #[test]
    fn mailchimp_accepts_basic_or_bearer() {
        let with = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            is_authorized(&h, "key-us1")
        };
        let basic = base64::engine::general_purpose::STANDARD.encode("anything:key-us1");
        assert!(with(&format!("Basic {basic}")));
        assert!(with("Bearer key-us1"));
        let wrong = base64::engine::general_purpose::STANDARD.encode("anything:other");
        assert!(!with(&format!("Basic {wrong}")));
        assert!(!with("Bearer other"));
        assert!(!is_authorized(&HeaderMap::new(), "key-us1"));
    }
}
