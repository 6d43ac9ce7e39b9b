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

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use common::{python, workspace, AgentProcess, Idp, Pod};
use flyte_auth_injector::config::Config;
use flyte_auth_injector::review::{Injector, Outcome};
use serde_json::{json, Value};

const READER_SECRET: &str = "reader-secret-fk-tokens";
const WRITER_SECRET: &str = "writer-secret-fk-tokens";

/// The Kubernetes Secrets of the namespace: name → data key → value.
fn secret_store() -> BTreeMap<&'static str, BTreeMap<&'static str, &'static str>> {
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

fn mutated(injector: &Injector, pod: Value) -> Value {
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "c0ffee00-0000-4000-8000-000000000013",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "flytesnacks-development",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:flyte:flytepropeller"},
            "object": pod,
        }
    });
    let reviewed = injector.review(&serde_json::to_vec(&review).unwrap());
    let answer: Value = serde_json::from_slice(&reviewed.body).unwrap();
    assert_eq!(reviewed.outcome, Outcome::Mutated, "{answer}");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(answer["response"]["patch"].as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let mut pod = review["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    pod
}

/// What the kubelet gives a container: its env with `secretKeyRef`s resolved.
fn container_env(container: &Value) -> Vec<(String, String)> {
    let store = secret_store();
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let name = e["name"].as_str().unwrap().to_string();
            let value = match e.get("value") {
                Some(v) => v.as_str().unwrap().to_string(),
                None => {
                    let r = &e["valueFrom"]["secretKeyRef"];
                    let (secret, key) = (r["name"].as_str().unwrap(), r["key"].as_str().unwrap());
                    store
                        .get(secret)
                        .and_then(|d| d.get(key))
                        .unwrap_or_else(|| panic!("{name}: no key {key} in Secret {secret}"))
                        .to_string()
                }
            };
            (name, value)
        })
        .collect()
}

/// The kubelet's work on a container's mounts: `emptyDir`s created, `secret` items written.
fn materialize_mounts(pod: &Value, container: &Value) {
    let store = secret_store();
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let path = Path::new(mount["mountPath"].as_str().unwrap());
        let volume = pod["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("mount {mount} names no volume"));
        std::fs::create_dir_all(path).unwrap();
        if let Some(secret) = volume.get("secret") {
            let name = secret["secretName"].as_str().unwrap();
            for item in secret["items"].as_array().unwrap() {
                let value = store[name][item["key"].as_str().unwrap()];
                let file = path.join(item["path"].as_str().unwrap());
                std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                std::fs::write(file, value).unwrap();
            }
        }
    }
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
    let pod = mutated(&injector, pod_of(&task));
    let agent = &pod["spec"]["initContainers"][0];
    let task_container = &pod["spec"]["containers"][0];

    materialize_mounts(&pod, agent);
    let args: Vec<String> = agent["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let mut env = container_env(agent);
    for (k, v) in env.iter_mut() {
        if k == "FLYTE_AUTH_AGENT_HEALTH_ADDR" {
            *v = "127.0.0.1:0".into();
        }
    }
    let process = AgentProcess::start(
        &dirs,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &env,
    );
    process.wait_ready(Duration::from_secs(30));

    // The task: exactly its own env (nothing secret in it), reading each declared token.
    let task_env = container_env(task_container);
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
