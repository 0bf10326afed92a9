//! The ledger: the durable record of every event's fate per sink, the newest decision per
//! (subject, purpose, sink), and the append-only consent log.
//!
//! Owns: the version rule (DESIGN.md §3.1) and idempotency (§3.2), decided atomically with the
//! delivery record, on SQLite (embedded default) or PostgreSQL (production), with versioned
//! migrations per backend. Must not: store raw email, phone or name; talk to Kafka or downstreams.

#![forbid(unsafe_code)]

mod codec;
mod ingest;
pub mod memory;
mod migrations;
mod model;
mod ops;
pub mod postgres;
mod reconcile;
mod rule;
mod sets;
mod sql;
pub mod sqlite;
mod suppression;

pub use ingest::{DeliveredWithdrawal, UnknownContact};
pub use memory::MemoryLedger;
pub use model::*;
pub use postgres::PostgresLedger;
pub use reconcile::{effective, Repair, SinkState};
pub use sqlite::SqliteLedger;
pub use suppression::{suppression_list, Suppressed};

use std::time::{SystemTime, UNIX_EPOCH};

/// Opens the ledger named by `url` (`sqlite://PATH` or `postgres://...`) and brings its schema up
/// to date before returning, so a process never runs against a half-migrated ledger.
pub async fn open(url: &str) -> Result<AnyLedger, LedgerError> {
    if url.starts_with("sqlite:") {
        // Each pooled connection would get its own empty in-memory database, and a ledger that
        // dies with the process cannot back an offset commit (§3.3); refuse rather than misbehave.
        if url.contains(":memory:") || url.contains("mode=memory") {
            return Err(LedgerError::UnsupportedUrl(redact(url)));
        }
        Ok(AnyLedger::Sqlite(SqliteLedger::open(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(AnyLedger::Postgres(PostgresLedger::open(url).await?))
    } else {
        Err(LedgerError::UnsupportedUrl(redact(url)))
    }
}

/// Opens the ledger named by `url` for reading only: it is never created, migrated or written, so
/// a mistyped path fails instead of answering from a new, empty ledger, and a database role that
/// may only SELECT is enough. The schema must be the one this version writes (`run` migrates).
pub async fn open_read_only(url: &str) -> Result<AnyLedger, LedgerError> {
    let ledger = if url.starts_with("sqlite:") {
        AnyLedger::Sqlite(SqliteLedger::open_read_only(url).await?)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        AnyLedger::Postgres(PostgresLedger::open_read_only(url).await?)
    } else {
        return Err(LedgerError::UnsupportedUrl(redact(url)));
    };
    require_current(ledger, url).await
}

/// Opens an existing ledger of the current schema for writing rows, never creating or migrating
/// it: for the commands beside `run` that record what they did (`ingest`), which may run with a
/// role that may not change the schema.
pub async fn open_current(url: &str) -> Result<AnyLedger, LedgerError> {
    let ledger = if url.starts_with("sqlite:") {
        AnyLedger::Sqlite(SqliteLedger::open_existing(url).await?)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        AnyLedger::Postgres(PostgresLedger::open_existing(url).await?)
    } else {
        return Err(LedgerError::UnsupportedUrl(redact(url)));
    };
    require_current(ledger, url).await
}

async fn require_current(ledger: AnyLedger, url: &str) -> Result<AnyLedger, LedgerError> {
    let target = redact(url);
    // Only a missing table means "no ledger": any other failure (no SELECT right, a lost
    // connection) is said as it is, or `import` would take it for a ledger not made yet.
    let found = ledger.applied_migrations().await.map_err(|e| match &e {
        LedgerError::Database(sqlx::Error::Database(d))
            if d.code().as_deref() == Some("42P01") || d.message().contains("no such table") =>
        {
            LedgerError::Missing(format!("{target} holds no consent-relay ledger"))
        }
        _ => e,
    })?;
    let want = migrations::latest();
    if found.last().copied() != Some(want) {
        return Err(LedgerError::Schema {
            target,
            found: found.last().copied().unwrap_or(0),
            want,
        });
    }
    Ok(ledger)
}

/// Either backend, chosen at run time from the configured URL.
#[derive(Debug, Clone)]
pub enum AnyLedger {
    Sqlite(SqliteLedger),
    Postgres(PostgresLedger),
}

impl AnyLedger {
    /// The schema versions recorded in `ledger_migrations`, ascending.
    pub async fn applied_migrations(&self) -> Result<Vec<i64>, LedgerError> {
        match self {
            AnyLedger::Sqlite(l) => l.applied_migrations().await,
            AnyLedger::Postgres(l) => l.applied_migrations().await,
        }
    }

    /// Waits for in-use connections to be returned and closes the pool.
    pub async fn close(&self) {
        match self {
            AnyLedger::Sqlite(l) => l.close().await,
            AnyLedger::Postgres(l) => l.close().await,
        }
    }
}

impl Ledger for AnyLedger {
    async fn log_events(&self, records: &[ConsentRecord]) -> Result<Vec<uuid::Uuid>, LedgerError> {
        match self {
            AnyLedger::Sqlite(l) => l.log_events(records).await,
            AnyLedger::Postgres(l) => l.log_events(records).await,
        }
    }

    async fn claim(&self, claims: &[Claim]) -> Result<Vec<Decision>, LedgerError> {
        match self {
            AnyLedger::Sqlite(l) => l.claim(claims).await,
            AnyLedger::Postgres(l) => l.claim(claims).await,
        }
    }

    async fn finish(&self, rows: &[Finish]) -> Result<(), LedgerError> {
        match self {
            AnyLedger::Sqlite(l) => l.finish(rows).await,
            AnyLedger::Postgres(l) => l.finish(rows).await,
        }
    }

    async fn park(&self, rows: &[Park]) -> Result<(), LedgerError> {
        match self {
            AnyLedger::Sqlite(l) => l.park(rows).await,
            AnyLedger::Postgres(l) => l.park(rows).await,
        }
    }

    async fn mark_uncertain(&self, marks: &[Uncertain]) -> Result<(), LedgerError> {
        match self {
            AnyLedger::Sqlite(l) => l.mark_uncertain(marks).await,
            AnyLedger::Postgres(l) => l.mark_uncertain(marks).await,
        }
    }

    async fn uncertain(
        &self,
        sink: &str,
        subjects: &[String],
        now_ms: i64,
        in_doubt: &InDoubt<'_>,
    ) -> Result<std::collections::HashMap<String, i64>, LedgerError> {
        match self {
            AnyLedger::Sqlite(l) => l.uncertain(sink, subjects, now_ms, in_doubt).await,
            AnyLedger::Postgres(l) => l.uncertain(sink, subjects, now_ms, in_doubt).await,
        }
    }

    async fn record_rejections(&self, rejections: &[Rejection]) -> Result<(), LedgerError> {
        match self {
            AnyLedger::Sqlite(l) => l.record_rejections(rejections).await,
            AnyLedger::Postgres(l) => l.record_rejections(rejections).await,
        }
    }

    async fn consent_for_purpose(&self, purpose: &str) -> Result<Vec<ConsentRecord>, LedgerError> {
        match self {
            AnyLedger::Sqlite(l) => l.consent_for_purpose(purpose).await,
            AnyLedger::Postgres(l) => l.consent_for_purpose(purpose).await,
        }
    }

    async fn subject_report(&self, subject_id: &str) -> Result<SubjectReport, LedgerError> {
        match self {
            AnyLedger::Sqlite(l) => l.subject_report(subject_id).await,
            AnyLedger::Postgres(l) => l.subject_report(subject_id).await,
        }
    }
}

/// Wall-clock milliseconds for the `*_at_ms` bookkeeping columns (never for the version rule,
/// which only uses the events' own `occurred_at`).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The URL without its userinfo or the values of its query parameters, because error messages
/// end up in logs and a URL may carry a password either way (`?password=`, `sslpassword=`).
pub fn redact(url: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let base = match (base.find("://"), base.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***{}", &base[..scheme_end], &base[at..])
        }
        _ => base.to_owned(),
    };
    match query {
        None => base,
        Some(q) => {
            let names: Vec<String> = q
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    // Which settings were given is worth knowing; their values may be secrets.
                    Some((name, _)) if name.contains("password") => format!("{name}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{base}?{}", names.join("&"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_schemes_and_memory_databases_are_refused() {
        for url in ["mysql://u:secret@db/x", "sqlite::memory:", "ledger.db"] {
            match open(url).await {
                Err(LedgerError::UnsupportedUrl(shown)) => assert!(!shown.contains("secret")),
                other => panic!("{url}: expected UnsupportedUrl, got {other:?}"),
            }
        }
    }

    #[test]
    fn redact_hides_userinfo_and_password_parameters_only() {
        assert_eq!(
            redact("postgres://u:pw@h:5432/db"),
            "postgres://***@h:5432/db"
        );
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
        assert_eq!(
            redact("postgres://u@h/db?sslmode=verify-full&password=s3cret&sslpassword=k"),
            "postgres://***@h/db?sslmode=verify-full&password=***&sslpassword=***"
        );
    }
}
