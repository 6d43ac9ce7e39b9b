//! Benchmark: a fresh flytekit process's first Admin call (`list_projects_paginated` right
//! after `FlyteRemote(Config.auto()).client` is built; tests/python/first_admin_call.py), two
//! ways, interleaved in one run against the real oidc-provider and the Admin stand-in on
//! loopback:
//! - status quo: the process holds a client secret (`auth_mode=ClientSecret`), asks the IdP
//!   for a token itself and calls Admin directly;
//! - agent: the process has exactly the task container's env from the real injector's patch
//!   (the agent's socket, `external_process` auth), and the agent, started with exactly the
//!   agent container's env and args, authenticates the call.
//!
//! Prints p50/p90 of the first call both ways and their ratio (issue 13's target: ≤ 1/3), the
//! whole process's wall time both ways, and the agent's share: its CPU time per agent run
//! (from /proc), against the first call's p50.
//!
//! Run: `cargo build -p flyte-auth-agent && AGENT_LOG=info cargo bench -p flyte-auth-injector
//! --bench task_first_call` (the bench does not build the agent; AGENT_LOG is the agent's
//! RUST_LOG in the test harness, debug unless set, and a pod logs at info). `RUNS` processes each way; every loop is bounded.

// The agent's test harness (it allows its own dead code; the bench uses part of it).
#[path = "../../agent/tests/common/mod.rs"]
mod common;
#[path = "../tests/kubelet/mod.rs"]
mod kubelet;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{agent_bin, python, workspace, Admin, AgentProcess, Idp, Pod};
use flyte_auth_injector::config::Config;
use flyte_auth_injector::review::Injector;
use kubelet::{agent_command, container_env, mutated, review_of, Secrets};
use serde_json::{json, Value};

const RUNS: usize = 30;
const WARMUP: usize = 3;
const PROPELLER_SECRET: &str = "propeller-secret-bench";

/// The namespace's one Secret: the Admin client's.
fn secrets() -> Secrets {
    Secrets::from([(
        "flyte-secret-auth",
        [("client_secret", PROPELLER_SECRET)].into(),
    )])
}

/// The agent's pid: this process's child running the agent binary.
fn agent_pid() -> u32 {
    let me = std::process::id();
    let children = std::fs::read_to_string(format!("/proc/{me}/task/{me}/children")).unwrap();
    children
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|p| {
            std::fs::read_link(format!("/proc/{p}/exe"))
                .is_ok_and(|exe| exe == Path::new(agent_bin()))
        })
        .expect("the agent is a child of this process")
}

/// CPU time a process has used (user + system), from /proc.
fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    Duration::from_secs_f64((fields[11] + fields[12]) as f64 / 100.0)
}

struct Run {
    first_call_ms: f64,
    wall: Duration,
}

fn run(env: &[(String, String)], authenticator: &str) -> Run {
    let started = Instant::now();
    let out = Command::new(python())
        .arg(workspace().join("tests/python/first_admin_call.py"))
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let wall = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(seen["authenticators"], json!([authenticator]), "{seen}");
    assert!(seen["projects"].as_u64().unwrap() > 0, "{seen}");
    Run {
        first_call_ms: seen["first_call_ms"].as_f64().unwrap(),
        wall,
    }
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    // The harness starts the agent at RUST_LOG=$AGENT_LOG, debug by default; a pod logs at info.
    let agent_log =
        std::env::var("AGENT_LOG").unwrap_or_else(|_| "debug (set AGENT_LOG=info)".into());
    let idp = Idp::with_clients(&[("flytepropeller", PROPELLER_SECRET, "client_secret_basic")]);
    let admin = Admin::start(json!({ "issuer": idp.issuer }));
    let dirs = Pod::new();
    let config = format!(
        r#"
agent:
  tokens_dir: {tokens}
  socket_dir: {socket}
  secrets_dir: {secrets}
  log_format: text
  allow_local_idp: true
admin:
  endpoint: {admin}
  insecure: true
  mode: client-secret
  client_id: flytepropeller
  client_secret: {{group: flyte-secret-auth, key: client_secret}}
"#,
        tokens = dirs.tokens_dir().display(),
        socket = dirs.socket().parent().unwrap().display(),
        secrets = dirs.secrets_dir().display(),
        admin = admin.address(),
    );
    let injector = Injector::new(Config::parse(&config, "bench config").unwrap());
    let pod = mutated(
        &injector,
        &review_of(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "bench-n0-0",
                "namespace": "flytesnacks-development",
                "labels": {"flyte.org/auth-agent": "enabled"},
            },
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "task", "image": "flytekit", "env": [
                    {"name": "FLYTE_INTERNAL_EXECUTION_PROJECT", "value": "flytesnacks"},
                    {"name": "FLYTE_INTERNAL_EXECUTION_DOMAIN", "value": "development"},
                ]}],
            },
        })),
    );
    let (args, agent_env) = agent_command(&pod, &secrets());
    let process = AgentProcess::start(
        &dirs,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &agent_env,
    );
    process.wait_ready(Duration::from_secs(30));
    let pid = agent_pid();

    let home = ("HOME".to_string(), dirs.dir.path().display().to_string());
    let mut through_agent = container_env(&pod["spec"]["containers"][0], &secrets());
    through_agent.push(home.clone());
    let status_quo: Vec<(String, String)> = [
        ("FLYTE_PLATFORM_URL", admin.address()),
        ("FLYTE_PLATFORM_INSECURE", "true".into()),
        ("FLYTE_CREDENTIALS_AUTH_MODE", "ClientSecret".into()),
        ("FLYTE_CREDENTIALS_CLIENT_ID", "flytepropeller".into()),
        ("FLYTE_CREDENTIALS_CLIENT_SECRET", PROPELLER_SECRET.into()),
        ("FLYTE_INTERNAL_EXECUTION_PROJECT", "flytesnacks".into()),
        ("FLYTE_INTERNAL_EXECUTION_DOMAIN", "development".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .chain([home])
    .collect();

    for _ in 0..WARMUP {
        run(&status_quo, "ClientCredentialsAuthenticator");
        run(&through_agent, "CommandAuthenticator");
    }
    let (mut quo, mut via) = (Vec::new(), Vec::new());
    let (mut quo_wall, mut via_wall) = (Vec::new(), Vec::new());
    let mut agent_cpu = Duration::ZERO;
    for _ in 0..RUNS {
        let r = run(&status_quo, "ClientCredentialsAuthenticator");
        quo.push(r.first_call_ms);
        quo_wall.push(r.wall.as_secs_f64() * 1e3);
        let before = cpu(pid);
        let r = run(&through_agent, "CommandAuthenticator");
        agent_cpu += cpu(pid) - before;
        via.push(r.first_call_ms);
        via_wall.push(r.wall.as_secs_f64() * 1e3);
    }
    let (q50, q90) = (percentile(&mut quo, 0.5), percentile(&mut quo, 0.9));
    let (v50, v90) = (percentile(&mut via, 0.5), percentile(&mut via, 0.9));
    let agent_ms = agent_cpu.as_secs_f64() * 1e3 / RUNS as f64;
    println!("first Admin call of a fresh flytekit process, {RUNS} runs each, interleaved (agent log: {agent_log}):");
    println!("  status quo (ClientSecret, IdP + Admin): p50 {q50:7.2} ms  p90 {q90:7.2} ms");
    println!("  through the agent (injector's env):     p50 {v50:7.2} ms  p90 {v90:7.2} ms");
    println!(
        "  ratio agent / status quo: p50 {:.2}  p90 {:.2}  (target <= 0.33)",
        v50 / q50,
        v90 / q90
    );
    println!(
        "  agent CPU per run: {agent_ms:.2} ms (/proc, 10 ms ticks: a mean over {RUNS} runs) = {:.0}% of the agent path's p50",
        100.0 * agent_ms / v50
    );
    println!(
        "  whole process wall: status quo p50 {:.0} ms, through the agent p50 {:.0} ms",
        percentile(&mut quo_wall, 0.5),
        percentile(&mut via_wall, 0.5)
    );
    drop(process);
}
