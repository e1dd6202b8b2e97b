//! The sections of `kodo.toml`, their keys and defaults.

use kodo_core::mask_url;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// `transport.kind`: how events travel from Tracers to Spoolers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// The in-process queue (one node, its own Spoolers).
    #[default]
    Local,
    /// Redis Streams (many nodes and spooler processes).
    Redis,
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Local => "local",
            Self::Redis => "redis",
        })
    }
}

/// `execution.mode`: how an execution runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionMode {
    /// In a Runner of the node that launched it.
    #[default]
    Direct,
    /// As a Temporal workflow, on any worker: survives worker and node death.
    Temporal,
}

/// `store.synchronous`: how SQLite syncs its WAL.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// Survives a crash of the process.
    #[default]
    Normal,
    /// Also survives power loss (an fsync per commit).
    Full,
}

/// `[node]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    /// The node's name; at start it closes only its own unfinished executions.
    pub name: String,
}

impl Default for NodeSection {
    fn default() -> Self {
        Self {
            name: "local".into(),
        }
    }
}

/// `[api]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSection {
    /// Address to listen on.
    pub listen: String,
    /// The largest request body, in bytes (larger: 413).
    pub max_body_bytes: usize,
}

impl Default for ApiSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:3370".into(),
            max_body_bytes: 1 << 20,
        }
    }
}

/// `[metrics]`
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSection {
    /// An address of its own that serves only `GET /metrics` (empty: none;
    /// a node serves `/metrics` on its API anyway). `runtime spool` and
    /// `runtime temporal-worker`, which have no API, are scraped here.
    pub listen: String,
    /// Scrapes of `listen` need no token: allowed on a loopback address only.
    pub open: bool,
}

/// `[telemetry]`: OpenTelemetry traces over OTLP/HTTP, off unless an
/// endpoint is set (here or in `OTEL_EXPORTER_OTLP_ENDPOINT`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySection {
    /// The OTLP/HTTP endpoint (`http://HOST:4318`; `/v1/traces` is added).
    pub otlp_endpoint: String,
    /// Every span's `service.name` (empty: `OTEL_SERVICE_NAME`, else `kodo`).
    pub service_name: String,
    /// The share of new traces kept, 0 to 1 (at 1, the default,
    /// `OTEL_TRACES_SAMPLER` may choose); a launch's `traceparent` decides
    /// for its execution.
    pub sample_ratio: f64,
}

impl Default for TelemetrySection {
    fn default() -> Self {
        Self {
            otlp_endpoint: String::new(),
            service_name: String::new(),
            sample_ratio: 1.0,
        }
    }
}

/// `[store]`
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSection {
    /// `sqlite://PATH` or `postgres://USER:PASSWORD@HOST:PORT/DATABASE`.
    pub url: String,
    /// SQLite: `normal` (survives a crash of the process) or `full` (survives power loss).
    pub synchronous: Synchronous,
    /// SQLite: connections for API reads.
    pub read_connections: u32,
    /// PostgreSQL: the most connections (spoolers and API reads share them).
    pub pool: u32,
}

impl Default for StoreSection {
    fn default() -> Self {
        Self {
            url: "sqlite://./data/kodo.db".into(),
            synchronous: Synchronous::Normal,
            read_connections: 4,
            pool: 8,
        }
    }
}

/// `[transport]`
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportSection {
    /// `local` (the in-process queue) or `redis` (Redis Streams).
    pub kind: TransportKind,
    /// Shards (Redis: streams), each drained by one Spooler per process.
    pub shards: usize,
    /// The most bytes of events in flight in this process; Tracers wait beyond it.
    pub capacity_bytes: usize,
    /// Redis: `redis://[:PASSWORD@]HOST:PORT[/DB]`.
    pub url: String,
    /// Redis: prefix of every key (one deployment, one prefix).
    pub prefix: String,
    /// Redis: entries a stream may hold before producers wait.
    pub max_len: usize,
    /// Redis: seconds after which a pending entry of a silent consumer is claimed.
    pub claim_idle: f64,
    /// Redis: seconds one blocking read waits for entries.
    pub block: f64,
}

impl Default for TransportSection {
    fn default() -> Self {
        Self {
            kind: TransportKind::Local,
            shards: 2,
            capacity_bytes: 64 << 20,
            url: "redis://127.0.0.1:6379".into(),
            prefix: "kodo".into(),
            max_len: 100_000,
            claim_idle: 10.0,
            block: 0.5,
        }
    }
}

/// `[cluster]`: several nodes over one Redis (`transport.kind = "redis"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSection {
    /// Seconds a node's lease lasts without a renewal (renewed every tenth
    /// of it, at most every second): a node silent that long is declared
    /// lost, and a survivor closes its executions (`error: node lost`).
    pub lease: f64,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self { lease: 10.0 }
    }
}

/// `[spooler]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolerSection {
    /// The most events one transaction commits.
    pub batch_max: usize,
    /// Run Spoolers inside `runtime run`; false leaves the Redis streams to
    /// `runtime spool` processes.
    pub enabled: bool,
}

impl Default for SpoolerSection {
    fn default() -> Self {
        Self {
            batch_max: 1000,
            enabled: true,
        }
    }
}

/// `[limits]` (durations in seconds)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSection {
    /// The largest event payload; longer output lines are split.
    pub max_payload_bytes: usize,
    /// The most executions running at once (more: 503).
    pub max_running: usize,
    /// SIGTERM-to-SIGKILL grace period when a command flow is killed.
    pub kill_grace: f64,
    /// Default time a lock waits for its answer.
    pub lock_timeout: f64,
    /// How long a launch waits for its first events to be stored (then 202).
    pub launch_wait: f64,
    /// How long shutdown waits for executions to stop and events to be stored.
    pub shutdown_wait: f64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_payload_bytes: 1 << 20,
            max_running: 250_000,
            kill_grace: 5.0,
            lock_timeout: 10_800.0,
            launch_wait: 10.0,
            shutdown_wait: 30.0,
        }
    }
}

/// `[log]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// A tracing filter (`info`, `kodo_actors=debug,info`...); `RUST_LOG` wins.
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            level: "info".into(),
        }
    }
}

/// `[auth]`
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSection {
    /// `[[auth.tokens]]` entries. With none, every caller is the admin `local`
    /// and the API refuses to listen on a non-loopback address.
    pub tokens: Vec<TokenEntry>,
}

/// One bearer token.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// The secret the client sends as `Authorization: Bearer <token>`.
    pub token: String,
    /// The user it stands for.
    pub user: String,
    /// Whether the user sees everyone's executions.
    #[serde(default)]
    pub admin: bool,
}

/// `[execution]`
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecutionSection {
    /// `direct` (the default) or `temporal`; a flow may set its own.
    pub mode: ExecutionMode,
}

/// `[temporal]` (durations in seconds)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TemporalSection {
    /// The frontend's `HOST:PORT`.
    pub address: String,
    /// The namespace (it must exist).
    pub namespace: String,
    /// The task queue kodo's workflows and activities use.
    pub task_queue: String,
    /// A workflow's id is this prefix and the execution's fid.
    pub workflow_id_prefix: String,
    /// The longest an execution may run, all attempts together (0: no limit).
    pub execution_timeout: f64,
    /// An attempt whose worker is silent this long is retried elsewhere.
    pub heartbeat_timeout: f64,
    /// Attempts in all (1: never retried).
    pub attempts: u32,
    /// Whether `runtime run` hosts a worker (`runtime temporal-worker` is one alone).
    pub worker: bool,
}

impl Default for TemporalSection {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:7233".into(),
            namespace: "default".into(),
            task_queue: "kodo".into(),
            workflow_id_prefix: "kodo-".into(),
            execution_timeout: 0.0,
            heartbeat_timeout: 30.0,
            attempts: 3,
            worker: true,
        }
    }
}

/// `[flows.NAME]`: a command flow (`command`), or a Kodosumi flow
/// (`kodosumi`, run with the bundled `kodo` Python package).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowSection {
    /// Program and arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// A Kodosumi flow instead of `command`: `pkg.mod:app` (a `ServeAPI`
    /// app, with `path`) or `pkg.mod:fn` (an entry point).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kodosumi: Option<String>,
    /// The `@app.enter` route of a Kodosumi app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The Python that runs a Kodosumi flow (default `python3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<String>,
    /// Folders a Kodosumi flow imports from (relative to the config file's
    /// folder), ahead of `PYTHONPATH`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pythonpath: Vec<PathBuf>,
    /// The flow's input form (`[[flows.NAME.form]]`, Kodosumi's element
    /// shapes): launches are checked against it before anything is stored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub form: Vec<serde_json::Value>,
    /// Extra environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory, relative to the config file's folder.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Seconds after which the execution ends with `error`.
    #[serde(default)]
    pub timeout: Option<f64>,
    /// One line for `GET /flows`.
    #[serde(default)]
    pub description: String,
    /// This flow's execution mode (default: `execution.mode`).
    #[serde(default)]
    pub mode: Option<ExecutionMode>,
    /// What happens to an execution whose node died (direct mode).
    #[serde(default)]
    pub recover: RecoverPolicy,
    /// Runs in all, the first included, of an execution that resumes.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// How the flow is sold on Masumi (its MIP-003 API, `/mip003/NAME/...`).
    #[serde(default)]
    pub masumi: MasumiSection,
}

/// `[flows.NAME.masumi]`: the flow's MIP-003 API.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MasumiSection {
    /// Who may call it: `tokens` (kodo's bearer tokens, the default) or
    /// `open` (anyone, as a public agent; a caller with a token is still
    /// that user).
    pub access: MasumiAccess,
    /// The user that owns jobs started without a token (`open` access).
    pub owner: String,
    /// The agent identifier Masumi's registry gave this flow, echoed in
    /// `start_job` answers (empty: not registered).
    pub agent_identifier: String,
    /// The seller's wallet verification key, echoed in `start_job` answers.
    pub seller_vkey: String,
    /// The payment hook (empty: payment off): `start_job` asks this URL for
    /// the payment's fields, and the job waits in `awaiting_payment` until
    /// the payment service confirms it (`POST /mip003/NAME/payment`).
    pub payment_url: String,
    /// The secret kodo and the payment service show each other (bearer).
    pub payment_token: String,
    /// Seconds a job waits for its payment before it fails.
    pub payment_timeout: f64,
}

impl Default for MasumiSection {
    fn default() -> Self {
        Self {
            access: MasumiAccess::Tokens,
            owner: "masumi".into(),
            agent_identifier: String::new(),
            seller_vkey: String::new(),
            payment_url: String::new(),
            payment_token: String::new(),
            payment_timeout: 3600.0,
        }
    }
}

/// `flows.NAME.masumi.access`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MasumiAccess {
    /// kodo's bearer tokens, as the rest of the API.
    #[default]
    Tokens,
    /// Anyone; callers without a token act as `owner`.
    Open,
}

fn default_attempts() -> u32 {
    kodo_actors::DEFAULT_ATTEMPTS
}

/// `flows.NAME.recover`: what happens to an execution whose node died.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecoverPolicy {
    /// It ends with `error: node restarted`.
    #[default]
    Error,
    /// It runs again from the start, its completed steps replayed from the journal.
    Resume,
}

// Debug without secrets: URLs with their password masked, no token.

impl std::fmt::Debug for StoreSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSection")
            .field("url", &mask_url(&self.url))
            .field("synchronous", &self.synchronous)
            .field("read_connections", &self.read_connections)
            .field("pool", &self.pool)
            .finish()
    }
}

impl std::fmt::Debug for TransportSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportSection")
            .field("kind", &self.kind)
            .field("shards", &self.shards)
            .field("capacity_bytes", &self.capacity_bytes)
            .field("url", &mask_url(&self.url))
            .field("prefix", &self.prefix)
            .field("max_len", &self.max_len)
            .field("claim_idle", &self.claim_idle)
            .field("block", &self.block)
            .finish()
    }
}

impl std::fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenEntry")
            .field("token", &"***")
            .field("user", &self.user)
            .field("admin", &self.admin)
            .finish()
    }
}

impl std::fmt::Debug for MasumiSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasumiSection")
            .field("access", &self.access)
            .field("owner", &self.owner)
            .field("agent_identifier", &self.agent_identifier)
            .field("seller_vkey", &self.seller_vkey)
            .field("payment_url", &mask_url(&self.payment_url))
            .field("payment_token", &"***")
            .field("payment_timeout", &self.payment_timeout)
            .finish()
    }
}

impl std::fmt::Debug for FlowSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowSection")
            .field("command", &self.command)
            .field("kodosumi", &self.kodosumi)
            .field("path", &self.path)
            .field("python", &self.python)
            .field("pythonpath", &self.pythonpath)
            .field("form", &self.form.len())
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("cwd", &self.cwd)
            .field("timeout", &self.timeout)
            .field("description", &self.description)
            .field("mode", &self.mode)
            .field("recover", &self.recover)
            .field("attempts", &self.attempts)
            .field("masumi", &self.masumi)
            .finish()
    }
}
