//! What Temporal knows of one durable execution, for `GET
//! /executions/{fid}/durable`: the workflow's status, the running
//! attempt and the last seq it reported (from its heartbeats), and what
//! the workflow holds (pause, kill, open locks: its `state` query).

use crate::control::{self, AskError, Handle};
use serde::Serialize;
use std::time::Duration;
use temporalio_client::WorkflowDescribeOptions;
use temporalio_client::errors::WorkflowInteractionError;

/// How long the `state` query may wait for a worker.
const QUERY_WITHIN: Duration = Duration::from_secs(3);

/// One open lock, as the workflow keeps it.
#[derive(Debug, Serialize)]
pub struct OpenLock {
    /// Its id.
    pub lid: String,
    /// When it expires (Unix seconds).
    pub expires: f64,
}

/// What Temporal knows of a durable execution.
#[derive(Debug, Serialize)]
pub struct Described {
    /// The workflow's id.
    pub workflow_id: String,
    /// The workflow's status (`running`, `completed`, `failed`, ...).
    pub workflow_status: String,
    /// The attempt of the flow that runs or waits to run (none once over).
    pub attempt: Option<u32>,
    /// The highest seq that attempt published, as its last heartbeat said
    /// (heartbeats are throttled: it lags by up to the heartbeat interval,
    /// 0.4 x the heartbeat timeout, 0.5-5 s).
    pub last_seq: Option<u64>,
    /// The worker that ran it last.
    pub worker: Option<String>,
    /// Whether it is paused (None: no worker answered the query).
    pub paused: Option<bool>,
    /// Why it is being killed, if it is.
    pub killed: Option<String>,
    /// Its open locks (None: no worker answered the query).
    pub open_locks: Option<Vec<OpenLock>>,
}

/// Describes the execution of workflow `handle`; Ok(None): no such workflow.
pub(crate) async fn describe(handle: &Handle, id: String) -> Result<Option<Described>, String> {
    let described = handle.describe(WorkflowDescribeOptions::default());
    let description = match tokio::time::timeout(Duration::from_secs(10), described).await {
        Ok(Ok(d)) => d,
        Ok(Err(WorkflowInteractionError::NotFound(_))) => return Ok(None),
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("no answer within 10 s".into()),
    };
    let activity = description.raw_description.pending_activities.first();
    let last_seq = activity
        .and_then(|a| a.heartbeat_details.as_ref())
        .and_then(|d| d.payloads.first())
        .and_then(|p| serde_json::from_slice::<Option<u64>>(&p.data).ok())
        .flatten();
    let asked = match control::asked_within(handle, QUERY_WITHIN).await {
        Ok(asked) => Some(asked),
        Err(AskError::NotFound) => return Ok(None),
        Err(AskError::NoWorker) => None,
        Err(e) => return Err(e.to_string()),
    };
    Ok(Some(Described {
        workflow_id: id,
        workflow_status: format!("{:?}", description.status()).to_lowercase(),
        attempt: activity.map(|a| a.attempt.max(1) as u32),
        last_seq,
        worker: activity
            .map(|a| a.last_worker_identity.clone())
            .filter(|w| !w.is_empty()),
        paused: asked.as_ref().map(|a| a.paused),
        killed: asked.as_ref().and_then(|a| a.killed.clone()),
        open_locks: asked.map(|a| {
            a.locks
                .into_iter()
                .filter(|(_, lock)| lock.is_open())
                .map(|(key, lock)| OpenLock {
                    lid: crate::workflow::lid_of(&key).to_string(),
                    expires: lock.expires_ms as f64 / 1000.0,
                })
                .collect()
        }),
    }))
}
