//! The state store: the only module that touches kpiwatch's own database.
//!
//! SQLite (the embedded default) or PostgreSQL (production) through sqlx, chosen by the URL
//! scheme, with migrations from `migrations/sqlite/` or `migrations/postgres/` embedded at
//! compile time and run on [`Store::connect`]. Times are UTC unix seconds.
//!
//! Every query has one SQL text for both backends: `$N` placeholders (SQLite binds them by
//! number), no backend-only functions (`CASE` instead of two-argument `max`/`min`), booleans
//! bound as `bool` and tested as such. `run!` runs a method's body on whichever pool the
//! store holds; row types decode from either backend because the column types match
//! (BIGINT ↔ `i64`, DOUBLE PRECISION / REAL ↔ `f64`, BOOLEAN / INTEGER 0-1 ↔ `bool`).
//! Writes that belong together (an alert's state change and the notifications it causes)
//! share one transaction, so a crash leaves either both or neither.
//!
//! Row types here derive `FromRow` and `Serialize`; domain types do not.
//!
//! One `Store`, its methods split by domain: `kpis` (specs, run log, stored definitions),
//! `series` (observations, verdicts, anomalies, feedback), `alerts` (alerts and silences),
//! `outbox` (notifications), `audit`, `events`, `tokens`, `leases`, `checkpoints` and
//! `revisions` (the kept detector's snapshot and what invalidates it), `retention`, `shared`
//! (events and silences read once a second for all of a process's runs), and `bulk`
//! (binary `COPY` for large batches on PostgreSQL). This file holds the connection, the
//! `run!` macro that picks the backend, and the `meta` table.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Row;

/// A state-store failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database failed.
    #[error("state store: {0}")]
    Db(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("state store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The URL is not one we support.
    #[error("state store: unsupported URL {0:?} (use sqlite://path or postgres://…)")]
    Unsupported(String),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Handle to the state database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
    /// The events and silences this process's runs share (see `shared`).
    shared: std::sync::Arc<shared::SharedReads>,
}

/// The connection pool of whichever backend the URL named.
#[derive(Debug, Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Run `$body` with `$pool` bound to the store's concrete pool (`&SqlitePool` or `&PgPool`):
/// the same SQL text and binds, type-checked once per backend.
macro_rules! run {
    ($store:expr, |$pool:ident| $body:block) => {
        match &$store.pool {
            Pool::Sqlite($pool) => $body,
            Pool::Postgres($pool) => $body,
        }
    };
}

mod alerts;
mod audit;
mod bulk;
mod checkpoints;
mod events;
mod kpis;
mod leases;
mod outbox;
mod retention;
mod revisions;
mod series;
mod shared;
mod tokens;

pub use alerts::{AlertRow, SilenceRow};
pub use audit::AuditRow;
use bulk::BulkWrite;
pub use bulk::COPY_MIN_ROWS;
pub use checkpoints::CheckpointRow;
pub use events::EventRow;
pub use kpis::KpiRow;
pub use outbox::{DisplayValues, NewNotification, NotificationPayload, NotificationRow};
pub use retention::{Cutoffs, Pruned};
pub use revisions::SeriesRevision;
pub use series::{
    AnomalyRow, EvaluationRow, FeedbackRow, LatestEvaluation, NewAnomaly, ObservationRow, SeriesRow,
};
pub use shared::SHARED_READS_FOR;
pub use tokens::TokenRow;

/// Rows per multi-row `INSERT` (a statement binds at most a few thousand values: well under
/// SQLite's 32,766 and PostgreSQL's 65,535).
const ROWS_PER_STATEMENT: usize = 1000;

/// PostgreSQL connections of a store opened by [`Store::connect`].
pub const DEFAULT_POOL_SIZE: u32 = 8;

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Store {
    /// Open (creating if needed) and migrate the state store, with
    /// [`DEFAULT_POOL_SIZE`] PostgreSQL connections.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_sized(url, DEFAULT_POOL_SIZE).await
    }

    /// [`Store::connect`] with at most `pool_size` connections to PostgreSQL (the service
    /// sizes it from its concurrent runs; SQLite keeps its own small pool).
    pub async fn connect_sized(url: &str, pool_size: u32) -> Result<Self> {
        let scheme = url.split(':').next().unwrap_or_default();
        let pool = match scheme {
            "sqlite" => {
                let opts = SqliteConnectOptions::from_str(url)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10))
                    .foreign_keys(true);
                let pool = SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(opts)
                    .await?;
                sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
                Pool::Sqlite(pool)
            }
            "postgres" | "postgresql" => {
                let pool = crate::pool::ping_when_idle(PgPoolOptions::new())
                    .max_connections(pool_size.max(1))
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(url)
                    .await?;
                sqlx::migrate!("./migrations/postgres").run(&pool).await?;
                Pool::Postgres(pool)
            }
            other => return Err(Error::Unsupported(other.to_owned())),
        };
        Ok(Store {
            pool,
            shared: Default::default(),
        })
    }

    /// Whether the store answers.
    pub async fn ping(&self) -> Result<()> {
        run!(self, |pool| {
            sqlx::query("SELECT 1").execute(pool).await?;
            Ok(())
        })
    }

    /// Close the pool (graceful shutdown).
    pub async fn close(&self) {
        run!(self, |pool| {
            pool.close().await;
        })
    }

    /// A value from the `meta` table, inserting `init()` first if absent (race-safe).
    pub async fn meta_get_or_init(&self, key: &str, init: impl FnOnce() -> String) -> Result<String> {
        run!(self, |pool| {
            sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
                .bind(key)
                .bind(init())
                .execute(pool)
                .await?;
            let row = sqlx::query("SELECT value FROM meta WHERE key = $1")
                .bind(key)
                .fetch_one(pool)
                .await?;
            Ok(row.try_get("value")?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The store's one-SQL-text-per-query rule relies on sqlx-sqlite binding `$N` by number
    /// (not by order of appearance), reused numbers included, as PostgreSQL does.
    #[tokio::test]
    async fn sqlite_binds_dollar_placeholders_by_number() {
        let pool = SqlitePool::connect("sqlite::memory:").await.expect("memory db");
        let row = sqlx::query("SELECT $2 AS a, $1 AS b, $2 || $1 AS c, NOT $3 AS d")
            .bind("x")
            .bind("y")
            .bind(true)
            .fetch_one(&pool)
            .await
            .expect("query");
        assert_eq!(row.try_get::<String, _>("a").expect("a"), "y");
        assert_eq!(row.try_get::<String, _>("b").expect("b"), "x");
        assert_eq!(row.try_get::<String, _>("c").expect("c"), "yx");
        assert!(!row.try_get::<bool, _>("d").expect("d"));
    }

    #[tokio::test]
    async fn an_unsupported_scheme_is_refused() {
        let err = Store::connect("mysql://root@localhost/x")
            .await
            .expect_err("refused");
        assert!(matches!(err, Error::Unsupported(ref s) if s == "mysql"), "{err}");
    }
}
