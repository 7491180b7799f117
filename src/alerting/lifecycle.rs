//! The incident lifecycle of one series, as a pure state machine:
//! `pending → firing → resolved`, or `pending → cancelled` when the trigger rule is not met.
//!
//! - Trigger: fire when `fire_n` of the last `fire_m` judged buckets are anomalous (`1 of 1`
//!   fires on the first). Until then the incident is pending and sends nothing.
//! - Recovery: `recover_k` consecutive judged buckets that are not flagged and after which the
//!   detector no longer holds an incident open ([`BucketVerdict::outside`]) resolve it. The
//!   detector closes its incident only on evidence that the level is back (a likelihood ratio
//!   of the baseline against the incident's own level), so a drop at low volume, whose buckets
//!   often land inside a wide band, stays one open incident until the rate has recovered.
//! - While firing: a message again every `repeat` (unless acknowledged), and when the
//!   severity escalates.
//!
//! Buckets that were not judged (warming up, low volume, missing) change nothing.

use crate::kpi::Severity;

use super::BucketVerdict;

/// The trigger and recovery rule of a KPI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Anomalous buckets needed…
    pub fire_n: u32,
    /// …among this many recent judged buckets (at most 32).
    pub fire_m: u32,
    /// In-band buckets that resolve.
    pub recover_k: u32,
    /// Re-send while firing, in seconds (`None`: never).
    pub repeat_secs: Option<i64>,
}

/// Where an open incident stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Seen, not yet confirmed by the trigger rule; nothing sent.
    Pending,
    /// Confirmed; people were told.
    Firing,
}

/// An open incident.
#[derive(Debug, Clone, PartialEq)]
pub struct Incident {
    /// Pending or firing.
    pub phase: Phase,
    /// Current severity.
    pub severity: Severity,
    /// First anomalous bucket.
    pub started_ts: i64,
    /// Latest anomalous bucket.
    pub last_anomaly_ts: i64,
    /// Flags of the last `fire_m` judged buckets, newest in bit 0.
    pub hits_mask: u32,
    /// Judged buckets since it opened.
    pub seen: u32,
    /// Consecutive in-band buckets.
    pub ok_streak: u32,
    /// When the last message went out (bucket end, unix seconds).
    pub notified_at: Option<i64>,
    /// Repeat messages sent.
    pub repeats: u32,
    /// Someone acknowledged it: no more repeats.
    pub acknowledged: bool,
}

/// A message to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// It fired.
    Firing,
    /// Still firing (the n-th reminder).
    Repeat(u32),
    /// The severity went up.
    Escalated(Severity),
    /// Back in band.
    Resolved,
}

impl Event {
    /// Stable name, unique per incident: `firing`, `repeat-2`, `escalated-critical`, `resolved`.
    pub fn name(self) -> String {
        match self {
            Event::Firing => "firing".to_owned(),
            Event::Repeat(n) => format!("repeat-{n}"),
            Event::Escalated(s) => format!("escalated-{s}"),
            Event::Resolved => "resolved".to_owned(),
        }
    }
}

/// What a bucket does to the incident.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing to record.
    Nothing,
    /// Open a new incident.
    Open(Incident, Option<Event>),
    /// Update the open incident.
    Update(Incident, Option<Event>),
    /// Close it: resolved (with a message if it had fired) or cancelled (pending, never met
    /// the trigger rule).
    Close {
        /// `true` = resolved, `false` = cancelled.
        resolved: bool,
        /// The message, if any.
        event: Option<Event>,
    },
}

fn window_mask(m: u32) -> u32 {
    if m >= 32 {
        u32::MAX
    } else {
        (1u32 << m.max(1)) - 1
    }
}

/// Advance the lifecycle by one bucket. `severity` is the severity this bucket warrants;
/// `bucket_end` is the bucket's end (the lifecycle's notion of now).
pub fn step(
    open: Option<&Incident>,
    v: &BucketVerdict,
    rule: &Rule,
    severity: Severity,
    bucket_end: i64,
) -> Step {
    if !v.judged && !v.anomaly {
        return Step::Nothing;
    }
    let Some(current) = open else {
        if !v.anomaly {
            return Step::Nothing;
        }
        let fires = rule.fire_n <= 1;
        let incident = Incident {
            phase: if fires { Phase::Firing } else { Phase::Pending },
            severity,
            // Where the shift began, by the detector's estimate: often before the bucket
            // whose accumulated evidence fired.
            started_ts: v.since.map_or(v.ts, |s| s.min(v.ts)),
            last_anomaly_ts: v.ts,
            hits_mask: 1,
            seen: 1,
            ok_streak: 0,
            notified_at: fires.then_some(bucket_end),
            repeats: 0,
            acknowledged: false,
        };
        return Step::Open(incident, fires.then_some(Event::Firing));
    };
    let mut next = current.clone();
    match next.phase {
        Phase::Pending => {
            next.hits_mask = ((next.hits_mask << 1) | u32::from(v.anomaly)) & window_mask(rule.fire_m);
            next.seen += 1;
            if v.anomaly {
                next.last_anomaly_ts = v.ts;
                next.severity = next.severity.max(severity);
            }
            if next.hits_mask.count_ones() >= rule.fire_n {
                next.phase = Phase::Firing;
                next.notified_at = Some(bucket_end);
                Step::Update(next, Some(Event::Firing))
            } else if next.hits_mask == 0 {
                Step::Close {
                    resolved: false,
                    event: None,
                }
            } else {
                Step::Update(next, None)
            }
        }
        Phase::Firing if v.anomaly => {
            next.ok_streak = 0;
            next.last_anomaly_ts = v.ts;
            if severity > next.severity {
                next.severity = severity;
                next.notified_at = Some(bucket_end);
                return Step::Update(next, Some(Event::Escalated(severity)));
            }
            let due = match (rule.repeat_secs, next.notified_at) {
                (Some(every), Some(last)) => bucket_end - last >= every,
                _ => false,
            };
            if due && !next.acknowledged {
                next.repeats += 1;
                next.notified_at = Some(bucket_end);
                let n = next.repeats;
                return Step::Update(next, Some(Event::Repeat(n)));
            }
            Step::Update(next, None)
        }
        Phase::Firing if v.outside => {
            next.ok_streak = 0;
            Step::Update(next, None)
        }
        Phase::Firing => {
            next.ok_streak += 1;
            if next.ok_streak >= rule.recover_k {
                Step::Close {
                    resolved: true,
                    event: Some(Event::Resolved),
                }
            } else {
                Step::Update(next, None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(ts: i64, anomaly: bool) -> BucketVerdict {
        BucketVerdict::plain(ts, 0.0, 1.0, 0.5, 1.5, anomaly)
    }

    const ONE: Rule = Rule {
        fire_n: 1,
        fire_m: 1,
        recover_k: 2,
        repeat_secs: Some(3600),
    };

    /// Run buckets of 5 minutes through the lifecycle; collect the events.
    fn run(rule: &Rule, flags: &[bool], severities: &[Severity]) -> (Vec<Event>, Option<Incident>) {
        let mut open: Option<Incident> = None;
        let mut events = Vec::new();
        for (i, &flag) in flags.iter().enumerate() {
            let ts = i as i64 * 300;
            let sev = severities.get(i).copied().unwrap_or(Severity::Warning);
            match step(open.as_ref(), &v(ts, flag), rule, sev, ts + 300) {
                Step::Nothing => {}
                Step::Open(inc, ev) | Step::Update(inc, ev) => {
                    open = Some(inc);
                    events.extend(ev);
                }
                Step::Close { event, .. } => {
                    open = None;
                    events.extend(event);
                }
            }
        }
        (events, open)
    }

    #[test]
    fn one_of_one_fires_at_once_and_resolves_after_k_good_buckets() {
        let (events, open) = run(&ONE, &[true, true, false, true, false, false, false], &[]);
        assert_eq!(events, vec![Event::Firing, Event::Resolved]);
        assert!(open.is_none());
    }

    #[test]
    fn n_of_m_waits_in_pending_and_cancels_when_the_flags_age_out() {
        let rule = Rule {
            fire_n: 2,
            fire_m: 3,
            ..ONE
        };
        let (events, open) = run(&rule, &[true, false, false, false], &[]);
        assert!(events.is_empty(), "one flag in three never fires: {events:?}");
        assert!(open.is_none(), "cancelled once the flag left the window");
        let (events, _) = run(&rule, &[true, false, true], &[]);
        assert_eq!(events, vec![Event::Firing]);
    }

    #[test]
    fn a_long_incident_repeats_unless_acknowledged_and_escalation_re_notifies() {
        // 15 anomalous 5-minute buckets = 75 minutes: one repeat after an hour.
        let (events, open) = run(&ONE, &[true; 15], &[]);
        assert_eq!(events, vec![Event::Firing, Event::Repeat(1)]);
        let mut acked = open.expect("still open");
        acked.acknowledged = true;
        let later = step(Some(&acked), &v(100_000, true), &ONE, Severity::Warning, 100_300);
        assert!(matches!(later, Step::Update(_, None)), "{later:?}");
        let (events, _) = run(&ONE, &[true, true], &[Severity::Warning, Severity::Critical]);
        assert_eq!(events, vec![Event::Firing, Event::Escalated(Severity::Critical)]);
    }

    #[test]
    fn a_bucket_still_outside_the_band_keeps_the_incident_open() {
        let rule = Rule { recover_k: 1, ..ONE };
        let Step::Open(open, _) = step(None, &v(0, true), &rule, Severity::Warning, 300) else {
            panic!("opens")
        };
        let mut below = v(300, false);
        below.outside = true;
        assert!(matches!(
            step(Some(&open), &below, &rule, Severity::Warning, 600),
            Step::Update(_, None)
        ));
        assert!(matches!(
            step(Some(&open), &v(300, false), &rule, Severity::Warning, 600),
            Step::Close { resolved: true, .. }
        ));
    }

    #[test]
    fn unjudged_buckets_change_nothing() {
        let mut w = v(0, false);
        w.judged = false;
        assert_eq!(step(None, &w, &ONE, Severity::Info, 300), Step::Nothing);
    }
}
