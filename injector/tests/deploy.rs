//! `deploy/`: every kustomize layout renders with `kubectl kustomize` (offline), passes strict
//! schema validation (`tests/k8s/validate.py`: Kubernetes' own schemas through PyPI
//! `kubernetes-validate`, cert-manager's published CRD schemas for its kinds), and says what the
//! injector needs: a webhook that fails closed and only sees opted-in pods, a Service that reaches
//! the container's port, a config the injector accepts, locked-down pods, a serving certificate
//! for the Service's DNS names, and for `init-certs --kube` RBAC for exactly its one Secret and one
//! webhook configuration. Nothing here talks to a cluster.

mod manifests;

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use flyte_auth_injector::config::Config;
use manifests::*;
use serde::Deserialize;
use serde_json::{json, Value};

const OVERLAYS: [&str; 2] = ["cert-manager", "self-signed"];

fn check_overlay(name: &str, r: &Rendered, ns: &str) {
    check_install(r, Some(ns));
    match name {
        "cert-manager" => check_cert_manager(r, ns),
        "self-signed" => check_self_signed(r, ns),
        other => panic!("no checks for overlay {other}"),
    }
}

#[test]
fn base_renders_valid_and_namespace_free() {
    let r = Rendered::of(&repo().join("deploy/base"), "deploy/base");
    for doc in &r.docs {
        assert!(
            doc["metadata"].get("namespace").is_none(),
            "deploy/base must leave the namespace to overlays: {}/{} sets one",
            doc["kind"],
            doc["metadata"]["name"]
        );
    }
    check_install(&r, None);
    assert!(
        r.all("Role").is_empty() && r.all("ClusterRole").is_empty(),
        "the webhook needs no RBAC"
    );
}

#[test]
fn cert_manager_overlay() {
    let dir = repo().join("deploy/overlays/cert-manager");
    let r = Rendered::of(&dir, "deploy/overlays/cert-manager");
    check_overlay("cert-manager", &r, &overlay_namespace(&dir));
}

#[test]
fn self_signed_overlay() {
    let dir = repo().join("deploy/overlays/self-signed");
    let r = Rendered::of(&dir, "deploy/overlays/self-signed");
    check_overlay("self-signed", &r, &overlay_namespace(&dir));
}

/// `path` relative to `from` (both absolute): kustomize refuses absolute resource paths.
fn relative(path: &Path, from: &Path) -> PathBuf {
    let path: Vec<Component<'_>> = path.components().collect();
    let from: Vec<Component<'_>> = from.components().collect();
    let common = path.iter().zip(&from).take_while(|(a, b)| a == b).count();
    let mut out: PathBuf = from[common..].iter().map(|_| "..").collect();
    out.extend(&path[common..]);
    out
}

/// What a platform engineer does to install elsewhere: change `namespace:` in a copy of the
/// overlay. Every namespace-carrying field (the webhook's Service reference, its namespace
/// exclusion, the RBAC subjects, cert-manager's CA annotation and DNS names) must follow.
#[test]
fn overlays_follow_a_changed_namespace() {
    const NS: &str = "tasks-auth";
    let root = repo();
    for name in OVERLAYS {
        let src = root.join("deploy/overlays").join(name);
        let dst = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("deploy-namespace")
            .join(name);
        let _ = std::fs::remove_dir_all(&dst);
        std::fs::create_dir_all(&dst).expect("temp overlay dir");
        let dst = dst.canonicalize().expect("temp overlay dir");
        let base = relative(&root.join("deploy/base"), &dst);
        for entry in std::fs::read_dir(&src).expect("overlay dir") {
            let path = entry.expect("dir entry").path();
            let mut text = std::fs::read_to_string(&path).expect("overlay file");
            if path.file_name().is_some_and(|f| f == "kustomization.yaml") {
                let ns_line = format!("\nnamespace: {}\n", overlay_namespace(&src));
                assert!(text.contains(&ns_line) && text.contains("../../base"));
                text = text
                    .replace(&ns_line, &format!("\nnamespace: {NS}\n"))
                    .replace("../../base", base.to_str().expect("UTF-8 path"));
            }
            std::fs::write(dst.join(path.file_name().expect("file name")), text)
                .expect("write temp overlay");
        }
        let r = Rendered::of(&dst, &format!("{name} in namespace {NS}"));
        check_overlay(name, &r, NS);
    }
}

/// The validator is strict: an unknown field, a wrong type, an unknown field in a cert-manager
/// resource and a kind without a schema are each reported, naming the object and the field.
#[test]
fn validator_rejects_what_the_api_server_would() {
    let valid = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: nginx}]
"#;
    validate(valid).unwrap_or_else(|report| panic!("a valid Deployment was refused:\n{report}"));

    let cases = [
        (
            valid.replace("image: nginx", "image: nginx, imagePullPolcy: Always"),
            "Deployment/web: spec.template.spec.containers[0].imagePullPolcy: unknown field",
        ),
        (
            valid.replace(
                "metadata: {name: web}",
                "metadata: {name: web}\nreplicas: 2",
            ),
            "Deployment/web: replicas: unknown field",
        ),
        (
            valid.replace("spec:\n  selector", "spec:\n  replicas: two\n  selector"),
            "Deployment/web: spec.replicas: 'two' is not of type 'integer'",
        ),
        (
            "apiVersion: cert-manager.io/v1\nkind: Certificate\nmetadata: {name: c}\n\
             spec: {secretName: s, issuerRef: {name: i}, dnsName: [a.b.svc]}\n"
                .to_string(),
            "Certificate/c: spec.dnsName: unknown field",
        ),
        (
            "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n".to_string(),
            "Widget/w: kind: no schema for Widget (example.com/v1)",
        ),
        ("kind: [Pod\n".to_string(), "ERROR stdin: not YAML:"),
    ];
    for (doc, expected) in cases {
        match validate(&doc) {
            Ok(report) => panic!("validate.py accepted an invalid document:\n{doc}\n{report}"),
            Err(report) => assert!(
                report.contains(expected),
                "expected {expected:?} in the report:\n{report}"
            ),
        }
    }
}

/// The example task pods validate, opt in with the label the shipped config selects, and carry
/// the same token request in both annotation forms, as the injector itself reads them.
#[test]
fn example_task_pods_opt_in_and_decode() {
    let root = repo();
    let yaml = std::fs::read_to_string(root.join("deploy/examples/task-pod.yaml"))
        .expect("deploy/examples/task-pod.yaml");
    if let Err(report) = validate(&yaml) {
        panic!("deploy/examples/task-pod.yaml is not valid:\n{report}");
    }
    let config = Config::parse(
        &std::fs::read_to_string(root.join("deploy/base/config.yaml")).expect("config.yaml"),
        "deploy/base/config.yaml",
    )
    .unwrap_or_else(|e| panic!("deploy/base/config.yaml: {e}"));
    let pods: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&yaml)
        .map(|doc| Value::deserialize(doc).expect("YAML"))
        .collect();
    assert_eq!(pods.len(), 2, "a propeller-form pod and a JSON-form pod");
    let mut decoded = Vec::new();
    for pod in &pods {
        let name = str_at(pod, "/metadata/name");
        assert_eq!(
            pod["metadata"]["labels"][&config.opt_in.label], config.opt_in.value,
            "{name}: opts in with the configured label"
        );
        let annotations: BTreeMap<String, String> =
            serde_json::from_value(at(pod, "/metadata/annotations").clone()).expect("annotations");
        let requests = flyte_auth_injector::requests::from_annotations(
            &annotations,
            &flyte_auth_injector::requests::Policy::new(&config),
        )
        .unwrap_or_else(|problems| panic!("{name}: {}", problems.join("\n")));
        assert_eq!(requests.requests.len(), 1, "{name}: one token request");
        // The agent's view of the request; `type` CLIENT_CREDENTIALS is proto3's default, which
        // text format leaves out and the JSON example spells out.
        let mut json = requests.json;
        for request in &mut json {
            let object = request.as_object_mut().expect("a request object");
            if object.get("type") == Some(&json!("CLIENT_CREDENTIALS")) {
                object.remove("type");
            }
        }
        decoded.push(json);
        assert_scope_from_namespace(&config, pod, name);
    }
    assert!(
        pods[0]["metadata"]["annotations"]
            .as_object()
            .expect("annotations")
            .contains_key("flyte.tokens/t0"),
        "the first pod uses propeller's form"
    );
    assert_eq!(decoded[0], decoded[1], "both forms carry the same request");
    assert_eq!(decoded[0][0]["name"], "my-api");
}

/// The example pod, reviewed in its namespace with the shipped config, is injected and its
/// agent acts in the project and domain the namespace names (which its labels agree with).
fn assert_scope_from_namespace(config: &Config, pod: &Value, name: &str) {
    use base64::Engine as _;
    use flyte_auth_agent::env::{ENV_ADMIN_DOMAIN, ENV_ADMIN_PROJECT};
    use flyte_auth_injector::review::{Injector, Outcome};

    let namespace = str_at(pod, "/metadata/namespace");
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "5c0be000-0000-4000-8000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:flyte:flytepropeller"},
            "object": pod,
        }
    });
    let reviewed = Injector::new(config.clone()).review(&serde_json::to_vec(&review).unwrap());
    let answer: Value = serde_json::from_slice(&reviewed.body).unwrap();
    assert_eq!(reviewed.outcome, Outcome::Mutated, "{name}: {answer}");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(str_at(&answer, "/response/patch"))
        .unwrap();
    let patch: Value = serde_json::from_slice(&patch).unwrap();
    let agent_env = patch
        .as_array()
        .unwrap()
        .iter()
        .find(|op| op["path"] == "/spec/initContainers")
        .map(|op| op["value"][0]["env"].clone())
        .unwrap_or_else(|| panic!("{name}: no agent container in the patch"));
    let value = |var: &str| {
        agent_env
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == var)
            .map(|e| e["value"].clone())
    };
    let (labels, ns) = (&pod["metadata"]["labels"], namespace.to_string());
    assert_eq!(
        value(ENV_ADMIN_PROJECT),
        Some(labels["project"].clone()),
        "{name} in {ns}"
    );
    assert_eq!(
        value(ENV_ADMIN_DOMAIN),
        Some(labels["domain"].clone()),
        "{name} in {ns}"
    );
}

/// The shipped config passes the real binary's `check`, and the init-certs Job's flags are ones
/// the real binary accepts (run offline: `--kube` swapped for a temporary `--cert-dir`).
#[test]
fn shipped_config_and_job_flags_work_with_the_binary() {
    let root = repo();
    assert_binary_accepts_config(
        &root.join("deploy/base/config.yaml"),
        "deploy/base/config.yaml",
    );
    let r = Rendered::of(
        &root.join("deploy/overlays/self-signed"),
        "deploy/overlays/self-signed",
    );
    assert_binary_runs_init_certs_job(r.one("Job"), "deploy-init-certs");
}
