//! Configuration: a YAML file, environment overrides for everything a pod sets, and token
//! requests in flyteidl's JSON form. [`Config::load`] validates all of it up front and reports
//! every problem at once, each naming the field and where the value came from (file or env var),
//! never a secret.
//!
//! This module only builds: the values it makes are the vocabulary of [`crate::request`],
//! [`crate::refresh`] and [`crate::secret`], read by its loader (`config/loader.rs`) from names in
//! [`crate::env`].
//! The token request validator ([`validate_token_requests`]) and the `admin` and `limits`
//! sections' checks are also what the injector runs on a pod's annotations and its own config.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

mod admin;
mod limits;
mod loader;
mod requests;

pub use admin::{
    admin_section_env, parse_endpoint, AdminAddress, AdminConfig, AdminMode, AdminPolicy, AdminTls,
    CheckedAdmin, MethodFilter,
};
pub use limits::{
    limits_section_env, Limits, ServeLimits, DEFAULT_HEALTH_LIMITS, DEFAULT_SOCKET_LIMITS,
    MAX_HEADER_BYTES, MIN_HEADER_BYTES,
};
use loader::{parse_bool, parse_duration, parse_mode, Loader};
pub use loader::{ConfigError, ConfigErrors};
pub use requests::validate_token_requests;

use crate::refresh::RefreshPolicy;
pub use crate::request::{
    check_idp_url, check_name, ClientAuth, Endpoint, IdpSettings, TokenRequest,
};
use crate::secret::{SecretResolver, SecretsConfig};

pub use crate::env::{
    Env, ProcessEnv, ENV_SECRETS_DIR, ENV_SOCKET, ENV_TOKENS_PATH_PREFIX, ENV_TOKEN_REQUESTS,
};
use crate::env::{
    DEFAULT_HEALTH_PORT, DEFAULT_SOCKET, DEFAULT_TOKENS_DIR, ENV_ALLOW_INSECURE_HTTP, ENV_CA_FILE,
    ENV_FILE_MODE, ENV_HEALTH_ADDR, ENV_IDP_TIMEOUT, ENV_LOG_FORMAT, ENV_SECRETS_ENV_PREFIX,
    ENV_SECRETS_FILE_PREFIX, ENV_SHUTDOWN_GRACE, ENV_SOCKET_MODE,
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
    retry_after_attempts: Option<u32>,
    start_jitter: Option<String>,
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
                    ConfigErrors::one(&source, "(file)", format!("cannot read it: {e}"))
                })?;
                (parse_yaml(&text, &source)?, source)
            }
        };
        let mut l = Loader::new(&file_source, env.as_ref());
        let config = build(raw, &mut l, &env);
        l.finish(config)
    }
}

fn parse_yaml(text: &str, source: &str) -> Result<RawConfig, ConfigErrors> {
    if text.trim().is_empty() {
        return Ok(RawConfig::default());
    }
    serde_yaml_ng::from_str(text).map_err(|e| {
        let field = e
            .location()
            .map(|l| format!("line {} column {}", l.line(), l.column()))
            .unwrap_or_else(|| "(file)".into());
        ConfigErrors::one(source, &field, e.to_string())
    })
}

fn build(mut raw: RawConfig, l: &mut Loader<'_>, env: &Arc<dyn Env>) -> Config {
    let secrets = build_secrets(std::mem::take(&mut raw.secrets), l);
    let place = build_placement(&mut raw, l);
    let idp = build_idp(raw.idp, l);
    let refresh = build_refresh(raw.refresh, l);
    let resolver = SecretResolver::new(secrets.clone(), env.clone());
    let admin = admin::build_admin(raw.admin, l, &idp, Some(&resolver));
    let items = token_request_items(raw.token_requests, l);
    let mut notices = Vec::new();
    let token_requests = requests::collect(
        items,
        idp.allow_insecure_http,
        Some(&resolver),
        l,
        &mut notices,
    );
    Config {
        tokens_dir: place.tokens_dir,
        socket_path: place.socket_path,
        health_addr: place.health_addr,
        log_format: place.log_format,
        file_mode: place.file_mode,
        socket_mode: place.socket_mode,
        shutdown_grace: place.shutdown_grace,
        secrets,
        idp,
        refresh,
        token_requests,
        admin,
        limits: limits::build_limits(raw.limits, l),
        notices,
    }
}

fn build_secrets(raw: RawSecrets, l: &mut Loader<'_>) -> SecretsConfig {
    let defaults = SecretsConfig::default();
    SecretsConfig {
        default_dir: l
            .pick(Some(ENV_SECRETS_DIR), raw.default_dir)
            .map_or(defaults.default_dir, |(v, _)| v.into()),
        env_prefix: l
            .pick(Some(ENV_SECRETS_ENV_PREFIX), raw.env_prefix)
            .map_or(defaults.env_prefix, |(v, _)| v),
        file_prefix: l
            .pick(Some(ENV_SECRETS_FILE_PREFIX), raw.file_prefix)
            .map_or(defaults.file_prefix, |(v, _)| v),
    }
}

/// Where the agent sits in the pod: its files, its listeners, its logs.
struct Placement {
    tokens_dir: PathBuf,
    socket_path: PathBuf,
    health_addr: SocketAddr,
    log_format: LogFormat,
    file_mode: u32,
    socket_mode: u32,
    shutdown_grace: Duration,
}

fn build_placement(raw: &mut RawConfig, l: &mut Loader<'_>) -> Placement {
    let tokens_dir = l
        .pick(Some(ENV_TOKENS_PATH_PREFIX), raw.tokens_path_prefix.take())
        .map_or_else(|| PathBuf::from(DEFAULT_TOKENS_DIR), |(v, _)| v.into());
    let socket_path = l
        .pick(Some(ENV_SOCKET), raw.socket.take())
        .map_or_else(|| PathBuf::from(DEFAULT_SOCKET), |(v, _)| v.into());
    let health_addr = l.parsed(
        "health_addr",
        Some(ENV_HEALTH_ADDR),
        raw.health_addr.take(),
        SocketAddr::from(([0, 0, 0, 0], DEFAULT_HEALTH_PORT)),
        |s| {
            s.parse()
                .map_err(|_| format!("{s:?} is not an address like 0.0.0.0:9911"))
        },
    );
    let log_format = l.parsed(
        "log_format",
        Some(ENV_LOG_FORMAT),
        raw.log_format.take(),
        LogFormat::Text,
        |s| match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("{s:?} is not text or json")),
        },
    );
    let mode = |l: &mut Loader<'_>, field: &str, var, file, default| {
        l.parsed(field, Some(var), file, default, parse_mode)
    };
    let file_mode = mode(l, "file_mode", ENV_FILE_MODE, raw.file_mode.take(), 0o644);
    let socket_mode = mode(
        l,
        "socket_mode",
        ENV_SOCKET_MODE,
        raw.socket_mode.take(),
        0o666,
    );
    let shutdown_grace = l.parsed(
        "shutdown_grace",
        Some(ENV_SHUTDOWN_GRACE),
        raw.shutdown_grace.take(),
        Duration::from_secs(10),
        parse_duration,
    );
    Placement {
        tokens_dir,
        socket_path,
        health_addr,
        log_format,
        file_mode,
        socket_mode,
        shutdown_grace,
    }
}

fn build_idp(raw: RawIdp, l: &mut Loader<'_>) -> IdpSettings {
    IdpSettings {
        timeout: l.parsed(
            "idp.timeout",
            Some(ENV_IDP_TIMEOUT),
            raw.timeout,
            Duration::from_secs(10),
            parse_duration,
        ),
        ca_file: l.parsed("idp.ca_file", Some(ENV_CA_FILE), raw.ca_file, None, |s| {
            match std::fs::metadata(s) {
                Ok(_) => Ok(Some(PathBuf::from(s))),
                Err(e) => Err(format!("cannot read {s}: {e}")),
            }
        }),
        allow_insecure_http: l.parsed(
            "idp.allow_insecure_http",
            Some(ENV_ALLOW_INSECURE_HTTP),
            raw.allow_insecure_http.map(|b| b.to_string()),
            false,
            parse_bool,
        ),
    }
}

/// The token requests of the file (`token_requests[i]`), then of the env var (`[i]`), each with
/// its source and path.
fn token_request_items(
    file: Vec<serde_json::Value>,
    l: &mut Loader<'_>,
) -> Vec<(String, String, serde_json::Value)> {
    let mut items: Vec<_> = file
        .into_iter()
        .enumerate()
        .map(|(i, v)| (l.file_source.clone(), format!("token_requests[{i}]"), v))
        .collect();
    let Some(json) = l.env.var(ENV_TOKEN_REQUESTS) else {
        return items;
    };
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
    items
}

/// The largest `refresh.max_lifetime` accepted.
const MAX_MAX_LIFETIME: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The largest `refresh.start_jitter` accepted.
const MAX_START_JITTER: Duration = Duration::from_secs(3600);

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
        retry_after_attempts: l.parsed(
            "refresh.retry_after_attempts",
            None,
            raw.retry_after_attempts.map(|n| n.to_string()),
            d.retry_after_attempts,
            |s| s.parse().map_err(|e| format!("{s:?} is not a count: {e}")),
        ),
        start_jitter: l.parsed(
            "refresh.start_jitter",
            Some(crate::env::ENV_REFRESH_START_JITTER),
            raw.start_jitter,
            d.start_jitter,
            parse_duration,
        ),
        // Env only: the injector's start pacing gives each pod its own time.
        start_at: l.parsed(
            "start_at",
            Some(crate::env::ENV_START_AT),
            None,
            d.start_at,
            |s| parse_start_at(s, SystemTime::now()).map(Some),
        ),
    };
    check_refresh(&policy, l);
    policy
}

/// A paced start time: Unix milliseconds, at most [`MAX_START_JITTER`] after `now` (the
/// injector schedules within its `agent.start_pacing.max_delay`, below the pod's startup probe).
fn parse_start_at(s: &str, now: SystemTime) -> Result<SystemTime, String> {
    let at = crate::pacing::from_unix_millis(s)
        .ok_or_else(|| format!("{s:?} is not a time in Unix milliseconds"))?;
    if at
        .duration_since(now)
        .is_ok_and(|ahead| ahead > MAX_START_JITTER)
    {
        return Err(format!("{s} is more than 1h ahead of this node's clock"));
    }
    Ok(at)
}

/// The relations between refresh settings that each value alone cannot show.
fn check_refresh(p: &RefreshPolicy, l: &mut Loader<'_>) {
    if p.jitter > p.at_fraction {
        l.file_error("refresh.jitter", "must not exceed refresh.at_fraction");
    }
    // Bounded above so that now + max_lifetime is always a time the agent can write down.
    if p.max_lifetime.is_zero() || p.max_lifetime > MAX_MAX_LIFETIME {
        l.file_error(
            "refresh.max_lifetime",
            "must be above zero and at most 100 years",
        );
    } else if p.default_lifetime > p.max_lifetime {
        l.file_error(
            "refresh.default_lifetime",
            "must not exceed refresh.max_lifetime",
        );
    }
    // A fan-out of thousands against tens of requests a second needs minutes, not hours.
    if p.start_jitter > MAX_START_JITTER {
        l.file_error("refresh.start_jitter", "must be at most 1h");
    }
    if p.min_backoff.is_zero() || p.min_backoff > p.max_backoff {
        l.file_error(
            "refresh.min_backoff",
            "must be above zero and at most refresh.max_backoff",
        );
    }
}

#[cfg(test)]
mod tests;
