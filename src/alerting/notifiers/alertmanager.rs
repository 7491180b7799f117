//! Prometheus Alertmanager API v2: `POST {url}/api/v2/alerts` with a JSON array holding one
//! alert (`labels`, `annotations`, `startsAt`, `endsAt`, `generatorURL`).
//!
//! Alertmanager identifies an alert by its label set, so firing and resolved carry the same
//! labels: `alertname` (the KPI id), `kpi`, `severity`, `fingerprint`, `owner`, the KPI's
//! labels and the series' dimensions (names sanitised to `[a-zA-Z_][a-zA-Z0-9_]*`; the
//! fixed ones win a clash). Resolved = `endsAt` set to the resolution time. A firing alert
//! gets `endsAt` = now + `firing_ttl_seconds` (default 24 h) because kpiwatch sends it
//! once, and Alertmanager would otherwise resolve it after its `resolve_timeout` (5 min).
//!
//! Makes one request per notification and does no retries itself (the outbox worker retries).

use std::collections::BTreeMap;

use chrono::{SecondsFormat, Utc};
use serde_json::json;

use super::{execute, BuildContext, DeliveryError, Endpoint, Event, Notification, Result};

const DEFAULT_FIRING_TTL_SECONDS: u64 = 24 * 3600;

#[derive(Debug, Clone)]
pub(super) struct Alertmanager {
    client: reqwest::Client,
    alerts: Endpoint,
    firing_ttl: chrono::Duration,
}

impl Alertmanager {
    pub(super) fn build(cx: &BuildContext<'_>, url: &str, firing_ttl_seconds: Option<u64>) -> Result<Self> {
        // The URL may hold basic-auth credentials: errors do not repeat it.
        let base = cx.url("url", url, true)?;
        let seconds = firing_ttl_seconds.unwrap_or(DEFAULT_FIRING_TTL_SECONDS);
        let firing_ttl = i64::try_from(seconds)
            .ok()
            .filter(|s| (60..=366 * 24 * 3600).contains(s))
            .map(chrono::Duration::seconds)
            .ok_or_else(|| cx.invalid("firing_ttl_seconds", "must be between 60 and 31622400"))?;
        Ok(Alertmanager {
            client: cx.client.clone(),
            alerts: cx.join("url", base, &["api", "v2", "alerts"])?,
            firing_ttl,
        })
    }

    pub(super) async fn send(&self, n: &Notification) -> Result<(), DeliveryError> {
        let ends_at = match (n.event, n.resolved_at) {
            (Event::Resolved, Some(at)) => at,
            (Event::Resolved, None) => Utc::now(),
            (Event::Firing, _) => Utc::now() + self.firing_ttl,
        };
        let ts = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
        let mut annotations = BTreeMap::from([
            ("summary".to_owned(), n.summary.clone()),
            ("description".to_owned(), n.text.clone()),
            ("value".to_owned(), n.display.value.clone()),
            ("expected".to_owned(), n.display.expected.clone()),
            ("change".to_owned(), n.display.change.clone()),
            ("band".to_owned(), n.display.band.clone()),
            ("volume".to_owned(), n.display.volume.clone()),
            ("kpi_title".to_owned(), n.kpi_title.clone()),
        ]);
        if let Some(url) = &n.links.ack {
            annotations.insert("ack_url".to_owned(), url.clone());
        }
        if let Some(url) = &n.links.silence {
            annotations.insert("silence_url".to_owned(), url.clone());
        }
        let body = json!([{
            "labels": labels(n),
            "annotations": annotations,
            "startsAt": ts(n.started_at),
            "endsAt": ts(ends_at),
            "generatorURL": n.links.kpi,
        }]);
        let req = self.client.post(self.alerts.url()).json(&body);
        execute("alertmanager", req, &self.alerts.secrets()).await
    }
}

/// A valid Prometheus label name: invalid characters become `_`, a leading digit gets `_`.
fn label_name(raw: &str) -> String {
    let mut name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    name
}

fn labels(n: &Notification) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    for (k, v) in n.labels.iter().chain(&n.series) {
        // Alertmanager reserves `__`-prefixed names.
        let name = label_name(k);
        if !name.starts_with("__") {
            labels.insert(name, v.clone());
        }
    }
    labels.insert("alertname".to_owned(), n.kpi_id.clone());
    labels.insert("kpi".to_owned(), n.kpi_id.clone());
    labels.insert("severity".to_owned(), n.severity.clone());
    labels.insert("fingerprint".to_owned(), n.fingerprint.clone());
    if let Some(owner) = &n.owner {
        labels.insert("owner".to_owned(), owner.clone());
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{self, Server};
    use super::*;

    fn config(base: &str) -> String {
        // Basic auth in the URL (reqwest sends it as `Authorization: Basic`).
        let base = base.replace("http://", "http://kpiwatch:amPassw0rd@");
        format!("type = \"alertmanager\"\nurl = \"{base}/am/\"")
    }

    #[tokio::test]
    async fn firing_then_resolved_post_the_same_labels_and_resolved_sets_ends_at() {
        let server = Server::start(&[]).await;
        let r = testkit::receiver(&config(&server.base));
        assert_eq!(r.kind(), "alertmanager");
        r.send(&testkit::notification(Event::Firing))
            .await
            .expect("firing");
        r.send(&testkit::notification(Event::Resolved))
            .await
            .expect("resolved");
        let reqs = server.requests();
        for req in &reqs {
            assert_eq!(req.method, "POST");
            assert_eq!(req.path, "/am/api/v2/alerts");
            // "kpiwatch:amPassw0rd", from the URL's user info.
            assert_eq!(req.header("authorization"), "Basic a3Bpd2F0Y2g6YW1QYXNzdzByZA==");
            assert_eq!(req.header("content-type"), "application/json");
        }
        let (fire, resolve) = (reqs[0].json(), reqs[1].json());
        assert_eq!(fire.as_array().map(Vec::len), Some(1));
        let alert = &fire[0];
        assert_eq!(alert["labels"]["alertname"], "pay_success");
        assert_eq!(alert["labels"]["severity"], "critical");
        assert_eq!(alert["labels"]["country"], "DE");
        assert_eq!(alert["labels"]["team"], "payments");
        assert_eq!(alert["labels"]["fingerprint"], "pay_success/3f2a9c");
        assert_eq!(alert["annotations"]["expected"], "97.00%");
        assert_eq!(alert["startsAt"], "2026-11-24T09:00:00Z");
        assert_eq!(
            alert["generatorURL"],
            "http://kpiwatch.test/#/kpi/pay_success?alert=7"
        );
        let ends: chrono::DateTime<Utc> = alert["endsAt"]
            .as_str()
            .expect("endsAt")
            .parse()
            .expect("RFC 3339");
        assert!(
            ends > Utc::now() + chrono::Duration::hours(23),
            "firing must not expire soon: {ends}"
        );

        assert_eq!(resolve[0]["labels"], alert["labels"]);
        assert_eq!(resolve[0]["endsAt"], "2026-11-24T12:00:00Z");
    }

    #[test]
    fn label_names_are_made_valid() {
        assert_eq!(label_name("page-type"), "page_type");
        assert_eq!(label_name("1st"), "_1st");
        assert_eq!(label_name(""), "_");
        let mut n = testkit::notification(Event::Firing);
        n.series.insert("severity".to_owned(), "spoofed".to_owned());
        n.series.insert("__name__".to_owned(), "x".to_owned());
        let labels = labels(&n);
        assert_eq!(labels["severity"], "critical");
        assert!(!labels.contains_key("__name__"));
    }

    #[test]
    fn a_silly_firing_ttl_is_a_config_error() {
        let cfg: super::super::ReceiverConfig =
            toml::from_str("type = \"alertmanager\"\nurl = \"http://am:9093\"\nfiring_ttl_seconds = 5")
                .expect("toml");
        assert!(super::super::Receiver::build("am", &cfg, reqwest::Client::new()).is_err());
    }

    #[tokio::test]
    async fn a_503_is_retryable_and_the_retry_succeeds() {
        testkit::check_503_then_200(config).await;
    }

    #[tokio::test]
    async fn a_400_is_final_and_its_message_holds_no_secret() {
        testkit::check_400_is_final_and_secret_free(config, "amPassw0rd").await;
    }
}
