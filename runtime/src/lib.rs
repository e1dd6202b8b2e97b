//! The kodo runtime as a library: the configuration ([`config`]), wiring a
//! node from it ([`wiring`]), and the HTTP API ([`api`]). The `runtime`
//! command is the `kodo-cli` crate; `runtime bench` is `kodo-bench`.
//!
//! As a library, [`Runtime`] starts a node with the command flows of a
//! config plus Rust flows registered in code:
//!
//! ```no_run
//! use kodo_runtime::{Config, Runtime};
//! use kodo_actors::{Ctx, FlowDef};
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let running = Runtime::new(Config::default())
//!     .flow(FlowDef::rust("hello", |ctx: Ctx, inputs| async move {
//!         ctx.debug("hello").await?;
//!         Ok(inputs)
//!     }))
//!     .start()
//!     .await?;
//! println!("listening on {}", running.addr());
//! running.shutdown("done").await;
//! # Ok(()) }
//! ```

pub mod api;
pub mod config;
pub mod kodosumi;
pub mod python;
pub mod wiring;

pub use config::{Config, ConfigError};
pub use wiring::ConnectError;

use kodo_actors::{FlowDef, Flows, Node, NodeError, ShutdownReport};
use kodo_store::{SharedStore, StoreError};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Why a runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The node could not start.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The transport or the cluster could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// Temporal (durable mode) could not be reached or used.
    #[error(transparent)]
    Durable(#[from] kodo_durable::DurableError),
    /// The bundled `kodo` Python package (for Kodosumi flows) could not be written.
    #[error("{0}")]
    Python(String),
    /// The API address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A runtime to start: a config plus Rust flows.
#[derive(Debug)]
pub struct Runtime {
    config: Config,
    flows: Flows,
    store: Option<SharedStore>,
}

impl Runtime {
    /// A runtime with the config's command flows.
    pub fn new(config: Config) -> Self {
        let flows = wiring::flows(&config);
        Self {
            config,
            flows,
            store: None,
        }
    }

    /// Uses this store instead of opening `store.url` (a store of your own,
    /// or a wrapped one).
    pub fn with_store(mut self, store: SharedStore) -> Self {
        self.store = Some(store);
        self
    }

    /// Adds a flow (a Rust flow, usually).
    pub fn flow(mut self, flow: FlowDef) -> Self {
        self.flows.add(flow);
        self
    }

    /// Binds the API's address, opens the store, starts the node (which
    /// claims its name before it touches any execution), then serves the API.
    /// A port in use or a name held by a live node stops it before anything
    /// is changed.
    pub async fn start(self) -> Result<Running, StartError> {
        let Runtime {
            config,
            flows,
            store,
        } = self;
        wiring::python_ready(&config).map_err(StartError::Python)?;
        let addr = config.listen();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;
        let store = match store {
            Some(store) => store,
            None => wiring::open_store(&config, false).await?,
        };
        let (transport, cluster) = wiring::connect(&config, &config.node.name).await?;
        let mut options = wiring::node_options(&config);
        options.api = addr.to_string();
        let names: Vec<String> = flows.iter().map(|f| f.name.clone()).collect();
        let durable = wiring::durable(&config, &names, false, &cluster).await?;
        let temporal = durable.map(|(temporal, backend)| {
            options.backend = Arc::new(backend);
            temporal
        });
        let node = Arc::new(Node::start(store, transport, cluster, flows, options).await?);
        let worker = match &temporal {
            Some(temporal) if config.temporal.worker => Some(
                kodo_durable::TemporalWorker::start(temporal.clone(), node.clone())
                    .map_err(StartError::Durable)?,
            ),
            _ => None,
        };
        let metrics =
            api::serve_metrics(&config, node.metrics().clone(), node.transport().clone()).await?;
        if let Some(m) = &metrics {
            tracing::info!(addr = %m.addr(), "metrics on their own listener");
        }
        let app = api::router(node.clone(), &config, temporal);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let listener = api::ApiListener::new(listener);
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stop_rx.await;
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "the API server failed");
            }
        });
        Ok(Running {
            addr,
            node,
            server,
            stop: Some(stop_tx),
            worker,
            _metrics: metrics,
        })
    }
}

/// A started runtime.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    node: Arc<Node>,
    server: JoinHandle<()>,
    stop: Option<oneshot::Sender<()>>,
    /// The Temporal worker this runtime hosts, if any.
    worker: Option<kodo_durable::TemporalWorker>,
    /// `metrics.listen`'s server, if any (stops when dropped).
    _metrics: Option<api::MetricsServer>,
}

impl Running {
    /// The address the API listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The node.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Resolves with a reason when the node can no longer work.
    pub async fn failed(&self) -> String {
        self.node.failed().await
    }

    /// Stops every execution, stores what is left, then stops the API.
    /// Returns what the node checked: whether every event is stored.
    pub async fn shutdown(mut self, reason: &str) -> ShutdownReport {
        // Durable attempts running here go back to Temporal, to go on elsewhere.
        if let Some(worker) = self.worker.take() {
            worker.shutdown().await;
        }
        let left = self.node.shutdown(reason).await;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(std::time::Duration::from_secs(5), &mut self.server)
            .await
            .is_err()
        {
            self.server.abort();
        }
        left
    }
}
