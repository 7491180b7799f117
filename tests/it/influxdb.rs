//! InfluxDB 1.x as a KPI source, against Debian's real `influxd` started in a temporary
//! directory on free loopback ports, loaded with the known order series through its HTTP
//! write API.

use std::path::Path;

use kpiwatch::clock::ManualClock;
use kpiwatch::config::SourceConfig;
use kpiwatch::kpi::{Interval, Kind, Query};
use kpiwatch::pipeline::RunOutcome;
use kpiwatch::sources::{Error, Source, Window};

use crate::helpers::{init_logs, SmtpServer};
use crate::metric_stores::{
    after, anomaly_alerts, assert_local_days, assert_same_buckets, build_app, check, daily, free_port,
    hour_value, hourly_model, known_orders, local_day_hours, outage_is_data_missing, pass, server_binary,
    stored, window_between, write_model, KnownOrders, Server, BERLIN_WINDOW, COUNTRIES, SEOUL_WINDOW,
};

/// influxd in `dir` with the HTTP API and its RPC port on free loopback ports, nothing
/// else listening, no usage reporting; with `auth`, every query needs a user.
async fn start_influxd(bin: &Path, dir: &Path, auth: bool) -> Server {
    let http = free_port();
    let rpc = free_port();
    let d = dir.display();
    let config = format!(
        "reporting-disabled = true\nbind-address = \"127.0.0.1:{rpc}\"\n\
         [meta]\n  dir = \"{d}/influx/meta\"\n\
         [data]\n  dir = \"{d}/influx/data\"\n  wal-dir = \"{d}/influx/wal\"\n  query-log-enabled = false\n\
         [http]\n  bind-address = \"127.0.0.1:{http}\"\n  log-enabled = false\n  auth-enabled = {auth}\n\
         [monitor]\n  store-enabled = false\n\
         [logging]\n  level = \"warn\"\n"
    );
    let path = dir.join("influxdb.conf");
    std::fs::write(&path, config).expect("influxdb.conf");
    let args = ["-config".to_owned(), path.display().to_string()];
    Server::start(bin, &args, dir, "influxd", http, "/ping").await
}

/// A statement as an administrator would send it (the test's setup, not kpiwatch), as
/// `admin` (InfluxDB ignores credentials while auth is off, and lets the first user be
/// created without them).
async fn admin(server: &Server, q: &str) -> serde_json::Value {
    let r = reqwest::Client::new()
        .post(format!("{}/query", server.url))
        .basic_auth("admin", Some("adminpw"))
        .form(&[("q", q), ("db", "shop")])
        .send()
        .await
        .expect("influxd answers");
    assert!(r.status().is_success(), "{q}: {}", r.status());
    r.json().await.expect("json")
}

/// Write buckets `[from, to)` of the known orders: each bucket's count in four points a
/// quarter of an hour apart, per country (`orders,country=DE n=…`).
async fn write_orders(server: &Server, known: &KnownOrders, from: usize, to: usize) {
    let mut lines = String::new();
    for b in from..to {
        for c in COUNTRIES {
            let n = known.count(b, c);
            for q in 0..4u64 {
                let part = n / 4 + u64::from(q < n % 4);
                let ts = known.at(b) + q as i64 * 900;
                lines.push_str(&format!("orders,country={c} n={part}i {ts}\n"));
            }
        }
    }
    let r = reqwest::Client::new()
        .post(format!("{}/write?db=shop&precision=s", server.url))
        .body(lines)
        .send()
        .await
        .expect("influxd answers");
    assert_eq!(r.status(), 204, "{:?}", r.text().await);
}

const ORDERS: &str = "SELECT sum(\"n\") AS value FROM \"orders\"\n\
    WHERE time >= $start AND time < $end\n\
    GROUP BY time($__interval), \"country\"\n";

#[tokio::test]
async fn influxdb_points_written_over_http_become_the_known_buckets_and_the_drop_alerts_once() {
    init_logs();
    let Some(bin) = server_binary("TEST_INFLUXD_BIN", "influxd") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let known = KnownOrders::ending_now(98);
    let mut influx = start_influxd(&bin, dir.path(), false).await;
    admin(&influx, "CREATE DATABASE shop").await;
    write_model(
        &dir.path().join("models"),
        "orders",
        &hourly_model("Orders", "influx", "count"),
        &[("query.influxql", ORDERS)],
    );

    // Four days of normal history.
    write_orders(&influx, &known, 0, known.drop_from).await;
    let smtp = SmtpServer::start();
    let clock = ManualClock::new(after(known.at(known.drop_from), 1));
    let env = [
        ("KPIWATCH_SOURCES__INFLUX__TYPE", "influxdb".to_owned()),
        ("KPIWATCH_SOURCES__INFLUX__URL", influx.url.clone()),
        ("KPIWATCH_SOURCES__INFLUX__DATABASE", "shop".to_owned()),
    ];
    let app = build_app(dir.path(), &smtp, &clock, &known, &env).await;
    let outcomes = pass(&app).await;
    // Two regions: their total and the two slices, each judged.
    assert!(
        matches!(outcomes["orders"], RunOutcome::Ok { judged, .. } if judged == 3 * known.drop_from),
        "{outcomes:?}"
    );
    assert_same_buckets(
        &stored(&app, "orders", known.start, known.end()).await,
        &known_orders(&known, 0, known.drop_from),
        "orders",
    );
    assert!(
        anomaly_alerts(&app).await.is_empty(),
        "normal history must not alert"
    );

    // Read-only by construction: a query that would write is never sent.
    let cfg: SourceConfig = toml::from_str(&format!(
        "type = \"influxdb\"\nurl = {:?}\ndatabase = \"shop\"",
        influx.url
    ))
    .expect("source config");
    let source = Source::build("influx", &cfg).expect("source");
    let window = Window {
        start: after(known.start, 0),
        end: after(known.end(), 0),
    };
    let err = source
        .fetch(
            &Query::InfluxQl(
                "SELECT * INTO \"copy\" FROM \"orders\" WHERE time >= $start AND time < $end".to_owned(),
            ),
            Kind::Count,
            kpiwatch::kpi::Buckets::utc(Interval::parse("1h").expect("valid")),
            window,
        )
        .await
        .expect_err("SELECT INTO is refused");
    assert!(matches!(&err, Error::Contract(m) if m.contains("INTO")), "{err}");
    let err = source
        .fetch(
            &Query::PromQl("sum(orders)".to_owned()),
            Kind::Count,
            kpiwatch::kpi::Buckets::utc(Interval::parse("1h").expect("valid")),
            window,
        )
        .await
        .expect_err("wrong language");
    assert!(matches!(err, Error::WrongLanguage { .. }), "{err}");
    let measurements = admin(&influx, "SHOW MEASUREMENTS").await;
    assert_eq!(
        measurements["results"][0]["series"][0]["values"],
        serde_json::json!([["orders"]]),
        "nothing was written"
    );

    // Germany's orders drop for two hours; the next run reads them and alerts once.
    write_orders(&influx, &known, known.drop_from, known.buckets).await;
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
    assert!(mail[0].text().contains("DE"), "{}", mail[0].text());

    // InfluxDB goes away: data missing, never a drop.
    influx.stop();
    outage_is_data_missing(&app, &clock, &["orders"]).await;
    assert_eq!(anomaly_alerts(&app).await.len(), 1, "no new anomaly alert");
}

#[tokio::test]
async fn check_quotes_influxdb_on_a_bad_query_and_a_missing_database_and_logs_in_as_a_reader() {
    init_logs();
    let Some(bin) = server_binary("TEST_INFLUXD_BIN", "influxd") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let influx = start_influxd(&bin, dir.path(), true).await;
    admin(
        &influx,
        "CREATE USER admin WITH PASSWORD 'adminpw' WITH ALL PRIVILEGES",
    )
    .await;
    admin(&influx, "CREATE DATABASE shop").await;
    admin(&influx, "CREATE USER kpiwatch WITH PASSWORD 'topsecret'").await;
    admin(&influx, "GRANT READ ON shop TO kpiwatch").await;
    let models = dir.path().join("models");
    write_model(
        &models,
        "good",
        &hourly_model("Good", "influx", "count"),
        &[("query.influxql", ORDERS)],
    );
    write_model(
        &models,
        "bad",
        &hourly_model("Bad", "influx", "count"),
        &[(
            "query.influxql",
            "SELECT sum(n) AS value FROM orders WHERE time >= $start AND time < $end GROUP BY time(1h",
        )],
    );
    write_model(
        &models,
        "elsewhere",
        &hourly_model("Elsewhere", "nodb", "count"),
        &[("query.influxql", ORDERS)],
    );
    write_model(
        &models,
        "locked",
        &hourly_model("Locked", "wrong", "count"),
        &[("query.influxql", ORDERS)],
    );
    let config = format!(
        "[sources.influx]\ntype = \"influxdb\"\nurl = \"{url}\"\ndatabase = \"shop\"\nusername = \"kpiwatch\"\npassword = \"topsecret\"\n\n\
         [sources.nodb]\ntype = \"influxdb\"\nurl = \"http://admin:adminpw@{host}\"\ndatabase = \"nope\"\n\n\
         [sources.wrong]\ntype = \"influxdb\"\nurl = \"{url}\"\ndatabase = \"shop\"\nusername = \"kpiwatch\"\npassword = \"guess\"\n",
        url = influx.url,
        host = influx.url.trim_start_matches("http://"),
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
        bad.contains("FAIL") && bad.contains("error parsing query"),
        "InfluxDB's own words: {bad}"
    );
    let elsewhere = line("elsewhere");
    assert!(
        elsewhere.contains("FAIL") && elsewhere.contains("database not found: nope"),
        "{elsewhere}"
    );
    let good = line("good");
    assert!(good.contains(" ok "), "the reader logs in: {good}");
    let locked = line("locked");
    assert!(
        locked.contains("FAIL")
            && locked.contains("refused kpiwatch's credentials")
            && locked.contains("401"),
        "{locked}"
    );
    for secret in ["topsecret", "adminpw", "guess"] {
        assert!(!out.contains(secret), "credentials must not leak:\n{out}");
    }
}

#[tokio::test]
async fn influxdb_reads_a_local_kpi_at_its_own_days_and_a_25_hour_day_over_25_hours() {
    init_logs();
    let Some(bin) = server_binary("TEST_INFLUXD_BIN", "influxd") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let influx = start_influxd(&bin, dir.path(), false).await;
    admin(&influx, "CREATE DATABASE shop").await;
    let lines: String = local_day_hours()
        .map(|h| format!("hourly_orders n={} {}\n", hour_value(h), h + 1800))
        .collect();
    let r = reqwest::Client::new()
        .post(format!("{}/write?db=shop&precision=s", influx.url))
        .body(lines)
        .send()
        .await
        .expect("influxd answers");
    assert_eq!(r.status(), 204, "{:?}", r.text().await);

    let cfg: SourceConfig = toml::from_str(&format!(
        "type = \"influxdb\"\nurl = {:?}\ndatabase = \"shop\"",
        influx.url
    ))
    .expect("source config");
    let source = Source::build("influx", &cfg).expect("source");
    let query = Query::InfluxQl(
        "SELECT sum(\"n\") AS value FROM \"hourly_orders\"\n\
         WHERE time >= $start AND time < $end\n\
         GROUP BY time($__interval)\n"
            .to_owned(),
    );
    let read = |tz: &'static str, w: (&'static str, &'static str)| {
        source.fetch(&query, Kind::Gauge, daily(tz), window_between(w.0, w.1))
    };
    let seoul = read("Asia/Seoul", SEOUL_WINDOW).await.expect("reads");
    let berlin = read("Europe/Berlin", BERLIN_WINDOW).await.expect("reads");
    assert!(
        seoul.warnings.is_empty() && berlin.warnings.is_empty(),
        "{:?} {:?}",
        seoul.warnings,
        berlin.warnings
    );
    assert_local_days(&seoul.rows, &berlin.rows, "InfluxDB with tz()");

    // A UTC KPI keeps InfluxDB's UTC days; a query that names its own zone is sent as
    // written, and rows off the KPI's buckets are pointed out.
    let utc = read("UTC", ("2025-10-24T00:00:00Z", "2025-10-27T00:00:00Z"))
        .await
        .expect("reads");
    assert!(
        utc.rows.len() == 3 && utc.rows.iter().all(|r| r.ts.timestamp() % 86_400 == 0),
        "{:?}",
        utc.rows
    );
    let own_zone = Query::InfluxQl(
        "SELECT sum(\"n\") AS value FROM \"hourly_orders\" WHERE time >= $start AND time < $end GROUP BY time(1d) tz('UTC')"
            .to_owned(),
    );
    let off = source
        .fetch(
            &own_zone,
            Kind::Gauge,
            daily("Asia/Seoul"),
            window_between(SEOUL_WINDOW.0, SEOUL_WINDOW.1),
        )
        .await
        .expect("reads");
    assert!(
        off.warnings
            .iter()
            .any(|w| w.contains("not stamped at the start") && w.contains("Asia/Seoul")),
        "{:?}",
        off.warnings
    );
}
