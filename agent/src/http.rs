//! The connection loop every listener shares (the unix socket, the health port, `dev`'s issuer,
//! the injector's webhook): accept until shutdown, bound what each connection may send, then let
//! in-flight requests finish within a grace period. What a listener answers is its [`Handler`].

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

pub use crate::config::ServeLimits;
use crate::config::MIN_HEADER_BYTES;

/// A listener the connection loop can accept from.
pub trait Accept: Send + 'static {
    /// The connection type.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Accepts the next connection.
    fn accept(&self) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> std::io::Result<Self::Io> {
        tokio::net::UnixListener::accept(self).await.map(|(s, _)| s)
    }
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<Self::Io> {
        let (s, _) = tokio::net::TcpListener::accept(self).await?;
        // Small request/response pairs: do not wait to coalesce segments.
        let _ = s.set_nodelay(true);
        Ok(s)
    }
}

/// Something that answers HTTP requests.
pub trait Handler: Send + Sync + 'static {
    /// The response body.
    type Body: hyper::body::Body<Data = Bytes, Error = Self::BodyError> + Send + 'static;
    /// The response body's error.
    type BodyError: Into<Box<dyn std::error::Error + Send + Sync>>;
    /// Answers one request.
    fn handle(&self, req: Request<Incoming>) -> impl Future<Output = Response<Self::Body>> + Send;
}

/// Which HTTP versions a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocols {
    /// HTTP/1.1 only (the health port).
    Http1,
    /// HTTP/1.1 and HTTP/2 with prior knowledge, detected per connection (the socket).
    Http1And2,
}

/// Serves `listener` with `handler` until `shutdown`, then waits up to `grace` for open
/// connections to finish their requests.
///
/// Every connection is bounded by `limits`: at most `max_connections` are open at once (one
/// beyond is closed as soon as it is accepted, so the client learns at once and the accept queue
/// keeps draining, instead of hanging in the kernel's backlog with no answer); a request head (or
/// the HTTP/2 preface and a first request) must arrive within `request_head_timeout`; heads and
/// header lists are capped at `max_header_bytes`. An HTTP/2 connection that has served a request
/// may then idle as long as it answers pings.
pub async fn serve<A: Accept, H: Handler>(
    listener: A,
    handler: Arc<H>,
    protocols: Protocols,
    limits: ServeLimits,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    let builder = connection_builder(protocols, &limits);
    let slots = Arc::new(Semaphore::new(
        limits.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let mut full = false;
    loop {
        let io = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(io) => io,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Said once per episode: a flood of refusals must not become a flood of log lines.
            if !full {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "connection limit reached; closing new connections until one ends"
                );
                full = true;
            }
            drop(io);
            continue;
        };
        full = false;
        let served = Arc::new(AtomicBool::new(false));
        let handler = handler.clone();
        let seen = served.clone();
        let service = hyper::service::service_fn(move |req| {
            let handler = handler.clone();
            seen.store(true, Ordering::Relaxed);
            async move { Ok::<_, Infallible>(handler.handle(req).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(drive(conn, served, limits.request_head_timeout, slot));
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(grace = %humantime::format_duration(grace), "connections still open after the grace period; closing them");
    }
}

/// Runs one connection to its end, holding its `slot` until then; closes it early if no request
/// has arrived (`served`) within `deadline`. hyper bounds later HTTP/1 heads itself, but not the
/// protocol detection before the first one, nor an HTTP/2 preface or first HEADERS; this covers
/// both. A connection that has served a request is left alone.
async fn drive<E: std::fmt::Display>(
    conn: impl Future<Output = Result<(), E>>,
    served: Arc<AtomicBool>,
    deadline: Duration,
    slot: OwnedSemaphorePermit,
) {
    let _slot = slot;
    tokio::pin!(conn);
    let first = tokio::time::sleep(deadline);
    tokio::pin!(first);
    let mut waiting = true;
    loop {
        tokio::select! {
            ended = &mut conn => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = &mut first, if waiting => {
                waiting = false;
                if !served.load(Ordering::Relaxed) {
                    tracing::debug!(timeout = ?deadline, "closing a connection that sent no request in time");
                    return;
                }
            }
        }
    }
}

/// hyper's connection settings for `protocols` under `limits`.
fn connection_builder(
    protocols: Protocols,
    limits: &ServeLimits,
) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // hyper's read buffer is the request head's bound: a head that does not fit gets 431. Its
    // floor is 8 KiB (the config refuses less; max() keeps a library caller from a panic).
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.request_head_timeout)
        .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BYTES))
        .max_headers(limits.max_headers);
    match protocols {
        Protocols::Http1 => builder = builder.http1_only(),
        Protocols::Http1And2 => {
            // hyper's static windows suit a local socket; adaptive windows would add BDP pings
            // to every busy connection. Pings at a long interval close dead peers, not idle ones.
            builder
                .http2()
                .timer(hyper_util::rt::TokioTimer::new())
                .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
                .max_concurrent_streams(limits.h2_max_concurrent_streams)
                .initial_stream_window_size(limits.h2_window)
                .initial_connection_window_size(limits.h2_window)
                .keep_alive_interval(limits.h2_keepalive_interval)
                .keep_alive_timeout(limits.h2_keepalive_timeout);
        }
    }
    builder
}

/// A JSON response.
pub fn json_response<T: serde::Serialize + ?Sized>(
    status: StatusCode,
    body: &T,
) -> Response<Full<Bytes>> {
    // Serializing a value or a struct of strings cannot fail.
    let body = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// A JSON error response: `{"error": code, "message": message}`.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json_response(status, &json!({ "error": code, "message": message }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Nothing;

    impl Handler for Nothing {
        type Body = Full<Bytes>;
        type BodyError = Infallible;
        async fn handle(&self, _: Request<Incoming>) -> Response<Self::Body> {
            Response::new(Full::new(Bytes::new()))
        }
    }

    const HEAD_TIMEOUT: Duration = Duration::from_secs(3);

    fn limits(max_connections: usize) -> ServeLimits {
        ServeLimits {
            max_connections,
            request_head_timeout: HEAD_TIMEOUT,
            ..ServeLimits::default()
        }
    }

    /// Serves [`Nothing`] on a fresh socket; returns its path (and the dir keeping it).
    fn start(protocols: Protocols, limits: ServeLimits) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(serve(
            listener,
            Arc::new(Nothing),
            protocols,
            limits,
            CancellationToken::new(),
            Duration::from_secs(1),
        ));
        (dir, path)
    }

    /// Reads until the server closes `client`; how long that took, or `None` after `limit`.
    async fn closed_after(
        client: &mut tokio::net::UnixStream,
        limit: Duration,
    ) -> Option<Duration> {
        let start = tokio::time::Instant::now();
        let mut rest = Vec::new();
        tokio::time::timeout(limit, client.read_to_end(&mut rest))
            .await
            .ok()
            .map(|_| start.elapsed())
    }

    async fn h2_client(
        path: &std::path::Path,
    ) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>> {
        let io = tokio::net::UnixStream::connect(path).await.unwrap();
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .handshake(TokioIo::new(io))
            .await
            .unwrap();
        tokio::spawn(conn);
        sender
    }

    async fn h2_get(
        sender: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>,
    ) -> StatusCode {
        let req = Request::get("http://agent/x")
            .body(http_body_util::Empty::new())
            .unwrap();
        sender.send_request(req).await.unwrap().status()
    }

    #[tokio::test(start_paused = true)]
    async fn silent_connections_on_the_socket_are_closed_at_the_head_deadline() {
        let (_dir, path) = start(Protocols::Http1And2, limits(8));
        // Nothing at all (protocol detection never finishes), a partial HTTP/1 head, and the
        // HTTP/2 preface without a request: each is closed once the deadline passes, not before.
        let mut silent = tokio::net::UnixStream::connect(&path).await.unwrap();
        let mut partial = tokio::net::UnixStream::connect(&path).await.unwrap();
        partial.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut preface = tokio::net::UnixStream::connect(&path).await.unwrap();
        preface
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        for client in [&mut silent, &mut partial, &mut preface] {
            let took = closed_after(client, Duration::from_secs(600))
                .await
                .expect("closed within 600 s");
            assert!(took <= HEAD_TIMEOUT + Duration::from_secs(1), "{took:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_that_served_a_request_may_idle() {
        let (_dir, path) = start(Protocols::Http1And2, limits(8));
        let mut sender = h2_client(&path).await;
        assert_eq!(h2_get(&mut sender).await, StatusCode::OK);
        // Far past the head deadline and many keep-alive pings later (the client answers them).
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(!sender.is_closed());
        assert_eq!(h2_get(&mut sender).await, StatusCode::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn connections_beyond_the_cap_are_closed_at_once_until_one_ends() {
        let (_dir, path) = start(Protocols::Http1And2, limits(2));
        let mut first = h2_client(&path).await;
        assert_eq!(h2_get(&mut first).await, StatusCode::OK);
        let second = tokio::net::UnixStream::connect(&path).await.unwrap();
        let mut third = tokio::net::UnixStream::connect(&path).await.unwrap();
        // Closed well before any timeout could have done it.
        let took = closed_after(&mut third, Duration::from_secs(600))
            .await
            .expect("the connection over the cap is closed");
        assert!(took < HEAD_TIMEOUT, "{took:?}");
        drop(second);
        // The slot frees when the server sees the close; a new client then gets served.
        let mut served = false;
        for _ in 0..100 {
            let io = tokio::net::UnixStream::connect(&path).await.unwrap();
            if let Ok((mut s, conn)) =
                hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                    .timer(hyper_util::rt::TokioTimer::new())
                    .handshake::<_, http_body_util::Empty<Bytes>>(TokioIo::new(io))
                    .await
            {
                tokio::spawn(conn);
                let req = Request::get("http://agent/x")
                    .body(http_body_util::Empty::new())
                    .unwrap();
                if let Ok(r) = s.send_request(req).await {
                    assert_eq!(r.status(), StatusCode::OK);
                    served = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(served, "no connection was served after one closed");
        assert_eq!(h2_get(&mut first).await, StatusCode::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_sends_a_request_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(
            listener,
            Arc::new(Nothing),
            Protocols::Http1,
            ServeLimits::default(),
            shutdown.clone(),
            Duration::from_secs(1),
        ));
        let mut client = tokio::net::UnixStream::connect(&path).await.unwrap();
        // Half a request head, then silence: the (paused, auto-advancing) clock reaches hyper's
        // header timeout, and the server closes the connection.
        tokio::io::AsyncWriteExt::write_all(&mut client, b"GET / HTTP/1.1\r\n")
            .await
            .unwrap();
        let start = tokio::time::Instant::now();
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(120), client.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "the connection is still open after 120 s");
        assert!(
            start.elapsed() >= ServeLimits::default().request_head_timeout,
            "{:?}",
            start.elapsed()
        );
        shutdown.cancel();
    }
}
