//! The sink against the fake Brevo and Mailchimp of relay-testkit: outcomes per item and the list
//! state they leave, including the vendor states no retry can change.

use std::time::Duration;

use relay_delivery::{DestinationConfig, Outcome, Sink, SinkItem, Target};
use relay_events::{Action, Contact};
use relay_sink_newsletter::{
    BrevoList, ListConfig, MailchimpList, NewsletterConfig, NewsletterSink,
};
use relay_testkit::items::ItemFixture;
use relay_testkit::newsletter::{subscriber_hash, FakeBrevo, FakeMailchimp, ScriptedResponse};
use serde_json::{json, Value};

const BREVO_KEY: &str = "xkeysib-test";
const BREVO_LIST: i64 = 7;
const MAILCHIMP_KEY: &str = "0123456789abcdef-us6";
const AUDIENCE: &str = "a1b2c3d4e5";

struct Setup {
    brevo: FakeBrevo,
    mailchimp: FakeMailchimp,
    sink: NewsletterSink,
}

fn config(brevo: &FakeBrevo, mailchimp: &FakeMailchimp) -> NewsletterConfig {
    let mut c = NewsletterConfig::default();
    c.lists.insert(
        "main".into(),
        ListConfig::Brevo(BrevoList {
            base_url: brevo.base_url(),
            api_key: Some(BREVO_KEY.into()),
            list_id: BREVO_LIST,
            limits: DestinationConfig::default(),
        }),
    );
    c.lists.insert(
        "product".into(),
        ListConfig::Mailchimp(MailchimpList {
            base_url: Some(mailchimp.base_url()),
            api_key: Some(MAILCHIMP_KEY.into()),
            list_id: AUDIENCE.into(),
            limits: DestinationConfig {
                max_concurrency: 10,
                ..DestinationConfig::default()
            },
        }),
    );
    c.purposes.insert("newsletter".into(), vec!["main".into()]);
    c.purposes
        .insert("product_news".into(), vec!["product".into()]);
    c
}

async fn setup() -> Setup {
    let brevo = FakeBrevo::start(BREVO_KEY, &[BREVO_LIST]).await;
    let mailchimp = FakeMailchimp::start(MAILCHIMP_KEY, &[AUDIENCE]).await;
    let sink = NewsletterSink::new(config(&brevo, &mailchimp)).unwrap();
    Setup {
        brevo,
        mailchimp,
        sink,
    }
}

fn item(email: &str, action: Action, target: Target) -> SinkItem {
    ItemFixture::new(action, target)
        .contact(Contact {
            email: Some(email.to_owned()),
            first_name: Some("Max".into()),
            ..Contact::default()
        })
        .notice("nl-2026-01")
        .build()
}

fn grant(email: &str, purpose: &str) -> SinkItem {
    item(email, Action::Grant, Target::Purpose(purpose.into()))
}

fn withdraw(email: &str, purpose: &str) -> SinkItem {
    item(email, Action::Withdraw, Target::Purpose(purpose.into()))
}

fn unsubscribe_all(email: &str) -> SinkItem {
    item(email, Action::Withdraw, Target::All)
}

fn erase(email: &str) -> SinkItem {
    item(email, Action::Erase, Target::All)
}

fn reason(outcome: &Outcome) -> &str {
    match outcome {
        Outcome::Retryable { reason, .. }
        | Outcome::Permanent { reason }
        | Outcome::Refused { reason } => reason,
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn sink_identity() {
    let s = setup().await;
    assert_eq!(s.sink.name(), "newsletter");
    assert!(s.sink.requires_email());
    assert_eq!(s.sink.destinations().len(), 2);
}

// ---- Brevo ----

#[tokio::test]
async fn brevo_grant_adds_to_the_list_and_lifts_an_older_global_unsubscribe() {
    let s = setup().await;
    // An earlier global unsubscribe left the address blocklisted; this newer grant is the
    // person's confirmed double opt-in.
    s.brevo.insert_contact("max@example.de", true, &[]);
    let outcomes = s
        .sink
        .deliver(&[grant("Max@Example.DE ", "newsletter")])
        .await;
    assert_eq!(outcomes, [Outcome::Applied]);
    let contact = s.brevo.contact("max@example.de").unwrap();
    assert!(!contact.email_blacklisted);
    assert_eq!(
        contact.list_ids.into_iter().collect::<Vec<_>>(),
        [BREVO_LIST]
    );

    let request = s.brevo.requests().pop().unwrap();
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("POST", "/v3/contacts")
    );
    assert_eq!(header(&request.headers, "api-key"), Some(BREVO_KEY));
    assert_eq!(
        serde_json::from_str::<Value>(&request.body).unwrap(),
        json!({"email": "max@example.de", "listIds": [BREVO_LIST], "emailBlacklisted": false,
               "updateEnabled": true})
    );

    // A new address is created on the list.
    assert_eq!(
        s.sink
            .deliver(&[grant("new@example.de", "newsletter")])
            .await,
        [Outcome::Applied]
    );
    assert!(s
        .brevo
        .contact("new@example.de")
        .unwrap()
        .list_ids
        .contains(&BREVO_LIST));
}

#[tokio::test]
async fn brevo_withdrawal_unlinks_and_a_global_unsubscribe_blocklists() {
    let s = setup().await;
    let email = "anna+news@example.de";
    s.sink.deliver(&[grant(email, "newsletter")]).await;
    assert_eq!(
        s.sink.deliver(&[withdraw(email, "newsletter")]).await,
        [Outcome::Applied]
    );
    let contact = s.brevo.contact(email).unwrap();
    assert!(contact.list_ids.is_empty());
    assert!(
        !contact.email_blacklisted,
        "a purpose withdrawal is not a global opt-out"
    );
    let request = s.brevo.requests().pop().unwrap();
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        (
            "PUT",
            "/v3/contacts/anna%2Bnews%40example.de?identifierType=email_id"
        )
    );

    assert_eq!(
        s.sink.deliver(&[unsubscribe_all(email)]).await[0],
        Outcome::Applied
    );
    assert!(s.brevo.is_blocklisted(email));

    // Nobody to take off the list: done already, and no contact is created for it.
    assert_eq!(
        s.sink
            .deliver(&[withdraw("stranger@example.de", "newsletter")])
            .await,
        [Outcome::AlreadyApplied]
    );
    assert!(s.brevo.contact("stranger@example.de").is_none());
}

#[tokio::test]
async fn brevo_erasure_deletes_the_contact() {
    let s = setup().await;
    s.sink.deliver(&[grant("e@example.de", "newsletter")]).await;
    let outcomes = s.sink.deliver(&[erase("e@example.de")]).await;
    assert_eq!(outcomes, [Outcome::Applied]);
    assert!(s.brevo.contact("e@example.de").is_none());
    let deletes: Vec<_> = s
        .brevo
        .requests()
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .map(|r| r.path)
        .collect();
    assert_eq!(
        deletes,
        ["/v3/contacts/e%40example.de?identifierType=email_id"]
    );
}

#[tokio::test]
async fn brevo_never_renames_a_blocklisted_contact() {
    let s = setup().await;
    // The fake models Brevo's documented quirk: renaming a blocklisted contact lifts the block.
    s.brevo.insert_contact("quirk@example.de", true, &[]);
    let renamed = reqwest::Client::new()
        .put(format!(
            "{}/contacts/quirk%40example.de?identifierType=email_id",
            s.brevo.base_url()
        ))
        .header("api-key", BREVO_KEY)
        .json(&json!({"attributes": {"EMAIL": "quirk2@example.de"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(renamed.status(), 204);
    assert!(
        !s.brevo.is_blocklisted("quirk2@example.de"),
        "the quirk is modelled"
    );

    // A person unsubscribes from everything, then their address changes upstream: the later
    // events carry the new address. The old contact must stay blocklisted.
    let old = "old@example.de";
    let new = "new@example.de";
    s.sink.deliver(&[grant(old, "newsletter")]).await;
    assert_eq!(
        s.sink.deliver(&[unsubscribe_all(old)]).await,
        [Outcome::Applied]
    );
    let outcomes = s
        .sink
        .deliver(&[
            withdraw(new, "newsletter"),
            unsubscribe_all(new),
            erase(new),
        ])
        .await;
    assert!(outcomes.iter().all(Outcome::is_done), "{outcomes:?}");
    assert!(s.brevo.is_blocklisted(old));
    assert!(s.brevo.contact(new).is_none());
    for request in s.brevo.requests() {
        assert!(
            !request.body.contains("attributes") || request.path.contains("quirk"),
            "{request:?}"
        );
    }
}

#[tokio::test]
async fn brevo_rate_limit_headers_pause_the_list_before_a_429() {
    let s = setup().await;
    s.brevo.set_rate_limit(1, Duration::from_secs(2));
    for email in ["r1@example.de", "r2@example.de"] {
        assert_eq!(
            s.sink.deliver(&[grant(email, "newsletter")]).await,
            [Outcome::Applied]
        );
    }
    let requests = s.brevo.requests();
    assert_eq!(requests.len(), 2, "no request was refused with a 429");
    let gap = requests[1].at.duration_since(requests[0].at);
    assert!(gap >= Duration::from_millis(1_500), "{gap:?}");
}

#[tokio::test]
async fn brevo_429_is_retryable_after_the_reset() {
    let s = setup().await;
    s.brevo.push_response(ScriptedResponse::json(
        429,
        json!({"code": "too_many_requests", "message": "The expected rate limit is exceeded."}),
        vec![
            ("x-sib-ratelimit-limit".into(), "10".into()),
            ("x-sib-ratelimit-remaining".into(), "0".into()),
            ("x-sib-ratelimit-reset".into(), "3".into()),
        ],
    ));
    let outcomes = s.sink.deliver(&[grant("s@example.de", "newsletter")]).await;
    match &outcomes[0] {
        Outcome::Unavailable { after, reason } => {
            assert_eq!(*after, Some(Duration::from_secs(3)));
            assert!(reason.contains("too_many_requests"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_wrong_key_is_refused() {
    let brevo = FakeBrevo::start("another-key", &[BREVO_LIST]).await;
    let mailchimp = FakeMailchimp::start("another-key-us6", &[AUDIENCE]).await;
    let sink = NewsletterSink::new(config(&brevo, &mailchimp)).unwrap();
    let outcomes = sink
        .deliver(&[
            grant("k1@example.de", "newsletter"),
            grant("k2@example.de", "product_news"),
        ])
        .await;
    for outcome in &outcomes {
        assert!(matches!(outcome, Outcome::Refused { .. }), "{outcomes:?}");
        assert!(reason(outcome).starts_with("HTTP 401"), "{outcomes:?}");
    }
}

#[tokio::test]
async fn a_failed_change_holds_back_later_changes_of_the_same_address() {
    let s = setup().await;
    s.brevo.push_response(ScriptedResponse::server_error());
    let outcomes = s
        .sink
        .deliver(&[
            unsubscribe_all("h@example.de"),
            grant("h@example.de", "product_news"),
        ])
        .await;
    assert!(reason(&outcomes[0]).starts_with("HTTP 500"), "{outcomes:?}");
    assert!(
        reason(&outcomes[1]).starts_with("held back"),
        "{outcomes:?}"
    );
    assert!(s.mailchimp.requests().is_empty());
}

// ---- Mailchimp ----

#[tokio::test]
async fn mailchimp_upserts_by_subscriber_hash() {
    let s = setup().await;
    let email = "Anna@Example.DE";
    assert_eq!(
        s.sink.deliver(&[grant(email, "product_news")]).await,
        [Outcome::Applied]
    );
    assert_eq!(
        s.mailchimp.member_status(AUDIENCE, email).as_deref(),
        Some("subscribed")
    );
    let request = s.mailchimp.requests().pop().unwrap();
    assert_eq!(request.method, "PUT");
    assert_eq!(
        request.path,
        format!(
            "/3.0/lists/{AUDIENCE}/members/{}",
            subscriber_hash("anna@example.de")
        )
    );
    assert!(header(&request.headers, "authorization").is_some_and(|a| a.starts_with("Basic ")));
    assert_eq!(
        serde_json::from_str::<Value>(&request.body).unwrap(),
        json!({"email_address": "anna@example.de", "status_if_new": "subscribed"})
    );

    assert_eq!(
        s.sink.deliver(&[withdraw(email, "product_news")]).await,
        [Outcome::Applied]
    );
    assert_eq!(
        s.mailchimp.member_status(AUDIENCE, email).as_deref(),
        Some("unsubscribed")
    );
    // An unknown address becomes an unsubscribed member, so that no later import subscribes it.
    assert_eq!(
        s.sink.deliver(&[unsubscribe_all("never@example.de")]).await,
        [Outcome::Applied]
    );
    assert_eq!(
        s.mailchimp
            .member_status(AUDIENCE, "never@example.de")
            .as_deref(),
        Some("unsubscribed")
    );
}

#[tokio::test]
async fn a_grant_for_a_member_who_unsubscribed_at_mailchimp_asks_the_person_to_confirm() {
    let s = setup().await;
    let email = "clicked.unsubscribe@example.de";
    // The person used the unsubscribe link in a Mailchimp newsletter; Mailchimp refuses to set
    // them subscribed again, but sends its opt-in email for `pending`.
    s.mailchimp
        .set_member_status(AUDIENCE, email, "unsubscribed");
    let outcomes = s.sink.deliver(&[grant(email, "product_news")]).await;
    assert_eq!(outcomes, [Outcome::AwaitingConfirmation]);
    assert_eq!(
        s.mailchimp.member_status(AUDIENCE, email).as_deref(),
        Some("pending")
    );
    assert_eq!(s.mailchimp.confirmations_sent(email), 1);
    // A withdrawal while the confirmation is pending unsubscribes at once.
    assert_eq!(
        s.sink.deliver(&[withdraw(email, "product_news")]).await,
        [Outcome::Applied]
    );
    assert_eq!(
        s.mailchimp.member_status(AUDIENCE, email).as_deref(),
        Some("unsubscribed")
    );
}

#[tokio::test]
async fn a_repeated_grant_never_subscribes_a_member_awaiting_its_confirmation() {
    let s = setup().await;
    let email = "pending@example.de";
    s.mailchimp.set_member_status(AUDIENCE, email, "pending");
    // A retry after a timeout, or a re-assertion: Mailchimp's confirmation is not bypassed.
    assert_eq!(
        s.sink.deliver(&[grant(email, "product_news")]).await,
        [Outcome::AwaitingConfirmation]
    );
    assert_eq!(
        s.mailchimp.member_status(AUDIENCE, email).as_deref(),
        Some("pending")
    );
    assert_eq!(
        s.mailchimp.confirmations_sent(email),
        0,
        "no second opt-in email"
    );
    // A member archived or transactional is set subscribed.
    s.mailchimp
        .set_member_status(AUDIENCE, email, "transactional");
    assert_eq!(
        s.sink.deliver(&[grant(email, "product_news")]).await,
        [Outcome::Applied]
    );
    assert_eq!(
        s.mailchimp.member_status(AUDIENCE, email).as_deref(),
        Some("subscribed")
    );
}

#[tokio::test]
async fn a_bounced_member_is_asked_to_confirm_only_where_mailchimp_allows_it() {
    let s = setup().await;
    let email = "bounced@example.de";
    s.mailchimp.set_member_status(AUDIENCE, email, "cleaned");
    // Mailchimp does not document `pending` for a cleaned member: refused, it is permanent and
    // says what the person must do.
    let outcomes = s.sink.deliver(&[grant(email, "product_news")]).await;
    assert!(
        matches!(outcomes[0], Outcome::Permanent { .. }),
        "{outcomes:?}"
    );
    let reason = reason(&outcomes[0]);
    assert!(reason.contains("compliance state"), "{reason}");
    assert!(reason.contains("signup form"), "{reason}");
    assert!(!reason.contains("bounced@"), "{reason}");
    assert_eq!(
        s.mailchimp.member_status(AUDIENCE, email).as_deref(),
        Some("cleaned")
    );
    // Accepted, it is awaiting confirmation like an unsubscribed member.
    s.mailchimp.set_cleaned_accepts_pending(true);
    assert_eq!(
        s.sink.deliver(&[grant(email, "product_news")]).await,
        [Outcome::AwaitingConfirmation]
    );
    assert_eq!(s.mailchimp.confirmations_sent(email), 1);
}

#[tokio::test]
async fn mailchimp_erasure_is_permanent_and_final() {
    let s = setup().await;
    let email = "gone@example.de";
    s.sink.deliver(&[grant(email, "product_news")]).await;
    assert_eq!(s.sink.deliver(&[erase(email)]).await, [Outcome::Applied]);
    assert!(s.mailchimp.is_forgotten(AUDIENCE, email));
    assert_eq!(s.mailchimp.member_status(AUDIENCE, email), None);

    // Mailchimp never takes the address back by API.
    let outcomes = s.sink.deliver(&[grant(email, "product_news")]).await;
    assert!(
        matches!(outcomes[0], Outcome::Permanent { .. }),
        "{outcomes:?}"
    );
    assert!(
        reason(&outcomes[0]).contains("permanently deleted"),
        "{outcomes:?}"
    );
    // ... which is what a withdrawal wants anyway.
    assert_eq!(
        s.sink.deliver(&[withdraw(email, "product_news")]).await,
        [Outcome::AlreadyApplied]
    );
    // A repeated erasure finds no member in an audience that exists.
    let outcomes = s.sink.deliver(&[erase(email)]).await;
    assert_eq!(outcomes, [Outcome::AlreadyApplied]);
    let last = s.mailchimp.requests().pop().unwrap();
    assert_eq!(
        (last.method.as_str(), last.path.as_str()),
        ("GET", "/3.0/lists/a1b2c3d4e5")
    );
}

#[tokio::test]
async fn mailchimp_unknown_audience_is_refused_not_taken_for_an_erased_member() {
    let brevo = FakeBrevo::start(BREVO_KEY, &[BREVO_LIST]).await;
    let mailchimp = FakeMailchimp::start(MAILCHIMP_KEY, &["other"]).await;
    let sink = NewsletterSink::new(config(&brevo, &mailchimp)).unwrap();
    let outcomes = sink.deliver(&[erase("x@example.de")]).await;
    assert!(
        matches!(outcomes[0], Outcome::Refused { .. }),
        "{outcomes:?}"
    );
    assert!(reason(&outcomes[0]).contains("no audience"), "{outcomes:?}");
    // Brevo got its delete (404: nothing to erase there).
    assert_eq!(brevo.requests().len(), 1);
}

#[tokio::test]
async fn mailchimp_connections_stay_within_the_limit_and_run_side_by_side() {
    let s = setup().await;
    s.mailchimp.set_max_connections(3);
    s.mailchimp.set_response_delay(Duration::from_millis(100));
    let sink = NewsletterSink::new({
        let mut c = config(&s.brevo, &s.mailchimp);
        if let Some(ListConfig::Mailchimp(m)) = c.lists.get_mut("product") {
            m.limits.max_concurrency = 3;
        }
        c
    })
    .unwrap();
    let items: Vec<_> = (0..12)
        .map(|i| grant(&format!("p{i}@example.de"), "product_news"))
        .collect();
    let outcomes = sink.deliver(&items).await;
    assert_eq!(outcomes, vec![Outcome::Applied; 12]);
    assert_eq!(s.mailchimp.max_in_flight(), 3);
}

#[tokio::test]
async fn state_dumps_are_served() {
    let s = setup().await;
    s.sink
        .deliver(&[
            grant("d@example.de", "newsletter"),
            grant("d@example.de", "product_news"),
        ])
        .await;
    let brevo: Value = reqwest::get(format!(
        "{}/__fake/state",
        s.brevo.base_url().trim_end_matches("/v3")
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(brevo, s.brevo.state());
    assert_eq!(
        brevo["contacts"]["d@example.de"]["list_ids"],
        json!([BREVO_LIST])
    );
    let mailchimp: Value = reqwest::get(format!(
        "{}/__fake/state",
        s.mailchimp.base_url().trim_end_matches("/3.0")
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(mailchimp, s.mailchimp.state());
    assert_eq!(
        mailchimp["lists"][AUDIENCE]["members"][subscriber_hash("d@example.de")]["status"],
        "subscribed"
    );
}
