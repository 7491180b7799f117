//! Prometheus as a KPI source: PromQL run as range queries over `GET /api/v1/query_range`.
//!
//! **Buckets.** The range query's `step` is the bucket length and its evaluation times are
//! bucket *ends*: the value evaluated at `t + interval` is the bucket `[t, t + interval)`.
//! So `increase(orders_total[$__interval])` is the orders placed in the bucket, and
//! `avg_over_time(queue_depth[$__interval])` a gauge's mean over it (`$__interval` is
//! replaced by the bucket length, e.g. `5m`). Only buckets wholly inside the window are read.
//!
//! **Local buckets.** A KPI whose buckets follow its timezone ([`Buckets::is_local`]: an
//! hour or more, not UTC) is evaluated at *its* bucket ends, not at UTC multiples: a `1d`
//! KPI in Asia/Seoul at 15:00 UTC. Buckets are not all one length there (a Berlin day is 23
//! or 25 hours when the clocks change), and a range query has one `step` and one range, so
//! the window is cut into runs of consecutive buckets of equal length ([`runs`]), one range
//! query per run with `step` and `$__interval` set to that run's length (`23h`, `1d`,
//! `25h`): the 25-hour day is one evaluation of `…[25h]` at its end, so it covers all 25
//! hours. A window without a clock change stays one query (or pieces of `max_steps`).
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
use crate::kpi::{Buckets, Kind, Query, INTERVAL_PLACEHOLDER};

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
        buckets: Buckets,
        window: Window,
    ) -> Result<Fetched> {
        let (first, second) = match (query, kind) {
            (Query::PromQl(expr), Kind::Count | Kind::Gauge) => (expr, None),
            (
                Query::PromQlRatio {
                    numerator,
                    denominator,
                },
                Kind::Ratio,
            ) => (numerator, Some(denominator)),
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
        let mut out = Fetched::default();
        let mut points = 0usize;
        let mut numerators = Vec::new();
        let mut denominators = Vec::new();
        for run in runs(buckets, window, self.max_steps) {
            let range = duration_literal(run.step);
            let expr = first.replace(INTERVAL_PLACEHOLDER, &range);
            let (series, warnings) = self.range(&expr, run).await?;
            points += series.iter().map(|s| s.1.len()).sum::<usize>();
            numerators.extend(at_starts(series, run.step));
            add_warnings(&mut out.warnings, warnings);
            if let Some(second) = &second {
                let expr = second.replace(INTERVAL_PLACEHOLDER, &range);
                let (series, warnings) = self.range(&expr, run).await?;
                points += series.iter().map(|s| s.1.len()).sum::<usize>();
                denominators.extend(at_starts(series, run.step));
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
            join_ratio(numerators, denominators)?
        } else {
            single(numerators)
        };
        add_warnings(&mut out.warnings, notes);
        out.rows = rows;
        Ok(out)
    }

    /// One range query: evaluation times `first, first + step, …, last` (unix seconds).
    async fn range(&self, expr: &str, run: Run) -> Result<(Vec<Series>, Vec<String>)> {
        let timeout_ms = self.http.timeout.as_millis().max(1);
        let reply = self
            .http
            .get(
                RANGE_QUERY,
                &[
                    ("query", expr.to_owned()),
                    ("start", run.first.to_string()),
                    ("end", run.last.to_string()),
                    ("step", run.step.to_string()),
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

/// One range query: evaluations at `first, first + step, …, last`, each the end of a bucket
/// `step` seconds long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Run {
    pub(super) first: i64,
    pub(super) last: i64,
    pub(super) step: i64,
}

/// The range queries that read every bucket of `buckets` wholly inside `window`, each
/// bucket once: for UTC buckets [`chunks`] of the interval; for local buckets runs of
/// consecutive buckets of one length (a DST day of 23 or 25 hours is a run of its own), at
/// most `max_steps` evaluations each.
pub(super) fn runs(buckets: Buckets, window: Window, max_steps: usize) -> Vec<Run> {
    if !buckets.is_local() {
        let step = buckets.nominal_secs();
        return chunks(window, step, max_steps)
            .into_iter()
            .map(|(first, last)| Run { first, last, step })
            .collect();
    }
    let (from, to) = (window.start.timestamp(), window.end.timestamp());
    let per = max_steps.max(1);
    let mut out: Vec<Run> = Vec::new();
    let mut in_last = 0usize;
    for start in buckets.starts(from, to) {
        if start < from {
            continue;
        }
        let end = buckets.end(start);
        if end > to {
            break;
        }
        match out.last_mut() {
            Some(run) if run.step == end - start && run.last == start && in_last < per => {
                run.last = end;
                in_last += 1;
            }
            _ => {
                out.push(Run {
                    first: end,
                    last: end,
                    step: end - start,
                });
                in_last = 1;
            }
        }
    }
    out
}

/// `secs` as a PromQL duration in its largest whole unit: `1d`, `25h`, `1410m` (a Lord Howe
/// day of 23 h 30 min).
fn duration_literal(secs: i64) -> String {
    if secs % 86_400 == 0 {
        format!("{}d", secs / 86_400)
    } else if secs % 3600 == 0 {
        format!("{}h", secs / 3600)
    } else if secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// Points re-stamped from evaluation time (a bucket's end) to the start of the bucket,
/// `step` seconds earlier.
fn at_starts(series: Vec<Series>, step: i64) -> Vec<Series> {
    series
        .into_iter()
        .map(|(labels, points)| (labels, points.into_iter().map(|(t, v)| (t - step, v)).collect()))
        .collect()
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

fn ts(start: i64) -> Option<DateTime<chrono::Utc>> {
    DateTime::from_timestamp(start, 0)
}

fn dims(labels: &BTreeMap<String, String>) -> Vec<(String, String)> {
    labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn not_finite_note(n: usize) -> String {
    format!("{n} point(s) were NaN or infinite (e.g. a division by zero) and were read as missing")
}

/// Rows of a count or gauge KPI: one per point (stamped at its bucket's start by
/// [`at_starts`]). NaN and infinite points (a division by zero) are missing data, with a note.
pub(super) fn single(series: Vec<Series>) -> (Vec<RawRow>, Vec<String>) {
    let mut rows = Vec::new();
    let mut not_finite = 0;
    for (labels, points) in series {
        for (start, v) in points {
            if !v.is_finite() {
                not_finite += 1;
                continue;
            }
            if let Some(ts) = ts(start) {
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
            let Some(at) = ts(eval) else { continue };
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

    fn utc(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s)
            .expect("rfc3339")
            .timestamp()
    }

    fn local(interval: &str, tz: &str) -> Buckets {
        Buckets::new(
            crate::kpi::Interval::parse(interval).expect("interval"),
            tz.parse().expect("tz"),
        )
    }

    #[test]
    fn utc_buckets_keep_one_run_per_piece_at_the_interval() {
        let hourly = Buckets::utc(crate::kpi::Interval::HOUR);
        assert_eq!(
            runs(hourly, window(0, 4 * 3600), 3),
            vec![
                Run {
                    first: 3600,
                    last: 3 * 3600,
                    step: 3600
                },
                Run {
                    first: 4 * 3600,
                    last: 4 * 3600,
                    step: 3600
                }
            ]
        );
    }

    #[test]
    fn seoul_days_are_evaluated_at_15_00_utc() {
        let day = local("1d", "Asia/Seoul");
        // From 2026-06-09 10:00 UTC: the first whole Seoul day starts at 15:00 UTC; the last
        // ends at 15:00 UTC on the 12th (the hour after it is not a whole day).
        let got = runs(
            day,
            window(utc("2026-06-09T10:00:00Z"), utc("2026-06-12T16:00:00Z")),
            100,
        );
        assert_eq!(
            got,
            vec![Run {
                first: utc("2026-06-10T15:00:00Z"),
                last: utc("2026-06-12T15:00:00Z"),
                step: 86_400
            }]
        );
        // UTC evaluation times would have been midnights.
        assert_ne!(got[0].first % 86_400, 0);
    }

    #[test]
    fn a_berlin_autumn_day_is_a_25_hour_run_of_its_own() {
        let day = local("1d", "Europe/Berlin");
        // Local days 2026-10-23 … 2026-10-27; clocks go back on the 25th.
        let w = window(utc("2026-10-22T22:00:00Z"), utc("2026-10-27T23:00:00Z"));
        let got = runs(day, w, 100);
        assert_eq!(
            got,
            vec![
                Run {
                    first: utc("2026-10-23T22:00:00Z"),
                    last: utc("2026-10-24T22:00:00Z"),
                    step: 86_400
                },
                Run {
                    first: utc("2026-10-25T23:00:00Z"),
                    last: utc("2026-10-25T23:00:00Z"),
                    step: 25 * 3600
                },
                Run {
                    first: utc("2026-10-26T23:00:00Z"),
                    last: utc("2026-10-27T23:00:00Z"),
                    step: 86_400
                },
            ]
        );
        // Every bucket of the window is read exactly once, at its start, and they tile it.
        let mut starts: Vec<i64> = Vec::new();
        for r in &got {
            let mut eval = r.first;
            while eval <= r.last {
                starts.push(eval - r.step);
                eval += r.step;
            }
        }
        let expected: Vec<i64> = day
            .starts(utc("2026-10-22T22:00:00Z"), utc("2026-10-27T23:00:00Z"))
            .collect();
        assert_eq!(starts, expected);
        // The spring day is 23 hours; pieces of at most 2 evaluations split long runs.
        let spring = runs(
            day,
            window(utc("2026-03-27T23:00:00Z"), utc("2026-04-01T22:00:00Z")),
            2,
        );
        let steps: Vec<(i64, i64)> = spring
            .iter()
            .map(|r| (r.step / 3600, (r.last - r.first) / r.step + 1))
            .collect();
        assert_eq!(steps, vec![(24, 1), (23, 1), (24, 2), (24, 1)]);
        assert_eq!(duration_literal(25 * 3600), "25h");
        assert_eq!(duration_literal(86_400), "1d");
        assert_eq!(duration_literal(23 * 3600 + 1800), "1410m");
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
        let (rows, notes) = single(at_starts(series, 300));
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
        let (rows, notes) = join_ratio(at_starts(num, 300), at_starts(den, 300)).expect("joins");
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
