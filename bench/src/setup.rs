//! What every scenario stands on: a node on a fresh scratch store, its
//! flows, the timing wrapper around the store, and small measures.

use crate::BenchArgs;
use kodo_actors::{CommandSpec, Ctx, FlowDef, Flows, Node, NodeOptions};
use kodo_cluster::{RedisCluster, SharedCluster, Solo};
use kodo_core::{Event, Fid, Kind, Status, now_ts};
use kodo_store::{EventQuery, Hooked, SharedStore, StoreOptions, WriteHooks};
use kodo_transport::LocalQueue;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;
use tokio::sync::Notify;

/// Notes commit latencies and counts statuses after each commit of the real store.
#[derive(Debug, Default)]
pub(crate) struct Timing {
    pub(crate) record: std::sync::atomic::AtomicBool,
    pub(crate) latencies: Mutex<Vec<f64>>,
    pub(crate) running_at: Mutex<HashMap<Fid, Instant>>,
    pub(crate) finished_at: Mutex<HashMap<Fid, Instant>>,
    pub(crate) statuses: Mutex<HashMap<Status, u64>>,
    pub(crate) events: AtomicU64,
    pub(crate) changed: Notify,
}

impl Timing {
    pub(crate) fn count(&self, status: Status) -> u64 {
        self.statuses
            .lock()
            .unwrap()
            .get(&status)
            .copied()
            .unwrap_or(0)
    }

    /// Waits until `n` events of `status` are committed.
    pub(crate) async fn until(&self, status: Status, n: u64) {
        loop {
            let notified = self.changed.notified();
            if self.count(status) >= n {
                return;
            }
            notified.await;
        }
    }
}

impl WriteHooks for Timing {
    fn after(&self, events: &[Event]) {
        let now = now_ts();
        let at = Instant::now();
        self.events
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        if self.record.load(Ordering::Relaxed) {
            let mut l = self.latencies.lock().unwrap();
            l.extend(
                events
                    .iter()
                    .filter(|e| e.kind == Kind::Debug)
                    .map(|e| now - e.ts),
            );
        }
        let mut statuses = self.statuses.lock().unwrap();
        for e in events {
            if let Some(s) = e.status() {
                *statuses.entry(s).or_default() += 1;
                if s == Status::Running {
                    self.running_at.lock().unwrap().insert(e.fid.clone(), at);
                }
                if s == Status::Finished {
                    self.finished_at.lock().unwrap().insert(e.fid.clone(), at);
                }
            }
        }
        drop(statuses);
        self.changed.notify_waiters();
    }
}

pub(crate) fn payload(i: usize) -> Value {
    // About 200 bytes of JSON, like the reference measurements.
    json!({"step": i, "text": "x".repeat(160)})
}

/// The command the output run's flows run: `seq 1 LINES`.
pub(crate) fn seq_command(lines: usize) -> Vec<String> {
    vec!["seq".into(), "1".into(), lines.to_string()]
}

pub(crate) fn flows(args: &BenchArgs) -> Flows {
    let mut flows = Flows::default();
    flows.add(FlowDef::command(
        "lines",
        CommandSpec {
            command: seq_command(args.lines),
            ..Default::default()
        },
    ));
    flows.add(FlowDef::rust(
        "emit",
        |ctx: Ctx, inputs: Value| async move {
            let n = inputs["n"].as_u64().unwrap_or(100) as usize;
            for i in 0..n {
                ctx.emit(Kind::Debug, &payload(i)).await?;
            }
            Ok(Value::Null)
        },
    ));
    flows.add(FlowDef::rust(
        "paced",
        |ctx: Ctx, inputs: Value| async move {
            let per_second = inputs["rate"].as_f64().unwrap_or(100.0);
            let until =
                Instant::now() + Duration::from_secs_f64(inputs["seconds"].as_f64().unwrap_or(5.0));
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
            let mut i = 0;
            while Instant::now() < until {
                tick.tick().await;
                ctx.emit(Kind::Debug, &payload(i)).await?;
                i += 1;
            }
            Ok(Value::Null)
        },
    ));
    flows.add(FlowDef::rust(
        "gated",
        |ctx: Ctx, inputs: Value| async move {
            let n = inputs["n"].as_u64().unwrap_or(100) as usize;
            let mut go = GATE.subscribe();
            let _ = go.wait_for(|open| *open).await;
            for i in 0..n {
                ctx.emit(Kind::Debug, &payload(i)).await?;
            }
            Ok(Value::Null)
        },
    ));
    flows.add(FlowDef::rust(
        "steps",
        |ctx: Ctx, inputs: Value| async move {
            let n = inputs["n"].as_u64().unwrap_or(100);
            for i in 0..n {
                ctx.step(&format!("s{i}"), async move {
                    Ok::<_, std::convert::Infallible>(i)
                })
                .await?;
            }
            Ok(Value::Null)
        },
    ));
    flows.add(FlowDef::command(
        "python-steps",
        CommandSpec {
            command: vec!["python3".into(), "-c".into(), PYTHON_STEPS.into()],
            env: [("PYTHONPATH".to_string(), python_dir().display().to_string())].into(),
            ..Default::default()
        },
    ));
    flows.add(FlowDef::rust("noop", |_ctx: Ctx, _| async move {
        Ok(Value::Null)
    }));
    flows.add(FlowDef::rust("waits", |ctx: Ctx, _| async move {
        ctx.lock("approve", Value::Null, Some(Duration::from_secs(86_400)))
            .await?;
        Ok(Value::Null)
    }));
    flows.add(FlowDef::command(
        "true",
        CommandSpec {
            command: vec!["true".into()],
            ..Default::default()
        },
    ));
    flows
}

/// A Python flow of `n` steps with the `kodo` package (written as
/// `kodo.py` into [`python_dir`]).
const PYTHON_STEPS: &str =
    "import kodo\nn = kodo.inputs()['n']\nfor i in range(n):\n    kodo.step(f's{i}', lambda: i)\n";

/// The `kodo` package (`sdk/python`), for the `python-steps` flow.
pub(crate) const KODO_PY: &str = include_str!("../../sdk/python/kodo/__init__.py");

/// Where the `python-steps` flow finds `kodo.py` (see [`KODO_PY`]).
pub(crate) fn python_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("kodo-bench-{}", std::process::id()))
}

/// Opened once every `gated` execution runs: they then emit all at once.
pub(crate) static GATE: std::sync::LazyLock<tokio::sync::watch::Sender<bool>> =
    std::sync::LazyLock::new(|| tokio::sync::watch::channel(false).0);

pub(crate) struct Bench {
    pub(crate) node: Arc<Node>,
    pub(crate) store: SharedStore,
    pub(crate) timing: Arc<Timing>,
    /// `runtime spool` children (their commits bypass `timing`).
    pub(crate) spoolers: Vec<tokio::process::Child>,
    /// The Temporal worker this bench's node hosts (durable mode).
    pub(crate) worker: Option<kodo_durable::TemporalWorker>,
    pub(crate) _dir: Option<tempfile::TempDir>,
}

impl Bench {
    /// Waits until every execution in `fids` has a final status stored.
    pub(crate) async fn until_final(&self, fids: &[Fid]) {
        let total = fids.len() as u64;
        if self.spoolers.is_empty() {
            let ended = || self.timing.count(Status::Finished);
            let all = self.timing.until(Status::Finished, total);
            crate::progress::showing("executions finished", total, ended, all).await;
            return;
        }
        let seen = AtomicU64::new(0);
        let all = async {
            for fid in fids {
                let mut sub = self.node.hub().subscribe(fid);
                while !self
                    .store
                    .execution(fid)
                    .await
                    .is_ok_and(|r| r.is_some_and(|r| r.status.is_final()))
                {
                    sub.changed().await;
                }
                seen.fetch_add(1, Ordering::Relaxed);
            }
        };
        let ended = || seen.load(Ordering::Relaxed);
        crate::progress::showing("executions ended", total, ended, all).await;
    }

    pub(crate) async fn end(mut self) {
        if let Some(worker) = self.worker.take() {
            worker.shutdown().await;
        }
        self.node.shutdown("bench over").await;
        for child in &mut self.spoolers {
            stop_child(child).await;
        }
    }
}

/// Stops a `runtime` child process: SIGTERM (it finishes what it holds and
/// exits); without a `kill` program, or one that does not stop in 30 s,
/// SIGKILL.
pub(crate) async fn stop_child(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    let stopped = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    if stopped.is_err() {
        let _ = child.kill().await;
    }
}

/// Starts `n` `runtime spool` processes on `store_url` and the Redis keys of
/// `transport`, and waits until each has started.
pub(crate) async fn spawn_spoolers(
    args: &BenchArgs,
    store_url: &str,
    redis: &kodo_transport::RedisOptions,
    dir: &std::path::Path,
) -> Result<Vec<tokio::process::Child>, String> {
    let mut children = Vec::new();
    for i in 0..args.spool_processes {
        let name = format!("bench-spool-{i}");
        let env = [
            ("KODO_STORE_URL", store_url.to_string()),
            ("KODO_STORE_POOL", args.pool.to_string()),
            ("KODO_TRANSPORT_KIND", "redis".into()),
            ("KODO_TRANSPORT_URL", redis.url.clone()),
            ("KODO_TRANSPORT_PREFIX", redis.prefix.clone()),
            ("KODO_TRANSPORT_SHARDS", redis.shards.to_string()),
        ];
        children.push(
            spawn_runtime(&["spool", "--name", &name], dir, &env, "kodo spooling")
                .await?
                .0,
        );
    }
    Ok(children)
}

/// Starts this executable (`runtime`) with `args` and `env` in `dir`
/// (warnings only in its log), and waits for its first line, which must
/// begin with `ready`; returns it with that line.
pub(crate) async fn spawn_runtime(
    args: &[&str],
    dir: &std::path::Path,
    env: &[(&str, String)],
    ready: &str,
) -> Result<(tokio::process::Child, String), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = tokio::process::Command::new(exe)
        .args(args)
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("KODO_LOG_LEVEL", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("piped")).lines();
    match lines.next_line().await {
        Ok(Some(line)) if line.starts_with(ready) => Ok((child, line)),
        other => Err(format!("runtime {args:?} did not start: {other:?}")),
    }
}

pub(crate) async fn fresh(args: &BenchArgs, name: &str) -> Result<Bench, String> {
    fresh_with(args, name, None, None).await
}

/// Makes the backend a bench's node runs executions through, for its cluster.
pub(crate) type BackendFor = dyn Fn(SharedCluster) -> kodo_actors::SharedBackend;

/// [`fresh`], with executions run through `backend` (default: direct).
pub(crate) async fn fresh_with(
    args: &BenchArgs,
    name: &str,
    backend: Option<&BackendFor>,
    metrics: Option<kodo_metrics::SharedMetrics>,
) -> Result<Bench, String> {
    let (dir, tmp) = match &args.dir {
        Some(d) => (d.join(name), None),
        None => {
            let t = tempfile::tempdir().map_err(|e| e.to_string())?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    let url = match &args.store_url {
        Some(server) => fresh_pg_database(server, name).await?,
        None => format!("sqlite://{}", dir.join("bench.db").display()),
    };
    let options = StoreOptions {
        pool: args.pool,
        ..StoreOptions::default()
    };
    let inner = kodo_store::open(&url, &options)
        .await
        .map_err(|e| e.to_string())?;
    let timing = Arc::new(Timing::default());
    let store: SharedStore = Arc::new(Hooked::new(inner, timing.clone()));
    let mut spoolers = Vec::new();
    let (transport, cluster): (kodo_transport::SharedTransport, SharedCluster) =
        match &args.transport_url {
            Some(redis_url) => {
                let redis = kodo_transport::RedisOptions {
                    url: redis_url.clone(),
                    prefix: format!("bench-{name}-{}", Fid::new()),
                    shards: args.shards,
                    consumer: "bench".into(),
                    ..kodo_transport::RedisOptions::default()
                };
                if args.spool_processes > 0 {
                    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                    spoolers = spawn_spoolers(args, &url, &redis, &dir).await?;
                }
                let cluster = RedisCluster::connect(&redis.url, &redis.prefix, redis.shards)
                    .await
                    .map_err(|e| e.to_string())?;
                let transport = kodo_transport::RedisStreams::connect(redis)
                    .await
                    .map_err(|e| e.to_string())?;
                (transport, cluster)
            }
            None => (LocalQueue::new(args.shards, 64 << 20), Solo::shared()),
        };
    let mut options = NodeOptions {
        max_live: args.waiting.max(args.executions) + 1000,
        shutdown_wait: Duration::from_secs(120),
        spoolers: spoolers.is_empty(),
        ..NodeOptions::default()
    };
    if let Some(backend) = backend {
        options.backend = backend(cluster.clone());
    }
    if let Some(metrics) = metrics {
        options.metrics = metrics;
    }
    let node = Node::start(store.clone(), transport, cluster, flows(args), options)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Bench {
        node: Arc::new(node),
        store,
        timing,
        spoolers,
        _dir: tmp,
        worker: None,
    })
}

/// Creates (or re-creates) the database `kodo_bench_<name>` on the server
/// `server` names and returns its URL.
pub(crate) async fn fresh_pg_database(server: &str, name: &str) -> Result<String, String> {
    use sqlx::{Connection, Executor};
    let db = format!("kodo_bench_{}", name.replace('-', "_").to_lowercase());
    let mut admin = sqlx::PgConnection::connect(server)
        .await
        .map_err(|e| format!("{}: {e}", kodo_store::mask_url(server)))?;
    for sql in [
        format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
        format!("CREATE DATABASE {db}"),
    ] {
        admin
            .execute(sqlx::AssertSqlSafe(sql))
            .await
            .map_err(|e| e.to_string())?;
    }
    let _ = admin.close().await;
    let (base, _) = server
        .rsplit_once('/')
        .ok_or_else(|| format!("{}: no database in the URL", kodo_store::mask_url(server)))?;
    Ok(format!("{base}/{db}"))
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub(crate) fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Seconds from each launch of `flow` to its `running` status stored,
/// one launch at a time, sorted.
pub(crate) async fn launch_times(
    b: &Bench,
    flow: &str,
    launches: usize,
) -> Result<Vec<f64>, String> {
    let mut times = Vec::with_capacity(launches);
    for _ in 0..launches {
        let start = Instant::now();
        let fid = b
            .node
            .launch(flow, "bench", json!({}))
            .await
            .map_err(|e| e.to_string())?
            .fid;
        let mut sub = b.node.hub().subscribe(&fid);
        loop {
            if let Some(at) = b.timing.running_at.lock().unwrap().get(&fid) {
                times.push(at.duration_since(start).as_secs_f64());
                break;
            }
            sub.changed().await;
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}

/// Waits (up to a minute) until `done` holds for the execution's stored events.
pub(crate) async fn until(
    store: &SharedStore,
    fid: &Fid,
    done: impl Fn(&[Event]) -> bool,
) -> Result<Vec<Event>, String> {
    let start = Instant::now();
    loop {
        let query = EventQuery {
            after: 0,
            limit: 100_000,
            kinds: None,
        };
        let events = store.events(fid, &query).await.map_err(|e| e.to_string())?;
        if done(&events) {
            return Ok(events);
        }
        if start.elapsed() > Duration::from_secs(60) {
            return Err(format!("{fid}: not reached in a minute"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
