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

/// The resolution of a series (the smallest step seen between consecutive values; 0 until
/// one is seen) after the step from `last` to `x`, ignoring steps that are rounding error of
/// the values' own representation.
pub(crate) fn finer_resolution(resolution: f64, last: f64, x: f64) -> f64 {
    let d = (x - last).abs();
    if !(d > 1e-9 * x.abs().max(last.abs()) && d.is_finite()) {
        resolution
    } else if resolution > 0.0 {
        resolution.min(d)
    } else {
        d
    }
}

/// Add a value to a window's sum and count of finite values (a missing one changes nothing).
fn add(window: &mut (f64, u32), v: f32) {
    if v.is_finite() {
        window.0 += f64::from(v);
        window.1 += 1;
    }
}

/// Take a value away from a window's sum and count of finite values.
fn remove(window: &mut (f64, u32), v: f32) {
    if v.is_finite() {
        window.0 -= f64::from(v);
        window.1 = window.1.saturating_sub(1);
    }
}

/// One day's range of window means.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
struct Range {
    /// Days since 1970-01-01 (UTC); `i64::MIN` for an empty entry.
    day: i64,
    max: f64,
    min: f64,
    n: u32,
}

/// The fold of no days' means: (max, min, means, days).
const NO_MEANS: (f64, f64, u32, u32) = (f64::NEG_INFINITY, f64::INFINITY, 0, 0);

const NO_RANGE: Range = Range {
    day: i64::MIN,
    max: f64::NEG_INFINITY,
    min: f64::INFINITY,
    n: 0,
};

/// The sustained record test's memory: the mean of the last few hours of buckets, and per
/// calendar day (UTC) of the last four weeks the largest and smallest such mean. A mean joins
/// the days only once the window after it has passed, so a bucket's window is judged against
/// windows that share none of its buckets: a shift is a record for about two windows, and
/// then part of what later ones are judged against.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Sustained {
    /// Buckets in a window.
    len: usize,
    /// The last `2 * len` values, NaN where missing, as a ring: `at` is the oldest (and the
    /// next to be overwritten). `f32`: a record of a mean needs no more, and a 1-minute
    /// KPI's 360 values stay within the state budget.
    ring: Vec<f32>,
    at: usize,
    /// Values pushed (finite or not).
    pushed: u64,
    /// Sum and count of the finite values among the newest `len - 1` (the window of the next
    /// bucket, without it) and among the oldest `len` (the window that ended `len` buckets
    /// ago): kept in step with the ring, recomputed from it once per turn so rounding cannot
    /// drift.
    recent: (f64, u32),
    aged: (f64, u32),
    /// The values' resolution: the smallest step seen between two consecutive finite values
    /// (0 until one is seen), and the last finite value, to measure it.
    resolution: f64,
    last: f64,
    days: [Range; DAYS],
    /// The day of the last mean remembered, and the days before it folded (a pure cache of
    /// `days`, kept in step).
    current: i64,
    before: (f64, f64, u32, u32),
}

impl Sustained {
    /// A memory of windows of `len` buckets (at least 2).
    pub(crate) fn new(len: usize) -> Self {
        let len = len.max(2);
        Sustained {
            len,
            ring: vec![f32::NAN; 2 * len],
            at: 0,
            pushed: 0,
            recent: (0.0, 0),
            aged: (0.0, 0),
            resolution: 0.0,
            last: f64::NAN,
            days: [NO_RANGE; DAYS],
            current: i64::MIN,
            before: NO_MEANS,
        }
    }

    /// Buckets in a window.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The smallest step seen between two consecutive values (0: none yet).
    pub(crate) fn resolution(&self) -> f64 {
        self.resolution
    }

    /// Bytes held on the heap (the ring).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.ring.capacity() * std::mem::size_of::<f32>()
    }

    /// Remember value `x` of the bucket at `ts` (NaN: missing); the window that ended
    /// `len` buckets ago joins the day of `ts`.
    pub(crate) fn push(&mut self, ts: i64, x: f64) {
        let v = if x.is_finite() { x as f32 } else { f32::NAN };
        if x.is_finite() {
            self.resolution = finer_resolution(self.resolution, self.last, x);
            self.last = x;
        }
        // Before the write, the ring holds the `2 len` values before this one, oldest at `at`.
        let n = self.ring.len();
        let at = self.at;
        let wrap = |k: usize| if k >= n { k - n } else { k };
        add(&mut self.recent, v);
        remove(&mut self.recent, self.ring[wrap(at + self.len + 1)]);
        add(&mut self.aged, self.ring[wrap(at + self.len)]);
        remove(&mut self.aged, self.ring[at]);
        self.ring[at] = v;
        self.at = wrap(at + 1);
        if self.at == 0 {
            self.resum();
        }
        self.pushed += 1;
        if self.pushed < n as u64 {
            return;
        }
        // The oldest `len` values now in the ring: the window that ended `len` buckets ago.
        let Some(mean) = self.mean_of(self.aged) else {
            return;
        };
        if !self.on_current_day(ts) {
            let day = ts.div_euclid(DAY);
            self.current = day;
            let slot = &mut self.days[day.rem_euclid(DAYS as i64) as usize];
            if slot.day != day {
                *slot = Range { day, ..NO_RANGE };
            }
            self.before = self.fold(day, |d| d.day < day);
        }
        let slot = &mut self.days[self.current.rem_euclid(DAYS as i64) as usize];
        slot.max = slot.max.max(mean);
        slot.min = slot.min.min(mean);
        slot.n = slot.n.saturating_add(1);
    }

    /// The mean of the window ending with a bucket of value `x` (the last `len - 1` values and
    /// `x`): `None` before `len - 1` values were pushed or when half of them are missing.
    pub(crate) fn mean_with(&self, x: f64) -> Option<f64> {
        if self.pushed + 1 < self.len as u64 || !x.is_finite() {
            return None;
        }
        let mut window = self.recent;
        add(&mut window, x as f32);
        self.mean_of(window)
    }

    /// The mean of a window's finite values, when they are at least half of `len`.
    fn mean_of(&self, (sum, k): (f64, u32)) -> Option<f64> {
        (2 * k as usize >= self.len).then(|| sum / f64::from(k))
    }

    /// Whether `ts` falls on the day of the last mean remembered (without a division: a
    /// bucket asks on every step).
    fn on_current_day(&self, ts: i64) -> bool {
        self.current
            .checked_mul(DAY)
            .is_some_and(|start| ts >= start && ts - start < DAY)
    }

    /// Both sums afresh from the ring, once per turn (when the oldest value is at 0).
    fn resum(&mut self) {
        debug_assert_eq!(self.at, 0);
        let (mut recent, mut aged) = ((0.0, 0), (0.0, 0));
        for (k, &v) in self.ring.iter().enumerate() {
            if k < self.len {
                add(&mut aged, v);
            } else if k > self.len {
                add(&mut recent, v);
            }
        }
        (self.recent, self.aged) = (recent, aged);
    }

    /// The largest and smallest window mean of the last four weeks (the days before `ts`'s and
    /// the means of its own that have joined), and how many: `None` when there are none.
    pub(crate) fn extremes(&self, ts: i64) -> Option<Extremes> {
        let (max, min, n) = if self.on_current_day(ts) {
            let today = &self.days[self.current.rem_euclid(DAYS as i64) as usize];
            let (max, min, n, _) = self.before;
            (max.max(today.max), min.min(today.min), n.saturating_add(today.n))
        } else {
            let day = ts.div_euclid(DAY);
            let (max, min, n, _) = self.fold(day, |d| d.day <= day);
            (max, min, n)
        };
        (n > 0).then_some(Extremes { max, min, n })
    }

    /// On how many of the `DAYS` days ending on `ts`'s a window mean joined.
    pub(crate) fn days_remembered(&self, ts: i64) -> u32 {
        if self.on_current_day(ts) {
            let today = &self.days[self.current.rem_euclid(DAYS as i64) as usize];
            self.before.3 + u32::from(today.n > 0)
        } else {
            let day = ts.div_euclid(DAY);
            self.fold(day, |d| d.day <= day).3
        }
    }

    /// Max, min and count of means over the remembered days of the `DAYS` ending on `day`
    /// that `keep`, and how many such days there are.
    fn fold(&self, day: i64, keep: impl Fn(&Range) -> bool) -> (f64, f64, u32, u32) {
        self.days
            .iter()
            .filter(|d| d.n > 0 && d.day <= day && d.day > day - DAYS as i64 && keep(d))
            .fold(NO_MEANS, |(max, min, n, days), d| {
                (max.max(d.max), min.min(d.min), n.saturating_add(d.n), days + 1)
            })
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
    #[test]
    fn a_window_mean_joins_the_record_only_once_the_next_window_has_passed() {
        let mut w = Sustained::new(3);
        // Nine values of 10 at 5-minute steps, then the window of the bucket to come.
        for k in 0..9 {
            w.push(k * 300, 10.0);
        }
        // Means of windows ending up to three buckets ago have joined: all 10.
        let e = w.extremes(9 * 300).expect("means remembered");
        assert_eq!((e.max, e.min), (10.0, 10.0));
        assert_eq!(e.n, 4, "windows ending at buckets 2..=5");
        // The window of a bucket of 40 holds two 10s and the 40.
        assert_eq!(w.mean_with(40.0), Some(20.0));
        // Three 40s: the first window holding them joins three buckets after it ended, so the
        // bucket after them is still judged against the 10s.
        for k in 9..12 {
            w.push(k * 300, 40.0);
        }
        assert_eq!(w.extremes(12 * 300).map(|e| e.max), Some(10.0));
        for k in 12..15 {
            w.push(k * 300, 40.0);
        }
        assert_eq!(w.extremes(15 * 300).map(|e| e.max), Some(40.0));
        // Missing values are left out of a mean, which needs half of its window.
        let mut gaps = Sustained::new(4);
        for k in 0..3 {
            gaps.push(k * 300, if k == 1 { f64::NAN } else { 6.0 });
        }
        assert_eq!(gaps.mean_with(9.0), Some(7.0));
        gaps.push(3 * 300, f64::NAN);
        gaps.push(4 * 300, f64::NAN);
        assert_eq!(gaps.mean_with(f64::NAN), None);
        assert_eq!(gaps.mean_with(3.0), Some(4.5), "two values of four");
        gaps.push(5 * 300, f64::NAN);
        assert_eq!(gaps.mean_with(3.0), None, "one value of four");
    }
}
