//! `ingest --poll` against the fake Mailchimp, with a real (SQLite) ledger and a recording
//! publisher: what a poll finds, publishes, records and remembers, and what it does when
//! Mailchimp or the broker fails.

use std::sync::{Arc, Mutex};

use relay_events::{normalize, ConsentEvent, EventKind, Scope};
use relay_ingest::poll::PollError;
use relay_ingest::{metrics, BoxFuture, Ingest, IngestConfig, Metrics, Publish, Vendor};
use relay_ledger::{ConsentRecord, Ledger};
use relay_testkit::newsletter::FakeMailchimp;
use relay_testkit::webhooks::now_ms;

const KEY: &str = "0123456789abcdef-us21";
const LIST: &str = "a6b5da1054";
const OTHER_LIST: &str = "b7c6eb2165";

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<ConsentEvent>>,
    broken: Mutex<bool>,
}

impl Publish for Recorder {
    fn publish<'a>(&'a self, events: &'a [ConsentEvent]) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            if *self.broken.lock().unwrap() {
                return Err("broker down".into());
            }
            self.events.lock().unwrap().extend_from_slice(events);
            Ok(())
        })
    }
}

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
        .log_events(&[ConsentRecord {
            event_id: uuid::Uuid::new_v4(),
            subject_id: "anna".into(),
            kind: "ConsentGranted".into(),
            purposes: vec!["newsletter".into()],
            occurred_at_ms: 1_000,
            source: "web-form".into(),
            notice_version: Some("n1".into()),
            email_sha256: Some(normalize::email_sha256("anna@example.de")),
            topic: "consent.events".into(),
            partition: 0,
            offset: 0,
            payload_digest: None,
            late: false,
            google_email_sha256: None,
            google_email_plus_sha256: None,
        }])
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
    assert!(second.since_ms > unsubscribed_at && second.since_ms < cursor);
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
    p.ingest.poll_once().await[0].as_ref().unwrap();
    let published = p.published();
    assert_eq!(published.len(), 3, "{published:?}");
    assert_eq!(published[1].occurred_at_ms, again);
    assert_eq!(published[1].event_id, published[2].event_id);
    assert_ne!(published[0].event_id, published[1].event_id);
    assert_eq!(p.metrics.get(metrics::POLLS, Vendor::Mailchimp), 8);
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
    assert!(matches!(error, PollError::Undecided(_)), "{error}");
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
