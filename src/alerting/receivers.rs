//! Named receivers from `[alerting.receivers.<name>]` and the expansion of an alert's
//! routing into outbox targets `(channel, recipient)`.
//!
//! Channel `email` targets are addresses (from the model's `recipients` or an `email`
//! receiver's `to`); other channels target a receiver by name.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::AlertingConfig;

/// A receiver as configured.
#[derive(Debug, Clone, PartialEq)]
pub enum Receiver {
    /// E-mail to fixed addresses through the configured mailer.
    Email {
        /// Addresses.
        to: Vec<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum RawReceiver {
    Email { to: Vec<String> },
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
    /// Parse every receiver; all problems at once.
    pub fn build(cfg: &AlertingConfig) -> Result<Self, Vec<String>> {
        let mut by_name = BTreeMap::new();
        let mut problems = Vec::new();
        for (name, table) in &cfg.receivers {
            match toml::Value::Table(table.clone()).try_into::<RawReceiver>() {
                Ok(RawReceiver::Email { to }) => {
                    for addr in &to {
                        if addr.parse::<lettre::Address>().is_err() {
                            problems.push(format!("receiver {name:?}: {addr:?} is not an e-mail address"));
                        }
                    }
                    by_name.insert(name.clone(), Receiver::Email { to });
                }
                Err(e) => problems.push(format!("receiver {name:?}: {e}")),
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
                None => tracing::warn!(message = "Route names an unknown receiver.", receiver = %name),
            }
        }
        out.sort();
        out.dedup();
        out
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
        let r = Receivers::build(&cfg).expect("valid");
        let t = r.targets(&["a@example.com".to_owned()], &["checkout".to_owned()]);
        let addrs: Vec<&str> = t.iter().map(|t| t.recipient.as_str()).collect();
        assert_eq!(addrs, vec!["a@example.com", "b@example.com"]);
    }

    #[test]
    fn a_bad_receiver_is_reported_by_name() {
        let cfg: AlertingConfig = toml::from_str(
            "[receivers.x]\ntype = \"email\"\nto = [\"nope\"]\n[receivers.y]\ntype = \"carrier_pigeon\"",
        )
        .expect("config");
        let problems = Receivers::build(&cfg).expect_err("invalid");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("\"y\"") && p.contains("carrier_pigeon")),
            "{problems:?}"
        );
    }
}
