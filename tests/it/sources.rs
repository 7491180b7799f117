//! KPI sources against the real PostgreSQL and MariaDB servers on the machine, and SQLite:
//! the same contract, bind parameters, read-only execution, timeouts and clear errors.

use std::time::Duration;

use chrono::{DateTime, Utc};
use kpiwatch::config::SourceConfig;
use kpiwatch::kpi::{Interval, Kind, Query};
use kpiwatch::sources::{Error, Source, Window};
use secrecy::SecretString;
use sqlx::Executor;

use crate::helpers::{server_url, unique, with_database};

fn cfg(url: &str, timeout: Duration, row_cap: usize) -> SourceConfig {
    let toml = format!(
        "url = {url:?}\nstatement_timeout = \"{}ms\"\nrow_cap = {row_cap}",
        timeout.as_millis()
    );
    let mut c: SourceConfig = toml::from_str(&toml).expect("source config");
    c.url = SecretString::from(url.to_owned());
    c
}

/// A SQL query through the same `Source::fetch` the pipeline uses, at 5-minute buckets.
async fn fetch_sql(source: &Source, sql: &str, kind: Kind) -> Result<Vec<kpiwatch::sources::RawRow>, Error> {
    let interval = kpiwatch::kpi::Buckets::utc(Interval::parse("5m").expect("valid"));
    let query = Query::Sql(sql.to_owned());
    source
        .fetch(&query, kind, interval, window())
        .await
        .map(|f| f.rows)
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("valid")
        .with_timezone(&Utc)
}

fn window() -> Window {
    Window {
        start: at("2026-03-02T10:00:00Z"),
        end: at("2026-03-02T11:00:00Z"),
    }
}

/// Payments: 10:05 (3 ok of 4, provider a), 10:05 (1 of 1, provider b), 10:20 (0 of 2, a),
/// one row at 09:55 and one at 11:00, both outside the half-open window.
const ROWS: [(&str, &str, &str); 10] = [
    ("2026-03-02 10:05:10", "succeeded", "a"),
    ("2026-03-02 10:05:20", "succeeded", "a"),
    ("2026-03-02 10:05:30", "succeeded", "a"),
    ("2026-03-02 10:05:40", "declined", "a"),
    ("2026-03-02 10:06:00", "succeeded", "b"),
    ("2026-03-02 10:20:00", "declined", "a"),
    ("2026-03-02 10:21:00", "declined", "a"),
    ("2026-03-02 09:55:00", "succeeded", "a"),
    ("2026-03-02 11:00:00", "succeeded", "a"),
    ("2026-03-02 10:59:59", "succeeded", "b"),
];

fn sorted(mut rows: Vec<kpiwatch::sources::RawRow>) -> Vec<(String, Option<f64>, Option<f64>, String)> {
    rows.sort_by(|a, b| (a.ts, &a.dims).cmp(&(b.ts, &b.dims)));
    rows.into_iter()
        .map(|r| {
            let dims = r
                .dims
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            (r.ts.format("%H:%M").to_string(), r.value, r.denominator, dims)
        })
        .collect()
}

fn expected() -> Vec<(String, Option<f64>, Option<f64>, String)> {
    vec![
        ("10:05".into(), Some(3.0), Some(4.0), "provider=a".into()),
        ("10:05".into(), Some(1.0), Some(1.0), "provider=b".into()),
        ("10:20".into(), Some(0.0), Some(2.0), "provider=a".into()),
        ("10:55".into(), Some(1.0), Some(1.0), "provider=b".into()),
    ]
}

async fn check_contract(source: &Source, ratio_sql: &str, wrong_sql: &str) {
    let rows = fetch_sql(source, ratio_sql, Kind::Ratio)
        .await
        .expect("ratio query");
    assert_eq!(sorted(rows), expected());
    let err = fetch_sql(source, wrong_sql, Kind::Ratio)
        .await
        .expect_err("wrong columns");
    match err {
        Error::Contract(msg) => assert!(msg.contains("numerator") && msg.contains("returned"), "{msg}"),
        other => panic!("expected a contract error, got {other}"),
    }
    let err = fetch_sql(source, "SELECT * FROM no_such_table WHERE 1 = 1", Kind::Count)
        .await
        .expect_err("missing table");
    assert!(matches!(err, Error::Query { .. }), "{err}");
    assert!(
        err.to_string().contains("no_such_table"),
        "the database's message is kept: {err}"
    );
}

#[tokio::test]
async fn postgres_source_follows_the_query_contract_read_only() {
    crate::helpers::init_logs();
    let Some(admin) = server_url("TEST_POSTGRES_URL") else {
        return;
    };
    let db = unique("kw_src");
    let admin_pool = sqlx::PgPool::connect(&admin).await.expect("postgres reachable");
    admin_pool
        .execute(format!("CREATE DATABASE {db}").as_str())
        .await
        .expect("create db");
    let url = with_database(&admin, &db);
    let pool = sqlx::PgPool::connect(&url).await.expect("connect test db");
    pool.execute(
        "CREATE TABLE payments (created_at timestamp NOT NULL, status text NOT NULL, provider text NOT NULL)",
    )
    .await
    .expect("create table");
    for (t, s, p) in ROWS {
        sqlx::query("INSERT INTO payments VALUES ($1::timestamp, $2, $3)")
            .bind(t)
            .bind(s)
            .bind(p)
            .execute(&pool)
            .await
            .expect("insert");
    }
    let source = Source::build("pg", &cfg(&url, Duration::from_secs(5), 1000)).expect("source");
    source.healthcheck().await.expect("healthy");
    // date_bin → timestamp, count(*) → bigint, sum(int) → bigint: types vary, the contract holds.
    let ratio = "SELECT date_bin('5 minutes', created_at, timestamp '2000-01-01') AS ts,
                        sum(CASE WHEN status = 'succeeded' THEN 1 ELSE 0 END)::numeric AS numerator,
                        count(*) AS denominator, provider
                 FROM payments WHERE created_at >= :start AND created_at < :end GROUP BY 1, provider";
    let wrong =
        "SELECT created_at AS ts, 1 AS value FROM payments WHERE created_at >= :start AND created_at < :end";
    check_contract(&source, ratio, wrong).await;

    // Read-only: a data-modifying CTE is refused and nothing is deleted.
    let err = fetch_sql(&source, "WITH gone AS (DELETE FROM payments RETURNING created_at) SELECT created_at AS ts, 1 AS value FROM gone WHERE :start < :end", Kind::Count)
        .await
        .expect_err("writes are refused");
    assert!(err.to_string().contains("read-only"), "{err}");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(left, ROWS.len() as i64);

    // The statement timeout cancels a slow query on the server.
    let slow = Source::build("pg", &cfg(&url, Duration::from_millis(300), 1000)).expect("source");
    let err = fetch_sql(
        &slow,
        "SELECT now() AS ts, 1 AS value FROM pg_sleep(3) WHERE :start < :end",
        Kind::Count,
    )
    .await
    .expect_err("too slow");
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(err.is_outage());

    // The row cap.
    let capped = Source::build("pg", &cfg(&url, Duration::from_secs(5), 3)).expect("source");
    let err = fetch_sql(
        &capped,
        "SELECT created_at AS ts, 1 AS value FROM payments WHERE created_at >= :start AND created_at < :end",
        Kind::Count,
    )
    .await
    .expect_err("over the cap");
    assert!(matches!(err, Error::TooManyRows { cap: 3, .. }), "{err}");

    pool.close().await;
    let _ = admin_pool.execute(format!("DROP DATABASE {db}").as_str()).await;
}

#[tokio::test]
async fn mariadb_source_follows_the_query_contract_read_only() {
    crate::helpers::init_logs();
    let Some(admin) = server_url("TEST_MYSQL_URL") else {
        return;
    };
    let db = unique("kw_src");
    let admin_pool = sqlx::MySqlPool::connect(&admin).await.expect("mariadb reachable");
    admin_pool
        .execute(format!("CREATE DATABASE {db}").as_str())
        .await
        .expect("create db");
    let url = with_database(&admin, &db);
    let pool = sqlx::MySqlPool::connect(&url).await.expect("connect test db");
    pool.execute("CREATE TABLE payments (created_at DATETIME NOT NULL, status VARCHAR(16) NOT NULL, provider VARCHAR(16) NOT NULL)")
        .await
        .expect("create table");
    for (t, s, p) in ROWS {
        sqlx::query("INSERT INTO payments VALUES (?, ?, ?)")
            .bind(t)
            .bind(s)
            .bind(p)
            .execute(&pool)
            .await
            .expect("insert");
    }
    let source = Source::build("maria", &cfg(&url, Duration::from_secs(5), 1000)).expect("source");
    source.healthcheck().await.expect("healthy");
    // SUM(...) is DECIMAL, COUNT(*) BIGINT, the bucket a DATETIME from FROM_UNIXTIME.
    let ratio = "SELECT FROM_UNIXTIME(FLOOR(UNIX_TIMESTAMP(created_at) / 300) * 300) AS ts,
                        SUM(status = 'succeeded') AS numerator, COUNT(*) AS denominator, provider
                 FROM payments WHERE created_at >= :start AND created_at < :end GROUP BY 1, provider";
    let wrong =
        "SELECT created_at AS ts, 1 AS value FROM payments WHERE created_at >= :start AND created_at < :end";
    check_contract(&source, ratio, wrong).await;

    // The read-only transaction refuses a write sent down the same path.
    let err = fetch_sql(
        &source,
        "DELETE FROM payments WHERE created_at >= :start AND created_at < :end",
        Kind::Count,
    )
    .await
    .expect_err("writes are refused");
    assert!(
        err.to_string().to_ascii_lowercase().contains("read only"),
        "{err}"
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(left, ROWS.len() as i64);

    // What a read-only transaction lets through is refused too: a file written on the
    // server, a named lock that outlives the transaction.
    let outfile = std::env::temp_dir().join(unique("kw_outfile"));
    for sql in [
        format!(
            "SELECT created_at AS ts, 1 AS value FROM payments WHERE created_at >= :start AND created_at < :end INTO OUTFILE '{}'",
            outfile.display()
        ),
        "SELECT created_at AS ts, GET_LOCK('kpiwatch_guard', 0) AS value FROM payments WHERE created_at >= :start AND created_at < :end".to_owned(),
    ] {
        let err = fetch_sql(&source, &sql, Kind::Count)
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("read-only"), "{err}");
    }
    assert!(!outfile.exists());
    let free: i64 = sqlx::query_scalar("SELECT IS_FREE_LOCK('kpiwatch_guard')")
        .fetch_one(&pool)
        .await
        .expect("lock state");
    assert_eq!(free, 1);

    pool.close().await;
    let _ = admin_pool.execute(format!("DROP DATABASE {db}").as_str()).await;
}

#[tokio::test]
async fn sqlite_source_is_read_only_and_decodes_text_timestamps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("src.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let pool = sqlx::SqlitePool::connect(&url).await.expect("create sqlite");
    pool.execute(
        "CREATE TABLE payments (created_at TEXT NOT NULL, status TEXT NOT NULL, provider TEXT NOT NULL)",
    )
    .await
    .expect("create");
    for (t, s, p) in ROWS {
        sqlx::query("INSERT INTO payments VALUES (?, ?, ?)")
            .bind(t)
            .bind(s)
            .bind(p)
            .execute(&pool)
            .await
            .expect("insert");
    }
    let source = Source::build(
        "lite",
        &cfg(
            &format!("sqlite://{}", path.display()),
            Duration::from_secs(5),
            1000,
        ),
    )
    .expect("source");
    let ratio = "SELECT datetime((strftime('%s', created_at) / 300) * 300, 'unixepoch') AS ts,
                        SUM(status = 'succeeded') AS numerator, COUNT(*) AS denominator, provider
                 FROM payments WHERE created_at >= :start AND created_at < :end GROUP BY 1, provider";
    let wrong =
        "SELECT created_at AS ts, 1 AS value FROM payments WHERE created_at >= :start AND created_at < :end";
    check_contract(&source, ratio, wrong).await;
    let err = fetch_sql(
        &source,
        "DELETE FROM payments WHERE created_at >= :start AND created_at < :end",
        Kind::Count,
    )
    .await
    .expect_err("the connection is read-only");
    assert!(err.to_string().contains("readonly"), "{err}");

    // Wrong types get a clear contract error.
    let err = fetch_sql(
        &source,
        "SELECT 'soon' AS ts, 1 AS value FROM payments WHERE created_at >= :start AND created_at < :end",
        Kind::Count,
    )
    .await
    .expect_err("bad ts");
    assert!(err.to_string().contains("`ts`"), "{err}");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(left, ROWS.len() as i64);
}

#[tokio::test]
async fn an_unreachable_source_is_an_outage_not_a_query_error() {
    // Nothing listens on port 9 of loopback.
    let source = Source::build(
        "down",
        &cfg(
            "postgres://kpiwatch:secret-pw@127.0.0.1:9/none",
            Duration::from_secs(2),
            10,
        ),
    )
    .expect("builds lazily");
    let err = fetch_sql(
        &source,
        "SELECT 1 AS ts, 1 AS value WHERE :start < :end",
        Kind::Count,
    )
    .await
    .expect_err("down");
    assert!(err.is_outage(), "{err}");
    assert!(
        !err.to_string().contains("secret-pw"),
        "credentials must not leak: {err}"
    );
}

#[tokio::test]
async fn a_sql_source_refuses_a_promql_or_influxql_query_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("none.db").display());
    let source = Source::build("shop", &cfg(&url, Duration::from_secs(1), 10)).expect("builds lazily");
    let interval = kpiwatch::kpi::Buckets::utc(Interval::parse("5m").expect("valid"));
    for query in [
        Query::PromQl("sum(up)".to_owned()),
        Query::InfluxQl("SELECT n AS value FROM m WHERE time >= $start AND time < $end".to_owned()),
    ] {
        let err = source
            .fetch(&query, Kind::Count, interval, window())
            .await
            .expect_err("not SQL");
        assert!(
            err.to_string()
                .contains("is a SQL source: its KPIs need query.sql"),
            "{err}"
        );
    }
}
