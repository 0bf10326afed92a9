//! A fake HubSpot: the v4 communication-preferences batch endpoints, the CRM contact batch upsert
//! and GDPR delete, with the payload checks, auth, batch limit, rate limits, headers and error
//! bodies of `docs/vendors/hubspot.md`, on `127.0.0.1`.
//!
//! Tests read its state (subscription statuses, contact properties, opt-outs, blocklist, how many
//! changes each address saw, how many 429s it gave) and script failures (`push_response`), slow
//! answers (`set_response_delay`) or rate limits (`set_rate_limit`, `set_daily_limit`).
//! `GET /__fake/state` dumps the state as JSON for the demo; the `/__fake/` prefix marks paths that
//! HubSpot does not have.
//!
//! Order of checks per request: a scripted answer replaces everything else (no auth, no counting,
//! no added headers); then the token (a 401 counts against no limit: it names no account); then
//! the rate limits, which count every request that reaches them, rejected ones included, as
//! HubSpot's do; then the endpoint. Every answer that is not scripted carries
//! `X-HubSpot-Correlation-Id` (the error body's `correlationId` where there is one).
//!
//! What HubSpot does not document, the fake decides like this: unknown JSON fields are rejected
//! (strictness catches typos in our client); a status write creates the subscriber when it is
//! unknown, but no CRM contact (only an upsert does); an upsert whose `email` property differs
//! from its `id` is rejected; contact properties outside a few HubSpot defaults are accepted and
//! recorded (`unknown_properties`); writes to a blocklisted address are accepted; a GDPR delete
//! supports `idProperty: "email"` only; the daily limit resets at midnight UTC (HubSpot's at
//! midnight in the account's time zone).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use relay_events::normalize;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use crate::late::LateApply;
pub use crate::recorded::{RecordedRequest, ScriptedResponse};

/// `POST` path of the v4 batch status write.
pub const BATCH_WRITE_PATH: &str = "/communication-preferences/v4/statuses/batch/write";
/// `POST` path of the v4 batch unsubscribe-from-all (with `?channel=EMAIL`).
pub const UNSUBSCRIBE_ALL_PATH: &str =
    "/communication-preferences/v4/statuses/batch/unsubscribe-all";
/// `POST` path of the CRM GDPR delete.
pub const GDPR_DELETE_PATH: &str = "/crm/v3/objects/contacts/gdpr-delete";
/// `POST` path of the CRM contact batch upsert.
pub const UPSERT_PATH: &str = "/crm/v3/objects/contacts/batch/upsert";
/// `POST` path of the v4 batch status read (with `?channel=EMAIL`).
pub const BATCH_READ_PATH: &str = "/communication-preferences/v4/statuses/batch/read";
/// `GET` path of the CRM contact list (`limit`, `after`, `properties`).
pub const LIST_CONTACTS_PATH: &str = "/crm/v3/objects/contacts";
/// HubSpot's largest `limit` of a CRM list page.
const MAX_PAGE: usize = 100;
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
/// A sample of HubSpot's default contact properties; an upsert naming another is recorded.
const KNOWN_CONTACT_PROPERTIES: [&str; 14] = [
    "email",
    "firstname",
    "lastname",
    "company",
    "phone",
    "mobilephone",
    "website",
    "jobtitle",
    "address",
    "city",
    "state",
    "zip",
    "country",
    "lifecyclestage",
];
const CORRELATION_ID_HEADER: &str = "x-hubspot-correlation-id";
/// The batch limit public HubSpot clients use; HubSpot's own is undocumented.
const DEFAULT_MAX_INPUTS: usize = 100;
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// A running fake. The server stops when this value is dropped.
pub struct FakeHubSpot {
    addr: SocketAddr,
    shared: Shared,
    server: tokio::task::JoinHandle<()>,
}

/// HubSpot's answers, to script; any fake may send them.
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
        Self::json(
            429,
            rate_limit_body("secondly", "TEN_SECONDLY_ROLLING"),
            vec![("Retry-After".to_owned(), retry_after_secs.to_string())],
        )
    }

    /// A 429 of the daily limit, without `Retry-After` (HubSpot documents none).
    pub fn daily_limited() -> Self {
        Self::json(429, rate_limit_body("daily", "DAILY"), Vec::new())
    }

    /// The 401 HubSpot gives for a missing or wrong token.
    pub fn unauthorized() -> Self {
        Self::json(401, unauthorized_body(), Vec::new())
    }
}

type Shared = Arc<Mutex<FakeState>>;

struct FakeState {
    token: String,
    max_inputs: usize,
    /// Answer unsubscribe-all without per-contact results even when `verbose=true` is sent.
    terse_unsubscribe_all: bool,
    /// Normalized emails whose mere presence in a request makes HubSpot answer 500 for all of it.
    poisoned: BTreeSet<String>,
    delay: Duration,
    script: VecDeque<ScriptedResponse>,
    /// By normalized email.
    contacts: BTreeMap<String, ContactState>,
    blocklist: BTreeSet<String>,
    /// Survives a GDPR delete, so that tests can count effects across an erasure.
    status_changes: BTreeMap<String, usize>,
    requests: Vec<RecordedRequest>,
    /// Requests allowed per rolling window, and the window.
    rate_limit: Option<(u32, Duration)>,
    /// Arrival times of the requests in the current window, oldest first.
    window: VecDeque<Instant>,
    daily_limit: Option<u32>,
    /// The UTC day the daily count is for, and the count.
    daily_count: (u64, u32),
    /// 429 answers so far, scripted ones included.
    rate_limited: usize,
    last_contact_id: u64,
    unknown_properties: BTreeSet<String>,
    late: LateApply,
}

#[derive(Debug, Default, Serialize)]
struct ContactState {
    /// Subscription type id → `SUBSCRIBED` or `UNSUBSCRIBED`.
    subscriptions: BTreeMap<i64, &'static str>,
    unsubscribed_from_all: bool,
    /// The CRM contact object; only an upsert creates one.
    #[serde(skip_serializing_if = "Option::is_none")]
    record: Option<ContactRecord>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ContactRecord {
    id: u64,
    properties: BTreeMap<String, String>,
    created_at: String,
    updated_at: String,
}

impl FakeState {
    fn new(token: &str) -> Self {
        FakeState {
            token: token.to_owned(),
            max_inputs: DEFAULT_MAX_INPUTS,
            terse_unsubscribe_all: false,
            poisoned: BTreeSet::new(),
            delay: Duration::ZERO,
            script: VecDeque::new(),
            contacts: BTreeMap::new(),
            blocklist: BTreeSet::new(),
            status_changes: BTreeMap::new(),
            requests: Vec::new(),
            rate_limit: None,
            window: VecDeque::new(),
            daily_limit: None,
            daily_count: (0, 0),
            rate_limited: 0,
            // HubSpot's record ids are large numbers; where they start does not matter.
            last_contact_id: 100_000,
            unknown_properties: BTreeSet::new(),
            late: LateApply::default(),
        }
    }

    /// Counts a request that reached the limits at `now`, rejected or not, as HubSpot counts them.
    /// Returns the rate-limit headers to send (lowercase names, as HTTP/2 sends them) and, when a
    /// limit is exceeded, the 429 body.
    fn admit(&mut self, now: Instant) -> (Vec<(&'static str, String)>, Option<Value>) {
        let mut headers = Vec::new();
        let mut rejection = None;
        if let Some(limit) = self.daily_limit {
            let today = utc_day(SystemTime::now());
            if self.daily_count.0 != today {
                self.daily_count = (today, 0);
            }
            if self.daily_count.1 >= limit {
                rejection = Some(rate_limit_body("daily", "DAILY"));
            }
            self.daily_count.1 = self.daily_count.1.saturating_add(1);
            headers.push(("x-hubspot-ratelimit-daily", limit.to_string()));
            headers.push((
                "x-hubspot-ratelimit-daily-remaining",
                limit.saturating_sub(self.daily_count.1).to_string(),
            ));
        }
        if let Some((max, window)) = self.rate_limit {
            while self
                .window
                .front()
                .is_some_and(|t| now.duration_since(*t) >= window)
            {
                self.window.pop_front();
            }
            if self.window.len() >= max as usize && rejection.is_none() {
                rejection = Some(rate_limit_body("secondly", "TEN_SECONDLY_ROLLING"));
            }
            self.window.push_back(now);
            let used = u32::try_from(self.window.len()).unwrap_or(u32::MAX);
            headers.push(("x-hubspot-ratelimit-max", max.to_string()));
            headers.push((
                "x-hubspot-ratelimit-remaining",
                max.saturating_sub(used).to_string(),
            ));
            headers.push((
                "x-hubspot-ratelimit-interval-milliseconds",
                window.as_millis().to_string(),
            ));
        }
        (headers, rejection)
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
            .route(UPSERT_PATH, post(upsert))
            .route(BATCH_READ_PATH, post(batch_read))
            .route(LIST_CONTACTS_PATH, get(list_contacts))
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

    /// Answers batch unsubscribe-all with `{"status":"COMPLETE","results":[]}` (plus any errors)
    /// whatever the `verbose` parameter says. HubSpot documents `verbose` (default false) as what
    /// makes it list the contacts (docs/vendors/hubspot.md §1c); this covers an account or version
    /// that leaves them out anyway.
    pub fn set_terse_unsubscribe_all(&self, terse: bool) {
        lock(&self.shared).terse_unsubscribe_all = terse;
    }

    /// Answers 500 (`INTERNAL_ERROR`), changing nothing, to every request that names `email`: the
    /// way a batch API fails as a whole for one input it cannot process. `false` heals it.
    pub fn set_poisoned(&self, email: &str, poisoned: bool) {
        let email = normalize::email(email);
        let mut state = lock(&self.shared);
        if poisoned {
            state.poisoned.insert(email);
        } else {
            state.poisoned.remove(&email);
        }
    }

    /// Requests the fake applies late, after the client may have given up (see [`LateApply`]).
    pub fn late(&self) -> LateApply {
        lock(&self.shared).late.clone()
    }

    /// Answers every HubSpot request `delay` late, after its state change is applied.
    pub fn set_response_delay(&self, delay: Duration) {
        lock(&self.shared).delay = delay;
    }

    /// Limits requests to `max` per rolling `window` (default: no limit). Beyond it the fake
    /// answers 429 with HubSpot's `TEN_SECONDLY_ROLLING` body; every answer carries the
    /// `X-HubSpot-RateLimit-Max`, `-Remaining` and `-Interval-Milliseconds` headers.
    pub fn set_rate_limit(&self, max: u32, window: Duration) {
        let mut state = lock(&self.shared);
        state.rate_limit = Some((max, window));
        state.window.clear();
    }

    /// Limits requests to `max` per UTC day (default: no limit). Beyond it the fake answers 429
    /// with HubSpot's `DAILY` body; every answer carries `X-HubSpot-RateLimit-Daily` and
    /// `-Daily-Remaining`.
    pub fn set_daily_limit(&self, max: u32) {
        let mut state = lock(&self.shared);
        state.daily_limit = Some(max);
        state.daily_count = (utc_day(SystemTime::now()), 0);
    }

    /// How many 429s the fake has answered, scripted ones included.
    pub fn rate_limited_count(&self) -> usize {
        lock(&self.shared).rate_limited
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

    /// Sets a status as someone in HubSpot's UI would (`SUBSCRIBED` or `UNSUBSCRIBED`): no
    /// request, and not counted in `status_changes`, so a test can tell the relay's changes from
    /// it. Creates the contact when it is unknown.
    pub fn set_status_by_hand(&self, email: &str, subscription_id: i64, status: &str) {
        let status = if status == SUBSCRIBED {
            SUBSCRIBED
        } else {
            UNSUBSCRIBED
        };
        let mut state = lock(&self.shared);
        let contact = state.contacts.entry(normalize::email(email)).or_default();
        contact.subscriptions.insert(subscription_id, status);
        if status == SUBSCRIBED {
            contact.unsubscribed_from_all = false;
        }
    }

    pub fn unsubscribed_from_all(&self, email: &str) -> bool {
        lock(&self.shared)
            .contacts
            .get(&normalize::email(email))
            .is_some_and(|c| c.unsubscribed_from_all)
    }

    /// The CRM contact's properties (`email` among them), or `None` when no upsert created the
    /// contact or a GDPR delete removed it.
    pub fn contact_properties(&self, email: &str) -> Option<BTreeMap<String, String>> {
        lock(&self.shared)
            .contacts
            .get(&normalize::email(email))
            .and_then(|c| c.record.as_ref())
            .map(|r| r.properties.clone())
    }

    /// Property names upserts sent that are not among the HubSpot defaults the fake knows.
    pub fn unknown_properties(&self) -> BTreeSet<String> {
        lock(&self.shared).unknown_properties.clone()
    }

    /// Whether a GDPR delete named the address.
    pub fn is_blocklisted(&self, email: &str) -> bool {
        lock(&self.shared)
            .blocklist
            .contains(&normalize::email(email))
    }

    /// How many requests ever changed the address's subscription state or erased it (a repeat
    /// that changes nothing does not count, nor does a contact upsert), so tests can prove that a
    /// redelivery had no second effect.
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

    /// The requests received after the first `skip`, for callers that poll (benches).
    pub fn requests_after(&self, skip: usize) -> Vec<RecordedRequest> {
        lock(&self.shared)
            .requests
            .get(skip..)
            .map(<[RecordedRequest]>::to_vec)
            .unwrap_or_default()
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

/// Records every request, then answers from the script, checks the token and the rate limits, and
/// delays the answer.
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
    let late = lock(&shared).late.clone();
    let (early, limit_headers, delay) = {
        let mut state = lock(&shared);
        // Taken under the lock, so that the rate-limit window sees arrivals in order.
        let arrived = Instant::now();
        state
            .requests
            .push(RecordedRequest::new(&parts, &bytes, arrived));
        if !hubspot_path {
            (None, Vec::new(), Duration::ZERO)
        } else if let Some(scripted) = state.script.pop_front() {
            (Some(Early::Scripted(scripted)), Vec::new(), state.delay)
        } else if names_any(&bytes, &state.poisoned) {
            let body = error_body("internal error", "INTERNAL_ERROR");
            let early = Early::Json(StatusCode::INTERNAL_SERVER_ERROR, body);
            (Some(early), Vec::new(), state.delay)
        } else {
            let expected = format!("Bearer {}", state.token);
            let authorized = parts
                .headers
                .get(header::AUTHORIZATION)
                .is_some_and(|v| v.as_bytes() == expected.as_bytes());
            if authorized {
                let (headers, rejection) = state.admit(arrived);
                let early = rejection.map(|body| Early::Json(StatusCode::TOO_MANY_REQUESTS, body));
                (early, headers, state.delay)
            } else {
                let early = Early::Json(StatusCode::UNAUTHORIZED, unauthorized_body());
                (Some(early), Vec::new(), state.delay)
            }
        }
    };

    let scripted = matches!(early, Some(Early::Scripted(_)));
    let mut response = match early {
        Some(Early::Scripted(scripted)) => scripted.into_response(),
        Some(Early::Json(status, body)) => json_response(status, body),
        None => match late.take(&parts.method, &bytes) {
            Some(hold) if hubspot_path => {
                let apply = next.run(Request::from_parts(parts, Body::from(bytes)));
                late.apply_late(hold, apply).await
            }
            _ => {
                next.run(Request::from_parts(parts, Body::from(bytes)))
                    .await
            }
        },
    };
    if hubspot_path && !scripted {
        let headers = response.headers_mut();
        for (name, value) in limit_headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        }
        if !headers.contains_key(CORRELATION_ID_HEADER) {
            if let Ok(id) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
                headers.insert(CORRELATION_ID_HEADER, id);
            }
        }
    }
    if response.status() == StatusCode::TOO_MANY_REQUESTS {
        lock(&shared).rate_limited += 1;
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    response
}

/// Whether a request body names one of `emails` (as a JSON string, in any letter case).
fn names_any(body: &[u8], emails: &BTreeSet<String>) -> bool {
    if emails.is_empty() {
        return false;
    }
    let body = String::from_utf8_lossy(body).to_lowercase();
    emails.iter().any(|e| body.contains(&format!("\"{e}\"")))
}

/// An answer the gate gives without asking the endpoint.
enum Early {
    Scripted(ScriptedResponse),
    Json(StatusCode, Value),
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
struct UpsertInput {
    id: String,
    id_property: String,
    properties: BTreeMap<String, String>,
    object_write_trace_id: Option<String>,
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
    let (max, terse) = {
        let state = lock(&shared);
        (state.max_inputs, state.terse_unsubscribe_all)
    };
    let inputs = match parse_batch::<String>(&body, max) {
        Ok(inputs) => inputs,
        Err(message) => return validation_error(&message),
    };
    // Without `verbose=true` HubSpot lists no contacts, only errors (default false).
    let verbose = !terse && query.get("verbose").map(String::as_str) == Some("true");

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
        if !verbose {
            continue;
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

async fn upsert(State(shared): State<Shared>, body: Bytes) -> Response {
    let requested_at = now();
    let max = lock(&shared).max_inputs;
    let inputs = match parse_batch::<UpsertInput>(&body, max) {
        Ok(inputs) => inputs,
        Err(message) => return validation_error(&message),
    };
    let mut ids = BTreeSet::new();
    for (i, input) in inputs.iter().enumerate() {
        if input.id_property != "email" {
            return validation_error(&format!(
                "inputs[{i}]: this fake supports only idProperty \"email\""
            ));
        }
        if !ids.insert(normalize::email(&input.id)) {
            return validation_error(&format!(
                "Duplicate IDs found in batch input: [{}]. IDs must be unique",
                input.id
            ));
        }
        if let Some(email) = input.properties.get("email") {
            if normalize::email(email) != normalize::email(&input.id) {
                return validation_error(&format!(
                    "inputs[{i}]: property email differs from the id"
                ));
            }
        }
    }

    let mut results = Vec::new();
    let mut errors = Vec::new();
    let mut guard = lock(&shared);
    // Through a plain reference, so that fields can be borrowed separately.
    let state = &mut *guard;
    for input in inputs {
        if !is_valid_email(&input.id) {
            errors.push(invalid_contact_email(&input.id));
            continue;
        }
        let unknown = input
            .properties
            .keys()
            .filter(|name| !KNOWN_CONTACT_PROPERTIES.contains(&name.as_str()))
            .cloned();
        state.unknown_properties.extend(unknown);
        let email = normalize::email(&input.id);
        let timestamp = now();
        let contact = state.contacts.entry(email.clone()).or_default();
        let new = contact.record.is_none();
        let record = contact.record.get_or_insert_with(|| {
            state.last_contact_id += 1;
            ContactRecord {
                id: state.last_contact_id,
                // HubSpot sets the id property of a contact it creates by it.
                properties: BTreeMap::from([("email".to_owned(), email.clone())]),
                created_at: timestamp.clone(),
                updated_at: timestamp.clone(),
            }
        });
        record.properties.extend(input.properties);
        record.updated_at = timestamp;
        let mut result = json!({
            "id": record.id.to_string(),
            "properties": record.properties,
            "new": new,
            "createdAt": record.created_at,
            "updatedAt": record.updated_at,
            "archived": false,
        });
        if let Some(trace_id) = input.object_write_trace_id {
            result["objectWriteTraceId"] = json!(trace_id);
        }
        results.push(result);
    }
    drop(guard);
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
    // Statuses and the CRM record, properties included, go together.
    let existed = state.contacts.remove(&email).is_some();
    // HubSpot blocklists the address whether or not a contact had it.
    let newly_blocked = state.blocklist.insert(email.clone());
    if existed || newly_blocked {
        state.count_change(&email);
    }
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<usize>,
    after: Option<String>,
    properties: Option<String>,
    archived: Option<bool>,
}

/// The CRM contact list, ordered by address, paged by `after` (an opaque cursor to HubSpot; here
/// the position of the next contact). The fake lists every address it holds a status or a record
/// for (HubSpot lists CRM contacts; whether a v4 status write creates one is UNCONFIRMED,
/// docs/vendors/hubspot.md §10). The last page has no `paging`; an empty portal answers
/// `{"results": []}`.
async fn list_contacts(State(shared): State<Shared>, Query(query): Query<ListQuery>) -> Response {
    let limit = query.limit.unwrap_or(10);
    if limit == 0 || limit > MAX_PAGE {
        return validation_error(&format!("limit must be between 1 and {MAX_PAGE}"));
    }
    let start = match query.after.as_deref().map(str::parse::<usize>) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return validation_error("after is not a valid paging cursor"),
    };
    let with_email = query
        .properties
        .as_deref()
        .is_some_and(|p| p.split(',').any(|p| p == "email"));
    let _ = query.archived;
    let state = lock(&shared);
    let all: Vec<(&String, &ContactState)> = state.contacts.iter().collect();
    let page: Vec<Value> = all
        .iter()
        .enumerate()
        .skip(start)
        .take(limit)
        .map(|(i, (email, contact))| {
            let id = contact
                .record
                .as_ref()
                .map_or(format!("{}", 900_000 + i), |r| r.id.to_string());
            let mut properties = json!({ "hs_object_id": id });
            if with_email {
                properties["email"] = json!(email);
            }
            json!({
                "id": id,
                "properties": properties,
                "createdAt": now(),
                "updatedAt": now(),
                "archived": false,
            })
        })
        .collect();
    let mut body = json!({ "results": page });
    if start + limit < all.len() {
        let after = (start + limit).to_string();
        body["paging"] = json!({ "next": {
            "after": after,
            "link": format!("{LIST_CONTACTS_PATH}?after={after}"),
        }});
    }
    drop(state);
    json_response(StatusCode::OK, body)
}

/// The v4 batch status read: one result per known address with a status for every subscription
/// type it has one for; unknown addresses come back as errors (207), as for the writes.
async fn batch_read(
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
    let state = lock(&shared);
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for input in inputs {
        let email = normalize::email(&input);
        let Some(contact) = state.contacts.get(&email) else {
            errors.push(json!({
                "category": "OBJECT_NOT_FOUND",
                "message": "Subscriber not found",
                "status": "error",
                "context": { "subscriberIdString": [email] },
            }));
            continue;
        };
        let statuses: Vec<Value> = contact
            .subscriptions
            .iter()
            .map(|(id, status)| {
                json!({
                    "channel": "EMAIL",
                    "status": status,
                    "subscriberIdString": email,
                    "subscriptionId": id,
                    "timestamp": now(),
                    "businessUnitId": 0,
                    "source": "fake",
                    "subscriptionName": format!("Subscription {id}"),
                })
            })
            .collect();
        results.push(json!({ "subscriberIdString": email, "statuses": statuses }));
    }
    drop(state);
    batch_response(requested_at, results, errors)
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

/// The 207 error entry of an upsert input whose email HubSpot rejects; its message embeds the
/// property errors as JSON, as HubSpot's does.
fn invalid_contact_email(input: &str) -> Value {
    let property_errors = json!([{
        "isValid": false,
        "message": format!("Email address {input} is invalid"),
        "error": "INVALID_EMAIL",
        "name": "email",
    }]);
    json!({
        "status": "error",
        "category": "VALIDATION_ERROR",
        "message": format!("Property values were not valid: {property_errors}"),
        "context": { "ids": [input] },
    })
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

/// HubSpot's 429 body for the `secondly` or `daily` limit.
fn rate_limit_body(limit: &str, policy: &str) -> Value {
    let mut body = error_body(
        &format!("You have reached your {limit} limit."),
        "RATE_LIMITS",
    );
    body["errorType"] = json!("RATE_LIMIT");
    body["policyName"] = json!(policy);
    body
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
        HeaderValue::from_static("application/json;charset=utf-8"),
    );
    // HubSpot's header and body name the same id.
    if let Some(id) = body["correlationId"]
        .as_str()
        .and_then(|id| HeaderValue::from_str(id).ok())
    {
        headers.insert(CORRELATION_ID_HEADER, id);
    }
    (status, headers, body.to_string()).into_response()
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn utc_day(now: SystemTime) -> u64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        / 86_400
}

impl crate::recorded::Recording for FakeHubSpot {
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
    use axum::http::Method;

    #[tokio::test]
    async fn a_held_request_is_applied_after_the_client_gave_up() {
        let fake = FakeHubSpot::start("t").await;
        fake.late().hold(
            Method::POST,
            "\"SUBSCRIBED\"",
            Duration::from_millis(600),
            1,
        );
        let body = json!({"inputs": [{
            "subscriberIdString": "a@b.de",
            "channel": "EMAIL",
            "statusState": "SUBSCRIBED",
            "subscriptionId": 1,
        }]});
        let err = reqwest::Client::new()
            .post(format!("{}{BATCH_WRITE_PATH}", fake.base_url()))
            .bearer_auth("t")
            .timeout(Duration::from_millis(200))
            .json(&body)
            .send()
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "{err}");
        assert_eq!((fake.late().held(), fake.late().landed()), (1, 0));
        assert_eq!(fake.subscription_status("a@b.de", 1), None);
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(fake.late().landed(), 1);
        assert_eq!(
            fake.subscription_status("a@b.de", 1).as_deref(),
            Some(SUBSCRIBED),
            "applied although nobody waited for the answer"
        );
    }

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

    fn header<'a>(headers: &'a [(&'static str, String)], name: &str) -> &'a str {
        headers
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("", |(_, v)| v.as_str())
    }

    #[test]
    fn the_window_counts_every_request_rejected_ones_too() {
        let mut state = FakeState::new("t");
        state.rate_limit = Some((2, Duration::from_secs(1)));
        let t0 = Instant::now();
        let (headers, rejected) = state.admit(t0);
        assert!(rejected.is_none());
        assert_eq!(header(&headers, "x-hubspot-ratelimit-max"), "2");
        assert_eq!(header(&headers, "x-hubspot-ratelimit-remaining"), "1");
        assert_eq!(
            header(&headers, "x-hubspot-ratelimit-interval-milliseconds"),
            "1000"
        );
        let at = |ms| t0 + Duration::from_millis(ms);
        assert!(state.admit(at(100)).1.is_none());
        let (headers, rejected) = state.admit(at(500));
        let body = rejected.expect("third request in the window");
        assert_eq!(body["policyName"], "TEN_SECONDLY_ROLLING");
        assert_eq!(body["errorType"], "RATE_LIMIT");
        assert_eq!(body["category"], "RATE_LIMITS");
        assert_eq!(body["message"], "You have reached your secondly limit.");
        assert!(body["correlationId"].is_string());
        assert_eq!(header(&headers, "x-hubspot-ratelimit-remaining"), "0");
        // t0 has left the window, but the rejected request at 500 ms still holds a slot.
        assert!(state.admit(at(1_000)).1.is_some());
        assert!(state.admit(at(1_100)).1.is_some());
        assert!(state.admit(at(2_000)).1.is_none());
        assert!(state.daily_limit.is_none());
    }

    #[test]
    fn the_daily_limit_answers_with_its_own_policy() {
        let mut state = FakeState::new("t");
        state.daily_limit = Some(2);
        let now = Instant::now();
        let (headers, rejected) = state.admit(now);
        assert!(rejected.is_none());
        assert_eq!(header(&headers, "x-hubspot-ratelimit-daily"), "2");
        assert_eq!(header(&headers, "x-hubspot-ratelimit-daily-remaining"), "1");
        let (headers, rejected) = state.admit(now);
        assert!(rejected.is_none());
        assert_eq!(header(&headers, "x-hubspot-ratelimit-daily-remaining"), "0");
        assert_eq!(header(&headers, "x-hubspot-ratelimit-max"), "");
        let body = state.admit(now).1.expect("over the daily limit");
        assert_eq!(body["policyName"], "DAILY");
        assert_eq!(body["message"], "You have reached your daily limit.");
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
