//! The HTTP API (axum, JSON, bearer tokens). Every bad request gets a 4xx
//! with `{"error": "..."}`; a user sees only their own executions (another
//! user's answer 404, as if they did not exist), an admin sees all.

use crate::config::Config;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::Stream;
use kodo_actors::{AnswerError, KillError, LaunchError, Node};
use kodo_core::{Event, Fid, Kind, Status};
use kodo_store::{EventQuery, ExecutionRow, ListQuery};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// What every handler shares.
pub struct AppState {
    /// The node.
    pub node: Arc<Node>,
    tokens: HashMap<String, User>,
}

/// The caller, resolved from its bearer token.
#[derive(Clone, Debug)]
pub struct User {
    /// The user name; executions it launches are owned by it.
    pub name: String,
    /// Sees everyone's executions.
    pub admin: bool,
}

/// An error answer: a status and `{"error": message}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self(status, message.into())
    }
    fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("{what} not found"))
    }
    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "request failed");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store unavailable: {e}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Builds the router over a running node.
pub fn router(node: Arc<Node>, config: &Config) -> Router {
    let tokens = config
        .auth
        .tokens
        .iter()
        .map(|t| {
            (
                t.token.clone(),
                User {
                    name: t.user.clone(),
                    admin: t.admin,
                },
            )
        })
        .collect();
    let state = Arc::new(AppState { node, tokens });
    let authed = Router::new()
        .route("/flows", get(list_flows))
        .route("/flows/{flow}/executions", post(launch))
        .route("/executions", get(list_executions))
        .route("/executions/{fid}", get(get_execution))
        .route("/executions/{fid}/events", get(get_events))
        .route("/executions/{fid}/stream", get(stream))
        .route("/executions/{fid}/kill", post(kill))
        .route("/executions/{fid}/locks/{lid}", post(answer_lock))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/health", get(health))
        .merge(authed)
        .fallback(|| async { ApiError::not_found("route") })
        .layer(DefaultBodyLimit::max(config.api.max_body_bytes))
        .layer(middleware::map_response(json_errors))
        .with_state(state)
}

/// Gives every error answer the documented `{"error": "..."}` body, also
/// those axum makes itself (405, a path that is not UTF-8, ...).
async fn json_errors(response: Response) -> Response {
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
    let body = json!({ "error": message }).to_string();
    Response::from_parts(parts, axum::body::Body::from(body))
}

async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let user = if state.tokens.is_empty() {
        Some(User {
            name: "local".into(),
            admin: true,
        })
    } else {
        request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .and_then(|(_, token)| state.tokens.get(token.trim()).cloned())
    };
    match user {
        Some(user) => {
            request.extensions_mut().insert(user);
            next.run(request).await
        }
        None => ApiError::new(StatusCode::UNAUTHORIZED, "missing or unknown bearer token")
            .into_response(),
    }
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

/// Parses a JSON object body (an empty body is `None`), turning every
/// failure into a JSON 400 or 413. Anything but an object is refused: a
/// bare array would otherwise fill the fields by position.
fn json_body<T: serde::de::DeserializeOwned>(
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
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The largest seq a client may name (seqs are stored as signed 64-bit).
const MAX_SEQ: u64 = i64::MAX as u64;

/// Checks a seq given by a client (`after`, `Last-Event-ID`).
fn seq_param(name: &str, seq: u64) -> ApiResult<u64> {
    if seq > MAX_SEQ {
        return Err(ApiError::bad(format!(
            "{name} must be a seq from 0 to {MAX_SEQ}"
        )));
    }
    Ok(seq)
}

/// Loads an execution the user may see; anything else is 404.
async fn visible(state: &AppState, user: &User, fid: &str) -> ApiResult<ExecutionRow> {
    let fid = Fid::parse(fid).ok_or_else(|| ApiError::not_found(format!("execution {fid}")))?;
    let row = match state.node.store().execution(&fid).await {
        Ok(Some(row)) => Some(row),
        // Launched here, first events not stored yet (the store is slow or down).
        Ok(None) => state.node.find_unstored(&fid),
        Err(e) => return Err(ApiError::internal(e)),
    };
    match row {
        Some(row) if user.admin || row.owner == user.name => Ok(row),
        _ => Err(ApiError::not_found(format!("execution {fid}"))),
    }
}

/// 409 for an execution that has ended: it can no longer be killed or answered.
fn still_running(row: &ExecutionRow) -> ApiResult<()> {
    if row.status.is_final() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("execution already ended: {}", row.status),
        ));
    }
    Ok(())
}

fn row_json(row: &ExecutionRow) -> Value {
    json!({
        "fid": row.fid,
        "flow": row.flow,
        "status": row.status,
        "owner": row.owner,
        "node": row.node,
        "created": row.created,
        "updated": row.updated,
        "events": row.events,
    })
}

fn event_json(e: &Event) -> Value {
    let payload: Box<RawValue> =
        RawValue::from_string(e.payload.clone()).unwrap_or_else(|_| RawValue::NULL.to_owned());
    json!({"seq": e.seq, "ts": e.ts, "kind": e.kind, "payload": payload})
}

async fn list_flows(State(state): State<Arc<AppState>>) -> Json<Value> {
    let flows: Vec<Value> = state
        .node
        .flows()
        .iter()
        .map(|f| json!({"name": f.name, "kind": f.kind_name(), "description": f.description}))
        .collect();
    Json(json!({ "flows": flows }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LaunchBody {
    #[serde(default)]
    inputs: Option<Value>,
}

async fn launch(
    State(state): State<Arc<AppState>>,
    user: User,
    Path(flow): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    if state.node.flows().get(&flow).is_none() {
        return Err(ApiError::not_found(format!("flow {flow}")));
    }
    let body: Option<LaunchBody> = json_body(body)?;
    let inputs = match body.and_then(|b| b.inputs) {
        None => json!({}),
        Some(inputs @ Value::Object(_)) => inputs,
        Some(other) => {
            return Err(ApiError::bad(format!(
                "inputs must be a JSON object, not {}",
                json_type(&other)
            )));
        }
    };
    match state.node.launch(&flow, &user.name, inputs).await {
        Ok(launched) => {
            let status = if launched.stored {
                StatusCode::CREATED
            } else {
                StatusCode::ACCEPTED
            };
            Ok((
                status,
                Json(json!({"fid": launched.fid, "stored": launched.stored})),
            )
                .into_response())
        }
        Err(LaunchError::UnknownFlow(f)) => Err(ApiError::not_found(format!("flow {f}"))),
        Err(e) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    status: Option<String>,
    flow: Option<String>,
    owner: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

fn query<T: serde::de::DeserializeOwned>(
    q: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<T> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::bad(e.body_text()))
}

async fn list_executions(
    State(state): State<Arc<AppState>>,
    user: User,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let p = query(params)?;
    let status = p
        .status
        .map(|s| s.parse::<Status>())
        .transpose()
        .map_err(|e| ApiError::bad(e.to_string()))?;
    let limit = p.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad("limit must be 1 to 1000"));
    }
    let before = match p.cursor {
        Some(c) => Some(Fid::parse(&c).ok_or_else(|| ApiError::bad("invalid cursor"))?),
        None => None,
    };
    let owner = if user.admin { p.owner } else { Some(user.name) };
    let rows = state
        .node
        .store()
        .executions(&ListQuery {
            owner,
            status,
            flow: p.flow,
            before,
            limit,
        })
        .await
        .map_err(ApiError::internal)?;
    let next = (rows.len() == limit as usize).then(|| rows.last().map(|r| r.fid.clone()));
    Ok(Json(json!({
        "executions": rows.iter().map(row_json).collect::<Vec<_>>(),
        "next_cursor": next.flatten(),
    })))
}

async fn get_execution(
    State(state): State<Arc<AppState>>,
    user: User,
    Path(fid): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(row_json(&visible(&state, &user, &fid).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventParams {
    after: Option<u64>,
    limit: Option<u32>,
    kinds: Option<String>,
}

fn parse_kinds(kinds: Option<String>) -> ApiResult<Option<Vec<Kind>>> {
    kinds
        .map(|k| {
            k.split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.trim().parse::<Kind>())
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()
        .map_err(|e| ApiError::bad(e.to_string()))
}

async fn get_events(
    State(state): State<Arc<AppState>>,
    user: User,
    Path(fid): Path<String>,
    params: Result<Query<EventParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let p = query(params)?;
    let row = visible(&state, &user, &fid).await?;
    let limit = p.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::bad("limit must be 1 to 10000"));
    }
    let events = state
        .node
        .store()
        .events(
            &row.fid,
            &EventQuery {
                after: seq_param("after", p.after.unwrap_or(0))?,
                limit,
                kinds: parse_kinds(p.kinds)?,
            },
        )
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(
        json!({"events": events.iter().map(event_json).collect::<Vec<_>>()}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamParams {
    after: Option<u64>,
}

/// Server-sent events: replays stored events after `Last-Event-ID` (or
/// `?after=`), then follows commits through the live hub, and ends after the
/// final status. The store is read only when the hub says there is more.
async fn stream(
    State(state): State<Arc<AppState>>,
    user: User,
    Path(fid): Path<String>,
    headers: HeaderMap,
    params: Result<Query<StreamParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let p = query(params)?;
    let row = visible(&state, &user, &fid).await?;
    let after = match headers.get("last-event-id") {
        Some(v) => {
            let seq = v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok());
            seq_param("Last-Event-ID", seq.unwrap_or(u64::MAX))?
        }
        None => seq_param("after", p.after.unwrap_or(0))?,
    };
    // Subscribe before the first read so no commit falls between the two.
    let follow = SseFollow {
        sub: state.node.hub().subscribe(&row.fid),
        state,
        fid: row.fid,
        last: after,
        buffer: VecDeque::new(),
        done: false,
    };
    let events =
        futures::stream::unfold(
            follow,
            |mut f| async move { f.next().await.map(|e| (Ok(e), f)) },
        );
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

struct SseFollow {
    state: Arc<AppState>,
    sub: kodo_actors::Subscription,
    fid: Fid,
    last: u64,
    buffer: VecDeque<Event>,
    done: bool,
}

impl SseFollow {
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(e) = self.buffer.pop_front() {
                self.last = e.seq;
                if e.status().is_some_and(Status::is_final) {
                    self.done = true;
                }
                return Some(
                    SseEvent::default()
                        .id(e.seq.to_string())
                        .event(e.kind.as_str())
                        .data(&e.payload),
                );
            }
            if self.done {
                return None;
            }
            let store = self.state.node.store();
            let query = EventQuery {
                after: self.last,
                limit: 500,
                kinds: None,
            };
            match store.events(&self.fid, &query).await {
                Ok(events) if events.first().is_some_and(|e| e.seq == self.last + 1) => {
                    // Only the gap-free run after the last one sent: with
                    // spoolers in several processes a later batch can commit
                    // before an earlier one; the gap fills, then it follows.
                    let run = events
                        .iter()
                        .zip(self.last + 1..)
                        .take_while(|(e, seq)| e.seq == *seq)
                        .count();
                    self.buffer.extend(events.into_iter().take(run));
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    self.done = true;
                    return Some(SseEvent::default().event("kodo-error").data(e.to_string()));
                }
            }
            // Nothing newer stored: ended already (a resume past the end), or wait for a commit.
            match store.execution(&self.fid).await {
                Ok(Some(row)) if row.status.is_final() && row.events <= self.last => return None,
                Ok(_) => {}
                Err(e) => {
                    self.done = true;
                    return Some(SseEvent::default().event("kodo-error").data(e.to_string()));
                }
            }
            self.sub.changed().await;
        }
    }
}

async fn kill(
    State(state): State<Arc<AppState>>,
    user: User,
    Path(fid): Path<String>,
) -> ApiResult<Response> {
    let row = visible(&state, &user, &fid).await?;
    still_running(&row)?;
    match state
        .node
        .kill(&row.fid, &format!("by {}", user.name))
        .await
    {
        Ok(()) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({"fid": row.fid, "killing": true})),
        )
            .into_response()),
        Err(KillError::NotRunning(_)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "execution is not running on this node",
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswerBody {
    answer: Value,
}

async fn answer_lock(
    State(state): State<Arc<AppState>>,
    user: User,
    Path((fid, lid)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let row = visible(&state, &user, &fid).await?;
    let body: AnswerBody =
        json_body(body)?.ok_or_else(|| ApiError::bad("expected {\"answer\": ...}"))?;
    still_running(&row)?;
    match state.node.answer_lock(&row.fid, &lid, body.answer) {
        Ok(()) => Ok(Json(json!({"fid": row.fid, "lid": lid, "answered": true}))),
        Err(e @ AnswerError::NotFound { .. }) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, e.to_string()))
        }
    }
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let node = &state.node;
    let ping = tokio::time::timeout(Duration::from_secs(2), node.store().ping()).await;
    let store_error = match ping {
        Ok(Ok(())) => node.store_error(),
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("no answer within 2 s".into()),
    };
    let transport = node.transport().health().await;
    let ok = store_error.is_none() && transport.ok;
    let body = json!({
        "status": if ok { "ok" } else { "degraded" },
        "store": {"ok": store_error.is_none(), "error": store_error},
        "transport": transport,
        "running": node.running().await,
    });
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}
