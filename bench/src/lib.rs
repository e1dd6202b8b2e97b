//! `runtime bench` (this crate, so that the runtime library does not carry
//! the bench's dependencies): measures the embedded default (SQLite + in-process queue)
//! on this machine, or a PostgreSQL server (`--store-url postgres://...`),
//! each scenario on a fresh scratch database:
//!
//! - `raw`: batched inserts straight into the store (the ceiling); on
//!   PostgreSQL also plain UNNEST and COPY loops into the events table.
//! - `throughput`: E executions × N events (Rust flows), emit -> committed.
//! - `latency`: emit -> committed p50/p99 at an offered rate.
//! - `launch`: launch -> `running` stored, Rust and command flows.
//! - `waiting`: RSS with W executions waiting on a lock.
//!
//! Latencies are measured by a wrapper around the real store that notes,
//! after each commit, how long ago each event was stamped by its Tracer.

use kodo_actors::{CommandSpec, Ctx, FlowDef, Flows, Node, NodeOptions};
use kodo_cluster::{RedisCluster, SharedCluster, Solo};
use kodo_core::{Event, Fid, Kind, Status, now_ts};
use kodo_store::{Hooked, SharedStore, StoreOptions, WriteHooks};
use kodo_transport::LocalQueue;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;
use tokio::sync::Notify;

/// Options of `runtime bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Scenarios to run (raw, throughput, latency, launch, output, waiting); default all.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Executions in the throughput run.
    #[arg(long, default_value_t = 1000)]
    pub executions: usize,
    /// Events per execution in the throughput run.
    #[arg(long, default_value_t = 100)]
    pub events: usize,
    /// Offered events/s in the latency run.
    #[arg(long, default_value_t = 10_000)]
    pub rate: usize,
    /// Seconds of the latency run.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Launches per flow kind in the launch run (one after another).
    #[arg(long, default_value_t = 200)]
    pub launches: usize,
    /// Lines each of 4 command flows prints in the output run.
    #[arg(long, default_value_t = 100_000)]
    pub lines: usize,
    /// Executions waiting on a lock in the memory run.
    #[arg(long, default_value_t = 100_000)]
    pub waiting: usize,
    /// Spooler shards.
    #[arg(long, default_value_t = 2)]
    pub shards: usize,
    /// Scratch folder (default: a new temp folder, removed afterwards).
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// A PostgreSQL server to measure instead of SQLite
    /// (`postgres://USER:PASSWORD@HOST:PORT/DB`): each scenario creates
    /// and uses a fresh database `kodo_bench_<scenario>` on it.
    #[arg(long)]
    pub store_url: Option<String>,
    /// PostgreSQL pool size.
    #[arg(long, default_value_t = 8)]
    pub pool: u32,
    /// A Redis server to carry events instead of the in-process queue
    /// (`redis://HOST:PORT`): each scenario uses fresh keys on it.
    #[arg(long)]
    pub transport_url: Option<String>,
    /// With Redis: Spooler processes (`runtime spool`) to start beside the
    /// bench; 0 runs the Spoolers inside the bench's node.
    #[arg(long, default_value_t = 0)]
    pub spool_processes: usize,
}

/// Notes commit latencies and counts statuses after each commit of the real store.
#[derive(Debug, Default)]
struct Timing {
    record: std::sync::atomic::AtomicBool,
    latencies: Mutex<Vec<f64>>,
    running_at: Mutex<HashMap<Fid, Instant>>,
    statuses: Mutex<HashMap<Status, u64>>,
    events: AtomicU64,
    changed: Notify,
}

impl Timing {
    fn count(&self, status: Status) -> u64 {
        self.statuses
            .lock()
            .unwrap()
            .get(&status)
            .copied()
            .unwrap_or(0)
    }

    /// Waits until `n` events of `status` are committed.
    async fn until(&self, status: Status, n: u64) {
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
            }
        }
        drop(statuses);
        self.changed.notify_waiters();
    }
}

fn payload(i: usize) -> Value {
    // About 200 bytes of JSON, like the reference measurements.
    json!({"step": i, "text": "x".repeat(160)})
}

/// The command the output run's flows run: `seq 1 LINES`.
fn seq_command(lines: usize) -> Vec<String> {
    vec!["seq".into(), "1".into(), lines.to_string()]
}

fn flows(args: &BenchArgs) -> Flows {
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

struct Bench {
    node: Arc<Node>,
    store: SharedStore,
    timing: Arc<Timing>,
    /// `runtime spool` children (their commits bypass `timing`).
    spoolers: Vec<tokio::process::Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Bench {
    /// Waits until every execution in `fids` has a final status stored.
    async fn until_final(&self, fids: &[Fid]) {
        if self.spoolers.is_empty() {
            self.timing.until(Status::Finished, fids.len() as u64).await;
            return;
        }
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
        }
    }

    async fn end(mut self) {
        self.node.shutdown("bench over").await;
        for child in &mut self.spoolers {
            if let Some(pid) = child.id() {
                // SIGTERM: the spooler finishes its batch and exits.
                let _ = tokio::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
            let _ = child.wait().await;
        }
    }
}

/// Starts `n` `runtime spool` processes on `store_url` and the Redis keys of
/// `transport`, and waits until each has started.
async fn spawn_spoolers(
    args: &BenchArgs,
    store_url: &str,
    redis: &kodo_transport::RedisOptions,
    dir: &std::path::Path,
) -> Result<Vec<tokio::process::Child>, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut children = Vec::new();
    for i in 0..args.spool_processes {
        let mut child = tokio::process::Command::new(&exe)
            .args(["spool", "--name", &format!("bench-spool-{i}")])
            .current_dir(dir)
            .env("KODO_STORE_URL", store_url)
            .env("KODO_STORE_POOL", args.pool.to_string())
            .env("KODO_TRANSPORT_KIND", "redis")
            .env("KODO_TRANSPORT_URL", &redis.url)
            .env("KODO_TRANSPORT_PREFIX", &redis.prefix)
            .env("KODO_TRANSPORT_SHARDS", redis.shards.to_string())
            .env("KODO_LOG_LEVEL", "warn")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("piped")).lines();
        match lines.next_line().await {
            Ok(Some(line)) if line.starts_with("kodo spooling") => children.push(child),
            other => return Err(format!("spooler {i} did not start: {other:?}")),
        }
    }
    Ok(children)
}

async fn fresh(args: &BenchArgs, name: &str) -> Result<Bench, String> {
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
    let options = NodeOptions {
        max_live: args.waiting.max(args.executions) + 1000,
        shutdown_wait: Duration::from_secs(120),
        spoolers: spoolers.is_empty(),
        ..NodeOptions::default()
    };
    let node = Node::start(store.clone(), transport, cluster, flows(args), options)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Bench {
        node: Arc::new(node),
        store,
        timing,
        spoolers,
        _dir: tmp,
    })
}

/// Creates (or re-creates) the database `kodo_bench_<name>` on the server
/// `server` names and returns its URL.
async fn fresh_pg_database(server: &str, name: &str) -> Result<String, String> {
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

/// Plain loops into PostgreSQL's events table, with none of the runtime
/// around them: a batched UNNEST insert (`ON CONFLICT DO NOTHING`, what the
/// store does for events) and a batched COPY (no conflict handling at all).
async fn raw_postgres(args: &BenchArgs, report: &mut Vec<String>) -> Result<(), String> {
    let Some(server) = &args.store_url else {
        return Ok(());
    };
    let total = args.executions * args.events;
    let text = payload(0).to_string();
    // COPY's text format escapes backslashes.
    let escaped = text.replace('\\', "\\\\");
    for method in ["UNNEST", "COPY"] {
        let url = fresh_pg_database(server, &format!("raw_{method}")).await?;
        kodo_store::open(&url, &StoreOptions::default())
            .await
            .map_err(|e| e.to_string())?
            .close()
            .await;
        let pool = sqlx::PgPool::connect(&url)
            .await
            .map_err(|e| e.to_string())?;
        let fids: Vec<String> = (0..args.executions)
            .map(|_| Fid::new().as_str().to_string())
            .collect();
        let rows: Vec<(usize, i64)> = (0..args.executions)
            .flat_map(|f| (1..=args.events as i64).map(move |seq| (f, seq)))
            .collect();
        let start = Instant::now();
        for chunk in rows.chunks(1000) {
            if method == "UNNEST" {
                sqlx::query(
                    "INSERT INTO events (fid, seq, ts, kind, payload) \
                     SELECT * FROM UNNEST($1::text[], $2::int8[], $3::float8[], $4::text[], $5::text[]) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(chunk.iter().map(|&(f, _)| fids[f].as_str()).collect::<Vec<_>>())
                .bind(chunk.iter().map(|&(_, s)| s).collect::<Vec<_>>())
                .bind(chunk.iter().map(|_| now_ts()).collect::<Vec<_>>())
                .bind(vec!["debug"; chunk.len()])
                .bind(vec![text.as_str(); chunk.len()])
                .execute(&pool)
                .await
                .map_err(|e| e.to_string())?;
            } else {
                let mut data = String::with_capacity(chunk.len() * (text.len() + 80));
                for &(f, seq) in chunk {
                    data.push_str(&format!(
                        "{}\t{seq}\t{}\tdebug\t{escaped}\n",
                        fids[f],
                        now_ts()
                    ));
                }
                let mut conn = pool.acquire().await.map_err(|e| e.to_string())?;
                let mut copy = conn
                    .copy_in_raw("COPY events (fid, seq, ts, kind, payload) FROM STDIN")
                    .await
                    .map_err(|e| e.to_string())?;
                copy.send(data.as_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
                copy.finish().await.map_err(|e| e.to_string())?;
            }
        }
        let rate = total as f64 / start.elapsed().as_secs_f64();
        report.push(format!(
            "raw      plain {method:<6} loop into events, batches of 1000, {total} events: {rate:.0} events/s"
        ));
        pool.close().await;
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Batched writes straight into the store, in two orders: fid-major (each
/// execution's events together: the store's best case, the ceiling) and
/// interleaved (1000 executions in lockstep, one event each per batch).
async fn raw(args: &BenchArgs, report: &mut Vec<String>) -> Result<(), String> {
    let total = args.executions * args.events;
    let text = payload(0).to_string();
    for interleaved in [false, true] {
        let b = fresh(
            args,
            if interleaved {
                "raw-interleaved"
            } else {
                "raw"
            },
        )
        .await?;
        let fids: Vec<Fid> = (0..args.executions).map(|_| Fid::new()).collect();
        let order: Vec<(usize, u64)> = if interleaved {
            (1..=args.events as u64)
                .flat_map(|seq| (0..args.executions).map(move |f| (f, seq)))
                .collect()
        } else {
            (0..args.executions)
                .flat_map(|f| (1..=args.events as u64).map(move |seq| (f, seq)))
                .collect()
        };
        let start = Instant::now();
        for chunk in order.chunks(1000) {
            let batch: Vec<Event> = chunk
                .iter()
                .map(|&(f, seq)| Event {
                    fid: fids[f].clone(),
                    seq,
                    ts: now_ts(),
                    kind: Kind::Debug,
                    payload: text.clone(),
                })
                .collect();
            b.store.write(&batch).await.map_err(|e| e.to_string())?;
        }
        let rate = total as f64 / start.elapsed().as_secs_f64();
        let how = if interleaved {
            "interleaved"
        } else {
            "fid-major  "
        };
        report.push(format!(
            "raw      store.write, batches of 1000, {how}, {total} events: {rate:.0} events/s"
        ));
        b.end().await;
    }
    Ok(())
}

async fn throughput(args: &BenchArgs, report: &mut Vec<String>) -> Result<(), String> {
    let b = fresh(args, "throughput").await?;
    let start = Instant::now();
    let mut launches = tokio::task::JoinSet::new();
    for _ in 0..args.executions {
        let node = b.node.clone();
        let n = args.events;
        launches.spawn(async move { node.launch("emit", "bench", json!({"n": n})).await });
    }
    let mut fids = Vec::with_capacity(args.executions);
    while let Some(r) = launches.join_next().await {
        fids.push(
            r.map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?
                .fid,
        );
    }
    b.until_final(&fids).await;
    let secs = start.elapsed().as_secs_f64();
    let flow_events = (args.executions * args.events) as f64;
    let stored = b.timing.events.load(Ordering::Relaxed) as f64;
    let stored = if b.spoolers.is_empty() {
        format!(" ({:.0} stored events/s incl. status/meta)", stored / secs)
    } else {
        String::new()
    };
    report.push(format!(
        "through  {} executions x {} events: {:.0} flow events/s{stored}, {:.2} s",
        args.executions,
        args.events,
        flow_events / secs,
        secs
    ));
    b.end().await;
    Ok(())
}

/// Command-flow output: 4 flows print `--lines` lines each (`seq`), every
/// line a stored `stdout` event; beside the same output read from the pipe
/// and merely counted (the ceiling of the pipe and the process).
async fn output(args: &BenchArgs, report: &mut Vec<String>) -> Result<(), String> {
    const FLOWS: usize = 4;
    let start = Instant::now();
    let mut reads = tokio::task::JoinSet::new();
    for _ in 0..FLOWS {
        let command = seq_command(args.lines);
        reads.spawn(async move {
            let mut child = tokio::process::Command::new(&command[0])
                .args(&command[1..])
                .stdout(std::process::Stdio::piped())
                .spawn()?;
            let stdout = child.stdout.take().expect("piped");
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            let mut n = 0usize;
            while lines.next_line().await?.is_some() {
                n += 1;
            }
            child.wait().await?;
            Ok::<usize, std::io::Error>(n)
        });
    }
    let mut counted = 0;
    while let Some(n) = reads.join_next().await {
        counted += n.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    }
    let raw = counted as f64 / start.elapsed().as_secs_f64();

    let b = fresh(args, "output").await?;
    let start = Instant::now();
    let mut fids = Vec::new();
    for _ in 0..FLOWS {
        let launched = b.node.launch("lines", "bench", json!({})).await;
        fids.push(launched.map_err(|e| e.to_string())?.fid);
    }
    b.until_final(&fids).await;
    let secs = start.elapsed().as_secs_f64();
    for fid in &fids {
        let stored = b.store.event_count(fid).await.map_err(|e| e.to_string())?;
        if stored < args.lines as u64 {
            return Err(format!(
                "{fid}: {stored} events stored for {} lines",
                args.lines
            ));
        }
    }
    report.push(format!(
        "output   {FLOWS} command flows x {} lines: {:.0} stored lines/s (the same output only read and counted: {raw:.0} lines/s)",
        args.lines,
        (FLOWS * args.lines) as f64 / secs
    ));
    b.end().await;
    Ok(())
}

async fn latency(args: &BenchArgs, report: &mut Vec<String>) -> Result<(), String> {
    let b = fresh(args, "latency").await?;
    let per_execution = 100.0;
    let executions = ((args.rate as f64 / per_execution).ceil() as usize).max(1);
    b.timing.record.store(true, Ordering::Relaxed);
    for _ in 0..executions {
        b.node
            .launch(
                "paced",
                "bench",
                json!({"rate": per_execution, "seconds": args.seconds}),
            )
            .await
            .map_err(|e| e.to_string())?;
    }
    b.timing.until(Status::Finished, executions as u64).await;
    let mut l = std::mem::take(&mut *b.timing.latencies.lock().unwrap());
    l.sort_by(f64::total_cmp);
    report.push(format!(
        "latency  {} events/s offered ({executions} executions x {per_execution}/s, {} s): {} events, emit->committed p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        args.rate,
        args.seconds,
        l.len(),
        percentile(&l, 0.5) * 1e3,
        percentile(&l, 0.99) * 1e3,
        l.last().copied().unwrap_or(f64::NAN) * 1e3
    ));
    b.end().await;
    Ok(())
}

async fn launch(args: &BenchArgs, report: &mut Vec<String>) -> Result<(), String> {
    let b = fresh(args, "launch").await?;
    for flow in ["noop", "true"] {
        let mut times = Vec::new();
        for _ in 0..args.launches {
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
        let kind = if flow == "noop" { "Rust   " } else { "command" };
        report.push(format!(
            "launch   {kind} flow, {} launches: launch->running stored p50 {:.2} ms, p99 {:.2} ms",
            args.launches,
            percentile(&times, 0.5) * 1e3,
            percentile(&times, 0.99) * 1e3
        ));
    }
    b.end().await;
    Ok(())
}

async fn waiting(args: &BenchArgs, report: &mut Vec<String>) -> Result<(), String> {
    let b = fresh(args, "waiting").await?;
    let before = rss_mib();
    let start = Instant::now();
    let mut launched = 0;
    while launched < args.waiting {
        let chunk = (args.waiting - launched).min(1000);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..chunk {
            let node = b.node.clone();
            set.spawn(async move { node.launch("waits", "bench", Value::Null).await });
        }
        while let Some(r) = set.join_next().await {
            r.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
        }
        launched += chunk;
        if launched % 20_000 == 0 {
            eprintln!("bench: {launched} waiting executions launched");
        }
    }
    b.timing.until(Status::Awaiting, args.waiting as u64).await;
    let secs = start.elapsed().as_secs_f64();
    let after = rss_mib();

    report.push(format!(
        "waiting  {} executions awaiting a lock (launched in {:.1} s): RSS {:.0} MiB ({:.0} MiB before, {:.1} KiB per execution)",
        args.waiting,
        secs,
        after,
        before,
        (after - before) * 1024.0 / args.waiting as f64
    ));
    let stop = Instant::now();
    b.end().await;
    report.push(format!(
        "waiting  shutdown killed and stored all {} in {:.1} s",
        args.waiting,
        stop.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Plain loops on Redis with none of the runtime around them, with the
/// transport's entry shape (one event per entry): pipelined XADD (100 per
/// round trip), then XREADGROUP (COUNT 100) + XACK until all are read.
async fn raw_redis(args: &BenchArgs, report: &mut Vec<String>) -> Result<(), String> {
    let Some(url) = &args.transport_url else {
        return Ok(());
    };
    let err = |e: redis::RedisError| e.to_string();
    let mut conn = redis::Client::open(url.as_str())
        .map_err(err)?
        .get_multiplexed_async_connection()
        .await
        .map_err(err)?;
    let key = format!("bench-raw-{}", Fid::new());
    let total = args.executions * args.events;
    let fid = Fid::new();
    let value = format!("{} debug {}", now_ts(), payload(0));
    let start = Instant::now();
    for chunk in (0..total).collect::<Vec<_>>().chunks(100) {
        let mut p = redis::pipe();
        for &i in chunk {
            p.cmd("XADD")
                .arg(&key)
                .arg("*")
                .arg("fid")
                .arg(fid.as_str())
                .arg(i + 1)
                .arg(&value)
                .ignore();
        }
        p.query_async::<()>(&mut conn).await.map_err(err)?;
    }
    let add = total as f64 / start.elapsed().as_secs_f64();
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg("g")
        .arg("0")
        .query_async::<()>(&mut conn)
        .await
        .map_err(err)?;
    let start = Instant::now();
    let mut read = 0;
    while read < total {
        let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("g")
            .arg("c")
            .arg("COUNT")
            .arg(100)
            .arg("STREAMS")
            .arg(&key)
            .arg(">")
            .query_async(&mut conn)
            .await
            .map_err(err)?;
        let ids: Vec<String> = reply
            .keys
            .into_iter()
            .flat_map(|k| k.ids.into_iter().map(|id| id.id))
            .collect();
        if ids.is_empty() {
            break;
        }
        read += ids.len();
        redis::cmd("XACK")
            .arg(&key)
            .arg("g")
            .arg(&ids)
            .query_async::<()>(&mut conn)
            .await
            .map_err(err)?;
    }
    let consume = read as f64 / start.elapsed().as_secs_f64();
    redis::cmd("DEL")
        .arg(&key)
        .query_async::<()>(&mut conn)
        .await
        .map_err(err)?;
    report.push(format!(
        "raw      plain redis loops, {total} one-event entries: pipelined XADD {add:.0}/s, XREADGROUP+XACK {consume:.0}/s"
    ));
    Ok(())
}

/// Runs the chosen scenarios and prints their figures.
pub async fn run(args: BenchArgs) -> ExitCode {
    let all = [
        "raw",
        "throughput",
        "latency",
        "launch",
        "output",
        "waiting",
    ];
    if let Some(bad) = args.only.iter().find(|c| !all.contains(&c.as_str())) {
        eprintln!("runtime bench: unknown scenario {bad:?}; choose from {all:?}");
        return ExitCode::from(2);
    }
    // Always in this order: `waiting` grows the process, which slows the
    // fork of every later command flow.
    let chosen: Vec<&str> = all
        .into_iter()
        .filter(|s| args.only.is_empty() || args.only.iter().any(|o| o == s))
        .collect();
    let store = match &args.store_url {
        Some(url) => format!(
            "PostgreSQL {} (pool {})",
            kodo_store::mask_url(url),
            args.pool
        ),
        None => "SQLite WAL".into(),
    };
    let transport = match (&args.transport_url, args.spool_processes) {
        (Some(url), 0) => format!("Redis {} with in-node spoolers", kodo_store::mask_url(url)),
        (Some(url), n) => format!(
            "Redis {} with {n} spooler processes",
            kodo_store::mask_url(url)
        ),
        (None, _) => "local queue".into(),
    };
    println!(
        "kodo bench: {store} + {transport}, {} shards, {} cores",
        args.shards,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut report = Vec::new();
    for scenario in chosen {
        let shown = report.len();
        let result = match scenario {
            "raw" => match raw_postgres(&args, &mut report).await {
                Ok(()) => match raw_redis(&args, &mut report).await {
                    Ok(()) => raw(&args, &mut report).await,
                    e => e,
                },
                e => e,
            },
            "latency" | "launch" | "output" | "waiting" if args.spool_processes > 0 => {
                report.push(format!(
                    "{scenario:<8} skipped: it times commits inside this process; run it without --spool-processes"
                ));
                Ok(())
            }
            "throughput" => throughput(&args, &mut report).await,
            "latency" => latency(&args, &mut report).await,
            "launch" => launch(&args, &mut report).await,
            "output" => output(&args, &mut report).await,
            _ => waiting(&args, &mut report).await,
        };
        if let Err(e) = result {
            eprintln!("runtime bench: {scenario} failed: {e}");
            return ExitCode::from(1);
        }
        for line in &report[shown..] {
            println!("{line}");
        }
    }
    ExitCode::SUCCESS
}
