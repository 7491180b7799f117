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

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{FromRow, Row};

use crate::kpi::KpiSpec;

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

mod bulk;
mod checkpoints;
mod events;
mod leases;
mod retention;
mod revisions;
mod tokens;

use bulk::BulkWrite;
pub use bulk::COPY_MIN_ROWS;
pub use checkpoints::CheckpointRow;
pub use events::EventRow;
pub use retention::{Cutoffs, Pruned};
pub use revisions::SeriesRevision;
pub use tokens::TokenRow;

/// One bucket of one series as stored.
#[derive(Debug, Clone, Copy, PartialEq, FromRow, Serialize)]
pub struct ObservationRow {
    /// Bucket start, unix seconds.
    pub ts: i64,
    /// Count, gauge value or numerator.
    pub value: f64,
    /// Denominator for ratios.
    pub denominator: Option<f64>,
}

/// The detector's verdict on one bucket, as stored.
#[derive(Debug, Clone, PartialEq, FromRow, Serialize)]
pub struct EvaluationRow {
    /// Bucket start, unix seconds.
    pub ts: i64,
    /// Observed value in band units (`None` when undefined, e.g. a ratio over 0 attempts).
    pub value: Option<f64>,
    /// Expected value (`None` while warming up).
    pub expected: Option<f64>,
    /// Band lower edge.
    pub lower: Option<f64>,
    /// Band upper edge.
    pub upper: Option<f64>,
    /// Anomaly score in [0, 1].
    pub score: f64,
    /// Whether flagged.
    pub anomaly: bool,
    /// Detector status (`evaluated`, `warming_up`, …).
    pub status: String,
    /// Volume behind the bucket.
    pub volume: f64,
    /// What flagged it (`bucket`, `accumulated`, `empty_run`, `ongoing`), when flagged.
    pub flagged_by: Option<String>,
}

/// A stored series.
#[derive(Debug, Clone, PartialEq, FromRow, Serialize)]
pub struct SeriesRow {
    /// Series id.
    pub id: i64,
    /// Owning KPI.
    pub kpi_id: String,
    /// Dimension values as a JSON object.
    pub dims: String,
    /// Buckets before this were judged.
    pub evaluated_until: Option<i64>,
}

/// Per-KPI bookkeeping.
#[derive(Debug, Clone, PartialEq, FromRow, Serialize)]
pub struct KpiRow {
    /// KPI id.
    pub id: String,
    /// Title.
    pub title: String,
    /// count | ratio | gauge.
    pub kind: String,
    /// Bucket length.
    pub interval_secs: i64,
    /// Source name.
    pub source: String,
    /// Owner.
    pub owner: Option<String>,
    /// Severity.
    pub severity: String,
    /// End of the last fetched window.
    pub fetched_until: Option<i64>,
    /// When it last ran.
    pub last_run_at: Option<i64>,
    /// ok | data_missing | query_error.
    pub last_status: Option<String>,
    /// The last error, safe to show.
    pub last_error: Option<String>,
}

/// A recorded anomaly with its KPI and series.
#[derive(Debug, Clone, PartialEq, FromRow, Serialize)]
pub struct AnomalyRow {
    /// Anomaly id.
    pub id: i64,
    /// KPI id.
    pub kpi_id: String,
    /// Series dimensions (JSON).
    pub dims: String,
    /// Bucket start.
    pub ts: i64,
    /// Observed value.
    pub value: f64,
    /// Expected value.
    pub expected: f64,
    /// Band lower edge.
    pub lower: f64,
    /// Band upper edge.
    pub upper: f64,
    /// Score in [0, 1].
    pub score: f64,
    /// Volume behind the bucket.
    pub volume: f64,
    /// Seasonality used.
    pub seasonality: String,
    /// Whether it was within the alert horizon (live) rather than backfilled history.
    pub alerted: bool,
    /// What flagged it (`bucket`, `accumulated`, `empty_run`, `ongoing`; `None` for rows
    /// stored before this was recorded).
    pub flagged_by: Option<String>,
    /// `below` or `above` the band.
    pub side: Option<String>,
}

/// An alert (incident) row.
#[derive(Debug, Clone, PartialEq, FromRow, Serialize)]
pub struct AlertRow {
    /// Alert id (0 before it is stored).
    pub id: i64,
    /// KPI.
    pub kpi_id: String,
    /// Series; `None` for KPI-level alerts (data missing).
    pub series_id: Option<i64>,
    /// anomaly | data_missing.
    pub kind: String,
    /// Stable identity: kind + KPI + dimension values.
    pub fingerprint: String,
    /// pending | firing | resolved | cancelled.
    pub state: String,
    /// info | warning | critical.
    pub severity: String,
    /// First anomalous bucket.
    pub started_ts: i64,
    /// Latest anomalous bucket.
    pub last_anomaly_ts: i64,
    /// Pending: flags of the last M judged buckets.
    pub hits_mask: i64,
    /// Pending: judged buckets since it opened.
    pub seen: i64,
    /// Consecutive in-band buckets.
    pub ok_streak: i64,
    /// When the last message went out.
    pub notified_at: Option<i64>,
    /// Reminders sent.
    pub repeats: i64,
    /// Bucket at which it resolved.
    pub resolved_ts: Option<i64>,
    /// Who acknowledged it.
    pub acknowledged_by: Option<String>,
    /// When.
    pub acknowledged_at: Option<i64>,
    /// Latest explanation line.
    pub summary: String,
}

impl AlertRow {
    /// A new, not yet stored alert that started at bucket `started_ts`; the lifecycle fills
    /// in its state.
    pub fn new(kpi_id: &str, series_id: Option<i64>, kind: &str, fingerprint: &str, started_ts: i64) -> Self {
        AlertRow {
            id: 0,
            kpi_id: kpi_id.to_owned(),
            series_id,
            kind: kind.to_owned(),
            fingerprint: fingerprint.to_owned(),
            state: "pending".to_owned(),
            severity: String::new(),
            started_ts,
            last_anomaly_ts: started_ts,
            hits_mask: 0,
            seen: 0,
            ok_streak: 0,
            notified_at: None,
            repeats: 0,
            resolved_ts: None,
            acknowledged_by: None,
            acknowledged_at: None,
            summary: String::new(),
        }
    }
}

/// A queued or sent notification.
#[derive(Debug, Clone, PartialEq, FromRow, Serialize)]
pub struct NotificationRow {
    /// Id.
    pub id: i64,
    /// Alert (`None` for a digest).
    pub alert_id: Option<i64>,
    /// firing | resolved | … | digest:DATE.
    pub event: String,
    /// Channel (email).
    pub channel: String,
    /// Recipient address.
    pub recipient: String,
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
    /// pending | sent.
    pub status: String,
    /// Delivery attempts so far.
    pub attempts: i64,
    /// JSON [`NotificationPayload`].
    pub payload: Option<String>,
    /// Grouping key.
    pub group_key: String,
}

/// A new anomaly to record.
#[derive(Debug, Clone)]
pub struct NewAnomaly {
    /// Bucket start.
    pub ts: i64,
    /// Observed value.
    pub value: f64,
    /// Expected value.
    pub expected: f64,
    /// Band lower edge.
    pub lower: f64,
    /// Band upper edge.
    pub upper: f64,
    /// Score.
    pub score: f64,
    /// Volume.
    pub volume: f64,
    /// Seasonality used.
    pub seasonality: String,
    /// Within the alert horizon.
    pub alerted: bool,
    /// What flagged it (`bucket`, `accumulated`, `empty_run`, `ongoing`).
    pub flagged_by: Option<String>,
    /// `below` or `above` the band.
    pub side: Option<String>,
}

/// A message to queue for delivery.
#[derive(Debug, Clone)]
pub struct NewNotification {
    /// Channel (email).
    pub channel: String,
    /// Recipient.
    pub recipient: String,
    /// Subject.
    pub subject: String,
    /// Body.
    pub body: String,
    /// Why it is recorded but not sent (a silence or maintenance window), if so.
    pub suppressed_by: Option<String>,
    /// What HTTP channels render from.
    pub payload: Option<NotificationPayload>,
    /// Messages with the same channel, recipient and group key may go out as one.
    pub group_key: String,
    /// Not before this time (group wait).
    pub not_before: i64,
}

/// The facts of one notification, stored as JSON with it so the outbox worker can render
/// it for any channel after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct NotificationPayload {
    /// firing | resolved (repeats and escalations are firing).
    pub resolved: bool,
    /// Stable per series (dedup key / alias).
    pub fingerprint: String,
    /// KPI id.
    pub kpi_id: String,
    /// KPI title.
    pub kpi_title: String,
    /// Dimension values.
    pub series: BTreeMap<String, String>,
    /// Severity.
    pub severity: String,
    /// Owner.
    pub owner: Option<String>,
    /// Model labels.
    pub labels: BTreeMap<String, String>,
    /// Observed value (NaN when there is none, e.g. data missing: stored as `null`).
    #[serde(deserialize_with = "nan_if_null")]
    pub value: f64,
    /// Expected value.
    #[serde(deserialize_with = "nan_if_null")]
    pub expected: f64,
    /// Band lower edge.
    #[serde(deserialize_with = "nan_if_null")]
    pub lower: f64,
    /// Band upper edge.
    #[serde(deserialize_with = "nan_if_null")]
    pub upper: f64,
    /// Volume.
    #[serde(deserialize_with = "nan_if_null")]
    pub volume: f64,
    /// Incident start, unix seconds.
    pub started_ts: i64,
    /// Bucket, unix seconds.
    pub bucket_ts: i64,
    /// Resolution, unix seconds.
    pub resolved_ts: Option<i64>,
    /// Link to the KPI's page in the web UI, focused on the incident.
    #[serde(alias = "series_url")]
    pub kpi_url: String,
    /// The numbers as people read them (the KPI's kind and unit applied).
    #[serde(default)]
    pub display: DisplayValues,
    /// Signed acknowledge link.
    pub ack_url: Option<String>,
    /// Signed silence link.
    #[serde(default)]
    pub silence_url: Option<String>,
}

/// JSON has no NaN: serde_json writes a NaN `f64` as `null`, and this reads it back as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(<Option<f64> as serde::Deserialize>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// The numbers of a notification, formatted for people (see `format::ValueFormat`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct DisplayValues {
    /// Observed value, e.g. `40.00%`.
    pub value: String,
    /// Expected value.
    pub expected: String,
    /// `lower – upper`.
    pub band: String,
    /// Difference to expected: `-57.0 points` for ratios, `-18.2%` otherwise; may be empty.
    pub change: String,
    /// Volume with thousands separators.
    pub volume: String,
}

/// A silence as stored.
#[derive(Debug, Clone, PartialEq, FromRow, Serialize)]
pub struct SilenceRow {
    /// Id.
    pub id: i64,
    /// Matchers as a JSON object.
    pub matchers: String,
    /// Start, unix seconds.
    pub starts_at: i64,
    /// End, unix seconds.
    pub ends_at: i64,
    /// Who made it.
    pub author: String,
    /// Why.
    pub comment: String,
}

const ALERT_COLUMNS: &str = "id, kpi_id, series_id, kind, fingerprint, state, severity, started_ts, last_anomaly_ts, \
     hits_mask, seen, ok_streak, notified_at, repeats, resolved_ts, acknowledged_by, acknowledged_at, summary";

/// Rows per multi-row `INSERT` (a statement binds at most a few thousand values: well under
/// SQLite's 32,766 and PostgreSQL's 65,535).
const ROWS_PER_STATEMENT: usize = 1000;

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Store {
    /// Open (creating if needed) and migrate the state store.
    pub async fn connect(url: &str) -> Result<Self> {
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
                let pool = PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(url)
                    .await?;
                sqlx::migrate!("./migrations/postgres").run(&pool).await?;
                Pool::Postgres(pool)
            }
            other => return Err(Error::Unsupported(other.to_owned())),
        };
        Ok(Store { pool })
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

    /// Register or refresh a KPI's descriptive columns; keeps its progress.
    ///
    /// When the KPI's bucket length, alignment (`kpi::Buckets`: the timezone of buckets of an
    /// hour or more) or kind changed, its stored buckets and verdicts no longer mean the same
    /// thing: they are dropped (anomalies, alerts and the audit trail stay),
    /// pending incidents are cancelled (firing ones stay open for the next runs to continue or
    /// resolve), and the next run backfills at the new definition. Returns
    /// whether that happened.
    pub async fn upsert_kpi(&self, spec: &KpiSpec) -> Result<bool> {
        run!(self, |pool| {
            let now = now_secs();
            let mut tx = pool.begin().await?;
            let grid = spec.buckets();
            let bucket_tz = grid.is_local().then(|| spec.timezone.name().to_owned());
            let before = sqlx::query("SELECT kind, interval_secs, bucket_tz FROM kpis WHERE id = $1")
                .bind(spec.id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            let changed = match before {
                Some(row) => {
                    let kind: String = row.try_get("kind")?;
                    let interval: i64 = row.try_get("interval_secs")?;
                    let tz: Option<String> = row.try_get("bucket_tz")?;
                    kind != spec.kind.to_string() || interval != spec.interval.secs_i64() || tz != bucket_tz
                }
                None => false,
            };
            if changed {
                let by_series = "(SELECT id FROM series WHERE kpi_id = $1)";
                for sql in [
                    format!("DELETE FROM evaluations WHERE series_id IN {by_series}"),
                    format!("DELETE FROM observations WHERE series_id IN {by_series}"),
                    format!("DELETE FROM anomaly_feedback WHERE series_id IN {by_series}"),
                    format!("DELETE FROM detector_checkpoints WHERE series_id IN {by_series}"),
                    "UPDATE series SET evaluated_until = NULL, obs_rev = obs_rev + 1 WHERE kpi_id = $1"
                        .to_owned(),
                    // A pending incident told nobody and is dropped; a firing one stays open, so
                    // the next runs at the new definition continue it (no second page) or resolve
                    // it with a message.
                    "UPDATE alerts SET state = 'cancelled' WHERE kpi_id = $1 AND state = 'pending'"
                        .to_owned(),
                    "UPDATE kpis SET fetched_until = NULL WHERE id = $1".to_owned(),
                ] {
                    sqlx::query(&sql).bind(spec.id.as_str()).execute(&mut *tx).await?;
                }
            }
            sqlx::query(
                "INSERT INTO kpis (id, title, kind, interval_secs, source, origin, owner, severity, created_at, updated_at, bucket_tz)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                 ON CONFLICT (id) DO UPDATE SET title = excluded.title, kind = excluded.kind,
                   interval_secs = excluded.interval_secs, bucket_tz = excluded.bucket_tz,
                   source = excluded.source, origin = excluded.origin,
                   owner = excluded.owner, severity = excluded.severity, updated_at = excluded.updated_at",
            )
            .bind(spec.id.as_str())
            .bind(&spec.title)
            .bind(spec.kind.to_string())
            .bind(spec.interval.secs_i64())
            .bind(&spec.source)
            .bind(&spec.origin)
            .bind(&spec.owner)
            .bind(spec.severity.to_string())
            .bind(now)
            .bind(now)
            .bind(&bucket_tz)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(changed)
        })
    }

    /// One KPI's bookkeeping row.
    pub async fn kpi(&self, id: &str) -> Result<Option<KpiRow>> {
        run!(self, |pool| {
            Ok(sqlx::query_as::<_, KpiRow>(
                "SELECT id, title, kind, interval_secs, source, owner, severity, fetched_until, last_run_at, last_status, last_error FROM kpis WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(pool)
            .await?)
        })
    }

    /// Every KPI's bookkeeping row.
    pub async fn kpis(&self) -> Result<Vec<KpiRow>> {
        run!(self, |pool| {
            Ok(sqlx::query_as::<_, KpiRow>(
                "SELECT id, title, kind, interval_secs, source, owner, severity, fetched_until, last_run_at, last_status, last_error FROM kpis ORDER BY id",
            )
            .fetch_all(pool)
            .await?)
        })
    }

    /// Record a run's outcome; on success also advance `fetched_until`.
    pub async fn record_run(
        &self,
        kpi_id: &str,
        started_at: i64,
        window: (i64, i64),
        status: &str,
        rows: i64,
        error: Option<&str>,
    ) -> Result<()> {
        run!(self, |pool| {
            let now = now_secs();
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO runs (kpi_id, started_at, finished_at, window_start, window_end, status, rows, error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(kpi_id)
            .bind(started_at)
            .bind(now)
            .bind(window.0)
            .bind(window.1)
            .bind(status)
            .bind(rows)
            .bind(error)
            .execute(&mut *tx)
            .await?;
            let advance = status == "ok";
            sqlx::query(
                "UPDATE kpis SET last_run_at = $1, last_status = $2, last_error = $3,
               fetched_until = CASE WHEN NOT $4 THEN fetched_until
                 WHEN coalesce(fetched_until, 0) > $5 THEN coalesce(fetched_until, 0) ELSE $5 END
             WHERE id = $6",
            )
            .bind(started_at)
            .bind(status)
            .bind(error)
            .bind(advance)
            .bind(window.1)
            .bind(kpi_id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// The series of a KPI.
    pub async fn series_of(&self, kpi_id: &str) -> Result<Vec<SeriesRow>> {
        run!(self, |pool| {
            Ok(sqlx::query_as::<_, SeriesRow>(
                "SELECT id, kpi_id, dims, evaluated_until FROM series WHERE kpi_id = $1 ORDER BY id",
            )
            .bind(kpi_id)
            .fetch_all(pool)
            .await?)
        })
    }

    /// Get or create the series of `kpi_id` with these dimensions (canonical JSON).
    pub async fn series_id(&self, kpi_id: &str, dims: &str) -> Result<i64> {
        run!(self, |pool| {
            sqlx::query(
                "INSERT INTO series (kpi_id, dims) VALUES ($1, $2) ON CONFLICT (kpi_id, dims) DO NOTHING",
            )
            .bind(kpi_id)
            .bind(dims)
            .execute(pool)
            .await?;
            let row = sqlx::query("SELECT id FROM series WHERE kpi_id = $1 AND dims = $2")
                .bind(kpi_id)
                .bind(dims)
                .fetch_one(pool)
                .await?;
            Ok(row.try_get("id")?)
        })
    }

    /// Insert or update buckets (late rows and restated data overwrite; idempotent), in one
    /// transaction: multi-row statements of up to `ROWS_PER_STATEMENT` rows, or on PostgreSQL
    /// from [`COPY_MIN_ROWS`] rows on `COPY` (see `bulk`; the same rows result).
    pub async fn upsert_observations(&self, series_id: i64, rows: &[ObservationRow]) -> Result<()> {
        run!(self, |pool| {
            let now = now_secs();
            let mut tx = pool.begin().await?;
            let copied = tx.bulk_observations(series_id, rows, now).await?;
            for chunk in rows.chunks(ROWS_PER_STATEMENT).filter(|_| !copied) {
                let mut q = sqlx::QueryBuilder::new(
                    "INSERT INTO observations (series_id, ts, value, denominator, updated_at) ",
                );
                q.push_values(chunk, |mut b, r| {
                    b.push_bind(series_id)
                        .push_bind(r.ts)
                        .push_bind(r.value)
                        .push_bind(r.denominator)
                        .push_bind(now);
                });
                q.push(
                    " ON CONFLICT (series_id, ts) DO UPDATE SET value = excluded.value,
                       denominator = excluded.denominator, updated_at = excluded.updated_at",
                );
                q.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Stored buckets of a series in `[from, to)`, in time order.
    pub async fn observations(&self, series_id: i64, from: i64, to: i64) -> Result<Vec<ObservationRow>> {
        run!(self, |pool| {
            Ok(sqlx::query_as::<_, ObservationRow>(
                "SELECT ts, value, denominator FROM observations WHERE series_id = $1 AND ts >= $2 AND ts < $3 ORDER BY ts",
            )
            .bind(series_id)
            .bind(from)
            .bind(to)
            .fetch_all(pool)
            .await?)
        })
    }

    /// Store the detector's verdicts and anomalies for new buckets and move the series'
    /// `evaluated_until`, in one transaction. Verdicts as in [`Store::upsert_observations`]
    /// (`COPY` on PostgreSQL from [`COPY_MIN_ROWS`] rows); anomalies always as `INSERT`s.
    pub async fn save_evaluations(
        &self,
        series_id: i64,
        evaluations: &[EvaluationRow],
        anomalies: &[NewAnomaly],
        evaluated_until: i64,
    ) -> Result<()> {
        run!(self, |pool| {
            let now = now_secs();
            let mut tx = pool.begin().await?;
            let copied = tx.bulk_evaluations(series_id, evaluations).await?;
            for chunk in evaluations.chunks(ROWS_PER_STATEMENT / 2).filter(|_| !copied) {
                let mut q = sqlx::QueryBuilder::new(
                    "INSERT INTO evaluations (series_id, ts, value, expected, lower, upper, score, anomaly, status, volume, flagged_by) ",
                );
                q.push_values(chunk, |mut b, e| {
                    b.push_bind(series_id)
                        .push_bind(e.ts)
                        .push_bind(e.value)
                        .push_bind(e.expected)
                        .push_bind(e.lower)
                        .push_bind(e.upper)
                        .push_bind(e.score)
                        .push_bind(e.anomaly)
                        .push_bind(&e.status)
                        .push_bind(e.volume)
                        .push_bind(&e.flagged_by);
                });
                q.push(
                    " ON CONFLICT (series_id, ts) DO UPDATE SET value = excluded.value, expected = excluded.expected,
                       lower = excluded.lower, upper = excluded.upper, score = excluded.score,
                       anomaly = excluded.anomaly, status = excluded.status, volume = excluded.volume,
                       flagged_by = excluded.flagged_by",
                );
                q.build().execute(&mut *tx).await?;
            }
            for chunk in anomalies.chunks(ROWS_PER_STATEMENT / 2) {
                let mut q = sqlx::QueryBuilder::new(
                    "INSERT INTO anomalies (series_id, ts, value, expected, lower, upper, score, volume, seasonality, alerted, created_at, flagged_by, side) ",
                );
                q.push_values(chunk, |mut b, a| {
                    b.push_bind(series_id)
                        .push_bind(a.ts)
                        .push_bind(a.value)
                        .push_bind(a.expected)
                        .push_bind(a.lower)
                        .push_bind(a.upper)
                        .push_bind(a.score)
                        .push_bind(a.volume)
                        .push_bind(&a.seasonality)
                        .push_bind(a.alerted)
                        .push_bind(now)
                        .push_bind(&a.flagged_by)
                        .push_bind(&a.side);
                });
                q.push(" ON CONFLICT (series_id, ts) DO NOTHING");
                q.build().execute(&mut *tx).await?;
            }
            sqlx::query("UPDATE series SET evaluated_until = CASE WHEN coalesce(evaluated_until, 0) > $1 THEN coalesce(evaluated_until, 0) ELSE $1 END WHERE id = $2")
            .bind(evaluated_until)
            .bind(series_id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Stored verdicts of a series in `[from, to)`.
    pub async fn evaluations(&self, series_id: i64, from: i64, to: i64) -> Result<Vec<EvaluationRow>> {
        run!(self, |pool| {
            Ok(sqlx::query_as::<_, EvaluationRow>(
                "SELECT ts, value, expected, lower, upper, score, anomaly, status, volume, flagged_by FROM evaluations
             WHERE series_id = $1 AND ts >= $2 AND ts < $3 ORDER BY ts",
            )
            .bind(series_id)
            .bind(from)
            .bind(to)
            .fetch_all(pool)
            .await?)
        })
    }

    /// Anomalies, newest first, optionally of one KPI and since a time.
    pub async fn anomalies(
        &self,
        kpi_id: Option<&str>,
        since: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AnomalyRow>> {
        run!(self, |pool| {
            Ok(sqlx::query_as::<_, AnomalyRow>(
                "SELECT a.id, s.kpi_id, s.dims, a.ts, a.value, a.expected, a.lower, a.upper, a.score, a.volume,
                        a.seasonality, a.alerted, a.flagged_by, a.side
                 FROM anomalies a JOIN series s ON s.id = a.series_id
                 WHERE ($1 IS NULL OR s.kpi_id = $2) AND ($3 IS NULL OR a.ts >= $4)
                 ORDER BY a.ts DESC, a.id DESC LIMIT $5",
            )
            .bind(kpi_id)
            .bind(kpi_id)
            .bind(since)
            .bind(since)
            .bind(limit)
            .fetch_all(pool)
            .await?)
        })
    }

    /// The open (pending or firing) alert with this fingerprint, if any.
    pub async fn open_alert(&self, fingerprint: &str) -> Result<Option<AlertRow>> {
        run!(self, |pool| {
            Ok(sqlx::query_as::<_, AlertRow>(&format!(
                "SELECT {ALERT_COLUMNS} FROM alerts WHERE fingerprint = $1 AND state IN ('pending', 'firing')"
            ))
            .bind(fingerprint)
            .fetch_optional(pool)
            .await?)
        })
    }

    /// One alert.
    pub async fn alert(&self, id: i64) -> Result<Option<AlertRow>> {
        run!(self, |pool| {
            Ok(
                sqlx::query_as::<_, AlertRow>(&format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(pool)
                    .await?,
            )
        })
    }

    /// Alerts, newest first; only open ones if `open_only`.
    pub async fn alerts(&self, open_only: bool, limit: i64) -> Result<Vec<AlertRow>> {
        run!(self, |pool| {
            Ok(sqlx::query_as::<_, AlertRow>(&format!(
                "SELECT {ALERT_COLUMNS} FROM alerts WHERE (NOT $1 OR state IN ('pending', 'firing')) ORDER BY id DESC LIMIT $2"
            ))
            .bind(open_only)
            .bind(limit)
            .fetch_all(pool)
            .await?)
        })
    }

    /// How many alerts are firing, in the whole store (every replica's).
    pub async fn count_firing_alerts(&self) -> Result<i64> {
        run!(self, |pool| {
            Ok(
                sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM alerts WHERE state = 'firing'")
                    .fetch_one(pool)
                    .await?,
            )
        })
    }

    /// Insert (`id == 0`) or update an alert and queue the notifications of `event`, in one
    /// transaction. Returns the alert's id.
    pub async fn save_alert(
        &self,
        alert: &AlertRow,
        event: Option<&str>,
        notify: &[NewNotification],
    ) -> Result<i64> {
        run!(self, |pool| {
            let now = now_secs();
            let mut tx = pool.begin().await?;
            let id = if alert.id == 0 {
                let row = sqlx::query(
                    "INSERT INTO alerts (kpi_id, series_id, kind, fingerprint, state, severity, started_ts, last_anomaly_ts,
                       hits_mask, seen, ok_streak, notified_at, repeats, resolved_ts, summary, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) RETURNING id",
                )
                .bind(&alert.kpi_id)
                .bind(alert.series_id)
                .bind(&alert.kind)
                .bind(&alert.fingerprint)
                .bind(&alert.state)
                .bind(&alert.severity)
                .bind(alert.started_ts)
                .bind(alert.last_anomaly_ts)
                .bind(alert.hits_mask)
                .bind(alert.seen)
                .bind(alert.ok_streak)
                .bind(alert.notified_at)
                .bind(alert.repeats)
                .bind(alert.resolved_ts)
                .bind(&alert.summary)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                row.try_get::<i64, _>("id")?
            } else {
                // Acknowledgement is owned by `ack_alert`; it is not overwritten here.
                sqlx::query(
                    "UPDATE alerts SET state = $1, severity = $2, last_anomaly_ts = $3, hits_mask = $4, seen = $5,
                       ok_streak = $6, notified_at = $7, repeats = $8, resolved_ts = $9, summary = $10 WHERE id = $11",
                )
                .bind(&alert.state)
                .bind(&alert.severity)
                .bind(alert.last_anomaly_ts)
                .bind(alert.hits_mask)
                .bind(alert.seen)
                .bind(alert.ok_streak)
                .bind(alert.notified_at)
                .bind(alert.repeats)
                .bind(alert.resolved_ts)
                .bind(&alert.summary)
                .bind(alert.id)
                .execute(&mut *tx)
                .await?;
                alert.id
            };
            if let Some(event) = event {
                for n in notify {
                    sqlx::query(
                        "INSERT INTO notifications (alert_id, event, channel, recipient, subject, body, status, suppressed_by, payload,
                           group_key, next_attempt_at, created_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT DO NOTHING",
                    )
                    .bind(id)
                    .bind(event)
                    .bind(&n.channel)
                    .bind(&n.recipient)
                    .bind(&n.subject)
                    .bind(&n.body)
                    .bind(if n.suppressed_by.is_some() { "silenced" } else { "pending" })
                    .bind(&n.suppressed_by)
                    .bind(n.payload.as_ref().and_then(|p| serde_json::to_string(p).ok()))
                    .bind(&n.group_key)
                    .bind(n.not_before)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            tx.commit().await?;
            Ok(id)
        })
    }

    /// Acknowledge an open alert; returns whether it was open.
    pub async fn ack_alert(&self, id: i64, by: &str) -> Result<bool> {
        run!(self, |pool| {
            let done = sqlx::query(
                "UPDATE alerts SET acknowledged_by = coalesce(acknowledged_by, $1), acknowledged_at = coalesce(acknowledged_at, $2)
                 WHERE id = $3 AND state IN ('pending', 'firing')",
            )
            .bind(by)
            .bind(now_secs())
            .bind(id)
            .execute(pool)
            .await?;
            Ok(done.rows_affected() > 0)
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

    /// Claim the notifications due at `now` for `holder` until `claim_until` (wall clock),
    /// oldest first: rows another live process claimed are skipped, so with several
    /// processes on one store each message is worked by one of them; a claim left by a
    /// process that died expires and the row is claimed again.
    pub async fn claim_notifications(
        &self,
        holder: &str,
        now: i64,
        claim_until: i64,
        limit: i64,
    ) -> Result<Vec<NotificationRow>> {
        let wall = now_secs();
        run!(self, |pool| {
            // The outer conditions are re-checked on each row when it is locked (PostgreSQL
            // re-evaluates them after a concurrent update), so two claimers cannot both win.
            Ok(sqlx::query_as::<_, NotificationRow>(
                "UPDATE notifications SET claimed_by = $1, claim_until = $2
                 WHERE id IN (SELECT id FROM notifications
                              WHERE status = 'pending' AND next_attempt_at <= $3
                                AND (claim_until IS NULL OR claim_until < $4)
                              ORDER BY id LIMIT $5)
                   AND status = 'pending' AND (claim_until IS NULL OR claim_until < $4)
                 RETURNING id, alert_id, event, channel, recipient, subject, body, status, attempts, payload, group_key",
            )
            .bind(holder)
            .bind(claim_until)
            .bind(now)
            .bind(wall)
            .bind(limit)
            .fetch_all(pool)
            .await?)
        })
    }

    /// Extend `holder`'s live claims on the notifications `ids` to `claim_until` (wall clock),
    /// while their delivery is still under way. A claim already released (the row's outcome
    /// recorded) or expired (another process may have taken it) is left alone. Returns how
    /// many claims were renewed.
    pub async fn renew_claims(&self, holder: &str, ids: &[i64], claim_until: i64) -> Result<u64> {
        let wall = now_secs();
        run!(self, |pool| {
            let mut tx = pool.begin().await?;
            let mut renewed = 0;
            for id in ids {
                renewed += sqlx::query(
                    "UPDATE notifications SET claim_until = $1
                     WHERE id = $2 AND claimed_by = $3 AND status = 'pending' AND claim_until >= $4",
                )
                .bind(claim_until)
                .bind(id)
                .bind(holder)
                .bind(wall)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            }
            tx.commit().await?;
            Ok(renewed)
        })
    }

    /// Notifications due for a delivery attempt at `now`, oldest first (a read-only view:
    /// delivery goes through [`Store::claim_notifications`]).
    pub async fn pending_notifications(&self, now: i64, limit: i64) -> Result<Vec<NotificationRow>> {
        run!(self, |pool| {
            Ok(sqlx::query_as::<_, NotificationRow>(
                "SELECT id, alert_id, event, channel, recipient, subject, body, status, attempts, payload, group_key FROM notifications
                 WHERE status = 'pending' AND next_attempt_at <= $1 ORDER BY id LIMIT $2",
            )
            .bind(now)
            .bind(limit)
            .fetch_all(pool)
            .await?)
        })
    }

    /// Take a named lease for `holder` for `ttl_secs` (wall clock) if it is free, expired or
    /// already held by `holder`; returns whether `holder` holds it now.
    pub async fn try_lease(&self, name: &str, holder: &str, ttl_secs: i64) -> Result<bool> {
        let now = now_secs();
        run!(self, |pool| {
            let done = sqlx::query(
                "INSERT INTO leases (name, holder, until) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until
                 WHERE leases.until < $4 OR leases.holder = excluded.holder",
            )
            .bind(name)
            .bind(holder)
            .bind(now + ttl_secs)
            .bind(now)
            .execute(pool)
            .await?;
            Ok(done.rows_affected() > 0)
        })
    }

    /// Give a lease back (only if `holder` holds it).
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        run!(self, |pool| {
            sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
                .bind(name)
                .bind(holder)
                .execute(pool)
                .await?;
            Ok(())
        })
    }

    /// Every notification, oldest first (for the API and tests).
    pub async fn notifications(&self) -> Result<Vec<NotificationRow>> {
        run!(self, |pool| {
            Ok(sqlx::query_as::<_, NotificationRow>(
                "SELECT id, alert_id, event, channel, recipient, subject, body, status, attempts, payload, group_key FROM notifications ORDER BY id",
            )
            .fetch_all(pool)
            .await?)
        })
    }

    /// Mark a notification delivered.
    pub async fn mark_sent(&self, id: i64) -> Result<()> {
        run!(self, |pool| {
            sqlx::query(
                "UPDATE notifications SET status = 'sent', sent_at = $1, attempts = attempts + 1 WHERE id = $2",
            )
            .bind(now_secs())
            .bind(id)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// Record a failed delivery attempt: retried at `retry_at`, or given up (`None`).
    pub async fn mark_failed(&self, id: i64, error: &str, retry_at: Option<i64>) -> Result<()> {
        run!(self, |pool| {
            sqlx::query(
                "UPDATE notifications SET attempts = attempts + 1, last_error = $1,
               status = CASE WHEN $2 IS NULL THEN 'failed' ELSE status END,
               next_attempt_at = coalesce($3, next_attempt_at), claim_until = NULL WHERE id = $4",
            )
            .bind(error)
            .bind(retry_at)
            .bind(retry_at)
            .bind(id)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// Create a silence; returns its id.
    pub async fn create_silence(
        &self,
        matchers: &str,
        starts_at: i64,
        ends_at: i64,
        author: &str,
        comment: &str,
    ) -> Result<i64> {
        run!(self, |pool| {
            let row = sqlx::query(
                "INSERT INTO silences (matchers, starts_at, ends_at, author, comment, created_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            )
            .bind(matchers)
            .bind(starts_at)
            .bind(ends_at)
            .bind(author)
            .bind(comment)
            .bind(now_secs())
            .fetch_one(pool)
            .await?;
            Ok(row.try_get("id")?)
        })
    }

    /// Silences that end after `since`, newest first.
    pub async fn silences(&self, since: i64) -> Result<Vec<SilenceRow>> {
        run!(self, |pool| {
            Ok(sqlx::query_as::<_, SilenceRow>(
                "SELECT id, matchers, starts_at, ends_at, author, comment FROM silences WHERE ends_at > $1 ORDER BY id DESC",
            )
            .bind(since)
            .fetch_all(pool)
            .await?)
        })
    }

    /// End a silence at `now` (if it ends later); returns whether it existed.
    pub async fn expire_silence(&self, id: i64, now: i64) -> Result<bool> {
        run!(self, |pool| {
            let done = sqlx::query(
                "UPDATE silences SET ends_at = CASE WHEN ends_at < $1 THEN ends_at ELSE $1 END WHERE id = $2",
            )
            .bind(now)
            .bind(id)
            .execute(pool)
            .await?;
            Ok(done.rows_affected() > 0)
        })
    }

    /// When a message about this group last went to this recipient.
    pub async fn group_last_sent(
        &self,
        channel: &str,
        recipient: &str,
        group_key: &str,
    ) -> Result<Option<i64>> {
        run!(self, |pool| {
            let row = sqlx::query(
                "SELECT last_sent_at FROM notification_groups WHERE channel = $1 AND recipient = $2 AND group_key = $3",
            )
            .bind(channel)
            .bind(recipient)
            .bind(group_key)
            .fetch_optional(pool)
            .await?;
            Ok(match row {
                Some(r) => Some(r.try_get("last_sent_at")?),
                None => None,
            })
        })
    }

    /// Hold notifications back until `until` (group interval).
    pub async fn postpone(&self, ids: &[i64], until: i64) -> Result<()> {
        run!(self, |pool| {
            let mut tx = pool.begin().await?;
            for id in ids {
                sqlx::query("UPDATE notifications SET next_attempt_at = CASE WHEN next_attempt_at > $1 THEN next_attempt_at ELSE $1 END, claim_until = NULL WHERE id = $2")
                .bind(until)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Mark several notifications delivered as one grouped message, in one transaction.
    pub async fn mark_group_sent(
        &self,
        ids: &[i64],
        channel: &str,
        recipient: &str,
        group_key: &str,
        now: i64,
    ) -> Result<()> {
        run!(self, |pool| {
            let mut tx = pool.begin().await?;
            for id in ids {
                sqlx::query(
                    "UPDATE notifications SET status = 'sent', sent_at = $1, attempts = attempts + 1 WHERE id = $2",
                )
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query(
                "INSERT INTO notification_groups (channel, recipient, group_key, last_sent_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (channel, recipient, group_key) DO UPDATE SET last_sent_at = excluded.last_sent_at",
            )
            .bind(channel)
            .bind(recipient)
            .bind(group_key)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// The dimension values (JSON) of a series.
    pub async fn series_dims(&self, series_id: i64) -> Result<Option<String>> {
        run!(self, |pool| {
            let row = sqlx::query("SELECT dims FROM series WHERE id = $1")
                .bind(series_id)
                .fetch_optional(pool)
                .await?;
            Ok(match row {
                Some(r) => Some(r.try_get("dims")?),
                None => None,
            })
        })
    }

    /// Alerts of a KPI that were firing at some point in `[from, to)` (pending and
    /// cancelled ones never told anyone and are left out).
    pub async fn alerts_between(&self, kpi_id: &str, from: i64, to: i64) -> Result<Vec<AlertRow>> {
        run!(self, |pool| {
            Ok(sqlx::query_as::<_, AlertRow>(&format!(
                "SELECT {ALERT_COLUMNS} FROM alerts WHERE kpi_id = $1 AND state IN ('firing', 'resolved')
               AND started_ts < $2 AND (resolved_ts IS NULL OR resolved_ts >= $3) ORDER BY started_ts"
            ))
            .bind(kpi_id)
            .bind(to)
            .bind(from)
            .fetch_all(pool)
            .await?)
        })
    }

    /// Whether an alert's messages were held back by a silence or maintenance window.
    pub async fn alert_silenced(&self, alert_id: i64) -> Result<bool> {
        run!(self, |pool| {
            let row = sqlx::query(
                "SELECT count(*) AS n FROM notifications WHERE alert_id = $1 AND status = 'silenced'",
            )
            .bind(alert_id)
            .fetch_one(pool)
            .await?;
            Ok(row.try_get::<i64, _>("n")? > 0)
        })
    }

    /// Queue a digest (a complete MIME message) for `recipient`; `event` names its day.
    /// Returns false when that recipient's digest for that day was already queued: one
    /// digest per recipient and day, also across restarts and replicas.
    pub async fn queue_digest(
        &self,
        recipient: &str,
        event: &str,
        subject: &str,
        eml: &str,
        now: i64,
    ) -> Result<bool> {
        run!(self, |pool| {
            let done = sqlx::query(
                "INSERT INTO notifications (alert_id, event, channel, recipient, subject, body, status, group_key,
                   next_attempt_at, created_at)
                 VALUES (NULL, $1, 'digest', $2, $3, $4, 'pending', $5, $6, $7) ON CONFLICT DO NOTHING",
            )
            .bind(event)
            .bind(recipient)
            .bind(subject)
            .bind(eml)
            .bind(event)
            .bind(now)
            .bind(now_secs())
            .execute(pool)
            .await?;
            Ok(done.rows_affected() > 0)
        })
    }

    /// Whether `recipient`'s digest `event` was queued already.
    pub async fn digest_queued(&self, recipient: &str, event: &str) -> Result<bool> {
        run!(self, |pool| {
            let row = sqlx::query(
                "SELECT count(*) AS n FROM notifications WHERE alert_id IS NULL AND event = $1 AND recipient = $2",
            )
            .bind(event)
            .bind(recipient)
            .fetch_one(pool)
            .await?;
            Ok(row.try_get::<i64, _>("n")? > 0)
        })
    }

    /// Record a write in the audit log.
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: &serde_json::Value,
    ) -> Result<()> {
        run!(self, |pool| {
            sqlx::query(
                "INSERT INTO audit_log (at, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(now_secs())
            .bind(actor)
            .bind(action)
            .bind(target)
            .bind(detail.to_string())
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// The newest audit entries.
    pub async fn audit_log(&self, limit: i64) -> Result<Vec<AuditRow>> {
        run!(self, |pool| {
            Ok(sqlx::query_as::<_, AuditRow>(
                "SELECT id, at, actor, action, target, detail FROM audit_log ORDER BY id DESC LIMIT $1",
            )
            .bind(limit)
            .fetch_all(pool)
            .await?)
        })
    }

    /// Active KPI definitions registered through the API: `(id, model_toml, query)`.
    pub async fn kpi_definitions(&self) -> Result<Vec<(String, String, String)>> {
        run!(self, |pool| {
            let rows = sqlx::query(
                "SELECT id, model_toml, query FROM kpi_definitions WHERE retired_at IS NULL ORDER BY id",
            )
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| Ok((r.try_get("id")?, r.try_get("model_toml")?, r.try_get("query")?)))
                .collect()
        })
    }

    /// Store (or replace, un-retiring) an API KPI definition.
    pub async fn save_kpi_definition(&self, id: &str, model_toml: &str, query: &str, by: &str) -> Result<()> {
        run!(self, |pool| {
            let now = now_secs();
            sqlx::query(
                "INSERT INTO kpi_definitions (id, model_toml, query, created_by, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (id) DO UPDATE SET model_toml = excluded.model_toml, query = excluded.query,
                   updated_at = excluded.updated_at, retired_at = NULL",
            )
            .bind(id)
            .bind(model_toml)
            .bind(query)
            .bind(by)
            .bind(now)
            .bind(now)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// The series and bucket of an anomaly.
    pub async fn anomaly_bucket(&self, anomaly_id: i64) -> Result<Option<(i64, i64, String)>> {
        run!(self, |pool| {
            let row = sqlx::query(
                "SELECT a.series_id, a.ts, s.kpi_id FROM anomalies a JOIN series s ON s.id = a.series_id WHERE a.id = $1",
            )
            .bind(anomaly_id)
            .fetch_optional(pool)
            .await?;
            Ok(match row {
                Some(r) => Some((r.try_get("series_id")?, r.try_get("ts")?, r.try_get("kpi_id")?)),
                None => None,
            })
        })
    }

    /// Record (or replace) feedback on a bucket.
    pub async fn save_feedback(
        &self,
        series_id: i64,
        ts: i64,
        kind: &str,
        actor: &str,
        comment: &str,
    ) -> Result<()> {
        run!(self, |pool| {
            sqlx::query(
                "INSERT INTO anomaly_feedback (series_id, ts, kind, actor, comment, at) VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (series_id, ts) DO UPDATE SET kind = excluded.kind, actor = excluded.actor,
                   comment = excluded.comment, at = excluded.at",
            )
            .bind(series_id)
            .bind(ts)
            .bind(kind)
            .bind(actor)
            .bind(comment)
            .bind(now_secs())
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// Feedback on a series' buckets in `[from, to)`.
    pub async fn feedback(&self, series_id: i64, from: i64, to: i64) -> Result<Vec<FeedbackRow>> {
        run!(self, |pool| {
            Ok(sqlx::query_as::<_, FeedbackRow>(
                "SELECT ts, kind FROM anomaly_feedback WHERE series_id = $1 AND ts >= $2 AND ts < $3 ORDER BY ts",
            )
            .bind(series_id)
            .bind(from)
            .bind(to)
            .fetch_all(pool)
            .await?)
        })
    }

    /// Delete everything stored about a KPI: its series, observations, verdicts, anomalies,
    /// feedback, detector checkpoints, alerts and their notifications (one transaction). The
    /// audit log stays.
    pub async fn purge_kpi(&self, kpi_id: &str) -> Result<()> {
        run!(self, |pool| {
            let mut tx = pool.begin().await?;
            let by_series = "(SELECT id FROM series WHERE kpi_id = $1)";
            for sql in [
                "DELETE FROM notifications WHERE alert_id IN (SELECT id FROM alerts WHERE kpi_id = $1)"
                    .to_owned(),
                "DELETE FROM alerts WHERE kpi_id = $1".to_owned(),
                format!("DELETE FROM anomalies WHERE series_id IN {by_series}"),
                format!("DELETE FROM anomaly_feedback WHERE series_id IN {by_series}"),
                format!("DELETE FROM detector_checkpoints WHERE series_id IN {by_series}"),
                format!("DELETE FROM evaluations WHERE series_id IN {by_series}"),
                format!("DELETE FROM observations WHERE series_id IN {by_series}"),
                "DELETE FROM series WHERE kpi_id = $1".to_owned(),
                "DELETE FROM runs WHERE kpi_id = $1".to_owned(),
                "DELETE FROM kpis WHERE id = $1".to_owned(),
            ] {
                sqlx::query(&sql).bind(kpi_id).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Retire an API KPI (its history stays, its detector checkpoints go); returns whether it
    /// was active.
    pub async fn retire_kpi_definition(&self, id: &str) -> Result<bool> {
        run!(self, |pool| {
            let mut tx = pool.begin().await?;
            let done = sqlx::query(
                "UPDATE kpi_definitions SET retired_at = $1 WHERE id = $2 AND retired_at IS NULL",
            )
            .bind(now_secs())
            .bind(id)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "DELETE FROM detector_checkpoints WHERE series_id IN (SELECT id FROM series WHERE kpi_id = $1)",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(done.rows_affected() > 0)
        })
    }

    /// The newest verdict of every series of every KPI, for the per-KPI gauges on `/metrics`.
    pub async fn latest_evaluations(&self) -> Result<Vec<LatestEvaluation>> {
        run!(self, |pool| {
            Ok(sqlx::query_as::<_, LatestEvaluation>(
                "SELECT s.kpi_id, s.dims, e.ts, e.value, e.expected, e.lower, e.upper, e.anomaly
                 FROM series s JOIN evaluations e ON e.series_id = s.id
                 WHERE e.ts = (SELECT max(ts) FROM evaluations WHERE series_id = s.id)
                 ORDER BY s.kpi_id, s.id",
            )
            .fetch_all(pool)
            .await?)
        })
    }

    /// Record the `Message-ID` the notifications `ids` went out with.
    pub async fn set_message_id(&self, ids: &[i64], message_id: &str) -> Result<()> {
        run!(self, |pool| {
            for id in ids {
                sqlx::query("UPDATE notifications SET message_id = $1 WHERE id = $2")
                    .bind(message_id)
                    .bind(id)
                    .execute(pool)
                    .await?;
            }
            Ok(())
        })
    }

    /// The `Message-ID`s of the e-mails already sent to `recipient` about `alert_id`, oldest
    /// first (the firing message first), for `In-Reply-To` and `References`.
    pub async fn thread_message_ids(&self, alert_id: i64, recipient: &str) -> Result<Vec<String>> {
        run!(self, |pool| {
            let rows: Vec<(String,)> = sqlx::query_as(
                "SELECT message_id FROM notifications
                 WHERE alert_id = $1 AND recipient = $2 AND channel = 'email' AND status = 'sent'
                   AND message_id IS NOT NULL
                 ORDER BY id",
            )
            .bind(alert_id)
            .bind(recipient)
            .fetch_all(pool)
            .await?;
            let mut out: Vec<String> = Vec::new();
            for (m,) in rows {
                if !out.contains(&m) {
                    out.push(m);
                }
            }
            Ok(out)
        })
    }
}

/// The newest verdict of one series, with its KPI and dimensions.
#[derive(Debug, Clone, PartialEq, FromRow, Serialize)]
pub struct LatestEvaluation {
    /// KPI id.
    pub kpi_id: String,
    /// Dimension values (JSON object).
    pub dims: String,
    /// Bucket start.
    pub ts: i64,
    /// Observed value in band units.
    pub value: Option<f64>,
    /// Expected value.
    pub expected: Option<f64>,
    /// Band lower edge.
    pub lower: Option<f64>,
    /// Band upper edge.
    pub upper: Option<f64>,
    /// Flagged.
    pub anomaly: bool,
}

/// Feedback given on one flagged bucket.
#[derive(Debug, Clone, PartialEq, FromRow, Serialize)]
pub struct FeedbackRow {
    /// Bucket start.
    pub ts: i64,
    /// not_anomaly | new_normal | confirmed.
    pub kind: String,
}

/// One audit log entry.
#[derive(Debug, Clone, PartialEq, FromRow, Serialize)]
pub struct AuditRow {
    /// Id.
    pub id: i64,
    /// When, unix seconds.
    pub at: i64,
    /// Who (token name).
    pub actor: String,
    /// What.
    pub action: String,
    /// On what.
    pub target: String,
    /// Details (JSON).
    pub detail: String,
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
