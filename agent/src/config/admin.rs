//! The `admin` section: where FlyteAdmin is, how the proxy reaches it, and which executor-bound
//! credential it attaches. Present only when an endpoint is set (file `admin.endpoint` or env
//! `FLYTE_AUTH_AGENT_ADMIN_ENDPOINT`); every other field has an env override of the same name
//! upper-cased (`FLYTE_AUTH_AGENT_ADMIN_CLIENT_ID`, …).

use std::path::PathBuf;
use std::time::Duration;

use flyte_auth_proto::flyteidl::core::Secret;
use http::HeaderName;
use serde::Deserialize;
use url::Url;

use super::loader::{parse_bool, parse_duration, ConfigError, ConfigErrors, Loader};
use crate::request::{check_idp_url, ClientAuth, IdpSettings};
use crate::secret::SecretResolver;

/// How the executor's identity is proven to the IdP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminMode {
    /// Client credentials with a client id and secret mounted into the sidecar.
    ClientSecret,
    /// Client credentials authenticated by an RFC 7523 assertion: the pod's projected
    /// service-account token, re-read on every request.
    JwtBearer,
    /// RFC 8693 token exchange of the pod's projected service-account token.
    TokenExchange,
}

impl AdminMode {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientSecret => "client-secret",
            Self::JwtBearer => "jwt-bearer",
            Self::TokenExchange => "token-exchange",
        }
    }
}

/// Where FlyteAdmin listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAddress {
    /// A TCP host and port.
    Tcp {
        /// Host name or IP address.
        host: String,
        /// Port.
        port: u16,
    },
    /// A unix socket (a local Admin, or a benchmark's server).
    Unix(PathBuf),
}

/// TLS to FlyteAdmin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTls {
    /// Extra CA certificates (PEM bundle) trusted besides the webpki roots.
    pub ca_file: Option<PathBuf>,
    /// The name to verify the certificate against (and send as SNI), instead of the host.
    pub server_name: Option<String>,
}

/// Which gRPC methods the proxy forwards; empty allows every method.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MethodFilter {
    patterns: Vec<String>,
}

impl MethodFilter {
    /// Parses patterns: `pkg.Service/Method`, `pkg.Service/*` or `*` (a leading `/` is allowed).
    pub fn parse<'a>(patterns: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut out = Vec::new();
        for p in patterns {
            let p = p.trim().trim_start_matches('/');
            if p.is_empty() {
                continue;
            }
            let valid = p == "*"
                || p.split_once('/').is_some_and(|(service, method)| {
                    !service.is_empty()
                        && !method.is_empty()
                        && !service.contains('*')
                        && (method == "*" || !method.contains(['*', '/']))
                });
            if !valid {
                return Err(format!(
                    "{p:?} is not a method pattern like flyteidl.service.AdminService/* or flyteidl.service.AdminService/GetExecution"
                ));
            }
            out.push(p.to_string());
        }
        Ok(Self { patterns: out })
    }

    /// Whether `path` (`/pkg.Service/Method`) may be called.
    pub fn allows(&self, path: &str) -> bool {
        if self.patterns.is_empty() {
            return true;
        }
        let path = path.trim_start_matches('/');
        self.patterns.iter().any(|p| {
            p == "*"
                || p == path
                || p.strip_suffix("/*").is_some_and(|service| {
                    path.strip_prefix(service)
                        .and_then(|rest| rest.strip_prefix('/'))
                        .is_some_and(|method| !method.is_empty() && !method.contains('/'))
                })
        })
    }

    /// The patterns, for messages.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

/// How far the proxy lets a task reach (see [`crate::scope`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AdminPolicy {
    /// The execution scope: a task's calls must stay in its own project and domain, and event
    /// writing and project administration are refused.
    #[default]
    Execution,
    /// Every call is forwarded with the executor credential (the behaviour before issue 12);
    /// warned about at start.
    Unrestricted,
}

impl AdminPolicy {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Execution => "execution",
            Self::Unrestricted => "unrestricted",
        }
    }
}

/// The validated `admin` section.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// The endpoint as configured, for messages.
    pub endpoint: String,
    /// Where Admin listens.
    pub address: AdminAddress,
    /// TLS settings; `None` is plaintext HTTP/2 (`insecure: true`, `http://` or a unix socket).
    pub tls: Option<AdminTls>,
    /// The metadata key the credential goes in; `None`: the key Admin announces in
    /// `GetPublicClientConfig`, else `authorization`.
    pub auth_header: Option<HeaderName>,
    /// The token endpoint; `None`: from Admin's `GetOAuth2Metadata`.
    pub token_endpoint: Option<Url>,
    /// Audience to request; `None`: from Admin's `GetPublicClientConfig`.
    pub audience: Option<String>,
    /// Scopes to request; `None`: from Admin's `GetPublicClientConfig`.
    pub scopes: Option<Vec<String>>,
    /// The credential mode.
    pub mode: AdminMode,
    /// OAuth2 client id.
    pub client_id: String,
    /// The client secret (`client-secret`, optional for `token-exchange`).
    pub client_secret: Option<Secret>,
    /// How the client authenticates with a secret.
    pub client_auth: ClientAuth,
    /// The projected service-account token (`jwt-bearer`, `token-exchange`).
    pub token_file: Option<PathBuf>,
    /// Which methods are forwarded.
    pub allowed_methods: MethodFilter,
    /// Largest request body kept for a retry after UNAUTHENTICATED; larger calls are not retried.
    pub retry_buffer: usize,
    /// Timeout for connecting to Admin.
    pub connect_timeout: Duration,
    /// HTTP/2 keep-alive ping interval.
    pub keepalive: Duration,
    /// How far the proxy lets a task reach.
    pub policy: AdminPolicy,
    /// The execution's project (`FLYTE_AUTH_AGENT_ADMIN_PROJECT`, set per pod by the injector).
    pub project: Option<String>,
    /// The execution's domain (`FLYTE_AUTH_AGENT_ADMIN_DOMAIN`).
    pub domain: Option<String>,
    /// The execution's org (`FLYTE_AUTH_AGENT_ADMIN_ORG`); `None` is the empty org.
    pub org: Option<String>,
    /// The execution id the pod reports (`FLYTE_AUTH_AGENT_EXECUTION_ID`), for audit lines
    /// only: the pod's author writes it, so nothing is decided by it.
    pub pod_reported_execution_id: Option<String>,
    /// Largest request the policy reads; larger calls are refused with RESOURCE_EXHAUSTED.
    pub max_request_bytes: usize,
    /// Whether `GET /v1/admin/token` hands the credential to the task (off by default: with it
    /// on, a task can carry the Admin token out of the pod and use it until it expires).
    pub serve_token: bool,
    /// Port of the loopback TCP listener that proxies Connect (Flyte 2's `flyte` SDK) and gRPC
    /// to this endpoint; `None` (the default) opens no port. Always bound on 127.0.0.1: the
    /// SDK cannot reach a unix socket, and a pod's loopback is its own.
    pub connect_port: Option<u16>,
}

/// The `admin` section's keys as the file spells them: the only list of them. What the injector
/// carries to an agent elsewhere follows from [`build_admin`] reading them ([`section_env`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAdmin {
    endpoint: Option<String>,
    insecure: Option<bool>,
    ca_file: Option<String>,
    server_name: Option<String>,
    auth_header: Option<String>,
    token_endpoint: Option<String>,
    audience: Option<String>,
    scopes: Option<StringOrList>,
    mode: Option<String>,
    client_id: Option<String>,
    client_secret: Option<serde_json::Value>,
    client_auth_method: Option<String>,
    token_file: Option<String>,
    allowed_methods: Option<StringOrList>,
    retry_buffer: Option<u64>,
    connect_timeout: Option<String>,
    keepalive: Option<String>,
    serve_token: Option<bool>,
    connect_port: Option<u64>,
    policy: Option<String>,
    project: Option<String>,
    domain: Option<String>,
    org: Option<String>,
    max_request_bytes: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl StringOrList {
    /// Joined with `sep`, the form an env var carries.
    fn joined(self, sep: &str) -> String {
        match self {
            Self::One(s) => s,
            Self::Many(v) => v.join(sep),
        }
    }
}

use crate::env::{
    ENV_ADMIN_DOMAIN, ENV_ADMIN_ORG, ENV_ADMIN_PREFIX as ENV, ENV_ADMIN_PROJECT,
    ENV_ADMIN_SERVE_TOKEN, ENV_EXECUTION_ID,
};

fn env(field: &str) -> String {
    format!("{ENV}{}", field.to_ascii_uppercase())
}

/// Parses `dns:///host:port`, `host:port`, `https://host[:port]`, `http://host[:port]` or
/// `unix:///path`; returns the address and whether the scheme fixes TLS (`Some(false)` for http
/// and unix, `Some(true)` for https).
pub fn parse_endpoint(s: &str) -> Result<(AdminAddress, Option<bool>), String> {
    let bad = |why: &str| {
        format!("{s:?} is not an Admin endpoint like dns:///flyteadmin.flyte:81, host:port, https://host or unix:///path ({why})")
    };
    if let Some(path) = s
        .strip_prefix("unix://")
        .or_else(|| s.strip_prefix("unix:"))
    {
        if !path.starts_with('/') {
            return Err(bad("a unix socket path must be absolute"));
        }
        return Ok((AdminAddress::Unix(PathBuf::from(path)), Some(false)));
    }
    let (rest, tls, default_port) = if let Some(r) = s.strip_prefix("https://") {
        (r, Some(true), Some(443))
    } else if let Some(r) = s.strip_prefix("http://") {
        (r, Some(false), Some(80))
    } else if let Some(r) = s.strip_prefix("dns:///").or_else(|| s.strip_prefix("dns:")) {
        (r, None, None)
    } else if s.contains("://") {
        return Err(bad("unknown scheme"));
    } else {
        (s, None, None)
    };
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return Err(bad("expected a host and port, no path"));
    }
    let uri: http::uri::Authority = authority.parse().map_err(|_| bad("bad host or port"))?;
    if uri.as_str().contains('@') {
        return Err(bad("credentials in the endpoint are not allowed"));
    }
    let port = match (uri.port_u16(), default_port) {
        (Some(p), _) => p,
        (None, Some(p)) => p,
        (None, None) => return Err(bad("no port")),
    };
    let host = uri.host().trim_start_matches('[').trim_end_matches(']');
    Ok((
        AdminAddress::Tcp {
            host: host.to_string(),
            port,
        },
        tls,
    ))
}

pub(super) fn build_admin(
    mut raw: RawAdmin,
    l: &mut Loader<'_>,
    idp: &IdpSettings,
    resolver: Option<&SecretResolver>,
) -> Option<AdminConfig> {
    let (endpoint, endpoint_source) = l.pick(Some(&env("endpoint")), raw.endpoint.take())?;
    let errors_before = l.errors.len();
    // Read in this order so that problems are listed in the order of the fields.
    let (address, tls) = build_transport(&mut raw, l, &endpoint, &endpoint_source, resolver);
    let credential = build_credential(&mut raw, l, idp, resolver);
    let proxy = build_proxy(&mut raw, l);
    let scope = build_scope(raw, l);
    let mode = check_credential(&credential, l)?;
    if l.errors.len() > errors_before {
        return None;
    }
    let client_auth = match (mode, &credential.client_secret) {
        (AdminMode::JwtBearer, _) => ClientAuth::JwtBearer,
        (AdminMode::TokenExchange, None) => ClientAuth::None,
        _ => credential.client_auth,
    };
    Some(AdminConfig {
        endpoint,
        address,
        tls,
        auth_header: credential.auth_header,
        token_endpoint: credential.token_endpoint,
        audience: credential.audience,
        scopes: credential.scopes,
        mode,
        client_id: credential.client_id,
        client_secret: credential.client_secret,
        client_auth,
        token_file: credential.token_file,
        allowed_methods: proxy.allowed_methods,
        retry_buffer: proxy.retry_buffer,
        connect_timeout: proxy.connect_timeout,
        keepalive: proxy.keepalive,
        policy: proxy.policy,
        project: scope.project,
        domain: scope.domain,
        org: scope.org,
        pod_reported_execution_id: scope.pod_reported_execution_id,
        max_request_bytes: scope.max_request_bytes,
        serve_token: proxy.serve_token,
        connect_port: proxy.connect_port,
    })
}

/// A path setting; checked to exist only when the agent itself reads the section (`check`), not
/// when the injector checks it for a pod whose files it cannot see.
fn path_field(
    l: &mut Loader<'_>,
    field: &str,
    file: Option<String>,
    check: bool,
) -> Option<PathBuf> {
    l.parsed(
        &format!("admin.{field}"),
        Some(&env(field)),
        file,
        None,
        |s| match check.then(|| std::fs::metadata(s)) {
            Some(Err(e)) => Err(format!("cannot read {s}: {e}")),
            _ => Ok(Some(PathBuf::from(s))),
        },
    )
}

/// Where Admin listens and whether (and how) TLS is used.
fn build_transport(
    raw: &mut RawAdmin,
    l: &mut Loader<'_>,
    endpoint: &str,
    endpoint_source: &str,
    resolver: Option<&SecretResolver>,
) -> (AdminAddress, Option<AdminTls>) {
    let (address, scheme_tls) = match parse_endpoint(endpoint.trim()) {
        Ok(v) => v,
        Err(problem) => {
            l.error(endpoint_source, "admin.endpoint", problem);
            (AdminAddress::Unix(PathBuf::new()), None)
        }
    };
    let insecure = l.parsed(
        "admin.insecure",
        Some(&env("insecure")),
        raw.insecure.map(|b| b.to_string()),
        None,
        |s| parse_bool(s).map(Some),
    );
    let tls_wanted = match (scheme_tls, insecure) {
        (Some(true), Some(true)) => {
            l.error(
                endpoint_source,
                "admin.insecure",
                "is true but the endpoint is https://",
            );
            true
        }
        (Some(tls), _) => tls,
        (None, insecure) => !insecure.unwrap_or(false),
    };
    let ca_file = path_field(l, "ca_file", raw.ca_file.take(), resolver.is_some());
    let server_name = l.pick(Some(&env("server_name")), raw.server_name.take());
    if let Some((name, source)) = &server_name {
        if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
            l.error(
                source,
                "admin.server_name",
                format!("{name:?} is not a DNS name or IP address"),
            );
        }
    }
    let tls = tls_wanted.then(|| AdminTls {
        ca_file,
        server_name: server_name.map(|(n, _)| n),
    });
    (address, tls)
}

/// The `client_auth_method` values of the admin section: assertions are its jwt-bearer mode.
const ADMIN_CLIENT_AUTH: [ClientAuth; 2] =
    [ClientAuth::ClientSecretBasic, ClientAuth::ClientSecretPost];

/// The executor-bound credential as configured, before the checks that relate its fields.
struct Credential {
    auth_header: Option<HeaderName>,
    token_endpoint: Option<Url>,
    audience: Option<String>,
    scopes: Option<Vec<String>>,
    mode: Option<AdminMode>,
    client_id: String,
    client_secret: Option<Secret>,
    client_secret_given: bool,
    client_auth: ClientAuth,
    token_file: Option<PathBuf>,
    token_file_given: bool,
}

fn build_credential(
    raw: &mut RawAdmin,
    l: &mut Loader<'_>,
    idp: &IdpSettings,
    resolver: Option<&SecretResolver>,
) -> Credential {
    let auth_header = l.parsed(
        "admin.auth_header",
        Some(&env("auth_header")),
        raw.auth_header.take(),
        None,
        |s| {
            HeaderName::try_from(s.to_ascii_lowercase())
                .map(Some)
                .map_err(|_| format!("{s:?} is not a valid header name"))
        },
    );
    let token_endpoint = l.parsed(
        "admin.token_endpoint",
        Some(&env("token_endpoint")),
        raw.token_endpoint.take(),
        None,
        |s| {
            let url = Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
            check_idp_url(&url, idp.allow_insecure_http)?;
            Ok(Some(url))
        },
    );
    let audience = l
        .pick(Some(&env("audience")), raw.audience.take())
        .map(|(v, _)| v)
        .filter(|v| !v.is_empty());
    let scopes = l
        .pick(
            Some(&env("scopes")),
            raw.scopes.take().map(|s| s.joined(" ")),
        )
        .map(|(v, _)| v.split_whitespace().map(str::to_string).collect());
    let mode = l.parsed(
        "admin.mode",
        Some(&env("mode")),
        raw.mode.take(),
        None,
        |s| parse_mode(s).map(Some),
    );
    let client_id = l
        .pick(Some(&env("client_id")), raw.client_id.take())
        .map(|(v, _)| v.trim().to_string())
        .unwrap_or_default();
    let (client_secret_given, client_secret) = client_secret(l, raw.client_secret.take(), resolver);
    let client_auth = l.parsed(
        "admin.client_auth_method",
        Some(&env("client_auth_method")),
        raw.client_auth_method.take(),
        ClientAuth::ClientSecretBasic,
        |s| ClientAuth::parse(s, &ADMIN_CLIENT_AUTH),
    );
    let token_file_given = l
        .pick(Some(&env("token_file")), raw.token_file.clone())
        .is_some();
    let token_file = path_field(l, "token_file", raw.token_file.take(), resolver.is_some());
    Credential {
        auth_header,
        token_endpoint,
        audience,
        scopes,
        mode,
        client_id,
        client_secret,
        client_secret_given,
        client_auth,
        token_file,
        token_file_given,
    }
}

fn parse_mode(s: &str) -> Result<AdminMode, String> {
    match s {
        "client-secret" => Ok(AdminMode::ClientSecret),
        "jwt-bearer" => Ok(AdminMode::JwtBearer),
        "token-exchange" => Ok(AdminMode::TokenExchange),
        _ => Err(format!(
            "{s:?} is not client-secret, jwt-bearer or token-exchange"
        )),
    }
}

/// Whether a client secret is given, and the reference if it is a usable one (read now with a
/// `resolver`, so an unreadable secret stops the agent at start).
fn client_secret(
    l: &mut Loader<'_>,
    file: Option<serde_json::Value>,
    resolver: Option<&SecretResolver>,
) -> (bool, Option<Secret>) {
    let Some((json, source)) = l.pick(Some(&env("client_secret")), file.map(|v| v.to_string()))
    else {
        return (false, None);
    };
    let parsed = serde_json::from_str::<serde_json::Value>(&json)
        .map_err(|e| e.to_string())
        .and_then(|v| flyte_auth_proto::from_json::<Secret>(&v).map_err(|e| e.to_string()));
    let secret = match parsed {
        Ok(secret) if secret.group.is_empty() => {
            l.error(&source, "admin.client_secret.group", "is missing");
            None
        }
        Ok(secret) => {
            if let Some(Err(e)) = resolver.map(|r| r.read(&secret)) {
                l.error(&source, "admin.client_secret", e.to_string());
            }
            Some(secret)
        }
        Err(e) => {
            l.error(
                &source,
                "admin.client_secret",
                format!(
                    "not a flyteidl Secret like {{\"group\": \"name\", \"key\": \"key\"}}: {e}"
                ),
            );
            None
        }
    };
    (true, secret)
}

/// What the proxy forwards and how it holds the connection.
struct ProxySettings {
    allowed_methods: MethodFilter,
    retry_buffer: usize,
    connect_timeout: Duration,
    keepalive: Duration,
    serve_token: bool,
    connect_port: Option<u16>,
    policy: AdminPolicy,
}

fn build_proxy(raw: &mut RawAdmin, l: &mut Loader<'_>) -> ProxySettings {
    let allowed_methods = l.parsed(
        "admin.allowed_methods",
        Some(&env("allowed_methods")),
        raw.allowed_methods.take().map(|m| m.joined(",")),
        MethodFilter::default(),
        |s| MethodFilter::parse(s.split([',', ' ', '\n'])),
    );
    let retry_buffer = l.parsed(
        "admin.retry_buffer",
        Some(&env("retry_buffer")),
        raw.retry_buffer.map(|n| n.to_string()),
        64 * 1024,
        |s| {
            s.parse::<usize>()
                .map_err(|_| format!("{s:?} is not a number of bytes"))
        },
    );
    let mut duration = |field: &str, file: Option<String>, default| {
        l.parsed(
            &format!("admin.{field}"),
            Some(&env(field)),
            file,
            default,
            parse_duration,
        )
    };
    let connect_timeout = duration(
        "connect_timeout",
        raw.connect_timeout.take(),
        Duration::from_secs(5),
    );
    let keepalive = duration("keepalive", raw.keepalive.take(), Duration::from_secs(30));
    let serve_token = l.parsed(
        "admin.serve_token",
        Some(ENV_ADMIN_SERVE_TOKEN),
        raw.serve_token.map(|b| b.to_string()),
        false,
        parse_bool,
    );
    let connect_port = l.parsed(
        "admin.connect_port",
        Some(&env("connect_port")),
        raw.connect_port.map(|n| n.to_string()),
        None,
        |s| match s.parse::<u16>() {
            Ok(port) if port > 0 => Ok(Some(port)),
            _ => Err(format!("{s:?} is not a TCP port (1 to 65535)")),
        },
    );
    let policy = l.parsed(
        "admin.policy",
        Some(&env("policy")),
        raw.policy.take(),
        AdminPolicy::Execution,
        |s| match s {
            "execution" => Ok(AdminPolicy::Execution),
            "unrestricted" => Ok(AdminPolicy::Unrestricted),
            _ => Err(format!("{s:?} is not execution or unrestricted")),
        },
    );
    ProxySettings {
        allowed_methods,
        retry_buffer,
        connect_timeout,
        keepalive,
        serve_token,
        connect_port,
        policy,
    }
}

/// The execution a pod's calls are held to, and how much of a call the policy reads.
struct ScopeSettings {
    project: Option<String>,
    domain: Option<String>,
    org: Option<String>,
    pod_reported_execution_id: Option<String>,
    max_request_bytes: usize,
}

fn build_scope(raw: RawAdmin, l: &mut Loader<'_>) -> ScopeSettings {
    let project = scope_name(l, "project", ENV_ADMIN_PROJECT, raw.project);
    let domain = scope_name(l, "domain", ENV_ADMIN_DOMAIN, raw.domain);
    let org = scope_name(l, "org", ENV_ADMIN_ORG, raw.org);
    let pod_reported_execution_id = l
        .pick(Some(ENV_EXECUTION_ID), None)
        .map(|(v, _)| v.chars().take(256).collect::<String>())
        .filter(|v| !v.is_empty());
    let max_request_bytes = l.parsed(
        "admin.max_request_bytes",
        Some(&env("max_request_bytes")),
        raw.max_request_bytes.map(|n| n.to_string()),
        4 * 1024 * 1024,
        |s| match s.parse::<usize>() {
            Ok(n) if n >= 5 => Ok(n),
            _ => Err(format!("{s:?} is not a number of bytes (at least 5)")),
        },
    );
    ScopeSettings {
        project,
        domain,
        org,
        pod_reported_execution_id,
        max_request_bytes,
    }
}

/// A project, domain or org name, from `var` or the file.
fn scope_name(l: &mut Loader<'_>, field: &str, var: &str, file: Option<String>) -> Option<String> {
    let (value, source) = l.pick(Some(var), file)?;
    let value = value.trim().to_string();
    // Flyte's project and domain ids: letters, digits, '-' and '_' (a namespace part).
    let valid = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if !valid || value.len() > 253 {
        l.error(
            &source,
            &format!("admin.{field}"),
            format!("{value:?} is not a Flyte {field} name (letters, digits, '-', '_', '.')"),
        );
        return None;
    }
    (!value.is_empty()).then_some(value)
}

/// The mode, if the credential's fields fit it; each missing one is a problem of the file.
fn check_credential(c: &Credential, l: &mut Loader<'_>) -> Option<AdminMode> {
    let Some(mode) = c.mode else {
        l.file_error(
            "admin.mode",
            "is missing: client-secret, jwt-bearer or token-exchange",
        );
        return None;
    };
    if c.client_id.is_empty() {
        l.file_error("admin.client_id", "is missing");
    }
    match mode {
        AdminMode::ClientSecret if !c.client_secret_given => {
            l.file_error("admin.client_secret", "is missing (mode client-secret)")
        }
        AdminMode::JwtBearer | AdminMode::TokenExchange if !c.token_file_given => l.file_error(
            "admin.token_file",
            format!(
                "is missing (mode {} needs the projected service-account token)",
                mode.as_str()
            ),
        ),
        _ => {}
    }
    Some(mode)
}

/// An `admin` section checked by the agent's rules without touching files, as the env vars that
/// carry it to an agent elsewhere (the injector's sidecar).
#[derive(Debug, Clone)]
pub struct CheckedAdmin {
    /// The credential mode.
    pub mode: AdminMode,
    /// `FLYTE_AUTH_AGENT_ADMIN_*` pairs, in field order.
    pub env: Vec<(String, String)>,
    /// The client secret the agent will read, if any.
    pub client_secret: Option<Secret>,
    /// `admin.connect_port`: the loopback port Flyte 2's SDK is pointed at.
    pub connect_port: Option<u16>,
}

/// Checks an `admin` section (YAML/JSON keys as in the agent's config file) the way the agent
/// will read it, without reading secrets or files, and returns the env vars that carry it. The
/// projected service-account token is at `token_file` for the modes that use one; the section
/// itself must not set `token_file`.
pub fn admin_section_env(
    section: serde_json::Value,
    source: &str,
    token_file: &str,
    allow_insecure_http: bool,
) -> Result<CheckedAdmin, ConfigErrors> {
    let raw: RawAdmin = serde_path_to_error::deserialize(section).map_err(|e| {
        let field = match e.path().to_string() {
            p if p == "." => "admin".to_string(),
            p => format!("admin.{p}"),
        };
        ConfigErrors::one(source, &field, e.into_inner().to_string())
    })?;
    refuse_injector_fields(&raw)
        .map_err(|(field, problem)| ConfigErrors::one(source, &field, problem))?;
    let idp = IdpSettings {
        timeout: Duration::from_secs(10),
        ca_file: None,
        allow_insecure_http,
    };
    let mut env = section_env(raw, &idp);
    env.push((self::env("token_file"), token_file.to_string()));
    let vars: std::collections::HashMap<String, String> = env.iter().cloned().collect();
    let mut l = Loader::new(source, &vars);
    let checked = build_admin(RawAdmin::default(), &mut l, &idp, None);
    if !l.errors.is_empty() {
        // The values came from the section, not from env vars: name the section.
        let errors = l
            .errors
            .into_iter()
            .map(|e| ConfigError {
                source: source.to_string(),
                ..e
            })
            .collect();
        return Err(ConfigErrors(errors));
    }
    let Some(admin) = checked else {
        return Err(ConfigErrors::one(source, "admin.endpoint", "is missing"));
    };
    if admin.mode == AdminMode::ClientSecret {
        env.retain(|(k, _)| *k != self::env("token_file"));
    }
    Ok(CheckedAdmin {
        mode: admin.mode,
        env,
        client_secret: admin.client_secret,
        connect_port: admin.connect_port,
    })
}

/// The fields the injector sets per pod, which a section must leave out: the field and why.
fn refuse_injector_fields(raw: &RawAdmin) -> Result<(), (String, String)> {
    if raw.token_file.is_some() {
        return Err((
            "admin.token_file".into(),
            "is set by the injector (the projected service-account token); remove it".into(),
        ));
    }
    for (field, set) in [
        ("project", raw.project.is_some()),
        ("domain", raw.domain.is_some()),
        ("org", raw.org.is_some()),
    ] {
        if set {
            return Err((
                format!("admin.{field}"),
                "is set by the injector per pod (from the pod's namespace); remove it".into(),
            ));
        }
    }
    if raw.endpoint.is_none() {
        return Err(("admin.endpoint".into(), "is missing".into()));
    }
    Ok(())
}

/// The section's values as the `FLYTE_AUTH_AGENT_ADMIN_*` env vars that carry them, in the order
/// the agent reads its fields. [`build_admin`] reads the section with no env set, and its loader
/// writes down each value it takes from the file with the var that would override it: so every
/// key the agent reads is carried, in the form it reads from that var, without a list of keys
/// to keep beside [`RawAdmin`]. Problems are left for the check of the env that follows.
fn section_env(raw: RawAdmin, idp: &IdpSettings) -> Vec<(String, String)> {
    let no_env = std::collections::HashMap::<String, String>::new();
    let mut l = Loader::recording("", &no_env);
    build_admin(raw, &mut l, idp, None);
    l.from_file.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_in_every_form_flyte_uses() {
        let tcp = |h: &str, p| AdminAddress::Tcp {
            host: h.into(),
            port: p,
        };
        let ok = |s| parse_endpoint(s).unwrap();
        assert_eq!(
            ok("dns:///flyteadmin.flyte:81"),
            (tcp("flyteadmin.flyte", 81), None)
        );
        assert_eq!(ok("flyteadmin:81"), (tcp("flyteadmin", 81), None));
        assert_eq!(
            ok("https://flyte.example.com"),
            (tcp("flyte.example.com", 443), Some(true))
        );
        assert_eq!(
            ok("http://127.0.0.1:8089/"),
            (tcp("127.0.0.1", 8089), Some(false))
        );
        assert_eq!(ok("[::1]:81"), (tcp("::1", 81), None));
        assert_eq!(
            ok("unix:///run/admin.sock"),
            (AdminAddress::Unix("/run/admin.sock".into()), Some(false))
        );
        for bad in [
            "",
            "flyteadmin",
            "grpc://x:1",
            "https://x/path",
            "unix:relative.sock",
            "https://user:pw@x",
            "x:notaport",
        ] {
            let e = parse_endpoint(bad).unwrap_err();
            assert!(e.contains("is not an Admin endpoint"), "{bad}: {e}");
        }
    }

    #[test]
    fn method_patterns() {
        let f = MethodFilter::parse([
            "flyteidl.service.AdminService/*",
            "/flyteidl.service.AuthMetadataService/GetPublicClientConfig",
        ])
        .unwrap();
        assert!(f.allows("/flyteidl.service.AdminService/GetExecution"));
        assert!(f.allows("/flyteidl.service.AuthMetadataService/GetPublicClientConfig"));
        assert!(!f.allows("/flyteidl.service.AuthMetadataService/GetOAuth2Metadata"));
        assert!(!f.allows("/flyteidl.service.AdminServiceX/GetExecution"));
        assert!(!f.allows("/flyteidl.service.AdminService/"));
        assert!(!f.allows("/flyteidl.service.DataProxyService/CreateUploadLocation"));
        assert!(MethodFilter::default().allows("/any.Service/Method"));
        assert!(MethodFilter::parse(["*"])
            .unwrap()
            .allows("/any.Service/Method"));
        for bad in ["AdminService", "*/Get", "a.B/Get*", "/x/"] {
            assert!(MethodFilter::parse([bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn serve_token_is_off_unless_opted_in_and_the_injector_carries_it() {
        let section = |extra: serde_json::Value| {
            let mut v = serde_json::json!({
                "endpoint": "dns:///flyteadmin.flyte:81",
                "mode": "client-secret",
                "client_id": "flytepropeller",
                "client_secret": {"group": "flyte-secret-auth", "key": "client_secret"},
            });
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            v
        };
        let checked = admin_section_env(
            section(serde_json::json!({})),
            "injector config",
            "/t",
            false,
        )
        .unwrap();
        assert!(!checked.env.iter().any(|(k, _)| k == ENV_ADMIN_SERVE_TOKEN));
        let checked = admin_section_env(
            section(serde_json::json!({"serve_token": true})),
            "injector config",
            "/t",
            false,
        )
        .unwrap();
        assert!(checked
            .env
            .contains(&(ENV_ADMIN_SERVE_TOKEN.to_string(), "true".to_string())));

        // The agent reads it from the env the injector set, and defaults to off.
        let load = |env: &[(&str, &str)]| {
            let (admin, errors) = load_jwt_bearer(env);
            (admin.map(|a| a.serve_token), errors)
        };
        assert_eq!(load(&[]), (Some(false), vec![]));
        assert_eq!(
            load(&[(ENV_ADMIN_SERVE_TOKEN, "true")]),
            (Some(true), vec![])
        );
        let (_, errors) = load(&[(ENV_ADMIN_SERVE_TOKEN, "maybe")]);
        assert_eq!(
            errors[0].to_string(),
            "env FLYTE_AUTH_AGENT_ADMIN_SERVE_TOKEN: admin.serve_token: \"maybe\" is not true or false"
        );
    }
}

#[cfg(test)]
mod section_env_tests {
    use super::*;

    /// The keys the agent reads in its `admin` section: [`RawAdmin`]'s fields as serde names
    /// them, taken from the list its derived `Deserialize` hands to `deserialize_struct`.
    fn admin_keys() -> &'static [&'static str] {
        struct Keys<'k>(&'k mut &'static [&'static str]);
        impl<'de> serde::Deserializer<'de> for Keys<'_> {
            type Error = serde::de::value::Error;
            fn deserialize_any<V: serde::de::Visitor<'de>>(
                self,
                _: V,
            ) -> Result<V::Value, Self::Error> {
                Err(serde::de::Error::custom("not a struct"))
            }
            fn deserialize_struct<V: serde::de::Visitor<'de>>(
                self,
                _name: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Self::Error> {
                *self.0 = fields;
                Err(serde::de::Error::custom("only the field names were wanted"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
                byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
                identifier ignored_any
            }
        }
        let mut keys: &'static [&'static str] = &[];
        let _ = RawAdmin::deserialize(Keys(&mut keys));
        keys
    }

    /// The `admin` section read by the agent's loader: from `raw` as its file, and from `env`.
    fn read(raw: RawAdmin, env: &[(String, String)]) -> (Option<AdminConfig>, Vec<ConfigError>) {
        let vars: std::collections::HashMap<String, String> = env.iter().cloned().collect();
        let mut l = Loader::new("config", &vars);
        let idp = IdpSettings {
            timeout: Duration::from_secs(1),
            ca_file: None,
            allow_insecure_http: false,
        };
        let admin = build_admin(raw, &mut l, &idp, None);
        (admin, l.errors)
    }

    #[test]
    fn connect_port_is_off_unless_set_and_must_be_a_port() {
        let port = |section: serde_json::Value, env: &[(&str, &str)]| {
            let raw: RawAdmin = serde_json::from_value(section).unwrap();
            let env: Vec<_> = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let (admin, errors) = read(raw, &env);
            (admin.and_then(|a| a.connect_port), errors)
        };
        let base = serde_json::json!({"endpoint": "dns:///flyteadmin:81", "mode": "client-secret", "client_id": "p", "client_secret": {"group": "g", "key": "k"}, "policy": "unrestricted"});
        assert_eq!(port(base.clone(), &[]), (None, vec![]));
        // The execution-scope policy judges flyteidl2's calls too, so the port goes with it.
        let mut scoped = base.clone();
        scoped["policy"] = "execution".into();
        scoped["connect_port"] = 8090.into();
        assert_eq!(port(scoped, &[]), (Some(8090), vec![]));
        let mut with = base.clone();
        with["connect_port"] = 8090.into();
        assert_eq!(port(with, &[]), (Some(8090), vec![]));
        for bad in ["0", "65536", "http"] {
            let (got, errors) = port(
                base.clone(),
                &[("FLYTE_AUTH_AGENT_ADMIN_CONNECT_PORT", bad)],
            );
            assert_eq!(got, None);
            assert_eq!(
                errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
                [format!("env FLYTE_AUTH_AGENT_ADMIN_CONNECT_PORT: admin.connect_port: {bad:?} is not a TCP port (1 to 65535)")]
            );
        }
    }

    #[test]
    fn every_admin_key_reaches_the_agent_through_the_env_the_injector_sets() {
        // A value for every key, none of them its default, so each shows in what is read back.
        let section = serde_json::json!({
            "endpoint": "dns:///flyteadmin.flyte:81",
            "insecure": false,
            "ca_file": "/etc/flyteadmin/ca.pem",
            "server_name": "flyteadmin.example.com",
            "auth_header": "flyte-authorization",
            "token_endpoint": "https://idp.example.com/oauth2/token",
            "audience": "flyteadmin",
            "scopes": ["all", "offline"],
            "mode": "client-secret",
            "client_id": "flytepropeller",
            "client_secret": {"group": "flyte-secret-auth", "key": "client_secret"},
            "client_auth_method": "client_secret_post",
            "allowed_methods": ["flyteidl.service.AdminService/*", "/flyteidl.service.DataProxyService/CreateUploadLocation"],
            "retry_buffer": 1000,
            "connect_timeout": "3s",
            "keepalive": "20s",
            "serve_token": true,
            "connect_port": 8090,
            "policy": "unrestricted",
            "max_request_bytes": 9999,
        });
        // Set per pod by the injector (the projected token, the pod's namespace), never by the
        // section.
        let per_pod = ["token_file", "project", "domain", "org"];
        let keys = admin_keys();
        assert!(keys.contains(&"endpoint"), "{keys:?}");
        for key in keys {
            assert!(
                section.get(key).is_some() || per_pod.contains(key),
                "admin.{key}: give it a value in this test's section (or list it as set per pod)"
            );
        }

        let checked = admin_section_env(section.clone(), "injector config", "/t", false).unwrap();
        let mut carried: Vec<&str> = checked.env.iter().map(|(var, _)| var.as_str()).collect();
        let mut expected: Vec<String> = keys
            .iter()
            .filter(|key| !per_pod.contains(key))
            .map(|key| env(key))
            .collect();
        carried.sort_unstable();
        expected.sort_unstable();
        assert_eq!(carried, expected);

        // The agent reads the same settings from that env as from the section in its file.
        let raw: RawAdmin = serde_json::from_value(section).unwrap();
        let (from_file, errors) = read(raw, &[]);
        assert_eq!(errors, []);
        let (from_env, errors) = read(RawAdmin::default(), &checked.env);
        assert_eq!(errors, []);
        assert_eq!(format!("{from_file:?}"), format!("{from_env:?}"));
        assert!(from_env.is_some_and(|a| a.serve_token && a.tls.is_some()));
    }
}

/// A jwt-bearer `admin` section from env alone (as the injector sets it) plus `env`, for tests.
#[cfg(test)]
fn load_jwt_bearer(env: &[(&str, &str)]) -> (Option<AdminConfig>, Vec<super::ConfigError>) {
    let mut vars: std::collections::HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in [
        ("FLYTE_AUTH_AGENT_ADMIN_ENDPOINT", "flyteadmin:81"),
        ("FLYTE_AUTH_AGENT_ADMIN_MODE", "jwt-bearer"),
        ("FLYTE_AUTH_AGENT_ADMIN_CLIENT_ID", "workload"),
        ("FLYTE_AUTH_AGENT_ADMIN_TOKEN_FILE", "/sa/token"),
    ] {
        vars.insert(k.into(), v.into());
    }
    let mut l = Loader {
        file_source: "config".into(),
        env: &vars,
        errors: Vec::new(),
        from_file: None,
    };
    let idp = IdpSettings {
        timeout: Duration::from_secs(1),
        ca_file: None,
        allow_insecure_http: false,
    };
    let admin = build_admin(RawAdmin::default(), &mut l, &idp, None);
    (admin, l.errors)
}

#[cfg(test)]
mod scope_tests {
    use super::*;

    fn load(env: &[(&str, &str)]) -> (Option<AdminConfig>, Vec<String>) {
        let (admin, errors) = load_jwt_bearer(env);
        (admin, errors.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn the_scope_comes_from_the_env_contract_and_the_policy_defaults_to_execution() {
        let (admin, errors) = load(&[
            (ENV_ADMIN_PROJECT, "flytesnacks"),
            (ENV_ADMIN_DOMAIN, "development"),
            (ENV_EXECUTION_ID, "a1b2c3"),
        ]);
        assert_eq!(errors, Vec::<String>::new());
        let admin = admin.unwrap();
        assert_eq!(admin.policy, AdminPolicy::Execution);
        assert_eq!(admin.project.as_deref(), Some("flytesnacks"));
        assert_eq!(admin.domain.as_deref(), Some("development"));
        assert_eq!(admin.org, None);
        assert_eq!(admin.pod_reported_execution_id.as_deref(), Some("a1b2c3"));
        assert_eq!(admin.max_request_bytes, 4 * 1024 * 1024);
        let (admin, _) = load(&[("FLYTE_AUTH_AGENT_ADMIN_POLICY", "unrestricted")]);
        assert_eq!(admin.unwrap().policy, AdminPolicy::Unrestricted);
        let (_, errors) = load(&[
            ("FLYTE_AUTH_AGENT_ADMIN_POLICY", "open"),
            (ENV_ADMIN_PROJECT, "a b"),
            ("FLYTE_AUTH_AGENT_ADMIN_MAX_REQUEST_BYTES", "2"),
        ]);
        assert_eq!(
            errors,
            [
                "env FLYTE_AUTH_AGENT_ADMIN_POLICY: admin.policy: \"open\" is not execution or unrestricted",
                "env FLYTE_AUTH_AGENT_ADMIN_PROJECT: admin.project: \"a b\" is not a Flyte project name (letters, digits, '-', '_', '.')",
                "env FLYTE_AUTH_AGENT_ADMIN_MAX_REQUEST_BYTES: admin.max_request_bytes: \"2\" is not a number of bytes (at least 5)",
            ]
        );
    }

    #[test]
    fn the_injector_section_cannot_set_the_scope_but_carries_the_policy() {
        let base = serde_json::json!({
            "endpoint": "dns:///flyteadmin.flyte:81",
            "mode": "jwt-bearer",
            "client_id": "workload",
        });
        for field in ["project", "domain", "org"] {
            let mut section = base.clone();
            section[field] = "flytesnacks".into();
            let e = admin_section_env(section, "injector config", "/t", false).unwrap_err();
            assert!(
                e.to_string()
                    .contains(&format!("admin.{field}: is set by the injector per pod")),
                "{e}"
            );
        }
        let mut section = base;
        section["policy"] = "unrestricted".into();
        let checked = admin_section_env(section, "injector config", "/t", false).unwrap();
        assert!(checked.env.contains(&(
            "FLYTE_AUTH_AGENT_ADMIN_POLICY".to_string(),
            "unrestricted".to_string()
        )));
    }
}
