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

/// No run beyond the extremes: (max, min) of nothing.
const NO_RUN: (f64, f64) = (f64::NEG_INFINITY, f64::INFINITY);

/// The last `DAYS` days' extremes and means, as a ring indexed by the day, with the extremes
/// a bucket of the current day is judged against kept up to date (a bucket asks for them
/// every time, the window moves once a day): the `DAYS` days before it, and its own day's
/// earlier buckets except a run still beyond all of those (a burst climbing in steps is
/// judged against what came before it, not against its own first step).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Records {
    days: [Day; DAYS],
    /// The day of the last value pushed.
    current: i64,
    /// The median of the daily means of the days before `current` once asked for (NaN: there
    /// are none): a pure cache, recomputed after decoding.
    #[serde(skip)]
    center_before: std::cell::Cell<Option<f64>>,
    /// The extremes a bucket of the current day is judged against, and the count behind them.
    all: (f64, f64, u32),
    /// The current day's run of values beyond `all` (max, min), not yet part of it.
    run: (f64, f64),
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
            run: NO_RUN,
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
            self.all = self.fold(day - 1);
            self.run = NO_RUN;
        }
        let slot = &mut self.days[day.rem_euclid(DAYS as i64) as usize];
        slot.max = slot.max.max(x);
        slot.min = slot.min.min(x);
        slot.sum += x;
        slot.n = slot.n.saturating_add(1);
        let (max, min, n) = self.all;
        self.all = (max, min, n.saturating_add(1));
        if x > max || x < min {
            // Beyond everything remembered: part of a run that is judged against what came
            // before it, not against its own earlier buckets.
            self.run = (self.run.0.max(x), self.run.1.min(x));
        } else {
            self.merge_run();
        }
    }

    /// Take the current run beyond the extremes into them: the detector accepted its level
    /// as the new normal, so it is no longer a burst to judge against what came before.
    pub(crate) fn merge_run(&mut self) {
        let (rmax, rmin) = std::mem::replace(&mut self.run, NO_RUN);
        let (max, min, n) = self.all;
        self.all = (max.max(rmax), min.min(rmin), n);
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

    /// The extremes a bucket at `ts` is judged against: the `DAYS` days before its own, and,
    /// on the current day, its earlier buckets but a run still beyond all the rest; `None`
    /// when there are none.
    pub(crate) fn extremes(&self, ts: i64) -> Option<Extremes> {
        let day = ts.div_euclid(DAY);
        let (max, min, n) = if day == self.current {
            self.all
        } else {
            self.fold(day - 1)
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
        // The first bucket of a new day sees the four weeks before it.
        let e = r.extremes(31 * DAY).expect("days remembered");
        assert_eq!(e.n, 2 * DAYS as u32);
        // On day 28 the burst of day 0 is still one of the 28 days before; on day 29 it is not.
        let mut early = Records::default();
        early.push(3_600, 50.0);
        early.push(27 * DAY, 10.0);
        let e = early.extremes(28 * DAY).expect("days remembered");
        assert_eq!(e.max, 50.0);
        assert_eq!(early.extremes(29 * DAY).map(|e| e.max), Some(10.0));
    }

    #[test]
    fn a_burst_is_judged_against_what_came_before_it_not_against_its_own_first_buckets() {
        let mut r = Records::default();
        for day in 0..28 {
            r.push(day * DAY, 10.0);
            r.push(day * DAY + 3_600, 84.0);
        }
        // Day 28: a burst climbs 98, then 125. The 125 is judged against the 84 of the weeks
        // before, not against the burst's own 98.
        let t = 28 * DAY;
        r.push(t, 10.0);
        r.push(t + 300, 98.0);
        assert_eq!(r.extremes(t + 600).map(|e| e.max), Some(84.0));
        r.push(t + 600, 125.0);
        // Once the burst is over, it is part of what later buckets are judged against.
        r.push(t + 900, 12.0);
        assert_eq!(r.extremes(t + 1_200).map(|e| e.max), Some(125.0));
        // A run the detector accepted as the new normal joins at once.
        r.push(t + 1_200, 5_000.0);
        r.merge_run();
        assert_eq!(r.extremes(t + 1_500).map(|e| e.max), Some(5_000.0));
    }
}
