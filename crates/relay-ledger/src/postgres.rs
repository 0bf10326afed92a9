//! The production backend: PostgreSQL, shared by every instance of every sink.
//!
//! Claims (and finishes) run at READ COMMITTED but first take a transaction-scoped advisory lock
//! per subject. Without it two instances could read the same subject state, both decide
//! "proceed", and the older version could be written last: a stale grant winning (§3.1). Row
//! locks alone cannot cover the first claim for a subject, when there is no row to lock yet.
//! Each statement after the lock takes a fresh snapshot, so it sees what the previous holder
//! committed.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres, Transaction};

use crate::migrations::{self, Migration};
use crate::InDoubt;
use crate::{now_ms, sql};
use crate::{
    Claim, ConsentRecord, Decision, Finish, Ledger, LedgerError, Park, Rejection, SubjectReport,
    Uncertain,
};
use uuid::Uuid;

const POOL_SIZE: u32 = 8;
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);
/// The first connection: an unreachable server is reported within seconds, naming it, not after
/// the pool's 30 s.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Makes the pool and its first connection, which must come within [`CONNECT_TIMEOUT`]; the
/// error names the server (never the password).
async fn connect(options: PgConnectOptions, pool: PgPoolOptions) -> Result<PgPool, LedgerError> {
    let target = format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or_default()
    );
    // One connection by hand first: the pool would retry a refused connection until its timeout
    // and then report only that it timed out, not why.
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options)).await {
        Ok(Ok(first)) => {
            let _ = first.close().await;
            Ok(pool.connect_lazy_with(options))
        }
        Ok(Err(source)) => Err(LedgerError::Open { target, source }),
        Err(_) => Err(LedgerError::Open {
            target,
            source: sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
            )),
        }),
    }
}

/// First key of our two-key advisory locks ("CRLG"), so they cannot collide with advisory locks
/// other software takes on a shared database with the one-key form or another namespace.
const LOCK_NAMESPACE: i32 = 0x4352_4c47;
/// Second key of the lock serializing migrations across instances starting at once.
const MIGRATION_LOCK: i32 = 0;

#[derive(Debug, Clone)]
pub struct PostgresLedger {
    pool: PgPool,
}

impl PostgresLedger {
    /// Connects to a `postgres://` URL and migrates the database.
    pub async fn open(url: &str) -> Result<Self, LedgerError> {
        // The set statements are prepared once per connection, while the tables may still be
        // empty. A generic plan cached then (a sequential scan of an empty `deliveries`) would be
        // kept as the tables grow, and each claim would scan all of them: planned per execution,
        // the lists of ids find the indexes whatever the tables held when the relay started.
        let pool = Self::open_existing(url).await?.pool;
        // A connection of its own, closed afterwards: should anything below fail midway, closing
        // the session is what releases the session-level migration lock.
        let mut conn = pool.acquire().await?.detach();
        let migrated = migrate(&mut conn, migrations::POSTGRES).await;
        let closed = conn.close().await;
        migrated?;
        closed?;
        Ok(PostgresLedger { pool })
    }

    /// Connects for writing rows, without migrating.
    pub async fn open_existing(url: &str) -> Result<Self, LedgerError> {
        // The set statements are prepared once per connection, while the tables may still be
        // empty. A generic plan cached then (a sequential scan of an empty `deliveries`) would be
        // kept as the tables grow, and each claim would scan all of them: planned per execution,
        // the lists of ids find the indexes whatever the tables held when the relay started.
        let options =
            PgConnectOptions::from_str(url)?.options([("plan_cache_mode", "force_custom_plan")]);
        let pool = connect(
            options,
            PgPoolOptions::new()
                .max_connections(POOL_SIZE)
                .acquire_timeout(ACQUIRE_TIMEOUT),
        )
        .await?;
        Ok(PostgresLedger { pool })
    }

    /// Connects without migrating, in read-only transactions by default: a role that may only
    /// SELECT is enough.
    pub async fn open_read_only(url: &str) -> Result<Self, LedgerError> {
        let options =
            PgConnectOptions::from_str(url)?.options([("default_transaction_read_only", "on")]);
        let pool = connect(
            options,
            PgPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(CONNECT_TIMEOUT),
        )
        .await?;
        Ok(PostgresLedger { pool })
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
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Begins a transaction holding the advisory locks of `subjects`, taken in ascending key
    /// order so two transactions locking overlapping sets cannot deadlock.
    pub(crate) async fn locked_tx<'a>(
        &self,
        subjects: impl Iterator<Item = &'a str>,
    ) -> Result<Transaction<'static, Postgres>, LedgerError> {
        let mut keys: Vec<i32> = subjects.map(subject_lock_key).collect();
        keys.sort_unstable();
        keys.dedup();
        let mut tx = self.pool.begin().await?;
        // One statement; unnest yields the keys in array order, so they are taken ascending.
        sqlx::query("SELECT pg_advisory_xact_lock($1, k) FROM unnest($2::int4[]) AS k")
            .bind(LOCK_NAMESPACE)
            .bind(keys)
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }
}

/// The lock key of a subject, computed here rather than with `hashtext()` so the locks can be
/// sorted before they are taken. FNV-1a: fixed forever, since every instance must agree on it.
/// Different subjects may share a key; that only serializes them needlessly.
fn subject_lock_key(subject_id: &str) -> i32 {
    let hash = subject_id.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    // Reinterpreted bit for bit: PostgreSQL's lock keys are signed.
    hash as i32
}

/// PostgreSQL's SQLSTATE for a relation that does not exist.
const UNDEFINED_TABLE: &str = "42P01";

/// Applies each pending migration in its own transaction, under a session-level advisory lock so
/// that instances starting together migrate one after the other.
async fn migrate(conn: &mut PgConnection, list: &[Migration]) -> Result<(), LedgerError> {
    sqlx::query("SELECT pg_advisory_lock($1, $2)")
        .bind(LOCK_NAMESPACE)
        .bind(MIGRATION_LOCK)
        .execute(&mut *conn)
        .await?;
    // Asked before anything is created: a role that may only read and write rows then runs on a
    // ledger its owner has brought up to date (`ledger migrate`), since PostgreSQL checks the
    // right to create even for CREATE ... IF NOT EXISTS of a table that exists.
    let current: Result<Vec<i64>, sqlx::Error> = sqlx::query_scalar(sql::APPLIED_MIGRATIONS)
        .fetch_all(&mut *conn)
        .await;
    let applied = match current {
        Ok(applied) => applied,
        // Only "no such table" means a new ledger; any other failure (a lost connection, no
        // SELECT on the table) must not make the migrations run again from the first.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(UNDEFINED_TABLE) => {
            sqlx::query(sql::CREATE_MIGRATIONS_TABLE)
                .execute(&mut *conn)
                .await?;
            Vec::new()
        }
        Err(e) => return Err(e.into()),
    };
    for m in list.iter().filter(|m| !applied.contains(&m.version)) {
        let failed = |source| LedgerError::Migration {
            version: m.version,
            source,
        };
        let mut tx = conn.begin().await.map_err(failed)?;
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
    sqlx::query("SELECT pg_advisory_unlock($1, $2)")
        .bind(LOCK_NAMESPACE)
        .bind(MIGRATION_LOCK)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

crate::ops::backend_ops!(PgConnection, crate::sets::POSTGRES);

impl Ledger for PostgresLedger {
    async fn log_events(&self, records: &[ConsentRecord]) -> Result<Vec<Uuid>, LedgerError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let conflicts = log_all(&mut tx, records, now).await?;
        tx.commit().await?;
        Ok(conflicts)
    }

    async fn claim(&self, claims: &[Claim]) -> Result<Vec<Decision>, LedgerError> {
        let now = now_ms();
        let mut tx = self
            .locked_tx(claims.iter().map(|c| c.subject_id.as_str()))
            .await?;
        let decisions = claim_all(&mut tx, claims, now).await?;
        tx.commit().await?;
        Ok(decisions)
    }

    async fn finish(&self, rows: &[Finish]) -> Result<(), LedgerError> {
        // Locked like a claim, so a finish cannot land between a concurrent claim's read of a
        // delivery row and its write (which would overwrite the final status with in_flight).
        let now = now_ms();
        let mut tx = self
            .locked_tx(rows.iter().map(|f| f.subject_id.as_str()))
            .await?;
        finish_all(&mut tx, rows, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn park(&self, rows: &[Park]) -> Result<(), LedgerError> {
        // Locked like a finish: a park must not land between a concurrent claim's read and write.
        let now = now_ms();
        let mut tx = self
            .locked_tx(rows.iter().map(|p| p.subject_id.as_str()))
            .await?;
        park_all(&mut tx, rows, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn mark_uncertain(&self, marks: &[Uncertain]) -> Result<(), LedgerError> {
        let mut tx = self.pool.begin().await?;
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
        let mut tx = self.pool.begin().await?;
        reject_all(&mut tx, rejections, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn consent_for_purpose(&self, purpose: &str) -> Result<Vec<ConsentRecord>, LedgerError> {
        let mut conn = self.pool.acquire().await?;
        read_consent_for_purpose(&mut conn, purpose).await
    }

    async fn subject_report(&self, subject_id: &str) -> Result<SubjectReport, LedgerError> {
        // REPEATABLE READ: the four reads see one snapshot even while claims commit.
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let report = read_report(&mut tx, subject_id).await?;
        tx.commit().await?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_key_is_stable() {
        // Changing the hash would let old and new instances lock different keys for one subject.
        assert_eq!(subject_lock_key(""), 0x811c_9dc5_u32 as i32);
        assert_eq!(subject_lock_key("a"), 0xe40c_292c_u32 as i32);
    }
}
