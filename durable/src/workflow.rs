//! The workflow of one durable execution, `kodo_execution`: it runs the
//! flow in the activity `kodo_run` under the retry policy, and when that
//! ends without recording the execution's end (its attempts were all lost,
//! a kill came between two attempts, the execution's time ran out, or the
//! attempt could not record it), records the end with `kodo_close`.
//! Signals: `kill`, `pause`, `resume`, `open_lock` (from the attempt),
//! `answer`. Query: `state` (what was asked of the execution: killed,
//! paused, its locks).
//!
//! Pauses and locks live here, not on any node: an attempt learns of them
//! by querying `state` (see `control.rs`). A lock expires by a workflow
//! timer.
//!
//! Workflow code is replayed: it must stay deterministic (no clock, no IO);
//! the names of the workflow, its activities, signals and queries are fixed
//! here so that running workflows survive a new build.

#![allow(unreachable_pub, missing_docs)]

use crate::activities::KodoActivities;
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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
    /// The W3C `traceparent` of the launching node's execution span: each
    /// attempt's span is its child, so one trace holds every attempt.
    #[serde(default)]
    pub traceparent: Option<String>,
    /// What the flow's form decided at the launch (see `Origin::launch`).
    #[serde(default)]
    pub launch: Option<serde_json::Value>,
    /// What the launching API keeps with it (see `Origin::job`).
    #[serde(default)]
    pub job: Option<serde_json::Value>,
}

impl Launch {
    /// What each attempt is launched with besides the inputs.
    pub fn origin(&self) -> kodo_actors::Origin {
        kodo_actors::Origin {
            traceparent: self.traceparent.clone(),
            launch: self.launch.clone(),
            job: self.job.clone(),
        }
    }
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

/// A lock of the execution, as the workflow keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LockRecord {
    /// When it expires (Unix milliseconds, the workflow's clock).
    pub expires_ms: u64,
    /// Its answer, once given.
    pub answer: Option<serde_json::Value>,
    /// Whether it expired unanswered.
    pub expired: bool,
}

impl LockRecord {
    /// Whether it still waits for an answer.
    pub fn is_open(&self) -> bool {
        self.answer.is_none() && !self.expired
    }
}

/// The lock id of a workflow key.
pub fn lid_of(key: &str) -> &str {
    key.split_once('\u{1f}').map_or(key, |(lid, _)| lid)
}

/// The key of the open lock of id `lid` among `locks`, if one is open.
pub fn open_key<'a>(locks: &'a BTreeMap<String, LockRecord>, lid: &str) -> Option<&'a str> {
    locks
        .iter()
        .find(|(key, lock)| lid_of(key) == lid && lock.is_open())
        .map(|(key, _)| key.as_str())
}

/// An attempt opens lock `lid` (a key: see `control::lock_key`), to expire
/// after `wait_ms` (unless the workflow has it already: an earlier attempt
/// opened it).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Opening {
    pub lid: String,
    pub wait_ms: u64,
}

/// An answer to lock `lid`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Answer {
    pub lid: String,
    pub answer: serde_json::Value,
}

/// What was asked of the execution: the query `state`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Asked {
    /// Killed, and why.
    pub killed: Option<String>,
    /// Paused (and not resumed since).
    pub paused: bool,
    /// Its locks, by id.
    pub locks: BTreeMap<String, LockRecord>,
}

#[workflow]
pub struct KodoExecution {
    launch: Launch,
    kill: Option<String>,
    paused: bool,
    locks: BTreeMap<String, LockRecord>,
    /// Answers to locks the workflow has not recorded yet: an attempt's
    /// `open_lock` and the answer can reach a workflow task together (its
    /// worker was gone meanwhile), and the answer's handler may run first.
    early: BTreeMap<String, serde_json::Value>,
}

#[workflow_methods]
impl KodoExecution {
    #[init]
    pub fn new(_ctx: &WorkflowContextView, launch: Launch) -> Self {
        Self {
            launch,
            kill: None,
            paused: false,
            locks: BTreeMap::new(),
            early: BTreeMap::new(),
        }
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

    #[signal(name = "pause")]
    pub fn pause(&mut self, _ctx: &mut SyncWorkflowContext<Self>) {
        self.paused = true;
    }

    #[signal(name = "resume")]
    pub fn resume(&mut self, _ctx: &mut SyncWorkflowContext<Self>) {
        self.paused = false;
    }

    /// Records a lock an attempt opened and expires it by a timer; a lock
    /// the workflow has already (opened by an earlier attempt) stays as is.
    #[signal(name = "open_lock")]
    pub async fn open_lock(ctx: &mut WorkflowContext<Self>, opening: Opening) {
        let now = ctx
            .workflow_time()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |t| t.as_millis() as u64);
        let lid = opening.lid;
        let new = ctx.state_mut(|s| {
            if s.locks.contains_key(&lid) {
                return false;
            }
            let record = LockRecord {
                expires_ms: now.saturating_add(opening.wait_ms),
                answer: s.early.remove(lid_of(&lid)),
                expired: false,
            };
            s.locks.insert(lid.clone(), record);
            true
        });
        if new {
            ctx.timer(Duration::from_millis(opening.wait_ms)).await;
            ctx.state_mut(|s| {
                if let Some(lock) = s.locks.get_mut(&lid)
                    && lock.answer.is_none()
                {
                    lock.expired = true;
                }
            });
        }
    }

    /// Answers the open lock of id `lid`; the first answer wins, and none
    /// counts after the lock expired. An answer to a lock not recorded at
    /// all yet is kept for its opening (see `early`).
    #[signal(name = "answer")]
    pub fn answer(&mut self, _ctx: &mut SyncWorkflowContext<Self>, answer: Answer) {
        let key = open_key(&self.locks, &answer.lid).map(str::to_string);
        if let Some(lock) = key.and_then(|key| self.locks.get_mut(&key)) {
            lock.answer = Some(answer.answer);
        } else if !self.locks.keys().any(|key| lid_of(key) == answer.lid) {
            self.early.entry(answer.lid).or_insert(answer.answer);
        }
    }

    #[query(name = "state")]
    pub fn state(&self, _ctx: &WorkflowContextView) -> Asked {
        Asked {
            killed: self.kill.clone(),
            paused: self.paused,
            locks: self.locks.clone(),
        }
    }
}
