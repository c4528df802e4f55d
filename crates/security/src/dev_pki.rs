//! A throwaway certificate authority and node certificates (rcgen), for `millrace dev --tls`
//! and tests. Production clusters bring their own (see docs/security.md for what a node
//! certificate must hold: its DNS names or IPs, and the URI `urn:millrace:node:<id>`).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::TlsError;

/// Names every dev certificate is valid for: the loopback addresses dev clusters listen on.
pub const DEV_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// A node's certificate and key, PEM.
#[derive(Clone)]
pub struct NodeCert {
    pub node_id: u64,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A fresh CA and one certificate per node.
pub struct DevPki {
    pub ca_pem: String,
    pub nodes: Vec<NodeCert>,
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// Where [`DevPki::write`] put the files.
pub struct DevPkiPaths {
    pub ca: PathBuf,
    /// (node id, certificate, key) per node.
    pub nodes: Vec<(u64, PathBuf, PathBuf)>,
}

fn rcgen_error(e: rcgen::Error) -> TlsError {
    TlsError::Config(format!("generating a certificate: {e}"))
}

impl DevPki {
    /// A new CA ("Millrace dev CA") and a certificate for each node id, valid for
    /// [`DEV_HOSTS`].
    pub fn generate(node_ids: &[u64]) -> Result<DevPki, TlsError> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "Millrace dev CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().map_err(rcgen_error)?;
        let ca = CertifiedIssuer::self_signed(params, key).map_err(rcgen_error)?;
        let mut pki = DevPki {
            ca_pem: ca.pem(),
            nodes: Vec::new(),
            ca,
        };
        for &id in node_ids {
            let cert = pki.issue_node(id, &DEV_HOSTS)?;
            pki.nodes.push(cert);
        }
        Ok(pki)
    }

    /// A new certificate for node `id` from this CA, valid for `hosts` (names or IPs), usable
    /// both to serve and to connect to peers.
    pub fn issue_node(&self, id: u64, hosts: &[&str]) -> Result<NodeCert, TlsError> {
        let mut params =
            CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
                .map_err(rcgen_error)?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("millrace node {id}"));
        let uri = crate::identity::node_uri(id)
            .try_into()
            .map_err(rcgen_error)?;
        params.subject_alt_names.push(SanType::URI(uri));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().map_err(rcgen_error)?;
        let cert = params.signed_by(&key, &self.ca).map_err(rcgen_error)?;
        Ok(NodeCert {
            node_id: id,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes `ca.pem`, and `node-<id>.pem` / `node-<id>.key` (mode 0600) for each node.
    pub fn write(&self, dir: &Path) -> Result<DevPkiPaths, TlsError> {
        std::fs::create_dir_all(dir).map_err(|e| TlsError::file(dir, e))?;
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, &self.ca_pem).map_err(|e| TlsError::file(&ca, e))?;
        let mut nodes = Vec::new();
        for n in &self.nodes {
            let (cert, key) = n.write(dir)?;
            nodes.push((n.node_id, cert, key));
        }
        Ok(DevPkiPaths { ca, nodes })
    }
}

impl NodeCert {
    /// Writes `node-<id>.pem` and `node-<id>.key` (mode 0600) into `dir`, replacing them.
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf), TlsError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let cert = dir.join(format!("node-{}.pem", self.node_id));
        let key = dir.join(format!("node-{}.key", self.node_id));
        std::fs::write(&cert, &self.cert_pem).map_err(|e| TlsError::file(&cert, e))?;
        let _ = std::fs::remove_file(&key);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key)
            .map_err(|e| TlsError::file(&key, e))?;
        f.write_all(self.key_pem.as_bytes())
            .map_err(|e| TlsError::file(&key, e))?;
        Ok((cert, key))
    }
}

/// The DER of the first certificate in a PEM text (tests and tools).
pub fn der_of(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("a PEM certificate")
}
