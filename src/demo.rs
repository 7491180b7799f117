//! `kpiwatch demo`: the whole loop on a laptop, offline, in a few minutes.
//!
//! Creates a demo shop database (SQLite) with four weeks of orders and payments (daily and
//! weekly seasonality, Poisson noise), starts the service on it with 1-minute buckets, keeps
//! inserting live orders and payments, and after `--fail-after` seconds injects a
//! payment-provider failure: most card payments decline while order volume stays normal.
//! The payment success rate leaves its band, an alert e-mail lands in the outbox folder,
//! and the demo says where to look.
//!
//! With `--shop-metrics ADDR` the shop also publishes its running totals as Prometheus
//! counters on `http://ADDR/metrics` (`demo_shop_orders_total`,
//! `demo_shop_payments_total{provider,status}`), so a Prometheus can scrape them and the
//! example models in `models/examples/` can watch the shop through PromQL.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use chrono::{DateTime, Datelike, Timelike, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Poisson};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::{QueryBuilder, Sqlite};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::app::{cancel_on_signal, Application, BuildOptions};
use crate::config;
use crate::kpi::{Interval, KpiSpec};

/// Options of `kpiwatch demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoOptions {
    /// Folder for the demo's databases and outbox (recreated).
    #[arg(long, default_value = "kpiwatch-demo")]
    pub dir: PathBuf,
    /// HTTP port (0 = any free port).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Seconds after start at which the payment provider starts failing.
    #[arg(long, default_value_t = 60)]
    pub fail_after: u64,
    /// Days of history to generate.
    #[arg(long, default_value_t = 28)]
    pub history_days: i64,
    /// Stop once the alert has been delivered (for scripted runs).
    #[arg(long)]
    pub exit_after_alert: bool,
    /// Give up (non-zero exit) if no alert arrived within this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Also publish the shop's counters for Prometheus on `http://ADDR/metrics`
    /// (e.g. `127.0.0.1:9464`).
    #[arg(long, value_name = "ADDR")]
    pub shop_metrics: Option<std::net::SocketAddr>,
}

const MODELS: [(&str, &str, &str); 3] = [
    (
        "payment_success_rate",
        include_str!("../models/payment_success_rate/model.toml"),
        include_str!("../models/payment_success_rate/query.sql"),
    ),
    (
        "orders",
        include_str!("../models/orders/model.toml"),
        include_str!("../models/orders/query.sql"),
    ),
    (
        "revenue_daily",
        include_str!("../models/revenue_daily/model.toml"),
        include_str!("../models/revenue_daily/query.sql"),
    ),
];

/// Orders per minute at `t`: daily and weekly seasonality around 20 per minute.
pub fn order_rate(t: DateTime<Utc>) -> f64 {
    let hour = f64::from(t.hour()) + f64::from(t.minute()) / 60.0;
    let daily = 1.0 + 0.5 * ((hour - 14.0) / 24.0 * std::f64::consts::TAU).cos();
    let weekly = match t.weekday().num_days_from_monday() {
        5 | 6 => 1.25,
        0 => 0.9,
        _ => 1.0,
    };
    20.0 * daily * weekly
}

/// Normal card-payment success probability.
const SUCCESS: f64 = 0.975;
/// During the injected provider failure.
const SUCCESS_DURING_FAILURE: f64 = 0.1;

/// The shop's generator of orders and payments.
#[derive(Debug)]
struct Shop {
    pool: SqlitePool,
    rng: StdRng,
    amount: LogNormal<f64>,
}

struct Order {
    at: String,
    cents: i64,
    paid: bool,
}

impl Shop {
    async fn create(path: &Path) -> anyhow::Result<Self> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await?;
        for ddl in [
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, created_at TEXT NOT NULL, amount_cents INTEGER NOT NULL, status TEXT NOT NULL)",
            "CREATE TABLE payments (id INTEGER PRIMARY KEY, order_id INTEGER NOT NULL, created_at TEXT NOT NULL, provider TEXT NOT NULL, status TEXT NOT NULL)",
        ] {
            sqlx::query(ddl).execute(&pool).await?;
        }
        Ok(Shop {
            pool,
            rng: StdRng::seed_from_u64(7),
            amount: LogNormal::new(3.6, 0.6).context("log-normal parameters")?,
        })
    }

    async fn index(&self) -> anyhow::Result<()> {
        for ddl in [
            "CREATE INDEX orders_created ON orders(created_at)",
            "CREATE INDEX payments_created ON payments(created_at)",
        ] {
            sqlx::query(ddl).execute(&self.pool).await?;
        }
        Ok(())
    }

    /// Orders (and their payments) for `seconds` starting at `from`.
    fn orders(&mut self, from: DateTime<Utc>, seconds: i64, success: f64) -> Vec<Order> {
        let mean = order_rate(from) * seconds as f64 / 60.0;
        let n = Poisson::new(mean).map(|p| p.sample(&mut self.rng)).unwrap_or(0.0) as i64;
        (0..n)
            .map(|_| {
                let offset = self.rng.random_range(0..seconds.max(1));
                let at = from + chrono::Duration::seconds(offset);
                Order {
                    at: at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    cents: (self.amount.sample(&mut self.rng) * 100.0) as i64,
                    paid: self.rng.random_bool(success),
                }
            })
            .collect()
    }

    async fn insert(&self, orders: &[Order]) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        for chunk in orders.chunks(500) {
            let first_id: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) + 1 FROM orders")
                .fetch_one(&mut *tx)
                .await?;
            let mut q: QueryBuilder<'_, Sqlite> =
                QueryBuilder::new("INSERT INTO orders (id, created_at, amount_cents, status) ");
            q.push_values(chunk.iter().enumerate(), |mut b, (i, o)| {
                b.push_bind(first_id + i as i64)
                    .push_bind(&o.at)
                    .push_bind(o.cents)
                    .push_bind(if o.paid { "paid" } else { "payment_failed" });
            });
            q.build().execute(&mut *tx).await?;
            let mut q: QueryBuilder<'_, Sqlite> =
                QueryBuilder::new("INSERT INTO payments (order_id, created_at, provider, status) ");
            q.push_values(chunk.iter().enumerate(), |mut b, (i, o)| {
                b.push_bind(first_id + i as i64)
                    .push_bind(&o.at)
                    .push_bind("cardpay")
                    .push_bind(if o.paid { "succeeded" } else { "declined" });
            });
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// The shop's running totals in the Prometheus text format: `demo_shop_orders_total` and
/// `demo_shop_payments_total{provider, status}`, counted from the shop database at each
/// scrape (rows are only ever added, so they only go up).
pub async fn shop_metrics(pool: &SqlitePool) -> anyhow::Result<String> {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(pool)
        .await?;
    let payments: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT provider, status, count(*) FROM payments GROUP BY provider, status")
            .fetch_all(pool)
            .await?;
    let mut registry = prometheus_client::registry::Registry::default();
    let orders_total: Counter = Counter::default();
    orders_total.inc_by(u64::try_from(orders).unwrap_or_default());
    registry.register("demo_shop_orders", "Orders placed in the demo shop", orders_total);
    let payments_total = Family::<Vec<(String, String)>, Counter>::default();
    for (provider, status, n) in payments {
        payments_total
            .get_or_create(&vec![
                ("provider".to_owned(), provider),
                ("status".to_owned(), status),
            ])
            .inc_by(u64::try_from(n).unwrap_or_default());
    }
    registry.register(
        "demo_shop_payments",
        "Card payments in the demo shop, by provider and outcome",
        payments_total,
    );
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

/// Serve [`shop_metrics`] on `addr` until `token` is cancelled.
async fn serve_shop_metrics(
    addr: std::net::SocketAddr,
    pool: SqlitePool,
    token: CancellationToken,
) -> anyhow::Result<std::net::SocketAddr> {
    use axum::http::{header, StatusCode};
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("Failed to bind the shop metrics address {addr}"))?;
    let bound = listener.local_addr()?;
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let pool = pool.clone();
            async move {
                match shop_metrics(&pool).await {
                    Ok(text) => (
                        StatusCode::OK,
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    ),
                    Err(error) => {
                        warn!(message = "Demo shop metrics failed.", %error);
                        (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                            "shop metrics unavailable\n".to_owned(),
                        )
                    }
                }
            }
        }),
    );
    tokio::spawn(async move {
        let shutdown = async move { token.cancelled().await };
        if let Err(error) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            warn!(message = "Demo shop metrics server stopped.", %error);
        }
    });
    Ok(bound)
}

/// The demo's models: the shipped ones, with sub-daily KPIs at 1-minute buckets.
fn demo_models() -> anyhow::Result<Vec<KpiSpec>> {
    let one_minute = Interval::from_secs(60).map_err(anyhow::Error::msg)?;
    let mut specs = Vec::new();
    for (id, toml, sql) in MODELS {
        let mut spec = KpiSpec::parse(id, toml, sql, &Path::new("models").join(id))
            .map_err(|p| anyhow::anyhow!("bundled model {id} is invalid: {p:?}"))?;
        if spec.interval.secs() < 86_400 {
            spec.interval = one_minute;
            spec.delay = Duration::from_secs(5);
        }
        specs.push(spec);
    }
    Ok(specs)
}

/// Run the demo.
pub async fn run(
    opts: DemoOptions,
    config_file: Option<&Path>,
    env: &[(String, String)],
) -> anyhow::Result<()> {
    let dir = &opts.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("Failed to create {}", dir.display()))?;
    for stale in [
        "shop.db",
        "shop.db-wal",
        "shop.db-shm",
        "state.db",
        "state.db-wal",
        "state.db-shm",
    ] {
        let _ = std::fs::remove_file(dir.join(stale));
    }
    let outbox = dir.join("outbox");
    let _ = std::fs::remove_dir_all(&outbox);

    let now = Utc::now();
    let shop_path = dir.join("shop.db");
    info!(message = "Creating the demo shop database.", path = %shop_path.display(), days = opts.history_days);
    let mut shop = Shop::create(&shop_path).await?;
    let start = (now - chrono::Duration::days(opts.history_days)).timestamp() / 60 * 60;
    let mut t = start;
    let mut batch = Vec::new();
    while t < now.timestamp() {
        let from = DateTime::from_timestamp(t, 0).context("time out of range")?;
        let secs = (now.timestamp() - t).min(60);
        batch.extend(shop.orders(from, secs, SUCCESS));
        if batch.len() > 20_000 {
            shop.insert(&batch).await?;
            batch.clear();
        }
        t += 60;
    }
    shop.insert(&batch).await?;
    shop.index().await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&shop.pool)
        .await?;
    info!(message = "Demo shop ready.", orders = total);

    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    // The port is fixed before anything is built, so the links in messages name it.
    let port = match opts.port {
        0 => std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .context("Failed to find a free port")?,
        p => p,
    };
    let demo_env = vec![
        (
            "KPIWATCH_STATE__URL".to_owned(),
            format!("sqlite://{}", abs(&dir.join("state.db")).display()),
        ),
        (
            "KPIWATCH_SOURCES__SHOP__URL".to_owned(),
            format!("sqlite://{}", abs(&shop_path).display()),
        ),
        (
            "KPIWATCH_EMAIL__OUTBOX_DIR".to_owned(),
            abs(&outbox).display().to_string(),
        ),
        ("KPIWATCH_HTTP__BIND".to_owned(), format!("127.0.0.1:{port}")),
        ("KPIWATCH_SCHEDULER__TICK".to_owned(), "2s".to_owned()),
        (
            "KPIWATCH_SCHEDULER__BACKFILL".to_owned(),
            format!("{}d", opts.history_days),
        ),
    ];
    // Like `serve`: the config file (`--config`) and `KPIWATCH_*` variables apply (SMTP,
    // receivers, tokens, …). The demo's own database, shop source, outbox, port and tick win
    // over the file; variables win over both.
    let env: Vec<(String, String)> = demo_env.into_iter().chain(env.iter().cloned()).collect();
    let mut settings = config::load_from(config_file, &env)?;
    let default_url = config::load_from(None, &[])?.http.public_url;
    if settings.http.public_url == default_url {
        settings.http.public_url = format!("http://127.0.0.1:{}", settings.http.bind.port());
    }
    // A config for carrying on with `kpiwatch serve` on the demo's databases afterwards.
    let carry_on = format!(
        "# Written by `kpiwatch demo`: `kpiwatch serve --config {cfg}` keeps watching the demo shop.\n\
         [state]\nurl = {state:?}\n\n[sources.shop]\nurl = {shop:?}\n\n[email]\noutbox_dir = {outbox:?}\n",
        cfg = dir.join("kpiwatch.toml").display(),
        state = format!("sqlite://{}", abs(&dir.join("state.db")).display()),
        shop = format!("sqlite://{}", abs(&shop_path).display()),
        outbox = abs(&outbox).display().to_string(),
    );
    std::fs::write(dir.join("kpiwatch.toml"), carry_on)
        .context("Failed to write the demo's kpiwatch.toml")?;
    let specs = demo_models()?;
    let app = Application::build(settings.clone(), specs, BuildOptions::default()).await?;
    let port = app.port();
    let store = app.store().clone();
    let token = CancellationToken::new();
    cancel_on_signal(token.clone());
    let server = tokio::spawn(app.run_until_stopped(token.clone()));
    if let Some(addr) = opts.shop_metrics {
        let bound = serve_shop_metrics(addr, shop.pool.clone(), token.clone()).await?;
        println!("demo shop counters for Prometheus: http://{bound}/metrics (see models/examples/README.md)");
    }

    // Live traffic, and the injected failure.
    let failing = Arc::new(AtomicBool::new(false));
    let live = {
        let failing = Arc::clone(&failing);
        let token = token.clone();
        tokio::spawn(async move {
            let mut last = Utc::now().timestamp();
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                let now = Utc::now().timestamp();
                let Some(from) = DateTime::from_timestamp(last, 0) else {
                    break;
                };
                let p = if failing.load(Ordering::Relaxed) {
                    SUCCESS_DURING_FAILURE
                } else {
                    SUCCESS
                };
                let orders = shop.orders(from, now - last, p);
                if let Err(error) = shop.insert(&orders).await {
                    warn!(message = "Demo traffic insert failed.", %error);
                }
                last = now;
            }
        })
    };
    println!(
        "\nkpiwatch demo running: API http://127.0.0.1:{port}/api/kpis — payment provider fails in {}s; watch for the alert (Ctrl-C to stop).\n",
        opts.fail_after
    );
    let started = std::time::Instant::now();
    let mut announced = false;
    let mut alerted = false;
    while !token.is_cancelled() {
        tokio::select! {
            () = token.cancelled() => break,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if !announced && started.elapsed() >= Duration::from_secs(opts.fail_after) {
            failing.store(true, Ordering::Relaxed);
            announced = true;
            warn!(
                message = "DEMO: injected a payment-provider failure.",
                success_rate = SUCCESS_DURING_FAILURE,
                note = "order volume, CPU, latency and error rates stay normal",
            );
        }
        if !alerted {
            let sent = store
                .notifications()
                .await?
                .into_iter()
                .find(|n| n.status == "sent" && n.event == "firing");
            if let Some(n) = sent {
                alerted = true;
                println!(
                    "\n=== kpiwatch caught it after {:.0}s ===\n{}\n  to: {}\n\nLook at:\n  web UI:    http://127.0.0.1:{port}/#/kpi/payment_success_rate\n  outbox:    {}\n  anomalies: http://127.0.0.1:{port}/api/anomalies\n  series:    http://127.0.0.1:{port}/api/kpis/payment_success_rate/series\n  metrics:   http://127.0.0.1:{port}/metrics\n",
                    started.elapsed().as_secs_f64(),
                    n.subject,
                    n.recipient,
                    abs(&outbox).display()
                );
                if opts.exit_after_alert {
                    token.cancel();
                }
            } else if started.elapsed() > Duration::from_secs(opts.timeout) {
                token.cancel();
                let _ = live.await;
                let _ = server.await;
                bail!("no alert within {}s", opts.timeout);
            }
        }
    }
    let _ = live.await;
    server.await.context("service task panicked")??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_models_run_at_one_minute_in_the_demo() {
        let specs = demo_models().expect("valid");
        let pay = specs
            .iter()
            .find(|s| s.id.as_str() == "payment_success_rate")
            .expect("present");
        assert_eq!(pay.interval.secs(), 60);
        let revenue = specs
            .iter()
            .find(|s| s.id.as_str() == "revenue_daily")
            .expect("present");
        assert_eq!(revenue.interval.secs(), 86_400);
    }

    #[tokio::test]
    async fn shop_metrics_count_orders_and_payments_by_outcome() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut shop = Shop::create(&dir.path().join("shop.db")).await.expect("shop");
        let from = DateTime::parse_from_rfc3339("2026-03-03T14:00:00Z")
            .expect("valid")
            .with_timezone(&Utc);
        let orders = shop.orders(from, 600, 0.5);
        let paid = orders.iter().filter(|o| o.paid).count();
        shop.insert(&orders).await.expect("insert");
        let text = shop_metrics(&shop.pool).await.expect("metrics");
        assert!(
            text.contains(&format!("demo_shop_orders_total {}\n", orders.len())),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "demo_shop_payments_total{{provider=\"cardpay\",status=\"succeeded\"}} {paid}\n"
            )),
            "{text}"
        );
        assert!(text.contains("# TYPE demo_shop_payments counter"), "{text}");
    }

    #[test]
    fn order_rate_has_a_daily_cycle() {
        let night = DateTime::parse_from_rfc3339("2026-03-03T02:00:00Z")
            .expect("valid")
            .with_timezone(&Utc);
        let afternoon = DateTime::parse_from_rfc3339("2026-03-03T14:00:00Z")
            .expect("valid")
            .with_timezone(&Utc);
        assert!(order_rate(afternoon) > 2.0 * order_rate(night));
    }
}
