//! Choosing a sensitivity: by alert budget, and by which incidents a setting would catch.
//!
//! - [`choose_by_budget`] replays the history (through [`backtest::run`], the service's
//!   detector and alert planning) at every sensitivity of [`GRID`] and picks the
//!   most sensitive one whose replay fires at most the budget's alerts per week, saying what
//!   the next more sensitive setting would fire.
//! - [`replay_incidents`] adds synthetic drops ([`Incident`]: size, duration, at the KPI's
//!   busy or quiet hour) to the history, one at a time, and reports per setting whether each
//!   would have alerted and how long after its start (bucket time: the end of the bucket at
//!   which the trigger rule is met; add the model's `delay` for wall time).
//!
//! Pure, like `backtest`: the caller brings the [`History`] (observations, feedback,
//! exclusions and the service's settings).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::Timelike;

use crate::backtest::{self, BacktestOptions, BacktestReport, History};
use crate::kpi::{Kind, KpiSpec, Sensitivity};
use crate::pipeline::local_secs;
use crate::store::ObservationRow;

/// The sensitivities a budget is chosen from: 0.05 to 0.95 in steps of 0.05 (the UI slider's).
pub const GRID: [f64; 19] = [
    0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.35, 0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70, 0.75, 0.80, 0.85,
    0.90, 0.95,
];

/// Bad input to tuning (a budget or an incident that does not parse).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Error(pub String);

/// At most this many alerts per week (`1/week`, `0.5/week`, `2/day`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    per_week: f64,
}

impl Budget {
    /// A budget of `per_week` alerts per week (finite, ≥ 0).
    pub fn per_week(per_week: f64) -> Result<Self, Error> {
        if per_week.is_finite() && per_week >= 0.0 {
            Ok(Budget { per_week })
        } else {
            Err(Error(format!(
                "an alert budget must be a number >= 0 per week, got {per_week}"
            )))
        }
    }

    /// Alerts per week allowed.
    pub fn get(self) -> f64 {
        self.per_week
    }
}

impl FromStr for Budget {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error(format!("alert budget {s:?} is not N/week or N/day (e.g. 1/week)"));
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let n: f64 = n.trim().parse().map_err(|_| bad())?;
        let factor = match unit.trim().to_ascii_lowercase().as_str() {
            "week" | "w" | "wk" => 1.0,
            "day" | "d" => 7.0,
            _ => return Err(bad()),
        };
        Budget::per_week(n * factor)
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/week", self.per_week)
    }
}

/// What one sensitivity fired over the replayed weeks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// The sensitivity.
    pub sensitivity: f64,
    /// Alerts it would have fired.
    pub alerts: usize,
    /// Of those, per week.
    pub per_week: f64,
    /// Flagged buckets.
    pub flagged: usize,
}

/// The answer to "which sensitivity keeps within the budget?".
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetChoice {
    /// The budget asked for.
    pub budget: Budget,
    /// The most sensitive setting within it (`None`: even the least sensitive fires more).
    pub chosen: Option<Rate>,
    /// The next more sensitive setting of the grid, which fires more than the budget (`None`
    /// when the chosen one is the grid's most sensitive).
    pub next: Option<Rate>,
    /// Every setting tried, least sensitive first.
    pub curve: Vec<Rate>,
}

/// Replay at every [`GRID`] sensitivity (other options from `opts`) and pick the most
/// sensitive within `budget`.
pub fn choose_by_budget(
    spec: &KpiSpec,
    history: &History,
    opts: BacktestOptions,
    budget: Budget,
) -> Result<BudgetChoice, crate::baseline::Error> {
    let mut curve = Vec::with_capacity(GRID.len());
    for s in GRID {
        // Every grid value is strictly between 0 and 1.
        let Ok(sensitivity) = Sensitivity::new(s) else {
            continue;
        };
        let opts = BacktestOptions { sensitivity, ..opts };
        let r = backtest::run(spec, history, opts)?;
        curve.push(Rate {
            sensitivity: s,
            alerts: r.alerts.len(),
            per_week: r.mean_alerts_per_week(),
            flagged: r.flags.len(),
        });
    }
    let best = curve.iter().rposition(|r| r.per_week <= budget.get() + 1e-9);
    Ok(BudgetChoice {
        budget,
        chosen: best.map(|i| curve[i]),
        next: best.and_then(|i| curve.get(i + 1).copied()),
        curve,
    })
}

/// Where an injected incident is placed: the KPI's busiest or quietest local hour (its
/// busiest or quietest weekday for daily KPIs), at its last occurrence that leaves room for
/// the incident and recovery before the end of the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Highest mean value.
    Busy,
    /// Lowest mean value.
    Quiet,
}

impl Placement {
    /// `busy` or `quiet`.
    pub fn as_str(self) -> &'static str {
        match self {
            Placement::Busy => "busy",
            Placement::Quiet => "quiet",
        }
    }
}

/// A synthetic drop: the value falls by `drop` (a fraction in (0, 1]) for `duration_secs`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Incident {
    /// Fraction lost, e.g. 0.2 for −20 %.
    pub drop: f64,
    /// How long it lasts.
    pub duration_secs: i64,
    /// Where.
    pub at: Placement,
}

impl Incident {
    /// Check the ranges: a drop in (0, 1], a duration from 1 minute to 7 days.
    pub fn new(drop: f64, duration_secs: i64, at: Placement) -> Result<Self, Error> {
        if !(drop.is_finite() && drop > 0.0 && drop <= 1.0) {
            return Err(Error(format!(
                "an injected drop must be between 0 and 100 %, got {}%",
                drop * 100.0
            )));
        }
        if !(60..=7 * 86_400).contains(&duration_secs) {
            return Err(Error(
                "an injected incident must last from 1 minute to 7 days".to_owned(),
            ));
        }
        Ok(Incident {
            drop,
            duration_secs,
            at,
        })
    }

    /// The standard set: −5, −10 and −20 % for 30 minutes (one bucket for KPIs with longer
    /// buckets), at the busy and at the quiet hour.
    pub fn standard(spec: &KpiSpec) -> Vec<Incident> {
        let duration = 1800.max(spec.interval.secs_i64());
        [0.05, 0.10, 0.20]
            .into_iter()
            .flat_map(|drop| {
                [Placement::Busy, Placement::Quiet].map(|at| Incident {
                    drop,
                    duration_secs: duration,
                    at,
                })
            })
            .collect()
    }

    /// Like `-20%:30m@busy`.
    pub fn label(&self) -> String {
        format!(
            "-{}%:{}@{}",
            (self.drop * 100.0 * 100.0).round() / 100.0,
            humantime::format_duration(std::time::Duration::from_secs(self.duration_secs.unsigned_abs())),
            self.at.as_str()
        )
    }
}

impl FromStr for Incident {
    type Err = Error;
    /// `-20%:30m@busy`, `10%:1h@quiet` (the sign is optional: it is a drop).
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || {
            Error(format!(
                "incident {s:?} is not like -20%:30m@busy (size:duration@busy|quiet)"
            ))
        };
        let (size, rest) = s.trim().split_once(':').ok_or_else(bad)?;
        let (duration, at) = rest.split_once('@').ok_or_else(bad)?;
        let size = size.trim().trim_start_matches('-').trim_end_matches('%');
        let drop: f64 = size.parse().map_err(|_| bad())?;
        let duration = humantime::parse_duration(duration.trim()).map_err(|_| bad())?;
        let at = match at.trim().to_ascii_lowercase().as_str() {
            "busy" => Placement::Busy,
            "quiet" => Placement::Quiet,
            _ => return Err(bad()),
        };
        Incident::new(
            drop / 100.0,
            i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
            at,
        )
    }
}

/// What one setting made of one injected incident.
#[derive(Debug, Clone, PartialEq)]
pub struct Catch {
    /// The incident.
    pub incident: Incident,
    /// Where it was put (UTC seconds of its start).
    pub start: i64,
    /// Whether an alert would have fired for it.
    pub caught: bool,
    /// From the incident's start to the end of the bucket at which the alert fires.
    pub delay_secs: Option<i64>,
}

/// One setting's results over every incident.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingReplay {
    /// The sensitivity.
    pub sensitivity: f64,
    /// Per incident, in the order given.
    pub catches: Vec<Catch>,
}

/// Add each incident to the history (one at a time) and replay it at each of `settings`:
/// which would have alerted, and how fast. An alert counts as catching an incident when it
/// fires at or after the incident's start, started before the incident ended (plus one
/// bucket), and is not in the replay without the incident.
pub fn replay_incidents(
    spec: &KpiSpec,
    history: &History,
    opts: BacktestOptions,
    settings: &[Sensitivity],
    incidents: &[Incident],
) -> Result<Vec<SettingReplay>, crate::baseline::Error> {
    let grid = spec.buckets();
    let starts: Vec<Option<i64>> = incidents.iter().map(|inc| place(spec, history, inc)).collect();
    let mut out = Vec::with_capacity(settings.len());
    for &s in settings {
        let opts = BacktestOptions {
            sensitivity: s,
            ..opts
        };
        let clean = backtest::run(spec, history, opts)?;
        let mut catches = Vec::with_capacity(incidents.len());
        for (inc, start) in incidents.iter().zip(&starts) {
            let Some(start) = *start else {
                catches.push(Catch {
                    incident: *inc,
                    start: history.to,
                    caught: false,
                    delay_secs: None,
                });
                continue;
            };
            let injected = history.with_series(inject(spec, &history.series, inc, start));
            let r = backtest::run(spec, &injected, opts)?;
            let end = grid.forward(start + inc.duration_secs, 1);
            let fired = first_new_alert(&r, &clean, start, end);
            catches.push(Catch {
                incident: *inc,
                start,
                caught: fired.is_some(),
                delay_secs: fired.map(|f| f - start),
            });
        }
        out.push(SettingReplay {
            sensitivity: s.get(),
            catches,
        });
    }
    Ok(out)
}

/// When the earliest alert of `r` that belongs to an incident in `[start, end)` fires.
fn first_new_alert(r: &BacktestReport, clean: &BacktestReport, start: i64, end: i64) -> Option<i64> {
    r.alerts
        .iter()
        .filter(|a| a.fired.timestamp() >= start && a.started.timestamp() < end)
        .filter(|a| {
            !clean
                .alerts
                .iter()
                .any(|c| c.series == a.series && c.started == a.started)
        })
        .map(|a| a.fired.timestamp())
        .min()
}

/// The history with `inc` added from `start`: each bucket overlapping the incident loses
/// `drop` of its value in proportion to the overlap (counts stay whole; a ratio's numerator
/// falls, its denominator stays).
pub fn inject(
    spec: &KpiSpec,
    history: &BTreeMap<String, Vec<ObservationRow>>,
    inc: &Incident,
    start: i64,
) -> BTreeMap<String, Vec<ObservationRow>> {
    let grid = spec.buckets();
    let end = start + inc.duration_secs;
    history
        .iter()
        .map(|(series, rows)| {
            let rows = rows
                .iter()
                .map(|o| {
                    let bucket_end = grid.end(o.ts);
                    let overlap = bucket_end.min(end) - o.ts.max(start);
                    if overlap <= 0 {
                        return *o;
                    }
                    let factor = 1.0 - inc.drop * overlap as f64 / (bucket_end - o.ts) as f64;
                    let mut value = o.value * factor;
                    if spec.kind == Kind::Count {
                        value = value.round();
                    }
                    ObservationRow { value, ..*o }
                })
                .collect();
            (series.clone(), rows)
        })
        .collect()
}

/// The start of `inc`: the last occurrence of the busy or quiet slot (local hour of day, or
/// weekday for KPIs of a day or more) that leaves the incident and the recovery buckets + 2
/// before `history.to`. `None` when the history is empty.
pub fn place(spec: &KpiSpec, history: &History, inc: &Incident) -> Option<i64> {
    let (to, recovery_buckets) = (history.to, history.replay.recovery_buckets);
    let series = &history.series;
    let grid = spec.buckets();
    let step = grid.nominal_secs();
    let daily = step >= 86_400;
    let slot_of = |utc: i64| {
        let local = local_secs(spec.timezone, utc);
        let t = chrono::DateTime::from_timestamp(local, 0).unwrap_or_default();
        if daily {
            i64::from(chrono::Datelike::weekday(&t).num_days_from_monday())
        } else {
            i64::from(t.hour())
        }
    };
    let mut sums: BTreeMap<i64, (f64, f64)> = BTreeMap::new();
    for rows in series.values() {
        for o in rows.iter().filter(|o| o.ts < to) {
            let v = match (spec.kind, o.denominator) {
                (Kind::Ratio, Some(d)) => d, // busy = most attempts
                _ => o.value,
            };
            let e = sums.entry(slot_of(o.ts)).or_default();
            e.0 += v;
            e.1 += 1.0;
        }
    }
    let means = sums.into_iter().map(|(k, (s, n))| (k, s / n.max(1.0)));
    let slot = match inc.at {
        Placement::Busy => means.max_by(|a, b| a.1.total_cmp(&b.1))?.0,
        Placement::Quiet => means.min_by(|a, b| a.1.total_cmp(&b.1))?.0,
    };
    let room = inc.duration_secs + (i64::from(recovery_buckets) + 2) * step;
    let latest = grid.floor(to - room);
    // Walk back, a slot (local hour or day) at a time, from the latest possible start.
    let unit = crate::kpi::Buckets::new(
        if daily {
            crate::kpi::Interval::DAY
        } else {
            crate::kpi::Interval::HOUR
        },
        spec.timezone,
    );
    let first = series.values().filter_map(|r| r.first()).map(|o| o.ts).min()?;
    let mut t = unit.floor(latest);
    while t >= first {
        if slot_of(t) == slot {
            return Some(t);
        }
        t = unit.prev(t);
    }
    None
}

/// The settings an incident replay reports on: low, medium, high, the one tried (`model`)
/// and the budget's pick, each once with all its names, least sensitive first.
pub fn replay_settings(model: f64, budget: Option<f64>) -> Vec<(f64, Vec<String>)> {
    let mut named: Vec<(f64, Vec<String>)> = Vec::new();
    let candidates = [
        (Some(Sensitivity::LOW.get()), "low"),
        (Some(Sensitivity::MEDIUM.get()), "medium"),
        (Some(Sensitivity::HIGH.get()), "high"),
        (Some(model), "model"),
        (budget, "budget"),
    ];
    for (s, name) in candidates {
        let Some(s) = s else { continue };
        match named.iter_mut().find(|(v, _)| (*v - s).abs() < 1e-9) {
            Some((_, names)) => names.push(name.to_owned()),
            None => named.push((s, vec![name.to_owned()])),
        }
    }
    named.sort_by(|a, b| a.0.total_cmp(&b.0));
    named
}

/// The budget's answer for a terminal.
pub fn budget_text(c: &BudgetChoice) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = match (&c.chosen, &c.next) {
        (Some(chosen), Some(next)) => writeln!(
            out,
            "alert budget {}: sensitivity {:.2} fires {:.2} alerts/week ({} in all); the next more sensitive, {:.2}, fires {:.2}/week",
            c.budget, chosen.sensitivity, chosen.per_week, chosen.alerts, next.sensitivity, next.per_week
        ),
        (Some(chosen), None) => writeln!(
            out,
            "alert budget {}: sensitivity {:.2} fires {:.2} alerts/week ({} in all); it is the most sensitive setting tried",
            c.budget, chosen.sensitivity, chosen.per_week, chosen.alerts
        ),
        (None, _) => writeln!(
            out,
            "alert budget {}: no setting fits; even the least sensitive, {:.2}, fires {:.2} alerts/week",
            c.budget,
            c.curve.first().map_or(0.0, |r| r.sensitivity),
            c.curve.first().map_or(0.0, |r| r.per_week)
        ),
    };
    let _ = writeln!(out, "  sensitivity  alerts/week  flagged buckets");
    for r in &c.curve {
        let mark = if c.chosen.is_some_and(|x| x.sensitivity == r.sensitivity) {
            "  ← budget"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  {:>11.2}  {:>11.2}  {:>15}{mark}",
            r.sensitivity, r.per_week, r.flagged
        );
    }
    out
}

/// The incident replay for a terminal: one row per incident, one column per setting.
pub fn replay_text(replays: &[SettingReplay], named: &[(f64, Vec<String>)]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "injected incidents (caught: time from the incident's start to the end of the bucket that fires):"
    );
    let _ = write!(out, "  {:<22}", "incident");
    for (s, names) in named {
        let _ = write!(out, " {:>20}", format!("{} {s:.2}", names.join("/")));
    }
    let _ = writeln!(out);
    let rows = replays.first().map_or(0, |r| r.catches.len());
    for i in 0..rows {
        let first = &replays[0].catches[i];
        let when = chrono::DateTime::from_timestamp(first.start, 0)
            .map(|t| t.format("%m-%d %H:%M").to_string())
            .unwrap_or_default();
        let _ = write!(out, "  {:<22}", format!("{} {when}", first.incident.label()));
        for r in replays {
            let c = &r.catches[i];
            let cell = match c.delay_secs {
                Some(d) if c.caught => format!(
                    "after {}",
                    humantime::format_duration(std::time::Duration::from_secs(d.unsigned_abs()))
                ),
                _ => "missed".to_owned(),
            };
            let _ = write!(out, " {cell:>20}");
        }
        let _ = writeln!(out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backtest::BacktestOptions;

    fn spec(interval: &str) -> KpiSpec {
        KpiSpec::parse(
            "payments",
            &format!("source = \"s\"\nkind = \"count\"\ninterval = \"{interval}\"\ndirection = \"down\""),
            "SELECT 1 WHERE :start < :end",
            std::path::Path::new("m"),
        )
        .expect("valid")
    }

    const T0: i64 = 1_772_409_600; // a Monday, 00:00 UTC

    /// Weeks of 5-minute counts with a daily cycle (about 40 to 160 per bucket), deterministic
    /// small noise, and, with `dips`, six drops a week of 20 minutes, sized from −8 % to −45 %,
    /// at a different time each week (so the weekly profile does not learn them).
    fn history(weeks: i64, dips: bool) -> BTreeMap<String, Vec<ObservationRow>> {
        let step = 300;
        let n = weeks * 7 * 86_400 / step;
        let week_len = 7 * 86_400 / step;
        let sizes = [0.08, 0.12, 0.16, 0.22, 0.3, 0.45];
        let mut rows = Vec::with_capacity(n as usize);
        for i in 0..n {
            let ts = T0 + i * step;
            let hour = (ts % 86_400) as f64 / 3600.0;
            let rate = 100.0 + 60.0 * ((hour - 14.0) / 24.0 * std::f64::consts::TAU).cos();
            let noise = (((i * 7919) % 23) as f64 - 11.0) * 0.5;
            let mut value = (rate + noise).round();
            let (week, in_week) = (i / week_len, i % week_len);
            let every = week_len / sizes.len() as i64;
            let offset = (week * 37 + 11) % (every - 4);
            let k = in_week / every;
            if dips && (offset..offset + 4).contains(&(in_week % every)) {
                value = (value * (1.0 - sizes[k.min(5) as usize])).round();
            }
            rows.push(ObservationRow {
                ts,
                value,
                denominator: None,
            });
        }
        BTreeMap::from([("{}".to_owned(), rows)])
    }

    fn replay() -> backtest::Replay {
        backtest::Replay {
            warm_up_secs: 28 * 86_400,
            recovery_buckets: 3,
        }
    }

    fn opts() -> BacktestOptions {
        BacktestOptions {
            weeks: 3,
            sensitivity: Sensitivity::MEDIUM,
            direction: None,
            min_volume: None,
        }
    }

    #[test]
    fn budgets_parse_per_week_or_per_day_and_refuse_anything_else() {
        assert_eq!("1/week".parse::<Budget>().map(Budget::get), Ok(1.0));
        assert_eq!("2/day".parse::<Budget>().map(Budget::get), Ok(14.0));
        assert_eq!(" 0.5 / Week ".parse::<Budget>().map(Budget::get), Ok(0.5));
        for bad in ["1", "week", "-1/week", "1/fortnight", "x/week", "NaN/week"] {
            assert!(bad.parse::<Budget>().is_err(), "{bad}");
        }
    }

    #[test]
    fn incidents_parse_and_refuse_impossible_sizes() {
        let i: Incident = "-20%:30m@busy".parse().expect("parses");
        assert_eq!(i, Incident::new(0.2, 1800, Placement::Busy).expect("valid"));
        assert_eq!(i.label(), "-20%:30m@busy");
        assert!("10%:1h@quiet".parse::<Incident>().is_ok());
        for bad in [
            "-120%:30m@busy",
            "-20%:30m@noon",
            "-20%@busy",
            "0%:30m@busy",
            "-5%:10s@busy",
        ] {
            assert!(bad.parse::<Incident>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_budget_of_one_a_week_picks_the_most_sensitive_setting_within_it_and_the_next_fires_more() {
        let spec = spec("5m");
        let h = History::new(history(7, true), T0 + 7 * 7 * 86_400, replay());
        let budget: Budget = "1/week".parse().expect("budget");
        let choice = choose_by_budget(&spec, &h, opts(), budget).expect("runs");
        let chosen = choice.chosen.expect("some setting fits");
        assert!(chosen.per_week <= 1.0, "{choice:?}");
        let next = choice.next.expect("a more sensitive setting exists");
        assert!(next.per_week > 1.0, "{choice:?}");
        assert!(next.sensitivity > chosen.sensitivity);
        // Every setting more sensitive than the pick is over budget (it is the most sensitive within it).
        assert!(
            choice
                .curve
                .iter()
                .filter(|r| r.sensitivity > chosen.sensitivity)
                .all(|r| r.per_week > 1.0),
            "{choice:?}"
        );
        assert_eq!(choice.curve.len(), GRID.len());
        // The replay at the chosen setting agrees with a plain backtest at it.
        let plain = backtest::run(
            &spec,
            &h,
            BacktestOptions {
                sensitivity: Sensitivity::new(chosen.sensitivity).expect("s"),
                ..opts()
            },
        )
        .expect("runs");
        assert_eq!(plain.alerts.len(), chosen.alerts);
    }

    #[test]
    fn a_20_percent_half_hour_drop_is_caught_at_medium_with_its_delay() {
        let spec = spec("5m");
        let to = T0 + 6 * 7 * 86_400;
        let h = History::new(history(6, false), to, replay());
        let incidents = [
            Incident::new(0.2, 1800, Placement::Busy).expect("valid"),
            Incident::new(0.2, 1800, Placement::Quiet).expect("valid"),
        ];
        let out = replay_incidents(&spec, &h, opts(), &[Sensitivity::MEDIUM], &incidents).expect("runs");
        let busy = &out[0].catches[0];
        // The busy hour of this cycle is 14:00 UTC, on the last day that leaves room.
        assert_eq!(busy.start % 86_400, 14 * 3600, "{busy:?}");
        assert!(busy.start < to && busy.start > to - 2 * 86_400, "{busy:?}");
        assert!(busy.caught, "{out:?}");
        let delay = busy.delay_secs.expect("a delay");
        assert!(delay > 0 && delay <= 1800, "fires within the incident: {delay} s");
        assert_eq!(delay % 300, 0, "at a bucket end");
        let quiet = &out[0].catches[1];
        assert_eq!(quiet.start % 86_400, 2 * 3600, "{quiet:?}");
    }

    #[test]
    fn injection_scales_overlapping_buckets_in_proportion() {
        let spec = spec("1h");
        let rows = vec![
            ObservationRow {
                ts: 0,
                value: 100.0,
                denominator: None,
            },
            ObservationRow {
                ts: 3600,
                value: 100.0,
                denominator: None,
            },
            ObservationRow {
                ts: 7200,
                value: 100.0,
                denominator: None,
            },
        ];
        let h = BTreeMap::from([("{}".to_owned(), rows)]);
        let inc = Incident::new(0.2, 1800, Placement::Busy).expect("valid");
        let out = inject(&spec, &h, &inc, 3600 + 1800);
        let values: Vec<f64> = out["{}"].iter().map(|o| o.value).collect();
        assert_eq!(values, vec![100.0, 90.0, 100.0]);
    }
}
