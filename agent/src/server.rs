//! What the agent's unix socket serves, and the connection loop it shares with the health
//! server: accept until shutdown, then let in-flight requests finish within a grace period.
//!
//! The socket speaks HTTP/1.1 and HTTP/2 (prior knowledge, detected per connection). gRPC calls
//! (HTTP/2, `content-type: application/grpc*`) go to the FlyteAdmin [`Proxy`]; everything else
//! is the token API:
//! - `GET /v1/tokens/{name}`: `{"name","access_token","token_type","expires_at"}`, or the bare
//!   token with `Accept: text/plain`. 404 for an unknown name, 503 when no valid token can be
//!   had, both with `{"error","message"}`.
//! - `GET /v1/tokens`: every name with its state, expiry and last error; never a token value.
//! - `GET /v1/admin/token`: the executor-bound FlyteAdmin credential, in the same two forms.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::cache::{GetError, TokenCache, ADMIN};
use crate::proxy::{grpc_error, is_grpc, Proxy, ProxyBody};
use crate::token::rfc3339;

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
pub async fn serve<A: Accept, H: Handler>(
    listener: A,
    handler: Arc<H>,
    protocols: Protocols,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // With a timer, hyper closes an HTTP/1 connection that sends no complete request head within
    // 30 s, so an idle or stalled client cannot hold a connection (and its task) forever.
    builder.http1().timer(hyper_util::rt::TokioTimer::new());
    match protocols {
        Protocols::Http1 => builder = builder.http1_only(),
        Protocols::Http1And2 => {
            // hyper's static windows (2 MiB per stream) suit a local socket; adaptive windows
            // would add BDP pings to every busy connection.
            builder.http2().timer(hyper_util::rt::TokioTimer::new());
        }
    }
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
        let handler = handler.clone();
        let service = hyper::service::service_fn(move |req| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler.handle(req).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(grace = %humantime::format_duration(grace), "connections still open after the grace period; closing them");
    }
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
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

/// The token API.
pub struct TokenApi {
    cache: Arc<TokenCache>,
}

impl TokenApi {
    /// The API over `cache`.
    pub fn new(cache: Arc<TokenCache>) -> Self {
        Self { cache }
    }

    async fn token(&self, name: &str, plain: bool) -> Response<Full<Bytes>> {
        let token = if name == ADMIN {
            self.cache.admin().await
        } else {
            self.cache.get(name).await
        };
        let mut response = match token {
            Ok(token) if plain => {
                let mut r = Response::new(Full::new(Bytes::copy_from_slice(
                    token.access_token.expose().as_bytes(),
                )));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                r
            }
            Ok(token) => json_response(
                StatusCode::OK,
                &json!({
                    "name": name,
                    "access_token": token.access_token.expose(),
                    "token_type": token.token_type,
                    "expires_at": rfc3339(token.expires_at),
                }),
            ),
            Err(e @ GetError::Unknown(_)) => {
                let known = self.cache.names().join(", ");
                error_response(
                    StatusCode::NOT_FOUND,
                    "unknown_token",
                    &format!("{e}; configured: {known}"),
                )
            }
            Err(e @ GetError::Unavailable { .. }) => error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "token_unavailable",
                &e.to_string(),
            ),
        };
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
        response
    }

    async fn list(&self) -> Response<Full<Bytes>> {
        let tokens: Vec<_> = self
            .cache
            .status()
            .await
            .into_iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "status": s.state,
                    "expires_at": s.expires_at.map(rfc3339),
                    "error": s.last_error,
                })
            })
            .collect();
        json_response(StatusCode::OK, &json!({ "tokens": tokens }))
    }
}

fn wants_plain_text(req: &Request<Incoming>) -> bool {
    req.headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|media| {
            media
                .split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/plain"))
        })
}

impl Handler for TokenApi {
    type Body = Full<Bytes>;
    type BodyError = Infallible;

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET {
            return error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "only GET is served",
            );
        }
        let path = req.uri().path();
        if path == "/v1/tokens" || path == "/v1/tokens/" {
            return self.list().await;
        }
        if let Some(raw) = path.strip_prefix("/v1/tokens/") {
            return match percent_encoding::percent_decode_str(raw).decode_utf8() {
                Ok(name) if !name.contains('/') => self.token(&name, wants_plain_text(&req)).await,
                _ => error_response(StatusCode::NOT_FOUND, "unknown_token", "not a token name"),
            };
        }
        if path == "/v1/admin/token" {
            if !self.cache.has_admin() {
                return error_response(
                    StatusCode::NOT_FOUND,
                    "admin_not_configured",
                    "this agent has no FlyteAdmin credential configured",
                );
            }
            return self.token(ADMIN, wants_plain_text(&req)).await;
        }
        error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no route for {path}"),
        )
    }
}

/// Everything the unix socket serves: gRPC to the proxy, the rest to the token API.
pub struct SocketApi {
    tokens: TokenApi,
    proxy: Option<Proxy>,
}

impl SocketApi {
    /// The token API, plus the Admin proxy if one is configured.
    pub fn new(tokens: TokenApi, proxy: Option<Proxy>) -> Self {
        Self { tokens, proxy }
    }
}

impl Handler for SocketApi {
    type Body = Either<Full<Bytes>, ProxyBody>;
    type BodyError = Box<dyn std::error::Error + Send + Sync>;

    async fn handle(&self, req: Request<Incoming>) -> Response<Self::Body> {
        if !is_grpc(&req) {
            return self.tokens.handle(req).await.map(Either::Left);
        }
        let response = match &self.proxy {
            Some(proxy) => proxy.handle(req).await,
            None => grpc_error(
                crate::proxy::code::UNIMPLEMENTED,
                "flyte-auth-agent: no FlyteAdmin is configured (admin.endpoint), so gRPC calls are not proxied",
            ),
        };
        response.map(Either::Right)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    struct Nothing;

    impl Handler for Nothing {
        type Body = Full<Bytes>;
        type BodyError = Infallible;
        async fn handle(&self, _: Request<Incoming>) -> Response<Self::Body> {
            Response::new(Full::new(Bytes::new()))
        }
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
            start.elapsed() >= Duration::from_secs(30),
            "{:?}",
            start.elapsed()
        );
        shutdown.cancel();
    }
}
