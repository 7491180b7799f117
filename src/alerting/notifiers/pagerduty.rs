//! PagerDuty Events API v2: `trigger` on firing and `resolve` on resolution, both with
//! `dedup_key` = the notification's fingerprint, so the resolve closes the incident the
//! trigger opened and a retried trigger does not open a second one.
//!
//! Makes one request per notification and does no retries itself (the outbox worker retries).

use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use super::{execute, exposed, truncate, BuildContext, DeliveryError, Endpoint, Event, Notification, Result};

const DEFAULT_URL: &str = "https://events.pagerduty.com/v2/enqueue";
/// PagerDuty's limits: `payload.summary` 1024 characters, `dedup_key` 255.
const SUMMARY_MAX: usize = 1024;
const DEDUP_KEY_MAX: usize = 255;

#[derive(Debug, Clone)]
pub(super) struct Pagerduty {
    client: reqwest::Client,
    url: Endpoint,
    routing_key: SecretString,
}

impl Pagerduty {
    pub(super) fn build(
        cx: &BuildContext<'_>,
        routing_key: &SecretString,
        url: Option<&str>,
    ) -> Result<Self> {
        if routing_key.expose_secret().trim().is_empty() {
            return Err(cx.invalid("routing_key", "must not be empty"));
        }
        Ok(Pagerduty {
            client: cx.client.clone(),
            url: cx.url("url", url.unwrap_or(DEFAULT_URL), false)?,
            routing_key: routing_key.clone(),
        })
    }

    pub(super) async fn send(&self, n: &Notification) -> Result<(), DeliveryError> {
        let body = event(n, self.routing_key.expose_secret());
        let req = self.client.post(self.url.url()).json(&body);
        let mut secrets = self.url.secrets();
        secrets.push(exposed(&self.routing_key));
        execute("pagerduty", req, &secrets).await
    }
}

/// PagerDuty knows `critical`, `error`, `warning` and `info`.
fn severity(s: &str) -> &'static str {
    match s {
        "critical" => "critical",
        "error" => "error",
        "info" => "info",
        _ => "warning",
    }
}

/// A stable key within PagerDuty's 255 characters (long fingerprints are cut; they are
/// hashes or ids in practice).
fn dedup_key(n: &Notification) -> String {
    n.fingerprint.chars().take(DEDUP_KEY_MAX).collect()
}

fn event(n: &Notification, routing_key: &str) -> Value {
    match n.event {
        Event::Resolved => json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": dedup_key(n),
        }),
        Event::Firing => {
            let mut links = vec![json!({ "href": n.links.kpi, "text": "Open in kpiwatch" })];
            if let Some(href) = &n.links.ack {
                links.push(json!({ "href": href, "text": "Acknowledge in kpiwatch" }));
            }
            if let Some(href) = &n.links.silence {
                links.push(json!({ "href": href, "text": "Silence in kpiwatch" }));
            }
            let mut event = json!({
                "routing_key": routing_key,
                "event_action": "trigger",
                "dedup_key": dedup_key(n),
                "client": "kpiwatch",
                "client_url": n.links.kpi,
                "payload": {
                    "summary": truncate(&n.summary, SUMMARY_MAX),
                    "source": n.kpi_id,
                    "severity": severity(&n.severity),
                    "timestamp": n.bucket_at.to_rfc3339(),
                    "component": n.kpi_title,
                    "class": "kpi_anomaly",
                    "custom_details": {
                        "series": n.series,
                        "labels": n.labels,
                        "value": n.reading.value,
                        "expected": n.reading.band.expected,
                        "lower": n.reading.band.lower,
                        "upper": n.reading.band.upper,
                        "volume": n.volume,
                        "started_at": n.started_at.to_rfc3339(),
                        "display": {
                            "value": n.display.value,
                            "expected": n.display.expected,
                            "band": n.display.band,
                            "change": n.display.change,
                        },
                        "text": n.text,
                    },
                },
                "links": links,
            });
            // Optional fields are left out rather than sent as null.
            if let Some(owner) = &n.owner {
                event["payload"]["group"] = json!(owner);
            }
            event
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{self, Server};
    use super::*;

    const ACCEPTED: &str =
        r#"{"status":"success","message":"Event processed","dedup_key":"pay_success/3f2a9c"}"#;

    fn config(base: &str) -> String {
        format!("type = \"pagerduty\"\nrouting_key = \"R0UTINGKEY0123456789\"\nurl = \"{base}/v2/enqueue\"")
    }

    #[tokio::test]
    async fn a_trigger_then_a_resolve_share_the_dedup_key() {
        let server = Server::start(&[(202, ACCEPTED), (202, ACCEPTED)]).await;
        let r = testkit::receiver(&config(&server.base));
        assert_eq!(r.kind(), "pagerduty");
        r.send(&testkit::notification(Event::Firing))
            .await
            .expect("trigger");
        r.send(&testkit::notification(Event::Resolved))
            .await
            .expect("resolve");
        let reqs = server.requests();
        for req in &reqs {
            assert_eq!(req.method, "POST");
            assert_eq!(req.path, "/v2/enqueue");
            assert_eq!(req.header("content-type"), "application/json");
        }
        let trigger = reqs[0].json();
        assert_eq!(trigger["routing_key"], "R0UTINGKEY0123456789");
        assert_eq!(trigger["event_action"], "trigger");
        assert_eq!(trigger["dedup_key"], "pay_success/3f2a9c");
        assert_eq!(trigger["payload"]["severity"], "critical");
        assert_eq!(trigger["payload"]["source"], "pay_success");
        assert_eq!(trigger["payload"]["group"], "payments");
        assert!(trigger["payload"]["summary"]
            .as_str()
            .expect("summary")
            .contains("Payment success"));
        assert_eq!(trigger["payload"]["timestamp"], "2026-11-24T10:00:00+00:00");
        assert_eq!(trigger["payload"]["custom_details"]["series"]["country"], "DE");
        assert_eq!(trigger["payload"]["custom_details"]["expected"], 0.97);
        assert_eq!(
            trigger["links"][0]["href"],
            "http://kpiwatch.test/#/kpi/pay_success?alert=7"
        );
        assert_eq!(trigger["links"][0]["text"], "Open in kpiwatch");

        let resolve = reqs[1].json();
        assert_eq!(resolve["event_action"], "resolve");
        assert_eq!(resolve["dedup_key"], "pay_success/3f2a9c");
        assert_eq!(resolve["routing_key"], "R0UTINGKEY0123456789");
    }

    #[test]
    fn severities_map_onto_pagerdutys_four() {
        assert_eq!(severity("critical"), "critical");
        assert_eq!(severity("warning"), "warning");
        assert_eq!(severity("info"), "info");
        assert_eq!(severity("whatever"), "warning");
    }

    #[test]
    fn the_default_endpoint_is_the_public_enqueue_url() {
        let r = testkit::receiver("type = \"pagerduty\"\nrouting_key = \"abc\"");
        assert!(format!("{r:?}").contains("events.pagerduty.com"));
        assert!(!format!("{r:?}").contains("\"abc\""));
    }

    #[tokio::test]
    async fn a_503_is_retryable_and_the_retry_succeeds() {
        testkit::check_503_then_200(config).await;
    }

    #[tokio::test]
    async fn a_400_is_final_and_its_message_holds_no_secret() {
        testkit::check_400_is_final_and_secret_free(config, "R0UTINGKEY0123456789").await;
    }
}
