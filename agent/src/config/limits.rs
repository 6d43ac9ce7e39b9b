//! The `limits` section: what each of the agent's listeners accepts before it stops reading.
//! The unix socket and the health port both take input from outside the agent's trust (the task
//! container; other pods), so each bounds its open connections, the size of a request head, the
//! number of its headers and the time a new connection may take to send its first request.
//!
//! Every key has a default that fits a task pod and an env override
//! `FLYTE_AUTH_AGENT_LIMITS_<KEY>` (declared in [`crate::env`]).

use std::time::Duration;

use serde::Deserialize;

use super::loader::{parse_duration, ConfigErrors, Loader};

use crate::env::{
    ENV_LIMITS_H2_KEEPALIVE_INTERVAL, ENV_LIMITS_H2_KEEPALIVE_TIMEOUT,
    ENV_LIMITS_H2_MAX_CONCURRENT_STREAMS, ENV_LIMITS_H2_WINDOW, ENV_LIMITS_HEALTH_MAX_CONNECTIONS,
    ENV_LIMITS_HEALTH_MAX_HEADER_BYTES, ENV_LIMITS_MAX_HEADERS, ENV_LIMITS_MAX_INFLIGHT_CALLS,
    ENV_LIMITS_REQUEST_HEAD_TIMEOUT, ENV_LIMITS_SOCKET_MAX_CONNECTIONS,
    ENV_LIMITS_SOCKET_MAX_HEADER_BYTES,
};

/// hyper's smallest HTTP/1 read buffer; a header limit below it cannot be enforced.
pub const MIN_HEADER_BYTES: usize = 8 * 1024;
/// The largest header limit accepted: far above any real client, far below memory trouble.
pub const MAX_HEADER_BYTES: usize = 1024 * 1024;

/// What one listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// Most connections open at once; a connection beyond it is closed as soon as it is accepted.
    pub max_connections: usize,
    /// Largest HTTP/1 request head (hyper's read buffer; larger heads get 431) and HTTP/2
    /// header list (announced in SETTINGS), in bytes; at least [`MIN_HEADER_BYTES`].
    pub max_header_bytes: usize,
    /// Most headers in one HTTP/1 request head (more get 431).
    pub max_headers: usize,
    /// Time a connection has to send a complete request head (HTTP/1; again between keep-alive
    /// requests) or the HTTP/2 preface and a first request; after that it is closed.
    pub request_head_timeout: Duration,
    /// Ping interval of HTTP/2 connections. An established connection is never closed for being
    /// idle (flytekit keeps one per process between calls); only for not answering pings.
    pub h2_keepalive_interval: Duration,
    /// How long a ping may go unanswered.
    pub h2_keepalive_timeout: Duration,
    /// Most concurrent streams on one HTTP/2 connection.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 flow-control window of each stream and of the whole connection, in bytes: the
    /// most request body a connection can make the server hold before the handler reads it.
    pub h2_window: u32,
}

/// The default HTTP/2 window: far above a gRPC call's typical message on a local socket, and
/// 256 connections hold at most 64 MiB of unread request bodies (hyper's own default is 1 MiB).
pub const DEFAULT_H2_WINDOW: u32 = 256 * 1024;

/// The unix socket's defaults: room for every process of a task (flytekit keeps one HTTP/2
/// connection each) and for gRPC metadata, which is larger than a token GET.
pub const DEFAULT_SOCKET_LIMITS: ServeLimits = ServeLimits {
    max_connections: 256,
    max_header_bytes: 64 * 1024,
    max_headers: 64,
    request_head_timeout: Duration::from_secs(10),
    h2_keepalive_interval: Duration::from_secs(60),
    h2_keepalive_timeout: Duration::from_secs(20),
    h2_max_concurrent_streams: 100,
    h2_window: DEFAULT_H2_WINDOW,
};

/// The health port's defaults: probes and a scraper send a few small GETs.
pub const DEFAULT_HEALTH_LIMITS: ServeLimits = ServeLimits {
    max_connections: 32,
    max_header_bytes: MIN_HEADER_BYTES,
    max_headers: 64,
    request_head_timeout: Duration::from_secs(10),
    h2_keepalive_interval: Duration::from_secs(60),
    h2_keepalive_timeout: Duration::from_secs(20),
    h2_max_concurrent_streams: 100,
    h2_window: DEFAULT_H2_WINDOW,
};

impl Default for ServeLimits {
    /// The unix socket's defaults ([`DEFAULT_SOCKET_LIMITS`]).
    fn default() -> Self {
        DEFAULT_SOCKET_LIMITS
    }
}

/// The validated `limits` section: one set per listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The unix socket (token API and Admin proxy).
    pub socket: ServeLimits,
    /// The health and metrics port.
    pub health: ServeLimits,
    /// Most gRPC calls the Admin proxy carries at once, over every connection: each may hold up
    /// to `admin.retry_buffer` of request body, so this bounds that memory too.
    pub max_inflight_calls: usize,
}

/// Default of [`Limits::max_inflight_calls`]: far above what a task's processes make at once,
/// and 16 MiB of retry buffers at the default `admin.retry_buffer`.
pub const DEFAULT_MAX_INFLIGHT_CALLS: usize = 256;

impl Default for Limits {
    fn default() -> Self {
        Self {
            socket: DEFAULT_SOCKET_LIMITS,
            health: DEFAULT_HEALTH_LIMITS,
            max_inflight_calls: DEFAULT_MAX_INFLIGHT_CALLS,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLimits {
    socket_max_connections: Option<u64>,
    socket_max_header_bytes: Option<u64>,
    health_max_connections: Option<u64>,
    health_max_header_bytes: Option<u64>,
    max_headers: Option<u64>,
    request_head_timeout: Option<String>,
    h2_keepalive_interval: Option<String>,
    h2_keepalive_timeout: Option<String>,
    h2_max_concurrent_streams: Option<u64>,
    h2_window: Option<u64>,
    max_inflight_calls: Option<u64>,
}

/// A count in `min..=max`.
fn count(min: u64, max: u64) -> impl Fn(&str) -> Result<u64, String> {
    move |s: &str| match s.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("{s:?} is not a whole number from {min} to {max}")),
    }
}

/// A duration above zero and at most an hour (a longer one would not bound anything).
fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() || d > Duration::from_secs(3600) {
        return Err(format!("{s:?} must be above zero and at most 1h"));
    }
    Ok(d)
}

pub(super) fn build_limits(raw: RawLimits, l: &mut Loader<'_>) -> Limits {
    let d = Limits::default();
    let n = |v: Option<u64>| v.map(|n| n.to_string());
    let headers = count(MIN_HEADER_BYTES as u64, MAX_HEADER_BYTES as u64);
    let connections = count(1, 65_536);
    let mut per_listener = |field: &str, var, file, default: usize, parse: &dyn Fn(&str) -> _| {
        l.parsed(field, Some(var), n(file), default as u64, parse)
    };
    let socket_max_connections = per_listener(
        "limits.socket_max_connections",
        ENV_LIMITS_SOCKET_MAX_CONNECTIONS,
        raw.socket_max_connections,
        d.socket.max_connections,
        &connections,
    );
    let socket_max_header_bytes = per_listener(
        "limits.socket_max_header_bytes",
        ENV_LIMITS_SOCKET_MAX_HEADER_BYTES,
        raw.socket_max_header_bytes,
        d.socket.max_header_bytes,
        &headers,
    );
    let health_max_connections = per_listener(
        "limits.health_max_connections",
        ENV_LIMITS_HEALTH_MAX_CONNECTIONS,
        raw.health_max_connections,
        d.health.max_connections,
        &connections,
    );
    let health_max_header_bytes = per_listener(
        "limits.health_max_header_bytes",
        ENV_LIMITS_HEALTH_MAX_HEADER_BYTES,
        raw.health_max_header_bytes,
        d.health.max_header_bytes,
        &headers,
    );
    let shared = shared_limits(&raw, l, &d.socket);
    let max_inflight_calls = l.parsed(
        "limits.max_inflight_calls",
        Some(ENV_LIMITS_MAX_INFLIGHT_CALLS),
        n(raw.max_inflight_calls),
        d.max_inflight_calls as u64,
        count(1, 65_536),
    );
    // Every value is within its checked range, so these conversions are exact.
    let listener = |max_connections: u64, max_header_bytes: u64| ServeLimits {
        max_connections: max_connections as usize,
        max_header_bytes: max_header_bytes as usize,
        ..shared
    };
    Limits {
        socket: listener(socket_max_connections, socket_max_header_bytes),
        health: listener(health_max_connections, health_max_header_bytes),
        max_inflight_calls: max_inflight_calls as usize,
    }
}

/// The settings both listeners share, over `d`'s per-listener values (which the caller sets).
fn shared_limits(raw: &RawLimits, l: &mut Loader<'_>, d: &ServeLimits) -> ServeLimits {
    let n = |v: Option<u64>| v.map(|n| n.to_string());
    let max_headers = l.parsed(
        "limits.max_headers",
        Some(ENV_LIMITS_MAX_HEADERS),
        n(raw.max_headers),
        d.max_headers as u64,
        count(1, 1024),
    );
    let mut duration = |field: &str, var, file: &Option<String>, default| {
        l.parsed(field, Some(var), file.clone(), default, positive_duration)
    };
    let request_head_timeout = duration(
        "limits.request_head_timeout",
        ENV_LIMITS_REQUEST_HEAD_TIMEOUT,
        &raw.request_head_timeout,
        d.request_head_timeout,
    );
    let h2_keepalive_interval = duration(
        "limits.h2_keepalive_interval",
        ENV_LIMITS_H2_KEEPALIVE_INTERVAL,
        &raw.h2_keepalive_interval,
        d.h2_keepalive_interval,
    );
    let h2_keepalive_timeout = duration(
        "limits.h2_keepalive_timeout",
        ENV_LIMITS_H2_KEEPALIVE_TIMEOUT,
        &raw.h2_keepalive_timeout,
        d.h2_keepalive_timeout,
    );
    let h2_max_concurrent_streams = l.parsed(
        "limits.h2_max_concurrent_streams",
        Some(ENV_LIMITS_H2_MAX_CONCURRENT_STREAMS),
        n(raw.h2_max_concurrent_streams),
        u64::from(d.h2_max_concurrent_streams),
        count(1, 10_000),
    );
    let h2_window = l.parsed(
        "limits.h2_window",
        Some(ENV_LIMITS_H2_WINDOW),
        n(raw.h2_window),
        u64::from(d.h2_window),
        // HTTP/2's own floor (RFC 9113 §6.9.2) and ceiling.
        count(65_535, (1 << 31) - 1),
    );
    // Every value is within its checked range, so these conversions are exact.
    ServeLimits {
        max_headers: max_headers as usize,
        request_head_timeout,
        h2_keepalive_interval,
        h2_keepalive_timeout,
        h2_max_concurrent_streams: h2_max_concurrent_streams as u32,
        h2_window: h2_window as u32,
        ..*d
    }
}

/// Checks a `limits` section (keys as in the agent's config file) the way the agent will read it
/// and returns the env vars that carry it (`FLYTE_AUTH_AGENT_LIMITS_<KEY>`), for the injector,
/// which configures the agent through its env only. Every problem names `limits.<key>`.
pub fn limits_section_env(
    section: serde_json::Value,
    source: &str,
) -> Result<Vec<(String, String)>, ConfigErrors> {
    let fail = |field: String, problem: String| ConfigErrors::one(source, &field, problem);
    let section = match section {
        serde_json::Value::Null => return Ok(Vec::new()),
        serde_json::Value::Object(map) => map,
        other => return Err(fail("limits".into(), format!("{other} is not a mapping"))),
    };
    // Unknown keys and wrong types, by the same type the agent's file is read with.
    serde_path_to_error::deserialize::<_, RawLimits>(serde_json::Value::Object(section.clone()))
        .map_err(|e| fail(format!("limits.{}", e.path()), e.into_inner().to_string()))?;
    let env: Vec<(String, String)> = section
        .into_iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(key, value)| {
            let value = match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            (
                format!(
                    "{}{}",
                    crate::env::ENV_LIMITS_PREFIX,
                    key.to_ascii_uppercase()
                ),
                value,
            )
        })
        .collect();
    // Values, by the agent's own rules, read from exactly the env it will be given.
    let map: std::collections::HashMap<String, String> = env.iter().cloned().collect();
    let mut l = Loader::new(source, &map);
    build_limits(RawLimits::default(), &mut l);
    l.finish(env)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::*;
    use crate::config::{Config, Env};

    fn load(yaml: &str, env: &[(&str, &str)]) -> Result<Config, crate::config::ConfigErrors> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        std::fs::write(&path, yaml).unwrap();
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(Some(&path), Arc::new(env) as Arc<dyn Env>)
    }

    #[test]
    fn defaults_bound_every_listener() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.limits.socket.max_connections, 256);
        assert_eq!(c.limits.health.max_connections, 32);
        assert_eq!(c.limits.health.max_header_bytes, 8192);
        assert_eq!(ServeLimits::default(), DEFAULT_SOCKET_LIMITS);
    }

    #[test]
    fn file_values_and_env_overrides() {
        let c = load(
            "limits:\n  socket_max_connections: 4\n  health_max_header_bytes: 16384\n  request_head_timeout: 2s\n  h2_max_concurrent_streams: 8\n",
            &[
                (ENV_LIMITS_SOCKET_MAX_CONNECTIONS, "5"),
                (ENV_LIMITS_H2_KEEPALIVE_INTERVAL, "90s"),
                (ENV_LIMITS_H2_WINDOW, "131072"),
                (ENV_LIMITS_MAX_INFLIGHT_CALLS, "7"),
            ],
        )
        .unwrap();
        assert_eq!(c.limits.socket.h2_window, 131_072);
        assert_eq!(c.limits.max_inflight_calls, 7);
        assert_eq!(c.limits.socket.max_connections, 5);
        assert_eq!(c.limits.health.max_header_bytes, 16384);
        assert_eq!(c.limits.socket.request_head_timeout, Duration::from_secs(2));
        assert_eq!(c.limits.health.request_head_timeout, Duration::from_secs(2));
        assert_eq!(c.limits.socket.h2_max_concurrent_streams, 8);
        assert_eq!(
            c.limits.socket.h2_keepalive_interval,
            Duration::from_secs(90)
        );
    }

    #[test]
    fn every_bad_value_is_named() {
        let e = load(
            "limits:\n  socket_max_connections: 0\n  socket_max_header_bytes: 100\n  request_head_timeout: 0s\n  max_headers: 5000\n  bogus: 1\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `bogus`"), "{e}");
        let e = load(
            "limits:\n  socket_max_connections: 0\n  socket_max_header_bytes: 100\n  request_head_timeout: 0s\n  max_headers: 5000\n",
            &[
                (ENV_LIMITS_H2_KEEPALIVE_TIMEOUT, "never"),
                (ENV_LIMITS_H2_WINDOW, "1000"),
                (ENV_LIMITS_MAX_INFLIGHT_CALLS, "0"),
            ],
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "limits.socket_max_connections: \"0\" is not a whole number from 1 to 65536",
            "limits.socket_max_header_bytes: \"100\" is not a whole number from 8192 to 1048576",
            "limits.request_head_timeout: \"0s\" must be above zero",
            "limits.max_headers: \"5000\" is not a whole number from 1 to 1024",
            "env FLYTE_AUTH_AGENT_LIMITS_H2_KEEPALIVE_TIMEOUT: limits.h2_keepalive_timeout: \"never\" is not a duration",
            "limits.h2_window: \"1000\" is not a whole number from 65535 to 2147483647",
            "limits.max_inflight_calls: \"0\" is not a whole number from 1 to 65536",
        ] {
            assert!(e.contains(needle), "expected {needle:?} in:\n{e}");
        }
    }

    #[test]
    fn a_section_becomes_the_env_the_agent_reads_it_from() {
        let yaml = "socket_max_connections: 9\nsocket_max_header_bytes: 16384\nhealth_max_connections: 3\nhealth_max_header_bytes: 9000\nmax_headers: 10\nrequest_head_timeout: 4s\nh2_keepalive_interval: 30s\nh2_keepalive_timeout: 5s\nh2_max_concurrent_streams: 7\nh2_window: 70000\nmax_inflight_calls: 11\n";
        let section: serde_json::Value = serde_yaml_ng::from_str(yaml).unwrap();
        let env = limits_section_env(section, "injector config").unwrap();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let from_env = load("", &env).unwrap();
        let indented: String = yaml.lines().map(|l| format!("  {l}\n")).collect();
        let from_file = load(&format!("limits:\n{indented}"), &[]).map(|c| c.limits);
        assert_eq!(Ok(from_env.limits), from_file.map_err(|e| e.to_string()));
        assert_eq!(from_env.limits.max_inflight_calls, 11);
        assert_eq!(from_env.limits.socket.h2_window, 70_000);
    }

    #[test]
    fn a_bad_section_is_named_as_the_agent_would() {
        let check = |json: serde_json::Value| {
            limits_section_env(json, "injector config")
                .unwrap_err()
                .to_string()
        };
        let e = check(serde_json::json!({"bogus": 1}));
        assert!(
            e.contains("injector config: limits.bogus") || e.contains("unknown field `bogus`"),
            "{e}"
        );
        let e = check(serde_json::json!({"max_headers": "many"}));
        assert!(e.contains("limits.max_headers"), "{e}");
        let e = check(serde_json::json!({"socket_max_connections": 0}));
        assert!(
            e.contains(
                "limits.socket_max_connections: \"0\" is not a whole number from 1 to 65536"
            ),
            "{e}"
        );
        assert!(check(serde_json::json!([1])).contains("is not a mapping"));
        assert_eq!(
            limits_section_env(serde_json::Value::Null, "x").unwrap(),
            Vec::new()
        );
    }
}
