//! The Admin proxy end to end: real flytekit (and plain grpc) in separate processes with only a
//! pod's env, through the real agent binary, to the FlyteAdmin stand-in (tests/admin), with
//! credentials from the real oidc-provider.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use flyte_auth_agent::env::{
    ENV_ADMIN_DOMAIN, ENV_ADMIN_PROJECT, ENV_EXECUTION_ID, ENV_LOG_FORMAT,
};
use serde_json::{json, Value};

const PROPELLER_SECRET: &str = "propeller-secret-value";
/// Opts in to `GET /v1/admin/token` (`admin.serve_token`), which the tests of flytekit's
/// ExternalCommand mode and of the Python package's `admin_token()` need.
const SERVE_TOKEN: (&str, &str) = ("FLYTE_AUTH_AGENT_ADMIN_SERVE_TOKEN", "true");
/// The execution's scope, as the injector sets it from the pod's namespace.
const SCOPE: [(&str, &str); 2] = [
    (ENV_ADMIN_PROJECT, "flytesnacks"),
    (ENV_ADMIN_DOMAIN, "development"),
];
/// Turns the execution-scope policy off (for the streaming tests, whose services are not
/// Admin's).
const UNRESTRICTED: (&str, &str) = ("FLYTE_AUTH_AGENT_ADMIN_POLICY", "unrestricted");

/// The IdP, the Admin stand-in, and an agent proxying to it.
struct Cluster {
    idp: Idp,
    admin: Admin,
    pod: Pod,
    agent: AgentProcess,
}

fn admin_config(idp: &Idp) -> Value {
    json!({ "issuer": idp.issuer })
}

/// The agent's env for an Admin at `admin` in client-secret mode, plus `extra`.
fn admin_env(pod: &Pod, admin: &Admin, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    pod.secret("flyte-admin", "client_secret", PROPELLER_SECRET);
    let mut env = pod.env(&json!([]));
    let mut set = |k: &str, v: &str| {
        env.retain(|(key, _)| key != k);
        env.push((k.to_string(), v.to_string()));
    };
    set("FLYTE_AUTH_AGENT_ADMIN_ENDPOINT", &admin.address());
    set("FLYTE_AUTH_AGENT_ADMIN_INSECURE", "true");
    set("FLYTE_AUTH_AGENT_ADMIN_MODE", "client-secret");
    set("FLYTE_AUTH_AGENT_ADMIN_CLIENT_ID", "flytepropeller");
    set(
        "FLYTE_AUTH_AGENT_ADMIN_CLIENT_SECRET",
        r#"{"group": "flyte-admin", "key": "client_secret"}"#,
    );
    for (k, v) in SCOPE.iter().chain(extra) {
        set(k, v);
    }
    env
}

fn cluster(extra: &[(&str, &str)]) -> Cluster {
    let idp = Idp::with_clients(&[("flytepropeller", PROPELLER_SECRET, "client_secret_basic")]);
    let admin = Admin::start(admin_config(&idp));
    let pod = Pod::new();
    let env = admin_env(&pod, &admin, extra);
    let agent = AgentProcess::start(&pod, &["serve"], &env);
    Cluster {
        idp,
        admin,
        pod,
        agent,
    }
}

/// The env a task container gets: the agent's socket as Flyte's endpoint, nothing secret.
fn task_env(pod: &Pod, socket: &Path) -> Vec<(String, String)> {
    vec![
        ("HOME".into(), pod.dir.path().display().to_string()),
        ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
        (
            "FLYTE_PLATFORM_URL".into(),
            format!("unix://{}", socket.display()),
        ),
        ("FLYTE_PLATFORM_INSECURE".into(), "true".into()),
        (
            "FLYTE_AUTH_AGENT_SOCKET".into(),
            socket.display().to_string(),
        ),
    ]
}

/// Runs one scenario of tests/python/admin_scenarios.py with exactly `env`.
fn scenario_output(env: &[(String, String)], args: &[&str]) -> Output {
    for (k, v) in env {
        assert!(
            !v.contains(PROPELLER_SECRET),
            "the task's env must hold no client secret ({k})"
        );
    }
    Command::new(python())
        .arg(workspace().join("tests/python/admin_scenarios.py"))
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .output()
        .expect("run admin_scenarios.py")
}

fn scenario(env: &[(String, String)], args: &[&str]) -> Value {
    let out = scenario_output(env, args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scenario {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{last:?}: {e}"))
}

impl Cluster {
    fn task(&self, args: &[&str]) -> Value {
        scenario(&task_env(&self.pod, self.agent.socket()), args)
    }

    fn metrics(&self) -> String {
        self.agent.health_get("/metrics").1
    }
}

fn methods(calls: &[Value]) -> Vec<String> {
    calls
        .iter()
        .map(|c| {
            c["method"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// Every call was let in by Admin, with the executor's credential in Admin's header.
#[track_caller]
fn all_authorized_as(calls: &[Value], client_id: &str) {
    assert!(!calls.is_empty());
    for c in calls {
        assert_eq!(c["authorized"], json!(true), "{c}");
        assert_eq!(c["header"], json!("flyte-authorization"), "{c}");
        assert_eq!(c["client_id"], json!(client_id), "{c}");
    }
}

#[test]
fn flyteremote_in_a_task_reaches_admin_with_the_executor_credential() {
    let mut c = cluster(&[SERVE_TOKEN]);
    let seen = c.task(&["remote"]);
    assert_eq!(seen["execution"], json!("seed"));
    assert_eq!(seen["projects"], json!(["demo", "flytesnacks"]));
    let calls = c.admin.authenticated_calls();
    assert_eq!(methods(&calls), ["GetExecution", "ListProjects"]);
    all_authorized_as(&calls, "flytepropeller");
    // One credential for the whole pod, minted at start.
    assert_eq!(c.idp.token_requests(), 1);
    assert_eq!(
        c.idp.stats()["auth_methods"],
        json!(["client_secret_basic"])
    );

    // The same credential on the socket's token API (opted in), verifiable with Admin's audience.
    let (status, token) = sget(c.agent.socket(), "/v1/admin/token", "text/plain");
    assert_eq!(status, 200, "{token}");
    c.pod.sensitive.add(token.clone());
    let claims = c.idp.verify(&token, "flyteadmin");
    assert_eq!(claims["client_id"], json!("flytepropeller"));
    assert_contains(&claims["scope"].to_string(), "all");

    let metrics = c.metrics();
    assert_contains(
        &metrics,
        r#"flyte_auth_agent_admin_calls_total{method="/flyteidl.service.AdminService/GetExecution",code="Ok"} 1"#,
    );
    assert_contains(
        &metrics,
        "flyte_auth_agent_admin_proxy_overhead_seconds_count",
    );
    let (code, _) = c.agent.stop();
    assert_eq!(code, 0);
}

#[test]
fn the_eager_controller_creates_polls_lists_and_terminates_executions() {
    let mut c = cluster(&[]);
    let seen = c.task(&["eager"]);
    assert_eq!(seen["created"], json!("eager-child"));
    assert_eq!(seen["phases"], json!(["RUNNING", "SUCCEEDED"]));
    assert!(seen["listed"]
        .as_array()
        .unwrap()
        .contains(&json!("eager-child")));
    assert_eq!(seen["terminated_phase"], json!("ABORTED"));
    let calls = c.admin.authenticated_calls();
    let names = methods(&calls);
    for m in [
        "CreateExecution",
        "GetExecution",
        "ListExecutions",
        "TerminateExecution",
    ] {
        assert!(names.contains(&m.to_string()), "{m} in {names:?}");
    }
    all_authorized_as(&calls, "flytepropeller");
}

#[test]
fn remote_default_from_the_agent_package_uses_the_socket_and_the_execution_project() {
    let mut c = cluster(&[]);
    let mut env = task_env(&c.pod, c.agent.socket());
    // What flytekit's entrypoint finds in a task pod; FLYTE_PLATFORM_URL is not needed.
    env.retain(|(k, _)| k != "FLYTE_PLATFORM_URL");
    env.push((
        "FLYTE_INTERNAL_EXECUTION_PROJECT".into(),
        "flytesnacks".into(),
    ));
    env.push((
        "FLYTE_INTERNAL_EXECUTION_DOMAIN".into(),
        "development".into(),
    ));
    let seen = scenario(&env, &["default"]);
    assert_eq!(seen["default_project"], json!("flytesnacks"));
    assert_eq!(seen["default_domain"], json!("development"));
    assert_eq!(seen["execution"], json!("seed"));
    all_authorized_as(&c.admin.authenticated_calls(), "flytepropeller");
}

#[test]
fn external_command_mode_gets_the_admin_token_from_the_agent_cli() {
    let mut c = cluster(&[SERVE_TOKEN]);
    let mut env = task_env(&c.pod, c.agent.socket());
    // Straight to Admin this time; the credential comes from `flyte-auth-agent token --admin`.
    env.retain(|(k, _)| k != "FLYTE_PLATFORM_URL");
    env.push(("FLYTE_PLATFORM_URL".into(), c.admin.address()));
    env.push((
        "FLYTE_CREDENTIALS_AUTH_MODE".into(),
        "ExternalCommand".into(),
    ));
    let command = format!(
        "{},token,--admin,--socket,{}",
        agent_bin(),
        c.agent.socket().display()
    );
    env.push(("FLYTE_CREDENTIALS_COMMAND".into(), command));
    let seen = scenario(&env, &["external"]);
    assert_eq!(seen["execution"], json!("seed"));
    let calls = c.admin.calls();
    // flytekit's own flow: the first call goes without a token and is refused, then it runs
    // the command and retries with what it printed.
    let authorized: Vec<_> = calls
        .iter()
        .filter(|c| c["exempt"] != json!(true) && c["authorized"] == json!(true))
        .cloned()
        .collect();
    assert_eq!(methods(&authorized), ["GetExecution", "ListProjects"]);
    all_authorized_as(&authorized, "flytepropeller");
}

fn call(c: &Cluster) -> Value {
    c.task(&["call"])
}

#[track_caller]
fn call_ok(c: &Cluster) {
    let seen = call(c);
    assert_eq!(
        seen["code"],
        json!("OK"),
        "{seen}\nagent:\n{}",
        c.agent.output()
    );
}

#[test]
fn a_revoked_credential_is_renewed_once_and_the_call_succeeds() {
    let mut c = cluster(&[]);
    call_ok(&c);
    assert_eq!(
        c.admin.control(json!({"cmd": "revoke_seen"}))["revoked"],
        json!(1)
    );
    call_ok(&c);
    assert_eq!(c.idp.token_requests(), 2, "one renewal");
    let calls = c.admin.authenticated_calls();
    let outcomes: Vec<_> = calls.iter().map(|c| c["authorized"].clone()).collect();
    assert_eq!(outcomes, [json!(true), json!(false), json!(true)]);
    assert_eq!(calls[1]["reason"], json!("token revoked"));
    assert_ne!(calls[0]["jti"], calls[2]["jti"]);
}

#[test]
fn admin_refusing_twice_is_permission_denied_never_unauthenticated() {
    let mut c = cluster(&[]);
    c.admin.control(json!({"cmd": "reject", "count": 2}));
    let seen = call(&c);
    assert_eq!(seen["code"], json!("PERMISSION_DENIED"), "{seen}");
    let message = seen["message"].as_str().unwrap();
    assert_contains(message, "flyte-auth-agent");
    assert_contains(message, "refused the executor credential twice");
    assert_contains(message, "rejected by control");
    assert!(seen["seconds"].as_f64().unwrap() < 10.0, "{seen}");

    // Unmodified flytekit gets the same answer and fails instead of starting a browser login.
    c.admin.control(json!({"cmd": "reject", "count": 1000}));
    let out = scenario_output(&task_env(&c.pod, c.agent.socket()), &["remote"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_contains(&stderr, "PERMISSION_DENIED");
    assert_contains(&stderr, "flyte-auth-agent");
    assert_contains(
        &c.metrics(),
        r#"method="/flyteidl.service.AdminService/GetExecution",code="PermissionDenied"}"#,
    );
}

#[test]
fn admin_down_is_unavailable_and_a_restarted_admin_is_reconnected() {
    let mut c = cluster(&[]);
    call_ok(&c);
    c.admin.stop();
    let seen = call(&c);
    assert_eq!(seen["code"], json!("UNAVAILABLE"), "{seen}");
    let message = seen["message"].as_str().unwrap();
    assert_contains(message, "flyte-auth-agent");
    assert_contains(message, &format!("FlyteAdmin at {}", c.admin.address()));
    c.admin.restart();
    wait_for(
        "calls to succeed after the restart",
        Duration::from_secs(20),
        || (call(&c)["code"] == json!("OK")).then_some(()),
    );
    all_authorized_as(&c.admin.authenticated_calls(), "flytepropeller");
}

#[test]
fn fifty_task_processes_share_one_credential_and_one_renewal() {
    let mut c = cluster(&[]);
    let env = task_env(&c.pod, c.agent.socket());
    let script = workspace().join("tests/python/admin_scenarios.py");
    let run_all = || {
        let children: Vec<_> = (0..50)
            .map(|_| {
                Command::new(python())
                    .arg(&script)
                    .arg("call")
                    .env_clear()
                    .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            let line = String::from_utf8_lossy(&out.stdout);
            let seen: Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| {
                panic!("{line}: {e}\n{}", String::from_utf8_lossy(&out.stderr))
            });
            assert_eq!(seen["code"], json!("OK"), "{seen}");
        }
    };
    run_all();
    let refused: Vec<_> = c
        .admin
        .authenticated_calls()
        .into_iter()
        .filter(|c| c["authorized"] != json!(true))
        .collect();
    assert_eq!(c.idp.token_requests(), 1, "refusals: {refused:?}");
    // Every process now holds a revoked credential at once: one renewal serves them all.
    c.admin.control(json!({"cmd": "revoke_seen"}));
    run_all();
    assert_eq!(c.idp.token_requests(), 2);
    let authorized = c
        .admin
        .authenticated_calls()
        .iter()
        .filter(|c| c["authorized"] == json!(true))
        .count();
    assert_eq!(authorized, 100);
}

#[test]
fn streams_pass_messages_and_trailers_and_deadlines_propagate() {
    // AsyncAgentService and SyncAgentService are not Admin's: only the unrestricted policy
    // forwards them, and says so at start.
    let mut c = cluster(&[UNRESTRICTED]);
    wait_for("the start warning", Duration::from_secs(10), || {
        c.agent
            .output()
            .contains("admin.policy is unrestricted")
            .then_some(())
    });
    let seen = c.task(&["stream", "5"]);
    assert_eq!(
        seen["lines"],
        json!(["line 0", "line 1", "line 2", "line 3", "line 4"])
    );
    assert_eq!(seen["trailers"]["x-standin-count"], json!("5"));
    assert_eq!(seen["code"], json!("OK"));

    let seen = c.task(&["deadline"]);
    assert_eq!(seen["code"], json!("DEADLINE_EXCEEDED"));
    assert!(seen["seconds"].as_f64().unwrap() < 4.0, "{seen}");

    // Request and response messages interleave: nothing waits for the whole request stream.
    let seen = c.task(&["bidi", "3"]);
    assert_eq!(seen["echoes"], json!(["header", "outputs", "outputs"]));
    assert_eq!(seen["trailers"]["x-standin-received"], json!("3"));
    all_authorized_as(&c.admin.authenticated_calls(), "flytepropeller");
}

#[test]
fn the_allow_list_refuses_other_methods_before_admin_sees_them() {
    let mut c = cluster(&[(
        "FLYTE_AUTH_AGENT_ADMIN_ALLOWED_METHODS",
        "flyteidl.service.AuthMetadataService/*,flyteidl.service.AdminService/ListProjects",
    )]);
    let seen = call(&c);
    assert_eq!(seen["code"], json!("PERMISSION_DENIED"));
    assert_contains(
        seen["message"].as_str().unwrap(),
        "not in admin.allowed_methods",
    );
    assert!(c.admin.authenticated_calls().is_empty());
}

#[test]
fn a_credential_the_task_sends_is_replaced_by_the_executor_credential() {
    let mut c = cluster(&[]);
    let seen = c.task(&["call", "forged"]);
    assert_eq!(seen["code"], json!("OK"), "{seen}");
    // The stand-in reads `authorization` before `flyte-authorization`, as FlyteAdmin does, so a
    // forwarded forgery would have been judged (and refused) instead of the agent's credential.
    all_authorized_as(&c.admin.authenticated_calls(), "flytepropeller");
}

/// An agent whose Admin credential comes from a projected service-account token in `mode`.
fn service_account_cluster(idp: Idp, mode: &str, client_id: &str, token: String) -> Cluster {
    let admin = Admin::start(admin_config(&idp));
    let pod = Pod::new();
    let token_file = pod.dir.path().join("sa/token");
    std::fs::create_dir_all(token_file.parent().unwrap()).unwrap();
    let mut env = pod.env(&json!([]));
    env.extend(
        [
            ("FLYTE_AUTH_AGENT_ADMIN_ENDPOINT", admin.address()),
            ("FLYTE_AUTH_AGENT_ADMIN_INSECURE", "true".into()),
            ("FLYTE_AUTH_AGENT_ADMIN_MODE", mode.into()),
            ("FLYTE_AUTH_AGENT_ADMIN_CLIENT_ID", client_id.into()),
            (
                "FLYTE_AUTH_AGENT_ADMIN_TOKEN_FILE",
                token_file.display().to_string(),
            ),
            (SCOPE[0].0, SCOPE[0].1.into()),
            (SCOPE[1].0, SCOPE[1].1.into()),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    // The kubelet writes the projected token before any container starts.
    pod.sensitive.add(token.clone());
    std::fs::write(&token_file, token).unwrap();
    let agent = AgentProcess::start(&pod, &["serve"], &env);
    Cluster {
        idp,
        admin,
        pod,
        agent,
    }
}

impl Cluster {
    /// Writes a new service-account token, as the kubelet does when it rotates one.
    fn rotate_sa_token(&self, token: String) {
        self.pod.sensitive.add(token.clone());
        let path = self.pod.dir.path().join("sa/token");
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, token).unwrap();
        std::fs::rename(tmp, path).unwrap();
    }
}

#[test]
fn jwt_bearer_mode_uses_the_service_account_token_as_client_assertion_and_rereads_it() {
    let (pem, jwk) = p256_key();
    let idp = Idp::start(json!({"clients": [
        {"client_id": "workload", "token_endpoint_auth_method": "private_key_jwt", "jwks": {"keys": [jwk]}},
    ]}));
    let token_endpoint = idp.token_endpoint();
    let assertion = || signed_jwt(&pem, "workload", "workload", &token_endpoint);
    let mut c = service_account_cluster(idp, "jwt-bearer", "workload", assertion());
    call_ok(&c);
    all_authorized_as(&c.admin.authenticated_calls(), "workload");
    // The IdP allows each assertion once; the kubelet rotates the file, and the renewal after
    // Admin's refusal must read the new one.
    c.rotate_sa_token(assertion());
    c.admin.control(json!({"cmd": "revoke_seen"}));
    call_ok(&c);
    let stats = c.idp.stats();
    assert_eq!(
        stats["auth_methods"],
        json!(["private_key_jwt", "private_key_jwt"]),
        "{stats}"
    );
    assert_eq!(c.agent.stop().0, 0);
}

#[test]
fn token_exchange_mode_exchanges_the_service_account_token_and_rereads_it() {
    const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
    const SA: &str = "system:serviceaccount:flytesnacks-development:default";
    let (pem, jwk) = p256_key();
    let idp = Idp::start(json!({
        "tokenExchange": {"jwks": {"keys": [jwk]}, "issuer": "https://kubernetes.default.svc", "audience": "flyte-auth-agent"},
        "clients": [{"client_id": "flyte-auth-agent", "token_endpoint_auth_method": "none", "grant_types": [GRANT]}],
    }));
    let sa_token = || {
        signed_jwt(
            &pem,
            "https://kubernetes.default.svc",
            SA,
            "flyte-auth-agent",
        )
    };
    let mut c = service_account_cluster(idp, "token-exchange", "flyte-auth-agent", sa_token());
    call_ok(&c);
    let calls = c.admin.authenticated_calls();
    all_authorized_as(&calls, "flyte-auth-agent");
    // Admin sees the pod's own identity.
    assert_eq!(calls[0]["sub"], json!(SA));

    c.rotate_sa_token(sa_token());
    c.admin.control(json!({"cmd": "revoke_seen"}));
    call_ok(&c);
    let stats = c.idp.stats();
    assert_eq!(stats["grant_types"], json!([GRANT, GRANT]), "{stats}");
    assert_eq!(c.agent.stop().0, 0);
}

#[test]
fn tls_to_admin_trusts_the_configured_ca_and_verifies_the_server_name() {
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki(pki.path(), "flyteadmin.flyte.test");
    let idp = Idp::with_clients(&[("flytepropeller", PROPELLER_SECRET, "client_secret_basic")]);
    let mut config = admin_config(&idp);
    config["tls"] = json!({"cert": cert, "key": key});
    let mut admin = Admin::start(config);
    let ca = ca.display().to_string();
    let start = |extra: &[(&str, &str)]| {
        let pod = Pod::new();
        let mut env = admin_env(
            &pod,
            &admin,
            &[("FLYTE_AUTH_AGENT_ADMIN_INSECURE", "false")],
        );
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let agent = AgentProcess::start(&pod, &["serve"], &env);
        (pod, agent)
    };
    let task_call =
        |pod: &Pod, agent: &AgentProcess| scenario(&task_env(pod, agent.socket()), &["call"]);

    // Without the CA the certificate is unknown; with it but the wrong name it does not match.
    let (pod, agent) = start(&[]);
    let seen = task_call(&pod, &agent);
    assert_eq!(seen["code"], json!("UNAVAILABLE"), "{seen}");
    assert_contains(seen["message"].as_str().unwrap(), "certificate");
    let (pod, agent) = start(&[("FLYTE_AUTH_AGENT_ADMIN_CA_FILE", &ca)]);
    let seen = task_call(&pod, &agent);
    assert_eq!(seen["code"], json!("UNAVAILABLE"), "{seen}");
    assert_contains(seen["message"].as_str().unwrap(), "certificate");

    let (pod, agent) = start(&[
        ("FLYTE_AUTH_AGENT_ADMIN_CA_FILE", &ca),
        (
            "FLYTE_AUTH_AGENT_ADMIN_SERVER_NAME",
            "flyteadmin.flyte.test",
        ),
    ]);
    let seen = task_call(&pod, &agent);
    assert_eq!(seen["code"], json!("OK"), "{seen}\n{}", agent.output());
    all_authorized_as(&admin.authenticated_calls(), "flytepropeller");
}

#[test]
fn the_python_package_reads_token_files_and_falls_back_to_the_socket() {
    let idp = Idp::with_clients(&[
        ("flytepropeller", PROPELLER_SECRET, "client_secret_basic"),
        ("app", "app-secret-value", "client_secret_basic"),
    ]);
    let admin = Admin::start(admin_config(&idp));
    let pod = Pod::new();
    pod.secret("app", "client_secret", "app-secret-value");
    let requests = json!([request(
        "api",
        "app",
        "app",
        ("idpDiscoveryEndpoint", &idp.issuer)
    )]);
    let env = admin_env(
        &pod,
        &admin,
        &[
            ("FLYTE_AUTH_AGENT_TOKEN_REQUESTS", &requests.to_string()),
            SERVE_TOKEN,
        ],
    );
    let agent = AgentProcess::start(&pod, &["serve"], &env);
    agent.wait_ready(Duration::from_secs(10));
    let file = pod.token_file("api").unwrap();
    pod.sensitive.add(file.clone());

    let mut task = task_env(&pod, agent.socket());
    task.push((
        "FLYTE_TOKENS_PATH_PREFIX".into(),
        pod.tokens_dir().display().to_string(),
    ));
    assert_eq!(scenario(&task, &["token", "api"])["token"], json!(file));
    // Without the tokens directory it asks the socket, and gets the same token.
    let no_dir: Vec<_> = task
        .iter()
        .filter(|(k, _)| k != "FLYTE_TOKENS_PATH_PREFIX")
        .cloned()
        .collect();
    assert_eq!(scenario(&no_dir, &["token", "api"])["token"], json!(file));
    let admin_token = scenario(&no_dir, &["admin-token"]);
    let admin_token = admin_token["token"].as_str().unwrap();
    pod.sensitive.add(admin_token);
    assert_eq!(
        idp.verify(admin_token, "flyteadmin")["client_id"],
        json!("flytepropeller")
    );

    // Errors name the token and the agent's reason, or the bad name.
    let unknown = scenario(&task, &["token", "nope"]);
    assert_eq!(unknown["error"], json!("TokenError"));
    assert_contains(unknown["message"].as_str().unwrap(), "'nope'");
    assert_contains(unknown["message"].as_str().unwrap(), "configured: api");
    let unsafe_name = scenario(&task, &["token", "../api"]);
    assert_eq!(unsafe_name["error"], json!("ValueError"));
    assert_contains(
        unsafe_name["message"].as_str().unwrap(),
        "single path component",
    );
}

#[test]
fn bad_answers_from_admins_auth_metadata_are_named_and_nothing_is_sent_without_a_credential() {
    let idp = Idp::with_clients(&[("flytepropeller", PROPELLER_SECRET, "client_secret_basic")]);
    for (bad, expected) in [
        (
            json!({"token_endpoint": "not a url"}),
            "GetOAuth2Metadata announced token_endpoint \"not a url\", which is not a URL",
        ),
        (
            json!({"token_endpoint": "http://idp.example.com/token"}),
            "plain http to a non-loopback host",
        ),
        (
            json!({"public_client": {"authorization_metadata_key": "bad key"}}),
            "announced \"bad key\" as authorization_metadata_key, which is not a header name",
        ),
    ] {
        let mut config = admin_config(&idp);
        config
            .as_object_mut()
            .unwrap()
            .extend(bad.as_object().unwrap().clone());
        let mut admin = Admin::start(config);
        let pod = Pod::new();
        let agent = AgentProcess::start(&pod, &["serve"], &admin_env(&pod, &admin, &[]));
        let seen = scenario(&task_env(&pod, agent.socket()), &["call"]);
        assert_eq!(seen["code"], json!("UNAVAILABLE"), "{seen}");
        let message = seen["message"].as_str().unwrap();
        assert_contains(message, "flyte-auth-agent");
        assert_contains(message, expected);
        let authenticated = admin.authenticated_calls();
        assert!(authenticated.is_empty(), "{authenticated:?}");
    }
}

#[test]
fn without_an_admin_section_grpc_is_unimplemented_and_says_why() {
    let pod = Pod::new();
    let agent = AgentProcess::start(&pod, &["serve"], &pod.env(&json!([])));
    let seen = scenario(&task_env(&pod, agent.socket()), &["call"]);
    assert_eq!(seen["code"], json!("UNIMPLEMENTED"), "{seen}");
    assert_contains(
        seen["message"].as_str().unwrap(),
        "flyte-auth-agent: no FlyteAdmin is configured (admin.endpoint)",
    );
    let (status, body) = sget(agent.socket(), "/v1/admin/token", "text/plain");
    assert_eq!(status, 404);
    assert_contains(&body, "admin_not_configured");
}

#[test]
fn the_admin_token_is_handed_out_only_when_opted_in_and_never_as_a_token_name() {
    let c = cluster(&[]);
    let (status, body) = sget(c.agent.socket(), "/v1/admin/token", "text/plain");
    assert_eq!(status, 403, "{body}");
    assert_contains(&body, "admin_token_not_served");
    assert_contains(&body, "admin.serve_token");
    assert_contains(&body, "FLYTE_AUTH_AGENT_ADMIN_SERVE_TOKEN");
    // The credential's internal name is not a token name, in either form.
    for path in ["/v1/tokens/.admin", "/v1/tokens/%2Eadmin"] {
        let (status, body) = sget(c.agent.socket(), path, "text/plain");
        assert_eq!(status, 404, "{path}: {body}");
        assert_contains(&body, "unknown_token");
    }
    // The CLI says why, and prints no token.
    let out = Command::new(agent_bin())
        .args(["token", "--admin", "--socket"])
        .arg(c.agent.socket())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert_contains(&String::from_utf8_lossy(&out.stderr), "admin.serve_token");
    // The proxy still works: the credential is used, just not handed out.
    call_ok(&c);

    let c = cluster(&[SERVE_TOKEN]);
    let (status, token) = sget(c.agent.socket(), "/v1/admin/token", "text/plain");
    assert_eq!(status, 200, "{token}");
    c.pod.sensitive.add(token.clone());
    assert_eq!(
        c.idp.verify(&token, "flyteadmin")["client_id"],
        json!("flytepropeller")
    );
    let (status, _) = sget(c.agent.socket(), "/v1/tokens/.admin", "text/plain");
    assert_eq!(status, 404);
}

#[test]
fn the_execution_scope_lets_the_tasks_own_calls_through_and_refuses_the_rest() {
    let mut c = cluster(&[
        SERVE_TOKEN,
        (ENV_LOG_FORMAT, "json"),
        (ENV_EXECUTION_ID, "a1b2c3"),
    ]);
    // The Admin credential must appear in no log line (stop() checks every sensitive value).
    let (status, token) = sget(c.agent.socket(), "/v1/admin/token", "text/plain");
    assert_eq!(status, 200, "{token}");
    c.pod.sensitive.add(token);

    let seen = c.task(&["scope"]);
    for ok in [
        "get_own",
        "list_own",
        "create_own",
        "list_projects",
        "version",
    ] {
        assert_eq!(seen[ok]["code"], json!("OK"), "{ok}: {seen}");
    }
    let denied = |name: &str, needle: &str| {
        assert_eq!(
            seen[name]["code"],
            json!("PERMISSION_DENIED"),
            "{name}: {seen}"
        );
        assert_contains(seen[name]["message"].as_str().unwrap(), needle);
    };
    assert_eq!(
        seen["get_other_project"]["message"],
        json!("flyte-auth-agent: flyteidl.service.AdminService/GetExecution: id.project \"payroll\" is not this execution's project \"flytesnacks\"")
    );
    denied(
        "get_other_domain",
        "id.domain \"production\" is not this execution's domain \"development\"",
    );
    denied(
        "list_other_project",
        "ListExecutions: id.project \"payroll\"",
    );
    denied(
        "create_other_domain",
        "CreateExecution: domain \"production\"",
    );
    denied(
        "create_foreign_launch_plan",
        "spec.launch_plan.project \"payroll\" is not this execution's project",
    );
    denied(
        "workflow_event",
        "CreateWorkflowEvent: writes execution events or administers projects",
    );
    denied(
        "register_project",
        "RegisterProject: writes execution events or administers projects",
    );
    denied(
        "forged_nested",
        "GetTaskExecution: id.node_execution_id.execution_id.project \"payroll\"",
    );
    // A gzipped request is read like any other.
    denied(
        "compressed",
        "GetExecution: id.project \"payroll\" is not this execution's project",
    );

    // Admin saw the task's own calls and nothing else.
    let calls = c.admin.authenticated_calls();
    assert_eq!(
        methods(&calls),
        [
            "GetExecution",
            "ListExecutions",
            "CreateExecution",
            "ListProjects",
            "GetVersion"
        ]
    );
    all_authorized_as(&calls, "flytepropeller");

    let metrics = c.metrics();
    for line in [
        r#"flyte_auth_agent_admin_policy_refusals_total{method="/flyteidl.service.AdminService/GetExecution",reason="foreign_project"} 2"#,
        r#"flyte_auth_agent_admin_policy_refusals_total{method="/flyteidl.service.AdminService/GetExecution",reason="foreign_domain"} 1"#,
        r#"flyte_auth_agent_admin_policy_refusals_total{method="/flyteidl.service.AdminService/CreateWorkflowEvent",reason="admin_method"} 1"#,
        r#"flyte_auth_agent_admin_policy_refusals_total{method="/flyteidl.service.AdminService/GetTaskExecution",reason="foreign_project"} 1"#,
        r#"flyte_auth_agent_admin_calls_total{method="/flyteidl.service.AdminService/GetExecution",code="PermissionDenied"} 3"#,
    ] {
        assert_contains(&metrics, line);
    }

    // One audit event per call, forwarded or refused, with what the request named.
    let audit = wait_for("14 audit events", Duration::from_secs(10), || {
        let events = audit_events(&c.agent.output());
        (events.len() >= 14).then_some(events)
    });
    assert_eq!(audit.len(), 14, "{audit:#?}");
    let own = &audit[0];
    assert_eq!(
        own["method"],
        json!("flyteidl.service.AdminService/GetExecution"),
        "{own}"
    );
    assert_eq!(own["project"], json!("flytesnacks"), "{own}");
    assert_eq!(own["domain"], json!("development"), "{own}");
    assert_eq!(own["pod_reported_execution_id"], json!("a1b2c3"), "{own}");
    assert_eq!(own["code"], json!("Ok"), "{own}");
    assert!(own["request_bytes"].as_u64().unwrap() > 5, "{own}");
    assert!(own["duration_us"].is_u64(), "{own}");
    let refused = &audit[3];
    assert_eq!(refused["code"], json!("PermissionDenied"), "{refused}");
    assert_eq!(refused["project"], Value::Null, "{refused}");
    // Nothing of a request body: "seed", the execution name every request carried, is absent.
    for event in &audit {
        assert!(!event.to_string().contains("seed"), "{event}");
    }
    let (code, _) = c.agent.stop();
    assert_eq!(code, 0);
}

#[test]
fn an_agent_without_a_scope_refuses_scoped_calls_naming_the_missing_setting() {
    let mut c = cluster(&[(ENV_ADMIN_PROJECT, "")]);
    let seen = call(&c);
    assert_eq!(seen["code"], json!("PERMISSION_DENIED"), "{seen}");
    assert_contains(
        seen["message"].as_str().unwrap(),
        "the agent has no admin.project (FLYTE_AUTH_AGENT_ADMIN_PROJECT)",
    );
    assert!(c.admin.authenticated_calls().is_empty());
    let mut c = cluster(&[(ENV_ADMIN_DOMAIN, "")]);
    let seen = call(&c);
    assert_contains(
        seen["message"].as_str().unwrap(),
        "the agent has no admin.domain (FLYTE_AUTH_AGENT_ADMIN_DOMAIN)",
    );
    assert!(c.admin.authenticated_calls().is_empty());
}

#[test]
fn the_unrestricted_policy_forwards_other_projects() {
    let mut c = cluster(&[UNRESTRICTED]);
    let seen = c.task(&["scope"]);
    assert_eq!(
        seen["get_other_project"]["code"],
        json!("NOT_FOUND"),
        "{seen}"
    );
    assert!(methods(&c.admin.authenticated_calls()).contains(&"CreateWorkflowEvent".to_string()));
}

#[test]
fn a_request_over_max_request_bytes_is_resource_exhausted_before_admin() {
    let mut c = cluster(&[("FLYTE_AUTH_AGENT_ADMIN_MAX_REQUEST_BYTES", "16")]);
    let seen = call(&c);
    assert_eq!(seen["code"], json!("RESOURCE_EXHAUSTED"), "{seen}");
    assert_contains(
        seen["message"].as_str().unwrap(),
        "GetExecution: the request is larger than admin.max_request_bytes (16 bytes)",
    );
    assert!(c.admin.authenticated_calls().is_empty());
    assert_contains(
        &c.metrics(),
        r#"flyte_auth_agent_admin_policy_refusals_total{method="/flyteidl.service.AdminService/GetExecution",reason="too_large"} 1"#,
    );
}

#[test]
fn a_refused_call_is_replayed_from_what_the_proxy_kept_within_retry_buffer() {
    let retry_buffer = ("FLYTE_AUTH_AGENT_ADMIN_RETRY_BUFFER", "16");
    // Judged by the policy: the message is in memory anyway, so it is replayed whatever
    // admin.retry_buffer says.
    let mut c = cluster(&[retry_buffer]);
    call_ok(&c);
    c.admin.control(json!({"cmd": "revoke_seen"}));
    call_ok(&c);

    // Streamed (the unrestricted policy reads nothing): kept up to admin.retry_buffer only, so a
    // larger request is refused with the reason, and the renewed credential serves the next call.
    let mut c = cluster(&[UNRESTRICTED, retry_buffer]);
    call_ok(&c);
    c.admin.control(json!({"cmd": "revoke_seen"}));
    let seen = call(&c);
    assert_eq!(seen["code"], json!("PERMISSION_DENIED"), "{seen}");
    assert_contains(
        seen["message"].as_str().unwrap(),
        "this call's request was too large to replay (admin.retry_buffer is 16 bytes); retry the call",
    );
    call_ok(&c);

    // Within the default buffer a streamed request is replayed.
    let mut c = cluster(&[UNRESTRICTED]);
    call_ok(&c);
    c.admin.control(json!({"cmd": "revoke_seen"}));
    call_ok(&c);
    assert_eq!(c.idp.token_requests(), 2, "one renewal");
}
