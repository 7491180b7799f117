//! Kill tests: two real `kpiwatch serve` processes (the binary Cargo built) share one
//! PostgreSQL state store; one is SIGKILLed in the middle of a KPI run, then the one
//! delivering the alert is SIGKILLed in the middle of the SMTP conversation. The survivors
//! take the run and the delivery over within one interval plus `claim_timeout`, the alert
//! reaches the SMTP server (which records Message-IDs) exactly once, and every anomalous
//! bucket of the still-open incident is recorded and the incident dated from its start.

use std::fs::File;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use chrono::{DurationRound, Utc};
use mailin_embedded::{Handler, Response, Server, SslConfig};
use sqlx::{Executor, PgPool};

use crate::helpers::{init_logs, server_url, PgDatabase};

/// The lease and outbox claim timeout the processes run with.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(5);
/// The KPI's interval (the shortest there is).
const INTERVAL: Duration = Duration::from_secs(60);

/// The shop's 1-minute orders KPI.
const MODEL: &str = crate::helpers::ONE_MINUTE_ORDERS_MODEL;
/// Each run's query takes two seconds (`pg_sleep`), so a run is caught in flight.
const QUERY: &str = "WITH pause AS (SELECT pg_sleep(2) AS slept)
SELECT o.ts, o.n AS value FROM orders_min o, pause WHERE o.ts >= :start AND o.ts < :end";

/// A message as the SMTP server accepted it.
#[derive(Debug, Clone)]
struct Accepted {
    message_id: Option<String>,
    subject: String,
}

#[derive(Debug, Default)]
struct GateState {
    /// Stall the next conversation at DATA (before the server's 354) until released.
    armed: bool,
    stalled: bool,
    released: bool,
    /// Hold the next accepted message before the server's 250 until released.
    hold_accept: bool,
    accept_held: bool,
    accept_released: bool,
    accepted: Vec<Accepted>,
}

/// An SMTP handler that records what it accepts and can hold one conversation at DATA.
#[derive(Clone)]
struct Gate {
    state: Arc<(Mutex<GateState>, Condvar)>,
    data: Vec<u8>,
}

impl Handler for Gate {
    fn data_start(&mut self, _domain: &str, _from: &str, _is8bit: bool, _to: &[String]) -> Response {
        let (lock, cv) = &*self.state;
        let mut st = lock.lock().expect("gate lock");
        if st.armed {
            st.armed = false;
            st.stalled = true;
            cv.notify_all();
            st = cv
                .wait_timeout_while(st, Duration::from_secs(30), |s| !s.released)
                .expect("gate lock")
                .0;
        }
        drop(st);
        self.data.clear();
        mailin_embedded::response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        let text = String::from_utf8_lossy(&self.data).into_owned();
        let parsed = mail_parser::MessageParser::default().parse(text.as_bytes());
        let accepted = Accepted {
            message_id: parsed.as_ref().and_then(|m| m.message_id().map(str::to_owned)),
            subject: parsed
                .as_ref()
                .and_then(|m| m.subject().map(str::to_owned))
                .unwrap_or_default(),
        };
        let (lock, cv) = &*self.state;
        let mut st = lock.lock().expect("gate lock");
        st.accepted.push(accepted);
        if st.hold_accept {
            st.hold_accept = false;
            st.accept_held = true;
            cv.notify_all();
            drop(
                cv.wait_timeout_while(st, Duration::from_secs(30), |s| !s.accept_released)
                    .expect("gate lock"),
            );
        }
        mailin_embedded::response::OK
    }
}

fn start_smtp() -> (u16, Arc<(Mutex<GateState>, Condvar)>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind SMTP port");
    let port = listener.local_addr().expect("addr").port();
    let state = Arc::new((Mutex::new(GateState::default()), Condvar::new()));
    let mut server = Server::new(Gate {
        state: Arc::clone(&state),
        data: Vec::new(),
    });
    server
        .with_name("test.local")
        .with_ssl(SslConfig::None)
        .expect("no TLS")
        .with_tcp_listener(listener);
    std::thread::spawn(move || {
        let _ = server.serve();
    });
    (port, state)
}

/// A `kpiwatch serve` child, SIGKILLed when dropped (a failing test leaves no process behind).
struct Serve {
    child: Child,
}

impl Serve {
    fn spawn(dir: &Path, name: &str, env: &[(&str, String)]) -> Self {
        let log = |ext: &str| File::create(dir.join(format!("{name}.{ext}"))).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kpiwatch"));
        cmd.current_dir(dir)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log("out")))
            .stderr(Stdio::from(log("err")));
        for (k, v) in env {
            cmd.env(k, v);
        }
        Serve {
            child: cmd.spawn().expect("kpiwatch serve starts"),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL (what `Child::kill` sends on Unix) and reap.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The process id in an instance name `kpiwatch-<pid>-<random>`.
fn pid_of(instance: &str) -> Option<u32> {
    instance.split('-').nth(1)?.parse().ok()
}

/// Poll `probe` every 50 ms until it gives a value, at most `limit`.
async fn poll<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two databases (state, shop), the shop's four days of orders with an outage from three
/// minutes ago on, the model, the recording SMTP server and the processes' environment.
struct Setup {
    dir: tempfile::TempDir,
    state_db: PgDatabase,
    shop_db: PgDatabase,
    shop: PgPool,
    minute: chrono::DateTime<Utc>,
    outage: chrono::DateTime<Utc>,
    gate: Arc<(Mutex<GateState>, Condvar)>,
    env: Vec<(&'static str, String)>,
}

async fn setup(admin: &str) -> Setup {
    let admin = admin.to_owned();
    let dir = tempfile::tempdir().expect("tempdir");
    let state_db = PgDatabase::create(&admin).await;
    let shop_db = PgDatabase::create(&admin).await;

    // The shop: four days of about 50 orders a minute, then none from three minutes ago on
    // (an outage still under way when the service first looks).
    let shop = PgPool::connect(&shop_db.url).await.expect("shop");
    shop.execute("CREATE TABLE orders_min (ts TIMESTAMPTZ PRIMARY KEY, n INTEGER NOT NULL)")
        .await
        .expect("table");
    let minute = Utc::now()
        .duration_trunc(chrono::Duration::minutes(1))
        .expect("minute");
    let outage = minute - chrono::Duration::minutes(3);
    sqlx::query(
        "INSERT INTO orders_min
         SELECT t, CASE WHEN t >= $2 THEN 0
                        ELSE 40 + ((extract(epoch FROM t)::bigint / 60) * 7919) % 21 END
         FROM generate_series($1::timestamptz, $3::timestamptz, interval '1 minute') t",
    )
    .bind(minute - chrono::Duration::days(4))
    .bind(outage)
    .bind(minute + chrono::Duration::minutes(30))
    .execute(&shop)
    .await
    .expect("rows");

    let models = dir.path().join("models/orders");
    std::fs::create_dir_all(&models).expect("models");
    std::fs::write(models.join("model.toml"), MODEL).expect("model");
    std::fs::write(models.join("query.sql"), QUERY).expect("query");

    let (smtp_port, gate) = start_smtp();
    let env = vec![
        ("KPIWATCH_MODELS", dir.path().join("models").display().to_string()),
        ("KPIWATCH_STATE__URL", state_db.url.clone()),
        ("KPIWATCH_SOURCES__SHOP__URL", shop_db.url.clone()),
        ("KPIWATCH_HTTP__BIND", "127.0.0.1:0".to_owned()),
        ("KPIWATCH_EMAIL__SMTP__HOST", "127.0.0.1".to_owned()),
        ("KPIWATCH_EMAIL__SMTP__PORT", smtp_port.to_string()),
        (
            "KPIWATCH_EMAIL__OUTBOX_DIR",
            dir.path().join("outbox").display().to_string(),
        ),
        ("KPIWATCH_DIGEST__ENABLED", "false".to_owned()),
        ("KPIWATCH_SCHEDULER__BACKFILL", "4d".to_owned()),
        ("KPIWATCH_SCHEDULER__HISTORY", "4d".to_owned()),
        ("KPIWATCH_SCHEDULER__TICK", "1s".to_owned()),
        (
            "KPIWATCH_SCHEDULER__CLAIM_TIMEOUT",
            format!("{}s", CLAIM_TIMEOUT.as_secs()),
        ),
    ];
    Setup {
        dir,
        state_db,
        shop_db,
        shop,
        minute,
        outage,
        gate,
        env,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_processes_runs_and_deliveries_are_taken_over_and_each_alert_is_sent_once() {
    init_logs();
    let Some(admin) = server_url("TEST_POSTGRES_URL") else {
        return;
    };
    let Setup {
        dir,
        state_db,
        shop_db,
        shop,
        minute,
        outage,
        gate,
        env,
    } = setup(&admin).await;
    // Hold the first SMTP conversation at DATA: the process delivering is killed there.
    gate.0.lock().expect("gate").armed = true;
    let mut procs = vec![
        Serve::spawn(dir.path(), "a", &env),
        Serve::spawn(dir.path(), "b", &env),
    ];
    let state = PgPool::connect(&state_db.url).await.expect("state");

    // 1. Kill the process running the KPI while its query is in flight.
    let holder: String = poll("a process to lease the KPI", Duration::from_secs(20), || async {
        sqlx::query_scalar("SELECT holder FROM leases WHERE name = 'kpi:orders'")
            .fetch_optional(&state)
            .await
            .ok()
            .flatten()
    })
    .await;
    let pid = pid_of(&holder).expect("the holder names its pid");
    let victim = procs
        .iter()
        .position(|p| p.pid() == pid)
        .unwrap_or_else(|| panic!("lease held by {holder}, not one of the spawned processes"));
    procs[victim].kill();
    let killed_at = Instant::now();
    let fetched: Option<i64> = sqlx::query_scalar("SELECT fetched_until FROM kpis WHERE id = 'orders'")
        .fetch_one(&state)
        .await
        .expect("kpi row");
    assert_eq!(fetched, None, "the killed process was still running the KPI");
    // The orchestrator restarts it: two processes again.
    procs.push(Serve::spawn(dir.path(), "c", &env));

    // 2. Another process takes the run over within one interval plus the lease timeout.
    let (new_holder, took_over) = poll(
        "another process to take the KPI over",
        INTERVAL + CLAIM_TIMEOUT + Duration::from_secs(10),
        || async {
            let h: Option<String> = sqlx::query_scalar("SELECT holder FROM leases WHERE name = 'kpi:orders'")
                .fetch_optional(&state)
                .await
                .ok()
                .flatten();
            h.filter(|h| *h != holder).map(|h| (h, killed_at.elapsed()))
        },
    )
    .await;
    println!("run taken over by {new_holder} {took_over:?} after the kill (claim_timeout {CLAIM_TIMEOUT:?})");
    assert!(took_over <= INTERVAL + CLAIM_TIMEOUT, "{took_over:?}");

    // 3. The run opens the alert and a process starts delivering it: kill that one while the
    //    SMTP server holds the conversation at DATA (nothing accepted yet).
    {
        let (lock, cv) = &*gate;
        let st = lock.lock().expect("gate");
        let (st, timeout) = cv
            .wait_timeout_while(st, Duration::from_secs(30), |s| !s.stalled)
            .expect("gate");
        assert!(!timeout.timed_out(), "no delivery started: {:?}", st.accepted);
    }
    let claimer: String = sqlx::query_scalar(
        "SELECT claimed_by FROM notifications WHERE status = 'pending' AND claimed_by IS NOT NULL",
    )
    .fetch_one(&state)
    .await
    .expect("the notification is claimed by the process delivering it");
    let pid = pid_of(&claimer).expect("the claimer names its pid");
    let courier = procs
        .iter()
        .position(|p| p.pid() == pid)
        .unwrap_or_else(|| panic!("claimed by {claimer}, not one of the spawned processes"));
    procs[courier].kill();
    let killed_at = Instant::now();
    {
        let (lock, cv) = &*gate;
        lock.lock().expect("gate").released = true;
        cv.notify_all();
    }

    // 4. The surviving process delivers it once its claim has expired.
    let delivered_after = poll(
        "the alert to be marked sent",
        INTERVAL + CLAIM_TIMEOUT + Duration::from_secs(10),
        || async {
            let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications WHERE status = 'sent'")
                .fetch_one(&state)
                .await
                .ok()?;
            (sent > 0).then(|| killed_at.elapsed())
        },
    )
    .await;
    println!("delivery taken over and sent {delivered_after:?} after the kill");
    assert!(delivered_after <= INTERVAL + CLAIM_TIMEOUT, "{delivered_after:?}");

    // Every message the store holds went out exactly once: the alert's firing message, and
    // whatever later events of the same incident were queued while the test ran.
    let messages: Vec<(String, String, Option<String>)> =
        poll("the outbox to drain", INTERVAL + CLAIM_TIMEOUT, || async {
            let rows: Vec<(String, String, Option<String>)> =
                sqlx::query_as("SELECT event, status, message_id FROM notifications ORDER BY id")
                    .fetch_all(&state)
                    .await
                    .ok()?;
            rows.iter().all(|r| r.1 == "sent").then_some(rows)
        })
        .await;
    let alerts: i64 = sqlx::query_scalar("SELECT count(*) FROM alerts")
        .fetch_one(&state)
        .await
        .expect("alerts");
    assert_eq!(alerts, 1, "one incident");
    assert_eq!(messages[0].0, "firing", "{messages:?}");
    assert_eq!(
        messages.iter().filter(|m| m.0 == "firing").count(),
        1,
        "{messages:?}"
    );
    let accepted = gate.0.lock().expect("gate").accepted.clone();
    assert_eq!(
        accepted.len(),
        messages.len(),
        "each delivered exactly once: {accepted:?} vs {messages:?}"
    );
    assert!(
        accepted[0].subject.contains("Orders dropped to 0"),
        "{accepted:?}"
    );
    let bare = |id: &str| id.trim_matches(['<', '>']).to_owned();
    for (event, _, id) in &messages {
        let id = bare(id.as_deref().expect("a sent message records its Message-ID"));
        let times = accepted
            .iter()
            .filter(|a| a.message_id.as_deref().map(bare).as_deref() == Some(id.as_str()))
            .count();
        assert_eq!(
            times, 1,
            "{event} <{id}> reached the server {times} times: {accepted:?}"
        );
    }
    println!("messages: {messages:?}");

    // 5. Nothing was lost to the kills: every minute from the backfill's start to the newest
    //    judged one was judged exactly once, every empty minute is an anomaly on record, and
    //    the incident is firing, dated from the first of them.
    let judged: Vec<(i64, bool)> = sqlx::query_as("SELECT ts, anomaly FROM evaluations ORDER BY ts")
        .fetch_all(&state)
        .await
        .expect("evaluations");
    let first = judged.first().map(|j| j.0).expect("judged buckets");
    let newest = judged.last().map(|j| j.0).expect("judged buckets");
    // The backfill reaches four days back from the minute of the first run (a minute may have
    // begun since the shop was filled).
    let backfill_from = (minute - chrono::Duration::days(4)).timestamp();
    assert!((backfill_from..=backfill_from + 60).contains(&first), "{first}");
    assert_eq!(
        judged.iter().map(|j| j.0).collect::<Vec<_>>(),
        (first..=newest).step_by(60).collect::<Vec<_>>(),
        "one verdict per minute, none skipped or repeated"
    );
    assert!(
        newest >= minute.timestamp() - 60,
        "judged up to the kill-time minute"
    );
    let anomalies: Vec<(i64, bool)> = sqlx::query_as("SELECT ts, alerted FROM anomalies ORDER BY ts")
        .fetch_all(&state)
        .await
        .expect("anomalies");
    assert_eq!(
        anomalies.iter().map(|a| a.0).collect::<Vec<_>>(),
        judged.iter().filter(|j| j.1).map(|j| j.0).collect::<Vec<_>>(),
        "every flagged minute is on record"
    );
    let (alert_state, started): (String, i64) = sqlx::query_as("SELECT state, started_ts FROM alerts")
        .fetch_one(&state)
        .await
        .expect("alert");
    assert_eq!(alert_state, "firing");
    assert_eq!(
        started,
        outage.timestamp(),
        "the incident is dated from the first empty minute"
    );
    assert_eq!(
        anomalies.iter().map(|a| a.0).collect::<Vec<_>>(),
        (outage.timestamp()..=newest).step_by(60).collect::<Vec<_>>(),
        "exactly the empty minutes are flagged"
    );
    println!(
        "incident firing from {} s after the first empty minute; flagged minutes (s after it): {:?}",
        started - outage.timestamp(),
        anomalies
            .iter()
            .map(|a| (a.0 - outage.timestamp(), a.1))
            .collect::<Vec<_>>()
    );

    for p in &mut procs {
        p.kill();
    }
    assert_eq!(gate.0.lock().expect("gate").accepted.len(), 1);
    state.close().await;
    shop.close().await;
    state_db.drop_db().await;
    shop_db.drop_db().await;
}

/// The window exactly-once cannot close: the SMTP server has accepted a message (250) but the
/// process dies before the store records it as sent. The test holds the notification's row
/// lock so that the process is caught between the two, SIGKILLs it, and lets the survivor
/// take the claim over. What it shows: the message is sent again, under the same Message-ID
/// (it comes from the outbox row), so a receiver that de-duplicates by Message-ID shows it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_after_the_server_accepted_a_message_gets_it_resent_under_the_same_message_id() {
    init_logs();
    let Some(admin) = server_url("TEST_POSTGRES_URL") else {
        return;
    };
    let Setup {
        dir,
        state_db,
        shop_db,
        shop,
        gate,
        env,
        ..
    } = setup(&admin).await;
    gate.0.lock().expect("gate").hold_accept = true;
    let mut procs = vec![
        Serve::spawn(dir.path(), "a", &env),
        Serve::spawn(dir.path(), "b", &env),
    ];
    let state = PgPool::connect(&state_db.url).await.expect("state");

    // The server has the message and holds its 250: lock the row the sender will mark sent.
    {
        let (lock, cv) = &*gate;
        let st = lock.lock().expect("gate");
        let (_st, timeout) = cv
            .wait_timeout_while(st, Duration::from_secs(40), |s| !s.accept_held)
            .expect("gate");
        assert!(!timeout.timed_out(), "no message reached the server");
    }
    let (id, claimer): (i64, String) =
        sqlx::query_as("SELECT id, claimed_by FROM notifications WHERE status = 'pending'")
            .fetch_one(&state)
            .await
            .expect("the claimed message");
    let mut blocker = state.begin().await.expect("tx");
    sqlx::query("SELECT id FROM notifications WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *blocker)
        .await
        .expect("row lock");
    {
        let (lock, cv) = &*gate;
        lock.lock().expect("gate").accept_released = true;
        cv.notify_all();
    }
    // The sender got its 250 and now waits for the row to record the message as sent.
    poll(
        "the sender to wait on the row lock",
        Duration::from_secs(20),
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'
               AND query LIKE 'UPDATE notifications SET %'",
            )
            .fetch_one(&state)
            .await
            .ok()?;
            (waiting > 0).then_some(())
        },
    )
    .await;
    let pid = pid_of(&claimer).expect("the claimer names its pid");
    let sender = procs
        .iter()
        .position(|p| p.pid() == pid)
        .unwrap_or_else(|| panic!("claimed by {claimer}, not one of the spawned processes"));
    procs[sender].kill();
    blocker.rollback().await.expect("release the row");

    let message_id: String = poll(
        "a survivor to send it and record it",
        INTERVAL + CLAIM_TIMEOUT,
        || async {
            sqlx::query_scalar("SELECT message_id FROM notifications WHERE id = $1 AND status = 'sent'")
                .bind(id)
                .fetch_optional(&state)
                .await
                .ok()
                .flatten()
        },
    )
    .await;
    let accepted = gate.0.lock().expect("gate").accepted.clone();
    println!("accepted by the server: {accepted:?}");
    let bare = message_id.trim_matches(['<', '>']).to_owned();
    let times = accepted
        .iter()
        .filter(|a| a.message_id.as_deref().map(|m| m.trim_matches(['<', '>'])) == Some(bare.as_str()))
        .count();
    assert_eq!(
        (accepted.len(), times),
        (2, 2),
        "sent twice, both times as <{bare}>: {accepted:?}"
    );
    for p in &mut procs {
        p.kill();
    }
    state.close().await;
    shop.close().await;
    state_db.drop_db().await;
    shop_db.drop_db().await;
}
