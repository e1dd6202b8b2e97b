//! The execution supervisor: starts each execution through its backend
//! (see [`crate::backend`]: a Runner, in direct mode), stops executions on
//! request, and makes sure every execution ends with a final status
//! whatever happens to the actor that ran it (see [`crate::policy::RUNNER`]).

use crate::backend::{Execution, SharedBackend};
use crate::flow::{Ctx, ExecLimits, FlowDef, Origin, Recover, Stop};
use crate::locks::Locks;
use crate::policy;
use crate::steps::{Commits, Journal, Steps};
use crate::tracer::{Outcome, Trace, TraceBook, Tracer};
use kodo_core::{Fid, Meta, Status};
use kodo_transport::SharedTransport;
use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Why a launch was refused.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// No flow of that name.
    #[error("unknown flow `{0}`")]
    UnknownFlow(String),
    /// The node runs as many executions as it is configured for.
    #[error("the node runs {0} executions, its limit; try again later")]
    Busy(usize),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// An actor could not be started.
    #[error("could not start the execution: {0}")]
    Spawn(String),
}

/// Messages to the execution supervisor.
pub(crate) enum ExecMsg {
    /// Start an execution with a given id.
    Launch {
        /// The id, chosen by the caller so it can subscribe first.
        fid: Fid,
        /// The flow.
        flow: Arc<FlowDef>,
        /// Who launches it.
        owner: String,
        /// Its inputs.
        inputs: Value,
        /// Set when it runs again after its node died (see [`Resumed`]).
        resumed: Option<Resumed>,
        /// What it was launched with besides its inputs (boxed: the
        /// other messages are small).
        origin: Box<Origin>,
        /// Answered once its Runner runs (with what to wait for, when the
        /// start goes on elsewhere).
        reply: RpcReplyPort<Result<Ready, LaunchError>>,
    },
    /// Stop one execution; answers false when it is not running here.
    Stop {
        /// Which.
        fid: Fid,
        /// How and why.
        stop: Stop,
        /// Whether it was running here.
        reply: RpcReplyPort<bool>,
    },
    /// Refuse new launches, stop every execution, answer when none is left.
    StopAll {
        /// Why.
        reason: String,
        /// Answered when every execution has recorded its end (or was left
        /// to resume at the next start), with the executions that ended
        /// meanwhile and the last seq each published.
        reply: RpcReplyPort<Vec<(Fid, u64)>>,
    },
    /// An execution's final status is recorded (sent by the supervisor to itself).
    Ended(Fid),
    /// How many executions run now.
    Count(RpcReplyPort<usize>),
}

/// An execution run again after its node died (`recover = "resume"`).
#[derive(Debug)]
pub(crate) struct Resumed {
    /// What is stored of it (its Tracer goes on after).
    pub book: TraceBook,
    /// This run's number (2, 3...).
    pub attempt: u32,
    /// The steps it completed.
    pub journal: Journal,
    /// The `debug` event that marks the new attempt.
    pub marker: String,
}

/// What a launch waits for after the supervisor started it (see `Started::ready`).
pub(crate) type Ready = Option<tokio::sync::oneshot::Receiver<Result<(), String>>>;

/// The fixed parts every execution gets.
#[derive(Clone, Debug)]
pub(crate) struct ExecShared {
    /// How executions run.
    pub backend: SharedBackend,
    /// Where events go.
    pub transport: SharedTransport,
    /// The node's open locks.
    pub locks: Locks,
    /// Per-execution limits.
    pub limits: ExecLimits,
    /// This node's name, recorded in `meta`.
    pub node: String,
    /// The most executions at once.
    pub max_live: usize,
    /// How many run now (what the node's lease shows the cluster).
    pub running: Arc<AtomicUsize>,
    /// How a step waits until its result is stored.
    pub commits: Commits,
    /// Whether a shutdown leaves resuming executions to the next start
    /// (a node alone; in a cluster nobody would take them over).
    pub resume_after_stop: bool,
    /// What this process counts.
    pub metrics: kodo_metrics::SharedMetrics,
    /// The spans of the executions running here.
    pub spans: Arc<crate::spans::SpanBook>,
}

// The policy this supervisor applies to its children: a Runner that ends
// or fails is never started again, its execution ends (`runner_exited`).
// A policy that allowed restarts would need code here that restarts.
const _: () = assert!(policy::RUNNER.max_restarts == 0);

/// The execution supervisor actor.
pub(crate) struct Executions;

/// The supervisor's state.
pub(crate) struct ExecState {
    shared: ExecShared,
    live: HashMap<Fid, Ctx>,
    /// The actor of each execution, and whether this node records its end
    /// should the actor stop without one (see `Started::fallback_end`).
    runners: HashMap<ActorId, (Fid, bool, ActorCell)>,
    draining: Option<Draining>,
}

/// What the supervisor keeps while it stops everything.
#[derive(Default)]
struct Draining {
    waiters: Vec<RpcReplyPort<Vec<(Fid, u64)>>>,
    ended: Vec<(Fid, u64)>,
}

impl Executions {
    #[allow(clippy::too_many_arguments)]
    async fn launch(
        myself: &ActorRef<ExecMsg>,
        state: &mut ExecState,
        fid: Fid,
        flow: Arc<FlowDef>,
        owner: String,
        inputs: Value,
        resumed: Option<Resumed>,
        origin: Origin,
    ) -> Result<Ready, LaunchError> {
        if state.draining.is_some() {
            return Err(LaunchError::ShuttingDown);
        }
        if state.live.len() >= state.shared.max_live {
            return Err(LaunchError::Busy(state.live.len()));
        }
        let (book, attempt, journal, retry) = match resumed {
            None => (
                TraceBook::new(state.shared.limits.max_payload),
                1,
                Journal::default(),
                None,
            ),
            Some(r) => (
                r.book.with_attempt(r.attempt),
                r.attempt,
                r.journal,
                Some(r.marker),
            ),
        };
        let tracer = Tracer::resume(fid.clone(), book, state.shared.transport.clone())
            .counted(state.shared.metrics.execution(&flow.name));
        let tracer = Arc::new(tracer);
        let ctx = Ctx::new(
            fid.clone(),
            &flow.name,
            &owner,
            tracer,
            Arc::new(state.shared.locks.clone()),
            state.shared.limits.clone(),
            attempt,
            Steps::new(journal, state.shared.commits.clone()).resuming(
                state.shared.resume_after_stop
                    && flow.recover == Recover::Resume
                    && attempt < flow.attempts
                    && !state.shared.backend.durable(&flow.name),
            ),
        )
        .with_origin(origin)
        .listed_in(&state.shared.spans);
        let begin = match retry {
            Some(marker) => Trace::Retry(marker),
            None => {
                let meta = Meta {
                    flow: flow.name.clone(),
                    owner: owner.clone(),
                    node: state.shared.node.clone(),
                    kodo: env!("CARGO_PKG_VERSION").to_string(),
                    trace: ctx.traceparent(),
                    launch: ctx.launch().cloned(),
                    job: ctx.job().cloned(),
                };
                Trace::Begin {
                    meta: serde_json::to_string(&meta).expect("meta serializes"),
                    inputs: inputs.to_string(),
                }
            }
        };
        let execution = Execution {
            ctx: ctx.clone(),
            flow,
            inputs,
            begin,
        };
        let backend = &state.shared.backend;
        tracing::info!(%fid, flow = %execution.flow.name, %owner, backend = backend.name(), "execution launched");
        let started = backend
            .start(execution, myself.get_cell())
            .await
            .map_err(LaunchError::Spawn)?;
        state.runners.insert(
            started.actor.get_id(),
            (fid.clone(), started.fallback_end, started.actor),
        );
        state.live.insert(fid, ctx);
        Ok(started.ready)
    }

    /// A Runner stopped or failed: make sure its execution ends. Recording
    /// the end may wait on a full transport, so it runs beside the supervisor,
    /// which hears `Ended` when it is done.
    fn runner_exited(
        myself: &ActorRef<ExecMsg>,
        state: &mut ExecState,
        cell: ActorCell,
        failure: Option<String>,
    ) {
        let Some((fid, fallback_end, _)) = state.runners.remove(&cell.get_id()) else {
            return;
        };
        let Some(ctx) = state.live.get(&fid).cloned() else {
            return;
        };
        if !fallback_end {
            // Its backend records the end, elsewhere; here it is only gone.
            if let Some(err) = failure {
                tracing::error!(%fid, error = %err, "the actor of a durable execution failed");
            }
            let _ = myself.cast(ExecMsg::Ended(fid));
            return;
        }
        let reason = match &failure {
            Some(err) => {
                tracing::error!(%fid, error = %err, "runner crashed");
                format!("runner crashed: {err}")
            }
            None => "runner stopped without an outcome".into(),
        };
        // Stopped by the node's shutdown and left to resume: no end.
        let left_to_resume = ctx.left_to_resume();
        // Kills a command flow's process group and ends its lock waits.
        ctx.stop(Stop::new(Status::Error, reason.clone()));
        let me = myself.clone();
        tokio::spawn(async move {
            if left_to_resume {
                let _ = me.cast(ExecMsg::Ended(ctx.fid().clone()));
                return;
            }
            // Ignored by the Tracer when the execution already ended.
            if !ctx.tracer().ended().await {
                ctx.span().record("status", "error");
            }
            if let Err(e) = ctx
                .tracer()
                .trace(Trace::Finish(Outcome::Failed(reason)))
                .await
            {
                tracing::error!(fid = %ctx.fid(), error = %e, "could not record the end");
            }
            let _ = me.cast(ExecMsg::Ended(ctx.fid().clone()));
        });
    }
}

impl Actor for Executions {
    type Msg = ExecMsg;
    type State = ExecState;
    type Arguments = ExecShared;

    async fn pre_start(
        &self,
        _myself: ActorRef<ExecMsg>,
        shared: ExecShared,
    ) -> Result<ExecState, ActorProcessingErr> {
        Ok(ExecState {
            shared,
            live: HashMap::new(),
            runners: HashMap::new(),
            draining: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ExecMsg>,
        msg: ExecMsg,
        state: &mut ExecState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ExecMsg::Launch {
                fid,
                flow,
                owner,
                inputs,
                resumed,
                origin,
                reply,
            } => {
                let result =
                    Self::launch(&myself, state, fid, flow, owner, inputs, resumed, *origin).await;
                let _ = reply.send(result);
            }
            ExecMsg::Stop { fid, stop, reply } => {
                let ctx = state.live.get(&fid);
                if let Some(ctx) = ctx {
                    // A mark in the execution's trace: when the stop came, and why.
                    tracing::info_span!(parent: ctx.span(), "kill", reason = %stop.reason)
                        .in_scope(|| {});
                    ctx.stop(stop);
                }
                let _ = reply.send(ctx.is_some());
            }
            ExecMsg::StopAll { reason, reply } => {
                // Durable executions go on without this node: stop following them.
                for (_, fallback_end, actor) in state.runners.values() {
                    if !fallback_end {
                        actor.kill();
                    }
                }
                for ctx in state.live.values() {
                    ctx.stop(Stop {
                        node_stopping: true,
                        ..Stop::new(Status::Killed, reason.clone())
                    });
                }
                let draining = state.draining.get_or_insert_with(Draining::default);
                if state.live.is_empty() {
                    let _ = reply.send(draining.ended.clone());
                } else {
                    draining.waiters.push(reply);
                }
            }
            ExecMsg::Ended(fid) => {
                let ctx = state.live.remove(&fid);
                if let (Some(ctx), Some(draining)) = (ctx, state.draining.as_mut()) {
                    draining.ended.push((fid, ctx.tracer().published()));
                    if state.live.is_empty() {
                        for reply in draining.waiters.drain(..) {
                            let _ = reply.send(draining.ended.clone());
                        }
                    }
                }
            }
            ExecMsg::Count(reply) => {
                let _ = reply.send(state.live.len());
            }
        }
        state
            .shared
            .running
            .store(state.live.len(), Ordering::Relaxed);
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<ExecMsg>,
        event: SupervisionEvent,
        state: &mut ExecState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                Self::runner_exited(&myself, state, cell, None)
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                Self::runner_exited(&myself, state, cell, Some(err.to_string()))
            }
            _ => {}
        }
        Ok(())
    }
}
