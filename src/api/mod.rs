//! The HTTP API (axum): health, metrics, the JSON API under `/api/`, the signed links in
//! messages and the web UI.
//!
//! One router, one file per resource: [`kpis`], [`series`], [`anomalies`], [`alerts`],
//! [`silences`], [`backtest`], [`registration`], [`tokens`] and [`audit`] hold the `/api/*`
//! handlers and their DTOs; [`links`] the signed acknowledge/silence pages; [`health`]
//! `/healthz`, `/readyz` and `/metrics`; [`ui`] the web UI's files and the API reference page.
//!
//! The OpenAPI 3.1 document (`/api/openapi.json`) is generated from the handlers and DTOs
//! (utoipa): every `/api/*` route is registered through `utoipa_axum::routes!`, so a route
//! cannot exist without its documentation. [`router`] builds the whole `Router` from an
//! [`AppState`], so tests can drive it without a socket. Handlers read through `store`; none
//! run KPI SQL. Errors go through [`ApiError`]: 4xx bodies say what is wrong; 5xx bodies are
//! opaque and the cause is logged once. The split between 400 and 422 is a contract the API
//! fuzz test holds us to: **400** means the request does not match the documented schema
//! (bad JSON, a wrong type, a number out of its documented range, an unknown field); **422**
//! means it matches the schema but asks for something invalid (`from` after `to`, a source
//! that is not configured, a query that fails, a silence that ends in the past).

mod alerts;
mod anomalies;
mod audit;
mod auth;
mod backtest;
mod breakdown;
mod events;
mod health;
mod kpis;
mod links;
mod registration;
mod series;
mod series_csv;
mod silences;
mod sources;
mod tokens;
mod ui;

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::alerting::LinkSigner;
use crate::clock::Clock;
use crate::kpi::Registry;
use crate::store::Store;
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
    /// API tokens from the config (hashed); tokens made through the CLI or API live in the
    /// state store. With neither, the API is open.
    pub tokens: Arc<Vec<crate::config::TokenConfig>>,
    /// KPI sources, for testing a draft KPI's query (through `pipeline`).
    pub sources: crate::sources::SourceRegistry,
    /// The service's warm-up and recovery settings, which backtests replay with.
    pub replay: crate::backtest::Replay,
}

pub use auth::{hash_token, new_token, Caller};

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

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        ApiError::BadRequest(e.body_text())
    }
}

/// Every error response: what went wrong, safe to show (5xx say only "internal error").
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// What is wrong with the request.
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

/// The document's fixed parts; the paths and schemas come from the handlers.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "kpiwatch API",
        description = "Register KPI queries, read their series, anomalies and alerts, tune, silence and acknowledge. \
                       Every request needs `Authorization: Bearer <token>` once any API token exists; \
                       reads need the viewer role, writes editor, tokens and the audit log admin.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    security(("token" = [])),
    tags(
        (name = "kpis", description = "KPIs: list, register, tune, retire"),
        (name = "series", description = "Buckets with their expected value and band"),
        (name = "anomalies", description = "Anomalous buckets and feedback on them"),
        (name = "alerts", description = "Incidents and acknowledgement"),
        (name = "silences", description = "Silences"),
        (name = "backtest", description = "What a setting would have fired"),
        (name = "events", description = "Events and holidays: buckets neither learned nor alerted"),
        (name = "tokens", description = "API tokens (admin)"),
        (name = "audit", description = "The audit log (admin)"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API token (`kpiwatch token create`)."))
                    .build(),
            ),
        );
    }
}

/// The `/api/*` routes with their OpenAPI documentation.
fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(kpis::list_kpis, registration::register))
        .routes(routes!(registration::update, registration::retire))
        .routes(routes!(registration::test_query))
        .routes(routes!(registration::backtest_draft))
        .routes(routes!(series::series))
        .routes(routes!(breakdown::breakdown))
        .routes(routes!(backtest::backtest))
        .routes(routes!(anomalies::anomalies))
        .routes(routes!(anomalies::feedback))
        .routes(routes!(alerts::alerts))
        .routes(routes!(alerts::ack_alert))
        .routes(routes!(silences::list_silences, silences::create_silence))
        .routes(routes!(silences::expire_silence))
        .routes(routes!(events::list_events, events::create_event))
        .routes(routes!(events::import_events))
        .routes(routes!(events::delete_event))
        .routes(routes!(tokens::list_tokens, tokens::create_token))
        .routes(routes!(tokens::revoke_token))
        .routes(routes!(audit::audit))
        .routes(routes!(sources::list_sources))
}

/// The API's OpenAPI 3.1 document, generated from the handlers.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_routes().into_openapi()
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    let (api, doc) = api_routes().split_for_parts();
    let doc_json = Arc::new(doc.to_pretty_json().unwrap_or_else(|_| "{}".to_owned()));
    Router::new()
        .merge(api)
        .merge(health::routes())
        .merge(links::routes())
        .merge(ui::routes())
        .route(
            "/api/openapi.json",
            get(move || {
                let doc = Arc::clone(&doc_json);
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        doc.as_str().to_owned(),
                    )
                }
            }),
        )
        .fallback(|| async { ApiError::NotFound("no such endpoint".to_owned()) })
        .layer(axum::middleware::from_fn(json_objects_only))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Requests larger than this are refused (413) before a handler sees them.
const MAX_BODY_BYTES: usize = 256 * 1024;

/// Every JSON request body of the API is an object. serde would also read a struct from an
/// array of its fields in order (`[null, null]`), which no documented schema allows: such
/// bodies are refused with 400 before any handler sees them.
async fn json_objects_only(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<Response, ApiError> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    let has_body = matches!(
        *req.method(),
        axum::http::Method::POST | axum::http::Method::PUT | axum::http::Method::PATCH
    );
    if !(is_json && has_body && req.uri().path().starts_with("/api/")) {
        return Ok(next.run(req).await);
    }
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::TooLarge(format!("the body is larger than {} KiB", MAX_BODY_BYTES / 1024)))?;
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if matches!(first, Some(b) if *b != b'{') {
        return Err(ApiError::BadRequest(
            "the request body must be a JSON object".to_owned(),
        ));
    }
    Ok(next
        .run(axum::extract::Request::from_parts(
            parts,
            axum::body::Body::from(bytes),
        ))
        .await)
}

/// RFC 3339 text of a unix time.
fn iso(secs: i64) -> Option<String> {
    chrono::DateTime::from_timestamp(secs, 0).map(|t| t.to_rfc3339())
}

/// A point in time given as RFC 3339 or unix seconds (see [`instant_schema`]): 400 when it is
/// neither, 422 when it has the shape of a date-time that does not exist (`2026-02-30T…`).
fn parse_instant(name: &str, s: &str) -> ApiResult<i64> {
    let message = || format!("`{name}` must be RFC 3339 or unix seconds, got {s:?}");
    if !s.is_empty() && s.len() <= 12 && s.bytes().all(|b| b.is_ascii_digit()) {
        let secs: i64 = s.parse().map_err(|_| ApiError::BadRequest(message()))?;
        return chrono::DateTime::from_timestamp(secs, 0)
            .map(|t| t.timestamp())
            .ok_or_else(|| ApiError::Unprocessable(message()));
    }
    let looks_like_a_date = s.len() >= 10
        && s.as_bytes()[..10].iter().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                *b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp())
        .map_err(|_| {
            if looks_like_a_date {
                ApiError::Unprocessable(message())
            } else {
                ApiError::BadRequest(message())
            }
        })
}

/// What [`parse_instant`] accepts, for the OpenAPI document: an RFC 3339 date-time, or unix
/// seconds (1–12 digits).
fn instant_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[0-9]{1,12}$")),
        )
        .description(Some("RFC 3339 date-time or unix seconds"))
        .into()
}

/// Printable text of 1–`max` characters: no control characters, not only white space. The
/// OpenAPI document says the same with `TEXT_PATTERN` and `maxLength`.
fn text_field(name: &str, value: &str, max: usize) -> ApiResult<()> {
    let printable = !value.chars().any(char::is_control) && value.chars().any(|c| !c.is_whitespace());
    if !printable || value.chars().count() > max {
        return Err(ApiError::BadRequest(format!(
            "`{name}` must be 1-{max} characters of printable text"
        )));
    }
    Ok(())
}

/// A numeric id from a path, or a 400 naming it.
fn positive_id(what: &str, id: i64) -> ApiResult<i64> {
    if id < 1 {
        return Err(ApiError::BadRequest(format!(
            "{what} id must be a positive integer, got {id}"
        )));
    }
    Ok(id)
}

/// Integers as JSON Schema means them: `18` and `18.0` are the same integer (schemathesis and
/// some JSON encoders send the latter). In bodies and query strings.
pub(crate) mod whole {
    use serde::de::{Deserializer, Error, Visitor};

    struct Whole;

    impl<'de> Visitor<'de> for Whole {
        type Value = Option<i128>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an integer")
        }

        fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(Whole)
        }

        fn visit_i64<E: Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(i128::from(v)))
        }

        fn visit_u64<E: Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(i128::from(v)))
        }

        fn visit_f64<E: Error>(self, v: f64) -> Result<Self::Value, E> {
            if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e18 {
                Ok(Some(v as i128))
            } else {
                Err(E::custom(format!("{v} is not an integer")))
            }
        }

        fn visit_str<E: Error>(self, v: &str) -> Result<Self::Value, E> {
            if let Ok(n) = v.parse::<i128>() {
                return Ok(Some(n));
            }
            match v.parse::<f64>() {
                Ok(f) => self.visit_f64(f),
                Err(_) => Err(E::custom(format!("{v:?} is not an integer"))),
            }
        }
    }

    /// An optional integer that may be written `18.0`; out of the target type's range is an error.
    pub(crate) fn opt<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<i128>,
    {
        match d.deserialize_any(Whole)? {
            None => Ok(None),
            Some(n) => T::try_from(n)
                .map(Some)
                .map_err(|_| D::Error::custom(format!("{n} is out of range"))),
        }
    }
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The dimension values of a series as JSON (an object; `{}` for none).
fn dims_json(dims: &str) -> serde_json::Value {
    serde_json::from_str(dims).unwrap_or_else(|_| serde_json::json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_documents_the_statuses_the_middleware_and_extractors_can_return() {
        let doc = serde_json::to_value(openapi()).expect("JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().expect("paths");
        let mut operations = 0;
        for (path, item) in paths {
            assert!(path.starts_with("/api/"), "{path}");
            for (method, op) in item.as_object().expect("item") {
                let has = |code: &str| op["responses"].get(code).is_some();
                let what = format!("{method} {path}");
                // The token middleware: 401 without a valid token, 500 if the store fails.
                assert!(has("401") && has("500"), "{what}");
                // Writes (POST, PATCH, DELETE) need the editor role.
                if method != "get" {
                    assert!(has("403"), "{what}");
                }
                // A body can be malformed (400) or too large (413).
                if op.get("requestBody").is_some() {
                    assert!(has("400") && has("413"), "{what}");
                }
                // Numeric ids in paths can be malformed.
                let numeric_id = op["parameters"].as_array().is_some_and(|ps| {
                    ps.iter()
                        .any(|p| p["in"] == "path" && p["schema"]["type"] == "integer")
                });
                if numeric_id {
                    assert!(has("400") && has("404"), "{what}");
                }
                operations += 1;
            }
        }
        assert_eq!(operations, 25, "{:?}", paths.keys().collect::<Vec<_>>());
    }

    #[test]
    fn instants_parse_as_unix_seconds_or_rfc_3339_and_nothing_else() {
        assert_eq!(parse_instant("from", "0").ok(), Some(0));
        assert_eq!(parse_instant("from", "1700000000").ok(), Some(1_700_000_000));
        assert_eq!(
            parse_instant("from", "2026-01-02T03:04:05Z").ok(),
            Some(1_767_323_045)
        );
        for bad in [
            "",
            "-5",
            "3.7e31",
            "99999999999999",
            "yesterday",
            "2026-13-40T00:00:00Z",
        ] {
            assert!(parse_instant("from", bad).is_err(), "{bad:?}");
        }
    }
}
