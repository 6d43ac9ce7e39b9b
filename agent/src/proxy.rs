//! The gRPC proxy to FlyteAdmin on the agent socket: every HTTP/2 request with a gRPC content type
//! goes to Admin over the shared [`Upstream`] connection with the executor-bound credential in
//! the header Admin expects, replacing whatever credential the task sent (a task cannot present
//! another identity through the agent).
//!
//! What reaches Admin is only what Admin should see: a call whose path is exactly
//! `/<package.Service>/<Method>` (anything else, such as `//x`, `/a//b`, `/./`, `%2F` or a query,
//! is PERMISSION_DENIED before the allow-list is even asked), without the task's credentials in
//! any form (`authorization`, `flyte-authorization`, the configured header, and their `-bin`
//! variants), `host` or `cookie`, and without request trailers (gRPC clients send none; a
//! trailer `authorization` would otherwise reach Admin, and grpc-go answers client trailers by
//! closing the shared connection with GOAWAY).
//!
//! Bodies stream both ways; response trailers, `grpc-timeout` and cancellation (a reset stream)
//! pass through. A request body is also kept, so that when Admin answers UNAUTHENTICATED the call
//! can be retried once with a renewed credential: the message the policy read is in memory
//! anyway, and a streamed body is kept up to `admin.retry_buffer` bytes. What a task
//! never sees is UNAUTHENTICATED itself: flytekit answers that by starting an interactive login,
//! which hangs in a pod, so a refusal that survives the retry becomes PERMISSION_DENIED naming
//! the agent and Admin's reason.
//!
//! Under the default policy (`admin.policy: execution`, see [`crate::scope`]) a call is also
//! judged before anything is sent: its method must be one a task may call, and its request (one
//! message of at most `admin.max_request_bytes`, read in full first, gzip decoded within the same
//! bound; see [`message`]) must name only the execution's own project, domain and org. A refusal
//! is PERMISSION_DENIED naming the method and field, counted in `admin_policy_refusals`.
//!
//! The same proxy serves Connect, Flyte 2's protocol, on the loopback TCP port
//! (`admin.connect_port`; see [`connect`]): the same credential, allow-list, policy (over
//! flyteidl2's methods), metrics and renewal, with the agent's own errors and Admin's
//! UNAUTHENTICATED (HTTP 401) read and written in Connect's form.
//!
//! Every call, forwarded or refused, leaves one audit event (tracing target `audit`): method,
//! the project and domain the request named, the execution id the pod reported, the gRPC code the
//! task saw, the duration and the request size. Never a credential or a request body.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::Incoming;
use hyper::body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument as _;

pub mod connect;
mod message;

use crate::admin::AdminAuth;
use crate::cache::TokenCache;
use crate::config::AdminPolicy;
use crate::lock::lock;
use crate::metrics::{code_label, MethodLabels, Metrics, DENIED};
use crate::scope::{Named, Policy, Reason, Refusal, Scope};
use crate::token::Token;
use crate::upstream::{BoxError, Upstream};

/// The response body the proxy hands back.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// The protocol of a call: it decides how the agent's own answers and Admin's status look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// gRPC over HTTP/2: flytekit, on the unix socket.
    Grpc,
    /// Connect over HTTP/1.1 or HTTP/2: Flyte 2's SDK, on the loopback TCP port.
    Connect,
}

/// A request body on its way to Admin: the task's stream, or the message the policy read.
type RequestBody = UnsyncBoxBody<Bytes, BoxError>;

/// gRPC status codes the proxy uses or looks for.
pub(crate) mod code {
    pub const OK: u16 = 0;
    pub const CANCELLED: u16 = 1;
    pub const UNIMPLEMENTED: u16 = 12;
    pub const INTERNAL: u16 = 13;
    pub const PERMISSION_DENIED: u16 = 7;
    pub const RESOURCE_EXHAUSTED: u16 = 8;
    pub const UNAVAILABLE: u16 = 14;
    pub const UNAUTHENTICATED: u16 = 16;
}

/// Headers a task may send that must not reach Admin: credentials in every form (the agent sets
/// its own), the task's `host` and cookies, and HTTP/1 connection headers, which HTTP/2 forbids.
/// The configured credential header and its `-bin` form are removed as well.
const STRIPPED: [&str; 11] = [
    "authorization",
    "flyte-authorization",
    "authorization-bin",
    "flyte-authorization-bin",
    "host",
    "cookie",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// The media type of `headers`' content type: without its parameters, trimmed, as sent.
fn media_type(headers: &http::HeaderMap) -> Option<&str> {
    let content_type = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    Some(content_type.split(';').next().unwrap_or("").trim())
}

/// Whether `req` is a gRPC call (HTTP/2 with a gRPC content type).
pub fn is_grpc<B>(req: &Request<B>) -> bool {
    req.version() == http::Version::HTTP_2
        && req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// A gRPC answer made by the agent itself: trailers-only, status and message in the headers.
pub fn grpc_error(code: u16, message: &str) -> Response<ProxyBody> {
    let mut response = Response::new(Empty::new().map_err(BoxError::from).boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    set_status(headers, code, message);
    response
}

/// Sets `grpc-status` and `grpc-message` (percent-encoded as gRPC prescribes).
fn set_status(headers: &mut HeaderMap, code: u16, message: &str) {
    headers.insert("grpc-status", HeaderValue::from(code));
    let encoded = percent_encoding::utf8_percent_encode(message, GRPC_MESSAGE).to_string();
    if let Ok(v) = HeaderValue::try_from(encoded) {
        headers.insert("grpc-message", v);
    }
}

/// gRPC's grpc-message encoding: percent-encode anything outside printable ASCII, and '%'.
const GRPC_MESSAGE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

/// The proxy.
pub struct Proxy {
    upstream: Upstream,
    auth: Arc<AdminAuth>,
    cache: Arc<TokenCache>,
    metrics: Arc<Metrics>,
    labels: MethodLabels,
    /// One permit per call in flight, held until its response body is dropped.
    inflight: Arc<Semaphore>,
    max_inflight: usize,
    /// The execution-scope policy; `None` under `admin.policy: unrestricted`.
    policy: Option<Arc<Policy>>,
    /// `admin.max_request_bytes`.
    max_request: usize,
    /// The execution id the pod reported, for audit events only.
    execution_id: Option<Arc<str>>,
    /// The credential header and its `-bin` form, resolved once (Admin's answer does not change).
    header: tokio::sync::OnceCell<CredentialHeader>,
    /// The current credential as a header value, made once per token rather than per call.
    bearer: Mutex<Option<(Arc<Token>, HeaderValue)>>,
}

/// Why a call cannot be sent with the executor credential (answered UNAVAILABLE).
#[derive(Debug, thiserror::Error)]
enum NoCredential {
    /// The cache has no Admin token and could not get one.
    #[error("flyte-auth-agent: no FlyteAdmin credential: {0}")]
    Token(crate::cache::GetError),
    /// Admin's metadata does not say which header the credential goes in.
    #[error("flyte-auth-agent: {0}")]
    Header(crate::idp::IdpError),
}

/// Where the credential goes: the header, and its `-bin` form (stripped from requests too).
struct CredentialHeader {
    name: http::HeaderName,
    bin: Option<http::HeaderName>,
}

/// A request body on its way to Admin, and what the proxy keeps to send it again after an
/// UNAUTHENTICATED.
enum Outbound {
    /// The one message the policy read: already in memory, so it is also the replay.
    Judged { message: Bytes, rest: Incoming },
    /// The task's stream, teed into a capture of at most `admin.retry_buffer` bytes.
    Stream(RequestBody),
}

impl Proxy {
    /// A proxy to `upstream` with the credential from `cache` and settings from `auth`.
    pub fn new(
        upstream: Upstream,
        auth: Arc<AdminAuth>,
        cache: Arc<TokenCache>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let labels = MethodLabels::new(
            auth.config()
                .allowed_methods
                .patterns()
                .iter()
                .map(String::as_str)
                .chain(connect::FLYTE2_METHODS),
        );
        let max_inflight = crate::config::Limits::default().max_inflight_calls;
        let config = auth.config();
        let policy = (config.policy == AdminPolicy::Execution).then(|| {
            let policy = Policy::new(Scope {
                project: config.project.clone(),
                domain: config.domain.clone(),
                org: config.org.clone(),
            });
            // Flyte 2's methods arrive on the Connect port only (its SDK cannot use the socket).
            Arc::new(match config.connect_port {
                Some(_) => policy.with_flyte2(),
                None => policy,
            })
        });
        match (&policy, &config.project, &config.domain) {
            (None, _, _) => tracing::warn!(
                "admin.policy is unrestricted: a task may make any call FlyteAdmin allows the executor credential, in every project and domain"
            ),
            (Some(_), None, _) | (Some(_), _, None) => tracing::warn!(
                project = crate::env::ENV_ADMIN_PROJECT,
                domain = crate::env::ENV_ADMIN_DOMAIN,
                "the agent has no execution project or domain: every Admin call that names one will be refused"
            ),
            _ => {}
        }
        let max_request = config.max_request_bytes;
        let execution_id = config.pod_reported_execution_id.as_deref().map(Arc::from);
        Self {
            upstream,
            auth,
            cache,
            metrics,
            labels,
            inflight: Arc::new(Semaphore::new(max_inflight)),
            max_inflight,
            policy,
            max_request,
            execution_id,
            header: tokio::sync::OnceCell::new(),
            bearer: Mutex::new(None),
        }
    }

    /// Carries at most `max` calls at once (`limits.max_inflight_calls`); more are refused with
    /// RESOURCE_EXHAUSTED rather than queued, so a task cannot grow the agent's memory with calls.
    pub fn with_max_inflight(mut self, max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        self.inflight = Arc::new(Semaphore::new(max));
        self.max_inflight = max;
        self
    }

    /// Forwards one call made in `protocol`.
    pub async fn handle(&self, req: Request<Incoming>, protocol: Protocol) -> Response<ProxyBody> {
        let (parts, mut body) = req.into_parts();
        let (mut call, entry, permit) = match self.admit(&parts.uri, protocol, Instant::now()) {
            Ok(admitted) => admitted,
            Err(refused) => return refused.answer(body, self.max_request).await,
        };
        let judged = match (entry, self.policy.as_deref()) {
            (Some(entry), Some(policy)) => {
                let judged = self.judge(
                    policy,
                    entry,
                    &call.method,
                    (&parts.headers, protocol),
                    &mut body,
                );
                match judged.await {
                    Ok((message, named)) => {
                        call.request_bytes = Some(message.len());
                        call.named = named;
                        Some(message)
                    }
                    Err(refusal) => {
                        let refused = self.refused(call, &refusal);
                        return refused.answer(body, self.max_request).await;
                    }
                }
            }
            _ => {
                call.request_bytes = parts
                    .headers
                    .get(http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse().ok());
                None
            }
        };
        let span = tracing::info_span!("admin_call", method = %call.method);
        let (token, header) = match self.credential().instrument(span.clone()).await {
            Ok(v) => v,
            Err(e) => {
                let message = e.to_string();
                tracing::warn!(%message, "no FlyteAdmin credential");
                let refused = Refused::new(call, code::UNAVAILABLE, message);
                return refused.answer(body, self.max_request).await;
            }
        };
        let outbound = match judged {
            Some(message) => Outbound::Judged {
                message,
                rest: body,
            },
            None => Outbound::Stream(body.map_err(BoxError::from).boxed_unsync()),
        };
        let response = self
            .forward(parts, outbound, call, (&token, header))
            .instrument(span)
            .await;
        // The permit lives as long as the response body: a stream counts until it ends.
        response.map(|body| {
            body.map_frame(move |frame| {
                let _held = &permit;
                frame
            })
            .boxed_unsync()
        })
    }

    /// Checks what the call's headers alone decide: its path, the allow-list, the policy's
    /// method rule and the in-flight limit. The call's record, the policy's entry for the
    /// method (when its message must be judged) and the in-flight permit. A refusal is boxed:
    /// it is the rare path, and a call's record is large.
    fn admit(
        &self,
        uri: &http::Uri,
        protocol: Protocol,
        started: Instant,
    ) -> Result<(Call, Option<&crate::scope::Entry>, OwnedSemaphorePermit), Box<Refused>> {
        let Some(path) = canonical_path(uri) else {
            // The path is the task's; the message names the rule, not the (unbounded) input.
            return Err(Box::new(Refused::new(
                self.call(DENIED.into(), self.labels.denied(), protocol, started),
                code::PERMISSION_DENIED,
                "flyte-auth-agent: the call's path is not a gRPC method path /<package.Service>/<Method> (no empty, dot or encoded segments, no query)".into(),
            )));
        };
        if !self.auth.config().allowed_methods.allows(&path) {
            let message = format!("flyte-auth-agent: {path} is not in admin.allowed_methods");
            let call = self.call(path, self.labels.denied(), protocol, started);
            return Err(Box::new(Refused::new(
                call,
                code::PERMISSION_DENIED,
                message,
            )));
        }
        let call = self.call(path.clone(), self.labels.label(&path), protocol, started);
        let entry = match self.policy.as_deref().map(|p| p.admit(&path)) {
            None | Some(Ok(None)) => None,
            Some(Ok(Some(entry))) => Some(entry),
            Some(Err(refusal)) => return Err(Box::new(self.refused(call, &refusal))),
        };
        let Ok(permit) = self.inflight.clone().try_acquire_owned() else {
            let message = format!(
                "flyte-auth-agent: {} calls are already in flight to FlyteAdmin (limits.max_inflight_calls); retry",
                self.max_inflight
            );
            return Err(Box::new(Refused::new(
                call,
                code::RESOURCE_EXHAUSTED,
                message,
            )));
        };
        Ok((call, entry, permit))
    }

    /// Reads the request's one message (at most `admin.max_request_bytes`, compressed or not)
    /// as its protocol and headers carry it and has the policy judge it; the bytes to forward
    /// (as the task sent them) and what they named.
    async fn judge(
        &self,
        policy: &Policy,
        entry: &crate::scope::Entry,
        path: &str,
        (headers, protocol): (&HeaderMap, Protocol),
        body: &mut Incoming,
    ) -> Result<(Bytes, Named), Refusal> {
        let refusal = |(reason, detail)| Refusal {
            reason,
            method: path.trim_start_matches('/').to_string(),
            detail,
        };
        let shape = message::Shape::of(headers, protocol).map_err(refusal)?;
        let bytes = read_body(body, self.max_request, shape.enveloped)
            .await
            .map_err(|reason| {
                refusal((
                    reason,
                    match reason {
                        Reason::TooLarge => format!(
                            "the request is larger than admin.max_request_bytes ({} bytes)",
                            self.max_request
                        ),
                        _ => "the request body ended with an error".into(),
                    },
                ))
            })?;
        let message = shape.message(&bytes, self.max_request).map_err(refusal)?;
        let named = policy.check_message(path, entry, &message)?;
        Ok((bytes, named))
    }

    /// The record of one call, finished with its outcome.
    fn call(&self, method: String, label: Arc<str>, protocol: Protocol, started: Instant) -> Call {
        Call {
            label,
            method,
            protocol,
            named: Named::default(),
            request_bytes: None,
            started,
            metrics: self.metrics.clone(),
            execution_id: self.execution_id.clone(),
        }
    }

    /// Answers a policy refusal: PERMISSION_DENIED (RESOURCE_EXHAUSTED when too large), counted
    /// by reason.
    fn refused(&self, call: Call, refusal: &Refusal) -> Refused {
        self.metrics
            .admin_refusal(&call.label, refusal.reason.as_str());
        tracing::warn!(method = %call.method, reason = refusal.reason.as_str(), "call refused by the execution-scope policy");
        let code = match refusal.reason {
            Reason::TooLarge => code::RESOURCE_EXHAUSTED,
            _ => code::PERMISSION_DENIED,
        };
        Refused::new(call, code, refusal.to_string())
    }

    async fn forward(
        &self,
        mut parts: http::request::Parts,
        outbound: Outbound,
        call: Call,
        (token, header): (&Arc<Token>, &CredentialHeader),
    ) -> Response<ProxyBody> {
        let config = self.auth.config();
        for name in STRIPPED {
            parts.headers.remove(name);
        }
        parts.headers.remove(&header.name);
        if let Some(bin) = &header.bin {
            parts.headers.remove(bin);
        }
        if call.protocol == Protocol::Connect {
            // Admin's connection is HTTP/2 whatever the task spoke.
            parts.version = http::Version::HTTP_2;
            if call.method == connect::SELECT_CLUSTER {
                // Its answer is rewritten, so it must come uncompressed.
                parts.headers.insert(
                    http::header::ACCEPT_ENCODING,
                    HeaderValue::from_static("identity"),
                );
            }
        }
        let (body, kept) = match outbound {
            Outbound::Judged { message, rest } => (
                Judged {
                    message: Some(message.clone()),
                    rest,
                }
                .boxed_unsync(),
                Kept::Message(message),
            ),
            Outbound::Stream(inner) => {
                let capture = Arc::new(Mutex::new(Capture::new(config.retry_buffer)));
                let tee = Tee {
                    inner,
                    capture: capture.clone(),
                };
                (tee.boxed_unsync(), Kept::Capture(capture))
            }
        };
        let first = Request::from_parts(
            with_credential(parts.clone(), &header.name, self.bearer(token)),
            body,
        );
        self.metrics.admin_overhead(call.started.elapsed());
        let response = match self.upstream.send(first).await {
            Ok(r) => r,
            Err(e) => return unavailable(call, &e.to_string()),
        };
        if call.status(&response) != Some(code::UNAUTHENTICATED) {
            return pass(call, response).await;
        }
        let refusal = refusal_reason(call.protocol, response).await;
        self.retry(call, parts, header, token, kept, &refusal).await
    }

    /// Admin refused the credential: renews it (one IdP call however many calls saw the
    /// refusal) and sends the call once more, if what was kept of its body allows.
    async fn retry(
        &self,
        call: Call,
        parts: http::request::Parts,
        header: &CredentialHeader,
        token: &Arc<Token>,
        kept: Kept,
        refusal: &str,
    ) -> Response<ProxyBody> {
        tracing::info!(reason = %refusal, "FlyteAdmin refused the credential; renewing it");
        let renewed = self.cache.renew_admin(token).await;
        let replay = match kept {
            Kept::Message(message) => Some(message),
            Kept::Capture(capture) => lock(&capture).replay(),
        };
        let (renewed, replay) = match (renewed, replay) {
            (Ok(t), Some(body)) => (t, body),
            (Err(e), _) => {
                return denied(call, &format!("FlyteAdmin refused the executor credential ({refusal}) and no new one could be had: {e}"));
            }
            (Ok(_), None) => {
                let limit = self.auth.config().retry_buffer;
                return denied(call, &format!("FlyteAdmin refused the executor credential ({refusal}); a new one is ready, but this call's request was too large to replay (admin.retry_buffer is {limit} bytes); retry the call"));
            }
        };
        let second = Request::from_parts(
            with_credential(parts, &header.name, self.bearer(&renewed)),
            Full::new(replay).map_err(BoxError::from).boxed_unsync(),
        );
        let response = match self.upstream.send(second).await {
            Ok(r) => r,
            Err(e) => return unavailable(call, &e.to_string()),
        };
        if call.status(&response) == Some(code::UNAUTHENTICATED) {
            let again = refusal_reason(call.protocol, response).await;
            return denied(
                call,
                &format!("FlyteAdmin refused the executor credential twice, also after renewing it: {again}"),
            );
        }
        pass(call, response).await
    }

    async fn credential(&self) -> Result<(Arc<Token>, &CredentialHeader), NoCredential> {
        let token = self.cache.admin().await.map_err(NoCredential::Token)?;
        let header = self
            .header
            .get_or_try_init(|| async {
                let name = self.auth.header().await?;
                let bin = http::HeaderName::try_from(format!("{}-bin", name.as_str())).ok();
                Ok::<_, crate::idp::IdpError>(CredentialHeader { name, bin })
            })
            .await
            .map_err(NoCredential::Header)?;
        Ok((token, header))
    }

    /// `Bearer <token>` as a sensitive header value, made once per token.
    fn bearer(&self, token: &Arc<Token>) -> Option<HeaderValue> {
        let mut slot = lock(&self.bearer);
        if let Some((current, value)) = slot.as_ref() {
            if Arc::ptr_eq(current, token) {
                return Some(value.clone());
            }
        }
        let mut value =
            HeaderValue::try_from(format!("Bearer {}", token.access_token.expose())).ok()?;
        value.set_sensitive(true);
        *slot = Some((token.clone(), value.clone()));
        Some(value)
    }
}

/// What the proxy kept of a request body to send it again.
enum Kept {
    Message(Bytes),
    Capture(Arc<Mutex<Capture>>),
}

fn unavailable(call: Call, reason: &str) -> Response<ProxyBody> {
    tracing::warn!(%reason, "FlyteAdmin unavailable");
    call.refuse(code::UNAVAILABLE, &format!("flyte-auth-agent: {reason}"))
}

fn denied(call: Call, reason: &str) -> Response<ProxyBody> {
    tracing::warn!(%reason, "call refused");
    call.refuse(
        code::PERMISSION_DENIED,
        &format!("flyte-auth-agent: {reason}"),
    )
}

/// Hands Admin's response to the task, finishing the call when its status is known: now for a
/// trailers-only answer, at the trailers otherwise.
async fn pass(call: Call, response: Response<Incoming>) -> Response<ProxyBody> {
    if call.protocol == Protocol::Connect {
        return pass_connect(call, response).await;
    }
    let (parts, body) = response.into_parts();
    if let Some(status) = header_status(&parts.headers) {
        call.finish(status);
        return Response::from_parts(parts, body.map_err(BoxError::from).boxed_unsync());
    }
    let body = Trailers {
        inner: body,
        done: Some(call),
    };
    Response::from_parts(parts, body.boxed_unsync())
}

/// Hands a Connect answer to the task, finishing the call at its status; a SelectCluster answer
/// loses its `cluster_endpoint` on the way (see [`connect`]).
async fn pass_connect(call: Call, response: Response<Incoming>) -> Response<ProxyBody> {
    let code = connect::code_of(response.status());
    if code != code::OK {
        return pass_connect_error(call, response).await;
    }
    if call.method != connect::SELECT_CLUSTER {
        call.finish(code);
        return response.map(|body| body.map_err(BoxError::from).boxed_unsync());
    }
    let (mut parts, body) = response.into_parts();
    let rewritten = match parts.headers.get(http::header::CONTENT_ENCODING) {
        Some(encoding) if encoding != "identity" => None,
        _ => read_all(body, SELECT_CLUSTER_LIMIT)
            .await
            .and_then(|message| connect::without_cluster_endpoint(&message).ok()),
    };
    let Some(message) = rewritten else {
        let message = "flyte-auth-agent: the control plane's SelectCluster answer could not be read, so the endpoint it names could not be kept from the task";
        tracing::warn!(method = %call.method, "{message}");
        return call.refuse(code::UNAVAILABLE, message);
    };
    call.finish(code::OK);
    parts.headers.remove(http::header::CONTENT_ENCODING);
    parts.headers.insert(
        http::header::CONTENT_LENGTH,
        HeaderValue::from(message.len()),
    );
    let body = Full::new(Bytes::from(message)).map_err(BoxError::from);
    Response::from_parts(parts, body.boxed_unsync())
}

/// A Connect error answer, passed on unchanged; its JSON names the exact code for the metrics and
/// the audit line, which the HTTP status only hints at (400 stands for three codes, 501 would
/// read as unknown). Read when uncompressed, up to [`CONNECT_ERROR_LIMIT`]; a longer body goes on
/// as it came, and the status decides.
async fn pass_connect_error(call: Call, response: Response<Incoming>) -> Response<ProxyBody> {
    let by_status = connect::code_of(response.status());
    let plain = response
        .headers()
        .get(http::header::CONTENT_ENCODING)
        .is_none_or(|e| e == "identity");
    if !plain {
        call.finish(by_status);
        return response.map(|body| body.map_err(BoxError::from).boxed_unsync());
    }
    let (parts, body) = response.into_parts();
    let (read, rest) = read_up_to(body, CONNECT_ERROR_LIMIT).await;
    let code = match rest {
        None => connect::error_in(&read).0.unwrap_or(by_status),
        Some(_) => by_status,
    };
    call.finish(code);
    let head = futures_util::stream::once(std::future::ready(Ok(Frame::data(read))));
    let body = match rest {
        None => http_body_util::StreamBody::new(head).boxed_unsync(),
        Some(rest) => {
            let rest = http_body_util::BodyStream::new(rest.map_err(BoxError::from));
            http_body_util::StreamBody::new(futures_util::StreamExt::chain(head, rest))
                .boxed_unsync()
        }
    };
    Response::from_parts(parts, body)
}

/// Up to a little over `limit` bytes of `body`, and the rest of it if it did not end by then.
async fn read_up_to(mut body: Incoming, limit: usize) -> (Bytes, Option<Incoming>) {
    let mut read = bytes::BytesMut::new();
    while read.len() <= limit {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    read.extend_from_slice(&data);
                }
            }
            // A body that broke off is passed on as far as it came.
            _ => return (read.freeze(), None),
        }
    }
    (read.freeze(), Some(body))
}

/// Largest Connect error answer read for its code.
const CONNECT_ERROR_LIMIT: usize = 16 * 1024;

/// Largest SelectCluster answer the proxy reads to rewrite: two short strings, far below this.
const SELECT_CLUSTER_LIMIT: usize = 64 * 1024;

/// A whole body, if it ends within `limit` bytes.
async fn read_all(body: Incoming, limit: usize) -> Option<Bytes> {
    let collected = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .ok()?;
    Some(collected.to_bytes())
}

/// Reads a request's one message: up to the end of the envelope its 5-byte header announces
/// (gRPC, Connect streams; or of the body, if that comes first), or the whole body (Connect
/// unary), at most `limit` bytes. It does not wait for the end of an enveloped stream, which a
/// client may send in a later frame: the call goes on as soon as its message is judged, and
/// [`Judged`] refuses anything the client sends after it. Trailers, which a gRPC client never
/// sends, are dropped.
async fn read_body(body: &mut Incoming, limit: usize, enveloped: bool) -> Result<Bytes, Reason> {
    let mut buf = bytes::BytesMut::new();
    loop {
        if let Some(header) = buf.get(..5).filter(|_| enveloped) {
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            if len.saturating_add(5) > limit {
                return Err(Reason::TooLarge);
            }
            if buf.len() >= len + 5 {
                return Ok(buf.freeze());
            }
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if buf.len().saturating_add(data.len()) > limit {
                        return Err(Reason::TooLarge);
                    }
                    buf.extend_from_slice(&data);
                }
            }
            Some(Err(_)) => return Err(Reason::Undecodable),
            None => return Ok(buf.freeze()),
        }
    }
}

/// The body forwarded for a judged unary call: the judged message, then the rest of the task's
/// stream, which may only end it. Any further data is an error, so Admin never receives bytes the
/// policy did not read.
struct Judged {
    message: Option<Bytes>,
    rest: Incoming,
}

impl hyper::body::Body for Judged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(message) = self.message.take() {
            return Poll::Ready(Some(Ok(Frame::data(message))));
        }
        loop {
            return match std::task::ready!(Pin::new(&mut self.rest).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => continue,
                    Ok(_) => Poll::Ready(Some(Err(
                        "flyte-auth-agent: a unary call sent more than one message".into(),
                    ))),
                    // Request trailers never reach Admin.
                    Err(_) => continue,
                },
                Some(Err(e)) => Poll::Ready(Some(Err(BoxError::from(e)))),
                None => Poll::Ready(None),
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        self.message.is_none() && self.rest.is_end_stream()
    }
}

/// A call the agent answers itself, and how.
struct Refused {
    call: Call,
    code: u16,
    message: String,
}

impl Refused {
    fn new(call: Call, code: u16, message: String) -> Self {
        Self {
            call,
            code,
            message,
        }
    }

    /// Answers once the rest of the request has arrived (see [`drain`]).
    async fn answer(self, mut body: Incoming, limit: usize) -> Response<ProxyBody> {
        drain(&mut body, limit).await;
        self.call.refuse(self.code, &self.message)
    }
}

/// Reads and discards what is left of a refused call's request, at most `limit` bytes.
///
/// Answering before the request has ended makes h2 reset the stream, and the client's message
/// arriving after a reset counts toward h2's limit of locally reset streams (1,024 per
/// connection), past which it closes the connection with every call on it: a process whose
/// calls are refused many times would lose its good calls too. A client that stops sending
/// holds only its own stream, as it could with any call, so no timer is needed; one that sends
/// more than `limit` is answered at once and its stream reset.
async fn drain(body: &mut Incoming, limit: usize) {
    let mut seen = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            seen = seen.saturating_add(data.len());
            if seen > limit {
                return;
            }
        }
    }
}

/// One call, from arrival to its gRPC status: counted in metrics and written as one audit event.
struct Call {
    /// The bounded metric label.
    label: Arc<str>,
    /// The method path, canonical (or [`DENIED`] when it was not).
    method: String,
    protocol: Protocol,
    /// What the request named, when the policy read it.
    named: Named,
    /// The request's size, when known.
    request_bytes: Option<usize>,
    started: Instant,
    metrics: Arc<Metrics>,
    execution_id: Option<Arc<str>>,
}

impl Call {
    /// Answers the call with the agent's own error and finishes it with that code.
    fn refuse(self, code: u16, message: &str) -> Response<ProxyBody> {
        let protocol = self.protocol;
        self.finish(code);
        match protocol {
            Protocol::Grpc => grpc_error(code, message),
            Protocol::Connect => connect::error(code, message),
        }
    }

    /// The status of Admin's answer as far as its headers tell: a gRPC status header, or a
    /// Connect answer's HTTP status.
    fn status(&self, response: &Response<Incoming>) -> Option<u16> {
        match self.protocol {
            Protocol::Grpc => header_status(response.headers()),
            Protocol::Connect => Some(connect::code_of(response.status())),
        }
    }

    /// Counts the call and writes its audit event (never a credential or body: the fields
    /// below are all there is).
    fn finish(self, code: u16) {
        self.metrics.admin_call(&self.label, code);
        tracing::info!(
            target: "audit",
            method = %self.method.trim_start_matches('/'),
            project = self.named.project.as_deref(),
            domain = self.named.domain.as_deref(),
            pod_reported_execution_id = self.execution_id.as_deref(),
            code = code_label(code),
            duration_us = self.started.elapsed().as_micros() as u64,
            request_bytes = self.request_bytes.map(|n| n as u64),
            "admin call"
        );
    }
}

/// The call's path if it is exactly `/<package.Service>/<Method>`: a service name of dotted
/// identifiers with at least a package, a method identifier, nothing else (no query, no empty,
/// `.` or percent-encoded segments). Admin and the allow-list then see the same method the
/// metrics and logs name.
fn canonical_path(uri: &http::Uri) -> Option<String> {
    if uri.query().is_some() {
        return None;
    }
    let path = uri.path();
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let ident = |s: &str| {
        s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let mut names = service.split('.');
    let dotted = service.contains('.') && names.all(ident);
    (dotted && ident(method)).then(|| path.to_string())
}

fn with_credential(
    mut parts: http::request::Parts,
    header: &http::HeaderName,
    bearer: Option<HeaderValue>,
) -> http::request::Parts {
    if let Some(value) = bearer {
        parts.headers.insert(header.clone(), value);
    }
    parts
}

fn header_status(headers: &HeaderMap) -> Option<u16> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// Admin's reason for refusing the credential: `grpc-message`, or a Connect error's `message`.
async fn refusal_reason(protocol: Protocol, response: Response<Incoming>) -> String {
    match protocol {
        Protocol::Grpc => grpc_message(response.headers()),
        Protocol::Connect => read_all(response.into_body(), CONNECT_ERROR_LIMIT)
            .await
            .and_then(|body| connect::error_in(&body).1)
            .filter(|m| !m.is_empty())
            .map(|m| crate::idp::clean_text(&m))
            .unwrap_or_else(|| "unauthenticated".into()),
    }
}

fn grpc_message(headers: &HeaderMap) -> String {
    headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(|m| {
            percent_encoding::percent_decode_str(m)
                .decode_utf8_lossy()
                .into_owned()
        })
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "UNAUTHENTICATED".into())
}

/// What a request body looked like as it streamed past, kept for one replay.
struct Capture {
    limit: usize,
    size: usize,
    chunks: Vec<Bytes>,
    complete: bool,
    overflow: bool,
}

impl Capture {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            size: 0,
            chunks: Vec::new(),
            complete: false,
            overflow: false,
        }
    }

    fn data(&mut self, data: &Bytes) {
        if self.overflow {
            return;
        }
        if self.size + data.len() > self.limit {
            self.overflow = true;
            self.chunks = Vec::new();
            return;
        }
        self.size += data.len();
        self.chunks.push(data.clone());
    }

    /// The whole body, if it ended and fit.
    fn replay(&mut self) -> Option<Bytes> {
        if !self.complete || self.overflow {
            return None;
        }
        let mut out = bytes::BytesMut::with_capacity(self.size);
        for c in &self.chunks {
            out.extend_from_slice(c);
        }
        Some(out.freeze())
    }
}

/// A request body that copies what passes through it into a [`Capture`], and ends at the
/// task's trailers instead of passing them on.
struct Tee<B = Incoming> {
    inner: B,
    capture: Arc<Mutex<Capture>>,
}

impl<B> hyper::body::Body for Tee<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if !frame.is_data() {
                // Request trailers (a gRPC client sends none) are the task's to write and could
                // carry a credential; they end the body here. Admin sees a plain end of stream.
                polled = Poll::Ready(None);
            }
        }
        if let Poll::Ready(ref result) = polled {
            let mut capture = lock(&self.capture);
            match result {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        capture.data(data);
                    }
                }
                Some(Err(_)) => capture.overflow = true,
                None => capture.complete = true,
            }
            // hyper stops polling once the body says it has ended, so a final frame marks the
            // end as well as a `None` would.
            if self.inner.is_end_stream() {
                capture.complete = true;
            }
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that records the call's gRPC status from its trailers and turns an
/// UNAUTHENTICATED there (a streaming call refused part-way) into PERMISSION_DENIED.
struct Trailers {
    inner: Incoming,
    done: Option<Call>,
}

impl Drop for Trailers {
    fn drop(&mut self) {
        // The task went away before the call ended: it saw a cancelled call.
        if let Some(call) = self.done.take() {
            call.finish(code::CANCELLED);
        }
    }
}

impl hyper::body::Body for Trailers {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(frame))) => match frame.into_trailers() {
                Ok(mut trailers) => {
                    if header_status(&trailers) == Some(code::UNAUTHENTICATED) {
                        let reason = grpc_message(&trailers);
                        let message = format!("flyte-auth-agent: FlyteAdmin refused the executor credential during the call: {reason}");
                        set_status(&mut trailers, code::PERMISSION_DENIED, &message);
                    }
                    if let Some(call) = self.done.take() {
                        call.finish(header_status(&trailers).unwrap_or(code::OK));
                    }
                    Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                }
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BoxError::from(e)))),
            Poll::Ready(None) => {
                if let Some(call) = self.done.take() {
                    // A stream that ends without trailers broke the gRPC protocol; clients
                    // report that as INTERNAL.
                    call.finish(code::INTERNAL);
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_replays_only_a_complete_body_within_the_limit() {
        let mut c = Capture::new(10);
        c.data(&Bytes::from_static(b"hello"));
        assert_eq!(c.replay(), None, "not ended yet");
        c.complete = true;
        assert_eq!(c.replay(), Some(Bytes::from_static(b"hello")));
        c.complete = false;
        c.data(&Bytes::from_static(b"world!"));
        c.complete = true;
        assert_eq!(c.replay(), None, "over the limit");
    }

    #[test]
    fn agent_errors_are_trailers_only_grpc_answers() {
        let r = grpc_error(code::PERMISSION_DENIED, "flyte-auth-agent: 100% no\n");
        assert_eq!(r.status(), http::StatusCode::OK);
        assert_eq!(header_status(r.headers()), Some(7));
        assert_eq!(
            r.headers()["grpc-message"],
            "flyte-auth-agent: 100%25 no%0A"
        );
        assert_eq!(grpc_message(r.headers()), "flyte-auth-agent: 100% no\n");
        assert!(hyper::body::Body::is_end_stream(r.body()));
    }

    #[test]
    fn grpc_requests_are_http2_with_a_grpc_content_type() {
        let req = |version, ct: &str| {
            Request::builder()
                .version(version)
                .header(CONTENT_TYPE, ct)
                .body(())
                .unwrap()
        };
        assert!(is_grpc(&req(http::Version::HTTP_2, "application/grpc")));
        assert!(is_grpc(&req(
            http::Version::HTTP_2,
            "application/grpc+proto"
        )));
        assert!(!is_grpc(&req(http::Version::HTTP_11, "application/grpc")));
        assert!(!is_grpc(&req(http::Version::HTTP_2, "application/json")));
    }

    #[test]
    fn only_canonical_method_paths_are_forwarded() {
        let path = |p: &str| canonical_path(&p.parse::<http::Uri>().unwrap());
        for ok in [
            "/flyteidl.service.AdminService/GetExecution",
            "/a.B/C",
            "/grpc.health.v1.Health/Check",
            "/_x.Y_2/Z_3",
        ] {
            assert_eq!(path(ok).as_deref(), Some(ok));
        }
        for bad in [
            "/",
            "//x",
            "/a.B//C",
            "//a.B/C",
            "/a.B/C/",
            "/a.B/C/D",
            "/./a.B/C",
            "/a.B/./C",
            "/a.B/../C",
            "/a.B/C?x=1",
            "/a.B/C?",
            "/a.B%2FC/D",
            "/a.B/C%2FD",
            "/a.B/C%00",
            "/Service/Method",
            "/a..B/C",
            "/.a.B/C",
            "/a.B./C",
            "/a.1B/C",
            "/a.B/1C",
            "/a.B/C-D",
            "*",
        ] {
            assert_eq!(path(bad), None, "{bad}");
        }
    }

    /// A body of one data frame and one trailers frame, as a task could send.
    struct WithTrailers(Vec<Frame<Bytes>>);

    impl hyper::body::Body for WithTrailers {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            let next = (!self.0.is_empty()).then(|| Ok(self.0.remove(0)));
            Poll::Ready(next)
        }
    }

    #[tokio::test]
    async fn request_trailers_end_the_body_and_never_pass() {
        let mut trailers = HeaderMap::new();
        trailers.insert("authorization", HeaderValue::from_static("Bearer forged"));
        let body = WithTrailers(vec![
            Frame::data(Bytes::from_static(b"message")),
            Frame::trailers(trailers),
        ]);
        let capture = Arc::new(Mutex::new(Capture::new(1024)));
        let tee = Tee {
            inner: body,
            capture: capture.clone(),
        };
        let collected = tee.collect().await.unwrap();
        assert!(collected.trailers().is_none());
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"message"));
        // The body still counts as complete, so a retry can replay it.
        assert_eq!(
            lock(&capture).replay(),
            Some(Bytes::from_static(b"message"))
        );
    }
}
