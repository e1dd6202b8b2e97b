//! A node: the supervision tree of one runtime process.
//!
//! ```text
//! node
//! ├── spoolers      Spooler × shards: batch -> commit -> ack -> hub
//! └── executions    per execution: Runner ─ emits to ─ Tracer ─> transport
//! ```
//! At start the node closes what a previous run of it left unfinished
//! (`error: node restarted`); at shutdown it stops every execution, lets the
//! spoolers drain the transport, and closes the store.

use crate::backend::{Control, ControlError, Direct, SharedBackend};
use crate::executions::{ExecMsg, ExecShared, Executions, LaunchError};
use crate::flow::{Ctx, ExecLimits, Flows, Stop};
use crate::hub::Hub;
use crate::leftovers;
use crate::locks::{AnswerError, LockKeeper, Locks};
use crate::membership::{self, NodeTakeover};
use crate::shutdown::{ShutdownReport, check_stored};
use crate::spooler::{SpoolerGroup, SpoolerShared, StoreHealth};
use crate::tracer::{TraceBook, Tracer};
use kodo_cluster::{Ask, JoinSpec, Lease, Reply, SharedCluster};
use kodo_core::{Fid, Status};
use kodo_store::{ExecutionRow, NodeClaim, SharedStore, StoreError};
use kodo_transport::SharedTransport;
use ractor::{Actor, ActorRef};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
    /// Launched here, first events not committed yet.
    unstored: Arc<Mutex<HashMap<Fid, Unstored>>>,
    /// This node's name, owned in the store until shutdown.
    claim: Mutex<Option<NodeClaim>>,
    /// This node's lease in its cluster (None: `Solo`, no other node).
    lease: Option<Arc<Lease>>,
}

impl Node {
    /// Claims the node's name in the store (a second live node of that name
    /// is refused with [`StoreError::NodeTaken`] and changes nothing), closes
    /// what a previous run of this node left unfinished, then starts the
    /// spoolers and the execution supervisor.
    pub async fn start(
        store: SharedStore,
        transport: SharedTransport,
        cluster: SharedCluster,
        flows: Flows,
        options: NodeOptions,
    ) -> Result<Node, NodeError> {
        let claim = store.claim_node(&options.node).await?;
        let running = Arc::new(AtomicUsize::new(0));
        let lease = cluster
            .join(JoinSpec {
                name: options.node.clone(),
                api: options.api.clone(),
                lease: options.lease,
                running: running.clone(),
            })
            .await
            .map_err(|e| NodeError::Cluster(e.to_string()))?;
        if let Some(lease) = &lease {
            // From here on, this run publishes only while it holds its lease.
            transport.fence(lease.fence());
        }
        let joined = lease.clone();
        let started = Self::start_joined(
            store, transport, cluster, flows, options, claim, lease, running,
        )
        .await;
        if let (Err(_), Some(lease)) = (&started, joined) {
            // Not started: leave the cluster, rather than be taken over.
            lease.release().await;
        }
        started
    }

    /// The rest of [`Node::start`], once the name is this run's.
    #[allow(clippy::too_many_arguments)]
    async fn start_joined(
        store: SharedStore,
        transport: SharedTransport,
        cluster: SharedCluster,
        flows: Flows,
        options: NodeOptions,
        claim: NodeClaim,
        lease: Option<Arc<Lease>>,
        running: Arc<AtomicUsize>,
    ) -> Result<Node, NodeError> {
        let hub = Hub::new();
        let locks = Locks::default();
        let health = Arc::new(StoreHealth::default());
        let marks = hub.clone();
        cluster.listen_commits(Arc::new(move |committed| marks.committed_marks(committed)));
        let spoolers = if options.spoolers {
            let shared = SpoolerShared {
                transport: transport.clone(),
                store: store.clone(),
                hub: hub.clone(),
                cluster: cluster.clone(),
                batch_max: options.batch_max.max(1),
                health: health.clone(),
            };
            Some(
                SpoolerGroup::start(shared)
                    .await
                    .map_err(NodeError::Spawn)?,
            )
        } else {
            None
        };
        // Events a previous run of this node published may still be on
        // their way (Redis): let the spoolers store them first, so the
        // closing status comes after them.
        let settled = cluster.settle(options.shutdown_wait).await;
        if !settled {
            tracing::warn!(
                wait = ?options.shutdown_wait,
                "events published before this start are not all stored yet (no spooler running?); closing unfinished executions anyway"
            );
        }
        let closed = leftovers::close_unfinished(
            &store,
            &transport,
            &hub,
            &options,
            &options.node,
            "node restarted",
            settled,
        )
        .await?;
        if closed > 0 {
            tracing::warn!(closed, node = %options.node, "closed executions a previous run left unfinished");
        }
        let exec_shared = ExecShared {
            backend: options.backend.clone(),
            transport: transport.clone(),
            locks: locks.clone(),
            limits: options.limits.clone(),
            node: options.node.clone(),
            max_live: options.max_live,
            running,
        };
        let (executions, executions_done) = Actor::spawn(None, Executions, exec_shared)
            .await
            .map_err(|e| NodeError::Spawn(format!("executions: {e}")))?;
        let (ended, executions_ended) = watch::channel(false);
        tokio::spawn(async move {
            let _ = executions_done.await;
            let _ = ended.send(true);
        });
        if let Some(lease) = &lease {
            lease.take_over_with(Arc::new(NodeTakeover {
                store: store.clone(),
                transport: transport.clone(),
                cluster: cluster.clone(),
                hub: hub.clone(),
                options: options.clone(),
            }));
            lease
                .serve(membership::ask_handler(executions.clone(), locks.clone()))
                .await;
        }
        let stopping = Arc::new(AtomicBool::new(false));
        Ok(Node {
            executions,
            executions_ended,
            spoolers,
            store,
            transport,
            cluster,
            hub,
            locks,
            flows,
            options,
            health,
            stopping,
            unstored: Arc::default(),
            claim: Mutex::new(Some(claim)),
            lease,
        })
    }

    /// Launches `flow` for `owner`; returns once its first events (`meta`,
    /// `status: starting`) are committed, or the launch wait ran out.
    pub async fn launch(
        &self,
        flow: &str,
        owner: &str,
        inputs: Value,
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
    /// publishes to this node's transport; `attempt` counts from 1.
    /// Its locks are kept by `keeper`.
    pub fn context(
        &self,
        fid: Fid,
        flow: &str,
        owner: &str,
        book: TraceBook,
        attempt: u32,
        keeper: Arc<dyn LockKeeper>,
    ) -> Ctx {
        let book = book.with_attempt(attempt);
        let tracer = Arc::new(Tracer::resume(fid.clone(), book, self.transport.clone()));
        Ctx::new(
            fid,
            flow,
            owner,
            tracer,
            keeper,
            self.options.limits.clone(),
            attempt,
        )
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

    /// Resolves if this node's name was lost to another process (its
    /// PostgreSQL claim's connection dropped and another node took the
    /// name), or the cluster declared it lost (it was away past its lease,
    /// and a survivor closed its executions): either way this run must stop
    /// at once, without writing anything more.
    pub fn name_lost(&self) -> impl std::future::Future<Output = String> + Send + use<> {
        let claim = self.claim.lock().expect("claim lock");
        let lost = claim.as_ref().map(NodeClaim::lost);
        drop(claim);
        let declared = self.lease.as_ref().map(|lease| lease.lost());
        async move {
            tokio::select! {
                why = or_pending(lost) => why,
                why = or_pending(declared) => why,
            }
        }
    }

    /// Resolves when a supervisor gave up (a Spooler kept crashing) or
    /// stopped unasked (the execution supervisor): the node can no longer
    /// do its work and should exit with this reason.
    pub async fn failed(&self) -> String {
        let spoolers = async {
            match &self.spoolers {
                Some(spoolers) => spoolers.failed().await,
                None => std::future::pending().await,
            }
        };
        let executions = async {
            let mut ended = self.executions_ended.clone();
            let _ = ended.wait_for(|ended| *ended).await;
            if self.stopping.load(Ordering::Acquire) {
                return std::future::pending().await;
            }
            "the execution supervisor stopped (policy::SUPERVISOR: no restart)".to_string()
        };
        tokio::select! {
            why = spoolers => why,
            why = executions => why,
        }
    }

    /// Stops every execution (`killed: <reason>`), drains the transport into
    /// the store, checks that every event is stored, closes the store and
    /// gives the node's name up. Calling it again does nothing more (and
    /// reports nothing missing).
    pub async fn shutdown(&self, reason: &str) -> ShutdownReport {
        let mut report = ShutdownReport::default();
        if self.stopping.swap(true, Ordering::AcqRel) {
            return report;
        }
        if let Some(lease) = &self.lease {
            lease.leaving();
        }
        let wait = self.options.shutdown_wait;
        let all_stopped = self.executions.call(
            |reply| ExecMsg::StopAll {
                reason: reason.to_string(),
                reply,
            },
            Some(wait),
        );
        let ended = match all_stopped.await {
            Ok(ractor::rpc::CallResult::Success(ended)) => ended,
            _ => {
                tracing::warn!(?wait, "executions did not all stop in time");
                report.unchecked = Some(format!("executions did not all stop within {wait:?}"));
                Vec::new()
            }
        };
        self.executions.stop(None);
        let _ = self.executions_ended.clone().wait_for(|ended| *ended).await;
        match &self.spoolers {
            Some(spoolers) => {
                self.transport.close();
                spoolers.drain(wait).await;
            }
            None => {
                // Spooler processes elsewhere store what this node published.
                report.stored_elsewhere = true;
                if !self.cluster.settle(wait).await {
                    tracing::warn!(
                        ?wait,
                        "the spooler processes have not stored everything yet"
                    );
                }
                self.transport.close();
            }
        }
        let health = self.transport.health().await;
        report.unstored = health.queued + health.pending;
        check_stored(&self.store, ended, wait, &mut report).await;
        if report.all_stored() {
            tracing::info!(checked = report.checked, "every event is stored");
        } else {
            tracing::error!(%report, "events are missing from the store");
        }
        self.store.close().await;
        if let Some(lease) = &self.lease {
            lease.release().await;
        }
        self.claim.lock().expect("claim lock").take();
        report
    }
}

/// Awaits `future`, or forever when there is none.
async fn or_pending<T>(future: Option<impl std::future::Future<Output = T>>) -> T {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}
