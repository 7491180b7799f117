//! E-mail delivery over real SMTP: STARTTLS with AUTH, a plain-text and an HTML part.

use kpiwatch::alerting::Mailer;
use kpiwatch::config::{EmailConfig, SmtpConfig, SmtpTls};
use secrecy::SecretString;

use crate::helpers::SmtpServer;

fn config(port: u16, tls: SmtpTls, password: &str) -> EmailConfig {
    EmailConfig {
        from: "kpiwatch <kpiwatch@example.com>".to_owned(),
        outbox_dir: std::env::temp_dir(),
        default_recipients: Vec::new(),
        smtp: Some(SmtpConfig {
            host: "127.0.0.1".to_owned(),
            port,
            username: Some("kpiwatch".to_owned()),
            password: Some(SecretString::from(password.to_owned())),
            timeout: std::time::Duration::from_secs(10),
            tls,
            accept_invalid_certs: true,
        }),
    }
}

#[tokio::test]
async fn mail_goes_over_starttls_with_auth_as_text_and_html() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = SmtpServer::start_tls(dir.path(), "kpiwatch", "hunter2");
    let mailer = Mailer::build(&config(server.port, SmtpTls::Starttls, "hunter2")).expect("mailer");
    mailer.healthcheck().await.expect("server answers");
    mailer
        .send(
            "oncall@example.com",
            "[CRITICAL] Orders dropped to 0",
            "Orders dropped.\n\nActual:      0\n",
            &kpiwatch::alerting::Threading::for_rows(&[1], "example.com"),
        )
        .await
        .expect("delivered over STARTTLS");
    let got = server.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].subject(), "[CRITICAL] Orders dropped to 0");
    assert!(got[0].text().contains("Actual:      0"));
    let html = got[0].html().expect("an HTML part");
    assert!(html.contains("<td>0</td>"), "{html}");

    // A wrong password is refused, and the error does not carry it.
    let bad = Mailer::build(&config(server.port, SmtpTls::Starttls, "wrong-pw")).expect("mailer");
    let err = bad
        .send(
            "oncall@example.com",
            "s",
            "b",
            &kpiwatch::alerting::Threading::for_rows(&[2], "example.com"),
        )
        .await
        .expect_err("bad credentials");
    assert!(!err.to_string().contains("wrong-pw"), "{err}");
    assert_eq!(server.received().len(), 1);
}

#[tokio::test]
async fn required_starttls_refuses_a_server_without_it() {
    let server = SmtpServer::start();
    let mailer = Mailer::build(&config(server.port, SmtpTls::Starttls, "pw")).expect("mailer");
    assert!(mailer
        .send(
            "oncall@example.com",
            "s",
            "b",
            &kpiwatch::alerting::Threading::for_rows(&[2], "example.com"),
        )
        .await
        .is_err());
    assert!(server.received().is_empty(), "nothing goes out in plain text");
}
