//! Large batches of observations and verdicts (a backfill: weeks of buckets) on PostgreSQL:
//! `COPY … FROM STDIN` straight into the table, after deleting the keys it is about to write.
//!
//! Why not a multi-row `INSERT … ON CONFLICT` (the small path, and SQLite's only one): for a
//! 28-day backfill of a 1-minute KPI (40,320 rows each into `observations` and
//! `evaluations`) PostgreSQL spent most of the run on those statements; `COPY` inserts in
//! batches (`heap_multi_insert`, fewer WAL records) and skips the speculative insertion of
//! `ON CONFLICT`. Copying into a temporary staging table and then running one
//! `INSERT … SELECT … ON CONFLICT` was measured here too and was no faster than the plain
//! `INSERT`: it pays the `ON CONFLICT` insert after the copy.
//!
//! The upsert semantics stay: `DELETE` of exactly the batch's keys (within the batch's range,
//! so that it is one index range scan), then `COPY` of the whole rows — what
//! `ON CONFLICT (series_id, ts) DO UPDATE SET <every column>` leaves behind, and rows of the
//! series outside the batch are untouched. Both run in the caller's transaction, so a run
//! still writes all or nothing. One difference under concurrency: a second transaction
//! inserting one of the same keys meanwhile (the same series run twice at once, which the
//! leases prevent) makes the `COPY` fail with a unique violation instead of waiting and
//! updating; the run fails, rolls back and is retried (at least once, as before).
//!
//! The data is PostgreSQL's text format: floats are written with Rust's shortest
//! round-tripping `Display` and read back bit for bit; text is escaped. Must not depend on
//! anything but `store`'s row types.

use std::fmt::Write as _;

use sqlx::{PgConnection, SqliteConnection};

use super::{EvaluationRow, ObservationRow, Result};

/// Batches of at least this many rows are written with `COPY` on PostgreSQL; smaller ones
/// (a steady run: a few buckets) with multi-row `INSERT … ON CONFLICT`, as on SQLite.
pub const COPY_MIN_ROWS: usize = 2000;

/// Rows per `CopyData` message (bounds the buffer: about 0.5 MiB of text).
const ROWS_PER_MESSAGE: usize = 5000;

/// A connection that may write a large batch in bulk. `Ok(false)`: it did not (too small a
/// batch, or a backend without `COPY`); the caller writes it with `INSERT`s.
pub(super) trait BulkWrite {
    async fn bulk_observations(&mut self, series_id: i64, rows: &[ObservationRow], now: i64) -> Result<bool>;
    async fn bulk_evaluations(&mut self, series_id: i64, rows: &[EvaluationRow]) -> Result<bool>;
}

impl BulkWrite for SqliteConnection {
    async fn bulk_observations(&mut self, _: i64, _: &[ObservationRow], _: i64) -> Result<bool> {
        Ok(false)
    }

    async fn bulk_evaluations(&mut self, _: i64, _: &[EvaluationRow]) -> Result<bool> {
        Ok(false)
    }
}

impl BulkWrite for PgConnection {
    async fn bulk_observations(&mut self, series_id: i64, rows: &[ObservationRow], now: i64) -> Result<bool> {
        if rows.len() < COPY_MIN_ROWS {
            return Ok(false);
        }
        delete_keys(self, "observations", series_id, rows.iter().map(|r| r.ts)).await?;
        copy(
            self,
            "COPY observations (series_id, ts, value, denominator, updated_at) FROM STDIN",
            rows,
            |buf, r| {
                let _ = write!(buf, "{series_id}\t{}\t", r.ts);
                push_f64(buf, Some(r.value));
                buf.push('\t');
                push_f64(buf, r.denominator);
                let _ = writeln!(buf, "\t{now}");
            },
        )
        .await?;
        Ok(true)
    }

    async fn bulk_evaluations(&mut self, series_id: i64, rows: &[EvaluationRow]) -> Result<bool> {
        if rows.len() < COPY_MIN_ROWS {
            return Ok(false);
        }
        delete_keys(self, "evaluations", series_id, rows.iter().map(|r| r.ts)).await?;
        copy(
            self,
            "COPY evaluations (series_id, ts, value, expected, lower, upper, score, anomaly, status, volume, flagged_by) FROM STDIN",
            rows,
            |buf, e| {
                let _ = write!(buf, "{series_id}\t{}", e.ts);
                for x in [e.value, e.expected, e.lower, e.upper, Some(e.score)] {
                    buf.push('\t');
                    push_f64(buf, x);
                }
                buf.push_str(if e.anomaly { "\tt\t" } else { "\tf\t" });
                push_text(buf, Some(&e.status));
                buf.push('\t');
                push_f64(buf, Some(e.volume));
                buf.push('\t');
                push_text(buf, e.flagged_by.as_deref());
                buf.push('\n');
            },
        )
        .await?;
        Ok(true)
    }
}

/// Delete the series' rows at `keys` (sorted or not) from `table`.
async fn delete_keys(
    conn: &mut PgConnection,
    table: &str,
    series_id: i64,
    keys: impl Iterator<Item = i64>,
) -> Result<()> {
    let keys: Vec<i64> = keys.collect();
    let (Some(lo), Some(hi)) = (keys.iter().min(), keys.iter().max()) else {
        return Ok(());
    };
    // `IN (SELECT unnest(…))`, not `= ANY(…)`: PostgreSQL plans `= ANY` of a bound array
    // element by element (measured: 36-47 ms of planning for 40,320 keys, more than the
    // `COPY` of a table's rows takes on some runs); the semi-join plans in under a
    // millisecond, and on a backfill the range scan finds no rows and never reads the keys.
    sqlx::query(&format!(
        "DELETE FROM {table} WHERE series_id = $1 AND ts >= $2 AND ts <= $3
         AND ts IN (SELECT unnest($4::bigint[]))"
    ))
    .bind(series_id)
    .bind(*lo)
    .bind(*hi)
    .bind(&keys)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// `COPY` `rows`, each written as one line of text by `line`.
async fn copy<T>(
    conn: &mut PgConnection,
    statement: &str,
    rows: &[T],
    line: impl Fn(&mut String, &T),
) -> Result<()> {
    let mut copy = conn.copy_in_raw(statement).await?;
    let mut buf = String::new();
    for chunk in rows.chunks(ROWS_PER_MESSAGE) {
        buf.clear();
        for r in chunk {
            line(&mut buf, r);
        }
        if let Err(error) = copy.send(buf.as_bytes()).await {
            // Leave the connection usable (the transaction rolls back either way).
            let _ = copy.abort("kpiwatch: sending COPY data failed").await;
            return Err(error.into());
        }
    }
    copy.finish().await?;
    Ok(())
}

/// A float in `COPY` text: shortest round-tripping digits (`Display` never uses an
/// exponent), PostgreSQL's spelling of the non-finite ones, `\N` for NULL.
fn push_f64(buf: &mut String, x: Option<f64>) {
    match x {
        None => buf.push_str("\\N"),
        Some(x) if x.is_nan() => buf.push_str("NaN"),
        Some(x) if x == f64::INFINITY => buf.push_str("Infinity"),
        Some(x) if x == f64::NEG_INFINITY => buf.push_str("-Infinity"),
        Some(x) => {
            let _ = write!(buf, "{x}");
        }
    }
}

/// Text in `COPY` text format: backslash, tab, newline and carriage return escaped; `\N` for
/// NULL.
fn push_text(buf: &mut String, s: Option<&str>) {
    let Some(s) = s else {
        buf.push_str("\\N");
        return;
    };
    for c in s.chars() {
        match c {
            '\\' => buf.push_str("\\\\"),
            '\t' => buf.push_str("\\t"),
            '\n' => buf.push_str("\\n"),
            '\r' => buf.push_str("\\r"),
            c => buf.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(x: Option<f64>) -> String {
        let mut buf = String::new();
        push_f64(&mut buf, x);
        buf
    }

    #[test]
    fn floats_are_written_so_that_they_parse_back_bit_for_bit() {
        for x in [
            0.1,
            -0.0,
            1e-300,
            1e300,
            f64::MIN_POSITIVE,
            123456.789,
            1.0 / 3.0,
            f64::MAX,
        ] {
            let text = f(Some(x));
            assert!(!text.contains('e'), "{text}");
            let back: f64 = text.parse().expect("a float");
            assert_eq!(back.to_bits(), x.to_bits(), "{text}");
        }
        assert_eq!(f(None), "\\N");
        assert_eq!(f(Some(f64::NAN)), "NaN");
        assert_eq!(f(Some(f64::INFINITY)), "Infinity");
        assert_eq!(f(Some(f64::NEG_INFINITY)), "-Infinity");
    }

    #[test]
    fn text_escapes_the_characters_copy_gives_meaning_to() {
        let mut buf = String::new();
        push_text(&mut buf, Some("a\tb\nc\\d\re"));
        assert_eq!(buf, "a\\tb\\nc\\\\d\\re");
        buf.clear();
        push_text(&mut buf, None);
        assert_eq!(buf, "\\N");
    }
}
