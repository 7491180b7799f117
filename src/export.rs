//! `kpiwatch export`: a KPI's stored buckets with their verdicts, incidents and feedback as
//! one table per KPI, for notebooks and warehouses. The columns are documented in
//! `docs/EXPORT.md` ([`COLUMNS`] lists the fixed ones; dimension columns `dim_<name>` come
//! after `series`).
//!
//! [`table`] reads the store (always built); [`write`] writes Parquet or CSV with `polars`
//! and exists only with the `export` cargo feature (polars adds minutes to a cold build).

use std::collections::{BTreeMap, BTreeSet};

use crate::kpi::KpiSpec;
use crate::reading::{known, Reading};
use crate::store::Store;

/// The fixed columns, in order (dimension columns follow `series`).
pub const COLUMNS: [&str; 16] = [
    "kpi",
    "series",
    "ts",
    "time",
    "value",
    "denominator",
    "band_value",
    "expected",
    "lower",
    "upper",
    "score",
    "anomaly",
    "flagged_by",
    "status",
    "incident_id",
    "feedback",
];

/// One KPI's export, column by column (all columns have `len()` rows).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    /// KPI id.
    pub kpi: Vec<String>,
    /// Dimension values as JSON (`{}` for none).
    pub series: Vec<String>,
    /// Dimension columns: name → value per row (null where a series lacks the dimension).
    pub dims: BTreeMap<String, Vec<Option<String>>>,
    /// Bucket start, unix seconds (UTC).
    pub ts: Vec<i64>,
    /// Bucket start, RFC 3339.
    pub time: Vec<String>,
    /// Count, gauge value or a ratio's numerator.
    pub value: Vec<f64>,
    /// A ratio's denominator.
    pub denominator: Vec<Option<f64>>,
    /// The value in band units (a ratio as a fraction).
    pub band_value: Vec<Option<f64>>,
    /// Expected value.
    pub expected: Vec<Option<f64>>,
    /// Band lower edge.
    pub lower: Vec<Option<f64>>,
    /// Band upper edge.
    pub upper: Vec<Option<f64>>,
    /// Anomaly score in [0, 1].
    pub score: Vec<Option<f64>>,
    /// Flagged.
    pub anomaly: Vec<Option<bool>>,
    /// What flagged it.
    pub flagged_by: Vec<Option<String>>,
    /// Detector status (`evaluated`, `warming_up`, `excluded`, …).
    pub status: Vec<Option<String>>,
    /// The alert whose incident covers the bucket, if any.
    pub incident_id: Vec<Option<i64>>,
    /// Feedback given on the bucket (`not_anomaly`, `new_normal`).
    pub feedback: Vec<Option<String>>,
}

impl Table {
    /// Rows.
    pub fn len(&self) -> usize {
        self.ts.len()
    }

    /// Whether it has no rows.
    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }
}

/// `spec`'s buckets in `[from, to)` with verdicts, incidents and feedback, series by series
/// in time order.
pub async fn table(store: &Store, spec: &KpiSpec, from: i64, to: i64) -> crate::store::Result<Table> {
    let id = spec.id.as_str();
    let series = store.series_of(id).await?;
    let parsed: Vec<BTreeMap<String, String>> = series
        .iter()
        .map(|s| {
            serde_json::from_str::<BTreeMap<String, serde_json::Value>>(&s.dims)
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
                .collect()
        })
        .collect();
    let names: BTreeSet<&String> = parsed.iter().flat_map(BTreeMap::keys).collect();
    let mut t = Table {
        dims: names.iter().map(|n| ((*n).clone(), Vec::new())).collect(),
        ..Table::default()
    };
    let alerts = store.alerts_between(id, from, to).await?;
    for (s, dims) in series.iter().zip(&parsed) {
        let evals: BTreeMap<i64, crate::store::EvaluationRow> = store
            .evaluations(s.id, from, to)
            .await?
            .into_iter()
            .map(|e| (e.ts, e))
            .collect();
        let feedback: BTreeMap<i64, String> = store
            .feedback(s.id, from, to)
            .await?
            .into_iter()
            .map(|f| (f.ts, f.kind))
            .collect();
        let mine: Vec<&crate::store::AlertRow> = alerts
            .iter()
            .filter(|a| a.kind == "anomaly" && a.series_id == Some(s.id))
            .collect();
        for o in store.observations(s.id, from, to).await? {
            let e = evals.get(&o.ts);
            t.kpi.push(id.to_owned());
            t.series.push(s.dims.clone());
            for (name, col) in &mut t.dims {
                col.push(dims.get(name).cloned());
            }
            t.ts.push(o.ts);
            t.time.push(
                chrono::DateTime::from_timestamp(o.ts, 0)
                    .map(|d| d.to_rfc3339())
                    .unwrap_or_default(),
            );
            t.value.push(o.value);
            t.denominator.push(o.denominator);
            let reading = e.map_or(Reading::NONE, |e| e.reading);
            t.band_value.push(known(reading.value));
            t.expected.push(known(reading.band.expected));
            t.lower.push(known(reading.band.lower));
            t.upper.push(known(reading.band.upper));
            t.score.push(e.map(|e| e.score));
            t.anomaly.push(e.map(|e| e.anomaly));
            t.flagged_by.push(e.and_then(|e| e.flagged_by.clone()));
            t.status.push(e.map(|e| e.status.clone()));
            t.incident_id.push(
                mine.iter()
                    .find(|a| a.started_ts <= o.ts && a.resolved_ts.is_none_or(|r| o.ts < r))
                    .map(|a| a.id),
            );
            t.feedback.push(feedback.get(&o.ts).cloned());
        }
    }
    Ok(t)
}

/// File formats of [`write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Apache Parquet (`.parquet`).
    Parquet,
    /// Comma-separated values with a header (`.csv`).
    Csv,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "parquet" => Ok(Format::Parquet),
            "csv" => Ok(Format::Csv),
            _ => Err(format!("format {s:?} is not parquet or csv")),
        }
    }
}

impl Format {
    /// The file extension.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Parquet => "parquet",
            Format::Csv => "csv",
        }
    }
}

/// Write `t` to `path` as `format` with polars; returns the rows written.
#[cfg(feature = "export")]
pub fn write(t: &Table, format: Format, path: &std::path::Path) -> anyhow::Result<usize> {
    use anyhow::Context as _;
    use polars::prelude::{Column, CsvWriter, DataFrame, ParquetWriter, SerWriter as _};

    let col = |name: &str| polars::prelude::PlSmallStr::from(name);
    let mut columns = vec![
        Column::new(col("kpi"), t.kpi.clone()),
        Column::new(col("series"), t.series.clone()),
    ];
    for (name, values) in &t.dims {
        columns.push(Column::new(col(&format!("dim_{name}")), values.clone()));
    }
    columns.extend([
        Column::new(col("ts"), t.ts.clone()),
        Column::new(col("time"), t.time.clone()),
        Column::new(col("value"), t.value.clone()),
        Column::new(col("denominator"), t.denominator.clone()),
        Column::new(col("band_value"), t.band_value.clone()),
        Column::new(col("expected"), t.expected.clone()),
        Column::new(col("lower"), t.lower.clone()),
        Column::new(col("upper"), t.upper.clone()),
        Column::new(col("score"), t.score.clone()),
        Column::new(col("anomaly"), t.anomaly.clone()),
        Column::new(col("flagged_by"), t.flagged_by.clone()),
        Column::new(col("status"), t.status.clone()),
        Column::new(col("incident_id"), t.incident_id.clone()),
        Column::new(col("feedback"), t.feedback.clone()),
    ]);
    let mut df = DataFrame::new(t.len(), columns).context("Failed to build the table")?;
    let file = std::fs::File::create(path).with_context(|| format!("Failed to create {}", path.display()))?;
    match format {
        Format::Parquet => {
            ParquetWriter::new(file)
                .finish(&mut df)
                .with_context(|| format!("Failed to write {}", path.display()))?;
        }
        Format::Csv => {
            let mut file = file;
            CsvWriter::new(&mut file)
                .finish(&mut df)
                .with_context(|| format!("Failed to write {}", path.display()))?;
        }
    }
    Ok(t.len())
}
