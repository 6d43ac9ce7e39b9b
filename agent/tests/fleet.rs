//! The fleet start's small version (issue 16; the bench `fleet` is the large one): 50 real agent
//! processes started within one second against the real oidc-provider limited to 25 token
//! requests/s (burst 5, 429 with `Retry-After: 1`), as sidecars and as init containers, with
//! `refresh.start_jitter` set as README's Fleet start says for such a fan-out. Every agent gets
//! its token and none fails, and the fleet costs the IdP at most 1.1 token requests per agent
//! (without the start jitter: about 1.5). Counts, never seconds: how long the fleet takes is the
//! bench's figure.

mod common;

use std::time::Duration;

use common::fleet::{self, Limit, Mode, Plan, Runner};

const N: usize = 50;

const LIMIT: Limit = Limit {
    rate: 25.0,
    burst: 5,
    retry_after: 1,
};

/// (N − burst)/R is 1.8 s; a start jitter above it keeps the arrivals under the rate with room
/// for their randomness (and for a loaded machine starting the agents late and together).
const AGENT_CONFIG: &str = "refresh: {start_jitter: 5s}\n";

fn plan(mode: Mode, runner: Runner) -> Plan {
    Plan {
        n: N,
        mode,
        runner,
        pacing: None,
        window: Duration::from_secs(1),
        limit: match mode {
            Mode::Serve => Duration::from_secs(90),
            Mode::Once { timeout } => timeout + Duration::from_secs(30),
        },
        agent_config: AGENT_CONFIG.into(),
    }
}

#[track_caller]
fn assert_fleet(o: &fleet::Outcome) {
    let report = fleet::report(o, &LIMIT);
    println!("{report}");
    assert!(o.failed.is_empty(), "agents failed:\n{report}");
    assert!(o.all_ready(), "agents not ready:\n{report}");
    assert!(
        o.token_requests as f64 <= 1.1 * N as f64,
        "the fleet cost the IdP more than 1.1 token requests per agent:\n{report}"
    );
}

#[test]
fn a_fleet_of_sidecars_comes_up_against_a_rate_limited_idp_without_waste() {
    let idp = LIMIT.start_idp();
    let o = fleet::run(&idp, &plan(Mode::Serve, Runner::Processes));
    assert_eq!(o.readyz_ok, N, "{}", fleet::report(&o, &LIMIT));
    assert_fleet(&o);
}

/// Paced by the injector's schedule instead of a jitter (`agent.start_pacing` at 0.9 of the
/// IdP's rate with half its burst, as README advises): every agent is ready, and the IdP answers
/// (almost) no 429. In one process: a pod that starts after its time calls at once, and 50 debug-build
/// processes starting on 2 busy cores start up to a second late, together (README says how that
/// plays out in a cluster, where pods start seconds after admission).
#[test]
fn a_paced_fleet_meets_no_refusal() {
    let idp = LIMIT.start_idp();
    let paced = Plan {
        agent_config: String::new(),
        pacing: Some((LIMIT.rate * 0.9, LIMIT.burst.div_ceil(2))),
        ..plan(Mode::Serve, Runner::InProcess)
    };
    let o = fleet::run(&idp, &paced);
    // Unpaced and without a jitter this fleet costs about 1.4 × N (20 refusals). Paced, a machine
    // busy with the rest of the suite still delays a pod now and then into the next one's slot:
    // a refusal or two, never the unpaced waste.
    assert_fleet(&o);
    assert!(
        o.rate_limited <= 3,
        "more than 3 refusals:\n{}",
        fleet::report(&o, &LIMIT)
    );
}

/// The bench's runner for N beyond what this machine starts as processes: the same agents as
/// tasks of this process behave as the processes do.
#[test]
fn a_fleet_of_in_process_agents_comes_up_as_the_processes_do() {
    let idp = LIMIT.start_idp();
    let o = fleet::run(&idp, &plan(Mode::Serve, Runner::InProcess));
    assert_eq!(o.readyz_ok, N, "{}", fleet::report(&o, &LIMIT));
    assert_fleet(&o);
}

#[test]
fn a_fleet_of_init_containers_exits_0_against_a_rate_limited_idp_without_waste() {
    let idp = LIMIT.start_idp();
    let o = fleet::run(
        &idp,
        &plan(
            Mode::Once {
                timeout: Duration::from_secs(60),
            },
            Runner::Processes,
        ),
    );
    assert_fleet(&o);
}
