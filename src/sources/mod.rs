//! KPI sources: the databases and metric stores teams already have — PostgreSQL,
//! MySQL/MariaDB and SQLite (SQL), Prometheus (PromQL, [`prometheus`]) and InfluxDB 1.x
//! (InfluxQL, [`influxdb`]).
//!
//! [`SourceRegistry`] holds one [`Source`] per configured name; [`Source::fetch`] runs a KPI
//! query over a half-open window and returns [`RawRow`]s following the query contract:
//! a `ts` (bucket start), then `value` (or `numerator` + `denominator` for ratios), and any
//! other columns (labels, tags) as dimensions — plus any warnings the server gave
//! ([`Fetched`]). After fetching, every kind is the same to the pipeline.
//!
//! Safety against production databases: every SQL query runs in a read-only transaction (a
//! read-only connection for SQLite), with a server-side statement timeout where the driver
//! has one plus a client-side timeout, a row cap, and at most `max_connections` queries at
//! once per source. `:start` and `:end` are bound as parameters, never spliced into the SQL.
//! The HTTP sources (one shared client, `http.rs`) call only query endpoints with GET, under
//! the same timeout, point cap and concurrency limit.
//!
//! An IO edge: knows nothing of the detector, the store or alerting.

mod decode;
mod guard;
mod http;
pub mod influxdb;
mod placeholders;
pub mod prometheus;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use secrecy::ExposeSecret;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::{ConnectOptions, Connection, Executor};

use crate::config::{redact_url, SourceConfig, SourceKind};
use crate::kpi::{Buckets, Kind, Query};

pub use decode::{parse_timestamp, RawRow};
pub use placeholders::{rewrite, Dialect, Param};

/// Why a source query failed. Messages are safe to show users: no credentials.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The KPI names a source that is not configured.
    #[error("no source named {0:?} is configured")]
    UnknownSource(String),
    /// The URL's scheme is not one we speak.
    #[error("source {name:?}: unsupported URL scheme {scheme:?} (use postgres://, mysql://, mariadb:// or sqlite://, or set type = \"prometheus\" or \"influxdb\" for an http(s):// URL)")]
    UnsupportedScheme {
        /// Source name.
        name: String,
        /// The scheme found.
        scheme: String,
    },
    /// The source could not be reached.
    #[error("source {name:?} ({url}) is unreachable: {message}")]
    Unreachable {
        /// Source name.
        name: String,
        /// Redacted URL.
        url: String,
        /// The driver's message.
        message: String,
    },
    /// The database rejected the query.
    #[error("source {name:?} rejected the query: {message}")]
    Query {
        /// Source name.
        name: String,
        /// The database's message.
        message: String,
    },
    /// The query ran longer than the statement timeout.
    #[error("source {name:?}: the query ran longer than {timeout:?} and was cancelled")]
    Timeout {
        /// Source name.
        name: String,
        /// The limit.
        timeout: Duration,
    },
    /// The query returned more rows than allowed.
    #[error("source {name:?}: the query returned more than {cap} rows (row_cap); aggregate in SQL")]
    TooManyRows {
        /// Source name.
        name: String,
        /// The cap.
        cap: usize,
    },
    /// The query ran but its result does not follow the query contract.
    #[error("the query's result does not follow the contract: {0}")]
    Contract(String),
    /// The model's query is in another language than its source speaks.
    #[error("source {name:?} is a {speaks} source: its KPIs need {expected}, not {found}")]
    WrongLanguage {
        /// Source name.
        name: String,
        /// What the source is.
        speaks: &'static str,
        /// The query file(s) it takes.
        expected: &'static str,
        /// The query file(s) the model has.
        found: &'static str,
    },
}

impl Error {
    /// Whether the failure means "data missing" (the source is down or slow) rather than a
    /// broken query.
    pub fn is_outage(&self) -> bool {
        matches!(self, Error::Unreachable { .. } | Error::Timeout { .. })
    }
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A connection pool (or HTTP client) of one of the supported kinds. The set is closed, so
/// an enum.
#[derive(Debug, Clone)]
pub enum SourcePool {
    /// PostgreSQL.
    Postgres(PgPool),
    /// MySQL or MariaDB.
    MySql(MySqlPool),
    /// SQLite, opened read-only.
    Sqlite(SqlitePool),
    /// Prometheus's query API.
    Prometheus(Arc<prometheus::Prometheus>),
    /// InfluxDB 1.x's query API.
    InfluxDb(Arc<influxdb::InfluxDb>),
}

/// What a query returned: rows under the query contract, and the server's warnings (e.g.
/// Prometheus's `warnings`, InfluxDB's statement messages), which reach `kpiwatch check`
/// and the KPI's run status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fetched {
    /// The rows.
    pub rows: Vec<RawRow>,
    /// Warnings, in the server's words.
    pub warnings: Vec<String>,
}

/// One configured source.
#[derive(Debug)]
pub struct Source {
    name: String,
    url: String,
    pool: SourcePool,
    statement_timeout: Duration,
    row_cap: usize,
}

/// The half-open window `[start, end)` a query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Inclusive start.
    pub start: DateTime<Utc>,
    /// Exclusive end.
    pub end: DateTime<Utc>,
}

impl Source {
    /// Build a source from its config. Connections are made lazily, so a source that is down
    /// at startup is reported by [`Source::healthcheck`] and by each run, not fatal.
    pub fn build(name: &str, cfg: &SourceConfig) -> Result<Self> {
        let raw = cfg.url.expose_secret();
        let url = redact_url(&cfg.url);
        let scheme = raw.split(':').next().unwrap_or_default().to_ascii_lowercase();
        let unreachable = |e: sqlx::Error| Error::Unreachable {
            name: name.to_owned(),
            url: url.clone(),
            message: e.to_string(),
        };
        let acquire = Duration::from_secs(5).min(cfg.statement_timeout);
        // Long backfill queries are expected; only warn when a query nears its timeout.
        let slow = cfg.statement_timeout / 2;
        let pool = match (cfg.resolved_kind(), scheme.as_str()) {
            (Some(SourceKind::Prometheus), _) => {
                SourcePool::Prometheus(Arc::new(prometheus::Prometheus::build(name, cfg)?))
            }
            (Some(SourceKind::Influxdb), _) => {
                SourcePool::InfluxDb(Arc::new(influxdb::InfluxDb::build(name, cfg)?))
            }
            (_, "postgres" | "postgresql") => {
                let opts: PgConnectOptions = raw.parse().map_err(unreachable)?;
                let opts = opts
                    .application_name("kpiwatch")
                    .log_slow_statements(log::LevelFilter::Warn, slow);
                SourcePool::Postgres(
                    crate::pool::ping_when_idle(PgPoolOptions::new())
                        .max_connections(cfg.max_connections)
                        .acquire_timeout(acquire)
                        .connect_lazy_with(opts),
                )
            }
            (_, "mysql" | "mariadb") => {
                let fixed = raw.replacen("mariadb:", "mysql:", 1);
                let opts: MySqlConnectOptions = fixed.parse().map_err(unreachable)?;
                let opts = opts.log_slow_statements(log::LevelFilter::Warn, slow);
                SourcePool::MySql(
                    crate::pool::ping_when_idle(MySqlPoolOptions::new())
                        .max_connections(cfg.max_connections)
                        .acquire_timeout(acquire)
                        // A connection goes back to the pool as it came: no transaction, no
                        // named lock held. One that cannot be reset is closed instead.
                        .after_release(|conn, _| {
                            Box::pin(async move {
                                let reset = async {
                                    conn.execute("ROLLBACK").await?;
                                    conn.execute("DO RELEASE_ALL_LOCKS()").await
                                };
                                Ok(reset.await.is_ok())
                            })
                        })
                        .connect_lazy_with(opts),
                )
            }
            (_, "sqlite") => {
                let opts: SqliteConnectOptions = raw.parse().map_err(unreachable)?;
                let opts = opts
                    .read_only(true)
                    .create_if_missing(false)
                    .log_slow_statements(log::LevelFilter::Warn, slow);
                SourcePool::Sqlite(
                    SqlitePoolOptions::new()
                        .max_connections(cfg.max_connections)
                        .acquire_timeout(acquire)
                        .after_connect(|conn, _| {
                            Box::pin(async move {
                                conn.execute("PRAGMA query_only = ON").await?;
                                Ok(())
                            })
                        })
                        .connect_lazy_with(opts),
                )
            }
            (_, other) => {
                return Err(Error::UnsupportedScheme {
                    name: name.to_owned(),
                    scheme: other.to_owned(),
                })
            }
        };
        Ok(Source {
            name: name.to_owned(),
            url,
            pool,
            statement_timeout: cfg.statement_timeout,
            row_cap: cfg.row_cap,
        })
    }

    /// The source's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What speaks at the other end (the registration form picks its query template by it).
    pub fn kind(&self) -> crate::config::SourceKind {
        use crate::config::SourceKind;
        match &self.pool {
            SourcePool::Postgres(_) => SourceKind::Postgres,
            SourcePool::MySql(_) => SourceKind::Mysql,
            SourcePool::Sqlite(_) => SourceKind::Sqlite,
            SourcePool::Prometheus(_) => SourceKind::Prometheus,
            SourcePool::InfluxDb(_) => SourceKind::Influxdb,
        }
    }

    /// The URL with the password redacted.
    pub fn redacted_url(&self) -> &str {
        &self.url
    }

    /// `SELECT 1` (or the HTTP sources' equivalent query), the way a KPI query would reach
    /// the database.
    pub async fn healthcheck(&self) -> Result<()> {
        match &self.pool {
            SourcePool::Prometheus(p) => return p.healthcheck().await,
            SourcePool::InfluxDb(i) => return i.healthcheck().await,
            _ => {}
        }
        let work = async {
            match &self.pool {
                SourcePool::Postgres(p) => p.execute("SELECT 1").await.map(drop),
                SourcePool::MySql(p) => p.execute("SELECT 1").await.map(drop),
                SourcePool::Sqlite(p) => p.execute("SELECT 1").await.map(drop),
                // Answered above, with their own timeout.
                SourcePool::Prometheus(_) | SourcePool::InfluxDb(_) => Ok(()),
            }
        };
        match tokio::time::timeout(self.statement_timeout, work).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.unreachable(e)),
            Err(_) => Err(self.timeout()),
        }
    }

    /// Run a KPI query of `kind` at `buckets` (the KPI's [`KpiSpec::buckets`]) over `window`
    /// and decode its rows. The SQL sources bucket in the query itself; the metric stores
    /// are asked for exactly these buckets, local ones included.
    ///
    /// [`KpiSpec::buckets`]: crate::kpi::KpiSpec::buckets
    pub async fn fetch(
        &self,
        query: &Query,
        kind: Kind,
        buckets: Buckets,
        window: Window,
    ) -> Result<Fetched> {
        let sql = match (&self.pool, query) {
            // The HTTP sources enforce their timeout per request (a window may take several).
            (SourcePool::Prometheus(p), q) => return p.fetch(q, kind, buckets, window).await,
            (SourcePool::InfluxDb(i), q) => return i.fetch(q, kind, buckets, window).await,
            (_, Query::Sql(sql)) => sql.as_str(),
            (_, other) => {
                return Err(Error::WrongLanguage {
                    name: self.name.clone(),
                    speaks: "SQL",
                    expected: "query.sql",
                    found: other.files(),
                })
            }
        };
        let dialect = match &self.pool {
            SourcePool::Postgres(_) => Some(Dialect::Postgres),
            SourcePool::MySql(_) => Some(Dialect::QuestionMark),
            _ => None,
        };
        if let Some(why) = dialect.and_then(|d| guard::forbidden(sql, d)) {
            return Err(Error::Query {
                name: self.name.clone(),
                message: format!("not allowed in a read-only KPI query: {why}"),
            });
        }
        let work = async {
            let rows = match &self.pool {
                SourcePool::Postgres(p) => self.fetch_postgres(p, sql, kind, window).await,
                SourcePool::MySql(p) => self.fetch_mysql(p, sql, kind, window).await,
                SourcePool::Sqlite(p) => self.fetch_sqlite(p, sql, kind, window).await,
                // Answered above, before the SQL timeout.
                SourcePool::Prometheus(_) | SourcePool::InfluxDb(_) => Ok(Vec::new()),
            };
            rows.map(|rows| Fetched {
                rows,
                warnings: Vec::new(),
            })
        };
        // Client-side backstop for the server-side statement timeout (and the only one for
        // SQLite); a little slack so the server's own, clearer error usually wins.
        match tokio::time::timeout(self.statement_timeout + Duration::from_secs(1), work).await {
            Ok(result) => result,
            Err(_) => Err(self.timeout()),
        }
    }

    async fn fetch_postgres(&self, pool: &PgPool, sql: &str, kind: Kind, w: Window) -> Result<Vec<RawRow>> {
        let (text, params) = rewrite(sql, Dialect::Postgres);
        let mut conn = pool.acquire().await.map_err(|e| self.unreachable(e))?;
        // One round trip: a read-only transaction with its limits, before the query.
        let ms = self.statement_timeout.as_millis();
        let begin = format!("BEGIN READ ONLY; SET LOCAL statement_timeout = {ms}; SET LOCAL TIME ZONE 'UTC'");
        let mut tx = conn.begin_with(begin).await.map_err(|e| self.unreachable(e))?;
        let mut query = sqlx::query(&text);
        for p in &params {
            query = query.bind(match p {
                Param::Start => w.start,
                Param::End => w.end,
            });
        }
        let mut rows = Vec::new();
        {
            let mut stream = query.fetch(&mut *tx);
            while let Some(row) = stream.try_next().await.map_err(|e| self.db_error(e))? {
                self.check_cap(rows.len())?;
                rows.push(decode::decode(&row, kind)?);
            }
        }
        // Read-only: nothing to keep.
        tx.rollback().await.map_err(|e| self.db_error(e))?;
        Ok(rows)
    }

    async fn fetch_mysql(&self, pool: &MySqlPool, sql: &str, kind: Kind, w: Window) -> Result<Vec<RawRow>> {
        let (text, params) = rewrite(sql, Dialect::QuestionMark);
        let mut conn = pool.acquire().await.map_err(|e| self.unreachable(e))?;
        (&mut *conn)
            .execute("SET time_zone = '+00:00'")
            .await
            .map_err(|e| self.db_error(e))?;
        // MariaDB names the limit max_statement_time (seconds), MySQL max_execution_time (ms).
        let secs = self.statement_timeout.as_secs_f64();
        let ms = self.statement_timeout.as_millis();
        let mariadb = format!("SET SESSION max_statement_time = {secs}");
        if (&mut *conn).execute(mariadb.as_str()).await.is_err() {
            let mysql = format!("SET SESSION max_execution_time = {ms}");
            (&mut *conn)
                .execute(mysql.as_str())
                .await
                .map_err(|e| self.db_error(e))?;
        }
        (&mut *conn)
            .execute("START TRANSACTION READ ONLY")
            .await
            .map_err(|e| self.db_error(e))?;
        let mut query = sqlx::query(&text);
        for p in &params {
            query = query.bind(match p {
                Param::Start => w.start.naive_utc(),
                Param::End => w.end.naive_utc(),
            });
        }
        let mut rows = Vec::new();
        let result: Result<()> = async {
            let mut stream = query.fetch(&mut *conn);
            while let Some(row) = stream.try_next().await.map_err(|e| self.db_error(e))? {
                self.check_cap(rows.len())?;
                rows.push(decode::decode(&row, kind)?);
            }
            Ok(())
        }
        .await;
        let rollback = (&mut *conn).execute("ROLLBACK").await;
        result?;
        rollback.map_err(|e| self.db_error(e))?;
        Ok(rows)
    }

    async fn fetch_sqlite(&self, pool: &SqlitePool, sql: &str, kind: Kind, w: Window) -> Result<Vec<RawRow>> {
        let (text, params) = rewrite(sql, Dialect::QuestionMark);
        let mut conn = pool.acquire().await.map_err(|e| self.unreachable(e))?;
        let mut query = sqlx::query(&text);
        for p in &params {
            // SQLite has no timestamp type; the convention is `YYYY-MM-DD HH:MM:SS` text,
            // which NaiveDateTime encodes to and which compares correctly as text.
            query = query.bind(match p {
                Param::Start => w.start.naive_utc(),
                Param::End => w.end.naive_utc(),
            });
        }
        let mut rows = Vec::new();
        let mut stream = query.fetch(&mut *conn);
        while let Some(row) = stream.try_next().await.map_err(|e| self.db_error(e))? {
            self.check_cap(rows.len())?;
            rows.push(decode::decode(&row, kind)?);
        }
        Ok(rows)
    }

    fn check_cap(&self, have: usize) -> Result<()> {
        if have >= self.row_cap {
            Err(Error::TooManyRows {
                name: self.name.clone(),
                cap: self.row_cap,
            })
        } else {
            Ok(())
        }
    }

    fn timeout(&self) -> Error {
        Error::Timeout {
            name: self.name.clone(),
            timeout: self.statement_timeout,
        }
    }

    fn unreachable(&self, e: sqlx::Error) -> Error {
        Error::Unreachable {
            name: self.name.clone(),
            url: self.url.clone(),
            message: e.to_string(),
        }
    }

    /// A database error during the query: a connection-level failure is an outage, a
    /// statement timeout is a timeout, anything else is the query's fault.
    fn db_error(&self, e: sqlx::Error) -> Error {
        match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_) => self.unreachable(e),
            sqlx::Error::Database(db) => {
                let msg = db.message().to_owned();
                let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
                // 57014: Postgres query_canceled; 1969/3024: MariaDB/MySQL statement time-outs.
                if code == "57014"
                    || code == "70100"
                    || msg.contains("max_statement_time")
                    || msg.contains("maximum statement execution time")
                {
                    self.timeout()
                } else {
                    Error::Query {
                        name: self.name.clone(),
                        message: msg,
                    }
                }
            }
            _ => Error::Query {
                name: self.name.clone(),
                message: e.to_string(),
            },
        }
    }
}

/// Every configured source by name.
#[derive(Debug, Clone, Default)]
pub struct SourceRegistry {
    sources: BTreeMap<String, Arc<Source>>,
}

impl SourceRegistry {
    /// Build every source in the config; the first bad one is an error naming it.
    pub fn build(configs: &BTreeMap<String, SourceConfig>) -> Result<Self> {
        let mut sources = BTreeMap::new();
        for (name, cfg) in configs {
            sources.insert(name.clone(), Arc::new(Source::build(name, cfg)?));
        }
        Ok(SourceRegistry { sources })
    }

    /// Add (or replace) a source, e.g. the demo's.
    pub fn insert(&mut self, source: Source) {
        self.sources.insert(source.name.clone(), Arc::new(source));
    }

    /// Add a source shared with another registry.
    pub fn insert_shared(&mut self, source: Arc<Source>) {
        self.sources.insert(source.name.clone(), source);
    }

    /// The source called `name`.
    pub fn get(&self, name: &str) -> Result<Arc<Source>> {
        self.sources
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownSource(name.to_owned()))
    }

    /// All sources, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Source>> {
        self.sources.values()
    }
}
