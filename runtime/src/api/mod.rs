//! The HTTP API (axum, JSON, bearer tokens). Every bad request gets a 4xx
//! with `{"error": "..."}`; a user sees only their own executions (another
//! user's answer 404, as if they did not exist), an admin sees all.
//!
//! One concern per module: `auth` (tokens to users), `error` (error
//! answers, parsing what clients send), [`types`] (every request and
//! response body), `executions` (the execution routes), `stream` (SSE),
//! `health`, `metrics`, `cluster` (the nodes), `mip003` (Masumi's agentic
//! service API, per flow), `panel` (the web panel's page and session), and
//! the TCP [`ApiListener`].

mod auth;
mod cluster;
mod error;
mod executions;
mod health;
mod listener;
mod metrics;
mod mip003;
mod panel;
mod payment;
mod stream;
pub mod types;

pub use auth::User;
pub use error::ApiError;
pub use listener::{ApiListener, JsonErrors};
pub use metrics::{MetricsServer, serve_metrics};

use crate::config::{Config, MasumiSection};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use kodo_actors::Node;
use kodo_durable::Temporal;
use std::collections::HashMap;
use std::sync::Arc;

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    /// The node.
    pub node: Arc<Node>,
    /// Temporal, when some flow runs durably.
    pub temporal: Option<Arc<Temporal>>,
    /// When this API started (Unix seconds).
    pub started: f64,
    tokens: auth::Tokens,
    health: health::Checked,
    /// Each flow's `[flows.NAME.masumi]`.
    masumi: HashMap<String, MasumiSection>,
    /// The client of outside services (MIP-003's payment hook).
    http: reqwest::Client,
}

/// Builds the router over a running node.
pub fn router(node: Arc<Node>, config: &Config, temporal: Option<Arc<Temporal>>) -> Router {
    let state = Arc::new(AppState {
        node,
        temporal,
        started: kodo_core::now_ts(),
        tokens: auth::Tokens::of(config),
        health: Default::default(),
        masumi: config
            .flows
            .iter()
            .map(|(name, flow)| (name.clone(), flow.masumi.clone()))
            .collect(),
        http: reqwest::Client::new(),
    });
    let authed = Router::new()
        .route("/cluster", get(cluster::cluster))
        .route("/metrics", get(metrics::metrics))
        .route("/flows", get(executions::list_flows))
        .route("/flows/{flow}", get(executions::get_flow))
        .route("/flows/{flow}/executions", post(executions::launch))
        .route("/executions", get(executions::list_executions))
        .route("/executions/{fid}", get(executions::get_execution))
        .route("/executions/{fid}/events", get(executions::get_events))
        .route(
            "/executions/{fid}/events.jsonl",
            get(executions::download_events),
        )
        .route("/panel/session", get(panel::session))
        .route("/panel/logout", post(panel::logout))
        .route("/panel/render", post(panel::render))
        .route("/executions/{fid}/stream", get(stream::stream))
        .route("/executions/{fid}/kill", post(executions::kill))
        .route("/executions/{fid}/durable", get(executions::durable))
        .route("/executions/{fid}/pause", post(executions::pause))
        .route("/executions/{fid}/resume", post(executions::resume))
        .route(
            "/executions/{fid}/locks/{lid}",
            post(executions::answer_lock),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ));
    Router::new()
        .route("/", get(panel::page))
        .route("/panel/assets/{name}", get(panel::asset))
        .route("/panel/login", post(panel::login))
        .route("/health", get(health::health))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .merge(mip003::routes())
        .merge(authed)
        .fallback(|| async { ApiError::not_found("route") })
        .layer(DefaultBodyLimit::max(config.api.max_body_bytes))
        .layer(middleware::map_response(error::json_errors))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::refuse_cross_site,
        ))
        .layer(middleware::from_fn(panel::security_headers))
        .with_state(state)
}
