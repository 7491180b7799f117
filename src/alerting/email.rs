//! E-mail delivery with lettre: SMTP when configured, else `.eml` files in an outbox folder.
//!
//! Every message carries a `Message-ID` ([`Threading`]); a message about an alert that was
//! e-mailed before (resolution, reminder, escalation) names the earlier ones in `In-Reply-To`
//! and `References`, so mail clients show an incident as one thread.

use lettre::message::MultiPart;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;

use super::{Error, Result};
use crate::config::{EmailConfig, SmtpTls};

/// Where e-mail goes.
#[derive(Debug, Clone)]
pub struct Mailer {
    from: lettre::message::Mailbox,
    transport: Transport,
    describe: String,
}

#[derive(Debug, Clone)]
enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Outbox(AsyncFileTransport<Tokio1Executor>),
}

impl Mailer {
    /// Build from config. The outbox folder is created if missing.
    pub fn build(cfg: &EmailConfig) -> Result<Self> {
        let from = cfg
            .from
            .parse()
            .map_err(|e| Error::Build(format!("email.from {:?}: {e}", cfg.from)))?;
        let (transport, describe) = match &cfg.smtp {
            Some(smtp) => {
                let params = || {
                    TlsParameters::builder(smtp.host.clone())
                        .dangerous_accept_invalid_certs(smtp.accept_invalid_certs)
                        .build()
                        .map_err(|e| Error::Build(format!("SMTP TLS settings: {e}")))
                };
                let tls = match smtp.tls {
                    SmtpTls::None => Tls::None,
                    SmtpTls::Opportunistic => Tls::Opportunistic(params()?),
                    SmtpTls::Starttls => Tls::Required(params()?),
                    SmtpTls::Tls => Tls::Wrapper(params()?),
                };
                let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host)
                    .port(smtp.port)
                    .tls(tls)
                    .timeout(Some(smtp.timeout));
                if let (Some(user), Some(pass)) = (&smtp.username, &smtp.password) {
                    builder =
                        builder.credentials(Credentials::new(user.clone(), pass.expose_secret().to_owned()));
                }
                (
                    Transport::Smtp(builder.build()),
                    format!("smtp://{}:{}", smtp.host, smtp.port),
                )
            }
            None => {
                std::fs::create_dir_all(&cfg.outbox_dir).map_err(|e| {
                    Error::Build(format!(
                        "cannot create the outbox folder {}: {e}",
                        cfg.outbox_dir.display()
                    ))
                })?;
                (
                    Transport::Outbox(AsyncFileTransport::new(&cfg.outbox_dir)),
                    format!("outbox {}", cfg.outbox_dir.display()),
                )
            }
        };
        Ok(Mailer {
            from,
            transport,
            describe,
        })
    }

    /// Where mail goes, for logs.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// Check the transport works (SMTP: connect and greet). The outbox always works.
    pub async fn healthcheck(&self) -> Result<()> {
        match &self.transport {
            Transport::Smtp(t) => match t.test_connection().await {
                Ok(true) => Ok(()),
                Ok(false) => Err(Error::Transport(
                    "SMTP server did not accept a connection".to_owned(),
                )),
                Err(e) => Err(Error::Transport(e.to_string())),
            },
            Transport::Outbox(_) => Ok(()),
        }
    }

    /// The domain of the `From:` address, for `Message-ID`s.
    pub fn domain(&self) -> &str {
        self.from.email.domain()
    }

    /// Send one message: the plain text, and an HTML rendering of it as the alternative.
    pub async fn send(&self, to: &str, subject: &str, body: &str, thread: &Threading) -> Result<()> {
        let to: lettre::message::Mailbox = to
            .parse()
            .map_err(|e| Error::Build(format!("recipient {to:?}: {e}")))?;
        let mut builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .message_id(Some(thread.message_id.clone()));
        if let Some(first) = thread.references.first() {
            builder = builder
                .in_reply_to(first.clone())
                .references(thread.references.join(" "));
        }
        let message = builder
            .multipart(MultiPart::alternative_plain_html(
                body.to_owned(),
                html_of(subject, body),
            ))
            .map_err(|e| Error::Build(e.to_string()))?;
        match &self.transport {
            Transport::Smtp(t) => t
                .send(message)
                .await
                .map(drop)
                .map_err(|e| Error::Transport(e.to_string())),
            Transport::Outbox(t) => t
                .send(message)
                .await
                .map(drop)
                .map_err(|e| Error::Transport(e.to_string())),
        }
    }
}

impl Mailer {
    /// The `From:` mailbox.
    pub fn from(&self) -> &lettre::message::Mailbox {
        &self.from
    }

    /// Send a complete, already formatted message (a digest) to `to`.
    pub async fn send_raw(&self, to: &str, eml: &[u8]) -> Result<()> {
        let to: lettre::Address = to
            .parse()
            .map_err(|e| Error::Build(format!("recipient {to:?}: {e}")))?;
        let envelope = lettre::address::Envelope::new(Some(self.from.email.clone()), vec![to])
            .map_err(|e| Error::Build(e.to_string()))?;
        match &self.transport {
            Transport::Smtp(t) => t
                .send_raw(&envelope, eml)
                .await
                .map(drop)
                .map_err(|e| Error::Transport(e.to_string())),
            Transport::Outbox(t) => t
                .send_raw(&envelope, eml)
                .await
                .map(drop)
                .map_err(|e| Error::Transport(e.to_string())),
        }
    }
}

/// The threading headers of one e-mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Threading {
    /// `<…@domain>`, unique per message and the same when a message is re-sent.
    pub message_id: String,
    /// Earlier messages of the same incident, oldest first; the first becomes `In-Reply-To`.
    pub references: Vec<String>,
}

impl Threading {
    /// The `Message-ID` of an outbox message made of the notifications `ids` (deterministic,
    /// so a message re-sent after a crash keeps its id and clients show it once).
    pub fn for_rows(ids: &[i64], domain: &str) -> Self {
        let first = ids.first().copied().unwrap_or_default();
        let last = ids.last().copied().unwrap_or_default();
        let message_id = if first == last {
            format!("<kpiwatch.n{first}@{domain}>")
        } else {
            format!("<kpiwatch.n{first}-{last}.{}@{domain}>", ids.len())
        };
        Threading {
            message_id,
            references: Vec::new(),
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Escaped text, with `http(s)://` words turned into links.
fn linkify(s: &str) -> String {
    s.split(' ')
        .map(|word| {
            if word.starts_with("http://") || word.starts_with("https://") {
                let w = escape(word);
                format!("<a href=\"{w}\">{w}</a>")
            } else {
                escape(word)
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The HTML part: the headline, the `Key: value` lines as a table, links clickable.
pub(super) fn html_of(subject: &str, text: &str) -> String {
    let mut paragraphs = Vec::new();
    let mut rows = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match line.split_once(':') {
            Some((key, value)) if !key.is_empty() && key.len() <= 14 && !value.starts_with("//") => {
                rows.push(format!(
                    "<tr><th style=\"text-align:left;padding:2px 12px 2px 0;color:#555\">{}</th><td>{}</td></tr>",
                    escape(key.trim()),
                    linkify(value.trim())
                ));
            }
            _ => paragraphs.push(format!("<p>{}</p>", linkify(line))),
        }
    }
    format!(
        "<!doctype html><html><body style=\"font-family:Arial,Helvetica,sans-serif;font-size:14px\">\
         <h2 style=\"font-size:16px\">{}</h2>{}<table>{}</table></body></html>",
        escape(subject),
        paragraphs.join(""),
        rows.join("")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_html_part_escapes_and_tabulates_the_text() {
        let html = html_of(
            "[CRITICAL] <Orders> dropped",
            "Orders dropped outside its band.\n\nActual:      0\nSeries:      http://x/api/kpis/orders/series\n",
        );
        assert!(html.contains("&lt;Orders&gt;"), "{html}");
        assert!(
            html.contains(
                "<th style=\"text-align:left;padding:2px 12px 2px 0;color:#555\">Actual</th><td>0</td>"
            ),
            "{html}"
        );
        assert!(
            html.contains("<a href=\"http://x/api/kpis/orders/series\">"),
            "{html}"
        );
        assert!(html.contains("<p>Orders dropped outside its band.</p>"), "{html}");
    }
}
