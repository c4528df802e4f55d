//! A node's TLS settings, rebuilt when the files behind them change.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ServerConfig};

use crate::{files, provider, TlsError, ALPN_SERVER};

/// The files a TLS node reads: its certificate chain and key (served on both ports and
/// presented to peers) and the cluster CA (which peers' certificates must chain to, and
/// which verifies the peers this node connects to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// What was last read from each file (modification time, length, inode): a change in any
/// means read again.
type Stamps = Vec<Option<(SystemTime, u64, u64)>>;

/// A node's current TLS configuration. New connections (both ways) use the newest one;
/// connections already open keep the session they made.
pub struct NodeTls {
    files: TlsFiles,
    /// The node id the certificate must name (see [`NodeTls::load_for_node`]).
    node_id: Option<u64>,
    current: ArcSwap<Configs>,
    stamps: Mutex<Stamps>,
}

struct Configs {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl NodeTls {
    /// Reads the files; any problem (missing file, bad PEM, a world-readable key, a key that
    /// does not match the certificate) is an error naming the file.
    pub fn load(files: TlsFiles) -> Result<Arc<NodeTls>, TlsError> {
        NodeTls::load_checked(files, None)
    }

    /// [`NodeTls::load`] for node `node_id`: its certificate (now and after every reload) must
    /// name that node (URI SAN `urn:millrace:node:<id>`), else peers would refuse it.
    pub fn load_for_node(files: TlsFiles, node_id: u64) -> Result<Arc<NodeTls>, TlsError> {
        NodeTls::load_checked(files, Some(node_id))
    }

    fn load_checked(files: TlsFiles, node_id: Option<u64>) -> Result<Arc<NodeTls>, TlsError> {
        let stamps = stamps(&files);
        let configs = build(&files, node_id)?;
        Ok(Arc::new(NodeTls {
            files,
            node_id,
            current: ArcSwap::from_pointee(configs),
            stamps: Mutex::new(stamps),
        }))
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The configuration to accept a connection with.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.current.load().server.clone()
    }

    /// The configuration to connect to a peer with (presents this node's certificate).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.current.load().client.clone()
    }

    /// Reads the files again if any changed since the last read. `Ok(true)`: new settings are
    /// in use. On an error the old settings stay (a half-written file during a rotation is
    /// retried on the next call).
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamps(&self.files);
        if *self.stamps.lock().expect("tls stamps lock poisoned") == now {
            return Ok(false);
        }
        self.reload_with(now)?;
        Ok(true)
    }

    /// Reads the files again, changed or not (SIGHUP).
    pub fn reload(&self) -> Result<(), TlsError> {
        self.reload_with(stamps(&self.files))
    }

    fn reload_with(&self, now: Stamps) -> Result<(), TlsError> {
        let configs = build(&self.files, self.node_id)?;
        self.current.store(Arc::new(configs));
        *self.stamps.lock().expect("tls stamps lock poisoned") = now;
        Ok(())
    }
}

impl crate::connector::ClientConfigSource for NodeTls {
    fn client_config(&self) -> Arc<ClientConfig> {
        NodeTls::client_config(self)
    }
}

fn stamps(files: &TlsFiles) -> Stamps {
    use std::os::unix::fs::MetadataExt;
    [&files.cert, &files.key, &files.ca]
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len(), m.ino()))
        })
        .collect()
}

fn build(files: &TlsFiles, node_id: Option<u64>) -> Result<Configs, TlsError> {
    let chain = files::certificates(&files.cert)?;
    if let Some(id) = node_id {
        match crate::identity::node_id(&chain[0]) {
            Some(named) if named == id => {}
            Some(named) => {
                return Err(TlsError::file(
                    &files.cert,
                    format!("names node {named}, not this node ({id}): peers would refuse it"),
                ))
            }
            None => {
                return Err(TlsError::file(
                    &files.cert,
                    format!(
                        "names no node: a node certificate needs the URI SAN {}",
                        crate::identity::node_uri(id)
                    ),
                ))
            }
        }
    }
    let key = files::private_key(&files.key)?;
    let roots = Arc::new(files::roots(&files.ca)?);
    // Clients of the public APIs present no certificate; peers present theirs, checked
    // against the cluster CA (and their node id then checked by the internal services).
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::file(&files.ca, format!("cluster CA: {e}")))?;
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| {
            TlsError::file(
                &files.key,
                format!("does not fit the certificate {}: {e}", files.cert.display()),
            )
        })?;
    server.alpn_protocols = ALPN_SERVER.iter().map(|p| p.to_vec()).collect();
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| TlsError::file(&files.key, e))?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Configs {
        server: Arc::new(server),
        client: Arc::new(client),
    })
}
