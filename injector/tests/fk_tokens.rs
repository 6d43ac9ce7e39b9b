//! `flyte_auth_agent.with_tokens` (agent/python) end to end with real flytekit
//! (tests/.venv): a task declaring its token requests with flytekit's own `OAuth2TokenRequest`
//! is serialized by flytekit's translator (tests/python/fk_tokens_task.py), the pod propeller
//! would build from that TaskTemplate goes through `Injector::review`, and the agent container
//! of the patched pod is given exactly the declared requests. Refused declarations raise in
//! Python at decoration time, naming the token.
//!
//! Simplified against propeller: the pod is the harness's propeller-shaped pod with the task's
//! container image, args and env, and the TaskTemplate's `metadata.metadata` labels and
//! annotations (which propeller puts on the pod) merged into its own; no `k8s_pod` template
//! (fk_tokens_live.rs serializes a task with one and builds its pod as propeller does) and no
//! template-variable substitution in the args.

#[path = "harness/mod.rs"]
#[allow(dead_code)]
mod harness;

use std::path::Path;

use base64::Engine as _;
use flyte_auth_agent::env::ENV_TOKEN_REQUESTS;
use flyte_auth_injector::config::Config;
use flyte_auth_injector::review::Injector;
use serde_json::{json, Value};

/// Runs tests/python/fk_tokens_task.py `mode`.
fn script(mode: &str) -> Value {
    harness::fk_tokens_task(&[mode])
}

fn injector() -> Injector {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config.yaml");
    let text = std::fs::read_to_string(&config).unwrap();
    Injector::new(Config::parse(&text, &config.display().to_string()).unwrap())
}

/// The harness's propeller-shaped review, its pod rebuilt from the serialized task.
fn review_for(task: &Value) -> Value {
    let mut review: Value = serde_json::from_slice(&harness::review("fk-tokens", false)).unwrap();
    let pod = &mut review["request"]["object"];
    // Propeller's own labels and annotations stay; the hand-written token JSON of the harness goes.
    let annotations = pod["metadata"]["annotations"].as_object_mut().unwrap();
    annotations.remove("flyte.org/token-requests");
    annotations.extend(task["annotations"].as_object().unwrap().clone());
    let labels = pod["metadata"]["labels"].as_object_mut().unwrap();
    labels.extend(task["labels"].as_object().unwrap().clone());
    let container = &mut pod["spec"]["containers"][0];
    container["image"] = task["container"]["image"].clone();
    container["args"] = task["container"]["args"].clone();
    let env = container["env"].as_array_mut().unwrap();
    env.extend(task["container"]["env"].as_array().unwrap().iter().cloned());
    review
}

/// The patched pod.
fn patched(review: &Value) -> Value {
    let answer = injector().review(&serde_json::to_vec(review).unwrap());
    let body: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(
        body["response"]["allowed"], true,
        "the injector refused the pod: {}",
        body["response"]["status"]
    );
    let patch = body["response"]["patch"]
        .as_str()
        .expect("an opted-in pod gets a patch");
    let patch: json_patch::Patch = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(patch)
            .unwrap(),
    )
    .unwrap();
    let mut pod = review["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    pod
}

/// The token requests the agent container of `pod` is given.
fn agent_requests(pod: &Value) -> Value {
    let spec = &pod["spec"];
    let all = spec["initContainers"]
        .as_array()
        .into_iter()
        .chain(spec["containers"].as_array())
        .flatten();
    let mut found = all.filter_map(|c| {
        c["env"]
            .as_array()?
            .iter()
            .find(|e| e["name"] == ENV_TOKEN_REQUESTS)
    });
    let var = found.next().expect("a container with the token requests");
    assert!(found.next().is_none(), "one container holds token requests");
    serde_json::from_str(var["value"].as_str().unwrap()).unwrap()
}

/// The requests fk_tokens_task.py declares, in flyteidl JSON with the agent's extensions.
fn declared() -> Value {
    json!([
        {
            "name": "my-api",
            "client": {"clientId": "my-api-client", "clientSecret": {"group": "api-client", "key": "secret"}},
            "idpDiscoveryEndpoint": "https://idp.example.com/.well-known/openid-configuration",
        },
        {
            "name": "reports",
            "client": {"clientId": "reports-client", "clientSecret": {"group": "reports-client", "key": "secret"}},
            "tokenEndpoint": "https://idp.example.com/oauth/token",
            "scopes": ["reports:read", "reports:write"],
            "audience": "https://reports.example.com",
            "clientAuthMethod": "client_secret_post",
        },
    ])
}

/// Each request's JSON without the fields a proto default may or may not spell out.
fn normalized(requests: &Value) -> Vec<Value> {
    requests
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let mut r = r.clone();
            let obj = r.as_object_mut().unwrap();
            if obj.get("type").is_some_and(|t| t == "CLIENT_CREDENTIALS") {
                obj.remove("type");
            }
            r
        })
        .collect()
}

#[test]
fn a_flytekit_task_with_tokens_gives_the_agent_exactly_those_requests() {
    let task = script("pod");
    // The opt-in label and propeller's encoding for the plain request, JSON for the extended one.
    assert_eq!(task["labels"]["flyte.org/auth-agent"], "enabled");
    assert_eq!(task["labels"]["team"], "data", "the task's own labels stay");
    assert_eq!(task["annotations"]["owner"], "alice");
    assert!(task["annotations"]["flyte.tokens/t0"].is_string());
    assert!(task["annotations"].get("flyte.tokens/t1").is_none());
    // The image has the package (the task module imports it): the injector may give flytekit
    // the package's auth mode.
    assert_eq!(
        task["annotations"]["flyte.org/auth-agent-flytekit-auth"],
        "flyte_auth_agent"
    );
    // Admin sees every request in SecurityContext.tokens (no extensions: they have no field).
    let recorded: Vec<&str> = task["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(recorded, ["my-api", "reports"]);
    assert_eq!(
        task["secrets"],
        json!([{"group": "db", "key": "password"}]),
        "the task's own secret_requests stay in its SecurityContext"
    );

    let pod = patched(&review_for(&task));
    assert_eq!(
        normalized(&agent_requests(&pod)),
        normalized(&declared()),
        "the agent must get exactly the declared requests"
    );
}

#[test]
fn the_propeller_annotation_decodes_with_the_injectors_reader() {
    let task = script("pod");
    let value = task["annotations"]["flyte.tokens/t0"].as_str().unwrap();
    let request: flyte_auth_proto::flyteidl::core::OAuth2TokenRequest =
        flyte_auth_proto::annotation::decode(value).unwrap();
    assert_eq!(request.name, "my-api");
    let client = request.client.unwrap();
    assert_eq!(client.client_id, "my-api-client");
    assert_eq!(client.client_secret.unwrap().group, "api-client");
}

#[test]
fn refused_declarations_raise_at_decoration_naming_the_token() {
    let results = script("errors");
    let expect = [
        ("duplicate", "TokenRequestError", "token request 'a': name 'a' is already used"),
        ("no-group", "TokenRequestError", "token request 'nogroup': client.client_secret has no group"),
        ("unknown-type", "TokenRequestError", "token request 'odd': unknown type 7; only CLIENT_CREDENTIALS"),
        ("bad-name", "TokenRequestError", "token request '../etc': name '../etc' contains '/'"),
        ("hidden-name", "TokenRequestError", "token request '.hidden': name '.hidden' starts with '.'"),
        ("no-endpoint", "TokenRequestError", "token request 'noidp': neither token_endpoint nor idp_discovery_endpoint"),
        ("not-a-url", "TokenRequestError", "token request 'ftp': idp_discovery_endpoint 'ftp://idp.example.com/' is not an https://"),
        ("bad-auth-method", "TokenRequestError", "token request 'm': client_auth_method 'basic' is not one of"),
        ("bad-scope", "TokenRequestError", "token request 's': scope 'a b' is not a single scope"),
        ("string-secret", "TokenRequestError", "token request 'str': client.client_secret is a str, not a flytekit Secret"),
        ("not-a-request", "TokenRequestError", "argument #0 of with_tokens() is a dict"),
        ("below-task", "TypeError", "put @with_tokens(...) above @task"),
        ("opt-out-label", "TokenRequestError", "sets label flyte.org/auth-agent='disabled'"),
        ("hand-written", "TokenRequestError", "already declares token requests (flyte.org/token-requests)"),
    ];
    let results = results.as_array().unwrap();
    assert_eq!(results.len(), expect.len());
    for (result, (case, kind, message)) in results.iter().zip(expect) {
        assert_eq!(result["case"], case);
        assert_eq!(result["type"], kind, "{case}: {}", result["message"]);
        let got = result["message"].as_str().unwrap();
        assert!(
            got.contains(message),
            "{case}: {got:?} does not say {message:?}"
        );
        assert!(
            !got.contains("hunter2"),
            "{case}: a secret value in the message"
        );
    }
}

#[test]
fn a_tasks_pod_template_gets_the_tokens_and_a_shared_one_is_left_alone() {
    let t = script("template");
    let decorated = &t["decorated"];
    assert_eq!(decorated["labels"]["flyte.org/auth-agent"], "enabled");
    assert_eq!(
        decorated["labels"]["team"], "ml",
        "the template's labels stay"
    );
    assert_eq!(decorated["annotations"]["owner"], "bob");
    assert_eq!(
        t["own_auth"]["flyte.org/auth-agent-flytekit-auth"], "external_process",
        "a task's own choice of flytekit auth mode stays"
    );
    let t0 = decorated["annotations"]["flyte.tokens/t0"]
        .as_str()
        .unwrap();
    assert_eq!(
        t0, t["task_annotations"]["flyte.tokens/t0"],
        "the same request both places"
    );
    let request: flyte_auth_proto::flyteidl::core::OAuth2TokenRequest =
        flyte_auth_proto::annotation::decode(t0).unwrap();
    assert_eq!(request.name, "my-api");
    // Another task using the same PodTemplate object does not get the tokens.
    assert_eq!(
        t["shared"],
        json!({"labels": {"team": "ml"}, "annotations": {"owner": "bob"}})
    );
    assert_eq!(
        t["same_pod_spec"], true,
        "the pod spec itself is not copied or changed"
    );
}
