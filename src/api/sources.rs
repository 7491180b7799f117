//! `GET /api/sources`: the configured sources' names and kinds (never their URLs or
//! credentials), for the registration form's dropdown and query templates.

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiResult, AppState, ErrorBody};

/// A configured source.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct SourceDto {
    /// Its name in the config (what a model's `source` names).
    name: String,
    /// postgres | mysql | sqlite | prometheus | influxdb.
    #[schema(pattern = "^(postgres|mysql|sqlite|prometheus|influxdb)$")]
    kind: String,
}

/// The sources KPIs can read, by name.
#[utoipa::path(
    get,
    path = "/api/sources",
    tag = "kpis",
    responses(
        (status = 200, description = "Sources", body = Vec<SourceDto>),
        (status = 401, description = "A token is needed", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    )
)]
pub(super) async fn list_sources(State(state): State<AppState>) -> ApiResult<Json<Vec<SourceDto>>> {
    let mut out: Vec<SourceDto> = state
        .sources
        .iter()
        .map(|s| SourceDto {
            name: s.name().to_owned(),
            kind: s.kind().to_string(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(out))
}
