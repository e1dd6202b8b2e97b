//! `GET /metrics`: this process's metrics in the OpenMetrics text format
//! (Prometheus scrapes it with a token, as any client of the API).

use super::AppState;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// The metrics, with the transport's state read now.
pub(super) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let node = &state.node;
    let transport = node.transport().health().await;
    let metrics = node.metrics();
    metrics.transport(transport.used_bytes, transport.backlog);
    (
        [(CONTENT_TYPE, kodo_metrics::CONTENT_TYPE)],
        metrics.encode(),
    )
        .into_response()
}
