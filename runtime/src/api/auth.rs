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
        bearer(headers).and_then(|token| self.user_of(token))
    }

    /// The user of `token`.
    pub(super) fn user_of(&self, token: &str) -> Option<User> {
        self.0.get(token).cloned()
    }

    /// Whether no token is configured (every caller is `local`).
    pub(super) fn none(&self) -> bool {
        self.0.is_empty()
    }

    /// The user of a panel session cookie's value that one of the tokens
    /// signed and that has not expired (see [`kodo_panel::session_user`]).
    pub(super) fn session_user(&self, cookie: &str) -> Option<User> {
        let now = kodo_core::now_ts() as u64;
        let tokens = self.0.iter().map(|(t, u)| (t.as_str(), u.name.as_str()));
        let token = kodo_panel::session_user(cookie, now, tokens)?;
        self.user_of(token)
    }
}

/// The admin every caller is when no token is configured.
pub(super) fn local() -> User {
    User {
        name: "local".into(),
        admin: true,
    }
}

/// The panel's session cookie (HttpOnly, SameSite=Strict): a signed
/// session, not the token (see [`kodo_panel::session_cookie`]).
pub(super) const SESSION_COOKIE: &str = "kodo_session";

/// The values of a request's session cookies (another service on this
/// host name may have set one too: each is checked).
fn session_cookies(headers: &header::HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, value)| *name == SESSION_COOKIE && !value.is_empty())
        .map(|(_, value)| value)
}

/// The user and cookie value of a request's valid panel session.
pub(super) fn session_of(tokens: &Tokens, headers: &header::HeaderMap) -> Option<(User, String)> {
    session_cookies(headers)
        .find_map(|cookie| Some((tokens.session_user(cookie)?, cookie.to_string())))
}

/// The token of a request's `Authorization: Bearer TOKEN` (the scheme in
/// any case, as HTTP has it).
pub(super) fn bearer(headers: &header::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
}

/// Whether the request carries `Authorization: Bearer ...`: a credential a
/// browser never sends on its own (unlike Basic or a cookie).
fn has_bearer(headers: &header::HeaderMap) -> bool {
    bearer(headers).is_some()
}

/// The header a session's state-changing requests carry: see
/// [`kodo_panel::csrf_of`].
const CSRF_HEADER: &str = "x-kodo-csrf";

/// Refuses what a browser may send from another site, before any route
/// (also the open MIP-003 ones and the login): a state-changing request
/// without a bearer token whose `Origin` is not this host; and, with no
/// tokens configured, any request for a host name that is not loopback
/// (a DNS-rebinding page names its own). Health probes are left alone.
pub(super) async fn refuse_cross_site(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    if !request.method().is_safe() && !has_bearer(headers) && !same_origin(headers) {
        return ApiError::new(StatusCode::FORBIDDEN, ORIGIN_REFUSED).into_response();
    }
    if state.tokens.none()
        && !request.uri().path().starts_with("/health")
        && !loopback_host(headers)
    {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "without [[auth.tokens]], only loopback host names are served (localhost, 127.0.0.1, [::1])",
        )
        .into_response();
    }
    next.run(request).await
}

/// The refusal of a request from another origin.
const ORIGIN_REFUSED: &str = "cross-site request refused: its Origin is not this host";

/// Whether the request's `Host` is a loopback name (any port).
fn loopback_host(headers: &header::HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return true; // HTTP/1.0 without Host: not a browser page.
    };
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    matches!(
        name.to_ascii_lowercase().as_str(),
        "localhost" | "127.0.0.1" | "[::1]"
    )
}

/// Why a state-changing request with the session cookie is refused: it
/// lacks the session's CSRF token.
fn without_csrf(request: &Request, cookie: &str) -> Option<&'static str> {
    if request.method().is_safe() {
        return None;
    }
    let shown = request
        .headers()
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok());
    let expected = kodo_panel::csrf_of(cookie);
    if shown.is_some_and(|shown| bool::from(shown.as_bytes().ct_eq(expected.as_bytes()))) {
        return None;
    }
    Some(
        "request refused: a panel session's change needs its X-Kodo-Csrf header (from /panel/session)",
    )
}

/// Whether the request's `Origin` (when a browser sent one) names this
/// host (`Host`); "null" (a sandboxed or opaque origin) does not.
fn same_origin(headers: &header::HeaderMap) -> bool {
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
/// or answers 401; refuses a state-changing request with the cookie but
/// without its CSRF token (403). (Other origins: [`refuse_cross_site`].)
pub(super) async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let (user, cookie) = match state.tokens.caller(headers) {
        Some(user) => (user, None),
        None if has_bearer(headers) => return unauthorized(),
        None => match session_of(&state.tokens, headers) {
            Some((user, cookie)) => (user, Some(cookie)),
            None => return unauthorized(),
        },
    };
    if let Some(why) = cookie.and_then(|cookie| without_csrf(&request, &cookie)) {
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
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "missing or unknown bearer token (or no valid panel session)",
    )
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
