//! The `ExecutionBackend` of durable mode: a launch starts the execution's
//! workflow (a duplicate id is refused) and a `Watcher` actor that follows
//! it for the launching node's supervisor and passes kills on. Flows not
//! in durable mode go to the direct backend.

use crate::Temporal;
use crate::workflow::{KodoExecution, Launch};
use async_trait::async_trait;
use kodo_actors::{Ctx, Direct, Execution, ExecutionBackend, Started, Stop};
use kodo_core::Fid;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use temporalio_client::errors::{WorkflowInteractionError, WorkflowStartError};
use temporalio_client::{
    Client, WorkflowGetResultOptions, WorkflowHandle, WorkflowIdConflictPolicy,
    WorkflowIdReusePolicy, WorkflowSignalOptions, WorkflowStartOptions,
};

/// Runs the flows named durable as Temporal workflows, the others directly.
#[derive(Debug)]
pub struct TemporalBackend {
    temporal: Arc<Temporal>,
    /// Flows in durable mode; `None`: all of them.
    durable: Option<HashSet<String>>,
}

impl TemporalBackend {
    /// A backend for `temporal`: every flow durable (`durable` None), or
    /// only those named.
    pub fn new(temporal: Arc<Temporal>, durable: Option<HashSet<String>>) -> Self {
        Self { temporal, durable }
    }

    fn is_durable(&self, flow: &str) -> bool {
        self.durable
            .as_ref()
            .is_none_or(|names| names.contains(flow))
    }

    async fn signal_kill(&self, fid: &Fid, reason: &str) -> Result<bool, String> {
        let handle = self
            .temporal
            .client
            .get_workflow_handle::<KodoExecution>(self.temporal.workflow_id(fid));
        signal_kill(&handle, reason).await
    }
}

async fn signal_kill(
    handle: &WorkflowHandle<Client, KodoExecution>,
    reason: &str,
) -> Result<bool, String> {
    let sent = handle.signal(
        KodoExecution::kill,
        reason.to_string(),
        WorkflowSignalOptions::default(),
    );
    match tokio::time::timeout(Duration::from_secs(10), sent).await {
        Ok(Ok(())) => Ok(true),
        Ok(Err(WorkflowInteractionError::NotFound(_))) => Ok(false),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 10 s".into()),
    }
}

#[async_trait]
impl ExecutionBackend for TemporalBackend {
    fn name(&self) -> &'static str {
        "temporal"
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
        self.signal_kill(fid, &stop.reason).await
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
                let id = watch.temporal.workflow_id(watch.ctx.fid());
                let handle = watch
                    .temporal
                    .client
                    .get_workflow_handle::<KodoExecution>(id);
                follow(&handle, &watch.ctx).await;
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
async fn follow(handle: &WorkflowHandle<Client, KodoExecution>, ctx: &Ctx) {
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
