//! Issue #4 end to end through the broker and the ledger: ad audiences follow the newest decision,
//! and a stale grant never re-adds anyone.

use std::sync::Arc;

use consent_relay_e2e::*;
use relay_events::normalize;
use relay_runtime::{BatchConfig, RetryConfig, SinkSpec};
use relay_sink_audiences::{AudiencesConfig, AudiencesSink};
use relay_testkit::audiences::x::OAuthCredentials;
use relay_testkit::audiences::{self, FakePlatform};

const TOKEN: &str = "ads-token";
/// X signs with OAuth 1.0a: consumer key and secret, access token and secret.
const X_CREDENTIALS: [&str; 4] = ["ads-ck", "ads-cs", "1-ads-at", "ads-ats"];

struct Platforms {
    meta: FakePlatform,
    google: FakePlatform,
    linkedin: FakePlatform,
    x: FakePlatform,
}

impl Platforms {
    async fn start() -> Platforms {
        Platforms {
            meta: audiences::meta::start(TOKEN).await,
            google: audiences::google::start(TOKEN).await,
            linkedin: audiences::linkedin::start(TOKEN).await,
            x: audiences::x::start_oauth(OAuthCredentials::new(
                X_CREDENTIALS[0],
                X_CREDENTIALS[1],
                X_CREDENTIALS[2],
                X_CREDENTIALS[3],
            ))
            .await,
        }
    }

    fn spec(&self) -> SinkSpec {
        let config: AudiencesConfig = toml::from_str(&format!(
            r#"
[purposes]
ads_remarketing = ["meta", "google", "linkedin", "x"]
[audiences.meta]
platform = "meta"
base_url = "{}"
token = "{TOKEN}"
audience_id = "111"
[audiences.google]
platform = "google"
base_url = "{}"
token = "{TOKEN}"
operating_account_id = "1234567890"
product_destination_id = "222"
consent_purposes = ["ads_remarketing"]
[audiences.linkedin]
platform = "linkedin"
base_url = "{}"
token = "{TOKEN}"
segment_id = "333"
linkedin_version = "202601"
[audiences.x]
platform = "x"
base_url = "{}"
consumer_key = "{ck}"
consumer_secret = "{cs}"
access_token = "{at}"
access_token_secret = "{ats}"
account_id = "acc"
custom_audience_id = "444"
"#,
            self.meta.base_url(),
            self.google.base_url(),
            self.linkedin.base_url(),
            self.x.base_url(),
            ck = X_CREDENTIALS[0],
            cs = X_CREDENTIALS[1],
            at = X_CREDENTIALS[2],
            ats = X_CREDENTIALS[3],
        ))
        .expect("audiences config");
        SinkSpec {
            purposes: config.purposes.keys().cloned().collect(),
            sink: Arc::new(AudiencesSink::new(config).expect("audiences sink")),
            batch: BatchConfig {
                max_events: 100,
                linger_ms: 50,
                withdrawal_linger_ms: 0,
            },
            retry: RetryConfig {
                initial_delay_ms: 50,
                max_delay_ms: 500,
                factor: 2.0,
                ramp_attempts: 5,
                ..RetryConfig::default()
            },
        }
    }

    /// Whether the person's hashed email is in each platform's audience.
    fn presence(&self, email: &str) -> [bool; 4] {
        let hash = |n: Option<String>| normalize::sha256_hex(&n.expect("normalizes"));
        [
            self.meta
                .members("111")
                .contains(&hash(normalize::meta_email(email))),
            self.google
                .members("222")
                .contains(&hash(normalize::google_email(email, true))),
            self.linkedin
                .members("333")
                .contains(&hash(normalize::linkedin_email(email))),
            self.x
                .members("444")
                .contains(&hash(normalize::x_email(email))),
        ]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audiences_follow_the_newest_decision_and_stale_grants_never_re_add() {
    let h = Harness::new().await;
    let p = Platforms::start().await;
    let relay = h.start_sinks(vec![p.spec()]);
    let ads = "ads_remarketing";

    // One event at a time, so the ledger's version rule decides (not in-batch coalescing).
    let steps = [
        grant("ada", T0, ads),
        withdraw("ada", T0 + 1_000, ads),
        withdraw("bob", T0, ads),
        grant("bob", T0 + 1_000, ads),
        grant("cem", T0, ads),
        withdraw("cem", T0 + 2_000, ads),
        grant("cem", T0 + 1_000, ads),
    ];
    for ev in &steps {
        h.publish(std::slice::from_ref(ev)).await;
        eventually(&format!("{} decided", ev.event_id), PATIENCE, || async {
            let r = h.report(&ev.subject_id).await;
            r.deliveries
                .iter()
                .any(|d| d.key.event_id == ev.event_id && d.status.is_final())
                .then_some(())
        })
        .await;
    }
    assert_eq!(
        p.presence(&email_of("ada")),
        [false; 4],
        "granted then withdrew: absent everywhere"
    );
    assert_eq!(
        p.presence(&email_of("bob")),
        [true; 4],
        "withdrew then granted: present everywhere"
    );
    assert_eq!(
        p.presence(&email_of("cem")),
        [false; 4],
        "the stale grant did not re-add"
    );
    let cem = h.report("cem").await;
    let stale = cem
        .deliveries
        .iter()
        .find(|d| d.key.event_id == steps[6].event_id)
        .unwrap();
    assert_eq!(stale.status, relay_ledger::Status::Superseded);

    // Only hashes left the process.
    for fake in [&p.meta, &p.google, &p.linkedin, &p.x] {
        for r in fake.requests() {
            for who in ["ada", "bob", "cem"] {
                assert!(!r.body.contains(&email_of(who)) && !r.path.contains(&email_of(who)));
            }
        }
    }
    relay.stop().await;
}
