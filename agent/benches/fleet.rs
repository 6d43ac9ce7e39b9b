//! Benchmark (issue 16): a fleet start. N real agent processes start within one second against the
//! real oidc-provider behind a token-bucket rate limit (R = 50/s, burst 50, 429 with
//! `Retry-After: 1`), each asking for one token of the same client, first as sidecars (`serve`),
//! then as init containers (`serve --once`). Prints, per pass: agents ready and failed, the CDF of
//! the time from the fleet's start to each agent's token file (p50/p90/p99/last) against the floor
//! (N − burst)/R, and the IdP's token requests and 429s against N; writes the CDF of both passes
//! as a PNG (tests/fleet/plot.py, matplotlib from tests/requirements.txt) with the figures beside
//! it, under `target/fleet/`.
//!
//! Run: `cargo bench -p flyte-auth-agent --bench fleet` (N = 300), or `-- 300 1000` for several
//! N. Env: `FLEET_RATE`, `FLEET_BURST`, `FLEET_RETRY_AFTER` (the IdP's limit), `FLEET_WINDOW_MS`
//! (start window, 1000), `FLEET_ONCE_TIMEOUT` (`--once-timeout`, 60s), `FLEET_AGENT_CONFIG` (YAML
//! given to every agent), `FLEET_START_JITTER` (the agents' `refresh.start_jitter`: a duration, or
//! `auto` for the floor (N − burst)/R), `FLEET_LABEL` (added to the file names),
//! `FLEET_MODES` (`serve,once`), `FLEET_RUNNER` (`processes`, the default, or `in-process`: the
//! same agents as tasks of this process, for N larger than this machine can start as processes
//! within the window; the harness's doc says what that simplifies), `FLEET_PACING` (a fraction:
//! pace the agents as the injector's `agent.start_pacing` does, at that fraction of the IdP's
//! rate, e.g. `1` or `0.9`) with `FLEET_PACING_BURST` (default: half the IdP's burst, as README
//! advises: the other half absorbs pods that call late). The harness is
//! agent/tests/common/fleet.rs; its N = 50 version is tests/fleet.rs.

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harness::fleet::{self, Limit, Mode, Plan, Runner};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A field of /proc/self/limits (the soft limit), for the agents the machine can hold.
fn soft_limit(name: &str) -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

fn main() {
    let ns: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let ns = if ns.is_empty() {
        vec![env_or("FLEET_N", 300)]
    } else {
        ns
    };
    let limit = Limit {
        rate: env_or("FLEET_RATE", Limit::ISSUE.rate),
        burst: env_or("FLEET_BURST", Limit::ISSUE.burst),
        retry_after: env_or("FLEET_RETRY_AFTER", Limit::ISSUE.retry_after),
    };
    let once_timeout =
        humantime::parse_duration(&std::env::var("FLEET_ONCE_TIMEOUT").unwrap_or("60s".into()))
            .expect("FLEET_ONCE_TIMEOUT: a duration such as 60s");
    let modes = std::env::var("FLEET_MODES").unwrap_or("serve,once".into());
    let runner = match std::env::var("FLEET_RUNNER").as_deref() {
        Err(_) | Ok("processes") => Runner::Processes,
        Ok("in-process") => Runner::InProcess,
        Ok(other) => panic!("FLEET_RUNNER: unknown runner {other:?} (processes, in-process)"),
    };
    let pacing = std::env::var("FLEET_PACING").ok().map(|f| {
        let f: f64 = f
            .parse()
            .expect("FLEET_PACING: a fraction of the rate, such as 0.9");
        (
            limit.rate * f,
            env_or("FLEET_PACING_BURST", limit.burst.div_ceil(2)),
        )
    });
    let mut label = std::env::var("FLEET_LABEL").unwrap_or_default();
    if runner == Runner::InProcess {
        label = if label.is_empty() {
            "in-process".into()
        } else {
            format!("{label}-in-process")
        };
    }
    let out = harness::workspace().join("target/fleet");
    std::fs::create_dir_all(&out).unwrap();
    println!(
        "machine: {} cores; soft limits: open files {:?}, processes {:?} (each agent: 1 process, ~3 threads, ~10 descriptors)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        soft_limit("Max open files"),
        soft_limit("Max processes"),
    );
    for n in ns {
        let idp = limit.start_idp();
        let mut files = Vec::new();
        for mode in modes.split(',') {
            let mode = match mode.trim() {
                "serve" => Mode::Serve,
                "once" => Mode::Once {
                    timeout: once_timeout,
                },
                other => panic!("FLEET_MODES: unknown mode {other:?} (serve, once)"),
            };
            let plan = Plan {
                n,
                mode,
                runner,
                pacing,
                window: Duration::from_millis(env_or("FLEET_WINDOW_MS", 1000)),
                // Sidecars retry forever: give them the floor several times over, then count the
                // ones still waiting as failed. Init containers end at their own timeout.
                limit: match mode {
                    Mode::Serve => limit.floor(n) * 4 + Duration::from_secs(60),
                    Mode::Once { timeout } => timeout + Duration::from_secs(30),
                },
                agent_config: agent_config(n, &limit),
            };
            let o = fleet::run(&idp, &plan);
            print!("{}", fleet::report(&o, &limit));
            let stem = format!(
                "{}-{n}{}",
                if mode == Mode::Serve { "serve" } else { "once" },
                if label.is_empty() {
                    String::new()
                } else {
                    format!("-{label}")
                }
            );
            let (csv, json) = (
                out.join(format!("{stem}.csv")),
                out.join(format!("{stem}.json")),
            );
            std::fs::write(&csv, fleet::csv(&o)).unwrap();
            let mut summary = fleet::summary(&o, &limit);
            // The pass's name in the plot's legend, for plots that set passes side by side.
            summary["label"] = label.clone().into();
            std::fs::write(&json, summary.to_string()).unwrap();
            files.push((csv, json));
        }
        let png = out.join(format!(
            "cdf-{n}{}.png",
            if label.is_empty() {
                String::new()
            } else {
                format!("-{label}")
            }
        ));
        plot(&png, &files);
    }
}

/// `FLEET_AGENT_CONFIG`, then with `FLEET_START_JITTER` (`auto`: the floor (N − burst)/R, as
/// README's Fleet start advises; or a duration) as `refresh.start_jitter`.
fn agent_config(n: usize, limit: &Limit) -> String {
    let mut yaml = std::env::var("FLEET_AGENT_CONFIG").unwrap_or_default();
    match std::env::var("FLEET_START_JITTER").as_deref() {
        Ok("auto") => {
            let ms = limit.floor(n).as_millis();
            yaml += &format!("\nrefresh: {{start_jitter: {ms}ms}}\n");
        }
        Ok(d) if !d.is_empty() => yaml += &format!("\nrefresh: {{start_jitter: {d}}}\n"),
        _ => {}
    }
    if !yaml.trim().is_empty() {
        println!("  agent config: {}", yaml.trim().replace('\n', " "));
    }
    yaml
}

/// Draws the CDFs with tests/fleet/plot.py in the test venv; says so when it cannot.
fn plot(png: &Path, files: &[(PathBuf, PathBuf)]) {
    let python = harness::workspace().join("tests/.venv/bin/python");
    let script = harness::workspace().join("tests/fleet/plot.py");
    let mut cmd = Command::new(&python);
    cmd.arg(&script).arg(png);
    for (csv, json) in files {
        cmd.arg(json).arg(csv);
    }
    match cmd.status() {
        Ok(s) if s.success() => println!("  CDF plot: {}", png.display()),
        Ok(s) => println!("  no plot: {} exited with {s}", script.display()),
        Err(e) => println!(
            "  no plot: cannot run {}: {e} (run tests/run)",
            python.display()
        ),
    }
}
