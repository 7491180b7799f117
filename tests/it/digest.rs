//! The daily digest end to end: a state store filled by running the detector over a series
//! with a known incident, the digest delivered over real SMTP at the recipient's local time,
//! its MIME structure checked, no second copy after a restart, a late catch-up, and the
//! preview rendered by headless Chromium.

use chrono::{DateTime, Duration, Utc};
use kpiwatch::clock::ManualClock;
use mail_parser::MimeHeaders;

use crate::e2e::{build_full, drive, Shop};
use crate::helpers::{init_logs, SmtpServer};

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("valid")
        .with_timezone(&Utc)
}

fn digest_env() -> Vec<(&'static str, String)> {
    vec![
        ("KPIWATCH_DIGEST__ENABLED", "true".to_owned()),
        ("KPIWATCH_DIGEST__TIME", "08:00".to_owned()),
        ("KPIWATCH_DIGEST__TIMEZONE", "Europe/Berlin".to_owned()),
        (
            "KPIWATCH_DIGEST__RECIPIENTS",
            r#"[{address = "cfo@example.com", kpis = ["*"], time = "06:00"}]"#.to_owned(),
        ),
    ]
}

/// The orders KPI and a daily total of the same table, both e-mailed to oncall@.
async fn build_two(
    dir: &std::path::Path,
    smtp: &SmtpServer,
    clock: &ManualClock,
    env: &[(&str, String)],
) -> kpiwatch::app::Application {
    let daily = kpiwatch::kpi::KpiSpec::parse(
        "a_orders_daily",
        "title = \"Orders per day\"\nsource = \"shop\"\nkind = \"gauge\"\ninterval = \"1d\"\nrecipients = [\"oncall@example.com\"]",
        "SELECT date(ts) AS ts, SUM(n) AS value FROM order_counts WHERE ts >= :start AND ts < :end GROUP BY 1",
        std::path::Path::new("models/a_orders_daily"),
    )
    .expect("daily model");
    let mut env: Vec<(&str, String)> = env.to_vec();
    env.push((
        "KPIWATCH_SOURCES__SHOP__URL",
        format!("sqlite://{}", dir.join("shop.db").display()),
    ));
    env.push(("KPIWATCH_SCHEDULER__BACKFILL", "14d".to_owned()));
    env.push(("KPIWATCH_SCHEDULER__HISTORY", "14d".to_owned()));
    // The replay covers exactly those 14 days: with slack it also replays the backfill's
    // first, partial day (from 14:00), and the daily KPI then flags the outage day's -6 %
    // too (here only the orders KPI is meant to be anomalous).
    env.push(("KPIWATCH_SCHEDULER__HISTORY_SLACK", "0s".to_owned()));
    let settings = crate::helpers::settings(dir, Some(smtp.port), &env);
    kpiwatch::app::Application::build(
        settings,
        vec![daily, crate::e2e::orders_spec("")],
        kpiwatch::app::BuildOptions {
            clock: std::sync::Arc::new(clock.clone()),
            extra_sources: None,
        },
    )
    .await
    .expect("app")
}

#[tokio::test]
async fn the_digest_arrives_once_at_local_time_with_charts_and_yesterdays_incident() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = SmtpServer::start();
    let mut shop = Shop::create(&dir.path().join("shop.db")).await;
    // Normal orders for two weeks, then none from 14:00 to 15:00 UTC on 2026-03-30, then normal.
    let outage = at("2026-03-30T14:00:00Z");
    shop.traffic(outage - Duration::days(14), outage).await;
    shop.traffic(outage + Duration::hours(1), at("2026-03-31T08:00:00Z"))
        .await;
    let clock = ManualClock::new(outage - Duration::hours(1));
    let env = digest_env();
    let app = build_two(dir.path(), &smtp, &clock, &env).await;
    app.scheduler().run_due().await;
    drive(&app, &clock, outage + Duration::minutes(100)).await;
    let is_digest = |m: &crate::helpers::Received| m.subject().contains("kpiwatch daily digest");
    let alerts: Vec<String> = smtp
        .received()
        .iter()
        .filter(|m| !is_digest(m))
        .map(|m| m.subject())
        .collect();
    assert_eq!(alerts.len(), 2, "the outage fired and resolved: {alerts:?}");
    let for_day = |day: &str| -> Vec<crate::helpers::Received> {
        smtp.received()
            .into_iter()
            .filter(|m| is_digest(m) && m.subject().contains(day))
            .collect()
    };
    // First started after both send times on 2026-03-30: the day before's digests are caught
    // up, and not marked late: a brand-new install was not down at send time.
    let caught_up = for_day("2026-03-29");
    assert_eq!(caught_up.len(), 2);
    assert!(
        caught_up.iter().all(|m| !m.subject().starts_with("[LATE]")),
        "{:?}",
        caught_up.iter().map(|m| m.subject()).collect::<Vec<_>>()
    );

    // 07:59 Berlin (05:59 UTC, summer time): the 08:00 digest is not due; the 06:00 one for
    // cfo@ went out at 04:00 UTC's first pass, which happens now: late.
    clock.set(at("2026-03-31T05:59:00Z"));
    app.scheduler().run_due().await;
    let got = for_day("2026-03-30");
    assert_eq!(
        got.len(),
        1,
        "{:?}",
        got.iter().map(|m| m.subject()).collect::<Vec<_>>()
    );
    assert_eq!(got[0].to, vec!["cfo@example.com".to_owned()]);
    assert!(got[0].subject().starts_with("[LATE]"), "{}", got[0].subject());

    clock.set(at("2026-03-31T06:00:30Z"));
    app.scheduler().run_due().await;
    let got = for_day("2026-03-30");
    assert_eq!(got.len(), 2);
    let digest = got
        .iter()
        .find(|m| m.to == vec!["oncall@example.com".to_owned()])
        .expect("oncall's digest");
    let subject = digest.subject();
    assert!(!subject.starts_with("[LATE]"), "on time: {subject}");

    let parsed = mail_parser::MessageParser::default()
        .parse(digest.data.as_bytes())
        .expect("MIME");
    let html = parsed.body_html(0).expect("an HTML part").into_owned();
    let text = parsed.body_text(0).expect("a text part").into_owned();
    // Both KPIs, the anomalous one first (ranked by impact, not alphabetically).
    let first = text.find("[ANOMALOUS] Orders").expect("orders in the text part");
    let second = text
        .find("Orders per day")
        .expect("the daily KPI in the text part");
    assert!(first < second, "{text}");
    let (h1, h2) = (
        html.find(">Orders<").expect("orders"),
        html.find("Orders per day").expect("daily"),
    );
    assert!(h1 < h2);
    assert!(
        html.contains("cid:chart-orders"),
        "the chart is referenced inline"
    );
    let inline: Vec<_> = parsed
        .attachments()
        .filter(|a| a.content_id().is_some_and(|id| id.contains("chart-orders")))
        .collect();
    assert_eq!(inline.len(), 1, "one inline chart");
    assert!(inline[0].contents().starts_with(b"\x89PNG"), "a PNG");
    assert!(text.to_lowercase().contains("anomalous"), "{text}");
    assert!(
        text.contains("16:00, lasted"),
        "yesterday's incident at its Berlin time:\n{text}"
    );

    // Once a day: another pass and a restart send nothing more.
    let before = smtp.received().len();
    app.scheduler().run_due().await;
    drop(app);
    let app = build_two(dir.path(), &smtp, &clock, &env).await;
    clock.set(at("2026-03-31T07:00:00Z"));
    app.scheduler().run_due().await;
    assert_eq!(smtp.received().len(), before, "no second copy");
}

/// The plain-text part of a received message.
fn text_part(m: &crate::helpers::Received) -> String {
    let parsed = mail_parser::MessageParser::default()
        .parse(m.data.as_bytes())
        .expect("MIME");
    parsed.body_text(0).expect("a text part").into_owned()
}

/// A digest waits for its KPIs' runs in the store, whichever process runs them: while another
/// process (a replica) holds the KPIs' leases — a run in flight there, a backfill say — the
/// digest is not sent, even past its time; it goes once the runs have covered the day, and
/// reports every KPI from them (not "missing data").
#[tokio::test]
async fn a_digest_waits_for_the_runs_another_process_has_in_flight() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = SmtpServer::start();
    let mut shop = Shop::create(&dir.path().join("shop.db")).await;
    shop.traffic(at("2026-03-16T00:00:00Z"), at("2026-03-31T06:00:00Z"))
        .await;
    // 06:00:30 Berlin: cfo@'s 06:00 digest of 2026-03-30 is due; nothing has run yet.
    let clock = ManualClock::new(at("2026-03-31T04:00:30Z"));
    let app = build_two(dir.path(), &smtp, &clock, &digest_env()).await;
    let leases = ["kpi:a_orders_daily", "kpi:orders"];
    for name in leases {
        assert!(app
            .store()
            .try_lease(name, "replica-a", 3600)
            .await
            .expect("lease"));
    }
    let digests = || -> Vec<crate::helpers::Received> {
        smtp.received()
            .into_iter()
            .filter(|m| m.subject().contains("kpiwatch daily digest"))
            .collect()
    };
    for t in [
        "2026-03-31T04:00:30Z",
        "2026-03-31T04:20:00Z",
        "2026-03-31T05:00:00Z",
    ] {
        clock.set(at(t));
        app.scheduler().run_due().await;
        assert!(
            digests().is_empty(),
            "at {t} the digest waits for the replica's runs"
        );
    }
    // The replica lets go (its runs ended, or it died and its leases expired): this process
    // runs the KPIs, and the digest follows in the same pass.
    for name in leases {
        app.store()
            .release_lease(name, "replica-a")
            .await
            .expect("release");
    }
    clock.set(at("2026-03-31T05:01:00Z"));
    app.scheduler().run_due().await;
    let got = digests();
    assert_eq!(
        got.len(),
        1,
        "{:?}",
        got.iter().map(|m| m.subject()).collect::<Vec<_>>()
    );
    assert_eq!(got[0].to, vec!["cfo@example.com".to_owned()]);
    let text = text_part(&got[0]);
    assert!(!text.contains("[MISSING DATA]"), "{text}");
    assert!(text.contains("Orders per day"), "{text}");
}

#[tokio::test]
async fn the_preview_renders_in_headless_chromium_and_is_not_blank() {
    init_logs();
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(chromium) = chromium else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "chromium is missing; .ci/run installs it (apt-get install chromium)"
        );
        eprintln!("skipping: no chromium");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = SmtpServer::start();
    let mut shop = Shop::create(&dir.path().join("shop.db")).await;
    let now = at("2026-03-31T06:00:00Z");
    shop.traffic(now - Duration::days(14), now).await;
    let clock = ManualClock::new(now);
    let app = build_full(dir.path(), &smtp, &clock, "", &digest_env()).await;
    app.scheduler().run_due().await;
    drop(app);
    // The preview command, as a user runs it: models on disk, state from the config.
    crate::helpers::write_orders_model(dir.path());
    let out = dir.path().join("digest.html");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_kpiwatch"))
        .current_dir(dir.path())
        .env(
            "KPIWATCH_STATE__URL",
            format!("sqlite://{}", dir.path().join("state.db").display()),
        )
        .env(
            "KPIWATCH_SOURCES__SHOP__URL",
            format!("sqlite://{}", dir.path().join("shop.db").display()),
        )
        .args([
            "digest",
            "--preview",
            "--date",
            "2026-03-30",
            "--recipient",
            "oncall@example.com",
            "--out",
        ])
        .arg(&out)
        .output()
        .expect("runs");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        stdout.contains("kpiwatch daily digest for 2026-03-30"),
        "{stdout}"
    );
    let html = std::fs::read_to_string(&out).expect("preview html");
    assert!(
        html.contains("digest-chart-orders.png"),
        "charts are written beside the preview"
    );
    let shot = dir.path().join("digest.png");
    let ok = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=900,1400",
        ])
        .arg(format!("--user-data-dir={}", dir.path().join("chrome").display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", out.display()))
        .output()
        .expect("chromium runs");
    assert!(
        shot.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).expect("png")));
    let mut reader = decoder.read_info().expect("png header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("png frame");
    let pixels = &buf[..info.buffer_size()];
    let mean = pixels.iter().map(|&b| f64::from(b)).sum::<f64>() / pixels.len() as f64;
    let var = pixels.iter().map(|&b| (f64::from(b) - mean).powi(2)).sum::<f64>() / pixels.len() as f64;
    assert!(var > 100.0, "the screenshot looks blank (variance {var:.1})");
}
