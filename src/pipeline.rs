//! The single path from a KPI query to an alert: `run_kpi(cx, spec, now)`.
//!
//! 1. Work out the window: every bucket that has closed (plus the KPI's `delay`) since the
//!    last successful fetch, re-reading `overlap_buckets` for late rows; on first sight,
//!    `backfill` of history. The incomplete current bucket is never read.
//! 2. Run the query on its source. A failure is recorded as `data_missing` (source down or
//!    slow) or `query_error` (the query is broken) — never as a drop.
//! 3. Bucket the rows per series (dimension values), fill missing count buckets with zero,
//!    and upsert them (idempotent).
//! 4. Replay stored history through the detector (pure, on a blocking thread) and store the
//!    verdicts of buckets not judged before, plus anomalies.
//! 5. Feed fresh verdicts to the alert lifecycle; state changes and the notifications they
//!    cause are written in one transaction; then deliver.
//!
//! The scheduler, the API and tests all call this; none run KPI SQL themselves.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use chrono::{DateTime, Offset, TimeZone, Utc};
use tracing::{debug, info, instrument, warn};

use crate::alerting::plan::{self, Judged};
use crate::alerting::receivers::Receivers;
use crate::alerting::{self, lifecycle, BucketVerdict, LinkSigner, Mailer};
use crate::baseline::{Bucket, DetectorConfig, Feedback, OnlineDetector, SeasonalityMode, Status};
use crate::config::{SchedulerConfig, Settings};
use crate::kpi::{Kind, KpiSpec, SeasonalitySetting, SliceAlerts};
use crate::sources::{self, RawRow, SourceRegistry, Window};
use crate::store::{AlertRow, EvaluationRow, NewAnomaly, ObservationRow, SeriesRevision, Store};
use crate::telemetry::{KpiLabels, Metrics, RunLabels, SourceLabels};

mod checkpoint;
mod incidents;

pub use checkpoint::FORMAT as CHECKPOINT_FORMAT;

/// What a run needs: handles, not logic.
#[derive(Debug, Clone)]
pub struct Context {
    /// State store.
    pub store: Store,
    /// KPI sources.
    pub sources: SourceRegistry,
    /// Configuration.
    pub settings: Arc<Settings>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// E-mail.
    pub mailer: Mailer,
    /// Named receivers for routed alerts.
    pub receivers: Receivers,
    /// Signs the links in messages.
    pub signer: LinkSigner,
    /// This process's name in leases and outbox claims: `kpiwatch-<pid>-<random>`, new per
    /// start.
    pub instance: String,
    /// Each series' detector as of its last judged bucket (see [`KeptDetector`]).
    pub detectors: DetectorCache,
}

/// The detectors this process keeps between runs, by series id.
pub type DetectorCache = Arc<std::sync::Mutex<HashMap<i64, KeptDetector>>>;

/// A series' detector after stepping through its stored history up to `upto`, kept by the
/// process that ran it so the next run steps only the new buckets (the fast path). It is used
/// only when replaying from scratch would give the same state: the same replay start (`from`,
/// which moves once per `scheduler.history_slack`, see [`replay_start`]), the same
/// configuration, the same feedback and excluded periods before `upto`, and the same stored
/// observations before `upto`.
///
/// The observations are checked without reading them: the store bumps the series'
/// observation revision (`series.obs_rev`, kept by triggers) whenever a bucket before its
/// `evaluated_until` is inserted or restated, and pruning (which deletes a prefix) would move
/// the first bucket at or after `from`. While both are what the detector saw, the run reads
/// only the buckets after `upto`. Otherwise it reads the history from `from` and checks it
/// against the detector: the number of observations before `upto` and a chained digest of
/// all of them ([`chain`]); a restated bucket after `upto` leaves the detector usable (a
/// checkpoint written before it), one before sends the run down the full replay (the slow
/// path).
///
/// Every `scheduler.checkpoint_every` it is also written to the store (see `checkpoint`): a
/// process with no kept detector for a series (just started, or taking the KPI over) loads
/// that checkpoint, checks it the same way (it may be older than the last judged bucket: the
/// buckets after it are stepped again, their verdicts already stored) and steps only the
/// observations after it.
#[derive(Debug, Clone)]
pub struct KeptDetector {
    from: i64,
    cfg: DetectorConfig,
    /// Hash of the feedback and excluded periods before `upto`.
    inputs: u64,
    upto: i64,
    /// Observations stepped.
    seen: usize,
    /// [`chain`] of the observations stepped.
    digest: u64,
    /// The series' observation revision when they were read.
    rev: i64,
    /// The first observation stepped.
    first: Option<i64>,
    detector: OnlineDetector,
    /// `upto` of the last checkpoint written (or loaded) for this series, if any.
    checkpointed: Option<i64>,
}

impl KeptDetector {
    /// Whether this detector was built with the replay's start, configuration, feedback and
    /// exclusions, for a series judged up to `judged_until`. A kept detector must be exactly
    /// at `judged_until`; a checkpoint may be behind it (`exact = false`).
    fn matches(&self, replay: &Replay<'_>, judged_until: i64, exact: bool) -> bool {
        let at = if exact {
            self.upto == judged_until
        } else {
            self.upto <= judged_until && self.upto >= replay.from
        };
        at && self.from == replay.from
            && self.cfg == replay.cfg
            && self.inputs == replay_inputs(replay.feedback, replay.excluded, replay.from, self.upto)
    }

    /// Whether no stored observation it stepped through can have changed since: the same
    /// revision, and the same first bucket at or after its replay start (pruning).
    fn current(&self, revision: &SeriesRevision) -> bool {
        self.rev == revision.obs_rev && (self.first.is_none() || self.first == revision.first)
    }

    /// Whether it [`matches`](Self::matches) and `history` (the stored observations from
    /// `from`) starts with exactly the observations it stepped.
    fn valid_for(
        &self,
        replay: &Replay<'_>,
        history: &[ObservationRow],
        judged_until: i64,
        exact: bool,
    ) -> bool {
        self.matches(replay, judged_until, exact)
            && self.seen == history.partition_point(|o| o.ts < self.upto)
            && chain(CHAIN_SEED, &history[..self.seen]) == self.digest
    }
}

/// The digest of no observations.
const CHAIN_SEED: u64 = 0x6b70_6977_6174_6368;

/// A digest of `rows` after `digest` (so `chain(chain(s, a), b) == chain(s, a ++ b)`):
/// stable across processes and builds (checkpoints store it), bit for bit on values. Not
/// cryptographic: it tells restated data from what was stepped, not an adversary.
fn chain(mut digest: u64, rows: &[ObservationRow]) -> u64 {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    for o in rows {
        digest = mix(digest ^ o.ts as u64);
        digest = mix(digest ^ o.value.to_bits());
        digest = mix(digest ^ o.denominator.map_or(0x7ff4_0000_0000_0001, f64::to_bits));
    }
    digest
}

/// What, besides the observations, a replay of one series depends on.
struct Replay<'a> {
    from: i64,
    cfg: DetectorConfig,
    feedback: &'a HashMap<i64, Feedback>,
    excluded: &'a crate::calendar::Exclusions,
}

/// The start of a series' replayed history for a run ending at `end`: `history` back, rounded
/// down to the series' last anchor, one of the instants `anchor + k * slack` (see
/// [`replay_anchor`]). So it stays put for `slack` and a kept detector or checkpoint stays
/// valid that long; the replay then covers between `history` and `history + slack` (the
/// detector carries up to `slack` more history than configured). A `slack` under a second is
/// taken as one second: the start moves on with every run.
pub fn replay_start(history: std::time::Duration, slack: std::time::Duration, anchor: i64, end: i64) -> i64 {
    let period = (slack.as_secs() as i64).max(1);
    let back = end - history.as_secs() as i64;
    back - (back - anchor).rem_euclid(period)
}

/// Where in each `slack` period a series' replay start moves on: a stable hash of the KPI id
/// and the series' dimensions, on the bucket grid (`step`, the bucket's nominal length), in
/// `[0, slack)`. Every series has its own, so the replays that a moving start causes are
/// spread over the period instead of all falling in one minute (at 10,000 KPIs, a stall).
pub fn replay_anchor(kpi: &str, dims: &str, step: i64, slack: std::time::Duration) -> i64 {
    use std::hash::Hasher;
    let period = (slack.as_secs() as i64).max(1);
    let step = step.clamp(1, period);
    let slots = u64::try_from(period / step).unwrap_or(1).max(1);
    // Stable across processes and builds: the start is part of what checkpoints store.
    let mut h = checkpoint::StableHasher::default();
    h.write(kpi.as_bytes());
    h.write(&[0xff]);
    h.write(dims.as_bytes());
    i64::try_from(h.finish() % slots).unwrap_or(0) * step
}

/// Hash of what, besides the observations, shapes the replay before `upto`.
fn replay_inputs(
    feedback: &HashMap<i64, Feedback>,
    excluded: &crate::calendar::Exclusions,
    from: i64,
    upto: i64,
) -> u64 {
    use std::hash::{Hash, Hasher};
    // Stable across processes and builds: checkpoints store it.
    let mut h = checkpoint::StableHasher::default();
    let mut fb: Vec<(i64, u8)> = feedback
        .iter()
        .filter(|(t, _)| **t < upto)
        .map(|(t, f)| {
            (
                *t,
                match f {
                    Feedback::None => 0,
                    Feedback::NotAnomaly => 1,
                    Feedback::NewNormal => 2,
                },
            )
        })
        .collect();
    fb.sort_unstable();
    fb.hash(&mut h);
    for (s, e) in excluded.intervals() {
        if *s < upto && *e > from {
            ((*s).max(from), (*e).min(upto)).hash(&mut h);
        }
    }
    h.finish()
}

/// What one run did.
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    /// No bucket has closed since the last run.
    NotDue,
    /// Data fetched and judged.
    Ok {
        /// Rows the query returned.
        rows: usize,
        /// Buckets judged for the first time.
        judged: usize,
        /// Of those, anomalous within the alert horizon.
        live_anomalies: usize,
        /// Alerts opened.
        alerts_opened: usize,
    },
    /// The source was down or too slow: data missing, not a drop.
    DataMissing(String),
    /// The query failed or broke the contract.
    QueryError(String),
}

/// The window a run at `now` should read, or `None` when no new bucket has closed.
pub fn due_window(
    spec: &KpiSpec,
    sched: &SchedulerConfig,
    fetched_until: Option<i64>,
    now: DateTime<Utc>,
) -> Option<(i64, i64)> {
    let buckets = spec.buckets();
    let ready = now.timestamp() - spec.delay.as_secs() as i64;
    let end = buckets.floor(ready);
    let backfill = (sched.backfill.as_secs() as i64).div_euclid(buckets.nominal_secs());
    let backfill_start = buckets.back(end, backfill);
    let start = match fetched_until {
        None => backfill_start,
        Some(done) if done >= end => return None,
        Some(done) => buckets
            .back(done, i64::from(sched.overlap_buckets))
            .max(backfill_start),
    };
    (start < end).then_some((start, end))
}

/// Run one KPI now: fetch, store, judge, alert, deliver.
///
/// `source_slot` (the scheduler's per-source concurrency permit) is held while the source is
/// queried and released once the rows are in, so the store work of one run overlaps the next
/// run's query: the per-source limit bounds queries against the source (and the run slots a
/// dead source can hold), not the runs in flight.
#[instrument(skip_all, fields(kpi = %spec.id))]
pub async fn run_kpi<S>(
    cx: &Context,
    spec: &KpiSpec,
    now: DateTime<Utc>,
    source_slot: S,
) -> anyhow::Result<RunOutcome> {
    let store = &cx.store;
    // The KPI's state and its series with their ids: written only by this KPI's runs, and
    // this process holds its lease, so still current below (no get-or-create per series and
    // run).
    let mut state = store
        .run_start(spec.id.as_str())
        .await
        .context("Failed to read KPI state")?;
    if state.is_none() {
        store
            .upsert_kpi(spec)
            .await
            .context("Failed to register the KPI")?;
        state = store
            .run_start(spec.id.as_str())
            .await
            .context("Failed to read KPI state")?;
    }
    let (fetched_until, known_series) = state.unwrap_or_default();
    let Some((start, end)) = due_window(spec, &cx.settings.scheduler, fetched_until, now) else {
        return Ok(RunOutcome::NotDue);
    };
    let window = Window {
        start: ts(start)?,
        end: ts(end)?,
    };

    let started = Instant::now();
    let fetched = match cx.sources.get(&spec.source) {
        Ok(source) => source.fetch(&spec.query, spec.kind, spec.buckets(), window).await,
        Err(e) => Err(e),
    };
    drop(source_slot);
    let source_label = SourceLabels {
        source: spec.source.clone(),
    };
    let mut took = Timings {
        fetch: started.elapsed(),
        ..Timings::default()
    };
    cx.metrics
        .query_duration
        .get_or_create(&source_label)
        .observe(took.fetch.as_secs_f64());
    let known_ids: BTreeMap<String, i64> = known_series.into_iter().map(|s| (s.dims, s.id)).collect();
    // The KPI's open alerts (data missing, anomalies), by fingerprint: opened and closed only
    // by this KPI's runs, each fingerprint at most once a run below.
    let mut open_alerts: HashMap<String, AlertRow> = store
        .open_alerts_of(spec.id.as_str())
        .await?
        .into_iter()
        .map(|a| (a.fingerprint.clone(), a))
        .collect();
    let missing_fp = alerting::fingerprint("data_missing", spec, "{}");
    let known: std::collections::BTreeSet<String> = known_ids.keys().cloned().collect();
    let bucketed = fetched.and_then(|f| {
        let n = f.rows.len();
        crate::slices::bucketize(&f.rows, spec, start, end, &known).map(|b| (n, b, f.warnings))
    });
    let (n_rows, series, warnings) = match bucketed {
        Ok(ok) => ok,
        Err(error) => {
            cx.metrics.query_failures.get_or_create(&source_label).inc();
            let (status, outcome) = if error.is_outage() {
                ("data_missing", RunOutcome::DataMissing(error.to_string()))
            } else {
                ("query_error", RunOutcome::QueryError(error.to_string()))
            };
            warn!(message = "KPI query failed.", status, %error);
            count_run(cx, spec, status);
            let behind_since = fetched_until.unwrap_or(start);
            if behind_since <= spec.buckets().back(end, DATA_MISSING_AFTER_BUCKETS) {
                let open = open_alerts.remove(&missing_fp);
                data_missing_alert(
                    cx,
                    spec,
                    open,
                    fetched_until.unwrap_or(start),
                    Some(&error.to_string()),
                    now,
                )
                .await?;
            }
            store
                .record_run(
                    spec.id.as_str(),
                    now.timestamp(),
                    (start, end),
                    status,
                    0,
                    Some(&error.to_string()),
                )
                .await
                .context("Failed to record the failed run")?;
            return Ok(outcome);
        }
    };

    // Data is back: close a data-missing alert before judging, so anomalies are not inhibited.
    let open = open_alerts.remove(&missing_fp);
    data_missing_alert(cx, spec, open, start, None, now).await?;

    // Store observations, zero-filling counts for every known series.
    let mut series = series;
    if spec.kind == Kind::Count {
        for dims in &known {
            series.entry(dims.clone()).or_default();
        }
        if series.is_empty() {
            series.insert("{}".to_owned(), BTreeMap::new());
        }
        for buckets in series.values_mut() {
            for t in spec.buckets().starts(start, end) {
                buckets.entry(t).or_insert(ObservationRow {
                    ts: t,
                    value: 0.0,
                    denominator: None,
                });
            }
        }
    }
    let mut judged = 0;
    let mut live_anomalies = 0;
    let mut alerts_opened = 0;
    let mut evaluated = Vec::with_capacity(series.len());
    for (dims, buckets) in &series {
        let series_id = match known_ids.get(dims) {
            Some(id) => *id,
            None => store.series_id(spec.id.as_str(), dims).await?,
        };
        let rows: Vec<ObservationRow> = buckets.values().copied().collect();
        let t = Instant::now();
        store.upsert_observations(series_id, &rows).await?;
        took.write += t.elapsed();
        let (fresh, live) = evaluate_series(cx, spec, series_id, dims, end, &mut took).await?;
        judged += fresh.len();
        live_anomalies += live;
        evaluated.push((dims.as_str(), series_id, fresh));
    }
    let horizon = alert_horizon(spec, &cx.settings.scheduler, end);
    let live = |fresh: &Fresh| -> Vec<(i64, BucketVerdict)> {
        fresh
            .iter()
            .filter(|(t, _, _)| *t >= horizon)
            .map(|(t, v, since)| (*t, bucket_verdict(*t, v, *since)))
            .collect()
    };
    let sliced = evaluated.iter().any(|(d, _, _)| !crate::slices::is_total(d));
    if sliced && spec.dimensions.slice_alerts == SliceAlerts::Grouped {
        // One incident per problem: the total and its slices alert together.
        let mut buckets: BTreeMap<i64, Vec<(String, BucketVerdict)>> = BTreeMap::new();
        for (dims, _, fresh) in &evaluated {
            for (t, v) in live(fresh) {
                buckets.entry(t).or_default().push(((*dims).to_owned(), v));
            }
        }
        let judged = incidents::group(spec, buckets);
        let total_id = store.series_id(spec.id.as_str(), incidents::GROUP_DIMS).await?;
        let open = open_alerts.remove(&alerting::fingerprint("anomaly", spec, incidents::GROUP_DIMS));
        alerts_opened += alert_on(cx, spec, (total_id, incidents::GROUP_DIMS), open, &judged, now).await?;
        // A slice incident opened before grouping (or under `separate`) runs its own course
        // until it closes; no new ones open.
        for (dims, series_id, fresh) in &evaluated {
            if crate::slices::is_total(dims) {
                continue;
            }
            let Some(open) = open_alerts.remove(&alerting::fingerprint("anomaly", spec, dims)) else {
                continue;
            };
            let judged: Vec<Judged> = live(fresh)
                .into_iter()
                .map(|(t, v)| Judged::alone(t, v, dims))
                .collect();
            alert_on(cx, spec, (*series_id, dims), Some(open), &judged, now).await?;
        }
    } else {
        for (dims, series_id, fresh) in &evaluated {
            let judged: Vec<Judged> = live(fresh)
                .into_iter()
                .map(|(t, v)| Judged::alone(t, v, dims))
                .collect();
            let open = open_alerts.remove(&alerting::fingerprint("anomaly", spec, dims));
            alerts_opened += alert_on(cx, spec, (*series_id, dims), open, &judged, now).await?;
        }
    }
    // The source's warnings (e.g. Prometheus's) ride on the successful run's status.
    let warning = warnings_text(&spec.source, &warnings);
    if let Some(warning) = &warning {
        warn!(message = "KPI query returned warnings.", %warning);
    }
    store
        .record_run(
            spec.id.as_str(),
            now.timestamp(),
            (start, end),
            "ok",
            n_rows as i64,
            warning.as_deref(),
        )
        .await?;
    count_run(cx, spec, "ok");
    info!(
        message = "KPI run completed.",
        rows = n_rows,
        series = series.len(),
        judged,
        live_anomalies,
        window_start = %window.start,
        window_end = %window.end,
        fetch_ms = took.fetch.as_millis() as u64,
        write_ms = took.write.as_millis() as u64,
        read_ms = took.read.as_millis() as u64,
        replay_ms = took.replay.as_millis() as u64,
        save_ms = took.save.as_millis() as u64,
        checkpoint_ms = took.checkpoint.as_millis() as u64,
    );
    // A new alert goes out at once; anything else this run queued (a resolution, a
    // data-missing alert closing) goes with the scheduler's delivery pass, every tick — not a
    // claim of the outbox after every run (10,000 a minute at 10,000 one-minute KPIs).
    if alerts_opened > 0 {
        deliver(cx, now).await?;
    }
    Ok(RunOutcome::Ok {
        rows: n_rows,
        judged,
        live_anomalies,
        alerts_opened,
    })
}

/// A KPI whose data is this many buckets late because its query fails gets a "data missing"
/// alert (and its anomaly alerts are held back until data returns).
pub const DATA_MISSING_AFTER_BUCKETS: i64 = 2;

/// Open (with `error`) or resolve (without) the KPI's data-missing alert; `open` is the one
/// open now, if any.
async fn data_missing_alert(
    cx: &Context,
    spec: &KpiSpec,
    open: Option<AlertRow>,
    since: i64,
    error: Option<&str>,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let store = &cx.store;
    let Some(write) = alerting::plan::plan_data_missing(spec, open.as_ref(), error, since, now.timestamp())
    else {
        return Ok(());
    };
    let row = write.row;
    let labels = alerting::alert_labels(spec, "{}");
    let targets = targets_for(cx, spec, &labels);
    let public_url = &cx.settings.http.public_url;
    let resolved = write.event == alerting::lifecycle::Event::Resolved;
    let (subject, body) = alerting::message::data_missing_message(
        spec,
        resolved,
        row.started_ts,
        if resolved { "" } else { &row.summary },
        public_url,
        None,
    );
    let suppressed = if resolved {
        None
    } else {
        let silences = load_silences(store, now).await?;
        alerting::suppression(&labels, &silences, &cx.settings.alerting.maintenance, now)
    };
    let payload = alerting::payload(spec, "{}", &row, None, resolved, public_url, (None, None));
    let event = write.event.name();
    let out = alerting::Outgoing {
        event: &event,
        subject: &subject,
        body: &body,
        payload: &payload,
        suppressed_by: suppressed.as_deref(),
        group_key: &alerting::group_key(&labels, &cx.settings.alerting.grouping.by),
        not_before: now.timestamp() + cx.settings.alerting.grouping.wait.as_secs() as i64,
    };
    let notify = alerting::notifications(&cx.receivers, &targets, out);
    store.save_alert(&row, Some(&event), &notify).await?;
    if resolved {
        info!(message = "KPI data missing alert resolved.");
    } else {
        warn!(message = "KPI data missing alert firing.", since = %ts(since)?, error = %row.summary);
    }
    Ok(())
}

/// Who hears about this KPI's alerts: the model's recipients and the routed receivers,
/// else the configured default recipients.
fn targets_for(
    cx: &Context,
    spec: &KpiSpec,
    labels: &std::collections::BTreeMap<String, String>,
) -> Vec<alerting::receivers::Target> {
    let routed = cx
        .settings
        .alerting
        .routing
        .receivers_for(labels)
        .unwrap_or_else(|error| {
            warn!(message = "Routing failed; using the model's recipients only.", %error);
            Vec::new()
        });
    let targets = cx.receivers.targets(&spec.recipients, &routed);
    if targets.is_empty() {
        cx.receivers.targets(&cx.settings.email.default_recipients, &[])
    } else {
        targets
    }
}

/// Deliver the notifications due at `now` and count the outcomes.
pub async fn deliver(cx: &Context, now: DateTime<Utc>) -> anyhow::Result<()> {
    let dispatch = alerting::Dispatch {
        mailer: &cx.mailer,
        receivers: &cx.receivers,
        group_interval: cx.settings.alerting.grouping.interval.as_secs() as i64,
        holder: &cx.instance,
        claim_secs: cx.settings.scheduler.claim_timeout.as_secs() as i64,
    };
    let report = alerting::deliver_pending(&cx.store, dispatch, now.timestamp())
        .await
        .context("Failed to deliver notifications")?;
    for (status, counts) in [("sent", &report.sent), ("failed", &report.failed)] {
        for (channel, n) in counts {
            cx.metrics
                .notifications
                .get_or_create(&crate::telemetry::DeliveryLabels {
                    channel: channel.clone(),
                    status: status.to_owned(),
                })
                .inc_by(*n as u64);
        }
    }
    for (receiver, failing) in &report.failing {
        cx.metrics
            .receiver_failing
            .get_or_create(&crate::telemetry::ReceiverLabels {
                receiver: receiver.clone(),
            })
            .set(i64::from(*failing));
    }
    Ok(())
}

fn count_run(cx: &Context, spec: &KpiSpec, status: &str) {
    cx.metrics
        .kpi_runs
        .get_or_create(&RunLabels {
            kpi: spec.id.to_string(),
            status: status.to_owned(),
        })
        .inc();
}

fn ts(secs: i64) -> anyhow::Result<DateTime<Utc>> {
    DateTime::from_timestamp(secs, 0).context("timestamp out of range")
}

/// The detector configuration of a KPI.
pub fn detector_config(spec: &KpiSpec) -> DetectorConfig {
    DetectorConfig {
        kind: spec.kind,
        interval_secs: spec.interval.secs(),
        direction: spec.direction,
        sensitivity: spec.sensitivity,
        min_volume: spec.min_volume,
        seasonality: match spec.seasonality {
            SeasonalitySetting::Auto => SeasonalityMode::Auto,
            SeasonalitySetting::None => SeasonalityMode::None,
            SeasonalitySetting::Daily => SeasonalityMode::Daily,
            SeasonalitySetting::Weekly => SeasonalityMode::Weekly,
        },
    }
}

/// The detector configuration of one series of a KPI: a slice is judged only with
/// `slice_min_volume` per bucket when the model sets it (the total keeps `min_volume`).
pub fn series_detector_config(spec: &KpiSpec, dims: &str) -> DetectorConfig {
    let mut cfg = detector_config(spec);
    if let Some(v) = spec
        .dimensions
        .slice_min_volume
        .filter(|_| !crate::slices::is_total(dims))
    {
        cfg.min_volume = v;
    }
    cfg
}

/// The UTC start of an incident the detector dates `v.since` in local seconds, for the bucket
/// `local` (local seconds) starting at `utc`: the same distance back in time (an hour off
/// when a clock change falls inside the incident).
pub fn since_utc(v: &crate::baseline::Verdict, local: i64, utc: i64) -> Option<i64> {
    v.since.map(|s| utc - (local - s).max(0))
}

/// What alerting needs to know of the detector's verdict on the bucket starting at `ts`.
pub fn bucket_verdict(ts: i64, v: &crate::baseline::Verdict, since: Option<i64>) -> BucketVerdict {
    BucketVerdict {
        ts,
        reading: v.reading,
        score: v.score,
        volume: v.volume,
        seasonality: v.seasonality.as_str().to_owned(),
        anomaly: v.anomaly,
        judged: v.status == Status::Evaluated,
        outside: v.anomaly || v.ongoing,
        below: v.side.map(|s| s == crate::baseline::Side::Below),
        since: since.map(|s| s.min(ts)),
        trigger: v.trigger.map(|t| t.as_str()),
    }
}

/// Bucket start as local wall-clock seconds in `tz`, so daily slots follow local time.
pub fn local_secs(tz: chrono_tz::Tz, utc_secs: i64) -> i64 {
    match tz.timestamp_opt(utc_secs, 0).single() {
        Some(t) => utc_secs + i64::from(t.offset().fix().local_minus_utc()),
        None => utc_secs,
    }
}

/// Where a run's time went (summed over its series), for the run's log event.
#[derive(Debug, Default)]
struct Timings {
    /// The source query.
    fetch: std::time::Duration,
    /// `upsert_observations`.
    write: std::time::Duration,
    /// Reading history, progress, exclusions, feedback and a checkpoint back.
    read: std::time::Duration,
    /// The detector (on the blocking pool).
    replay: std::time::Duration,
    /// `save_evaluations`.
    save: std::time::Duration,
    /// `save_checkpoint`.
    checkpoint: std::time::Duration,
}

/// A series' verdicts on the buckets it had not judged before: (bucket start, verdict,
/// incident start in UTC).
type Fresh = Vec<(i64, crate::baseline::Verdict, Option<i64>)>;

/// Replay the series' stored history through the detector; store the verdicts of buckets not
/// judged before (and their anomalies) and return them with the number of live anomalies.
async fn evaluate_series(
    cx: &Context,
    spec: &KpiSpec,
    series_id: i64,
    dims: &str,
    end: i64,
    took: &mut Timings,
) -> anyhow::Result<(Fresh, usize)> {
    let read_started = Instant::now();
    let store = &cx.store;
    let sched = &cx.settings.scheduler;
    let grid = spec.buckets();
    let anchor = replay_anchor(spec.id.as_str(), dims, grid.nominal_secs(), sched.history_slack);
    let from = replay_start(sched.history, sched.history_slack, anchor, end);
    // Read before the observations: a restatement after this read then only costs a replay.
    let revision = store.series_revision(series_id, from).await?.unwrap_or_default();
    let judged_until = revision.evaluated_until.unwrap_or(i64::MIN);
    let mut cfg = series_detector_config(spec, dims);
    let tz = spec.timezone;
    // Buckets inside an event or holiday are neither learned nor alerted.
    let excluded = crate::calendar::exclusions(store, spec, from, end).await?;
    // Feedback on earlier buckets is replayed into the detector: a false positive is learned
    // as normal, a new normal re-baselines there.
    let feedback = if revision.feedback > 0 {
        series_feedback(store, series_id, from, end).await?
    } else {
        HashMap::new()
    };
    let replay = Replay {
        from,
        cfg,
        feedback: &feedback,
        excluded: &excluded,
    };
    let take_kept = || {
        cx.detectors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&series_id)
    };
    // The fast path: the detector this process kept after the last run, else this series'
    // checkpoint in the store, when nothing it stepped through changed (see
    // [`KeptDetector`]): only the buckets after it are read. A slice needs its recent
    // volumes to know whether it is judged over coarse windows (`slices`), so it reads its
    // history (and may still step from a kept detector below).
    let fine = crate::slices::is_total(dims) || spec.kind == Kind::Gauge;
    let mut kept = if sched.keep_detectors { take_kept() } else { None };
    let mut stored: Option<Option<KeptDetector>> = None;
    let mut fast = None;
    if sched.keep_detectors && fine {
        if kept
            .as_ref()
            .is_some_and(|c| c.matches(&replay, judged_until, true) && c.current(&revision))
        {
            fast = kept.take().map(|c| (c, "kept"));
        } else {
            let c = load_checkpoint(store, series_id, &cfg).await;
            if c.as_ref()
                .is_some_and(|c| c.matches(&replay, judged_until, false) && c.current(&revision))
            {
                fast = c.map(|c| (c, "checkpoint"));
            } else {
                stored = Some(c);
            }
        }
    }
    let mut k = 1;
    let (history, start_from, path) = match fast {
        Some((c, path)) => (store.observations(series_id, c.upto, end).await?, Some(c), path),
        None => {
            let history = store.observations(series_id, from, end).await?;
            // A slice too thin for the KPI's interval is judged over a coarser window (see
            // `slices`); its verdicts are dated by each window's last bucket and given per
            // bucket (counts and volumes as the window's mean per bucket; ratios are rates
            // either way). Coarse windows always replay: they are cut from `end`.
            k = crate::slices::evaluation_factor(spec, dims, &history);
            if k == 1 && sched.keep_detectors {
                // The slow path's check: the stored history itself.
                if let Some(c) = kept
                    .take()
                    .filter(|c| c.valid_for(&replay, &history, judged_until, true))
                {
                    (history, Some(c), "kept")
                } else {
                    let c = match stored {
                        Some(c) => c,
                        None => load_checkpoint(store, series_id, &cfg).await,
                    };
                    match c {
                        Some(c) if c.valid_for(&replay, &history, judged_until, false) => {
                            (history, Some(c), "checkpoint")
                        }
                        Some(c) => {
                            debug!(
                                message = "Detector checkpoint is stale; replaying.",
                                series = series_id,
                                upto = c.upto,
                                judged_until,
                            );
                            (history, None, "full")
                        }
                        None => (history, None, "full"),
                    }
                }
            } else {
                (history, None, "full")
            }
        }
    };
    let rows_read = history.len() as u64;
    let windows = crate::slices::window_buckets(spec, k);
    let history = if k > 1 {
        cfg.interval_secs = u32::try_from(windows.nominal_secs()).unwrap_or(cfg.interval_secs);
        crate::slices::coarsen(&history, grid, windows, end)
    } else {
        history
    };
    let per_bucket = if spec.kind == Kind::Count { k as f64 } else { 1.0 };
    let keep = sched.keep_detectors && k == 1;
    let next_inputs = replay_inputs(&feedback, &excluded, from, end);
    // A checkpoint is written every `checkpoint_every` of buckets (and at once after a full
    // replay), not on every run.
    let every = sched.checkpoint_every.as_secs() as i64;
    let checkpointed = start_from.as_ref().and_then(|c| c.checkpointed);
    let write_checkpoint = keep && every > 0 && checkpointed.is_none_or(|at| end - at >= every);
    let obs_rev = revision.obs_rev;
    took.read += read_started.elapsed();
    // CPU-bound: replaying weeks of buckets. Keep it off the async workers.
    let replay_started = Instant::now();
    let span = tracing::Span::current();
    let (verdicts, kept, encoded) = tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        // Stepped already: the observations before `upto` (`seen` of them, all of `history`
        // from `from` on the slow path, none of it on the fast path).
        let (mut detector, skip, base) = match start_from {
            Some(c) => {
                let skip = history.partition_point(|o| o.ts < c.upto);
                let base = (c.seen.saturating_sub(skip), c.digest, c.first);
                (c.detector, skip, base)
            }
            None => (OnlineDetector::new(cfg)?, 0, (0, CHAIN_SEED, None)),
        };
        let (before, digest, first) = base;
        let mut out = Vec::new();
        for o in &history[skip..] {
            // A coarse window starts k buckets before the one it is dated by.
            let start = windows.floor(o.ts);
            let bucket = Bucket {
                ts: local_secs(tz, start),
                value: o.value,
                denominator: o.denominator,
                excluded: excluded.covers(o.ts, grid.end(o.ts)),
            };
            let mut v =
                detector.step_with_feedback(&bucket, feedback.get(&o.ts).copied().unwrap_or_default());
            if o.ts >= judged_until {
                let since = since_utc(&v, bucket.ts, start);
                v.reading.value /= per_bucket;
                v.reading.band = v.reading.band.divided(per_bucket);
                v.volume /= k as f64;
                out.push((o.ts, v, since));
            }
        }
        let mut kept = KeptDetector {
            from,
            cfg,
            inputs: next_inputs,
            upto: end,
            seen: before + history.len(),
            digest: chain(digest, &history[skip..]),
            rev: obs_rev,
            first: first.or_else(|| history.first().map(|o| o.ts)),
            detector,
            checkpointed,
        };
        let encoded = if write_checkpoint {
            match checkpoint::encode(&kept) {
                Ok(bytes) => {
                    kept.checkpointed = Some(end);
                    Some(bytes)
                }
                Err(error) => {
                    warn!(message = "Failed to encode a detector checkpoint.", %error);
                    None
                }
            }
        } else {
            None
        };
        Ok::<_, crate::baseline::Error>((out, kept, encoded))
    })
    .await
    .context("Detector task failed")?
    .context("Invalid detector configuration")?;
    let labels = crate::telemetry::ReplayLabels { path };
    cx.metrics.detector_runs.get_or_create(&labels).inc();
    took.replay += replay_started.elapsed();
    cx.metrics
        .detector_observations_read
        .get_or_create(&labels)
        .inc_by(rows_read);
    let checkpoint = encoded.map(|bytes| (kept.upto, kept.seen, bytes));
    if keep {
        cx.detectors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(series_id, kept);
    }

    let horizon = alert_horizon(spec, sched, end);
    // Verdicts older than `retention.evaluations` would be pruned at once: a backfill does
    // not write them (anomalies keep their own, longer retention).
    let kept_from = end.saturating_sub(cx.settings.retention.evaluations.as_secs() as i64);
    let mut evaluations = Vec::with_capacity(verdicts.len());
    let mut anomalies = Vec::new();
    for (t, v, _) in &verdicts {
        if *t < kept_from {
            continue;
        }
        evaluations.push(EvaluationRow {
            ts: *t,
            reading: v.reading,
            score: if v.score.is_finite() { v.score } else { 0.0 },
            anomaly: v.anomaly,
            status: v.status.as_str().to_owned(),
            volume: v.volume,
            flagged_by: v.trigger.map(|t| t.as_str().to_owned()),
        });
        if v.anomaly {
            anomalies.push(NewAnomaly {
                ts: *t,
                reading: v.reading,
                score: v.score,
                volume: v.volume,
                seasonality: v.seasonality.as_str().to_owned(),
                alerted: *t >= horizon,
                flagged_by: v.trigger.map(|t| t.as_str().to_owned()),
                side: v.side.map(|s| s.as_str().to_owned()),
            });
        }
    }
    let t = Instant::now();
    store
        .save_evaluations(series_id, &evaluations, &anomalies, end)
        .await
        .context("Failed to store verdicts")?;
    took.save += t.elapsed();
    let t = Instant::now();
    if let Some((upto, seen, bytes)) = checkpoint {
        // An optimisation only: a failed write costs the next process a replay, not the run.
        let seen = i64::try_from(seen).unwrap_or(i64::MAX);
        if let Err(error) = store
            .save_checkpoint(series_id, upto, seen, CHECKPOINT_FORMAT, &bytes)
            .await
        {
            warn!(message = "Failed to store a detector checkpoint.", series = series_id, %error);
            if let Some(c) = cx
                .detectors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(&series_id)
            {
                c.checkpointed = None;
            }
        }
    }
    took.checkpoint += t.elapsed();

    let mut live = 0;
    for (t, v, _) in &verdicts {
        if v.anomaly && *t >= horizon {
            live += 1;
            cx.metrics
                .anomalies
                .get_or_create(&KpiLabels {
                    kpi: spec.id.to_string(),
                })
                .inc();
        }
    }
    Ok((verdicts, live))
}

/// The series' stored checkpoint as a kept detector, if there is one written by this format
/// for `cfg`; `None` (logged) otherwise. The caller checks it like a kept detector.
async fn load_checkpoint(store: &Store, series_id: i64, cfg: &DetectorConfig) -> Option<KeptDetector> {
    let row = match store.checkpoint(series_id).await {
        Ok(row) => row?,
        Err(error) => {
            warn!(message = "Failed to read a detector checkpoint; replaying.", series = series_id, %error);
            return None;
        }
    };
    let decoded = if row.format == CHECKPOINT_FORMAT {
        checkpoint::decode(&row.state, cfg)
    } else {
        Err(checkpoint::Refused::Format(row.format))
    };
    match decoded {
        Ok(c) => Some(c),
        Err(error) => {
            info!(message = "Detector checkpoint refused; replaying.", series = series_id, %error);
            None
        }
    }
}

/// The first bucket start that may still alert in a run whose window ends at `end`.
fn alert_horizon(spec: &KpiSpec, sched: &SchedulerConfig, end: i64) -> i64 {
    spec.buckets()
        .back(end, 1 + i64::from(sched.alert_horizon_buckets))
}

/// Run the alert lifecycle of the incident stored under series `dims` (`series_id`), open
/// as `open` if it is, over the judged buckets; returns the number of alerts opened.
///
/// The decisions are [`alerting::plan::plan`]'s (pure, from the inputs loaded here once);
/// this stores its writes in order, giving a new alert its id before its messages are
/// rendered (their acknowledge links need it).
async fn alert_on(
    cx: &Context,
    spec: &KpiSpec,
    (series_id, dims): (i64, &str),
    open: Option<AlertRow>,
    judged: &[Judged],
    now: DateTime<Utc>,
) -> anyhow::Result<usize> {
    if judged.is_empty() {
        return Ok(0);
    }
    let store = &cx.store;
    let labels = alerting::alert_labels(spec, dims);
    let targets = targets_for(cx, spec, &labels);
    let silences = load_silences(store, now).await?;
    // No data-missing alert is open here: the run that judged these buckets fetched them and
    // closed it first (`data_missing_alert`), holding the KPI's lease.
    let suppressed_by = alerting::suppression(&labels, &silences, &cx.settings.alerting.maintenance, now);
    let group = alerting::group_key(&labels, &cx.settings.alerting.grouping.by);
    let input = plan::Input {
        spec,
        series_id,
        dims,
        judged,
        open,
        rule: alerting::rule_for(spec, cx.settings.scheduler.recovery_buckets),
    };
    let writes = plan::plan(&input);
    let delivery = plan::Delivery {
        receivers: &cx.receivers,
        targets: &targets,
        suppressed_by: suppressed_by.as_deref(),
        group_key: &group,
        public_url: &cx.settings.http.public_url,
        signer: &cx.signer,
        not_before: now.timestamp() + cx.settings.alerting.grouping.wait.as_secs() as i64,
    };
    let mut alerts_opened = 0;
    // The alert the plan's writes are about: the open one, then each one the plan opens.
    let mut current = input.open.as_ref().map_or(0, |o| o.id);
    for w in &writes {
        let mut row = w.row.clone();
        if w.opens {
            row.id = 0;
        } else if row.id == 0 {
            row.id = current;
        }
        let Some(event) = w.event else {
            current = store.save_alert(&row, None, &[]).await?;
            if w.opens {
                info!(
                    message = "KPI anomaly pending (trigger rule not yet met).",
                    alert = current,
                    series = dims
                );
            }
            continue;
        };
        // A new alert needs an id for its acknowledge link: store it first, then the messages
        // with it (one transaction).
        if row.id == 0 {
            row.id = store.save_alert(&row, None, &[]).await?;
        }
        let id = row.id;
        current = id;
        let notify = w.notifications(&input, id, &delivery);
        store.save_alert(&row, Some(&event.name()), &notify).await?;
        let (t, v, msg_dims) = match judged.get(w.bucket) {
            Some(j) => (j.t, &j.verdict, j.dims.as_str()),
            None => continue,
        };
        match event {
            lifecycle::Event::Firing => {
                alerts_opened += 1;
                warn!(
                    message = "KPI anomaly alert firing.",
                    alert = id,
                    series = msg_dims,
                    bucket = %ts(t)?,
                    value = v.reading.value,
                    expected = v.reading.band.expected,
                    lower = v.reading.band.lower,
                    upper = v.reading.band.upper,
                    volume = v.volume,
                    suppressed_by = suppressed_by.as_deref().unwrap_or("-"),
                );
                if targets.is_empty() {
                    warn!(message = "Alert has no recipients; set recipients in the model or email.default_recipients.");
                }
            }
            lifecycle::Event::Resolved => {
                info!(message = "KPI anomaly alert resolved.", alert = id, series = msg_dims, bucket = %ts(t)?);
            }
            _ => info!(message = "KPI anomaly alert re-notified.", alert = id, event = %event.name()),
        }
    }
    Ok(alerts_opened)
}

/// `source`'s warnings as one line for a run's status, if there are any.
pub fn warnings_text(source: &str, warnings: &[String]) -> Option<String> {
    (!warnings.is_empty()).then(|| format!("source {source:?} warned: {}", warnings.join("; ")))
}

/// What one trial run of a KPI's query returned (`kpiwatch check`, registration).
#[derive(Debug, Clone)]
pub struct QueryTrial {
    /// The rows, as the source returned them.
    pub rows: Vec<RawRow>,
    /// Series (dimension combinations) they make.
    pub series: usize,
    /// The source's warnings.
    pub warnings: Vec<String>,
}

/// Run a KPI's query once over its last `buckets` closed buckets before `now` (registration
/// and `check`): the rows and the number of series they make.
pub async fn test_query(
    sources: &SourceRegistry,
    spec: &KpiSpec,
    now: DateTime<Utc>,
    buckets: i64,
) -> Result<(Vec<RawRow>, usize), sources::Error> {
    try_query(sources, spec, now, buckets)
        .await
        .map(|t| (t.rows, t.series))
}

/// [`test_query`], with the source's warnings.
pub async fn try_query(
    sources: &SourceRegistry,
    spec: &KpiSpec,
    now: DateTime<Utc>,
    buckets: i64,
) -> Result<QueryTrial, sources::Error> {
    let grid = spec.buckets();
    let end = grid.floor(now.timestamp());
    let start = grid.back(end, buckets);
    let window = Window {
        start: DateTime::from_timestamp(start, 0).unwrap_or(now),
        end: DateTime::from_timestamp(end, 0).unwrap_or(now),
    };
    let fetched = sources
        .get(&spec.source)?
        .fetch(&spec.query, spec.kind, spec.buckets(), window)
        .await?;
    let series = bucketize(&fetched.rows, spec, start, end)?.len();
    Ok(QueryTrial {
        rows: fetched.rows,
        series,
        warnings: fetched.warnings,
    })
}

/// A KPI's history in `[from, to)` queried fresh from its source (a draft, or a KPI that
/// never ran), bucketed per series and zero-filled for counts.
pub async fn fresh_history(
    sources: &SourceRegistry,
    spec: &KpiSpec,
    from: i64,
    to: i64,
) -> Result<BTreeMap<String, Vec<ObservationRow>>, sources::Error> {
    let source = sources.get(&spec.source)?;
    let window = Window {
        start: DateTime::from_timestamp(from, 0).unwrap_or_default(),
        end: DateTime::from_timestamp(to, 0).unwrap_or_default(),
    };
    let fetched = source
        .fetch(&spec.query, spec.kind, spec.buckets(), window)
        .await?;
    if let Some(warning) = warnings_text(&spec.source, &fetched.warnings) {
        warn!(message = "KPI query returned warnings.", kpi = %spec.id, %warning);
    }
    let mut series = bucketize(&fetched.rows, spec, from, to)?;
    if spec.kind == Kind::Count {
        if series.is_empty() {
            series.insert("{}".to_owned(), BTreeMap::new());
        }
        for buckets in series.values_mut() {
            for t in spec.buckets().starts(from, to) {
                buckets.entry(t).or_insert(ObservationRow {
                    ts: t,
                    value: 0.0,
                    denominator: None,
                });
            }
        }
    }
    Ok(series
        .into_iter()
        .map(|(dims, buckets)| (dims, buckets.into_values().collect()))
        .collect())
}

/// The feedback recorded on a series' buckets in `[from, to)`, as the detector replays it.
async fn series_feedback(
    store: &Store,
    series_id: i64,
    from: i64,
    to: i64,
) -> crate::store::Result<HashMap<i64, Feedback>> {
    Ok(store
        .feedback(series_id, from, to)
        .await?
        .into_iter()
        .filter_map(|f| match f.kind.as_str() {
            "not_anomaly" => Some((f.ts, Feedback::NotAnomaly)),
            "new_normal" => Some((f.ts, Feedback::NewNormal)),
            _ => None,
        })
        .collect())
}

/// Where a backtest's observations come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The store's: a KPI the service runs (the API).
    Stored,
    /// The store's, else fresh from the source when the store has none (the CLI, which may
    /// be pointed at a KPI that never ran).
    StoredElseFresh,
    /// Fresh from the source: a draft, with no series, feedback or alerts of its own.
    Fresh,
}

/// What a backtest asks for.
#[derive(Debug, Clone, Copy)]
pub struct BacktestRequest<'a> {
    /// The KPI (or draft).
    pub spec: &'a KpiSpec,
    /// Weeks reported on.
    pub weeks: u32,
    /// End of the period: a bucket start.
    pub to: i64,
    /// The service's settings (`Replay::of(&settings.scheduler)`).
    pub replay: crate::backtest::Replay,
    /// Where the observations come from.
    pub recorded: Recorded,
    /// The config's `[[calendar]]` and its base directory, for a command run beside the
    /// service whose config may be newer than the store's copy; `None`: the store's events.
    pub calendar: Option<(&'a [crate::config::CalendarEntry], &'a std::path::Path)>,
}

/// Load what a backtest replays ([`crate::backtest::run`], the one entry point for the CLI,
/// the API, draft backtests and tuning): the observations of the reported weeks and the
/// configured warm-up before them, the feedback recorded on each stored series (replayed as
/// `run_kpi` replays it) and the excluded periods.
///
/// A failing source is returned as the [`sources::Error`] (downcast it to tell a broken
/// query from a failing store).
pub async fn backtest_history(
    store: &Store,
    sources: &SourceRegistry,
    req: BacktestRequest<'_>,
) -> anyhow::Result<crate::backtest::History> {
    let spec = req.spec;
    let to = req.to;
    let from = req.replay.from(req.weeks, to);
    let mut out = crate::backtest::History::new(BTreeMap::new(), to, req.replay);
    if req.recorded != Recorded::Fresh {
        for series in store.series_of(spec.id.as_str()).await? {
            let rows = store.observations(series.id, from, to).await?;
            if rows.is_empty() {
                continue;
            }
            let feedback = series_feedback(store, series.id, from, to).await?;
            if !feedback.is_empty() {
                out.feedback.insert(series.dims.clone(), feedback);
            }
            out.series.insert(series.dims, rows);
        }
    }
    if req.recorded == Recorded::Fresh || (req.recorded == Recorded::StoredElseFresh && out.series.is_empty())
    {
        out.series = fresh_history(sources, spec, from, to).await?;
    }
    out.excluded = match req.calendar {
        Some((entries, base)) => {
            crate::calendar::exclusions_with_config(store, entries, base, spec, (from, to)).await?
        }
        None => crate::calendar::exclusions(store, spec, from, to).await?,
    };
    Ok(out)
}

/// Active silences at `now`, parsed.
async fn load_silences(store: &Store, now: DateTime<Utc>) -> anyhow::Result<Vec<alerting::silence::Silence>> {
    Ok(store
        .silences_shared(now.timestamp())
        .await?
        .iter()
        .filter_map(|row| {
            let matchers = serde_json::from_str(&row.matchers).ok()?;
            Some(alerting::silence::Silence {
                id: row.id,
                matchers,
                starts_at: row.starts_at,
                ends_at: row.ends_at,
            })
        })
        .collect())
}

/// Group rows into series (the total `{}` and its slices, see [`crate::slices`]) and buckets
/// (floored to the interval), for a KPI with no stored series yet.
pub fn bucketize(
    rows: &[RawRow],
    spec: &KpiSpec,
    start: i64,
    end: i64,
) -> Result<BTreeMap<String, BTreeMap<i64, ObservationRow>>, sources::Error> {
    crate::slices::bucketize(rows, spec, start, end, &std::collections::BTreeSet::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    fn spec(kind: &str, interval: &str) -> KpiSpec {
        KpiSpec::parse(
            "k",
            &format!("source = \"s\"\nkind = \"{kind}\"\ninterval = \"{interval}\"\ndelay = \"30s\""),
            "SELECT 1 WHERE :start < :end",
            Path::new("m"),
        )
        .expect("valid")
    }

    fn row(secs: i64, value: f64, den: Option<f64>, dims: &[(&str, &str)]) -> RawRow {
        RawRow {
            ts: DateTime::from_timestamp(secs, 0).expect("valid"),
            value: Some(value),
            denominator: den,
            dims: dims
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn sched() -> SchedulerConfig {
        crate::config::load_from(None, &[]).expect("defaults").scheduler
    }

    #[test]
    fn finer_rows_roll_up_into_buckets_per_series() {
        let s = spec("ratio", "5m");
        let rows = [
            row(0, 9.0, Some(10.0), &[("provider", "a")]),
            row(60, 1.0, Some(10.0), &[("provider", "a")]),
            row(300, 5.0, Some(5.0), &[("provider", "b")]),
            row(900, 5.0, Some(5.0), &[("provider", "b")]), // outside [0, 600)
        ];
        let out = bucketize(&rows, &s, 0, 600).expect("ok");
        let a = &out[r#"{"provider":"a"}"#][&0];
        assert_eq!((a.value, a.denominator), (10.0, Some(20.0)));
        assert_eq!(out[r#"{"provider":"b"}"#].len(), 1);
    }

    #[test]
    fn the_window_covers_closed_buckets_only_and_rereads_the_overlap() {
        let s = spec("count", "5m");
        let sched = sched();
        // 10:07:10 with a 30 s delay: buckets up to 10:05 are closed; 10:05-10:10 is not.
        let now = DateTime::parse_from_rfc3339("2026-03-02T10:07:10Z")
            .expect("valid")
            .with_timezone(&Utc);
        let end = now.timestamp() - 130; // 10:05:00
        let (start, e) = due_window(&s, &sched, None, now).expect("due");
        assert_eq!(e, end);
        assert_eq!(e - start, 28 * 86_400);
        assert_eq!(due_window(&s, &sched, Some(end), now), None, "nothing new");
        let (start, _) = due_window(&s, &sched, Some(end - 300), now).expect("one new bucket");
        assert_eq!(start, end - 300 - 2 * 300, "two buckets of overlap");
    }

    #[test]
    fn a_daily_window_in_seoul_runs_from_local_midnight_and_backfills_whole_local_days() {
        let s = KpiSpec::parse(
            "k",
            "source = \"s\"\nkind = \"count\"\ninterval = \"1d\"\ndelay = \"15m\"\ntimezone = \"Asia/Seoul\"",
            "SELECT 1 WHERE :start < :end",
            Path::new("m"),
        )
        .expect("valid");
        let utc = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .expect("valid")
                .with_timezone(&Utc)
        };
        // 00:20 in Seoul on 11 June: 10 June (15:00 UTC to 15:00 UTC) has closed.
        let now = utc("2026-06-10T15:20:00Z");
        let (start, end) = due_window(&s, &sched(), None, now).expect("due");
        assert_eq!(end, utc("2026-06-10T15:00:00Z").timestamp());
        assert_eq!(end - start, 28 * 86_400, "28 local days of backfill");
        assert_eq!(due_window(&s, &sched(), Some(end), now), None);
        // Not yet due at 00:10 Seoul time (the delay), due again the next local midnight.
        assert_eq!(
            due_window(&s, &sched(), Some(end), utc("2026-06-11T15:10:00Z")),
            None
        );
        let (start, next) = due_window(&s, &sched(), Some(end), utc("2026-06-11T15:16:00Z")).expect("due");
        assert_eq!(next, end + 86_400);
        assert_eq!(start, end - 2 * 86_400, "two days of overlap");
    }

    #[test]
    fn slices_take_their_own_min_volume_and_the_total_keeps_the_kpis() {
        let s = KpiSpec::parse(
            "k",
            "source = \"s\"\nkind = \"ratio\"\ninterval = \"5m\"\nmin_volume = 5\nslice_min_volume = 40",
            "SELECT 1 WHERE :start < :end",
            Path::new("m"),
        )
        .expect("valid");
        assert_eq!(series_detector_config(&s, "{}").min_volume, 5.0);
        assert_eq!(series_detector_config(&s, r#"{"country":"LU"}"#).min_volume, 40.0);
        let plain = spec("ratio", "5m");
        assert_eq!(
            series_detector_config(&plain, r#"{"country":"LU"}"#).min_volume,
            plain.min_volume
        );
    }

    #[test]
    fn the_replay_start_lags_history_by_less_than_the_slack_and_moves_once_per_slack() {
        let (history, slack) = (Duration::from_secs(28 * 86_400), Duration::from_secs(7 * 86_400));
        let anchor = replay_anchor("orders", "{}", 300, slack);
        assert!((0..7 * 86_400).contains(&anchor) && anchor % 300 == 0, "{anchor}");
        let t0 = 1_774_872_000; // 2026-03-30T12:00:00Z
        let mut moves = Vec::new();
        let mut last = replay_start(history, slack, anchor, t0);
        for end in (t0..t0 + 21 * 86_400).step_by(300) {
            let from = replay_start(history, slack, anchor, end);
            let back = end - history.as_secs() as i64;
            assert!(
                from <= back && back - from < slack.as_secs() as i64,
                "{end}: {from}"
            );
            assert_eq!((from - anchor).rem_euclid(7 * 86_400), 0);
            if from != last {
                moves.push(end);
                last = from;
            }
        }
        assert_eq!(moves.len(), 3, "once a week over three weeks: {moves:?}");
        assert!(moves.windows(2).all(|w| w[1] - w[0] == 7 * 86_400), "{moves:?}");
        // No slack: the start moves on with every run.
        let none = Duration::ZERO;
        assert_eq!(replay_start(history, none, 0, t0 + 300), t0 + 300 - 28 * 86_400);
    }

    #[test]
    fn the_replay_anchors_of_many_series_are_spread_over_the_slack() {
        let slack = Duration::from_secs(86_400);
        // 2,000 KPIs with a total and two slices each, 5-minute buckets: each hour of the
        // day's anchors moves about 250 series' replay start; none may take a crowd.
        let mut per_hour = [0usize; 24];
        let mut distinct = std::collections::BTreeSet::new();
        for k in 0..2_000 {
            for dims in ["{}", r#"{"country":"DE"}"#, r#"{"country":"FR"}"#] {
                let a = replay_anchor(&format!("kpi_{k}"), dims, 300, slack);
                assert!((0..86_400).contains(&a) && a % 300 == 0, "{a}");
                per_hour[(a / 3600) as usize] += 1;
                distinct.insert(a);
            }
        }
        assert!(per_hour.iter().all(|&n| (170..=330).contains(&n)), "{per_hour:?}");
        assert!(distinct.len() > 250, "{} of 288 slots used", distinct.len());
        // Stable: the same series keeps its anchor (checkpoints store the start it gives).
        assert_eq!(
            replay_anchor("orders", "{}", 300, slack),
            replay_anchor("orders", "{}", 300, slack)
        );
        // Daily buckets anchor on whole days of a weekly slack.
        let week = Duration::from_secs(7 * 86_400);
        assert!((0..100).all(|k| replay_anchor(&format!("d{k}"), "{}", 86_400, week) % 86_400 == 0));
    }

    #[test]
    fn local_slots_follow_the_timezone() {
        // 2026-03-29 is the EU DST switch: 10:00 UTC is 12:00 in Berlin after it, 11:00 before.
        let before = 1_774_692_000; // 2026-03-28T10:00:00Z
        let after = before + 86_400;
        let berlin = chrono_tz::Europe::Berlin;
        assert_eq!(local_secs(berlin, before) - before, 3600);
        assert_eq!(local_secs(berlin, after) - after, 7200);
    }
}
