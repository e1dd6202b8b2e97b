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
use std::collections::HashMap;
use std::sync::Arc;

/// What decides and starts the runs again: the store, the transport, the
/// flows and the options of this node.
pub(crate) struct Recovery<'a> {
    pub store: &'a SharedStore,
    pub transport: &'a SharedTransport,
    pub flows: &'a Flows,
    pub options: &'a NodeOptions,
}

/// What becomes of the executions a dead run left unfinished: those that
/// run again (fenced, their journal read), and the reasons the others close
/// with, where it is not the usual one.
#[derive(Default)]
pub(crate) struct Plan {
    runs: Vec<(ExecutionRow, Arc<FlowDef>, serde_json::Value, Resumed)>,
    reasons: HashMap<Fid, String>,
}

impl Plan {
    /// Why `row` closes (`usual` unless said otherwise); None: it runs again.
    pub(crate) fn closes(&self, row: &ExecutionRow, usual: &str) -> Option<String> {
        if self.runs.iter().any(|(r, ..)| r.fid == row.fid) {
            return None;
        }
        Some(
            self.reasons
                .get(&row.fid)
                .cloned()
                .unwrap_or_else(|| usual.to_string()),
        )
    }
}

/// Whether `row`, left unfinished, may run again: its flow resumes, and
/// this node runs flows itself (direct mode).
fn resumes(flows: &Flows, options: &NodeOptions, row: &ExecutionRow) -> bool {
    options.backend.name() == "direct"
        && flows
            .get(&row.flow)
            .is_some_and(|flow| flow.recover == Recover::Resume)
}

impl Recovery<'_> {
    /// Decides, for each execution `node` left unfinished whose flow
    /// resumes, whether it runs again (after `why`, what happened to its
    /// previous run) or ends: out of attempts, or it cannot (logged).
    /// Call it once everything the dead run published is stored.
    pub(crate) async fn plan(&self, node: &str, why: &str) -> Result<Plan, StoreError> {
        let mut plan = Plan::default();
        for row in self.store.unfinished(node).await? {
            if !resumes(self.flows, self.options, &row) {
                continue;
            }
            let flow = self.flows.get(&row.flow).expect("checked by resumes");
            match self.prepare(&row, &flow, why).await {
                Ok(Some((inputs, resumed))) => plan.runs.push((row, flow, inputs, resumed)),
                Ok(None) => {
                    let reason = format!("{why}; gave up after {} attempts", flow.attempts);
                    tracing::warn!(fid = %row.fid, flow = %flow.name, "{reason}");
                    plan.reasons.insert(row.fid, reason);
                }
                Err(e) => {
                    tracing::error!(fid = %row.fid, error = %e, "cannot resume an execution; it ends");
                    plan.reasons
                        .insert(row.fid, format!("{why}; cannot resume: {e}"));
                }
            }
        }
        Ok(plan)
    }

    /// Fences `row` for its next run and reads what that run needs; None
    /// when it is out of attempts.
    async fn prepare(
        &self,
        row: &ExecutionRow,
        flow: &FlowDef,
        why: &str,
    ) -> Result<Option<(serde_json::Value, Resumed)>, String> {
        let fid = &row.fid;
        let (attempt, stored) = fence_next(self.store, fid)
            .await
            .map_err(|e| e.to_string())?;
        let (events, status) = stored.ok_or("nothing of it is stored")?;
        if attempt > flow.attempts {
            return Ok(None);
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
        let resumed = Resumed {
            book: TraceBook::resume(self.options.limits.max_payload, events, status),
            attempt,
            journal,
            marker,
        };
        Ok(Some((inputs, resumed)))
    }

    /// Starts the runs of `plan` on this node (which the store names as
    /// theirs from now on); returns how many started. One that cannot
    /// start ends `error`, saying why.
    pub(crate) async fn start(&self, plan: Plan, executions: &ActorRef<ExecMsg>) -> usize {
        let mut started = 0;
        for (row, flow, inputs, resumed) in plan.runs {
            let fid = row.fid.clone();
            tracing::info!(%fid, flow = %flow.name, attempt = resumed.attempt, steps = resumed.journal.len(), "resuming an execution");
            let book = resumed.book.clone().with_attempt(resumed.attempt);
            match self.launch(&row, flow, inputs, resumed, executions).await {
                Ok(()) => started += 1,
                Err(e) => {
                    tracing::error!(%fid, error = %e, "could not resume an execution; it ends");
                    let tracer = Tracer::resume(fid.clone(), book, self.transport.clone());
                    let reason = format!("could not resume: {e}");
                    if let Err(e) = tracer.trace(Trace::Finish(Outcome::Failed(reason))).await {
                        tracing::error!(%fid, error = %e, "could not close an execution");
                    }
                }
            }
        }
        started
    }

    async fn launch(
        &self,
        row: &ExecutionRow,
        flow: Arc<FlowDef>,
        inputs: serde_json::Value,
        resumed: Resumed,
        executions: &ActorRef<ExecMsg>,
    ) -> Result<(), String> {
        if row.node != self.options.node {
            self.store
                .adopt(&row.fid, &self.options.node)
                .await
                .map_err(|e| e.to_string())?;
        }
        let started = executions
            .call(
                |reply| ExecMsg::Launch {
                    fid: row.fid.clone(),
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
            ractor::rpc::CallResult::Success(Ok(_)) => Ok(()),
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
