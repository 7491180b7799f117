//! Turns the detector's verdicts into alerts people trust, and delivers them.
//!
//! - [`lifecycle`] is the pure incident state machine (pending → firing → resolved, trigger
//!   and recovery rules, repeats, escalation); [`plan`] threads a series' open incident
//!   through a run's judged buckets and decides the rows and events to store (pure);
//!   [`message`] renders what a message says.
//! - [`routing`], [`receivers`] and [`silence`] decide who is told, and whether now.
//! - [`Mailer`] delivers e-mail over SMTP or into an outbox folder of `.eml` files.
//! - [`deliver_pending`] drains the notification outbox in the state store: a message is
//!   marked sent only after the transport accepted it; failures are retried with backoff.
//!
//! Knows nothing of sources or the detector's internals.

mod email;
pub mod lifecycle;
pub mod message;
pub mod notifiers;
pub mod plan;
pub mod receivers;
pub mod routing;
pub mod silence;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub use email::{Mailer, Threading};
pub use message::MessageContext;

use self::lifecycle::{Incident, Phase, Rule};
use crate::kpi::{KpiSpec, Severity};
use crate::reading::{Band, Reading};
use crate::store::{self, AlertRow, NewNotification, NotificationPayload, Store};

/// A delivery failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The message could not be built (bad address, …): retrying will not help.
    #[error("cannot build the message: {0}")]
    Build(String),
    /// The transport failed; worth retrying.
    #[error("delivery failed: {0}")]
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
    /// Observed value (band units) and its band.
    pub reading: Reading,
    /// Score in [0, 1].
    pub score: f64,
    /// Volume behind the bucket.
    pub volume: f64,
    /// Seasonality used.
    pub seasonality: String,
    /// Flagged?
    pub anomaly: bool,
    /// Judged at all (not warming up / low volume / missing)?
    pub judged: bool,
    /// Not yet recovered: flagged, or the detector's incident on a watched side is still open
    /// (the level has not been shown to be back, whether or not this bucket is in its band).
    pub outside: bool,
    /// For an anomaly: whether it is below the band (a drop) or above it.
    pub below: Option<bool>,
    /// For an anomaly: the estimated start of the shift (bucket start, unix seconds), which
    /// can be earlier than the bucket that fired.
    pub since: Option<i64>,
    /// For an anomaly: what flagged it — `bucket` (its own value is outside the band),
    /// `accumulated` (evidence over recent buckets, each possibly inside the band),
    /// `empty_run`, or `ongoing` (an incident still under way).
    pub trigger: Option<&'static str>,
}

impl BucketVerdict {
    /// A verdict for tests and callers that only know the numbers: flagged when `anomaly`,
    /// below when the value is under the expected value.
    pub fn plain(ts: i64, value: f64, expected: f64, lower: f64, upper: f64, anomaly: bool) -> Self {
        let reading = Reading::new(value, Band::new(expected, lower, upper));
        BucketVerdict {
            ts,
            reading,
            score: if anomaly { 0.99 } else { 0.1 },
            volume: 100.0,
            seasonality: "daily".to_owned(),
            anomaly,
            judged: true,
            outside: anomaly,
            below: anomaly.then_some(reading.is_below_expected()),
            since: anomaly.then_some(ts),
            trigger: anomaly.then_some("bucket"),
        }
    }
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

/// Stable identity of an incident: kind, KPI and dimension values.
pub fn fingerprint(kind: &str, spec: &KpiSpec, dims: &str) -> String {
    format!("{kind}:{}:{dims}", spec.id)
}

/// The severity a flagged bucket warrants: the model's, raised to critical when the value is
/// at least 50% away from what was expected.
pub fn severity_for(spec: &KpiSpec, v: &BucketVerdict) -> Severity {
    let big = v.reading.relative_change().is_some_and(|c| c.abs() >= 0.5);
    if v.anomaly && big {
        Severity::Critical
    } else {
        spec.severity
    }
}

/// The lifecycle rule of a KPI (model settings, else scheduler defaults).
pub fn rule_for(spec: &KpiSpec, default_recovery: u32) -> Rule {
    Rule {
        fire_n: spec.trigger.0,
        fire_m: spec.trigger.1,
        recover_k: spec.recover_after.unwrap_or(default_recovery),
        repeat_secs: spec.repeat_interval.map(|d| d.as_secs() as i64),
    }
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

/// The open incident stored in `row`.
pub fn incident_of(row: &AlertRow) -> Incident {
    Incident {
        phase: if row.state == "pending" {
            Phase::Pending
        } else {
            Phase::Firing
        },
        severity: row.severity.parse().unwrap_or(Severity::Warning),
        started_ts: row.started_ts,
        last_anomaly_ts: row.last_anomaly_ts,
        hits_mask: u32::try_from(row.hits_mask).unwrap_or(0),
        seen: u32::try_from(row.seen).unwrap_or(0),
        ok_streak: u32::try_from(row.ok_streak).unwrap_or(0),
        notified_at: row.notified_at,
        repeats: u32::try_from(row.repeats).unwrap_or(0),
        acknowledged: row.acknowledged_by.is_some(),
    }
}

/// `row` (or a new row) updated to `incident`.
pub fn row_of(incident: &Incident, base: AlertRow) -> AlertRow {
    AlertRow {
        state: match incident.phase {
            Phase::Pending => "pending",
            Phase::Firing => "firing",
        }
        .to_owned(),
        severity: incident.severity.to_string(),
        started_ts: incident.started_ts,
        last_anomaly_ts: incident.last_anomaly_ts,
        hits_mask: i64::from(incident.hits_mask),
        seen: i64::from(incident.seen),
        ok_streak: i64::from(incident.ok_streak),
        notified_at: incident.notified_at,
        repeats: i64::from(incident.repeats),
        ..base
    }
}

/// What a message is about, for the targets to render.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// The event's name (`firing`, `repeat-1`, `resolved`, …).
    pub event: &'a str,
    /// Default subject.
    pub subject: &'a str,
    /// Default plain-text body.
    pub body: &'a str,
    /// The facts.
    pub payload: &'a NotificationPayload,
    /// Why it is recorded but not sent, if so.
    pub suppressed_by: Option<&'a str>,
    /// Grouping key (see [`group_key`]).
    pub group_key: &'a str,
    /// Not before this time (group wait).
    pub not_before: i64,
}

/// The group an alert's messages belong to: the values of the `by` labels.
pub fn group_key(labels: &BTreeMap<String, String>, by: &[String]) -> String {
    by.iter()
        .map(|l| format!("{l}={}", labels.get(l).map(String::as_str).unwrap_or("")))
        .collect::<Vec<_>>()
        .join(",")
}

/// One message for each target, in each receiver's own wording where it has templates.
pub fn notifications(
    receivers: &receivers::Receivers,
    targets: &[receivers::Target],
    out: Outgoing<'_>,
) -> Vec<NewNotification> {
    targets
        .iter()
        .map(|t| {
            let templates = t.receiver.as_deref().and_then(|r| receivers.templates(r));
            let (subject, body) = match templates {
                Some(templates) => {
                    let mut context = serde_json::to_value(out.payload).unwrap_or_default();
                    if let Some(map) = context.as_object_mut() {
                        map.insert("event".to_owned(), out.event.into());
                        map.insert("default_subject".to_owned(), out.subject.into());
                        map.insert("default_text".to_owned(), out.body.into());
                    }
                    templates.render(&context, out.subject, out.body)
                }
                None => (out.subject.to_owned(), out.body.to_owned()),
            };
            NewNotification {
                channel: t.channel.clone(),
                recipient: t.recipient.clone(),
                subject,
                body,
                suppressed_by: out.suppressed_by.map(str::to_owned),
                // E-mail renders from subject and body; HTTP channels also from the payload.
                payload: (t.channel != "email").then(|| out.payload.clone()),
                group_key: out.group_key.to_owned(),
                not_before: out.not_before,
            }
        })
        .collect()
}

/// The facts of a notification about `alert` (a bucket verdict for anomalies; none for
/// data-missing alerts); `links` are the signed acknowledge and silence links.
pub fn payload(
    spec: &KpiSpec,
    dims: &str,
    alert: &AlertRow,
    verdict: Option<&BucketVerdict>,
    resolved: bool,
    public_url: &str,
    links: (Option<String>, Option<String>),
) -> NotificationPayload {
    let (ack_url, silence_url) = links;
    let series = match serde_json::from_str::<serde_json::Value>(dims) {
        Ok(serde_json::Value::Object(map)) => map
            .into_iter()
            .map(|(k, v)| (k, v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())))
            .collect(),
        _ => BTreeMap::new(),
    };
    let fmt = crate::format::ValueFormat::of(spec);
    let display = match verdict {
        Some(v) => store::DisplayValues {
            value: fmt.value(v.reading.value),
            expected: fmt.value(v.reading.band.expected),
            band: fmt.band(v.reading.band),
            change: fmt
                .change(v.reading.value, v.reading.band.expected)
                .unwrap_or_default(),
            volume: crate::format::grouped(v.volume, 0),
        },
        None => store::DisplayValues::default(),
    };
    NotificationPayload {
        resolved,
        fingerprint: alert.fingerprint.clone(),
        kpi_id: spec.id.to_string(),
        kpi_title: spec.title.clone(),
        series,
        severity: alert.severity.clone(),
        owner: spec.owner.clone(),
        labels: spec.labels.clone(),
        reading: verdict.map_or(Reading::NONE, |v| v.reading),
        volume: verdict.map_or(0.0, |v| v.volume),
        started_ts: alert.started_ts,
        bucket_ts: verdict.map_or(alert.last_anomaly_ts, |v| v.ts),
        resolved_ts: alert.resolved_ts,
        kpi_url: kpi_url(public_url, spec.id.as_str(), Some(alert.id).filter(|id| *id > 0)),
        display,
        ack_url,
        silence_url,
    }
}

/// The web UI's page of a KPI, focused on one incident when `alert` is given: the link every
/// message carries (e-mail, chat, paging, webhook, Alertmanager's `generatorURL`).
pub fn kpi_url(public_url: &str, kpi: &str, alert: Option<i64>) -> String {
    let base = public_url.trim_end_matches('/');
    match alert {
        Some(id) => format!("{base}/#/kpi/{kpi}?alert={id}"),
        None => format!("{base}/#/kpi/{kpi}"),
    }
}

/// What an HTTP channel renders, from the stored payload and the rendered text.
fn to_notification(p: &NotificationPayload, subject: &str, body: &str) -> notifiers::Notification {
    let at = |ts: i64| DateTime::<Utc>::from_timestamp(ts, 0).unwrap_or_default();
    notifiers::Notification {
        event: if p.resolved {
            notifiers::Event::Resolved
        } else {
            notifiers::Event::Firing
        },
        fingerprint: p.fingerprint.clone(),
        kpi_id: p.kpi_id.clone(),
        kpi_title: p.kpi_title.clone(),
        series: p.series.clone(),
        severity: p.severity.clone(),
        owner: p.owner.clone(),
        labels: p.labels.clone(),
        summary: subject.to_owned(),
        text: body.to_owned(),
        reading: p.reading,
        volume: p.volume,
        started_at: at(p.started_ts),
        bucket_at: at(p.bucket_ts),
        resolved_at: p.resolved_ts.map(at),
        links: notifiers::Links {
            kpi: p.kpi_url.clone(),
            ack: p.ack_url.clone(),
            silence: p.silence_url.clone(),
        },
        display: notifiers::Display {
            value: p.display.value.clone(),
            expected: p.display.expected.clone(),
            band: p.display.band.clone(),
            change: p.display.change.clone(),
            volume: p.display.volume.clone(),
        },
    }
}

/// Signs and checks the links in messages (acknowledge), so they work without a login.
#[derive(Clone)]
pub struct LinkSigner {
    key: Vec<u8>,
}

impl std::fmt::Debug for LinkSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkSigner(..)")
    }
}

impl LinkSigner {
    /// A signer with this secret.
    pub fn new(secret: &str) -> Self {
        LinkSigner {
            key: secret.as_bytes().to_vec(),
        }
    }

    fn mac(&self, action: &str, id: i64) -> Option<Hmac<Sha256>> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).ok()?;
        mac.update(format!("{action}:{id}").as_bytes());
        Some(mac)
    }

    /// Hex signature of `action` on alert `id`.
    pub fn sign(&self, action: &str, id: i64) -> String {
        self.mac(action, id)
            .map(|m| hex::encode(m.finalize().into_bytes()))
            .unwrap_or_default()
    }

    /// Whether `sig` is the signature of `action` on `id` (constant time).
    pub fn verify(&self, action: &str, id: i64, sig: &str) -> bool {
        match (self.mac(action, id), hex::decode(sig)) {
            (Some(mac), Ok(bytes)) => mac.verify_slice(&bytes).is_ok(),
            _ => false,
        }
    }

    /// The acknowledge link for alert `id`.
    pub fn ack_url(&self, public_url: &str, id: i64) -> String {
        format!(
            "{}/ack/{id}?sig={}",
            public_url.trim_end_matches('/'),
            self.sign("ack", id)
        )
    }

    /// The link that silences alert `id`'s series.
    pub fn silence_url(&self, public_url: &str, id: i64) -> String {
        format!(
            "{}/silence/{id}?sig={}",
            public_url.trim_end_matches('/'),
            self.sign("silence", id)
        )
    }
}

/// Outcome of one [`deliver_pending`] pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Delivered now, by channel.
    pub sent: BTreeMap<String, usize>,
    /// Failed now (retried later, or given up), by channel.
    pub failed: BTreeMap<String, usize>,
    /// Receivers tried in this pass and whether their last attempt failed (`email` for the
    /// mailer, else the receiver's name).
    pub failing: BTreeMap<String, bool>,
}

/// Where messages go.
#[derive(Debug, Clone, Copy)]
pub struct Dispatch<'a> {
    /// E-mail.
    pub mailer: &'a Mailer,
    /// Named HTTP receivers.
    pub receivers: &'a receivers::Receivers,
    /// At least this many seconds between two e-mails about one group.
    pub group_interval: i64,
    /// This process, for claiming outbox rows when several share one store.
    pub holder: &'a str,
    /// How long a claim lasts (wall clock) before another process may take the rows over.
    pub claim_secs: i64,
}

impl Dispatch<'_> {
    async fn send(&self, n: &store::NotificationRow) -> Result<(), notifiers::DeliveryError> {
        if n.channel == "email" {
            let thread = Threading::for_rows(&[n.id], self.mailer.domain());
            return self
                .mailer
                .send(&n.recipient, &n.subject, &n.body, &thread)
                .await
                .map_err(|e| notifiers::DeliveryError {
                    retryable: !matches!(e, Error::Build(_)),
                    message: e.to_string(),
                    retry_after: None,
                });
        }
        let give_up = |message: String| notifiers::DeliveryError {
            retryable: false,
            message,
            retry_after: None,
        };
        let receiver = self
            .receivers
            .http(&n.recipient)
            .ok_or_else(|| give_up(format!("receiver {:?} is no longer configured", n.recipient)))?;
        let stored = n
            .payload
            .as_deref()
            .ok_or_else(|| give_up("the stored message has no payload".to_owned()))?;
        let payload: NotificationPayload = serde_json::from_str(stored)
            .map_err(|e| give_up(format!("the stored message's payload does not read back: {e}")))?;
        receiver
            .send(&to_notification(&payload, &n.subject, &n.body))
            .await
    }
}

/// Several e-mails to one recipient about one group, as one message.
fn merge(rows: &[store::NotificationRow]) -> (String, String) {
    if let [one] = rows {
        return (one.subject.clone(), one.body.clone());
    }
    let subject = format!(
        "[{} alerts] {}",
        rows.len(),
        rows.iter()
            .map(|r| r.subject.as_str())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let subject: String = subject.chars().take(250).collect();
    let body = rows
        .iter()
        .map(|r| format!("== {} ==\n\n{}", r.subject, r.body))
        .collect::<Vec<_>>()
        .join("\n\n");
    (subject, body)
}

/// One unit of delivery: a grouped e-mail, or one HTTP message.
struct Batch {
    lane: String,
    rows: Vec<store::NotificationRow>,
}

/// Deliver every notification due at `now`. Receivers are worked concurrently, so one that
/// is down or slow does not hold up the others. E-mails to one recipient about one group go
/// out as one message, at most one per `group_interval`; incident tools get one event per
/// series (their dedup keys). A failure is retried later with [`notifiers::backoff`] (or
/// the receiver's `Retry-After`), or given up when retrying cannot help.
pub async fn deliver_pending(store: &Store, dispatch: Dispatch<'_>, now: i64) -> Result<DeliveryReport> {
    let claim_until = chrono::Utc::now().timestamp() + dispatch.claim_secs;
    let pending = store
        .claim_notifications(dispatch.holder, now, claim_until, 200)
        .await?;
    let claimed: Vec<i64> = pending.iter().map(|n| n.id).collect();
    let mut lanes: BTreeMap<String, Vec<Batch>> = BTreeMap::new();
    let mut email_groups: BTreeMap<(String, String), Vec<store::NotificationRow>> = BTreeMap::new();
    for n in pending {
        if n.channel == "email" {
            email_groups
                .entry((n.recipient.clone(), n.group_key.clone()))
                .or_default()
                .push(n);
        } else {
            // Digests go through the mailer, like e-mail: one lane (and one `receiver` label
            // on `/metrics`) named `email`, never an address.
            let lane = if n.channel == "digest" {
                "email".to_owned()
            } else {
                n.recipient.clone()
            };
            lanes
                .entry(lane.clone())
                .or_default()
                .push(Batch { lane, rows: vec![n] });
        }
    }
    for ((recipient, key), rows) in email_groups {
        if let Some(last) = store.group_last_sent("email", &recipient, &key).await? {
            let next = last + dispatch.group_interval;
            if now < next {
                let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
                store.postpone(&ids, next).await?;
                continue;
            }
        }
        lanes.entry("email".to_owned()).or_default().push(Batch {
            lane: "email".to_owned(),
            rows,
        });
    }
    // Each lane records its outcomes as they come: an e-mail the server accepted is marked
    // sent at once, whatever a hung webhook in another lane is doing (a restart must not send
    // it again).
    let work = lanes.into_values().map(|batches| async move {
        let mut report = DeliveryReport::default();
        for batch in batches {
            let result = match batch.rows.as_slice() {
                [one] if one.channel == "digest" => dispatch
                    .mailer
                    .send_raw(&one.recipient, one.body.as_bytes())
                    .await
                    .map_err(|e| notifiers::DeliveryError {
                        retryable: !matches!(e, Error::Build(_)),
                        message: e.to_string(),
                        retry_after: None,
                    }),
                [first, ..] if first.channel == "email" => {
                    let (subject, body) = merge(&batch.rows);
                    let ids: Vec<i64> = batch.rows.iter().map(|r| r.id).collect();
                    let mut thread = Threading::for_rows(&ids, dispatch.mailer.domain());
                    // Thread under what this recipient already got about these alerts.
                    for alert in batch.rows.iter().filter_map(|r| r.alert_id) {
                        match store.thread_message_ids(alert, &first.recipient).await {
                            Ok(earlier) => {
                                for m in earlier {
                                    if !thread.references.contains(&m) {
                                        thread.references.push(m);
                                    }
                                }
                            }
                            // Unthreaded is better than unsent.
                            Err(error) => tracing::warn!(message = "E-mail thread lookup failed.", alert, %error),
                        }
                    }
                    let sent = dispatch
                        .mailer
                        .send(&first.recipient, &subject, &body, &thread)
                        .await
                        .map_err(|e| notifiers::DeliveryError {
                            retryable: !matches!(e, Error::Build(_)),
                            message: e.to_string(),
                            retry_after: None,
                        });
                    if sent.is_ok() {
                        if let Err(error) = store.set_message_id(&ids, &thread.message_id).await {
                            tracing::warn!(message = "Message-ID not recorded; later messages will not thread.", %error);
                        }
                    }
                    sent
                }
                [one] => dispatch.send(one).await,
                _ => Ok(()),
            };
            record_outcome(store, &batch, result, now, &mut report).await?;
        }
        Ok::<_, Error>(report)
    });
    // The claims last `claim_secs`; a delivery that takes longer (a slow SMTP server, many
    // receivers timing out in one lane) renews those not yet settled every third of that, so
    // no other process takes them over and sends them a second time.
    let every = std::time::Duration::from_secs((dispatch.claim_secs.max(3) / 3).unsigned_abs());
    let all = futures_util::future::join_all(work);
    tokio::pin!(all);
    let lanes = loop {
        tokio::select! {
            lanes = &mut all => break lanes,
            () = tokio::time::sleep(every) => {
                let until = chrono::Utc::now().timestamp() + dispatch.claim_secs;
                if let Err(error) = store.renew_claims(dispatch.holder, &claimed, until).await {
                    tracing::warn!(message = "Failed to renew outbox claims.", %error);
                }
            }
        }
    };
    let mut report = DeliveryReport::default();
    for lane in lanes {
        let lane = lane?;
        for (channel, n) in lane.sent {
            *report.sent.entry(channel).or_default() += n;
        }
        for (channel, n) in lane.failed {
            *report.failed.entry(channel).or_default() += n;
        }
        report.failing.extend(lane.failing);
    }
    Ok(report)
}

/// Mark one batch sent, or failed (with its retry time), and count it in `report`.
async fn record_outcome(
    store: &Store,
    batch: &Batch,
    result: Result<(), notifiers::DeliveryError>,
    now: i64,
    report: &mut DeliveryReport,
) -> Result<()> {
    let Some(first) = batch.rows.first() else {
        return Ok(());
    };
    let ids: Vec<i64> = batch.rows.iter().map(|r| r.id).collect();
    match result {
        Ok(()) => {
            store
                .mark_group_sent(&ids, &first.channel, &first.recipient, &first.group_key, now)
                .await?;
            tracing::info!(
                message = "Notification sent.",
                notifications = ?ids,
                event = %first.event,
                channel = %first.channel,
                recipient = %first.recipient,
                subject = %first.subject,
            );
            *report.sent.entry(first.channel.clone()).or_default() += ids.len();
            report.failing.insert(batch.lane.clone(), false);
        }
        Err(error) => {
            let retry_at = error.retryable.then(|| {
                let attempt = u32::try_from(first.attempts).unwrap_or(u32::MAX);
                let wait = notifiers::backoff(attempt).max(error.retry_after.unwrap_or_default());
                now + i64::try_from(wait.as_secs()).unwrap_or(3600)
            });
            for id in &ids {
                store.mark_failed(*id, &error.message, retry_at).await?;
            }
            tracing::warn!(
                message = "Notification delivery failed.",
                notifications = ?ids,
                receiver = %batch.lane,
                attempts = first.attempts + 1,
                retry_at,
                error = %error.message,
            );
            *report.failed.entry(first.channel.clone()).or_default() += ids.len();
            report.failing.insert(batch.lane.clone(), true);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_links_verify_only_for_their_alert_and_action() {
        let signer = LinkSigner::new("s3cret");
        let sig = signer.sign("ack", 7);
        assert!(signer.verify("ack", 7, &sig));
        assert!(!signer.verify("ack", 8, &sig));
        assert!(!signer.verify("silence", 7, &sig));
        assert!(!LinkSigner::new("other").verify("ack", 7, &sig));
        assert!(!signer.verify("ack", 7, "zz"));
    }

    #[test]
    fn a_huge_deviation_escalates_to_critical() {
        let spec = KpiSpec::parse(
            "k",
            "source = \"s\"\nkind = \"count\"\ninterval = \"5m\"\nseverity = \"info\"",
            "SELECT 1 WHERE :start < :end",
            std::path::Path::new("m"),
        )
        .expect("valid");
        let mut v = BucketVerdict {
            ts: 0,
            reading: Reading::new(80.0, Band::new(100.0, 90.0, 110.0)),
            score: 0.99,
            volume: 80.0,
            seasonality: "none".to_owned(),
            anomaly: true,
            judged: true,
            outside: true,
            below: Some(true),
            since: Some(0),
            trigger: Some("bucket"),
        };
        assert_eq!(severity_for(&spec, &v), Severity::Info);
        v.reading.value = 0.0;
        assert_eq!(severity_for(&spec, &v), Severity::Critical);
    }
}
