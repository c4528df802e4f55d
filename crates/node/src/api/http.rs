//! The HTTP port: health and readiness now; the Kinesis API and metrics come later.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use crate::server::node::Node;

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(node)
}

/// Ready once this node is registered and knows the metadata leader.
async fn readyz(State(node): State<Arc<Node>>) -> (StatusCode, String) {
    match (node.is_registered(), node.metadata_leader()) {
        (true, Some(leader)) => (StatusCode::OK, format!("ready (metadata leader {leader})\n")),
        (registered, leader) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: registered={registered} metadata_leader={leader:?}\n"),
        ),
    }
}
