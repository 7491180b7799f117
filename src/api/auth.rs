//! Bearer-token authentication and roles for `/api/*`.
//!
//! Tokens come from two places: the config (`[[api.tokens]]`, SHA-256 hashes) and the state
//! store (made with `kpiwatch token create` or `POST /api/tokens`, also kept as hashes, with
//! a name, role, creator and last use). A request's token is hashed; config tokens are
//! compared in constant time, store tokens looked up by hash. Reads need `viewer`, writes
//! (`POST`, `PATCH`, `PUT`, `DELETE`, backtests included) need `editor`; tokens and the audit
//! log need `admin`. With no token anywhere the API is open and every caller is `anonymous`
//! with the admin role. Health, metrics, the signed links in messages, the OpenAPI document
//! and the web UI's files are outside the check and need no token.

use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::{ApiError, AppState};
use crate::config::{Role, TokenConfig};

/// Who is calling, attached to every `/api/*` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name (`anonymous` when the API is open).
    pub name: String,
    /// What it may do.
    pub role: Role,
}

/// Hex SHA-256 of a token, as configured.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A fresh random token (`kpw_` + 48 hex digits) and its hash.
pub fn new_token() -> (String, String) {
    let bytes: [u8; 24] = rand::random();
    let token = format!("kpw_{}", hex::encode(bytes));
    let hash = hash_token(&token);
    (token, hash)
}

fn find<'a>(tokens: &'a [TokenConfig], presented: &str) -> Option<&'a TokenConfig> {
    let hash = hash_token(presented);
    // Compare against every token without stopping early, in constant time per token.
    let mut found = None;
    for t in tokens {
        let same = t.sha256.len() == hash.len()
            && t.sha256
                .bytes()
                .zip(hash.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if same {
            found = Some(t);
        }
    }
    found
}

/// Who presents `presented` (a config token, else a store token), if anyone.
async fn caller_of(state: &AppState, presented: &str) -> Result<Option<Caller>, crate::store::Error> {
    if let Some(t) = find(&state.tokens, presented) {
        return Ok(Some(Caller {
            name: t.name.clone(),
            role: t.role,
        }));
    }
    let stored = state.store.use_token(&hash_token(presented)).await?;
    Ok(stored.and_then(|t| {
        let role = match t.role.as_str() {
            "viewer" => Role::Viewer,
            "editor" => Role::Editor,
            "admin" => Role::Admin,
            _ => return None,
        };
        Some(Caller { name: t.name, role })
    }))
}

/// The middleware.
pub(super) async fn require_token(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if !path.starts_with("/api/") || path == "/api/openapi.json" || path == "/api/docs" {
        return next.run(req).await;
    }
    let open = match state.store.any_active_token().await {
        Ok(any) => state.tokens.is_empty() && !any,
        Err(error) => return ApiError::Internal(error.into()).into_response(),
    };
    let caller = if open {
        Caller {
            name: "anonymous".to_owned(),
            role: Role::Admin,
        }
    } else {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|p| !p.is_empty());
        let found = match presented {
            Some(p) => match caller_of(&state, p).await {
                Ok(found) => found,
                Err(error) => return ApiError::Internal(error.into()).into_response(),
            },
            None => None,
        };
        match found {
            Some(caller) => caller,
            None => {
                return ApiError::Unauthorized(
                    "a valid API token is needed (Authorization: Bearer <token>)".to_owned(),
                )
                .into_response()
            }
        }
    };
    let writes = matches!(
        *req.method(),
        Method::POST | Method::PATCH | Method::PUT | Method::DELETE
    );
    if writes && caller.role < Role::Editor {
        return ApiError::Forbidden(format!("{} is a viewer; this needs the editor role", caller.name))
            .into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_by_their_hash() {
        let tokens = vec![TokenConfig {
            name: "ana".to_owned(),
            role: Role::Editor,
            sha256: hash_token("s3cret-token"),
        }];
        assert_eq!(
            find(&tokens, "s3cret-token").map(|t| t.name.as_str()),
            Some("ana")
        );
        assert!(find(&tokens, "s3cret-tokeN").is_none());
        assert!(find(&tokens, "").is_none());
    }
}
