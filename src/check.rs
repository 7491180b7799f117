//! `kpiwatch check`: validate the config and every model, then run each KPI query once
//! against its source over its last few buckets, and print a table of what is wrong (the
//! server's own message for a rejected query, and any warnings it gave).

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
    /// `ok`, `warn` (the query ran; the source warned) or `FAIL`.
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
        let result = crate::pipeline::try_query(&registry, spec, now, buckets).await;
        rows.push(match result {
            Ok(trial) => {
                let mut detail = format!(
                    "{} rows, {} series over the last {buckets} buckets",
                    trial.rows.len(),
                    trial.series
                );
                if let Some(w) = crate::pipeline::warnings_text(&spec.source, &trial.warnings) {
                    detail = format!("{detail}; {w}");
                }
                CheckRow {
                    kpi: spec.id.to_string(),
                    source: spec.source.clone(),
                    status: if trial.warnings.is_empty() { "ok" } else { "warn" },
                    detail,
                }
            }
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
