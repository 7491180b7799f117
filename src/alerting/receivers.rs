//! Named receivers from `[alerting.receivers.<name>]` and the expansion of an alert's
//! routing into outbox targets.
//!
//! Channel `email` targets are addresses (from the model's `recipients` or an `email`
//! receiver's `to`); other channels target a receiver by name. Any receiver may override
//! what its messages say with `subject_template` / `text_template` (minijinja); messages are
//! rendered when they are queued, so the outbox holds exactly what goes out.

use std::collections::BTreeMap;
use std::sync::Arc;

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

/// A receiver's own wording: compiled `subject` and `text` templates.
#[derive(Debug)]
pub struct Templates {
    env: minijinja::Environment<'static>,
}

impl Templates {
    fn compile(subject: Option<String>, text: Option<String>) -> Result<Option<Self>, String> {
        if subject.is_none() && text.is_none() {
            return Ok(None);
        }
        let mut env = minijinja::Environment::new();
        for (name, source) in [("subject", subject), ("text", text)] {
            if let Some(source) = source {
                env.add_template_owned(name, source)
                    .map_err(|e| format!("{name}_template: {e}"))?;
            }
        }
        Ok(Some(Templates { env }))
    }

    /// Render `subject` and `text` with `context`, keeping the defaults for templates that
    /// are not set. A template that fails at render time falls back to the default text, so
    /// a message is never lost to a template mistake.
    pub fn render(&self, context: &serde_json::Value, subject: &str, text: &str) -> (String, String) {
        let ctx = minijinja::Value::from_serialize(context);
        let one = |name: &str, default: &str| {
            match self.env.get_template(name) {
            Ok(t) => t.render(&ctx).unwrap_or_else(|error| {
                tracing::warn!(message = "Receiver template failed; sending the default text.", template = name, %error);
                default.to_owned()
            }),
            Err(_) => default.to_owned(),
        }
        };
        (one("subject", subject).trim().to_owned(), one("text", text))
    }
}

#[derive(Debug, Clone)]
struct Named {
    receiver: Receiver,
    templates: Option<Arc<Templates>>,
}

/// Every configured receiver by name.
#[derive(Debug, Clone, Default)]
pub struct Receivers {
    by_name: BTreeMap<String, Named>,
}

/// One delivery target in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    /// `email`, or the receiver's type.
    pub channel: String,
    /// An address (email) or a receiver name.
    pub recipient: String,
    /// The receiver it came from (`None` for a model's own recipients).
    pub receiver: Option<String>,
}

fn take_string(table: &mut toml::Table, key: &str) -> Result<Option<String>, String> {
    match table.remove(key) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("{key} must be a string")),
    }
}

impl Receivers {
    /// Parse every receiver; all problems at once. HTTP receivers share `client`.
    pub fn build(cfg: &AlertingConfig, client: &reqwest::Client) -> Result<Self, Vec<String>> {
        let mut by_name = BTreeMap::new();
        let mut problems = Vec::new();
        for (name, table) in &cfg.receivers {
            let mut table = table.clone();
            let templates = take_string(&mut table, "subject_template")
                .and_then(|s| Ok((s, take_string(&mut table, "text_template")?)))
                .and_then(|(s, t)| Templates::compile(s, t));
            let templates = match templates {
                Ok(t) => t.map(Arc::new),
                Err(e) => {
                    problems.push(format!("receiver {name:?}: {e}"));
                    continue;
                }
            };
            let is_email = table.get("type").and_then(toml::Value::as_str) == Some("email");
            let value = toml::Value::Table(table);
            let receiver = if is_email {
                value
                    .try_into::<EmailReceiver>()
                    .map_err(|e| format!("receiver {name:?}: {e}"))
                    .and_then(|EmailReceiver { to, .. }| {
                        match to.iter().find(|a| a.parse::<lettre::Address>().is_err()) {
                            Some(bad) => Err(format!("receiver {name:?}: {bad:?} is not an e-mail address")),
                            None => Ok(Receiver::Email { to }),
                        }
                    })
            } else {
                value
                    .try_into::<notifiers::ReceiverConfig>()
                    .map_err(|e| format!("receiver {name:?}: {e}"))
                    .and_then(|cfg| {
                        notifiers::Receiver::build(name, &cfg, client.clone())
                            .map(Receiver::Http)
                            .map_err(|e| format!("receiver {name:?}: {e}"))
                    })
            };
            match receiver {
                Ok(receiver) => {
                    by_name.insert(name.clone(), Named { receiver, templates });
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
                receiver: None,
            })
            .collect();
        for name in routed {
            match self.by_name.get(name).map(|n| &n.receiver) {
                Some(Receiver::Email { to }) => out.extend(to.iter().map(|a| Target {
                    channel: "email".to_owned(),
                    recipient: a.clone(),
                    receiver: Some(name.clone()),
                })),
                Some(Receiver::Http(r)) => out.push(Target {
                    channel: r.kind().to_owned(),
                    recipient: name.clone(),
                    receiver: Some(name.clone()),
                }),
                None => tracing::warn!(message = "Route names an unknown receiver.", receiver = %name),
            }
        }
        out.sort();
        // One message per (channel, recipient), whichever route named it first.
        out.dedup_by(|a, b| a.channel == b.channel && a.recipient == b.recipient);
        out
    }

    /// The templates of receiver `name`, if it has any.
    pub fn templates(&self, name: &str) -> Option<&Templates> {
        self.by_name.get(name).and_then(|n| n.templates.as_deref())
    }

    /// The HTTP receiver called `name`.
    pub fn http(&self, name: &str) -> Option<&notifiers::Receiver> {
        match self.by_name.get(name).map(|n| &n.receiver) {
            Some(Receiver::Http(r)) => Some(r),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(toml_text: &str) -> Result<Receivers, Vec<String>> {
        let cfg: AlertingConfig = toml::from_str(toml_text).expect("config");
        Receivers::build(&cfg, &reqwest::Client::new())
    }

    #[test]
    fn email_receivers_expand_to_addresses_without_duplicates() {
        let r = build("[receivers.checkout]\ntype = \"email\"\nto = [\"a@example.com\", \"b@example.com\"]")
            .expect("valid");
        let t = r.targets(&["a@example.com".to_owned()], &["checkout".to_owned()]);
        let addrs: Vec<&str> = t.iter().map(|t| t.recipient.as_str()).collect();
        assert_eq!(addrs, vec!["a@example.com", "b@example.com"]);
    }

    #[test]
    fn http_receivers_are_targets_by_name() {
        let r = build(
            "[receivers.pager]\ntype = \"pagerduty\"\nrouting_key = \"R0UTING\"\n\
             [receivers.hook]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/hook\"",
        )
        .expect("valid");
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
        let problems = build(
            "[receivers.x]\ntype = \"email\"\nto = [\"nope\"]\n[receivers.y]\ntype = \"carrier_pigeon\"\n\
             [receivers.z]\ntype = \"email\"\nto = []\nsubject_template = \"{{ unclosed\"",
        )
        .expect_err("invalid");
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("\"y\"") && p.contains("carrier_pigeon")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("\"z\"") && p.contains("subject_template")),
            "{problems:?}"
        );
    }

    #[test]
    fn templates_override_the_wording_and_fall_back_on_render_errors() {
        let r = build(
            "[receivers.sms]\ntype = \"email\"\nto = [\"a@example.com\"]\n\
             subject_template = \"{{ kpi_title }} {{ event }}: {{ value | round(1) }}\"",
        )
        .expect("valid");
        let t = r.templates("sms").expect("templates");
        let ctx = serde_json::json!({"kpi_title": "Orders", "event": "firing", "value": 3.25});
        let (subject, text) = t.render(&ctx, "default subject", "default text");
        assert_eq!(subject, "Orders firing: 3.3");
        assert_eq!(text, "default text", "no text_template: the default");
        let bad = build(
            "[receivers.b]\ntype = \"email\"\nto = [\"a@example.com\"]\nsubject_template = \"{{ value | nosuchfilter }}\"",
        );
        // An unknown filter is caught when the template is compiled or, at the latest, rendered.
        if let Ok(r) = bad {
            let (subject, _) = r.templates("b").expect("templates").render(&ctx, "fallback", "t");
            assert_eq!(subject, "fallback");
        }
    }
}
