//! Opsgenie Alert API v2: firing creates an alert (`POST /v2/alerts`) with `alias` = the
//! notification's fingerprint (Opsgenie de-duplicates open alerts on it, so a retried create
//! is harmless); resolution closes it (`POST /v2/alerts/{alias}/close?identifierType=alias`).
//! Authenticated with `Authorization: GenieKey <api_key>`.
//!
//! Makes one request per notification and does no retries itself (the outbox worker retries).

use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use super::{execute, exposed, truncate, BuildContext, DeliveryError, Endpoint, Event, Notification, Result};

const DEFAULT_URL: &str = "https://api.opsgenie.com";
// Opsgenie's limits.
const MESSAGE_MAX: usize = 130;
const ALIAS_MAX: usize = 512;
const DESCRIPTION_MAX: usize = 15_000;
const TAG_MAX: usize = 50;
const TAGS_MAX: usize = 20;

#[derive(Debug, Clone)]
pub(super) struct Opsgenie {
    client: reqwest::Client,
    alerts: Endpoint,
    api_key: SecretString,
}

impl Opsgenie {
    pub(super) fn build(cx: &BuildContext<'_>, api_key: &SecretString, url: Option<&str>) -> Result<Self> {
        if api_key.expose_secret().trim().is_empty() {
            return Err(cx.invalid("api_key", "must not be empty"));
        }
        let base = cx.url("url", url.unwrap_or(DEFAULT_URL), false)?;
        Ok(Opsgenie {
            client: cx.client.clone(),
            alerts: cx.join("url", base, &["v2", "alerts"])?,
            api_key: api_key.clone(),
        })
    }

    pub(super) async fn send(&self, n: &Notification) -> Result<(), DeliveryError> {
        let alias = alias(n);
        let (what, url, body) = match n.event {
            Event::Firing => ("opsgenie create", self.alerts.url(), create(n, &alias)),
            Event::Resolved => {
                let mut url = self.alerts.url();
                // `alerts` came from `join`, so it can be a base; `push` percent-encodes.
                if let Ok(mut path) = url.path_segments_mut() {
                    path.push(&alias).push("close");
                }
                url.query_pairs_mut().append_pair("identifierType", "alias");
                let note = match n.resolved_at {
                    Some(at) => format!("Back in band since {}.", at.format("%Y-%m-%d %H:%M UTC")),
                    None => "Back in band.".to_owned(),
                };
                (
                    "opsgenie close",
                    url,
                    json!({ "source": "kpiwatch", "note": note }),
                )
            }
        };
        let key = self.api_key.expose_secret();
        let mut auth = reqwest::header::HeaderValue::from_str(&format!("GenieKey {key}")).map_err(|_| {
            DeliveryError {
                retryable: false,
                message: "opsgenie: the api_key is not a valid header value".to_owned(),
                retry_after: None,
            }
        })?;
        auth.set_sensitive(true);
        let req = self
            .client
            .post(url)
            .header(reqwest::header::AUTHORIZATION, auth)
            .json(&body);
        let mut secrets = self.alerts.secrets();
        secrets.push(exposed(&self.api_key));
        execute(what, req, &secrets).await
    }
}

fn alias(n: &Notification) -> String {
    n.fingerprint.chars().take(ALIAS_MAX).collect()
}

/// `critical` → P1, `warning` → P3, `info` → P5.
fn priority(severity: &str) -> &'static str {
    match severity {
        "critical" => "P1",
        "error" => "P2",
        "info" => "P5",
        _ => "P3",
    }
}

fn create(n: &Notification, alias: &str) -> Value {
    let mut tags: Vec<String> = vec!["kpiwatch".to_owned(), n.severity.clone()];
    tags.extend(
        n.labels
            .iter()
            .map(|(k, v)| truncate(&format!("{k}:{v}"), TAG_MAX)),
    );
    tags.truncate(TAGS_MAX);
    let mut details = serde_json::Map::new();
    for (k, v) in &n.series {
        details.insert(k.clone(), json!(v));
    }
    for (k, v) in [
        ("kpi", n.kpi_id.clone()),
        ("value", n.display.value.clone()),
        ("expected", n.display.expected.clone()),
        ("change", n.display.change.clone()),
        ("band", n.display.band.clone()),
        ("volume", n.display.volume.clone()),
        ("started_at", n.started_at.to_rfc3339()),
        ("kpi_url", n.links.kpi.clone()),
    ] {
        details.insert(k.to_owned(), json!(v));
    }
    let mut body = json!({
        "message": truncate(&n.summary, MESSAGE_MAX),
        "alias": alias,
        "description": truncate(&n.text, DESCRIPTION_MAX),
        "tags": tags,
        "details": details,
        "entity": n.kpi_id,
        "source": "kpiwatch",
        "priority": priority(&n.severity),
    });
    if let Some(owner) = &n.owner {
        body["details"]["owner"] = json!(owner);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{self, Server};
    use super::*;

    const ACCEPTED: &str = r#"{"result":"Request will be processed","took":0.1,"requestId":"43a29c5c"}"#;

    fn config(base: &str) -> String {
        format!("type = \"opsgenie\"\napi_key = \"eb243592-faa2-4ba2-a551q-1afdf565c889\"\nurl = \"{base}/\"")
    }

    #[tokio::test]
    async fn firing_creates_by_alias_and_resolving_closes_by_alias() {
        let server = Server::start(&[(202, ACCEPTED), (202, ACCEPTED)]).await;
        let r = testkit::receiver(&config(&server.base));
        assert_eq!(r.kind(), "opsgenie");
        r.send(&testkit::notification(Event::Firing))
            .await
            .expect("create");
        r.send(&testkit::notification(Event::Resolved))
            .await
            .expect("close");
        let reqs = server.requests();
        for req in &reqs {
            assert_eq!(req.method, "POST");
            assert_eq!(
                req.header("authorization"),
                "GenieKey eb243592-faa2-4ba2-a551q-1afdf565c889"
            );
            assert_eq!(req.header("content-type"), "application/json");
        }
        assert_eq!(reqs[0].path, "/v2/alerts");
        assert_eq!(reqs[0].query, None);
        let create = reqs[0].json();
        assert_eq!(create["alias"], "pay_success/3f2a9c");
        assert_eq!(create["priority"], "P1");
        assert_eq!(create["entity"], "pay_success");
        assert_eq!(create["details"]["country"], "DE");
        assert_eq!(create["details"]["owner"], "payments");
        assert!(create["tags"]
            .as_array()
            .expect("tags")
            .contains(&json!("team:payments")));
        assert!(create["message"].as_str().expect("message").chars().count() <= MESSAGE_MAX);

        assert_eq!(reqs[1].path, "/v2/alerts/pay_success%2F3f2a9c/close");
        assert_eq!(reqs[1].query.as_deref(), Some("identifierType=alias"));
        assert_eq!(reqs[1].json()["source"], "kpiwatch");
    }

    #[test]
    fn the_message_is_cut_to_130_characters_and_priority_follows_severity() {
        let mut n = testkit::notification(Event::Firing);
        n.summary = "é".repeat(300);
        let body = create(&n, "a");
        assert_eq!(body["message"].as_str().map(|m| m.chars().count()), Some(130));
        assert_eq!(priority("warning"), "P3");
        assert_eq!(priority("info"), "P5");
    }

    #[tokio::test]
    async fn a_503_is_retryable_and_the_retry_succeeds() {
        testkit::check_503_then_200(config).await;
    }

    #[tokio::test]
    async fn a_400_is_final_and_its_message_holds_no_secret() {
        testkit::check_400_is_final_and_secret_free(config, "eb243592-faa2-4ba2-a551q-1afdf565c889").await;
    }
}
