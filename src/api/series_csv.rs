//! `GET /api/kpis/{id}/series?format=csv`: the series answer as one CSV table, in the column
//! order of `docs/EXPORT.md` (`kpi, series, dim_<name>…, ts, time, value, …, status`; the
//! export's `incident_id` and `feedback` columns are not part of it).
//!
//! Built from the JSON answer itself (whatever filters produced it), so the two never drift.

use std::collections::BTreeSet;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// Columns after the dimension columns, with the JSON field each comes from.
const POINT_COLUMNS: [(&str, &str); 12] = [
    ("ts", "ts"),
    ("time", "ts"),
    ("value", "value"),
    ("denominator", "denominator"),
    ("band_value", "band_value"),
    ("expected", "expected"),
    ("lower", "lower"),
    ("upper", "upper"),
    ("score", "score"),
    ("anomaly", "anomaly"),
    ("flagged_by", "flagged_by"),
    ("status", "status"),
];

fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The CSV text of `series` (the JSON answer of the series endpoint) for KPI `kpi`.
pub(super) fn csv_text(kpi: &str, series: &Value) -> Result<String, csv::Error> {
    let list = series.as_array().map(Vec::as_slice).unwrap_or_default();
    let names: BTreeSet<&str> = list
        .iter()
        .filter_map(|s| s["dims"].as_object())
        .flat_map(|d| d.keys().map(String::as_str))
        .collect();
    let mut out = csv::Writer::from_writer(Vec::new());
    let mut head = vec!["kpi".to_owned(), "series".to_owned()];
    head.extend(names.iter().map(|n| format!("dim_{n}")));
    head.extend(POINT_COLUMNS.iter().map(|(c, _)| (*c).to_owned()));
    out.write_record(&head)?;
    for s in list {
        let dims = &s["dims"];
        let series_json = serde_json::to_string(dims).unwrap_or_else(|_| "{}".to_owned());
        for p in s["points"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let mut row = vec![kpi.to_owned(), series_json.clone()];
            row.extend(names.iter().map(|n| cell(&dims[*n])));
            for (column, field) in POINT_COLUMNS {
                row.push(match column {
                    "ts" => p[field]
                        .as_str()
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                        .map(|t| t.timestamp().to_string())
                        .unwrap_or_default(),
                    _ => cell(&p[field]),
                });
            }
            out.write_record(&row)?;
        }
    }
    let bytes = out.into_inner().map_err(|e| e.into_error())?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The CSV answer, with a file name for browsers.
pub(super) fn response(kpi: &str, series: &Value) -> super::ApiResult<Response> {
    let text = csv_text(kpi, series).map_err(|e| super::ApiError::Internal(e.into()))?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{kpi}-series.csv\""),
            ),
        ],
        text,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_row_per_bucket_with_dimension_columns_and_empty_cells_for_nulls() {
        let series = serde_json::json!([
            {"dims": {"provider": "a"}, "points": [
                {"ts": "2026-03-30T12:00:00+00:00", "value": 9.0, "denominator": 10.0, "band_value": 0.9,
                 "expected": 0.95, "lower": 0.9, "upper": 1.0, "score": 0.4, "anomaly": false,
                 "flagged_by": null, "status": "evaluated"}]},
            {"dims": {"provider": "b, \"quoted\"", "region": "eu"}, "points": [
                {"ts": "2026-03-30T12:05:00+00:00", "value": 1.0, "denominator": 5.0, "band_value": null,
                 "expected": null, "lower": null, "upper": null, "score": null, "anomaly": null,
                 "flagged_by": null, "status": null}]}
        ]);
        let text = csv_text("payments", &series).expect("csv");
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let head: Vec<String> = reader
            .headers()
            .expect("head")
            .iter()
            .map(str::to_owned)
            .collect();
        assert_eq!(&head[..4], ["kpi", "series", "dim_provider", "dim_region"]);
        assert_eq!(head.len(), 4 + POINT_COLUMNS.len());
        let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("row")).collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(&rows[0][2], "a");
        assert_eq!(&rows[0][3], "", "a series without the dimension");
        assert_eq!(&rows[0][4], "1774872000");
        assert_eq!(&rows[0][5], "2026-03-30T12:00:00+00:00");
        assert_eq!(&rows[1][2], "b, \"quoted\"", "quoted, not split");
        assert_eq!(&rows[1][10], "", "null expected is an empty cell");
    }
}
