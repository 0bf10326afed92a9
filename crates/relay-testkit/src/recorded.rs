//! What every fake keeps of the requests it received, and the answers a test scripts in place of
//! a fake's own: one [`RecordedRequest`] and one [`ScriptedResponse`] for all fakes, so that tests
//! read and script every downstream alike.

use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// The largest body [`record`] reads; the newsletter and partner fakes use it.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// One request as a fake received it, rejected ones included.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query, as sent.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub at: Instant,
}

impl RecordedRequest {
    /// The request of `parts` with `body`, arrived `at`.
    pub(crate) fn new(parts: &Parts, body: &[u8], at: Instant) -> Self {
        RecordedRequest {
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
            body: String::from_utf8_lossy(body).into_owned(),
            at,
        }
    }
}

/// What every fake's request log answers without copying it: for callers that poll a log that
/// may hold thousands of large bodies (benches).
pub trait Recording {
    /// Requests received so far.
    fn request_count(&self) -> usize;
    /// When the first request from index `from` on that satisfies `pred` arrived.
    fn find_request(&self, from: usize, pred: &dyn Fn(&RecordedRequest) -> bool)
        -> Option<Instant>;
}

pub(crate) fn find_from(
    requests: &[RecordedRequest],
    from: usize,
    pred: &dyn Fn(&RecordedRequest) -> bool,
) -> Option<Instant> {
    requests.get(from..)?.iter().find(|r| pred(r)).map(|r| r.at)
}

/// An answer a fake gives instead of handling the next request. It changes no state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptedResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl ScriptedResponse {
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

/// Reads the body and records the request; `false` when the body was too large to read.
pub(crate) async fn record(
    request: Request,
    requests: impl FnOnce(RecordedRequest),
) -> (Request, bool) {
    let (parts, body) = request.into_parts();
    let (bytes, complete) = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(bytes) => (bytes, true),
        Err(_) => (Bytes::new(), false),
    };
    requests(RecordedRequest::new(&parts, &bytes, Instant::now()));
    (Request::from_parts(parts, Body::from(bytes)), complete)
}
