//! Registering and tuning KPIs through the API: `POST /api/kpis`, `POST /api/kpis/test-query`,
//! `PATCH /api/kpis/{id}`, `DELETE /api/kpis/{id}`.
//!
//! A registered KPI is stored as the same `model.toml` text and SQL a file model has, and is
//! validated by the same parser, so the API and `models/` can never disagree on what is
//! valid. Registration runs the query once on a small window (through `pipeline`); the
//! scheduler backfills history on its next pass. KPIs from `models/` are read-only here.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::backtest::{backtest_dto, BacktestDto};
use super::kpis::{kpi_dto, KpiDto};
use super::{ApiError, ApiResult, AppState, Caller, ErrorBody};
use crate::kpi::{KpiSpec, API_ORIGIN};

/// A KPI as the API takes it: the fields of `model.toml`, plus `id` and `query`. Anything
/// the schema allows but the model parser refuses (an unknown source, `interval = "7m"`, a
/// query that fails) is a 422 naming every problem.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KpiBody {
    /// 1–64 characters of `a-z`, `0-9`, `_` and `-`, starting with a letter.
    id: String,
    /// One SELECT with `:start` and `:end` (the half-open window), at most 64 KiB.
    query: String,
    #[serde(flatten)]
    model: ModelFields,
}

// The schema of `KpiBody` is `ModelFields`' with `id` and `query` added: one object, so that
// its `additionalProperties: false` holds (a derived `allOf` of two closed objects would
// allow no body at all), and the model's fields are still declared once.
impl utoipa::PartialSchema for KpiBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
        use utoipa::openapi::RefOr;
        let model = <ModelFields as utoipa::PartialSchema>::schema();
        let RefOr::T(Schema::Object(mut object)) = model else {
            return model;
        };
        object.properties.insert(
            "id".to_owned(),
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[a-z][a-z0-9_-]{0,63}$"))
                .description(Some(
                    "1-64 characters of a-z, 0-9, _ and -, starting with a letter",
                ))
                .into(),
        );
        object.properties.insert(
            "query".to_owned(),
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(65536))
                .description(Some("One SELECT with :start and :end (the half-open window)"))
                .into(),
        );
        object.required.extend(["id".to_owned(), "query".to_owned()]);
        object.description = Some("A KPI: the fields of model.toml, plus id and query".to_owned());
        RefOr::T(Schema::Object(object))
    }
}

impl ToSchema for KpiBody {}

/// The `model.toml` fields (all checked by `KpiSpec::parse`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ModelFields {
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    /// A source name from the config.
    #[schema(min_length = 1)]
    source: String,
    /// count | ratio | gauge.
    #[schema(pattern = "^(count|ratio|gauge)$")]
    kind: String,
    /// Bucket length that divides a day or is whole days: `1m`, `5m`, `1h`, `1d`.
    interval: String,
    /// How long to wait for late rows, e.g. `1m`.
    #[serde(skip_serializing_if = "Option::is_none")]
    delay: Option<String>,
    /// down | up | both.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^(down|up|both)$")]
    direction: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = super::backtest::sensitivity_schema)]
    sensitivity: Option<serde_json::Value>,
    /// Buckets with less volume are never flagged.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0)]
    min_volume: Option<f64>,
    /// auto | none | daily | weekly.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^(auto|none|daily|weekly)$")]
    seasonality: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
    /// info | warning | critical.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^(info|warning|critical)$")]
    severity: Option<String>,
    /// What a count or gauge is measured in (`EUR`, `ms`); ratios are in %.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 16)]
    unit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    labels: Option<std::collections::BTreeMap<String, String>>,
    /// Alert e-mail addresses.
    #[serde(skip_serializing_if = "Option::is_none")]
    recipients: Option<Vec<String>>,
    /// IANA timezone of daily and weekly slots, e.g. `Europe/Berlin`.
    #[serde(skip_serializing_if = "Option::is_none")]
    timezone: Option<String>,
    /// Most series (dimension combinations).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 10000)]
    #[serde(default, deserialize_with = "super::whole::opt")]
    max_series: Option<usize>,
    /// `N of M`: fire when N of the last M judged buckets are anomalous.
    #[serde(skip_serializing_if = "Option::is_none")]
    trigger: Option<String>,
    /// In-band buckets that resolve an alert.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "super::whole::opt")]
    recover_after: Option<u32>,
    /// Remind while firing, e.g. `4h`.
    #[serde(skip_serializing_if = "Option::is_none")]
    repeat_interval: Option<String>,
}

/// JSON fields → `model.toml` text. A JSON number sensitivity stays a number.
fn model_toml(fields: &ModelFields) -> ApiResult<String> {
    let value = serde_json::to_value(fields).map_err(anyhow::Error::from)?;
    let table: toml::Table = serde_json::from_value(value)
        .map_err(|e| ApiError::Unprocessable(format!("cannot represent the model: {e}")))?;
    toml::to_string(&table).map_err(|e| ApiError::Unprocessable(format!("cannot represent the model: {e}")))
}

/// Parse like a file model would be; every problem at once, as a 422.
fn parse(id: &str, toml_text: &str, query: &str) -> ApiResult<KpiSpec> {
    if query.len() > 64 * 1024 {
        return Err(ApiError::Unprocessable("query: longer than 64 KiB".to_owned()));
    }
    let mut spec =
        KpiSpec::parse(id, toml_text, query, std::path::Path::new(API_ORIGIN)).map_err(|problems| {
            let text: Vec<String> = problems
                .iter()
                .map(|p| match &p.field {
                    Some(f) => format!("{f}: {}", p.message),
                    None => p.message.clone(),
                })
                .collect();
            ApiError::Unprocessable(text.join("; "))
        })?;
    spec.origin = API_ORIGIN.to_owned();
    Ok(spec)
}

/// What a draft's query returned.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct TestQueryDto {
    /// The first 50 rows, as the query returned them (`ts`, `value`, `denominator`, dimensions).
    #[schema(value_type = Vec<Object>)]
    rows: Vec<serde_json::Value>,
    /// Rows returned in all.
    total_rows: usize,
    /// Series (dimension combinations).
    series: usize,
}

/// Run a draft KPI's query once over its last 12 buckets and show the first rows.
#[utoipa::path(
    post,
    path = "/api/kpis/test-query",
    tag = "kpis",
    request_body = KpiBody,
    responses(
        (status = 200, description = "The first rows", body = TestQueryDto),
        (status = 400, description = "The body does not match the schema", body = ErrorBody),
        (status = 401, description = "A token is needed", body = ErrorBody),
        (status = 403, description = "The token's role is too low (editor needed)", body = ErrorBody),
        (status = 413, description = "The body is larger than 256 KiB", body = ErrorBody),
        (status = 422, description = "The model is invalid or the query fails (the database's error)", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    )
)]
pub(super) async fn test_query(
    State(state): State<AppState>,
    body: Result<Json<KpiBody>, JsonRejection>,
) -> ApiResult<Json<TestQueryDto>> {
    let Json(body) = body?;
    let spec = parse(&body.id, &model_toml(&body.model)?, &body.query)?;
    let (rows, series) = crate::pipeline::test_query(&state.sources, &spec, state.clock.now(), 12)
        .await
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    Ok(Json(TestQueryDto {
        total_rows: rows.len(),
        series,
        rows: rows
            .iter()
            .take(50)
            .map(|r| {
                let mut row = serde_json::json!({"ts": r.ts.to_rfc3339(), "value": r.value});
                if let Some(d) = r.denominator {
                    row["denominator"] = d.into();
                }
                for (k, v) in &r.dims {
                    row[k] = v.clone().into();
                }
                row
            })
            .collect(),
    }))
}

/// Register a KPI: validate, run its query once, store it, and let the scheduler backfill.
#[utoipa::path(
    post,
    path = "/api/kpis",
    tag = "kpis",
    request_body = KpiBody,
    responses(
        (status = 201, description = "Registered; backfilled on the next scheduler pass", body = KpiDto),
        (status = 400, description = "The body does not match the schema", body = ErrorBody),
        (status = 401, description = "A token is needed", body = ErrorBody),
        (status = 403, description = "The token's role is too low (editor needed)", body = ErrorBody),
        (status = 409, description = "A KPI with that id exists", body = ErrorBody),
        (status = 413, description = "The body is larger than 256 KiB", body = ErrorBody),
        (status = 422, description = "The model is invalid or the query fails", body = ErrorBody),
        (status = 500, description = "The state store failed", body = ErrorBody),
    )
)]
pub(super) async fn register(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<KpiBody>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<KpiDto>)> {
    let Json(body) = body?;
    let toml_text = model_toml(&body.model)?;
    let spec = parse(&body.id, &toml_text, &body.query)?;
    if let Some(existing) = state.specs.get(spec.id.as_str()) {
        return Err(ApiError::Conflict(format!(
            "KPI {} already exists ({})",
            spec.id,
            if existing.origin == API_ORIGIN {
                "registered through the API; PATCH it".to_owned()
            } else {
                format!("defined in {}", existing.origin)
            }
        )));
    }
    crate::pipeline::test_query(&state.sources, &spec, state.clock.now(), 12)
        .await
        .map_err(|e| ApiError::Unprocessable(format!("the query does not work: {e}")))?;
    state
        .store
        .save_kpi_definition(
            spec.id.as_str(),
            &toml_text,
            spec.query.sql().unwrap_or_default(),
            &caller.name,
        )
        .await?;
    state.store.upsert_kpi(&spec).await?;
    state
        .store
        .audit(
            &caller.name,
            "kpi.register",
            spec.id.as_str(),
            &serde_json::to_value(&body).unwrap_or_default(),
        )
        .await?;
    state.specs.insert(spec.clone());
    tracing::info!(message = "KPI registered.", kpi = %spec.id, by = %caller.name);
    Ok((StatusCode::CREATED, Json(kpi_dto(&spec, None))))
}

fn api_kpi(state: &AppState, id: &str) -> ApiResult<KpiSpec> {
    let spec = state
        .specs
        .get(id)
        .ok_or_else(|| ApiError::NotFound(format!("no KPI {id:?}")))?;
    if spec.origin != API_ORIGIN {
        return Err(ApiError::Conflict(format!(
            "KPI {id} is defined in {}; change the file (it is the source of truth)",
            spec.origin
        )));
    }
    Ok(spec)
}

/// Change a registered KPI's settings: any `model.toml` field or `query`; `null` removes a
/// field. KPIs from `models/` are read-only here (409): the file is the source of truth.
#[utoipa::path(
    patch,
    path = "/api/kpis/{id}",
    tag = "kpis",
    params(("id" = String, Path, description = "KPI id", pattern = "^[a-z][a-z0-9_-]{0,63}$")),
    request_body(content = Object, description = "The fields to change, as in `POST /api/kpis`; `null` removes one"),
    responses(
        (status = 200, description = "The changed KPI", body = KpiDto),
        (status = 400, description = "The body is not a JSON object of known fields", body = ErrorBody),
        (status = 401, description = "A token is needed", body = ErrorBody),
        (status = 403, description = "The token's role is too low (editor needed)", body = ErrorBody),
        (status = 404, description = "No such KPI", body = ErrorBody),
        (status = 409, description = "The KPI is defined in a file", body = ErrorBody),
        (status = 413, description = "The body is larger than 256 KiB", body = ErrorBody),
        (status = 422, description = "The changed model is invalid or the query fails", body = ErrorBody),
        (status = 500, description = "The state store failed", body = ErrorBody),
    )
)]
pub(super) async fn update(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<serde_json::Map<String, serde_json::Value>>, JsonRejection>,
) -> ApiResult<Json<KpiDto>> {
    let Path(id) = path?;
    let Json(changes) = body?;
    api_kpi(&state, &id)?;
    let stored = state
        .store
        .kpi_definitions()
        .await?
        .into_iter()
        .find(|(d, _, _)| d == &id)
        .ok_or_else(|| ApiError::NotFound(format!("no KPI {id:?}")))?;
    let mut fields: serde_json::Map<String, serde_json::Value> = {
        let table: toml::Table = stored
            .1
            .parse()
            .map_err(|e| anyhow::anyhow!("stored model of {id} is unreadable: {e}"))?;
        serde_json::to_value(table)
            .map_err(anyhow::Error::from)?
            .as_object()
            .cloned()
            .unwrap_or_default()
    };
    let mut query = stored.2.clone();
    for (k, v) in &changes {
        match k.as_str() {
            "id" => {
                return Err(ApiError::Unprocessable(
                    "the id cannot change; register a new KPI".to_owned(),
                ))
            }
            "query" => {
                query = v
                    .as_str()
                    .ok_or_else(|| ApiError::Unprocessable("`query` must be a string".to_owned()))?
                    .to_owned();
            }
            _ if v.is_null() => {
                fields.remove(k);
            }
            _ => {
                fields.insert(k.clone(), v.clone());
            }
        }
    }
    let model: ModelFields = serde_json::from_value(serde_json::Value::Object(fields))
        .map_err(|e| ApiError::Unprocessable(format!("invalid change: {e}")))?;
    let toml_text = model_toml(&model)?;
    let spec = parse(&id, &toml_text, &query)?;
    if query != stored.2 || spec.source != api_kpi(&state, &id)?.source {
        crate::pipeline::test_query(&state.sources, &spec, state.clock.now(), 12)
            .await
            .map_err(|e| ApiError::Unprocessable(format!("the query does not work: {e}")))?;
    }
    state
        .store
        .save_kpi_definition(
            &id,
            &toml_text,
            spec.query.sql().unwrap_or_default(),
            &caller.name,
        )
        .await?;
    state.store.upsert_kpi(&spec).await?;
    state
        .store
        .audit(
            &caller.name,
            "kpi.update",
            &id,
            &serde_json::Value::Object(changes),
        )
        .await?;
    state.specs.insert(spec.clone());
    let row = state.store.kpi(&id).await?;
    Ok(Json(kpi_dto(&spec, row.as_ref())))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct RetireQuery {
    /// Also delete the KPI's stored history.
    #[serde(default)]
    purge: bool,
}

/// Retire a registered KPI; its history is kept unless `?purge=true`.
#[utoipa::path(
    delete,
    path = "/api/kpis/{id}",
    tag = "kpis",
    params(("id" = String, Path, description = "KPI id", pattern = "^[a-z][a-z0-9_-]{0,63}$"), RetireQuery),
    responses(
        (status = 204, description = "Retired"),
        (status = 400, description = "A bad parameter", body = ErrorBody),
        (status = 401, description = "A token is needed", body = ErrorBody),
        (status = 403, description = "The token's role is too low (editor needed)", body = ErrorBody),
        (status = 404, description = "No such KPI", body = ErrorBody),
        (status = 409, description = "The KPI is defined in a file", body = ErrorBody),
        (status = 500, description = "The state store failed", body = ErrorBody),
    )
)]
pub(super) async fn retire(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<RetireQuery>, QueryRejection>,
) -> ApiResult<StatusCode> {
    let Path(id) = path?;
    let Query(q) = query?;
    api_kpi(&state, &id)?;
    state.store.retire_kpi_definition(&id).await?;
    state.specs.remove(&id);
    if q.purge {
        state.store.purge_kpi(&id).await?;
    }
    state
        .store
        .audit(
            &caller.name,
            "kpi.retire",
            &id,
            &serde_json::json!({"purge": q.purge}),
        )
        .await?;
    tracing::info!(message = "KPI retired.", kpi = %id, by = %caller.name);
    Ok(StatusCode::NO_CONTENT)
}

/// A draft to backtest.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct DraftBacktest {
    /// The draft KPI.
    kpi: KpiBody,
    /// Weeks to report on (default 4).
    #[schema(minimum = 1, maximum = 12)]
    #[serde(default, deserialize_with = "super::whole::opt")]
    weeks: Option<u32>,
    /// An alert budget, `N/week` or `N/day` (see the stored KPI's backtest).
    #[schema(
        max_length = 32,
        pattern = "^\\s*[0-9]+(\\.[0-9]+)?\\s*/\\s*(week|day|w|wk|d)\\s*$"
    )]
    budget: Option<String>,
    /// Incidents to inject (at most 12).
    #[schema(max_items = 12)]
    inject: Option<Vec<super::backtest::InjectDto>>,
}

/// Backtest an unsaved draft: query its source fresh for the weeks asked (plus the configured
/// `scheduler.history` to warm the detector up) and replay them at the draft's settings.
#[utoipa::path(
    post,
    path = "/api/kpis/backtest",
    tag = "backtest",
    request_body = DraftBacktest,
    responses(
        (status = 200, description = "What the draft would have fired", body = BacktestDto),
        (status = 400, description = "The body does not match the schema", body = ErrorBody),
        (status = 401, description = "A token is needed", body = ErrorBody),
        (status = 403, description = "The token's role is too low (editor needed)", body = ErrorBody),
        (status = 413, description = "The body is larger than 256 KiB", body = ErrorBody),
        (status = 422, description = "The model is invalid or the query fails", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    )
)]
pub(super) async fn backtest_draft(
    State(state): State<AppState>,
    body: Result<Json<DraftBacktest>, JsonRejection>,
) -> ApiResult<Json<BacktestDto>> {
    let Json(body) = body?;
    let weeks = body.weeks.unwrap_or(4);
    if !(1..=12).contains(&weeks) {
        return Err(ApiError::BadRequest(
            "`weeks` must be between 1 and 12 for a draft".to_owned(),
        ));
    }
    let (budget, incidents) =
        super::backtest::tuning_request(body.budget.as_deref(), body.inject.as_deref())?;
    let spec = parse(&body.kpi.id, &model_toml(&body.kpi.model)?, &body.kpi.query)?;
    let request = crate::pipeline::BacktestRequest {
        spec: &spec,
        weeks,
        to: spec.buckets().floor(state.clock.now().timestamp()),
        replay: state.replay,
        recorded: crate::pipeline::Recorded::Fresh,
        calendar: None,
    };
    let history = crate::pipeline::backtest_history(&state.store, &state.sources, request)
        .await
        .map_err(|e| match e.downcast::<crate::sources::Error>() {
            Ok(e) => ApiError::Unprocessable(format!("the query does not work: {e}")),
            Err(e) => ApiError::Internal(e),
        })?;
    let opts = crate::backtest::BacktestOptions {
        weeks,
        sensitivity: spec.sensitivity,
        direction: None,
        min_volume: None,
    };
    let report = crate::backtest::run(&spec, &history, opts).map_err(anyhow::Error::from)?;
    let (budget, replay) = super::backtest::tune(&spec, history, opts, budget, incidents).await?;
    let mut dto = backtest_dto(spec.id.to_string(), &report);
    dto.budget = budget;
    dto.replay = replay;
    Ok(Json(dto))
}
