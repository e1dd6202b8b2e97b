//! `cluster`: `runtime run` node processes and two `runtime spool`
//! processes over one Redis (`--transport-url`) and one store (a SQLite
//! file, or `--store-url`), driven through their HTTP APIs:
//!
//! - a lock answered and an execution killed through the node that runs it
//!   (the raw baseline) and through another node (routed over Redis);
//! - a node SIGKILLed while it runs executions: until a survivor has
//!   closed them all (`error: node lost`), with the default lease;
//! - executions × events (command flows printing lines) spread over 1, 2
//!   and 3 nodes in the same run: on one machine, this measures what the
//!   cluster costs, not how it scales out.

use crate::BenchArgs;
use crate::setup::{fresh_pg_database, percentile, seq_command, spawn_runtime, stop_child, until};
use futures::StreamExt;
use kodo_core::{Event, Fid, Kind};
use kodo_store::{SharedStore, StoreOptions};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::process::Child;

/// Requests timed of each kind (answers, kills; local and routed).
const ROUNDS: usize = 100;
/// Executions the SIGKILLed node runs.
const ON_LOST: usize = 20;
/// The most the lost node's executions may take to close.
const PATIENCE: Duration = Duration::from_secs(120);
/// Launches in flight at once in the throughput run.
const IN_FLIGHT: usize = 16;

/// A node process and its API.
struct NodeProc {
    child: Child,
    base: String,
    name: String,
}

pub(crate) async fn cluster(args: &BenchArgs, report: &mut Vec<String>) -> Result<(), String> {
    let Some(redis) = &args.transport_url else {
        report.push(
            "cluster  skipped: its nodes are processes sharing Redis; give --transport-url redis://..."
                .into(),
        );
        return Ok(());
    };
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let store_url = match &args.store_url {
        Some(server) => fresh_pg_database(server, "cluster").await?,
        None => format!("sqlite://{}", dir.path().join("cluster.db").display()),
    };
    let config = write_config(args, dir.path(), redis, &store_url)?;
    let store = kodo_store::open(&store_url, &StoreOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut spoolers = Vec::new();
    for i in 0..args.spool_processes.max(2) {
        let name = format!("bench-spool-{i}");
        let cfg = config.display().to_string();
        let args = ["spool", "--config", &cfg, "--name", &name];
        spoolers.push(
            spawn_runtime(&args, dir.path(), &[], "kodo spooling")
                .await?
                .0,
        );
    }
    let http = reqwest::Client::new();
    let a = node(&config, dir.path(), "bench-a").await?;
    let b = node(&config, dir.path(), "bench-b").await?;

    requests(&http, &store, &a, &b, report).await?;
    node_lost(&http, &store, &config, dir.path(), report).await?;
    let third = node(&config, dir.path(), "bench-d").await?;
    let nodes = [a, b, third];
    let mut rates = Vec::new();
    for n in 1..=nodes.len() {
        rates.push(throughput(args, &http, &store, &nodes[..n]).await?);
    }
    report.push(format!(
        "cluster  {} executions x {} lines (command flows, HTTP launches): 1 node {:.0} events/s, \
         2 nodes {:.0} ({:.0}%), 3 nodes {:.0} ({:.0}%) [2 cores: cost of the cluster, not scale-out]",
        args.executions,
        args.events,
        rates[0],
        rates[1],
        100.0 * rates[1] / rates[0],
        rates[2],
        100.0 * rates[2] / rates[0],
    ));
    for mut n in nodes.into_iter().map(|n| n.child).chain(spoolers) {
        stop_child(&mut n).await;
    }
    Ok(())
}

fn write_config(
    args: &BenchArgs,
    dir: &Path,
    redis: &str,
    store_url: &str,
) -> Result<PathBuf, String> {
    let path = dir.join("kodo.toml");
    let lines: Vec<String> = seq_command(args.events)
        .iter()
        .map(|a| format!("{a:?}"))
        .collect();
    let text = format!(
        "[api]\nlisten = \"127.0.0.1:0\"\n[store]\nurl = \"{store_url}\"\npool = {}\n\
         [transport]\nkind = \"redis\"\nurl = \"{redis}\"\nprefix = \"bench-cluster-{}\"\nshards = {}\n\
         block = 0.1\nclaim_idle = 1\n[spooler]\nenabled = false\n[log]\nlevel = \"warn\"\n\
         [flows.waits]\ncommand = [\"sh\", \"-c\", \"read -r x; echo '{{\\\"kind\\\":\\\"lock\\\",\\\"name\\\":\\\"go\\\"}}' >&3; read -r a\"]\n\
         [flows.ticks]\ncommand = [\"sh\", \"-c\", \"read -r x; while true; do echo tick; sleep 0.05; done\"]\n\
         [flows.lines]\ncommand = [{}]\n",
        args.pool,
        Fid::new(),
        args.shards,
        lines.join(", "),
    );
    std::fs::write(&path, text).map_err(|e| e.to_string())?;
    Ok(path)
}

/// Starts `runtime run` as node `name`; waits for its address.
async fn node(config: &Path, dir: &Path, name: &str) -> Result<NodeProc, String> {
    let cfg = config.display().to_string();
    let env = [("KODO_NODE_NAME", name.to_string())];
    let (child, line) =
        spawn_runtime(&["run", "--config", &cfg], dir, &env, "kodo listening on ").await?;
    let base = line.trim_start_matches("kodo listening on ").to_string();
    Ok(NodeProc {
        child,
        base,
        name: name.to_string(),
    })
}

/// POSTs `body` to `base` + `path`; the status, and the time it took.
async fn post(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    body: Value,
) -> Result<(u16, Value, f64), String> {
    let start = Instant::now();
    let resp = http
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let took = start.elapsed().as_secs_f64();
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or_default();
    Ok((status, body, took))
}

async fn launch(http: &reqwest::Client, base: &str, flow: &str) -> Result<Fid, String> {
    let path = format!("/flows/{flow}/executions");
    let (status, body, _) = post(http, base, &path, json!({})).await?;
    body["fid"]
        .as_str()
        .and_then(Fid::parse)
        .ok_or_else(|| format!("launch of {flow} answered {status}: {body}"))
}

/// Answers and kills, through the node that runs the execution and
/// through another.
async fn requests(
    http: &reqwest::Client,
    store: &SharedStore,
    a: &NodeProc,
    b: &NodeProc,
    report: &mut Vec<String>,
) -> Result<(), String> {
    let mut fids = Vec::with_capacity(ROUNDS * 4);
    for _ in 0..ROUNDS * 4 {
        fids.push(launch(http, &a.base, "waits").await?);
    }
    let mut lids = Vec::with_capacity(fids.len());
    for fid in &fids {
        let events = until(store, fid, |e| e.iter().any(|e| e.kind == Kind::Lock)).await?;
        let lock = events
            .iter()
            .find(|e| e.kind == Kind::Lock)
            .expect("a lock");
        let lid: Value = serde_json::from_str(&lock.payload).map_err(|e| e.to_string())?;
        lids.push(lid["lid"].as_str().unwrap_or_default().to_string());
    }
    // [answer here, answer routed, kill here, kill routed]
    let mut took: [Vec<f64>; 4] = Default::default();
    for (i, (fid, lid)) in fids.iter().zip(&lids).enumerate() {
        let kind = i % 4;
        let base = if kind % 2 == 0 { &a.base } else { &b.base };
        let (path, body, want) = if kind < 2 {
            (
                format!("/executions/{fid}/locks/{lid}"),
                json!({"answer": i}),
                200,
            )
        } else {
            (format!("/executions/{fid}/kill"), json!({}), 202)
        };
        let (status, answer, t) = post(http, base, &path, body).await?;
        if status != want {
            return Err(format!("POST {path} answered {status}: {answer}"));
        }
        took[kind].push(t * 1000.0);
    }
    for t in &mut took {
        t.sort_by(f64::total_cmp);
    }
    let shown = |t: &[f64]| {
        format!(
            "p50 {:.2} ms p99 {:.2} ms",
            percentile(t, 0.5),
            percentile(t, 0.99)
        )
    };
    report.push(format!(
        "cluster  lock answer ({ROUNDS} each, HTTP): on its node {} | through another node {}",
        shown(&took[0]),
        shown(&took[1])
    ));
    report.push(format!(
        "cluster  kill ({ROUNDS} each, HTTP): on its node {} | through another node {} (target p50 <= 5 ms)",
        shown(&took[2]),
        shown(&took[3])
    ));
    Ok(())
}

/// A node SIGKILLed with executions running: until a survivor closed them.
async fn node_lost(
    http: &reqwest::Client,
    store: &SharedStore,
    config: &Path,
    dir: &Path,
    report: &mut Vec<String>,
) -> Result<(), String> {
    let mut lost = node(config, dir, "bench-c").await?;
    let mut fids = Vec::with_capacity(ON_LOST);
    for _ in 0..ON_LOST {
        fids.push(launch(http, &lost.base, "ticks").await?);
    }
    for fid in &fids {
        until(store, fid, |e| e.iter().any(|e| e.kind == Kind::Stdout)).await?;
    }
    let killed = Instant::now();
    lost.child.start_kill().map_err(|e| e.to_string())?;
    let _ = lost.child.wait().await;
    loop {
        let open = store
            .unfinished(&lost.name)
            .await
            .map_err(|e| e.to_string())?;
        if open.is_empty() {
            break;
        }
        if killed.elapsed() > PATIENCE {
            return Err(format!(
                "{} executions of a lost node still open",
                open.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report.push(format!(
        "cluster  node SIGKILLed with {ON_LOST} executions running: all closed `node lost` after {:.2} s \
         (lease 10 s, default; bound: lease + 5 s = 15 s)",
        killed.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Launches the executions round robin over `nodes`; events stored per second.
async fn throughput(
    args: &BenchArgs,
    http: &reqwest::Client,
    store: &SharedStore,
    nodes: &[NodeProc],
) -> Result<f64, String> {
    let start = Instant::now();
    let launches = futures::stream::iter(0..args.executions)
        .map(|i| launch(http, &nodes[i % nodes.len()].base, "lines"))
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    let fids: Vec<Fid> = launches.into_iter().collect::<Result<_, _>>()?;
    let mut events = 0u64;
    for fid in &fids {
        let log = until(store, fid, |e| {
            e.last()
                .and_then(Event::status)
                .is_some_and(|s| s.is_final())
                && e.last().is_some_and(|l| l.seq == e.len() as u64)
        })
        .await?;
        events += log.len() as u64;
    }
    Ok(events as f64 / start.elapsed().as_secs_f64())
}
