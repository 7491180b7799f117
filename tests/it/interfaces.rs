//! Interfaces checked by the tools real clients use, against a running `serve` on loopback:
//! the generated OpenAPI document through `openapi-spec-validator` and a bounded
//! schemathesis fuzz run (PyPI, in the venv `.ci/run` makes), `/metrics` through
//! `promtool check metrics`, and a real Prometheus (Debian's `prometheus`) scraping kpiwatch
//! and answering every PromQL expression of the shipped Grafana dashboard.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration as StdDuration, Instant};

use chrono::Duration;
use kpiwatch::api::hash_token;
use kpiwatch::store::Store;
use tokio_util::sync::CancellationToken;

use crate::e2e::{build_full, busy_shop, drive, t0, Shop};
use crate::helpers::{init_logs, SmtpServer};

const ADMIN: &str = "fuzz-admin-token";

/// A tool the test needs: `None` (skip, with a note) when missing, a failure under CI=true.
fn tool(path: &Path, installs: &str) -> Option<PathBuf> {
    if path.exists() {
        return Some(path.to_owned());
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{} is missing; {installs}",
        path.display()
    );
    eprintln!("skipping: {} is missing ({installs})", path.display());
    None
}

/// The Python venv `.ci/run` makes for the PyPI tools.
fn venv_tool(name: &str) -> Option<PathBuf> {
    let venv = std::env::var_os("TEST_PYTHON_VENV")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/kpiwatch-venv")))
        .unwrap_or_else(|| PathBuf::from("/nonexistent"));
    tool(
        &venv.join("bin").join(name),
        ".ci/run installs it in $HOME/.cache/kpiwatch-venv (or set TEST_PYTHON_VENV)",
    )
}

/// kpiwatch serving on loopback with two weeks of orders judged, an incident fired and
/// resolved, and an admin token configured.
struct Running {
    base: String,
    store: Store,
    token: CancellationToken,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    _shop: Shop,
    _smtp: SmtpServer,
}

impl Running {
    async fn start(dir: &Path) -> Running {
        let smtp = SmtpServer::start();
        let (mut shop, clock) = busy_shop(dir).await;
        let tokens = format!(
            "[{{name = \"fuzzer\", role = \"admin\", sha256 = \"{}\"}}]",
            hash_token(ADMIN)
        );
        let app = build_full(dir, &smtp, &clock, "", &[("KPIWATCH_API__TOKENS", tokens)]).await;
        app.scheduler().run_due().await;
        // A drop (no orders for 45 minutes) and the recovery: alerts, anomalies, notifications.
        sqlx::query("DELETE FROM order_counts WHERE ts >= ? AND ts < ?")
            .bind(
                (t0() + Duration::minutes(5))
                    .format("%Y-%m-%d %H:%M:%S")
                    .to_string(),
            )
            .bind(
                (t0() + Duration::minutes(50))
                    .format("%Y-%m-%d %H:%M:%S")
                    .to_string(),
            )
            .execute(&shop.pool)
            .await
            .expect("drop");
        shop.traffic(t0() + Duration::hours(1), t0() + Duration::hours(2))
            .await;
        drive(&app, &clock, t0() + Duration::minutes(110)).await;
        let base = format!("http://127.0.0.1:{}", app.port());
        let store = app.store().clone();
        let token = CancellationToken::new();
        let server = tokio::spawn(app.run_until_stopped(token.clone()));
        Running {
            base,
            store,
            token,
            server,
            _shop: shop,
            _smtp: smtp,
        }
    }

    async fn stop(self) {
        self.token.cancel();
        self.server.await.expect("joined").expect("clean shutdown");
    }
}

/// A child process killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[tokio::test]
async fn the_served_openapi_document_is_valid_openapi_3_1_and_every_route_answers_as_documented() {
    init_logs();
    let Some(validator) = venv_tool("openapi-spec-validator") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let running = Running::start(dir.path()).await;
    let http = reqwest::Client::new();
    let doc_text = http
        .get(format!("{}/api/openapi.json", running.base))
        .send()
        .await
        .expect("openapi.json")
        .text()
        .await
        .expect("text");
    let doc: serde_json::Value = serde_json::from_str(&doc_text).expect("JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, &doc_text).expect("write");
    let out = Command::new(&validator)
        .arg(&file)
        .output()
        .expect("validator runs");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Every documented operation answers with a status its documentation lists.
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 12, "{:?}", paths.keys().collect::<Vec<_>>());
    let mut operations = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("path item") {
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            let mut uri = path.clone();
            for p in params.iter().filter(|p| p["in"] == "path") {
                let name = p["name"].as_str().expect("name");
                let value = if p["schema"]["type"] == "integer" {
                    "987654"
                } else {
                    "orders"
                };
                uri = uri.replace(&format!("{{{name}}}"), value);
            }
            let request = http
                .request(
                    method.to_uppercase().parse().expect("method"),
                    format!("{}{uri}", running.base),
                )
                .bearer_auth(ADMIN)
                .header("content-type", "application/json");
            let request = if op.get("requestBody").is_some() {
                request.body("{}")
            } else {
                request
            };
            let response = request.send().await.expect("response");
            let status = response.status().as_u16().to_string();
            let documented: Vec<&String> = op["responses"].as_object().expect("responses").keys().collect();
            assert!(
                documented.iter().any(|d| **d == status),
                "{method} {uri} answered {status}, documented {documented:?}: {}",
                response.text().await.unwrap_or_default()
            );
            operations += 1;
        }
    }
    assert!(operations >= 18, "{operations} operations");
    // Without a token the API refuses; the document itself and the reference page need none.
    let anonymous = http
        .get(format!("{}/api/kpis", running.base))
        .send()
        .await
        .expect("kpis");
    assert_eq!(anonymous.status(), 401);
    let docs = http
        .get(format!("{}/api/docs", running.base))
        .send()
        .await
        .expect("docs");
    assert_eq!(docs.status(), 200);
    assert!(docs
        .text()
        .await
        .expect("html")
        .contains("/vendor/redoc.standalone.js"));
    running.stop().await;
}

#[tokio::test]
async fn a_bounded_schemathesis_fuzz_run_against_serve_finds_no_failures() {
    init_logs();
    let Some(st) = venv_tool("st") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let running = Running::start(dir.path()).await;
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/schemathesis.toml");
    let started = Instant::now();
    let out = tokio::task::spawn_blocking({
        let base = running.base.clone();
        move || {
            Command::new(st)
                .arg("--config-file")
                .arg(&config)
                .args(["run", &format!("{base}/api/openapi.json")])
                .args(["--url", &base])
                .args(["--header", &format!("Authorization: Bearer {ADMIN}")])
                // One worker: with two, CPython 3.11's `ast.parse` (used by hypothesis to
                // describe strategies) can fail with "AST constructor recursion depth
                // mismatch" when threads race: an error of the tool, not of the API.
                .args(["--max-examples", "40", "--workers", "1", "--seed", "12"])
                .args(["--max-time", "150", "--request-timeout", "20"])
                .args(["--phases", "examples,coverage,fuzzing"])
                .env("NO_COLOR", "1")
                .env("SCHEMATHESIS_HOOKS", "")
                .current_dir(dir_of(&base))
                .output()
                .expect("schemathesis runs")
        }
    })
    .await
    .expect("joined");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("schemathesis took {:.0} s", started.elapsed().as_secs_f64());
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("passed"), "{stdout}");
    // The run's summary, for the record (`--nocapture` shows it).
    if let Some(summary) = stdout.split("SUMMARY").nth(1) {
        eprintln!("schemathesis summary:{summary}");
    }
    running.stop().await;
}

/// Where schemathesis may write its reports (a scratch folder, not the repo).
fn dir_of(_base: &str) -> PathBuf {
    std::env::temp_dir()
}

#[tokio::test]
async fn promtool_accepts_the_live_metrics_and_openmetrics_is_served_when_asked() {
    init_logs();
    let Some(promtool) = tool(
        Path::new("/usr/bin/promtool"),
        ".ci/run installs Debian's prometheus package",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let running = Running::start(dir.path()).await;
    let http = reqwest::Client::new();
    let response = http
        .get(format!("{}/metrics", running.base))
        .send()
        .await
        .expect("metrics");
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = response.text().await.expect("text");
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
    }
    let out = child.wait_with_output().expect("promtool ends");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}\n{text}"
    );
    for family in [
        "kpiwatch_kpi_value",
        "kpiwatch_kpi_expected",
        "kpiwatch_kpi_lower",
        "kpiwatch_kpi_upper",
        "kpiwatch_kpi_runs_total",
        "kpiwatch_anomalies_total",
        "kpiwatch_notifications_total",
    ] {
        assert!(text.contains(&format!("# HELP {family} ")), "{family}\n{text}");
        assert!(
            text.contains(&format!("\n{family}{{")),
            "{family} has samples\n{text}"
        );
    }
    assert!(
        !text.contains('@'),
        "no e-mail addresses as label values:\n{text}"
    );
    assert!(!text.contains("# EOF"));

    let open = http
        .get(format!("{}/metrics", running.base))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .send()
        .await
        .expect("metrics");
    assert!(open.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("application/openmetrics-text; version=1.0.0"));
    let open = open.text().await.expect("text");
    assert!(open.contains("# TYPE kpiwatch_kpi_runs counter"), "{open}");
    assert!(open.ends_with("# EOF\n"));
    running.stop().await;
}

/// The PromQL of every panel of the shipped dashboard, with Grafana's variables filled in.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/kpiwatch-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON");
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let filled = expr
                .replace("$__rate_interval", "30s")
                .replace("$kpi", "orders")
                .replace("$series", ".*");
            out.push((panel["title"].as_str().unwrap_or_default().to_owned(), filled));
        }
    }
    out
}

#[tokio::test]
async fn a_real_prometheus_scraping_kpiwatch_answers_every_query_of_the_grafana_dashboard() {
    init_logs();
    let Some(prometheus) = tool(
        Path::new("/usr/bin/prometheus"),
        ".ci/run installs Debian's prometheus package",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let running = Running::start(dir.path()).await;
    let target = running.base.trim_start_matches("http://").to_owned();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: kpiwatch\n    static_configs:\n      - targets: [\"{target}\"]\n"
        ),
    )
    .expect("config");
    let port = free_port();
    let _prometheus = Killed(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts"),
    );
    let http = reqwest::Client::new();
    let query = |q: String| {
        let http = http.clone();
        async move {
            let answer: serde_json::Value = http
                .get(format!("http://127.0.0.1:{port}/api/v1/query"))
                .query(&[("query", q.as_str())])
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            Some(answer)
        }
    };
    // Up, and enough scrapes for the rate() windows.
    let deadline = Instant::now() + StdDuration::from_secs(60);
    loop {
        let runs =
            query("sum(rate(kpiwatch_source_query_duration_seconds_count[30s])) >= 0".to_owned()).await;
        let up = query("up{job=\"kpiwatch\"} == 1".to_owned()).await;
        // The first run of `orders` may finish after the scrapes above began (a loaded CI
        // machine): its gauges must have been scraped too.
        let judged = query("kpiwatch_kpi_value{kpi=\"orders\"}".to_owned()).await;
        let ready = |a: &Option<serde_json::Value>| {
            a.as_ref()
                .is_some_and(|a| a["data"]["result"].as_array().is_some_and(|r| !r.is_empty()))
        };
        if ready(&up) && ready(&runs) && ready(&judged) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape kpiwatch (or its judged orders): {up:?} {judged:?}"
        );
        tokio::time::sleep(StdDuration::from_millis(500)).await;
    }
    tokio::time::sleep(StdDuration::from_secs(3)).await;

    let latest = running
        .store
        .latest_evaluations()
        .await
        .expect("latest")
        .into_iter()
        .find(|e| e.kpi_id == "orders")
        .expect("orders was judged");
    let queries = dashboard_queries();
    assert!(queries.len() >= 10, "{queries:?}");
    for (panel, expr) in &queries {
        // A scrape that fails on a loaded machine (the 1 s scrape timeout) marks every series
        // stale until the next one: ask again for a while before judging an empty answer.
        let may_be_empty = expr.contains("failures") || expr.contains("receiver_failing");
        let asked = Instant::now();
        let answer = loop {
            let answer = query(expr.clone()).await.expect("an answer");
            let empty = answer["data"]["result"].as_array().is_none_or(|r| r.is_empty());
            if may_be_empty || !empty || asked.elapsed() > StdDuration::from_secs(30) {
                break answer;
            }
            tokio::time::sleep(StdDuration::from_millis(500)).await;
        };
        assert_eq!(answer["status"], "success", "{panel}: {expr}: {answer}");
        let result = answer["data"]["result"].as_array().expect("result");
        let value = |i: usize| -> f64 {
            result[i]["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .expect("a number")
        };
        let expect = |x: f64| {
            assert!(x.is_finite(), "stored: {x}");
            x
        };
        let (r, band) = (latest.reading, latest.reading.band);
        let want = match expr.split('{').next().unwrap_or_default() {
            "kpiwatch_kpi_value" => Some(expect(r.value)),
            "kpiwatch_kpi_expected" => Some(expect(band.expected)),
            "kpiwatch_kpi_lower" => Some(expect(band.lower)),
            "kpiwatch_kpi_upper" => Some(expect(band.upper)),
            _ => None,
        };
        if let Some(want) = want {
            assert_eq!(result.len(), 1, "{expr}: {answer}");
            assert_eq!(result[0]["metric"]["kpi"], "orders");
            assert!((value(0) - want).abs() < 1e-9, "{expr}: {} vs {want}", value(0));
        } else if !may_be_empty {
            // Everything else has data here too (failing sources and receivers have none).
            assert!(!result.is_empty(), "{panel}: {expr}: {answer}");
        }
    }
    // The dashboard's variables: the KPI list comes from the same metric.
    let labels: serde_json::Value = http
        .get(format!("http://127.0.0.1:{port}/api/v1/label/kpi/values"))
        .query(&[("match[]", "kpiwatch_kpi_value")])
        .send()
        .await
        .expect("labels")
        .json()
        .await
        .expect("json");
    assert_eq!(labels["data"], serde_json::json!(["orders"]));
    running.stop().await;
}
