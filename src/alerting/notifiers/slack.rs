//! Slack incoming webhook: a Block Kit message (`blocks`: header, summary, value fields,
//! context, link buttons) with a plain `text` fallback for notifications and old clients.
//!
//! The webhook URL is the credential: it is kept secret and never appears in errors.
//! Makes one request per notification and does no retries itself (the outbox worker retries).

use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use super::{execute, truncate, BuildContext, DeliveryError, Endpoint, Event, Notification, Result};

// Block Kit limits: header text 150, section text 3000, field 2000, button label 75.
const HEADER_MAX: usize = 150;
const SECTION_MAX: usize = 3000;

#[derive(Debug, Clone)]
pub(super) struct Slack {
    client: reqwest::Client,
    webhook_url: Endpoint,
}

impl Slack {
    pub(super) fn build(cx: &BuildContext<'_>, webhook_url: &SecretString) -> Result<Self> {
        Ok(Slack {
            client: cx.client.clone(),
            webhook_url: cx.url("webhook_url", webhook_url.expose_secret(), true)?,
        })
    }

    pub(super) async fn send(&self, n: &Notification) -> Result<(), DeliveryError> {
        let req = self.client.post(self.webhook_url.url()).json(&message(n));
        execute("slack", req, &self.webhook_url.secrets()).await
    }
}

/// `&`, `<` and `>` are control characters in Slack's mrkdwn.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn message(n: &Notification) -> Value {
    let (status, emoji) = match n.event {
        Event::Firing => ("Firing", "\u{1f534}"),
        Event::Resolved => ("Resolved", "\u{2705}"),
    };
    let header = truncate(&format!("{emoji} {status}: {}", n.headline()), HEADER_MAX);
    let field = |name: &str, value: String| json!({ "type": "mrkdwn", "text": format!("*{name}*\n{}", escape(&value)) });
    let d = &n.display;
    let actual = if d.change.is_empty() {
        d.value.clone()
    } else {
        format!("{} ({})", d.value, d.change)
    };
    let mut fields = vec![
        field("Actual", actual),
        field("Expected", d.expected.clone()),
        field("Band", d.band.clone()),
        field("Volume", d.volume.clone()),
        field("Severity", n.severity.clone()),
        field("Owner", n.owner.clone().unwrap_or_else(|| "-".to_owned())),
    ];
    if !n.series.is_empty() {
        fields.push(field("Series", n.series_label()));
    }
    let mut context = format!(
        "KPI `{}` · since {}",
        escape(&n.kpi_id),
        n.started_at.format("%Y-%m-%d %H:%M UTC")
    );
    if let Some(at) = n.resolved_at {
        context.push_str(&format!(" · resolved {}", at.format("%Y-%m-%d %H:%M UTC")));
    }
    let button = |id: &str, label: &str, url: &str| {
        json!({
            "type": "button",
            "action_id": id,
            "text": { "type": "plain_text", "text": label },
            "url": url,
        })
    };
    let mut buttons = vec![button("kpi", "Open in kpiwatch", &n.links.kpi)];
    if n.event == Event::Firing {
        if let Some(url) = &n.links.ack {
            buttons.push(button("ack", "Acknowledge", url));
        }
        if let Some(url) = &n.links.silence {
            buttons.push(button("silence", "Silence", url));
        }
    }
    json!({
        "text": format!("{status}: {}", escape(&n.summary)),
        "blocks": [
            { "type": "header", "text": { "type": "plain_text", "text": header, "emoji": true } },
            { "type": "section", "text": { "type": "mrkdwn", "text": truncate(&escape(&n.summary), SECTION_MAX) } },
            { "type": "section", "fields": fields },
            { "type": "context", "elements": [ { "type": "mrkdwn", "text": context } ] },
            { "type": "actions", "elements": buttons },
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{self, Server};
    use super::*;

    fn config(base: &str) -> String {
        format!("type = \"slack\"\nwebhook_url = \"{base}/services/T000/B000/XXXXXXXXsecretXXXXXXXXXX\"")
    }

    #[tokio::test]
    async fn a_block_kit_message_with_fallback_text_goes_to_the_webhook_url() {
        let server = Server::start(&[(200, "ok")]).await;
        let r = testkit::receiver(&config(&server.base));
        assert_eq!(r.kind(), "slack");
        r.send(&testkit::notification(Event::Firing)).await.expect("sent");
        let req = &server.requests()[0];
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/services/T000/B000/XXXXXXXXsecretXXXXXXXXXX");
        assert_eq!(req.header("content-type"), "application/json");
        let body = req.json();
        assert!(body["text"]
            .as_str()
            .expect("text")
            .starts_with("Firing: [CRITICAL] Payment success"));
        let blocks = body["blocks"].as_array().expect("blocks");
        assert_eq!(blocks[0]["type"], "header");
        assert_eq!(blocks[0]["text"]["type"], "plain_text");
        assert!(blocks[0]["text"]["text"]
            .as_str()
            .expect("header")
            .contains("Payment success (country=DE)"));
        assert_eq!(blocks[1]["text"]["type"], "mrkdwn");
        let fields = blocks[2]["fields"].as_array().expect("fields");
        assert_eq!(fields[0]["text"], "*Actual*\n40.00% (-57.0 points)");
        assert_eq!(fields[1]["text"], "*Expected*\n97.00%");
        assert_eq!(fields[2]["text"], "*Band*\n90.00% – 100.00%");
        assert_eq!(blocks[3]["type"], "context");
        let buttons = blocks[4]["elements"].as_array().expect("buttons");
        assert_eq!(
            buttons[0]["url"],
            "http://kpiwatch.test/#/kpi/pay_success?alert=7"
        );
        assert_eq!(buttons[1]["url"], "http://kpiwatch.test/alerts/7/ack");
    }

    #[tokio::test]
    async fn a_resolved_message_says_so_and_drops_the_ack_button() {
        let server = Server::start(&[]).await;
        let r = testkit::receiver(&config(&server.base));
        r.send(&testkit::notification(Event::Resolved))
            .await
            .expect("sent");
        let body = server.requests()[0].json();
        assert!(body["text"].as_str().expect("text").starts_with("Resolved: "));
        assert!(body["blocks"][0]["text"]["text"]
            .as_str()
            .expect("header")
            .contains("Resolved"));
        assert_eq!(body["blocks"][4]["elements"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn mrkdwn_control_characters_are_escaped_and_the_header_fits() {
        let mut n = testkit::notification(Event::Firing);
        n.summary = "a < b & c > d".to_owned();
        n.kpi_title = "x".repeat(400);
        let m = message(&n);
        assert_eq!(m["blocks"][1]["text"]["text"], "a &lt; b &amp; c &gt; d");
        assert!(
            m["blocks"][0]["text"]["text"]
                .as_str()
                .expect("header")
                .chars()
                .count()
                <= HEADER_MAX
        );
    }

    #[tokio::test]
    async fn a_503_is_retryable_and_the_retry_succeeds() {
        testkit::check_503_then_200(config).await;
    }

    #[tokio::test]
    async fn a_400_is_final_and_its_message_holds_no_secret() {
        testkit::check_400_is_final_and_secret_free(config, "XXXXXXXXsecretXXXXXXXXXX").await;
    }
}
