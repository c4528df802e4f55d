//! The server process: wiring storage, Raft groups, the API and background loops together.

pub mod admission;
pub mod cluster;
pub mod cluster_view;
pub mod config;
mod http_serve;
pub mod metrics;
pub mod node;
mod on_demand;
mod quiesce;
mod reconcile;
pub mod request_id;
mod retention;
pub mod routing;
mod run;
pub mod security;
pub mod stats;
pub mod subscriptions;

pub use config::ServeConfig;
pub use run::serve;

/// Milliseconds since the Unix epoch on this node's clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
