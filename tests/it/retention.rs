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

/// The shop: `shop.db` in `dir`, one row a minute for `minutes` from [`start`].
async fn ticks_shop(dir: &Path, minutes: i64) {
    let shop_url = format!("sqlite://{}?mode=rwc", dir.join("shop.db").display());
    let shop = sqlx::SqlitePool::connect(&shop_url).await.expect("shop");
    shop.execute("CREATE TABLE ticks (ts TEXT NOT NULL, n INTEGER NOT NULL)")
        .await
        .expect("table");
    sqlx::query(
        "WITH RECURSIVE m(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM m WHERE i < $1)
         INSERT INTO ticks SELECT datetime($2 + i * 60, 'unixepoch'), 100 + (i * 7919) % 23 FROM m",
    )
    .bind(minutes)
    .bind(start().timestamp())
    .execute(&shop)
    .await
    .expect("rows");
}

async fn count(pool: &sqlx::SqlitePool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.expect(sql)
}

#[tokio::test]
async fn sixty_days_of_a_one_minute_kpi_stay_within_the_retention_windows() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    ticks_shop(dir.path(), (DAYS + 3) * 1440).await;
    let spec = KpiSpec::parse("ticks", MODEL, QUERY, Path::new("models/ticks")).expect("model");
    let clock = ManualClock::new(start() + Duration::days(2) + Duration::minutes(2));
    let env = [
        ("KPIWATCH_SCHEDULER__BACKFILL", "2d".to_owned()),
        ("KPIWATCH_SCHEDULER__HISTORY", "2d".to_owned()),
        // The replay starts exactly `history` back, so observations are kept 2 + 1 days.
        ("KPIWATCH_SCHEDULER__HISTORY_SLACK", "0s".to_owned()),
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

/// A backfill does not write verdicts that `retention.evaluations` would prune at once: a
/// 2-day backfill with verdicts kept 6 hours stores every observation but only the last 6
/// hours of verdicts, and still judges (and replays) all of it.
#[tokio::test]
async fn a_backfill_writes_no_verdict_older_than_the_evaluations_retention() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    ticks_shop(dir.path(), 3 * 1440).await;
    let spec = KpiSpec::parse("ticks", MODEL, QUERY, Path::new("models/ticks")).expect("model");
    let clock = ManualClock::new(start() + Duration::days(2) + Duration::minutes(2));
    let env = [
        ("KPIWATCH_SCHEDULER__BACKFILL", "2d".to_owned()),
        ("KPIWATCH_SCHEDULER__HISTORY", "2d".to_owned()),
        ("KPIWATCH_RETENTION__EVALUATIONS", "6h".to_owned()),
    ];
    let app = crate::e2e::build_specs(dir.path(), None, &clock, vec![spec], &env).await;
    // Another process holds the retention lease: nothing is pruned after the run, so what is
    // in the store is what the run wrote.
    assert!(app
        .store()
        .try_lease("retention", "elsewhere", 3600)
        .await
        .expect("lease"));
    let results = app.scheduler().run_due().await;
    assert!(
        matches!(results[0].1, Ok(RunOutcome::Ok { judged, .. }) if judged >= 2 * 1440),
        "the whole backfill is judged: {results:?}"
    );
    let state = sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.path().join("state.db").display()))
        .await
        .expect("state");
    let observations = count(&state, "SELECT count(*) FROM observations").await;
    let evaluations = count(&state, "SELECT count(*) FROM evaluations").await;
    assert!(observations >= 2 * 1440, "{observations} observations");
    assert!(
        (6 * 60 - 2..=6 * 60 + 2).contains(&evaluations),
        "{evaluations} verdicts stored"
    );
    let newest: i64 = count(&state, "SELECT max(ts) FROM evaluations").await;
    let oldest: i64 = count(&state, "SELECT min(ts) FROM evaluations").await;
    assert!(newest - oldest <= 6 * 3600, "verdicts span {} s", newest - oldest);
    assert_eq!(
        newest,
        count(&state, "SELECT max(ts) FROM observations").await,
        "the newest bucket has its verdict"
    );
}

/// Incidents: every fourth simulated day, the 20 minutes before that day's run have no rows.
fn incident_day(day: i64) -> bool {
    day % 4 == 2
}

/// Rows per table of one KPI (observations and evaluations of its series, its runs,
/// anomalies, and the notifications of its alerts).
async fn kpi_rows(pool: &sqlx::PgPool, kpi: &str) -> [(&'static str, i64); 5] {
    let one = |sql: &'static str| async move {
        let n: i64 = sqlx::query_scalar(sql)
            .bind(kpi)
            .fetch_one(pool)
            .await
            .expect(sql);
        n
    };
    [
        (
            "observations",
            one(
                "SELECT count(*) FROM observations o JOIN series s ON s.id = o.series_id WHERE s.kpi_id = $1",
            )
            .await,
        ),
        (
            "evaluations",
            one("SELECT count(*) FROM evaluations e JOIN series s ON s.id = e.series_id WHERE s.kpi_id = $1")
                .await,
        ),
        ("runs", one("SELECT count(*) FROM runs WHERE kpi_id = $1").await),
        (
            "anomalies",
            one("SELECT count(*) FROM anomalies x JOIN series s ON s.id = x.series_id WHERE s.kpi_id = $1")
                .await,
        ),
        (
            "notifications",
            one(
                "SELECT count(*) FROM notifications n JOIN alerts a ON a.id = n.alert_id WHERE a.kpi_id = $1",
            )
            .await,
        ),
    ]
}

/// The bound documented in the README ("Retention"): after 60 simulated days a 1-minute KPI
/// holds at most `retention + every` of each kind of row (observations at least
/// `scheduler.history` + `history_slack` + 1 day), counted in its buckets, runs or messages.
/// Observations and evaluations keep the defaults (35 days); runs, anomalies and
/// notifications are kept 20, 30 and 20 days here (defaults 90, 400, 90) so that their
/// pruning happens within 60 days.
/// The state store is PostgreSQL, whose table sizes give the bytes per row the README quotes.
#[tokio::test]
async fn sixty_days_of_a_one_minute_kpi_with_incidents_stay_under_the_documented_bound_on_postgres() {
    init_logs();
    let Some(admin) = crate::helpers::server_url("TEST_POSTGRES_URL") else {
        return;
    };
    let db = crate::helpers::PgDatabase::create(&admin).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let shop_url = format!("sqlite://{}?mode=rwc", dir.path().join("shop.db").display());
    let shop = sqlx::SqlitePool::connect(&shop_url).await.expect("shop");
    shop.execute("CREATE TABLE ticks (ts TEXT NOT NULL, n INTEGER NOT NULL)")
        .await
        .expect("table");
    const BACKFILL_DAYS: i64 = 7;
    let minutes = (BACKFILL_DAYS + DAYS + 2) * 1440;
    sqlx::query(
        "WITH RECURSIVE m(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM m WHERE i < $1)
         INSERT INTO ticks SELECT datetime($2 + i * 60, 'unixepoch'), 100 + (i * 7919) % 23 FROM m",
    )
    .bind(minutes)
    .bind(start().timestamp())
    .execute(&shop)
    .await
    .expect("rows");
    // Day k's run happens at `run_at(k)`; its newest bucket ends a minute before (the delay).
    let run_at = |k: i64| start() + Duration::days(BACKFILL_DAYS + k) + Duration::minutes(2);
    for k in (1..=DAYS).filter(|k| incident_day(*k)) {
        let end = run_at(k) - Duration::minutes(1);
        sqlx::query("UPDATE ticks SET n = 0 WHERE ts >= $1 AND ts < $2")
            .bind(
                (end - Duration::minutes(20))
                    .format("%Y-%m-%d %H:%M:%S")
                    .to_string(),
            )
            .bind(end.format("%Y-%m-%d %H:%M:%S").to_string())
            .execute(&shop)
            .await
            .expect("outage");
    }

    let spec = KpiSpec::parse("ticks", MODEL, QUERY, Path::new("models/ticks")).expect("model");
    let clock = ManualClock::new(run_at(0));
    let env = [
        ("KPIWATCH_STATE__URL", db.url.clone()),
        ("KPIWATCH_SCHEDULER__BACKFILL", format!("{BACKFILL_DAYS}d")),
        ("KPIWATCH_SCHEDULER__HISTORY", format!("{BACKFILL_DAYS}d")),
        ("KPIWATCH_RETENTION__RUNS", "20d".to_owned()),
        ("KPIWATCH_RETENTION__ANOMALIES", "30d".to_owned()),
        ("KPIWATCH_RETENTION__NOTIFICATIONS", "20d".to_owned()),
    ];
    let app = crate::e2e::build_specs(dir.path(), None, &clock, vec![spec], &env).await;
    let state = sqlx::PgPool::connect(&db.url).await.expect("state");
    // The outbox stamps its rows with the wall clock; here they get the simulated time, as
    // they would in production where the two agree.
    let wall_start = Utc::now().timestamp() - 1;
    let restamp = |now: DateTime<Utc>| {
        let state = state.clone();
        async move {
            sqlx::query("UPDATE notifications SET created_at = $1 WHERE created_at >= $2")
                .bind(now.timestamp())
                .bind(wall_start)
                .execute(&state)
                .await
                .expect("restamp");
        }
    };
    let mut fired = 0;
    for k in 0..=DAYS {
        clock.set(run_at(k));
        let results = app.scheduler().run_due().await;
        assert!(
            matches!(results[0].1, Ok(RunOutcome::Ok { .. })),
            "day {k}: {results:?}"
        );
        if matches!(results[0].1, Ok(RunOutcome::Ok { alerts_opened: 1, .. })) {
            fired += 1;
        }
        restamp(run_at(k)).await;
        if incident_day(k) {
            // Orders are back: a run 90 minutes later resolves the incident.
            clock.set(run_at(k) + Duration::minutes(90));
            let results = app.scheduler().run_due().await;
            assert!(
                matches!(results[0].1, Ok(RunOutcome::Ok { .. })),
                "day {k}: {results:?}"
            );
            restamp(run_at(k) + Duration::minutes(90)).await;
        }
    }
    let incidents = (1..=DAYS).filter(|k| incident_day(*k)).count();
    assert_eq!(fired, incidents, "each outage fired one alert");
    let open: i64 =
        sqlx::query_scalar("SELECT count(*) FROM alerts WHERE state NOT IN ('resolved', 'cancelled')")
            .fetch_one(&state)
            .await
            .expect("open");
    assert_eq!(open, 0, "every incident resolved");

    let now = run_at(DAYS) + Duration::minutes(90 * i64::from(incident_day(DAYS)));
    let day = 1440;
    let hour = 60;
    // (table, retention in minutes of rows, rows per minute of retention)
    let bounds = [
        ("observations", 35 * day + hour, 1.0),
        ("evaluations", 35 * day + hour, 1.0),
        // At most two runs a day here (one per day, one more on incident days).
        ("runs", 20 * day + hour, 2.0 / day as f64),
        // One incident every four days: its 20 empty minutes are all flagged, and on two days
        // of the 60 a stretch around the same minutes of the day before is flagged too (not
        // explained yet): at most 30 flagged minutes per incident.
        ("anomalies", 30 * day + hour, 30.0 / (4 * day) as f64),
        // Two messages (firing, resolved) per incident.
        ("notifications", 20 * day + hour, 2.0 / (4 * day) as f64),
    ];
    let rows = kpi_rows(&state, "ticks").await;
    let mut report = Vec::new();
    for ((name, n), (bound_name, minutes, per_minute)) in rows.iter().zip(bounds) {
        assert_eq!(*name, bound_name);
        let bound = (minutes as f64 * per_minute).ceil() as i64 + 2;
        assert!(*n <= bound, "{name}: {n} rows after {DAYS} days, bound {bound}");
        let bytes: i64 = sqlx::query_scalar(&format!("SELECT pg_total_relation_size('{name}')"))
            .fetch_one(&state)
            .await
            .expect("size");
        report.push(format!(
            "{name}: {n} rows (bound {bound}), {bytes} bytes, {} B/row",
            bytes / (*n).max(1)
        ));
    }
    // Pruning took only what was past its retention.
    let (observations, evaluations) = (rows[0].1, rows[1].1);
    assert!(observations >= 34 * day && evaluations >= 34 * day, "{rows:?}");
    let oldest_message: i64 = sqlx::query_scalar("SELECT min(created_at) FROM notifications")
        .fetch_one(&state)
        .await
        .expect("oldest");
    assert!(
        now.timestamp() - oldest_message <= 20 * 86_400 + 3600,
        "{oldest_message}"
    );
    assert!(
        rows[4].1 > 0 && rows[4].1 < 2 * incidents as i64,
        "some messages pruned, recent kept: {rows:?}"
    );
    let total: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
        .fetch_one(&state)
        .await
        .expect("db size");
    println!(
        "after {DAYS} simulated days on PostgreSQL ({total} bytes in all):\n  {}",
        report.join("\n  ")
    );
    state.close().await;
    drop(app);
    db.drop_db().await;
}
