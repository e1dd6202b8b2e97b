//! The `ExecutionBackend` of durable mode: a launch starts the execution's
//! workflow (a duplicate id is refused) and a `Watcher` actor that follows
//! it for the launching node's supervisor and passes kills on. Flows not
//! in durable mode go to the direct backend.

use crate::Temporal;
use crate::control::{self, AskError, Handle};
use crate::workflow::{Answer, Asked, KodoExecution, Launch};
use async_trait::async_trait;
use kodo_actors::{Control, ControlError, Ctx, Direct, Execution, ExecutionBackend, Started, Stop};
use kodo_cluster::SharedCluster;
use kodo_core::Fid;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use temporalio_client::errors::WorkflowStartError;
use temporalio_client::{
    WorkflowGetResultOptions, WorkflowIdConflictPolicy, WorkflowIdReusePolicy,
    WorkflowSignalOptions, WorkflowStartOptions,
};

/// Runs the flows named durable as Temporal workflows, the others directly.
#[derive(Debug)]
pub struct TemporalBackend {
    temporal: Arc<Temporal>,
    /// Flows in durable mode; `None`: all of them.
    durable: Option<HashSet<String>>,
    /// Where pauses and answers are announced to the attempts.
    cluster: SharedCluster,
}

impl TemporalBackend {
    /// A backend for `temporal`: every flow durable (`durable` None), or
    /// only those named; pauses and answers are announced on `cluster`.
    pub fn new(
        temporal: Arc<Temporal>,
        durable: Option<HashSet<String>>,
        cluster: SharedCluster,
    ) -> Self {
        Self {
            temporal,
            durable,
            cluster,
        }
    }

    /// Records `control` in the execution's workflow, if it fits what the
    /// workflow holds. While no worker answers (none runs: the request
    /// still counts, taken up by the next attempt), it is recorded
    /// unchecked: the workflow ignores a pause of a paused execution, and
    /// any answer but a lock's first.
    async fn ask(&self, fid: &Fid, control: Control) -> Result<(), ControlError> {
        let unreachable = |e: &dyn std::fmt::Display| {
            ControlError::Unreachable(format!(
                "temporal at {}: {e}",
                self.temporal.options.address
            ))
        };
        let handle = self.temporal.handle(fid);
        let asked = match control::asked_within(&handle, CHECK_WITHIN).await {
            Ok(asked) => Some(asked),
            Err(AskError::NotFound) => return Direct.control(fid, control).await,
            Err(AskError::NoWorker) => {
                tracing::info!(%fid, "no worker answers: the request is recorded unchecked");
                None
            }
            Err(e) => return Err(unreachable(&e)),
        };
        if let Some(asked) = &asked {
            refused(fid, asked, &control)?;
        }
        let options = WorkflowSignalOptions::default;
        let sent = match control {
            Control::Pause => {
                control::sent(handle.signal(KodoExecution::pause, (), options())).await
            }
            Control::Resume => {
                control::sent(handle.signal(KodoExecution::resume, (), options())).await
            }
            Control::Answer { lid, answer } => {
                control::sent(handle.signal(
                    KodoExecution::answer,
                    Answer { lid, answer },
                    options(),
                ))
                .await
            }
        };
        match sent {
            Ok(true) => Ok(()),
            Ok(false) => Err(ControlError::Conflict(format!("execution {fid} has ended"))),
            Err(e) => Err(unreachable(&e)),
        }
    }

    fn is_durable(&self, flow: &str) -> bool {
        self.durable
            .as_ref()
            .is_none_or(|names| names.contains(flow))
    }
}

async fn signal_kill(handle: &Handle, reason: &str) -> Result<bool, String> {
    control::sent(handle.signal(
        KodoExecution::kill,
        reason.to_string(),
        WorkflowSignalOptions::default(),
    ))
    .await
}

#[async_trait]
impl ExecutionBackend for TemporalBackend {
    fn name(&self) -> &'static str {
        "temporal"
    }

    fn durable(&self, flow: &str) -> bool {
        self.is_durable(flow)
    }

    async fn start(&self, execution: Execution, supervisor: ActorCell) -> Result<Started, String> {
        if !self.is_durable(&execution.flow.name) {
            return Direct.start(execution, supervisor).await;
        }
        let options = &self.temporal.options;
        let ctx = execution.ctx.clone();
        let launch = Launch {
            fid: ctx.fid().to_string(),
            flow: execution.flow.name.clone(),
            owner: ctx.owner().to_string(),
            inputs: execution.inputs,
            attempts: options.attempts,
            heartbeat_ms: options.heartbeat_timeout.as_millis() as u64,
            timeout_ms: options.execution_timeout.map(|t| t.as_millis() as u64),
            traceparent: ctx.traceparent(),
            launch: ctx.launch().cloned(),
            job: ctx.job().cloned(),
        };
        // The workflow is started by the watcher, not here: this runs in the
        // node's supervisor, and Temporal may take seconds to answer.
        let (ready, started) = tokio::sync::oneshot::channel();
        let args = Watch {
            temporal: self.temporal.clone(),
            launch,
            ctx,
            ready,
        };
        let (watcher, _) = Actor::spawn_linked(None, Watcher, args, supervisor)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Started {
            actor: watcher.get_cell(),
            fallback_end: false,
            ready: Some(started),
        })
    }

    async fn stop(&self, fid: &Fid, stop: Stop) -> Result<bool, String> {
        signal_kill(&self.temporal.handle(fid), &stop.reason).await
    }

    /// What Temporal knows of the execution (see [`crate::Described`]).
    async fn describe(&self, fid: &Fid) -> Result<Option<serde_json::Value>, String> {
        let id = self.temporal.workflow_id(fid);
        let described = crate::described::describe(&self.temporal.handle(fid), id)
            .await
            .map_err(|e| format!("temporal at {}: {e}", self.temporal.options.address))?;
        Ok(described.map(|d| serde_json::to_value(d).expect("serializes")))
    }

    /// Pause, resume and lock answers are recorded in the execution's
    /// workflow, then the attempt running it (on any worker) is nudged.
    async fn control(&self, fid: &Fid, control: Control) -> Result<(), ControlError> {
        self.ask(fid, control).await?;
        self.cluster.nudge(fid).await;
        Ok(())
    }
}

/// How long a pause, resume or answer waits for a worker to say whether it
/// fits the execution's state.
const CHECK_WITHIN: Duration = Duration::from_secs(3);

/// Why `control` does not fit what the workflow holds, if it does not.
fn refused(fid: &Fid, asked: &Asked, control: &Control) -> Result<(), ControlError> {
    let conflict = |why: &str| Err(ControlError::Conflict(format!("execution {fid} {why}")));
    match control {
        _ if asked.killed.is_some() => conflict("is being killed"),
        Control::Pause if asked.paused => conflict("is paused already"),
        Control::Resume if !asked.paused => conflict("is not paused"),
        Control::Answer { lid, .. } if crate::workflow::open_key(&asked.locks, lid).is_none() => {
            Err(ControlError::NotFound(format!(
                "no open lock {lid} in execution {fid}"
            )))
        }
        _ => Ok(()),
    }
}

/// Starts one durable execution's workflow for the node that launched it
/// (a duplicate id is refused), says so through `ready`, then follows it:
/// stops when the workflow is over (or the node stops), and passes a kill
/// on as the workflow's `kill` signal.
#[derive(Debug)]
struct Watcher;

/// What a watcher starts and follows.
struct Watch {
    temporal: Arc<Temporal>,
    launch: Launch,
    ctx: Ctx,
    ready: tokio::sync::oneshot::Sender<Result<(), String>>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("fid", &self.launch.fid)
            .finish_non_exhaustive()
    }
}

/// The watcher's one message: start, then follow (sent to itself at start).
#[derive(Debug)]
struct Follow;

impl Actor for Watcher {
    type Msg = Follow;
    type State = Option<Watch>;
    type Arguments = Watch;

    async fn pre_start(
        &self,
        myself: ActorRef<Follow>,
        args: Watch,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.cast(Follow)?;
        Ok(Some(args))
    }

    async fn handle(
        &self,
        myself: ActorRef<Follow>,
        _msg: Follow,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(watch) = state.take() {
            let started = start_workflow(&watch.temporal, watch.launch).await;
            let ok = started.is_ok();
            let _ = watch.ready.send(started);
            if ok {
                follow(&watch.temporal.handle(watch.ctx.fid()), &watch.ctx).await;
            }
        }
        myself.stop(None);
        Ok(())
    }
}

/// Starts the workflow of `launch`; a duplicate id is refused.
async fn start_workflow(temporal: &Temporal, launch: Launch) -> Result<(), String> {
    let options = &temporal.options;
    let id = temporal.workflow_id(&launch.fid);
    let start = WorkflowStartOptions::new(options.task_queue.clone(), id.clone())
        .id_conflict_policy(WorkflowIdConflictPolicy::Fail)
        .id_reuse_policy(WorkflowIdReusePolicy::RejectDuplicate)
        // A worker in this process with a free slot takes the first
        // workflow task straight from the start's answer (when the server
        // allows it), not through the task queue.
        .enable_eager_workflow_start(true)
        .build();
    let started = temporal
        .client
        .start_workflow(KodoExecution::run, launch, start);
    match tokio::time::timeout(Duration::from_secs(10), started).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(WorkflowStartError::AlreadyStarted { .. })) => {
            Err(format!("temporal: workflow {id} exists already"))
        }
        Ok(Err(e)) => Err(format!("temporal at {}: {e}", options.address)),
        Err(_) => Err(format!(
            "temporal at {}: no answer within 10 s (the execution may have started)",
            options.address
        )),
    }
}

/// Waits for the workflow's end, passing a kill on; returns early when the
/// node stops (the execution goes on without this node).
async fn follow(handle: &Handle, ctx: &Ctx) {
    let mut killed = false;
    let mut backoff = Duration::from_millis(100);
    loop {
        let result = handle.get_result(WorkflowGetResultOptions::default());
        tokio::select! {
            result = result => match result {
                Ok(_) => return,
                Err(e) if e.is_workflow_outcome() => return,
                Err(e) => {
                    tracing::warn!(fid = %ctx.fid(), error = %e, retry_in = ?backoff, "cannot follow a durable execution");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            },
            stop = ctx.stopped(), if !killed => {
                if stop.node_stopping {
                    return;
                }
                killed = true;
                if let Err(e) = signal_kill(handle, &stop.reason).await {
                    tracing::error!(fid = %ctx.fid(), error = %e, "could not pass a kill on to Temporal");
                }
            }
        }
    }
}
