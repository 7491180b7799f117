//! The notification outbox: messages queued with the state change that caused them, claimed, sent, retried, grouped and threaded.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::{FromRow, Row};

use super::{now_secs, Pool, Result, Store};
use crate::reading::{nan_if_null, Reading};

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
    /// Observed value and band (NaN when there is none, e.g. data missing: stored as `null`).
    #[serde(flatten)]
    pub reading: Reading,
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

impl Store {
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
