//! A node: the supervision tree of one runtime process.
//!
//! ```text
//! node
//! ├── spoolers      Spooler × shards: batch -> commit -> ack -> hub
//! └── executions    per execution: Runner ─ emits to ─ Tracer ─> transport
//! ```
//! At start (`start`) the node closes what a previous run of it left
//! unfinished (`error: node restarted`) and, in a cluster, joins it; at
//! shutdown (`stop`) it stops every execution, lets the spoolers drain the
//! transport, closes the store and gives its lease up. In a cluster, a
//! kill or a lock answer for an execution of another node goes to that node.

mod start;
mod stop;

use crate::backend::{Control, ControlError, Direct, SharedBackend};
use crate::executions::{ExecMsg, LaunchError};
use crate::flow::{Ctx, ExecLimits, Flows, Origin, Stop};
use crate::hub::Hub;
use crate::leftovers;
use crate::locks::{AnswerError, LockKeeper, Locks};
use crate::membership;
use crate::spooler::{SpoolerGroup, StoreHealth};
use crate::steps::{Commits, Journal, Steps};
use crate::tracer::{TraceBook, Tracer};
use kodo_cluster::{Ask, Lease, Reply, SharedCluster};
use kodo_core::{Fid, Status};
use kodo_metrics::{Metrics, SharedMetrics};
use kodo_store::{ExecutionRow, NodeClaim, SharedStore, StoreError};
use kodo_transport::SharedTransport;
use ractor::ActorRef;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How a node runs.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// This node's name; it closes only its own unfinished executions at start.
    pub node: String,
    /// The most events a Spooler commits in one transaction.
    pub batch_max: usize,
    /// Per-execution limits.
    pub limits: ExecLimits,
    /// The most executions at once.
    pub max_live: usize,
    /// How long a launch waits for its first events to be committed.
    pub launch_wait: Duration,
    /// How long shutdown waits for executions to stop and spoolers to drain.
    pub shutdown_wait: Duration,
    /// Run the Spoolers in this node (false: `runtime spool` processes
    /// drain a shared Redis transport instead).
    pub spoolers: bool,
    /// How executions run (default: [`Direct`], a Runner in this process).
    pub backend: SharedBackend,
    /// The address other nodes and `GET /cluster` show for this node's API.
    pub api: String,
    /// How long this node's lease in a cluster lasts without a renewal
    /// (`cluster.lease`): past it, a survivor takes the node over.
    pub lease: Duration,
    /// What this process counts for `GET /metrics`.
    pub metrics: SharedMetrics,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            node: "local".into(),
            batch_max: 1000,
            limits: ExecLimits {
                max_payload: 1 << 20,
                kill_grace: Duration::from_secs(5),
                lock_timeout: Duration::from_secs(3 * 3600),
            },
            max_live: 250_000,
            launch_wait: Duration::from_secs(10),
            shutdown_wait: Duration::from_secs(30),
            spoolers: true,
            backend: Arc::new(Direct),
            api: String::new(),
            lease: Duration::from_secs(10),
            metrics: Arc::new(Metrics::new()),
        }
    }
}

// The node applies policy::SUPERVISOR to its two supervisors: neither is
// started again; the end of one ends the node (see `Node::failed`).
const _: () = assert!(crate::policy::SUPERVISOR.max_restarts == 0);

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The store failed while closing unfinished executions.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An actor could not be started.
    #[error("could not start {0}")]
    Spawn(String),
    /// An execution left unfinished could not be closed.
    #[error("could not close an execution left unfinished: {0}")]
    Close(String),
    /// The node could not join its cluster.
    #[error("could not join the cluster: {0}")]
    Cluster(String),
}

/// Why a kill was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum KillError {
    /// The execution is not running on this node (it ended, or never was).
    #[error("execution {0} is not running")]
    NotRunning(String),
    /// The backend that runs it elsewhere could not be reached (Temporal).
    #[error("cannot reach the execution: {0}")]
    Unreachable(String),
}

/// A started execution.
#[derive(Clone, Debug, PartialEq)]
pub struct Launched {
    /// Its id.
    pub fid: Fid,
    /// Whether its first events were committed before the launch wait ran out.
    pub stored: bool,
}

/// What a node knows of an execution whose first events are not stored yet:
/// flow, owner, launch time.
type Unstored = (String, String, f64);

/// A running node.
#[derive(Debug)]
pub struct Node {
    executions: ActorRef<ExecMsg>,
    /// True once the execution supervisor has ended.
    executions_ended: watch::Receiver<bool>,
    /// None when spooler processes of their own drain the transport.
    spoolers: Option<SpoolerGroup>,
    store: SharedStore,
    transport: SharedTransport,
    cluster: SharedCluster,
    hub: Arc<Hub>,
    locks: Locks,
    flows: Flows,
    options: NodeOptions,
    health: Arc<StoreHealth>,
    stopping: Arc<AtomicBool>,
    /// The spans of the executions running here (commit spans link to them).
    spans: Arc<crate::spans::SpanBook>,
    /// Launched here, first events not committed yet.
    unstored: Arc<Mutex<HashMap<Fid, Unstored>>>,
    /// This node's name, owned in the store until shutdown.
    claim: Mutex<Option<NodeClaim>>,
    /// This node's lease in its cluster (None: `Solo`, no other node).
    lease: Option<Arc<Lease>>,
}

impl Node {
    /// Launches `flow` for `owner`; returns once its first events (`meta`,
    /// `status: starting`) are committed, or the launch wait ran out.
    pub async fn launch(
        &self,
        flow: &str,
        owner: &str,
        inputs: Value,
    ) -> Result<Launched, LaunchError> {
        self.launch_from(flow, owner, inputs, Origin::default())
            .await
    }

    /// [`Node::launch`] with `origin`: the caller's trace (its span a child
    /// of the W3C `traceparent`), and what the flow's form decided (see
    /// [`Origin`]).
    pub async fn launch_from(
        &self,
        flow: &str,
        owner: &str,
        inputs: Value,
        origin: Origin,
    ) -> Result<Launched, LaunchError> {
        let def = self
            .flows
            .get(flow)
            .ok_or_else(|| LaunchError::UnknownFlow(flow.to_string()))?;
        let fid = Fid::new();
        let mut committed = self.hub.subscribe(&fid);
        let launched_at = kodo_core::now_ts();
        let started = self
            .executions
            .call(
                |reply| ExecMsg::Launch {
                    fid: fid.clone(),
                    flow: def,
                    owner: owner.to_string(),
                    inputs,
                    resumed: None,
                    origin: Box::new(origin),
                    reply,
                },
                None,
            )
            .await
            .map_err(|_| LaunchError::ShuttingDown)?;
        let ready = match started {
            ractor::rpc::CallResult::Success(result) => result?,
            _ => return Err(LaunchError::ShuttingDown),
        };
        if let Some(ready) = ready {
            match ready.await {
                Ok(Ok(())) => {}
                Ok(Err(why)) => return Err(LaunchError::Spawn(why)),
                Err(_) => return Err(LaunchError::Spawn("the start was abandoned".into())),
            }
        }
        let first_events = async {
            committed.until(2).await;
            if self.cluster.commits_in_order() {
                return;
            }
            // A later batch may have committed first: wait for the row's meta.
            while !self
                .store
                .execution(&fid)
                .await
                .is_ok_and(|row| row.is_some_and(|r| !r.owner.is_empty()))
            {
                committed.changed().await;
            }
        };
        let stored = tokio::time::timeout(self.options.launch_wait, first_events)
            .await
            .is_ok();
        if !stored {
            // Nobody knows the fid before this returns, so the node needs to
            // answer for it only from here until its first events are stored.
            self.unstored.lock().expect("unstored lock").insert(
                fid.clone(),
                (flow.to_string(), owner.to_string(), launched_at),
            );
            let (unstored, fid) = (self.unstored.clone(), fid.clone());
            tokio::spawn(async move {
                committed.until(2).await;
                unstored.lock().expect("unstored lock").remove(&fid);
            });
        }
        Ok(Launched { fid, stored })
    }

    /// Kills a running execution: its status becomes `killed`.
    /// Here, on the node that runs it (in a cluster), or through its
    /// backend (durable mode).
    pub async fn kill(&self, fid: &Fid, reason: &str) -> Result<(), KillError> {
        if membership::stop_here(&self.executions, fid, reason).await {
            return Ok(());
        }
        let ask = || Ask::Kill {
            fid: fid.clone(),
            reason: reason.to_string(),
        };
        if let Some(answered) = self.ask_runner(fid, ask).await {
            return match answered {
                Ok(Reply::Done) => Ok(()),
                Ok(_) => Err(KillError::NotRunning(fid.to_string())),
                Err(e) => Err(KillError::Unreachable(e.to_string())),
            };
        }
        // Not here: a durable execution runs on some worker; its backend reaches it.
        match self
            .options
            .backend
            .stop(fid, Stop::new(Status::Killed, reason))
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(KillError::NotRunning(fid.to_string())),
            Err(e) => {
                tracing::warn!(%fid, error = %e, "could not reach the execution's backend to kill it");
                Err(KillError::Unreachable(e))
            }
        }
    }

    /// A context for execution `fid` run here by another backend (an
    /// attempt of a durable execution): its Tracer goes on from `book` and
    /// publishes to this node's transport; `attempt` counts from 1; its
    /// steps replay `journal` (see [`Journal::load`]). Its locks are kept
    /// by `keeper`; its span is a child of `traceparent` (W3C).
    #[allow(clippy::too_many_arguments)]
    pub fn context(
        &self,
        fid: Fid,
        flow: &str,
        owner: &str,
        book: TraceBook,
        attempt: u32,
        journal: Journal,
        keeper: Arc<dyn LockKeeper>,
        origin: Origin,
    ) -> Ctx {
        let book = book.with_attempt(attempt);
        let tracer = Tracer::resume(fid.clone(), book, self.transport.clone())
            .counted(self.options.metrics.execution(flow));
        let tracer = Arc::new(tracer);
        Ctx::new(
            fid,
            flow,
            owner,
            tracer,
            keeper,
            self.options.limits.clone(),
            attempt,
            Steps::new(journal, Commits::new(self.store.clone(), self.hub.clone())),
        )
        .with_origin(origin)
        .listed_in(&self.spans)
    }

    /// Execution `fid`'s journal of steps, as stored now.
    pub async fn journal(&self, fid: &Fid) -> Result<Journal, StoreError> {
        Journal::load(&self.store, fid).await
    }

    /// Waits (up to `wait`) until everything published so far, by any
    /// process, is stored (see `Cluster::settle`).
    pub async fn settle(&self, wait: Duration) -> bool {
        self.cluster.settle(wait).await
    }

    /// Waits (up to `within`) until the store holds `fid`'s events up to
    /// `seq`, however they get there (this node's spoolers, or another
    /// process's); returns whether they are.
    pub async fn until_stored(&self, fid: &Fid, seq: u64, within: Duration) -> bool {
        let mut committed = self.hub.subscribe(fid);
        let stored = leftovers::stored(&self.store, &mut committed, fid, seq);
        tokio::time::timeout(within, stored).await.is_ok()
    }

    /// The other processes of this node's deployment.
    pub fn cluster(&self) -> &SharedCluster {
        &self.cluster
    }

    /// This node's lease in its cluster (None: no other node).
    pub fn lease(&self) -> Option<&Arc<Lease>> {
        self.lease.as_ref()
    }

    /// Sends `ask()` to the other node that runs direct execution `fid`
    /// and returns its answer; None when no other node does (no cluster,
    /// the execution ended, or it is this node's or Temporal's).
    async fn ask_runner(
        &self,
        fid: &Fid,
        ask: impl FnOnce() -> Ask,
    ) -> Option<Result<Reply, kodo_cluster::ClusterError>> {
        let lease = self.lease.as_ref()?;
        let row = self.store.execution(fid).await.ok()??;
        let node = membership::runs_elsewhere(&row, &self.options.node)?;
        Some(lease.ask(node, ask()).await)
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.options.node
    }

    /// The address this node's API answers on (as other nodes see it).
    pub fn api(&self) -> &str {
        &self.options.api
    }

    /// The per-execution limits.
    pub fn limits(&self) -> &ExecLimits {
        &self.options.limits
    }

    /// The most executions this node runs at once.
    pub fn max_running(&self) -> usize {
        self.options.max_live
    }

    /// Answers an open lock: here, on the node that runs the execution (in
    /// a cluster), or through the backend (a durable execution's lock lives
    /// in its workflow).
    pub async fn answer_lock(
        &self,
        fid: &Fid,
        lid: &str,
        answer: Value,
    ) -> Result<(), ControlError> {
        if self.locks.is_open(fid, lid) {
            return self.locks.answer(fid, lid, answer).map_err(|e| match e {
                AnswerError::NotFound { .. } => ControlError::NotFound(e.to_string()),
            });
        }
        let ask = || Ask::Answer {
            fid: fid.clone(),
            lid: lid.to_string(),
            answer: answer.clone(),
        };
        if let Some(answered) = self.ask_runner(fid, ask).await {
            return match answered {
                Ok(Reply::Done) => Ok(()),
                Ok(Reply::NotFound(why)) => Err(ControlError::NotFound(why)),
                Ok(Reply::NotRunning(why)) => Err(ControlError::Conflict(why)),
                Err(e) => Err(ControlError::Unreachable(e.to_string())),
            };
        }
        let lid = lid.to_string();
        self.control(fid, Control::Answer { lid, answer }).await
    }

    /// What this node's backend knows of execution `fid` beyond its events
    /// (see [`crate::ExecutionBackend::describe`]).
    pub async fn describe(&self, fid: &Fid) -> Result<Option<Value>, String> {
        self.options.backend.describe(fid).await
    }

    /// Pauses, resumes or answers execution `fid`, wherever it runs
    /// (see [`crate::ExecutionBackend::control`]). A pause or resume needs the
    /// execution running (`running` stored: its attempt hears of it).
    pub async fn control(&self, fid: &Fid, control: Control) -> Result<(), ControlError> {
        if matches!(control, Control::Pause | Control::Resume) {
            let row = self.store.execution(fid).await.map_err(|e| {
                ControlError::Unreachable(format!("the store cannot say its status: {e}"))
            })?;
            match row.map(|row| row.status) {
                Some(Status::Starting) | None => {
                    return Err(ControlError::Conflict(format!(
                        "execution {fid} is not running yet"
                    )));
                }
                Some(status) if status.is_final() => {
                    return Err(ControlError::Conflict(format!(
                        "execution {fid} has ended: {status}"
                    )));
                }
                _ => {}
            }
        }
        self.options.backend.control(fid, control).await
    }

    /// An execution launched here whose first events are not stored yet
    /// (the store is slow or down), as far as this node knows it: status
    /// `starting`, no events stored.
    pub fn find_unstored(&self, fid: &Fid) -> Option<ExecutionRow> {
        let (flow, owner, created) = self
            .unstored
            .lock()
            .expect("unstored lock")
            .get(fid)?
            .clone();
        Some(ExecutionRow {
            fid: fid.clone(),
            flow,
            owner,
            node: self.options.node.clone(),
            status: Status::Starting,
            created,
            updated: created,
            events: 0,
        })
    }

    /// How many executions run now.
    pub async fn running(&self) -> usize {
        match self.executions.call(ExecMsg::Count, None).await {
            Ok(ractor::rpc::CallResult::Success(n)) => n,
            _ => 0,
        }
    }

    /// The store.
    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// The transport.
    pub fn transport(&self) -> &SharedTransport {
        &self.transport
    }

    /// The live hub.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The flows this node runs.
    pub fn flows(&self) -> &Flows {
        &self.flows
    }

    /// The error of the store's last failed write, while writes fail.
    pub fn store_error(&self) -> Option<String> {
        self.health.error()
    }

    /// What this process counts (`GET /metrics`).
    pub fn metrics(&self) -> &SharedMetrics {
        &self.options.metrics
    }
}
