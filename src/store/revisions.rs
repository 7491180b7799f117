//! Observation revisions (`series.obs_rev`, migration 0010): what a run with a kept detector
//! or checkpoint reads instead of the whole replayed history to know that nothing it stepped
//! through has changed.
//!
//! The database keeps the revision (triggers on `observations`): it is bumped whenever a row
//! before the series' `evaluated_until` is inserted or changes its value or denominator, so
//! every writer (multi-row `INSERT`s, `COPY`) is covered without a round trip. Pruning is a
//! prefix delete and does not bump it; readers compare the first stored bucket at or after
//! their replay start instead ([`SeriesRevision::first`]). Dropping a KPI's buckets
//! (`upsert_kpi` on a change of interval, kind or alignment) bumps it.

use sqlx::Row as _;

use super::{Pool, Result, Store};

/// One series' judging state, read in one statement before its observations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeriesRevision {
    /// Buckets before this were judged.
    pub evaluated_until: Option<i64>,
    /// Revision of the observations before `evaluated_until`.
    pub obs_rev: i64,
    /// The first stored bucket at or after the asked replay start, if any.
    pub first: Option<i64>,
    /// Feedback rows on buckets at or after the replay start (a run reads them only when
    /// there are some).
    pub feedback: i64,
}

impl Store {
    /// A series' `evaluated_until`, observation revision, first bucket and number of
    /// feedback rows at or after `from` (index look-ups only, no rows transferred). `None` when the series does not exist.
    pub async fn series_revision(&self, series_id: i64, from: i64) -> Result<Option<SeriesRevision>> {
        run!(self, |pool| {
            let row = sqlx::query(
                "SELECT s.evaluated_until, s.obs_rev,
                   (SELECT min(o.ts) FROM observations o WHERE o.series_id = s.id AND o.ts >= $2) AS first,
                   (SELECT count(*) FROM anomaly_feedback f WHERE f.series_id = s.id AND f.ts >= $2) AS feedback
                 FROM series s WHERE s.id = $1",
            )
            .bind(series_id)
            .bind(from)
            .fetch_optional(pool)
            .await?;
            match row {
                Some(row) => Ok(Some(SeriesRevision {
                    evaluated_until: row.try_get("evaluated_until")?,
                    obs_rev: row.try_get("obs_rev")?,
                    first: row.try_get("first")?,
                    feedback: row.try_get("feedback")?,
                })),
                None => Ok(None),
            }
        })
    }
}
