//! `GET /api/alerts` and `POST /api/alerts/{id}/ack`.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{iso, positive_id, text_field, ApiError, ApiResult, AppState, Caller, ErrorBody};

/// An incident on one series (or a KPI-level "data missing" alert).
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct AlertDto {
    id: i64,
    kpi: String,
    /// anomaly | data_missing.
    kind: String,
    /// Stable per series: kind, KPI and dimension values.
    fingerprint: String,
    /// pending | firing | resolved | cancelled.
    state: String,
    /// info | warning | critical.
    severity: String,
    /// First anomalous bucket.
    started_at: Option<String>,
    /// Latest anomalous bucket.
    last_anomaly_at: Option<String>,
    /// When it resolved; null while open.
    resolved_at: Option<String>,
    acknowledged_by: Option<String>,
    acknowledged_at: Option<String>,
    /// One line for people: the latest anomalous bucket, formatted.
    summary: String,
}

impl From<crate::store::AlertRow> for AlertDto {
    fn from(a: crate::store::AlertRow) -> Self {
        AlertDto {
            id: a.id,
            kpi: a.kpi_id,
            kind: a.kind,
            fingerprint: a.fingerprint,
            state: a.state,
            severity: a.severity,
            started_at: iso(a.started_ts),
            last_anomaly_at: iso(a.last_anomaly_ts),
            resolved_at: a.resolved_ts.and_then(iso),
            acknowledged_by: a.acknowledged_by,
            acknowledged_at: a.acknowledged_at.and_then(iso),
            summary: a.summary,
        }
    }
}

/// Which alerts.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct AlertQuery {
    /// Only pending and firing alerts.
    open: Option<bool>,
    /// At most this many (default 200).
    #[param(minimum = 1, maximum = 10000)]
    #[serde(default, deserialize_with = "super::whole::opt")]
    limit: Option<i64>,
}

/// Incidents, newest first.
#[utoipa::path(
    get,
    path = "/api/alerts",
    tag = "alerts",
    params(AlertQuery),
    responses(
        (status = 200, description = "Alerts, newest first", body = Vec<AlertDto>),
        (status = 400, description = "A bad parameter", body = ErrorBody),
        (status = 401, description = "A token is needed", body = ErrorBody),
        (status = 500, description = "The state store failed", body = ErrorBody),
    )
)]
pub(super) async fn alerts(
    State(state): State<AppState>,
    query: Result<Query<AlertQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<AlertDto>>> {
    let Query(q) = query?;
    let limit = q.limit.unwrap_or(200);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::BadRequest(
            "`limit` must be between 1 and 10000".to_owned(),
        ));
    }
    let rows = state.store.alerts(q.open.unwrap_or(false), limit).await?;
    Ok(Json(rows.into_iter().map(AlertDto::from).collect()))
}

/// Who acknowledges.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AckBody {
    /// A name, 1–128 printable characters.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    by: String,
}

/// Acknowledge an open alert: no more reminders are sent.
#[utoipa::path(
    post,
    path = "/api/alerts/{id}/ack",
    tag = "alerts",
    params(("id" = i64, Path, description = "Alert id", minimum = 1)),
    request_body = AckBody,
    responses(
        (status = 200, description = "The acknowledged alert", body = AlertDto),
        (status = 400, description = "A bad id or body", body = ErrorBody),
        (status = 401, description = "A token is needed", body = ErrorBody),
        (status = 403, description = "The token's role is too low (editor needed)", body = ErrorBody),
        (status = 404, description = "No such alert", body = ErrorBody),
        (status = 409, description = "The alert is resolved or cancelled", body = ErrorBody),
        (status = 413, description = "The body is larger than 256 KiB", body = ErrorBody),
        (status = 500, description = "The state store failed", body = ErrorBody),
    )
)]
pub(super) async fn ack_alert(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<i64>, PathRejection>,
    body: Result<Json<AckBody>, JsonRejection>,
) -> ApiResult<Json<AlertDto>> {
    let Path(id) = path?;
    let id = positive_id("alert", id)?;
    let Json(body) = body?;
    text_field("by", &body.by, 128)?;
    let dto = acknowledge(&state, id, &body.by).await?;
    state
        .store
        .audit(
            &caller.name,
            "alert.ack",
            &id.to_string(),
            &serde_json::json!({"by": body.by}),
        )
        .await?;
    Ok(Json(dto))
}

/// Acknowledge alert `id` as `by` (the API and the signed link share this).
pub(super) async fn acknowledge(state: &AppState, id: i64, by: &str) -> ApiResult<AlertDto> {
    let Some(alert) = state.store.alert(id).await? else {
        return Err(ApiError::NotFound(format!("no alert {id}")));
    };
    if !state.store.ack_alert(id, by).await? {
        return Err(ApiError::Conflict(format!(
            "alert {id} is {} and cannot be acknowledged",
            alert.state
        )));
    }
    tracing::info!(message = "Alert acknowledged.", alert = id, by);
    let alert = state
        .store
        .alert(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no alert {id}")))?;
    Ok(AlertDto::from(alert))
}

impl AlertDto {
    /// The one-line summary.
    pub(super) fn summary(&self) -> &str {
        &self.summary
    }
}
