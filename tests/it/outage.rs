//! A 15-minute outage of a 1-minute count KPI on the service path: the scheduler driven minute
//! by minute with a manual clock, a SQLite shop and a SQLite state store. Every empty minute
//! is flagged, the outage is one incident that fires once and resolves once after the orders
//! come back.

use std::path::Path;

use chrono::{DateTime, Duration, Utc};
use kpiwatch::app::Application;
use kpiwatch::clock::ManualClock;
use kpiwatch::kpi::KpiSpec;
use kpiwatch::pipeline::RunOutcome;
use sqlx::{Executor, SqlitePool};

use crate::helpers::{init_logs, SmtpServer};

/// The shop's 1-minute orders KPI.
const MODEL: &str = crate::helpers::ONE_MINUTE_ORDERS_MODEL;
const QUERY: &str = "SELECT ts, n AS value FROM orders_min WHERE ts >= :start AND ts < :end";

/// Minutes of the outage.
const OUTAGE_MINUTES: i64 = 15;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("rfc3339")
        .with_timezone(&Utc)
}

/// Orders in the minute starting at `t` (the kill test's shop): 40 to 60, about 50.
fn orders(t: DateTime<Utc>) -> i64 {
    40 + ((t.timestamp() / 60) * 7919) % 21
}

/// A shop with `days` of orders per minute before `outage`, none for [`OUTAGE_MINUTES`], then
/// orders again for an hour.
async fn shop(dir: &Path, outage: DateTime<Utc>, days: i64) -> SqlitePool {
    let pool = SqlitePool::connect(&format!("sqlite://{}?mode=rwc", dir.join("shop.db").display()))
        .await
        .expect("shop");
    pool.execute("CREATE TABLE orders_min (ts TEXT PRIMARY KEY, n INTEGER NOT NULL)")
        .await
        .expect("table");
    let back = outage + Duration::minutes(OUTAGE_MINUTES);
    let mut tx = pool.begin().await.expect("tx");
    let mut t = outage - Duration::days(days);
    while t < back + Duration::hours(1) {
        let n = if t >= outage && t < back { 0 } else { orders(t) };
        sqlx::query("INSERT INTO orders_min VALUES (?, ?)")
            .bind(t.format("%Y-%m-%d %H:%M:%S").to_string())
            .bind(n)
            .execute(&mut *tx)
            .await
            .expect("insert");
        t += Duration::minutes(1);
    }
    tx.commit().await.expect("commit");
    pool
}

async fn app(
    dir: &Path,
    state_dir: &Path,
    smtp: &SmtpServer,
    clock: &ManualClock,
    env: &[(&str, String)],
) -> Application {
    let spec = KpiSpec::parse("orders", MODEL, QUERY, Path::new("models/orders")).expect("model");
    let mut env = env.to_vec();
    env.push((
        "KPIWATCH_SOURCES__SHOP__URL",
        format!("sqlite://{}", dir.join("shop.db").display()),
    ));
    Application::build(
        crate::helpers::settings(state_dir, Some(smtp.port), &env),
        vec![spec],
        kpiwatch::app::BuildOptions {
            clock: std::sync::Arc::new(clock.clone()),
            extra_sources: None,
        },
    )
    .await
    .expect("app builds")
}

/// One pass of each application at the clock's time; every run succeeds.
async fn pass(apps: &[&Application]) {
    for app in apps {
        for (id, result) in app.scheduler().run_due().await {
            let outcome = result.unwrap_or_else(|e| panic!("{id} failed: {e}"));
            assert!(
                !matches!(outcome, RunOutcome::QueryError(_) | RunOutcome::DataMissing(_)),
                "{outcome:?}"
            );
        }
    }
}

/// The outage's verdicts, incidents and messages, as the state store has them.
async fn assert_one_incident(app: &Application, outage: DateTime<Utc>, smtp: &SmtpServer) {
    let store = app.store();
    let series = store.series_of("orders").await.expect("series");
    let judged = store
        .evaluations(series[0].id, (outage - Duration::hours(2)).timestamp(), i64::MAX)
        .await
        .expect("evaluations");
    let flagged: Vec<i64> = judged
        .iter()
        .filter(|e| e.anomaly)
        .map(|e| (e.ts - outage.timestamp()) / 60)
        .collect();
    assert_eq!(
        flagged,
        (0..OUTAGE_MINUTES).collect::<Vec<_>>(),
        "exactly the empty minutes are flagged (minutes after the outage began)"
    );
    let mut alerts = store.alerts(false, 10).await.expect("alerts");
    alerts.reverse();
    let anomaly: Vec<_> = alerts.iter().filter(|a| a.kind == "anomaly").collect();
    assert_eq!(
        anomaly
            .iter()
            .map(|a| (a.state.as_str(), a.started_ts))
            .collect::<Vec<_>>(),
        vec![("resolved", outage.timestamp())],
        "one incident, from the first empty minute, resolved: {alerts:?}"
    );
    let subjects: Vec<String> = smtp.received().iter().map(|m| m.subject()).collect();
    assert_eq!(subjects.len(), 2, "{subjects:?}");
    assert!(subjects[0].contains("dropped to 0"), "{subjects:?}");
    assert!(subjects[1].to_lowercase().contains("resolved"), "{subjects:?}");
}

async fn outage_run(first_look_after: i64, processes: usize) {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let outage = utc("2026-03-30T09:00:00Z");
    let shop = shop(dir.path(), outage, 3).await;
    let smtp = SmtpServer::start();
    let clock = ManualClock::new(outage + Duration::minutes(first_look_after) + Duration::seconds(5));
    let env = [
        ("KPIWATCH_SCHEDULER__BACKFILL", "3d".to_owned()),
        ("KPIWATCH_SCHEDULER__HISTORY", "3d".to_owned()),
        (
            "KPIWATCH_STATE__URL",
            format!("sqlite://{}", dir.path().join("state.db").display()),
        ),
    ];
    let mut apps = Vec::new();
    for _ in 0..processes {
        apps.push(app(dir.path(), dir.path(), &smtp, &clock, &env).await);
    }
    let mut turn = 0;
    while clock_now(&clock) < outage + Duration::minutes(OUTAGE_MINUTES + 15) {
        // With several processes, they take turns (another process took the KPI over).
        pass(&[&apps[turn % apps.len()]]).await;
        turn += 1;
        clock.advance(Duration::minutes(1));
    }
    assert_one_incident(&apps[0], outage, &smtp).await;
    shop.close().await;
}

fn clock_now(clock: &ManualClock) -> DateTime<Utc> {
    use kpiwatch::clock::Clock;
    clock.now()
}

#[tokio::test]
async fn a_15_minute_outage_of_a_1_minute_kpi_is_one_incident_flagged_throughout() {
    outage_run(-10, 1).await;
}

#[tokio::test]
async fn an_outage_under_way_at_the_first_look_is_one_incident_flagged_throughout() {
    outage_run(3, 1).await;
}

#[tokio::test]
async fn an_outage_seen_by_processes_taking_turns_is_one_incident_flagged_throughout() {
    outage_run(3, 2).await;
}
