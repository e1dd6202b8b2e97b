//! Membership over Redis: each node holds a lease, and a node whose lease
//! runs out is taken over by exactly one survivor.
//!
//! Keys (prefix `kodo` by default), for node `N`:
//! - `kodo:lease:N`: the token of the run of `N` that holds it, expiring
//!   after the lease (`cluster.lease`); renewed every tenth of it.
//! - `kodo:node:N`: what [`Member`] shows (API address, start, last renewal,
//!   running executions); `kodo:nodes`: the names of every such hash.
//! - `kodo:takeover:N`: the token of the one survivor taking `N` over.
//! - `kodo:lost:N`: when `N` was declared lost (ms, Redis's clock); a run of
//!   `N` that started before it is lost: it learns so at its next renewal.
//!
//! Every decision is one Lua script, so it sees one state of Redis. A
//! survivor declares a node lost only while its own lease is in place
//! (else Redis itself lost its keys: restarted, flushed) and only after a
//! full lease of renewing its own without fault (so every live node has had
//! the time to take its lease again after Redis was away).

use crate::routing::{Asker, Server};
use crate::{Ask, AskHandler, ClusterError, Reply};
use async_trait::async_trait;
use redis::aio::ConnectionManager;
use serde::Serialize;
use std::collections::HashSet;
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
    /// The address its API answers on (shown by `GET /cluster`).
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

/// What a node does when it takes a lost node over (the node, not the
/// cluster, knows executions).
#[async_trait]
pub trait Takeover: Send + Sync + 'static {
    /// The nodes that may need taking over when their lease is gone (the
    /// nodes with unfinished executions in the store).
    async fn candidates(&self) -> Vec<String>;

    /// Closes what lost node `node` left unfinished; returns how many
    /// executions it closed. Called by one survivor at a time.
    async fn take_over(&self, node: &str) -> Result<usize, String>;
}

/// This run's lease, renewed for as long as it lives. Dropping it stops the
/// renewals (the lease then runs out); [`Lease::release`] gives it up now.
pub struct Lease {
    shared: Arc<Shared>,
    asker: Arc<Asker>,
    renewing: Mutex<Option<AbortOnDropHandle<()>>>,
    serving: Mutex<Option<Server>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("node", &self.shared.spec.name)
            .finish_non_exhaustive()
    }
}

/// What the renewals and the lease's handle share.
struct Shared {
    conn: ConnectionManager,
    keys: Keys,
    spec: JoinSpec,
    token: String,
    /// When this run took its lease (ms, Redis's clock).
    started: String,
    lost: watch::Sender<Option<String>>,
    takeover: OnceLock<Arc<dyn Takeover>>,
    /// The nodes this run is taking over now.
    taking: Mutex<HashSet<String>>,
}

/// The key names of one deployment.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    pub(crate) prefix: String,
}

impl Keys {
    fn lease(&self, node: &str) -> String {
        format!("{}:lease:{node}", self.prefix)
    }
    fn node(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }
    fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
    fn takeover(&self, node: &str) -> String {
        format!("{}:takeover:{node}", self.prefix)
    }
    fn lost(&self, node: &str) -> String {
        format!("{}:lost:{node}", self.prefix)
    }
    /// lease, node, nodes, takeover, lost: the keys of the node scripts.
    fn of(&self, node: &str) -> [String; 5] {
        [
            self.lease(node),
            self.node(node),
            self.nodes(),
            self.takeover(node),
            self.lost(node),
        ]
    }
}

/// Redis's clock in ms, in a script.
const NOW_MS: &str =
    "local t = redis.call('TIME')\nlocal now = t[1] * 1000 + math.floor(t[2] / 1000)\n";

/// Takes the lease. KEYS: [`Keys::of`]; ARGV: token, lease ms, name, api.
/// Returns {state, detail}: `busy` (a survivor takes a previous run over:
/// its token), `replaced` (a dead run's lease was replaced) or `ok`; the
/// detail of both is the start (ms).
const JOIN: &str = r"
local holder = redis.call('GET', KEYS[4])
if holder then return {'busy', holder} end
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[5], KEYS[2])
redis.call('HSET', KEYS[2], 'token', ARGV[1], 'api', ARGV[4], 'started', now, 'renewed', now, 'running', 0)
redis.call('SADD', KEYS[3], ARGV[3])
if old then return {'replaced', tostring(now)} end
return {'ok', tostring(now)}
";

/// Renews the lease. KEYS: [`Keys::of`]; ARGV: token, lease ms, name, api,
/// started, running. Returns `ok`, `again` (the lease was gone, and is
/// taken again: Redis lost it, or this run was away but not declared lost),
/// `lost` (declared lost, or being taken over) or `taken` (another run of
/// this name replaced it).
const RENEW: &str = r"
local lost = redis.call('GET', KEYS[5])
if lost and tonumber(lost) >= tonumber(ARGV[5]) then return 'lost' end
local cur = redis.call('GET', KEYS[1])
local state = 'ok'
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
elseif cur then
  return 'taken'
elseif redis.call('EXISTS', KEYS[4]) == 1 then
  return 'lost'
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  state = 'again'
end
redis.call('HSET', KEYS[2], 'token', ARGV[1], 'api', ARGV[4], 'started', ARGV[5], 'renewed', now, 'running', ARGV[6])
redis.call('SADD', KEYS[3], ARGV[3])
return state
";

/// Claims the takeover of a node whose lease is gone. KEYS: own lease,
/// its lease, its takeover, its lost; ARGV: own token, lease ms. Returns
/// -1 (own lease gone: judge nothing), 0 (alive, or taken over by another)
/// or 1 (this run takes it over; it is declared lost now).
const CLAIM: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if not redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
if redis.call('EXISTS', KEYS[4]) == 0 then
  redis.call('SET', KEYS[4], now, 'PX', 604800000)
end
return 1
";

/// Keeps a takeover claimed. KEYS: its takeover; ARGV: own token, lease ms.
const KEEP: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0
";

/// Ends a takeover: the node is gone from the list. KEYS: [`Keys::of`] of
/// it; ARGV: own token, its name, done (1) or given up (0).
const DONE: &str = r"
if redis.call('GET', KEYS[4]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[4])
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2])
  redis.call('SREM', KEYS[3], ARGV[2])
end
return 1
";

/// Gives the lease up. KEYS: [`Keys::of`]; ARGV: token, name.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SREM', KEYS[3], ARGV[2])
return 1
";

/// A script with Redis's clock available as `now`.
fn script(body: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(format!("{NOW_MS}{body}"));
    cmd
}

/// Joins: see [`crate::Cluster::join`].
pub(crate) async fn join(
    conn: ConnectionManager,
    client: redis::Client,
    keys: Keys,
    spec: JoinSpec,
) -> Result<Arc<Lease>, ClusterError> {
    let token = uuid::Uuid::new_v4().simple().to_string();
    let lease_ms = spec.lease.as_millis().max(1) as u64;
    let mut c = conn.clone();
    let waiting_since = Instant::now();
    let started = loop {
        let (state, detail): (String, String) = script(JOIN)
            .arg(5)
            .arg(&keys.of(&spec.name))
            .arg(&token)
            .arg(lease_ms)
            .arg(&spec.name)
            .arg(&spec.api)
            .query_async(&mut c)
            .await
            .map_err(|e| ClusterError::Unavailable(format!("joining as {}: {e}", spec.name)))?;
        match state.as_str() {
            "busy" if waiting_since.elapsed() < spec.lease * 6 => {
                if waiting_since.elapsed() < Duration::from_millis(300) {
                    tracing::warn!(node = %spec.name, "a survivor is closing what a previous run of this node left (node lost); waiting for it");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            "busy" => {
                return Err(ClusterError::Unavailable(format!(
                    "node {}: a survivor has been taking a previous run of it over for {:?}; try again later",
                    spec.name,
                    waiting_since.elapsed()
                )));
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
        taking: Mutex::default(),
    });
    let asker = Asker::start(conn, client, &keys.prefix, &token).await;
    let renewing = AbortOnDropHandle::new(tokio::spawn(renew_loop(shared.clone())));
    Ok(Arc::new(Lease {
        shared,
        asker,
        renewing: Mutex::new(Some(renewing)),
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

    /// Sends `ask` to node `node` and waits for its answer.
    pub async fn ask(&self, node: &str, ask: Ask) -> Result<Reply, ClusterError> {
        self.asker.ask(node, ask).await
    }

    /// Stops renewing the lease without giving it up, as a process that
    /// dies does: it runs out, and a survivor takes this node over (how a
    /// test loses a node inside one process).
    pub fn abandon(&self) {
        self.renewing.lock().expect("renewing lock").take();
    }

    /// Gives the lease up now (a clean stop): the node leaves the list and
    /// nobody takes it over. Its publishes are refused from here on.
    pub async fn release(&self) {
        self.serving.lock().expect("serving lock").take();
        let s = &self.shared;
        let released: Result<i64, _> = script(RELEASE)
            .arg(5)
            .arg(&s.keys.of(&s.spec.name))
            .arg(&s.token)
            .arg(&s.spec.name)
            .query_async(&mut s.conn.clone())
            .await;
        if let Err(e) = released {
            tracing::warn!(error = %e, "could not give the lease up; it runs out by itself");
        }
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
    names.sort();
    let mut p = redis::pipe();
    for name in &names {
        p.cmd("HGETALL").arg(keys.node(name));
        p.cmd("EXISTS").arg(keys.lease(name));
    }
    let replies: Vec<(std::collections::HashMap<String, String>, bool)> =
        p.query_async(conn).await?;
    let ms = |fields: &std::collections::HashMap<String, String>, k: &str| {
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
            started: ms(&fields, "started"),
            renewed: ms(&fields, "renewed"),
            running: fields
                .get("running")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            live,
            name,
        })
        .collect())
}

/// Renews the lease every tenth of it; after a full lease of renewals
/// without fault, also looks for lost nodes to take over.
async fn renew_loop(shared: Arc<Shared>) {
    let tick = (shared.spec.lease / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut healthy_since: Option<Instant> = None;
    let mut last_ok = Instant::now();
    loop {
        interval.tick().await;
        match renew(&shared).await {
            Ok(state) if state == "ok" || state == "again" => {
                if state == "again" {
                    tracing::warn!(
                        "took the lease again: it was gone (Redis restarted, or this node was away without being declared lost)"
                    );
                    healthy_since = Some(Instant::now());
                }
                healthy_since.get_or_insert_with(Instant::now);
                last_ok = Instant::now();
            }
            Ok(state) => {
                let why = if state == "taken" {
                    format!(
                        "another run of node {} took its lease (this run was cut off from the store and Redis)",
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
            Err(e) => {
                if healthy_since.take().is_some() || last_ok.elapsed() > shared.spec.lease {
                    tracing::warn!(error = %e, "cannot renew this node's lease; past it, the other nodes may declare this node lost");
                    last_ok = Instant::now();
                }
            }
        }
        keep_takeovers(&shared).await;
        if healthy_since.is_some_and(|since| since.elapsed() >= shared.spec.lease)
            && look_for_lost(&shared).await == Judged::OwnLeaseGone
        {
            healthy_since = None;
        }
    }
}

async fn renew(shared: &Shared) -> Result<String, redis::RedisError> {
    let running = shared.spec.running.load(Ordering::Relaxed);
    script(RENEW)
        .arg(5)
        .arg(&shared.keys.of(&shared.spec.name))
        .arg(&shared.token)
        .arg(shared.spec.lease.as_millis() as u64)
        .arg(&shared.spec.name)
        .arg(&shared.spec.api)
        .arg(&shared.started)
        .arg(running)
        .query_async(&mut shared.conn.clone())
        .await
}

#[derive(Debug, PartialEq)]
enum Judged {
    Done,
    OwnLeaseGone,
}

/// Claims the takeover of each candidate whose lease is gone, and starts it.
async fn look_for_lost(shared: &Arc<Shared>) -> Judged {
    let Some(takeover) = shared.takeover.get() else {
        return Judged::Done;
    };
    let mut conn = shared.conn.clone();
    let mut names: HashSet<String> = takeover.candidates().await.into_iter().collect();
    let listed: Result<Vec<String>, _> = redis::cmd("SMEMBERS")
        .arg(shared.keys.nodes())
        .query_async(&mut conn)
        .await;
    names.extend(listed.unwrap_or_default());
    names.remove(&shared.spec.name);
    let taking = shared.taking.lock().expect("taking lock").clone();
    for name in names.difference(&taking) {
        let claimed: Result<i64, _> = script(CLAIM)
            .arg(4)
            .arg(shared.keys.lease(&shared.spec.name))
            .arg(shared.keys.lease(name))
            .arg(shared.keys.takeover(name))
            .arg(shared.keys.lost(name))
            .arg(&shared.token)
            .arg(shared.spec.lease.as_millis() as u64)
            .query_async(&mut conn)
            .await;
        match claimed {
            Ok(1) => {
                tracing::warn!(node = %name, lease = ?shared.spec.lease, "node lost (its lease ran out): taking it over");
                shared
                    .taking
                    .lock()
                    .expect("taking lock")
                    .insert(name.clone());
                tokio::spawn(take_over(shared.clone(), takeover.clone(), name.clone()));
            }
            Ok(-1) => return Judged::OwnLeaseGone,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "could not look for lost nodes");
                return Judged::Done;
            }
        }
    }
    Judged::Done
}

/// Takes `node` over, then ends its takeover (given up on error: another
/// survivor, or this one, tries again).
async fn take_over(shared: Arc<Shared>, takeover: Arc<dyn Takeover>, node: String) {
    let started = Instant::now();
    let done = match takeover.take_over(&node).await {
        Ok(closed) => {
            tracing::warn!(%node, closed, took = ?started.elapsed(), "took a lost node over: closed its executions as `node lost`");
            true
        }
        Err(e) => {
            tracing::error!(%node, error = %e, "could not take a lost node over; trying again");
            false
        }
    };
    let ended: Result<i64, _> = script(DONE)
        .arg(5)
        .arg(&shared.keys.of(&node))
        .arg(&shared.token)
        .arg(&node)
        .arg(if done { "1" } else { "0" })
        .query_async(&mut shared.conn.clone())
        .await;
    if let Err(e) = ended {
        tracing::warn!(%node, error = %e, "could not end a takeover in Redis; it runs out by itself");
    }
    shared.taking.lock().expect("taking lock").remove(&node);
}

/// Keeps this run's takeovers claimed while they work.
async fn keep_takeovers(shared: &Shared) {
    let taking = shared.taking.lock().expect("taking lock").clone();
    for node in taking {
        let kept: Result<i64, _> = script(KEEP)
            .arg(1)
            .arg(shared.keys.takeover(&node))
            .arg(&shared.token)
            .arg(shared.spec.lease.as_millis() as u64)
            .query_async(&mut shared.conn.clone())
            .await;
        if let Err(e) = kept {
            tracing::debug!(%node, error = %e, "could not keep a takeover claimed");
        }
    }
}
