//! A fake Google Data Manager API (docs/vendors/google.md §3a): `POST /v1/audienceMembers:ingest`
//! and `POST /v1/audienceMembers:remove` with a bearer token, hex-encoded hashes, and errors as
//! `google.rpc.Status` JSON. Members of each user list (`productDestinationId`) are the hashes of
//! all their identifiers.
//!
//! Decided here, not documented by Google: an ingest without both consents granted is refused
//! (Customer Match requires them for EEA users, docs/consent-law.md §8), and only email and phone
//! identifiers are supported.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    has_bearer, is_sha256_hex, json_response, lock, FakePlatform, ScriptedResponse, Shared,
};

pub const INGEST_PATH: &str = "/v1/audienceMembers:ingest";
pub const REMOVE_PATH: &str = "/v1/audienceMembers:remove";
/// Google's limit on audience members per request.
pub const MAX_MEMBERS: usize = 10_000;
const MAX_IDENTIFIERS: usize = 10;
const MAX_DESTINATIONS: usize = 10;
const GRANTED: &str = "CONSENT_GRANTED";

/// Starts a fake Data Manager API on a free port of 127.0.0.1, accepting `token` as bearer.
///
/// # Panics
/// If no port can be bound: a test cannot go on without its fake.
pub async fn start(token: &str) -> FakePlatform {
    start_on(SocketAddr::from(([127, 0, 0, 1], 0)), token)
        .await
        .expect("bind the fake Google on 127.0.0.1")
}

/// Starts the fake on `addr`, accepting `token`.
pub async fn start_on(addr: SocketAddr, token: &str) -> std::io::Result<FakePlatform> {
    let routes = Router::new()
        .route(INGEST_PATH, post(ingest))
        .route(REMOVE_PATH, post(remove));
    FakePlatform::serve(addr, routes, token, MAX_MEMBERS, quota_exhausted, "Google").await
}

/// The 429 of the per-project ingestion quota (docs/vendors/google.md §3a).
pub fn quota_exhausted() -> ScriptedResponse {
    ScriptedResponse::json(
        429,
        status_error(
            429,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded for quota metric 'Ingestion requests' and limit \
             'IngestionMutateRequestsPerMinutePerProject'",
            vec![json!({
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "RATE_LIMIT_EXCEEDED",
                "domain": "googleapis.com",
                "metadata": { "quota_limit": "IngestionMutateRequestsPerMinutePerProject" },
            })],
        ),
        Vec::new(),
    )
}

fn status_error(code: u16, status: &str, message: &str, details: Vec<Value>) -> Value {
    json!({ "error": { "code": code, "message": message, "status": status, "details": details } })
}

fn invalid_argument(message: &str, violations: Vec<Value>) -> Response {
    let details = if violations.is_empty() {
        Vec::new()
    } else {
        vec![json!({
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": violations,
        })]
    };
    json_response(
        StatusCode::BAD_REQUEST,
        status_error(400, "INVALID_ARGUMENT", message, details),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IngestBody {
    destinations: Vec<Destination>,
    audience_members: Vec<Member>,
    consent: Option<Consent>,
    validate_only: Option<bool>,
    encoding: Option<String>,
}

/// The remove request has no consent.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RemoveBody {
    destinations: Vec<Destination>,
    audience_members: Vec<Member>,
    validate_only: Option<bool>,
    encoding: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Destination {
    operating_account: Account,
    login_account: Option<Account>,
    product_destination_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Account {
    account_type: String,
    account_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Member {
    user_data: UserData,
    consent: Option<Consent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct UserData {
    user_identifiers: Vec<Identifier>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Identifier {
    email_address: Option<String>,
    phone_number: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Consent {
    ad_user_data: Option<String>,
    ad_personalization: Option<String>,
}

impl Consent {
    fn granted(&self) -> bool {
        self.ad_user_data.as_deref() == Some(GRANTED)
            && self.ad_personalization.as_deref() == Some(GRANTED)
    }
}

async fn ingest(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let body: IngestBody = match parse(&shared, &headers, &body) {
        Ok(body) => body,
        Err(response) => return *response,
    };
    // "User-level consent overrides request-level consent" (docs/vendors/google.md §3a).
    let ungranted = body.audience_members.iter().position(|m| {
        !m.consent
            .as_ref()
            .or(body.consent.as_ref())
            .is_some_and(Consent::granted)
    });
    if let Some(i) = ungranted {
        return invalid_argument(
            "Customer Match needs adUserData and adPersonalization CONSENT_GRANTED",
            vec![json!({
                "field": format!("audience_members.audience_members[{i}].consent"),
                "reason": "CONSENT_REQUIRED",
            })],
        );
    }
    apply(
        &shared,
        Op::Add,
        &body.destinations,
        &body.audience_members,
        body.validate_only,
        body.encoding,
    )
}

async fn remove(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    match parse::<RemoveBody>(&shared, &headers, &body) {
        Ok(body) => apply(
            &shared,
            Op::Remove,
            &body.destinations,
            &body.audience_members,
            body.validate_only,
            body.encoding,
        ),
        Err(response) => *response,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Add,
    Remove,
}

fn parse<T: serde::de::DeserializeOwned>(
    shared: &Shared,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, Box<Response>> {
    let token = lock(shared).token.clone();
    if !has_bearer(headers, &token) {
        return Err(Box::new(json_response(
            StatusCode::UNAUTHORIZED,
            status_error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token.",
                Vec::new(),
            ),
        )));
    }
    serde_json::from_slice(body).map_err(|e| {
        Box::new(invalid_argument(
            &format!("Invalid JSON payload received. {e}"),
            Vec::new(),
        ))
    })
}

fn apply(
    shared: &Shared,
    op: Op,
    destinations: &[Destination],
    members: &[Member],
    validate_only: Option<bool>,
    encoding: Option<String>,
) -> Response {
    if encoding.as_deref() != Some("HEX") {
        return invalid_argument("This fake expects encoding HEX", Vec::new());
    }
    if destinations.is_empty() || destinations.len() > MAX_DESTINATIONS {
        return invalid_argument("Between 1 and 10 destinations are required", Vec::new());
    }
    for (i, d) in destinations.iter().enumerate() {
        let accounts = std::iter::once(&d.operating_account).chain(&d.login_account);
        let bad_account = accounts.into_iter().any(|a| {
            a.account_type.is_empty() || !a.account_id.chars().all(|c| c.is_ascii_digit())
        });
        if bad_account || d.product_destination_id.is_empty() {
            return invalid_argument(
                "Invalid destination",
                vec![
                    json!({ "field": format!("destinations[{i}]"), "reason": "INVALID_ARGUMENT" }),
                ],
            );
        }
    }
    let mut state = lock(shared);
    if members.is_empty() || members.len() > state.max_batch {
        return invalid_argument(
            &format!(
                "Between 1 and {} audience members are required",
                state.max_batch
            ),
            vec![json!({ "field": "audience_members", "reason": "TOO_MANY_AUDIENCE_MEMBERS" })],
        );
    }
    let mut hashes = Vec::new();
    for (i, member) in members.iter().enumerate() {
        let field = format!("audience_members.audience_members[{i}]");
        let ids = &member.user_data.user_identifiers;
        if ids.is_empty() || ids.len() > MAX_IDENTIFIERS {
            return invalid_argument(
                "Between 1 and 10 user identifiers are required",
                vec![json!({ "field": field, "reason": "TOO_MANY_USER_IDENTIFIERS" })],
            );
        }
        for id in ids {
            let value = match (&id.email_address, &id.phone_number) {
                (Some(v), None) | (None, Some(v)) => v,
                _ => {
                    return invalid_argument(
                        "A user identifier must have exactly one of emailAddress, phoneNumber",
                        vec![json!({ "field": field, "reason": "INVALID_ARGUMENT" })],
                    )
                }
            };
            if !is_sha256_hex(value) {
                state.reject(format!("google {field}: not a lowercase hex SHA-256"));
                // Google's answer for an unhashed value (Data Manager quickstart).
                return invalid_argument(
                    "There was a problem with the request.",
                    vec![json!({ "field": field, "reason": "INVALID_SHA256_FORMAT" })],
                );
            }
            hashes.push(value.clone());
        }
    }
    if validate_only != Some(true) {
        for d in destinations {
            let audience = state.audience(&d.product_destination_id);
            for hash in &hashes {
                match op {
                    Op::Add => audience.insert(hash.clone()),
                    Op::Remove => audience.remove(hash),
                };
            }
        }
    }
    drop(state);
    json_response(
        StatusCode::OK,
        json!({ "requestId": uuid::Uuid::new_v4().to_string() }),
    )
}
