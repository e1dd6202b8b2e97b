//! The workflow of one durable execution, `kodo_execution`: it runs the
//! flow in the activity `kodo_run` under the retry policy, and when that
//! ends without recording the execution's end (its attempts were all lost,
//! or a kill came between two attempts), records the end with `kodo_close`.
//! Signals: `kill`. Queries: `killed`.
//!
//! Workflow code is replayed: it must stay deterministic (no clock, no IO);
//! the names of the workflow, its activities, signals and queries are fixed
//! here so that running workflows survive a new build.

#![allow(unreachable_pub, missing_docs)]

use crate::activities::KodoActivities;
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
    /// The longest one attempt may run, in milliseconds.
    pub attempt_ms: u64,
}

/// What `kodo_close` records.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Close {
    /// The execution.
    pub launch: Launch,
    /// `killed` (true) or `error`.
    pub killed: bool,
    /// Why.
    pub reason: String,
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
        let options =
            ActivityOptions::with_start_to_close_timeout(Duration::from_millis(launch.attempt_ms))
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
        let ran = temporalio_sdk::workflows::select! {
            ran = attempt.as_mut() => ran,
            _ = ctx.wait_condition(|s: &Self| s.kill.is_some()) => {
                attempt.cancel();
                attempt.await
            }
        };
        let failure = match ran {
            // The activity recorded the end (finished, error or killed).
            Ok(status) => return Ok(status),
            Err(e) => e.to_string(),
        };
        let close = match ctx.state(|s| s.kill.clone()) {
            Some(reason) => Close {
                launch: launch.clone(),
                killed: true,
                reason,
            },
            None => Close {
                launch: launch.clone(),
                killed: false,
                reason: format!("gave up after {} attempt(s): {failure}", launch.attempts),
            },
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
