//! Series and their buckets: observations, the detector's verdicts, flagged buckets (anomalies) and the feedback given on them.

use serde::Serialize;
use sqlx::{FromRow, Row};

use super::{now_secs, BulkWrite, Pool, Result, Store, ROWS_PER_STATEMENT};
use crate::reading::{stored, Band, Reading};

/// Stored rows: the columns `value`, `expected`, `lower` and `upper`, `NULL` read as NaN.
impl<'r, R: sqlx::Row> sqlx::FromRow<'r, R> for Reading
where
    &'static str: sqlx::ColumnIndex<R>,
    Option<f64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn from_row(row: &'r R) -> sqlx::Result<Self> {
        let get = |column: &'static str| -> sqlx::Result<f64> {
            Ok(row.try_get::<Option<f64>, _>(column)?.unwrap_or(f64::NAN))
        };
        Ok(Reading {
            value: get("value")?,
            band: Band {
                expected: get("expected")?,
                lower: get("lower")?,
                upper: get("upper")?,
            },
        })
    }
}

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
    /// Observed value in band units and its band (NaN, stored `NULL`, when undefined: a
    /// ratio over 0 attempts, no band while warming up).
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub reading: Reading,
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
    /// Observed value in band units (a ratio as a fraction) and its band.
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub reading: Reading,
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

/// A new anomaly to record.
#[derive(Debug, Clone)]
pub struct NewAnomaly {
    /// Bucket start.
    pub ts: i64,
    /// Observed value and its band.
    pub reading: Reading,
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

/// The newest verdict of one series, with its KPI and dimensions.
#[derive(Debug, Clone, PartialEq, FromRow, Serialize)]
pub struct LatestEvaluation {
    /// KPI id.
    pub kpi_id: String,
    /// Dimension values (JSON object).
    pub dims: String,
    /// Bucket start.
    pub ts: i64,
    /// Observed value in band units (a ratio as a fraction) and its band.
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub reading: Reading,
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

impl Store {
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

    /// What a run of `kpi_id` starts from, in one statement: the KPI's `fetched_until` and its
    /// series (`None` when the KPI is not registered).
    pub async fn run_start(&self, kpi_id: &str) -> Result<Option<(Option<i64>, Vec<SeriesRow>)>> {
        run!(self, |pool| {
            let rows = sqlx::query(
                "SELECT k.fetched_until, s.id, s.dims, s.evaluated_until
                 FROM kpis k LEFT JOIN series s ON s.kpi_id = k.id WHERE k.id = $1 ORDER BY s.id",
            )
            .bind(kpi_id)
            .fetch_all(pool)
            .await?;
            let Some(first) = rows.first() else {
                return Ok(None);
            };
            let fetched_until: Option<i64> = first.try_get("fetched_until")?;
            let mut series = Vec::with_capacity(rows.len());
            for row in &rows {
                let Some(id) = row.try_get::<Option<i64>, _>("id")? else {
                    continue;
                };
                series.push(SeriesRow {
                    id,
                    kpi_id: kpi_id.to_owned(),
                    dims: row.try_get("dims")?,
                    evaluated_until: row.try_get("evaluated_until")?,
                });
            }
            Ok(Some((fetched_until, series)))
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
    /// from [`COPY_MIN_ROWS`] rows on `COPY` (see `bulk`; the same rows result). A batch that
    /// fits one statement (a steady run's few buckets) is that statement alone, atomic by
    /// itself: no transaction round trips.
    pub async fn upsert_observations(&self, series_id: i64, rows: &[ObservationRow]) -> Result<()> {
        run!(self, |pool| {
            let now = now_secs();
            let statement = |chunk: &[ObservationRow]| {
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
                q
            };
            if rows.is_empty() {
                return Ok(());
            }
            if rows.len() <= ROWS_PER_STATEMENT && rows.len() < super::COPY_MIN_ROWS {
                statement(rows).build().execute(pool).await?;
                return Ok(());
            }
            let mut tx = pool.begin().await?;
            let copied = tx.bulk_observations(series_id, rows, now).await?;
            for chunk in rows.chunks(ROWS_PER_STATEMENT).filter(|_| !copied) {
                statement(chunk).build().execute(&mut *tx).await?;
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
    /// `evaluated_until`, atomically. Verdicts as in [`Store::upsert_observations`] (`COPY` on
    /// PostgreSQL from [`COPY_MIN_ROWS`] rows); anomalies always as `INSERT`s. On PostgreSQL a
    /// batch that fits one statement (a steady run's) is one statement, its inserts as
    /// data-modifying `WITH` clauses: one round trip instead of five (SQLite has no such
    /// clauses, and no round trips to save).
    pub async fn save_evaluations(
        &self,
        series_id: i64,
        evaluations: &[EvaluationRow],
        anomalies: &[NewAnomaly],
        evaluated_until: i64,
    ) -> Result<()> {
        let one_statement = matches!(self.pool, Pool::Postgres(_))
            && evaluations.len() <= ROWS_PER_STATEMENT / 2
            && evaluations.len() < super::COPY_MIN_ROWS
            && anomalies.len() <= ROWS_PER_STATEMENT / 2;
        run!(self, |pool| {
            let now = now_secs();
            let push_evaluations = |q: &mut sqlx::QueryBuilder<'_, _>, chunk: &[EvaluationRow]| {
                q.push(
                    "INSERT INTO evaluations (series_id, ts, value, expected, lower, upper, score, anomaly, status, volume, flagged_by) ",
                );
                q.push_values(chunk, |mut b, e| {
                    b.push_bind(series_id)
                        .push_bind(e.ts)
                        .push_bind(stored(e.reading.value))
                        .push_bind(stored(e.reading.band.expected))
                        .push_bind(stored(e.reading.band.lower))
                        .push_bind(stored(e.reading.band.upper))
                        .push_bind(e.score)
                        .push_bind(e.anomaly)
                        .push_bind(e.status.clone())
                        .push_bind(e.volume)
                        .push_bind(e.flagged_by.clone());
                });
                q.push(
                    " ON CONFLICT (series_id, ts) DO UPDATE SET value = excluded.value, expected = excluded.expected,
                       lower = excluded.lower, upper = excluded.upper, score = excluded.score,
                       anomaly = excluded.anomaly, status = excluded.status, volume = excluded.volume,
                       flagged_by = excluded.flagged_by",
                );
            };
            let push_anomalies = |q: &mut sqlx::QueryBuilder<'_, _>, chunk: &[NewAnomaly]| {
                q.push(
                    "INSERT INTO anomalies (series_id, ts, value, expected, lower, upper, score, volume, seasonality, alerted, created_at, flagged_by, side) ",
                );
                q.push_values(chunk, |mut b, a| {
                    b.push_bind(series_id)
                        .push_bind(a.ts)
                        .push_bind(a.reading.value)
                        .push_bind(a.reading.band.expected)
                        .push_bind(a.reading.band.lower)
                        .push_bind(a.reading.band.upper)
                        .push_bind(a.score)
                        .push_bind(a.volume)
                        .push_bind(a.seasonality.clone())
                        .push_bind(a.alerted)
                        .push_bind(now)
                        .push_bind(a.flagged_by.clone())
                        .push_bind(a.side.clone());
                });
                q.push(" ON CONFLICT (series_id, ts) DO NOTHING");
            };
            let push_evaluated_until = |q: &mut sqlx::QueryBuilder<'_, _>| {
                q.push("UPDATE series SET evaluated_until = CASE WHEN coalesce(evaluated_until, 0) > ");
                q.push_bind(evaluated_until);
                q.push(" THEN coalesce(evaluated_until, 0) ELSE ");
                q.push_bind(evaluated_until);
                q.push(" END WHERE id = ");
                q.push_bind(series_id);
            };
            if one_statement {
                let mut q = sqlx::QueryBuilder::new("");
                let mut with = "WITH ";
                if !evaluations.is_empty() {
                    q.push(with).push("e AS (");
                    push_evaluations(&mut q, evaluations);
                    q.push(") ");
                    with = ", ";
                }
                if !anomalies.is_empty() {
                    q.push(with).push("a AS (");
                    push_anomalies(&mut q, anomalies);
                    q.push(") ");
                }
                push_evaluated_until(&mut q);
                q.build().execute(pool).await?;
                return Ok(());
            }
            let mut tx = pool.begin().await?;
            let copied = tx.bulk_evaluations(series_id, evaluations).await?;
            for chunk in evaluations.chunks(ROWS_PER_STATEMENT / 2).filter(|_| !copied) {
                let mut q = sqlx::QueryBuilder::new("");
                push_evaluations(&mut q, chunk);
                q.build().execute(&mut *tx).await?;
            }
            for chunk in anomalies.chunks(ROWS_PER_STATEMENT / 2) {
                let mut q = sqlx::QueryBuilder::new("");
                push_anomalies(&mut q, chunk);
                q.build().execute(&mut *tx).await?;
            }
            let mut q = sqlx::QueryBuilder::new("");
            push_evaluated_until(&mut q);
            q.build().execute(&mut *tx).await?;
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
}
