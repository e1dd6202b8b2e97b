//! The Runner: drives one execution's flow in this process (the direct
//! backend, see [`crate::backend`]) and reports how it ended to the Tracer.
//! A panic here is caught by ractor and reported to the execution
//! supervisor, which ends the execution with `error` and the cause.
//!
//! [`drive`] is the whole run, callable from another backend's code.

use crate::backend::Execution;
use crate::command;
use crate::flow::{Ctx, FlowDef, FlowKind, Stop};
use crate::tracer::{Outcome, Trace};
use kodo_core::Status;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::Value;

/// The Runner actor.
#[derive(Debug)]
pub(crate) struct Runner;

/// The Runner's one message: run the flow (sent to itself at start).
#[derive(Debug)]
pub(crate) struct Run;

impl Actor for Runner {
    type Msg = Run;
    type State = Option<Execution>;
    type Arguments = Execution;

    async fn pre_start(
        &self,
        myself: ActorRef<Run>,
        execution: Execution,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.cast(Run)?;
        Ok(Some(execution))
    }

    async fn handle(
        &self,
        myself: ActorRef<Run>,
        _msg: Run,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(execution) = state.take() {
            let span = execution.ctx.span().clone();
            tracing::Instrument::instrument(drive(execution), span).await;
        }
        myself.stop(None);
        Ok(())
    }
}

/// Runs one execution from its first event to its last: records the
/// launch, runs the flow (ended early by a stop request or the flow's
/// timeout), records the outcome, and returns it.
pub async fn drive(execution: Execution) -> Outcome {
    let Execution {
        ctx,
        flow,
        inputs,
        begin,
    } = execution;
    let launch = tracing::info_span!(parent: ctx.span(), "launch");
    if let Err(e) = tracing::Instrument::instrument(ctx.tracer().trace(begin), launch).await {
        tracing::error!(fid = %ctx.fid(), error = %e, "could not record the launch");
    }
    // A held execution (a job awaiting payment) waits before its flow
    // starts; the flow's timeout counts from then.
    let outcome = match crate::hold::held(&ctx).await {
        Some(ended) => ended,
        None => timed(&ctx, &flow, inputs).await,
    };
    // The reason stays in the execution's own events: for a command
    // flow it holds the flow's last stderr line, which is the owner's.
    let status = match &outcome {
        Outcome::Finished(_) => "finished",
        Outcome::Failed(_) => "error",
        Outcome::Killed(_) => "killed",
    };
    ctx.span().record("status", status);
    // Stopped by the shutdown (not ended on its own first): left to resume.
    if matches!(outcome, Outcome::Killed(_)) && ctx.left_to_resume() {
        tracing::info!(fid = %ctx.fid(), flow = %flow.name, "execution stopped with its node; it resumes at the next start");
        return outcome;
    }
    tracing::info!(fid = %ctx.fid(), flow = %flow.name, status, "execution ended");
    if let Err(e) = ctx.tracer().trace(Trace::Finish(outcome.clone())).await {
        tracing::warn!(fid = %ctx.fid(), error = %e, "could not record the outcome");
    }
    outcome
}
/// Runs a flow to its outcome, ended with `error` at its timeout.
async fn timed(ctx: &Ctx, flow: &FlowDef, inputs: Value) -> Outcome {
    let timer = flow.timeout.map(|limit| {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            ctx.stop(Stop::new(
                Status::Error,
                format!("timed out after {} s", limit.as_secs_f64()),
            ));
        })
    });
    let outcome = run(ctx, flow, inputs).await;
    if let Some(timer) = timer {
        timer.abort();
    }
    outcome
}

/// Runs a flow to its outcome; a stop request ends it early. The status
/// becomes `running` once the flow really runs (a command: once its process
/// started).
async fn run(ctx: &Ctx, flow: &FlowDef, inputs: Value) -> Outcome {
    match &flow.kind {
        // Boxed: a command driver's state is large, and inline it would make
        // every Runner's task that large, also while a Rust flow waits on a lock.
        FlowKind::Command(spec) => Box::pin(command::run(spec, ctx, &inputs)).await,
        FlowKind::Rust(f) => {
            if let Err(e) = ctx.tracer().trace(Trace::Running).await {
                return Outcome::Failed(format!("could not record the start: {e}"));
            }
            let fut = f(ctx.clone(), inputs);
            tokio::select! {
                result = fut => match result {
                    Ok(value) => Outcome::Finished(value.to_string()),
                    Err(e) => Outcome::Failed(e.to_string()),
                },
                stop = ctx.stopped() => stop.outcome(),
            }
        }
    }
}
