//! Buckets of an hour or more follow the KPI's timezone: a daily KPI of a shop in Berlin
//! stores one observation per local day (local midnight to local midnight, 25 hours on the
//! day the clocks go back), the detector judges those days, and a bad local day alerts.

use std::path::Path;

use chrono::{DateTime, Duration, TimeZone, Timelike, Utc};
use kpiwatch::clock::ManualClock;
use kpiwatch::kpi::KpiSpec;
use kpiwatch::pipeline::RunOutcome;
use sqlx::{Executor, SqlitePool};

use crate::helpers::{init_logs, SmtpServer};

const MODEL: &str = r#"
title = "Orders per day"
source = "shop"
kind = "count"
interval = "1d"
delay = "15m"
direction = "down"
timezone = "Europe/Berlin"
recipients = ["oncall@example.com"]
"#;
/// The shop keeps hourly counts; the KPI's buckets sum them per local day.
const QUERY: &str = "SELECT ts, n AS value FROM hourly_orders WHERE ts >= :start AND ts < :end";

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("rfc3339")
        .with_timezone(&Utc)
}

/// Orders in the hour starting at `t`: about 100, none on 2026-11-15 between 06:00 and 22:00
/// Berlin time (a checkout outage most of a day long).
fn orders(t: DateTime<Utc>, i: i64) -> i64 {
    let local = t.with_timezone(&chrono_tz::Europe::Berlin);
    let outage = local.date_naive() == chrono::NaiveDate::from_ymd_opt(2026, 11, 15).expect("date")
        && (6..22).contains(&local.hour());
    if outage {
        0
    } else {
        100 + (i * 7919) % 21 - 10
    }
}

#[tokio::test]
async fn a_daily_kpi_in_berlin_stores_local_days_and_alerts_on_a_bad_local_day() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let shop = SqlitePool::connect(&format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("shop.db").display()
    ))
    .await
    .expect("shop");
    shop.execute("CREATE TABLE hourly_orders (ts TEXT PRIMARY KEY, n INTEGER NOT NULL)")
        .await
        .expect("table");
    let first = utc("2026-08-31T22:00:00Z"); // 2026-09-01 00:00 in Berlin (CEST)
    let last = utc("2026-11-16T23:00:00Z"); // 2026-11-17 00:00 in Berlin (CET)
    let mut expected_day: std::collections::BTreeMap<i64, i64> = Default::default();
    let mut tx = shop.begin().await.expect("tx");
    let (mut t, mut i) = (first, 0);
    while t < last {
        let n = orders(t, i);
        let local_day = t.with_timezone(&chrono_tz::Europe::Berlin).date_naive();
        let midnight = chrono_tz::Europe::Berlin
            .from_local_datetime(&local_day.and_hms_opt(0, 0, 0).expect("midnight"))
            .single()
            .expect("one midnight")
            .timestamp();
        *expected_day.entry(midnight).or_default() += n;
        sqlx::query("INSERT INTO hourly_orders VALUES (?, ?)")
            .bind(t.format("%Y-%m-%d %H:%M:%S").to_string())
            .bind(n)
            .execute(&mut *tx)
            .await
            .expect("insert");
        t += Duration::hours(1);
        i += 1;
    }
    tx.commit().await.expect("commit");

    let smtp = SmtpServer::start();
    let spec = KpiSpec::parse("orders_daily", MODEL, QUERY, Path::new("models/orders_daily")).expect("model");
    // 15 November ends at 23:00 UTC; first run the day before (backfill), then after it.
    let clock = ManualClock::new(utc("2026-11-14T23:20:00Z"));
    let env = [
        ("KPIWATCH_SCHEDULER__BACKFILL", "75d".to_owned()),
        ("KPIWATCH_SCHEDULER__HISTORY", "80d".to_owned()),
    ];
    let app = crate::e2e::build_specs(dir.path(), Some(smtp.port), &clock, vec![spec], &env).await;
    let backfill = app.scheduler().run_due().await;
    assert!(
        matches!(backfill[0].1, Ok(RunOutcome::Ok { judged, .. }) if judged == 75),
        "75 local days from 1 September to 14 November: {backfill:?}"
    );
    assert!(smtp.received().is_empty(), "{:?}", smtp.received());
    clock.advance(Duration::days(1));
    let run = app.scheduler().run_due().await;
    assert!(
        matches!(run[0].1, Ok(RunOutcome::Ok { alerts_opened: 1, .. })),
        "{run:?}"
    );

    let store = app.store();
    let series = store.series_of("orders_daily").await.expect("series");
    assert_eq!(series.len(), 1);
    let observations = store
        .observations(series[0].id, 0, i64::MAX)
        .await
        .expect("observations");
    assert_eq!(observations.len(), 76);
    for o in &observations {
        let local = Utc
            .timestamp_opt(o.ts, 0)
            .single()
            .expect("ts")
            .with_timezone(&chrono_tz::Europe::Berlin);
        assert_eq!(
            (local.hour(), local.minute()),
            (0, 0),
            "bucket {local} is not a Berlin midnight"
        );
        assert_eq!(
            Some(&(o.value as i64)),
            expected_day.get(&o.ts),
            "the day starting {local} sums its local hours"
        );
    }
    // The day the clocks went back has 25 hours of orders; the days around it 24.
    let dst_day = utc("2026-10-24T22:00:00Z").timestamp();
    let dst = observations.iter().find(|o| o.ts == dst_day).expect("25 October");
    let next = observations
        .iter()
        .find(|o| o.ts == utc("2026-10-25T23:00:00Z").timestamp())
        .expect("26 October starts at 23:00 UTC");
    assert!(
        dst.value > 2400.0 + 100.0 - 250.0 && next.value < 2400.0 + 250.0,
        "{dst:?} {next:?}"
    );

    // The detector judged the local days, and the outage day is the anomaly it alerted on.
    let evaluations = store
        .evaluations(series[0].id, utc("2026-10-01T00:00:00Z").timestamp(), i64::MAX)
        .await
        .expect("evaluations");
    assert!(
        evaluations.iter().all(|e| e.status == "evaluated"),
        "{:?}",
        evaluations.iter().map(|e| (e.ts, &e.status)).collect::<Vec<_>>()
    );
    let outage_day = utc("2026-11-14T23:00:00Z").timestamp();
    let flagged: Vec<i64> = evaluations.iter().filter(|e| e.anomaly).map(|e| e.ts).collect();
    assert_eq!(flagged.last(), Some(&outage_day), "{flagged:?}");
    let anomalies = store
        .anomalies(Some("orders_daily"), None, 10)
        .await
        .expect("anomalies");
    assert!(
        anomalies.iter().any(|a| a.ts == outage_day && a.alerted),
        "{anomalies:?}"
    );
    let got = smtp.received();
    assert_eq!(
        got.len(),
        1,
        "{:?}",
        got.iter().map(|m| m.subject()).collect::<Vec<_>>()
    );
    assert!(
        got[0].subject().contains("Orders per day"),
        "{}",
        got[0].subject()
    );
}

#[tokio::test]
async fn moving_a_daily_kpi_to_another_timezone_drops_its_misaligned_buckets_but_not_a_5m_kpis() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("state.db").display());
    let store = kpiwatch::store::Store::connect(&url).await.expect("store");
    let spec = |interval: &str, tz: &str| {
        let model =
            format!("source = \"shop\"\nkind = \"count\"\ninterval = \"{interval}\"\ntimezone = \"{tz}\"\n");
        KpiSpec::parse("k", &model, QUERY, Path::new("models/k")).expect("model")
    };
    assert!(!store.upsert_kpi(&spec("1d", "UTC")).await.expect("first"));
    assert!(!store.upsert_kpi(&spec("1d", "UTC")).await.expect("same"));
    // Local midnights in Seoul are not UTC midnights: the stored days no longer line up.
    assert!(store.upsert_kpi(&spec("1d", "Asia/Seoul")).await.expect("moved"));
    assert!(!store.upsert_kpi(&spec("1d", "Asia/Seoul")).await.expect("same"));
    // Sub-hour buckets tile UTC whatever the timezone: nothing to drop.
    assert!(store
        .upsert_kpi(&spec("5m", "Asia/Seoul"))
        .await
        .expect("interval"));
    assert!(!store.upsert_kpi(&spec("5m", "UTC")).await.expect("5m moved"));
    store.close().await;
}
