//! Silences (made through the API, with an author and a comment, until an end time) and
//! recurring maintenance windows (in config). A silenced alert is still recorded; its
//! messages are stored as `silenced` instead of being sent. Pure.

use std::collections::BTreeMap;

use super::routing::RouteConfig;
pub use crate::config::MaintenanceWindow;
use chrono::{DateTime, Datelike, NaiveTime, TimeZone, Utc, Weekday};

/// A silence as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Silence {
    /// Id.
    pub id: i64,
    /// Label matchers (`value`, `!value`, `~regex`).
    pub matchers: BTreeMap<String, String>,
    /// Start, unix seconds.
    pub starts_at: i64,
    /// End, unix seconds (exclusive).
    pub ends_at: i64,
}

fn all_match(matchers: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    let route = RouteConfig {
        matchers: matchers.clone(),
        ..RouteConfig::default()
    };
    super::routing::route_matches(&route, labels).unwrap_or(false)
}

impl Silence {
    /// Active at `now` and matching `labels`.
    pub fn silences(&self, labels: &BTreeMap<String, String>, now: i64) -> bool {
        self.starts_at <= now && now < self.ends_at && all_match(&self.matchers, labels)
    }
}

impl MaintenanceWindow {
    /// Check the window's fields; returns the problems.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        for (what, t) in [("start", &self.start), ("end", &self.end)] {
            if NaiveTime::parse_from_str(t, "%H:%M").is_err() {
                p.push(format!("maintenance {:?}: {what} {t:?} is not HH:MM", self.name));
            }
        }
        if self.timezone.parse::<chrono_tz::Tz>().is_err() {
            p.push(format!(
                "maintenance {:?}: unknown timezone {:?}",
                self.name, self.timezone
            ));
        }
        for d in &self.weekdays {
            if d.parse::<Weekday>().is_err() {
                p.push(format!(
                    "maintenance {:?}: {d:?} is not a weekday (mon … sun)",
                    self.name
                ));
            }
        }
        p
    }

    /// In the window at `now` and matching `labels`.
    pub fn covers(&self, labels: &BTreeMap<String, String>, now: DateTime<Utc>) -> bool {
        let (Ok(start), Ok(end), Ok(tz)) = (
            NaiveTime::parse_from_str(&self.start, "%H:%M"),
            NaiveTime::parse_from_str(&self.end, "%H:%M"),
            self.timezone.parse::<chrono_tz::Tz>(),
        ) else {
            return false;
        };
        let local = tz.from_utc_datetime(&now.naive_utc());
        let time = local.time();
        // A window past midnight belongs to the day it started on.
        let (inside, day) = if start <= end {
            (start <= time && time < end, local.weekday())
        } else if time >= start {
            (true, local.weekday())
        } else {
            (time < end, local.weekday().pred())
        };
        let day_ok = self.weekdays.is_empty()
            || self
                .weekdays
                .iter()
                .any(|d| d.parse::<Weekday>().is_ok_and(|w| w == day));
        inside && day_ok && all_match(&self.matchers, labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> BTreeMap<String, String> {
        [("kpi", "orders"), ("team", "checkout")]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("valid")
            .with_timezone(&Utc)
    }

    #[test]
    fn a_silence_applies_only_between_its_times_and_to_matching_alerts() {
        let s = Silence {
            id: 1,
            matchers: [("team".to_owned(), "checkout".to_owned())].into(),
            starts_at: 100,
            ends_at: 200,
        };
        assert!(s.silences(&labels(), 150));
        assert!(!s.silences(&labels(), 200), "expired");
        assert!(!s.silences(&labels(), 99), "not yet");
        let other: BTreeMap<String, String> = [("team".to_owned(), "payments".to_owned())].into();
        assert!(!s.silences(&other, 150));
    }

    #[test]
    fn a_weekly_window_follows_its_timezone_across_dst() {
        let w = MaintenanceWindow {
            name: "db upgrade".to_owned(),
            matchers: BTreeMap::new(),
            weekdays: vec!["sun".to_owned()],
            start: "02:00".to_owned(),
            end: "04:00".to_owned(),
            timezone: "Europe/Berlin".to_owned(),
        };
        assert!(w.validate().is_empty());
        // Sunday 2026-03-22 (CET, UTC+1): 02:30 local = 01:30 UTC.
        assert!(w.covers(&labels(), at("2026-03-22T01:30:00Z")));
        assert!(!w.covers(&labels(), at("2026-03-22T03:30:00Z")), "05:30 local");
        // Sunday 2026-04-05 (CEST, UTC+2): 03:30 local = 01:30 UTC; 00:30 UTC is 02:30 local.
        assert!(w.covers(&labels(), at("2026-04-05T00:30:00Z")));
        assert!(!w.covers(&labels(), at("2026-04-06T00:30:00Z")), "a Monday");
    }

    #[test]
    fn a_window_past_midnight_belongs_to_its_start_day() {
        let w = MaintenanceWindow {
            name: "nightly".to_owned(),
            matchers: BTreeMap::new(),
            weekdays: vec!["sat".to_owned()],
            start: "23:00".to_owned(),
            end: "01:00".to_owned(),
            timezone: "UTC".to_owned(),
        };
        assert!(w.covers(&labels(), at("2026-03-21T23:30:00Z")), "Saturday 23:30");
        assert!(
            w.covers(&labels(), at("2026-03-22T00:30:00Z")),
            "Sunday 00:30, still Saturday's"
        );
        assert!(!w.covers(&labels(), at("2026-03-22T23:30:00Z")), "Sunday 23:30");
    }
}
