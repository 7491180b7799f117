//! `GET /api/audit`: every write through the API, newest first (admin).

use axum::extract::State;
use axum::{Extension, Json};
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, ApiResult, AppState, Caller, ErrorBody};

/// One write.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct AuditDto {
    id: i64,
    /// When, unix seconds.
    at: i64,
    /// The token's name (`e-mail link` for the signed links, `anonymous` when the API is open).
    actor: String,
    /// What, e.g. `kpi.register`, `silence.create`, `token.revoke`.
    action: String,
    /// On what.
    target: String,
    /// Details (JSON text).
    detail: String,
}

/// The newest 500 audit entries.
#[utoipa::path(
    get,
    path = "/api/audit",
    tag = "audit",
    responses(
        (status = 200, description = "Audit entries, newest first", body = Vec<AuditDto>),
        (status = 401, description = "A token is needed", body = ErrorBody),
        (status = 403, description = "The admin role is needed", body = ErrorBody),
        (status = 500, description = "The state store failed", body = ErrorBody),
    )
)]
pub(super) async fn audit(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Vec<AuditDto>>> {
    caller.require_admin("the audit log")?;
    let rows = state.store.audit_log(500).await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| AuditDto {
                id: r.id,
                at: r.at,
                actor: r.actor,
                action: r.action,
                target: r.target,
                detail: r.detail,
            })
            .collect(),
    ))
}

impl Caller {
    /// A 403 unless the caller is an admin.
    pub(super) fn require_admin(&self, what: &str) -> ApiResult<()> {
        if self.role < crate::config::Role::Admin {
            return Err(ApiError::Forbidden(format!("{what} needs the admin role")));
        }
        Ok(())
    }
}
