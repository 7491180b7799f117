//! How a KPI with dimension columns is sliced: [`Dimensions`] (the `drilldown`,
//! `aggregation`, `slice_alerts` and `slice_min_volume` settings of `model.toml`).
//!
//! A query whose rows carry dimension columns (`country`, `payment_method`) yields the KPI's
//! total (the roll-up of every row: counts summed, ratios as Σnumerator/Σdenominator, gauges
//! by [`Aggregation`]) and one series per slice: per combination of all dimension values, or,
//! with `drilldown`, per value of each listed dimension on its own. Pure data; parsed here,
//! applied by `slices` and `pipeline`.

use std::fmt;

use super::Kind;

/// How a gauge's rows are combined into one value per bucket (and into the total).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Aggregation {
    /// The mean of the rows (the default: a temperature, a queue length per host).
    #[default]
    Mean,
    /// The sum of the rows (a balance per account).
    Sum,
    /// The largest row (a worst-case latency).
    Max,
    /// The smallest row.
    Min,
}

impl Aggregation {
    /// `mean`, `sum`, `max` or `min`.
    pub fn as_str(self) -> &'static str {
        match self {
            Aggregation::Mean => "mean",
            Aggregation::Sum => "sum",
            Aggregation::Max => "max",
            Aggregation::Min => "min",
        }
    }

    /// Whether a change of the total is the sum of its slices' changes (so root cause can
    /// say how much of it each slice explains): sums and means are, extremes are not.
    pub fn additive(self) -> bool {
        matches!(self, Aggregation::Mean | Aggregation::Sum)
    }
}

impl fmt::Display for Aggregation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a KPI's slices alert on their own or together with the total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SliceAlerts {
    /// One incident per KPI and problem: the total's and its slices' anomalies open one
    /// incident (one message per receiver, routed by the KPI's rules) that lists the affected
    /// slices and the top contributors, and resolves when the worst slice has recovered.
    #[default]
    Grouped,
    /// Every series (the total and each slice) has incidents of its own, routed by its
    /// dimension values.
    Separate,
}

impl SliceAlerts {
    /// `grouped` or `separate`.
    pub fn as_str(self) -> &'static str {
        match self {
            SliceAlerts::Grouped => "grouped",
            SliceAlerts::Separate => "separate",
        }
    }
}

/// The dimension settings of a KPI.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Dimensions {
    /// Dimensions rolled up separately (`drilldown = ["payment_method", "country"]`): one
    /// slice per value of each; empty = one slice per combination of every dimension column.
    pub drilldown: Vec<String>,
    /// How gauge rows combine (counts always sum, ratios always Σnum/Σden).
    pub aggregation: Aggregation,
    /// Grouped (default) or separate slice incidents.
    pub slice_alerts: SliceAlerts,
    /// The volume a slice's bucket needs to be judged (`None`: the KPI's `min_volume`).
    pub slice_min_volume: Option<f64>,
}

/// The value pooling the slices beyond `max_series`: `country=other`.
pub const OTHER: &str = "other";

/// Parse the dimension settings of a model; problems come as (field, message).
pub fn parse(
    kind: Option<Kind>,
    drilldown: Option<Vec<String>>,
    aggregation: Option<&str>,
    slice_alerts: Option<&str>,
    slice_min_volume: Option<f64>,
) -> Result<Dimensions, Vec<(&'static str, String)>> {
    let mut problems = Vec::new();
    let drilldown = drilldown.unwrap_or_default();
    for (i, d) in drilldown.iter().enumerate() {
        if d.trim().is_empty() || d.len() > 64 {
            problems.push(("drilldown", format!("{d:?} is not a column name")));
        }
        if drilldown[..i].contains(d) {
            problems.push(("drilldown", format!("{d:?} is listed twice")));
        }
    }
    let aggregation = match aggregation {
        None => Aggregation::default(),
        Some(a) if kind.is_some_and(|k| k != Kind::Gauge) => {
            problems.push((
                "aggregation",
                format!("{a:?}: only a gauge has an aggregation (counts add up, ratios are Σnumerator/Σdenominator)"),
            ));
            Aggregation::default()
        }
        Some("mean") => Aggregation::Mean,
        Some("sum") => Aggregation::Sum,
        Some("max") => Aggregation::Max,
        Some("min") => Aggregation::Min,
        Some(other) => {
            problems.push((
                "aggregation",
                format!("{other:?}: expected mean | sum | max | min"),
            ));
            Aggregation::default()
        }
    };
    let slice_alerts = match slice_alerts {
        None | Some("grouped") => SliceAlerts::Grouped,
        Some("separate") => SliceAlerts::Separate,
        Some(other) => {
            problems.push(("slice_alerts", format!("{other:?}: expected grouped | separate")));
            SliceAlerts::Grouped
        }
    };
    if let Some(v) = slice_min_volume {
        if !(v.is_finite() && v >= 0.0) {
            problems.push(("slice_min_volume", "must be a number >= 0".to_owned()));
        }
    }
    if problems.is_empty() {
        Ok(Dimensions {
            drilldown,
            aggregation,
            slice_alerts,
            slice_min_volume,
        })
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_full_cross_product_grouped_and_a_mean() {
        let d = parse(Some(Kind::Ratio), None, None, None, None).expect("valid");
        assert_eq!(d, Dimensions::default());
        assert_eq!(d.slice_alerts, SliceAlerts::Grouped);
    }

    #[test]
    fn bad_settings_name_the_field() {
        let err = parse(
            Some(Kind::Count),
            Some(vec!["country".into(), "country".into()]),
            Some("sum"),
            Some("sometimes"),
            Some(-1.0),
        )
        .expect_err("invalid");
        let fields: Vec<&str> = err.iter().map(|(f, _)| *f).collect();
        assert_eq!(
            fields,
            ["drilldown", "aggregation", "slice_alerts", "slice_min_volume"]
        );
        let gauge = parse(Some(Kind::Gauge), None, Some("median"), None, None).expect_err("invalid");
        assert!(gauge[0].1.contains("mean | sum | max | min"), "{gauge:?}");
        let sum = parse(Some(Kind::Gauge), None, Some("sum"), Some("separate"), Some(20.0)).expect("valid");
        assert_eq!(sum.aggregation, Aggregation::Sum);
        assert_eq!(sum.slice_alerts, SliceAlerts::Separate);
        assert_eq!(sum.slice_min_volume, Some(20.0));
    }
}
