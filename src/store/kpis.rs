//! KPIs as registered: their specs, run log, stored definitions (models edited in the UI) and their removal.

use serde::Serialize;
use sqlx::{FromRow, Row};

use crate::kpi::KpiSpec;

use super::{now_secs, Pool, Result, Store};

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

impl Store {
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

    /// Record a run's outcome; on success also advance `fetched_until`. Atomically: on
    /// PostgreSQL one statement (the run's row as a data-modifying `WITH` clause), one round
    /// trip instead of four; on SQLite, which has no such clauses, a transaction.
    pub async fn record_run(
        &self,
        kpi_id: &str,
        started_at: i64,
        window: (i64, i64),
        status: &str,
        rows: i64,
        error: Option<&str>,
    ) -> Result<()> {
        const INSERT: &str = "INSERT INTO runs (kpi_id, started_at, finished_at, window_start, window_end, status, rows, error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
        const UPDATE: &str = "UPDATE kpis SET last_run_at = $2, last_status = $6, last_error = $8,
               fetched_until = CASE WHEN NOT $9 THEN fetched_until
                 WHEN coalesce(fetched_until, 0) > $5 THEN coalesce(fetched_until, 0) ELSE $5 END
             WHERE id = $1";
        let now = now_secs();
        let advance = status == "ok";
        macro_rules! bound {
            ($sql:expr) => {
                sqlx::query($sql)
                    .bind(kpi_id)
                    .bind(started_at)
                    .bind(now)
                    .bind(window.0)
                    .bind(window.1)
                    .bind(status)
                    .bind(rows)
                    .bind(error)
                    .bind(advance)
            };
        }
        match &self.pool {
            Pool::Postgres(pool) => {
                bound!(&format!("WITH run AS ({INSERT}) {UPDATE}"))
                    .execute(pool)
                    .await?;
            }
            Pool::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                // Both take the same nine values: SQLite binds `$N` by number, unused ones too.
                bound!(INSERT).execute(&mut *tx).await?;
                bound!(UPDATE).execute(&mut *tx).await?;
                tx.commit().await?;
            }
        }
        Ok(())
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
}
