//! Backtests: "how many alerts would this setting have fired over the last N weeks, and
//! which?" — answered before a setting is saved.
//!
//! [`run`] is the one entry point: it replays a KPI's [`History`] (its observations per
//! series, the feedback people recorded on them, the excluded periods, and the service's own
//! warm-up and recovery settings, [`Replay`]) through the same detector
//! (`step_with_feedback`, as `pipeline` steps it) and the same alert planning
//! ([`alerting::plan`]) the service uses, at the sensitivity (and direction, minimum volume)
//! asked for, and reports the flagged buckets and the incidents that would have fired. Pure:
//! `pipeline::backtest_history` loads the history (stored, or a fresh query for a draft KPI).
//!
//! What it does not replay: a run's rolling replay start (the service replays
//! `scheduler.history` before each run; a backtest one detector from the start of its
//! history), the alert horizon, coarse windows of thin slices, and grouped incidents (each
//! series is planned on its own).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};

use crate::alerting;
use crate::alerting::lifecycle::Event;
use crate::alerting::plan::{self, Judged};
use crate::baseline::{Bucket, Feedback, OnlineDetector};
use crate::calendar::Exclusions;
use crate::config::SchedulerConfig;
use crate::kpi::{Buckets, Direction, KpiSpec, Sensitivity};
use crate::pipeline::{bucket_verdict, detector_config, local_secs, since_utc};
use crate::store::ObservationRow;

const WEEK: i64 = 7 * 86_400;

/// The service's settings a backtest replays with, so it agrees with what the service does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replay {
    /// History before the reported weeks that warms the detector up (`scheduler.history`),
    /// in seconds.
    pub warm_up_secs: i64,
    /// In-band buckets that resolve an incident (`scheduler.recovery_buckets`), unless the
    /// model sets `recover_after`.
    pub recovery_buckets: u32,
}

impl Replay {
    /// The configured ones.
    pub fn of(sched: &SchedulerConfig) -> Self {
        Replay {
            warm_up_secs: i64::try_from(sched.history.as_secs()).unwrap_or(i64::MAX / 4),
            recovery_buckets: sched.recovery_buckets,
        }
    }

    /// The start of the history a backtest of the `weeks` weeks before `to` replays: those
    /// weeks and the warm-up before them.
    pub fn from(&self, weeks: u32, to: i64) -> i64 {
        to - i64::from(weeks.max(1)) * WEEK - self.warm_up_secs
    }
}

/// What a backtest replays: a KPI's history up to `to` and what shaped the service's verdicts
/// on it.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    /// Observations per series (dimension values, JSON), in time order.
    pub series: BTreeMap<String, Vec<ObservationRow>>,
    /// Feedback recorded per series (same keys), by bucket start: replayed into the detector
    /// as the service replays it.
    pub feedback: BTreeMap<String, HashMap<i64, Feedback>>,
    /// Events and holidays: their buckets are neither learned nor alerted.
    pub excluded: Exclusions,
    /// End of the replay (a bucket start); the reported weeks end here.
    pub to: i64,
    /// The service's settings.
    pub replay: Replay,
}

impl History {
    /// `series` up to `to`, with no feedback and nothing excluded.
    pub fn new(series: BTreeMap<String, Vec<ObservationRow>>, to: i64, replay: Replay) -> Self {
        History {
            series,
            feedback: BTreeMap::new(),
            excluded: Exclusions::default(),
            to,
            replay,
        }
    }

    /// The same history with other observations (an injected incident), keeping the feedback,
    /// exclusions and settings.
    pub fn with_series(&self, series: BTreeMap<String, Vec<ObservationRow>>) -> Self {
        History {
            series,
            feedback: self.feedback.clone(),
            excluded: self.excluded.clone(),
            to: self.to,
            replay: self.replay,
        }
    }
}

/// What to try.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BacktestOptions {
    /// Weeks to report on (the history before them warms the detector up).
    pub weeks: u32,
    /// Sensitivity to try.
    pub sensitivity: Sensitivity,
    /// Direction to try (default: the KPI's).
    pub direction: Option<Direction>,
    /// Minimum volume to try (default: the KPI's).
    pub min_volume: Option<f64>,
}

/// One bucket that would have been flagged.
#[derive(Debug, Clone, PartialEq)]
pub struct Flag {
    /// Series (dimension values, JSON).
    pub series: String,
    /// Bucket start.
    pub ts: DateTime<Utc>,
    /// Observed value and its band.
    pub reading: crate::reading::Reading,
    /// Score.
    pub score: f64,
}

/// One incident that would have alerted.
#[derive(Debug, Clone, PartialEq)]
pub struct WouldAlert {
    /// Series (dimension values, JSON).
    pub series: String,
    /// First anomalous bucket.
    pub started: DateTime<Utc>,
    /// End of the bucket at which it would have fired (the trigger rule met).
    pub fired: DateTime<Utc>,
    /// Bucket at which it would have resolved (`None`: still open at the end).
    pub resolved: Option<DateTime<Utc>>,
    /// Flagged buckets in it.
    pub buckets: usize,
}

/// The answer.
#[derive(Debug, Clone, PartialEq)]
pub struct BacktestReport {
    /// Start of the reported period.
    pub from: DateTime<Utc>,
    /// End of the reported period.
    pub to: DateTime<Utc>,
    /// Sensitivity tried.
    pub sensitivity: f64,
    /// Flagged buckets.
    pub flags: Vec<Flag>,
    /// Incidents that would have alerted (after the KPI's trigger rule).
    pub alerts: Vec<WouldAlert>,
    /// Alerts per week, oldest week first.
    pub alerts_per_week: Vec<usize>,
}

impl BacktestReport {
    /// Mean alerts per week.
    pub fn mean_alerts_per_week(&self) -> f64 {
        if self.alerts_per_week.is_empty() {
            0.0
        } else {
            self.alerts.len() as f64 / self.alerts_per_week.len() as f64
        }
    }
}

/// Replay `history` at `opts` and report the last `opts.weeks` weeks before `history.to`.
pub fn run(
    spec: &KpiSpec,
    history: &History,
    opts: BacktestOptions,
) -> Result<BacktestReport, crate::baseline::Error> {
    let to = history.to;
    let from = to - i64::from(opts.weeks.max(1)) * WEEK;
    let mut cfg = detector_config(spec);
    cfg.sensitivity = opts.sensitivity;
    if let Some(d) = opts.direction {
        cfg.direction = d;
    }
    if let Some(v) = opts.min_volume {
        cfg.min_volume = v;
    }
    let mut tried = spec.clone();
    tried.direction = cfg.direction;
    let rule = alerting::rule_for(&tried, history.replay.recovery_buckets);
    let grid = spec.buckets();
    let no_feedback = HashMap::new();
    let mut flags = Vec::new();
    let mut alerts = Vec::new();
    for (series, rows) in &history.series {
        let feedback = history.feedback.get(series).unwrap_or(&no_feedback);
        let mut detector = OnlineDetector::new(cfg)?;
        let mut judged = Vec::new();
        for o in rows.iter().filter(|o| o.ts < to) {
            let local = local_secs(spec.timezone, o.ts);
            let bucket = Bucket {
                ts: local,
                value: o.value,
                denominator: o.denominator,
                excluded: history.excluded.covers(o.ts, grid.end(o.ts)),
            };
            let v = detector.step_with_feedback(&bucket, feedback.get(&o.ts).copied().unwrap_or_default());
            if o.ts < from {
                continue;
            }
            if v.anomaly {
                flags.push(Flag {
                    series: series.clone(),
                    ts: at(o.ts),
                    reading: v.reading,
                    score: v.score,
                });
            }
            let verdict = bucket_verdict(o.ts, &v, since_utc(&v, local, o.ts));
            judged.push(Judged::alone(o.ts, verdict, series));
        }
        // The service's planning, from no open incident: the would-be alerts are its firings.
        let input = plan::Input {
            spec: &tried,
            series_id: 0,
            dims: series,
            judged: &judged,
            open: None,
            rule,
        };
        alerts.extend(would_alerts(series, &judged, &plan::plan(&input), grid));
    }
    alerts.sort_by_key(|a| a.started);
    flags.sort_by_key(|f| f.ts);
    let weeks = opts.weeks.max(1) as usize;
    let mut alerts_per_week = vec![0; weeks];
    for a in &alerts {
        let i = ((a.started.timestamp() - from) / WEEK).clamp(0, weeks as i64 - 1) as usize;
        alerts_per_week[i] += 1;
    }
    Ok(BacktestReport {
        from: at(from),
        to: at(to),
        sensitivity: opts.sensitivity.get(),
        flags,
        alerts,
        alerts_per_week,
    })
}

fn at(ts: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(ts, 0).unwrap_or_default()
}

/// The incidents of one series that fired, from the plan's writes over its `judged` buckets.
fn would_alerts(series: &str, judged: &[Judged], writes: &[plan::Write], grid: Buckets) -> Vec<WouldAlert> {
    let mut out = Vec::new();
    let mut current: Option<WouldAlert> = None;
    for w in writes {
        let Some(j) = judged.get(w.bucket) else { continue };
        if w.event == Some(Event::Firing) {
            current = Some(WouldAlert {
                series: series.to_owned(),
                started: at(w.row.started_ts),
                fired: at(grid.end(j.t)),
                resolved: None,
                buckets: 0,
            });
        }
        match w.row.state.as_str() {
            "resolved" | "cancelled" => {
                if let Some(mut c) = current.take() {
                    if w.row.state == "resolved" {
                        c.resolved = Some(at(j.t));
                    }
                    out.push(c);
                }
            }
            _ => {
                if let Some(c) = current.as_mut().filter(|_| j.verdict.anomaly) {
                    c.buckets += 1;
                }
            }
        }
    }
    out.extend(current);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> KpiSpec {
        KpiSpec::parse(
            "orders",
            "source = \"s\"\nkind = \"count\"\ninterval = \"1h\"\ndirection = \"down\"",
            "SELECT 1 WHERE :start < :end",
            std::path::Path::new("m"),
        )
        .expect("valid")
    }

    const T0: i64 = 1_772_409_600; // a Monday
    const TO: i64 = T0 + 6 * 7 * 86_400;

    fn replay(recovery_buckets: u32) -> Replay {
        Replay {
            warm_up_secs: 28 * 86_400,
            recovery_buckets,
        }
    }

    fn opts(sensitivity: Sensitivity) -> BacktestOptions {
        BacktestOptions {
            weeks: 4,
            sensitivity,
            direction: None,
            min_volume: None,
        }
    }

    /// Six weeks of hourly counts with a daily cycle, two outages and a milder dip.
    fn series() -> BTreeMap<String, Vec<ObservationRow>> {
        let t0 = T0;
        let mut rows = Vec::new();
        for h in 0..(6 * 7 * 24) {
            let ts = t0 + h * 3600;
            let hour = (h % 24) as f64;
            let mut value = (200.0 + 80.0 * ((hour - 14.0) / 24.0 * std::f64::consts::TAU).cos()).round();
            // Deterministic small noise.
            value += ((h * 7919) % 13) as f64 - 6.0;
            let week = h / (7 * 24);
            if (week == 3 && h % (7 * 24) == 50) || (week == 5 && h % (7 * 24) == 100) {
                value = 0.0;
            }
            if week == 4 && (h % (7 * 24) >= 60 && h % (7 * 24) < 64) {
                value *= 0.85;
            }
            rows.push(ObservationRow {
                ts,
                value,
                denominator: None,
            });
        }
        BTreeMap::from([("{}".to_owned(), rows)])
    }

    /// The history with the service's default settings.
    fn history() -> History {
        History::new(series(), TO, replay(3))
    }

    #[test]
    fn outages_in_the_window_would_have_alerted_and_higher_sensitivity_never_alerts_less() {
        let h = history();
        let medium = run(&spec(), &h, opts(Sensitivity::MEDIUM)).expect("runs");
        assert_eq!(medium.alerts_per_week.len(), 4);
        assert!(medium.alerts.len() >= 2, "both outages: {:?}", medium.alerts);
        let zero_hours: Vec<i64> = medium
            .flags
            .iter()
            .filter(|f| f.reading.value == 0.0)
            .map(|f| f.ts.timestamp())
            .collect();
        assert_eq!(zero_hours.len(), 2, "{:?}", medium.flags);
        let low = run(&spec(), &h, opts(Sensitivity::LOW)).expect("runs");
        let high = run(&spec(), &h, opts(Sensitivity::HIGH)).expect("runs");
        assert!(low.flags.len() <= medium.flags.len() && medium.flags.len() <= high.flags.len());
        // Only the last 4 weeks are reported.
        assert!(medium.flags.iter().all(|f| f.ts >= medium.from));
    }

    #[test]
    fn buckets_inside_an_event_neither_flag_nor_alert() {
        let (t0, to) = (T0, TO);
        let opts = opts(Sensitivity::MEDIUM);
        // An event over the first outage (week 3, hour 50).
        let outage = t0 + (3 * 7 * 24 + 50) * 3600;
        let event = crate::calendar::Event {
            name: "planned migration".to_owned(),
            start: DateTime::<Utc>::from_timestamp(outage - 3600, 0)
                .expect("t")
                .naive_utc(),
            end: DateTime::<Utc>::from_timestamp(outage + 7200, 0)
                .expect("t")
                .naive_utc(),
            timezone: chrono_tz::UTC,
            yearly: false,
            margin_before: 0,
            margin_after: 0,
            kpis: vec![],
            labels: BTreeMap::new(),
        };
        let excluded = Exclusions::for_kpi([&event], &spec(), 0, to);
        let plain = run(&spec(), &history(), opts).expect("runs");
        let honoured = run(
            &spec(),
            &History {
                excluded,
                ..history()
            },
            opts,
        )
        .expect("runs");
        let at_outage = |r: &BacktestReport| r.flags.iter().any(|f| f.ts.timestamp() == outage);
        assert!(at_outage(&plain), "{:?}", plain.flags);
        assert!(!at_outage(&honoured), "{:?}", honoured.flags);
        assert_eq!(
            honoured.alerts.len() + 1,
            plain.alerts.len(),
            "{:?}",
            honoured.alerts
        );
    }

    /// The would-be alert that starts at `ts`, if any.
    fn alert_at(r: &BacktestReport, ts: i64) -> Option<&WouldAlert> {
        r.alerts.iter().find(|a| a.started.timestamp() == ts)
    }

    #[test]
    fn a_bucket_marked_not_an_anomaly_no_longer_alerts() {
        let outage = T0 + (3 * 7 * 24 + 50) * 3600;
        let other = T0 + (5 * 7 * 24 + 100) * 3600;
        let plain = run(&spec(), &history(), opts(Sensitivity::MEDIUM)).expect("runs");
        assert!(alert_at(&plain, outage).is_some(), "{:?}", plain.alerts);
        let mut marked = history();
        marked
            .feedback
            .insert("{}".to_owned(), HashMap::from([(outage, Feedback::NotAnomaly)]));
        let r = run(&spec(), &marked, opts(Sensitivity::MEDIUM)).expect("runs");
        assert!(alert_at(&r, outage).is_none(), "{:?}", r.alerts);
        assert!(
            r.flags.iter().all(|f| f.ts.timestamp() != outage),
            "{:?}",
            r.flags
        );
        assert!(
            alert_at(&r, other).is_some(),
            "the other outage still alerts: {:?}",
            r.alerts
        );
        // Feedback on another series changes nothing here.
        let mut elsewhere = history();
        elsewhere.feedback.insert(
            r#"{"country":"LU"}"#.to_owned(),
            HashMap::from([(outage, Feedback::NotAnomaly)]),
        );
        assert_eq!(
            run(&spec(), &elsewhere, opts(Sensitivity::MEDIUM)).expect("runs"),
            plain
        );
    }

    #[test]
    fn the_configured_recovery_decides_when_a_would_be_alert_resolves() {
        let outage = T0 + (3 * 7 * 24 + 50) * 3600;
        let resolved = |recovery: u32| {
            let h = History {
                replay: replay(recovery),
                ..history()
            };
            let r = run(&spec(), &h, opts(Sensitivity::MEDIUM)).expect("runs");
            let a = alert_at(&r, outage).cloned().expect("the outage alerts");
            a.resolved.expect("resolved").timestamp()
        };
        let (quick, slow) = (resolved(1), resolved(6));
        assert!(quick > outage, "{quick}");
        assert_eq!(slow - quick, 5 * 3600, "five more in-band hours");
    }
}
