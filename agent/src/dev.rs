//! `flyte-auth-agent dev`: the agent on an embedded default, with no cluster and no external IdP.
//! An in-process OIDC issuer on loopback (discovery, JWKS, a client-credentials token endpoint
//! signing ES256 JWTs with a key made at start) and an agent configured against it, its socket,
//! token files and secrets under one local directory.
//!
//! The issuer is a development stand-in only: one client, no persistence, no rate limits. Tests
//! use the real `oidc-provider`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::EncodePrivateKey;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigErrors, Env};
use crate::http::{error_response, json_response, Handler};
use crate::token::SecretString;
use crate::{Agent, AgentError, BoundSocket};

/// An embedded OIDC issuer with one client-credentials client.
pub struct Issuer {
    issuer: String,
    client_id: String,
    client_secret: SecretString,
    ttl: Duration,
    kid: String,
    key: EncodingKey,
    jwk: serde_json::Value,
}

/// Why the issuer could not start.
#[derive(Debug, thiserror::Error)]
#[error("embedded issuer: {0}")]
pub struct IssuerError(String);

impl Issuer {
    /// An issuer reachable at `addr`, for `client_id`/`client_secret`, minting tokens that live
    /// `ttl`.
    pub fn new(
        addr: SocketAddr,
        client_id: &str,
        client_secret: SecretString,
        ttl: Duration,
    ) -> Result<Self, IssuerError> {
        let signing = loop {
            // Nearly every 32-byte string is a valid P-256 scalar; retry the rare one that is not.
            if let Ok(k) = p256::ecdsa::SigningKey::from_slice(&rand::random::<[u8; 32]>()) {
                break k;
            }
        };
        let der = signing
            .to_pkcs8_der()
            .map_err(|e| IssuerError(e.to_string()))?;
        let point = signing.verifying_key().to_encoded_point(false);
        let (Some(x), Some(y)) = (point.x(), point.y()) else {
            return Err(IssuerError("public key has no affine coordinates".into()));
        };
        let kid = format!("dev-{:08x}", rand::random::<u32>());
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
        });
        Ok(Self {
            issuer: format!("http://{addr}"),
            client_id: client_id.to_string(),
            client_secret,
            ttl,
            kid,
            key: EncodingKey::from_ec_der(der.as_bytes()),
            jwk,
        })
    }

    /// The issuer URL (also its discovery base).
    pub fn url(&self) -> &str {
        &self.issuer
    }

    fn discovery(&self) -> serde_json::Value {
        let i = &self.issuer;
        json!({
            "issuer": i,
            "authorization_endpoint": format!("{i}/authorize"),
            "token_endpoint": format!("{i}/token"),
            "jwks_uri": format!("{i}/jwks"),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        })
    }

    fn authenticated(&self, req_auth: Option<&str>, form: &HashMap<String, String>) -> bool {
        let (id, secret) = match req_auth.and_then(|a| a.strip_prefix("Basic ")) {
            Some(b64) => {
                let Some(pair) = STANDARD
                    .decode(b64.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                else {
                    return false;
                };
                let Some((id, secret)) = pair.split_once(':') else {
                    return false;
                };
                let decode = |s: &str| {
                    url::form_urlencoded::parse(format!("x={s}").as_bytes())
                        .next()
                        .map(|(_, v)| v.into_owned())
                };
                (
                    decode(id).unwrap_or_default(),
                    decode(secret).unwrap_or_default(),
                )
            }
            None => (
                form.get("client_id").cloned().unwrap_or_default(),
                form.get("client_secret").cloned().unwrap_or_default(),
            ),
        };
        id == self.client_id && secret.as_bytes() == self.client_secret.expose().as_bytes()
    }

    fn mint(&self, form: &HashMap<String, String>) -> Result<serde_json::Value, String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let scope = form.get("scope").cloned().unwrap_or_else(|| "all".into());
        let claims = json!({
            "iss": self.issuer,
            "sub": self.client_id,
            "client_id": self.client_id,
            "aud": form.get("audience").map_or("dev", String::as_str),
            "scope": scope,
            "iat": now,
            "exp": now + self.ttl.as_secs(),
            "jti": format!("{:032x}", rand::random::<u128>()),
        });
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| e.to_string())?;
        Ok(
            json!({ "access_token": token, "token_type": "Bearer", "expires_in": self.ttl.as_secs(), "scope": scope }),
        )
    }

    async fn token(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let auth = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let Ok(body) = Limited::new(req.into_body(), 64 * 1024).collect().await else {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "unreadable body",
            );
        };
        let form: HashMap<String, String> = url::form_urlencoded::parse(&body.to_bytes())
            .into_owned()
            .collect();
        if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only client_credentials",
            );
        }
        if !self.authenticated(auth.as_deref(), &form) {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
            );
        }
        match self.mint(&form) {
            Ok(body) => json_response(StatusCode::OK, &body),
            Err(e) => oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", &e),
        }
    }
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response<Full<Bytes>> {
    json_response(
        status,
        &json!({ "error": error, "error_description": description }),
    )
}

impl Handler for Issuer {
    type Body = Full<Bytes>;
    type BodyError = std::convert::Infallible;

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/.well-known/openid-configuration") => {
                json_response(StatusCode::OK, &self.discovery())
            }
            (&Method::GET, "/jwks") => {
                json_response(StatusCode::OK, &json!({ "keys": [self.jwk] }))
            }
            (&Method::POST, "/token") => self.token(req).await,
            (_, path) => error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no route for {path}"),
            ),
        }
    }
}

/// Starts an issuer on `listener` until `shutdown`; returns its URL.
pub fn spawn_issuer(
    listener: TcpListener,
    client_id: &str,
    client_secret: SecretString,
    ttl: Duration,
    shutdown: CancellationToken,
) -> Result<String, IssuerError> {
    let addr = listener
        .local_addr()
        .map_err(|e| IssuerError(e.to_string()))?;
    let issuer = Arc::new(Issuer::new(addr, client_id, client_secret, ttl)?);
    let url = issuer.url().to_string();
    tokio::spawn(crate::http::serve(
        listener,
        issuer,
        crate::http::Protocols::Http1,
        crate::http::ServeLimits::default(),
        shutdown,
        Duration::from_secs(1),
    ));
    Ok(url)
}

/// Why dev mode could not run.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// Files under the dev directory could not be written.
    #[error("cannot prepare {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The issuer could not start.
    #[error(transparent)]
    Issuer(#[from] IssuerError),
    /// The generated configuration is invalid (a bug).
    #[error("generated configuration is invalid:\n{0}")]
    Config(#[from] ConfigErrors),
    /// The agent could not start.
    #[error(transparent)]
    Agent(#[from] AgentError),
}

const DEV_CLIENT: &str = "flyte-auth-agent-dev";

/// Runs dev mode under `dir` until `shutdown`, printing how to try it.
pub async fn run(
    dir: &Path,
    health_addr: SocketAddr,
    shutdown: CancellationToken,
) -> Result<(), DevError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DevError::Io { path, source }
    };
    let dir = std::path::absolute(dir).map_err(io(dir))?;
    let secrets_dir = dir.join("secrets");
    let secret_file = secrets_dir.join("dev-client").join("client_secret");
    std::fs::create_dir_all(secret_file.parent().unwrap_or(&dir)).map_err(io(&secret_file))?;
    let secret = SecretString::new(format!("{:032x}", rand::random::<u128>()));
    std::fs::write(&secret_file, secret.expose()).map_err(io(&secret_file))?;

    let issuer_listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(io(&dir))?;
    let issuer = spawn_issuer(
        issuer_listener,
        DEV_CLIENT,
        secret,
        Duration::from_secs(120),
        shutdown.clone(),
    )?;

    let config_file = dir.join("agent.yaml");
    let quote = |p: &Path| serde_json::Value::String(p.display().to_string()).to_string();
    let yaml = [
        "# Written by `flyte-auth-agent dev`; the issuer it points at lives as long as that command.".to_string(),
        format!("tokens_path_prefix: {}", quote(&dir.join("tokens"))),
        format!("socket: {}", quote(&dir.join("agent.sock"))),
        format!("health_addr: \"{health_addr}\""),
        "secrets:".into(),
        format!("  default_dir: {}", quote(&secrets_dir)),
        "token_requests:".into(),
        "  - name: demo".into(),
        "    type: CLIENT_CREDENTIALS".into(),
        format!("    idpDiscoveryEndpoint: \"{issuer}/.well-known/openid-configuration\""),
        "    client:".into(),
        format!("      clientId: {DEV_CLIENT}"),
        "      clientSecret: {group: dev-client, key: client_secret, mountRequirement: FILE}".into(),
        "    scopes: [read]".into(),
        "    audience: demo-api".into(),
    ]
    .join("\n");
    std::fs::write(&config_file, yaml).map_err(io(&config_file))?;
    // Dev mode ignores the process environment so what it prints is what it runs.
    let env: Arc<dyn Env> = Arc::new(HashMap::<String, String>::new());
    let config = Config::load(Some(&config_file), env.clone())?;
    let agent = Agent::build(&config, env)?;
    let socket = BoundSocket::bind(&config.socket_path, config.socket_mode)?;
    let health = TcpListener::bind(config.health_addr)
        .await
        .map_err(io(&dir))?;

    println!(
        "flyte-auth-agent dev: embedded OIDC issuer at {issuer}\n\
         config: {config}\n\n\
         Try:\n  curl --unix-socket {socket} http://agent/v1/tokens/demo\n  \
         curl --unix-socket {socket} -H 'Accept: text/plain' http://agent/v1/tokens/demo\n  \
         cat {file}\n  curl http://{health}/readyz\n  curl http://{health}/metrics\n\n\
         Tokens live 2 minutes and are refreshed ahead of expiry. Ctrl-C stops.",
        config = config_file.display(),
        socket = config.socket_path.display(),
        file = config.tokens_dir.join("demo").display(),
        health = health.local_addr().unwrap_or(config.health_addr),
    );
    agent.serve(socket, health, shutdown).await;
    Ok(())
}
