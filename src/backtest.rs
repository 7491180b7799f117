//! Backtests: "how many alerts would this setting have fired over the last N weeks, and
//! which?" — answered before a setting is saved.
//!
//! [`run`] replays a series' history through the same detector and the same incident
//! lifecycle the service uses, at the sensitivity (and direction, minimum volume) asked for,
//! and groups flagged buckets into the incidents that would have alerted. Pure: the caller
//! brings the history (stored observations, or a fresh query for a draft KPI).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::alerting;
use crate::alerting::lifecycle::{self, Step};
use crate::baseline::{Bucket, OnlineDetector};
use crate::calendar::Exclusions;
use crate::kpi::{Direction, KpiSpec, Sensitivity};
use crate::pipeline::{bucket_verdict, detector_config, local_secs, since_utc};
use crate::store::ObservationRow;

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
    /// Observed value.
    pub value: f64,
    /// Expected value.
    pub expected: f64,
    /// Band.
    pub lower: f64,
    /// Band.
    pub upper: f64,
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

/// Replay `history` (per series, in time order) at `opts` and report the last `weeks`
/// weeks before `to`.
pub fn run(
    spec: &KpiSpec,
    history: &BTreeMap<String, Vec<ObservationRow>>,
    opts: BacktestOptions,
    to: i64,
    recovery_buckets: u32,
) -> Result<BacktestReport, crate::baseline::Error> {
    run_excluding(spec, history, opts, to, recovery_buckets, &Exclusions::default())
}

/// [`run`], with the buckets inside `excluded` (events, holidays) neither learned nor
/// alerted, as the service treats them.
pub fn run_excluding(
    spec: &KpiSpec,
    history: &BTreeMap<String, Vec<ObservationRow>>,
    opts: BacktestOptions,
    to: i64,
    recovery_buckets: u32,
    excluded: &Exclusions,
) -> Result<BacktestReport, crate::baseline::Error> {
    let week = 7 * 86_400;
    let from = to - i64::from(opts.weeks.max(1)) * week;
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
    let rule = alerting::rule_for(&tried, recovery_buckets);
    let grid = spec.buckets();
    let at = |ts: i64| DateTime::<Utc>::from_timestamp(ts, 0).unwrap_or_default();
    let mut flags = Vec::new();
    let mut alerts = Vec::new();
    for (series, rows) in history {
        let mut detector = OnlineDetector::new(cfg)?;
        let mut open: Option<lifecycle::Incident> = None;
        let mut current: Option<WouldAlert> = None;
        for o in rows.iter().filter(|o| o.ts < to) {
            let bucket_end = grid.end(o.ts);
            let local = local_secs(spec.timezone, o.ts);
            let v = detector.step(&Bucket {
                ts: local,
                value: o.value,
                denominator: o.denominator,
                excluded: excluded.covers(o.ts, bucket_end),
            });
            if o.ts < from {
                continue;
            }
            if v.anomaly {
                flags.push(Flag {
                    series: series.clone(),
                    ts: at(o.ts),
                    value: v.value,
                    expected: v.expected,
                    lower: v.lower,
                    upper: v.upper,
                    score: v.score,
                });
            }
            let verdict = bucket_verdict(o.ts, &v, since_utc(&v, local, o.ts));
            let severity = alerting::severity_for(spec, &verdict);
            match lifecycle::step(open.as_ref(), &verdict, &rule, severity, bucket_end) {
                Step::Nothing => {}
                Step::Open(inc, event) | Step::Update(inc, event) => {
                    if event == Some(lifecycle::Event::Firing) {
                        current = Some(WouldAlert {
                            series: series.clone(),
                            started: at(inc.started_ts),
                            fired: at(bucket_end),
                            resolved: None,
                            buckets: 0,
                        });
                    }
                    if v.anomaly {
                        if let Some(c) = current.as_mut() {
                            c.buckets += 1;
                        }
                    }
                    open = Some(inc);
                }
                Step::Close { resolved, .. } => {
                    if let Some(mut c) = current.take() {
                        if resolved {
                            c.resolved = Some(at(o.ts));
                        }
                        alerts.push(c);
                    }
                    open = None;
                }
            }
        }
        alerts.extend(current.take());
    }
    alerts.sort_by_key(|a| a.started);
    flags.sort_by_key(|f| f.ts);
    let weeks = opts.weeks.max(1) as usize;
    let mut alerts_per_week = vec![0; weeks];
    for a in &alerts {
        let i = ((a.started.timestamp() - from) / week).clamp(0, weeks as i64 - 1) as usize;
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

    /// Six weeks of hourly counts with a daily cycle, two outages and a milder dip.
    fn history() -> BTreeMap<String, Vec<ObservationRow>> {
        let t0 = 1_772_409_600; // a Monday
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

    #[test]
    fn outages_in_the_window_would_have_alerted_and_higher_sensitivity_never_alerts_less() {
        let h = history();
        let to = 1_772_409_600 + 6 * 7 * 86_400;
        let opts = |s: Sensitivity| BacktestOptions {
            weeks: 4,
            sensitivity: s,
            direction: None,
            min_volume: None,
        };
        let medium = run(&spec(), &h, opts(Sensitivity::MEDIUM), to, 3).expect("runs");
        assert_eq!(medium.alerts_per_week.len(), 4);
        assert!(medium.alerts.len() >= 2, "both outages: {:?}", medium.alerts);
        let zero_hours: Vec<i64> = medium
            .flags
            .iter()
            .filter(|f| f.value == 0.0)
            .map(|f| f.ts.timestamp())
            .collect();
        assert_eq!(zero_hours.len(), 2, "{:?}", medium.flags);
        let low = run(&spec(), &h, opts(Sensitivity::LOW), to, 3).expect("runs");
        let high = run(&spec(), &h, opts(Sensitivity::HIGH), to, 3).expect("runs");
        assert!(low.flags.len() <= medium.flags.len() && medium.flags.len() <= high.flags.len());
        // Only the last 4 weeks are reported.
        assert!(medium.flags.iter().all(|f| f.ts >= medium.from));
    }

    #[test]
    fn buckets_inside_an_event_neither_flag_nor_alert() {
        let h = history();
        let t0 = 1_772_409_600;
        let to = t0 + 6 * 7 * 86_400;
        let opts = BacktestOptions {
            weeks: 4,
            sensitivity: Sensitivity::MEDIUM,
            direction: None,
            min_volume: None,
        };
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
        let plain = run(&spec(), &h, opts, to, 3).expect("runs");
        let honoured = run_excluding(&spec(), &h, opts, to, 3, &excluded).expect("runs");
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
}
