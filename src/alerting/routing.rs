//! The routing tree: which receivers get an alert, chosen by matchers on its labels.
//!
//! Shaped like Prometheus Alertmanager's: routes are tried in order; the first that matches
//! wins unless it says `continue = true`, in which case later routes are tried too; a route
//! may have child routes; when nothing matches, the root receiver gets the alert. Labels are
//! the model's labels plus `kpi`, `severity` and `owner`. Pure.

use std::collections::BTreeMap;

pub use crate::config::{RouteConfig, RoutingConfig};

/// A label matcher failed to compile.
#[derive(Debug, thiserror::Error)]
#[error("routing matcher {label} = {pattern:?}: {message}")]
pub struct MatcherError {
    label: String,
    pattern: String,
    message: String,
}

fn matches(pattern: &str, value: Option<&str>) -> Result<bool, String> {
    let value = value.unwrap_or("");
    if let Some(re) = pattern.strip_prefix('~') {
        let re = regex_lite::Regex::new(&format!("^(?:{re})$")).map_err(|e| e.to_string())?;
        Ok(re.is_match(value))
    } else if let Some(not) = pattern.strip_prefix('!') {
        Ok(value != not)
    } else {
        Ok(value == pattern)
    }
}

pub(super) fn route_matches(
    route: &RouteConfig,
    labels: &BTreeMap<String, String>,
) -> Result<bool, MatcherError> {
    for (label, pattern) in &route.matchers {
        let ok = matches(pattern, labels.get(label).map(String::as_str)).map_err(|message| MatcherError {
            label: label.clone(),
            pattern: pattern.clone(),
            message,
        })?;
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Walk `routes`; push the receivers of every route that applies. Returns whether any matched.
fn walk(
    routes: &[RouteConfig],
    labels: &BTreeMap<String, String>,
    out: &mut Vec<String>,
) -> Result<bool, MatcherError> {
    let mut any = false;
    for route in routes {
        if !route_matches(route, labels)? {
            continue;
        }
        any = true;
        if !walk(&route.routes, labels, out)? {
            out.extend(route.receivers.iter().cloned());
        }
        if !route.continue_matching {
            break;
        }
    }
    Ok(any)
}

impl RoutingConfig {
    /// The receivers for an alert with these labels, deduplicated, in route order.
    pub fn receivers_for(&self, labels: &BTreeMap<String, String>) -> Result<Vec<String>, MatcherError> {
        let mut out = Vec::new();
        if !walk(&self.routes, labels, &mut out)? {
            out.extend(self.receivers.iter().cloned());
        }
        let mut seen = std::collections::BTreeSet::new();
        out.retain(|r| seen.insert(r.clone()));
        Ok(out)
    }

    /// Every matcher compiles and every receiver named exists in `known`.
    pub fn validate(&self, known: &dyn Fn(&str) -> bool) -> Vec<String> {
        let mut problems = Vec::new();
        fn visit(routes: &[RouteConfig], known: &dyn Fn(&str) -> bool, problems: &mut Vec<String>) {
            for r in routes {
                for (label, pattern) in &r.matchers {
                    if let Err(e) = matches(pattern, None) {
                        problems.push(format!("routing matcher {label} = {pattern:?}: {e}"));
                    }
                }
                for name in &r.receivers {
                    if !known(name) {
                        problems.push(format!(
                            "routing names receiver {name:?}, which is not configured"
                        ));
                    }
                }
                visit(&r.routes, known, problems);
            }
        }
        for name in &self.receivers {
            if !known(name) {
                problems.push(format!(
                    "routing names receiver {name:?}, which is not configured"
                ));
            }
        }
        visit(&self.routes, known, &mut problems);
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn tree() -> RoutingConfig {
        toml::from_str(
            r#"
            receivers = ["default"]
            [[routes]]
            matchers = { team = "payments" }
            receivers = ["payments-slack"]
            continue = true
              [[routes.routes]]
              matchers = { severity = "critical" }
              receivers = ["payments-pager"]
            [[routes]]
            matchers = { kpi = "~orders|revenue_.*" }
            receivers = ["checkout-email"]
            [[routes]]
            matchers = { severity = "!info" }
            receivers = ["catch-all"]
            "#,
        )
        .expect("valid tree")
    }

    #[test]
    fn the_first_matching_route_wins_unless_it_continues() {
        let t = tree();
        let r = t
            .receivers_for(&labels(&[
                ("team", "payments"),
                ("severity", "warning"),
                ("kpi", "orders"),
            ]))
            .expect("ok");
        assert_eq!(r, vec!["payments-slack", "checkout-email"]);
    }

    #[test]
    fn a_matching_child_replaces_its_parents_receivers() {
        let r = tree()
            .receivers_for(&labels(&[
                ("team", "payments"),
                ("severity", "critical"),
                ("kpi", "x"),
            ]))
            .expect("ok");
        assert_eq!(r, vec!["payments-pager", "catch-all"]);
    }

    #[test]
    fn regex_and_negation_matchers_and_the_default() {
        let t = tree();
        assert_eq!(
            t.receivers_for(&labels(&[("kpi", "revenue_daily"), ("severity", "info")]))
                .expect("ok"),
            vec!["checkout-email"]
        );
        assert_eq!(
            t.receivers_for(&labels(&[("kpi", "signups"), ("severity", "info")]))
                .expect("ok"),
            vec!["default"]
        );
    }

    #[test]
    fn unknown_receivers_and_bad_regexes_are_reported() {
        let t: RoutingConfig = toml::from_str(
            "receivers = [\"nope\"]\n[[routes]]\nmatchers = { kpi = \"~(\" }\nreceivers = [\"x\"]",
        )
        .expect("parses");
        let problems = t.validate(&|name| name == "x");
        assert_eq!(problems.len(), 2, "{problems:?}");
    }
}
