//! The web UI: static files compiled into the binary (no separate server, nothing fetched
//! from a CDN). The pages talk to the JSON API with the user's token. `/api/docs` is the API
//! reference: vendored Redoc rendering the generated `/api/openapi.json`.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::AppState;

const INDEX: &str = include_str!("../../ui/index.html");
const APP_JS: &str = include_str!("../../ui/app.js");
const APP_CSS: &str = include_str!("../../ui/app.css");
const UPLOT_JS: &str = include_str!("../../ui/vendor/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../../ui/vendor/uPlot.min.css");
const API_HTML: &str = include_str!("../../ui/api.html");
const REDOC_JS: &str = include_str!("../../ui/vendor/redoc.standalone.js");

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}

/// Routes for the UI's files.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route(
            "/vendor/uPlot.iife.min.js",
            get(|| async { asset("text/javascript; charset=utf-8", UPLOT_JS) }),
        )
        .route(
            "/vendor/uPlot.min.css",
            get(|| async { asset("text/css; charset=utf-8", UPLOT_CSS) }),
        )
        .route(
            "/api/docs",
            get(|| async { asset("text/html; charset=utf-8", API_HTML) }),
        )
        .route(
            "/vendor/redoc.standalone.js",
            get(|| async { asset("text/javascript; charset=utf-8", REDOC_JS) }),
        )
}
