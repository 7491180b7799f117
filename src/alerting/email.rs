//! E-mail delivery with lettre: SMTP when configured, else `.eml` files in an outbox folder.

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;

use super::{Error, Result};
use crate::config::EmailConfig;

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
                // Plain SMTP (with optional AUTH); TLS variants arrive with the alerting work.
                let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host)
                    .port(smtp.port)
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

    /// Send one plain-text message.
    pub async fn send(&self, to: &str, subject: &str, body: &str) -> Result<()> {
        let to: lettre::message::Mailbox = to
            .parse()
            .map_err(|e| Error::Build(format!("recipient {to:?}: {e}")))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body.to_owned())
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
