//! The HTTP API (axum): health, metrics and read-only JSON over KPIs, series and anomalies.
//!
//! [`router`] builds the whole `Router` from an [`AppState`], so tests can drive it without
//! a socket. Handlers read through `store`; none run KPI SQL. Errors go through [`ApiError`]:
//! 4xx bodies say what is wrong; 5xx bodies are opaque and the cause is logged once.

mod auth;
mod registration;
mod ui;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::alerting::LinkSigner;
use crate::clock::Clock;
use crate::kpi::Registry;
use crate::store::{AnomalyRow, EvaluationRow, ObservationRow, Store};
use crate::telemetry::Metrics;

/// What handlers share: handles only.
#[derive(Debug, Clone)]
pub struct AppState {
    /// State store.
    pub store: Store,
    /// Every KPI.
    pub specs: Registry,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// The clock ("now" for default ranges).
    pub clock: Arc<dyn Clock>,
    /// Checks the signed links in messages.
    pub signer: LinkSigner,
    /// API tokens (hashed); empty = open API.
    pub tokens: Arc<Vec<crate::config::TokenConfig>>,
    /// KPI sources, for testing a draft KPI's query (through `pipeline`).
    pub sources: crate::sources::SourceRegistry,
}

pub use auth::{hash_token, Caller};

/// The API's error type.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 400.
    #[error("{0}")]
    BadRequest(String),
    /// 401.
    #[error("{0}")]
    Unauthorized(String),
    /// 403.
    #[error("{0}")]
    Forbidden(String),
    /// 413.
    #[error("{0}")]
    TooLarge(String),
    /// 422: the request is well-formed but what it asks for is not valid.
    #[error("{0}")]
    Unprocessable(String),
    /// 409.
    #[error("{0}")]
    Conflict(String),
    /// 500; the message is logged, not returned.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<crate::store::Error> for ApiError {
    fn from(e: crate::store::Error) -> Self {
        ApiError::Internal(e.into())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(format!("the request body is larger than {MAX_BODY_BYTES} bytes"))
        } else {
            ApiError::BadRequest(e.body_text())
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::BadRequest(e.body_text())
    }
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match &self {
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m.clone()),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m.clone()),
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m.clone()),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, m.clone()),
            ApiError::Unprocessable(m) => (StatusCode::UNPROCESSABLE_ENTITY, m.clone()),
            ApiError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, m.clone()),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m.clone()),
            ApiError::Internal(error) => {
                tracing::error!(message = "API request failed.", error = format!("{error:#}"));
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error".to_owned())
            }
        };
        (status, Json(ErrorBody { error: message })).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/kpis", get(list_kpis))
        .route("/api/kpis/{id}/series", get(series))
        .route("/api/anomalies", get(anomalies))
        .route("/api/kpis/{id}/backtest", axum::routing::post(backtest))
        .route("/api/anomalies/{id}/feedback", axum::routing::post(feedback))
        .route("/api/alerts", get(alerts))
        .route("/api/alerts/{id}/ack", axum::routing::post(ack_alert))
        .route("/ack/{id}", get(ack_page).post(ack_by_link))
        .route("/silence/{id}", get(silence_page).post(silence_by_link))
        .route("/api/silences", get(list_silences).post(create_silence))
        .route("/api/silences/{id}", axum::routing::delete(expire_silence))
        .route("/api/kpis", axum::routing::post(registration::register))
        .route(
            "/api/kpis/test-query",
            axum::routing::post(registration::test_query),
        )
        .route(
            "/api/kpis/backtest",
            axum::routing::post(registration::backtest_draft),
        )
        .route(
            "/api/kpis/{id}",
            axum::routing::patch(registration::update).delete(registration::retire),
        )
        .route("/api/audit", get(audit))
        .merge(ui::routes())
        .route(
            "/api/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .fallback(|| async { ApiError::NotFound("no such endpoint".to_owned()) })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// The API's OpenAPI 3 document (kept beside the handlers; a test checks it lists every route).
pub const OPENAPI: &str = include_str!("openapi.json");

/// Requests larger than this are refused (413) before a handler sees them.
const MAX_BODY_BYTES: usize = 256 * 1024;

async fn audit(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> ApiResult<Json<Vec<crate::store::AuditRow>>> {
    if caller.role < crate::config::Role::Admin {
        return Err(ApiError::Forbidden(
            "the audit log needs the admin role".to_owned(),
        ));
    }
    Ok(Json(state.store.audit_log(500).await?))
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

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
        .into_response()
}

#[derive(Serialize)]
struct KpiDto {
    id: String,
    title: String,
    description: String,
    kind: String,
    interval: String,
    source: String,
    direction: String,
    sensitivity: f64,
    owner: Option<String>,
    severity: String,
    timezone: String,
    labels: BTreeMap<String, String>,
    origin: String,
    /// ok | data_missing | query_error | pending (never run).
    status: String,
    last_run_at: Option<String>,
    last_error: Option<String>,
    data_until: Option<String>,
}

fn iso(secs: i64) -> Option<String> {
    chrono::DateTime::from_timestamp(secs, 0).map(|t| t.to_rfc3339())
}

async fn list_kpis(State(state): State<AppState>) -> ApiResult<Json<Vec<KpiDto>>> {
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

fn kpi_dto(s: &crate::kpi::KpiSpec, row: Option<&crate::store::KpiRow>) -> KpiDto {
    KpiDto {
        id: s.id.to_string(),
        title: s.title.clone(),
        description: s.description.clone(),
        kind: s.kind.to_string(),
        interval: s.interval.to_string(),
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

/// `from`/`to` as RFC 3339 or unix seconds.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeQuery {
    from: Option<String>,
    to: Option<String>,
}

fn parse_instant(name: &str, s: &str) -> ApiResult<i64> {
    if let Ok(secs) = s.parse::<i64>() {
        return Ok(secs);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp())
        .map_err(|_| ApiError::BadRequest(format!("`{name}` must be RFC 3339 or unix seconds, got {s:?}")))
}

#[derive(Serialize)]
struct PointDto {
    ts: String,
    value: f64,
    denominator: Option<f64>,
    #[serde(flatten)]
    verdict: Option<EvaluationDto>,
}

#[derive(Serialize)]
struct EvaluationDto {
    band_value: Option<f64>,
    expected: Option<f64>,
    lower: Option<f64>,
    upper: Option<f64>,
    score: f64,
    anomaly: bool,
    /// What flagged it: `bucket` (its own value is outside the band), `accumulated`
    /// (evidence over recent buckets), `empty_run` or `ongoing` (an incident under way).
    flagged_by: Option<String>,
    status: String,
}

#[derive(Serialize)]
struct SeriesDto {
    dims: serde_json::Value,
    points: Vec<PointDto>,
}

const MAX_POINTS: i64 = 50_000;

async fn series(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<RangeQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<SeriesDto>>> {
    let Query(range) = query?;
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
        return Err(ApiError::BadRequest("`from` must be before `to`".to_owned()));
    }
    if (to - from) / spec.interval.secs_i64() > MAX_POINTS {
        return Err(ApiError::BadRequest(format!(
            "the range holds more than {MAX_POINTS} buckets; narrow it"
        )));
    }
    let mut out = Vec::new();
    for s in state.store.series_of(&id).await? {
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
            .map(|o| PointDto {
                ts: iso(o.ts).unwrap_or_default(),
                value: o.value,
                denominator: o.denominator,
                verdict: evals.get(&o.ts).map(|e| EvaluationDto {
                    band_value: e.value,
                    expected: e.expected,
                    lower: e.lower,
                    upper: e.upper,
                    score: e.score,
                    anomaly: e.anomaly,
                    flagged_by: e.flagged_by.clone(),
                    status: e.status.clone(),
                }),
            })
            .collect();
        out.push(SeriesDto {
            dims: serde_json::from_str(&s.dims).unwrap_or(serde_json::Value::Null),
            points,
        });
    }
    Ok(Json(out))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnomalyQuery {
    kpi: Option<String>,
    since: Option<String>,
    limit: Option<i64>,
}

#[derive(Serialize)]
struct AnomalyDto {
    id: i64,
    kpi: String,
    dims: serde_json::Value,
    ts: String,
    value: f64,
    expected: f64,
    lower: f64,
    upper: f64,
    score: f64,
    volume: f64,
    seasonality: String,
    /// False for anomalies found in backfilled history (recorded, not alerted).
    live: bool,
    /// What flagged it: `bucket`, `accumulated`, `empty_run` or `ongoing`.
    flagged_by: Option<String>,
    /// `below` or `above` the band.
    side: Option<String>,
}

impl From<AnomalyRow> for AnomalyDto {
    fn from(a: AnomalyRow) -> Self {
        AnomalyDto {
            id: a.id,
            kpi: a.kpi_id,
            dims: serde_json::from_str(&a.dims).unwrap_or(serde_json::Value::Null),
            ts: iso(a.ts).unwrap_or_default(),
            value: a.value,
            expected: a.expected,
            lower: a.lower,
            upper: a.upper,
            score: a.score,
            volume: a.volume,
            seasonality: a.seasonality,
            live: a.alerted,
            flagged_by: a.flagged_by,
            side: a.side,
        }
    }
}

async fn anomalies(
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

#[derive(Serialize)]
struct AlertDto {
    id: i64,
    kpi: String,
    kind: String,
    fingerprint: String,
    state: String,
    severity: String,
    started_at: Option<String>,
    last_anomaly_at: Option<String>,
    resolved_at: Option<String>,
    acknowledged_by: Option<String>,
    acknowledged_at: Option<String>,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertQuery {
    /// Only pending and firing alerts.
    open: Option<bool>,
    limit: Option<i64>,
}

async fn alerts(
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

fn parse_id(what: &str, id: &str) -> ApiResult<i64> {
    id.parse()
        .map_err(|_| ApiError::BadRequest(format!("{what} id {id:?} is not a number")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    by: String,
}

async fn ack_alert(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Json<AckBody>, JsonRejection>,
) -> ApiResult<Json<AlertDto>> {
    let id = parse_id("alert", &id)?;
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

async fn acknowledge(state: &AppState, id: i64, by: &str) -> ApiResult<AlertDto> {
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

#[derive(Debug, Deserialize)]
struct SigQuery {
    sig: String,
}

fn html_page(title: &str, body: &str) -> axum::response::Html<String> {
    axum::response::Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body style=\"font-family:sans-serif;max-width:40em;margin:3em auto\"><h1>{title}</h1>{body}</body></html>"
    ))
}

fn check_link(state: &AppState, action: &str, id: &str, sig: &str) -> ApiResult<i64> {
    let id = parse_id("alert", id)?;
    if state.signer.verify(action, id, sig) {
        Ok(id)
    } else {
        Err(ApiError::Forbidden("this link is not valid".to_owned()))
    }
}

/// The alert a signed link in a message is about, after checking its signature.
async fn linked_alert(
    state: &AppState,
    action: &str,
    id: &str,
    sig: &str,
) -> ApiResult<crate::store::AlertRow> {
    let id = check_link(state, action, id, sig)?;
    state
        .store
        .alert(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no alert {id}")))
}

/// The link in a message shows a confirmation; only the button (a POST) acknowledges, so mail
/// scanners that follow links do not.
async fn ack_page(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<SigQuery>, QueryRejection>,
) -> ApiResult<axum::response::Html<String>> {
    let Query(q) = query?;
    let alert = linked_alert(&state, "ack", &id, &q.sig).await?;
    let id = alert.id;
    let summary = escape_html(&alert.summary);
    Ok(html_page(
        "Acknowledge alert",
        &format!(
            "<p>Alert {id} ({state}): {summary}</p><form method=\"post\"><button type=\"submit\">Acknowledge</button></form>",
            state = escape_html(&alert.state)
        ),
    ))
}

async fn ack_by_link(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<SigQuery>, QueryRejection>,
) -> ApiResult<axum::response::Html<String>> {
    let Query(q) = query?;
    let id = check_link(&state, "ack", &id, &q.sig)?;
    let alert = acknowledge(&state, id, "e-mail link").await?;
    state
        .store
        .audit(
            "e-mail link",
            "alert.ack",
            &id.to_string(),
            &serde_json::json!({}),
        )
        .await?;
    Ok(html_page(
        "Acknowledged",
        &format!(
            "<p>Alert {id} is acknowledged; no more reminders will be sent. {}</p>",
            escape_html(&alert.summary)
        ),
    ))
}

/// The silence link shows a form (duration, comment); its POST creates the silence.
async fn silence_page(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<SigQuery>, QueryRejection>,
) -> ApiResult<axum::response::Html<String>> {
    let Query(q) = query?;
    let alert = linked_alert(&state, "silence", &id, &q.sig).await?;
    Ok(html_page(
        "Silence this series",
        &format!(
            "<p>{}</p><form method=\"post\">\
             <label>For <select name=\"duration\"><option>1h</option><option selected>2h</option>\
             <option>8h</option><option>24h</option></select></label><br><br>\
             <label>Your name <input name=\"author\" required maxlength=\"128\"></label><br><br>\
             <label>Why <input name=\"comment\" required maxlength=\"2000\" size=\"50\"></label><br><br>\
             <button type=\"submit\">Silence</button></form>",
            escape_html(&alert.summary)
        ),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SilenceForm {
    duration: String,
    author: String,
    comment: String,
}

async fn silence_by_link(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<SigQuery>, QueryRejection>,
    form: Result<axum::extract::Form<SilenceForm>, axum::extract::rejection::FormRejection>,
) -> ApiResult<axum::response::Html<String>> {
    let Query(q) = query?;
    let alert = linked_alert(&state, "silence", &id, &q.sig).await?;
    let id = alert.id;
    let axum::extract::Form(form) = form.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    text_field("author", &form.author, 128)?;
    text_field("comment", &form.comment, 2000)?;
    let secs = match form.duration.as_str() {
        "1h" => 3600,
        "2h" => 7200,
        "8h" => 8 * 3600,
        "24h" => 86_400,
        other => {
            return Err(ApiError::BadRequest(format!(
                "duration {other:?}: choose 1h, 2h, 8h or 24h"
            )))
        }
    };
    // Silence exactly this series: its KPI and its dimension values.
    let mut matchers = BTreeMap::from([("kpi".to_owned(), alert.kpi_id.clone())]);
    if let Some(series) = alert.series_id {
        if let Some(dims) = state.store.series_dims(series).await? {
            if let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(&dims) {
                for (k, v) in map {
                    matchers.insert(k, v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()));
                }
            }
        }
    }
    let now = state.clock.now().timestamp();
    let json = serde_json::to_string(&matchers).map_err(anyhow::Error::from)?;
    let silence = state
        .store
        .create_silence(&json, now, now + secs, &form.author, &form.comment)
        .await?;
    tracing::info!(message = "Silence created.", id = silence, alert = id, author = %form.author, matchers = %json);
    state
        .store
        .audit(
            "e-mail link",
            "silence.create",
            &silence.to_string(),
            &serde_json::json!({"alert": id, "matchers": matchers, "author": form.author, "comment": form.comment}),
        )
        .await?;
    Ok(html_page(
        "Silenced",
        &format!(
            "<p>Silence {silence} holds back alerts for {} for {}.</p>",
            escape_html(&json),
            form.duration
        ),
    ))
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A new silence.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSilence {
    /// Label matchers: `value`, `!value` or `~regex`; at least one.
    matchers: BTreeMap<String, String>,
    /// RFC 3339; default now.
    starts_at: Option<String>,
    /// RFC 3339; or give `duration`.
    ends_at: Option<String>,
    /// e.g. `2h`.
    duration: Option<String>,
    author: String,
    comment: String,
}

#[derive(Serialize)]
struct SilenceDto {
    id: i64,
    matchers: serde_json::Value,
    starts_at: Option<String>,
    ends_at: Option<String>,
    author: String,
    comment: String,
    active: bool,
}

const MAX_SILENCE_SECS: i64 = 90 * 86_400;

fn text_field(name: &str, value: &str, max: usize) -> ApiResult<()> {
    if value.trim().is_empty() || value.len() > max || value.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(format!(
            "`{name}` must be 1-{max} characters of printable text"
        )));
    }
    Ok(())
}

async fn create_silence(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    body: Result<Json<NewSilence>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<SilenceDto>)> {
    let Json(new) = body?;
    let now = state.clock.now().timestamp();
    if new.matchers.is_empty() || new.matchers.len() > 20 {
        return Err(ApiError::BadRequest(
            "`matchers` needs 1-20 label matchers".to_owned(),
        ));
    }
    for (label, pattern) in &new.matchers {
        text_field("matchers label", label, 64)?;
        if pattern.len() > 256 {
            return Err(ApiError::BadRequest(format!(
                "matcher for {label:?} is longer than 256 characters"
            )));
        }
        let probe = crate::config::RoutingConfig {
            receivers: Vec::new(),
            routes: vec![crate::config::RouteConfig {
                matchers: [(label.clone(), pattern.clone())].into(),
                ..crate::config::RouteConfig::default()
            }],
        };
        if let Some(problem) = probe.validate(&|_| true).into_iter().next() {
            return Err(ApiError::BadRequest(problem));
        }
    }
    text_field("author", &new.author, 128)?;
    text_field("comment", &new.comment, 2000)?;
    let starts_at = match &new.starts_at {
        Some(s) => parse_instant("starts_at", s)?,
        None => now,
    };
    let ends_at = match (&new.ends_at, &new.duration) {
        (Some(e), None) => parse_instant("ends_at", e)?,
        (None, Some(d)) => {
            let d = humantime::parse_duration(d)
                .map_err(|e| ApiError::BadRequest(format!("`duration` {d:?}: {e}")))?;
            starts_at.saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        }
        _ => {
            return Err(ApiError::BadRequest(
                "give exactly one of `ends_at` and `duration`".to_owned(),
            ))
        }
    };
    if ends_at <= starts_at || ends_at <= now {
        return Err(ApiError::BadRequest(
            "the silence must end after it starts and in the future".to_owned(),
        ));
    }
    if ends_at - starts_at > MAX_SILENCE_SECS {
        return Err(ApiError::BadRequest(
            "a silence may last at most 90 days".to_owned(),
        ));
    }
    let matchers = serde_json::to_string(&new.matchers).map_err(anyhow::Error::from)?;
    let id = state
        .store
        .create_silence(&matchers, starts_at, ends_at, &new.author, &new.comment)
        .await?;
    tracing::info!(message = "Silence created.", id, author = %new.author, %matchers);
    state
        .store
        .audit(
            &caller.name,
            "silence.create",
            &id.to_string(),
            &serde_json::json!({"matchers": new.matchers, "starts_at": starts_at, "ends_at": ends_at, "author": new.author, "comment": new.comment}),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(SilenceDto {
            id,
            matchers: serde_json::to_value(&new.matchers).map_err(anyhow::Error::from)?,
            starts_at: iso(starts_at),
            ends_at: iso(ends_at),
            author: new.author,
            comment: new.comment,
            active: starts_at <= now,
        }),
    ))
}

async fn list_silences(State(state): State<AppState>) -> ApiResult<Json<Vec<SilenceDto>>> {
    let now = state.clock.now().timestamp();
    // Active and upcoming ones, plus those that ended in the last day.
    let rows = state.store.silences(now - 86_400).await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| SilenceDto {
                id: r.id,
                matchers: serde_json::from_str(&r.matchers).unwrap_or(serde_json::Value::Null),
                starts_at: iso(r.starts_at),
                ends_at: iso(r.ends_at),
                active: r.starts_at <= now && now < r.ends_at,
                author: r.author,
                comment: r.comment,
            })
            .collect(),
    ))
}

async fn expire_silence(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = parse_id("silence", &id)?;
    let now = state.clock.now().timestamp();
    if state.store.expire_silence(id, now).await? {
        tracing::info!(message = "Silence expired.", id);
        state
            .store
            .audit(
                &caller.name,
                "silence.expire",
                &id.to_string(),
                &serde_json::json!({}),
            )
            .await?;
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("no silence {id}")))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BacktestBody {
    /// Weeks to report on (1–52, default 4).
    weeks: Option<u32>,
    /// `low | medium | high` or a number in (0, 1) (default: the model's).
    sensitivity: Option<serde_json::Value>,
    /// `down | up | both` (default: the model's).
    direction: Option<String>,
    /// Minimum volume (default: the model's).
    min_volume: Option<f64>,
}

#[derive(Serialize)]
pub(super) struct BacktestDto {
    kpi: String,
    from: String,
    to: String,
    sensitivity: f64,
    alerts_per_week: Vec<usize>,
    mean_alerts_per_week: f64,
    alerts: Vec<serde_json::Value>,
    flags: Vec<serde_json::Value>,
}

/// Replay stored history at another setting: the alerts it would have fired, per week.
async fn backtest(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<BacktestBody>, JsonRejection>,
) -> ApiResult<Json<BacktestDto>> {
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
    let sensitivity = match body.sensitivity {
        None => spec.sensitivity,
        Some(serde_json::Value::String(s)) => s
            .parse()
            .map_err(|e: crate::kpi::ParseError| ApiError::BadRequest(e.to_string()))?,
        Some(serde_json::Value::Number(n)) => crate::kpi::Sensitivity::new(n.as_f64().unwrap_or(f64::NAN))
            .map_err(|e| ApiError::BadRequest(e.to_string()))?,
        Some(_) => {
            return Err(ApiError::BadRequest(
                "`sensitivity` must be low | medium | high or a number".to_owned(),
            ))
        }
    };
    let direction = body
        .direction
        .map(|d| {
            d.parse()
                .map_err(|e: crate::kpi::ParseError| ApiError::BadRequest(e.to_string()))
        })
        .transpose()?;
    if body.min_volume.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
        return Err(ApiError::BadRequest(
            "`min_volume` must be a number >= 0".to_owned(),
        ));
    }
    let step = spec.interval.secs_i64();
    let to = state.clock.now().timestamp().div_euclid(step) * step;
    let from = to - i64::from(weeks) * 7 * 86_400 - 28 * 86_400;
    let mut history = BTreeMap::new();
    for series in state.store.series_of(&id).await? {
        history.insert(series.dims, state.store.observations(series.id, from, to).await?);
    }
    let opts = crate::backtest::BacktestOptions {
        weeks,
        sensitivity,
        direction,
        min_volume: body.min_volume,
    };
    let report = crate::backtest::run(&spec, &history, opts, to, 3).map_err(anyhow::Error::from)?;
    Ok(Json(backtest_dto(id, &report)))
}

fn backtest_dto(kpi: String, report: &crate::backtest::BacktestReport) -> BacktestDto {
    let dims = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap_or(serde_json::Value::Null);
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
            .map(|a| {
                serde_json::json!({
                    "series": dims(&a.series),
                    "started": a.started.to_rfc3339(),
                    "resolved": a.resolved.map(|r| r.to_rfc3339()),
                    "flagged_buckets": a.buckets,
                })
            })
            .collect(),
        flags: report
            .flags
            .iter()
            .map(|f| {
                serde_json::json!({
                    "series": dims(&f.series),
                    "ts": f.ts.to_rfc3339(),
                    "value": f.value,
                    "expected": f.expected,
                    "lower": f.lower,
                    "upper": f.upper,
                    "score": f.score,
                })
            })
            .collect(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackBody {
    /// `not_anomaly` (a false positive: learn it as normal), `new_normal` (the level changed
    /// for good: re-baseline there) or `confirmed`.
    kind: String,
    #[serde(default)]
    comment: String,
}

/// Feedback on an anomaly; it is replayed into the detector on the series' next run.
async fn feedback(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Json<FeedbackBody>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let id = parse_id("anomaly", &id)?;
    let Json(body) = body?;
    if !["not_anomaly", "new_normal", "confirmed"].contains(&body.kind.as_str()) {
        return Err(ApiError::BadRequest(format!(
            "`kind` {:?}: expected not_anomaly | new_normal | confirmed",
            body.kind
        )));
    }
    if body.comment.len() > 2000 {
        return Err(ApiError::BadRequest(
            "`comment` is longer than 2000 characters".to_owned(),
        ));
    }
    let (series, ts, kpi) = state
        .store
        .anomaly_bucket(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no anomaly {id}")))?;
    state
        .store
        .save_feedback(series, ts, &body.kind, &caller.name, &body.comment)
        .await?;
    state
        .store
        .audit(
            &caller.name,
            "anomaly.feedback",
            &id.to_string(),
            &serde_json::json!({"kpi": kpi, "ts": ts, "kind": body.kind, "comment": body.comment}),
        )
        .await?;
    tracing::info!(message = "Anomaly feedback recorded.", anomaly = id, kind = %body.kind, by = %caller.name);
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_openapi_document_lists_every_api_route() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).expect("valid JSON");
        assert_eq!(doc["openapi"], "3.0.3");
        let paths = doc["paths"].as_object().expect("paths");
        let source = include_str!("mod.rs");
        let route = regex_lite::Regex::new(r#"\.route\(\s*"(/api/[^"]+)""#).expect("regex");
        let routes: Vec<&str> = route
            .captures_iter(source)
            .filter_map(|c| c.get(1))
            .map(|m| m.as_str())
            .collect();
        assert!(routes.len() >= 10, "{routes:?}");
        for r in routes {
            assert!(paths.contains_key(r), "{r} is routed but not in openapi.json");
        }
    }
}
