//! Retention: a 1-minute KPI run for 60 simulated days keeps its store within the configured
//! windows, and pruning never takes what the detector replays.

use std::path::Path;

use chrono::{DateTime, Duration, Utc};
use kpiwatch::clock::ManualClock;
use kpiwatch::kpi::KpiSpec;
use kpiwatch::pipeline::RunOutcome;
use sqlx::Executor;

use crate::helpers::init_logs;

const MODEL: &str = r#"
title = "Orders per minute"
source = "shop"
kind = "count"
interval = "1m"
delay = "1m"
"#;
const QUERY: &str = "SELECT ts, n AS value FROM ticks WHERE ts >= :start AND ts < :end";
const DAYS: i64 = 60;

fn start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-05T00:00:00Z")
        .expect("valid")
        .with_timezone(&Utc)
}

async fn count(pool: &sqlx::SqlitePool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.expect(sql)
}

#[tokio::test]
async fn sixty_days_of_a_one_minute_kpi_stay_within_the_retention_windows() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    // The shop: one row a minute for the whole span.
    let shop_url = format!("sqlite://{}?mode=rwc", dir.path().join("shop.db").display());
    let shop = sqlx::SqlitePool::connect(&shop_url).await.expect("shop");
    shop.execute("CREATE TABLE ticks (ts TEXT NOT NULL, n INTEGER NOT NULL)")
        .await
        .expect("table");
    let minutes = (DAYS + 3) * 1440;
    sqlx::query(
        "WITH RECURSIVE m(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM m WHERE i < $1)
         INSERT INTO ticks SELECT datetime($2 + i * 60, 'unixepoch'), 100 + (i * 7919) % 23 FROM m",
    )
    .bind(minutes)
    .bind(start().timestamp())
    .execute(&shop)
    .await
    .expect("rows");

    let spec = KpiSpec::parse("ticks", MODEL, QUERY, Path::new("models/ticks")).expect("model");
    let clock = ManualClock::new(start() + Duration::days(2) + Duration::minutes(2));
    let env = [
        ("KPIWATCH_SCHEDULER__BACKFILL", "2d".to_owned()),
        ("KPIWATCH_SCHEDULER__HISTORY", "2d".to_owned()),
        ("KPIWATCH_RETENTION__OBSERVATIONS", "3d".to_owned()),
        ("KPIWATCH_RETENTION__EVALUATIONS", "3d".to_owned()),
        ("KPIWATCH_RETENTION__RUNS", "10d".to_owned()),
        ("KPIWATCH_RETENTION__EVERY", "1h".to_owned()),
    ];
    let app = crate::e2e::build_specs(dir.path(), None, &clock, vec![spec], &env).await;
    for _ in 0..=DAYS {
        let results = app.scheduler().run_due().await;
        assert!(
            matches!(results[0].1, Ok(RunOutcome::Ok { judged, .. }) if judged >= 1440),
            "{results:?}"
        );
        clock.advance(Duration::days(1));
    }

    let state = sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.path().join("state.db").display()))
        .await
        .expect("state");
    let observations = count(&state, "SELECT count(*) FROM observations").await;
    let evaluations = count(&state, "SELECT count(*) FROM evaluations").await;
    let runs = count(&state, "SELECT count(*) FROM runs").await;
    // Three days are kept (plus the day fetched since the last prune, and the overlap);
    // never fewer than the two days the detector replays.
    for (name, n) in [("observations", observations), ("evaluations", evaluations)] {
        assert!(
            (2 * 1440..=4 * 1440 + 10).contains(&n),
            "{name}: {n} rows after {DAYS} days"
        );
    }
    assert!((10..=12).contains(&runs), "{runs} runs");
    let oldest: i64 = count(&state, "SELECT min(ts) FROM observations").await;
    let now = kpiwatch::clock::Clock::now(&clock).timestamp();
    assert!(now - oldest <= 4 * 86_400, "oldest bucket {} s old", now - oldest);
    let bytes = std::fs::metadata(dir.path().join("state.db")).map_or(0, |m| m.len());
    println!("state store after {DAYS} days: {observations} observations, {evaluations} evaluations, {runs} runs, {bytes} bytes");
}
