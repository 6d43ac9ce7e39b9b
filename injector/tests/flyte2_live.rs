//! Flyte 2 end to end through the injector: a Flyte 2 task pod (the `flyte` SDK's `a0` entry
//! point) is reviewed by the injector configured with `admin.connect_port`; the agent runs exactly
//! as the patch says; and the real `flyte` 2.12.1 SDK runs the task with exactly the env the
//! patch gives the task container, against the Flyte 2 control-plane stand-in
//! (tests/flyte2/standin.py, tokens verified against the real oidc-provider's JWKS). As in
//! coherence.rs, the agent's directories are under a temp dir and its health port on 127.0.0.1:0.

#[path = "../../agent/tests/common/mod.rs"]
mod common;
// Also serves the HTTPS tests; this one reviews in-process.
#[allow(dead_code)]
mod kubelet;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{assert_contains, flyte2_task, free_port, AgentProcess, ControlPlane, Idp, Pod};
use flyte_auth_injector::config::Config;
use flyte_auth_injector::review::Injector;
use kubelet::{agent_command, container_env, mutated, review_of};
use serde_json::json;

const PROPELLER_SECRET: &str = "propeller-secret-flyte2";

#[test]
fn a_flyte2_pod_the_injector_mutated_runs_its_sdk_task_through_the_agent() {
    let idp = Idp::with_clients(&[("flytepropeller", PROPELLER_SECRET, "client_secret_basic")]);
    let plane = ControlPlane::for_idp(&idp, "acme", "");
    let dirs = Pod::new();
    dirs.sensitive.add(PROPELLER_SECRET);
    let port = free_port();
    let mut config = kubelet::config_with_admin(
        &dirs.tokens_dir(),
        dirs.socket().parent().unwrap(),
        &dirs.secrets_dir(),
        &plane.address,
    );
    config.push_str(&format!(
        "  connect_port: {port}\nscope:\n  org: acme\nenv_conflict: replace\n"
    ));
    let injector = Injector::new(Config::parse(&config, "flyte2 config").unwrap());

    // What Flyte 2's executor creates for a run's first action: the task container runs `a0`,
    // with an API key of its own, which would take the SDK around the agent.
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "r1-a0-0", "labels": {"flyte.org/auth-agent": "enabled"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "flyte", "args": ["a0"], "env": [
                {"name": "FLYTE_INTERNAL_EXECUTION_PROJECT", "value": "flytesnacks"},
                {"name": "FLYTE_INTERNAL_EXECUTION_DOMAIN", "value": "development"},
                {"name": "EAGER_API_KEY", "value": "a-key-of-the-pods-own"},
            ]}],
        },
    });
    let secrets = kubelet::three_clients(PROPELLER_SECRET, "unused", "unused");
    let pod = mutated(&injector, &review_of(pod));
    let (args, env) = agent_command(&pod, &secrets);
    let agent = AgentProcess::start(
        &dirs,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &env,
    );
    agent.wait_ready(Duration::from_secs(30));

    // The task: exactly its container's env.
    let task_env = container_env(&pod["spec"]["containers"][0], &secrets);
    let vars: BTreeMap<&str, &str> = task_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(vars["_U_EP_OVERRIDE"], format!("http://127.0.0.1:{port}"));
    // env_conflict: replace, so the pod's own key is blanked with the rest of the group.
    assert_eq!(vars["EAGER_API_KEY"], "", "{vars:?}");
    assert_eq!(vars["_U_ORG_NAME"], "acme", "{vars:?}");
    let (code, result) = flyte2_task(&["a0"], &task_env, &agent);
    assert_eq!((code, &result["children"]), (0, &json!(2)), "{result}");
    let calls = plane.calls();
    assert!(calls.len() >= 3, "{calls:?}");
    for call in &calls {
        assert_eq!(call["authenticated"], json!(true), "{call}");
        assert_eq!(call["sub"], json!("flytepropeller"), "{call}");
    }
    // Under the default policy, with the scope the injector read from the namespace: another
    // project's runs are refused before the control plane sees the call.
    let (code, result) = flyte2_task(&["denied", "payroll"], &task_env, &agent);
    assert_eq!(code, 0, "{result}");
    assert_eq!(result["code"], json!("permission_denied"), "{result}");
    assert_contains(
        result["message"].as_str().unwrap(),
        r#"project_id.name "payroll" is not this execution's project "flytesnacks""#,
    );
    assert_eq!(
        plane.calls().len(),
        calls.len(),
        "the control plane saw a refused call"
    );
}
