//! `ingest --poll` against the fake Mailchimp, with a real (SQLite) ledger and a recording
//! publisher: what a poll finds, publishes, records and remembers, and what it does when
//! Mailchimp or the broker fails.

mod common;

use std::sync::Arc;

use common::{record, Recorder};
use relay_events::{normalize, ConsentEvent, EventKind, Scope};
use relay_ingest::poll::PollError;
use relay_ingest::{metrics, Ingest, IngestConfig, Metrics, Vendor};
use relay_ledger::Ledger;
use relay_testkit::newsletter::FakeMailchimp;
use relay_testkit::webhooks::now_ms;

const KEY: &str = "0123456789abcdef-us21";
const LIST: &str = "a6b5da1054";
const OTHER_LIST: &str = "b7c6eb2165";

struct Poller {
    ingest: Ingest,
    recorder: Arc<Recorder>,
    ledger: Arc<relay_ledger::AnyLedger>,
    metrics: Metrics,
    mailchimp: FakeMailchimp,
    _dir: tempfile::TempDir,
}

async fn start(api_key: &str) -> Poller {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(
        relay_ledger::open(&format!("sqlite://{}", dir.path().join("l.db").display()))
            .await
            .unwrap(),
    );
    ledger
        .log_events(&[record("anna", "anna@example.de")])
        .await
        .unwrap();
    let mailchimp = FakeMailchimp::start(KEY, &[LIST, OTHER_LIST]).await;
    // Polled only: no webhook secret, so no webhook route.
    let mut config: IngestConfig = toml::from_str(&format!(
        r#"
listen = "127.0.0.1:0"
public_url = "http://127.0.0.1:1"
[mailchimp.lists]
{LIST} = ["newsletter", "ads_remarketing"]
{OTHER_LIST} = ["newsletter"]
[mailchimp.poll]
api_base_url = "{}"
interval_ms = 60000
"#,
        mailchimp.base_url()
    ))
    .unwrap();
    config.apply_env(&[(
        "CONSENT_RELAY_INGEST_MAILCHIMP_API_KEY".to_owned(),
        api_key.to_owned(),
    )]);
    let known = ["newsletter", "ads_remarketing"].map(String::from).into();
    assert_eq!(config.problems(&known), Vec::<String>::new());
    let recorder = Arc::new(Recorder::default());
    let metrics = Metrics::default();
    let ingest = Ingest::new(config, ledger.clone(), recorder.clone(), metrics.clone());
    Poller {
        ingest,
        recorder,
        ledger,
        metrics,
        mailchimp,
        _dir: dir,
    }
}

impl Poller {
    fn published(&self) -> Vec<ConsentEvent> {
        self.recorder.events.lock().unwrap().clone()
    }
}

/// Whole seconds: Mailchimp's activity times have no more.
fn seconds_ago(s: i64) -> i64 {
    (now_ms() - s * 1000) / 1000 * 1000
}

#[tokio::test]
async fn a_poll_publishes_each_unsubscribe_at_its_own_time_and_remembers_how_far_it_read() {
    let p = start(KEY).await;
    let unsubscribed_at = seconds_ago(3_600);
    p.mailchimp
        .set_member_status_at(LIST, "anna@example.de", "subscribed", seconds_ago(7_200));
    p.mailchimp
        .set_member_status_at(LIST, "Anna@Example.de", "unsubscribed", unsubscribed_at);
    p.mailchimp
        .set_member_status_at(LIST, "bob@example.de", "unsubscribed", seconds_ago(1_800));
    p.mailchimp
        .set_member_status_at(LIST, "carl@example.de", "subscribed", seconds_ago(60));

    let reports = p.ingest.poll_once().await;
    assert_eq!(reports.len(), 2, "one per list");
    let first = reports[0].as_ref().expect("the first list polls");
    assert_eq!(first.source, format!("mailchimp:{LIST}"));
    assert_eq!(first.since_ms, 0, "the first poll reads everything");
    assert_eq!(
        (first.unsubscribed, first.published, first.unknown),
        (2, 1, 1)
    );
    assert!(reports[1].as_ref().is_ok_and(|r| r.unsubscribed == 0));
    let published = p.published();
    assert_eq!(published.len(), 1, "{published:?}");
    let anna = &published[0];
    assert_eq!(
        (anna.subject_id.as_str(), anna.kind, anna.occurred_at_ms),
        ("anna", EventKind::Unsubscribed, unsubscribed_at),
        "her decision at the time she made it, not the poll's"
    );
    assert_eq!(anna.source, "mailchimp");
    assert_eq!(
        anna.scope,
        Scope::Purposes(vec!["newsletter".into(), "ads_remarketing".into()])
    );
    let unknown = p.ledger.unknown_contacts().await.unwrap();
    assert_eq!(unknown.len(), 1);
    assert_eq!(
        unknown[0].email_sha256.as_deref(),
        Some(normalize::email_sha256("bob@example.de").as_str())
    );
    let cursor = p
        .ledger
        .poll_cursor(&format!("mailchimp:{LIST}"))
        .await
        .unwrap()
        .expect("the cursor is stored");
    assert_eq!(cursor, first.cursor_ms);

    // The next poll reads from the cursor (with an overlap): the old unsubscribes are behind it.
    let reports = p.ingest.poll_once().await;
    let second = reports[0].as_ref().unwrap();
    assert_eq!(second.since_ms, cursor - 10 * 60 * 1000, "the overlap");
    assert_eq!(second.unsubscribed, 0);
    assert_eq!(p.published().len(), 1);

    // She re-subscribes and unsubscribes again: a new decision, found by the next poll. Read
    // again within the overlap, it is the same event (a duplicate the consumers recognise).
    p.mailchimp
        .set_member_status_at(LIST, "anna@example.de", "subscribed", seconds_ago(120));
    let again = seconds_ago(60);
    p.mailchimp
        .set_member_status_at(LIST, "anna@example.de", "unsubscribed", again);
    p.ingest.poll_once().await[0].as_ref().unwrap();
    let reread = p.ingest.poll_once().await;
    let reread = reread[0].as_ref().unwrap();
    assert_eq!(
        (reread.unsubscribed, reread.already_logged, reread.published),
        (1, 0, 1),
        "the recorder is no consumer: the ledger has not logged it, so it goes out again"
    );
    let published = p.published();
    assert_eq!(published.len(), 3, "{published:?}");
    assert_eq!(published[1].occurred_at_ms, again);
    assert_eq!(
        published[1].event_id, published[2].event_id,
        "read again, the same event"
    );
    assert_ne!(published[0].event_id, published[1].event_id);
    assert_eq!(p.metrics.get(metrics::POLLS, Vendor::Mailchimp), 8);
    assert_eq!(
        p.metrics.get(metrics::UNKNOWN, Vendor::Mailchimp),
        1,
        "bob, read four times, recorded once"
    );
}

/// An unsubscribe the member activity does not show is dated by `last_changed`, never by an
/// older unsubscribe that a re-subscription took back: dated then, it would lose to the grant
/// that came between.
#[tokio::test]
async fn an_unsubscribe_without_its_activity_is_dated_by_last_changed() {
    let p = start(KEY).await;
    let (first_unsub, regranted, silent) =
        (seconds_ago(7_200), seconds_ago(3_600), seconds_ago(60));
    p.mailchimp
        .set_member_status_at(LIST, "anna@example.de", "unsubscribed", first_unsub);
    p.mailchimp
        .set_member_status_at(LIST, "anna@example.de", "subscribed", regranted);
    p.mailchimp.set_member_status_without_activity_at(
        LIST,
        "anna@example.de",
        "unsubscribed",
        silent,
    );
    p.ingest.poll_once().await[0].as_ref().unwrap();
    let published = p.published();
    assert_eq!(published.len(), 1, "{published:?}");
    assert_eq!(published[0].occurred_at_ms, silent);
}

#[tokio::test]
async fn a_failed_poll_keeps_its_cursor_and_says_what_failed() {
    let p = start(KEY).await;
    p.mailchimp
        .set_member_status_at(LIST, "anna@example.de", "unsubscribed", seconds_ago(60));

    // The broker does not acknowledge: nothing is taken as done.
    *p.recorder.broken.lock().unwrap() = true;
    let reports = p.ingest.poll_once().await;
    let error = reports[0].as_ref().expect_err("publishing failed");
    assert!(matches!(error, PollError::Undecided { .. }), "{error}");
    assert!(
        error.to_string().contains(&format!("mailchimp:{LIST}")),
        "names the list: {error}"
    );
    let source = format!("mailchimp:{LIST}");
    assert_eq!(p.ledger.poll_cursor(&source).await.unwrap(), None);
    *p.recorder.broken.lock().unwrap() = false;
    let reports = p.ingest.poll_once().await;
    assert_eq!(reports[0].as_ref().unwrap().published, 1, "read again");

    // A wrong key: Mailchimp's 401, with the URL it came from and no cursor movement.
    let wrong = start("wrong-us21").await;
    let reports = wrong.ingest.poll_once().await;
    let text = reports[0].as_ref().expect_err("refused").to_string();
    assert!(
        text.contains("401")
            && text.contains("API Key Invalid")
            && text.contains(&format!("/lists/{LIST}/members?status=unsubscribed&unsubscribed_since=1970-01-01T00%3A00%3A00%2B00%3A00")),
        "{text}"
    );
    assert!(!text.contains("wrong"), "no key in the message: {text}");
    assert_eq!(wrong.ledger.poll_cursor(&source).await.unwrap(), None);
    let rendered = wrong.metrics.render();
    assert!(
        rendered
            .contains(r#"consent_relay_ingest_polls_total{vendor="mailchimp",reason="failed"} 2"#),
        "{rendered}"
    );
}

/// An address no event may carry is skipped and counted; the list's other members go out.
#[tokio::test]
async fn one_unusable_address_does_not_hold_back_the_list() {
    let p = start(KEY).await;
    p.mailchimp
        .set_member_status_at(LIST, "not an address", "unsubscribed", seconds_ago(120));
    p.mailchimp
        .set_member_status_at(LIST, "anna@example.de", "unsubscribed", seconds_ago(60));
    let reports = p.ingest.poll_once().await;
    let report = reports[0].as_ref().expect("the list polls");
    assert_eq!(
        (report.unsubscribed, report.skipped, report.published),
        (2, 1, 1)
    );
    assert!(p.metrics.render().contains(
        r#"consent_relay_ingest_ignored_total{vendor="mailchimp",reason="invalid_address"} 1"#
    ));
}

#[test]
fn the_api_key_travels_over_https_only() {
    let config = |url: &str| -> IngestConfig {
        let mut c: IngestConfig = toml::from_str(&format!(
            "listen = \"127.0.0.1:0\"\npublic_url = \"https://x.de\"\n[mailchimp.lists]\n{LIST} = [\"newsletter\"]\n[mailchimp.poll]\napi_base_url = \"{url}\"\n"
        ))
        .unwrap();
        c.apply_env(&[(
            "CONSENT_RELAY_INGEST_MAILCHIMP_API_KEY".to_owned(),
            KEY.to_owned(),
        )]);
        c
    };
    let known = ["newsletter".to_owned()].into();
    let problems = config("http://us21.api.mailchimp.com/3.0").problems(&known);
    assert!(
        problems.len() == 1 && problems[0].starts_with("ingest.mailchimp.poll.api_base_url"),
        "{problems:?}"
    );
    assert!(config("https://us21.api.mailchimp.com/3.0")
        .problems(&known)
        .is_empty());
}
