//! `consent-relay ingest` as a process: secrets from the environment, a Mailchimp webhook for a
//! person the ledger knows ends up on the topic, the admin port counts it, SIGTERM stops it; once
//! `run` has consumed it, `ledger audit` names Mailchimp as the source.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use relay_testkit::broker;
use relay_testkit::hubspot::FakeHubSpot;
use relay_testkit::webhooks;

const BIN: &str = env!("CARGO_BIN_EXE_consent-relay");
const PATH_SECRET: &str = "f3a1c0e2b4d6a8c0e2f4a6b8d0c2e4f6";
const TOKEN: &str = "pat-ingest-binary";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingest_command_publishes_a_verified_webhook_and_counts_it() {
    let topic = broker::unique_name("ingest-bin");
    broker::create_topic(&topic, 2).await;
    broker::create_topic(&format!("{topic}.dlq"), 1).await;
    let hubspot = FakeHubSpot::start(TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let (web, admin) = (free_port(), free_port());
    let config = dir.path().join("consent-relay.toml");
    let ledger_url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    std::fs::write(
        &config,
        format!(
            r#"
[kafka]
bootstrap_servers = "{}"
topics = ["{topic}"]
dlq_topic = "{topic}.dlq"
retry_topic_prefix = "{topic}.retry"
group_prefix = "{group}"
session_timeout_ms = 6000
[ledger]
url = "{ledger_url}"
[admin]
listen = "127.0.0.1:{admin}"
[purposes.newsletter]
description = "Newsletter"
[ingest]
listen = "127.0.0.1:{web}"
public_url = "http://127.0.0.1:{web}"
[ingest.mailchimp]
[ingest.mailchimp.lists]
a6b5da1054 = ["newsletter"]
# As in production: the file enables no sink, the `run` process enables its own.
[sinks.hubspot]
enabled = false
base_url = "{base}"
[sinks.hubspot.batch]
linger_ms = 50
[sinks.hubspot.purposes.newsletter]
subscription_ids = [12345]
legal_basis = "CONSENT_WITH_NOTICE"
legal_basis_explanation = "Newsletter sign-up"
"#,
            broker::bootstrap(),
            group = broker::unique_name("ingest-bin"),
            base = hubspot.base_url(),
        ),
    )
    .unwrap();

    // Without its secret the command refuses to start, naming the variable.
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("ingest")
        .env_remove("CONSENT_RELAY_INGEST_MAILCHIMP_PATH_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("CONSENT_RELAY_INGEST_MAILCHIMP_PATH_SECRET")
    );
    // Nor does it poll when nothing is configured to be polled.
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(["ingest", "--poll"])
        .env("CONSENT_RELAY_INGEST_MAILCHIMP_PATH_SECRET", PATH_SECRET)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("configure [ingest.mailchimp.poll]"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The person is known: an earlier event of theirs is in the consent log.
    let ledger = relay_ledger::open(&ledger_url).await.unwrap();
    relay_ledger::Ledger::log_events(
        &ledger,
        &[relay_ledger::ConsentRecord {
            event_id: uuid::Uuid::new_v4(),
            subject_id: "ines".into(),
            kind: "ConsentGranted".into(),
            purposes: vec!["newsletter".into()],
            occurred_at_ms: 1_000,
            source: "web-form".into(),
            notice_version: Some("n1".into()),
            email_sha256: Some(relay_events::normalize::email_sha256("ines@example.de")),
            topic: topic.clone(),
            partition: 0,
            offset: 0,
            payload_digest: None,
            late: false,
            google_email_sha256: None,
            google_email_plus_sha256: None,
        }],
    )
    .await
    .unwrap();
    ledger.close().await;

    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(["--log-format", "json", "ingest"])
        .env("CONSENT_RELAY_INGEST_MAILCHIMP_PATH_SECRET", PATH_SECRET)
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let hook = format!("http://127.0.0.1:{web}/webhooks/mailchimp/{PATH_SECRET}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while reqwest::get(&hook).await.map(|r| r.status().as_u16()).ok() != Some(200) {
        assert!(
            std::time::Instant::now() < deadline,
            "ingest did not come up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let form =
        webhooks::mailchimp_unsubscribe("a6b5da1054", "ines@example.de", "2026-11-30 09:15:00");
    let (status, body) = webhooks::send_mailchimp(&hook, &form).await;
    assert_eq!(status.as_u16(), 200, "{body}");

    // Someone the ledger has never seen: recorded, nothing published.
    let stranger =
        webhooks::mailchimp_unsubscribe("a6b5da1054", "nobody@example.de", "2026-11-30 09:16:00");
    let (status, body) = webhooks::send_mailchimp(&hook, &stranger).await;
    assert_eq!(status.as_u16(), 200, "{body}");

    let messages = broker::read_all(&topic, 2, Duration::from_secs(5)).await;
    assert_eq!(messages.len(), 1);
    let ev = relay_events::decode(&messages[0].payload).unwrap();
    assert_eq!(
        (
            ev.kind,
            ev.subject_id.as_str(),
            ev.source.as_str(),
            ev.occurred_at_ms
        ),
        (
            relay_events::EventKind::Unsubscribed,
            "ines",
            "mailchimp",
            1_796_030_100_000
        )
    );
    assert_eq!(
        messages[0].key.as_deref(),
        Some("ines".as_bytes()),
        "keyed by subject"
    );

    let metrics = reqwest::get(format!("http://127.0.0.1:{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("consent_relay_ingest_published_total{vendor=\"mailchimp\"} 1"),
        "{metrics}"
    );

    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(status.success(), "exit after SIGTERM: {status:?}\n{logs}");
    assert!(
        !logs.contains("ines@example.de"),
        "no raw email in the logs:\n{logs}"
    );
    assert!(!logs.contains(PATH_SECRET), "no secret in the logs");

    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(["ledger", "unknown-contacts"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    let hash = relay_events::normalize::email_sha256("nobody@example.de");
    assert_eq!(table.lines().count(), 2, "a header and one row:\n{table}");
    assert!(
        table.contains(&hash) && table.contains("mailchimp") && table.contains("list a6b5da1054"),
        "{table}"
    );
    assert!(!table.contains("nobody@example.de"), "hash only:\n{table}");

    // The relay consumes the event like any other; the audit names the vendor.
    let run = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(["run", "--exit-when-idle", "3"])
        .env("CONSENT_RELAY__SINKS__HUBSPOT__ENABLED", "true")
        .env("CONSENT_RELAY_HUBSPOT_TOKEN", TOKEN)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        hubspot
            .subscription_status("ines@example.de", 12345)
            .as_deref(),
        Some("UNSUBSCRIBED")
    );
    let audit = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(["ledger", "audit", "ines"])
        .output()
        .unwrap();
    let audit = String::from_utf8_lossy(&audit.stdout);
    let line = audit
        .lines()
        .find(|l| l.contains("Unsubscribed"))
        .unwrap_or_else(|| panic!("the unsubscribe in the audit:\n{audit}"));
    assert!(line.contains("via mailchimp"), "{audit}");
}
