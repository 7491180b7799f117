//! `POST /api/kpis/{id}/backtest`: replay stored history at another setting. The draft
//! backtest (`POST /api/kpis/backtest`) is in `registration` and shares [`BacktestDto`].

use std::collections::BTreeMap;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::reading::Reading;

use super::{dims_json, ApiError, ApiResult, AppState, ErrorBody};

/// The setting to replay (anything left out is the model's).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BacktestBody {
    /// Weeks to report on (default 4).
    #[schema(minimum = 1, maximum = 52)]
    #[serde(default, deserialize_with = "super::whole::opt")]
    weeks: Option<u32>,
    /// `low | medium | high` or a number in (0, 1).
    #[schema(schema_with = sensitivity_schema)]
    sensitivity: Option<serde_json::Value>,
    /// Which deviations alert.
    direction: Option<DirectionDto>,
    /// Buckets with less volume are never flagged.
    #[schema(minimum = 0)]
    min_volume: Option<f64>,
    /// An alert budget, `N/week` or `N/day`: also pick the most sensitive setting that fires
    /// at most that many alerts per week over the replayed weeks.
    #[schema(
        max_length = 32,
        pattern = "^\\s*[0-9]+(\\.[0-9]+)?\\s*/\\s*(week|day|w|wk|d)\\s*$"
    )]
    budget: Option<String>,
    /// Incidents to inject, one at a time, into the history: which settings would catch each,
    /// and how fast (at most 12).
    #[schema(max_items = 12)]
    inject: Option<Vec<InjectDto>>,
}

/// A synthetic drop added to the history.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct InjectDto {
    /// How much the value drops, in percent (e.g. 20 for −20 %).
    #[schema(exclusive_minimum = 0, maximum = 100)]
    drop_percent: f64,
    /// How long, e.g. `30m` (1 minute to 7 days).
    #[schema(max_length = 32)]
    duration: String,
    /// At the KPI's busiest or quietest hour.
    at: PlacementDto,
}

/// busy | quiet.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum PlacementDto {
    /// The hour (or weekday, for daily KPIs) with the highest mean value.
    Busy,
    /// The one with the lowest.
    Quiet,
}

/// The budget's answer.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct BudgetDto {
    /// Alerts per week allowed.
    budget_per_week: f64,
    /// The most sensitive setting within it (null: even the least sensitive fires more).
    chosen: Option<RateDto>,
    /// The next more sensitive setting, which fires more (null: the chosen one is the most
    /// sensitive tried).
    next: Option<RateDto>,
    /// Every setting tried, least sensitive first.
    curve: Vec<RateDto>,
}

/// What one sensitivity fired.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub(super) struct RateDto {
    sensitivity: f64,
    alerts: usize,
    alerts_per_week: f64,
    flagged_buckets: usize,
}

/// One setting's results on the injected incidents.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ReplayDto {
    sensitivity: f64,
    /// `low`, `medium`, `high`, `model`, `budget` (a setting may carry several).
    names: Vec<String>,
    incidents: Vec<CatchDto>,
}

/// Whether one injected incident would have alerted.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct CatchDto {
    /// Like `-20%:30m@busy`.
    incident: String,
    drop_percent: f64,
    duration_secs: i64,
    at: PlacementDto,
    /// Where it was put.
    start: String,
    caught: bool,
    /// Seconds from its start to the end of the bucket at which the alert fires (bucket time:
    /// add the model's `delay` for wall-clock time); null when missed.
    delay_secs: Option<i64>,
}

/// The budget and incidents asked for, checked (400 for a malformed budget, 422 for an
/// incident out of range).
pub(super) fn tuning_request(
    budget: Option<&str>,
    inject: Option<&[InjectDto]>,
) -> ApiResult<(Option<crate::tuning::Budget>, Vec<crate::tuning::Incident>)> {
    if budget.is_some_and(|b| b.chars().count() > 32) {
        return Err(ApiError::BadRequest(
            "`budget` is longer than 32 characters".to_owned(),
        ));
    }
    let budget = budget
        .map(str::parse::<crate::tuning::Budget>)
        .transpose()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let inject = inject.unwrap_or_default();
    if inject.len() > 12 {
        return Err(ApiError::BadRequest(
            "`inject` takes at most 12 incidents".to_owned(),
        ));
    }
    let mut incidents = Vec::with_capacity(inject.len());
    for i in inject {
        if i.duration.chars().count() > 32 {
            return Err(ApiError::BadRequest(
                "`inject.duration` is longer than 32 characters".to_owned(),
            ));
        }
        let duration = humantime::parse_duration(i.duration.trim())
            .map_err(|e| ApiError::Unprocessable(format!("`inject.duration` {:?}: {e}", i.duration)))?;
        let at = match i.at {
            PlacementDto::Busy => crate::tuning::Placement::Busy,
            PlacementDto::Quiet => crate::tuning::Placement::Quiet,
        };
        let secs = i64::try_from(duration.as_secs()).unwrap_or(i64::MAX);
        incidents.push(
            crate::tuning::Incident::new(i.drop_percent / 100.0, secs, at)
                .map_err(|e| ApiError::Unprocessable(e.to_string()))?,
        );
    }
    Ok((budget, incidents))
}

/// What the tuning parts of a backtest answer.
pub(super) type Tuned = (Option<BudgetDto>, Option<Vec<ReplayDto>>);

fn rate_dto(r: crate::tuning::Rate) -> RateDto {
    RateDto {
        sensitivity: r.sensitivity,
        alerts: r.alerts,
        alerts_per_week: r.per_week,
        flagged_buckets: r.flagged,
    }
}

fn placement_dto(p: crate::tuning::Placement) -> PlacementDto {
    match p {
        crate::tuning::Placement::Busy => PlacementDto::Busy,
        crate::tuning::Placement::Quiet => PlacementDto::Quiet,
    }
}

/// Run the budget search and the incident replay (CPU-bound: on a blocking thread).
pub(super) async fn tune(
    spec: &crate::kpi::KpiSpec,
    history: crate::backtest::History,
    opts: crate::backtest::BacktestOptions,
    budget: Option<crate::tuning::Budget>,
    incidents: Vec<crate::tuning::Incident>,
) -> ApiResult<Tuned> {
    if budget.is_none() && incidents.is_empty() {
        return Ok((None, None));
    }
    let spec = spec.clone();
    let work = move || -> Result<Tuned, crate::baseline::Error> {
        let choice = budget
            .map(|b| crate::tuning::choose_by_budget(&spec, &history, opts, b))
            .transpose()?;
        let mut replay = None;
        if !incidents.is_empty() {
            let named = crate::tuning::replay_settings(
                opts.sensitivity.get(),
                choice.as_ref().and_then(|c| c.chosen).map(|c| c.sensitivity),
            );
            let settings: Vec<crate::kpi::Sensitivity> = named
                .iter()
                .filter_map(|(s, _)| crate::kpi::Sensitivity::new(*s).ok())
                .collect();
            let out = crate::tuning::replay_incidents(&spec, &history, opts, &settings, &incidents)?;
            replay = Some(
                out.into_iter()
                    .zip(named)
                    .map(|(r, (_, names))| ReplayDto {
                        sensitivity: r.sensitivity,
                        names,
                        incidents: r
                            .catches
                            .into_iter()
                            .map(|c| CatchDto {
                                incident: c.incident.label(),
                                drop_percent: c.incident.drop * 100.0,
                                duration_secs: c.incident.duration_secs,
                                at: placement_dto(c.incident.at),
                                start: super::iso(c.start).unwrap_or_default(),
                                caught: c.caught,
                                delay_secs: c.delay_secs,
                            })
                            .collect(),
                    })
                    .collect(),
            );
        }
        let budget = choice.map(|c| BudgetDto {
            budget_per_week: c.budget.get(),
            chosen: c.chosen.map(rate_dto),
            next: c.next.map(rate_dto),
            curve: c.curve.into_iter().map(rate_dto).collect(),
        });
        Ok((budget, replay))
    };
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        work()
    })
    .await
    .map_err(anyhow::Error::from)?
    .map_err(|e| ApiError::Internal(e.into()))
}

/// down | up | both.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum DirectionDto {
    /// Only drops.
    Down,
    /// Only rises.
    Up,
    /// Both.
    Both,
}

impl From<DirectionDto> for crate::kpi::Direction {
    fn from(d: DirectionDto) -> Self {
        match d {
            DirectionDto::Down => crate::kpi::Direction::Down,
            DirectionDto::Up => crate::kpi::Direction::Up,
            DirectionDto::Both => crate::kpi::Direction::Both,
        }
    }
}

/// `low | medium | high`, or a number strictly between 0 and 1 (null: the model's).
pub(super) fn sensitivity_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["low", "medium", "high"])),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Number)
                .exclusive_minimum(Some(0.0))
                .exclusive_maximum(Some(1.0)),
        )
        .description(Some("low | medium | high, or a number in (0, 1)"))
        .into()
}

/// A sensitivity from its JSON form (see [`sensitivity_schema`]).
pub(super) fn parse_sensitivity(v: &serde_json::Value) -> ApiResult<crate::kpi::Sensitivity> {
    match v {
        serde_json::Value::String(s) => s
            .parse()
            .map_err(|e: crate::kpi::ParseError| ApiError::BadRequest(e.to_string())),
        serde_json::Value::Number(n) => crate::kpi::Sensitivity::new(n.as_f64().unwrap_or(f64::NAN))
            .map_err(|e| ApiError::BadRequest(e.to_string())),
        _ => Err(ApiError::BadRequest(
            "`sensitivity` must be low | medium | high or a number in (0, 1)".to_owned(),
        )),
    }
}

/// What a setting would have fired.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct BacktestDto {
    kpi: String,
    /// Start of the weeks reported on.
    from: String,
    /// End of them.
    to: String,
    /// The sensitivity replayed, in (0, 1).
    sensitivity: f64,
    /// Alerts fired per week, oldest week first.
    alerts_per_week: Vec<usize>,
    mean_alerts_per_week: f64,
    /// The incidents it would have opened.
    alerts: Vec<BacktestAlertDto>,
    /// Every flagged bucket.
    flags: Vec<BacktestFlagDto>,
    /// With `budget`: the most sensitive setting within it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) budget: Option<BudgetDto>,
    /// With `inject`: per setting, which injected incidents it catches and how fast.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) replay: Option<Vec<ReplayDto>>,
}

/// An incident a backtest would have opened.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct BacktestAlertDto {
    /// Dimension values of the series.
    series: BTreeMap<String, serde_json::Value>,
    started: String,
    /// Null when it would still be open.
    resolved: Option<String>,
    /// Flagged buckets in it.
    flagged_buckets: usize,
}

/// A bucket a backtest flagged.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct BacktestFlagDto {
    series: BTreeMap<String, serde_json::Value>,
    ts: String,
    /// The bucket's value and band.
    #[serde(flatten)]
    reading: Reading,
    score: f64,
}

fn dims_map(s: &str) -> BTreeMap<String, serde_json::Value> {
    match dims_json(s) {
        serde_json::Value::Object(map) => map.into_iter().collect(),
        _ => BTreeMap::new(),
    }
}

/// Replay stored history at another setting: the alerts it would have fired, per week.
#[utoipa::path(
    post,
    path = "/api/kpis/{id}/backtest",
    tag = "backtest",
    params(("id" = String, Path, description = "KPI id", pattern = "^[a-z][a-z0-9_-]{0,63}$")),
    request_body = BacktestBody,
    responses(
        (status = 200, description = "What the setting would have fired", body = BacktestDto),
        (status = 400, description = "The body does not match the schema", body = ErrorBody),
        (status = 401, description = "A token is needed", body = ErrorBody),
        (status = 403, description = "The token's role is too low (a backtest is a POST: editor needed)", body = ErrorBody),
        (status = 404, description = "No such KPI", body = ErrorBody),
        (status = 413, description = "The body is larger than 256 KiB", body = ErrorBody),
        (status = 422, description = "An injected incident is out of range", body = ErrorBody),
        (status = 500, description = "The state store or the detector failed", body = ErrorBody),
    )
)]
pub(super) async fn backtest(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<BacktestBody>, JsonRejection>,
) -> ApiResult<Json<BacktestDto>> {
    let Path(id) = path?;
    let Json(body) = body?;
    let spec = state
        .specs
        .get(&id)
        .ok_or_else(|| ApiError::NotFound(format!("no KPI {id:?}")))?;
    let weeks = body.weeks.unwrap_or(4);
    if !(1..=52).contains(&weeks) {
        return Err(ApiError::BadRequest(
            "`weeks` must be between 1 and 52".to_owned(),
        ));
    }
    let sensitivity = match &body.sensitivity {
        None | Some(serde_json::Value::Null) => spec.sensitivity,
        Some(v) => parse_sensitivity(v)?,
    };
    if body.min_volume.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
        return Err(ApiError::BadRequest(
            "`min_volume` must be a number >= 0".to_owned(),
        ));
    }
    let (budget, incidents) = tuning_request(body.budget.as_deref(), body.inject.as_deref())?;
    let opts = crate::backtest::BacktestOptions {
        weeks,
        sensitivity,
        direction: body.direction.map(Into::into),
        min_volume: body.min_volume,
    };
    let request = crate::pipeline::BacktestRequest {
        spec: &spec,
        weeks,
        to: spec.buckets().floor(state.clock.now().timestamp()),
        replay: state.replay,
        recorded: crate::pipeline::Recorded::Stored,
        calendar: None,
    };
    let history = crate::pipeline::backtest_history(&state.store, &state.sources, request).await?;
    let report = crate::backtest::run(&spec, &history, opts).map_err(anyhow::Error::from)?;
    let (budget, replay) = tune(&spec, history, opts, budget, incidents).await?;
    let mut dto = backtest_dto(id, &report);
    dto.budget = budget;
    dto.replay = replay;
    Ok(Json(dto))
}

pub(super) fn backtest_dto(kpi: String, report: &crate::backtest::BacktestReport) -> BacktestDto {
    BacktestDto {
        kpi,
        from: report.from.to_rfc3339(),
        to: report.to.to_rfc3339(),
        sensitivity: report.sensitivity,
        mean_alerts_per_week: report.mean_alerts_per_week(),
        alerts_per_week: report.alerts_per_week.clone(),
        alerts: report
            .alerts
            .iter()
            .map(|a| BacktestAlertDto {
                series: dims_map(&a.series),
                started: a.started.to_rfc3339(),
                resolved: a.resolved.map(|r| r.to_rfc3339()),
                flagged_buckets: a.buckets,
            })
            .collect(),
        flags: report
            .flags
            .iter()
            .map(|f| BacktestFlagDto {
                series: dims_map(&f.series),
                ts: f.ts.to_rfc3339(),
                reading: f.reading,
                score: f.score,
            })
            .collect(),
        budget: None,
        replay: None,
    }
}
