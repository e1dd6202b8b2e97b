//! The execution routes: flows, launch, list, one execution, its events,
//! kill, pause and resume, lock answers. A user sees only their own executions (another
//! user's answer 404, as if they did not exist); an admin sees all.

use super::AppState;
use super::auth::User;
use super::error::{ApiError, ApiResult, json_body, json_type, query, seq_param};
use super::types::{
    AnswerBody, Answered, EventList, EventParams, EventView, ExecutionPage, ExecutionView,
    FlowDetail, FlowList, FlowView, Killing, LaunchBody, Launched, ListParams, PauseState, Refusal,
};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kodo_actors::{Control, ControlError, FlowDef, KillError, LaunchError, Origin, Refused};
use kodo_core::{Fid, Kind, Status};
use kodo_store::{EventQuery, ExecutionRow, ListQuery};
use serde_json::Value;
use std::sync::Arc;

/// Loads an execution the user may see; anything else is 404.
pub(super) async fn visible(state: &AppState, user: &User, fid: &str) -> ApiResult<ExecutionRow> {
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
pub(super) fn still_running(row: &ExecutionRow) -> ApiResult<()> {
    if row.status.is_final() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("execution already ended: {}", row.status),
        ));
    }
    Ok(())
}

/// `GET /flows`.
pub(super) async fn list_flows(State(state): State<Arc<AppState>>) -> Json<FlowList> {
    let flows = state
        .node
        .flows()
        .iter()
        .map(|f| FlowView {
            name: f.name.clone(),
            kind: f.kind_name(),
            description: f.description.clone(),
        })
        .collect();
    Json(FlowList { flows })
}

/// `GET /flows/{flow}`: the flow, with its input form (null: none).
pub(super) async fn get_flow(
    State(state): State<Arc<AppState>>,
    _user: User,
    Path(flow): Path<String>,
) -> ApiResult<Json<FlowDetail>> {
    let Some(def) = state.node.flows().get(&flow) else {
        return Err(ApiError::not_found(format!("flow {flow}")));
    };
    let form = form_of(&def).await?;
    Ok(Json(FlowDetail {
        name: def.name.clone(),
        kind: def.kind_name(),
        description: def.description.clone(),
        form,
    }))
}

/// Flow `def`'s form (None: it has none); 503 when its code fails.
pub(super) async fn form_of(def: &FlowDef) -> ApiResult<Option<Value>> {
    let Some(admission) = &def.admission else {
        return Ok(None);
    };
    admission.form().await.map(Some).map_err(|why| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("flow {}: its form failed: {why}", def.name),
        )
    })
}

/// `POST /flows/{flow}/executions`.
pub(super) async fn launch(
    State(state): State<Arc<AppState>>,
    user: User,
    Path(flow): Path<String>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let Some(def) = state.node.flows().get(&flow) else {
        return Err(ApiError::not_found(format!("flow {flow}")));
    };
    // A flow sold with payment is started through MIP-003, paid (admins
    // may still launch it, to try it).
    let paid = state
        .masumi
        .get(&flow)
        .is_some_and(|m| !m.payment_url.is_empty());
    if paid && !user.admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "flow {flow} is sold with payment: start it with POST /mip003/{flow}/start_job"
            ),
        ));
    }
    let body: Option<LaunchBody> = json_body(body)?;
    let inputs = match body.and_then(|b| b.inputs) {
        None => Value::Object(Default::default()),
        Some(inputs @ Value::Object(_)) => inputs,
        Some(other) => {
            return Err(ApiError::bad(format!(
                "inputs must be a JSON object, not {}",
                json_type(&other)
            )));
        }
    };
    let origin = Origin {
        traceparent: traceparent(&headers),
        ..Origin::default()
    };
    let launched = match admit_and_launch(&state, &def, &user, inputs, origin).await? {
        Ok(launched) => launched,
        Err(refused) => return Ok(refused),
    };
    let status = if launched.stored {
        StatusCode::CREATED
    } else {
        StatusCode::ACCEPTED
    };
    let body = Json(Launched {
        fid: launched.fid,
        stored: launched.stored,
    });
    Ok((status, body).into_response())
}

/// A request's W3C `traceparent` (a malformed one is ignored, as the spec says).
pub(super) fn traceparent(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| kodo_telemetry::is_traceparent(v))
        .map(str::to_string)
}

/// Launches flow `def` for `user`, its form checking `inputs` first (a
/// refused launch stores nothing, and is answered by the inner `Err`: 400
/// with its errors by field, or 503).
pub(super) async fn admit_and_launch(
    state: &AppState,
    def: &FlowDef,
    user: &User,
    inputs: Value,
    mut origin: Origin,
) -> ApiResult<Result<kodo_actors::Launched, Response>> {
    let inputs = match &def.admission {
        None => inputs,
        Some(admission) => match admission.admit(&user.name, inputs).await {
            Ok(admitted) => {
                origin.launch = admitted.launch;
                admitted.inputs
            }
            Err(refused) => {
                return Ok(Err(refusal(&def.name, refused, "the inputs were refused")?));
            }
        },
    };
    match state
        .node
        .launch_from(&def.name, &user.name, inputs, origin)
        .await
    {
        Ok(launched) => Ok(Ok(launched)),
        Err(LaunchError::UnknownFlow(f)) => Err(ApiError::not_found(format!("flow {f}"))),
        Err(e) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        )),
    }
}

/// `GET /executions`.
pub(super) async fn list_executions(
    State(state): State<Arc<AppState>>,
    user: User,
    params: Result<Query<ListParams>, QueryRejection>,
) -> ApiResult<Json<ExecutionPage>> {
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
    Ok(Json(ExecutionPage {
        executions: rows.iter().map(ExecutionView::from).collect(),
        next_cursor: next.flatten(),
    }))
}

/// `GET /executions/{fid}`.
pub(super) async fn get_execution(
    State(state): State<Arc<AppState>>,
    user: User,
    Path(fid): Path<String>,
) -> ApiResult<Json<ExecutionView>> {
    Ok(Json(ExecutionView::from(
        &visible(&state, &user, &fid).await?,
    )))
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

/// `GET /executions/{fid}/events`.
pub(super) async fn get_events(
    State(state): State<Arc<AppState>>,
    user: User,
    Path(fid): Path<String>,
    params: Result<Query<EventParams>, QueryRejection>,
) -> ApiResult<Json<EventList>> {
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
    Ok(Json(EventList {
        events: events.iter().map(EventView::from).collect(),
    }))
}

/// `GET /executions/{fid}/events.jsonl`: every stored event, one JSON
/// object per line (`{"seq", "ts", "kind", "payload"}`), as a download.
pub(super) async fn download_events(
    State(state): State<Arc<AppState>>,
    user: User,
    Path(fid): Path<String>,
) -> ApiResult<Response> {
    let row = visible(&state, &user, &fid).await?;
    let store = state.node.store().clone();
    let fid = row.fid.clone();
    // Pages of 10,000 events, read as the download goes.
    let pages = futures::stream::unfold(Some(0u64), move |after| {
        let (store, fid) = (store.clone(), fid.clone());
        async move {
            let after = after?;
            let query = EventQuery {
                after,
                limit: 10_000,
                kinds: None,
            };
            match store.events(&fid, &query).await {
                Ok(events) => {
                    let next = (events.len() == 10_000).then(|| events.last().map(|e| e.seq));
                    let mut text = String::new();
                    for event in &events {
                        let line =
                            serde_json::to_string(&EventView::from(event)).unwrap_or_default();
                        text.push_str(&line);
                        text.push('\n');
                    }
                    Some((Ok::<_, std::io::Error>(text), next.flatten()))
                }
                Err(e) => Some((Err(std::io::Error::other(e.to_string())), None)),
            }
        }
    });
    let mut response = axum::body::Body::from_stream(pages).into_response();
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/x-ndjson"),
    );
    let disposition = format!("attachment; filename=\"{}.jsonl\"", row.fid);
    if let Ok(value) = axum::http::HeaderValue::from_str(&disposition) {
        headers.insert(axum::http::header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// `POST /executions/{fid}/kill`.
pub(super) async fn kill(
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
            Json(Killing {
                fid: row.fid,
                killing: true,
            }),
        )
            .into_response()),
        Err(e @ KillError::Unreachable(_)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        )),
        Err(KillError::NotRunning(_)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "execution is not running",
        )),
    }
}

/// The answer to a refused control request.
pub(super) fn control_error(e: ControlError) -> ApiError {
    let status = match &e {
        ControlError::Unsupported(_) | ControlError::Conflict(_) => StatusCode::CONFLICT,
        ControlError::NotFound(_) => StatusCode::NOT_FOUND,
        ControlError::Unreachable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    ApiError::new(status, e.to_string())
}

/// `POST /executions/{fid}/pause` and `/resume` (durable mode).
async fn pause_or_resume(
    state: &AppState,
    user: &User,
    fid: &str,
    pause: bool,
) -> ApiResult<Response> {
    let row = visible(state, user, fid).await?;
    still_running(&row)?;
    let control = if pause {
        Control::Pause
    } else {
        Control::Resume
    };
    state
        .node
        .control(&row.fid, control)
        .await
        .map_err(control_error)?;
    tracing::info!(fid = %row.fid, by = %user.name, pause, "execution paused or resumed");
    Ok((
        StatusCode::ACCEPTED,
        Json(PauseState {
            fid: row.fid,
            paused: pause,
        }),
    )
        .into_response())
}

/// `GET /executions/{fid}/durable`: what Temporal knows of a durable
/// execution (its workflow, attempt, last reported seq, pause, open locks).
pub(super) async fn durable(
    State(state): State<Arc<AppState>>,
    user: User,
    Path(fid): Path<String>,
) -> ApiResult<Json<Value>> {
    let row = visible(&state, &user, &fid).await?;
    match state.node.describe(&row.fid).await {
        Ok(Some(described)) => Ok(Json(described)),
        Ok(None) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("execution {} is not durable (direct mode)", row.fid),
        )),
        Err(e) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e)),
    }
}

/// `POST /executions/{fid}/pause`.
pub(super) async fn pause(
    State(state): State<Arc<AppState>>,
    user: User,
    Path(fid): Path<String>,
) -> ApiResult<Response> {
    pause_or_resume(&state, &user, &fid, true).await
}

/// `POST /executions/{fid}/resume`.
pub(super) async fn resume(
    State(state): State<Arc<AppState>>,
    user: User,
    Path(fid): Path<String>,
) -> ApiResult<Response> {
    pause_or_resume(&state, &user, &fid, false).await
}

/// `POST /executions/{fid}/locks/{lid}`.
pub(super) async fn answer_lock(
    State(state): State<Arc<AppState>>,
    user: User,
    Path((fid, lid)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let row = visible(&state, &user, &fid).await?;
    if lid == kodo_actors::hold_id(&row.fid) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this lock holds the execution for its payment: only the payment service releases it",
        ));
    }
    let body: AnswerBody =
        json_body(body)?.ok_or_else(|| ApiError::bad("expected {\"answer\": ...}"))?;
    still_running(&row)?;
    // The flow's form checks the answer first (a Kodosumi app's
    // @app.lease): a refused answer leaves the lock open.
    let admission = state
        .node
        .flows()
        .get(&row.flow)
        .and_then(|def| def.admission.clone());
    let answer = match admission {
        None => body.answer,
        Some(admission) => {
            let (name, data) = opened_lock(&state, &row.fid, &lid).await?;
            match admission.answer(&name, data, body.answer).await {
                Ok(answer) => answer,
                Err(refused) => {
                    let what = "the answer was refused; the lock stays open";
                    return refusal(&row.flow, refused, what);
                }
            }
        }
    };
    state
        .node
        .answer_lock(&row.fid, &lid, answer)
        .await
        .map_err(control_error)?;
    Ok(Json(Answered {
        fid: row.fid,
        lid,
        answered: true,
    })
    .into_response())
}

/// A form's refusal as an answer: 400 with its errors by field (`what`
/// says what was refused), or 503 when the form's own code failed.
pub(super) fn refusal(flow: &str, refused: Refused, what: &str) -> ApiResult<Response> {
    match refused {
        Refused::Invalid(errors) => {
            let body = Refusal {
                error: what.into(),
                errors,
            };
            Ok((StatusCode::BAD_REQUEST, Json(body)).into_response())
        }
        Refused::Failed(why) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("flow {flow}: its form failed: {why}"),
        )),
    }
}

/// The name and data of lock `lid` of `fid`, from its stored `lock` event;
/// 404 when it is not open (never opened, answered or expired: its `lease`
/// is stored), before any form code runs for an answer.
async fn opened_lock(state: &AppState, fid: &Fid, lid: &str) -> ApiResult<(String, Value)> {
    let stored = kodo_actors::stored_lock(state.node.store(), fid, lid).await;
    match stored.map_err(ApiError::internal)? {
        (Some(lock), None) => {
            let name = lock["name"].as_str().unwrap_or_default().to_string();
            Ok((name, lock["data"].clone()))
        }
        _ => Err(ApiError::not_found(format!("open lock {lid}"))),
    }
}
