//! Fake ad platforms for the audiences sink, on `127.0.0.1`: Meta Custom Audiences
//! ([`meta`]), Google Data Manager ([`google`]), LinkedIn DMP segments ([`linkedin`]) and X custom
//! audiences ([`x`]), following `docs/vendors/` (meta.md, google.md, linkedin.md, x.md), and a
//! network behind the generic hashed-audience contract ([`generic`], generic-audience.md).
//!
//! All of them share one shape, [`FakePlatform`]: every request is recorded (rejected ones included)
//! with its arrival time; scripted answers replace the next requests (`push_response`); an optional
//! rate limit answers with the platform's own throttling error; each audience's membership is a set
//! of hashes (`members`). Every identifier must be a 64-character lowercase hex SHA-256: anything
//! else is rejected with the platform's error and listed in `rejections()`, so a raw email that
//! slipped through fails a test loudly instead of being "matched".
//!
//! What the platforms do not document, the fakes decide strictly: unknown JSON fields are rejected,
//! and only the identifier types the sink uses are supported.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::Value;

use crate::late::LateApply;

pub mod generic;
pub mod google;
pub mod linkedin;
pub mod meta;
pub mod x;

pub use crate::recorded::{RecordedRequest, ScriptedResponse};

/// X accepts up to 5 000 000 bytes; the others less. Anything larger is surely a client bug.
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// A running fake platform. The server stops when this value is dropped.
pub struct FakePlatform {
    addr: SocketAddr,
    shared: Shared,
    server: tokio::task::JoinHandle<()>,
}

pub(crate) type Shared = Arc<Mutex<PlatformState>>;

pub(crate) struct PlatformState {
    pub(crate) token: String,
    pub(crate) max_batch: usize,
    /// Audience id → hashes of its members.
    pub(crate) audiences: BTreeMap<String, BTreeSet<String>>,
    pub(crate) rejections: Vec<String>,
    script: VecDeque<ScriptedResponse>,
    rate_limit: Option<(usize, Duration)>,
    /// Arrival times of the requests within the rate-limit window, oldest first.
    window: VecDeque<Instant>,
    throttled: fn() -> ScriptedResponse,
    requests: Vec<RecordedRequest>,
    /// Added before every answer that is not scripted, after its change was applied.
    delay: Duration,
    late: LateApply,
}

pub(crate) fn lock(shared: &Shared) -> MutexGuard<'_, PlatformState> {
    // A test that panicked while holding the lock must not hide the state from the others.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PlatformState {
    /// Notes a rejected identifier (by position, never by value) for `rejections()`.
    pub(crate) fn reject(&mut self, what: String) {
        self.rejections.push(what);
    }

    pub(crate) fn audience(&mut self, id: &str) -> &mut BTreeSet<String> {
        self.audiences.entry(id.to_owned()).or_default()
    }
}

impl FakePlatform {
    /// Binds `routes` (handlers over [`Shared`]) on `addr` behind the recording gate.
    pub(crate) async fn serve(
        addr: SocketAddr,
        routes: Router<Shared>,
        token: &str,
        max_batch: usize,
        throttled: fn() -> ScriptedResponse,
        name: &'static str,
    ) -> std::io::Result<FakePlatform> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared: Shared = Arc::new(Mutex::new(PlatformState {
            token: token.to_owned(),
            max_batch,
            audiences: BTreeMap::new(),
            rejections: Vec::new(),
            script: VecDeque::new(),
            rate_limit: None,
            window: VecDeque::new(),
            throttled,
            requests: Vec::new(),
            delay: Duration::ZERO,
            late: LateApply::default(),
        }));
        let app = routes
            .fallback(|| async { StatusCode::NOT_FOUND })
            .layer(middleware::from_fn_with_state(shared.clone(), gate))
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("fake {name} on {addr} stopped: {e}");
            }
        });
        Ok(FakePlatform {
            addr,
            shared,
            server,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`, to use as the audience's `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far, in arrival order, rejected ones included.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared).requests.clone()
    }

    /// The hashes currently in the audience (Meta audience id, Google user list id, LinkedIn
    /// segment id, X custom audience id).
    pub fn members(&self, audience: &str) -> BTreeSet<String> {
        lock(&self.shared)
            .audiences
            .get(audience)
            .cloned()
            .unwrap_or_default()
    }

    /// Requests the fake applies late, after the client may have given up (see [`LateApply`]).
    pub fn late(&self) -> LateApply {
        lock(&self.shared).late.clone()
    }

    /// Queues an answer for the next request.
    pub fn push_response(&self, response: ScriptedResponse) {
        lock(&self.shared).script.push_back(response);
    }

    /// Answers with the platform's throttling error once `max` requests arrived within `window`.
    pub fn set_rate_limit(&self, max: usize, window: Duration) {
        let mut state = lock(&self.shared);
        state.rate_limit = Some((max, window));
        state.window.clear();
    }

    /// Changes the largest batch the fake accepts (default: the platform's documented limit).
    pub fn set_max_batch(&self, max: usize) {
        lock(&self.shared).max_batch = max;
    }

    /// Puts hashes into an audience directly, as an earlier upload would have (no request).
    pub fn add_members(&self, audience: &str, hashes: impl IntoIterator<Item = String>) {
        lock(&self.shared).audience(audience).extend(hashes);
    }

    /// Answers every request that is not scripted `delay` late, after its change is applied (a
    /// slow platform, or a test that needs a process to be mid-run).
    pub fn set_response_delay(&self, delay: Duration) {
        lock(&self.shared).delay = delay;
    }

    /// What was rejected for not being a lowercase hex SHA-256, by position.
    pub fn rejections(&self) -> Vec<String> {
        lock(&self.shared).rejections.clone()
    }
}

impl Drop for FakePlatform {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Records every request, then answers from the script or the rate limit, or passes it on.
async fn gate(State(shared): State<Shared>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large").into_response();
    };
    let early = {
        let mut state = lock(&shared);
        let now = Instant::now();
        state
            .requests
            .push(RecordedRequest::new(&parts, &bytes, now));
        if let Some(scripted) = state.script.pop_front() {
            Some(scripted)
        } else if let Some((max, window)) = state.rate_limit {
            while state
                .window
                .front()
                .is_some_and(|t| now.duration_since(*t) >= window)
            {
                state.window.pop_front();
            }
            if state.window.len() >= max {
                Some((state.throttled)())
            } else {
                state.window.push_back(now);
                None
            }
        } else {
            None
        }
    };
    let late = lock(&shared).late.clone();
    match early {
        Some(response) => response.into_response(),
        None => match late.take(&parts.method, &bytes) {
            Some(hold) => {
                let apply = next.run(Request::from_parts(parts, Body::from(bytes)));
                late.apply_late(hold, apply).await
            }
            None => {
                let response = next
                    .run(Request::from_parts(parts, Body::from(bytes)))
                    .await;
                let delay = lock(&shared).delay;
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                response
            }
        },
    }
}

/// A 64-character lowercase hex string, the only identifier form the fakes accept.
pub(crate) fn is_sha256_hex(value: &str) -> bool {
    value.len() == 64
        && value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `headers` carry `Authorization: Bearer <token>`.
pub(crate) fn has_bearer(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == format!("Bearer {token}").as_bytes())
}

pub(crate) fn json_response(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// `application/x-www-form-urlencoded` pairs (also a query string), percent-decoded.
pub(crate) fn parse_form(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl crate::recorded::Recording for FakePlatform {
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
    fn forms_decode() {
        assert_eq!(
            parse_form("payload=%7B%22a%22%3A1%7D&access_token=t+k&empty=&flag"),
            vec![
                ("payload".to_owned(), r#"{"a":1}"#.to_owned()),
                ("access_token".to_owned(), "t k".to_owned()),
                ("empty".to_owned(), String::new()),
                ("flag".to_owned(), String::new()),
            ]
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn only_lowercase_sha256_hex_passes() {
        let h = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        assert!(is_sha256_hex(h));
        assert!(!is_sha256_hex(&h.to_uppercase()));
        assert!(!is_sha256_hex(&h[1..]));
        assert!(!is_sha256_hex("max@example.de"));
    }
}
