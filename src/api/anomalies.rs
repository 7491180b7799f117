//! `GET /api/anomalies` and `POST /api/anomalies/{id}/feedback`.

use std::collections::BTreeMap;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{dims_json, iso, parse_instant, positive_id, ApiError, ApiResult, AppState, Caller, ErrorBody};
use crate::reading::Reading;
use crate::store::AnomalyRow;

/// Which anomalies.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct AnomalyQuery {
    /// Only this KPI's.
    #[param(pattern = "^[a-z][a-z0-9_-]{0,63}$")]
    kpi: Option<String>,
    /// Only buckets from this time on.
    #[param(schema_with = super::instant_schema)]
    since: Option<String>,
    /// At most this many (default 100).
    #[param(minimum = 1, maximum = 10000)]
    #[serde(default, deserialize_with = "super::whole::opt")]
    limit: Option<i64>,
}

/// A recorded anomalous bucket.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct AnomalyDto {
    id: i64,
    kpi: String,
    /// Dimension values of the series; `{}` for none.
    dims: BTreeMap<String, serde_json::Value>,
    /// Bucket start.
    ts: String,
    /// Value in band units (ratios as fractions) and its band.
    #[serde(flatten)]
    reading: Reading,
    /// Anomaly likelihood in [0, 1].
    score: f64,
    /// Volume behind the bucket (a count, or a ratio's denominator).
    volume: f64,
    /// Seasonality the baseline used.
    seasonality: String,
    /// False for anomalies found in backfilled history (recorded, not alerted).
    live: bool,
    /// What flagged it: `bucket`, `accumulated`, `empty_run` or `ongoing` (null for anomalies
    /// recorded before this was kept).
    #[schema(pattern = "^(bucket|accumulated|empty_run|ongoing)$")]
    flagged_by: Option<String>,
    /// `below` or `above` the band.
    #[schema(pattern = "^(below|above)$")]
    side: Option<String>,
}

impl From<AnomalyRow> for AnomalyDto {
    fn from(a: AnomalyRow) -> Self {
        AnomalyDto {
            id: a.id,
            kpi: a.kpi_id,
            dims: match dims_json(&a.dims) {
                serde_json::Value::Object(map) => map.into_iter().collect(),
                _ => BTreeMap::new(),
            },
            ts: iso(a.ts).unwrap_or_default(),
            reading: a.reading,
            score: a.score,
            volume: a.volume,
            seasonality: a.seasonality,
            live: a.alerted,
            flagged_by: a.flagged_by,
            side: a.side,
        }
    }
}

/// Recorded anomalies, newest first.
#[utoipa::path(
    get,
    path = "/api/anomalies",
    tag = "anomalies",
    params(AnomalyQuery),
    responses(
        (status = 200, description = "Anomalies, newest first", body = Vec<AnomalyDto>),
        (status = 400, description = "A bad parameter", body = ErrorBody),
        (status = 401, description = "A token is needed", body = ErrorBody),
        (status = 404, description = "No such KPI", body = ErrorBody),
        (status = 422, description = "`since` is a date that does not exist", body = ErrorBody),
        (status = 500, description = "The state store failed", body = ErrorBody),
    )
)]
pub(super) async fn anomalies(
    State(state): State<AppState>,
    query: Result<Query<AnomalyQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<AnomalyDto>>> {
    let Query(q) = query?;
    if let Some(kpi) = &q.kpi {
        if !state.specs.contains(kpi) {
            return Err(ApiError::NotFound(format!("no KPI {kpi:?}")));
        }
    }
    let since = q
        .since
        .as_deref()
        .map(|s| parse_instant("since", s))
        .transpose()?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::BadRequest(
            "`limit` must be between 1 and 10000".to_owned(),
        ));
    }
    let rows = state.store.anomalies(q.kpi.as_deref(), since, limit).await?;
    Ok(Json(rows.into_iter().map(AnomalyDto::from).collect()))
}

/// What the flagged bucket was.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum FeedbackKind {
    /// A false positive: learn the bucket as normal from then on.
    NotAnomaly,
    /// The level changed for good: re-baseline the series at that bucket.
    NewNormal,
    /// A real incident; nothing changes.
    Confirmed,
}

impl FeedbackKind {
    fn as_str(self) -> &'static str {
        match self {
            FeedbackKind::NotAnomaly => "not_anomaly",
            FeedbackKind::NewNormal => "new_normal",
            FeedbackKind::Confirmed => "confirmed",
        }
    }
}

/// Feedback on an anomaly.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct FeedbackBody {
    kind: FeedbackKind,
    /// Why (optional).
    #[serde(default)]
    #[schema(max_length = 2000)]
    comment: String,
}

/// Feedback on an anomaly; it is replayed into the detector on the series' next run.
#[utoipa::path(
    post,
    path = "/api/anomalies/{id}/feedback",
    tag = "anomalies",
    params(("id" = i64, Path, description = "Anomaly id", minimum = 1)),
    request_body = FeedbackBody,
    responses(
        (status = 204, description = "Recorded"),
        (status = 400, description = "A bad id or body", body = ErrorBody),
        (status = 401, description = "A token is needed", body = ErrorBody),
        (status = 403, description = "The token's role is too low (editor needed)", body = ErrorBody),
        (status = 404, description = "No such anomaly", body = ErrorBody),
        (status = 413, description = "The body is larger than 256 KiB", body = ErrorBody),
        (status = 500, description = "The state store failed", body = ErrorBody),
    )
)]
pub(super) async fn feedback(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<i64>, PathRejection>,
    body: Result<Json<FeedbackBody>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let Path(id) = path?;
    let id = positive_id("anomaly", id)?;
    let Json(body) = body?;
    if body.comment.chars().count() > 2000 {
        return Err(ApiError::BadRequest(
            "`comment` is longer than 2000 characters".to_owned(),
        ));
    }
    let kind = body.kind.as_str();
    let (series, ts, kpi) = state
        .store
        .anomaly_bucket(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no anomaly {id}")))?;
    state
        .store
        .save_feedback(series, ts, kind, &caller.name, &body.comment)
        .await?;
    state
        .store
        .audit(
            &caller.name,
            "anomaly.feedback",
            &id.to_string(),
            &serde_json::json!({"kpi": kpi, "ts": ts, "kind": kind, "comment": body.comment}),
        )
        .await?;
    tracing::info!(message = "Anomaly feedback recorded.", anomaly = id, kind, by = %caller.name);
    Ok(StatusCode::NO_CONTENT)
}
