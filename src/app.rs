//! Wiring: builds the store, sources, mailer and metrics from [`Settings`], then runs the
//! HTTP API and the scheduler side by side until shutdown.
//!
//! [`Application::build`] binds the listener (port 0 picks a free one: see
//! [`Application::port`]) and [`Application::run_until_stopped`] supervises both tasks:
//! when either exits, or the token is cancelled (SIGTERM / Ctrl-C in [`run`]), the other is
//! told to stop, in-flight runs finish, and the pools close.

use std::sync::Arc;

use anyhow::{bail, Context as _};
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::alerting::receivers::Receivers;
use crate::alerting::{LinkSigner, Mailer};
use crate::api::{self, AppState};
use crate::clock::{Clock, SystemClock};
use crate::config::Settings;
use crate::kpi::{KpiSpec, Registry};
use crate::pipeline::Context;
use crate::scheduler::Scheduler;
use crate::sources::SourceRegistry;
use crate::store::Store;
use crate::telemetry::Metrics;

/// Options for [`Application::build`] beyond the config.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Where "now" comes from.
    pub clock: Arc<dyn Clock>,
    /// Sources added on top of the configured ones (the demo's).
    pub extra_sources: Option<SourceRegistry>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            clock: Arc::new(SystemClock),
            extra_sources: None,
        }
    }
}

/// A built, not yet running, kpiwatch.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    state: AppState,
    scheduler: Scheduler,
    store: Store,
}

impl Application {
    /// Connect to everything and bind the HTTP listener.
    pub async fn build(settings: Settings, specs: Vec<KpiSpec>, opts: BuildOptions) -> anyhow::Result<Self> {
        let mut sources = SourceRegistry::build(&settings.sources).context("Failed to configure sources")?;
        if let Some(extra) = opts.extra_sources {
            for s in extra.iter() {
                sources.insert_shared(Arc::clone(s));
            }
        }
        let missing: Vec<String> = specs
            .iter()
            .filter(|s| sources.get(&s.source).is_err())
            .map(|s| format!("KPI {} uses source {:?}, which is not configured", s.id, s.source))
            .collect();
        if !missing.is_empty() {
            bail!("{}", missing.join("; "));
        }
        for source in sources.iter() {
            if let Err(error) = source.healthcheck().await {
                warn!(message = "Source healthcheck failed; its KPIs will report data missing until it is back.", source = source.name(), %error);
            }
        }
        // A connection per run slot, and a few for lease renewals, delivery and the API.
        let pool_size = u32::try_from(settings.scheduler.max_concurrent_runs)
            .unwrap_or(u32::MAX)
            .saturating_add(4)
            .max(crate::store::DEFAULT_POOL_SIZE);
        let store = Store::connect_sized(settings.state.url.expose_secret(), pool_size)
            .await
            .context("Failed to open the state store")?;
        for spec in &specs {
            if store.upsert_kpi(spec).await.context("Failed to register KPIs")? {
                warn!(message = "KPI interval, bucket alignment or kind changed; its stored history will be fetched again.", kpi = %spec.id);
            }
        }
        let events = crate::calendar::sync_config(&store, &settings.calendar, std::path::Path::new("."))
            .await
            .context("Failed to load the [[calendar]] events")?;
        if events > 0 {
            info!(message = "Calendar events loaded from the config.", events);
        }
        let mailer = Mailer::build(&settings.email).context("Failed to set up e-mail")?;
        let http_client = reqwest::Client::builder()
            .timeout(crate::alerting::notifiers::REQUEST_TIMEOUT)
            .user_agent(concat!("kpiwatch/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("Failed to build the HTTP client")?;
        let receivers = Receivers::build(&settings.alerting, &http_client)
            .map_err(|problems| anyhow::anyhow!("invalid receivers: {}", problems.join("; ")))?;
        if let Err(error) = mailer.healthcheck().await {
            warn!(message = "E-mail healthcheck failed; alerts will queue until it works.", %error);
        }
        let secret = match &settings.alerting.link_secret {
            Some(secret) => secret.expose_secret().to_owned(),
            None => store
                .meta_get_or_init("link_secret", || {
                    let bytes: [u8; 32] = rand::random();
                    hex::encode(bytes)
                })
                .await
                .context("Failed to read the link secret")?,
        };
        let signer = LinkSigner::new(&secret);
        let listener = TcpListener::bind(settings.http.bind)
            .await
            .with_context(|| format!("Failed to bind {}", settings.http.bind))?;
        let metrics = Arc::new(Metrics::default());
        let settings = Arc::new(settings);
        let cx = Context {
            store: store.clone(),
            sources,
            settings,
            metrics: Arc::clone(&metrics),
            mailer,
            receivers,
            signer: signer.clone(),
            // The process id lets an operator (and the kill tests) tell which process holds
            // a lease or an outbox claim; the random part keeps restarts apart.
            instance: format!(
                "kpiwatch-{}-{}",
                std::process::id(),
                hex::encode(rand::random::<[u8; 6]>())
            ),
            detectors: Arc::default(),
        };
        let registry = Registry::new(specs);
        load_api_kpis(&store, &registry, &cx.sources).await?;
        let scheduler = Scheduler::new(cx.clone(), registry.clone(), Arc::clone(&opts.clock));
        let state = AppState {
            store: store.clone(),
            specs: registry,
            metrics,
            clock: opts.clock,
            signer,
            tokens: Arc::new(cx.settings.api.tokens.clone()),
            sources: cx.sources.clone(),
            replay: crate::backtest::Replay::of(&cx.settings.scheduler),
        };
        Ok(Application {
            listener,
            state,
            scheduler,
            store,
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// The scheduler, for driving passes by hand (tests, the demo's first pass).
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// The HTTP router on this app's state, for driving the API without a socket.
    pub fn router(&self) -> axum::Router {
        api::router(self.state.clone())
    }

    /// The state store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Serve HTTP and run the scheduler until `token` is cancelled or either task ends.
    pub async fn run_until_stopped(self, token: CancellationToken) -> anyhow::Result<()> {
        let Application {
            listener,
            state,
            scheduler,
            store,
        } = self;
        let addr = listener
            .local_addr()
            .context("Failed to read the bound address")?;
        info!(message = "HTTP API listening.", %addr);
        let http_token = token.clone();
        let mut http = tokio::spawn(async move {
            axum::serve(listener, api::router(state))
                .with_graceful_shutdown(http_token.cancelled_owned())
                .await
        });
        let mut sched = tokio::spawn(scheduler.run_until_cancelled(token.clone()));
        let result = tokio::select! {
            r = &mut http => {
                token.cancel();
                let _ = sched.await;
                match r {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(anyhow::Error::from(e).context("HTTP server failed")),
                    Err(e) => Err(anyhow::Error::from(e).context("HTTP task panicked")),
                }
            }
            r = &mut sched => {
                token.cancel();
                let _ = http.await;
                r.context("Scheduler task panicked")
            }
        };
        store.close().await;
        info!(message = "kpiwatch stopped.");
        result
    }
}

/// Add the KPIs registered through the API. One that clashes with a file model, names an
/// unknown source or no longer parses is skipped with a warning (the file wins).
async fn load_api_kpis(store: &Store, registry: &Registry, sources: &SourceRegistry) -> anyhow::Result<()> {
    for (id, model, query) in store.kpi_definitions().await.context("Failed to read API KPIs")? {
        if registry.contains(&id) {
            warn!(message = "API KPI shadowed by a file model; the file wins.", kpi = %id);
            continue;
        }
        match KpiSpec::parse(&id, &model, &query, std::path::Path::new(crate::kpi::API_ORIGIN)) {
            Ok(mut spec) if sources.get(&spec.source).is_ok() => {
                spec.origin = crate::kpi::API_ORIGIN.to_owned();
                registry.insert(spec);
            }
            Ok(spec) => {
                warn!(message = "API KPI names an unknown source; skipped.", kpi = %id, source = %spec.source)
            }
            Err(problems) => {
                warn!(message = "API KPI no longer valid; skipped.", kpi = %id, problems = ?problems)
            }
        }
    }
    Ok(())
}

/// Cancel `token` on SIGTERM or Ctrl-C.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = ctrl_c => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
        info!(message = "Shutdown requested; finishing in-flight runs.");
        token.cancel();
    });
}

/// `kpiwatch serve`: build and run until a signal.
pub async fn run(settings: Settings, specs: Vec<KpiSpec>) -> anyhow::Result<()> {
    let app = Application::build(settings, specs, BuildOptions::default()).await?;
    let token = CancellationToken::new();
    cancel_on_signal(token.clone());
    app.run_until_stopped(token).await
}
