//! Flyte 2: the unmodified `flyte` 2.12.1 SDK (tests/.venv-flyte2) in a task-like process with the
//! env the injector gives a task (`_U_EP_OVERRIDE` at the agent's Connect port, `_U_INSECURE`,
//! `_U_ORG_NAME`, the bypass variables empty; injector/tests/flyte2_live.rs takes it from a real
//! review instead, and the `flyte2` golden review pins it), through
//! the agent, to the Flyte 2 control-plane stand-in (tests/flyte2/standin.py: flyteidl2's own
//! Connect services, JWTs verified against the real oidc-provider's JWKS).
//!
//! The agent is told only the control plane's address and its own client: the header, token
//! endpoint and scopes come from the stand-in's `flyteidl2.auth.AuthMetadataService`, which the
//! agent falls back to when Flyte 1's is UNIMPLEMENTED.

mod common;

use std::net::TcpListener;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use prost::Message as _;
use prost_reflect::{DynamicMessage, Value as Field};
use serde_json::{json, Value};

const PROPELLER_SECRET: &str = "propeller-secret-value";
const ORG: &str = "acme";
const PROJECT: &str = "flytesnacks";
const DOMAIN: &str = "development";

/// The IdP, the control plane and an agent with a Connect port in front of it.
struct Flyte2 {
    idp: Idp,
    plane: ControlPlane,
    agent: AgentProcess,
    port: u16,
    _pod: Pod,
}

fn flyte2(cluster_endpoint: &str, extra: &[(&str, &str)]) -> Flyte2 {
    let idp = Idp::with_clients(&[("flytepropeller", PROPELLER_SECRET, "client_secret_basic")]);
    let plane = ControlPlane::for_idp(&idp, ORG, cluster_endpoint);
    let pod = Pod::new();
    pod.secret("flyte-admin", "client_secret", PROPELLER_SECRET);
    let port = free_port();
    let mut env = pod.env(&json!([]));
    for (k, v) in [
        ("FLYTE_AUTH_AGENT_ADMIN_ENDPOINT", plane.address.clone()),
        ("FLYTE_AUTH_AGENT_ADMIN_INSECURE", "true".into()),
        ("FLYTE_AUTH_AGENT_ADMIN_MODE", "client-secret".into()),
        ("FLYTE_AUTH_AGENT_ADMIN_CLIENT_ID", "flytepropeller".into()),
        (
            "FLYTE_AUTH_AGENT_ADMIN_CLIENT_SECRET",
            r#"{"group": "flyte-admin", "key": "client_secret"}"#.into(),
        ),
        ("FLYTE_AUTH_AGENT_ADMIN_CONNECT_PORT", port.to_string()),
        // The execution's scope, as the injector derives it from the namespace; the policy is
        // the default one.
        ("FLYTE_AUTH_AGENT_ADMIN_PROJECT", PROJECT.into()),
        ("FLYTE_AUTH_AGENT_ADMIN_DOMAIN", DOMAIN.into()),
        ("FLYTE_AUTH_AGENT_ADMIN_ORG", ORG.into()),
    ] {
        env.push((k.to_string(), v));
    }
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let agent = AgentProcess::start(&pod, &["serve"], &env);
    agent.wait_ready(Duration::from_secs(30));
    Flyte2 {
        idp,
        plane,
        agent,
        port,
        _pod: pod,
    }
}

impl Flyte2 {
    /// Runs the task driver (`a0`, `remote`, `denied`) with the injector's task env; its exit
    /// code and its one JSON line.
    fn task(&self, args: &[&str]) -> (i32, Value) {
        flyte2_task(args, &task_env(self.port), &self.agent)
    }
}

/// What the injector sets in a task container for `admin.connect_port` (its `flyte2` golden
/// review), plus the execution's project and domain, which Flyte 2's executor sets.
fn task_env(port: u16) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("_U_EP_OVERRIDE", format!("http://127.0.0.1:{port}")),
        ("_U_INSECURE", "true".into()),
        ("_U_ORG_NAME", ORG.into()),
        ("FLYTE_INTERNAL_EXECUTION_PROJECT", PROJECT.into()),
        ("FLYTE_INTERNAL_EXECUTION_DOMAIN", DOMAIN.into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for blank in [
        "UCTL_CONFIG",
        "FLYTECTL_CONFIG",
        "_UNION_EAGER_API_KEY",
        "EAGER_API_KEY",
    ] {
        env.push((blank.to_string(), String::new()));
    }
    env
}

/// A `flyteidl2` message of type `name` with string `fields` set at dotted paths.
fn flyte2_message(name: &str, fields: &[(&str, &str)]) -> Vec<u8> {
    let pool = flyte_auth_proto::flyteidl2_pool();
    let mut message = DynamicMessage::new(pool.get_message_by_name(name).unwrap());
    for (path, value) in fields {
        let mut m = &mut message;
        let mut names = path.split('.').peekable();
        while let Some(name) = names.next() {
            if names.peek().is_none() {
                m.set_field_by_name(name, Field::String(value.to_string()));
                break;
            }
            let Some(Field::Message(child)) = m.get_field_by_name_mut(name) else {
                panic!("{path}: {name} is not a message field");
            };
            m = child;
        }
    }
    message.encode_to_vec()
}

/// A `ListTasksRequest` scoped by a project.
fn list_tasks(org: &str, project: &str, domain: &str) -> Vec<u8> {
    flyte2_message(
        "flyteidl2.task.ListTasksRequest",
        &[
            ("project_id.organization", org),
            ("project_id.name", project),
            ("project_id.domain", domain),
        ],
    )
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// `message` gzipped in a Connect stream envelope or a gRPC frame (the same 5-byte prefix), its
/// compressed flag set.
fn gzipped_envelope(message: &[u8]) -> Vec<u8> {
    let compressed = gzip(message);
    let mut envelope = vec![1];
    envelope.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
    envelope.extend_from_slice(&compressed);
    envelope
}

fn methods(calls: &[Value]) -> Vec<&str> {
    calls
        .iter()
        .map(|c| c["method"].as_str().unwrap())
        .collect()
}

#[test]
fn an_sdk_task_and_its_remote_calls_reach_the_control_plane_as_the_executor() {
    // SelectCluster names another endpoint; the SDK must not go there.
    let decoy = TcpListener::bind("127.0.0.1:0").unwrap();
    decoy.set_nonblocking(true).unwrap();
    let decoy_endpoint = format!("dns:///{}", decoy.local_addr().unwrap());
    let f = flyte2(&decoy_endpoint, &[]);

    let (code, result) = f.task(&["a0"]);
    assert_eq!((code, &result["children"]), (0, &json!(2)), "{result}");
    let (code, result) = f.task(&["remote"]);
    assert_eq!((code, &result["runs"]), (0, &json!(3)), "{result}");
    // DataProxy went to the control plane, through the agent, not to the endpoint named.
    assert_eq!(
        result["upload_authority"],
        json!(f.plane.address),
        "{result}"
    );
    assert!(decoy.accept().is_err(), "the SDK connected to the decoy");

    let calls = f.plane.calls();
    let seen = methods(&calls);
    for method in [
        "/flyteidl2.workflow.StateService/Watch",
        "/flyteidl2.workflow.QueueService/EnqueueAction",
        "/flyteidl2.workflow.RunService/ListRuns",
        "/flyteidl2.cluster.ClusterService/SelectCluster",
        "/flyteidl2.dataproxy.DataProxyService/CreateUploadLocation",
    ] {
        assert!(seen.contains(&method), "{method} not in {seen:?}");
    }
    assert_eq!(
        seen.iter()
            .filter(|m| m.ends_with("/EnqueueAction"))
            .count(),
        2,
        "{seen:?}"
    );
    for call in &calls {
        // Every call came over the agent's HTTP/2 connection with the executor's token.
        assert_eq!(call["authenticated"], json!(true), "{call}");
        assert_eq!(call["sub"], json!("flytepropeller"), "{call}");
        assert_eq!(call["http_version"], json!("2"), "{call}");
    }
    assert_eq!(f.idp.token_requests(), 1, "one credential for everything");
    // Metrics name Flyte 2's methods.
    let metrics = f.agent.health_get("/metrics").1;
    assert_contains(
        &metrics,
        r#"flyte_auth_agent_admin_calls_total{method="/flyteidl2.workflow.QueueService/EnqueueAction",code="Ok"} 2"#,
    );
}

#[test]
fn control_plane_errors_pass_through_and_are_counted_by_their_code() {
    let f = flyte2("", &[]);
    // A method the stand-in does not implement: Connect's `unimplemented` (HTTP 501, which
    // alone would read as `unknown`).
    let response = reqwest::blocking::Client::new()
        .post(format!(
            "http://127.0.0.1:{}/flyteidl2.task.TaskService/ListTasks",
            f.port
        ))
        .header("content-type", "application/proto")
        .header("connect-protocol-version", "1")
        .body(list_tasks(ORG, PROJECT, DOMAIN))
        .send()
        .unwrap();
    assert_eq!(response.status(), 501);
    let body: Value = response.json().unwrap();
    assert_eq!(body["code"], json!("unimplemented"), "{body}");
    let metrics = f.agent.health_get("/metrics").1;
    assert_contains(
        &metrics,
        r#"flyte_auth_agent_admin_calls_total{method="/flyteidl2.task.TaskService/ListTasks",code="Unimplemented"} 1"#,
    );
}

#[test]
fn the_flyte2_method_labels_are_the_pinned_flyteidl2_services() {
    // The same service list the committed descriptors are dumped from.
    let out = std::process::Command::new(flyte2_python())
        .arg(workspace().join("tests/python/flyteidl2_descriptors.py"))
        .arg("methods")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pinned: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(pinned, flyte_auth_agent::proxy::connect::FLYTE2_METHODS);
}

#[test]
fn a_revoked_credential_is_renewed_once_and_the_call_succeeds() {
    let f = flyte2("", &[]);
    let (code, result) = f.task(&["remote"]);
    assert_eq!(code, 0, "{result}");
    let minted = f.idp.token_requests();
    let revoked = f.plane.revoke();
    // Token times are whole seconds: a token minted in the second of the revocation is revoked
    // too, so the next one must come from a later second.
    wait_for(
        "the second after the revocation",
        Duration::from_secs(3),
        || {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            (now.as_secs_f64() >= revoked.floor() + 1.0).then_some(())
        },
    );
    let before = f.plane.calls().len();
    let (code, result) = f.task(&["remote"]);
    assert_eq!(code, 0, "{result}\n{}", f.agent.output());
    assert_eq!(f.idp.token_requests(), minted + 1, "renewed exactly once");
    let after = f.plane.calls();
    let refused: Vec<_> = after[before..]
        .iter()
        .filter(|c| c["authenticated"] == json!(false))
        .collect();
    assert_eq!(
        refused.len(),
        1,
        "one call saw the revoked token: {refused:?}"
    );
    assert_eq!(refused[0]["reason"], json!("token revoked"));
}

#[test]
fn refusals_reach_the_sdk_as_permission_denied_never_unauthenticated() {
    // The agent's own refusal: a method outside admin.allowed_methods.
    let f = flyte2(
        "",
        &[(
            "FLYTE_AUTH_AGENT_ADMIN_ALLOWED_METHODS",
            "flyteidl2.workflow.QueueService/*",
        )],
    );
    let (code, result) = f.task(&["denied"]);
    assert_eq!(code, 0, "{result}");
    assert_eq!(result["code"], json!("permission_denied"), "{result}");
    assert_contains(
        result["message"].as_str().unwrap(),
        "not in admin.allowed_methods",
    );
    assert!(
        f.plane.calls().is_empty(),
        "the control plane saw a refused call"
    );

    // The control plane's: it refuses the credential even after a renewal (revoked again as
    // soon as the renewed one is asked for would race, so: a credential it can never accept).
    let f = flyte2(
        "",
        &[("FLYTE_AUTH_AGENT_ADMIN_AUTH_HEADER", "x-wrong-header")],
    );
    let (code, result) = f.task(&["denied"]);
    assert_eq!(code, 0, "{result}");
    assert_eq!(result["code"], json!("permission_denied"), "{result}");
    assert_contains(
        result["message"].as_str().unwrap(),
        "refused the executor credential twice",
    );
}

#[test]
fn the_execution_scope_keeps_an_sdk_task_in_its_own_project_domain_and_org() {
    let f = flyte2("", &[(flyte_auth_agent::env::ENV_LOG_FORMAT, "json")]);
    // In scope: the SDK's own calls (ListRuns, SelectCluster, CreateUploadLocation), gzipped as
    // the SDK sends every request, are read and pass.
    let (code, result) = f.task(&["remote"]);
    assert_eq!(code, 0, "{result}");
    let seen = f.plane.calls().len();

    // Another project, through the real SDK: refused by the agent, never seen upstream.
    let (code, result) = f.task(&["denied", "payroll"]);
    assert_eq!(code, 0, "{result}");
    assert_eq!(result["code"], json!("permission_denied"), "{result}");
    assert_contains(
        result["message"].as_str().unwrap(),
        r#"flyteidl2.workflow.RunService/ListRuns: project_id.name "payroll" is not this execution's project "flytesnacks""#,
    );

    // Another domain, org or project, as a gzipped Connect unary call, a gzipped Connect stream
    // envelope (Watch's request, judged like a unary one) and a gzipped gRPC call.
    let post = |path: &str, content_type: &str, encoding: (&str, &str), body: Vec<u8>| {
        reqwest::blocking::Client::new()
            .post(format!("http://127.0.0.1:{}{path}", f.port))
            .header("content-type", content_type)
            .header("connect-protocol-version", "1")
            .header(encoding.0, encoding.1)
            .body(body)
            .send()
            .unwrap()
    };
    let response = post(
        "/flyteidl2.task.TaskService/ListTasks",
        "application/proto",
        ("content-encoding", "gzip"),
        gzip(&list_tasks(ORG, PROJECT, "production")),
    );
    assert_eq!(response.status(), 403);
    let body: Value = response.json().unwrap();
    assert_eq!(body["code"], json!("permission_denied"), "{body}");
    assert_contains(
        body["message"].as_str().unwrap(),
        r#"project_id.domain "production" is not this execution's domain "development""#,
    );
    let watch = flyte2_message(
        "flyteidl2.workflow.WatchRunDetailsRequest",
        &[
            ("run_id.org", "globex"),
            ("run_id.project", PROJECT),
            ("run_id.domain", DOMAIN),
            ("run_id.name", "r1"),
        ],
    );
    let response = post(
        "/flyteidl2.workflow.RunService/WatchRunDetails",
        "application/connect+proto",
        ("connect-content-encoding", "gzip"),
        gzipped_envelope(&watch),
    );
    assert_eq!(response.status(), 403);
    let body: Value = response.json().unwrap();
    assert_contains(
        body["message"].as_str().unwrap(),
        r#"run_id.org "globex" is not this execution's org "acme""#,
    );
    // gRPC on the same port (h2c), its message gzipped per grpc-encoding: a gRPC refusal.
    let frame = gzipped_envelope(&list_tasks(ORG, "payroll", DOMAIN));
    let response = reqwest::blocking::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap()
        .post(format!(
            "http://127.0.0.1:{}/flyteidl2.task.TaskService/ListTasks",
            f.port
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-encoding", "gzip")
        .body(frame)
        .send()
        .unwrap();
    assert_eq!(response.headers()["grpc-status"], "7", "{response:?}");
    assert_contains(
        response.headers()["grpc-message"].to_str().unwrap(),
        r#"project_id.name "payroll" is not this execution's project"#,
    );
    // A gzip bomb: 4 MiB + 1 of zeros in 4 KiB, refused at admin.max_request_bytes.
    let response = post(
        "/flyteidl2.task.TaskService/ListTasks",
        "application/proto",
        ("content-encoding", "gzip"),
        gzip(&vec![0; 4 * 1024 * 1024 + 1]),
    );
    let body: Value = response.json().unwrap();
    assert_eq!(body["code"], json!("resource_exhausted"), "{body}");
    assert_contains(body["message"].as_str().unwrap(), "once decompressed");
    assert_eq!(
        f.plane.calls().len(),
        seen,
        "the control plane saw a refused call"
    );

    let metrics = f.agent.health_get("/metrics").1;
    for line in [
        r#"flyte_auth_agent_admin_policy_refusals_total{method="/flyteidl2.workflow.RunService/ListRuns",reason="foreign_project"} 1"#,
        r#"flyte_auth_agent_admin_policy_refusals_total{method="/flyteidl2.task.TaskService/ListTasks",reason="foreign_domain"} 1"#,
        r#"flyte_auth_agent_admin_policy_refusals_total{method="/flyteidl2.task.TaskService/ListTasks",reason="foreign_project"} 1"#,
        r#"flyte_auth_agent_admin_policy_refusals_total{method="/flyteidl2.workflow.RunService/WatchRunDetails",reason="foreign_org"} 1"#,
        r#"flyte_auth_agent_admin_policy_refusals_total{method="/flyteidl2.task.TaskService/ListTasks",reason="too_large"} 1"#,
    ] {
        assert_contains(&metrics, line);
    }
    // The audit lines: the in-scope ListRuns with what it named, the refused one with its code.
    let list_runs = wait_for("two ListRuns audit events", Duration::from_secs(10), || {
        let events: Vec<Value> = audit_events(&f.agent.output())
            .into_iter()
            .filter(|e| e["method"] == json!("flyteidl2.workflow.RunService/ListRuns"))
            .collect();
        (events.len() >= 2).then_some(events)
    });
    assert_eq!(list_runs.len(), 2, "{list_runs:#?}");
    assert_eq!(list_runs[0]["code"], json!("Ok"), "{}", list_runs[0]);
    assert_eq!(list_runs[0]["project"], json!(PROJECT), "{}", list_runs[0]);
    assert_eq!(list_runs[0]["domain"], json!(DOMAIN), "{}", list_runs[0]);
    assert_eq!(
        list_runs[1]["code"],
        json!("PermissionDenied"),
        "{}",
        list_runs[1]
    );
}
