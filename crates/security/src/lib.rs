//! Millrace's transport security (issue 15): TLS on both ports and between nodes.
//!
//! - [`files`]: certificates, keys and CAs read from PEM files (a world-readable key is refused).
//! - [`NodeTls`]: a node's TLS settings — the server side of both ports and the client side of
//!   its connections to peers — rebuilt from the files whenever they change, without dropping
//!   the connections already open.
//! - [`incoming`]: the accept loop both servers share: TCP, then (with TLS) a bounded handshake
//!   off the accept path; each connection carries the [`PeerInfo`] its certificate proves.
//! - [`connector`]: TLS for outgoing gRPC channels (peers, and the client library).
//! - [`identity`]: the node id a certificate names (`urn:millrace:node:<id>`).
//! - [`access_sig`]: access-key signatures on the public gRPC API (client and server side).
//! - [`peer_auth`]: the cluster secret — signed internal requests when there is no TLS.
//! - [`dev_pki`]: a throwaway CA and node certificates for `millrace dev --tls` and tests.
//! - [`policy`]: permissions — what an access key may do on which streams (deny wins).
//! - [`resource_policy`]: Kinesis resource policies (IAM documents on stream and consumer ARNs).
//!
//! Everything uses rustls with the *ring* provider, named explicitly (never a process-wide
//! default), so no OpenSSL and no surprise when another crate enables a second provider.

pub mod access_sig;
pub mod connector;
pub mod dev_pki;
pub mod files;
pub mod identity;
pub mod incoming;
mod node_tls;
pub mod peer_auth;
pub mod policy;
pub mod resource_policy;

use std::sync::Arc;

pub use connector::{ClientTls, TlsConnector};
pub use incoming::{Conn, PeerInfo};
pub use node_tls::{NodeTls, TlsFiles};

/// ALPN protocols a Millrace port offers: HTTP/2 (gRPC, and Kinesis clients that speak it)
/// and HTTP/1.1 (most Kinesis SDKs).
pub const ALPN_SERVER: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Everything that can go wrong setting TLS up. Each names the file or the setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("TLS settings: {0}")]
    Config(String),
}

impl TlsError {
    pub(crate) fn file(path: &std::path::Path, message: impl std::fmt::Display) -> TlsError {
        TlsError::File {
            path: path.display().to_string(),
            message: message.to_string(),
        }
    }
}

/// The cryptography every TLS object here is built with.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Wall-clock milliseconds since the Unix epoch (what signatures are dated with).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
