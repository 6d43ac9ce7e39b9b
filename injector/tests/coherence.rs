//! The mutated pod spec, actually run: the injector mutates a pod, and this test does what the
//! kubelet would with the agent container (its args, its env with `secretKeyRef`s resolved from a
//! Secret store, its `secret` volumes' items written where they mount, its `emptyDir`s created)
//! and starts the real agent binary that way, against the real oidc-provider and the FlyteAdmin
//! stand-in. Then the task container's env alone (what the injector gave it) is used the way a
//! task uses it: token files under `FLYTE_TOKENS_PATH_PREFIX`, the socket in
//! `FLYTE_AUTH_AGENT_SOCKET`, flytekit's `FlyteRemote(Config.auto())` over `FLYTE_PLATFORM_URL`.
//!
//! Two departures from a cluster, both forced by running on one machine: the agent's directories
//! are configured under a temp dir (the injector config's `agent.*_dir`), and its health port
//! binds 127.0.0.1:0 instead of the `0.0.0.0:<port>` the kubelet probes (only loopback here).

#[path = "../../agent/tests/common/mod.rs"]
mod common;
mod kubelet;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{python, sget, workspace, Admin, AgentProcess, Idp, Pod};
use flyte_auth_agent::env::{ENV_ADMIN_DOMAIN, ENV_ADMIN_ORG, ENV_ADMIN_PROJECT};
use flyte_auth_injector::config::Config;
use flyte_auth_injector::review::Injector;
use flyte_auth_proto::flyteidl::core::{
    o_auth2_token_request, secret::MountType, OAuth2Client, OAuth2TokenRequest, Secret,
};
use kubelet::{agent_command, container_env, mutated, review_of};
use serde_json::{json, Value};

const PROPELLER_SECRET: &str = "propeller-secret-coherence";
const READER_SECRET: &str = "reader-secret-coherence";
const WRITER_SECRET: &str = "writer-secret-coherence";

/// The Kubernetes Secrets of the namespace: name → data key → value.
fn secret_store() -> kubelet::Secrets {
    kubelet::three_clients(PROPELLER_SECRET, READER_SECRET, WRITER_SECRET)
}

#[test]
fn the_mutated_pod_runs_the_agent_and_the_task_uses_it() {
    let idp = Idp::with_clients(&[
        ("flytepropeller", PROPELLER_SECRET, "client_secret_basic"),
        ("reader", READER_SECRET, "client_secret_basic"),
        ("writer", WRITER_SECRET, "client_secret_post"),
    ]);
    let mut admin = Admin::start(json!({ "issuer": idp.issuer }));
    let dirs = Pod::new();
    for secret in [PROPELLER_SECRET, READER_SECRET, WRITER_SECRET] {
        dirs.sensitive.add(secret);
    }
    let config = kubelet::config_with_admin(
        &dirs.tokens_dir(),
        dirs.socket().parent().unwrap(),
        &dirs.secrets_dir(),
        &admin.address(),
    );
    let injector = Injector::new(Config::parse(&config, "coherence config").unwrap());

    // One request as propeller would annotate it (a FILE secret), one in the JSON annotation
    // (an ENV_VAR secret with a mixed-case key, client_secret_post).
    let reader = OAuth2TokenRequest {
        name: "reader".into(),
        r#type: o_auth2_token_request::Type::ClientCredentials as i32,
        client: Some(OAuth2Client {
            client_id: "reader".into(),
            client_secret: Some(Secret {
                group: "reader-oauth".into(),
                key: "client_secret".into(),
                mount_requirement: MountType::File as i32,
                ..Default::default()
            }),
        }),
        idp_discovery_endpoint: idp.issuer.clone(),
        ..Default::default()
    };
    let writer = json!([{
        "name": "writer",
        "client": {"clientId": "writer", "clientSecret": {"group": "writer-oauth", "key": "Secret_Value", "mountRequirement": "ENV_VAR"}},
        "tokenEndpoint": idp.token_endpoint(),
        "clientAuthMethod": "client_secret_post",
    }]);
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "coherence-n0-0",
            "labels": {"flyte.org/auth-agent": "enabled"},
            "annotations": {
                "flyte.tokens/t0": flyte_auth_proto::annotation::encode(&reader),
                "flyte.org/token-requests": writer.to_string(),
            },
        },
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "task", "image": "flytekit", "env": [
                {"name": "FLYTE_INTERNAL_EXECUTION_PROJECT", "value": "flytesnacks"},
                {"name": "FLYTE_INTERNAL_EXECUTION_DOMAIN", "value": "development"},
            ]}],
        },
    });
    let pod = mutated(&injector, &review_of(pod));
    let agent = &pod["spec"]["initContainers"][0];
    let task = &pod["spec"]["containers"][0];
    // The agent acts as the execution of the review's namespace, flytesnacks-development.
    let agent_env = container_env(agent, &secret_store());
    let scope: BTreeMap<&str, &str> = agent_env
        .iter()
        .filter(|(k, _)| [ENV_ADMIN_PROJECT, ENV_ADMIN_DOMAIN, ENV_ADMIN_ORG].contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        scope,
        BTreeMap::from([
            (ENV_ADMIN_PROJECT, "flytesnacks"),
            (ENV_ADMIN_DOMAIN, "development")
        ])
    );

    // The sidecar, as the kubelet would start it.
    assert!(container_env(agent, &secret_store())
        .contains(&("FLYTE_AUTH_AGENT_HEALTH_ADDR".into(), "0.0.0.0:9911".into())));
    let (args, env) = agent_command(&pod, &secret_store());
    assert_eq!(args, ["serve"]);
    let process = AgentProcess::start(
        &dirs,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &env,
    );
    // The startup probe: the task starts once /readyz says every token is there.
    let probe = &agent["startupProbe"]["httpGet"];
    process.wait_ready(Duration::from_secs(30));
    let (status, _) = process.health_get(probe["path"].as_str().unwrap());
    assert_eq!(status, 200);

    // The task: only its own env, which holds nothing secret.
    let task_env = container_env(task, &secret_store());
    for (k, v) in &task_env {
        for secret in [PROPELLER_SECRET, READER_SECRET, WRITER_SECRET] {
            assert!(!v.contains(secret), "task env {k} holds a client secret");
        }
    }
    let get = |name: &str| -> String {
        task_env
            .iter()
            .find(|(k, _)| k == name)
            .unwrap_or_else(|| panic!("task env has no {name}"))
            .1
            .clone()
    };
    let prefix = get("FLYTE_TOKENS_PATH_PREFIX");
    let tokens_mount = task["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == prefix.as_str())
        .expect("the task mounts the tokens directory at FLYTE_TOKENS_PATH_PREFIX");
    assert_eq!(tokens_mount["readOnly"], true);
    for (name, client) in [("reader", "reader"), ("writer", "writer")] {
        let token = std::fs::read_to_string(Path::new(&prefix).join(name)).unwrap();
        dirs.sensitive.add(token.clone());
        let claims = idp.verify(&token, "flyteadmin");
        assert_eq!(claims["client_id"], client, "{name}");
    }
    let socket = get("FLYTE_AUTH_AGENT_SOCKET");
    let (status, body) = sget(Path::new(&socket), "/v1/tokens/writer", "text/plain");
    assert_eq!(status, 200);
    assert_eq!(
        body,
        std::fs::read_to_string(Path::new(&prefix).join("writer")).unwrap()
    );

    // Real flytekit and the agent's Python package, with exactly the task's env.
    let mut python_env = task_env.clone();
    python_env.push(("HOME".into(), dirs.dir.path().display().to_string()));
    let run = |args: &[&str]| -> Value {
        let out = Command::new(python())
            .arg(workspace().join("tests/python/admin_scenarios.py"))
            .args(args)
            .env_clear()
            .envs(python_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{args:?}:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
    };
    let token = run(&["token", "reader"]);
    assert_eq!(
        token["token"].as_str().unwrap(),
        std::fs::read_to_string(Path::new(&prefix).join("reader")).unwrap()
    );
    assert_eq!(
        get("FLYTE_PLATFORM_URL"),
        format!("unix://{socket}"),
        "flytekit's endpoint is the agent's socket"
    );
    let remote = run(&["remote"]);
    assert_eq!(remote["execution"], "seed", "{remote}");

    // flytekit's first Admin call with exactly the task's env builds no interactive
    // authenticator and loads no keyring backend; the same process without the injector's auth
    // env (the control) does both, so this is what the auth env changes.
    let first_call = |env: &[(String, String)]| -> Value {
        let out = Command::new(python())
            .arg(workspace().join("tests/python/flytekit_auth_mode.py"))
            .arg("first-call")
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
    };
    let seen = first_call(&python_env);
    assert_eq!(seen["auth_mode"], "external_process", "{seen}");
    assert_eq!(
        seen["authenticators"],
        json!(["CommandAuthenticator"]),
        "{seen}"
    );
    assert_eq!(seen["interactive_built"], json!([]), "{seen}");
    assert_eq!(seen["keyring_backend"], Value::Null, "{seen}");
    // The cost of a mode every image has: flytekit asks Admin's AuthMetadataService first
    // (fk_tokens_live.rs shows the package's mode, which does not).
    assert_eq!(seen["client_config_asked"], 1, "{seen}");
    assert!(
        seen["projects"].as_array().is_some_and(|p| !p.is_empty()),
        "{seen}"
    );
    // If flytekit ever runs the command (after UNAUTHENTICATED or UNKNOWN), it fails with a
    // message saying where to look, yields no credentials, and still loads no keyring.
    let refresh = &seen["refresh"];
    assert_eq!(refresh["error"], "AuthenticationError", "{seen}");
    assert!(
        refresh["message"]
            .as_str()
            .is_some_and(|m| m.contains("a task pod does not log in itself")),
        "{seen}"
    );
    assert_eq!(refresh["credentials"], false, "{seen}");
    assert_eq!(seen["keyring_backend_after_refresh"], Value::Null, "{seen}");
    let without_auth_env: Vec<(String, String)> = python_env
        .iter()
        .filter(|(k, _)| !k.starts_with("FLYTE_CREDENTIALS_"))
        .cloned()
        .collect();
    assert_eq!(without_auth_env.len() + 2, python_env.len());
    let control = first_call(&without_auth_env);
    assert_eq!(control["auth_mode"], "standard", "{control}");
    assert_eq!(
        control["interactive_built"],
        json!(["PKCEAuthenticator"]),
        "{control}"
    );
    assert!(control["keyring_backend"].is_string(), "{control}");

    // The scope the injector read from the namespace is the one the agent's proxy enforces: the
    // task's own calls reach Admin, another project's or domain's do not.
    let before = admin.authenticated_calls().len();
    let seen = run(&["scope"]);
    for own in [
        "get_own",
        "list_own",
        "create_own",
        "list_projects",
        "version",
    ] {
        assert_eq!(seen[own]["code"], "OK", "{own}: {seen}");
    }
    for foreign in [
        "get_other_project",
        "get_other_domain",
        "list_other_project",
        "create_other_domain",
        "create_foreign_launch_plan",
        "workflow_event",
        "register_project",
        "forged_nested",
    ] {
        assert_eq!(
            seen[foreign]["code"], "PERMISSION_DENIED",
            "{foreign}: {seen}"
        );
    }
    let reached: Vec<String> = admin.authenticated_calls()[before..]
        .iter()
        .map(|c| {
            let method = c["method"].as_str().unwrap_or_default();
            method.rsplit('/').next().unwrap_or(method).to_string()
        })
        .collect();
    assert_eq!(
        reached,
        [
            "GetExecution",
            "ListExecutions",
            "CreateExecution",
            "ListProjects",
            "GetVersion"
        ],
        "Admin saw only the task's own calls"
    );
    drop(process);
}
