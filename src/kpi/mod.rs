//! Domain types: [`KpiId`], [`KpiSpec`], [`Query`] and the small value types in [`types`];
//! loads and validates KPI models from `models/<id>/model.toml` plus one query file:
//! `query.sql` (SQL sources), `query.promql` or `numerator.promql` + `denominator.promql`
//! (Prometheus) or `query.influxql` (InfluxDB 1.x). `models/examples/` is not loaded.
//!
//! Parse, don't validate: a [`KpiSpec`] can only be built through [`KpiSpec::parse`] or
//! [`load_models`], so everything holding one knows it is valid. A bad model is reported with
//! the file, the field and the problem, and every problem in every model is reported at once.
//!
//! Everything depends on this module; it depends on nothing else in the crate.

pub mod buckets;
pub mod dimensions;
pub mod types;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use buckets::Buckets;
pub use dimensions::{Aggregation, Dimensions, SliceAlerts};
pub use types::{Direction, Kind, ParseError, Sensitivity};

/// `origin` of KPIs registered through the API (file KPIs carry their folder path).
pub const API_ORIGIN: &str = "api";

/// A KPI's identifier: 1–64 characters of `a-z`, `0-9`, `_` and `-`, starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KpiId(String);

impl KpiId {
    /// The name of the lease a process holds while it runs this KPI (the scheduler takes it;
    /// the digest looks at it to wait for a run in flight).
    pub fn run_lease(&self) -> String {
        format!("kpi:{}", self.0)
    }

    /// Parse an identifier.
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok_len = !s.is_empty() && s.len() <= 64;
        let ok_start = s.chars().next().is_some_and(|c| c.is_ascii_lowercase());
        let ok_chars = s
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if ok_len && ok_start && ok_chars {
            Ok(KpiId(s.to_owned()))
        } else {
            Err(format!(
                "invalid KPI id {s:?}: use 1-64 characters of a-z, 0-9, '_' and '-', starting with a letter"
            ))
        }
    }

    /// The identifier as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KpiId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How the seasonal baseline is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeasonalitySetting {
    /// Picked from the series' own history.
    #[default]
    Auto,
    /// No seasonality.
    None,
    /// Hour-of-day pattern.
    Daily,
    /// Hour-of-week pattern.
    Weekly,
}

/// How loud an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Severity {
    /// For the record.
    Info,
    /// Look at it today.
    #[default]
    Warning,
    /// Look at it now.
    Critical,
}

impl std::str::FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "info" => Ok(Severity::Info),
            "warning" => Ok(Severity::Warning),
            "critical" => Ok(Severity::Critical),
            other => Err(format!("{other:?}: expected info | warning | critical")),
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        })
    }
}

/// A bucket length that tiles a day (1m, 5m, 1h, …) or is a whole number of days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval(u32);

impl Interval {
    /// One hour.
    pub const HOUR: Interval = Interval(3600);
    /// One day.
    pub const DAY: Interval = Interval(86_400);

    /// Parse `"5m"`, `"1h"`, `"1d"` and the like.
    pub fn parse(s: &str) -> Result<Self, String> {
        let d = humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration: {e}"))?;
        Self::from_secs(d.as_secs()).map_err(|e| format!("{s:?}: {e}"))
    }

    /// An interval of `secs` seconds.
    pub fn from_secs(secs: u64) -> Result<Self, String> {
        const DAY: u64 = 86_400;
        if secs < 60 {
            return Err("an interval must be at least 1 minute".to_owned());
        }
        if secs > 7 * DAY {
            return Err("an interval must be at most 7 days".to_owned());
        }
        if !DAY.is_multiple_of(secs) && !secs.is_multiple_of(DAY) {
            return Err(
                "an interval must divide a day evenly (1m, 5m, 15m, 1h, …) or be whole days".to_owned(),
            );
        }
        // Checked above: secs <= 7 days fits in u32.
        Ok(Interval(secs as u32))
    }

    /// Length in seconds.
    pub fn secs(self) -> u32 {
        self.0
    }

    /// Length in seconds as i64, for timestamp arithmetic.
    pub fn secs_i64(self) -> i64 {
        i64::from(self.0)
    }

    /// The interval as a PromQL / InfluxQL duration literal in its largest whole unit:
    /// `90s`, `5m`, `1h`, `1d`.
    pub fn literal(self) -> String {
        let s = self.0;
        if s.is_multiple_of(86_400) {
            format!("{}d", s / 86_400)
        } else if s.is_multiple_of(3600) {
            format!("{}h", s / 3600)
        } else if s.is_multiple_of(60) {
            format!("{}m", s / 60)
        } else {
            format!("{s}s")
        }
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            humantime::format_duration(Duration::from_secs(u64::from(self.0)))
        )
    }
}

/// A KPI's query, in the language of its source. Built only by [`KpiSpec::parse_with`] (and
/// so validated), or directly in tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// SQL with `:start` and `:end` placeholders (`query.sql`).
    Sql(String),
    /// One PromQL expression, run as a range query (`query.promql`); count or gauge KPIs.
    PromQl(String),
    /// Two PromQL expressions joined on labels and time (`numerator.promql`,
    /// `denominator.promql`); ratio KPIs.
    PromQlRatio {
        /// Successes (or whatever is counted against the denominator).
        numerator: String,
        /// Attempts.
        denominator: String,
    },
    /// One InfluxQL `SELECT` with `$start` and `$end` bound parameters (`query.influxql`).
    InfluxQl(String),
}

impl Query {
    /// The language's name, for messages: `SQL`, `PromQL` or `InfluxQL`.
    pub fn language(&self) -> &'static str {
        match self {
            Query::Sql(_) => "SQL",
            Query::PromQl(_) | Query::PromQlRatio { .. } => "PromQL",
            Query::InfluxQl(_) => "InfluxQL",
        }
    }

    /// The file(s) a model keeps it in.
    pub fn files(&self) -> &'static str {
        match self {
            Query::Sql(_) => "query.sql",
            Query::PromQl(_) => "query.promql",
            Query::PromQlRatio { .. } => "numerator.promql + denominator.promql",
            Query::InfluxQl(_) => "query.influxql",
        }
    }

    /// The SQL text, if this is a SQL query.
    pub fn sql(&self) -> Option<&str> {
        match self {
            Query::Sql(sql) => Some(sql),
            _ => None,
        }
    }
}

/// The query files a model folder may hold, and the [`Query`] each makes.
const QUERY_FILES: [&str; 5] = [
    "query.sql",
    "query.promql",
    "numerator.promql",
    "denominator.promql",
    "query.influxql",
];

/// A folder under `models/` that holds examples, not KPIs.
pub const EXAMPLES_DIR: &str = "examples";

/// `$__interval` in a PromQL or InfluxQL query stands for the KPI's interval as a duration
/// literal both languages read (`1m`, `5m`, `1h`, `1d`), e.g. `increase(x_total[$__interval])`.
pub const INTERVAL_PLACEHOLDER: &str = "$__interval";

/// A validated KPI model.
#[derive(Debug, Clone)]
pub struct KpiSpec {
    /// Identifier (the model's folder name).
    pub id: KpiId,
    /// Human title.
    pub title: String,
    /// What it measures and why it matters.
    pub description: String,
    /// Name of the source in the config.
    pub source: String,
    /// Count, ratio or gauge.
    pub kind: Kind,
    /// Bucket length.
    pub interval: Interval,
    /// Wait this long after a bucket closes before reading it.
    pub delay: Duration,
    /// Which deviations alert.
    pub direction: Direction,
    /// How eagerly to flag.
    pub sensitivity: Sensitivity,
    /// Buckets with less volume (count, or denominator) than this are never flagged.
    pub min_volume: f64,
    /// Seasonality choice.
    pub seasonality: SeasonalitySetting,
    /// Owning person or team.
    pub owner: Option<String>,
    /// Alert severity.
    pub severity: Severity,
    /// What a count or gauge is measured in (`EUR`, `ms`, `orders`), shown beside values.
    pub unit: Option<String>,
    /// Free-form labels for routing.
    pub labels: BTreeMap<String, String>,
    /// Alert e-mail recipients (empty = the configured defaults).
    pub recipients: Vec<String>,
    /// Timezone in which daily and weekly seasonality are read.
    pub timezone: chrono_tz::Tz,
    /// Most series (dimension combinations) one KPI may have.
    pub max_series: usize,
    /// How its dimension columns are sliced and rolled up into the total.
    pub dimensions: Dimensions,
    /// Fire when this many `(n, m)`: n of the last m judged buckets are anomalous.
    pub trigger: (u32, u32),
    /// In-band buckets that resolve an alert (default: the scheduler's `recovery_buckets`).
    pub recover_after: Option<u32>,
    /// Re-send a firing alert this often until it is acknowledged or resolved.
    pub repeat_interval: Option<Duration>,
    /// The query, in its source's language.
    pub query: Query,
    /// Where it came from (a path, or `<embedded>`).
    pub origin: String,
}

/// One thing wrong with one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelProblem {
    /// The file at fault.
    pub file: PathBuf,
    /// The field at fault, if one.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ModelProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}: {field}: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Every problem found while loading models.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ModelErrors(pub Vec<ModelProblem>);

impl fmt::Display for ModelErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} problem(s) in KPI models:", self.0.len())?;
        for p in &self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

/// `model.toml` as written; turned into a [`KpiSpec`] by [`KpiSpec::parse`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    title: Option<String>,
    #[serde(default)]
    description: String,
    source: String,
    kind: String,
    interval: String,
    delay: Option<String>,
    direction: Option<String>,
    sensitivity: Option<toml::Value>,
    min_volume: Option<f64>,
    seasonality: Option<String>,
    owner: Option<String>,
    severity: Option<String>,
    unit: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    recipients: Vec<String>,
    timezone: Option<String>,
    max_series: Option<usize>,
    drilldown: Option<Vec<String>>,
    aggregation: Option<String>,
    slice_alerts: Option<String>,
    slice_min_volume: Option<f64>,
    trigger: Option<String>,
    recover_after: Option<u32>,
    repeat_interval: Option<String>,
}

impl KpiSpec {
    /// Where its buckets start and end: the interval, aligned to its timezone for an hour or
    /// more (see [`Buckets`]).
    pub fn buckets(&self) -> Buckets {
        Buckets::new(self.interval, self.timezone)
    }

    /// Build a spec from the text of `model.toml` and `query.sql`. `dir` names the model's
    /// folder in error messages.
    pub fn parse(id: &str, model_toml: &str, query_sql: &str, dir: &Path) -> Result<Self, Vec<ModelProblem>> {
        Self::parse_with(id, model_toml, Query::Sql(query_sql.to_owned()), dir)
    }

    /// Build a spec from the text of `model.toml` and its query in any language (as read
    /// from the model's query file(s); validated here). `dir` names the model's folder in
    /// error messages.
    pub fn parse_with(
        id: &str,
        model_toml: &str,
        query: Query,
        dir: &Path,
    ) -> Result<Self, Vec<ModelProblem>> {
        let toml_file = dir.join("model.toml");
        let mut problems = Vec::new();
        let mut problem = |file: &Path, field: Option<&str>, message: String| {
            problems.push(ModelProblem {
                file: file.to_owned(),
                field: field.map(str::to_owned),
                message,
            })
        };

        let id = KpiId::parse(id)
            .map_err(|m| problem(dir, Some("id (folder name)"), m))
            .ok();
        let raw: Option<RawModel> = toml::from_str(model_toml)
            .map_err(|e| problem(&toml_file, None, e.to_string().trim().to_owned()))
            .ok();
        let query = match validate(query) {
            Ok(q) => Some(q),
            Err(found) => {
                for (file, message) in found {
                    problem(&dir.join(file), None, message);
                }
                None
            }
        };

        let Some(raw) = raw else {
            return Err(problems);
        };
        let f = &toml_file;
        let kind = raw
            .kind
            .parse::<Kind>()
            .map_err(|e| problem(f, Some("kind"), e.to_string()))
            .ok();
        match (kind, &query) {
            (Some(Kind::Ratio), Some(Query::PromQl(_))) => problem(
                &dir.join("query.promql"),
                None,
                "a ratio KPI on Prometheus needs two expressions: numerator.promql and denominator.promql".to_owned(),
            ),
            (Some(k @ (Kind::Count | Kind::Gauge)), Some(Query::PromQlRatio { .. })) => problem(
                f,
                Some("kind"),
                format!("numerator.promql and denominator.promql make a ratio KPI, not a {k} one (use query.promql)"),
            ),
            _ => {}
        }
        let interval = Interval::parse(&raw.interval)
            .map_err(|e| problem(f, Some("interval"), e))
            .ok();
        let delay = match raw.delay.as_deref() {
            None => Some(Duration::ZERO),
            Some(d) => humantime::parse_duration(d)
                .map_err(|e| problem(f, Some("delay"), format!("{d:?} is not a duration: {e}")))
                .ok(),
        };
        let direction = match raw.direction.as_deref() {
            None => Some(Direction::Both),
            Some(d) => d
                .parse::<Direction>()
                .map_err(|e| problem(f, Some("direction"), e.to_string()))
                .ok(),
        };
        let sensitivity = match &raw.sensitivity {
            None => Some(Sensitivity::default()),
            Some(toml::Value::String(s)) => s
                .parse::<Sensitivity>()
                .map_err(|e| problem(f, Some("sensitivity"), e.to_string()))
                .ok(),
            Some(toml::Value::Float(x)) => Sensitivity::new(*x)
                .map_err(|e| problem(f, Some("sensitivity"), e.to_string()))
                .ok(),
            Some(other) => {
                problem(
                    f,
                    Some("sensitivity"),
                    format!("expected low | medium | high or a number in (0, 1), got {other}"),
                );
                None
            }
        };
        let min_volume = raw.min_volume.unwrap_or(0.0);
        if !(min_volume.is_finite() && min_volume >= 0.0) {
            problem(f, Some("min_volume"), "must be a number >= 0".to_owned());
        }
        let seasonality = match raw.seasonality.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("auto") => Some(SeasonalitySetting::Auto),
            Some("none") => Some(SeasonalitySetting::None),
            Some("daily") => Some(SeasonalitySetting::Daily),
            Some("weekly") => Some(SeasonalitySetting::Weekly),
            Some(other) => {
                problem(
                    f,
                    Some("seasonality"),
                    format!("{other:?}: expected auto | none | daily | weekly"),
                );
                None
            }
        };
        let severity = match raw.severity.as_deref() {
            None => Some(Severity::Warning),
            Some(s) => s
                .parse::<Severity>()
                .map_err(|e| problem(f, Some("severity"), e))
                .ok(),
        };
        let trigger = match raw.trigger.as_deref() {
            None => Some((1, 1)),
            Some(t) => parse_trigger(t).map_err(|e| problem(f, Some("trigger"), e)).ok(),
        };
        if raw.recover_after == Some(0) {
            problem(f, Some("recover_after"), "must be at least 1".to_owned());
        }
        let repeat_interval = match raw.repeat_interval.as_deref() {
            None => Some(None),
            Some(d) => humantime::parse_duration(d)
                .map_err(|e| {
                    problem(
                        f,
                        Some("repeat_interval"),
                        format!("{d:?} is not a duration: {e}"),
                    )
                })
                .ok()
                .map(Some),
        };
        let timezone = match raw.timezone.as_deref() {
            None => Some(chrono_tz::UTC),
            Some(tz) => tz
                .parse::<chrono_tz::Tz>()
                .map_err(|_| {
                    problem(
                        f,
                        Some("timezone"),
                        format!("{tz:?} is not an IANA timezone (e.g. Europe/Berlin)"),
                    )
                })
                .ok(),
        };
        for r in &raw.recipients {
            if r.parse::<lettre::Address>().is_err() {
                problem(f, Some("recipients"), format!("{r:?} is not an e-mail address"));
            }
        }
        for (k, v) in &raw.labels {
            if k.is_empty() || k.len() > 64 || v.len() > 256 {
                problem(f, Some("labels"), format!("label {k:?} is empty or too long"));
            }
        }
        if raw.source.trim().is_empty() {
            problem(f, Some("source"), "must name a source from the config".to_owned());
        }
        if let Some(unit) = &raw.unit {
            if unit.trim().is_empty() || unit.chars().count() > 16 || unit.chars().any(char::is_control) {
                problem(
                    f,
                    Some("unit"),
                    "must be 1-16 printable characters, e.g. \"EUR\" or \"ms\"".to_owned(),
                );
            }
            if kind == Some(Kind::Ratio) {
                problem(
                    f,
                    Some("unit"),
                    "a ratio is shown in %; leave unit out".to_owned(),
                );
            }
        }
        let max_series = raw.max_series.unwrap_or(100);
        if max_series == 0 || max_series > 10_000 {
            problem(f, Some("max_series"), "must be between 1 and 10000".to_owned());
        }
        let dimensions = dimensions::parse(
            kind,
            raw.drilldown,
            raw.aggregation.as_deref(),
            raw.slice_alerts.as_deref(),
            raw.slice_min_volume,
        )
        .map_err(|found| {
            for (field, message) in found {
                problem(f, Some(field), message);
            }
        })
        .ok();

        match (
            id,
            kind,
            interval,
            delay,
            direction,
            sensitivity,
            seasonality,
            severity,
            timezone,
            query,
            trigger,
            repeat_interval,
            dimensions,
        ) {
            (
                Some(id),
                Some(kind),
                Some(interval),
                Some(delay),
                Some(direction),
                Some(sensitivity),
                Some(seasonality),
                Some(severity),
                Some(timezone),
                Some(query),
                Some(trigger),
                Some(repeat_interval),
                Some(dimensions),
            ) if problems.is_empty() => Ok(KpiSpec {
                title: raw.title.unwrap_or_else(|| id.to_string()),
                id,
                description: raw.description,
                source: raw.source,
                kind,
                interval,
                delay,
                direction,
                sensitivity,
                min_volume,
                seasonality,
                owner: raw.owner,
                severity,
                unit: raw.unit.map(|u| u.trim().to_owned()),
                labels: raw.labels,
                recipients: raw.recipients,
                timezone,
                max_series,
                dimensions,
                trigger,
                recover_after: raw.recover_after,
                repeat_interval,
                query,
                origin: dir.display().to_string(),
            }),
            _ => Err(problems),
        }
    }
}

/// `"2 of 3"` → `(2, 3)`; `n` in 1..=m, `m` in 1..=32.
fn parse_trigger(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{s:?}: expected \"N of M\" with 1 <= N <= M <= 32, e.g. \"2 of 3\"");
    let (n, m) = s.split_once(" of ").ok_or_else(bad)?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    let m: u32 = m.trim().parse().map_err(|_| bad())?;
    if n == 0 || n > m || m > 32 {
        return Err(bad());
    }
    Ok((n, m))
}

/// Check a query in its own language; problems come as (file name, message).
fn validate(query: Query) -> Result<Query, Vec<(&'static str, String)>> {
    let one = |file: &'static str, r: Result<String, String>| r.map_err(|m| vec![(file, m)]);
    match query {
        Query::Sql(sql) => one("query.sql", validate_query(&sql)).map(Query::Sql),
        Query::PromQl(expr) => one("query.promql", validate_promql(&expr)).map(Query::PromQl),
        Query::PromQlRatio {
            numerator,
            denominator,
        } => match (validate_promql(&numerator), validate_promql(&denominator)) {
            (Ok(numerator), Ok(denominator)) => Ok(Query::PromQlRatio {
                numerator,
                denominator,
            }),
            (n, d) => Err(n
                .err()
                .map(|m| ("numerator.promql", m))
                .into_iter()
                .chain(d.err().map(|m| ("denominator.promql", m)))
                .collect()),
        },
        Query::InfluxQl(q) => one("query.influxql", validate_influxql(&q)).map(Query::InfluxQl),
    }
}

/// A PromQL expression: not empty, not huge. Its syntax is the server's to judge: a bad
/// one fails `kpiwatch check` with Prometheus's own message.
fn validate_promql(expr: &str) -> Result<String, String> {
    let trimmed = expr.trim();
    if trimmed.is_empty() {
        return Err("the PromQL expression is empty".to_owned());
    }
    if trimmed.len() > 64 * 1024 {
        return Err("the PromQL expression is longer than 64 KiB".to_owned());
    }
    Ok(trimmed.to_owned())
}

/// An InfluxQL KPI query: one `SELECT` without `INTO`, filtering on `$start` and `$end`.
///
/// InfluxDB 1.x runs writes sent with GET (it only warns that this is deprecated), so this
/// check is what keeps InfluxDB sources read-only; the source runs it again before every
/// request. Give kpiwatch a user with READ privilege only, too.
pub fn validate_influxql(q: &str) -> Result<String, String> {
    let trimmed = q.trim().trim_end_matches(';').trim();
    if trimmed.is_empty() {
        return Err("the InfluxQL query is empty".to_owned());
    }
    if trimmed.len() > 64 * 1024 {
        return Err("the InfluxQL query is longer than 64 KiB".to_owned());
    }
    let code = code_only(trimmed);
    let mut words = code
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase);
    let first = words.next().unwrap_or_default();
    if first != "select" {
        return Err(format!(
            "an InfluxQL KPI query must be a single SELECT, not {first:?}"
        ));
    }
    if words.any(|w| w == "into") {
        return Err("an InfluxQL KPI query must not write: SELECT … INTO is not allowed".to_owned());
    }
    if code.contains(';') {
        return Err("an InfluxQL KPI query must be a single statement (found ';')".to_owned());
    }
    for p in ["$start", "$end"] {
        if !contains_placeholder(&code, p) {
            return Err(format!(
                "the query must filter on the window with {p} (WHERE time >= $start AND time < $end)"
            ));
        }
    }
    Ok(trimmed.to_owned())
}

/// Lexical checks on a KPI query. The real protection is the read-only transaction the
/// source runs it in; this catches the common mistakes with a clear message.
fn validate_query(sql: &str) -> Result<String, String> {
    let trimmed = sql.trim().trim_end_matches(';').trim();
    if trimmed.is_empty() {
        return Err("the query is empty".to_owned());
    }
    if trimmed.len() > 64 * 1024 {
        return Err("the query is longer than 64 KiB".to_owned());
    }
    let first = strip_leading_comments(trimmed)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if first != "select" && first != "with" {
        return Err(format!(
            "a KPI query must be a single SELECT (or WITH … SELECT), not {first:?}"
        ));
    }
    if code_only(trimmed).contains(';') {
        return Err("a KPI query must be a single statement (found ';')".to_owned());
    }
    for p in [":start", ":end"] {
        if !contains_placeholder(trimmed, p) {
            return Err(format!(
                "the query must filter on the window with {p} (the half-open window [:start, :end))"
            ));
        }
    }
    Ok(trimmed.to_owned())
}

/// The SQL with comments and quoted text blanked out, for lexical checks.
fn code_only(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' | '`' => {
                for d in chars.by_ref() {
                    if d == c {
                        break;
                    }
                }
                out.push(' ');
            }
            '-' if chars.peek() == Some(&'-') => {
                for d in chars.by_ref() {
                    if d == '\n' {
                        break;
                    }
                }
                out.push('\n');
            }
            '/' if chars.peek() == Some(&'*') => {
                let mut prev = ' ';
                for d in chars.by_ref() {
                    if prev == '*' && d == '/' {
                        break;
                    }
                    prev = d;
                }
                out.push(' ');
            }
            other => out.push(other),
        }
    }
    out
}

/// The SQL after any leading `--` and `/* */` comments.
fn strip_leading_comments(mut sql: &str) -> &str {
    loop {
        sql = sql.trim_start();
        if let Some(rest) = sql.strip_prefix("--") {
            sql = rest.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(rest) = sql.strip_prefix("/*") {
            sql = rest.split_once("*/").map_or("", |(_, after)| after);
        } else {
            return sql;
        }
    }
}

fn contains_placeholder(sql: &str, name: &str) -> bool {
    sql.match_indices(name).any(|(i, _)| {
        let after = sql[i + name.len()..].chars().next();
        !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// Every KPI the service knows, shared by the scheduler and the API: the models from files
/// plus those registered through the API. Cheap to clone; readers get snapshots.
#[derive(Debug, Clone, Default)]
pub struct Registry(std::sync::Arc<std::sync::RwLock<BTreeMap<String, KpiSpec>>>);

impl Registry {
    /// A registry holding `specs`.
    pub fn new(specs: impl IntoIterator<Item = KpiSpec>) -> Self {
        let map = specs.into_iter().map(|s| (s.id.to_string(), s)).collect();
        Registry(std::sync::Arc::new(std::sync::RwLock::new(map)))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, KpiSpec>> {
        // A poisoned lock only means a writer panicked; the map itself is still whole.
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, KpiSpec>> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The KPI called `id`.
    pub fn get(&self, id: &str) -> Option<KpiSpec> {
        self.read().get(id).cloned()
    }

    /// Whether `id` is known.
    pub fn contains(&self, id: &str) -> bool {
        self.read().contains_key(id)
    }

    /// Every KPI, by id.
    pub fn all(&self) -> Vec<KpiSpec> {
        self.read().values().cloned().collect()
    }

    /// Add or replace a KPI.
    pub fn insert(&self, spec: KpiSpec) {
        self.write().insert(spec.id.to_string(), spec);
    }

    /// Remove a KPI.
    pub fn remove(&self, id: &str) -> Option<KpiSpec> {
        self.write().remove(id)
    }
}

/// Load every `models/<id>/` folder under `dir`, sorted by id. All problems in all models
/// are returned together.
pub fn load_models(dir: &Path) -> Result<Vec<KpiSpec>, ModelErrors> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        ModelErrors(vec![ModelProblem {
            file: dir.to_owned(),
            field: None,
            message: format!("cannot read the models folder: {e}"),
        }])
    })?;
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir() && !p.ends_with(EXAMPLES_DIR))
        .collect();
    dirs.sort();
    let mut specs = Vec::new();
    let mut problems = Vec::new();
    for path in dirs {
        let id = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let read = |name: &str| {
            std::fs::read_to_string(path.join(name)).map_err(|e| ModelProblem {
                file: path.join(name),
                field: None,
                message: format!("cannot read: {e}"),
            })
        };
        match (read("model.toml"), read_query(&path)) {
            (Ok(model), Ok(query)) => match KpiSpec::parse_with(&id, &model, query, &path) {
                Ok(spec) => specs.push(spec),
                Err(mut p) => problems.append(&mut p),
            },
            (m, q) => problems.extend(m.err().into_iter().chain(q.err())),
        }
    }
    if problems.is_empty() {
        Ok(specs)
    } else {
        Err(ModelErrors(problems))
    }
}

/// The query of the model in `dir`, from whichever query file(s) it has: exactly one of
/// `query.sql`, `query.promql`, `query.influxql`, or the pair `numerator.promql` +
/// `denominator.promql`.
fn read_query(dir: &Path) -> Result<Query, ModelProblem> {
    let present: Vec<&str> = QUERY_FILES
        .into_iter()
        .filter(|f| dir.join(f).is_file())
        .collect();
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name)).map_err(|e| ModelProblem {
            file: dir.join(name),
            field: None,
            message: format!("cannot read: {e}"),
        })
    };
    match present.as_slice() {
        ["query.sql"] => Ok(Query::Sql(read("query.sql")?)),
        ["query.promql"] => Ok(Query::PromQl(read("query.promql")?)),
        ["numerator.promql", "denominator.promql"] => Ok(Query::PromQlRatio {
            numerator: read("numerator.promql")?,
            denominator: read("denominator.promql")?,
        }),
        ["query.influxql"] => Ok(Query::InfluxQl(read("query.influxql")?)),
        [] => Err(ModelProblem {
            file: dir.join("query.sql"),
            field: None,
            message: "no query file: add query.sql, query.promql (or numerator.promql + denominator.promql) or query.influxql".to_owned(),
        }),
        found => Err(ModelProblem {
            file: dir.to_owned(),
            field: None,
            message: format!(
                "one query per model: found {}; keep query.sql, query.promql, query.influxql, or numerator.promql + denominator.promql",
                found.join(", ")
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        title = "Orders"
        source = "shop"
        kind = "count"
        interval = "5m"
        delay = "1m"
        direction = "down"
        sensitivity = "high"
        recipients = ["oncall@example.com"]
        timezone = "Europe/Berlin"
        [labels]
        team = "checkout"
    "#;
    const SQL: &str = "SELECT ts, value FROM t WHERE ts >= :start AND ts < :end";

    #[test]
    fn a_good_model_parses_into_a_spec() {
        let spec = KpiSpec::parse("orders", GOOD, SQL, Path::new("models/orders")).expect("valid");
        assert_eq!(spec.kind, Kind::Count);
        assert_eq!(spec.interval.secs(), 300);
        assert_eq!(spec.delay, Duration::from_secs(60));
        assert_eq!(spec.sensitivity, Sensitivity::HIGH);
        assert_eq!(spec.timezone, chrono_tz::Europe::Berlin);
        assert_eq!(spec.labels.get("team").map(String::as_str), Some("checkout"));
    }

    #[test]
    fn every_problem_is_reported_with_file_and_field() {
        let bad = r#"
            source = "shop"
            kind = "counter"
            interval = "7m"
            direction = "sideways"
            sensitivity = 1.5
            timezone = "Mars/Olympus"
            recipients = ["not-an-address"]
        "#;
        let problems =
            KpiSpec::parse("Orders!", bad, "DELETE FROM t", Path::new("models/x")).expect_err("invalid");
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let joined = text.join("\n");
        for needle in [
            "id (folder name)",
            "query.sql",
            "kind",
            "interval",
            "direction",
            "sensitivity",
            "timezone",
            "recipients",
        ] {
            assert!(joined.contains(needle), "missing {needle} in:\n{joined}");
        }
        assert!(joined.contains("models/x/model.toml"), "{joined}");
    }

    #[test]
    fn unknown_fields_and_toml_syntax_errors_are_rejected() {
        let typo = format!("sensitivty = \"low\"\n{GOOD}");
        let p = KpiSpec::parse("orders", &typo, SQL, Path::new("m")).expect_err("unknown field");
        assert!(p[0].message.contains("sensitivty"), "{p:?}");
        let p = KpiSpec::parse("orders", "kind = ", SQL, Path::new("m")).expect_err("syntax");
        assert!(p[0].file.ends_with("model.toml"));
    }

    #[test]
    fn queries_must_be_single_selects_using_the_window() {
        assert!(validate_query("SELECT 1 AS ts, 2 AS value").is_err());
        assert!(validate_query("SELECT * FROM t WHERE ts >= :start AND ts < :ending").is_err());
        assert!(validate_query("SELECT 1 WHERE :start < :end; DROP TABLE t").is_err());
        assert!(validate_query(" with x as (select 1) select * from x where :start < :end ;").is_ok());
        assert!(validate_query("-- note; more\n/* a; b */ SELECT ';' WHERE :start < :end").is_ok());
    }

    #[test]
    fn trigger_rules_parse_as_n_of_m() {
        assert_eq!(parse_trigger("2 of 3"), Ok((2, 3)));
        assert!(parse_trigger("3 of 2").is_err());
        assert!(parse_trigger("0 of 2").is_err());
        assert!(parse_trigger("2/3").is_err());
        assert!(parse_trigger("1 of 33").is_err());
    }

    #[test]
    fn intervals_must_tile_a_day() {
        assert!(Interval::parse("5m").is_ok());
        assert!(Interval::parse("1d").is_ok());
        assert!(Interval::parse("7m").is_err());
        assert!(Interval::parse("30s").is_err());
    }

    fn write_model(root: &Path, id: &str, model: &str, files: &[(&str, &str)]) {
        let dir = root.join(id);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("model.toml"), model).expect("model");
        for (name, text) in files {
            std::fs::write(dir.join(name), text).expect("query file");
        }
    }

    const COUNT: &str = "source = \"metrics\"\nkind = \"count\"\ninterval = \"5m\"\n";
    const RATIO: &str = "source = \"metrics\"\nkind = \"ratio\"\ninterval = \"5m\"\n";

    #[test]
    fn models_take_promql_and_influxql_query_files_and_skip_the_examples_folder() {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        write_model(
            r,
            "orders",
            COUNT,
            &[("query.promql", " sum(increase(orders_total[$__interval]))\n")],
        );
        write_model(
            r,
            "success",
            RATIO,
            &[
                (
                    "numerator.promql",
                    "sum(increase(payments_total{status=\"ok\"}[5m]))",
                ),
                ("denominator.promql", "sum(increase(payments_total[5m]))"),
            ],
        );
        write_model(
            r,
            "signups",
            COUNT,
            &[(
                "query.influxql",
                "SELECT sum(n) AS value FROM signups WHERE time >= $start AND time < $end GROUP BY time(5m)",
            )],
        );
        // Not a KPI: examples are loaded only when pointed at.
        write_model(&r.join(EXAMPLES_DIR), "broken", "kind = ", &[]);
        let specs = load_models(r).expect("valid models");
        let by_id: BTreeMap<&str, &Query> = specs.iter().map(|s| (s.id.as_str(), &s.query)).collect();
        assert_eq!(by_id.len(), 3, "{by_id:?}");
        assert_eq!(
            by_id["orders"],
            &Query::PromQl("sum(increase(orders_total[$__interval]))".to_owned())
        );
        assert!(matches!(by_id["success"], Query::PromQlRatio { numerator, .. } if numerator.contains("ok")));
        assert!(matches!(by_id["signups"], Query::InfluxQl(q) if q.starts_with("SELECT")));
    }

    #[test]
    fn a_model_needs_exactly_one_query_matching_its_kind() {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        let sql = "SELECT ts, value FROM t WHERE ts >= :start AND ts < :end";
        write_model(r, "both", COUNT, &[("query.sql", sql), ("query.promql", "up")]);
        write_model(r, "none", COUNT, &[]);
        write_model(r, "ratio_one_expr", RATIO, &[("query.promql", "up")]);
        write_model(
            r,
            "count_two_exprs",
            COUNT,
            &[("numerator.promql", "a"), ("denominator.promql", "b")],
        );
        write_model(r, "half_a_ratio", RATIO, &[("numerator.promql", "a")]);
        write_model(r, "empty_expr", COUNT, &[("query.promql", "  \n")]);
        let problems = load_models(r).expect_err("all invalid").0;
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let joined = text.join("\n");
        for needle in [
            "both: one query per model: found query.sql, query.promql",
            "none/query.sql: no query file",
            "ratio_one_expr/query.promql: a ratio KPI on Prometheus needs two expressions",
            "count_two_exprs/model.toml: kind: numerator.promql and denominator.promql make a ratio KPI",
            "half_a_ratio: one query per model: found numerator.promql",
            "empty_expr/query.promql: the PromQL expression is empty",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
        }
        assert_eq!(problems.len(), 6, "{joined}");
    }

    #[test]
    fn influxql_queries_must_be_one_select_that_cannot_write() {
        let ok = "SELECT sum(n) AS value FROM orders WHERE time >= $start AND time < $end GROUP BY time(5m), country";
        assert_eq!(validate_influxql(&format!("  {ok};\n")), Ok(ok.to_owned()));
        for (bad, why) in [
            (
                "SELECT * INTO copy FROM orders WHERE time >= $start AND time < $end",
                "INTO",
            ),
            (
                "select n into\"copy\" from o where time >= $start and time < $end",
                "INTO",
            ),
            ("DROP MEASUREMENT orders", "not \"drop\""),
            (
                "DELETE FROM orders WHERE time >= $start AND time < $end",
                "not \"delete\"",
            ),
            (
                "SELECT n FROM o WHERE time >= $start AND time < $end; DROP DATABASE shop",
                "single statement",
            ),
            ("SELECT n FROM o WHERE time >= $start", "$end"),
            (
                "SELECT n FROM o WHERE time >= $starting AND time < $end",
                "$start",
            ),
        ] {
            let err = validate_influxql(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
        // Names and text that merely look like keywords are fine.
        assert!(validate_influxql(
            "SELECT \"into\" AS value FROM o WHERE note = 'x; into' AND time >= $start AND time < $end"
        )
        .is_ok());
    }

    #[test]
    fn interval_literals_use_the_largest_whole_unit() {
        let lit = |s: &str| Interval::parse(s).expect("valid").literal();
        assert_eq!(lit("1m"), "1m");
        assert_eq!(lit("90m"), "90m");
        assert_eq!(lit("2h"), "2h");
        assert_eq!(lit("1d"), "1d");
        assert_eq!(lit("7d"), "7d");
    }

    #[test]
    fn the_example_models_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models")
            .join(EXAMPLES_DIR);
        let specs = load_models(&dir).expect("example models are valid");
        let languages: Vec<&str> = specs.iter().map(|s| s.query.language()).collect();
        assert!(
            languages.contains(&"PromQL") && languages.contains(&"InfluxQL"),
            "{languages:?}"
        );
        assert!(specs
            .iter()
            .any(|s| matches!(s.query, Query::PromQlRatio { .. }) && s.kind == Kind::Ratio));
    }

    #[test]
    fn the_shipped_models_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let specs = load_models(&dir).expect("shipped models are valid");
        let kinds: Vec<Kind> = specs.iter().map(|s| s.kind).collect();
        assert!(kinds.contains(&Kind::Ratio) && kinds.contains(&Kind::Count) && kinds.contains(&Kind::Gauge));
    }
}
