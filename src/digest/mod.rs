//! The daily digest e-mail: one message per recipient per day about their KPIs, at the
//! recipient's local time.
//!
//! - [`recipients`] resolves who gets a digest (the models' `recipients` and
//!   `[[digest.recipients]]`) and when; [`due`] says whether one is due now.
//! - [`build`] reads the state store into a [`DigestData`] (ranked by impact); `render` turns
//!   it into subject, HTML, text and inline PNG charts; [`compose`] makes the MIME message.
//! - [`run_due`] queues due digests into the notification outbox (one per recipient and day,
//!   enforced by the store, so restarts and replicas never send twice); the outbox worker
//!   delivers them like alerts. A digest missed while the service was down goes out once on
//!   start, marked late.

mod chart;
pub mod data;
mod render;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use chrono::{DateTime, Duration, NaiveDate, NaiveTime, TimeZone, Utc};
use lettre::message::{header::ContentType, Attachment, Mailbox, MultiPart, SinglePart};

pub use chart::{chart_png, Error as ChartError};
pub use data::{
    ChartPoint, DigestData, DigestStatus, IncidentDigest, InlineImage, KpiDigest, NearMiss, RenderedDigest,
};
pub use render::{rank, render, Error as RenderError};

use crate::config::DigestConfig;
use crate::kpi::{Kind, KpiSpec};
use crate::reading::{known, Band, Reading};
use crate::store::Store;

/// A digest recipient with their KPIs and schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipient {
    /// E-mail address.
    pub address: String,
    /// KPI ids, sorted.
    pub kpis: Vec<String>,
    /// Local send time.
    pub time: NaiveTime,
    /// Timezone.
    pub timezone: chrono_tz::Tz,
}

fn parse_time(s: &str) -> NaiveTime {
    NaiveTime::parse_from_str(s, "%H:%M").unwrap_or(NaiveTime::MIN)
}

/// Everyone who gets a digest: each model's `recipients` get the KPIs that list them;
/// `[[digest.recipients]]` add KPIs (`"*"` = all) and set time and timezone. Recipients
/// without KPIs get nothing.
pub fn recipients(cfg: &DigestConfig, specs: &[KpiSpec]) -> Vec<Recipient> {
    let default_tz: chrono_tz::Tz = cfg.timezone.parse().unwrap_or(chrono_tz::UTC);
    let mut by_address: BTreeMap<String, Recipient> = BTreeMap::new();
    let fresh = |address: &str| Recipient {
        address: address.to_owned(),
        kpis: Vec::new(),
        time: parse_time(&cfg.time),
        timezone: default_tz,
    };
    for spec in specs {
        for r in &spec.recipients {
            by_address
                .entry(r.clone())
                .or_insert_with(|| fresh(r))
                .kpis
                .push(spec.id.to_string());
        }
    }
    for r in &cfg.recipients {
        let e = by_address
            .entry(r.address.clone())
            .or_insert_with(|| fresh(&r.address));
        for k in &r.kpis {
            if k == "*" {
                e.kpis.extend(specs.iter().map(|s| s.id.to_string()));
            } else if specs.iter().any(|s| s.id.as_str() == k) {
                e.kpis.push(k.clone());
            }
        }
        if let Some(t) = &r.time {
            e.time = parse_time(t);
        }
        if let Some(tz) = r.timezone.as_deref().and_then(|z| z.parse().ok()) {
            e.timezone = tz;
        }
    }
    by_address
        .into_values()
        .filter_map(|mut r| {
            r.kpis.sort();
            r.kpis.dedup();
            (!r.kpis.is_empty()).then_some(r)
        })
        .collect()
}

/// A send counts as late this long after its time (the scheduler ticks every few seconds).
const LATE_AFTER_MINUTES: i64 = 30;

/// The local day a digest due at `now` covers (yesterday, local), and whether it is late;
/// `None` before today's send time.
pub fn due(r: &Recipient, now: DateTime<Utc>) -> Option<(NaiveDate, bool)> {
    due_at(r, now).map(|(day, late, _)| (day, late))
}

/// [`due`], with the send time it was due at.
fn due_at(r: &Recipient, now: DateTime<Utc>) -> Option<(NaiveDate, bool, DateTime<Utc>)> {
    let local = now.with_timezone(&r.timezone);
    let today = local.date_naive();
    // On a DST gap the send time may not exist; take the first valid instant after it.
    let send_at = r
        .timezone
        .from_local_datetime(&today.and_time(r.time))
        .earliest()
        .or_else(|| {
            r.timezone
                .from_local_datetime(&(today.and_time(r.time) + Duration::hours(1)))
                .earliest()
        })?
        .with_timezone(&Utc);
    if now < send_at {
        return None;
    }
    let late = now - send_at > Duration::minutes(LATE_AFTER_MINUTES);
    Some((today.pred_opt()?, late, send_at))
}

/// UTC bounds of a local day (23 or 25 hours on DST days).
pub fn day_bounds(tz: chrono_tz::Tz, day: NaiveDate) -> Option<(i64, i64)> {
    let start = tz.from_local_datetime(&day.and_time(NaiveTime::MIN)).earliest()?;
    let end = tz
        .from_local_datetime(&day.succ_opt()?.and_time(NaiveTime::MIN))
        .earliest()?;
    Some((start.timestamp(), end.timestamp()))
}

/// Sums over the series of a KPI for one bucket or one day.
#[derive(Debug, Clone, Copy, Default)]
struct Acc {
    /// Count, numerator, or gauge sum.
    num: f64,
    /// Ratio denominator, or gauge sample count.
    den: f64,
    /// Expected (count / numerator / gauge sum).
    exp: f64,
    lo: f64,
    hi: f64,
    /// Weight of the expected sums (den for ratios, samples for gauges, 1 for counts).
    exp_n: f64,
    anomaly: bool,
}

impl Acc {
    fn add(&mut self, kind: Kind, value: f64, den: Option<f64>, e: Option<&crate::store::EvaluationRow>) {
        let weight = match kind {
            Kind::Count => 1.0,
            Kind::Ratio => den.unwrap_or(0.0),
            Kind::Gauge => 1.0,
        };
        self.num += value;
        self.den += match kind {
            Kind::Ratio => weight,
            Kind::Gauge => 1.0,
            Kind::Count => 0.0,
        };
        if let Some(e) = e {
            let band = e.reading.band;
            if let (Some(x), Some(l), Some(h)) = (known(band.expected), known(band.lower), known(band.upper))
            {
                self.exp += x * weight;
                self.lo += l * weight;
                self.hi += h * weight;
                self.exp_n += weight;
            }
            self.anomaly |= e.anomaly;
        }
    }

    /// (value, expected, lower, upper) in the KPI's units.
    fn finish(&self, kind: Kind) -> (Option<f64>, Option<f64>, Option<f64>, Option<f64>) {
        let div = |a: f64, b: f64| (b > 0.0).then(|| a / b);
        match kind {
            Kind::Count => {
                let e = (self.exp_n > 0.0).then_some(self.exp);
                (Some(self.num), e, e.map(|_| self.lo), e.map(|_| self.hi))
            }
            Kind::Ratio | Kind::Gauge => (
                div(self.num, self.den),
                div(self.exp, self.exp_n),
                div(self.lo, self.exp_n),
                div(self.hi, self.exp_n),
            ),
        }
    }
}

/// How close a judged, unflagged bucket came to its band: the share of the way from the
/// expected value to the band edge on its side (1.0 = on the edge).
fn closeness(e: &crate::store::EvaluationRow) -> Option<f64> {
    let r = e.reading;
    let (v, x, l, h) = (
        known(r.value)?,
        known(r.band.expected)?,
        known(r.band.lower)?,
        known(r.band.upper)?,
    );
    let edge = if v < x { l } else { h };
    let room = (edge - x).abs();
    (room > 0.0).then(|| (v - x).abs() / room)
}

/// Buckets at least this close to their band edge count as near-misses.
const NEAR_MISS: f64 = 0.8;

fn at(ts: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(ts, 0).unwrap_or_default()
}

/// Chart points per hour for sub-hourly KPIs, per bucket otherwise (both aligned like the
/// KPI's buckets: local hours and days in its timezone).
fn chart_slots(spec: &KpiSpec) -> crate::kpi::Buckets {
    if spec.interval.secs_i64() < 3600 {
        crate::kpi::Buckets::new(crate::kpi::Interval::HOUR, spec.timezone)
    } else {
        spec.buckets()
    }
}

/// Read one KPI's day (and the 14 days before, for the chart) from the store.
async fn kpi_digest(
    store: &Store,
    spec: &KpiSpec,
    tz: chrono_tz::Tz,
    day: NaiveDate,
    public_url: &str,
) -> anyhow::Result<KpiDigest> {
    let (d0, d1) = day_bounds(tz, day).context("day out of range")?;
    let from = d1 - 14 * 86_400;
    let week = 7 * 86_400;
    let slots = chart_slots(spec);
    let mut day_acc = Acc::default();
    let mut week_acc = Acc::default();
    let mut buckets: BTreeMap<i64, Acc> = BTreeMap::new();
    let mut near_misses = Vec::new();
    let mut any_day_obs = false;
    let all_series = store.series_of(spec.id.as_str()).await?;
    // A KPI with slices stores its total too: the day's numbers are the total's, not the sum
    // of the total and its slices; near-misses come from every series.
    let has_total = all_series.iter().any(|s| crate::slices::is_total(&s.dims));
    for series in all_series {
        let counts = !has_total || crate::slices::is_total(&series.dims);
        let evals: BTreeMap<i64, crate::store::EvaluationRow> = store
            .evaluations(series.id, from, d1)
            .await?
            .into_iter()
            .map(|e| (e.ts, e))
            .collect();
        for o in store.observations(series.id, from, d1).await? {
            let e = evals.get(&o.ts);
            let slot = slots.floor(o.ts);
            if counts {
                buckets
                    .entry(slot)
                    .or_default()
                    .add(spec.kind, o.value, o.denominator, e);
            }
            if (d0..d1).contains(&o.ts) {
                any_day_obs = true;
                if counts {
                    day_acc.add(spec.kind, o.value, o.denominator, e);
                }
                // Only deviations the KPI watches: a payment rate that rises is not a near-miss.
                let watched = |e: &&crate::store::EvaluationRow| match (
                    known(e.reading.value),
                    known(e.reading.band.expected),
                ) {
                    (Some(v), Some(x)) => spec.direction.watches(v < x),
                    _ => false,
                };
                if let Some(e) = e
                    .filter(|e| !e.anomaly && e.status == "evaluated")
                    .filter(watched)
                {
                    if let Some(c) = closeness(e).filter(|c| *c >= NEAR_MISS) {
                        near_misses.push((c, e.clone(), crate::format::series_label(&series.dims)));
                    }
                }
            }
            if counts && (d0 - week..d1 - week).contains(&o.ts) {
                week_acc.add(spec.kind, o.value, o.denominator, None);
            }
        }
    }
    let (value, expected, day_lower, day_upper) = day_acc.finish(spec.kind);
    // A day outside its band that raised no alert is not "plain ok": say so, and why.
    let note = match (value, expected, day_lower, day_upper) {
        (Some(v), Some(e), Some(l), Some(u)) if v < l || v > u => {
            let below = v < l;
            let fmt = crate::format::ValueFormat::of(spec);
            let change = fmt.change(v, e).map(|c| format!(" ({c})")).unwrap_or_default();
            let why = if spec.direction.watches(below) {
                String::new()
            } else if below {
                "; not alerted: this KPI alerts on rises only".to_owned()
            } else {
                "; not alerted: this KPI alerts on drops only".to_owned()
            };
            Some(format!(
                "The day was {} its expected band {}{change}{why}.",
                if below { "below" } else { "above" },
                fmt.band(Band::new(e, l, u))
            ))
        }
        _ => None,
    };
    let (last_week, ..) = week_acc.finish(spec.kind);
    let points = buckets
        .iter()
        .map(|(ts, acc)| {
            let (value, expected, lower, upper) = acc.finish(spec.kind);
            let nan = |x: Option<f64>| x.unwrap_or(f64::NAN);
            ChartPoint {
                ts: at(*ts),
                reading: Reading::new(nan(value), Band::new(nan(expected), nan(lower), nan(upper))),
                anomaly: acc.anomaly,
            }
        })
        .collect();
    near_misses.sort_by(|a, b| b.0.total_cmp(&a.0));
    let near_misses: Vec<NearMiss> = near_misses
        .into_iter()
        .take(5)
        .map(|(_, e, series)| NearMiss {
            series,
            ts: at(e.ts),
            reading: e.reading,
            score: e.score,
        })
        .collect();

    let mut incidents = Vec::new();
    let anomalies = store
        .anomalies(Some(spec.id.as_str()), Some(d0 - 86_400), 10_000)
        .await?;
    for alert in store.alerts_between(spec.id.as_str(), d0, d1).await? {
        if alert.kind != "anomaly" {
            continue;
        }
        let dims = match alert.series_id {
            Some(sid) => store.series_dims(sid).await?.unwrap_or_default(),
            None => String::new(),
        };
        let end = alert.resolved_ts.unwrap_or(i64::MAX);
        let during = |a: &&crate::store::AnomalyRow| a.ts >= alert.started_ts && a.ts <= end;
        let dev = |x: &crate::store::AnomalyRow| {
            ((x.reading.value - x.reading.band.expected) / x.reading.band.expected.abs().max(1e-9)).abs()
        };
        let worst_of = |dims: &dyn Fn(&str) -> bool| {
            anomalies
                .iter()
                .filter(during)
                .filter(|a| dims(&a.dims))
                .max_by(|a, b| dev(a).total_cmp(&dev(b)))
        };
        // A grouped incident (stored under the total) names the slices that were flagged.
        let grouped = has_total && crate::slices::is_total(&dims);
        let slices: std::collections::BTreeSet<String> = anomalies
            .iter()
            .filter(during)
            .filter(|a| grouped && !crate::slices::is_total(&a.dims))
            .map(|a| crate::format::series_label(&a.dims))
            .collect();
        let own = worst_of(&|d: &str| d == dims);
        let worst = own.or_else(|| worst_of(&|d: &str| grouped && !crate::slices::is_total(d)));
        let series = match (slices.len(), own.is_some()) {
            (0, _) => crate::format::series_label(&dims),
            (_, true) => format!(
                "total, with {}",
                slices.into_iter().collect::<Vec<_>>().join("; ")
            ),
            (_, false) => slices.into_iter().collect::<Vec<_>>().join("; "),
        };
        incidents.push(IncidentDigest {
            series,
            started_at: at(alert.started_ts),
            ended_at: alert.resolved_ts.map(at),
            worst_value: worst.map_or(f64::NAN, |a| a.reading.value),
            expected: worst.map_or(f64::NAN, |a| a.reading.band.expected),
            acknowledged_by: alert.acknowledged_by.clone(),
            silenced: store.alert_silenced(alert.id).await?,
        });
    }

    let row = store.kpi(spec.id.as_str()).await?;
    let data_health = match &row {
        Some(r) if matches!(r.last_status.as_deref(), Some("data_missing" | "query_error")) => Some(format!(
            "the source is failing: {}",
            r.last_error.as_deref().unwrap_or("unknown error")
        )),
        Some(r) if r.fetched_until.is_some_and(|f| f < d1) => Some(format!(
            "data only until {}: it arrived late or not at all",
            at(r.fetched_until.unwrap_or(d0)).format("%Y-%m-%d %H:%M UTC")
        )),
        None => Some("never run".to_owned()),
        _ if !any_day_obs => Some("the query returned nothing for the day".to_owned()),
        _ => None,
    };
    let day_anomaly = day_acc.anomaly;
    let status = if data_health.is_some() {
        DigestStatus::MissingData
    } else if day_anomaly || !incidents.is_empty() {
        DigestStatus::Anomalous
    } else if !near_misses.is_empty() {
        DigestStatus::NearMiss
    } else {
        DigestStatus::Ok
    };
    let deviation = match (value, expected) {
        (Some(v), Some(e)) if e.abs() > f64::EPSILON => ((v - e) / e).abs(),
        _ => 0.0,
    };
    let weight = match status {
        DigestStatus::MissingData => 3.0,
        DigestStatus::Anomalous => 2.0,
        DigestStatus::NearMiss => 1.0,
        DigestStatus::Ok => 0.0,
    };
    Ok(KpiDigest {
        id: spec.id.to_string(),
        title: spec.title.clone(),
        kind: spec.kind,
        unit: spec.unit.clone(),
        owner: spec.owner.clone(),
        status,
        value,
        expected,
        last_week,
        impact: weight * 10.0 + deviation + incidents.len() as f64,
        points,
        incidents,
        near_misses,
        data_health,
        note,
        events: day_events(store, spec, tz, (d0, d1)).await?,
        url: crate::alerting::kpi_url(public_url, spec.id.as_str(), None),
    })
}

/// Build a recipient's digest for `day` from the store.
pub async fn build(
    store: &Store,
    specs: &[KpiSpec],
    recipient: &Recipient,
    day: NaiveDate,
    now: DateTime<Utc>,
    late: bool,
    public_url: &str,
) -> anyhow::Result<DigestData> {
    let mut kpis = Vec::new();
    for id in &recipient.kpis {
        if let Some(spec) = specs.iter().find(|s| s.id.as_str() == id) {
            kpis.push(kpi_digest(store, spec, recipient.timezone, day, public_url).await?);
        }
    }
    rank(&mut kpis);
    Ok(DigestData {
        recipient: recipient.address.clone(),
        date: day,
        timezone: recipient.timezone.to_string(),
        generated_at: now,
        late,
        public_url: public_url.to_owned(),
        kpis,
    })
}

/// The events that applied to `spec` during `[d0, d1)`, as "name (local start – end)".
async fn day_events(
    store: &Store,
    spec: &KpiSpec,
    tz: chrono_tz::Tz,
    (d0, d1): (i64, i64),
) -> anyhow::Result<Vec<String>> {
    let local = |t: i64| {
        DateTime::from_timestamp(t, 0)
            .map(|t| t.with_timezone(&tz).format("%a %d %b %H:%M").to_string())
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for (_, event) in crate::calendar::stored(store).await? {
        if !event.applies_to(spec) {
            continue;
        }
        for (s, e) in event.occurrences(d0, d1) {
            out.push(format!("{} ({} – {})", event.name, local(s), local(e)));
        }
    }
    Ok(out)
}

/// The MIME message: text and HTML alternatives, the HTML with its charts inline by
/// Content-ID (shown by Gmail and Outlook without loading remote images).
pub fn compose(
    from: &Mailbox,
    to: &str,
    rendered: &RenderedDigest,
    message_id: &str,
) -> anyhow::Result<String> {
    let to: Mailbox = to.parse().with_context(|| format!("recipient {to:?}"))?;
    let mut related = MultiPart::related().singlepart(SinglePart::html(rendered.html.clone()));
    for image in &rendered.images {
        let png = ContentType::parse("image/png").context("image/png")?;
        related = related.singlepart(Attachment::new_inline(image.cid.clone()).body(image.png.clone(), png));
    }
    let message = lettre::Message::builder()
        .from(from.clone())
        .to(to)
        .subject(&rendered.subject)
        .message_id(Some(message_id.to_owned()))
        .multipart(
            MultiPart::alternative()
                .singlepart(SinglePart::plain(rendered.text.clone()))
                .multipart(related),
        )
        .context("Failed to build the digest message")?;
    String::from_utf8(message.formatted()).context("digest message is not UTF-8")
}

/// The `Message-ID` of a recipient's digest for `day`: unique, and the same if it is re-sent.
fn digest_message_id(from: &Mailbox, recipient: &str, day: NaiveDate) -> String {
    use sha2::Digest as _;
    let who = hex::encode(sha2::Sha256::digest(recipient.as_bytes()));
    format!("<kpiwatch.digest.{day}.{}@{}>", &who[..12], from.email.domain())
}

/// What [`run_due`] needs.
#[derive(Debug, Clone, Copy)]
pub struct DigestContext<'a> {
    /// The state store.
    pub store: &'a Store,
    /// Every KPI.
    pub specs: &'a [KpiSpec],
    /// Digest settings.
    pub config: &'a DigestConfig,
    /// The `From:` of digests.
    pub from: &'a Mailbox,
    /// Base URL for links.
    pub public_url: &'a str,
}

/// The first of `r`'s KPIs whose runs have not yet covered `day` (local to `r`), if any: its
/// `fetched_until` in the store (whichever process ran it) is before the start of its bucket
/// holding the day's end. Such a KPI holds the digest back while a run of it is in flight in
/// any process (its lease is held: a backfill after a start, a replica's run) or until
/// `LATE_AFTER_MINUTES` after the later of the send time and the time its last bucket of the
/// day was due; one whose last run failed does not (the digest reports its data health).
async fn catching_up(
    store: &Store,
    specs: &[KpiSpec],
    r: &Recipient,
    day: NaiveDate,
    (now, send_at): (i64, i64),
) -> anyhow::Result<Option<String>> {
    let Some((_, day_end)) = day_bounds(r.timezone, day) else {
        return Ok(None);
    };
    // One read of every KPI's progress, not one per KPI.
    let rows: std::collections::HashMap<String, crate::store::KpiRow> = store
        .kpis()
        .await?
        .into_iter()
        .map(|row| (row.id.clone(), row))
        .collect();
    for spec in specs
        .iter()
        .filter(|s| r.kpis.binary_search_by(|k| k.as_str().cmp(s.id.as_str())).is_ok())
    {
        let needed = spec.buckets().floor(day_end);
        let behind = match rows.get(spec.id.as_str()) {
            None => true,
            Some(row) => {
                let failing = row.last_status.as_deref().is_some_and(|s| s != "ok");
                !failing && row.fetched_until.unwrap_or(i64::MIN) < needed
            }
        };
        if !behind {
            continue;
        }
        let due = send_at.max(needed + spec.delay.as_secs() as i64);
        if now <= due + LATE_AFTER_MINUTES * 60 || store.lease_held(&spec.id.run_lease()).await? {
            return Ok(Some(spec.id.to_string()));
        }
    }
    Ok(None)
}

/// Queue every digest due at `now` that was not queued before; returns how many.
pub async fn run_due(cx: DigestContext<'_>, now: DateTime<Utc>) -> anyhow::Result<usize> {
    if !cx.config.enabled {
        return Ok(0);
    }
    // When this state store first ran digests: a digest whose send time came before that was
    // not missed because kpiwatch was down, so it is not late (a brand-new install).
    let first_run: i64 = cx
        .store
        .meta_get_or_init("digest_first_run", || now.timestamp().to_string())
        .await?
        .parse()
        .unwrap_or(i64::MIN);
    let mut queued = 0;
    for r in recipients(cx.config, cx.specs) {
        let Some((day, late, send_at)) = due_at(&r, now) else {
            continue;
        };
        let late = late && send_at.timestamp() >= first_run;
        let event = format!("digest:{day}");
        if cx.store.digest_queued(&r.address, &event).await? {
            continue;
        }
        let times = (now.timestamp(), send_at.timestamp());
        if let Some(kpi) = catching_up(cx.store, cx.specs, &r, day, times).await? {
            tracing::debug!(message = "Daily digest waits for a KPI's runs.", recipient = %r.address, %day, %kpi);
            continue;
        }
        let data = build(cx.store, cx.specs, &r, day, now, late, cx.public_url).await?;
        if data.kpis.is_empty() {
            continue;
        }
        let rendered = render(&data).context("Failed to render the digest")?;
        let eml = compose(
            cx.from,
            &r.address,
            &rendered,
            &digest_message_id(cx.from, &r.address, day),
        )?;
        if cx
            .store
            .queue_digest(&r.address, &event, &rendered.subject, &eml, now.timestamp())
            .await?
        {
            tracing::info!(message = "Daily digest queued.", recipient = %r.address, %day, late, kpis = data.kpis.len());
            queued += 1;
        }
    }
    Ok(queued)
}

/// Render a digest to `out` (HTML) with its charts as PNG files beside it, for review.
pub async fn preview(
    cx: DigestContext<'_>,
    recipient: Option<&str>,
    day: Option<NaiveDate>,
    now: DateTime<Utc>,
    out: &Path,
) -> anyhow::Result<RenderedDigest> {
    let all = recipients(cx.config, cx.specs);
    let r = match recipient {
        Some(address) => all
            .into_iter()
            .find(|r| r.address == address)
            .with_context(|| format!("{address:?} gets no digest (no KPIs list it)"))?,
        None => Recipient {
            address: "preview@localhost".to_owned(),
            kpis: cx.specs.iter().map(|s| s.id.to_string()).collect(),
            time: parse_time(&cx.config.time),
            timezone: cx.config.timezone.parse().unwrap_or(chrono_tz::UTC),
        },
    };
    let day = day.unwrap_or_else(|| {
        now.with_timezone(&r.timezone)
            .date_naive()
            .pred_opt()
            .unwrap_or_default()
    });
    let data = build(cx.store, cx.specs, &r, day, now, false, cx.public_url).await?;
    let rendered = render(&data).context("Failed to render the digest")?;
    let mut html = rendered.html.clone();
    let dir = out.parent().unwrap_or_else(|| Path::new("."));
    let stem = out.file_stem().and_then(|s| s.to_str()).unwrap_or("digest");
    for image in &rendered.images {
        let name = format!("{stem}-{}.png", image.cid);
        std::fs::write(dir.join(&name), &image.png).with_context(|| format!("Failed to write {name}"))?;
        html = html.replace(&format!("cid:{}", image.cid), &name);
    }
    std::fs::write(out, html).with_context(|| format!("Failed to write {}", out.display()))?;
    Ok(rendered)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipient(tz: chrono_tz::Tz, time: &str) -> Recipient {
        Recipient {
            address: "a@example.com".to_owned(),
            kpis: vec!["orders".to_owned()],
            time: parse_time(time),
            timezone: tz,
        }
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("valid")
            .with_timezone(&Utc)
    }

    #[test]
    fn a_digest_is_due_at_the_recipients_local_time_across_dst() {
        let r = recipient(chrono_tz::Europe::Berlin, "08:00");
        // Winter (UTC+1): 08:00 Berlin = 07:00 UTC.
        assert_eq!(due(&r, utc("2026-03-27T06:59:00Z")), None);
        let (day, late) = due(&r, utc("2026-03-27T07:00:00Z")).expect("due");
        assert_eq!(day.to_string(), "2026-03-26");
        assert!(!late);
        // Summer (UTC+2) after the switch on 2026-03-29: 08:00 Berlin = 06:00 UTC.
        assert!(due(&r, utc("2026-03-30T06:00:00Z")).is_some());
        assert_eq!(due(&r, utc("2026-03-30T05:59:00Z")), None);
        // Hours later it is still due, and late.
        assert_eq!(due(&r, utc("2026-03-30T12:00:00Z")).map(|d| d.1), Some(true));
    }

    #[test]
    fn a_dst_day_has_23_hours_in_its_zone() {
        let (a, b) = day_bounds(
            chrono_tz::Europe::Berlin,
            NaiveDate::from_ymd_opt(2026, 3, 29).expect("date"),
        )
        .expect("bounds");
        assert_eq!(b - a, 23 * 3600);
        let (a, b) = day_bounds(
            chrono_tz::UTC,
            NaiveDate::from_ymd_opt(2026, 3, 29).expect("date"),
        )
        .expect("bounds");
        assert_eq!(b - a, 24 * 3600);
    }

    #[test]
    fn recipients_come_from_models_and_config_and_need_kpis() {
        let spec = |id: &str, to: &str| {
            KpiSpec::parse(
                id,
                &format!("source = \"s\"\nkind = \"count\"\ninterval = \"1h\"\nrecipients = [\"{to}\"]"),
                "SELECT 1 WHERE :start < :end",
                Path::new("m"),
            )
            .expect("valid")
        };
        let specs = vec![
            spec("orders", "ops@example.com"),
            spec("signups", "growth@example.com"),
        ];
        let cfg: DigestConfig = toml::from_str(
            "time = \"07:00\"\n[[recipients]]\naddress = \"cfo@example.com\"\nkpis = [\"*\"]\ntimezone = \"America/New_York\"\n\
             [[recipients]]\naddress = \"nobody@example.com\"\nkpis = [\"no_such_kpi\"]",
        )
        .expect("config");
        let all = recipients(&cfg, &specs);
        let addresses: Vec<&str> = all.iter().map(|r| r.address.as_str()).collect();
        assert_eq!(
            addresses,
            vec!["cfo@example.com", "growth@example.com", "ops@example.com"]
        );
        assert_eq!(all[0].kpis, vec!["orders", "signups"]);
        assert_eq!(all[0].timezone, chrono_tz::America::New_York);
        assert_eq!(all[2].kpis, vec!["orders"]);
        assert_eq!(all[2].time, parse_time("07:00"));
    }
}
