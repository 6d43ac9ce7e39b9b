//! `flyte_auth_agent.with_tokens` run for real: a flytekit task declaring two token requests
//! against the real oidc-provider is serialized by flytekit (tests/python/fk_tokens_task.py
//! `live`), the pod built from its TaskTemplate is mutated by the injector, the agent binary is
//! started exactly as the patch says (args, env with `secretKeyRef`s resolved, `secret` volumes
//! written where they mount, directories under a temp dir as in coherence.rs), and the task's
//! own env alone is used to read both tokens with `flyte_auth_agent.token`.
//!
//! Simplified against propeller, as in fk_tokens.rs: the pod gets the TaskTemplate's container
//! (image, args, env) and its `metadata.metadata` labels and annotations; no `k8s_pod`, no
//! template-variable substitution. Against the kubelet, as in coherence.rs: the agent's
//! directories are configured under a temp dir, and its health port binds 127.0.0.1:0.

#[path = "../../agent/tests/common/mod.rs"]
mod common;
mod kubelet;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{python, workspace, AgentProcess, Idp, Pod};
use flyte_auth_injector::config::Config;
use flyte_auth_injector::review::Injector;
use kubelet::{agent_command, container_env, mutated, review_of};
use serde_json::{json, Value};

const READER_SECRET: &str = "reader-secret-fk-tokens";
const WRITER_SECRET: &str = "writer-secret-fk-tokens";

/// The Kubernetes Secrets of the namespace: name → data key → value.
fn secret_store() -> kubelet::Secrets {
    BTreeMap::from([
        (
            "reader-oauth",
            BTreeMap::from([("client_secret", READER_SECRET)]),
        ),
        (
            "writer-oauth",
            BTreeMap::from([("Secret_Value", WRITER_SECRET)]),
        ),
    ])
}

/// Runs tests/python/fk_tokens_task.py with the package of this checkout.
fn script(args: &[&str]) -> Value {
    let out = Command::new(python())
        .arg(workspace().join("tests/python/fk_tokens_task.py"))
        .args(args)
        .env("PYTHONPATH", workspace().join("agent/python/src"))
        .current_dir(workspace())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fk_tokens_task.py {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The pod propeller would build from the serialized task (simplified; see the module doc).
fn pod_of(task: &Value) -> Value {
    let mut env = vec![
        json!({"name": "FLYTE_INTERNAL_EXECUTION_PROJECT", "value": "flytesnacks"}),
        json!({"name": "FLYTE_INTERNAL_EXECUTION_DOMAIN", "value": "development"}),
    ];
    env.extend(task["container"]["env"].as_array().unwrap().iter().cloned());
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "fk-tokens-n0-0",
            "labels": task["labels"],
            "annotations": task["annotations"],
        },
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "task",
                "image": task["container"]["image"],
                "args": task["container"]["args"],
                "env": env,
            }],
        },
    })
}

#[test]
fn a_flytekit_task_with_tokens_reads_them_from_the_injected_agent() {
    let idp = Idp::with_clients(&[
        ("reader", READER_SECRET, "client_secret_basic"),
        ("writer", WRITER_SECRET, "client_secret_post"),
    ]);
    let dirs = Pod::new();
    for secret in [READER_SECRET, WRITER_SECRET] {
        dirs.sensitive.add(secret);
    }
    let config = format!(
        r#"
agent:
  tokens_dir: {tokens}
  socket_dir: {socket}
  secrets_dir: {secrets}
  log_format: text
  # The test's IdP runs on loopback; allowed here on purpose.
  allow_local_idp: true
"#,
        tokens = dirs.tokens_dir().display(),
        socket = dirs.socket().parent().unwrap().display(),
        secrets = dirs.secrets_dir().display(),
    );
    let injector = Injector::new(Config::parse(&config, "fk_tokens_live config").unwrap());

    let task = script(&["live", &idp.issuer, &idp.token_endpoint()]);
    let pod = mutated(&injector, &review_of(pod_of(&task)));
    let task_container = &pod["spec"]["containers"][0];

    let (args, env) = agent_command(&pod, &secret_store());
    let process = AgentProcess::start(
        &dirs,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &env,
    );
    process.wait_ready(Duration::from_secs(30));

    // The task: exactly its own env (nothing secret in it), reading each declared token.
    let task_env = container_env(task_container, &secret_store());
    for (k, v) in &task_env {
        for secret in [READER_SECRET, WRITER_SECRET] {
            assert!(!v.contains(secret), "task env {k} holds a client secret");
        }
    }
    let mut python_env = task_env.clone();
    python_env.push(("HOME".into(), dirs.dir.path().display().to_string()));
    python_env.push((
        "PYTHONPATH".into(),
        workspace().join("agent/python/src").display().to_string(),
    ));
    for (name, client) in [("reader", "reader"), ("writer", "writer")] {
        let out = Command::new(python())
            .args([
                "-c",
                "import sys, flyte_auth_agent; sys.stdout.write(flyte_auth_agent.token(sys.argv[1]))",
                name,
            ])
            .env_clear()
            .envs(python_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "token({name}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8(out.stdout).unwrap();
        dirs.sensitive.add(token.clone());
        let claims = idp.verify(&token, "flyteadmin");
        assert_eq!(claims["client_id"], client, "{name}");
    }
    // The extension travelled: the IdP saw writer's client_secret_post beside reader's basic.
    let stats = idp.stats();
    let methods: Vec<&str> = stats["auth_methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(
        methods.contains(&"client_secret_post") && methods.contains(&"client_secret_basic"),
        "{stats}"
    );
    drop(process);
}
