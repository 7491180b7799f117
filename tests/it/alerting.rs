//! Silences through the API: a silenced incident is recorded but not sent; once the silence
//! is expired, the next incident is sent.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::Duration;
use kpiwatch::clock::ManualClock;
use tower::ServiceExt;

use crate::e2e::{build, build_with, drive, t0, Shop};
use crate::helpers::{init_logs, SmtpServer};

async fn call(app: &kpiwatch::app::Application, method: &str, uri: &str, body: &str) -> (StatusCode, String) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .expect("request");
    let response = app.router().oneshot(request).await.expect("response");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn a_silence_suppresses_an_incident_and_its_expiry_re_enables_alerts() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = SmtpServer::start();
    let mut shop = Shop::create(&dir.path().join("shop.db")).await;
    shop.traffic(t0() - Duration::days(14), t0() + Duration::hours(1))
        .await;
    let clock = ManualClock::new(t0() + Duration::minutes(1));
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
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad} → {body}");
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
    let mut shop = Shop::create(&dir.path().join("shop.db")).await;
    shop.traffic(t0() - Duration::days(14), t0() + Duration::hours(1))
        .await;
    let clock = ManualClock::new(t0() + Duration::minutes(1));
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
