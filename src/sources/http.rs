//! What the HTTP sources (Prometheus, InfluxDB) share: one `reqwest::Client` for all of
//! them, an [`Endpoint`] per source (base URL, credentials, timeout, concurrency limit), and
//! the mapping of transport failures onto [`Error`]: refused or reset connections are an
//! outage, a request that outlives the timeout is a timeout, anything the server says no to
//! is the server's message.
//!
//! Only `GET` is ever sent, to paths the caller names (query endpoints).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

use super::{Error, Result};
use crate::config::{redact_url, SourceConfig};

/// The one client every HTTP source uses (connection pools per host live inside it).
static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();

fn client() -> Result<reqwest::Client> {
    if let Some(c) = CLIENT.get() {
        return Ok(c.clone());
    }
    let built = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        // A query endpoint never redirects; following one could leak credentials elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("kpiwatch/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::Unreachable {
            name: "(http client)".to_owned(),
            url: String::new(),
            message: format!("cannot build the HTTP client: {e}"),
        })?;
    Ok(CLIENT.get_or_init(|| built).clone())
}

#[derive(Debug, Clone)]
enum Auth {
    None,
    Basic {
        user: String,
        password: Option<SecretString>,
    },
    Bearer(SecretString),
}

/// One HTTP source's way in: base URL (credentials taken out of it), auth, timeout, and a
/// semaphore holding `max_connections` permits.
#[derive(Debug, Clone)]
pub(super) struct Endpoint {
    name: String,
    base: url::Url,
    redacted: String,
    auth: Auth,
    pub(super) timeout: Duration,
    permits: Arc<Semaphore>,
    client: reqwest::Client,
}

/// A response the server sent: status and body.
#[derive(Debug)]
pub(super) struct Reply {
    pub(super) status: reqwest::StatusCode,
    pub(super) body: Vec<u8>,
}

impl Endpoint {
    /// Build from the source's config. Basic-auth credentials may also sit in the URL.
    pub(super) fn build(name: &str, cfg: &SourceConfig) -> Result<Self> {
        let redacted = redact_url(&cfg.url);
        let mut base = url::Url::parse(cfg.url.expose_secret()).map_err(|e| Error::Unreachable {
            name: name.to_owned(),
            url: redacted.clone(),
            message: format!("not a URL: {e}"),
        })?;
        let url_user = (!base.username().is_empty()).then(|| base.username().to_owned());
        let url_password = base.password().map(|p| SecretString::from(p.to_owned()));
        let _ = base.set_username("");
        let _ = base.set_password(None);
        let auth = match (&cfg.bearer_token, &cfg.username, url_user) {
            (Some(token), _, _) => Auth::Bearer(token.clone()),
            (None, Some(user), _) => Auth::Basic {
                user: user.clone(),
                password: cfg.password.clone(),
            },
            (None, None, Some(user)) => Auth::Basic {
                user,
                password: url_password,
            },
            (None, None, None) => Auth::None,
        };
        // `join` treats the last segment as a file unless the path ends in '/'.
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        Ok(Endpoint {
            name: name.to_owned(),
            base,
            redacted,
            auth,
            timeout: cfg.statement_timeout,
            permits: Arc::new(Semaphore::new(cfg.max_connections.max(1) as usize)),
            client: client()?,
        })
    }

    /// `GET base/path?params`, within the timeout and the concurrency limit. Any HTTP status
    /// comes back as a [`Reply`]; failing to get one is an [`Error`].
    pub(super) async fn get(&self, path: &str, params: &[(&str, String)]) -> Result<Reply> {
        let url = self
            .base
            .join(path)
            .map_err(|e| self.unreachable(e.to_string()))?;
        let work = async {
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| self.unreachable("the source is shutting down".to_owned()))?;
            let mut request = self.client.get(url).query(params).timeout(self.timeout);
            request = match &self.auth {
                Auth::None => request,
                Auth::Basic { user, password } => {
                    request.basic_auth(user, password.as_ref().map(|p| p.expose_secret().to_owned()))
                }
                Auth::Bearer(token) => request.bearer_auth(token.expose_secret()),
            };
            let response = request.send().await.map_err(|e| self.transport(e))?;
            let status = response.status();
            let body = response.bytes().await.map_err(|e| self.transport(e))?.to_vec();
            Ok(Reply { status, body })
        };
        // The request timeout covers the exchange; this also covers waiting for a permit.
        match tokio::time::timeout(self.timeout + Duration::from_secs(1), work).await {
            Ok(result) => result,
            Err(_) => Err(self.timed_out()),
        }
    }

    /// The source's name.
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// An HTTP status the server answered with that is no query result: 5xx is an outage
    /// (the server is there but cannot serve), 401/403 are refused credentials, anything
    /// else is the query's fault. `message` is the server's own words, if it gave any.
    pub(super) fn status_error(&self, status: reqwest::StatusCode, message: &str) -> Error {
        let message = if message.trim().is_empty() {
            status.to_string()
        } else {
            format!("{} (HTTP {})", message.trim(), status.as_u16())
        };
        if status.is_server_error() {
            self.unreachable(message)
        } else if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            Error::Query {
                name: self.name.clone(),
                message: format!("the server refused kpiwatch's credentials: {message}"),
            }
        } else {
            Error::Query {
                name: self.name.clone(),
                message,
            }
        }
    }

    pub(super) fn unreachable(&self, message: String) -> Error {
        Error::Unreachable {
            name: self.name.clone(),
            url: self.redacted.clone(),
            message,
        }
    }

    pub(super) fn timed_out(&self) -> Error {
        Error::Timeout {
            name: self.name.clone(),
            timeout: self.timeout,
        }
    }

    fn transport(&self, e: reqwest::Error) -> Error {
        if e.is_timeout() {
            self.timed_out()
        } else {
            // Without the URL: reqwest's message would repeat it, query string and all.
            self.unreachable(error_chain(&e.without_url()))
        }
    }
}

/// An error and its sources, `: `-joined (reqwest's own message is often just "error
/// sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The start of a body for an error message: UTF-8, at most 300 characters.
pub(super) fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text.chars().take(300).collect();
    if text.chars().count() > 300 {
        out.push('…');
    }
    out
}
