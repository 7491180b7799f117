//! Calibration of the detector's tails against the series' own history.
//!
//! The noise model turns each bucket into a signed z-score; on a series that follows the model
//! those are standard normal, on a real series they are often not (heavy tails, bursts,
//! drifting variance). [`TailCalibrator`] keeps the recent values of a statistic (the z-score,
//! or the CUSUM) and fits each side's tail by peaks over threshold, as SPOT does (Siffer et
//! al., KDD 2017): Hill's estimator of the tail index on the top 4 % and Weissman's quantile.
//! The fit answers "how rare is a value this large *on this series*" without any
//! distributional assumption beyond the extreme-value limit, so a threshold for a target
//! false-alarm probability can be set directly. A goodness-of-fit gate says whether the
//! history refutes the noise model's own tail at all (where it does not, the model's exact
//! thresholds stand). Pure arithmetic: no IO.

/// Most recent values kept per series: a week of 5-minute buckets.
pub(crate) const CAPACITY: usize = 2048;
/// The tails are refitted (when asked for) every this many new values.
const REFIT_EVERY: u32 = 16;
/// Fewest z-scores before a tail is fitted.
pub(crate) const MIN_SAMPLES: usize = 96;
/// Share of the sample the tail is fitted to (the peaks).
const PEAK_SHARE: f64 = 0.04;
/// Fewest and most peaks per fit.
const MIN_PEAKS: usize = 12;
const MAX_PEAKS: usize = 160;
/// Bounds on the tail index: a tail lighter than `MIN_GAMMA` would put the threshold just past
/// the largest peak seen; one heavier than `MAX_GAMMA` every threshold out of reach.
const MIN_GAMMA: f64 = 0.02;
const MAX_GAMMA: f64 = 1.0;
/// A magnitude this many times the largest in the sample is beyond any threshold.
pub(crate) const RECORD: f64 = 2.0;
/// Magnitudes at or below this are the body: never among a tail's peaks when enough values lie
/// beyond it, and below every reference level.
const BODY: f32 = 1.0;
/// Smallest peak threshold for the power-law fit.
const MIN_U: f64 = 0.5;
/// Most recent alarms kept as evidence against the model's tail (three suffice to refute it).
const ALARMS_KEPT: usize = 8;

/// A power-law tail fitted to one side's largest magnitudes beyond `u` (Hill's estimator,
/// with Weissman's quantiles): `P(X > x) = share * (x / u)^(-1 / gamma)` for `x > u`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct TailFit {
    /// The peak threshold (in this side's magnitude).
    pub(crate) u: f64,
    /// Share of the sample beyond `u`.
    pub(crate) share: f64,
    /// Tail index: the mean log-excess of the peaks over `u`.
    pub(crate) gamma: f64,
    /// The largest magnitude in the sample: `RECORD` times it is flagged whatever the fit
    /// extrapolates (a heavy tail fitted to a few days would otherwise put the threshold out
    /// of reach).
    pub(crate) max: f64,
    /// Samples the fit stands on.
    pub(crate) n: usize,
}

impl TailFit {
    /// Probability that a magnitude on this side is at least `x`, for `x` beyond `u`; `None`
    /// inside the body, where the fit says nothing.
    pub(crate) fn sf(&self, x: f64) -> Option<f64> {
        if x <= self.u {
            return None;
        }
        if x >= RECORD * self.max {
            return Some(0.0);
        }
        Some(self.share * (x / self.u).powf(-1.0 / self.gamma))
    }

    /// The magnitude whose exceedance probability is `q` (for `q` below `share`).
    pub(crate) fn quantile(&self, q: f64) -> f64 {
        if q >= self.share {
            return self.u;
        }
        let hill = self.u * (self.share / q.max(1e-300)).powf(self.gamma);
        hill.min(RECORD * self.max).max(self.u)
    }
}

/// The recent values of one statistic of a series and the tail fits made from them.
///
/// The fits are made from the values as they stood at the last multiple of `REFIT_EVERY`
/// pushes, and only when asked for: a detector replaying weeks of quiet history never needs
/// them, one judging a suspicious bucket does, and both see exactly the same fit (the values
/// pushed since that boundary, and what they overwrote, are kept to rebuild it).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct TailCalibrator {
    /// Values kept: at most `CAPACITY`.
    capacity: usize,
    buf: Vec<f32>,
    next: usize,
    /// Values pushed so far.
    pushes: u64,
    /// Each write since the last boundary, in order: where it went and the value it
    /// overwrote (NaN: it was appended). A push writes once, or twice when it takes over a
    /// cluster's maximum.
    recent: [(u32, f32); 2 * REFIT_EVERY as usize],
    /// Writes recorded in `recent`.
    writes: u8,
    /// Runs declustering: consecutive values beyond this magnitude on one side form one
    /// cluster, kept as its maximum (the others are recorded at the level). `None`: off.
    decluster: Option<f32>,
    /// The open cluster: its side (-1, 0 none, +1), where its maximum is in `buf`, and the
    /// push that put it there.
    cluster: (i8, u32, u64),
    /// Where the model's tail is checked: a magnitude and the probability the model gives
    /// to exceeding it.
    #[serde(with = "super::snapshot::reference")]
    reference: &'static [(f64, f64)],
    /// The most recent alarms (at most `ALARMS_KEPT`): the pushes made before each and its
    /// value. They never enter the fit — an alarm is not a peak, as in SPOT — but they are
    /// exceedances all the same when the history is asked whether it refutes the model's tail:
    /// left out, a series whose tail is heavier than the model's would look like the model
    /// wherever it matters, because every value beyond the model's threshold is an alarm.
    alarms: Vec<(u64, f32)>,
    /// Alarms recorded so far: with the version, the key of the cached fits.
    alarms_seen: u64,
    /// The fits as of a boundary: a pure cache.
    cache: std::cell::Cell<Option<Fitted>>,
    /// Whether a tail index beyond the standard normal's also refutes the model: for a
    /// continuous statistic that is normal under the model (a gauge's z-score).
    index_gate: bool,
}

/// The tails as of one refit boundary.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
struct Fitted {
    /// `pushes / REFIT_EVERY` at the boundary.
    version: u64,
    /// `alarms_seen` when the fits were made.
    alarms_seen: u64,
    /// Fits for deviations below (index 0) and above (index 1) the baseline.
    fits: [Option<TailFit>; 2],
    /// Whether the history refutes the model's tail, per side.
    rejected: [bool; 2],
}

impl TailCalibrator {
    /// A calibrator whose model says a magnitude beyond `level` has probability `p` on each
    /// side, for each `(level, p)` of `reference`, keeping the last `capacity` values (at
    /// least `2 * MIN_SAMPLES`, at most `CAPACITY`).
    pub(crate) fn new(reference: &'static [(f64, f64)], capacity: usize) -> Self {
        TailCalibrator {
            capacity: capacity.clamp(MIN_SAMPLES * 2, CAPACITY),
            buf: Vec::new(),
            next: 0,
            pushes: 0,
            recent: [(0, f32::NAN); 2 * REFIT_EVERY as usize],
            writes: 0,
            decluster: None,
            cluster: (0, 0, 0),
            reference,
            alarms: Vec::new(),
            alarms_seen: 0,
            cache: std::cell::Cell::new(None),
            index_gate: false,
        }
    }

    /// Also refutes the model's tail when Hill's estimate of the tail index lies more than
    /// `INDEX_GATE_SE` standard errors beyond what it is on a standard normal's tail of the
    /// same share. For a statistic that is continuous and standard normal under the model: a
    /// heavy tail such as a Student t with 5 degrees of freedom exceeds the reference levels
    /// of a week of values about as often as a normal does (its excess lies beyond them), but
    /// its tail index gives it away.
    pub(crate) fn with_index_gate(mut self, on: bool) -> Self {
        self.index_gate = on;
        self
    }

    /// Keeps each run of consecutive values beyond `level` (on one side) as one value, its
    /// maximum: an alarm budget counts episodes, so the tail is that of the episodes' peaks,
    /// not of every bucket of a burst (runs declustering; the extremal index of bursty series
    /// is well below 1).
    pub(crate) fn declustered(mut self, level: f64) -> Self {
        self.decluster = Some(level as f32);
        self
    }

    /// Heap bytes held.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.buf.capacity() * std::mem::size_of::<f32>()
            + self.alarms.capacity() * std::mem::size_of::<(u64, f32)>()
    }

    /// Whether the model's tail is refuted by the history on one side.
    pub(crate) fn rejected(&self, below: bool) -> bool {
        self.fitted().rejected[usize::from(!below)]
    }

    /// The fit of one side: `below` for deviations under the baseline.
    pub(crate) fn fit(&self, below: bool) -> Option<TailFit> {
        self.fitted().fits[usize::from(!below)]
    }

    /// How many times the recorded values on one side (`below`: negative ones) went from
    /// under `m` in magnitude to at least `m`: excursions, not buckets (a CUSUM that stays
    /// beyond a level for ten buckets is one event).
    pub(crate) fn count_beyond(&self, m: f64, below: bool) -> usize {
        let m = m as f32;
        let beyond = |x: f32| if below { -x >= m } else { x >= m };
        // Oldest first: the ring starts at `next` once full.
        let (newer, older) = self.buf.split_at(self.next.min(self.buf.len()));
        let mut count = 0;
        let mut was = false;
        for &x in older.iter().chain(newer) {
            let is = beyond(x);
            if is && !was {
                count += 1;
            }
            was = is;
        }
        count
    }

    /// Record a value that raised an alarm: evidence for the goodness-of-fit gate only (see
    /// `alarms`). It counts there while it is within the last `capacity` pushes.
    pub(crate) fn push_alarm(&mut self, z: f64) {
        if !z.is_finite() {
            return;
        }
        if self.alarms.len() >= ALARMS_KEPT {
            self.alarms.remove(0);
        }
        if self.alarms.capacity() == 0 {
            self.alarms.reserve_exact(ALARMS_KEPT);
        }
        self.alarms.push((self.pushes, z.clamp(-1e6, 1e6) as f32));
        self.alarms_seen += 1;
    }

    /// Record one value.
    pub(crate) fn push(&mut self, z: f64) {
        if !z.is_finite() {
            return;
        }
        let mut z = z.clamp(-1e6, 1e6) as f32;
        if self.pushes.is_multiple_of(u64::from(REFIT_EVERY)) {
            self.writes = 0;
        }
        if let Some(level) = self.decluster {
            let side: i8 = if z >= level {
                1
            } else if z <= -level {
                -1
            } else {
                0
            };
            let (open, at, when) = self.cluster;
            // The open cluster continues when this value is beyond the level on its side, the
            // previous push belonged to it and its maximum is still held.
            let continues = side != 0 && side == open && self.pushes - when < self.capacity as u64;
            if continues {
                let held = self.buf[at as usize];
                if z.abs() > held.abs() {
                    // A new maximum: the old one is recorded at the level.
                    self.write(at as usize, f32::from(side) * level);
                    let pos = self.push_raw(z);
                    self.cluster = (side, pos, self.pushes);
                } else {
                    z = f32::from(side) * level;
                    self.push_raw(z);
                }
            } else {
                let pos = self.push_raw(z);
                self.cluster = (side, pos, self.pushes);
            }
            self.pushes += 1;
            if side == 0 {
                self.cluster = (0, 0, 0);
            }
            return;
        }
        self.push_raw(z);
        self.pushes += 1;
    }

    /// Overwrite `buf[pos]`, recording the old value for the refit.
    fn write(&mut self, pos: usize, value: f32) {
        self.record(pos, self.buf[pos]);
        self.buf[pos] = value;
    }

    fn record(&mut self, pos: usize, old: f32) {
        let i = usize::from(self.writes);
        if let Some(slot) = self.recent.get_mut(i) {
            *slot = (pos as u32, old);
            self.writes += 1;
        }
    }

    /// Append or overwrite the oldest value; where it went.
    fn push_raw(&mut self, z: f32) -> u32 {
        if self.buf.len() < self.capacity {
            if self.buf.capacity() == 0 {
                self.buf.reserve_exact(self.capacity);
            }
            let pos = self.buf.len();
            self.record(pos, f32::NAN);
            self.buf.push(z);
            pos as u32
        } else {
            let pos = self.next;
            self.record(pos, self.buf[pos]);
            self.buf[pos] = z;
            self.next = (self.next + 1) % self.capacity;
            pos as u32
        }
    }

    /// The fits as of the last boundary, computed now if not cached.
    fn fitted(&self) -> Fitted {
        let version = self.pushes / u64::from(REFIT_EVERY);
        if let Some(f) = self
            .cache
            .get()
            .filter(|f| f.version == version && f.alarms_seen == self.alarms_seen)
        {
            return f;
        }
        // The values as they stood at the boundary: undo the pushes since, newest first.
        let mut scratch: Vec<f32> = self.buf.clone();
        let since = if self.pushes.is_multiple_of(u64::from(REFIT_EVERY)) {
            0
        } else {
            usize::from(self.writes)
        };
        for &(pos, old) in self.recent[..since].iter().rev() {
            if old.is_nan() {
                scratch.truncate(pos as usize);
            } else if let Some(x) = scratch.get_mut(pos as usize) {
                *x = old;
            }
        }
        let f = self.fit_values(version, &mut scratch);
        self.cache.set(Some(f));
        f
    }

    /// Alarms beyond `level` on one side (`below`: negative ones) within the last `capacity`
    /// pushes before the boundary of `version` (or after it): fixed for a given state, so
    /// every caller sees the same fit.
    fn alarms_beyond(&self, version: u64, level: f64, below: bool) -> usize {
        let boundary = version * u64::from(REFIT_EVERY);
        self.alarms
            .iter()
            .filter(|&&(at, z)| {
                let m = f64::from(if below { -z } else { z });
                boundary.saturating_sub(at) < self.capacity as u64 && m > level
            })
            .count()
    }

    fn fit_values(&self, version: u64, scratch: &mut [f32]) -> Fitted {
        let mut out = Fitted {
            version,
            alarms_seen: self.alarms_seen,
            fits: [None, None],
            rejected: [false, false],
        };
        let n = scratch.len();
        let k = ((n as f64 * PEAK_SHARE).round() as usize).clamp(MIN_PEAKS, MAX_PEAKS);
        if n < MIN_SAMPLES || k + 1 >= n {
            return out;
        }
        let tests = self.reference.len().max(1) as f64;
        let levels = &self.reference[..self.reference.len().min(MAX_REFERENCE_LEVELS)];
        // Only a side's largest values enter the fit and the counts beyond the reference
        // levels: when enough of them lie beyond `BODY` (below every level), those alone are
        // searched, which gives the same fit as the whole sample at a fraction of the cost.
        let body_below_levels = levels.iter().all(|&(level, _)| level > f64::from(BODY));
        let mut tail: Vec<f32> = Vec::new();
        for side in 0..2 {
            // Below: the negated values; above: negated back (the order does not matter).
            for x in scratch.iter_mut() {
                *x = -*x;
            }
            tail.clear();
            if body_below_levels {
                tail.extend(scratch.iter().copied().filter(|&x| x > BODY));
            }
            let sample: &mut [f32] = if tail.len() > k { &mut tail } else { scratch };
            let m = sample.len();
            let fit = fit_side(sample, k, n);
            // The model's tail is refuted when, at some level, the history exceeds it far more
            // often than the model allows — and at least `MIN_EXCEEDANCES` times: one or two
            // past incidents do not make a series heavy-tailed. After the fit the values
            // beyond its threshold are the last `k` of `sample`; a level below the threshold
            // needs a full count.
            let top = &sample[m - k..];
            let u = fit.map_or(f64::INFINITY, |f| f.u);
            out.rejected[side] = levels.iter().any(|&(level, p)| {
                let e = if level >= u {
                    top.iter().filter(|&&x| f64::from(x) > level).count()
                } else {
                    sample.iter().filter(|&&x| f64::from(x) > level).count()
                } as f64
                    + self.alarms_beyond(version, level, side == 0) as f64;
                let lambda = n as f64 * p;
                e >= MIN_EXCEEDANCES && e > lambda && poisson_sf(e, lambda) < REJECT_P / tests
            }) || (self.index_gate && fit.is_some_and(|f| heavier_than_normal(&f, k)));
            out.fits[side] = fit;
        }
        out
    }
}

/// Standard errors (Hill's, `gamma / sqrt(k)` for `k` peaks) by which a tail index must exceed
/// the standard normal's for the index gate to refute a normal model.
const INDEX_GATE_SE: f64 = 3.0;

/// Whether `fit`, made from `k` peaks, has a tail index beyond the standard normal's at the
/// same share by more than `INDEX_GATE_SE` standard errors.
fn heavier_than_normal(fit: &TailFit, k: usize) -> bool {
    let reference = normal_hill(fit.share);
    fit.gamma > reference * (1.0 + INDEX_GATE_SE / (k.max(1) as f64).sqrt())
}

/// What Hill's estimator converges to on a standard normal's tail beyond its `1 - share`
/// quantile u: `E[ln(Z / u) | Z > u]`, which is `∫_u^∞ P(Z > z) / z dz / share` (by parts),
/// integrated by Simpson's rule over ten standard deviations (beyond them the integrand is
/// below 10⁻²³). About 0.195 at a share of 4 %.
fn normal_hill(share: f64) -> f64 {
    use statrs::function::erf::{erfc, erfc_inv};
    let share = share.clamp(1e-9, 0.5);
    let u = std::f64::consts::SQRT_2 * erfc_inv(2.0 * share);
    let integrand = |z: f64| 0.5 * erfc(z / std::f64::consts::SQRT_2) / z;
    const STEPS: usize = 200;
    let h = 10.0 / STEPS as f64;
    let mut sum = integrand(u) + integrand(u + 10.0);
    for i in 1..STEPS {
        let weight = if i % 2 == 1 { 4.0 } else { 2.0 };
        sum += weight * integrand(u + h * i as f64);
    }
    sum * h / 3.0 / share
}

/// Significance at which the model's tail is refuted by the history (over all levels).
const REJECT_P: f64 = 1e-3;
/// Levels at which the model's tail is checked, at most.
const MAX_REFERENCE_LEVELS: usize = 8;
/// Excesses beyond this many median excesses are capped when fitting.
const ROBUST_CAP: f64 = 10.0;
/// Fewest exceedances of a level that can refute the model there.
const MIN_EXCEEDANCES: f64 = 3.0;

/// `P(X >= k)` for `X ~ Poisson(lambda)`.
fn poisson_sf(k: f64, lambda: f64) -> f64 {
    use statrs::distribution::{DiscreteCDF, Poisson};
    if k <= 0.0 {
        return 1.0;
    }
    match Poisson::new(lambda.max(1e-300)) {
        // P(X >= k) = P(X > k - 1).
        Ok(d) => d.sf(k as u64 - 1),
        Err(_) => 0.0,
    }
}

/// Fit the tail of one side's magnitudes `xs` (of a sample of `total`: `xs` may hold only its
/// largest values) with its top `k` values marking the peak threshold. Reorders `xs`: the top
/// `k` end up last.
fn fit_side(xs: &mut [f32], k: usize, total: usize) -> Option<TailFit> {
    let n = xs.len();
    // The (k+1)-th largest value is the peak threshold.
    let pivot = n - k - 1;
    xs.select_nth_unstable_by(pivot, f32::total_cmp);
    // Hill's estimator needs a positive threshold; below `MIN_U` the body is too close to zero
    // for a power law to mean anything, and `MIN_U` stands in.
    let u = f64::from(xs[pivot]).max(MIN_U);
    let mut logs = [0f64; MAX_PEAKS];
    let mut m = 0;
    let mut max = u;
    for &x in &xs[pivot + 1..] {
        let x = f64::from(x);
        if x > u {
            logs[m] = (x / u).ln();
            max = max.max(x);
            m += 1;
        }
    }
    let logs = &mut logs[..m];
    if logs.is_empty() {
        return None;
    }
    // Robust to a few past incidents: log-excesses are capped at `ROBUST_CAP` times the median
    // one, so one huge value counts as one exceedance without dictating the tail.
    let mid = logs.len() / 2;
    let (_, &mut median, _) = logs.select_nth_unstable_by(mid, f64::total_cmp);
    let cap = ROBUST_CAP * median.max(1e-3);
    let gamma = logs.iter().map(|x| x.min(cap)).sum::<f64>() / logs.len() as f64;
    Some(TailFit {
        u,
        share: logs.len() as f64 / total as f64,
        gamma: gamma.clamp(MIN_GAMMA, MAX_GAMMA),
        max,
        n: total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_declustered_burst_counts_once_at_its_peak() {
        let mut c = TailCalibrator::new(&[(3.0, 1.35e-3)], 512).declustered(3.0);
        let mut raw = TailCalibrator::new(&[(3.0, 1.35e-3)], 512);
        let mut values = Vec::new();
        for i in 0..410 {
            // Quiet values, and every 50 buckets a burst of five above 3 peaking at 9.
            let burst = [4.0, 6.0, 9.0, 7.0, 5.0];
            let v = if i % 50 < 5 {
                burst[i % 50]
            } else {
                ((i * 7) % 11) as f64 / 5.0 - 1.0
            };
            values.push(v);
        }
        for &v in &values {
            c.push(v);
            raw.push(v);
        }
        let values_beyond = |c: &TailCalibrator, m: f32| c.buf.iter().filter(|&&x| x >= m).count();
        assert_eq!(
            values_beyond(&raw, 3.5),
            45,
            "every value of each burst is beyond 3.5"
        );
        assert_eq!(values_beyond(&c, 3.0), 45, "the other members stay at the level");
        assert_eq!(values_beyond(&c, 3.5), 9, "one value per burst beyond the level");
        assert_eq!(values_beyond(&c, 9.0), 9, "and that value is the burst's peak");
        // Events are excursions, not buckets.
        assert_eq!(raw.count_beyond(3.0, false), 9);
        assert_eq!(raw.count_beyond(5.0, false), 9);
        assert_eq!(c.count_beyond(3.0, false), 9);
        // The fit as of the last boundary is the one a fresh calibrator makes from the same
        // values pushed up to that boundary.
        let mut fresh = TailCalibrator::new(&[(3.0, 1.35e-3)], 512).declustered(3.0);
        let boundary = values.len() / REFIT_EVERY as usize * REFIT_EVERY as usize;
        for &v in &values[..boundary] {
            fresh.push(v);
        }
        c.push(0.0);
        fresh.push(0.0);
        assert_eq!(c.fit(false), fresh.fit(false));
    }

    struct Lcg(u64);
    impl Lcg {
        fn uniform(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }
    }

    #[test]
    fn fitting_only_the_values_beyond_the_body_gives_the_whole_samples_fit() {
        let mut rng = Lcg(5);
        // Heavy-tailed magnitudes on both sides, most of them in the body.
        let values: Vec<f32> = (0..CAPACITY)
            .map(|_| {
                let x = (rng.uniform().powf(-1.0 / 3.0) - 1.0) * 0.8;
                (if rng.uniform() < 0.5 { x } else { -x }) as f32
            })
            .collect();
        let n = values.len();
        let k = 82;
        let mut whole = values.clone();
        let want = fit_side(&mut whole, k, n).expect("fitted");
        let mut tail: Vec<f32> = values.iter().copied().filter(|&x| x > BODY).collect();
        assert!(
            tail.len() > k && tail.len() < n / 4,
            "{} beyond the body",
            tail.len()
        );
        let got = fit_side(&mut tail, k, n).expect("fitted");
        assert_eq!(
            (got.u, got.share, got.max, got.n),
            (want.u, want.share, want.max, want.n)
        );
        assert!((got.gamma - want.gamma).abs() < 1e-12, "{got:?} vs {want:?}");
        // And through the calibrator, whose fit uses the shortcut, on both sides.
        let mut c = TailCalibrator::new(&[(3.0, 0.00135)], CAPACITY);
        for &x in &values {
            c.push(f64::from(x));
        }
        let mut below: Vec<f32> = values.iter().map(|x| -x).collect();
        let want_below = fit_side(&mut below, k, n).expect("fitted");
        let fit = c.fit(true).expect("fitted");
        assert_eq!((fit.u, fit.max), (want_below.u, want_below.max));
        assert!((fit.gamma - want_below.gamma).abs() < 1e-12);
    }

    #[test]
    fn an_exponential_tail_is_recovered() {
        let mut rng = Lcg(7);
        let mut c = TailCalibrator::new(&[(3.0, 0.00135)], CAPACITY);
        for _ in 0..CAPACITY {
            let e = -rng.uniform().ln();
            let z = if rng.uniform() < 0.5 { e } else { -e };
            c.push(z);
        }
        let fit = c.fit(false).expect("fitted");
        // Laplace: P(Z > x) = exp(-x) / 2.
        let q: f64 = 1e-5;
        let want = -(2.0 * q).ln();
        let got = fit.quantile(q);
        assert!(got > want && got < 2.0 * want, "{got} vs {want}, {fit:?}");
    }

    #[test]
    fn a_pareto_tail_has_a_positive_shape_and_a_far_threshold() {
        let mut rng = Lcg(11);
        let mut c = TailCalibrator::new(&[(3.0, 0.00135)], CAPACITY);
        for _ in 0..CAPACITY {
            let x = rng.uniform().powf(-1.0 / 3.0) - 1.0; // Pareto with index 3: xi = 1/3
            c.push(x);
        }
        let fit = c.fit(false).expect("fitted");
        assert!(fit.gamma > 0.2, "{fit:?}");
        assert!(fit.quantile(1e-5) > 20.0, "{fit:?}");
    }

    impl Lcg {
        fn normal(&mut self) -> f64 {
            let (u, v) = (self.uniform(), self.uniform());
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        }
    }

    #[test]
    fn the_normal_reference_of_hills_estimator_is_right() {
        // scipy: quad(lambda z: norm.sf(z) / z, norm.isf(s), inf)[0] / s.
        for (share, want) in [(0.04, 0.194_973_164_6), (0.02, 0.155_941_183_3)] {
            let got = normal_hill(share);
            assert!((got - want).abs() < 1e-6, "{share}: {got} vs {want}");
        }
    }

    /// Whether the upper tail of a week of `draw`s, over `inflate` times their spread (the
    /// mean absolute value times 1.2533, as a gauge's), is refuted without and with the index
    /// gate.
    fn refuted(rng: &mut Lcg, inflate: f64, draw: impl Fn(&mut Lcg) -> f64) -> (bool, bool) {
        let values: Vec<f64> = (0..CAPACITY).map(|_| draw(rng)).collect();
        let spread = values.iter().map(|x| x.abs()).sum::<f64>() / values.len() as f64 * 1.2533;
        let mut plain = TailCalibrator::new(super::super::Z_REFERENCE, CAPACITY).declustered(3.0);
        let mut gated = plain.clone().with_index_gate(true);
        for &x in &values {
            plain.push(x / spread / inflate);
            gated.push(x / spread / inflate);
        }
        (plain.rejected(false), gated.rejected(false))
    }

    #[test]
    fn a_heavy_tail_is_refuted_by_its_index_where_exceedance_counts_miss_it() {
        let mut rng = Lcg(23);
        let (mut t_counts, mut t_gated, mut n_gated) = (0, 0, 0);
        for _ in 0..10 {
            // Student t with 4 degrees of freedom, its z-scores over a spread 1.4 times its
            // own (a gauge's band also carries the estimate's error): z = 3 and 4 are exceeded
            // not much more often than under the normal model, but its 2.5e-6 quantile is
            // several times the normal's, and its tail index gives it away.
            let (counts, gated) = refuted(&mut rng, 1.4, |r| {
                let chi2: f64 = (0..4).map(|_| r.normal().powi(2)).sum();
                r.normal() / (chi2 / 4.0).sqrt()
            });
            t_counts += usize::from(counts);
            t_gated += usize::from(gated);
            let (counts, gated) = refuted(&mut rng, 1.0, Lcg::normal);
            assert!(!counts, "a normal week refuted by exceedance counts");
            n_gated += usize::from(gated);
        }
        assert!(
            t_counts <= 6,
            "exceedance counts alone refuted {t_counts} of 10 t(4) weeks"
        );
        assert!(
            t_gated >= 9,
            "with the index gate only {t_gated} of 10 t(4) weeks refuted"
        );
        assert_eq!(n_gated, 0, "normal weeks refuted by the index gate");
    }

    #[test]
    fn alarms_refute_the_models_tail_without_entering_the_fit() {
        let mut rng = Lcg(29);
        let mut c = TailCalibrator::new(super::super::Z_REFERENCE, CAPACITY).declustered(3.0);
        for _ in 0..CAPACITY {
            c.push(rng.normal());
        }
        assert!(!c.rejected(false), "a normal week follows the normal model");
        // Three alarms beyond 5 within a week: a normal model makes that a once-in-10^10 event.
        for z in [5.5, 6.0, 7.0] {
            c.push_alarm(z);
            for _ in 0..100 {
                c.push(rng.normal());
            }
        }
        assert!(
            c.rejected(false),
            "three alarms beyond z = 5 in a week refute the model"
        );
        assert!(!c.rejected(true), "on their own side only");
        let fit = c.fit(false).expect("fitted");
        assert!(fit.max < 5.5, "alarms are not peaks: {fit:?}");
        // A week later they are history.
        for _ in 0..CAPACITY {
            c.push(rng.normal());
        }
        assert!(
            !c.rejected(false),
            "alarms older than the window are no longer evidence"
        );
    }
}
