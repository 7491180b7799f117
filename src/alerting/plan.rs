//! Pure alert planning: what a run's judged buckets do to one incident, decided without IO.
//!
//! [`plan`] threads the incident that is open when the run starts (an [`AlertRow`], or none)
//! through the judged buckets with [`lifecycle::step`] and returns the ordered [`Write`]s:
//! each an alert row to upsert, with the lifecycle event to record, if any. The caller
//! (`pipeline`) loads the inputs once, calls [`plan`] and stores the writes in order; a write
//! of an alert opened in the same plan carries id 0 and takes the id the store gave it
//! ([`Write::opens`] says when a new row starts). The messages of an event need the alert's id
//! (for the acknowledge and silence links), so they are rendered after the save by
//! [`Write::notifications`], again pure, from a [`Delivery`] (who is told, and whether now).
//!
//! Backtests use the same [`plan`] for the alerts a setting would have fired (they need the
//! events, not the messages).
//!
//! Knows nothing of the store, sources or the detector's internals.

use super::lifecycle::{self, Event, Rule};
use super::receivers::{Receivers, Target};
use super::{BucketVerdict, LinkSigner, MessageContext, Outgoing};
use crate::kpi::KpiSpec;
use crate::store::{AlertRow, NewNotification};

/// One bucket as the alert lifecycle sees it.
#[derive(Debug, Clone)]
pub struct Judged {
    /// Bucket start.
    pub t: i64,
    /// The verdict messages speak of (the total's, or the worst slice's), flagged and open as
    /// the group is.
    pub verdict: BucketVerdict,
    /// The series it belongs to (`{}` for the total).
    pub dims: String,
    /// Slices outside their band, worst first (`payment_method=card`).
    pub affected: Vec<String>,
    /// "Payment success -5.3 points; payment_method=card -17.0 points explains 96%".
    pub cause: Option<String>,
}

impl Judged {
    /// A bucket of a series that alerts on its own.
    pub fn alone(t: i64, verdict: BucketVerdict, dims: &str) -> Self {
        Judged {
            t,
            verdict,
            dims: dims.to_owned(),
            affected: Vec::new(),
            cause: None,
        }
    }
}

/// What [`plan`] decides from.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    /// The KPI (title and formats for the summary, severity, identity).
    pub spec: &'a KpiSpec,
    /// The series the incident is stored under (the total for a grouped incident).
    pub series_id: i64,
    /// Its dimension values (JSON): with the KPI, the incident's fingerprint.
    pub dims: &'a str,
    /// The judged buckets, in time order.
    pub judged: &'a [Judged],
    /// The incident open before the first of them, if any.
    pub open: Option<AlertRow>,
    /// Trigger and recovery.
    pub rule: Rule,
}

/// One alert row to store, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    /// The bucket (an index into [`Input::judged`]) that caused it.
    pub bucket: usize,
    /// The row. Its id is 0 when the alert was opened by this plan: the store gives it one
    /// on the write that [`opens`](Self::opens) it, and the later writes of the plan are
    /// about that alert until it closes.
    pub row: AlertRow,
    /// A new alert (an insert): the previous one, if any, was closed by an earlier write.
    pub opens: bool,
    /// The lifecycle event to record and tell people about, if any.
    pub event: Option<Event>,
    /// For a resolution: the first in-band bucket of the streak that resolved it.
    pub recovered_since: Option<i64>,
}

/// Run the lifecycle of the incident of series `input.dims` over the judged buckets: the rows
/// to store, in order. The open incident is threaded through the buckets (the store is read
/// once, by the caller, before).
pub fn plan(input: &Input<'_>) -> Vec<Write> {
    let spec = input.spec;
    let grid = spec.buckets();
    let fp = super::fingerprint("anomaly", spec, input.dims);
    let mut open = input.open.clone();
    let mut writes = Vec::new();
    for (bucket, j) in input.judged.iter().enumerate() {
        let v = &j.verdict;
        let incident = open.as_ref().map(super::incident_of);
        let severity = super::severity_for(spec, v);
        let bucket_end = grid.end(j.t);
        // The open row's `ok_streak` counts the in-band buckets before this one.
        let recovered_since = open.as_ref().map(|o| grid.back(j.t, o.ok_streak));
        let (mut row, event, still_open) =
            match lifecycle::step(incident.as_ref(), v, &input.rule, severity, bucket_end) {
                lifecycle::Step::Nothing => continue,
                lifecycle::Step::Open(inc, event) | lifecycle::Step::Update(inc, event) => {
                    let base = open.clone().unwrap_or_else(|| {
                        AlertRow::new(spec.id.as_str(), Some(input.series_id), "anomaly", &fp, j.t)
                    });
                    (super::row_of(&inc, base), event, true)
                }
                lifecycle::Step::Close { resolved, event } => {
                    let Some(current) = open.clone() else { continue };
                    let state = if resolved { "resolved" } else { "cancelled" };
                    let row = AlertRow {
                        state: state.to_owned(),
                        resolved_ts: Some(j.t),
                        ..current
                    };
                    (row, event, false)
                }
            };
        if v.anomaly {
            row.summary = summary(spec, j);
        }
        let opens = open.is_none();
        open = still_open.then(|| row.clone());
        writes.push(Write {
            bucket,
            row,
            opens,
            event,
            recovered_since,
        });
    }
    writes
}

/// What a run does to its KPI's data-missing incident (the source down or too slow for
/// [`DATA_MISSING_AFTER_BUCKETS`](crate::pipeline) buckets): the row to store and its event.
#[derive(Debug, Clone, PartialEq)]
pub struct DataMissingWrite {
    /// The incident row (id 0 for a new one).
    pub row: AlertRow,
    /// `Firing` for a new incident, `Resolved` when the data is back.
    pub event: Event,
}

/// Plan the data-missing incident of `spec` at `now`: `failing` is the source's error while it
/// has been behind since `since` for long enough to page (`None` once a run got data).
/// A new incident fires when none is open; an open one resolves when the data is back;
/// otherwise nothing changes (one page per outage, one resolution).
pub fn plan_data_missing(
    spec: &KpiSpec,
    open: Option<&AlertRow>,
    failing: Option<&str>,
    since: i64,
    now: i64,
) -> Option<DataMissingWrite> {
    match (open, failing) {
        (None, Some(error)) => {
            let fp = super::fingerprint("data_missing", spec, "{}");
            Some(DataMissingWrite {
                row: AlertRow {
                    state: "firing".to_owned(),
                    severity: spec.severity.to_string(),
                    last_anomaly_ts: now,
                    notified_at: Some(now),
                    summary: error.to_owned(),
                    ..AlertRow::new(spec.id.as_str(), None, "data_missing", &fp, since)
                },
                event: Event::Firing,
            })
        }
        (Some(open), None) => Some(DataMissingWrite {
            row: AlertRow {
                state: "resolved".to_owned(),
                resolved_ts: Some(now),
                ..open.clone()
            },
            event: Event::Resolved,
        }),
        _ => None,
    }
}

/// The alert's explanation line for an anomalous bucket: "Orders at …: 0 (-100%) vs 120
/// expected, far below (90 to 150)".
fn summary(spec: &KpiSpec, j: &Judged) -> String {
    let v = &j.verdict;
    let fmt = crate::format::ValueFormat::of(spec);
    let series = crate::format::series_label(&j.dims);
    let mut out = format!(
        "{}{} at {}: {}{} vs {} expected, {} ({})",
        spec.title,
        if series.is_empty() {
            String::new()
        } else {
            format!(" ({series})")
        },
        super::message::fmt_ts(j.t),
        fmt.value(v.reading.value),
        fmt.change(v.reading.value, v.reading.band.expected)
            .map(|c| format!(" ({c})"))
            .unwrap_or_default(),
        fmt.value(v.reading.band.expected),
        crate::format::distance(&v.reading),
        fmt.band(v.reading.band),
    );
    if let Some(cause) = &j.cause {
        out.push_str(&format!(". {cause}"));
    }
    out
}

/// Who is told about a series' alerts, and whether now: everything a message needs besides
/// the alert's id.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    /// Named receivers (their templates).
    pub receivers: &'a Receivers,
    /// Who hears about it.
    pub targets: &'a [Target],
    /// Why the messages are recorded but not sent (inhibition, a silence, maintenance).
    pub suppressed_by: Option<&'a str>,
    /// Grouping key (see [`super::group_key`]).
    pub group_key: &'a str,
    /// Base URL for links.
    pub public_url: &'a str,
    /// Signs the acknowledge and silence links.
    pub signer: &'a LinkSigner,
    /// Not before this time (group wait), unix seconds.
    pub not_before: i64,
}

impl Write {
    /// The messages of this write's event (none without one) about alert `id` (the id the
    /// store gave the row), one per target.
    pub fn notifications(&self, input: &Input<'_>, id: i64, d: &Delivery<'_>) -> Vec<NewNotification> {
        let (Some(event), Some(j)) = (self.event, input.judged.get(self.bucket)) else {
            return Vec::new();
        };
        let spec = input.spec;
        let row = AlertRow {
            id,
            ..self.row.clone()
        };
        let resolved = event == Event::Resolved;
        let links = (!resolved).then(|| {
            (
                d.signer.ack_url(d.public_url, id),
                d.signer.silence_url(d.public_url, id),
            )
        });
        let (ack_url, silence_url) = links.unzip();
        let message_cx = MessageContext {
            spec,
            dims: &j.dims,
            verdict: &j.verdict,
            cause: j.cause.as_deref(),
            affected: &j.affected,
            since: row.started_ts,
            recovered_since: self.recovered_since,
            severity: row.severity.parse().unwrap_or(spec.severity),
            public_url: d.public_url,
            alert_id: Some(id),
            ack_url: ack_url.clone(),
            silence_url: silence_url.clone(),
        };
        let (subject, body) = super::message::message(&message_cx, event);
        let payload = super::payload(
            spec,
            &j.dims,
            &row,
            Some(&j.verdict),
            resolved,
            d.public_url,
            (ack_url, silence_url),
        );
        let event_name = event.name();
        let out = Outgoing {
            event: &event_name,
            subject: &subject,
            body: &body,
            payload: &payload,
            suppressed_by: d.suppressed_by,
            group_key: d.group_key,
            not_before: d.not_before,
        };
        super::notifications(d.receivers, d.targets, out)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::kpi::Severity;

    fn spec() -> KpiSpec {
        KpiSpec::parse(
            "orders",
            "title = \"Orders\"\nsource = \"s\"\nkind = \"count\"\ninterval = \"5m\"\ndirection = \"down\"",
            "SELECT 1 WHERE :start < :end",
            Path::new("m"),
        )
        .expect("valid")
    }

    const RULE: Rule = Rule {
        fire_n: 1,
        fire_m: 1,
        recover_k: 2,
        repeat_secs: Some(3600),
    };

    /// 5-minute buckets from `t0`: `Some(value)` judged against 100 expected (anomalous
    /// below 90), `None` not judged.
    fn buckets(t0: i64, values: &[Option<f64>]) -> Vec<Judged> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let t = t0 + i as i64 * 300;
                let mut verdict = BucketVerdict::plain(
                    t,
                    v.unwrap_or(100.0),
                    100.0,
                    90.0,
                    110.0,
                    v.is_some_and(|v| v < 90.0),
                );
                verdict.judged = v.is_some();
                Judged::alone(t, verdict, "{}")
            })
            .collect()
    }

    fn input<'a>(spec: &'a KpiSpec, judged: &'a [Judged], open: Option<AlertRow>) -> Input<'a> {
        Input {
            spec,
            series_id: 3,
            dims: "{}",
            judged,
            open,
            rule: RULE,
        }
    }

    fn events(writes: &[Write]) -> Vec<Event> {
        writes.iter().filter_map(|w| w.event).collect()
    }

    /// Store the writes as the pipeline does: a row opened by the plan gets the next id,
    /// later writes of the plan are about it.
    fn store(writes: &[Write], next_id: &mut i64) -> Vec<AlertRow> {
        let mut current = 0;
        writes
            .iter()
            .map(|w| {
                let mut row = w.row.clone();
                if w.opens {
                    *next_id += 1;
                    row.id = *next_id;
                } else if row.id == 0 {
                    row.id = current;
                }
                current = row.id;
                row
            })
            .collect()
    }

    #[test]
    fn an_anomaly_run_fires_once_and_resolves_once() {
        let spec = spec();
        let t0 = 1_774_958_400;
        let judged = buckets(
            t0,
            &[
                Some(100.0),
                Some(40.0),
                Some(30.0),
                None,
                Some(50.0),
                Some(100.0),
                Some(101.0),
                Some(99.0),
            ],
        );
        let writes = plan(&input(&spec, &judged, None));
        assert_eq!(events(&writes), [Event::Firing, Event::Resolved]);
        // In-band before the incident and unjudged buckets write nothing; every bucket of the
        // open incident does.
        assert_eq!(
            writes.iter().map(|w| w.bucket).collect::<Vec<_>>(),
            [1, 2, 4, 5, 6]
        );
        assert!(writes[0].opens && writes[1..].iter().all(|w| !w.opens));
        assert!(writes.iter().all(|w| w.row.id == 0), "the store gives the id");
        let first = &writes[0].row;
        assert_eq!((first.state.as_str(), first.started_ts), ("firing", t0 + 300));
        assert!(first.summary.starts_with("Orders at "), "{}", first.summary);
        let last = &writes[4];
        assert_eq!(last.row.state, "resolved");
        assert_eq!(last.row.resolved_ts, Some(t0 + 6 * 300));
        assert_eq!(last.row.last_anomaly_ts, t0 + 4 * 300);
        assert_eq!(
            last.recovered_since,
            Some(t0 + 5 * 300),
            "the streak's first bucket"
        );
        assert_eq!(
            last.row.summary, writes[2].row.summary,
            "the last anomaly explains it"
        );
    }

    #[test]
    fn a_suppressed_incident_is_recorded_without_being_sent() {
        let spec = spec();
        let judged = buckets(1_774_958_400, &[Some(20.0), Some(100.0), Some(100.0)]);
        let inp = input(&spec, &judged, None);
        let writes = plan(&inp);
        assert_eq!(events(&writes), [Event::Firing, Event::Resolved]);
        let receivers = Receivers::default();
        let targets = receivers.targets(&["oncall@example.com".to_owned()], &[]);
        let signer = LinkSigner::new("secret");
        let delivery = Delivery {
            receivers: &receivers,
            targets: &targets,
            suppressed_by: Some("silence 4"),
            group_key: "kpi=orders",
            public_url: "https://kpi.example.com",
            signer: &signer,
            not_before: 1_774_958_700,
        };
        let fired = writes[0].notifications(&inp, 42, &delivery);
        assert_eq!(fired.len(), 1);
        let n = &fired[0];
        assert_eq!(
            n.suppressed_by.as_deref(),
            Some("silence 4"),
            "recorded, not sent"
        );
        assert_eq!(
            (n.channel.as_str(), n.recipient.as_str()),
            ("email", "oncall@example.com")
        );
        assert!(
            n.body.contains(&signer.ack_url("https://kpi.example.com", 42)),
            "{}",
            n.body
        );
        let resolved = writes[2].notifications(&inp, 42, &delivery);
        assert_eq!(resolved[0].suppressed_by.as_deref(), Some("silence 4"));
        assert!(
            !resolved[0].body.contains("/ack/"),
            "no acknowledging a resolution"
        );
        assert!(
            writes[1].notifications(&inp, 42, &delivery).is_empty(),
            "no event, no message"
        );
        let unsuppressed = Delivery {
            suppressed_by: None,
            ..delivery
        };
        assert_eq!(
            writes[0].notifications(&inp, 42, &unsuppressed)[0].suppressed_by,
            None
        );
    }

    #[test]
    fn a_long_incident_re_notifies_and_an_escalation_notifies_at_once() {
        let spec = spec();
        // 80 is anomalous at the model's severity, 10 is 90% off: critical.
        let mut values = vec![Some(80.0); 14];
        values.push(Some(10.0));
        let judged = buckets(1_774_958_400, &values);
        let writes = plan(&input(&spec, &judged, None));
        assert_eq!(
            events(&writes),
            [
                Event::Firing,
                Event::Repeat(1),
                Event::Escalated(Severity::Critical)
            ]
        );
        let repeat = writes
            .iter()
            .find(|w| w.event == Some(Event::Repeat(1)))
            .expect("repeat");
        assert_eq!(repeat.bucket, 12, "an hour after firing");
        let last = writes.last().expect("writes");
        assert_eq!((last.row.severity.as_str(), last.row.repeats), ("critical", 1));
    }

    #[test]
    fn the_open_alert_of_one_run_carries_into_the_next_without_firing_again() {
        let spec = spec();
        let t0 = 1_774_958_400;
        let judged = buckets(t0, &[Some(100.0), Some(20.0), Some(30.0)]);
        let first = plan(&input(&spec, &judged, None));
        let mut ids = 6;
        let stored = store(&first, &mut ids);
        let open = stored.last().cloned().expect("open");
        assert_eq!((open.id, open.state.as_str()), (7, "firing"));

        let judged = buckets(t0 + 900, &[Some(25.0), Some(100.0), Some(100.0), Some(20.0)]);
        let second = plan(&input(&spec, &judged, Some(open.clone())));
        assert_eq!(
            events(&second),
            [Event::Resolved, Event::Firing],
            "no second firing for the open alert; a new one after it resolved"
        );
        assert!(!second[0].opens && second[0].row.id == 7);
        assert_eq!(second[0].row.started_ts, open.started_ts);
        let stored = store(&second, &mut ids);
        assert_eq!(stored.iter().map(|r| r.id).collect::<Vec<_>>(), [7, 7, 7, 8]);
        assert_eq!(stored[2].state, "resolved");
        assert!(second[3].opens && second[3].row.started_ts == t0 + 6 * 300);

        // The same buckets again (a re-run over them): the open alert is only updated.
        let again = plan(&input(&spec, &judged[..1], Some(open)));
        assert!(events(&again).is_empty());
        assert_eq!(again.len(), 1);
        assert!(!again[0].opens);
    }

    #[test]
    fn an_acknowledged_alert_is_not_repeated() {
        let spec = spec();
        let t0 = 1_774_958_400;
        let judged = buckets(t0, &[Some(20.0)]);
        let mut open = store(&plan(&input(&spec, &judged, None)), &mut 0)
            .pop()
            .expect("open");
        open.acknowledged_by = Some("ana".to_owned());
        let judged = buckets(t0 + 300, &[Some(20.0); 20]);
        let writes = plan(&input(&spec, &judged, Some(open)));
        assert!(events(&writes).is_empty());
        assert!(writes
            .iter()
            .all(|w| w.row.acknowledged_by.as_deref() == Some("ana")));
    }

    #[test]
    fn a_data_missing_incident_fires_once_per_outage_and_resolves_when_data_is_back() {
        let spec = spec();
        let t0 = 1_700_000_100;
        // The source has been down since t0: it fires, from t0, with the error as summary.
        let fired = plan_data_missing(&spec, None, Some("connection refused"), t0, t0 + 900).expect("fires");
        assert_eq!(fired.event, Event::Firing);
        assert_eq!(fired.row.state, "firing");
        assert_eq!(fired.row.kind, "data_missing");
        assert_eq!(fired.row.started_ts, t0);
        assert_eq!(fired.row.summary, "connection refused");
        assert_eq!(fired.row.series_id, None);
        // Still down a run later: nothing new (no second page).
        let open = AlertRow {
            id: 7,
            ..fired.row.clone()
        };
        assert_eq!(
            plan_data_missing(&spec, Some(&open), Some("connection refused"), t0, t0 + 1200),
            None
        );
        // Data back: the same incident resolves, keeping its start.
        let back = plan_data_missing(&spec, Some(&open), None, t0 + 1500, t0 + 1500).expect("resolves");
        assert_eq!(back.event, Event::Resolved);
        assert_eq!((back.row.id, back.row.state.as_str()), (7, "resolved"));
        assert_eq!((back.row.started_ts, back.row.resolved_ts), (t0, Some(t0 + 1500)));
        // Data and no incident: nothing.
        assert_eq!(plan_data_missing(&spec, None, None, t0, t0), None);
    }
}
