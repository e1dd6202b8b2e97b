//! Bearer tokens: `Authorization: Bearer TOKEN` maps to a [`User`]; with
//! no tokens configured every caller is the admin `local` (and the config
//! refuses a non-loopback address).

use super::AppState;
use super::error::ApiError;
use crate::config::Config;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::Arc;

/// The caller, resolved from its bearer token.
#[derive(Clone, Debug)]
pub struct User {
    /// The user name; executions it launches are owned by it.
    pub name: String,
    /// Sees everyone's executions.
    pub admin: bool,
}

/// The configured tokens, by token.
pub(super) struct Tokens(HashMap<String, User>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets themselves.
        f.debug_struct("Tokens")
            .field("count", &self.0.len())
            .finish()
    }
}

impl Tokens {
    pub(super) fn of(config: &Config) -> Self {
        Self(
            config
                .auth
                .tokens
                .iter()
                .map(|t| {
                    let user = User {
                        name: t.user.clone(),
                        admin: t.admin,
                    };
                    (t.token.clone(), user)
                })
                .collect(),
        )
    }

    /// The caller a request's `Authorization: Bearer TOKEN` names; with no
    /// tokens configured, the admin `local`.
    pub(super) fn caller(&self, headers: &header::HeaderMap) -> Option<User> {
        if self.0.is_empty() {
            return Some(User {
                name: "local".into(),
                admin: true,
            });
        }
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .and_then(|(_, token)| self.0.get(token.trim()).cloned())
    }
}

/// Resolves the caller, or answers 401.
pub(super) async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    match state.tokens.caller(request.headers()) {
        Some(user) => {
            request.extensions_mut().insert(user);
            next.run(request).await
        }
        None => unauthorized(),
    }
}

/// The 401 of a request without a known token.
pub(super) fn unauthorized() -> Response {
    no_token().into_response()
}

/// The error of a request without a known token (401).
pub(super) fn no_token() -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "missing or unknown bearer token")
}

impl<S: Send + Sync> FromRequestParts<S> for User {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<User>()
            .cloned()
            .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "not authenticated"))
    }
}
