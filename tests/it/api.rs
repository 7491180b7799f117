//! The HTTP API's write side: bearer tokens and roles, registering and tuning KPIs (through a
//! real SQLite source), hostile input that must change nothing, and the audit log.

use axum::http::StatusCode;
use chrono::Duration;
use kpiwatch::api::hash_token;
use kpiwatch::clock::ManualClock;

use crate::e2e::{build_full, t0, Shop};
use crate::helpers::{init_logs, SmtpServer};

async fn call(
    app: &kpiwatch::app::Application,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, serde_json::Value) {
    crate::helpers::request_json(app, method, uri, token, body).await
}

fn tokens_env() -> Vec<(&'static str, String)> {
    let t = |name: &str, role: &str, token: &str| {
        format!(
            "{{name = \"{name}\", role = \"{role}\", sha256 = \"{}\"}}",
            hash_token(token)
        )
    };
    vec![
        (
            "KPIWATCH_API__TOKENS",
            format!(
                "[{}, {}, {}]",
                t("vera", "viewer", "view-token"),
                t("ed", "editor", "edit-token"),
                t("ada", "admin", "admin-token")
            ),
        ),
        ("KPIWATCH_SCHEDULER__BACKFILL", "14d".to_owned()),
    ]
}

const NEW_KPI: &str = r#"{
    "id": "orders_hourly",
    "title": "Orders per hour",
    "source": "shop",
    "kind": "count",
    "interval": "1h",
    "direction": "down",
    "sensitivity": "low",
    "labels": {"team": "checkout"},
    "query": "SELECT ts, n AS value FROM order_counts WHERE ts >= :start AND ts < :end"
}"#;

#[tokio::test]
async fn kpis_are_registered_tuned_and_retired_by_editors_and_audited() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = SmtpServer::start();
    let mut shop = Shop::create(&dir.path().join("shop.db")).await;
    shop.traffic(t0() - Duration::days(14), t0()).await;
    let clock = ManualClock::new(t0() + Duration::minutes(1));
    let env = tokens_env();
    let app = build_full(dir.path(), &smtp, &clock, "", &env).await;

    // Tokens and roles.
    assert_eq!(
        call(&app, "GET", "/api/kpis", None, "").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&app, "GET", "/api/kpis", Some("nope"), "").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&app, "GET", "/api/kpis", Some("view-token"), "").await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&app, "POST", "/api/kpis", Some("view-token"), NEW_KPI)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&app, "GET", "/healthz", None, "").await.0,
        StatusCode::OK,
        "health needs no token"
    );

    // Hostile or broken registrations: a clear 4xx, and nothing changes.
    let bad = |patch: &str| NEW_KPI.replacen("\"direction\": \"down\",", patch, 1);
    for (body, status) in [
        (
            bad("\"direction\": \"down\", \"admin\": true,"),
            StatusCode::BAD_REQUEST,
        ),
        (
            NEW_KPI.replace("orders_hourly", "Orders; DROP TABLE kpis"),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            NEW_KPI.replace("\"1h\"", "\"7m\""),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            NEW_KPI.replace("\"shop\"", "\"elsewhere\""),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            NEW_KPI.replace("n AS value", "n AS amount"),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            NEW_KPI.replace(
                "SELECT ts, n AS value FROM order_counts",
                "DELETE FROM order_counts",
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            NEW_KPI.replace(
                "n AS value",
                &format!("n AS value, '{}' AS pad", "x".repeat(300_000)),
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        ("{".to_owned(), StatusCode::BAD_REQUEST),
        // serde would read a struct from an array of its fields; no schema allows it.
        ("[null, null, null, null]".to_owned(), StatusCode::BAD_REQUEST),
    ] {
        let (got, answer) = call(&app, "POST", "/api/kpis", Some("edit-token"), &body).await;
        assert_eq!(got, status, "{answer}");
    }
    let (got, answer) = call(
        &app,
        "POST",
        "/api/kpis/orders/backtest",
        Some("edit-token"),
        "[null, null, null, null]",
    )
    .await;
    assert_eq!(got, StatusCode::BAD_REQUEST, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("JSON object")),
        "{answer}"
    );
    let (_, wrong) = call(
        &app,
        "POST",
        "/api/kpis/test-query",
        Some("edit-token"),
        &NEW_KPI.replace("n AS value", "n AS amount"),
    )
    .await;
    assert!(
        wrong["error"].as_str().is_some_and(|e| e.contains("`value`")),
        "{wrong}"
    );
    let (_, kpis) = call(&app, "GET", "/api/kpis", Some("view-token"), "").await;
    assert_eq!(
        kpis.as_array().map(Vec::len),
        Some(1),
        "nothing was registered: {kpis}"
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM order_counts")
        .fetch_one(&shop.pool)
        .await
        .expect("count");
    assert!(left > 0, "the source is untouched");

    // A draft can be backtested before it is saved (its source is queried fresh).
    let draft = format!(r#"{{"kpi": {NEW_KPI}, "weeks": 1}}"#);
    let (status, bt) = call(&app, "POST", "/api/kpis/backtest", Some("edit-token"), &draft).await;
    assert_eq!(status, StatusCode::OK, "{bt}");
    assert_eq!(bt["alerts_per_week"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        call(&app, "POST", "/api/kpis/backtest", Some("view-token"), &draft)
            .await
            .0,
        StatusCode::FORBIDDEN,
        "a backtest is a POST: editors only"
    );

    // Test the query, then register.
    let (status, preview) = call(&app, "POST", "/api/kpis/test-query", Some("edit-token"), NEW_KPI).await;
    assert_eq!(status, StatusCode::OK, "{preview}");
    assert_eq!(preview["series"], 1);
    assert!(preview["total_rows"].as_u64().is_some_and(|n| n > 0), "{preview}");
    let (status, created) = call(&app, "POST", "/api/kpis", Some("edit-token"), NEW_KPI).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["status"], "pending");
    assert_eq!(
        call(&app, "POST", "/api/kpis", Some("edit-token"), NEW_KPI)
            .await
            .0,
        StatusCode::CONFLICT
    );

    // The scheduler backfills it on its next pass.
    app.scheduler().run_due().await;
    let (_, kpis) = call(&app, "GET", "/api/kpis", Some("view-token"), "").await;
    let hourly = kpis
        .as_array()
        .and_then(|k| k.iter().find(|k| k["id"] == "orders_hourly"))
        .expect("registered")
        .clone();
    assert_eq!(hourly["status"], "ok", "{hourly}");
    assert_eq!(hourly["origin"], "api");

    // Tune it; files are read-only through the API.
    let (status, tuned) = call(
        &app,
        "PATCH",
        "/api/kpis/orders_hourly",
        Some("edit-token"),
        r#"{"sensitivity": 0.8, "owner": "ana"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{tuned}");
    assert_eq!(tuned["sensitivity"], 0.8);
    assert_eq!(tuned["owner"], "ana");
    let (status, _) = call(
        &app,
        "PATCH",
        "/api/kpis/orders_hourly",
        Some("edit-token"),
        r#"{"sensitivity": 7}"#,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, answer) = call(
        &app,
        "PATCH",
        "/api/kpis/orders",
        Some("edit-token"),
        r#"{"sensitivity": 0.8}"#,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");

    // It survives a restart.
    drop(app);
    let app = build_full(dir.path(), &smtp, &clock, "", &env).await;
    let (_, kpis) = call(&app, "GET", "/api/kpis", Some("view-token"), "").await;
    assert!(kpis.to_string().contains("\"sensitivity\":0.8"), "{kpis}");

    // Retire it: gone from the list, history kept.
    assert_eq!(
        call(&app, "DELETE", "/api/kpis/orders_hourly", Some("edit-token"), "")
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    let (_, kpis) = call(&app, "GET", "/api/kpis", Some("view-token"), "").await;
    assert!(!kpis.to_string().contains("orders_hourly"));
    assert!(!app
        .store()
        .series_of("orders_hourly")
        .await
        .expect("series")
        .is_empty());

    // Every write is in the audit log, which only admins read.
    assert_eq!(
        call(&app, "GET", "/api/audit", Some("edit-token"), "").await.0,
        StatusCode::FORBIDDEN
    );
    let (_, audit) = call(&app, "GET", "/api/audit", Some("admin-token"), "").await;
    let actions: Vec<String> = audit
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            format!(
                "{} {} {}",
                e["actor"].as_str().unwrap_or(""),
                e["action"].as_str().unwrap_or(""),
                e["target"].as_str().unwrap_or("")
            )
        })
        .collect();
    for want in [
        "ed kpi.register orders_hourly",
        "ed kpi.update orders_hourly",
        "ed kpi.retire orders_hourly",
    ] {
        assert!(actions.iter().any(|a| a == want), "{want} missing in {actions:?}");
    }
}

#[tokio::test]
async fn tokens_made_with_the_cli_and_the_api_are_hashed_shown_once_audited_and_revocable() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = SmtpServer::start();
    let _shop = Shop::create(&dir.path().join("shop.db")).await;
    let state = format!("sqlite://{}", dir.path().join("state.db").display());
    let config = dir.path().join("kpiwatch.toml");
    std::fs::write(&config, format!("[state]\nurl = {state:?}\n")).expect("config");

    // The first admin token comes from the CLI, on the same state store.
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kpiwatch"))
            .arg("--config")
            .arg(&config)
            .arg("token")
            .args(args)
            .output()
            .expect("kpiwatch token runs")
    };
    let out = cli(&["create", "--name", "ops", "--role", "admin"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let ops = stdout.lines().last().expect("the token").trim().to_owned();
    assert!(ops.starts_with("kpw_") && ops.len() == 52, "{stdout}");
    assert_eq!(
        cli(&["create", "--name", "ops", "--role", "viewer"])
            .status
            .code(),
        Some(2),
        "one active token per name"
    );

    let clock = ManualClock::new(t0());
    let app = build_full(
        dir.path(),
        &smtp,
        &clock,
        "",
        &[("KPIWATCH_STATE__URL", state.clone())],
    )
    .await;
    // A token in the store closes the API, as one in the config would.
    assert_eq!(
        call(&app, "GET", "/api/kpis", None, "").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&app, "GET", "/api/kpis", Some(&ops), "").await.0,
        StatusCode::OK
    );

    let (status, made) = call(
        &app,
        "POST",
        "/api/tokens",
        Some(&ops),
        r#"{"name": "grafana", "role": "viewer"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let viewer = made["token"].as_str().expect("shown once").to_owned();
    assert_eq!(
        (
            made["name"].clone(),
            made["role"].clone(),
            made["created_by"].clone()
        ),
        ("grafana".into(), "viewer".into(), "ops".into())
    );
    assert_eq!(
        call(&app, "GET", "/api/kpis", Some(&viewer), "").await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(
            &app,
            "POST",
            "/api/tokens",
            Some(&viewer),
            r#"{"name": "x", "role": "admin"}"#
        )
        .await
        .0,
        StatusCode::FORBIDDEN,
        "a viewer makes no tokens"
    );
    assert_eq!(
        call(&app, "GET", "/api/tokens", Some(&viewer), "").await.0,
        StatusCode::FORBIDDEN,
        "nor lists them"
    );
    let (status, list) = call(&app, "GET", "/api/tokens", Some(&ops), "").await;
    assert_eq!(status, StatusCode::OK);
    let text = list.to_string();
    assert!(
        !text.contains(&viewer) && !text.contains(&ops),
        "tokens are never shown again: {text}"
    );
    assert!(!text.contains(&hash_token(&ops)), "nor their hashes: {text}");
    let listed = list.as_array().expect("list");
    assert_eq!(listed.len(), 2);
    let ops_row = listed.iter().find(|t| t["name"] == "ops").expect("ops");
    assert!(
        ops_row["last_used_at"].is_string(),
        "last use is recorded: {ops_row}"
    );
    assert_eq!(ops_row["created_by"], "cli");

    let id = made["id"].as_i64().expect("id");
    assert_eq!(
        call(&app, "DELETE", &format!("/api/tokens/{id}"), Some(&ops), "")
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&app, "GET", "/api/kpis", Some(&viewer), "").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&app, "DELETE", &format!("/api/tokens/{id}"), Some(&ops), "")
            .await
            .0,
        StatusCode::NOT_FOUND
    );

    let (_, audit) = call(&app, "GET", "/api/audit", Some(&ops), "").await;
    let actions: Vec<(String, String)> = audit
        .as_array()
        .expect("audit")
        .iter()
        .map(|a| {
            (
                a["actor"].as_str().unwrap_or("").to_owned(),
                a["action"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    for want in [
        ("cli", "token.create"),
        ("ops", "token.create"),
        ("ops", "token.revoke"),
    ] {
        assert!(
            actions.contains(&(want.0.to_owned(), want.1.to_owned())),
            "{want:?} in {actions:?}"
        );
    }
    let listed = String::from_utf8_lossy(&cli(&["list"]).stdout).into_owned();
    assert!(listed.contains("grafana") && listed.contains("ops"), "{listed}");
    let out = cli(&["revoke", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // With every token revoked the API is open again, as with none configured.
    assert_eq!(call(&app, "GET", "/api/kpis", None, "").await.0, StatusCode::OK);
}
