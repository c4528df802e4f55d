//! One id per client write request, carried across a forwarded hop (`ShardAppendRequest.
//! request_id`) so that the lines both nodes log about it can be found together. The id lives
//! in a task-local for the request's duration and in a `request{id=…}` span at debug level; it
//! is a number until a log line or a forwarded hop needs its text, so it costs next to nothing
//! on the hot path when debug logging is off.

use std::future::Future;

tokio::task_local! {
    static REQUEST_ID: u64;
}

/// A fresh id.
pub fn new() -> u64 {
    rand::random()
}

/// How an id is written in logs and on the wire: 16 hex digits.
pub fn text(id: u64) -> String {
    format!("{id:016x}")
}

/// Runs `fut` as the request `id`.
pub async fn scope<F: Future>(id: u64, fut: F) -> F::Output {
    REQUEST_ID.scope(id, fut).await
}

/// The id of the request the current task serves, as text; empty outside one.
pub fn current() -> String {
    REQUEST_ID.try_with(|id| text(*id)).unwrap_or_default()
}
