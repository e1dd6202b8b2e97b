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
use subtle::ConstantTimeEq;

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
            return Some(local());
        }
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .and_then(|(_, token)| self.user_of(token.trim()))
    }

    /// The user of `token`.
    pub(super) fn user_of(&self, token: &str) -> Option<User> {
        self.0.get(token).cloned()
    }

    /// Whether no token is configured (every caller is `local`).
    pub(super) fn none(&self) -> bool {
        self.0.is_empty()
    }
}

/// The admin every caller is when no token is configured.
fn local() -> User {
    User {
        name: "local".into(),
        admin: true,
    }
}

/// The panel's session cookie: the user's token, HttpOnly, SameSite=Strict.
pub(super) const SESSION_COOKIE: &str = "kodo_session";

/// The token in a request's session cookie.
pub(super) fn session_token(headers: &header::HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty())
}

/// The header a session's state-changing requests carry: see
/// [`kodo_panel::csrf_of`].
pub(super) const CSRF_HEADER: &str = "x-kodo-csrf";

/// Why a request a browser may have sent from another site is refused:
/// its `Origin` is not this host's (any request that changes state), or,
/// with the session cookie, it lacks the session's CSRF token.
pub(super) fn cross_site(request: &Request, session: Option<&str>) -> Option<&'static str> {
    if request.method().is_safe() {
        return None;
    }
    let headers = request.headers();
    if !same_origin(headers) {
        return Some("cross-site request refused: its Origin is not this host");
    }
    if let Some(secret) = session {
        let shown = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        let expected = kodo_panel::csrf_of(secret);
        if !shown.is_some_and(|shown| bool::from(shown.as_bytes().ct_eq(expected.as_bytes()))) {
            return Some("cross-site request refused: no valid X-Kodo-Csrf header");
        }
    }
    None
}

/// Whether the request's `Origin` (when a browser sent one) names this
/// host (`Host`); "null" (a sandboxed or opaque origin) does not.
pub(super) fn same_origin(headers: &header::HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

/// Resolves the caller (a bearer token, or the panel's session cookie),
/// or answers 401; refuses a state-changing request a browser sent from
/// another site (403).
pub(super) async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let bearer = request.headers().contains_key(header::AUTHORIZATION);
    let (user, session) = match state.tokens.caller(request.headers()) {
        Some(user) => (Some(user), None),
        None if bearer => (None, None),
        None => match session_token(request.headers()) {
            Some(token) => (state.tokens.user_of(token), Some(token.to_string())),
            None => (None, None),
        },
    };
    let Some(user) = user else {
        return unauthorized();
    };
    if !bearer && let Some(why) = cross_site(&request, session.as_deref()) {
        return ApiError::new(StatusCode::FORBIDDEN, why).into_response();
    }
    request.extensions_mut().insert(user);
    next.run(request).await
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
