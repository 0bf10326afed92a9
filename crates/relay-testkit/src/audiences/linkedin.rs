//! A fake LinkedIn DMP segment users endpoint (docs/vendors/linkedin.md §4):
//! `POST /rest/dmpSegments/{id}/users` as a Rest.li `BATCH_CREATE`, answered with one status per
//! element. Re-adding a member or removing an absent one is a 201, as LinkedIn does "by design".
//!
//! Decided here, not documented by LinkedIn: the batch limit (default 5 000, `set_max_batch`),
//! and that only `SHA256_EMAIL` ids are supported. The optional raw name and company fields
//! LinkedIn accepts are refused: the sink must send hashes only.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use serde_json::json;

use super::{
    has_bearer, is_sha256_hex, json_response, lock, FakePlatform, ScriptedResponse, Shared,
};

/// The fake's default batch limit; LinkedIn's own is undocumented.
pub const DEFAULT_MAX_ELEMENTS: usize = 5_000;

/// Starts a fake LinkedIn on a free port of 127.0.0.1, accepting `token` as bearer.
///
/// # Panics
/// If no port can be bound: a test cannot go on without its fake.
pub async fn start(token: &str) -> FakePlatform {
    start_on(SocketAddr::from(([127, 0, 0, 1], 0)), token)
        .await
        .expect("bind the fake LinkedIn on 127.0.0.1")
}

/// Starts the fake on `addr`, accepting `token`.
pub async fn start_on(addr: SocketAddr, token: &str) -> std::io::Result<FakePlatform> {
    let routes = Router::new().route("/rest/dmpSegments/{segment_id}/users", post(users));
    FakePlatform::serve(
        addr,
        routes,
        token,
        DEFAULT_MAX_ELEMENTS,
        throttled,
        "LinkedIn",
    )
    .await
}

/// LinkedIn's 429 for the per-member minute limit (600 requests per minute on this endpoint).
pub fn throttled() -> ScriptedResponse {
    ScriptedResponse::json(
        429,
        error_body(
            429,
            "TOO_MANY_REQUESTS",
            "Resource level throttle MEMBER MINUTE limit for calls to this resource is reached.",
        ),
        Vec::new(),
    )
}

fn error_body(status: u16, code: &str, message: &str) -> serde_json::Value {
    json!({ "status": status, "code": code, "message": message })
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    json_response(status, error_body(status.as_u16(), code, message))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    elements: Vec<Element>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Element {
    action: String,
    user_ids: Vec<UserId>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct UserId {
    id_type: String,
    id_value: String,
}

async fn users(
    State(shared): State<Shared>,
    Path(segment_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let token = lock(&shared).token.clone();
    if !has_bearer(&headers, &token) {
        return error(
            StatusCode::UNAUTHORIZED,
            "INVALID_ACCESS_TOKEN",
            "Invalid access token",
        );
    }
    if !header("linkedin-version")
        .is_some_and(|v| v.len() == 6 && v.chars().all(|c| c.is_ascii_digit()))
    {
        return error(
            StatusCode::BAD_REQUEST,
            "VERSION_MISSING",
            "A version must be present. Please specify a version by adding the LinkedIn-Version header.",
        );
    }
    if header("x-restli-protocol-version") != Some("2.0.0") {
        return error(
            StatusCode::BAD_REQUEST,
            "ILLEGAL_ARGUMENT",
            "X-Restli-Protocol-Version must be 2.0.0",
        );
    }
    if header("x-restli-method") != Some("BATCH_CREATE") {
        return error(
            StatusCode::BAD_REQUEST,
            "ILLEGAL_ARGUMENT",
            "A batch of elements needs X-RestLi-Method: BATCH_CREATE",
        );
    }
    let batch: Batch = match serde_json::from_slice(&body) {
        Ok(batch) => batch,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "ILLEGAL_ARGUMENT",
                &format!("Invalid request body: {e}"),
            )
        }
    };
    let mut state = lock(&shared);
    if batch.elements.is_empty() || batch.elements.len() > state.max_batch {
        return error(
            StatusCode::BAD_REQUEST,
            "ILLEGAL_ARGUMENT",
            &format!(
                "A batch must have between 1 and {} elements",
                state.max_batch
            ),
        );
    }
    let mut statuses = Vec::with_capacity(batch.elements.len());
    for (i, element) in batch.elements.into_iter().enumerate() {
        let add = match element.action.as_str() {
            "ADD" => true,
            "REMOVE" => false,
            _ => {
                statuses.push(json!({ "status": 400 }));
                continue;
            }
        };
        let valid = !element.user_ids.is_empty()
            && element
                .user_ids
                .iter()
                .all(|id| id.id_type == "SHA256_EMAIL");
        if !valid {
            statuses.push(json!({ "status": 400 }));
            continue;
        }
        if let Some(bad) = element
            .user_ids
            .iter()
            .position(|id| !is_sha256_hex(&id.id_value))
        {
            state.reject(format!(
                "linkedin elements[{i}].userIds[{bad}]: not a lowercase hex SHA-256"
            ));
            statuses.push(json!({ "status": 400 }));
            continue;
        }
        let audience = state.audience(&segment_id);
        for id in element.user_ids {
            if add {
                audience.insert(id.id_value);
            } else {
                audience.remove(&id.id_value);
            }
        }
        statuses.push(json!({ "status": 201 }));
    }
    drop(state);
    json_response(StatusCode::OK, json!({ "elements": statuses }))
}
