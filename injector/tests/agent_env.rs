//! The agent's environment belongs to the injector: a pod's token requests cannot name an env
//! var the agent reads as configuration, one outside the secrets' env prefix, or one that two
//! secrets would share, and cannot use a secret mount requirement the agent does not know.
//! Every env var the injector puts on the agent is either one of the agent's settings (from the
//! agent crate's env contract) or a secret reference inside the prefix, each exactly once.

#[allow(dead_code)] // The harness also serves the HTTPS tests and the bench.
mod harness;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use flyte_auth_agent::env::{
    is_agent_owned, DEFAULT_SECRETS_ENV_PREFIX, ENV_ADMIN_DOMAIN, ENV_ADMIN_ORG, ENV_ADMIN_PROJECT,
    ENV_EXECUTION_ID, ENV_TOKEN_REQUESTS,
};
use flyte_auth_injector::config::Config;
use flyte_auth_injector::review::{Injector, Outcome};
use serde_json::{json, Value};

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))
}

fn injector() -> Injector {
    let path = fixtures().join("config.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    Injector::new(Config::parse(&text, "config.yaml").unwrap())
}

/// The propeller review with `requests` as its JSON token-request annotation.
fn review_with(requests: Value) -> Vec<u8> {
    let path = fixtures().join("reviews/propeller-tokens/review.yaml");
    let mut review: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let annotations = review["request"]["object"]["metadata"]["annotations"]
        .as_object_mut()
        .unwrap();
    annotations.retain(|k, _| !k.starts_with("flyte.tokens/"));
    annotations.insert(
        "flyte.org/token-requests".into(),
        json!(requests.to_string()),
    );
    serde_json::to_vec(&review).unwrap()
}

fn request(name: &str, group: &str, key: &str, secret: Value) -> Value {
    let mut secret_ref = json!({"group": group, "key": key});
    secret_ref
        .as_object_mut()
        .unwrap()
        .extend(secret.as_object().unwrap().clone());
    json!({
        "name": name,
        "type": "CLIENT_CREDENTIALS",
        "client": {"clientId": "c", "clientSecret": secret_ref},
        "tokenEndpoint": "https://idp.example.com/token"
    })
}

/// The review's answer: (outcome, denial message, decoded patch).
fn answer(body: &[u8]) -> (Outcome, String, Option<Value>) {
    let reviewed = injector().review(body);
    let review: Value = serde_json::from_slice(&reviewed.body).unwrap();
    let message = review["response"]["status"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let patch = review["response"]["patch"].as_str().map(|p| {
        let bytes = base64::engine::general_purpose::STANDARD.decode(p).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    });
    (reviewed.outcome, message, patch)
}

#[test]
fn a_token_request_cannot_set_the_agents_own_env() {
    let settings = [
        ENV_TOKEN_REQUESTS,
        "RUST_LOG",
        "FLYTE_SECRETS_DEFAULT_DIR",
        "FLYTE_SECRETS_ENV_PREFIX",
        "FLYTE_AUTH_AGENT_ADMIN_TOKEN_ENDPOINT",
        "FLYTE_AUTH_AGENT_ALLOW_INSECURE_HTTP",
        "FLYTE_TOKENS_PATH_PREFIX",
        // The execution scope is the injector's, from the namespace: a pod must not name its own.
        ENV_ADMIN_PROJECT,
        ENV_ADMIN_DOMAIN,
        ENV_ADMIN_ORG,
        ENV_EXECUTION_ID,
    ];
    for var in settings
        .into_iter()
        .chain(["MY_SECRET", "_FSEC_", "_FSEC_A=B"])
    {
        let body = review_with(json!([request(
            "api",
            "api-oauth",
            "secret",
            json!({"envVar": var})
        )]));
        let (outcome, message, patch) = answer(&body);
        assert_eq!(outcome, Outcome::Denied, "{var}: {message}");
        assert!(patch.is_none(), "{var}");
        assert!(
            message.contains("flyte.org/token-requests[0].client.clientSecret.envVar")
                && message.contains(&format!("{var:?}")),
            "{var}: {message}"
        );
    }
}

#[test]
fn two_secrets_cannot_share_one_env_var() {
    let var = "_FSEC_SHARED";
    let body = review_with(json!([
        request("a", "a-oauth", "secret", json!({"envVar": var})),
        request("b", "b-oauth", "secret", json!({"envVar": var})),
    ]));
    let (outcome, message, _) = answer(&body);
    assert_eq!(outcome, Outcome::Denied, "{message}");
    assert!(
        message.contains("env var \"_FSEC_SHARED\" would hold both")
            && message.contains("a-oauth")
            && message.contains("b-oauth"),
        "{message}"
    );
    // One secret named twice under one var is one env entry, not a conflict.
    let body = review_with(json!([
        request("a", "a-oauth", "secret", json!({"envVar": var})),
        request("b", "a-oauth", "secret", json!({"envVar": var})),
    ]));
    assert_eq!(answer(&body).0, Outcome::Mutated);
}

#[test]
fn an_unknown_mount_requirement_is_denied() {
    let body = review_with(json!([request(
        "api",
        "api-oauth",
        "secret",
        json!({"mountRequirement": 99})
    )]));
    let (outcome, message, _) = answer(&body);
    assert_eq!(outcome, Outcome::Denied, "{message}");
    assert!(
        message.contains("flyte.org/token-requests[0].client.clientSecret.mountRequirement: 99 is not ANY (0), ENV_VAR (1) or FILE (2)"),
        "{message}"
    );
}

/// The agent container's env, from the patch that adds it.
fn agent_env(patch: &Value) -> Vec<Value> {
    patch
        .as_array()
        .unwrap()
        .iter()
        .filter(|op| {
            op["path"]
                .as_str()
                .unwrap()
                .starts_with("/spec/initContainers")
        })
        .map(|op| match &op["value"] {
            Value::Array(containers) => containers[0].clone(),
            container => container.clone(),
        })
        .find(|c| c["name"] == "flyte-auth-agent")
        .expect("the patch adds the agent")["env"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn the_agents_env_is_its_settings_and_prefixed_secrets_each_once() {
    let body = review_with(json!([
        request("a", "a-oauth", "secret", json!({"envVar": "_FSEC_CUSTOM"})),
        request(
            "b",
            "b-oauth",
            "key",
            json!({"mountRequirement": "ENV_VAR"})
        ),
        request("c", "c-oauth", "key", json!({})),
    ]));
    let (outcome, message, patch) = answer(&body);
    assert_eq!(outcome, Outcome::Mutated, "{message}");
    let env = agent_env(&patch.unwrap());
    let mut seen = BTreeSet::new();
    for var in &env {
        let name = var["name"].as_str().unwrap();
        assert!(seen.insert(name.to_string()), "{name} is set twice");
        let secret = var["valueFrom"]["secretKeyRef"].is_object();
        if secret {
            assert!(
                name.starts_with(DEFAULT_SECRETS_ENV_PREFIX) && !is_agent_owned(name),
                "{name}"
            );
        } else {
            assert!(
                is_agent_owned(name),
                "{name} is not in the agent's env contract"
            );
        }
    }
    assert!(
        seen.contains("_FSEC_CUSTOM") && seen.contains("_FSEC_B-OAUTH_KEY"),
        "{seen:?}"
    );
}

/// The same denial from the real binary over HTTPS, as the API server would get it: today's
/// main patched this pod, and Kubernetes (which keeps the last of two env entries with one name)
/// would have started the agent with the pod's secret as its token requests.
#[test]
fn the_binary_denies_a_pod_that_sets_the_agents_env() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_flyte-auth-injector");
    let ca = harness::init_certs(bin, dir.path());
    let config = harness::write_config(
        dir.path(),
        &dir.path().join("tls.crt"),
        &dir.path().join("tls.key"),
    );
    let (mut child, addr) = harness::spawn_serve(bin, &config);

    let mut review: Value = serde_json::from_slice(&harness::review("steer", true)).unwrap();
    let requests = json!([request(
        "api",
        "api-oauth",
        "secret",
        json!({"envVar": ENV_TOKEN_REQUESTS})
    )]);
    review["request"]["object"]["metadata"]["annotations"]["flyte.org/token-requests"] =
        json!(requests.to_string());
    let host = "flyte-auth-injector.flyte.svc";
    let client = reqwest::blocking::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .resolve(host, addr)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("https://{host}:{}/mutate", addr.port());
    let deadline = Instant::now() + Duration::from_secs(10);
    let response = loop {
        match client
            .post(&url)
            .body(serde_json::to_vec(&review).unwrap())
            .send()
        {
            Ok(response) => break response,
            Err(e) => assert!(Instant::now() < deadline, "not served: {e}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let answer: Value = response.json().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(answer["response"]["uid"], "steer");
    assert_eq!(answer["response"]["allowed"], false, "{answer}");
    assert!(answer["response"].get("patch").is_none());
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("client.clientSecret.envVar: \"FLYTE_AUTH_AGENT_TOKEN_REQUESTS\" must start with the secrets env prefix"),
        "{message}"
    );
}

#[test]
fn agent_limits_in_the_injector_config_reach_the_agent_as_its_own_env() {
    let text = std::fs::read_to_string(fixtures().join("config.yaml")).unwrap()
        + "\n# appended by the test\n";
    let text = text.replace(
        "agent:\n",
        "agent:\n  limits: {socket_max_connections: 8, request_head_timeout: 5s, max_inflight_calls: 16}\n",
    );
    let injector = Injector::new(Config::parse(&text, "config.yaml").unwrap());
    let body = review_with(json!([request("a", "a-oauth", "secret", json!({}))]));
    let reviewed = injector.review(&body);
    let review: Value = serde_json::from_slice(&reviewed.body).unwrap();
    let patch: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(review["response"]["patch"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    // The same env the agent crate makes of the section (its loader reads that back: config::limits).
    let env: std::collections::HashMap<String, String> = agent_env(&patch)
        .iter()
        .filter_map(|v| {
            Some((
                v["name"].as_str()?.to_string(),
                v["value"].as_str()?.to_string(),
            ))
        })
        .collect();
    assert_eq!(env["FLYTE_AUTH_AGENT_LIMITS_SOCKET_MAX_CONNECTIONS"], "8");
    let limits = flyte_auth_agent::config::limits_section_env(
        json!({"socket_max_connections": 8, "request_head_timeout": "5s", "max_inflight_calls": 16}),
        "expected",
    )
    .unwrap();
    for (k, v) in limits {
        assert_eq!(env.get(&k), Some(&v), "{k}");
    }

    let bad = text.replace(
        "socket_max_connections: 8",
        "socket_max_connections: 0, bogus: 1",
    );
    let problems = Config::parse(&bad, "config.yaml").unwrap_err().to_string();
    assert!(problems.contains("agent.limits.bogus"), "{problems}");
    let bad = text.replace("socket_max_connections: 8", "socket_max_connections: 0");
    let problems = Config::parse(&bad, "config.yaml").unwrap_err().to_string();
    assert!(
        problems.contains("agent.limits.socket_max_connections: \"0\" is not a whole number"),
        "{problems}"
    );
}
