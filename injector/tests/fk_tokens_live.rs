//! The whole chain of issue 13, with real peers: a flytekit task declaring two token requests
//! with `flyte_auth_agent.with_tokens` against the real oidc-provider, and a flytekit
//! `PodTemplate` with a real `kubernetes.client.V1PodSpec`, is serialized by flytekit's
//! `get_serializable` (tests/python/fk_tokens_task.py `live`); the pod propeller would build from
//! that TaskTemplate goes to the real injector binary over HTTPS (`serve`, with certificates from
//! its own `init-certs`, the client trusting only that CA, an `admin:` section naming the
//! FlyteAdmin stand-in); the returned JSONPatch is applied; the agent binary is started exactly as
//! the patch says (args, env with `secretKeyRef`s resolved, `secret` volumes written where they
//! mount); and with exactly the primary container's env the task reads both tokens with
//! `flyte_auth_agent.token` and calls Admin through the agent with `FlyteRemote(Config.auto())`
//! and the eager path (tests/python/admin_scenarios.py `remote`, `eager`), which the stand-in sees
//! with the executor's credential.
//!
//! How propeller builds the pod, read from flyteorg/flyte v1.16.8 (the release flytekit 1.16
//! pairs with), and what `pod_of` keeps of it:
//! - `flytek8s.BuildRawPod` (flyteplugins/go/tasks/pluginmachinery/flytek8s/pod_helper.go),
//!   target `K8SPod`: the pod spec is `k8s_pod.pod_spec` as serialized, the primary container is
//!   `config["primary_container_name"]`, labels and annotations start as `k8s_pod.metadata`'s.
//!   Propeller merges no task container into it: with a pod template flytekit serializes no
//!   `container`, having already merged the task's image, args and env into the primary
//!   container (flytekit's `_serialize_pod_spec`); the test checks that it did.
//! - `ApplyFlytePodConfiguration` → `AddFlyteCustomizationsToContainer` → `DecorateEnvVars`
//!   (k8s_resource_adds.go `GetExecutionEnvVars`): every container's env gets, after its own, the
//!   execution's `FLYTE_INTERNAL_EXECUTION_ID`/`_PROJECT`/`_DOMAIN`, `FLYTE_ATTEMPT_NUMBER` and the
//!   task's `FLYTE_INTERNAL_TASK_*`. `UpdatePod`: `restartPolicy: Never` and the service account
//!   when the spec has none.
//! - The pod plugin's `BuildResource` (plugins/k8s/pod/plugin.go): one container, so annotation
//!   `primary_container_name`.
//! - `PluginManager.addObjectMetadata` (flytepropeller/pkg/controller/nodes/task/k8s/
//!   plugin_manager.go): namespace; labels and annotations are `UnionMaps(the pod's,
//!   TaskMetadata.metadata's, the task execution's)`, later maps winning; the task execution's
//!   labels are the execution's (`execution-id`, `project`, `domain`, node-execution-context.go's
//!   `node-id`, `task-name`, `interruptible`).
//!
//! Simplified: no template-variable substitution in the args (`{{.input}}` stays; the args are
//! not run), no platform resource defaults or overrides, no default/interruptible node selectors
//! or tolerations, no base PodTemplate from the cluster (`MergeWithBasePodTemplate`), no owner
//! reference or `shard-key`/`workflow-name` labels, and the task has no `secret_requests` (so no
//! `flyte.secrets/s<i>` annotations). The task's process is not its container's
//! `pyflyte-execute` but Python processes run with exactly that container's env (plus `HOME`, and
//! `PYTHONPATH` for the agent's package from this checkout). Against the kubelet, as in
//! coherence.rs: the agent's directories are configured under a temp dir, and its health port
//! binds 127.0.0.1:0.

#[path = "../../agent/tests/common/mod.rs"]
mod common;
// The HTTPS tests' helpers; this test uses the ones that start and reach the binary.
#[allow(dead_code)]
mod harness;
// Also serves the tests that review in-process (`mutated`); this one reviews over HTTPS.
#[allow(dead_code)]
mod kubelet;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{python, workspace, Admin, AgentProcess, Idp, Pod};
use kubelet::{agent_command, container_env, patched, review_of};
use serde_json::{json, Map, Value};

const PROPELLER_SECRET: &str = "propeller-secret-fk-tokens";
const READER_SECRET: &str = "reader-secret-fk-tokens";
const WRITER_SECRET: &str = "writer-secret-fk-tokens";

/// The execution whose pod this is.
const PROJECT: &str = "flytesnacks";
const DOMAIN: &str = "development";
const EXECUTION: &str = "f7a1b2c3d4e5f6a7b8c9";

/// The Kubernetes Secrets of the namespace: name → data key → value.
fn secret_store() -> kubelet::Secrets {
    kubelet::three_clients(PROPELLER_SECRET, READER_SECRET, WRITER_SECRET)
}

/// A JSON object's entries (none for null).
fn entries(value: &Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap_or_default()
}

/// The pod propeller builds from the serialized task, whose target is `k8s_pod` (each step is
/// propeller's function of the same name in the module doc; simplified as said there).
fn pod_of(task: &Value) -> Value {
    // BuildRawPod, target K8SPod.
    let k8s_pod = &task["k8s_pod"];
    let mut spec = k8s_pod["pod_spec"].clone();
    let primary = task["config"]["primary_container_name"]
        .as_str()
        .expect("a k8s_pod task names its primary container");
    let mut labels = entries(&k8s_pod["metadata"]["labels"]);
    let mut annotations = entries(&k8s_pod["metadata"]["annotations"]);

    // DecorateEnvVars, for every container: the execution's variables after the container's own.
    let task_name = task["name"].as_str().unwrap();
    let execution_env = [
        ("FLYTE_INTERNAL_EXECUTION_ID", EXECUTION),
        ("FLYTE_INTERNAL_EXECUTION_PROJECT", PROJECT),
        ("FLYTE_INTERNAL_EXECUTION_DOMAIN", DOMAIN),
        ("FLYTE_ATTEMPT_NUMBER", "0"),
        ("FLYTE_INTERNAL_TASK_PROJECT", PROJECT),
        ("FLYTE_INTERNAL_TASK_DOMAIN", DOMAIN),
        ("FLYTE_INTERNAL_TASK_NAME", task_name),
        ("FLYTE_INTERNAL_TASK_VERSION", "v1"),
    ];
    let containers = spec["containers"].as_array_mut().unwrap();
    for container in containers.iter_mut() {
        let env = container
            .as_object_mut()
            .unwrap()
            .entry("env")
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .unwrap();
        env.extend(
            execution_env
                .iter()
                .map(|(name, value)| json!({"name": name, "value": value})),
        );
    }
    // The pod plugin's BuildResource: the primary container's name, for a single container.
    if containers.len() == 1 {
        annotations.insert("primary_container_name".into(), primary.into());
    }
    // UpdatePod.
    let fields = spec.as_object_mut().unwrap();
    fields.entry("restartPolicy").or_insert("Never".into());
    fields
        .entry("serviceAccountName")
        .or_insert("default".into());

    // addObjectMetadata: the pod's, then TaskMetadata.metadata's, then the task execution's.
    labels.extend(entries(&task["labels"]));
    annotations.extend(entries(&task["annotations"]));
    for (k, v) in [
        ("execution-id", EXECUTION),
        ("project", PROJECT),
        ("domain", DOMAIN),
        ("node-id", "n0"),
        ("task-name", &label_value(task_name)),
        ("interruptible", "false"),
    ] {
        labels.insert(k.into(), v.into());
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("{EXECUTION}-n0-0"),
            "namespace": "flytesnacks-development",
            "labels": labels,
            "annotations": annotations,
        },
        "spec": spec,
    })
}

/// propeller's `SanitizeLabelValue` (flytepropeller/pkg/utils/k8s.go), for names up to 63 bytes.
fn label_value(name: &str) -> String {
    let mut out = String::new();
    let mut replacing = false;
    for c in name.to_lowercase().chars() {
        let valid = matches!(c, 'a'..='z' | '0'..='9' | '-');
        // Each run of other characters becomes one '-'.
        if valid || !replacing {
            out.push(if valid { c } else { '-' });
        }
        replacing = !valid;
    }
    out.trim_matches('-').to_string()
}

/// The injector binary, killed when dropped.
struct Webhook(Child);

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `pod` reviewed by the injector binary serving `config_sections` over HTTPS, as the API server
/// sends it: to the Service's DNS name, trusting only the CA of the binary's own `init-certs`.
fn mutated_over_https(pod: Value, config_sections: &str) -> Value {
    let bin = env!("CARGO_BIN_EXE_flyte-auth-injector");
    let certs = tempfile::tempdir().unwrap();
    let ca_pem = harness::init_certs(bin, certs.path());
    let config = harness::write_config_sections(
        certs.path(),
        &certs.path().join("tls.crt"),
        &certs.path().join("tls.key"),
        "",
        config_sections,
    );
    let (child, addr) = harness::spawn_serve(bin, &config);
    let _webhook = Webhook(child);
    let host = "flyte-auth-injector.flyte.svc";
    let client = reqwest::blocking::Client::builder()
        .use_preconfigured_tls(harness::client_config(&ca_pem))
        .resolve(host, addr)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let review = review_of(pod);
    let response = client
        .post(format!("https://{host}:{}/mutate?timeout=10s", addr.port()))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&review).unwrap())
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().unwrap();
    patched(&review, &answer)
}

/// The injector config's sections beside `server:`: the agent's directories under `dirs`, and
/// Admin (the stand-in) with the executor's client secret, as in coherence.rs.
fn injector_config(dirs: &Pod, admin: &Admin) -> String {
    kubelet::config_with_admin(
        &dirs.tokens_dir(),
        dirs.socket().parent().unwrap(),
        &dirs.secrets_dir(),
        &admin.address(),
    )
}

/// The mutated pod still has what fk_tokens_task.py's pod template and `@task` set; returns its
/// primary container.
fn assert_pod_template_kept(pod: &Value) -> &Value {
    let containers = pod["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1, "{pod}");
    let primary = &containers[0];
    assert_eq!(primary["name"], "primary");
    assert_eq!(
        primary["resources"],
        json!({"requests": {"memory": "500Mi"}, "limits": {"memory": "600Mi"}})
    );
    let env = container_env(primary, &secret_store());
    for (name, value) in [
        ("APP_MODE", "prod"),
        ("TEMPLATE_MODE", "batch"),
        ("FLYTE_INTERNAL_EXECUTION_PROJECT", PROJECT),
    ] {
        assert!(
            env.contains(&(name.into(), value.into())),
            "{name} in {env:?}"
        );
    }
    assert_eq!(pod["spec"]["nodeSelector"], json!({"pool": "batch"}));
    assert_eq!(
        pod["spec"]["tolerations"],
        json!([{"key": "dedicated", "operator": "Equal", "value": "batch", "effect": "NoSchedule"}])
    );
    let metadata = &pod["metadata"];
    for (field, key, value) in [
        ("labels", "team", "data"),
        ("labels", "tier", "gold"),
        ("annotations", "owner", "alice"),
        ("annotations", "reviewer", "carol"),
        ("annotations", "primary_container_name", "primary"),
    ] {
        assert_eq!(metadata[field][key], value, "{field}: {metadata}");
    }
    primary
}

/// Python (tests/.venv) with exactly `env` and `args`: its stdout.
fn in_task(env: &[(String, String)], args: &[&str]) -> String {
    let out = Command::new(python())
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// tests/python/admin_scenarios.py `name` in the task: its JSON line.
fn scenario(env: &[(String, String)], name: &str) -> Value {
    let script = workspace().join("tests/python/admin_scenarios.py");
    let stdout = in_task(env, &[script.to_str().unwrap(), name]);
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

/// Admin saw `remote`'s calls, then the eager controller's, each let in with the executor's
/// credential (flytepropeller's) in Admin's header.
fn assert_executor_calls(calls: &[Value]) {
    let names: Vec<&str> = calls
        .iter()
        .map(|c| c["method"].as_str().unwrap().rsplit('/').next().unwrap())
        .collect();
    assert!(
        names.starts_with(&["GetExecution", "ListProjects"]),
        "{names:?}"
    );
    for m in [
        "CreateExecution",
        "GetExecution",
        "ListExecutions",
        "TerminateExecution",
    ] {
        assert!(names[2..].contains(&m), "{m} in {names:?}");
    }
    for c in calls {
        assert_eq!(c["authorized"], true, "{c}");
        assert_eq!(c["header"], "flyte-authorization", "{c}");
        assert_eq!(c["client_id"], "flytepropeller", "{c}");
    }
}

#[test]
fn a_flytekit_task_with_tokens_and_a_pod_template_runs_through_the_whole_chain() {
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

    // flytekit serialized the pod template, with the task's container merged into `primary`.
    let task = harness::fk_tokens_task(&["live", &idp.issuer, &idp.token_endpoint()]);
    assert_eq!(task["container"], Value::Null, "{task}");
    assert_eq!(task["config"]["primary_container_name"], "primary");
    let serialized = &task["k8s_pod"]["pod_spec"]["containers"][0];
    assert_eq!(serialized["name"], "primary");
    assert!(
        serialized["args"][0] == "pyflyte-execute" && serialized["image"].is_string(),
        "{serialized}"
    );

    let pod = mutated_over_https(pod_of(&task), &injector_config(&dirs, &admin));
    let task_container = assert_pod_template_kept(&pod);
    let task_env = container_env(task_container, &secret_store());
    for (k, v) in &task_env {
        for secret in [PROPELLER_SECRET, READER_SECRET, WRITER_SECRET] {
            assert!(!v.contains(secret), "task env {k} holds a client secret");
        }
    }

    // The agent, as the kubelet starts it from the patch.
    let (args, env) = agent_command(&pod, &secret_store());
    let process = AgentProcess::start(
        &dirs,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &env,
    );
    process.wait_ready(Duration::from_secs(30));

    // The task: exactly its container's env, reading each declared token, then calling Admin.
    let mut python_env = task_env.clone();
    python_env.push(("HOME".into(), dirs.dir.path().display().to_string()));
    python_env.push((
        "PYTHONPATH".into(),
        workspace().join("agent/python/src").display().to_string(),
    ));
    for (name, client) in [("reader", "reader"), ("writer", "writer")] {
        let token = in_task(
            &python_env,
            &[
                "-c",
                "import sys, flyte_auth_agent; sys.stdout.write(flyte_auth_agent.token(sys.argv[1]))",
                name,
            ],
        );
        dirs.sensitive.add(token.clone());
        let claims = idp.verify(&token, "flyteadmin");
        assert_eq!(claims["client_id"], client, "{name}");
    }
    let remote = scenario(&python_env, "remote");
    assert_eq!(remote["execution"], "seed", "{remote}");
    assert_eq!(
        remote["projects"],
        json!(["demo", "flytesnacks"]),
        "{remote}"
    );
    let eager = scenario(&python_env, "eager");
    assert_eq!(eager["created"], "eager-child", "{eager}");
    assert_eq!(eager["phases"], json!(["RUNNING", "SUCCEEDED"]), "{eager}");
    assert!(
        eager["listed"]
            .as_array()
            .unwrap()
            .contains(&json!("eager-child")),
        "{eager}"
    );
    assert_eq!(eager["terminated_phase"], "ABORTED", "{eager}");
    assert_executor_calls(&admin.authenticated_calls());

    // `with_tokens` said the image has the flyte-auth-agent package, so flytekit got the
    // package's auth mode: it asks Admin nothing before the first call, builds no interactive
    // authenticator, loads no keyring backend, and refuses to log in.
    let auth: Vec<_> = task_env
        .iter()
        .filter(|(k, _)| k.starts_with("FLYTE_CREDENTIALS_"))
        .collect();
    assert_eq!(
        auth,
        [&(
            "FLYTE_CREDENTIALS_AUTH_MODE".to_string(),
            "flyte_auth_agent".to_string()
        )]
    );
    let script = workspace().join("tests/python/flytekit_auth_mode.py");
    let seen: Value = serde_json::from_str(
        in_task(&python_env, &[script.to_str().unwrap(), "first-call"])
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(seen["auth_mode"], "flyte_auth_agent", "{seen}");
    assert_eq!(
        seen["authenticators"],
        json!(["AgentAuthenticator"]),
        "{seen}"
    );
    assert_eq!(seen["client_config_asked"], 0, "{seen}");
    assert_eq!(seen["interactive_built"], json!([]), "{seen}");
    assert_eq!(seen["keyring_backend"], Value::Null, "{seen}");
    assert_eq!(seen["projects"], json!(["demo", "flytesnacks"]), "{seen}");
    assert_eq!(seen["refresh"]["error"], "AuthenticationError", "{seen}");
    assert!(
        seen["refresh"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("a task pod does not log in itself")),
        "{seen}"
    );
    assert_eq!(seen["refresh"]["credentials"], false, "{seen}");

    // The extension travelled: the IdP saw writer's client_secret_post beside the others' basic.
    let stats = idp.stats();
    let auth_methods = stats["auth_methods"].as_array().unwrap();
    assert!(
        auth_methods.contains(&json!("client_secret_post"))
            && auth_methods.contains(&json!("client_secret_basic")),
        "{stats}"
    );
    let (code, _) = process.stop();
    assert_eq!(code, 0, "the agent exits cleanly on SIGTERM");
}
