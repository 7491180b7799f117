//! Runs each KPI once per interval, after its bucket has closed plus its `delay`.
//!
//! [`Scheduler::run_due`] is one pass: every KPI whose next bucket has closed is run through
//! `pipeline::run_kpi` (at most `max_concurrent_runs` at once, and at most
//! `max_runs_per_source` querying one source: a run gives its source slot back once the
//! query has answered), then pending notifications are delivered
//! (retrying earlier failures). [`Scheduler::run_until_cancelled`] makes a pass every `tick`
//! until the cancellation token fires, without waiting for the runs a pass started: a slow
//! run (a source that takes longer than a tick) delays no other KPI's next run. The runs in
//! flight are tracked per KPI, so a KPI is never run twice at once by one process (and the
//! lease keeps other processes off it); on cancellation the runs already running finish and
//! those still waiting for a concurrency slot do not start (a stop during a startup backfill of
//! many KPIs waits for at most `max_concurrent_runs` runs, not the whole pass).
//!
//! The loop's pass prunes the store (once per `retention.every`) in the background, one prune
//! at a time: on a large store a prune takes minutes and would otherwise hold up every run
//! (`run_due` waits for it).
//!
//! The pass is cheap when nothing is due: each process remembers, per KPI, up to which bucket
//! end it has seen the KPI run (by itself, or found done by another process) and takes no
//! lease and reads no state until the next bucket has closed. A KPI whose source fails is
//! retried with exponential backoff (from `tick`, doubling, capped at its interval), so a
//! dead source costs one attempt per interval, not one per tick, and its runs never take the
//! concurrency slots of other sources.
//!
//! Time comes from an injected [`Clock`]. Several processes may share one state store: a
//! lease per KPI lets one of them run it at a time — the leases of a pass's due KPIs are taken
//! in one statement (`Store::take_leases`, `FOR UPDATE SKIP LOCKED` on PostgreSQL), last
//! `claim_timeout` and are renewed while the KPI waits for a slot and runs — and outbox rows
//! are claimed before delivery, so no KPI is judged twice at once and no message goes out
//! twice.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

use crate::clock::Clock;
use crate::kpi::{KpiId, KpiSpec, Registry};
use crate::pipeline::{self, Context, RunOutcome};

/// The scheduler of a set of KPIs.
#[derive(Debug, Clone)]
pub struct Scheduler {
    cx: Context,
    specs: Registry,
    clock: Arc<dyn Clock>,
    limit: Arc<Semaphore>,
    /// One limit per source name, made on first use.
    per_source: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
    /// What this process knows of each KPI's schedule.
    known: Arc<Mutex<HashMap<KpiId, Progress>>>,
    /// When this process next tries to prune the store (unix seconds).
    next_prune: Arc<Mutex<i64>>,
    /// Set while a prune started by [`Scheduler::pass`] runs in the background.
    pruning: Arc<std::sync::atomic::AtomicBool>,
    /// KPIs with a run in flight in this process: not started again until it ends.
    running: Arc<Mutex<HashSet<KpiId>>>,
    /// The run leases this process holds (its runs waiting for a slot or running), renewed
    /// together in one statement every third of their timeout (see
    /// [`Scheduler::renewing_runs`]).
    leases: Arc<Mutex<HashSet<String>>>,
    /// Every run in flight, so that shutdown lets them finish.
    runs: TaskTracker,
    /// Cancelled at shutdown: runs still waiting for a concurrency slot give up (a startup
    /// backfill of many KPIs would otherwise hold a stop for the whole pass).
    stopping: CancellationToken,
}

/// One run's result, as a pass reports it.
type RunResult = (KpiId, Result<RunOutcome, String>);

/// Marks a KPI's run in flight and its lease as one to renew; both marks go when the run
/// ends, however it ends.
#[derive(Debug)]
struct InFlight {
    running: Arc<Mutex<HashSet<KpiId>>>,
    id: KpiId,
    leases: Arc<Mutex<HashSet<String>>>,
    lease: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        self.leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.lease);
    }
}

/// Where one KPI stands, as far as this process knows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Progress {
    /// The KPI's interval when this was recorded (a changed model starts afresh).
    interval: i64,
    /// Bucket end up to which the KPI has been run (here or by another process).
    done_until: Option<i64>,
    /// Failed runs in a row.
    failures: u32,
    /// No new attempt before this time (unix seconds), after a failure.
    retry_at: i64,
}

impl Progress {
    /// Whether a run at `now` could do anything.
    fn due(&self, spec: &KpiSpec, sched: &crate::config::SchedulerConfig, now: DateTime<Utc>) -> bool {
        if self.interval != spec.interval.secs_i64() {
            return true;
        }
        if now.timestamp() < self.retry_at {
            return false;
        }
        pipeline::due_window(spec, sched, self.done_until, now).is_some()
    }

    /// Record the outcome of a run at `now`.
    fn record(
        &mut self,
        spec: &KpiSpec,
        tick: std::time::Duration,
        now: DateTime<Utc>,
        outcome: &Result<RunOutcome, String>,
    ) {
        let step = spec.interval.secs_i64();
        self.interval = step;
        match outcome {
            Ok(RunOutcome::Ok { .. } | RunOutcome::NotDue) => {
                let ready = now.timestamp() - spec.delay.as_secs() as i64;
                self.done_until = Some(spec.buckets().floor(ready));
                self.failures = 0;
                self.retry_at = 0;
            }
            Ok(RunOutcome::DataMissing(_) | RunOutcome::QueryError(_)) | Err(_) => {
                self.failures = self.failures.saturating_add(1);
                self.retry_at = now.timestamp() + backoff_secs(tick, step, self.failures);
            }
        }
    }
}

/// How long a lease lasts, in seconds: `claim_timeout`, at least 3 s (a run renews it every
/// third of that).
fn lease_secs(sched: &crate::config::SchedulerConfig) -> i64 {
    i64::try_from(sched.claim_timeout.as_secs().max(3)).unwrap_or(i64::MAX)
}

/// Await `work`, renewing `lease` (held by `instance` for `ttl` seconds) every third of `ttl`
/// until it is done, so a long prune is never taken over by another process.
async fn renewing<T>(
    store: &crate::store::Store,
    lease: &str,
    instance: &str,
    ttl: i64,
    work: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(work);
    let renew_every = std::time::Duration::from_secs(ttl.unsigned_abs() / 3);
    loop {
        tokio::select! {
            done = &mut work => return done,
            () = tokio::time::sleep(renew_every) => {
                if let Err(error) = store.try_lease(lease, instance, ttl).await {
                    error!(message = "Failed to renew a lease.", lease, %error);
                }
            }
        }
    }
}

/// Seconds to wait after `failures` failed runs in a row: `tick`, doubling, at most `step`.
fn backoff_secs(tick: std::time::Duration, step: i64, failures: u32) -> i64 {
    let tick = tick.as_secs().max(1) as i64;
    let doublings = failures.saturating_sub(1).min(30);
    tick.saturating_mul(1 << doublings).min(step.max(1))
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
            per_source: Arc::default(),
            known: Arc::default(),
            next_prune: Arc::default(),
            pruning: Arc::default(),
            running: Arc::default(),
            leases: Arc::default(),
            runs: TaskTracker::new(),
            stopping: CancellationToken::new(),
        }
    }

    fn source_limit(&self, source: &str) -> Arc<Semaphore> {
        let mut map = self.per_source.lock().unwrap_or_else(|e| e.into_inner());
        let n = self.cx.settings.scheduler.max_runs_per_source.max(1);
        Arc::clone(
            map.entry(source.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(n))),
        )
    }

    fn progress(&self, id: &KpiId) -> Progress {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.get(id).copied().unwrap_or_default()
    }

    /// One pass over every KPI at the clock's current time, waiting for the runs it starts.
    /// Errors are logged per KPI and returned for inspection; one KPI failing does not stop
    /// the others. A KPI whose run (started by an earlier pass that did not wait) is still in
    /// flight is reported `NotDue`.
    pub async fn run_due(&self) -> Vec<RunResult> {
        let now = self.clock.now();
        let (mut results, started) = self.start_due(now).await;
        self.renewing_runs(async {
            for handle in started {
                match handle.await {
                    Ok(r) => results.push(r),
                    Err(e) => error!(message = "KPI run task panicked.", error = %e),
                }
            }
        })
        .await;
        results.sort_by(|a, b| a.0.cmp(&b.0));
        self.after_runs(now).await;
        self.prune_if_due(now).await;
        results
    }

    /// One pass that does not wait for the runs it starts (they go on in the background,
    /// tracked per KPI): digests, delivery and pruning follow at once.
    async fn pass(&self) {
        let now = self.clock.now();
        let _started = self.start_due(now).await;
        // The digest reads what the runs stored; it waits (in the store, across processes) for
        // KPIs whose runs have not covered its day yet, a backfill after a start included.
        self.after_runs(now).await;
        // Pruning a large store takes minutes (a statement or two per series): in the
        // background, one prune at a time, so the next pass starts on time.
        if !self.pruning.swap(true, std::sync::atomic::Ordering::SeqCst) {
            let this = self.clone();
            tokio::spawn(async move {
                let stopping = this.stopping.clone();
                tokio::select! {
                    () = stopping.cancelled() => {}
                    () = this.prune_if_due(now) => {}
                }
                this.pruning.store(false, std::sync::atomic::Ordering::SeqCst);
            });
        }
    }

    /// Start a run of every due KPI that has none in flight and whose lease this process
    /// gets; the results of KPIs not started, and the started runs.
    async fn start_due(&self, now: DateTime<Utc>) -> (Vec<RunResult>, Vec<JoinHandle<RunResult>>) {
        let specs = self.specs.all();
        let sched = &self.cx.settings.scheduler;
        let mut results = Vec::new();
        let mut started = Vec::new();
        let mut due = Vec::new();
        for spec in specs.iter() {
            let in_flight = self
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&spec.id);
            if !in_flight && self.progress(&spec.id).due(spec, sched, now) {
                due.push(spec.clone());
            } else {
                results.push((spec.id.clone(), Ok(RunOutcome::NotDue)));
            }
        }
        // With several processes on one store, one runs a KPI at a time: the leases of every
        // due KPI are taken in one statement (skipping those another live process holds). A
        // lease lasts `claim_timeout` (wall clock) and is renewed while its KPI waits for a
        // slot and runs (all of this process's together, see `renewing_runs`), so a process
        // that dies is replaced within that time and a slow run is never taken over.
        let ttl = lease_secs(sched);
        let names: Vec<String> = due.iter().map(|spec| spec.id.run_lease()).collect();
        let held: std::collections::HashSet<String> =
            match self.cx.store.take_leases(&names, &self.cx.instance, ttl).await {
                Ok(held) => held.into_iter().collect(),
                Err(error) => {
                    error!(message = "Failed to take KPI leases.", %error);
                    for spec in due.drain(..) {
                        results.push((spec.id.clone(), Err(format!("lease: {error}"))));
                    }
                    std::collections::HashSet::new()
                }
            };
        for spec in due {
            let lease = spec.id.run_lease();
            if !held.contains(&lease) {
                // Another live process holds it.
                results.push((spec.id.clone(), Ok(RunOutcome::NotDue)));
                continue;
            }
            let cx = self.cx.clone();
            let limit = Arc::clone(&self.limit);
            let source_limit = self.source_limit(&spec.source);
            let known = Arc::clone(&self.known);
            let stopping = self.stopping.clone();
            self.running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(spec.id.clone());
            self.leases
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(lease.clone());
            let in_flight = InFlight {
                running: Arc::clone(&self.running),
                id: spec.id.clone(),
                leases: Arc::clone(&self.leases),
                lease: lease.clone(),
            };
            started.push(self.runs.spawn(async move {
                let _in_flight = in_flight;
                let work = async {
                    // The source's slot first: runs waiting on a slow source hold no global slot.
                    // A run that has not got its slots when shutdown begins does not start.
                    let permits = async {
                        let source_permit = source_limit.acquire_owned().await;
                        let permit = limit.acquire_owned().await;
                        (source_permit, permit)
                    };
                    let (source_permit, _permit) = tokio::select! {
                        biased;
                        () = stopping.cancelled() => return None,
                        permits = permits => permits,
                    };
                    // The source's slot is given back once the query has answered. Boxed when
                    // it starts: a queued run's task stays small (a pass queues every due KPI,
                    // 10,000 at once after a start, and the run's own future is large).
                    Some(Box::pin(pipeline::run_kpi(&cx, &spec, now, source_permit)).await)
                };
                let result = work.await;
                if let Err(error) = cx.store.release_lease(&lease, &cx.instance).await {
                    error!(message = "Failed to release a KPI lease.", kpi = %spec.id, %error);
                }
                let Some(result) = result else {
                    // Not started: shutdown came first. The next process runs it.
                    return (spec.id.clone(), Ok(RunOutcome::NotDue));
                };
                if let Err(error) = &result {
                    error!(message = "KPI run failed.", kpi = %spec.id, error = format!("{error:#}"));
                }
                let result = result.map_err(|e| format!("{e:#}"));
                known
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(spec.id.clone())
                    .or_default()
                    .record(&spec, cx.settings.scheduler.tick, now, &result);
                (spec.id.clone(), result)
            }));
        }
        (results, started)
    }

    /// Await `work` while renewing every run lease this process holds, in one statement every
    /// third of the lease timeout. One renewal for all of them, not one per run: at 10,000
    /// one-minute KPIs most runs of a minute wait for a slot for tens of seconds, and a
    /// renewal per waiting run was thousands of store writes a minute.
    async fn renewing_runs<T>(&self, work: impl std::future::Future<Output = T>) -> T {
        let renewer = {
            let this = self.clone();
            let ttl = lease_secs(&self.cx.settings.scheduler);
            let every = std::time::Duration::from_secs(ttl.unsigned_abs() / 3);
            // Aborted when `work` is done, or when this future is dropped before it is.
            tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let names: Vec<String> = this
                        .leases
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .iter()
                        .cloned()
                        .collect();
                    if let Err(error) = this.cx.store.renew_leases(&names, &this.cx.instance, ttl).await {
                        error!(message = "Failed to renew the KPI leases.", leases = names.len(), %error);
                    }
                }
            }))
        };
        let out = work.await;
        drop(renewer);
        out
    }

    /// What follows a pass's runs: digests due, delivery (pruning is the caller's).
    async fn after_runs(&self, now: DateTime<Utc>) {
        self.digests(now).await;
        if let Err(error) = pipeline::deliver(&self.cx, now).await {
            error!(
                message = "Notification delivery pass failed.",
                error = format!("{error:#}")
            );
        }
    }

    /// Build and queue the daily digests that are due.
    async fn digests(&self, now: DateTime<Utc>) {
        let specs = self.specs.all();
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
    }

    /// Prune the store once per `retention.every` (on one process at a time).
    async fn prune_if_due(&self, now: DateTime<Utc>) {
        let cfg = &self.cx.settings.retention;
        {
            let mut next = self.next_prune.lock().unwrap_or_else(|e| e.into_inner());
            if now.timestamp() < *next {
                return;
            }
            *next = now.timestamp() + cfg.every.as_secs().max(1) as i64;
        }
        let store = &self.cx.store;
        let ttl = lease_secs(&self.cx.settings.scheduler);
        match store.try_lease("retention", &self.cx.instance, ttl).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(error) => {
                error!(message = "Retention lease failed.", %error);
                return;
            }
        }
        let before = |d: std::time::Duration| now.timestamp() - d.as_secs() as i64;
        let cut = crate::store::Cutoffs {
            // The detector replays up to `history + history_slack`: never prune what it reads
            // (a day to spare).
            observations: before(cfg.observations.max(
                self.cx.settings.scheduler.history
                    + self.cx.settings.scheduler.history_slack
                    + std::time::Duration::from_secs(86_400),
            )),
            evaluations: before(cfg.evaluations),
            anomalies: before(cfg.anomalies),
            runs: before(cfg.runs),
            notifications: before(cfg.notifications),
        };
        // The lease is renewed while the prune runs, as a run's is.
        match renewing(store, "retention", &self.cx.instance, ttl, store.prune(cut)).await {
            Ok(p) if p.total() > 0 => info!(
                message = "Store pruned.",
                observations = p.observations,
                evaluations = p.evaluations,
                anomalies = p.anomalies,
                runs = p.runs,
                notifications = p.notifications,
                checkpoints = p.checkpoints
            ),
            Ok(_) => {}
            Err(error) => error!(message = "Pruning the store failed.", %error),
        }
        if let Err(error) = store.release_lease("retention", &self.cx.instance).await {
            error!(message = "Failed to release the retention lease.", %error);
        }
    }

    /// Make a pass every `tick` until `token` is cancelled, without waiting for the runs a
    /// pass starts; then let the runs in flight finish.
    pub async fn run_until_cancelled(self, token: CancellationToken) {
        let tick = self.cx.settings.scheduler.tick;
        info!(message = "Scheduler started.", kpis = self.specs.all().len(), tick = ?tick);
        self.renewing_runs(async {
            loop {
                self.pass().await;
                tokio::select! {
                    () = token.cancelled() => break,
                    () = tokio::time::sleep(tick) => {}
                }
            }
            // Runs still waiting for a slot give up; those already running finish.
            self.stopping.cancel();
            self.runs.close();
            self.runs.wait().await;
        })
        .await;
        info!(message = "Scheduler stopped.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_tick_and_stops_at_the_interval() {
        let tick = std::time::Duration::from_secs(1);
        let waits: Vec<i64> = (1..=11).map(|n| backoff_secs(tick, 300, n)).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff_secs(tick, 300, u32::MAX), 300);
        // A tick under a second still waits a second.
        assert_eq!(backoff_secs(std::time::Duration::from_millis(200), 60, 1), 1);
    }
}
