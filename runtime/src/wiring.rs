//! From a [`Config`] to live parts: the store opened, the transport and the
//! cluster connected, the flows built, the node's options. The config only
//! describes; everything that connects or builds is here.

use crate::config::{Config, ExecutionMode, RecoverPolicy, Synchronous, TransportKind};
use kodo_actors::{CommandSpec, ExecLimits, FlowDef, Flows, NodeOptions, Recover};
use kodo_cluster::{ClusterError, RedisCluster, SharedCluster, Solo};
use kodo_durable::{DurableError, Temporal, TemporalBackend, TemporalOptions};
use kodo_store::{SharedStore, StoreError, StoreOptions};
use kodo_transport::{LocalQueue, RedisOptions, RedisStreams, SharedTransport, TransportError};
use std::collections::HashSet;
use std::sync::Arc;
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
        lease: Duration::from_secs_f64(config.cluster.lease),
        ..NodeOptions::default()
    }
}

/// The flows that run durably (on Temporal): `None` when every flow does
/// (`execution.mode = "temporal"` and no flow says otherwise); an empty set
/// when none does. `extra` are flows registered in code (Rust flows), which
/// follow `execution.mode`.
pub fn durable_flows(config: &Config, extra: &[String]) -> Option<HashSet<String>> {
    let default = config.execution.mode;
    let mode = |name: &str| {
        config
            .flows
            .get(name)
            .and_then(|f| f.mode)
            .unwrap_or(default)
    };
    let names: Vec<&str> = config
        .flows
        .keys()
        .map(String::as_str)
        .chain(extra.iter().map(String::as_str))
        .collect();
    if default == ExecutionMode::Temporal
        && names.iter().all(|n| mode(n) == ExecutionMode::Temporal)
    {
        return None;
    }
    Some(
        names
            .into_iter()
            .filter(|n| mode(n) == ExecutionMode::Temporal)
            .map(str::to_string)
            .collect(),
    )
}

/// Kodo's options for Temporal.
pub fn temporal_options(config: &Config) -> TemporalOptions {
    let t = &config.temporal;
    TemporalOptions {
        address: t.address.clone(),
        namespace: t.namespace.clone(),
        task_queue: t.task_queue.clone(),
        workflow_id_prefix: t.workflow_id_prefix.clone(),
        execution_timeout: (t.execution_timeout > 0.0)
            .then(|| Duration::from_secs_f64(t.execution_timeout)),
        heartbeat_timeout: Duration::from_secs_f64(t.heartbeat_timeout),
        attempts: t.attempts,
        identity: format!("{}@{}", config.node.name, std::process::id()),
    }
}

/// `[telemetry]` as the exporter takes it (empty values: the `OTEL_*` variables).
pub fn telemetry_options(config: &Config) -> kodo_telemetry::TelemetryOptions {
    let t = &config.telemetry;
    let given = |s: &String| (!s.is_empty()).then(|| s.clone());
    kodo_telemetry::TelemetryOptions {
        otlp_endpoint: given(&t.otlp_endpoint),
        service_name: given(&t.service_name),
        sample_ratio: (t.sample_ratio < 1.0).then_some(t.sample_ratio),
    }
}

/// Connects to Temporal when some flow runs durably (or `always`, for a
/// worker alone), and returns the backend the node launches through
/// (announcing pauses and answers on `cluster`).
pub async fn durable(
    config: &Config,
    extra: &[String],
    always: bool,
    cluster: &SharedCluster,
) -> Result<Option<(Arc<Temporal>, TemporalBackend)>, DurableError> {
    let flows = durable_flows(config, extra);
    if !always && flows.as_ref().is_some_and(HashSet::is_empty) {
        return Ok(None);
    }
    let temporal = Temporal::connect(temporal_options(config)).await?;
    let backend = TemporalBackend::new(temporal.clone(), flows, cluster.clone());
    Ok(Some((temporal, backend)))
}

/// The config's command flows.
pub fn flows(config: &Config) -> Flows {
    let mut flows = Flows::default();
    for (name, f) in &config.flows {
        let spec = match &f.kodosumi {
            Some(target) => kodosumi_command(f, target, "kodo.kodosumi"),
            None => CommandSpec {
                command: f.command.clone(),
                env: f.env.clone(),
                cwd: f.cwd.clone(),
            },
        };
        let mut def = FlowDef::command(name, spec).describe(&f.description);
        // A declared form, or an app's @app.enter handler, checks each
        // launch before it is stored.
        if !f.form.is_empty()
            && let Ok(form) = kodo_actors::Form::new(f.form.clone())
        {
            def = def.admit_with(Arc::new(form));
        }
        if let (Some(target), Some(_)) = (&f.kodosumi, &f.path) {
            let host = kodosumi_command(f, target, "kodo.kodosumi.host");
            def = def.admit_with(Arc::new(crate::kodosumi::KodosumiHost::new(name, host)));
        }
        def.timeout = f.timeout.map(Duration::from_secs_f64);
        let recover = match f.recover {
            RecoverPolicy::Error => Recover::Error,
            RecoverPolicy::Resume => Recover::Resume,
        };
        flows.add(def.recover(recover).attempts(f.attempts));
    }
    flows
}

/// A Kodosumi flow's Python `module` as a command: `PYTHON -m MODULE TARGET
/// [--path PATH]`, with the bundled `kodo` package, then `pythonpath`, then
/// the flow's own `PYTHONPATH` (or the runtime's) on its path.
fn kodosumi_command(f: &crate::config::FlowSection, target: &str, module: &str) -> CommandSpec {
    let python = f.python.clone().unwrap_or_else(|| "python3".into());
    let mut command = vec![python, "-m".into(), module.into(), target.into()];
    if let Some(path) = &f.path {
        command.extend(["--path".into(), path.clone()]);
    }
    let mut path: Vec<String> = crate::python::install()
        .ok()
        .map(|dir| dir.display().to_string())
        .into_iter()
        .collect();
    path.extend(f.pythonpath.iter().map(|p| p.display().to_string()));
    let mut env = f.env.clone();
    let own = env.get("PYTHONPATH").cloned();
    if let Some(own) = own.or_else(|| std::env::var("PYTHONPATH").ok()) {
        path.extend(own.split(':').filter(|p| !p.is_empty()).map(String::from));
    }
    env.insert("PYTHONPATH".into(), path.join(":"));
    CommandSpec {
        command,
        env,
        cwd: f.cwd.clone(),
    }
}

/// Whether the bundled `kodo` Python package is in place, when a Kodosumi
/// flow needs it (why not, otherwise).
pub fn python_ready(config: &Config) -> Result<(), String> {
    if config.flows.values().any(|f| f.kodosumi.is_some()) {
        crate::python::install()?;
    }
    Ok(())
}
