//! The API's request and response bodies, as types: what a client sends
//! and gets back, in one place (the README's route table describes them).

use kodo_core::{Event, Fid, Kind, Status};
use kodo_store::ExecutionRow;
use kodo_transport::TransportHealth;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// Every error answer: `{"error": "..."}`.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
}

/// `POST /flows/{flow}/executions` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchBody {
    /// The inputs (a JSON object; default `{}`).
    #[serde(default)]
    pub inputs: Option<Value>,
}

/// `POST /flows/{flow}/executions` answer (201, or 202 when not yet stored).
#[derive(Debug, Serialize)]
pub struct Launched {
    /// The new execution.
    pub fid: Fid,
    /// Whether its first events were stored before the launch wait ran out.
    pub stored: bool,
}

/// One flow in `GET /flows`.
#[derive(Debug, Serialize)]
pub struct FlowView {
    /// Its name.
    pub name: String,
    /// `command` or `rust`.
    pub kind: &'static str,
    /// One line about it.
    pub description: String,
}

/// `GET /flows/{flow}` answer.
#[derive(Debug, Serialize)]
pub struct FlowDetail {
    /// Its name.
    pub name: String,
    /// `command` or `rust`.
    pub kind: &'static str,
    /// One line about it.
    pub description: String,
    /// Its input form (a Kodosumi app's: its metadata and `elements`);
    /// null when it takes any object.
    pub form: Option<serde_json::Value>,
}

/// A launch its flow's form refused (400).
#[derive(Debug, Serialize)]
pub struct Refusal {
    /// What happened.
    pub error: String,
    /// Messages by field (`_global_`: the form as a whole).
    pub errors: serde_json::Value,
}

/// `GET /flows` answer.
#[derive(Debug, Serialize)]
pub struct FlowList {
    /// The flows, by name.
    pub flows: Vec<FlowView>,
}

/// `GET /executions` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only executions at this status.
    pub status: Option<String>,
    /// Only executions of this flow.
    pub flow: Option<String>,
    /// Only executions of this owner (admins only).
    pub owner: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    pub limit: Option<u32>,
    /// The `next_cursor` of the page before.
    pub cursor: Option<String>,
}

/// One execution, as `GET /executions/{fid}` and the list show it.
#[derive(Debug, Serialize)]
pub struct ExecutionView {
    /// Its id.
    pub fid: Fid,
    /// Its flow.
    pub flow: String,
    /// Its latest stored status.
    pub status: Status,
    /// Who launched it.
    pub owner: String,
    /// The node that runs it.
    pub node: String,
    /// Launch time (seconds since the epoch).
    pub created: f64,
    /// Last change.
    pub updated: f64,
    /// The highest stored seq.
    pub events: u64,
}

impl From<&ExecutionRow> for ExecutionView {
    fn from(row: &ExecutionRow) -> Self {
        Self {
            fid: row.fid.clone(),
            flow: row.flow.clone(),
            status: row.status,
            owner: row.owner.clone(),
            node: row.node.clone(),
            created: row.created,
            updated: row.updated,
            events: row.events,
        }
    }
}

/// `GET /executions` answer: newest first.
#[derive(Debug, Serialize)]
pub struct ExecutionPage {
    /// This page.
    pub executions: Vec<ExecutionView>,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<Fid>,
}

/// `GET /executions/{fid}/events` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventParams {
    /// Only events after this seq.
    pub after: Option<u64>,
    /// At most this many, 1 to 10000 (default 1000).
    pub limit: Option<u32>,
    /// Only these kinds, comma-separated.
    pub kinds: Option<String>,
}

/// One stored event; its payload is the stored JSON, as it is.
#[derive(Debug, Serialize)]
pub struct EventView {
    /// Its number within the execution.
    pub seq: u64,
    /// When it was stamped (seconds since the epoch).
    pub ts: f64,
    /// Its kind.
    pub kind: Kind,
    /// Its payload.
    pub payload: Box<RawValue>,
}

impl From<&Event> for EventView {
    fn from(e: &Event) -> Self {
        Self {
            seq: e.seq,
            ts: e.ts,
            kind: e.kind,
            payload: RawValue::from_string(e.payload.clone())
                .unwrap_or_else(|_| RawValue::NULL.to_owned()),
        }
    }
}

/// `GET /executions/{fid}/events` answer, in seq order.
#[derive(Debug, Serialize)]
pub struct EventList {
    /// The events.
    pub events: Vec<EventView>,
}

/// `GET /executions/{fid}/stream` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamParams {
    /// Replay after this seq (`Last-Event-ID` wins).
    pub after: Option<u64>,
}

/// `POST /executions/{fid}/kill` answer (202).
#[derive(Debug, Serialize)]
pub struct Killing {
    /// The execution.
    pub fid: Fid,
    /// Always true: it is being stopped.
    pub killing: bool,
}

/// `POST /executions/{fid}/pause` and `/resume` answer (202: the
/// execution's status follows once its attempt took the request up).
#[derive(Debug, Serialize)]
pub struct PauseState {
    /// The execution.
    pub fid: Fid,
    /// Whether it is being paused (false: resumed).
    pub paused: bool,
}

/// `POST /executions/{fid}/locks/{lid}` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerBody {
    /// The answer, any JSON.
    pub answer: Value,
}

/// `POST /executions/{fid}/locks/{lid}` answer.
#[derive(Debug, Serialize)]
pub struct Answered {
    /// The execution.
    pub fid: Fid,
    /// The lock.
    pub lid: String,
    /// Always true.
    pub answered: bool,
}

/// The store's part of `/health`.
#[derive(Debug, Serialize)]
pub struct StoreState {
    /// Whether it works now.
    pub ok: bool,
    /// Why not.
    pub error: Option<String>,
    /// How long its check took (a `ping`), in milliseconds.
    pub latency_ms: f64,
}

/// The transport's part of `/health`.
#[derive(Debug, Serialize)]
pub struct TransportState {
    /// What the transport says of itself.
    #[serde(flatten)]
    pub health: TransportHealth,
    /// How long asking it took, in milliseconds.
    pub latency_ms: f64,
}

/// The cluster's part of `/health` (nodes over Redis).
#[derive(Clone, Debug, Serialize)]
pub struct ClusterState {
    /// Whether the members can be read now.
    pub ok: bool,
    /// Live nodes, this one included.
    pub live_nodes: usize,
    /// Why not.
    pub error: Option<String>,
    /// How long reading the members took, in milliseconds.
    pub latency_ms: f64,
}

/// Temporal's part of `/health`, when some flow runs durably.
#[derive(Clone, Debug, Serialize)]
pub struct TemporalState {
    /// Whether it answers and knows the namespace now.
    pub ok: bool,
    /// `HOST:PORT`.
    pub address: String,
    /// Why not.
    pub error: Option<String>,
    /// How long its check took, in milliseconds.
    pub latency_ms: f64,
}

/// `GET /health` answer (200 `ok`, 503 `degraded`).
#[derive(Debug, Serialize)]
pub struct Health {
    /// `ok` or `degraded`.
    pub status: &'static str,
    /// The store.
    pub store: StoreState,
    /// The transport.
    pub transport: TransportState,
    /// Executions running on this node (null: its supervisor did not
    /// answer within 2 s).
    pub running: Option<usize>,
    /// Temporal, when some flow runs durably.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temporal: Option<TemporalState>,
    /// The cluster, when this node is one of several.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterState>,
}

/// `GET /health/ready` and `/health/live` answers.
#[derive(Debug, Serialize)]
pub struct Probe {
    /// `ready`, `live`, or `not ready`, `not live`.
    pub status: &'static str,
    /// Why not (empty when it is).
    pub reasons: Vec<String>,
}

/// `GET /cluster` answer.
#[derive(Debug, Serialize)]
pub struct ClusterView {
    /// The node that answered.
    pub node: String,
    /// Every node with a lease, or whose lease ran out and that is not
    /// taken over yet (`live: false`); this node alone without a cluster.
    pub nodes: Vec<kodo_cluster::Member>,
}
