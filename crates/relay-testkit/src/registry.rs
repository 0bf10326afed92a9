//! A fake Confluent schema registry: the two calls the relay makes (`POST
//! /subjects/{subject}/versions`, `GET /schemas/ids/{id}`), with the registry's ids, content type
//! and error bodies.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

#[derive(Default)]
struct Registry {
    /// Schema text → id; ids are global, as in Confluent's registry.
    ids: BTreeMap<String, u32>,
    schemas: BTreeMap<u32, String>,
    subjects: BTreeMap<String, Vec<u32>>,
}

/// The fake registry; the server stops when this is dropped.
pub struct FakeRegistry {
    addr: SocketAddr,
    state: Arc<Mutex<Registry>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeRegistry {
    /// Starts the fake on a free port of 127.0.0.1.
    ///
    /// # Panics
    /// If no port can be bound: a test cannot go on.
    pub async fn start() -> FakeRegistry {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake registry");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(Registry::default()));
        let app = Router::new()
            .route("/subjects/{subject}/versions", post(register))
            .route("/schemas/ids/{id}", get(schema))
            .with_state(state.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeRegistry {
            addr,
            state,
            server,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The versions registered under `subject`, as schema ids.
    pub fn versions(&self, subject: &str) -> Vec<u32> {
        let r = self.state.lock().expect("registry lock");
        r.subjects.get(subject).cloned().unwrap_or_default()
    }
}

fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

async fn register(
    State(state): State<Arc<Mutex<Registry>>>,
    Path(subject): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let Some(text) = body.get("schema").and_then(Value::as_str) else {
        return reply(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"error_code": 42201, "message": "Either the input schema or one its references is invalid"}),
        );
    };
    let mut r = state.lock().expect("registry lock");
    let next = r.schemas.len() as u32 + 1;
    let id = *r.ids.entry(text.to_owned()).or_insert(next);
    r.schemas.insert(id, text.to_owned());
    let versions = r.subjects.entry(subject).or_default();
    if !versions.contains(&id) {
        versions.push(id);
    }
    reply(StatusCode::OK, json!({ "id": id }))
}

async fn schema(State(state): State<Arc<Mutex<Registry>>>, Path(id): Path<u32>) -> Response {
    let r = state.lock().expect("registry lock");
    match r.schemas.get(&id) {
        Some(text) => reply(StatusCode::OK, json!({ "schema": text })),
        None => reply(
            StatusCode::NOT_FOUND,
            json!({"error_code": 40403, "message": "Schema not found"}),
        ),
    }
}
