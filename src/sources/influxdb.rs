//! InfluxDB 1.x as a KPI source: one InfluxQL `SELECT` over `GET /query`.
//!
//! The query follows the SQL sources' contract with InfluxQL's names: the window arrives as
//! bound parameters `$start` and `$end` (nanoseconds since the epoch, sent in `params`,
//! never spliced into the text), `GROUP BY time(<interval>)` makes the buckets (its
//! `time` column is the bucket start), the fields are `value`, or `numerator` and
//! `denominator` (name them with `AS`), and every `GROUP BY` tag (and any further field)
//! is a dimension. `$__interval` is replaced by the KPI's interval (`5m`). A bucket
//! InfluxDB fills with `null` is missing (for counts: zero, as with SQL).
//!
//! **Local buckets.** `GROUP BY time(…)` alone tiles UTC. For a KPI whose buckets follow its
//! timezone ([`Buckets::is_local`]: an hour or more, not UTC) the query gets InfluxQL's
//! `tz('Zone')` clause appended, which aligns the `time(…)` buckets to the zone's wall clock
//! with its clock changes (a Berlin day of 25 hours in October is one bucket of 25 hours),
//! so the `time` column is the start of the KPI's bucket ([`Buckets::floor`]). A query
//! with a `tz(…)` clause of its own is sent as written. A row InfluxDB stamps elsewhere
//! (e.g. an `Nd` interval aligned differently) is reported in a warning.
//!
//! Read-only by construction: InfluxDB 1.x executes writes sent with GET (it only warns),
//! so every query is checked to be one `SELECT` without `INTO` before it is sent (the same
//! check as the model loader's), and only `GET /query` is called. Give kpiwatch a user
//! with READ privilege as well.
//!
//! Errors keep InfluxDB's message (`error parsing query: …`, `database not found: …`); a
//! `partial` (truncated) result is an error rather than a silent drop; statement
//! `messages` are passed on as warnings. InfluxDB 1.x has no per-request timeout, so
//! `statement_timeout` is enforced by the client, which drops the connection (and
//! InfluxDB then abandons the query).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::decode::{self, JsonRow};
use super::http::{excerpt, Endpoint};
use super::{Error, Fetched, Result, Window};
use crate::config::SourceConfig;
use crate::kpi::{validate_influxql, Buckets, Kind, Query, INTERVAL_PLACEHOLDER};

const QUERY: &str = "query";

/// An InfluxDB 1.x server and the database KPI queries read.
#[derive(Debug)]
pub struct InfluxDb {
    http: Endpoint,
    database: String,
    row_cap: usize,
}

#[derive(Debug, Deserialize)]
struct Response {
    #[serde(default)]
    results: Vec<StatementResult>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct StatementResult {
    #[serde(default)]
    series: Vec<Series>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    messages: Vec<Message>,
    #[serde(default)]
    partial: bool,
}

#[derive(Debug, Deserialize)]
struct Series {
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    columns: Vec<String>,
    #[serde(default)]
    values: Vec<Vec<serde_json::Value>>,
}

#[derive(Debug, Deserialize)]
struct Message {
    level: String,
    text: String,
}

impl InfluxDb {
    pub(super) fn build(name: &str, cfg: &SourceConfig) -> Result<Self> {
        Ok(InfluxDb {
            http: Endpoint::build(name, cfg)?,
            database: cfg.database.clone().unwrap_or_default(),
            row_cap: cfg.row_cap,
        })
    }

    /// `SHOW MEASUREMENTS LIMIT 1` on the database: the credentials, the database and the
    /// query path a KPI takes.
    pub(super) async fn healthcheck(&self) -> Result<()> {
        self.run("SHOW MEASUREMENTS LIMIT 1", None).await.map(drop)
    }

    pub(super) async fn fetch(
        &self,
        query: &Query,
        kind: Kind,
        buckets: Buckets,
        window: Window,
    ) -> Result<Fetched> {
        let Query::InfluxQl(text) = query else {
            return Err(Error::WrongLanguage {
                name: self.http.name().to_owned(),
                speaks: "InfluxDB",
                expected: "query.influxql",
                found: query.files(),
            });
        };
        let text = validate_influxql(text).map_err(Error::Contract)?;
        let text = text.replace(INTERVAL_PLACEHOLDER, &buckets.interval().literal());
        let text = match buckets.timezone() {
            Some(tz) if !has_tz_clause(&text) => format!("{text}\ntz('{}')", tz.name()),
            _ => text,
        };
        let params = serde_json::json!({
            "start": nanos(window.start),
            "end": nanos(window.end),
        });
        let results = self.run(&text, Some(params.to_string())).await?;
        let mut out = Fetched::default();
        for result in results {
            for m in result.messages {
                out.warnings.push(format!("{}: {}", m.level, m.text));
            }
            for series in result.series {
                if out.rows.len() + series.values.len() > self.row_cap {
                    return Err(Error::TooManyRows {
                        name: self.http.name().to_owned(),
                        cap: self.row_cap,
                    });
                }
                let mut names: Vec<String> = series
                    .columns
                    .iter()
                    .map(|c| {
                        if c == "time" {
                            "ts".to_owned()
                        } else {
                            c.to_ascii_lowercase()
                        }
                    })
                    .collect();
                names.extend(series.tags.keys().map(|k| k.to_ascii_lowercase()));
                for mut values in series.values {
                    values.extend(series.tags.values().map(|v| serde_json::Value::String(v.clone())));
                    let row = JsonRow {
                        names: &names,
                        values: &values,
                    };
                    out.rows.push(decode::decode(&row, kind)?);
                }
            }
        }
        let misaligned = out
            .rows
            .iter()
            .filter(|r| buckets.floor(r.ts.timestamp()) != r.ts.timestamp())
            .count();
        if misaligned > 0 {
            out.warnings.push(format!(
                "{misaligned} row(s) are not stamped at the start of one of the KPI's {} buckets{}; check GROUP BY time(…) and its offset",
                buckets.interval(),
                buckets.timezone().map(|tz| format!(" in {}", tz.name())).unwrap_or_default()
            ));
        }
        Ok(out)
    }

    /// Send one statement; its results, or the error InfluxDB gave, in its words.
    async fn run(&self, q: &str, params: Option<String>) -> Result<Vec<StatementResult>> {
        let mut query = vec![
            ("db", self.database.clone()),
            ("q", q.to_owned()),
            ("epoch", "s".to_owned()),
        ];
        if let Some(p) = params {
            query.push(("params", p));
        }
        let reply = self.http.get(QUERY, &query).await?;
        let parsed = match serde_json::from_slice::<Response>(&reply.body) {
            Ok(parsed) => parsed,
            Err(_) => return Err(self.http.status_error(reply.status, &excerpt(&reply.body))),
        };
        if let Some(error) = parsed.error {
            return Err(self.http.status_error(reply.status, &error));
        }
        if !reply.status.is_success() {
            return Err(self.http.status_error(reply.status, &excerpt(&reply.body)));
        }
        for r in &parsed.results {
            if let Some(error) = &r.error {
                return Err(Error::Query {
                    name: self.http.name().to_owned(),
                    message: error.clone(),
                });
            }
            if r.partial {
                return Err(Error::Query {
                    name: self.http.name().to_owned(),
                    message: "InfluxDB returned a partial result (its max-row-limit was reached); aggregate more with GROUP BY time(…) or raise the limit".to_owned(),
                });
            }
        }
        Ok(parsed.results)
    }
}

/// Whether an InfluxQL statement already names its zone with a `tz(…)` clause.
fn has_tz_clause(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.match_indices("tz").any(|(i, _)| {
        let before = lower[..i].chars().next_back();
        let after = lower[i + 2..].trim_start().starts_with('(');
        after && !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

fn nanos(t: chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp().saturating_mul(1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tz_clause_is_recognised_but_not_a_function_or_field_named_like_it() {
        assert!(has_tz_clause(
            "SELECT sum(n) FROM m GROUP BY time(1d) tz('Asia/Seoul')"
        ));
        assert!(has_tz_clause(
            "SELECT sum(n) FROM m GROUP BY time(1d)\nTZ ('UTC')"
        ));
        assert!(!has_tz_clause("SELECT sum(n) FROM m GROUP BY time(1d), \"tz\""));
        assert!(!has_tz_clause("SELECT sum(utz(n)) FROM m GROUP BY time(1d)"));
    }

    #[test]
    fn a_result_with_tags_decodes_under_the_query_contract() {
        let body = br#"{"results":[{"statement_id":0,"series":[
            {"name":"orders","tags":{"country":"DE"},"columns":["time","value"],"values":[[1800,12],[2100,null]]}
        ],"messages":[{"level":"warning","text":"deprecated"}]}]}"#;
        let parsed: Response = serde_json::from_slice(body).expect("json");
        let series = &parsed.results[0].series[0];
        let names = vec!["ts".to_owned(), "value".to_owned(), "country".to_owned()];
        let mut values = series.values[0].clone();
        values.push(serde_json::Value::String("DE".to_owned()));
        let row = decode::decode(
            &JsonRow {
                names: &names,
                values: &values,
            },
            Kind::Count,
        )
        .expect("decodes");
        assert_eq!(row.ts.timestamp(), 1800);
        assert_eq!(row.value, Some(12.0));
        assert_eq!(row.dims, vec![("country".to_owned(), "DE".to_owned())]);
        assert_eq!(parsed.results[0].messages[0].text, "deprecated");
    }
}
