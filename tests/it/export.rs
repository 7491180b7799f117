//! Exports: `GET /api/kpis/{id}/series?format=csv` (every build), and `kpiwatch export` to
//! Parquet and CSV (with the `export` feature: `cargo test --features export --test it
//! export`), the Parquet read back by pyarrow in the CI venv against docs/EXPORT.md and the
//! notebooks executed on it.

use chrono::Duration;
use kpiwatch::clock::ManualClock;

use crate::e2e::{build_full, t0, Shop};
use crate::helpers::{init_logs, request, SmtpServer};

/// A shop with two weeks of orders and one hour without any, judged by the service.
async fn judged_shop(dir: &std::path::Path) -> kpiwatch::app::Application {
    let smtp = SmtpServer::start();
    let mut shop = Shop::create(&dir.join("shop.db")).await;
    shop.traffic(t0() - Duration::days(14), t0() - Duration::hours(3))
        .await;
    shop.traffic(t0() - Duration::hours(2), t0()).await;
    let clock = ManualClock::new(t0() + Duration::minutes(1));
    let app = build_full(dir, &smtp, &clock, "", &[]).await;
    app.scheduler().run_due().await;
    app
}

#[tokio::test]
async fn the_series_endpoint_answers_csv_with_the_documented_columns() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let app = judged_shop(dir.path()).await;
    let from = (t0() - Duration::hours(4)).to_rfc3339();
    let uri = format!(
        "/api/kpis/orders/series?from={}&to={}&format=csv",
        urlencode(&from),
        urlencode(&t0().to_rfc3339())
    );
    let (status, text) = request(&app, "GET", &uri, None, "").await;
    assert_eq!(status, 200, "{text}");
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let head: Vec<String> = reader
        .headers()
        .expect("head")
        .iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        head,
        [
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
            "status"
        ]
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("row")).collect();
    assert_eq!(rows.len(), 48, "4 hours of 5-minute buckets");
    // The hour without orders is there, as zeros, flagged.
    let zero_flagged = rows
        .iter()
        .filter(|r| r[4].parse::<f64>() == Ok(0.0) && &r[11] == "true")
        .count();
    assert!(zero_flagged >= 1, "{text}");
    assert!(rows.iter().all(|r| &r[0] == "orders" && &r[1] == "{}"));
    let (status, body) = request(&app, "GET", "/api/kpis/orders/series?format=xml", None, "").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("format"), "{body}");
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

#[cfg(feature = "export")]
#[tokio::test]
async fn kpiwatch_export_writes_parquet_that_pyarrow_reads_with_the_documented_schema() {
    init_logs();
    let Some(venv) = crate::helpers::server_url("TEST_PYTHON_VENV") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let app = judged_shop(dir.path()).await;
    let series = app.store().series_of("orders").await.expect("series");
    let (from, to) = (t0() - Duration::days(2), t0());
    let stored = app
        .store()
        .observations(series[0].id, from.timestamp(), to.timestamp())
        .await
        .expect("observations")
        .len();
    drop(app);
    crate::helpers::write_orders_model(dir.path());
    let out_dir = dir.path().join("export");
    for format in ["parquet", "csv"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kpiwatch"))
            .current_dir(dir.path())
            .env(
                "KPIWATCH_STATE__URL",
                format!("sqlite://{}", dir.path().join("state.db").display()),
            )
            .env(
                "KPIWATCH_SOURCES__SHOP__URL",
                format!("sqlite://{}", dir.path().join("shop.db").display()),
            )
            .args(["export", "--kpi", "orders", "--format", format, "--from"])
            .arg(from.to_rfc3339())
            .arg("--to")
            .arg(to.to_rfc3339())
            .arg("--out")
            .arg(&out_dir)
            .output()
            .expect("runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains(&format!("orders: {stored} rows")), "{stdout}");
    }
    let csv_rows = csv::Reader::from_path(out_dir.join("orders.csv"))
        .expect("csv")
        .records()
        .count();
    assert_eq!(csv_rows, stored);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = std::path::Path::new(&venv).join("bin/python");
    let check = std::process::Command::new(&python)
        .arg(root.join("tests/it/read_export.py"))
        .arg(root.join("docs/EXPORT.md"))
        .arg(out_dir.join("orders.parquet"))
        .arg(stored.to_string())
        .output()
        .expect("the venv's python runs");
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert_eq!(said.trim(), format!("ok {stored}"));

    // `TEST_NOTEBOOK_SAMPLE=notebooks/data` keeps this export as the notebooks' sample.
    if let Ok(keep) = std::env::var("TEST_NOTEBOOK_SAMPLE") {
        std::fs::create_dir_all(&keep).expect("sample folder");
        std::fs::copy(
            out_dir.join("orders.parquet"),
            std::path::Path::new(&keep).join("orders.parquet"),
        )
        .expect("copy the sample");
    }
    // The notebooks run on this fresh export too, not only on their committed sample.
    let run = std::process::Command::new(&python)
        .arg(root.join("notebooks/run_notebooks.py"))
        .arg(&out_dir)
        .output()
        .expect("the venv's python runs");
    let said = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(said.contains("ok sensitivity_budget.ipynb"), "{said}");
}
