//! `/healthz`, `/readyz` and `/metrics` (outside `/api/`: no token, not in the OpenAPI
//! document).
//!
//! `/metrics` speaks the Prometheus text format 0.0.4, or OpenMetrics when the scraper's
//! `Accept` asks for it. Before it answers it refreshes the per-KPI gauges (value, expected
//! value, band) from the state store, so every replica reports the same numbers and a
//! restart loses none.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::AppState;
use crate::telemetry::{Exposition, SeriesLabels, SeriesReading};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(error) => {
            tracing::warn!(message = "Readiness check failed.", %error);
            (StatusCode::SERVICE_UNAVAILABLE, "state store unavailable").into_response()
        }
    }
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match state.store.latest_evaluations().await {
        Ok(rows) => {
            let specs: BTreeMap<String, usize> = state
                .specs
                .all()
                .into_iter()
                .map(|s| (s.id.to_string(), s.max_series))
                .collect();
            let mut per_kpi: BTreeMap<&str, usize> = BTreeMap::new();
            let mut readings = Vec::new();
            for r in &rows {
                // Only known KPIs, and at most `max_series` series each: bounded labels.
                let Some(cap) = specs.get(&r.kpi_id) else { continue };
                let n = per_kpi.entry(r.kpi_id.as_str()).or_default();
                if *n >= *cap {
                    continue;
                }
                *n += 1;
                readings.push(SeriesReading {
                    labels: SeriesLabels {
                        kpi: r.kpi_id.clone(),
                        series: crate::format::series_label(&r.dims),
                    },
                    ts: r.ts,
                    reading: r.reading,
                    anomaly: r.anomaly,
                });
            }
            state.metrics.set_kpi_series(&readings);
        }
        // The process metrics are still worth serving; the KPI gauges keep their last values.
        Err(error) => tracing::warn!(message = "KPI gauges not refreshed.", %error),
    }
    // Counted in the store, not in memory: right after a restart, and the same on every
    // replica.
    match state.store.count_firing_alerts().await {
        Ok(n) => {
            state.metrics.alerts_firing.set(n);
        }
        Err(error) => tracing::warn!(message = "Firing alerts not counted.", %error),
    }
    let format = Exposition::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    (
        [(header::CONTENT_TYPE, format.content_type())],
        state.metrics.render(format),
    )
        .into_response()
}
