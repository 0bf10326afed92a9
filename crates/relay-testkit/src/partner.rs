//! A fake partner that receives Standard Webhooks v1 (docs/vendors/partner-webhooks.md §7) on
//! `127.0.0.1`, the way a careful receiver would: it verifies the signature with its `whsec_`
//! secret (401 otherwise), rejects timestamps more than 5 minutes off (400), treats `webhook-id` as
//! the idempotency key, and keeps leads by `subject_id`: `lead.consented` stores the `data` object
//! as received, `consent.withdrawn` and `subject.erased` delete it.
//!
//! Tests read what arrived (`lead`, `deliveries`) to assert the exact fields that left our system,
//! and script answers (`push_response`: 410, 429, 500, ...). `GET /__fake/state` dumps the leads
//! as JSON for the demo.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::newsletter::{json_response, lock, serve};
use crate::recorded::record;
pub use crate::recorded::{RecordedRequest, ScriptedResponse};

/// The path the fake receives webhooks on.
pub const WEBHOOK_PATH: &str = "/webhooks/consent";
/// `GET` path of the JSON state dump (not part of a partner's API).
pub const STATE_PATH: &str = "/__fake/state";
/// How far `webhook-timestamp` may be from the fake's clock (the Standard Webhooks libraries'
/// default).
pub const TIMESTAMP_TOLERANCE: Duration = Duration::from_secs(300);

/// A running fake partner. The server stops when this value is dropped.
pub struct FakePartner {
    addr: SocketAddr,
    shared: Arc<Mutex<PartnerState>>,
    server: tokio::task::JoinHandle<()>,
}

/// One webhook that passed verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// `webhook-id`.
    pub id: String,
    /// The payload's `type`.
    pub kind: String,
    /// The payload's `data`.
    pub data: Value,
    /// Whether the id had been processed before (then nothing was applied).
    pub duplicate: bool,
}

struct PartnerState {
    key: Vec<u8>,
    leads: BTreeMap<String, Value>,
    processed: BTreeSet<String>,
    deliveries: Vec<Delivery>,
    script: VecDeque<ScriptedResponse>,
    requests: Vec<RecordedRequest>,
}

impl FakePartner {
    /// Starts the fake on a free port of 127.0.0.1, verifying with `secret` (`whsec_…`).
    ///
    /// # Panics
    /// If the secret is not `whsec_` + base64 or no port can be bound: a test cannot go on.
    pub async fn start(secret: &str) -> FakePartner {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), secret)
            .await
            .expect("bind the fake partner on 127.0.0.1")
    }

    /// Starts the fake on `addr` (the demo uses a fixed port).
    ///
    /// # Panics
    /// If the secret is not `whsec_` + base64.
    pub async fn start_on(addr: SocketAddr, secret: &str) -> std::io::Result<FakePartner> {
        let key = secret
            .strip_prefix("whsec_")
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .expect("a whsec_ secret with base64 after the prefix");
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Mutex::new(PartnerState {
            key,
            leads: BTreeMap::new(),
            processed: BTreeSet::new(),
            deliveries: Vec::new(),
            script: VecDeque::new(),
            requests: Vec::new(),
        }));
        let app = Router::new()
            .route(WEBHOOK_PATH, post(receive))
            .route(STATE_PATH, get(state_dump))
            .with_state(shared.clone());
        let server = tokio::spawn(serve(listener, app, "partner"));
        Ok(FakePartner {
            addr,
            shared,
            server,
        })
    }

    /// `http://127.0.0.1:<port>/webhooks/consent`, to use as the partner's `endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}{WEBHOOK_PATH}", self.addr)
    }

    /// Queues an answer for the next webhook, given instead of verifying and processing it.
    pub fn push_response(&self, response: ScriptedResponse) {
        lock(&self.shared).script.push_back(response);
    }

    /// The lead held for `subject_id`: the `data` object of its `lead.consented`, as received.
    pub fn lead(&self, subject_id: &str) -> Option<Value> {
        lock(&self.shared).leads.get(subject_id).cloned()
    }

    /// Every lead held, by `subject_id`.
    pub fn leads(&self) -> BTreeMap<String, Value> {
        lock(&self.shared).leads.clone()
    }

    /// Every webhook that passed verification, in arrival order, duplicates included.
    pub fn deliveries(&self) -> Vec<Delivery> {
        lock(&self.shared).deliveries.clone()
    }

    /// Every request so far, in arrival order, rejected ones included.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared).requests.clone()
    }

    /// The same JSON as `GET /__fake/state`.
    pub fn state(&self) -> Value {
        let state = lock(&self.shared);
        json!({ "leads": state.leads, "processed": state.processed })
    }
}

impl Drop for FakePartner {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn state_dump(State(shared): State<Arc<Mutex<PartnerState>>>) -> Response {
    let state = lock(&shared);
    json_response(
        StatusCode::OK,
        "application/json",
        &json!({ "leads": state.leads, "processed": state.processed }),
    )
}

async fn receive(State(shared): State<Arc<Mutex<PartnerState>>>, request: Request) -> Response {
    let (request, complete) = record(request, |r| lock(&shared).requests.push(r)).await;
    if let Some(scripted) = lock(&shared).script.pop_front() {
        return scripted.into_response();
    }
    if !complete {
        return reject(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
    }
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return reject(StatusCode::BAD_REQUEST, "unreadable body");
    };
    let key = lock(&shared).key.clone();
    let verified = match verify(&key, &parts.headers, &body, SystemTime::now()) {
        Ok(verified) => verified,
        Err((status, message)) => return reject(status, message),
    };
    let payload: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return reject(StatusCode::BAD_REQUEST, "body is not JSON"),
    };
    let kind = payload["type"].as_str().unwrap_or_default().to_owned();
    let data = payload["data"].clone();
    let Some(subject) = data["subject_id"].as_str().map(str::to_owned) else {
        return reject(StatusCode::BAD_REQUEST, "data.subject_id is missing");
    };
    if !matches!(
        kind.as_str(),
        "lead.consented" | "consent.withdrawn" | "subject.erased"
    ) {
        return reject(StatusCode::BAD_REQUEST, "unknown type");
    }

    let mut state = lock(&shared);
    let duplicate = !state.processed.insert(verified.id.clone());
    if !duplicate {
        if kind == "lead.consented" {
            state.leads.insert(subject, data.clone());
        } else {
            state.leads.remove(&subject);
        }
    }
    state.deliveries.push(Delivery {
        id: verified.id,
        kind,
        data,
        duplicate,
    });
    StatusCode::NO_CONTENT.into_response()
}

struct Verified {
    id: String,
}

/// Standard Webhooks verification: the headers are there, one `v1` signature matches (compared in
/// constant time), and the timestamp is within the tolerance of `now`.
fn verify(
    key: &[u8],
    headers: &HeaderMap,
    body: &Bytes,
    now: SystemTime,
) -> Result<Verified, (StatusCode, &'static str)> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(timestamp), Some(signatures)) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    ) else {
        return Err((StatusCode::BAD_REQUEST, "missing webhook-* headers"));
    };
    let signed_content = [id.as_bytes(), b".", timestamp.as_bytes(), b".", body].concat();
    let valid = signatures.split(' ').any(|entry| {
        let Some(("v1", b64)) = entry.split_once(',') else {
            return false;
        };
        let Ok(tag) = base64::engine::general_purpose::STANDARD.decode(b64) else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
        mac.update(&signed_content);
        mac.verify_slice(&tag).is_ok()
    });
    if !valid {
        return Err((StatusCode::UNAUTHORIZED, "no valid signature"));
    }
    let Ok(seconds) = timestamp.parse::<u64>() else {
        return Err((
            StatusCode::BAD_REQUEST,
            "webhook-timestamp is not unix seconds",
        ));
    };
    let sent = UNIX_EPOCH + Duration::from_secs(seconds);
    let skew = now.duration_since(sent).unwrap_or_else(|e| e.duration());
    if skew > TIMESTAMP_TOLERANCE {
        return Err((
            StatusCode::BAD_REQUEST,
            "webhook-timestamp outside the tolerance",
        ));
    }
    Ok(Verified { id: id.to_owned() })
}

fn reject(status: StatusCode, message: &str) -> Response {
    json_response(status, "application/json", &json!({ "error": message }))
}

impl crate::recorded::Recording for FakePartner {
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
    use axum::http::HeaderValue;

    use super::*;

    const KEY: &[u8] = b"0123456789abcdef01234567";

    fn signed(id: &str, timestamp: u64, body: &[u8], key: &[u8]) -> HeaderMap {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        let tag = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let mut h = HeaderMap::new();
        h.insert("webhook-id", HeaderValue::from_str(id).unwrap());
        h.insert("webhook-timestamp", HeaderValue::from(timestamp));
        h.insert(
            "webhook-signature",
            HeaderValue::from_str(&format!("v1a,xyz v1,{tag}")).unwrap(),
        );
        h
    }

    #[test]
    fn verification_checks_signature_then_timestamp() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let body = Bytes::from_static(br#"{"type":"lead.consented"}"#);
        let ok = signed("e1", 1_800_000_000 - 300, &body, KEY);
        assert_eq!(verify(KEY, &ok, &body, now).unwrap().id, "e1");
        let early = signed("e1", 1_800_000_000 + 300, &body, KEY);
        assert!(verify(KEY, &early, &body, now).is_ok());

        let old = signed("e1", 1_800_000_000 - 301, &body, KEY);
        assert_eq!(
            verify(KEY, &old, &body, now).err().unwrap().0,
            StatusCode::BAD_REQUEST
        );
        let wrong_key = signed("e1", 1_800_000_000, &body, b"another key of 24 bytes!");
        assert_eq!(
            verify(KEY, &wrong_key, &body, now).err().unwrap().0,
            StatusCode::UNAUTHORIZED
        );
        let tampered = Bytes::from_static(br#"{"type":"lead.consented","x":1}"#);
        assert_eq!(
            verify(KEY, &ok, &tampered, now).err().unwrap().0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            verify(KEY, &HeaderMap::new(), &body, now).err().unwrap().0,
            StatusCode::BAD_REQUEST
        );
    }
}
