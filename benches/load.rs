//! Load test (`harness = false`): many 1-minute KPIs on one `kpiwatch serve`, with a
//! PostgreSQL source table and a PostgreSQL state store, on loopback only. Prints its figures.
//!
//! ```sh
//! LOAD_KPIS=1000 LOAD_MINUTES=10 cargo bench --bench load
//! ```
//!
//! Settings (environment): `LOAD_KPIS` (default 200), `LOAD_MINUTES` of steady running after
//! the backfill (default 3), `LOAD_SETTLE_MINUTES` between the two that are not measured (the
//! catch-up of the minutes the backfill took; default 0), `LOAD_HISTORY_DAYS` of source history
//! and of `scheduler.history` (default 28), `LOAD_EVALUATIONS_RETENTION` (the service's
//! `retention.evaluations`, default its own 35 days: a shorter one keeps the backfill from
//! writing verdicts it would prune, which is what makes 10,000 KPIs fit on a small disk),
//! `LOAD_REUSE=1` (start on the databases an earlier run left, with as many KPIs: no
//! backfill, the service catches up the minutes since and the steady window is measured after
//! `LOAD_SETTLE_MINUTES`), `LOAD_LOG` (a file to keep the service's log in; default a
//! temporary one), `TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`).
//! It makes two databases, `kpiwatch_load_source` and `kpiwatch_load_state` (dropped first,
//! kept afterwards for inspection), writes the models and config to a temporary directory,
//! starts the release binary, and reports:
//!
//! - the backfill: seconds until every KPI has completed its first run,
//! - steady state: runs per minute, lag of each run (from when its newest bucket could first
//!   be read — its end plus the 5 s delay — to when the run was recorded, so time spent
//!   waiting for a slot counts; p50/p95/max), CPU of kpiwatch and of every PostgreSQL process
//!   (in cores), kpiwatch's peak RSS, the state store's size,
//! - how the service brought its detectors up to date (its `detector_runs_total` by path:
//!   kept in memory, loaded from a checkpoint, replayed in full) and the mean stored
//!   checkpoint size.
//!
//! The source is one table of per-minute counts; each KPI reads it through its own query
//! (`n + <its number>`), so every run is a real indexed range query over a real connection.

use std::error::Error;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::{Executor, PgPool};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Replace the database of a `postgres://` URL.
fn with_db(url: &str, db: &str) -> String {
    match url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{db}"),
        None => format!("{url}/{db}"),
    }
}

/// Transactions (committed and rolled back) of the state store and of the source database so
/// far, from `pg_stat_database` (its counters are flushed about once a second: read after a
/// window of minutes, the lag does not matter).
async fn transactions(admin: &PgPool) -> Result<[i64; 2], Box<dyn Error>> {
    let mut out = [0; 2];
    for (i, db) in ["kpiwatch_load_state", "kpiwatch_load_source"].iter().enumerate() {
        out[i] = sqlx::query_scalar(
            "SELECT (xact_commit + xact_rollback)::int8 FROM pg_stat_database WHERE datname = $1",
        )
        .bind(db)
        .fetch_one(admin)
        .await?;
    }
    Ok(out)
}

/// CPU seconds (user + system) of one process, from `/proc/<pid>/stat`.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    // USER_HZ is 100 on Linux.
    ticks / 100.0
}

/// CPU seconds the whole machine has been busy (every state but idle and iowait), from
/// `/proc/stat`: what exited processes used counts too.
fn machine_busy_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let ticks: Vec<f64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy: f64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    busy / 100.0
}

/// CPU seconds of every process named `postgres` still running (a backend that exited takes
/// its CPU time with it: see [`machine_busy_secs`]).
fn postgres_cpu_secs() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres")
        })
        .map(cpu_secs)
        .sum()
}

/// Resident set size of a process, in MiB.
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn recreate(admin: &PgPool, db: &str) -> Result<(), Box<dyn Error>> {
    admin
        .execute(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)").as_str())
        .await?;
    admin.execute(format!("CREATE DATABASE {db}").as_str()).await?;
    Ok(())
}

fn write_models(dir: &Path, kpis: usize) -> Result<(), Box<dyn Error>> {
    for k in 0..kpis {
        let id = format!("load_{k:05}");
        let d = dir.join(&id);
        std::fs::create_dir_all(&d)?;
        std::fs::write(
            d.join("model.toml"),
            format!(
                "title = \"Load {k}\"\nsource = \"load\"\nkind = \"count\"\ninterval = \"1m\"\ndelay = \"5s\"\n"
            ),
        )?;
        std::fs::write(
            d.join("query.sql"),
            format!(
                "SELECT ts, n + {} AS value FROM minute_counts WHERE ts >= :start AND ts < :end\n",
                k % 50
            ),
        )?;
    }
    Ok(())
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        // Best effort: the child may have exited already.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let kpis: usize = env_or("LOAD_KPIS", 200);
    let minutes: u64 = env_or("LOAD_MINUTES", 3);
    let settle: u64 = env_or("LOAD_SETTLE_MINUTES", 0);
    let days: i64 = env_or("LOAD_HISTORY_DAYS", 28);
    let url = std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    // Reuse the databases a previous run left (its backfill done): the service restarts on
    // them and catches up, and the steady state is measured without another backfill.
    let reuse = std::env::var("LOAD_REUSE").is_ok_and(|v| v == "1");
    let admin = PgPoolOptions::new().max_connections(1).connect(&url).await?;
    if !reuse {
        recreate(&admin, "kpiwatch_load_source").await?;
        recreate(&admin, "kpiwatch_load_state").await?;
    }
    let source_url = with_db(&url, "kpiwatch_load_source");
    let state_url = with_db(&url, "kpiwatch_load_state");

    // The source: one row a minute, `days` back, and a writer adding the new minutes.
    let source = PgPoolOptions::new()
        .max_connections(2)
        .connect(&source_url)
        .await?;
    if !reuse {
        source
            .execute("CREATE TABLE minute_counts (ts timestamptz PRIMARY KEY, n integer NOT NULL)")
            .await?;
        sqlx::query(
            "INSERT INTO minute_counts
         SELECT t, 100 + (extract(epoch FROM t)::bigint / 60 * 7919) % 23
         FROM generate_series(date_trunc('minute', now()) - make_interval(days => $1::int),
                              date_trunc('minute', now()), interval '1 minute') t",
        )
        .bind(days as i32)
        .execute(&source)
        .await?;
    }
    let writer = {
        let source = source.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                // A failed insert is retried on the next tick.
                let _ = sqlx::query(
                    "INSERT INTO minute_counts
                     SELECT t, 100 + (extract(epoch FROM t)::bigint / 60 * 7919) % 23
                     FROM generate_series((SELECT max(ts) FROM minute_counts) + interval '1 minute',
                                          date_trunc('minute', now()), interval '1 minute') t
                     ON CONFLICT DO NOTHING",
                )
                .execute(&source)
                .await;
            }
        })
    };

    // A port of our own, so the figures can include the service's metrics.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let retention = std::env::var("LOAD_EVALUATIONS_RETENTION")
        .map(|r| format!("\n[retention]\nevaluations = \"{r}\"\n"))
        .unwrap_or_default();
    let dir = tempfile::tempdir()?;
    let models = dir.path().join("models");
    write_models(&models, kpis)?;
    let config = dir.path().join("kpiwatch.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nbind = \"127.0.0.1:{port}\"\n\n[state]\nurl = \"{state_url}\"\n\n[email]\noutbox_dir = \"{}\"\n\n\
             [scheduler]\nbackfill = \"{days}d\"\nhistory = \"{days}d\"\n\n[digest]\nenabled = false\n\n\
             [sources.load]\nurl = \"{source_url}\"\n{retention}",
            dir.path().join("outbox").display()
        ),
    )?;
    let log_path = std::env::var("LOAD_LOG")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| dir.path().join("kpiwatch.log"));
    let log = std::fs::File::create(&log_path)?;
    let child = Command::new(env!("CARGO_BIN_EXE_kpiwatch"))
        .args(["--models"])
        .arg(&models)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()?;
    let child = Killed(child);
    let pid = child.0.id();
    println!(
        "load: {kpis} KPIs every minute, {days} days of history, verdicts kept {}, kpiwatch pid {pid}",
        std::env::var("LOAD_EVALUATIONS_RETENTION").unwrap_or_else(|_| "35d (default)".to_owned())
    );

    let state = loop {
        match PgPoolOptions::new().max_connections(1).connect(&state_url).await {
            Ok(p) => break p,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    // Backfill: until every KPI has an `ok` run.
    let started = Instant::now();
    let mut peak_rss: f64 = 0.0;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        peak_rss = peak_rss.max(rss_mib(pid));
        let done: i64 = sqlx::query_scalar("SELECT count(DISTINCT kpi_id) FROM runs WHERE status = 'ok'")
            .fetch_one(&state)
            .await
            .unwrap_or(0);
        if done as usize >= kpis {
            break;
        }
        if started.elapsed() > Duration::from_secs(3600) {
            return Err(format!("backfill incomplete after an hour: {done} of {kpis} KPIs").into());
        }
    }
    let backfill = started.elapsed();
    println!(
        "backfill: {kpis} KPIs x {days} days in {:.1} s",
        backfill.as_secs_f64()
    );

    // The catch-up of the minutes the backfill took, not measured when asked.
    if settle > 0 {
        let from = chrono::Utc::now().timestamp();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(60 * settle) {
            tokio::time::sleep(Duration::from_secs(5)).await;
            peak_rss = peak_rss.max(rss_mib(pid));
        }
        let caught: i64 =
            sqlx::query_scalar("SELECT count(*) FROM runs WHERE started_at >= $1 AND status = 'ok'")
                .bind(from)
                .fetch_one(&state)
                .await?;
        println!("settle: {settle} min not measured, {caught} runs (catch-up included)");
    }

    // Steady state.
    let since = chrono::Utc::now().timestamp();
    let xacts0 = transactions(&admin).await?;
    let (cpu0, pg0, all0, t0) = (
        cpu_secs(pid),
        postgres_cpu_secs(),
        machine_busy_secs(),
        Instant::now(),
    );
    while t0.elapsed() < Duration::from_secs(60 * minutes) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        peak_rss = peak_rss.max(rss_mib(pid));
    }
    let wall = t0.elapsed().as_secs_f64();
    let (cpu1, pg1, all1) = (cpu_secs(pid), postgres_cpu_secs(), machine_busy_secs());
    let xacts1 = transactions(&admin).await?;
    let runs: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT finished_at, window_end FROM runs WHERE finished_at >= $1 AND finished_at < $2 AND status = 'ok'",
    )
    .bind(since)
    .bind(since + wall.round() as i64)
    .fetch_all(&state)
    .await?;
    // Lag: how long after its newest bucket could first be read (its end + the 5 s delay) a
    // run was recorded (`started_at` is the pass's time: it would hide the wait for a slot).
    let mut lags: Vec<f64> = runs
        .iter()
        .map(|(finished, end)| (finished - end - 5).max(0) as f64)
        .collect();
    lags.sort_by(f64::total_cmp);
    let store_bytes: i64 = sqlx::query_scalar("SELECT pg_database_size('kpiwatch_load_state')")
        .fetch_one(&admin)
        .await?;
    println!(
        "steady: {:.0} runs per minute ({} expected), lag p50 {:.0} s, p95 {:.0} s, max {:.0} s",
        runs.len() as f64 / wall * 60.0,
        kpis,
        percentile(&lags, 0.5),
        percentile(&lags, 0.95),
        lags.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "cpu: kpiwatch {:.2} cores, postgres {:.2} cores (its live processes), the rest of the machine {:.2} cores (postgres with its exited backends, this bench); kpiwatch RSS peak {:.0} MiB, at the end {:.0} MiB; state store {:.0} MiB",
        (cpu1 - cpu0) / wall,
        (pg1 - pg0) / wall,
        ((all1 - all0) - (cpu1 - cpu0)) / wall,
        peak_rss,
        rss_mib(pid),
        store_bytes as f64 / (1024.0 * 1024.0)
    );
    // Round trips: every statement outside an explicit transaction is one.
    let per_run = |i: usize| (xacts1[i] - xacts0[i]) as f64 / runs.len().max(1) as f64;
    println!(
        "transactions per run (committed and rolled back, from pg_stat_database): state store {:.1}, source {:.1}",
        per_run(0),
        per_run(1)
    );
    // How the detectors were brought up to date, over the whole run (the backfill's first runs
    // are full replays).
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await?
        .text()
        .await?;
    let paths: Vec<String> = metrics
        .lines()
        .filter(|l| l.starts_with("kpiwatch_detector_runs_total{"))
        .map(|l| l.split_once("path=\"").map_or(l, |(_, r)| r).replace("\"}", ":"))
        .collect();
    let checkpoint_bytes: Option<f64> =
        sqlx::query_scalar("SELECT avg(octet_length(state))::float8 FROM detector_checkpoints")
            .fetch_one(&state)
            .await?;
    println!(
        "detectors: runs by path (whole run) {}; mean checkpoint {:.1} KB; log {}",
        paths.join(", "),
        checkpoint_bytes.unwrap_or(0.0) / 1024.0,
        log_path.display()
    );
    writer.abort();
    drop(child);
    Ok(())
}
