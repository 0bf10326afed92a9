//! A fake network behind the generic hashed-audience contract (docs/vendors/generic-audience.md):
//! `POST` of `{"<members_field>": [{"<email_field>": "<sha256>", ...}]}` to the add and remove
//! paths, bearer token, any 2xx for the whole request. As strict as the contract: the body must
//! hold the members field and nothing else, a member only the configured fields, every value a
//! lowercase hex SHA-256, and a member must hold the email hash (else 400); the body must be
//! `application/json` (else 415); more than the batch limit is a 413, a throttled request a 429
//! with `Retry-After`. Adding a member twice or removing an absent one is a 200, as the contract asks.
//!
//! The audience's members are kept under [`AUDIENCE`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

use super::{
    has_bearer, is_sha256_hex, json_response, lock, FakePlatform, ScriptedResponse, Shared,
};

/// The key of the fake's one audience for [`FakePlatform::members`].
pub const AUDIENCE: &str = "generic";
/// The fake's default batch limit.
pub const DEFAULT_MAX_MEMBERS: usize = 1_000;

/// The shape of the network's requests, as the audience's configuration names it.
#[derive(Debug, Clone)]
pub struct Contract {
    pub add_path: String,
    pub remove_path: String,
    pub members_field: String,
    pub email_field: String,
    pub phone_field: Option<String>,
}

impl Default for Contract {
    /// The sink's defaults, with the paths of the example configuration.
    fn default() -> Self {
        Contract {
            add_path: "/v1/audiences/4711/members:add".into(),
            remove_path: "/v1/audiences/4711/members:remove".into(),
            members_field: "members".into(),
            email_field: "email_sha256".into(),
            phone_field: None,
        }
    }
}

/// Starts the fake on a free port of 127.0.0.1, accepting `token` as bearer.
///
/// # Panics
/// If no port can be bound: a test cannot go on without its fake.
pub async fn start(token: &str, contract: Contract) -> FakePlatform {
    start_on(SocketAddr::from(([127, 0, 0, 1], 0)), token, contract)
        .await
        .expect("bind the fake generic network on 127.0.0.1")
}

/// Starts the fake on `addr`.
pub async fn start_on(
    addr: SocketAddr,
    token: &str,
    contract: Contract,
) -> std::io::Result<FakePlatform> {
    let contract = Arc::new(contract);
    let (add, remove) = (contract.clone(), contract.clone());
    let routes = Router::new()
        .route(
            &contract.add_path,
            post(move |state, headers, body| members(state, headers, body, add, true)),
        )
        .route(
            &contract.remove_path,
            post(move |state, headers, body| members(state, headers, body, remove, false)),
        );
    FakePlatform::serve(
        addr,
        routes,
        token,
        DEFAULT_MAX_MEMBERS,
        throttled,
        "generic network",
    )
    .await
}

/// The contract's throttling answer: 429 with `Retry-After`.
pub fn throttled() -> ScriptedResponse {
    ScriptedResponse::json(
        429,
        json!({"error": "rate limited"}),
        vec![("retry-after".into(), "1".into())],
    )
}

fn error(status: StatusCode, message: &str) -> Response {
    json_response(status, json!({ "error": message }))
}

async fn members(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
    contract: Arc<Contract>,
    add: bool,
) -> Response {
    if !has_bearer(&headers, &lock(&shared).token.clone()) {
        return error(StatusCode::UNAUTHORIZED, "invalid token");
    }
    let json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        );
    }
    let Ok(Value::Object(mut body)) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "the body must be a JSON object");
    };
    let Some(Value::Array(list)) = body.remove(&contract.members_field) else {
        return error(StatusCode::BAD_REQUEST, "no members list");
    };
    if !body.is_empty() {
        return error(StatusCode::BAD_REQUEST, "unknown fields in the body");
    }
    let mut state = lock(&shared);
    if list.is_empty() {
        return error(StatusCode::BAD_REQUEST, "no members");
    }
    if list.len() > state.max_batch {
        let max = state.max_batch;
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("at most {max} members per request"),
        );
    }
    let mut emails = Vec::with_capacity(list.len());
    for (i, member) in list.iter().enumerate() {
        let Value::Object(fields) = member else {
            return error(StatusCode::BAD_REQUEST, "a member must be an object");
        };
        let known = |name: &String| {
            *name == contract.email_field || Some(name) == contract.phone_field.as_ref()
        };
        if !fields.keys().all(known) {
            return error(StatusCode::BAD_REQUEST, "unknown fields in a member");
        }
        if !fields
            .values()
            .all(|v| v.as_str().is_some_and(is_sha256_hex))
        {
            state.reject(format!("generic members[{i}]: not a lowercase hex SHA-256"));
            return error(StatusCode::BAD_REQUEST, "identifiers must be SHA-256 hex");
        }
        match fields.get(&contract.email_field).and_then(Value::as_str) {
            Some(email) => emails.push(email.to_owned()),
            None => return error(StatusCode::BAD_REQUEST, "a member without an email hash"),
        }
    }
    let audience = state.audience(AUDIENCE);
    for email in emails {
        if add {
            audience.insert(email);
        } else {
            audience.remove(&email);
        }
    }
    json_response(StatusCode::OK, json!({ "received": list.len() }))
}
