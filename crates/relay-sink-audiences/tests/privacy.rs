//! No raw identifier reaches a platform, a log line or an outcome reason. Its own test binary:
//! it installs the global `tracing` subscriber, which would race with other tests' threads.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use relay_delivery::{Outcome, SinkItem, Target};
use relay_events::{normalize, Action};
use relay_testkit::audiences::{self, ScriptedResponse};
use serde_json::json;

/// `value` as `application/x-www-form-urlencoded` spells it.
fn form_encoded(value: &str) -> String {
    let url = reqwest::Url::parse_with_params("http://x/", [("v", value)]).unwrap();
    url.query().unwrap()["v=".len()..].to_owned()
}

/// A `tracing` writer that keeps everything in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_raw_identifier_reaches_a_platform_a_log_line_or_a_reason() {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .finish(),
    )
    .expect("the only subscriber of this test binary");

    let fakes = Fakes::start().await;
    let sink = fakes.sink("");
    let people: Vec<(String, String)> = (0..20)
        .map(|i| {
            (
                format!(" Person.{i}+News@GMail.com "),
                format!("+49 (0)30 5550{i:03}"),
            )
        })
        .collect();
    let mut rounds: Vec<Vec<SinkItem>> = Vec::new();
    rounds.push(
        people
            .iter()
            .enumerate()
            .map(|(i, (e, p))| item(&format!("s{i}"), e, Some(p), Action::Grant, ads()))
            .collect(),
    );
    rounds.push(
        people
            .iter()
            .enumerate()
            .map(|(i, (e, p))| {
                let (action, target) = match i % 3 {
                    0 => (Action::Withdraw, ads()),
                    1 => (Action::Withdraw, Target::All),
                    _ => (Action::Erase, Target::All),
                };
                item(&format!("s{i}"), e, Some(p), action, target)
            })
            .collect(),
    );
    // Failures too: their reasons reach the ledger and the DLQ.
    fakes.linkedin.push_response(ScriptedResponse::json(
        400,
        json!({"status": 400, "code": "ILLEGAL_ARGUMENT", "message": "bad"}),
        Vec::new(),
    ));
    fakes.meta.push_response(ScriptedResponse::json(
        400,
        audiences::meta::graph_error(100, None, "(#100) Invalid parameter", false),
        Vec::new(),
    ));
    let mut reasons = Vec::new();
    for round in &rounds {
        for outcome in deliver(&sink, round).await {
            match outcome {
                Outcome::Retryable { reason, .. }
                | Outcome::Unavailable { reason, .. }
                | Outcome::Unknown { reason }
                | Outcome::Permanent { reason }
                | Outcome::Refused { reason } => reasons.push(reason),
                Outcome::Applied | Outcome::AlreadyApplied | Outcome::AwaitingConfirmation => {}
            }
        }
    }
    assert!(!reasons.is_empty(), "the scripted failures must show up");

    let mut forbidden = Vec::new();
    for (email, phone) in &people {
        let trimmed = email.trim();
        let lower = trimmed.to_lowercase();
        let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
        let e164 = normalize::google_phone(phone).unwrap();
        for value in [
            trimmed.to_owned(),
            lower.clone(),
            normalize::google_email(email, true).unwrap(),
            lower.split('@').next().unwrap().to_owned(),
            phone.clone(),
            normalize::meta_phone(phone).unwrap(),
            e164,
            digits,
        ] {
            // As it would appear in a form body or a query string, too.
            forbidden.push(form_encoded(&value));
            forbidden.push(value);
        }
    }

    let requests = fakes.requests();
    assert!(requests.len() >= 8, "{}", requests.len());
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("platform answered"), "logs were captured");
    for value in &forbidden {
        for (platform, r) in &requests {
            let headers = r
                .headers
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join("\n");
            for (part, text) in [("path", &r.path), ("headers", &headers), ("body", &r.body)] {
                assert!(
                    !text.contains(value.as_str()),
                    "a raw identifier in the {part} of a {platform} request"
                );
            }
        }
        assert!(
            !logs.contains(value.as_str()),
            "a raw identifier in the logs"
        );
        for reason in &reasons {
            assert!(
                !reason.contains(value.as_str()),
                "a raw identifier in {reason:?}"
            );
        }
    }
    fakes.assert_no_rejections();
}
