//! Errors as the API answers them, and the parsing of what clients send:
//! every failure is a 4xx/5xx with `{"error": "..."}`.

use super::types::ErrorBody;
use axum::Json;
use axum::body::Bytes;
use axum::extract::Query;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// An error answer: a status and `{"error": message}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self(status, message.into())
    }

    pub(super) fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("{what} not found"))
    }

    pub(super) fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// Whether this is a 404.
    pub(super) fn is_not_found(&self) -> bool {
        self.0 == StatusCode::NOT_FOUND
    }

    pub(super) fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "request failed");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store unavailable: {e}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

/// What a handler answers.
pub(super) type ApiResult<T> = Result<T, ApiError>;

/// Gives every error answer the documented `{"error": "..."}` body, also
/// those axum makes itself (405, a path that is not UTF-8, ...).
pub(super) async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    let body = serde_json::to_string(&ErrorBody { error: message }).unwrap_or_default();
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// Parses a JSON object body (an empty body is `None`), turning every
/// failure into a JSON 400 or 413. Anything but an object is refused: a
/// bare array would otherwise fill the fields by position.
pub(super) fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Option<T>> {
    let bytes = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad(format!(
            "the body must be a JSON object, not {}",
            json_type(&value)
        )));
    }
    serde_json::from_value(value)
        .map(Some)
        .map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))
}

/// "a string", "an array"... for error messages.
pub(super) fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A query string, or a 400 saying what is wrong with it.
pub(super) fn query<T: serde::de::DeserializeOwned>(
    q: Result<Query<T>, QueryRejection>,
) -> ApiResult<T> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::bad(e.body_text()))
}

/// The largest seq a client may name (seqs are stored as signed 64-bit).
const MAX_SEQ: u64 = i64::MAX as u64;

/// Checks a seq given by a client (`after`, `Last-Event-ID`).
pub(super) fn seq_param(name: &str, seq: u64) -> ApiResult<u64> {
    if seq > MAX_SEQ {
        return Err(ApiError::bad(format!(
            "{name} must be a seq from 0 to {MAX_SEQ}"
        )));
    }
    Ok(seq)
}
