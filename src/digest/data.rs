//! What a daily digest says, as plain data: built from the state store by `digest::build`,
//! rendered by `digest::render`. No IO here.

use chrono::{DateTime, NaiveDate, Utc};

use crate::kpi::Kind;
use crate::reading::Reading;

/// One recipient's digest for one local day.
#[derive(Debug, Clone, PartialEq)]
pub struct DigestData {
    /// The recipient's address.
    pub recipient: String,
    /// The local day it covers ("yesterday" when sent).
    pub date: NaiveDate,
    /// The recipient's IANA timezone.
    pub timezone: String,
    /// When it was built.
    pub generated_at: DateTime<Utc>,
    /// Sent late (the service was down at send time) — the digest says so.
    pub late: bool,
    /// Base URL for links.
    pub public_url: String,
    /// The recipient's KPIs, ranked by business impact (most urgent first).
    pub kpis: Vec<KpiDigest>,
}

/// How a KPI did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DigestStatus {
    /// Data missing or the source failing.
    MissingData,
    /// At least one anomaly on the day.
    Anomalous,
    /// Came close to its band without firing.
    NearMiss,
    /// All in band.
    Ok,
}

impl DigestStatus {
    /// `missing data`, `anomalous`, `near-miss` or `ok`.
    pub fn label(self) -> &'static str {
        match self {
            DigestStatus::MissingData => "missing data",
            DigestStatus::Anomalous => "anomalous",
            DigestStatus::NearMiss => "near-miss",
            DigestStatus::Ok => "ok",
        }
    }
}

/// One KPI in the digest.
#[derive(Debug, Clone, PartialEq)]
pub struct KpiDigest {
    /// KPI id.
    pub id: String,
    /// Title.
    pub title: String,
    /// Count, ratio or gauge (decides how values are formatted: ratios as percentages).
    pub kind: Kind,
    /// The model's unit, shown beside counts and gauges.
    pub unit: Option<String>,
    /// Owner.
    pub owner: Option<String>,
    /// Status badge.
    pub status: DigestStatus,
    /// The day's value: total for counts, numerator/denominator for ratios, mean for gauges.
    pub value: Option<f64>,
    /// What the baseline expected for the day, same aggregation.
    pub expected: Option<f64>,
    /// The same weekday a week earlier.
    pub last_week: Option<f64>,
    /// Ranking weight: larger = more urgent (status first, then relative deviation).
    pub impact: f64,
    /// The last 7–14 days for the chart, in time order.
    pub points: Vec<ChartPoint>,
    /// Incidents that were open during the day.
    pub incidents: Vec<IncidentDigest>,
    /// Buckets that came close to the band without firing.
    pub near_misses: Vec<NearMiss>,
    /// What is wrong with the data, if anything (source failing, late, empty).
    pub data_health: Option<String>,
    /// The day's value was outside its band without an alert (e.g. a rise on a KPI that
    /// watches drops), said in words.
    pub note: Option<String>,
    /// Events and holidays that covered part of the day (their buckets were neither learned
    /// nor alerted), each as its name and local times.
    pub events: Vec<String>,
    /// Link to the KPI's series.
    pub url: String,
}

/// One point of a digest chart (one bucket, or one day for fine-grained KPIs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChartPoint {
    /// Start of the bucket or day.
    pub ts: DateTime<Utc>,
    /// Observed value (band units) and band; NaN where there is none.
    pub reading: Reading,
    /// Flagged.
    pub anomaly: bool,
}

/// An incident during the day.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentDigest {
    /// Series (dimension values as `k=v, …`, empty for none).
    pub series: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended (`None`: still open).
    pub ended_at: Option<DateTime<Utc>>,
    /// How big: the worst bucket's value and what was expected.
    pub worst_value: f64,
    /// Expected at the worst bucket.
    pub expected: f64,
    /// Who acknowledged it.
    pub acknowledged_by: Option<String>,
    /// Whether its messages were held back by a silence or maintenance window.
    pub silenced: bool,
}

/// A bucket that came close.
#[derive(Debug, Clone, PartialEq)]
pub struct NearMiss {
    /// The slice it happened in (`payment_method=card`); empty for the KPI's total.
    pub series: String,
    /// Bucket start.
    pub ts: DateTime<Utc>,
    /// Observed value and its band.
    pub reading: Reading,
    /// Score in [0, 1] (ranks near-misses; never shown).
    pub score: f64,
}

/// A rendered digest, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedDigest {
    /// Subject line.
    pub subject: String,
    /// HTML part; images are referenced as `cid:<cid>`.
    pub html: String,
    /// Plain-text alternative with the same information.
    pub text: String,
    /// Inline PNG charts.
    pub images: Vec<InlineImage>,
}

/// One inline image.
#[derive(Debug, Clone, PartialEq)]
pub struct InlineImage {
    /// Content-ID (without angle brackets), referenced from the HTML as `cid:…`.
    pub cid: String,
    /// PNG bytes.
    pub png: Vec<u8>,
}
