//! Pruning: rows older than their retention are deleted in small batches (one series, or at
//! most `BATCH` rows, per statement), so pruning never holds long locks on a busy store.

use super::{Pool, Result, Store};

/// Rows per delete statement for the tables without a per-series key.
const BATCH: i64 = 1000;

/// Cut-offs (unix seconds): rows before them go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutoffs {
    /// Observations with a bucket before this.
    pub observations: i64,
    /// Evaluations with a bucket before this.
    pub evaluations: i64,
    /// Anomalies with a bucket before this.
    pub anomalies: i64,
    /// Runs started before this.
    pub runs: i64,
    /// Sent or given-up notifications of closed alerts (and digests) created before this.
    pub notifications: i64,
}

/// Rows deleted by one [`Store::prune`], per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Observations.
    pub observations: u64,
    /// Evaluations.
    pub evaluations: u64,
    /// Anomalies.
    pub anomalies: u64,
    /// Runs.
    pub runs: u64,
    /// Notifications.
    pub notifications: u64,
    /// Detector checkpoints whose `upto` is before the observations' cut-off (the history
    /// they stand for is gone, so they can never be used).
    pub checkpoints: u64,
}

impl Pruned {
    /// Rows deleted in all.
    pub fn total(&self) -> u64 {
        self.observations
            + self.evaluations
            + self.anomalies
            + self.runs
            + self.notifications
            + self.checkpoints
    }
}

impl Store {
    /// Delete what is older than `cut`. Safe to run while KPIs run: it only removes rows past
    /// their retention, and a bucket re-read later is simply stored again.
    pub async fn prune(&self, cut: Cutoffs) -> Result<Pruned> {
        let mut out = Pruned::default();
        run!(self, |pool| {
            let series: Vec<i64> = sqlx::query_scalar("SELECT id FROM series ORDER BY id")
                .fetch_all(pool)
                .await?;
            for id in series {
                out.observations += sqlx::query("DELETE FROM observations WHERE series_id = $1 AND ts < $2")
                    .bind(id)
                    .bind(cut.observations)
                    .execute(pool)
                    .await?
                    .rows_affected();
                out.evaluations += sqlx::query("DELETE FROM evaluations WHERE series_id = $1 AND ts < $2")
                    .bind(id)
                    .bind(cut.evaluations)
                    .execute(pool)
                    .await?
                    .rows_affected();
            }
            out.checkpoints = sqlx::query("DELETE FROM detector_checkpoints WHERE upto < $1")
                .bind(cut.observations)
                .execute(pool)
                .await?
                .rows_affected();
            let batched = [
                (
                    "DELETE FROM anomalies WHERE id IN (SELECT id FROM anomalies WHERE ts < $1 ORDER BY id LIMIT $2)",
                    cut.anomalies,
                ),
                (
                    "DELETE FROM runs WHERE id IN (SELECT id FROM runs WHERE started_at < $1 ORDER BY id LIMIT $2)",
                    cut.runs,
                ),
                (
                    "DELETE FROM notifications WHERE id IN (
                       SELECT n.id FROM notifications n LEFT JOIN alerts a ON a.id = n.alert_id
                       WHERE n.created_at < $1 AND n.status <> 'pending'
                         AND (n.alert_id IS NULL OR a.state IN ('resolved', 'cancelled'))
                       ORDER BY n.id LIMIT $2)",
                    cut.notifications,
                ),
            ];
            for (i, (sql, before)) in batched.into_iter().enumerate() {
                loop {
                    let n = sqlx::query(sql)
                        .bind(before)
                        .bind(BATCH)
                        .execute(pool)
                        .await?
                        .rows_affected();
                    match i {
                        0 => out.anomalies += n,
                        1 => out.runs += n,
                        _ => out.notifications += n,
                    }
                    if n < BATCH as u64 {
                        break;
                    }
                }
            }
            Ok(out)
        })
    }
}
