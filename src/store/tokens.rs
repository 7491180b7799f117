//! API tokens kept in the state store (made with `kpiwatch token create` or
//! `POST /api/tokens`): only their SHA-256 is stored, with a name, role, creator and last use.

use serde::Serialize;
use sqlx::FromRow;

use super::{now_secs, Pool, Result, Store};

/// A stored API token (never the token itself).
#[derive(Debug, Clone, PartialEq, FromRow, Serialize)]
pub struct TokenRow {
    /// Id.
    pub id: i64,
    /// Who holds it.
    pub name: String,
    /// viewer | editor | admin.
    pub role: String,
    /// Hex SHA-256 of the token.
    pub sha256: String,
    /// Who made it.
    pub created_by: String,
    /// When, unix seconds.
    pub created_at: i64,
    /// Last request made with it (updated at most once a minute).
    pub last_used_at: Option<i64>,
    /// When it was revoked.
    pub revoked_at: Option<i64>,
}

const TOKEN_COLUMNS: &str = "id, name, role, sha256, created_by, created_at, last_used_at, revoked_at";

impl Store {
    /// Store a new token's hash; `None` when an active token already has this name.
    pub async fn create_token(&self, name: &str, role: &str, sha256: &str, by: &str) -> Result<Option<i64>> {
        run!(self, |pool| {
            let row = sqlx::query_as::<_, (i64,)>(
                "INSERT INTO api_tokens (name, role, sha256, created_by, created_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT DO NOTHING RETURNING id",
            )
            .bind(name)
            .bind(role)
            .bind(sha256)
            .bind(by)
            .bind(now_secs())
            .fetch_optional(pool)
            .await?;
            Ok(row.map(|r| r.0))
        })
    }

    /// Every token, active ones first, newest first.
    pub async fn tokens(&self) -> Result<Vec<TokenRow>> {
        run!(self, |pool| {
            Ok(sqlx::query_as::<_, TokenRow>(&format!(
                "SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY (revoked_at IS NULL) DESC, id DESC"
            ))
            .fetch_all(pool)
            .await?)
        })
    }

    /// Whether any token is active (then the API needs one).
    pub async fn any_active_token(&self) -> Result<bool> {
        run!(self, |pool| {
            let row: Option<(i64,)> =
                sqlx::query_as("SELECT id FROM api_tokens WHERE revoked_at IS NULL LIMIT 1")
                    .fetch_optional(pool)
                    .await?;
            Ok(row.is_some())
        })
    }

    /// The active token with this hash, noting its use (at most once a minute).
    pub async fn use_token(&self, sha256: &str) -> Result<Option<TokenRow>> {
        let now = now_secs();
        run!(self, |pool| {
            let row = sqlx::query_as::<_, TokenRow>(&format!(
                "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE sha256 = $1 AND revoked_at IS NULL"
            ))
            .bind(sha256)
            .fetch_optional(pool)
            .await?;
            if let Some(t) = &row {
                if t.last_used_at.is_none_or(|at| at < now - 60) {
                    sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2")
                        .bind(now)
                        .bind(t.id)
                        .execute(pool)
                        .await?;
                }
            }
            Ok(row)
        })
    }

    /// Revoke an active token by id; returns it when it was active.
    pub async fn revoke_token(&self, id: i64) -> Result<Option<TokenRow>> {
        run!(self, |pool| {
            Ok(sqlx::query_as::<_, TokenRow>(&format!(
                "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL RETURNING {TOKEN_COLUMNS}"
            ))
            .bind(now_secs())
            .bind(id)
            .fetch_optional(pool)
            .await?)
        })
    }
}
