//! The whole loop, driven by a manual clock: a source with an injected drop, the service on
//! a temporary SQLite (and PostgreSQL) state store, exactly one alert e-mail over real SMTP, no re-send after
//! a restart, one resolution e-mail when the KPI recovers; and the HTTP API on top.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use kpiwatch::app::{Application, BuildOptions};
use kpiwatch::clock::ManualClock;
use kpiwatch::kpi::KpiSpec;
use kpiwatch::pipeline::RunOutcome;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Poisson};
use sqlx::{Executor, SqlitePool};
use tokio_util::sync::CancellationToken;

use crate::helpers::{init_logs, server_url, settings, PgDatabase, SmtpServer};

pub(crate) const MODEL: &str = r#"
title = "Orders"
source = "shop"
kind = "count"
interval = "5m"
delay = "1m"
direction = "down"
recipients = ["oncall@example.com"]
"#;
pub(crate) const QUERY: &str = "SELECT ts, n AS value FROM order_counts WHERE ts >= :start AND ts < :end";

pub(crate) fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-30T12:00:00Z")
        .expect("valid")
        .with_timezone(&Utc)
}

/// Expected orders per 5 minutes: a daily cycle between 60 and 180.
fn rate(t: DateTime<Utc>) -> f64 {
    let hour = (t.timestamp() % 86_400) as f64 / 3600.0;
    120.0 + 60.0 * ((hour - 14.0) / 24.0 * std::f64::consts::TAU).cos()
}

pub(crate) struct Shop {
    pub(crate) pool: SqlitePool,
    rng: StdRng,
}

impl Shop {
    pub(crate) async fn create(path: &Path) -> Self {
        let pool = SqlitePool::connect(&format!("sqlite://{}?mode=rwc", path.display()))
            .await
            .expect("shop db");
        pool.execute("CREATE TABLE order_counts (ts TEXT PRIMARY KEY, n INTEGER NOT NULL)")
            .await
            .expect("create");
        Shop {
            pool,
            rng: StdRng::seed_from_u64(42),
        }
    }

    /// Normal traffic for the buckets in [from, to).
    pub(crate) async fn traffic(&mut self, from: DateTime<Utc>, to: DateTime<Utc>) {
        let mut tx = self.pool.begin().await.expect("tx");
        let mut t = from;
        while t < to {
            let n = Poisson::new(rate(t)).expect("rate").sample(&mut self.rng) as i64;
            sqlx::query("INSERT INTO order_counts VALUES (?, ?)")
                .bind(t.format("%Y-%m-%d %H:%M:%S").to_string())
                .bind(n)
                .execute(&mut *tx)
                .await
                .expect("insert");
            t += Duration::minutes(5);
        }
        tx.commit().await.expect("commit");
    }
}

/// The orders model with extra lines.
/// A shop with two weeks of normal orders up to an hour after `t0`, and a clock just after
/// `t0` (most tests start here).
pub(crate) async fn busy_shop(dir: &Path) -> (Shop, ManualClock) {
    let mut shop = Shop::create(&dir.join("shop.db")).await;
    shop.traffic(t0() - Duration::days(14), t0() + Duration::hours(1))
        .await;
    (shop, ManualClock::new(t0() + Duration::minutes(1)))
}

pub(crate) fn orders_spec(model_extra: &str) -> KpiSpec {
    let model = format!("{MODEL}\n{model_extra}");
    KpiSpec::parse("orders", &model, QUERY, Path::new("models/orders")).expect("valid model")
}

pub(crate) async fn build(dir: &Path, smtp: &SmtpServer, clock: &ManualClock) -> Application {
    build_with(dir, smtp, clock, "").await
}

/// Build the app with extra lines appended to the orders model.
pub(crate) async fn build_with(
    dir: &Path,
    smtp: &SmtpServer,
    clock: &ManualClock,
    model_extra: &str,
) -> Application {
    build_full(dir, smtp, clock, model_extra, &[]).await
}

/// Build the app with extra model lines and extra `KPIWATCH_*` settings.
pub(crate) async fn build_full(
    dir: &Path,
    smtp: &SmtpServer,
    clock: &ManualClock,
    model_extra: &str,
    env_extra: &[(&str, String)],
) -> Application {
    let mut env = vec![
        ("KPIWATCH_SCHEDULER__BACKFILL", "14d".to_owned()),
        ("KPIWATCH_SCHEDULER__HISTORY", "14d".to_owned()),
    ];
    env.extend(env_extra.iter().cloned());
    build_specs(dir, Some(smtp.port), clock, vec![orders_spec(model_extra)], &env).await
}

/// Build the app with these KPIs, the shop in `dir` as source `shop`, and extra settings.
pub(crate) async fn build_specs(
    dir: &Path,
    smtp_port: Option<u16>,
    clock: &ManualClock,
    specs: Vec<KpiSpec>,
    env_extra: &[(&str, String)],
) -> Application {
    let mut env = vec![(
        "KPIWATCH_SOURCES__SHOP__URL",
        format!("sqlite://{}", dir.join("shop.db").display()),
    )];
    env.extend(env_extra.iter().cloned());
    Application::build(
        settings(dir, smtp_port, &env),
        specs,
        BuildOptions {
            clock: Arc::new(clock.clone()),
            extra_sources: None,
        },
    )
    .await
    .expect("app builds")
}

/// Advance 5 minutes at a time to `until`, one scheduler pass per step.
pub(crate) async fn drive(app: &Application, clock: &ManualClock, until: DateTime<Utc>) {
    while clock_now(clock) < until {
        clock.advance(Duration::minutes(5));
        for (id, result) in app.scheduler().run_due().await {
            let outcome = result.unwrap_or_else(|e| panic!("{id} failed: {e}"));
            assert!(
                !matches!(outcome, RunOutcome::QueryError(_) | RunOutcome::DataMissing(_)),
                "{outcome:?}"
            );
        }
    }
}

fn clock_now(clock: &ManualClock) -> DateTime<Utc> {
    use kpiwatch::clock::Clock;
    clock.now()
}

#[tokio::test]
async fn a_drop_sends_exactly_one_alert_over_smtp_survives_a_restart_and_resolves_once() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let state = format!("sqlite://{}", dir.path().join("state.db").display());
    drop_alert_restart_resolve(dir.path(), &state).await;
}

#[tokio::test]
async fn a_drop_sends_exactly_one_alert_over_smtp_survives_a_restart_and_resolves_once_on_postgres() {
    init_logs();
    let Some(admin) = server_url("TEST_POSTGRES_URL") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let db = PgDatabase::create(&admin).await;
    drop_alert_restart_resolve(dir.path(), &db.url).await;
    // The state really lived in PostgreSQL.
    let pool = sqlx::PgPool::connect(&db.url).await.expect("state db");
    let (alerts, sent): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM alerts), (SELECT count(*) FROM notifications WHERE status = 'sent')",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!((alerts, sent), (1, 2));
    pool.close().await;
    assert!(!dir.path().join("state.db").exists(), "no SQLite state beside it");
    db.drop_db().await;
}

/// Build the app with the state store at `state_url`.
async fn build_on(dir: &Path, smtp: &SmtpServer, clock: &ManualClock, state_url: &str) -> Application {
    build_full(
        dir,
        smtp,
        clock,
        "",
        &[("KPIWATCH_STATE__URL", state_url.to_owned())],
    )
    .await
}

/// One drop → exactly one alert over SMTP, nothing re-sent after a restart, one resolution;
/// with the state store at `state_url`.
async fn drop_alert_restart_resolve(dir: &Path, state_url: &str) {
    let smtp = SmtpServer::start();
    let mut shop = Shop::create(&dir.join("shop.db")).await;
    // 14 days of normal history up to t0, then 2 normal hours.
    shop.traffic(t0() - Duration::days(14), t0() + Duration::hours(2))
        .await;
    let clock = ManualClock::new(t0() + Duration::minutes(1));

    let app = build_on(dir, &smtp, &clock, state_url).await;
    // First pass: backfill; history is normal, and backfill never alerts anyway.
    let first = app.scheduler().run_due().await;
    assert!(
        matches!(first[0].1, Ok(RunOutcome::Ok { judged, .. }) if judged > 4000),
        "{first:?}"
    );
    drive(&app, &clock, t0() + Duration::hours(2) + Duration::minutes(1)).await;
    assert!(
        smtp.received().is_empty(),
        "normal traffic must not alert: {:?}",
        smtp.received()
    );

    // Orders stop: no rows at all for 30 minutes (missing count buckets are zeros).
    drive(&app, &clock, t0() + Duration::hours(2) + Duration::minutes(31)).await;
    let got = smtp.received();
    assert_eq!(got.len(), 1, "exactly one alert for one incident: {got:?}");
    assert_eq!(got[0].to, vec!["oncall@example.com".to_owned()]);
    let subject = got[0].subject();
    assert!(subject.contains("Orders dropped to 0"), "{subject}");
    assert!(got[0].text().contains("Expected:"), "{}", got[0].text());

    // Restart on the same state store: nothing is sent again.
    drop(app);
    let app = build_on(dir, &smtp, &clock, state_url).await;
    app.scheduler().run_due().await;
    drive(&app, &clock, t0() + Duration::hours(2) + Duration::minutes(46)).await;
    assert_eq!(smtp.received().len(), 1, "a restart must not re-send");
    // The restarted process reports the alert it did not open itself.
    let (_, metrics) = crate::helpers::request(&app, "GET", "/metrics", None, "").await;
    assert!(metrics.contains("kpiwatch_alerts_firing 1\n"), "{metrics}");
    let anomalies = app
        .store()
        .anomalies(Some("orders"), None, 100)
        .await
        .expect("anomalies");
    assert!(
        anomalies.iter().filter(|a| a.alerted).count() >= 6,
        "{anomalies:?}"
    );

    // Orders come back (late rows for the gap stay zero): one resolution e-mail.
    let back = t0() + Duration::hours(2) + Duration::minutes(45);
    shop.traffic(back, back + Duration::hours(1)).await;
    drive(&app, &clock, back + Duration::minutes(31)).await;
    let got = smtp.received();
    assert_eq!(
        got.len(),
        2,
        "{:?}",
        got.iter().map(|m| m.subject()).collect::<Vec<_>>()
    );
    assert!(
        got[1].subject().starts_with("[RESOLVED] Orders"),
        "{}",
        got[1].subject()
    );
    let (_, metrics) = crate::helpers::request(&app, "GET", "/metrics", None, "").await;
    assert!(metrics.contains("kpiwatch_alerts_firing 0\n"), "{metrics}");
    // Every message has its own Message-ID; the resolution threads under the firing message.
    let firing_id = got[0].header("Message-ID").expect("the alert has a Message-ID");
    let resolved_id = got[1]
        .header("Message-ID")
        .expect("the resolution has a Message-ID");
    assert!(
        firing_id.starts_with('<') && firing_id.ends_with('>'),
        "{firing_id}"
    );
    assert_ne!(firing_id, resolved_id);
    assert_eq!(got[1].header("In-Reply-To").as_deref(), Some(firing_id.as_str()));
    assert!(
        got[1]
            .header("References")
            .is_some_and(|r| r.contains(&firing_id)),
        "{}",
        got[1].data
    );
    assert_eq!(
        got[0].header("In-Reply-To"),
        None,
        "the first message starts the thread"
    );
    // The link opens the KPI's page in the web UI focused on this incident, not JSON.
    assert!(
        got[0].text().contains("/#/kpi/orders?alert="),
        "{}",
        got[0].text()
    );
    assert!(!got[0].text().contains("/api/"), "{}", got[0].text());
}

#[tokio::test]
async fn the_api_serves_health_metrics_kpis_series_and_anomalies() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = SmtpServer::start();
    let mut shop = Shop::create(&dir.path().join("shop.db")).await;
    shop.traffic(t0() - Duration::days(14), t0()).await;
    let clock = ManualClock::new(t0() + Duration::minutes(1));
    let app = build(dir.path(), &smtp, &clock).await;
    app.scheduler().run_due().await;
    let base = format!("http://127.0.0.1:{}", app.port());
    let token = CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(token.clone()));
    let http = reqwest::Client::new();

    let get = |path: &str| http.get(format!("{base}{path}")).send();
    assert_eq!(get("/healthz").await.expect("healthz").status(), 200);
    assert_eq!(get("/readyz").await.expect("readyz").status(), 200);
    let metrics = get("/metrics")
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("kpi_runs_total{kpi=\"orders\",status=\"ok\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("source_query_duration_seconds"), "{metrics}");

    let kpis: serde_json::Value = get("/api/kpis").await.expect("kpis").json().await.expect("json");
    assert_eq!(kpis[0]["id"], "orders");
    assert_eq!(kpis[0]["status"], "ok");
    assert!(
        !kpis.to_string().contains("sqlite://"),
        "no source URLs in the API"
    );

    let from = (t0() - Duration::hours(2)).to_rfc3339();
    let to = t0().to_rfc3339();
    let series: serde_json::Value = http
        .get(format!("{base}/api/kpis/orders/series"))
        .query(&[("from", from.as_str()), ("to", to.as_str())])
        .send()
        .await
        .expect("series")
        .json()
        .await
        .expect("json");
    let points = series[0]["points"].as_array().expect("points");
    assert_eq!(points.len(), 24, "2 hours of 5-minute buckets");
    assert!(points[0]["expected"].as_f64().is_some(), "{}", points[0]);
    assert!(points[0]["lower"].as_f64() <= points[0]["upper"].as_f64());

    let anomalies = get("/api/anomalies?kpi=orders").await.expect("anomalies");
    assert_eq!(anomalies.status(), 200);
    // Hostile or wrong input gets a clear 4xx.
    let bad = get("/api/kpis/orders/series?from=yesterday")
        .await
        .expect("bad from");
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.expect("body").contains("from"));
    assert_eq!(get("/api/kpis/nope/series").await.expect("404").status(), 404);
    assert_eq!(
        get("/api/anomalies?kpi=x%27%3B--").await.expect("404").status(),
        404
    );
    assert_eq!(get("/api/anomalies?limit=0").await.expect("400").status(), 400);
    assert_eq!(get("/api/anomalies?bogus=1").await.expect("400").status(), 400);

    token.cancel();
    server.await.expect("joined").expect("clean shutdown");
}

#[tokio::test]
async fn a_source_outage_is_data_missing_not_a_drop_and_the_gap_is_caught_up() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = SmtpServer::start();
    let (shop, clock) = crate::e2e::busy_shop(dir.path()).await;
    let app = build(dir.path(), &smtp, &clock).await;
    app.scheduler().run_due().await;

    // The source disappears for half an hour (and kpiwatch restarts meanwhile, so no pooled
    // connection keeps the old file open).
    let shop_db = dir.path().join("shop.db");
    let hidden = dir.path().join("shop.db.away");
    shop.pool.close().await;
    drop(app);
    std::fs::rename(&shop_db, &hidden).expect("hide the source");
    let app = build(dir.path(), &smtp, &clock).await;
    for _ in 0..6 {
        clock.advance(Duration::minutes(5));
        let results = app.scheduler().run_due().await;
        assert!(
            matches!(&results[0].1, Ok(RunOutcome::DataMissing(msg)) if msg.contains("unreachable")),
            "{results:?}"
        );
    }
    let kpi = app.store().kpi("orders").await.expect("kpi").expect("row");
    assert_eq!(kpi.last_status.as_deref(), Some("data_missing"));
    assert!(app
        .store()
        .anomalies(None, None, 10)
        .await
        .expect("anomalies")
        .is_empty());

    // Back: the missed buckets are fetched in one go, judged normal, and nothing alerts.
    std::fs::rename(&hidden, &shop_db).expect("restore the source");
    clock.advance(Duration::minutes(5));
    let results = app.scheduler().run_due().await;
    assert!(
        matches!(results[0].1, Ok(RunOutcome::Ok { judged, .. }) if judged >= 7),
        "{results:?}"
    );
    let subjects: Vec<String> = smtp.received().iter().map(|m| m.subject()).collect();
    assert_eq!(subjects.len(), 2, "an outage is not a drop: {subjects:?}");
    assert!(
        subjects[1].starts_with("[RESOLVED] Orders: data is arriving again"),
        "{subjects:?}"
    );
}

#[tokio::test]
async fn changing_a_kpis_interval_refetches_its_history_at_the_new_interval() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = SmtpServer::start();
    let mut shop = Shop::create(&dir.path().join("shop.db")).await;
    shop.traffic(t0() - Duration::days(14), t0()).await;
    let clock = ManualClock::new(t0() + Duration::minutes(1));
    let app = build(dir.path(), &smtp, &clock).await;
    app.scheduler().run_due().await;
    drop(app);

    // The same KPI, now hourly.
    let hourly = KpiSpec::parse(
        "orders",
        &MODEL.replace("\"5m\"", "\"1h\""),
        QUERY,
        Path::new("models/orders"),
    )
    .expect("valid model");
    let app = build_specs(dir.path(), Some(smtp.port), &clock, vec![hourly], &[]).await;
    app.scheduler().run_due().await;
    let series = app.store().series_of("orders").await.expect("series");
    let rows = app
        .store()
        .observations(
            series[0].id,
            (t0() - Duration::days(14)).timestamp(),
            t0().timestamp(),
        )
        .await
        .expect("rows");
    assert!(rows.len() > 300, "{} hourly buckets", rows.len());
    assert!(
        rows.iter().all(|r| r.ts % 3600 == 0),
        "only hourly buckets remain"
    );
    assert!(
        rows.iter().all(|r| r.value > 500.0),
        "hourly totals, not 5-minute counts"
    );
}

/// Two processes on one state store, passing over the same buckets at the same moments: the
/// drop alerts once and resolves once, whichever process does the work.
async fn two_processes_alert_once(dir: &Path, state_url: &str) {
    let smtp = SmtpServer::start();
    let mut shop = Shop::create(&dir.join("shop.db")).await;
    let stop = t0() + Duration::hours(1);
    shop.traffic(t0() - Duration::days(14), stop).await;
    shop.traffic(stop + Duration::minutes(30), stop + Duration::hours(2))
        .await;
    let clock = ManualClock::new(t0() + Duration::minutes(1));
    let a = build_on(dir, &smtp, &clock, state_url).await;
    let b = build_on(dir, &smtp, &clock, state_url).await;
    tokio::join!(a.scheduler().run_due(), b.scheduler().run_due());
    while clock_now(&clock) < stop + Duration::minutes(90) {
        clock.advance(Duration::minutes(5));
        tokio::join!(a.scheduler().run_due(), b.scheduler().run_due());
    }
    let subjects: Vec<String> = smtp.received().iter().map(|m| m.subject()).collect();
    assert_eq!(
        subjects.len(),
        2,
        "one alert and one resolution in all: {subjects:?}"
    );
    assert!(
        subjects[0].contains("Orders dropped") && subjects[1].starts_with("[RESOLVED]"),
        "{subjects:?}"
    );
    let sent = a
        .store()
        .notifications()
        .await
        .expect("notifications")
        .into_iter()
        .filter(|n| n.status == "sent")
        .count();
    assert_eq!(sent, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_sqlite_store_send_each_alert_once() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let state = format!("sqlite://{}", dir.path().join("state.db").display());
    two_processes_alert_once(dir.path(), &state).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_postgres_store_send_each_alert_once() {
    init_logs();
    let Some(admin) = server_url("TEST_POSTGRES_URL") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let db = PgDatabase::create(&admin).await;
    two_processes_alert_once(dir.path(), &db.url).await;
    db.drop_db().await;
}

/// Regression: changing a KPI's interval during an outage keeps its firing incident (no
/// silent cancel, no second page for the same drop); the incident resolves once, at the new
/// interval, when orders are back.
#[tokio::test]
async fn changing_the_interval_mid_incident_keeps_the_incident_and_pages_once() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = SmtpServer::start();
    let (mut shop, clock) = busy_shop(dir.path()).await;
    let app = build(dir.path(), &smtp, &clock).await;
    app.scheduler().run_due().await;
    let stop = t0() + Duration::hours(1);
    drive(&app, &clock, stop + Duration::minutes(21)).await;
    assert_eq!(smtp.received().len(), 1, "the drop alerts");
    let firing = app.store().alerts(true, 10).await.expect("alerts");
    assert_eq!(firing.len(), 1, "{firing:?}");
    drop(app);

    // The same KPI, now every 10 minutes, while orders are still stopped.
    let ten = KpiSpec::parse(
        "orders",
        &MODEL.replace("\"5m\"", "\"10m\""),
        QUERY,
        Path::new("models/orders"),
    )
    .expect("valid model");
    let env = [
        ("KPIWATCH_SCHEDULER__BACKFILL", "14d".to_owned()),
        ("KPIWATCH_SCHEDULER__HISTORY", "14d".to_owned()),
    ];
    let app = build_specs(dir.path(), Some(smtp.port), &clock, vec![ten], &env).await;
    app.scheduler().run_due().await;
    drive(&app, &clock, stop + Duration::minutes(51)).await;
    let subjects: Vec<String> = smtp.received().iter().map(|m| m.subject()).collect();
    assert_eq!(
        subjects.len(),
        1,
        "no second page for the same outage: {subjects:?}"
    );
    let open = app.store().alerts(true, 10).await.expect("alerts");
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].id, firing[0].id, "the same incident");
    assert_eq!(open[0].state, "firing");

    // Orders are back: one resolution.
    let back = stop + Duration::minutes(50);
    shop.traffic(back, back + Duration::hours(2)).await;
    drive(&app, &clock, back + Duration::minutes(90)).await;
    let subjects: Vec<String> = smtp.received().iter().map(|m| m.subject()).collect();
    assert_eq!(subjects.len(), 2, "{subjects:?}");
    assert!(subjects[1].starts_with("[RESOLVED]"), "{subjects:?}");
}

/// A process that died holding a KPI's lease stops blocking it once `claim_timeout` (wall
/// clock) has passed: the survivor runs the KPI then, not after a fixed five minutes.
#[tokio::test]
async fn a_dead_holders_kpi_lease_expires_after_claim_timeout() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = SmtpServer::start();
    let (_shop, clock) = busy_shop(dir.path()).await;
    let app = build_full(
        dir.path(),
        &smtp,
        &clock,
        "",
        &[("KPIWATCH_SCHEDULER__CLAIM_TIMEOUT", "2s".to_owned())],
    )
    .await;
    // Another process took the lease (for as long as the shared setting says) and died.
    assert!(app
        .store()
        .try_lease("kpi:orders", "dead-process", 2)
        .await
        .expect("lease"));
    let blocked = app.scheduler().run_due().await;
    assert!(matches!(blocked[0].1, Ok(RunOutcome::NotDue)), "{blocked:?}");
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    let taken = app.scheduler().run_due().await;
    assert!(matches!(taken[0].1, Ok(RunOutcome::Ok { .. })), "{taken:?}");
}

/// A KPI on a dead source is retried with backoff (from the tick, doubling, capped at its
/// interval) instead of at every tick, and the healthy KPI beside it runs at every bucket.
#[tokio::test]
async fn a_dead_source_is_backed_off_and_the_healthy_kpi_keeps_its_schedule() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = SmtpServer::start();
    let (_shop, clock) = busy_shop(dir.path()).await;
    let dead = KpiSpec::parse(
        "dead_orders",
        &MODEL.replace("\"shop\"", "\"gone\""),
        "SELECT now() AS ts, 1 AS value WHERE now() >= :start AND now() < :end",
        Path::new("models/dead_orders"),
    )
    .expect("valid model");
    let gone = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let env = [
        (
            "KPIWATCH_SOURCES__GONE__URL",
            format!("postgres://postgres@127.0.0.1:{gone}/postgres"),
        ),
        // Each attempt waits this long for a connection.
        ("KPIWATCH_SOURCES__GONE__STATEMENT_TIMEOUT", "1s".to_owned()),
        ("KPIWATCH_SCHEDULER__BACKFILL", "14d".to_owned()),
        ("KPIWATCH_SCHEDULER__HISTORY", "14d".to_owned()),
    ];
    let app = build_specs(
        dir.path(),
        Some(smtp.port),
        &clock,
        vec![orders_spec(""), dead],
        &env,
    )
    .await;
    // Ten minutes of passes five seconds apart.
    let (mut dead_attempts, mut healthy_runs) = (0, 0);
    for _ in 0..120 {
        for (id, outcome) in app.scheduler().run_due().await {
            match (id.as_str(), outcome) {
                ("dead_orders", Ok(RunOutcome::DataMissing(_))) => dead_attempts += 1,
                ("dead_orders", Ok(RunOutcome::NotDue)) => {}
                ("orders", Ok(RunOutcome::Ok { .. })) => healthy_runs += 1,
                ("orders", Ok(RunOutcome::NotDue)) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        clock.advance(Duration::seconds(5));
    }
    // Waits of 1, 2, 4, … 256 s, then the 5-minute interval: attempts at 0, 5, 10, 15, 25,
    // 45, 80, 145, 275 and 535 s — 10 in ten minutes, not 120.
    assert!((9..=12).contains(&dead_attempts), "{dead_attempts} attempts");
    // The first run (backfill) and the bucket that closed (plus delay) at t0 + 6 min.
    assert_eq!(healthy_runs, 2, "{healthy_runs} runs of the healthy KPI");
}

/// After kpiwatch itself was down, the catch-up run alerts on an incident that is still open,
/// from where it began, even though most of its buckets are older than the alert horizon (the
/// detector flags every bucket of an open incident, so the newest ones carry it).
#[tokio::test]
async fn a_catch_up_after_downtime_alerts_on_the_incident_still_open_from_its_start() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = SmtpServer::start();
    let (_shop, clock) = busy_shop(dir.path()).await;
    let app = build(dir.path(), &smtp, &clock).await;
    app.scheduler().run_due().await;
    let stop = t0() + Duration::hours(1);
    drive(&app, &clock, stop - Duration::minutes(9)).await;
    assert!(smtp.received().is_empty());
    // kpiwatch is down for 40 minutes; orders stopped at `stop`, 30 minutes before it is back.
    clock.advance(Duration::minutes(40));
    app.scheduler().run_due().await;
    let got = smtp.received();
    assert_eq!(
        got.len(),
        1,
        "{:?}",
        got.iter().map(|m| m.subject()).collect::<Vec<_>>()
    );
    assert!(
        got[0].subject().contains("Orders dropped"),
        "{}",
        got[0].subject()
    );
    let open = app.store().alerts(true, 10).await.expect("alerts");
    assert_eq!(open.len(), 1, "{open:?}");
    let started = open[0].started_ts;
    assert!(
        (stop.timestamp()..=stop.timestamp() + 600).contains(&started),
        "the incident starts at the drop ({}), not at the catch-up: {started}",
        stop.timestamp()
    );
}

/// The kept detector (the fast path: only new buckets stepped) gives exactly the verdicts of a
/// full replay. Two processes with separate state stores read one shop, one with
/// `keep_detectors = false`; through the backfill, hours of normal traffic, a drop, late rows
/// restating a bucket, feedback on an anomaly and the replay start moving on (an hour of
/// `history_slack` here, so it moves once or twice), their stored verdicts are identical.
#[tokio::test]
async fn kept_detectors_give_the_same_verdicts_as_a_full_replay() {
    init_logs();
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let smtp = SmtpServer::start();
    let (mut shop, clock) = busy_shop(dir_a.path()).await;
    let slack = ("KPIWATCH_SCHEDULER__HISTORY_SLACK", "1h".to_owned());
    let fast = build_full(dir_a.path(), &smtp, &clock, "", std::slice::from_ref(&slack)).await;
    let shop_url = format!("sqlite://{}", dir_a.path().join("shop.db").display());
    let slow = build_full(
        dir_b.path(),
        &smtp,
        &clock,
        "",
        &[
            ("KPIWATCH_SOURCES__SHOP__URL", shop_url),
            ("KPIWATCH_SCHEDULER__KEEP_DETECTORS", "false".to_owned()),
            slack,
        ],
    )
    .await;
    // The replay starts of the runs (each run's window ends at the newest closed bucket).
    let starts = std::cell::RefCell::new(std::collections::BTreeSet::new());
    let replay_from = |at: DateTime<Utc>| {
        let hour = std::time::Duration::from_secs(3600);
        let end = (at.timestamp() - 60).div_euclid(300) * 300;
        let anchor = kpiwatch::pipeline::replay_anchor("orders", "{}", 300, hour);
        kpiwatch::pipeline::replay_start(std::time::Duration::from_secs(14 * 86_400), hour, anchor, end)
    };
    async fn pass(a: &Application, b: &Application, at: DateTime<Utc>) {
        let (ra, rb) = (a.scheduler().run_due().await, b.scheduler().run_due().await);
        assert_eq!(format!("{ra:?}"), format!("{rb:?}"), "at {at}");
    }
    starts.borrow_mut().insert(replay_from(clock_now(&clock)));
    pass(&fast, &slow, clock_now(&clock)).await;
    let step = |minutes: i64| {
        clock.advance(Duration::minutes(minutes));
        starts.borrow_mut().insert(replay_from(clock_now(&clock)));
    };
    // Normal traffic, then orders stop at t0 + 1 h (the shop's traffic ends there).
    for _ in 0..16 {
        step(5);
        pass(&fast, &slow, clock_now(&clock)).await;
    }
    // Late rows restate the newest closed bucket (re-read through the overlap).
    let now = clock_now(&clock);
    let newest = DateTime::<Utc>::from_timestamp((now.timestamp() - 60).div_euclid(300) * 300 - 300, 0)
        .expect("valid");
    shop.traffic(newest, newest + Duration::minutes(5)).await;
    step(5);
    pass(&fast, &slow, clock_now(&clock)).await;
    // Feedback on the first anomaly, in both stores.
    for app in [&fast, &slow] {
        let anomalies = app
            .store()
            .anomalies(Some("orders"), None, 100)
            .await
            .expect("anomalies");
        let first = anomalies
            .iter()
            .map(|a| a.id)
            .min()
            .expect("the drop was flagged");
        let (status, body) = crate::helpers::request(
            app,
            "POST",
            &format!("/api/anomalies/{first}/feedback"),
            None,
            r#"{"kind": "new_normal"}"#,
        )
        .await;
        assert!(status.is_success(), "{status} {body}");
    }
    for _ in 0..6 {
        step(5);
        pass(&fast, &slow, clock_now(&clock)).await;
    }
    assert_same_orders_verdicts(&fast, &slow).await;
    // The fast process used its kept detector on most runs; the other never did.
    async fn replays(app: &Application) -> (u64, u64) {
        let (_, text) = crate::helpers::request(app, "GET", "/metrics", None, "").await;
        let count = |path: &str| -> u64 {
            let prefix = format!("kpiwatch_detector_runs_total{{path=\"{path}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0)
        };
        (count("kept"), count("full"))
    }
    let (kept, full) = replays(&fast).await;
    // Full replays: the backfill, the feedback, and one per move of the replay start (the
    // restated bucket steps from the checkpoint written before it).
    let moves = starts.borrow().len() as u64 - 1;
    assert!(moves >= 1, "the drive spans a move of the replay start");
    assert!(
        kept >= 15 && full == 2 + moves,
        "kept {kept}, full {full}, replay starts {:?}",
        starts.borrow()
    );
    assert_eq!(replays(&slow).await.0, 0);
}

/// A counter of an application's `/metrics`, by its full name and labels.
async fn counter(app: &Application, series: &str) -> u64 {
    let (_, text) = crate::helpers::request(app, "GET", "/metrics", None, "").await;
    let prefix = format!("{series} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_run_with_a_kept_detector_reads_only_the_new_buckets_and_an_old_restated_bucket_replays() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    light_runs(dir.path(), None).await;
}

#[tokio::test]
async fn a_run_with_a_kept_detector_reads_only_the_new_buckets_and_an_old_restated_bucket_replays_on_postgres(
) {
    init_logs();
    let Some(admin) = server_url("TEST_POSTGRES_URL") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let db = PgDatabase::create(&admin).await;
    light_runs(dir.path(), Some(db.url.clone())).await;
}

/// Runs of a 5-minute KPI with 14 days of history beside a process that always replays: the
/// kept detector's runs read one stored bucket each (not the 4,000 of the history); a bucket
/// restated a day back (directly in the store, as no overlap would) bumps the series'
/// revision and sends the next run down the full replay; the verdicts stay those of the
/// replaying process throughout.
async fn light_runs(dir: &Path, state_url: Option<String>) {
    let smtp = SmtpServer::start();
    let reference_dir = tempfile::tempdir().expect("tempdir");
    let (_shop, clock) = busy_shop(dir).await;
    let shop_url = format!("sqlite://{}", dir.join("shop.db").display());
    let env: Vec<(&str, String)> = state_url
        .into_iter()
        .map(|url| ("KPIWATCH_STATE__URL", url))
        .collect();
    let fast = build_full(dir, &smtp, &clock, "", &env).await;
    let slow = build_full(
        reference_dir.path(),
        &smtp,
        &clock,
        "",
        &[
            ("KPIWATCH_SOURCES__SHOP__URL", shop_url),
            ("KPIWATCH_SCHEDULER__KEEP_DETECTORS", "false".to_owned()),
        ],
    )
    .await;
    async fn pass(a: &Application, b: &Application, clock: &ManualClock) {
        let (ra, rb) = (a.scheduler().run_due().await, b.scheduler().run_due().await);
        assert_eq!(format!("{ra:?}"), format!("{rb:?}"), "at {}", clock_now(clock));
    }
    let read = |path: &'static str| {
        let fast = &fast;
        async move {
            counter(
                fast,
                &format!("kpiwatch_detector_observations_read_total{{path=\"{path}\"}}"),
            )
            .await
        }
    };
    pass(&fast, &slow, &clock).await;
    let backfill = read("full").await;
    assert!(backfill > 4000, "the backfill replays 14 days: {backfill} rows");
    for _ in 0..6 {
        clock.advance(Duration::minutes(5));
        pass(&fast, &slow, &clock).await;
    }
    // Each run stepped its one new bucket from the kept detector, and read only that.
    assert_eq!(detector_runs(&fast, "kept").await, 6);
    assert_eq!(read("kept").await, 6);
    assert_eq!(
        (detector_runs(&fast, "full").await, read("full").await),
        (1, backfill)
    );

    // Restate a bucket a day back in both stores.
    let mut revs = Vec::new();
    for app in [&fast, &slow] {
        let store = app.store();
        let series = store.series_of("orders").await.expect("series");
        let (id, until) = (series[0].id, series[0].evaluated_until.expect("judged"));
        let before = store
            .series_revision(id, 0)
            .await
            .expect("revision")
            .expect("series");
        let old = until - 86_400;
        let mut rows = store.observations(id, old, old + 300).await.expect("rows");
        assert_eq!(rows.len(), 1);
        rows[0].value += 40.0;
        store.upsert_observations(id, &rows).await.expect("restate");
        let after = store
            .series_revision(id, 0)
            .await
            .expect("revision")
            .expect("series");
        revs.push((before.obs_rev, after.obs_rev));
    }
    assert!(revs.iter().all(|(b, a)| a > b), "{revs:?}");
    clock.advance(Duration::minutes(5));
    pass(&fast, &slow, &clock).await;
    assert_eq!(
        detector_runs(&fast, "full").await,
        2,
        "the restated bucket replays"
    );
    assert_eq!(detector_runs(&fast, "checkpoint").await, 0);
    assert!(read("full").await > 2 * backfill - 100);
    // Then back to the kept detector, through the drop at t0 + 1 h.
    for _ in 0..10 {
        clock.advance(Duration::minutes(5));
        pass(&fast, &slow, &clock).await;
    }
    assert_eq!(detector_runs(&fast, "kept").await, 16);
    assert_eq!(read("kept").await, 16);
    assert_same_orders_verdicts(&fast, &slow).await;
}

/// `kpiwatch_detector_runs_total{path}` of an application.
async fn detector_runs(app: &Application, path: &str) -> u64 {
    let (_, text) = crate::helpers::request(app, "GET", "/metrics", None, "").await;
    let prefix = format!("kpiwatch_detector_runs_total{{path=\"{path}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_restarted_process_steps_from_the_stored_checkpoint_with_the_verdicts_of_a_full_replay() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let state = format!("sqlite://{}", dir.path().join("state.db").display());
    checkpoint_takeover(dir.path(), &state).await;
}

#[tokio::test]
async fn a_process_taking_over_on_postgres_steps_from_the_stored_checkpoint_with_the_verdicts_of_a_full_replay(
) {
    init_logs();
    let Some(admin) = server_url("TEST_POSTGRES_URL") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let db = PgDatabase::create(&admin).await;
    checkpoint_takeover(dir.path(), &db.url).await;
    db.drop_db().await;
}

/// A process runs the orders KPI on the store at `state_url` (checkpoints every 10 minutes of
/// 5-minute buckets); then a new process with an empty detector cache takes over on the same
/// store and steps from the checkpoint; then ones that find the checkpoint damaged or of
/// another format replay. Every verdict equals that of a process that always replays.
async fn checkpoint_takeover(dir: &Path, state_url: &str) {
    let smtp = SmtpServer::start();
    let reference_dir = tempfile::tempdir().expect("tempdir");
    let (mut shop, clock) = busy_shop(dir).await;
    let shop_url = format!("sqlite://{}", dir.join("shop.db").display());
    let on_store = |extra: &[(&'static str, String)]| {
        let mut env = vec![
            ("KPIWATCH_STATE__URL", state_url.to_owned()),
            ("KPIWATCH_SCHEDULER__CHECKPOINT_EVERY", "10m".to_owned()),
        ];
        env.extend(extra.iter().cloned());
        env
    };
    let first = build_full(dir, &smtp, &clock, "", &on_store(&[])).await;
    let reference = build_full(
        reference_dir.path(),
        &smtp,
        &clock,
        "",
        &[
            ("KPIWATCH_SOURCES__SHOP__URL", shop_url),
            ("KPIWATCH_SCHEDULER__KEEP_DETECTORS", "false".to_owned()),
        ],
    )
    .await;
    async fn pass(app: &Application, reference: &Application, clock: &ManualClock) {
        let (a, b) = (
            app.scheduler().run_due().await,
            reference.scheduler().run_due().await,
        );
        assert_eq!(format!("{a:?}"), format!("{b:?}"), "at {}", clock_now(clock));
    }
    // Backfill (a full replay, checkpointed at once), then three runs: the one 10 minutes of
    // buckets later writes the checkpoint again, the last leaves it one run behind.
    pass(&first, &reference, &clock).await;
    for _ in 0..3 {
        clock.advance(Duration::minutes(5));
        pass(&first, &reference, &clock).await;
    }
    assert_eq!(
        (
            detector_runs(&first, "full").await,
            detector_runs(&first, "kept").await
        ),
        (1, 3)
    );
    let store = first.store().clone();
    let series = store.series_of("orders").await.expect("series")[0].clone();
    let saved = store
        .checkpoint(series.id)
        .await
        .expect("read")
        .expect("a checkpoint was written");
    let judged = series.evaluated_until.expect("judged");
    assert_eq!(
        saved.upto,
        judged - 300,
        "the checkpoint is one run behind the verdicts"
    );
    assert_eq!(saved.format, kpiwatch::pipeline::CHECKPOINT_FORMAT);
    assert!(saved.state.len() > 1000, "{} bytes", saved.state.len());

    // A new process (empty cache) takes over: it loads the checkpoint, then keeps its detector.
    let second = build_full(dir, &smtp, &clock, "", &on_store(&[])).await;
    for _ in 0..3 {
        clock.advance(Duration::minutes(5));
        pass(&second, &reference, &clock).await;
    }
    // The orders stop an hour after t0: a drop, judged from the checkpoint's line.
    for _ in 0..9 {
        clock.advance(Duration::minutes(5));
        pass(&second, &reference, &clock).await;
    }
    assert_eq!(
        (
            detector_runs(&second, "checkpoint").await,
            detector_runs(&second, "kept").await,
            detector_runs(&second, "full").await
        ),
        (1, 11, 0)
    );

    // A damaged checkpoint, then one of another format (a newer build wrote it): each new
    // process replays instead, and writes a good checkpoint again.
    for damage in ["corrupt", "format"] {
        let row = store
            .checkpoint(series.id)
            .await
            .expect("read")
            .expect("checkpoint");
        let mut bytes = row.state.clone();
        match damage {
            "corrupt" => bytes.truncate(bytes.len() / 3),
            _ => bytes[0] = 0x7e, // zigzag varint 63: a format this build never wrote
        }
        store
            .save_checkpoint(series.id, row.upto, row.seen, row.format, &bytes)
            .await
            .expect("write");
        let next = build_full(dir, &smtp, &clock, "", &on_store(&[])).await;
        clock.advance(Duration::minutes(5));
        pass(&next, &reference, &clock).await;
        assert_eq!(
            (
                detector_runs(&next, "full").await,
                detector_runs(&next, "checkpoint").await
            ),
            (1, 0),
            "{damage}"
        );
        let rewritten = store
            .checkpoint(series.id)
            .await
            .expect("read")
            .expect("checkpoint");
        assert!(rewritten.state != bytes && rewritten.upto > row.upto, "{damage}");
    }
    // Late rows restate a bucket before the checkpoint's end: the tail no longer matches, so
    // a new process replays.
    let now = clock_now(&clock);
    let newest = DateTime::<Utc>::from_timestamp((now.timestamp() - 60).div_euclid(300) * 300 - 300, 0)
        .expect("valid");
    shop.traffic(newest, newest + Duration::minutes(5)).await;
    let last = build_full(dir, &smtp, &clock, "", &on_store(&[])).await;
    clock.advance(Duration::minutes(5));
    pass(&last, &reference, &clock).await;
    assert_eq!(
        (
            detector_runs(&last, "full").await,
            detector_runs(&last, "checkpoint").await
        ),
        (1, 0)
    );

    // Every verdict, bucket for bucket, as the process that always replays judged it.
    assert_same_orders_verdicts(&last, &reference).await;
}

/// Every stored verdict of the `orders` total, bucket for bucket, is the same in both
/// applications' stores — more than 4,000 of them, the drop among them.
async fn assert_same_orders_verdicts(a: &Application, b: &Application) {
    async fn verdicts(app: &Application) -> Vec<kpiwatch::store::EvaluationRow> {
        let store = app.store();
        let series = store.series_of("orders").await.expect("series");
        store
            .evaluations(series[0].id, 0, i64::MAX)
            .await
            .expect("evaluations")
    }
    let (a, b) = (verdicts(a).await, verdicts(b).await);
    assert!(a.len() > 4000, "{} verdicts", a.len());
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x, y);
    }
    assert!(a.iter().any(|e| e.anomaly), "the drop is among them");
}
