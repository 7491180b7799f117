//! `GET /api/kpis`: every KPI with its settings and status.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::{iso, ApiResult, AppState, ErrorBody};

/// A KPI: its settings and how its last run went.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct KpiDto {
    /// Identifier.
    #[schema(pattern = "^[a-z][a-z0-9_-]{0,63}$")]
    id: String,
    title: String,
    description: String,
    /// count | ratio | gauge.
    #[schema(pattern = "^(count|ratio|gauge)$")]
    kind: String,
    /// Bucket length, e.g. `5m`.
    interval: String,
    /// The interval for people: `every 5 minutes`.
    every: String,
    /// What counts and gauges are measured in (`EUR`, `ms`); ratios are in %.
    unit: Option<String>,
    source: String,
    /// down | up | both.
    direction: String,
    /// In (0, 1).
    sensitivity: f64,
    owner: Option<String>,
    /// info | warning | critical.
    severity: String,
    timezone: String,
    labels: BTreeMap<String, String>,
    /// `api`, or the folder of a file model.
    origin: String,
    /// ok | data_missing | query_error | pending (never run).
    status: String,
    last_run_at: Option<String>,
    /// Why the last run failed, safe to show.
    last_error: Option<String>,
    /// Data has been read up to here.
    data_until: Option<String>,
}

/// Every KPI, by id.
#[utoipa::path(
    get,
    path = "/api/kpis",
    tag = "kpis",
    responses(
        (status = 200, description = "Every KPI", body = Vec<KpiDto>),
        (status = 401, description = "A token is needed", body = ErrorBody),
        (status = 500, description = "The state store failed", body = ErrorBody),
    )
)]
pub(super) async fn list_kpis(State(state): State<AppState>) -> ApiResult<Json<Vec<KpiDto>>> {
    let rows: BTreeMap<String, _> = state
        .store
        .kpis()
        .await?
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
    let out = state
        .specs
        .all()
        .iter()
        .map(|s| kpi_dto(s, rows.get(s.id.as_str())))
        .collect();
    Ok(Json(out))
}

pub(super) fn kpi_dto(s: &crate::kpi::KpiSpec, row: Option<&crate::store::KpiRow>) -> KpiDto {
    KpiDto {
        id: s.id.to_string(),
        title: s.title.clone(),
        description: s.description.clone(),
        kind: s.kind.to_string(),
        interval: s.interval.to_string(),
        every: crate::format::every(s.interval),
        unit: s.unit.clone(),
        source: s.source.clone(),
        direction: s.direction.to_string(),
        sensitivity: s.sensitivity.get(),
        owner: s.owner.clone(),
        severity: s.severity.to_string(),
        timezone: s.timezone.to_string(),
        labels: s.labels.clone(),
        origin: s.origin.clone(),
        status: row
            .and_then(|r| r.last_status.clone())
            .unwrap_or_else(|| "pending".to_owned()),
        last_run_at: row.and_then(|r| r.last_run_at).and_then(iso),
        last_error: row.and_then(|r| r.last_error.clone()),
        data_until: row.and_then(|r| r.fetched_until).and_then(iso),
    }
}
