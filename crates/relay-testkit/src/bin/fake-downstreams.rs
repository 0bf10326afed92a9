//! The fake downstreams as one standalone process, for the demo (`scripts/demo`): every fake on a
//! fixed port of 127.0.0.1 (base port + offset), and `GET /state` on the base port with what each
//! of them now holds. Runs until killed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use relay_testkit::downstreams::Downstreams;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base: u16 = match std::env::args().nth(1) {
        Some(p) => p
            .parse()
            .map_err(|_| "usage: fake-downstreams [BASE_PORT] (default 18080)")?,
        None => 18080,
    };
    let at = |offset: u16| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), base + offset);
    let fakes = Arc::new(Downstreams::start(at).await?);
    let state = move || {
        let f = fakes.clone();
        async move { Json(f.state()) }
    };
    let listener = tokio::net::TcpListener::bind(at(0)).await?;
    eprintln!(
        "fake downstreams on 127.0.0.1:{}..{}; state at http://{}/state",
        base + 1,
        base + 8,
        at(0)
    );
    axum::serve(listener, Router::new().route("/state", get(state))).await?;
    Ok(())
}
