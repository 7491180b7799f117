//! Logging (tracing) and metrics (`prometheus-client`).
//!
//! Event names follow `<Noun><Verb>[Error]`; metrics carry the `kpiwatch_` prefix, are
//! snake_case with a unit and `_total` on counters; labels are bounded (KPI ids, series of a
//! KPI capped by its `max_series`, source and receiver names, fixed statuses) and never hold
//! raw error text or addresses. [`Metrics::render`] speaks both expositions: the Prometheus
//! text format 0.0.4 (the default) and OpenMetrics 1.0 (when a scraper asks for it). A leaf
//! module.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;
use tracing_subscriber::EnvFilter;

use crate::reading::{known, Reading};

/// Install the global tracing subscriber. `RUST_LOG` overrides the default filter; `json`
/// switches to JSON lines.
pub fn init(default_filter: &str, json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Colours only for a person at a terminal: not in files, pipes or journald.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
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

/// How a series' detector was brought up to date.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplayLabels {
    /// `kept` (only new buckets stepped), `checkpoint` (loaded from the store, then the
    /// buckets after it stepped) or `full` (replayed from the stored history).
    pub path: &'static str,
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

/// Labels of one series of one KPI.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SeriesLabels {
    /// KPI id.
    pub kpi: String,
    /// The series' dimension values as `k=v,k=v` (empty for a KPI without dimensions).
    pub series: String,
}

/// A float gauge per series.
pub type SeriesGauge = Family<SeriesLabels, Gauge<f64, AtomicU64>>;

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn query_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Every metric kpiwatch exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Held while the per-KPI gauges are replaced and while the metrics are rendered: a scrape
    /// sees the old set or the new one, never the emptied families in between (Prometheus
    /// would mark every KPI series stale until its next scrape).
    kpi_series_swap: std::sync::Mutex<()>,
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
    /// `detector_runs_total{path}` — series judged with a kept detector, a stored checkpoint
    /// or a full replay.
    pub detector_runs: Family<ReplayLabels, Counter>,
    /// `detector_observations_read_total{path}` — stored observations read to bring series'
    /// detectors up to date (a kept detector or checkpoint reads only the buckets after it).
    pub detector_observations_read: Family<ReplayLabels, Counter>,
    /// `receiver_failing{receiver}` — 1 while a receiver's last delivery attempt failed.
    pub receiver_failing: Family<ReceiverLabels, Gauge>,
    /// `kpi_value{kpi,series}` — the newest judged bucket's value (ratios as fractions).
    pub kpi_value: SeriesGauge,
    /// `kpi_expected{kpi,series}` — what the baseline expected for it.
    pub kpi_expected: SeriesGauge,
    /// `kpi_lower{kpi,series}` — the band's lower edge.
    pub kpi_lower: SeriesGauge,
    /// `kpi_upper{kpi,series}` — the band's upper edge.
    pub kpi_upper: SeriesGauge,
    /// `kpi_anomalous{kpi,series}` — 1 when that bucket was flagged.
    pub kpi_anomalous: SeriesGauge,
    /// `kpi_bucket_timestamp_seconds{kpi,series}` — the bucket's start.
    pub kpi_bucket_time: SeriesGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kpiwatch");
        let kpi_runs = Family::<RunLabels, Counter>::default();
        let query_duration =
            HistogramFamily::<SourceLabels>::new_with_constructor(query_histogram as fn() -> Histogram);
        let query_failures = Family::<SourceLabels, Counter>::default();
        let anomalies = Family::<KpiLabels, Counter>::default();
        let notifications = Family::<DeliveryLabels, Counter>::default();
        let alerts_firing = Gauge::default();
        let detector_runs = Family::<ReplayLabels, Counter>::default();
        let detector_observations_read = Family::<ReplayLabels, Counter>::default();
        let receiver_failing = Family::<ReceiverLabels, Gauge>::default();
        let kpi_value = SeriesGauge::default();
        let kpi_expected = SeriesGauge::default();
        let kpi_lower = SeriesGauge::default();
        let kpi_upper = SeriesGauge::default();
        let kpi_anomalous = SeriesGauge::default();
        let kpi_bucket_time = SeriesGauge::default();
        registry.register(
            "kpi_value",
            "Value of the newest judged bucket of a KPI series (ratios as fractions)",
            kpi_value.clone(),
        );
        registry.register(
            "kpi_expected",
            "Value the baseline expected for the newest judged bucket",
            kpi_expected.clone(),
        );
        registry.register(
            "kpi_lower",
            "Lower edge of the expected band for the newest judged bucket",
            kpi_lower.clone(),
        );
        registry.register(
            "kpi_upper",
            "Upper edge of the expected band for the newest judged bucket",
            kpi_upper.clone(),
        );
        registry.register(
            "kpi_anomalous",
            "1 when the newest judged bucket was flagged as anomalous",
            kpi_anomalous.clone(),
        );
        registry.register_with_unit(
            "kpi_bucket_timestamp",
            "Start of the newest judged bucket, unix time",
            Unit::Seconds,
            kpi_bucket_time.clone(),
        );
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
            "detector_runs",
            "Series judged with the detector kept from the last run (kept) or a full replay (full)",
            detector_runs.clone(),
        );
        registry.register(
            "detector_observations_read",
            "Stored observations read to bring series' detectors up to date, by path",
            detector_observations_read.clone(),
        );
        registry.register(
            "receiver_failing",
            "1 while a receiver's last delivery attempt failed",
            receiver_failing.clone(),
        );
        Metrics {
            registry,
            kpi_series_swap: std::sync::Mutex::new(()),
            kpi_runs,
            query_duration,
            query_failures,
            anomalies,
            notifications,
            alerts_firing,
            detector_runs,
            detector_observations_read,
            receiver_failing,
            kpi_value,
            kpi_expected,
            kpi_lower,
            kpi_upper,
            kpi_anomalous,
            kpi_bucket_time,
        }
    }
}

/// The two exposition formats of `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposition {
    /// Prometheus text format 0.0.4 (`text/plain; version=0.0.4`): the default.
    Prometheus,
    /// OpenMetrics 1.0 (`application/openmetrics-text; version=1.0.0`), when asked for.
    OpenMetrics,
}

impl Exposition {
    /// The format an `Accept` header asks for: OpenMetrics only when it names it.
    pub fn negotiate(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Exposition::OpenMetrics,
            _ => Exposition::Prometheus,
        }
    }

    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Exposition::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Exposition::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// One series' newest verdict, for [`Metrics::set_kpi_series`].
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesReading {
    /// Labels.
    pub labels: SeriesLabels,
    /// Bucket start, unix seconds.
    pub ts: i64,
    /// Value (band units) and band; NaN where not (yet) defined.
    pub reading: Reading,
    /// Flagged.
    pub anomaly: bool,
}

impl Metrics {
    /// The lock around the per-KPI gauges' swap. A poisoned lock only means another thread
    /// panicked mid-swap: the gauges are still usable and the next swap replaces them whole.
    fn kpi_series_swap(&self) -> std::sync::MutexGuard<'_, ()> {
        self.kpi_series_swap
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Replace the per-KPI gauges with `readings` (the caller caps them per KPI).
    pub fn set_kpi_series(&self, readings: &[SeriesReading]) {
        let _swap = self.kpi_series_swap();
        for family in [
            &self.kpi_value,
            &self.kpi_expected,
            &self.kpi_lower,
            &self.kpi_upper,
            &self.kpi_anomalous,
            &self.kpi_bucket_time,
        ] {
            family.clear();
        }
        for r in readings {
            if let Some(v) = known(r.reading.value) {
                self.kpi_value.get_or_create(&r.labels).set(v);
            }
            // The band's three gauges appear together, once all three are known.
            let band = r.reading.band;
            if let (Some(e), Some(l), Some(u)) = (known(band.expected), known(band.lower), known(band.upper))
            {
                self.kpi_expected.get_or_create(&r.labels).set(e);
                self.kpi_lower.get_or_create(&r.labels).set(l);
                self.kpi_upper.get_or_create(&r.labels).set(u);
            }
            self.kpi_anomalous
                .get_or_create(&r.labels)
                .set(if r.anomaly { 1.0 } else { 0.0 });
            self.kpi_bucket_time.get_or_create(&r.labels).set(r.ts as f64);
        }
    }

    /// Every metric in the given exposition format.
    pub fn render(&self, format: Exposition) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        {
            let _swap = self.kpi_series_swap();
            let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        }
        match format {
            Exposition::OpenMetrics => out,
            Exposition::Prometheus => openmetrics_to_prometheus(&out),
        }
    }
}

/// OpenMetrics text (as `prometheus-client` writes it) as the Prometheus text format 0.0.4:
/// a counter family `x` is `x_total` there (its `# HELP` and `# TYPE` name the samples),
/// there are no `# UNIT` lines and no `# EOF`. Samples are the same in both.
fn openmetrics_to_prometheus(text: &str) -> String {
    let counters: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|rest| ("# HELP ", rest))
            .or_else(|| line.strip_prefix("# TYPE ").map(|rest| ("# TYPE ", rest)));
        match meta {
            Some((kind, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = if counters.contains(name) {
                    format!("{name}_total")
                } else {
                    name.to_owned()
                };
                out.push_str(kind);
                out.push_str(&name);
                if !tail.is_empty() {
                    out.push(' ');
                    out.push_str(tail);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prometheus_format_names_counters_by_their_samples_and_has_no_eof() {
        let m = Metrics::default();
        m.kpi_runs
            .get_or_create(&RunLabels {
                kpi: "orders".to_owned(),
                status: "ok".to_owned(),
            })
            .inc();
        let text = m.render(Exposition::Prometheus);
        assert!(
            text.contains("# TYPE kpiwatch_kpi_runs_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP kpiwatch_kpi_runs_total KPI evaluations"),
            "{text}"
        );
        assert!(
            text.contains("kpiwatch_kpi_runs_total{kpi=\"orders\",status=\"ok\"} 1\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"), "{text}");
        let open = m.render(Exposition::OpenMetrics);
        assert!(open.contains("# TYPE kpiwatch_kpi_runs counter\n"), "{open}");
        assert!(open.ends_with("# EOF\n"), "{open}");
    }

    #[test]
    fn openmetrics_is_served_only_when_asked_for() {
        let prometheus_2 = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Exposition::negotiate(Some(prometheus_2)), Exposition::OpenMetrics);
        assert_eq!(Exposition::negotiate(Some("text/plain")), Exposition::Prometheus);
        assert_eq!(Exposition::negotiate(None), Exposition::Prometheus);
    }

    #[test]
    fn a_render_during_a_gauge_update_sees_every_kpi_series() {
        let m = std::sync::Arc::new(Metrics::default());
        let reading = SeriesReading {
            labels: SeriesLabels {
                kpi: "pay".to_owned(),
                series: String::new(),
            },
            ts: 60,
            reading: Reading::new(0.5, crate::reading::Band::new(0.9, 0.8, 1.0)),
            anomaly: false,
        };
        m.set_kpi_series(std::slice::from_ref(&reading));
        let writer = {
            let m = m.clone();
            std::thread::spawn(move || {
                for _ in 0..5_000 {
                    m.set_kpi_series(std::slice::from_ref(&reading));
                }
            })
        };
        let mut missing = 0;
        while !writer.is_finished() {
            let text = m.render(Exposition::Prometheus);
            if !text.contains("kpiwatch_kpi_value{kpi=\"pay\"") {
                missing += 1;
            }
        }
        writer.join().expect("writer");
        // A scrape that caught the families emptied would make Prometheus mark the series stale.
        assert_eq!(missing, 0, "renders without the KPI's gauge");
    }

    #[test]
    fn kpi_gauges_are_replaced_on_each_update() {
        let m = Metrics::default();
        let labels = |s: &str| SeriesLabels {
            kpi: "pay".to_owned(),
            series: s.to_owned(),
        };
        m.set_kpi_series(&[SeriesReading {
            labels: labels("country=DE"),
            ts: 60,
            reading: Reading::new(0.5, crate::reading::Band::new(0.9, 0.8, 1.0)),
            anomaly: true,
        }]);
        m.set_kpi_series(&[SeriesReading {
            labels: labels("country=FR"),
            ts: 120,
            reading: Reading::new(0.95, crate::reading::Band::NONE),
            anomaly: false,
        }]);
        let text = m.render(Exposition::Prometheus);
        assert!(!text.contains("country=DE"), "{text}");
        assert!(
            text.contains("kpiwatch_kpi_value{kpi=\"pay\",series=\"country=FR\"} 0.95"),
            "{text}"
        );
        assert!(
            text.contains("kpiwatch_kpi_bucket_timestamp_seconds{kpi=\"pay\",series=\"country=FR\"} 120"),
            "{text}"
        );
    }
}
