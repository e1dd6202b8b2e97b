//! The activities of `kodo_execution`: `kodo_run` runs one attempt of the
//! flow on this worker's node, `kodo_close` records an end the attempts
//! could not record. Both number their events after what the store holds
//! once everything published before them is stored.

#![allow(unreachable_pub, missing_docs)]

use crate::workflow::{Close, KodoExecution, Launch};
use futures::FutureExt;
use kodo_actors::{Execution, Node, Outcome, Stop, Trace, TraceBook, Tracer, drive};
use kodo_core::{Fid, Meta, Status};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use temporalio_client::WorkflowQueryOptions;
use temporalio_macros::activities;
use temporalio_sdk::ApplicationFailure;
use temporalio_sdk::activities::{ActivityContext, ActivityError};

/// What the activities run on: the worker's node.
pub struct KodoActivities {
    pub(crate) node: Arc<Node>,
    pub(crate) task_queue: String,
}

/// How often an attempt tells Temporal it is alive (the SDK sends at most
/// one heartbeat per throttle interval).
const BEAT: Duration = Duration::from_millis(250);

fn non_retryable(why: String) -> ActivityError {
    ActivityError::application(ApplicationFailure::non_retryable(why))
}

fn retryable(why: String) -> ActivityError {
    ActivityError::application(ApplicationFailure::new(why))
}

#[activities]
impl KodoActivities {
    #[activity(name = "kodo_run")]
    pub async fn run(
        self: Arc<Self>,
        actx: ActivityContext,
        launch: Launch,
    ) -> Result<String, ActivityError> {
        let attempt = actx.info().attempt.max(1);
        let node = &self.node;
        // Tells Temporal this attempt lives (also while it waits to begin),
        // and how far it got.
        let progress = Progress::default();
        let _beats = beat(&actx, progress.clone());
        let fid = Fid::parse(&launch.fid).ok_or_else(|| non_retryable("bad fid".into()))?;
        let flow = node.flows().get(&launch.flow).ok_or_else(|| {
            non_retryable(format!(
                "flow `{}` is unknown on worker node `{}`",
                launch.flow,
                node.name()
            ))
        })?;
        let max_payload = node.limits().max_payload;
        let begin = || Trace::Begin {
            meta: meta(&launch, &self.task_queue),
            inputs: launch.inputs.to_string(),
        };
        let (book, first) = if attempt == 1 {
            (TraceBook::new(max_payload), begin())
        } else {
            let stored = self.stored_now(&fid, &launch).await?;
            if let Some((_, status)) = stored
                && status.is_final()
            {
                return Ok(status.to_string());
            }
            // From here on the store refuses the older attempts' events: one
            // that was only frozen, and wakes, cannot write among ours.
            self.fence(&fid, attempt, stored.map_or(0, |(n, _)| n))
                .await?;
            match stored {
                Some((stored, status)) => (
                    TraceBook::resume(max_payload, stored, status),
                    Trace::Retry(format!(
                        "attempt {attempt} of {}: the previous attempt was lost (its worker died or stopped answering)",
                        launch.attempts
                    )),
                ),
                None => (TraceBook::new(max_payload), begin()),
            }
        };
        tracing::info!(%fid, flow = %flow.name, attempt, "durable attempt starts");
        let ctx = node.context(fid.clone(), &flow.name, &launch.owner, book, attempt);
        let execution = Execution {
            ctx: ctx.clone(),
            flow,
            inputs: launch.inputs.clone(),
            begin: first,
        };
        progress.store(ctx.tracer().clone());
        let driven = AssertUnwindSafe(drive(execution)).catch_unwind();
        let mut driven = std::pin::pin!(driven);
        let mut killing = false;
        let outcome = loop {
            tokio::select! {
                outcome = &mut driven => break outcome,
                _ = actx.cancelled(), if !killing => match kill_reason(&actx).await {
                    Some(reason) => {
                        ctx.stop(Stop::new(Status::Killed, reason));
                        killing = true;
                    }
                    // The worker stops, or Temporal gave up on this attempt:
                    // give it back. Dropping the run kills the flow's processes;
                    // the next attempt goes on after what is stored.
                    None => return Err(ActivityError::cancelled()),
                },
            }
        };
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(panic) => {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                let outcome = Outcome::Failed(format!("flow panicked: {why}"));
                ctx.tracer()
                    .trace(Trace::Finish(outcome.clone()))
                    .await
                    .map_err(|e| retryable(e.to_string()))?;
                outcome
            }
        };
        Ok(match outcome {
            Outcome::Finished(_) => Status::Finished,
            Outcome::Failed(_) => Status::Error,
            Outcome::Killed(_) => Status::Killed,
        }
        .to_string())
    }

    #[activity(name = "kodo_close")]
    pub async fn close(
        self: Arc<Self>,
        actx: ActivityContext,
        close: Close,
    ) -> Result<String, ActivityError> {
        let _beats = beat(&actx, Progress::default());
        let node = &self.node;
        let fid = Fid::parse(&close.launch.fid).ok_or_else(|| non_retryable("bad fid".into()))?;
        let max_payload = node.limits().max_payload;
        let stored = self.stored_now(&fid, &close.launch).await?;
        if let Some((_, status)) = stored
            && status.is_final()
        {
            return Ok(status.to_string());
        }
        // After every attempt: none of them may write any more.
        let after_all = close.launch.attempts.saturating_add(1);
        self.fence(&fid, after_all, stored.map_or(0, |(n, _)| n))
            .await?;
        let book = match stored {
            Some((stored, status)) => TraceBook::resume(max_payload, stored, status),
            None => TraceBook::new(max_payload),
        };
        let fresh = book.next_seq() == 1;
        let flow = close.launch.flow.clone();
        let ctx = node.context(fid, &flow, &close.launch.owner, book, after_all);
        if fresh {
            let begin = Trace::Begin {
                meta: meta(&close.launch, &self.task_queue),
                inputs: close.launch.inputs.to_string(),
            };
            ctx.tracer()
                .trace(begin)
                .await
                .map_err(|e| retryable(e.to_string()))?;
        }
        let (status, outcome) = if close.killed {
            (Status::Killed, Outcome::Killed(close.reason))
        } else {
            (Status::Error, Outcome::Failed(close.reason))
        };
        ctx.tracer()
            .trace(Trace::Finish(outcome))
            .await
            .map_err(|e| retryable(e.to_string()))?;
        Ok(status.to_string())
    }
}

impl KodoActivities {
    /// Fences `fid` for `attempt`, which goes on after seq `stored`.
    async fn fence(&self, fid: &Fid, attempt: u32, stored: u64) -> Result<(), ActivityError> {
        self.node
            .store()
            .fence(fid, attempt, stored)
            .await
            .map_err(|e| retryable(format!("store: {e}")))
    }

    /// The highest stored seq of `fid` and its status, once everything
    /// published before this call is stored (a lost attempt's events
    /// included); None when nothing of it is stored.
    async fn stored_now(
        &self,
        fid: &Fid,
        launch: &Launch,
    ) -> Result<Option<(u64, Status)>, ActivityError> {
        let wait = Duration::from_millis(launch.heartbeat_ms).max(Duration::from_secs(10));
        if !self.node.settle(wait).await {
            // Nothing stores events now: numbering could reuse a seq.
            return Err(retryable(format!(
                "events published before this attempt are not all stored after {wait:?}"
            )));
        }
        match self.node.store().execution(fid).await {
            Ok(row) => Ok(row.map(|row| (row.events, row.status))),
            Err(e) => Err(retryable(format!("store: {e}"))),
        }
    }
}

/// The `meta` of a durable execution: its node is the task queue's, which
/// no node's restart closes.
fn meta(launch: &Launch, task_queue: &str) -> String {
    serde_json::to_string(&Meta {
        flow: launch.flow.clone(),
        owner: launch.owner.clone(),
        node: format!("temporal:{task_queue}"),
        kodo: env!("CARGO_PKG_VERSION").to_string(),
    })
    .expect("meta serializes")
}

/// Whether the workflow was asked to kill the execution (and why).
async fn kill_reason(actx: &ActivityContext) -> Option<String> {
    let handle = actx.workflow_handle::<KodoExecution>()?;
    let asked = handle.query(KodoExecution::killed, (), WorkflowQueryOptions::default());
    tokio::time::timeout(Duration::from_secs(5), asked)
        .await
        .ok()?
        .ok()?
}

/// The Tracer of an attempt, once it has one: what its heartbeats report.
#[derive(Clone, Default)]
struct Progress(Arc<std::sync::OnceLock<Arc<Tracer>>>);

impl Progress {
    fn store(&self, tracer: Arc<Tracer>) {
        let _ = self.0.set(tracer);
    }

    fn published(&self) -> u64 {
        self.0.get().map_or(0, |t| t.published())
    }
}

/// Heartbeats every [`BEAT`] until the returned guard is dropped.
fn beat(actx: &ActivityContext, progress: Progress) -> AbortOnDrop {
    let actx = actx.clone();
    AbortOnDrop(tokio::spawn(async move {
        loop {
            let _ = actx.record_heartbeat(progress.published()).await;
            tokio::time::sleep(BEAT).await;
        }
    }))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
