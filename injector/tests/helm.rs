//! `deploy/charts/flyte-auth-agent`: the Helm chart renders offline with Helm itself
//! (`tests/k8s/helm.py`, PyPI `helm-python-sdk`: no helm binary, no cluster), passes `helm lint
//! --strict` and the same strict schema validation and checks as the kustomize install
//! (`manifests`, shared with deploy.rs), refuses misspelt or mistyped values naming them, ships a
//! config and init-certs flags the real binary accepts, and does not drift from kustomize.

mod manifests;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};

use flyte_auth_injector::config::Config;
use manifests::*;
use serde::Deserialize;
use serde_json::{json, Value};

const CHART: &str = "deploy/charts/flyte-auth-agent";
/// `helm.py`'s exit code for values refused by values.schema.json.
const EXIT_SCHEMA: i32 = 3;
/// `helm.py`'s exit code for a template that failed (a `fail` in the chart).
const EXIT_TEMPLATE: i32 = 1;
/// The init-certs objects of the post-install phase (the full run, as in kustomize): Helm hooks,
/// unlike everything else.
const INIT_CERTS: &str = "flyte-auth-injector-init-certs";
/// Those of the pre-install phase (`--secret-only`; Helm only).
const INIT_CERTS_SECRET: &str = "flyte-auth-injector-init-certs-secret";
/// Each hook phase: its `helm.sh/hook` events, and the kinds of its objects (all named as its Job).
const PRE_PHASE: (&str, &[&str]) = (
    "pre-install,pre-upgrade",
    &["Job", "Role", "RoleBinding", "ServiceAccount"],
);
const POST_PHASE: (&str, &[&str]) = (
    "post-install,post-upgrade",
    &[
        "ClusterRole",
        "ClusterRoleBinding",
        "Job",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    ],
);
const CONFIG_MAP: &str = "flyte-auth-injector-config";

/// Runs `tests/k8s/helm.py ARGS… CHART`: stdout on exit 0, else (exit code, stderr). A run that
/// cannot start, or exits 2 (bad usage, e.g. helm-python-sdk missing), panics.
fn helm_py(args: &[&str]) -> Result<String, (i32, String)> {
    let root = repo();
    let out = Command::new(python())
        .arg(root.join("tests/k8s/helm.py"))
        .args(args)
        .current_dir(&root)
        .stdin(Stdio::null())
        .output()
        .expect("run tests/k8s/helm.py");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    match out.status.code() {
        Some(0) => Ok(String::from_utf8(out.stdout).expect("helm.py prints UTF-8")),
        Some(code @ (EXIT_TEMPLATE | EXIT_SCHEMA)) => Err((
            code,
            format!("{}{stderr}", String::from_utf8_lossy(&out.stdout)),
        )),
        _ => panic!(
            "tests/k8s/helm.py could not run ({}); if helm_python is missing, run tests/run to \
             update tests/.venv from tests/requirements.txt:\n{stderr}",
            out.status
        ),
    }
}

/// The chart rendered into `namespace` with `values` over its defaults (`helm template`).
fn render(values: &Value, namespace: &str) -> Result<String, (i32, String)> {
    helm_py(&[
        "render",
        CHART,
        "--namespace",
        namespace,
        "--values",
        &values.to_string(),
    ])
}

/// Rendered and validated strictly; a refused value or a schema problem fails the test here.
fn install(values: &Value, namespace: &str, label: &str) -> Rendered {
    let yaml = render(values, namespace).unwrap_or_else(|(code, err)| {
        panic!("{label}: the chart did not render (exit {code}):\n{err}")
    });
    Rendered::from_yaml(&yaml, label)
}

fn cert_manager() -> Value {
    json!({"certificates": {"mode": "cert-manager"}})
}

/// `r` without its pre-install phase: the objects kustomize's self-signed overlay has (whose one
/// init-certs Job is the full run).
fn without_pre_phase(r: &Rendered) -> Rendered {
    Rendered {
        label: format!("{} without its pre-install phase", r.label),
        docs: r
            .docs
            .iter()
            .filter(|d| d["metadata"]["name"] != INIT_CERTS_SECRET)
            .cloned()
            .collect(),
    }
}

/// The chart's default install (init-certs) and its cert-manager install, each in the default
/// namespace of the kustomize overlays and in another one, pass every check the kustomize
/// overlays pass: the namespace reaches the webhook's Service reference, its namespace
/// exclusion, the RBAC subjects, cert-manager's CA annotation and the DNS names.
#[test]
fn chart_installs_pass_the_kustomize_checks_in_any_namespace() {
    for ns in ["flyte", "tasks-auth"] {
        let r = install(&json!({}), ns, &format!("chart (init-certs) in {ns}"));
        check_install(&r, Some(ns));
        check_self_signed(&without_pre_phase(&r), ns);
        check_secret_only_phase(&r, ns);
        assert!(r.all("Certificate").is_empty() && r.all("Issuer").is_empty());

        let r = install(
            &cert_manager(),
            ns,
            &format!("chart (cert-manager) in {ns}"),
        );
        check_install(&r, Some(ns));
        check_cert_manager(&r, ns);
        for kind in [
            "Job",
            "Role",
            "ClusterRole",
            "RoleBinding",
            "ClusterRoleBinding",
        ] {
            assert!(
                r.all(kind).is_empty(),
                "cert-manager mode renders no {kind}"
            );
        }
    }
}

/// init-certs runs in two hook phases, each its own Job after its own ServiceAccount and RBAC
/// (same phase, lower weight), each object in one phase only, replaced on the next run and deleted
/// once the phase's hooks succeeded:
/// - pre-install/pre-upgrade, `--secret-only`: the Secret exists before the Deployment, so
///   `helm install --wait` can finish;
/// - post-install/post-upgrade, the full run: patches the caBundle of the webhook configuration
///   Helm created with the release.
///
/// Nothing else is a hook: the webhook, Deployment and the rest are release objects. An upgrade
/// renders the same hooks, so both run again.
#[test]
fn init_certs_runs_in_two_hook_phases() {
    let r = install(&json!({}), "flyte", "chart (init-certs)");
    let weight = |doc: &Value| -> i64 {
        str_at(doc, "/metadata/annotations/helm.sh~1hook-weight")
            .parse()
            .expect("an integer hook weight")
    };
    let mut phases: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    for doc in &r.docs {
        let annotations = &doc["metadata"]["annotations"];
        let what = format!("{}/{}", doc["kind"], doc["metadata"]["name"]);
        let Some(events) = annotations.get("helm.sh/hook") else {
            continue;
        };
        assert_eq!(
            annotations["helm.sh/hook-delete-policy"], "before-hook-creation,hook-succeeded",
            "{what}"
        );
        let name = str_at(doc, "/metadata/name");
        let job = r.named("Job", name);
        assert_eq!(
            at(job, "/metadata/annotations/helm.sh~1hook"),
            events,
            "{what}: in its Job's phase"
        );
        if doc["kind"] != "Job" {
            assert!(
                weight(doc) < weight(job),
                "{what} is created before the Job"
            );
        }
        phases
            .entry(events.as_str().expect("hook events").to_string())
            .or_default()
            .insert((str_at(doc, "/kind").to_string(), name.to_string()));
    }
    let phase = |(events, kinds): (&str, &[&str]), name: &str| {
        let objects = kinds
            .iter()
            .map(|k| (k.to_string(), name.to_string()))
            .collect();
        (events.to_string(), objects)
    };
    assert_eq!(
        phases,
        BTreeMap::from([
            phase(PRE_PHASE, INIT_CERTS_SECRET),
            phase(POST_PHASE, INIT_CERTS)
        ]),
        "the hooks, by phase"
    );

    // The two Jobs differ only in name, phase, ServiceAccount and `--secret-only`: the same
    // flags, so the same keep/renew policy, and the full run keeps what the first one wrote.
    let (pre, post) = (
        r.named("Job", INIT_CERTS_SECRET),
        r.named("Job", INIT_CERTS),
    );
    let mut as_post = pre.clone();
    as_post["metadata"]["name"] = post["metadata"]["name"].clone();
    as_post["metadata"]["annotations"]["helm.sh/hook"] =
        post["metadata"]["annotations"]["helm.sh/hook"].clone();
    let spec = &mut as_post["spec"]["template"]["spec"];
    spec["serviceAccountName"] = json!(INIT_CERTS);
    let args = spec["containers"][0]["args"].as_array_mut().expect("args");
    assert_eq!(args.pop(), Some(json!("--secret-only")));
    assert_eq!(
        &as_post, post,
        "the pre-install Job is the full run plus --secret-only"
    );

    let upgrade = helm_py(&["render", CHART, "--namespace", "flyte", "--upgrade"])
        .unwrap_or_else(|(code, err)| panic!("upgrade render failed ({code}): {err}"));
    let upgrade = Rendered::from_yaml(&upgrade, "chart upgrade");
    assert_eq!(upgrade.all("Job"), r.all("Job"));
}

/// The pre-install phase's RBAC is exactly the namespaced Secret rules of the full run (which
/// `check_self_signed` pins) and nothing cluster-wide: its ServiceAccount has one RoleBinding, to
/// its own Role, and no ClusterRoleBinding.
fn check_secret_only_phase(r: &Rendered, ns: &str) {
    let label = &r.label;
    let job = r.named("Job", INIT_CERTS_SECRET);
    let sa = str_at(job, "/spec/template/spec/serviceAccountName");
    assert_eq!(sa, INIT_CERTS_SECRET, "{label}: its own ServiceAccount");
    r.named("ServiceAccount", sa);
    let binds_sa = |b: &Value| {
        b["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["kind"] == "ServiceAccount" && s["name"] == sa)
    };
    assert!(
        !r.all("ClusterRoleBinding").into_iter().any(binds_sa),
        "{label}: the pre-install ServiceAccount has no cluster-wide rights"
    );
    let bindings: Vec<&Value> = r
        .all("RoleBinding")
        .into_iter()
        .filter(|b| binds_sa(b))
        .collect();
    assert_eq!(bindings.len(), 1, "{label}: one RoleBinding for {sa}");
    assert_eq!(
        bindings[0]["subjects"],
        json!([{"kind": "ServiceAccount", "name": sa, "namespace": ns}]),
        "{label}: its only subject"
    );
    assert_eq!(
        bindings[0]["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": INIT_CERTS_SECRET})
    );
    assert_eq!(
        at(r.named("Role", INIT_CERTS_SECRET), "/rules"),
        at(r.named("Role", INIT_CERTS), "/rules"),
        "{label}: the pre-install Role is the full run's Secret rules"
    );
    let container = at(job, "/spec/template/spec/containers/0");
    assert!(strings(at(container, "/args")).contains(&"--secret-only"));
    assert_hardened(
        &format!("{label}: Job {INIT_CERTS_SECRET}"),
        at(job, "/spec/template/spec"),
        container,
    );
}

/// The binary accepts `job`'s arguments exactly as the chart writes them, `--kube` included: it
/// gets past flag parsing and checking to loading the Kubernetes client configuration, which fails
/// here on purpose (KUBECONFIG names a missing file), so no cluster is contacted.
fn assert_binary_accepts_kube_job_args(job: &Value) {
    let container = at(job, "/spec/template/spec/containers/0");
    let args = strings(at(container, "/args"));
    let missing = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-such-kubeconfig");
    let out = Command::new(env!("CARGO_BIN_EXE_flyte-auth-injector"))
        .args(&args)
        .env("KUBECONFIG", &missing)
        .env("POD_NAMESPACE", "flyte")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .stdin(Stdio::null())
        .output()
        .expect("run flyte-auth-injector");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "flyte-auth-injector {}: {stderr}",
        args.join(" ")
    );
    assert!(
        stderr.contains("loading Kubernetes client configuration"),
        "flyte-auth-injector {} stopped before loading the client configuration: {stderr}",
        args.join(" ")
    );
}

/// `helm lint --strict` (warnings are errors) passes with both certificate modes.
#[test]
fn chart_lints_clean() {
    for values in [json!({}), cert_manager()] {
        let report = helm_py(&[
            "lint",
            CHART,
            "--namespace",
            "flyte",
            "--values",
            &values.to_string(),
        ])
        .unwrap_or_else(|(_, report)| panic!("helm lint --strict with {values}:\n{report}"));
        println!("helm lint with {values}:\n{report}");
    }
    // And lint does fail on a problem (so the pass above means something).
    let (code, report) = helm_py(&["lint", CHART, "--values", r#"{"replica": 3}"#])
        .expect_err("lint accepts an unknown value");
    assert_eq!(code, EXIT_TEMPLATE);
    assert!(report.contains("replica"), "{report}");
}

/// values.schema.json refuses a misspelt key at any level, a wrong type and a value outside its
/// choices, naming the key; the templates refuse a config whose certificate paths are not where
/// the Secret is mounted.
#[test]
fn wrong_values_are_refused_naming_the_key() {
    let cases = [
        (
            json!({"replica": 3}),
            "additional properties 'replica' not allowed",
        ),
        (
            json!({"replicas": "3"}),
            "at '/replicas': got string, want integer",
        ),
        (
            json!({"image": {"pullpolicy": "Always"}}),
            "at '/image': additional properties 'pullpolicy' not allowed",
        ),
        (
            json!({"config": {"opt_in": {"lable": "team"}}}),
            "at '/config/opt_in': additional properties 'lable' not allowed",
        ),
        (
            json!({"config": {"agent": {"imagePullPolicy": "Always"}}}),
            "at '/config/agent': additional properties 'imagePullPolicy' not allowed",
        ),
        (
            json!({"config": {"server": {"max_body": "2Mi"}}}),
            "at '/config/server/max_body': got string, want integer",
        ),
        (
            json!({"certificates": {"mode": "self-signed"}}),
            "at '/certificates/mode': value must be one of 'init-certs', 'cert-manager'",
        ),
        (
            json!({"webhook": {"failurePolicy": "fail"}}),
            "at '/webhook/failurePolicy'",
        ),
        (
            json!({"certificates": {"certManager": {"issuerRef": {"kind": "ClusterIssuer"}}}}),
            "at '/certificates/certManager/issuerRef': properties 'name' required",
        ),
        (json!({"podLabels": {"team": 7}}), "at '/podLabels/team'"),
    ];
    for (values, expected) in cases {
        match render(&values, "flyte") {
            Ok(_) => panic!("the chart accepted {values}"),
            Err((code, message)) => {
                assert_eq!(code, EXIT_SCHEMA, "{values}: {message}");
                assert!(
                    message.contains(expected),
                    "{values}: expected {expected:?} in:\n{message}"
                );
            }
        }
    }
    let (code, message) = render(
        &json!({"config": {"server": {"cert_file": "/etc/webhook/certs/cert.pem"}}}),
        "flyte",
    )
    .expect_err("a cert_file the Secret does not provide");
    assert_eq!(code, EXIT_TEMPLATE, "{message}");
    assert!(
        message.contains("config.server.cert_file \"/etc/webhook/certs/cert.pem\""),
        "{message}"
    );
}

/// The names in `message` after "expected" (serde's list of the fields a section accepts).
fn expected_fields(message: &str) -> BTreeSet<String> {
    let (_, list) = message
        .split_once("expected")
        .unwrap_or_else(|| panic!("no field list in {message:?}"));
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The schema closes the config sections the injector closes, with exactly the keys the injector
/// accepts: a key the schema lets through is never one the injector then refuses at start, and
/// every key the injector reads can be set. (The `admin` section and `agent.limits` are the
/// agent's own and are checked by its rules when the injector starts.)
#[test]
fn schema_knows_exactly_the_injector_config_keys() {
    let text = std::fs::read_to_string(repo().join(CHART).join("values.schema.json"))
        .expect("values.schema.json");
    let schema: Value = serde_json::from_str(&text).expect("values.schema.json is JSON");
    let config = at(&schema, "/properties/config");
    for (section, probe) in [
        ("", "zzz_not_a_key: 1"),
        ("server", "server: {zzz_not_a_key: 1}"),
        ("limits", "limits: {zzz_not_a_key: 1}"),
        ("opt_in", "opt_in: {zzz_not_a_key: 1}"),
        ("scope", "scope: {zzz_not_a_key: 1}"),
        ("scope/fallback", "scope: {fallback: {zzz_not_a_key: 1}}"),
        ("agent", "agent: {zzz_not_a_key: 1}"),
        (
            "agent/start_pacing",
            "agent: {start_pacing: {zzz_not_a_key: 1}}",
        ),
    ] {
        let node = if section.is_empty() {
            config
        } else {
            at(
                config,
                &format!("/properties/{}", section.replace('/', "/properties/")),
            )
        };
        assert_eq!(
            node["additionalProperties"], false,
            "config {section} is closed"
        );
        let in_schema: BTreeSet<String> = node["properties"]
            .as_object()
            .expect("properties")
            .keys()
            .cloned()
            .collect();
        let problem = Config::parse(probe, "probe")
            .expect_err("an unknown key is refused")
            .to_string();
        assert_eq!(
            in_schema,
            expected_fields(&problem),
            "config {section}: the schema's keys vs the injector's"
        );
    }
}

/// The config the chart ships (the rendered ConfigMap) passes the real binary's `check`, also in
/// init-only mode without an admin section, and the init-certs Job's flags run.
#[test]
fn shipped_chart_config_and_job_flags_work_with_the_binary() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("helm-config");
    std::fs::create_dir_all(&dir).expect("temp dir");
    for (values, file) in [
        (json!({}), "default.yaml"),
        (
            json!({"config": {"mode": "init-only", "admin": null}}),
            "init-only.yaml",
        ),
    ] {
        let r = install(&values, "flyte", &format!("chart with {values}"));
        let config = str_at(r.named("ConfigMap", CONFIG_MAP), "/data/config.yaml");
        let path = dir.join(file);
        std::fs::write(&path, config).expect("write config");
        assert_binary_accepts_config(&path, &format!("the chart's config with {values}"));
    }
    let r = install(&json!({}), "flyte", "chart (init-certs)");
    assert_binary_runs_init_certs_job(r.named("Job", INIT_CERTS), "helm-init-certs");
    for job in r.all("Job") {
        assert_binary_accepts_kube_job_args(job);
    }
}

/// Each value reaches the fields it is documented to set.
#[test]
fn values_reach_their_fields() {
    let digest = format!("sha256:{}", "ab".repeat(32));
    let values = json!({
        "image": {"repository": "registry.example/auth", "tag": "1.2.3", "digest": digest,
                  "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "pull"}],
        "replicas": 3,
        "resources": {"requests": {"cpu": "50m", "memory": "40Mi"}, "limits": {"memory": "200Mi"}},
        "logLevel": "debug",
        "logFormat": "text",
        "podAnnotations": {"example.com/a": "1"},
        "podLabels": {"team": "platform", "app.kubernetes.io/name": "other"},
        "nodeSelector": {"pool": "system"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [{"matchExpressions":
                [{"key": "pool", "operator": "In", "values": ["system"]}]}]}}},
        "priorityClassName": "system-cluster-critical",
        "webhook": {"failurePolicy": "Ignore", "timeoutSeconds": 5,
                    "excludedNamespaces": ["kube-system", "monitoring"],
                    "namespaceSelector": {"matchLabels": {"flyte.org/tasks": "true"},
                        "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["infra"]}]}},
        "certificates": {"mode": "init-certs", "initCerts": {"validFor": "365d", "renewBefore": "60d"}},
        "config": {"opt_in": {"label": "example.com/auth", "value": "yes"},
                   "server": {"listen": "0.0.0.0:9443"},
                   "agent": {"image": "registry.example/agent:7"}}
    });
    let r = install(&values, "auth", "chart with every value set");
    let image = format!("registry.example/auth:1.2.3@{digest}");
    let deployment = r.named("Deployment", WEBHOOK);
    let pod = at(deployment, "/spec/template/spec");
    let container = at(pod, "/containers/0");
    assert_eq!(container["image"], image.as_str());
    assert_eq!(container["imagePullPolicy"], "Always");
    assert_eq!(container["resources"], values["resources"]);
    assert_eq!(
        container["env"],
        json!([{"name": "FLYTE_AUTH_INJECTOR_LOG_FORMAT", "value": "text"},
               {"name": "RUST_LOG", "value": "debug"}])
    );
    assert_eq!(deployment["spec"]["replicas"], 3);
    assert_eq!(pod["imagePullSecrets"], values["imagePullSecrets"]);
    assert_eq!(pod["nodeSelector"], values["nodeSelector"]);
    assert_eq!(pod["tolerations"], values["tolerations"]);
    assert_eq!(pod["affinity"], values["affinity"]);
    assert_eq!(pod["priorityClassName"], "system-cluster-critical");
    let meta = at(deployment, "/spec/template/metadata");
    assert_eq!(meta["annotations"]["example.com/a"], "1");
    assert_eq!(meta["labels"]["team"], "platform");
    assert!(
        selects(
            at(deployment, "/spec/selector/matchLabels"),
            &meta["labels"]
        ),
        "podLabels cannot replace the selector's labels"
    );
    // The listen port is the container's, the Service's target and the NetworkPolicy's.
    assert_eq!(at(container, "/ports/0/containerPort"), 9443);
    assert_eq!(
        at(r.one("NetworkPolicy"), "/spec/ingress/0/ports/0/port"),
        9443
    );

    let config_text = str_at(r.named("ConfigMap", CONFIG_MAP), "/data/config.yaml");
    let config = Config::parse(config_text, "configmap").expect("the config parses");
    assert_eq!(config.agent.image, "registry.example/agent:7");
    let hook = &at(
        r.named("MutatingWebhookConfiguration", WEBHOOK),
        "/webhooks",
    )[0];
    assert_eq!(
        hook["objectSelector"],
        json!({"matchLabels": {"example.com/auth": "yes"}}),
        "one value: the config's opt-in label is the webhook's objectSelector"
    );
    assert_eq!(config.opt_in.label, "example.com/auth");
    assert_eq!(hook["failurePolicy"], "Ignore");
    assert_eq!(hook["timeoutSeconds"], 5);
    assert_eq!(
        hook["namespaceSelector"],
        json!({"matchLabels": {"flyte.org/tasks": "true"},
               "matchExpressions": [
                   {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                    "values": ["kube-system", "monitoring", "auth"]},
                   {"key": "tier", "operator": "NotIn", "values": ["infra"]}]})
    );

    let jobs = r.all("Job");
    assert_eq!(jobs.len(), 2, "the pre-install and post-install Jobs");
    for job in jobs {
        let job = at(job, "/spec/template/spec");
        assert_eq!(job["containers"][0]["image"], image.as_str());
        let args = strings(&job["containers"][0]["args"]);
        assert!(args.contains(&"--valid-for=365d") && args.contains(&"--renew-before=60d"));
        assert_eq!(job["nodeSelector"], values["nodeSelector"]);
    }

    // Without config.agent.image the sidecar runs the chart's image; the tag defaults to the
    // chart's appVersion.
    let r = install(
        &json!({"image": {"repository": "registry.example/auth"}}),
        "auth",
        "chart with a repository",
    );
    let chart_yaml =
        std::fs::read_to_string(repo().join(CHART).join("Chart.yaml")).expect("Chart.yaml");
    let chart: BTreeMap<String, serde_yaml_ng::Value> =
        serde_yaml_ng::from_str(&chart_yaml).expect("Chart.yaml is YAML");
    let app_version = chart["appVersion"].as_str().expect("appVersion");
    let image = format!("registry.example/auth:{app_version}");
    let config = Config::parse(
        str_at(r.named("ConfigMap", CONFIG_MAP), "/data/config.yaml"),
        "configmap",
    )
    .expect("the config parses");
    assert_eq!(config.agent.image, image);
    assert_eq!(
        at(
            r.named("Deployment", WEBHOOK),
            "/spec/template/spec/containers/0/image"
        ),
        image.as_str()
    );

    // cert-manager options.
    let r = install(
        &json!({"certificates": {"mode": "cert-manager", "certManager": {
            "issuerRef": {"kind": "ClusterIssuer", "name": "corp-ca"},
            "duration": "720h", "renewBefore": "240h"}}}),
        "auth",
        "chart with a cert-manager issuer",
    );
    assert!(
        r.all("Issuer").is_empty(),
        "no chain of its own with an issuerRef"
    );
    let serving = r.one("Certificate");
    assert_eq!(
        serving["spec"]["issuerRef"],
        json!({"kind": "ClusterIssuer", "name": "corp-ca"})
    );
    assert_eq!(serving["spec"]["duration"], "720h");
    assert_eq!(serving["spec"]["renewBefore"], "240h");
}

/// A changed config changes the pods' checksum/config, so the Deployment rolls (kustomize does
/// it with a hashed ConfigMap name).
#[test]
fn a_changed_config_rolls_the_pods() {
    let checksum = |values: &Value| -> String {
        let r = install(values, "flyte", &format!("chart with {values}"));
        str_at(
            r.named("Deployment", WEBHOOK),
            "/spec/template/metadata/annotations/checksum~1config",
        )
        .to_string()
    };
    assert_ne!(
        checksum(&json!({})),
        checksum(&json!({"config": {"env_conflict": "replace"}}))
    );
}

/// NOTES.txt tells how to opt a task in (the configured label, both annotation forms) and how to
/// check the install, in the release namespace.
#[test]
fn notes_tell_how_to_opt_in_and_check() {
    let values = json!({"config": {"opt_in": {"label": "example.com/auth", "value": "yes"}}});
    let notes = helm_py(&[
        "render",
        CHART,
        "--namespace",
        "auth",
        "--notes",
        "--values",
        &values.to_string(),
    ])
    .unwrap_or_else(|(code, err)| panic!("NOTES.txt did not render ({code}): {err}"));
    println!("{notes}");
    for expected in [
        "example.com/auth: \"yes\"",
        "flyte.tokens/t<i>",
        "flyte.org/token-requests",
        "with_tokens",
        "kubectl -n auth rollout status deploy/flyte-auth-injector",
        "kubectl get mutatingwebhookconfiguration flyte-auth-injector",
        "kube-system, auth",
    ] {
        assert!(notes.contains(expected), "NOTES.txt lacks {expected:?}");
    }
}

/// `doc`'s labels, and `doc` without them and without Helm's hook annotations (intended
/// difference 1 of `kustomize_and_helm_do_not_drift`).
fn split_helm_metadata(doc: &Value) -> (BTreeMap<String, Value>, Value) {
    let mut doc = doc.clone();
    let meta = doc["metadata"].as_object_mut().expect("metadata");
    let labels = match meta.remove("labels") {
        Some(Value::Object(labels)) => labels.into_iter().collect(),
        _ => BTreeMap::new(),
    };
    if let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
        annotations.retain(|k, _| !k.starts_with("helm.sh/hook"));
        if annotations.is_empty() {
            meta.remove("annotations");
        }
    }
    (labels, doc)
}

/// kustomize's overlays and the chart, rendered into the same namespace with the matching
/// certificate mode and default values, produce the same objects. The intended differences,
/// and only these, are normalised away before comparing:
/// 1. object labels: Helm puts its standard ones (instance, managed-by, version, helm.sh/chart)
///    on every object, so every kustomize label must be on the Helm object, not the reverse; and
///    the helm.sh/hook*
///    annotations of the init-certs objects (kustomize has no hooks);
/// 2. the ConfigMap's name: kustomize appends a content hash (which rolls the pods on a change),
///    Helm keeps `flyte-auth-injector-config` and rolls the pods with
/// 3. the pod template annotation `checksum/config`;
/// 4. the config's text: Helm writes the `config` value sorted and without comments, so the
///    ConfigMaps are compared as parsed YAML;
/// 5. Helm's pre-install phase (`flyte-auth-injector-init-certs-secret`: the `--secret-only` Job,
///    its ServiceAccount, Role and RoleBinding; `init_certs_runs_in_two_hook_phases` checks it):
///    Helm only, because kustomize has no ordering to need it. Its Job is the full run's plus
///    `--secret-only`, and the full run's objects are compared like every other.
#[test]
fn kustomize_and_helm_do_not_drift() {
    for (overlay, values) in [("self-signed", json!({})), ("cert-manager", cert_manager())] {
        let dir = repo().join("deploy/overlays").join(overlay);
        let ns = overlay_namespace(&dir);
        let kustomized = Rendered::of(&dir, &format!("deploy/overlays/{overlay}"));
        let helm = install(&values, &ns, &format!("chart ({overlay}) in {ns}"));

        let key = |d: &Value| -> (String, String) {
            let name = str_at(d, "/metadata/name");
            // 2: flyte-auth-injector-config-<hash> in kustomize.
            let name = if d["kind"] == "ConfigMap" && name.starts_with(CONFIG_MAP) {
                CONFIG_MAP
            } else {
                name
            };
            (str_at(d, "/kind").to_string(), name.to_string())
        };
        let index = |r: &Rendered| -> BTreeMap<(String, String), (BTreeMap<String, Value>, Value)> {
            r.docs
                .iter()
                .map(|d| (key(d), split_helm_metadata(d)))
                .collect()
        };
        let (mut k, mut h) = (index(&kustomized), index(&helm));
        // 5: exactly the pre-install phase's objects, in the init-certs mode only.
        let helm_only: BTreeSet<(String, String)> = h
            .keys()
            .filter(|key| !k.contains_key(*key))
            .cloned()
            .collect();
        let pre_phase: BTreeSet<(String, String)> = match overlay {
            "self-signed" => PRE_PHASE
                .1
                .iter()
                .map(|kind| (kind.to_string(), INIT_CERTS_SECRET.to_string()))
                .collect(),
            _ => BTreeSet::new(),
        };
        assert_eq!(helm_only, pre_phase, "{overlay}: the objects only Helm has");
        h.retain(|key, _| !pre_phase.contains(key));
        assert_eq!(
            k.keys().collect::<Vec<_>>(),
            h.keys().collect::<Vec<_>>(),
            "{overlay}: the same objects"
        );

        // 2 and 4: the ConfigMap by name and parsed content.
        let config_key = ("ConfigMap".to_string(), CONFIG_MAP.to_string());
        let parsed = |cm: &Value| -> Value {
            serde_yaml_ng::from_str(str_at(cm, "/data/config.yaml")).expect("config.yaml is YAML")
        };
        let (k_cm, h_cm) = (
            k.remove(&config_key).expect("kustomize ConfigMap"),
            h.remove(&config_key).expect("Helm ConfigMap"),
        );
        assert_eq!(parsed(&k_cm.1), parsed(&h_cm.1), "{overlay}: the config");
        // 2 and 3: the Deployment's reference to it, and Helm's checksum annotation.
        let deployment_key = ("Deployment".to_string(), WEBHOOK.to_string());
        for (doc, tool) in [
            (k.get_mut(&deployment_key), "kustomize"),
            (h.get_mut(&deployment_key), "helm"),
        ] {
            let doc = &mut doc.unwrap_or_else(|| panic!("{tool}: no Deployment")).1;
            let template = doc["spec"]["template"].as_object_mut().expect("template");
            let meta = template["metadata"]
                .as_object_mut()
                .expect("template metadata");
            if let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
                annotations.remove("checksum/config");
                if annotations.is_empty() {
                    meta.remove("annotations");
                }
            }
            for volume in template["spec"]["volumes"].as_array_mut().expect("volumes") {
                if volume["name"] == "config" {
                    volume["configMap"]["name"] = json!("(the config)");
                }
            }
        }
        for (object, (kustomize_labels, kustomize_doc)) in &k {
            let (helm_labels, helm_doc) = &h[object];
            for (label, value) in kustomize_labels {
                assert_eq!(
                    helm_labels.get(label),
                    Some(value),
                    "{overlay}: {object:?}: Helm lacks kustomize's label {label}"
                );
            }
            assert_eq!(
                kustomize_doc, helm_doc,
                "{overlay}: {object:?} differs between kustomize and Helm\nkustomize: {kustomize_doc:#}\nhelm: {helm_doc:#}"
            );
        }
    }
}

/// `tests/k8s/helm.py` writes what `helm template` would: a YAML stream whose every document is
/// an object; values that are not an object are a usage error (exit 2), not a schema refusal.
#[test]
fn renderer_output_is_a_clean_stream() {
    let yaml = render(&json!({}), "flyte").expect("renders");
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&yaml)
        .map(|doc| Value::deserialize(doc).expect("YAML"))
        .collect();
    assert!(docs.iter().all(|d| d["kind"].is_string()), "{yaml}");
    let out = Command::new(python())
        .arg(repo().join("tests/k8s/helm.py"))
        .args(["render", CHART, "--values", "[1]"])
        .current_dir(repo())
        .output()
        .expect("run helm.py");
    assert_eq!(out.status.code(), Some(2), "values that are not an object");
    assert!(out.stdout.is_empty());
}

/// deploy/README.md's values table names every value of values.yaml (each setting outside
/// `config`, whose keys `config.yaml` documents; `resources` and `issuerRef` as one value each).
#[test]
fn every_value_is_in_the_readme_table() {
    fn leaves(prefix: &str, value: &serde_yaml_ng::Value, out: &mut Vec<String>) {
        let opaque = prefix.ends_with("resources") || prefix.ends_with("issuerRef");
        match value.as_mapping() {
            Some(map) if !map.is_empty() && !opaque && prefix != "config" => {
                for (key, child) in map {
                    let key = key.as_str().expect("string keys");
                    let path = if prefix.is_empty() {
                        key.to_string()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    leaves(&path, child, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }
    let root = repo();
    let values: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root.join(CHART).join("values.yaml")).expect("values.yaml"),
    )
    .expect("values.yaml is YAML");
    let readme = std::fs::read_to_string(root.join("deploy/README.md")).expect("deploy/README.md");
    let mut paths = Vec::new();
    leaves("", &values, &mut paths);
    assert!(paths.len() > 20, "{paths:?}");
    let missing: Vec<&String> = paths
        .iter()
        .filter(|p| !readme.contains(&format!("| `{p}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "values missing from deploy/README.md's table: {missing:?}"
    );
}
