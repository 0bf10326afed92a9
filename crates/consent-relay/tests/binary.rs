//! The binary as operators run it: a real process with a TOML config, against the real broker and
//! the fake HubSpot. Covers `publish`, `run` (admin port, JSON logs, SIGTERM), `lag`, `ledger show`,
//! that no raw PII reaches logs, ledger file or CLI output, and that every metric the deploy
//! artefacts reference is exported.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use relay_testkit::broker;
use relay_testkit::hubspot::FakeHubSpot;

const BIN: &str = env!("CARGO_BIN_EXE_consent-relay");
const TOKEN: &str = "pat-binary-test";

/// Contact data that must never show up in logs, the ledger or command output.
const PII: &[&str] = &[
    "erika.mustermann@example.de",
    "Erika",
    "Mustermann",
    "+49 30 1234567",
    "max.power@example.org",
    "Maximilian",
];

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    admin: String,
    topic: String,
    fake: FakeHubSpot,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn setup() -> Setup {
    setup_with("").await
}

/// A setup whose `[sinks.hubspot]` table gets `extra` TOML lines.
async fn setup_with(extra: &str) -> Setup {
    let fake = FakeHubSpot::start(TOKEN).await;
    let topic = broker::unique_name("binary-e2e");
    broker::create_topic(&topic, 3).await;
    broker::create_topic(&format!("{topic}.dlq"), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("consent-relay.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[kafka]
bootstrap_servers = "{bootstrap}"
topics = ["{topic}"]
dlq_topic = "{topic}.dlq"
retry_topic_prefix = "{topic}.retry"
group_prefix = "{group}"
session_timeout_ms = 6000
lag_refresh_interval_ms = 500

[ledger]
url = "sqlite://{ledger}"

[admin]
listen = "{admin}"

[purposes.newsletter]
description = "Newsletter"

[sinks.hubspot]
base_url = "{base}"
{extra}
[sinks.hubspot.batch]
linger_ms = 50
[sinks.hubspot.purposes.newsletter]
subscription_ids = [12345]
legal_basis = "CONSENT_WITH_NOTICE"
legal_basis_explanation = "Newsletter sign-up"
"#,
            bootstrap = broker::bootstrap(),
            group = broker::unique_name("binary"),
            ledger = dir.path().join("ledger.db").display(),
            base = fake.base_url(),
        ),
    )
    .unwrap();
    Setup {
        dir,
        config,
        admin,
        topic,
        fake,
    }
}

/// A config file `name` in `dir` for commands that reach no downstream: `head` (a `[ledger]` or
/// `[kafka]` section), the newsletter purpose, and a HubSpot sink nobody listens for.
fn offline_config(dir: &Path, name: &str, head: &str) -> std::path::PathBuf {
    let config = dir.join(name);
    let text = format!(
        r#"{head}
[purposes.newsletter]
description = "Newsletter"

[sinks.hubspot]
base_url = "http://127.0.0.1:1"
[sinks.hubspot.purposes.newsletter]
subscription_ids = [12345]
legal_basis = "CONSENT_WITH_NOTICE"
legal_basis_explanation = "Newsletter sign-up"
"#
    );
    std::fs::write(&config, text).unwrap();
    config
}

fn relay(config: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--config").arg(config).args(args);
    c.env("CONSENT_RELAY_HUBSPOT_TOKEN", TOKEN)
        .env_remove("RUST_LOG");
    c
}

fn output(mut c: Command) -> String {
    let out = c.output().expect("run consent-relay");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "consent-relay failed: {text}");
    text
}

fn stdout(mut c: Command) -> String {
    let out = c.output().expect("run consent-relay");
    assert!(
        out.status.success(),
        "consent-relay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn events(subject_prefix: &str) -> String {
    let mut lines = String::new();
    for (i, (email, first, last)) in [
        ("erika.mustermann@example.de", "Erika", "Mustermann"),
        ("max.power@example.org", "Maximilian", "Power"),
    ]
    .iter()
    .enumerate()
    {
        lines.push_str(&format!(
            "{{\"type\":\"ConsentGranted\",\"subject_id\":\"{subject_prefix}-{i}\",\"occurred_at\":\"2026-11-20T09:00:00Z\",\"source\":\"web-form\",\"notice_version\":\"nl-1\",\"purposes\":[\"newsletter\"],\"contact\":{{\"email\":\"{email}\",\"first_name\":\"{first}\",\"last_name\":\"{last}\",\"phone\":\"+49 30 1234567\"}}}}\n"
        ));
    }
    lines
}

async fn get(url: &str) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

/// A running relay whose stderr is drained as it is written: with `RUST_LOG=trace` the logs
/// outgrow a pipe's buffer, and a relay blocked on a full pipe would never get to exit.
struct Running {
    child: Child,
    logs: std::thread::JoinHandle<String>,
}

fn start(mut command: Command) -> Running {
    let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let logs = std::thread::spawn(move || {
        let mut logs = String::new();
        stderr.read_to_string(&mut logs).unwrap();
        logs
    });
    Running { child, logs }
}

fn stop(running: Running) -> String {
    let (status, logs) = terminate(running);
    assert!(status.success(), "exit after SIGTERM: {status:?}\n{logs}");
    logs
}

fn terminate(mut running: Running) -> (std::process::ExitStatus, String) {
    Command::new("kill")
        .arg("-TERM")
        .arg(running.child.id().to_string())
        .status()
        .unwrap();
    let status = running.child.wait().unwrap();
    (status, running.logs.join().unwrap())
}

fn assert_no_pii(what: &str, text: &str) {
    for needle in PII {
        assert!(
            !text.contains(needle),
            "{what} contains raw PII {needle:?}:\n{text}"
        );
    }
}

/// `consent_relay_*` names in a deploy artefact, with histogram suffixes folded onto the family.
fn referenced_metrics(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("consent_relay_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end] == b'_'
                || bytes[end].is_ascii_digit())
        {
            end += 1;
        }
        let mut name = &text[start..end];
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                if base.ends_with("_seconds") {
                    name = base;
                }
            }
        }
        names.insert(name.to_owned());
        i = end;
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_relays_exports_metrics_and_leaks_no_pii() {
    let s = setup().await;
    let input = s.dir.path().join("events.jsonl");
    std::fs::write(&input, events("bin")).unwrap();
    let published = output(relay(&s.config, &["publish", input.to_str().unwrap()]));
    assert!(published.contains("published 2 event(s)"), "{published}");

    let mut command = relay(&s.config, &["--log-format", "json", "run"]);
    command.env("RUST_LOG", "trace").stdout(Stdio::null());
    let child = start(command);

    let mut applied = false;
    for _ in 0..600 {
        let subscribed =
            |email: &str| s.fake.subscription_status(email, 12345).as_deref() == Some("SUBSCRIBED");
        if subscribed("erika.mustermann@example.de") && subscribed("max.power@example.org") {
            applied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(applied, "both grants reach HubSpot");

    let base = format!("http://{}", s.admin);
    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);
    let mut ready = (0, String::new());
    for _ in 0..100 {
        ready = get(&format!("{base}/readyz")).await;
        if ready.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready.0, 200, "{}", ready.1);

    // Wait until the batch is counted and committed, then check the deploy artefacts' references.
    let applied_line = "consent_relay_events_total{sink=\"hubspot\",outcome=\"applied\"} 2";
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = get(&format!("{base}/metrics")).await.1;
        if metrics.contains(applied_line)
            && metrics.contains("consent_relay_commits_total{sink=\"hubspot\"}")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metrics.contains(applied_line), "{metrics}");
    // Present from the start at 0, not missing until the first trouble.
    for series in [
        "consent_relay_circuit_open{sink=\"hubspot\"} 0",
        "consent_relay_destination_paused{sink=\"hubspot\"} 0",
    ] {
        assert!(metrics.contains(series), "{series}: {metrics}");
    }
    assert!(
        metrics.contains("consent_relay_downstream_request_duration_seconds_count{sink=\"hubspot\",status_class=\"2xx\"}"),
        "{metrics}"
    );
    let exported: BTreeSet<String> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for artefact in [
        "deploy/prometheus/alerts.yaml",
        "deploy/grafana/consent-relay.json",
    ] {
        let text = std::fs::read_to_string(root.join(artefact))
            .unwrap_or_else(|e| panic!("{artefact}: {e}"));
        let referenced = referenced_metrics(&text);
        assert!(!referenced.is_empty(), "{artefact} references no metric");
        let missing: Vec<_> = referenced.difference(&exported).collect();
        assert!(
            missing.is_empty(),
            "{artefact} references metrics the relay does not export: {missing:?}"
        );
    }

    let logs = stop(child);
    assert!(
        logs.lines().all(|l| l.starts_with('{')),
        "--log-format json writes JSON lines only:\n{logs}"
    );
    assert!(logs.contains("\"sink\":\"hubspot\""), "{logs}");
    // No Rust Debug renderings in our fields: lists are JSON arrays, absent values absent.
    for line in logs.lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        let target = record["target"].as_str().unwrap_or_default();
        if !(target.starts_with("consent_relay") || target.starts_with("relay_")) {
            continue;
        }
        let fields = record["fields"].as_object().cloned().unwrap_or_default();
        for (name, value) in fields.iter().filter(|(n, _)| *n != "message") {
            let text = value.as_str().unwrap_or_default();
            assert!(
                !(text.starts_with('[') || text.contains("Some(") || text == "None"),
                "field {name} holds a Debug rendering: {line}"
            );
        }
    }
    assert!(logs.contains("\"sinks\":[\"hubspot\"]"), "{logs}");
    assert!(logs.contains("\"topics\":[\""), "{logs}");
    assert_no_pii("the relay's logs", &logs);

    let lag = stdout(relay(&s.config, &["lag", "--json"]));
    let rows: Vec<serde_json::Value> = serde_json::from_str(&lag).unwrap();
    assert_eq!(rows.len(), 3, "one row per partition: {lag}");
    let committed: i64 = rows
        .iter()
        .map(|r| r["committed"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(committed, 2, "both events committed: {lag}");
    assert!(rows.iter().all(|r| r["topic"] == s.topic.as_str()));
    // The coordinator's view too; the relay has stopped, so nobody holds a partition.
    assert!(
        rows.iter()
            .all(|r| r["group_state"].is_string() && r["member"].is_null()),
        "{lag}"
    );
    // Every field in every row, null when unknown: a stable shape for scripts.
    for field in [
        "group",
        "topic",
        "partition",
        "committed",
        "log_start",
        "log_end",
        "lag",
        "oldest_unapplied_age_seconds",
        "group_state",
        "member",
    ] {
        assert!(
            rows.iter().all(|r| r.get(field).is_some()),
            "{field} missing: {lag}"
        );
    }
    let long = format!("{}-{}", "a-group-name-far-longer-than-any-column", s.topic);
    let out = relay(&s.config, &["lag", "--group", &long])
        .output()
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("GROUP")
            && header.split_whitespace().collect::<Vec<_>>().starts_with(&[
                "GROUP",
                "TOPIC",
                "PARTITION",
                "CURRENT-OFFSET",
                "LOG-END-OFFSET",
                "LAG",
                "CONSUMER-ID",
                "HOST",
                "CLIENT-ID"
            ]),
        "kafka-consumer-groups' columns first: {table}"
    );
    // Long names widen their column instead of pushing the rest out of line.
    let topic_at = header.find("TOPIC").unwrap();
    for row in table.lines().skip(1) {
        assert_eq!(
            &row[topic_at..topic_at + s.topic.len()],
            s.topic,
            "columns line up: {table}"
        );
    }
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("consumer group {long} does not exist")),
        "a group nobody ran is not shown as one with everything to do, silently"
    );
    let out = relay(&s.config, &["lag", "--group", &long, "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let _: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("JSON only on stdout");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not exist"),
        "said with --json too, on stderr"
    );

    let csv = stdout(relay(
        &s.config,
        &["suppression", "export", "--purpose", "newsletter"],
    ));
    assert_eq!(
        csv, "subject_id,email_sha256,decision,occurred_at,event_id,source\n",
        "both granted: nobody to suppress"
    );

    // Who the recipient is in law comes from the configuration, as the privacy notice says it.
    let mut text = std::fs::read_to_string(&s.config).unwrap();
    text.push_str("\n[recipients.hubspot]\nentity = \"HubSpot Ireland Ltd.\"\nrole = \"processor (Art. 28)\"\n");
    std::fs::write(&s.config, text).unwrap();
    let audit = output(relay(&s.config, &["ledger", "audit", "bin-0"]));
    assert!(
        audit.contains(
            "ConsentGranted for newsletter via web-form (notice nl-1; legal basis: consent, GDPR Art. 6(1)(a))"
        ),
        "{audit}"
    );
    // The recipient by name, what it received, and what was done there.
    assert!(
        audit.contains(
            "HubSpot Ireland Ltd. (processor (Art. 28)): HubSpot (CRM and email subscriptions) [hubspot]"
        ),
        "{audit}"
    );
    assert!(
        audit.contains("data: email address, its email subscription status per purpose"),
        "{audit}"
    );
    assert!(
        audit
            .lines()
            .any(|l| l.contains("newsletter") && l.contains("granted (added / subscribed): 1×")),
        "{audit}"
    );
    // By email address (the ledger holds its hash), as JSON too.
    let by_email = output(relay(
        &s.config,
        &[
            "ledger",
            "audit",
            "--email",
            " Erika.Mustermann@example.de",
            "--json",
        ],
    ));
    let by_email: serde_json::Value = serde_json::from_str(&by_email).expect("audit --json");
    assert_eq!(by_email["known"], true);
    assert_eq!(by_email["subjects"][0]["subject_id"], "bin-0");
    assert_eq!(
        by_email["subjects"][0]["recipients"][0]["destination"],
        "hubspot"
    );
    let nobody = relay(&s.config, &["ledger", "audit", "nobody-at-all"])
        .output()
        .unwrap();
    assert_eq!(
        nobody.status.code(),
        Some(3),
        "no record has its own exit code"
    );
    assert!(
        String::from_utf8_lossy(&nobody.stdout)
            .contains("the ledger holds no record of this subject"),
        "{nobody:?}"
    );
    let no_email = relay(
        &s.config,
        &["ledger", "audit", "--email", "who@nowhere.example"],
    )
    .output()
    .unwrap();
    assert_eq!(no_email.status.code(), Some(3));
    assert_no_pii("ledger audit", &audit);

    let shown = output(relay(&s.config, &["ledger", "show", "bin-0"]));
    assert!(shown.contains("applied"), "{shown}");
    assert_no_pii("ledger show", &shown);
    let mut ledger_bytes = Vec::new();
    for file in ["ledger.db", "ledger.db-wal"] {
        if let Ok(b) = std::fs::read(s.dir.path().join(file)) {
            ledger_bytes.extend(b);
        }
    }
    assert_no_pii("the ledger file", &String::from_utf8_lossy(&ledger_bytes));
}

#[test]
fn invalid_configuration_names_every_bad_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[kafka]\nbootstrap_servers = \"\"\ntopicz = [\"x\"]\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("run")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    // Each problem says where it was written: its line, or the table of a key that is missing.
    let file = config.display();
    assert!(
        err.contains("kafka.topicz: unknown field `topicz`")
            && err.contains(&format!("({file}:3)")),
        "{err}"
    );
    let tokenless = dir.path().join("tokenless.toml");
    std::fs::write(
        &tokenless,
        "[purposes.newsletter]\ndescription = \"Newsletter\"\n\n[sinks.hubspot]\nbase_url = \"http://127.0.0.1:1\"\n\
         [sinks.hubspot.purposes.newsletter]\nsubscription_ids = [1]\nlegal_basis = \"CONSENT_WITH_NOTICE\"\n\
         legal_basis_explanation = \"x\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&tokenless)
        .args(["config", "check"])
        .env_remove("CONSENT_RELAY_HUBSPOT_TOKEN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("(in [sinks.hubspot], {}:4)", tokenless.display())),
        "a missing key names its table: {err}"
    );
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env("CONSENT_RELAY__KAFKA__TOPICZ", "[\"y\"]")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("kafka.topicz: unknown field `topicz`")
            && err.contains("(set by CONSENT_RELAY__KAFKA__TOPICZ)"),
        "the variable that set it: {err}"
    );
}

/// Issue 12: `config check` reports every problem of one file at once, each with its full key
/// (the broker's once, though every sink checks it), and says what a valid one configures.
/// Commands that reach no downstream need no sink credentials; `run`, `reconcile` and a plain
/// `config check` do.
#[tokio::test]
async fn config_check_lists_every_problem_and_read_commands_need_no_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let bad = offline_config(
        dir.path(),
        "bad.toml",
        "[kafka]\nbootstrap_servers = \"\"\nschema_registry_url = \"not a url\"\n\
         [sinks.partner]\nenabled = true\n",
    );
    let out = Command::new(BIN)
        .args(["--config"])
        .arg(&bad)
        .args(["config", "check"])
        .env_remove("CONSENT_RELAY_HUBSPOT_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "kafka.bootstrap_servers",
        "kafka.schema_registry_url",
        "sinks.hubspot.token",
        "sinks.partner.partners",
    ] {
        assert!(err.contains(key), "{key} not reported: {err}");
    }
    assert_eq!(
        err.matches("kafka.bootstrap_servers").count(),
        1,
        "one mistake, one line: {err}"
    );

    let ledger = dir.path().join("ledger.db");
    relay_ledger::open(&format!("sqlite://{}", ledger.display()))
        .await
        .unwrap()
        .close()
        .await;
    let good = offline_config(
        dir.path(),
        "good.toml",
        &format!("[ledger]\nurl = \"sqlite://{}\"\n", ledger.display()),
    );
    let without_token = |args: &[&str]| {
        Command::new(BIN)
            .arg("--config")
            .arg(&good)
            .args(args)
            .env_remove("CONSENT_RELAY_HUBSPOT_TOKEN")
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let out = without_token(&["config", "check"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "the pod's check needs the token"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("CONSENT_RELAY_HUBSPOT_TOKEN"));
    let out = without_token(&["config", "check", "--no-secrets"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("configuration ok"), "{text}");
    assert!(
        text.contains("sink hubspot (enabled): destinations hubspot; purposes newsletter"),
        "{text}"
    );
    for args in [
        &["ledger", "show", "anyone"][..],
        &["ledger", "audit", "anyone"],
        &["suppression", "export", "--purpose", "newsletter"],
        &["schemas", "check"],
    ] {
        let out = without_token(args);
        // `audit` of an unknown subject answers "no record" with exit 3: it ran.
        let answered = out.status.success() || (args[1] == "audit" && out.status.code() == Some(3));
        assert!(
            answered,
            "{args:?} without the HubSpot token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // These talk to the broker only (the default one, the test broker): whatever they find there,
    // the configuration is not what stops them.
    for args in [
        &["lag", "--group", "nobody-here"][..],
        &["dlq", "list"],
        &["parked", "list"],
    ] {
        let out = without_token(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code() != Some(2) && !err.contains("CONSENT_RELAY_HUBSPOT_TOKEN"),
            "{args:?} without the HubSpot token: {err}"
        );
    }
    let out = without_token(&["reconcile", "--sink", "hubspot", "--dry-run"]);
    assert_eq!(out.status.code(), Some(2), "reconcile calls HubSpot");
    let out = without_token(&["run", "--sink", "hubspot"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "run --sink hubspot calls HubSpot"
    );
}

/// Issue 12: `config check --connect` probes the broker and each topic, the ledger (read-only),
/// and each enabled destination, each naming its target; one failure makes exit status 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_connect_probes_what_the_configuration_names() {
    let topic = broker::unique_name("check");
    broker::create_topic(&topic, 2).await;
    let hubspot = FakeHubSpot::start(TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.db");
    let config = dir.path().join("check.toml");
    let write = |with_ledger: bool, partner_port: u16| {
        let ledger_url = if with_ledger {
            format!("sqlite://{}", ledger.display())
        } else {
            format!("sqlite://{}", dir.path().join("none.db").display())
        };
        std::fs::write(
            &config,
            format!(
                r#"
[kafka]
bootstrap_servers = "{}"
topics = ["{topic}"]
dlq_topic = "{topic}.dlq"
[ledger]
url = "{ledger_url}"
[purposes.newsletter]
description = "Newsletter"
[sinks.hubspot]
base_url = "{}"
[sinks.hubspot.purposes.newsletter]
subscription_ids = [12345]
legal_basis = "CONSENT_WITH_NOTICE"
legal_basis_explanation = "Newsletter sign-up"
[sinks.partner]
[sinks.partner.partners.in_gmbh]
endpoint = "http://hook:secret@127.0.0.1:{partner_port}/t/0123456789"
signing_secret = "whsec_0123456789abcdef0123456789abcdef"
purpose = "newsletter"
fields = ["email"]
"#,
                broker::bootstrap(),
                hubspot.base_url(),
            ),
        )
        .unwrap();
    };
    relay_ledger::open(&format!("sqlite://{}", ledger.display()))
        .await
        .unwrap()
        .close()
        .await;
    // The partner's port is closed, the DLQ topic missing, the first ledger does not exist.
    write(false, free_port());
    let out = relay(&config, &["config", "check", "--connect"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for line in [
        "ok    broker ".to_owned(),
        format!("ok    topic                    {topic}: 2 partition(s)"),
        format!("FAIL  topic                    {topic}.dlq: missing"),
        "FAIL  ledger                   sqlite://".to_owned(),
        format!(
            "ok    hubspot                  {}: answered",
            hubspot.base_url()
        ),
        "FAIL  partner.in_gmbh          http://127.0.0.1:".to_owned(),
    ] {
        assert!(text.contains(&line), "no {line:?} in:\n{text}");
    }
    for secret in ["hook", "secret@", "0123456789"] {
        assert!(!text.contains(secret), "{secret} printed:\n{text}");
    }
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("probes failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Everything there: exit 0.
    broker::create_topic(&format!("{topic}.dlq"), 1).await;
    let partner = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = partner.local_addr().unwrap().port();
    let answering = tokio::spawn(async move {
        let app = axum::Router::new().fallback(|| async { "ok" });
        axum::serve(partner, app).await.unwrap();
    });
    write(true, port);
    let out = relay(&config, &["config", "check", "--connect"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("ok    ledger"), "{text}");
    assert!(text.contains("schema version 10"), "{text}");
    answering.abort();
}

/// A config whose ledger is an SQLite file in `dir`, and that ledger, created, for a test to fill.
async fn offline_ledger(dir: &Path) -> (std::path::PathBuf, relay_ledger::SqliteLedger) {
    let url = format!("sqlite://{}", dir.join("ledger.db").display());
    let config = offline_config(
        dir,
        "consent-relay.toml",
        &format!("[ledger]\nurl = \"{url}\"\n"),
    );
    (
        config,
        relay_ledger::SqliteLedger::open(&url).await.unwrap(),
    )
}

/// A consent-log entry for `newsletter` from the web form, without contact data.
fn consent_record(subject: &str, kind: &str, at: i64) -> relay_ledger::ConsentRecord {
    relay_ledger::ConsentRecord {
        event_id: uuid::Uuid::new_v4(),
        subject_id: subject.into(),
        kind: kind.into(),
        purposes: vec!["newsletter".into()],
        occurred_at_ms: at,
        source: "web-form".into(),
        notice_version: None,
        email_sha256: None,
        topic: "consent.events".into(),
        partition: 0,
        offset: 0,
        payload_digest: None,
        late: false,
        google_email_sha256: None,
        google_email_plus_sha256: None,
    }
}

/// Issue 12: `suppression export` names unsubscribes as such, takes a window (`--since`), writes a
/// plain hash list for customer-list uploads, writes a file whole (`--output`), and says how many
/// rows it wrote. SQLite only, no broker.
#[tokio::test]
async fn suppression_export_formats_windows_and_files() {
    use relay_ledger::{ConsentRecord, Ledger};

    let dir = tempfile::tempdir().unwrap();
    let (config, ledger) = offline_ledger(dir.path()).await;
    let hash = |c: char| c.to_string().repeat(64);
    let record = |subject: &str, kind: &str, at: i64, email: Option<String>| ConsentRecord {
        email_sha256: email,
        ..consent_record(subject, kind, at)
    };
    // 2026-10-01, 2026-11-02 and 2026-11-05, midnight UTC.
    let (oct1, nov2, nov5) = (1_790_812_800_000, 1_793_577_600_000, 1_793_836_800_000);
    ledger
        .log_events(&[
            record("old-withdrawal", "ConsentWithdrawn", oct1, Some(hash('a'))),
            ConsentRecord {
                google_email_sha256: Some(hash('g')),
                google_email_plus_sha256: Some(hash('p')),
                ..record("unsubscribed", "Unsubscribed", nov2, Some(hash('b')))
            },
            record("erased", "ErasureRequested", nov5, None),
            record("granted-again", "ConsentWithdrawn", oct1, Some(hash('c'))),
            record("granted-again", "ConsentGranted", nov5, Some(hash('c'))),
        ])
        .await
        .unwrap();
    ledger.close().await;

    let export = |args: &[&str]| {
        let mut all = vec!["suppression", "export", "--purpose", "newsletter"];
        all.extend_from_slice(args);
        relay(&config, &all).output().unwrap()
    };
    let out = export(&[]);
    assert!(out.status.success());
    let csv = String::from_utf8_lossy(&out.stdout);
    let decisions: Vec<(&str, &str)> = csv
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0], f[2])
        })
        .collect();
    assert_eq!(
        decisions,
        [
            ("erased", "erase"),
            ("old-withdrawal", "withdraw"),
            ("unsubscribed", "unsubscribe")
        ],
        "{csv}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("suppression export: 3 suppressed for newsletter to stdout"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let since = stdout(relay(
        &config,
        &[
            "suppression",
            "export",
            "--purpose",
            "newsletter",
            "--since",
            "2026-11-01",
        ],
    ));
    assert_eq!(
        since.lines().count(),
        3,
        "header, unsubscribed, erased: {since}"
    );
    assert!(!since.contains("old-withdrawal"), "{since}");
    let since_time = stdout(relay(
        &config,
        &[
            "suppression",
            "export",
            "--purpose",
            "newsletter",
            "--since",
            "2026-11-02T00:00:01Z",
        ],
    ));
    assert_eq!(since_time.lines().count(), 2, "only erased: {since_time}");

    let file = dir.path().join("suppressed.txt");
    let out = export(&["--format", "sha256", "--output", file.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty(), "the list goes to the file only");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        format!("{}\n{}\n", hash('a'), hash('b')),
        "hashes only, no header; the erased subject has no email hash"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "2 suppressed for newsletter to {} (1 without the hash this format needs left out)",
            file.display()
        )),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dir.path().join("suppressed.txt.partial").exists());

    // The files the platforms import: Meta's customer list, Google's Customer Match (Google's own
    // hashes, logged for this subject only), HubSpot by subject id.
    let meta = stdout(relay(
        &config,
        &[
            "suppression",
            "export",
            "--purpose",
            "newsletter",
            "--format",
            "meta",
        ],
    ));
    assert_eq!(meta, format!("email\n{}\n{}\n", hash('a'), hash('b')));
    let google = export(&["--format", "google"]);
    assert_eq!(
        String::from_utf8_lossy(&google.stdout),
        format!("Email\n{}\n{}\n", hash('g'), hash('p'))
    );
    assert!(
        String::from_utf8_lossy(&google.stderr).contains(
            "1 suppressed for newsletter to stdout (2 without the hash this format needs left out)"
        ),
        "{}",
        String::from_utf8_lossy(&google.stderr)
    );
    let ids = stdout(relay(
        &config,
        &[
            "suppression",
            "export",
            "--purpose",
            "newsletter",
            "--format",
            "hubspot-ids",
        ],
    ));
    assert_eq!(ids, "subject_id\nerased\nold-withdrawal\nunsubscribed\n");

    for bad in ["last tuesday", "2026-11-01T08:00:00.0+02:00"] {
        let out = export(&["--since", bad]);
        assert_eq!(out.status.code(), Some(2), "--since {bad}");
    }
    let out = export(&["--since", "last tuesday"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--since"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue 15: once a far-future event was in the ledger, `ledger show`, `show --json`, `audit` and
/// `suppression export` exited 101 in the time formatting. They must exit 0 and say "invalid".
/// Needs only SQLite, no broker; `publish` refusing such a line needs no broker either.
#[tokio::test]
async fn ledger_commands_render_what_no_producer_can_send_any_more() {
    use relay_ledger::{ConsentRecord, Ledger};

    let dir = tempfile::tempdir().unwrap();
    let (config, ledger) = offline_ledger(dir.path()).await;
    let record = |subject: &str, kind: &str, at: i64| ConsentRecord {
        source: "s".repeat(100_000),
        notice_version: Some("\u{202e}".into()),
        ..consent_record(subject, kind, at)
    };
    ledger
        .log_events(&[
            record("future", "ConsentGranted", 253_402_300_800_000),
            record("future", "ConsentWithdrawn", 253_402_300_799_999),
            record("max", "ConsentWithdrawn", i64::MAX),
            record("min", "Unsubscribed", i64::MIN),
        ])
        .await
        .unwrap();
    ledger.close().await;

    let show = stdout(relay(&config, &["ledger", "show", "future"]));
    assert!(show.contains("invalid (253402300800000 ms)"), "{show:.300}");
    assert!(show.contains("9999-12-31T23:59:59.999Z"), "{show:.300}");
    assert!(show.contains("notice=\\u{202e}"), "{show:.300}");
    let json = stdout(relay(&config, &["ledger", "show", "future", "--json"]));
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        json["consent_log"][1]["occurred_at"],
        "invalid (253402300800000 ms)"
    );
    let audit = stdout(relay(&config, &["ledger", "audit", "future"]));
    assert!(
        audit.contains("invalid (253402300800000 ms)"),
        "{audit:.300}"
    );
    let csv = stdout(relay(
        &config,
        &["suppression", "export", "--purpose", "newsletter"],
    ));
    assert!(
        csv.contains("invalid (9223372036854775807 ms)"),
        "{csv:.300}"
    );
    assert!(
        csv.contains("invalid (-9223372036854775808 ms)"),
        "{csv:.300}"
    );

    // And such an event no longer gets in: publish refuses the line before connecting anywhere.
    let line = dir.path().join("events.jsonl");
    std::fs::write(
        &line,
        "{\"type\":\"ConsentGranted\",\"subject_id\":\"future\",\"occurred_at\":253402300800000,\
         \"source\":\"web-form\",\"notice_version\":\"n-1\",\"purposes\":[\"newsletter\"]}\n\
         {\"type\":\"ConsentGranted\",\"subject_id\":\"soon\",\"occurred_at\":\"9999-01-01T00:00:00Z\",\
         \"source\":\"web-form\",\"notice_version\":\"n-1\",\"purposes\":[\"newsletter\"]}\n",
    )
    .unwrap();
    let out = relay(&config, &["publish", line.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("line 1: field `occurred_at` must not be later than"),
        "{err}"
    );
    assert!(err.contains("line 2: field `occurred_at` is"), "{err}");
    assert!(err.contains("ahead of the relay's clock"), "{err}");
}

/// Issue 12: a read command with a mistyped ledger path must not answer "no data" from a new,
/// empty ledger it created; it fails, names the path, and leaves no file behind. On PostgreSQL it
/// never migrates, so a database without our schema is reported, not changed.
#[tokio::test]
async fn read_commands_never_create_or_migrate_a_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("typo").join("ledger.db");
    let config_for = |url: &str| {
        offline_config(
            dir.path(),
            &format!("c{}.toml", url.len()),
            &format!("[ledger]\nurl = \"{url}\"\n"),
        )
    };
    let sqlite = config_for(&format!("sqlite://{}", missing.display()));
    for args in [
        &["ledger", "audit", "anyone"][..],
        &["ledger", "show", "anyone"],
        &["ledger", "unknown-contacts"],
        &["suppression", "export", "--purpose", "newsletter"],
    ] {
        let out = relay(&sqlite, args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{args:?} succeeded on a missing ledger"
        );
        assert!(
            stderr.contains(&missing.display().to_string()),
            "{args:?}: {stderr}"
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).trim().is_empty(),
            "{args:?} printed an answer"
        );
    }
    assert!(!missing.exists() && !missing.parent().unwrap().exists());

    // An empty PostgreSQL database: reported as holding no ledger, and left without tables.
    let url = relay_testkit::postgres::fresh_database().await;
    let pg = config_for(&url);
    let out = relay(&pg, &["ledger", "audit", "anyone"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("no consent-relay ledger"), "{stderr}");
    let db = relay_ledger::PostgresLedger::open_read_only(&url)
        .await
        .unwrap();
    assert!(
        db.applied_migrations().await.is_err(),
        "the read command created the schema"
    );

    // `ledger migrate` is how a schema owner creates it; read commands then answer (exit 3: no
    // record), and a second migrate changes nothing.
    for _ in 0..2 {
        let said = stdout(relay(&pg, &["ledger", "migrate"]));
        assert!(
            said.contains("schema version 10 (applied: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10)"),
            "{said}"
        );
    }
    assert_eq!(
        db.applied_migrations().await.unwrap(),
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    );
    let out = relay(&pg, &["ledger", "audit", "anyone"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    db.close().await;
    relay_testkit::postgres::drop_database(&url).await;
}

/// Issue 12: commands check what an operator typed before they touch anything, say each fatal
/// error once, and write no terminal colours into a pipe. None of this needs a broker.
#[test]
fn mistyped_filters_and_empty_input_are_errors_said_once_without_colours() {
    let dir = tempfile::tempdir().unwrap();
    let config = offline_config(
        dir.path(),
        "consent-relay.toml",
        "[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\n",
    );
    let fails = |args: &[&str], stdin: Option<&str>| -> String {
        let mut c = relay(&config, args);
        c.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        if let Some(text) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{args:?} succeeded: {stderr}");
        assert!(
            !stderr.contains('\u{1b}'),
            "{args:?}: colours in a pipe: {stderr:?}"
        );
        stderr
    };
    let once = |stderr: &str, needle: &str| {
        assert_eq!(
            stderr.matches(needle).count(),
            1,
            "{needle:?} not said once: {stderr}"
        );
    };

    let e = fails(&["dlq", "list", "--sink", "hubspots"], None);
    once(
        &e,
        "--sink hubspots: no such destination (configured: hubspot)",
    );
    let e = fails(
        &[
            "dlq",
            "replay",
            "--sink",
            "hubspot",
            "--code",
            "nonsense",
            "--event-id",
            "nope",
        ],
        None,
    );
    once(&e, "--code nonsense: no such error code");
    once(&e, "--event-id nope: not a UUID");

    let e = fails(&["publish", "-"], Some("\n# only a comment\n"));
    once(&e, "no events");
    let line = event_line("ConsentGranted", "p1", 1_795_651_200_000)
        .replace("\"newsletter\"", "\"newsleter\"");
    let e = fails(&["publish", "-"], Some(&line));
    once(&e, "purpose \"newsleter\" is not in the [purposes] table");
}

/// The value of a counter sample (`name{labels}`) in a `/metrics` text, 0 if absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_items_are_listed_and_retried_on_demand_and_commits_are_counted() {
    // Parked after one failed attempt, and not retried by itself for ten minutes.
    let s = setup_with(
        "[sinks.hubspot.retry]\nitem_attempts = 1\nparked_initial_delay_ms = 600000\nparked_max_delay_ms = 600000",
    )
    .await;
    s.fake.set_poisoned("erika.mustermann@example.de", true);
    let input = s.dir.path().join("events.jsonl");
    std::fs::write(&input, events("park")).unwrap();
    output(relay(&s.config, &["publish", input.to_str().unwrap()]));
    let mut command = relay(&s.config, &["run"]);
    command.stdout(Stdio::null());
    let child = start(command);

    let metrics_url = format!("http://{}/metrics", s.admin);
    let commits = "consent_relay_commits_total{sink=\"hubspot\"}";
    let mut listed = serde_json::Value::Null;
    for _ in 0..600 {
        // `parked list` reads the ledger read-only: until `run` has created and migrated it,
        // it fails (and says why); the assertions below catch one that never works.
        let out = relay(&s.config, &["parked", "list", "--json"])
            .output()
            .unwrap();
        if out.status.success() {
            listed = serde_json::from_slice(&out.stdout).unwrap();
            if listed.as_array().is_some_and(|a| a.len() == 1) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let item = &listed[0];
    assert_eq!(item["sink"], "hubspot", "{listed}");
    assert_eq!(item["subject_id"], "park-0");
    assert_eq!(item["status"], "parked");
    assert_eq!(item["parks"], 1);
    assert!(
        item["reason"].as_str().unwrap().contains("HTTP 500"),
        "{item}"
    );
    assert_eq!(
        s.fake
            .subscription_status("max.power@example.org", 12345)
            .as_deref(),
        Some("SUBSCRIBED"),
        "the other person of the batch went through"
    );
    // Commits are sent without waiting and counted when the broker's answer comes back.
    let mut before = 0.0;
    for _ in 0..100 {
        before = sample(&get(&metrics_url).await.1, commits);
        if before >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(before >= 1.0, "the source batch was committed: {before}");
    // Every further batch is committed, and counted once the broker acknowledged it.
    std::fs::write(
        &input,
        "{\"type\":\"ConsentGranted\",\"subject_id\":\"more-0\",\"occurred_at\":\"2026-11-20T10:00:00Z\",\"source\":\"web-form\",\"notice_version\":\"nl-1\",\"purposes\":[\"newsletter\"],\"contact\":{\"email\":\"more@example.org\"}}\n",
    )
    .unwrap();
    output(relay(&s.config, &["publish", input.to_str().unwrap()]));
    let mut after = before;
    for _ in 0..100 {
        after = sample(&get(&metrics_url).await.1, commits);
        if after > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        after > before,
        "commits rise with the next batch: {before} -> {after}"
    );

    // Fixed at HubSpot; the operator does not want to wait ten minutes.
    s.fake.set_poisoned("erika.mustermann@example.de", false);
    let retried = stdout(relay(&s.config, &["parked", "retry", "--sink", "hubspot"]));
    assert!(
        retried.contains("1 parked item(s) of hubspot due now"),
        "{retried}"
    );
    let mut applied = false;
    for _ in 0..300 {
        if s.fake
            .subscription_status("erika.mustermann@example.de", 12345)
            .as_deref()
            == Some("SUBSCRIBED")
        {
            applied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(applied, "the retried item reaches HubSpot");
    let pending = stdout(relay(&s.config, &["parked", "list", "--json"]));
    assert_eq!(pending.trim(), "[]");
    let all = stdout(relay(&s.config, &["parked", "list", "--all"]));
    assert!(all.contains("applied"), "{all}");
    assert_no_pii("parked list", &all);
    stop(child);
}

/// A consent event as a JSON line for `publish`.
fn event_line(kind: &str, subject: &str, at_ms: i64) -> String {
    let notice = if kind == "ConsentGranted" {
        ",\"notice_version\":\"nl-1\""
    } else {
        ""
    };
    format!(
        "{{\"type\":\"{kind}\",\"event_id\":\"{}\",\"subject_id\":\"{subject}\",\"occurred_at\":{at_ms},\"source\":\"crash-test\"{notice},\"purposes\":[\"newsletter\"],\"contact\":{{\"email\":\"{subject}@example.org\"}}}}\n",
        uuid::Uuid::new_v4()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_points_while_items_are_parked_loses_nothing_and_leaves_nothing_stale() {
    let s = setup_with(
        "[sinks.hubspot.retry]\nitem_attempts = 2\nparked_initial_delay_ms = 500\nparked_max_delay_ms = 1500\nparked_budget_ms = 3600000",
    )
    .await;
    // Four people HubSpot answers 500 for, in every request: parked and retried throughout.
    let poisoned: Vec<String> = (0..4).map(|i| format!("k{i}")).collect();
    for p in &poisoned {
        s.fake.set_poisoned(&format!("{p}@example.org"), true);
    }
    let ready_url = format!("http://{}/readyz", s.admin);
    let input = s.dir.path().join("chunk.jsonl");
    // (subject, occurred_at, is_grant) of everything published.
    let mut all: Vec<(String, i64, bool)> = Vec::new();
    let base = 1_795_651_200_000_i64;
    let mut kills = 0;
    for round in 0..22_i64 {
        let mut lines = String::new();
        for _ in 0..50 {
            let subject = format!("k{}", fastrand::usize(0..100));
            let at = base + round * 1_000 + fastrand::i64(-1_500..1_500);
            let grant = fastrand::bool();
            let kind = if grant {
                "ConsentGranted"
            } else {
                "ConsentWithdrawn"
            };
            lines.push_str(&event_line(kind, &subject, at));
            all.push((subject, at, grant));
        }
        std::fs::write(&input, lines).unwrap();
        output(relay(&s.config, &["publish", input.to_str().unwrap()]));
        let mut command = relay(&s.config, &["run"]);
        // The same instance restarted, as a pod is: static membership lets it take its partitions
        // back at once instead of after the group's session timeout.
        command
            .env("CONSENT_RELAY__KAFKA__INSTANCE_ID", "crash-test")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = command.spawn().unwrap();
        // Killed once it consumes (ready), at a random point of its work.
        let mut ready = false;
        for _ in 0..600 {
            if get(&ready_url).await.0 == 200 {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ready, "round {round}: the relay never became ready");
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..2_000))).await;
        child.kill().unwrap(); // SIGKILL: nothing gets to finish, nothing leaves the group.
        child.wait().unwrap();
        kills += 1;
    }
    assert!(kills >= 20);

    for p in &poisoned {
        s.fake.set_poisoned(&format!("{p}@example.org"), false);
    }
    let mut command = relay(&s.config, &["run"]);
    command
        .env("CONSENT_RELAY__KAFKA__INSTANCE_ID", "crash-test")
        .stdout(Stdio::null());
    let child = start(command);
    // Every event ends with an outcome; every person with their newest decision.
    let ledger_url = format!("sqlite://{}", s.dir.path().join("ledger.db").display());
    let ledger = relay_ledger::open(&ledger_url).await.unwrap();
    let subjects: std::collections::BTreeSet<&String> = all.iter().map(|(s, _, _)| s).collect();
    let mut open = Vec::new();
    for _ in 0..1200 {
        open.clear();
        for subject in &subjects {
            let report = relay_ledger::Ledger::subject_report(&ledger, subject)
                .await
                .unwrap();
            let logged = report.consent_log.len();
            let published = all.iter().filter(|(s, _, _)| s == *subject).count();
            let undecided = report
                .consent_log
                .iter()
                .filter(|c| {
                    !report
                        .deliveries
                        .iter()
                        .any(|d| d.key.event_id == c.event_id && d.status.is_final())
                })
                .count();
            if logged < published || undecided > 0 {
                open.push((
                    (*subject).clone(),
                    published - logged.min(published),
                    undecided,
                ));
            }
        }
        if open.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        open.is_empty(),
        "after {kills} kills, subjects with events not consumed or without an outcome: {open:?}"
    );
    let mut stale = Vec::new();
    for subject in &subjects {
        let (_, _, granted) = all
            .iter()
            .filter(|(s, _, _)| s == *subject)
            .max_by_key(|(_, at, grant)| (*at, !*grant))
            .unwrap();
        let want = if *granted {
            "SUBSCRIBED"
        } else {
            "UNSUBSCRIBED"
        };
        let status = s
            .fake
            .subscription_status(&format!("{subject}@example.org"), 12345);
        // Someone whose only decisions were withdrawals may never have reached HubSpot at all.
        if (*granted || status.is_some()) && status.as_deref() != Some(want) {
            stale.push(((*subject).clone(), status, want));
        }
    }
    assert!(
        stale.is_empty(),
        "stale states after {kills} kills: {stale:?}"
    );
    stop(child);
}

/// Issue 12: `--help` shows examples, and no argument or option of any command is left without a
/// description.
#[test]
fn every_command_explains_each_of_its_arguments() {
    let help = |args: &[&str]| {
        let out = Command::new(BIN).args(args).arg("--help").output().unwrap();
        assert!(out.status.success(), "{args:?} --help");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(help(&[]).contains("Examples:"));
    for command in [
        &["run"][..],
        &["publish"],
        &["ingest"],
        &["import"],
        &["lag"],
        &["dlq", "list"],
        &["dlq", "replay"],
        &["parked", "list"],
        &["parked", "retry"],
        &["schemas", "check"],
        &["suppression", "export"],
        &["reconcile"],
        &["ledger", "show"],
        &["ledger", "audit"],
        &["ledger", "unknown-contacts"],
        &["config", "check"],
    ] {
        let text = help(command);
        // `schemas check` takes no arguments: nothing to show by example.
        assert!(
            command == ["schemas", "check"] || text.contains("Examples:\n  consent-relay"),
            "{command:?} --help has no examples:\n{text}"
        );
        let lines: Vec<&str> = text.lines().collect();
        let indent = |l: &str| l.len() - l.trim_start().len();
        for (i, line) in lines.iter().enumerate() {
            let entry = line.trim_start();
            // Entries start within the first columns; deeper lines are their descriptions.
            let is_entry =
                entry.starts_with('-') || entry.starts_with('<') || entry.starts_with('[');
            if !is_entry || indent(line) > 6 {
                continue;
            }
            // Clap puts the description beside the entry, or (long help) on the lines below it,
            // indented further.
            let beside = entry
                .split_once("  ")
                .is_some_and(|(_, rest)| !rest.trim().is_empty());
            let below = lines
                .get(i + 1)
                .is_some_and(|next| !next.trim().is_empty() && indent(next) > indent(line) + 2);
            assert!(beside || below, "{command:?}: {line:?} has no description");
        }
    }
}

/// Issue 12: `dlq list` shows when each message was dead-lettered and whose it was, in columns as
/// wide as their values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_shows_the_age_and_subject_of_each_dead_letter() {
    let s = setup().await;
    let input = s.dir.path().join("no-email.jsonl");
    std::fs::write(
        &input,
        "{\"type\":\"ConsentWithdrawn\",\"subject_id\":\"no-mail-subject\",\"occurred_at\":\"2026-11-20T09:00:00Z\",\"source\":\"web-form\",\"purposes\":[\"newsletter\"]}\n",
    )
    .unwrap();
    // An empty dead-letter topic answers at once: the read stops at its end offsets.
    let started = std::time::Instant::now();
    let empty = stdout(relay(&s.config, &["dlq", "list"]));
    assert_eq!(empty.lines().count(), 1, "the header alone: {empty}");
    assert!(
        started.elapsed() < Duration::from_millis(2_500),
        "an empty topic took {:?}",
        started.elapsed()
    );
    let published = output(relay(&s.config, &["publish", input.to_str().unwrap()]));
    assert!(published.contains("published 1 event(s)"), "{published}");
    let ran = relay(&s.config, &["run", "--exit-when-idle", "3"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(ran.success());
    let listed = stdout(relay(&s.config, &["dlq", "list"]));
    let mut lines = listed.lines();
    let header = lines.next().unwrap_or_default();
    assert!(
        header.starts_with("DLQ") && header.contains(" AGE ") && header.contains(" SUBJECT "),
        "{listed}"
    );
    let row = lines
        .find(|l| l.contains("no-mail-subject"))
        .unwrap_or_else(|| panic!("the dead letter with its subject:\n{listed}"));
    assert!(row.contains("missing_email"), "{row}");
    let age = row.split_whitespace().nth(1).unwrap_or_default();
    assert!(
        age.ends_with('s') || age.ends_with('m'),
        "an age, not {age:?}: {row}"
    );
    let json: Vec<serde_json::Value> =
        serde_json::from_str(&stdout(relay(&s.config, &["dlq", "list", "--json"]))).unwrap();
    assert_eq!(json[0]["subject_id"], "no-mail-subject");
    assert!(json[0]["dead_lettered_at_ms"].as_i64().is_some());
    let event_id = json[0]["event_id"].as_str().unwrap().to_owned();

    // The same filters as `replay`, checked the same way.
    let count = |args: &[&str]| -> usize {
        let mut all = vec!["dlq", "list", "--json"];
        all.extend_from_slice(args);
        serde_json::from_str::<Vec<serde_json::Value>>(&stdout(relay(&s.config, &all)))
            .unwrap()
            .len()
    };
    assert_eq!(count(&["--code", "missing_email"]), 1);
    assert_eq!(count(&["--code", "downstream_permanent"]), 0);
    assert_eq!(count(&["--event-id", &event_id]), 1);
    assert_eq!(count(&["--event-id", &uuid::Uuid::new_v4().to_string()]), 0);
    let out = relay(&s.config, &["dlq", "list", "--code", "nonsense"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--code nonsense: no such error code"));

    let dry = stdout(relay(
        &s.config,
        &["dlq", "replay", "--sink", "hubspot", "--dry-run"],
    ));
    assert!(
        dry.contains(&format!("event={event_id}"))
            && dry.contains("1 message(s) for sink hubspot would be replayed"),
        "{dry}"
    );
    // A missing email is the event's own fault: a replay cannot fix it, and says so.
    let out = relay(
        &s.config,
        &["dlq", "replay", "--sink", "hubspot", "--dry-run"],
    )
    .output()
    .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("1 of these were dead-lettered for the event itself"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(count(&[]), 1, "a dry run replays nothing");
    let out = relay(&s.config, &["dlq", "replay", "--sink", "hubspot"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("dlq replay hubspot: 1/1 replayed (100%)"),
        "a progress line off a terminal: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue 12: as shipped, three of the four sink Deployments crash-looped (their sinks were not in
/// the ConfigMap, their credentials not in the Deployment). Each Deployment's environment, with
/// its secrets filled in, must make the shipped configuration valid, and fails without them; the
/// compose configuration likewise.
#[test]
fn the_shipped_deployments_configure_each_sink_with_the_credentials_they_pass() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let configmap = std::fs::read_to_string(deploy.join("k8s/configmap.yaml")).unwrap();
    let toml: String = configmap
        .lines()
        .skip_while(|l| !l.contains("consent-relay.toml: |"))
        .skip(1)
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let k8s_config = dir.path().join("k8s.toml");
    std::fs::write(&k8s_config, toml).unwrap();
    let compose_config = deploy.join("consent-relay.compose.toml");
    // A value each credential's own check accepts.
    let value = |name: &str| -> String {
        if name.ends_with("SIGNING_SECRET") {
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned()
        } else if name.ends_with("API_KEY") {
            "0123456789abcdef-us21".to_owned()
        } else {
            "credential-from-the-secret".to_owned()
        }
    };
    for sink in ["hubspot", "audiences", "newsletter", "partner"] {
        let yaml = std::fs::read_to_string(deploy.join(format!("k8s/sink-{sink}.yaml"))).unwrap();
        let names: Vec<&str> = yaml
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- name: "))
            .filter(|n| n.starts_with("CONSENT_RELAY"))
            .collect();
        let enable = format!("CONSENT_RELAY__SINKS__{}__ENABLED", sink.to_uppercase());
        assert!(names.contains(&enable.as_str()), "{sink}: {names:?}");
        let credentials: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| {
                *n != enable && *n != "CONSENT_RELAY_LEDGER_URL" && !n.contains("KAFKA_SASL")
            })
            .collect();
        assert!(!credentials.is_empty(), "{sink} passes no credentials");
        for config in [&k8s_config, &compose_config] {
            let check = |with_credentials: bool| {
                let mut c = Command::new(BIN);
                c.arg("--config").arg(config).args(["config", "check"]);
                c.env_remove("CONSENT_RELAY_HUBSPOT_TOKEN")
                    .env(&enable, "true");
                if with_credentials {
                    for n in &credentials {
                        c.env(n, value(n));
                    }
                }
                c.output().unwrap()
            };
            let out = check(true);
            assert!(
                out.status.success(),
                "{sink} with {}: {}",
                config.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            let out = check(false);
            assert_eq!(out.status.code(), Some(2), "{sink} needs its credentials");
        }
    }
}

/// Issue 12: `publish` lists every problem of a line, not only the first, and publishes nothing.
#[test]
fn publish_reports_every_problem_of_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = offline_config(
        dir.path(),
        "c.toml",
        "[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\n",
    );
    let input = dir.path().join("bad.jsonl");
    std::fs::write(
        &input,
        "{\"type\":\"ConsentGranted\",\"subject_id\":\"s-1\",\"occurred_at\":\"2026-11-20T09:00:00Z\",\"source\":\"  \",\"purposes\":[\"newsletter\",\"nope\"],\"contact\":{\"email\":\"<script>@x\",\"country\":\"germany\"}}\n",
    )
    .unwrap();
    let out = relay(&config, &["publish", input.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for problem in ["source", "notice_version", "email", "country", "\"nope\""] {
        assert!(
            err.lines()
                .any(|l| l.contains("line 1") && l.contains(problem)),
            "{problem} not reported:\n{err}"
        );
    }
    // Structural problems too: each of them, not the first alone.
    std::fs::write(
        &input,
        "{\"type\":\"ConsentGranted\",\"subject\":\"s-1\",\"occurred_at\":\"soon\",\"source\":1,\"purposes\":[\"newsletter\"]}\n",
    )
    .unwrap();
    let out = relay(&config, &["publish", input.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for problem in [
        "`subject`",
        "subject_id",
        "occurred_at",
        "`source` must be a string",
    ] {
        assert!(
            err.lines()
                .any(|l| l.contains("line 1") && l.contains(problem)),
            "{problem} not reported:\n{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_with_work_not_yet_durable_exits_75_and_the_next_start_does_it() {
    let s = setup().await;
    // The token was rotated at HubSpot: every request is refused, the batch waits for it.
    s.fake.set_token("rotated-elsewhere");
    let input = s.dir.path().join("events.jsonl");
    std::fs::write(&input, events("left")).unwrap();
    output(relay(&s.config, &["publish", input.to_str().unwrap()]));
    let mut command = relay(&s.config, &["run", "--log-format", "json"]);
    command.stdout(Stdio::null());
    let child = start(command);
    for _ in 0..300 {
        if !s.fake.requests().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !s.fake.requests().is_empty(),
        "the relay never tried HubSpot"
    );
    let (status, logs) = terminate(child);
    assert_eq!(status.code(), Some(75), "{logs}");
    let last: serde_json::Value = serde_json::from_str(logs.lines().last().unwrap()).unwrap();
    assert_eq!(last["level"], "WARN", "{logs}");
    assert!(
        last["fields"]["error"]
            .as_str()
            .unwrap()
            .contains("not yet durable"),
        "{logs}"
    );
    assert_eq!(
        logs.matches("not yet durable").count(),
        1,
        "said once: {logs}"
    );

    s.fake.set_token(TOKEN);
    let ran = relay(&s.config, &["run", "--exit-when-idle", "3"])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    assert_eq!(
        s.fake
            .subscription_status("erika.mustermann@example.de", 12345)
            .as_deref(),
        Some("SUBSCRIBED")
    );
}

/// Issue 12: a broker nobody listens on was "pool timed out"-style silence, then an error naming
/// nothing; now each command says which broker, within seconds, and `publish` how far it got.
#[test]
fn an_unreachable_broker_is_named_and_publish_says_how_many_were_sent() {
    let dir = tempfile::tempdir().unwrap();
    let config = offline_config(
        dir.path(),
        "nobroker.toml",
        "[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\n",
    );
    let input = dir.path().join("events.jsonl");
    std::fs::write(&input, events("nobroker")).unwrap();
    let started = std::time::Instant::now();
    let out = relay(&config, &["publish", input.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("broker 127.0.0.1:1") && err.contains("0 of 2 event(s) acknowledged"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "within seconds, not after 30: {:?}",
        started.elapsed()
    );
    let out = relay(&config, &["lag", "--group", "g"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("broker 127.0.0.1:1"), "{err}");
}

/// Issue 12: a downstream with nothing listening was retried forever with "client error
/// (Connect)", no URL, and `/readyz` stayed 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_downstream_shows_in_readyz_and_metrics_naming_it() {
    let s = setup().await;
    let closed = format!("127.0.0.1:{}", free_port());
    // Named in /readyz once paused for stall_after_ms (60 s by default; a blip is no alarm).
    let text = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace(&s.fake.base_url(), &format!("http://{closed}"))
        + "\n[liveness]\nstall_after_ms = 2000\n";
    std::fs::write(&s.config, text).unwrap();
    let input = s.dir.path().join("events.jsonl");
    std::fs::write(&input, events("unreachable")).unwrap();
    output(relay(&s.config, &["publish", input.to_str().unwrap()]));
    let mut command = relay(&s.config, &["run"]);
    command.stdout(Stdio::null());
    let child = start(command);
    let ready_url = format!("http://{}/readyz", s.admin);
    let mut ready = (0, String::new());
    for _ in 0..300 {
        ready = get(&ready_url).await;
        if ready.0 == 503 && ready.1.contains("destination paused") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready.0, 503, "{}", ready.1);
    assert!(
        ready.1.contains("hubspot: destination paused") && ready.1.contains(&closed),
        "names the destination and where it was looked for: {}",
        ready.1
    );
    let metrics = get(&format!("http://{}/metrics", s.admin)).await.1;
    assert_eq!(
        sample(
            &metrics,
            "consent_relay_destination_paused{sink=\"hubspot\"}"
        ),
        1.0,
        "{metrics}"
    );
    let (status, logs) = terminate(child);
    assert_eq!(status.code(), Some(75), "the batch was left: {logs}");
    assert!(logs.contains(&closed), "the logs name it too: {logs}");
}

/// Found writing the walkthroughs: `lag | head -1` panicked ("failed printing to stdout: Broken
/// pipe", exit 101). A read command ends quietly when its reader goes away.
#[test]
fn a_read_command_piped_into_a_closed_reader_ends_without_a_panic() {
    let mut child = Command::new(BIN)
        .args(["schemas", "check"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(out.status.code(), Some(101), "{err}");
}
