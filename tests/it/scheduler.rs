//! The scheduler loop (`run_until_cancelled`) does not wait for a slow run: a KPI whose
//! source takes longer than a tick (PostgreSQL `pg_sleep`) delays no other KPI's next run,
//! is never run twice at once, and a run in flight at shutdown finishes.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use chrono::{Duration, DurationRound, Utc};
use kpiwatch::app::{Application, BuildOptions};
use kpiwatch::clock::ManualClock;
use kpiwatch::kpi::KpiSpec;
use sqlx::{Executor, PgPool, SqlitePool};
use tokio_util::sync::CancellationToken;

use crate::helpers::{init_logs, server_url, settings, PgDatabase};

/// How long each run of the slow KPI's query sleeps.
const SLOW_SECS: u64 = 5;

/// How many of the slow KPI's queries are running. The watcher's and the test's own queries
/// name `pg_sleep` too and run on other connections of the same pool: excluding only this
/// backend counted one of them as a slow run in flight (the test cancelled the scheduler
/// before the run it meant to wait for had started).
const SLEEPING: &str = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
     AND state = 'active' AND query LIKE '%pg_sleep(%' AND query NOT LIKE '%pg_stat_activity%'";

fn model(source: &str) -> String {
    format!("source = \"{source}\"\nkind = \"count\"\ninterval = \"1m\"\ndelay = \"0s\"\n")
}

/// The fetched-until of a KPI, as the state store has it.
async fn fetched_until(app: &Application, id: &str) -> Option<i64> {
    app.store()
        .kpi(id)
        .await
        .expect("kpi")
        .and_then(|k| k.fetched_until)
}

/// Poll `check` every 50 ms until it holds; panics after `limit`.
async fn wait_for(what: &str, limit: StdDuration, mut check: impl AsyncFnMut() -> bool) -> StdDuration {
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
    started.elapsed()
}

/// The application on a SQLite state store in `dir`, with `specs`, `clock` and `env`.
async fn app_at(dir: &Path, specs: Vec<KpiSpec>, clock: ManualClock, env: &[(&str, String)]) -> Application {
    Application::build(
        settings(dir, None, env),
        specs,
        BuildOptions {
            clock: Arc::new(clock),
            extra_sources: None,
        },
    )
    .await
    .expect("app builds")
}

/// `shop.db` in `dir`: a SQLite source with a tick of 50 every minute from `first` to `last`.
async fn sqlite_ticks(dir: &Path, first: chrono::DateTime<Utc>, last: chrono::DateTime<Utc>) {
    let shop = SqlitePool::connect(&format!("sqlite://{}?mode=rwc", dir.join("shop.db").display()))
        .await
        .expect("shop");
    shop.execute("CREATE TABLE ticks (ts TEXT PRIMARY KEY, n INTEGER NOT NULL)")
        .await
        .expect("table");
    let mut t = first;
    while t < last {
        sqlx::query("INSERT INTO ticks VALUES (?, 50)")
            .bind(t.format("%Y-%m-%d %H:%M:%S").to_string())
            .execute(&shop)
            .await
            .expect("row");
        t += Duration::minutes(1);
    }
    shop.close().await;
}

/// A PostgreSQL source with two hours of per-minute ticks up to `minute`, and one KPI per id on
/// it (source `slow`) whose query sleeps `secs` first.
async fn sleeping_source(
    admin: &str,
    minute: chrono::DateTime<Utc>,
    ids: &[&str],
    secs: u64,
) -> (PgDatabase, PgPool, Vec<KpiSpec>) {
    let db = PgDatabase::create(admin).await;
    let pool = PgPool::connect(&db.url).await.expect("db");
    pool.execute("CREATE TABLE ticks (ts TIMESTAMPTZ PRIMARY KEY, n INTEGER NOT NULL)")
        .await
        .expect("table");
    sqlx::query(
        "INSERT INTO ticks SELECT t, 50 FROM generate_series($1::timestamptz, $2::timestamptz, interval '1 minute') t",
    )
    .bind(minute - Duration::hours(2))
    .bind(minute)
    .execute(&pool)
    .await
    .expect("rows");
    let specs = ids
        .iter()
        .map(|id| {
            KpiSpec::parse(
                id,
                &model("slow"),
                &format!(
                    "WITH pause AS (SELECT pg_sleep({secs}) AS slept)
                     SELECT t.ts, t.n AS value FROM ticks t, pause WHERE t.ts >= :start AND t.ts < :end"
                ),
                &Path::new("models").join(id),
            )
            .expect("model")
        })
        .collect();
    (db, pool, specs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_source_does_not_delay_the_next_pass_and_its_kpi_never_runs_twice_at_once() {
    init_logs();
    let Some(admin) = server_url("TEST_POSTGRES_URL") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let minute = Utc::now().duration_trunc(Duration::minutes(1)).expect("minute");
    let first = minute - Duration::hours(3);
    let last = minute + Duration::hours(1);

    // The fast KPI's rows in SQLite, the slow one's in PostgreSQL behind a sleeping query.
    sqlite_ticks(dir.path(), first, last).await;
    let slow_db = PgDatabase::create(&admin).await;
    let slow = PgPool::connect(&slow_db.url).await.expect("slow db");
    slow.execute("CREATE TABLE ticks (ts TIMESTAMPTZ PRIMARY KEY, n INTEGER NOT NULL)")
        .await
        .expect("table");
    sqlx::query(
        "INSERT INTO ticks SELECT t, 50 FROM generate_series($1::timestamptz, $2::timestamptz, interval '1 minute') t",
    )
    .bind(first)
    .bind(last)
    .execute(&slow)
    .await
    .expect("rows");

    let specs = vec![
        KpiSpec::parse(
            "fast",
            &model("shop"),
            "SELECT ts, n AS value FROM ticks WHERE ts >= :start AND ts < :end",
            Path::new("models/fast"),
        )
        .expect("model"),
        KpiSpec::parse(
            "slow",
            &model("slow"),
            &format!(
                "WITH pause AS (SELECT pg_sleep({SLOW_SECS}) AS slept)
                 SELECT t.ts, t.n AS value FROM ticks t, pause WHERE t.ts >= :start AND t.ts < :end"
            ),
            Path::new("models/slow"),
        )
        .expect("model"),
    ];
    let clock = ManualClock::new(minute + Duration::seconds(5));
    let env = [
        (
            "KPIWATCH_SOURCES__SHOP__URL",
            format!("sqlite://{}", dir.path().join("shop.db").display()),
        ),
        ("KPIWATCH_SOURCES__SLOW__URL", slow_db.url.clone()),
        ("KPIWATCH_SCHEDULER__BACKFILL", "2h".to_owned()),
        ("KPIWATCH_SCHEDULER__HISTORY", "2h".to_owned()),
        ("KPIWATCH_SCHEDULER__TICK", "1s".to_owned()),
    ];
    let app = app_at(dir.path(), specs, clock.clone(), &env).await;

    // Watch the slow source: how many of its sleeping queries run at once, at most.
    let stop = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicI64::new(0));
    let watcher = {
        let (stop, most, slow) = (Arc::clone(&stop), Arc::clone(&most), slow.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let n: i64 = sqlx::query_scalar(SLEEPING).fetch_one(&slow).await.unwrap_or(0);
                most.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(StdDuration::from_millis(50)).await;
            }
        })
    };
    let in_flight = |slow: PgPool| async move {
        sqlx::query_scalar::<_, i64>(SLEEPING)
            .fetch_one(&slow)
            .await
            .unwrap_or(0)
    };

    let token = CancellationToken::new();
    let scheduler = tokio::spawn(app.scheduler().clone().run_until_cancelled(token.clone()));
    let m = |k: i64| Some((minute + Duration::minutes(k)).timestamp());

    // The first pass starts both; the fast KPI is done long before the slow query wakes.
    wait_for(
        "the fast KPI's first run",
        StdDuration::from_secs(10),
        async || fetched_until(&app, "fast").await == m(0),
    )
    .await;
    assert_eq!(
        fetched_until(&app, "slow").await,
        None,
        "the slow run is still asleep"
    );
    // A minute later the next pass runs the fast KPI again at once; the slow one, still in
    // flight, is not started a second time.
    clock.advance(Duration::minutes(1));
    let took = wait_for(
        "the fast KPI's second run",
        StdDuration::from_secs(4),
        async || fetched_until(&app, "fast").await == m(1),
    )
    .await;
    assert_eq!(
        fetched_until(&app, "slow").await,
        None,
        "the fast KPI ran again {took:?} after the clock moved, while the slow run was in flight"
    );
    // The slow run ends; the next pass runs it for the new minute.
    wait_for(
        "the slow KPI's second run",
        StdDuration::from_secs(3 * SLOW_SECS + 10),
        async || fetched_until(&app, "slow").await == m(1),
    )
    .await;

    // Shutdown while a slow run is in flight: the scheduler lets it finish.
    clock.advance(Duration::minutes(1));
    wait_for("a slow run in flight", StdDuration::from_secs(5), async || {
        in_flight(slow.clone()).await == 1
    })
    .await;
    token.cancel();
    tokio::time::timeout(StdDuration::from_secs(2 * SLOW_SECS + 10), scheduler)
        .await
        .expect("the scheduler stops once its runs end")
        .expect("scheduler task");
    assert_eq!(
        fetched_until(&app, "slow").await,
        m(2),
        "the run in flight at shutdown finished"
    );
    stop.store(true, Ordering::SeqCst);
    watcher.await.expect("watcher");
    assert_eq!(
        most.load(Ordering::SeqCst),
        1,
        "the slow KPI never ran twice at once"
    );
    slow.close().await;
    slow_db.drop_db().await;
}

/// A stop during a pass whose runs queue for the concurrency slots (a startup backfill of many
/// KPIs) waits only for the runs already running: the queued ones do not start, and the next
/// process runs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_does_not_wait_for_the_runs_still_queued_for_a_slot() {
    init_logs();
    let Some(admin) = server_url("TEST_POSTGRES_URL") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let minute = Utc::now().duration_trunc(Duration::minutes(1)).expect("minute");
    let ids = ["q1", "q2", "q3", "q4"];
    let (db, pool, specs) = sleeping_source(&admin, minute, &ids, SLOW_SECS).await;
    let env = [
        ("KPIWATCH_SOURCES__SLOW__URL", db.url.clone()),
        ("KPIWATCH_SCHEDULER__BACKFILL", "1h".to_owned()),
        ("KPIWATCH_SCHEDULER__HISTORY", "1h".to_owned()),
        ("KPIWATCH_SCHEDULER__TICK", "1s".to_owned()),
        ("KPIWATCH_SCHEDULER__MAX_CONCURRENT_RUNS", "1".to_owned()),
    ];
    let clock = ManualClock::new(minute + Duration::seconds(5));
    let app = app_at(dir.path(), specs, clock, &env).await;
    let token = CancellationToken::new();
    let scheduler = tokio::spawn(app.scheduler().clone().run_until_cancelled(token.clone()));
    wait_for("a run in flight", StdDuration::from_secs(10), async || {
        sqlx::query_scalar::<_, i64>(SLEEPING)
            .fetch_one(&pool)
            .await
            .unwrap_or(0)
            == 1
    })
    .await;
    token.cancel();
    let stopped = Instant::now();
    tokio::time::timeout(StdDuration::from_secs(3 * SLOW_SECS), scheduler)
        .await
        .expect("the scheduler stops once the running run ends")
        .expect("scheduler task");
    let mut ran = 0;
    for id in ids {
        ran += usize::from(fetched_until(&app, id).await.is_some());
    }
    assert_eq!(
        ran,
        1,
        "only the run holding the one slot finished; the stop took {:?}",
        stopped.elapsed()
    );
    pool.close().await;
    db.drop_db().await;
}

/// `max_runs_per_source` bounds the queries in flight against one source: four KPIs on one
/// sleeping source with two source slots (and four run slots, and connections to spare) never
/// have more than two of its queries running at once, and all four run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_never_has_more_queries_in_flight_than_its_slots() {
    init_logs();
    let Some(admin) = server_url("TEST_POSTGRES_URL") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let minute = Utc::now().duration_trunc(Duration::minutes(1)).expect("minute");
    let ids = ["s1", "s2", "s3", "s4"];
    let (db, pool, specs) = sleeping_source(&admin, minute, &ids, 1).await;
    let env = [
        ("KPIWATCH_SOURCES__SLOW__URL", db.url.clone()),
        ("KPIWATCH_SOURCES__SLOW__MAX_CONNECTIONS", "4".to_owned()),
        ("KPIWATCH_SCHEDULER__BACKFILL", "1h".to_owned()),
        ("KPIWATCH_SCHEDULER__HISTORY", "1h".to_owned()),
        ("KPIWATCH_SCHEDULER__MAX_CONCURRENT_RUNS", "4".to_owned()),
        ("KPIWATCH_SCHEDULER__MAX_RUNS_PER_SOURCE", "2".to_owned()),
    ];
    let clock = ManualClock::new(minute + Duration::seconds(5));
    let app = app_at(dir.path(), specs, clock, &env).await;
    let stop = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicI64::new(0));
    let watcher = {
        let (stop, most, pool) = (Arc::clone(&stop), Arc::clone(&most), pool.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let n: i64 = sqlx::query_scalar(SLEEPING).fetch_one(&pool).await.unwrap_or(0);
                most.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(StdDuration::from_millis(50)).await;
            }
        })
    };
    app.scheduler().run_due().await;
    stop.store(true, Ordering::SeqCst);
    watcher.await.expect("watcher");
    for id in ids {
        assert!(fetched_until(&app, id).await.is_some(), "{id} ran");
    }
    assert_eq!(
        most.load(Ordering::SeqCst),
        2,
        "queries in flight against the source at most (two slots, and they were used)"
    );
    pool.close().await;
    db.drop_db().await;
}

/// A prune that takes long (here: held up by a lock on a table it deletes from) does not hold
/// up the scheduler loop: the KPI keeps running every minute meanwhile, and the prune finishes
/// once the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_prune_does_not_hold_up_the_runs() {
    init_logs();
    let Some(admin) = server_url("TEST_POSTGRES_URL") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let minute = Utc::now().duration_trunc(Duration::minutes(1)).expect("minute");
    sqlite_ticks(
        dir.path(),
        minute - Duration::hours(2),
        minute + Duration::hours(1),
    )
    .await;
    let state_db = PgDatabase::create(&admin).await;
    let specs = vec![KpiSpec::parse(
        "ticks",
        &model("shop"),
        "SELECT ts, n AS value FROM ticks WHERE ts >= :start AND ts < :end",
        Path::new("models/ticks"),
    )
    .expect("model")];
    let clock = ManualClock::new(minute + Duration::seconds(5));
    let env = [
        (
            "KPIWATCH_SOURCES__SHOP__URL",
            format!("sqlite://{}", dir.path().join("shop.db").display()),
        ),
        ("KPIWATCH_STATE__URL", state_db.url.clone()),
        ("KPIWATCH_SCHEDULER__BACKFILL", "1h".to_owned()),
        ("KPIWATCH_SCHEDULER__HISTORY", "1h".to_owned()),
        ("KPIWATCH_SCHEDULER__TICK", "1s".to_owned()),
        // Runs never write checkpoints: only the prune touches that table.
        ("KPIWATCH_SCHEDULER__CHECKPOINT_EVERY", "0s".to_owned()),
    ];
    let app = app_at(dir.path(), specs, clock.clone(), &env).await;
    // Another session holds a lock that lets readers through but stops the prune's delete.
    let state = PgPool::connect(&state_db.url).await.expect("state");
    let mut locker = state.begin().await.expect("transaction");
    locker
        .execute("LOCK TABLE detector_checkpoints IN EXCLUSIVE MODE")
        .await
        .expect("lock");
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
         AND wait_event_type = 'Lock' AND query LIKE 'DELETE FROM detector_checkpoints%'";

    let token = CancellationToken::new();
    let scheduler = tokio::spawn(app.scheduler().clone().run_until_cancelled(token.clone()));
    let m = |k: i64| Some((minute + Duration::minutes(k)).timestamp());
    wait_for("the first run", StdDuration::from_secs(20), async || {
        fetched_until(&app, "ticks").await == m(0)
    })
    .await;
    wait_for(
        "the prune to wait on the lock",
        StdDuration::from_secs(20),
        async || {
            sqlx::query_scalar::<_, i64>(waiting)
                .fetch_one(&state)
                .await
                .unwrap_or(0)
                == 1
        },
    )
    .await;
    // Two more minutes: both run while the prune still waits.
    for k in 1..=2 {
        clock.advance(Duration::minutes(1));
        wait_for("the next minute's run", StdDuration::from_secs(10), async || {
            fetched_until(&app, "ticks").await == m(k)
        })
        .await;
    }
    let still: i64 = sqlx::query_scalar(waiting)
        .fetch_one(&state)
        .await
        .expect("activity");
    assert_eq!(still, 1, "the prune was still waiting while the runs went on");
    locker.rollback().await.expect("unlock");
    wait_for("the prune to finish", StdDuration::from_secs(20), async || {
        sqlx::query_scalar::<_, i64>(waiting)
            .fetch_one(&state)
            .await
            .unwrap_or(1)
            == 0
    })
    .await;
    token.cancel();
    tokio::time::timeout(StdDuration::from_secs(20), scheduler)
        .await
        .expect("the scheduler stops")
        .expect("scheduler task");
    state.close().await;
    state_db.drop_db().await;
}

/// Runs queued for a slot longer than the lease timeout keep their leases: this process renews
/// all of its run leases together, so another process cannot take a KPI whose run is waiting
/// here (and run it a second time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_queued_past_the_lease_timeout_keep_their_leases() {
    init_logs();
    let Some(admin) = server_url("TEST_POSTGRES_URL") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let minute = Utc::now().duration_trunc(Duration::minutes(1)).expect("minute");
    // Four runs of 3 s on one slot: the last waits 9 s for it, longer than the 6 s lease. The
    // margins are wide (the renewal every 2 s may be late by up to 4 s) so that a loaded
    // machine does not fail the test.
    let ids = ["l1", "l2", "l3", "l4"];
    let (db, pool, specs) = sleeping_source(&admin, minute, &ids, 3).await;
    let env = [
        ("KPIWATCH_SOURCES__SLOW__URL", db.url.clone()),
        ("KPIWATCH_SCHEDULER__BACKFILL", "1h".to_owned()),
        ("KPIWATCH_SCHEDULER__HISTORY", "1h".to_owned()),
        ("KPIWATCH_SCHEDULER__TICK", "1s".to_owned()),
        ("KPIWATCH_SCHEDULER__CLAIM_TIMEOUT", "6s".to_owned()),
        ("KPIWATCH_SCHEDULER__MAX_CONCURRENT_RUNS", "1".to_owned()),
    ];
    let clock = ManualClock::new(minute + Duration::seconds(5));
    let app = app_at(dir.path(), specs, clock, &env).await;
    let token = CancellationToken::new();
    let scheduler = tokio::spawn(app.scheduler().clone().run_until_cancelled(token.clone()));
    let store = app.store();
    // Only once the scheduler has taken them: before its first pass, the other process would
    // rightly get a lease nobody holds yet.
    wait_for(
        "the scheduler to take the leases",
        StdDuration::from_secs(30),
        async || {
            for id in ids {
                let held = store.lease_held(&format!("kpi:{id}")).await.expect("lease");
                if !held && fetched_until(&app, id).await.is_none() {
                    return false;
                }
            }
            true
        },
    )
    .await;
    let mut tries = 0;
    wait_for("all four runs", StdDuration::from_secs(60), async || {
        let mut done = 0;
        for id in ids {
            if fetched_until(&app, id).await.is_some() {
                done += 1;
                continue;
            }
            let lease = format!("kpi:{id}");
            // Another process tries to take the KPI while its run is queued or running here.
            if store.try_lease(&lease, "other", 6).await.expect("lease") {
                store.release_lease(&lease, "other").await.expect("release");
                assert!(
                    fetched_until(&app, id).await.is_some(),
                    "{id}'s lease expired while its run was still queued or running"
                );
            }
            tries += 1;
        }
        done == ids.len()
    })
    .await;
    assert!(tries > 50, "the lease was tried throughout ({tries} tries)");
    token.cancel();
    scheduler.await.expect("scheduler task");
    pool.close().await;
    db.drop_db().await;
}
