//! A rustls client configuration trusting only a given CA, shared by the HTTPS tests and the
//! benchmark.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject as _;

/// HTTP/1.1 over TLS 1.2/1.3, trusting only the certificates in `ca_pem`. A fresh config each
/// time, so no TLS session is resumed across callers.
pub fn client_config(ca_pem: &str) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}
