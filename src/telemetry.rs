//! Logging (tracing) and metrics (Prometheus text format via `prometheus-client`).
//!
//! Event names follow `<Noun><Verb>[Error]`; metrics are snake_case with a unit and
//! `_total` on counters; labels are bounded (KPI ids, source names, fixed statuses) and
//! never hold raw error text. A leaf module.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

/// Install the global tracing subscriber. `RUST_LOG` overrides the default filter; `json`
/// switches to JSON lines.
pub fn init(default_filter: &str, json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    // A second init (tests, embedding) is not an error worth failing on.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Labels of a KPI run.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    /// KPI id.
    pub kpi: String,
    /// ok | data_missing | query_error.
    pub status: String,
}

/// Labels naming a source.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// Source name.
    pub source: String,
}

/// Labels naming a KPI.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KpiLabels {
    /// KPI id.
    pub kpi: String,
}

/// Labels of a notification delivery.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// Channel (email).
    pub channel: String,
    /// sent | failed.
    pub status: String,
}

/// Labels naming a receiver.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReceiverLabels {
    /// Receiver name (`email` for the mailer).
    pub receiver: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn query_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Every metric kpiwatch exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `kpi_runs_total{kpi,status}`.
    pub kpi_runs: Family<RunLabels, Counter>,
    /// `source_query_duration_seconds{source}`.
    pub query_duration: HistogramFamily<SourceLabels>,
    /// `source_query_failures_total{source}`.
    pub query_failures: Family<SourceLabels, Counter>,
    /// `anomalies_total{kpi}` (live anomalies, within the alert horizon).
    pub anomalies: Family<KpiLabels, Counter>,
    /// `notifications_total{channel,status}`.
    pub notifications: Family<DeliveryLabels, Counter>,
    /// `alerts_firing` — open incidents.
    pub alerts_firing: Gauge,
    /// `receiver_failing{receiver}` — 1 while a receiver's last delivery attempt failed.
    pub receiver_failing: Family<ReceiverLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let kpi_runs = Family::<RunLabels, Counter>::default();
        let query_duration =
            HistogramFamily::<SourceLabels>::new_with_constructor(query_histogram as fn() -> Histogram);
        let query_failures = Family::<SourceLabels, Counter>::default();
        let anomalies = Family::<KpiLabels, Counter>::default();
        let notifications = Family::<DeliveryLabels, Counter>::default();
        let alerts_firing = Gauge::default();
        let receiver_failing = Family::<ReceiverLabels, Gauge>::default();
        registry.register("kpi_runs", "KPI evaluations by outcome", kpi_runs.clone());
        registry.register(
            "source_query_duration_seconds",
            "Time KPI queries took, by source",
            query_duration.clone(),
        );
        registry.register(
            "source_query_failures",
            "Failed KPI queries, by source",
            query_failures.clone(),
        );
        registry.register("anomalies", "Live anomalous buckets, by KPI", anomalies.clone());
        registry.register(
            "notifications",
            "Notification deliveries by channel and outcome",
            notifications.clone(),
        );
        registry.register("alerts_firing", "Open incidents", alerts_firing.clone());
        registry.register(
            "receiver_failing",
            "1 while a receiver's last delivery attempt failed",
            receiver_failing.clone(),
        );
        Metrics {
            registry,
            kpi_runs,
            query_duration,
            query_failures,
            anomalies,
            notifications,
            alerts_firing,
            receiver_failing,
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
