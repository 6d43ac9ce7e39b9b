//! The HTTPS server: `/mutate`, `/healthz`, `/readyz`, `/metrics`.
//!
//! [`run`] takes an already-bound listener (the binary binds `server.listen`; tests bind port 0)
//! and serves it through the agent's connection loop with TLS from [`crate::tls`], until the
//! shutdown token fires; then it stops accepting and gives open connections `shutdown_grace` to
//! finish. Every answer on `/mutate` is an AdmissionReview with HTTP 200, refusals included (a
//! body over `max_body`, one that cannot be read), because the API server reports a non-200 from
//! a webhook as an opaque failure, while a review's message reaches the user.
//!
//! Memory and time per review are bounded before a byte of the body is buffered:
//! - a declared `content-length` over `server.max_body` is refused without reading the body;
//! - a review first takes its review slots, waiting at most `server.review_queue_timeout` (then
//!   it is refused, naming the limit), and keeps them while its body is read and decided. There
//!   are `server.max_concurrent_reviews` slots, and a review takes one per
//!   `max_body / max_concurrent_reviews` bytes it declares (all of them without a
//!   `content-length`): small reviews run side by side, while the bodies being read and parsed
//!   at once never total more than about `max_body`. That matters because parsing multiplies:
//!   a 2 MB Pod of tiny objects costs ~25 MB as typed structs;
//! - the body must arrive within `server.body_timeout` of getting the slot; a stalled one is
//!   refused and, since its body was not read to the end, its connection is closed;
//! - bodies are read side by side, but decided one at a time: deciding is CPU work of well
//!   under a millisecond for a task pod, and one typed parse at a time (each bounded by
//!   `limits.review_array_items`) keeps the parse's memory that of the largest review.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use flyte_auth_agent::http::{serve, Handler, Protocols, ServeLimits};
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::review::{self, Injector, Reviewed};
use crate::tls::{CertStore, TlsError, TlsListener};

/// How long a client gets to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the server cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The serving certificate cannot be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Serves `injector` on `listener` until `shutdown`, then waits up to `server.shutdown_grace`
/// for open connections. Fails at once if the certificate files cannot be served.
pub async fn run(
    listener: TcpListener,
    injector: Arc<Injector>,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let server = injector.config().server.clone();
    let metrics = Arc::new(Metrics::new());
    let certs = CertStore::load(&server.cert_file, &server.key_file, metrics.clone()).await?;
    let tls = certs.server_config()?;
    // Reloads stop with the server, also when this future is dropped rather than shut down.
    let reloads = shutdown.child_token();
    let _stop_reloads = reloads.clone().drop_guard();
    tokio::spawn(certs.watch(server.reload_interval, reloads));
    let webhook = Arc::new(Webhook::new(injector, metrics, shutdown.clone()));
    serve(
        TlsListener::new(listener, tls, HANDSHAKE_TIMEOUT),
        webhook,
        Protocols::Http1And2,
        listener_limits(&server),
        shutdown,
        server.shutdown_grace,
    )
    .await;
    Ok(())
}

/// What the HTTPS listener accepts. HTTP/2 windows are what bounds the request bodies a
/// connection can make the server hold before a review slot reads them (hyper's default 1 MiB
/// each let 60 stalled connections hold 75 MiB), so they are small: the API server sends one body
/// at a time per stream and the loop reads it as soon as a slot is free.
fn listener_limits(server: &ServerConfig) -> ServeLimits {
    ServeLimits {
        max_connections: server.max_connections,
        request_head_timeout: server.request_head_timeout,
        h2_window: H2_WINDOW,
        ..ServeLimits::default()
    }
}

/// The webhook's HTTP/2 flow-control window, per stream and per connection: HTTP/2's minimum.
const H2_WINDOW: u32 = 65_535;

/// The webhook's routes.
struct Webhook {
    injector: Arc<Injector>,
    metrics: Arc<Metrics>,
    max_body: usize,
    body_timeout: Duration,
    /// One permit per review being read or decided (`server.max_concurrent_reviews`).
    slots: Semaphore,
    max_concurrent: usize,
    queue_timeout: Duration,
    /// Taken while a review is decided: one typed parse at a time.
    deciding: tokio::sync::Mutex<()>,
    shutdown: CancellationToken,
}

/// Why a request body could not be had.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    /// More than `max_body` bytes, declared or sent.
    #[error("AdmissionReview body is over {0} bytes (server.max_body)")]
    TooLarge(usize),
    /// The connection failed mid-body.
    #[error("cannot read the request body: {0}")]
    Read(Box<dyn std::error::Error + Send + Sync>),
}

impl BodyError {
    fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge(_) => "too_large",
            Self::Read(_) => "unreadable",
        }
    }
}

/// How many of `slots` review slots a body of `declared` bytes takes: one per
/// `max_body / slots` bytes, at least one, and all of them when the length is not declared.
fn slots_for(declared: Option<u64>, max_body: usize, slots: usize) -> u32 {
    let slots = slots.max(1);
    let needed = match declared {
        Some(length) => {
            let share = (max_body / slots).max(1) as u64;
            usize::try_from(length.div_ceil(share)).unwrap_or(slots)
        }
        None => slots,
    };
    u32::try_from(needed.clamp(1, slots)).unwrap_or(1)
}

/// The declared `content-length`, if there is a valid one.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Reads `body` whole into one buffer sized from `declared` (no chunk list, no second copy),
/// refusing it once it passes `limit` bytes.
async fn read_body<B>(mut body: B, limit: usize, declared: Option<u64>) -> Result<Bytes, BodyError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let capacity = declared.map_or(0, |n| usize::try_from(n).unwrap_or(limit).min(limit));
    let mut buffer = BytesMut::with_capacity(capacity);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.into()))?;
        if let Ok(data) = frame.into_data() {
            if buffer.len() + data.len() > limit {
                return Err(BodyError::TooLarge(limit));
            }
            buffer.extend_from_slice(&data);
        }
    }
    Ok(buffer.freeze())
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut response = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("only {allow} is served here\n"),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    response
}

impl Webhook {
    fn new(injector: Arc<Injector>, metrics: Arc<Metrics>, shutdown: CancellationToken) -> Self {
        let server = &injector.config().server;
        Self {
            max_body: server.max_body,
            body_timeout: server.body_timeout,
            // Within a u32 (acquire_many's count) whatever the config says.
            slots: Semaphore::new(server.max_concurrent_reviews.min(u32::MAX as usize)),
            max_concurrent: server.max_concurrent_reviews,
            queue_timeout: server.review_queue_timeout,
            deciding: tokio::sync::Mutex::new(()),
            injector,
            metrics,
            shutdown,
        }
    }

    async fn route<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let get = req.method() == Method::GET || req.method() == Method::HEAD;
        match req.uri().path() {
            "/mutate" if req.method() == Method::POST => self.mutate(req).await,
            "/mutate" => method_not_allowed("POST"),
            "/healthz" | "/readyz" | "/metrics" if !get => method_not_allowed("GET"),
            "/healthz" => text(StatusCode::OK, "ok\n"),
            // The certificate was loaded before the first connection was accepted, so serving
            // means ready, until shutdown asks load balancers to look elsewhere.
            "/readyz" if self.shutdown.is_cancelled() => {
                text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
            }
            "/readyz" => text(StatusCode::OK, "ok\n"),
            "/metrics" => {
                let mut r = text(StatusCode::OK, self.metrics.encode());
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                r
            }
            other => text(StatusCode::NOT_FOUND, format!("no route for {other}\n")),
        }
    }

    async fn mutate<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let span = tracing::info_span!(
            "admission",
            bytes = tracing::field::Empty,
            outcome = tracing::field::Empty,
            duration_us = tracing::field::Empty,
        );
        let reviewed = self.admit(req, &span).await;
        span.record("outcome", reviewed.outcome.as_str());
        span.in_scope(|| tracing::debug!("answered"));
        let Reviewed { body, .. } = reviewed;
        let mut response = Response::new(Full::new(Bytes::from(body)));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        response
    }

    /// Takes a slot, reads the body within the deadline and reviews it; or refuses, saying
    /// which limit was met.
    async fn admit<B>(&self, req: Request<B>, span: &tracing::Span) -> Reviewed
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let declared = content_length(req.headers());
        if declared.is_some_and(|n| n > self.max_body as u64) {
            return self.refuse(
                span,
                "too_large",
                &BodyError::TooLarge(self.max_body).to_string(),
            );
        }
        // Held until the review is decided: the body it buffers counts against the bound.
        let needed = slots_for(declared, self.max_body, self.max_concurrent);
        let acquire = self.slots.acquire_many(needed);
        let _slots = match tokio::time::timeout(self.queue_timeout, acquire).await {
            Ok(Ok(permit)) => permit,
            // Never closed; a timeout is the only way here.
            _ => {
                let message = format!(
                    "the webhook is busy: this review needs {needed} of the {} review slots (server.max_concurrent_reviews; one per {} bytes of body) and they stayed taken for {} (server.review_queue_timeout)",
                    self.max_concurrent,
                    self.max_body / self.max_concurrent,
                    humantime::format_duration(self.queue_timeout)
                );
                return self.refuse(span, "busy", &message);
            }
        };
        let body = req.into_body();
        let body =
            match tokio::time::timeout(self.body_timeout, read_body(body, self.max_body, declared))
                .await
            {
                Ok(Ok(body)) => body,
                Ok(Err(e)) => return self.refuse(span, e.reason(), &e.to_string()),
                Err(_) => {
                    let message = format!(
                        "the request body did not arrive within {} (server.body_timeout)",
                        humantime::format_duration(self.body_timeout)
                    );
                    return self.refuse(span, "body_timeout", &message);
                }
            };
        span.record("bytes", body.len());
        // Waits at most for the reviews holding the other slots to be decided.
        let _turn = self.deciding.lock().await;
        let started = Instant::now();
        let reviewed = span.in_scope(|| self.injector.review(&body));
        let elapsed = started.elapsed();
        self.metrics.review(reviewed.outcome, elapsed);
        if let Some(source) = reviewed.scope {
            self.metrics.scope(source);
        }
        span.record("duration_us", elapsed.as_micros() as u64);
        reviewed
    }

    /// A review refusing with `message`, counted under `reason`.
    fn refuse(&self, span: &tracing::Span, reason: &'static str, message: &str) -> Reviewed {
        let reviewed = span.in_scope(|| review::refuse(None, message));
        self.metrics.review(reviewed.outcome, Duration::ZERO);
        self.metrics.refused(reason);
        reviewed
    }
}

impl Handler for Webhook {
    type Body = Full<Bytes>;
    type BodyError = std::convert::Infallible;

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        self.route(req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn webhook(max_body: usize) -> Webhook {
        let mut config = Config::default();
        config.server.max_body = max_body;
        Webhook::new(
            Arc::new(Injector::new(config)),
            Arc::new(Metrics::new()),
            CancellationToken::new(),
        )
    }

    fn request(method: Method, path: &str, body: &str) -> Request<Full<Bytes>> {
        Request::builder()
            .method(method)
            .uri(path)
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    }

    async fn body(r: Response<Full<Bytes>>) -> String {
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn routes() {
        let w = webhook(1024);
        let cases = [
            (Method::GET, "/healthz", StatusCode::OK),
            (Method::HEAD, "/healthz", StatusCode::OK),
            (Method::GET, "/readyz", StatusCode::OK),
            (Method::GET, "/metrics", StatusCode::OK),
            (Method::POST, "/mutate", StatusCode::OK),
            (Method::POST, "/mutate?timeout=10s", StatusCode::OK),
            (Method::GET, "/mutate", StatusCode::METHOD_NOT_ALLOWED),
            (Method::PUT, "/mutate", StatusCode::METHOD_NOT_ALLOWED),
            (Method::POST, "/healthz", StatusCode::METHOD_NOT_ALLOWED),
            (Method::POST, "/mutate/", StatusCode::NOT_FOUND),
            (Method::GET, "/", StatusCode::NOT_FOUND),
        ];
        for (method, path, status) in cases {
            let r = w.route(request(method.clone(), path, "{}")).await;
            assert_eq!(r.status(), status, "{method} {path}");
        }
    }

    #[tokio::test]
    async fn mutate_answers_what_review_answers() {
        let w = webhook(1024);
        let r = w.route(request(Method::POST, "/mutate", "not json")).await;
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(
            body(r).await.as_bytes(),
            w.injector.review(b"not json").body.as_slice()
        );
    }

    #[tokio::test]
    async fn an_oversized_body_is_refused_in_a_review() {
        let w = webhook(10);
        let r = w
            .route(request(Method::POST, "/mutate", "01234567890"))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let text = body(r).await;
        let review: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(review["response"]["allowed"], false, "{text}");
        let message = review["response"]["status"]["message"].as_str().unwrap();
        assert!(message.contains("over 10 bytes"), "{message}");
        assert!(w
            .metrics
            .encode()
            .contains("flyte_auth_injector_reviews_total{outcome=\"invalid\"} 1"));
    }

    #[test]
    fn big_bodies_take_more_slots() {
        let mib = 1024 * 1024;
        for (declared, want) in [
            (Some(0), 1),
            (Some(3_000), 1),
            (Some(mib / 2), 1),
            (Some(mib / 2 + 1), 2),
            (Some(2 * mib), 4),
            (Some(u64::MAX), 4),
            (None, 4),
        ] {
            assert_eq!(
                slots_for(declared, 2 * mib as usize, 4),
                want,
                "{declared:?}"
            );
        }
        assert_eq!(slots_for(Some(5), 1024, 1), 1);
        assert_eq!(slots_for(None, 1024, 0), 1);
    }

    #[tokio::test]
    async fn not_ready_once_shutting_down() {
        let w = webhook(10);
        w.shutdown.cancel();
        let r = w.route(request(Method::GET, "/readyz", "")).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let r = w.route(request(Method::GET, "/healthz", "")).await;
        assert_eq!(r.status(), StatusCode::OK);
    }
}
