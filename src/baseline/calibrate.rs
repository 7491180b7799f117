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

/// Recent z-scores kept per series. At 5-minute buckets this is a week.
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
/// Bounds on the fitted shape: below -0.25 the tail would end just past the largest peak seen;
/// above 0.8 a handful of peaks would put every threshold out of reach.
const XI_MIN: f64 = -0.25;
const XI_MAX: f64 = 0.8;

/// A GPD fitted to the excesses of one side's z-scores over `u`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct TailFit {
    /// The peak threshold (in z units, on this side: the magnitude of the deviation).
    pub(crate) u: f64,
    /// Share of the sample beyond `u`.
    pub(crate) share: f64,
    /// GPD scale.
    pub(crate) sigma: f64,
    /// GPD shape.
    pub(crate) xi: f64,
    /// Samples the fit stands on.
    pub(crate) n: usize,
}

impl TailFit {
    /// Probability that a z-score on this side is at least `x` (in this side's magnitude),
    /// for `x` beyond `u`; `None` inside the body, where the fit says nothing.
    pub(crate) fn sf(&self, x: f64) -> Option<f64> {
        if x <= self.u {
            return None;
        }
        let y = (x - self.u) / self.sigma;
        let tail = if self.xi.abs() < 1e-6 {
            (-y).exp()
        } else {
            let base = 1.0 + self.xi * y;
            if base <= 0.0 {
                0.0
            } else {
                base.powf(-1.0 / self.xi)
            }
        };
        Some(self.share * tail)
    }

    /// The magnitude whose exceedance probability is `q` (for `q` below `share`).
    pub(crate) fn quantile(&self, q: f64) -> f64 {
        if q >= self.share {
            return self.u;
        }
        let r = self.share / q.max(1e-300);
        if self.xi.abs() < 1e-6 {
            self.u + self.sigma * r.ln()
        } else {
            self.u + self.sigma / self.xi * (r.powf(self.xi) - 1.0)
        }
    }
}

/// The recent values of one statistic of a series and the tail fits made from them.
#[derive(Debug, Clone)]
pub(crate) struct TailCalibrator {
    buf: Vec<f32>,
    next: usize,
    since_fit: u32,
    /// Fits for deviations below (index 0) and above (index 1) the baseline.
    fits: [Option<TailFit>; 2],
    /// Where the model's tail is checked: a magnitude and the probability the model gives
    /// to exceeding it.
    reference: (f64, f64),
    /// Whether the series' history exceeds the reference far more often than the model says,
    /// per side.
    rejected: [bool; 2],
}

impl TailCalibrator {
    /// A calibrator whose model says a magnitude beyond `reference.0` has probability
    /// `reference.1` on each side.
    pub(crate) fn new(reference: (f64, f64)) -> Self {
        TailCalibrator {
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

    /// Samples held.
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    /// The fit of one side: `below` for deviations under the baseline.
    pub(crate) fn fit(&self, below: bool) -> Option<&TailFit> {
        self.fits[usize::from(!below)].as_ref()
    }

    /// Record one z-score.
    pub(crate) fn push(&mut self, z: f64) {
        if !z.is_finite() {
            return;
        }
        let z = z.clamp(-1e6, 1e6) as f32;
        if self.buf.len() < CAPACITY {
            if self.buf.capacity() == 0 {
                self.buf.reserve_exact(CAPACITY);
            }
            self.buf.push(z);
        } else {
            self.buf[self.next] = z;
            self.next = (self.next + 1) % CAPACITY;
        }
        self.since_fit += 1;
        if self.buf.len() >= MIN_SAMPLES
            && (self.since_fit >= REFIT_EVERY || self.fits[0].is_none())
        {
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
        let (c_ref, p_ref) = self.reference;
        let lambda = n as f64 * p_ref;
        let mut scratch: Vec<f64> = Vec::with_capacity(n);
        for side in 0..2 {
            let sign = if side == 0 { -1.0 } else { 1.0 };
            scratch.clear();
            scratch.extend(self.buf.iter().map(|&z| sign * f64::from(z)));
            let exceed = scratch.iter().filter(|&&x| x > c_ref).count() as f64;
            self.rejected[side] = poisson_sf(exceed, lambda) < REJECT_P;
            self.fits[side] = fit_side(&mut scratch, k);
        }
    }
}

/// Significance at which the model's tail is refuted by the history.
const REJECT_P: f64 = 1e-3;

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

/// Fit the top `k` values of `xs` (magnitudes of one side). Reorders `xs`.
fn fit_side(xs: &mut [f64], k: usize) -> Option<TailFit> {
    let n = xs.len();
    // The (k+1)-th largest is the threshold; the k above it are the peaks.
    let pivot = n - k - 1;
    xs.select_nth_unstable_by(pivot, f64::total_cmp);
    let u = xs[pivot];
    let peaks = &mut xs[pivot + 1..];
    peaks.sort_unstable_by(f64::total_cmp);
    let kf = peaks.len() as f64;
    let (mut a0, mut a1) = (0.0, 0.0);
    for (j, &x) in peaks.iter().enumerate() {
        let y = x - u;
        let p = (j as f64 + 1.0 - 0.35) / kf;
        a0 += y;
        a1 += (1.0 - p) * y;
    }
    a0 /= kf;
    a1 /= kf;
    let d = a0 - 2.0 * a1;
    if !(a0 > 1e-9 && d > 1e-12) {
        // All peaks equal (a discrete series): an exponential tail with a small scale.
        return Some(TailFit {
            u,
            share: kf / n as f64,
            sigma: a0.max(1e-3),
            xi: 0.0,
            n,
        });
    }
    let k_hw = a0 / d - 2.0;
    let sigma = 2.0 * a0 * a1 / d;
    let xi = (-k_hw).clamp(XI_MIN, XI_MAX);
    // Keep the mean excess when the shape is clamped: sigma = mean * (1 - xi).
    let sigma = if (-k_hw - xi).abs() > 1e-12 {
        a0 * (1.0 - xi)
    } else {
        sigma
    };
    Some(TailFit {
        u,
        share: kf / n as f64,
        sigma: sigma.max(1e-6),
        xi,
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
        let mut c = TailCalibrator::new((3.0, 0.00135));
        for _ in 0..CAPACITY {
            let e = -rng.uniform().ln();
            let z = if rng.uniform() < 0.5 { e } else { -e };
            c.push(z);
        }
        let fit = c.fit(false).copied().expect("fitted");
        // Laplace: P(Z > x) = exp(-x) / 2.
        let q = 1e-5;
        let want = -(2.0 * q).ln();
        let got = fit.quantile(q);
        assert!((got - want).abs() < 2.5, "{got} vs {want}, {fit:?}");
        assert!(fit.xi.abs() < 0.3, "{fit:?}");
    }

    #[test]
    fn a_pareto_tail_has_a_positive_shape_and_a_far_threshold() {
        let mut rng = Lcg(11);
        let mut c = TailCalibrator::new((3.0, 0.00135));
        for _ in 0..CAPACITY {
            let x = rng.uniform().powf(-1.0 / 3.0) - 1.0; // Pareto with index 3: xi = 1/3
            c.push(x);
        }
        let fit = c.fit(false).copied().expect("fitted");
        assert!(fit.xi > 0.1, "{fit:?}");
        assert!(fit.quantile(1e-5) > 20.0, "{fit:?}");
    }
}
