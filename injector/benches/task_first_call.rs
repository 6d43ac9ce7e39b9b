//! Benchmark: a fresh flytekit process's first Admin call (`list_projects_paginated` right
//! after `FlyteRemote(Config.auto()).client` is built; tests/python/first_admin_call.py), three
//! ways, interleaved in one run against the real oidc-provider and the Admin stand-in on
//! loopback:
//! - status quo (the floor the others are compared with): the process holds a client secret
//!   (`auth_mode=ClientSecret`), asks the IdP for a token itself and calls Admin directly;
//! - through the agent, with exactly the task container's env from the real injector's patch
//!   of a plain pod (flytekit's `external_process` mode, which first asks Admin's
//!   AuthMetadataService twice, through the agent);
//! - the same for a pod whose image has the flyte-auth-agent Python package (the annotation
//!   `with_tokens` writes: the package's `flyte_auth_agent` mode, which asks nothing first).
//!
//! The agent is started once, with exactly the agent container's env and args (the same for
//! both pods). Prints p50/p90 of the first call each way and its ratio to the status quo
//! (issue 13's target: ≤ 1/3), the part spent building flytekit's authenticator, the whole
//! process's wall time, and the agent's share: its CPU time per run (from /proc).
//!
//! Run: `cargo build --release -p flyte-auth-agent && AGENT_LOG=info cargo bench -p flyte-auth-injector
//! --bench task_first_call` (the bench does not build the agent; AGENT_LOG is the agent's
//! RUST_LOG in the test harness, debug unless set, and a pod logs at info). `RUNS` processes each way; every loop is bounded.

// The agent's test harness (it allows its own dead code; the bench uses part of it).
#[path = "../../agent/tests/common/mod.rs"]
mod common;
#[path = "../tests/kubelet/mod.rs"]
#[allow(dead_code)] // The kubelet module also serves the tests' three-client pods.
mod kubelet;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{agent_bin, python, workspace, Admin, AgentProcess, Idp, Pod};
use flyte_auth_injector::config::Config;
use flyte_auth_injector::mutate::{TASK_AUTH_ANNOTATION, TASK_AUTH_MODE_AGENT};
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

/// CPU time a process's threads have used, in nanoseconds from the scheduler
/// (`/proc/<pid>/task/*/schedstat`; `stat`'s user + system count 10 ms ticks). A thread that
/// ended is not counted: the agent's runtime threads live as long as it does.
fn cpu(pid: u32) -> Duration {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    let nanos: u64 = threads
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(nanos)
}

struct Run {
    first_call_ms: f64,
    /// Of which building the authenticator (flytekit's AuthMetadataService calls).
    authenticator_ms: f64,
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
        authenticator_ms: seen["authenticator_ms"].as_f64().unwrap(),
        wall,
    }
}

/// One way of making the first call, and what it measured.
struct Way {
    name: &'static str,
    env: Vec<(String, String)>,
    authenticator: &'static str,
    /// The agent's pid, whose CPU time is counted, if this way goes through the agent.
    agent: Option<u32>,
    first_call_ms: Vec<f64>,
    authenticator_ms: Vec<f64>,
    wall_ms: Vec<f64>,
    agent_cpu: Duration,
}

impl Way {
    fn new(
        name: &'static str,
        env: Vec<(String, String)>,
        authenticator: &'static str,
        agent: Option<u32>,
    ) -> Self {
        Self {
            name,
            env,
            authenticator,
            agent,
            first_call_ms: Vec::new(),
            authenticator_ms: Vec::new(),
            wall_ms: Vec::new(),
            agent_cpu: Duration::ZERO,
        }
    }

    fn run(&self) -> Run {
        run(&self.env, self.authenticator)
    }

    fn measure(&mut self) {
        let before = self.agent.map(cpu);
        let r = self.run();
        if let (Some(pid), Some(before)) = (self.agent, before) {
            self.agent_cpu += cpu(pid) - before;
        }
        self.first_call_ms.push(r.first_call_ms);
        self.authenticator_ms.push(r.authenticator_ms);
        self.wall_ms.push(r.wall.as_secs_f64() * 1e3);
    }

    fn p(&mut self, p: f64) -> f64 {
        percentile(&mut self.first_call_ms, p)
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
    let config = kubelet::config_with_admin(
        &dirs.tokens_dir(),
        dirs.socket().parent().unwrap(),
        &dirs.secrets_dir(),
        &admin.address(),
    );
    let injector = Injector::new(Config::parse(&config, "bench config").unwrap());
    // Two pods of one task, as the injector mutates them under `admin.task_auth: auto`: one
    // plain (flytekit's external_process mode), one whose image has the flyte-auth-agent package
    // (the annotation `with_tokens` writes: the package's own auth mode).
    let pod_of = |annotations: Value| {
        mutated(
            &injector,
            &review_of(json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": "bench-n0-0",
                    "namespace": "flytesnacks-development",
                    "labels": {"flyte.org/auth-agent": "enabled"},
                    "annotations": annotations,
                },
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "task", "image": "flytekit", "env": [
                        {"name": "FLYTE_INTERNAL_EXECUTION_PROJECT", "value": "flytesnacks"},
                        {"name": "FLYTE_INTERNAL_EXECUTION_DOMAIN", "value": "development"},
                    ]}],
                },
            })),
        )
    };
    let pod = pod_of(json!({}));
    let with_package = pod_of(json!({ TASK_AUTH_ANNOTATION: TASK_AUTH_MODE_AGENT }));
    let (args, agent_env) = agent_command(&pod, &secrets());
    assert_eq!(
        agent_command(&with_package, &secrets()),
        (args.clone(), agent_env.clone())
    );
    let process = AgentProcess::start(
        &dirs,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &agent_env,
    );
    process.wait_ready(Duration::from_secs(30));
    let pid = agent_pid();

    let home = ("HOME".to_string(), dirs.dir.path().display().to_string());
    let task_env = |pod: &Value| {
        let mut env = container_env(&pod["spec"]["containers"][0], &secrets());
        env.push(home.clone());
        env
    };
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
    .chain([home.clone()])
    .collect();
    let mut ways = [
        Way::new(
            "status quo (ClientSecret: IdP + Admin)",
            status_quo,
            "ClientCredentialsAuthenticator",
            None,
        ),
        Way::new(
            "agent, external_process (any image)",
            task_env(&pod),
            "CommandAuthenticator",
            Some(pid),
        ),
        Way::new(
            "agent, flyte_auth_agent (package)",
            task_env(&with_package),
            "AgentAuthenticator",
            Some(pid),
        ),
    ];

    for _ in 0..WARMUP {
        ways.iter_mut().for_each(|w| {
            w.run();
        });
    }
    for _ in 0..RUNS {
        ways.iter_mut().for_each(Way::measure);
    }
    println!("first Admin call of a fresh flytekit process, {RUNS} runs each, interleaved (agent log: {agent_log}):");
    let floor = ways[0].p(0.5);
    let floor90 = ways[0].p(0.9);
    for way in &mut ways {
        let (p50, p90) = (way.p(0.5), way.p(0.9));
        println!(
            "  {:<40} p50 {p50:6.2} ms  p90 {p90:6.2} ms  ratio p50 {:.2}  p90 {:.2}",
            way.name,
            p50 / floor,
            p90 / floor90
        );
        println!(
            "    of which building the authenticator (flytekit's AuthMetadataService calls): p50 {:.2} ms; whole process wall p50 {:.0} ms",
            percentile(&mut way.authenticator_ms, 0.5),
            percentile(&mut way.wall_ms, 0.5),
        );
        if way.agent.is_some() {
            let agent_ms = way.agent_cpu.as_secs_f64() * 1e3 / RUNS as f64;
            println!(
                "    agent CPU per run: {agent_ms:.2} ms (scheduler time of its threads, a mean over {RUNS} runs) = {:.0}% of this way's p50",
                100.0 * agent_ms / p50
            );
        }
    }
    println!("  target: ratio <= 0.33 (stretch 0.10)");
    drop(process);
}
