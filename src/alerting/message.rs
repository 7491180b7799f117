//! What a message says: subject and plain-text body for every lifecycle event, and for
//! "data missing" alerts. Pure. Values go through `format::ValueFormat` (ratios in %, their
//! differences in points, separators and the model's unit), and how far a value is from its
//! band is said in words, never as a raw score.

use super::lifecycle::Event;
use super::BucketVerdict;
use crate::format::{self, ValueFormat};
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
    /// For a resolution: the first bucket of the in-band streak that resolved it.
    pub recovered_since: Option<i64>,
    /// The incident's severity.
    pub severity: Severity,
    /// Base URL for links.
    pub public_url: &'a str,
    /// The alert's id, for the link to the KPI page focused on it.
    pub alert_id: Option<i64>,
    /// A signed link that acknowledges the alert, once it has an id.
    pub ack_url: Option<String>,
    /// A signed link that silences the alert's series.
    pub silence_url: Option<String>,
    /// For an incident of a KPI with slices: which slices explain it (`Payment success -5.3
    /// points; payment_method=card -17.0 points explains 96%`), or the slice's share of the
    /// total.
    pub cause: Option<&'a str>,
    /// Slices outside their band, worst first (`payment_method=card`).
    pub affected: &'a [String],
}

/// Affected slices listed in a message; the rest are counted.
const MAX_SLICES_LISTED: usize = 5;

/// Format a unix time for people.
pub fn fmt_ts(ts: i64) -> String {
    format::utc(ts)
}

/// ` (country=DE)` for a dimensioned series, nothing for a KPI without dimensions.
fn series_suffix(dims: &str) -> String {
    let label = format::series_label(dims);
    if label.is_empty() {
        String::new()
    } else {
        format!(" ({label})")
    }
}

fn links(page: &str, ack_url: Option<&str>, silence_url: Option<&str>) -> String {
    let mut out = format!("Open:        {page}\n");
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
    let fmt = ValueFormat::of(spec);
    let series = series_suffix(cx.dims);
    let change = fmt
        .change(v.reading.value, v.reading.band.expected)
        .map(|c| format!(" ({c} vs expected)"))
        .unwrap_or_default();
    let volume_label = match spec.kind {
        Kind::Ratio => "Attempts:",
        _ => "Volume:",
    };
    // The side the detector flagged: an accumulated drop can fire on a bucket that alone is
    // above its expected value.
    let below = v.below.unwrap_or(v.reading.is_below_expected());
    let word = if below { "dropped" } else { "rose" };
    let evidence = match v.trigger {
        Some("accumulated") => "the evidence accumulated over the buckets since the start",
        Some("empty_run") => "a run of empty buckets where events were expected",
        Some("ongoing") => "the level has not come back since the start",
        _ => "this bucket alone is outside its band",
    };
    let severity = cx.severity.to_string().to_uppercase();
    let (subject, headline) = match event {
        Event::Resolved => {
            let since = cx.recovered_since.unwrap_or(v.ts);
            (
                format!("[RESOLVED] {}{series} is back in its band", spec.title),
                format!(
                    "{}{series} is back within its expected band since {} (the incident began {}).",
                    spec.title,
                    fmt_ts(since),
                    fmt_ts(cx.since)
                ),
            )
        }
        Event::Firing | Event::Repeat(_) | Event::Escalated(_) => {
            let tag = match event {
                Event::Repeat(_) => format!("[{severity}, STILL FIRING]"),
                Event::Escalated(_) => format!("[ESCALATED TO {severity}]"),
                _ => format!("[{severity}]"),
            };
            // The top contributor rides in the subject: chat and paging show only that.
            // Of the total: its top contributor; of a slice: its share of the total.
            let top = cx
                .cause
                .and_then(|c| c.split_once("; "))
                .map(|(first, rest)| match series.is_empty() {
                    true => rest.split("; ").next().unwrap_or(rest),
                    false => first,
                })
                .map(|top| format!(": {top}"))
                .unwrap_or_default();
            (
                format!(
                    "{tag} {}{series} {word} to {} (expected {}){top}",
                    spec.title,
                    fmt.value(v.reading.value),
                    fmt.value(v.reading.band.expected)
                ),
                format!(
                    "{}{series} {word} {} in the bucket starting {}.",
                    spec.title,
                    format::distance(&v.reading),
                    fmt_ts(v.ts)
                ),
            )
        }
    };
    let series_line = if series.is_empty() {
        String::new()
    } else {
        format!("Series:      {}\n", format::series_label(cx.dims))
    };
    let cause_line = cx
        .cause
        .map(|c| format!("Cause:       {c}\n"))
        .unwrap_or_default();
    let slices_line = match cx.affected {
        [] => String::new(),
        some if some.len() <= MAX_SLICES_LISTED => format!("Slices:      {}\n", some.join("; ")),
        many => format!(
            "Slices:      {}; and {} more\n",
            many[..MAX_SLICES_LISTED].join("; "),
            many.len() - MAX_SLICES_LISTED
        ),
    };
    let actual_label = if event == Event::Resolved {
        "Latest:"
    } else {
        "Actual:"
    };
    let body = format!(
        "{headline}\n\n\
         KPI:         {title} ({id})\n\
         {series_line}\
         {cause_line}\
         {slices_line}\
         {actual_label:<12} {actual}{change}\n\
         Expected:    {expected}\n\
         Band:        {band}\n\
         {volume_label:<12} {volume}\n\
         Bucket:      {bucket} ({every})\n\
         Since:       {since}\n\
         Evidence:    {evidence}\n\
         Seasonality: {seasonality}\n\
         Severity:    {sev}\n\
         Owner:       {owner}\n\n{links}",
        title = spec.title,
        id = spec.id,
        actual = fmt.value(v.reading.value),
        expected = fmt.value(v.reading.band.expected),
        band = fmt.band(v.reading.band),
        volume = format::grouped(v.volume, 0),
        bucket = fmt_ts(v.ts),
        every = format::every(spec.interval),
        since = fmt_ts(cx.since),
        seasonality = v.seasonality,
        sev = cx.severity,
        owner = spec.owner.as_deref().unwrap_or("-"),
        links = links(
            &super::kpi_url(cx.public_url, spec.id.as_str(), cx.alert_id),
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
    let page = super::kpi_url(public_url, spec.id.as_str(), None);
    if resolved {
        (
            format!("[RESOLVED] {}: data is arriving again", spec.title),
            format!(
                "{} ({}) reads its source again; data was missing since {}.\n\n{}",
                spec.title,
                spec.id,
                fmt_ts(since),
                links(&page, ack_url, None)
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
                links(&page, ack_url, None)
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
            recovered_since: Some(900),
            severity: Severity::Critical,
            public_url: "http://x",
            alert_id: Some(1),
            ack_url: Some("http://x/ack/1?sig=abc".to_owned()),
            silence_url: Some("http://x/silence/1?sig=def".to_owned()),
            cause: None,
            affected: &[],
        };
        let (subject, body) = message(&cx, Event::Firing);
        assert!(
            subject.contains("[CRITICAL] Payment success dropped to 40.00%"),
            "{subject}"
        );
        assert!(subject.contains("expected 97.00%"), "{subject}");
        for needle in [
            "Band:        90.00% – 100.00%",
            "Attempts:    120",
            "1970-01-01 00:00 UTC",
            "Actual:      40.00% (-57.0 points vs expected)",
            "far below the band",
            "(every 5 minutes)",
            "Open:        http://x/#/kpi/pay?alert=1",
            "Acknowledge: http://x/ack/1?sig=abc",
            "Silence:     http://x/silence/1?sig=def",
        ] {
            assert!(body.contains(needle), "{needle} missing in\n{body}");
        }
        for absent in ["Series:", "Score", "{}", "/api/"] {
            assert!(!body.contains(absent), "{absent} in\n{body}");
        }
        let (subject, resolved) = message(&cx, Event::Resolved);
        assert!(subject.starts_with("[RESOLVED]"), "{subject}");
        assert!(
            resolved.contains("back within its expected band since 1970-01-01 00:15 UTC"),
            "the resolution dates the recovery from the first in-band bucket:\n{resolved}"
        );
        assert!(message(&cx, Event::Repeat(2)).0.contains("STILL FIRING"));
        assert!(message(&cx, Event::Escalated(Severity::Critical))
            .0
            .starts_with("[ESCALATED TO CRITICAL]"));
    }

    #[test]
    fn a_grouped_incident_names_its_top_contributor_and_affected_slices() {
        let spec = spec();
        let v = BucketVerdict {
            volume: 1000.0,
            ..BucketVerdict::plain(0, 0.909, 0.963, 0.95, 0.98, true)
        };
        let affected = [
            "payment_method=card".to_owned(),
            "country=DE, payment_method=card".to_owned(),
        ];
        let cx = MessageContext {
            spec: &spec,
            dims: "{}",
            verdict: &v,
            since: 0,
            recovered_since: None,
            severity: Severity::Warning,
            public_url: "http://x",
            alert_id: Some(3),
            ack_url: None,
            silence_url: None,
            cause: Some("Payment success -5.4 points; payment_method=card -17.0 points explains 94%"),
            affected: &affected,
        };
        let (subject, body) = message(&cx, Event::Firing);
        assert_eq!(
            subject,
            "[WARNING] Payment success dropped to 90.90% (expected 96.30%): payment_method=card -17.0 points explains 94%"
        );
        assert!(
            body.contains(
                "Cause:       Payment success -5.4 points; payment_method=card -17.0 points explains 94%\n"
            ),
            "{body}"
        );
        assert!(
            body.contains("Slices:      payment_method=card; country=DE, payment_method=card\n"),
            "{body}"
        );
        let slice = MessageContext {
            dims: r#"{"country":"LU"}"#,
            cause: Some("country=LU is 2.0% of the total; the total (Orders) moved -1.7%, inside its band"),
            affected: &[],
            ..cx
        };
        let (subject, body) = message(&slice, Event::Firing);
        assert!(
            subject.starts_with("[WARNING] Payment success (country=LU) dropped to 90.90%")
                && subject.ends_with(": country=LU is 2.0% of the total"),
            "{subject}"
        );
        assert!(body.contains("Series:      country=LU\n"), "{body}");
    }

    #[test]
    fn a_data_missing_message_says_it_is_not_a_drop() {
        let (subject, body) =
            data_missing_message(&spec(), false, 0, "source \"s\" is unreachable", "http://x", None);
        assert!(subject.starts_with("[DATA MISSING]"), "{subject}");
        assert!(body.contains("not a drop"), "{body}");
    }
}
