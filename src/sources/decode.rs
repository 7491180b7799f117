//! Decodes one result row into a [`RawRow`] following the query contract, whatever column
//! types the driver reports (integers, floats, decimals, timestamps, dates, text) — and the
//! same for rows that arrive as JSON from an HTTP source ([`JsonRow`]).

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use sqlx::mysql::MySqlRow;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{Column, Row};

use super::{Error, Result};
use crate::kpi::Kind;

/// One row of a KPI query, before bucketing.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRow {
    /// Bucket start (or any instant inside the bucket; it is floored later).
    pub ts: DateTime<Utc>,
    /// `value` (count or gauge) or `numerator` (ratio). `None` if NULL.
    pub value: Option<f64>,
    /// `denominator` for ratios.
    pub denominator: Option<f64>,
    /// Dimension columns as `(name, value)`, in column order.
    pub dims: Vec<(String, String)>,
}

/// Per-driver access to typed cells. Each tries the types its driver can report, in order.
pub(super) trait Cells {
    fn column_names(&self) -> Vec<String>;
    fn number(&self, i: usize) -> std::result::Result<Option<f64>, ()>;
    fn timestamp(&self, i: usize) -> std::result::Result<Option<DateTime<Utc>>, ()>;
    fn text(&self, i: usize) -> std::result::Result<Option<String>, ()>;
}

/// Try `row.try_get::<Option<T>>(i)` for each listed type; the first that decodes wins.
macro_rules! first_decoding {
    ($row:expr, $i:expr, [$($ty:ty => $conv:expr),+ $(,)?]) => {{
        let mut out: std::result::Result<Option<_>, ()> = Err(());
        $(
            if out.is_err() {
                if let Ok(v) = $row.try_get::<Option<$ty>, _>($i) {
                    out = Ok(v.and_then($conv));
                }
            }
        )+
        out
    }};
}

fn decimal(d: Decimal) -> Option<f64> {
    d.to_f64()
}

fn text_ts(s: String) -> Option<DateTime<Utc>> {
    parse_timestamp(&s)
}

/// Timestamps as text: RFC 3339, `YYYY-MM-DD HH:MM:SS[.f]`, `YYYY-MM-DDTHH:MM:SS` or a date.
/// Text without an offset is UTC.
pub fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

fn epoch(secs: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(secs, 0)
}

fn names<R: Row>(row: &R) -> Vec<String> {
    row.columns()
        .iter()
        .map(|c| c.name().to_ascii_lowercase())
        .collect()
}

impl Cells for PgRow {
    fn column_names(&self) -> Vec<String> {
        names(self)
    }
    fn number(&self, i: usize) -> std::result::Result<Option<f64>, ()> {
        first_decoding!(self, i, [
            f64 => Some, f32 => |v: f32| Some(f64::from(v)), i64 => |v: i64| Some(v as f64),
            i32 => |v: i32| Some(f64::from(v)), i16 => |v: i16| Some(f64::from(v)), Decimal => decimal,
        ])
    }
    fn timestamp(&self, i: usize) -> std::result::Result<Option<DateTime<Utc>>, ()> {
        first_decoding!(self, i, [
            DateTime<Utc> => Some, NaiveDateTime => |t: NaiveDateTime| Some(t.and_utc()),
            NaiveDate => |d: NaiveDate| d.and_hms_opt(0, 0, 0).map(|t| t.and_utc()),
            i64 => epoch, String => text_ts,
        ])
    }
    fn text(&self, i: usize) -> std::result::Result<Option<String>, ()> {
        first_decoding!(self, i, [
            String => Some, i64 => |v: i64| Some(v.to_string()), i32 => |v: i32| Some(v.to_string()),
            bool => |v: bool| Some(v.to_string()),
        ])
    }
}

impl Cells for MySqlRow {
    fn column_names(&self) -> Vec<String> {
        names(self)
    }
    fn number(&self, i: usize) -> std::result::Result<Option<f64>, ()> {
        first_decoding!(self, i, [
            f64 => Some, f32 => |v: f32| Some(f64::from(v)), i64 => |v: i64| Some(v as f64),
            u64 => |v: u64| Some(v as f64), Decimal => decimal,
        ])
    }
    fn timestamp(&self, i: usize) -> std::result::Result<Option<DateTime<Utc>>, ()> {
        first_decoding!(self, i, [
            NaiveDateTime => |t: NaiveDateTime| Some(t.and_utc()), DateTime<Utc> => Some,
            NaiveDate => |d: NaiveDate| d.and_hms_opt(0, 0, 0).map(|t| t.and_utc()),
            i64 => epoch, String => text_ts,
        ])
    }
    fn text(&self, i: usize) -> std::result::Result<Option<String>, ()> {
        first_decoding!(self, i, [
            String => Some, i64 => |v: i64| Some(v.to_string()), u64 => |v: u64| Some(v.to_string()),
        ])
    }
}

impl Cells for SqliteRow {
    fn column_names(&self) -> Vec<String> {
        names(self)
    }
    fn number(&self, i: usize) -> std::result::Result<Option<f64>, ()> {
        first_decoding!(self, i, [i64 => |v: i64| Some(v as f64), f64 => Some])
    }
    fn timestamp(&self, i: usize) -> std::result::Result<Option<DateTime<Utc>>, ()> {
        first_decoding!(self, i, [String => text_ts, i64 => epoch])
    }
    fn text(&self, i: usize) -> std::result::Result<Option<String>, ()> {
        first_decoding!(self, i, [
            String => Some, i64 => |v: i64| Some(v.to_string()), f64 => |v: f64| Some(v.to_string()),
        ])
    }
}

/// A result row that arrived as JSON (InfluxDB): column names and their values, in order.
#[derive(Debug)]
pub(super) struct JsonRow<'a> {
    /// Column names, lower-case, the time column named `ts`.
    pub(super) names: &'a [String],
    /// One value per name.
    pub(super) values: &'a [serde_json::Value],
}

impl JsonRow<'_> {
    fn cell(&self, i: usize) -> &serde_json::Value {
        self.values.get(i).unwrap_or(&serde_json::Value::Null)
    }
}

impl Cells for JsonRow<'_> {
    fn column_names(&self) -> Vec<String> {
        self.names.to_vec()
    }
    fn number(&self, i: usize) -> std::result::Result<Option<f64>, ()> {
        match self.cell(i) {
            serde_json::Value::Null => Ok(None),
            serde_json::Value::Number(n) => n.as_f64().map(Some).ok_or(()),
            _ => Err(()),
        }
    }
    fn timestamp(&self, i: usize) -> std::result::Result<Option<DateTime<Utc>>, ()> {
        match self.cell(i) {
            serde_json::Value::Null => Ok(None),
            serde_json::Value::Number(n) => n.as_i64().map(epoch).ok_or(()),
            serde_json::Value::String(s) => Ok(parse_timestamp(s)),
            _ => Err(()),
        }
    }
    fn text(&self, i: usize) -> std::result::Result<Option<String>, ()> {
        match self.cell(i) {
            serde_json::Value::Null => Ok(None),
            serde_json::Value::String(s) => Ok(Some(s.clone())),
            serde_json::Value::Number(n) => Ok(Some(n.to_string())),
            serde_json::Value::Bool(b) => Ok(Some(b.to_string())),
            _ => Err(()),
        }
    }
}

/// Decode one row for a KPI of `kind`.
pub(super) fn decode<R: Cells>(row: &R, kind: Kind) -> Result<RawRow> {
    let cols = row.column_names();
    let find = |name: &str| cols.iter().position(|c| c == name);
    let list = || cols.join(", ");
    let ts_i = find("ts").ok_or_else(|| {
        Error::Contract(format!(
            "no `ts` column (bucket start); the query returned: {}",
            list()
        ))
    })?;
    let ts = row
        .timestamp(ts_i)
        .map_err(|()| {
            Error::Contract("`ts` is not a timestamp, date, epoch seconds or timestamp text".to_owned())
        })?
        .ok_or_else(|| Error::Contract("`ts` is NULL".to_owned()))?;
    let number = |name: &str| -> Result<(usize, Option<f64>)> {
        let i = find(name).ok_or_else(|| {
            let need = if kind == Kind::Ratio {
                "`numerator` and `denominator`"
            } else {
                "`value`"
            };
            Error::Contract(format!(
                "a {kind} KPI needs {need} columns; the query returned: {}",
                list()
            ))
        })?;
        let v = row
            .number(i)
            .map_err(|()| Error::Contract(format!("`{name}` is not numeric")))?;
        if v.is_some_and(|v| !v.is_finite()) {
            return Err(Error::Contract(format!("`{name}` is not a finite number")));
        }
        Ok((i, v))
    };
    let (value, denominator, used) = if kind == Kind::Ratio {
        let (ni, n) = number("numerator")?;
        let (di, d) = number("denominator")?;
        if let (Some(n), Some(d)) = (n, d) {
            if d < 0.0 || n < 0.0 || n > d {
                return Err(Error::Contract(format!(
                    "numerator {n} and denominator {d} at {ts}: need 0 <= numerator <= denominator"
                )));
            }
        }
        (n, d, vec![ts_i, ni, di])
    } else {
        let (vi, v) = number("value")?;
        (v, None, vec![ts_i, vi])
    };
    let mut dims = Vec::new();
    for (i, name) in cols.iter().enumerate() {
        if used.contains(&i) {
            continue;
        }
        let v = row
            .text(i)
            .map_err(|()| Error::Contract(format!("dimension column `{name}` is not text or an integer")))?
            .unwrap_or_default();
        dims.push((name.clone(), v));
    }
    Ok(RawRow {
        ts,
        value,
        denominator,
        dims,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_in_the_usual_text_forms() {
        let want = epoch(1_772_409_600).expect("valid");
        for s in [
            "2026-03-02 00:00:00",
            "2026-03-02T00:00:00Z",
            "2026-03-02",
            "2026-03-02T01:00:00+01:00",
            "2026-03-02 00:00:00.000",
        ] {
            assert_eq!(parse_timestamp(s), Some(want), "{s}");
        }
        assert_eq!(parse_timestamp("yesterday"), None);
    }
}
