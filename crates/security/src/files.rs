//! Reading certificates, private keys and CA bundles from PEM files.

use std::path::Path;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::TlsError;

/// Every certificate in a PEM file (a chain: the leaf first). At least one.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::file(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::file(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::file(path, "no CERTIFICATE block in the file"));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1). The file must not be readable by
/// every user of the machine: such a key is refused, with the mode in the message.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    refuse_world_readable(path)?;
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::file(path, e))
}

/// A CA bundle: every certificate in the file is a trusted root.
pub fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certificates(path)? {
        store
            .add(cert)
            .map_err(|e| TlsError::file(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(store)
}

/// Secrets (keys, key files) must not be world-readable, nor world-writable (anyone could
/// put their own key in place): `chmod 600` (or 640 with a group).
pub fn refuse_world_readable(path: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| TlsError::file(path, e))?
        .permissions()
        .mode();
    if mode & 0o004 != 0 {
        return Err(TlsError::file(
            path,
            format!(
                "holds a secret but is readable by every user (mode {:o}); chmod o-rw it",
                mode & 0o777
            ),
        ));
    }
    if mode & 0o002 != 0 {
        return Err(TlsError::file(
            path,
            format!(
                "holds a secret but is writable by every user (mode {:o}); chmod o-rw it",
                mode & 0o777
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn world_readable_keys_are_refused_and_private_ones_read() {
        let dir = tempfile::tempdir().unwrap();
        let pki = crate::dev_pki::DevPki::generate(&[1]).unwrap();
        let key = dir.path().join("node.key");
        std::fs::write(&key, &pki.nodes[0].key_pem).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = private_key(&key).unwrap_err().to_string();
        assert!(err.contains("readable by every user (mode 644)"), "{err}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o602)).unwrap();
        let err = private_key(&key).unwrap_err().to_string();
        assert!(err.contains("writable by every user (mode 602)"), "{err}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        private_key(&key).unwrap();
    }

    #[test]
    fn files_without_certificates_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "not pem").unwrap();
        let err = certificates(&path).unwrap_err().to_string();
        assert!(
            err.contains("empty.pem") && err.contains("no CERTIFICATE"),
            "{err}"
        );
        let err = roots(&dir.path().join("missing.pem"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.pem"), "{err}");
    }
}
