//! SMS through the Twilio Messages API: one form-encoded
//! `POST /2010-04-01/Accounts/{AccountSid}/Messages.json` (`To`, `From`, `Body`) per
//! recipient, authenticated with HTTP basic auth `AccountSid:AuthToken`. A `from` starting
//! with `MG` is sent as `MessagingServiceSid` instead of `From`.
//!
//! Does no retries itself (the outbox worker retries). Every recipient is tried even if an
//! earlier one failed; the error names the failed ones and is retryable if any failure is.
//! A retry sends to every recipient again, so one who already got the SMS gets it twice:
//! configure one receiver per number where that matters.

use secrecy::{ExposeSecret, SecretString};

use super::{execute, exposed, truncate, BuildContext, DeliveryError, Endpoint, Event, Notification, Result};

const DEFAULT_URL: &str = "https://api.twilio.com";
/// Twilio accepts bodies up to 1600 characters (longer ones are rejected, not split).
const BODY_MAX: usize = 1600;

/// The config fields, borrowed.
#[derive(Debug)]
pub(super) struct TwilioSettings<'a> {
    pub(super) account_sid: &'a str,
    pub(super) auth_token: &'a SecretString,
    pub(super) from: &'a str,
    pub(super) to: &'a [String],
    pub(super) url: Option<&'a str>,
}

#[derive(Debug, Clone)]
pub(super) struct Twilio {
    client: reqwest::Client,
    messages: Endpoint,
    account_sid: String,
    auth_token: SecretString,
    from: String,
    to: Vec<String>,
}

impl Twilio {
    pub(super) fn build(cx: &BuildContext<'_>, s: TwilioSettings<'_>) -> Result<Self> {
        if s.account_sid.trim().is_empty() {
            return Err(cx.invalid("account_sid", "must not be empty"));
        }
        if s.auth_token.expose_secret().is_empty() {
            return Err(cx.invalid("auth_token", "must not be empty"));
        }
        if s.from.trim().is_empty() {
            return Err(cx.invalid("from", "must not be empty"));
        }
        if s.to.is_empty() || s.to.iter().any(|t| t.trim().is_empty()) {
            return Err(cx.invalid("to", "needs at least one number, and no empty ones"));
        }
        let base = cx.url("url", s.url.unwrap_or(DEFAULT_URL), false)?;
        let messages = cx.join(
            "url",
            base,
            &["2010-04-01", "Accounts", s.account_sid, "Messages.json"],
        )?;
        Ok(Twilio {
            client: cx.client.clone(),
            messages,
            account_sid: s.account_sid.to_owned(),
            auth_token: s.auth_token.clone(),
            from: s.from.to_owned(),
            to: s.to.to_vec(),
        })
    }

    pub(super) async fn send(&self, n: &Notification) -> Result<(), DeliveryError> {
        let body = sms_body(n);
        let from_field = if self.from.starts_with("MG") {
            "MessagingServiceSid"
        } else {
            "From"
        };
        let mut failures = Vec::new();
        for to in &self.to {
            let form = [
                ("To", to.as_str()),
                (from_field, self.from.as_str()),
                ("Body", body.as_str()),
            ];
            let req = self
                .client
                .post(self.messages.url())
                .basic_auth(&self.account_sid, Some(self.auth_token.expose_secret()))
                .form(&form);
            if let Err(e) = execute("twilio", req, &[exposed(&self.auth_token)]).await {
                failures.push((to, e));
            }
        }
        if failures.is_empty() {
            return Ok(());
        }
        let retryable = failures.iter().any(|(_, e)| e.retryable);
        let retry_after = failures.iter().filter_map(|(_, e)| e.retry_after).max();
        let detail = failures
            .iter()
            .map(|(to, e)| format!("{to}: {}", e.message.trim_start_matches("twilio: ")))
            .collect::<Vec<_>>()
            .join("; ");
        Err(DeliveryError {
            retryable,
            message: format!(
                "twilio: {} of {} recipients failed: {detail}",
                failures.len(),
                self.to.len()
            ),
            retry_after,
        })
    }
}

/// Short enough for one or two SMS segments in the common case; never over Twilio's limit.
/// A resolution says RESOLVED once: the summary's own `[RESOLVED]`, or a prefix if it has none.
fn sms_body(n: &Notification) -> String {
    let says_resolved = n.summary.to_ascii_uppercase().contains("RESOLVED");
    let text = match n.event {
        Event::Resolved if !says_resolved => format!("RESOLVED: {}\n{}", n.summary, n.links.kpi),
        _ => format!("{}\n{}", n.summary, n.links.kpi),
    };
    truncate(&text, BODY_MAX)
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{self, Server};
    use super::*;

    const CREATED: &str = r#"{"sid":"SM00000000000000000000000000000000","status":"queued"}"#;

    fn config(base: &str) -> String {
        format!(
            "type = \"twilio\"\naccount_sid = \"AC0123456789abcdef\"\nauth_token = \"authT0kenSecret\"\n\
             from = \"+15005550006\"\nto = [\"+4915112345678\", \"+15551234567\"]\nurl = \"{base}\""
        )
    }

    fn form(body: &[u8]) -> Vec<(String, String)> {
        url::form_urlencoded::parse(body).into_owned().collect()
    }

    #[tokio::test]
    async fn one_form_post_per_recipient_with_basic_auth() {
        let server = Server::start(&[(201, CREATED), (201, CREATED)]).await;
        let r = testkit::receiver(&config(&server.base));
        assert_eq!(r.kind(), "twilio");
        r.send(&testkit::notification(Event::Firing)).await.expect("sent");
        let reqs = server.requests();
        assert_eq!(reqs.len(), 2);
        // "AC0123456789abcdef:authT0kenSecret"
        let basic = "Basic QUMwMTIzNDU2Nzg5YWJjZGVmOmF1dGhUMGtlblNlY3JldA==";
        for (req, to) in reqs.iter().zip(["+4915112345678", "+15551234567"]) {
            assert_eq!(req.method, "POST");
            assert_eq!(req.path, "/2010-04-01/Accounts/AC0123456789abcdef/Messages.json");
            assert_eq!(req.header("authorization"), basic);
            assert_eq!(req.header("content-type"), "application/x-www-form-urlencoded");
            let fields = form(&req.body);
            assert!(fields.contains(&("To".to_owned(), to.to_owned())), "{fields:?}");
            assert!(fields.contains(&("From".to_owned(), "+15005550006".to_owned())));
            let body = &fields.iter().find(|(k, _)| k == "Body").expect("Body").1;
            assert!(body.starts_with("[CRITICAL] Payment success"), "{body}");
            assert!(
                body.ends_with("http://kpiwatch.test/#/kpi/pay_success?alert=7"),
                "{body}"
            );
        }
    }

    #[tokio::test]
    async fn a_resolved_sms_says_resolved_and_a_messaging_service_is_used_as_such() {
        let server = Server::start(&[]).await;
        let r = testkit::receiver(&format!(
            "type = \"twilio\"\naccount_sid = \"AC1\"\nauth_token = \"tok\"\nfrom = \"MG123\"\nto = [\"+15551234567\"]\nurl = \"{}\"",
            server.base
        ));
        r.send(&testkit::notification(Event::Resolved))
            .await
            .expect("sent");
        let fields = form(&server.requests()[0].body);
        assert!(fields.contains(&("MessagingServiceSid".to_owned(), "MG123".to_owned())));
        assert!(fields
            .iter()
            .any(|(k, v)| k == "Body" && v.starts_with("RESOLVED: ")));
    }

    #[test]
    fn a_resolved_sms_says_resolved_once() {
        let mut n = testkit::notification(Event::Resolved);
        n.summary = "[RESOLVED] Payment success is back in its band".to_owned();
        let body = sms_body(&n);
        assert_eq!(body.matches("RESOLVED").count(), 1, "{body}");
        assert!(body.starts_with("[RESOLVED] Payment success"), "{body}");
    }

    #[tokio::test]
    async fn a_failed_recipient_does_not_stop_the_others() {
        let server = Server::start(&[(400, r#"{"code":21211,"message":"Invalid 'To' Phone Number"}"#)]).await;
        let r = testkit::receiver(&config(&server.base));
        let err = r
            .send(&testkit::notification(Event::Firing))
            .await
            .expect_err("one failed");
        assert_eq!(server.requests().len(), 2);
        assert!(!err.retryable);
        assert!(
            err.message
                .starts_with("twilio: 1 of 2 recipients failed: +4915112345678: HTTP 400"),
            "{err:?}"
        );
    }

    #[test]
    fn an_empty_recipient_list_is_a_config_error() {
        let cfg: super::super::ReceiverConfig = toml::from_str(
            "type = \"twilio\"\naccount_sid = \"AC1\"\nauth_token = \"t\"\nfrom = \"+1\"\nto = []",
        )
        .expect("toml");
        let err =
            super::super::Receiver::build("sms", &cfg, reqwest::Client::new()).expect_err("no recipients");
        assert!(err.to_string().contains("to"));
    }

    #[test]
    fn the_sms_body_never_exceeds_twilios_limit() {
        let mut n = testkit::notification(Event::Firing);
        n.summary = "x".repeat(5000);
        assert_eq!(sms_body(&n).chars().count(), BODY_MAX);
    }

    #[tokio::test]
    async fn a_503_is_retryable_and_the_retry_succeeds() {
        testkit::check_503_then_200(|base| config(base).replace(", \"+15551234567\"", "")).await;
    }

    #[tokio::test]
    async fn a_400_is_final_and_its_message_holds_no_secret() {
        testkit::check_400_is_final_and_secret_free(config, "authT0kenSecret").await;
    }
}
