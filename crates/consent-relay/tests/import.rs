//! `consent-relay import` as operators run it: a 100 000-row CSV with 7 bad rows against the real
//! broker, then a rerun; and a rerun after the relay has consumed an import.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use relay_testkit::broker;
use relay_testkit::hubspot::FakeHubSpot;

const BIN: &str = env!("CARGO_BIN_EXE_consent-relay");
const TOKEN: &str = "pat-import-test";
const ROWS: usize = 100_000;
/// Row numbers (1 = the first after the header) and what is wrong with each.
const BAD: [(usize, &str); 7] = [
    (17, "unknown purpose"),
    (1_000, "no email"),
    (25_000, "no notice version on a grant"),
    (50_001, "a decision that is none"),
    (77_777, "a date that is none"),
    (99_000, "a subject id with a space"),
    (100_000, "decided in the future"),
];

fn config(dir: &Path, topic: &str, hubspot: &FakeHubSpot) -> PathBuf {
    let path = dir.join("consent-relay.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[kafka]
bootstrap_servers = "{}"
topics = ["{topic}"]
dlq_topic = "{topic}.dlq"
retry_topic_prefix = "{topic}.retry"
group_prefix = "{}"
session_timeout_ms = 6000

[ledger]
url = "sqlite://{}"

[admin]
listen = "127.0.0.1:0"

[purposes.newsletter]
description = "Newsletter"
[purposes.ads]
description = "Ads"

[sinks.hubspot]
base_url = "{}"
[sinks.hubspot.batch]
linger_ms = 50
[sinks.hubspot.purposes.newsletter]
subscription_ids = [12345]
legal_basis = "CONSENT_WITH_NOTICE"
legal_basis_explanation = "Newsletter sign-up"
"#,
            broker::bootstrap(),
            broker::unique_name("import"),
            dir.join("ledger.db").display(),
            hubspot.base_url(),
        ),
    )
    .unwrap();
    path
}

fn csv(rows: usize, bad: &[(usize, &str)]) -> String {
    let mut out = String::from("subject_id,email,decision,purposes,occurred_at,notice_version\n");
    for row in 1..=rows {
        let line = match bad.iter().find(|(r, _)| *r == row).map(|(_, why)| *why) {
            Some("unknown purpose") => {
                format!("s{row},p{row}@example.de,grant,nope,2024-05-01T10:00:00Z,n1")
            }
            Some("no email") => format!("s{row},,withdraw,newsletter,2024-05-01T10:00:00Z,"),
            Some("no notice version on a grant") => {
                format!("s{row},p{row}@example.de,grant,newsletter,2024-05-01T10:00:00Z,")
            }
            Some("a decision that is none") => {
                format!("s{row},p{row}@example.de,perhaps,newsletter,2024-05-01T10:00:00Z,")
            }
            Some("a date that is none") => {
                format!("s{row},p{row}@example.de,withdraw,newsletter,last tuesday,")
            }
            Some("a subject id with a space") => {
                format!("s {row},p{row}@example.de,withdraw,newsletter,2024-05-01T10:00:00Z,")
            }
            Some("decided in the future") => {
                format!("s{row},p{row}@example.de,withdraw,newsletter,2099-01-01T00:00:00Z,")
            }
            Some(other) => unreachable!("{other}"),
            // Alternating decisions, purposes and timestamp forms, as a CRM export has them.
            None if row % 3 == 0 => format!(
                "s{row},p{row}@example.de,grant,newsletter;ads,{},n-2024-01",
                1_700_000_000_000 + row as i64
            ),
            None if row % 3 == 1 => {
                format!("s{row},P{row}@Example.de,withdraw,newsletter,2024-05-01T10:00:00+02:00,")
            }
            None => format!("s{row},p{row}@example.de,unsubscribe,*,2024-05-02T10:00:00Z,"),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

fn relay(config: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .env("CONSENT_RELAY_HUBSPOT_TOKEN", TOKEN)
        .env_remove("RUST_LOG")
        .output()
        .expect("run consent-relay")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Reads until `want` messages are there or `wait` passed (short where nothing more may come).
async fn event_ids(topic: &str, want: usize, wait: Duration) -> Vec<uuid::Uuid> {
    broker::read_all(topic, want, wait)
        .await
        .iter()
        .map(|m| relay_events::decode(&m.payload).expect("decodes").event_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100k_row_csv_with_7_bad_rows_dry_run_import_and_rerun() {
    let hubspot = FakeHubSpot::start(TOKEN).await;
    let topic = broker::unique_name("import-e2e");
    broker::create_topic(&topic, 4).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &topic, &hubspot);
    let file = dir.path().join("decisions.csv");
    std::fs::write(&file, csv(ROWS, &BAD)).unwrap();
    let file = file.to_str().unwrap();

    let dry = relay(&config, &["import", file, "--dry-run"]);
    let (out, err) = text(&dry);
    assert!(
        !dry.status.success(),
        "bad rows fail the dry run: {out}{err}"
    );
    let listed: Vec<usize> = out
        .lines()
        .filter_map(|l| l.strip_prefix("row ")?.split(':').next()?.parse().ok())
        .collect();
    assert_eq!(
        listed,
        BAD.map(|(r, _)| r),
        "every bad row, by number:\n{out}"
    );
    assert!(out.contains("99993 valid, 7 bad"), "{out}");
    assert!(out.contains("nothing published"), "{out}");
    for l in out.lines().filter(|l| l.starts_with("row ")) {
        assert!(
            !l.contains("@example.de"),
            "no contact values in the report: {l}"
        );
    }
    assert!(
        event_ids(&topic, 1, Duration::from_secs(5))
            .await
            .is_empty(),
        "the dry run published nothing"
    );

    let started = std::time::Instant::now();
    let run = relay(&config, &["import", file]);
    let (out, err) = text(&run);
    assert!(
        !run.status.success(),
        "7 rows were not imported: {out}{err}"
    );
    assert!(out.contains("99993 published"), "{out}");
    assert!(
        err.contains("import: 99993/99993 published (100%)"),
        "a progress line: {err}"
    );
    let first = event_ids(&topic, ROWS - 7, Duration::from_secs(60)).await;
    assert_eq!(first.len(), ROWS - 7);
    let distinct: HashSet<_> = first.iter().collect();
    assert_eq!(distinct.len(), ROWS - 7);
    eprintln!("imported 99 993 rows in {:?}", started.elapsed());

    // Nothing consumed it yet, so the rerun publishes again, with the same ids: the relay
    // recognises every one as a duplicate.
    let rerun = relay(&config, &["import", file]);
    let (out, _) = text(&rerun);
    assert!(out.contains("99993 published"), "{out}");
    let both = event_ids(&topic, 2 * (ROWS - 7), Duration::from_secs(60)).await;
    assert_eq!(both.len(), 2 * (ROWS - 7));
    let distinct_both: HashSet<_> = both.iter().collect();
    assert_eq!(distinct_both, distinct, "no event under a second id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_after_the_relay_consumed_the_import_publishes_nothing() {
    let hubspot = FakeHubSpot::start(TOKEN).await;
    let topic = broker::unique_name("import-rerun");
    broker::create_topic(&topic, 2).await;
    broker::create_topic(&format!("{topic}.dlq"), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &topic, &hubspot);
    let file = dir.path().join("decisions.csv");
    std::fs::write(&file, csv(10, &[])).unwrap();
    let file = file.to_str().unwrap();

    let first = relay(&config, &["import", file]);
    let (out, err) = text(&first);
    assert!(first.status.success(), "{out}{err}");
    assert!(out.contains("10 published"), "{out}");
    let run = relay(&config, &["run", "--exit-when-idle", "3"]);
    let (out, err) = text(&run);
    assert!(run.status.success(), "{out}{err}");
    assert_eq!(
        hubspot
            .subscription_status("p3@example.de", 12345)
            .as_deref(),
        Some("SUBSCRIBED"),
        "the imported grant reached HubSpot"
    );
    assert_eq!(
        hubspot
            .subscription_status("p1@example.de", 12345)
            .as_deref(),
        Some("UNSUBSCRIBED")
    );

    let again = relay(&config, &["import", file]);
    let (out, err) = text(&again);
    assert!(again.status.success(), "{out}{err}");
    assert!(
        out.contains("0 published") && out.contains("10 already in the ledger"),
        "{out}"
    );
    assert_eq!(
        event_ids(&topic, 11, Duration::from_secs(5)).await.len(),
        10,
        "nothing more on the topic"
    );
}
