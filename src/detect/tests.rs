//! Tests of the CSV contract: what is an error, what is a warning, and that output is online.

use super::*;

fn parse_str(s: &str, kind: KindChoice) -> Result<(Kind, Vec<Row>, Vec<Warning>)> {
    let mut warnings = Vec::new();
    let (k, rows) = parse(s.as_bytes(), kind, Path::new("test.csv"), &mut warnings)?;
    Ok((k, rows, warnings))
}

fn line_of(e: &Error) -> Option<usize> {
    match e {
        Error::ColumnCount { line, .. }
        | Error::BadTimestamp { line, .. }
        | Error::BadNumber { line, .. }
        | Error::Negative { line, .. }
        | Error::NumeratorAboveDenominator { line, .. }
        | Error::Csv { line, .. } => Some(*line),
        _ => None,
    }
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("kpiwatch-detect-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run `detect` over `csv` and return the summary and the output lines.
fn detect(dir: &TempDir, name: &str, csv: &str, kind: KindChoice) -> (DetectSummary, Vec<String>) {
    let input = dir.0.join(format!("{name}.csv"));
    let output = dir.0.join(format!("{name}.out"));
    std::fs::write(&input, csv).expect("write input");
    let summary = run(&DetectOptions {
        input,
        output: Some(output.clone()),
        kind,
        interval: None,
        direction: Direction::Both,
        sensitivity: Sensitivity::MEDIUM,
        explain: false,
    })
    .expect("detect runs");
    let out = std::fs::read_to_string(output).expect("read output");
    (summary, out.lines().map(str::to_owned).collect())
}

#[test]
fn input_that_cannot_be_data_is_an_error_naming_its_line() {
    let cases: &[(&str, usize)] = &[
        (
            "timestamp,value\n2026-01-01 00:00:00,1\n2026-01-01 01:00:00,x\n",
            3,
        ),
        ("timestamp,value\n2026-01-01 00:00:00,1,4\n", 2),
        ("timestamp,value\nyesterday,1\n", 2),
        ("timestamp,value\n2026-01-01 00:00:00,1.2.3\n", 2),
        ("timestamp,value\n2026-01-01 00:00:00,#DIV/0!\n", 2),
        ("timestamp,numerator,denominator\n2026-01-01 00:00:00,1,-2\n", 2),
        (
            "timestamp,numerator,denominator\n2026-01-01 00:00:00,1,2\n2026-01-01 00:05:00,5,2\n",
            3,
        ),
    ];
    for (input, line) in cases {
        let err = parse_str(input, KindChoice::Auto).expect_err(input);
        assert_eq!(line_of(&err), Some(*line), "{input}: {err}");
        assert!(err.to_string().starts_with(&format!("line {line}:")), "{err}");
    }
}

#[test]
fn a_bad_header_or_a_kind_that_contradicts_the_columns_is_rejected() {
    assert!(matches!(
        parse_str("ts,v\n", KindChoice::Auto),
        Err(Error::BadHeader { .. })
    ));
    assert!(matches!(parse_str("", KindChoice::Auto), Err(Error::Empty)));
    assert!(matches!(
        parse_str("timestamp,value\n", KindChoice::Fixed(Kind::Ratio)),
        Err(Error::KindMismatch { .. })
    ));
}

#[test]
fn iso_timestamps_with_or_without_an_offset_and_fractions_parse_to_local_wall_clock_time() {
    let base = parse_ts("2024-01-01 00:00:00").expect("plain");
    for s in [
        "2024-01-01T00:00:00",
        "2024-01-01T00:00:00.000",
        "2024-01-01 00:00:00.000000",
        "2024-01-01T00:00:00Z",
        "2024-01-01T00:00:00+02:00",
        "2024-01-01T00:00:00-0500",
        "2024-01-01 00:00",
        "2024-01-01",
    ] {
        assert_eq!(parse_ts(s), Some(base), "{s}");
    }
    assert_eq!(parse_ts("01/02/2024"), None);
}

#[test]
fn quoted_fields_a_byte_order_mark_and_crlf_line_ends_are_read() {
    let csv =
        "\u{feff}\"timestamp\",\"value\"\r\n\"2026-01-01 00:00:00\",\"3\"\r\n\r\n2026-01-01T01:00:00,4\r\n";
    let (kind, rows, warnings) = parse_str(csv, KindChoice::Auto).expect("parses");
    assert_eq!(kind, Kind::Count);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].line, 4);
    assert_eq!(rows[0].value, 3.0);
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn repeated_backward_and_missing_timestamps_are_judged_in_order_with_a_warning_each() {
    let dir = TempDir::new("order");
    let csv = "timestamp,value\n\
               2026-03-29 00:00:00,10\n\
               2026-03-29 01:00:00,11\n\
               2026-03-29 01:00:00,12\n\
               2026-03-29 00:30:00,9\n\
               2026-03-29 02:00:00,10\n\
               2026-03-29 09:00:00,10\n\
               2026-03-29 10:00:00,12\n";
    let (summary, out) = detect(&dir, "order", csv, KindChoice::Auto);
    assert_eq!(out.len(), 8, "a header and one line per row: {out:?}");
    assert_eq!(summary.rows, 7);
    let kinds: Vec<(usize, WarningKind)> = summary.warnings.iter().map(|w| (w.line, w.kind)).collect();
    assert_eq!(
        kinds,
        vec![
            (4, WarningKind::RepeatedTimestamp),
            (5, WarningKind::BackwardTimestamp),
            (7, WarningKind::Gap),
        ]
    );
    assert!(summary.warnings[1]
        .to_string()
        .starts_with("line 5: timestamp 2026-03-29 00:30:00"));
    // Output rows keep the input's order and timestamps.
    assert!(out[4].starts_with("2026-03-29 00:30:00,9,"), "{}", out[4]);
}

#[test]
fn auto_kind_judges_whole_numbers_as_counts_and_switches_to_a_gauge_at_the_first_value_that_is_not() {
    let dir = TempDir::new("auto");
    let mut csv = String::from("timestamp,value\n");
    for i in 0..48 {
        csv.push_str(&format!(
            "2026-01-{:02} {:02}:00:00,{}\n",
            1 + i / 24,
            i % 24,
            100 + i % 7
        ));
    }
    let (counts, _) = detect(&dir, "counts", &csv, KindChoice::Auto);
    assert_eq!(counts.kind, Kind::Count);
    assert!(counts.warnings.is_empty());
    csv.push_str("2026-01-03 00:00:00,-2.5\n2026-01-03 01:00:00,101\n");
    let (mixed, out) = detect(&dir, "mixed", &csv, KindChoice::Auto);
    assert_eq!(mixed.kind, Kind::Gauge);
    assert_eq!(mixed.warnings.len(), 1);
    assert_eq!(
        (mixed.warnings[0].line, mixed.warnings[0].kind),
        (50, WarningKind::NotACount)
    );
    assert_eq!(out.len(), 51);
    // Under a fixed count kind the negative value is missing, not an error.
    let (fixed, _) = detect(&dir, "fixed", &csv, KindChoice::Fixed(Kind::Count));
    assert_eq!(fixed.kind, Kind::Count);
    assert_eq!(fixed.warnings[0].kind, WarningKind::NegativeCount);
}

#[test]
fn a_value_an_export_marks_as_none_is_missing_with_a_warning_and_leaves_a_count_a_count() {
    let dir = TempDir::new("markers");
    let mut csv = String::from("timestamp,value\n");
    let markers = ["", "NaN", "NA", "null", "None", "inf", "-Infinity"];
    for i in 0..48usize {
        let value = match markers.get(i.wrapping_sub(10)) {
            Some(m) => (*m).to_owned(),
            None => (100 + i % 7).to_string(),
        };
        csv.push_str(&format!(
            "2026-01-{:02} {:02}:00:00,{value}\n",
            1 + i / 24,
            i % 24
        ));
    }
    let (summary, out) = detect(&dir, "markers", &csv, KindChoice::Auto);
    // Before, an empty value switched `--kind auto` to a gauge ("value NaN is not a whole
    // number"), and `NaN` was an error.
    assert_eq!(summary.kind, Kind::Count, "{:?}", summary.warnings);
    assert_eq!(out.len(), 49);
    let missing: Vec<usize> = summary
        .warnings
        .iter()
        .filter(|w| w.kind == WarningKind::MissingValue)
        .map(|w| w.line)
        .collect();
    assert_eq!(missing, (12..19).collect::<Vec<_>>(), "{:?}", summary.warnings);
    assert_eq!(summary.warnings.len(), markers.len(), "{:?}", summary.warnings);
    assert!(
        summary.warnings[1].message.contains("\"NaN\""),
        "{}",
        summary.warnings[1]
    );
    // A ratio's numerator or denominator too.
    let (_, rows, warnings) = parse_str(
        "timestamp,numerator,denominator\n2026-01-01 00:00:00,NULL,10\n2026-01-01 01:00:00,9,10\n",
        KindChoice::Auto,
    )
    .expect("parses");
    assert!(rows[0].value.is_nan() && rows[1].value == 9.0);
    assert_eq!((warnings.len(), warnings[0].line), (1, 2));
}

#[test]
fn unix_seconds_and_milliseconds_are_timestamps_but_other_digit_runs_are_not() {
    let base = parse_ts("2024-01-01 00:00:00").expect("plain");
    assert_eq!(parse_ts("1704067200"), Some(base));
    assert_eq!(parse_ts("1704067200.75"), Some(base));
    assert_eq!(parse_ts("1704067200000"), Some(base));
    assert_eq!(parse_ts("1704067200999"), Some(base));
    for s in [
        "20240101",
        "17040672",
        "170406720000000",
        "1704067200000.5",
        "1704067200.x",
        "-1704067200",
    ] {
        assert_eq!(parse_ts(s), None, "{s}");
    }
}

#[test]
fn a_huge_value_in_a_warning_is_written_short() {
    assert_eq!(show(-1e308), "-1e308");
    assert_eq!(show(2.5), "2.5");
    assert_eq!(show(0.0), "0");
}

#[test]
fn whole_numbers_much_tighter_than_event_counts_are_judged_as_a_gauge() {
    let dir = TempDir::new("tight");
    let mut csv = String::from("timestamp,value\n");
    // A speed of about 60 that moves by at most 2 between readings: no Poisson count.
    for i in 0..400 {
        let v = 60 + [0, 1, 2, 1, 0, -1, -2, -1][i % 8];
        csv.push_str(&format!(
            "2026-01-{:02} {:02}:{:02}:00,{v}\n",
            1 + i / 288,
            (i % 288) / 12,
            (i % 12) * 5
        ));
    }
    let (summary, _) = detect(&dir, "tight", &csv, KindChoice::Auto);
    assert_eq!(summary.kind, Kind::Gauge);
    assert_eq!(summary.warnings[0].line, DISPERSION_CHECK_ROWS + 1);
}

#[test]
fn additive_or_summed_whole_numbers_are_gauges_and_noisier_counts_stay_counts() {
    // splitmix64 normals: enough for a test series.
    let mut state = 7_u64;
    let mut normal = move || {
        let mut uniform = || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64 + 1e-12
        };
        let (u, v) = (uniform(), uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    };
    let day = |i: usize| (i as f64 / 288.0 * std::f64::consts::TAU).sin();
    let series = |value: &mut dyn FnMut(usize) -> f64| {
        let mut csv = String::from("timestamp,value\n");
        for i in 0..400 {
            csv.push_str(&format!(
                "2026-01-{:02} {:02}:{:02}:00,{}\n",
                1 + i / 288,
                (i % 288) / 12,
                (i % 12) * 5,
                value(i).round().max(0.0)
            ));
        }
        csv
    };
    let dir = TempDir::new("additive");
    // A travel time in seconds: a daily cycle from 200 to 1,800 under noise of 60 at every level.
    let travel = series(&mut |i| 1000.0 + 800.0 * day(i) + 60.0 * normal());
    let (summary, _) = detect(&dir, "travel", &travel, KindChoice::Auto);
    assert_eq!(summary.kind, Kind::Gauge);
    assert_eq!(summary.warnings[0].line, DISPERSION_CHECK_ROWS + 1);
    // Poisson counts from 5 to 50 an interval, and busy counts with 5 % extra noise.
    let poisson = series(&mut |i| {
        let mean = 27.5 + 22.5 * day(i);
        mean + mean.sqrt() * normal()
    });
    let (summary, _) = detect(&dir, "poisson", &poisson, KindChoice::Auto);
    assert_eq!(summary.kind, Kind::Count, "{:?}", summary.warnings);
    let busy = series(&mut |i| {
        let mean = 15_000.0 * (1.0 + 0.7 * day(i)) * (0.05 * normal()).exp();
        mean + mean.sqrt() * normal()
    });
    let (summary, _) = detect(&dir, "busy", &busy, KindChoice::Auto);
    assert_eq!(summary.kind, Kind::Count, "{:?}", summary.warnings);
    // Revenue in cents: a Poisson number of orders (4 to 36 an interval) of about 50 ± 20
    // dollars each. Its variance grows like its mean, as a count's does, but thousands of times
    // over: judged as a count, its quiet nights were paged on (93 flagged rows in 24 weeks of
    // such series without an incident, 3 as a gauge).
    let revenue = series(&mut |i| {
        let mean = 20.0 + 16.0 * day(i);
        let orders = (mean + mean.sqrt() * normal()).round().max(0.0) as usize;
        (0..orders).map(|_| (5000.0 + 2000.0 * normal()).max(100.0)).sum()
    });
    let (summary, _) = detect(&dir, "revenue", &revenue, KindChoice::Auto);
    assert_eq!(summary.kind, Kind::Gauge, "{:?}", summary.warnings);
    assert_eq!(summary.warnings[0].line, DISPERSION_CHECK_ROWS + 1);
    assert!(
        summary.warnings[0].message.contains("sums of amounts"),
        "{:?}",
        summary.warnings
    );
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
        "timestamp,value\n\"2026-01-01 00:00:00,1\n",
        "timestamp\n",
        "timestamp,value,extra\n",
    ];
    for input in inputs {
        let _ = parse_str(input, KindChoice::Auto);
        let _ = parse_str(input, KindChoice::Fixed(Kind::Gauge));
    }
}

#[test]
fn the_output_for_a_row_depends_only_on_rows_up_to_it() {
    let dir = TempDir::new("online");
    let mut csv = String::from("timestamp,value\n");
    for i in 0..(24 * 12) {
        let v = 100 + (i * 37) % 23 + if i == 250 { 400 } else { 0 };
        csv.push_str(&format!("2026-01-{:02} {:02}:00:00,{v}\n", 1 + i / 24, i % 24));
    }
    let lines: Vec<&str> = csv.lines().collect();
    let (_, full) = detect(&dir, "full", &lines.join("\n"), KindChoice::Auto);
    let (_, cut) = detect(&dir, "cut", &lines[..=260].join("\n"), KindChoice::Auto);
    assert_eq!(cut, full[..=260].to_vec());
    assert!(full[251].ends_with(",1"), "the spike is flagged: {}", full[251]);
}

#[test]
fn intervals_parse_and_are_inferred_from_the_most_common_gap() {
    assert_eq!(parse_interval("5m").ok(), Some(300));
    assert_eq!(parse_interval("1h").ok(), Some(3600));
    assert!(parse_interval("0m").is_err());
    assert!(parse_interval("fast").is_err());
    let (_, rows, _) = parse_str(
        "timestamp,value\n2026-01-01 00:00:00,1\n2026-01-01 00:05:00,1\n2026-01-01 00:20:00,1\n2026-01-01 00:25:00,1\n",
        KindChoice::Auto,
    )
    .expect("parses");
    assert_eq!(infer_interval(&rows), 300);
}
