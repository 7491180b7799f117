//! Named receivers from `[alerting.receivers.<name>]` and the expansion of an alert's
//! routing into outbox targets `(channel, recipient)`.
//!
//! Channel `email` targets are addresses (from the model's `recipients` or an `email`
//! receiver's `to`); other channels target a receiver by name.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::notifiers;
use crate::config::AlertingConfig;

/// A receiver as configured.
#[derive(Debug, Clone)]
pub enum Receiver {
    /// E-mail to fixed addresses through the configured mailer.
    Email {
        /// Addresses.
        to: Vec<String>,
    },
    /// Slack, Teams, PagerDuty, Opsgenie, Twilio, Alertmanager or a generic webhook.
    Http(notifiers::Receiver),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailReceiver {
    #[serde(rename = "type")]
    _type: String,
    to: Vec<String>,
}

/// Every configured receiver by name.
#[derive(Debug, Clone, Default)]
pub struct Receivers {
    by_name: BTreeMap<String, Receiver>,
}

/// One delivery target in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    /// `email`, or the receiver's type.
    pub channel: String,
    /// An address (email) or a receiver name.
    pub recipient: String,
}

impl Receivers {
    /// Parse every receiver; all problems at once. HTTP receivers share `client`.
    pub fn build(cfg: &AlertingConfig, client: &reqwest::Client) -> Result<Self, Vec<String>> {
        let mut by_name = BTreeMap::new();
        let mut problems = Vec::new();
        for (name, table) in &cfg.receivers {
            let value = toml::Value::Table(table.clone());
            if table.get("type").and_then(toml::Value::as_str) == Some("email") {
                match value.try_into::<EmailReceiver>() {
                    Ok(EmailReceiver { to, .. }) => {
                        for addr in &to {
                            if addr.parse::<lettre::Address>().is_err() {
                                problems
                                    .push(format!("receiver {name:?}: {addr:?} is not an e-mail address"));
                            }
                        }
                        by_name.insert(name.clone(), Receiver::Email { to });
                    }
                    Err(e) => problems.push(format!("receiver {name:?}: {e}")),
                }
                continue;
            }
            let built = value
                .try_into::<notifiers::ReceiverConfig>()
                .map_err(|e| format!("receiver {name:?}: {e}"))
                .and_then(|cfg| {
                    notifiers::Receiver::build(name, &cfg, client.clone())
                        .map_err(|e| format!("receiver {name:?}: {e}"))
                });
            match built {
                Ok(r) => {
                    by_name.insert(name.clone(), Receiver::Http(r));
                }
                Err(p) => problems.push(p),
            }
        }
        if problems.is_empty() {
            Ok(Receivers { by_name })
        } else {
            Err(problems)
        }
    }

    /// Outbox targets for the model's own addresses plus the routed receivers, deduplicated.
    pub fn targets(&self, model_recipients: &[String], routed: &[String]) -> Vec<Target> {
        let mut out: Vec<Target> = model_recipients
            .iter()
            .map(|a| Target {
                channel: "email".to_owned(),
                recipient: a.clone(),
            })
            .collect();
        for name in routed {
            match self.by_name.get(name) {
                Some(Receiver::Email { to }) => out.extend(to.iter().map(|a| Target {
                    channel: "email".to_owned(),
                    recipient: a.clone(),
                })),
                Some(Receiver::Http(r)) => out.push(Target {
                    channel: r.kind().to_owned(),
                    recipient: name.clone(),
                }),
                None => tracing::warn!(message = "Route names an unknown receiver.", receiver = %name),
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// The HTTP receiver called `name`.
    pub fn http(&self, name: &str) -> Option<&notifiers::Receiver> {
        match self.by_name.get(name) {
            Some(Receiver::Http(r)) => Some(r),
            _ => None,
        }
    }

    /// Names of every HTTP receiver.
    pub fn http_names(&self) -> impl Iterator<Item = &str> {
        self.by_name
            .iter()
            .filter(|(_, r)| matches!(r, Receiver::Http(_)))
            .map(|(n, _)| n.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_receivers_expand_to_addresses_without_duplicates() {
        let cfg: AlertingConfig = toml::from_str(
            r#"
            [receivers.checkout]
            type = "email"
            to = ["a@example.com", "b@example.com"]
            "#,
        )
        .expect("config");
        let r = Receivers::build(&cfg, &reqwest::Client::new()).expect("valid");
        let t = r.targets(&["a@example.com".to_owned()], &["checkout".to_owned()]);
        let addrs: Vec<&str> = t.iter().map(|t| t.recipient.as_str()).collect();
        assert_eq!(addrs, vec!["a@example.com", "b@example.com"]);
    }

    #[test]
    fn http_receivers_are_targets_by_name() {
        let cfg: AlertingConfig = toml::from_str(
            r#"
            [receivers.pager]
            type = "pagerduty"
            routing_key = "R0UTING"
            [receivers.hook]
            type = "webhook"
            url = "http://127.0.0.1:9/hook"
            "#,
        )
        .expect("config");
        let r = Receivers::build(&cfg, &reqwest::Client::new()).expect("valid");
        let t = r.targets(&[], &["pager".to_owned(), "hook".to_owned()]);
        let pairs: Vec<(&str, &str)> = t
            .iter()
            .map(|t| (t.channel.as_str(), t.recipient.as_str()))
            .collect();
        assert_eq!(pairs, vec![("pagerduty", "pager"), ("webhook", "hook")]);
        assert!(r.http("pager").is_some());
    }

    #[test]
    fn a_bad_receiver_is_reported_by_name() {
        let cfg: AlertingConfig = toml::from_str(
            "[receivers.x]\ntype = \"email\"\nto = [\"nope\"]\n[receivers.y]\ntype = \"carrier_pigeon\"",
        )
        .expect("config");
        let problems = Receivers::build(&cfg, &reqwest::Client::new()).expect_err("invalid");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("\"y\"") && p.contains("carrier_pigeon")),
            "{problems:?}"
        );
    }
}
