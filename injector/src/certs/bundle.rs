//! The certificate bundle itself: generating a CA and serving certificate, and deciding whether a
//! stored bundle can be kept. Pure (the clock is an argument), so both the directory and the
//! Kubernetes mode share one policy and it is table-tested here.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// File (and Secret data) key of the CA certificate.
pub(crate) const CA_CRT: &str = "ca.crt";
/// File (and Secret data) key of the serving certificate.
pub(crate) const TLS_CRT: &str = "tls.crt";
/// File (and Secret data) key of the serving certificate's private key.
pub(crate) const TLS_KEY: &str = "tls.key";

/// How far back `notBefore` is set, so an API server whose clock lags ours a little still
/// accepts a certificate minted a moment ago.
const BACKDATE: Duration = Duration::from_secs(3600);

/// The three PEM documents, as stored in the directory or the Secret.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Bundle {
    /// The self-signed CA certificate (the webhook's `caBundle`).
    pub(crate) ca_crt: Vec<u8>,
    /// The serving certificate, signed by the CA.
    pub(crate) tls_crt: Vec<u8>,
    /// The serving certificate's private key (PKCS#8).
    pub(crate) tls_key: Vec<u8>,
}

// Hand-written so that the key can never reach a log line through `{:?}`.
impl fmt::Debug for Bundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bundle")
            .field("ca_crt", &format_args!("{} bytes", self.ca_crt.len()))
            .field("tls_crt", &format_args!("{} bytes", self.tls_crt.len()))
            .field("tls_key", &"<redacted>")
            .finish()
    }
}

/// What was found where a bundle is kept: each part may be missing on its own.
#[derive(Default)]
pub(crate) struct Stored {
    /// `ca.crt`, if present.
    pub(crate) ca_crt: Option<Vec<u8>>,
    /// `tls.crt`, if present.
    pub(crate) tls_crt: Option<Vec<u8>>,
    /// `tls.key`, if present.
    pub(crate) tls_key: Option<Vec<u8>>,
}

impl Stored {
    /// True when none of the three parts exists (a first run, not a renewal).
    pub(crate) fn is_empty(&self) -> bool {
        self.ca_crt.is_none() && self.tls_crt.is_none() && self.tls_key.is_none()
    }
}

/// Why a stored bundle cannot be kept; the text is the "renewed (…)" reason in the log.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// One of the three parts is absent.
    #[error("{0} is missing")]
    Missing(&'static str),
    /// A part is not a PEM document of the expected kind.
    #[error("{file} does not parse: {why}")]
    Unparsable {
        /// Which part.
        file: &'static str,
        /// The parser's complaint (never the content).
        why: String,
    },
    /// ca.crt is not a CA certificate.
    #[error("ca.crt is not a CA certificate (basicConstraints CA:true missing)")]
    NotCa,
    /// tls.key is not the key of tls.crt.
    #[error("tls.key does not match tls.crt")]
    KeyMismatch,
    /// tls.crt does not verify against ca.crt as a server certificate for `name`.
    #[error("tls.crt is not a valid serving certificate from ca.crt for {name}: {why}")]
    Untrusted {
        /// The DNS name that was checked.
        name: String,
        /// The verifier's reason.
        why: String,
    },
    /// A certificate expires within the renewal window (or already has).
    #[error("{file} expires at {not_after}, within renew-before {renew_before}")]
    Expiring {
        /// Which certificate.
        file: &'static str,
        /// Its notAfter, RFC 3339.
        not_after: String,
        /// The renewal window, humantime.
        renew_before: String,
    },
}

/// The DNS names the serving certificate must cover, in the order they are written.
pub(crate) fn dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// Mints a new CA and a serving certificate for `names` (at least one), valid from about `now`
/// (seconds since the Unix epoch) for `valid_for`.
///
/// The CA's key is dropped when this returns: it is stored nowhere, so nothing but this run can
/// mint certificates the API server will trust for the webhook. Renewal therefore replaces the
/// CA and the serving certificate together (and the `caBundle` with them).
pub(crate) fn generate(
    names: &[String],
    now: Duration,
    valid_for: Duration,
) -> Result<Bundle, rcgen::Error> {
    // rcgen's dates are `time::OffsetDateTime`; building them from the epoch keeps that crate out
    // of our dependencies. X.509 times have whole seconds.
    let at = |since_epoch: Duration| {
        rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(since_epoch.as_secs())
    };
    let not_before = at(now.saturating_sub(BACKDATE));
    let not_after = at(now + valid_for);
    let service_fqdn = names.get(2).or(names.first()).cloned().unwrap_or_default();

    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, format!("{service_fqdn} webhook CA"));
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut leaf = CertificateParams::new(names.to_vec())?;
    leaf.distinguished_name = DistinguishedName::new();
    leaf.distinguished_name
        .push(DnType::CommonName, service_fqdn.clone());
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = not_before;
    leaf.not_after = not_after;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;

    Ok(Bundle {
        ca_crt: ca_cert.pem().into_bytes(),
        tls_crt: leaf_cert.pem().into_bytes(),
        tls_key: leaf_key.serialize_pem().into_bytes(),
    })
}

/// Decides whether `stored` can be kept: all three parts present and parsing, the key belonging
/// to tls.crt, tls.crt chaining to ca.crt as a server certificate for every one of `names`, and
/// neither certificate expiring within `renew_before` of `now` (seconds since the Unix epoch).
pub(crate) fn check(
    stored: &Stored,
    names: &[String],
    now: Duration,
    renew_before: Duration,
) -> Result<Bundle, Invalid> {
    let ca_pem = stored.ca_crt.as_ref().ok_or(Invalid::Missing(CA_CRT))?;
    let crt_pem = stored.tls_crt.as_ref().ok_or(Invalid::Missing(TLS_CRT))?;
    let key_pem = stored.tls_key.as_ref().ok_or(Invalid::Missing(TLS_KEY))?;

    let ca_der = cert_der(CA_CRT, ca_pem)?;
    let crt_der = cert_der(TLS_CRT, crt_pem)?;
    let ca = parse_x509(CA_CRT, &ca_der)?;
    let crt = parse_x509(TLS_CRT, &crt_der)?;
    let key = std::str::from_utf8(key_pem)
        .map_err(unparsable(TLS_KEY))
        .and_then(|pem| KeyPair::from_pem(pem).map_err(unparsable(TLS_KEY)))?;

    if !ca.is_ca() {
        return Err(Invalid::NotCa);
    }
    if key.der_bytes() != crt.public_key().subject_public_key.data.as_ref() {
        return Err(Invalid::KeyMismatch);
    }

    // The same verification a TLS client trusting only ca.crt performs (signature, validity
    // now, serverAuth, name), once per name the API server may use to reach the service.
    let mut roots = RootCertStore::empty();
    roots.add(ca_der.clone()).map_err(unparsable(CA_CRT))?;
    let verifier = WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(unparsable(CA_CRT))?;
    let unix_now = UnixTime::since_unix_epoch(now);
    for name in names {
        let server_name = ServerName::try_from(name.as_str()).map_err(untrusted(name))?;
        verifier
            .verify_server_cert(&crt_der, &[], &server_name, &[], unix_now)
            .map_err(untrusted(name))?;
    }

    let deadline = now.as_secs().saturating_add(renew_before.as_secs());
    for (file, cert) in [(CA_CRT, &ca), (TLS_CRT, &crt)] {
        let not_after = cert.validity().not_after;
        if u64::try_from(not_after.timestamp()).unwrap_or(0) <= deadline {
            return Err(Invalid::Expiring {
                file,
                not_after: not_after.to_string(),
                renew_before: super::show(renew_before),
            });
        }
    }

    Ok(Bundle {
        ca_crt: ca_pem.clone(),
        tls_crt: crt_pem.clone(),
        tls_key: key_pem.clone(),
    })
}

/// The first (and only expected) certificate of a PEM file.
fn cert_der(file: &'static str, pem: &[u8]) -> Result<CertificateDer<'static>, Invalid> {
    CertificateDer::from_pem_slice(pem).map_err(unparsable(file))
}

fn parse_x509<'a>(
    file: &'static str,
    der: &'a CertificateDer<'_>,
) -> Result<x509_parser::certificate::X509Certificate<'a>, Invalid> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(unparsable(file))
}

/// The error of `file` when it does not parse, for the parser's complaint.
fn unparsable<E: fmt::Display>(file: &'static str) -> impl FnOnce(E) -> Invalid {
    move |e| Invalid::Unparsable {
        file,
        why: e.to_string(),
    }
}

/// The error of tls.crt when it is not trusted for `name`, for the verifier's reason.
fn untrusted<E: fmt::Display>(name: &str) -> impl FnOnce(E) -> Invalid + '_ {
    move |e| Invalid::Untrusted {
        name: name.to_owned(),
        why: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn now() -> Duration {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
    }

    fn stored(b: &Bundle) -> Stored {
        Stored {
            ca_crt: Some(b.ca_crt.clone()),
            tls_crt: Some(b.tls_crt.clone()),
            tls_key: Some(b.tls_key.clone()),
        }
    }

    fn names() -> Vec<String> {
        dns_names("flyte-auth-injector", "flyte")
    }

    #[test]
    fn fresh_bundle_is_kept() {
        let b = generate(&names(), now(), 3650 * DAY).unwrap();
        assert_eq!(check(&stored(&b), &names(), now(), 30 * DAY), Ok(b));
    }

    #[test]
    fn debug_redacts_the_key() {
        let b = generate(&names(), now(), DAY).unwrap();
        let shown = format!("{b:?}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(!shown.contains("PRIVATE"), "{shown}");
    }

    #[test]
    fn reasons_to_renew() {
        let n = names();
        let good = generate(&n, now(), 3650 * DAY).unwrap();
        let other = generate(&n, now(), 3650 * DAY).unwrap();
        let other_ns = generate(&dns_names("flyte-auth-injector", "x"), now(), 3650 * DAY).unwrap();
        let short = generate(&n, now(), DAY).unwrap();

        type Case = (&'static str, Box<dyn Fn(&mut Stored)>, &'static str);
        let cases: Vec<Case> = vec![
            ("no ca", Box::new(|s| s.ca_crt = None), "ca.crt is missing"),
            (
                "no crt",
                Box::new(|s| s.tls_crt = None),
                "tls.crt is missing",
            ),
            (
                "no key",
                Box::new(|s| s.tls_key = None),
                "tls.key is missing",
            ),
            (
                "garbage crt",
                Box::new(|s| s.tls_crt = Some(b"garbage".to_vec())),
                "tls.crt does not parse",
            ),
            (
                "garbage key",
                Box::new(|s| s.tls_key = Some(b"-----BEGIN PRIVATE KEY-----\n".to_vec())),
                "tls.key does not parse",
            ),
            (
                "key of another cert",
                {
                    let k = other.tls_key.clone();
                    Box::new(move |s| s.tls_key = Some(k.clone()))
                },
                "tls.key does not match tls.crt",
            ),
            (
                "crt and key from another CA",
                {
                    let (c, k) = (other.tls_crt.clone(), other.tls_key.clone());
                    Box::new(move |s| {
                        s.tls_crt = Some(c.clone());
                        s.tls_key = Some(k.clone());
                    })
                },
                "tls.crt is not a valid serving certificate from ca.crt",
            ),
            (
                "leaf as its own CA",
                {
                    let c = good.tls_crt.clone();
                    Box::new(move |s| s.ca_crt = Some(c.clone()))
                },
                "ca.crt is not a CA certificate",
            ),
            (
                "names of another namespace",
                {
                    let o = other_ns.clone();
                    Box::new(move |s| *s = stored(&o))
                },
                "for flyte-auth-injector.flyte:",
            ),
            (
                "expires within renew-before",
                {
                    let o = short.clone();
                    Box::new(move |s| *s = stored(&o))
                },
                "ca.crt expires at",
            ),
        ];
        for (what, change, want) in cases {
            let mut s = stored(&good);
            change(&mut s);
            let got = check(&s, &n, now(), 30 * DAY).map(|_| ()).unwrap_err();
            assert!(got.to_string().contains(want), "{what}: {got}");
        }
    }

    #[test]
    fn expired_is_untrusted() {
        let n = names();
        let b = generate(&n, now(), DAY).unwrap();
        let later = now() + 2 * DAY;
        let got = check(&stored(&b), &n, later, Duration::ZERO).unwrap_err();
        assert!(matches!(got, Invalid::Untrusted { .. }), "{got}");
    }
}
