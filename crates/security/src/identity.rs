//! Which node a certificate belongs to.
//!
//! A node certificate names its node id in a URI subject alternative name,
//! `urn:millrace:node:<id>` (beside the DNS names and IPs it is reached at). Internal services
//! answer a TLS peer only when its certificate, verified against the cluster CA, names a member.

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The URI prefix before the node id.
pub const NODE_URI_PREFIX: &str = "urn:millrace:node:";

/// The URI subject alternative name of node `id`.
pub fn node_uri(id: u64) -> String {
    format!("{NODE_URI_PREFIX}{id}")
}

/// The node id the certificate names, if it names exactly one.
pub fn node_id(cert: &CertificateDer<'_>) -> Option<u64> {
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let mut ids = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => uri.strip_prefix(NODE_URI_PREFIX)?.parse::<u64>().ok(),
            _ => None,
        });
    let id = ids.next()?;
    ids.next().is_none().then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_certificates_name_their_node_and_client_ones_none() {
        let pki = crate::dev_pki::DevPki::generate(&[7]).unwrap();
        let der = crate::dev_pki::der_of(&pki.nodes[0].cert_pem);
        assert_eq!(node_id(&der), Some(7));
        let ca = crate::dev_pki::der_of(&pki.ca_pem);
        assert_eq!(node_id(&ca), None);
    }
}
