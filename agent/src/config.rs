//! Configuration: a YAML file, environment overrides for everything a pod sets, and token
//! requests in flyteidl's JSON form. [`Config::load`] validates all of it up front and reports
//! every problem at once, each naming the field and where the value came from (file or env var),
//! never a secret.
//!
//! Token requests are flyteidl `OAuth2TokenRequest` objects (camelCase or snake_case) with three
//! optional agent extensions beside the proto fields, since flyteidl has no place for them:
//! `scopes` (list of strings, or one space-separated string), `audience` (string) and
//! `clientAuthMethod` / `client_auth_method` (`client_secret_basic`, the default,
//! `client_secret_post` or `private_key_jwt`; with `private_key_jwt` the client secret holds a PEM
//! private key, RSA or P-256).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flyte_auth_proto::flyteidl::core::secret::MountType;
use flyte_auth_proto::flyteidl::core::{o_auth2_token_request, OAuth2TokenRequest, Secret};
use serde::Deserialize;
use url::Url;

mod admin;
mod limits;

pub use admin::{
    admin_section_env, parse_endpoint, AdminAddress, AdminConfig, AdminMode, AdminPolicy, AdminTls,
    CheckedAdmin, MethodFilter,
};
pub use limits::{
    limits_section_env, Limits, ServeLimits, DEFAULT_HEALTH_LIMITS, DEFAULT_SOCKET_LIMITS,
    MAX_HEADER_BYTES, MIN_HEADER_BYTES,
};

use crate::refresh::RefreshPolicy;
pub use crate::request::{
    check_idp_url, check_name, ClientAuth, Endpoint, IdpSettings, TokenRequest,
};
use crate::secret::{SecretResolver, SecretsConfig};

use crate::env::{
    is_agent_owned, DEFAULT_HEALTH_PORT, DEFAULT_SECRETS_ENV_PREFIX, DEFAULT_SOCKET,
    DEFAULT_TOKENS_DIR, ENV_ALLOW_INSECURE_HTTP, ENV_CA_FILE, ENV_FILE_MODE, ENV_HEALTH_ADDR,
    ENV_IDP_TIMEOUT, ENV_LOG_FORMAT, ENV_SECRETS_ENV_PREFIX, ENV_SECRETS_FILE_PREFIX,
    ENV_SHUTDOWN_GRACE, ENV_SOCKET_MODE,
};
pub use crate::env::{
    Env, ProcessEnv, ENV_SECRETS_DIR, ENV_SOCKET, ENV_TOKENS_PATH_PREFIX, ENV_TOKEN_REQUESTS,
};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory token files are written to (`FLYTE_TOKENS_PATH_PREFIX`).
    pub tokens_dir: PathBuf,
    /// The token API's unix socket (`FLYTE_AUTH_AGENT_SOCKET`).
    pub socket_path: PathBuf,
    /// Health and metrics listen address.
    pub health_addr: SocketAddr,
    /// Log format.
    pub log_format: LogFormat,
    /// Mode of token files.
    pub file_mode: u32,
    /// Mode of the socket file.
    pub socket_mode: u32,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// Where client secrets are found.
    pub secrets: SecretsConfig,
    /// IdP call settings.
    pub idp: IdpSettings,
    /// When to refresh and how to back off.
    pub refresh: RefreshPolicy,
    /// The token requests, in configuration order.
    pub token_requests: Vec<TokenRequest>,
    /// FlyteAdmin and its executor-bound credential, when the proxy is on.
    pub admin: Option<AdminConfig>,
    /// What each listener accepts (`limits`).
    pub limits: Limits,
    /// Things worth saying at info level once logging is up.
    pub notices: Vec<String>,
}

/// One configuration problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where the value came from (`config file a.yaml`, `env FLYTE_…`).
    pub source: String,
    /// The field, as a path.
    pub field: String,
    /// What is wrong.
    pub problem: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.source, self.field, self.problem)
    }
}

/// Every problem found in a configuration, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    tokens_path_prefix: Option<String>,
    socket: Option<String>,
    health_addr: Option<String>,
    log_format: Option<String>,
    file_mode: Option<String>,
    socket_mode: Option<String>,
    shutdown_grace: Option<String>,
    secrets: RawSecrets,
    idp: RawIdp,
    refresh: RawRefresh,
    token_requests: Vec<serde_json::Value>,
    admin: admin::RawAdmin,
    limits: limits::RawLimits,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSecrets {
    default_dir: Option<String>,
    env_prefix: Option<String>,
    file_prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawIdp {
    timeout: Option<String>,
    ca_file: Option<String>,
    allow_insecure_http: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRefresh {
    at_fraction: Option<f64>,
    jitter: Option<f64>,
    default_lifetime: Option<String>,
    max_lifetime: Option<String>,
    min_backoff: Option<String>,
    max_backoff: Option<String>,
}

/// Collects values and problems while one configuration is read.
struct Loader<'a> {
    file_source: String,
    env: &'a dyn Env,
    errors: Vec<ConfigError>,
}

impl Loader<'_> {
    fn error(&mut self, source: &str, field: &str, problem: impl Into<String>) {
        self.errors.push(ConfigError {
            source: source.to_string(),
            field: field.to_string(),
            problem: problem.into(),
        });
    }

    /// The env var if set, else the file's value, with where it came from.
    fn pick(&self, env_var: Option<&str>, file: Option<String>) -> Option<(String, String)> {
        if let Some(var) = env_var {
            if let Some(v) = self.env.var(var) {
                return Some((v, format!("env {var}")));
            }
        }
        file.map(|v| (v, self.file_source.clone()))
    }

    fn parsed<T>(
        &mut self,
        field: &str,
        env_var: Option<&str>,
        file: Option<String>,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> T {
        match self.pick(env_var, file) {
            None => default,
            Some((raw, source)) => match parse(raw.trim()) {
                Ok(v) => v,
                Err(problem) => {
                    self.error(&source, field, problem);
                    default
                }
            },
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 10s or 1h30m ({e})"))
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!("{s:?} is not an octal file mode like \"0644\"")),
    }
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(format!("{s:?} is not true or false")),
    }
}

fn parse_fraction(s: f64) -> Result<f64, String> {
    if (0.0..1.0).contains(&s) {
        Ok(s)
    } else {
        Err(format!("{s} is not a fraction in [0, 1)"))
    }
}

impl Config {
    /// Reads, validates and checks the configuration: the YAML file at `path` (if any), env
    /// overrides from `env`, and every client secret (read once now so an unreadable one stops
    /// the agent at start rather than at its first token).
    pub fn load(path: Option<&Path>, env: Arc<dyn Env>) -> Result<Config, ConfigErrors> {
        let (raw, file_source) = match path {
            None => (RawConfig::default(), "config".to_string()),
            Some(path) => {
                let source = format!("config file {}", path.display());
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigErrors(vec![ConfigError {
                        source: source.clone(),
                        field: "(file)".into(),
                        problem: format!("cannot read it: {e}"),
                    }])
                })?;
                (parse_yaml(&text, &source)?, source)
            }
        };
        let mut l = Loader {
            file_source,
            env: env.as_ref(),
            errors: Vec::new(),
        };
        let config = build(raw, &mut l, &env);
        if l.errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(l.errors))
        }
    }
}

fn parse_yaml(text: &str, source: &str) -> Result<RawConfig, ConfigErrors> {
    if text.trim().is_empty() {
        return Ok(RawConfig::default());
    }
    serde_yaml_ng::from_str(text).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            source: source.to_string(),
            field: e
                .location()
                .map(|l| format!("line {} column {}", l.line(), l.column()))
                .unwrap_or_else(|| "(file)".into()),
            problem: e.to_string(),
        }])
    })
}

fn build(raw: RawConfig, l: &mut Loader<'_>, env: &Arc<dyn Env>) -> Config {
    let defaults = SecretsConfig::default();
    let secrets = SecretsConfig {
        default_dir: l
            .pick(Some(ENV_SECRETS_DIR), raw.secrets.default_dir)
            .map_or(defaults.default_dir, |(v, _)| v.into()),
        env_prefix: l
            .pick(Some(ENV_SECRETS_ENV_PREFIX), raw.secrets.env_prefix)
            .map_or(defaults.env_prefix, |(v, _)| v),
        file_prefix: l
            .pick(Some(ENV_SECRETS_FILE_PREFIX), raw.secrets.file_prefix)
            .map_or(defaults.file_prefix, |(v, _)| v),
    };
    let tokens_dir = l
        .pick(Some(ENV_TOKENS_PATH_PREFIX), raw.tokens_path_prefix)
        .map_or_else(|| PathBuf::from(DEFAULT_TOKENS_DIR), |(v, _)| v.into());
    let socket_path = l
        .pick(Some(ENV_SOCKET), raw.socket)
        .map_or_else(|| PathBuf::from(DEFAULT_SOCKET), |(v, _)| v.into());
    let health_addr = l.parsed(
        "health_addr",
        Some(ENV_HEALTH_ADDR),
        raw.health_addr,
        SocketAddr::from(([0, 0, 0, 0], DEFAULT_HEALTH_PORT)),
        |s| {
            s.parse()
                .map_err(|_| format!("{s:?} is not an address like 0.0.0.0:9911"))
        },
    );
    let log_format = l.parsed(
        "log_format",
        Some(ENV_LOG_FORMAT),
        raw.log_format,
        LogFormat::Text,
        |s| match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("{s:?} is not text or json")),
        },
    );
    let file_mode = l.parsed(
        "file_mode",
        Some(ENV_FILE_MODE),
        raw.file_mode,
        0o644,
        parse_mode,
    );
    let socket_mode = l.parsed(
        "socket_mode",
        Some(ENV_SOCKET_MODE),
        raw.socket_mode,
        0o666,
        parse_mode,
    );
    let shutdown_grace = l.parsed(
        "shutdown_grace",
        Some(ENV_SHUTDOWN_GRACE),
        raw.shutdown_grace,
        Duration::from_secs(10),
        parse_duration,
    );
    let idp = IdpSettings {
        timeout: l.parsed(
            "idp.timeout",
            Some(ENV_IDP_TIMEOUT),
            raw.idp.timeout,
            Duration::from_secs(10),
            parse_duration,
        ),
        ca_file: l.parsed(
            "idp.ca_file",
            Some(ENV_CA_FILE),
            raw.idp.ca_file,
            None,
            |s| match std::fs::metadata(s) {
                Ok(_) => Ok(Some(PathBuf::from(s))),
                Err(e) => Err(format!("cannot read {s}: {e}")),
            },
        ),
        allow_insecure_http: l.parsed(
            "idp.allow_insecure_http",
            Some(ENV_ALLOW_INSECURE_HTTP),
            raw.idp.allow_insecure_http.map(|b| b.to_string()),
            false,
            parse_bool,
        ),
    };
    let refresh = build_refresh(raw.refresh, l);

    let resolver = SecretResolver::new(secrets.clone(), env.clone());
    let admin = admin::build_admin(raw.admin, l, &idp, Some(&resolver));
    let mut notices = Vec::new();
    let file_items = raw
        .token_requests
        .into_iter()
        .enumerate()
        .map(|(i, v)| (l.file_source.clone(), format!("token_requests[{i}]"), v));
    let mut items: Vec<_> = file_items.collect();
    if let Some(json) = l.env.var(ENV_TOKEN_REQUESTS) {
        let source = format!("env {ENV_TOKEN_REQUESTS}");
        match serde_json::from_str::<Vec<serde_json::Value>>(&json) {
            Ok(values) => items.extend(
                values
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| (source.clone(), format!("[{i}]"), v)),
            ),
            Err(e) => l.error(
                &source,
                "(value)",
                format!("not a JSON array of token requests: {e}"),
            ),
        }
    }
    let token_requests = collect_token_requests(
        items,
        idp.allow_insecure_http,
        Some(&resolver),
        l,
        &mut notices,
    );

    Config {
        tokens_dir,
        socket_path,
        health_addr,
        log_format,
        file_mode,
        socket_mode,
        shutdown_grace,
        secrets,
        idp,
        refresh,
        token_requests,
        admin,
        limits: limits::build_limits(raw.limits, l),
        notices,
    }
}

/// The largest `refresh.max_lifetime` accepted.
const MAX_MAX_LIFETIME: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn build_refresh(raw: RawRefresh, l: &mut Loader<'_>) -> RefreshPolicy {
    let d = RefreshPolicy::default();
    let fraction = |v: Option<f64>| v.map(|f| f.to_string());
    let policy = RefreshPolicy {
        at_fraction: l.parsed(
            "refresh.at_fraction",
            None,
            fraction(raw.at_fraction),
            d.at_fraction,
            |s| parse_fraction(s.parse().unwrap_or(f64::NAN)),
        ),
        jitter: l.parsed(
            "refresh.jitter",
            None,
            fraction(raw.jitter),
            d.jitter,
            |s| parse_fraction(s.parse().unwrap_or(f64::NAN)),
        ),
        default_lifetime: l.parsed(
            "refresh.default_lifetime",
            None,
            raw.default_lifetime,
            d.default_lifetime,
            parse_duration,
        ),
        max_lifetime: l.parsed(
            "refresh.max_lifetime",
            None,
            raw.max_lifetime,
            d.max_lifetime,
            parse_duration,
        ),
        min_backoff: l.parsed(
            "refresh.min_backoff",
            None,
            raw.min_backoff,
            d.min_backoff,
            parse_duration,
        ),
        max_backoff: l.parsed(
            "refresh.max_backoff",
            None,
            raw.max_backoff,
            d.max_backoff,
            parse_duration,
        ),
    };
    if policy.jitter > policy.at_fraction {
        let src = l.file_source.clone();
        l.error(
            &src,
            "refresh.jitter",
            "must not exceed refresh.at_fraction",
        );
    }
    // Bounded above so that now + max_lifetime is always a time the agent can write down.
    if policy.max_lifetime.is_zero() || policy.max_lifetime > MAX_MAX_LIFETIME {
        let src = l.file_source.clone();
        l.error(
            &src,
            "refresh.max_lifetime",
            "must be above zero and at most 100 years",
        );
    } else if policy.default_lifetime > policy.max_lifetime {
        let src = l.file_source.clone();
        l.error(
            &src,
            "refresh.default_lifetime",
            "must not exceed refresh.max_lifetime",
        );
    }
    if policy.min_backoff.is_zero() || policy.min_backoff > policy.max_backoff {
        let src = l.file_source.clone();
        l.error(
            &src,
            "refresh.min_backoff",
            "must be above zero and at most refresh.max_backoff",
        );
    }
    policy
}

/// Validates token requests given as flyteidl JSON values (with the agent's extensions), each
/// with the path that names it in messages (`[0]`, or an annotation key), all from `source`, by
/// exactly the rules the agent applies at start, except that secrets are not read: for a caller
/// that has none to read, such as the injector validating a pod's annotations. Every problem is
/// reported, each naming its field (`[0].client.clientId`).
pub fn validate_token_requests(
    items: Vec<(String, serde_json::Value)>,
    source: &str,
    allow_insecure_http: bool,
) -> Result<Vec<TokenRequest>, ConfigErrors> {
    let no_env = HashMap::<String, String>::new();
    let mut l = Loader {
        file_source: source.to_string(),
        env: &no_env,
        errors: Vec::new(),
    };
    let items = items
        .into_iter()
        .map(|(path, v)| (source.to_string(), path, v))
        .collect();
    let requests =
        collect_token_requests(items, allow_insecure_http, None, &mut l, &mut Vec::new());
    if l.errors.is_empty() {
        Ok(requests)
    } else {
        Err(ConfigErrors(l.errors))
    }
}

/// Every valid request of `items` (source, path, value), unique by name; problems go to `l`.
/// With a `resolver`, each client secret is read too.
fn collect_token_requests(
    items: Vec<(String, String, serde_json::Value)>,
    allow_insecure_http: bool,
    resolver: Option<&SecretResolver>,
    l: &mut Loader<'_>,
    notices: &mut Vec<String>,
) -> Vec<TokenRequest> {
    let mut token_requests = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    for (source, path, value) in items {
        let Some(req) = parse_token_request(
            value,
            &source,
            &path,
            allow_insecure_http,
            resolver,
            l,
            notices,
        ) else {
            continue;
        };
        let origin = format!("{source} {path}");
        if let Some(first) = seen.get(&req.name) {
            l.error(
                &source,
                &format!("{path}.name"),
                format!(
                    "duplicate token request name {:?} (first defined at {first})",
                    req.name
                ),
            );
            continue;
        }
        seen.insert(req.name.clone(), origin);
        token_requests.push(req);
    }
    token_requests
}

const EXTENSION_KEYS: [&str; 4] = [
    "scopes",
    "audience",
    "clientAuthMethod",
    "client_auth_method",
];

struct Extensions {
    scopes: Vec<String>,
    audience: Option<String>,
    client_auth: ClientAuth,
}

fn take_extensions(
    obj: &mut serde_json::Map<String, serde_json::Value>,
    source: &str,
    path: &str,
    l: &mut Loader<'_>,
) -> Extensions {
    let mut ext = Extensions {
        scopes: Vec::new(),
        audience: None,
        client_auth: ClientAuth::ClientSecretBasic,
    };
    for key in EXTENSION_KEYS {
        let Some(value) = obj.remove(key) else {
            continue;
        };
        let field = format!("{path}.{key}");
        match (key, value) {
            ("scopes", serde_json::Value::String(s)) => {
                ext.scopes = s.split_whitespace().map(str::to_string).collect()
            }
            ("scopes", serde_json::Value::Array(items)) => {
                for item in items {
                    match item {
                        serde_json::Value::String(s) if !s.is_empty() && !s.contains(' ') => {
                            ext.scopes.push(s)
                        }
                        other => l.error(
                            source,
                            &field,
                            format!("{other} is not a single scope string"),
                        ),
                    }
                }
            }
            ("audience", serde_json::Value::String(s)) if !s.is_empty() => ext.audience = Some(s),
            (_, serde_json::Value::String(s)) if key != "scopes" && key != "audience" => {
                ext.client_auth = match s.as_str() {
                    "client_secret_basic" => ClientAuth::ClientSecretBasic,
                    "client_secret_post" => ClientAuth::ClientSecretPost,
                    "private_key_jwt" => ClientAuth::PrivateKeyJwt,
                    _ => {
                        l.error(
                            source,
                            &field,
                            format!(
                                "{s:?} is not client_secret_basic, client_secret_post or private_key_jwt"
                            ),
                        );
                        continue;
                    }
                }
            }
            (_, other) => l.error(source, &field, format!("{other} has the wrong type")),
        }
    }
    ext
}

/// Checks the `type` field by hand: an unknown name would otherwise fail the whole message in the
/// JSON parser, hiding every other problem in it.
fn take_type(
    obj: &mut serde_json::Map<String, serde_json::Value>,
    source: &str,
    path: &str,
    l: &mut Loader<'_>,
) {
    let Some(value) = obj.get("type") else { return };
    let known = match value {
        serde_json::Value::String(s) => s == "CLIENT_CREDENTIALS",
        serde_json::Value::Number(n) => {
            n.as_i64() == Some(o_auth2_token_request::Type::ClientCredentials as i64)
        }
        _ => false,
    };
    if !known {
        l.error(
            source,
            &format!("{path}.type"),
            format!("unknown token request type {value}; only CLIENT_CREDENTIALS is supported"),
        );
        obj.remove("type");
    }
}

/// The parts of a client secret reference the resolver would otherwise act on blindly: a mount
/// requirement flyteidl defines, and a custom env var inside the secrets' env prefix, so that a
/// token request can never make the agent read (and send to an IdP) one of its own settings.
fn check_secret_ref(
    secret: &Secret,
    resolver: Option<&SecretResolver>,
    field: &dyn Fn(&str) -> String,
    source: &str,
    l: &mut Loader<'_>,
) {
    if MountType::try_from(secret.mount_requirement).is_err() {
        l.error(
            source,
            &field("client.clientSecret.mountRequirement"),
            format!(
                "{} is not ANY (0), ENV_VAR (1) or FILE (2)",
                secret.mount_requirement
            ),
        );
    }
    let var = secret.env_var.as_str();
    if var.is_empty() {
        return;
    }
    let prefix = resolver.map_or(DEFAULT_SECRETS_ENV_PREFIX, SecretResolver::env_prefix);
    let valid_name = var
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    let problem = if !valid_name {
        format!("{var:?} is not an env var name (letters, digits, '_', '-', '.')")
    } else if !var.starts_with(prefix) || var.len() == prefix.len() || is_agent_owned(var) {
        format!(
            "{var:?} must start with the secrets env prefix {prefix:?} \
             (FLYTE_SECRETS_ENV_PREFIX): the agent's other env vars are its configuration"
        )
    } else {
        return;
    };
    l.error(source, &field("client.clientSecret.envVar"), problem);
}

#[allow(clippy::too_many_arguments)]
fn parse_token_request(
    value: serde_json::Value,
    source: &str,
    path: &str,
    allow_insecure_http: bool,
    resolver: Option<&SecretResolver>,
    l: &mut Loader<'_>,
    notices: &mut Vec<String>,
) -> Option<TokenRequest> {
    let serde_json::Value::Object(mut obj) = value else {
        l.error(source, path, "is not an object");
        return None;
    };
    let errors_before = l.errors.len();
    let ext = take_extensions(&mut obj, source, path, l);
    take_type(&mut obj, source, path, l);
    let proto: OAuth2TokenRequest =
        match flyte_auth_proto::from_json(&serde_json::Value::Object(obj)) {
            Ok(p) => p,
            Err(e) => {
                l.error(source, path, e.to_string());
                return None;
            }
        };
    let field = |f: &str| format!("{path}.{f}");
    if let Err(problem) = check_name(&proto.name) {
        l.error(source, &field("name"), problem);
    }
    let client = proto.client.unwrap_or_default();
    if client.client_id.trim().is_empty() {
        l.error(source, &field("client.clientId"), "is missing");
    }
    let client_secret = client.client_secret.unwrap_or_default();
    let url = |s: &str, name: &str, l: &mut Loader<'_>| -> Option<Url> {
        match Url::parse(s) {
            Ok(u) => match check_idp_url(&u, allow_insecure_http) {
                Ok(()) => Some(u),
                Err(problem) => {
                    l.error(source, &field(name), problem);
                    None
                }
            },
            Err(e) => {
                l.error(source, &field(name), format!("{s:?} is not a URL: {e}"));
                None
            }
        }
    };
    let endpoint = match (
        proto.token_endpoint.as_str(),
        proto.idp_discovery_endpoint.as_str(),
    ) {
        ("", "") => {
            l.error(
                source,
                path,
                "neither tokenEndpoint nor idpDiscoveryEndpoint is set",
            );
            None
        }
        (token, discovery) if !token.is_empty() => {
            if !discovery.is_empty() {
                notices.push(format!(
                    "token request {:?} ({source} {path}) sets both tokenEndpoint and idpDiscoveryEndpoint; using tokenEndpoint",
                    proto.name
                ));
            }
            url(token, "tokenEndpoint", l).map(Endpoint::Token)
        }
        (_, discovery) => url(discovery, "idpDiscoveryEndpoint", l).map(Endpoint::Discovery),
    };
    check_secret_ref(&client_secret, resolver, &|f| field(f), source, l);
    if client_secret.group.is_empty() {
        l.error(source, &field("client.clientSecret.group"), "is missing");
    } else if let Some(resolver) = resolver {
        match resolver.read(&client_secret) {
            Err(e) => l.error(source, &field("client.clientSecret"), e.to_string()),
            Ok(value) if ext.client_auth == ClientAuth::PrivateKeyJwt => {
                if let Err(e) = crate::assertion::AssertionKey::from_pem(&value) {
                    l.error(source, &field("client.clientSecret"), e.to_string());
                }
            }
            Ok(_) => {}
        }
    }
    if l.errors.len() > errors_before {
        return None;
    }
    Some(TokenRequest {
        name: proto.name,
        client_id: client.client_id,
        client_secret,
        endpoint: endpoint?,
        client_auth: ext.client_auth,
        scopes: ext.scopes,
        audience: ext.audience,
        origin: format!("{source} {path}"),
    })
}

#[cfg(test)]
mod tests;
