//! `runtime`: run kodo, upgrade its database, measure it.

use clap::{Parser, Subcommand};
use kodo_runtime::config::TransportKind;
use kodo_runtime::{Config, Runtime, wiring};
use std::path::PathBuf;
use std::process::ExitCode;

/// kodo runs long-lived executions (AI-agent jobs, scripts, workflows) as
/// supervised actors, stores every event they emit, and survives crashes.
#[derive(Parser)]
#[command(
    name = "runtime",
    version,
    after_help = "Start here:
  runtime run --config kodo.toml       run a node and its HTTP API (127.0.0.1:3370 by default)
  curl -XPOST localhost:3370/flows/hello/executions -d '{\"inputs\": {}}'
  curl -N localhost:3370/executions/FID/stream

kodo.toml names the store (SQLite by default, a file beside the config), the
flows and the API address; every key can be set with KODO_<SECTION>_<KEY>.
The README has the HTTP API, the flow protocol and every config key."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the node and its HTTP API until Ctrl-C or SIGTERM.
    Run {
        /// The config file (default: ./kodo.toml if it exists, else built-in defaults).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Runs Spoolers only: drains the Redis streams into the store, beside
    /// any number of other `runtime spool` and `runtime run` processes.
    Spool {
        /// The config file (default: ./kodo.toml if it exists).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// This process's consumer name in the Redis group (default:
        /// NODE-spool-PID). A stable name re-reads its own pending entries
        /// at restart; a new one leaves them to be claimed after
        /// `transport.claim_idle`.
        #[arg(long)]
        name: Option<String>,
    },
    /// Runs a Temporal worker only (durable mode): it takes executions'
    /// attempts from the task queue and runs their flows, beside any number
    /// of other workers; SIGTERM gives running attempts back to Temporal.
    TemporalWorker {
        /// The config file (default: ./kodo.toml if it exists).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Database commands.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// Measures throughput, latency, launch time and memory on a scratch database.
    Bench(kodo_bench::BenchArgs),
}

#[derive(Subcommand)]
enum DbCommand {
    /// Applies the migrations the database lacks and lists them.
    Upgrade {
        /// The config file (default: ./kodo.toml if it exists).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn load_config(path: Option<PathBuf>) -> Result<Config, ExitCode> {
    let path = path.or_else(|| {
        let default = PathBuf::from("kodo.toml");
        default.exists().then_some(default)
    });
    Config::load(path.as_deref(), std::env::vars()).map_err(|e| {
        eprintln!("runtime: bad configuration: {e}");
        ExitCode::from(2)
    })
}

/// Loads the config, starts logging at its level (and traces, when
/// `[telemetry]` or `OTEL_*` say where), runs `command`, then exports the
/// spans left.
async fn configured<F: Future<Output = ExitCode>>(
    path: Option<PathBuf>,
    command: impl FnOnce(Config) -> F,
) -> ExitCode {
    let config = match load_config(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let telemetry = match kodo_telemetry::Telemetry::start(&wiring::telemetry_options(&config)) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("runtime: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    init_logging(&config.log.level, telemetry.as_ref());
    // Logging did not run yet when loading noticed these.
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let code = command(config).await;
    if let Some(telemetry) = telemetry {
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    }
    code
}

fn init_logging(level: &str, telemetry: Option<&kodo_telemetry::Telemetry>) {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(filter);
    tracing_subscriber::registry()
        .with(logs)
        .with(telemetry.map(|t| t.layer()))
        .init();
}

/// Ctrl-C and SIGTERM, watched from before the process says it is ready
/// (a signal that arrives right after must not kill it unhandled).
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn watch() -> Result<Self, ExitCode> {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Ok(Self { term, int }),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("runtime: cannot watch SIGTERM and SIGINT: {e}");
                Err(ExitCode::from(1))
            }
        }
    }

    /// Waits for Ctrl-C or SIGTERM (`None`) or for `failed` to give a reason.
    async fn until_stopped(
        mut self,
        failed: impl std::future::Future<Output = String>,
    ) -> Option<String> {
        tokio::select! {
            _ = self.int.recv() => None,
            _ = self.term.recv() => None,
            why = failed => Some(why),
        }
    }
}

async fn run(config: Config) -> ExitCode {
    let signals = match StopSignals::watch() {
        Ok(signals) => signals,
        Err(code) => return code,
    };
    let running = match Runtime::new(config.clone()).start().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("runtime: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    println!("kodo listening on http://{}", running.addr());
    tracing::info!(
        node = %config.node.name,
        store = %kodo_store::mask_url(&config.store.url),
        transport = %config.transport.kind,
        flows = running.node().flows().iter().count(),
        auth = if config.auth.tokens.is_empty() { "none (loopback only)" } else { "bearer tokens" },
        "kodo started"
    );
    let failure = tokio::select! {
        failure = signals.until_stopped(running.failed()) => failure,
        why = running.node().name_lost() => {
            // Another live node has this name now: stop without a
            // graceful shutdown, which would write into its executions.
            // Exit now: a return would let the spoolers and the API run on
            // while the runtime winds down; the watchdog ends the flows.
            eprintln!("runtime: stopping at once, without touching any execution: {why}");
            std::process::exit(1);
        }
    };
    let reason = failure
        .as_deref()
        .unwrap_or("node shutting down")
        .to_string();
    tracing::info!(%reason, "shutting down");
    let report = running.shutdown(&reason).await;
    match failure {
        None if report.all_stored() => {
            tracing::info!("stopped; {report}");
            ExitCode::SUCCESS
        }
        None => {
            eprintln!("runtime: stopped, but not every event is stored: {report}");
            ExitCode::from(1)
        }
        Some(why) => {
            eprintln!("runtime: stopped because {why}; {report}");
            ExitCode::from(1)
        }
    }
}

async fn spool(config: Config, name: Option<String>) -> ExitCode {
    if config.transport.kind != TransportKind::Redis {
        eprintln!(
            "runtime: spool needs transport.kind = \"redis\" (with the local transport, `runtime run` stores its own events)"
        );
        return ExitCode::from(2);
    }
    let signals = match StopSignals::watch() {
        Ok(signals) => signals,
        Err(code) => return code,
    };
    let consumer =
        name.unwrap_or_else(|| format!("{}-spool-{}", config.node.name, std::process::id()));
    let store = match wiring::open_store(&config, false).await {
        Ok(store) => store,
        Err(e) => {
            eprintln!("runtime: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let (transport, cluster) = match wiring::connect(&config, &consumer).await {
        Ok(connected) => connected,
        Err(e) => {
            eprintln!("runtime: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let shared = kodo_actors::SpoolerShared {
        transport: transport.clone(),
        store: store.clone(),
        hub: kodo_actors::Hub::new(),
        cluster,
        batch_max: config.spooler.batch_max,
        health: Default::default(),
        metrics: Default::default(),
        spans: Default::default(),
    };
    let metrics =
        match kodo_runtime::api::serve_metrics(&config, shared.metrics.clone(), transport.clone())
            .await
        {
            Ok(m) => m,
            Err(e) => {
                eprintln!("runtime: cannot start: {e}");
                return ExitCode::from(1);
            }
        };
    let group = match kodo_actors::SpoolerGroup::start(shared).await {
        Ok(g) => g,
        Err(e) => {
            eprintln!("runtime: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    println!(
        "kodo spooling {} shards of {} into {} as {consumer}",
        config.transport.shards,
        kodo_store::mask_url(&config.transport.url),
        kodo_store::mask_url(&config.store.url)
    );
    if let Some(m) = &metrics {
        println!("metrics on http://{}/metrics", m.addr());
    }
    let failure = signals.until_stopped(group.failed()).await;
    tracing::info!("spooler stopping: finishing the batches in hand");
    transport.close();
    let drained = kodo_actors::telling(
        "the spoolers to finish their batches",
        Some(&transport),
        group.drain(wiring::node_options(&config).shutdown_wait),
    )
    .await;
    tracing::info!(drained, "shutdown: closing the store");
    store.close().await;
    match failure {
        Some(why) => {
            eprintln!("runtime: spool stopped because {why}");
            ExitCode::from(1)
        }
        None if drained => ExitCode::SUCCESS,
        None => ExitCode::from(1),
    }
}

async fn temporal_worker(config: Config) -> ExitCode {
    let signals = match StopSignals::watch() {
        Ok(signals) => signals,
        Err(code) => return code,
    };
    let started = async {
        let store = wiring::open_store(&config, false).await?;
        let (transport, cluster) = wiring::connect(&config, &config.node.name).await?;
        let (temporal, _) = wiring::durable(&config, &[], true, &cluster)
            .await?
            .ok_or_else(|| {
                kodo_durable::DurableError::Worker("no temporal configuration".into())
            })?;
        wiring::python_ready(&config).map_err(kodo_runtime::StartError::Python)?;
        let flows = wiring::flows(&config);
        let node = kodo_actors::Node::start(
            store,
            transport,
            cluster,
            flows,
            wiring::node_options(&config),
        )
        .await?;
        let node = std::sync::Arc::new(node);
        let metrics = kodo_runtime::api::serve_metrics(
            &config,
            node.metrics().clone(),
            node.transport().clone(),
        )
        .await?;
        let worker = kodo_durable::TemporalWorker::start(temporal.clone(), node.clone())?;
        Ok::<_, kodo_runtime::StartError>((temporal, node, worker, metrics))
    };
    let (temporal, node, worker, metrics) = match started.await {
        Ok(started) => started,
        Err(e) => {
            eprintln!("runtime: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    if config.transport.kind == TransportKind::Local {
        tracing::warn!(
            "this worker stores its events itself (transport.kind = \"local\"): nodes in other processes hear of them late (202 launches, slow live streams); use transport.kind = \"redis\""
        );
    }
    println!(
        "kodo temporal worker on {} (namespace {}, task queue {}) as node {}",
        temporal.options().address,
        temporal.options().namespace,
        temporal.options().task_queue,
        node.name()
    );
    if let Some(m) = &metrics {
        println!("metrics on http://{}/metrics", m.addr());
    }
    let failure = tokio::select! {
        failure = signals.until_stopped(node.failed()) => failure,
        why = node.name_lost() => {
            eprintln!("runtime: stopping at once, without touching any execution: {why}");
            std::process::exit(1);
        }
    };
    tracing::info!("temporal worker stopping: giving running attempts back");
    kodo_actors::telling(
        "the Temporal worker to give its running attempts back",
        None,
        worker.shutdown(),
    )
    .await;
    let report = node.shutdown("worker shutting down").await;
    match failure {
        Some(why) => {
            eprintln!("runtime: temporal-worker stopped because {why}; {report}");
            ExitCode::from(1)
        }
        None if report.all_stored() => ExitCode::SUCCESS,
        None => {
            eprintln!("runtime: stopped, but not every event is stored: {report}");
            ExitCode::from(1)
        }
    }
}

async fn upgrade(config: Config) -> ExitCode {
    let url = kodo_store::mask_url(&config.store.url);
    match kodo_store::upgrade(&config.store.url, &wiring::store_options(&config, true)).await {
        Ok(applied) if applied.is_empty() => {
            println!("database {url}: schema already up to date; nothing applied");
            ExitCode::SUCCESS
        }
        Ok(applied) => {
            println!("database {url}: applied {} migration(s):", applied.len());
            for (version, description) in applied {
                println!("  {version} {description}");
            }
            println!("database {url}: schema up to date");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("runtime: db upgrade failed: {e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Run { .. } | Command::TemporalWorker { .. }
    ) {
        // Before any thread exists, while the process is small.
        kodo_actors::start_watchdog();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: cannot start tokio: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Run { config } => configured(config, run).await,
            Command::Db {
                command: DbCommand::Upgrade { config },
            } => configured(config, upgrade).await,
            Command::Spool { config, name } => {
                configured(config, |config| spool(config, name)).await
            }
            Command::TemporalWorker { config } => configured(config, temporal_worker).await,
            Command::Bench(args) => {
                kodo_bench::init_logging();
                kodo_bench::run(args).await
            }
        }
    })
}
