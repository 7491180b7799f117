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
//!   a run of empty buckets fires once its exact probability of being all zero is too small.
//! - Anomalous and excluded buckets are not learned. A deviation that persists for half a day
//!   (at least 3 buckets) is accepted as the new level: a level shift is alerted, then learned.
//! - User feedback replayed with a bucket ([`Feedback`]): `NotAnomaly` learns it as normal
//!   (the band widens) without feeding the alarm statistics; `NewNormal` rescales every level
//!   to it at once and restarts the CUSUM.
//! - Nothing is flagged during warm-up: 8 days with automatic seasonality (a week to see each
//!   slot of the week, a day to compare weekly against daily), else 2 days; at least 14
//!   buckets.

mod noise;
mod profile;
mod threshold;

use statrs::distribution::{ContinuousCDF, Normal};

use crate::kpi::{Direction, Kind, Sensitivity};

use self::profile::{Prediction, SeasonalModel};
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

/// How to detect on one series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectorConfig {
    /// Noise model.
    pub kind: Kind,
    /// Bucket length in seconds.
    pub interval_secs: u32,
    /// Which deviations are anomalies.
    pub direction: Direction,
    /// Alarm budget: see [`false_alarms_per_week`].
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
    /// not feed the CUSUM, empty-run or level-shift state as a deviation.
    NotAnomaly,
    /// The level changed for good: every baseline's level is rescaled at once to this bucket
    /// (profiles keep their shape), the CUSUM and run state restart, and the bucket is not
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
    /// Expected value in the band's units; NaN while no baseline exists.
    pub expected: f64,
    /// Lower edge of the band (NaN while no baseline exists).
    pub lower: f64,
    /// Upper edge of the band (NaN while no baseline exists).
    pub upper: f64,
    /// In [0, 1], higher is more anomalous in the watched direction; an anomaly scores at
    /// least the band's two-sided confidence.
    pub score: f64,
    /// Whether this bucket is an anomaly at the configured sensitivity and direction.
    pub anomaly: bool,
    /// What happened to the bucket.
    pub status: Status,
    /// The seasonality the baseline used.
    pub seasonality: Seasonality,
    /// Count, or denominator for ratios (the value for gauges).
    pub volume: f64,
    /// The observed value in the band's units: ratio = numerator / denominator.
    pub value: f64,
}

/// Persistent deviation being watched for acceptance as a new level.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    sign: i8,
    total: u32,
    deviating: u32,
    quiet: u32,
}

/// Everything `step` needs after scoring, to learn.
#[derive(Debug, Clone, Copy)]
struct Scored {
    verdict: Verdict,
    z: f64,
    cusum_lo: f64,
    cusum_hi: f64,
    zero_run: f64,
    incident_lo: bool,
    incident_hi: bool,
    outlier: bool,
    preds: [Option<Prediction>; 3],
}

/// The online detector of one series; clone it to branch a backtest.
#[derive(Debug, Clone)]
pub struct OnlineDetector {
    cfg: DetectorConfig,
    normal: Normal,
    thresholds: Thresholds,
    models: [Option<SeasonalModel>; 3],
    learned: u64,
    warm_buckets: u64,
    per_day: f64,
    accept_after: u32,
    cusum_lo: f64,
    cusum_hi: f64,
    zero_run: f64,
    incident_lo: bool,
    incident_hi: bool,
    prev_z: f64,
    z_lag: f64,
    z_sq: f64,
    z_n: u32,
    run: Run,
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
const RUN_DEVIATION_Z: f64 = 1.5;

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
        let thresholds = Thresholds::new(cfg.sensitivity.get(), per_day * 7.0, &normal);
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
        let warm_buckets = warm_up_buckets(cfg.seasonality, per_day, models[2].is_some());
        Ok(OnlineDetector {
            cfg,
            normal,
            thresholds,
            models,
            learned: 0,
            warm_buckets,
            per_day,
            accept_after: (per_day / 2.0).max(3.0).ceil() as u32,
            cusum_lo: 0.0,
            cusum_hi: 0.0,
            zero_run: 0.0,
            incident_lo: false,
            incident_hi: false,
            prev_z: 0.0,
            z_lag: 0.0,
            z_sq: 0.0,
            z_n: 0,
            run: Run::default(),
        })
    }

    /// Fit: a detector that has stepped through `history` in order.
    pub fn warm(cfg: DetectorConfig, history: &[Bucket]) -> Result<Self> {
        let mut det = OnlineDetector::new(cfg)?;
        for b in history {
            det.step(b);
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
    }

    /// The single-bucket |z| threshold in use (the band half-width in standard deviations).
    pub fn band_z(&self) -> f64 {
        self.thresholds.z_bucket
    }

    /// Score `b` without learning from it.
    pub fn evaluate(&self, b: &Bucket) -> Verdict {
        self.score(b, Feedback::None).verdict
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
        self.learn(b, &scored, feedback);
        scored.verdict
    }

    /// `sqrt((1 - rho) / (1 + rho))` for the lag-1 autocorrelation `rho` of recent z-scores.
    fn cusum_scale(&self) -> f64 {
        if self.z_n < 50 || self.z_sq <= 0.0 {
            return 1.0;
        }
        let rho = (self.z_lag / self.z_sq).clamp(0.0, MAX_AUTOCORRELATION);
        ((1.0 - rho) / (1.0 + rho)).sqrt()
    }

    /// Track the lag-1 autocorrelation of the z-scores of learned buckets, over about a week.
    fn track_autocorrelation(&mut self, z: f64) {
        let z = z.clamp(-4.0, 4.0);
        self.z_n = self.z_n.saturating_add(1);
        let a = (1.0 / f64::from(self.z_n)).max(1.0 / (self.per_day * 7.0).max(14.0));
        self.z_lag += a * (z * self.prev_z - self.z_lag);
        self.z_sq += a * (z * z - self.z_sq);
        self.prev_z = z;
    }

    /// Index of the model used for this bucket.
    fn chosen(&self, ts: i64) -> Option<usize> {
        let per_day = self.per_day;
        let avail = |i: usize, min_errors: f64| {
            self.models[i]
                .as_ref()
                .filter(|m| m.ready(ts) && f64::from(m.mse_n) >= min_errors)
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
            Kind::Count | Kind::Gauge => Some((b.value, 1.0)),
        }
    }

    /// Score `b`, then apply `feedback` to the verdict and to the state it would leave.
    fn score(&self, b: &Bucket, feedback: Feedback) -> Scored {
        let mut scored = self.score_raw(b);
        if matches!(scored.verdict.status, Status::Excluded | Status::Missing) {
            return scored;
        }
        match feedback {
            Feedback::None => {}
            Feedback::NotAnomaly => {
                // Normal by the user's word: the bucket moves none of the alarm statistics.
                scored.cusum_lo = self.cusum_lo;
                scored.cusum_hi = self.cusum_hi;
                scored.zero_run = self.zero_run;
                scored.incident_lo = self.incident_lo;
                scored.incident_hi = self.incident_hi;
                scored.outlier = false;
                scored.verdict.anomaly = false;
            }
            Feedback::NewNormal => {
                scored.cusum_lo = 0.0;
                scored.cusum_hi = 0.0;
                scored.zero_run = 0.0;
                scored.incident_lo = false;
                scored.incident_hi = false;
                scored.outlier = false;
                scored.verdict.anomaly = false;
            }
        }
        scored
    }

    fn score_raw(&self, b: &Bucket) -> Scored {
        let kind = self.cfg.kind;
        let obs = self.observation(b);
        let (y, weight) = obs.unwrap_or((f64::NAN, 0.0));
        let value = match (kind, obs) {
            (Kind::Ratio, Some(_)) if weight > 0.0 => y / weight,
            (Kind::Ratio, _) => match b.denominator {
                Some(d) if d > 0.0 => b.value / d,
                _ => f64::NAN,
            },
            (_, Some(_)) => y,
            (_, None) => b.value,
        };
        let volume = match kind {
            Kind::Ratio => weight,
            _ => y,
        };
        let mut preds: [Option<Prediction>; 3] = [None, None, None];
        for (slot, m) in preds.iter_mut().zip(self.models.iter()) {
            if let Some(m) = m {
                if m.ready(b.ts) {
                    *slot = Some(m.predict(kind, b.ts, weight));
                }
            }
        }
        let chosen = self.chosen(b.ts);
        let seasonality = chosen
            .and_then(|i| self.models[i].as_ref())
            .map_or(Seasonality::None, |m| m.seasonality);
        let pred = chosen.and_then(|i| preds[i]);
        let mut verdict = Verdict {
            expected: f64::NAN,
            lower: f64::NAN,
            upper: f64::NAN,
            score: 0.0,
            anomaly: false,
            status: Status::WarmingUp,
            seasonality,
            volume,
            value,
        };
        let mut scored = Scored {
            verdict,
            z: 0.0,
            cusum_lo: self.cusum_lo,
            cusum_hi: self.cusum_hi,
            zero_run: 0.0,
            incident_lo: false,
            incident_hi: false,
            outlier: false,
            preds,
        };
        let z_band = self.thresholds.z_bucket;
        if let Some(p) = pred {
            // Band in the value's units.
            let (expected, sd) = match kind {
                Kind::Ratio => {
                    let n = weight.max(1.0);
                    let var = if weight > 0.0 {
                        p.var / (weight * weight)
                    } else {
                        p.rate * (1.0 - p.rate) / n
                    };
                    (p.rate, var.max(0.0).sqrt())
                }
                _ => (p.rate, p.var.max(0.0).sqrt()),
            };
            verdict.expected = expected;
            verdict.lower = expected - z_band * sd;
            verdict.upper = expected + z_band * sd;
            match kind {
                Kind::Count => verdict.lower = verdict.lower.max(0.0),
                Kind::Ratio => {
                    verdict.lower = verdict.lower.max(0.0);
                    verdict.upper = verdict.upper.min(1.0);
                }
                Kind::Gauge => {}
            }
        }
        if b.excluded {
            verdict.status = Status::Excluded;
            scored.verdict = verdict;
            return scored;
        }
        if obs.is_none() {
            verdict.status = Status::Missing;
            scored.verdict = verdict;
            return scored;
        }
        let Some(p) = pred else {
            scored.verdict = verdict;
            return scored;
        };
        if kind == Kind::Ratio && weight <= 0.0 {
            verdict.status = Status::LowVolume;
            scored.verdict = verdict;
            return scored;
        }
        let z = match kind {
            Kind::Count => {
                let z = noise::count_z(y, p.mean, &self.normal);
                z / (p.var / p.base_var.max(1e-12)).max(1.0).sqrt()
            }
            Kind::Ratio => {
                let z = noise::ratio_z(y, weight, p.rate, &self.normal);
                z / (p.var / p.base_var.max(1e-12)).max(1.0).sqrt()
            }
            Kind::Gauge => (y - p.mean) / p.var.max(1e-300).sqrt(),
        };
        let z = if z.is_finite() { z } else { 0.0 };
        scored.z = z;
        let warming = self.learned < self.warm_buckets;
        let h = self.thresholds.cusum_h;
        // Residuals of real series are autocorrelated (a busy day stays busy all day); the
        // CUSUM assumes independent increments, so it sees z scaled to the variance of a sum
        // of AR(1) terms with the lag-1 autocorrelation of recent (learned) z-scores.
        let zc = z * self.cusum_scale();
        let lo = (self.cusum_lo + zc + CUSUM_K).min(0.0);
        let hi = (self.cusum_hi + zc - CUSUM_K).max(0.0);
        // A run of empty buckets where events were expected: the chance that all of them
        // are zero, exact under the (overdispersed) Poisson, against the one-bucket budget.
        let zero_run = if kind == Kind::Count && y < 0.5 {
            let mu = p.mean.max(1e-12);
            let phi = ((p.var - mu) / (mu * mu)).max(0.0);
            let nll = if phi > 1e-9 { (phi * mu).ln_1p() / phi } else { mu };
            self.zero_run + nll
        } else {
            0.0
        };
        let zero_fire = zero_run >= self.thresholds.zero_run_nll;
        scored.zero_run = if zero_fire { 0.0 } else { zero_run };
        let fire_lo = z <= -z_band || lo <= -h || zero_fire;
        let fire_hi = z >= z_band || hi >= h;
        scored.cusum_lo = if fire_lo { 0.0 } else { lo };
        scored.cusum_hi = if fire_hi { 0.0 } else { hi };
        // After an alarm the incident lasts while its CUSUM stays off zero; its buckets are
        // kept out of the baseline, so a long drop does not drag the level down with it.
        scored.incident_lo = fire_lo || (self.incident_lo && lo < 0.0);
        scored.incident_hi = fire_hi || (self.incident_hi && hi > 0.0);
        if warming {
            scored.cusum_lo = 0.0;
            scored.cusum_hi = 0.0;
            scored.zero_run = 0.0;
            scored.incident_lo = false;
            scored.incident_hi = false;
            scored.verdict = verdict;
            return scored;
        }
        scored.outlier = fire_lo || fire_hi;
        let dir = self.cfg.direction;
        let strength = |bucket_z: f64, cusum: f64| bucket_z.max(z_band * cusum / h);
        let mut s = f64::NEG_INFINITY;
        if dir.watches(true) {
            s = s.max(strength(-z, -lo));
            s = s.max(z_band * zero_run / self.thresholds.zero_run_nll);
        }
        if dir.watches(false) {
            s = s.max(strength(z, hi));
        }
        let low_volume = match kind {
            Kind::Count => y.max(p.mean) < self.cfg.min_volume,
            Kind::Ratio => weight < self.cfg.min_volume,
            Kind::Gauge => false,
        };
        verdict.score = (2.0 * self.normal.cdf(s) - 1.0).clamp(0.0, 1.0);
        if low_volume {
            verdict.status = Status::LowVolume;
        } else {
            verdict.status = Status::Evaluated;
            verdict.anomaly = (fire_lo && dir.watches(true)) || (fire_hi && dir.watches(false));
        }
        scored.verdict = verdict;
        scored
    }

    fn learn(&mut self, b: &Bucket, scored: &Scored, feedback: Feedback) {
        let status = scored.verdict.status;
        if matches!(status, Status::Excluded | Status::Missing) {
            return;
        }
        let Some((y, weight)) = self.observation(b) else {
            return;
        };
        self.cusum_lo = scored.cusum_lo;
        self.cusum_hi = scored.cusum_hi;
        self.zero_run = scored.zero_run;
        self.incident_lo = scored.incident_lo;
        self.incident_hi = scored.incident_hi;
        let evaluated = matches!(status, Status::Evaluated | Status::LowVolume);
        for (m, p) in self.models.iter_mut().zip(scored.preds.iter()) {
            if let (Some(m), Some(p)) = (m, p) {
                if weight > 0.0 {
                    m.track_error(b.ts, y, p);
                }
            }
        }
        match feedback {
            Feedback::None if evaluated => self.track_run(y, scored),
            // Not a deviation: it cannot start a run, and counts as quiet in one under way.
            Feedback::NotAnomaly if evaluated => self.track_run(
                y,
                &Scored {
                    z: 0.0,
                    outlier: false,
                    ..*scored
                },
            ),
            Feedback::NewNormal => self.rebase(b.ts, y, &scored.preds),
            _ => {}
        }
        // Anomalous buckets are not learned, nor are those of an incident still under way
        // (see `incident_lo`) or of a run of empty buckets half-way to an alarm: a sustained
        // drop must not teach the baseline to expect it.
        let building = scored.zero_run >= ZERO_HOLD_BACK * self.thresholds.zero_run_nll
            || scored.incident_lo
            || scored.incident_hi;
        let held_back = feedback == Feedback::None && (scored.outlier || (evaluated && building));
        // A false positive is learned in full, so the noise estimate sees how far off it was.
        let winsor = if evaluated && feedback != Feedback::NotAnomaly {
            Some(WINSOR_SD)
        } else {
            None
        };
        let kind = self.cfg.kind;
        for (m, p) in self.models.iter_mut().zip(scored.preds.iter()) {
            if let Some(m) = m {
                match p {
                    // The level was just rescaled: learn against the new prediction.
                    Some(_) if feedback == Feedback::NewNormal => {
                        let p = m.predict(kind, b.ts, weight);
                        m.learn(kind, b.ts, y, weight, &p, winsor);
                    }
                    Some(p) if !held_back => m.learn(kind, b.ts, y, weight, p, winsor),
                    Some(_) => {}
                    // A model that has never seen this slot has nothing to call it an outlier
                    // against: it learns the slot, or the slot would stay unseen forever.
                    None => {
                        let p = m.predict(kind, b.ts, weight);
                        m.learn(kind, b.ts, y, weight, &p, None);
                    }
                }
            }
        }
        if held_back {
            self.prev_z = 0.0;
            return;
        }
        if feedback != Feedback::None {
            // Its z-score is the model's error, not the series' noise.
            self.prev_z = 0.0;
        } else if evaluated {
            self.track_autocorrelation(scored.z);
        }
        if weight > 0.0 {
            self.learned += 1;
        }
    }

    /// Watch a persistent deviation; after `accept_after` buckets mostly on one side, take
    /// its level as the new normal.
    fn track_run(&mut self, y: f64, scored: &Scored) {
        let z = scored.z;
        let sign: i8 = if z >= RUN_DEVIATION_Z {
            1
        } else if z <= -RUN_DEVIATION_Z {
            -1
        } else {
            0
        };
        if self.run.sign == 0 {
            if scored.outlier && sign != 0 {
                self.run = Run {
                    sign,
                    total: 1,
                    deviating: 1,
                    quiet: 0,
                };
                self.run_add(y, scored);
            }
            return;
        }
        self.run.total += 1;
        self.run_add(y, scored);
        if sign == self.run.sign {
            self.run.deviating += 1;
            self.run.quiet = 0;
        } else {
            self.run.quiet += 1;
        }
        if self.run.quiet >= 3 {
            self.clear_run();
        } else if self.run.total >= self.accept_after {
            if f64::from(self.run.deviating) >= 0.7 * f64::from(self.run.total) {
                for m in self.models.iter_mut().flatten() {
                    m.run_accept();
                }
                self.cusum_lo = 0.0;
                self.cusum_hi = 0.0;
                self.zero_run = 0.0;
                self.incident_lo = false;
                self.incident_hi = false;
                self.run = Run::default();
            } else {
                self.clear_run();
            }
        }
    }

    /// Take `y` as the new level at once: every model's level is rescaled by the bucket's
    /// observed/expected ratio under its own prediction (or under the chosen model's, for a
    /// model that has not seen this slot), as when a run is accepted; any run is forgotten.
    fn rebase(&mut self, ts: i64, y: f64, preds: &[Option<Prediction>; 3]) {
        let factor =
            |p: &Prediction| (p.mean.abs() > 1e-12 && y.is_finite()).then(|| (y / p.mean).clamp(0.02, 50.0));
        let fallback = self.chosen(ts).and_then(|i| preds[i].as_ref()).and_then(factor);
        for (m, p) in self.models.iter_mut().zip(preds.iter()) {
            if let Some(m) = m {
                if let Some(f) = p.as_ref().and_then(factor).or(fallback) {
                    m.rebase(f);
                }
            }
        }
        self.clear_run();
        self.cusum_lo = 0.0;
        self.cusum_hi = 0.0;
        self.zero_run = 0.0;
        self.incident_lo = false;
        self.incident_hi = false;
    }

    fn run_add(&mut self, y: f64, scored: &Scored) {
        for (m, p) in self.models.iter_mut().zip(scored.preds.iter()) {
            if let (Some(m), Some(p)) = (m, p) {
                m.run_add(y, p);
            }
        }
    }

    fn clear_run(&mut self) {
        self.run = Run::default();
        for m in self.models.iter_mut().flatten() {
            m.run_clear();
        }
    }
}

/// The nominal number of false alarms per week a sensitivity in (0, 1) budgets for, on a
/// series that follows its noise model: `10^(4 s - 4)`, so `low` ≈ 0.001, `medium` ≈ 0.01
/// and `high` ≈ 0.1. Real series stray from their model; measured rates are in
/// `docs/DETECTION.md`.
pub fn false_alarms_per_week(sensitivity: Sensitivity) -> f64 {
    threshold::false_alarms_per_week(sensitivity.get())
}

/// Buckets of history before anything is flagged: two days (at least 14 buckets), or with
/// automatic seasonality and a possible weekly profile, eight days: a week to see every slot of
/// the week once, plus a day to compare the weekly profile against the daily one.
fn warm_up_buckets(mode: SeasonalityMode, per_day: f64, weekly_possible: bool) -> u64 {
    let days = match mode {
        SeasonalityMode::Auto if weekly_possible => 8.0,
        SeasonalityMode::Weekly => 8.0,
        _ => 2.0,
    };
    (days * per_day).max(14.0).ceil() as u64
}

#[cfg(test)]
mod tests;
