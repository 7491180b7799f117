//! Layered, typed configuration: embedded defaults, then an optional TOML file, then
//! `KPIWATCH_*` environment variables (`__` separates nesting levels).
//!
//! Loaded once at startup into [`Settings`]; sub-structs are passed explicitly to the parts
//! that need them. Nothing else in the crate reads the environment. Secrets (source URLs,
//! SMTP password) are [`SecretString`]s and only ever displayed redacted.
//!
//! A leaf module: depends on nothing else in the crate.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The embedded defaults, also shown by `kpiwatch check`.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

/// Everything kpiwatch can be configured with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The HTTP API.
    pub http: HttpConfig,
    /// The state store.
    pub state: StateConfig,
    /// Alert e-mail.
    pub email: EmailConfig,
    /// The scheduler.
    pub scheduler: SchedulerConfig,
    /// Named KPI sources.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    /// Routing, receivers and maintenance windows.
    #[serde(default)]
    pub alerting: AlertingConfig,
    /// The daily digest e-mail.
    #[serde(default)]
    pub digest: DigestConfig,
    /// API access.
    #[serde(default)]
    pub api: ApiConfig,
    /// How long stored rows are kept.
    pub retention: RetentionConfig,
    /// Events and holidays (`[[calendar]]`), parsed and checked by `calendar::from_config`.
    #[serde(default)]
    pub calendar: Vec<CalendarEntry>,
}

/// How long the state store keeps each kind of row; older ones are pruned in small batches
/// by one process at a time (see `retention::prune`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Buckets read from sources. The detector replays up to `scheduler.history` +
    /// `scheduler.history_slack` of them, so they are kept at least that long (and a day)
    /// whatever this says.
    #[serde(with = "humantime_serde_compat")]
    pub observations: Duration,
    /// The detector's verdicts per bucket (the charts' expected value and band).
    #[serde(with = "humantime_serde_compat")]
    pub evaluations: Duration,
    /// Flagged buckets (the anomaly list), by bucket time.
    #[serde(with = "humantime_serde_compat")]
    pub anomalies: Duration,
    /// The run log.
    #[serde(with = "humantime_serde_compat")]
    pub runs: Duration,
    /// Delivered (or given-up) notifications of closed alerts, and digests.
    #[serde(with = "humantime_serde_compat")]
    pub notifications: Duration,
    /// How often pruning runs.
    #[serde(with = "humantime_serde_compat")]
    pub every: Duration,
}

/// One `[[calendar]]` entry: an event or holiday whose buckets are neither learned nor
/// alerted, or an iCalendar file of them. Dates are local to `timezone`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CalendarEntry {
    /// What it is ("Black Friday campaign"); the default name of a file's events.
    pub name: String,
    /// A whole local day `YYYY-MM-DD` (or `days` of them); or give `start` and `end`.
    pub date: Option<String>,
    /// Days covered from `date` (default 1).
    pub days: Option<u32>,
    /// Local start `YYYY-MM-DDTHH:MM[:SS]` (or a date: midnight).
    pub start: Option<String>,
    /// Local end, exclusive.
    pub end: Option<String>,
    /// Recurs every year on the same local date.
    #[serde(default)]
    pub yearly: bool,
    /// IANA timezone of the dates (default UTC).
    pub timezone: Option<String>,
    /// Also cover this long before (`2h`).
    pub margin_before: Option<String>,
    /// Also cover this long after.
    pub margin_after: Option<String>,
    /// KPI ids it applies to (none and no `labels`: every KPI).
    #[serde(default)]
    pub kpis: Vec<String>,
    /// Labels a KPI must carry for it to apply.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// An iCalendar (`.ics`) file whose events are imported with this entry's settings
    /// (relative to the working directory).
    pub ical: Option<PathBuf>,
}

/// Who may use the HTTP API.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Bearer tokens, stored as SHA-256 hashes (`kpiwatch token` makes one). With none, the
    /// API is open (bind it to a trusted interface).
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
}

/// One API token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it (recorded in the audit log).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Lower-case hex SHA-256 of the token.
    pub sha256: String,
}

/// What a token may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read everything.
    Viewer,
    /// Also register and tune KPIs, acknowledge, silence.
    Editor,
    /// Also read the audit log.
    Admin,
}

/// The daily digest: who gets it, when.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigestConfig {
    /// Send digests at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Default local send time `HH:MM`.
    #[serde(default = "default_digest_time")]
    pub time: String,
    /// Default IANA timezone.
    #[serde(default = "utc")]
    pub timezone: String,
    /// Recipients beyond the models' own `recipients`, with their KPIs, time and zone.
    #[serde(default)]
    pub recipients: Vec<DigestRecipientConfig>,
}

impl Default for DigestConfig {
    fn default() -> Self {
        DigestConfig {
            enabled: true,
            time: default_digest_time(),
            timezone: utc(),
            recipients: Vec::new(),
        }
    }
}

/// One digest recipient from config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigestRecipientConfig {
    /// E-mail address (a person or a team alias).
    pub address: String,
    /// KPI ids, or `"*"` for every KPI; the models that list this address are added.
    #[serde(default)]
    pub kpis: Vec<String>,
    /// Local send time `HH:MM` (default `digest.time`).
    pub time: Option<String>,
    /// IANA timezone (default `digest.timezone`).
    pub timezone: Option<String>,
}

fn yes() -> bool {
    true
}

fn default_digest_time() -> String {
    "08:00".to_owned()
}

/// Alertmanager-style grouping of e-mail notifications.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupingConfig {
    /// Labels whose values form a group (`kpi`, `team`, `severity`, any model label).
    #[serde(default = "default_group_by")]
    pub by: Vec<String>,
    /// How long to wait for more incidents of a new group before the first message.
    #[serde(default, with = "humantime_serde_compat")]
    pub wait: Duration,
    /// At least this long between two messages about one group.
    #[serde(default = "default_group_interval", with = "humantime_serde_compat")]
    pub interval: Duration,
}

impl Default for GroupingConfig {
    fn default() -> Self {
        GroupingConfig {
            by: default_group_by(),
            wait: Duration::ZERO,
            interval: default_group_interval(),
        }
    }
}

fn default_group_by() -> Vec<String> {
    vec!["kpi".to_owned()]
}

fn default_group_interval() -> Duration {
    Duration::from_secs(300)
}

/// Alert routing and suppression.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertingConfig {
    /// The routing tree (receivers by label matchers).
    #[serde(default)]
    pub routing: RoutingConfig,
    /// Recurring maintenance windows: alerts inside them are recorded, not sent.
    #[serde(default)]
    pub maintenance: Vec<MaintenanceWindow>,
    /// How e-mails about several incidents are grouped into one.
    #[serde(default)]
    pub grouping: GroupingConfig,
    /// Secret that signs the acknowledge links in messages (default: generated once and kept
    /// in the state store).
    pub link_secret: Option<SecretString>,
    /// Named receivers (`type = "email" | "webhook" | "slack" | …`), parsed by `alerting`.
    #[serde(default)]
    pub receivers: BTreeMap<String, toml::Table>,
}

/// One route: matchers, a receiver, optional children.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Label matchers, all of which must hold: `value` (equal), `!value` (not equal),
    /// `~regex` (matches the whole value).
    #[serde(default)]
    pub matchers: BTreeMap<String, String>,
    /// Receiver names for matching alerts.
    #[serde(default)]
    pub receivers: Vec<String>,
    /// Keep trying later sibling routes after this one matched.
    #[serde(default, rename = "continue")]
    pub continue_matching: bool,
    /// Child routes, tried when this one matches; if none matches, this route's receivers apply.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

/// The whole tree: the root's receivers are the default.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// Receivers for alerts no route matches.
    #[serde(default)]
    pub receivers: Vec<String>,
    /// Routes, tried in order.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

/// A recurring maintenance window from config, e.g. every Sunday 02:00–04:00 Europe/Berlin.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceWindow {
    /// A name for messages and logs.
    pub name: String,
    /// Label matchers; empty matches every alert.
    #[serde(default)]
    pub matchers: BTreeMap<String, String>,
    /// Days it recurs on (`mon` … `sun`); empty = every day.
    #[serde(default)]
    pub weekdays: Vec<String>,
    /// Local start time `HH:MM`.
    pub start: String,
    /// Local end time `HH:MM` (may be past midnight: 23:00–01:00).
    pub end: String,
    /// IANA timezone of `start`/`end`.
    #[serde(default = "utc")]
    pub timezone: String,
}

fn utc() -> String {
    "UTC".to_owned()
}

/// HTTP settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on; port 0 picks a free port.
    pub bind: SocketAddr,
    /// Base URL for links in messages.
    pub public_url: String,
}

/// Where kpiwatch keeps its own state.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// `sqlite://path` (embedded default) or `postgres://…` (production).
    pub url: SecretString,
}

/// E-mail delivery.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// The `From:` header.
    pub from: String,
    /// Folder for `.eml` files when no SMTP server is configured.
    pub outbox_dir: PathBuf,
    /// Recipients for KPIs that name none.
    #[serde(default)]
    pub default_recipients: Vec<String>,
    /// An SMTP server; without it mail goes to `outbox_dir`.
    pub smtp: Option<SmtpConfig>,
}

/// An SMTP relay.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// Host name or address.
    pub host: String,
    /// Port (25, 587, 465, or a test server's).
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    /// User name for AUTH, if any.
    pub username: Option<String>,
    /// Password for AUTH, if any.
    pub password: Option<SecretString>,
    /// Timeout for one delivery.
    #[serde(default = "default_smtp_timeout", with = "humantime_serde_compat")]
    pub timeout: Duration,
    /// `none` (plain), `opportunistic` (STARTTLS when offered), `starttls` (required) or
    /// `tls` (implicit TLS, usually port 465).
    #[serde(default)]
    pub tls: SmtpTls,
    /// Accept self-signed or otherwise invalid certificates (test relays only).
    #[serde(default)]
    pub accept_invalid_certs: bool,
}

/// How to secure the SMTP connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain text; only for a trusted local relay.
    None,
    /// STARTTLS when the server offers it, else plain text.
    #[default]
    Opportunistic,
    /// STARTTLS, or fail.
    Starttls,
    /// TLS from the first byte.
    Tls,
}

fn default_smtp_port() -> u16 {
    25
}

fn default_smtp_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Scheduler knobs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// How often to look for due KPIs.
    #[serde(with = "humantime_serde_compat")]
    pub tick: Duration,
    /// History fetched on a KPI's first run.
    #[serde(with = "humantime_serde_compat")]
    pub backfill: Duration,
    /// Stored history replayed through the detector per evaluation.
    #[serde(with = "humantime_serde_compat")]
    pub history: Duration,
    /// How far the replay start may lag behind `history` ago: it moves once per
    /// `history_slack`, at a time of its own per series, so a replay covers between `history`
    /// and `history + history_slack`, and kept detectors and checkpoints are invalidated once
    /// per `history_slack` per series, spread over it (not all at once).
    #[serde(with = "humantime_serde_compat")]
    pub history_slack: Duration,
    /// Buckets re-read before the new window.
    pub overlap_buckets: u32,
    /// Keep each series' detector between runs and step only the new buckets when replaying
    /// would rebuild the same state (`false`: replay `history` on every run).
    pub keep_detectors: bool,
    /// How often (in bucket time) each series' kept detector is written to the store as a
    /// checkpoint, so a restart or takeover steps only the buckets after it; `0s`: never.
    #[serde(with = "humantime_serde_compat")]
    pub checkpoint_every: Duration,
    /// Concurrent KPI runs.
    pub max_concurrent_runs: usize,
    /// Concurrent KPI runs against one source (a slow or dead source holds at most this
    /// many of the `max_concurrent_runs` slots).
    pub max_runs_per_source: usize,
    /// Buckets back in band before an alert resolves.
    pub recovery_buckets: u32,
    /// How long a lease on a KPI run (renewed while it runs) and a claim on outbox messages
    /// last (wall clock) before another process may take them over.
    #[serde(with = "humantime_serde_compat")]
    pub claim_timeout: Duration,
    /// Anomalies older than this many buckets behind the newest complete one are recorded
    /// but do not alert (backfilled history must not page anyone).
    pub alert_horizon_buckets: u32,
}

/// A named database or metric store that KPI queries run against.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// What speaks at `url`. Optional for the SQL kinds (the URL scheme says); required for
    /// `prometheus` and `influxdb`, whose URLs are plain `http(s)://`.
    #[serde(default, rename = "type")]
    pub kind: Option<SourceKind>,
    /// `postgres://…`, `mysql://…` / `mariadb://…`, `sqlite://…`, or the `http(s)://` base
    /// URL of a Prometheus or InfluxDB server.
    pub url: SecretString,
    /// Connections (requests, for HTTP sources) in flight at once: the concurrency limit.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Server-side statement timeout, also enforced client-side (the request timeout of an
    /// HTTP source; Prometheus gets it as its `timeout` parameter too).
    #[serde(default = "default_statement_timeout", with = "humantime_serde_compat")]
    pub statement_timeout: Duration,
    /// Rows (points, for Prometheus) one query may return before it is rejected.
    #[serde(default = "default_row_cap")]
    pub row_cap: usize,
    /// HTTP sources: basic-auth user (InfluxDB's `u`, or a Prometheus behind a proxy).
    #[serde(default)]
    pub username: Option<String>,
    /// HTTP sources: basic-auth password. Never logged.
    #[serde(default)]
    pub password: Option<SecretString>,
    /// HTTP sources: `Authorization: Bearer` token instead of basic auth. Never logged.
    #[serde(default)]
    pub bearer_token: Option<SecretString>,
    /// InfluxDB: the database (`db`) queries run against.
    #[serde(default)]
    pub database: Option<String>,
    /// Prometheus: most evaluation steps in one range query; longer windows are split.
    /// Prometheus itself refuses more than 11,000 points per series.
    #[serde(default = "default_max_steps_per_query")]
    pub max_steps_per_query: usize,
}

/// The kinds of KPI source. SQL databases are told apart by their URL scheme; the HTTP
/// metric stores by this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// PostgreSQL (`postgres://`).
    Postgres,
    /// MySQL or MariaDB (`mysql://`, `mariadb://`).
    Mysql,
    /// SQLite (`sqlite://`).
    Sqlite,
    /// Prometheus's HTTP API (`http(s)://host:9090`), PromQL range queries.
    Prometheus,
    /// InfluxDB 1.x's HTTP API (`http(s)://host:8086`), InfluxQL over `/query`.
    Influxdb,
}

impl SourceKind {
    /// The kind a URL scheme implies, if it implies one.
    pub fn from_scheme(scheme: &str) -> Option<Self> {
        match scheme.to_ascii_lowercase().as_str() {
            "postgres" | "postgresql" => Some(SourceKind::Postgres),
            "mysql" | "mariadb" => Some(SourceKind::Mysql),
            "sqlite" => Some(SourceKind::Sqlite),
            _ => None,
        }
    }

    /// Whether this is one of the HTTP metric stores.
    pub fn is_http(self) -> bool {
        matches!(self, SourceKind::Prometheus | SourceKind::Influxdb)
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SourceKind::Postgres => "postgres",
            SourceKind::Mysql => "mysql",
            SourceKind::Sqlite => "sqlite",
            SourceKind::Prometheus => "prometheus",
            SourceKind::Influxdb => "influxdb",
        })
    }
}

impl SourceConfig {
    /// The source's kind: `type` if given, else what the URL scheme implies.
    pub fn resolved_kind(&self) -> Option<SourceKind> {
        self.kind.or_else(|| {
            let url = self.url.expose_secret();
            SourceKind::from_scheme(url.split(':').next().unwrap_or_default())
        })
    }

    /// Everything wrong with this source's settings, each naming `sources.<name>.<field>`.
    fn problems(&self, name: &str) -> Vec<String> {
        let mut problems = Vec::new();
        let parsed = url::Url::parse(self.url.expose_secret());
        if let Err(e) = &parsed {
            problems.push(format!("sources.{name}.url is not a URL: {e}"));
        }
        if self.max_connections == 0 {
            problems.push(format!("sources.{name}.max_connections must be at least 1"));
        }
        if self.row_cap == 0 {
            problems.push(format!("sources.{name}.row_cap must be at least 1"));
        }
        let scheme = parsed.as_ref().map(|u| u.scheme().to_owned()).unwrap_or_default();
        let http_scheme = scheme == "http" || scheme == "https";
        match self.resolved_kind() {
            None if http_scheme => problems.push(format!(
                "sources.{name}: an http(s) URL needs type = \"prometheus\" or \"influxdb\""
            )),
            None => {}
            Some(kind) if kind.is_http() => {
                if !http_scheme && parsed.is_ok() {
                    problems.push(format!(
                        "sources.{name}.url: a {kind} source needs an http:// or https:// URL, not {scheme}://"
                    ));
                }
                if kind == SourceKind::Influxdb && self.database.as_deref().is_none_or(str::is_empty) {
                    problems.push(format!(
                        "sources.{name}.database: an influxdb source needs the database its queries read"
                    ));
                }
                if kind == SourceKind::Prometheus && self.database.is_some() {
                    problems.push(format!(
                        "sources.{name}.database: only influxdb sources take a database"
                    ));
                }
                if self.bearer_token.is_some() && (self.username.is_some() || self.password.is_some()) {
                    problems.push(format!(
                        "sources.{name}: set either bearer_token or username/password, not both"
                    ));
                }
                if self.password.is_some() && self.username.is_none() {
                    problems.push(format!("sources.{name}.password needs a username"));
                }
                if self.max_steps_per_query < 2 {
                    problems.push(format!("sources.{name}.max_steps_per_query must be at least 2"));
                }
            }
            Some(kind) => {
                if SourceKind::from_scheme(&scheme).is_some_and(|implied| implied != kind) {
                    problems.push(format!(
                        "sources.{name}: type = \"{kind}\" does not match the URL's {scheme}:// scheme"
                    ));
                }
                for (field, set) in [
                    ("username", self.username.is_some()),
                    ("password", self.password.is_some()),
                    ("bearer_token", self.bearer_token.is_some()),
                    ("database", self.database.is_some()),
                ] {
                    if set {
                        problems.push(format!(
                            "sources.{name}.{field}: only prometheus and influxdb sources take it (put credentials in the URL)"
                        ));
                    }
                }
            }
        }
        problems
    }
}

fn default_max_steps_per_query() -> usize {
    11_000
}

fn default_max_connections() -> u32 {
    2
}

fn default_statement_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_row_cap() -> usize {
    200_000
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file, a variable or a value is wrong.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// `KPIWATCH_*` variables that belong to the command line (`--config`, `--models`).
const CLI_VARIABLES: [&str; 2] = ["CONFIG", "MODELS"];

/// Load settings: embedded defaults, then `file` if it exists (an explicitly named file must
/// exist), then `KPIWATCH_*` variables from the process environment.
pub fn load(file: Option<&Path>) -> Result<Settings, Error> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    load_from(file, &env)
}

/// [`load`] with the environment passed in, so tests need not touch the process environment.
pub fn load_from(file: Option<&Path>, env: &[(String, String)]) -> Result<Settings, Error> {
    let mut figment = Figment::from(Toml::string(DEFAULTS));
    match file {
        Some(path) if path.exists() => figment = figment.merge(Toml::file(path)),
        Some(path) => {
            return Err(Error::Invalid(format!(
                "config file {} does not exist",
                path.display()
            )))
        }
        None => {
            let default = Path::new("kpiwatch.toml");
            if default.exists() {
                figment = figment.merge(Toml::file(default));
            }
        }
    }
    // The environment is passed in (not read here) so tests stay isolated; the mapping is
    // figment's `Env::prefixed("KPIWATCH_").split("__")`: lower-cased, `__` nests.
    for (key, value) in env {
        let Some(rest) = key.strip_prefix("KPIWATCH_") else {
            continue;
        };
        // Command-line level variables, read by clap, not settings.
        if CLI_VARIABLES.contains(&rest) {
            continue;
        }
        let path = rest.to_ascii_lowercase().replace("__", ".");
        // Values go through TOML parsing so numbers and arrays keep their types; a bare
        // string that is not valid TOML is taken verbatim.
        let value: toml::Value = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.clone()));
        figment = figment.merge(Serialized::default(&path, value));
    }
    let settings: Settings = figment.extract().map_err(|e| Error::Invalid(e.to_string()))?;
    settings.validate()?;
    Ok(settings)
}

impl Settings {
    fn validate(&self) -> Result<(), Error> {
        let mut problems = Vec::new();
        if self.retention.every.is_zero() {
            problems.push("retention.every must be positive".to_owned());
        }
        if self.scheduler.max_runs_per_source == 0 {
            problems.push("scheduler.max_runs_per_source must be at least 1".to_owned());
        }
        if self.scheduler.max_concurrent_runs == 0 {
            problems.push("scheduler.max_concurrent_runs must be at least 1".to_owned());
        }
        if self.scheduler.recovery_buckets == 0 {
            problems.push("scheduler.recovery_buckets must be at least 1".to_owned());
        }
        if self.scheduler.tick.is_zero() {
            problems.push("scheduler.tick must be positive".to_owned());
        }
        for (name, source) in &self.sources {
            problems.extend(source.problems(name));
        }
        let times = std::iter::once(("digest.time", Some(&self.digest.time))).chain(
            self.digest
                .recipients
                .iter()
                .map(|r| ("digest.recipients.time", r.time.as_ref())),
        );
        for (what, time) in times {
            if let Some(t) = time {
                if chrono::NaiveTime::parse_from_str(t, "%H:%M").is_err() {
                    problems.push(format!("{what} {t:?} is not HH:MM"));
                }
            }
        }
        let zones = std::iter::once(Some(&self.digest.timezone))
            .chain(self.digest.recipients.iter().map(|r| r.timezone.as_ref()));
        for zone in zones.flatten() {
            if zone.parse::<chrono_tz::Tz>().is_err() {
                problems.push(format!("digest timezone {zone:?} is not an IANA timezone"));
            }
        }
        for r in &self.digest.recipients {
            if r.address.parse::<lettre::Address>().is_err() {
                problems.push(format!(
                    "digest recipient {:?} is not an e-mail address",
                    r.address
                ));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for t in &self.api.tokens {
            if !names.insert(t.name.as_str()) {
                problems.push(format!("api.tokens: the name {:?} is used twice", t.name));
            }
            if t.sha256.len() != 64
                || !t
                    .sha256
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            {
                problems.push(format!(
                    "api.tokens {:?}: sha256 must be 64 lower-case hex digits",
                    t.name
                ));
            }
        }
        let known = |name: &str| self.alerting.receivers.contains_key(name);
        problems.extend(self.alerting.routing.validate(&known));
        for window in &self.alerting.maintenance {
            problems.extend(window.validate());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(problems.join("; ")))
        }
    }
}

/// A URL with any password replaced by `***`, safe to log or return from the API.
pub fn redact_url(url: &SecretString) -> String {
    match url::Url::parse(url.expose_secret()) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "<unparseable url>".to_owned(),
    }
}

/// serde helpers for `"30s"` / `"28d"` style durations (humantime).
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_load_and_env_overrides_nested_keys() {
        let s = load_from(
            None,
            &env(&[
                ("KPIWATCH_HTTP__BIND", "127.0.0.1:9000"),
                ("KPIWATCH_SOURCES__SHOP__URL", "postgres://u:hunter2@db/shop"),
                ("KPIWATCH_SCHEDULER__OVERLAP_BUCKETS", "5"),
                ("UNRELATED", "x"),
                ("KPIWATCH_CONFIG", "elsewhere.toml"),
            ]),
        )
        .expect("config loads");
        assert_eq!(s.http.bind.port(), 9000);
        assert_eq!(s.scheduler.overlap_buckets, 5);
        let shop = s.sources.get("shop").expect("source from env");
        assert_eq!(shop.row_cap, 200_000);
        assert!(!redact_url(&shop.url).contains("hunter2"));
        assert!(!format!("{s:?}").contains("hunter2"), "Debug must not leak");
    }

    #[test]
    fn an_unknown_variable_is_an_error_naming_it() {
        let err = load_from(None, &env(&[("KPIWATCH_HTTP__BINDD", "x")])).expect_err("typo");
        assert!(err.to_string().contains("bindd"), "{err}");
    }

    #[test]
    fn a_bad_value_is_an_error_naming_the_key() {
        let err = load_from(None, &env(&[("KPIWATCH_SCHEDULER__TICK", "soon")])).expect_err("bad duration");
        assert!(err.to_string().contains("tick"), "{err}");
    }

    #[test]
    fn a_missing_explicit_file_is_an_error() {
        let err = load_from(Some(Path::new("/nonexistent/kpiwatch.toml")), &[]).expect_err("missing file");
        assert!(err.to_string().contains("does not exist"));
    }

    #[test]
    fn http_sources_need_a_type_and_their_own_settings() {
        let ok = load_from(
            None,
            &env(&[
                ("KPIWATCH_SOURCES__PROM__TYPE", "prometheus"),
                ("KPIWATCH_SOURCES__PROM__URL", "http://127.0.0.1:9090"),
                ("KPIWATCH_SOURCES__PROM__BEARER_TOKEN", "t0ken"),
                ("KPIWATCH_SOURCES__INFLUX__TYPE", "influxdb"),
                ("KPIWATCH_SOURCES__INFLUX__URL", "http://127.0.0.1:8086"),
                ("KPIWATCH_SOURCES__INFLUX__DATABASE", "shop"),
                ("KPIWATCH_SOURCES__INFLUX__USERNAME", "kpiwatch"),
                ("KPIWATCH_SOURCES__INFLUX__PASSWORD", "pw"),
            ]),
        )
        .expect("valid HTTP sources");
        assert_eq!(ok.sources["prom"].resolved_kind(), Some(SourceKind::Prometheus));
        assert_eq!(ok.sources["prom"].max_steps_per_query, 11_000);
        assert_eq!(ok.sources["influx"].database.as_deref(), Some("shop"));

        let err = load_from(
            None,
            &env(&[
                ("KPIWATCH_SOURCES__A__URL", "http://127.0.0.1:9090"),
                ("KPIWATCH_SOURCES__B__TYPE", "influxdb"),
                ("KPIWATCH_SOURCES__B__URL", "http://127.0.0.1:8086"),
                ("KPIWATCH_SOURCES__C__TYPE", "prometheus"),
                ("KPIWATCH_SOURCES__C__URL", "postgres://db/x"),
                ("KPIWATCH_SOURCES__D__URL", "postgres://db/x"),
                ("KPIWATCH_SOURCES__D__BEARER_TOKEN", "secret-token"),
                ("KPIWATCH_SOURCES__E__TYPE", "sqlite"),
                ("KPIWATCH_SOURCES__E__URL", "postgres://db/x"),
            ]),
        )
        .expect_err("invalid")
        .to_string();
        for needle in [
            "sources.a: an http(s) URL needs type = \"prometheus\" or \"influxdb\"",
            "sources.b.database: an influxdb source needs",
            "sources.c.url: a prometheus source needs an http:// or https:// URL",
            "sources.d.bearer_token: only prometheus and influxdb sources take it",
            "sources.e: type = \"sqlite\" does not match",
        ] {
            assert!(err.contains(needle), "missing {needle:?} in {err}");
        }
        assert!(!err.contains("secret-token"), "{err}");
    }
}
