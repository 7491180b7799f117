//! The state store itself, on both backends: the same scenario against `Store` on a
//! temporary SQLite file and on a fresh PostgreSQL database, with the same results.

use std::time::Duration;

use kpiwatch::kpi::Interval;
use kpiwatch::reading::{Band, Reading};
use kpiwatch::store::{AlertRow, EvaluationRow, NewAnomaly, NewNotification, ObservationRow, Store};

use crate::e2e::orders_spec;
use crate::helpers::{init_logs, server_url, PgDatabase};

const DAY: i64 = 86_400;
const T: i64 = 1_774_872_000; // 2026-03-30T12:00:00Z

fn evaluation(ts: i64, value: f64, anomaly: bool) -> EvaluationRow {
    EvaluationRow {
        ts,
        reading: Reading::new(value, Band::new(100.0, 80.0, 120.0)),
        score: if anomaly { 0.99 } else { 0.1 },
        anomaly,
        status: "evaluated".to_owned(),
        volume: value,
        flagged_by: anomaly.then(|| "accumulated".to_owned()),
    }
}

fn anomaly(ts: i64, value: f64, alerted: bool) -> NewAnomaly {
    NewAnomaly {
        ts,
        reading: Reading::new(value, Band::new(100.0, 80.0, 120.0)),
        score: 0.99,
        volume: value,
        seasonality: "daily".to_owned(),
        alerted,
        flagged_by: Some("accumulated".to_owned()),
        side: Some("below".to_owned()),
    }
}

fn notification(recipient: &str) -> NewNotification {
    NewNotification {
        channel: "email".to_owned(),
        recipient: recipient.to_owned(),
        subject: "Orders dropped".to_owned(),
        body: "body".to_owned(),
        suppressed_by: None,
        payload: None,
        group_key: "orders".to_owned(),
        not_before: T,
    }
}

/// The scenario; every assertion holds on either backend.
async fn scenario(url: &str) {
    let store = Store::connect(url).await.expect("connect");
    store.ping().await.expect("ping");
    // Connecting again (a restart) finds the migrations applied.
    Store::connect(url).await.expect("reconnect").close().await;

    // KPI and series.
    let spec = orders_spec("");
    assert!(
        !store.upsert_kpi(&spec).await.expect("upsert kpi"),
        "a new KPI changed nothing"
    );
    assert!(!store.upsert_kpi(&spec).await.expect("upsert kpi again"));
    let kpi = store.kpi("orders").await.expect("kpi").expect("stored");
    assert_eq!(kpi.interval_secs, 300);
    assert_eq!(kpi.kind, "count");
    assert_eq!(kpi.fetched_until, None);
    assert_eq!(store.kpis().await.expect("kpis").len(), 1);
    assert!(store.kpi("nope").await.expect("kpi").is_none());

    let s1 = store.series_id("orders", "{}").await.expect("series");
    assert_eq!(store.series_id("orders", "{}").await.expect("series again"), s1);
    let s2 = store
        .series_id("orders", r#"{"country":"DE"}"#)
        .await
        .expect("series 2");
    assert_ne!(s1, s2);
    let series = store.series_of("orders").await.expect("series_of");
    assert_eq!(series.len(), 2);
    assert_eq!(series[0].id, s1);
    assert_eq!(series[0].evaluated_until, None);
    assert_eq!(
        store.series_dims(s2).await.expect("dims").as_deref(),
        Some(r#"{"country":"DE"}"#)
    );
    // What a run starts from: the KPI's fetched_until with its series, in one read.
    let (fetched, started) = store.run_start("orders").await.expect("run start").expect("kpi");
    assert_eq!(fetched, None);
    assert_eq!(
        started
            .iter()
            .map(|s| (s.id, s.dims.as_str()))
            .collect::<Vec<_>>(),
        [(s1, "{}"), (s2, r#"{"country":"DE"}"#)]
    );
    assert!(store.run_start("nope").await.expect("run start").is_none());

    // Runs: only ok advances fetched_until, and it never moves back.
    store
        .record_run("orders", T, (T - 600, T), "ok", 2, None)
        .await
        .expect("run");
    store
        .record_run("orders", T + 300, (T, T + 300), "data_missing", 0, Some("down"))
        .await
        .expect("failed run");
    let kpi = store.kpi("orders").await.expect("kpi").expect("stored");
    assert_eq!(kpi.fetched_until, Some(T));
    assert_eq!(kpi.last_status.as_deref(), Some("data_missing"));
    assert_eq!(kpi.last_error.as_deref(), Some("down"));
    store
        .record_run("orders", T + 600, (T - 3600, T - 300), "ok", 1, None)
        .await
        .expect("late run");
    let kpi = store.kpi("orders").await.expect("kpi").expect("stored");
    assert_eq!(kpi.fetched_until, Some(T), "fetched_until never moves back");
    assert_eq!(kpi.last_status.as_deref(), Some("ok"));

    // Observations: upserting the same bucket again updates it.
    let obs = |ts: i64, value: f64| ObservationRow {
        ts,
        value,
        denominator: None,
    };
    store
        .upsert_observations(s1, &[obs(T - 600, 100.0), obs(T - 300, 90.0)])
        .await
        .expect("observations");
    store
        .upsert_observations(
            s1,
            &[ObservationRow {
                ts: T - 300,
                value: 95.5,
                denominator: Some(2.0),
            }],
        )
        .await
        .expect("restated");
    let got = store.observations(s1, T - DAY, T).await.expect("read");
    assert_eq!(
        got,
        vec![
            obs(T - 600, 100.0),
            ObservationRow {
                ts: T - 300,
                value: 95.5,
                denominator: Some(2.0)
            }
        ]
    );
    assert!(store
        .observations(s1, T - 300, T - 300)
        .await
        .expect("empty")
        .is_empty());

    // Evaluations and anomalies; evaluated_until only moves forward.
    store
        .save_evaluations(
            s1,
            &[evaluation(T - 600, 100.0, false), evaluation(T - 300, 10.0, true)],
            &[anomaly(T - 300, 10.0, true)],
            T,
        )
        .await
        .expect("evaluations");
    store
        .save_evaluations(s1, &[], &[anomaly(T - 300, 11.0, false)], T - 600)
        .await
        .expect("older");
    let evals = store.evaluations(s1, T - DAY, T).await.expect("evaluations");
    assert_eq!(
        evals,
        vec![evaluation(T - 600, 100.0, false), evaluation(T - 300, 10.0, true)]
    );
    let series = store.series_of("orders").await.expect("series_of");
    assert_eq!(series[0].evaluated_until, Some(T));
    store
        .save_evaluations(s2, &[], &[anomaly(T - 900, 5.0, false)], T - 300)
        .await
        .expect("s2");
    let all = store.anomalies(None, None, 10).await.expect("anomalies");
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].ts, T - 300);
    assert!(all[0].alerted);
    assert_eq!(all[0].reading.value, 10.0, "a bucket's anomaly is recorded once");
    assert_eq!(all[0].dims, "{}");
    assert!(!all[1].alerted);
    assert_eq!(all[1].dims, r#"{"country":"DE"}"#);
    let recent = store
        .anomalies(Some("orders"), Some(T - 600), 10)
        .await
        .expect("recent");
    assert_eq!(recent.len(), 1);
    assert!(store
        .anomalies(Some("other"), None, 10)
        .await
        .expect("other")
        .is_empty());
    let (series_id, ts, kpi_id) = store
        .anomaly_bucket(all[0].id)
        .await
        .expect("bucket")
        .expect("exists");
    assert_eq!((series_id, ts, kpi_id.as_str()), (s1, T - 300, "orders"));

    // Feedback.
    store
        .save_feedback(s1, T - 300, "not_anomaly", "alice", "promo")
        .await
        .expect("feedback");
    store
        .save_feedback(s1, T - 300, "new_normal", "bob", "")
        .await
        .expect("feedback again");
    let fb = store.feedback(s1, T - DAY, T).await.expect("feedback");
    assert_eq!(fb.len(), 1);
    assert_eq!(fb[0].kind, "new_normal");
    // The revision read counts the feedback at or after its start (a run reads it only then).
    for (from, n) in [(T - DAY, 1), (T - 299, 0)] {
        let revision = store
            .series_revision(s1, from)
            .await
            .expect("revision")
            .expect("series");
        assert_eq!(revision.feedback, n, "feedback at or after {from}");
    }
    assert_eq!(
        store
            .series_revision(s2, 0)
            .await
            .expect("revision")
            .expect("series")
            .feedback,
        0
    );

    // An alert with its notifications in one save_alert; at most one open per fingerprint.
    let mut alert = AlertRow::new("orders", Some(s1), "anomaly", "fp-orders", T - 300);
    alert.state = "firing".to_owned();
    alert.severity = "warning".to_owned();
    alert.hits_mask = 0b101;
    alert.notified_at = Some(T);
    let alert_id = store
        .save_alert(
            &alert,
            Some("firing"),
            &[notification("a@example.com"), notification("b@example.com")],
        )
        .await
        .expect("save alert");
    assert!(alert_id > 0);
    let open = store
        .open_alert("fp-orders")
        .await
        .expect("open")
        .expect("is open");
    assert_eq!(open.id, alert_id);
    assert_eq!(open.hits_mask, 0b101);
    assert_eq!(open.notified_at, Some(T));
    let of_kpi = store.open_alerts_of("orders").await.expect("open of kpi");
    assert_eq!(of_kpi.iter().map(|a| a.id).collect::<Vec<_>>(), [alert_id]);
    assert!(store
        .open_alerts_of("nope")
        .await
        .expect("open of kpi")
        .is_empty());
    assert!(
        store.save_alert(&alert, Some("firing"), &[]).await.is_err(),
        "a second open alert with one fingerprint is refused"
    );
    // Saving the same event again queues nothing new.
    let mut stored = open.clone();
    stored.summary = "still down".to_owned();
    store
        .save_alert(&stored, Some("firing"), &[notification("a@example.com")])
        .await
        .expect("update");
    assert_eq!(store.notifications().await.expect("all").len(), 2);
    assert_eq!(store.alerts(true, 10).await.expect("open").len(), 1);
    assert!(store.ack_alert(alert_id, "alice").await.expect("ack"));
    assert!(store.ack_alert(alert_id, "bob").await.expect("ack again"));
    let acked = store.alert(alert_id).await.expect("alert").expect("exists");
    assert_eq!(acked.acknowledged_by.as_deref(), Some("alice"));
    assert_eq!(acked.summary, "still down");
    assert!(!store.alert_silenced(alert_id).await.expect("silenced"));

    // Pending → sent, failed → retried later, grouping.
    let pending = store.pending_notifications(T, 10).await.expect("pending");
    assert_eq!(pending.len(), 2);
    assert_eq!(pending[0].alert_id, Some(alert_id));
    assert_eq!(pending[0].status, "pending");
    assert!(store
        .pending_notifications(T - 1, 10)
        .await
        .expect("not yet")
        .is_empty());
    store.mark_sent(pending[0].id).await.expect("sent");
    store
        .mark_failed(pending[1].id, "smtp 451", Some(T + 60))
        .await
        .expect("failed");
    assert!(store
        .pending_notifications(T, 10)
        .await
        .expect("after")
        .is_empty());
    let retry = store.pending_notifications(T + 60, 10).await.expect("retry");
    assert_eq!(retry.len(), 1);
    assert_eq!(retry[0].attempts, 1);
    store.postpone(&[retry[0].id], T + 120).await.expect("postpone");
    store.postpone(&[retry[0].id], T + 90).await.expect("no earlier");
    assert!(store
        .pending_notifications(T + 119, 10)
        .await
        .expect("held")
        .is_empty());
    store
        .mark_group_sent(&[retry[0].id], "email", "b@example.com", "orders", T + 120)
        .await
        .expect("group sent");
    assert_eq!(
        store
            .group_last_sent("email", "b@example.com", "orders")
            .await
            .expect("last sent"),
        Some(T + 120)
    );
    assert_eq!(
        store
            .group_last_sent("email", "c@example.com", "orders")
            .await
            .expect("never"),
        None
    );
    let all = store.notifications().await.expect("all");
    assert!(all.iter().all(|n| n.status == "sent"), "{all:?}");
    assert_eq!(all[1].attempts, 2);
    // A failure that is not retried gives up.
    let mut resolved = store.alert(alert_id).await.expect("alert").expect("exists");
    resolved.state = "resolved".to_owned();
    resolved.resolved_ts = Some(T + 600);
    let mut silenced = notification("a@example.com");
    silenced.suppressed_by = Some("silence 1".to_owned());
    store
        .save_alert(
            &resolved,
            Some("resolved"),
            &[silenced, notification("b@example.com")],
        )
        .await
        .expect("resolve");
    assert!(store.alert_silenced(alert_id).await.expect("silenced"));
    let pending = store.pending_notifications(T + 600, 10).await.expect("pending");
    assert_eq!(pending.len(), 1);
    store
        .mark_failed(pending[0].id, "rejected", None)
        .await
        .expect("give up");
    assert!(store
        .pending_notifications(i64::MAX / 2, 10)
        .await
        .expect("none")
        .is_empty());
    assert!(store.open_alert("fp-orders").await.expect("open").is_none());
    assert!(store.alerts(true, 10).await.expect("open").is_empty());
    assert_eq!(store.alerts(false, 10).await.expect("all").len(), 1);
    let between = store
        .alerts_between("orders", T - DAY, T + DAY)
        .await
        .expect("between");
    assert_eq!(between.len(), 1);
    assert!(store
        .alerts_between("orders", T + 601, T + DAY)
        .await
        .expect("after")
        .is_empty());

    // Silences: create and expire (never extended). The runs' shared read is empty and then
    // sees a silence this process creates at once.
    assert!(store.silences_shared(T).await.expect("shared").is_empty());
    let sid = store
        .create_silence(r#"{"kpi":"orders"}"#, T, T + 3600, "alice", "deploy")
        .await
        .expect("silence");
    let sid2 = store
        .create_silence(r#"{"kpi":"x"}"#, T, T + 60, "alice", "short")
        .await
        .expect("silence 2");
    assert_ne!(sid, sid2);
    let active = store.silences(T + 100).await.expect("silences");
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].id, sid);
    let shared = store.silences_shared(T + 100).await.expect("shared");
    assert!(
        shared.iter().any(|s| s.id == sid),
        "a write here is seen by the next run at once"
    );
    assert!(store.expire_silence(sid, T + 200).await.expect("expire"));
    assert!(store.expire_silence(sid2, T + 200).await.expect("expire ended"));
    assert!(!store.expire_silence(sid + sid2 + 100, T).await.expect("missing"));
    assert!(store.silences(T + 200).await.expect("none").is_empty());
    let all = store.silences(0).await.expect("all");
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].ends_at, T + 60, "an ended silence is not extended");
    assert_eq!(all[1].ends_at, T + 200);

    // Digests: once per (recipient, day).
    assert!(!store
        .digest_queued("a@example.com", "digest:2026-03-30")
        .await
        .expect("queued?"));
    assert!(store
        .queue_digest("a@example.com", "digest:2026-03-30", "Daily", "eml", T)
        .await
        .expect("queue"));
    assert!(!store
        .queue_digest("a@example.com", "digest:2026-03-30", "Daily", "eml", T)
        .await
        .expect("queue again"));
    assert!(store
        .queue_digest("b@example.com", "digest:2026-03-30", "Daily", "eml", T)
        .await
        .expect("other recipient"));
    assert!(store
        .queue_digest("a@example.com", "digest:2026-03-31", "Daily", "eml", T + DAY)
        .await
        .expect("next day"));
    assert!(store
        .digest_queued("a@example.com", "digest:2026-03-30")
        .await
        .expect("queued?"));
    let digests: Vec<_> = store
        .notifications()
        .await
        .expect("all")
        .into_iter()
        .filter(|n| n.alert_id.is_none())
        .collect();
    assert_eq!(digests.len(), 3);
    assert_eq!(digests[0].group_key, "digest:2026-03-30");
    assert_eq!(digests[0].channel, "digest");

    // Meta.
    let secret = store
        .meta_get_or_init("link_secret", || "first".to_owned())
        .await
        .expect("meta");
    assert_eq!(secret, "first");
    let again = store
        .meta_get_or_init("link_secret", || "second".to_owned())
        .await
        .expect("meta again");
    assert_eq!(again, "first");

    // Audit log, newest first.
    store
        .audit(
            "alice",
            "silence.create",
            "1",
            &serde_json::json!({"comment": "deploy"}),
        )
        .await
        .expect("audit");
    store
        .audit("bob", "alert.ack", "1", &serde_json::json!({}))
        .await
        .expect("audit 2");
    let log = store.audit_log(10).await.expect("log");
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].actor, "bob");
    assert_eq!(log[1].action, "silence.create");
    assert_eq!(log[1].detail, r#"{"comment":"deploy"}"#);
    assert_eq!(store.audit_log(1).await.expect("one").len(), 1);

    // KPI definitions: save, replace, retire, un-retire.
    store
        .save_kpi_definition("signups", "title = \"Signups\"", "SELECT 1", "alice")
        .await
        .expect("define");
    store
        .save_kpi_definition("signups", "title = \"Sign-ups\"", "SELECT 2", "alice")
        .await
        .expect("redefine");
    let defs = store.kpi_definitions().await.expect("definitions");
    assert_eq!(
        defs,
        vec![(
            "signups".to_owned(),
            "title = \"Sign-ups\"".to_owned(),
            "SELECT 2".to_owned()
        )]
    );
    assert!(store.retire_kpi_definition("signups").await.expect("retire"));
    assert!(!store.retire_kpi_definition("signups").await.expect("retired"));
    assert!(store.kpi_definitions().await.expect("none").is_empty());
    store
        .save_kpi_definition("signups", "title = \"Signups\"", "SELECT 1", "alice")
        .await
        .expect("un-retire");
    assert_eq!(store.kpi_definitions().await.expect("one").len(), 1);

    // An interval change drops buckets, verdicts and feedback, keeps anomalies, cancels
    // open incidents and restarts fetching.
    let open = AlertRow::new("orders", Some(s2), "anomaly", "fp-de", T);
    store.save_alert(&open, None, &[]).await.expect("open alert");
    store
        .upsert_observations(s2, &[obs(T - 300, 7.0)])
        .await
        .expect("s2 observations");
    let mut slower = orders_spec("");
    slower.interval = Interval::parse("10m").expect("interval");
    assert!(store.upsert_kpi(&slower).await.expect("interval change"));
    assert!(!store.upsert_kpi(&slower).await.expect("same again"));
    let kpi = store.kpi("orders").await.expect("kpi").expect("stored");
    assert_eq!(kpi.interval_secs, 600);
    assert_eq!(kpi.fetched_until, None);
    for s in [s1, s2] {
        assert!(store.observations(s, 0, i64::MAX).await.expect("obs").is_empty());
        assert!(store.evaluations(s, 0, i64::MAX).await.expect("evals").is_empty());
        assert!(store.feedback(s, 0, i64::MAX).await.expect("fb").is_empty());
    }
    assert!(store
        .series_of("orders")
        .await
        .expect("series")
        .iter()
        .all(|s| s.evaluated_until.is_none()));
    assert_eq!(store.anomalies(None, None, 10).await.expect("kept").len(), 2);
    assert!(store.open_alert("fp-de").await.expect("open").is_none());
    assert_eq!(store.alerts(false, 10).await.expect("all").len(), 2);

    // Purging a KPI removes everything about it but the audit log.
    store.purge_kpi("orders").await.expect("purge");
    assert!(store.kpi("orders").await.expect("kpi").is_none());
    assert!(store.series_of("orders").await.expect("series").is_empty());
    assert!(store.alerts(false, 10).await.expect("alerts").is_empty());
    assert!(store
        .anomalies(None, None, 10)
        .await
        .expect("anomalies")
        .is_empty());
    assert_eq!(store.audit_log(10).await.expect("log").len(), 2);

    // API tokens: hashes only, one active token per name, last use, revocation.
    assert!(!store.any_active_token().await.expect("any"));
    let id = store
        .create_token("ops", "admin", &"a".repeat(64), "cli")
        .await
        .expect("create")
        .expect("made");
    assert_eq!(
        store
            .create_token("ops", "viewer", &"b".repeat(64), "cli")
            .await
            .expect("create"),
        None,
        "an active token already has that name"
    );
    assert!(store.any_active_token().await.expect("any"));
    let used = store
        .use_token(&"a".repeat(64))
        .await
        .expect("use")
        .expect("found");
    assert_eq!((used.id, used.role.as_str()), (id, "admin"));
    assert!(store.tokens().await.expect("list")[0].last_used_at.is_some());
    assert!(store.use_token(&"c".repeat(64)).await.expect("use").is_none());
    assert_eq!(
        store.revoke_token(id).await.expect("revoke").map(|t| t.id),
        Some(id)
    );
    assert!(store.revoke_token(id).await.expect("revoke again").is_none());
    assert!(store.use_token(&"a".repeat(64)).await.expect("use").is_none());
    assert!(!store.any_active_token().await.expect("any"));
    // The name is free again once revoked.
    assert!(store
        .create_token("ops", "viewer", &"b".repeat(64), "cli")
        .await
        .expect("create")
        .is_some());

    store.close().await;
}

#[tokio::test]
async fn the_store_scenario_on_sqlite() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    scenario(&format!("sqlite://{}", dir.path().join("state.db").display())).await;
}

#[tokio::test]
async fn the_store_scenario_on_postgres() {
    init_logs();
    let Some(admin) = server_url("TEST_POSTGRES_URL") else {
        return;
    };
    let db = PgDatabase::create(&admin).await;
    scenario(&db.url).await;
    db.drop_db().await;
}

/// Connections the server dropped (a restart, an idle timeout) are pinged when taken after
/// [`kpiwatch::pool::PING_WHEN_IDLE_FOR`] idle, found dead and replaced: no statement fails.
#[tokio::test]
async fn connections_the_server_dropped_are_replaced_after_an_idle_ping_on_postgres() {
    init_logs();
    let Some(admin) = server_url("TEST_POSTGRES_URL") else {
        return;
    };
    let db = PgDatabase::create(&admin).await;
    let store = Store::connect(&db.url).await.expect("connect");
    // Three connections in the pool.
    let (a, b, c) = tokio::join!(store.kpis(), store.kpis(), store.kpis());
    for kpis in [a, b, c] {
        assert!(kpis.expect("kpis").is_empty());
    }
    let pool = sqlx::PgPool::connect(&admin).await.expect("admin");
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()) t",
    )
    .bind(db.name())
    .fetch_one(&pool)
    .await
    .expect("terminate the store's connections");
    pool.close().await;
    assert!(killed >= 1, "the store held no connection to terminate");
    tokio::time::sleep(kpiwatch::pool::PING_WHEN_IDLE_FOR + Duration::from_millis(300)).await;
    for _ in 0..6 {
        store
            .kpis()
            .await
            .expect("a statement after the server dropped the connections");
    }
    store.close().await;
    db.drop_db().await;
}

/// The events and silences every run reads are shared by a process's runs: its own writes
/// are seen at once, another process's within [`kpiwatch::store::SHARED_READS_FOR`].
#[tokio::test]
async fn runs_share_event_and_silence_reads_and_see_other_processes_writes_within_a_second() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("state.db").display());
    let here = Store::connect(&url).await.expect("connect");
    let other = Store::connect(&url).await.expect("connect another process");
    let event = |name: &str| kpiwatch::store::EventRow {
        id: 0,
        name: name.to_owned(),
        origin: "api".to_owned(),
        starts_local: "2026-12-24T00:00:00".to_owned(),
        ends_local: "2026-12-27T00:00:00".to_owned(),
        timezone: "UTC".to_owned(),
        yearly: true,
        margin_before_secs: 0,
        margin_after_secs: 0,
        kpis: "[]".to_owned(),
        labels: "{}".to_owned(),
        uid: None,
        created_by: "test".to_owned(),
        created_at: 0,
    };
    assert!(here.events_shared().await.expect("events").is_empty());
    assert!(here.silences_shared(T).await.expect("silences").is_empty());

    // Another process's writes: not seen while the read is fresh, seen once it is not.
    other.create_events(&[event("other")]).await.expect("event");
    other
        .create_silence(r#"{"kpi":"orders"}"#, T, T + 3600, "bob", "other")
        .await
        .expect("silence");
    let cached_at = std::time::Instant::now();
    let events = here.events_shared().await.expect("events");
    let silences = here.silences_shared(T).await.expect("silences");
    if cached_at.elapsed() < kpiwatch::store::SHARED_READS_FOR / 2 {
        assert!(events.is_empty(), "read within the second: the shared rows");
        assert!(silences.is_empty());
    }
    tokio::time::sleep(kpiwatch::store::SHARED_READS_FOR + Duration::from_millis(100)).await;
    assert_eq!(here.events_shared().await.expect("events").len(), 1);
    assert_eq!(here.silences_shared(T).await.expect("silences").len(), 1);

    // This process's writes: seen by the next read at once.
    let ids = here.create_events(&[event("here")]).await.expect("event");
    assert_eq!(here.events_shared().await.expect("events").len(), 2);
    assert!(here.delete_event(ids[0]).await.expect("delete"));
    assert_eq!(here.events_shared().await.expect("events").len(), 1);
    let sid = here
        .create_silence(r#"{"kpi":"orders"}"#, T, T + 60, "alice", "here")
        .await
        .expect("silence");
    assert_eq!(here.silences_shared(T).await.expect("silences").len(), 2);
    assert!(here.expire_silence(sid, T + 10).await.expect("expire"));
    assert!(
        here.silences_shared(T + 20)
            .await
            .expect("silences")
            .iter()
            .all(|s| s.id != sid),
        "an expired silence is gone from the next read"
    );
    // A later time asks nothing the shared rows lack; an earlier one reads again.
    assert_eq!(here.silences_shared(T - 100).await.expect("silences").len(), 2);
    here.close().await;
    other.close().await;
}

#[tokio::test]
async fn an_unsupported_state_url_is_refused() {
    let err = Store::connect("mysql://root@127.0.0.1/x")
        .await
        .expect_err("mysql is not a state store");
    assert!(err.to_string().contains("unsupported"), "{err}");
}

/// Leases taken in bulk: free and expired ones are taken, ones another holder keeps are not,
/// and the holder's own are renewed.
async fn bulk_leases(url: &str) -> Store {
    let store = Store::connect(url).await.expect("connect");
    let names: Vec<String> = ["kpi:a", "kpi:b", "kpi:c"].map(str::to_owned).to_vec();
    assert!(store.try_lease("kpi:b", "other", 60).await.expect("lease"));
    assert!(
        store.try_lease("kpi:c", "other", -10).await.expect("lease"),
        "already expired"
    );
    let mut held = store.take_leases(&names, "me", 60).await.expect("take");
    held.sort();
    assert_eq!(held, ["kpi:a", "kpi:c"], "b is held by a live process");
    // Taking them again renews mine; b stays the other's.
    let mut again = store.take_leases(&names, "me", 60).await.expect("take");
    again.sort();
    assert_eq!(again, ["kpi:a", "kpi:c"]);
    assert!(!store.try_lease("kpi:a", "other", 60).await.expect("lease"));
    store.release_lease("kpi:b", "other").await.expect("release");
    let mut all = store.take_leases(&names, "me", 60).await.expect("take");
    all.sort();
    assert_eq!(all, names);
    assert!(store.take_leases(&[], "me", 60).await.expect("none").is_empty());
    // Renewing extends only what "me" still holds: a released lease is not taken again, and
    // one another holder has is left alone.
    store.release_lease("kpi:c", "me").await.expect("release");
    assert!(store.try_lease("kpi:d", "other", 60).await.expect("lease"));
    assert!(
        store.try_lease("kpi:e", "me", -10).await.expect("lease"),
        "mine, lapsing"
    );
    let renewing: Vec<String> = ["kpi:a", "kpi:c", "kpi:d", "kpi:e"].map(str::to_owned).to_vec();
    assert_eq!(
        store.renew_leases(&renewing, "me", 60).await.expect("renew"),
        2,
        "a and e"
    );
    assert!(
        !store.try_lease("kpi:e", "other", 60).await.expect("lease"),
        "e was renewed"
    );
    assert!(
        store.try_lease("kpi:c", "other", 60).await.expect("lease"),
        "c stayed free"
    );
    assert!(
        !store.try_lease("kpi:d", "me", 60).await.expect("lease"),
        "d is still the other's"
    );
    assert_eq!(store.renew_leases(&[], "me", 60).await.expect("none"), 0);
    for name in ["kpi:c", "kpi:d"] {
        store.release_lease(name, "other").await.expect("release");
    }
    store.release_lease("kpi:e", "me").await.expect("release");
    assert_eq!(store.take_leases(&names, "me", 60).await.expect("take").len(), 3);
    // More names than one SQLite statement takes.
    let many: Vec<String> = (0..1200).map(|i| format!("kpi:m{i}")).collect();
    assert_eq!(
        store.take_leases(&many, "me", 60).await.expect("many").len(),
        1200
    );
    assert_eq!(
        store.renew_leases(&many, "me", 60).await.expect("renew many"),
        1200
    );
    store
}

#[tokio::test]
async fn due_kpi_leases_are_taken_in_bulk_on_sqlite() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = bulk_leases(&format!("sqlite://{}", dir.path().join("state.db").display())).await;
    store.close().await;
}

#[tokio::test]
async fn due_kpi_leases_are_taken_in_bulk_on_postgres_skipping_rows_another_replica_has_locked() {
    init_logs();
    let Some(admin) = server_url("TEST_POSTGRES_URL") else {
        return;
    };
    let db = PgDatabase::create(&admin).await;
    let store = bulk_leases(&db.url).await;
    // Another replica is in the middle of claiming kpi:x (its row locked, lease expired):
    // this one skips it at once instead of waiting for that transaction.
    let names: Vec<String> = ["kpi:x", "kpi:y"].map(str::to_owned).to_vec();
    assert!(store.try_lease("kpi:x", "gone", -10).await.expect("lease"));
    assert!(store.try_lease("kpi:y", "gone", -10).await.expect("lease"));
    let other = sqlx::PgPool::connect(&db.url).await.expect("connect");
    let mut tx = other.begin().await.expect("tx");
    sqlx::query("SELECT name FROM leases WHERE name = 'kpi:x' FOR UPDATE")
        .execute(&mut *tx)
        .await
        .expect("lock");
    let held = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        store.take_leases(&names, "me", 60),
    )
    .await
    .expect("no waiting on the locked row")
    .expect("take");
    assert_eq!(held, ["kpi:y"]);
    tx.rollback().await.expect("rollback");
    assert_eq!(store.take_leases(&names, "me", 60).await.expect("take"), names);
    other.close().await;
    store.close().await;
    db.drop_db().await;
}

/// A series' checkpoint is one row, overwritten; pruning drops it once its `upto` is past
/// the observations' cut-off; purging the KPI drops it with the series.
async fn checkpoints(url: &str) -> Store {
    let store = Store::connect(url).await.expect("connect");
    let spec = orders_spec("");
    store.upsert_kpi(&spec).await.expect("kpi");
    let series = store.series_id("orders", "{}").await.expect("series");
    assert_eq!(store.checkpoint(series).await.expect("read"), None);
    store
        .save_checkpoint(series, 1_000, 10, 1, &[1, 2, 3])
        .await
        .expect("save");
    store
        .save_checkpoint(series, 2_000, 20, 1, &[4, 5])
        .await
        .expect("overwrite");
    let row = store.checkpoint(series).await.expect("read").expect("one row");
    assert_eq!(
        (row.upto, row.seen, row.format, row.state),
        (2_000, 20, 1, vec![4, 5])
    );
    let cut = |observations| kpiwatch::store::Cutoffs {
        observations,
        evaluations: 0,
        anomalies: 0,
        runs: 0,
        notifications: 0,
    };
    assert_eq!(store.prune(cut(2_000)).await.expect("prune").checkpoints, 0);
    assert_eq!(store.prune(cut(2_001)).await.expect("prune").checkpoints, 1);
    assert_eq!(store.checkpoint(series).await.expect("read"), None);
    store
        .save_checkpoint(series, 3_000, 30, 1, &[6])
        .await
        .expect("save");
    store
        .purge_kpi("orders")
        .await
        .expect("purge with its checkpoint");
    assert_eq!(store.checkpoint(series).await.expect("read"), None);
    store
}

#[tokio::test]
async fn detector_checkpoints_are_overwritten_pruned_and_purged_on_sqlite() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = checkpoints(&format!("sqlite://{}", dir.path().join("state.db").display())).await;
    store.close().await;
}

#[tokio::test]
async fn detector_checkpoints_are_overwritten_pruned_and_purged_on_postgres() {
    init_logs();
    let Some(admin) = server_url("TEST_POSTGRES_URL") else {
        return;
    };
    let db = PgDatabase::create(&admin).await;
    checkpoints(&db.url).await.close().await;
    db.drop_db().await;
}

/// The store time of a run's detector reads for a 1-minute KPI with 28 days of history, on
/// PostgreSQL: the whole replayed history (what every run read before observation
/// revisions, and what a replay still reads) against the revision check plus the buckets
/// after a kept detector. Prints the medians; run with
/// `cargo test --test it store::detector_reads -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "a measurement, not a check"]
async fn detector_reads_of_a_one_minute_kpi_with_28_days_timed() {
    init_logs();
    let Some(admin) = server_url("TEST_POSTGRES_URL") else {
        return;
    };
    let db = PgDatabase::create(&admin).await;
    let store = Store::connect(&db.url).await.expect("connect");
    let spec = orders_spec("");
    store.upsert_kpi(&spec).await.expect("kpi");
    let id = store.series_id("orders", "{}").await.expect("series");
    let (from, end) = (T - 28 * DAY, T);
    let rows: Vec<ObservationRow> = (from..end)
        .step_by(60)
        .map(|ts| ObservationRow {
            ts,
            value: (ts % 97) as f64,
            denominator: None,
        })
        .collect();
    store.upsert_observations(id, &rows).await.expect("history");
    store
        .save_evaluations(id, &[], &[], end - 60)
        .await
        .expect("judged");
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (mut full, mut light) = (Vec::new(), Vec::new());
    for _ in 0..21 {
        let t = std::time::Instant::now();
        let series = store.series_of("orders").await.expect("series");
        let history = store.observations(id, from, end).await.expect("history");
        full.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!((series.len(), history.len()), (1, 40_320));
        let t = std::time::Instant::now();
        let revision = store.series_revision(id, from).await.expect("revision");
        let new = store.observations(id, end - 60, end).await.expect("new");
        light.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!((revision.map(|r| r.first), new.len()), (Some(Some(from)), 1));
    }
    let (full, light) = (median(full), median(light));
    println!(
        "detector reads of a 1-minute KPI with 28 days (40,320 rows), PostgreSQL loopback, median of 21: \
         whole history {full:.2} ms, revision + new bucket {light:.2} ms ({:.0}x)",
        full / light
    );
    assert!(light < full);
}

/// Rows as text: Debug prints every float's shortest round-trip digits (and -0.0 as such), so
/// equal text is equal bits.
fn debug_text<T: std::fmt::Debug>(rows: &[T]) -> Vec<String> {
    rows.iter().map(|r| format!("{r:?}")).collect()
}

/// The observations and verdicts of a backfill-sized batch, with values that test exactness.
fn bulk_rows(from: usize, to: usize, restated: bool) -> (Vec<ObservationRow>, Vec<EvaluationRow>) {
    let odd = [1.0 / 3.0, -0.0, 1e-9, 123_456_789.125, 0.1, 7.0];
    let (mut obs, mut evals) = (Vec::new(), Vec::new());
    // A restatement skips every 7th bucket: those keep their earlier rows.
    for i in (from..to).filter(|i| !restated || !i.is_multiple_of(7)) {
        let ts = T + 60 * i as i64;
        let v = odd[i % odd.len()] + i as f64 + if restated { 0.5 } else { 0.0 };
        obs.push(ObservationRow {
            ts,
            value: v,
            denominator: i.is_multiple_of(3).then_some(v * 2.0 + 1.0),
        });
        evals.push(EvaluationRow {
            ts,
            reading: Reading::new(
                if i.is_multiple_of(5) { f64::NAN } else { v },
                if i > 100 {
                    // An unbounded band edge (a heavy tail's threshold out of reach) travels too.
                    let upper = if i.is_multiple_of(13) {
                        f64::INFINITY
                    } else {
                        v * 1.5
                    };
                    Band::new(v * 0.9, v * 0.5, upper)
                } else {
                    Band::NONE
                },
            ),
            score: odd[(i + 1) % odd.len()],
            anomaly: i.is_multiple_of(11),
            status: if i > 100 { "evaluated" } else { "warming_up" }.to_owned(),
            volume: v,
            flagged_by: i
                .is_multiple_of(11)
                .then(|| if restated { "a\tb\\c\nd" } else { "bucket" }.to_owned()),
        });
    }
    (obs, evals)
}

#[tokio::test]
async fn a_large_batch_written_with_copy_reads_back_as_the_multi_row_inserts_do_on_postgres() {
    init_logs();
    let Some(admin) = server_url("TEST_POSTGRES_URL") else {
        return;
    };
    let db = PgDatabase::create(&admin).await;
    let store = Store::connect(&db.url).await.expect("connect");
    store.upsert_kpi(&orders_spec("")).await.expect("kpi");
    let small = store
        .series_id("orders", r#"{"path":"insert"}"#)
        .await
        .expect("series");
    let large = store
        .series_id("orders", r#"{"path":"copy"}"#)
        .await
        .expect("series");
    let n = 3 * kpiwatch::store::COPY_MIN_ROWS + 17;
    // The backfill, then a restatement of its second half and new buckets after it.
    for (from, to, restated) in [(0, n, false), (n / 2, n + 2_500, true)] {
        let (obs, evals) = bulk_rows(from, to, restated);
        assert!(obs.len() >= kpiwatch::store::COPY_MIN_ROWS);
        // Below the threshold: multi-row INSERTs; the whole batch at once: COPY.
        for chunk in obs.chunks(kpiwatch::store::COPY_MIN_ROWS - 1) {
            store.upsert_observations(small, chunk).await.expect("insert");
        }
        store.upsert_observations(large, &obs).await.expect("copy");
        let until = T + 60 * to as i64;
        for chunk in evals.chunks(kpiwatch::store::COPY_MIN_ROWS - 1) {
            store
                .save_evaluations(small, chunk, &[anomaly(T, 1.0, false)], until)
                .await
                .expect("insert");
        }
        store
            .save_evaluations(large, &evals, &[anomaly(T, 1.0, false)], until)
            .await
            .expect("copy");
    }
    let (first_obs, first_evals) = bulk_rows(0, n, false);
    let (second_obs, second_evals) = bulk_rows(n / 2, n + 2_500, true);
    // What an upsert leaves: the restated rows over the first ones, the skipped ones kept.
    let expected_obs: std::collections::BTreeMap<i64, ObservationRow> = first_obs
        .into_iter()
        .chain(second_obs)
        .map(|r| (r.ts, r))
        .collect();
    let expected_evals: std::collections::BTreeMap<i64, EvaluationRow> = first_evals
        .into_iter()
        .chain(second_evals)
        .map(|e| (e.ts, e))
        .collect();
    let expected_obs: Vec<ObservationRow> = expected_obs.into_values().collect();
    let expected_evals: Vec<EvaluationRow> = expected_evals.into_values().collect();
    for series in [small, large] {
        let obs = store.observations(series, 0, i64::MAX).await.expect("read");
        assert_eq!(obs.len(), expected_obs.len());
        assert!(
            debug_text(&obs) == debug_text(&expected_obs),
            "observations of series {series} differ"
        );
        let evals = store.evaluations(series, 0, i64::MAX).await.expect("read");
        assert!(
            debug_text(&evals) == debug_text(&expected_evals),
            "verdicts of series {series} differ"
        );
    }
    let until = |id| {
        let store = &store;
        async move {
            store
                .series_of("orders")
                .await
                .expect("series")
                .into_iter()
                .find(|s| s.id == id)
                .and_then(|s| s.evaluated_until)
        }
    };
    assert_eq!(until(small).await, Some(T + 60 * (n + 2_500) as i64));
    assert_eq!(until(large).await, until(small).await);
    store.close().await;
    db.drop_db().await;
}
