//! What the Prometheus and InfluxDB tests share: finding Debian's server binaries, running
//! one in a temporary directory on a free loopback port, the known order series (with its
//! drop) both are loaded with, and the steps of the scenario they both go through.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kpiwatch::app::{Application, BuildOptions};
use kpiwatch::clock::ManualClock;
use kpiwatch::pipeline::RunOutcome;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Poisson};

use crate::helpers::{settings, SmtpServer};

/// The path of a server binary a test needs: `var` (set by `.ci/run`), else `name` on the
/// PATH. Under `CI=true` a missing binary fails the test; elsewhere it is skipped with a note.
pub fn server_binary(var: &str, name: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "{var}={} does not exist", path.display());
        return Some(path);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if on_path.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{var} is not set and {name} is not installed; under CI=true this test must not skip (see .ci/run)"
        );
        eprintln!(
            "skipping: {name} is not installed (apt-get install {name}; .ci/run does) and {var} is not set"
        );
    }
    on_path
}

/// A free TCP port on 127.0.0.1 (free when asked; the server binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A server process the test started; killed when dropped. Its output goes to `log`.
pub struct Server {
    child: Option<Child>,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
}

impl Server {
    /// Start `bin args…` with its output in `dir/<name>.log`, serving HTTP on `port`, and
    /// wait until `GET url/ready_path` answers 2xx.
    pub async fn start(
        bin: &Path,
        args: &[String],
        dir: &Path,
        name: &str,
        port: u16,
        ready_path: &str,
    ) -> Self {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(bin)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let server = Server {
            child: Some(child),
            log,
            url: format!("http://127.0.0.1:{port}"),
        };
        let ready = format!("{}{ready_path}", server.url);
        let http = reqwest::Client::new();
        for _ in 0..300 {
            if let Ok(r) = http.get(&ready).send().await {
                // Up, even if it wants credentials first.
                if r.status().is_success() || r.status() == reqwest::StatusCode::UNAUTHORIZED {
                    return server;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{name} did not become ready; its log:\n{}", server.log_text());
    }

    /// The server's output so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kill it now (a source going down).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Hourly orders per country over `buckets` hours from `start`, with Poisson noise and a
/// daily cycle; from bucket `drop_from` on, Germany's orders fall to 15%.
#[derive(Debug, Clone)]
pub struct KnownOrders {
    /// Start of the first bucket (an hour boundary, unix seconds).
    pub start: i64,
    /// Buckets in all.
    pub buckets: usize,
    /// First bucket of the drop.
    pub drop_from: usize,
}

/// The series' countries.
pub const COUNTRIES: [&str; 2] = ["DE", "FR"];

/// The bucket length.
pub const HOUR: i64 = 3600;

impl KnownOrders {
    /// `buckets` hourly buckets ending at the last full hour before now, the last two
    /// being the drop.
    pub fn ending_now(buckets: usize) -> Self {
        let end = Utc::now().timestamp().div_euclid(HOUR) * HOUR;
        KnownOrders {
            start: end - buckets as i64 * HOUR,
            buckets,
            drop_from: buckets - 2,
        }
    }

    /// Start of bucket `b`.
    pub fn at(&self, b: usize) -> i64 {
        self.start + b as i64 * HOUR
    }

    /// End of the last bucket.
    pub fn end(&self) -> i64 {
        self.at(self.buckets)
    }

    /// Orders from `country` in bucket `b`.
    pub fn count(&self, b: usize, country: &str) -> u64 {
        let hour = (self.at(b).rem_euclid(86_400) / HOUR) as f64;
        let cycle = 1.0 + 0.5 * ((hour - 14.0) / 24.0 * std::f64::consts::TAU).cos();
        let (base, seed) = if country == "DE" { (600.0, 1) } else { (300.0, 2) };
        let mut rng = StdRng::seed_from_u64(seed * 1_000_003 + b as u64);
        let n = Poisson::new(base * cycle).expect("rate").sample(&mut rng) as u64;
        if country == "DE" && b >= self.drop_from {
            n * 15 / 100
        } else {
            n
        }
    }

    /// Payments in bucket `b` (one per order): (succeeded, all). 95% succeed, always.
    pub fn payments(&self, b: usize) -> (u64, u64) {
        let all: u64 = COUNTRIES.iter().map(|c| self.count(b, c)).sum();
        (all * 95 / 100, all)
    }
}

/// Write a model folder `dir/<id>` with `model.toml` and query `files`.
pub fn write_model(dir: &Path, id: &str, model: &str, files: &[(&str, &str)]) {
    let d = dir.join(id);
    std::fs::create_dir_all(&d).expect("model dir");
    std::fs::write(d.join("model.toml"), model).expect("model.toml");
    for (name, text) in files {
        std::fs::write(d.join(name), text).expect("query file");
    }
}

/// An hourly orders model on `source`: down-only, daily seasonality (two days of warm-up).
pub fn hourly_model(title: &str, source: &str, kind: &str) -> String {
    format!(
        "title = {title:?}\nsource = {source:?}\nkind = {kind:?}\ninterval = \"1h\"\ndelay = \"1m\"\n\
         direction = \"down\"\nseasonality = \"daily\"\nrecipients = [\"oncall@example.com\"]\n"
    )
}

/// The app on a SQLite state store in `dir`, the models in `dir/models` loaded through the
/// real model loader, `env` for the sources, and a backfill reaching back to `known.start`.
pub async fn build_app(
    dir: &Path,
    smtp: &SmtpServer,
    clock: &ManualClock,
    known: &KnownOrders,
    env: &[(&str, String)],
) -> Application {
    let specs = kpiwatch::kpi::load_models(&dir.join("models")).expect("models load");
    // The first run (at the end of bucket `drop_from - 1`) reads from the very first bucket.
    let mut env = env.to_vec();
    env.push(("KPIWATCH_SCHEDULER__BACKFILL", format!("{}h", known.drop_from)));
    let settings = settings(dir, Some(smtp.port), &env);
    Application::build(
        settings,
        specs,
        BuildOptions {
            clock: Arc::new(clock.clone()),
            extra_sources: None,
        },
    )
    .await
    .expect("app builds")
}

/// Stored or known buckets per series (dimension JSON): (bucket start, value, denominator).
pub type Buckets = BTreeMap<String, Vec<(i64, f64, Option<f64>)>>;

/// A moment `minutes` after the unix time `secs`.
pub fn after(secs: i64, minutes: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs + minutes * 60, 0).expect("valid time")
}

/// One scheduler pass; every KPI's outcome by id.
pub async fn pass(app: &Application) -> BTreeMap<String, RunOutcome> {
    app.scheduler()
        .run_due()
        .await
        .into_iter()
        .map(|(id, r)| (id.to_string(), r.unwrap_or_else(|e| panic!("{id} failed: {e}"))))
        .collect()
}

/// The stored buckets of `kpi` in `[from, to)`, per series (dimension JSON), as
/// (bucket start, value, denominator).
pub async fn stored(app: &Application, kpi: &str, from: i64, to: i64) -> Buckets {
    let mut out = BTreeMap::new();
    for s in app.store().series_of(kpi).await.expect("series") {
        let rows = app
            .store()
            .observations(s.id, from, to)
            .await
            .expect("observations");
        out.insert(
            s.dims,
            rows.iter().map(|r| (r.ts, r.value, r.denominator)).collect(),
        );
    }
    out
}

/// `got` equals `want`, or the first bucket where they differ is named.
#[track_caller]
pub fn assert_same_buckets(got: &Buckets, want: &Buckets, context: &str) {
    let keys = |m: &BTreeMap<String, _>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(got), keys(want), "series differ; {context}");
    for (series, want_rows) in want {
        let got_rows = &got[series];
        if let Some((g, w)) = got_rows.iter().zip(want_rows).find(|(g, w)| g != w) {
            panic!("{series}: stored {g:?}, known {w:?}; {context}");
        }
        assert_eq!(
            got_rows.len(),
            want_rows.len(),
            "{series}: bucket count; {context}"
        );
    }
}

/// The known orders of buckets `[from, to)` in the shape [`stored`] returns for the
/// `orders` KPI (its total `{}` and one series per country).
pub fn known_orders(known: &KnownOrders, from: usize, to: usize) -> Buckets {
    let mut out: Buckets = COUNTRIES
        .iter()
        .map(|c| {
            let rows = (from..to)
                .map(|b| (known.at(b), known.count(b, c) as f64, None))
                .collect();
            (format!("{{\"country\":\"{c}\"}}"), rows)
        })
        .collect();
    let total = (from..to)
        .map(|b| {
            let n: f64 = COUNTRIES.iter().map(|c| known.count(b, c) as f64).sum();
            (known.at(b), n, None)
        })
        .collect();
    out.insert("{}".to_owned(), total);
    out
}

/// Anomaly alerts (not data-missing ones) so far, as (KPI, dimension JSON).
pub async fn anomaly_alerts(app: &Application) -> Vec<(String, String)> {
    let series: BTreeMap<i64, String> = {
        let mut m = BTreeMap::new();
        for kpi in ["orders", "payment_success"] {
            for s in app.store().series_of(kpi).await.expect("series") {
                m.insert(s.id, s.dims);
            }
        }
        m
    };
    app.store()
        .alerts(false, 100)
        .await
        .expect("alerts")
        .into_iter()
        .filter(|a| a.kind == "anomaly")
        .map(|a| {
            let dims = a
                .series_id
                .and_then(|id| series.get(&id).cloned())
                .unwrap_or_default();
            (a.kpi_id, dims)
        })
        .collect()
}

/// The source went down: the next two hourly passes are "data missing" for every KPI, the
/// second raises one data-missing alert per KPI, and no anomaly is recorded — never a drop.
pub async fn outage_is_data_missing(app: &Application, clock: &ManualClock, kpis: &[&str]) {
    let anomalies_before = app
        .store()
        .anomalies(None, None, 1000)
        .await
        .expect("anomalies")
        .len();
    for _ in 0..2 {
        clock.advance(chrono::Duration::hours(1));
        let outcomes = pass(app).await;
        for kpi in kpis {
            assert!(
                matches!(&outcomes[*kpi], RunOutcome::DataMissing(msg) if msg.contains("unreachable")),
                "{kpi}: {outcomes:?}"
            );
        }
    }
    for kpi in kpis {
        let row = app.store().kpi(kpi).await.expect("kpi").expect("row");
        assert_eq!(row.last_status.as_deref(), Some("data_missing"), "{kpi}");
    }
    let anomalies_after = app
        .store()
        .anomalies(None, None, 1000)
        .await
        .expect("anomalies")
        .len();
    assert_eq!(anomalies_after, anomalies_before, "an outage is not a drop");
    let missing: Vec<String> = app
        .store()
        .alerts(true, 100)
        .await
        .expect("alerts")
        .into_iter()
        .filter(|a| a.kind == "data_missing")
        .map(|a| a.kpi_id)
        .collect();
    assert_eq!(
        missing.len(),
        kpis.len(),
        "one data-missing alert per KPI: {missing:?}"
    );
}

/// Run `kpiwatch check` with `config` and the models in `models`; exit code and stdout.
pub fn check(dir: &Path, config: &str, models: &Path) -> (Option<i32>, String) {
    let cfg = dir.join("check.toml");
    std::fs::write(&cfg, config).expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_kpiwatch"))
        .current_dir(dir)
        .arg("--config")
        .arg(&cfg)
        .arg("--models")
        .arg(models)
        .arg("check")
        .output()
        .expect("kpiwatch runs");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

/// The local-day scenario both metric stores are loaded with: one gauge sample per UTC hour
/// from 2025-10-23 to 2025-10-29, stamped at half past (never on a bucket boundary), so a
/// bucket's `sum` is the sum of the hours it spans. Berlin's clocks go back on 2025-10-26
/// at 01:00 UTC (03:00 CEST becomes 02:00 CET): that local day lasts 25 hours.
pub const LOCAL_DAYS_FROM: i64 = 1_761_177_600; // 2025-10-23T00:00:00Z
/// The end of the local-day scenario's samples.
pub const LOCAL_DAYS_TO: i64 = 1_761_696_000; // 2025-10-29T00:00:00Z
/// The hour Berlin lives twice (its second 02:00, CET): worth 100, so a day that misses it
/// (a 24-hour range ending at the day's end) is visibly short.
pub const REPEATED_HOUR: i64 = 1_761_440_400; // 2025-10-26T01:00:00Z

/// The value of the hour starting at `h`: 100 for [`REPEATED_HOUR`], 10 for every 14:00
/// UTC hour, 1 otherwise.
pub fn hour_value(h: i64) -> f64 {
    if h == REPEATED_HOUR {
        100.0
    } else if h.rem_euclid(86_400) == 14 * HOUR {
        10.0
    } else {
        1.0
    }
}

/// The starts of the scenario's hours, oldest first.
pub fn local_day_hours() -> impl Iterator<Item = i64> {
    (LOCAL_DAYS_FROM..LOCAL_DAYS_TO).step_by(HOUR as usize)
}

/// What a source must return for the scenario at `buckets` over `[from, to)` (both bucket
/// boundaries): one (start, sum of the hours in the bucket) per bucket.
pub fn local_day_sums(buckets: kpiwatch::kpi::Buckets, from: i64, to: i64) -> Vec<(i64, f64)> {
    buckets
        .starts(from, to)
        .map(|s| {
            let e = buckets.end(s);
            (
                s,
                local_day_hours()
                    .filter(|h| *h >= s && *h < e)
                    .map(hour_value)
                    .sum(),
            )
        })
        .collect()
}

/// Rows as (bucket start, value), oldest first.
pub fn day_rows(rows: &[kpiwatch::sources::RawRow]) -> Vec<(i64, f64)> {
    let mut out: Vec<(i64, f64)> = rows
        .iter()
        .map(|r| (r.ts.timestamp(), r.value.unwrap_or(f64::NAN)))
        .collect();
    out.sort_by_key(|r| r.0);
    out
}

/// The buckets of a daily KPI in `tz`.
pub fn daily(tz: &str) -> kpiwatch::kpi::Buckets {
    kpiwatch::kpi::Buckets::new(kpiwatch::kpi::Interval::DAY, tz.parse().expect("timezone"))
}

/// The window `[from, to)` given as RFC 3339 instants.
pub fn window_between(from: &str, to: &str) -> kpiwatch::sources::Window {
    let at = |s: &str| {
        DateTime::parse_from_rfc3339(s)
            .expect("rfc3339")
            .with_timezone(&Utc)
    };
    kpiwatch::sources::Window {
        start: at(from),
        end: at(to),
    }
}

/// The facts both metric-store tests check on the scenario read at local days: Seoul's
/// days start at 15:00 UTC, and Berlin's 25-hour day carries all its 25 hours, the repeated
/// one included. `seoul` and `berlin` are the rows read over [`SEOUL_WINDOW`] and
/// [`BERLIN_WINDOW`].
pub fn assert_local_days(
    seoul: &[kpiwatch::sources::RawRow],
    berlin: &[kpiwatch::sources::RawRow],
    context: &str,
) {
    let (sw, bw) = (
        window_between(SEOUL_WINDOW.0, SEOUL_WINDOW.1),
        window_between(BERLIN_WINDOW.0, BERLIN_WINDOW.1),
    );
    let seoul = day_rows(seoul);
    assert_eq!(
        seoul,
        local_day_sums(daily("Asia/Seoul"), sw.start.timestamp(), sw.end.timestamp()),
        "Seoul days: {context}"
    );
    assert_eq!(seoul.len(), 4, "{context}");
    assert!(
        seoul.iter().all(|(s, _)| s.rem_euclid(86_400) == 15 * HOUR),
        "Seoul days start at 15:00 UTC: {seoul:?}; {context}"
    );
    let berlin = day_rows(berlin);
    assert_eq!(
        berlin,
        local_day_sums(daily("Europe/Berlin"), bw.start.timestamp(), bw.end.timestamp()),
        "Berlin days: {context}"
    );
    // 2025-10-24 … 2025-10-27 local: 24, 24, 25 and 24 hours, each with one 14:00 UTC hour.
    let long_day = REPEATED_HOUR - 3 * HOUR; // 2025-10-26 00:00 CEST
    assert_eq!(
        berlin,
        vec![
            (long_day - 2 * 86_400, 33.0),
            (long_day - 86_400, 33.0),
            (long_day, 23.0 + 10.0 + 100.0),
            (long_day + 25 * HOUR, 33.0)
        ],
        "the 25-hour day covers its 25 hours: {context}"
    );
}

/// A window of four Seoul days (from 2025-10-24 00:00 KST).
pub const SEOUL_WINDOW: (&str, &str) = ("2025-10-23T15:00:00Z", "2025-10-27T15:00:00Z");
/// A window of four Berlin days across the autumn clock change (2025-10-24 … 2025-10-27).
pub const BERLIN_WINDOW: (&str, &str) = ("2025-10-23T22:00:00Z", "2025-10-27T23:00:00Z");
