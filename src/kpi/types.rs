//! Small domain value types shared by the model loader, the detector and the API.
//!
//! Pure: std only. They parse from strings (`FromStr`) and carry no wire format.

use std::fmt;
use std::str::FromStr;

/// What a KPI measures, which decides the noise model the detector uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Events per bucket (orders, sign-ups): Poisson or overdispersed noise; a missing bucket is 0.
    Count,
    /// `numerator / denominator` per bucket (payment success rate): binomial noise that depends
    /// on the denominator.
    Ratio,
    /// A level (revenue, queue length): robust relative spread.
    Gauge,
}

/// Which deviations matter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Only drops below the band.
    Down,
    /// Only rises above the band.
    Up,
    /// Both.
    Both,
}

impl Direction {
    /// Whether a deviation of this sign (`below == true` for a drop) is of interest.
    pub fn watches(self, below: bool) -> bool {
        match self {
            Direction::Down => below,
            Direction::Up => !below,
            Direction::Both => true,
        }
    }
}

/// One sensitivity knob in (0, 1): higher flags more. `low`, `medium` and `high` are named points.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Sensitivity(f64);

impl Sensitivity {
    /// The named `low` setting.
    pub const LOW: Sensitivity = Sensitivity(0.25);
    /// The named `medium` setting (the default).
    pub const MEDIUM: Sensitivity = Sensitivity(0.5);
    /// The named `high` setting.
    pub const HIGH: Sensitivity = Sensitivity(0.75);

    /// A sensitivity from a number strictly between 0 and 1.
    pub fn new(value: f64) -> Result<Self, ParseError> {
        if value > 0.0 && value < 1.0 {
            Ok(Sensitivity(value))
        } else {
            Err(ParseError::new(
                "sensitivity",
                &value.to_string(),
                "a number strictly between 0 and 1, or low | medium | high",
            ))
        }
    }

    /// The value in (0, 1).
    pub fn get(self) -> f64 {
        self.0
    }
}

impl Default for Sensitivity {
    fn default() -> Self {
        Sensitivity::MEDIUM
    }
}

/// A value that did not parse into one of the types here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    what: &'static str,
    got: String,
    expected: &'static str,
}

impl ParseError {
    fn new(what: &'static str, got: &str, expected: &'static str) -> Self {
        ParseError {
            what,
            got: got.to_owned(),
            expected,
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {} {:?}: expected {}",
            self.what, self.got, self.expected
        )
    }
}

impl std::error::Error for ParseError {}

impl FromStr for Kind {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "count" => Ok(Kind::Count),
            "ratio" => Ok(Kind::Ratio),
            "gauge" => Ok(Kind::Gauge),
            _ => Err(ParseError::new("kind", s, "count | ratio | gauge")),
        }
    }
}

impl FromStr for Direction {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "down" => Ok(Direction::Down),
            "up" => Ok(Direction::Up),
            "both" => Ok(Direction::Both),
            _ => Err(ParseError::new("direction", s, "down | up | both")),
        }
    }
}

impl FromStr for Sensitivity {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "low" => Ok(Sensitivity::LOW),
            "medium" => Ok(Sensitivity::MEDIUM),
            "high" => Ok(Sensitivity::HIGH),
            other => match other.parse::<f64>() {
                Ok(v) => Sensitivity::new(v),
                Err(_) => Err(ParseError::new(
                    "sensitivity",
                    s,
                    "low | medium | high, or a number strictly between 0 and 1",
                )),
            },
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Count => "count",
            Kind::Ratio => "ratio",
            Kind::Gauge => "gauge",
        })
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Down => "down",
            Direction::Up => "up",
            Direction::Both => "both",
        })
    }
}

impl fmt::Display for Sensitivity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensitivity_parses_names_and_numbers_and_rejects_the_rest() {
        assert_eq!("high".parse::<Sensitivity>(), Ok(Sensitivity::HIGH));
        assert_eq!("0.9".parse::<Sensitivity>().map(Sensitivity::get), Ok(0.9));
        assert!("1".parse::<Sensitivity>().is_err());
        assert!("0".parse::<Sensitivity>().is_err());
        assert!("loud".parse::<Sensitivity>().is_err());
    }

    #[test]
    fn direction_watches_only_its_side() {
        assert!(Direction::Down.watches(true));
        assert!(!Direction::Down.watches(false));
        assert!(Direction::Both.watches(false));
    }
}
