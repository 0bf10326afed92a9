//! The embedded backend: one SQLite file in WAL mode.
//!
//! Every write transaction starts with `BEGIN IMMEDIATE`, taking SQLite's single write lock before
//! the first read. A deferred transaction would read the subject state under a shared lock and
//! only contend at its first write, so two claimers could both decide on the same stale state
//! (or one would fail with SQLITE_BUSY, which `busy_timeout` cannot wait out).

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

use crate::migrations::{self, Migration};
use crate::InDoubt;
use crate::{now_ms, sql};
use crate::{
    Claim, ConsentRecord, Decision, Finish, Ledger, LedgerError, Park, Rejection, SubjectReport,
    Uncertain,
};
use uuid::Uuid;

/// Writers queue on one lock anyway; a few connections let reports read alongside them.
const POOL_SIZE: u32 = 4;
/// How long a writer waits for the write lock before failing; generous, because a failed claim
/// fails its whole batch.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_RETRIES: u32 = 10;
const SQLITE_BUSY: i32 = 5;

#[derive(Debug, Clone)]
pub struct SqliteLedger {
    pool: SqlitePool,
}

impl SqliteLedger {
    /// Opens (creating if missing) the file named by a `sqlite://PATH` URL and migrates it.
    pub async fn open(url: &str) -> Result<Self, LedgerError> {
        let options = writer_options(url)?.create_if_missing(true);
        let pool = connect_named(options).await?;
        let ledger = SqliteLedger { pool };
        ledger.migrate(migrations::SQLITE).await?;
        Ok(ledger)
    }

    /// Opens an existing file for writing rows, without creating or migrating it.
    pub async fn open_existing(url: &str) -> Result<Self, LedgerError> {
        let options = writer_options(url)?.create_if_missing(false);
        require_file(&options)?;
        Ok(SqliteLedger {
            pool: connect_named(options).await?,
        })
    }

    /// Opens an existing file read-only, without migrating it.
    pub async fn open_read_only(url: &str) -> Result<Self, LedgerError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(false)
            .read_only(true)
            .busy_timeout(BUSY_TIMEOUT);
        require_file(&options)?;
        Ok(SqliteLedger {
            pool: connect_named(options).await?,
        })
    }

    /// The schema versions recorded in `ledger_migrations`, ascending.
    pub async fn applied_migrations(&self) -> Result<Vec<i64>, LedgerError> {
        Ok(sqlx::query_scalar(sql::APPLIED_MIGRATIONS)
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// For the statements kept in modules of their own (`ingest.rs`).
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub(crate) async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>, LedgerError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Applies each pending migration in its own transaction. The applied check is repeated
    /// under the write lock, so two processes opening the same file cannot both apply one.
    async fn migrate(&self, list: &[Migration]) -> Result<(), LedgerError> {
        let mut tx = self.write_tx().await?;
        sqlx::query(sql::CREATE_MIGRATIONS_TABLE)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        for m in list {
            let failed = |source| LedgerError::Migration {
                version: m.version,
                source,
            };
            let mut tx = self.write_tx().await?;
            let done: Option<i64> = sqlx::query_scalar(sql::MIGRATION_APPLIED)
                .bind(m.version)
                .fetch_optional(&mut *tx)
                .await?;
            if done.is_some() {
                continue;
            }
            sqlx::raw_sql(m.sql)
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
            sqlx::query(sql::RECORD_MIGRATION)
                .bind(m.version)
                .bind(now_ms())
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
            tx.commit().await.map_err(failed)?;
        }
        Ok(())
    }
}

/// Connects, retrying while the file is busy. Two processes creating the same new file at once
/// both run `PRAGMA journal_mode = WAL`, and SQLite can answer one of them SQLITE_BUSY without
/// consulting the busy timeout (seen in this crate's concurrent-open test). It is a start-up
/// race, so a few short retries settle it.
fn writer_options(url: &str) -> Result<SqliteConnectOptions, LedgerError> {
    Ok(SqliteConnectOptions::from_str(url)?
        .journal_mode(SqliteJournalMode::Wal)
        // FULL, not NORMAL: Kafka offsets are committed right after a ledger write, so that
        // write must survive a power loss too, not only a process crash.
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(BUSY_TIMEOUT))
}

fn require_file(options: &SqliteConnectOptions) -> Result<(), LedgerError> {
    let path = options.get_filename();
    if path.exists() {
        Ok(())
    } else {
        Err(LedgerError::Missing(format!(
            "the file {} does not exist",
            path.display()
        )))
    }
}

/// Connects, naming the file when it cannot be opened (a missing directory, no permission).
async fn connect_named(options: SqliteConnectOptions) -> Result<SqlitePool, LedgerError> {
    let target = options.get_filename().display().to_string();
    connect(options)
        .await
        .map_err(|source| LedgerError::Open { target, source })
}

async fn connect(options: SqliteConnectOptions) -> Result<SqlitePool, sqlx::Error> {
    let mut attempt = 0;
    loop {
        let result = SqlitePoolOptions::new()
            .max_connections(POOL_SIZE)
            .connect_with(options.clone())
            .await;
        match result {
            Err(e) if is_busy(&e) && attempt < CONNECT_RETRIES => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
            }
            other => return other,
        }
    }
}

fn is_busy(e: &sqlx::Error) -> bool {
    let code = e.as_database_error().and_then(|d| d.code());
    // Extended result codes (SQLITE_BUSY_RECOVERY, ...) keep the primary code in the low byte.
    code.and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| c & 0xff == SQLITE_BUSY)
}

crate::ops::backend_ops!(SqliteConnection, crate::sets::SQLITE);

impl Ledger for SqliteLedger {
    async fn log_events(&self, records: &[ConsentRecord]) -> Result<Vec<Uuid>, LedgerError> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let conflicts = log_all(&mut tx, records, now).await?;
        tx.commit().await?;
        Ok(conflicts)
    }

    async fn claim(&self, claims: &[Claim]) -> Result<Vec<Decision>, LedgerError> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let decisions = claim_all(&mut tx, claims, now).await?;
        tx.commit().await?;
        Ok(decisions)
    }

    async fn finish(&self, rows: &[Finish]) -> Result<(), LedgerError> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        finish_all(&mut tx, rows, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn park(&self, rows: &[Park]) -> Result<(), LedgerError> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        park_all(&mut tx, rows, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn mark_uncertain(&self, marks: &[Uncertain]) -> Result<(), LedgerError> {
        let mut tx = self.write_tx().await?;
        mark_all_uncertain(&mut tx, marks).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn uncertain(
        &self,
        sink: &str,
        subjects: &[String],
        now_ms: i64,
        in_doubt: &InDoubt<'_>,
    ) -> Result<HashMap<String, i64>, LedgerError> {
        let mut conn = self.pool.acquire().await?;
        read_uncertain(&mut conn, sink, subjects, now_ms, in_doubt).await
    }

    async fn record_rejections(&self, rejections: &[Rejection]) -> Result<(), LedgerError> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        reject_all(&mut tx, rejections, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn consent_for_purpose(&self, purpose: &str) -> Result<Vec<ConsentRecord>, LedgerError> {
        let mut conn = self.pool.acquire().await?;
        read_consent_for_purpose(&mut conn, purpose).await
    }

    async fn subject_report(&self, subject_id: &str) -> Result<SubjectReport, LedgerError> {
        // A read transaction: in WAL mode it sees one snapshot and does not block writers.
        let mut tx = self.pool.begin().await?;
        let report = read_report(&mut tx, subject_id).await?;
        tx.commit().await?;
        Ok(report)
    }
}
