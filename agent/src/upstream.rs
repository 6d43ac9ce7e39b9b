//! The connection to FlyteAdmin: one HTTP/2 connection shared by every proxied call from every
//! task process (gRPC multiplexes, so one is what grpc clients use too), over TCP with rustls or
//! plaintext, or over a unix socket. Keep-alive pings notice a dead peer; when the connection
//! drops, the next call reconnects, and failed connects back off (100 ms doubling to 5 s) so a
//! restarting Admin is not hammered by every waiting call.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::Instant;

use crate::chain::chain;
use crate::config::{AdminAddress, AdminConfig};
use crate::lock::lock;
use crate::refresh::Backoff;
use crate::tls::{load_ca_bundle, CaBundleError};

/// Any error a body can carry.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The request body type sent upstream: a proxied task's stream, a replayed buffer, or a call of
/// the agent's own.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Failed connects back off 100 ms doubling to 5 s, unjittered: one agent reconnects one
/// connection, so there is no herd of its own to spread out.
const BACKOFF: Backoff = Backoff {
    min: Duration::from_millis(100),
    max: Duration::from_secs(5),
};

/// Why a call could not be sent to Admin (once sent, Admin's answer is a response, not this).
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made.
    #[error("cannot connect to FlyteAdmin at {endpoint}: {reason}")]
    Connect {
        /// The configured endpoint.
        endpoint: String,
        /// Why.
        reason: ConnectError,
    },
    /// The connection failed while the call was under way.
    #[error("FlyteAdmin at {endpoint} dropped the call: {reason}")]
    Call {
        /// The configured endpoint.
        endpoint: String,
        /// Why.
        reason: CallError,
    },
}

/// Why no connection to Admin could be made. Shared (`Arc`) because one failure answers every
/// caller that waits out the same back-off.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    /// The unix socket refused.
    #[error("{}: {source}", path.display())]
    Unix {
        /// The socket.
        path: PathBuf,
        /// The I/O error.
        source: Arc<io::Error>,
    },
    /// The TCP connect failed.
    #[error("{0}")]
    Tcp(Arc<io::Error>),
    /// The TLS handshake failed.
    #[error("TLS handshake: {0}")]
    TlsHandshake(Arc<io::Error>),
    /// TLS worked but the server would not speak HTTP/2.
    #[error("the server did not agree to HTTP/2 (ALPN h2) over TLS; gRPC needs it")]
    NoHttp2,
    /// The HTTP/2 handshake failed.
    #[error("HTTP/2 handshake: {}", chain(.0.as_ref()))]
    Http2Handshake(Arc<hyper::Error>),
    /// Nothing within the connect timeout.
    #[error("no connection within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
}

/// Why a call that had a connection was not answered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The call's URI could not be pointed at Admin.
    #[error("{0}")]
    Uri(Arc<http::Error>),
    /// The connection failed under the call.
    #[error("{}", chain(.0.as_ref()))]
    Failed(Arc<hyper::Error>),
    /// Two connections in a row closed before taking the call.
    #[error("the connection closed twice before the call could be sent")]
    ClosedTwice,
}

/// The TLS or CA settings could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The host and port do not make an authority.
    #[error("admin TLS: {authority}: {source}")]
    Authority {
        /// `host:port`.
        authority: String,
        /// Why.
        source: http::uri::InvalidUri,
    },
    /// The name to verify is not a DNS name or IP address.
    #[error("admin TLS: {0:?} is not a valid server name")]
    ServerName(String),
    /// The CA bundle could not be read.
    #[error("admin TLS: {0}")]
    CaBundle(#[from] CaBundleError),
    /// A certificate of the CA bundle is not a usable trust anchor.
    #[error("admin TLS: CA bundle {}: {source}", path.display())]
    Anchor {
        /// The bundle.
        path: PathBuf,
        /// Why.
        source: rustls::Error,
    },
    /// rustls refused the settings.
    #[error("admin TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A cheap handle on the shared Admin connection.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: String,
    address: AdminAddress,
    scheme: Scheme,
    authority: Authority,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
    keepalive: Duration,
    /// The live connection's sender; a clone per call.
    current: Mutex<Option<SendRequest<Body>>>,
    /// Held while connecting, so concurrent callers share one connect.
    connecting: tokio::sync::Mutex<Failures>,
}

/// The connect failures since the last success, and when the next try may go with the error
/// that callers get until then.
#[derive(Default)]
struct Failures {
    failures: u32,
    retry: Option<(Instant, ConnectError)>,
}

impl Upstream {
    /// A handle for the configured Admin; connects on first use.
    pub fn new(config: &AdminConfig) -> Result<Self, TlsError> {
        let (scheme, authority) = match &config.address {
            AdminAddress::Tcp { host, port } => {
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.clone()
                };
                let scheme = if config.tls.is_some() {
                    Scheme::HTTPS
                } else {
                    Scheme::HTTP
                };
                let authority = format!("{host}:{port}");
                let authority = authority
                    .parse()
                    .map_err(|source| TlsError::Authority { authority, source })?;
                (scheme, authority)
            }
            AdminAddress::Unix(_) => (Scheme::HTTP, Authority::from_static("localhost")),
        };
        let tls = match (&config.tls, &config.address) {
            (Some(tls), AdminAddress::Tcp { host, .. }) => {
                let name = tls.server_name.clone().unwrap_or_else(|| host.clone());
                let name =
                    ServerName::try_from(name.clone()).map_err(|_| TlsError::ServerName(name))?;
                Some((connector(tls.ca_file.as_ref())?, name))
            }
            _ => None,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                endpoint: config.endpoint.clone(),
                address: config.address.clone(),
                scheme,
                authority,
                tls,
                connect_timeout: config.connect_timeout,
                keepalive: config.keepalive,
                current: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(Failures::default()),
            }),
        })
    }

    /// The endpoint as configured, for messages.
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// Sends `req` (its URI's path is kept; scheme and authority become Admin's).
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>, UpstreamError> {
        let mut req = req;
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::builder()
            .scheme(self.inner.scheme.clone())
            .authority(self.inner.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|e| self.call_error(CallError::Uri(Arc::new(e))))?;
        // A connection that closed before taking the request hands it back, so it can go on a
        // new connection without any risk of Admin seeing it twice.
        for _ in 0..2 {
            let mut sender = self.sender().await?;
            match sender.try_send_request(req).await {
                Ok(response) => return Ok(response),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => {
                        self.forget_dead();
                        req = unsent;
                    }
                    None => {
                        return Err(self.call_error(CallError::Failed(Arc::new(e.into_error()))))
                    }
                },
            }
        }
        Err(self.call_error(CallError::ClosedTwice))
    }

    fn call_error(&self, reason: CallError) -> UpstreamError {
        UpstreamError::Call {
            endpoint: self.inner.endpoint.clone(),
            reason,
        }
    }

    fn live(&self) -> Option<SendRequest<Body>> {
        let current = lock(&self.inner.current);
        current.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    /// Drops the cached connection if it can take no more calls (closed, or going away).
    fn forget_dead(&self) {
        let mut current = lock(&self.inner.current);
        if current
            .as_ref()
            .is_some_and(|s| s.is_closed() || !s.is_ready())
        {
            *current = None;
        }
    }

    async fn sender(&self) -> Result<SendRequest<Body>, UpstreamError> {
        if let Some(sender) = self.live() {
            return Ok(sender);
        }
        let mut backoff = self.inner.connecting.lock().await;
        // Someone else may have connected while this caller waited for the lock.
        if let Some(sender) = self.live() {
            return Ok(sender);
        }
        if let Some((at, last_error)) = &backoff.retry {
            let wait = at.saturating_duration_since(Instant::now());
            if wait > self.inner.connect_timeout {
                return Err(self.connect_error(last_error.clone()));
            }
            tokio::time::sleep(wait).await;
        }
        match tokio::time::timeout(self.inner.connect_timeout, self.connect()).await {
            Ok(Ok(sender)) => {
                *backoff = Failures::default();
                *lock(&self.inner.current) = Some(sender.clone());
                Ok(sender)
            }
            result => {
                let reason = match result {
                    Ok(Err(e)) => e,
                    _ => ConnectError::Timeout(self.inner.connect_timeout),
                };
                let delay = BACKOFF.delay(backoff.failures);
                backoff.failures = backoff.failures.saturating_add(1);
                backoff.retry = Some((Instant::now() + delay, reason.clone()));
                tracing::warn!(endpoint = %self.inner.endpoint, error = %reason, retry_in = ?delay, "cannot connect to FlyteAdmin");
                Err(self.connect_error(reason))
            }
        }
    }

    fn connect_error(&self, reason: ConnectError) -> UpstreamError {
        UpstreamError::Connect {
            endpoint: self.inner.endpoint.clone(),
            reason,
        }
    }

    async fn connect(&self) -> Result<SendRequest<Body>, ConnectError> {
        let inner = &self.inner;
        let stream = match &inner.address {
            AdminAddress::Unix(path) => Stream::Unix(UnixStream::connect(path).await.map_err(
                |e| ConnectError::Unix {
                    path: path.clone(),
                    source: Arc::new(e),
                },
            )?),
            AdminAddress::Tcp { host, port } => {
                let tcp = TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(|e| ConnectError::Tcp(Arc::new(e)))?;
                // Small request/response frames: do not wait to coalesce them.
                let _ = tcp.set_nodelay(true);
                match &inner.tls {
                    None => Stream::Tcp(tcp),
                    Some((connector, name)) => {
                        let tls = connector
                            .connect(name.clone(), tcp)
                            .await
                            .map_err(|e| ConnectError::TlsHandshake(Arc::new(e)))?;
                        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                            return Err(ConnectError::NoHttp2);
                        }
                        Stream::Tls(Box::new(tls))
                    }
                }
            }
        };
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(inner.keepalive)
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ConnectError::Http2Handshake(Arc::new(e)))?;
        let endpoint = inner.endpoint.clone();
        tokio::spawn(async move {
            match connection.await {
                Ok(()) => tracing::info!(%endpoint, "FlyteAdmin connection closed"),
                Err(e) => {
                    tracing::warn!(%endpoint, error = %chain(&e), "FlyteAdmin connection failed")
                }
            }
        });
        tracing::info!(endpoint = %inner.endpoint, "connected to FlyteAdmin");
        Ok(sender)
    }
}

fn connector(ca_file: Option<&PathBuf>) -> Result<tokio_rustls::TlsConnector, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        for cert in load_ca_bundle(path)? {
            roots.add(cert).map_err(|source| TlsError::Anchor {
                path: path.clone(),
                source,
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Tcp(s) => s.is_write_vectored(),
            Self::Unix(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Lets tonic's generated clients call Admin through this connection (for the agent's own
/// AuthMetadataService calls).
impl tower_service::Service<Request<tonic::body::Body>> for Upstream {
    type Response = Response<Incoming>;
    type Error = UpstreamError;
    type Future = BoxFuture<'static, Result<Response<Incoming>, UpstreamError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<tonic::body::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let req = req.map(|b| b.map_err(BoxError::from).boxed_unsync());
            this.send(req).await
        })
    }
}
