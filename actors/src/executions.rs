//! The execution supervisor: starts a Tracer and a Runner per execution,
//! stops executions on request, and makes sure every execution ends with a
//! final status whatever happens to its actors (see [`crate::policy`]).

use crate::flow::{Ctx, ExecLimits, FlowDef, Stop};
use crate::locks::Locks;
use crate::policy::{self, RestartLog};
use crate::runner::{Runner, RunnerArgs};
use crate::tracer::{Outcome, Trace, TraceBook, Tracer, TracerArgs, TracerMsg};
use kodo_core::{Fid, Meta, Status};
use kodo_transport::SharedTransport;
use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

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
pub enum ExecMsg {
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
        /// Answered once its actors run.
        reply: RpcReplyPort<Result<(), LaunchError>>,
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
        /// Answered when every execution has ended.
        reply: RpcReplyPort<()>,
    },
    /// How many executions run now.
    Count(RpcReplyPort<usize>),
}

/// The fixed parts every execution gets.
#[derive(Clone)]
pub struct ExecShared {
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
}

/// The execution supervisor actor.
pub struct Executions;

struct Live {
    ctx: Ctx,
    book: Arc<Mutex<TraceBook>>,
    tracer: ActorRef<TracerMsg>,
    runner_alive: bool,
    tracer_alive: bool,
    tracer_restarts: RestartLog,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    Runner,
    Tracer,
}

/// The supervisor's state.
pub struct ExecState {
    shared: ExecShared,
    live: HashMap<Fid, Live>,
    actors: HashMap<ActorId, (Fid, Role)>,
    draining: Option<Vec<RpcReplyPort<()>>>,
}

impl Executions {
    async fn spawn_tracer(
        myself: &ActorRef<ExecMsg>,
        state: &mut ExecState,
        fid: &Fid,
        book: Arc<Mutex<TraceBook>>,
    ) -> Result<ActorRef<TracerMsg>, LaunchError> {
        let args = TracerArgs {
            fid: fid.clone(),
            book,
            transport: state.shared.transport.clone(),
        };
        let (tracer, _) = Actor::spawn_linked(None, Tracer, args, myself.get_cell())
            .await
            .map_err(|e| LaunchError::Spawn(e.to_string()))?;
        state
            .actors
            .insert(tracer.get_id(), (fid.clone(), Role::Tracer));
        Ok(tracer)
    }

    async fn launch(
        myself: &ActorRef<ExecMsg>,
        state: &mut ExecState,
        fid: Fid,
        flow: Arc<FlowDef>,
        owner: String,
        inputs: Value,
    ) -> Result<(), LaunchError> {
        if state.draining.is_some() {
            return Err(LaunchError::ShuttingDown);
        }
        if state.live.len() >= state.shared.max_live {
            return Err(LaunchError::Busy(state.live.len()));
        }
        let book = Arc::new(Mutex::new(TraceBook::new(state.shared.limits.max_payload)));
        let tracer = Self::spawn_tracer(myself, state, &fid, book.clone()).await?;
        let meta = Meta {
            flow: flow.name.clone(),
            owner: owner.clone(),
            node: state.shared.node.clone(),
            kodo: env!("CARGO_PKG_VERSION").to_string(),
        };
        let begin = Trace::Begin {
            meta: serde_json::to_string(&meta).expect("meta serializes"),
            inputs: inputs.to_string(),
        };
        // Cast, not call: the mailbox keeps the order, and the supervisor
        // never waits on a full transport.
        tracer
            .cast(TracerMsg {
                trace: begin,
                reply: None,
            })
            .map_err(|e| LaunchError::Spawn(e.to_string()))?;
        let ctx = Ctx::new(
            fid.clone(),
            &flow.name,
            &owner,
            tracer.clone(),
            state.shared.locks.clone(),
            state.shared.limits.clone(),
        );
        let args = RunnerArgs {
            ctx: ctx.clone(),
            flow,
            inputs,
        };
        let runner = match Actor::spawn_linked(None, Runner, args, myself.get_cell()).await {
            Ok((runner, _)) => runner,
            Err(e) => {
                let reason = format!("could not start the runner: {e}");
                let _ = tracer.cast(TracerMsg {
                    trace: Trace::Finish(Outcome::Failed(reason.clone())),
                    reply: None,
                });
                return Err(LaunchError::Spawn(reason));
            }
        };
        state
            .actors
            .insert(runner.get_id(), (fid.clone(), Role::Runner));
        state.live.insert(
            fid,
            Live {
                ctx,
                book,
                tracer,
                runner_alive: true,
                tracer_alive: true,
                tracer_restarts: RestartLog::default(),
            },
        );
        Ok(())
    }

    /// Makes sure the execution of a stopped or failed actor ends.
    async fn child_exited(
        myself: &ActorRef<ExecMsg>,
        state: &mut ExecState,
        cell: ActorCell,
        failure: Option<String>,
    ) {
        let Some((fid, role)) = state.actors.remove(&cell.get_id()) else {
            return;
        };
        let mut restart_tracer = None;
        if let Some(live) = state.live.get_mut(&fid) {
            match (role, &failure) {
                (Role::Runner, _) => {
                    live.runner_alive = false;
                    let reason = match &failure {
                        Some(err) => format!("runner crashed: {err}"),
                        None => "runner stopped without an outcome".into(),
                    };
                    if failure.is_some() {
                        tracing::error!(%fid, %reason, "runner failed");
                    }
                    // Kills a command flow's process group, ends lock waits.
                    live.ctx.stop(Stop {
                        status: Status::Error,
                        reason: reason.clone(),
                    });
                    // Ignored by the Tracer when the execution already ended.
                    let _ = live.tracer.cast(TracerMsg {
                        trace: Trace::Finish(Outcome::Failed(reason)),
                        reply: None,
                    });
                }
                (Role::Tracer, None) => live.tracer_alive = false,
                (Role::Tracer, Some(err)) => {
                    live.tracer_alive = false;
                    tracing::error!(%fid, error = %err, "tracer failed");
                    let reason = format!("tracer crashed: {err}");
                    live.ctx.stop(Stop {
                        status: Status::Error,
                        reason: reason.clone(),
                    });
                    let ended = live.book.lock().expect("book lock").ended();
                    if !ended
                        && live
                            .tracer_restarts
                            .allow(policy::TRACER, Instant::now())
                    {
                        restart_tracer = Some((live.book.clone(), reason));
                    }
                }
            }
        }
        if let Some((book, reason)) = restart_tracer
            && let Ok(tracer) = Self::spawn_tracer(myself, state, &fid, book).await
        {
            let _ = tracer.cast(TracerMsg {
                trace: Trace::Finish(Outcome::Failed(reason)),
                reply: None,
            });
            if let Some(live) = state.live.get_mut(&fid) {
                live.tracer = tracer;
                live.tracer_alive = true;
            }
        }
        if state
            .live
            .get(&fid)
            .is_some_and(|l| !l.runner_alive && !l.tracer_alive)
        {
            state.live.remove(&fid);
        }
        if state.live.is_empty()
            && let Some(waiters) = state.draining.as_mut()
        {
            for reply in waiters.drain(..) {
                let _ = reply.send(());
            }
        }
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
            actors: HashMap::new(),
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
                reply,
            } => {
                let result = Self::launch(&myself, state, fid, flow, owner, inputs).await;
                let _ = reply.send(result);
            }
            ExecMsg::Stop { fid, stop, reply } => {
                let live = state.live.get(&fid);
                if let Some(live) = live {
                    live.ctx.stop(stop);
                }
                let _ = reply.send(live.is_some());
            }
            ExecMsg::StopAll { reason, reply } => {
                for live in state.live.values() {
                    live.ctx.stop(Stop {
                        status: Status::Killed,
                        reason: reason.clone(),
                    });
                }
                if state.live.is_empty() {
                    let _ = reply.send(());
                    state.draining.get_or_insert_with(Vec::new);
                } else {
                    state.draining.get_or_insert_with(Vec::new).push(reply);
                }
            }
            ExecMsg::Count(reply) => {
                let _ = reply.send(state.live.len());
            }
        }
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
                Self::child_exited(&myself, state, cell, None).await
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                Self::child_exited(&myself, state, cell, Some(err.to_string())).await
            }
            _ => {}
        }
        Ok(())
    }
}
