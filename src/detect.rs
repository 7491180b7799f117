//! `kpiwatch detect`: the offline CSV contract around [`crate::baseline::OnlineDetector`].
//!
//! Reads `timestamp,value` or `timestamp,numerator,denominator`, validates every line (errors
//! name the line), runs the very detector the service runs, online (row t sees rows <= t), and
//! writes `timestamp,value,expected,lower,upper,score,anomaly` or, with `explain`, one JSON
//! object per row. This is the only module here that touches files; the detector stays pure.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDateTime};

use crate::baseline::{self, Bucket, DetectorConfig, OnlineDetector, SeasonalityMode, Verdict};
use crate::kpi::{Direction, Kind, Sensitivity};

/// Interval assumed when the input has fewer than two rows and none was given.
const DEFAULT_INTERVAL_SECS: u32 = 3600;

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
    #[error("line {line}: timestamp {got:?} is neither `YYYY-MM-DD HH:MM:SS` nor RFC 3339")]
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
    /// A count, numerator or denominator below zero.
    #[error("line {line}: {column} {value:?} is negative{hint}")]
    Negative {
        /// 1-based line number.
        line: usize,
        /// Column name.
        column: &'static str,
        /// The value.
        value: f64,
        /// How to fix it, if there is an obvious way.
        hint: &'static str,
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
    /// Timestamp not after the previous one.
    #[error(
        "line {line}: timestamp {got} is before the previous row's {previous}; rows must be sorted by time"
    )]
    Unsorted {
        /// 1-based line number.
        line: usize,
        /// This row's timestamp.
        got: String,
        /// The previous row's timestamp.
        previous: String,
    },
    /// Same timestamp twice.
    #[error("line {line}: timestamp {got} repeats the previous row's")]
    Duplicate {
        /// 1-based line number.
        line: usize,
        /// The timestamp.
        got: String,
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

/// Options of `kpiwatch detect`.
#[derive(Debug, Clone)]
pub struct DetectOptions {
    /// Input CSV.
    pub input: PathBuf,
    /// Output file; `None` writes to stdout.
    pub output: Option<PathBuf>,
    /// Noise model; `None` infers ratio from three columns, else count.
    pub kind: Option<Kind>,
    /// Bucket length like `5m` or `1h`; `None` infers it from the timestamps.
    pub interval: Option<String>,
    /// Which deviations are anomalies.
    pub direction: Direction,
    /// Alarm budget.
    pub sensitivity: Sensitivity,
    /// Write JSON lines with the full verdict instead of CSV.
    pub explain: bool,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectSummary {
    /// Data rows read and written.
    pub rows: usize,
    /// Rows flagged as anomalies.
    pub anomalies: usize,
    /// Noise model used.
    pub kind: Kind,
    /// Bucket length used, in seconds.
    pub interval_secs: u32,
}

/// One validated input row.
#[derive(Debug, Clone)]
struct Row {
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
    let (kind, rows) = parse(BufReader::new(file), opts.kind, &opts.input)?;
    let interval_secs = match &opts.interval {
        Some(s) => parse_interval(s)?,
        None => infer_interval(&rows),
    };
    let cfg = DetectorConfig {
        kind,
        interval_secs,
        direction: opts.direction,
        sensitivity: opts.sensitivity,
        min_volume: 0.0,
        seasonality: SeasonalityMode::Auto,
    };
    let mut det = OnlineDetector::new(cfg)?;
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
    for row in &rows {
        let bucket = Bucket {
            ts: row.ts,
            value: row.value,
            denominator: row.denominator,
            excluded: false,
        };
        let v = det.step(&bucket);
        anomalies += usize::from(v.anomaly);
        if opts.explain {
            write_json(&mut out, &row.raw_ts, &v).map_err(werr)?;
        } else {
            writeln!(
                out,
                "{},{},{},{},{},{},{}",
                row.raw_ts,
                num(v.value),
                num(v.expected),
                num(v.lower),
                num(v.upper),
                num(v.score),
                u8::from(v.anomaly)
            )
            .map_err(werr)?;
        }
    }
    out.flush().map_err(werr)?;
    Ok(DetectSummary {
        rows: rows.len(),
        anomalies,
        kind,
        interval_secs,
    })
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
    writeln!(
        out,
        "{{\"timestamp\":{},\"value\":{},\"expected\":{},\"lower\":{},\"upper\":{},\"score\":{},\"anomaly\":{},\"status\":\"{}\",\"warming_up\":{},\"seasonality\":\"{}\",\"volume\":{},\"trigger\":{},\"side\":{}}}",
        json_str(ts),
        json_num(v.value),
        json_num(v.expected),
        json_num(v.lower),
        json_num(v.upper),
        json_num(v.score),
        v.anomaly,
        v.status.as_str(),
        v.status == baseline::Status::WarmingUp,
        v.seasonality.as_str(),
        json_num(v.volume),
        v.trigger.map_or("null".to_owned(), |t| json_str(t.as_str())),
        v.side.map_or("null".to_owned(), |s| json_str(s.as_str())),
    )
}

/// Parse a timestamp as local wall-clock seconds since the epoch.
fn parse_ts(s: &str) -> Option<i64> {
    if let Ok(t) = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S") {
        return Some(t.and_utc().timestamp());
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.naive_local().and_utc().timestamp());
    }
    None
}

fn unquote(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('"').and_then(|x| x.strip_suffix('"')).unwrap_or(s)
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

/// Parse and validate the CSV; returns the kind used and the rows.
fn parse(reader: impl BufRead, kind: Option<Kind>, path: &Path) -> Result<(Kind, Vec<Row>)> {
    let read_err = |source: io::Error| Error::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut lines = reader.lines().enumerate();
    let header = loop {
        match lines.next() {
            None => return Err(Error::Empty),
            Some((_, l)) => {
                let l = l.map_err(read_err)?;
                let l = l.trim_start_matches('\u{feff}').trim().to_owned();
                if !l.is_empty() {
                    break l;
                }
            }
        }
    };
    let names: Vec<String> = header
        .split(',')
        .map(|f| unquote(f).to_ascii_lowercase())
        .collect();
    let columns = names.len();
    let is_ratio = match names.as_slice() {
        [t, v] if t == "timestamp" && v == "value" => false,
        [t, n, d] if t == "timestamp" && n == "numerator" && d == "denominator" => true,
        _ => return Err(Error::BadHeader { got: header }),
    };
    let auto = kind.is_none();
    let kind = match (kind, is_ratio) {
        (None, true) | (Some(Kind::Ratio), true) => Kind::Ratio,
        (None, false) => Kind::Count, // refined below from the values
        (Some(Kind::Ratio), false) => {
            return Err(Error::KindMismatch {
                kind: Kind::Ratio,
                needs: "`timestamp,numerator,denominator`",
                columns,
            })
        }
        (Some(k), true) => {
            return Err(Error::KindMismatch {
                kind: k,
                needs: "`timestamp,value`",
                columns,
            })
        }
        (Some(k), false) => k,
    };
    let mut rows: Vec<Row> = Vec::new();
    for (idx, l) in lines {
        let line = idx + 1;
        let l = l.map_err(read_err)?;
        let l = l.trim();
        if l.is_empty() {
            continue;
        }
        let fields: Vec<&str> = l.split(',').map(unquote).collect();
        if fields.len() != columns {
            return Err(Error::ColumnCount {
                line,
                expected: columns,
                got: fields.len(),
            });
        }
        let raw_ts = fields[0].to_owned();
        let Some(ts) = parse_ts(&raw_ts) else {
            return Err(Error::BadTimestamp { line, got: raw_ts });
        };
        let (value, denominator) = if is_ratio {
            let n = parse_number(line, "numerator", fields[1])?;
            let d = parse_number(line, "denominator", fields[2])?;
            if d < 0.0 {
                return Err(Error::Negative {
                    line,
                    column: "denominator",
                    value: d,
                    hint: "",
                });
            }
            if n < 0.0 {
                return Err(Error::Negative {
                    line,
                    column: "numerator",
                    value: n,
                    hint: "",
                });
            }
            if n > d {
                return Err(Error::NumeratorAboveDenominator {
                    line,
                    numerator: n,
                    denominator: d,
                });
            }
            (n, Some(d))
        } else {
            let v = parse_number(line, "value", fields[1])?;
            if kind == Kind::Count && v < 0.0 && !auto {
                return Err(Error::Negative {
                    line,
                    column: "value",
                    value: v,
                    hint: " (a count cannot be; use --kind gauge for signed values)",
                });
            }
            (v, None)
        };
        rows.push(Row {
            raw_ts,
            ts,
            value,
            denominator,
        });
    }
    let kind = if auto && kind == Kind::Count && rows.iter().any(|r| r.value < 0.0 || r.value.fract() != 0.0) {
        Kind::Gauge
    } else {
        kind
    };
    Ok((kind, rows))
}

/// Parse `30s`, `5m`, `1h`, `1d`, `1w` (or bare seconds) into seconds.
fn parse_interval(s: &str) -> Result<u32> {
    let t = s.trim().to_ascii_lowercase();
    let bad = || Error::BadInterval(s.to_owned());
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| bad())?;
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
mod tests {
    use super::*;

    fn parse_str(s: &str, kind: Option<Kind>) -> Result<(Kind, Vec<Row>)> {
        parse(s.as_bytes(), kind, Path::new("test.csv"))
    }

    fn line_of(e: &Error) -> Option<usize> {
        match e {
            Error::ColumnCount { line, .. }
            | Error::BadTimestamp { line, .. }
            | Error::BadNumber { line, .. }
            | Error::Negative { line, .. }
            | Error::NumeratorAboveDenominator { line, .. }
            | Error::Unsorted { line, .. }
            | Error::Duplicate { line, .. } => Some(*line),
            _ => None,
        }
    }

    #[test]
    fn validation_errors_name_the_offending_line() {
        let cases: &[(&str, usize)] = &[
            (
                "timestamp,value\n2026-01-01 00:00:00,1\n2026-01-01 01:00:00,x\n",
                3,
            ),
            (
                "timestamp,value\n2026-01-01 00:00:00,1\n2026-01-01 00:00:00,2\n",
                3,
            ),
            (
                "timestamp,value\n2026-01-01 01:00:00,1\n2026-01-01 00:00:00,2\n",
                3,
            ),
            ("timestamp,value\n2026-01-01 00:00:00,1,4\n", 2),
            ("timestamp,value\nyesterday,1\n", 2),
            ("timestamp,value\n2026-01-01 00:00:00,nan\n", 2),
            ("timestamp,numerator,denominator\n2026-01-01 00:00:00,1,-2\n", 2),
            (
                "timestamp,numerator,denominator\n2026-01-01 00:00:00,1,2\n2026-01-01 00:05:00,5,2\n",
                3,
            ),
        ];
        for (input, line) in cases {
            let err = parse_str(input, None).expect_err(input);
            assert_eq!(line_of(&err), Some(*line), "{input}: {err}");
            assert!(err.to_string().starts_with(&format!("line {line}:")), "{err}");
        }
    }

    #[test]
    fn a_bad_header_or_a_kind_that_contradicts_the_columns_is_rejected() {
        assert!(matches!(parse_str("ts,v\n", None), Err(Error::BadHeader { .. })));
        assert!(matches!(parse_str("", None), Err(Error::Empty)));
        assert!(matches!(
            parse_str("timestamp,value\n", Some(Kind::Ratio)),
            Err(Error::KindMismatch { .. })
        ));
    }

    #[test]
    fn kind_is_inferred_from_the_columns_unless_given() {
        let (k, rows) = parse_str(
            "timestamp,numerator,denominator\n2026-01-01T00:00:00Z,1,2\n",
            None,
        )
        .expect("parses");
        assert_eq!(k, Kind::Ratio);
        assert_eq!(rows.len(), 1);
        let (k, _) =
            parse_str("timestamp,value\n2026-01-01 00:00:00,-1.5\n", Some(Kind::Gauge)).expect("parses");
        assert_eq!(k, Kind::Gauge);
    }

    #[test]
    fn odd_input_is_an_error_or_a_result_never_a_panic() {
        let inputs = [
            "timestamp,value\n,\n",
            "timestamp,value\n2026-13-45 99:99:99,1\n",
            "timestamp,value\n2026-01-01 00:00:00,1e999\n",
            "timestamp,numerator,denominator\n2026-01-01 00:00:00,,\n",
            "timestamp,numerator,denominator\n2026-01-01 00:00:00,0,0\n",
            "\u{feff}timestamp,value\n\n\n2026-01-01 00:00:00,1\n",
            "timestamp,value\n\"2026-01-01 00:00:00\",\"3\"\n",
            "timestamp,value\n2026-01-01T00:00:00+14:00,1\n2026-01-01T00:00:00-12:00,1\n",
            "timestamp\n",
            "timestamp,value,extra\n",
        ];
        for input in inputs {
            let _ = parse_str(input, None);
            let _ = parse_str(input, Some(Kind::Gauge));
        }
    }

    #[test]
    fn the_output_for_a_row_depends_only_on_rows_up_to_it() {
        let dir = std::env::temp_dir().join(format!("kpiwatch-detect-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut csv = String::from("timestamp,value\n");
        for i in 0..(24 * 12) {
            let v = 100 + (i * 37) % 23 + if i == 250 { 400 } else { 0 };
            csv.push_str(&format!("2026-01-{:02} {:02}:00:00,{v}\n", 1 + i / 24, i % 24));
        }
        let lines: Vec<&str> = csv.lines().collect();
        let run_on = |n: usize, name: &str| {
            let input = dir.join(format!("{name}.csv"));
            let output = dir.join(format!("{name}.out"));
            std::fs::write(&input, lines[..=n].join("\n")).expect("write input");
            let opts = DetectOptions {
                input,
                output: Some(output.clone()),
                kind: None,
                interval: Some("1h".to_owned()),
                direction: Direction::Both,
                sensitivity: Sensitivity::MEDIUM,
                explain: false,
            };
            let summary = run(&opts).expect("detect runs");
            assert_eq!(summary.rows, n);
            std::fs::read_to_string(output).expect("read output")
        };
        let full = run_on(lines.len() - 1, "full");
        let cut = run_on(260, "cut");
        let full_rows: Vec<&str> = full.lines().collect();
        assert_eq!(cut.lines().collect::<Vec<_>>(), full_rows[..=260].to_vec());
        assert!(
            full_rows[251].ends_with(",1"),
            "the spike is flagged: {}",
            full_rows[251]
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn intervals_parse_and_are_inferred_from_the_most_common_gap() {
        assert_eq!(parse_interval("5m").ok(), Some(300));
        assert_eq!(parse_interval("1h").ok(), Some(3600));
        assert!(parse_interval("0m").is_err());
        assert!(parse_interval("fast").is_err());
        let (_, rows) = parse_str(
            "timestamp,value\n2026-01-01 00:00:00,1\n2026-01-01 00:05:00,1\n2026-01-01 00:20:00,1\n2026-01-01 00:25:00,1\n",
            None,
        )
        .expect("parses");
        assert_eq!(infer_interval(&rows), 300);
    }
}
