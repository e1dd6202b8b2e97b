//! The workflow of one durable execution, `kodo_execution`: it runs the
//! flow in the activity `kodo_run` under the retry policy, and when that
//! ends without recording the execution's end (its attempts were all lost,
//! a kill came between two attempts, the execution's time ran out, or the
//! attempt could not record it), records the end with `kodo_close`.
//! Signals: `kill`. Queries: `killed`.
//!
//! Workflow code is replayed: it must stay deterministic (no clock, no IO);
//! the names of the workflow, its activities, signals and queries are fixed
//! here so that running workflows survive a new build.

#![allow(unreachable_pub, missing_docs)]

use crate::activities::KodoActivities;
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use temporalio_client::RetryPolicy;
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{
    ActivityCancellationType, ActivityOptions, ApplicationFailure, CancellableFuture,
    SyncWorkflowContext, WorkflowContext, WorkflowContextView, WorkflowResult,
};

/// The workflow's input: what to run, never a secret.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Launch {
    /// The execution's id.
    pub fid: String,
    /// The flow's name.
    pub flow: String,
    /// Who launched it.
    pub owner: String,
    /// Its inputs.
    pub inputs: serde_json::Value,
    /// Attempts in all.
    pub attempts: u32,
    /// The heartbeat timeout, in milliseconds.
    pub heartbeat_ms: u64,
    /// The longest the execution may run, all attempts (None: no limit).
    pub timeout_ms: Option<u64>,
}

/// How an execution ended: `finished` (text: the result's JSON), `error`
/// or `killed` (text: why).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ending {
    pub status: String,
    pub text: String,
}

/// What an attempt of `kodo_run` answers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ran {
    /// The execution's final status.
    pub status: String,
    /// The end, when the attempt could not record it: `kodo_close` does.
    pub unrecorded: Option<Ending>,
}

/// What `kodo_close` records.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Close {
    /// The execution.
    pub launch: Launch,
    /// Its end.
    pub ending: Ending,
}

#[workflow]
pub struct KodoExecution {
    launch: Launch,
    kill: Option<String>,
}

#[workflow_methods]
impl KodoExecution {
    #[init]
    pub fn new(_ctx: &WorkflowContextView, launch: Launch) -> Self {
        Self { launch, kill: None }
    }

    #[run(name = "kodo_execution")]
    pub async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<String> {
        let launch = ctx.state(|s| s.launch.clone());
        let heartbeat = Duration::from_millis(launch.heartbeat_ms);
        let limit = launch.timeout_ms.map(Duration::from_millis);
        let options = ActivityOptions::with_start_to_close_timeout(
            limit.unwrap_or(Duration::from_secs(365 * 86_400)),
        )
        .heartbeat_timeout(heartbeat)
        .retry_policy(
            RetryPolicy::builder()
                .initial_interval(Duration::from_millis(200))
                .backoff_coefficient(2.0)
                .maximum_interval(Duration::from_secs(5))
                .maximum_attempts(launch.attempts)
                .build(),
        )
        .cancellation_type(ActivityCancellationType::WaitCancellationCompleted)
        .build();
        let attempt = ctx.execute_activity(KodoActivities::run, launch.clone(), options);
        let mut attempt = std::pin::pin!(attempt);
        // The execution's own time limit: a workflow timer, so that the
        // workflow is still there to record the end (Temporal's execution
        // timeout would close it without a word).
        let timer = ctx.clone();
        let out_of_time = async move {
            match limit {
                Some(limit) => {
                    timer.timer(limit).await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        .fuse();
        let mut out_of_time = std::pin::pin!(out_of_time);
        let mut timed_out = false;
        let ran = temporalio_sdk::workflows::select! {
            ran = attempt.as_mut() => ran,
            _ = ctx.wait_condition(|s: &Self| s.kill.is_some()) => {
                attempt.cancel();
                attempt.await
            }
            _ = out_of_time.as_mut() => {
                timed_out = true;
                attempt.cancel();
                attempt.await
            }
        };
        let ending = match ran {
            Ok(Ran {
                unrecorded: Some(ending),
                ..
            }) => ending,
            // The activity recorded the end (finished, error or killed).
            Ok(ran) if !timed_out => return Ok(ran.status),
            ran => match ctx.state(|s| s.kill.clone()) {
                Some(reason) => Ending {
                    status: "killed".into(),
                    text: reason,
                },
                None if timed_out => Ending {
                    status: "error".into(),
                    text: format!(
                        "timed out after {} s",
                        limit.unwrap_or_default().as_secs_f64()
                    ),
                },
                None => Ending {
                    status: "error".into(),
                    text: match ran {
                        Err(e) => format!(
                            "the execution could not go on ({} attempt(s) allowed): {e}",
                            launch.attempts
                        ),
                        Ok(_) => "the execution ended without an outcome".into(),
                    },
                },
            },
        };
        let close = Close {
            launch: launch.clone(),
            ending,
        };
        let options = ActivityOptions::with_start_to_close_timeout(Duration::from_secs(120))
            .heartbeat_timeout(heartbeat.max(Duration::from_secs(10)))
            .retry_policy(
                RetryPolicy::builder()
                    .initial_interval(Duration::from_secs(1))
                    .maximum_interval(Duration::from_secs(30))
                    .build(),
            )
            .build();
        ctx.execute_activity(KodoActivities::close, close, options)
            .await
            .map_err(ApplicationFailure::new)
            .map_err(Into::into)
    }

    #[signal(name = "kill")]
    pub fn kill(&mut self, _ctx: &mut SyncWorkflowContext<Self>, reason: String) {
        if self.kill.is_none() {
            self.kill = Some(reason);
        }
    }

    #[query(name = "killed")]
    pub fn killed(&self, _ctx: &WorkflowContextView) -> Option<String> {
        self.kill.clone()
    }
}
