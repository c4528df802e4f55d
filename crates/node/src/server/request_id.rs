//! One id per client write request, carried across a forwarded hop (`ShardAppendRequest.
//! request_id`) so that the lines both nodes log about it can be found together. The id lives
//! in a task-local for the request's duration and in a `request{id=…}` span at debug level (no
//! cost on the hot path unless debug logging is on for `millrace_node`).

use std::future::Future;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// A fresh id: 16 hex digits.
pub fn new() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Runs `fut` as the request `id`.
pub async fn scope<F: Future>(id: String, fut: F) -> F::Output {
    REQUEST_ID.scope(id, fut).await
}

/// The id of the request the current task serves, or an empty string outside one.
pub fn current() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}
