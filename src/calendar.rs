//! Events and holidays: periods whose buckets the detector neither learns from nor alerts on
//! ("Black Friday campaign", "planned migration", public holidays).
//!
//! An [`Event`] is a local start and end in a timezone, optionally recurring every year,
//! widened by margins before and after, for some KPIs (by id or by label) or for all of them.
//! Events come from three places, all kept in the state store's `events` table so that every
//! process and every run sees the same ones: `[[calendar]]` entries of the config (synced at
//! start by [`from_config`]), iCalendar files (`ical = "…"` in a config entry, or
//! `POST /api/events/import`, parsed by [`parse_ical`]) and `POST /api/events`.
//!
//! [`Exclusions`] is what the pipeline and backtests use: the UTC intervals of the events that
//! apply to one KPI over a window, asked bucket by bucket ([`Exclusions::covers`]).
//!
//! The rules are pure; [`from_config`] reads the iCalendar files a config names, and
//! [`stored`], [`exclusions`] and [`sync_config`] go through `store` (its `EventRow`). Depends
//! on `kpi`, `config` (the raw entries) and `store`; never on `pipeline` or `alerting`.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, TimeZone};
use chrono_tz::Tz;

use crate::config::CalendarEntry;
use crate::kpi::KpiSpec;
use crate::store::{EventRow, Store};

/// What is wrong with an event or a calendar file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Error(pub String);

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Longest event (without margins): a year. Longer ones are almost surely a typo.
pub const MAX_EVENT_DAYS: i64 = 366;
/// Longest margin on either side.
pub const MAX_MARGIN_SECS: i64 = 7 * 86_400;

/// One event or holiday.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// What it is ("Black Friday campaign").
    pub name: String,
    /// Local start (inclusive).
    pub start: NaiveDateTime,
    /// Local end (exclusive), after `start`.
    pub end: NaiveDateTime,
    /// The timezone of `start` and `end`.
    pub timezone: Tz,
    /// Recurs every year on the same local date and time (a 29 February one only in leap years).
    pub yearly: bool,
    /// Seconds before `start` also covered.
    pub margin_before: i64,
    /// Seconds after `end` also covered.
    pub margin_after: i64,
    /// KPI ids it applies to.
    pub kpis: Vec<String>,
    /// Labels a KPI must all carry for it to apply (`team = "payments"`); `kpi`, `owner`
    /// and `severity` work too.
    pub labels: BTreeMap<String, String>,
}

impl Event {
    /// Check the invariants: a name, `end` after `start`, at most [`MAX_EVENT_DAYS`] long,
    /// margins within [`MAX_MARGIN_SECS`], a yearly event shorter than a year.
    pub fn validate(&self) -> Result<()> {
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
            return Err(Error(
                "an event needs a name of 1-200 printable characters".to_owned(),
            ));
        }
        if self.end <= self.start {
            return Err(Error(format!(
                "event {:?}: the end {} is not after the start {}",
                self.name, self.end, self.start
            )));
        }
        if self.end - self.start > Duration::days(MAX_EVENT_DAYS) {
            return Err(Error(format!(
                "event {:?}: lasts more than {MAX_EVENT_DAYS} days",
                self.name
            )));
        }
        if self.yearly && self.end - self.start >= Duration::days(365) {
            return Err(Error(format!(
                "event {:?}: a yearly event must last less than a year",
                self.name
            )));
        }
        for (what, m) in [
            ("margin_before", self.margin_before),
            ("margin_after", self.margin_after),
        ] {
            if !(0..=MAX_MARGIN_SECS).contains(&m) {
                return Err(Error(format!(
                    "event {:?}: {what} must be between 0 and 7 days",
                    self.name
                )));
            }
        }
        Ok(())
    }

    /// Whether it applies to `spec`: every KPI when it names no KPI and no label; else a
    /// KPI it names, or one carrying all of its labels.
    pub fn applies_to(&self, spec: &KpiSpec) -> bool {
        if self.kpis.is_empty() && self.labels.is_empty() {
            return true;
        }
        if self.kpis.iter().any(|k| k == spec.id.as_str()) {
            return true;
        }
        !self.labels.is_empty()
            && self.labels.iter().all(|(k, v)| {
                let have = match k.as_str() {
                    "kpi" => Some(spec.id.to_string()),
                    "owner" => spec.owner.clone(),
                    "severity" => Some(spec.severity.to_string()),
                    _ => spec.labels.get(k).cloned(),
                };
                have.as_deref() == Some(v.as_str())
            })
    }

    /// The UTC intervals `[start, end)` (margins included) of its occurrences that overlap
    /// `[from, to)`, in time order.
    pub fn occurrences(&self, from: i64, to: i64) -> Vec<(i64, i64)> {
        let mut out = Vec::new();
        let one = |start: NaiveDateTime, end: NaiveDateTime| {
            let s = utc_of(self.timezone, start) - self.margin_before;
            let e = utc_of(self.timezone, end) + self.margin_after;
            (s, e)
        };
        if !self.yearly {
            let (s, e) = one(self.start, self.end);
            if s < to && e > from {
                out.push((s, e));
            }
            return out;
        }
        let first = year_of(from).saturating_sub(1);
        let last = year_of(to).saturating_add(1);
        let length = self.end - self.start;
        for year in first..=last {
            let Some(date) = self.start.date().with_year(year) else {
                continue; // 29 February outside a leap year
            };
            let start = date.and_time(self.start.time());
            let (s, e) = one(start, start + length);
            if s < to && e > from {
                out.push((s, e));
            }
        }
        out
    }
}

fn year_of(secs: i64) -> i32 {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.year())
        .unwrap_or(1970)
}

/// UTC seconds of a local time: the earlier instant when the clock change makes it ambiguous,
/// the instant an hour later when it falls in the gap of a spring-forward.
pub fn utc_of(tz: Tz, local: NaiveDateTime) -> i64 {
    match tz.from_local_datetime(&local).earliest() {
        Some(t) => t.timestamp(),
        None => tz
            .from_local_datetime(&(local + Duration::hours(1)))
            .earliest()
            .map_or(local.and_utc().timestamp(), |t| t.timestamp()),
    }
}

/// The intervals excluded for one KPI over a window: merged, in time order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exclusions {
    intervals: Vec<(i64, i64)>,
}

impl Exclusions {
    /// The occurrences over `[from, to)` of the `events` that apply to `spec`.
    pub fn for_kpi<'a>(
        events: impl IntoIterator<Item = &'a Event>,
        spec: &KpiSpec,
        from: i64,
        to: i64,
    ) -> Self {
        let mut intervals: Vec<(i64, i64)> = events
            .into_iter()
            .filter(|e| e.applies_to(spec))
            .flat_map(|e| e.occurrences(from, to))
            .collect();
        intervals.sort_unstable();
        let mut merged: Vec<(i64, i64)> = Vec::with_capacity(intervals.len());
        for (s, e) in intervals {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        Exclusions { intervals: merged }
    }

    /// Whether the bucket `[start, end)` overlaps an event.
    pub fn covers(&self, start: i64, end: i64) -> bool {
        // The first interval ending after `start` is the only candidate.
        let i = self.intervals.partition_point(|(_, e)| *e <= start);
        self.intervals.get(i).is_some_and(|(s, _)| *s < end)
    }

    /// The merged intervals.
    pub fn intervals(&self) -> &[(i64, i64)] {
        &self.intervals
    }

    /// Whether nothing is excluded.
    pub fn is_empty(&self) -> bool {
        self.intervals.is_empty()
    }
}

/// A local date-time as written in configs and the API: `YYYY-MM-DD` (midnight),
/// `YYYY-MM-DDTHH:MM` or `YYYY-MM-DDTHH:MM:SS` (a space works instead of `T`).
pub fn parse_local(s: &str) -> Result<NaiveDateTime> {
    let s = s.trim();
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_time(NaiveTime::MIN));
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, format) {
            return Ok(t);
        }
    }
    Err(Error(format!(
        "{s:?} is not a local date or date-time (YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS])"
    )))
}

/// A timezone by IANA name.
pub fn parse_timezone(s: &str) -> Result<Tz> {
    s.parse::<Tz>()
        .map_err(|_| Error(format!("{s:?} is not an IANA timezone")))
}

/// A margin like `2h` or `30m` (humantime), in seconds.
pub fn parse_margin(what: &str, s: &str) -> Result<i64> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| Error(format!("{what} {s:?} is not a duration: {e}")))?;
    let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    if secs > MAX_MARGIN_SECS {
        return Err(Error(format!("{what} {s:?} is longer than 7 days")));
    }
    Ok(secs)
}

/// What an iCalendar file gives for one event, before the importer's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct IcalEvent {
    /// `UID`, when present.
    pub uid: Option<String>,
    /// The event (name from `SUMMARY`, times from `DTSTART`/`DTEND`/`DURATION`, yearly from
    /// `RRULE:FREQ=YEARLY`), with the defaults' margins, KPIs and labels.
    pub event: Event,
}

/// The `VEVENT`s of an iCalendar text as events, each taking `defaults`' timezone (for
/// floating times), margins, KPIs and labels. All-day events (`DTSTART;VALUE=DATE`) cover
/// whole local days; a missing `DTEND` means one day (all-day) or no length, which is an
/// error. Recurrence other than `FREQ=YEARLY` (without `COUNT`/`UNTIL`/`INTERVAL`) is
/// refused with the event's name rather than silently read as one occurrence.
pub fn parse_ical(text: &str, defaults: &Event) -> Result<Vec<IcalEvent>> {
    use icalendar::{CalendarDateTime, Component as _, DatePerhapsTime};
    let calendar: icalendar::Calendar = text
        .parse()
        .map_err(|e: String| Error(format!("not an iCalendar file: {}", first_line(&e))))?;
    let tz = defaults.timezone;
    let to_local = |d: DatePerhapsTime| -> Result<(NaiveDateTime, bool)> {
        Ok(match d {
            DatePerhapsTime::Date(d) => (d.and_time(NaiveTime::MIN), true),
            DatePerhapsTime::DateTime(CalendarDateTime::Floating(t)) => (t, false),
            DatePerhapsTime::DateTime(CalendarDateTime::Utc(t)) => {
                (t.with_timezone(&tz).naive_local(), false)
            }
            DatePerhapsTime::DateTime(CalendarDateTime::WithTimezone { date_time, tzid }) => {
                let zone = parse_timezone(&tzid)?;
                let utc = utc_of(zone, date_time);
                let t = chrono::DateTime::from_timestamp(utc, 0).unwrap_or_default();
                (t.with_timezone(&tz).naive_local(), false)
            }
        })
    };
    let mut out = Vec::new();
    for (i, ev) in calendar.events().enumerate() {
        let name = ev
            .get_summary()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map_or_else(|| format!("event {}", i + 1), str::to_owned);
        let Some(start) = ev.get_start() else {
            return Err(Error(format!("iCalendar event {name:?} has no DTSTART")));
        };
        let (start, all_day) =
            to_local(start).map_err(|e| Error(format!("iCalendar event {name:?}: {e}")))?;
        let end = match ev.get_end() {
            Some(end) => {
                to_local(end)
                    .map_err(|e| Error(format!("iCalendar event {name:?}: {e}")))?
                    .0
            }
            None => match ev.property_value("DURATION").map(parse_ical_duration) {
                Some(Some(d)) => start + d,
                Some(None) => return Err(Error(format!("iCalendar event {name:?}: unreadable DURATION"))),
                None if all_day => start + Duration::days(1),
                None => {
                    return Err(Error(format!(
                        "iCalendar event {name:?} has neither DTEND nor DURATION"
                    )))
                }
            },
        };
        let yearly = match ev.property_value("RRULE") {
            None => false,
            Some(rule) => {
                let parts: BTreeMap<String, String> = rule
                    .split(';')
                    .filter_map(|p| p.split_once('='))
                    .map(|(k, v)| (k.trim().to_ascii_uppercase(), v.trim().to_ascii_uppercase()))
                    .collect();
                let plain = parts
                    .keys()
                    .all(|k| matches!(k.as_str(), "FREQ" | "BYMONTH" | "BYMONTHDAY" | "WKST"));
                if parts.get("FREQ").map(String::as_str) == Some("YEARLY") && plain {
                    true
                } else {
                    return Err(Error(format!(
                        "iCalendar event {name:?}: only RRULE:FREQ=YEARLY recurrence is supported, got {rule:?}"
                    )));
                }
            }
        };
        let event = Event {
            name,
            start,
            end,
            yearly,
            ..defaults.clone()
        };
        event.validate()?;
        out.push(IcalEvent {
            uid: ev.get_uid().map(str::to_owned),
            event,
        });
    }
    if out.is_empty() {
        return Err(Error("the iCalendar file has no VEVENT".to_owned()));
    }
    Ok(out)
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().chars().take(200).collect()
}

/// An RFC 5545 duration (`P1D`, `PT30M`, `P1DT2H`, `P2W`), positive only.
fn parse_ical_duration(s: &str) -> Option<Duration> {
    let s = s.trim().strip_prefix('+').unwrap_or(s.trim());
    let rest = s.strip_prefix('P')?;
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (rest, None),
    };
    let mut total = Duration::zero();
    let mut take = |part: &str, units: &[(char, i64)]| -> Option<()> {
        let mut n = String::new();
        for c in part.chars() {
            if c.is_ascii_digit() {
                n.push(c);
            } else {
                let secs = units.iter().find(|(u, _)| *u == c)?.1;
                total += Duration::seconds(n.parse::<i64>().ok()?.checked_mul(secs)?);
                n.clear();
            }
        }
        n.is_empty().then_some(())
    };
    take(date, &[('W', 7 * 86_400), ('D', 86_400)])?;
    if let Some(t) = time {
        take(t, &[('H', 3600), ('M', 60), ('S', 1)])?;
    }
    (total > Duration::zero()).then_some(total)
}

/// Where a stored event came from: the config's `[[calendar]]`.
pub const ORIGIN_CONFIG: &str = "config";
/// … `POST /api/events`.
pub const ORIGIN_API: &str = "api";
/// … an iCalendar file imported through `POST /api/events/import`.
pub const ORIGIN_ICAL: &str = "ical";

const LOCAL_FORMAT: &str = "%Y-%m-%dT%H:%M:%S";

/// The stored form of `event`.
pub fn to_row(event: &Event, origin: &str, uid: Option<String>, by: &str) -> EventRow {
    EventRow {
        id: 0,
        name: event.name.clone(),
        origin: origin.to_owned(),
        starts_local: event.start.format(LOCAL_FORMAT).to_string(),
        ends_local: event.end.format(LOCAL_FORMAT).to_string(),
        timezone: event.timezone.name().to_owned(),
        yearly: event.yearly,
        margin_before_secs: event.margin_before,
        margin_after_secs: event.margin_after,
        kpis: serde_json::to_string(&event.kpis).unwrap_or_else(|_| "[]".to_owned()),
        labels: serde_json::to_string(&event.labels).unwrap_or_else(|_| "{}".to_owned()),
        uid,
        created_by: by.to_owned(),
        created_at: 0,
    }
}

/// The event a stored row describes.
pub fn from_row(row: &EventRow) -> Result<Event> {
    let event = Event {
        name: row.name.clone(),
        start: parse_local(&row.starts_local)?,
        end: parse_local(&row.ends_local)?,
        timezone: parse_timezone(&row.timezone)?,
        yearly: row.yearly,
        margin_before: row.margin_before_secs,
        margin_after: row.margin_after_secs,
        kpis: serde_json::from_str(&row.kpis).map_err(|e| Error(format!("event {}: kpis: {e}", row.id)))?,
        labels: serde_json::from_str(&row.labels)
            .map_err(|e| Error(format!("event {}: labels: {e}", row.id)))?,
    };
    Ok(event)
}

/// Every stored event (a row that no longer parses is skipped with a warning).
pub async fn stored(store: &Store) -> crate::store::Result<Vec<(EventRow, Event)>> {
    Ok(parse_stored(store.events().await?))
}

fn parse_stored(rows: impl IntoIterator<Item = EventRow>) -> Vec<(EventRow, Event)> {
    rows.into_iter()
        .filter_map(|row| match from_row(&row) {
            Ok(event) => Some((row, event)),
            Err(error) => {
                tracing::warn!(message = "Stored event skipped.", id = row.id, %error);
                None
            }
        })
        .collect()
}

/// The exclusions of `spec` over `[from, to)` from the stored events.
pub async fn exclusions(
    store: &Store,
    spec: &KpiSpec,
    from: i64,
    to: i64,
) -> crate::store::Result<Exclusions> {
    // Every run reads them: the rows this process's runs share (see `Store::events_shared`).
    let rows = store.events_shared().await?;
    let events = parse_stored(rows.iter().cloned());
    Ok(Exclusions::for_kpi(events.iter().map(|(_, e)| e), spec, from, to))
}

/// [`exclusions`], taking the config's events from `entries` rather than from the store (a
/// command run beside the service, whose config may be newer than the last start's).
pub async fn exclusions_with_config(
    store: &Store,
    entries: &[CalendarEntry],
    base: &Path,
    spec: &KpiSpec,
    (from, to): (i64, i64),
) -> anyhow::Result<Exclusions> {
    let config = from_config(entries, base).map_err(|e| anyhow::anyhow!("invalid [[calendar]]: {e}"))?;
    let stored = stored(store).await?;
    let events = stored
        .iter()
        .filter(|(row, _)| row.origin != ORIGIN_CONFIG)
        .map(|(_, e)| e)
        .chain(config.iter().map(|c| &c.event));
    Ok(Exclusions::for_kpi(events, spec, from, to))
}

/// Replace the config's events in the store with `entries` (at start), so every process and
/// the API see them. Fails, naming the entry, when one is invalid.
pub async fn sync_config(store: &Store, entries: &[CalendarEntry], base: &Path) -> anyhow::Result<usize> {
    let events = from_config(entries, base).map_err(|e| anyhow::anyhow!("invalid [[calendar]]: {e}"))?;
    let rows: Vec<EventRow> = events
        .into_iter()
        .map(|e| to_row(&e.event, ORIGIN_CONFIG, e.uid, ORIGIN_CONFIG))
        .collect();
    store.replace_events(ORIGIN_CONFIG, &rows).await?;
    Ok(rows.len())
}

/// The events of the config's `[[calendar]]` entries, each with its iCalendar UID if it came
/// from a file (relative `ical` paths are read from `base`). Every problem is named by the
/// entry's index and name.
pub fn from_config(entries: &[CalendarEntry], base: &Path) -> Result<Vec<IcalEvent>> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let what = format!("calendar[{i}] ({:?})", entry.name);
        match entry_events(entry, base) {
            Ok(events) => out.extend(events),
            Err(e) => problems.push(format!("{what}: {e}")),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(Error(problems.join("; ")))
    }
}

fn entry_events(entry: &CalendarEntry, base: &Path) -> Result<Vec<IcalEvent>> {
    let timezone = parse_timezone(entry.timezone.as_deref().unwrap_or("UTC"))?;
    let margin_before = parse_margin("margin_before", entry.margin_before.as_deref().unwrap_or("0s"))?;
    let margin_after = parse_margin("margin_after", entry.margin_after.as_deref().unwrap_or("0s"))?;
    let mut template = Event {
        name: entry.name.clone(),
        start: NaiveDateTime::default(),
        end: NaiveDateTime::default(),
        timezone,
        yearly: entry.yearly,
        margin_before,
        margin_after,
        kpis: entry.kpis.clone(),
        labels: entry.labels.clone(),
    };
    if let Some(file) = &entry.ical {
        if entry.start.is_some() || entry.end.is_some() || entry.date.is_some() || entry.yearly {
            return Err(Error(
                "an entry with `ical` takes its dates from the file: drop date/start/end/yearly".to_owned(),
            ));
        }
        let path = if file.is_absolute() {
            file.clone()
        } else {
            base.join(file)
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error(format!("cannot read {}: {e}", path.display())))?;
        return parse_ical(&text, &template).map_err(|e| Error(format!("{}: {e}", path.display())));
    }
    match (&entry.date, &entry.start, &entry.end) {
        (Some(date), None, None) => {
            let day = NaiveDate::parse_from_str(date.trim(), "%Y-%m-%d")
                .map_err(|_| Error(format!("date {date:?} is not YYYY-MM-DD")))?;
            let days = i64::from(entry.days.unwrap_or(1).max(1));
            template.start = day.and_time(NaiveTime::MIN);
            template.end = template.start + Duration::days(days);
        }
        (None, Some(start), Some(end)) => {
            if entry.days.is_some() {
                return Err(Error("`days` goes with `date`, not with start/end".to_owned()));
            }
            template.start = parse_local(start)?;
            template.end = parse_local(end)?;
        }
        _ => {
            return Err(Error(
                "give either `date` (whole local days, `days` long) or both `start` and `end`, or `ical`"
                    .to_owned(),
            ))
        }
    }
    template.validate()?;
    Ok(vec![IcalEvent {
        uid: None,
        event: template,
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(labels: &str) -> KpiSpec {
        KpiSpec::parse(
            "orders",
            &format!("source = \"s\"\nkind = \"count\"\ninterval = \"1h\"\n{labels}"),
            "SELECT 1 WHERE :start < :end",
            Path::new("m"),
        )
        .expect("valid")
    }

    fn event(start: &str, end: &str, tz: &str, yearly: bool) -> Event {
        Event {
            name: "e".to_owned(),
            start: parse_local(start).expect("start"),
            end: parse_local(end).expect("end"),
            timezone: parse_timezone(tz).expect("tz"),
            yearly,
            margin_before: 0,
            margin_after: 0,
            kpis: Vec::new(),
            labels: BTreeMap::new(),
        }
    }

    fn utc(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s)
            .expect("rfc3339")
            .timestamp()
    }

    #[test]
    fn a_one_off_event_covers_its_local_hours_plus_margins() {
        let mut e = event("2026-11-27T00:00", "2026-11-28", "Europe/Berlin", false);
        e.margin_before = 3600;
        e.margin_after = 7200;
        let occ = e.occurrences(0, i64::MAX);
        // Berlin is UTC+1 in November: local midnight is 23:00 UTC the day before.
        assert_eq!(
            occ,
            vec![(utc("2026-11-26T22:00:00Z"), utc("2026-11-28T01:00:00Z"))]
        );
        let ex = Exclusions::for_kpi([&e], &spec(""), 0, i64::MAX);
        assert!(ex.covers(utc("2026-11-26T22:00:00Z"), utc("2026-11-26T23:00:00Z")));
        assert!(!ex.covers(utc("2026-11-26T21:00:00Z"), utc("2026-11-26T22:00:00Z")));
        assert!(ex.covers(utc("2026-11-28T00:55:00Z"), utc("2026-11-28T01:00:00Z")));
        assert!(!ex.covers(utc("2026-11-28T01:00:00Z"), utc("2026-11-28T01:05:00Z")));
    }

    #[test]
    fn a_yearly_holiday_recurs_on_its_local_date_and_29_february_only_in_leap_years() {
        let xmas = event("2020-12-25", "2020-12-26", "America/New_York", true);
        let occ = xmas.occurrences(utc("2025-01-01T00:00:00Z"), utc("2027-01-01T00:00:00Z"));
        assert_eq!(
            occ,
            vec![
                (utc("2025-12-25T05:00:00Z"), utc("2025-12-26T05:00:00Z")),
                (utc("2026-12-25T05:00:00Z"), utc("2026-12-26T05:00:00Z")),
            ]
        );
        let leap = event("2024-02-29", "2024-03-01", "UTC", true);
        let occ = leap.occurrences(utc("2025-01-01T00:00:00Z"), utc("2029-01-01T00:00:00Z"));
        assert_eq!(
            occ,
            vec![(utc("2028-02-29T00:00:00Z"), utc("2028-03-01T00:00:00Z"))]
        );
    }

    #[test]
    fn events_apply_to_every_kpi_or_to_named_kpis_or_labels() {
        let all = event("2026-01-01", "2026-01-02", "UTC", false);
        let payments = spec("labels = { team = \"payments\" }");
        assert!(all.applies_to(&payments));
        let by_label = Event {
            labels: [("team".to_owned(), "payments".to_owned())].into(),
            ..all.clone()
        };
        assert!(by_label.applies_to(&payments));
        assert!(!by_label.applies_to(&spec("labels = { team = \"shop\" }")));
        let by_id = Event {
            kpis: vec!["signups".to_owned()],
            ..all.clone()
        };
        assert!(!by_id.applies_to(&payments));
        let by_id = Event {
            kpis: vec!["orders".to_owned()],
            ..all
        };
        assert!(by_id.applies_to(&payments));
    }

    #[test]
    fn bad_events_are_refused_with_their_reason() {
        let e = event("2026-01-02", "2026-01-01", "UTC", false);
        assert!(e.validate().expect_err("end first").0.contains("not after"));
        assert!(parse_local("27/11/2026").is_err());
        assert!(parse_timezone("Mars/Olympus").is_err());
        assert!(parse_margin("margin_before", "9d").is_err());
        assert_eq!(parse_margin("margin_before", "90m"), Ok(5400));
    }

    #[test]
    fn overlapping_events_merge_and_dst_gaps_move_forward() {
        let a = event("2026-03-29T01:00", "2026-03-29T03:30", "Europe/Berlin", false);
        let b = event("2026-03-29T02:30", "2026-03-29T05:00", "Europe/Berlin", false);
        let ex = Exclusions::for_kpi([&a, &b], &spec(""), 0, i64::MAX);
        // 01:00 CET = 00:00 UTC; 03:30 CEST = 01:30 UTC, where b starts (its 02:30 does not
        // exist and moves to 03:30 CEST); 05:00 CEST = 03:00 UTC.
        assert_eq!(
            ex.intervals(),
            &[(utc("2026-03-29T00:00:00Z"), utc("2026-03-29T03:00:00Z"))]
        );
    }

    const ICS: &str = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\n\
BEGIN:VEVENT\r\nUID:xmas@example.com\r\nSUMMARY:Christmas Day\r\nDTSTART;VALUE=DATE:20261225\r\n\
RRULE:FREQ=YEARLY\r\nEND:VEVENT\r\n\
BEGIN:VEVENT\r\nUID:mig@example.com\r\nSUMMARY:Planned migration\r\nDTSTART:20261103T220000Z\r\n\
DURATION:PT2H30M\r\nEND:VEVENT\r\n\
BEGIN:VEVENT\r\nUID:bf@example.com\r\nSUMMARY:Black Friday\r\nDTSTART;TZID=America/New_York:20261127T000000\r\n\
DTEND;TZID=America/New_York:20261128T000000\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";

    #[test]
    fn icalendar_events_read_all_day_utc_zoned_and_yearly_entries() {
        let defaults = event("2000-01-01", "2000-01-02", "Europe/Berlin", false);
        let events = parse_ical(ICS, &defaults).expect("parses");
        assert_eq!(events.len(), 3);
        let xmas = &events[0];
        assert_eq!(xmas.uid.as_deref(), Some("xmas@example.com"));
        assert_eq!(xmas.event.name, "Christmas Day");
        assert!(xmas.event.yearly);
        assert_eq!(xmas.event.start, parse_local("2026-12-25").expect("t"));
        assert_eq!(xmas.event.end, parse_local("2026-12-26").expect("t"));
        let mig = &events[1].event;
        assert_eq!(
            mig.occurrences(0, i64::MAX),
            vec![(utc("2026-11-03T22:00:00Z"), utc("2026-11-04T00:30:00Z"))]
        );
        let bf = &events[2].event;
        assert_eq!(
            bf.occurrences(0, i64::MAX),
            vec![(utc("2026-11-27T05:00:00Z"), utc("2026-11-28T05:00:00Z"))]
        );
    }

    #[test]
    fn unsupported_or_broken_icalendar_is_an_error_naming_the_event() {
        let defaults = event("2000-01-01", "2000-01-02", "UTC", false);
        let weekly = ICS.replace("RRULE:FREQ=YEARLY", "RRULE:FREQ=WEEKLY");
        let e = parse_ical(&weekly, &defaults).expect_err("weekly");
        assert!(
            e.0.contains("Christmas Day") && e.0.contains("FREQ=YEARLY"),
            "{e}"
        );
        assert!(parse_ical("hello", &defaults).is_err());
        let empty = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nEND:VCALENDAR\r\n";
        assert!(parse_ical(empty, &defaults)
            .expect_err("empty")
            .0
            .contains("VEVENT"));
    }
}
