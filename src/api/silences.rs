//! `GET/POST /api/silences`, `DELETE /api/silences/{id}`.

use std::collections::BTreeMap;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    dims_json, iso, parse_instant, positive_id, text_field, ApiError, ApiResult, AppState, Caller, ErrorBody,
};

/// A new silence.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewSilence {
    /// Label matchers, all of which must hold: `value` (equal), `!value` (not equal) or
    /// `~regex` (matches the whole value); 1–20 of them.
    #[schema(schema_with = matchers_schema)]
    matchers: BTreeMap<String, String>,
    /// When it starts (default: now).
    #[schema(schema_with = super::instant_schema)]
    starts_at: Option<String>,
    /// When it ends; or give `duration` instead.
    #[schema(schema_with = super::instant_schema)]
    ends_at: Option<String>,
    /// How long it lasts, e.g. `2h`, `90m`; or give `ends_at` instead.
    #[schema(max_length = 64)]
    duration: Option<String>,
    /// Who silences (1–128 printable characters).
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    author: String,
    /// Why (1–2000 printable characters).
    #[schema(
        min_length = 1,
        max_length = 2000,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    comment: String,
}

/// A silence.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct SilenceDto {
    id: i64,
    /// Label matchers.
    matchers: BTreeMap<String, serde_json::Value>,
    starts_at: Option<String>,
    ends_at: Option<String>,
    author: String,
    comment: String,
    /// In force now.
    active: bool,
}

const MAX_SILENCE_SECS: i64 = 90 * 86_400;

/// 1–20 label matchers, each at most 256 characters.
fn matchers_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .min_properties(Some(1))
        .max_properties(Some(20))
        .additional_properties(Some(AdditionalProperties::RefOr(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(256))
                .into(),
        )))
        .description(Some("label → `value`, `!value` or `~regex`"))
        .into()
}

fn matcher_map(json: &str) -> BTreeMap<String, serde_json::Value> {
    match dims_json(json) {
        serde_json::Value::Object(map) => map.into_iter().collect(),
        _ => BTreeMap::new(),
    }
}

/// Create a silence: matching alerts are recorded but not sent until it ends.
#[utoipa::path(
    post,
    path = "/api/silences",
    tag = "silences",
    request_body = NewSilence,
    responses(
        (status = 201, description = "The new silence", body = SilenceDto),
        (status = 400, description = "The body does not match the schema", body = ErrorBody),
        (status = 401, description = "A token is needed", body = ErrorBody),
        (status = 403, description = "The token's role is too low (editor needed)", body = ErrorBody),
        (status = 413, description = "The body is larger than 256 KiB", body = ErrorBody),
        (status = 422, description = "An invalid matcher, label, time or duration", body = ErrorBody),
        (status = 500, description = "The state store failed", body = ErrorBody),
    )
)]
pub(super) async fn create_silence(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<NewSilence>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<SilenceDto>)> {
    let Json(new) = body?;
    let now = state.clock.now().timestamp();
    if new.matchers.is_empty() || new.matchers.len() > 20 {
        return Err(ApiError::BadRequest(
            "`matchers` needs 1-20 label matchers".to_owned(),
        ));
    }
    text_field("author", &new.author, 128)?;
    text_field("comment", &new.comment, 2000)?;
    let invalid = ApiError::Unprocessable;
    for (label, pattern) in &new.matchers {
        text_field("matchers label", label, 64).map_err(|e| invalid(e.to_string()))?;
        if pattern.chars().count() > 256 {
            return Err(invalid(format!(
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
            return Err(invalid(problem));
        }
    }
    let starts_at = match &new.starts_at {
        Some(s) => parse_instant("starts_at", s)?,
        None => now,
    };
    let ends_at = match (&new.ends_at, &new.duration) {
        (Some(e), None) => parse_instant("ends_at", e)?,
        (None, Some(d)) => {
            let d = humantime::parse_duration(d).map_err(|e| invalid(format!("`duration` {d:?}: {e}")))?;
            starts_at.saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        }
        _ => return Err(invalid("give exactly one of `ends_at` and `duration`".to_owned())),
    };
    if ends_at <= starts_at || ends_at <= now {
        return Err(invalid(
            "the silence must end after it starts and in the future".to_owned(),
        ));
    }
    if ends_at - starts_at > MAX_SILENCE_SECS {
        return Err(invalid("a silence may last at most 90 days".to_owned()));
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
            matchers: matcher_map(&matchers),
            starts_at: iso(starts_at),
            ends_at: iso(ends_at),
            author: new.author,
            comment: new.comment,
            active: starts_at <= now,
        }),
    ))
}

/// Active and upcoming silences, and those that ended in the last day.
#[utoipa::path(
    get,
    path = "/api/silences",
    tag = "silences",
    responses(
        (status = 200, description = "Silences", body = Vec<SilenceDto>),
        (status = 401, description = "A token is needed", body = ErrorBody),
        (status = 500, description = "The state store failed", body = ErrorBody),
    )
)]
pub(super) async fn list_silences(State(state): State<AppState>) -> ApiResult<Json<Vec<SilenceDto>>> {
    let now = state.clock.now().timestamp();
    let rows = state.store.silences(now - 86_400).await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| SilenceDto {
                id: r.id,
                matchers: matcher_map(&r.matchers),
                starts_at: iso(r.starts_at),
                ends_at: iso(r.ends_at),
                active: r.starts_at <= now && now < r.ends_at,
                author: r.author,
                comment: r.comment,
            })
            .collect(),
    ))
}

/// Expire a silence now.
#[utoipa::path(
    delete,
    path = "/api/silences/{id}",
    tag = "silences",
    params(("id" = i64, Path, description = "Silence id", minimum = 1)),
    responses(
        (status = 204, description = "Expired"),
        (status = 400, description = "A bad id", body = ErrorBody),
        (status = 401, description = "A token is needed", body = ErrorBody),
        (status = 403, description = "The token's role is too low (editor needed)", body = ErrorBody),
        (status = 404, description = "No such silence, or it ended already", body = ErrorBody),
        (status = 500, description = "The state store failed", body = ErrorBody),
    )
)]
pub(super) async fn expire_silence(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<i64>, PathRejection>,
) -> ApiResult<StatusCode> {
    let Path(id) = path?;
    let id = positive_id("silence", id)?;
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
