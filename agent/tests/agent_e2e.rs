//! End to end: the real agent binary against the real `oidc-provider` on loopback.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A pod with client secret `secret` for client `c` (group `g`) and one token request, "api".
fn api_pod(secret: &str, endpoint: (&str, &str)) -> (Pod, Value) {
    let pod = Pod::new();
    pod.secret("g", "client_secret", secret);
    (pod, json!([request("api", "c", "g", endpoint)]))
}

fn token_json(agent: &AgentProcess, name: &str) -> Value {
    let (status, body) = sget(
        agent.socket(),
        &format!("/v1/tokens/{name}"),
        "application/json",
    );
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// An RSA key pair made by node (fast, where RSA generation in a debug Rust build is not):
/// PKCS#8 PEM and public JWK.
fn rsa_key() -> (String, Value) {
    // The async generator: Node 20's generateKeyPairSync can deadlock in a garbage collection.
    let script = "require('node:crypto').generateKeyPair('rsa',{modulusLength:2048},(e,publicKey,privateKey)=>{\
        if(e)throw e;\
        console.log(JSON.stringify({pem:privateKey.export({type:'pkcs8',format:'pem'}),\
        jwk:{...publicKey.export({format:'jwk'}),use:'sig',alg:'RS256'}}))})";
    let out = std::process::Command::new("node")
        .args(["-e", script])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["pem"].as_str().unwrap().to_string(), v["jwk"].clone())
}

#[test]
fn mints_with_basic_post_and_private_key_jwt_and_files_match_the_api() {
    let (pem, jwk) = p256_key();
    let (rsa_pem, rsa_jwk) = rsa_key();
    let idp = Idp::start(json!({
        "audience": "flyteadmin",
        "clients": [
            {"client_id": "basic-client", "client_secret": "basic-secret-1", "token_endpoint_auth_method": "client_secret_basic"},
            {"client_id": "post-client", "client_secret": "post-secret-2", "token_endpoint_auth_method": "client_secret_post"},
            {"client_id": "jwt-client", "token_endpoint_auth_method": "private_key_jwt", "jwks": {"keys": [jwk]}},
            {"client_id": "rsa-client", "token_endpoint_auth_method": "private_key_jwt", "jwks": {"keys": [rsa_jwk]}},
        ]
    }));
    let pod = Pod::new();
    pod.secret("basic", "client_secret", "basic-secret-1");
    pod.secret("post", "client_secret", "post-secret-2");
    pod.secret("jwt", "client_secret", &pem);
    pod.secret("rsa", "client_secret", &rsa_pem);
    let mut post = request(
        "post",
        "post-client",
        "post",
        ("tokenEndpoint", &idp.token_endpoint()),
    );
    post["clientAuthMethod"] = json!("client_secret_post");
    post["scopes"] = json!(["all"]);
    let mut jwt = request(
        "jwt",
        "jwt-client",
        "jwt",
        ("idpDiscoveryEndpoint", &idp.discovery_url()),
    );
    jwt["clientAuthMethod"] = json!("private_key_jwt");
    let mut rsa = request(
        "rsa",
        "rsa-client",
        "rsa",
        ("tokenEndpoint", &idp.token_endpoint()),
    );
    rsa["clientAuthMethod"] = json!("private_key_jwt");
    let requests = json!([
        request(
            "basic",
            "basic-client",
            "basic",
            ("idpDiscoveryEndpoint", &idp.issuer)
        ),
        post,
        jwt,
        rsa,
    ]);
    let agent = AgentProcess::start(&pod, &["serve"], &pod.env(&requests));
    agent.wait_ready(Duration::from_secs(15));

    for (name, client) in [
        ("basic", "basic-client"),
        ("post", "post-client"),
        ("jwt", "jwt-client"),
        ("rsa", "rsa-client"),
    ] {
        let body = token_json(&agent, name);
        let token = body["access_token"].as_str().unwrap();
        pod.sensitive.add(token);
        assert_eq!(body["name"], name);
        assert_eq!(body["token_type"], "Bearer");
        let claims = idp.verify(token, "flyteadmin");
        assert_eq!(claims["client_id"], client, "{claims}");
        let expires_at = humantime::parse_rfc3339(body["expires_at"].as_str().unwrap()).unwrap();
        let exp = std::time::UNIX_EPOCH + Duration::from_secs(claims["exp"].as_u64().unwrap());
        let skew = exp
            .duration_since(expires_at)
            .unwrap_or_else(|e| e.duration());
        assert!(
            skew < Duration::from_secs(3),
            "expires_at {expires_at:?} vs exp {exp:?}"
        );
        assert_eq!(
            pod.token_file(name).as_deref(),
            Some(token),
            "file holds exactly the served token"
        );
        let (status, plain) = sget(agent.socket(), &format!("/v1/tokens/{name}"), "text/plain");
        assert_eq!((status, plain.as_str()), (200, token));
    }
    let methods: Vec<String> = serde_json::from_value(idp.stats()["auth_methods"].clone()).unwrap();
    for m in [
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
    ] {
        assert!(methods.iter().any(|x| x == m), "IdP saw {methods:?}");
    }
    assert_eq!(methods.len(), 4, "one IdP request per token: {methods:?}");
    let scope = idp.stats()["last_form"]["scope"].clone();
    assert!(scope.is_null() || scope == "all", "{scope}");

    let (code, _) = agent.stop();
    assert_eq!(code, 0);
}

#[test]
fn socket_api_contract() {
    let idp = Idp::with_clients(&[("c", "secret-api-1", "client_secret_basic")]);
    let (pod, requests) = api_pod("secret-api-1", ("idpDiscoveryEndpoint", &idp.issuer));
    let mut env = pod.env(&requests);
    env.push(("FLYTE_AUTH_AGENT_SOCKET_MODE".into(), "0660".into()));
    let agent = AgentProcess::start(&pod, &["serve"], &env);
    agent.wait_ready(Duration::from_secs(15));
    let token = token_json(&agent, "api")["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    pod.sensitive.add(&token);

    let mode = std::fs::metadata(pod.socket())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660);

    let (status, body) = sget(agent.socket(), "/v1/tokens/nope", "*/*");
    assert_eq!(status, 404);
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"], "unknown_token");
    assert!(
        err["message"].as_str().unwrap().contains("configured: api"),
        "{body}"
    );

    let (status, body) = sget(agent.socket(), "/v1/tokens", "*/*");
    assert_eq!(status, 200);
    assert!(
        !body.contains(&token),
        "the listing never carries token values"
    );
    let list: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["tokens"][0]["name"], "api");
    assert_eq!(list["tokens"][0]["status"], "valid");

    let (status, _) = sget(agent.socket(), "/v1/tokens/api%2F..", "*/*");
    assert_eq!(status, 404);
    let (status, body) = sget(agent.socket(), "/elsewhere", "*/*");
    assert_eq!((status, body.contains("not_found")), (404, true));

    // The health port serves health and metrics, never a token.
    let (status, metrics) = agent.health_get("/metrics");
    assert_eq!(status, 200);
    assert_contains(
        &metrics,
        "flyte_auth_agent_token_requests_total{name=\"api\",outcome=\"ok\"} 1",
    );
    assert_contains(&metrics, "flyte_auth_agent_cache_hits_total{name=\"api\"}");
    assert_contains(
        &metrics,
        "flyte_auth_agent_idp_request_duration_seconds_count{name=\"api\"} 1",
    );
    assert_contains(
        &metrics,
        "flyte_auth_agent_token_seconds_to_expiry{name=\"api\"}",
    );
    pod.sensitive.assert_absent("/metrics", &metrics);
    assert_eq!(agent.health_get("/v1/tokens/api").0, 404);
    assert_eq!(agent.health_get("/healthz").0, 200);

    // The CLI prints the token from the running agent, and names the problem otherwise.
    let out = std::process::Command::new(agent_bin())
        .args(["token", "api", "--socket"])
        .arg(pod.socket())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim_end(), token);
    let out = std::process::Command::new(agent_bin())
        .args(["token", "nope", "--socket"])
        .arg(pod.socket())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("404") && stderr.contains("no token request is named \"nope\""),
        "{stderr}"
    );

    let (code, _) = agent.stop();
    assert_eq!(code, 0);
    assert!(!pod.socket().exists(), "socket removed on shutdown");
}

#[test]
fn concurrent_socket_reads_share_one_idp_call() {
    let idp = Idp::with_clients(&[("c", "secret-conc-1", "client_secret_basic")]);
    // Slow token responses keep the name cold while every reader arrives.
    idp.fault(json!({"mode": "slow", "delay_ms": 700}));
    let (pod, requests) = api_pod("secret-conc-1", ("idpDiscoveryEndpoint", &idp.issuer));
    let agent = AgentProcess::start(&pod, &["serve"], &pod.env(&requests));
    let socket = agent.socket().to_path_buf();
    let bodies = rt().block_on(async {
        let reads = (0..200).map(|_| socket_get(&socket, "/v1/tokens/api", "text/plain"));
        futures_util::future::join_all(reads).await
    });
    let first = &bodies[0].1;
    pod.sensitive.add(first.clone());
    assert!(
        bodies.iter().all(|(s, b)| *s == 200 && b == first),
        "every reader got the same token"
    );
    assert_eq!(idp.token_requests(), 1);
    agent.stop();
}

#[test]
fn refresh_replaces_the_file_before_expiry_and_readers_never_see_a_gap() {
    let idp = Idp::start(
        json!({"accessTokenTTL": 4, "clients": [{"client_id": "c", "client_secret": "secret-refresh-1"}]}),
    );
    let (pod, requests) = api_pod("secret-refresh-1", ("tokenEndpoint", &idp.token_endpoint()));
    let agent = AgentProcess::start(&pod, &["serve"], &pod.env(&requests));
    agent.wait_ready(Duration::from_secs(15));

    let mut seen = std::collections::BTreeSet::new();
    let start = std::time::Instant::now();
    let mut reads = 0u64;
    // Bounded: at most 15 s of reads (three refreshes take about 9); stops once all are seen.
    while seen.len() < 4 && start.elapsed() < Duration::from_secs(15) {
        let content =
            std::fs::read_to_string(pod.tokens_dir().join("api")).expect("the file always exists");
        assert!(!content.is_empty(), "empty token file");
        if seen.insert(content.clone()) {
            pod.sensitive.add(content.clone());
            let claims = idp.verify(&content, "flyteadmin");
            let exp = std::time::UNIX_EPOCH + Duration::from_secs(claims["exp"].as_u64().unwrap());
            assert!(
                exp > std::time::SystemTime::now(),
                "file held an expired token"
            );
        }
        reads += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        seen.len() >= 4,
        "expected 3 refreshes of a 4 s token within 15 s, saw {} tokens",
        seen.len()
    );
    assert!(reads > 100);
    // Each token was checked when first seen; JWT verification also proves none was partial.
    let current = pod.token_file("api").unwrap();
    assert_eq!(token_json(&agent, "api")["access_token"], current.as_str());
    agent.stop();
}

fn retry_delays(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("token request failed"))
        .filter_map(|l| {
            let v = l.split("retry_in=").nth(1)?.split_whitespace().next()?;
            v.trim_matches('"').strip_suffix('s')?.parse().ok()
        })
        .collect()
}

fn failing_agent(idp: &Idp, fault: Value, extra_env: &[(&str, &str)]) -> (Pod, AgentProcess) {
    idp.fault(fault);
    let (pod, requests) = api_pod("secret-fault-1", ("idpDiscoveryEndpoint", &idp.issuer));
    let mut env = pod.env(&requests);
    env.extend(
        extra_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let agent = AgentProcess::start(&pod, &["serve"], &env);
    (pod, agent)
}

/// Waits for `n` failures in the log and returns the API's 503 message.
fn expect_failing(agent: &AgentProcess, pod: &Pod, n: usize, limit: Duration) -> String {
    wait_for("failures in the log", limit, || {
        (retry_delays(&agent.output()).len() >= n).then_some(())
    });
    let (status, body) = sget(agent.socket(), "/v1/tokens/api", "application/json");
    assert_eq!(status, 503, "{body}");
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"], "token_unavailable");
    pod.sensitive.assert_absent("503 body", &body);
    assert_eq!(agent.health_get("/readyz").0, 503);
    assert!(pod.token_file("api").is_none(), "no file without a token");
    err["message"].as_str().unwrap().to_string()
}

#[test]
fn idp_500_backs_off_exponentially_with_a_clear_error() {
    let idp = Idp::with_clients(&[("c", "secret-fault-1", "client_secret_basic")]);
    let (pod, agent) = failing_agent(
        &idp,
        json!({"mode": "status", "status": 500, "body": "{\"error\":\"server_error\"}"}),
        &[],
    );
    let msg = expect_failing(&agent, &pod, 3, Duration::from_secs(15));
    assert!(msg.contains("/token") && msg.contains("500"), "{msg}");
    let delays = retry_delays(&agent.output());
    // Jitter draws from the upper half of each step: 0.5–1 s, 1–2 s, 2–4 s.
    assert!(
        delays[1] >= 1.0 && delays[2] >= 2.0 && delays[2] > delays[0],
        "{delays:?}"
    );
    agent.stop();
}

#[test]
fn idp_429_retry_after_is_honoured() {
    let idp = Idp::with_clients(&[("c", "secret-fault-1", "client_secret_basic")]);
    let fault = json!({"mode": "status", "status": 429, "body": "", "headers": {"Retry-After": "3"}, "count": 1});
    let (pod, agent) = failing_agent(&idp, fault, &[]);
    wait_for("first failure", Duration::from_secs(10), || {
        (!retry_delays(&agent.output()).is_empty()).then_some(())
    });
    let delays = retry_delays(&agent.output());
    assert!(delays[0] >= 3.0, "Retry-After 3 s honoured: {delays:?}");
    assert!(agent.output().contains("429"), "{}", agent.output());
    // Readers during the back-off get the error without another IdP call.
    let (status, body) = sget(agent.socket(), "/v1/tokens/api", "application/json");
    assert_eq!(status, 503);
    assert_contains(&body, "Retry-After 3s");
    assert_eq!(idp.token_requests(), 1);
    // After the wait the fault is gone and the token arrives.
    agent.wait_ready(Duration::from_secs(10));
    assert_eq!(idp.token_requests(), 2);
    pod.sensitive.add(pod.token_file("api").unwrap());
    agent.stop();
}

#[test]
fn slow_idp_times_out() {
    let idp = Idp::with_clients(&[("c", "secret-fault-1", "client_secret_basic")]);
    let (pod, agent) = failing_agent(
        &idp,
        json!({"mode": "slow", "delay_ms": 5000}),
        &[("FLYTE_AUTH_AGENT_IDP_TIMEOUT", "500ms")],
    );
    let msg = expect_failing(&agent, &pod, 1, Duration::from_secs(10));
    assert_contains(&msg, "did not answer within 500ms");
    agent.stop();
}

#[test]
fn malformed_token_response_is_named() {
    let idp = Idp::with_clients(&[("c", "secret-fault-1", "client_secret_basic")]);
    let (pod, agent) = failing_agent(&idp, json!({"mode": "malformed"}), &[]);
    let msg = expect_failing(&agent, &pod, 1, Duration::from_secs(10));
    assert!(
        msg.contains("malformed response") && msg.contains("JSON"),
        "{msg}"
    );
    agent.stop();
}

#[test]
fn wrong_issuer_fails_discovery() {
    let idp = Idp::with_clients(&[("c", "secret-fault-1", "client_secret_basic")]);
    idp.control("discovery", json!({"issuer": "http://127.0.0.1:1/wrong"}));
    let (pod, agent) = failing_agent(&idp, json!({"mode": "none"}), &[]);
    let msg = expect_failing(&agent, &pod, 1, Duration::from_secs(10));
    assert!(
        msg.contains("OIDC discovery") && msg.contains("127.0.0.1:1/wrong"),
        "{msg}"
    );
    assert_eq!(
        idp.token_requests(),
        0,
        "no token request to an unverified issuer"
    );
    agent.stop();
}

#[test]
fn bad_secret_is_rejected_then_a_rotated_secret_works_without_restart() {
    let idp = Idp::with_clients(&[("c", "secret-rotated-1", "client_secret_basic")]);
    let (pod, requests) = api_pod("wrong-secret-9", ("idpDiscoveryEndpoint", &idp.issuer));
    pod.sensitive.add("secret-rotated-1");
    let agent = AgentProcess::start(&pod, &["serve"], &pod.env(&requests));
    let msg = expect_failing(&agent, &pod, 1, Duration::from_secs(10));
    assert!(
        msg.contains("HTTP 401") && msg.contains("invalid_client"),
        "{msg}"
    );
    // Kubernetes rotates the mounted Secret; the next attempt reads it anew.
    pod.secret("g", "client_secret", "secret-rotated-1");
    agent.wait_ready(Duration::from_secs(15));
    pod.sensitive.add(pod.token_file("api").unwrap());
    agent.stop();
}

#[test]
fn a_failing_idp_never_replaces_a_valid_token() {
    let idp = Idp::start(
        json!({"accessTokenTTL": 8, "clients": [{"client_id": "c", "client_secret": "secret-keep-1"}]}),
    );
    let (pod, requests) = api_pod("secret-keep-1", ("idpDiscoveryEndpoint", &idp.issuer));
    let agent = AgentProcess::start(&pod, &["serve"], &pod.env(&requests));
    agent.wait_ready(Duration::from_secs(15));
    let token = pod.token_file("api").unwrap();
    pod.sensitive.add(&token);
    idp.fault(json!({"mode": "status", "status": 503, "body": ""}));
    // The refresh at ~5–6 s fails; the valid token stays in the file and the API.
    wait_for("a failed refresh", Duration::from_secs(15), || {
        (!retry_delays(&agent.output()).is_empty()).then_some(())
    });
    assert_eq!(pod.token_file("api").as_deref(), Some(token.as_str()));
    assert_eq!(token_json(&agent, "api")["access_token"], token.as_str());
    // Once it expires the API says so, and the file still holds the last token, never nothing.
    wait_for("expiry", Duration::from_secs(10), || {
        (sget(agent.socket(), "/v1/tokens/api", "*/*").0 == 503).then_some(())
    });
    assert_eq!(pod.token_file("api").as_deref(), Some(token.as_str()));
    let (_, list) = sget(agent.socket(), "/v1/tokens", "*/*");
    assert_contains(&list, "\"expired\"");
    idp.fault(json!({"mode": "none"}));
    agent.wait_ready(Duration::from_secs(70));
    pod.sensitive.add(pod.token_file("api").unwrap());
    agent.stop();
}

#[test]
fn idp_down_keeps_the_token_and_reports_unreachable() {
    let mut idp = Some(Idp::start(
        json!({"accessTokenTTL": 8, "clients": [{"client_id": "c", "client_secret": "secret-down-1"}]}),
    ));
    let pod = Pod::new();
    pod.secret("g", "client_secret", "secret-down-1");
    let token_endpoint = idp.as_ref().unwrap().token_endpoint();
    let requests = json!([request("api", "c", "g", ("tokenEndpoint", &token_endpoint))]);
    let agent = AgentProcess::start(&pod, &["serve"], &pod.env(&requests));
    agent.wait_ready(Duration::from_secs(15));
    let token = pod.token_file("api").unwrap();
    pod.sensitive.add(&token);
    drop(idp.take());
    wait_for("an unreachable IdP", Duration::from_secs(15), || {
        agent.output().contains("cannot reach").then_some(())
    });
    assert_eq!(pod.token_file("api").as_deref(), Some(token.as_str()));
    let (_, list) = sget(agent.socket(), "/v1/tokens", "*/*");
    assert_contains(&list, "cannot reach");
    agent.stop();
}

#[test]
fn once_mode_writes_files_and_exits_with_status() {
    let idp = Idp::with_clients(&[("c", "secret-once-1", "client_secret_basic")]);
    let pod = Pod::new();
    pod.secret("g", "client_secret", "secret-once-1");
    let requests = json!([
        request("a", "c", "g", ("idpDiscoveryEndpoint", &idp.issuer)),
        request("b", "c", "g", ("tokenEndpoint", &idp.token_endpoint()))
    ]);
    let agent = AgentProcess::start(&pod, &["serve", "--once"], &pod.env(&requests));
    let (code, _) = agent.wait_exit(Duration::from_secs(20));
    assert_eq!(code, 0);
    for name in ["a", "b"] {
        let t = pod.token_file(name).unwrap();
        pod.sensitive.add(&t);
        idp.verify(&t, "flyteadmin");
    }
    assert!(!pod.socket().exists(), "init-only mode serves no socket");

    idp.fault(json!({"mode": "status", "status": 500, "body": ""}));
    let pod = Pod::new();
    pod.secret("g", "client_secret", "secret-once-1");
    let agent = AgentProcess::start(
        &pod,
        &["serve", "--once", "--once-timeout", "2s"],
        &pod.env(&requests),
    );
    let (code, out) = agent.wait_exit(Duration::from_secs(20));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("some tokens could not be fetched")
            && out.contains("no valid token for \"a\"")
            && out.contains("HTTP 500"),
        "{out}"
    );
}

#[test]
fn sigterm_drains_removes_the_socket_and_exits_zero() {
    let idp = Idp::with_clients(&[("c", "secret-term-1", "client_secret_basic")]);
    let (pod, requests) = api_pod("secret-term-1", ("idpDiscoveryEndpoint", &idp.issuer));
    // A stale socket file from a crashed agent is in the way.
    std::fs::create_dir_all(pod.socket().parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(pod.socket()).unwrap());
    // So is a temp file a crash left in the tokens dir.
    std::fs::create_dir_all(pod.tokens_dir()).unwrap();
    let stale = pod.tokens_dir().join(".flyte-auth-agent.api.1.0.tmp");
    std::fs::write(&stale, "partial").unwrap();
    let agent = AgentProcess::start(&pod, &["serve"], &pod.env(&requests));
    assert!(!stale.exists(), "stale temp file removed at start");
    agent.wait_ready(Duration::from_secs(15));
    pod.sensitive.add(pod.token_file("api").unwrap());
    // A second agent on the same socket refuses to take it over.
    let second = std::process::Command::new(agent_bin())
        .arg("serve")
        .env_clear()
        .envs(pod.env(&requests))
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&second.stderr).contains("in use by a running process"));
    let (code, out) = agent.stop();
    assert_eq!(code, 0, "{out}");
    assert_contains(&out, "SIGTERM received");
    assert!(!pod.socket().exists());
}

#[test]
fn invalid_configuration_exits_64_naming_each_field() {
    let pod = Pod::new();
    let requests = json!([
        {"name": "../x", "client": {"clientId": "c", "clientSecret": {"group": "g", "key": "client_secret"}}, "tokenEndpoint": "https://idp.example/t"},
        {"name": "ok", "client": {"clientId": "c", "clientSecret": {"group": "absent", "key": "client_secret"}}, "idpDiscoveryEndpoint": "https://idp.example"},
    ]);
    pod.secret("g", "client_secret", "secret-cfg-1");
    let out = std::process::Command::new(agent_bin())
        .arg("serve")
        .env_clear()
        .envs(pod.env(&requests))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_contains(&stderr, "[0].name: \"../x\" contains '/'");
    assert_contains(&stderr, "[1].client.clientSecret: secret not found");
    pod.sensitive.assert_absent("stderr", &stderr);

    let yaml = pod.dir.path().join("agent.yaml");
    std::fs::write(&yaml, "token_requests: [{name: a, tokenEndpoint: 'https://i/t', client: {clientId: c, clientSecret: {group: g, key: client_secret}}}]\nfile_mode: \"888\"\n").unwrap();
    let check = |env: Vec<(String, String)>| {
        std::process::Command::new(agent_bin())
            .args(["check", "--config"])
            .arg(&yaml)
            .env_clear()
            .envs(env)
            .output()
            .unwrap()
    };
    let env = vec![(
        "FLYTE_SECRETS_DEFAULT_DIR".to_string(),
        pod.secrets_dir().display().to_string(),
    )];
    let out = check(env.clone());
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("file_mode: \"888\" is not an octal file mode"));
    std::fs::write(&yaml, "token_requests: [{name: a, tokenEndpoint: 'https://i/t', client: {clientId: c, clientSecret: {group: g, key: client_secret}}}]\n").unwrap();
    let out = check(env);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 token request(s): a"));
}

#[test]
fn dev_mode_serves_a_verifiable_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(agent_bin())
        .args(["dev", "--health-addr", "127.0.0.1:0", "--dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = String::new();
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    while !out.contains("Ctrl-C") {
        out.push_str(&lines.next().expect("dev output").unwrap());
        out.push('\n');
    }
    let issuer = out
        .split("issuer at ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let socket = out
        .split("--unix-socket ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let health = out
        .split("curl http://")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    wait_for("dev agent ready", Duration::from_secs(15), || {
        let r = reqwest::blocking::get(format!("http://{health}/readyz")).ok()?;
        (r.status() == 200).then_some(())
    });
    let (status, body) = sget(
        std::path::Path::new(&socket),
        "/v1/tokens/demo",
        "application/json",
    );
    assert_eq!(status, 200, "{body}");
    let token: Value = serde_json::from_str(&body).unwrap();
    let token = token["access_token"].as_str().unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("tokens/demo")).unwrap(),
        token
    );
    // Verify against the embedded issuer's JWKS.
    let jwks: jsonwebtoken::jwk::JwkSet = reqwest::blocking::get(format!("{issuer}/jwks"))
        .unwrap()
        .json()
        .unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&["demo-api"]);
    v.set_issuer(&[issuer.as_str()]);
    let claims = jsonwebtoken::decode::<Value>(token, &key, &v)
        .unwrap()
        .claims;
    assert_eq!(claims["scope"], "read");
    std::process::Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let status = wait_for("dev exit", Duration::from_secs(10), || {
        child.try_wait().unwrap()
    });
    assert!(status.success());
}

#[test]
fn https_idp_needs_its_ca_and_works_with_it() {
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki(pki.path(), "127.0.0.1");
    let idp = Idp::start(json!({
        "tls": {"cert": cert, "key": key},
        "test_ca": ca,
        "clients": [{"client_id": "c", "client_secret": "secret-tls-1"}],
    }));
    assert!(idp.issuer.starts_with("https://"));
    let (pod, requests) = api_pod("secret-tls-1", ("idpDiscoveryEndpoint", &idp.issuer));

    // Without the CA the webpki roots do not trust it, and the error says why.
    let agent = AgentProcess::start(&pod, &["serve"], &pod.env(&requests));
    wait_for("a TLS failure", Duration::from_secs(10), || {
        (!retry_delays(&agent.output()).is_empty()).then_some(())
    });
    let (status, body) = sget(agent.socket(), "/v1/tokens/api", "*/*");
    assert_eq!(status, 503);
    assert!(
        body.contains("cannot reach") && body.to_lowercase().contains("certificate"),
        "{body}"
    );
    agent.stop();

    let mut env = pod.env(&requests);
    env.push(("FLYTE_AUTH_AGENT_CA_FILE".into(), ca.display().to_string()));
    let agent = AgentProcess::start(&pod, &["serve"], &env);
    agent.wait_ready(Duration::from_secs(15));
    let token = pod.token_file("api").unwrap();
    pod.sensitive.add(&token);
    idp.verify(&token, "flyteadmin");
    agent.stop();
}

#[test]
fn json_logs_carry_the_token_request_span() {
    let idp = Idp::with_clients(&[("c", "secret-json-1", "client_secret_basic")]);
    let (pod, requests) = api_pod("secret-json-1", ("idpDiscoveryEndpoint", &idp.issuer));
    let mut env = pod.env(&requests);
    env.push(("FLYTE_AUTH_AGENT_LOG_FORMAT".into(), "json".into()));
    let (code, out) =
        AgentProcess::start(&pod, &["serve", "--once"], &env).wait_exit(Duration::from_secs(20));
    assert_eq!(code, 0, "{out}");
    pod.sensitive.add(pod.token_file("api").unwrap());
    pod.sensitive.assert_absent("agent output", &out);
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let minted = lines
        .iter()
        .find(|l| l["message"] == "token minted")
        .expect("a 'token minted' line");
    assert_eq!(minted["level"], "INFO");
    assert_eq!(minted["span"]["name"], "token_request", "{minted}");
    assert_eq!(minted["span"]["token_name"], "api", "{minted}");
}
