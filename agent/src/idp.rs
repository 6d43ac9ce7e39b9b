//! Talks to identity providers: OIDC discovery (`openidconnect`, issuer match enforced, metadata
//! cached per discovery URL) and the token endpoint (RFC 6749 client credentials or RFC 8693 token
//! exchange), with `client_secret_basic`, `client_secret_post`, `private_key_jwt` or a pre-made
//! client assertion.
//!
//! Every call goes through one `reqwest` client: rustls with the webpki roots plus an optional CA
//! bundle, a timeout on connect and on the whole exchange, no redirects (a token endpoint that
//! redirects is misconfigured, and following it could send credentials elsewhere), and a cap on
//! response size. Errors say which URL failed and how, and never carry a response body: an IdP's
//! body can echo what it was sent.
//!
//! The IdP is trusted to issue tokens, not to be well-formed, so its answers are parsed defensively
//! by one pure function, [`token_from_response`], for every grant: `expires_in` may be a number or
//! a numeric string and is clamped to the configured maximum lifetime, as is a JWT `exp`; a token
//! that is already expired, or whose value is not RFC 6750 `token68`, is an error (and so backs
//! off like any failure) rather than a file; the IdP's own words (`error`, `error_description`, a
//! discovery complaint) are stripped of control characters and cut to [`MAX_IDP_TEXT`] characters
//! before they reach a log line, a 503 body or the status listing. No time arithmetic on an IdP's
//! numbers can overflow.
//!
//! The token request's form is built here too, for both grants: `oauth2` 5 keeps its request
//! builder private and parses answers with its own strict types (`expires_in` only as a number,
//! HTTP 200 only), so the crate is used for its HTTP client trait (discovery) alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use futures_util::future::BoxFuture;
use http::StatusCode;
use oauth2::{AsyncHttpClient, HttpRequest, HttpResponse};
use openidconnect::core::CoreProviderMetadata;
use openidconnect::{DiscoveryError, IssuerUrl};
use tokio::sync::OnceCell;
use url::Url;

use crate::assertion::{AssertionError, AssertionKey};
use crate::chain::causes;
use crate::hosts::local_host;
use crate::lock::lock;
pub use crate::refresh::Lifetimes;
use crate::request::{check_idp_url, ClientAuth, Endpoint, IdpSettings, TokenRequest};
use crate::tls::{load_ca_bundle, CaBundleError};
use crate::token::{jwt_exp, SecretString, Token};

/// Largest IdP response read; discovery documents and token responses are a few kB.
const MAX_BODY: usize = 1 << 20;
/// A `Retry-After` longer than this is clamped: an IdP cannot park the agent for hours.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
const DISCOVERY_SUFFIX: &str = "/.well-known/openid-configuration";
/// Longest access token accepted. Real tokens are a few kB (a JWT with many claims perhaps 10);
/// anything longer is a broken IdP, and would be copied into every file, header and response.
pub const MAX_TOKEN_LEN: usize = 64 * 1024;
/// Most characters of the IdP's own text (`error`, `error_description`, a discovery complaint)
/// that the agent repeats in logs, 503 bodies and the status listing.
pub const MAX_IDP_TEXT: usize = 256;
/// Longest `token_type` accepted (`Bearer`, `DPoP`, `N_A`, or a URI).
const MAX_TOKEN_TYPE_LEN: usize = 128;
/// OAuth2 error codes that name the client's own request or credentials: trying again with the
/// same configuration gives the same answer (RFC 6749 §5.2).
const PERMANENT_ERRORS: [&str; 4] = [
    "invalid_client",
    "unauthorized_client",
    "invalid_scope",
    "invalid_grant",
];
/// OAuth2 error codes that say "later", whatever the HTTP status they come with.
const TRANSIENT_ERRORS: [&str; 2] = ["temporarily_unavailable", "slow_down"];

/// Why a token could not be had from the IdP.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IdpError {
    /// No connection could be made.
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// The URL called.
        url: String,
        /// The transport error.
        reason: String,
    },
    /// The call took longer than the configured timeout.
    #[error("{url} did not answer within {}", humantime::format_duration(*.timeout))]
    Timeout {
        /// The URL called.
        url: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The IdP answered with an HTTP error that is not an OAuth2 error response.
    #[error("{url} answered HTTP {status}{}", retry_note(*.retry_after))]
    Status {
        /// The URL called.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The `Retry-After` the IdP asked for, if any.
        retry_after: Option<Duration>,
    },
    /// The IdP refused the request with an OAuth2 error (bad client, bad scope, …).
    #[error("{url} refused the token request (HTTP {status}): {error}{}", .description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Rejected {
        /// The URL called.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The OAuth2 `error` code.
        error: String,
        /// The OAuth2 `error_description`.
        description: Option<String>,
    },
    /// The response is not what the protocol prescribes.
    #[error("{url} sent a malformed response: {detail}")]
    Malformed {
        /// The URL called.
        url: String,
        /// What is wrong with it (never its content).
        detail: String,
    },
    /// Discovery worked at the HTTP level but its document is unusable (wrong issuer, no token
    /// endpoint, an insecure token endpoint).
    #[error("OIDC discovery at {url} failed: {detail}")]
    Discovery {
        /// The discovery URL.
        url: String,
        /// What is wrong.
        detail: String,
    },
    /// The client secret could not be read.
    #[error("client secret: {0}")]
    Secret(String),
    /// FlyteAdmin could not say how it wants to be authenticated.
    #[error("FlyteAdmin at {endpoint}: {detail}")]
    AdminMetadata {
        /// The Admin endpoint.
        endpoint: String,
        /// What went wrong.
        detail: String,
    },
    /// The private key could not be used to sign a client assertion.
    #[error(transparent)]
    Assertion(#[from] AssertionError),
}

fn retry_note(retry_after: Option<Duration>) -> String {
    retry_after
        .map(|d| format!(" (Retry-After {})", humantime::format_duration(d)))
        .unwrap_or_default()
}

impl IdpError {
    /// How long the IdP asked the agent to wait before trying again.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the IdP refused the request itself, so that asking again with the same
    /// configuration gets the same answer: an OAuth2 error naming the client, scope or grant, or
    /// HTTP 400/401/403. Overload (429), server errors and transport failures are transient.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Rejected { status, error, .. } => {
                !TRANSIENT_ERRORS.contains(&error.as_str())
                    && (matches!(*status, 400 | 401 | 403)
                        || PERMANENT_ERRORS.contains(&error.as_str()))
            }
            Self::Status { status, .. } => matches!(*status, 400 | 401 | 403),
            _ => false,
        }
    }

    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unreachable { .. } => "unreachable",
            Self::Timeout { .. } => "timeout",
            Self::Status { .. } => "http_status",
            Self::Rejected { .. } => "rejected",
            Self::Malformed { .. } => "malformed",
            Self::Discovery { .. } => "discovery",
            Self::Secret(_) => "secret",
            Self::AdminMetadata { .. } => "admin_metadata",
            Self::Assertion(_) => "assertion",
        }
    }
}

/// A transport failure, kept apart from HTTP answers so each maps to its own [`IdpError`].
#[derive(Debug, thiserror::Error)]
enum Transport {
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Failed(String),
    #[error("response larger than {MAX_BODY} bytes")]
    TooLarge,
}

const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// What the token endpoint is asked for.
pub enum Grant {
    /// RFC 6749 §4.4 client credentials.
    ClientCredentials,
    /// RFC 8693 token exchange of a JWT, such as a projected service-account token.
    TokenExchange {
        /// The token exchanged.
        subject_token: SecretString,
    },
}

/// One token request to an IdP, whatever its grant and client authentication.
pub struct Exchange<'a> {
    /// Token endpoint or discovery URL.
    pub endpoint: &'a Endpoint,
    /// OAuth2 client id.
    pub client_id: &'a str,
    /// How the client authenticates.
    pub client_auth: ClientAuth,
    /// What `client_auth` needs: the client secret, the PEM key (`private_key_jwt`) or the
    /// assertion itself (`jwt-bearer`); none for a public client.
    pub credential: Option<&'a SecretString>,
    /// The grant.
    pub grant: Grant,
    /// Scopes to request.
    pub scopes: &'a [String],
    /// Audience to request.
    pub audience: Option<&'a str>,
}

impl Exchange<'_> {
    fn credential(&self) -> &SecretString {
        static NONE: std::sync::LazyLock<SecretString> =
            std::sync::LazyLock::new(|| SecretString::new(""));
        self.credential.unwrap_or(&NONE)
    }

    /// The client assertion the authentication method calls for, if any.
    fn assertion(&self, token_url: &str) -> Result<Option<String>, IdpError> {
        match self.client_auth {
            ClientAuth::PrivateKeyJwt => AssertionKey::from_pem(self.credential())?
                .sign(self.client_id, token_url)
                .map(Some)
                .map_err(IdpError::from),
            ClientAuth::JwtBearer => Ok(Some(self.credential().expose().to_string())),
            _ => Ok(None),
        }
    }
}

#[derive(Debug)]
struct Metadata {
    token_endpoint: Url,
}

/// The client for every IdP this agent talks to.
pub struct Idp {
    http: reqwest::Client,
    timeout: Duration,
    allow_insecure_http: bool,
    lifetimes: Lifetimes,
    discovered: Mutex<HashMap<Url, Arc<OnceCell<Arc<Metadata>>>>>,
}

/// The HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The CA bundle could not be read or parsed.
    #[error(transparent)]
    CaBundle(#[from] CaBundleError),
    /// The TLS/HTTP stack refused the settings.
    #[error("HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

impl Idp {
    /// Builds the client; `lifetimes` bounds the lifetime of every token it mints.
    pub fn new(settings: &IdpSettings, lifetimes: Lifetimes) -> Result<Self, BuildError> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("flyte-auth-agent/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &settings.ca_file {
            for cert in load_ca_bundle(path)? {
                builder = builder.add_root_certificate(
                    reqwest::Certificate::from_der(&cert).map_err(BuildError::Client)?,
                );
            }
        }
        let http = builder.build().map_err(BuildError::Client)?;
        Ok(Self {
            http,
            timeout: settings.timeout,
            allow_insecure_http: settings.allow_insecure_http,
            lifetimes,
            discovered: Mutex::default(),
        })
    }

    /// Mints a token for `request`, authenticating with `secret` (client secret or PEM key).
    pub async fn token(
        &self,
        request: &TokenRequest,
        secret: &SecretString,
    ) -> Result<Token, IdpError> {
        self.exchange(&Exchange {
            endpoint: &request.endpoint,
            client_id: &request.client_id,
            client_auth: request.client_auth,
            credential: Some(secret),
            grant: Grant::ClientCredentials,
            scopes: &request.scopes,
            audience: request.audience.as_deref(),
        })
        .await
    }

    /// Performs one token exchange: any grant, any client authentication.
    pub async fn exchange(&self, x: &Exchange<'_>) -> Result<Token, IdpError> {
        let token_url = self.token_endpoint(x.endpoint).await?;
        let request = token_request(x, &token_url)?.map_err(|e| IdpError::Malformed {
            url: token_url.to_string(),
            detail: format!("cannot build the token request: {e}"),
        })?;
        let issued_at = SystemTime::now();
        let response = self
            .send(request)
            .await
            .map_err(|t| self.transport_error(t, token_url.to_string()))?;
        token_from_response(token_url.as_str(), &response, issued_at, self.lifetimes)
    }

    fn transport_error(&self, t: Transport, url: String) -> IdpError {
        match t {
            Transport::Timeout => IdpError::Timeout {
                url,
                timeout: self.timeout,
            },
            Transport::TooLarge => IdpError::Malformed {
                url,
                detail: t.to_string(),
            },
            Transport::Failed(reason) => IdpError::Unreachable { url, reason },
        }
    }

    async fn token_endpoint(&self, endpoint: &Endpoint) -> Result<Url, IdpError> {
        match endpoint {
            Endpoint::Token(url) => Ok(url.clone()),
            Endpoint::Discovery(url) => {
                let cell = {
                    let mut map = lock(&self.discovered);
                    map.entry(url.clone()).or_default().clone()
                };
                // Concurrent first requests share one discovery; a failure is not cached.
                let meta = cell.get_or_try_init(|| self.discover(url)).await?;
                Ok(meta.token_endpoint.clone())
            }
        }
    }

    async fn discover(&self, url: &Url) -> Result<Arc<Metadata>, IdpError> {
        let text = url.as_str();
        let issuer = text
            .strip_suffix(DISCOVERY_SUFFIX)
            .unwrap_or(text.trim_end_matches('/'));
        let discovery_url = format!("{issuer}{DISCOVERY_SUFFIX}");
        // Details can quote the document (a wrong issuer), so they are the IdP's words.
        let failed = |detail: String| IdpError::Discovery {
            url: discovery_url.clone(),
            detail: clean_text(&detail),
        };
        let issuer = IssuerUrl::new(issuer.to_string()).map_err(|e| failed(e.to_string()))?;
        let call = Recorder::new(self);
        let meta = CoreProviderMetadata::discover_async(issuer, &call)
            .await
            .map_err(|e| {
                let retry_after = call.seen().and_then(|(_, r)| r);
                match e {
                    DiscoveryError::Request(t) => self.transport_error(t.0, discovery_url.clone()),
                    DiscoveryError::Response(status, _body, _) => IdpError::Status {
                        url: discovery_url.clone(),
                        status: status.as_u16(),
                        retry_after,
                    },
                    DiscoveryError::Parse(e) => IdpError::Malformed {
                        url: discovery_url.clone(),
                        detail: describe_json_error(&e),
                    },
                    DiscoveryError::Validation(detail) | DiscoveryError::Other(detail) => {
                        failed(detail)
                    }
                    DiscoveryError::UrlParse(e) => failed(e.to_string()),
                    other => failed(other.to_string()),
                }
            })?;
        let token_endpoint = meta
            .token_endpoint()
            .ok_or_else(|| failed("the document names no token_endpoint".into()))?
            .url()
            .clone();
        check_idp_url(&token_endpoint, self.allow_insecure_http).map_err(failed)?;
        stays_off_the_pod(url, &token_endpoint).map_err(failed)?;
        Ok(Arc::new(Metadata { token_endpoint }))
    }

    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, Transport> {
        let request =
            reqwest::Request::try_from(request).map_err(|e| Transport::Failed(e.to_string()))?;
        let mut response = self.http.execute(request).await.map_err(reqwest_error)?;
        let mut out = http::Response::builder().status(response.status());
        if let Some(headers) = out.headers_mut() {
            headers.extend(
                response
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone())),
            );
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(reqwest_error)? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(Transport::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        out.body(body).map_err(|e| Transport::Failed(e.to_string()))
    }
}

/// The HTTP request of one token exchange: RFC 6749 §4.4 client credentials or RFC 8693 token
/// exchange, with the client authentication `x` asks for.
fn token_request(
    x: &Exchange<'_>,
    token_url: &Url,
) -> Result<Result<HttpRequest, http::Error>, IdpError> {
    let assertion = x.assertion(token_url.as_str())?;
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    match &x.grant {
        Grant::ClientCredentials => {
            form.append_pair("grant_type", "client_credentials");
        }
        Grant::TokenExchange { subject_token } => {
            form.append_pair("grant_type", TOKEN_EXCHANGE_GRANT)
                .append_pair("subject_token", subject_token.expose())
                .append_pair("subject_token_type", JWT_TOKEN_TYPE);
        }
    }
    if !x.scopes.is_empty() {
        form.append_pair("scope", &x.scopes.join(" "));
    }
    if let Some(audience) = x.audience {
        form.append_pair("audience", audience);
    }
    let mut request = http::Request::builder()
        .method(http::Method::POST)
        .uri(token_url.as_str())
        .header(http::header::ACCEPT, "application/json")
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        );
    match x.client_auth {
        ClientAuth::ClientSecretBasic => {
            // RFC 6749 §2.3.1: form-urlencode each part before base64.
            let enc =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let basic = base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                enc(x.client_id),
                enc(x.credential().expose())
            ));
            request = request.header(http::header::AUTHORIZATION, format!("Basic {basic}"));
        }
        ClientAuth::ClientSecretPost => {
            form.append_pair("client_id", x.client_id)
                .append_pair("client_secret", x.credential().expose());
        }
        ClientAuth::PrivateKeyJwt | ClientAuth::JwtBearer | ClientAuth::None => {
            form.append_pair("client_id", x.client_id);
        }
    }
    if let Some(assertion) = assertion {
        form.append_pair("client_assertion_type", CLIENT_ASSERTION_TYPE)
            .append_pair("client_assertion", &assertion);
    }
    Ok(request.body(form.finish().into_bytes()))
}

/// The HTTP client handed to `openidconnect` for one discovery: it sends through the agent's
/// client and remembers the last status and `Retry-After`, which the crate's errors drop.
struct Recorder<'a> {
    idp: &'a Idp,
    seen: Mutex<Option<(StatusCode, Option<Duration>)>>,
}

impl<'a> Recorder<'a> {
    fn new(idp: &'a Idp) -> Self {
        Self {
            idp,
            seen: Mutex::new(None),
        }
    }

    fn seen(&self) -> Option<(StatusCode, Option<Duration>)> {
        *lock(&self.seen)
    }
}

// A named type rather than a closure: the crates' `AsyncHttpClient<'c>` bound must hold for every
// lifetime, which a borrowing closure cannot show, and the resulting future must be `Send`.
impl<'c> AsyncHttpClient<'c> for Recorder<'_> {
    type Error = TransportError;
    type Future = BoxFuture<'c, Result<HttpResponse, TransportError>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let response = self.idp.send(request).await.map_err(TransportError)?;
            let retry_after = response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            *lock(&self.seen) = Some((response.status(), retry_after));
            Ok(response)
        })
    }
}

/// The error type handed to `openidconnect`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(Transport);

fn reqwest_error(e: reqwest::Error) -> Transport {
    if e.is_timeout() {
        return Transport::Timeout;
    }
    // The chain's innermost cause ("Connection refused", "invalid peer certificate") is the
    // useful part; reqwest's own text repeats the URL we already report.
    let e = e.without_url();
    let reason = causes(&e)
        .last()
        .map_or_else(String::new, |c| c.to_string());
    // A TLS failure can quote the peer's certificate (the names it is valid for): the IdP's words.
    Transport::Failed(clean_text(&reason))
}

/// A JSON error's path and category, without the offending value (it may be a token).
fn describe_json_error(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    use serde_json::error::Category;
    let what = match e.inner().classify() {
        Category::Syntax => "invalid JSON",
        Category::Eof => "truncated JSON",
        Category::Data => "unexpected value",
        Category::Io => "read error",
    };
    // serde names a missing field by our own struct's field name, never by a value.
    let message = e.inner().to_string();
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|m| m.split('`').next())
    {
        return format!("missing field {field}");
    }
    let path = e.path().to_string();
    if path == "." {
        what.to_string()
    } else {
        format!("{what} at {path}")
    }
}

/// Turns a token endpoint's answer into a token, or into an error that names the problem without
/// quoting a token. This is the whole of the agent's trust in an IdP answer:
///
/// - 429 and 5xx are [`IdpError::Status`] with their `Retry-After` (some IdPs add an OAuth2 error
///   body to a 429; it is about when to come back all the same);
/// - other non-2xx answers are [`IdpError::Rejected`] when the body is an OAuth2 error (its
///   `error` and `error_description` cleaned by [`clean_text`]), else [`IdpError::Status`];
/// - a 2xx answer must be a JSON object with a string `access_token` in RFC 6750 `token68` syntax
///   of at most [`MAX_TOKEN_LEN`] bytes and a `token_type`; `expires_in` may be absent, a
///   non-negative number or a string holding one, and is cut to `lifetimes.max`;
/// - the lifetime is the shorter of `expires_in` and the JWT `exp` (when the token is a JWT
///   with one), else `lifetimes.default`, never above `lifetimes.max`; a token whose `exp` is not
///   after `issued_at` is an error.
pub fn token_from_response(
    url: &str,
    response: &HttpResponse,
    issued_at: SystemTime,
    lifetimes: Lifetimes,
) -> Result<Token, IdpError> {
    let status = response.status();
    let malformed = |detail: String| IdpError::Malformed {
        url: url.to_string(),
        detail,
    };
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        return Err(IdpError::Status {
            url: url.to_string(),
            status: status.as_u16(),
            retry_after: retry_after(response),
        });
    }
    if !status.is_success() {
        return Err(match serde_json::from_slice::<WireError>(response.body()) {
            Ok(e) => IdpError::Rejected {
                url: url.to_string(),
                status: status.as_u16(),
                error: clean_text(&e.error),
                description: e
                    .error_description
                    .as_ref()
                    .and_then(|d| d.as_str())
                    .map(clean_text)
                    .filter(|d| !d.is_empty()),
            },
            Err(_) => IdpError::Status {
                url: url.to_string(),
                status: status.as_u16(),
                retry_after: retry_after(response),
            },
        });
    }
    let wire: WireToken = serde_path_to_error::deserialize(
        &mut serde_json::Deserializer::from_slice(response.body()),
    )
    .map_err(|e| malformed(describe_json_error(&e)))?;
    check_token68(&wire.access_token).map_err(malformed)?;
    let token_type = token_type(&wire.token_type).map_err(malformed)?;
    let expires_in = expires_in(wire.expires_in.as_ref()).map_err(malformed)?;
    let lifetime = lifetime(
        issued_at,
        expires_in,
        jwt_exp(&wire.access_token),
        lifetimes,
    )
    .map_err(malformed)?;
    let expires_at = issued_at.checked_add(lifetime).ok_or_else(|| {
        malformed("the token's expiry is beyond what this system's clock can hold".into())
    })?;
    Ok(Token {
        access_token: SecretString::new(wire.access_token),
        token_type,
        issued_at,
        expires_at,
    })
}

/// The fields of a token response the agent reads, each typed as loosely as an IdP may send it;
/// [`token_from_response`] then checks them.
#[derive(serde::Deserialize)]
struct WireToken {
    access_token: String,
    token_type: String,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

/// An RFC 6749 §5.2 error response; a description that is not a string is ignored.
#[derive(serde::Deserialize)]
struct WireError {
    error: String,
    #[serde(default)]
    error_description: Option<serde_json::Value>,
}

fn retry_after(response: &HttpResponse) -> Option<Duration> {
    response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
}

/// Whether `token` is an RFC 6750 §2.1 `b64token` (`token68`): `[A-Za-z0-9-._~+/]+=*`, at most
/// [`MAX_TOKEN_LEN`] bytes. A value outside it (a newline, a control character, a space) could
/// split a header or a line of the token file, so it is never written or served.
pub fn check_token68(token: &str) -> Result<(), String> {
    const WHAT: &str = "access_token is not an RFC 6750 token68 value";
    if token.is_empty() {
        return Err("access_token is empty".into());
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(format!(
            "access_token is {} bytes, more than the {MAX_TOKEN_LEN} accepted",
            token.len()
        ));
    }
    let bytes = token.as_bytes();
    let body = bytes.iter().rposition(|&b| b != b'=').map_or(0, |i| i + 1);
    if body == 0 {
        return Err(format!("{WHAT}: it is only padding"));
    }
    let allowed = |b: &u8| b.is_ascii_alphanumeric() || b"-._~+/".contains(b);
    match bytes[..body].iter().position(|b| !allowed(b)) {
        // The position, never the character: the rest of the value may be a real token.
        Some(i) => Err(format!("{WHAT}: byte {i} is not allowed")),
        None => Ok(()),
    }
}

/// `token_type`, with the registered names in their usual spelling (RFC 6749 §7.1 makes it
/// case-insensitive) and anything else only if it is a short run of visible ASCII.
fn token_type(raw: &str) -> Result<String, String> {
    if raw.eq_ignore_ascii_case("bearer") {
        return Ok("Bearer".into());
    }
    if raw.eq_ignore_ascii_case("mac") {
        return Ok("MAC".into());
    }
    if raw.is_empty()
        || raw.len() > MAX_TOKEN_TYPE_LEN
        || !raw.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(format!(
            "token_type is not a token type name (1 to {MAX_TOKEN_TYPE_LEN} visible ASCII characters)"
        ));
    }
    Ok(raw.to_string())
}

/// `expires_in` as the IdP sent it: absent, `null` and `0` state nothing; a non-negative number,
/// or a string holding one (some IdPs send `"3600"`), is whole seconds (a fraction is dropped,
/// a huge value saturates and is cut later). Anything else is an error naming its type.
fn expires_in(value: Option<&serde_json::Value>) -> Result<Option<Duration>, String> {
    use serde_json::Value;
    let secs = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => number_secs(n.as_u64(), n.as_f64()),
        Some(Value::String(s)) => {
            let s = s.trim();
            match s.parse::<u64>() {
                Ok(u) => Ok(u),
                // `f64::from_str` also takes "inf" and "NaN"; `number_secs` refuses them.
                Err(_) => match s.parse::<f64>() {
                    Ok(f) => number_secs(None, Some(f)),
                    Err(_) => Err("expires_in is a string that is not a number".to_string()),
                },
            }
        }
        Some(other) => Err(format!("expires_in is {}, not a number", json_type(other))),
    }?;
    Ok((secs > 0).then(|| Duration::from_secs(secs)))
}

fn number_secs(int: Option<u64>, float: Option<f64>) -> Result<u64, String> {
    match (int, float) {
        (Some(u), _) => Ok(u),
        (None, Some(f)) if f.is_finite() && f >= 0.0 => Ok(f as u64),
        (None, Some(f)) if f < 0.0 => Err(format!("expires_in is negative ({f})")),
        _ => Err("expires_in is not a finite number".into()),
    }
}

fn json_type(v: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// How long a token minted at `issued_at` is valid: the shorter of `expires_in` and the time left
/// until the JWT's `exp`, else `lifetimes.default`, and never more than `lifetimes.max`. A JWT
/// whose `exp` is not after `issued_at` is an error: handing it out would only make every
/// reader's call fail, and refreshing it at once would hammer the IdP.
fn lifetime(
    issued_at: SystemTime,
    expires_in: Option<Duration>,
    jwt_exp: Option<i64>,
    lifetimes: Lifetimes,
) -> Result<Duration, String> {
    let until_exp = match jwt_exp {
        None => None,
        Some(exp) => {
            // Nanoseconds in i128: any i64 `exp` and any clock reading fit, so nothing overflows.
            const NANOS: i128 = 1_000_000_000;
            let now = match issued_at.duration_since(UNIX_EPOCH) {
                Ok(d) => d.as_nanos() as i128,
                Err(e) => -(e.duration().as_nanos() as i128),
            };
            let left = i128::from(exp) * NANOS - now;
            if left <= 0 {
                return Err(format!(
                    "the access token was already expired when issued (its exp is {} s in the past)",
                    (-left) / NANOS
                ));
            }
            // left < 2^63 s, so the seconds fit a u64 and the remainder a u32.
            Some(Duration::new((left / NANOS) as u64, (left % NANOS) as u32))
        }
    };
    let stated = match (expires_in, until_exp) {
        (Some(a), Some(b)) => a.min(b),
        (Some(d), None) | (None, Some(d)) => d,
        (None, None) => lifetimes.default,
    };
    Ok(stated.min(lifetimes.max))
}

/// The IdP's own words made fit to repeat: control and invisible formatting characters (line
/// breaks, escape sequences, bidi overrides) dropped, line breaks and tabs becoming spaces, and
/// at most [`MAX_IDP_TEXT`] characters (the last one `…` when it was cut).
pub fn clean_text(text: &str) -> String {
    let invisible = |c: char| {
        c.is_control()
            || matches!(c, '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
    };
    let mut out = String::new();
    let mut count = 0;
    for c in text.chars() {
        let c = match c {
            '\n' | '\r' | '\t' => ' ',
            c if invisible(c) => continue,
            c => c,
        };
        if count == MAX_IDP_TEXT {
            out.pop();
            out.push('…');
            break;
        }
        out.push(c);
        count += 1;
    }
    out
}

/// Parses `Retry-After`: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    let delay = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(SystemTime::now())
            .unwrap_or_default(),
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// Refuses a discovered token endpoint on the pod's own network (loopback, link-local) when the
/// issuer is elsewhere: the client secret would go to whatever listens there, the task itself or
/// the cloud's metadata service. An issuer on loopback (a test, `dev`) may name one.
fn stays_off_the_pod(discovery: &Url, token_endpoint: &Url) -> Result<(), String> {
    match (
        discovery.host_str().and_then(local_host),
        token_endpoint.host_str().and_then(local_host),
    ) {
        (None, Some(kind)) => Err(format!(
            "the document names a token endpoint on {kind}, but the issuer is not on the pod's own network"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_discovered_token_endpoint_stays_off_the_pod() {
        let url = |s: &str| Url::parse(s).unwrap();
        for (issuer, token, ok) in [
            (
                "https://idp.example.com",
                "https://idp.example.com/token",
                true,
            ),
            (
                "https://idp.example.com",
                "http://127.0.0.1:9911/token",
                false,
            ),
            (
                "https://idp.example.com",
                "http://169.254.169.254/token",
                false,
            ),
            ("https://idp.example.com", "https://localhost/token", false),
            ("http://127.0.0.1:4444", "http://127.0.0.1:4444/token", true),
            (
                "http://localhost:4444",
                "https://idp.example.com/token",
                true,
            ),
        ] {
            let got = stays_off_the_pod(&url(issuer), &url(token));
            assert_eq!(got.is_ok(), ok, "{issuer} -> {token}: {got:?}");
        }
        let message = stays_off_the_pod(
            &url("https://idp.example.com"),
            &url("http://169.254.169.254/"),
        )
        .unwrap_err();
        assert!(message.contains("link-local"), "{message}");
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 2 "), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon"), None);
        let past = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(60));
        assert_eq!(parse_retry_after(&past), Some(Duration::ZERO));
        let future = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        let d = parse_retry_after(&future).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
    }

    const LIFETIMES: Lifetimes = Lifetimes {
        default: Duration::from_secs(300),
        max: Duration::from_secs(365 * 86_400),
    };

    fn jwt(claims: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b64(r#"{"alg":"RS256"}"#), b64(claims))
    }

    fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> HttpResponse {
        let mut r = http::Response::builder().status(status);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(body.as_bytes().to_vec()).unwrap()
    }

    fn parse_at(at: SystemTime, status: u16, body: &str) -> Result<Token, IdpError> {
        token_from_response(
            "https://idp/token",
            &answer(status, &[], body),
            at,
            LIFETIMES,
        )
    }

    fn parse(status: u16, body: &str) -> Result<Token, IdpError> {
        parse_at(UNIX_EPOCH + Duration::from_secs(1000), status, body)
    }

    fn lifetime_secs(body: &str) -> u64 {
        match parse(200, body) {
            Ok(t) => t.lifetime().as_secs(),
            Err(e) => panic!("{body}: {e}"),
        }
    }

    fn malformed(body: &str) -> String {
        match parse(200, body) {
            Err(IdpError::Malformed { detail, .. }) => detail,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn lifetime_is_the_shorter_of_expires_in_and_jwt_exp_else_the_default() {
        let exp2000 = jwt(r#"{"exp":2000}"#);
        let body = |token: &str, expires_in: &str| {
            format!(r#"{{"access_token":"{token}","token_type":"Bearer"{expires_in}}}"#)
        };
        assert_eq!(lifetime_secs(&body(&exp2000, r#","expires_in":60"#)), 60);
        assert_eq!(
            lifetime_secs(&body(&exp2000, r#","expires_in":5000"#)),
            1000
        );
        assert_eq!(lifetime_secs(&body(&exp2000, "")), 1000);
        assert_eq!(lifetime_secs(&body(&exp2000, r#","expires_in":0"#)), 1000);
        assert_eq!(lifetime_secs(&body("opaque", "")), 300);
        assert_eq!(lifetime_secs(&body("opaque", r#","expires_in":null"#)), 300);
    }

    #[test]
    fn expires_in_may_be_a_numeric_string_and_is_clamped() {
        let year = LIFETIMES.max.as_secs();
        for (expires_in, secs) in [
            ("3600", 3600),
            (r#""3600""#, 3600),
            (r#"" 3600 ""#, 3600),
            ("3600.9", 3600),
            (r#""3600.9""#, 3600),
            ("9223372036854775808", year),
            ("18446744073709551615", year),
            ("1e300", year),
            (r#""1e300""#, year),
            ("1000000000000", year),
        ] {
            let body = format!(
                r#"{{"access_token":"t","token_type":"bearer","expires_in":{expires_in}}}"#
            );
            assert_eq!(lifetime_secs(&body), secs, "{expires_in}");
        }
    }

    #[test]
    fn bad_expires_in_is_named() {
        for (expires_in, detail) in [
            ("-5", "expires_in is negative (-5)"),
            ("-0.5", "expires_in is negative (-0.5)"),
            (r#""soon""#, "expires_in is a string that is not a number"),
            (r#""inf""#, "expires_in is not a finite number"),
            (r#""-1""#, "expires_in is negative (-1)"),
            ("true", "expires_in is a boolean, not a number"),
            ("[1]", "expires_in is an array, not a number"),
            ("{}", "expires_in is an object, not a number"),
        ] {
            let body = format!(
                r#"{{"access_token":"t","token_type":"Bearer","expires_in":{expires_in}}}"#
            );
            assert_eq!(malformed(&body), detail, "{expires_in}");
        }
    }

    #[test]
    fn huge_jwt_exp_is_clamped_not_a_crash() {
        for exp in ["18446744073709551615", "9223372036854775807", "1e308"] {
            let token = jwt(&format!(r#"{{"exp":{exp}}}"#));
            let body = format!(r#"{{"access_token":"{token}","token_type":"Bearer"}}"#);
            assert_eq!(lifetime_secs(&body), LIFETIMES.max.as_secs(), "{exp}");
        }
    }

    #[test]
    fn a_token_expired_when_minted_is_an_error() {
        for (claims, expires_in) in [
            (r#"{"exp":999}"#, ""),
            (r#"{"exp":1000}"#, ""),
            (r#"{"exp":-9223372036854775808}"#, ""),
            (r#"{"exp":10}"#, r#","expires_in":0"#),
            (r#"{"exp":10}"#, r#","expires_in":3600"#),
        ] {
            let body = format!(
                r#"{{"access_token":"{}","token_type":"Bearer"{expires_in}}}"#,
                jwt(claims)
            );
            let detail = malformed(&body);
            assert!(
                detail.contains("already expired when issued"),
                "{claims}: {detail}"
            );
        }
    }

    #[test]
    fn only_token68_values_are_accepted() {
        for ok in ["abc", "a-b.c_d~e+f/g", "YWJj==", "eyJ.eyJ.sig"] {
            assert_eq!(check_token68(ok), Ok(()), "{ok}");
        }
        for (bad, detail) in [
            ("", "access_token is empty"),
            (
                "==",
                "access_token is not an RFC 6750 token68 value: it is only padding",
            ),
            (
                "abc\n",
                "access_token is not an RFC 6750 token68 value: byte 3 is not allowed",
            ),
            (
                "a b",
                "access_token is not an RFC 6750 token68 value: byte 1 is not allowed",
            ),
            (
                "a=b",
                "access_token is not an RFC 6750 token68 value: byte 1 is not allowed",
            ),
            (
                "\u{1b}[31m",
                "access_token is not an RFC 6750 token68 value: byte 0 is not allowed",
            ),
            (
                "tök",
                "access_token is not an RFC 6750 token68 value: byte 1 is not allowed",
            ),
        ] {
            assert_eq!(check_token68(bad).unwrap_err(), detail, "{bad:?}");
        }
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        assert!(check_token68(&long)
            .unwrap_err()
            .contains("more than the 65536"));
        assert_eq!(check_token68(&"a".repeat(MAX_TOKEN_LEN)), Ok(()));
        // Through the parser: a JSON-escaped newline is refused and the value is not quoted.
        let detail = malformed(r#"{"access_token":"secret-part\nmore","token_type":"Bearer"}"#);
        assert!(
            detail.contains("byte 11") && !detail.contains("secret-part"),
            "{detail}"
        );
    }

    #[test]
    fn token_type_is_normalised_or_refused() {
        let token_type = |t: &str| {
            parse(
                200,
                &format!(r#"{{"access_token":"t","token_type":"{t}"}}"#),
            )
            .map(|t| t.token_type)
        };
        assert_eq!(token_type("bearer").unwrap(), "Bearer");
        assert_eq!(token_type("BEARER").unwrap(), "Bearer");
        assert_eq!(token_type("DPoP").unwrap(), "DPoP");
        assert!(token_type("a b").is_err());
        assert!(token_type("").is_err());
        assert!(token_type("\\u001b[2J").is_err());
    }

    #[test]
    fn idp_text_is_cleaned_and_bounded() {
        assert_eq!(clean_text("no such client"), "no such client");
        assert_eq!(clean_text("a\nb\tc\u{1b}[2Jd\u{202E}e\u{7f}"), "a b c[2Jde");
        let long = clean_text(&"\u{7}x".repeat(10_000));
        assert_eq!(long.chars().count(), MAX_IDP_TEXT);
        assert!(long.ends_with('…'));
        assert_eq!(
            clean_text(&"y".repeat(MAX_IDP_TEXT)),
            "y".repeat(MAX_IDP_TEXT)
        );
        // A 10 kB description full of control characters, as a 400 answer.
        let description = "\u{1b}[31mevil\r\n".repeat(1000);
        let body =
            serde_json::json!({"error": "invalid_client\u{0}", "error_description": description});
        let e = parse(400, &body.to_string()).unwrap_err();
        let text = e.to_string();
        assert!(text.chars().all(|c| !c.is_control()), "{text:?}");
        match &e {
            IdpError::Rejected {
                error, description, ..
            } => {
                assert_eq!(error, "invalid_client");
                assert_eq!(
                    description.as_deref().unwrap().chars().count(),
                    MAX_IDP_TEXT
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(e.is_permanent());
    }

    #[test]
    fn token_errors_keep_retry_after_and_oauth_codes() {
        let wait = &[("Retry-After", "4")];
        let r = |status, headers, body| {
            token_from_response(
                "https://idp/token",
                &answer(status, headers, body),
                SystemTime::now(),
                LIFETIMES,
            )
            .unwrap_err()
        };
        let e = r(429, wait, r#"{"error":"slow_down"}"#);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(4)), "{e}");
        assert_eq!(
            e.to_string(),
            "https://idp/token answered HTTP 429 (Retry-After 4s)"
        );
        assert!(!e.is_permanent());
        let e = r(503, &[], "<html>busy</html>");
        assert!(matches!(e, IdpError::Status { status: 503, .. }), "{e}");
        assert!(!e.is_permanent());
        let e = r(
            401,
            &[],
            r#"{"error":"invalid_client","error_description":"no such client"}"#,
        );
        assert_eq!(
            e.to_string(),
            "https://idp/token refused the token request (HTTP 401): invalid_client: no such client"
        );
        assert!(e.is_permanent());
        let e = r(400, &[], "not json");
        assert_eq!(e.to_string(), "https://idp/token answered HTTP 400");
        assert!(e.is_permanent());
        // An OAuth2 code that names the client is permanent whatever the status…
        assert!(r(404, &[], r#"{"error":"invalid_grant"}"#).is_permanent());
        // …and one that says "later" is not, even with a 400.
        assert!(!r(400, &[], r#"{"error":"temporarily_unavailable"}"#).is_permanent());
        assert!(!r(404, &[], "").is_permanent());
    }

    #[test]
    fn success_bodies_must_be_token_responses() {
        assert_eq!(malformed("not json"), "invalid JSON");
        assert_eq!(
            malformed(r#"{"token_type":"Bearer"}"#),
            "missing field access_token"
        );
        assert_eq!(
            malformed(r#"{"access_token":"t"}"#),
            "missing field token_type"
        );
        assert_eq!(
            malformed(r#"{"access_token":7,"token_type":"Bearer"}"#),
            "unexpected value at access_token"
        );
    }

    #[test]
    fn json_errors_never_carry_the_value() {
        let text = malformed(r#"{"access_token": 12345678, "token_type": "secret-looking"}"#);
        assert_eq!(text, "unexpected value at access_token");
        assert!(!text.contains("12345678"));
    }
}
