//! The detector through the whole service: a low-volume ratio drop (15 payments per 5
//! minutes, 97 % → 80 % for two hours) fires one alert dated from the start of the shift,
//! stays open while the rate is low although single buckets land inside the wide band, and
//! resolves once the rate is back.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use kpiwatch::app::{Application, BuildOptions};
use kpiwatch::clock::{Clock, ManualClock};
use kpiwatch::kpi::KpiSpec;
use kpiwatch::pipeline::RunOutcome;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::{Executor, SqlitePool};

use crate::e2e::t0;
use crate::helpers::{init_logs, settings, SmtpServer};

const MODEL: &str = r#"
title = "Card payment success"
source = "shop"
kind = "ratio"
interval = "5m"
delay = "1m"
direction = "down"
recipients = ["payments@example.com"]
"#;
const QUERY: &str =
    "SELECT ts, ok AS numerator, attempts AS denominator FROM card_payments WHERE ts >= :start AND ts < :end";

/// 15 card payments per 5 minutes, each succeeding with probability `p(t)`.
async fn payments(
    pool: &SqlitePool,
    rng: &mut StdRng,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    p: impl Fn(DateTime<Utc>) -> f64,
) {
    let mut tx = pool.begin().await.expect("tx");
    let mut t = from;
    while t < to {
        let ok = (0..15).filter(|_| rng.random::<f64>() < p(t)).count() as i64;
        sqlx::query("INSERT INTO card_payments VALUES (?, ?, 15)")
            .bind(t.format("%Y-%m-%d %H:%M:%S").to_string())
            .bind(ok)
            .execute(&mut *tx)
            .await
            .expect("insert");
        t += Duration::minutes(5);
    }
    tx.commit().await.expect("commit");
}

async fn build(dir: &Path, smtp: &SmtpServer, clock: &ManualClock) -> Application {
    let spec =
        KpiSpec::parse("card_success", MODEL, QUERY, Path::new("models/card_success")).expect("valid model");
    let env = vec![
        (
            "KPIWATCH_SOURCES__SHOP__URL",
            format!("sqlite://{}", dir.join("shop.db").display()),
        ),
        ("KPIWATCH_SCHEDULER__BACKFILL", "10d".to_owned()),
        ("KPIWATCH_SCHEDULER__HISTORY", "10d".to_owned()),
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

/// Advance 5 minutes at a time to `until`; return the subjects received so far after each step.
async fn drive(app: &Application, clock: &ManualClock, until: DateTime<Utc>) {
    while clock.now() < until {
        clock.advance(Duration::minutes(5));
        for (id, result) in app.scheduler().run_due().await {
            let outcome = result.unwrap_or_else(|e| panic!("{id} failed: {e}"));
            assert!(matches!(outcome, RunOutcome::Ok { .. }), "{outcome:?}");
        }
    }
}

#[tokio::test]
async fn a_low_volume_ratio_drop_fires_once_from_its_start_and_resolves_only_when_the_rate_is_back() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = SmtpServer::start();
    let pool = SqlitePool::connect(&format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("shop.db").display()
    ))
    .await
    .expect("shop db");
    pool.execute(
        "CREATE TABLE card_payments (ts TEXT PRIMARY KEY, ok INTEGER NOT NULL, attempts INTEGER NOT NULL)",
    )
    .await
    .expect("create");
    let mut rng = StdRng::seed_from_u64(7);
    let drop_from = t0() + Duration::hours(1);
    let drop_to = drop_from + Duration::hours(2);
    let back_until = drop_to + Duration::hours(2);
    let rate = move |t: DateTime<Utc>| if t >= drop_from && t < drop_to { 0.80 } else { 0.97 };
    payments(&pool, &mut rng, t0() - Duration::days(10), back_until, rate).await;

    let clock = ManualClock::new(t0() + Duration::minutes(1));
    let app = build(dir.path(), &smtp, &clock).await;
    app.scheduler().run_due().await;
    drive(&app, &clock, drop_from + Duration::minutes(1)).await;
    assert!(
        smtp.received().is_empty(),
        "quiet before the drop: {:?}",
        smtp.received()
    );

    // During the drop: one alert, and no resolution while the rate stays at 80 %.
    drive(&app, &clock, drop_to + Duration::minutes(1)).await;
    let got = smtp.received();
    assert_eq!(
        got.len(),
        1,
        "{:?}",
        got.iter().map(|m| m.subject()).collect::<Vec<_>>()
    );
    let subject = got[0].subject();
    assert!(subject.contains("Card payment success dropped"), "{subject}");
    let text = got[0].text();
    let since = text
        .lines()
        .find_map(|l| l.strip_prefix("Since:"))
        .map(str::trim)
        .expect("a Since: line");
    let since = DateTime::parse_from_rfc3339(since)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(since, "%Y-%m-%d %H:%M UTC").map(|t| t.and_utc()))
        .unwrap_or_else(|e| panic!("Since: {since:?}: {e}"));
    let alerts = app.store().alerts(false, 10).await.expect("alerts");
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let fired_at = alerts[0].last_anomaly_ts;
    assert!(
        since >= drop_from - Duration::minutes(30) && since.timestamp() <= fired_at,
        "the alert dates the shift from its start: since {since}, drop at {drop_from}, last flagged bucket {fired_at}"
    );
    assert_eq!(alerts[0].state, "firing", "still open at the end of the drop");

    // The rate comes back: exactly one resolution, within the hour.
    drive(&app, &clock, back_until).await;
    let got = smtp.received();
    assert_eq!(
        got.len(),
        2,
        "{:?}",
        got.iter().map(|m| m.subject()).collect::<Vec<_>>()
    );
    assert!(got[1].subject().starts_with("[RESOLVED]"), "{}", got[1].subject());
    let alerts = app.store().alerts(false, 10).await.expect("alerts");
    let resolved = alerts[0].resolved_ts.expect("resolved");
    assert!(
        resolved >= drop_to.timestamp() && resolved <= (drop_to + Duration::hours(1)).timestamp(),
        "resolved at {resolved}, the rate came back at {drop_to}"
    );
}
