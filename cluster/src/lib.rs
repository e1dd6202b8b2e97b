//! How a node relates to the other processes of its deployment.
//!
//! The transport moves events; this crate carries what processes tell each
//! other about them:
//! - **commit notices**: a Spooler that committed a batch announces, per
//!   execution, the highest seq it committed, so that the live hubs of every
//!   node (SSE followers, launches) hear of commits made elsewhere;
//! - **settling**: a node that starts waits until everything published
//!   before its start is stored, before it closes what its previous run left;
//! - **ordering**: whether one execution's batches always commit in seq order;
//! - **nudges**: a node that paused, resumed or answered a durable execution
//!   tells whichever process runs it to look at its workflow again.
//!
//! - **membership**: a node [`join`](Cluster::join)s with a lease it renews;
//!   [`Cluster::members`] lists the nodes;
//! - **takeover**: when a node's lease runs out, exactly one survivor takes
//!   its executions over ([`Takeover`]), and the lost node, should it wake,
//!   learns it was declared lost ([`Lease::lost`]) and cannot publish any more
//!   ([`kodo_transport::LeaseFence`]);
//! - **routing**: a request for an execution ([`Ask`]) reaches the node
//!   that runs it ([`Lease::ask`], [`Lease::serve`]).
//!
//! [`Solo`] is a deployment of one process (the in-process queue):
//! nothing to announce, nothing to settle, commits in order, no other node.
//! [`RedisCluster`] is many nodes and spooler processes sharing Redis.

mod lease;
mod redis;
mod routing;
mod scripts;
mod takeover;

pub use lease::{JoinSpec, Lease, Member};
pub use redis::RedisCluster;
pub use routing::{Ask, AskHandler, Reply};
pub use takeover::Takeover;

use async_trait::async_trait;
use kodo_core::{Event, Fid};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What went wrong reaching the other processes.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The shared server could not be reached (URL with the password masked).
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    /// Another node did not answer a request in time, or does not listen.
    #[error("node {node} does not answer: {why}")]
    NoAnswer {
        /// The node asked.
        node: String,
        /// Why (not listening: stopped or lost; no answer in time).
        why: String,
    },
}

/// Hears of commits that spoolers in other processes made: per execution,
/// the highest seq they committed. An empty slice means notices may have
/// been missed (the connection was lost): every follower should look again.
pub type CommitListener = Arc<dyn Fn(&[(Fid, u64)]) + Send + Sync>;

/// Hears nudges (see [`Cluster::nudge`]): the executions to look at again.
/// An empty slice means nudges may have been missed: look at all of them.
pub type NudgeListener = Arc<dyn Fn(&[Fid]) + Send + Sync>;

/// The other processes of a deployment, as one node sees them.
#[async_trait]
pub trait Cluster: Send + Sync + std::fmt::Debug + 'static {
    /// Whether one execution's events are always committed in seq order
    /// (one consumer per shard, in one process). Not so with spooler
    /// processes sharing each Redis stream: a later batch may commit first.
    fn commits_in_order(&self) -> bool;

    /// Tells the other processes that these events are committed (per
    /// execution, the highest seq; see [`commit_marks`]). Best effort: a lost
    /// notice is made up for by the listeners' "look again" when they
    /// reconnect.
    async fn announce_commits(&self, committed: &[Event]);

    /// Calls `listener` with the commits spoolers in other processes
    /// announce, for as long as this cluster lives.
    fn listen_commits(&self, listener: CommitListener);

    /// Waits (up to `wait`) until everything published before this call is
    /// stored and acknowledged, by whichever spooler; returns whether it got
    /// there. A node calls it at start, before it closes what its previous
    /// run left unfinished, so no late event lands after the closing status.
    async fn settle(&self, wait: Duration) -> bool;

    /// Tells every process (this one too) to look again at what was asked
    /// of execution `fid` (a durable execution paused, resumed, or its lock
    /// answered: the request itself is in its workflow). Best effort.
    async fn nudge(&self, fid: &Fid);

    /// Calls `listener` with the executions nudged, for as long as this
    /// cluster lives.
    fn listen_nudges(&self, listener: NudgeListener);

    /// Joins the cluster as node `spec.name`: takes its lease (waiting
    /// while a survivor is still taking a previous run of that name over)
    /// and keeps it renewed. The caller must own the name already (its
    /// store claim): a lease still held by another process is then a dead
    /// run's, and is replaced. None: there are no other nodes (`Solo`).
    async fn join(&self, _spec: JoinSpec) -> Result<Option<Arc<Lease>>, ClusterError> {
        Ok(None)
    }

    /// The nodes that hold a lease, or held one and were not taken over
    /// yet; empty when there are no other nodes (`Solo`).
    async fn members(&self) -> Result<Vec<Member>, ClusterError> {
        Ok(Vec::new())
    }
}

/// A shared cluster.
pub type SharedCluster = Arc<dyn Cluster>;

/// A deployment of one process: the in-process queue and its own spoolers.
#[derive(Default)]
pub struct Solo {
    nudged: Mutex<Vec<NudgeListener>>,
}

impl std::fmt::Debug for Solo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Solo").finish_non_exhaustive()
    }
}

impl Solo {
    /// A shared `Solo`.
    pub fn shared() -> SharedCluster {
        Arc::new(Solo::default())
    }
}

#[async_trait]
impl Cluster for Solo {
    fn commits_in_order(&self) -> bool {
        true
    }

    async fn announce_commits(&self, _committed: &[Event]) {}

    fn listen_commits(&self, _listener: CommitListener) {}

    /// An in-process queue starts empty: settled at once.
    async fn settle(&self, _wait: Duration) -> bool {
        true
    }

    /// The one process hears its own nudges, at once.
    async fn nudge(&self, fid: &Fid) {
        let listeners = self.nudged.lock().expect("nudged lock").clone();
        for listener in listeners {
            listener(std::slice::from_ref(fid));
        }
    }

    fn listen_nudges(&self, listener: NudgeListener) {
        self.nudged.lock().expect("nudged lock").push(listener);
    }
}

/// Per execution, the highest seq among `events`: what a commit announces.
pub fn commit_marks(events: &[Event]) -> Vec<(Fid, u64)> {
    let mut marks: HashMap<&Fid, u64> = HashMap::new();
    for e in events {
        let seq = marks.entry(&e.fid).or_default();
        *seq = (*seq).max(e.seq);
    }
    marks
        .into_iter()
        .map(|(fid, seq)| (fid.clone(), seq))
        .collect()
}
