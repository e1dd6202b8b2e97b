//! What a node does as a member of a cluster (see `kodo_cluster::Lease`):
//! it takes lost nodes over, answers the requests other nodes route to it,
//! and routes its own to the node that runs an execution.

use crate::executions::ExecMsg;
use crate::flow::{Flows, Stop};
use crate::hub::Hub;
use crate::leftovers;
use crate::locks::Locks;
use crate::node::NodeOptions;
use crate::recovery::Recovery;
use async_trait::async_trait;
use kodo_cluster::{Ask, AskHandler, Reply, SharedCluster, Takeover};
use kodo_core::{Fid, Status};
use kodo_store::{ExecutionRow, SharedStore};
use kodo_transport::SharedTransport;
use ractor::ActorRef;
use std::sync::Arc;

/// The reason a lost node's executions end with.
pub(crate) const NODE_LOST: &str = "node lost";

/// The rows of durable executions name this node: Temporal runs them, and
/// no node takes them over.
const DURABLE_NODE: &str = "temporal:";

/// A node's part in taking lost nodes over.
pub(crate) struct NodeTakeover {
    pub(crate) store: SharedStore,
    pub(crate) transport: SharedTransport,
    pub(crate) cluster: SharedCluster,
    pub(crate) hub: Arc<Hub>,
    pub(crate) flows: Flows,
    pub(crate) executions: ActorRef<ExecMsg>,
    pub(crate) options: NodeOptions,
}

#[async_trait]
impl Takeover for NodeTakeover {
    /// Lets everything published so far be stored (the lost node can
    /// publish nothing more: its lease is another's), then closes each of
    /// its unfinished executions with `error: node lost`, after its last
    /// stored event, but those whose flow resumes: they run again here.
    /// Not all stored, or not all closed in time: an error, and the
    /// takeover is tried again.
    async fn take_over(&self, node: &str) -> Result<usize, String> {
        let wait = self.options.shutdown_wait;
        if !self.cluster.settle(wait).await {
            return Err(format!(
                "what was published before is not all stored within {wait:?} (no spooler running?)"
            ));
        }
        // Those whose flow resumes run again here, with their journal.
        let recovery = Recovery {
            store: &self.store,
            transport: &self.transport,
            flows: &self.flows,
            options: &self.options,
        };
        let why = format!("node {node} was lost");
        let plan = recovery.plan(node, &why).await.map_err(|e| e.to_string())?;
        let closing = |row: &ExecutionRow| plan.closes(row, NODE_LOST);
        let closed = leftovers::close_unfinished(
            &self.store,
            &self.transport,
            &self.hub,
            &self.options,
            node,
            true,
            &closing,
        )
        .await
        .map_err(|e| e.to_string())?;
        let resumed = recovery.start(plan, &why, &self.executions).await;
        if resumed > 0 {
            tracing::warn!(
                resumed,
                lost = node,
                "resumed executions of a lost node here"
            );
        }
        match self.store.unfinished(node).await {
            Ok(open) if open.is_empty() => Ok(closed),
            Ok(open) => Err(format!("{} executions not closed yet", open.len())),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Answers what other nodes ask of the executions running here.
pub(crate) fn ask_handler(executions: ActorRef<ExecMsg>, locks: Locks) -> AskHandler {
    Arc::new(move |ask| {
        let (executions, locks) = (executions.clone(), locks.clone());
        Box::pin(async move {
            match ask {
                Ask::Kill { fid, reason } => {
                    if stop_here(&executions, &fid, &reason).await {
                        Reply::Done
                    } else {
                        Reply::NotRunning(format!("execution {fid} is not running"))
                    }
                }
                Ask::Answer { fid, lid, answer } => match locks.answer(&fid, &lid, answer) {
                    Ok(()) => Reply::Done,
                    Err(e) => Reply::NotFound(e.to_string()),
                },
            }
        })
    })
}

/// Stops execution `fid` if it runs here (`killed: reason`); whether it did.
pub(crate) async fn stop_here(executions: &ActorRef<ExecMsg>, fid: &Fid, reason: &str) -> bool {
    let stop = Stop::new(Status::Killed, reason);
    let running = executions
        .call(
            |reply| ExecMsg::Stop {
                fid: fid.clone(),
                stop,
                reply,
            },
            None,
        )
        .await;
    matches!(running, Ok(ractor::rpc::CallResult::Success(true)))
}

/// The node that runs direct execution `fid`, when it is another than
/// `me` and the execution has not ended: where a request for it goes.
pub(crate) fn runs_elsewhere<'r>(row: &'r ExecutionRow, me: &str) -> Option<&'r str> {
    let node = row.node.as_str();
    (!row.status.is_final() && !node.is_empty() && node != me && !node.starts_with(DURABLE_NODE))
        .then_some(node)
}
