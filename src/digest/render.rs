//! Renders a [`DigestData`] into the daily digest e-mail: subject, HTML part, plain-text part and
//! the inline PNG charts the HTML references by Content-ID. Pure: no IO (sending is
//! `alerting`'s job, building the data is `digest::build`'s).
//!
//! All numbers and times are formatted here, in Rust, into small private view structs; the two
//! `minijinja` templates next to this file (`digest.html`, autoescaped, and `digest.txt`) only
//! lay them out, so both parts always say the same thing. The HTML is e-mail-safe: tables and
//! inline styles only, no external CSS, no scripts, no remote images (charts are `cid:` parts),
//! so it reads the same in Gmail and Outlook.

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};
use serde::Serialize;

use super::chart;
use super::data::{
    DigestData, DigestStatus, IncidentDigest, InlineImage, KpiDigest, NearMiss, RenderedDigest,
};
use crate::format::ValueFormat;
#[cfg(test)]
use crate::kpi::Kind;
use crate::reading::known;

/// Why a digest could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The recipient has no KPIs: such a recipient gets no e-mail at all, so the caller should
    /// skip them instead of rendering.
    #[error("the digest for {recipient} has no KPIs: nothing to send")]
    NoKpis {
        /// The recipient.
        recipient: String,
    },
    /// A template failed to compile or render (a bug in the templates, caught by the tests).
    #[error("failed to render the digest template")]
    Template(#[from] minijinja::Error),
}

/// Result alias for this module.
type Result<T, E = Error> = std::result::Result<T, E>;

/// Displayed chart size in CSS pixels; the PNG is drawn at twice that for sharp high-DPI screens.
const CHART_WIDTH: u32 = 560;
/// See [`CHART_WIDTH`].
const CHART_HEIGHT: u32 = 120;
const CHART_SCALE: u32 = 2;
/// Near-misses listed per KPI; the rest are counted.
const MAX_NEAR_MISSES: usize = 5;

const HTML_TEMPLATE: &str = include_str!("digest.html");
const TEXT_TEMPLATE: &str = include_str!("digest.txt");

/// Sorts KPIs most urgent first: by status (missing data, anomalous, near-miss, ok), then by
/// `impact` descending (NaN last), then by title.
pub fn rank(kpis: &mut [KpiDigest]) {
    kpis.sort_by(|a, b| {
        a.status
            .cmp(&b.status)
            .then_with(|| impact_key(b.impact).total_cmp(&impact_key(a.impact)))
            .then_with(|| a.title.cmp(&b.title))
            .then_with(|| a.id.cmp(&b.id))
    });
}

fn impact_key(impact: f64) -> f64 {
    if impact.is_nan() {
        f64::NEG_INFINITY
    } else {
        impact
    }
}

/// Renders one recipient's digest. The KPIs are shown in the order given (see [`rank`]).
///
/// A chart that fails to draw is logged and left out (the numbers are still in the HTML); a
/// KPI without any finite value gets no chart.
pub fn render(data: &DigestData) -> Result<RenderedDigest> {
    if data.kpis.is_empty() {
        return Err(Error::NoKpis {
            recipient: data.recipient.clone(),
        });
    }
    let tz: Tz = data.timezone.parse().unwrap_or_else(|_| {
        tracing::warn!(message = "Unknown digest timezone, using UTC.", timezone = %data.timezone);
        Tz::UTC
    });
    let fmt = Formatter {
        tz,
        day: data.date,
        now: data.generated_at,
    };

    let mut images: Vec<InlineImage> = Vec::new();
    let mut kpis = Vec::with_capacity(data.kpis.len());
    for kpi in &data.kpis {
        let chart = chart_for(kpi, &fmt).and_then(|mut view| {
            // Sanitising ids can make two Content-IDs equal (`a/b`, `a-b`): keep them unique.
            let base = view.cid.clone();
            let mut n = 1;
            while images.iter().any(|i| i.cid == view.cid) {
                n += 1;
                view.cid = format!("{base}-{n}");
            }
            match chart::chart_png(kpi, CHART_WIDTH * CHART_SCALE, CHART_HEIGHT * CHART_SCALE) {
                Ok(png) => {
                    images.push(InlineImage {
                        cid: view.cid.clone(),
                        png,
                    });
                    Some(view)
                }
                Err(error) => {
                    tracing::warn!(message = "Digest chart failed.", kpi = %kpi.id, %error);
                    None
                }
            }
        });
        kpis.push(kpi_view(kpi, &fmt, &data.public_url, chart));
    }

    let summary = summary(&data.kpis);
    let subject = format!(
        "{}kpiwatch daily digest for {}: {summary}",
        if data.late { "[LATE] " } else { "" },
        data.date.format("%Y-%m-%d"),
    );
    let view = DigestView {
        subject: &subject,
        date: data.date.format("%Y-%m-%d").to_string(),
        date_long: data.date.format("%A, %-d %B %Y").to_string(),
        summary: &summary,
        counts: counts(&data.kpis),
        late: data.late,
        generated: fmt.datetime(data.generated_at),
        recipient: &data.recipient,
        timezone: tz.name(),
        home_url: join_url(&data.public_url, ""),
        home_href: href(&join_url(&data.public_url, "")),
        kpis,
    };

    let env = environment()?;
    let html = env.get_template("digest.html")?.render(&view)?;
    let text = env.get_template("digest.txt")?.render(&view)?;
    Ok(RenderedDigest {
        subject,
        html,
        text,
        images,
    })
}

fn environment() -> Result<Environment<'static>> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(true);
    env.set_auto_escape_callback(|name| {
        if name.ends_with(".html") {
            AutoEscape::Html
        } else {
            AutoEscape::None
        }
    });
    env.add_template("digest.html", HTML_TEMPLATE)?;
    env.add_template("digest.txt", TEXT_TEMPLATE)?;
    Ok(env)
}

// The view structs below are private template contexts, not a wire format: they derive
// `Serialize` only because that is how minijinja reads them.

#[derive(Debug, Serialize)]
struct DigestView<'a> {
    subject: &'a str,
    date: String,
    date_long: String,
    summary: &'a str,
    counts: Vec<CountView>,
    late: bool,
    generated: String,
    recipient: &'a str,
    timezone: &'a str,
    home_url: String,
    /// `home_url` escaped for an HTML attribute (see [`href`]).
    home_href: Value,
    kpis: Vec<KpiView>,
}

#[derive(Debug, Serialize)]
struct CountView {
    text: String,
    color: &'static str,
    background: &'static str,
}

#[derive(Debug, Serialize)]
struct KpiView {
    id: String,
    title: String,
    kind: String,
    owner: Option<String>,
    status: &'static str,
    color: &'static str,
    background: &'static str,
    value: String,
    expected: String,
    expected_delta: Option<String>,
    last_week: String,
    last_week_delta: Option<String>,
    /// Both deltas in words, for the text part: `-2.0% vs expected, +1.1% vs last week`.
    deltas: Option<String>,
    chart: Option<ChartView>,
    incidents: Vec<IncidentView>,
    near_misses: Vec<String>,
    near_misses_more: usize,
    data_health: Option<String>,
    url: String,
    href: Value,
    /// A day outside its band that did not alert (e.g. a rise on a KPI that watches drops).
    note: Option<String>,
    /// Events and holidays during the day.
    events: Vec<String>,
}

#[derive(Debug, Serialize)]
struct ChartView {
    cid: String,
    width: u32,
    height: u32,
    alt: String,
    /// Value axis: the values at the top, middle and bottom grid lines.
    y_top: String,
    y_mid: String,
    y_bottom: String,
    /// Time axis: the dates of the first, middle and last points.
    x_first: String,
    x_mid: String,
    x_last: String,
}

#[derive(Debug, Serialize)]
struct IncidentView {
    series: Option<String>,
    when: String,
    duration: String,
    open: bool,
    size: String,
    handling: String,
    handled: bool,
}

/// Badge text colour and background per status.
fn colors(status: DigestStatus) -> (&'static str, &'static str) {
    match status {
        DigestStatus::MissingData => ("#374151", "#e5e7eb"),
        DigestStatus::Anomalous => ("#991b1b", "#fee2e2"),
        DigestStatus::NearMiss => ("#92400e", "#fef3c7"),
        DigestStatus::Ok => ("#166534", "#dcfce7"),
    }
}

/// Subject and summary order: what needs attention first.
const SUMMARY_ORDER: [DigestStatus; 4] = [
    DigestStatus::Anomalous,
    DigestStatus::MissingData,
    DigestStatus::NearMiss,
    DigestStatus::Ok,
];

fn count_phrase(status: DigestStatus, n: usize) -> String {
    match status {
        DigestStatus::NearMiss if n != 1 => format!("{n} near-misses"),
        other => format!("{n} {}", other.label()),
    }
}

fn status_counts(kpis: &[KpiDigest]) -> impl Iterator<Item = (DigestStatus, usize)> + '_ {
    SUMMARY_ORDER
        .into_iter()
        .map(|s| (s, kpis.iter().filter(|k| k.status == s).count()))
        .filter(|&(_, n)| n > 0)
}

/// `2 anomalous, 1 missing data, 9 ok` (zero counts left out).
fn summary(kpis: &[KpiDigest]) -> String {
    status_counts(kpis)
        .map(|(s, n)| count_phrase(s, n))
        .collect::<Vec<_>>()
        .join(", ")
}

fn counts(kpis: &[KpiDigest]) -> Vec<CountView> {
    status_counts(kpis)
        .map(|(s, n)| {
            let (color, background) = colors(s);
            CountView {
                text: count_phrase(s, n),
                color,
                background,
            }
        })
        .collect()
}

fn chart_for(kpi: &KpiDigest, fmt: &Formatter) -> Option<ChartView> {
    if !kpi.points.iter().any(|p| p.reading.value.is_finite()) {
        return None;
    }
    let anomalies = kpi.points.iter().filter(|p| p.anomaly).count();
    let days = match (kpi.points.first(), kpi.points.last()) {
        (Some(first), Some(last)) => (last.ts - first.ts).num_days() + 1,
        _ => 0,
    };
    let mut alt = format!("{} over the last {days} days", kpi.title);
    match anomalies {
        0 => alt.push_str(", no anomalies"),
        1 => alt.push_str(", 1 anomaly"),
        n => alt.push_str(&format!(", {n} anomalies")),
    }
    if let Some(last) = kpi.points.last() {
        alt.push_str(&format!(
            "; latest {} vs {} expected ({})",
            fmt_value(vf(kpi), known(last.reading.value)),
            fmt_value(vf(kpi), last.reading.band.expected()),
            fmt.time(last.ts),
        ));
    }
    let (lo, hi) = super::chart::axis_range(kpi);
    let date = |i: usize| {
        kpi.points
            .get(i)
            .map(|p| p.ts.with_timezone(&fmt.tz).format("%b %-d").to_string())
            .unwrap_or_default()
    };
    let n = kpi.points.len();
    Some(ChartView {
        cid: cid_for(&kpi.id),
        width: CHART_WIDTH,
        height: CHART_HEIGHT,
        alt,
        y_top: vf(kpi).value(hi),
        y_mid: vf(kpi).value((lo + hi) / 2.0),
        y_bottom: vf(kpi).value(lo),
        x_first: date(0),
        x_mid: date(n / 2),
        x_last: date(n.saturating_sub(1)),
    })
}

/// `chart-<kpi id>`, with anything but `[A-Za-z0-9._-]` replaced so it is a valid Content-ID.
fn cid_for(id: &str) -> String {
    let safe: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("chart-{safe}")
}

fn kpi_view(kpi: &KpiDigest, fmt: &Formatter, public_url: &str, chart: Option<ChartView>) -> KpiView {
    let (color, background) = colors(kpi.status);
    let (near_misses, near_misses_more) = near_miss_lines(kpi, fmt);
    let expected_delta = fmt_change(vf(kpi), kpi.value, kpi.expected);
    let last_week_delta = fmt_change(vf(kpi), kpi.value, kpi.last_week);
    let deltas = [(&expected_delta, "expected"), (&last_week_delta, "last week")]
        .into_iter()
        .filter_map(|(d, what)| Some(format!("{} vs {what}", d.as_deref()?)))
        .collect::<Vec<_>>();
    KpiView {
        id: kpi.id.clone(),
        title: kpi.title.clone(),
        kind: kpi.kind.to_string(),
        owner: kpi.owner.clone().filter(|o| !o.trim().is_empty()),
        status: kpi.status.label(),
        color,
        background,
        value: fmt_value(vf(kpi), kpi.value),
        expected: fmt_value(vf(kpi), kpi.expected),
        expected_delta,
        last_week: fmt_value(vf(kpi), kpi.last_week),
        last_week_delta,
        deltas: Some(deltas.join(", ")).filter(|d| !d.is_empty()),
        chart,
        incidents: kpi
            .incidents
            .iter()
            .map(|i| incident_view(vf(kpi), i, fmt))
            .collect(),
        near_misses,
        near_misses_more,
        data_health: kpi.data_health.clone().filter(|h| !h.trim().is_empty()),
        url: join_url(public_url, &kpi.url),
        href: href(&join_url(public_url, &kpi.url)),
        note: kpi.note.clone(),
        events: kpi.events.clone(),
    }
}

fn incident_view(kind: ValueFormat<'_>, incident: &IncidentDigest, fmt: &Formatter) -> IncidentView {
    let (duration, open) = match incident.ended_at {
        Some(end) => (fmt_duration(end - incident.started_at), false),
        None => (
            format!(
                "still open ({} so far)",
                fmt_duration(fmt.now - incident.started_at)
            ),
            true,
        ),
    };
    let mut size = format!(
        "worst {} vs {} expected",
        fmt_value(kind, Some(incident.worst_value)),
        fmt_value(kind, Some(incident.expected))
    );
    if let Some(change) = fmt_change(kind, Some(incident.worst_value), Some(incident.expected)) {
        size.push_str(&format!(" ({change})"));
    }
    let mut handling = Vec::new();
    if let Some(who) = incident
        .acknowledged_by
        .as_deref()
        .filter(|w| !w.trim().is_empty())
    {
        handling.push(format!("acknowledged by {who}"));
    }
    if incident.silenced {
        handling.push("silenced".to_owned());
    }
    let handled = !handling.is_empty();
    IncidentView {
        series: Some(incident.series.clone()).filter(|s| !s.trim().is_empty()),
        when: fmt.time(incident.started_at),
        duration,
        open,
        size,
        handling: if handled {
            handling.join(", ")
        } else {
            "not acknowledged".to_owned()
        },
        handled,
    }
}

/// The closest near-misses (highest score), listed in time order, and how many were left out.
fn near_miss_lines(kpi: &KpiDigest, fmt: &Formatter) -> (Vec<String>, usize) {
    let mut closest: Vec<&NearMiss> = kpi.near_misses.iter().collect();
    closest.sort_by(|a, b| b.score.total_cmp(&a.score));
    let more = closest.len().saturating_sub(MAX_NEAR_MISSES);
    closest.truncate(MAX_NEAR_MISSES);
    closest.sort_by_key(|m| m.ts);
    let lines = closest
        .into_iter()
        .map(|m| {
            // No raw score: how close it came, in words people can check against the band.
            let slice = if m.series.is_empty() {
                String::new()
            } else {
                format!(" [{}]", m.series)
            };
            let mut line = format!(
                "{}{slice}: {} vs {} expected",
                fmt.time(m.ts),
                fmt_value(vf(kpi), Some(m.reading.value)),
                fmt_value(vf(kpi), Some(m.reading.band.expected))
            );
            if let Some(change) = fmt_change(vf(kpi), Some(m.reading.value), Some(m.reading.band.expected)) {
                line.push_str(&format!(" ({change})"));
            }
            if m.reading.band.has_edges() {
                line.push_str(&format!(
                    ", just inside the band {}",
                    vf(kpi).band(m.reading.band)
                ));
            }
            line
        })
        .collect();
    (lines, more)
}

/// Times in the recipient's timezone; the digest's own day shows only the clock.
struct Formatter {
    tz: Tz,
    day: NaiveDate,
    now: DateTime<Utc>,
}

impl Formatter {
    fn time(&self, ts: DateTime<Utc>) -> String {
        let local = ts.with_timezone(&self.tz);
        if local.date_naive() == self.day {
            local.format("%H:%M").to_string()
        } else {
            local.format("%b %-d %H:%M").to_string()
        }
    }

    fn datetime(&self, ts: DateTime<Utc>) -> String {
        ts.with_timezone(&self.tz).format("%Y-%m-%d %H:%M %Z").to_string()
    }
}

/// How a KPI's values read (`format::ValueFormat`: ratios in %, their differences in points,
/// separators, the model's unit).
fn vf(kpi: &KpiDigest) -> ValueFormat<'_> {
    ValueFormat {
        kind: kpi.kind,
        unit: kpi.unit.as_deref(),
    }
}

/// A value, `no data` when absent.
fn fmt_value(f: ValueFormat<'_>, value: Option<f64>) -> String {
    f.maybe(value)
}

/// `value` against `base`: ratios in points, others relative; `None` when undefined.
fn fmt_change(f: ValueFormat<'_>, value: Option<f64>, base: Option<f64>) -> Option<String> {
    f.change(value?, base?)
}

fn fmt_duration(d: chrono::TimeDelta) -> String {
    let minutes = d.num_minutes().max(0);
    let (days, hours, mins) = (minutes / 1440, minutes / 60 % 24, minutes % 60);
    match (days, hours) {
        (0, 0) => format!("{mins} min"),
        (0, _) if mins == 0 => format!("{hours} h"),
        (0, _) => format!("{hours} h {mins} min"),
        (_, 0) => format!("{days} d"),
        _ => format!("{days} d {hours} h"),
    }
}

/// A URL escaped for a double-quoted HTML attribute and marked safe, so the template does not
/// escape it again: minijinja's HTML escaping also turns `/` into `&#x2f;`, which is valid but
/// makes links unreadable in the source and trips some link scanners.
fn href(url: &str) -> Value {
    let mut out = String::with_capacity(url.len());
    for c in url.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    Value::from_safe_string(out)
}

/// `url` as is when absolute (http or https), else joined onto the service's public base URL.
fn join_url(base: &str, url: &str) -> String {
    if url.starts_with("https://") || url.starts_with("http://") {
        return url.to_owned();
    }
    format!("{}/{}", base.trim_end_matches('/'), url.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone};

    use super::super::data::ChartPoint;
    use super::*;
    use crate::reading::{Band, Reading};

    fn day() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 23).unwrap()
    }

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, h, m, 0).unwrap()
    }

    fn kpi(id: &str, kind: Kind, status: DigestStatus, impact: f64) -> KpiDigest {
        let base = match kind {
            Kind::Ratio => 0.99,
            Kind::Count => 12_400.0,
            Kind::Gauge => 42.5,
        };
        KpiDigest {
            id: id.to_owned(),
            title: format!("Title of {id}"),
            kind,
            unit: None,
            owner: Some("ops@example.com".into()),
            status,
            value: Some(base * 0.98),
            expected: Some(base),
            last_week: Some(base * 1.01),
            impact,
            points: (0..14)
                .map(|d| ChartPoint {
                    ts: at(0, 0) - Duration::days(13 - d),
                    reading: Reading::new(
                        base * (1.0 + 0.01 * (d as f64).sin()),
                        Band::new(base, base * 0.95, base * 1.05),
                    ),
                    anomaly: d == 13 && status == DigestStatus::Anomalous,
                })
                .collect(),
            incidents: vec![],
            near_misses: vec![],
            data_health: None,
            note: None,
            events: vec![],
            url: format!("/kpis/{id}"),
        }
    }

    fn digest(kpis: Vec<KpiDigest>) -> DigestData {
        DigestData {
            recipient: "boss@example.com".into(),
            date: day(),
            timezone: "Europe/Berlin".into(),
            generated_at: Utc.with_ymd_and_hms(2026, 11, 24, 6, 0, 0).unwrap(),
            late: false,
            public_url: "https://kpiwatch.example.com/".into(),
            kpis,
        }
    }

    #[test]
    fn rank_puts_missing_data_first_then_anomalous_near_miss_ok_and_bigger_impact_first() {
        let mut kpis = vec![
            kpi("ok-big", Kind::Count, DigestStatus::Ok, 9.0),
            kpi("anom-small", Kind::Count, DigestStatus::Anomalous, 1.0),
            kpi("near", Kind::Count, DigestStatus::NearMiss, 5.0),
            kpi("anom-big", Kind::Count, DigestStatus::Anomalous, 3.0),
            kpi("missing", Kind::Count, DigestStatus::MissingData, 0.0),
            kpi("anom-nan", Kind::Count, DigestStatus::Anomalous, f64::NAN),
            kpi("ok-b", Kind::Count, DigestStatus::Ok, 1.0),
            kpi("ok-a", Kind::Count, DigestStatus::Ok, 1.0),
        ];
        rank(&mut kpis);
        let ids: Vec<&str> = kpis.iter().map(|k| k.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "missing",
                "anom-big",
                "anom-small",
                "anom-nan",
                "near",
                "ok-big",
                "ok-a",
                "ok-b"
            ]
        );
    }

    #[test]
    fn the_subject_counts_each_status_and_leaves_out_zeros() {
        let mut kpis = vec![
            kpi("a", Kind::Count, DigestStatus::Anomalous, 1.0),
            kpi("b", Kind::Ratio, DigestStatus::Anomalous, 1.0),
            kpi("c", Kind::Count, DigestStatus::MissingData, 1.0),
        ];
        kpis.extend((0..9).map(|i| kpi(&format!("ok{i}"), Kind::Gauge, DigestStatus::Ok, 0.0)));
        let out = render(&digest(kpis.clone())).unwrap();
        assert_eq!(
            out.subject,
            "kpiwatch daily digest for 2026-11-23: 2 anomalous, 1 missing data, 9 ok"
        );

        kpis.push(kpi("n1", Kind::Count, DigestStatus::NearMiss, 0.0));
        kpis.push(kpi("n2", Kind::Count, DigestStatus::NearMiss, 0.0));
        let out = render(&digest(kpis)).unwrap();
        assert_eq!(
            out.subject,
            "kpiwatch daily digest for 2026-11-23: 2 anomalous, 1 missing data, 2 near-misses, 9 ok"
        );
    }

    #[test]
    fn a_late_digest_says_so_in_the_subject_and_both_parts() {
        let mut data = digest(vec![kpi("a", Kind::Count, DigestStatus::Ok, 0.0)]);
        let on_time = render(&data).unwrap();
        assert!(!on_time.subject.contains("LATE"));
        assert!(!on_time.html.contains("This digest is late"));
        assert!(!on_time.text.contains("This digest is late"));

        data.late = true;
        let late = render(&data).unwrap();
        assert_eq!(late.subject, "[LATE] kpiwatch daily digest for 2026-11-23: 1 ok");
        assert!(late.html.contains("This digest is late"));
        assert!(late.text.contains("This digest is late"));
    }

    #[test]
    fn a_hostile_title_is_escaped_in_the_html_and_kept_in_the_text() {
        let mut k = kpi("x", Kind::Count, DigestStatus::Anomalous, 1.0);
        k.title = "<script>alert('x')</script> & \"friends\"".into();
        k.data_health = Some("<img src=http://evil>".into());
        k.url = "/kpis/x\"onmouseover=\"alert(1)".into();
        let out = render(&digest(vec![k])).unwrap();
        assert!(!out.html.contains("\"onmouseover"));
        assert!(!out.html.contains("<script"), "{}", out.html);
        assert!(!out.html.contains("<img src=http"));
        assert!(out.html.contains("&lt;script&gt;"));
        assert!(out.text.contains("<script>alert('x')</script> & \"friends\""));
    }

    #[test]
    fn the_html_has_no_scripts_stylesheets_or_remote_images() {
        let out = render(&digest(vec![kpi("a", Kind::Count, DigestStatus::Anomalous, 1.0)])).unwrap();
        let lower = out.html.to_lowercase();
        for banned in ["<script", "<link", "<style", "src=\"http", "src='http", "url("] {
            assert!(!lower.contains(banned), "found {banned}");
        }
    }

    #[test]
    fn every_kpi_appears_in_the_given_order_in_both_parts() {
        let kpis = vec![
            kpi("zeta", Kind::Count, DigestStatus::MissingData, 0.0),
            kpi("alpha", Kind::Ratio, DigestStatus::Anomalous, 3.0),
            kpi("mid", Kind::Gauge, DigestStatus::NearMiss, 2.0),
            kpi("beta", Kind::Count, DigestStatus::Ok, 1.0),
        ];
        let out = render(&digest(kpis.clone())).unwrap();
        for part in [&out.html, &out.text] {
            let positions: Vec<usize> = kpis
                .iter()
                .map(|k| {
                    part.find(&k.title)
                        .unwrap_or_else(|| panic!("{} missing", k.title))
                })
                .collect();
            assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
            for k in &kpis {
                assert!(part.contains(&format!("https://kpiwatch.example.com/kpis/{}", k.id)));
            }
        }
    }

    #[test]
    fn the_cid_references_match_the_images() {
        let mut empty = kpi("no-points", Kind::Count, DigestStatus::MissingData, 0.0);
        empty.points.clear();
        let kpis = vec![
            kpi("a", Kind::Count, DigestStatus::Anomalous, 1.0),
            empty,
            kpi("b/odd id", Kind::Ratio, DigestStatus::Ok, 0.0),
        ];
        let out = render(&digest(kpis)).unwrap();
        let referenced: Vec<&str> = out
            .html
            .match_indices("src=\"cid:")
            .map(|(i, m)| {
                let rest = &out.html[i + m.len()..];
                &rest[..rest.find('"').unwrap()]
            })
            .collect();
        let cids: Vec<&str> = out.images.iter().map(|i| i.cid.as_str()).collect();
        assert_eq!(referenced, cids);
        assert_eq!(cids, ["chart-a", "chart-b-odd-id"]);
        for image in &out.images {
            assert_eq!(&image.png[..8], b"\x89PNG\r\n\x1a\n");
        }
        let img_tag = &out.html[out.html.find("<img").unwrap()..];
        let img_tag = &img_tag[..img_tag.find('>').unwrap()];
        assert!(
            img_tag.contains("width=\"560\"") && img_tag.contains("height=\"120\""),
            "{img_tag}"
        );
        assert!(
            img_tag.contains("alt=\"Title of a over the last 14 days, 1 anomaly"),
            "{img_tag}"
        );
    }

    #[test]
    fn ratios_are_percentages_counts_have_separators_and_gauges_two_decimals() {
        let mut ratio = kpi("r", Kind::Ratio, DigestStatus::Anomalous, 1.0);
        ratio.value = Some(0.971_234);
        ratio.expected = Some(0.991);
        let mut count = kpi("c", Kind::Count, DigestStatus::Ok, 0.0);
        count.value = Some(1_234_567.4);
        let mut gauge = kpi("g", Kind::Gauge, DigestStatus::Ok, 0.0);
        gauge.value = Some(7.254_9);
        let out = render(&digest(vec![ratio, count, gauge])).unwrap();
        for part in [&out.html, &out.text] {
            assert!(part.contains("97.12%"), "{part}");
            assert!(part.contains("99.10%"));
            assert!(
                part.contains("-2.0 points"),
                "a ratio's difference is in points: {part}"
            );
            assert!(part.contains("1,234,567"));
            assert!(part.contains("7.25"));
        }
        let f = |kind| ValueFormat { kind, unit: None };
        assert_eq!(fmt_value(f(Kind::Gauge), Some(1234.5)), "1,234.50");
        assert_eq!(fmt_value(f(Kind::Count), Some(-12_345.0)), "-12,345");
        assert_eq!(fmt_value(f(Kind::Count), Some(999.0)), "999");
        assert_eq!(fmt_value(f(Kind::Ratio), None), "no data");
        assert_eq!(fmt_value(f(Kind::Ratio), Some(f64::NAN)), "no data");
        assert_eq!(
            fmt_change(f(Kind::Count), Some(110.0), Some(100.0)).as_deref(),
            Some("+10.0%")
        );
        assert_eq!(
            fmt_change(f(Kind::Ratio), Some(0.97), Some(0.99)).as_deref(),
            Some("-2.0 points")
        );
        assert_eq!(fmt_change(f(Kind::Count), Some(1.0), Some(0.0)), None);
    }

    #[test]
    fn incidents_near_misses_and_data_health_are_in_both_parts() {
        let mut k = kpi("pay", Kind::Ratio, DigestStatus::Anomalous, 1.0);
        k.incidents = vec![
            IncidentDigest {
                series: "country=DE".into(),
                started_at: at(8, 10),
                ended_at: Some(at(9, 35)),
                worst_value: 0.81,
                expected: 0.99,
                acknowledged_by: Some("alice".into()),
                silenced: false,
            },
            IncidentDigest {
                series: String::new(),
                started_at: at(21, 0),
                ended_at: None,
                worst_value: 0.9,
                expected: 0.99,
                acknowledged_by: None,
                silenced: true,
            },
        ];
        k.near_misses = vec![NearMiss {
            series: "payment_method=card".to_owned(),
            ts: at(13, 0),
            reading: Reading::new(0.95, Band::new(0.99, 0.94, 1.0)),
            score: 0.82,
        }];
        k.data_health = Some("data arrived 2 h late".into());
        let out = render(&digest(vec![k])).unwrap();
        for part in [&out.html, &out.text] {
            // 08:10 UTC is 09:10 in Berlin.
            assert!(part.contains("09:10"), "{part}");
            assert!(part.contains("1 h 25 min"));
            assert!(part.contains("acknowledged by alice"));
            assert!(part.contains("country=DE"));
            assert!(part.contains("still open"));
            assert!(part.contains("silenced"));
            assert!(part.contains("worst 81.00% vs 99.00% expected (-18.0 points)"));
            assert!(
                part.contains(
                    "14:00 [payment_method=card]: 95.00% vs 99.00% expected (-4.0 points), just inside the band 94.00% – 100.00%"
                ),
                "{part}"
            );
            assert!(!part.contains("score"), "no raw scores for people: {part}");
            assert!(part.contains("data arrived 2 h late"));
        }
    }

    #[test]
    fn events_of_the_day_are_shown_as_annotations() {
        let mut k = kpi("orders", Kind::Count, DigestStatus::Ok, 0.0);
        k.events = vec!["Black Friday campaign (Fri 27 Nov 00:00 – Sat 28 Nov 00:00)".into()];
        let out = render(&digest(vec![k])).unwrap();
        for part in [&out.html, &out.text] {
            assert!(
                part.contains("Black Friday campaign (Fri 27 Nov 00:00 – Sat 28 Nov 00:00)"),
                "{part}"
            );
            assert!(part.contains("not learned, not alerted"), "{part}");
        }
        let plain = render(&digest(vec![kpi("orders", Kind::Count, DigestStatus::Ok, 0.0)])).unwrap();
        assert!(!plain.text.contains("Events:"), "{}", plain.text);
    }

    #[test]
    fn a_day_outside_its_band_without_an_alert_is_not_plain_ok_and_the_chart_has_axes() {
        let mut k = kpi("revenue", Kind::Gauge, DigestStatus::Ok, 0.0);
        k.unit = Some("EUR".into());
        k.note = Some("The day was above its expected band 38.00 EUR – 46.00 EUR (+21.8%); not alerted: this KPI alerts on drops only.".into());
        let out = render(&digest(vec![k])).unwrap();
        for part in [&out.html, &out.text] {
            assert!(part.contains("Unusual"), "{part}");
            assert!(
                part.contains("+21.8%") && part.contains("alerts on drops only"),
                "{part}"
            );
            assert!(part.contains("41.65 EUR"), "values carry the unit: {part}");
        }
        // Value axis (bottom, middle, top, in the KPI's unit) and time axis (first, middle, last day).
        for label in ["EUR</div>", "Nov 10", "Nov 17", "Nov 23"] {
            assert!(out.html.contains(label), "{label} missing");
        }
    }

    #[test]
    fn a_recipient_without_kpis_gets_nothing() {
        assert!(matches!(render(&digest(vec![])), Err(Error::NoKpis { .. })));
    }

    #[test]
    fn content_ids_stay_unique_when_sanitised_ids_collide() {
        let kpis = vec![
            kpi("a/b", Kind::Count, DigestStatus::Ok, 0.0),
            kpi("a-b", Kind::Count, DigestStatus::Ok, 0.0),
        ];
        let out = render(&digest(kpis)).unwrap();
        let cids: Vec<&str> = out.images.iter().map(|i| i.cid.as_str()).collect();
        assert_eq!(cids, ["chart-a-b", "chart-a-b-2"]);
        assert!(out.html.contains("cid:chart-a-b-2\""));
    }

    #[test]
    fn only_the_closest_near_misses_are_listed_and_the_rest_counted() {
        let mut k = kpi("n", Kind::Count, DigestStatus::NearMiss, 0.0);
        k.near_misses = (0..8)
            .map(|h| NearMiss {
                series: String::new(),
                ts: at(h, 0),
                reading: Reading::new(90.0, Band::new(100.0, 88.0, 112.0)),
                score: f64::from(h) / 10.0,
            })
            .collect();
        let fmt = Formatter {
            tz: Tz::UTC,
            day: day(),
            now: at(23, 0),
        };
        let (lines, more) = near_miss_lines(&k, &fmt);
        assert_eq!(more, 3);
        let times: Vec<&str> = lines.iter().map(|l| &l[..5]).collect();
        assert_eq!(times, ["03:00", "04:00", "05:00", "06:00", "07:00"]);
        let out = render(&digest(vec![k])).unwrap();
        assert!(out.html.contains("and 3 more") && out.text.contains("and 3 more"));
    }

    #[test]
    fn durations_read_as_minutes_hours_and_days() {
        assert_eq!(fmt_duration(Duration::minutes(45)), "45 min");
        assert_eq!(fmt_duration(Duration::minutes(60)), "1 h");
        assert_eq!(fmt_duration(Duration::minutes(85)), "1 h 25 min");
        assert_eq!(fmt_duration(Duration::minutes(1440 + 190)), "1 d 3 h");
        assert_eq!(fmt_duration(Duration::minutes(-5)), "0 min");
    }

    #[test]
    fn a_kpi_without_values_gets_a_note_instead_of_a_chart() {
        let mut k = kpi("gone", Kind::Count, DigestStatus::MissingData, 0.0);
        k.points.iter_mut().for_each(|p| p.reading.value = f64::NAN);
        k.value = None;
        let out = render(&digest(vec![k])).unwrap();
        assert!(out.images.is_empty());
        assert!(!out.html.contains("cid:"));
        assert!(out.html.contains("No values to chart"));
        assert!(out.text.contains("no data"));
    }

    #[test]
    fn relative_links_are_joined_to_the_public_url() {
        assert_eq!(
            join_url("https://k.example/", "/kpis/a"),
            "https://k.example/kpis/a"
        );
        assert_eq!(
            join_url("https://k.example", "kpis/a"),
            "https://k.example/kpis/a"
        );
        assert_eq!(
            join_url("https://k.example", "https://other/x"),
            "https://other/x"
        );
    }
}
