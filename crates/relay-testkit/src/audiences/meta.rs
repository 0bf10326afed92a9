//! A fake Meta Graph API for Custom Audiences (docs/vendors/meta.md §2): `POST` adds and `DELETE`
//! removes on `/{version}/{audience_id}/users`, with `payload`, `access_token` and the optional
//! `session` taken from the form body or the query string. Errors use Graph's `{"error": {...}}`
//! object.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    is_sha256_hex, json_response, lock, parse_form, FakePlatform, ScriptedResponse, Shared,
};

/// Meta's limit on rows per `/users` call.
pub const MAX_ROWS: usize = 10_000;

/// Starts a fake Graph API on a free port of 127.0.0.1, accepting `token` as `access_token`.
///
/// # Panics
/// If no port can be bound: a test cannot go on without its fake.
pub async fn start(token: &str) -> FakePlatform {
    start_on(SocketAddr::from(([127, 0, 0, 1], 0)), token)
        .await
        .expect("bind the fake Meta on 127.0.0.1")
}

/// Starts the fake on `addr`, accepting `token`.
pub async fn start_on(addr: SocketAddr, token: &str) -> std::io::Result<FakePlatform> {
    let routes = Router::new().route("/{version}/{audience_id}/users", post(users).delete(users));
    FakePlatform::serve(
        addr,
        routes,
        token,
        MAX_ROWS,
        || rate_limit_error(17),
        "Meta",
    )
    .await
}

/// The error Graph answers when a rate limit is hit: `code` 4 (application), 17 (user), 613 (ad
/// account) or 80000–80014 (business use case). Graph sends it with HTTP 400, not 429.
pub fn rate_limit_error(code: i64) -> ScriptedResponse {
    let (message, subcode) = match code {
        17 => ("(#17) User request limit reached", Some(2_446_079)),
        613 => (
            "(#613) There have been too many calls from this ad-account",
            Some(1_487_742),
        ),
        4 => ("(#4) Application request limit reached", None),
        _ => (
            "There have been too many calls for this custom audience",
            None,
        ),
    };
    ScriptedResponse::json(400, graph_error(code, subcode, message, true), Vec::new())
}

/// A Graph error object.
pub fn graph_error(code: i64, subcode: Option<i64>, message: &str, transient: bool) -> Value {
    let mut error = json!({
        "message": message,
        "type": "OAuthException",
        "code": code,
        "is_transient": transient,
        "fbtrace_id": "AFakeTraceId",
    });
    if let Some(subcode) = subcode {
        error["error_subcode"] = json!(subcode);
    }
    json!({ "error": error })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    schema: Schema,
    data: Vec<Row>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Schema {
    Single(String),
    Multi(Vec<String>),
}

/// Meta's SDK sends a single-key row as a bare string, the reference as a one-element array.
#[derive(Deserialize)]
#[serde(untagged)]
enum Row {
    Bare(String),
    Cells(Vec<String>),
}

/// The `session` parameter's id, if it has exactly Graph's four fields with sane values.
fn session_id(session: &str) -> Option<u64> {
    let session: serde_json::Map<String, Value> = serde_json::from_str(session).ok()?;
    let well_formed = session.len() == 4
        && session.get("batch_seq")?.as_u64()? >= 1
        && session.get("last_batch_flag")?.is_boolean()
        && session.get("estimated_num_total")?.as_u64()? >= 1;
    well_formed
        .then(|| session.get("session_id")?.as_u64())
        .flatten()
}

fn bad_request(code: i64, message: &str) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        graph_error(code, None, message, false),
    )
}

async fn users(
    State(shared): State<Shared>,
    Path((version, audience_id)): Path<(String, String)>,
    method: axum::http::Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    // Graph reads parameters from the query string and the form body alike.
    let mut params = parse_form(uri.query().unwrap_or_default());
    params.extend(parse_form(&String::from_utf8_lossy(&body)));
    let param = |name: &str| {
        params
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };

    if !version.starts_with('v') || version[1..].split('.').count() != 2 {
        return bad_request(2635, "Unknown path components: unsupported API version");
    }
    let token = lock(&shared).token.clone();
    if param("access_token").as_deref() != Some(token.as_str()) {
        return json_response(
            StatusCode::BAD_REQUEST,
            graph_error(
                190,
                None,
                "Invalid OAuth access token - Cannot parse access token",
                false,
            ),
        );
    }
    let Some(payload) = param("payload") else {
        return bad_request(100, "(#100) The parameter payload is required");
    };
    let payload: Payload = match serde_json::from_str(&payload) {
        Ok(p) => p,
        Err(e) => return bad_request(100, &format!("(#100) Invalid payload: {e}")),
    };
    let schema: Vec<String> = match payload.schema {
        Schema::Single(s) if s == "EMAIL_SHA256" || s == "PHONE_SHA256" => vec![s],
        Schema::Multi(keys)
            if !keys.is_empty() && keys.iter().all(|k| k == "EMAIL" || k == "PHONE") =>
        {
            keys
        }
        _ => {
            return bad_request(
                100,
                "(#100) This fake supports EMAIL and PHONE schemas only",
            )
        }
    };
    let session = match param("session").map(|s| session_id(&s)) {
        None => None,
        Some(Some(id)) => Some(id),
        Some(None) => return bad_request(100, "(#100) Invalid session parameter"),
    };

    let mut state = lock(&shared);
    if payload.data.len() > state.max_batch {
        return bad_request(
            100,
            &format!(
                "(#100) Too many users in one request: at most {}",
                state.max_batch
            ),
        );
    }
    let mut rows = Vec::with_capacity(payload.data.len());
    let mut invalid = 0;
    for (i, row) in payload.data.into_iter().enumerate() {
        let cells = match row {
            Row::Bare(cell) => vec![cell],
            Row::Cells(cells) => cells,
        };
        if cells.len() != schema.len() {
            return bad_request(100, "(#100) Data is missing or does not match schema");
        }
        if let Some(bad) = cells
            .iter()
            .position(|c| !c.is_empty() && !is_sha256_hex(c))
        {
            state.reject(format!(
                "meta data[{i}][{bad}]: not a lowercase hex SHA-256"
            ));
            return bad_request(
                100,
                &format!(
                    "(#100) data[{i}][{bad}] is not a SHA-256 hash: raw identifiers are refused"
                ),
            );
        }
        let hashes: Vec<String> = cells.into_iter().filter(|c| !c.is_empty()).collect();
        if hashes.is_empty() {
            invalid += 1;
        } else {
            rows.push(hashes);
        }
    }
    let received = rows.len() + invalid;
    let audience = state.audience(&audience_id);
    for hashes in rows {
        for hash in hashes {
            if method == axum::http::Method::POST {
                audience.insert(hash);
            } else {
                audience.remove(&hash);
            }
        }
    }
    drop(state);
    // Without a session, Graph opens one per call.
    let session_id = session.unwrap_or_else(|| uuid::Uuid::new_v4().as_u128() as u64);
    json_response(
        StatusCode::OK,
        json!({
            "audience_id": audience_id,
            "session_id": session_id.to_string(),
            "num_received": received,
            "num_invalid_entries": invalid,
            "invalid_entry_samples": {},
        }),
    )
}
