//! Prometheus as a KPI source, against Debian's real `prometheus` started in a temporary
//! directory on a free loopback port, scraping a small exporter this test runs.
//!
//! Compressing days into seconds: the exporter publishes its counters with explicit
//! timestamps, one hourly sample per scrape (every 100 ms), and Prometheus is configured
//! with an out-of-order window (`storage.tsdb.out_of_order_time_window`) so it accepts
//! samples older than its head block. Everything after that — scraping, storage, PromQL —
//! is Prometheus's own.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kpiwatch::clock::ManualClock;
use kpiwatch::config::SourceConfig;
use kpiwatch::kpi::{Interval, Kind, Query};
use kpiwatch::pipeline::RunOutcome;
use kpiwatch::sources::{Error, RawRow, Source, Window};

use crate::helpers::{init_logs, SmtpServer};
use crate::metric_stores::{
    after, anomaly_alerts, assert_local_days, assert_same_buckets, build_app, check, daily, free_port,
    hour_value, hourly_model, known_orders, local_day_hours, outage_is_data_missing, pass, server_binary,
    stored, window_between, write_model, Buckets, KnownOrders, Server, BERLIN_WINDOW, COUNTRIES,
    SEOUL_WINDOW,
};

/// What the exporter publishes: a sample Prometheus missed (`resend`) first, else sample
/// `next`, never beyond `limit`.
struct Exporter {
    known: KnownOrders,
    next: usize,
    limit: usize,
    served_at_limit: usize,
    resend: Vec<usize>,
}

impl Exporter {
    /// The exposition of sample `j`: the counters at the start of bucket `j`, stamped with it.
    fn body(&self, j: usize) -> String {
        let k = &self.known;
        let ms = k.at(j) * 1000;
        let mut out = String::from("# TYPE shop_orders_total counter\n");
        for (c, base) in COUNTRIES.iter().zip([5_000u64, 2_000]) {
            let total: u64 = base + (0..j).map(|b| k.count(b, c)).sum::<u64>();
            out.push_str(&format!("shop_orders_total{{country=\"{c}\"}} {total} {ms}\n"));
        }
        let (ok, all) = (0..j).fold((0, 0), |(o, a), b| {
            let (bo, ba) = k.payments(b);
            (o + bo, a + ba)
        });
        out.push_str("# TYPE shop_payments_total counter\n");
        out.push_str(&format!(
            "shop_payments_total{{status=\"succeeded\"}} {ok} {ms}\n"
        ));
        out.push_str(&format!(
            "shop_payments_total{{status=\"declined\"}} {} {ms}\n",
            all - ok
        ));
        out
    }

    fn scrape(&mut self) -> String {
        if let Some(j) = self.resend.pop() {
            return self.body(j);
        }
        let j = self.next.min(self.limit);
        if self.next < self.limit {
            self.next += 1;
        } else {
            self.served_at_limit += 1;
        }
        self.body(j)
    }
}

async fn start_exporter(known: &KnownOrders) -> (u16, Arc<Mutex<Exporter>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind exporter");
    let port = listener.local_addr().expect("addr").port();
    let state = Arc::new(Mutex::new(Exporter {
        known: known.clone(),
        next: 0,
        limit: 0,
        served_at_limit: 0,
        resend: Vec::new(),
    }));
    let shared = Arc::clone(&state);
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let shared = Arc::clone(&shared);
            async move { shared.lock().expect("exporter lock").scrape() }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await });
    (port, state)
}

/// Let the exporter run up to sample `limit` and wait until Prometheus has every sample up
/// to it: a scrape is appended before the next one starts, so two scrapes at the limit mean
/// the last is stored; a scrape that timed out on a busy machine is served again (the
/// out-of-order window takes it late).
async fn publish(exporter: &Mutex<Exporter>, limit: usize, prom: &Server) {
    {
        let mut e = exporter.lock().expect("exporter lock");
        e.limit = limit;
    }
    for _round in 0..5 {
        exporter.lock().expect("exporter lock").served_at_limit = 0;
        let mut waited = 0;
        while exporter.lock().expect("exporter lock").served_at_limit < 2 {
            waited += 1;
            assert!(
                waited < 1200,
                "Prometheus did not scrape up to sample {limit}; its log:\n{}",
                prom.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let known = exporter.lock().expect("exporter lock").known.clone();
        let missing = missing_samples(prom, &known, limit).await;
        if missing.is_empty() {
            return;
        }
        eprintln!("Prometheus missed samples {missing:?}; serving them again");
        exporter.lock().expect("exporter lock").resend = missing;
    }
    panic!("Prometheus kept missing samples; its log:\n{}", prom.log_text());
}

/// The samples `0..=limit` Prometheus does not hold (all series of one sample come in one
/// scrape, so one series tells).
async fn missing_samples(prom: &Server, known: &KnownOrders, limit: usize) -> Vec<usize> {
    let hours = limit + 1;
    let body: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/api/v1/query", prom.url))
        .query(&[
            ("query", format!("shop_orders_total{{country=\"DE\"}}[{hours}h]")),
            ("time", known.at(limit).to_string()),
        ])
        .send()
        .await
        .expect("prometheus answers")
        .json()
        .await
        .expect("json");
    let have: std::collections::BTreeSet<i64> = body["data"]["result"][0]["values"]
        .as_array()
        .map(|v| v.iter().filter_map(|p| p[0].as_f64()).map(|t| t as i64).collect())
        .unwrap_or_default();
    (0..=limit).filter(|j| !have.contains(&known.at(*j))).collect()
}

/// Prometheus in `dir`, scraping `target` every 100 ms, plus `extra` YAML; with
/// `basic_auth`, its API wants user `kpiwatch` with the password of that bcrypt hash.
async fn start_prometheus(
    bin: &Path,
    dir: &Path,
    target: Option<u16>,
    extra: &str,
    basic_auth: Option<&str>,
) -> Server {
    let scrape = match target {
        Some(port) => format!(
            "scrape_configs:\n  - job_name: shop\n    honor_timestamps: true\n    static_configs:\n      - targets: [\"127.0.0.1:{port}\"]\n"
        ),
        None => "scrape_configs: []\n".to_owned(),
    };
    let config = format!(
        "global:\n  scrape_interval: 100ms\n  scrape_timeout: 100ms\nstorage:\n  tsdb:\n    out_of_order_time_window: 30d\n{scrape}{extra}"
    );
    std::fs::write(dir.join("prometheus.yml"), config).expect("prometheus.yml");
    let port = free_port();
    let mut args = vec![
        "--config.file=prometheus.yml".to_owned(),
        format!("--storage.tsdb.path={}", dir.join("prometheus-data").display()),
        format!("--web.listen-address=127.0.0.1:{port}"),
        "--log.level=warn".to_owned(),
    ];
    if let Some(hash) = basic_auth {
        std::fs::write(
            dir.join("web.yml"),
            format!("basic_auth_users:\n  kpiwatch: {hash}\n"),
        )
        .expect("web.yml");
        args.push("--web.config.file=web.yml".to_owned());
    }
    Server::start(bin, &args, dir, "prometheus", port, "/-/ready").await
}

/// bcrypt of `s3cret` (cost 4), for Prometheus's `basic_auth_users`.
const S3CRET_BCRYPT: &str = "$2b$04$Fn.vHrSOw/yFdno/0O7L2OuBNiZ39C80IaF/itOBwX89.kcqiCAcC";

fn source(url: &str, max_steps: usize) -> Source {
    let cfg: SourceConfig = toml::from_str(&format!(
        "type = \"prometheus\"\nurl = {url:?}\nmax_steps_per_query = {max_steps}\nstatement_timeout = \"20s\""
    ))
    .expect("source config");
    Source::build("prom", &cfg).expect("source")
}

fn sorted(mut rows: Vec<RawRow>) -> Vec<RawRow> {
    rows.sort_by(|a, b| (a.ts, &a.dims).cmp(&(b.ts, &b.dims)));
    rows
}

const ORDERS: &str = "sum by (country) (increase(shop_orders_total[$__interval]))";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_counters_scraped_from_an_exporter_become_the_known_buckets_and_the_drop_alerts_once() {
    init_logs();
    let Some(bin) = server_binary("TEST_PROMETHEUS_BIN", "prometheus") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let known = KnownOrders::ending_now(98);
    let (exporter_port, exporter) = start_exporter(&known).await;
    let mut prom = start_prometheus(&bin, dir.path(), Some(exporter_port), "", None).await;

    let models = dir.path().join("models");
    write_model(
        &models,
        "orders",
        &hourly_model("Orders", "prom", "count"),
        &[("query.promql", ORDERS)],
    );
    write_model(
        &models,
        "payment_success",
        &hourly_model("Payment success", "prom", "ratio"),
        &[
            (
                "numerator.promql",
                "sum(increase(shop_payments_total{status=\"succeeded\"}[$__interval]))",
            ),
            (
                "denominator.promql",
                "sum(increase(shop_payments_total[$__interval]))",
            ),
        ],
    );

    // Four days of normal history, scraped.
    publish(&exporter, known.drop_from, &prom).await;
    let smtp = SmtpServer::start();
    let clock = ManualClock::new(after(known.at(known.drop_from), 1));
    let env = [
        ("KPIWATCH_SOURCES__PROM__TYPE", "prometheus".to_owned()),
        ("KPIWATCH_SOURCES__PROM__URL", prom.url.clone()),
    ];
    let app = build_app(dir.path(), &smtp, &clock, &known, &env).await;
    let outcomes = pass(&app).await;
    let history = known.drop_from;
    // Two regions: their total and the two slices, each judged.
    assert!(
        matches!(outcomes["orders"], RunOutcome::Ok { judged, .. } if judged == 3 * history),
        "{outcomes:?}"
    );
    assert_same_buckets(
        &stored(&app, "orders", known.start, known.end()).await,
        &known_orders(&known, 0, history),
        &format!("the exporter's series; Prometheus log:\n{}", prom.log_text()),
    );
    let ratio: Buckets = BTreeMap::from([(
        "{}".to_owned(),
        (0..history)
            .map(|b| {
                let (ok, all) = known.payments(b);
                (known.at(b), ok as f64, Some(all as f64))
            })
            .collect(),
    )]);
    assert_eq!(
        stored(&app, "payment_success", known.start, known.end()).await,
        ratio
    );
    assert!(
        anomaly_alerts(&app).await.is_empty(),
        "normal history must not alert"
    );

    // Germany's orders drop for two hours; the next run reads them and alerts once.
    publish(&exporter, known.buckets, &prom).await;
    clock.set(after(known.end(), 1));
    let outcomes = pass(&app).await;
    assert!(
        matches!(outcomes["orders"], RunOutcome::Ok { .. }),
        "{outcomes:?}"
    );
    assert_same_buckets(
        &stored(&app, "orders", known.start, known.end()).await,
        &known_orders(&known, 0, known.buckets),
        "orders",
    );
    // One incident for the KPI (its total and slices grouped), whose message names DE.
    assert_eq!(
        anomaly_alerts(&app).await,
        vec![("orders".to_owned(), "{}".to_owned())]
    );
    clock.advance(chrono::Duration::minutes(2));
    pass(&app).await; // delivers once the grouping wait is over
    let mail = smtp.received();
    assert_eq!(
        mail.len(),
        1,
        "{:?}",
        mail.iter().map(|m| m.subject()).collect::<Vec<_>>()
    );
    assert!(mail[0].subject().contains("Orders"), "{}", mail[0].subject());
    assert!(mail[0].text().contains("DE"), "{}", mail[0].text());

    // Long windows are split under Prometheus's 11,000-point limit, and reading them in
    // pieces changes nothing.
    let window = Window {
        start: after(known.start, 0),
        end: after(known.end(), 0),
    };
    let hourly = kpiwatch::kpi::Buckets::utc(Interval::parse("1h").expect("valid"));
    let orders = Query::PromQl(ORDERS.to_owned());
    let whole = source(&prom.url, 11_000)
        .fetch(&orders, Kind::Count, hourly, window)
        .await
        .expect("one query");
    let pieces = source(&prom.url, 7)
        .fetch(&orders, Kind::Count, hourly, window)
        .await
        .expect("14 queries");
    assert_eq!(whole.rows.len(), 2 * known.buckets);
    assert_eq!(sorted(whole.rows), sorted(pieces.rows));
    let minute = kpiwatch::kpi::Buckets::utc(Interval::parse("1m").expect("valid"));
    let gauge = Query::PromQl("sum by (country) (shop_orders_total)".to_owned());
    let eight_days = Window {
        start: after(known.end() - 8 * 86_400, 0),
        end: window.end,
    };
    let err = source(&prom.url, 20_000)
        .fetch(&gauge, Kind::Gauge, minute, eight_days)
        .await
        .expect_err("11,520 steps in one query");
    assert!(
        matches!(&err, Error::Query { message, .. } if message.contains("11,000 points")),
        "Prometheus's own message: {err}"
    );
    let split = source(&prom.url, 11_000)
        .fetch(&gauge, Kind::Gauge, minute, eight_days)
        .await
        .expect("split in two");
    let mut keys: Vec<(i64, String)> = split
        .rows
        .iter()
        .map(|r| (r.ts.timestamp(), format!("{:?}", r.dims)))
        .collect();
    let n = keys.len();
    keys.dedup();
    assert!(n > 0 && keys.len() == n, "each bucket once: {n} rows");
    assert!(split
        .rows
        .iter()
        .all(|r| r.ts >= eight_days.start && r.ts < eight_days.end));

    // A query that outlives the timeout is a timeout (data missing), not a failure. An
    // expensive one (a median over 8 days at each of 11,520 minutes): the plain sum over this
    // small store was once answered within 1 ms on an idle machine.
    let heavy = Query::PromQl("sum by (country) (quantile_over_time(0.5, shop_orders_total[8d]))".to_owned());
    let impatient: SourceConfig = toml::from_str(&format!(
        "type = \"prometheus\"\nurl = {:?}\nstatement_timeout = \"1ms\"",
        prom.url
    ))
    .expect("source config");
    let err = Source::build("prom", &impatient)
        .expect("source")
        .fetch(&heavy, Kind::Gauge, minute, eight_days)
        .await
        .expect_err("1 ms is too short");
    assert!(matches!(err, Error::Timeout { .. }) && err.is_outage(), "{err}");

    // A SQL query on a Prometheus source is named as such, not sent.
    let err = source(&prom.url, 11_000)
        .fetch(&Query::Sql("SELECT 1".to_owned()), Kind::Count, hourly, window)
        .await
        .expect_err("wrong language");
    assert!(
        err.to_string()
            .contains("is a Prometheus source: its KPIs need query.promql"),
        "{err}"
    );

    // Prometheus goes away: data missing, never a drop.
    prom.stop();
    outage_is_data_missing(&app, &clock, &["orders", "payment_success"]).await;
    assert_eq!(anomaly_alerts(&app).await.len(), 1, "no new anomaly alert");
}

#[tokio::test]
async fn check_and_runs_quote_prometheus_errors_and_warnings_and_log_in_with_basic_auth() {
    init_logs();
    let Some(bin) = server_binary("TEST_PROMETHEUS_BIN", "prometheus") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    // A remote-read endpoint that refuses connections: Prometheus answers every query and
    // adds a warning about it.
    let closed = free_port();
    let prom = start_prometheus(
        &bin,
        dir.path(),
        None,
        &format!("remote_read:\n  - url: http://127.0.0.1:{closed}/api/v1/read\n    read_recent: true\n"),
        Some(S3CRET_BCRYPT),
    )
    .await;
    let models = dir.path().join("models");
    write_model(
        &models,
        "good",
        &hourly_model("Good", "prom", "gauge"),
        &[("query.promql", "sum(up)")],
    );
    write_model(
        &models,
        "bad",
        &hourly_model("Bad", "prom", "count"),
        &[("query.promql", "sum(rate(shop_orders_total[5m])")],
    );
    write_model(
        &models,
        "gone",
        &hourly_model("Gone", "down", "count"),
        &[("query.promql", "sum(up)")],
    );
    write_model(
        &models,
        "locked",
        &hourly_model("Locked", "wrong", "count"),
        &[("query.promql", "sum(up)")],
    );
    let config = format!(
        "[sources.prom]\ntype = \"prometheus\"\nurl = \"{url}\"\nusername = \"kpiwatch\"\npassword = \"s3cret\"\n\n\
         [sources.wrong]\ntype = \"prometheus\"\nurl = \"{url}\"\nusername = \"kpiwatch\"\npassword = \"guess\"\n\n\
         [sources.down]\ntype = \"prometheus\"\nurl = \"http://kpiwatch:topsecret@127.0.0.1:{closed}\"\nstatement_timeout = \"2s\"\n",
        url = prom.url
    );
    let (code, out) = check(dir.path(), &config, &models);
    assert_eq!(code, Some(1), "{out}");
    let line = |kpi: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{kpi} ")))
            .unwrap_or_else(|| panic!("no row for {kpi} in:\n{out}"))
            .to_owned()
    };
    let bad = line("bad");
    assert!(
        bad.contains("FAIL") && bad.contains("bad_data") && bad.contains("parse error"),
        "{bad}"
    );
    assert!(
        bad.contains("unclosed left parenthesis"),
        "Prometheus's own words: {bad}"
    );
    let good = line("good");
    assert!(good.contains("warn") && good.contains("remote_read"), "{good}");
    let gone = line("gone");
    assert!(gone.contains("FAIL") && gone.contains("unreachable"), "{gone}");
    let locked = line("locked");
    assert!(
        locked.contains("FAIL")
            && locked.contains("refused kpiwatch's credentials")
            && locked.contains("401"),
        "{locked}"
    );
    for secret in ["topsecret", "s3cret", "guess"] {
        assert!(!out.contains(secret), "credentials must not leak:\n{out}");
    }

    // The same warning rides on a scheduled run's status, which stays ok.
    let good: Vec<_> = kpiwatch::kpi::load_models(&models)
        .expect("models")
        .into_iter()
        .filter(|s| s.id.as_str() == "good")
        .collect();
    let smtp = SmtpServer::start();
    let settings = crate::helpers::settings(
        dir.path(),
        Some(smtp.port),
        &[
            ("KPIWATCH_SOURCES__PROM__TYPE", "prometheus".to_owned()),
            ("KPIWATCH_SOURCES__PROM__URL", prom.url.clone()),
            ("KPIWATCH_SOURCES__PROM__USERNAME", "kpiwatch".to_owned()),
            ("KPIWATCH_SOURCES__PROM__PASSWORD", "s3cret".to_owned()),
            ("KPIWATCH_SCHEDULER__BACKFILL", "1d".to_owned()),
        ],
    );
    let app = kpiwatch::app::Application::build(settings, good, kpiwatch::app::BuildOptions::default())
        .await
        .expect("app builds");
    let outcomes = pass(&app).await;
    assert!(matches!(outcomes["good"], RunOutcome::Ok { .. }), "{outcomes:?}");
    let row = app.store().kpi("good").await.expect("kpi").expect("row");
    assert_eq!(row.last_status.as_deref(), Some("ok"));
    assert!(
        row.last_error
            .as_deref()
            .is_some_and(|e| e.contains("warned: remote_read")),
        "{:?}",
        row.last_error
    );
}

/// The local-day scenario (see `metric_stores`) as blocks in Prometheus's data directory,
/// written by Debian's `promtool tsdb create-blocks-from openmetrics` before it starts:
/// six days of hourly samples are history, which a scrape cannot deliver in seconds.
fn backfill_local_days(dir: &Path) {
    let mut om = String::from("# TYPE shop_hourly_orders gauge\n");
    for h in local_day_hours() {
        om.push_str(&format!("shop_hourly_orders {} {}\n", hour_value(h), h + 1800));
    }
    om.push_str("# EOF\n");
    let input = dir.join("local-days.om");
    std::fs::write(&input, om).expect("openmetrics");
    let promtool = std::env::var_os("TEST_PROMETHEUS_BIN")
        .map(std::path::PathBuf::from)
        .and_then(|p| p.parent().map(|d| d.join("promtool")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| "promtool".into());
    let out = std::process::Command::new(&promtool)
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&input)
        .arg(dir.join("prometheus-data"))
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn prometheus_reads_a_local_kpi_at_its_own_days_and_a_25_hour_day_over_25_hours() {
    init_logs();
    let Some(bin) = server_binary("TEST_PROMETHEUS_BIN", "prometheus") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    backfill_local_days(dir.path());
    let prom = start_prometheus(&bin, dir.path(), None, "", None).await;
    let query = Query::PromQl("sum(sum_over_time(shop_hourly_orders[$__interval]))".to_owned());
    let read = |tz: &'static str, w: (&'static str, &'static str), max_steps: usize| {
        let query = query.clone();
        let url = prom.url.clone();
        async move {
            source(&url, max_steps)
                .fetch(&query, Kind::Gauge, daily(tz), window_between(w.0, w.1))
                .await
                .expect("reads")
        }
    };
    let seoul = read("Asia/Seoul", SEOUL_WINDOW, 11_000).await;
    let berlin = read("Europe/Berlin", BERLIN_WINDOW, 11_000).await;
    assert!(
        seoul.warnings.is_empty() && berlin.warnings.is_empty(),
        "{:?} {:?}",
        seoul.warnings,
        berlin.warnings
    );
    assert_local_days(
        &seoul.rows,
        &berlin.rows,
        &format!("Prometheus log:\n{}", prom.log_text()),
    );
    // In pieces of one evaluation the same days come back.
    let pieces = read("Europe/Berlin", BERLIN_WINDOW, 2).await;
    assert_local_days(&seoul.rows, &pieces.rows, "in pieces");
    // The same KPI in UTC is read at UTC midnights (the buckets a non-local KPI had before).
    let utc = source(&prom.url, 11_000)
        .fetch(
            &query,
            Kind::Gauge,
            daily("UTC"),
            window_between("2025-10-24T00:00:00Z", "2025-10-27T00:00:00Z"),
        )
        .await
        .expect("reads");
    assert!(
        utc.rows.len() == 3 && utc.rows.iter().all(|r| r.ts.timestamp() % 86_400 == 0),
        "{:?}",
        utc.rows
    );
}
