//! Root cause: which slices explain a change of a KPI's total. Pure (no IO); used by
//! `pipeline` (the incident and its message) and `api` (`/api/kpis/{id}/breakdown`).
//!
//! The method is Adtributor's (Bhagwan et al., NSDI 2014), on the expected values of each
//! slice's own baseline:
//!
//! - **Contribution** of a slice: its part of the total's deviation from expected. Counts
//!   (and summed gauges): `actual − expected`. Ratios: `(rate − expected rate) ×
//!   attempts / Σattempts`, so the slices' contributions add up exactly to the deviation of
//!   Σnumerator/Σdenominator from Σ(expected rate × attempts)/Σattempts. Mean gauges:
//!   `(actual − expected) / n`. Extremes (max/min gauges) do not decompose: no explanation.
//! - **Explanatory power** (`share`): contribution / the total's deviation. Within one
//!   dimension the shares add up to 1.
//! - **Surprise**: the Jensen–Shannon divergence between the slice's expected and actual
//!   share of the total (of the numerators, for ratios): how unexpected its change is.
//!
//! Slices of several dimensions (`country × payment_method`) are also rolled up per
//! dimension (contributions add up, so `payment_method=card` gets the sum of its cells).
//! Per dimension, the candidate set is built in order of surprise from slices that explain at
//! least [`MIN_SHARE`] each until together they explain [`ENOUGH_SHARE`]; the dimension
//! whose candidate set is most surprising explains the change. Its slices, by share, are the
//! top contributors: "Payment success −5.8 points; payment_method=card −17.0 points explains
//! 91%".

use std::collections::BTreeMap;

use crate::format::{self, ValueFormat};
use crate::kpi::{Aggregation, Kind};

/// A slice explains a change only if it explains at least this share of it…
pub const MIN_SHARE: f64 = 0.1;
/// …and a dimension's candidate set is complete once it explains this much.
pub const ENOUGH_SHARE: f64 = 0.67;

/// One slice at one bucket: its reading, in band units (a ratio as a fraction).
#[derive(Debug, Clone, PartialEq)]
pub struct Slice {
    /// The slice's dimension values (a JSON object, as series are keyed).
    pub dims: String,
    /// Observed value.
    pub actual: f64,
    /// Expected value from the slice's own baseline (not finite while it warms up).
    pub expected: f64,
    /// The denominator behind a ratio (ignored for counts and gauges).
    pub weight: f64,
}

/// One slice's part in a change of the total.
#[derive(Debug, Clone, PartialEq)]
pub struct Contribution {
    /// Dimension values (JSON object).
    pub dims: String,
    /// `payment_method=card`.
    pub label: String,
    /// Observed value of the slice (band units).
    pub actual: f64,
    /// Its expected value.
    pub expected: f64,
    /// Its contribution to the total's deviation (the total's band units).
    pub contribution: f64,
    /// Contribution / the total's deviation (explanatory power); 0 when the total did not move.
    pub share: f64,
    /// Jensen–Shannon divergence of its expected and actual share of the total.
    pub surprise: f64,
    /// Its expected share of the total's volume (counts), attempts (ratios) or slices (mean gauges).
    pub weight_share: f64,
}

impl Contribution {
    /// The slice's own deviation from expected (band units).
    pub fn deviation(&self) -> f64 {
        self.actual - self.expected
    }
}

/// How the slices of a bucket explain the total's change.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// The total's actual value (the roll-up of the slices).
    pub actual: f64,
    /// The roll-up of the slices' expected values in `dimension` (else in the finest
    /// dimension): each dimension's slices have baselines of their own, so each dimension
    /// rolls up to its own expected total (see `rollups`).
    pub expected: f64,
    /// Per dimension: the roll-up of its slices' (actual, expected) values. Within a
    /// dimension, the contributions add up to `actual − expected` exactly.
    pub rollups: BTreeMap<String, (f64, f64)>,
    /// The dimension that explains the change best (`payment_method`); `None` when the
    /// total did not move or no dimension explains it.
    pub dimension: Option<String>,
    /// The top contributors (of `dimension`), by share.
    pub top: Vec<Contribution>,
    /// Every slice's contribution, per dimension (`country`, `payment_method`, and
    /// `country, payment_method` for the cells of a cross-product), largest |contribution|
    /// first. In each dimension the contributions add up to `actual − expected`.
    pub by_dimension: BTreeMap<String, Vec<Contribution>>,
}

impl Explanation {
    /// The total's deviation from the slices' expectations.
    pub fn deviation(&self) -> f64 {
        self.actual - self.expected
    }

    /// Every slice's contribution keyed by its dimension values.
    pub fn contribution_of(&self, dims: &str) -> Option<&Contribution> {
        self.by_dimension.values().flatten().find(|c| c.dims == dims)
    }
}

/// Additive sums of one slice (or roll-up): numerator-like actual and expected, weight.
#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    actual: f64,
    expected: f64,
    weight: f64,
    n: f64,
}

/// Explain the total's change at one bucket by its slices' readings (total excluded). `None`
/// when the KPI's total does not decompose (max/min gauges) or no slice has a baseline yet.
pub fn explain(kind: Kind, aggregation: Aggregation, slices: &[Slice]) -> Option<Explanation> {
    if kind == Kind::Gauge && !aggregation.additive() {
        return None;
    }
    // Per dimension set ("country" or "country, payment_method"), per slice: additive sums.
    let mut partitions: BTreeMap<String, BTreeMap<String, Sums>> = BTreeMap::new();
    for r in slices {
        if crate::slices::is_total(&r.dims) || !r.actual.is_finite() || !r.expected.is_finite() {
            continue;
        }
        let Ok(dims) = serde_json::from_str::<BTreeMap<String, String>>(&r.dims) else {
            continue;
        };
        let w = if kind == Kind::Ratio {
            r.weight.max(0.0)
        } else {
            1.0
        };
        let sums = Sums {
            actual: r.actual * w,
            expected: r.expected * w,
            weight: w,
            n: 1.0,
        };
        let set = dims.keys().cloned().collect::<Vec<_>>().join(", ");
        add(partitions.entry(set).or_default(), &r.dims, sums);
        if dims.len() > 1 {
            for (k, v) in &dims {
                let key = serde_json::to_string(&BTreeMap::from([(k, v)])).unwrap_or_default();
                add(partitions.entry(format!("~{k}")).or_default(), &key, sums);
            }
        }
    }
    // Marginals of cells ("~country") only where that dimension is not sliced on its own.
    let own: Vec<String> = partitions
        .keys()
        .filter(|k| !k.starts_with('~'))
        .cloned()
        .collect();
    partitions = partitions
        .into_iter()
        .filter_map(|(k, v)| match k.strip_prefix('~') {
            Some(d) if own.iter().any(|o| o == d) => None,
            Some(d) => Some((d.to_owned(), v)),
            None => Some((k, v)),
        })
        .collect();
    if partitions.is_empty() {
        return None;
    }

    let mut by_dimension = BTreeMap::new();
    let mut rollups = BTreeMap::new();
    for (dim, members) in &partitions {
        let (contributions, actual, expected) = contributions(kind, members);
        rollups.insert(dim.clone(), (actual, expected));
        by_dimension.insert(dim.clone(), contributions);
    }

    // Adtributor: per single dimension, the most surprising slices that each explain enough.
    let mut best: Option<(f64, String, Vec<Contribution>)> = None;
    let mut fallback: Option<(f64, String, Contribution)> = None;
    for (dim, cs) in by_dimension.iter().filter(|(d, _)| !d.contains(',')) {
        let mut by_surprise: Vec<&Contribution> = cs.iter().collect();
        by_surprise.sort_by(|a, b| b.surprise.total_cmp(&a.surprise));
        let (mut set, mut explained, mut surprise) = (Vec::new(), 0.0, 0.0);
        for c in by_surprise.into_iter().filter(|c| c.share >= MIN_SHARE) {
            set.push(c.clone());
            explained += c.share;
            surprise += c.surprise;
            if explained >= ENOUGH_SHARE {
                break;
            }
        }
        if explained >= ENOUGH_SHARE && best.as_ref().is_none_or(|(s, _, _)| surprise > *s) {
            best = Some((surprise, dim.clone(), set));
        }
        if let Some(top) = cs.iter().max_by(|a, b| a.share.total_cmp(&b.share)) {
            if top.share >= MIN_SHARE && fallback.as_ref().is_none_or(|(s, _, _)| top.share > *s) {
                fallback = Some((top.share, dim.clone(), top.clone()));
            }
        }
    }
    let (dimension, mut top) = match (best, fallback) {
        (Some((_, d, set)), _) => (Some(d), set),
        (None, Some((_, d, c))) => (Some(d), vec![c]),
        (None, None) => (None, Vec::new()),
    };
    top.sort_by(|a, b| b.share.total_cmp(&a.share));
    // The totals of the explaining dimension, else of the finest slices.
    let (actual, expected) = dimension
        .as_ref()
        .and_then(|d| rollups.get(d))
        .or_else(|| {
            rollups
                .iter()
                .max_by_key(|(d, _)| d.matches(',').count())
                .map(|(_, r)| r)
        })
        .copied()
        .unwrap_or((f64::NAN, f64::NAN));
    Some(Explanation {
        actual,
        expected,
        rollups,
        dimension,
        top,
        by_dimension,
    })
}

fn add(into: &mut BTreeMap<String, Sums>, key: &str, s: Sums) {
    let e = into.entry(key.to_owned()).or_default();
    e.actual += s.actual;
    e.expected += s.expected;
    e.weight += s.weight;
    e.n += s.n;
}

/// The contributions of one partition of the total, and the total's actual and expected
/// value (band units).
fn contributions(kind: Kind, members: &BTreeMap<String, Sums>) -> (Vec<Contribution>, f64, f64) {
    let sum = members.values().fold(Sums::default(), |mut t, s| {
        t.actual += s.actual;
        t.expected += s.expected;
        t.weight += s.weight;
        t.n += s.n;
        t
    });
    // The divisor turning additive sums into the total's band units.
    let scale = match kind {
        Kind::Ratio => sum.weight,
        Kind::Gauge if sum.n > 1.0 => sum.n,
        _ => 1.0,
    };
    let div = |x: f64, by: f64| if by > 0.0 { x / by } else { f64::NAN };
    let (actual, expected) = (div(sum.actual, scale), div(sum.expected, scale));
    let deviation = actual - expected;
    let mut out: Vec<Contribution> = members
        .iter()
        .map(|(dims, s)| {
            let contribution = div(s.actual - s.expected, scale);
            let own = match kind {
                Kind::Ratio => s.weight,
                _ => s.n,
            };
            // Cells rolled up into a gauge dimension are means of their cells.
            let own = if kind == Kind::Count || (kind == Kind::Gauge && own <= 1.0) {
                1.0
            } else {
                own
            };
            Contribution {
                dims: dims.clone(),
                label: format::series_label(dims),
                actual: div(s.actual, own),
                expected: div(s.expected, own),
                contribution,
                share: if deviation.abs() > 1e-12 && contribution.is_finite() {
                    contribution / deviation
                } else {
                    0.0
                },
                surprise: js(div(s.expected, sum.expected), div(s.actual, sum.actual)),
                weight_share: match kind {
                    Kind::Ratio => div(s.weight, sum.weight),
                    Kind::Count => div(s.expected, sum.expected),
                    Kind::Gauge => div(s.n, sum.n),
                },
            }
        })
        .collect();
    out.sort_by(|a, b| b.contribution.abs().total_cmp(&a.contribution.abs()));
    (out, actual, expected)
}

/// Jensen–Shannon divergence of two shares (0 when either is undefined).
fn js(p: f64, q: f64) -> f64 {
    if !(p.is_finite() && q.is_finite()) || p < 0.0 || q < 0.0 {
        return 0.0;
    }
    let m = (p + q) / 2.0;
    let term = |x: f64| if x > 0.0 && m > 0.0 { x * (x / m).ln() } else { 0.0 };
    0.5 * (term(p) + term(q))
}

/// "payment_method=card −17.0 points explains 91%" for each top contributor (at most `n`).
pub fn contributors_line(fmt: ValueFormat<'_>, e: &Explanation, n: usize) -> Option<String> {
    let parts: Vec<String> = e
        .top
        .iter()
        .take(n)
        .map(|c| {
            let change = fmt.change(c.actual, c.expected).unwrap_or_default();
            format!(
                "{} {change} explains {}%",
                c.label,
                format::grouped(c.share * 100.0, 0)
            )
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(dims: &str, actual: f64, expected: f64, weight: f64) -> Slice {
        Slice {
            dims: dims.to_owned(),
            actual,
            expected,
            weight,
        }
    }

    /// The must-show shop: card success 97 % → 80 % on 30 % of attempts, the rest steady,
    /// across two countries (cells of the cross-product).
    fn card_drop() -> Vec<Slice> {
        let cell = |c: &str, m: &str| format!(r#"{{"country":"{c}","payment_method":"{m}"}}"#);
        vec![
            r(&cell("DE", "card"), 0.80, 0.97, 200.0),
            r(&cell("FR", "card"), 0.80, 0.97, 100.0),
            r(&cell("DE", "paypal"), 0.955, 0.96, 500.0),
            r(&cell("FR", "paypal"), 0.962, 0.96, 200.0),
        ]
    }

    #[test]
    fn contributions_add_up_to_the_totals_deviation_in_every_dimension() {
        let e = explain(Kind::Ratio, Aggregation::Mean, &card_drop()).expect("explained");
        // Σnum/Σden vs Σ(expected rate × attempts)/Σattempts, by hand.
        let actual = (0.80 * 300.0 + 0.955 * 500.0 + 0.962 * 200.0) / 1000.0;
        let expected = (0.97 * 300.0 + 0.96 * 700.0) / 1000.0;
        assert!((e.actual - actual).abs() < 1e-12 && (e.expected - expected).abs() < 1e-12);
        assert_eq!(
            e.by_dimension.keys().collect::<Vec<_>>(),
            ["country", "country, payment_method", "payment_method"]
        );
        for (dim, cs) in &e.by_dimension {
            // Cells and their marginals share the cells' baselines: one total.
            let (a, x) = e.rollups[dim];
            assert!(
                (a - actual).abs() < 1e-12 && (x - expected).abs() < 1e-12,
                "{dim}"
            );
            let sum: f64 = cs.iter().map(|c| c.contribution).sum();
            assert!(
                (sum - e.deviation()).abs() < 1e-12,
                "{dim}: {sum} vs {}",
                e.deviation()
            );
            let shares: f64 = cs.iter().map(|c| c.share).sum();
            assert!((shares - 1.0).abs() < 1e-9, "{dim}: shares add up to {shares}");
        }
    }

    #[test]
    fn the_card_drop_is_explained_by_payment_method_card() {
        let e = explain(Kind::Ratio, Aggregation::Mean, &card_drop()).expect("explained");
        assert_eq!(e.dimension.as_deref(), Some("payment_method"));
        let card = &e.top[0];
        assert_eq!(card.label, "payment_method=card");
        // -17 points on 30 % of attempts = -5.1 points of a -5.31 point change (paypal moved
        // -0.25 and +0.04 points).
        assert!((card.contribution - (-0.051)).abs() < 1e-12, "{card:?}");
        assert!((e.deviation() - (-0.0531)).abs() < 1e-12, "{e:?}");
        assert!((card.share - 0.051 / 0.0531).abs() < 1e-9, "{card:?}");
        assert!((card.actual - 0.80).abs() < 1e-12 && (card.expected - 0.97).abs() < 1e-12);
        assert!((card.weight_share - 0.3).abs() < 1e-12);
        let line = contributors_line(
            ValueFormat {
                kind: Kind::Ratio,
                unit: None,
            },
            &e,
            2,
        )
        .expect("a line");
        assert_eq!(line, "payment_method=card -17.0 points explains 96%");
    }

    #[test]
    fn a_count_drop_of_one_country_is_its_own_and_countries_that_did_not_move_are_not_named() {
        let slices = [
            r(r#"{"country":"DE"}"#, 480.0, 500.0, 1.0),
            r(r#"{"country":"FR"}"#, 305.0, 300.0, 1.0),
            r(r#"{"country":"LU"}"#, 0.0, 100.0, 1.0),
        ];
        let e = explain(Kind::Count, Aggregation::Mean, &slices).expect("explained");
        assert_eq!((e.actual, e.expected), (785.0, 900.0));
        let sum: f64 = e.by_dimension["country"].iter().map(|c| c.contribution).sum();
        assert_eq!(sum, e.deviation());
        assert_eq!(e.top.len(), 1, "{:?}", e.top);
        assert_eq!(e.top[0].label, "country=LU");
        assert!((e.top[0].share - 100.0 / 115.0).abs() < 1e-12);
        assert!((e.top[0].weight_share - 100.0 / 900.0).abs() < 1e-12);
        assert!(e.top[0].surprise > e.by_dimension["country"][1].surprise);
    }

    #[test]
    fn dimensions_sliced_on_their_own_roll_up_to_their_own_expected_total() {
        // drilldown = ["payment_method", "country"]: each slice has its own baseline, so the
        // two dimensions expect slightly different totals; each adds up on its own.
        let slices = [
            r(r#"{"payment_method":"card"}"#, 0.7667, 0.9742, 300.0),
            r(r#"{"payment_method":"paypal"}"#, 0.9857, 0.9617, 700.0),
            r(r#"{"country":"DE"}"#, 0.91, 0.9653, 700.0),
            r(r#"{"country":"FR"}"#, 0.9400, 0.9531, 300.0),
        ];
        let e = explain(Kind::Ratio, Aggregation::Mean, &slices).expect("explained");
        assert_eq!(e.dimension.as_deref(), Some("payment_method"));
        for (dim, cs) in &e.by_dimension {
            let (a, x) = e.rollups[dim];
            let sum: f64 = cs.iter().map(|c| c.contribution).sum();
            assert!((sum - (a - x)).abs() < 1e-12, "{dim}");
            let shares: f64 = cs.iter().map(|c| c.share).sum();
            assert!((shares - 1.0).abs() < 1e-9, "{dim}");
        }
        assert_eq!((e.actual, e.expected), e.rollups["payment_method"]);
        assert!(e.rollups["payment_method"].1 != e.rollups["country"].1);
        // Card explains more than the whole change: paypal moved the other way.
        assert!(e.top[0].share > 1.0, "{:?}", e.top[0]);
    }

    #[test]
    fn slices_without_a_baseline_and_extreme_gauges_explain_nothing() {
        assert_eq!(
            explain(
                Kind::Count,
                Aggregation::Mean,
                &[r(r#"{"c":"a"}"#, 1.0, f64::NAN, 1.0)]
            ),
            None
        );
        assert_eq!(
            explain(Kind::Gauge, Aggregation::Max, &[r(r#"{"c":"a"}"#, 1.0, 2.0, 1.0)]),
            None
        );
        let flat = explain(
            Kind::Count,
            Aggregation::Mean,
            &[r(r#"{"c":"a"}"#, 2.0, 2.0, 1.0)],
        )
        .expect("some");
        assert!(flat.top.is_empty() && flat.dimension.is_none());
    }

    #[test]
    fn mean_gauges_split_the_change_of_the_mean() {
        let slices = [
            r(r#"{"host":"a"}"#, 10.0, 10.0, 1.0),
            r(r#"{"host":"b"}"#, 30.0, 10.0, 1.0),
        ];
        let e = explain(Kind::Gauge, Aggregation::Mean, &slices).expect("explained");
        assert_eq!((e.actual, e.expected), (20.0, 10.0));
        assert_eq!(e.top[0].label, "host=b");
        assert_eq!(e.top[0].contribution, 10.0);
        assert_eq!(e.top[0].share, 1.0);
    }
}
