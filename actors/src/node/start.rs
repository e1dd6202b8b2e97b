//! Starting a node: its name claimed and its lease taken, what a previous
//! run left closed, then its spoolers and execution supervisor started,
//! and, in a cluster, its part in takeovers and routed requests.

use super::{Node, NodeError, NodeOptions};
use crate::executions::{ExecShared, Executions};
use crate::flow::Flows;
use crate::hub::Hub;
use crate::leftovers;
use crate::locks::Locks;
use crate::membership::{self, NodeTakeover};
use crate::recovery::{Plan, Recovery};
use crate::spooler::{SpoolerGroup, SpoolerShared, StoreHealth};
use crate::steps::Commits;
use kodo_cluster::{JoinSpec, Lease, SharedCluster};
use kodo_store::{NodeClaim, SharedStore};
use kodo_transport::SharedTransport;
use ractor::Actor;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

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
        let spans = Arc::new(crate::spans::SpanBook::default());
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
                metrics: options.metrics.clone(),
                spans: spans.clone(),
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
        let recovery = Recovery {
            store: &store,
            transport: &transport,
            flows: &flows,
            options: &options,
        };
        // Not settled: the dead run's last events may still come, and a run
        // resumed now would collide with them; those executions end instead.
        let plan = if settled {
            recovery.plan(&options.node, "the node restarted").await?
        } else {
            Plan::default()
        };
        let closed = leftovers::close_unfinished(
            &store,
            &transport,
            &hub,
            &options,
            &options.node,
            settled,
            &|row| plan.closes(row, "node restarted"),
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
            commits: Commits::new(store.clone(), hub.clone()),
            resume_after_stop: lease.is_none(),
            metrics: options.metrics.clone(),
            spans: spans.clone(),
        };
        let (executions, executions_done) = Actor::spawn(None, Executions, exec_shared)
            .await
            .map_err(|e| NodeError::Spawn(format!("executions: {e}")))?;
        let (ended, executions_ended) = watch::channel(false);
        tokio::spawn(async move {
            let _ = executions_done.await;
            let _ = ended.send(true);
        });
        let resumed = recovery
            .start(plan, "the node restarted", &executions)
            .await;
        if resumed > 0 {
            tracing::warn!(resumed, node = %options.node, "resumed executions a previous run left unfinished");
        }
        if let Some(lease) = &lease {
            lease.take_over_with(Arc::new(NodeTakeover {
                store: store.clone(),
                transport: transport.clone(),
                cluster: cluster.clone(),
                hub: hub.clone(),
                flows: flows.clone(),
                executions: executions.clone(),
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
            spans,
            unstored: Arc::default(),
            claim: Mutex::new(Some(claim)),
            lease,
        })
    }
}
