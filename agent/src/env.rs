//! The agent's environment contract: every env var the agent reads, and the defaults the agent
//! and the injector must agree on, spelled once. The agent's loader reads these names, the
//! injector sets them on the agent container, and the injector refuses any pod that would set
//! one of them itself ([`is_agent_owned`]): the agent's environment belongs to the injector.
//!
//! Also the [`Env`] seam the loader reads through, so tests pass a map instead of mutating the
//! process environment.

use std::collections::HashMap;

/// Reads environment variables. Tests pass a `HashMap` instead of mutating the process
/// environment, which would race with other tests.
pub trait Env: Send + Sync {
    /// The value of `key`, if set.
    fn var(&self, key: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, key: &str) -> Option<String> {
        self.get(key).cloned()
    }
}

/// The prefix of every agent setting's env var (`FLYTE_AUTH_AGENT_ADMIN_*` among them).
pub const AGENT_PREFIX: &str = "FLYTE_AUTH_AGENT_";
/// The prefix of propeller's secret-lookup settings, which the agent reads like flytekit.
pub const SECRETS_PREFIX: &str = "FLYTE_SECRETS_";

/// The YAML configuration file.
pub const ENV_CONFIG: &str = "FLYTE_AUTH_AGENT_CONFIG";
/// Directory for token files (also what a task reads to find them).
pub const ENV_TOKENS_PATH_PREFIX: &str = "FLYTE_TOKENS_PATH_PREFIX";
/// The unix socket path (also what a task reads to find it).
pub const ENV_SOCKET: &str = "FLYTE_AUTH_AGENT_SOCKET";
/// Token requests as a JSON array of flyteidl `OAuth2TokenRequest`.
pub const ENV_TOKEN_REQUESTS: &str = "FLYTE_AUTH_AGENT_TOKEN_REQUESTS";
/// Health and metrics listen address.
pub const ENV_HEALTH_ADDR: &str = "FLYTE_AUTH_AGENT_HEALTH_ADDR";
/// Log line format (`text` or `json`).
pub const ENV_LOG_FORMAT: &str = "FLYTE_AUTH_AGENT_LOG_FORMAT";
/// Mode of token files.
pub const ENV_FILE_MODE: &str = "FLYTE_AUTH_AGENT_FILE_MODE";
/// Mode of the socket file.
pub const ENV_SOCKET_MODE: &str = "FLYTE_AUTH_AGENT_SOCKET_MODE";
/// How long shutdown waits for in-flight requests.
pub const ENV_SHUTDOWN_GRACE: &str = "FLYTE_AUTH_AGENT_SHUTDOWN_GRACE";
/// Timeout of each IdP call.
pub const ENV_IDP_TIMEOUT: &str = "FLYTE_AUTH_AGENT_IDP_TIMEOUT";
/// Extra CA bundle for IdPs.
pub const ENV_CA_FILE: &str = "FLYTE_AUTH_AGENT_CA_FILE";
/// Allow plain `http://` IdPs on non-loopback hosts.
pub const ENV_ALLOW_INSECURE_HTTP: &str = "FLYTE_AUTH_AGENT_ALLOW_INSECURE_HTTP";
/// `refresh.start_jitter`: each token's first IdP call waits a draw from [0, this); the injector
/// sets it from `agent.start_jitter` so the pods of a fan-out spread their first calls.
pub const ENV_REFRESH_START_JITTER: &str = "FLYTE_AUTH_AGENT_REFRESH_START_JITTER";
/// When the agent's first IdP calls may start, in Unix milliseconds: the injector's start pacing
/// (`agent.start_pacing`, [`crate::pacing`]) gives each pod of a fan-out its own time.
pub const ENV_START_AT: &str = "FLYTE_AUTH_AGENT_START_AT";
/// The prefix of the `admin` section's env overrides (`…_ENDPOINT`, `…_CLIENT_ID`, …).
pub const ENV_ADMIN_PREFIX: &str = "FLYTE_AUTH_AGENT_ADMIN_";
/// Env var: `admin.serve_token`, whether `GET /v1/admin/token` serves the Admin credential.
pub const ENV_ADMIN_SERVE_TOKEN: &str = "FLYTE_AUTH_AGENT_ADMIN_SERVE_TOKEN";
/// The prefix of the `limits` section's env overrides (`…_SOCKET_MAX_CONNECTIONS`, …).
pub const ENV_LIMITS_PREFIX: &str = "FLYTE_AUTH_AGENT_LIMITS_";
/// Env var: most connections open at once on the unix socket.
pub const ENV_LIMITS_SOCKET_MAX_CONNECTIONS: &str =
    "FLYTE_AUTH_AGENT_LIMITS_SOCKET_MAX_CONNECTIONS";
/// Env var: largest request head (HTTP/1) or header list (HTTP/2) on the unix socket, in bytes.
pub const ENV_LIMITS_SOCKET_MAX_HEADER_BYTES: &str =
    "FLYTE_AUTH_AGENT_LIMITS_SOCKET_MAX_HEADER_BYTES";
/// Env var: most connections open at once on the health port.
pub const ENV_LIMITS_HEALTH_MAX_CONNECTIONS: &str =
    "FLYTE_AUTH_AGENT_LIMITS_HEALTH_MAX_CONNECTIONS";
/// Env var: largest request head on the health port, in bytes.
pub const ENV_LIMITS_HEALTH_MAX_HEADER_BYTES: &str =
    "FLYTE_AUTH_AGENT_LIMITS_HEALTH_MAX_HEADER_BYTES";
/// Env var: most headers in one HTTP/1 request head, on both listeners.
pub const ENV_LIMITS_MAX_HEADERS: &str = "FLYTE_AUTH_AGENT_LIMITS_MAX_HEADERS";
/// Env var: how long a connection may take to send a complete request head (HTTP/1, also between
/// keep-alive requests) or the HTTP/2 preface and its first request, on both listeners.
pub const ENV_LIMITS_REQUEST_HEAD_TIMEOUT: &str = "FLYTE_AUTH_AGENT_LIMITS_REQUEST_HEAD_TIMEOUT";
/// Env var: how often an HTTP/2 connection on the socket is pinged.
pub const ENV_LIMITS_H2_KEEPALIVE_INTERVAL: &str = "FLYTE_AUTH_AGENT_LIMITS_H2_KEEPALIVE_INTERVAL";
/// Env var: how long an HTTP/2 ping may go unanswered before the connection is closed.
pub const ENV_LIMITS_H2_KEEPALIVE_TIMEOUT: &str = "FLYTE_AUTH_AGENT_LIMITS_H2_KEEPALIVE_TIMEOUT";
/// Env var: the HTTP/2 flow-control window on the socket.
pub const ENV_LIMITS_H2_WINDOW: &str = "FLYTE_AUTH_AGENT_LIMITS_H2_WINDOW";
/// Env var: most gRPC calls the Admin proxy carries at once.
pub const ENV_LIMITS_MAX_INFLIGHT_CALLS: &str = "FLYTE_AUTH_AGENT_LIMITS_MAX_INFLIGHT_CALLS";
/// Env var: most concurrent streams (calls) on one HTTP/2 connection.
pub const ENV_LIMITS_H2_MAX_CONCURRENT_STREAMS: &str =
    "FLYTE_AUTH_AGENT_LIMITS_H2_MAX_CONCURRENT_STREAMS";
/// Env var: the project of the pod's execution, as the injector derived it from the pod's
/// namespace; the Admin proxy lets a task act in this project only.
pub const ENV_ADMIN_PROJECT: &str = "FLYTE_AUTH_AGENT_ADMIN_PROJECT";
/// Env var: the domain of the pod's execution (from the namespace, like the project).
pub const ENV_ADMIN_DOMAIN: &str = "FLYTE_AUTH_AGENT_ADMIN_DOMAIN";
/// Env var: the org of the pod's execution, where Flyte uses orgs (empty: none).
pub const ENV_ADMIN_ORG: &str = "FLYTE_AUTH_AGENT_ADMIN_ORG";
/// Env var: the execution id the pod reports (`FLYTE_INTERNAL_EXECUTION_ID`), for audit lines
/// only: the pod's author writes it, so it is never used to decide anything.
pub const ENV_EXECUTION_ID: &str = "FLYTE_AUTH_AGENT_EXECUTION_ID";
/// The secrets directory (propeller's secret webhook sets it in task containers).
pub const ENV_SECRETS_DIR: &str = "FLYTE_SECRETS_DEFAULT_DIR";
/// The prefix of secrets given as env vars.
pub const ENV_SECRETS_ENV_PREFIX: &str = "FLYTE_SECRETS_ENV_PREFIX";
/// The prefix of secret file names.
pub const ENV_SECRETS_FILE_PREFIX: &str = "FLYTE_SECRETS_FILE_PREFIX";
/// The log filter (tracing-subscriber's `EnvFilter`).
pub const ENV_LOG_FILTER: &str = "RUST_LOG";

/// Every env var the agent reads by exact name (besides the [`AGENT_PREFIX`] and
/// [`SECRETS_PREFIX`] families, which it owns whole).
pub const READ_BY_NAME: [&str; 2] = [ENV_TOKENS_PATH_PREFIX, ENV_LOG_FILTER];

/// Default directory for token files.
pub const DEFAULT_TOKENS_DIR: &str = "/var/run/flyte/tokens";
/// Default directory of the socket.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/flyte-auth-agent";
/// The socket's file name inside its directory.
pub const SOCKET_FILE: &str = "agent.sock";
/// Default socket path: [`DEFAULT_SOCKET_DIR`]/[`SOCKET_FILE`].
pub const DEFAULT_SOCKET: &str = "/var/run/flyte-auth-agent/agent.sock";
/// Default port of the health and metrics listener.
pub const DEFAULT_HEALTH_PORT: u16 = 9911;
/// Default secrets directory (propeller's secret webhook's).
pub const DEFAULT_SECRETS_DIR: &str = "/etc/flyte/secrets";
/// Default prefix of secrets given as env vars (propeller's `_FSEC_`).
pub const DEFAULT_SECRETS_ENV_PREFIX: &str = "_FSEC_";

/// Whether `name` is an env var the agent reads as configuration, so that only the injector may
/// set it on the agent container: a pod that could set it could steer the agent (its token
/// requests, its IdP endpoints, its Admin credential, its log filter).
pub fn is_agent_owned(name: &str) -> bool {
    name.starts_with(AGENT_PREFIX)
        || name.starts_with(SECRETS_PREFIX)
        || READ_BY_NAME.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_socket_is_the_default_dir_and_file() {
        assert_eq!(
            DEFAULT_SOCKET,
            format!("{DEFAULT_SOCKET_DIR}/{SOCKET_FILE}")
        );
    }

    #[test]
    fn every_setting_is_agent_owned_and_secret_names_are_not() {
        for name in [
            ENV_CONFIG,
            ENV_TOKENS_PATH_PREFIX,
            ENV_SOCKET,
            ENV_TOKEN_REQUESTS,
            ENV_HEALTH_ADDR,
            ENV_LOG_FORMAT,
            ENV_FILE_MODE,
            ENV_SOCKET_MODE,
            ENV_SHUTDOWN_GRACE,
            ENV_IDP_TIMEOUT,
            ENV_CA_FILE,
            ENV_ALLOW_INSECURE_HTTP,
            "FLYTE_AUTH_AGENT_ADMIN_TOKEN_ENDPOINT",
            ENV_SECRETS_DIR,
            ENV_SECRETS_ENV_PREFIX,
            ENV_SECRETS_FILE_PREFIX,
            ENV_LOG_FILTER,
        ] {
            assert!(is_agent_owned(name), "{name}");
        }
        for name in [
            "_FSEC_APP_KEY",
            "MY_SECRET",
            "FLYTE_PLATFORM_URL",
            "RUST_LOGX",
        ] {
            assert!(!is_agent_owned(name), "{name}");
        }
    }
}
