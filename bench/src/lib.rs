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
//! - `steps`: durable steps (Rust and Python flows) beside plain events.
//! - `waiting`: RSS with W executions waiting on a lock.
//! - `cluster` (with `--transport-url`): node processes over Redis: routed
//!   requests, a lost node's takeover, throughput over 1, 2 and 3 nodes.
//!
//! Latencies are measured by a wrapper around the real store that notes,
//! after each commit, how long ago each event was stamped by its Tracer.

mod cluster;
mod durable;
mod observe;
pub use observe::init_logging;
mod progress;
mod raw;
mod scenarios;
mod setup;
mod steps;
mod takeover;

use std::process::ExitCode;

/// Options of `runtime bench`.
#[derive(clap::Args, Clone)]
pub struct BenchArgs {
    /// Scenarios to run (raw, throughput, latency, launch, output, steps,
    /// temporal, cluster, waiting); default all.
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
    /// Rounds of the observe run (each mode once per round, interleaved;
    /// the best of each is reported).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
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
    /// A Temporal server (`HOST:PORT`, namespace `default`) for the
    /// `temporal` scenario: durable mode beside direct mode, and a raw loop
    /// of the same server.
    #[arg(long)]
    pub temporal: Option<String>,
}

impl std::fmt::Debug for BenchArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let masked = |url: &Option<String>| url.as_deref().map(kodo_core::mask_url);
        f.debug_struct("BenchArgs")
            .field("only", &self.only)
            .field("store_url", &masked(&self.store_url))
            .field("transport_url", &masked(&self.transport_url))
            .finish_non_exhaustive()
    }
}

/// Runs the chosen scenarios and prints their figures.
pub async fn run(args: BenchArgs) -> ExitCode {
    let all = [
        "raw",
        "throughput",
        "latency",
        "launch",
        "output",
        "steps",
        "temporal",
        "cluster",
        "observe",
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
            "raw" => match raw::raw_postgres(&args, &mut report).await {
                Ok(()) => match raw::raw_redis(&args, &mut report).await {
                    Ok(()) => raw::raw(&args, &mut report).await,
                    e => e,
                },
                e => e,
            },
            "latency" | "launch" | "output" | "steps" | "waiting" if args.spool_processes > 0 => {
                report.push(format!(
                    "{scenario:<8} skipped: it times commits inside this process; run it without --spool-processes"
                ));
                Ok(())
            }
            "throughput" => scenarios::throughput(&args, &mut report).await,
            "latency" => scenarios::latency(&args, &mut report).await,
            "launch" => scenarios::launch(&args, &mut report).await,
            "output" => scenarios::output(&args, &mut report).await,
            "steps" => steps::steps(&args, &mut report).await,
            "temporal" => durable::temporal(&args, &mut report).await,
            "cluster" => cluster::cluster(&args, &mut report).await,
            "observe" => observe::observe(&args, &mut report).await,
            _ => scenarios::waiting(&args, &mut report).await,
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
