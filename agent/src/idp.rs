//! Talks to identity providers: OIDC discovery (`openidconnect`, issuer match enforced, metadata
//! cached per discovery URL) and the OAuth2 client-credentials grant (`oauth2`), with
//! `client_secret_basic`, `client_secret_post` or `private_key_jwt` client authentication.
//!
//! Every call goes through one `reqwest` client: rustls with the webpki roots plus an optional CA
//! bundle, a timeout on connect and on the whole exchange, no redirects (a token endpoint that
//! redirects is misconfigured, and following it could send credentials elsewhere), and a cap on
//! response size. Errors say which URL failed and how, and never carry a response body: an IdP's
//! body can echo what it was sent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use futures_util::future::BoxFuture;
use http::StatusCode;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use oauth2::basic::{BasicClient, BasicErrorResponse, BasicTokenResponse, BasicTokenType};
use oauth2::{
    AsyncHttpClient, AuthType, ClientId, ClientSecret, HttpRequest, HttpResponse,
    RequestTokenError, Scope, TokenResponse, TokenUrl,
};
use openidconnect::core::CoreProviderMetadata;
use openidconnect::{DiscoveryError, IssuerUrl};
use tokio::sync::OnceCell;
use url::Url;

use crate::config::{check_idp_url, ClientAuth, Endpoint, IdpSettings, TokenRequest};
use crate::token::{jwt_expiry, SecretString, Token};

/// Largest IdP response read; discovery documents and token responses are a few kB.
const MAX_BODY: usize = 1 << 20;
/// A `Retry-After` longer than this is clamped: an IdP cannot park the agent for hours.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
const DISCOVERY_SUFFIX: &str = "/.well-known/openid-configuration";

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
    #[error("client assertion: {0}")]
    Assertion(String),
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

/// The private key behind `private_key_jwt`, parsed once to check it and pick the algorithm.
pub struct AssertionKey {
    key: EncodingKey,
    alg: Algorithm,
}

#[derive(serde::Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    jti: String,
    iat: u64,
    exp: u64,
}

impl AssertionKey {
    /// Parses a PEM private key: RSA (signs RS256) or P-256 (signs ES256).
    pub fn from_pem(pem: &SecretString) -> Result<Self, IdpError> {
        let pem = pem.expose().as_bytes();
        let candidates = [
            EncodingKey::from_rsa_pem(pem).map(|k| (k, Algorithm::RS256)),
            EncodingKey::from_ec_pem(pem).map(|k| (k, Algorithm::ES256)),
        ];
        for (key, alg) in candidates.into_iter().flatten() {
            let key = Self { key, alg };
            // Parsing alone accepts some keys the signer then refuses; a trial signature is the
            // only reliable check.
            if key.sign("probe", "probe").is_ok() {
                return Ok(key);
            }
        }
        Err(IdpError::Assertion(
            "the client secret is not a PEM RSA or P-256 private key".into(),
        ))
    }

    /// Signs an RFC 7523 client assertion for `client_id`, addressed to `audience`.
    fn sign(&self, client_id: &str, audience: &str) -> Result<String, IdpError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = AssertionClaims {
            iss: client_id,
            sub: client_id,
            aud: audience,
            jti: format!("{:032x}", rand::random::<u128>()),
            iat: now,
            exp: now + 60,
        };
        jsonwebtoken::encode(&Header::new(self.alg), &claims, &self.key)
            .map_err(|e| IdpError::Assertion(format!("signing failed: {e}")))
    }
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
                .map(Some),
            ClientAuth::JwtBearer => Ok(Some(self.credential().expose().to_string())),
            _ => Ok(None),
        }
    }
}

type TokenResult =
    Result<BasicTokenResponse, RequestTokenError<TransportError, BasicErrorResponse>>;

#[derive(Debug)]
struct Metadata {
    token_endpoint: Url,
}

/// The client for every IdP this agent talks to.
pub struct Idp {
    http: reqwest::Client,
    timeout: Duration,
    allow_insecure_http: bool,
    default_lifetime: Duration,
    discovered: Mutex<HashMap<Url, Arc<OnceCell<Arc<Metadata>>>>>,
}

/// The HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The CA bundle could not be read or parsed.
    #[error("CA bundle {path}: {reason}")]
    CaBundle {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The TLS/HTTP stack refused the settings.
    #[error("HTTP client: {0}")]
    Client(String),
}

impl Idp {
    /// Builds the client. `default_lifetime` is assumed for tokens that state no expiry.
    pub fn new(settings: &IdpSettings, default_lifetime: Duration) -> Result<Self, BuildError> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("flyte-auth-agent/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &settings.ca_file {
            let ca_err = |reason: String| BuildError::CaBundle {
                path: path.display().to_string(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_err(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca_err("no PEM certificates in it".into()));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| BuildError::Client(e.to_string()))?;
        Ok(Self {
            http,
            timeout: settings.timeout,
            allow_insecure_http: settings.allow_insecure_http,
            default_lifetime,
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
        let url_str = token_url.to_string();
        let call = Recorder::new(self);
        let issued_at = SystemTime::now();
        let result = match &x.grant {
            Grant::ClientCredentials => self.client_credentials(x, &token_url, &call).await?,
            Grant::TokenExchange { subject_token } => {
                self.token_exchange(x, subject_token, &token_url, &call)
                    .await?
            }
        };
        let (status, retry_after) = call.seen().unwrap_or((StatusCode::OK, None));
        let response = result.map_err(|e| self.token_error(e, &url_str, status, retry_after))?;

        let access_token = response.access_token().secret();
        if access_token.is_empty() {
            return Err(IdpError::Malformed {
                url: url_str,
                detail: "access_token is empty".into(),
            });
        }
        let expires_at = expiry(
            issued_at,
            response.expires_in(),
            access_token,
            self.default_lifetime,
        );
        let token_type = match response.token_type() {
            BasicTokenType::Bearer => "Bearer".to_string(),
            BasicTokenType::Mac => "MAC".to_string(),
            BasicTokenType::Extension(other) => other.clone(),
        };
        Ok(Token {
            access_token: SecretString::new(access_token.as_str()),
            token_type,
            issued_at,
            expires_at,
        })
    }

    /// The client-credentials grant, through the `oauth2` crate.
    async fn client_credentials(
        &self,
        x: &Exchange<'_>,
        token_url: &Url,
        call: &Recorder<'_>,
    ) -> Result<TokenResult, IdpError> {
        let client = BasicClient::new(ClientId::new(x.client_id.to_string()))
            .set_token_uri(TokenUrl::from_url(token_url.clone()));
        let secret = || ClientSecret::new(x.credential().expose().to_string());
        let client = match x.client_auth {
            ClientAuth::ClientSecretBasic => client
                .set_client_secret(secret())
                .set_auth_type(AuthType::BasicAuth),
            ClientAuth::ClientSecretPost => client
                .set_client_secret(secret())
                .set_auth_type(AuthType::RequestBody),
            // No client secret: the crate then sends client_id in the body, and the assertion
            // (if any) authenticates it.
            ClientAuth::PrivateKeyJwt | ClientAuth::JwtBearer | ClientAuth::None => {
                client.set_auth_type(AuthType::RequestBody)
            }
        };
        let mut exchange = client
            .exchange_client_credentials()
            .add_scopes(x.scopes.iter().cloned().map(Scope::new));
        if let Some(audience) = x.audience {
            exchange = exchange.add_extra_param("audience", audience.to_string());
        }
        if let Some(assertion) = x.assertion(token_url.as_str())? {
            exchange = exchange
                .add_extra_param("client_assertion_type", CLIENT_ASSERTION_TYPE)
                .add_extra_param("client_assertion", assertion);
        }
        Ok(exchange.request_async(call).await)
    }

    /// RFC 8693 token exchange. The `oauth2` crate has no such grant, so the form is built here;
    /// the response and error bodies are parsed with the crate's own types, as for any grant.
    async fn token_exchange(
        &self,
        x: &Exchange<'_>,
        subject_token: &SecretString,
        token_url: &Url,
        call: &Recorder<'_>,
    ) -> Result<TokenResult, IdpError> {
        let request = match token_exchange_request(x, subject_token, token_url)? {
            Ok(r) => r,
            Err(e) => return Ok(Err(RequestTokenError::Other(e.to_string()))),
        };
        let response = match call.call(request).await {
            Ok(r) => r,
            Err(e) => return Ok(Err(RequestTokenError::Request(e))),
        };
        let body = response.body();
        fn parse<T: serde::de::DeserializeOwned>(
            body: &[u8],
        ) -> Result<T, serde_path_to_error::Error<serde_json::Error>> {
            serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(body))
        }
        Ok(if response.status().is_success() {
            parse::<BasicTokenResponse>(body).map_err(|e| RequestTokenError::Parse(e, Vec::new()))
        } else {
            match parse::<BasicErrorResponse>(body) {
                Ok(error) => Err(RequestTokenError::ServerResponse(error)),
                Err(_) => Err(RequestTokenError::Other(format!(
                    "HTTP {}",
                    response.status().as_u16()
                ))),
            }
        })
    }

    fn token_error(
        &self,
        err: RequestTokenError<TransportError, BasicErrorResponse>,
        url: &str,
        status: StatusCode,
        retry_after: Option<Duration>,
    ) -> IdpError {
        let url = url.to_string();
        // Overload and server errors are about when to come back, whatever the body says (some
        // IdPs send an OAuth2 error JSON with a 429), so they keep their Retry-After.
        let overloaded = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
        match err {
            RequestTokenError::Request(t) => self.transport_error(t.0, url),
            _ if overloaded => IdpError::Status {
                url,
                status: status.as_u16(),
                retry_after,
            },
            RequestTokenError::ServerResponse(e) => IdpError::Rejected {
                url,
                status: status.as_u16(),
                error: e.error().to_string(),
                description: e.error_description().cloned(),
            },
            _ if !status.is_success() => IdpError::Status {
                url,
                status: status.as_u16(),
                retry_after,
            },
            RequestTokenError::Parse(e, _body) => IdpError::Malformed {
                url,
                detail: describe_json_error(&e),
            },
            RequestTokenError::Other(detail) => IdpError::Malformed { url, detail },
        }
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
                    let mut map = self.discovered.lock().unwrap_or_else(|p| p.into_inner());
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
        let failed = |detail: String| IdpError::Discovery {
            url: discovery_url.clone(),
            detail,
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

/// The HTTP request of an RFC 8693 token exchange.
fn token_exchange_request(
    x: &Exchange<'_>,
    subject_token: &SecretString,
    token_url: &Url,
) -> Result<Result<HttpRequest, http::Error>, IdpError> {
    let assertion = x.assertion(token_url.as_str())?;
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", TOKEN_EXCHANGE_GRANT)
        .append_pair("subject_token", subject_token.expose())
        .append_pair("subject_token_type", JWT_TOKEN_TYPE);
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

/// The HTTP client handed to the OAuth2 crates for one exchange: it sends through the agent's
/// client and remembers the last status and `Retry-After`, which the crates' errors drop.
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
        *self.seen.lock().unwrap_or_else(|p| p.into_inner())
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
            *self.seen.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((response.status(), retry_after));
            Ok(response)
        })
    }
}

/// The error type handed to the OAuth2 crates.
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
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        reason = s.to_string();
        source = s.source();
    }
    Transport::Failed(reason)
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
    let path = e.path().to_string();
    if path == "." {
        what.to_string()
    } else {
        format!("{what} at {path}")
    }
}

/// When a token expires: `expires_in` if the IdP sent a positive one, else the JWT's `exp`, else
/// `default_lifetime` after issue.
pub fn expiry(
    issued_at: SystemTime,
    expires_in: Option<Duration>,
    token: &str,
    default_lifetime: Duration,
) -> SystemTime {
    expires_in
        .filter(|d| !d.is_zero())
        .map(|d| issued_at + d)
        .or_else(|| jwt_expiry(token))
        .unwrap_or(issued_at + default_lifetime)
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn expiry_prefers_expires_in_then_jwt_exp_then_the_default() {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let jwt = format!("{}.{}.sig", b64("{}"), b64(r#"{"exp":2000}"#));
        let at = UNIX_EPOCH + Duration::from_secs(1000);
        let default = Duration::from_secs(300);
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(
            secs(expiry(at, Some(Duration::from_secs(60)), &jwt, default)),
            1060
        );
        assert_eq!(secs(expiry(at, None, &jwt, default)), 2000);
        assert_eq!(secs(expiry(at, Some(Duration::ZERO), &jwt, default)), 2000);
        assert_eq!(secs(expiry(at, None, "opaque", default)), 1300);
    }

    fn classify(status: u16, body: &str, retry_after: Option<Duration>) -> IdpError {
        let idp = Idp::new(
            &IdpSettings {
                timeout: Duration::from_secs(1),
                ca_file: None,
                allow_insecure_http: false,
            },
            Duration::from_secs(60),
        )
        .unwrap();
        let err = match serde_path_to_error::deserialize::<_, BasicErrorResponse>(
            &mut serde_json::Deserializer::from_str(body),
        ) {
            Ok(e) => RequestTokenError::ServerResponse(e),
            Err(e) => RequestTokenError::Parse(e, body.as_bytes().to_vec()),
        };
        idp.token_error(
            err,
            "https://idp/token",
            StatusCode::from_u16(status).unwrap(),
            retry_after,
        )
    }

    #[test]
    fn token_errors_keep_retry_after_and_oauth_codes() {
        let wait = Some(Duration::from_secs(4));
        let e = classify(429, r#"{"error":"slow_down"}"#, wait);
        assert_eq!(e.retry_after(), wait, "{e}");
        assert_eq!(
            e.to_string(),
            "https://idp/token answered HTTP 429 (Retry-After 4s)"
        );
        let e = classify(503, "<html>busy</html>", None);
        assert!(matches!(e, IdpError::Status { status: 503, .. }), "{e}");
        let e = classify(
            401,
            r#"{"error":"invalid_client","error_description":"no such client"}"#,
            None,
        );
        assert_eq!(
            e.to_string(),
            "https://idp/token refused the token request (HTTP 401): invalid_client: no such client"
        );
        let e = classify(400, "not json", None);
        assert_eq!(e.to_string(), "https://idp/token answered HTTP 400");
    }

    #[test]
    fn assertion_key_rejects_garbage() {
        let err = AssertionKey::from_pem(&SecretString::new("not a key"))
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "client assertion: the client secret is not a PEM RSA or P-256 private key"
        );
    }

    #[test]
    fn json_errors_never_carry_the_value() {
        let body = br#"{"access_token": 12345678, "token_type": "secret-looking"}"#;
        let err = serde_path_to_error::deserialize::<_, oauth2::basic::BasicTokenResponse>(
            &mut serde_json::Deserializer::from_slice(body),
        )
        .unwrap_err();
        let text = describe_json_error(&err);
        assert_eq!(text, "unexpected value at access_token");
        assert!(!text.contains("12345678"));
    }
}
