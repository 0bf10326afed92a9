//! What the in-process tests of `ingest` share: a publisher that records instead of sending
//! (and can be made to fail or stall), and the consent-log row that makes a person known.

use std::sync::Mutex;

use relay_events::{normalize, ConsentEvent};
use relay_ingest::{BoxFuture, Publish};
use relay_ledger::ConsentRecord;

#[derive(Default)]
pub struct Recorder {
    pub events: Mutex<Vec<ConsentEvent>>,
    /// The broker does not acknowledge.
    pub broken: Mutex<bool>,
    /// The broker takes 30 s to acknowledge.
    pub slow: Mutex<bool>,
}

impl Publish for Recorder {
    fn publish<'a>(&'a self, events: &'a [ConsentEvent]) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            if *self.broken.lock().unwrap() {
                return Err("broker down".into());
            }
            let slow = *self.slow.lock().unwrap();
            if slow {
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            }
            self.events.lock().unwrap().extend_from_slice(events);
            Ok(())
        })
    }
}

/// An upstream grant of the newsletter, as a consumer logs it.
pub fn record(subject: &str, email: &str) -> ConsentRecord {
    ConsentRecord {
        event_id: uuid::Uuid::new_v4(),
        subject_id: subject.into(),
        kind: "ConsentGranted".into(),
        purposes: vec!["newsletter".into()],
        occurred_at_ms: 1_000,
        source: "web-form".into(),
        notice_version: Some("n1".into()),
        email_sha256: Some(normalize::email_sha256(email)),
        topic: "consent.events".into(),
        partition: 0,
        offset: 0,
        payload_digest: None,
        late: false,
        google_email_sha256: None,
        google_email_plus_sha256: None,
    }
}
