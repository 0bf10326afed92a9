//! `consent-relay reconcile` as operators run it: the real binary against the fake HubSpot and
//! the fake Meta, with the ledger seeded through its own API (claims, as the relay makes them).
//! No broker: reconcile reads the ledger and the downstream only.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use relay_events::{normalize, EventKind};
use relay_ledger::{AnyLedger, Claim, ConsentRecord, DeliveryKey, Finish, Ledger, Status};
use relay_testkit::audiences::{self, FakePlatform};
use relay_testkit::hubspot::{FakeHubSpot, BATCH_WRITE_PATH};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_consent-relay");
const TOKEN: &str = "pat-reconcile-test";
const ADS_TOKEN: &str = "ads-reconcile-test";
const NEWSLETTER: i64 = 12345;
const T0: i64 = 1_795_651_200_000;

fn email(subject: &str) -> String {
    format!("{subject}@example.de")
}

fn write_config(dir: &Path, sinks: &str) -> PathBuf {
    let path = dir.join("consent-relay.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[ledger]
url = "sqlite://{}"

[admin]
listen = "127.0.0.1:0"

[purposes.newsletter]
description = "Newsletter"
[purposes.ads]
description = "Ads"
{sinks}
"#,
            dir.join("ledger.db").display(),
        ),
    )
    .unwrap();
    path
}

fn hubspot_sinks(hubspot: &FakeHubSpot) -> String {
    format!(
        r#"
[sinks.hubspot]
base_url = "{}"
[sinks.hubspot.purposes.newsletter]
subscription_ids = [{NEWSLETTER}]
legal_basis = "CONSENT_WITH_NOTICE"
legal_basis_explanation = "Newsletter sign-up"
"#,
        hubspot.base_url()
    )
}

fn audience_sinks(meta: &FakePlatform, google: &FakePlatform, meta_rows: usize) -> String {
    format!(
        r#"
[sinks.audiences.purposes]
ads = ["meta", "google"]
[sinks.audiences.audiences.meta]
platform = "meta"
base_url = "{}"
token = "{ADS_TOKEN}"
audience_id = "111"
max_rows_per_request = {meta_rows}
[sinks.audiences.audiences.google]
platform = "google"
base_url = "{}"
token = "{ADS_TOKEN}"
operating_account_id = "1234567890"
product_destination_id = "222"
consent_purposes = ["ads"]
"#,
        meta.base_url(),
        google.base_url()
    )
}

fn relay(config: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--config")
        .arg(config)
        .args(args)
        .env("CONSENT_RELAY_HUBSPOT_TOKEN", TOKEN)
        .env_remove("RUST_LOG");
    c
}

fn run(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out: Output = relay(config, args).output().expect("run consent-relay");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Records decisions the way the relay does: a consent-log entry, then a claim for `sink`, which
/// makes the decision the subject's state. `decisions` are (subject, kind, purpose or None for
/// the whole subject, occurred_at), claimed in order.
async fn seed(
    ledger: &AnyLedger,
    sink: &str,
    decisions: &[(String, EventKind, Option<&str>, i64)],
) {
    for chunk in decisions.chunks(5_000) {
        let mut records = Vec::new();
        let mut claims = Vec::new();
        for (i, (subject, kind, purpose, at)) in chunk.iter().enumerate() {
            let event_id = Uuid::new_v4();
            let target = purpose.unwrap_or("*").to_owned();
            records.push(ConsentRecord {
                event_id,
                subject_id: subject.clone(),
                kind: kind.name().to_owned(),
                purposes: vec![target.clone()],
                occurred_at_ms: *at,
                source: "reconcile-test".to_owned(),
                notice_version: (*kind == EventKind::ConsentGranted).then(|| "n-1".to_owned()),
                email_sha256: Some(normalize::email_sha256(&email(subject))),
                topic: "seed".to_owned(),
                partition: 0,
                offset: i as i64,
                payload_digest: None,
                late: false,
                google_email_sha256: normalize::google_email_sha256s(&email(subject))
                    .map(|(kept, _)| kept),
                google_email_plus_sha256: normalize::google_email_sha256s(&email(subject))
                    .and_then(|(_, removed)| removed),
            });
            claims.push(Claim {
                key: DeliveryKey {
                    event_id,
                    sink: sink.to_owned(),
                    target,
                },
                subject_id: subject.clone(),
                action: kind.action(),
                occurred_at_ms: *at,
                replay: false,
                reassert: false,
                ticket: None,
            });
        }
        ledger.log_events(&records).await.expect("log events");
        ledger.claim(&claims).await.expect("claim");
        // Delivered long ago, as a running relay would have.
        let finished: Vec<Finish> = claims
            .iter()
            .map(|c| Finish {
                key: c.key.clone(),
                subject_id: c.subject_id.clone(),
                status: Status::Applied,
                error_class: None,
                error: None,
            })
            .collect();
        ledger.finish(&finished).await.expect("finish");
    }
}

/// The subject's delivery rows at `sink`: (target, status, repairs).
async fn deliveries_of(config_dir: &Path, subject: &str, sink: &str) -> Vec<(String, Status, u32)> {
    let url = format!("sqlite://{}", config_dir.join("ledger.db").display());
    let ledger = relay_ledger::open_read_only(&url).await.unwrap();
    let report = ledger.subject_report(subject).await.unwrap();
    ledger.close().await;
    report
        .deliveries
        .into_iter()
        .filter(|d| d.key.sink == sink)
        .map(|d| (d.key.target, d.status, d.repairs))
        .collect()
}

fn writes(hubspot: &FakeHubSpot) -> usize {
    hubspot
        .requests()
        .iter()
        .filter(|r| r.path == BATCH_WRITE_PATH)
        .count()
}

fn lines_starting(text: &str, prefix: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("subject="))
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspot_dry_run_reports_the_three_resubscribed_then_repairs_only_them() {
    let hubspot = FakeHubSpot::start(TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &hubspot_sinks(&hubspot));
    let ledger = relay_ledger::open(&format!(
        "sqlite://{}",
        dir.path().join("ledger.db").display()
    ))
    .await
    .unwrap();

    // 250 people in sync (withdrawn here and there), so that the contact list has three pages.
    let mut decisions = Vec::new();
    for n in 0..250 {
        let s = format!("sync{n:03}");
        decisions.push((s.clone(), EventKind::ConsentGranted, Some("newsletter"), T0));
        decisions.push((
            s,
            EventKind::ConsentWithdrawn,
            Some("newsletter"),
            T0 + 1_000,
        ));
    }
    for s in ["w1", "w2", "w3"] {
        decisions.push((
            s.to_owned(),
            EventKind::ConsentGranted,
            Some("newsletter"),
            T0,
        ));
        decisions.push((
            s.to_owned(),
            EventKind::ConsentWithdrawn,
            Some("newsletter"),
            T0 + 1_000,
        ));
    }
    for s in ["granted-here-unsubscribed-there", "granted-both"] {
        decisions.push((
            s.to_owned(),
            EventKind::ConsentGranted,
            Some("newsletter"),
            T0,
        ));
    }
    seed(&ledger, "hubspot", &decisions).await;
    ledger.close().await;

    for n in 0..250 {
        hubspot.set_status_by_hand(&email(&format!("sync{n:03}")), NEWSLETTER, "UNSUBSCRIBED");
    }
    // Three withdrawn people put back to SUBSCRIBED by hand.
    for s in ["w1", "w2", "w3"] {
        hubspot.set_status_by_hand(&email(s), NEWSLETTER, "SUBSCRIBED");
    }
    hubspot.set_status_by_hand(
        &email("granted-here-unsubscribed-there"),
        NEWSLETTER,
        "UNSUBSCRIBED",
    );
    hubspot.set_status_by_hand(&email("granted-both"), NEWSLETTER, "SUBSCRIBED");
    // Someone the ledger never heard of.
    hubspot.set_status_by_hand("stranger@example.de", NEWSLETTER, "SUBSCRIBED");
    let expected: BTreeSet<String> = ["w1", "w2", "w3"].map(String::from).into();

    let (ok, out, err) = run(&config, &["reconcile", "--sink", "hubspot", "--dry-run"]);
    assert!(ok, "dry run failed: {out}\n{err}");
    assert_eq!(lines_starting(&out, "would repair"), expected, "{out}");
    assert_eq!(
        lines_starting(&out, "report"),
        BTreeSet::from(["granted-here-unsubscribed-there".to_owned()]),
        "{out}"
    );
    assert!(
        out.contains("checked 255 (subject, purpose) pair(s), in sync 251, to repair 3, reported 1, failed 0, contacts unknown to the ledger 1"),
        "{out}"
    );
    assert_eq!(writes(&hubspot), 0, "a dry run changes nothing");
    assert_eq!(
        hubspot
            .subscription_status(&email("w1"), NEWSLETTER)
            .as_deref(),
        Some("SUBSCRIBED")
    );
    for text in [&out, &err] {
        assert!(
            !text.contains("@example.de"),
            "an address was printed: {text}"
        );
    }

    let metrics = dir.path().join("reconcile.prom");
    let (ok, out, err) = run(
        &config,
        &[
            "reconcile",
            "--sink",
            "hubspot",
            "--metrics-file",
            metrics.to_str().unwrap(),
        ],
    );
    assert!(ok, "reconcile failed: {out}\n{err}");
    assert_eq!(lines_starting(&out, "repair"), expected, "{out}");
    assert!(
        out.contains("in sync 251, repaired 3, reported 1, failed 0"),
        "{out}"
    );
    for s in ["w1", "w2", "w3"] {
        assert_eq!(
            hubspot
                .subscription_status(&email(s), NEWSLETTER)
                .as_deref(),
            Some("UNSUBSCRIBED"),
            "{s}"
        );
        assert_eq!(hubspot.status_changes(&email(s)), 1, "{s} changed once");
    }
    // Reported, left alone.
    assert_eq!(
        hubspot
            .subscription_status(&email("granted-here-unsubscribed-there"), NEWSLETTER)
            .as_deref(),
        Some("UNSUBSCRIBED")
    );
    assert_eq!(
        hubspot.status_changes(&email("granted-here-unsubscribed-there")),
        0
    );
    assert_eq!(hubspot.status_changes("stranger@example.de"), 0);
    // Each repair is recorded on the delivery of the withdrawal it re-sent (what `ledger audit`
    // shows, and what `ingest` takes HubSpot's report of it for); the rest is untouched.
    let repaired = deliveries_of(dir.path(), "w1", "hubspot").await;
    assert!(
        repaired.contains(&("newsletter".to_owned(), Status::Applied, 1)),
        "{repaired:?}"
    );
    assert!(
        deliveries_of(dir.path(), "sync000", "hubspot")
            .await
            .iter()
            .all(|(_, _, repairs)| *repairs == 0),
        "in sync: nothing recorded"
    );
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let read = relay_ledger::open_read_only(&url).await.unwrap();
    let now = relay_ledger::now_ms();
    let echoes = read
        .withdrawals_delivered_between("w1", now - 60_000, now + 60_000, Uuid::new_v4())
        .await
        .unwrap();
    assert_eq!(
        echoes.iter().map(|d| d.sink.as_str()).collect::<Vec<_>>(),
        ["hubspot"],
        "HubSpot's report of the repair is the relay's own change: {echoes:?}"
    );
    read.close().await;
    let prom = std::fs::read_to_string(&metrics).unwrap();
    for series in [
        r#"consent_relay_reconcile_subjects_total{sink="hubspot",result="repaired"} 3"#,
        r#"consent_relay_reconcile_subjects_total{sink="hubspot",result="reported"} 1"#,
        r#"consent_relay_reconcile_subjects_total{sink="hubspot",result="in_sync"} 251"#,
        r#"consent_relay_reconcile_subjects_total{sink="hubspot",result="checked"} 255"#,
    ] {
        assert!(prom.contains(series), "{series} missing from:\n{prom}");
    }

    // A second run finds everything but the reported one in sync and sends no write.
    let before = writes(&hubspot);
    let (ok, out, _) = run(&config, &["reconcile", "--sink", "hubspot"]);
    assert!(ok);
    assert!(out.contains("in sync 254, repaired 0, reported 1"), "{out}");
    assert_eq!(writes(&hubspot), before);

    // --restore-grants re-subscribes the one whose newest decision is a grant.
    let (ok, out, _) = run(
        &config,
        &["reconcile", "--sink", "hubspot", "--restore-grants"],
    );
    assert!(ok);
    assert!(out.contains("repaired 1, reported 0"), "{out}");
    assert_eq!(
        hubspot
            .subscription_status(&email("granted-here-unsubscribed-there"), NEWSLETTER)
            .as_deref(),
        Some("SUBSCRIBED")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspot_reconcile_of_an_empty_portal_checks_nothing() {
    let hubspot = FakeHubSpot::start(TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &hubspot_sinks(&hubspot));
    // Reconcile never creates a ledger: without one it fails and names it.
    let (ok, _, err) = run(&config, &["reconcile", "--sink", "hubspot"]);
    assert!(!ok);
    assert!(err.contains("ledger.db"), "{err}");
    relay_ledger::open(&format!(
        "sqlite://{}",
        dir.path().join("ledger.db").display()
    ))
    .await
    .unwrap()
    .close()
    .await;
    let (ok, out, err) = run(&config, &["reconcile", "--sink", "hubspot"]);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("checked 0 (subject, purpose) pair(s)"),
        "{out}"
    );
}

/// `subjects` withdrawn people (and `granted` granted ones) for the `ads` purpose, in the ledger
/// for `audiences.meta` and in the fake Meta audience 111.
async fn seed_audience(dir: &Path, meta: &FakePlatform, subjects: usize, granted: usize) {
    let ledger = relay_ledger::open(&format!("sqlite://{}", dir.join("ledger.db").display()))
        .await
        .unwrap();
    let mut decisions = Vec::with_capacity(subjects + granted);
    for n in 0..subjects {
        decisions.push((
            format!("w{n:06}"),
            EventKind::ConsentWithdrawn,
            Some("ads"),
            T0 + 1_000,
        ));
    }
    for n in 0..granted {
        decisions.push((format!("g{n}"), EventKind::ConsentGranted, Some("ads"), T0));
    }
    seed(&ledger, "audiences.meta", &decisions).await;
    ledger.close().await;
    meta.add_members(
        "111",
        decisions
            .iter()
            .map(|(s, ..)| normalize::email_sha256(&email(s))),
    );
}

fn granted_hashes(granted: usize) -> BTreeSet<String> {
    (0..granted)
        .map(|n| normalize::email_sha256(&email(&format!("g{n}"))))
        .collect()
}

fn removal_requests(meta: &FakePlatform) -> usize {
    meta.requests()
        .iter()
        .filter(|r| r.method == "DELETE")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100k_member_meta_audience_is_emptied_of_withdrawals_in_at_most_11_requests() {
    let meta = audiences::meta::start(ADS_TOKEN).await;
    let google = audiences::google::start(ADS_TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &audience_sinks(&meta, &google, 10_000));
    let started = Instant::now();
    seed_audience(dir.path(), &meta, 100_000, 5).await;
    eprintln!("seeded 100 005 subjects in {:?}", started.elapsed());
    assert_eq!(meta.members("111").len(), 100_005);

    let (ok, out, err) = run(&config, &["reconcile", "--sink", "audiences", "--dry-run"]);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains(
            "would re-send 100000 removal(s) to audiences.meta in 10 request(s) of up to 10000"
        ),
        "{out}"
    );
    assert_eq!(meta.requests().len(), 0, "a dry run sends nothing");

    let started = Instant::now();
    let (ok, out, err) = run(&config, &["reconcile", "--sink", "audiences"]);
    eprintln!("reconcile took {:?}\n{out}{err}", started.elapsed());
    assert!(ok, "{out}\n{err}");
    let requests = removal_requests(&meta);
    assert!(requests <= 11, "{requests} requests");
    assert_eq!(requests, 10);
    assert_eq!(meta.requests().len(), requests, "removals only");
    assert_eq!(
        meta.members("111"),
        granted_hashes(5),
        "only the granted remain"
    );
    assert!(meta.rejections().is_empty(), "{:?}", meta.rejections());
    for (subject, repairs) in [("w000000", 1), ("w099999", 1), ("g0", 0)] {
        let rows = deliveries_of(dir.path(), subject, "audiences.meta").await;
        assert_eq!(rows.len(), 1, "{subject}: {rows:?}");
        assert_eq!(rows[0].2, repairs, "{subject}: the removal is recorded");
    }
    assert!(
        out.contains("reconcile audiences.meta: checked 100005 subject(s), in sync 5 (granted, left in), repaired 100000 (removals re-sent; the platform cannot be read back), reported 0, failed 0, without an email hash 0, 10 request(s)"),
        "{out}"
    );
    // Nobody was seeded for Google: nothing to check, nothing sent.
    assert!(
        out.contains("reconcile audiences.google: checked 0 subject(s)"),
        "{out}"
    );
    assert_eq!(google.requests().len(), 0);
    // Hashes only ever: no address in any request body.
    for r in meta.requests() {
        assert!(!r.body.contains("@example.de"));
    }
    assert!(!out.contains("@example.de") && !err.contains("@example.de"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_an_audience_reconcile_then_a_rerun_finishes_the_job() {
    let meta = audiences::meta::start(ADS_TOKEN).await;
    let google = audiences::google::start(ADS_TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    // 20 000 withdrawn people, 1 000 per request: 20 requests, each answered 200 ms late.
    let config = write_config(dir.path(), &audience_sinks(&meta, &google, 1_000));
    seed_audience(dir.path(), &meta, 20_000, 3).await;
    meta.set_response_delay(Duration::from_millis(200));

    let mut child = relay(
        &config,
        &["reconcile", "--sink", "audiences", "--destination", "meta"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("start reconcile");
    let deadline = Instant::now() + Duration::from_secs(60);
    while removal_requests(&meta) < 3 {
        assert!(Instant::now() < deadline, "reconcile never got going");
        assert!(
            child.try_wait().unwrap().is_none(),
            "exited before the kill"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().expect("kill -9"); // SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(!status.success());
    let first = removal_requests(&meta);
    let left = meta.members("111").len();
    assert!(first < 20, "killed mid-way ({first} requests)");
    assert!(left > 3, "members left after the kill: {left}");

    meta.set_response_delay(Duration::ZERO);
    let (ok, out, err) = run(
        &config,
        &["reconcile", "--sink", "audiences", "--destination", "meta"],
    );
    assert!(ok, "{out}\n{err}");
    // The rerun starts over (no cursor): every removal again, harmless because removing someone
    // who is not a member changes nothing.
    assert_eq!(removal_requests(&meta), first + 20);
    assert_eq!(meta.members("111"), granted_hashes(3));
    assert!(meta.rejections().is_empty());
    assert!(out.contains("repaired 20000"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_hubspot_reconcile_then_a_rerun_repairs_the_rest_once() {
    let hubspot = FakeHubSpot::start(TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &hubspot_sinks(&hubspot));
    let ledger = relay_ledger::open(&format!(
        "sqlite://{}",
        dir.path().join("ledger.db").display()
    ))
    .await
    .unwrap();
    // 300 withdrawn people all SUBSCRIBED at HubSpot: 3 pages, 3 repair writes.
    let subjects: Vec<String> = (0..300).map(|n| format!("k{n:03}")).collect();
    let decisions: Vec<_> = subjects
        .iter()
        .map(|s| {
            (
                s.clone(),
                EventKind::ConsentWithdrawn,
                Some("newsletter"),
                T0,
            )
        })
        .collect();
    seed(&ledger, "hubspot", &decisions).await;
    ledger.close().await;
    for s in &subjects {
        hubspot.set_status_by_hand(&email(s), NEWSLETTER, "SUBSCRIBED");
    }
    hubspot.set_response_delay(Duration::from_millis(300));

    let mut child = relay(&config, &["reconcile", "--sink", "hubspot"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start reconcile");
    let deadline = Instant::now() + Duration::from_secs(60);
    // Until the first repair write has been applied (its answer is still 300 ms away).
    while subjects.iter().all(|s| {
        hubspot
            .subscription_status(&email(s), NEWSLETTER)
            .as_deref()
            == Some("SUBSCRIBED")
    }) {
        assert!(Instant::now() < deadline, "reconcile never repaired");
        assert!(
            child.try_wait().unwrap().is_none(),
            "exited before the kill"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().expect("kill -9");
    child.wait().unwrap();
    let still_subscribed = subjects
        .iter()
        .filter(|s| {
            hubspot
                .subscription_status(&email(s), NEWSLETTER)
                .as_deref()
                == Some("SUBSCRIBED")
        })
        .count();
    assert!(still_subscribed > 0, "killed mid-way");

    hubspot.set_response_delay(Duration::ZERO);
    let (ok, out, err) = run(&config, &["reconcile", "--sink", "hubspot"]);
    assert!(ok, "{out}\n{err}");
    // The rerun reads HubSpot again: what the killed run repaired is in sync now.
    assert!(
        out.contains(&format!(
            "in sync {}, repaired {still_subscribed}",
            300 - still_subscribed
        )),
        "{out}"
    );
    for s in &subjects {
        assert_eq!(
            hubspot
                .subscription_status(&email(s), NEWSLETTER)
                .as_deref(),
            Some("UNSUBSCRIBED"),
            "{s}"
        );
        assert_eq!(
            hubspot.status_changes(&email(s)),
            1,
            "{s} repaired exactly once"
        );
    }
}

const MAILCHIMP_KEY: &str = "0123456789abcdef0123456789abcdef-us1";
const BREVO_KEY: &str = "xkeysib-reconcile-test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newsletter_lists_are_read_page_by_page_and_repaired_towards_less_consent() {
    use relay_testkit::newsletter::{FakeBrevo, FakeMailchimp};
    let mailchimp = FakeMailchimp::start(MAILCHIMP_KEY, &["aud1"]).await;
    let brevo = FakeBrevo::start(BREVO_KEY, &[7]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            r#"
[sinks.newsletter.purposes]
newsletter = ["mc", "br"]
[sinks.newsletter.lists.mc]
provider = "mailchimp"
base_url = "{}"
api_key = "{MAILCHIMP_KEY}"
list_id = "aud1"
[sinks.newsletter.lists.br]
provider = "brevo"
base_url = "{}"
api_key = "{BREVO_KEY}"
list_id = 7
"#,
            mailchimp.base_url(),
            brevo.base_url()
        ),
    );
    let ledger = relay_ledger::open(&format!(
        "sqlite://{}",
        dir.path().join("ledger.db").display()
    ))
    .await
    .unwrap();
    // 1 200 withdrawn people per list (two Mailchimp pages), four of them still subscribed there;
    // one granted person unsubscribed there.
    let mut decisions = Vec::new();
    for n in 0..1_200 {
        decisions.push((
            format!("n{n:04}"),
            EventKind::ConsentWithdrawn,
            Some("newsletter"),
            T0,
        ));
    }
    decisions.push((
        "granted".to_owned(),
        EventKind::ConsentGranted,
        Some("newsletter"),
        T0,
    ));
    for sink in ["newsletter.mc", "newsletter.br"] {
        seed(&ledger, sink, &decisions).await;
    }
    ledger.close().await;
    let stale = ["n0003", "n0600", "n1001", "n1199"];
    for n in 0..1_200 {
        let s = format!("n{n:04}");
        let subscribed = stale.contains(&s.as_str());
        mailchimp.set_member_status(
            "aud1",
            &email(&s),
            if subscribed {
                "subscribed"
            } else {
                "unsubscribed"
            },
        );
        // Brevo lists hold members only: the withdrawn in-sync ones were unlinked, so only the
        // stale ones and a few blocklisted ones are on the list.
        // People who signed up at Brevo directly, unknown to the ledger, between them: three
        // pages of 500.
        if n < 1_100 {
            brevo.insert_contact(&format!("direct{n}@example.org"), false, &[7]);
        }
        if subscribed {
            brevo.insert_contact(&email(&s), false, &[7]);
        } else if n % 100 == 0 {
            brevo.insert_contact(&email(&s), true, &[7]);
        }
    }
    mailchimp.set_member_status("aud1", &email("granted"), "unsubscribed");
    brevo.insert_contact(&email("granted"), true, &[7]);
    let expected: BTreeSet<String> = stale.map(String::from).into();

    let (ok, out, err) = run(&config, &["reconcile", "--sink", "newsletter", "--dry-run"]);
    assert!(ok, "{out}\n{err}");
    let would: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("would repair"))
        .collect();
    assert_eq!(would.len(), 8, "{out}");
    assert_eq!(lines_starting(&out, "would repair"), expected, "{out}");
    assert!(out.contains("reconcile newsletter.mc: checked 1201 (subject, purpose) pair(s), in sync 1196, to repair 4, reported 1"), "{out}");
    assert!(out.contains("reconcile newsletter.br: checked 16 (subject, purpose) pair(s), in sync 11, to repair 4, reported 1, failed 0, contacts unknown to the ledger 1100, 3 request(s)"), "{out}");

    let (ok, out, err) = run(&config, &["reconcile", "--sink", "newsletter"]);
    assert!(ok, "{out}\n{err}");
    for s in stale {
        assert_eq!(
            mailchimp.member_status("aud1", &email(s)).as_deref(),
            Some("unsubscribed"),
            "{s}"
        );
        let contact = brevo.contact(&email(s)).expect("still a contact");
        assert!(
            !contact.list_ids.contains(&7),
            "{s} unlinked from the Brevo list"
        );
    }
    assert_eq!(
        mailchimp
            .member_status("aud1", &email("granted"))
            .as_deref(),
        Some("unsubscribed"),
        "reported, left alone"
    );
    assert!(brevo.is_blocklisted(&email("granted")));
    assert!(out.contains("newsletter.mc: checked 1201 (subject, purpose) pair(s), in sync 1196, repaired 4, reported 1, failed 0"), "{out}");
    assert!(out.contains("newsletter.br: checked 16 (subject, purpose) pair(s), in sync 11, repaired 4, reported 1, failed 0, contacts unknown to the ledger 1100"), "{out}");

    // Only one list, and an empty rerun.
    let (ok, out, _) = run(
        &config,
        &["reconcile", "--sink", "newsletter", "--destination", "br"],
    );
    assert!(ok);
    assert!(out.contains("newsletter.br: checked 12 (subject, purpose) pair(s), in sync 11, repaired 0, reported 1, failed 0, contacts unknown to the ledger 1100, 3 request(s)"), "{out}");
    assert!(!out.contains("newsletter.mc"), "{out}");
}

/// `[reconcile.hubspot]` in `run`: the relay reconciles on its own, and `/metrics` shows it.
/// A `run` config for HubSpot with `[reconcile.hubspot] interval`, on a new topic; the admin
/// address to scrape.
async fn scheduled_run_config(
    dir: &Path,
    hubspot: &FakeHubSpot,
    interval: &str,
) -> (PathBuf, std::net::SocketAddr) {
    use relay_testkit::broker;
    let topic = broker::unique_name("reconcile-run");
    broker::create_topic(&topic, 1).await;
    broker::create_topic(&format!("{topic}.dlq"), 1).await;
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = dir.join("consent-relay.toml");
    std::fs::write(
        &config,
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
listen = "{admin}"

[purposes.newsletter]
description = "Newsletter"

[reconcile.hubspot]
interval = "{interval}"
{}"#,
            broker::bootstrap(),
            broker::unique_name("reconcile-run"),
            dir.join("ledger.db").display(),
            hubspot_sinks(hubspot),
        ),
    )
    .unwrap();
    (config, admin)
}

/// One withdrawn person, `drifted`, whom the fake HubSpot shows SUBSCRIBED (put back by hand).
async fn seed_drifted(dir: &Path, hubspot: &FakeHubSpot) -> AnyLedger {
    let ledger = relay_ledger::open(&format!("sqlite://{}", dir.join("ledger.db").display()))
        .await
        .unwrap();
    seed(
        &ledger,
        "hubspot",
        &[(
            "drifted".to_owned(),
            EventKind::ConsentWithdrawn,
            Some("newsletter"),
            T0,
        )],
    )
    .await;
    hubspot.set_status_by_hand(&email("drifted"), NEWSLETTER, "SUBSCRIBED");
    ledger
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reconciles_hubspot_on_its_schedule_and_exports_the_figures() {
    let hubspot = FakeHubSpot::start(TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let (config, admin) = scheduled_run_config(dir.path(), &hubspot, "1s").await;
    seed_drifted(dir.path(), &hubspot).await.close().await;

    let log = dir.path().join("run.log");
    let mut child = relay(&config, &["run", "--sink", "hubspot"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start run");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    let metrics = loop {
        assert!(
            Instant::now() < deadline,
            "no scheduled repair within 60 s:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(child.try_wait().unwrap().is_none(), "run exited");
        let repaired = hubspot
            .subscription_status(&email("drifted"), NEWSLETTER)
            .as_deref()
            == Some("UNSUBSCRIBED");
        let text = match reqwest::get(format!("http://{admin}/metrics")).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if repaired
            && text.contains(
                r#"consent_relay_reconcile_subjects_total{sink="hubspot",result="repaired"} 1"#,
            )
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("first scheduled repair after {:?}", started.elapsed());
    assert!(metrics.contains("consent_relay_reconcile_requests_total"));
    let deadline = Instant::now() + Duration::from_secs(30);
    // Later rounds find it in sync: one change in all.
    let rounds_before = hubspot
        .requests()
        .iter()
        .filter(|r| {
            r.path
                .starts_with(relay_testkit::hubspot::LIST_CONTACTS_PATH)
        })
        .count();
    while hubspot
        .requests()
        .iter()
        .filter(|r| {
            r.path
                .starts_with(relay_testkit::hubspot::LIST_CONTACTS_PATH)
        })
        .count()
        < rounds_before + 2
    {
        assert!(Instant::now() < deadline, "no further rounds");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(hubspot.status_changes(&email("drifted")), 1);
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success(), "clean exit on SIGTERM");
    // The ledger remembers the last finished run, for the schedule after a restart.
    let ledger = relay_ledger::open(&format!(
        "sqlite://{}",
        dir.path().join("ledger.db").display()
    ))
    .await
    .unwrap();
    let last = ledger.reconcile_finished("hubspot").await.unwrap();
    let now = relay_ledger::now_ms();
    assert!(
        last.is_some_and(|t| now - t < 60_000),
        "{last:?} vs now {now}"
    );
}

/// The schedule is the ledger's, not the process's: a relay restarted more often than its
/// interval still reconciles. Last finished two hours ago with a one-hour interval: due at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_overdue_by_the_ledgers_record_runs_right_after_start() {
    let hubspot = FakeHubSpot::start(TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let (config, admin) = scheduled_run_config(dir.path(), &hubspot, "1h").await;
    let ledger = seed_drifted(dir.path(), &hubspot).await;
    let two_hours_ago = relay_ledger::now_ms() - 2 * 3_600_000;
    ledger
        .record_reconcile_finished("hubspot", two_hours_ago)
        .await
        .unwrap();
    ledger.close().await;

    let log = dir.path().join("run.log");
    let mut child = relay(&config, &["run", "--sink", "hubspot"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start run");
    let deadline = Instant::now() + Duration::from_secs(60);
    // The gauge moves from the ledger's two-hour-old record to now when the run finishes.
    let finished_at = |metrics: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(r#"consent_relay_reconcile_last_finished_timestamp_seconds{reconcile="hubspot"}"#)
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .map(|seconds| (seconds * 1000.0) as i64)
    };
    loop {
        assert!(
            Instant::now() < deadline,
            "the overdue reconcile did not run within 60 s of start:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(child.try_wait().unwrap().is_none(), "run exited");
        let text = match reqwest::get(format!("http://{admin}/metrics")).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        match finished_at(&text) {
            Some(t) if t > two_hours_ago => {
                assert!(text.contains(r#"result="repaired"} 1"#), "{text}");
                break;
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        hubspot
            .subscription_status(&email("drifted"), NEWSLETTER)
            .as_deref(),
        Some("UNSUBSCRIBED")
    );
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success(), "clean exit on SIGTERM");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("reconcile scheduled"), "{log}");
}

/// LinkedIn and X take the ledger's hash as it is (trim + lowercase): their removals go out
/// through the same request builders, hashes only, and leave the granted people in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linkedin_and_x_audiences_get_their_removals_re_sent_from_ledger_hashes() {
    use relay_testkit::audiences::x::OAuthCredentials;
    const X: [&str; 4] = ["rc-ck", "rc-cs", "1-rc-at", "rc-ats"];
    let linkedin = audiences::linkedin::start(ADS_TOKEN).await;
    let x = audiences::x::start_oauth(OAuthCredentials::new(X[0], X[1], X[2], X[3])).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            r#"
[sinks.audiences.purposes]
ads = ["linkedin", "x"]
[sinks.audiences.audiences.linkedin]
platform = "linkedin"
base_url = "{}"
token = "{ADS_TOKEN}"
segment_id = "333"
linkedin_version = "202601"
[sinks.audiences.audiences.x]
platform = "x"
base_url = "{}"
consumer_key = "{}"
consumer_secret = "{}"
access_token = "{}"
access_token_secret = "{}"
account_id = "acc"
custom_audience_id = "444"
"#,
            linkedin.base_url(),
            x.base_url(),
            X[0],
            X[1],
            X[2],
            X[3]
        ),
    );
    let ledger = relay_ledger::open(&format!(
        "sqlite://{}",
        dir.path().join("ledger.db").display()
    ))
    .await
    .unwrap();
    let mut decisions = Vec::new();
    for n in 0..3_000 {
        decisions.push((
            format!("w{n}"),
            EventKind::ConsentWithdrawn,
            Some("ads"),
            T0,
        ));
    }
    // A whole-subject unsubscribe counts for every purpose; a grant keeps the person in.
    decisions.push(("u".to_owned(), EventKind::Unsubscribed, None, T0));
    decisions.push(("g".to_owned(), EventKind::ConsentGranted, Some("ads"), T0));
    let hashes: Vec<String> = decisions
        .iter()
        .map(|(s, ..)| normalize::email_sha256(&email(s)))
        .collect();
    for sink in ["audiences.linkedin", "audiences.x"] {
        seed(&ledger, sink, &decisions).await;
    }
    ledger.close().await;
    linkedin.add_members("333", hashes.clone());
    x.add_members("444", hashes);

    let (ok, out, err) = run(&config, &["reconcile", "--sink", "audiences"]);
    assert!(ok, "{out}\n{err}");
    let granted = BTreeSet::from([normalize::email_sha256(&email("g"))]);
    assert_eq!(linkedin.members("333"), granted);
    assert_eq!(x.members("444"), granted);
    assert!(linkedin.rejections().is_empty() && x.rejections().is_empty());
    for line in ["audiences.linkedin", "audiences.x"] {
        assert!(
            out.contains(&format!("reconcile {line}: checked 3002 subject(s), in sync 1 (granted, left in), repaired 3001")),
            "{out}"
        );
    }
    for r in linkedin.requests().iter().chain(x.requests().iter()) {
        assert!(!r.body.contains("@example.de"));
    }
}

/// Google hashes gmail.com addresses without their dots and +tag, so the ledger's `email_sha256`
/// would match nobody there: the removals go out with the Google hashes the ledger keeps. An entry
/// logged before the ledger kept them (schema v4) has none: counted, not guessed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_audiences_get_their_removals_re_sent_with_google_hashes() {
    use relay_testkit::audiences::google::REMOVE_PATH;
    let meta = audiences::meta::start(ADS_TOKEN).await;
    let google = audiences::google::start(ADS_TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &audience_sinks(&meta, &google, 10_000));
    let ledger = relay_ledger::open(&format!(
        "sqlite://{}",
        dir.path().join("ledger.db").display()
    ))
    .await
    .unwrap();
    // `email(subject)` is `<subject>@example.de`; these subjects are gmail addresses instead.
    let gmail = |n: usize| format!("Jo.Doe.{n}+news@gmail.com");
    let mut records = Vec::new();
    let mut claims = Vec::new();
    for n in 0..2_500 {
        let (kind, old) = match n {
            0 => (EventKind::ConsentGranted, false),
            1 => (EventKind::ConsentWithdrawn, true),
            _ => (EventKind::ConsentWithdrawn, false),
        };
        let event_id = Uuid::new_v4();
        let (google_hash, google_plus) =
            normalize::google_email_sha256s(&gmail(n)).expect("normalizes");
        records.push(ConsentRecord {
            event_id,
            subject_id: format!("s{n}"),
            kind: kind.name().to_owned(),
            purposes: vec!["ads".to_owned()],
            occurred_at_ms: T0,
            source: "reconcile-test".to_owned(),
            notice_version: None,
            email_sha256: Some(normalize::email_sha256(&gmail(n))),
            topic: "seed".to_owned(),
            partition: 0,
            offset: n as i64,
            payload_digest: None,
            late: false,
            // Subject 1 was logged by a relay that did not keep Google hashes yet.
            google_email_sha256: (!old).then_some(google_hash),
            google_email_plus_sha256: google_plus.filter(|_| !old),
        });
        claims.push(Claim {
            key: DeliveryKey {
                event_id,
                sink: "audiences.google".to_owned(),
                target: "ads".to_owned(),
            },
            subject_id: format!("s{n}"),
            action: kind.action(),
            occurred_at_ms: T0,
            replay: false,
            reassert: false,
            ticket: None,
        });
    }
    ledger.log_events(&records).await.unwrap();
    ledger.claim(&claims).await.unwrap();
    ledger.close().await;
    // What the sink itself sends for these people (plus tags removed, the default).
    let google_hash = |n: usize| {
        normalize::sha256_hex(&normalize::google_email(&gmail(n), true).expect("normalizes"))
    };
    assert_ne!(
        google_hash(5),
        normalize::email_sha256(&gmail(5)),
        "the test needs addresses whose Google hash is not the ledger's"
    );
    google.add_members("222", (0..2_500).map(google_hash));

    let (ok, out, err) = run(
        &config,
        &[
            "reconcile",
            "--sink",
            "audiences",
            "--destination",
            "google",
        ],
    );
    assert!(ok, "{out}\n{err}");
    assert_eq!(
        google.members("222"),
        BTreeSet::from([google_hash(0), google_hash(1)]),
        "the granted person stays; the one without a Google hash cannot be removed"
    );
    assert!(google.rejections().is_empty(), "{:?}", google.rejections());
    let removals: Vec<_> = google
        .requests()
        .into_iter()
        .filter(|r| r.path == REMOVE_PATH)
        .collect();
    // Google takes 10 000 members a request: one request for 2 498.
    assert_eq!(removals.len(), 1, "{out}");
    assert!(!removals[0].body.contains("gmail.com"), "hashes only");
    assert!(
        out.contains("reconcile audiences.google: checked 2500 subject(s), in sync 1 (granted, left in), repaired 2498 (removals re-sent; the platform cannot be read back), reported 0, failed 0, without an email hash 1, 1 request(s)"),
        "{out}"
    );
    assert_eq!(meta.requests().len(), 0, "--destination google only");
}
