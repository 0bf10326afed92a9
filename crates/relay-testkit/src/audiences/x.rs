//! A fake X Ads API custom audience users endpoint (api-notes §5):
//! `POST /{version}/accounts/{account_id}/custom_audiences/{id}/users` with a JSON array of
//! `Update` / `Delete` operations, all-or-nothing, answered with `success_count` and `total_count`
//! (records = users).
//!
//! Decided here: the fake takes a bearer token (the real API signs requests with OAuth 1.0a), and
//! only `email` user identifiers are supported.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    has_bearer, is_sha256_hex, json_response, lock, FakePlatform, ScriptedResponse, Shared,
};

/// X's limit on operations per request.
pub const MAX_OPERATIONS: usize = 2_500;
/// X's limit on the request body.
pub const MAX_BODY_BYTES: usize = 5_000_000;

/// Starts a fake X Ads API on a free port of 127.0.0.1, accepting `token` as bearer.
///
/// # Panics
/// If no port can be bound: a test cannot go on without its fake.
pub async fn start(token: &str) -> FakePlatform {
    start_on(SocketAddr::from(([127, 0, 0, 1], 0)), token)
        .await
        .expect("bind the fake X on 127.0.0.1")
}

/// Starts the fake on `addr`, accepting `token`.
pub async fn start_on(addr: SocketAddr, token: &str) -> std::io::Result<FakePlatform> {
    let routes = Router::new().route(
        "/{version}/accounts/{account_id}/custom_audiences/{audience_id}/users",
        post(users),
    );
    FakePlatform::serve(addr, routes, token, MAX_OPERATIONS, rate_limited, "X").await
}

/// X's 429, with the end of the window in `x-rate-limit-reset` (epoch seconds, a minute ahead).
pub fn rate_limited() -> ScriptedResponse {
    let reset = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() + 60)
        .unwrap_or_default();
    ScriptedResponse::json(
        429,
        errors(&[("TOO_MANY_REQUESTS", "Rate limit exceeded")]),
        vec![("x-rate-limit-reset".to_owned(), reset.to_string())],
    )
}

fn errors(list: &[(&str, &str)]) -> Value {
    json!({
        "errors": list
            .iter()
            .map(|(code, message)| json!({ "code": code, "message": message }))
            .collect::<Vec<_>>(),
    })
}

fn bad_request(code: &str, message: &str) -> Response {
    json_response(StatusCode::BAD_REQUEST, errors(&[(code, message)]))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Operation {
    operation_type: String,
    params: Params,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    users: Vec<User>,
    effective_at: Option<String>,
    expires_at: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct User {
    email: Vec<String>,
}

async fn users(
    State(shared): State<Shared>,
    Path((_version, account_id, audience_id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let token = lock(&shared).token.clone();
    if !has_bearer(&headers, &token) {
        return json_response(
            StatusCode::UNAUTHORIZED,
            errors(&[(
                "UNAUTHORIZED_ACCESS",
                "This request is not properly authenticated",
            )]),
        );
    }
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_body {
        return bad_request("INVALID_PARAMETER", "Content-Type must be application/json");
    }
    if body.len() > MAX_BODY_BYTES {
        return bad_request(
            "INVALID_PARAMETER",
            "The request body exceeds 5000000 bytes",
        );
    }
    let operations: Vec<Operation> = match serde_json::from_slice(&body) {
        Ok(operations) => operations,
        Err(e) => return bad_request("INVALID_PARAMETER", &format!("Invalid JSON: {e}")),
    };
    let mut state = lock(&shared);
    if operations.is_empty() || operations.len() > state.max_batch {
        return bad_request(
            "INVALID_PARAMETER",
            &format!("Max batch size is {}", state.max_batch),
        );
    }

    // All-or-nothing: check every operation before changing anything.
    let mut operation_errors: Vec<Value> = Vec::with_capacity(operations.len());
    for (i, op) in operations.iter().enumerate() {
        let problem = if op.operation_type != "Update" && op.operation_type != "Delete" {
            Some("operation_type must be Update or Delete")
        } else if op.params.users.is_empty() || op.params.users.iter().any(|u| u.email.is_empty()) {
            Some("users need at least one identifier")
        } else if op.params.effective_at.is_some() || op.params.expires_at.is_some() {
            Some("this fake supports neither effective_at nor expires_at")
        } else if op
            .params
            .users
            .iter()
            .flat_map(|u| &u.email)
            .any(|h| !is_sha256_hex(h))
        {
            state.reject(format!("x operations[{i}]: not a lowercase hex SHA-256"));
            Some("email must be a lowercase hex SHA-256")
        } else {
            None
        };
        operation_errors.push(match problem {
            Some(message) => json!([{ "code": "INVALID_USER_DATA", "message": message }]),
            None => Value::Null,
        });
    }
    if operation_errors.iter().any(|e| !e.is_null()) {
        let mut body = errors(&[("INVALID_PARAMETER", "One or more operations are invalid")]);
        body["operation_errors"] = Value::Array(operation_errors);
        return json_response(StatusCode::BAD_REQUEST, body);
    }

    let mut records = 0;
    let audience = state.audience(&audience_id);
    for op in operations {
        for user in op.params.users {
            records += 1;
            for hash in user.email {
                if op.operation_type == "Update" {
                    audience.insert(hash);
                } else {
                    audience.remove(&hash);
                }
            }
        }
    }
    drop(state);
    json_response(
        StatusCode::OK,
        json!({
            "request": { "params": { "account_id": account_id, "custom_audience_id": audience_id } },
            "data": { "success_count": records, "total_count": records },
        }),
    )
}
