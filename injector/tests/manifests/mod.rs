//! What every install of the injector must say, whichever tool renders it (kustomize's
//! `deploy/` in deploy.rs, the Helm chart in helm.rs): the rendered objects pass strict schema
//! validation (`tests/k8s/validate.py`), and the checks below hold. Each test binary uses part of
//! this module.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use flyte_auth_injector::config::Config;
use serde::Deserialize;
use serde_json::{json, Value};

/// The Kubernetes version manifests are validated against: the oldest we support (native
/// sidecars are on by default from 1.29; 1.30 is the floor the injector's k8s-openapi targets).
pub const KUBERNETES_VERSION: &str = "1.30.0";
pub const WEBHOOK: &str = "flyte-auth-injector";
pub const TLS_SECRET: &str = "flyte-auth-injector-tls";

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the repository root exists")
}

/// `kubectl kustomize DIR`.
pub fn kustomize(dir: &Path) -> String {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run kubectl (needed for `kubectl kustomize`): {e}"));
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("kustomize prints UTF-8")
}

/// The test venv's Python (tests/k8s's validator and renderer run in it).
pub fn python() -> PathBuf {
    let python = repo().join("tests/.venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run tests/run once (it creates the venv from tests/requirements.txt)",
        python.display()
    );
    python
}

/// Runs `tests/k8s/validate.py` on `yaml`: `Ok(report)` when valid, `Err(report)` when the
/// validator found problems (exit 1). Anything else (no venv, bad usage) panics.
pub fn validate(yaml: &str) -> Result<String, String> {
    let root = repo();
    let mut child = Command::new(python())
        .arg(root.join("tests/k8s/validate.py"))
        .args(["--kubernetes-version", KUBERNETES_VERSION, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python().display()));
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(yaml.as_bytes())
        .expect("validate.py reads stdin");
    let out = child.wait_with_output().expect("validate.py runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => Ok(report),
        Some(1) => Err(report),
        _ => panic!(
            "tests/k8s/validate.py could not run ({}); if a module is missing, run tests/run to \
             update tests/.venv from tests/requirements.txt:\n{report}",
            out.status
        ),
    }
}

/// The rendered documents of one layout.
pub struct Rendered {
    pub label: String,
    pub docs: Vec<Value>,
}

impl Rendered {
    /// Renders `dir` with kustomize and validates the output strictly; any schema problem fails
    /// the test here.
    pub fn of(dir: &Path, label: &str) -> Rendered {
        Rendered::from_yaml(&kustomize(dir), label)
    }

    /// The documents of rendered `yaml`, validated strictly.
    pub fn from_yaml(yaml: &str, label: &str) -> Rendered {
        if let Err(report) = validate(yaml) {
            panic!("{label}: the rendered manifests are not valid Kubernetes {KUBERNETES_VERSION}:\n{report}");
        }
        let docs = serde_yaml_ng::Deserializer::from_str(yaml)
            .map(|doc| Value::deserialize(doc).expect("rendered manifests are YAML"))
            .filter(|v| !v.is_null())
            .collect();
        Rendered {
            label: label.to_string(),
            docs,
        }
    }

    pub fn all(&self, kind: &str) -> Vec<&Value> {
        self.docs.iter().filter(|d| d["kind"] == kind).collect()
    }

    pub fn one(&self, kind: &str) -> &Value {
        let found = self.all(kind);
        assert_eq!(
            found.len(),
            1,
            "{}: expected one {kind}, found {}",
            self.label,
            found.len()
        );
        found[0]
    }

    pub fn named(&self, kind: &str, name: &str) -> &Value {
        self.docs
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{}: no {kind}/{name} in the output", self.label))
    }
}

/// `v` at JSON pointer `path`, or a panic naming the object and the path.
pub fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    v.pointer(path).unwrap_or_else(|| {
        panic!(
            "{}/{} has no {path}",
            v["kind"].as_str().unwrap_or("?"),
            v["metadata"]["name"].as_str().unwrap_or("?")
        )
    })
}

pub fn str_at<'a>(v: &'a Value, path: &str) -> &'a str {
    at(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string: {}", at(v, path)))
}

pub fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap_or_else(|| panic!("not a string: {s}")))
        .collect()
}

/// Whether every label of `selector` (a `matchLabels` map) is on `labels`.
pub fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_object().expect("a label map");
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The container port a Service `targetPort` (number or name) resolves to.
pub fn resolve_port(container: &Value, target: &Value) -> i64 {
    if let Some(n) = target.as_i64() {
        return n;
    }
    let name = target.as_str().expect("targetPort is a number or a name");
    at(container, "/ports")
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_i64())
        .unwrap_or_else(|| panic!("no container port named {name:?}"))
}

/// A pod spec and one of its containers are locked down the way the issue asks.
pub fn assert_hardened(what: &str, pod: &Value, container: &Value) {
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true, "{what}: pod runAsNonRoot");
    assert_eq!(psc["runAsUser"], 65532, "{what}: pod runAsUser");
    assert_eq!(
        psc["seccompProfile"]["type"], "RuntimeDefault",
        "{what}: pod seccomp"
    );
    let csc = &container["securityContext"];
    assert_eq!(csc["runAsNonRoot"], true, "{what}: container runAsNonRoot");
    assert_eq!(csc["runAsUser"], 65532, "{what}: container runAsUser");
    assert_eq!(
        csc["readOnlyRootFilesystem"], true,
        "{what}: read-only root filesystem"
    );
    assert_eq!(
        csc["allowPrivilegeEscalation"], false,
        "{what}: allowPrivilegeEscalation"
    );
    assert_eq!(
        csc["capabilities"]["drop"],
        json!(["ALL"]),
        "{what}: capabilities"
    );
    assert_eq!(
        csc["seccompProfile"]["type"], "RuntimeDefault",
        "{what}: container seccomp"
    );
    assert!(
        container["resources"]["requests"]["memory"].is_string()
            && container["resources"]["limits"]["memory"].is_string(),
        "{what}: memory request and limit"
    );
}

/// The checks every layout must pass; `namespace` is the overlay's (`None` for the bare base).
pub fn check_install(r: &Rendered, namespace: Option<&str>) {
    let label = &r.label;
    // Every object says what it belongs to, so `kubectl get -l` finds the whole install.
    for doc in &r.docs {
        assert_eq!(
            doc["metadata"]["labels"]["app.kubernetes.io/part-of"], "flyte-auth-agent",
            "{label}: {}/{} lacks app.kubernetes.io/part-of=flyte-auth-agent",
            doc["kind"], doc["metadata"]["name"]
        );
    }
    if let Some(ns) = namespace {
        for doc in &r.docs {
            let cluster_scoped = [
                "MutatingWebhookConfiguration",
                "ClusterRole",
                "ClusterRoleBinding",
            ]
            .contains(&doc["kind"].as_str().unwrap_or_default());
            if !cluster_scoped {
                assert_eq!(
                    doc["metadata"]["namespace"], ns,
                    "{label}: {}/{} is not in the overlay's namespace",
                    doc["kind"], doc["metadata"]["name"]
                );
            }
        }
    }

    // The config the Deployment mounts parses with the injector's own parser.
    let deployment = r.named("Deployment", WEBHOOK);
    let pod = at(deployment, "/spec/template/spec");
    let pod_labels = at(deployment, "/spec/template/metadata/labels");
    let containers = at(pod, "/containers").as_array().expect("containers");
    assert_eq!(containers.len(), 1, "{label}: one container");
    let container = &containers[0];
    let volume = |name: &str| -> &Value {
        at(pod, "/volumes")
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("{label}: no volume {name}"))
    };
    let mount_of = |volume_name: &str| -> &str {
        at(container, "/volumeMounts")
            .as_array()
            .expect("volumeMounts")
            .iter()
            .find(|m| m["name"] == volume_name)
            .and_then(|m| m["mountPath"].as_str())
            .unwrap_or_else(|| panic!("{label}: volume {volume_name} is not mounted"))
    };
    let config_map_name = str_at(volume("config"), "/configMap/name");
    let config_map = r.named("ConfigMap", config_map_name);
    let config_text = str_at(config_map, "/data/config.yaml");
    let config = Config::parse(config_text, "configmap").unwrap_or_else(|e| {
        panic!("{label}: the ConfigMap's config.yaml is rejected by Config::parse:\n{e}")
    });
    let config_path = format!("{}/config.yaml", mount_of("config"));
    assert!(
        str_at(container, "/command/0").ends_with("/flyte-auth-injector"),
        "{label}: the container runs the injector"
    );
    assert_eq!(
        strings(at(container, "/args")),
        ["serve", "--config", config_path.as_str()],
        "{label}: serve with the mounted config"
    );

    // Certificates: the Secret the overlays fill, where the config reads it.
    assert_eq!(str_at(volume("certs"), "/secret/secretName"), TLS_SECRET);
    let certs_dir = Path::new(mount_of("certs"));
    assert_eq!(config.server.cert_file, certs_dir.join("tls.crt"));
    assert_eq!(config.server.key_file, certs_dir.join("tls.key"));

    // Deployment shape.
    assert_eq!(deployment["spec"]["replicas"], 2, "{label}: replicas");
    assert!(
        selects(at(deployment, "/spec/selector/matchLabels"), pod_labels),
        "{label}: the Deployment selects its pods"
    );
    assert_hardened(&format!("{label}: Deployment"), pod, container);
    assert_eq!(
        pod["automountServiceAccountToken"], false,
        "{label}: the webhook makes no API calls, so no token"
    );
    let term = at(
        pod,
        "/affinity/podAntiAffinity/preferredDuringSchedulingIgnoredDuringExecution/0/podAffinityTerm",
    );
    assert_eq!(term["topologyKey"], "kubernetes.io/hostname");
    assert!(
        selects(at(term, "/labelSelector/matchLabels"), pod_labels),
        "{label}: anti-affinity against its own pods"
    );
    let listen_port = i64::from(config.server.listen.port());
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        let get = at(container, &format!("/{probe}/httpGet"));
        assert_eq!(get["scheme"], "HTTPS", "{label}: {probe} scheme");
        assert_eq!(get["path"], path, "{label}: {probe} path");
        assert_eq!(
            resolve_port(container, &get["port"]),
            listen_port,
            "{label}: {probe} port"
        );
    }

    // The ServiceAccount exists, has no token and no RBAC.
    let sa_name = str_at(pod, "/serviceAccountName");
    let sa = r.named("ServiceAccount", sa_name);
    assert_eq!(sa["automountServiceAccountToken"], false);
    for binding in r
        .all("RoleBinding")
        .into_iter()
        .chain(r.all("ClusterRoleBinding"))
    {
        assert!(
            !binding["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["name"] == sa_name),
            "{label}: the webhook's ServiceAccount must not be bound to any role"
        );
    }

    // The Service reaches the container's HTTPS port on 443.
    let service = r.named("Service", WEBHOOK);
    assert!(
        selects(at(service, "/spec/selector"), pod_labels),
        "{label}: the Service selects the injector pods"
    );
    let ports = at(service, "/spec/ports").as_array().expect("ports");
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0]["port"], 443);
    assert_eq!(
        resolve_port(container, &ports[0]["targetPort"]),
        listen_port,
        "{label}: the Service's targetPort is the port the injector listens on"
    );

    // Availability and network.
    let pdb = r.one("PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert!(selects(at(pdb, "/spec/selector/matchLabels"), pod_labels));
    let policy = r.one("NetworkPolicy");
    assert!(selects(
        at(policy, "/spec/podSelector/matchLabels"),
        pod_labels
    ));
    assert_eq!(
        at(policy, "/spec/policyTypes"),
        &json!(["Ingress", "Egress"])
    );
    assert_eq!(
        at(policy, "/spec/egress"),
        &json!([]),
        "{label}: no egress at all"
    );
    assert_eq!(
        at(policy, "/spec/ingress"),
        &json!([{"ports": [{"port": listen_port, "protocol": "TCP"}]}]),
        "{label}: ingress on the webhook port only"
    );

    // The webhook: fails closed, only opted-in pods, reaches the Service.
    let webhook_config = r.named("MutatingWebhookConfiguration", WEBHOOK);
    let webhooks = at(webhook_config, "/webhooks")
        .as_array()
        .expect("webhooks");
    assert_eq!(webhooks.len(), 1, "{label}: one webhook");
    let hook = &webhooks[0];
    assert_eq!(hook["failurePolicy"], "Fail", "{label}: failurePolicy");
    assert_eq!(hook["sideEffects"], "None", "{label}: sideEffects");
    assert_eq!(hook["admissionReviewVersions"], json!(["v1"]));
    assert_eq!(hook["reinvocationPolicy"], "IfNeeded");
    assert_eq!(hook["matchPolicy"], "Equivalent");
    let timeout = hook["timeoutSeconds"].as_i64().expect("timeoutSeconds set");
    assert!(
        (5..=15).contains(&timeout),
        "{label}: timeoutSeconds {timeout}"
    );
    assert_eq!(
        hook["rules"],
        json!([{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                "resources": ["pods"], "scope": "Namespaced"}])
    );
    assert_eq!(
        hook["objectSelector"],
        json!({"matchLabels": {config.opt_in.label.clone(): config.opt_in.value.clone()}}),
        "{label}: the objectSelector is the config's opt-in label"
    );
    let svc = at(hook, "/clientConfig/service");
    assert_eq!(svc["name"], service["metadata"]["name"]);
    assert_eq!(svc["port"], ports[0]["port"]);
    assert_eq!(svc["path"], "/mutate");
    let excluded = at(hook, "/namespaceSelector/matchExpressions")
        .as_array()
        .expect("matchExpressions")
        .iter()
        .find(|e| e["key"] == "kubernetes.io/metadata.name" && e["operator"] == "NotIn")
        .map(|e| strings(&e["values"]))
        .unwrap_or_else(|| panic!("{label}: no namespace exclusion"));
    assert!(excluded.contains(&"kube-system"));
    if let Some(ns) = namespace {
        assert_eq!(
            svc["namespace"], ns,
            "{label}: the webhook calls the Service in the overlay's namespace"
        );
        assert!(
            excluded.contains(&ns),
            "{label}: the webhook skips its own namespace {ns}: {excluded:?}"
        );
    }
}

/// cert-manager: a CA chain whose serving certificate covers the Service and is the Secret the
/// Deployment mounts, and the CA injected from exactly that Certificate.
pub fn check_cert_manager(r: &Rendered, ns: &str) {
    let label = &r.label;
    let serving: Vec<&Value> = r
        .all("Certificate")
        .into_iter()
        .filter(|c| c["spec"]["secretName"] == TLS_SECRET)
        .collect();
    assert_eq!(
        serving.len(),
        1,
        "{label}: one Certificate for Secret {TLS_SECRET}"
    );
    let serving = serving[0];
    assert_eq!(serving["metadata"]["namespace"], ns);
    let service = str_at(r.named("Service", WEBHOOK), "/metadata/name");
    assert_eq!(
        strings(at(serving, "/spec/dnsNames")),
        [
            format!("{service}.{ns}.svc"),
            format!("{service}.{ns}.svc.cluster.local")
        ],
        "{label}: the certificate names what the API server calls"
    );
    assert!(
        strings(at(serving, "/spec/usages")).contains(&"server auth"),
        "{label}: a serving certificate"
    );
    let webhook_config = r.named("MutatingWebhookConfiguration", WEBHOOK);
    assert_eq!(
        webhook_config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        format!("{ns}/{}", str_at(serving, "/metadata/name")),
        "{label}: cainjector must read the serving Certificate in the overlay's namespace"
    );
    // serving <- CA Issuer (its CA Secret) <- CA Certificate (isCA) <- self-signed Issuer.
    assert_eq!(at(serving, "/spec/issuerRef/kind"), "Issuer");
    let ca_issuer = r.named("Issuer", str_at(serving, "/spec/issuerRef/name"));
    let ca_secret = str_at(ca_issuer, "/spec/ca/secretName");
    let ca_cert = r
        .all("Certificate")
        .into_iter()
        .find(|c| c["spec"]["secretName"] == ca_secret)
        .unwrap_or_else(|| panic!("{label}: no Certificate makes the CA Secret {ca_secret}"));
    assert_eq!(ca_cert["spec"]["isCA"], true);
    let root = r.named("Issuer", str_at(ca_cert, "/spec/issuerRef/name"));
    assert_eq!(root["spec"]["selfSigned"], json!({}));
}

/// self-signed: the init-certs Job and RBAC for exactly the Secret and webhook it touches.
pub fn check_self_signed(r: &Rendered, ns: &str) {
    let label = &r.label;
    let job = r.one("Job");
    let pod = at(job, "/spec/template/spec");
    let container = at(pod, "/containers/0");
    assert!(str_at(container, "/command/0").ends_with("/flyte-auth-injector"));
    let args = strings(at(container, "/args"));
    assert_eq!(args[0], "init-certs", "{label}: the Job runs init-certs");
    assert!(args.contains(&"--kube"), "{label}: init-certs --kube");
    let flag = |name: &str| -> &str {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("--{name}=")))
            .unwrap_or_else(|| panic!("{label}: init-certs without --{name}"))
    };
    assert_eq!(flag("secret-name"), TLS_SECRET);
    assert_eq!(flag("webhook-name"), WEBHOOK);
    assert_eq!(
        flag("service-name"),
        str_at(r.named("Service", WEBHOOK), "/metadata/name")
    );
    let pod_namespace = at(container, "/env")
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "POD_NAMESPACE")
        .unwrap_or_else(|| panic!("{label}: no POD_NAMESPACE for --namespace"));
    assert_eq!(
        pod_namespace["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert!(job["spec"]["backoffLimit"].as_i64().is_some());
    assert!(job["spec"]["ttlSecondsAfterFinished"].as_i64().is_some());
    assert_hardened(&format!("{label}: Job"), pod, container);

    // Its ServiceAccount is bound to exactly one Role and one ClusterRole.
    let sa = str_at(pod, "/serviceAccountName");
    r.named("ServiceAccount", sa);
    let bound = |kind: &str| -> Vec<&Value> {
        r.all(kind)
            .into_iter()
            .filter(|b| {
                b["subjects"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|s| s["kind"] == "ServiceAccount" && s["name"] == sa)
            })
            .collect()
    };
    let rules_of = |binding_kind: &str, role_kind: &str| -> BTreeSet<String> {
        let bindings = bound(binding_kind);
        assert_eq!(bindings.len(), 1, "{label}: one {binding_kind} for {sa}");
        let subject = bindings[0]["subjects"]
            .as_array()
            .expect("subjects")
            .iter()
            .find(|s| s["name"] == sa)
            .expect("the subject");
        assert_eq!(
            subject["namespace"], ns,
            "{label}: {binding_kind} subject namespace"
        );
        assert_eq!(at(bindings[0], "/roleRef/kind"), role_kind);
        let role = r.named(role_kind, str_at(bindings[0], "/roleRef/name"));
        at(role, "/rules")
            .as_array()
            .expect("rules")
            .iter()
            .map(|rule| {
                let list = |k: &str| -> String {
                    let mut v: Vec<&str> = rule.get(k).map(strings).unwrap_or_default();
                    v.sort_unstable();
                    v.join(",")
                };
                format!(
                    "groups=[{}] resources=[{}] names=[{}] verbs=[{}]",
                    list("apiGroups"),
                    list("resources"),
                    list("resourceNames"),
                    list("verbs")
                )
            })
            .collect()
    };
    let expected =
        |rules: &[&str]| -> BTreeSet<String> { rules.iter().map(|s| s.to_string()).collect() };
    assert_eq!(
        rules_of("RoleBinding", "Role"),
        expected(&[
            &format!("groups=[] resources=[secrets] names=[{TLS_SECRET}] verbs=[get,patch,update]"),
            // `create` cannot be limited by name (the API server authorizes it before a name exists).
            "groups=[] resources=[secrets] names=[] verbs=[create]",
        ]),
        "{label}: the namespaced RBAC of init-certs"
    );
    assert_eq!(
        rules_of("ClusterRoleBinding", "ClusterRole"),
        expected(&[&format!(
            "groups=[admissionregistration.k8s.io] resources=[mutatingwebhookconfigurations] \
             names=[{WEBHOOK}] verbs=[get,patch]"
        )]),
        "{label}: the cluster RBAC of init-certs"
    );
    // Nothing else is granted to anyone.
    assert_eq!(r.all("Role").len(), 1, "{label}: one Role");
    assert_eq!(r.all("ClusterRole").len(), 1, "{label}: one ClusterRole");
}

pub fn overlay_namespace(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("kustomization.yaml")).expect("kustomization");
    let k: BTreeMap<String, serde_yaml_ng::Value> =
        serde_yaml_ng::from_str(&text).expect("kustomization.yaml is YAML");
    k.get("namespace")
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("{} sets no namespace", dir.display()))
        .to_string()
}

/// The real binary's `check` accepts the config file at `path`.
pub fn assert_binary_accepts_config(path: &Path, what: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_flyte-auth-injector"))
        .args(["check", "--config"])
        .arg(path)
        .output()
        .expect("run flyte-auth-injector check");
    assert!(
        out.status.success(),
        "flyte-auth-injector check rejects {what}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The init-certs Job's flags are ones the real binary accepts: run offline, `--kube` swapped for
/// a temporary `--cert-dir` (`scratch`, a name under the test target dir).
pub fn assert_binary_runs_init_certs_job(job: &Value, scratch: &str) {
    let container = at(job, "/spec/template/spec/containers/0");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(scratch);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp cert dir");
    let args: Vec<&str> = strings(at(container, "/args"))
        .into_iter()
        .filter(|a| *a != "--kube")
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_flyte-auth-injector"))
        .args(&args)
        .arg("--cert-dir")
        .arg(&dir)
        .env("POD_NAMESPACE", "flyte")
        .output()
        .expect("run flyte-auth-injector init-certs");
    assert!(
        out.status.success(),
        "flyte-auth-injector {} --cert-dir … failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    for file in ["ca.crt", "tls.crt", "tls.key"] {
        assert!(dir.join(file).exists(), "init-certs wrote no {file}");
    }
}
