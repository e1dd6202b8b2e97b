//! `GET /metrics`: this process's metrics in the OpenMetrics text format.
//! On a node's API it takes a token as every route but `/health`; a
//! process without the API (`runtime spool`, `runtime temporal-worker`)
//! serves it alone on `metrics.listen` ([`serve_metrics`]).

use super::AppState;
use super::auth::Tokens;
use super::error::ApiError;
use crate::config::Config;
use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kodo_metrics::SharedMetrics;
use kodo_transport::SharedTransport;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinHandle;

/// The metrics, with the transport's state read now.
async fn exposition(metrics: &SharedMetrics, transport: &SharedTransport) -> Response {
    let health = transport.health().await;
    metrics.transport(health.used_bytes, health.backlog, health.failures);
    (
        [(CONTENT_TYPE, kodo_metrics::CONTENT_TYPE)],
        metrics.encode(),
    )
        .into_response()
}

/// `GET /metrics` on the API: admins only (it shows every user's flows
/// and load).
pub(super) async fn metrics(State(state): State<Arc<AppState>>, user: super::User) -> Response {
    if !user.admin {
        return ApiError::new(StatusCode::FORBIDDEN, "only an admin may read the metrics")
            .into_response();
    }
    exposition(state.node.metrics(), state.node.transport()).await
}

#[derive(Debug)]
struct Alone {
    metrics: SharedMetrics,
    transport: SharedTransport,
    /// None: `metrics.open`, no token asked.
    tokens: Option<Tokens>,
}

async fn alone(State(state): State<Arc<Alone>>, headers: HeaderMap) -> Response {
    if let Some(tokens) = &state.tokens
        && tokens.caller(&headers).is_none()
    {
        return super::auth::unauthorized();
    }
    exposition(&state.metrics, &state.transport).await
}

/// The listener of `metrics.listen`, serving until dropped.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `GET /metrics` alone on `metrics.listen`, if the config sets it.
pub async fn serve_metrics(
    config: &Config,
    metrics: SharedMetrics,
    transport: SharedTransport,
) -> Result<Option<MetricsServer>, crate::StartError> {
    if config.metrics.listen.is_empty() {
        return Ok(None);
    }
    let addr: SocketAddr = config.metrics.listen.parse().expect("validated");
    let bind = |source| crate::StartError::Bind { addr, source };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(bind)?;
    let addr = listener.local_addr().map_err(bind)?;
    let state = Arc::new(Alone {
        metrics,
        transport,
        tokens: (!config.metrics.open).then(|| Tokens::of(config)),
    });
    let app = Router::new()
        .route("/metrics", get(alone))
        .fallback(|| async { ApiError::not_found("route") })
        .with_state(state);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the metrics server failed");
        }
    });
    Ok(Some(MetricsServer { addr, task }))
}
