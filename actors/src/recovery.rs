//! Executions a dead run of this node left unfinished whose flow says
//! `recover = "resume"` run again from the start, with their journal of
//! steps (see [`crate::steps`]): the same fid, numbered after the last
//! stored event, each new run fenced and marked by a `debug` event. Past
//! the flow's `attempts` they end with `error` and the cause instead.
//! (The others are closed by [`crate::leftovers`].)

use crate::executions::{ExecMsg, Resumed};
use crate::flow::{FlowDef, Flows, Recover};
use crate::node::NodeOptions;
use crate::steps::Journal;
use crate::tracer::{Outcome, Trace, TraceBook, Tracer};
use kodo_core::{Fid, Kind, Status};
use kodo_store::{EventQuery, ExecutionRow, SharedStore, StoreError};
use kodo_transport::SharedTransport;
use ractor::ActorRef;
use std::sync::Arc;

/// What resumes executions: the store, the transport and the execution
/// supervisor of this node.
pub(crate) struct Recovery<'a> {
    pub store: &'a SharedStore,
    pub transport: &'a SharedTransport,
    pub flows: &'a Flows,
    pub executions: &'a ActorRef<ExecMsg>,
    pub options: &'a NodeOptions,
}

/// Whether `row`, left unfinished, is resumed rather than closed: its flow
/// resumes, and this node runs flows itself (direct mode).
pub(crate) fn resumes(flows: &Flows, options: &NodeOptions, row: &ExecutionRow) -> bool {
    options.backend.name() == "direct"
        && flows
            .get(&row.flow)
            .is_some_and(|flow| flow.recover == Recover::Resume)
}

impl Recovery<'_> {
    /// Resumes each execution `node` left unfinished whose flow resumes,
    /// after `why` (what happened to its previous run); returns how many
    /// run again. One that cannot run again is closed with `error`.
    pub(crate) async fn resume_unfinished(
        &self,
        node: &str,
        why: &str,
    ) -> Result<usize, StoreError> {
        let mut resumed = 0;
        for row in self.store.unfinished(node).await? {
            if !resumes(self.flows, self.options, &row) {
                continue;
            }
            let flow = self.flows.get(&row.flow).expect("checked by resumes");
            match self.resume(&row, flow, why).await {
                Ok(true) => resumed += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(fid = %row.fid, error = %e, "could not resume an execution; closing it");
                    self.close(
                        &row,
                        Attempt::Unknown,
                        &format!("{why}; could not resume: {e}"),
                    )
                    .await;
                }
            }
        }
        Ok(resumed)
    }

    /// Runs `row` again; false when it ended instead (out of attempts, or
    /// already ended).
    async fn resume(
        &self,
        row: &ExecutionRow,
        flow: Arc<FlowDef>,
        why: &str,
    ) -> Result<bool, String> {
        let fid = &row.fid;
        let (attempt, stored) = fence_next(self.store, fid)
            .await
            .map_err(|e| e.to_string())?;
        let Some((events, status)) = stored else {
            return Err("nothing of it is stored".into());
        };
        if status.is_final() {
            return Ok(false);
        }
        if attempt > flow.attempts {
            let reason = format!("{why}; gave up after {} attempts", flow.attempts);
            tracing::warn!(%fid, flow = %flow.name, attempts = flow.attempts, "{reason}");
            self.close(row, Attempt::Known(attempt, events, status), &reason)
                .await;
            return Ok(false);
        }
        let inputs = self.inputs(fid).await?;
        let journal = Journal::load(self.store, fid)
            .await
            .map_err(|e| e.to_string())?;
        let marker = format!(
            "attempt {attempt} of {}: {why}; {} steps replay from the journal",
            flow.attempts,
            journal.len()
        );
        tracing::info!(%fid, flow = %flow.name, attempt, steps = journal.len(), "resuming an execution");
        let resumed = Resumed {
            book: TraceBook::resume(self.options.limits.max_payload, events, status),
            attempt,
            journal,
            marker,
        };
        let started = self
            .executions
            .call(
                |reply| ExecMsg::Launch {
                    fid: fid.clone(),
                    flow,
                    owner: row.owner.clone(),
                    inputs,
                    resumed: Some(resumed),
                    reply,
                },
                None,
            )
            .await
            .map_err(|e| e.to_string())?;
        match started {
            ractor::rpc::CallResult::Success(Ok(_)) => Ok(true),
            ractor::rpc::CallResult::Success(Err(e)) => Err(e.to_string()),
            _ => Err("the node is shutting down".into()),
        }
    }

    /// The inputs it was launched with.
    async fn inputs(&self, fid: &Fid) -> Result<serde_json::Value, String> {
        let query = EventQuery {
            after: 0,
            limit: 1,
            kinds: Some(vec![Kind::Inputs]),
        };
        let events = self
            .store
            .events(fid, &query)
            .await
            .map_err(|e| e.to_string())?;
        let inputs = events.first().ok_or("its inputs are not stored")?;
        serde_json::from_str(&inputs.payload).map_err(|e| format!("its stored inputs: {e}"))
    }

    /// Ends `row` with `error: reason` after its last stored event.
    async fn close(&self, row: &ExecutionRow, attempt: Attempt, reason: &str) {
        let max_payload = self.options.limits.max_payload;
        let book = match attempt {
            Attempt::Known(attempt, events, status) => {
                TraceBook::resume(max_payload, events, status).with_attempt(attempt)
            }
            Attempt::Unknown => match fence_next(self.store, &row.fid).await {
                Ok((attempt, Some((events, status)))) => {
                    TraceBook::resume(max_payload, events, status).with_attempt(attempt)
                }
                _ => TraceBook::resume(max_payload, row.events, row.status),
            },
        };
        let tracer = Tracer::resume(row.fid.clone(), book, self.transport.clone());
        if let Err(e) = tracer
            .trace(Trace::Finish(Outcome::Failed(reason.to_string())))
            .await
        {
            tracing::error!(fid = %row.fid, error = %e, "could not close an execution");
        }
    }
}

/// How the run that closes an execution is numbered.
enum Attempt {
    /// This run's number, and what is stored.
    Known(u32, u64, Status),
    /// Not fenced yet.
    Unknown,
}

/// Fences `fid` for the run after its latest (the first run is 1; a
/// fence only ever grows, and [`StoreError::Superseded`] names the
/// latest); returns that run's number and what is stored of it.
async fn fence_next(
    store: &SharedStore,
    fid: &Fid,
) -> Result<(u32, Option<(u64, Status)>), StoreError> {
    let latest = match store.fence(fid, 1).await {
        Ok(_) => 1,
        Err(StoreError::Superseded { attempt, .. }) => attempt,
        Err(e) => return Err(e),
    };
    let next = latest + 1;
    Ok((next, store.fence(fid, next).await?))
}
