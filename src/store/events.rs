//! Events and holidays (`events` table): from the config's `[[calendar]]` (replaced as a whole
//! at every start), the API, and imported iCalendar files (replaced by UID on re-import).

use serde::Serialize;
use sqlx::FromRow;

use super::{now_secs, Pool, Result, Store};

/// A stored event, as `calendar::Event` needs it plus its bookkeeping.
#[derive(Debug, Clone, PartialEq, FromRow, Serialize)]
pub struct EventRow {
    /// Id (0 before it is stored).
    pub id: i64,
    /// What it is.
    pub name: String,
    /// `config`, `api` or `ical`.
    pub origin: String,
    /// Local start `YYYY-MM-DDTHH:MM:SS`.
    pub starts_local: String,
    /// Local end (exclusive).
    pub ends_local: String,
    /// IANA timezone of the two.
    pub timezone: String,
    /// Recurs every year.
    pub yearly: bool,
    /// Seconds covered before the start.
    pub margin_before_secs: i64,
    /// Seconds covered after the end.
    pub margin_after_secs: i64,
    /// KPI ids (JSON array).
    pub kpis: String,
    /// Labels (JSON object).
    pub labels: String,
    /// iCalendar UID.
    pub uid: Option<String>,
    /// Who made it (`config` for the config's).
    pub created_by: String,
    /// When, unix seconds.
    pub created_at: i64,
}

const EVENT_COLUMNS: &str =
    "id, name, origin, starts_local, ends_local, timezone, yearly, margin_before_secs, \
     margin_after_secs, kpis, labels, uid, created_by, created_at";

const INSERT_EVENT: &str = "INSERT INTO events (name, origin, starts_local, ends_local, timezone, yearly, \
     margin_before_secs, margin_after_secs, kpis, labels, uid, created_by, created_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id";

/// Bind an [`EventRow`] to [`INSERT_EVENT`].
macro_rules! bind_event {
    ($q:expr, $e:expr, $now:expr) => {
        $q.bind(&$e.name)
            .bind(&$e.origin)
            .bind(&$e.starts_local)
            .bind(&$e.ends_local)
            .bind(&$e.timezone)
            .bind($e.yearly)
            .bind($e.margin_before_secs)
            .bind($e.margin_after_secs)
            .bind(&$e.kpis)
            .bind(&$e.labels)
            .bind(&$e.uid)
            .bind(&$e.created_by)
            .bind($now)
    };
}

impl Store {
    /// Store new events (their `id` and `created_at` are ignored) in one transaction; an
    /// event with a UID replaces the stored ones of the same origin and UID (a re-imported
    /// calendar does not double). Returns the new ids in order.
    pub async fn create_events(&self, events: &[EventRow]) -> Result<Vec<i64>> {
        let now = now_secs();
        let done = run!(self, |pool| {
            let mut tx = pool.begin().await?;
            let mut ids = Vec::with_capacity(events.len());
            for e in events {
                if let Some(uid) = &e.uid {
                    sqlx::query("DELETE FROM events WHERE origin = $1 AND uid = $2")
                        .bind(&e.origin)
                        .bind(uid)
                        .execute(&mut *tx)
                        .await?;
                }
                let (id,): (i64,) = bind_event!(sqlx::query_as(INSERT_EVENT), e, now)
                    .fetch_one(&mut *tx)
                    .await?;
                ids.push(id);
            }
            tx.commit().await?;
            Ok(ids)
        });
        self.shared.events.forget();
        done
    }

    /// Replace every event of `origin` (the config's, at start) with `events`, in one
    /// transaction.
    pub async fn replace_events(&self, origin: &str, events: &[EventRow]) -> Result<()> {
        let now = now_secs();
        let done = run!(self, |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM events WHERE origin = $1")
                .bind(origin)
                .execute(&mut *tx)
                .await?;
            for e in events {
                bind_event!(sqlx::query(INSERT_EVENT), e, now)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        });
        self.shared.events.forget();
        done
    }

    /// Every event, oldest first.
    pub async fn events(&self) -> Result<Vec<EventRow>> {
        run!(self, |pool| {
            Ok(
                sqlx::query_as::<_, EventRow>(&format!("SELECT {EVENT_COLUMNS} FROM events ORDER BY id"))
                    .fetch_all(pool)
                    .await?,
            )
        })
    }

    /// One event.
    pub async fn event(&self, id: i64) -> Result<Option<EventRow>> {
        run!(self, |pool| {
            Ok(
                sqlx::query_as::<_, EventRow>(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(pool)
                    .await?,
            )
        })
    }

    /// Delete an event; returns whether it existed.
    pub async fn delete_event(&self, id: i64) -> Result<bool> {
        let done = run!(self, |pool| {
            let done = sqlx::query("DELETE FROM events WHERE id = $1")
                .bind(id)
                .execute(pool)
                .await?;
            Ok(done.rows_affected() > 0)
        });
        self.shared.events.forget();
        done
    }
}
