//! The serving certificate: loaded from PEM files and re-read when they change.
//!
//! [`CertStore`] is the rustls certificate resolver. It holds the certificate and key currently
//! served; [`CertStore::watch`] re-reads both files every `reload_interval` and swaps in a new
//! pair only when both parse and the key belongs to the certificate, so a half-written or broken
//! replacement keeps the old certificate serving (and is logged and counted). The paths are
//! re-opened on every check because cert-manager and the kubelet rotate a mounted Secret by
//! swapping a symlink, which a held file descriptor or an inotify watch on the file would miss.
//!
//! [`TlsListener`] accepts TCP connections for the agent's connection loop and hands each one
//! over still unencrypted: the handshake runs inside the connection's own task, bounded by a
//! timeout, so a client that never finishes its hello cannot hold up accepting others.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Why a certificate and key cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("cannot read {what} file {path}: {source}")]
    Read {
        /// `certificate` or `private key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The certificate file is not a PEM certificate chain.
    #[error("certificate file {path}: {problem}")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The key file holds no usable private key.
    #[error("private key file {path}: {problem}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// Both files parse, but they are not a pair.
    #[error("the private key in {key} does not belong to the certificate in {cert}: {problem}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls found.
        problem: String,
    },
    /// rustls refused the server configuration.
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
}

/// The crypto provider for both the server and key loading (explicit, so no process-wide
/// default has to be installed and no second provider linked in by a dependency can make the
/// choice ambiguous).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A checked certificate and key, with the certificate's not-after.
struct Loaded {
    key: Arc<CertifiedKey>,
    not_after: i64,
}

/// Parses a PEM chain and key read from `cert_path` and `key_path` and checks they are a pair.
fn parse_pair(
    cert_path: &Path,
    cert_pem: &[u8],
    key_path: &Path,
    key_pem: &[u8],
) -> Result<Loaded, TlsError> {
    let cert_err = |problem: String| TlsError::Certificate {
        path: cert_path.to_path_buf(),
        problem,
    };
    let key_err = |problem: String| TlsError::Key {
        path: key_path.to_path_buf(),
        problem,
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(format!("not a PEM certificate chain: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(cert_err("holds no PEM CERTIFICATE block".into()));
    };
    let not_after = match x509_parser::parse_x509_certificate(leaf) {
        Ok((_, cert)) => cert.validity().not_after.timestamp(),
        Err(e) => return Err(cert_err(format!("the first certificate is not X.509: {e}"))),
    };
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            key_err("holds no PEM PRIVATE KEY block (PKCS#8, PKCS#1 or SEC1)".into())
        }
        e => key_err(format!("not a PEM private key: {e}")),
    })?;
    let provider = provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| key_err(format!("unusable private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        // ring exposes every key's public half, so "unknown" cannot happen; if it ever did,
        // the handshake itself would still fail loudly for a wrong key.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => {
            return Err(TlsError::Mismatch {
                cert: cert_path.to_path_buf(),
                key: key_path.to_path_buf(),
                problem: e.to_string(),
            })
        }
    }
    Ok(Loaded {
        key: Arc::new(certified),
        not_after,
    })
}

async fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    tokio::fs::read(path)
        .await
        .map_err(|source| TlsError::Read {
            what,
            path: path.to_path_buf(),
            source,
        })
}

/// Both files' contents, certificate first.
async fn read_pair(cert_path: &Path, key_path: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    Ok((
        read("certificate", cert_path).await?,
        read("private key", key_path).await?,
    ))
}

/// The contents last read from the two files, so an unchanged pair is not parsed again and a
/// bad one is reported once, not on every check.
type Seen = (Vec<u8>, Vec<u8>);

/// The serving certificate and key, re-read from their files when they change.
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    seen: Mutex<Seen>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material.
        f.debug_struct("CertStore")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// Loads the pair at `cert_path` and `key_path`; an error names the file and the problem.
    pub async fn load(
        cert_path: &Path,
        key_path: &Path,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, TlsError> {
        let (cert_pem, key_pem) = read_pair(cert_path, key_path).await?;
        let loaded = parse_pair(cert_path, &cert_pem, key_path, &key_pem)?;
        metrics.certificate_expiry(loaded.not_after);
        Ok(Arc::new(Self {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            current: RwLock::new(loaded.key),
            seen: Mutex::new((cert_pem, key_pem)),
            metrics,
        }))
    }

    /// A rustls server configuration serving this store's certificate: TLS 1.2 and 1.3, ALPN
    /// `h2` and `http/1.1` (the API server speaks either to webhooks).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Re-reads the files every `interval` until `shutdown`, swapping in a changed pair when it
    /// is valid.
    pub async fn watch(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate; the files were just read.
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if let Err(e) = self.check().await {
                tracing::error!(error = %e, "serving certificate not reloaded; still serving the previous one");
            }
        }
    }

    /// One check: reads both files and, if either changed, swaps in the new pair when valid.
    async fn check(&self) -> Result<(), TlsError> {
        // A missing file mid-rotation is an error for this check only: the next one retries.
        let (cert_pem, key_pem) = read_pair(&self.cert_path, &self.key_path).await?;
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if seen.0 == cert_pem && seen.1 == key_pem {
                return Ok(());
            }
            *seen = (cert_pem.clone(), key_pem.clone());
        }
        match parse_pair(&self.cert_path, &cert_pem, &self.key_path, &key_pem) {
            Ok(loaded) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = loaded.key;
                self.metrics.certificate_expiry(loaded.not_after);
                self.metrics.reload(true);
                tracing::info!(
                    cert = %self.cert_path.display(),
                    not_after = loaded.not_after,
                    "serving certificate reloaded"
                );
                Ok(())
            }
            Err(e) => {
                self.metrics.reload(false);
                Err(e)
            }
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// A TCP listener whose connections are TLS, handshaken in the connection's own task.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    handshake_timeout: Duration,
}

impl TlsListener {
    /// TLS with `config` on `tcp`; a handshake not done within `handshake_timeout` is dropped.
    pub fn new(
        tcp: TcpListener,
        config: Arc<rustls::ServerConfig>,
        handshake_timeout: Duration,
    ) -> Self {
        Self {
            tcp,
            acceptor: tokio_rustls::TlsAcceptor::from(config),
            handshake_timeout,
        }
    }
}

impl flyte_auth_agent::http::Accept for TlsListener {
    type Io = TlsConn;

    async fn accept(&self) -> io::Result<TlsConn> {
        let tcp = flyte_auth_agent::http::Accept::accept(&self.tcp).await?;
        // Only sets up state: the handshake's I/O happens when the connection is first polled,
        // in its task.
        Ok(TlsConn {
            state: State::Handshake {
                accept: Box::new(self.acceptor.accept(tcp)),
                deadline: Box::pin(tokio::time::sleep(self.handshake_timeout)),
            },
        })
    }
}

/// A server TLS connection that completes its handshake on first use.
pub struct TlsConn {
    state: State,
}

enum State {
    Handshake {
        accept: Box<tokio_rustls::Accept<TcpStream>>,
        deadline: Pin<Box<tokio::time::Sleep>>,
    },
    Ready(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Failed,
}

impl TlsConn {
    /// Drives the handshake; ready once the stream can carry data.
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let State::Handshake { accept, deadline } = &mut self.state {
            match Pin::new(accept.as_mut()).poll(cx) {
                Poll::Ready(Ok(stream)) => self.state = State::Ready(Box::new(stream)),
                Poll::Ready(Err(e)) => {
                    self.state = State::Failed;
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => {
                    if deadline.as_mut().poll(cx).is_ready() {
                        self.state = State::Failed;
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "TLS handshake timed out",
                        )));
                    }
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    fn stream(&mut self) -> io::Result<Pin<&mut tokio_rustls::server::TlsStream<TcpStream>>> {
        match &mut self.state {
            State::Ready(stream) => Ok(Pin::new(stream.as_mut())),
            _ => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "TLS handshake failed",
            )),
        }
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_handshake(cx))?;
        this.stream()?.poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_handshake(cx))?;
        this.stream()?.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_handshake(cx))?;
        this.stream()?.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        // tokio-rustls writes vectored; asked before the handshake, so answered for the stream
        // this will become.
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().state {
            State::Ready(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
            _ => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().state {
            State::Ready(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
            // Nothing was said over TLS yet: dropping the socket is the whole goodbye.
            _ => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn parse(cert: &str, key: &str) -> Result<Loaded, TlsError> {
        parse_pair(
            Path::new("/c/tls.crt"),
            cert.as_bytes(),
            Path::new("/c/tls.key"),
            key.as_bytes(),
        )
    }

    #[test]
    fn a_matching_pair_loads_with_its_expiry() {
        let (cert, key) = pair("a");
        let loaded = parse(&cert, &key).unwrap();
        assert!(loaded.not_after > 1_700_000_000);
    }

    #[test]
    fn bad_files_are_named() {
        let (cert, key) = pair("a");
        let (_, other_key) = pair("b");
        let cases = [
            (
                String::new(),
                key.clone(),
                "certificate file /c/tls.crt: holds no PEM CERTIFICATE block",
            ),
            (
                "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".into(),
                key.clone(),
                "certificate file /c/tls.crt: not a PEM certificate chain",
            ),
            (
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
                key.clone(),
                "certificate file /c/tls.crt: the first certificate is not X.509",
            ),
            (
                cert.clone(),
                "garbage".into(),
                "private key file /c/tls.key: holds no PEM PRIVATE KEY block",
            ),
            (
                cert.clone(),
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(),
                "private key file /c/tls.key: unusable private key",
            ),
            (
                cert.clone(),
                other_key,
                "the private key in /c/tls.key does not belong to the certificate in /c/tls.crt",
            ),
        ];
        for (cert, key, want) in cases {
            let err = parse(&cert, &key).err().expect(want).to_string();
            assert!(
                err.starts_with(want),
                "{err:?} does not start with {want:?}"
            );
        }
    }
}
