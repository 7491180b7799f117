//! Turns the detector's verdicts into alerts people trust, and delivers them.
//!
//! - [`decide`] is the pure lifecycle rule: one open incident per series; it opens on an
//!   anomalous bucket, stays open while anomalies continue, and resolves after
//!   `recovery_buckets` in-band buckets. One message on firing, one on resolution.
//! - [`message`] renders what a message says (KPI, expected vs actual, band, time, volume).
//! - [`Mailer`] delivers e-mail over SMTP or into an outbox folder of `.eml` files.
//! - [`deliver_pending`] drains the notification outbox in the state store: a message is
//!   marked sent only after the server accepted it, so a restart never loses one and never
//!   re-sends one that was marked.

mod email;
pub mod receivers;
pub mod routing;
pub mod silence;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

pub use email::Mailer;

use crate::kpi::KpiSpec;
use crate::store::{self, AlertChange, AlertRow, NewNotification, Store};

/// A delivery failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The message could not be built (bad address, …).
    #[error("cannot build the e-mail: {0}")]
    Build(String),
    /// The transport failed.
    #[error("e-mail delivery failed: {0}")]
    Transport(String),
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the detector said about one bucket, as alerting needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketVerdict {
    /// Bucket start.
    pub ts: i64,
    /// Observed value (band units).
    pub value: f64,
    /// Expected value.
    pub expected: f64,
    /// Band lower edge.
    pub lower: f64,
    /// Band upper edge.
    pub upper: f64,
    /// Score in [0, 1].
    pub score: f64,
    /// Volume behind the bucket.
    pub volume: f64,
    /// Seasonality used.
    pub seasonality: String,
    /// Flagged?
    pub anomaly: bool,
    /// Judged at all (not warming up / excluded)?
    pub judged: bool,
}

/// Which alert decision applies; the notifications are filled in by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing changes.
    Nothing,
    /// Open an incident.
    Open,
    /// The open incident continues.
    StillFiring,
    /// In band, not yet resolved.
    Recovering,
    /// Resolve the incident.
    Resolve,
}

/// The lifecycle rule. Pure.
pub fn decide(open: Option<&AlertRow>, v: &BucketVerdict, recovery_buckets: u32) -> Decision {
    match (open, v.anomaly, v.judged) {
        (None, true, _) => Decision::Open,
        (None, false, _) => Decision::Nothing,
        (Some(_), true, _) => Decision::StillFiring,
        (Some(_), false, false) => Decision::Nothing,
        (Some(a), false, true) => {
            if a.ok_streak + 1 >= i64::from(recovery_buckets) {
                Decision::Resolve
            } else {
                Decision::Recovering
            }
        }
    }
}

/// Everything a message needs to say.
#[derive(Debug)]
pub struct MessageContext<'a> {
    /// The KPI.
    pub spec: &'a KpiSpec,
    /// Series dimensions (JSON), `{}` for none.
    pub dims: &'a str,
    /// The bucket that caused the message.
    pub verdict: &'a BucketVerdict,
    /// When the incident started (first anomalous bucket).
    pub since: i64,
    /// Base URL for links.
    pub public_url: &'a str,
}

fn fmt_ts(ts: i64) -> String {
    DateTime::<Utc>::from_timestamp(ts, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| ts.to_string())
}

fn fmt_value(spec: &KpiSpec, v: f64) -> String {
    match spec.kind {
        crate::kpi::Kind::Ratio => format!("{:.2}%", v * 100.0),
        _ if v.abs() >= 100.0 => format!("{v:.0}"),
        _ => format!("{v:.2}"),
    }
}

/// Subject and plain-text body for a firing or resolved message.
pub fn message(cx: &MessageContext<'_>, resolved: bool) -> (String, String) {
    let spec = cx.spec;
    let v = cx.verdict;
    let series = if cx.dims == "{}" {
        String::new()
    } else {
        format!(" {}", cx.dims)
    };
    let change = if v.expected.abs() > f64::EPSILON {
        format!("{:+.1}%", (v.value - v.expected) / v.expected.abs() * 100.0)
    } else {
        "n/a".to_owned()
    };
    let volume_label = match spec.kind {
        crate::kpi::Kind::Ratio => "attempts (denominator)",
        _ => "volume",
    };
    let (subject, headline) = if resolved {
        (
            format!("[RESOLVED] {}{series} is back in its band", spec.title),
            format!(
                "{}{series} is back within its expected band since {}.",
                spec.title,
                fmt_ts(v.ts)
            ),
        )
    } else {
        let word = if v.value < v.lower { "dropped" } else { "rose" };
        (
            format!(
                "[{}] {}{series} {word} to {} (expected {})",
                spec.severity.to_string().to_uppercase(),
                spec.title,
                fmt_value(spec, v.value),
                fmt_value(spec, v.expected)
            ),
            format!(
                "{}{series} {word} outside its expected band in the bucket starting {}.",
                spec.title,
                fmt_ts(v.ts)
            ),
        )
    };
    let body = format!(
        "{headline}\n\n\
         KPI:          {title} ({id})\n\
         Series:       {dims}\n\
         Actual:       {actual}\n\
         Expected:     {expected} ({change})\n\
         Band:         {lower} .. {upper}\n\
         Score:        {score:.3}\n\
         {volume_label:<13} {volume:.0}\n\
         Bucket:       {bucket} ({interval} buckets)\n\
         Since:        {since}\n\
         Seasonality:  {seasonality}\n\
         Severity:     {severity}\n\
         Owner:        {owner}\n\n\
         Series:    {url}/api/kpis/{id}/series\n\
         Anomalies: {url}/api/anomalies?kpi={id}\n",
        title = spec.title,
        id = spec.id,
        dims = cx.dims,
        actual = fmt_value(spec, v.value),
        expected = fmt_value(spec, v.expected),
        lower = fmt_value(spec, v.lower),
        upper = fmt_value(spec, v.upper),
        score = v.score,
        volume = v.volume,
        volume_label = format!("{}:", volume_label),
        bucket = fmt_ts(v.ts),
        interval = spec.interval,
        since = fmt_ts(cx.since),
        seasonality = v.seasonality,
        severity = spec.severity,
        owner = spec.owner.as_deref().unwrap_or("-"),
        url = cx.public_url.trim_end_matches('/'),
    );
    (subject, body)
}

/// The labels an alert is routed and silenced by: the model's labels, the series'
/// dimension values, and `kpi`, `severity` and `owner`.
pub fn alert_labels(spec: &KpiSpec, dims: &str) -> BTreeMap<String, String> {
    let mut labels = spec.labels.clone();
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(dims) {
        for (k, v) in map {
            let v = v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string());
            labels.insert(k, v);
        }
    }
    labels.insert("kpi".to_owned(), spec.id.to_string());
    labels.insert("severity".to_owned(), spec.severity.to_string());
    if let Some(owner) = &spec.owner {
        labels.insert("owner".to_owned(), owner.clone());
    }
    labels
}

/// Why an alert with `labels` is not to be sent at `now`, if it is not.
pub fn suppression(
    labels: &BTreeMap<String, String>,
    silences: &[silence::Silence],
    windows: &[silence::MaintenanceWindow],
    now: DateTime<Utc>,
) -> Option<String> {
    if let Some(s) = silences.iter().find(|s| s.silences(labels, now.timestamp())) {
        return Some(format!("silence {}", s.id));
    }
    windows
        .iter()
        .find(|w| w.covers(labels, now))
        .map(|w| format!("maintenance {}", w.name))
}

/// Build the store change for a decision, rendering the messages for `targets`.
pub fn change_for(
    decision: Decision,
    open: Option<&AlertRow>,
    cx: &MessageContext<'_>,
    targets: &[receivers::Target],
    suppressed_by: Option<&str>,
) -> Option<AlertChange> {
    let notify = |resolved| {
        let (subject, body) = message(cx, resolved);
        targets
            .iter()
            .map(|t| NewNotification {
                channel: t.channel.clone(),
                recipient: t.recipient.clone(),
                subject: subject.clone(),
                body: body.clone(),
                suppressed_by: suppressed_by.map(str::to_owned),
            })
            .collect()
    };
    let ts = cx.verdict.ts;
    match (decision, open) {
        (Decision::Open, _) => Some(AlertChange::Open {
            ts,
            notify: notify(false),
        }),
        (Decision::StillFiring, Some(a)) => Some(AlertChange::StillFiring { alert_id: a.id, ts }),
        (Decision::Recovering, Some(a)) => Some(AlertChange::Recovering { alert_id: a.id }),
        (Decision::Resolve, Some(a)) => Some(AlertChange::Resolve {
            alert_id: a.id,
            ts,
            notify: notify(true),
        }),
        _ => None,
    }
}

/// How long to wait before retrying a delivery that failed `attempts` times: exponential
/// from 30 s, capped at one hour.
pub fn retry_delay(attempts: i64) -> i64 {
    30_i64.saturating_mul(1_i64 << attempts.clamp(0, 7)).min(3600)
}

/// Deliver every notification due at `now`; a failure is retried later with backoff
/// without blocking the others.
pub async fn deliver_pending(store: &Store, mailer: &Mailer, now: i64) -> Result<DeliveryReport> {
    let mut report = DeliveryReport::default();
    for n in store.pending_notifications(now, 100).await? {
        let sent = match n.channel.as_str() {
            "email" => mailer.send(&n.recipient, &n.subject, &n.body).await,
            other => Err(Error::Build(format!("no channel {other:?} in this version"))),
        };
        match sent {
            Ok(()) => {
                store.mark_sent(n.id).await?;
                tracing::info!(
                    message = "Alert notification sent.",
                    notification = n.id,
                    event = %n.event,
                    recipient = %n.recipient,
                    subject = %n.subject,
                    via = mailer.describe(),
                );
                report.sent += 1;
            }
            Err(error) => {
                // A malformed message will not get better; a transport failure may.
                let retry_at = match error {
                    Error::Build(_) => None,
                    _ => Some(now + retry_delay(n.attempts)),
                };
                store.mark_failed(n.id, &error.to_string(), retry_at).await?;
                tracing::warn!(message = "Notification delivery failed.", notification = n.id, attempts = n.attempts + 1, retry_at, %error);
                report.failed += 1;
            }
        }
    }
    Ok(report)
}

/// Outcome of one [`deliver_pending`] pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Delivered now.
    pub sent: usize,
    /// Failed now (still pending).
    pub failed: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(anomaly: bool) -> BucketVerdict {
        BucketVerdict {
            ts: 0,
            value: 0.4,
            expected: 0.97,
            lower: 0.9,
            upper: 1.0,
            score: 0.99,
            volume: 120.0,
            seasonality: "daily".to_owned(),
            anomaly,
            judged: true,
        }
    }

    fn open(ok_streak: i64) -> AlertRow {
        AlertRow {
            id: 1,
            series_id: 1,
            state: "firing".to_owned(),
            started_ts: 0,
            last_anomaly_ts: 0,
            ok_streak,
            resolved_ts: None,
        }
    }

    #[test]
    fn an_anomaly_opens_once_and_recovery_needs_k_good_buckets() {
        assert_eq!(decide(None, &verdict(true), 3), Decision::Open);
        assert_eq!(decide(Some(&open(0)), &verdict(true), 3), Decision::StillFiring);
        assert_eq!(decide(Some(&open(0)), &verdict(false), 3), Decision::Recovering);
        assert_eq!(decide(Some(&open(1)), &verdict(false), 3), Decision::Recovering);
        assert_eq!(decide(Some(&open(2)), &verdict(false), 3), Decision::Resolve);
        assert_eq!(decide(None, &verdict(false), 3), Decision::Nothing);
    }

    #[test]
    fn retries_back_off_exponentially_up_to_an_hour() {
        assert_eq!(retry_delay(0), 30);
        assert_eq!(retry_delay(1), 60);
        assert_eq!(retry_delay(3), 240);
        assert_eq!(retry_delay(40), 3600);
    }

    #[test]
    fn the_message_says_expected_actual_band_and_volume() {
        let spec = crate::kpi::KpiSpec::parse(
            "pay",
            "title = \"Payment success\"\nsource = \"s\"\nkind = \"ratio\"\ninterval = \"5m\"\nseverity = \"critical\"",
            "SELECT 1 WHERE :start < :end",
            std::path::Path::new("m"),
        )
        .expect("valid");
        let v = verdict(true);
        let cx = MessageContext {
            spec: &spec,
            dims: "{}",
            verdict: &v,
            since: 0,
            public_url: "http://x",
        };
        let (subject, body) = message(&cx, false);
        assert!(
            subject.contains("[CRITICAL] Payment success dropped to 40.00%"),
            "{subject}"
        );
        assert!(subject.contains("expected 97.00%"), "{subject}");
        for needle in [
            "Band:         90.00% .. 100.00%",
            "attempts (denominator): 120",
            "1970-01-01 00:00 UTC",
            "-58.8%",
        ] {
            assert!(body.contains(needle), "{needle} missing in\n{body}");
        }
        let (subject, _) = message(&cx, true);
        assert!(subject.starts_with("[RESOLVED]"));
    }
}
