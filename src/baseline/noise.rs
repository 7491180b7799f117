//! Noise models: turn an observation and its expectation into a signed z-score.
//!
//! Counts use the Poisson distribution and ratios the binomial (both from `statrs`), evaluated
//! with the mid-p convention so that a discrete value sitting exactly on the expectation scores
//! about zero; overdispersion is applied afterwards by dividing by the square root of the
//! estimated variance inflation. Gauges use a plain standardised residual. Pure: no IO.

use statrs::distribution::{Binomial, ContinuousCDF, Discrete, DiscreteCDF, Normal, Poisson};

/// Below this tail probability the probit loses precision, so the signed root of the
/// likelihood-ratio statistic (which tracks the probit closely in the far tail) takes over.
const TINY_TAIL: f64 = 1e-15;

/// Where the Pearson residual is accurate enough that the exact tail changes no decision:
/// at least this much base variance and a residual inside `PEARSON_ZONE`.
const EXACT_BELOW_VARIANCE: f64 = 50.0;
/// Beyond this many events the normal approximation is exact to many digits, and the special
/// functions behind the exact tails are not asked to work at extreme arguments.
const EXACT_MAX_EVENTS: f64 = 1e7;
const PEARSON_ZONE: f64 = 2.0;

/// Signed probit of a discrete observation from its mid-p tails.
fn probit_from_tails(lower_mid: f64, upper_mid: f64, signed_root: f64, normal: &Normal) -> f64 {
    if lower_mid <= upper_mid {
        if lower_mid < TINY_TAIL || !lower_mid.is_finite() {
            -(signed_root.abs().max(8.0))
        } else {
            normal.inverse_cdf(lower_mid)
        }
    } else if upper_mid < TINY_TAIL || !upper_mid.is_finite() {
        signed_root.abs().max(8.0)
    } else {
        -normal.inverse_cdf(upper_mid)
    }
}

/// Signed z-score of a count `y` against a Poisson mean `mu` (before overdispersion).
pub(crate) fn count_z(y: f64, mu: f64, normal: &Normal) -> f64 {
    let y = y.max(0.0);
    let mu = mu.max(1e-9);
    let pearson = (y - mu) / mu.sqrt();
    if !pearson.is_finite() {
        return 0.0;
    }
    if (mu >= EXACT_BELOW_VARIANCE && pearson.abs() < PEARSON_ZONE)
        || mu > EXACT_MAX_EVENTS
        || y > EXACT_MAX_EVENTS
    {
        return pearson;
    }
    let Ok(dist) = Poisson::new(mu) else {
        return pearson;
    };
    let k = y.round() as u64;
    let pmf = dist.pmf(k);
    // Only the tail on the observation's side is computed; the other is its complement.
    let (lower_mid, upper_mid) = if (k as f64) < mu {
        let lower = dist.cdf(k) - 0.5 * pmf;
        (lower, 1.0 - lower)
    } else {
        let upper = dist.sf(k) + 0.5 * pmf;
        (1.0 - upper, upper)
    };
    let deviance = if y > 0.0 {
        2.0 * (y * (y / mu).ln() - (y - mu))
    } else {
        2.0 * mu
    };
    let root = deviance.max(0.0).sqrt() * (y - mu).signum();
    probit_from_tails(lower_mid, upper_mid, root, normal)
}

/// Signed z-score of `k` successes out of `n` against a binomial proportion `p`.
pub(crate) fn ratio_z(k: f64, n: f64, p: f64, normal: &Normal) -> f64 {
    let n = n.round().max(0.0);
    let k = k.round().clamp(0.0, n);
    let p = p.clamp(1e-9, 1.0 - 1e-9);
    let var = n * p * (1.0 - p);
    if !(var > 0.0 && var.is_finite()) {
        return 0.0;
    }
    let pearson = (k - n * p) / var.sqrt();
    if (var >= EXACT_BELOW_VARIANCE && pearson.abs() < PEARSON_ZONE) || n > EXACT_MAX_EVENTS {
        return pearson;
    }
    let Ok(dist) = Binomial::new(p, n as u64) else {
        return pearson;
    };
    let ku = k as u64;
    let pmf = dist.pmf(ku);
    let (lower_mid, upper_mid) = if k < n * p {
        let lower = dist.cdf(ku) - 0.5 * pmf;
        (lower, 1.0 - lower)
    } else {
        let upper = dist.sf(ku) + 0.5 * pmf;
        (1.0 - upper, upper)
    };
    let term = |obs: f64, exp: f64| {
        if obs > 0.0 {
            obs * (obs / exp).ln()
        } else {
            0.0
        }
    };
    let deviance = 2.0 * (term(k, n * p) + term(n - k, n * (1.0 - p)));
    let root = deviance.max(0.0).sqrt() * (k - n * p).signum();
    probit_from_tails(lower_mid, upper_mid, root, normal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normal() -> Normal {
        Normal::new(0.0, 1.0).expect("standard normal")
    }

    #[test]
    fn a_count_on_its_mean_scores_about_zero() {
        assert!(count_z(5.0, 5.0, &normal()).abs() < 0.3);
        assert!(count_z(0.0, 0.05, &normal()).abs() < 0.3);
    }

    #[test]
    fn a_zero_count_when_two_hundred_are_expected_is_extreme() {
        assert!(count_z(0.0, 200.0, &normal()) < -8.0);
    }

    #[test]
    fn three_failures_out_of_four_is_weak_evidence_but_the_same_share_of_four_thousand_is_not() {
        let weak = ratio_z(1.0, 4.0, 0.95, &normal());
        let strong = ratio_z(1000.0, 4000.0, 0.95, &normal());
        assert!(weak > -4.0, "{weak}");
        assert!(strong < -20.0, "{strong}");
    }
}
