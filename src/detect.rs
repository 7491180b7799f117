//! `kpiwatch detect`: the offline CSV contract around [`crate::baseline::OnlineDetector`].
//!
//! Reads `timestamp,value` or `timestamp,numerator,denominator` with the `csv` crate (quoted
//! fields, a byte-order mark and CRLF line ends are fine), runs the very detector the service
//! runs, online (row t sees rows <= t), and writes `timestamp,value,expected,lower,upper,score,
//! anomaly` or, with `explain`, one JSON object per row. This is the only module here that
//! touches files; the detector stays pure.
//!
//! Real exports are untidy. A timestamp that repeats or steps back, a gap, a missing value
//! (empty, or `NaN`, `NA`, `null`, `inf`…), a negative value or a value that is not a whole
//! number under `--kind auto` is data: the row is judged in order as the next bucket and a
//! [`Warning`] names its line. Only input that cannot be read as data — a value that is not a
//! number, a timestamp that does not parse, a numerator above its denominator, a row with the
//! wrong number of fields — is an [`Error`] naming the line.

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use chrono::{DateTime, NaiveDateTime};

use crate::baseline::{self, Bucket, DetectorConfig, OnlineDetector, SeasonalityMode, Verdict};
use crate::kpi::{Direction, Kind, Sensitivity};

/// Interval assumed when the input has fewer than two rows and none was given.
const DEFAULT_INTERVAL_SECS: u32 = 3600;
/// Rows a `--kind auto` series is watched for whole-number values spread much tighter than
/// event counts are, before it is judged as a count for good.
const DISPERSION_CHECK_ROWS: usize = 288;
/// Below this ratio of the variance of successive differences (halved) to the mean, whole
/// numbers are readings (a speed of 60 ± 5), not event counts (Poisson: about 1).
const UNDERDISPERSED: f64 = 0.5;
/// Log-likelihood units by which additive changes must beat count-like ones.
const ADDITIVE_MARGIN: f64 = 2.0;
/// Above this ratio of the variance of successive differences (halved) to the mean, where the
/// variance grows like the mean, whole numbers are sums of sizeable amounts (revenue in cents,
/// bytes, counts reported in thousands), not counts of single events.
const CLUMPED: f64 = 100.0;

/// What `kpiwatch detect` failed on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The input path.
        path: PathBuf,
        /// The IO error.
        source: io::Error,
    },
    /// The output could not be written.
    #[error("cannot write {target}: {source}")]
    Write {
        /// The output path, or `stdout`.
        target: String,
        /// The IO error.
        source: io::Error,
    },
    /// The input has no header line.
    #[error("line 1: the input is empty; expected a header `timestamp,value` or `timestamp,numerator,denominator`")]
    Empty,
    /// The header is not one of the two accepted forms.
    #[error("line 1: header {got:?} is neither `timestamp,value` nor `timestamp,numerator,denominator`")]
    BadHeader {
        /// The header as read.
        got: String,
    },
    /// `--kind` contradicts the columns.
    #[error("line 1: --kind {kind} needs {needs}, but the header has {columns} columns")]
    KindMismatch {
        /// The requested kind.
        kind: Kind,
        /// What that kind needs.
        needs: &'static str,
        /// Columns found.
        columns: usize,
    },
    /// A line is not valid CSV (an unterminated quote, invalid UTF-8).
    #[error("line {line}: {message}")]
    Csv {
        /// 1-based line number.
        line: usize,
        /// What the CSV reader said.
        message: String,
    },
    /// A data line has the wrong number of fields.
    #[error("line {line}: expected {expected} comma-separated fields, found {got}")]
    ColumnCount {
        /// 1-based line number.
        line: usize,
        /// Fields the header promises.
        expected: usize,
        /// Fields found.
        got: usize,
    },
    /// A timestamp did not parse.
    #[error("line {line}: timestamp {got:?} is neither `YYYY-MM-DD HH:MM:SS`, ISO 8601 `YYYY-MM-DDTHH:MM:SS` (with or without an offset) nor RFC 3339")]
    BadTimestamp {
        /// 1-based line number.
        line: usize,
        /// The field as read.
        got: String,
    },
    /// A number did not parse or was not finite.
    #[error("line {line}: {column} {got:?} is not a finite number")]
    BadNumber {
        /// 1-based line number.
        line: usize,
        /// Column name.
        column: &'static str,
        /// The field as read.
        got: String,
    },
    /// A numerator or denominator below zero.
    #[error("line {line}: {column} {value:?} is negative: a ratio counts successes out of attempts")]
    Negative {
        /// 1-based line number.
        line: usize,
        /// Column name.
        column: &'static str,
        /// The value.
        value: f64,
    },
    /// Numerator above denominator.
    #[error("line {line}: numerator {numerator:?} is greater than denominator {denominator:?}")]
    NumeratorAboveDenominator {
        /// 1-based line number.
        line: usize,
        /// The numerator.
        numerator: f64,
        /// The denominator.
        denominator: f64,
    },
    /// `--interval` did not parse.
    #[error("invalid --interval {0:?}: expected a positive duration like 30s, 5m, 1h or 1d")]
    BadInterval(String),
    /// The detector rejected the configuration.
    #[error("detector configuration: {0}")]
    Detector(#[from] baseline::Error),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `--kind`: a noise model, or `auto` to infer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KindChoice {
    /// Ratio when the input has `numerator,denominator`; otherwise count while every value is
    /// a whole number at least 0 that varies like event counts do, else gauge (decided online:
    /// the first value that rules out a count switches to gauge, replaying the rows before it).
    #[default]
    Auto,
    /// This noise model.
    Fixed(Kind),
}

impl FromStr for KindChoice {
    type Err = crate::kpi::ParseError;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        if s.trim().eq_ignore_ascii_case("auto") {
            Ok(KindChoice::Auto)
        } else {
            s.parse().map(KindChoice::Fixed)
        }
    }
}

impl fmt::Display for KindChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KindChoice::Auto => f.write_str("auto"),
            KindChoice::Fixed(k) => k.fmt(f),
        }
    }
}

/// Options of `kpiwatch detect`.
#[derive(Debug, Clone)]
pub struct DetectOptions {
    /// Input CSV.
    pub input: PathBuf,
    /// Output file; `None` writes to stdout.
    pub output: Option<PathBuf>,
    /// Noise model, or [`KindChoice::Auto`].
    pub kind: KindChoice,
    /// Bucket length like `5m` or `1h`; `None` infers it from the timestamps.
    pub interval: Option<String>,
    /// Which deviations are anomalies.
    pub direction: Direction,
    /// Alarm budget.
    pub sensitivity: Sensitivity,
    /// Write JSON lines with the full verdict instead of CSV.
    pub explain: bool,
}

/// Something odd in the input that was handled, naming the line.
#[derive(Debug, Clone, PartialEq)]
pub struct Warning {
    /// 1-based line number.
    pub line: usize,
    /// What it was.
    pub kind: WarningKind,
    /// What was done about it.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// The kinds of [`Warning`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WarningKind {
    /// The same timestamp as the previous row.
    RepeatedTimestamp,
    /// A timestamp before the previous row's.
    BackwardTimestamp,
    /// More than one interval since the previous row.
    Gap,
    /// A value that is not a whole number at least 0 under `--kind auto`: judged as a gauge.
    NotACount,
    /// A negative value under `--kind count`: judged as missing.
    NegativeCount,
    /// A row without a value (empty field): judged as missing.
    MissingValue,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectSummary {
    /// Data rows read and written.
    pub rows: usize,
    /// Rows flagged as anomalies.
    pub anomalies: usize,
    /// Noise model used at the end (with `auto`, gauge once a value ruled out a count).
    pub kind: Kind,
    /// Bucket length used, in seconds.
    pub interval_secs: u32,
    /// Odd input that was handled, in line order.
    pub warnings: Vec<Warning>,
}

/// One input row.
#[derive(Debug, Clone)]
struct Row {
    line: usize,
    raw_ts: String,
    ts: i64,
    value: f64,
    denominator: Option<f64>,
}

/// Run `detect` as described by `opts`.
pub fn run(opts: &DetectOptions) -> Result<DetectSummary> {
    let file = File::open(&opts.input).map_err(|source| Error::Read {
        path: opts.input.clone(),
        source,
    })?;
    let mut warnings = Vec::new();
    let mut data = Vec::new();
    BufReader::new(file)
        .read_to_end(&mut data)
        .map_err(|source| Error::Read {
            path: opts.input.clone(),
            source,
        })?;
    let (kind, rows) = parse(&data, opts.kind, &opts.input, &mut warnings)?;
    let interval_secs = match &opts.interval {
        Some(s) => parse_interval(s)?,
        None => infer_interval(&rows),
    };
    check_order(&rows, interval_secs, &mut warnings);
    let cfg = DetectorConfig {
        kind,
        interval_secs,
        direction: opts.direction,
        sensitivity: opts.sensitivity,
        min_volume: 0.0,
        seasonality: SeasonalityMode::Auto,
    };
    let mut det = AutoDetector::new(cfg, opts.kind == KindChoice::Auto)?;
    let target = opts
        .output
        .as_ref()
        .map_or_else(|| "stdout".to_owned(), |p| p.display().to_string());
    let werr = |source: io::Error| Error::Write {
        target: target.clone(),
        source,
    };
    let sink: Box<dyn Write> = match &opts.output {
        Some(p) => Box::new(File::create(p).map_err(werr)?),
        None => Box::new(io::stdout().lock()),
    };
    let mut out = BufWriter::new(sink);
    if !opts.explain {
        writeln!(out, "timestamp,value,expected,lower,upper,score,anomaly").map_err(werr)?;
    }
    let mut anomalies = 0;
    for (i, row) in rows.iter().enumerate() {
        let v = det.step(&rows, i, &mut warnings)?;
        anomalies += usize::from(v.anomaly);
        if opts.explain {
            write_json(&mut out, &row.raw_ts, &v).map_err(werr)?;
        } else {
            writeln!(
                out,
                "{},{},{},{},{},{},{}",
                csv_field(&row.raw_ts),
                num(row.value_in_band_units()),
                num(v.reading.band.expected),
                num(v.reading.band.lower),
                num(v.reading.band.upper),
                num(v.score),
                u8::from(v.anomaly)
            )
            .map_err(werr)?;
        }
    }
    out.flush().map_err(werr)?;
    warnings.sort_by_key(|w| w.line);
    Ok(DetectSummary {
        rows: rows.len(),
        anomalies,
        kind: det.kind(),
        interval_secs,
        warnings,
    })
}

impl Row {
    /// The value in the band's units: numerator / denominator for ratios.
    fn value_in_band_units(&self) -> f64 {
        match self.denominator {
            Some(d) if d > 0.0 => self.value / d,
            Some(_) => f64::NAN,
            None => self.value,
        }
    }

    fn bucket(&self) -> Bucket {
        Bucket {
            ts: self.ts,
            value: self.value,
            denominator: self.denominator,
            excluded: false,
        }
    }
}

/// The detector with `--kind auto`'s online choice between count and gauge.
#[derive(Debug)]
struct AutoDetector {
    det: OnlineDetector,
    /// Still free to decide the series is not counts.
    auto: bool,
}

impl AutoDetector {
    fn new(cfg: DetectorConfig, auto: bool) -> Result<Self> {
        Ok(AutoDetector {
            det: OnlineDetector::new(cfg)?,
            auto: auto && cfg.kind == Kind::Count,
        })
    }

    fn kind(&self) -> Kind {
        self.det.config().kind
    }

    /// Judge `rows[i]`, after switching to a gauge (replaying `rows[..i]`) if it, or the rows
    /// so far, rule out a count.
    fn step(&mut self, rows: &[Row], i: usize, warnings: &mut Vec<Warning>) -> Result<Verdict> {
        let row = &rows[i];
        let mut bucket = row.bucket();
        if self.auto {
            // A missing value says nothing about the kind.
            let whole = row.value.is_nan() || (row.value >= 0.0 && row.value.fract() == 0.0);
            let seen = &rows[..=i];
            let reason = if !whole {
                Some(format!(
                    "value {} is not a whole number at least 0, so not a count",
                    show(row.value)
                ))
            } else if i + 1 != DISPERSION_CHECK_ROWS {
                None
            } else if underdispersed(seen) {
                Some(format!(
                    "the first {DISPERSION_CHECK_ROWS} values are whole numbers that vary much less than event counts do"
                ))
            } else if additive(seen) {
                Some(format!(
                    "the first {DISPERSION_CHECK_ROWS} values are whole numbers whose changes are as large where they are small as where they are large, unlike event counts"
                ))
            } else if clumped(seen) {
                Some(format!(
                    "the first {DISPERSION_CHECK_ROWS} values are whole numbers that vary like sums of amounts of a hundred or more (revenue in cents, bytes), not like counts of single events"
                ))
            } else {
                None
            };
            if let Some(reason) = reason {
                let message =
                    format!("{reason}: judged as a gauge from here on, the earlier rows replayed as one");
                warnings.push(Warning {
                    line: row.line,
                    kind: WarningKind::NotACount,
                    message,
                });
                let cfg = DetectorConfig {
                    kind: Kind::Gauge,
                    ..*self.det.config()
                };
                let history: Vec<Bucket> = rows[..i].iter().map(Row::bucket).collect();
                self.det = OnlineDetector::warm(cfg, &history)?;
                self.auto = false;
            }
        } else if self.kind() == Kind::Count && row.value < 0.0 {
            warnings.push(Warning {
                line: row.line,
                kind: WarningKind::NegativeCount,
                message: format!(
                    "value {} is negative under --kind count: judged as missing (use --kind gauge or auto for signed values)",
                    show(row.value)
                ),
            });
            bucket.value = f64::NAN;
        }
        Ok(self.det.step(&bucket))
    }
}

/// The non-missing values, their mean and the variance of their successive differences,
/// halved (so a level or a slow pattern does not count): `None` for fewer than two values or a
/// mean under 5 (sparse counts: too few events to tell).
fn changes(rows: &[Row]) -> Option<(Vec<f64>, f64, f64)> {
    let values: Vec<f64> = rows.iter().map(|r| r.value).filter(|v| !v.is_nan()).collect();
    if values.len() < 2 {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if mean < 5.0 {
        return None;
    }
    let diffs = values.windows(2).map(|w| (w[1] - w[0]).powi(2)).sum::<f64>();
    let var = diffs / (2.0 * (n - 1.0));
    Some((values, mean, var))
}

/// Whether whole numbers vary much less than event counts would (Poisson: the variance of
/// [`changes`] about the mean).
fn underdispersed(rows: &[Row]) -> bool {
    changes(rows).is_some_and(|(_, mean, var)| var < UNDERDISPERSED * mean)
}

/// Whether whole numbers vary as sums of sizeable amounts do: at least `CLUMPED` times as much
/// as counts of single events would, and in proportion to the level (the Box-Cox likelihood of
/// the changes for lambda 1/2, a variance growing like the mean, at least that of lambda 0, one
/// growing like its square). The count model's variance, the mean plus a multiple of its
/// square, fits such a series at one level only: revenue in cents judged as a count was paged
/// on at its quiet hours (docs/DETECTION.md, section 7).
fn clumped(rows: &[Row]) -> bool {
    let Some((values, mean, var)) = changes(rows) else {
        return false;
    };
    if var <= CLUMPED * mean {
        return false;
    }
    let shifted: Vec<f64> = values.iter().map(|v| v + 1.0).collect();
    let ll = |lambda| baseline::box_cox_of_changes(&shifted, lambda);
    ll(0.5) >= ll(0.0)
}

/// Whether whole numbers change from one row to the next by about as much at every level, as a
/// gauge's additive noise does, rather than by more where they are larger, as counts do: the
/// Box-Cox likelihood of the changes (values started at 1) for lambda 1 against 1/2 (Poisson)
/// and 0 (overdispersed counts), by a clear margin.
fn additive(rows: &[Row]) -> bool {
    let values: Vec<f64> = rows
        .iter()
        .map(|r| r.value + 1.0)
        .filter(|v| v.is_finite())
        .collect();
    if values.len() < 3 {
        return false;
    }
    let ll = |lambda| baseline::box_cox_of_changes(&values, lambda);
    ll(1.0) > ll(0.5).max(ll(0.0)) + ADDITIVE_MARGIN
}

/// Warn about timestamps that repeat, step back or leave a gap; the rows are judged in order.
fn check_order(rows: &[Row], interval_secs: u32, warnings: &mut Vec<Warning>) {
    let interval = i64::from(interval_secs.max(1));
    for w in rows.windows(2) {
        let (prev, row) = (&w[0], &w[1]);
        let step = row.ts - prev.ts;
        let (kind, message) = if step == 0 {
            (
                WarningKind::RepeatedTimestamp,
                format!(
                    "timestamp {} repeats the previous row's (a clock change or a late row?): judged as the next bucket",
                    row.raw_ts
                ),
            )
        } else if step < 0 {
            (
                WarningKind::BackwardTimestamp,
                format!(
                    "timestamp {} is before the previous row's {}: judged as the next bucket, in input order",
                    row.raw_ts, prev.raw_ts
                ),
            )
        } else if step > 2 * interval {
            (
                WarningKind::Gap,
                format!(
                    "{} intervals since the previous row ({}): the missing buckets are not judged",
                    step / interval - 1,
                    prev.raw_ts
                ),
            )
        } else {
            continue;
        };
        warnings.push(Warning {
            line: row.line,
            kind,
            message,
        });
    }
}

/// A number for CSV: up to 6 decimals, empty when not finite.
fn num(x: f64) -> String {
    if !x.is_finite() {
        return String::new();
    }
    if x.abs() >= 1e15 {
        return format!("{x:e}");
    }
    let s = format!("{x:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

/// A timestamp as a CSV field, quoted when it has to be.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// A number for JSON: `null` when not finite.
fn json_num(x: f64) -> String {
    if x.is_finite() {
        num(x)
    } else {
        "null".to_owned()
    }
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn write_json(out: &mut impl Write, ts: &str, v: &Verdict) -> io::Result<()> {
    let opt = |s: Option<&str>| s.map_or_else(|| "null".to_owned(), json_str);
    writeln!(
        out,
        "{{\"timestamp\":{},\"value\":{},\"expected\":{},\"lower\":{},\"upper\":{},\"score\":{},\"anomaly\":{},\"trigger\":{},\"side\":{},\"status\":\"{}\",\"warming_up\":{},\"seasonality\":\"{}\",\"volume\":{}}}",
        json_str(ts),
        json_num(v.reading.value),
        json_num(v.reading.band.expected),
        json_num(v.reading.band.lower),
        json_num(v.reading.band.upper),
        json_num(v.score),
        v.anomaly,
        opt(v.trigger.map(|t| t.as_str())),
        opt(v.side.map(|s| s.as_str())),
        v.status.as_str(),
        v.status == baseline::Status::WarmingUp,
        v.seasonality.as_str(),
        json_num(v.volume),
    )
}

/// Parse a timestamp as local wall-clock seconds since the epoch: `YYYY-MM-DD HH:MM:SS`, the
/// same with `T`, either with fractional seconds, or RFC 3339 / ISO 8601 with an offset (whose
/// local wall-clock time is used, as the service does with a KPI's timezone).
fn parse_ts(s: &str) -> Option<i64> {
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc().timestamp());
        }
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.naive_local().and_utc().timestamp());
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%dT%H:%M:%S%.f%z",
        "%Y-%m-%d %H:%M:%S%.f%z",
    ] {
        if let Ok(t) = DateTime::parse_from_str(s, fmt) {
            return Some(t.naive_local().and_utc().timestamp());
        }
    }
    if let Some(t) = parse_epoch(s) {
        return Some(t);
    }
    if let Some(date) = s.strip_suffix(" 00:00:00").or(Some(s)) {
        if let Ok(d) = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d") {
            return d.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp());
        }
    }
    None
}

/// Unix time, as exports without a calendar write it: 9 or 10 digits of seconds (1973 to 2286,
/// with or without a fraction) or 12 or 13 of milliseconds; UTC, which is then the wall clock.
/// Other runs of digits (`20240101`) are not taken for times.
fn parse_epoch(s: &str) -> Option<i64> {
    let (whole, fraction) = s.split_once('.').unwrap_or((s, ""));
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !digits(fraction) {
        return None;
    }
    let n: i64 = whole.parse().ok()?;
    match (whole.len(), fraction.is_empty()) {
        (9 | 10, _) => Some(n),
        (12 | 13, true) => Some(n.div_euclid(1000)),
        _ => None,
    }
}

/// Whether a field says "no value": empty, or a marker exports write for one (pandas `NaN`,
/// R `NA`, SQL `NULL`, Python `None`) or a value that is not finite (`inf`).
fn no_value(field: &str) -> bool {
    const MARKERS: [&str; 11] = [
        "nan",
        "na",
        "n/a",
        "null",
        "none",
        "inf",
        "+inf",
        "-inf",
        "infinity",
        "+infinity",
        "-infinity",
    ];
    let t = field.trim();
    t.is_empty() || MARKERS.iter().any(|m| t.eq_ignore_ascii_case(m))
}

/// A value for a warning: in full, or in scientific notation when it is very large or small
/// (`-1e308` would otherwise fill the screen).
fn show(v: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e15 || v.abs() < 1e-6) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

fn parse_number(line: usize, column: &'static str, field: &str) -> Result<f64> {
    match field.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(Error::BadNumber {
            line,
            column,
            got: field.to_owned(),
        }),
    }
}

/// Parse the CSV; returns the kind to start with and the rows.
fn parse(
    data: &[u8],
    kind: KindChoice,
    path: &Path,
    warnings: &mut Vec<Warning>,
) -> Result<(Kind, Vec<Row>)> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(data);
    let lines = Lines::new(data);
    let read_err = |e: csv::Error| {
        let line = e.position().map_or(0, |p| lines.at(p.byte()));
        match e.into_kind() {
            csv::ErrorKind::Io(source) => Error::Read {
                path: path.to_path_buf(),
                source,
            },
            other => Error::Csv {
                line,
                message: format!("not valid CSV: {other:?}"),
            },
        }
    };
    let mut records = rdr.records();
    // The header: the first line that is not blank.
    let header = loop {
        match records.next() {
            None => return Err(Error::Empty),
            Some(r) => {
                let r = r.map_err(read_err)?;
                if r.iter().any(|f| !f.trim_start_matches('\u{feff}').is_empty()) {
                    break r;
                }
            }
        }
    };
    let names: Vec<String> = header
        .iter()
        .map(|f| f.trim_start_matches('\u{feff}').trim().to_ascii_lowercase())
        .collect();
    let columns = names.len();
    let is_ratio = match names.as_slice() {
        [t, v] if t == "timestamp" && v == "value" => false,
        [t, n, d] if t == "timestamp" && n == "numerator" && d == "denominator" => true,
        _ => return Err(Error::BadHeader { got: names.join(",") }),
    };
    let kind = match (kind, is_ratio) {
        (KindChoice::Auto, true) | (KindChoice::Fixed(Kind::Ratio), true) => Kind::Ratio,
        (KindChoice::Auto, false) => Kind::Count,
        (KindChoice::Fixed(Kind::Ratio), false) => {
            return Err(Error::KindMismatch {
                kind: Kind::Ratio,
                needs: "`timestamp,numerator,denominator`",
                columns,
            })
        }
        (KindChoice::Fixed(k), true) => {
            return Err(Error::KindMismatch {
                kind: k,
                needs: "`timestamp,value`",
                columns,
            })
        }
        (KindChoice::Fixed(k), false) => k,
    };
    let mut rows: Vec<Row> = Vec::new();
    for record in records {
        let record = record.map_err(read_err)?;
        let line = record.position().map_or(0, |p| lines.at(p.byte()));
        if record.iter().all(str::is_empty) {
            continue;
        }
        if record.len() != columns {
            return Err(Error::ColumnCount {
                line,
                expected: columns,
                got: record.len(),
            });
        }
        let raw_ts = record[0].to_owned();
        let Some(ts) = parse_ts(&raw_ts) else {
            return Err(Error::BadTimestamp { line, got: raw_ts });
        };
        let (value, denominator) = if is_ratio {
            if no_value(&record[1]) || no_value(&record[2]) {
                warnings.push(Warning {
                    line,
                    kind: WarningKind::MissingValue,
                    message: format!(
                        "no numerator or denominator ({:?}, {:?}): judged as missing",
                        &record[1], &record[2]
                    ),
                });
                (f64::NAN, Some(f64::NAN))
            } else {
                let n = parse_number(line, "numerator", &record[1])?;
                let d = parse_number(line, "denominator", &record[2])?;
                for (column, value) in [("denominator", d), ("numerator", n)] {
                    if value < 0.0 {
                        return Err(Error::Negative { line, column, value });
                    }
                }
                if n > d {
                    return Err(Error::NumeratorAboveDenominator {
                        line,
                        numerator: n,
                        denominator: d,
                    });
                }
                (n, Some(d))
            }
        } else if no_value(&record[1]) {
            let message = if record[1].trim().is_empty() {
                "no value: judged as missing".to_owned()
            } else {
                format!("value {:?} says there is none: judged as missing", &record[1])
            };
            warnings.push(Warning {
                line,
                kind: WarningKind::MissingValue,
                message,
            });
            (f64::NAN, None)
        } else {
            (parse_number(line, "value", &record[1])?, None)
        };
        rows.push(Row {
            line,
            raw_ts,
            ts,
            value,
            denominator,
        });
    }
    Ok((kind, rows))
}

/// Line numbers of byte offsets. (The `csv` crate's own line count skips blank lines and
/// miscounts CRLF ends; errors must name the line an editor shows.)
#[derive(Debug)]
struct Lines<'a> {
    data: &'a [u8],
    /// Offsets of every `\n`.
    newlines: Vec<u64>,
}

impl<'a> Lines<'a> {
    fn new(data: &'a [u8]) -> Self {
        let newlines = data
            .iter()
            .enumerate()
            .filter(|(_, &b)| b == b'\n')
            .map(|(i, _)| i as u64)
            .collect();
        Lines { data, newlines }
    }

    /// The 1-based line of the first character that is not a line end at or after `byte`
    /// (where the `csv` crate says a record starts).
    fn at(&self, byte: u64) -> usize {
        let mut b = byte as usize;
        while b < self.data.len() && matches!(self.data[b], b'\r' | b'\n') {
            b += 1;
        }
        self.newlines.partition_point(|&nl| (nl as usize) < b) + 1
    }
}

/// Parse `30s`, `5m`, `1h`, `1d`, `1w` (or bare seconds) into seconds.
fn parse_interval(s: &str) -> Result<u32> {
    let t = s.trim().to_ascii_lowercase();
    let bad = || Error::BadInterval(s.to_owned());
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1,
        "m" | "min" | "mins" => 60,
        "h" | "hour" | "hours" => 3600,
        "d" | "day" | "days" => 86_400,
        "w" | "week" | "weeks" => 604_800,
        _ => return Err(bad()),
    };
    match n.checked_mul(mult).and_then(|v| u32::try_from(v).ok()) {
        Some(v) if v > 0 => Ok(v),
        _ => Err(bad()),
    }
}

/// The most common gap between consecutive timestamps (robust to missing buckets).
fn infer_interval(rows: &[Row]) -> u32 {
    let mut gaps: Vec<i64> = rows
        .windows(2)
        .map(|w| w[1].ts - w[0].ts)
        .filter(|g| *g > 0)
        .collect();
    if gaps.is_empty() {
        return DEFAULT_INTERVAL_SECS;
    }
    gaps.sort_unstable();
    let (mut best, mut best_n, mut i) = (gaps[0], 0usize, 0usize);
    while i < gaps.len() {
        let mut j = i;
        while j < gaps.len() && gaps[j] == gaps[i] {
            j += 1;
        }
        if j - i > best_n {
            best_n = j - i;
            best = gaps[i];
        }
        i = j;
    }
    u32::try_from(best).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
