//! `GET /health` (no token needed): 200 `ok`, or 503 `degraded` naming
//! what is down (the store's error, the transport's).

use super::AppState;
use super::types::{Health, StoreState, TemporalState};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;

/// The node's health.
pub(super) async fn health(State(state): State<Arc<AppState>>) -> Response {
    let node = &state.node;
    let ping = tokio::time::timeout(Duration::from_secs(2), node.store().ping()).await;
    let store_error = match ping {
        Ok(Ok(())) => node.store_error(),
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("no answer within 2 s".into()),
    };
    let transport = node.transport().health().await;
    let temporal = match &state.temporal {
        Some(t) => {
            let error = t.check().await.err().map(|e| e.to_string());
            Some(TemporalState {
                ok: error.is_none(),
                address: t.options().address.clone(),
                error,
            })
        }
        None => None,
    };
    let ok = store_error.is_none() && transport.ok && temporal.as_ref().is_none_or(|t| t.ok);
    let body = Health {
        status: if ok { "ok" } else { "degraded" },
        store: StoreState {
            ok: store_error.is_none(),
            error: store_error,
        },
        transport,
        running: node.running().await,
        temporal,
    };
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}
