//! The one shape of "a bucket against its band": [`Band`] (expected value and the edges of the
//! single-bucket test) and [`Reading`] (an observed value with its band).
//!
//! The detector's output, the stored verdicts and anomalies, the outbox payloads, alert
//! messages and the API all carry these two types instead of their own copies of
//! value/expected/lower/upper (the store reads a row into a `Reading`: `store/series.rs`).
//!
//! Invariant: a number that is not known (no band while warming up, no value for a ratio over
//! zero attempts, a data-missing alert) is `NaN`, never a sentinel. In SQL it is `NULL`, in JSON
//! `null` (serde_json writes a non-finite `f64` as `null`; [`nan_if_null`] reads it back), and
//! the OpenAPI schema says `number | null`.

use serde::{Deserialize, Serialize};

/// The band a bucket is judged against. `NaN` fields: no band (yet).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Band {
    /// Expected value in band units (a ratio as a fraction); null while warming up.
    #[serde(deserialize_with = "nan_if_null")]
    #[schema(value_type = Option<f64>)]
    pub expected: f64,
    /// Lower edge: the smallest value the single-bucket test does not flag.
    #[serde(deserialize_with = "nan_if_null")]
    #[schema(value_type = Option<f64>)]
    pub lower: f64,
    /// Upper edge: the largest value the single-bucket test does not flag.
    #[serde(deserialize_with = "nan_if_null")]
    #[schema(value_type = Option<f64>)]
    pub upper: f64,
}

impl Band {
    /// No band: every number unknown.
    pub const NONE: Band = Band {
        expected: f64::NAN,
        lower: f64::NAN,
        upper: f64::NAN,
    };

    /// A band around `expected` from `lower` to `upper`.
    pub const fn new(expected: f64, lower: f64, upper: f64) -> Band {
        Band {
            expected,
            lower,
            upper,
        }
    }

    /// Whether both edges are known.
    pub fn has_edges(&self) -> bool {
        self.lower.is_finite() && self.upper.is_finite()
    }

    /// The band in other units: every number divided by `by` (a per-bucket rate from a
    /// coarser bucket, for example).
    #[must_use]
    pub fn divided(self, by: f64) -> Band {
        Band {
            expected: self.expected / by,
            lower: self.lower / by,
            upper: self.upper / by,
        }
    }

    /// The expected value, when known.
    pub fn expected(&self) -> Option<f64> {
        known(self.expected)
    }
}

/// Two bands are equal when each number is equal or unknown in both: an unknown number is
/// one state, not a NaN that differs from itself (a stored row reads back equal).
impl PartialEq for Band {
    fn eq(&self, other: &Band) -> bool {
        same(self.expected, other.expected) && same(self.lower, other.lower) && same(self.upper, other.upper)
    }
}

fn same(a: f64, b: f64) -> bool {
    a == b || (a.is_nan() && b.is_nan())
}

/// An observed value and the band it was judged against.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Reading {
    /// Observed value in band units (a ratio as a fraction); null when undefined.
    #[serde(deserialize_with = "nan_if_null")]
    #[schema(value_type = Option<f64>)]
    pub value: f64,
    /// What was expected, and the band's edges.
    #[serde(flatten)]
    pub band: Band,
}

impl PartialEq for Reading {
    fn eq(&self, other: &Reading) -> bool {
        same(self.value, other.value) && self.band == other.band
    }
}

impl Reading {
    /// Nothing known.
    pub const NONE: Reading = Reading {
        value: f64::NAN,
        band: Band::NONE,
    };

    /// `value` against `band`.
    pub const fn new(value: f64, band: Band) -> Reading {
        Reading { value, band }
    }

    /// Whether the value is under the expected value (false when either is unknown).
    pub fn is_below_expected(&self) -> bool {
        self.value < self.band.expected
    }

    /// The value's change from the expected value, relative to it (`None` when either is
    /// unknown or the expected value is zero).
    pub fn relative_change(&self) -> Option<f64> {
        let e = self.band.expected;
        (self.value.is_finite() && e.is_finite() && e.abs() > f64::EPSILON).then(|| (self.value - e) / e)
    }
}

/// `Some(x)` for a finite `x`, `None` for NaN or an infinity: the unknown number as SQL and
/// the API's `Option` fields want it.
pub fn known(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// `None` for NaN (unknown), the number otherwise, infinities included (an unbounded band
/// edge is a fact worth keeping): how a reading's numbers are bound to SQL.
pub fn stored(x: f64) -> Option<f64> {
    (!x.is_nan()).then_some(x)
}

/// JSON has no NaN: serde_json writes a NaN `f64` as `null`, and this reads it back as NaN.
pub fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(<Option<f64> as Deserialize>::deserialize(d)?.unwrap_or(f64::NAN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_number_travels_through_json_as_null_and_comes_back_as_nan() {
        let r = Reading::new(0.8, Band::new(0.97, f64::NAN, 1.0));
        let json = serde_json::to_value(r).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"value": 0.8, "expected": 0.97, "lower": null, "upper": 1.0})
        );
        let back: Reading = serde_json::from_value(json).unwrap();
        assert_eq!(back.value, 0.8);
        assert!(back.band.lower.is_nan());
        assert_eq!(back.band.upper, 1.0);
        assert_eq!(back, r, "an unknown number is equal to itself");
        assert_ne!(back, Reading::new(0.8, Band::new(0.97, 0.9, 1.0)));
    }

    #[test]
    fn a_relative_change_needs_both_numbers_and_a_nonzero_expectation() {
        let change = Reading::new(0.8, Band::new(1.0, 0.9, 1.1))
            .relative_change()
            .unwrap();
        assert!((change + 0.2).abs() < 1e-12);
        assert_eq!(
            Reading::new(0.8, Band::new(0.0, 0.0, 0.1)).relative_change(),
            None
        );
        assert_eq!(
            Reading::new(f64::NAN, Band::new(1.0, 0.9, 1.1)).relative_change(),
            None
        );
        assert!(Reading::new(0.8, Band::new(1.0, 0.9, 1.1)).is_below_expected());
        assert!(!Reading::new(0.8, Band::NONE).is_below_expected());
    }
}
