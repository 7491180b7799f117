//! Serde helpers for the few detector-state fields whose types carry no serde impl of their
//! own, so [`super::OnlineDetector`] can be checkpointed (see `pipeline::checkpoint`).
//!
//! The state types derive `Serialize`/`Deserialize` in place; this module only covers the
//! outside types: the `kpi` value types in [`super::DetectorConfig`] (which carry no wire
//! format themselves), `statrs`'s `Normal`, and the calibrators' `&'static` reference tables
//! (written as which table, read back as that same table). Decoding checks what it can:
//! an unknown tag or an out-of-range sensitivity is an error, never a silently different
//! detector. Pure: no IO.

use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `Kind` as one byte: 0 count, 1 ratio, 2 gauge.
pub(super) mod kind {
    use super::*;
    use crate::kpi::Kind;

    pub(crate) fn serialize<S: Serializer>(k: &Kind, s: S) -> Result<S::Ok, S::Error> {
        let tag: u8 = match k {
            Kind::Count => 0,
            Kind::Ratio => 1,
            Kind::Gauge => 2,
        };
        tag.serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Kind, D::Error> {
        match u8::deserialize(d)? {
            0 => Ok(Kind::Count),
            1 => Ok(Kind::Ratio),
            2 => Ok(Kind::Gauge),
            other => Err(D::Error::custom(format!("unknown kind tag {other}"))),
        }
    }
}

/// `Direction` as one byte: 0 down, 1 up, 2 both.
pub(super) mod direction {
    use super::*;
    use crate::kpi::Direction;

    pub(crate) fn serialize<S: Serializer>(dir: &Direction, s: S) -> Result<S::Ok, S::Error> {
        let tag: u8 = match dir {
            Direction::Down => 0,
            Direction::Up => 1,
            Direction::Both => 2,
        };
        tag.serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Direction, D::Error> {
        match u8::deserialize(d)? {
            0 => Ok(Direction::Down),
            1 => Ok(Direction::Up),
            2 => Ok(Direction::Both),
            other => Err(D::Error::custom(format!("unknown direction tag {other}"))),
        }
    }
}

/// `Sensitivity` as its value, checked again on the way back in.
pub(super) mod sensitivity {
    use super::*;
    use crate::kpi::Sensitivity;

    pub(crate) fn serialize<S: Serializer>(v: &Sensitivity, s: S) -> Result<S::Ok, S::Error> {
        v.get().serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Sensitivity, D::Error> {
        Sensitivity::new(f64::deserialize(d)?).map_err(|e| D::Error::custom(e.to_string()))
    }
}

/// `statrs::distribution::Normal` as its mean and standard deviation.
pub(super) mod normal {
    use super::*;
    use statrs::distribution::Normal;
    use statrs::statistics::Distribution as _;

    pub(crate) fn serialize<S: Serializer>(n: &Normal, s: S) -> Result<S::Ok, S::Error> {
        match (n.mean(), n.std_dev()) {
            (Some(mean), Some(sd)) => (mean, sd).serialize(s),
            _ => Err(S::Error::custom("a normal distribution without mean or spread")),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Normal, D::Error> {
        let (mean, sd) = <(f64, f64)>::deserialize(d)?;
        Normal::new(mean, sd).map_err(|e| D::Error::custom(e.to_string()))
    }
}

/// A calibrator's reference table as which of the detector's tables it is (by content).
pub(super) mod reference {
    use super::*;
    use crate::baseline::{CUSUM_REFERENCE, Z_REFERENCE};

    /// The tables a calibrator may check against, by tag.
    fn tables() -> [&'static [(f64, f64)]; 2] {
        [Z_REFERENCE, CUSUM_REFERENCE]
    }

    pub(crate) fn serialize<S: Serializer>(r: &&'static [(f64, f64)], s: S) -> Result<S::Ok, S::Error> {
        match tables().iter().position(|t| *t == *r) {
            Some(tag) => (tag as u8).serialize(s),
            None => Err(S::Error::custom(
                "a calibrator reference table the detector does not define",
            )),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<&'static [(f64, f64)], D::Error> {
        let tag = u8::deserialize(d)?;
        tables()
            .get(usize::from(tag))
            .copied()
            .ok_or_else(|| D::Error::custom(format!("unknown calibrator reference tag {tag}")))
    }
}
