//! Shared test scaffolding: server URLs from the environment, per-test databases, a real
//! SMTP server on 127.0.0.1, and settings for a test app.

#![allow(dead_code)]

use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use kpiwatch::config::{self, Settings};
use mailin_embedded::{Handler, Response, Server, SslConfig};
use rand::Rng;

/// Logs stay silent unless TEST_LOG is set.
pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        kpiwatch::telemetry::init("debug,sqlx=warn", false);
    }
}

/// The URL of a database server the test needs, from `var`. Under `CI=true` a missing URL
/// fails the test; elsewhere the test is skipped with a note.
pub fn server_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{var} is not set; under CI=true this test must not skip (see .ci/run)"
            );
            eprintln!("skipping: {var} is not set (.ci/run sets it)");
            None
        }
    }
}

/// A random lower-case suffix for database names.
pub fn unique(prefix: &str) -> String {
    let n: u64 = rand::rng().random();
    format!("{prefix}_{n:016x}")
}

/// Replace the database part of a URL.
pub fn with_database(url: &str, db: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("valid server URL");
    parsed.set_path(&format!("/{db}"));
    parsed.to_string()
}

/// A message the SMTP server received.
#[derive(Debug, Clone)]
pub struct Received {
    pub to: Vec<String>,
    pub data: String,
}

impl Received {
    /// The decoded `Subject:` header.
    pub fn subject(&self) -> String {
        let parsed = mail_parser::MessageParser::default().parse(self.data.as_bytes());
        parsed
            .and_then(|m| m.subject().map(str::to_owned))
            .unwrap_or_default()
    }

    /// The HTML alternative, if any.
    pub fn html(&self) -> Option<String> {
        let parsed = mail_parser::MessageParser::default().parse(self.data.as_bytes())?;
        parsed.body_html(0).map(|t| t.into_owned())
    }

    /// A header's raw value as sent (unfolded), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next().unwrap_or_default();
        let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
        unfolded.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    }

    /// The decoded plain-text body.
    pub fn text(&self) -> String {
        let parsed = mail_parser::MessageParser::default().parse(self.data.as_bytes());
        parsed
            .and_then(|m| m.body_text(0).map(|t| t.into_owned()))
            .unwrap_or_default()
    }
}

#[derive(Clone)]
struct Collect {
    inbox: Arc<Mutex<Vec<Received>>>,
    to: Vec<String>,
    data: Vec<u8>,
    login: Option<(String, String)>,
}

impl Handler for Collect {
    fn data_start(&mut self, _domain: &str, _from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.to = to.to_vec();
        self.data.clear();
        mailin_embedded::response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn auth_plain(&mut self, _authz: &str, user: &str, password: &str) -> Response {
        match &self.login {
            Some((u, p)) if u == user && p == password => mailin_embedded::response::AUTH_OK,
            _ => mailin_embedded::response::INVALID_CREDENTIALS,
        }
    }

    fn data_end(&mut self) -> Response {
        let message = Received {
            to: std::mem::take(&mut self.to),
            data: String::from_utf8_lossy(&self.data).into_owned(),
        };
        self.inbox.lock().expect("inbox lock").push(message);
        mailin_embedded::response::OK
    }
}

/// A real SMTP server on 127.0.0.1 (mailin-embedded), collecting what it receives.
pub struct SmtpServer {
    pub port: u16,
    inbox: Arc<Mutex<Vec<Received>>>,
}

impl SmtpServer {
    /// Plain SMTP, no authentication.
    pub fn start() -> Self {
        Self::start_with(SslConfig::None, None)
    }

    /// STARTTLS with a fresh self-signed certificate for 127.0.0.1 (written under `dir`), and
    /// AUTH PLAIN requiring `user`/`password`.
    pub fn start_tls(dir: &std::path::Path, user: &str, password: &str) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("self-signed certificate");
        let cert_path = dir.join("smtp-cert.pem");
        let key_path = dir.join("smtp-key.pem");
        std::fs::write(&cert_path, cert.cert.pem()).expect("write cert");
        std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write key");
        Self::start_with(
            SslConfig::SelfSigned {
                cert_path: cert_path.display().to_string(),
                key_path: key_path.display().to_string(),
            },
            Some((user.to_owned(), password.to_owned())),
        )
    }

    fn start_with(ssl: SslConfig, login: Option<(String, String)>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind SMTP port");
        let port = listener.local_addr().expect("addr").port();
        let inbox = Arc::new(Mutex::new(Vec::new()));
        let with_auth = login.is_some();
        let handler = Collect {
            inbox: Arc::clone(&inbox),
            to: Vec::new(),
            data: Vec::new(),
            login,
        };
        let mut server = Server::new(handler);
        server
            .with_name("test.local")
            .with_ssl(ssl)
            .expect("TLS setup")
            .with_tcp_listener(listener);
        if with_auth {
            server.with_auth(mailin_embedded::AuthMechanism::Plain);
        }
        std::thread::spawn(move || {
            let _ = server.serve();
        });
        SmtpServer { port, inbox }
    }

    pub fn received(&self) -> Vec<Received> {
        self.inbox.lock().expect("inbox lock").clone()
    }
}

/// Settings for a test app: state in `dir`, SMTP on `smtp_port` (or the outbox), port 0.
pub fn settings(dir: &std::path::Path, smtp_port: Option<u16>, extra: &[(&str, String)]) -> Settings {
    let mut env = vec![
        (
            "KPIWATCH_STATE__URL".to_owned(),
            format!("sqlite://{}", dir.join("state.db").display()),
        ),
        (
            "KPIWATCH_EMAIL__OUTBOX_DIR".to_owned(),
            dir.join("outbox").display().to_string(),
        ),
        ("KPIWATCH_HTTP__BIND".to_owned(), "127.0.0.1:0".to_owned()),
        (
            "KPIWATCH_EMAIL__DEFAULT_RECIPIENTS".to_owned(),
            "[\"oncall@example.com\"]".to_owned(),
        ),
        // Digests have their own tests; elsewhere they would add mail to count.
        ("KPIWATCH_DIGEST__ENABLED".to_owned(), "false".to_owned()),
    ];
    if let Some(port) = smtp_port {
        env.push(("KPIWATCH_EMAIL__SMTP__HOST".to_owned(), "127.0.0.1".to_owned()));
        env.push(("KPIWATCH_EMAIL__SMTP__PORT".to_owned(), port.to_string()));
    }
    for (k, v) in extra {
        env.push(((*k).to_owned(), v.clone()));
    }
    config::load_from(None, &env).expect("test settings")
}

/// One request through the app's router (no socket): status and body text.
pub async fn request(
    app: &kpiwatch::app::Application,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: &str,
) -> (axum::http::StatusCode, String) {
    use tower::ServiceExt;
    let mut builder = axum::http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    if let Some(t) = token {
        builder = builder.header("authorization", format!("Bearer {t}"));
    }
    let response = app
        .router()
        .oneshot(
            builder
                .body(axum::body::Body::from(body.to_owned()))
                .expect("request"),
        )
        .await
        .expect("response");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
        .await
        .expect("body");
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// [`request`], with the body parsed as JSON (`null` when it is not JSON).
pub async fn request_json(
    app: &kpiwatch::app::Application,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: &str,
) -> (axum::http::StatusCode, serde_json::Value) {
    let (status, text) = request(app, method, uri, token, body).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// Write the e2e orders model to `dir/models/orders`, for commands run as a user would.
pub fn write_orders_model(dir: &std::path::Path) {
    let model_dir = dir.join("models/orders");
    std::fs::create_dir_all(&model_dir).expect("models dir");
    std::fs::write(model_dir.join("model.toml"), crate::e2e::MODEL).expect("model");
    std::fs::write(model_dir.join("query.sql"), crate::e2e::QUERY).expect("query");
}

/// A fresh PostgreSQL database for one test (named `kw_state_…`), dropped by [`Self::drop_db`].
pub struct PgDatabase {
    admin: String,
    name: String,
    /// URL of the new database.
    pub url: String,
}

impl PgDatabase {
    /// Create a fresh database on the server behind `admin` (a URL with a database to
    /// connect to for `CREATE DATABASE`).
    pub async fn create(admin: &str) -> Self {
        use sqlx::Executor;
        let name = unique("kw_state");
        let pool = sqlx::PgPool::connect(admin).await.expect("postgres reachable");
        pool.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create database");
        pool.close().await;
        let url = with_database(admin, &name);
        PgDatabase {
            admin: admin.to_owned(),
            name,
            url,
        }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Drop the database (also while connections to it are still open).
    pub async fn drop_db(self) {
        use sqlx::Executor;
        let pool = sqlx::PgPool::connect(&self.admin)
            .await
            .expect("postgres reachable");
        pool.execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str())
            .await
            .expect("drop database");
        pool.close().await;
    }
}

/// A 1-minute orders count from the `orders_min` table of source `shop`, paging
/// oncall@example.com when it drops (the outage and kill tests' KPI).
pub const ONE_MINUTE_ORDERS_MODEL: &str = r#"
title = "Orders"
source = "shop"
kind = "count"
interval = "1m"
delay = "0s"
direction = "down"
recipients = ["oncall@example.com"]
"#;
