//! The sink against the four fake platforms of relay-testkit: audience state after grants,
//! withdrawals, unsubscribes and erasures; batching; error mapping; vendor examples end to end.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use relay_delivery::{Outcome, SinkItem, Target};
use relay_events::Action;
use relay_sink_audiences::{AudienceConfig, AudiencesSink};
use relay_testkit::audiences::{self, RecordedRequest, ScriptedResponse};
use serde_json::{json, Value};

#[tokio::test]
async fn grant_then_withdraw_ends_absent_from_every_audience() {
    let fakes = Fakes::start().await;
    let sink = fakes.sink("");
    let email = "Max.Mustermann@Example.DE";

    let outcomes = deliver(&sink, &[grant("s1", email)]).await;
    assert_eq!(outcomes, vec![Outcome::Applied]);
    assert_eq!(fakes.presence(email), [true; 4]);

    let outcomes = deliver(&sink, &[withdraw("s1", email)]).await;
    assert_eq!(outcomes, vec![Outcome::Applied]);
    assert_eq!(fakes.presence(email), [false; 4]);
    fakes.assert_no_rejections();
}

#[tokio::test]
async fn withdraw_then_later_grant_ends_present() {
    let fakes = Fakes::start().await;
    let sink = fakes.sink("");
    let email = "jane.doe+ads@gmail.com";

    // Removing someone who was never added is fine on every platform.
    assert_eq!(
        deliver(&sink, &[withdraw("s1", email)]).await,
        vec![Outcome::Applied]
    );
    assert_eq!(fakes.presence(email), [false; 4]);
    assert_eq!(
        deliver(&sink, &[grant("s1", email)]).await,
        vec![Outcome::Applied]
    );
    assert_eq!(fakes.presence(email), [true; 4]);
    fakes.assert_no_rejections();
}

#[tokio::test]
async fn unsubscribe_all_and_erasure_remove_from_every_audience() {
    let fakes = Fakes::start().await;
    let sink = fakes.sink("");
    let lookalike = Target::Purpose("lookalike".into());
    let people = ["a@example.de", "b@example.de"];
    let mut grants = Vec::new();
    for (i, email) in people.iter().enumerate() {
        grants.push(grant(&format!("s{i}"), email));
        grants.push(item(
            &format!("s{i}"),
            email,
            None,
            Action::Grant,
            lookalike.clone(),
        ));
    }
    assert_eq!(classes(&deliver(&sink, &grants).await), ["applied"; 4]);
    for email in people {
        assert_eq!(fakes.presence(email), [true; 4]);
    }
    assert_eq!(fakes.meta.members(META_LOOKALIKE).len(), 2);

    let outcomes = deliver(
        &sink,
        &[
            item("s0", people[0], None, Action::Withdraw, Target::All),
            item("s1", people[1], None, Action::Erase, Target::All),
        ],
    )
    .await;
    assert_eq!(classes(&outcomes), ["applied"; 2]);
    for email in people {
        assert_eq!(fakes.presence(email), [false; 4]);
    }
    assert!(fakes.meta.members(META_LOOKALIKE).is_empty());
    fakes.assert_no_rejections();
}

#[tokio::test]
async fn removals_go_before_adds_and_adds_and_removes_never_share_a_request() {
    let fakes = Fakes::start().await;
    let sink = fakes.sink("");
    deliver(&sink, &[grant("s1", "old@example.de")]).await;
    let before = fakes.google.requests().len();

    let outcomes = deliver(
        &sink,
        &[
            grant("s2", "new@example.de"),
            withdraw("s1", "old@example.de"),
        ],
    )
    .await;
    assert_eq!(classes(&outcomes), ["applied"; 2]);
    let google: Vec<String> = fakes.google.requests()[before..]
        .iter()
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(
        google,
        [
            audiences::google::REMOVE_PATH,
            audiences::google::INGEST_PATH
        ]
    );
    let meta: Vec<String> = fakes
        .meta
        .requests()
        .iter()
        .map(|r| r.method.clone())
        .collect();
    assert_eq!(meta, ["POST", "DELETE", "POST"]);
    assert!(fakes.presence("new@example.de").iter().all(|p| *p));
    assert!(!fakes.presence("old@example.de").iter().any(|p| *p));
}

/// The `payload` form field of a Meta request, and its `session` if any.
fn meta_params(request: &RecordedRequest) -> (Value, Option<Value>) {
    let url = reqwest::Url::parse(&format!("http://x/?{}", request.body)).unwrap();
    let param = |name: &str| {
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| serde_json::from_str::<Value>(&v).unwrap())
    };
    (param("payload").unwrap(), param("session"))
}

#[tokio::test]
async fn twenty_five_thousand_grants_are_batched_to_each_platforms_limit() {
    let fakes = Fakes::start().await;
    let sink = fakes.sink("");
    let items: Vec<SinkItem> = (0..25_000)
        .map(|i| grant(&format!("s{i}"), &format!("person{i}@example.de")))
        .collect();

    let outcomes = deliver(&sink, &items).await;
    assert!(outcomes.iter().all(|o| *o == Outcome::Applied));

    let meta = fakes.meta.requests();
    let rows: Vec<usize> = meta
        .iter()
        .map(|r| meta_params(r).0["data"].as_array().unwrap().len())
        .collect();
    assert_eq!(rows, [10_000, 10_000, 5_000]);
    let sessions: Vec<Value> = meta.iter().map(|r| meta_params(r).1.unwrap()).collect();
    let id = &sessions[0]["session_id"];
    for (i, session) in sessions.iter().enumerate() {
        assert_eq!(&session["session_id"], id);
        assert_eq!(session["batch_seq"], json!(i + 1));
        assert_eq!(session["last_batch_flag"], json!(i == 2));
        assert_eq!(session["estimated_num_total"], json!(25_000));
    }

    let google: Vec<usize> = fakes
        .google
        .requests()
        .iter()
        .map(|r| {
            let body: Value = serde_json::from_str(&r.body).unwrap();
            body["audienceMembers"].as_array().unwrap().len()
        })
        .collect();
    assert_eq!(google, [10_000, 10_000, 5_000]);

    let x: Vec<usize> = fakes
        .x
        .requests()
        .iter()
        .map(|r| {
            serde_json::from_str::<Value>(&r.body)
                .unwrap()
                .as_array()
                .unwrap()
                .len()
        })
        .collect();
    assert_eq!(x, [2_500; 10]);

    // LinkedIn's batch size is ours to choose (1 000 by default).
    assert_eq!(fakes.linkedin.requests().len(), 25);

    for (fake, audience) in [
        (&fakes.meta, META_AUDIENCE),
        (&fakes.google, GOOGLE_LIST),
        (&fakes.linkedin, LINKEDIN_SEGMENT),
        (&fakes.x, X_AUDIENCE),
    ] {
        assert_eq!(fake.members(audience).len(), 25_000);
    }
    fakes.assert_no_rejections();
}

#[tokio::test]
async fn meta_error_code_17_is_retryable_not_permanent_and_holds_the_account_back() {
    let fakes = Fakes::start().await;
    let sink = fakes.sink("");
    fakes
        .meta
        .push_response(audiences::meta::rate_limit_error(17));

    let outcomes = deliver(
        &sink,
        &[
            grant("s1", "a@example.de"),
            item(
                "s2",
                "b@example.de",
                None,
                Action::Grant,
                Target::Purpose("lookalike".into()),
            ),
        ],
    )
    .await;
    for outcome in &outcomes {
        match outcome {
            Outcome::Unavailable { after, reason } => {
                assert!(after.is_some(), "{reason}");
                assert!(reason.contains("Meta error 17"), "{reason}");
            }
            other => panic!("code 17 must pause the account, not dead-letter, got {other:?}"),
        }
    }
    // The lookalike audience is on the same account: not asked after the throttle.
    assert_eq!(fakes.meta.requests().len(), 1);
    // The other platforms took their share.
    assert_eq!(fakes.presence("a@example.de"), [false, true, true, true]);
}

#[tokio::test]
async fn a_rate_limited_account_gets_no_more_requests_in_the_delivery() {
    let fakes = Fakes::start().await;
    let mut config = fakes.config("");
    let Some(AudienceConfig::X(x)) = config.audiences.get_mut("x") else {
        panic!("x audience");
    };
    x.max_users_per_request = 1;
    let sink = AudiencesSink::new(config).unwrap();
    fakes.x.set_rate_limit(1, Duration::from_secs(60));

    let outcomes = deliver(
        &sink,
        &[
            grant("s1", "a@example.de"),
            grant("s2", "b@example.de"),
            grant("s3", "c@example.de"),
        ],
    )
    .await;
    assert_eq!(outcomes[0], Outcome::Applied);
    for outcome in &outcomes[1..] {
        match outcome {
            // X's x-rate-limit-reset, a minute ahead, becomes the retry delay.
            Outcome::Unavailable {
                after: Some(after),
                reason,
            } => {
                assert!(*after > Duration::from_secs(50), "{after:?}");
                assert!(reason.contains("TOO_MANY_REQUESTS"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
    // The third user was not even tried.
    assert_eq!(fakes.x.requests().len(), 2);
    assert_eq!(fakes.x.members(X_AUDIENCE).len(), 1);
    assert_eq!(fakes.presence("c@example.de"), [true, true, true, false]);
}

#[tokio::test]
async fn platform_errors_map_to_outcomes() {
    let fakes = Fakes::start().await;
    let sink = fakes.sink("");

    // Google's per-project quota: the destination is unavailable, the item retried later.
    fakes
        .google
        .push_response(audiences::google::quota_exhausted());
    let outcomes = deliver(&sink, &[grant("s1", "q@example.de")]).await;
    assert_eq!(classes(&outcomes), ["unavailable"]);
    assert_eq!(fakes.presence("q@example.de"), [true, false, true, true]);

    // X is all-or-nothing: counts that do not add up are retried.
    fakes.x.push_response(ScriptedResponse::json(
        200,
        json!({"data": {"success_count": 0, "total_count": 1}}),
        Vec::new(),
    ));
    let outcomes = deliver(&sink, &[grant("s2", "r@example.de")]).await;
    assert_eq!(classes(&outcomes), ["retryable"]);

    // LinkedIn answers per element: the rejected user is dead-lettered, the other applied.
    fakes.linkedin.push_response(ScriptedResponse::json(
        200,
        json!({"elements": [{"status": 201}, {"status": 422}]}),
        Vec::new(),
    ));
    let outcomes = deliver(
        &sink,
        &[grant("s3", "s@example.de"), grant("s4", "t@example.de")],
    )
    .await;
    assert_eq!(classes(&outcomes), ["applied", "permanent"]);

    // A wrong token is the account's problem, not the person's: refused, never dead-lettered.
    let mut config = fakes.config("");
    config
        .audiences
        .get_mut("linkedin")
        .unwrap()
        .set_token("expired".into());
    let refused = AudiencesSink::new(config).unwrap();
    let outcomes = deliver(&refused, &[grant("s5", "u@example.de")]).await;
    assert_eq!(classes(&outcomes), ["refused"]);
    assert_eq!(fakes.presence("u@example.de"), [true, true, false, true]);
    fakes.assert_no_rejections();
}

#[tokio::test]
async fn fakes_enforce_batch_limits_with_the_platforms_errors() {
    let fakes = Fakes::start().await;
    let sink = fakes.sink("");
    fakes.meta.set_max_batch(1);
    fakes.x.set_max_batch(1);
    let outcomes = deliver(
        &sink,
        &[grant("s1", "a@example.de"), grant("s2", "b@example.de")],
    )
    .await;
    assert_eq!(classes(&outcomes), ["permanent"; 2]);
    let reasons: Vec<String> = outcomes
        .iter()
        .map(|o| match o {
            Outcome::Permanent { reason } => reason.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(reasons[0].contains("Too many users"), "{reasons:?}");
    assert!(fakes.meta.members(META_AUDIENCE).is_empty());
    assert!(fakes.x.members(X_AUDIENCE).is_empty());
}

#[tokio::test]
async fn vendor_examples_arrive_as_the_vendors_documented_hashes() {
    let fakes = Fakes::start().await;
    let sink = fakes.sink("");
    // googleads/data-manager-java UserDataFormatterTest: "  ALEXZ@example.com   " → 509E9330…,
    // "+1-800-555-0100" → FB4F73A6…. The Meta hash of the phone is the SHA-256 of
    // "18005550100" ("Remove symbols, letters, and any leading zeroes", no '+'), by sha256sum.
    let outcomes = deliver(
        &sink,
        &[item(
            "s1",
            "  ALEXZ@example.com   ",
            Some("   +1-800-555-0100"),
            Action::Grant,
            ads(),
        )],
    )
    .await;
    assert_eq!(outcomes, vec![Outcome::Applied]);
    let google = fakes.google.members(GOOGLE_LIST);
    assert!(google.contains("509e933019bb285a134a9334b8bb679dff79d0ce023d529af4bd744d47b4fd8a"));
    assert!(google.contains("fb4f73a6ec5fdb7077d564cdd22c3554b43ce49168550c3b12c547b78c517b30"));
    let meta = fakes.meta.members(META_AUDIENCE);
    assert!(meta.contains("509e933019bb285a134a9334b8bb679dff79d0ce023d529af4bd744d47b4fd8a"));
    assert!(meta.contains("92cfdc5fbcd4a20fbe5d3857af6c1aba31762105bba7f21a17155e920653046c"));
    // LinkedIn and X take the email alone, trimmed and lowercased.
    let expected: BTreeSet<String> =
        ["509e933019bb285a134a9334b8bb679dff79d0ce023d529af4bd744d47b4fd8a".to_owned()].into();
    assert_eq!(fakes.linkedin.members(LINKEDIN_SEGMENT), expected);
    assert_eq!(fakes.x.members(X_AUDIENCE), expected);
}

/// Sends a recorded request again, with `authorization` instead of its own (`None`: without one).
async fn resend(base_url: &str, request: &RecordedRequest, authorization: Option<&str>) -> Value {
    let mut resent = reqwest::Client::new()
        .post(format!("{base_url}{}", request.path))
        .header("content-type", "application/json")
        .body(request.body.clone());
    if let Some(value) = authorization {
        resent = resent.header("authorization", value);
    }
    let response = resent.send().await.unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    // X's error shape.
    assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED_ACCESS", "{body}");
    assert_eq!(body["request"], json!({"params": {}}), "{body}");
    body
}

#[tokio::test]
async fn x_requests_are_signed_with_oauth1_and_only_the_right_signature_passes() {
    let fakes = Fakes::start().await;
    let sink = fakes.sink("");
    // The fake recomputes each signature: applied means signed right.
    let outcomes = deliver(&sink, &[grant("s1", "a@example.de")]).await;
    assert_eq!(outcomes, vec![Outcome::Applied]);
    assert_eq!(fakes.presence("a@example.de"), [true; 4]);

    let requests = fakes.x.requests();
    let [request] = requests.as_slice() else {
        panic!("one X request: {requests:?}");
    };
    let authorization = request
        .headers
        .iter()
        .find(|(name, _)| name == "authorization")
        .map(|(_, value)| value.clone())
        .expect("an Authorization header");
    assert!(authorization.starts_with("OAuth "), "{authorization}");
    for field in [
        format!("oauth_consumer_key=\"{X_CONSUMER_KEY}\""),
        format!("oauth_token=\"{X_ACCESS_TOKEN}\""),
        "oauth_signature_method=\"HMAC-SHA1\"".to_owned(),
        "oauth_version=\"1.0\"".to_owned(),
        "oauth_nonce=\"".to_owned(),
        "oauth_timestamp=\"".to_owned(),
        "oauth_signature=\"".to_owned(),
    ] {
        assert!(authorization.contains(&field), "{field} in {authorization}");
    }
    // The secrets only key the signature; they are never sent.
    for (name, value) in &request.headers {
        for secret in [X_CONSUMER_SECRET, X_ACCESS_TOKEN_SECRET] {
            assert!(!value.contains(secret), "{name}: {value}");
        }
    }
    assert!(
        !request.body.contains(X_CONSUMER_SECRET) && !request.body.contains(X_ACCESS_TOKEN_SECRET)
    );

    // Replayed as it was, the nonce is spent; without a header, or with a bearer token, refused.
    let base = fakes.x.base_url();
    let replayed = resend(&base, request, Some(&authorization)).await;
    assert!(
        replayed["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("oauth_nonce was already used"),
        "{replayed}"
    );
    resend(&base, request, None).await;
    resend(&base, request, Some(&format!("Bearer {X_ACCESS_TOKEN}"))).await;
    // Signed for another audience, the signature does not fit this path.
    let mut other = request.clone();
    other.path = other.path.replace(X_AUDIENCE, "other");
    let forged = authorization.replace("oauth_nonce=\"", "oauth_nonce=\"x");
    let refused = resend(&base, &other, Some(&forged)).await;
    assert!(
        refused["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("oauth_signature does not match"),
        "{refused}"
    );
    assert!(fakes.x.members("other").is_empty());
    assert_eq!(fakes.x.members(X_AUDIENCE).len(), 1);
}

#[tokio::test]
async fn a_wrong_x_secret_is_refused_not_dead_lettered() {
    let fakes = Fakes::start().await;
    for field in ["consumer_secret", "access_token_secret"] {
        let mut config = fakes.config("");
        assert!(config
            .audiences
            .get_mut("x")
            .unwrap()
            .set_credential(field, "wrong-secret".into()));
        let sink = AudiencesSink::new(config).unwrap();
        let outcomes = deliver(&sink, &[grant("s1", "a@example.de")]).await;
        match &outcomes[0] {
            Outcome::Refused { reason } => {
                assert!(reason.contains("UNAUTHORIZED_ACCESS"), "{reason}")
            }
            other => panic!("{field}: {other:?}"),
        }
        assert_eq!(fakes.presence("a@example.de"), [true, true, true, false]);
    }
    fakes.assert_no_rejections();
}
