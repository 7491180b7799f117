//! The audit log of changes made through the API and UI.

use serde::Serialize;
use sqlx::FromRow;

use super::{now_secs, Pool, Result, Store};

/// One audit log entry.
#[derive(Debug, Clone, PartialEq, FromRow, Serialize)]
pub struct AuditRow {
    /// Id.
    pub id: i64,
    /// When, unix seconds.
    pub at: i64,
    /// Who (token name).
    pub actor: String,
    /// What.
    pub action: String,
    /// On what.
    pub target: String,
    /// Details (JSON).
    pub detail: String,
}

impl Store {
    /// Record a write in the audit log.
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: &serde_json::Value,
    ) -> Result<()> {
        run!(self, |pool| {
            sqlx::query(
                "INSERT INTO audit_log (at, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(now_secs())
            .bind(actor)
            .bind(action)
            .bind(target)
            .bind(detail.to_string())
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// The newest audit entries.
    pub async fn audit_log(&self, limit: i64) -> Result<Vec<AuditRow>> {
        run!(self, |pool| {
            Ok(sqlx::query_as::<_, AuditRow>(
                "SELECT id, at, actor, action, target, detail FROM audit_log ORDER BY id DESC LIMIT $1",
            )
            .bind(limit)
            .fetch_all(pool)
            .await?)
        })
    }
}
