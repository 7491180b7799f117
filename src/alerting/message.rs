//! What a message says: subject and plain-text body for every lifecycle event, and for
//! "data missing" alerts. Pure.

use chrono::{DateTime, Utc};

use super::lifecycle::Event;
use super::BucketVerdict;
use crate::kpi::{Kind, KpiSpec, Severity};

/// Everything an anomaly message needs to say.
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
    /// The incident's severity.
    pub severity: Severity,
    /// Base URL for links.
    pub public_url: &'a str,
    /// A signed link that acknowledges the alert, once it has an id.
    pub ack_url: Option<String>,
    /// A signed link that silences the alert's series.
    pub silence_url: Option<String>,
}

/// Format a unix time for people.
pub fn fmt_ts(ts: i64) -> String {
    DateTime::<Utc>::from_timestamp(ts, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| ts.to_string())
}

fn fmt_value(spec: &KpiSpec, v: f64) -> String {
    if !v.is_finite() {
        return "n/a".to_owned();
    }
    match spec.kind {
        Kind::Ratio => format!("{:.2}%", v * 100.0),
        _ if v.abs() >= 100.0 => format!("{v:.0}"),
        _ => format!("{v:.2}"),
    }
}

fn series_label(dims: &str) -> String {
    if dims == "{}" {
        String::new()
    } else {
        format!(" {dims}")
    }
}

fn links(spec: &KpiSpec, public_url: &str, ack_url: Option<&str>, silence_url: Option<&str>) -> String {
    let url = public_url.trim_end_matches('/');
    let id = &spec.id;
    let mut out =
        format!("Series:      {url}/api/kpis/{id}/series\nAnomalies:   {url}/api/anomalies?kpi={id}\n");
    if let Some(ack) = ack_url {
        out.push_str(&format!("Acknowledge: {ack}\n"));
    }
    if let Some(silence) = silence_url {
        out.push_str(&format!("Silence:     {silence}\n"));
    }
    out
}

/// Subject and plain-text body for an anomaly alert event.
pub fn message(cx: &MessageContext<'_>, event: Event) -> (String, String) {
    let spec = cx.spec;
    let v = cx.verdict;
    let series = series_label(cx.dims);
    let change = if v.expected.is_finite() && v.expected.abs() > f64::EPSILON {
        format!("{:+.1}%", (v.value - v.expected) / v.expected.abs() * 100.0)
    } else {
        "n/a".to_owned()
    };
    let volume_label = match spec.kind {
        Kind::Ratio => "Attempts:",
        _ => "Volume:",
    };
    // The side the detector flagged: an accumulated drop can fire on a bucket that alone is
    // above its expected value.
    let below = v.below.unwrap_or(v.value < v.expected);
    let word = if below { "dropped" } else { "rose" };
    let evidence = match v.trigger {
        Some("accumulated") => "the evidence accumulated over the buckets since the start",
        Some("empty_run") => "a run of empty buckets where events were expected",
        Some("ongoing") => "the level has not come back since the start",
        _ => "this bucket alone is outside its band",
    };
    let severity = cx.severity.to_string().to_uppercase();
    let (subject, headline) = match event {
        Event::Resolved => (
            format!("[RESOLVED] {}{series} is back in its band", spec.title),
            format!(
                "{}{series} is back within its expected band since {}.",
                spec.title,
                fmt_ts(v.ts)
            ),
        ),
        Event::Firing | Event::Repeat(_) | Event::Escalated(_) => {
            let tag = match event {
                Event::Repeat(_) => format!("[{severity}, STILL FIRING]"),
                Event::Escalated(_) => format!("[ESCALATED TO {severity}]"),
                _ => format!("[{severity}]"),
            };
            (
                format!(
                    "{tag} {}{series} {word} to {} (expected {})",
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
        }
    };
    let body = format!(
        "{headline}\n\n\
         KPI:         {title} ({id})\n\
         Series:      {dims}\n\
         Actual:      {actual}\n\
         Expected:    {expected} ({change})\n\
         Band:        {lower} .. {upper}\n\
         Score:       {score:.3}\n\
         {volume_label:<12} {volume:.0}\n\
         Bucket:      {bucket} ({interval} buckets)\n\
         Since:       {since}\n\
         Evidence:    {evidence}\n\
         Seasonality: {seasonality}\n\
         Severity:    {sev}\n\
         Owner:       {owner}\n\n{links}",
        title = spec.title,
        id = spec.id,
        dims = cx.dims,
        actual = fmt_value(spec, v.value),
        expected = fmt_value(spec, v.expected),
        lower = fmt_value(spec, v.lower),
        upper = fmt_value(spec, v.upper),
        score = v.score,
        volume = v.volume,
        bucket = fmt_ts(v.ts),
        interval = spec.interval,
        since = fmt_ts(cx.since),
        seasonality = v.seasonality,
        sev = cx.severity,
        owner = spec.owner.as_deref().unwrap_or("-"),
        links = links(
            spec,
            cx.public_url,
            cx.ack_url.as_deref(),
            cx.silence_url.as_deref()
        ),
    );
    (subject, body)
}

/// Subject and body for a "data missing" alert (firing or resolved).
pub fn data_missing_message(
    spec: &KpiSpec,
    resolved: bool,
    since: i64,
    error: &str,
    public_url: &str,
    ack_url: Option<&str>,
) -> (String, String) {
    if resolved {
        (
            format!("[RESOLVED] {}: data is arriving again", spec.title),
            format!(
                "{} ({}) reads its source again; data was missing since {}.\n\n{}",
                spec.title,
                spec.id,
                fmt_ts(since),
                links(spec, public_url, ack_url, None)
            ),
        )
    } else {
        (
            format!(
                "[DATA MISSING] {}: source {:?} is failing",
                spec.title, spec.source
            ),
            format!(
                "{} ({}) has had no data since {}: its query against source {:?} fails.\n\
                 This is not a drop: anomaly alerts for this KPI are held back until data returns.\n\n\
                 Error:       {error}\nOwner:       {}\n\n{}",
                spec.title,
                spec.id,
                fmt_ts(since),
                spec.source,
                spec.owner.as_deref().unwrap_or("-"),
                links(spec, public_url, ack_url, None)
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> KpiSpec {
        KpiSpec::parse(
            "pay",
            "title = \"Payment success\"\nsource = \"s\"\nkind = \"ratio\"\ninterval = \"5m\"\nseverity = \"critical\"",
            "SELECT 1 WHERE :start < :end",
            std::path::Path::new("m"),
        )
        .expect("valid")
    }

    fn verdict() -> BucketVerdict {
        BucketVerdict {
            volume: 120.0,
            ..BucketVerdict::plain(0, 0.4, 0.97, 0.9, 1.0, true)
        }
    }

    #[test]
    fn the_message_says_expected_actual_band_volume_and_links() {
        let spec = spec();
        let v = verdict();
        let cx = MessageContext {
            spec: &spec,
            dims: "{}",
            verdict: &v,
            since: 0,
            severity: Severity::Critical,
            public_url: "http://x",
            ack_url: Some("http://x/ack/1?sig=abc".to_owned()),
            silence_url: Some("http://x/silence/1?sig=def".to_owned()),
        };
        let (subject, body) = message(&cx, Event::Firing);
        assert!(
            subject.contains("[CRITICAL] Payment success dropped to 40.00%"),
            "{subject}"
        );
        assert!(subject.contains("expected 97.00%"), "{subject}");
        for needle in [
            "Band:        90.00% .. 100.00%",
            "Attempts:    120",
            "1970-01-01 00:00 UTC",
            "-58.8%",
            "http://x/api/kpis/pay/series",
            "Acknowledge: http://x/ack/1?sig=abc",
            "Silence:     http://x/silence/1?sig=def",
        ] {
            assert!(body.contains(needle), "{needle} missing in\n{body}");
        }
        assert!(message(&cx, Event::Resolved).0.starts_with("[RESOLVED]"));
        assert!(message(&cx, Event::Repeat(2)).0.contains("STILL FIRING"));
        assert!(message(&cx, Event::Escalated(Severity::Critical))
            .0
            .starts_with("[ESCALATED TO CRITICAL]"));
    }

    #[test]
    fn a_data_missing_message_says_it_is_not_a_drop() {
        let (subject, body) =
            data_missing_message(&spec(), false, 0, "source \"s\" is unreachable", "http://x", None);
        assert!(subject.starts_with("[DATA MISSING]"), "{subject}");
        assert!(body.contains("not a drop"), "{body}");
    }
}
