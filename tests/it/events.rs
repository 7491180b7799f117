//! Events and holidays through the service: an event made with `POST /api/events` and one
//! imported from an iCalendar file (`POST /api/events/import`) keep a drop inside them from
//! alerting and from being learned, on PostgreSQL; the same drop outside them alerts. A
//! `[[calendar]]` entry of the config reaches the API; config events cannot be deleted there.

use chrono::{DateTime, Duration, Utc};
use kpiwatch::baseline::{Bucket, OnlineDetector};
use kpiwatch::clock::ManualClock;
use kpiwatch::pipeline::{detector_config, local_secs};
use sqlx::SqlitePool;

use crate::e2e::{build_full, drive, orders_spec, t0, Shop};
use crate::helpers::{init_logs, request_json, server_url, PgDatabase, SmtpServer};

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("rfc3339")
        .with_timezone(&Utc)
}

/// No orders at all in `[from, to)`.
async fn outage(pool: &SqlitePool, from: DateTime<Utc>, to: DateTime<Utc>) {
    sqlx::query("UPDATE order_counts SET n = 0 WHERE ts >= ? AND ts < ?")
        .bind(from.format("%Y-%m-%d %H:%M:%S").to_string())
        .bind(to.format("%Y-%m-%d %H:%M:%S").to_string())
        .execute(pool)
        .await
        .expect("outage");
}

const ICS: &str = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//kpiwatch tests//EN\r\n\
BEGIN:VEVENT\r\nUID:campaign-1@example.com\r\nDTSTAMP:20260301T000000Z\r\nSUMMARY:Spring campaign\r\n\
DTSTART:20260330T160000Z\r\nDTEND:20260330T170000Z\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";

#[tokio::test]
async fn api_and_icalendar_events_keep_their_drops_from_alerting_and_from_being_learned_on_postgres() {
    init_logs();
    let Some(admin) = server_url("TEST_POSTGRES_URL") else {
        return;
    };
    let db = PgDatabase::create(&admin).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = SmtpServer::start();
    let mut shop = Shop::create(&dir.path().join("shop.db")).await;
    shop.traffic(t0() - Duration::days(14), t0() + Duration::hours(7))
        .await;
    // Three half-hour outages: inside the API event, inside the imported one, and outside both.
    let api_window = (at("2026-03-30T14:00:00Z"), at("2026-03-30T15:00:00Z"));
    let ical_window = (at("2026-03-30T16:00:00Z"), at("2026-03-30T17:00:00Z"));
    let control = at("2026-03-30T18:00:00Z");
    for from in [api_window.0, ical_window.0, control] {
        outage(&shop.pool, from, from + Duration::minutes(30)).await;
    }
    let clock = ManualClock::new(t0() + Duration::minutes(1));
    let app = build_full(
        dir.path(),
        &smtp,
        &clock,
        "",
        &[("KPIWATCH_STATE__URL", db.url.clone())],
    )
    .await;

    let (status, created) = request_json(
        &app,
        "POST",
        "/api/events",
        None,
        r#"{"name": "Planned migration", "start": "2026-03-30T16:00:00+02:00", "end": "2026-03-30T17:00",
            "timezone": "Europe/Berlin", "kpis": ["orders"]}"#,
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["start"], "2026-03-30T16:00:00");
    assert_eq!(created["origin"], "api");
    assert_eq!(
        created["occurrences"][0]["start"], "2026-03-30T14:00:00+00:00",
        "{created}"
    );
    let body = serde_json::json!({"calendar": ICS, "labels": {"kpi": "orders"}}).to_string();
    let (status, imported) = request_json(&app, "POST", "/api/events/import", None, &body).await;
    assert_eq!(status, 201, "{imported}");
    assert_eq!(imported[0]["name"], "Spring campaign");
    assert_eq!(imported[0]["uid"], "campaign-1@example.com");
    // Re-importing the same file replaces its event instead of doubling it.
    let (status, _) = request_json(&app, "POST", "/api/events/import", None, &body).await;
    assert_eq!(status, 201);
    let (_, listed) = request_json(&app, "GET", "/api/events?kpi=orders", None, "").await;
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");

    // Backfill, then live runs every 5 minutes through all three outages.
    app.scheduler().run_due().await;
    drive(&app, &clock, control + Duration::minutes(61)).await;

    let alerts = app.store().alerts(false, 100).await.expect("alerts");
    let anomaly_alerts: Vec<_> = alerts.iter().filter(|a| a.kind == "anomaly").collect();
    assert_eq!(
        anomaly_alerts.len(),
        1,
        "only the outage outside the events alerts: {anomaly_alerts:?}"
    );
    let started = anomaly_alerts[0].started_ts;
    assert!(
        (control.timestamp()..control.timestamp() + 1800).contains(&started),
        "{anomaly_alerts:?}"
    );
    // Its firing message, and its resolution once orders came back; nothing else.
    let subjects: Vec<String> = smtp.received().iter().map(|m| m.subject()).collect();
    assert_eq!(subjects.len(), 2, "{subjects:?}");
    assert!(subjects[0].contains("Orders dropped to 0"), "{subjects:?}");
    assert!(subjects[1].starts_with("[RESOLVED] Orders"), "{subjects:?}");

    // Inside the events: judged as excluded, never anomalous.
    let series = app.store().series_of("orders").await.expect("series");
    let series_id = series[0].id;
    for (from, to) in [api_window, ical_window] {
        let evals = app
            .store()
            .evaluations(series_id, from.timestamp(), to.timestamp())
            .await
            .expect("evaluations");
        assert_eq!(evals.len(), 12, "{evals:?}");
        assert!(
            evals.iter().all(|e| e.status == "excluded" && !e.anomaly),
            "{evals:?}"
        );
    }
    let control_evals = app
        .store()
        .evaluations(series_id, control.timestamp(), control.timestamp() + 1800)
        .await
        .expect("evaluations");
    assert!(control_evals.iter().any(|e| e.anomaly), "{control_evals:?}");

    // Not learned: the service's expectation for its newest bucket is the detector's when the
    // event buckets are skipped, and differs from the one learning them would give.
    let end = app
        .store()
        .kpi("orders")
        .await
        .expect("kpi")
        .and_then(|k| k.fetched_until)
        .expect("fetched");
    let history = app
        .store()
        .observations(
            series_id,
            {
                let (history, slack) = (
                    std::time::Duration::from_secs(14 * 86_400),
                    std::time::Duration::from_secs(7 * 86_400),
                );
                let anchor = kpiwatch::pipeline::replay_anchor("orders", "{}", 300, slack);
                kpiwatch::pipeline::replay_start(history, slack, anchor, end)
            },
            end,
        )
        .await
        .expect("history");
    let spec = orders_spec("");
    let in_event = |ts: i64| {
        [api_window, ical_window]
            .iter()
            .any(|(f, t)| ts >= f.timestamp() && ts < t.timestamp())
    };
    let replay = |skip_events: bool| {
        let mut detector = OnlineDetector::new(detector_config(&spec)).expect("config");
        let mut last = None;
        for o in &history {
            last = Some(detector.step(&Bucket {
                ts: local_secs(spec.timezone, o.ts),
                value: o.value,
                denominator: o.denominator,
                excluded: skip_events && in_event(o.ts),
            }));
        }
        last.expect("history")
    };
    let newest = app
        .store()
        .evaluations(series_id, end - 300, end)
        .await
        .expect("newest")
        .pop()
        .expect("the newest bucket was judged");
    let skipped = replay(true);
    let learned = replay(false);
    assert_eq!(
        newest.reading.band.expected, skipped.reading.band.expected,
        "{newest:?}"
    );
    assert_ne!(
        skipped.reading.band.expected, learned.reading.band.expected,
        "the events' buckets matter"
    );

    // Deleting the API event ends it for later runs.
    let id = created["id"].as_i64().expect("id");
    let (status, _) = request_json(&app, "DELETE", &format!("/api/events/{id}"), None, "").await;
    assert_eq!(status, 204);
    let (status, _) = request_json(&app, "DELETE", &format!("/api/events/{id}"), None, "").await;
    assert_eq!(status, 404);
    drop(app);
    db.drop_db().await;
}

#[tokio::test]
async fn config_calendar_entries_reach_the_api_and_bad_ones_stop_the_start() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = SmtpServer::start();
    let _shop = Shop::create(&dir.path().join("shop.db")).await;
    let clock = ManualClock::new(t0());
    std::fs::write(dir.path().join("holidays.ics"), ICS).expect("ics");
    let calendar = format!(
        r#"[{{name = "Easter Monday", date = "2026-04-06", yearly = true, timezone = "Europe/Berlin", margin_after = "6h"}},
            {{name = "campaigns", ical = "{}", kpis = ["orders"]}}]"#,
        dir.path().join("holidays.ics").display()
    );
    let app = build_full(
        dir.path(),
        &smtp,
        &clock,
        "",
        &[("KPIWATCH_CALENDAR", calendar.clone())],
    )
    .await;
    let (status, events) = request_json(
        &app,
        "GET",
        "/api/events?from=2026-01-01T00:00:00Z&to=2028-01-01T00:00:00Z",
        None,
        "",
    )
    .await;
    assert_eq!(status, 200, "{events}");
    let events = events.as_array().expect("array").clone();
    assert_eq!(events.len(), 2, "{events:?}");
    let easter = &events[0];
    assert_eq!(easter["origin"], "config");
    assert_eq!(easter["yearly"], true);
    assert_eq!(easter["occurrences"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        easter["occurrences"][0]["start"], "2026-04-05T22:00:00+00:00",
        "{easter}"
    );
    assert_eq!(events[1]["name"], "Spring campaign");
    let id = easter["id"].as_i64().expect("id");
    let (status, body) = request_json(&app, "DELETE", &format!("/api/events/{id}"), None, "").await;
    assert_eq!(status, 409, "{body}");
    // A restart with the same config does not double the config's events.
    drop(app);
    let app = build_full(dir.path(), &smtp, &clock, "", &[("KPIWATCH_CALENDAR", calendar)]).await;
    let (_, events) = request_json(&app, "GET", "/api/events", None, "").await;
    assert_eq!(events.as_array().map(Vec::len), Some(2), "{events}");
    drop(app);

    // Bad entries are named.
    let settings = crate::helpers::settings(
        dir.path(),
        None,
        &[
            (
                "KPIWATCH_SOURCES__SHOP__URL",
                format!("sqlite://{}", dir.path().join("shop.db").display()),
            ),
            (
                "KPIWATCH_CALENDAR",
                r#"[{name = "oops", date = "2026-02-30"}]"#.to_owned(),
            ),
        ],
    );
    let error = kpiwatch::app::Application::build(
        settings,
        vec![orders_spec("")],
        kpiwatch::app::BuildOptions::default(),
    )
    .await
    .expect_err("a bad date stops the start");
    let text = format!("{error:#}");
    assert!(
        text.contains("calendar[0]") && text.contains("2026-02-30"),
        "{text}"
    );
}

/// Bad requests get a clear 4xx naming the field.
#[tokio::test]
async fn bad_events_are_refused_with_what_is_wrong() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = SmtpServer::start();
    let _shop = Shop::create(&dir.path().join("shop.db")).await;
    let clock = ManualClock::new(t0());
    let app = build_full(dir.path(), &smtp, &clock, "", &[]).await;
    for (body, status, needle) in [
        (
            r#"{"name": "x", "start": "2026-04-02", "end": "2026-04-01"}"#,
            422,
            "not after",
        ),
        (
            r#"{"name": "x", "start": "tomorrow!!", "end": "2026-04-01"}"#,
            422,
            "start",
        ),
        (
            r#"{"name": "x", "start": "2026-04-01", "end": "2026-04-02", "timezone": "Mars/Base"}"#,
            422,
            "timezone",
        ),
        (
            r#"{"name": "x", "start": "2026-04-01", "end": "2026-04-02", "margin_before": "30d"}"#,
            422,
            "7 days",
        ),
        (
            r#"{"name": "x", "start": "2026-04-01", "end": "2026-04-02", "kpis": ["Not An Id"]}"#,
            422,
            "kpis",
        ),
        (
            r#"{"name": "x", "start": "2026-04-01", "end": "2026-04-02", "colour": "red"}"#,
            400,
            "colour",
        ),
    ] {
        let (got, answer) = request_json(&app, "POST", "/api/events", None, body).await;
        assert_eq!(got.as_u16(), status, "{body}: {answer}");
        assert!(
            answer["error"].as_str().is_some_and(|e| e.contains(needle)),
            "{body}: {answer}"
        );
    }
    let weekly = ICS.replace(
        "DTEND:20260330T170000Z",
        "DTEND:20260330T170000Z\r\nRRULE:FREQ=WEEKLY",
    );
    let body = serde_json::json!({"calendar": weekly}).to_string();
    let (got, answer) = request_json(&app, "POST", "/api/events/import", None, &body).await;
    assert_eq!(got, 422, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("Spring campaign")),
        "{answer}"
    );
    let (_, events) = request_json(&app, "GET", "/api/events", None, "").await;
    assert_eq!(events, serde_json::json!([]), "nothing half-imported");
}
