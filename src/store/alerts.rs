//! Alerts (one per incident, with their state machine's fields) and silences.

use serde::Serialize;
use sqlx::{FromRow, Row};

use super::{now_secs, NewNotification, Pool, Result, Store};

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

impl Store {
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

    /// Every open (pending or firing) alert of a KPI, data-missing and anomaly ones.
    pub async fn open_alerts_of(&self, kpi_id: &str) -> Result<Vec<AlertRow>> {
        run!(self, |pool| {
            Ok(sqlx::query_as::<_, AlertRow>(&format!(
                "SELECT {ALERT_COLUMNS} FROM alerts WHERE kpi_id = $1 AND state IN ('pending', 'firing') ORDER BY id"
            ))
            .bind(kpi_id)
            .fetch_all(pool)
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

    /// Create a silence; returns its id.
    pub async fn create_silence(
        &self,
        matchers: &str,
        starts_at: i64,
        ends_at: i64,
        author: &str,
        comment: &str,
    ) -> Result<i64> {
        let done = run!(self, |pool| {
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
        });
        self.shared.silences.forget();
        done
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
        let done = run!(self, |pool| {
            let done = sqlx::query(
                "UPDATE silences SET ends_at = CASE WHEN ends_at < $1 THEN ends_at ELSE $1 END WHERE id = $2",
            )
            .bind(now)
            .bind(id)
            .execute(pool)
            .await?;
            Ok(done.rows_affected() > 0)
        });
        self.shared.silences.forget();
        done
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
}
