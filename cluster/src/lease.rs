//! Membership over Redis: each node holds a lease, and a node whose lease
//! runs out is taken over by exactly one survivor ([`crate::takeover`]).
//!
//! Keys (prefix `kodo` by default), for node `N`:
//! - `kodo:lease:N`: the token of the run of `N` that holds it, expiring
//!   after the lease (`cluster.lease`); renewed every tenth of it (at most
//!   every second).
//! - `kodo:node:N`: what [`Member`] shows (API address, start, last renewal,
//!   running executions); `kodo:nodes`: the names of every such hash.
//! - `kodo:takeover:N`: the token of the one survivor taking `N` over.
//! - `kodo:lost:N`: when a run of `N` was declared lost (ms, Redis's
//!   clock); a run of `N` that started before it is lost, and learns so at
//!   its next renewal. A new run starts after it.
//!
//! The scripts are in [`crate::scripts`]. A survivor declares a node lost
//! only while its own lease is in place (else Redis itself lost its keys:
//! restarted, flushed) and only after a full lease of renewing its own
//! without fault (so every live node has had the time to take its lease
//! again after Redis was away). Renewals run in a task of their own, which
//! does nothing else, so a slow judgement never delays them.

use crate::routing::{Asker, Server};
use crate::scripts::{JOIN, RELEASE, RENEW, eval};
use crate::takeover::{Takeover, judge_loop, keep_takeovers, stop_takeovers};
use crate::{Ask, AskHandler, ClusterError, Reply};
use redis::aio::ConnectionManager;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::task::AbortOnDropHandle;

/// What a node tells the cluster when it joins.
#[derive(Clone, Debug)]
pub struct JoinSpec {
    /// Its name.
    pub name: String,
    /// The address its API listens on (shown by `GET /cluster`; empty for
    /// a process without an API, a Temporal worker).
    pub api: String,
    /// How long its lease lasts without a renewal.
    pub lease: Duration,
    /// How many executions it runs now (shown by `GET /cluster`).
    pub running: Arc<AtomicUsize>,
}

/// A node as the cluster lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Member {
    /// Its name.
    pub name: String,
    /// Its API address.
    pub api: String,
    /// When it joined (Unix seconds, Redis's clock).
    pub started: f64,
    /// When it last renewed its lease.
    pub renewed: f64,
    /// The executions it ran at its last renewal.
    pub running: u64,
    /// Whether its lease holds now (false: it ran out; a survivor takes
    /// the node over).
    pub live: bool,
}

/// This run's lease, renewed for as long as it lives. Dropping it stops the
/// renewals (the lease then runs out); [`Lease::release`] gives it up now.
pub struct Lease {
    shared: Arc<Shared>,
    asker: Arc<Asker>,
    renewing: Mutex<Option<AbortOnDropHandle<()>>>,
    judging: Mutex<Option<AbortOnDropHandle<()>>>,
    serving: Mutex<Option<Server>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("node", &self.shared.spec.name)
            .finish_non_exhaustive()
    }
}

/// What the renewals, the judging and the lease's handle share.
pub(crate) struct Shared {
    pub(crate) conn: ConnectionManager,
    pub(crate) keys: Keys,
    pub(crate) spec: JoinSpec,
    pub(crate) token: String,
    /// When this run took its lease (ms, Redis's clock).
    started: String,
    lost: watch::Sender<Option<String>>,
    pub(crate) takeover: OnceLock<Arc<dyn Takeover>>,
    /// Since when this run has renewed its lease without fault.
    pub(crate) healthy_since: Mutex<Option<Instant>>,
    /// The nodes this run is taking over now.
    pub(crate) taking: Mutex<HashMap<String, tokio::task::AbortHandle>>,
}

impl Shared {
    pub(crate) fn lease_ms(&self) -> u64 {
        self.spec.lease.as_millis().max(1) as u64
    }

    /// How often renewals and judgements run: a tenth of the lease, 50 ms
    /// to 1 s.
    pub(crate) fn tick(&self) -> Duration {
        (self.spec.lease / 10).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }
}

/// The key names of one deployment.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    pub(crate) prefix: String,
}

impl Keys {
    pub(crate) fn lease(&self, node: &str) -> String {
        format!("{}:lease:{node}", self.prefix)
    }
    fn node(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }
    pub(crate) fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
    pub(crate) fn takeover(&self, node: &str) -> String {
        format!("{}:takeover:{node}", self.prefix)
    }
    pub(crate) fn lost(&self, node: &str) -> String {
        format!("{}:lost:{node}", self.prefix)
    }
    /// The keys of the node scripts (see [`crate::scripts`]).
    pub(crate) fn of(&self, node: &str) -> [String; 5] {
        [
            self.lease(node),
            self.node(node),
            self.nodes(),
            self.takeover(node),
            self.lost(node),
        ]
    }
}

/// Joins: see [`crate::Cluster::join`].
pub(crate) async fn join(
    conn: ConnectionManager,
    client: redis::Client,
    keys: Keys,
    spec: JoinSpec,
) -> Result<Arc<Lease>, redis::RedisError> {
    let token = uuid::Uuid::new_v4().simple().to_string();
    let mut c = conn.clone();
    let mut said = None::<Instant>;
    let started = loop {
        let (state, detail): (String, String) = eval(JOIN, &keys.of(&spec.name))
            .arg(&token)
            .arg(spec.lease.as_millis().max(1) as u64)
            .arg(&spec.name)
            .arg(&spec.api)
            .query_async(&mut c)
            .await?;
        match state.as_str() {
            // The survivor's claim runs out within a lease if it dies.
            "busy" => {
                if said.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(node = %spec.name, "a survivor is closing what a previous run of this node left (node lost); waiting for it");
                    said = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            "replaced" => {
                tracing::warn!(node = %spec.name, "replaced the lease of a previous run of this node (it is gone: the store claim of the name was free)");
                break detail;
            }
            _ => break detail,
        }
    };
    let (lost, _) = watch::channel(None);
    let shared = Arc::new(Shared {
        conn: conn.clone(),
        keys: keys.clone(),
        spec,
        token: token.clone(),
        started,
        lost,
        takeover: OnceLock::new(),
        healthy_since: Mutex::new(None),
        taking: Mutex::default(),
    });
    let asker = Asker::start(conn, client, &keys.prefix, &token).await;
    let renewing = AbortOnDropHandle::new(tokio::spawn(renew_loop(shared.clone())));
    let judging = AbortOnDropHandle::new(tokio::spawn(judge_loop(shared.clone())));
    Ok(Arc::new(Lease {
        shared,
        asker,
        renewing: Mutex::new(Some(renewing)),
        judging: Mutex::new(Some(judging)),
        serving: Mutex::new(None),
    }))
}

impl Lease {
    /// What fences this run's publishes (see [`kodo_transport::LeaseFence`]).
    pub fn fence(&self) -> kodo_transport::LeaseFence {
        kodo_transport::LeaseFence {
            key: self.shared.keys.lease(&self.shared.spec.name),
            token: self.shared.token.clone(),
        }
    }

    /// Resolves with the reason once this run learns it lost its lease for
    /// good: declared lost by a survivor (it was away past its lease), or
    /// its name taken by another run. It must then stop at once, without
    /// writing anything (its executions were closed, or are another's).
    pub fn lost(&self) -> impl std::future::Future<Output = String> + Send + use<> {
        let mut lost = self.shared.lost.subscribe();
        async move {
            let why = match lost.wait_for(Option::is_some).await {
                Ok(why) => why.clone(),
                Err(_) => None,
            };
            match why {
                Some(why) => why,
                None => std::future::pending().await,
            }
        }
    }

    /// Lets this node take lost nodes over, with `takeover`.
    pub fn take_over_with(&self, takeover: Arc<dyn Takeover>) {
        let _ = self.shared.takeover.set(takeover);
    }

    /// Answers requests other nodes send this one with `handler`, from
    /// when this returns.
    pub async fn serve(&self, handler: AskHandler) {
        let server = Server::start(
            self.shared.conn.clone(),
            self.asker.client(),
            &self.shared.keys.prefix,
            &self.shared.spec.name,
            handler,
        )
        .await;
        *self.serving.lock().expect("serving lock") = Some(server);
    }

    /// Sends `ask` to node `node` and waits (up to 5 s) for its answer.
    pub async fn ask(&self, node: &str, ask: Ask) -> Result<Reply, ClusterError> {
        self.asker.ask(node, ask).await
    }

    /// Stops renewing, judging, taking over and answering, without giving
    /// the lease up, as a process that dies does: the lease runs out, and
    /// a survivor takes this node over (how a test loses a node inside one
    /// process).
    pub fn abandon(&self) {
        self.leaving();
        self.renewing.lock().expect("renewing lock").take();
        self.serving.lock().expect("serving lock").take();
    }

    /// Stops taking other nodes over (this node is stopping), and keeps
    /// the lease renewed until [`Lease::release`].
    pub fn leaving(&self) {
        self.judging.lock().expect("judging lock").take();
        stop_takeovers(&self.shared);
    }

    /// Gives the lease up now (a clean stop): the node leaves the list and
    /// nobody takes it over. Its publishes are refused from here on.
    pub async fn release(&self) {
        self.abandon();
        let s = &self.shared;
        let released: Result<i64, _> = eval(RELEASE, &s.keys.of(&s.spec.name))
            .arg(&s.token)
            .arg(&s.spec.name)
            .query_async(&mut s.conn.clone())
            .await;
        if let Err(e) = released {
            tracing::warn!(error = %e, "could not give the lease up; it runs out by itself");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        stop_takeovers(&self.shared);
    }
}

/// Lists the members: see [`crate::Cluster::members`].
pub(crate) async fn members(
    conn: &mut ConnectionManager,
    keys: &Keys,
) -> Result<Vec<Member>, redis::RedisError> {
    let mut names: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys.nodes())
        .query_async(conn)
        .await?;
    if names.is_empty() {
        return Ok(Vec::new());
    }
    names.sort();
    let mut p = redis::pipe();
    for name in &names {
        p.cmd("HGETALL").arg(keys.node(name));
        p.cmd("EXISTS").arg(keys.lease(name));
    }
    let replies: Vec<(HashMap<String, String>, bool)> = p.query_async(conn).await?;
    let seconds = |fields: &HashMap<String, String>, k: &str| {
        fields
            .get(k)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1000.0
    };
    Ok(names
        .into_iter()
        .zip(replies)
        .filter(|(_, (fields, _))| !fields.is_empty())
        .map(|(name, (fields, live))| Member {
            api: fields.get("api").cloned().unwrap_or_default(),
            started: seconds(&fields, "started"),
            renewed: seconds(&fields, "renewed"),
            running: fields
                .get("running")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            live,
            name,
        })
        .collect())
}

/// Renews the lease every tick (and keeps this run's takeovers claimed);
/// nothing else, so nothing slow delays a renewal.
async fn renew_loop(shared: Arc<Shared>) {
    let tick = shared.tick();
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_ok = Instant::now();
    let mut warned = false;
    loop {
        interval.tick().await;
        let renewed = tokio::time::timeout(shared.spec.lease / 3, renew(&shared)).await;
        match renewed {
            Ok(Ok(state)) if state == "ok" || state == "again" => {
                let mut healthy = shared.healthy_since.lock().expect("healthy lock");
                if state == "again" {
                    tracing::warn!(
                        "took the lease again: it was gone (Redis lost it, or this node was away without being declared lost)"
                    );
                    *healthy = Some(Instant::now());
                }
                healthy.get_or_insert_with(Instant::now);
                last_ok = Instant::now();
                warned = false;
            }
            Ok(Ok(state)) => {
                stop_takeovers(&shared);
                let why = if state == "taken" {
                    format!(
                        "another run of node {} took its lease (this run was cut off from the store)",
                        shared.spec.name
                    )
                } else {
                    format!(
                        "node {} was declared lost by the cluster (it did not renew its lease within {:?}); its executions were closed as `node lost`",
                        shared.spec.name, shared.spec.lease
                    )
                };
                let _ = shared.lost.send(Some(why));
                return;
            }
            failed => {
                shared.healthy_since.lock().expect("healthy lock").take();
                if !warned {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "no answer in time".into(),
                    };
                    tracing::warn!(error = %why, "cannot renew this node's lease; past it, the other nodes may declare this node lost");
                    warned = true;
                }
            }
        }
        // A takeover needs this run alive: not renewed for half a lease,
        // its claims may run out, so they stop where they cannot be kept.
        keep_takeovers(&shared, last_ok.elapsed() < shared.spec.lease / 2).await;
    }
}

async fn renew(shared: &Shared) -> Result<String, redis::RedisError> {
    let running = shared.spec.running.load(Ordering::Relaxed);
    eval(RENEW, &shared.keys.of(&shared.spec.name))
        .arg(&shared.token)
        .arg(shared.lease_ms())
        .arg(&shared.spec.name)
        .arg(&shared.spec.api)
        .arg(&shared.started)
        .arg(running)
        .query_async(&mut shared.conn.clone())
        .await
}
