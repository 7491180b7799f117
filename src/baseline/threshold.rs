//! Turns the sensitivity knob into alarm thresholds. Pure arithmetic: no IO.
//!
//! Sensitivity `s` in (0, 1) names a nominal false-alarm budget of `10^(4 s - 4)` alarms per
//! week on a series that behaves like its noise model (`low` ≈ 0.001, `medium` ≈ 0.01,
//! `high` ≈ 0.1). Half of the budget goes to the single-bucket test, half to the CUSUM.

use statrs::distribution::{ContinuousCDF, Normal};

/// CUSUM reference value in z units: shifts well above this accumulate.
pub(crate) const CUSUM_K: f64 = 0.75;

/// Thresholds derived from a sensitivity and the bucket length.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub(crate) struct Thresholds {
    /// |z| at or beyond which one bucket alone is an anomaly.
    pub(crate) z_bucket: f64,
    /// CUSUM decision interval.
    pub(crate) cusum_h: f64,
    /// Negative log-probability at which a run of empty count buckets is an anomaly.
    pub(crate) zero_run_nll: f64,
    /// One-sided tail probability per bucket of the single-bucket test.
    pub(crate) alpha: f64,
}

/// The nominal number of false alarms per week for a sensitivity in (0, 1).
pub(crate) fn false_alarms_per_week(sensitivity: f64) -> f64 {
    10f64.powf(4.0 * sensitivity - 4.0)
}

/// Largest per-bucket tail probability the single-bucket test may flag at: `P(Z > 3)`.
pub(crate) const MAX_ALPHA: f64 = 0.001_349_898_031_630_094_5;

/// The sensitivity whose budget is `budget` false alarms per week: the inverse of
/// [`false_alarms_per_week`].
pub(crate) fn sensitivity_for_budget(budget: f64) -> f64 {
    if budget <= 0.0 {
        return f64::NEG_INFINITY;
    }
    (budget.log10() + 4.0) / 4.0
}

/// Siegmund's approximation of the in-control average run length of a one-sided CUSUM on
/// standard normal increments with reference `k` and decision interval `h`.
pub(crate) fn cusum_arl0(k: f64, h: f64) -> f64 {
    let b = h + 1.166;
    ((2.0 * k * b).exp() - 2.0 * k * b - 1.0) / (2.0 * k * k)
}

impl Thresholds {
    /// Thresholds for `sensitivity` when a week holds `buckets_per_week` buckets.
    pub(crate) fn new(sensitivity: f64, buckets_per_week: f64, normal: &Normal) -> Self {
        let budget = false_alarms_per_week(sensitivity) / 2.0;
        let alpha = (budget / buckets_per_week.max(1.0)).clamp(1e-12, 0.01);
        let z_bucket = (-normal.inverse_cdf(alpha)).max(3.0);
        let target = buckets_per_week.max(1.0) / budget;
        let (mut lo, mut hi) = (1.0_f64, 60.0_f64);
        for _ in 0..60 {
            let mid = 0.5 * (lo + hi);
            if cusum_arl0(CUSUM_K, mid) < target {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Thresholds {
            z_bucket,
            cusum_h: hi.max(3.0),
            zero_run_nll: -normal.cdf(-z_bucket).ln(),
            alpha,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn higher_sensitivity_gives_lower_thresholds() {
        let normal = Normal::new(0.0, 1.0).expect("standard normal");
        let low = Thresholds::new(0.25, 2016.0, &normal);
        let high = Thresholds::new(0.75, 2016.0, &normal);
        assert!(high.z_bucket < low.z_bucket);
        assert!(high.cusum_h < low.cusum_h);
        assert!(false_alarms_per_week(0.5) > false_alarms_per_week(0.25));
    }
}
