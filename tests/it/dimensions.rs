//! Dimensions people can act on, against the real PostgreSQL (source and state store): a
//! shop with `country × payment_method` whose card success falls from 97 % to 80 % while the
//! total moves about 5 points gives exactly one incident, one message per receiver, naming
//! `payment_method=card` as the top contributor with its share, resolved only after card
//! recovers; a small country's orders going to zero is a slice-only incident that names the
//! country and its share of the total; the breakdown API's contributions add up to the
//! total's deviation; the digest names the incident's slices. On SQLite: a slice incident
//! opened under `slice_alerts = "separate"` runs its course after the switch to grouped.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use kpiwatch::app::{Application, BuildOptions};
use kpiwatch::clock::{Clock, ManualClock};
use kpiwatch::kpi::KpiSpec;
use kpiwatch::pipeline::RunOutcome;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::{Executor, PgPool};

use crate::e2e::t0;
use crate::helpers::{init_logs, request_json, server_url, settings, PgDatabase, SmtpServer};

const PAYMENTS_MODEL: &str = r#"
title = "Payment success"
source = "shop"
kind = "ratio"
interval = "5m"
delay = "1m"
direction = "down"
seasonality = "none"
recipients = ["payments@example.com", "risk@example.com"]
"#;
const PAYMENTS_QUERY: &str = "SELECT ts, country, payment_method, ok AS numerator, attempts AS denominator \
     FROM payments WHERE ts >= :start AND ts < :end";

const ORDERS_MODEL: &str = r#"
title = "Orders"
source = "shop"
kind = "count"
interval = "5m"
delay = "1m"
direction = "down"
seasonality = "none"
drilldown = ["country"]
recipients = ["sales@example.com"]
"#;
const ORDERS_QUERY: &str = "SELECT ts, country, n AS value FROM orders WHERE ts >= :start AND ts < :end";

/// Attempts per 5 minutes per (country, payment method): card is 30 % of them.
const CELLS: [(&str, &str, i64); 6] = [
    ("DE", "card", 60),
    ("DE", "paypal", 140),
    ("FR", "card", 30),
    ("FR", "paypal", 70),
    ("LU", "card", 3),
    ("LU", "paypal", 7),
];

/// Orders per 5 minutes per country: LU is about 1 % of them.
const COUNTRIES: [(&str, f64); 3] = [("DE", 200.0), ("FR", 100.0), ("LU", 4.0)];

async fn build(
    dir: &Path,
    smtp: &SmtpServer,
    clock: &ManualClock,
    db: &PgDatabase,
    spec: KpiSpec,
) -> Application {
    let env = vec![
        ("KPIWATCH_SOURCES__SHOP__URL", db.url.clone()),
        ("KPIWATCH_STATE__URL", db.url.clone()),
        ("KPIWATCH_SCHEDULER__BACKFILL", "3d".to_owned()),
        ("KPIWATCH_SCHEDULER__HISTORY", "3d".to_owned()),
    ];
    Application::build(
        settings(dir, Some(smtp.port), &env),
        vec![spec],
        BuildOptions {
            clock: Arc::new(clock.clone()),
            extra_sources: None,
        },
    )
    .await
    .expect("app builds")
}

async fn drive(app: &Application, clock: &ManualClock, until: DateTime<Utc>) {
    while clock.now() < until {
        clock.advance(Duration::minutes(5));
        for (id, result) in app.scheduler().run_due().await {
            let outcome = result.unwrap_or_else(|e| panic!("{id} failed: {e}"));
            assert!(matches!(outcome, RunOutcome::Ok { .. }), "{outcome:?}");
        }
    }
}

/// Binomial draw by summing Bernoulli trials (small n).
fn binomial(rng: &mut StdRng, n: i64, p: f64) -> i64 {
    (0..n).filter(|_| rng.random::<f64>() < p).count() as i64
}

/// Poisson draw (Knuth; small means).
fn poisson(rng: &mut StdRng, mean: f64) -> i64 {
    let l = (-mean).exp();
    let (mut k, mut p) = (0, 1.0);
    loop {
        p *= rng.random::<f64>();
        if p <= l {
            return k;
        }
        k += 1;
    }
}

async fn pg(db: &PgDatabase) -> PgPool {
    PgPool::connect(&db.url).await.expect("shop db")
}

#[tokio::test]
async fn a_card_failure_is_one_incident_naming_payment_method_card_and_resolves_when_card_recovers() {
    init_logs();
    let Some(admin) = server_url("TEST_POSTGRES_URL") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let db = PgDatabase::create(&admin).await;
    let shop = pg(&db).await;
    shop.execute(
        "CREATE TABLE payments (ts timestamptz NOT NULL, country text NOT NULL, payment_method text NOT NULL, \
         ok integer NOT NULL, attempts integer NOT NULL)",
    )
    .await
    .expect("create");
    let drop_from = t0() + Duration::hours(1);
    let drop_to = drop_from + Duration::hours(2);
    let back_until = drop_to + Duration::hours(2);
    let mut rng = StdRng::seed_from_u64(11);
    let mut tx = shop.begin().await.expect("tx");
    let mut t = t0() - Duration::days(3);
    while t < back_until {
        for (country, method, attempts) in CELLS {
            let broken = method == "card" && t >= drop_from && t < drop_to;
            let p = match (method, broken) {
                (_, true) => 0.80,
                ("card", false) => 0.97,
                _ => 0.96,
            };
            sqlx::query("INSERT INTO payments VALUES ($1, $2, $3, $4, $5)")
                .bind(t)
                .bind(country)
                .bind(method)
                .bind(binomial(&mut rng, attempts, p) as i32)
                .bind(attempts as i32)
                .execute(&mut *tx)
                .await
                .expect("insert");
        }
        t += Duration::minutes(5);
    }
    tx.commit().await.expect("commit");

    let smtp = SmtpServer::start();
    let clock = ManualClock::new(t0() + Duration::minutes(1));
    let spec = KpiSpec::parse(
        "payment_success",
        PAYMENTS_MODEL,
        PAYMENTS_QUERY,
        Path::new("models/payment_success"),
    )
    .expect("valid model");
    let app = build(dir.path(), &smtp, &clock, &db, spec).await;
    app.scheduler().run_due().await;
    drive(&app, &clock, drop_from + Duration::minutes(1)).await;
    assert!(
        smtp.received().is_empty(),
        "quiet before the drop: {:?}",
        smtp.received()
    );

    // The drop: one incident, one message per receiver, naming the card slice.
    drive(&app, &clock, drop_to + Duration::minutes(1)).await;
    let got = smtp.received();
    let mut to: Vec<String> = got.iter().flat_map(|m| m.to.clone()).collect();
    to.sort();
    assert_eq!(
        to,
        ["payments@example.com", "risk@example.com"],
        "one message per receiver: {:?}",
        got.iter()
            .map(|m| (m.to.clone(), m.subject()))
            .collect::<Vec<_>>()
    );
    for m in &got {
        let subject = m.subject();
        assert!(subject.contains("Payment success dropped"), "{subject}");
        assert!(
            subject.contains("payment_method=card"),
            "the top contributor is in the subject: {subject}"
        );
        let text = m.text();
        let cause = text
            .lines()
            .find_map(|l| l.strip_prefix("Cause:"))
            .unwrap_or_else(|| panic!("a Cause: line in\n{text}"));
        let (_, after) = cause
            .split_once("payment_method=card ")
            .unwrap_or_else(|| panic!("card is the top contributor: {cause}"));
        let share: f64 = after
            .split_once("explains ")
            .and_then(|(_, s)| s.split('%').next())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("a share in {cause}"));
        assert!(share >= 60.0, "card explains most of the drop: {cause}");
        assert!(after.contains("points"), "card's own change in points: {cause}");
        assert!(!text.contains("{\""), "no raw JSON: {text}");
    }
    let alerts = app.store().alerts(false, 50).await.expect("alerts");
    let real: Vec<_> = alerts.iter().filter(|a| a.state != "cancelled").collect();
    assert_eq!(real.len(), 1, "exactly one incident: {alerts:?}");
    assert_eq!(real[0].state, "firing", "still open at the end of the drop");
    assert!(
        real[0].summary.contains("payment_method=card"),
        "{}",
        real[0].summary
    );

    // The breakdown at the last bucket of the drop adds up, and card is on top.
    let at = (drop_to - Duration::minutes(10)).to_rfc3339();
    let (status, b) = request_json(
        &app,
        "GET",
        &format!(
            "/api/kpis/payment_success/breakdown?at={}",
            at.replace('+', "%2B")
        ),
        None,
        "",
    )
    .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["dimension"], "payment_method", "{b}");
    assert_eq!(b["slices"][0]["label"], "payment_method=card", "{b}");
    for dim in ["payment_method", "country", "country, payment_method"] {
        let deviation = b["total"]["deviation_by_dimension"][dim]
            .as_f64()
            .unwrap_or_else(|| panic!("{dim}'s deviation: {b}"));
        let sum: f64 = b["slices"]
            .as_array()
            .expect("slices")
            .iter()
            .filter(|s| s["dimension"] == dim)
            .map(|s| s["contribution"].as_f64().expect("number"))
            .sum();
        assert!((sum - deviation).abs() < 1e-9, "{dim}: {sum} vs {deviation}");
    }
    let total_move =
        b["total"]["actual"].as_f64().expect("actual") - b["total"]["expected"].as_f64().expect("expected");
    assert!(
        (-0.09..-0.02).contains(&total_move),
        "the total moves about 5 points: {total_move}"
    );

    // Card recovers: one resolution per receiver, not before card is back.
    drive(&app, &clock, back_until).await;
    let got = smtp.received();
    let resolved: Vec<_> = got
        .iter()
        .filter(|m| m.subject().starts_with("[RESOLVED]"))
        .collect();
    assert_eq!(
        resolved.len(),
        2,
        "{:?}",
        got.iter().map(|m| m.subject()).collect::<Vec<_>>()
    );
    assert_eq!(
        got.len(),
        4,
        "nothing else: {:?}",
        got.iter().map(|m| m.subject()).collect::<Vec<_>>()
    );
    let alerts = app.store().alerts(false, 50).await.expect("alerts");
    let real: Vec<_> = alerts.iter().filter(|a| a.state != "cancelled").collect();
    assert_eq!(real.len(), 1, "{alerts:?}");
    let resolved_ts = real[0].resolved_ts.expect("resolved");
    assert!(
        resolved_ts >= drop_to.timestamp(),
        "resolved at {resolved_ts}, card came back at {drop_to}"
    );

    // The day's digest names the grouped incident's slices, and its numbers are the total's
    // (not the total plus its slices).
    let recipient = kpiwatch::digest::Recipient {
        address: "payments@example.com".to_owned(),
        kpis: vec!["payment_success".to_owned()],
        time: chrono::NaiveTime::MIN,
        timezone: chrono_tz::UTC,
    };
    let specs = [KpiSpec::parse(
        "payment_success",
        PAYMENTS_MODEL,
        PAYMENTS_QUERY,
        Path::new("models/payment_success"),
    )
    .expect("valid model")];
    let digest = kpiwatch::digest::build(
        app.store(),
        &specs,
        &recipient,
        t0().date_naive(),
        clock.now(),
        false,
        "http://x",
    )
    .await
    .expect("digest");
    let kpi = &digest.kpis[0];
    assert_eq!(kpi.incidents.len(), 1, "{:?}", kpi.incidents);
    assert!(
        kpi.incidents[0].series.contains("payment_method=card"),
        "{:?}",
        kpi.incidents[0]
    );
    let rendered = kpiwatch::digest::render(&digest).expect("renders");
    assert!(rendered.text.contains("payment_method=card"), "{}", rendered.text);
    assert!(!rendered.text.contains("{\""), "no raw JSON: {}", rendered.text);
    drop(app);
    shop.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn a_small_countrys_orders_going_to_zero_is_a_slice_incident_naming_its_share_of_the_total() {
    init_logs();
    let Some(admin) = server_url("TEST_POSTGRES_URL") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let db = PgDatabase::create(&admin).await;
    let shop = pg(&db).await;
    shop.execute("CREATE TABLE orders (ts timestamptz NOT NULL, country text NOT NULL, n integer NOT NULL)")
        .await
        .expect("create");
    let stop_from = t0() + Duration::hours(1);
    let stop_to = stop_from + Duration::hours(1);
    let mut rng = StdRng::seed_from_u64(5);
    let mut tx = shop.begin().await.expect("tx");
    let mut t = t0() - Duration::days(3);
    while t < stop_to + Duration::hours(1) {
        for (country, mean) in COUNTRIES {
            let n = if country == "LU" && t >= stop_from && t < stop_to {
                0
            } else {
                poisson(&mut rng, mean)
            };
            sqlx::query("INSERT INTO orders VALUES ($1, $2, $3)")
                .bind(t)
                .bind(country)
                .bind(n as i32)
                .execute(&mut *tx)
                .await
                .expect("insert");
        }
        t += Duration::minutes(5);
    }
    tx.commit().await.expect("commit");

    let smtp = SmtpServer::start();
    let clock = ManualClock::new(t0() + Duration::minutes(1));
    let spec = KpiSpec::parse("orders", ORDERS_MODEL, ORDERS_QUERY, Path::new("models/orders"))
        .expect("valid model");
    let app = build(dir.path(), &smtp, &clock, &db, spec).await;
    app.scheduler().run_due().await;
    drive(&app, &clock, stop_from + Duration::minutes(1)).await;
    assert!(smtp.received().is_empty(), "quiet before: {:?}", smtp.received());
    drive(&app, &clock, stop_to + Duration::minutes(1)).await;
    let got = smtp.received();
    let firing: Vec<_> = got
        .iter()
        .filter(|m| !m.subject().starts_with("[RESOLVED]"))
        .collect();
    assert_eq!(
        firing.len(),
        1,
        "{:?}",
        got.iter().map(|m| m.subject()).collect::<Vec<_>>()
    );
    let subject = firing[0].subject();
    assert!(subject.contains("Orders (country=LU) dropped"), "{subject}");
    let text = firing[0].text();
    let cause = text
        .lines()
        .find_map(|l| l.strip_prefix("Cause:"))
        .unwrap_or_else(|| panic!("a Cause: line in\n{text}"));
    let share: f64 = cause
        .trim()
        .strip_prefix("country=LU is ")
        .and_then(|s| s.split('%').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("LU's share of the total: {cause}"));
    assert!(
        (0.5..2.5).contains(&share),
        "LU is about 1.3 % of orders: {cause}"
    );
    assert!(
        cause.contains("inside its band"),
        "the total did not leave its band: {cause}"
    );

    // The series API filters by dimension values; the total has none.
    let range = format!(
        "from={}&to={}",
        (stop_from - Duration::hours(1)).timestamp(),
        stop_to.timestamp()
    );
    let (status, lu) = request_json(
        &app,
        "GET",
        &format!("/api/kpis/orders/series?country=LU&{range}"),
        None,
        "",
    )
    .await;
    assert_eq!(status, 200, "{lu}");
    let lu = lu.as_array().expect("series");
    assert_eq!(lu.len(), 1, "{lu:?}");
    assert_eq!(lu[0]["dims"]["country"], "LU");
    // About 4 orders per 5 minutes: LU is judged over 15-minute windows (3 × 4 ≥ 10).
    assert_eq!(lu[0]["evaluated_every_secs"], 900, "{lu:?}");
    assert_eq!(lu[0]["points"].as_array().map(Vec::len), Some(24));
    let (_, all) = request_json(&app, "GET", &format!("/api/kpis/orders/series?{range}"), None, "").await;
    assert_eq!(
        all.as_array().map(Vec::len),
        Some(4),
        "the total and three countries"
    );
    for s in all.as_array().expect("series") {
        if s["dims"]["country"] != "LU" {
            assert_eq!(s["evaluated_every_secs"], 300, "{s}");
        }
    }
    let (_, none) = request_json(
        &app,
        "GET",
        &format!("/api/kpis/orders/series?country=XX&{range}"),
        None,
        "",
    )
    .await;
    assert_eq!(none.as_array().map(Vec::len), Some(0));
    let (status, twice) = request_json(
        &app,
        "GET",
        &format!("/api/kpis/orders/series?country=LU&country=DE&{range}"),
        None,
        "",
    )
    .await;
    assert_eq!(status, 400, "one value per dimension: {twice}");
    // A filter names a dimension and a value: an empty or odd key, or no value (how a null
    // filter object is written), is refused, not silently ignored.
    for bad in ["=null", "coun%20try=LU", "1country=LU", "country=", "dimensions="] {
        let (status, body) = request_json(
            &app,
            "GET",
            &format!("/api/kpis/orders/series?{bad}&{range}"),
            None,
            "",
        )
        .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    drop(app);
    shop.close().await;
    db.drop_db().await;
}

/// Orders per country on a SQLite shop (DE 200, FR 100 per 5 minutes); DE stops in
/// `[stop_from, stop_to)`.
async fn country_orders(path: &Path, stop_from: DateTime<Utc>, stop_to: DateTime<Utc>, until: DateTime<Utc>) {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .expect("shop");
    sqlx::query("CREATE TABLE orders (ts TEXT NOT NULL, country TEXT NOT NULL, n INTEGER NOT NULL)")
        .execute(&pool)
        .await
        .expect("create");
    let mut rng = StdRng::seed_from_u64(3);
    let mut tx = pool.begin().await.expect("tx");
    let mut t = t0() - Duration::days(3);
    while t < until {
        for (country, mean) in [("DE", 200.0), ("FR", 100.0)] {
            let n = if country == "DE" && t >= stop_from && t < stop_to {
                0
            } else {
                poisson(&mut rng, mean)
            };
            sqlx::query("INSERT INTO orders VALUES (?, ?, ?)")
                .bind(t.format("%Y-%m-%d %H:%M:%S").to_string())
                .bind(country)
                .bind(n)
                .execute(&mut *tx)
                .await
                .expect("insert");
        }
        t += Duration::minutes(5);
    }
    tx.commit().await.expect("commit");
}

#[tokio::test]
async fn slice_incidents_opened_before_grouping_run_their_course_and_resolve() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let stop_from = t0() + Duration::hours(1);
    let stop_to = stop_from + Duration::minutes(30);
    let until = stop_to + Duration::hours(2);
    country_orders(&dir.path().join("shop.db"), stop_from, stop_to, until).await;
    let smtp = SmtpServer::start();
    let clock = ManualClock::new(t0() + Duration::minutes(1));
    let model = |alerts: &str| {
        KpiSpec::parse(
            "orders",
            &format!("{ORDERS_MODEL}slice_alerts = \"{alerts}\"\n")
                .replace("drilldown = [\"country\"]\n", ""),
            ORDERS_QUERY,
            Path::new("models/orders"),
        )
        .expect("valid model")
    };
    let sqlite_shop = || {
        vec![
            (
                "KPIWATCH_SOURCES__SHOP__URL",
                format!("sqlite://{}", dir.path().join("shop.db").display()),
            ),
            ("KPIWATCH_SCHEDULER__BACKFILL", "3d".to_owned()),
            ("KPIWATCH_SCHEDULER__HISTORY", "3d".to_owned()),
        ]
    };
    let build = |spec: KpiSpec| {
        let clock = clock.clone();
        let settings = settings(dir.path(), Some(smtp.port), &sqlite_shop());
        async move {
            Application::build(
                settings,
                vec![spec],
                BuildOptions {
                    clock: Arc::new(clock),
                    extra_sources: None,
                },
            )
            .await
            .expect("app builds")
        }
    };

    // Separate slice incidents: DE stops, and DE and the total each open one.
    let app = build(model("separate")).await;
    app.scheduler().run_due().await;
    drive(&app, &clock, stop_from + Duration::minutes(21)).await;
    let open: Vec<String> = app
        .store()
        .alerts(true, 10)
        .await
        .expect("alerts")
        .into_iter()
        .filter(|a| a.state == "firing")
        .map(|a| a.fingerprint)
        .collect();
    assert!(
        open.contains(&"anomaly:orders:{\"country\":\"DE\"}".to_owned()),
        "{open:?}"
    );

    // The model switches to grouped while DE is still down; DE comes back.
    drop(app);
    let app = build(model("grouped")).await;
    drive(&app, &clock, until).await;
    let alerts = app.store().alerts(false, 20).await.expect("alerts");
    let de: Vec<_> = alerts
        .iter()
        .filter(|a| a.fingerprint == "anomaly:orders:{\"country\":\"DE\"}")
        .collect();
    assert_eq!(de.len(), 1, "no new slice incident: {alerts:?}");
    assert_eq!(
        de[0].state, "resolved",
        "the old slice incident resolved: {alerts:?}"
    );
    assert!(
        alerts.iter().all(|a| a.state != "firing" && a.state != "pending"),
        "nothing left open: {alerts:?}"
    );
    let resolved = smtp
        .received()
        .iter()
        .filter(|m| m.subject().contains("[RESOLVED] Orders (country=DE) is back"))
        .count();
    assert_eq!(
        resolved,
        1,
        "{:?}",
        smtp.received().iter().map(|m| m.subject()).collect::<Vec<_>>()
    );
}
