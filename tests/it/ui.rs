//! The web UI in headless Chromium, driven through chromedriver (WebDriver): register a KPI
//! with the form, move the sensitivity slider and watch the would-fire count change,
//! acknowledge an alert — against the real service and a real SQLite source.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, Utc};
use fantoccini::{Client, ClientBuilder, Locator};
use kpiwatch::app::{Application, BuildOptions};
use kpiwatch::clock::ManualClock;
use rand::SeedableRng;
use rand_distr::Distribution;
use tokio_util::sync::CancellationToken;

use crate::helpers::{init_logs, settings};

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_driver() -> Option<Driver> {
    let found = ["/usr/bin/chromedriver"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(path) = found else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "chromedriver is missing; .ci/run installs chromium-driver"
        );
        eprintln!("skipping: no chromedriver");
        return None;
    };
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let child = Command::new(path)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let deadline = Instant::now() + StdDuration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        std::thread::sleep(StdDuration::from_millis(100));
    }
    Some(Driver { child, port })
}

async fn browser(driver: &Driver, profile: &std::path::Path) -> Client {
    // The test binary links rustls with two crypto providers (dev-dependencies); pick one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".to_owned(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1280,1000", format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    ClientBuilder::rustls()
        .expect("tls")
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a browser session")
}

/// Poll a JavaScript expression until it is truthy; returns its value. The wait is generous:
/// "Find the setting" replays four weeks at every sensitivity (a debug build, beside the rest of
/// the suite on two cores, took more than 30 s once).
async fn until(c: &Client, what: &str, expr: &str) -> serde_json::Value {
    let deadline = Instant::now() + StdDuration::from_secs(120);
    loop {
        let v = c
            .execute(&format!("return ({expr});"), vec![])
            .await
            .expect("script runs");
        let truthy = match &v {
            serde_json::Value::Null | serde_json::Value::Bool(false) => false,
            serde_json::Value::String(s) => !s.is_empty(),
            _ => true,
        };
        if truthy {
            return v;
        }
        if Instant::now() > deadline {
            let body = c
                .execute("return document.body.innerText;", vec![])
                .await
                .unwrap_or_default();
            panic!("timed out waiting for {what}; the page says:\n{body}");
        }
        tokio::time::sleep(StdDuration::from_millis(200)).await;
    }
}

/// 5-minute order counts at a flat ~150 for four weeks, with a few single-bucket dips to ~95
/// (about 4.5 standard deviations: flagged at high sensitivity, not at low), and no orders
/// in the last 20 minutes (a firing alert to acknowledge).
async fn shop(path: &std::path::Path, now: DateTime<Utc>) {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .expect("shop");
    sqlx::query("CREATE TABLE order_counts (ts TEXT PRIMARY KEY, n INTEGER NOT NULL)")
        .execute(&pool)
        .await
        .expect("create");
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let poisson = rand_distr::Poisson::new(150.0).expect("rate");
    let mut tx = pool.begin().await.expect("tx");
    let mut t = now - Duration::days(35);
    let mut i = 0u32;
    while t < now - Duration::minutes(20) {
        let mut n = poisson.sample(&mut rng) as i64;
        if t > now - Duration::days(27) && i % 1500 == 700 {
            n = 95;
        }
        sqlx::query("INSERT INTO order_counts VALUES (?, ?)")
            .bind(t.format("%Y-%m-%d %H:%M:%S").to_string())
            .bind(n)
            .execute(&mut *tx)
            .await
            .expect("insert");
        t += Duration::minutes(5);
        i += 1;
    }
    tx.commit().await.expect("commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_registers_a_kpi_backtests_with_the_slider_and_acknowledges_an_alert() {
    init_logs();
    let Some(driver) = start_driver() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let now = DateTime::parse_from_rfc3339("2026-03-30T12:01:00Z")
        .expect("valid")
        .with_timezone(&Utc);
    shop(&dir.path().join("shop.db"), now).await;
    let settings = settings(
        dir.path(),
        None,
        &[
            (
                "KPIWATCH_SOURCES__SHOP__URL",
                format!("sqlite://{}", dir.path().join("shop.db").display()),
            ),
            ("KPIWATCH_SCHEDULER__BACKFILL", "35d".to_owned()),
            ("KPIWATCH_SCHEDULER__HISTORY", "35d".to_owned()),
        ],
    );
    let app = Application::build(
        settings,
        vec![crate::e2e::orders_spec("")],
        BuildOptions {
            clock: std::sync::Arc::new(ManualClock::new(now)),
            extra_sources: None,
        },
    )
    .await
    .expect("app");
    app.scheduler().run_due().await;
    let store = app.store().clone();
    let base = format!("http://127.0.0.1:{}/", app.port());
    let token = CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(token.clone()));

    let c = browser(&driver, &dir.path().join("chrome")).await;
    c.goto(&base).await.expect("opens");
    c.execute("localStorage.setItem('kpiwatch.name', 'ana');", vec![])
        .await
        .expect("js");

    // The list shows the KPI, anomalous.
    until(&c, "the KPI list", "document.body.innerText.includes('Orders')").await;

    // An event over the chart's range (the browser's own clock) is listed under the chart.
    let wall = Utc::now();
    let created = reqwest::Client::new()
        .post(format!("{base}api/events"))
        .json(&serde_json::json!({
            "name": "Spring campaign", "kpis": ["orders"],
            "start": (wall - Duration::hours(2)).to_rfc3339(),
            "end": (wall + Duration::hours(1)).to_rfc3339(),
        }))
        .send()
        .await
        .expect("POST /api/events");
    assert_eq!(created.status(), 201);

    // Slider: lower and higher sensitivity give different would-fire counts.
    c.goto(&format!("{base}#/kpi/orders")).await.expect("kpi page");
    until(
        &c,
        "the event under the chart",
        "(document.querySelector('.chart-events')?.innerText || '').includes('Spring campaign')",
    )
    .await;
    let set = |v: &str| {
        format!(
            "(() => {{ const s = document.querySelector('.slider-row input[type=range]'); s.value = '{v}'; s.dispatchEvent(new Event('input')); return true; }})()"
        )
    };
    until(
        &c,
        "the slider",
        "document.querySelector('.slider-row input[type=range]')",
    )
    .await;
    c.execute(&format!("return {};", set("0.05")), vec![])
        .await
        .expect("js");
    let low = until(
        &c,
        "a backtest at 0.05",
        "(document.querySelector('.bt-summary:not(.stale)')?.innerText || '').includes('sensitivity 0.05') && document.querySelector('.bt-summary').innerText",
    )
    .await;
    c.execute(&format!("return {};", set("0.95")), vec![])
        .await
        .expect("js");
    let high = until(
        &c,
        "a backtest at 0.95",
        "(document.querySelector('.bt-summary:not(.stale)')?.innerText || '').includes('sensitivity 0.95') && document.querySelector('.bt-summary').innerText",
    )
    .await;
    let flagged = |v: &serde_json::Value| -> u64 {
        let text = v.as_str().unwrap_or_default();
        let before = text.split(" flagged buckets").next().unwrap_or_default();
        before
            .split_whitespace()
            .last()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    assert!(flagged(&low) < flagged(&high), "low:\n{low}\nhigh:\n{high}");
    // Beside the slider: the setting within 1 alert/week (the slider snaps to it) and which
    // settings catch the injected drops.
    c.execute(
        "[...document.querySelectorAll('button')].find(b => b.innerText === 'Find the setting').click(); return true;",
        vec![],
    )
    .await
    .expect("click");
    let tuned = until(
        &c,
        "the budget's setting and the injected drops",
        "document.querySelector('.tune-out table.replay') && document.querySelector('.tune-out').innerText",
    )
    .await;
    let tuned = tuned.as_str().unwrap_or_default();
    assert!(
        tuned.contains("alerts/week") && tuned.contains("-20%:30m@busy"),
        "{tuned}"
    );
    let shot = c.screenshot().await.expect("screenshot");
    std::fs::write(dir.path().join("ui-kpi.png"), &shot).expect("write");
    if let Ok(keep) = std::env::var("KPIWATCH_UI_SCREENSHOT") {
        std::fs::write(keep, &shot).expect("write screenshot");
    }

    // Acknowledge the firing alert from the alerts page.
    c.goto(&format!("{base}#/alerts")).await.expect("alerts page");
    until(
        &c,
        "an Acknowledge button",
        "[...document.querySelectorAll('button')].find(b => b.innerText === 'Acknowledge')",
    )
    .await;
    c.execute("[...document.querySelectorAll('button')].find(b => b.innerText === 'Acknowledge').click(); return true;", vec![])
        .await
        .expect("click");
    let deadline = Instant::now() + StdDuration::from_secs(20);
    loop {
        let alerts = store.alerts(true, 10).await.expect("alerts");
        if alerts.iter().any(|a| a.acknowledged_by.as_deref() == Some("ana")) {
            break;
        }
        assert!(Instant::now() < deadline, "not acknowledged: {alerts:?}");
        tokio::time::sleep(StdDuration::from_millis(200)).await;
    }

    // Register a KPI through the form: test the query, then register.
    c.goto(&format!("{base}#/new")).await.expect("form");
    until(&c, "the form", "document.querySelector('form.reg')").await;
    let fill = r#"
        const f = document.querySelector('form.reg');
        f.querySelector('[name=id]').value = 'orders_total';
        f.querySelector('[name=title]').value = 'Orders (total)';
        f.querySelector('[name=source]').value = 'shop';
        f.querySelector('[name=interval]').value = '1h';
        f.querySelector('[name=query]').value = "SELECT ts, n AS value FROM order_counts WHERE ts >= :start AND ts < :end";
        return true;"#;
    c.execute(fill, vec![]).await.expect("fill");
    c.find(Locator::Id("test-btn"))
        .await
        .expect("test button")
        .click()
        .await
        .expect("click");
    until(&c, "the query preview", "document.querySelector('.test-ok')").await;
    c.find(Locator::Css("form.reg button[type=submit]"))
        .await
        .expect("register button")
        .click()
        .await
        .expect("click");
    until(&c, "the new KPI's page", "location.hash === '#/kpi/orders_total'").await;
    assert!(store
        .kpi_definitions()
        .await
        .expect("definitions")
        .iter()
        .any(|(id, _, _)| id == "orders_total"));

    c.close().await.expect("close");
    token.cancel();
    server.await.expect("joined").expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_in_an_alert_email_opens_the_kpi_page_showing_the_incident() {
    init_logs();
    let Some(driver) = start_driver() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let now = DateTime::parse_from_rfc3339("2026-03-30T12:01:00Z")
        .expect("valid")
        .with_timezone(&Utc);
    shop(&dir.path().join("shop.db"), now).await;
    let smtp = crate::helpers::SmtpServer::start();
    // The links in messages use `http.public_url`: here, where this test serves.
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let settings = settings(
        dir.path(),
        Some(smtp.port),
        &[
            (
                "KPIWATCH_SOURCES__SHOP__URL",
                format!("sqlite://{}", dir.path().join("shop.db").display()),
            ),
            ("KPIWATCH_SCHEDULER__BACKFILL", "35d".to_owned()),
            ("KPIWATCH_SCHEDULER__HISTORY", "35d".to_owned()),
            ("KPIWATCH_HTTP__BIND", format!("127.0.0.1:{port}")),
            ("KPIWATCH_HTTP__PUBLIC_URL", format!("http://127.0.0.1:{port}")),
        ],
    );
    let app = Application::build(
        settings,
        vec![crate::e2e::orders_spec("")],
        BuildOptions {
            clock: std::sync::Arc::new(ManualClock::new(now)),
            extra_sources: None,
        },
    )
    .await
    .expect("app");
    app.scheduler().run_due().await;
    let token = CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(token.clone()));

    // The alert e-mail, as the SMTP server received it.
    let mail = smtp
        .received()
        .into_iter()
        .find(|m| m.subject().contains("Orders dropped"))
        .expect("the alert e-mail");
    let text = mail.text();
    let link = text
        .lines()
        .find_map(|l| l.strip_prefix("Open:"))
        .map(str::trim)
        .expect("an Open: link")
        .to_owned();
    assert!(
        link.starts_with(&format!("http://127.0.0.1:{port}/#/kpi/orders?alert=")),
        "{link}"
    );
    let html = mail.html().expect("an HTML part");
    assert!(html.contains(&format!("href=\"{link}\"")), "{html}");
    let alert_id = link.rsplit('=').next().expect("id").to_owned();

    let c = browser(&driver, &dir.path().join("chrome")).await;
    c.goto(&link).await.expect("opens the link");
    let shown = until(
        &c,
        "the incident on the KPI page",
        "document.querySelector('#incident')?.innerText",
    )
    .await;
    let shown = shown.as_str().unwrap_or_default();
    assert!(shown.contains(&format!("Incident #{alert_id}")), "{shown}");
    assert!(shown.contains("firing"), "{shown}");
    assert!(shown.contains("Orders"), "the summary is there: {shown}");
    assert!(!shown.contains("{}"), "no raw JSON for people: {shown}");
    // It is the KPI's page (title, chart), not JSON.
    until(
        &c,
        "the KPI title",
        "document.querySelector('h1')?.innerText.includes('Orders')",
    )
    .await;
    until(&c, "the chart", "document.querySelector('.chart canvas')").await;
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(dir.path().join("incident.png"), png).expect("write");
    c.close().await.expect("close");
    token.cancel();
    server.await.expect("joined").expect("clean shutdown");
}

/// The card failure of `tests/it/dimensions.rs` on a SQLite shop, sliced by `drilldown`:
/// 5-minute payment attempts per country and method, card success 97 % → 80 % in the last
/// 40 minutes.
async fn payments_shop(path: &std::path::Path, now: DateTime<Utc>) {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .expect("shop");
    sqlx::query(
        "CREATE TABLE payments (ts TEXT NOT NULL, country TEXT NOT NULL, payment_method TEXT NOT NULL, \
         ok INTEGER NOT NULL, attempts INTEGER NOT NULL)",
    )
    .execute(&pool)
    .await
    .expect("create");
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    let drop_from = now - Duration::minutes(41);
    let mut tx = pool.begin().await.expect("tx");
    let mut t = now - Duration::days(3);
    while t < now {
        for (country, method, attempts) in [
            ("DE", "card", 60),
            ("DE", "paypal", 140),
            ("FR", "card", 30),
            ("FR", "paypal", 70),
        ] {
            let p = match method {
                "card" if t >= drop_from => 0.80,
                "card" => 0.97,
                _ => 0.96,
            };
            let ok = rand_distr::Binomial::new(attempts, p)
                .expect("binomial")
                .sample(&mut rng);
            sqlx::query("INSERT INTO payments VALUES (?, ?, ?, ?, ?)")
                .bind(t.format("%Y-%m-%d %H:%M:%S").to_string())
                .bind(country)
                .bind(method)
                .bind(ok as i64)
                .bind(attempts as i64)
                .execute(&mut *tx)
                .await
                .expect("insert");
        }
        t += Duration::minutes(5);
    }
    tx.commit().await.expect("commit");
}

#[tokio::test]
async fn the_alert_link_opens_the_kpi_page_with_the_slice_that_explains_the_drop_highlighted() {
    init_logs();
    let Some(driver) = start_driver() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let now = DateTime::parse_from_rfc3339("2026-03-30T12:01:00Z")
        .expect("valid")
        .with_timezone(&Utc);
    payments_shop(&dir.path().join("shop.db"), now).await;
    let smtp = crate::helpers::SmtpServer::start();
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let settings = settings(
        dir.path(),
        Some(smtp.port),
        &[
            (
                "KPIWATCH_SOURCES__SHOP__URL",
                format!("sqlite://{}", dir.path().join("shop.db").display()),
            ),
            ("KPIWATCH_SCHEDULER__BACKFILL", "3d".to_owned()),
            ("KPIWATCH_SCHEDULER__HISTORY", "3d".to_owned()),
            ("KPIWATCH_SCHEDULER__ALERT_HORIZON_BUCKETS", "12".to_owned()),
            ("KPIWATCH_HTTP__BIND", format!("127.0.0.1:{port}")),
            ("KPIWATCH_HTTP__PUBLIC_URL", format!("http://127.0.0.1:{port}")),
        ],
    );
    let spec = kpiwatch::kpi::KpiSpec::parse(
        "payment_success",
        "title = \"Payment success\"\nsource = \"shop\"\nkind = \"ratio\"\ninterval = \"5m\"\ndelay = \"1m\"\n\
         direction = \"down\"\nseasonality = \"none\"\ndrilldown = [\"payment_method\", \"country\"]",
        "SELECT ts, country, payment_method, ok AS numerator, attempts AS denominator FROM payments \
         WHERE ts >= :start AND ts < :end",
        std::path::Path::new("models/payment_success"),
    )
    .expect("model");
    let app = Application::build(
        settings,
        vec![spec],
        BuildOptions {
            clock: std::sync::Arc::new(ManualClock::new(now)),
            extra_sources: None,
        },
    )
    .await
    .expect("app");
    app.scheduler().run_due().await;
    let token = CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(token.clone()));

    let mail = smtp
        .received()
        .into_iter()
        .find(|m| m.subject().contains("Payment success dropped"))
        .unwrap_or_else(|| {
            panic!(
                "the alert e-mail among {:?}",
                smtp.received().iter().map(|m| m.subject()).collect::<Vec<_>>()
            )
        });
    let link = mail
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("Open:"))
        .map(str::trim)
        .expect("an Open: link")
        .to_owned();
    let c = browser(&driver, &dir.path().join("chrome")).await;
    c.goto(&link).await.expect("opens the link");
    until(
        &c,
        "the incident",
        "document.querySelector('#incident')?.innerText",
    )
    .await;
    // The slice that explains the drop is highlighted among the small multiples and on top of
    // the breakdown table.
    let tile = until(
        &c,
        "the highlighted card tile",
        "document.querySelector('#slices .slice-tile.explains')?.innerText",
    )
    .await;
    let tile = tile.as_str().unwrap_or_default();
    assert!(tile.contains("payment_method=card"), "{tile}");
    assert!(tile.contains("explains"), "{tile}");
    let first = c
        .execute(
            "return [...document.querySelectorAll('#slices .slice-tile')].map(t => t.dataset.slice);",
            vec![],
        )
        .await
        .expect("tiles");
    assert_eq!(first[0], "payment_method=card", "sorted by contribution: {first}");
    let row = until(
        &c,
        "the top contributor's row",
        "document.querySelector('#slices table.breakdown tr.top-contributor')?.dataset.slice",
    )
    .await;
    assert_eq!(row, "payment_method=card");
    let highlighted = c
        .execute(
            "return document.querySelectorAll('#slices .slice-tile.explains').length;",
            vec![],
        )
        .await
        .expect("count");
    assert_eq!(highlighted, 1, "only the slice that explains it");
    c.execute("document.querySelector('#slices').scrollIntoView();", vec![])
        .await
        .expect("scrolls");
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(dir.path().join("slices.png"), &png).expect("write");
    if let Ok(out) = std::env::var("TEST_SCREENSHOT_SLICES") {
        std::fs::write(out, &png).expect("write the screenshot");
    }
    c.close().await.expect("close");
    token.cancel();
    server.await.expect("joined").expect("clean shutdown");
}

/// The registration form, complete: every model field filled, the source chosen from the
/// configured ones (its driver's template shown), the draft backtested (alerts, the budget's
/// setting, injected drops), then registered and listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_full_registration_form_backtests_the_draft_then_registers_and_lists_the_kpi() {
    init_logs();
    let Some(driver) = start_driver() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let now = DateTime::parse_from_rfc3339("2026-03-30T12:01:00Z")
        .expect("valid")
        .with_timezone(&Utc);
    shop(&dir.path().join("shop.db"), now).await;
    let settings = settings(
        dir.path(),
        None,
        &[(
            "KPIWATCH_SOURCES__SHOP__URL",
            format!("sqlite://{}", dir.path().join("shop.db").display()),
        )],
    );
    let app = Application::build(
        settings,
        vec![],
        BuildOptions {
            clock: std::sync::Arc::new(ManualClock::new(now)),
            extra_sources: None,
        },
    )
    .await
    .expect("app");
    let store = app.store().clone();
    let base = format!("http://127.0.0.1:{}/", app.port());
    let token = CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(token.clone()));

    let c = browser(&driver, &dir.path().join("chrome")).await;
    c.goto(&format!("{base}#/new")).await.expect("form");
    until(
        &c,
        "the source dropdown",
        "document.querySelector('form.reg select[name=source] option[value=shop]')",
    )
    .await;
    // The SQLite source's template uses strftime; every field has help text.
    let template = until(
        &c,
        "the template",
        "document.querySelector('form.reg [name=query]').value",
    )
    .await;
    assert!(
        template.as_str().unwrap_or_default().contains("strftime"),
        "{template}"
    );
    let unhelped = c
        .execute(
            "return [...document.querySelectorAll('form.reg label.field')].filter(l => !l.querySelector('.hint')).map(l => l.innerText);",
            vec![],
        )
        .await
        .expect("js");
    assert_eq!(
        unhelped,
        serde_json::json!([]),
        "fields without help text: {unhelped}"
    );
    let fill = r#"
        const f = document.querySelector('form.reg');
        const set = (n, v) => { const e = f.querySelector(`[name=${n}]`); e.value = v; e.dispatchEvent(new Event('change')); };
        set('id', 'orders_hourly'); set('title', 'Orders (hourly)'); set('source', 'shop');
        set('kind', 'count'); set('interval', '1h'); set('delay', '2m'); set('direction', 'both');
        set('sensitivity', '0.6'); set('min_volume', '10'); set('seasonality', 'daily');
        set('timezone', 'Europe/Berlin'); set('severity', 'critical'); set('trigger', '2 of 3');
        set('recover_after', '2'); set('repeat_interval', '4h'); set('max_series', '50');
        set('owner', 'shop-team'); set('unit', 'orders'); set('labels', 'team=shop, tier=1');
        set('recipients', 'oncall@example.com'); set('description', 'Orders placed per hour.');
        set('query', "SELECT ts, n AS value FROM order_counts WHERE ts >= :start AND ts < :end");
        return true;"#;
    c.execute(fill, vec![]).await.expect("fill");
    c.find(Locator::Id("draft-bt-btn"))
        .await
        .expect("backtest button")
        .click()
        .await
        .expect("click");
    let shown = until(
        &c,
        "the draft backtest",
        "document.querySelector('.draft-bt')?.innerText || document.querySelector('#draft-bt-out .error-box')?.innerText",
    )
    .await;
    let shown = shown.as_str().unwrap_or_default().to_owned();
    assert!(
        shown.contains("in 4 weeks") && shown.contains("sensitivity 0.60"),
        "{shown}"
    );
    assert!(shown.contains("1 alert/week"), "{shown}");
    assert!(shown.contains("-20%:30m@busy"), "the injected drops: {shown}");
    c.find(Locator::Css("form.reg button[type=submit]"))
        .await
        .expect("register button")
        .click()
        .await
        .expect("click");
    until(
        &c,
        "the new KPI's page",
        "location.hash === '#/kpi/orders_hourly'",
    )
    .await;
    let (_, model, _) = store
        .kpi_definitions()
        .await
        .expect("definitions")
        .into_iter()
        .find(|(id, _, _)| id == "orders_hourly")
        .expect("stored");
    for expected in [
        "severity = \"critical\"",
        "min_volume = 10",
        "timezone = \"Europe/Berlin\"",
        "seasonality = \"daily\"",
        "trigger = \"2 of 3\"",
        "team = \"shop\"",
        "description = \"Orders placed per hour.\"",
        "repeat_interval = \"4h\"",
    ] {
        assert!(model.contains(expected), "{expected} in:\n{model}");
    }
    c.goto(&base).await.expect("list");
    until(
        &c,
        "the KPI in the list",
        "document.body.innerText.includes('Orders (hourly)')",
    )
    .await;
    c.close().await.expect("close");
    token.cancel();
    server.await.expect("joined").expect("clean shutdown");
}
