//! Prometheus as a KPI source: PromQL run as range queries over `GET /api/v1/query_range`.
//!
//! **Buckets.** The range query's `step` is the KPI's interval and its evaluation times are
//! bucket *ends*: the value evaluated at `t + interval` is the bucket `[t, t + interval)`.
//! So `increase(orders_total[$__interval])` is the orders placed in the bucket, and
//! `avg_over_time(queue_depth[$__interval])` a gauge's mean over it (`$__interval` is
//! replaced by the interval, e.g. `5m`). Only buckets wholly inside the window are read.
//!
//! **Series.** Each result series is one series of the KPI; its labels (but `__name__`)
//! are its dimensions. A ratio KPI runs two expressions and joins them on labels and time:
//! a numerator point missing where the denominator has one is 0 (nothing counted).
//!
//! **Limits.** Prometheus refuses a range query of more than 11,000 points per series, so a
//! long window (a 28-day backfill at 1-minute buckets is 40,320 steps) is split into pieces
//! of at most `max_steps_per_query` steps. The point cap (`row_cap`) counts every point of
//! every piece. `statement_timeout` is both the request timeout and Prometheus's own
//! `timeout` parameter.
//!
//! **Errors and warnings.** An error response keeps Prometheus's `errorType` and message
//! (`bad_data: 1:26: parse error: …`); `timeout`/`canceled` are timeouts and `unavailable`
//! or a 5xx an outage (data missing). The `warnings` of a successful response (e.g. a
//! failing remote-read endpoint) are passed on with the rows.
//!
//! Read-only by construction: only `GET /api/v1/query_range` and `GET /api/v1/query` (the
//! healthcheck) are ever called.

use std::collections::BTreeMap;

use chrono::DateTime;
use serde::Deserialize;

use super::http::{excerpt, Endpoint};
use super::{Error, Fetched, RawRow, Result, Window};
use crate::config::SourceConfig;
use crate::kpi::{Interval, Kind, Query, INTERVAL_PLACEHOLDER};

const RANGE_QUERY: &str = "api/v1/query_range";
const INSTANT_QUERY: &str = "api/v1/query";

/// A Prometheus server (or anything speaking its query API: Thanos, Mimir, VictoriaMetrics).
#[derive(Debug)]
pub struct Prometheus {
    http: Endpoint,
    max_steps: usize,
    row_cap: usize,
}

/// One result series: its labels (without `__name__`) and its points by evaluation time.
type Series = (BTreeMap<String, String>, Vec<(i64, f64)>);

#[derive(Debug, Deserialize)]
struct Response {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    warnings: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

#[derive(Debug, Deserialize)]
struct MatrixSeries {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    #[serde(default)]
    values: Vec<(f64, String)>,
}

impl Prometheus {
    pub(super) fn build(name: &str, cfg: &SourceConfig) -> Result<Self> {
        Ok(Prometheus {
            http: Endpoint::build(name, cfg)?,
            max_steps: cfg.max_steps_per_query.max(2),
            row_cap: cfg.row_cap,
        })
    }

    /// An instant query of `vector(1)`: the query path a KPI takes, minus the data.
    pub(super) async fn healthcheck(&self) -> Result<()> {
        let reply = self
            .http
            .get(INSTANT_QUERY, &[("query", "vector(1)".to_owned())])
            .await?;
        self.decode(reply.status, &reply.body).map(drop)
    }

    pub(super) async fn fetch(
        &self,
        query: &Query,
        kind: Kind,
        interval: Interval,
        window: Window,
    ) -> Result<Fetched> {
        let with_interval = |e: &str| e.replace(INTERVAL_PLACEHOLDER, &interval.literal());
        let (first, second) = match (query, kind) {
            (Query::PromQl(expr), Kind::Count | Kind::Gauge) => (with_interval(expr), None),
            (
                Query::PromQlRatio {
                    numerator,
                    denominator,
                },
                Kind::Ratio,
            ) => (with_interval(numerator), Some(with_interval(denominator))),
            (Query::PromQl(_) | Query::PromQlRatio { .. }, kind) => {
                return Err(Error::Contract(format!(
                    "a {kind} KPI on Prometheus needs {}",
                    if kind == Kind::Ratio {
                        "numerator.promql and denominator.promql"
                    } else {
                        "one expression in query.promql"
                    }
                )))
            }
            (other, _) => {
                return Err(Error::WrongLanguage {
                    name: self.http.name().to_owned(),
                    speaks: "Prometheus",
                    expected: "query.promql (or numerator.promql + denominator.promql)",
                    found: other.files(),
                })
            }
        };
        let step = interval.secs_i64();
        let mut out = Fetched::default();
        let mut points = 0usize;
        let mut numerators = Vec::new();
        let mut denominators = Vec::new();
        for (start, end) in chunks(window, step, self.max_steps) {
            let (series, warnings) = self.range(&first, start, end, step).await?;
            points += series.iter().map(|s| s.1.len()).sum::<usize>();
            numerators.extend(series);
            add_warnings(&mut out.warnings, warnings);
            if let Some(second) = &second {
                let (series, warnings) = self.range(second, start, end, step).await?;
                points += series.iter().map(|s| s.1.len()).sum::<usize>();
                denominators.extend(series);
                add_warnings(&mut out.warnings, warnings);
            }
            if points > self.row_cap {
                return Err(Error::TooManyRows {
                    name: self.http.name().to_owned(),
                    cap: self.row_cap,
                });
            }
        }
        let (rows, notes) = if second.is_some() {
            join_ratio(numerators, denominators, step)?
        } else {
            single(numerators, step)
        };
        add_warnings(&mut out.warnings, notes);
        out.rows = rows;
        Ok(out)
    }

    /// One range query: evaluation times `start, start + step, …, end` (unix seconds).
    async fn range(&self, expr: &str, start: i64, end: i64, step: i64) -> Result<(Vec<Series>, Vec<String>)> {
        let timeout_ms = self.http.timeout.as_millis().max(1);
        let reply = self
            .http
            .get(
                RANGE_QUERY,
                &[
                    ("query", expr.to_owned()),
                    ("start", start.to_string()),
                    ("end", end.to_string()),
                    ("step", step.to_string()),
                    ("timeout", format!("{timeout_ms}ms")),
                ],
            )
            .await?;
        let (data, warnings) = self.decode(reply.status, &reply.body)?;
        let series = matrix(data).map_err(Error::Contract)?;
        Ok((series, warnings))
    }

    /// A reply's data and warnings, or the error Prometheus reported, in its words.
    fn decode(&self, status: reqwest::StatusCode, body: &[u8]) -> Result<(Data, Vec<String>)> {
        let Ok(parsed) = serde_json::from_slice::<Response>(body) else {
            return Err(self.http.status_error(status, &excerpt(body)));
        };
        if parsed.status == "success" {
            return parsed
                .data
                .map(|d| (d, parsed.warnings))
                .ok_or_else(|| Error::Contract("Prometheus answered success without data".to_owned()));
        }
        let kind = parsed.error_type.unwrap_or_else(|| "error".to_owned());
        let message = format!("{kind}: {}", parsed.error.unwrap_or_default());
        Err(match kind.as_str() {
            "timeout" | "canceled" => self.http.timed_out(),
            "unavailable" => self.http.unreachable(message),
            _ if status.is_server_error() && kind == "internal" => self.http.unreachable(message),
            _ => Error::Query {
                name: self.http.name().to_owned(),
                message,
            },
        })
    }
}

fn add_warnings(into: &mut Vec<String>, new: Vec<String>) {
    for w in new {
        if !into.contains(&w) {
            into.push(w);
        }
    }
}

/// The range queries that cover every bucket `[b, b + step)` wholly inside `window`, as
/// `(first, last)` evaluation times (bucket ends), at most `max_steps` evaluations each.
pub(super) fn chunks(window: Window, step: i64, max_steps: usize) -> Vec<(i64, i64)> {
    let step = step.max(1);
    let first_bucket = window.start.timestamp().div_euclid(step) * step;
    let first_bucket = if first_bucket < window.start.timestamp() {
        first_bucket + step
    } else {
        first_bucket
    };
    let last_end = window.end.timestamp().div_euclid(step) * step;
    let mut out = Vec::new();
    let per = i64::try_from(max_steps.max(1)).unwrap_or(i64::MAX);
    let mut eval = first_bucket + step;
    while eval <= last_end {
        let end = eval.saturating_add((per - 1).saturating_mul(step)).min(last_end);
        out.push((eval, end));
        eval = end + step;
    }
    out
}

/// The series of a `matrix` result (what range queries return).
fn matrix(data: Data) -> std::result::Result<Vec<Series>, String> {
    if data.result_type != "matrix" {
        return Err(format!(
            "Prometheus returned a {} for a range query; expected a matrix",
            data.result_type
        ));
    }
    let raw: Vec<MatrixSeries> =
        serde_json::from_value(data.result).map_err(|e| format!("unexpected range query result: {e}"))?;
    raw.into_iter()
        .map(|s| {
            let mut labels = s.metric;
            labels.remove("__name__");
            let points = s
                .values
                .into_iter()
                .map(|(t, v)| Ok((t.round() as i64, number(&v)?)))
                .collect::<std::result::Result<Vec<_>, String>>()?;
            Ok((labels, points))
        })
        .collect()
}

/// A sample value as Prometheus writes it (`"1"`, `"0.25"`, `"NaN"`, `"+Inf"`).
fn number(v: &str) -> std::result::Result<f64, String> {
    match v {
        "NaN" => Ok(f64::NAN),
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        other => other
            .parse()
            .map_err(|_| format!("Prometheus returned the sample value {other:?}")),
    }
}

fn ts(eval: i64, step: i64) -> Option<DateTime<chrono::Utc>> {
    DateTime::from_timestamp(eval - step, 0)
}

fn dims(labels: &BTreeMap<String, String>) -> Vec<(String, String)> {
    labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn not_finite_note(n: usize) -> String {
    format!("{n} point(s) were NaN or infinite (e.g. a division by zero) and were read as missing")
}

/// Rows of a count or gauge KPI: one per point, at the start of the bucket it closes.
/// NaN and infinite points (a division by zero) are missing data, with a note.
pub(super) fn single(series: Vec<Series>, step: i64) -> (Vec<RawRow>, Vec<String>) {
    let mut rows = Vec::new();
    let mut not_finite = 0;
    for (labels, points) in series {
        for (eval, v) in points {
            if !v.is_finite() {
                not_finite += 1;
                continue;
            }
            if let Some(ts) = ts(eval, step) {
                rows.push(RawRow {
                    ts,
                    value: Some(v),
                    denominator: None,
                    dims: dims(&labels),
                });
            }
        }
    }
    let notes = (not_finite > 0).then(|| not_finite_note(not_finite));
    (rows, notes.into_iter().collect())
}

/// Rows of a ratio KPI: denominator points joined with the numerator point of the same
/// labels and time (0 when the numerator has none). A numerator slightly above its
/// denominator (`increase()` extrapolates each series on its own) is clamped, with a note;
/// far above, or negative, breaks the contract.
pub(super) fn join_ratio(
    numerators: Vec<Series>,
    denominators: Vec<Series>,
    step: i64,
) -> Result<(Vec<RawRow>, Vec<String>)> {
    let mut num: BTreeMap<(BTreeMap<String, String>, i64), f64> = BTreeMap::new();
    for (labels, points) in numerators {
        for (eval, v) in points {
            num.insert((labels.clone(), eval), v);
        }
    }
    let mut rows = Vec::new();
    let mut not_finite = 0;
    let mut clamped = 0;
    for (labels, points) in denominators {
        for (eval, d) in points {
            let n = num.remove(&(labels.clone(), eval)).unwrap_or(0.0);
            if !n.is_finite() || !d.is_finite() {
                not_finite += 1;
                continue;
            }
            let Some(at) = ts(eval, step) else { continue };
            if n < 0.0 || d < 0.0 || n > d * 1.1 + 1.0 {
                return Err(Error::Contract(format!(
                    "numerator {n} and denominator {d} at {at} ({labels:?}): need 0 <= numerator <= denominator; are numerator.promql and denominator.promql the right way round?"
                )));
            }
            if n > d {
                clamped += 1;
            }
            rows.push(RawRow {
                ts: at,
                value: Some(n.min(d)),
                denominator: Some(d),
                dims: dims(&labels),
            });
        }
    }
    let mut notes = Vec::new();
    if !num.is_empty() {
        notes.push(format!(
            "{} numerator point(s) had no denominator point with the same labels and time and were dropped; both expressions must return the same label sets (aggregate with sum by (…))",
            num.len()
        ));
    }
    if clamped > 0 {
        notes.push(format!(
            "{clamped} numerator point(s) slightly exceeded their denominator (increase() extrapolates each series separately) and were clamped to it"
        ));
    }
    if not_finite > 0 {
        notes.push(not_finite_note(not_finite));
    }
    Ok((rows, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(start: i64, end: i64) -> Window {
        Window {
            start: DateTime::from_timestamp(start, 0).expect("valid"),
            end: DateTime::from_timestamp(end, 0).expect("valid"),
        }
    }

    #[test]
    fn range_queries_evaluate_at_bucket_ends_and_split_long_windows() {
        // Four 5-minute buckets: evaluations at their ends, 300 … 1200.
        assert_eq!(chunks(window(0, 1200), 300, 11_000), vec![(300, 1200)]);
        // At most 3 evaluations per query: 300-900, then 1200.
        assert_eq!(chunks(window(0, 1200), 300, 3), vec![(300, 900), (1200, 1200)]);
        // A window that does not start on a boundary reads only whole buckets.
        assert_eq!(chunks(window(10, 1200), 300, 100), vec![(600, 1200)]);
        assert!(chunks(window(0, 200), 300, 100).is_empty());
        // 28 days of 1-minute buckets fit Prometheus's 11,000-point limit in 4 queries, and
        // every bucket is read exactly once.
        let pieces = chunks(window(0, 28 * 86_400), 60, 11_000);
        assert_eq!(pieces.len(), 4);
        let evaluations: i64 = pieces.iter().map(|(s, e)| (e - s) / 60 + 1).sum();
        assert_eq!(evaluations, 28 * 1440);
        assert!(pieces.windows(2).all(|w| w[1].0 == w[0].1 + 60));
    }

    #[test]
    fn a_matrix_becomes_rows_at_bucket_starts_with_labels_as_dimensions() {
        let body = br#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{"__name__":"x","country":"DE"},"values":[[600,"12"],[900,"NaN"],[1200,"3.5"]]}
        ]},"warnings":["remote_read: connection refused"]}"#;
        let parsed: Response = serde_json::from_slice(body).expect("json");
        assert_eq!(
            parsed.warnings,
            vec!["remote_read: connection refused".to_owned()]
        );
        let series = matrix(parsed.data.expect("data")).expect("matrix");
        let (rows, notes) = single(series, 300);
        let got: Vec<_> = rows
            .into_iter()
            .map(|r| (r.ts.timestamp(), r.value, r.dims))
            .collect();
        let de = vec![("country".to_owned(), "DE".to_owned())];
        assert_eq!(got, vec![(300, Some(12.0), de.clone()), (900, Some(3.5), de)]);
        assert_eq!(notes.len(), 1, "the NaN point is reported: {notes:?}");
    }

    #[test]
    fn ratio_expressions_join_on_labels_and_time() {
        let a = |p: &str| BTreeMap::from([("provider".to_owned(), p.to_owned())]);
        let num = vec![(a("x"), vec![(300, 9.0)]), (a("y"), vec![(300, 4.2)])];
        let den = vec![
            (a("x"), vec![(300, 10.0), (600, 5.0)]),
            (a("y"), vec![(300, 4.0)]),
        ];
        let (rows, notes) = join_ratio(num, den, 300).expect("joins");
        let got: Vec<(i64, Option<f64>, Option<f64>)> = rows
            .iter()
            .map(|r| (r.ts.timestamp(), r.value, r.denominator))
            .collect();
        // x@600 has no numerator point: nothing succeeded. y's 4.2 of 4 is clamped.
        assert_eq!(
            got,
            vec![
                (0, Some(9.0), Some(10.0)),
                (300, Some(0.0), Some(5.0)),
                (0, Some(4.0), Some(4.0))
            ]
        );
        assert!(notes.iter().any(|n| n.contains("clamped")), "{notes:?}");

        let swapped = join_ratio(
            vec![(a("x"), vec![(300, 10.0)])],
            vec![(a("x"), vec![(300, 2.0)])],
            300,
        );
        assert!(matches!(swapped, Err(Error::Contract(m)) if m.contains("right way round")));
    }

    #[test]
    fn sample_values_parse_as_prometheus_writes_them() {
        assert_eq!(number("1e3"), Ok(1000.0));
        assert!(number("NaN").expect("nan").is_nan());
        assert_eq!(number("-Inf"), Ok(f64::NEG_INFINITY));
        assert!(number("one").is_err());
    }
}
