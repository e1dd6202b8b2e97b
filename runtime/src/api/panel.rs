//! The web panel's routes: the page (`/`), its assets, and its session.
//!
//! - `GET /`: the page (every panel address is a fragment of it);
//!   `GET /panel/assets/{name}`: its script and style sheet. No token
//!   needed: they hold no data.
//! - `POST /panel/login` `{"token"}`: sets the session cookie (a session
//!   signed with the token, 12 hours; HttpOnly, SameSite=Strict) and
//!   answers `{"user", "admin", "csrf"}`.
//! - `GET /panel/session`: the same answer for a valid session (401 else);
//!   `POST /panel/logout` clears the cookie.
//! - `POST /panel/render` `{"markdown"}` or `{"html"}`: `{"html"}`, sanitized.
//!
//! The rest of the API takes the cookie as it takes a bearer token; a
//! state-changing request with it must carry the session's CSRF token
//! (`X-Kodo-Csrf`), and no request may come from another origin (see
//! `auth::authenticate`). Every answer carries the security headers
//! ([`security_headers`]).

use super::AppState;
use super::auth::{SESSION_COOKIE, User, local, session_of as valid_session};
use super::error::{ApiError, ApiResult, json_body};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

/// How long a panel session lasts (its cookie's Max-Age).
const SESSION_SECONDS: u64 = 12 * 3600;

/// `GET /`: the panel's page.
pub(super) async fn page() -> Response {
    let mut response = kodo_panel::INDEX_HTML.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

/// `GET /panel/assets/{name}`.
pub(super) async fn asset(Path(name): Path<String>) -> ApiResult<Response> {
    let (content_type, text) =
        kodo_panel::asset(&name).ok_or_else(|| ApiError::not_found(format!("asset {name}")))?;
    let mut response = text.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// `POST /panel/login` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    token: String,
}

/// `POST /panel/login`: a known token opens a session (its cookie).
/// (A login from another origin was refused before: `auth::refuse_cross_site`.)
pub(super) async fn login(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let login: Login = json_body(body)?.ok_or_else(|| ApiError::bad("expected {\"token\"}"))?;
    if state.tokens.none() {
        // No tokens: everyone is the admin `local`, no session needed.
        return Ok(Json(session_of(&local(), "", false)).into_response());
    }
    let Some(user) = state.tokens.user_of(login.token.trim()) else {
        tracing::info!("panel login refused: unknown token");
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unknown token"));
    };
    let token = login.token.trim();
    tracing::info!(user = %user.name, "panel login");
    let expires = kodo_core::now_ts() as u64 + SESSION_SECONDS;
    let value = kodo_panel::session_cookie(&user.name, token, expires);
    // Behind a TLS proxy (it says so), the cookie is sent over HTTPS only.
    let tls = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    let secure = if tls { "; Secure" } else { "" };
    let cookie = format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECONDS}{secure}"
    );
    let mut response = Json(session_of(&user, &value, true)).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie)
            .map_err(|_| ApiError::bad("token not usable in a cookie"))?,
    );
    Ok(response)
}

/// What the page knows of its session: who, its CSRF token (derived from
/// the session cookie's value), and whether there is a login at all
/// (without tokens there is none, nor a logout).
fn session_of(user: &User, cookie: &str, login: bool) -> serde_json::Value {
    json!({"user": user.name, "admin": user.admin, "csrf": kodo_panel::csrf_of(cookie), "login": login})
}

/// `GET /panel/session`: the session of the cookie (or bearer token).
pub(super) async fn session(
    State(state): State<Arc<AppState>>,
    user: User,
    headers: HeaderMap,
) -> Json<serde_json::Value> {
    let cookie = valid_session(&state.tokens, &headers).map(|(_, cookie)| cookie);
    Json(session_of(
        &user,
        cookie.as_deref().unwrap_or_default(),
        !state.tokens.none(),
    ))
}

/// `POST /panel/logout`: clears the session cookie.
pub(super) async fn logout(user: User) -> Response {
    tracing::info!(user = %user.name, "panel logout");
    let mut response = Json(json!({"logged_out": true})).into_response();
    let cookie = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `POST /panel/render` body: one of the two.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Render {
    markdown: Option<String>,
    html: Option<String>,
}

/// `POST /panel/render`: markdown or HTML as sanitized HTML.
pub(super) async fn render(
    _user: User,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let render: Render =
        json_body(body)?.ok_or_else(|| ApiError::bad("expected {\"markdown\"} or {\"html\"}"))?;
    let html = match (render.markdown, render.html) {
        (Some(text), None) => kodo_panel::markdown_html(&text),
        (None, Some(html)) => kodo_panel::clean_html(&html),
        _ => return Err(ApiError::bad("expected {\"markdown\"} or {\"html\"}")),
    };
    Ok(Json(json!({ "html": html })))
}

/// Adds the security headers to every answer: the panel's CSP, no
/// sniffing, no framing, no referrer.
pub(super) async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(kodo_panel::CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}
