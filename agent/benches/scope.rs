//! Benchmark: what the execution-scope policy adds to one unary call. For typical task requests
//! (GetExecution, ListExecutions, GetTaskExecution, and a CreateExecution with inputs and a
//! launch plan), it times, call by call in the same run:
//! - the floor: what the proxy does to any request body without the policy (copy the buffered
//!   frame into one `Bytes`, as `http_body_util::Collected::to_bytes` does);
//! - the policy: that copy plus `Policy::admit` and `Policy::check` (frame parse, decode against
//!   flyteidl's descriptors, the walk over every field).
//!
//! and prints p50/p99 of both and the difference (target: ≤ 10 µs p50 added).
//!
//! Run: `cargo bench -p flyte-auth-agent --bench scope`. Every loop is bounded by a count.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flyte_auth_agent::scope::{Policy, Scope};
use prost::Message as _;
use prost_reflect::DynamicMessage;
use serde_json::json;

const WARMUP: usize = 2_000;
const CALLS: usize = 50_000;

fn frame(message: &str, value: serde_json::Value) -> Vec<u8> {
    let desc = flyte_auth_proto::admin_pool()
        .get_message_by_name(message)
        .unwrap_or_else(|| panic!("{message} not in admin_pool"));
    let m = DynamicMessage::deserialize(desc, value).unwrap_or_else(|e| panic!("{message}: {e}"));
    let bytes = m.encode_to_vec();
    let mut out = vec![0];
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(&bytes);
    out
}

fn cases() -> Vec<(&'static str, String, Vec<u8>)> {
    let wf = json!({"project": "flytesnacks", "domain": "development", "name": "a1b2c3d4e5"});
    let lp = json!({"resourceType": "LAUNCH_PLAN", "project": "flytesnacks", "domain": "development", "name": "wf.sub", "version": "v1"});
    let literal = |i: i64| json!({"scalar": {"primitive": {"integer": i.to_string()}}});
    let inputs: serde_json::Map<String, serde_json::Value> =
        (0..8).map(|i| (format!("x{i}"), literal(i))).collect();
    vec![
        (
            "GetExecution",
            "/flyteidl.service.AdminService/GetExecution".into(),
            frame(
                "flyteidl.admin.WorkflowExecutionGetRequest",
                json!({"id": wf}),
            ),
        ),
        (
            "ListExecutions",
            "/flyteidl.service.AdminService/ListExecutions".into(),
            frame(
                "flyteidl.admin.ResourceListRequest",
                json!({"id": {"project": "flytesnacks", "domain": "development"}, "limit": 100, "filters": "eq(phase,RUNNING)"}),
            ),
        ),
        (
            "GetTaskExecution",
            "/flyteidl.service.AdminService/GetTaskExecution".into(),
            frame(
                "flyteidl.admin.TaskExecutionGetRequest",
                json!({"id": {
                    "taskId": {"resourceType": "TASK", "project": "flytesnacks", "domain": "development", "name": "wf.t", "version": "v1"},
                    "nodeExecutionId": {"nodeId": "n0", "executionId": wf},
                    "retryAttempt": 1,
                }}),
            ),
        ),
        (
            "CreateExecution (8 inputs)",
            "/flyteidl.service.AdminService/CreateExecution".into(),
            frame(
                "flyteidl.admin.ExecutionCreateRequest",
                json!({
                    "project": "flytesnacks", "domain": "development", "name": "eager-child",
                    "spec": {
                        "launchPlan": lp,
                        "metadata": {"mode": "SYSTEM", "principal": "eager", "nesting": 1},
                        "labels": {"values": {"team": "ml"}},
                    },
                    "inputs": {"literals": inputs},
                }),
            ),
        ),
    ]
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn main() {
    let policy = Policy::new(Scope {
        project: Some("flytesnacks".into()),
        domain: Some("development".into()),
        org: None,
    });
    println!("execution-scope policy, per unary call, {CALLS} calls each (µs)");
    println!(
        "{:<28} {:>6} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "request", "bytes", "floor p50", "floor p99", "policy p50", "policy p99", "added p50"
    );
    for (name, path, body) in cases() {
        // The same bytes the proxy would hold, as separate chunks like a body that arrived in
        // two DATA frames.
        let (a, b) = body.split_at(body.len() / 2);
        let chunks = [Bytes::copy_from_slice(a), Bytes::copy_from_slice(b)];
        let floor = |chunks: &[Bytes; 2]| {
            let mut out = bytes::BytesMut::with_capacity(body.len());
            out.extend_from_slice(&chunks[0]);
            out.extend_from_slice(&chunks[1]);
            out.freeze()
        };
        let with_policy = |chunks: &[Bytes; 2]| {
            let bytes = floor(chunks);
            let entry = policy.admit(&path).unwrap().unwrap();
            policy.check(&path, entry, &bytes).unwrap();
            bytes
        };
        for _ in 0..WARMUP {
            black_box(with_policy(black_box(&chunks)));
        }
        let mut floors = Vec::with_capacity(CALLS);
        let mut policies = Vec::with_capacity(CALLS);
        // Interleaved, so both see the same machine state.
        for _ in 0..CALLS {
            let t = Instant::now();
            black_box(floor(black_box(&chunks)));
            floors.push(t.elapsed());
            let t = Instant::now();
            black_box(with_policy(black_box(&chunks)));
            policies.push(t.elapsed());
        }
        floors.sort();
        policies.sort();
        let (f50, p50) = (percentile(&floors, 0.5), percentile(&policies, 0.5));
        println!(
            "{name:<28} {:>6} {f50:>10.2} {:>10.2} {p50:>10.2} {:>10.2} {:>12.2}",
            body.len(),
            percentile(&floors, 0.99),
            percentile(&policies, 0.99),
            p50 - f50,
        );
    }
}
