//! A fleet start (issue 16): N real agent processes, started within a window (one second by
//! default) as a map task's pods are, each with one token request for the same client, against
//! the real oidc-provider behind its token-bucket rate limit (`rateLimit` in tests/idp/README.md).
//! Used by the `fleet` bench (the figures and the plot) and by tests/fleet.rs (its small version).
//!
//! An agent is ready when its token file is written: the file is what the task reads, and
//! `/readyz` answers 200 exactly when every file is. Its ready time is the file's modification
//! time less the fleet's start, so the harness polls (every [`POLL`]) only to notice that files
//! exist, never to time them. In `--once` mode an agent has succeeded when it exits 0.
//!
//! Each agent's stdout and stderr go to a file of its own (`a<i>/log`), so the harness holds no
//! descriptor per agent; every wait is bounded, every loop by N.
//!
//! [`Runner::InProcess`] runs the same agents (the library's `Agent`, built from the same env and
//! config file the binary reads) as tasks of one runtime in this process instead, so that more
//! of them start within the window than this machine can start processes (each process costs
//! about 5 ms of CPU to start; 1,000 of them take 3–5 s on 2 cores). Each still has its own IdP
//! client and connections, jitter and back-off, token file, socket and health listener. What it
//! simplifies: the agents share two worker threads instead of one each, and write no logs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use flyte_auth_agent::config::Config;
use flyte_auth_agent::env::Env;
use flyte_auth_agent::pacing::{self, Pacer};
use flyte_auth_agent::{Agent, BoundSocket};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::{agent_bin, Idp};

/// How often the harness looks for token files and exits: only noticing, not timing.
const POLL: Duration = Duration::from_millis(20);

/// The client every agent of the fleet uses, as a map task's pods would.
const CLIENT: (&str, &str) = ("fleet", "fleet-secret");

/// The IdP's limit: a token bucket of `burst` refilled at `rate`/s, 429 with `Retry-After`.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    pub rate: f64,
    pub burst: u32,
    pub retry_after: u32,
}

impl Limit {
    /// The issue's limit: 50/s, burst 50, `Retry-After: 1`.
    pub const ISSUE: Limit = Limit {
        rate: 50.0,
        burst: 50,
        retry_after: 1,
    };

    /// The least time in which `n` agents can all be served: (N − burst)/R.
    pub fn floor(&self, n: usize) -> Duration {
        Duration::from_secs_f64((n as f64 - f64::from(self.burst)).max(0.0) / self.rate)
    }

    /// The IdP, limited, with the fleet's client.
    pub fn start_idp(&self) -> Idp {
        Idp::start(json!({
            "clients": [{"client_id": CLIENT.0, "client_secret": CLIENT.1}],
            "rateLimit": {"rate": self.rate, "burst": self.burst, "retryAfter": self.retry_after},
        }))
    }
}

/// Sidecar (`serve`) or init container (`serve --once`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Serve,
    Once { timeout: Duration },
}

/// Where the agents run: as real processes, or as tasks of one runtime in this process (see
/// the module doc for what that simplifies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runner {
    Processes,
    InProcess,
}

/// One fleet start.
#[derive(Debug, Clone)]
pub struct Plan {
    pub n: usize,
    pub mode: Mode,
    pub runner: Runner,
    /// Agents are started evenly spread over this window.
    pub window: Duration,
    /// The longest the harness waits for the fleet (sidecars that never get ready count as failed).
    pub limit: Duration,
    /// YAML for the agents' config file (e.g. a `refresh:` section); empty for none.
    pub agent_config: String,
    /// The injector's start pacing, as (rate, burst): each agent gets its first-call time from
    /// the injector's own [`Pacer`] when it is started (a pod's admission), in
    /// `FLYTE_AUTH_AGENT_START_AT`. None: unpaced.
    pub pacing: Option<(f64, u32)>,
}

/// What one fleet start showed.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub n: usize,
    pub mode: Mode,
    pub runner: Runner,
    pub pacing: Option<(f64, u32)>,
    /// Per agent: time from the fleet's start until its token file was written.
    pub ready: Vec<Option<Duration>>,
    /// Agents that failed or gave up: index and why.
    pub failed: Vec<(usize, String)>,
    /// Token POSTs the IdP saw, and how many of them it answered 429.
    pub token_requests: u64,
    pub rate_limited: u64,
    /// From the first agent's start to the last one's.
    pub started_within: Duration,
    /// Sidecars whose `/readyz` answered 200 after the fleet came up (serve mode only).
    pub readyz_ok: usize,
}

impl Outcome {
    /// Ready times of the agents that got ready, sorted.
    pub fn sorted(&self) -> Vec<Duration> {
        let mut t: Vec<Duration> = self.ready.iter().flatten().copied().collect();
        t.sort();
        t
    }

    /// The `q` quantile (0..=1) of the ready times, nearest rank.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let t = self.sorted();
        let rank = ((q * t.len() as f64).ceil() as usize).clamp(1, t.len().max(1));
        t.get(rank - 1).copied()
    }

    pub fn all_ready(&self) -> bool {
        self.ready.iter().all(Option::is_some)
    }
}

struct Member {
    handle: Handle,
    dir: PathBuf,
    exited: Option<(Duration, Option<i32>)>,
    ready: Option<Duration>,
}

/// An agent process, or an agent task of the in-process runner.
enum Handle {
    Child(Child),
    Task(Arc<TaskState>),
}

/// What an in-process agent reports: its exit code when it ends (64: invalid config, 70: could
/// not start, 0/1: `--once` succeeded/failed, none: a sidecar that stopped), its health address.
#[derive(Default)]
struct TaskState {
    exit: OnceLock<Option<i32>>,
    health: OnceLock<SocketAddr>,
}

impl Handle {
    /// The exit code once the agent has ended.
    fn try_exit(&mut self) -> Option<Option<i32>> {
        match self {
            Handle::Child(child) => child.try_wait().ok().flatten().map(|s| s.code()),
            Handle::Task(state) => state.exit.get().copied(),
        }
    }
}

/// Runs one fleet start against `idp` (made by [`Limit::start_idp`]), counting from a reset
/// IdP (bucket full, counters zero).
pub fn run(idp: &Idp, plan: &Plan) -> Outcome {
    idp.reset();
    let work = tempfile::tempdir().expect("fleet work dir");
    let env = fleet_env(idp, work.path(), &plan.agent_config);
    let runtime = (plan.runner == Runner::InProcess).then(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("the in-process fleet's runtime")
    });
    let shutdown = CancellationToken::new();
    // The injector's cap: above this fleet's floor (the bench measures pacing, not the cap), but
    // as the injector's config requires, below `--once`'s timeout.
    let pacer = plan.pacing.map(|(rate, burst)| {
        let floor = Duration::from_secs_f64((plan.n as f64 - f64::from(burst)).max(0.0) / rate);
        let cap = match plan.mode {
            Mode::Serve => floor + Duration::from_secs(60),
            Mode::Once { timeout } => (floor + Duration::from_secs(60))
                .min(timeout.saturating_sub(Duration::from_secs(5))),
        };
        Pacer::new(rate, burst, cap)
    });
    let epoch = SystemTime::now();
    let start = Instant::now();
    let mut members = match &runtime {
        None => spawn_all(plan, &env, start, pacer.as_ref(), |i, env| {
            spawn(i, plan.mode, work.path(), &env)
        }),
        Some(rt) => spawn_all(plan, &env, start, pacer.as_ref(), |i, env| {
            spawn_in(rt, i, plan.mode, work.path(), env, &shutdown)
        }),
    };
    let started_within = start.elapsed();
    watch(&mut members, plan, epoch, start);
    let readyz_ok = match plan.mode {
        Mode::Serve => members.iter().filter(|m| readyz(m)).count(),
        Mode::Once { .. } => 0,
    };
    stop_all(&mut members);
    shutdown.cancel();
    if let Some(rt) = runtime {
        rt.shutdown_timeout(Duration::from_secs(20));
    }
    let stats = idp.stats();
    let failed = failures(&members, plan);
    Outcome {
        n: plan.n,
        mode: plan.mode,
        runner: plan.runner,
        pacing: plan.pacing,
        ready: members.iter().map(|m| m.ready).collect(),
        failed,
        token_requests: stats["token_requests"].as_u64().unwrap_or(0),
        rate_limited: stats["rate_limited"].as_u64().unwrap_or(0),
        started_within,
        readyz_ok,
    }
}

/// The env every agent shares; each adds its own directories.
fn fleet_env(idp: &Idp, work: &Path, agent_config: &str) -> Vec<(String, String)> {
    let secrets = work.join("secrets");
    std::fs::create_dir_all(secrets.join("fleet")).unwrap();
    std::fs::write(secrets.join("fleet/client_secret"), CLIENT.1).unwrap();
    // The token endpoint itself, so the fleet's only IdP traffic is the limited POST /token.
    let requests = json!([{
        "name": "fleet",
        "type": "CLIENT_CREDENTIALS",
        "tokenEndpoint": format!("{}/token", idp.issuer),
        "client": {"clientId": CLIENT.0, "clientSecret": {"group": "fleet", "key": "client_secret"}},
    }]);
    let mut env = vec![
        (
            "FLYTE_SECRETS_DEFAULT_DIR".into(),
            secrets.display().to_string(),
        ),
        ("FLYTE_AUTH_AGENT_HEALTH_ADDR".into(), "127.0.0.1:0".into()),
        (
            "FLYTE_AUTH_AGENT_TOKEN_REQUESTS".into(),
            requests.to_string(),
        ),
        (
            "RUST_LOG".into(),
            std::env::var("AGENT_LOG").unwrap_or_else(|_| "info".into()),
        ),
    ];
    if !agent_config.trim().is_empty() {
        let file = work.join("agent.yaml");
        std::fs::write(&file, agent_config).unwrap();
        env.push(("FLYTE_AUTH_AGENT_CONFIG".into(), file.display().to_string()));
    }
    env
}

/// Starts agent `i` of the plan's N at its place in the window, with `start_one` (a process or
/// a task), given `env` and the agent's paced start.
fn spawn_all(
    plan: &Plan,
    env: &[(String, String)],
    start: Instant,
    pacer: Option<&Pacer>,
    mut start_one: impl FnMut(usize, Vec<(String, String)>) -> Member,
) -> Vec<Member> {
    let mut members = Vec::with_capacity(plan.n);
    for i in 0..plan.n {
        let at = start + plan.window.mul_f64(i as f64 / plan.n as f64);
        if let Some(wait) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        members.push(start_one(i, with_start_at(env, pacer)));
    }
    members
}

/// `env` with the pod's paced start, reserved now as the injector does at admission.
fn with_start_at(env: &[(String, String)], pacer: Option<&Pacer>) -> Vec<(String, String)> {
    let mut env = env.to_vec();
    if let Some(pacer) = pacer {
        let at = pacer.reserve(SystemTime::now(), 1);
        env.push((
            flyte_auth_agent::env::ENV_START_AT.into(),
            pacing::to_unix_millis(at).to_string(),
        ));
    }
    env
}

fn spawn(i: usize, mode: Mode, work: &Path, env: &[(String, String)]) -> Member {
    let dir = work.join(format!("a{i}"));
    std::fs::create_dir_all(&dir).unwrap();
    let log = std::fs::File::create(dir.join("log")).unwrap();
    let mut cmd = Command::new(agent_bin());
    cmd.arg("serve");
    if let Mode::Once { timeout } = mode {
        cmd.arg("--once")
            .arg(format!("--once-timeout={}ms", timeout.as_millis()));
    }
    let child = cmd
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("FLYTE_TOKENS_PATH_PREFIX", dir.join("tokens"))
        .env("FLYTE_AUTH_AGENT_SOCKET", dir.join("agent.sock"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("start agent {i}: {e}"));
    Member {
        handle: Handle::Child(child),
        dir,
        exited: None,
        ready: None,
    }
}

/// Agent `i` as a task of the in-process runner's runtime, with `env` as its environment.
fn spawn_in(
    rt: &tokio::runtime::Runtime,
    i: usize,
    mode: Mode,
    work: &Path,
    env: Vec<(String, String)>,
    shutdown: &CancellationToken,
) -> Member {
    let dir = work.join(format!("a{i}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut vars: HashMap<String, String> = env.into_iter().collect();
    vars.insert(
        "FLYTE_TOKENS_PATH_PREFIX".into(),
        dir.join("tokens").display().to_string(),
    );
    vars.insert(
        "FLYTE_AUTH_AGENT_SOCKET".into(),
        dir.join("agent.sock").display().to_string(),
    );
    let state = Arc::new(TaskState::default());
    rt.spawn(agent_task(vars, mode, state.clone(), shutdown.clone()));
    Member {
        handle: Handle::Task(state),
        dir,
        exited: None,
        ready: None,
    }
}

/// One in-process agent: what `flyte-auth-agent serve [--once]` does with the same env.
async fn agent_task(
    vars: HashMap<String, String>,
    mode: Mode,
    state: Arc<TaskState>,
    shutdown: CancellationToken,
) {
    let file = vars.get("FLYTE_AUTH_AGENT_CONFIG").map(PathBuf::from);
    let env: Arc<dyn Env> = Arc::new(vars);
    let Ok(config) = Config::load(file.as_deref(), env.clone()) else {
        let _ = state.exit.set(Some(64));
        return;
    };
    let Ok(agent) = Agent::build(&config, env) else {
        let _ = state.exit.set(Some(70));
        return;
    };
    let code = match mode {
        Mode::Once { timeout } => Some(i32::from(agent.once(timeout).await.is_err())),
        Mode::Serve => {
            let socket = BoundSocket::bind(&config.socket_path, config.socket_mode);
            let health = tokio::net::TcpListener::bind(config.health_addr).await;
            let (Ok(socket), Ok(health)) = (socket, health) else {
                let _ = state.exit.set(Some(70));
                return;
            };
            if let Ok(addr) = health.local_addr() {
                let _ = state.health.set(addr);
            }
            agent.serve(socket, health, shutdown).await;
            None
        }
    };
    let _ = state.exit.set(code);
}

/// Notices token files and exits until every agent is done (ready, or exited in `--once`), an
/// agent exits early (sidecar), or the plan's limit passes.
fn watch(members: &mut [Member], plan: &Plan, epoch: SystemTime, start: Instant) {
    let done = |m: &Member| match plan.mode {
        Mode::Serve => m.ready.is_some() || m.exited.is_some(),
        Mode::Once { .. } => m.exited.is_some(),
    };
    while start.elapsed() < plan.limit {
        for m in members.iter_mut().filter(|m| !done(m)) {
            if m.ready.is_none() {
                m.ready = written_at(&m.dir, epoch);
            }
            if let Some(code) = m.handle.try_exit() {
                m.exited = Some((start.elapsed(), code));
                // The file may have been written between the two looks.
                m.ready = m.ready.or_else(|| written_at(&m.dir, epoch));
            }
        }
        if members.iter().all(done) {
            return;
        }
        std::thread::sleep(POLL);
    }
}

/// When the agent's token file was written, from the fleet's start; None while it is not there.
fn written_at(dir: &Path, epoch: SystemTime) -> Option<Duration> {
    let modified = std::fs::metadata(dir.join("tokens/fleet"))
        .and_then(|m| m.modified())
        .ok()?;
    Some(modified.duration_since(epoch).unwrap_or(Duration::ZERO))
}

/// Whether the sidecar's `/readyz` answers 200 (a process's health address is in its log).
fn readyz(m: &Member) -> bool {
    let addr = match &m.handle {
        Handle::Task(state) => state.health.get().map(ToString::to_string),
        Handle::Child(_) => {
            let log = std::fs::read_to_string(m.dir.join("log")).unwrap_or_default();
            log.lines()
                .find(|l| l.contains("serving"))
                .and_then(|l| l.split("health=").nth(1))
                .and_then(|s| s.split_whitespace().next())
                .map(str::to_string)
        }
    };
    let Some(addr) = addr else {
        return false;
    };
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .ok()
        .and_then(|c| c.get(format!("http://{addr}/readyz")).send().ok())
        .is_some_and(|r| r.status().as_u16() == 200)
}

/// SIGTERM to every agent process still running (one `kill` for all), then a bounded wait, then
/// SIGKILL. (In-process agents stop with the runner's shutdown signal.)
fn stop_all(members: &mut [Member]) {
    let running: Vec<String> = members
        .iter_mut()
        .filter_map(|m| match &mut m.handle {
            Handle::Child(c) => matches!(c.try_wait(), Ok(None)).then(|| c.id().to_string()),
            Handle::Task(_) => None,
        })
        .collect();
    for pids in running.chunks(500) {
        let _ = Command::new("kill").arg("-TERM").args(pids).status();
    }
    let start = Instant::now();
    let still_running = |m: &mut Member| match &mut m.handle {
        Handle::Child(c) => matches!(c.try_wait(), Ok(None)),
        Handle::Task(_) => false,
    };
    while start.elapsed() < Duration::from_secs(20) && members.iter_mut().any(still_running) {
        std::thread::sleep(POLL);
    }
    for m in members.iter_mut() {
        if let Handle::Child(c) = &mut m.handle {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The agents that failed or gave up: a sidecar that exited or never got ready; an init
/// container that did not exit 0 within its timeout.
fn failures(members: &[Member], plan: &Plan) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let why = match (plan.mode, m.exited, m.ready) {
            (Mode::Serve, Some((at, code)), _) => format!("exited with {code:?} after {at:?}"),
            (Mode::Serve, None, None) => format!("not ready after {:?}", plan.limit),
            (Mode::Once { .. }, Some((_, Some(0))), Some(_)) | (Mode::Serve, None, Some(_)) => {
                continue
            }
            (Mode::Once { .. }, Some((at, code)), _) => format!("exited {code:?} after {at:?}"),
            (Mode::Once { .. }, None, _) => format!("still running after {:?}", plan.limit),
        };
        let log = std::fs::read_to_string(m.dir.join("log")).unwrap_or_default();
        match log.lines().last() {
            Some(last) => out.push((i, format!("{why}; last log line: {last}"))),
            None => out.push((i, why)),
        }
    }
    out
}

/// The figures, one line per measure, for printing.
pub fn report(o: &Outcome, limit: &Limit) -> String {
    let floor = limit.floor(o.n).as_secs_f64();
    let secs = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.2}", d.as_secs_f64()));
    let last = o.quantile(1.0).map(|d| d.as_secs_f64());
    let mode = match o.mode {
        Mode::Serve => "sidecar (serve)".to_string(),
        Mode::Once { timeout } => format!("init (--once, timeout {timeout:?})"),
    };
    let runner = match o.runner {
        Runner::Processes => "processes",
        Runner::InProcess => "in one process",
    };
    let runner = match o.pacing {
        Some((rate, burst)) => format!("{runner}, paced at {rate}/s burst {burst}"),
        None => runner.to_string(),
    };
    let mut s = format!(
        "fleet N={} {mode}, {runner}: started within {:.2} s; R={}/s burst {} Retry-After {}s\n",
        o.n,
        o.started_within.as_secs_f64(),
        limit.rate,
        limit.burst,
        limit.retry_after
    );
    s += &format!(
        "  ready {}/{}; failed or gave up {}{}\n",
        o.ready.iter().flatten().count(),
        o.n,
        o.failed.len(),
        match o.mode {
            Mode::Serve => format!("; /readyz 200 {}/{}", o.readyz_ok, o.n),
            Mode::Once { .. } => String::new(),
        }
    );
    s += &format!(
        "  ready after (s): p50 {} p90 {} p99 {} last {}; floor (N-burst)/R {floor:.2}; last/floor {}\n",
        secs(o.quantile(0.5)),
        secs(o.quantile(0.9)),
        secs(o.quantile(0.99)),
        secs(o.quantile(1.0)),
        last.map_or("-".into(), |l| format!("{:.2}", l / floor.max(f64::EPSILON)))
    );
    s += &format!(
        "  IdP token requests {} ({:.2} x N), answered 429: {}\n",
        o.token_requests,
        o.token_requests as f64 / o.n as f64,
        o.rate_limited
    );
    for (i, why) in o.failed.iter().take(5) {
        s += &format!("  agent {i}: {why}\n");
    }
    s
}

/// The ready times as CSV (`agent,ready_s`, empty for never), for the plot.
pub fn csv(o: &Outcome) -> String {
    let mut s = String::from("agent,ready_s\n");
    for (i, r) in o.ready.iter().enumerate() {
        let r = r.map_or(String::new(), |d| format!("{:.4}", d.as_secs_f64()));
        s += &format!("{i},{r}\n");
    }
    s
}

/// The figures as one JSON object, for the plot's legend and for keeping.
pub fn summary(o: &Outcome, limit: &Limit) -> Value {
    let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    json!({
        "n": o.n,
        "mode": match o.mode { Mode::Serve => "serve", Mode::Once { .. } => "once" },
        "runner": match o.runner { Runner::Processes => "processes", Runner::InProcess => "in-process" },
        "pacing": o.pacing.map(|(rate, burst)| json!({"rate": rate, "burst": burst})),
        "rate": limit.rate, "burst": limit.burst, "retry_after": limit.retry_after,
        "floor_s": limit.floor(o.n).as_secs_f64(),
        "started_within_s": o.started_within.as_secs_f64(),
        "ready": o.ready.iter().flatten().count(),
        "failed": o.failed.len(),
        "p50_s": secs(o.quantile(0.5)), "p90_s": secs(o.quantile(0.9)),
        "p99_s": secs(o.quantile(0.99)), "last_s": secs(o.quantile(1.0)),
        "token_requests": o.token_requests, "rate_limited": o.rate_limited,
    })
}
