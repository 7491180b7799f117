//! Runs each KPI once per interval, after its bucket has closed plus its `delay`.
//!
//! [`Scheduler::run_due`] is one pass: every KPI whose next bucket has closed is run through
//! `pipeline::run_kpi` (at most `max_concurrent_runs` at once), then pending notifications
//! are delivered (retrying earlier failures). [`Scheduler::run_until_cancelled`] repeats it
//! every `tick` until the cancellation token fires, and lets in-flight runs finish.
//! Time comes from an injected [`Clock`]. Several processes may share one state store: a
//! lease per KPI (`Store::try_lease`) lets one of them run it at a time, and outbox rows are
//! claimed before delivery, so no KPI is judged twice at once and no message goes out twice.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::clock::Clock;
use crate::kpi::{KpiId, Registry};
use crate::pipeline::{self, Context, RunOutcome};

/// The scheduler of a set of KPIs.
#[derive(Debug, Clone)]
pub struct Scheduler {
    cx: Context,
    specs: Registry,
    clock: Arc<dyn Clock>,
    limit: Arc<Semaphore>,
}

impl Scheduler {
    /// A scheduler for `specs`.
    pub fn new(cx: Context, specs: Registry, clock: Arc<dyn Clock>) -> Self {
        let limit = Arc::new(Semaphore::new(cx.settings.scheduler.max_concurrent_runs));
        Scheduler {
            cx,
            specs,
            clock,
            limit,
        }
    }

    /// One pass over every KPI at the clock's current time. Errors are logged per KPI and
    /// returned for inspection; one KPI failing does not stop the others.
    pub async fn run_due(&self) -> Vec<(KpiId, Result<RunOutcome, String>)> {
        let now = self.clock.now();
        let mut tasks = tokio::task::JoinSet::new();
        let specs = self.specs.all();
        for spec in specs.iter().cloned() {
            let cx = self.cx.clone();
            let limit = Arc::clone(&self.limit);
            tasks.spawn(async move {
                let _permit = limit.acquire_owned().await;
                // With several processes on one store, one runs a KPI at a time.
                // The lease lasts `claim_timeout` (wall clock) and is renewed while the run is
                // in flight, so a process that dies is replaced within that time and a slow
                // run is never taken over.
                let lease = format!("kpi:{}", spec.id);
                let ttl = cx.settings.scheduler.claim_timeout.as_secs().max(3);
                match cx.store.try_lease(&lease, &cx.instance, ttl as i64).await {
                    Ok(true) => {}
                    Ok(false) => return (spec.id.clone(), Ok(RunOutcome::NotDue)),
                    Err(error) => return (spec.id.clone(), Err(format!("lease: {error}"))),
                }
                let run = pipeline::run_kpi(&cx, &spec, now);
                tokio::pin!(run);
                let renew_every = std::time::Duration::from_secs(ttl / 3);
                let result = loop {
                    tokio::select! {
                        result = &mut run => break result,
                        () = tokio::time::sleep(renew_every) => {
                            if let Err(error) = cx.store.try_lease(&lease, &cx.instance, ttl as i64).await {
                                error!(message = "Failed to renew a KPI lease.", kpi = %spec.id, %error);
                            }
                        }
                    }
                };
                if let Err(error) = cx.store.release_lease(&lease, &cx.instance).await {
                    error!(message = "Failed to release a KPI lease.", kpi = %spec.id, %error);
                }
                if let Err(error) = &result {
                    error!(message = "KPI run failed.", kpi = %spec.id, error = format!("{error:#}"));
                }
                (spec.id.clone(), result.map_err(|e| format!("{e:#}")))
            });
        }
        let mut results = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(r) => results.push(r),
                Err(e) => error!(message = "KPI run task panicked.", error = %e),
            }
        }
        results.sort_by(|a, b| a.0.cmp(&b.0));
        let digests = crate::digest::DigestContext {
            store: &self.cx.store,
            specs: &specs,
            config: &self.cx.settings.digest,
            from: self.cx.mailer.from(),
            public_url: &self.cx.settings.http.public_url,
        };
        if let Err(error) = crate::digest::run_due(digests, now).await {
            error!(message = "Daily digest failed.", error = format!("{error:#}"));
        }
        if let Err(error) = pipeline::deliver(&self.cx, now).await {
            error!(
                message = "Notification delivery pass failed.",
                error = format!("{error:#}")
            );
        }
        results
    }

    /// Run passes every `tick` until `token` is cancelled. A pass in flight completes.
    pub async fn run_until_cancelled(self, token: CancellationToken) {
        let tick = self.cx.settings.scheduler.tick;
        info!(message = "Scheduler started.", kpis = self.specs.all().len(), tick = ?tick);
        loop {
            self.run_due().await;
            tokio::select! {
                () = token.cancelled() => break,
                () = tokio::time::sleep(tick) => {}
            }
        }
        info!(message = "Scheduler stopped.");
    }
}
