//! Alert delivery channels ("receivers") for the notification outbox.
//!
//! - [`Notification`] is the plain data every channel renders from.
//! - [`ReceiverConfig`] is the `#[serde(tag = "type")]` config of one named receiver;
//!   [`Receiver::build`] validates it (URLs, recipients, header names) into a [`Receiver`].
//! - [`Receiver::send`] makes the HTTP call(s) for one notification and classifies a failure
//!   as [`DeliveryError`] with `retryable` set for connect errors, timeouts, 408, 429 and 5xx.
//! - [`backoff`] is the delay the outbox worker waits before the next attempt.
//!
//! This module does **no retries itself**: the outbox worker calls [`Receiver::send`] and, on a
//! retryable error, tries again after [`backoff`]. Wire formats live one file per channel:
//! `webhook` (generic, signed JSON), `slack`, `teams`, `pagerduty`, `opsgenie`, `twilio` (SMS)
//! and `alertmanager`. See `docs/RECEIVERS.md` for configuration and the webhook schema.
//!
//! An IO edge: uses only `reqwest`, `serde` and the crypto crates, nothing else in the crate.
//! Secrets stay in [`SecretString`]s; neither `Debug` output nor error messages contain them.

mod alertmanager;
mod opsgenie;
mod pagerduty;
mod slack;
mod teams;
mod twilio;
mod webhook;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::reading::Reading;

pub use webhook::{verify_webhook_signature, webhook_signature, SCHEMA_VERSION};

/// How long one HTTP request (connect to last body byte) may take before it counts as a
/// retryable timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Longest excerpt of a receiver's error response kept in [`DeliveryError::message`].
const BODY_EXCERPT_CHARS: usize = 200;

/// A receiver's config could not be turned into a [`Receiver`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is invalid. The message never repeats a secret value.
    #[error("receiver {receiver:?}: {field}: {reason}")]
    Invalid {
        /// The receiver's name.
        receiver: String,
        /// The offending setting.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One failed delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    /// Worth trying again later (connect error, timeout, 408, 429, 5xx).
    pub retryable: bool,
    /// What went wrong: the HTTP status and a short excerpt of the response body, or the
    /// transport error. Never contains a secret (keys, tokens, secret webhook URLs).
    pub message: String,
    /// The receiver asked us to wait this long (`Retry-After` on a 429 or 503); the worker
    /// should wait at least this, and at least [`backoff`].
    pub retry_after: Option<Duration>,
}

/// Firing or resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// The series left its band: open an incident.
    Firing,
    /// The series is back in its band: close the incident with the same fingerprint.
    Resolved,
}

impl Event {
    /// `"firing"` or `"resolved"`, as used in the webhook schema.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Firing => "firing",
            Event::Resolved => "resolved",
        }
    }
}

/// Links a message can carry.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Links {
    /// The KPI's page in the web UI, focused on this incident.
    pub kpi: String,
    /// Acknowledge the alert, if the deployment exposes that.
    pub ack: Option<String>,
    /// Silence the series, if the deployment exposes that.
    pub silence: Option<String>,
}

/// What every channel renders from: one state change of one alert on one series.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// Firing or resolved.
    pub event: Event,
    /// Stable per series (KPI + dimension values); the dedup key / alias for incident tools,
    /// so the resolve closes the incident the firing opened.
    pub fingerprint: String,
    /// The KPI's id.
    pub kpi_id: String,
    /// The KPI's human title.
    pub kpi_title: String,
    /// Dimension values of the series; empty for an undimensioned KPI.
    pub series: BTreeMap<String, String>,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// Owning team or person.
    pub owner: Option<String>,
    /// The KPI's labels.
    pub labels: BTreeMap<String, String>,
    /// One line: what happened.
    pub summary: String,
    /// Plain-text body with the details.
    pub text: String,
    /// Observed value and its band.
    pub reading: Reading,
    /// Volume behind the bucket (count, or the ratio's denominator).
    pub volume: f64,
    /// When the incident started (first anomalous bucket).
    pub started_at: DateTime<Utc>,
    /// Start of the bucket that caused this notification.
    pub bucket_at: DateTime<Utc>,
    /// When the incident resolved; set for [`Event::Resolved`].
    pub resolved_at: Option<DateTime<Utc>>,
    /// Links to put in the message.
    pub links: Links,
    /// The numbers as people read them, formatted upstream with the KPI's kind and unit.
    pub display: Display,
}

/// The numbers of a [`Notification`] for people: `40.00%`, `1,234 EUR`, `-57.0 points`. The
/// raw numbers stay in [`Notification`] for machines (webhook, PagerDuty details).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Display {
    /// Observed value.
    pub value: String,
    /// Expected value.
    pub expected: String,
    /// The band, `lower – upper`.
    pub band: String,
    /// How far the value is from the expected one (`-57.0 points`, `+21.8%`); may be empty.
    pub change: String,
    /// The volume behind the bucket, with separators.
    pub volume: String,
}

impl Notification {
    /// `key=value, key=value` of the series' dimensions, or `""` for none.
    fn series_label(&self) -> String {
        self.series
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Title and series, e.g. `Payment success (country=DE)`.
    fn headline(&self) -> String {
        if self.series.is_empty() {
            self.kpi_title.clone()
        } else {
            format!("{} ({})", self.kpi_title, self.series_label())
        }
    }
}

/// Settings of one named receiver, e.g. `[receivers.oncall] type = "pagerduty"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ReceiverConfig {
    /// Generic JSON webhook (schema version [`SCHEMA_VERSION`]), HMAC-signed when `secret` is set.
    Webhook {
        /// Where to POST.
        url: String,
        /// Key for the `X-Kpiwatch-Signature` HMAC-SHA256 header.
        secret: Option<SecretString>,
        /// Extra request headers (e.g. `Authorization`); values are treated as secrets.
        #[serde(default)]
        headers: BTreeMap<String, SecretString>,
    },
    /// Slack incoming webhook (Block Kit).
    Slack {
        /// `https://hooks.slack.com/services/…`; the URL itself is the credential.
        webhook_url: SecretString,
    },
    /// Microsoft Teams incoming webhook / Workflows URL (Adaptive Card).
    Teams {
        /// The webhook URL; the URL itself is the credential.
        webhook_url: SecretString,
    },
    /// PagerDuty Events API v2.
    Pagerduty {
        /// The integration's routing key.
        routing_key: SecretString,
        /// Enqueue endpoint; default `https://events.pagerduty.com/v2/enqueue`.
        url: Option<String>,
    },
    /// Opsgenie Alert API v2.
    Opsgenie {
        /// API integration key (`Authorization: GenieKey …`).
        api_key: SecretString,
        /// API base; default `https://api.opsgenie.com` (EU: `https://api.eu.opsgenie.com`).
        url: Option<String>,
    },
    /// SMS through the Twilio Messages API, one message per recipient.
    Twilio {
        /// Account SID (`AC…`), the basic-auth user.
        account_sid: String,
        /// Auth token, the basic-auth password.
        auth_token: SecretString,
        /// Sender number (E.164) or messaging service.
        from: String,
        /// Recipient numbers (E.164).
        to: Vec<String>,
        /// API base; default `https://api.twilio.com`.
        url: Option<String>,
    },
    /// Prometheus Alertmanager API v2.
    Alertmanager {
        /// Alertmanager base URL, e.g. `http://alertmanager:9093`.
        url: String,
        /// `endsAt` of a firing alert is now + this many seconds (default 86400), so that
        /// Alertmanager does not auto-resolve it after its `resolve_timeout`; the resolve
        /// sets `endsAt` to the resolution time.
        firing_ttl_seconds: Option<u64>,
    },
}

/// A built, validated receiver. Cheap to clone; `Debug` never prints secrets.
#[derive(Debug, Clone)]
pub struct Receiver {
    name: String,
    channel: Channel,
}

/// The closed set of channels.
#[derive(Debug, Clone)]
enum Channel {
    Webhook(webhook::Webhook),
    Slack(slack::Slack),
    Teams(teams::Teams),
    Pagerduty(pagerduty::Pagerduty),
    Opsgenie(opsgenie::Opsgenie),
    Twilio(twilio::Twilio),
    Alertmanager(alertmanager::Alertmanager),
}

impl Receiver {
    /// Validate `cfg` and build the receiver `name`; all its requests go through `client`.
    pub fn build(name: &str, cfg: &ReceiverConfig, client: reqwest::Client) -> Result<Self> {
        let cx = BuildContext { name, client };
        let channel = match cfg {
            ReceiverConfig::Webhook { url, secret, headers } => {
                Channel::Webhook(webhook::Webhook::build(&cx, url, secret.as_ref(), headers)?)
            }
            ReceiverConfig::Slack { webhook_url } => Channel::Slack(slack::Slack::build(&cx, webhook_url)?),
            ReceiverConfig::Teams { webhook_url } => Channel::Teams(teams::Teams::build(&cx, webhook_url)?),
            ReceiverConfig::Pagerduty { routing_key, url } => {
                Channel::Pagerduty(pagerduty::Pagerduty::build(&cx, routing_key, url.as_deref())?)
            }
            ReceiverConfig::Opsgenie { api_key, url } => {
                Channel::Opsgenie(opsgenie::Opsgenie::build(&cx, api_key, url.as_deref())?)
            }
            ReceiverConfig::Twilio {
                account_sid,
                auth_token,
                from,
                to,
                url,
            } => Channel::Twilio(twilio::Twilio::build(
                &cx,
                twilio::TwilioSettings {
                    account_sid,
                    auth_token,
                    from,
                    to,
                    url: url.as_deref(),
                },
            )?),
            ReceiverConfig::Alertmanager {
                url,
                firing_ttl_seconds,
            } => Channel::Alertmanager(alertmanager::Alertmanager::build(&cx, url, *firing_ttl_seconds)?),
        };
        Ok(Receiver {
            name: name.to_owned(),
            channel,
        })
    }

    /// The configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The channel type, as in the config's `type` (`"slack"`, `"pagerduty"`, …).
    pub fn kind(&self) -> &'static str {
        match self.channel {
            Channel::Webhook(_) => "webhook",
            Channel::Slack(_) => "slack",
            Channel::Teams(_) => "teams",
            Channel::Pagerduty(_) => "pagerduty",
            Channel::Opsgenie(_) => "opsgenie",
            Channel::Twilio(_) => "twilio",
            Channel::Alertmanager(_) => "alertmanager",
        }
    }

    /// Deliver `n` once. No retries here: on a retryable error the outbox worker tries again
    /// after [`backoff`]. Twilio sends one SMS per recipient; see `twilio` for partial failure.
    pub async fn send(&self, n: &Notification) -> Result<(), DeliveryError> {
        match &self.channel {
            Channel::Webhook(c) => c.send(n).await,
            Channel::Slack(c) => c.send(n).await,
            Channel::Teams(c) => c.send(n).await,
            Channel::Pagerduty(c) => c.send(n).await,
            Channel::Opsgenie(c) => c.send(n).await,
            Channel::Twilio(c) => c.send(n).await,
            Channel::Alertmanager(c) => c.send(n).await,
        }
    }
}

/// Delay before retry number `attempt` (0 for the first retry): 5 s · 2^attempt, capped at
/// 10 minutes, with "equal jitter" (uniform in the upper half of that delay) so that many
/// failed notifications do not retry in lock-step. The delay for `attempt + 1` is never
/// shorter than the longest possible delay for `attempt`, until the cap.
pub fn backoff(attempt: u32) -> Duration {
    const BASE_MS: u64 = 5_000;
    const CAP_MS: u64 = 600_000;
    let nominal = BASE_MS.saturating_mul(1u64 << attempt.min(20)).min(CAP_MS);
    let half = nominal / 2;
    Duration::from_millis(half + rand::rng().random_range(0..=half))
}

/// A validated `http(s)` URL whose `Debug` shows only the origin: a webhook URL's path,
/// query or user info may well be the credential.
#[derive(Clone)]
struct Endpoint(url::Url);

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Endpoint({}/…)", self.0.origin().ascii_serialization())
    }
}

impl Endpoint {
    /// A copy of the URL, for a request.
    fn url(&self) -> url::Url {
        self.0.clone()
    }

    /// The parts of the URL that may be credentials, for [`scrub`]: the password, the query
    /// values, and path segments that look like tokens (16+ characters, or 6+ with a digit).
    fn secrets(&self) -> Vec<&str> {
        let mut out = vec![self.0.as_str()];
        out.extend(self.0.password());
        if let Some(query) = self.0.query() {
            out.extend(
                query
                    .split('&')
                    .filter_map(|kv| kv.split_once('=').map(|(_, v)| v)),
            );
        }
        if let Some(segments) = self.0.path_segments() {
            out.extend(
                segments.filter(|s| s.len() >= 16 || (s.len() >= 6 && s.chars().any(|c| c.is_ascii_digit()))),
            );
        }
        out
    }
}

/// What `build` of every channel needs.
#[derive(Debug)]
struct BuildContext<'a> {
    name: &'a str,
    client: reqwest::Client,
}

impl BuildContext<'_> {
    fn invalid(&self, field: &'static str, reason: impl Into<String>) -> Error {
        Error::Invalid {
            receiver: self.name.to_owned(),
            field,
            reason: reason.into(),
        }
    }

    /// Parse an `http(s)` URL with a host. With `secret`, the error does not repeat the URL.
    fn url(&self, field: &'static str, raw: &str, secret: bool) -> Result<Endpoint> {
        let shown = if secret {
            String::new()
        } else {
            format!("{raw:?}: ")
        };
        let url = url::Url::parse(raw).map_err(|e| self.invalid(field, format!("{shown}{e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(self.invalid(field, format!("{shown}scheme must be http or https")));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(self.invalid(field, format!("{shown}no host")));
        }
        Ok(Endpoint(url))
    }

    /// `base` with `segments` appended to its path (a trailing `/` on `base` is fine).
    /// Segments are percent-encoded.
    fn join(&self, field: &'static str, base: Endpoint, segments: &[&str]) -> Result<Endpoint> {
        let mut url = base.0;
        url.path_segments_mut()
            .map_err(|()| self.invalid(field, "URL cannot be a base"))?
            .pop_if_empty()
            .extend(segments);
        Ok(Endpoint(url))
    }
}

/// Send `req`, giving up after [`REQUEST_TIMEOUT`] (or the client's own timeout if that is
/// shorter), and turn anything but a 2xx into a [`DeliveryError`]. Every occurrence of a
/// string in `secrets` is removed from the error message.
async fn execute(what: &str, req: reqwest::RequestBuilder, secrets: &[&str]) -> Result<(), DeliveryError> {
    // A whole-exchange bound rather than `RequestBuilder::timeout`, which would replace a
    // shorter timeout the worker configured on its client.
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange(what, req, secrets)).await {
        Ok(result) => result,
        Err(_elapsed) => Err(DeliveryError {
            retryable: true,
            message: format!("{what}: timed out after {}s", REQUEST_TIMEOUT.as_secs()),
            retry_after: None,
        }),
    }
}

async fn exchange(what: &str, req: reqwest::RequestBuilder, secrets: &[&str]) -> Result<(), DeliveryError> {
    let resp = match req.send().await {
        Ok(resp) => resp,
        Err(error) => return Err(transport_error(what, error, secrets)),
    };
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let retryable = status.is_server_error()
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status == reqwest::StatusCode::REQUEST_TIMEOUT;
    // A body that cannot be read is reported as empty: the status is what matters.
    let body = resp.text().await.unwrap_or_default();
    let excerpt = excerpt(&body);
    let message = if excerpt.is_empty() {
        format!("{what}: HTTP {status}")
    } else {
        format!("{what}: HTTP {status}: {excerpt}")
    };
    Err(DeliveryError {
        retryable,
        message: scrub(message, secrets),
        retry_after: if retryable { retry_after } else { None },
    })
}

/// A request that never got a response. All are retryable except a request that could not
/// be built (that would fail the same way again).
fn transport_error(what: &str, error: reqwest::Error, secrets: &[&str]) -> DeliveryError {
    let retryable = !error.is_builder();
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connect error"
    } else {
        "request failed"
    };
    // The URL may be the credential (Slack, Teams): never print it.
    let error = error.without_url();
    let mut chain = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(e) = source {
        chain.push_str(": ");
        chain.push_str(&e.to_string());
        source = e.source();
    }
    DeliveryError {
        retryable,
        message: scrub(format!("{what}: {kind}: {chain}"), secrets),
        retry_after: None,
    }
}

/// The first [`BODY_EXCERPT_CHARS`] characters of `body`, whitespace collapsed.
fn excerpt(body: &str) -> String {
    let collapsed = body.split_whitespace().collect::<Vec<_>>().join(" ");
    truncate(&collapsed, BODY_EXCERPT_CHARS)
}

/// Remove every occurrence of each (non-trivial) secret from `message`.
fn scrub(mut message: String, secrets: &[&str]) -> String {
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        if message.contains(secret) {
            message = message.replace(secret, "[redacted]");
        }
    }
    message
}

/// At most `max` characters of `s`, ending in `…` when cut.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The exposed value of an optional secret, for [`scrub`] lists.
fn exposed(secret: &SecretString) -> &str {
    secret.expose_secret()
}

#[cfg(test)]
mod testkit {
    //! A local HTTP receiver that records requests and answers with scripted statuses.

    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    use chrono::TimeZone;

    use super::*;

    /// One request the receiver got.
    #[derive(Debug, Clone)]
    pub(crate) struct Captured {
        pub(crate) method: Method,
        pub(crate) path: String,
        pub(crate) query: Option<String>,
        pub(crate) headers: HeaderMap,
        pub(crate) body: Bytes,
    }

    impl Captured {
        pub(crate) fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body).expect("JSON body")
        }

        pub(crate) fn header(&self, name: &str) -> &str {
            self.headers
                .get(name)
                .unwrap_or_else(|| panic!("header {name} missing"))
                .to_str()
                .expect("ASCII header")
        }
    }

    #[derive(Debug, Default)]
    struct Shared {
        requests: Mutex<Vec<Captured>>,
        replies: Mutex<VecDeque<(u16, String)>>,
    }

    /// A running capture server.
    #[derive(Debug, Clone)]
    pub(crate) struct Server {
        pub(crate) base: String,
        shared: Arc<Shared>,
    }

    impl Server {
        /// Start on 127.0.0.1:0. Replies in order with `replies`, then `200 {}` forever.
        pub(crate) async fn start(replies: &[(u16, &str)]) -> Server {
            let shared = Arc::new(Shared::default());
            shared
                .replies
                .lock()
                .expect("lock")
                .extend(replies.iter().map(|(s, b)| (*s, (*b).to_owned())));
            let app = axum::Router::new().fallback(record).with_state(shared.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            tokio::spawn(async move {
                axum::serve(listener, app).await.expect("serve");
            });
            Server {
                base: format!("http://{addr}"),
                shared,
            }
        }

        pub(crate) fn requests(&self) -> Vec<Captured> {
            self.shared.requests.lock().expect("lock").clone()
        }
    }

    async fn record(
        State(shared): State<Arc<Shared>>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> (StatusCode, String) {
        shared.requests.lock().expect("lock").push(Captured {
            method,
            path: uri.path().to_owned(),
            query: uri.query().map(str::to_owned),
            headers,
            body,
        });
        let (status, body) = shared
            .replies
            .lock()
            .expect("lock")
            .pop_front()
            .unwrap_or((200, "{}".to_owned()));
        (StatusCode::from_u16(status).expect("status"), body)
    }

    /// A firing notification of a dimensioned ratio KPI.
    pub(crate) fn notification(event: Event) -> Notification {
        let t = |h| {
            Utc.with_ymd_and_hms(2026, 11, 24, h, 0, 0)
                .single()
                .expect("time")
        };
        Notification {
            event,
            fingerprint: "pay_success/3f2a9c".to_owned(),
            kpi_id: "pay_success".to_owned(),
            kpi_title: "Payment success".to_owned(),
            series: BTreeMap::from([("country".to_owned(), "DE".to_owned())]),
            severity: "critical".to_owned(),
            owner: Some("payments".to_owned()),
            labels: BTreeMap::from([("team".to_owned(), "payments".to_owned())]),
            summary: "[CRITICAL] Payment success (country=DE) dropped to 40.00% (expected 97.00%)".to_owned(),
            text: "Payment success dropped outside its expected band.\n\nActual: 40.00%".to_owned(),
            reading: Reading::new(0.4, crate::reading::Band::new(0.97, 0.9, 1.0)),
            volume: 120.0,
            started_at: t(9),
            bucket_at: t(10),
            resolved_at: (event == Event::Resolved).then(|| t(12)),
            links: Links {
                kpi: "http://kpiwatch.test/#/kpi/pay_success?alert=7".to_owned(),
                ack: Some("http://kpiwatch.test/alerts/7/ack".to_owned()),
                silence: None,
            },
            display: Display {
                value: "40.00%".to_owned(),
                expected: "97.00%".to_owned(),
                band: "90.00% – 100.00%".to_owned(),
                change: "-57.0 points".to_owned(),
                volume: "120".to_owned(),
            },
        }
    }

    /// Build a receiver from TOML (the way config files spell it).
    pub(crate) fn receiver(toml_text: &str) -> Receiver {
        let cfg: ReceiverConfig = toml::from_str(toml_text).expect("valid receiver TOML");
        Receiver::build("test", &cfg, reqwest::Client::new()).expect("valid receiver")
    }

    /// A 503 gives a retryable error, and the next attempt (a 200) succeeds.
    pub(crate) async fn check_503_then_200(config: impl Fn(&str) -> String) {
        let server = Server::start(&[(503, "try later")]).await;
        let r = receiver(&config(&server.base));
        let n = notification(Event::Firing);
        let err = r.send(&n).await.expect_err("503 fails");
        assert!(err.retryable, "{err:?}");
        assert!(err.message.contains("503"), "{err:?}");
        r.send(&n).await.expect("then 200 succeeds");
        assert_eq!(server.requests().len(), 2);
    }

    /// A 400 (whose body echoes `secret`) gives a non-retryable error without the secret.
    pub(crate) async fn check_400_is_final_and_secret_free(config: impl Fn(&str) -> String, secret: &str) {
        let body = format!("{{\"error\":\"invalid payload for {secret}\"}}");
        let server = Server::start(&[(400, &body)]).await;
        let r = receiver(&config(&server.base));
        let err = r.send(&notification(Event::Firing)).await.expect_err("400 fails");
        assert!(!err.retryable, "{err:?}");
        assert!(err.message.contains("400"), "{err:?}");
        assert!(err.message.contains("invalid payload"), "{err:?}");
        assert!(!err.message.contains(secret), "secret leaked: {err:?}");
        assert!(!format!("{r:?}").contains(secret), "secret in Debug: {r:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_from_seconds_and_is_capped_at_ten_minutes() {
        for _ in 0..50 {
            let first = backoff(0);
            assert!(first >= Duration::from_millis(2_500) && first <= Duration::from_secs(5));
            for attempt in 0..12 {
                assert!(backoff(attempt + 1) >= backoff(attempt) / 2, "attempt {attempt}");
                // Equal jitter: the lower bound of the next delay is the upper bound of this one.
                let floor =
                    Duration::from_millis(5_000 * 2u64.pow(attempt.min(7))).min(Duration::from_secs(300));
                assert!(backoff(attempt + 1) >= floor, "attempt {attempt}");
            }
            for attempt in [7, 8, 20, 64, u32::MAX] {
                let d = backoff(attempt);
                assert!(d <= Duration::from_secs(600), "attempt {attempt}: {d:?}");
                assert!(d >= Duration::from_secs(300), "attempt {attempt}: {d:?}");
            }
        }
    }

    #[test]
    fn backoff_has_jitter() {
        let samples: std::collections::BTreeSet<_> = (0..20).map(|_| backoff(3)).collect();
        assert!(samples.len() > 1);
    }

    #[test]
    fn an_unknown_field_or_type_is_a_config_error() {
        let unknown_field = toml::from_str::<ReceiverConfig>(
            "type = \"slack\"\nwebhook_url = \"https://x\"\nchannel = \"#a\"",
        );
        assert!(unknown_field.is_err());
        let unknown_type = toml::from_str::<ReceiverConfig>("type = \"carrier_pigeon\"");
        assert!(unknown_type.is_err());
    }

    #[test]
    fn a_config_parses_from_a_toml_table_with_secrets_from_strings() {
        let table: toml::Table = toml::from_str(
            "type = \"pagerduty\"\nrouting_key = \"R0UTING\"\nurl = \"https://events.eu.pagerduty.com/v2/enqueue\"",
        )
        .expect("table");
        let cfg: ReceiverConfig = toml::Value::Table(table).try_into().expect("receiver");
        assert!(matches!(cfg, ReceiverConfig::Pagerduty { .. }));
        assert!(!format!("{cfg:?}").contains("R0UTING"));
        let r = Receiver::build("oncall", &cfg, reqwest::Client::new()).expect("valid");
        assert_eq!((r.name(), r.kind()), ("oncall", "pagerduty"));
    }

    #[test]
    fn a_bad_url_is_rejected_without_repeating_a_secret_one() {
        let cfg: ReceiverConfig =
            toml::from_str("type = \"slack\"\nwebhook_url = \"ftp://hooks.example/T0/B0/sekrit\"")
                .expect("toml");
        let err = Receiver::build("ops", &cfg, reqwest::Client::new()).expect_err("ftp is not http");
        let msg = err.to_string();
        assert!(msg.contains("ops") && msg.contains("webhook_url"), "{msg}");
        assert!(!msg.contains("sekrit"), "{msg}");
        let cfg: ReceiverConfig =
            toml::from_str("type = \"alertmanager\"\nurl = \"not a url\"").expect("toml");
        assert!(Receiver::build("am", &cfg, reqwest::Client::new()).is_err());
    }

    #[tokio::test]
    async fn a_refused_connection_is_retryable_and_does_not_print_the_url() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let r = testkit::receiver(&format!(
            "type = \"slack\"\nwebhook_url = \"http://{addr}/services/T0/B0/sekrit\""
        ));
        let err = r
            .send(&testkit::notification(Event::Firing))
            .await
            .expect_err("nobody listens");
        assert!(err.retryable, "{err:?}");
        assert!(!err.message.contains("sekrit"), "{err:?}");
        assert!(err.message.starts_with("slack"), "{err:?}");
    }

    #[tokio::test]
    async fn a_timeout_is_retryable() {
        let app = axum::Router::new().fallback(|| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "too late"
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        let cfg: ReceiverConfig = toml::from_str(&format!(
            "type = \"pagerduty\"\nrouting_key = \"k3y-k3y-k3y\"\nurl = \"http://{addr}/v2/enqueue\""
        ))
        .expect("toml");
        // The worker's client may set a shorter timeout than REQUEST_TIMEOUT; the shorter wins.
        // (REQUEST_TIMEOUT itself is the same code path via `tokio::time::timeout`.)
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(200))
            .build()
            .expect("client");
        let r = Receiver::build("pd", &cfg, client).expect("receiver");
        let err = r
            .send(&testkit::notification(Event::Firing))
            .await
            .expect_err("times out");
        assert!(err.retryable, "{err:?}");
        assert!(err.message.contains("timed out"), "{err:?}");
    }

    #[tokio::test]
    async fn a_429_is_retryable_and_carries_retry_after() {
        // A dedicated server, so that the reply can carry a header.
        let app = axum::Router::new().fallback(|| async {
            (
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                [(axum::http::header::RETRY_AFTER, "30")],
                "slow down",
            )
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        let r = testkit::receiver(&format!("type = \"webhook\"\nurl = \"http://{addr}/hook\""));
        let err = r
            .send(&testkit::notification(Event::Firing))
            .await
            .expect_err("429");
        assert!(err.retryable);
        assert_eq!(err.retry_after, Some(Duration::from_secs(30)));
    }

    #[test]
    fn long_text_is_cut_with_an_ellipsis() {
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }
}
