//! From a [`Config`] to live parts: the store opened, the transport and the
//! cluster connected, the flows built, the node's options. The config only
//! describes; everything that connects or builds is here.

use crate::config::{Config, Synchronous, TransportKind};
use kodo_actors::{CommandSpec, ExecLimits, FlowDef, Flows, NodeOptions};
use kodo_cluster::{ClusterError, RedisCluster, SharedCluster, Solo};
use kodo_store::{SharedStore, StoreError, StoreOptions};
use kodo_transport::{LocalQueue, RedisOptions, RedisStreams, SharedTransport, TransportError};
use std::time::Duration;

/// Why the transport or the cluster could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The transport.
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    /// The cluster (commit notices, settling).
    #[error("cluster: {0}")]
    Cluster(#[from] ClusterError),
}

/// Opens the configured store (`upgrade`: apply missing migrations).
pub async fn open_store(config: &Config, upgrade: bool) -> Result<SharedStore, StoreError> {
    kodo_store::open(&config.store.url, &store_options(config, upgrade)).await
}

/// The store's options.
pub fn store_options(config: &Config, upgrade: bool) -> StoreOptions {
    StoreOptions {
        read_connections: config.store.read_connections,
        full_sync: config.store.synchronous == Synchronous::Full,
        pool: config.store.pool,
        upgrade,
    }
}

/// Connects the configured transport and the cluster that goes with it:
/// the in-process queue alone ([`Solo`]), or Redis Streams and the other
/// processes on that Redis. `consumer` names this process's Redis
/// consumers (a stable name re-reads its own pending entries at restart).
pub async fn connect(
    config: &Config,
    consumer: &str,
) -> Result<(SharedTransport, SharedCluster), ConnectError> {
    let t = &config.transport;
    Ok(match t.kind {
        TransportKind::Local => (LocalQueue::new(t.shards, t.capacity_bytes), Solo::shared()),
        TransportKind::Redis => {
            let transport = RedisStreams::connect(redis_options(config, consumer)).await?;
            let cluster = RedisCluster::connect(&t.url, &t.prefix, t.shards).await?;
            (transport, cluster)
        }
    })
}

/// The Redis transport's options.
pub fn redis_options(config: &Config, consumer: &str) -> RedisOptions {
    let t = &config.transport;
    RedisOptions {
        url: t.url.clone(),
        prefix: t.prefix.clone(),
        shards: t.shards,
        consumer: consumer.to_string(),
        max_len: t.max_len,
        claim_idle: Duration::from_secs_f64(t.claim_idle),
        block: Duration::from_secs_f64(t.block),
        capacity_bytes: t.capacity_bytes,
    }
}

/// The node's options.
pub fn node_options(config: &Config) -> NodeOptions {
    NodeOptions {
        node: config.node.name.clone(),
        batch_max: config.spooler.batch_max,
        limits: ExecLimits {
            max_payload: config.limits.max_payload_bytes,
            kill_grace: Duration::from_secs_f64(config.limits.kill_grace),
            lock_timeout: Duration::from_secs_f64(config.limits.lock_timeout),
        },
        max_live: config.limits.max_running,
        launch_wait: Duration::from_secs_f64(config.limits.launch_wait),
        shutdown_wait: Duration::from_secs_f64(config.limits.shutdown_wait),
        spoolers: config.spooler.enabled,
        ..NodeOptions::default()
    }
}

/// The config's command flows.
pub fn flows(config: &Config) -> Flows {
    let mut flows = Flows::default();
    for (name, f) in &config.flows {
        let mut def = FlowDef::command(
            name,
            CommandSpec {
                command: f.command.clone(),
                env: f.env.clone(),
                cwd: f.cwd.clone(),
            },
        )
        .describe(&f.description);
        def.timeout = f.timeout.map(Duration::from_secs_f64);
        flows.add(def);
    }
    flows
}
