//! The anomaly detector: seasonal baselines and the online test of each new bucket.
//!
//! PURE: no IO, no async, no clock, no database. It only uses [`crate::kpi`] and the math
//! crates, and fails only on a bad [`DetectorConfig`]. The service and `kpiwatch detect` both
//! drive the same [`OnlineDetector`], bucket by bucket.
//!
//! # Method (see `docs/DETECTION.md`)
//! - Three candidate baselines run side by side: a level alone, a level times a daily profile
//!   and a level times a weekly profile. With [`SeasonalityMode::Auto`] the one with the
//!   lowest recent profile error wins: daily must beat a level alone by 10%, weekly only has
//!   to match daily.
//! - Each bucket gets a z-score from its noise model (Poisson counts, binomial ratios, both
//!   with overdispersion estimated from residuals; gauges by relative spread). One bucket
//!   beyond the single-bucket threshold fires at once; a two-sided CUSUM on the z-scores
//!   (corrected for their autocorrelation) fires on moderate sustained deviations; for counts,
//!   a run of empty buckets fires once its exact probability of being all zero is too small;
//!   for counts and gauges, a value beyond everything of the last four weeks by a margin fires
//!   (the record test, `records`), and so does the mean of the last three hours beyond every
//!   such mean of the four weeks (the sustained record test; buckets of 30 minutes and finer).
//! - Every threshold is the stricter of the noise model's and what the series' own history
//!   allows (`calibrate`: extreme-value tails of past z-scores and CUSUM values).
//! - Anomalous and excluded buckets are not learned. A deviation that persists for a quarter
//!   of a day (at least 3 buckets) is accepted as the new level: a level shift is alerted, then learned.
//! - User feedback replayed with a bucket ([`Feedback`]): `NotAnomaly` learns it as normal
//!   (the band widens) without feeding the alarm statistics; `NewNormal` rescales every level
//!   to it at once and restarts the CUSUM.
//! - Nothing is flagged during warm-up: half a day of buckets (at least 14, at most 288;
//!   eight days with a forced weekly seasonality); a slot the chosen baseline has never seen
//!   is not judged.

mod calibrate;
mod noise;
mod profile;
mod records;
mod snapshot;
mod threshold;

use statrs::distribution::{ContinuousCDF, Normal};

use crate::kpi::{Direction, Kind, Sensitivity};
use crate::reading::{Band, Reading};

use self::calibrate::TailCalibrator;
pub(crate) use self::noise::box_cox_of_changes;
use self::profile::{Prediction, SeasonalModel, Shift};
use self::threshold::{Thresholds, CUSUM_K};

/// Errors of the detector: only a bad configuration can fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bucket interval must be a positive number of seconds.
    #[error("invalid bucket interval {0} s: it must be at least 1 second")]
    InvalidInterval(u32),
    /// The minimum volume must be a finite number at least 0.
    #[error("invalid minimum volume {0}: it must be a finite number >= 0")]
    InvalidMinVolume(f64),
    /// A distribution could not be built (an internal invariant was broken).
    #[error("statistics setup failed: {0}")]
    Statistics(String),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which seasonality to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
pub enum SeasonalityMode {
    /// Choose from history by one-step prediction error (the default).
    #[default]
    Auto,
    /// A level only.
    None,
    /// Hour of day.
    Daily,
    /// Hour of week.
    Weekly,
}

/// The seasonality a verdict was computed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Seasonality {
    /// A level only.
    None,
    /// A daily profile times a level.
    Daily,
    /// A weekly profile times a level.
    Weekly,
}

impl Seasonality {
    /// Lower-case name: `none`, `daily` or `weekly`.
    pub fn as_str(self) -> &'static str {
        match self {
            Seasonality::None => "none",
            Seasonality::Daily => "daily",
            Seasonality::Weekly => "weekly",
        }
    }
}

/// What happened to a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Not enough history yet: never flagged, learned.
    WarmingUp,
    /// Scored against the baseline.
    Evaluated,
    /// Holiday or maintenance: never flagged, not learned.
    Excluded,
    /// Below the minimum volume (or a ratio with no denominator): never flagged.
    LowVolume,
    /// The value (or denominator) was not a finite number of magnitude at most 1e15, or a ratio
    /// bucket had no denominator: never flagged, not learned.
    Missing,
}

impl Status {
    /// Lower-case snake name, e.g. `warming_up`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::WarmingUp => "warming_up",
            Status::Evaluated => "evaluated",
            Status::Excluded => "excluded",
            Status::LowVolume => "low_volume",
            Status::Missing => "missing",
        }
    }
}

/// Which test flagged a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// The bucket alone is beyond the band.
    Bucket,
    /// Accumulated evidence (CUSUM) over recent buckets: each may be inside the band.
    Accumulated,
    /// A run of empty count buckets where events were expected.
    EmptyRun,
    /// An incident opened earlier is still under way: the level has not come back.
    Ongoing,
}

impl Trigger {
    /// Lower-case snake name, e.g. `accumulated`.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Bucket => "bucket",
            Trigger::Accumulated => "accumulated",
            Trigger::EmptyRun => "empty_run",
            Trigger::Ongoing => "ongoing",
        }
    }
}

/// The side of the baseline a deviation is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// Below the expected value (a drop).
    Below,
    /// Above the expected value (a rise).
    Above,
}

impl Side {
    /// `below` or `above`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Below => "below",
            Side::Above => "above",
        }
    }

    fn index(self) -> usize {
        match self {
            Side::Below => 0,
            Side::Above => 1,
        }
    }

    const BOTH: [Side; 2] = [Side::Below, Side::Above];
}

/// How to detect on one series.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DetectorConfig {
    /// Noise model.
    #[serde(with = "snapshot::kind")]
    pub kind: Kind,
    /// Bucket length in seconds.
    pub interval_secs: u32,
    /// Which deviations are anomalies.
    #[serde(with = "snapshot::direction")]
    pub direction: Direction,
    /// Alarm budget: see [`false_alarms_per_week`].
    #[serde(with = "snapshot::sensitivity")]
    pub sensitivity: Sensitivity,
    /// Buckets whose volume (count, or denominator) is below this are never flagged.
    pub min_volume: f64,
    /// Seasonality to use.
    pub seasonality: SeasonalityMode,
}

impl DetectorConfig {
    /// A configuration with medium sensitivity, both directions, no minimum volume and
    /// automatic seasonality.
    pub fn new(kind: Kind, interval_secs: u32) -> Self {
        DetectorConfig {
            kind,
            interval_secs,
            direction: Direction::Both,
            sensitivity: Sensitivity::MEDIUM,
            min_volume: 0.0,
            seasonality: SeasonalityMode::Auto,
        }
    }
}

/// A user's verdict on a bucket, applied when the bucket is (re)played through
/// [`OnlineDetector::step_with_feedback`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Feedback {
    /// No feedback: the detector judges and learns on its own.
    #[default]
    None,
    /// A false positive: the bucket is not flagged, is learned as normal (level, profile and
    /// noise estimate, without winsorising, so the band widens where it was too tight) and does
    /// not feed the CUSUM, empty-run or incident state as a deviation.
    NotAnomaly,
    /// The level changed for good: every baseline's level is rescaled at once to this bucket
    /// (profiles keep their shape), the CUSUM and incident state restart, and the bucket is not
    /// flagged.
    NewNormal,
}

/// One completed bucket of a series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// Bucket start, local wall-clock seconds since the epoch in the KPI's timezone.
    pub ts: i64,
    /// Count, gauge value, or numerator for ratios.
    pub value: f64,
    /// Denominator for ratios.
    pub denominator: Option<f64>,
    /// Holiday or maintenance: skipped in fitting, never flagged.
    pub excluded: bool,
}

impl Bucket {
    /// A count or gauge bucket.
    pub fn new(ts: i64, value: f64) -> Self {
        Bucket {
            ts,
            value,
            denominator: None,
            excluded: false,
        }
    }

    /// A ratio bucket.
    pub fn ratio(ts: i64, numerator: f64, denominator: f64) -> Self {
        Bucket {
            ts,
            value: numerator,
            denominator: Some(denominator),
            excluded: false,
        }
    }
}

/// The detector's judgement of one bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// The observed value in the band's units (ratio = numerator / denominator) and its band:
    /// the expected value (NaN while no baseline exists) and the edges of the single-bucket
    /// test at the configured sensitivity (NaN while no calibrated baseline exists).
    pub reading: Reading,
    /// Calibrated anomaly likelihood in [0, 1]: the bucket is an anomaly at sensitivity `s`
    /// exactly when `score >= 1 - s / 2` (so 0.75 at `medium`); 0.5 is about one false alarm a
    /// week on this series, 1 at most one in 10,000 weeks. See `docs/DETECTION.md`.
    pub score: f64,
    /// Whether this bucket is an anomaly at the configured sensitivity and direction.
    pub anomaly: bool,
    /// What happened to the bucket.
    pub status: Status,
    /// The seasonality the baseline used.
    pub seasonality: Seasonality,
    /// Count, or denominator for ratios (the value for gauges).
    pub volume: f64,
    /// Why an anomaly was flagged (`None` when it is not one).
    pub trigger: Option<Trigger>,
    /// The side of the baseline an anomaly is on (`None` when it is not one).
    pub side: Option<Side>,
    /// For an anomaly: where its incident started — the first bucket of the accumulated
    /// evidence, in the same local seconds as [`Bucket::ts`].
    pub since: Option<i64>,
    /// An incident on a watched side is still open after this bucket: the evidence that the
    /// level is back at the baseline is not there yet (whether or not this bucket is flagged).
    /// Alert lifecycles resolve on this, not on buckets inside the band.
    pub ongoing: bool,
}

/// One side's open incident: a deviation that has fired and has not come back yet.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
struct Incident {
    /// Local seconds of its first bucket.
    since: i64,
    /// Buckets and the sum of their z-scores, for the incident's own level.
    n: f64,
    z_sum: f64,
    /// Log-likelihood ratio evidence (CUSUM) that the level is back at the baseline.
    recover: f64,
    /// Opened by a run of empty count buckets: an outage, whose level is zero, so the first
    /// events mean it is over.
    empty: bool,
}

impl Incident {
    /// The incident's level in z units, signed, at least `RECOVERY_MIN_SHIFT` away from zero.
    fn shift(&self, side: Side) -> f64 {
        let mean = if self.n > 0.0 { self.z_sum / self.n } else { 0.0 };
        match side {
            Side::Below => mean.min(-RECOVERY_MIN_SHIFT),
            Side::Above => mean.max(RECOVERY_MIN_SHIFT),
        }
    }
}

/// The alarm statistics after a bucket: what `learn` commits.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
struct AlarmState {
    cusum: [f64; 2],
    cusum_since: [i64; 2],
    zero_run: f64,
    zero_since: i64,
    incident: [Option<Incident>; 2],
}

impl AlarmState {
    fn quiet() -> Self {
        AlarmState {
            cusum: [0.0; 2],
            cusum_since: [0; 2],
            zero_run: 0.0,
            zero_since: 0,
            incident: [None, None],
        }
    }

    fn in_incident(&self) -> bool {
        self.incident.iter().any(Option::is_some)
    }
}

/// Everything `step` needs after scoring, to learn.
#[derive(Debug, Clone, Copy)]
struct Scored {
    verdict: Verdict,
    /// The bucket's z-score, when it had a prediction.
    z: Option<f64>,
    /// The alarm state this bucket leaves.
    next: AlarmState,
    /// The CUSUMs after this bucket, before an alarm restarts them.
    cusum: [f64; 2],
    /// A test fired on this bucket (on any side, watched or not).
    fired: bool,
    /// The bucket is judged (past warm-up).
    judged: bool,
    /// Its deviation from the expected value on the baselines' scale.
    dev: f64,
    preds: [Option<Prediction>; 3],
    chosen: Option<usize>,
    /// A more specific model that has seen this slot but is not the chosen one.
    veto: Option<usize>,
    /// The level before the last accepted new normal explains this bucket and the current
    /// one does not.
    back_home: bool,
    /// The chosen model's prediction at that old level, while it is remembered (of the two
    /// remembered, the one nearer the bucket).
    home: Option<Prediction>,
    /// `home` is the original level (`PreviousLevel::origin`), not the latest.
    home_origin: bool,
    /// The weekly profile's prediction from the days of this bucket's type, when it vetoes
    /// in place of a slot it has not seen (see `SeasonalModel::predict_day_type`).
    day_type: Option<Prediction>,
}

/// A recent bucket that the single-bucket test found beyond its threshold (flagged or not):
/// what makes a deviation "this series' behaviour" once it recurs.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
struct Event {
    /// `learned` when it happened.
    at: u64,
    below: bool,
    /// Its deviation from the expected value, in the value's units.
    dev: f32,
}

/// Recent events kept per series.
const EVENTS: usize = 32;

/// Lag-1 autocorrelation of the z-scores of learned buckets, over about a week.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
struct Autocorrelation {
    prev: f64,
    lag: f64,
    sq: f64,
    n: u32,
}

/// The online detector of one series; clone it to branch a backtest.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct OnlineDetector {
    cfg: DetectorConfig,
    #[serde(with = "snapshot::normal")]
    normal: Normal,
    thresholds: Thresholds,
    models: [Option<SeasonalModel>; 3],
    learned: u64,
    judge_after: u64,
    per_day: f64,
    buckets_per_week: f64,
    /// Buckets of one incident after which its level is the new normal: a quarter of a day,
    /// at least 3.
    accept_after: u32,
    /// Buckets learned before the CUSUM accumulates: a day and a half when a daily profile is
    /// possible (a day to see it, half a day to prove it), else the judging warm-up.
    accumulate_after: u64,
    /// Evidence (nats) that ends an incident: `ln` of the buckets in a day (a false
    /// "recovered" about once a day of an incident at most), at least `RECOVERY_NATS`.
    recovery_nats: f64,
    /// Buckets over which recent events make a deviation recurrent: four weeks, at most the
    /// calibration window.
    recurrence_window: u64,
    alarm: AlarmState,
    incident_len: u32,
    ac: Autocorrelation,
    cal_z: TailCalibrator,
    cal_cusum: TailCalibrator,
    events: Vec<Event>,
    /// The level before the last accepted new normal, for a while: a series that comes back
    /// to it is going home, not breaking out again.
    previous: Option<PreviousLevel>,
    /// Gauges: the scale the baselines work on, chosen once from the warm-up buckets.
    scale: GaugeScale,
    /// Gauges during warm-up: the buckets seen, to choose the scale and replay them on it.
    early: Vec<(i64, f64)>,
    /// Gauges: the series' resolution on the baselines' scale (smallest step seen between
    /// two consecutive values; 0 until one is seen), and the last value, to measure it.
    quantum: f64,
    last_y: f64,
    /// Counts and gauges: the last four weeks' extremes, for the record test.
    records: records::Records,
    /// Counts and gauges: per window of `SUSTAINED_SECS`, the mean of the last few hours and
    /// the last four weeks' extremes of such means, for the sustained record test; `None`
    /// where the window would be shorter than `SUSTAINED_MIN_BUCKETS` or no longer than the
    /// one before it.
    sustained: [Option<Box<records::Sustained>>; 2],
    /// Per side, `learned` at the last bucket an incident was open.
    incident_last: [Option<u64>; 2],
}

/// What accepting a new normal did to each candidate's level, to undo it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
struct PreviousLevel {
    /// Per candidate, the shift back to the old level.
    back: [Shift; 3],
    /// Per candidate, the shift back to the level before the first of the new normals still
    /// remembered (equal to `back` after one): a day-long plateau is accepted twice — at
    /// night, where it reads high, and in the day, where it reads low — and the pattern it
    /// interrupted is the way home from both.
    origin: [Shift; 3],
    /// `learned` when the new normal was accepted.
    at: u64,
    /// Consecutive buckets the old level explains and the new one does not.
    agree: u32,
}

/// The scale a gauge's baselines work on.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
enum GaugeScale {
    /// Not chosen yet (warm-up): linear.
    Undecided,
    /// The values themselves: additive noise.
    Linear,
    /// Their logarithm (values are positive and their noise multiplicative); values at or
    /// below zero are taken as `floor`.
    Log { floor: f64 },
}

const SIMPLER_UNLESS_BETTER_BY: f64 = 0.9;
/// A weekly profile also explains the daily one, so it wins a tie.
const WEEKLY_UNLESS_WORSE_BY: f64 = 1.0;
const WINSOR_SD: f64 = 3.0;
/// Cap on the residual autocorrelation the CUSUM corrects for.
const MAX_AUTOCORRELATION: f64 = 0.8;
/// Values beyond this magnitude are treated as missing: no KPI is that large, and squaring
/// them would overflow the noise estimates.
const MAX_MAGNITUDE: f64 = 1e15;
/// Fraction of the zero-run threshold beyond which empty count buckets are held back from
/// learning.
const ZERO_HOLD_BACK: f64 = 0.5;
/// Buckets within this |z| of the baseline score 0: most buckets are, and sparing them the
/// tail probability keeps a replay's cost where it was (the fit bench: about 2.7 s with every
/// bucket graded, about 2.4 s with these left out, as without a graded score).
const MIN_GRADED_Z: f64 = 1.0;
/// Cap of the graded score below the firing range: under 0.5 even as printed (three decimals).
const BELOW_FIRING: f64 = 0.499;
/// Smallest single-bucket |z| (and CUSUM decision interval) that can flag, whatever the budget:
/// below it a daily series' budget would flag ordinary noise.
const MIN_Z: f64 = 3.0;
/// A gauge's spread is at least this many steps of its resolution (the smallest step seen
/// between two consecutive values): on a series that moves in whole units, or that sits still
/// for days and then ticks once, one step is never news. Without it the spread of a quiet
/// integer gauge collapses towards zero and a tick scores |z| in the thousands.
const RESOLUTION_SD: f64 = 1.0;
/// A deviation at least this large that the recent history already holds this many times is
/// the series' behaviour, not news. Three, not two: two incidents in four weeks do not make a
/// third one of their size normal.
const RECURRENT: usize = 3;
/// Events this few buckets apart on one side are one episode (the scorer's and the pager's
/// notion: a burst with a quiet bucket inside it is still one burst).
const EPISODE_GAP: u64 = 3;
/// Effective buckets behind a gauge's spread before its z-scores calibrate the tails.
const MIN_SPREAD_FOR_CALIBRATION: f64 = 30.0;
/// After a new normal, a bucket within this |z| of the old level ...
const RETURN_Z: f64 = 2.0;
/// ... and at least this far from the new one is one going back; `RETURN_AFTER` in a row
/// undo the new normal.
const RUN_AWAY_Z: f64 = 3.0;
const RETURN_AFTER: u32 = 3;
/// Log-likelihood units by which the log scale must beat the linear one for a gauge.
const BOX_COX_MARGIN: f64 = 2.0;
/// On the log scale, values at or below zero count as this share of the warm-up's geometric
/// mean: a drop to zero is a deep drop, not an error.
const LOG_FLOOR: f64 = 1e-3;
/// The record test's tail: a value whose distance beyond the median day is `r` times the
/// largest of the last four weeks' has a chance of `r^(-1 / RECORD_TAIL_INDEX) / n` per bucket
/// (n the buckets remembered): at `medium` over four weeks of buckets, `r` at least 1.48 fires
/// (`low` 1.86, `high` 1.17).
const RECORD_TAIL_INDEX: f64 = 0.1;
/// Buckets learned, and remembered in the last four weeks, before the record test judges.
const RECORD_AFTER: u64 = 288;
/// The sustained record test's windows. The short one: for buckets of five minutes and finer a
/// little longer than the level's memory (about two hours), so a shift the level is absorbing
/// is still measured whole. The long one, half a day: a shift too small for three hours'
/// mean, or slow to build, stands out in the mean of twelve. Each at most 180 buckets (a
/// 1-minute KPI's three hours: there the long window is not kept).
const SUSTAINED_SECS: [u32; 2] = [3 * 3600, 12 * 3600];
const SUSTAINED_MAX_BUCKETS: u32 = 180;
/// The fewest buckets the sustained record test's window holds, or the test does not run: a
/// quarter of the level's shortest memory (24 buckets). The level takes in about
/// `window / memory` of a shift while the window passes, so a shorter window sees what the
/// CUSUM already sees nearly whole: for buckets coarser than 30 minutes (a three-hour window
/// of 1–5 buckets) the test is a short-run mean, which on the dev sets' hourly series flagged
/// nothing at `medium` and only false alarms at `high` (docs/DETECTION.md §3, test 5).
///
/// The long window needs at least the level's shortest memory (24 buckets, half an hour's
/// buckets and finer): on hourly buckets half a day is half the level's memory, a shift's
/// mean there is what the CUSUM already weighs, and the window cost the hourly fit a sixth
/// of its time.
const SUSTAINED_MIN_BUCKETS: [u32; 2] = [6, 24];
/// On how many days the sustained record test remembers window means before it judges, per
/// window (and at least `RECORD_AFTER` means, a day of them at five minutes): the long
/// window's means need eight, a whole week besides the first, partial one. The farthest of a
/// few windows says little about the farthest of a month: on a wandering series (an AR(1) or
/// random-walk gauge) the range of half-day means keeps growing for weeks, and five days of
/// them were taken for the month's.
const SUSTAINED_AFTER_DAYS: [u32; 2] = [1, 8];
/// Windows after an incident on a side before the sustained record test opens another there.
/// The short window: one (a window overlapping the incident is no news; two cost a
/// heavy-tailed rise of a few hours its alarm when an earlier incident of the tail was six
/// hours before it). The long window: two, since a window after the incident is judged
/// against windows that overlapped it until those have joined the memory: a level shift
/// alerted and accepted as the new normal stays a record of half-day means for a day, and
/// fired a second time half a day after the first.
const SUSTAINED_QUIET_WINDOWS: [u64; 2] = [1, 2];
/// Deviations at least this share of the current one count as comparable.
const COMPARABLE: f64 = 0.8;
/// Evidence (nats) that the level is back at the baseline before an incident ends, at least:
/// 20 to 1. The recovery test is itself a CUSUM, so the evidence it needs grows with the
/// buckets in a day (see `recovery_nats`), or a long incident would "recover" by chance.
const RECOVERY_NATS: f64 = 3.0;
/// The smallest incident level (in z units) recovery is tested against.
const RECOVERY_MIN_SHIFT: f64 = 1.0;
/// Where the z calibrator checks the noise model's tail: `P(z > level)` per side.
const Z_REFERENCE: &[(f64, f64)] = &[
    (3.0, 1.35e-3),
    (4.0, 3.17e-5),
    (5.0, 2.87e-7),
    (6.0, 9.87e-10),
    (8.0, 6.2e-16),
];
/// Where the CUSUM calibrator checks it: a CUSUM with reference 0.75 on independent standard
/// normal increments exceeds `c` about `exp(-0.87 - 1.51 c)` of the time (simulated, 5 M
/// steps: 2.1 % above 2, 0.47 % above 3, 0.10 % above 4).
const CUSUM_REFERENCE: &[(f64, f64)] = &[
    (2.0, 2.12e-2),
    (3.0, 4.66e-3),
    (4.0, 1.01e-3),
    (6.0, 4.9e-5),
    (8.0, 2.4e-6),
    (12.0, 5.7e-9),
];

impl OnlineDetector {
    /// A detector with no history. Fails on a bad configuration.
    pub fn new(cfg: DetectorConfig) -> Result<Self> {
        if cfg.interval_secs == 0 {
            return Err(Error::InvalidInterval(cfg.interval_secs));
        }
        if !cfg.min_volume.is_finite() || cfg.min_volume < 0.0 {
            return Err(Error::InvalidMinVolume(cfg.min_volume));
        }
        let normal = Normal::new(0.0, 1.0).map_err(|e| Error::Statistics(e.to_string()))?;
        let interval = i64::from(cfg.interval_secs);
        let per_day = 86_400.0 / f64::from(cfg.interval_secs);
        let buckets_per_week = (per_day * 7.0).max(1.0);
        let thresholds = Thresholds::new(cfg.sensitivity.get(), buckets_per_week, &normal);
        let wanted = |s: Seasonality| match cfg.seasonality {
            SeasonalityMode::Auto => true,
            SeasonalityMode::None => s == Seasonality::None,
            SeasonalityMode::Daily => s == Seasonality::Daily,
            SeasonalityMode::Weekly => s == Seasonality::Weekly,
        };
        let make = |s: Seasonality| {
            if wanted(s) {
                SeasonalModel::new(cfg.kind, s, interval)
            } else {
                None
            }
        };
        let mut models = [
            make(Seasonality::None),
            make(Seasonality::Daily),
            make(Seasonality::Weekly),
        ];
        if models.iter().all(Option::is_none) {
            // A forced seasonality longer than the bucket allows: fall back to a level.
            models[0] = SeasonalModel::new(cfg.kind, Seasonality::None, interval);
        }
        let judge_after = judge_after_buckets(cfg.seasonality, per_day);
        Ok(OnlineDetector {
            cfg,
            normal,
            thresholds,
            models,
            learned: 0,
            judge_after,
            per_day,
            buckets_per_week,
            accept_after: (per_day / 4.0).max(3.0).ceil() as u32,
            accumulate_after: if per_day >= 2.0 {
                judge_after.max((1.5 * per_day).ceil() as u64)
            } else {
                judge_after
            },
            recovery_nats: per_day.ln().max(RECOVERY_NATS),
            recurrence_window: (28.0 * per_day).clamp(1.0, calibrate::CAPACITY as f64) as u64,
            alarm: AlarmState::quiet(),
            incident_len: 0,
            ac: Autocorrelation::default(),
            // A gauge's z-score is continuous and normal under its model; a count's or a ratio's
            // is discrete, and their exact tails stand until exceedances refute them.
            cal_z: TailCalibrator::new(Z_REFERENCE, calibration_window(per_day))
                .declustered(MIN_Z)
                .with_index_gate(cfg.kind == Kind::Gauge),
            cal_cusum: TailCalibrator::new(CUSUM_REFERENCE, calibration_window(per_day)),
            events: Vec::new(),
            previous: None,
            scale: if cfg.kind == Kind::Gauge {
                GaugeScale::Undecided
            } else {
                GaugeScale::Linear
            },
            early: Vec::new(),
            quantum: 0.0,
            last_y: f64::NAN,
            records: records::Records::default(),
            sustained: {
                let len = |i: usize| {
                    let len = (SUSTAINED_SECS[i] / cfg.interval_secs).min(SUSTAINED_MAX_BUCKETS);
                    (cfg.kind != Kind::Ratio && len >= SUSTAINED_MIN_BUCKETS[i]).then_some(len)
                };
                let (short, long) = (len(0), len(1));
                let new = |n: u32| Box::new(records::Sustained::new(n as usize));
                [
                    short.map(new),
                    long.filter(|&n| short.is_none_or(|s| n > s)).map(new),
                ]
            },
            incident_last: [None, None],
        })
    }

    /// Fit: a detector that has stepped through `history` in order.
    pub fn warm(cfg: DetectorConfig, history: &[Bucket]) -> Result<Self> {
        let mut det = OnlineDetector::new(cfg)?;
        for b in history {
            // Nobody reads these verdicts: the score below the firing range is not graded.
            let scored = det.score_raw(b, false);
            det.learn(b, &scored, Feedback::None);
        }
        Ok(det)
    }

    /// The configuration.
    pub fn config(&self) -> &DetectorConfig {
        &self.cfg
    }

    /// Bytes of model state: the struct itself plus its heap allocations.
    pub fn state_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self
                .models
                .iter()
                .flatten()
                .map(SeasonalModel::heap_bytes)
                .sum::<usize>()
            + self.cal_z.heap_bytes()
            + self.cal_cusum.heap_bytes()
            + self.events.capacity() * std::mem::size_of::<Event>()
            + self.early.capacity() * std::mem::size_of::<(i64, f64)>()
            + self
                .sustained
                .iter()
                .flatten()
                .map(|s| std::mem::size_of::<records::Sustained>() + s.heap_bytes())
                .sum::<usize>()
    }

    /// The noise model's single-bucket |z| threshold at the configured sensitivity (the band's
    /// half-width in standard deviations where the series' own history does not widen it).
    pub fn band_z(&self) -> f64 {
        self.thresholds.z_bucket
    }

    /// Score `b` without learning from it.
    pub fn evaluate(&self, b: &Bucket) -> Verdict {
        let scored = self.score(b, Feedback::None);
        self.with_band(b, &scored)
    }

    /// Score `b`, then learn from it unless it is anomalous, excluded or missing.
    pub fn step(&mut self, b: &Bucket) -> Verdict {
        self.step_with_feedback(b, Feedback::None)
    }

    /// [`step`](Self::step) with a user's `feedback` on `b`: see [`Feedback`]. An excluded or
    /// missing bucket ignores its feedback; the verdict is never an anomaly unless the
    /// feedback is [`Feedback::None`].
    pub fn step_with_feedback(&mut self, b: &Bucket, feedback: Feedback) -> Verdict {
        let scored = self.score(b, feedback);
        let verdict = self.with_band(b, &scored);
        self.learn(b, &scored, feedback);
        verdict
    }

    /// `sqrt((1 - rho) / (1 + rho))` for the lag-1 autocorrelation `rho` of recent z-scores.
    fn cusum_scale(&self) -> f64 {
        if self.ac.n < 50 || self.ac.sq <= 0.0 {
            return 1.0;
        }
        let rho = (self.ac.lag / self.ac.sq).clamp(0.0, MAX_AUTOCORRELATION);
        ((1.0 - rho) / (1.0 + rho)).sqrt()
    }

    /// Track the lag-1 autocorrelation of the z-scores of learned buckets, over about a week.
    fn track_autocorrelation(&mut self, z: f64) {
        let z = z.clamp(-4.0, 4.0);
        let ac = &mut self.ac;
        ac.n = ac.n.saturating_add(1);
        let a = (1.0 / f64::from(ac.n)).max(1.0 / (self.per_day * 7.0).max(14.0));
        ac.lag += a * (z * ac.prev - ac.lag);
        ac.sq += a * (z * z - ac.sq);
        ac.prev = z;
    }

    /// Index of the model used for this bucket.
    fn chosen(&self, ts: i64) -> Option<usize> {
        let per_day = self.per_day;
        let avail = |i: usize, min_errors: f64| {
            self.models[i]
                .as_ref()
                .filter(|m| m.trusted(ts) && f64::from(m.mse_n) >= min_errors)
        };
        if self.cfg.seasonality != SeasonalityMode::Auto {
            return self.models.iter().position(Option::is_some);
        }
        let mut best = 0usize;
        let mut best_mse = match &self.models[0] {
            Some(m) => m.mse,
            None => f64::INFINITY,
        };
        if let Some(m) = avail(1, (per_day / 2.0).max(2.0)) {
            if m.mse < SIMPLER_UNLESS_BETTER_BY * best_mse {
                best = 1;
                best_mse = m.mse;
            }
        }
        if let Some(m) = avail(2, per_day.max(7.0)) {
            if m.mse < WEEKLY_UNLESS_WORSE_BY * best_mse {
                best = 2;
            }
        }
        Some(best)
    }

    fn observation(&self, b: &Bucket) -> Option<(f64, f64)> {
        let usable = |x: f64| x.is_finite() && x.abs() <= MAX_MAGNITUDE;
        if !usable(b.value) {
            return None;
        }
        match self.cfg.kind {
            Kind::Ratio => match b.denominator {
                Some(d) if usable(d) && d >= 0.0 => Some((b.value.clamp(0.0, d), d)),
                _ => None,
            },
            Kind::Count => Some((b.value, 1.0)),
            Kind::Gauge => Some((self.to_model(b.value), 1.0)),
        }
    }

    /// A gauge value on the baselines' scale.
    fn to_model(&self, v: f64) -> f64 {
        match self.scale {
            GaugeScale::Log { floor } => v.max(floor).ln(),
            _ => v,
        }
    }

    /// A value on the baselines' scale back in the value's units.
    fn to_value(&self, m: f64) -> f64 {
        match self.scale {
            GaugeScale::Log { .. } => m.exp(),
            _ => m,
        }
    }

    /// Gauges at the end of warm-up: work on the log scale when every value so far was
    /// positive and the noise is multiplicative: the Box-Cox likelihood of lambda 0 against 1,
    /// by a clear margin, of the changes from one bucket to the next. Not of the values
    /// themselves: their spread over the warm-up is mostly the seasonal cycle, and a daily
    /// sine from 10 to 90 under additive noise looked "logarithmic" (its troughs were then
    /// judged with a ninth of their spread). The warm-up is replayed on the chosen scale.
    fn choose_scale(&mut self) {
        let values: Vec<f64> = self.early.iter().map(|&(_, v)| v).collect();
        let positive = values.iter().all(|&v| v > 0.0 && v.is_finite());
        let mut scale = GaugeScale::Linear;
        if positive && values.len() >= 9 {
            let ll_linear = noise::box_cox_of_changes(&values, 1.0);
            let ll_log = noise::box_cox_of_changes(&values, 0.0);
            if ll_log > ll_linear + BOX_COX_MARGIN {
                let geo = (values.iter().map(|v| v.ln()).sum::<f64>() / values.len() as f64).exp();
                scale = GaugeScale::Log {
                    floor: geo * LOG_FLOOR,
                };
            }
        }
        let early = std::mem::take(&mut self.early);
        if let GaugeScale::Log { .. } = scale {
            // Replay the warm-up on the log scale: the baselines start over there.
            if let Ok(mut fresh) = OnlineDetector::new(self.cfg) {
                fresh.scale = scale;
                for &(ts, v) in &early {
                    let b = Bucket::new(ts, v);
                    let scored = fresh.score(&b, Feedback::None);
                    fresh.learn(&b, &scored, Feedback::None);
                }
                *self = fresh;
            }
        }
        self.scale = scale;
    }

    /// The sensitivity at which a per-bucket tail probability `p` (one side) just fires the
    /// single-bucket test; infinite when it never does.
    fn sens_for_tail(&self, p: f64) -> f64 {
        if p.is_nan() || p > threshold::MAX_ALPHA {
            return f64::INFINITY;
        }
        threshold::sensitivity_for_budget(2.0 * p * self.buckets_per_week)
    }

    /// The sensitivity at which a CUSUM value `c` just fires; infinite when it never does.
    fn sens_for_cusum(&self, c: f64) -> f64 {
        if c < MIN_Z {
            return f64::INFINITY;
        }
        let arl = threshold::cusum_arl0(CUSUM_K, c);
        threshold::sensitivity_for_budget(2.0 * self.buckets_per_week / arl.max(1.0))
    }

    /// The sensitivity at which a z magnitude `m` on `side` fires the single-bucket test.
    fn sens_for_z(&self, m: f64, dev: f64, side: Side) -> f64 {
        if m < MIN_Z {
            return f64::INFINITY;
        }
        let mut s = self.sens_for_tail(self.normal.cdf(-m));
        let below = side == Side::Below;
        if self.cal_z.rejected(below) {
            if let Some(f) = self.cal_z.fit(below) {
                s = s.max(self.sens_for_tail(f.sf(m).unwrap_or(1.0)));
            }
        }
        if s < f64::INFINITY && self.recurrent(dev, below) {
            // It has happened often enough lately to be this series' behaviour.
            return f64::INFINITY;
        }
        s
    }

    /// The sensitivity at which a z magnitude `m` on `side` would fire the single-bucket test
    /// without its gates (|z| of at least `MIN_Z`, not recurrent): the tail probability as a
    /// budget, for the score. Below `MIN_Z` the model's tail (the calibration is consulted only
    /// from there, as the test does: fitting it for every quiet bucket would cost a refit every
    /// few buckets); from there the calibrated one, capped at the model's probability at
    /// `MIN_Z` so the score never falls as the deviation grows. `m` is positive (a deviation
    /// on `side`).
    fn graded_sens_for_z(&self, m: f64, side: Side) -> f64 {
        let mut p = self.normal.cdf(-m);
        let below = side == Side::Below;
        if m >= MIN_Z && self.cal_z.rejected(below) {
            if let Some(f) = self.cal_z.fit(below) {
                // Inside the body the fit says only that the tail beyond it holds `share`.
                p = p.max(f.sf(m).unwrap_or(f.share)).min(threshold::MAX_ALPHA);
            }
        }
        threshold::sensitivity_for_budget(2.0 * p * self.buckets_per_week)
    }

    /// Whether at least `RECURRENT` recent events on this side deviated at least
    /// `COMPARABLE` times as much as `dev`.
    fn recurrent(&self, dev: f64, below: bool) -> bool {
        dev <= self.recurrent_below(below)
    }

    /// The largest deviation on this side that is recurrent: the `RECURRENT`-th largest recent
    /// event's deviation over `COMPARABLE` (0 when there are fewer events).
    fn recurrent_below(&self, below: bool) -> f64 {
        let since = self.learned.saturating_sub(self.recurrence_window);
        let mut devs: Vec<f32> = self
            .events
            .iter()
            .filter(|e| e.below == below && e.at >= since)
            .map(|e| e.dev)
            .collect();
        if devs.len() < RECURRENT {
            return 0.0;
        }
        devs.sort_unstable_by(|a, b| b.total_cmp(a));
        f64::from(devs[RECURRENT - 1]) / COMPARABLE
    }

    /// The sensitivity at which a CUSUM magnitude `c` on `side` fires.
    fn sens_for_side_cusum(&self, c: f64, side: Side) -> f64 {
        let mut s = self.sens_for_cusum(c);
        let below = side == Side::Below;
        if s < f64::INFINITY && self.cal_cusum.rejected(below) {
            if let Some(f) = self.cal_cusum.fit(below) {
                s = s.max(self.sens_for_tail(f.sf(c).unwrap_or(1.0)));
            }
        }
        if s < f64::INFINITY
            && self
                .cal_cusum
                .count_beyond((COMPARABLE * c).max(self.cusum_threshold(side)), below)
                >= RECURRENT
        {
            return f64::INFINITY;
        }
        s
    }

    /// The last four weeks' extremes when the record test may judge (counts and gauges, after
    /// `RECORD_AFTER` buckets learned and remembered), for the bucket at `ts`.
    fn record_extremes(&self, ts: i64) -> Option<records::Extremes> {
        if self.cfg.kind == Kind::Ratio || self.learned < RECORD_AFTER {
            return None;
        }
        self.records
            .extremes(ts)
            .filter(|e| u64::from(e.n) >= RECORD_AFTER)
    }

    /// The sensitivity at which value `x` fires the record test on `side`: how far beyond the
    /// median day it lies, as a multiple of the farthest of the last four weeks, under a tail
    /// of index `RECORD_TAIL_INDEX`. Infinite unless `x` is beyond every remembered value.
    fn sens_for_record(&self, ts: i64, x: f64, e: &records::Extremes, side: Side) -> f64 {
        self.sens_beyond(ts, x, e, side, 0.0)
    }

    /// What the sustained record test judges the bucket at `ts` of value `x` by, per window:
    /// the mean of the window ending with it and the last four weeks' extremes of such means
    /// (windows that share no bucket with this one). `None` for ratios, where the test does not
    /// run, until the detector has learned `RECORD_AFTER` buckets, and until it remembers as
    /// many means on `SUSTAINED_AFTER_DAYS` days.
    fn sustained_windows(&self, ts: i64, x: f64) -> [Option<(f64, records::Extremes)>; 2] {
        if self.sustained.iter().all(Option::is_none) || self.learned < RECORD_AFTER {
            return [None, None];
        }
        let mut windows = [None, None];
        let each = windows.iter_mut().zip(&self.sustained).zip(SUSTAINED_AFTER_DAYS);
        for ((window, sustained), after_days) in each {
            let Some(sustained) = sustained else { continue };
            let Some(mean) = sustained.mean_with(x) else {
                continue;
            };
            *window = sustained
                .extremes(ts)
                .filter(|e| u64::from(e.n) >= RECORD_AFTER)
                .filter(|_| sustained.days_remembered(ts) >= after_days)
                .map(|e| (mean, e));
        }
        windows
    }

    /// The sensitivity at which the sustained record test fires on `side`, and the length of
    /// the window that decides: the record test's rule applied to the mean of the last few
    /// hours (`windows`, from [`Self::sustained_windows`]), the lower over both windows.
    /// It opens incidents and no more: not while one is open on that side, nor until
    /// `SUSTAINED_QUIET_WINDOWS` windows have passed since one was. How long an incident lasts
    /// is the recovery test's business, and a window that overlaps one is no news. Without
    /// this, the mean of a window holding a burst stayed a record for hours after the burst
    /// and held its incident open.
    fn sens_for_sustained(
        &self,
        ts: i64,
        windows: &[Option<(f64, records::Extremes)>; 2],
        side: Side,
    ) -> (f64, usize) {
        let mut best = (f64::INFINITY, 1);
        if windows.iter().all(Option::is_none) {
            return best;
        }
        let i = side.index();
        let each = windows.iter().zip(&self.sustained).zip(SUSTAINED_QUIET_WINDOWS);
        for ((window, sustained), quiet_windows) in each {
            let (Some((mean, e)), Some(sustained)) = (window, sustained) else {
                continue;
            };
            let quiet_for = quiet_windows * sustained.len() as u64;
            let recent_incident = self.alarm.incident[i].is_some()
                || self.incident_last[i].is_some_and(|at| self.learned < at + quiet_for);
            if recent_incident {
                continue;
            }
            let sens = self.sens_beyond(ts, *mean, e, side, sustained.resolution());
            if sens < best.0 {
                best = (sens, sustained.len());
            }
        }
        best
    }

    /// The record rule: how far beyond the record test's centre for the bucket at `ts` the
    /// value `x` lies on `side`, as a multiple of the farthest of the `e.n` remembered, under a
    /// tail of index `RECORD_TAIL_INDEX`. Infinite unless `x` is beyond every remembered value.
    ///
    /// The farthest counts as at least `step`: the three-hour mean of a 5-minute gauge that
    /// sits still and now and then ticks by one moves by a thirty-sixth, and two ticks in one
    /// window would be twice the farthest of the month. A mean that moved less than one step
    /// of the values' resolution is no record.
    fn sens_beyond(&self, ts: i64, x: f64, e: &records::Extremes, side: Side, step: f64) -> f64 {
        let beyond_all = match side {
            Side::Above => x > e.max,
            Side::Below => x < e.min,
        };
        if !beyond_all {
            return f64::INFINITY;
        }
        let Some(center) = self.records.center(ts) else {
            return f64::INFINITY;
        };
        let (dist, farthest) = match side {
            Side::Above => (x - center, e.max - center),
            Side::Below => (center - x, center - e.min),
        };
        // A series that never left its median day (or NaNs) has no range to measure against.
        if farthest.is_nan() {
            return f64::INFINITY;
        }
        let farthest = farthest.max(step);
        if farthest <= 0.0 {
            return f64::INFINITY;
        }
        let p = (dist / farthest).powf(-1.0 / RECORD_TAIL_INDEX) / f64::from(e.n);
        self.sens_for_tail(p)
    }

    /// The values the record test does not flag at the configured sensitivity, for the bucket
    /// at `ts`: `(lower, upper)`, infinite where it cannot fire.
    fn record_band(&self, ts: i64) -> (f64, f64) {
        let open = (f64::NEG_INFINITY, f64::INFINITY);
        let (Some(e), Some(center)) = (self.record_extremes(ts), self.records.center(ts)) else {
            return open;
        };
        let alpha = self.thresholds.alpha.min(threshold::MAX_ALPHA);
        let r = (alpha * f64::from(e.n)).powf(-RECORD_TAIL_INDEX).max(1.0);
        let upper = if e.max > center {
            center + r * (e.max - center)
        } else {
            f64::INFINITY
        };
        let lower = if e.min < center {
            center - r * (center - e.min)
        } else {
            f64::NEG_INFINITY
        };
        (lower, upper)
    }

    /// The single-bucket |z| threshold on `side` at the configured sensitivity.
    fn z_threshold(&self, side: Side) -> f64 {
        let mut t = self.thresholds.z_bucket;
        let below = side == Side::Below;
        if self.cal_z.rejected(below) {
            if let Some(f) = self.cal_z.fit(below) {
                t = t.max(f.quantile(self.thresholds.alpha));
            }
        }
        t
    }

    /// The CUSUM decision interval on `side` at the configured sensitivity.
    fn cusum_threshold(&self, side: Side) -> f64 {
        let mut h = self.thresholds.cusum_h;
        let below = side == Side::Below;
        if self.cal_cusum.rejected(below) {
            if let Some(f) = self.cal_cusum.fit(below) {
                h = h.max(f.quantile(self.thresholds.alpha));
            }
        }
        h
    }

    /// Score `b`, then apply `feedback` to the verdict and to the state it would leave.
    fn score(&self, b: &Bucket, feedback: Feedback) -> Scored {
        let mut scored = self.score_raw(b, true);
        if matches!(scored.verdict.status, Status::Excluded | Status::Missing) {
            return scored;
        }
        match feedback {
            Feedback::None => {}
            Feedback::NotAnomaly => {
                // Normal by the user's word: the bucket moves none of the alarm statistics.
                scored.next = self.alarm;
                scored.fired = false;
                clear_anomaly(&mut scored.verdict);
            }
            Feedback::NewNormal => {
                scored.next = AlarmState::quiet();
                scored.fired = false;
                clear_anomaly(&mut scored.verdict);
            }
        }
        scored
    }

    /// The verdict on `b` and the state it would leave; `graded`: whether a score below the
    /// firing range is graded (only a verdict someone reads needs it; learning does not).
    fn score_raw(&self, b: &Bucket, graded: bool) -> Scored {
        let kind = self.cfg.kind;
        let obs = self.observation(b);
        let (y, weight) = obs.unwrap_or((f64::NAN, 0.0));
        let value = match (kind, obs) {
            (Kind::Ratio, Some(_)) if weight > 0.0 => y / weight,
            (Kind::Ratio, _) => match b.denominator {
                Some(d) if d > 0.0 => b.value / d,
                _ => f64::NAN,
            },
            (_, _) => b.value,
        };
        // The value on the baselines' scale (the log of a log-scale gauge).
        let model_value = match kind {
            Kind::Ratio => value,
            _ => y,
        };
        let volume = match kind {
            Kind::Ratio => weight,
            _ => b.value,
        };
        let mut preds: [Option<Prediction>; 3] = [None, None, None];
        for (slot, m) in preds.iter_mut().zip(self.models.iter()) {
            if let Some(m) = m {
                if m.ready(b.ts) {
                    *slot = Some(floored(m.predict(kind, b.ts, weight), kind, self.quantum));
                }
            }
        }
        let chosen = self.chosen(b.ts);
        let seasonality = chosen
            .and_then(|i| self.models[i].as_ref())
            .map_or(Seasonality::None, |m| m.seasonality);
        let pred = chosen.and_then(|i| preds[i]);
        let mut scored = Scored {
            verdict: Verdict {
                reading: Reading::new(
                    value,
                    Band::new(
                        pred.map_or(f64::NAN, |p| self.to_value(p.rate)),
                        f64::NAN,
                        f64::NAN,
                    ),
                ),
                score: 0.0,
                anomaly: false,
                status: Status::WarmingUp,
                seasonality,
                volume,
                trigger: None,
                side: None,
                since: None,
                ongoing: false,
            },
            z: None,
            next: self.alarm,
            cusum: [0.0; 2],
            fired: false,
            judged: false,
            dev: f64::NAN,
            preds,
            chosen,
            veto: None,
            back_home: false,
            home: None,
            home_origin: false,
            day_type: None,
        };
        if b.excluded {
            scored.verdict.status = Status::Excluded;
            return scored;
        }
        if obs.is_none() {
            scored.verdict.status = Status::Missing;
            return scored;
        }
        let Some(p) = pred else {
            return scored;
        };
        if kind == Kind::Ratio && weight <= 0.0 {
            scored.verdict.status = Status::LowVolume;
            return scored;
        }
        let z = self.z_score(y, weight, &p);
        scored.z = Some(z);
        scored.dev = (model_value - p.rate).abs();
        if self.learned < self.judge_after {
            // Warm-up: learned, never judged; no alarm state builds up.
            scored.next = AlarmState::quiet();
            return scored;
        }
        scored.judged = true;
        let ts = b.ts;
        let prev = self.alarm;
        let mut next = prev;
        // A more specific candidate that has already seen this slot (the weekly profile in its
        // first days, before it has proven itself) may explain what the chosen one cannot:
        // "it was like this at this time last week" vetoes a single-bucket alarm. Not one whose
        // spread stands on a handful of buckets: a Student t with 2 degrees of freedom explains
        // anything, and its band's edge was 10^187 or infinite.
        let veto = chosen.and_then(|c| {
            (c + 1..3)
                .rev()
                .find(|&i| preds[i].is_some_and(|q| q.spread_n >= f64::from(profile::MIN_SPREAD_SAMPLES)))
        });
        scored.veto = veto;
        // A vetoing prediction explains a deviation only when it lies on the deviation's side
        // of the chosen one ("it was higher at this time last week" explains a rise, not a
        // fall); one that is merely less certain does not weaken the evidence.
        let explains = |q: &Prediction| {
            (model_value > p.rate && q.rate > p.rate) || (model_value < p.rate && q.rate < p.rate)
        };
        let mut veto_z = veto
            .and_then(|i| preds[i])
            .filter(|q| explains(q))
            .map(|q| self.z_score(y, weight, &q));
        // Before a weekday has come round, the weekly profile still knows what the days of its
        // type (working days, or the weekend) looked like at this time: the first Monday after
        // a weekend is not a surge, nor the first Saturday a drop, when that is what they say.
        if veto.is_none() {
            let day_type = self
                .models
                .iter()
                .flatten()
                .find(|m| m.seasonality == Seasonality::Weekly)
                .filter(|_| seasonality != Seasonality::Weekly)
                .and_then(|m| m.predict_day_type(kind, b.ts, weight))
                .map(|q| floored(q, kind, self.quantum))
                .filter(|q| q.spread_n >= f64::from(profile::MIN_SPREAD_SAMPLES));
            if let Some(q) = day_type {
                scored.day_type = Some(q);
                if explains(&q) {
                    veto_z = Some(self.z_score(y, weight, &q));
                }
            }
        }
        // For a while after a new normal was accepted, the old level vetoes too: a series
        // coming back to where it was is not breaking out again.
        if let (Some(prev), Some(c)) = (
            self.previous
                .filter(|p| self.learned - p.at < self.recurrence_window),
            chosen,
        ) {
            let latest = prev.back[c].moved(kind, &p);
            let z_latest = self.z_score(y, weight, &latest);
            let (home, z_home, origin) = if prev.origin == prev.back {
                (latest, z_latest, false)
            } else {
                let first = prev.origin[c].moved(kind, &p);
                let z_first = self.z_score(y, weight, &first);
                if z_first.abs() < z_latest.abs() {
                    (first, z_first, true)
                } else {
                    (latest, z_latest, false)
                }
            };
            scored.home = Some(home);
            scored.home_origin = origin;
            scored.back_home = z_home.abs() <= RETURN_Z && z.abs() >= RUN_AWAY_Z;
            if explains(&home) {
                veto_z = Some(match veto_z {
                    Some(v) if v.abs() < z_home.abs() => v,
                    _ => z_home,
                });
            }
        }
        // Per side: the single bucket, the CUSUM, and (counts, below) the empty run. The CUSUM
        // accumulates only what a vetoing candidate agrees is a deviation.
        let z_acc = match veto_z {
            Some(vz) if vz.signum() == z.signum() => z.signum() * z.abs().min(vz.abs()),
            Some(_) => 0.0,
            None => z,
        };
        // One bucket alone is the single-bucket test's business: the CUSUM takes at most the
        // single-bucket threshold from any bucket, so it accumulates, never replays a spike.
        let cap = self.thresholds.z_bucket;
        // Accumulating needs a baseline that has seen a whole day: before the daily profile
        // can exist, a level alone reads every afternoon as a sustained shift.
        let zc = if self.learned >= self.accumulate_after {
            z_acc.clamp(-cap, cap) * self.cusum_scale()
        } else {
            0.0
        };
        next.cusum[0] = (prev.cusum[0] - zc - CUSUM_K).max(0.0);
        next.cusum[1] = (prev.cusum[1] + zc - CUSUM_K).max(0.0);
        for side in Side::BOTH {
            let i = side.index();
            if prev.cusum[i] <= 0.0 && next.cusum[i] > 0.0 {
                next.cusum_since[i] = ts;
            }
        }
        scored.cusum = next.cusum;
        // A run of empty buckets where events were expected: the chance that all of them are
        // zero, exact under the (overdispersed) Poisson, against the one-bucket budget. Only
        // the events a slot's own observations expect count: a slot that has seen nothing but
        // zeros expects a little by its prior, not by evidence. And a more specific candidate
        // that has seen the slot vetoes here as it does a single bucket ("it was empty at
        // this time yesterday"): the run takes the smaller of the two. Without both, a count
        // that is empty every night had its nights paged as outages by the level (the daily
        // profile's night slots, held back while the run built, never came to judge).
        next.zero_run = if kind == Kind::Count && y < 0.5 {
            let nll_of = |p: &Prediction| {
                let mean = p.mean.max(1e-12);
                let phi = ((p.var - mean) / (mean * mean)).max(0.0);
                let mu = (p.mean * (1.0 - p.prior)).max(1e-12);
                if phi > 1e-9 {
                    (phi * mu).ln_1p() / phi
                } else {
                    mu
                }
            };
            let own = nll_of(&p);
            let nll = veto.and_then(|i| preds[i]).map_or(own, |q| own.min(nll_of(&q)));
            if prev.zero_run <= 0.0 {
                next.zero_since = ts;
            }
            prev.zero_run + nll
        } else {
            0.0
        };
        let s_cfg = self.cfg.sensitivity.get();
        let dir = self.cfg.direction;
        let low_volume = match kind {
            Kind::Count => y.max(p.mean) < self.cfg.min_volume,
            Kind::Ratio => weight < self.cfg.min_volume,
            Kind::Gauge => false,
        };
        // The record test: beyond everything of the last four weeks, by a margin.
        let record = self.record_extremes(ts);
        // The sustained record test: the mean of the last few hours, likewise.
        let sustained = self.sustained_windows(ts, value);
        let mut best_sens = f64::INFINITY;
        // Per watched side, the deviation the score below the firing range is graded on (the
        // smaller of the bucket's and a vetoing prediction's, as for the single-bucket test).
        let mut graded_m: [Option<f64>; 2] = [None, None];
        let mut flagged: Option<(Side, Trigger, i64)> = None;
        for side in Side::BOTH {
            let i = side.index();
            let m = match side {
                Side::Below => -z,
                Side::Above => z,
            };
            let dev = (model_value - p.rate).abs();
            let mut s_bucket = self.sens_for_z(m, dev, side);
            if let Some(vz) = veto_z {
                let vm = match side {
                    Side::Below => -vz,
                    Side::Above => vz,
                };
                s_bucket = s_bucket.max(self.sens_for_z(vm, dev, side));
            }
            if let Some(e) = &record {
                // A single-bucket test of its own: neither a veto nor recurrence stops it.
                s_bucket = s_bucket.min(self.sens_for_record(ts, value, e, side));
            }
            let mut m_graded = m;
            if let Some(vz) = veto_z {
                let vm = match side {
                    Side::Below => -vz,
                    Side::Above => vz,
                };
                m_graded = m_graded.min(vm);
            }
            // The mean of the last few hours, a record: accumulated evidence too.
            let (s_sustained, sustained_len) = self.sens_for_sustained(ts, &sustained, side);
            let s_cusum = self.sens_for_side_cusum(next.cusum[i], side);
            let sustained_decides = s_sustained < s_cusum;
            let s_cusum = s_cusum.min(s_sustained);
            let s_zero = if side == Side::Below && next.zero_run > 0.0 {
                self.sens_for_tail((-next.zero_run).exp())
            } else {
                f64::INFINITY
            };
            let s_side = s_bucket.min(s_cusum).min(s_zero);
            let fires = s_cfg >= s_side;
            let trigger = if s_cfg >= s_bucket {
                Trigger::Bucket
            } else if s_cfg >= s_zero {
                Trigger::EmptyRun
            } else {
                Trigger::Accumulated
            };
            let since = match trigger {
                Trigger::Bucket => ts,
                Trigger::EmptyRun => next.zero_since,
                _ if sustained_decides => {
                    // The sustained record decided: the shift is as old as its window.
                    ts - (sustained_len as i64 - 1) * i64::from(self.cfg.interval_secs)
                }
                _ => next.cusum_since[i],
            };
            if fires {
                scored.fired = true;
                // Evidence already spent: the accumulators restart.
                next.cusum[i] = 0.0;
                if side == Side::Below && trigger == Trigger::EmptyRun {
                    next.zero_run = 0.0;
                }
                let inc = next.incident[i].get_or_insert(Incident {
                    since,
                    n: 0.0,
                    z_sum: 0.0,
                    recover: 0.0,
                    empty: trigger == Trigger::EmptyRun,
                });
                inc.n += 1.0;
                inc.z_sum += z;
                inc.recover = 0.0;
            } else if let Some(inc) = next.incident[i].as_mut() {
                // Still the incident's level, or back at the baseline?
                let mu = inc.shift(side);
                inc.recover = (inc.recover + mu * mu / 2.0 - z * mu).max(0.0);
                inc.n += 1.0;
                inc.z_sum += z;
                let events_again = inc.empty && y > 0.0;
                if inc.recover >= self.recovery_nats || events_again {
                    next.incident[i] = None;
                }
            }
            if dir.watches(side == Side::Below) {
                best_sens = best_sens.min(s_side);
                graded_m[i] = Some(m_graded);
                // An incident under way flags its buckets until the evidence says the level is
                // back: one long deviation is one flagged stretch, not a flicker.
                let ongoing = next.incident[i].is_some();
                if (fires || ongoing) && flagged.is_none() {
                    let trigger = if fires { trigger } else { Trigger::Ongoing };
                    let since = next.incident[i].map_or(since, |inc| inc.since);
                    flagged = Some((side, trigger, since));
                }
            }
        }
        scored.next = next;
        let v = &mut scored.verdict;
        v.ongoing = Side::BOTH
            .iter()
            .any(|s| next.incident[s.index()].is_some() && dir.watches(*s == Side::Below));
        v.score = score_for_sensitivity(best_sens, self.buckets_per_week);
        if graded && v.score < BELOW_FIRING {
            // Graded below the firing range, never into it: a bucket is an anomaly at
            // sensitivity s exactly when its score is at least 1 - s/2 > 0.5. Only the side the
            // deviation is on has one (one tail probability per bucket).
            let graded_sens = Side::BOTH
                .iter()
                .filter_map(|&side| {
                    let m = graded_m[side.index()]?;
                    (m >= MIN_GRADED_Z).then(|| self.graded_sens_for_z(m, side))
                })
                .fold(f64::INFINITY, f64::min);
            let graded = score_for_sensitivity(graded_sens, self.buckets_per_week);
            v.score = v.score.max(graded.min(BELOW_FIRING));
        }
        if low_volume {
            v.status = Status::LowVolume;
            return scored;
        }
        v.status = Status::Evaluated;
        if let Some((side, trigger, since)) = flagged {
            v.anomaly = true;
            v.trigger = Some(trigger);
            v.side = Some(side);
            v.since = Some(since);
            // An ongoing incident is an anomaly at this sensitivity whatever its own bucket
            // scores: the score says so too.
            v.score = v.score.max(score_for_sensitivity(s_cfg, self.buckets_per_week));
        }
        scored
    }

    /// The bucket's signed z-score under the chosen model's noise.
    fn z_score(&self, y: f64, weight: f64, p: &Prediction) -> f64 {
        let z = match self.cfg.kind {
            kind @ (Kind::Count | Kind::Ratio) => {
                let exact = if kind == Kind::Count {
                    noise::count_z(y, p.mean, &self.normal)
                } else {
                    noise::ratio_z(y, weight, p.rate, &self.normal)
                };
                // Overdispersion and the slot's estimation error widen the exact tail; a
                // dispersion learnt from few residuals widens it further.
                let t = exact / (p.var / p.base_var.max(1e-12)).max(1.0).sqrt();
                self.small_sample(t, p.spread_n)
            }
            Kind::Gauge => {
                // A spread of zero makes any deviation infinitely surprising: keep it finite.
                let t = ((y - p.mean) / p.var.max(1e-300).sqrt()).clamp(-1e6, 1e6);
                // A spread estimated from few buckets: a t statistic, made normal.
                noise::t_to_z(t, p.spread_n)
            }
        };
        if z.is_nan() {
            0.0
        } else {
            z.clamp(-1e6, 1e6)
        }
    }

    /// A count's or ratio's z-score `t` whose overdispersion stands on few residuals (`nu`
    /// degrees of freedom, see `SeasonalModel::satterthwaite`) as a standard normal score, as
    /// a gauge's is (`noise::t_to_z`): a daily profile judging its second day from a dispersion
    /// learnt from a dozen residuals paged on ordinary noise. Only where a test can fire (|t|
    /// of at least `MIN_Z`) and only while the model's own tail stands on that side: once the
    /// history has refuted it, the series' calibrated tail is the judge, and correcting the
    /// score it is compared with as well moved flags on mature heavy-tailed series.
    fn small_sample(&self, t: f64, nu: f64) -> f64 {
        if !nu.is_finite() || t.abs() < MIN_Z || self.cal_z.rejected(t < 0.0) {
            return t;
        }
        noise::t_to_z(t, nu)
    }

    /// The inverse of [`Self::small_sample`] for a threshold `z` on one side (`below`): the
    /// band's edge in the model's units (thresholds are at least `MIN_Z`, where
    /// `small_sample` corrects).
    fn small_sample_threshold(&self, z: f64, nu: f64, below: bool) -> f64 {
        if !nu.is_finite() || self.cal_z.rejected(below) {
            return z;
        }
        noise::z_to_t(z, nu)
    }

    /// The verdict with its band: the values the single-bucket test would not flag.
    fn with_band(&self, b: &Bucket, scored: &Scored) -> Verdict {
        let mut v = scored.verdict;
        if !scored.judged {
            return v;
        }
        let Some(p) = scored.chosen.and_then(|i| scored.preds[i]) else {
            return v;
        };
        let thresholds = [self.z_threshold(Side::Below), self.z_threshold(Side::Above)];
        let (mut lo, mut hi) = self.band_of(b, &p, thresholds);
        // A newer, more specific profile vetoes what it explains: its band counts too, on the
        // side its prediction lies (see `score_raw`). So does the level before the last new
        // normal, while it is remembered.
        for q in [
            scored.veto.and_then(|i| scored.preds[i]),
            scored.home,
            scored.day_type,
        ]
        .into_iter()
        .flatten()
        {
            let (vlo, vhi) = self.band_of(b, &q, thresholds);
            if q.rate < p.rate {
                lo = lo.min(vlo);
            }
            if q.rate > p.rate {
                hi = hi.max(vhi);
            }
        }
        // Deviations as large as recent recurring ones are not flagged either.
        let rec_lo = self.recurrent_below(true);
        let rec_hi = self.recurrent_below(false);
        if rec_lo > 0.0 {
            lo = lo.min(self.to_value(p.rate - rec_lo));
        }
        if rec_hi > 0.0 {
            hi = hi.max(self.to_value(p.rate + rec_hi));
        }
        // Beyond the record test's edges a bucket is flagged whatever the others say.
        let (rec_lo, rec_hi) = self.record_band(b.ts);
        lo = lo.max(rec_lo);
        hi = hi.min(rec_hi);
        if self.cfg.kind != Kind::Gauge {
            lo = lo.max(0.0);
        }
        if self.cfg.kind == Kind::Ratio {
            hi = hi.min(1.0);
        }
        v.reading.band.lower = lo;
        v.reading.band.upper = hi;
        v
    }

    /// The values the single-bucket test does not flag under prediction `p` with per-side
    /// thresholds `[below, above]` (in z units), in the value's units.
    fn band_of(&self, b: &Bucket, p: &Prediction, [t_lo, t_hi]: [f64; 2]) -> (f64, f64) {
        let d = (p.var / p.base_var.max(1e-12)).max(1.0);
        match self.cfg.kind {
            Kind::Count => noise::count_band(
                p.mean,
                d,
                self.small_sample_threshold(t_lo, p.spread_n, true),
                self.small_sample_threshold(t_hi, p.spread_n, false),
                &self.normal,
            ),
            Kind::Ratio => {
                let n = b.denominator.unwrap_or(0.0).round();
                if n > 0.0 {
                    let (t_lo, t_hi) = (
                        self.small_sample_threshold(t_lo, p.spread_n, true),
                        self.small_sample_threshold(t_hi, p.spread_n, false),
                    );
                    let (lo, hi) = noise::ratio_band(n, p.rate, d, t_lo, t_hi, &self.normal);
                    (lo / n, hi / n)
                } else {
                    (f64::NAN, f64::NAN)
                }
            }
            Kind::Gauge => {
                let sd = p.var.max(0.0).sqrt();
                let nu = p.spread_n;
                (
                    self.to_value(p.mean - noise::z_to_t(t_lo, nu) * sd),
                    self.to_value(p.mean + noise::z_to_t(t_hi, nu) * sd),
                )
            }
        }
    }

    fn learn(&mut self, b: &Bucket, scored: &Scored, feedback: Feedback) {
        let status = scored.verdict.status;
        if matches!(status, Status::Excluded | Status::Missing) {
            return;
        }
        let Some((y, weight)) = self.observation(b) else {
            return;
        };
        if self.cfg.kind != Kind::Ratio {
            self.records.push(b.ts, b.value);
            for sustained in self.sustained.iter_mut().flatten() {
                sustained.push(b.ts, b.value);
            }
        }
        let was_quiet = !self.alarm.in_incident();
        self.alarm = scored.next;
        for side in Side::BOTH {
            if self.alarm.incident[side.index()].is_some() {
                self.incident_last[side.index()] = Some(self.learned);
            }
        }
        if let Some(prev) = self.previous.as_mut() {
            if self.learned - prev.at >= self.recurrence_window {
                self.previous = None;
            } else if scored.back_home && feedback == Feedback::None {
                prev.agree += 1;
                if prev.agree >= RETURN_AFTER {
                    // Back at the old level for good: undo the new normal (or all of those
                    // remembered, when it is the original level the series went back to).
                    let back = if scored.home_origin {
                        prev.origin
                    } else {
                        prev.back
                    };
                    for (m, s) in self.models.iter_mut().zip(back) {
                        if let Some(m) = m {
                            m.apply(s);
                        }
                    }
                    // Undoing only the latest leaves the first still remembered.
                    self.previous = if scored.home_origin || prev.origin == prev.back {
                        None
                    } else {
                        let rest = then_each(prev.origin, back.map(Shift::inverse));
                        Some(PreviousLevel {
                            back: rest,
                            origin: rest,
                            at: prev.at,
                            agree: 0,
                        })
                    };
                    self.alarm = AlarmState::quiet();
                    self.incident_len = 0;
                    self.clear_run();
                }
            } else if scored.z.is_some_and(|z| z.abs() < RUN_AWAY_Z) {
                prev.agree = 0;
            }
        }
        let evaluated = matches!(status, Status::Evaluated | Status::LowVolume);
        for (m, p) in self.models.iter_mut().zip(scored.preds.iter()) {
            if let (Some(m), Some(p)) = (m, p) {
                if weight > 0.0 {
                    m.track_error(b.ts, y, p);
                }
            }
        }
        if feedback == Feedback::NewNormal {
            self.rebase(b.ts, y, &scored.preds);
        }
        // A deviation that lasts becomes the new normal: after `accept_after` buckets of one
        // incident, every level is rescaled to what the incident's buckets showed.
        if self.alarm.in_incident() && feedback == Feedback::None {
            if self.incident_len == 0 {
                self.clear_run();
            }
            self.incident_len += 1;
            for (m, p) in self.models.iter_mut().zip(scored.preds.iter()) {
                if let (Some(m), Some(p)) = (m, p) {
                    m.run_add(y, p);
                }
            }
            if self.incident_len >= self.accept_after {
                let mut back = [Shift::None; 3];
                for (b, m) in back.iter_mut().zip(self.models.iter_mut()) {
                    if let Some(m) = m {
                        *b = m.run_accept().inverse();
                    }
                }
                // The accepted level is no longer a burst for the record test.
                self.records.merge_run();
                // The level before the first new normal still remembered stays a way home.
                let origin = self.previous.map_or(back, |prev| then_each(back, prev.origin));
                self.previous = Some(PreviousLevel {
                    back,
                    origin,
                    at: self.learned,
                    agree: 0,
                });
                self.alarm = AlarmState::quiet();
                self.incident_len = 0;
            }
        } else if self.incident_len > 0 {
            self.incident_len = 0;
            self.clear_run();
        }
        // Anomalous buckets are not learned, nor are those of an incident still under way or
        // of a run of empty buckets half-way to an alarm: a sustained drop must not teach the
        // baseline to expect it.
        let building = scored.next.zero_run >= ZERO_HOLD_BACK * self.thresholds.zero_run_nll
            || scored.next.in_incident();
        let held_back = feedback == Feedback::None && (scored.fired || (evaluated && building));
        // A false positive is learned in full, so the noise estimate sees how far off it was.
        let winsor = if evaluated && feedback != Feedback::NotAnomaly {
            Some(WINSOR_SD)
        } else {
            None
        };
        let kind = self.cfg.kind;
        let quantum = self.quantum;
        if kind == Kind::Gauge && y.is_finite() {
            // The resolution on the baselines' scale.
            self.quantum = records::finer_resolution(self.quantum, self.last_y, y);
            self.last_y = y;
        }
        // A model that has never seen this slot learns it from this bucket whatever it was:
        // the first weekend a series shows is how its weekends look, and a slot must not stay
        // unseen forever. A slot first learnt from a held-back bucket is provisional: it may
        // veto ("it was like this last week") but does not judge, and the first bucket there
        // that is not held back replaces what it learnt. Otherwise an outage that is a slot's
        // first visit is how the slot looks: a 1-minute KPI's weekly profile (5-minute slots)
        // predicted the rest of a 15-minute outage from its first minute (flagging minutes 0-6
        // and 10 only), and a normal value in that slot a week later was a "spike".
        for (m, p) in self.models.iter_mut().zip(scored.preds.iter()) {
            if let Some(m) = m {
                match p {
                    // The level was just rescaled: learn against the new prediction.
                    Some(_) if feedback == Feedback::NewNormal => {
                        let p = floored(m.predict(kind, b.ts, weight), kind, quantum);
                        m.learn(kind, b.ts, y, weight, &p, winsor);
                        m.set_provisional(b.ts, false);
                    }
                    Some(_) if !held_back && m.is_provisional(b.ts) => {
                        m.forget_slot(b.ts);
                        let p = floored(m.predict(kind, b.ts, weight), kind, quantum);
                        m.learn(kind, b.ts, y, weight, &p, None);
                        m.set_provisional(b.ts, false);
                    }
                    Some(p) if !held_back => m.learn(kind, b.ts, y, weight, p, winsor),
                    Some(_) => {}
                    None => {
                        let p = floored(m.predict(kind, b.ts, weight), kind, quantum);
                        m.learn(kind, b.ts, y, weight, &p, None);
                        m.set_provisional(b.ts, held_back);
                    }
                }
            }
        }
        // The series' own tails: from judged buckets outside incidents, whatever they
        // scored, so that spikes that are normal here raise the thresholds.
        if let (Some(z), Feedback::None) = (scored.z, feedback) {
            let side = if z < 0.0 { Side::Below } else { Side::Above };
            if scored.judged && z.abs() >= MIN_Z && z.abs() >= self.z_threshold(side) {
                let dev = scored.dev;
                let below = side == Side::Below;
                let learned = self.learned;
                // The buckets of one burst are one event, at its largest deviation: the rule
                // counts episodes, not buckets.
                if dev.is_finite() {
                    if let Some(e) = self
                        .events
                        .last_mut()
                        .filter(|e| e.below == below && learned - e.at <= EPISODE_GAP)
                    {
                        e.at = learned;
                        e.dev = e.dev.max(dev as f32);
                    } else {
                        if self.events.len() >= EVENTS {
                            self.events.remove(0);
                        }
                        self.events.push(Event {
                            at: learned,
                            below,
                            dev: dev as f32,
                        });
                    }
                }
            }
        }
        if let Some(z) = scored.z {
            // Only once the spread stands on enough buckets: z-scores against a spread that is
            // still settling would teach the tails wrong extremes.
            let calibrating = self.learned >= self.judge_after
                && scored
                    .chosen
                    .and_then(|i| scored.preds[i])
                    .is_some_and(|p| p.spread_n >= MIN_SPREAD_FOR_CALIBRATION);
            if calibrating && was_quiet && feedback == Feedback::None && !scored.fired {
                // Every judged bucket outside an incident that did not fire, as SPOT does (Siffer
                // et al. 2017: a value beyond the alarm threshold is an alarm, not a peak): one
                // incident must not become the tail and blind the detector to anything smaller
                // for a week. An extreme that recurs is this series' behaviour all the same: the
                // recurrence rule (`RECURRENT` events) stops it paging again.
                self.cal_z.push(z);
                let [lo, hi] = scored.cusum;
                self.cal_cusum.push(if hi >= lo { hi } else { -lo });
            } else if calibrating && was_quiet && feedback == Feedback::None {
                // An alarm is not a peak, but it is evidence that the model's tail is too
                // light: the goodness-of-fit gate counts it.
                self.cal_z.push_alarm(z);
            }
        }
        if held_back {
            self.ac.prev = 0.0;
        } else if feedback != Feedback::None {
            // Its z-score is the model's error, not the series' noise.
            self.ac.prev = 0.0;
        } else if let (true, Some(z)) = (evaluated || status == Status::WarmingUp, scored.z) {
            self.track_autocorrelation(z);
        }
        if weight > 0.0 {
            self.learned += 1;
        }
        if self.scale == GaugeScale::Undecided {
            if self.early.capacity() == 0 {
                self.early.reserve_exact(self.judge_after.max(48) as usize);
            }
            self.early.push((b.ts, b.value));
            // At least two days of hourly buckets, so the choice rests on more than a few hours.
            let decide_at = self.judge_after.max((2.0 * self.per_day).min(48.0) as u64);
            if self.learned >= decide_at {
                self.choose_scale();
            }
        }
    }

    /// Take `y` as the new level at once: every model's level is moved to the bucket's value
    /// under its own prediction (or under the chosen model's, for a model that has not seen
    /// this slot); any incident is forgotten.
    fn rebase(&mut self, ts: i64, y: f64, preds: &[Option<Prediction>; 3]) {
        let fallback = self.chosen(ts).and_then(|i| preds[i]);
        for (m, p) in self.models.iter_mut().zip(preds.iter()) {
            if let Some(m) = m {
                if let Some(p) = p.or(fallback) {
                    m.rebase(y, &p);
                }
            }
        }
        self.clear_run();
        self.records.merge_run();
        self.incident_len = 0;
        self.alarm = AlarmState::quiet();
    }

    fn clear_run(&mut self) {
        for m in self.models.iter_mut().flatten() {
            m.run_clear();
        }
    }
}

/// `p` with a gauge's spread at least `RESOLUTION_SD` steps of `quantum` (the series'
/// resolution on the baselines' scale; 0: not known yet).
#[inline]
fn floored(mut p: Prediction, kind: Kind, quantum: f64) -> Prediction {
    if kind == Kind::Gauge && quantum > 0.0 {
        let f = RESOLUTION_SD * quantum;
        p.var = p.var.max(f * f);
    }
    p
}

/// Per candidate, `first` followed by `next`.
fn then_each(first: [Shift; 3], next: [Shift; 3]) -> [Shift; 3] {
    let mut out = first;
    for (o, n) in out.iter_mut().zip(next) {
        *o = o.then(n);
    }
    out
}

fn clear_anomaly(v: &mut Verdict) {
    v.anomaly = false;
    v.trigger = None;
    v.side = None;
    v.since = None;
    v.ongoing = false;
}

/// The score of a bucket that the tests would just flag at sensitivity `s`: `1 - s / 2` for
/// `s` in [0, 1] (0.75 at medium), falling on to 0 for budgets between one false alarm a week
/// and every bucket.
fn score_for_sensitivity(s: f64, buckets_per_week: f64) -> f64 {
    if s <= 0.0 {
        return 1.0;
    }
    if s <= 1.0 {
        return 1.0 - s / 2.0;
    }
    if !s.is_finite() {
        return 0.0;
    }
    // s = 1 is one false alarm a week; every bucket flagged is s_top.
    let s_top = threshold::sensitivity_for_budget(buckets_per_week).max(1.0 + 1e-9);
    (0.5 * (1.0 - (s - 1.0) / (s_top - 1.0))).clamp(0.0, 0.5)
}

/// The nominal number of false alarms per week a sensitivity in (0, 1) budgets for, on a
/// series that follows its noise model: `10^(4 s - 4)`, so `low` ≈ 0.001, `medium` ≈ 0.01
/// and `high` ≈ 0.1. Real series stray from their model; measured rates are in
/// `docs/DETECTION.md`.
pub fn false_alarms_per_week(sensitivity: Sensitivity) -> f64 {
    threshold::false_alarms_per_week(sensitivity.get())
}

/// Buckets of history the tails are calibrated on and recurring events are remembered over:
/// four weeks, at least 256 buckets (a daily KPI's last eight months), at most a week of
/// 5-minute buckets.
fn calibration_window(per_day: f64) -> usize {
    let four_weeks = (28.0 * per_day) as usize;
    four_weeks.clamp(256, calibrate::CAPACITY)
}

/// Buckets of history before anything is judged: half a day of buckets, at least 14 and at
/// most 288 (or eight days with a forced weekly seasonality). Until a seasonal profile has
/// proven itself the level alone is used, with the spread it has measured; a slot the chosen
/// profile has never seen is not judged either.
fn judge_after_buckets(mode: SeasonalityMode, per_day: f64) -> u64 {
    if mode == SeasonalityMode::Weekly {
        return (8.0 * per_day).max(14.0).ceil() as u64;
    }
    (per_day / 2.0).clamp(14.0, 288.0).ceil() as u64
}

#[cfg(test)]
mod tests;
