//! The seam for how an execution runs.
//!
//! The execution supervisor ([`crate::executions`]) owns the life of every
//! execution: ids, limits, kill, the guaranteed final status. *How* the flow
//! runs is its backend's: it starts one actor per execution, linked to the
//! supervisor, and that actor's end (or crash) tells the supervisor the run
//! is over. [`Direct`] runs the flow here, in a [`Runner`]; a durable
//! backend (Temporal, in `kodo-durable`) implements the same trait and
//! drives the flow with [`drive`](crate::runner::drive) inside its
//! activity, with no dependency of this crate on it.

use crate::flow::{Ctx, FlowDef};
use crate::runner::Runner;
use crate::tracer::Trace;
use async_trait::async_trait;
use ractor::{Actor, ActorCell};
use serde_json::Value;
use std::sync::Arc;

/// One execution, ready to run.
pub struct Execution {
    /// Its context: id, Tracer, locks, stop requests.
    pub ctx: Ctx,
    /// The flow.
    pub flow: Arc<FlowDef>,
    /// Its inputs.
    pub inputs: Value,
    /// Its first events (`meta`, `starting`, `inputs`), recorded when it runs.
    pub begin: Trace,
}

impl std::fmt::Debug for Execution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the inputs: they are the owner's.
        f.debug_struct("Execution")
            .field("fid", self.ctx.fid())
            .field("flow", &self.flow.name)
            .finish_non_exhaustive()
    }
}

/// A started execution, as its supervisor sees it.
#[derive(Debug)]
pub struct Started {
    /// The actor that stands for it here; its end tells the supervisor the
    /// execution is over (on this node).
    pub actor: ActorCell,
    /// Whether the supervisor records `error` through the execution's own
    /// Tracer when the actor stops without an outcome (direct mode). False
    /// when the backend guarantees the end itself, elsewhere (durable mode):
    /// then this node writes nothing for the execution.
    pub fallback_end: bool,
    /// Answers once the execution really started, or why it could not, when
    /// that takes a while (a Temporal workflow to start): the node waits for
    /// it outside its supervisor, which other launches and kills need.
    pub ready: Option<tokio::sync::oneshot::Receiver<Result<(), String>>>,
}

/// What a person asks of a running execution, besides a kill.
#[derive(Clone, Debug, PartialEq)]
pub enum Control {
    /// Hold it where it is (durable mode).
    Pause,
    /// Let a paused execution go on.
    Resume,
    /// Answer its open lock `lid`.
    Answer {
        /// The lock.
        lid: String,
        /// The answer.
        answer: Value,
    },
}

/// Why a [`Control`] request was refused.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ControlError {
    /// Not something this execution can do (pause in direct mode).
    #[error("{0}")]
    Unsupported(String),
    /// It does not fit the execution's state (pause a paused one).
    #[error("{0}")]
    Conflict(String),
    /// No such open lock.
    #[error("{0}")]
    NotFound(String),
    /// The backend that runs it could not be reached (Temporal).
    #[error("cannot reach the execution: {0}")]
    Unreachable(String),
}

/// How executions run.
#[async_trait]
pub trait ExecutionBackend: Send + Sync + std::fmt::Debug + 'static {
    /// A short name for logs (`direct`, `temporal`).
    fn name(&self) -> &'static str;

    /// Starts `execution` as an actor linked to `supervisor`, at once (it
    /// runs inside the node's supervisor: anything slow goes in the actor,
    /// reported through `Started::ready`). The direct actor records the
    /// execution's events through its Tracer and stops once the outcome is
    /// recorded. An error refuses the launch (nothing was started).
    async fn start(&self, execution: Execution, supervisor: ActorCell) -> Result<Started, String>;

    /// Whether executions of `flow` run durably elsewhere (their recovery
    /// is the backend's, not the node's).
    fn durable(&self, _flow: &str) -> bool {
        false
    }

    /// Stops an execution that is not running on this node but that this
    /// backend can reach (a durable one, running on any worker); false when
    /// it knows no such execution.
    async fn stop(&self, _fid: &kodo_core::Fid, _stop: crate::flow::Stop) -> Result<bool, String> {
        Ok(false)
    }

    /// What the backend knows of execution `fid` beyond its events (a
    /// durable execution's workflow); None: nothing (direct mode).
    async fn describe(&self, _fid: &kodo_core::Fid) -> Result<Option<Value>, String> {
        Ok(None)
    }

    /// Passes `control` to execution `fid` (running on any node). Direct
    /// mode can neither pause nor resume, and its locks are answered on the
    /// node that runs them (none here, then).
    async fn control(&self, fid: &kodo_core::Fid, control: Control) -> Result<(), ControlError> {
        Err(match control {
            Control::Answer { lid, .. } => {
                ControlError::NotFound(format!("no open lock {lid} in execution {fid}"))
            }
            _ => ControlError::Unsupported(
                "pause and resume need durable mode (execution mode \"temporal\")".into(),
            ),
        })
    }
}

/// A shared backend.
pub type SharedBackend = Arc<dyn ExecutionBackend>;

/// Direct mode: a [`Runner`] actor in this process drives the flow.
#[derive(Clone, Copy, Debug, Default)]
pub struct Direct;

#[async_trait]
impl ExecutionBackend for Direct {
    fn name(&self) -> &'static str {
        "direct"
    }

    async fn start(&self, execution: Execution, supervisor: ActorCell) -> Result<Started, String> {
        let (runner, _) = Actor::spawn_linked(None, Runner, execution, supervisor)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Started {
            actor: runner.get_cell(),
            fallback_end: true,
            ready: None,
        })
    }
}
