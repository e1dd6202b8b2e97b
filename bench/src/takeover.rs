//! `temporal` takeover: two `runtime temporal-worker` processes share
//! Redis Streams and a SQLite file with the bench's node (which launches,
//! hosting no worker); the worker running a durable command flow is
//! SIGKILLed, and the bench times how long until the retry's marker is
//! stored and the flow prints again on the other worker. Beside it: the
//! heartbeat timeout, the earliest Temporal can notice a silent worker.

use crate::BenchArgs;
use crate::setup::{percentile, spawn_runtime, until};
use kodo_actors::{Flows, Node, NodeOptions};
use kodo_cluster::RedisCluster;
use kodo_core::{Event, Fid, Kind, Status};
use kodo_durable::{Temporal, TemporalBackend, TemporalOptions};
use kodo_store::{SharedStore, StoreOptions};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::Child;

/// Heartbeat timeout of the run: short, as a deployment that wants fast
/// takeovers would set it.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// Takeovers timed.
const ROUNDS: usize = 5;

pub(crate) async fn takeover(
    args: &BenchArgs,
    address: &str,
    report: &mut Vec<String>,
) -> Result<(), String> {
    let Some(redis) = &args.transport_url else {
        report.push(
            "temporal takeover skipped: its workers are processes sharing Redis; give --transport-url redis://..."
                .into(),
        );
        return Ok(());
    };
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let store_url = format!("sqlite://{}", dir.path().join("takeover.db").display());
    let prefix = format!("bench-takeover-{}", Fid::new());
    let queue = format!("bench-takeover-{}", Fid::new());
    let config = dir.path().join("kodo.toml");
    let text = format!(
        "[store]\nurl = \"{store_url}\"\n[transport]\nkind = \"redis\"\nurl = \"{redis}\"\nprefix = \"{prefix}\"\n\
         shards = 2\nblock = 0.1\nclaim_idle = 1\n[execution]\nmode = \"temporal\"\n[temporal]\naddress = \"{address}\"\n\
         task_queue = \"{queue}\"\nheartbeat_timeout = {}\nattempts = 100\n[flows.ticker]\n\
         command = [\"sh\", \"-c\", \"read -r x; while true; do echo tick; sleep 0.05; done\"]\n",
        HEARTBEAT.as_secs_f64()
    );
    std::fs::write(&config, text).map_err(|e| e.to_string())?;
    let store = kodo_store::open(&store_url, &StoreOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let node = launcher(&store, redis, &prefix, address, &queue).await?;
    let mut workers = vec![
        worker(&config, dir.path(), 0).await?,
        worker(&config, dir.path(), 1).await?,
    ];
    let (mut marked, mut again) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let fid = node
            .launch("ticker", "bench", json!({}))
            .await
            .map_err(|e| e.to_string())?
            .fid;
        until(&store, &fid, |e| stdout(e) >= 5).await?;
        let running = workers
            .iter()
            .position(|w| w.id().is_some_and(|pid| !shells_of(pid).is_empty()))
            .ok_or("no worker runs the flow")?;
        let mut lost = workers.remove(running);
        let killed = Instant::now();
        lost.start_kill().map_err(|e| e.to_string())?;
        let _ = lost.wait().await;
        until(&store, &fid, |e| marker(e).is_some()).await?;
        marked.push(killed.elapsed().as_secs_f64());
        until(&store, &fid, |e| {
            marker(e).is_some_and(|m| stdout(&e[m..]) > 0)
        })
        .await?;
        again.push(killed.elapsed().as_secs_f64());
        node.kill(&fid, "bench over")
            .await
            .map_err(|e| e.to_string())?;
        until(&store, &fid, |e| {
            e.iter().any(|e| e.status().is_some_and(Status::is_final))
        })
        .await?;
        workers.push(worker(&config, dir.path(), round + 2).await?);
    }
    node.shutdown("bench over").await;
    for sample in [&mut marked, &mut again] {
        sample.sort_by(f64::total_cmp);
    }
    report.push(format!(
        "temporal takeover, worker SIGKILLed, {ROUNDS} rounds, heartbeat timeout {:.1} s: retry marker stored p50 {:.2} s max {:.2} s; \
         flow printing again p50 {:.2} s max {:.2} s (target: timeout + 2 s = {:.1} s)",
        HEARTBEAT.as_secs_f64(),
        percentile(&marked, 0.5),
        percentile(&marked, 1.0),
        percentile(&again, 0.5),
        percentile(&again, 1.0),
        HEARTBEAT.as_secs_f64() + 2.0,
    ));
    Ok(())
}

/// The bench's node: launches durably, hosts no worker.
async fn launcher(
    store: &SharedStore,
    redis: &str,
    prefix: &str,
    address: &str,
    queue: &str,
) -> Result<Node, String> {
    let temporal = Temporal::connect(TemporalOptions {
        address: address.to_string(),
        namespace: "default".into(),
        task_queue: queue.to_string(),
        workflow_id_prefix: "bench-".into(),
        execution_timeout: None,
        heartbeat_timeout: HEARTBEAT,
        attempts: 100,
        identity: format!("kodo@{}", std::process::id()),
    })
    .await
    .map_err(|e| e.to_string())?;
    let redis = kodo_transport::RedisOptions {
        url: redis.to_string(),
        prefix: prefix.to_string(),
        shards: 2,
        consumer: "bench".into(),
        ..kodo_transport::RedisOptions::default()
    };
    let cluster: kodo_cluster::SharedCluster =
        RedisCluster::connect(&redis.url, &redis.prefix, redis.shards)
            .await
            .map_err(|e| e.to_string())?;
    let transport = kodo_transport::RedisStreams::connect(redis)
        .await
        .map_err(|e| e.to_string())?;
    let backend = TemporalBackend::new(temporal, None, cluster.clone());
    let mut flows = Flows::default();
    // Only its name matters here: the workers run their own definition.
    flows.add(kodo_actors::FlowDef::command(
        "ticker",
        kodo_actors::CommandSpec {
            command: vec!["true".into()],
            env: Default::default(),
            cwd: None,
        },
    ));
    let options = NodeOptions {
        backend: Arc::new(backend),
        node: format!("bench-takeover-{}", std::process::id()),
        ..NodeOptions::default()
    };
    Node::start(store.clone(), transport, cluster, flows, options)
        .await
        .map_err(|e| e.to_string())
}

/// Starts `runtime temporal-worker` number `n`; waits for its first line.
async fn worker(config: &Path, dir: &Path, n: usize) -> Result<Child, String> {
    let config = config.display().to_string();
    let env = [("KODO_NODE_NAME", format!("bench-worker-{n}"))];
    let (worker, _) = spawn_runtime(
        &["temporal-worker", "--config", &config],
        dir,
        &env,
        "kodo temporal worker",
    )
    .await?;
    Ok(worker)
}

fn stdout(events: &[Event]) -> usize {
    events.iter().filter(|e| e.kind == Kind::Stdout).count()
}

/// Where a retry's marker (`debug` "attempt N of M: ...") is.
fn marker(events: &[Event]) -> Option<usize> {
    events
        .iter()
        .position(|e| e.kind == Kind::Debug && e.payload.starts_with("\"attempt "))
}

/// The pids of `sh` processes whose parent is `pid` (a worker's flows).
fn shells_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|child| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
                return false;
            };
            let after = &stat[stat.rfind(')').unwrap_or(0) + 1..];
            let ppid = after.split_whitespace().nth(1).and_then(|p| p.parse().ok());
            ppid == Some(pid) && stat.contains("(sh)")
        })
        .collect()
}
