//! The total and its slices from one query: [`bucketize`] turns a KPI query's rows into
//! series keyed by their dimension values (a JSON object, `{}` for the total), each with one
//! [`ObservationRow`] per bucket.
//!
//! - Rows without dimension columns make one series, `{}` (as always).
//! - Rows with dimension columns make the total `{}` (their roll-up: counts summed, ratios
//!   as Σnumerator/Σdenominator, gauges by the model's `aggregation`) and one series per
//!   slice: per combination of all dimension values, or with `drilldown` per value of each
//!   listed dimension on its own (the other columns are rolled up).
//! - At most `max_series` named slices: series already known keep their place; new ones are
//!   admitted by volume in the window while room is left; the rest are pooled into `other`
//!   (`country=other`), which is a slice like any other.
//!
//! - A slice too thin to decide at the KPI's interval is judged over a coarser window
//!   ([`evaluation_factor`]): the smallest multiple of the interval (dividing a day, at most a
//!   day) at which its median volume per bucket over the last [`WINDOW_RULE_DAYS`] days
//!   reaches `slice_min_volume`, else [`DECIDABLE_VOLUME`] (events for counts, attempts for
//!   ratios; gauges and the total are always judged at the interval).
//!
//! Pure: no IO. Used by `pipeline` (runs, history), registration's trial run and `api`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::kpi::{Aggregation, Buckets, Interval, Kind, KpiSpec};
use crate::sources::{self, RawRow};
use crate::store::ObservationRow;

/// Series key of the KPI's total (and of a KPI without dimensions).
pub const TOTAL: &str = "{}";

/// The volume per bucket (events of a count, attempts of a ratio) a slice needs to be judged
/// at the KPI's interval when the model sets no `slice_min_volume`.
pub const DECIDABLE_VOLUME: f64 = 10.0;

/// The evaluation window of a thin slice is chosen from its volume over this many days.
pub const WINDOW_RULE_DAYS: i64 = 7;

/// The longest evaluation window a slice is coarsened to.
pub const MAX_WINDOW_SECS: i64 = 86_400;

/// How many of the KPI's buckets a slice is judged over (1 = every bucket): see the module
/// docs. `history` is the slice's stored buckets, oldest first.
pub fn evaluation_factor(spec: &KpiSpec, dims: &str, history: &[ObservationRow]) -> i64 {
    let step = spec.interval.secs_i64();
    if is_total(dims) || spec.kind == Kind::Gauge || history.is_empty() || step <= 0 {
        return 1;
    }
    let newest = history.last().map_or(0, |o| o.ts);
    let mut volumes: Vec<f64> = history
        .iter()
        .filter(|o| o.ts > newest - WINDOW_RULE_DAYS * 86_400)
        .map(|o| match spec.kind {
            Kind::Ratio => o.denominator.unwrap_or(0.0),
            _ => o.value,
        })
        .filter(|v| v.is_finite())
        .collect();
    if volumes.is_empty() {
        return 1;
    }
    volumes.sort_by(f64::total_cmp);
    let median = volumes[volumes.len() / 2];
    let target = spec
        .dimensions
        .slice_min_volume
        .unwrap_or(DECIDABLE_VOLUME)
        .max(spec.min_volume);
    if median >= target {
        return 1;
    }
    let mut chosen = 1;
    let mut k = 2;
    while k * step <= MAX_WINDOW_SECS.max(step) {
        if 86_400 % (k * step) == 0 {
            chosen = k;
            if median * k as f64 >= target {
                break;
            }
        }
        k += 1;
    }
    chosen
}

/// The evaluation windows of `k` of the KPI's buckets: `k × interval` long, aligned like
/// the KPI's buckets of that length (UTC below an hour, its timezone from an hour up).
pub fn window_buckets(spec: &KpiSpec, k: i64) -> Buckets {
    let secs = u64::try_from(spec.interval.secs_i64() * k.max(1)).unwrap_or(0);
    match Interval::from_secs(secs) {
        Ok(width) => Buckets::new(width, spec.timezone),
        Err(_) => spec.buckets(),
    }
}

/// `history` (buckets of `grid`) summed over the `windows` (see [`window_buckets`]); only
/// windows that have closed by `end`. Each window is dated by its last bucket, the one whose
/// closing decided it.
pub fn coarsen(history: &[ObservationRow], grid: Buckets, windows: Buckets, end: i64) -> Vec<ObservationRow> {
    let mut out: BTreeMap<i64, ObservationRow> = BTreeMap::new();
    for o in history {
        let w = windows.floor(o.ts);
        let w_end = windows.end(w);
        if w_end > end {
            continue;
        }
        let e = out.entry(w).or_insert(ObservationRow {
            ts: grid.prev(w_end),
            value: 0.0,
            denominator: o.denominator.map(|_| 0.0),
        });
        e.value += o.value;
        if let (Some(d), Some(x)) = (e.denominator.as_mut(), o.denominator) {
            *d += x;
        }
    }
    out.into_values().collect()
}

/// Whether `dims` (a series key) is the KPI's total.
pub fn is_total(dims: &str) -> bool {
    dims == TOTAL || dims.trim().is_empty()
}

/// Sums behind one bucket of one series.
#[derive(Debug, Clone, Copy)]
struct Acc {
    sum: f64,
    den: f64,
    n: u32,
    max: f64,
    min: f64,
}

impl Default for Acc {
    fn default() -> Self {
        Acc {
            sum: 0.0,
            den: 0.0,
            n: 0,
            max: f64::NEG_INFINITY,
            min: f64::INFINITY,
        }
    }
}

impl Acc {
    fn add(&mut self, value: f64, den: f64) {
        self.sum += value;
        self.den += den;
        self.n += 1;
        self.max = self.max.max(value);
        self.min = self.min.min(value);
    }

    fn merge(&mut self, o: &Acc) {
        self.sum += o.sum;
        self.den += o.den;
        self.n += o.n;
        self.max = self.max.max(o.max);
        self.min = self.min.min(o.min);
    }

    fn row(&self, t: i64, kind: Kind, aggregation: Aggregation) -> ObservationRow {
        let (value, denominator) = match kind {
            Kind::Count => (self.sum, None),
            Kind::Ratio => (self.sum, Some(self.den)),
            Kind::Gauge => (
                match aggregation {
                    Aggregation::Mean => self.sum / f64::from(self.n.max(1)),
                    Aggregation::Sum => self.sum,
                    Aggregation::Max => self.max,
                    Aggregation::Min => self.min,
                },
                None,
            ),
        };
        ObservationRow {
            ts: t,
            value,
            denominator,
        }
    }
}

/// The slice keys (JSON objects) a row with dimension values `dims` counts towards.
fn slice_keys(dims: &BTreeMap<&str, &str>, drilldown: &[String]) -> Vec<String> {
    let key = |m: &BTreeMap<&str, &str>| serde_json::to_string(m).unwrap_or_else(|_| TOTAL.to_owned());
    if drilldown.is_empty() {
        return vec![key(dims)];
    }
    drilldown
        .iter()
        .filter_map(|d| {
            let v = dims.get(d.as_str())?;
            Some(key(&BTreeMap::from([(d.as_str(), *v)])))
        })
        .collect()
}

/// The `other` slice a slice beyond the cap is pooled into: the same dimensions, each `other`.
pub fn other_key(slice: &str) -> String {
    match serde_json::from_str::<BTreeMap<String, String>>(slice) {
        Ok(map) => {
            let pooled: BTreeMap<&str, &str> = map
                .keys()
                .map(|k| (k.as_str(), crate::kpi::dimensions::OTHER))
                .collect();
            serde_json::to_string(&pooled).unwrap_or_else(|_| TOTAL.to_owned())
        }
        Err(_) => TOTAL.to_owned(),
    }
}

/// Whether a series key is a pool of slices beyond the cap.
pub fn is_other(dims: &str) -> bool {
    !is_total(dims) && dims == other_key(dims)
}

/// Group rows into series (the total and its slices) and buckets (floored to the interval),
/// see the module docs. `known` are the series keys already stored for the KPI (they keep
/// their place under the cap). Rows outside `[start, end)` are dropped; a negative count is a
/// contract error.
pub fn bucketize(
    rows: &[RawRow],
    spec: &KpiSpec,
    start: i64,
    end: i64,
    known: &BTreeSet<String>,
) -> Result<BTreeMap<String, BTreeMap<i64, ObservationRow>>, sources::Error> {
    let grid = spec.buckets();
    let dims_cfg = &spec.dimensions;
    let mut total: BTreeMap<i64, Acc> = BTreeMap::new();
    let mut slices: HashMap<String, BTreeMap<i64, Acc>> = HashMap::new();
    let mut volume: HashMap<String, f64> = HashMap::new();
    for row in rows {
        let t = grid.floor(row.ts.timestamp());
        if t < start || t >= end {
            continue;
        }
        let value = match (spec.kind, row.value) {
            (Kind::Count, None) => 0.0,
            (_, None) => continue,
            (_, Some(v)) => v,
        };
        if spec.kind == Kind::Count && value < 0.0 {
            return Err(sources::Error::Contract(format!(
                "a count KPI returned a negative value {value} at {}",
                row.ts
            )));
        }
        let den = row.denominator.unwrap_or(0.0);
        total.entry(t).or_default().add(value, den);
        if row.dims.is_empty() {
            continue;
        }
        let dims: BTreeMap<&str, &str> = row.dims.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let weight = match spec.kind {
            Kind::Ratio => den,
            Kind::Count => value,
            Kind::Gauge => 1.0,
        };
        for key in slice_keys(&dims, &dims_cfg.drilldown) {
            *volume.entry(key.clone()).or_default() += weight;
            slices
                .entry(key)
                .or_default()
                .entry(t)
                .or_default()
                .add(value, den);
        }
    }

    // The cap: known slices stay, new ones by volume while room is left, the rest pooled.
    let known_named = known.iter().filter(|k| !is_total(k) && !is_other(k)).count();
    let mut room = spec.max_series.saturating_sub(known_named);
    let mut fresh: Vec<(&String, f64)> = slices
        .keys()
        .filter(|k| !known.contains(*k) && !is_other(k))
        .map(|k| (k, volume.get(k).copied().unwrap_or(0.0)))
        .collect();
    fresh.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let mut pooled: BTreeSet<String> = BTreeSet::new();
    for (k, _) in fresh {
        if room > 0 {
            room -= 1;
        } else {
            pooled.insert(k.clone());
        }
    }
    let mut merged: BTreeMap<String, BTreeMap<i64, Acc>> = BTreeMap::new();
    for (key, buckets) in slices {
        let target = if pooled.contains(&key) {
            other_key(&key)
        } else {
            key
        };
        let into = merged.entry(target).or_default();
        for (t, acc) in buckets {
            into.entry(t).or_default().merge(&acc);
        }
    }
    // Every row counts towards the total, with or without dimension columns.
    if !total.is_empty() {
        merged.insert(TOTAL.to_owned(), total);
    }
    let (kind, aggregation) = (spec.kind, dims_cfg.aggregation);
    Ok(merged
        .into_iter()
        .map(|(dims, buckets)| {
            let buckets = buckets
                .into_iter()
                .map(|(t, acc)| (t, acc.row(t, kind, aggregation)))
                .collect();
            (dims, buckets)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use chrono::DateTime;

    use super::*;

    fn spec(extra: &str, kind: &str) -> KpiSpec {
        KpiSpec::parse(
            "k",
            &format!("source = \"s\"\nkind = \"{kind}\"\ninterval = \"5m\"\n{extra}"),
            "SELECT 1 WHERE :start < :end",
            Path::new("m"),
        )
        .expect("valid")
    }

    fn row(secs: i64, value: f64, den: Option<f64>, dims: &[(&str, &str)]) -> RawRow {
        RawRow {
            ts: DateTime::from_timestamp(secs, 0).expect("valid"),
            value: Some(value),
            denominator: den,
            dims: dims
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn shop_rows() -> Vec<RawRow> {
        vec![
            row(
                0,
                97.0,
                Some(100.0),
                &[("country", "DE"), ("payment_method", "card")],
            ),
            row(
                0,
                49.0,
                Some(50.0),
                &[("country", "FR"), ("payment_method", "card")],
            ),
            row(
                0,
                190.0,
                Some(200.0),
                &[("country", "DE"), ("payment_method", "paypal")],
            ),
            row(
                60,
                1.0,
                Some(2.0),
                &[("country", "LU"), ("payment_method", "paypal")],
            ),
        ]
    }

    #[test]
    fn the_total_is_the_roll_up_and_each_combination_is_a_slice() {
        let out = bucketize(&shop_rows(), &spec("", "ratio"), 0, 600, &BTreeSet::new()).expect("ok");
        let total = &out[TOTAL][&0];
        assert_eq!(
            (total.value, total.denominator),
            (337.0, Some(352.0)),
            "Σnum / Σden"
        );
        let de_card = &out[r#"{"country":"DE","payment_method":"card"}"#][&0];
        assert_eq!((de_card.value, de_card.denominator), (97.0, Some(100.0)));
        assert_eq!(out.len(), 5, "the total and four combinations: {:?}", out.keys());
    }

    #[test]
    fn drilldown_rolls_up_each_dimension_on_its_own() {
        let s = spec("drilldown = [\"payment_method\", \"country\"]", "ratio");
        let out = bucketize(&shop_rows(), &s, 0, 600, &BTreeSet::new()).expect("ok");
        let keys: Vec<&str> = out.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                r#"{"country":"DE"}"#,
                r#"{"country":"FR"}"#,
                r#"{"country":"LU"}"#,
                r#"{"payment_method":"card"}"#,
                r#"{"payment_method":"paypal"}"#,
                TOTAL
            ]
        );
        let card = &out[r#"{"payment_method":"card"}"#][&0];
        assert_eq!((card.value, card.denominator), (146.0, Some(150.0)));
        // Every dimension's slices add up to the total.
        for dim in ["country", "payment_method"] {
            let (n, d) = out
                .iter()
                .filter(|(k, _)| k.contains(dim))
                .flat_map(|(_, b)| b.values())
                .fold((0.0, 0.0), |(n, d), o| {
                    (n + o.value, d + o.denominator.unwrap_or(0.0))
                });
            assert_eq!((n, d), (337.0, 352.0), "{dim}");
        }
    }

    #[test]
    fn slices_beyond_max_series_are_pooled_into_other_and_known_ones_keep_their_place() {
        let mut s = spec("drilldown = [\"country\"]", "count");
        s.max_series = 1;
        let rows = [
            row(0, 5.0, None, &[("country", "DE")]),
            row(0, 9.0, None, &[("country", "FR")]),
            row(0, 1.0, None, &[("country", "LU")]),
        ];
        let out = bucketize(&rows, &s, 0, 600, &BTreeSet::new()).expect("ok");
        assert_eq!(
            out[r#"{"country":"FR"}"#][&0].value, 9.0,
            "the largest slice is kept"
        );
        assert_eq!(out[r#"{"country":"other"}"#][&0].value, 6.0, "DE and LU pooled");
        assert_eq!(out[TOTAL][&0].value, 15.0);
        // DE was stored before: it keeps its place, and FR is pooled instead.
        let known = BTreeSet::from([r#"{"country":"DE"}"#.to_owned()]);
        let out = bucketize(&rows, &s, 0, 600, &known).expect("ok");
        assert_eq!(out[r#"{"country":"DE"}"#][&0].value, 5.0);
        assert_eq!(out[r#"{"country":"other"}"#][&0].value, 10.0);
        assert!(is_other(r#"{"country":"other"}"#) && !is_other(r#"{"country":"DE"}"#));
    }

    #[test]
    fn gauges_roll_up_by_their_declared_aggregation() {
        let rows = [
            row(0, 2.0, None, &[("host", "a")]),
            row(0, 6.0, None, &[("host", "b")]),
        ];
        for (agg, want) in [("mean", 4.0), ("sum", 8.0), ("max", 6.0), ("min", 2.0)] {
            let s = spec(&format!("aggregation = \"{agg}\""), "gauge");
            let out = bucketize(&rows, &s, 0, 600, &BTreeSet::new()).expect("ok");
            assert_eq!(out[TOTAL][&0].value, want, "{agg}");
            assert_eq!(out[r#"{"host":"b"}"#][&0].value, 6.0, "{agg}");
        }
    }

    fn obs(ts: i64, value: f64, den: Option<f64>) -> ObservationRow {
        ObservationRow {
            ts,
            value,
            denominator: den,
        }
    }

    #[test]
    fn thin_slices_are_judged_over_the_smallest_window_that_holds_enough_volume() {
        let s = spec("", "count");
        let thin: Vec<ObservationRow> = (0..2016).map(|i| obs(i * 300, 4.0, None)).collect();
        assert_eq!(
            evaluation_factor(&s, r#"{"country":"LU"}"#, &thin),
            3,
            "3 × 4 ≥ 10"
        );
        assert_eq!(evaluation_factor(&s, TOTAL, &thin), 1, "the total never");
        let thick: Vec<ObservationRow> = (0..2016).map(|i| obs(i * 300, 40.0, None)).collect();
        assert_eq!(evaluation_factor(&s, r#"{"country":"DE"}"#, &thick), 1);
        // Ratios count attempts; slice_min_volume raises the bar; the window divides a day.
        let r = spec("slice_min_volume = 50", "ratio");
        let attempts: Vec<ObservationRow> = (0..2016).map(|i| obs(i * 300, 6.0, Some(7.0))).collect();
        assert_eq!(
            evaluation_factor(&r, r#"{"m":"card"}"#, &attempts),
            8,
            "8 × 7 ≥ 50"
        );
        // Nothing at all: as coarse as allowed (a day).
        let dead: Vec<ObservationRow> = (0..2016).map(|i| obs(i * 300, 0.0, None)).collect();
        assert_eq!(evaluation_factor(&s, r#"{"country":"XX"}"#, &dead), 288);
        let g = spec("", "gauge");
        assert_eq!(evaluation_factor(&g, r#"{"host":"a"}"#, &thin), 1, "gauges never");
    }

    #[test]
    fn coarse_windows_sum_closed_windows_and_are_dated_by_their_last_bucket() {
        let rows: Vec<ObservationRow> = (0..7).map(|i| obs(i * 300, 1.0, Some(2.0))).collect();
        let s = spec("", "count");
        let out = coarsen(&rows, s.buckets(), window_buckets(&s, 3), 7 * 300);
        assert_eq!(out.len(), 2, "the third window is still open: {out:?}");
        assert_eq!(out[0], obs(600, 3.0, Some(6.0)));
        assert_eq!(out[1], obs(1500, 3.0, Some(6.0)));
    }

    #[test]
    fn coarse_windows_of_hourly_buckets_follow_the_local_day() {
        // Hourly buckets in Berlin on the spring day (23 hours from local midnight, which is
        // 23:00 UTC the day before): a day-long window sums 23 of them.
        let s = KpiSpec::parse(
            "k",
            "source = \"s\"\nkind = \"count\"\ninterval = \"1h\"\ntimezone = \"Europe/Berlin\"\n",
            "SELECT 1 WHERE :start < :end",
            Path::new("m"),
        )
        .expect("valid");
        let midnight = 1_774_738_800; // 2026-03-28T23:00:00Z
        let rows: Vec<ObservationRow> = (0..30).map(|i| obs(midnight + i * 3600, 1.0, None)).collect();
        let out = coarsen(&rows, s.buckets(), window_buckets(&s, 24), midnight + 30 * 3600);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0], obs(midnight + 22 * 3600, 23.0, None));
    }

    #[test]
    fn rows_without_dimensions_make_only_the_total() {
        let out = bucketize(
            &[row(0, 3.0, None, &[])],
            &spec("", "count"),
            0,
            600,
            &BTreeSet::new(),
        )
        .expect("ok");
        assert_eq!(out.keys().collect::<Vec<_>>(), [TOTAL]);
    }
}
