//! Executions a dead run of this node left unfinished whose flow says
//! `recover = "resume"` run again from the start, with their journal of
//! steps (see [`crate::steps`]): the same fid, numbered after the last
//! stored event, each new run fenced and marked by a `debug` event. Past
//! the flow's `attempts` they end with `error` and the cause instead.
//! (The others are closed by [`crate::leftovers`].)

use crate::executions::{ExecMsg, Resumed};
use crate::flow::{FlowDef, Flows, Origin, Recover};
use crate::node::NodeOptions;
use crate::steps::Journal;
use crate::tracer::{Outcome, Trace, TraceBook, Tracer};
use kodo_core::{Fid, Kind, Meta};
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
/// run again (with their run's number), and the reasons the others close
/// with, where it is not the usual one.
#[derive(Default)]
pub(crate) struct Plan {
    runs: Vec<(ExecutionRow, Arc<FlowDef>, u32)>,
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
/// runs on this node (not durably, on Temporal).
fn resumes(flows: &Flows, options: &NodeOptions, row: &ExecutionRow) -> bool {
    !options.backend.durable(&row.flow)
        && flows
            .get(&row.flow)
            .is_some_and(|flow| flow.recover == Recover::Resume)
}

impl Recovery<'_> {
    /// Decides, for each execution `node` left unfinished whose flow
    /// resumes, whether it runs again or ends (out of attempts, or its
    /// attempt cannot be read: logged). Changes nothing. Call it once
    /// everything the dead run published is stored.
    pub(crate) async fn plan(&self, node: &str, why: &str) -> Result<Plan, StoreError> {
        let mut plan = Plan::default();
        for row in self.store.unfinished(node).await? {
            if !resumes(self.flows, self.options, &row) {
                continue;
            }
            let flow = self.flows.get(&row.flow).expect("checked by resumes");
            match latest_attempt(self.store, &row.fid).await {
                Ok(latest) if latest < flow.attempts => plan.runs.push((row, flow, latest + 1)),
                Ok(_) => {
                    let reason = format!(
                        "{why}; gave up after {} attempt{}",
                        flow.attempts,
                        if flow.attempts == 1 { "" } else { "s" }
                    );
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

    /// Starts the runs of `plan` on this node (which the store names as
    /// theirs from now on), each after `why`; returns how many started.
    /// One that cannot start ends `error`, saying why.
    pub(crate) async fn start(
        &self,
        plan: Plan,
        why: &str,
        executions: &ActorRef<ExecMsg>,
    ) -> usize {
        let mut started = 0;
        for (row, flow, attempt) in plan.runs {
            let fid = row.fid.clone();
            // From here on, no older run adds anything (nor a step).
            let (events, status) = match self.store.fence_first(&fid, attempt).await {
                Ok(Some(stored)) => stored,
                Ok(None) => (row.events, row.status),
                Err(StoreError::Superseded { .. }) => {
                    tracing::warn!(%fid, attempt, "another run of this execution began; not resuming it here");
                    continue;
                }
                Err(e) => {
                    tracing::error!(%fid, error = %e, "cannot fence an execution to resume it; it stays open");
                    continue;
                }
            };
            if status.is_final() {
                continue;
            }
            let book = TraceBook::resume(self.options.limits.max_payload, events, status);
            match self
                .launch(&row, flow, attempt, book.clone(), why, executions)
                .await
            {
                Ok(()) => started += 1,
                Err(e) => {
                    tracing::error!(%fid, error = %e, "could not resume an execution; it ends");
                    let book = book.with_attempt(attempt);
                    let tracer = Tracer::resume(fid.clone(), book, self.transport.clone())
                        .counted(self.options.metrics.execution(&row.flow));
                    let reason = format!("{why}; could not resume: {e}");
                    if let Err(e) = tracer.trace(Trace::Finish(Outcome::Failed(reason))).await {
                        tracing::error!(%fid, error = %e, "could not close an execution");
                    }
                }
            }
        }
        started
    }

    /// Reads what run `attempt` needs (inputs, journal: after the fence),
    /// makes this node the execution's, and launches it.
    async fn launch(
        &self,
        row: &ExecutionRow,
        flow: Arc<FlowDef>,
        attempt: u32,
        book: TraceBook,
        why: &str,
        executions: &ActorRef<ExecMsg>,
    ) -> Result<(), String> {
        let (inputs, origin) = self.begun(&row.fid).await?;
        let journal = Journal::load(self.store, &row.fid)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(fid = %row.fid, flow = %flow.name, attempt, steps = journal.len(), "resuming an execution");
        let marker = format!(
            "attempt {attempt} of {}: {why}; {} steps replay from the journal",
            flow.attempts,
            journal.len()
        );
        let resumed = Resumed {
            book,
            attempt,
            journal,
            marker,
        };
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
                    origin: Box::new(origin),
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

    /// The inputs it was launched with, and its origin from its `meta`: the
    /// trace its first run was in (the new run's span continues it), what
    /// its form decided, and its job (its hold released when answered).
    async fn begun(&self, fid: &Fid) -> Result<(serde_json::Value, Origin), String> {
        let query = EventQuery {
            after: 0,
            limit: 2,
            kinds: Some(vec![Kind::Meta, Kind::Inputs]),
        };
        let events = self
            .store
            .events(fid, &query)
            .await
            .map_err(|e| e.to_string())?;
        let mut origin = events
            .iter()
            .find(|e| e.kind == Kind::Meta)
            .and_then(|e| serde_json::from_str::<Meta>(&e.payload).ok())
            .map(|meta| Origin {
                traceparent: meta.trace,
                launch: meta.launch,
                job: meta.job,
            })
            .unwrap_or_default();
        if let Some(hold) = origin.job.as_mut().and_then(|job| job.get_mut("hold"))
            && self.answered(fid, &crate::hold::hold_id(fid)).await?
        {
            hold["released"] = serde_json::Value::Bool(true);
        }
        let inputs = events
            .iter()
            .find(|e| e.kind == Kind::Inputs)
            .ok_or("its inputs are not stored")?;
        let inputs =
            serde_json::from_str(&inputs.payload).map_err(|e| format!("its stored inputs: {e}"))?;
        Ok((inputs, origin))
    }
}

impl Recovery<'_> {
    /// Whether lock `lid` of `fid` was answered (its `lease` holds a result).
    async fn answered(&self, fid: &Fid, lid: &str) -> Result<bool, String> {
        let (_, lease) = crate::locks::stored_lock(self.store, fid, lid)
            .await
            .map_err(|e| e.to_string())?;
        Ok(lease.is_some_and(|lease| lease.get("result").is_some()))
    }
}

/// The number of `fid`'s latest run (its first is 1). Probing with a fence
/// for run 1 changes nothing that matters: a fence only ever grows, and
/// events of a first run (numbered 0) are never fenced; a later fence is
/// named by [`StoreError::Superseded`].
async fn latest_attempt(store: &SharedStore, fid: &Fid) -> Result<u32, StoreError> {
    match store.fence(fid, 1).await {
        Ok(_) => Ok(1),
        Err(StoreError::Superseded { attempt, .. }) => Ok(attempt),
        Err(e) => Err(e),
    }
}
