//! The record test's memory: per calendar day (UTC) of the last four weeks, the largest and
//! smallest value seen and the day's mean. Pure arithmetic: no IO.
//!
//! A bucket whose value lies further beyond the median day than anything of the last four
//! weeks, by a margin, is news whatever the baseline expected: the per-bucket z-score of a
//! heavy-tailed series is judged against tails fitted to a week of its own bursts, and the
//! biggest thing in a month can sit inside them (see docs/DETECTION.md §3).

/// Days remembered.
const DAYS: usize = 28;
const DAY: i64 = 86_400;

/// One day's values.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
struct Day {
    /// Days since 1970-01-01 (UTC); `i64::MIN` for an empty entry.
    day: i64,
    max: f64,
    min: f64,
    sum: f64,
    n: u32,
}

const EMPTY: Day = Day {
    day: i64::MIN,
    max: f64::NEG_INFINITY,
    min: f64::INFINITY,
    sum: 0.0,
    n: 0,
};

/// The last `DAYS` days' extremes and means, as a ring indexed by the day, with the extremes
/// of the window ending with the last value kept up to date (a bucket asks for them every
/// time, the window moves once a day).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Records {
    days: [Day; DAYS],
    /// The day of the last value pushed.
    current: i64,
    /// The median of the daily means of the days before `current` once asked for (NaN: there
    /// are none): a pure cache, recomputed after decoding.
    #[serde(skip)]
    center_before: std::cell::Cell<Option<f64>>,
    /// The extremes and count of the window ending with the last value pushed.
    all: (f64, f64, u32),
}

/// What the last four weeks held: the largest and smallest value, and how many values stand
/// behind them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Extremes {
    pub(crate) max: f64,
    pub(crate) min: f64,
    pub(crate) n: u32,
}

impl Default for Records {
    fn default() -> Self {
        Records {
            days: [EMPTY; DAYS],
            current: i64::MIN,
            center_before: std::cell::Cell::new(None),
            all: (f64::NEG_INFINITY, f64::INFINITY, 0),
        }
    }
}

impl Records {
    /// Remember value `x` of the bucket at `ts`.
    pub(crate) fn push(&mut self, ts: i64, x: f64) {
        if !x.is_finite() {
            return;
        }
        let day = ts.div_euclid(DAY);
        if day != self.current {
            self.current = day;
            self.center_before.set(None);
            // A new day, or back on one already under way (a timestamp that stepped back).
            let slot = &mut self.days[day.rem_euclid(DAYS as i64) as usize];
            if slot.day != day {
                *slot = Day { day, ..EMPTY };
            }
            self.all = self.fold(day);
        }
        let slot = &mut self.days[day.rem_euclid(DAYS as i64) as usize];
        slot.max = slot.max.max(x);
        slot.min = slot.min.min(x);
        slot.sum += x;
        slot.n = slot.n.saturating_add(1);
        let (max, min, n) = self.all;
        self.all = (max.max(x), min.min(x), n.saturating_add(1));
    }

    /// Max, min and count over the remembered days of the window ending on `day`.
    fn fold(&self, day: i64) -> (f64, f64, u32) {
        self.window(day)
            .fold((f64::NEG_INFINITY, f64::INFINITY, 0), |(max, min, n), d| {
                (max.max(d.max), min.min(d.min), n.saturating_add(d.n))
            })
    }

    /// The remembered days of the `DAYS` ending on `day`.
    fn window(&self, day: i64) -> impl Iterator<Item = &Day> {
        self.days
            .iter()
            .filter(move |d| d.n > 0 && d.day <= day && d.day > day - DAYS as i64)
    }

    /// The extremes of the values remembered before the bucket at `ts` (its own day's earlier
    /// buckets included, days older than `DAYS` left out); `None` when there are none.
    pub(crate) fn extremes(&self, ts: i64) -> Option<Extremes> {
        let day = ts.div_euclid(DAY);
        let (max, min, n) = if day == self.current {
            self.all
        } else {
            self.fold(day)
        };
        (n > 0).then_some(Extremes { max, min, n })
    }

    /// The centre records are measured from, for the bucket at `ts`: the median of the daily
    /// means of the remembered days before its own (one burst day does not move it, nor does
    /// the bucket's own day), or its day's mean so far when there are none.
    pub(crate) fn center(&self, ts: i64) -> Option<f64> {
        let day = ts.div_euclid(DAY);
        let before = if day == self.current {
            match self.center_before.get() {
                Some(c) => c,
                None => {
                    let c = self.median_mean_before(day);
                    self.center_before.set(Some(c));
                    c
                }
            }
        } else {
            self.median_mean_before(day)
        };
        if before.is_finite() {
            return Some(before);
        }
        let today = &self.days[day.rem_euclid(DAYS as i64) as usize];
        (today.day == day && today.n > 0).then(|| today.sum / f64::from(today.n))
    }

    /// The median of the daily means of the remembered days before `day` (NaN: none).
    fn median_mean_before(&self, day: i64) -> f64 {
        let mut means = [0.0f64; DAYS];
        let mut m = 0;
        for d in self.window(day).filter(|d| d.day < day) {
            means[m] = d.sum / f64::from(d.n);
            m += 1;
        }
        let means = &mut means[..m];
        if means.is_empty() {
            return f64::NAN;
        }
        let mid = means.len() / 2;
        let (_, &mut center, _) = means.select_nth_unstable_by(mid, f64::total_cmp);
        center
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extremes_cover_four_weeks_and_forget_older_days() {
        let mut r = Records::default();
        // Day 0 holds a burst of 50; days 1..=30 hold values 10 and 12.
        r.push(3_600, 50.0);
        for day in 1..=30 {
            r.push(day * DAY, 10.0);
            r.push(day * DAY + 3_600, 12.0);
        }
        let e = r.extremes(30 * DAY + 7_200).expect("days remembered");
        assert_eq!((e.max, e.min, e.n), (12.0, 10.0, 2 * DAYS as u32));
        assert_eq!(r.center(30 * DAY + 7_200), Some(11.0));
        // The first bucket of a new day, before it is pushed, sees the same four weeks less
        // the oldest day.
        let e = r.extremes(31 * DAY).expect("days remembered");
        assert_eq!(e.n, 2 * (DAYS as u32 - 1));
        // On day 27 the burst of day 0 is still remembered.
        let mut early = Records::default();
        early.push(3_600, 50.0);
        early.push(27 * DAY, 10.0);
        let e = early.extremes(27 * DAY + 60).expect("days remembered");
        assert_eq!(e.max, 50.0);
        assert_eq!(early.extremes(28 * DAY).map(|e| e.max), Some(10.0));
    }
}
