//! The HTTP port's connection loop: hyper (HTTP/1.1, and HTTP/2 by ALPN or prior knowledge)
//! with the limits that keep slow or oversized requests from holding the node
//! (`docs/security.md`, "Limits").

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use millrace_security::Conn;

/// Largest request head (request line and headers; HTTP/2: the header list) accepted. A larger
/// one is refused (HTTP/1.1: 431) and the connection closed.
pub const HTTP_HEADER_BYTES_MAX: usize = 64 * 1024;
/// HTTP/2 connections are pinged when idle this long, and closed if the ping is not answered
/// within as long again: a peer that vanished does not hold its connection forever.
const HTTP2_KEEP_ALIVE: Duration = Duration::from_secs(20);

/// Serves `router` on every connection of `conns` until the accept loop ends. A request's head
/// must arrive within `header_read_timeout`, else its connection is closed.
pub async fn serve(
    mut conns: tokio::sync::mpsc::Receiver<Conn>,
    router: axum::Router,
    header_read_timeout: Duration,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(HTTP_HEADER_BYTES_MAX);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(HTTP_HEADER_BYTES_MAX as u32)
        .max_concurrent_streams(super::admission::STREAMS_PER_CONNECTION_MAX)
        .keep_alive_interval(Some(HTTP2_KEEP_ALIVE))
        .keep_alive_timeout(HTTP2_KEEP_ALIVE);
    let builder = Arc::new(builder);
    while let Some(conn) = conns.recv().await {
        let remote = conn.peer().remote;
        let service = TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        tokio::spawn(async move {
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(conn), service)
                .await
            {
                tracing::debug!(?remote, error = %e, "HTTP connection closed on an error");
            }
        });
    }
}
