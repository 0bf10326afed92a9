//! The crate dependency rules of ARCHITECTURE.md ("Code map", "Invariants"), checked on every
//! crate's `[dependencies]` (test-only dependencies are free): the event types depend on no
//! crate of ours, the runtime names no concrete sink, a sink sees neither Kafka's runtime nor
//! the ledger nor another sink, and only the binary wires sinks in.

use std::collections::BTreeSet;
use std::path::Path;

/// The workspace crates each crate may depend on (outside tests).
const ALLOWED: &[(&str, &[&str])] = &[
    ("relay-events", &[]),
    ("relay-delivery", &["relay-events"]),
    ("relay-ledger", &["relay-events"]),
    (
        "relay-runtime",
        &["relay-events", "relay-ledger", "relay-delivery"],
    ),
    ("relay-sink-hubspot", &["relay-events", "relay-delivery"]),
    ("relay-sink-audiences", &["relay-events", "relay-delivery"]),
    ("relay-sink-newsletter", &["relay-events", "relay-delivery"]),
    ("relay-sink-partner", &["relay-events", "relay-delivery"]),
    (
        "relay-ingest",
        &[
            "relay-events",
            "relay-ledger",
            "relay-delivery",
            "relay-runtime",
        ],
    ),
    ("relay-testkit", &["relay-events", "relay-delivery"]),
    (
        "consent-relay",
        &[
            "relay-events",
            "relay-ledger",
            "relay-delivery",
            "relay-runtime",
            "relay-sink-hubspot",
            "relay-sink-audiences",
            "relay-sink-newsletter",
            "relay-sink-partner",
            "relay-ingest",
        ],
    ),
];

/// The workspace crates named in a manifest's `[dependencies]` and target-specific dependencies.
fn workspace_dependencies(manifest: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(manifest).unwrap_or_else(|e| panic!("{manifest:?}: {e}"));
    let toml: toml::Table = text.parse().unwrap_or_else(|e| panic!("{manifest:?}: {e}"));
    let mut tables: Vec<&toml::Table> = toml
        .get("dependencies")
        .and_then(toml::Value::as_table)
        .into_iter()
        .collect();
    if let Some(targets) = toml.get("target").and_then(toml::Value::as_table) {
        tables.extend(
            targets
                .values()
                .filter_map(|t| t.get("dependencies").and_then(toml::Value::as_table)),
        );
    }
    tables
        .into_iter()
        .flat_map(|t| t.keys())
        .filter(|name| name.starts_with("relay-") || name.starts_with("consent-relay"))
        .cloned()
        .collect()
}

#[test]
fn every_crate_depends_only_on_the_crates_the_architecture_allows() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates");
    let mut found = BTreeSet::new();
    let mut broken = Vec::new();
    for entry in std::fs::read_dir(&crates).expect("crates/") {
        let dir = entry.expect("crates/ entry").path();
        let manifest = dir.join("Cargo.toml");
        if !manifest.exists() {
            continue;
        }
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        found.insert(name.clone());
        let Some((_, allowed)) = ALLOWED.iter().find(|(c, _)| *c == name) else {
            broken.push(format!(
                "{name}: a crate ARCHITECTURE.md and this test do not know"
            ));
            continue;
        };
        for dependency in workspace_dependencies(&manifest) {
            if !allowed.contains(&dependency.as_str()) {
                broken.push(format!("{name} depends on {dependency}"));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "crate rules broken:\n{}",
        broken.join("\n")
    );
    let known: BTreeSet<String> = ALLOWED.iter().map(|(c, _)| (*c).to_owned()).collect();
    assert_eq!(found, known, "every crate is checked");
}

#[test]
fn the_check_reads_what_a_manifest_says() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("Cargo.toml");
    std::fs::write(
        &manifest,
        "[dependencies]\nrelay-runtime.workspace = true\nserde = \"1\"\n\
         [dev-dependencies]\nrelay-testkit.workspace = true\n\
         [target.'cfg(unix)'.dependencies]\nrelay-ledger = { path = \"../relay-ledger\" }\n",
    )
    .unwrap();
    assert_eq!(
        workspace_dependencies(&manifest),
        BTreeSet::from(["relay-ledger".to_owned(), "relay-runtime".to_owned()])
    );
}
