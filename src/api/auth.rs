//! Bearer-token authentication and roles for `/api/*`.
//!
//! Tokens are configured as SHA-256 hashes (`[[api.tokens]]`); a request's token is hashed
//! and compared in constant time. Reads need `viewer`, writes (`POST`, `PATCH`, `PUT`,
//! `DELETE`) need `editor`; the audit log needs `admin`. With no tokens configured the API is
//! open and every caller is `anonymous` with the admin role. Backtests (a `POST` that only
//! reads) need `viewer`. Health, metrics, the signed
//! links in messages and the web UI's files are outside `/api/` and need no token.

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

/// The middleware.
pub(super) async fn require_token(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if !req.uri().path().starts_with("/api/") || req.uri().path() == "/api/openapi.json" {
        return next.run(req).await;
    }
    let caller = if state.tokens.is_empty() {
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
            .map(str::trim);
        match presented.and_then(|p| find(&state.tokens, p)) {
            Some(t) => Caller {
                name: t.name.clone(),
                role: t.role,
            },
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
