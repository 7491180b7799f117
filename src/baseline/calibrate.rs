//! Calibration of the detector's tails against the series' own history.
//!
//! The noise model turns each bucket into a signed z-score; on a series that follows the model
//! those are standard normal, on a real series they are often not (heavy tails, bursts,
//! drifting variance). [`TailCalibrator`] keeps the recent z-scores of the series and fits a
//! generalized Pareto distribution (GPD) to the excesses over a high empirical quantile of each
//! side — peaks over threshold, as SPOT does (Siffer et al., KDD 2017). The fit answers "how
//! rare is a z this large *on this series*" without any distributional assumption beyond the
//! extreme-value limit, so a threshold for a target false-alarm probability can be set directly.
//!
//! The GPD is fitted by probability-weighted moments (Hosking & Wallis 1987), which is stable
//! for the few dozen peaks a few days of buckets give. Pure arithmetic: no IO.

/// Most recent values kept per series: a week of 5-minute buckets.
pub(crate) const CAPACITY: usize = 2048;
/// Refit the tails after this many new z-scores.
const REFIT_EVERY: u32 = 16;
/// Fewest z-scores before a tail is fitted.
pub(crate) const MIN_SAMPLES: usize = 96;
/// Share of the sample whose excesses the GPD is fitted to (the peaks).
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
/// Smallest peak threshold for the power-law fit.
const MIN_U: f64 = 0.5;

/// A power-law tail fitted to one side's largest magnitudes beyond `u` (Hill's estimator,
/// with Weissman's quantiles): `P(X > x) = share * (x / u)^(-1 / gamma)` for `x > u`.
#[derive(Debug, Clone, Copy, PartialEq)]
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
#[derive(Debug, Clone)]
pub(crate) struct TailCalibrator {
    /// Values kept: at most `CAPACITY`.
    capacity: usize,
    buf: Vec<f32>,
    next: usize,
    since_fit: u32,
    /// Fits for deviations below (index 0) and above (index 1) the baseline.
    fits: [Option<TailFit>; 2],
    /// Where the model's tail is checked: a magnitude and the probability the model gives
    /// to exceeding it.
    reference: &'static [(f64, f64)],
    /// Whether the series' history exceeds the reference far more often than the model says,
    /// per side.
    rejected: [bool; 2],
}

impl TailCalibrator {
    /// A calibrator whose model says a magnitude beyond `level` has probability `p` on each
    /// side, for each `(level, p)` of `reference`.
    pub(crate) fn new(reference: &'static [(f64, f64)], capacity: usize) -> Self {
        TailCalibrator {
            capacity: capacity.clamp(MIN_SAMPLES * 2, CAPACITY),
            buf: Vec::new(),
            next: 0,
            since_fit: 0,
            fits: [None, None],
            reference,
            rejected: [false, false],
        }
    }

    /// Whether the model's tail is refuted by the history on one side.
    pub(crate) fn rejected(&self, below: bool) -> bool {
        self.rejected[usize::from(!below)]
    }

    /// Heap bytes held.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.buf.capacity() * std::mem::size_of::<f32>()
    }

    /// The fit of one side: `below` for deviations under the baseline.
    pub(crate) fn fit(&self, below: bool) -> Option<&TailFit> {
        self.fits[usize::from(!below)].as_ref()
    }

    /// How many recorded values on one side (`below`: negative ones) are at least `m` in
    /// magnitude.
    pub(crate) fn count_beyond(&self, m: f64, below: bool) -> usize {
        let m = m as f32;
        if below {
            self.buf.iter().filter(|&&x| -x >= m).count()
        } else {
            self.buf.iter().filter(|&&x| x >= m).count()
        }
    }

    /// Record one z-score.
    pub(crate) fn push(&mut self, z: f64) {
        if !z.is_finite() {
            return;
        }
        let z = z.clamp(-1e6, 1e6) as f32;
        if self.buf.len() < self.capacity {
            if self.buf.capacity() == 0 {
                self.buf.reserve_exact(self.capacity);
            }
            self.buf.push(z);
        } else {
            self.buf[self.next] = z;
            self.next = (self.next + 1) % self.capacity;
        }
        self.since_fit += 1;
        if self.buf.len() >= MIN_SAMPLES && (self.since_fit >= REFIT_EVERY || self.fits[0].is_none()) {
            self.refit();
        }
    }

    fn refit(&mut self) {
        self.since_fit = 0;
        let n = self.buf.len();
        let k = ((n as f64 * PEAK_SHARE).round() as usize).clamp(MIN_PEAKS, MAX_PEAKS);
        if n < MIN_SAMPLES || k + 1 >= n {
            self.fits = [None, None];
            return;
        }
        // Oldest first: clusters are runs in time.
        let (newer, older) = if n < self.capacity {
            (&self.buf[..0], &self.buf[..])
        } else {
            self.buf.split_at(self.next)
        };
        let mut series: Vec<f64> = Vec::with_capacity(n);
        let mut scratch: Vec<f64> = Vec::with_capacity(n);
        let tests = self.reference.len().max(1) as f64;
        for side in 0..2 {
            let sign = if side == 0 { -1.0 } else { 1.0 };
            series.clear();
            series.extend(older.iter().chain(newer.iter()).map(|&z| sign * f64::from(z)));
            // The model's tail is refuted when, at some level, the history exceeds it far more
            // often than the model allows — and in at least `MIN_EXCEEDANCES` separate
            // episodes: one or two past incidents do not make a series heavy-tailed.
            self.rejected[side] = self.reference.iter().any(|&(level, p)| {
                let episodes = series.iter().filter(|&&x| x > level).count() as f64;
                episodes >= MIN_EXCEEDANCES && poisson_sf(episodes, n as f64 * p) < REJECT_P / tests
            });
            scratch.clear();
            scratch.extend_from_slice(&series);
            self.fits[side] = fit_side(&series, &mut scratch, k);
        }
    }
}

/// Significance at which the model's tail is refuted by the history (over all levels).
const REJECT_P: f64 = 1e-3;
/// Excesses beyond this many median excesses are capped when fitting.
const ROBUST_CAP: f64 = 10.0;
/// Fewest exceedances of a level that can refute the model there.
const MIN_EXCEEDANCES: f64 = 3.0;

/// `P(X >= k)` for `X ~ Poisson(lambda)`, by summing the terms (k is a few hundred at most).
fn poisson_sf(k: f64, lambda: f64) -> f64 {
    if k <= 0.0 {
        return 1.0;
    }
    if lambda <= 0.0 {
        return 0.0;
    }
    // log P(X = k) by Stirling-free summation of logs, then the tail by the ratio recursion.
    let k = k.floor();
    let mut log_pk = -lambda + k * lambda.ln();
    let mut i = 1.0;
    while i <= k {
        log_pk -= i.ln();
        i += 1.0;
    }
    let mut term = log_pk.exp();
    let mut sum = term;
    let mut j = k + 1.0;
    while term > sum * 1e-12 && j < k + 10_000.0 {
        term *= lambda / j;
        sum += term;
        j += 1.0;
    }
    sum.min(1.0)
}

/// Fit the tail of one side's magnitudes `series` (oldest first), declustered, with its top
/// `k` values marking the peak threshold. `scratch` is a copy of `series` to reorder.
fn fit_side(series: &[f64], scratch: &mut [f64], k: usize) -> Option<TailFit> {
    let n = series.len();
    // The (k+1)-th largest value is the peak threshold.
    let pivot = n - k - 1;
    scratch.select_nth_unstable_by(pivot, f64::total_cmp);
    // Hill's estimator needs a positive threshold; below `MIN_U` the body is too close to zero
    // for a power law to mean anything, and `MIN_U` stands in.
    let u = scratch[pivot].max(MIN_U);
    let mut logs: Vec<f64> = series.iter().filter(|&&x| x > u).map(|&m| (m / u).ln()).collect();
    if logs.is_empty() {
        return None;
    }
    let max = series.iter().copied().fold(u, f64::max);
    logs.sort_unstable_by(f64::total_cmp);
    // Robust to a few past incidents: log-excesses are capped at `ROBUST_CAP` times the median
    // one, so one huge value counts as one exceedance without dictating the tail.
    let median = logs[logs.len() / 2];
    let cap = ROBUST_CAP * median.max(1e-3);
    let gamma = logs.iter().map(|x| x.min(cap)).sum::<f64>() / logs.len() as f64;
    Some(TailFit {
        u,
        share: logs.len() as f64 / n as f64,
        gamma: gamma.clamp(MIN_GAMMA, MAX_GAMMA),
        max,
        n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn an_exponential_tail_is_recovered() {
        let mut rng = Lcg(7);
        let mut c = TailCalibrator::new(&[(3.0, 0.00135)], CAPACITY);
        for _ in 0..CAPACITY {
            let e = -rng.uniform().ln();
            let z = if rng.uniform() < 0.5 { e } else { -e };
            c.push(z);
        }
        let fit = c.fit(false).copied().expect("fitted");
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
        let fit = c.fit(false).copied().expect("fitted");
        assert!(fit.gamma > 0.2, "{fit:?}");
        assert!(fit.quantile(1e-5) > 20.0, "{fit:?}");
    }
}
