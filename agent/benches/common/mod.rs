//! What the benchmarks share: runtimes, the embedded issuer, units and /proc readings.

use std::path::Path;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use flyte_auth_agent::dev;
use flyte_auth_agent::token::SecretString;

/// A multi-threaded runtime with two workers (the machine's size).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Starts the embedded issuer on `rt` for client `bench` with `secret` (hour-long tokens) until
/// `shutdown`; returns its URL.
pub fn spawn_issuer(
    rt: &tokio::runtime::Runtime,
    secret: &str,
    shutdown: &CancellationToken,
) -> String {
    rt.block_on(async {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        dev::spawn_issuer(
            l,
            "bench",
            SecretString::new(secret),
            Duration::from_secs(3600),
            shutdown.clone(),
        )
        .unwrap()
    })
}

/// Microseconds, for printing.
pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A process's resident set and its peak, in KiB, from /proc.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A temp dir whose `secrets/bench/secret` holds `secret`, as the agents' secrets dir.
pub fn dir_with_secret(secret: &str) -> tempfile::TempDir {
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(work.path().join("secrets/bench")).unwrap();
    std::fs::write(work.path().join("secrets/bench/secret"), secret).unwrap();
    work
}

// Only the proxy benches start such an agent; the others compile this module too.
#[allow(dead_code)]
/// The env of an agent process whose files are under `dir`, with no token requests and an Admin
/// proxy to `endpoint` whose credential is client `bench`'s from the embedded issuer at `issuer`
/// (auth settings configured, so the agent asks the upstream nothing), plus `extra`.
pub fn admin_agent_env(
    dir: &Path,
    endpoint: &str,
    issuer: &str,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let path = |p: &str| dir.join(p).display().to_string();
    let mut env: Vec<(String, String)> = [
        ("FLYTE_TOKENS_PATH_PREFIX", path("tokens")),
        ("FLYTE_AUTH_AGENT_SOCKET", path("run/agent.sock")),
        ("FLYTE_SECRETS_DEFAULT_DIR", path("secrets")),
        ("FLYTE_AUTH_AGENT_HEALTH_ADDR", "127.0.0.1:0".into()),
        ("FLYTE_AUTH_AGENT_TOKEN_REQUESTS", "[]".into()),
        ("FLYTE_AUTH_AGENT_ADMIN_ENDPOINT", endpoint.into()),
        ("FLYTE_AUTH_AGENT_ADMIN_MODE", "client-secret".into()),
        ("FLYTE_AUTH_AGENT_ADMIN_CLIENT_ID", "bench".into()),
        (
            "FLYTE_AUTH_AGENT_ADMIN_CLIENT_SECRET",
            r#"{"group": "bench", "key": "secret"}"#.into(),
        ),
        (
            "FLYTE_AUTH_AGENT_ADMIN_TOKEN_ENDPOINT",
            format!("{issuer}/token"),
        ),
        ("FLYTE_AUTH_AGENT_ADMIN_AUTH_HEADER", "authorization".into()),
        ("FLYTE_AUTH_AGENT_ADMIN_SCOPES", "all".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}
