//! The HTTP port: health, readiness, status and metrics (GET), the console (`GET /console`), and
//! the Kinesis API (`POST /`).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use openraft::async_runtime::WatchReceiver;
use serde_json::json;

use super::access::Target;
use crate::server::node::Node;

pub fn router(node: Arc<Node>) -> Router {
    let signed = |action: &'static str| from_fn_with_state((node.clone(), action), signed_by);
    let console_viewer = from_fn_with_state(node.clone(), super::console::viewer);
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route(
            "/v1/node/status",
            get(status).route_layer(signed("GetNodeStats")),
        )
        .route(
            "/metrics",
            get(metrics).route_layer(from_fn_with_state(node.clone(), scraper)),
        )
        .route(
            "/v1/cluster/status",
            get(cluster_status).route_layer(signed("GetClusterStatus")),
        )
        .route(
            "/console",
            get(super::console::page).route_layer(console_viewer.clone()),
        )
        .route(
            "/console/state",
            get(super::console::state).route_layer(console_viewer),
        )
        .with_state(node.clone())
        .merge(super::kinesis::router(super::kinesis::KinesisApi::new(
            node,
        )))
}

/// Ready once this node is registered and knows the metadata leader.
async fn readyz(State(node): State<Arc<Node>>) -> (StatusCode, String) {
    match (node.is_registered(), node.metadata_leader()) {
        (true, Some(leader)) => (
            StatusCode::OK,
            format!("ready (metadata leader {leader})\n"),
        ),
        (registered, leader) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: registered={registered} metadata_leader={leader:?}\n"),
        ),
    }
}

/// Serves a status page only to a request [`allow_status`] lets through.
async fn signed_by(
    State((node, action)): State<(Arc<Node>, &'static str)>,
    req: Request,
    next: Next,
) -> Response {
    match allow_status(&node, action, req.method(), req.uri(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err(refused) => refused.into_response(),
    }
}

/// Serves `/metrics` to a request bearing the metrics token (`--metrics-token-file`), or else
/// to one [`allow_status`] lets through as for `GetNodeStats`.
async fn scraper(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let token = node.security.metrics_token.as_ref();
    let bearer = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.starts_with("Bearer "));
    match (token, bearer) {
        (Some(token), Some(presented)) if token.admits(presented) => next.run(req).await,
        (_, Some(_)) => (
            StatusCode::UNAUTHORIZED,
            Json(json!({"__type": "UnrecognizedClientException",
                        "message": "The bearer token is not this node's metrics token"})),
        )
            .into_response(),
        (_, None) => {
            match allow_status(
                &node,
                "GetNodeStats",
                req.method(),
                req.uri(),
                req.headers(),
            ) {
                Ok(()) => next.run(req).await,
                Err(refused) => refused.into_response(),
            }
        }
    }
}

/// Lets a request for a status page through: with access keys configured it must be signed
/// with SigV4 (as a Kinesis request is, for the node's region and the `kinesis` service; `curl
/// --aws-sigv4 "aws:amz:REGION:kinesis"` does it) by a key allowed `action`, a cluster action.
/// A refusal is a JSON error naming why: 401 unauthenticated, 403 not allowed.
pub(super) fn allow_status(
    node: &Node,
    action: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<(), (StatusCode, Json<serde_json::Value>)> {
    use super::kinesis::{sigv4, KinesisError};
    let signed = sigv4::SignedRequest {
        method,
        uri,
        headers,
        body: b"",
    };
    let now_secs = crate::server::now_ms() / 1000;
    let refused = |e: KinesisError, status| {
        tracing::debug!(error = %e.type_name, path = uri.path(), "status page refused");
        (
            status,
            Json(json!({"__type": e.type_name, "message": e.message})),
        )
    };
    let principal = sigv4::verify(node, &node.config.kinesis.region, &signed, now_secs)
        .map_err(|e| refused(e, StatusCode::UNAUTHORIZED))?;
    node.authorize(principal.as_deref(), action, Target::default())
        .map_err(|e| {
            let status = match e.kinesis_name() {
                "AccessDeniedException" => StatusCode::FORBIDDEN,
                "LimitExceededException" => StatusCode::TOO_MANY_REQUESTS,
                _ => StatusCode::UNAUTHORIZED,
            };
            refused(e.into(), status)
        })
}

/// This node's metrics, in the Prometheus text format (see `docs/metrics.md`).
async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::server::metrics::render(&node),
    )
}

/// This node's view of itself and its Raft group replicas (JSON, for operators and tests).
async fn status(State(node): State<Arc<Node>>) -> Json<serde_json::Value> {
    let mut ids = node.groups.group_ids();
    ids.sort_unstable();
    let groups: Vec<serde_json::Value> = ids
        .into_iter()
        .filter_map(|id| {
            let h = node.groups.get(id)?;
            let m = h.raft.metrics().borrow_watched().clone();
            Some(json!({
                "group_id": id,
                "state": format!("{:?}", m.state),
                "leader": m.current_leader,
                "term": m.current_term,
                "last_log_index": m.last_log_index,
                "applied_index": m.last_applied.map(|l| l.index),
                "voters": m.membership_config.membership().voter_ids().collect::<Vec<_>>(),
                // Set while the replica is rebuilt after damage (it votes again once its log
                // reaches this index).
                "repair_until": h.log.repair().map(|r| r.until),
            }))
        })
        .collect();
    Json(json!({
        "node_id": node.id,
        "zone": node.config.zone,
        "registered": node.is_registered(),
        "metadata_leader": node.metadata_leader(),
        // This node's wall clock (ms since the epoch): skew between nodes shows here.
        "wall_clock_ms": crate::server::now_ms(),
        "groups": groups,
        "write_path": crate::server::stats::to_json(&node.write_stats()),
        "read_path": {
            "pages_read_ahead": crate::shard::read_ahead::pages_served(),
        },
        "security": node.security.status_json(),
        "limits": node.admission.status_json(),
    }))
}

/// The cluster status (as `millrace cluster status --json` prints it), for dashboards.
async fn cluster_status(State(node): State<Arc<Node>>) -> (StatusCode, Json<serde_json::Value>) {
    match node.fetch_cluster_status(false).await {
        Ok(s) => (StatusCode::OK, Json(s)),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": e.to_string()})),
        ),
    }
}
