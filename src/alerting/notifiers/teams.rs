//! Microsoft Teams incoming webhook (classic connector or Workflows "post to a channel when
//! a webhook request is received"): a `message` whose single attachment is an Adaptive Card
//! (`contentType: application/vnd.microsoft.card.adaptive`, card version 1.4).
//!
//! The webhook URL is the credential: it is kept secret and never appears in errors.
//! Makes one request per notification and does no retries itself (the outbox worker retries).

use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use super::{execute, BuildContext, DeliveryError, Endpoint, Event, Notification, Result};

#[derive(Debug, Clone)]
pub(super) struct Teams {
    client: reqwest::Client,
    webhook_url: Endpoint,
}

impl Teams {
    pub(super) fn build(cx: &BuildContext<'_>, webhook_url: &SecretString) -> Result<Self> {
        Ok(Teams {
            client: cx.client.clone(),
            webhook_url: cx.url("webhook_url", webhook_url.expose_secret(), true)?,
        })
    }

    pub(super) async fn send(&self, n: &Notification) -> Result<(), DeliveryError> {
        let req = self.client.post(self.webhook_url.url()).json(&message(n));
        execute("teams", req, &self.webhook_url.secrets()).await
    }
}

fn message(n: &Notification) -> Value {
    let (status, color) = match n.event {
        Event::Firing => ("Firing", "Attention"),
        Event::Resolved => ("Resolved", "Good"),
    };
    let fact = |title: &str, value: String| json!({ "title": title, "value": value });
    let d = &n.display;
    let actual = if d.change.is_empty() {
        d.value.clone()
    } else {
        format!("{} ({})", d.value, d.change)
    };
    let mut facts = vec![
        fact("Actual", actual),
        fact("Expected", d.expected.clone()),
        fact("Band", d.band.clone()),
        fact("Volume", d.volume.clone()),
        fact("Severity", n.severity.clone()),
        fact("Owner", n.owner.clone().unwrap_or_else(|| "-".to_owned())),
        fact("KPI", n.kpi_id.clone()),
        fact("Since", n.started_at.format("%Y-%m-%d %H:%M UTC").to_string()),
    ];
    if !n.series.is_empty() {
        facts.insert(0, fact("Series", n.series_label()));
    }
    if let Some(at) = n.resolved_at {
        facts.push(fact("Resolved", at.format("%Y-%m-%d %H:%M UTC").to_string()));
    }
    let open = |title: &str, url: &str| json!({ "type": "Action.OpenUrl", "title": title, "url": url });
    let mut actions = vec![open("Open in kpiwatch", &n.links.kpi)];
    if n.event == Event::Firing {
        if let Some(url) = &n.links.ack {
            actions.push(open("Acknowledge", url));
        }
        if let Some(url) = &n.links.silence {
            actions.push(open("Silence", url));
        }
    }
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "msteams": { "width": "Full" },
                "body": [
                    {
                        "type": "TextBlock",
                        "text": format!("{status}: {}", n.headline()),
                        "size": "Large",
                        "weight": "Bolder",
                        "color": color,
                        "wrap": true,
                    },
                    { "type": "TextBlock", "text": n.summary, "wrap": true },
                    { "type": "FactSet", "facts": facts },
                ],
                "actions": actions,
            },
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{self, Server};
    use super::*;

    fn config(base: &str) -> String {
        format!("type = \"teams\"\nwebhook_url = \"{base}/webhookb2/abc@def/IncomingWebhook/t0ps3cret/xyz\"")
    }

    #[tokio::test]
    async fn an_adaptive_card_goes_in_the_attachments_envelope() {
        let server = Server::start(&[(202, "")]).await;
        let r = testkit::receiver(&config(&server.base));
        assert_eq!(r.kind(), "teams");
        r.send(&testkit::notification(Event::Firing))
            .await
            .expect("202 is success");
        let req = &server.requests()[0];
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/webhookb2/abc@def/IncomingWebhook/t0ps3cret/xyz");
        assert_eq!(req.header("content-type"), "application/json");
        let body = req.json();
        assert_eq!(body["type"], "message");
        let attachment = &body["attachments"][0];
        assert_eq!(
            attachment["contentType"],
            "application/vnd.microsoft.card.adaptive"
        );
        let card = &attachment["content"];
        assert_eq!(card["type"], "AdaptiveCard");
        assert_eq!(card["version"], "1.4");
        assert_eq!(card["body"][0]["type"], "TextBlock");
        assert_eq!(card["body"][0]["color"], "Attention");
        assert_eq!(card["body"][0]["text"], "Firing: Payment success (country=DE)");
        let facts = card["body"][2]["facts"].as_array().expect("facts");
        assert!(facts.contains(&json!({ "title": "Actual", "value": "40.00% (-57.0 points)" })));
        assert!(facts.contains(&json!({ "title": "Series", "value": "country=DE" })));
        assert_eq!(card["actions"][0]["type"], "Action.OpenUrl");
        assert_eq!(
            card["actions"][0]["url"],
            "http://kpiwatch.test/#/kpi/pay_success?alert=7"
        );
    }

    #[tokio::test]
    async fn a_resolved_card_is_green() {
        let server = Server::start(&[]).await;
        let r = testkit::receiver(&config(&server.base));
        r.send(&testkit::notification(Event::Resolved))
            .await
            .expect("sent");
        let card = &server.requests()[0].json()["attachments"][0]["content"];
        assert_eq!(card["body"][0]["color"], "Good");
        assert!(card["body"][0]["text"]
            .as_str()
            .expect("text")
            .starts_with("Resolved: "));
    }

    #[tokio::test]
    async fn a_503_is_retryable_and_the_retry_succeeds() {
        testkit::check_503_then_200(config).await;
    }

    #[tokio::test]
    async fn a_400_is_final_and_its_message_holds_no_secret() {
        testkit::check_400_is_final_and_secret_free(config, "t0ps3cret").await;
    }
}
