//! The HTTPS server: `/mutate`, `/healthz`, `/readyz`, `/metrics`.
//!
//! [`run`] takes an already-bound listener (the binary binds `server.listen`; tests bind port 0)
//! and serves it through the agent's connection loop with TLS from [`crate::tls`], until the
//! shutdown token fires; then it stops accepting and gives open connections `shutdown_grace` to
//! finish. Every answer on `/mutate` is an AdmissionReview with HTTP 200, refusals included (a
//! body over `max_body`, one that cannot be read), because the API server reports a non-200 from
//! a webhook as an opaque failure, while a review's message reaches the user.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flyte_auth_agent::server::{serve, Handler, Protocols};
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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
    let webhook = Arc::new(Webhook {
        injector,
        metrics,
        max_body: server.max_body,
        shutdown: shutdown.clone(),
    });
    serve(
        TlsListener::new(listener, tls, HANDSHAKE_TIMEOUT),
        webhook,
        Protocols::Http1And2,
        flyte_auth_agent::server::ServeLimits::default(),
        shutdown,
        server.shutdown_grace,
    )
    .await;
    Ok(())
}

/// The webhook's routes.
struct Webhook {
    injector: Arc<Injector>,
    metrics: Arc<Metrics>,
    max_body: usize,
    shutdown: CancellationToken,
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
    async fn route<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let get = req.method() == Method::GET || req.method() == Method::HEAD;
        match req.uri().path() {
            "/mutate" if req.method() == Method::POST => self.mutate(req.into_body()).await,
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

    async fn mutate<B>(&self, body: B) -> Response<Full<Bytes>>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let span = tracing::info_span!(
            "admission",
            bytes = tracing::field::Empty,
            outcome = tracing::field::Empty,
            duration_us = tracing::field::Empty,
        );
        let reviewed = match Limited::new(body, self.max_body).collect().await {
            Ok(collected) => {
                let body = collected.to_bytes();
                span.record("bytes", body.len());
                let started = Instant::now();
                let reviewed = span.in_scope(|| self.injector.review(&body));
                let elapsed = started.elapsed();
                self.metrics.review(reviewed.outcome, elapsed);
                span.record("duration_us", elapsed.as_micros() as u64);
                reviewed
            }
            Err(e) => {
                let message = if e.downcast_ref::<LengthLimitError>().is_some() {
                    format!("AdmissionReview body is over {} bytes", self.max_body)
                } else {
                    format!("cannot read the request body: {e}")
                };
                let reviewed = span.in_scope(|| review::refuse(None, &message));
                self.metrics.review(reviewed.outcome, Duration::ZERO);
                reviewed
            }
        };
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
        Webhook {
            injector: Arc::new(Injector::new(Config::default())),
            metrics: Arc::new(Metrics::new()),
            max_body,
            shutdown: CancellationToken::new(),
        }
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
