//! `GET/POST /api/tokens`, `DELETE /api/tokens/{id}`: API tokens kept in the state store
//! (admin only, audited). A new token is shown once; only its SHA-256 is stored.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{iso, new_token, positive_id, text_field, ApiError, ApiResult, AppState, Caller, ErrorBody};
use crate::store::TokenRow;

/// What a token may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum RoleDto {
    /// Read everything.
    Viewer,
    /// Also register and tune KPIs, acknowledge, silence.
    Editor,
    /// Also manage tokens and read the audit log.
    Admin,
}

impl RoleDto {
    fn as_str(self) -> &'static str {
        match self {
            RoleDto::Viewer => "viewer",
            RoleDto::Editor => "editor",
            RoleDto::Admin => "admin",
        }
    }
}

/// A new token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewToken {
    /// Who will hold it (1–128 printable characters; unique among active tokens).
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    name: String,
    role: RoleDto,
}

/// A stored token (never the token itself).
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct TokenDto {
    id: i64,
    name: String,
    /// viewer | editor | admin.
    role: String,
    /// Who made it.
    created_by: String,
    created_at: Option<String>,
    /// Last request made with it (to the minute).
    last_used_at: Option<String>,
    /// Null while active.
    revoked_at: Option<String>,
}

impl From<TokenRow> for TokenDto {
    fn from(t: TokenRow) -> Self {
        TokenDto {
            id: t.id,
            name: t.name,
            role: t.role,
            created_by: t.created_by,
            created_at: iso(t.created_at),
            last_used_at: t.last_used_at.and_then(iso),
            revoked_at: t.revoked_at.and_then(iso),
        }
    }
}

/// A token just made: the only time the token itself is shown.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct CreatedTokenDto {
    /// Give this to its holder now; it cannot be shown again.
    token: String,
    #[serde(flatten)]
    stored: TokenDto,
}

/// Every token in the state store (tokens from the config file are not listed).
#[utoipa::path(
    get,
    path = "/api/tokens",
    tag = "tokens",
    responses(
        (status = 200, description = "Tokens, active ones first", body = Vec<TokenDto>),
        (status = 401, description = "A token is needed", body = ErrorBody),
        (status = 403, description = "The admin role is needed", body = ErrorBody),
        (status = 500, description = "The state store failed", body = ErrorBody),
    )
)]
pub(super) async fn list_tokens(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Vec<TokenDto>>> {
    caller.require_admin("listing tokens")?;
    Ok(Json(
        state
            .store
            .tokens()
            .await?
            .into_iter()
            .map(TokenDto::from)
            .collect(),
    ))
}

/// Make a token: it is returned once, and only its SHA-256 is kept.
#[utoipa::path(
    post,
    path = "/api/tokens",
    tag = "tokens",
    request_body = NewToken,
    responses(
        (status = 201, description = "The new token, shown once", body = CreatedTokenDto),
        (status = 400, description = "The body does not match the schema", body = ErrorBody),
        (status = 401, description = "A token is needed", body = ErrorBody),
        (status = 403, description = "The admin role is needed", body = ErrorBody),
        (status = 409, description = "An active token has that name", body = ErrorBody),
        (status = 413, description = "The body is larger than 256 KiB", body = ErrorBody),
        (status = 500, description = "The state store failed", body = ErrorBody),
    )
)]
pub(super) async fn create_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<NewToken>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<CreatedTokenDto>)> {
    caller.require_admin("making tokens")?;
    let Json(new) = body?;
    text_field("name", &new.name, 128)?;
    let (token, hash) = new_token();
    let role = new.role.as_str();
    let Some(id) = state
        .store
        .create_token(&new.name, role, &hash, &caller.name)
        .await?
    else {
        return Err(ApiError::Conflict(format!(
            "an active token is named {:?}; revoke it first or pick another name",
            new.name
        )));
    };
    state
        .store
        .audit(
            &caller.name,
            "token.create",
            &id.to_string(),
            &serde_json::json!({"name": new.name, "role": role}),
        )
        .await?;
    tracing::info!(message = "API token created.", id, name = %new.name, role, by = %caller.name);
    let stored = state
        .store
        .tokens()
        .await?
        .into_iter()
        .find(|t| t.id == id)
        .ok_or_else(|| anyhow::anyhow!("token {id} vanished after it was made"))?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedTokenDto {
            token,
            stored: stored.into(),
        }),
    ))
}

/// Revoke a token: requests with it are refused from now on.
#[utoipa::path(
    delete,
    path = "/api/tokens/{id}",
    tag = "tokens",
    params(("id" = i64, Path, description = "Token id", minimum = 1)),
    responses(
        (status = 204, description = "Revoked"),
        (status = 400, description = "A bad id", body = ErrorBody),
        (status = 401, description = "A token is needed", body = ErrorBody),
        (status = 403, description = "The admin role is needed", body = ErrorBody),
        (status = 404, description = "No such active token", body = ErrorBody),
        (status = 500, description = "The state store failed", body = ErrorBody),
    )
)]
pub(super) async fn revoke_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<i64>, PathRejection>,
) -> ApiResult<StatusCode> {
    caller.require_admin("revoking tokens")?;
    let Path(id) = path?;
    let id = positive_id("token", id)?;
    let Some(t) = state.store.revoke_token(id).await? else {
        return Err(ApiError::NotFound(format!("no active token {id}")));
    };
    state
        .store
        .audit(
            &caller.name,
            "token.revoke",
            &id.to_string(),
            &serde_json::json!({"name": t.name, "role": t.role}),
        )
        .await?;
    tracing::info!(message = "API token revoked.", id, name = %t.name, by = %caller.name);
    Ok(StatusCode::NO_CONTENT)
}
