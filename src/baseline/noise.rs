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

/// Where a second-order expansion of the probit is accurate enough that the exact tail changes
/// no decision: at least this much base variance and a residual inside `PEARSON_ZONE` (no test
/// fires there; the CUSUM and the calibration see the body through it). Measured against the
/// exact mid-p probit (scipy) over every count with |Pearson| < 2: the largest error is 0.024σ
/// at a mean of 10, 0.007σ at 20 and 0.005σ at 50 (the plain Pearson residual, used here before
/// with a threshold of 50: 0.16, 0.09 and 0.07σ); for binomials of variance 10 to 135 at
/// p = 0.03 to 0.99, at most 0.027σ (Pearson: 0.18σ). Moving the fast zone's edge from 50 to
/// 10 took the detector bench's fit from 1.79 s to 1.68 s and changed no flag on either dev set.
const EXACT_BELOW_VARIANCE: f64 = 10.0;
/// Beyond this many events the normal approximation is exact to many digits, and the special
/// functions behind the exact tails are not asked to work at extreme arguments.
const EXACT_MAX_EVENTS: f64 = 1e7;
const PEARSON_ZONE: f64 = 2.0;
/// From this mean on, a count's mid-p probit out to `WILSON_HILFERTY_ZONE` is the
/// Wilson–Hilferty cube-root transform of the gamma tail behind it (P(X <= k) = P(G(k + 1) > mu),
/// taken at k + 1/2 for the mid-p) instead of the exact tail: measured against the exact mid-p
/// probit (scipy) over every count with a probit within ±7.5, the largest error is 0.021σ at a
/// mean of 200, 0.007σ at 500 and 0.0003σ at 10,000 (unit test against `statrs` too). The
/// exact Poisson tails were a sixth of the detector bench's fit.
const WILSON_HILFERTY_MIN_MEAN: f64 = 200.0;
const WILSON_HILFERTY_ZONE: f64 = 7.5;

/// The probit of an observation `pearson` standard deviations from its mean under a
/// distribution of skewness `skew`: the Cornish–Fisher expansion to first order in the
/// skewness, `z = r - skew/6 (r^2 - 1)`, for the body of the distribution only.
fn cornish_fisher(pearson: f64, skew: f64) -> f64 {
    pearson - skew / 6.0 * (pearson * pearson - 1.0)
}

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
    if mu > EXACT_MAX_EVENTS || y > EXACT_MAX_EVENTS {
        return pearson;
    }
    if mu >= EXACT_BELOW_VARIANCE && pearson.abs() < PEARSON_ZONE {
        return cornish_fisher(pearson, 1.0 / mu.sqrt());
    }
    if mu >= WILSON_HILFERTY_MIN_MEAN {
        let a = y.round() + 0.5;
        let z = 3.0 * a.sqrt() * (1.0 - 1.0 / (9.0 * a) - (mu / a).cbrt());
        if z.abs() <= WILSON_HILFERTY_ZONE {
            return z;
        }
    }
    count_z_exact(y, mu, normal, pearson)
}

/// [`count_z`] from the exact Poisson tails (`statrs`), for `y >= 0`, `mu > 0` and finite
/// `pearson`.
fn count_z_exact(y: f64, mu: f64, normal: &Normal, pearson: f64) -> f64 {
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
    if n > EXACT_MAX_EVENTS {
        return pearson;
    }
    if var >= EXACT_BELOW_VARIANCE && pearson.abs() < PEARSON_ZONE {
        return cornish_fisher(pearson, (1.0 - 2.0 * p) / var.sqrt());
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

/// The Box-Cox profile log-likelihood of `lambda` for the changes from one value to the next
/// of positive `values` (the Jacobian taken for each change's later value): how well the
/// transform makes the noise the same size at every level, whatever the level's own pattern.
/// Compare it between lambdas on the same values; at least two values.
pub(crate) fn box_cox_of_changes(values: &[f64], lambda: f64) -> f64 {
    let transform = |x: f64| {
        if lambda == 0.0 {
            x.ln()
        } else {
            (x.powf(lambda) - 1.0) / lambda
        }
    };
    let n = values.len().saturating_sub(1).max(1) as f64;
    let (mut s, mut s2) = (0.0, 0.0);
    for w in values.windows(2) {
        let d = transform(w[1]) - transform(w[0]);
        s += d;
        s2 += d * d;
    }
    let var = ((s2 - s * s / n) / n).max(1e-300);
    let log_sum: f64 = values.iter().skip(1).map(|v| v.ln()).sum();
    -n / 2.0 * var.ln() + (lambda - 1.0) * log_sum
}

/// A t statistic with `nu` degrees of freedom as a standard normal score (Wallace 1959):
/// a spread estimated from few buckets makes a deviation less surprising than a known one.
pub(crate) fn t_to_z(t: f64, nu: f64) -> f64 {
    if !t.is_finite() || !nu.is_finite() {
        return t;
    }
    let nu = nu.max(1.0);
    let c = (8.0 * nu + 1.0) / (8.0 * nu + 3.0);
    t.signum() * c * (nu * (t * t / nu).ln_1p()).sqrt()
}

/// The inverse of [`t_to_z`].
pub(crate) fn z_to_t(z: f64, nu: f64) -> f64 {
    if !z.is_finite() || !nu.is_finite() {
        return z;
    }
    let nu = nu.max(1.0);
    let c = (8.0 * nu + 1.0) / (8.0 * nu + 3.0);
    let w = z / c;
    // Beyond ~700 the exponential overflows: the t is astronomically large anyway.
    let e = (w * w / nu).min(700.0);
    z.signum() * (nu * e.exp_m1()).sqrt()
}

/// The largest integer `y` in `[lo, hi]` with `f(y) < t`, for `f` increasing, searched from
/// `guess` (two or three evaluations when the guess is close: the bounds are only evaluated
/// when the search reaches them). `None` when even `f(lo) >= t`.
fn last_below(f: impl Fn(f64) -> f64, t: f64, guess: f64, lo: f64, hi: f64) -> Option<f64> {
    // NaN counts as flagged, so the search always ends.
    let below = |y: f64| {
        let v = f(y);
        !v.is_nan() && v < t
    };
    if lo.is_nan() || hi.is_nan() || lo > hi || t.is_nan() {
        return None;
    }
    let g = if guess.is_finite() {
        guess.round().clamp(lo, hi)
    } else {
        lo
    };
    // Bracket: below(a) and !below(b), with b = a + 1 at the end.
    let (mut a, mut b);
    if below(g) {
        a = g;
        let mut step = 1.0;
        loop {
            if a >= hi {
                return Some(hi);
            }
            let next = (a + step).min(hi);
            if !below(next) {
                b = next;
                break;
            }
            a = next;
            step *= 2.0;
        }
    } else {
        b = g;
        let mut step = 1.0;
        loop {
            if b <= lo {
                return None;
            }
            let next = (b - step).max(lo);
            if below(next) {
                a = next;
                break;
            }
            b = next;
            step *= 2.0;
        }
    }
    for _ in 0..128 {
        if b - a <= 1.0 {
            break;
        }
        let mid = ((a + b) / 2.0).floor();
        if mid <= a || mid >= b {
            break;
        }
        if below(mid) {
            a = mid;
        } else {
            b = mid;
        }
    }
    Some(a)
}

/// A Cornish-Fisher guess of the count whose Poisson probit is `z` (mean `mu`).
fn poisson_guess(mu: f64, z: f64) -> f64 {
    mu + z * mu.sqrt() + (z * z - 1.0) / 6.0
}

/// The counts the single-bucket test does not flag: the smallest and largest `y` with
/// `-t_lo < z(y) < t_hi`, where `z(y)` is the Poisson probit of `y` against `mu` divided by
/// `sqrt(d)` (the variance inflation). Exactly the decision the detector makes.
pub(crate) fn count_band(mu: f64, d: f64, t_lo: f64, t_hi: f64, normal: &Normal) -> (f64, f64) {
    let sd = d.max(1.0).sqrt();
    let z = |y: f64| count_z(y, mu, normal) / sd;
    let top = (mu * 50.0 + 1e4).min(1e15);
    let upper = last_below(z, t_hi, poisson_guess(mu, t_hi * sd), 0.0, top).unwrap_or(0.0);
    // The lowest unflagged count: one above the largest flagged one.
    let neg = |y: f64| -z(-y);
    let lower = match last_below(neg, t_lo, -poisson_guess(mu, -t_lo * sd), -top, 0.0) {
        // `neg(-y) < t_lo` means `z(y) > -t_lo`: the largest such -y is the smallest such y.
        Some(m) => -m,
        None => 0.0,
    };
    (lower.max(0.0), upper)
}

/// The successes out of `n` the single-bucket test does not flag against proportion `p` with
/// variance inflation `d`: the smallest and largest `k`.
pub(crate) fn ratio_band(n: f64, p: f64, d: f64, t_lo: f64, t_hi: f64, normal: &Normal) -> (f64, f64) {
    let sd = d.max(1.0).sqrt();
    let z = |k: f64| ratio_z(k, n, p, normal) / sd;
    let spread = (n * p * (1.0 - p)).max(0.0).sqrt();
    let upper = last_below(z, t_hi, n * p + t_hi * sd * spread, 0.0, n).unwrap_or(0.0);
    let neg = |k: f64| -z(-k);
    let lower = match last_below(neg, t_lo, -(n * p - t_lo * sd * spread), -n, 0.0) {
        Some(m) => -m,
        None => 0.0,
    };
    (lower.max(0.0), upper.min(n))
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

    /// The exact mid-p probit, as `count_z` computes it outside its fast zone.
    fn exact_count_z(k: u64, mu: f64) -> f64 {
        let d = Poisson::new(mu).expect("mean");
        let pmf = d.pmf(k);
        if (k as f64) < mu {
            normal().inverse_cdf(d.cdf(k) - 0.5 * pmf)
        } else {
            -normal().inverse_cdf(d.sf(k) + 0.5 * pmf)
        }
    }

    fn exact_ratio_z(k: u64, n: u64, p: f64) -> f64 {
        let d = Binomial::new(p, n).expect("binomial");
        let pmf = d.pmf(k);
        if (k as f64) < n as f64 * p {
            normal().inverse_cdf(d.cdf(k) - 0.5 * pmf)
        } else {
            -normal().inverse_cdf(d.sf(k) + 0.5 * pmf)
        }
    }

    #[test]
    fn the_fast_body_of_the_count_and_ratio_tails_stays_within_three_hundredths_of_exact() {
        // Every count within two standard deviations of means from the fast zone's edge up.
        for mu in [10.0, 13.7, 20.0, 50.0, 200.0, 5000.0] {
            let sd: f64 = f64::sqrt(mu);
            let lo = (mu - 2.0 * sd).ceil() as u64;
            let hi = (mu + 2.0 * sd).floor() as u64;
            for k in lo..=hi {
                let fast = count_z(k as f64, mu, &normal());
                let exact = exact_count_z(k, mu);
                assert!((fast - exact).abs() < 0.03, "mu {mu} k {k}: {fast} vs {exact}");
            }
        }
        // Skewed ratios too: a 97 % success rate on the fewest attempts the fast zone takes.
        for (n, p) in [(345u64, 0.97), (1011, 0.99), (345, 0.03), (40, 0.5), (5000, 0.9)] {
            let sd = (n as f64 * p * (1.0 - p)).sqrt();
            let mean = n as f64 * p;
            for k in (mean - 2.0 * sd).ceil() as u64..=(mean + 2.0 * sd).floor() as u64 {
                let fast = ratio_z(k as f64, n as f64, p, &normal());
                let exact = exact_ratio_z(k, n, p);
                assert!(
                    (fast - exact).abs() < 0.03,
                    "n {n} p {p} k {k}: {fast} vs {exact}"
                );
            }
        }
    }

    #[test]
    fn large_counts_beyond_the_body_stay_within_three_hundredths_of_exact_out_to_seven_and_a_half() {
        // Every count whose probit lies between 2 and 7.5 standard deviations out, on either
        // side, for means from the Wilson–Hilferty zone's edge up; and the far tail is exact.
        for mu in [200.0, 333.3, 1000.0, 20_000.0, 1e6] {
            let sd: f64 = f64::sqrt(mu);
            let lo = (mu - 9.0 * sd).max(0.0) as u64;
            let hi = (mu + 9.0 * sd) as u64;
            let mut checked = 0;
            for k in (lo..=hi).step_by((sd / 8.0).max(1.0) as usize) {
                let exact = exact_count_z(k, mu);
                if !(2.0..=7.5).contains(&exact.abs()) {
                    continue;
                }
                let fast = count_z(k as f64, mu, &normal());
                assert!((fast - exact).abs() < 0.03, "mu {mu} k {k}: {fast} vs {exact}");
                checked += 1;
            }
            assert!(checked > 50, "mu {mu}: {checked} counts checked");
            let zero = count_z(0.0, mu, &normal());
            assert!(zero < -19.0, "mu {mu}: nothing at all is {zero}");
        }
    }
}
