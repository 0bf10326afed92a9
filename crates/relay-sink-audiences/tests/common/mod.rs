//! Shared by the test binaries: the four fakes, a config pointing at them, and item builders.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use relay_delivery::{Outcome, Sink, SinkItem, Target};
use relay_events::{normalize, Action};
use relay_sink_audiences::{AudiencesConfig, AudiencesSink};
use relay_testkit::audiences::x::OAuthCredentials;
use relay_testkit::audiences::{self, FakePlatform, RecordedRequest};
use relay_testkit::items::ItemFixture;

pub const TOKEN: &str = "test-token";
/// X's four OAuth 1.0a credentials.
pub const X_CONSUMER_KEY: &str = "test-consumer-key";
pub const X_CONSUMER_SECRET: &str = "test-consumer-secret";
pub const X_ACCESS_TOKEN: &str = "1234-test-access-token";
pub const X_ACCESS_TOKEN_SECRET: &str = "test-access-token-secret";
pub const META_AUDIENCE: &str = "23850000000000001";
pub const META_LOOKALIKE: &str = "23850000000000002";
pub const GOOGLE_LIST: &str = "555000111";
pub const LINKEDIN_SEGMENT: &str = "987654";
pub const X_AUDIENCE: &str = "1nmth";

pub struct Fakes {
    pub meta: FakePlatform,
    pub google: FakePlatform,
    pub linkedin: FakePlatform,
    pub x: FakePlatform,
}

impl Fakes {
    pub async fn start() -> Fakes {
        Fakes {
            meta: audiences::meta::start(TOKEN).await,
            google: audiences::google::start(TOKEN).await,
            linkedin: audiences::linkedin::start(TOKEN).await,
            x: audiences::x::start_oauth(x_credentials()).await,
        }
    }

    /// `ads` → one audience on each platform; `lookalike` → a second Meta audience on the same
    /// account. `extra` is appended to the TOML (e.g. smaller batch sizes).
    pub fn config(&self, extra: &str) -> AudiencesConfig {
        let text = format!(
            r#"
            [purposes]
            ads = ["meta", "google", "linkedin", "x"]
            lookalike = ["meta-lookalike"]

            [audiences.meta]
            platform = "meta"
            base_url = "{meta}"
            token = "{TOKEN}"
            audience_id = "{META_AUDIENCE}"
            schema = "email_phone"

            [audiences.meta-lookalike]
            platform = "meta"
            base_url = "{meta}"
            token = "{TOKEN}"
            audience_id = "{META_LOOKALIKE}"

            [audiences.google]
            platform = "google"
            base_url = "{google}"
            token = "{TOKEN}"
            operating_account_id = "1234567890"
            product_destination_id = "{GOOGLE_LIST}"
            consent_purposes = ["ads"]

            [audiences.linkedin]
            platform = "linkedin"
            base_url = "{linkedin}"
            token = "{TOKEN}"
            segment_id = "{LINKEDIN_SEGMENT}"
            linkedin_version = "202601"

            [audiences.x]
            platform = "x"
            base_url = "{x}"
            consumer_key = "{X_CONSUMER_KEY}"
            consumer_secret = "{X_CONSUMER_SECRET}"
            access_token = "{X_ACCESS_TOKEN}"
            access_token_secret = "{X_ACCESS_TOKEN_SECRET}"
            account_id = "18ce54d4x5t"
            custom_audience_id = "{X_AUDIENCE}"
            {extra}
            "#,
            meta = self.meta.base_url(),
            google = self.google.base_url(),
            linkedin = self.linkedin.base_url(),
            x = self.x.base_url(),
        );
        toml::from_str(&text).expect("test config parses")
    }

    pub fn sink(&self, extra: &str) -> AudiencesSink {
        AudiencesSink::new(self.config(extra)).expect("test config is valid")
    }

    /// Whether the person is in the `ads` audience of meta, google, linkedin and x.
    pub fn presence(&self, email: &str) -> [bool; 4] {
        let has = |fake: &FakePlatform, audience: &str, hash: Option<String>| {
            fake.members(audience).contains(&hash.expect("normalizes"))
        };
        [
            has(
                &self.meta,
                META_AUDIENCE,
                hashed(normalize::meta_email(email)),
            ),
            has(
                &self.google,
                GOOGLE_LIST,
                hashed(normalize::google_email(email, true)),
            ),
            has(
                &self.linkedin,
                LINKEDIN_SEGMENT,
                hashed(normalize::linkedin_email(email)),
            ),
            has(&self.x, X_AUDIENCE, hashed(normalize::x_email(email))),
        ]
    }

    pub fn requests(&self) -> Vec<(&'static str, RecordedRequest)> {
        let mut all = Vec::new();
        for (name, fake) in [
            ("meta", &self.meta),
            ("google", &self.google),
            ("linkedin", &self.linkedin),
            ("x", &self.x),
        ] {
            all.extend(fake.requests().into_iter().map(|r| (name, r)));
        }
        all
    }

    /// Every fake only ever saw hashes: none rejected an identifier.
    pub fn assert_no_rejections(&self) {
        for fake in [&self.meta, &self.google, &self.linkedin, &self.x] {
            assert_eq!(fake.rejections(), Vec::<String>::new());
        }
    }
}

pub fn x_credentials() -> OAuthCredentials {
    OAuthCredentials::new(
        X_CONSUMER_KEY,
        X_CONSUMER_SECRET,
        X_ACCESS_TOKEN,
        X_ACCESS_TOKEN_SECRET,
    )
}

pub fn hashed(normalized: Option<String>) -> Option<String> {
    normalized.as_deref().map(normalize::sha256_hex)
}

pub fn item(
    subject: &str,
    email: &str,
    phone: Option<&str>,
    action: Action,
    target: Target,
) -> SinkItem {
    ItemFixture::new(action, target)
        .subject(subject)
        .email(Some(email))
        .phone(phone)
        .source("cmp")
        .notice("ads-2026-01")
        .build()
}

pub fn ads() -> Target {
    Target::Purpose("ads".into())
}

pub fn grant(subject: &str, email: &str) -> SinkItem {
    item(subject, email, None, Action::Grant, ads())
}

pub fn withdraw(subject: &str, email: &str) -> SinkItem {
    item(subject, email, None, Action::Withdraw, ads())
}

pub async fn deliver(sink: &AudiencesSink, items: &[SinkItem]) -> Vec<Outcome> {
    let outcomes = sink.deliver(items).await;
    assert_eq!(outcomes.len(), items.len());
    outcomes
}

pub fn classes(outcomes: &[Outcome]) -> Vec<&'static str> {
    outcomes.iter().map(|o| o.class().as_str()).collect()
}
