//! `GET /cluster` (admins): the nodes of the deployment, from their leases.

use super::auth::User;
use super::types::ClusterView;
use super::{ApiError, AppState};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use kodo_cluster::Member;
use std::sync::Arc;

/// The nodes: name, API address, start, last renewal, running executions.
pub(super) async fn cluster(
    State(state): State<Arc<AppState>>,
    user: User,
) -> Result<Json<ClusterView>, ApiError> {
    if !user.admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "only an admin may list the cluster's nodes",
        ));
    }
    let node = &state.node;
    let mut nodes = node
        .cluster()
        .members()
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    if node.lease().is_none() {
        // No cluster: this node alone.
        nodes = vec![Member {
            name: node.name().to_string(),
            api: node.api().to_string(),
            started: state.started,
            renewed: kodo_core::now_ts(),
            running: node.running().await as u64,
            live: true,
        }];
    }
    Ok(Json(ClusterView {
        node: node.name().to_string(),
        nodes,
    }))
}
