//! Bucket boundaries: the one place that knows where a KPI's buckets start and end.
//!
//! Intervals shorter than an hour tile UTC (epoch multiples). Intervals of an hour or more
//! tile the KPI's local time instead: a `1d` bucket runs from local midnight to local
//! midnight (23 or 25 hours on the days the clocks change), a `6h` bucket starts at local
//! 00:00, 06:00, 12:00 and 18:00, and an `Nd` bucket starts at a local midnight whose day
//! number since 1970-01-01 is a multiple of N. Where a boundary's wall-clock time within the
//! day occurs twice (the clocks go back) both instants are boundaries, so a `1h` bucket stays
//! one hour of real time (a day starts at the first of two midnights); where it does not
//! occur (the clocks go forward) the boundary is the instant the clocks jump. For UTC every
//! interval tiles epoch multiples, as before.
//!
//! [`Buckets`] answers `floor`, `end`, `prev`, `back`, `forward` and iterates bucket starts;
//! every `t += step` or `t.div_euclid(step)` on bucket boundaries in the crate goes through it
//! (`KpiSpec::buckets`). Pure; depends only on `chrono` and `chrono-tz`.

use chrono::{Datelike, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone};
use chrono_tz::Tz;

use super::Interval;

const HOUR: i64 = 3600;
const DAY: i64 = 86_400;
/// `NaiveDate::num_days_from_ce` of 1970-01-01.
const EPOCH_DAYS_FROM_CE: i64 = 719_163;

/// How a KPI's time is cut into buckets: its interval, aligned to UTC (sub-hour intervals,
/// or a UTC KPI) or to the wall clock of its timezone (an hour or more). See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buckets {
    interval: Interval,
    step: i64,
    /// `None`: UTC epoch multiples.
    tz: Option<Tz>,
}

impl Buckets {
    /// The buckets of `interval` in `tz`: local for an hour or more, UTC below.
    pub fn new(interval: Interval, tz: Tz) -> Self {
        let step = interval.secs_i64();
        let local = step >= HOUR && tz != chrono_tz::UTC;
        Buckets {
            interval,
            step,
            tz: local.then_some(tz),
        }
    }

    /// The buckets of `interval` at UTC epoch multiples.
    pub fn utc(interval: Interval) -> Self {
        Buckets {
            interval,
            step: interval.secs_i64(),
            tz: None,
        }
    }

    /// The interval these buckets are cut at (their nominal length).
    pub fn interval(self) -> Interval {
        self.interval
    }

    /// The timezone the boundaries follow, `None` when they are UTC epoch multiples.
    pub fn timezone(self) -> Option<Tz> {
        self.tz
    }

    /// The nominal length in seconds (the interval); a local bucket may be an hour or two
    /// shorter or longer.
    pub fn nominal_secs(self) -> i64 {
        self.step
    }

    /// Whether the boundaries follow a timezone's wall clock rather than UTC.
    pub fn is_local(self) -> bool {
        self.tz.is_some()
    }

    /// The start of the bucket containing `t`.
    pub fn floor(self, t: i64) -> i64 {
        let Some(tz) = self.tz else {
            return t.div_euclid(self.step) * self.step;
        };
        let Some(wall) = wall_of(tz, t) else {
            return t.div_euclid(self.step) * self.step;
        };
        let mut grid = self.grid_floor(wall);
        // In every real zone the first pass is the answer; the loop only guards against a
        // pathological zone where the grid point maps after `t`.
        for _ in 0..4 {
            match start_of(tz, grid, t, self.step < DAY) {
                Some(s) if s <= t => return s,
                _ => grid = self.grid_floor(grid - chrono::Duration::seconds(1)),
            }
        }
        t.div_euclid(HOUR) * HOUR
    }

    /// The end of the bucket containing `t` (the first boundary after `t`).
    pub fn end(self, t: i64) -> i64 {
        if self.tz.is_none() {
            return self.floor(t) + self.step;
        }
        // A local bucket is at most a few hours longer than nominal: start beyond the next
        // boundary and walk back to the first one after `t`.
        let mut b = self.floor(t.saturating_add(self.step + 3 * HOUR));
        loop {
            let before = self.floor(b - 1);
            if before <= t {
                return b;
            }
            b = before;
        }
    }

    /// The start of the bucket before the one containing `t`.
    pub fn prev(self, t: i64) -> i64 {
        self.floor(self.floor(t) - 1)
    }

    /// The start of the bucket `n` buckets before the one containing `t`.
    pub fn back(self, t: i64, n: i64) -> i64 {
        let f = self.floor(t);
        if self.tz.is_none() {
            return f - n.max(0) * self.step;
        }
        (0..n.max(0)).fold(f, |b, _| self.floor(b - 1))
    }

    /// The start of the bucket `n` buckets after the one containing `t`.
    pub fn forward(self, t: i64, n: i64) -> i64 {
        let f = self.floor(t);
        if self.tz.is_none() {
            return f + n.max(0) * self.step;
        }
        (0..n.max(0)).fold(f, |b, _| self.end(b))
    }

    /// The starts of the buckets that overlap `[from, to)`, oldest first (the first may
    /// start before `from` when `from` is not a boundary).
    pub fn starts(self, from: i64, to: i64) -> Starts {
        Starts {
            buckets: self,
            next: self.floor(from),
            to,
        }
    }

    /// How many buckets start in `[from, to)` when both are boundaries (about
    /// `(to - from) / interval` otherwise). Steps bucket by bucket for local buckets.
    pub fn count(self, from: i64, to: i64) -> i64 {
        if to <= from {
            return 0;
        }
        if self.tz.is_none() {
            return (to - from) / self.step;
        }
        self.starts(from, to).filter(|s| *s >= from).count() as i64
    }

    /// The grid point (a local wall-clock time) at or before `wall`.
    fn grid_floor(self, wall: NaiveDateTime) -> NaiveDateTime {
        if self.step % DAY == 0 {
            let days = self.step / DAY;
            let n = i64::from(wall.date().num_days_from_ce()) - EPOCH_DAYS_FROM_CE;
            let first = n - n.rem_euclid(days) + EPOCH_DAYS_FROM_CE;
            let date = i32::try_from(first)
                .ok()
                .and_then(NaiveDate::from_num_days_from_ce_opt)
                .unwrap_or(wall.date());
            date.and_time(NaiveTime::MIN)
        } else {
            use chrono::Timelike;
            let s = i64::from(wall.time().num_seconds_from_midnight());
            let floored = s - s.rem_euclid(self.step);
            wall.date().and_time(NaiveTime::MIN) + chrono::Duration::seconds(floored)
        }
    }
}

/// Iterator over bucket starts ([`Buckets::starts`]).
#[derive(Debug, Clone)]
pub struct Starts {
    buckets: Buckets,
    next: i64,
    to: i64,
}

impl Iterator for Starts {
    type Item = i64;

    fn next(&mut self) -> Option<i64> {
        if self.next >= self.to {
            return None;
        }
        let s = self.next;
        self.next = self.buckets.end(s);
        Some(s)
    }
}

/// The local wall-clock time of the instant `t`.
fn wall_of(tz: Tz, t: i64) -> Option<NaiveDateTime> {
    tz.timestamp_opt(t, 0).single().map(|d| d.naive_local())
}

/// The boundary instant of the grid point `grid` for a bucket containing `t`: the grid
/// point's instant; when the clocks went back over it, the first of its two instants, or
/// (`both`, for buckets shorter than a day, so that an hour stays an hour) the later one
/// when that is not after `t`; when the clocks jumped over it, the instant of the jump.
fn start_of(tz: Tz, grid: NaiveDateTime, t: i64, both: bool) -> Option<i64> {
    match tz.from_local_datetime(&grid) {
        LocalResult::Single(x) => Some(x.timestamp()),
        LocalResult::Ambiguous(a, b) => Some(if both && b.timestamp() <= t {
            b.timestamp()
        } else {
            a.timestamp()
        }),
        LocalResult::None => {
            // Every zone's jumps end on a quarter hour: the first quarter hour after `grid`
            // that exists is where the jump lands, and its instant is the jump's.
            (1..=16).find_map(|q| {
                tz.from_local_datetime(&(grid + chrono::Duration::minutes(15 * q)))
                    .earliest()
                    .map(|x| x.timestamp())
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s)
            .expect("rfc3339")
            .timestamp()
    }

    fn b(interval: &str, tz: &str) -> Buckets {
        Buckets::new(
            Interval::parse(interval).expect("interval"),
            tz.parse().expect("tz"),
        )
    }

    #[test]
    fn seoul_days_start_at_15_00_utc() {
        let day = b("1d", "Asia/Seoul");
        assert!(day.is_local());
        // 2026-06-10 10:00 KST is 01:00 UTC; the day began at 00:00 KST = 15:00 UTC before.
        let t = utc("2026-06-10T01:00:00Z");
        assert_eq!(day.floor(t), utc("2026-06-09T15:00:00Z"));
        assert_eq!(day.end(t), utc("2026-06-10T15:00:00Z"));
        assert_eq!(
            day.floor(utc("2026-06-10T14:59:59Z")),
            utc("2026-06-09T15:00:00Z")
        );
        assert_eq!(
            day.floor(utc("2026-06-10T15:00:00Z")),
            utc("2026-06-10T15:00:00Z")
        );
        let starts: Vec<i64> = day
            .starts(utc("2026-06-09T15:00:00Z"), utc("2026-06-12T15:00:00Z"))
            .collect();
        assert_eq!(
            starts,
            vec![
                utc("2026-06-09T15:00:00Z"),
                utc("2026-06-10T15:00:00Z"),
                utc("2026-06-11T15:00:00Z")
            ]
        );
        // Hours in a whole-hour zone are UTC hours; an Indian hour starts at half past.
        assert_eq!(b("1h", "Asia/Seoul").floor(t + 1800), t);
        assert_eq!(b("1h", "Asia/Kolkata").floor(t + 60), utc("2026-06-10T00:30:00Z"));
    }

    #[test]
    fn berlin_days_are_23_and_25_hours_long_when_the_clocks_change() {
        let day = b("1d", "Europe/Berlin");
        // 2026-03-29: CET → CEST at 02:00 local.
        let spring = day.floor(utc("2026-03-29T12:00:00Z"));
        assert_eq!(spring, utc("2026-03-28T23:00:00Z"));
        assert_eq!(day.end(spring), utc("2026-03-29T22:00:00Z"));
        assert_eq!(day.end(spring) - spring, 23 * 3600);
        // 2026-10-25: CEST → CET at 03:00 local.
        let autumn = day.floor(utc("2026-10-25T12:00:00Z"));
        assert_eq!(autumn, utc("2026-10-24T22:00:00Z"));
        assert_eq!(day.end(autumn), utc("2026-10-25T23:00:00Z"));
        assert_eq!(day.end(autumn) - autumn, 25 * 3600);
        // Back and forward across both changes land on local midnights.
        assert_eq!(
            day.back(utc("2026-03-30T12:00:00Z"), 2),
            utc("2026-03-27T23:00:00Z")
        );
        assert_eq!(day.forward(autumn, 2), utc("2026-10-26T23:00:00Z"));
        assert_eq!(
            day.count(utc("2026-10-20T22:00:00Z"), utc("2026-10-30T23:00:00Z")),
            10
        );
    }

    #[test]
    fn an_hour_stays_an_hour_of_real_time_across_clock_changes() {
        let hour = b("1h", "Europe/Berlin");
        for day in ["2026-03-29", "2026-10-25"] {
            let from = utc(&format!("{day}T00:00:00Z")) - 6 * 3600;
            let starts: Vec<i64> = hour.starts(from, from + 12 * 3600).collect();
            assert_eq!(starts.len(), 12, "{day}");
            assert!(
                starts.windows(2).all(|w| w[1] - w[0] == 3600),
                "{day}: {starts:?}"
            );
        }
        // A 6h bucket follows the wall clock: 00-06 local is 5 hours on the spring day.
        let six = b("6h", "Europe/Berlin");
        let s = six.floor(utc("2026-03-29T01:30:00Z"));
        assert_eq!(s, utc("2026-03-28T23:00:00Z"));
        assert_eq!(six.end(s), utc("2026-03-29T04:00:00Z"));
    }

    #[test]
    fn sub_hour_and_utc_intervals_keep_epoch_multiples() {
        let five = b("5m", "Asia/Kolkata");
        assert!(!five.is_local());
        assert_eq!(five.floor(1_000_000_123), 1_000_000_123 / 300 * 300);
        let day = b("1d", "UTC");
        assert!(!day.is_local());
        assert_eq!(day.floor(86_400 * 3 + 5), 86_400 * 3);
        assert_eq!(day.back(86_400 * 3 + 5, 2), 86_400);
        assert_eq!(b("7d", "UTC").floor(86_400 * 9), 86_400 * 7);
    }

    /// Every bucket of a year, in zones with odd offsets and clock changes (at midnight in
    /// Santiago, by half an hour on Lord Howe), tiles time: each instant lies in exactly the
    /// bucket `floor` names, `end` is the next `floor`, and no bucket is empty or runs more
    /// than two hours off its nominal length.
    #[test]
    fn buckets_tile_time_in_every_kind_of_zone() {
        let zones = [
            "Europe/Berlin",
            "America/Santiago",
            "Australia/Lord_Howe",
            "Asia/Kathmandu",
            "America/St_Johns",
            "Asia/Seoul",
        ];
        for zone in zones {
            for interval in ["1h", "2h", "3h", "90m", "12h", "1d", "2d", "7d"] {
                let bk = b(interval, zone);
                let step = bk.nominal_secs();
                let mut s = bk.floor(utc("2025-12-20T00:00:00Z"));
                let stop = utc("2027-01-10T00:00:00Z");
                while s < stop {
                    let e = bk.end(s);
                    let len = e - s;
                    assert!(
                        len > 0 && (len - step).abs() <= 2 * 3600,
                        "{zone} {interval}: bucket at {s} lasts {len}"
                    );
                    for t in [s, s + len / 3, s + len / 2, e - 1] {
                        assert_eq!(bk.floor(t), s, "{zone} {interval}: floor({t})");
                        assert_eq!(bk.end(t), e, "{zone} {interval}: end({t})");
                    }
                    assert_eq!(bk.prev(e), s, "{zone} {interval}: prev({e})");
                    s = e;
                }
            }
        }
    }
}
