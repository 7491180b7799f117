//! One incident per problem: the verdicts of a KPI's total and its slices at one bucket
//! become one [`Judged`] bucket for the alert planning ([`crate::alerting::plan`]) of the
//! grouped incident (`slice_alerts = "grouped"`, the default). Pure.
//!
//! - The bucket is flagged when the total or any slice is; the incident stays open while any
//!   of them has not recovered (so it resolves when the worst slice is back).
//! - Messages speak of the total when it is outside its band, else of the worst slice.
//! - The cause names the top contributors ([`crate::rootcause`]) when the total moved, and a
//!   slice's share of the total when only the slice did.

use std::collections::BTreeMap;

use crate::alerting::plan::Judged;
use crate::alerting::BucketVerdict;
use crate::format::{self, ValueFormat};
use crate::kpi::KpiSpec;
use crate::rootcause::{self, Slice};
use crate::slices::{is_total, TOTAL};

/// Group the fresh verdicts of a KPI's series (by bucket start, each with its series key).
pub(super) fn group(spec: &KpiSpec, buckets: BTreeMap<i64, Vec<(String, BucketVerdict)>>) -> Vec<Judged> {
    buckets
        .into_iter()
        .filter(|(_, vs)| !vs.is_empty())
        .map(|(t, vs)| group_bucket(spec, t, &vs))
        .collect()
}

fn group_bucket(spec: &KpiSpec, t: i64, vs: &[(String, BucketVerdict)]) -> Judged {
    let total = vs.iter().find(|(d, _)| is_total(d));
    let mut flagged: Vec<&(String, BucketVerdict)> =
        vs.iter().filter(|(d, v)| !is_total(d) && v.outside).collect();
    // Worst first: flagged by this bucket before merely still open, then by score.
    flagged.sort_by(|a, b| {
        b.1.anomaly
            .cmp(&a.1.anomaly)
            .then(b.1.score.total_cmp(&a.1.score))
    });
    let (dims, mut verdict) = match (total, flagged.first()) {
        (Some((d, v)), _) if v.outside => (d.clone(), v.clone()),
        (_, Some((d, v))) => (d.clone(), v.clone()),
        (Some((d, v)), None) => (d.clone(), v.clone()),
        // `vs` is never empty (see `group`).
        (None, None) => (vs[0].0.clone(), vs[0].1.clone()),
    };
    let any_anomaly = vs.iter().find(|(_, v)| v.anomaly);
    if !verdict.anomaly {
        if let Some((_, a)) = any_anomaly {
            verdict.trigger = verdict.trigger.or(a.trigger);
            verdict.below = verdict.below.or(a.below);
        }
    }
    verdict.anomaly = any_anomaly.is_some();
    verdict.outside = vs.iter().any(|(_, v)| v.outside);
    verdict.judged = vs.iter().any(|(_, v)| v.judged);
    verdict.since = vs
        .iter()
        .filter(|(_, v)| v.anomaly)
        .filter_map(|(_, v)| v.since)
        .min()
        .or(verdict.since);
    let readings: Vec<Slice> = vs
        .iter()
        .filter(|(d, _)| !is_total(d))
        .map(|(d, v)| Slice {
            dims: d.clone(),
            actual: v.reading.value,
            expected: v.reading.band.expected,
            weight: v.volume,
        })
        .collect();
    let explanation = rootcause::explain(spec.kind, spec.dimensions.aggregation, &readings);
    let cause = explanation
        .as_ref()
        .and_then(|e| cause(spec, total.map(|(_, v)| v), &dims, e));
    Judged {
        t,
        verdict,
        dims,
        affected: flagged.iter().map(|(d, _)| format::series_label(d)).collect(),
        cause,
    }
}

/// The cause line of a grouped bucket whose message speaks of `dims`.
fn cause(
    spec: &KpiSpec,
    total: Option<&BucketVerdict>,
    dims: &str,
    e: &rootcause::Explanation,
) -> Option<String> {
    let fmt = ValueFormat::of(spec);
    let total_change = total
        .and_then(|v| fmt.change(v.reading.value, v.reading.band.expected))
        .or_else(|| fmt.change(e.actual, e.expected))
        .unwrap_or_default();
    if is_total(dims) {
        let line = rootcause::contributors_line(fmt, e, 3)?;
        return Some(format!("{} {total_change}; {line}", spec.title));
    }
    let c = e.contribution_of(dims)?;
    let mut out = format!(
        "{} is {}% of the total",
        c.label,
        format::grouped(c.weight_share * 100.0, 1)
    );
    let inside = total.is_some_and(|v| !v.outside);
    out.push_str(&format!(
        "; the total ({}) moved {total_change}{}",
        spec.title,
        if inside { ", inside its band" } else { "" }
    ));
    if e.deviation().abs() > f64::EPSILON && c.share.is_finite() && c.share > 0.0 {
        out.push_str(&format!(
            ", of which {} explains {}%",
            c.label,
            format::grouped(c.share * 100.0, 0)
        ));
    }
    Some(out)
}

/// The key of the series a grouped incident is stored under: the total.
pub(super) const GROUP_DIMS: &str = TOTAL;

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn spec(kind: &str) -> KpiSpec {
        KpiSpec::parse(
            "pay",
            &format!("title = \"Payment success\"\nsource = \"s\"\nkind = \"{kind}\"\ninterval = \"5m\""),
            "SELECT 1 WHERE :start < :end",
            Path::new("m"),
        )
        .expect("valid")
    }

    fn v(value: f64, expected: f64, volume: f64, anomaly: bool, score: f64) -> BucketVerdict {
        BucketVerdict {
            volume,
            score,
            ..BucketVerdict::plain(600, value, expected, expected - 0.02, expected + 0.02, anomaly)
        }
    }

    #[test]
    fn a_total_drop_and_its_slice_are_one_bucket_naming_the_top_contributor() {
        let vs = vec![
            (TOTAL.to_owned(), v(0.909, 0.963, 1000.0, true, 0.99)),
            (
                r#"{"payment_method":"card"}"#.to_owned(),
                v(0.80, 0.97, 300.0, true, 0.999),
            ),
            (
                r#"{"payment_method":"paypal"}"#.to_owned(),
                v(0.955, 0.96, 700.0, false, 0.3),
            ),
        ];
        let out = group(&spec("ratio"), BTreeMap::from([(600, vs)]));
        assert_eq!(out.len(), 1);
        let j = &out[0];
        assert_eq!(j.dims, TOTAL, "the message speaks of the total");
        assert!(j.verdict.anomaly && j.verdict.outside);
        assert_eq!(j.affected, ["payment_method=card"]);
        let cause = j.cause.as_deref().expect("a cause");
        assert!(
            cause.starts_with("Payment success -5.4 points; payment_method=card -17.0 points explains 94%"),
            "{cause}"
        );
    }

    #[test]
    fn a_slice_only_drop_speaks_of_the_slice_and_its_share_of_the_total() {
        let vs = vec![
            (TOTAL.to_owned(), v(885.0, 900.0, 885.0, false, 0.6)),
            (
                r#"{"country":"DE"}"#.to_owned(),
                v(500.0, 500.0, 500.0, false, 0.1),
            ),
            (
                r#"{"country":"FR"}"#.to_owned(),
                v(385.0, 382.0, 385.0, false, 0.2),
            ),
            (r#"{"country":"LU"}"#.to_owned(), v(0.0, 18.0, 0.0, true, 0.999)),
        ];
        let out = group(&spec("count"), BTreeMap::from([(600, vs)]));
        let j = &out[0];
        assert_eq!(j.dims, r#"{"country":"LU"}"#);
        assert_eq!(j.verdict.reading.value, 0.0);
        assert!(j.verdict.anomaly);
        let cause = j.cause.as_deref().expect("a cause");
        assert!(cause.starts_with("country=LU is 2.0% of the total"), "{cause}");
        assert!(cause.contains("inside its band"), "{cause}");
    }

    #[test]
    fn the_group_stays_open_until_the_worst_slice_is_back() {
        let mut card = v(0.95, 0.97, 300.0, false, 0.4);
        card.outside = true; // the detector's incident on card is still open
        let vs = vec![
            (TOTAL.to_owned(), v(0.96, 0.963, 1000.0, false, 0.2)),
            (r#"{"payment_method":"card"}"#.to_owned(), card),
        ];
        let j = &group(&spec("ratio"), BTreeMap::from([(600, vs)]))[0];
        assert!(!j.verdict.anomaly && j.verdict.outside, "{j:?}");
        assert_eq!(j.dims, r#"{"payment_method":"card"}"#);
    }
}
