//! Silences through the API: a silenced incident is recorded but not sent; once the silence
//! is expired, the next incident is sent.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::Duration;
use kpiwatch::clock::ManualClock;
use tower::ServiceExt;

use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use axum::routing::post;
use kpiwatch::alerting::notifiers::verify_webhook_signature;

use crate::e2e::{build, build_full, build_with, drive, t0, Shop};
use crate::helpers::{init_logs, SmtpServer};

async fn call(app: &kpiwatch::app::Application, method: &str, uri: &str, body: &str) -> (StatusCode, String) {
    crate::helpers::request(app, method, uri, None, body).await
}

#[tokio::test]
async fn a_silence_suppresses_an_incident_and_its_expiry_re_enables_alerts() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = SmtpServer::start();
    let (mut shop, clock) = crate::e2e::busy_shop(dir.path()).await;
    let app = build(dir.path(), &smtp, &clock).await;
    app.scheduler().run_due().await;

    // Hostile and malformed silences are refused and change nothing.
    for bad in [
        r#"{"matchers": {}, "duration": "1h", "author": "a", "comment": "c"}"#,
        r#"{"matchers": {"kpi": "~("}, "duration": "1h", "author": "a", "comment": "c"}"#,
        r#"{"matchers": {"kpi": "orders"}, "duration": "1h", "author": "", "comment": "c"}"#,
        r#"{"matchers": {"kpi": "orders"}, "duration": "1000d", "author": "a", "comment": "c"}"#,
        r#"{"matchers": {"kpi": "orders"}, "duration": "1h", "author": "a", "comment": "c", "admin": true}"#,
        r#"{"matchers": "kpi=orders'; DROP TABLE silences; --"}"#,
    ] {
        let (status, body) = call(&app, "POST", "/api/silences", bad).await;
        // 400: not the documented shape; 422: the shape, but an invalid regex or duration.
        assert!(
            matches!(status, StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY),
            "{bad} → {status} {body}"
        );
    }
    let (_, list) = call(&app, "GET", "/api/silences", "").await;
    assert_eq!(list, "[]");

    let (status, body) = call(
        &app,
        "POST",
        "/api/silences",
        r#"{"matchers": {"kpi": "orders"}, "duration": "3h", "author": "ana", "comment": "load test"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let silence: serde_json::Value = serde_json::from_str(&body).expect("json");
    let id = silence["id"].as_i64().expect("id");

    // Orders stop for 30 minutes, then come back: recorded, not sent.
    let stop = t0() + Duration::hours(1);
    drive(&app, &clock, stop + Duration::minutes(31)).await;
    shop.traffic(stop + Duration::minutes(30), stop + Duration::hours(2))
        .await;
    drive(&app, &clock, stop + Duration::minutes(61)).await;
    assert!(smtp.received().is_empty(), "silenced: {:?}", smtp.received());
    let notes = app.store().notifications().await.expect("notifications");
    assert!(
        !notes.is_empty() && notes.iter().all(|n| n.status == "silenced"),
        "{notes:?}"
    );

    // Expire it; the next incident is sent.
    let (status, _) = call(&app, "DELETE", &format!("/api/silences/{id}"), "").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = call(&app, "DELETE", "/api/silences/99999", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    drive(&app, &clock, stop + Duration::hours(2) + Duration::minutes(31)).await;
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
}

#[tokio::test]
async fn a_firing_alert_repeats_until_acknowledged_through_its_signed_link() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = SmtpServer::start();
    let (mut shop, clock) = crate::e2e::busy_shop(dir.path()).await;
    let app = build_with(
        dir.path(),
        &smtp,
        &clock,
        "repeat_interval = \"30m\"\ntrigger = \"2 of 3\"",
    )
    .await;
    app.scheduler().run_due().await;

    // Orders stop. "2 of 3": nothing on the first empty bucket, the alert on the second.
    let stop = t0() + Duration::hours(1);
    drive(&app, &clock, stop + Duration::minutes(6)).await;
    assert!(
        smtp.received().is_empty(),
        "pending until the trigger rule is met"
    );
    let (_, open) = call(&app, "GET", "/api/alerts?open=true", "").await;
    assert!(open.contains("\"state\":\"pending\""), "{open}");
    drive(&app, &clock, stop + Duration::minutes(11)).await;
    assert_eq!(smtp.received().len(), 1);
    // Still down 35 minutes later: one reminder.
    drive(&app, &clock, stop + Duration::minutes(46)).await;
    let got = smtp.received();
    assert_eq!(
        got.len(),
        2,
        "{:?}",
        got.iter().map(|m| m.subject()).collect::<Vec<_>>()
    );
    assert!(got[1].subject().contains("STILL FIRING"), "{}", got[1].subject());

    // The link in the message: a forged signature is refused; the real one shows a button.
    let link = got[1]
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("Acknowledge: "))
        .expect("an acknowledge link")
        .trim()
        .to_owned();
    let path = &link[link.find("/ack/").expect("path")..];
    let flipped = if path.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{flipped}", &path[..path.len() - 1]);
    let (status, _) = call(&app, "GET", &forged, "").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, page) = call(&app, "GET", path, "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("<form method=\"post\">"), "{page}");
    let (status, page) = call(&app, "POST", path, "").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let (_, alerts) = call(&app, "GET", "/api/alerts?open=true", "").await;
    assert!(alerts.contains("\"acknowledged_by\":\"e-mail link\""), "{alerts}");

    // The silence link from the same message: a form whose POST silences this series.
    let silence = got[1]
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("Silence:     "))
        .expect("a silence link")
        .trim()
        .to_owned();
    let spath = silence[silence.find("/silence/").expect("path")..].to_owned();
    let (status, page) = call(&app, "GET", &spath, "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("name=\"duration\""), "{page}");
    let request = Request::builder()
        .method("POST")
        .uri(&spath)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from("duration=1h&author=ana&comment=known+outage"))
        .expect("request");
    let response = app.router().oneshot(request).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let (_, silences) = call(&app, "GET", "/api/silences", "").await;
    assert!(
        silences.contains("\"kpi\":\"orders\"") && silences.contains("known outage"),
        "{silences}"
    );

    // Acknowledged: no more reminders, however long it lasts.
    drive(&app, &clock, stop + Duration::minutes(120)).await;
    assert_eq!(smtp.received().len(), 2);

    // Back to normal: resolved, and a resolved alert cannot be acknowledged.
    shop.traffic(stop + Duration::minutes(120), stop + Duration::minutes(180))
        .await;
    drive(&app, &clock, stop + Duration::minutes(141)).await;
    assert!(smtp
        .received()
        .last()
        .expect("mail")
        .subject()
        .starts_with("[RESOLVED]"));
    let (_, all) = call(&app, "GET", "/api/alerts", "").await;
    let all: serde_json::Value = serde_json::from_str(&all).expect("json");
    let id = all[0]["id"].as_i64().expect("id");
    let (status, body) = call(&app, "POST", &format!("/api/alerts/{id}/ack"), r#"{"by": "ana"}"#).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

/// A webhook receiver on 127.0.0.1 that records what it gets; `hold` delays every answer.
#[derive(Clone, Default)]
struct Hook {
    got: Arc<Mutex<Vec<(HeaderMap, String)>>>,
    hold: Arc<Mutex<Option<std::time::Duration>>>,
}

impl Hook {
    async fn start(&self) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let me = self.clone();
        let app = axum::Router::new().route(
            "/hook",
            post(move |headers: HeaderMap, body: String| {
                let me = me.clone();
                async move {
                    me.got.lock().expect("lock").push((headers, body));
                    let hold = *me.hold.lock().expect("lock");
                    if let Some(hold) = hold {
                        tokio::time::sleep(hold).await;
                    }
                    StatusCode::OK
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        port
    }

    fn bodies(&self) -> Vec<serde_json::Value> {
        let got = self.got.lock().expect("lock");
        got.iter()
            .map(|(_, b)| serde_json::from_str(b).expect("json body"))
            .collect()
    }
}

fn hook_env(port: u16, down_port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("KPIWATCH_ALERTING__RECEIVERS__HOOK__TYPE", "webhook".to_owned()),
        (
            "KPIWATCH_ALERTING__RECEIVERS__HOOK__URL",
            format!("http://127.0.0.1:{port}/hook"),
        ),
        (
            "KPIWATCH_ALERTING__RECEIVERS__HOOK__SECRET",
            "hook-secret".to_owned(),
        ),
        ("KPIWATCH_ALERTING__RECEIVERS__DOWN__TYPE", "webhook".to_owned()),
        (
            "KPIWATCH_ALERTING__RECEIVERS__DOWN__URL",
            format!("http://127.0.0.1:{down_port}/hook"),
        ),
        (
            "KPIWATCH_ALERTING__ROUTING__RECEIVERS",
            "[\"hook\", \"down\"]".to_owned(),
        ),
    ]
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[tokio::test]
async fn routed_webhooks_get_signed_messages_and_a_dead_receiver_blocks_no_one() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = SmtpServer::start();
    let hook = Hook::default();
    let port = hook.start().await;
    let (_shop, clock) = crate::e2e::busy_shop(dir.path()).await;
    let app = build_full(dir.path(), &smtp, &clock, "", &hook_env(port, closed_port())).await;
    app.scheduler().run_due().await;

    let stop = t0() + Duration::hours(1);
    drive(&app, &clock, stop + Duration::minutes(16)).await;
    // The e-mail and the live webhook got it, whatever the dead receiver does.
    assert_eq!(smtp.received().len(), 1);
    let bodies = hook.bodies();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert_eq!(bodies[0]["event"], "firing");
    assert_eq!(bodies[0]["kpi"]["id"], "orders");
    let (headers, raw) = hook.got.lock().expect("lock")[0].clone();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let stamp: i64 = header("x-kpiwatch-timestamp").parse().expect("timestamp header");
    let signature = header("x-kpiwatch-signature");
    assert!(verify_webhook_signature(
        b"hook-secret",
        stamp,
        raw.as_bytes(),
        &signature
    ));
    assert!(!verify_webhook_signature(
        b"wrong",
        stamp,
        raw.as_bytes(),
        &signature
    ));
    // The dead one is retried later, and reported.
    let notes = app.store().notifications().await.expect("notifications");
    let dead = notes
        .iter()
        .find(|n| n.recipient == "down")
        .expect("a row for the dead receiver");
    assert_eq!(dead.status, "pending");
    assert!(dead.attempts >= 1);
    let (_, metrics) = call(&app, "GET", "/metrics", "").await;
    assert!(
        metrics.contains("receiver_failing{receiver=\"down\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("receiver_failing{receiver=\"hook\"} 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_restart_during_delivery_leaves_one_delivered_copy_per_idempotency_key() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = SmtpServer::start();
    let hook = Hook::default();
    let port = hook.start().await;
    let (_shop, clock) = crate::e2e::busy_shop(dir.path()).await;
    let mut env = hook_env(port, closed_port());
    // The dead process's claim on the message expires after this (wall clock).
    env.push(("KPIWATCH_SCHEDULER__CLAIM_TIMEOUT", "1s".to_owned()));
    let stop = t0() + Duration::hours(1);

    // The first process lives on a runtime of its own, so that it can die with every task it
    // spawned (its runs deliver too: dropping the pass alone would leave them running, still
    // holding — and renewing — their claims, as a live process should).
    let smtp = Arc::new(smtp);
    let first = {
        let (path, smtp, clock, env, hook) = (
            dir.path().to_owned(),
            Arc::clone(&smtp),
            clock.clone(),
            env.clone(),
            hook.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let cut_off = rt.block_on(async {
                let app = build_full(&path, &smtp, &clock, "", &env).await;
                app.scheduler().run_due().await;
                // Orders stop; the receiver takes the alert but answers late, and kpiwatch
                // dies first.
                drive(&app, &clock, stop + Duration::minutes(1)).await;
                *hook.hold.lock().expect("lock") = Some(std::time::Duration::from_secs(30));
                clock.advance(Duration::minutes(5));
                tokio::time::timeout(std::time::Duration::from_secs(2), app.scheduler().run_due())
                    .await
                    .is_err()
            });
            rt.shutdown_background();
            cut_off
        })
    };
    assert!(
        first.await.expect("first process"),
        "the pass was cut off mid-delivery"
    );
    assert_eq!(hook.bodies().len(), 1, "the receiver already has it");

    // Restart: once the dead process's claim has expired, the unconfirmed message is
    // delivered again with the same id, once.
    *hook.hold.lock().expect("lock") = None;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let app = build_full(dir.path(), &smtp, &clock, "", &env).await;
    drive(&app, &clock, stop + Duration::minutes(21)).await;
    let bodies = hook.bodies();
    let ids: std::collections::BTreeSet<String> = bodies
        .iter()
        .filter(|b| b["event"] == "firing")
        .map(|b| b["id"].to_string())
        .collect();
    assert_eq!(
        ids.len(),
        1,
        "one firing message, whatever the retries: {bodies:?}"
    );
    let sent: Vec<_> = app
        .store()
        .notifications()
        .await
        .expect("rows")
        .into_iter()
        .filter(|n| n.recipient == "hook")
        .collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].status, "sent");
}

#[tokio::test]
async fn simultaneous_incidents_of_one_kpis_series_go_out_as_one_email() {
    use rand::SeedableRng;
    use rand_distr::Distribution;
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = SmtpServer::start();
    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("shop.db").display()
    ))
    .await
    .expect("shop");
    sqlx::query("CREATE TABLE orders_by_country (ts TEXT, country TEXT, n INTEGER)")
        .execute(&pool)
        .await
        .expect("create");
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let stop = t0() + Duration::hours(1);
    let mut t = t0() - Duration::days(14);
    let mut tx = pool.begin().await.expect("tx");
    while t < stop {
        for country in ["DE", "FR", "NL"] {
            let n = rand_distr::Poisson::new(80.0).expect("rate").sample(&mut rng) as i64;
            sqlx::query("INSERT INTO orders_by_country VALUES (?, ?, ?)")
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
    let spec = kpiwatch::kpi::KpiSpec::parse(
        "orders_by_country",
        // Separate slice incidents (not the default grouped one): the e-mail grouping of
        // simultaneous incidents is what this test is about.
        "title = \"Orders by country\"\nsource = \"shop\"\nkind = \"count\"\ninterval = \"5m\"\ndelay = \"1m\"\ndirection = \"down\"\nslice_alerts = \"separate\"",
        "SELECT ts, country, n AS value FROM orders_by_country WHERE ts >= :start AND ts < :end",
        std::path::Path::new("models/orders_by_country"),
    )
    .expect("model");
    let settings = crate::helpers::settings(
        dir.path(),
        Some(smtp.port),
        &[
            (
                "KPIWATCH_SOURCES__SHOP__URL",
                format!("sqlite://{}", dir.path().join("shop.db").display()),
            ),
            ("KPIWATCH_SCHEDULER__BACKFILL", "14d".to_owned()),
        ],
    );
    let clock = ManualClock::new(t0() + Duration::minutes(1));
    let app = kpiwatch::app::Application::build(
        settings,
        vec![spec],
        kpiwatch::app::BuildOptions {
            clock: Arc::new(clock.clone()),
            extra_sources: None,
        },
    )
    .await
    .expect("app");
    app.scheduler().run_due().await;
    // Every country stops at once: four incidents (the total and each country), one e-mail.
    drive(&app, &clock, stop + Duration::minutes(16)).await;
    let got = smtp.received();
    assert_eq!(
        got.len(),
        1,
        "{:?}",
        got.iter().map(|m| m.subject()).collect::<Vec<_>>()
    );
    let subject = got[0].subject();
    assert!(subject.starts_with("[4 alerts]"), "{subject}");
    for country in ["DE", "FR", "NL"] {
        assert!(
            got[0].text().contains(&format!("Series:      country={country}")),
            "{country} missing: {}",
            got[0].text()
        );
    }
    let (_, alerts) = call(&app, "GET", "/api/alerts?open=true", "").await;
    let alerts: serde_json::Value = serde_json::from_str(&alerts).expect("json");
    assert_eq!(
        alerts.as_array().map(Vec::len),
        Some(4),
        "one incident per series: the total and each country"
    );
}

#[tokio::test]
async fn new_normal_feedback_re_baselines_and_the_alert_resolves_at_the_new_level() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = SmtpServer::start();
    let mut shop = Shop::create(&dir.path().join("shop.db")).await;
    let change = t0() + Duration::hours(1);
    shop.traffic(t0() - Duration::days(14), change).await;
    let clock = ManualClock::new(t0() + Duration::minutes(1));
    let app = build(dir.path(), &smtp, &clock).await;
    app.scheduler().run_due().await;

    // From `change` on, orders run at 60% of before, for good.
    let mut t = change;
    while t < change + Duration::hours(4) {
        let normal = 120.0
            + 60.0 * (((t.timestamp() % 86_400) as f64 / 3600.0 - 14.0) / 24.0 * std::f64::consts::TAU).cos();
        sqlx::query("INSERT INTO order_counts VALUES (?, ?)")
            .bind(t.format("%Y-%m-%d %H:%M:%S").to_string())
            .bind((normal * 0.6).round() as i64)
            .execute(&shop.pool)
            .await
            .expect("insert");
        t += Duration::minutes(5);
    }
    drive(&app, &clock, change + Duration::minutes(16)).await;
    let first = app
        .store()
        .anomalies(Some("orders"), None, 100)
        .await
        .expect("anomalies");
    let first = first
        .iter()
        .min_by_key(|a| a.ts)
        .expect("the drop is flagged")
        .clone();
    assert_eq!(smtp.received().len(), 1, "one alert");

    // "This is the new normal": the next buckets at the new level are judged normal and the
    // alert resolves, instead of flagging for half a day.
    let (status, _) = call(
        &app,
        "POST",
        &format!("/api/anomalies/{}/feedback", first.id),
        r#"{"kind": "new_normal", "comment": "we moved traffic to the new shop"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = call(
        &app,
        "POST",
        &format!("/api/anomalies/{}/feedback", first.id),
        r#"{"kind": "maybe"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let marked = clock_now(&clock);
    drive(&app, &clock, change + Duration::minutes(61)).await;
    let later: Vec<_> = app
        .store()
        .anomalies(Some("orders"), Some(marked.timestamp()), 100)
        .await
        .expect("anomalies")
        .into_iter()
        .filter(|a| a.ts >= marked.timestamp())
        .collect();
    assert!(
        later.is_empty(),
        "nothing flagged at the new level after the feedback: {later:?}"
    );
    let got = smtp.received();
    assert_eq!(
        got.len(),
        2,
        "{:?}",
        got.iter().map(|m| m.subject()).collect::<Vec<_>>()
    );
    assert!(got[1].subject().starts_with("[RESOLVED]"), "{}", got[1].subject());
}

fn clock_now(clock: &ManualClock) -> chrono::DateTime<chrono::Utc> {
    use kpiwatch::clock::Clock;
    clock.now()
}

/// Regression: a data-missing alert has no value (NaN, stored as JSON `null`); it must reach
/// HTTP receivers, firing and resolved, rather than fail as "no payload".
#[tokio::test]
async fn a_data_missing_alert_reaches_webhooks_when_it_fires_and_resolves() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = SmtpServer::start();
    let hook = Hook::default();
    let port = hook.start().await;
    let env = hook_env(port, closed_port());
    let (shop, clock) = crate::e2e::busy_shop(dir.path()).await;
    let app = build_full(dir.path(), &smtp, &clock, "", &env).await;
    app.scheduler().run_due().await;

    // The source goes away (kpiwatch restarts meanwhile, so no pooled connection keeps it).
    let shop_db = dir.path().join("shop.db");
    let hidden = dir.path().join("shop.db.away");
    shop.pool.close().await;
    drop(app);
    std::fs::rename(&shop_db, &hidden).expect("hide the source");
    let app = build_full(dir.path(), &smtp, &clock, "", &env).await;
    for _ in 0..4 {
        clock.advance(Duration::minutes(5));
        app.scheduler().run_due().await;
    }
    let bodies = hook.bodies();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert_eq!(bodies[0]["event"], "firing");
    assert_eq!(bodies[0]["kpi"]["id"], "orders");
    assert!(bodies[0]["values"]["value"].is_null(), "{}", bodies[0]);
    let notes = app.store().notifications().await.expect("notifications");
    let hooked = notes
        .iter()
        .find(|n| n.recipient == "hook")
        .expect("a row for the webhook");
    assert_eq!(hooked.status, "sent", "{hooked:?}");

    // Back: the resolution goes out the same way.
    std::fs::rename(&hidden, &shop_db).expect("restore the source");
    clock.advance(Duration::minutes(5));
    app.scheduler().run_due().await;
    let bodies = hook.bodies();
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    assert_eq!(bodies[1]["event"], "resolved");
}

/// Regression: an e-mail the SMTP server accepted is marked sent at once, while a webhook in
/// another lane of the same delivery pass still hangs — a kill -9 then cannot send it twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_email_is_marked_sent_while_a_webhook_hangs() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = SmtpServer::start();
    let hook = Hook::default();
    *hook.hold.lock().expect("lock") = Some(std::time::Duration::from_secs(60));
    let port = hook.start().await;
    let (_shop, clock) = crate::e2e::busy_shop(dir.path()).await;
    let app = Arc::new(build_full(dir.path(), &smtp, &clock, "", &hook_env(port, closed_port())).await);
    app.scheduler().run_due().await;
    let stop = t0() + Duration::hours(1);
    let driver = {
        let (app, clock) = (Arc::clone(&app), clock.clone());
        tokio::spawn(async move { drive(&app, &clock, stop + Duration::minutes(16)).await })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while smtp.received().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no e-mail");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut sent = false;
    for _ in 0..40 {
        let notes = app.store().notifications().await.expect("notifications");
        if notes.iter().any(|n| n.channel == "email" && n.status == "sent") {
            sent = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!hook.bodies().is_empty(), "the webhook got the request");
    assert!(!driver.is_finished(), "the webhook is still hanging");
    assert!(sent, "the accepted e-mail is marked sent while the webhook hangs");
    driver.abort();
}

/// Regression: a delivery that outlasts `claim_timeout` (a receiver hanging for longer) keeps
/// renewing its claims, so another process cannot take the message over and send it again
/// while the first attempt is still under way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_longer_than_the_claim_timeout_keeps_its_claim() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = SmtpServer::start();
    let hook = Hook::default();
    *hook.hold.lock().expect("lock") = Some(std::time::Duration::from_secs(10));
    let port = hook.start().await;
    let (_shop, clock) = crate::e2e::busy_shop(dir.path()).await;
    let mut env = hook_env(port, closed_port());
    env.push(("KPIWATCH_SCHEDULER__CLAIM_TIMEOUT", "3s".to_owned()));
    let app = Arc::new(build_full(dir.path(), &smtp, &clock, "", &env).await);
    app.scheduler().run_due().await;
    let stop = t0() + Duration::hours(1);
    let driver = {
        let (app, clock) = (Arc::clone(&app), clock.clone());
        tokio::spawn(async move { drive(&app, &clock, stop + Duration::minutes(16)).await })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while hook.bodies().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the webhook got nothing");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Two claim timeouts into the hanging request, another process looks for work.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    assert!(!driver.is_finished(), "the webhook is still hanging");
    let far = chrono::Utc::now().timestamp() + 86_400;
    let taken = app
        .store()
        .claim_notifications("another-process", far, far, 200)
        .await
        .expect("claim");
    assert!(
        !taken.iter().any(|n| n.recipient == "hook"),
        "another process took over the webhook message in flight: {taken:?}"
    );
    driver.abort();
}
