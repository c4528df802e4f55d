//! TLS for outgoing gRPC channels: a connector `tonic`'s `Endpoint::connect_with_connector`
//! takes. The node uses it towards peers (presenting its own certificate, re-read on each new
//! connection so a rotation takes effect); the client library towards the cluster.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use crate::{files, provider, TlsError};

/// Where a connector gets the TLS configuration of its next connection.
pub trait ClientConfigSource: Send + Sync + 'static {
    fn client_config(&self) -> Arc<ClientConfig>;
}

/// The client library's TLS: which servers to trust.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
}

impl ClientTls {
    /// Trust the servers whose certificates chain to the CA(s) in `ca_file` (the cluster CA).
    pub fn with_ca_file(ca_file: &Path) -> Result<ClientTls, TlsError> {
        let roots = files::roots(ca_file)?;
        ClientTls::with_roots(roots)
    }

    /// Trust what this machine trusts (its system CA store).
    pub fn with_system_roots() -> Result<ClientTls, TlsError> {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = rustls::RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(TlsError::Config(
                "no system CA certificates found; name the cluster CA (--ca-cert / MILLRACE_CA_CERT)"
                    .into(),
            ));
        }
        ClientTls::with_roots(roots)
    }

    fn with_roots(roots: rustls::RootCertStore) -> Result<ClientTls, TlsError> {
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(ClientTls {
            config: Arc::new(config),
        })
    }

    /// The same trust for HTTP/1.1 connections (ALPN `http/1.1`: the Kinesis API, status
    /// pages), where gRPC needs HTTP/2.
    pub fn http1(&self) -> ClientTls {
        let mut config = (*self.config).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        ClientTls {
            config: Arc::new(config),
        }
    }

    pub fn connector(&self) -> TlsConnector {
        TlsConnector::new(Arc::new(self.clone()))
    }
}

impl ClientConfigSource for ClientTls {
    fn client_config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }
}

/// Connects over TCP to the URI's host and port, then TLS, verifying the server's certificate
/// for that host (a name or an IP).
#[derive(Clone)]
pub struct TlsConnector {
    source: Arc<dyn ClientConfigSource>,
}

impl TlsConnector {
    pub fn new(source: Arc<dyn ClientConfigSource>) -> TlsConnector {
        TlsConnector { source }
    }
}

type Connecting = Pin<
    Box<
        dyn Future<
                Output = Result<
                    TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
                    std::io::Error,
                >,
            > + Send,
    >,
>;

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Connecting {
        let config = self.source.client_config();
        Box::pin(async move {
            let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
            let host = uri
                .host()
                .ok_or_else(|| invalid(format!("no host in {uri}")))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let name = ServerName::try_from(host.clone())
                .map_err(|e| invalid(format!("{host:?} is not a server name: {e}")))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}
