//! `GET /api/kpis/{id}/series`: each bucket of each series with its verdict.

use std::collections::BTreeMap;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, RawQuery, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{dims_json, iso, parse_instant, ApiError, ApiResult, AppState, ErrorBody};
use crate::reading::{known, Band};
use crate::store::{EvaluationRow, ObservationRow};

/// The time range: `from`/`to` as RFC 3339 or unix seconds (default: the last 24 hours);
/// every other key filters by a dimension value (`country=DE`).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct RangeQuery {
    /// Start of the range (default: 24 hours before `to`).
    #[param(schema_with = super::instant_schema)]
    from: Option<String>,
    /// End of the range, exclusive (default: now).
    #[param(schema_with = super::instant_schema)]
    to: Option<String>,
    /// Dimension filters (`country=DE&payment_method=card`): only the series with these
    /// values; documented as the `dimensions` parameter of the operation.
    #[serde(flatten)]
    #[param(ignore)]
    dimensions: BTreeMap<String, String>,
    /// `json` (default) or `csv`: one row per bucket, dimension columns, expected, band,
    /// score and flags (columns as in docs/EXPORT.md).
    #[param(pattern = "^(json|csv)$")]
    format: Option<String>,
}

/// The documented shape of the dimension filters: a dimension name (a word of ASCII letters,
/// digits and `_`, not starting with a digit) to a scalar value (read as text: a query string
/// carries no types).
pub(super) struct DimensionFilters;

impl utoipa::PartialSchema for DimensionFilters {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, SchemaType, Type};
        ObjectBuilder::new()
            .property_names(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some("^[A-Za-z_][A-Za-z0-9_]*$")),
            ))
            .additional_properties(Some(AdditionalProperties::RefOr(
                ObjectBuilder::new()
                    .schema_type(SchemaType::Array(vec![Type::String, Type::Number, Type::Boolean]))
                    // `country=` filters on nothing: refused.
                    .min_length(Some(1))
                    .into(),
            )))
            .into()
    }
}

impl utoipa::ToSchema for DimensionFilters {}

/// One bucket and the detector's verdict on it (the verdict fields are null while the bucket
/// is not judged yet).
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct PointDto {
    /// Bucket start.
    ts: String,
    /// Count, gauge value, or a ratio's numerator.
    value: f64,
    /// A ratio's denominator.
    denominator: Option<f64>,
    /// The value in band units (a ratio as a fraction); null when undefined (0 attempts).
    band_value: Option<f64>,
    /// Expected value and band edges; null while warming up.
    #[serde(flatten)]
    band: Band,
    /// Anomaly likelihood in [0, 1].
    score: Option<f64>,
    /// Flagged.
    anomaly: Option<bool>,
    /// What flagged it: `bucket` (its own value is outside the band), `accumulated` (evidence
    /// over recent buckets, each possibly inside the band), `empty_run`, or `ongoing` (an
    /// incident still under way); null when not flagged.
    #[schema(pattern = "^(bucket|accumulated|empty_run|ongoing)$")]
    flagged_by: Option<String>,
    /// evaluated | warming_up | low_volume | …
    status: Option<String>,
}

/// One series (one combination of dimension values) and its buckets.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct SeriesDto {
    /// Dimension values; `{}` for a KPI without dimensions.
    dims: BTreeMap<String, serde_json::Value>,
    /// How long a window the detector judges this series over, in seconds: the KPI's
    /// interval, or a multiple of it for a slice too thin to decide at the interval (its
    /// verdicts sit on each window's last bucket).
    evaluated_every_secs: i64,
    points: Vec<PointDto>,
}

const MAX_POINTS: i64 = 50_000;

/// A KPI's buckets in a time range, per series.
#[utoipa::path(
    get,
    path = "/api/kpis/{id}/series",
    tag = "series",
    params(
        ("id" = String, Path, description = "KPI id", pattern = "^[a-z][a-z0-9_-]{0,63}$"),
        RangeQuery,
        ("dimensions" = inline(Option<DimensionFilters>), Query, style = Form, explode,
         description = "Only the series with these dimension values, e.g. `country=DE`: each key is a dimension \
                        (letters, digits and `_`, not starting with a digit; the total has none, so any filter leaves it out)"),
    ),
    responses(
        (status = 200, description = "The KPI's series (JSON, or CSV with `format=csv`)", content(
            (Vec<SeriesDto> = "application/json"),
            (String = "text/csv"),
        )),
        (status = 400, description = "`from` or `to` is neither RFC 3339 nor unix seconds, `format` is not json or csv, a parameter is given twice, or a filter is not a dimension name or has no value", body = ErrorBody),
        (status = 401, description = "A token is needed", body = ErrorBody),
        (status = 404, description = "No such KPI", body = ErrorBody),
        (status = 422, description = "`from` is not before `to`, the range holds more than 50,000 buckets, or a date that does not exist", body = ErrorBody),
        (status = 500, description = "The state store failed", body = ErrorBody),
    )
)]
pub(super) async fn series(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<RangeQuery>, QueryRejection>,
    RawQuery(raw): RawQuery,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse as _;
    let Path(id) = path?;
    let Query(range) = query?;
    // A dimension has one value per filter: `country=DE&country=FR` is not a filter.
    let mut seen = std::collections::BTreeSet::new();
    for (key, value) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        // A dimension is a result column's name: a word, never empty.
        let word = key
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !word {
            return Err(ApiError::BadRequest(format!(
                "`{key}` is not a dimension name (letters, digits and `_`, not starting with a digit)"
            )));
        }
        if !seen.insert(key.clone()) {
            return Err(ApiError::BadRequest(format!("`{key}` is given more than once")));
        }
        // `country=` names no value to filter on (and is how a null filter object is written).
        if value.is_empty() && !matches!(key.as_ref(), "from" | "to" | "format") {
            return Err(ApiError::BadRequest(format!(
                "the filter `{key}` has no value: write `{key}=<value>`"
            )));
        }
    }
    let csv = match range.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "`format` must be json or csv, got {other:?}"
            )))
        }
    };
    let spec = state
        .specs
        .get(&id)
        .ok_or_else(|| ApiError::NotFound(format!("no KPI {id:?}")))?;
    let now = state.clock.now().timestamp();
    let to = range
        .to
        .as_deref()
        .map(|s| parse_instant("to", s))
        .transpose()?
        .unwrap_or(now);
    let from = range
        .from
        .as_deref()
        .map(|s| parse_instant("from", s))
        .transpose()?
        .unwrap_or(to - 86_400);
    if from >= to {
        return Err(ApiError::Unprocessable("`from` must be before `to`".to_owned()));
    }
    if (to - from) / spec.interval.secs_i64() > MAX_POINTS {
        return Err(ApiError::Unprocessable(format!(
            "the range holds more than {MAX_POINTS} buckets; narrow it"
        )));
    }
    let mut out = Vec::new();
    let wanted = |dims: &str| {
        let have: BTreeMap<String, String> = serde_json::from_str(dims).unwrap_or_default();
        range.dimensions.iter().all(|(k, v)| have.get(k) == Some(v))
    };
    for s in state.store.series_of(&id).await? {
        if !wanted(&s.dims) {
            continue;
        }
        let obs: Vec<ObservationRow> = state.store.observations(s.id, from, to).await?;
        let evals: BTreeMap<i64, EvaluationRow> = state
            .store
            .evaluations(s.id, from, to)
            .await?
            .into_iter()
            .map(|e| (e.ts, e))
            .collect();
        let points = obs
            .into_iter()
            .map(|o| {
                let e = evals.get(&o.ts);
                PointDto {
                    ts: iso(o.ts).unwrap_or_default(),
                    value: o.value,
                    denominator: o.denominator,
                    band_value: e.and_then(|e| known(e.reading.value)),
                    band: e.map_or(Band::NONE, |e| e.reading.band),
                    score: e.map(|e| e.score),
                    anomaly: e.map(|e| e.anomaly),
                    flagged_by: e.and_then(|e| e.flagged_by.clone()),
                    status: e.map(|e| e.status.clone()),
                }
            })
            .collect();
        let dims = match dims_json(&s.dims) {
            serde_json::Value::Object(map) => map.into_iter().collect(),
            _ => BTreeMap::new(),
        };
        // The window rule reads the last week of the series (as the pipeline does).
        let step = spec.interval.secs_i64();
        let newest = spec.buckets().floor(now);
        let week = state
            .store
            .observations(s.id, newest - crate::slices::WINDOW_RULE_DAYS * 86_400, newest)
            .await?;
        let evaluated_every_secs = step * crate::slices::evaluation_factor(&spec, &s.dims, &week);
        out.push(SeriesDto {
            dims,
            evaluated_every_secs,
            points,
        });
    }
    if csv {
        let value = serde_json::to_value(&out).map_err(anyhow::Error::from)?;
        return super::series_csv::response(&id, &value);
    }
    Ok(Json(out).into_response())
}
