//! Masumi's agentic-service API (MIP-003), for every flow:
//! `/mip003/{flow}/start_job`, `status`, `provide_input`, `availability`,
//! `input_schema`.
//!
//! Each flow is one agent, so its base URL (`http://HOST/mip003/FLOW`) is
//! what Masumi's registry is given: MIP-003 fixes the paths under it and
//! knows no flow parameter. A job is an ordinary kodo execution (its id is
//! the job id), listed, streamed and killed through the rest of the API;
//! its `meta.job` keeps the purchaser's identifier and the input hash.
//!
//! Access is per flow (`[flows.NAME.masumi] access`): kodo's tokens, or
//! `open`, where a caller without a token acts as the flow's `owner`.
//! Payment is off by default: jobs never wait in `awaiting_payment`, and
//! `start_job` says so in its payment fields (`blockchainIdentifier:
//! "payment-off"`, times 0). With a payment hook, see `payment`.

use super::AppState;
use super::auth::{User, no_token};
use super::error::{ApiError, ApiResult, json_body, json_type, query};
use super::executions::{
    admit_and_launch, control_error, form_of, refusal, still_running, visible,
};
use super::payment;
use super::types::Refusal;
use crate::config::{MasumiAccess, MasumiSection};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kodo_actors::{FlowDef, Origin, hold_id};
use kodo_core::{Event, Kind, Meta, Status};
use kodo_masumi::{form_elements, form_inputs, input_hash, input_schema, lock_fields};
use kodo_store::{EventQuery, ExecutionRow};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// The longest `identifier_from_purchaser` taken.
const MAX_PURCHASER: usize = 256;

/// The MIP-003 routes (each resolves its caller itself: access is per flow).
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/mip003/{flow}/start_job", post(start_job))
        .route("/mip003/{flow}/status", get(status))
        .route("/mip003/{flow}/provide_input", post(provide_input))
        .route("/mip003/{flow}/availability", get(availability))
        .route("/mip003/{flow}/input_schema", get(schema))
        .route("/mip003/{flow}/payment", post(super::payment::confirm))
}

/// The flow a request names and its caller: 404 for an unknown flow, 401
/// without a known token, unless the flow is open and the request carries
/// no token (then the caller is the flow's `owner`).
fn caller(
    state: &AppState,
    flow: &str,
    headers: &HeaderMap,
) -> ApiResult<(Arc<FlowDef>, MasumiSection, User)> {
    let Some(def) = state.node.flows().get(flow) else {
        return Err(ApiError::not_found(format!("flow {flow}")));
    };
    let masumi = state.masumi.get(flow).cloned().unwrap_or_default();
    if masumi.access == MasumiAccess::Open && !headers.contains_key(header::AUTHORIZATION) {
        let user = User {
            name: masumi.owner.clone(),
            admin: false,
        };
        return Ok((def, masumi, user));
    }
    match state.tokens.caller(headers) {
        Some(user) => Ok((def, masumi, user)),
        None => Err(no_token()),
    }
}

/// `POST /start_job` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartJob {
    identifier_from_purchaser: String,
    #[serde(default)]
    input_data: Option<Value>,
}

/// `POST /mip003/{flow}/start_job`: launches the flow with `input_data`
/// (checked by its form first; a refused job stores nothing).
async fn start_job(
    State(state): State<Arc<AppState>>,
    Path(flow): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let (def, masumi, user) = caller(&state, &flow, &headers)?;
    let body: StartJob = json_body(body)?
        .ok_or_else(|| ApiError::bad("expected {\"identifier_from_purchaser\", \"input_data\"}"))?;
    let purchaser = body.identifier_from_purchaser;
    if purchaser.trim().is_empty() || purchaser.len() > MAX_PURCHASER {
        return Err(ApiError::bad(format!(
            "identifier_from_purchaser must be 1 to {MAX_PURCHASER} bytes, not blank"
        )));
    }
    let input_data = object("input_data", body.input_data)?;
    let hash = input_hash(&purchaser, &Value::Object(input_data.clone()));
    // MIP-003's values as the flow's form takes them.
    let inputs = match form_of(&def).await? {
        None => input_data,
        Some(form) => form_inputs(form_elements(&form).unwrap_or_default(), &input_data),
    };
    let mut job = json!({
        "api": "mip003",
        "identifier_from_purchaser": purchaser,
        "input_hash": hash,
    });
    // With a payment hook, the job is held until its payment is confirmed.
    let hold = payment::hold(&masumi, &purchaser, &hash);
    if let Some(hold) = &hold {
        job["hold"] = hold.clone();
    }
    let origin = Origin {
        traceparent: super::executions::traceparent(&headers),
        launch: None,
        job: Some(job),
    };
    let inputs = Value::Object(inputs);
    let launched = match admit_and_launch(&state, &def, &user, inputs, origin).await? {
        Ok(launched) => launched,
        Err(refused) => return Ok(refused),
    };
    let fid = launched.fid;
    let mut answer = json!({
        "id": format!("{fid}-0"),
        "status": "success",
        "job_id": fid,
        "input_hash": hash,
        "identifierFromPurchaser": purchaser,
        "agentIdentifier": masumi.agent_identifier,
        "sellerVKey": masumi.seller_vkey,
    });
    if hold.is_none() {
        // Payment off: the fields say so; no blockchain data is made up.
        answer["payment"] = json!("off");
        answer["blockchainIdentifier"] = json!("payment-off");
        for time in payment::TIMES {
            answer[time] = json!(0);
        }
    } else {
        match payment::request(&state, &flow, &masumi, &fid, &purchaser, &hash).await {
            Ok(fields) => {
                answer["payment"] = json!("awaiting");
                for (key, value) in fields {
                    answer[key] = value;
                }
            }
            Err(why) => {
                // The details (the service's address) stay in the log and
                // the job's own end; the caller may be anyone.
                tracing::warn!(fid = %fid, flow = %flow, error = %why, "MIP-003 job killed: no payment request");
                if let Err(e) = state.node.kill(&fid, &why).await {
                    tracing::warn!(fid = %fid, error = %e, "could not kill the unpaid job");
                }
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "the payment service did not answer; the job was not started",
                ));
            }
        }
    }
    tracing::info!(fid = %fid, flow = %flow, owner = %user.name, "MIP-003 job started");
    Ok(Json(answer).into_response())
}

/// `input_data` as an object (absent: empty), or a 400.
fn object(name: &str, value: Option<Value>) -> ApiResult<Map<String, Value>> {
    match value {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(map)) => Ok(map),
        Some(other) => Err(ApiError::bad(format!(
            "{name} must be a JSON object, not {}",
            json_type(&other)
        ))),
    }
}

/// `GET /status` query.
#[derive(Deserialize)]
struct StatusParams {
    job_id: Option<String>,
}

/// A job as stored: its execution, the purchaser, and the events that
/// say its status.
struct Job {
    row: ExecutionRow,
    purchaser: String,
    events: Vec<Event>,
}

/// Job `job_id` of `flow` as `user` may see it; 404 for anything else
/// (another flow's, another user's, an execution not started as a job).
async fn job(state: &AppState, user: &User, flow: &str, job_id: &str) -> ApiResult<Job> {
    let missing = || ApiError::not_found(format!("job {job_id}"));
    let row = match visible(state, user, job_id).await {
        Ok(row) => row,
        Err(e) if e.is_not_found() => return Err(missing()),
        Err(e) => return Err(e),
    };
    if row.flow != flow {
        return Err(missing());
    }
    let query = EventQuery {
        after: 0,
        limit: 10_000,
        kinds: Some(vec![
            Kind::Meta,
            Kind::Status,
            Kind::Lock,
            Kind::Lease,
            Kind::Final,
        ]),
    };
    let events = state
        .node
        .store()
        .events(&row.fid, &query)
        .await
        .map_err(ApiError::internal)?;
    let meta = events
        .iter()
        .find(|e| e.kind == Kind::Meta)
        .and_then(|e| serde_json::from_str::<Meta>(&e.payload).ok());
    let purchaser = match meta.and_then(|m| m.job) {
        Some(job) if job["api"] == "mip003" => job["identifier_from_purchaser"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        Some(_) => return Err(missing()),
        // Launched here, its first events not stored yet.
        None if row.events == 0 => String::new(),
        None => return Err(missing()),
    };
    Ok(Job {
        row,
        purchaser,
        events,
    })
}

/// The job's open locks (opened, neither answered nor expired), oldest
/// first: (lid, name, data). Its payment hold is one of them.
fn open_locks(events: &[Event]) -> Vec<(String, String, Value)> {
    let payloads = |kind: Kind| {
        events
            .iter()
            .filter(move |e| e.kind == kind)
            .filter_map(|e| serde_json::from_str::<Value>(&e.payload).ok())
    };
    let closed: Vec<Value> = payloads(Kind::Lease).map(|l| l["lid"].clone()).collect();
    payloads(Kind::Lock)
        .filter(|lock| !closed.contains(&lock["lid"]))
        .map(|lock| {
            let lid = lock["lid"].as_str().unwrap_or_default().to_string();
            let name = lock["name"].as_str().unwrap_or_default().to_string();
            (lid, name, lock["data"].clone())
        })
        .collect()
}

/// `GET /mip003/{flow}/status?job_id=`: kodo's status in MIP-003's words.
async fn status(
    State(state): State<Arc<AppState>>,
    Path(flow): Path<String>,
    headers: HeaderMap,
    params: Result<Query<StatusParams>, QueryRejection>,
) -> ApiResult<Response> {
    let (_, _, user) = caller(&state, &flow, &headers)?;
    let job_id = query(params)?
        .job_id
        .filter(|id| !id.is_empty())
        .ok_or_else(|| ApiError::bad("expected ?job_id="))?;
    let job = job(&state, &user, &flow, &job_id).await?;
    Ok(Json(job_status(&job)).into_response())
}

/// A job's MIP-003 status: `awaiting_payment` while held for its payment,
/// `running` (also while starting or paused),
/// `awaiting_input` with the oldest open lock's fields (its lock id is the
/// status id `provide_input` names), `completed` with the `final` payload
/// as text, or `failed` (error, killed). Other statuses' ids name the last
/// event that changed it.
fn job_status(job: &Job) -> Value {
    let fid = job.row.fid.as_str();
    let changed = job
        .events
        .iter()
        .filter(|e| matches!(e.kind, Kind::Status | Kind::Lock | Kind::Lease))
        .map(|e| e.seq)
        .max()
        .unwrap_or(0);
    let id = format!("{fid}-{changed}");
    match job.row.status {
        Status::Finished => {
            let result = job
                .events
                .iter()
                .rfind(|e| e.kind == Kind::Final)
                .map(|e| kodo_masumi::result_text(&e.payload))
                .unwrap_or_default();
            json!({"id": id, "job_id": fid, "status": "completed", "result": result})
        }
        Status::Error | Status::Killed => json!({"id": id, "job_id": fid, "status": "failed"}),
        _ => match open_locks(&job.events).into_iter().next() {
            Some((lid, ..)) if lid == hold_id(&job.row.fid) => {
                json!({"id": lid, "job_id": fid, "status": "awaiting_payment"})
            }
            Some((lid, name, data)) => json!({
                "id": lid,
                "job_id": fid,
                "status": "awaiting_input",
                "input_schema": {"input_data": lock_fields(&name, &data)},
            }),
            None => json!({"id": id, "job_id": fid, "status": "running"}),
        },
    }
}

/// `POST /provide_input` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProvideInput {
    job_id: String,
    status_id: String,
    #[serde(default)]
    input_data: Option<Value>,
}

/// `POST /mip003/{flow}/provide_input`: answers the open lock `status_id`
/// names. 409 when the job awaits no input, or awaits it under another
/// status id (a stale one); 400 when the lock's form refuses the input.
async fn provide_input(
    State(state): State<Arc<AppState>>,
    Path(flow): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let (def, _, user) = caller(&state, &flow, &headers)?;
    let body: ProvideInput = json_body(body)?
        .ok_or_else(|| ApiError::bad("expected {\"job_id\", \"status_id\", \"input_data\"}"))?;
    let input_data = object("input_data", body.input_data)?;
    let job = job(&state, &user, &flow, &body.job_id).await?;
    still_running(&job.row)?;
    let held = hold_id(&job.row.fid);
    let open: Vec<_> = open_locks(&job.events)
        .into_iter()
        .filter(|(lid, ..)| *lid != held)
        .collect();
    let Some((lid, name, data)) = open.iter().find(|(lid, ..)| *lid == body.status_id) else {
        let why = match open.first() {
            None => format!("job {} is not awaiting input", body.job_id),
            Some((now, ..)) => format!(
                "status_id {} is stale: the job awaits input under status_id {now}",
                body.status_id
            ),
        };
        return Err(ApiError::new(StatusCode::CONFLICT, why));
    };
    let answer = match form_elements(data) {
        Some(elements) => {
            let given = Value::Object(form_inputs(elements, &input_data));
            match &def.admission {
                None => given,
                Some(admission) => match admission.answer(name, data.clone(), given).await {
                    Ok(answer) => answer,
                    Err(refused) => {
                        return refusal(&flow, refused, "the input was refused; still awaiting it");
                    }
                },
            }
        }
        None => match input_data.get(kodo_masumi::ANSWER) {
            Some(answer) => answer.clone(),
            None => {
                let body = Refusal {
                    error: "the input was refused; still awaiting it".into(),
                    errors: json!({ kodo_masumi::ANSWER: ["required"] }),
                };
                return Ok((StatusCode::BAD_REQUEST, Json(body)).into_response());
            }
        },
    };
    state
        .node
        .answer_lock(&job.row.fid, lid, answer)
        .await
        .map_err(control_error)?;
    let hash = input_hash(&job.purchaser, &Value::Object(input_data));
    Ok(Json(json!({"status": "success", "input_hash": hash})).into_response())
}

/// `GET /mip003/{flow}/availability`: `available` while the node takes
/// launches (see `/health/ready`), else 503 `unavailable` saying why.
async fn availability(
    State(state): State<Arc<AppState>>,
    Path(flow): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = caller(&state, &flow, &headers) {
        return refused.into_response();
    }
    let reasons = super::health::not_ready(&state).await;
    if reasons.is_empty() {
        let message = format!("{flow} is ready to accept jobs");
        Json(json!({"status": "available", "type": "masumi-agent", "message": message}))
            .into_response()
    } else {
        let body =
            json!({"status": "unavailable", "type": "masumi-agent", "message": reasons.join("; ")});
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

/// `GET /mip003/{flow}/input_schema`: the flow's form as MIP-003 fields
/// (none without a form: `start_job` then takes any object).
async fn schema(
    State(state): State<Arc<AppState>>,
    Path(flow): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (def, _, _) = caller(&state, &flow, &headers)?;
    let fields = match form_of(&def).await? {
        None => Vec::new(),
        Some(form) => input_schema(form_elements(&form).unwrap_or_default()),
    };
    Ok(Json(json!({ "input_data": fields })).into_response())
}
