//! `kpiwatch check`: validate the config and every model, then run each KPI query once
//! against its source over its last few buckets, and print a table of what is wrong.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use crate::config::Settings;
use crate::kpi::KpiSpec;
use crate::sources::SourceRegistry;

/// One row of the check table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRow {
    /// KPI id.
    pub kpi: String,
    /// Source name.
    pub source: String,
    /// `ok` or `FAIL`.
    pub status: &'static str,
    /// Rows returned or what is wrong.
    pub detail: String,
}

/// Run every KPI's query once over its last `buckets` buckets before `now`.
pub async fn run_queries(
    settings: &Settings,
    specs: &[KpiSpec],
    now: DateTime<Utc>,
    buckets: i64,
) -> Vec<CheckRow> {
    let registry = match SourceRegistry::build(&settings.sources) {
        Ok(r) => r,
        Err(e) => {
            return specs
                .iter()
                .map(|s| CheckRow {
                    kpi: s.id.to_string(),
                    source: s.source.clone(),
                    status: "FAIL",
                    detail: e.to_string(),
                })
                .collect()
        }
    };
    let mut rows = Vec::new();
    for spec in specs {
        let result = crate::pipeline::test_query(&registry, spec, now, buckets)
            .await
            .map(|(r, s)| (r.len(), s));
        rows.push(match result {
            Ok((n, s)) => CheckRow {
                kpi: spec.id.to_string(),
                source: spec.source.clone(),
                status: "ok",
                detail: format!("{n} rows, {s} series over the last {buckets} buckets"),
            },
            Err(e) => CheckRow {
                kpi: spec.id.to_string(),
                source: spec.source.clone(),
                status: "FAIL",
                detail: e.to_string(),
            },
        });
    }
    rows
}

/// Render the check table.
pub fn render(rows: &[CheckRow]) -> String {
    let w_kpi = rows.iter().map(|r| r.kpi.len()).max().unwrap_or(3).max(3);
    let w_src = rows.iter().map(|r| r.source.len()).max().unwrap_or(6).max(6);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<w_kpi$}  {:<w_src$}  {:<6}  DETAIL",
        "KPI", "SOURCE", "STATUS"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<w_kpi$}  {:<w_src$}  {:<6}  {}",
            r.kpi, r.source, r.status, r.detail
        );
    }
    out
}
