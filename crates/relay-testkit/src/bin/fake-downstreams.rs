//! The fake downstreams as one standalone process, for the demo (`scripts/demo`): every fake on a
//! fixed port of 127.0.0.1 (base port + offset), and `GET /state` on the base port with what each
//! of them now holds. Runs until killed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use relay_testkit::audiences::x::OAuthCredentials;
use relay_testkit::audiences::{self, FakePlatform};
use relay_testkit::hubspot::FakeHubSpot;
use relay_testkit::newsletter::{FakeBrevo, FakeMailchimp};
use relay_testkit::partner::FakePartner;
use serde_json::json;

/// Credentials the demo configuration uses. Fakes only: nothing here is a real secret.
const TOKEN: &str = "demo-token";
/// X's OAuth 1.0a consumer key and secret, access token and secret.
const X_CONSUMER_KEY: &str = "demo-consumer-key";
const X_CONSUMER_SECRET: &str = "demo-consumer-secret";
const X_ACCESS_TOKEN: &str = "1-demo-access-token";
const X_ACCESS_TOKEN_SECRET: &str = "demo-access-token-secret";
const PARTNER_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const BREVO_LIST: i64 = 7;
const MAILCHIMP_LIST: &str = "demolist1";

struct Fakes {
    hubspot: FakeHubSpot,
    meta: FakePlatform,
    google: FakePlatform,
    linkedin: FakePlatform,
    x: FakePlatform,
    brevo: FakeBrevo,
    mailchimp: FakeMailchimp,
    partner: FakePartner,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base: u16 = match std::env::args().nth(1) {
        Some(p) => p
            .parse()
            .map_err(|_| "usage: fake-downstreams [BASE_PORT] (default 18080)")?,
        None => 18080,
    };
    let at = |offset: u16| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), base + offset);
    let fakes = Arc::new(Fakes {
        hubspot: FakeHubSpot::start_on(at(1), TOKEN).await?,
        meta: audiences::meta::start_on(at(2), TOKEN).await?,
        google: audiences::google::start_on(at(3), TOKEN).await?,
        linkedin: audiences::linkedin::start_on(at(4), TOKEN).await?,
        x: audiences::x::start_oauth_on(
            at(5),
            OAuthCredentials::new(
                X_CONSUMER_KEY,
                X_CONSUMER_SECRET,
                X_ACCESS_TOKEN,
                X_ACCESS_TOKEN_SECRET,
            ),
        )
        .await?,
        brevo: FakeBrevo::start_on(at(6), TOKEN, &[BREVO_LIST]).await?,
        mailchimp: FakeMailchimp::start_on(at(7), "demo-token-us1", &[MAILCHIMP_LIST]).await?,
        partner: FakePartner::start_on(at(8), PARTNER_SECRET).await?,
    });
    let state = {
        let f = fakes.clone();
        move || {
            let f = f.clone();
            async move {
                Json(json!({
                    "hubspot": f.hubspot.state(),
                    "audiences (SHA-256 members)": {
                        "meta": f.meta.members("111"),
                        "google": f.google.members("222"),
                        "linkedin": f.linkedin.members("333"),
                        "x": f.x.members("444"),
                    },
                    "brevo": f.brevo.state(),
                    "mailchimp": f.mailchimp.state(),
                    "partner in-GmbH": f.partner.state(),
                }))
            }
        }
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
