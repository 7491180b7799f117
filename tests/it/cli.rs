//! The binary's commands as a user runs them.

use std::process::Command;

fn kpiwatch() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kpiwatch"))
}

#[test]
fn check_lists_every_problem_of_a_broken_model_with_file_and_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("models/bad_kpi");
    std::fs::create_dir_all(&bad).expect("mkdir");
    std::fs::write(
        bad.join("model.toml"),
        "source = \"shop\"\nkind = \"counter\"\ninterval = \"7m\"\nsensitivity = 2\n",
    )
    .expect("write");
    std::fs::write(bad.join("query.sql"), "DELETE FROM orders").expect("write");
    let out = kpiwatch()
        .current_dir(dir.path())
        .args(["check", "--models", "models"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "models/bad_kpi/model.toml: kind",
        "interval",
        "sensitivity",
        "models/bad_kpi/query.sql",
    ] {
        assert!(stderr.contains(needle), "{needle} missing in:\n{stderr}");
    }
}

#[test]
fn check_runs_each_query_and_reports_a_down_source_in_its_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let out = kpiwatch()
        .current_dir(dir.path())
        .env(
            "KPIWATCH_SOURCES__SHOP__URL",
            "postgres://u:topsecret@127.0.0.1:9/shop",
        )
        .env("KPIWATCH_SOURCES__SHOP__STATEMENT_TIMEOUT", "1s")
        .args(["check", "--models"])
        .arg(&models)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("payment_success_rate") && stdout.contains("FAIL"),
        "{stdout}"
    );
    assert!(stdout.contains("unreachable"), "{stdout}");
    assert!(
        !stdout.contains("topsecret"),
        "credentials must not leak:\n{stdout}"
    );
}

#[test]
fn detect_names_the_bad_line_of_its_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.csv");
    std::fs::write(
        &input,
        "timestamp,value\n2026-03-02 00:00:00,5\n2026-03-02 00:05:00,five\n",
    )
    .expect("write");
    let out = kpiwatch()
        .args(["detect", "--input"])
        .arg(&input)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 3"), "{stderr}");
}

#[test]
fn detect_writes_one_row_per_input_row_in_the_contract_columns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.csv");
    let output = dir.path().join("out.csv");
    let mut csv = String::from("timestamp,value\n");
    for i in 0..(14 * 24) {
        let t = chrono::DateTime::from_timestamp(1_772_409_600 + i * 3600, 0).expect("valid");
        let v = if i == 14 * 24 - 1 { 0 } else { 100 + (i % 24) * 5 };
        csv.push_str(&format!("{},{v}\n", t.format("%Y-%m-%d %H:%M:%S")));
    }
    std::fs::write(&input, csv).expect("write");
    let status = kpiwatch()
        .args(["detect", "--direction", "down", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .status()
        .expect("runs");
    assert!(status.success());
    let text = std::fs::read_to_string(&output).expect("output");
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("timestamp,value,expected,lower,upper,score,anomaly")
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 14 * 24);
    assert!(
        rows.last().is_some_and(|r| r.ends_with(",1")),
        "a drop to 0 is flagged: {:?}",
        rows.last()
    );
    assert!(
        rows[..rows.len() - 1].iter().all(|r| r.ends_with(",0")),
        "a clean series stays quiet"
    );
}

/// `kpiwatch demo` as the README tells a newcomer to run it (with a shorter history and an
/// earlier failure): the injected payment failure pages, and the daily digests it sends on the
/// way (due at once with `digest.time = 00:00`) report every KPI from the backfilled history —
/// a digest sent before the startup backfill had stored anything said "missing data" for all.
#[test]
fn the_demo_pages_on_the_payment_failure_and_its_digests_see_the_backfilled_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let demo = dir.path().join("demo");
    let out = kpiwatch()
        .current_dir(dir.path())
        .env("KPIWATCH_DIGEST__TIME", "00:00")
        .env("RUST_LOG", "warn")
        .args(["demo", "--dir"])
        .arg(&demo)
        .args([
            "--port",
            "0",
            "--history-days",
            "10",
            "--fail-after",
            "5",
            "--exit-after-alert",
            "--timeout",
            "400",
        ])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the demo failed ({:?}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("kpiwatch caught it after"), "{stdout}");

    let mut subjects = Vec::new();
    for entry in std::fs::read_dir(demo.join("outbox")).expect("the outbox exists") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("eml") {
            continue;
        }
        let raw = std::fs::read(&path).expect("read eml");
        let subject = mail_parser::MessageParser::default()
            .parse(&raw)
            .and_then(|m| m.subject().map(str::to_owned))
            .unwrap_or_default();
        subjects.push(subject);
    }
    assert!(
        subjects
            .iter()
            .any(|s| s.contains("Payment success rate") && !s.contains("digest")),
        "no alert about the payment success rate in the outbox: {subjects:#?}"
    );
    let digests: Vec<&String> = subjects.iter().filter(|s| s.contains("daily digest")).collect();
    assert!(!digests.is_empty(), "no digest in the outbox: {subjects:#?}");
    for digest in digests {
        assert!(
            !digest.contains("missing data"),
            "a digest reported missing data: {digest}"
        );
    }
}
