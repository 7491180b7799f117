//! `GET /api/kpis/{id}/breakdown?at=…`: a KPI's total and every slice at one bucket, with
//! each slice's actual and expected value (from its own baseline), deviation, and
//! contribution to the total's change ([`crate::rootcause`]).

use std::collections::BTreeMap;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{dims_json, iso, parse_instant, ApiError, ApiResult, AppState, ErrorBody};
use crate::reading::{known, Band};
use crate::rootcause::{self, Slice};
use crate::slices::is_total;
use crate::store::EvaluationRow;

/// Which bucket.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct BreakdownQuery {
    /// A time inside the bucket (default: the newest judged bucket of the total).
    #[param(schema_with = super::instant_schema)]
    at: Option<String>,
}

/// The total's reading at the bucket.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct TotalDto {
    /// Observed value in band units (a ratio as a fraction); null when no data.
    actual: Option<f64>,
    /// Expected value from the total's own baseline and its band; null while warming up.
    #[serde(flatten)]
    band: Band,
    /// Flagged.
    anomaly: bool,
    /// The slices' actual values rolled up (Σ for counts, Σnum/Σden for ratios).
    rollup_actual: Option<f64>,
    /// The slices' expected values rolled up the same way.
    rollup_expected: Option<f64>,
    /// `rollup_actual − rollup_expected`, in the explaining dimension.
    deviation: Option<f64>,
    /// Per dimension, what its slices' contributions add up to (each dimension's slices
    /// have baselines of their own, so each expects a slightly different total).
    deviation_by_dimension: BTreeMap<String, f64>,
}

/// One slice at the bucket.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct SliceDto {
    /// Dimension values.
    dims: BTreeMap<String, serde_json::Value>,
    /// `payment_method=card`.
    label: String,
    /// The dimension(s) it slices by (`payment_method`, or `country, payment_method` for a
    /// cell of the cross-product); contributions add up within one dimension.
    dimension: String,
    /// Observed value in band units.
    actual: f64,
    /// Expected value from its own baseline.
    expected: f64,
    /// `actual − expected`.
    deviation: f64,
    /// Its part of the total's deviation (band units of the total).
    contribution: f64,
    /// Contribution / the total's deviation (0 when the total did not move).
    share: f64,
    /// How unexpected its change of share is (Jensen–Shannon divergence, ≥ 0).
    surprise: f64,
    /// Its expected share of the total's volume.
    weight_share: f64,
    /// Flagged by its own detector at this bucket (null for a slice rolled up from cells).
    anomaly: Option<bool>,
    /// Among the top contributors.
    top: bool,
}

/// A KPI's breakdown at one bucket.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct BreakdownDto {
    kpi: String,
    /// Bucket start.
    at: String,
    /// count | ratio | gauge.
    kind: String,
    total: TotalDto,
    /// The dimension that explains the change best (null when none does).
    dimension: Option<String>,
    /// Every slice, top contributors first, then by |contribution|.
    slices: Vec<SliceDto>,
}

/// The total and its slices at one bucket, with each slice's contribution.
#[utoipa::path(
    get,
    path = "/api/kpis/{id}/breakdown",
    tag = "series",
    params(
        ("id" = String, Path, description = "KPI id", pattern = "^[a-z][a-z0-9_-]{0,63}$"),
        BreakdownQuery,
    ),
    responses(
        (status = 200, description = "The breakdown", body = BreakdownDto),
        (status = 400, description = "`at` is neither RFC 3339 nor unix seconds", body = ErrorBody),
        (status = 401, description = "A token is needed", body = ErrorBody),
        (status = 404, description = "No such KPI, or nothing judged at that time", body = ErrorBody),
        (status = 422, description = "`at` is a date that does not exist", body = ErrorBody),
        (status = 500, description = "The state store failed", body = ErrorBody),
    )
)]
pub(super) async fn breakdown(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<BreakdownQuery>, QueryRejection>,
) -> ApiResult<Json<BreakdownDto>> {
    let Path(id) = path?;
    let Query(q) = query?;
    let spec = state
        .specs
        .get(&id)
        .ok_or_else(|| ApiError::NotFound(format!("no KPI {id:?}")))?;
    let grid = spec.buckets();
    let series = state.store.series_of(&id).await?;
    let at = match q.at.as_deref() {
        Some(s) => grid.floor(parse_instant("at", s)?),
        None => {
            // The newest judged bucket of the total (or of any series) in the last week.
            let now = state.clock.now().timestamp();
            let mut newest = None;
            for s in series.iter().filter(|s| is_total(&s.dims)).chain(&series).take(1) {
                newest = state
                    .store
                    .evaluations(s.id, now - 7 * 86_400, now)
                    .await?
                    .last()
                    .map(|e| e.ts);
            }
            newest.ok_or_else(|| ApiError::NotFound(format!("KPI {id:?} has no judged bucket yet")))?
        }
    };
    let mut readings: BTreeMap<String, EvaluationRow> = BTreeMap::new();
    for s in &series {
        if let Some(e) = state.store.evaluations(s.id, at, grid.end(at)).await?.pop() {
            readings.insert(s.dims.clone(), e);
        }
    }
    if readings.is_empty() {
        return Err(ApiError::NotFound(format!(
            "KPI {id:?} has nothing judged at {}",
            iso(at).unwrap_or_default()
        )));
    }
    let slices: Vec<Slice> = readings
        .iter()
        .filter(|(d, _)| !is_total(d))
        .map(|(d, e)| Slice {
            dims: d.clone(),
            actual: e.reading.value,
            expected: e.reading.band.expected,
            weight: e.volume,
        })
        .collect();
    let explanation = rootcause::explain(spec.kind, spec.dimensions.aggregation, &slices);
    let total = readings.iter().find(|(d, _)| is_total(d)).map(|(_, e)| e);
    let mut out: Vec<SliceDto> = Vec::new();
    if let Some(e) = &explanation {
        for (dimension, cs) in &e.by_dimension {
            for c in cs {
                out.push(SliceDto {
                    dims: match dims_json(&c.dims) {
                        serde_json::Value::Object(map) => map.into_iter().collect(),
                        _ => BTreeMap::new(),
                    },
                    label: c.label.clone(),
                    dimension: dimension.clone(),
                    actual: c.actual,
                    expected: c.expected,
                    deviation: c.deviation(),
                    contribution: c.contribution,
                    share: zero_if_undefined(c.share),
                    surprise: zero_if_undefined(c.surprise),
                    weight_share: zero_if_undefined(c.weight_share),
                    anomaly: readings.get(&c.dims).map(|r| r.anomaly),
                    top: e.top.iter().any(|t| t.dims == c.dims),
                });
            }
        }
    }
    out.sort_by(|a, b| {
        b.top
            .cmp(&a.top)
            .then(b.contribution.abs().total_cmp(&a.contribution.abs()))
    });
    // JSON has no NaN: keep only what is defined.
    out.retain(|s| s.actual.is_finite() && s.expected.is_finite() && s.contribution.is_finite());
    Ok(Json(BreakdownDto {
        kpi: id,
        at: iso(at).unwrap_or_default(),
        kind: spec.kind.to_string(),
        total: TotalDto {
            actual: total.and_then(|t| known(t.reading.value)),
            band: total.map_or(Band::NONE, |t| t.reading.band),
            anomaly: total.is_some_and(|t| t.anomaly),
            rollup_actual: explanation.as_ref().and_then(|e| known(e.actual)),
            rollup_expected: explanation.as_ref().and_then(|e| known(e.expected)),
            deviation: explanation.as_ref().and_then(|e| known(e.deviation())),
            deviation_by_dimension: explanation
                .as_ref()
                .map(|e| {
                    e.rollups
                        .iter()
                        .filter_map(|(d, (a, x))| known(a - x).map(|v| (d.clone(), v)))
                        .collect()
                })
                .unwrap_or_default(),
        },
        dimension: explanation.and_then(|e| e.dimension),
        slices: out,
    }))
}

/// JSON has no NaN: an undefined share reads as 0.
fn zero_if_undefined(x: f64) -> f64 {
    if x.is_finite() {
        x
    } else {
        0.0
    }
}
