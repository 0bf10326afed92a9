//! The admin HTTP port: `/metrics` (Prometheus text format), `/healthz` (the process is alive) and
//! `/readyz` (every sink has partitions, reached its ledger, and has no open circuit; otherwise
//! 503 with the reasons, one per line).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use relay_runtime::Telemetry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub fn router(telemetry: Telemetry) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(telemetry)
}

pub async fn serve(
    listener: TcpListener,
    telemetry: Telemetry,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(telemetry))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn metrics(State(t): State<Telemetry>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        t.render(),
    )
}

async fn readyz(State(t): State<Telemetry>) -> impl IntoResponse {
    match t.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(reasons) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready:\n{}\n", reasons.join("\n")),
        ),
    }
}

/// The admin port of `ingest`: its counters and `/healthz` (it has no sinks to be ready for).
pub async fn serve_ingest(
    listener: TcpListener,
    metrics: relay_ingest::Metrics,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let router = Router::new()
        .route(
            "/metrics",
            get(|State(m): State<relay_ingest::Metrics>| async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    m.render(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(metrics);
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
