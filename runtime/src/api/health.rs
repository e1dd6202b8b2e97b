//! Health, no token needed:
//! - `GET /health`: each dependency (store, transport, Temporal, cluster)
//!   with its state and how long its check took; 200 `ok`, or 503
//!   `degraded` naming what is down.
//! - `GET /health/live`: 200 while the process can do its work (its
//!   supervisors run); 503 when it should be restarted.
//! - `GET /health/ready`: 200 when it takes launches (dependencies up, not
//!   shutting down, below `limits.max_running`); 503 with the reasons.
//!
//! They need no token, so one check of the dependencies serves every probe
//! for [`FRESH_FOR`]: probes in a loop cannot load the store or Temporal.

use super::AppState;
use super::types::{ClusterState, Health, Probe, StoreState, TemporalState, TransportState};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long each check may take.
const CHECK_WITHIN: Duration = Duration::from_secs(2);

/// How long one check of the dependencies answers every probe.
const FRESH_FOR: Duration = Duration::from_secs(1);

/// The last check of the dependencies, and when it ended.
#[derive(Debug, Default)]
pub(super) struct Checked(tokio::sync::Mutex<Option<(Instant, Arc<Dependencies>)>>);

/// What one check of the dependencies found.
#[derive(Debug)]
pub(super) struct Dependencies {
    store: Result<(), String>,
    store_ms: f64,
    transport: kodo_transport::TransportHealth,
    transport_ms: f64,
    temporal: Option<TemporalState>,
    cluster: Option<ClusterState>,
}

/// Runs `check`, timing it (None: no answer within [`CHECK_WITHIN`]).
async fn timed<T>(check: impl Future<Output = T>) -> (Option<T>, f64) {
    let start = Instant::now();
    let out = tokio::time::timeout(CHECK_WITHIN, check).await.ok();
    (out, start.elapsed().as_secs_f64() * 1000.0)
}

fn late() -> String {
    format!("no answer within {CHECK_WITHIN:?}")
}

/// The dependencies' health: the last check if fresh, else a new one (one at
/// a time: concurrent probes wait for it and share it).
async fn dependencies(state: &AppState) -> Arc<Dependencies> {
    let mut last = state.health.0.lock().await;
    if let Some((at, found)) = last.as_ref()
        && at.elapsed() < FRESH_FOR
    {
        return found.clone();
    }
    let found = Arc::new(check_dependencies(state).await);
    *last = Some((Instant::now(), found.clone()));
    found
}

/// Every dependency, checked at once.
async fn check_dependencies(state: &AppState) -> Dependencies {
    let node = &state.node;
    let store = timed(node.store().ping());
    let transport = timed(node.transport().health());
    let temporal = async {
        match &state.temporal {
            Some(t) => Some((timed(t.check()).await, t.options().address.clone())),
            None => None,
        }
    };
    let cluster = async {
        match node.lease() {
            Some(_) => Some(timed(node.cluster().members()).await),
            None => None,
        }
    };
    let ((ping, store_ms), (transport, transport_ms), temporal, cluster) =
        tokio::join!(store, transport, temporal, cluster);
    let store = match ping {
        Some(Ok(())) => Ok(()),
        Some(Err(e)) => Err(e.to_string()),
        None => Err(late()),
    };
    let transport = transport.unwrap_or_else(|| kodo_transport::TransportHealth {
        ok: false,
        error: Some(late()),
        ..Default::default()
    });
    let temporal = temporal.map(|((answer, latency_ms), address)| {
        let error = match answer {
            Some(Ok(())) => None,
            Some(Err(e)) => Some(e.to_string()),
            None => Some(late()),
        };
        TemporalState {
            ok: error.is_none(),
            address,
            error,
            latency_ms,
        }
    });
    let cluster = cluster.map(|(members, latency_ms)| {
        let (live_nodes, error) = match members {
            Some(Ok(members)) => (members.iter().filter(|m| m.live).count(), None),
            Some(Err(e)) => (0, Some(e.to_string())),
            None => (0, Some(late())),
        };
        ClusterState {
            ok: error.is_none(),
            live_nodes,
            error,
            latency_ms,
        }
    });
    Dependencies {
        store,
        store_ms,
        transport,
        transport_ms,
        temporal,
        cluster,
    }
}

/// The dependencies (checked at most once per [`FRESH_FOR`]) with what this
/// process knows now: its last store write's error, its running count.
async fn check(state: &AppState) -> Health {
    let node = &state.node;
    let (found, (running, _)) = tokio::join!(dependencies(state), timed(node.running()));
    let store_error = match &found.store {
        Ok(()) => node.store_error(),
        Err(e) => Some(e.clone()),
    };
    let ok = store_error.is_none()
        && found.transport.ok
        && found.temporal.as_ref().is_none_or(|t| t.ok)
        && found.cluster.as_ref().is_none_or(|c| c.ok);
    Health {
        status: if ok { "ok" } else { "degraded" },
        store: StoreState {
            ok: store_error.is_none(),
            error: store_error,
            latency_ms: found.store_ms,
        },
        transport: TransportState {
            health: found.transport.clone(),
            latency_ms: found.transport_ms,
        },
        running,
        temporal: found.temporal.clone(),
        cluster: found.cluster.clone(),
    }
}

fn answer<T: serde::Serialize>(ok: bool, body: T) -> Response {
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// `GET /health`.
pub(super) async fn health(State(state): State<Arc<AppState>>) -> Response {
    let health = check(&state).await;
    answer(health.status == "ok", health)
}

/// `GET /health/live`.
pub(super) async fn live(State(state): State<Arc<AppState>>) -> Response {
    let reasons: Vec<String> = state.node.has_failed().into_iter().collect();
    let status = if reasons.is_empty() {
        "live"
    } else {
        "not live"
    };
    answer(reasons.is_empty(), Probe { status, reasons })
}

/// `GET /health/ready`.
pub(super) async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let reasons = not_ready(&state).await;
    let status = if reasons.is_empty() {
        "ready"
    } else {
        "not ready"
    };
    answer(reasons.is_empty(), Probe { status, reasons })
}

/// Why this node takes no launches now (none: it does): shutting down, a
/// dependency down, at `limits.max_running`.
pub(super) async fn not_ready(state: &AppState) -> Vec<String> {
    let node = &state.node;
    let health = check(state).await;
    let mut reasons = Vec::new();
    if node.stopping() {
        reasons.push("shutting down".to_string());
    }
    if let Some(why) = node.has_failed() {
        reasons.push(why);
    }
    if let Some(e) = &health.store.error {
        reasons.push(format!("store: {e}"));
    }
    if let Some(e) = &health.transport.health.error {
        reasons.push(format!("transport: {e}"));
    } else if !health.transport.health.ok {
        reasons.push("transport: not working".into());
    }
    if let Some(e) = health.temporal.as_ref().and_then(|t| t.error.as_ref()) {
        reasons.push(format!("temporal: {e}"));
    }
    if let Some(e) = health.cluster.as_ref().and_then(|c| c.error.as_ref()) {
        reasons.push(format!("cluster: {e}"));
    }
    match health.running {
        None => reasons.push(format!(
            "the execution supervisor did not answer within {CHECK_WITHIN:?}"
        )),
        Some(n) if n >= node.max_running() => {
            reasons.push(format!("at limits.max_running ({})", node.max_running()));
        }
        Some(_) => {}
    }
    reasons
}
