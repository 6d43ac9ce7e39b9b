//! `serve --once` (init-only mode) against the real `oidc-provider`: a refusal that names the
//! client ends it at once with the reason; a transient failure is still retried.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[test]
fn once_with_a_wrong_client_secret_fails_at_once_naming_invalid_client() {
    let idp = Idp::with_clients(&[("c", "secret-right-1", "client_secret_basic")]);
    let pod = Pod::new();
    pod.secret("g", "client_secret", "secret-wrong-1");
    pod.sensitive.add("secret-right-1");
    let requests = json!([request(
        "api",
        "c",
        "g",
        ("tokenEndpoint", &idp.token_endpoint())
    )]);
    // A five-minute retry budget: only failing fast lets this finish within the wait below.
    let agent = AgentProcess::start(
        &pod,
        &["serve", "--once", "--once-timeout", "300s"],
        &pod.env(&requests),
    );
    let (code, out) = agent.wait_exit(Duration::from_secs(30));
    assert_eq!(code, 1, "{out}");
    assert_contains(&out, "no valid token for \"api\"");
    assert_contains(&out, "HTTP 401");
    assert_contains(&out, "invalid_client");
    assert_eq!(
        idp.token_requests(),
        1,
        "a permanent refusal is not retried"
    );
    assert!(pod.token_file("api").is_none());
}

#[test]
fn once_still_retries_a_transient_failure() {
    let idp = Idp::with_clients(&[("c", "secret-once-2", "client_secret_basic")]);
    idp.fault(json!({"mode": "status", "status": 500, "body": "{\"error\":\"server_error\"}", "count": 2}));
    let pod = Pod::new();
    pod.secret("g", "client_secret", "secret-once-2");
    let requests = json!([request(
        "api",
        "c",
        "g",
        ("tokenEndpoint", &idp.token_endpoint())
    )]);
    let agent = AgentProcess::start(
        &pod,
        &["serve", "--once", "--once-timeout", "60s"],
        &pod.env(&requests),
    );
    let (code, out) = agent.wait_exit(Duration::from_secs(30));
    assert_eq!(code, 0, "{out}");
    assert_eq!(idp.token_requests(), 3, "two failures, then the token");
    let token = pod.token_file("api").expect("token written");
    pod.sensitive.add(&token);
    idp.verify(&token, "flyteadmin");
}
