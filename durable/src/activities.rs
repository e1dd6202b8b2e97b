//! The activities of `kodo_execution`: `kodo_run` runs one attempt of the
//! flow on this worker's node, `kodo_close` records an end the attempts
//! could not record.
//!
//! Before its first event an attempt settles (what earlier attempts
//! published reaches the store), then fences the execution in the store,
//! which from then on refuses older attempts' events and answers what is
//! stored: the attempt numbers its events after that. It heartbeats from
//! its first instant, and gives itself back to Temporal if cancelled
//! before its flow started.

#![allow(unreachable_pub, missing_docs)]

use crate::control::{self, DurableLocks, Nudges};
use crate::workflow::{Close, Ending, KodoExecution, Launch, Ran};
use futures::FutureExt;
use kodo_actors::{
    Execution, Journal, Locks, Node, Outcome, Stop, Trace, TraceBook, Tracer, drive,
};
use kodo_core::{Fid, Meta, Status};
use kodo_store::StoreError;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use temporalio_macros::activities;
use temporalio_sdk::ApplicationFailure;
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use tokio_util::task::AbortOnDropHandle;

/// What the activities run on: the worker's node.
pub struct KodoActivities {
    pub(crate) node: Arc<Node>,
    pub(crate) task_queue: String,
    /// The attempts running here, for nudges.
    pub(crate) nudges: Nudges,
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

/// Where an attempt starts.
enum Start {
    /// The execution has its final status already.
    Ended(Status),
    /// Numbering goes on from this book, beginning with this request.
    Go(TraceBook, Trace),
}

#[activities]
impl KodoActivities {
    #[activity(name = "kodo_run")]
    pub async fn run(
        self: Arc<Self>,
        actx: ActivityContext,
        launch: Launch,
    ) -> Result<Ran, ActivityError> {
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
        // Heard from before the first event: once `running` is stored, a
        // pause or an answer reaches this attempt.
        let nudged = self.nudges.register(&fid);
        // Nothing is published before the flow starts: a cancel (the worker
        // stops) gives the attempt back at no cost.
        let start = tokio::select! {
            start = self.start(&actx, &fid, &launch, attempt) => start?,
            _ = actx.cancelled() => return Err(ActivityError::cancelled()),
        };
        let (book, first) = match start {
            Start::Ended(status) => return Ok(Ran::recorded(status)),
            Start::Go(book, first) => (book, first),
        };
        tracing::info!(%fid, flow = %flow.name, attempt, "durable attempt starts");
        // Fenced: no older attempt adds a step now. Its steps replay.
        let journal = if attempt > 1 {
            node.journal(&fid)
                .await
                .map_err(|e| retryable(format!("cannot read the journal of steps: {e}")))?
        } else {
            Journal::default()
        };
        let handle = actx.workflow_handle::<KodoExecution>();
        let locks = Arc::new(DurableLocks::new(actx.workflow_handle()));
        let ctx = node.context(
            fid.clone(),
            &flow.name,
            &launch.owner,
            book,
            attempt,
            journal,
            locks.clone(),
            launch.origin(),
        );
        progress.store(ctx.tracer().clone());
        let begin = match first {
            // A retry: marked first, then it takes up what was asked of the
            // execution (it may be paused; its locks may be answered).
            Trace::Retry(why) => {
                if let Err(e) = ctx.tracer().trace(Trace::Retry(why)).await {
                    tracing::warn!(%fid, error = %e, "could not record the retry");
                }
                // Before the flow starts again: it may be paused.
                if let Some(handle) = &handle {
                    tokio::select! {
                        asked = learn(handle, &fid) => control::apply(&ctx, &locks, asked).await,
                        _ = actx.cancelled() => return Err(ActivityError::cancelled()),
                    }
                }
                Trace::Running
            }
            first => first,
        };
        let _following = handle.map(|handle| {
            AbortOnDropHandle::new(tokio::spawn(control::follow(
                ctx.clone(),
                handle,
                locks,
                nudged,
            )))
        });
        let execution = Execution {
            ctx: ctx.clone(),
            flow,
            inputs: launch.inputs.clone(),
            begin,
        };
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
        let outcome = outcome.unwrap_or_else(|panic| {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Outcome::Failed(format!("flow panicked: {why}"))
        });
        // `drive` only logs an end it could not record: make sure it is,
        // or have the workflow record it (ignored once it is recorded).
        Ok(
            match ctx.tracer().trace(Trace::Finish(outcome.clone())).await {
                Ok(_) => Ran::recorded(ending_of(&outcome).0),
                Err(e) => {
                    tracing::warn!(%fid, error = %e, "the end of a durable attempt is left to kodo_close");
                    Ran::unrecorded(&outcome)
                }
            },
        )
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
        // After every attempt: none of them may write any more.
        let after_all = close.launch.attempts.saturating_add(1);
        let start = tokio::select! {
            start = self.start(&actx, &fid, &close.launch, after_all) => start?,
            _ = actx.cancelled() => return Err(ActivityError::cancelled()),
        };
        let (book, first) = match start {
            Start::Ended(status) => return Ok(status.to_string()),
            Start::Go(book, first) => (book, first),
        };
        let flow = close.launch.flow.clone();
        let locks = Arc::new(Locks::default());
        let ctx = node.context(
            fid,
            &flow,
            &close.launch.owner,
            book,
            after_all,
            Journal::default(),
            locks,
            close.launch.origin(),
        );
        if matches!(first, Trace::Begin { .. }) {
            ctx.tracer()
                .trace(first)
                .await
                .map_err(|e| retryable(e.to_string()))?;
        }
        let outcome = close.ending.outcome();
        ctx.tracer()
            .trace(Trace::Finish(outcome.clone()))
            .await
            .map_err(|e| retryable(e.to_string()))?;
        Ok(ending_of(&outcome).0.to_string())
    }
}

impl KodoActivities {
    /// Where attempt `attempt` starts: everything earlier attempts
    /// published is stored first (as far as it can be), then the store is
    /// fenced for this attempt and says what it holds.
    async fn start(
        &self,
        actx: &ActivityContext,
        fid: &Fid,
        launch: &Launch,
        attempt: u32,
    ) -> Result<Start, ActivityError> {
        let node = &self.node;
        let max_payload = node.limits().max_payload;
        if attempt > 1 {
            self.settle(launch).await;
            // What the previous attempt reported last (its heartbeat) is
            // stored, unless its process died with it (in-process queue).
            let reported: Option<u64> = actx.heartbeat_details().deserialize().ok().flatten();
            if let Some(seq) = reported
                && !node.until_stored(fid, seq, Duration::from_secs(10)).await
            {
                tracing::warn!(%fid, seq, "the previous attempt's last events are not stored; going on after what is");
            }
        }
        let mut backoff = Duration::from_millis(100);
        let stored = loop {
            match node.store().fence(fid, attempt).await {
                Ok(stored) => break stored,
                // A newer attempt runs: this one is over.
                Err(StoreError::Superseded { .. }) => return Err(ActivityError::cancelled()),
                Err(e) => {
                    tracing::warn!(%fid, error = %e, retry_in = ?backoff, "cannot fence a durable execution yet");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        let begin = || Trace::Begin {
            meta: meta(launch, &self.task_queue),
            inputs: launch.inputs.to_string(),
        };
        Ok(match stored {
            Some((_, status)) if status.is_final() => Start::Ended(status),
            Some((stored, status)) => Start::Go(
                TraceBook::resume(max_payload, stored, status),
                Trace::Retry(format!(
                    "attempt {attempt} of {}: the previous attempt was lost (its worker died or stopped answering)",
                    launch.attempts
                )),
            ),
            None => Start::Go(TraceBook::new(max_payload), begin()),
        })
    }

    /// Waits until everything published before is stored and acknowledged
    /// (a dead spooler's entries claimed): as long as it takes, saying so.
    async fn settle(&self, launch: &Launch) {
        let wait = Duration::from_millis(launch.heartbeat_ms).max(Duration::from_secs(10));
        while !self.node.settle(wait).await {
            tracing::warn!(
                ?wait,
                "events published before this attempt are not all stored yet; waiting on"
            );
        }
    }
}

/// `finished`, `error` or `killed`, and the text that goes with it.
fn ending_of(outcome: &Outcome) -> (Status, String) {
    match outcome {
        Outcome::Finished(result) => (Status::Finished, result.clone()),
        Outcome::Failed(why) => (Status::Error, why.clone()),
        Outcome::Killed(why) => (Status::Killed, why.clone()),
    }
}

impl Ran {
    fn recorded(status: Status) -> Self {
        Self {
            status: status.to_string(),
            unrecorded: None,
        }
    }

    fn unrecorded(outcome: &Outcome) -> Self {
        let (status, text) = ending_of(outcome);
        Self {
            status: status.to_string(),
            unrecorded: Some(Ending {
                status: status.to_string(),
                text,
            }),
        }
    }
}

impl Ending {
    /// The outcome this ending records.
    fn outcome(&self) -> Outcome {
        match self.status.as_str() {
            "finished" => Outcome::Finished(self.text.clone()),
            "killed" => Outcome::Killed(self.text.clone()),
            _ => Outcome::Failed(self.text.clone()),
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
        // The launching node's execution span: every attempt's is its child.
        trace: launch.traceparent.clone(),
        launch: launch.launch.clone(),
        job: launch.job.clone(),
    })
    .expect("meta serializes")
}

/// Whether the workflow was asked to kill the execution (and why).
async fn kill_reason(actx: &ActivityContext) -> Option<String> {
    let handle = actx.workflow_handle::<KodoExecution>()?;
    control::asked_within(&handle, Duration::from_secs(5))
        .await
        .ok()?
        .killed
}

/// What was asked of the execution, asking until the workflow answers.
async fn learn(handle: &control::Handle, fid: &Fid) -> crate::workflow::Asked {
    let mut backoff = Duration::from_millis(200);
    loop {
        match control::asked(handle).await {
            Ok(asked) => return asked,
            Err(e) => {
                tracing::warn!(%fid, error = %e, retry_in = ?backoff, "cannot ask the workflow what it holds yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
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
fn beat(actx: &ActivityContext, progress: Progress) -> AbortOnDropHandle<()> {
    let actx = actx.clone();
    AbortOnDropHandle::new(tokio::spawn(async move {
        loop {
            let _ = actx.record_heartbeat(progress.published()).await;
            tokio::time::sleep(BEAT).await;
        }
    }))
}
