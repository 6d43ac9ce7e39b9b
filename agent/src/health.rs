//! Health and metrics over TCP: `/healthz` (the process serves), `/readyz` (every requested
//! token is present and unexpired), `/metrics` (Prometheus text). This port never serves a token.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;

use crate::cache::TokenCache;
use crate::http::{error_response, json_response, Handler};
use crate::metrics::Metrics;

/// The health and metrics endpoints.
pub struct Health {
    cache: Arc<TokenCache>,
    metrics: Arc<Metrics>,
}

impl Health {
    /// Endpoints over `cache` and `metrics`.
    pub fn new(cache: Arc<TokenCache>, metrics: Arc<Metrics>) -> Self {
        Self { cache, metrics }
    }
}

impl Handler for Health {
    type Body = Full<Bytes>;
    type BodyError = std::convert::Infallible;

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        match req.uri().path() {
            "/healthz" => json_response(StatusCode::OK, &json!({ "status": "ok" })),
            "/readyz" => match self.cache.ready().await {
                Ok(()) => json_response(StatusCode::OK, &json!({ "ready": true })),
                Err(waiting) => json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({ "ready": false, "waiting_for": waiting }),
                ),
            },
            "/metrics" => {
                let mut r = Response::new(Full::new(Bytes::from(self.metrics.encode())));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                r
            }
            other => error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no route for {other}"),
            ),
        }
    }
}
