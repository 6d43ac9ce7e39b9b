//! What the API server and the kubelet do with a task pod, for the tests (and the bench) that run
//! a mutated pod's agent for real: the review the API server sends, the injector's patch applied,
//! and a container's env and mounts as the kubelet gives them, Secrets coming from an in-memory
//! store.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use flyte_auth_injector::review::{Injector, Outcome};
use serde_json::{json, Value};

/// The namespace's Kubernetes Secrets: name → data key → value.
pub type Secrets = BTreeMap<&'static str, BTreeMap<&'static str, &'static str>>;

/// The namespace's Secrets for the three clients the pod tests use: the Admin client's
/// (`flyte-secret-auth`), a token request's FILE secret (`reader-oauth`) and an ENV_VAR one with
/// a mixed-case key (`writer-oauth`), holding `propeller`, `reader` and `writer`.
pub fn three_clients(
    propeller: &'static str,
    reader: &'static str,
    writer: &'static str,
) -> Secrets {
    BTreeMap::from([
        (
            "flyte-secret-auth",
            BTreeMap::from([("client_secret", propeller)]),
        ),
        ("reader-oauth", BTreeMap::from([("client_secret", reader)])),
        ("writer-oauth", BTreeMap::from([("Secret_Value", writer)])),
    ])
}

/// The injector config for a pod run on this machine: the agent's directories (`tokens`, the
/// socket's `socket_dir`, `secrets`) under a test's temp dir, the test's IdP on loopback allowed on
/// purpose, and an Admin proxy to `admin` in client-secret mode with the Secret
/// `flyte-secret-auth` (client `flytepropeller`).
pub fn config_with_admin(tokens: &Path, socket_dir: &Path, secrets: &Path, admin: &str) -> String {
    format!(
        r#"
agent:
  tokens_dir: {tokens}
  socket_dir: {socket_dir}
  secrets_dir: {secrets}
  log_format: text
  allow_local_idp: true
admin:
  endpoint: {admin}
  insecure: true
  mode: client-secret
  client_id: flytepropeller
  client_secret: {{group: flyte-secret-auth, key: client_secret}}
"#,
        tokens = tokens.display(),
        socket_dir = socket_dir.display(),
        secrets = secrets.display(),
    )
}

/// The review the API server sends when propeller creates `pod` in `flytesnacks-development`.
pub fn review_of(pod: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "c0ffee00-0000-4000-8000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "flytesnacks-development",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:flyte:flytepropeller"},
            "object": pod,
        }
    })
}

/// The review's object with the injector's patch applied (the review must mutate it).
pub fn mutated(injector: &Injector, review: &Value) -> Value {
    let reviewed = injector.review(&serde_json::to_vec(review).unwrap());
    let answer: Value = serde_json::from_slice(&reviewed.body).unwrap();
    assert_eq!(reviewed.outcome, Outcome::Mutated, "{answer}");
    patched(review, &answer)
}

/// What the API server stores for `review`'s object given the webhook's `answer` (an
/// AdmissionReview, in-process or over HTTPS): the answer must be for this review and allow the
/// pod with a JSONPatch, which is applied.
pub fn patched(review: &Value, answer: &Value) -> Value {
    let response = &answer["response"];
    assert_eq!(response["uid"], review["request"]["uid"], "{answer}");
    assert_eq!(response["allowed"], true, "{answer}");
    assert_eq!(response["patchType"], "JSONPatch", "{answer}");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let mut pod = review["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    pod
}

/// What the kubelet gives a container: its env with `secretKeyRef`s resolved from `secrets`.
pub fn container_env(container: &Value, secrets: &Secrets) -> Vec<(String, String)> {
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
                    secrets
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

/// What the kubelet makes of a container's volume mounts: `emptyDir`s created (shared by path),
/// `secret` volumes' items written under their mount path from `secrets`.
pub fn materialize_mounts(pod: &Value, container: &Value, secrets: &Secrets) {
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
                let value = secrets[name][item["key"].as_str().unwrap()];
                let file = path.join(item["path"].as_str().unwrap());
                std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                std::fs::write(file, value).unwrap();
            }
        }
    }
}

/// What the kubelet runs for `pod`'s agent (its first init container): its mounts made, its args,
/// and its env with Secrets resolved, the health port moved to loopback port 0 so that tests on
/// one machine do not collide.
pub fn agent_command(pod: &Value, secrets: &Secrets) -> (Vec<String>, Vec<(String, String)>) {
    let agent = &pod["spec"]["initContainers"][0];
    materialize_mounts(pod, agent, secrets);
    let args = agent["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let mut env = container_env(agent, secrets);
    for (k, v) in env.iter_mut() {
        if k == "FLYTE_AUTH_AGENT_HEALTH_ADDR" {
            *v = "127.0.0.1:0".into();
        }
    }
    (args, env)
}
