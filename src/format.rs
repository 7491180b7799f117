//! How KPI values read for people: one formatter for every channel (e-mail, chat, paging,
//! SMS, webhooks' `text`), the digest and the UI (which gets pre-formatted strings from the
//! API).
//!
//! - Ratios are percentages (`97.35%`), and a difference between two ratios is in
//!   percentage points (`-89.7 points`), never a relative change of a percentage.
//! - Counts and gauges get thousands separators (`12,400`) and the model's `unit`
//!   (`1,234.50 EUR`, `250 ms`); their differences are relative (`-18.2%`).
//! - No raw scores: how far a value is from its band is said in words ([`distance`]).
//!
//! Pure; depends only on `kpi`.

use chrono::{DateTime, Utc};

use crate::kpi::{Interval, Kind, KpiSpec};
use crate::reading::{Band, Reading};

/// The formatter for one KPI: its kind and unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueFormat<'a> {
    /// Count, ratio or gauge.
    pub kind: Kind,
    /// The model's `unit` (`EUR`, `ms`, …); ratios have none (they are in %).
    pub unit: Option<&'a str>,
}

impl<'a> ValueFormat<'a> {
    /// The formatter of `spec`.
    pub fn of(spec: &'a KpiSpec) -> Self {
        ValueFormat {
            kind: spec.kind,
            unit: spec.unit.as_deref(),
        }
    }

    /// A value: `97.35%`, `12,400 orders`, `1,234.50 EUR`; `n/a` when not finite.
    pub fn value(self, v: f64) -> String {
        if !v.is_finite() {
            return "n/a".to_owned();
        }
        let number = match self.kind {
            Kind::Ratio => return format!("{}%", grouped(v * 100.0, 2)),
            Kind::Count if v.abs() >= 10.0 || (v - v.round()).abs() < 1e-9 => grouped(v, 0),
            Kind::Count => grouped(v, 1),
            Kind::Gauge if v.abs() >= 10_000.0 => grouped(v, 0),
            Kind::Gauge => grouped(v, 2),
        };
        match self.unit {
            Some(unit) => format!("{number} {unit}"),
            None => number,
        }
    }

    /// A value that may be missing: `no data` when it is.
    pub fn maybe(self, v: Option<f64>) -> String {
        match v.filter(|v| v.is_finite()) {
            Some(v) => self.value(v),
            None => "no data".to_owned(),
        }
    }

    /// How `value` differs from `reference`: ratios in percentage points (`-89.7 points`),
    /// others relative (`+21.8%`); `None` when there is no meaningful difference to give.
    pub fn change(self, value: f64, reference: f64) -> Option<String> {
        if !value.is_finite() || !reference.is_finite() {
            return None;
        }
        match self.kind {
            Kind::Ratio => {
                let points = (value - reference) * 100.0;
                let points = if points.abs() < 0.05 { 0.0 } else { points };
                Some(format!("{points:+.1} points"))
            }
            _ if reference.abs() > f64::EPSILON => {
                let pct = (value - reference) / reference.abs() * 100.0;
                let pct = if pct.abs() < 0.05 { 0.0 } else { pct };
                Some(format!("{pct:+.1}%"))
            }
            _ => None,
        }
    }

    /// The band's edges: `90.00% – 100.00%`.
    pub fn band(self, band: Band) -> String {
        format!("{} – {}", self.value(band.lower), self.value(band.upper))
    }
}

/// `12345.678` with `decimals` decimals and thousands separators: `12,345.68`. Never `-0`.
pub fn grouped(v: f64, decimals: usize) -> String {
    let text = format!("{:.*}", decimals, v.abs());
    let (int, frac) = match text.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (text.as_str(), None),
    };
    let mut out = String::with_capacity(text.len() + int.len() / 3 + 1);
    let zero = text.bytes().all(|b| b == b'0' || b == b'.');
    if v < 0.0 && !zero {
        out.push('-');
    }
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if let Some(f) = frac {
        out.push('.');
        out.push_str(f);
    }
    out
}

/// How far a reading's value is from its band, in words: `inside the band`, `just below the
/// band`, `well above the band`, `far below the band`.
pub fn distance(reading: &Reading) -> String {
    let Reading {
        value,
        band: Band {
            expected,
            lower,
            upper,
        },
    } = *reading;
    if !(value.is_finite() && lower.is_finite() && upper.is_finite()) {
        return "no band yet".to_owned();
    }
    if (lower..=upper).contains(&value) {
        return "inside the band".to_owned();
    }
    let (side, edge) = if value < lower {
        ("below", lower)
    } else {
        ("above", upper)
    };
    // Distance beyond the edge, in units of the band's half-width on that side.
    let half = if expected.is_finite() {
        (edge - expected).abs()
    } else {
        (upper - lower).abs() / 2.0
    };
    let beyond = if half > f64::EPSILON {
        (value - edge).abs() / half
    } else {
        f64::INFINITY
    };
    let how = if beyond < 0.25 {
        "just"
    } else if beyond < 1.0 {
        "well"
    } else {
        "far"
    };
    format!("{how} {side} the band")
}

/// The dimension values of a series (its JSON object) as `country=DE, payment_method=card`;
/// empty for a KPI without dimensions (its total). The one way a slice is named for people:
/// subjects, bodies, chat, paging payloads, the UI's alert summaries, the digest, and the
/// `series` label of metrics.
pub fn series_label(dims: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(dims) {
        Ok(serde_json::Value::Object(map)) => map
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}={}",
                    v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
        _ => String::new(),
    }
}

/// `every 5 minutes`, `every hour`, `every day`, `every 2 days`.
pub fn every(interval: Interval) -> String {
    let secs = interval.secs();
    let (n, unit) = if secs.is_multiple_of(86_400) {
        (secs / 86_400, "day")
    } else if secs.is_multiple_of(3600) {
        (secs / 3600, "hour")
    } else {
        (secs / 60, "minute")
    };
    if n == 1 {
        format!("every {unit}")
    } else {
        format!("every {n} {unit}s")
    }
}

/// A unix time for people, in UTC: `2026-11-24 10:05 UTC`.
pub fn utc(ts: i64) -> String {
    DateTime::<Utc>::from_timestamp(ts, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| ts.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATIO: ValueFormat<'static> = ValueFormat {
        kind: Kind::Ratio,
        unit: None,
    };
    const COUNT: ValueFormat<'static> = ValueFormat {
        kind: Kind::Count,
        unit: None,
    };
    const EUR: ValueFormat<'static> = ValueFormat {
        kind: Kind::Gauge,
        unit: Some("EUR"),
    };

    #[test]
    fn ratios_read_as_percentages_and_their_differences_as_points() {
        assert_eq!(RATIO.value(0.9735), "97.35%");
        assert_eq!(RATIO.value(0.25), "25.00%");
        assert_eq!(RATIO.change(0.0765, 0.9735).as_deref(), Some("-89.7 points"));
        assert_eq!(RATIO.band(Band::new(f64::NAN, 0.9, 1.0)), "90.00% – 100.00%");
    }

    #[test]
    fn counts_and_gauges_get_separators_units_and_relative_changes() {
        assert_eq!(COUNT.value(1_234_567.4), "1,234,567");
        assert_eq!(COUNT.value(3.0), "3");
        assert_eq!(COUNT.value(2.46), "2.5");
        assert_eq!(COUNT.value(-12_345.0), "-12,345");
        assert_eq!(COUNT.value(-0.2), "-0.2");
        assert_eq!(COUNT.change(3.0, 16.0).as_deref(), Some("-81.2%"));
        assert_eq!(EUR.value(1234.5), "1,234.50 EUR");
        assert_eq!(EUR.value(123_456.7), "123,457 EUR");
        assert_eq!(EUR.value(-0.004), "0.00 EUR");
        assert_eq!(EUR.change(121.8, 100.0).as_deref(), Some("+21.8%"));
        assert_eq!(COUNT.change(1.0, 0.0), None);
        assert_eq!(COUNT.value(f64::NAN), "n/a");
        assert_eq!(COUNT.maybe(None), "no data");
    }

    #[test]
    fn distances_are_words_not_scores() {
        for ((value, expected, lower, upper), words) in [
            ((95.0, 100.0, 90.0, 110.0), "inside the band"),
            ((88.0, 100.0, 90.0, 110.0), "just below the band"),
            ((85.0, 100.0, 90.0, 110.0), "well below the band"),
            ((0.0, 150.0, 93.0, 207.0), "far below the band"),
            ((3.0, 16.0, 12.0, 20.0), "far below the band"),
            ((115.0, 100.0, 90.0, 110.0), "well above the band"),
        ] {
            let reading = Reading::new(value, Band::new(expected, lower, upper));
            assert_eq!(distance(&reading), words, "{reading:?}");
        }
    }

    #[test]
    fn intervals_and_series_read_naturally() {
        assert_eq!(every(Interval::parse("1d").expect("1d")), "every day");
        assert_eq!(every(Interval::parse("5m").expect("5m")), "every 5 minutes");
        assert_eq!(every(Interval::parse("1h").expect("1h")), "every hour");
        assert_eq!(series_label("{}"), "");
        assert_eq!(series_label(r#"{"country":"DE","n":3}"#), "country=DE, n=3");
        assert_eq!(
            series_label(r#"{"payment_method":"card"}"#),
            "payment_method=card"
        );
    }
}
