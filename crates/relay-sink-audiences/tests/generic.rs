//! A `generic` audience against relay-testkit's fake network of the generic hashed-audience
//! contract (docs/vendors/generic-audience.md): membership after grants and withdrawals, hashes
//! only, batches at the configured size, and the answers the contract leaves to the status.

use relay_delivery::{Outcome, OutcomeClass, Sink, SinkItem};
use relay_events::normalize;
use relay_sink_audiences::{AudiencesConfig, AudiencesSink};
use relay_testkit::audiences::generic::{self, Contract, AUDIENCE};
use relay_testkit::audiences::{FakePlatform, ScriptedResponse};
use relay_testkit::items;
use serde_json::Value;

const TOKEN: &str = "network-token";

async fn setup(contract: Contract, extra: &str) -> (FakePlatform, AudiencesSink) {
    let fake = generic::start(TOKEN, contract.clone()).await;
    let sink = sink_for(&fake, contract, extra);
    (fake, sink)
}

/// A sink of one generic audience, with [`TOKEN`], against `fake`.
fn sink_for(fake: &FakePlatform, contract: Contract, extra: &str) -> AudiencesSink {
    let phone = contract
        .phone_field
        .map(|f| format!("phone_field = \"{f}\""))
        .unwrap_or_default();
    let text = format!(
        r#"
        [purposes]
        ads = ["network"]

        [audiences.network]
        platform = "generic"
        base_url = "{base}"
        add_path = "{add}"
        remove_path = "{remove}"
        token = "{TOKEN}"
        members_field = "{members}"
        email_field = "{email}"
        {phone}
        {extra}
        "#,
        base = fake.base_url(),
        add = contract.add_path,
        remove = contract.remove_path,
        members = contract.members_field,
        email = contract.email_field,
    );
    let config: AudiencesConfig = toml::from_str(&text).expect("test config parses");
    AudiencesSink::new(config).expect("test config is valid")
}

fn grant(subject: &str, email: &str) -> SinkItem {
    items::grant("ads")
        .subject(subject)
        .email(Some(email))
        .build()
}

fn withdraw(subject: &str, email: &str) -> SinkItem {
    items::withdraw("ads")
        .subject(subject)
        .email(Some(email))
        .build()
}

fn hash(email: &str) -> String {
    normalize::sha256_hex(&normalize::email(email))
}

#[tokio::test]
async fn grants_add_withdrawals_remove_and_only_hashes_travel() {
    let (fake, sink) = setup(Contract::default(), "").await;
    let email = " Max.Mustermann@Example.DE ";
    assert_eq!(
        sink.deliver(&[grant("s1", email)]).await,
        [Outcome::Applied]
    );
    assert!(fake.members(AUDIENCE).contains(&hash(email)));
    assert_eq!(
        sink.deliver(&[withdraw("s1", email)]).await,
        [Outcome::Applied]
    );
    assert!(fake.members(AUDIENCE).is_empty());
    // Removing someone absent is fine, as the contract asks.
    assert_eq!(
        sink.deliver(&[withdraw("s1", email)]).await,
        [Outcome::Applied]
    );
    assert!(fake.rejections().is_empty(), "{:?}", fake.rejections());
    for request in fake.requests() {
        let body = request.body.clone();
        assert!(!body.contains('@'), "{body}");
    }
}

#[tokio::test]
async fn field_names_and_phones_follow_the_configuration() {
    let contract = Contract {
        members_field: "users".into(),
        email_field: "em".into(),
        phone_field: Some("ph".into()),
        ..Contract::default()
    };
    let (fake, sink) = setup(contract, "").await;
    let item = items::grant("ads")
        .email(Some("a@example.de"))
        .phone(Some("+49 221 1234567"))
        .build();
    assert_eq!(sink.deliver(&[item]).await, [Outcome::Applied]);
    let body: Value = serde_json::from_str(&fake.requests()[0].body).unwrap();
    let member = &body["users"][0];
    assert_eq!(member["em"], hash("a@example.de"));
    assert_eq!(member["ph"], normalize::sha256_hex("+492211234567"));
}

#[tokio::test]
async fn a_phone_without_a_country_code_is_not_sent() {
    let contract = Contract {
        phone_field: Some("phone_sha256".into()),
        ..Contract::default()
    };
    let (fake, sink) = setup(contract, "").await;
    let item = items::grant("ads")
        .email(Some("b@example.de"))
        .phone(Some("0221 1234567"))
        .build();
    assert_eq!(sink.deliver(&[item]).await, [Outcome::Applied]);
    let body: Value = serde_json::from_str(&fake.requests()[0].body).unwrap();
    assert_eq!(body["members"][0].as_object().unwrap().len(), 1, "{body}");
}

#[tokio::test]
async fn a_wrong_token_is_refused_by_the_network() {
    let contract = Contract::default();
    let fake = generic::start("another-token", contract.clone()).await;
    let sink = sink_for(&fake, contract, "");
    let outcomes = sink.deliver(&[withdraw("s", "t@example.de")]).await;
    assert_eq!(outcomes[0].class(), OutcomeClass::Refused, "{outcomes:?}");
    assert!(fake.members(AUDIENCE).is_empty());
}

#[tokio::test]
async fn members_go_in_batches_of_the_configured_size_removals_first() {
    let (fake, sink) = setup(Contract::default(), "max_members_per_request = 2").await;
    let mut batch: Vec<SinkItem> = (0..5)
        .map(|i| grant(&format!("g{i}"), &format!("g{i}@example.de")))
        .collect();
    batch.push(withdraw("w", "w@example.de"));
    let outcomes = sink.deliver(&batch).await;
    assert!(
        outcomes.iter().all(|o| *o == Outcome::Applied),
        "{outcomes:?}"
    );
    let requests = fake.requests();
    let sizes: Vec<usize> = requests
        .iter()
        .map(|r| {
            let body: Value = serde_json::from_str(&r.body).unwrap();
            body["members"].as_array().unwrap().len()
        })
        .collect();
    assert_eq!(sizes, [1, 2, 2, 1]);
    assert!(
        requests[0].path.ends_with("members:remove"),
        "{}",
        requests[0].path
    );
    assert_eq!(fake.members(AUDIENCE).len(), 5);
}

#[tokio::test]
async fn a_throttled_network_is_unavailable_a_refusing_one_refused() {
    let (fake, sink) = setup(Contract::default(), "").await;
    fake.push_response(generic::throttled());
    let outcomes = sink.deliver(&[withdraw("s", "t@example.de")]).await;
    match &outcomes[0] {
        Outcome::Unavailable { after, .. } => {
            assert_eq!(*after, Some(std::time::Duration::from_secs(1)))
        }
        other => panic!("{other:?}"),
    }
    fake.push_response(ScriptedResponse::json(
        401,
        serde_json::json!({"error": "invalid token"}),
        Vec::new(),
    ));
    let outcomes = sink.deliver(&[withdraw("s", "t@example.de")]).await;
    assert_eq!(outcomes[0].class(), OutcomeClass::Refused, "{outcomes:?}");
}

#[tokio::test]
async fn a_batch_over_the_networks_limit_pauses_the_audience_instead_of_dead_lettering() {
    let (fake, sink) = setup(Contract::default(), "max_members_per_request = 3").await;
    fake.set_max_batch(2);
    let batch: Vec<SinkItem> = (0..3)
        .map(|i| grant(&format!("g{i}"), &format!("g{i}@example.de")))
        .collect();
    let outcomes = sink.deliver(&batch).await;
    for outcome in &outcomes {
        assert!(
            matches!(outcome, Outcome::Refused { reason } if reason.contains("max_members_per_request")),
            "{outcomes:?}"
        );
    }
}
