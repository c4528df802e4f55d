//! The accept loop both servers (gRPC and HTTP) share.
//!
//! TCP connections are accepted in one task; with TLS each handshake runs in its own task
//! under a deadline, so a client that connects and never speaks holds neither the accept loop
//! nor a server slot. Finished connections are handed over on a channel, each with the
//! [`PeerInfo`] its certificate proves.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::NodeTls;

/// By default a client must finish its TLS handshake (without TLS: send its first bytes)
/// within this long after connecting; see [`AcceptLimits`].
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What one port lets connections hold.
#[derive(Debug, Clone, Copy)]
pub struct AcceptLimits {
    /// Connections open at once; more are closed at once (and counted).
    pub max_connections: usize,
    /// A new connection must finish its TLS handshake — without TLS, send its first bytes —
    /// within this time, else it is closed (and counted): a connection that never speaks
    /// does not hold a slot.
    pub handshake_timeout: Duration,
}
/// Connections handed over but not yet taken by the server.
const READY_QUEUE: usize = 128;

/// Who is at the other end of a connection.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    /// The connection is TLS.
    pub tls: bool,
    /// The node id in the client certificate the peer presented, verified against the
    /// cluster CA (None: no certificate, or one that names no node).
    pub node_id: Option<u64>,
}

/// An accepted connection: plain TCP or TLS over TCP.
pub struct Conn {
    io: Io,
    info: PeerInfo,
    _slot: OwnedSemaphorePermit,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Conn {
    pub fn peer(&self) -> &PeerInfo {
        &self.info
    }
}

/// What the accept loop counts.
#[derive(Debug, Default)]
pub struct AcceptCounters {
    pub accepted: AtomicU64,
    /// Handshakes that failed (plaintext on a TLS port, an untrusted client certificate, ...).
    pub handshakes_failed: AtomicU64,
    /// Connections that did not finish their handshake (or, without TLS, send anything)
    /// within [`AcceptLimits::handshake_timeout`].
    pub handshakes_timed_out: AtomicU64,
    /// Connections closed at once because the node held its maximum.
    pub refused_over_limit: AtomicU64,
}

/// Accepts connections on `listener` (with TLS when `tls` is set) within `limits`, until the
/// receiver is dropped.
pub fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<NodeTls>>,
    limits: AcceptLimits,
    counters: Arc<AcceptCounters>,
) -> mpsc::Receiver<Conn> {
    let (tx, rx) = mpsc::channel(READY_QUEUE);
    let max_connections = limits.max_connections;
    let slots = Arc::new(Semaphore::new(max_connections));
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: back off rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                counters.refused_over_limit.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%remote, max_connections, "connection refused: node at its connection limit");
                continue;
            };
            counters.accepted.fetch_add(1, Ordering::Relaxed);
            // Nagle's algorithm plus delayed ACKs would add ~40 ms to small round trips.
            let _ = tcp.set_nodelay(true);
            let mut info = PeerInfo {
                remote: Some(remote),
                ..PeerInfo::default()
            };
            let tx = tx.clone();
            let counters = counters.clone();
            let Some(tls) = tls.clone() else {
                tokio::spawn(async move {
                    // Handed over once it has spoken: its first bytes wait in the socket.
                    let mut first = [0u8; 1];
                    match tokio::time::timeout(limits.handshake_timeout, tcp.peek(&mut first)).await
                    {
                        Ok(Ok(n)) if n > 0 => {}
                        Ok(_) => return,
                        Err(_) => {
                            counters
                                .handshakes_timed_out
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%remote, "connection closed: nothing sent in time");
                            return;
                        }
                    }
                    let _ = tx
                        .send(Conn {
                            io: Io::Plain(tcp),
                            info,
                            _slot: slot,
                        })
                        .await;
                });
                continue;
            };
            tokio::spawn(async move {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
                let stream = match tokio::time::timeout(
                    limits.handshake_timeout,
                    acceptor.accept(tcp),
                )
                .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        counters.handshakes_failed.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%remote, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        counters
                            .handshakes_timed_out
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%remote, "TLS handshake timed out");
                        return;
                    }
                };
                info.tls = true;
                info.node_id = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(crate::identity::node_id);
                let _ = tx
                    .send(Conn {
                        io: Io::Tls(Box::new(stream)),
                        info,
                        _slot: slot,
                    })
                    .await;
            });
        }
    });
    rx
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The connections of an [`accept_loop`] as the stream `tonic`'s `serve_with_incoming` takes.
pub fn into_stream(
    rx: mpsc::Receiver<Conn>,
) -> impl futures_core::Stream<Item = Result<Conn, io::Error>> + Send + 'static {
    ConnStream(rx)
}

struct ConnStream(mpsc::Receiver<Conn>);

impl futures_core::Stream for ConnStream {
    type Item = Result<Conn, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|c| c.map(Ok))
    }
}
