//! A fake HubSpot: the v4 communication-preferences batch endpoints and the CRM GDPR delete, with
//! the payload checks, auth, batch limit and error bodies of `api-notes.md` §1, on `127.0.0.1`.
//!
//! Tests read its state (subscription statuses, opt-outs, blocklist, how many changes each address
//! saw) and script failures (`push_response`) or slow answers (`set_response_delay`).
//! `GET /__fake/state` dumps the state as JSON for the demo; the `/__fake/` prefix marks paths that
//! HubSpot does not have.
//!
//! What HubSpot does not document, the fake decides like this: unknown JSON fields are rejected
//! (strictness catches typos in our client); a status write creates the contact when it is unknown;
//! writes to a blocklisted address are accepted; a GDPR delete supports `idProperty: "email"` only.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use relay_events::normalize;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// `POST` path of the v4 batch status write.
pub const BATCH_WRITE_PATH: &str = "/communication-preferences/v4/statuses/batch/write";
/// `POST` path of the v4 batch unsubscribe-from-all (with `?channel=EMAIL`).
pub const UNSUBSCRIBE_ALL_PATH: &str =
    "/communication-preferences/v4/statuses/batch/unsubscribe-all";
/// `POST` path of the CRM GDPR delete.
pub const GDPR_DELETE_PATH: &str = "/crm/v3/objects/contacts/gdpr-delete";
/// `GET` path of the JSON state dump (not a HubSpot endpoint).
pub const STATE_PATH: &str = "/__fake/state";

const SUBSCRIBED: &str = "SUBSCRIBED";
const UNSUBSCRIBED: &str = "UNSUBSCRIBED";
const NOT_SPECIFIED: &str = "NOT_SPECIFIED";
const NO_STATUS_CHANGE: &str = "NO_STATUS_CHANGE";
const REQUESTED_CHANGE_OCCURRED: &str = "REQUESTED_CHANGE_OCCURRED";
const RESUBSCRIBE_OCCURRED: &str = "RESUBSCRIBE_OCCURRED";
const UNSUBSCRIBE_FROM_ALL_OCCURRED: &str = "UNSUBSCRIBE_FROM_ALL_OCCURRED";
const LEGAL_BASES: [&str; 7] = [
    "CONSENT_WITH_NOTICE",
    "LEGITIMATE_INTEREST_CLIENT",
    "LEGITIMATE_INTEREST_OTHER",
    "LEGITIMATE_INTEREST_PQL",
    "NON_GDPR",
    "PERFORMANCE_OF_CONTRACT",
    "PROCESS_AND_STORE",
];
/// The batch limit public HubSpot clients use; HubSpot's own is undocumented.
const DEFAULT_MAX_INPUTS: usize = 100;
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// A running fake. The server stops when this value is dropped.
pub struct FakeHubSpot {
    addr: SocketAddr,
    shared: Shared,
    server: tokio::task::JoinHandle<()>,
}

/// One request as the fake received it, rejected ones included.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query, as sent.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub at: Instant,
}

/// An answer the fake gives instead of handling the next request. It changes no state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptedResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl ScriptedResponse {
    /// A 500 with a HubSpot error body.
    pub fn server_error() -> Self {
        Self::json(
            500,
            error_body("internal error", "INTERNAL_ERROR"),
            Vec::new(),
        )
    }

    /// A 429 of the ten-second burst limit, with `Retry-After: <retry_after_secs>`.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        let mut body = error_body("You have reached your secondly limit.", "RATE_LIMITS");
        body["policyName"] = json!("TEN_SECONDLY_ROLLING");
        Self::json(
            429,
            body,
            vec![("Retry-After".to_owned(), retry_after_secs.to_string())],
        )
    }

    /// The 401 HubSpot gives for a missing or wrong token.
    pub fn unauthorized() -> Self {
        Self::json(401, unauthorized_body(), Vec::new())
    }

    /// Any status with a JSON body and extra headers.
    pub fn json(status: u16, body: Value, headers: Vec<(String, String)>) -> Self {
        ScriptedResponse {
            status,
            headers,
            body: body.to_string(),
        }
    }
}

impl IntoResponse for ScriptedResponse {
    fn into_response(self) -> Response {
        let mut builder = Response::builder().status(self.status);
        if !self.body.is_empty() {
            builder = builder.header(header::CONTENT_TYPE, "application/json;charset=utf-8");
        }
        for (name, value) in &self.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        builder.body(Body::from(self.body)).unwrap_or_else(|e| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("invalid scripted response: {e}"),
            )
                .into_response()
        })
    }
}

type Shared = Arc<Mutex<FakeState>>;

struct FakeState {
    token: String,
    max_inputs: usize,
    delay: Duration,
    script: VecDeque<ScriptedResponse>,
    contacts: BTreeMap<String, ContactState>,
    blocklist: BTreeSet<String>,
    /// Survives a GDPR delete, so that tests can count effects across an erasure.
    status_changes: BTreeMap<String, usize>,
    requests: Vec<RecordedRequest>,
}

#[derive(Debug, Default, Serialize)]
struct ContactState {
    /// Subscription type id → `SUBSCRIBED` or `UNSUBSCRIBED`.
    subscriptions: BTreeMap<i64, &'static str>,
    unsubscribed_from_all: bool,
}

impl FakeState {
    fn new(token: &str) -> Self {
        FakeState {
            token: token.to_owned(),
            max_inputs: DEFAULT_MAX_INPUTS,
            delay: Duration::ZERO,
            script: VecDeque::new(),
            contacts: BTreeMap::new(),
            blocklist: BTreeSet::new(),
            status_changes: BTreeMap::new(),
            requests: Vec::new(),
        }
    }

    fn count_change(&mut self, email: &str) {
        *self.status_changes.entry(email.to_owned()).or_default() += 1;
    }

    fn dump(&self) -> Value {
        json!({
            "contacts": self.contacts,
            "blocklist": self.blocklist,
            "status_changes": self.status_changes,
        })
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, FakeState> {
    // A test that panicked while holding the lock must not hide the state from the others.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FakeHubSpot {
    /// Starts the fake on a free port of 127.0.0.1, accepting `token`.
    ///
    /// # Panics
    /// If no port can be bound: a test cannot go on without its fake.
    pub async fn start(token: &str) -> FakeHubSpot {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), token)
            .await
            .expect("bind the fake HubSpot on 127.0.0.1")
    }

    /// Starts the fake on `addr` (the demo uses a fixed port), accepting `token`.
    pub async fn start_on(addr: SocketAddr, token: &str) -> std::io::Result<FakeHubSpot> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared: Shared = Arc::new(Mutex::new(FakeState::new(token)));
        let app = Router::new()
            .route(BATCH_WRITE_PATH, post(batch_write))
            .route(UNSUBSCRIBE_ALL_PATH, post(unsubscribe_all))
            .route(GDPR_DELETE_PATH, post(gdpr_delete))
            .route(STATE_PATH, get(state_dump))
            // HubSpot answers unknown paths with an empty 404.
            .fallback(|| async { StatusCode::NOT_FOUND })
            .layer(middleware::from_fn_with_state(shared.clone(), gate))
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("fake HubSpot on {addr} stopped: {e}");
            }
        });
        Ok(FakeHubSpot {
            addr,
            shared,
            server,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`, to use as the sink's `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Accepts only `token` from now on.
    pub fn set_token(&self, token: &str) {
        lock(&self.shared).token = token.to_owned();
    }

    /// Changes the batch limit (default 100); larger batches get a 400.
    pub fn set_max_inputs(&self, max: usize) {
        lock(&self.shared).max_inputs = max;
    }

    /// Answers every HubSpot request `delay` late, after its state change is applied.
    pub fn set_response_delay(&self, delay: Duration) {
        lock(&self.shared).delay = delay;
    }

    /// Queues an answer for the next request to any HubSpot endpoint.
    pub fn push_response(&self, response: ScriptedResponse) {
        lock(&self.shared).script.push_back(response);
    }

    /// `SUBSCRIBED` or `UNSUBSCRIBED`, or `None` when the contact never had a status for the type.
    pub fn subscription_status(&self, email: &str, subscription_id: i64) -> Option<String> {
        lock(&self.shared)
            .contacts
            .get(&normalize::email(email))
            .and_then(|c| c.subscriptions.get(&subscription_id))
            .map(|s| (*s).to_owned())
    }

    pub fn unsubscribed_from_all(&self, email: &str) -> bool {
        lock(&self.shared)
            .contacts
            .get(&normalize::email(email))
            .is_some_and(|c| c.unsubscribed_from_all)
    }

    /// Whether a GDPR delete named the address.
    pub fn is_blocklisted(&self, email: &str) -> bool {
        lock(&self.shared)
            .blocklist
            .contains(&normalize::email(email))
    }

    /// How many requests ever changed state for the address (a repeat that changes nothing does
    /// not count), so tests can prove that a redelivery had no second effect.
    pub fn status_changes(&self, email: &str) -> usize {
        lock(&self.shared)
            .status_changes
            .get(&normalize::email(email))
            .copied()
            .unwrap_or(0)
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

impl Drop for FakeHubSpot {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Records every request, then answers from the script, checks the token, and delays the answer.
async fn gate(State(shared): State<Shared>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return hubspot_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request body too large",
            "VALIDATION_ERROR",
        );
    };
    let hubspot_path = !parts.uri.path().starts_with("/__fake/");
    let (scripted, authorized, delay) = {
        let mut state = lock(&shared);
        state.requests.push(RecordedRequest {
            method: parts.method.to_string(),
            path: parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned()),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: String::from_utf8_lossy(&bytes).into_owned(),
            at: Instant::now(),
        });
        if hubspot_path {
            let expected = format!("Bearer {}", state.token);
            let authorized = parts
                .headers
                .get(header::AUTHORIZATION)
                .is_some_and(|v| v.as_bytes() == expected.as_bytes());
            (state.script.pop_front(), authorized, state.delay)
        } else {
            (None, true, Duration::ZERO)
        }
    };

    let response = if let Some(scripted) = scripted {
        scripted.into_response()
    } else if !authorized {
        json_response(StatusCode::UNAUTHORIZED, unauthorized_body())
    } else {
        next.run(Request::from_parts(parts, Body::from(bytes)))
            .await
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    response
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody<T> {
    inputs: Vec<T>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct WriteInput {
    subscriber_id_string: String,
    channel: String,
    status_state: String,
    subscription_id: i64,
    legal_basis: Option<String>,
    legal_basis_explanation: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GdprDeleteBody {
    object_id: String,
    id_property: Option<String>,
}

async fn batch_write(State(shared): State<Shared>, body: Bytes) -> Response {
    let requested_at = now();
    let max = lock(&shared).max_inputs;
    let inputs = match parse_batch::<WriteInput>(&body, max) {
        Ok(inputs) => inputs,
        Err(message) => return validation_error(&message),
    };
    for (i, input) in inputs.iter().enumerate() {
        if let Err(message) = check_write_input(input) {
            return validation_error(&format!("inputs[{i}]: {message}"));
        }
    }

    let mut results = Vec::new();
    let mut errors = Vec::new();
    let mut state = lock(&shared);
    for input in inputs {
        if !is_valid_email(&input.subscriber_id_string) {
            errors.push(invalid_email(&input.subscriber_id_string));
            continue;
        }
        let email = normalize::email(&input.subscriber_id_string);
        let reason = write_status(
            &mut state,
            &email,
            input.subscription_id,
            &input.status_state,
        );
        results.push(json!({
            "channel": "EMAIL",
            "status": input.status_state,
            "subscriberIdString": email,
            "subscriptionId": input.subscription_id,
            "timestamp": now(),
            "businessUnitId": 0,
            "legalBasis": input.legal_basis,
            "legalBasisExplanation": input.legal_basis_explanation,
            "setStatusSuccessReason": reason,
            "subscriptionName": format!("Subscription {}", input.subscription_id),
        }));
    }
    drop(state);
    batch_response(requested_at, results, errors)
}

fn check_write_input(input: &WriteInput) -> Result<(), String> {
    if input.channel != "EMAIL" {
        return Err(format!("channel {:?} is not supported", input.channel));
    }
    if ![SUBSCRIBED, UNSUBSCRIBED, NOT_SPECIFIED].contains(&input.status_state.as_str()) {
        return Err(format!("statusState {:?} is invalid", input.status_state));
    }
    if let Some(basis) = &input.legal_basis {
        if !LEGAL_BASES.contains(&basis.as_str()) {
            return Err(format!("legalBasis {basis:?} is invalid"));
        }
        if input
            .legal_basis_explanation
            .as_deref()
            .is_none_or(|e| e.trim().is_empty())
        {
            return Err("legalBasisExplanation is required when legalBasis is set".to_owned());
        }
    }
    Ok(())
}

/// Applies one status write and returns HubSpot's `setStatusSuccessReason`.
fn write_status(state: &mut FakeState, email: &str, id: i64, requested: &str) -> &'static str {
    let contact = state.contacts.entry(email.to_owned()).or_default();
    let current = contact.subscriptions.get(&id).copied();
    let reason = match requested {
        // v4 may resubscribe a contact who opted out, and that lifts the portal-wide opt-out.
        SUBSCRIBED if contact.unsubscribed_from_all || current == Some(UNSUBSCRIBED) => {
            contact.unsubscribed_from_all = false;
            contact.subscriptions.insert(id, SUBSCRIBED);
            RESUBSCRIBE_OCCURRED
        }
        SUBSCRIBED | UNSUBSCRIBED => {
            let new = if requested == SUBSCRIBED {
                SUBSCRIBED
            } else {
                UNSUBSCRIBED
            };
            if current == Some(new) {
                NO_STATUS_CHANGE
            } else {
                contact.subscriptions.insert(id, new);
                REQUESTED_CHANGE_OCCURRED
            }
        }
        _ => {
            if contact.subscriptions.remove(&id).is_some() {
                REQUESTED_CHANGE_OCCURRED
            } else {
                NO_STATUS_CHANGE
            }
        }
    };
    if reason != NO_STATUS_CHANGE {
        state.count_change(email);
    }
    reason
}

async fn unsubscribe_all(
    State(shared): State<Shared>,
    Query(query): Query<BTreeMap<String, String>>,
    body: Bytes,
) -> Response {
    let requested_at = now();
    if query.get("channel").map(String::as_str) != Some("EMAIL") {
        return validation_error("query parameter channel must be EMAIL");
    }
    let max = lock(&shared).max_inputs;
    let inputs = match parse_batch::<String>(&body, max) {
        Ok(inputs) => inputs,
        Err(message) => return validation_error(&message),
    };

    let mut results = Vec::new();
    let mut errors = Vec::new();
    let mut state = lock(&shared);
    for input in inputs {
        if !is_valid_email(&input) {
            errors.push(invalid_email(&input));
            continue;
        }
        let email = normalize::email(&input);
        let timestamp = now();
        let contact = state.contacts.entry(email.clone()).or_default();
        let mut changed = !contact.unsubscribed_from_all;
        contact.unsubscribed_from_all = true;
        let mut statuses = Vec::new();
        for (id, status) in contact.subscriptions.iter_mut() {
            let reason = if *status == UNSUBSCRIBED {
                NO_STATUS_CHANGE
            } else {
                *status = UNSUBSCRIBED;
                changed = true;
                UNSUBSCRIBE_FROM_ALL_OCCURRED
            };
            statuses.push(json!({
                "channel": "EMAIL",
                "status": UNSUBSCRIBED,
                "subscriberIdString": email,
                "subscriptionId": id,
                "timestamp": timestamp,
                "businessUnitId": 0,
                "setStatusSuccessReason": reason,
            }));
        }
        if changed {
            state.count_change(&email);
        }
        results.push(json!({
            "subscriberIdString": email,
            "statuses": statuses,
            "wideStatuses": [{
                "channel": "EMAIL",
                "status": UNSUBSCRIBED,
                "subscriberIdString": email,
                "timestamp": timestamp,
                "wideStatusType": "PORTAL_WIDE",
                "businessUnitId": 0,
            }],
            "setStatusSuccessReason":
                if changed { UNSUBSCRIBE_FROM_ALL_OCCURRED } else { NO_STATUS_CHANGE },
        }));
    }
    drop(state);
    batch_response(requested_at, results, errors)
}

async fn gdpr_delete(State(shared): State<Shared>, body: Bytes) -> Response {
    let request: GdprDeleteBody = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return validation_error(&format!("Invalid input JSON: {e}")),
    };
    if request.id_property.as_deref() != Some("email") {
        return validation_error("this fake supports only idProperty \"email\"");
    }
    let email = normalize::email(&request.object_id);
    let mut state = lock(&shared);
    let existed = state.contacts.remove(&email).is_some();
    // HubSpot blocklists the address whether or not a contact had it.
    let newly_blocked = state.blocklist.insert(email.clone());
    if existed || newly_blocked {
        state.count_change(&email);
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn state_dump(State(shared): State<Shared>) -> Response {
    let dump = lock(&shared).dump();
    json_response(StatusCode::OK, dump)
}

/// Parses `{"inputs":[...]}` and enforces the batch limit; the error is a 400's message.
fn parse_batch<T: serde::de::DeserializeOwned>(body: &[u8], max: usize) -> Result<Vec<T>, String> {
    let batch: BatchBody<T> =
        serde_json::from_slice(body).map_err(|e| format!("Invalid input JSON: {e}"))?;
    if batch.inputs.is_empty() {
        return Err("inputs must not be empty".to_owned());
    }
    if batch.inputs.len() > max {
        return Err(format!(
            "Batch of {} inputs exceeds the limit of {max}",
            batch.inputs.len()
        ));
    }
    Ok(batch.inputs)
}

/// 200 when every input went through, else 207 with the rejected ones in `errors`.
fn batch_response(requested_at: String, results: Vec<Value>, errors: Vec<Value>) -> Response {
    let mut body = json!({
        "status": "COMPLETE",
        "results": results,
        "requestedAt": requested_at,
        "startedAt": requested_at,
        "completedAt": now(),
    });
    let status = if errors.is_empty() {
        StatusCode::OK
    } else {
        body["numErrors"] = json!(errors.len());
        body["errors"] = json!(errors);
        StatusCode::MULTI_STATUS
    };
    json_response(status, body)
}

fn invalid_email(input: &str) -> Value {
    json!({
        "status": "error",
        "category": "VALIDATION_ERROR",
        "message": "Invalid email address",
        "context": { "subscriberIdString": [input] },
    })
}

/// Good enough to reject what HubSpot surely rejects: no `@`, two `@`, no dot in the domain,
/// whitespace inside.
fn is_valid_email(raw: &str) -> bool {
    let email = raw.trim();
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !email.chars().any(char::is_whitespace)
}

fn error_body(message: &str, category: &str) -> Value {
    json!({
        "status": "error",
        "message": message,
        "correlationId": uuid::Uuid::new_v4().to_string(),
        "category": category,
    })
}

fn unauthorized_body() -> Value {
    error_body(
        "Authentication credentials not found. This API supports OAuth 2.0 authentication and \
         you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
        "INVALID_AUTHENTICATION",
    )
}

fn validation_error(message: &str) -> Response {
    hubspot_error(StatusCode::BAD_REQUEST, message, "VALIDATION_ERROR")
}

fn hubspot_error(status: StatusCode, message: &str, category: &str) -> Response {
    json_response(status, error_body(message, category))
}

fn json_response(status: StatusCode, body: Value) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json;charset=utf-8"),
    );
    (status, headers, body.to_string()).into_response()
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_syntax() {
        for ok in ["a@b.de", " A.B+tag@sub.example.com "] {
            assert!(is_valid_email(ok), "{ok}");
        }
        for bad in [
            "", "a", "a@", "@b.de", "a@b", "a@@b.de", "a b@c.de", "a@.de", "a@b.de.",
        ] {
            assert!(!is_valid_email(bad), "{bad}");
        }
    }

    #[test]
    fn writes_report_what_changed() {
        let mut state = FakeState::new("t");
        let s = &mut state;
        assert_eq!(
            write_status(s, "a@b.de", 1, SUBSCRIBED),
            REQUESTED_CHANGE_OCCURRED
        );
        assert_eq!(write_status(s, "a@b.de", 1, SUBSCRIBED), NO_STATUS_CHANGE);
        assert_eq!(
            write_status(s, "a@b.de", 1, UNSUBSCRIBED),
            REQUESTED_CHANGE_OCCURRED
        );
        assert_eq!(
            write_status(s, "a@b.de", 1, SUBSCRIBED),
            RESUBSCRIBE_OCCURRED
        );
        s.contacts.get_mut("a@b.de").unwrap().unsubscribed_from_all = true;
        assert_eq!(
            write_status(s, "a@b.de", 2, SUBSCRIBED),
            RESUBSCRIBE_OCCURRED
        );
        assert!(!s.contacts["a@b.de"].unsubscribed_from_all);
        assert_eq!(
            write_status(s, "a@b.de", 2, NOT_SPECIFIED),
            REQUESTED_CHANGE_OCCURRED
        );
        assert_eq!(
            write_status(s, "a@b.de", 2, NOT_SPECIFIED),
            NO_STATUS_CHANGE
        );
        assert_eq!(s.status_changes["a@b.de"], 5);
    }
}
