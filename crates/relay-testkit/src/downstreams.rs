//! Every fake downstream at once, with the credentials the demo configuration uses: for the demo's
//! `fake-downstreams` binary and for benches that run the relay against all its sinks.

use std::net::SocketAddr;

use serde_json::{json, Value};

use crate::audiences::x::OAuthCredentials;
use crate::audiences::{self, FakePlatform};
use crate::hubspot::FakeHubSpot;
use crate::newsletter::{FakeBrevo, FakeMailchimp};
use crate::partner::FakePartner;
use crate::recorded::Recording;

/// The fakes' credentials. Fakes only: nothing here is a real secret.
pub const TOKEN: &str = "demo-token";
pub const X_CONSUMER_KEY: &str = "demo-consumer-key";
pub const X_CONSUMER_SECRET: &str = "demo-consumer-secret";
pub const X_ACCESS_TOKEN: &str = "1-demo-access-token";
pub const X_ACCESS_TOKEN_SECRET: &str = "demo-access-token-secret";
pub const MAILCHIMP_KEY: &str = "demo-token-us1";
pub const PARTNER_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const BREVO_LIST: i64 = 7;
pub const MAILCHIMP_LIST: &str = "demolist1";
/// The audience ids the fake platforms are addressed with.
pub const META_AUDIENCE: &str = "111";
pub const GOOGLE_AUDIENCE: &str = "222";
pub const LINKEDIN_SEGMENT: &str = "333";
pub const X_AUDIENCE: &str = "444";

pub struct Downstreams {
    pub hubspot: FakeHubSpot,
    pub meta: FakePlatform,
    pub google: FakePlatform,
    pub linkedin: FakePlatform,
    pub x: FakePlatform,
    pub brevo: FakeBrevo,
    pub mailchimp: FakeMailchimp,
    pub partner: FakePartner,
}

impl Downstreams {
    /// Starts every fake; `at(n)` gives the address of the n-th (1 = HubSpot … 8 = the partner).
    pub async fn start(at: impl Fn(u16) -> SocketAddr) -> std::io::Result<Downstreams> {
        Ok(Downstreams {
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
            mailchimp: FakeMailchimp::start_on(at(7), MAILCHIMP_KEY, &[MAILCHIMP_LIST]).await?,
            partner: FakePartner::start_on(at(8), PARTNER_SECRET).await?,
        })
    }

    /// Starts every fake on a free port of 127.0.0.1.
    pub async fn start_anywhere() -> std::io::Result<Downstreams> {
        Downstreams::start(|_| SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Each fake's request log, by the name of the relay destination the demo configuration
    /// points at it (`deploy/demo.toml`).
    pub fn recordings(&self) -> Vec<(&'static str, &dyn Recording)> {
        vec![
            ("hubspot", &self.hubspot),
            ("audiences.meta", &self.meta),
            ("audiences.google", &self.google),
            ("audiences.linkedin", &self.linkedin),
            ("audiences.x", &self.x),
            ("newsletter.main", &self.brevo),
            ("newsletter.product", &self.mailchimp),
            ("partner.in_gmbh", &self.partner),
        ]
    }

    /// What each fake now holds.
    pub fn state(&self) -> Value {
        json!({
            "hubspot": self.hubspot.state(),
            "audiences (SHA-256 members)": {
                "meta": self.meta.members(META_AUDIENCE),
                "google": self.google.members(GOOGLE_AUDIENCE),
                "linkedin": self.linkedin.members(LINKEDIN_SEGMENT),
                "x": self.x.members(X_AUDIENCE),
            },
            "brevo": self.brevo.state(),
            "mailchimp": self.mailchimp.state(),
            "partner in-GmbH": self.partner.state(),
        })
    }
}
