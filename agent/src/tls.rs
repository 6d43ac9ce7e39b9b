//! Trust anchors: the one loader of an extra PEM CA bundle, for both TLS clients the agent has
//! (the IdP client and the FlyteAdmin connection).

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::CertificateDer;

/// Why a CA bundle could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CaBundleError {
    /// The file could not be read.
    #[error("CA bundle {}: {source}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a PEM bundle.
    #[error("CA bundle {}: {source}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The PEM error.
        source: rustls_pki_types::pem::Error,
    },
    /// The file holds no certificate.
    #[error("CA bundle {}: no PEM certificates in it", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// The certificates of the PEM bundle at `path`: at least one, or an error naming the file.
pub fn load_ca_bundle(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaBundleError> {
    let pem = std::fs::read(path).map_err(|source| CaBundleError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| CaBundleError::Invalid {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(CaBundleError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_without_certificates_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not pem\n").unwrap();
        let e = load_ca_bundle(&path).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("CA bundle {}: no PEM certificates in it", path.display())
        );
        let missing = load_ca_bundle(&dir.path().join("none.pem")).unwrap_err();
        assert!(
            matches!(missing, CaBundleError::Unreadable { .. }),
            "{missing}"
        );
    }

    #[test]
    fn every_certificate_of_a_bundle_is_read() {
        let cert = |name: &str| {
            rcgen::generate_simple_self_signed(vec![name.to_string()])
                .unwrap()
                .cert
                .pem()
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, cert("a.example") + &cert("b.example")).unwrap();
        assert_eq!(load_ca_bundle(&path).unwrap().len(), 2);
    }
}
