//! Generic webhook: POSTs a documented, versioned JSON document (schema [`SCHEMA_VERSION`],
//! see `docs/RECEIVERS.md`), signed with HMAC-SHA256 when a secret is configured.
//!
//! Signature: `X-Kpiwatch-Timestamp: <unix seconds>` and
//! `X-Kpiwatch-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
//! Receivers should verify it with [`verify_webhook_signature`] (constant time) and reject
//! timestamps older than a few minutes. The body's `id` is the same on every retry.
//!
//! Makes one request per notification and does no retries itself (the outbox worker retries).

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use reqwest::header::{HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{execute, exposed, BuildContext, DeliveryError, Endpoint, Notification, Result};

/// The `version` field of the JSON document this channel sends.
pub const SCHEMA_VERSION: &str = "1";

const SIGNATURE_HEADER: &str = "x-kpiwatch-signature";
const TIMESTAMP_HEADER: &str = "x-kpiwatch-timestamp";

type HmacSha256 = Hmac<Sha256>;

/// The `X-Kpiwatch-Signature` value for `body` sent at `timestamp` (unix seconds):
/// `sha256=` + hex HMAC-SHA256 of `"<timestamp>.<body>"` keyed with `secret`.
pub fn webhook_signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

/// Check an `X-Kpiwatch-Signature` header value in constant time. For receivers and tests;
/// callers should also reject a `timestamp` far from their clock (replays).
pub fn verify_webhook_signature(secret: &[u8], timestamp: i64, body: &[u8], header: &str) -> bool {
    let Some(Ok(expected)) = header.strip_prefix("sha256=").map(hex::decode) else {
        return false;
    };
    mac(secret, timestamp, body).verify_slice(&expected).is_ok()
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> HmacSha256 {
    // Cannot fail: HMAC takes keys of any length (`new_from_slice` only fails for MACs with
    // a fixed key size), so this `expect` guards an invariant of the hmac crate.
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

#[derive(Debug, Clone)]
pub(super) struct Webhook {
    client: reqwest::Client,
    url: Endpoint,
    secret: Option<SecretString>,
    headers: Vec<(HeaderName, SecretString)>,
}

impl Webhook {
    pub(super) fn build(
        cx: &BuildContext<'_>,
        url: &str,
        secret: Option<&SecretString>,
        headers: &BTreeMap<String, SecretString>,
    ) -> Result<Self> {
        // The URL may hold a token (path or query): errors do not repeat it.
        let url = cx.url("url", url, true)?;
        if secret.is_some_and(|s| s.expose_secret().is_empty()) {
            return Err(cx.invalid("secret", "must not be empty (leave it out to send unsigned)"));
        }
        let headers = headers
            .iter()
            .map(|(name, value)| {
                let name = HeaderName::try_from(name.as_str())
                    .map_err(|e| cx.invalid("headers", format!("{name:?}: {e}")))?;
                HeaderValue::from_str(value.expose_secret())
                    .map_err(|_| cx.invalid("headers", format!("{name}: not a valid header value")))?;
                if name == SIGNATURE_HEADER
                    || name == TIMESTAMP_HEADER
                    || name == reqwest::header::CONTENT_TYPE
                {
                    return Err(cx.invalid("headers", format!("{name} is set by kpiwatch")));
                }
                Ok((name, value.clone()))
            })
            .collect::<Result<_>>()?;
        Ok(Webhook {
            client: cx.client.clone(),
            url,
            secret: secret.cloned(),
            headers,
        })
    }

    pub(super) async fn send(&self, n: &Notification) -> Result<(), DeliveryError> {
        let body = body(n).to_string().into_bytes();
        let mut req = self
            .client
            .post(self.url.url())
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        for (name, value) in &self.headers {
            // Validated in `build`.
            if let Ok(mut value) = HeaderValue::from_str(value.expose_secret()) {
                value.set_sensitive(true);
                req = req.header(name, value);
            }
        }
        if let Some(secret) = &self.secret {
            let timestamp = chrono::Utc::now().timestamp();
            let signature = webhook_signature(secret.expose_secret().as_bytes(), timestamp, &body);
            req = req
                .header(TIMESTAMP_HEADER, timestamp.to_string())
                .header(SIGNATURE_HEADER, signature);
        }
        let mut secrets = self.url.secrets();
        secrets.extend(self.headers.iter().map(|(_, v)| exposed(v)));
        secrets.extend(self.secret.as_ref().map(exposed));
        execute("webhook", req.body(body), &secrets).await
    }
}

/// The schema-version-1 document.
fn body(n: &Notification) -> serde_json::Value {
    json!({
        "version": SCHEMA_VERSION,
        "id": event_id(n),
        "event": n.event.as_str(),
        "fingerprint": n.fingerprint,
        "kpi": {
            "id": n.kpi_id,
            "title": n.kpi_title,
            "severity": n.severity,
            "owner": n.owner,
            "labels": n.labels,
        },
        "series": n.series,
        "summary": n.summary,
        "text": n.text,
        "values": {
            "value": n.reading.value,
            "expected": n.reading.band.expected,
            "lower": n.reading.band.lower,
            "upper": n.reading.band.upper,
            "volume": n.volume,
        },
        "timestamps": {
            "started_at": n.started_at.to_rfc3339(),
            "bucket_at": n.bucket_at.to_rfc3339(),
            "resolved_at": n.resolved_at.map(|t| t.to_rfc3339()),
        },
        "links": {
            "kpi": n.links.kpi,
            // Schema 1 called the same link `series`; kept for receivers that read it.
            "series": n.links.kpi,
            "ack": n.links.ack,
            "silence": n.links.silence,
        },
    })
}

/// Same for every retry of the same state change: hex SHA-256 of fingerprint, event and
/// bucket, cut to 32 characters. Receivers can de-duplicate on it.
fn event_id(n: &Notification) -> String {
    let digest = Sha256::new()
        .chain_update(n.fingerprint.as_bytes())
        .chain_update([0])
        .chain_update(n.event.as_str())
        .chain_update([0])
        .chain_update(n.bucket_at.to_rfc3339())
        .finalize();
    hex::encode(digest)[..32].to_owned()
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{self, Server};
    use super::super::Event;
    use super::*;

    #[tokio::test]
    async fn the_body_follows_schema_1_and_the_signature_verifies_only_with_the_secret() {
        let server = Server::start(&[]).await;
        let r = testkit::receiver(&format!(
            "type = \"webhook\"\nurl = \"{}/hooks/kpi\"\nsecret = \"s3cr3t-key\"\nheaders = {{ Authorization = \"Bearer tok3n\" }}",
            server.base
        ));
        r.send(&testkit::notification(Event::Firing)).await.expect("sent");
        r.send(&testkit::notification(Event::Resolved))
            .await
            .expect("sent");
        let reqs = server.requests();
        let (fire, resolve) = (&reqs[0], &reqs[1]);
        assert_eq!(fire.method, "POST");
        assert_eq!(fire.path, "/hooks/kpi");
        assert_eq!(fire.header("content-type"), "application/json");
        assert_eq!(fire.header("authorization"), "Bearer tok3n");

        let ts: i64 = fire.header("x-kpiwatch-timestamp").parse().expect("unix seconds");
        assert!((chrono::Utc::now().timestamp() - ts).abs() < 60);
        let sig = fire.header("x-kpiwatch-signature");
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64, "{sig}");
        assert!(verify_webhook_signature(b"s3cr3t-key", ts, &fire.body, sig));
        assert!(!verify_webhook_signature(b"wrong-key", ts, &fire.body, sig));
        assert!(!verify_webhook_signature(b"s3cr3t-key", ts + 1, &fire.body, sig));
        assert!(!verify_webhook_signature(b"s3cr3t-key", ts, b"{}", sig));

        let body = fire.json();
        assert_eq!(body["version"], "1");
        assert_eq!(body["event"], "firing");
        assert_eq!(body["fingerprint"], "pay_success/3f2a9c");
        assert_eq!(body["kpi"]["id"], "pay_success");
        assert_eq!(body["kpi"]["severity"], "critical");
        assert_eq!(body["kpi"]["labels"]["team"], "payments");
        assert_eq!(body["series"]["country"], "DE");
        assert_eq!(body["values"]["value"], 0.4);
        assert_eq!(body["values"]["volume"], 120.0);
        assert_eq!(body["timestamps"]["started_at"], "2026-11-24T09:00:00+00:00");
        assert_eq!(body["timestamps"]["resolved_at"], serde_json::Value::Null);
        assert_eq!(body["links"]["ack"], "http://kpiwatch.test/alerts/7/ack");
        assert_eq!(
            body["links"]["kpi"],
            "http://kpiwatch.test/#/kpi/pay_success?alert=7"
        );
        assert_eq!(body["id"].as_str().map(str::len), Some(32));

        let body = resolve.json();
        assert_eq!(body["event"], "resolved");
        assert_eq!(body["timestamps"]["resolved_at"], "2026-11-24T12:00:00+00:00");
        assert_ne!(body["id"], fire.json()["id"]);
    }

    #[tokio::test]
    async fn without_a_secret_nothing_is_signed() {
        let server = Server::start(&[]).await;
        let r = testkit::receiver(&format!("type = \"webhook\"\nurl = \"{}/\"", server.base));
        r.send(&testkit::notification(Event::Firing)).await.expect("sent");
        let req = &server.requests()[0];
        assert!(req.headers.get("x-kpiwatch-signature").is_none());
        assert!(req.headers.get("x-kpiwatch-timestamp").is_none());
    }

    #[test]
    fn the_event_id_is_stable_across_retries() {
        let n = testkit::notification(Event::Firing);
        assert_eq!(event_id(&n), event_id(&n.clone()));
    }

    #[test]
    fn the_signature_matches_a_known_vector() {
        // python3 -c "import hmac,hashlib; print(hmac.new(b'key', b'1700000000.{}', hashlib.sha256).hexdigest())"
        assert_eq!(
            webhook_signature(b"key", 1_700_000_000, b"{}"),
            "sha256=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
        assert!(!verify_webhook_signature(
            b"key",
            1_700_000_000,
            b"{}",
            "sha256=zz"
        ));
        assert!(!verify_webhook_signature(
            b"key",
            1_700_000_000,
            b"{}",
            "9d713ed4"
        ));
    }

    #[tokio::test]
    async fn a_503_is_retryable_and_the_retry_succeeds() {
        testkit::check_503_then_200(|base| {
            format!("type = \"webhook\"\nurl = \"{base}/h\"\nsecret = \"s3cr3t-key\"")
        })
        .await;
    }

    #[tokio::test]
    async fn a_400_is_final_and_its_message_holds_no_secret() {
        testkit::check_400_is_final_and_secret_free(
            |base| format!("type = \"webhook\"\nurl = \"{base}/h\"\nsecret = \"s3cr3t-key\""),
            "s3cr3t-key",
        )
        .await;
    }

    #[test]
    fn a_reserved_or_invalid_header_is_rejected() {
        for headers in [
            "{ \"X-Kpiwatch-Signature\" = \"x\" }",
            "{ \"Content-Type\" = \"text/plain\" }",
            "{ \"bad header\" = \"x\" }",
            "{ \"X-Ok\" = \"line\\nbreak\" }",
        ] {
            let cfg: super::super::ReceiverConfig = toml::from_str(&format!(
                "type = \"webhook\"\nurl = \"http://h/\"\nheaders = {headers}"
            ))
            .expect("toml");
            assert!(super::super::Receiver::build("w", &cfg, reqwest::Client::new()).is_err());
        }
    }
}
