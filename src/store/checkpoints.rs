//! Detector checkpoints (`detector_checkpoints`): one row per series, the encoded detector
//! state as of `upto`, overwritten every `scheduler.checkpoint_every`. The store keeps the
//! bytes opaque; `pipeline` encodes, decodes and validates them.

use sqlx::FromRow;

use super::{now_secs, Pool, Result, Store};

/// A series' stored detector checkpoint.
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct CheckpointRow {
    /// The series.
    pub series_id: i64,
    /// Bucket end the detector has stepped to.
    pub upto: i64,
    /// Observations stepped since the replay start.
    pub seen: i64,
    /// Format version that wrote `state`.
    pub format: i32,
    /// The encoded state.
    pub state: Vec<u8>,
    /// When it was written (wall clock, unix seconds).
    pub written_at: i64,
}

impl Store {
    /// Write (or overwrite) the checkpoint of a series.
    pub async fn save_checkpoint(
        &self,
        series_id: i64,
        upto: i64,
        seen: i64,
        format: i32,
        state: &[u8],
    ) -> Result<()> {
        run!(self, |pool| {
            sqlx::query(
                "INSERT INTO detector_checkpoints (series_id, upto, seen, format, state, written_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (series_id) DO UPDATE SET upto = excluded.upto, seen = excluded.seen,
                   format = excluded.format, state = excluded.state, written_at = excluded.written_at",
            )
            .bind(series_id)
            .bind(upto)
            .bind(seen)
            .bind(format)
            .bind(state)
            .bind(now_secs())
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// The checkpoint of a series, if one was written.
    pub async fn checkpoint(&self, series_id: i64) -> Result<Option<CheckpointRow>> {
        run!(self, |pool| {
            Ok(sqlx::query_as::<_, CheckpointRow>(
                "SELECT series_id, upto, seen, format, state, written_at FROM detector_checkpoints
                 WHERE series_id = $1",
            )
            .bind(series_id)
            .fetch_optional(pool)
            .await?)
        })
    }
}
