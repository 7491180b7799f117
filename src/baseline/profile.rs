//! One candidate baseline: a level times a seasonal profile, with its own noise estimate.
//!
//! The profile keeps, per slot of the period (hour of day, hour of week, ...), exponentially
//! weighted sums of the level-normalised observation and of its weight (1 for counts and
//! gauges, the denominator for ratios), so the slot value is a ratio of sums and a denominator
//! of zero carries no information. Pure: no IO.

use crate::kpi::Kind;

use super::Seasonality;

/// Most slots a weekly profile may hold (5-minute slots; a daily one holds a seventh of
/// that): finer buckets share slots, which keeps the state small.
pub(crate) const MAX_SLOTS: i64 = 2016;
/// Trials' worth of prior pulling a ratio's slot proportion towards the series level.
const RATIO_PRIOR_TRIALS: f64 = 30.0;
/// Rate of the short exponentially weighted mean of residuals used to compare models.
const BIAS_RATE: f64 = 0.25;
/// Residual clip, in the model's standard deviations, when tracking fit quality.
const ERROR_CLIP_SD: f64 = 6.0;
/// Pseudo-events of the prior that keeps a count slot's expectation above zero.
const COUNT_PRIOR_EVENTS: f64 = 0.5;
/// Closest an expected proportion gets to 0 or 1: the product of level and profile can
/// overshoot, and a baseline of exactly 100% would call any single failure an incident.
const RATIO_EDGE: f64 = 1e-3;
/// Fewest buckets the level's memory spans (two hours of buckets otherwise), unless that is
/// more than a week.
const LEVEL_MIN_BUCKETS: f64 = 24.0;
/// Fewest events (or ratio trials) the level's memory spans.
const LEVEL_EVENTS: f64 = 100.0;
/// Gauges: buckets whose median starts the level.
const EARLY: usize = 15;
/// A gauge's spread is at least this share of its typical magnitude.
const SPREAD_FLOOR: f64 = 1e-3;
/// Residuals a gauge's spread must have seen before it is used to winsorise.
pub(crate) const MIN_SPREAD_SAMPLES: u32 = 20;
/// A gauge's level learns each residual up to this many spreads (Huber's constant for 95 %
/// efficiency under normal noise: the textbook value, not fitted to any data).
const HUBER_SD: f64 = 1.345;
const DAY: i64 = 86_400;
const WEEK: i64 = 7 * DAY;

/// A change of a model's level: what accepting a new normal did, and its inverse.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Shift {
    /// Nothing.
    None,
    /// Counts and ratios: the level times this.
    Multiply(f64),
    /// Gauges: the level plus this.
    Add(f64),
}

impl Shift {
    /// The shift that undoes this one.
    pub(crate) fn inverse(self) -> Shift {
        match self {
            Shift::Multiply(f) if f.abs() > 1e-12 => Shift::Multiply(1.0 / f),
            Shift::Add(d) => Shift::Add(-d),
            _ => Shift::None,
        }
    }

    /// This shift followed by `next` (both kinds commute: sums and products).
    pub(crate) fn then(self, next: Shift) -> Shift {
        match (self, next) {
            (Shift::None, s) | (s, Shift::None) => s,
            (Shift::Add(a), Shift::Add(b)) => Shift::Add(a + b),
            (Shift::Multiply(f), Shift::Multiply(g)) => Shift::Multiply(f * g),
            // A model's shifts are all of its own kind; were they not, the newer one stands.
            (_, s) => s,
        }
    }

    /// `pred` as it would be with the level moved by this shift (the spread scaled with a
    /// count's or a ratio's mean, as their noise is).
    pub(crate) fn moved(self, kind: Kind, pred: &Prediction) -> Prediction {
        match self {
            Shift::None => *pred,
            Shift::Add(d) => Prediction {
                rate: pred.rate + d,
                mean: pred.mean + d,
                ..*pred
            },
            Shift::Multiply(f) => {
                let rate = match kind {
                    Kind::Ratio => (pred.rate * f).clamp(RATIO_EDGE, 1.0 - RATIO_EDGE),
                    _ => (pred.rate * f).max(1e-6),
                };
                let g = if pred.rate.abs() > 1e-12 {
                    rate / pred.rate
                } else {
                    1.0
                };
                let base_g = match kind {
                    Kind::Ratio => {
                        let old = pred.rate * (1.0 - pred.rate);
                        if old > 0.0 {
                            rate * (1.0 - rate) / old
                        } else {
                            1.0
                        }
                    }
                    _ => g,
                };
                Prediction {
                    rate,
                    mean: pred.mean * g,
                    base_var: pred.base_var * base_g,
                    est_var: pred.est_var * base_g,
                    var: pred.var * base_g,
                    ..*pred
                }
            }
        }
    }
}

/// Prediction of one model for one bucket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Prediction {
    /// Expected value in the band's units (count, gauge value, or proportion).
    pub(crate) rate: f64,
    /// The slot's profile value behind it.
    pub(crate) profile: f64,
    /// Expected observation in observation units (count, gauge value, or numerator).
    pub(crate) mean: f64,
    /// Base (Poisson or binomial) variance of the observation; 0 for gauges.
    pub(crate) base_var: f64,
    /// Variance of the estimate itself, from the observations behind the slot.
    pub(crate) est_var: f64,
    /// Total variance of the observation including overdispersion and profile error.
    pub(crate) var: f64,
    /// Degrees of freedom of the spread: for gauges the effective observations behind it, for
    /// counts and ratios those of the variance whose overdispersion is estimated
    /// (Welch–Satterthwaite); infinite where nothing is estimated.
    pub(crate) spread_n: f64,
    /// The share of `rate` that a count's prior supplies rather than the slot's own
    /// observations (1 for a slot that has seen only zeros; 0 for gauges and ratios).
    pub(crate) prior: f64,
}

/// A level-times-profile model with one seasonality.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct SeasonalModel {
    pub(crate) seasonality: Seasonality,
    period: i64,
    width: i64,
    smooth: bool,
    slot_min_rate: f64,
    prior_weight: f64,
    count_prior: bool,
    /// Gauges: `expected = level + offset[slot]` with an additive spread; counts and ratios:
    /// `expected = level * profile[slot]`.
    additive: bool,
    /// Gauges: exponentially weighted mean absolute residual (the spread, robust to spikes).
    abs_dev: f64,
    /// Gauges: exponentially weighted mean absolute value, for the spread's floor.
    magnitude: f64,
    /// Gauges: the first few values, whose median and MAD start the level and the spread.
    early: Vec<f64>,
    num: Vec<f64>,
    den: Vec<f64>,
    visits: Vec<u16>,
    level_num: f64,
    level_den: f64,
    level_n: u32,
    level_min_rate: f64,
    disp_a: f64,
    disp_b: f64,
    pub(crate) disp_n: u32,
    disp_min_rate: f64,
    bias: f64,
    slow_num: f64,
    slow_den: f64,
    pub(crate) mse: f64,
    pub(crate) mse_n: u32,
    mse_min_rate: f64,
    run_obs: f64,
    run_exp: f64,
    run_n: f64,
    /// The last bucket start asked about and its slot (a pure cache).
    slot_cache: std::cell::Cell<(i64, usize)>,
    /// Slots first learnt from a held-back bucket (an anomaly), one bit each: such a slot may
    /// explain a deviation (veto) but is not used to judge until a bucket that is not held
    /// back replaces what it learnt. Otherwise an outage that is a slot's first visit is how
    /// the slot looks: the rest of it goes unflagged, and a normal value there a week later
    /// is a "spike".
    provisional: Vec<u64>,
}

/// Median and median absolute deviation of a few values.
fn median_mad(xs: &[f64]) -> (f64, f64) {
    let mut v: Vec<f64> = xs.to_vec();
    v.sort_unstable_by(f64::total_cmp);
    let med = median_sorted(&v);
    for x in v.iter_mut() {
        *x = (*x - med).abs();
    }
    v.sort_unstable_by(f64::total_cmp);
    (med, median_sorted(&v))
}

fn median_sorted(v: &[f64]) -> f64 {
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

impl SeasonalModel {
    /// A model for `seasonality`, or `None` when the bucket is too long for that period.
    pub(crate) fn new(kind: Kind, seasonality: Seasonality, interval_secs: i64) -> Option<Self> {
        let period = match seasonality {
            Seasonality::None => interval_secs,
            Seasonality::Daily => DAY,
            Seasonality::Weekly => WEEK,
        };
        if seasonality != Seasonality::None && interval_secs * 2 > period {
            return None;
        }
        let max_slots = match seasonality {
            Seasonality::Weekly => MAX_SLOTS,
            _ => MAX_SLOTS / 7,
        };
        let width = interval_secs.max((period + max_slots - 1) / max_slots);
        let slots = ((period + width - 1) / width).max(1) as usize;
        let per_day = DAY as f64 / interval_secs as f64;
        let slot_min_rate = match seasonality {
            Seasonality::None => 0.0,
            Seasonality::Daily => 0.15,
            Seasonality::Weekly => 0.2,
        };
        Some(SeasonalModel {
            seasonality,
            period,
            width,
            smooth: slots > 1 && width <= 1800,
            slot_min_rate,
            prior_weight: if kind == Kind::Ratio && seasonality != Seasonality::None {
                RATIO_PRIOR_TRIALS
            } else {
                0.0
            },
            count_prior: kind == Kind::Count,
            additive: kind == Kind::Gauge,
            abs_dev: 0.0,
            magnitude: 0.0,
            early: Vec::new(),
            num: vec![0.0; slots],
            den: vec![0.0; slots],
            visits: vec![0; slots],
            level_num: 0.0,
            level_den: 0.0,
            level_n: 0,
            level_min_rate: 1.0 / (per_day / 12.0).max(LEVEL_MIN_BUCKETS.min(7.0 * per_day)),
            disp_a: 0.0,
            disp_b: 0.0,
            disp_n: 0,
            disp_min_rate: 1.0 / (per_day * 3.0).max(50.0),
            bias: 0.0,
            slow_num: 0.0,
            slow_den: 0.0,
            mse: 0.0,
            mse_n: 0,
            mse_min_rate: 1.0 / (per_day * 7.0).max(14.0),
            run_obs: 0.0,
            run_exp: 0.0,
            run_n: 0.0,
            slot_cache: std::cell::Cell::new((i64::MIN, 0)),
            provisional: Vec::new(),
        })
    }

    /// Heap bytes held by this model.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.early.capacity() * std::mem::size_of::<f64>()
            + self.num.capacity() * std::mem::size_of::<f64>()
            + self.den.capacity() * std::mem::size_of::<f64>()
            + self.visits.capacity() * std::mem::size_of::<u16>()
    }

    #[inline]
    fn slot(&self, ts: i64) -> usize {
        // A bucket asks for its slot a dozen times (predict, learn, fit tracking): the last
        // answer is kept, as the division is the costliest step of a cheap model.
        let (cached_ts, cached) = self.slot_cache.get();
        if cached_ts == ts {
            return cached;
        }
        let s = ((ts.rem_euclid(self.period) / self.width) as usize).min(self.num.len() - 1);
        self.slot_cache.set((ts, s));
        s
    }

    /// Whether the model has seen this bucket's slot and a level.
    #[inline]
    pub(crate) fn ready(&self, ts: i64) -> bool {
        self.level_n > 0 && self.visits[self.slot(ts)] > 0
    }

    /// Whether the model may judge this bucket: ready, and its slot not provisional.
    #[inline]
    pub(crate) fn trusted(&self, ts: i64) -> bool {
        self.ready(ts) && !self.is_provisional(ts)
    }

    /// Whether this bucket's slot was learnt only from a held-back bucket.
    #[inline]
    pub(crate) fn is_provisional(&self, ts: i64) -> bool {
        let slot = self.slot(ts);
        self.provisional
            .get(slot / 64)
            .is_some_and(|w| w & (1 << (slot % 64)) != 0)
    }

    /// Mark this bucket's slot provisional (learnt from a held-back bucket), or not.
    pub(crate) fn set_provisional(&mut self, ts: i64, on: bool) {
        let slot = self.slot(ts);
        if self.provisional.len() <= slot / 64 {
            if !on {
                return;
            }
            self.provisional.resize(self.num.len().div_ceil(64), 0);
        }
        let bit = 1 << (slot % 64);
        if on {
            self.provisional[slot / 64] |= bit;
        } else {
            self.provisional[slot / 64] &= !bit;
        }
    }

    /// Forget what this bucket's slot learnt (a provisional slot about to be replaced).
    pub(crate) fn forget_slot(&mut self, ts: i64) {
        let slot = self.slot(ts);
        self.visits[slot] = 0;
        self.num[slot] = 0.0;
        self.den[slot] = 0.0;
    }

    #[inline]
    fn level(&self) -> f64 {
        if self.additive {
            return self.level_num;
        }
        if self.level_den > 0.0 {
            self.level_num / self.level_den
        } else {
            0.0
        }
    }

    /// Effective number of observations behind a slot's estimate (after smoothing).
    #[inline]
    fn slot_n_eff(&self, slot: usize, w: f64) -> f64 {
        let visits = f64::from(self.visits[slot]);
        let cap = if self.slot_min_rate > 0.0 {
            1.0 / self.slot_min_rate
        } else {
            1.0 / self.level_min_rate
        };
        (visits.min(cap) * w / 2.0).max(1.0)
    }

    /// The slot's profile value and the effective observations behind it.
    #[inline]
    fn profile_n(&self, slot: usize) -> (f64, f64, f64) {
        self.profile_with(slot, self.smooth)
    }

    /// The slot's profile value (borrowing from its neighbours when `smooth`) and the effective
    /// observations behind it.
    fn profile_with(&self, slot: usize, smooth: bool) -> (f64, f64, f64) {
        let n = self.num.len();
        let (mut sn, mut sd, mut w) = (2.0 * self.num[slot], 2.0 * self.den[slot], 2.0);
        if smooth {
            // Neighbours lend their estimate while the slot's own is thin, and less as it
            // firms up, so a sharp pattern (a step at 09:00) is learnt sharp.
            let lend = 1.0 / f64::from(self.visits[slot].max(1));
            for j in [(slot + n - 1) % n, (slot + 1) % n] {
                if self.visits[j] > 0 {
                    sn += lend * self.num[j];
                    sd += lend * self.den[j];
                    w += lend;
                }
            }
        }
        let n_eff = self.slot_n_eff(slot, w);
        if self.additive {
            return if sd > 0.0 {
                (sn / sd, n_eff, 0.0)
            } else {
                (0.0, n_eff, 0.0)
            };
        }
        if self.prior_weight > 0.0 {
            // Shrink towards the level (s = 1) by a prior worth `prior_weight` trials, against
            // the trials the slot's estimate stands on.
            let c = self.prior_weight / n_eff;
            sn = sn / w + c;
            sd = sd / w + c;
        }
        if self.count_prior && sd > 0.0 {
            // Gamma prior worth `COUNT_PRIOR_EVENTS` events at the level's rate: a slot that
            // has only seen zeros expects a little, never exactly nothing.
            let level = self.level();
            if level > 0.0 {
                let c = COUNT_PRIOR_EVENTS / level / n_eff;
                let own = (sn / sd).max(0.0);
                return ((own + c) / (1.0 + c), n_eff, c / (own + c));
            }
        }
        if sd > 0.0 {
            (sn / sd, n_eff, 0.0)
        } else {
            (0.0, n_eff, 0.0)
        }
    }

    /// The degrees of freedom of a count's or ratio's variance `total`, of which `estimated`
    /// (the overdispersion's share) stands on the residuals this model has learnt it from and
    /// the rest (Poisson or binomial) is exact: Welch–Satterthwaite, `n (total / estimated)²`
    /// with `n` the residuals behind the dispersion (capped at the effective number of its
    /// exponential weighting, as a gauge's spread is). Infinite without overdispersion.
    fn satterthwaite(&self, total: f64, estimated: f64) -> f64 {
        // NaN or none: nothing estimated.
        if estimated.is_nan() || estimated <= 0.0 {
            return f64::INFINITY;
        }
        let n = f64::from(self.disp_n)
            .min(2.0 / self.disp_min_rate - 1.0)
            .max(1.0);
        n * (total / estimated).powi(2)
    }

    fn dispersion(&self) -> f64 {
        if self.disp_b > 0.0 {
            (self.disp_a / self.disp_b).max(0.0)
        } else {
            0.0
        }
    }

    /// Predict the bucket at `ts` holding `weight` (the denominator for ratios). Always
    /// inlined: returned through memory, the prediction was read back with wider loads than
    /// it was written with, where a sixth of the scoring's samples fell (README, "Speed").
    #[inline(always)]
    pub(crate) fn predict(&self, kind: Kind, ts: i64, weight: f64) -> Prediction {
        let slot = self.slot(ts);
        let (s, n_eff, prior) = self.profile_n(slot);
        // What borrowing from the neighbours may have got wrong: the slot's own estimate
        // can be the right one (a sharp step at 09:00 seen twice), so the distance between
        // the two is uncertainty of the estimate, not noise the bucket has to beat. For
        // gauges only: a gauge's spread can be near zero (a noiseless series), so the
        // smoothing error alone decides; counts and ratios have their sampling noise, and
        // widening them cost labelled windows on the real dev set (docs/DETECTION.md).
        let lent = if self.additive && self.smooth && self.visits[slot] > 0 {
            s - self.profile_with(slot, false).0
        } else {
            0.0
        };
        self.predict_from(kind, s, n_eff, lent, weight, prior)
    }

    /// A weekly model's prediction for a bucket whose slot it has not seen, from the slots at
    /// the same time of day on the days of the same type (Monday to Friday, or Saturday and
    /// Sunday) that it has: what the week has taught so far about a working day or a weekend,
    /// before this weekday has come round. `None` for other models, for a slot already seen,
    /// and when no day of the type has been seen at that time.
    pub(crate) fn predict_day_type(&self, kind: Kind, ts: i64, weight: f64) -> Option<Prediction> {
        if self.seasonality != Seasonality::Weekly || self.level_n == 0 {
            return None;
        }
        let n = self.num.len();
        let per_day = (DAY / self.width) as usize;
        if per_day == 0 || per_day * 7 != n {
            return None;
        }
        let slot = self.slot(ts);
        if self.visits[slot] > 0 {
            return None;
        }
        // Days counted from the epoch's weekday, a Thursday: 2 and 3 are Saturday and Sunday.
        let weekend = |s: usize| matches!(s / per_day, 2 | 3);
        let (mut sum, mut n_eff, mut prior_sum) = (0.0, 0.0, 0.0);
        for k in 1..7 {
            let other = (slot + k * per_day) % n;
            if weekend(other) == weekend(slot) && self.visits[other] > 0 {
                let (s, m, from_prior) = self.profile_n(other);
                sum += s * m;
                prior_sum += from_prior * s * m;
                n_eff += m;
            }
        }
        let prior = if sum > 0.0 { prior_sum / sum } else { 0.0 };
        (n_eff > 0.0).then(|| self.predict_from(kind, sum / n_eff, n_eff, 0.0, weight, prior))
    }

    /// The prediction from a slot's profile value `s`, the observations `n_eff` behind it and
    /// (gauges) what smoothing may have got wrong, `lent`.
    fn predict_from(&self, kind: Kind, s: f64, n_eff: f64, lent: f64, weight: f64, prior: f64) -> Prediction {
        if self.additive {
            let mu = self.level() + s;
            // Spread: the mean absolute residual of a normal is 0.8 sd. Deviations smaller than
            // `SPREAD_FLOOR` of the series' typical magnitude are never news.
            let sd = (self.abs_dev * 1.2533)
                .max(self.magnitude.max(mu.abs()) * SPREAD_FLOOR)
                .max(1e-300);
            let var = sd * sd;
            let bias = lent * lent;
            return Prediction {
                profile: s,
                rate: mu,
                mean: mu,
                base_var: 0.0,
                est_var: var / n_eff + bias,
                var: var + var / n_eff + bias,
                spread_n: f64::from(self.disp_n).min(2.0 / self.disp_min_rate - 1.0),
                prior: 0.0,
            };
        }
        let rate_raw = self.level() * s;
        let phi = self.dispersion();
        match kind {
            Kind::Count => {
                let mu = rate_raw.max(1e-6);
                // The slot's estimate stands on `n_eff` buckets of the same overdispersed
                // noise: its error has their variance over `n_eff`, not the Poisson part's.
                let noise = mu + phi * mu * mu;
                Prediction {
                    profile: s,
                    rate: mu,
                    mean: mu,
                    base_var: mu,
                    est_var: noise / n_eff,
                    var: noise + noise / n_eff,
                    spread_n: self.satterthwaite(noise, phi * mu * mu),
                    prior,
                }
            }
            Kind::Ratio => {
                let p = rate_raw.clamp(RATIO_EDGE, 1.0 - RATIO_EDGE);
                let n = weight.max(0.0);
                let base = n * p * (1.0 - p);
                let noise = base + phi * n * (n - 1.0).max(0.0) * p * (1.0 - p);
                Prediction {
                    profile: s,
                    rate: p,
                    mean: n * p,
                    base_var: base,
                    est_var: noise / n_eff,
                    var: noise + noise / n_eff,
                    spread_n: self.satterthwaite(noise, noise - base),
                    prior: 0.0,
                }
            }
            // Gauges are additive: predicted above.
            Kind::Gauge => Prediction {
                profile: s,
                rate: rate_raw,
                mean: rate_raw,
                base_var: 0.0,
                est_var: 0.0,
                var: 1e-300,
                spread_n: f64::INFINITY,
                prior: 0.0,
            },
        }
    }

    /// Learn one observation `obs` (count, gauge, numerator) of `weight` at `ts`, given this
    /// model's prediction for it. `winsor` clips the residual to that many standard deviations.
    pub(crate) fn learn(
        &mut self,
        kind: Kind,
        ts: i64,
        obs: f64,
        weight: f64,
        pred: &Prediction,
        winsor: Option<f64>,
    ) {
        if weight <= 0.0 {
            return;
        }
        let ready = self.ready(ts);
        let raw = obs;
        let mut obs = obs;
        if ready {
            // A gauge's spread starts at zero: winsorising against it before it has seen a
            // few residuals would keep it there.
            let spread_known = !self.additive || self.disp_n >= MIN_SPREAD_SAMPLES;
            if let (Some(w), true) = (winsor, spread_known) {
                let sd = pred.var.max(1e-12).sqrt();
                obs = obs.clamp(pred.mean - w * sd, pred.mean + w * sd);
            }
            if kind == Kind::Ratio {
                obs = obs.clamp(0.0, weight);
            }
            // Noise and fit quality, measured against what the model predicted.
            let r = obs - pred.mean;
            if self.additive {
                self.disp_n = self.disp_n.saturating_add(1);
                let a = (1.0 / f64::from(self.disp_n)).max(self.disp_min_rate);
                self.abs_dev += a * (r.abs() - self.abs_dev);
            }
            let m2 = match kind {
                Kind::Count => pred.mean * pred.mean,
                Kind::Ratio => weight * (weight - 1.0).max(0.0) * pred.rate * (1.0 - pred.rate),
                Kind::Gauge => pred.mean.abs().max(1e-9).powi(2),
            };
            if !self.additive {
                self.disp_n = self.disp_n.saturating_add(1);
                let a = (1.0 / f64::from(self.disp_n)).max(self.disp_min_rate);
                self.disp_a += a * ((r * r - pred.base_var - pred.est_var) - self.disp_a);
                self.disp_b += a * (m2 - self.disp_b);
            }
        }
        // Level: ratio of exponentially weighted sums of observation and profile-expected.
        let slot = self.slot(ts);
        let level = self.level();
        let s = if self.visits[slot] > 0 {
            // The prediction was made from this same state, for this same slot.
            pred.profile
        } else {
            // An unseen slot learns its own value against a level that stays put, so every
            // slot of the first period is normalised by the same number.
            0.0
        };
        self.level_n = self.level_n.saturating_add(1);
        if self.additive {
            let a = (1.0 / f64::from(self.level_n)).max(self.level_min_rate);
            let offset = if self.visits[slot] > 0 { pred.profile } else { 0.0 };
            let m = (1.0 / f64::from(self.level_n)).max(self.disp_min_rate);
            self.magnitude += m * (raw.abs() - self.magnitude);
            if self.early.len() < EARLY && self.level_n as usize <= EARLY {
                // The first buckets set the level by their median and the spread by their
                // median absolute deviation: one burst among them does not become the level.
                if self.early.capacity() == 0 {
                    self.early.reserve_exact(EARLY);
                }
                self.early.push(raw - offset);
                let (med, mad) = median_mad(&self.early);
                self.level_num = med;
                // MAD to mean absolute deviation under a normal: 1.4826 * 0.7979.
                self.abs_dev = mad * 1.1829;
            } else if self.visits[slot] > 0 || self.level_n == 1 {
                // The level moves by a Huber step: a residual counts in full up to
                // `HUBER_SD` spreads and no further (the slots and the spread keep the wider
                // winsorising). A gauge that reads 0 most of the time and now and then bursts
                // then keeps a level near its zeros, instead of one lifted by every burst
                // against which its usual zeros accumulate as a "drop" for hours.
                let obs = if ready && self.disp_n >= MIN_SPREAD_SAMPLES && winsor.is_some() {
                    let sd = pred.var.max(1e-12).sqrt();
                    obs.clamp(pred.mean - HUBER_SD * sd, pred.mean + HUBER_SD * sd)
                } else {
                    obs
                };
                self.level_num += a * (obs - offset - self.level_num);
            }
            if self.early.len() >= EARLY && self.level_n as usize > 4 * EARLY {
                self.early = Vec::new();
            }
            self.level_den = 1.0;
            let level = self.level_num;
            self.visits[slot] = self.visits[slot].saturating_add(1);
            let b = (1.0 / f64::from(self.visits[slot])).max(self.slot_min_rate);
            self.num[slot] += b * (obs - level - self.num[slot]);
            self.den[slot] += b * (1.0 - self.den[slot]);
            return;
        }
        if self.level_n == 1 || (self.level_num == 0.0 && obs != 0.0) {
            // The first observation that is not zero sets the units: slots seen before it
            // hold zeros, which are zero in any units. A count's level starts at the mean of
            // the buckets so far (the zeros before it too): the slots' prior and the level's
            // least events are in the level's units, and one event after a hundred empty
            // buckets taken as one per bucket made a series of three events a day expect a
            // fifth of one in every bucket, and page on its ordinary empty hours.
            let buckets = match kind {
                Kind::Count => f64::from(self.level_n),
                _ => 1.0,
            };
            self.level_num = obs / buckets;
            self.level_den = weight;
        } else if s > 0.0 {
            // The level follows about two hours of buckets, but never fewer than
            // `LEVEL_EVENTS` events: a sparse series' level must not chase noise. For a ratio
            // the events are those of the rarer outcome (failures of a 98 % success rate):
            // they, not the trials, carry the information about the proportion.
            let per_bucket = match kind {
                Kind::Count => self.level_num.abs(),
                Kind::Ratio => {
                    let share = self.level().clamp(0.0, 1.0);
                    self.level_den.abs() * share.min(1.0 - share).max(RATIO_EDGE)
                }
                Kind::Gauge => f64::INFINITY,
            };
            let min_rate = self.level_min_rate.min(per_bucket / LEVEL_EVENTS);
            let a = (1.0 / f64::from(self.level_n)).max(min_rate);
            self.level_num += a * (obs - self.level_num);
            self.level_den += a * (weight * s - self.level_den);
        }
        let level = if level > 0.0 { level } else { self.level() };
        let norm = if level.abs() > 1e-12 { level } else { 1.0 };
        self.visits[slot] = self.visits[slot].saturating_add(1);
        let b = (1.0 / f64::from(self.visits[slot])).max(self.slot_min_rate);
        self.num[slot] += b * (obs / norm - self.num[slot]);
        self.den[slot] += b * (weight - self.den[slot]);
    }

    /// Track this model's fit on every scored bucket, anomalous or not, so that the model in
    /// use cannot hide its own failures from the comparison. Residuals are clipped at
    /// `ERROR_CLIP_SD` of the model's own spread.
    pub(crate) fn track_error(&mut self, ts: i64, obs: f64, pred: &Prediction) {
        if !self.ready(ts) {
            return;
        }
        // Judge the profile, not the fast level: predict with a slow (about a week) level, so
        // a daily profile cannot look good by chasing each weekend with its level.
        let sd = pred.var.max(1e-300).sqrt();
        let s = pred.profile;
        if self.additive {
            let mean = if self.slow_den > 0.0 {
                self.slow_num + s
            } else {
                pred.mean
            };
            let r = (obs - mean).clamp(-ERROR_CLIP_SD * sd, ERROR_CLIP_SD * sd);
            self.slow_num += if self.slow_den > 0.0 {
                self.mse_min_rate * (obs - s - self.slow_num)
            } else {
                obs - s
            };
            self.slow_den = 1.0;
            self.mse_n = self.mse_n.saturating_add(1);
            let a = (1.0 / f64::from(self.mse_n)).max(self.mse_min_rate);
            self.bias += BIAS_RATE * (r - self.bias);
            self.mse += a * (self.bias * self.bias - self.mse);
            return;
        }
        let slow = if self.slow_den > 0.0 {
            self.slow_num / self.slow_den
        } else {
            self.level()
        };
        let mean = if pred.rate.abs() > 1e-12 {
            pred.mean * slow * s / pred.rate
        } else {
            pred.mean
        };
        let mean = if mean.is_finite() { mean } else { pred.mean };
        let r = (obs - mean).clamp(-ERROR_CLIP_SD * sd, ERROR_CLIP_SD * sd);
        let weight = if pred.rate.abs() > 1e-12 {
            pred.mean / pred.rate
        } else {
            1.0
        };
        self.slow_num += self.mse_min_rate * (obs - self.slow_num);
        self.slow_den += self.mse_min_rate * (weight * s - self.slow_den);
        self.mse_n = self.mse_n.saturating_add(1);
        let a = (1.0 / f64::from(self.mse_n)).max(self.mse_min_rate);
        // Fit quality is judged on the short-run mean residual: a model whose errors
        // persist (a weekend seen through a daily profile) is what makes a CUSUM fire.
        self.bias += BIAS_RATE * (r - self.bias);
        self.mse += a * (self.bias * self.bias - self.mse);
    }

    /// Add one bucket to the current run of persistent deviation.
    pub(crate) fn run_add(&mut self, obs: f64, pred: &Prediction) {
        self.run_obs += obs;
        self.run_exp += pred.mean;
        self.run_n += 1.0;
    }

    /// Forget the current run.
    pub(crate) fn run_clear(&mut self) {
        self.run_obs = 0.0;
        self.run_exp = 0.0;
        self.run_n = 0.0;
    }

    /// Multiply the level (the fast one and the slow one the fit is judged with) by `factor`:
    /// the series changed level for good. The profile keeps its shape.
    pub(crate) fn rebase(&mut self, obs: f64, pred: &Prediction) {
        if self.additive {
            let delta = obs - pred.mean;
            if delta.is_finite() {
                self.level_num += delta;
                self.slow_num += delta;
            }
        } else if pred.mean.abs() > 1e-12 && obs.is_finite() {
            let factor = (obs / pred.mean).clamp(0.02, 50.0);
            self.level_num *= factor;
            self.slow_num *= factor;
        }
        self.run_clear();
    }

    /// Accept the run's level as the new normal.
    pub(crate) fn run_accept(&mut self) -> Shift {
        let shift = if self.additive {
            if self.run_n > 0.0 {
                Shift::Add((self.run_obs - self.run_exp) / self.run_n)
            } else {
                Shift::None
            }
        } else if self.run_exp.abs() > 1e-12 {
            Shift::Multiply((self.run_obs / self.run_exp).clamp(0.02, 50.0))
        } else {
            Shift::None
        };
        self.apply(shift);
        self.run_clear();
        shift
    }

    /// Move the level (and the slow level the fit is judged with) by `shift`.
    pub(crate) fn apply(&mut self, shift: Shift) {
        match shift {
            Shift::Multiply(f) => {
                self.level_num *= f;
                self.slow_num *= f;
            }
            Shift::Add(d) => {
                self.level_num += d;
                self.slow_num += d;
            }
            Shift::None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use rand_distr::{Distribution, Gamma, Poisson};

    use super::*;

    /// Hourly gamma-Poisson counts of mean `mu` and dispersion `phi` (variance mu + phi mu²),
    /// learnt by one model for `days`; the model's dispersion at the end.
    fn dispersion_after(seasonality: Seasonality, days: i64, mu: f64, phi: f64) -> f64 {
        let mut rng = StdRng::seed_from_u64(42);
        let rate = Gamma::new(1.0 / phi, mu * phi).expect("valid gamma");
        let mut m = SeasonalModel::new(Kind::Count, seasonality, 3600).expect("hourly fits");
        for h in 0..days * 24 {
            let ts = 1_772_409_600 + h * 3600;
            let y = Poisson::new(rate.sample(&mut rng))
                .expect("positive rate")
                .sample(&mut rng);
            let pred = m.predict(Kind::Count, ts, 1.0);
            m.learn(Kind::Count, ts, y, 1.0, &pred, None);
        }
        m.dispersion()
    }

    #[test]
    fn a_young_profile_does_not_mistake_its_own_estimation_error_for_dispersion() {
        // In its second week a weekly profile predicts each hour from one earlier bucket of
        // the same noise, so its residuals have twice the noise's variance. Were the
        // estimate's error taken as Poisson only, the rest would be read as dispersion
        // (1.65 phi here) and every band of the series drawn too wide, or, once
        // the slots firm up, a mature profile judged with a young one's spread.
        let (mu, phi) = (100.0, 0.05);
        let young = dispersion_after(Seasonality::Weekly, 14, mu, phi);
        assert!(
            (0.7 * phi..1.3 * phi).contains(&young),
            "second week: dispersion {young}"
        );
        // And a mature profile still finds the same dispersion.
        let mature = dispersion_after(Seasonality::Daily, 28, mu, phi);
        assert!(
            (0.7 * phi..1.3 * phi).contains(&mature),
            "four weeks: dispersion {mature}"
        );
    }
}
