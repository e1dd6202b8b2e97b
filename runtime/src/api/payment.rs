//! The payment hook of MIP-003 jobs (`[flows.NAME.masumi] payment_url`),
//! off by default. With it on:
//!
//! 1. `start_job` launches the job held (see `kodo_actors::hold_id`): its
//!    flow does not start, and its status is `awaiting_payment`.
//! 2. kodo asks the payment service for the payment's fields:
//!    `POST payment_url` (`Authorization: Bearer payment_token`) with
//!    `{"job_id", "flow", "identifier_from_purchaser", "input_hash",
//!    "agent_identifier"}`; it answers the MIP-003 payment fields
//!    (`blockchainIdentifier`, `payByTime`, `submitResultTime`,
//!    `unlockTime`, `externalDisputeUnlockTime`, and optionally
//!    `agentIdentifier`, `sellerVKey`), which `start_job` passes on. When
//!    it fails, the job is killed and `start_job` answers 502.
//! 3. Once paid, the payment service confirms: `POST
//!    /mip003/NAME/payment` with `{"job_id"}` and the same bearer secret.
//!    The hold is answered and the flow starts; the answer (200) comes once
//!    the release is stored, and a repeated confirmation gets it again.
//!    Unconfirmed after `payment_timeout` seconds, the job fails.
//!
//! kodo invents no blockchain data: every payment field comes from the
//! payment service.

use super::AppState;
use super::auth::bearer;
use super::error::{ApiError, ApiResult, json_body};
use super::executions::{control_error, still_running};
use crate::config::MasumiSection;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use kodo_actors::{hold_id, stored_lock};
use kodo_core::{Fid, Status, mask_url};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// How long the payment service may take to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// MIP-003's payment times (Unix seconds): from the payment service, or 0
/// with payment off.
pub(super) const TIMES: [&str; 4] = [
    "payByTime",
    "submitResultTime",
    "unlockTime",
    "externalDisputeUnlockTime",
];

/// The name of a job's payment hold (its lock's name).
pub(super) const HOLD: &str = "payment";

/// The hold a job starts with when `masumi` has a payment hook.
pub(super) fn hold(masumi: &MasumiSection, purchaser: &str, hash: &str) -> Option<Value> {
    if masumi.payment_url.is_empty() {
        return None;
    }
    Some(json!({
        "name": HOLD,
        "data": {"identifier_from_purchaser": purchaser, "input_hash": hash},
        "until": kodo_core::now_ts() + masumi.payment_timeout,
    }))
}

/// The payment fields of job `fid` from the payment service, or why not.
pub(super) async fn request(
    state: &AppState,
    flow: &str,
    masumi: &MasumiSection,
    fid: &Fid,
    purchaser: &str,
    hash: &str,
) -> Result<Map<String, Value>, String> {
    let url = mask_url(&masumi.payment_url);
    let body = json!({
        "job_id": fid,
        "flow": flow,
        "identifier_from_purchaser": purchaser,
        "input_hash": hash,
        "agent_identifier": masumi.agent_identifier,
    });
    let answer = state
        .http
        .post(&masumi.payment_url)
        .bearer_auth(&masumi.payment_token)
        .timeout(ANSWER_WITHIN)
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("payment service {url}: {}", without_url(&e)))?;
    let status = answer.status();
    if !status.is_success() {
        return Err(format!("payment service {url} answered {status}"));
    }
    let fields: Value = answer
        .json()
        .await
        .map_err(|e| format!("payment service {url}: not JSON: {}", without_url(&e)))?;
    payment_fields(&fields).map_err(|why| format!("payment service {url}: {why}"))
}

/// A reqwest error's text without the URL (it may hold a password).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "the URL");
    }
    text
}

/// The MIP-003 payment fields of the payment service's answer, checked.
fn payment_fields(answer: &Value) -> Result<Map<String, Value>, String> {
    let mut fields = Map::new();
    match answer["blockchainIdentifier"].as_str() {
        Some(id) if !id.is_empty() => {
            fields.insert("blockchainIdentifier".into(), json!(id));
        }
        _ => return Err("no blockchainIdentifier in its answer".into()),
    }
    for time in TIMES {
        let Some(at) = answer[time].as_i64() else {
            return Err(format!("no {time} (an integer) in its answer"));
        };
        fields.insert(time.into(), json!(at));
    }
    for optional in ["agentIdentifier", "sellerVKey"] {
        if let Some(text) = answer[optional].as_str() {
            fields.insert(optional.into(), json!(text));
        }
    }
    Ok(fields)
}

/// `POST /mip003/{flow}/payment` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Paid {
    job_id: String,
}

/// `POST /mip003/{flow}/payment`: the payment service confirms a job's
/// payment; its hold is answered and its flow starts. 401 without the
/// flow's payment secret, 404 for no such job of this flow, 409 when it
/// does not await payment.
pub(super) async fn confirm(
    State(state): State<Arc<AppState>>,
    Path(flow): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let masumi = state.masumi.get(&flow).cloned().unwrap_or_default();
    let shown = bearer(&headers);
    let secret = masumi.payment_token.as_bytes();
    let right = shown.is_some_and(|shown| bool::from(shown.as_bytes().ct_eq(secret)));
    if masumi.payment_url.is_empty() || !right {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong payment secret (or no payment hook for this flow)",
        ));
    }
    let paid: Paid = json_body(body)?.ok_or_else(|| ApiError::bad("expected {\"job_id\"}"))?;
    let missing = || ApiError::not_found(format!("job {}", paid.job_id));
    let fid = Fid::parse(&paid.job_id).ok_or_else(missing)?;
    let row = match state.node.store().execution(&fid).await {
        Ok(Some(row)) if row.flow == flow => row,
        Ok(_) => return Err(missing()),
        Err(e) => return Err(ApiError::internal(e)),
    };
    let paid = || Ok(Json(json!({"status": "success", "job_id": fid})).into_response());
    match held(&state, &fid).await? {
        // Confirmed before (a retried confirmation): the same answer.
        Held::Released => return paid(),
        Held::Expired => {
            let why = format!("job {fid}: its payment window ended");
            return Err(ApiError::new(StatusCode::CONFLICT, why));
        }
        Held::NotYet if row.status == Status::Starting => {
            let why = format!("job {fid} is not held yet; confirm again");
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, why));
        }
        Held::NotYet => {
            let why = format!("job {fid} is not awaiting payment");
            return Err(ApiError::new(StatusCode::CONFLICT, why));
        }
        Held::Open => {}
    }
    still_running(&row)?;
    state
        .node
        .answer_lock(&fid, &hold_id(&fid), json!({"paid": true}))
        .await
        .map_err(control_error)?;
    // 200 only once the release is stored: a node that dies before cannot
    // lose a confirmation the payment service counts as delivered.
    let start = Instant::now();
    while held(&state, &fid).await? != Held::Released {
        if start.elapsed() > STORED_WITHIN {
            let why = format!("job {fid}: the confirmation is not stored yet; confirm again");
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, why));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!(fid = %fid, flow = %flow, "MIP-003 job paid; its flow starts");
    paid()
}

/// How long a confirmation waits for its release to be stored.
const STORED_WITHIN: Duration = Duration::from_secs(10);

/// Where a job's hold is, as stored.
#[derive(Debug, PartialEq)]
enum Held {
    /// No hold stored (yet).
    NotYet,
    /// Held: awaiting payment.
    Open,
    /// Released by a confirmation.
    Released,
    /// Expired unconfirmed.
    Expired,
}

/// Where `fid`'s hold is, from its stored `lock` and `lease` events.
async fn held(state: &AppState, fid: &Fid) -> ApiResult<Held> {
    let stored = stored_lock(state.node.store(), fid, &hold_id(fid)).await;
    Ok(match stored.map_err(ApiError::internal)? {
        (None, _) => Held::NotYet,
        (Some(_), None) => Held::Open,
        (Some(_), Some(lease)) if lease.get("result").is_some() => Held::Released,
        (Some(_), Some(_)) => Held::Expired,
    })
}
