//! Backtests through the API and the CLI, on history the service stored.

use axum::http::StatusCode;
use chrono::Duration;
use kpiwatch::clock::ManualClock;

use crate::e2e::{build_full, t0, Shop};
use crate::helpers::{init_logs, SmtpServer};

async fn post(app: &kpiwatch::app::Application, uri: &str, body: &str) -> (StatusCode, serde_json::Value) {
    crate::helpers::request_json(app, "POST", uri, None, body).await
}

#[tokio::test]
async fn a_backtest_reports_the_alerts_a_setting_would_have_fired_per_week() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = SmtpServer::start();
    let mut shop = Shop::create(&dir.path().join("shop.db")).await;
    // Six weeks, with no orders for an hour ten days ago.
    let outage = t0() - Duration::days(10);
    shop.traffic(t0() - Duration::days(42), outage).await;
    shop.traffic(outage + Duration::hours(1), t0()).await;
    let clock = ManualClock::new(t0() + Duration::minutes(1));
    let env = [
        ("KPIWATCH_SCHEDULER__BACKFILL", "42d".to_owned()),
        ("KPIWATCH_SCHEDULER__HISTORY", "42d".to_owned()),
    ];
    let app = build_full(dir.path(), &smtp, &clock, "", &env).await;
    app.scheduler().run_due().await;

    let (status, high) = post(
        &app,
        "/api/kpis/orders/backtest",
        r#"{"weeks": 2, "sensitivity": "high"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{high}");
    assert_eq!(high["alerts_per_week"].as_array().map(Vec::len), Some(2));
    let alerts = high["alerts"].as_array().expect("alerts");
    assert!(
        alerts.iter().any(|a| a["started"]
            .as_str()
            .is_some_and(|s| s.starts_with(&outage.format("%Y-%m-%dT%H").to_string()))),
        "the outage would have alerted: {alerts:?}"
    );
    let (_, low) = post(
        &app,
        "/api/kpis/orders/backtest",
        r#"{"weeks": 2, "sensitivity": 0.1}"#,
    )
    .await;
    let n = |v: &serde_json::Value| v["flags"].as_array().map_or(0, Vec::len);
    assert!(n(&low) <= n(&high), "lower sensitivity never flags more");
    assert!(n(&low) >= 1, "even low catches a total outage");

    for (bad, status) in [
        (r#"{"weeks": 0}"#, StatusCode::BAD_REQUEST),
        (r#"{"sensitivity": 2}"#, StatusCode::BAD_REQUEST),
        (r#"{"sensitivity": "loud"}"#, StatusCode::BAD_REQUEST),
        (r#"{"weeks": 2, "drop_table": true}"#, StatusCode::BAD_REQUEST),
        ("not json", StatusCode::BAD_REQUEST),
    ] {
        assert_eq!(
            post(&app, "/api/kpis/orders/backtest", bad).await.0,
            status,
            "{bad}"
        );
    }
    assert_eq!(
        post(&app, "/api/kpis/nope/backtest", "{}").await.0,
        StatusCode::NOT_FOUND
    );

    // The CLI answers the same question from the same store.
    drop(app);
    crate::helpers::write_orders_model(dir.path());
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
        .args([
            "backtest",
            "orders",
            "--weeks",
            "2",
            "--sensitivity",
            "high",
            "--until",
        ])
        .arg(t0().to_rfc3339())
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("alerts per week"), "{stdout}");
    assert!(
        stdout.contains(&outage.format("%Y-%m-%d %H").to_string()),
        "the outage is listed:\n{stdout}"
    );
}

/// The API's backtest replays with the service's own settings and what people told it: the
/// configured `scheduler.recovery_buckets` decide when a would-be alert resolves, and an
/// outage marked "not an anomaly" no longer alerts.
#[tokio::test]
async fn the_api_backtest_honours_the_configured_recovery_and_recorded_feedback() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = SmtpServer::start();
    let mut shop = Shop::create(&dir.path().join("shop.db")).await;
    // Six weeks, with no orders for an hour ten days ago.
    let outage = t0() - Duration::days(10);
    let back = outage + Duration::hours(1);
    shop.traffic(t0() - Duration::days(42), outage).await;
    shop.traffic(back, t0()).await;
    let clock = ManualClock::new(t0() + Duration::minutes(1));
    let env = [
        ("KPIWATCH_SCHEDULER__BACKFILL", "42d".to_owned()),
        ("KPIWATCH_SCHEDULER__HISTORY", "42d".to_owned()),
        ("KPIWATCH_SCHEDULER__RECOVERY_BUCKETS", "12".to_owned()),
    ];
    let app = build_full(dir.path(), &smtp, &clock, "", &env).await;
    app.scheduler().run_due().await;

    let secs = |v: &serde_json::Value| {
        v.as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.timestamp())
    };
    let in_outage =
        |ts: Option<i64>| ts.is_some_and(|ts| (outage.timestamp()..back.timestamp()).contains(&ts));
    let body = r#"{"weeks": 2, "sensitivity": "medium"}"#;
    let (status, before) = post(&app, "/api/kpis/orders/backtest", body).await;
    assert_eq!(status, StatusCode::OK, "{before}");
    let alerts = before["alerts"].as_array().expect("alerts");
    let outage_alert = alerts
        .iter()
        .find(|a| in_outage(secs(&a["started"])))
        .unwrap_or_else(|| panic!("the outage would have alerted: {alerts:?}"));
    // Twelve in-band buckets after the orders came back, not the default three.
    let resolved = secs(&outage_alert["resolved"]).expect("resolved");
    assert!(
        resolved >= (back + Duration::minutes(55)).timestamp(),
        "resolved at {resolved}, back at {back}: {outage_alert}"
    );

    // Someone marks the outage's anomalies "not an anomaly" (planned, say).
    let since = outage.to_rfc3339().replace('+', "%2B");
    let (status, anomalies) = crate::helpers::request_json(
        &app,
        "GET",
        &format!("/api/anomalies?kpi=orders&since={since}&limit=1000"),
        None,
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{anomalies}");
    let marked: Vec<(i64, i64)> = anomalies
        .as_array()
        .expect("anomalies")
        .iter()
        .filter_map(|a| Some((a["id"].as_i64()?, secs(&a["ts"])?)))
        .filter(|(_, ts)| in_outage(Some(*ts)))
        .collect();
    assert!(!marked.is_empty(), "the service flagged the outage: {anomalies}");
    for (id, _) in &marked {
        let (status, body) = post(
            &app,
            &format!("/api/anomalies/{id}/feedback"),
            r#"{"kind": "not_anomaly", "comment": "planned"}"#,
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    }
    let (status, after) = post(&app, "/api/kpis/orders/backtest", body).await;
    assert_eq!(status, StatusCode::OK, "{after}");
    let alerts = after["alerts"].as_array().expect("alerts");
    assert!(
        !alerts.iter().any(|a| in_outage(secs(&a["started"]))),
        "the marked outage no longer alerts: {alerts:?}"
    );
    let flags = after["flags"].as_array().expect("flags");
    assert!(
        !flags
            .iter()
            .any(|f| marked.iter().any(|(_, ts)| secs(&f["ts"]) == Some(*ts))),
        "no marked bucket is flagged: {flags:?}"
    );
}

/// An alert budget and injected incidents, through the API and the CLI, on stored history.
#[tokio::test]
async fn a_budget_picks_a_sensitivity_and_injected_drops_report_what_each_setting_catches() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = SmtpServer::start();
    let mut shop = Shop::create(&dir.path().join("shop.db")).await;
    shop.traffic(t0() - Duration::days(28), t0()).await;
    let clock = ManualClock::new(t0() + Duration::minutes(1));
    let env = [
        ("KPIWATCH_SCHEDULER__BACKFILL", "28d".to_owned()),
        ("KPIWATCH_SCHEDULER__HISTORY", "28d".to_owned()),
    ];
    let app = build_full(dir.path(), &smtp, &clock, "", &env).await;
    app.scheduler().run_due().await;

    let (status, r) = post(
        &app,
        "/api/kpis/orders/backtest",
        r#"{"weeks": 2, "budget": "1/week",
            "inject": [{"drop_percent": 20, "duration": "30m", "at": "busy"},
                       {"drop_percent": 5, "duration": "30m", "at": "quiet"}]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    let budget = &r["budget"];
    assert_eq!(budget["budget_per_week"], 1.0);
    let chosen = &budget["chosen"];
    assert!(
        chosen["alerts_per_week"].as_f64().expect("rate") <= 1.0,
        "{budget}"
    );
    match budget["next"].as_object() {
        Some(next) => assert!(next["alerts_per_week"].as_f64().expect("rate") > 1.0, "{budget}"),
        None => assert_eq!(
            chosen["sensitivity"], 0.95,
            "only the top of the grid has no next"
        ),
    }
    assert_eq!(budget["curve"].as_array().map(Vec::len), Some(19));
    let replay = r["replay"].as_array().expect("replay");
    let medium = replay
        .iter()
        .find(|s| {
            s["names"]
                .as_array()
                .is_some_and(|n| n.iter().any(|x| x == "medium"))
        })
        .expect("medium is reported");
    let busy = &medium["incidents"][0];
    assert_eq!(busy["incident"], "-20%:30m@busy");
    assert_eq!(busy["caught"], true, "{medium}");
    let delay = busy["delay_secs"].as_i64().expect("delay");
    assert!((300..=1800).contains(&delay), "{delay}");
    assert!(
        replay.iter().any(|s| s["names"]
            .as_array()
            .is_some_and(|n| n.iter().any(|x| x == "budget"))),
        "the budget's pick is replayed too: {replay:?}"
    );
    for (bad, status) in [
        (r#"{"budget": "often"}"#, StatusCode::BAD_REQUEST),
        (
            r#"{"inject": [{"drop_percent": 20, "duration": "forever", "at": "busy"}]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            r#"{"inject": [{"drop_percent": 20, "duration": "30m", "at": "noon"}]}"#,
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (got, body) = post(&app, "/api/kpis/orders/backtest", bad).await;
        assert_eq!(got, status, "{bad}: {body}");
    }

    drop(app);
    crate::helpers::write_orders_model(dir.path());
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
        .args([
            "backtest",
            "orders",
            "--weeks",
            "2",
            "--budget",
            "1/week",
            "--inject",
            "-20%:30m@busy",
            "--until",
        ])
        .arg(t0().to_rfc3339())
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pick = format!(
        "alert budget 1/week: sensitivity {:.2}",
        chosen["sensitivity"].as_f64().expect("s")
    );
    assert!(stdout.contains(&pick), "{pick}\n{stdout}");
    assert!(stdout.contains("← budget"), "{stdout}");
    assert!(stdout.contains("-20%:30m@busy"), "{stdout}");
    assert!(stdout.contains("after "), "{stdout}");
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_kpiwatch"))
        .current_dir(dir.path())
        .args(["backtest", "orders", "--inject", "-20%@busy"])
        .output()
        .expect("runs");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("-20%:30m@busy"));
}
