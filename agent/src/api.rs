//! What the agent's unix socket serves. The socket speaks HTTP/1.1 and HTTP/2 (prior knowledge,
//! detected per connection). gRPC calls (HTTP/2, `content-type: application/grpc*`) go to the
//! FlyteAdmin [`Proxy`]; everything else is the token API:
//! - `GET /v1/tokens/{name}`: `{"name","access_token","token_type","expires_at"}`, or the bare
//!   token with `Accept: text/plain`. 404 for an unknown name, 503 when no valid token can be
//!   had, both with `{"error","message"}`.
//! - `GET /v1/tokens`: every name with its state, expiry and last error; never a token value.
//! - `GET /v1/admin/token`: the executor-bound FlyteAdmin credential, in the same two forms, only
//!   when `admin.serve_token` opts in (403 otherwise): a task holding it can use it from outside
//!   the pod until it expires, whereas through the proxy it never leaves the agent. The
//!   credential's internal name is never a token name (`/v1/tokens/.admin` is 404).
//!
//! The loopback TCP port (`admin.connect_port`, [`ConnectPort`]) serves the proxy alone: Connect
//! calls (Flyte 2's SDK) and gRPC alike; no token API, so a token is only ever on the socket.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use serde_json::json;

use crate::cache::{GetError, TokenCache, ADMIN};
use crate::env::ENV_ADMIN_SERVE_TOKEN;
use crate::http::{error_response, json_response, Handler};
use crate::proxy::connect::{self, is_connect};
use crate::proxy::{grpc_error, is_grpc, Protocol, Proxy, ProxyBody};
use crate::token::rfc3339;

/// The token API.
pub struct TokenApi {
    cache: Arc<TokenCache>,
    serve_admin_token: bool,
}

impl TokenApi {
    /// The API over `cache`; `serve_admin_token` is `admin.serve_token`, whether
    /// `GET /v1/admin/token` hands the executor credential to the task.
    pub fn new(cache: Arc<TokenCache>, serve_admin_token: bool) -> Self {
        Self {
            cache,
            serve_admin_token,
        }
    }

    /// The token of the token request `name`. The cache never answers for the Admin
    /// credential's internal name here: only `/v1/admin/token` may, when opted in.
    async fn token(&self, name: &str, plain: bool) -> Response<Full<Bytes>> {
        let token = self.cache.get(name).await;
        self.render(name, token, plain)
    }

    async fn admin_token(&self, plain: bool) -> Response<Full<Bytes>> {
        if !self.cache.has_admin() {
            return error_response(
                StatusCode::NOT_FOUND,
                "admin_not_configured",
                "this agent has no FlyteAdmin credential configured",
            );
        }
        if !self.serve_admin_token {
            return error_response(
                StatusCode::FORBIDDEN,
                "admin_token_not_served",
                &format!("this agent does not hand out its FlyteAdmin credential: admin.serve_token is off (env {ENV_ADMIN_SERVE_TOKEN}); call Admin through the socket's gRPC proxy instead"),
            );
        }
        let token = self.cache.admin().await;
        self.render(ADMIN, token, plain)
    }

    fn render(
        &self,
        name: &str,
        token: Result<Arc<crate::token::Token>, GetError>,
        plain: bool,
    ) -> Response<Full<Bytes>> {
        let mut response = match token {
            Ok(token) if plain => {
                let mut r = Response::new(Full::new(token.access_token.expose_bytes()));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                r
            }
            Ok(token) => json_response(
                StatusCode::OK,
                &TokenBody {
                    access_token: token.access_token.expose(),
                    expires_at: rfc3339(token.expires_at),
                    name,
                    token_type: &token.token_type,
                },
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

/// A token as `GET /v1/tokens/<name>` answers it in JSON, borrowed from the cached token (keys
/// in the order `json!` wrote them).
#[derive(serde::Serialize)]
struct TokenBody<'a> {
    access_token: &'a str,
    expires_at: String,
    name: &'a str,
    token_type: &'a str,
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
            return self.admin_token(wants_plain_text(&req)).await;
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
    proxy: Option<Arc<Proxy>>,
}

impl SocketApi {
    /// The token API, plus the Admin proxy if one is configured.
    pub fn new(tokens: TokenApi, proxy: Option<Arc<Proxy>>) -> Self {
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
            Some(proxy) => proxy.handle(req, Protocol::Grpc).await,
            None => grpc_error(
                crate::proxy::code::UNIMPLEMENTED,
                "flyte-auth-agent: no FlyteAdmin is configured (admin.endpoint), so gRPC calls are not proxied",
            ),
        };
        response.map(Either::Right)
    }
}

/// What the loopback TCP port serves: the proxy, to Connect and gRPC calls.
pub struct ConnectPort {
    proxy: Arc<Proxy>,
}

impl ConnectPort {
    /// The port's handler, sharing `proxy` (its credential, limits and metrics) with the socket.
    pub fn new(proxy: Arc<Proxy>) -> Self {
        Self { proxy }
    }
}

impl Handler for ConnectPort {
    type Body = ProxyBody;
    type BodyError = Box<dyn std::error::Error + Send + Sync>;

    async fn handle(&self, req: Request<Incoming>) -> Response<Self::Body> {
        if is_grpc(&req) {
            self.proxy.handle(req, Protocol::Grpc).await
        } else if is_connect(&req) {
            self.proxy.handle(req, Protocol::Connect).await
        } else {
            connect::error(
                crate::proxy::code::UNIMPLEMENTED,
                "flyte-auth-agent: this port proxies Connect and gRPC calls only (a POST with an application/proto, application/json, application/connect+… or application/grpc content type)",
            )
        }
    }
}
