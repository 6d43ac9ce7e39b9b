//! The webhook's decisions, end to end through `Injector::review`: golden AdmissionReviews in
//! and out (`tests/fixtures/reviews/<case>/`), every mutated pod validated by PyPI
//! `kubernetes-validate --strict` against the Kubernetes 1.30 schemas (native sidecars), re-review
//! of every mutated pod (idempotency), one test per denial with its message, and a property
//! test that no body makes the handler panic.
//!
//! `UPDATE_GOLDEN=1 cargo test -p flyte-auth-injector --test review` rewrites `expected.json`;
//! review the diff like code.

#[path = "harness/mod.rs"]
#[allow(dead_code)]
mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use flyte_auth_injector::config::Config;
use flyte_auth_injector::review::{Injector, Outcome};
use serde_json::{json, Value};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn yaml_file(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn injector_for(config: &Path) -> Injector {
    let text = std::fs::read_to_string(config).unwrap();
    Injector::new(Config::parse(&text, &config.display().to_string()).unwrap())
}

fn default_injector() -> Injector {
    injector_for(&fixtures().join("config.yaml"))
}

/// The answer as JSON, with the base64 patch decoded (for reading and comparing).
struct Answer {
    outcome: Outcome,
    review: Value,
    patch: Option<Value>,
}

fn answer(injector: &Injector, review: &Value) -> Answer {
    let reviewed = injector.review(&serde_json::to_vec(review).unwrap());
    let mut review: Value = serde_json::from_slice(&reviewed.body).unwrap();
    let patch = review["response"].get("patch").map(|p| {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(p.as_str().expect("the patch is a base64 string"))
            .unwrap();
        serde_json::from_slice::<Value>(&bytes).unwrap()
    });
    if let Some(patch) = &patch {
        review["response"]["patch"] = patch.clone();
    }
    Answer {
        outcome: reviewed.outcome,
        review,
        patch,
    }
}

fn apply(object: &Value, patch: &Value) -> Value {
    let mut pod = object.clone();
    let patch: json_patch::Patch = serde_json::from_value(patch.clone()).unwrap();
    json_patch::patch(&mut pod, &patch).unwrap();
    pod
}

/// Validates Kubernetes objects with PyPI `kubernetes-validate --strict` (tests/k8s/validate.py).
fn kubernetes_validate(files: &[PathBuf]) {
    let python = workspace().join("tests/.venv/bin/python");
    assert!(
        python.exists(),
        "no Python venv at {}: run `tests/run` (it installs tests/requirements.txt)",
        python.display()
    );
    let out = Command::new(python)
        .arg(workspace().join("tests/k8s/validate.py"))
        .args(["--kubernetes-version", "1.30.0"])
        .args(files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubernetes-validate --strict refused a mutated pod:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn containers<'a>(pod: &'a Value, field: &str) -> Vec<&'a Value> {
    pod["spec"][field]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// What must hold of every mutated pod whatever the case: secrets reach the agent only.
fn assert_secrets_stay_in_the_agent(pod: &Value, agent: &str) {
    let secret_volumes: Vec<&str> = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v.get("secret").is_some() || v.get("projected").is_some())
        .filter_map(|v| v["name"].as_str())
        .filter(|n| n.starts_with(agent))
        .collect();
    let everyone = containers(pod, "containers")
        .into_iter()
        .chain(containers(pod, "initContainers"));
    for c in everyone.filter(|c| c["name"] != agent) {
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            assert!(
                !secret_volumes.contains(&m["name"].as_str().unwrap()),
                "container {} mounts the agent's secret volume {}",
                c["name"],
                m["name"]
            );
        }
        for e in c["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().unwrap();
            assert!(
                !name.starts_with("FLYTE_AUTH_AGENT_ADMIN") && !name.starts_with("_FSEC_"),
                "container {} got the agent's {name}",
                c["name"]
            );
        }
    }
}

#[test]
fn golden_reviews_and_their_pods_are_valid_and_stable() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let out = tempfile::tempdir().unwrap();
    let mut mutated = Vec::new();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(fixtures().join("reviews"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    assert!(cases.len() >= 8, "golden cases missing: {cases:?}");
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let config = case.join("config.yaml");
        let injector = if config.exists() {
            injector_for(&config)
        } else {
            default_injector()
        };
        let review = yaml_file(&case.join("review.yaml"));
        let got = answer(&injector, &review);
        let expected_path = case.join("expected.json");
        let pretty = serde_json::to_string_pretty(&got.review).unwrap() + "\n";
        if update {
            std::fs::write(&expected_path, &pretty).unwrap();
        } else {
            let expected = std::fs::read_to_string(&expected_path).unwrap_or_else(|_| {
                panic!("{name}: no expected.json; run with UPDATE_GOLDEN=1 and review it")
            });
            assert_eq!(
                pretty, expected,
                "{name}: the answer differs from expected.json"
            );
        }
        let response = &got.review["response"];
        assert_eq!(response["uid"], review["request"]["uid"], "{name}");
        assert_eq!(got.review["apiVersion"], "admission.k8s.io/v1", "{name}");
        assert_eq!(
            response["allowed"], true,
            "{name}: every golden case is allowed"
        );
        let Some(patch) = &got.patch else {
            assert_ne!(got.outcome, Outcome::Mutated, "{name}");
            continue;
        };
        assert_eq!(got.outcome, Outcome::Mutated, "{name}");
        assert_eq!(response["patchType"], "JSONPatch", "{name}");
        let pod = apply(&review["request"]["object"], patch);
        let agent = &injector.config().agent.name;
        assert_secrets_stay_in_the_agent(&pod, agent);
        let first = &containers(&pod, "initContainers")[0];
        assert_eq!(
            first["name"],
            agent.as_str(),
            "{name}: the agent runs first"
        );

        // Re-invocation (reinvocationPolicy: IfNeeded) sees the mutated pod: nothing more.
        let mut again = review.clone();
        again["request"]["object"] = pod.clone();
        let second = answer(&injector, &again);
        assert_eq!(second.outcome, Outcome::Unchanged, "{name}: re-review");
        assert!(second.patch.is_none(), "{name}: re-review patched again");

        let file = out.path().join(format!("{name}.json"));
        std::fs::write(&file, serde_json::to_vec_pretty(&pod).unwrap()).unwrap();
        mutated.push(file);
    }
    assert!(mutated.len() >= 5, "mutated cases: {mutated:?}");
    kubernetes_validate(&mutated);
}

fn agent_env(pod: &Value) -> serde_json::Map<String, Value> {
    containers(pod, "initContainers")[0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e.get("value")
                    .cloned()
                    .unwrap_or_else(|| e["valueFrom"].clone()),
            )
        })
        .collect()
}

fn mutated_pod(injector: &Injector, review: &Value) -> Value {
    let got = answer(injector, review);
    assert_eq!(got.outcome, Outcome::Mutated, "{}", got.review);
    apply(&review["request"]["object"], got.patch.as_ref().unwrap())
}

#[test]
fn propeller_annotations_reach_the_agent_in_propeller_order_as_flyteidl_json() {
    let mut review = yaml_file(&fixtures().join("reviews/propeller-tokens/review.yaml"));
    // t10 sorts before t2 as text; propeller's order is numeric.
    let annotations = review["request"]["object"]["metadata"]["annotations"]
        .as_object_mut()
        .unwrap();
    let t1 = annotations.remove("flyte.tokens/t1").unwrap();
    annotations.insert("flyte.tokens/t10".into(), t1);
    let pod = mutated_pod(&default_injector(), &review);
    let env = agent_env(&pod);
    let requests: Value =
        serde_json::from_str(env["FLYTE_AUTH_AGENT_TOKEN_REQUESTS"].as_str().unwrap()).unwrap();
    let names: Vec<&str> = requests
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["warehouse", "feature-store"]);
    assert_eq!(
        requests[1]["client"]["clientSecret"]["mountRequirement"],
        "ENV_VAR"
    );
    // The ENV_VAR secret: an env var named by flytekit's rule, from the Secret, agent only.
    assert_eq!(
        env["_FSEC_FEATURE-STORE_V2_CLIENT_SECRET"]["secretKeyRef"],
        json!({"name": "feature-store", "key": "Client_Secret", "optional": false})
    );
}

#[test]
fn init_only_mode_runs_once_without_socket_or_proxy() {
    let injector = injector_for(&fixtures().join("reviews/init-only/config.yaml"));
    let review = yaml_file(&fixtures().join("reviews/init-only/review.yaml"));
    let pod = mutated_pod(&injector, &review);
    let agent = containers(&pod, "initContainers")[0];
    assert_eq!(
        agent["args"],
        json!(["serve", "--once", "--once-timeout", "1m 30s"])
    );
    assert!(agent.get("restartPolicy").is_none());
    assert!(agent.get("startupProbe").is_none());
    let task = containers(&pod, "containers")[0];
    let names: Vec<&str> = task["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"FLYTE_TOKENS_PATH_PREFIX"));
    for absent in [
        "FLYTE_AUTH_AGENT_SOCKET",
        "FLYTE_PLATFORM_URL",
        "FLYTE_PLATFORM_INSECURE",
        "FLYTE_CREDENTIALS_AUTH_MODE",
        "FLYTE_CREDENTIALS_COMMAND",
    ] {
        assert!(!names.contains(&absent), "{absent} in init-only mode");
    }
}

#[test]
fn an_admin_mode_needs_its_settings_and_a_sidecar() {
    let problems = Config::parse(
        "mode: init-only\nadmin: {endpoint: 'dns:///a:81', mode: client-secret, client_id: x, client_secret: {group: g, key: k}}",
        "test",
    )
    .unwrap_err()
    .to_string();
    assert!(
        problems.contains("admin: the Admin proxy needs the sidecar"),
        "{problems}"
    );
    let problems = Config::parse(
        "admin: {endpoint: 'dns:///a:81', mode: jwt-bearer, client_id: x}",
        "test",
    )
    .unwrap_err()
    .to_string();
    assert!(
        problems.contains("admin.service_account_token: is missing (mode jwt-bearer"),
        "{problems}"
    );
    let problems = Config::parse(
        "admin: {endpoint: 'dns:///a:81', mode: client-secret, client_id: x, clientsecret: 1}\nagent: {name: Agent, log_format: xml}\nopt_in: {label: 'a b'}",
        "test",
    )
    .unwrap_err()
    .to_string();
    for needle in [
        "unknown field `clientsecret`",
        "agent.name: \"Agent\" is not a DNS-1123 label",
        "agent.log_format: \"xml\" is not text or json",
        "opt_in.label: \"a b\" is not a label key",
    ] {
        assert!(problems.contains(needle), "{needle:?} in:\n{problems}");
    }
    let problems = Config::parse("server: {reload_interval: soon}", "test")
        .unwrap_err()
        .to_string();
    assert!(
        problems.contains("server.reload_interval")
            && problems.contains("\"soon\" is not a duration"),
        "{problems}"
    );
}

#[test]
fn a_review_with_too_many_array_elements_is_refused_before_the_typed_parse() {
    let injector = default_injector();
    let with_env = |n: usize| {
        propeller_review(|r| {
            r["request"]["object"]["spec"]["containers"][0]["env"] =
                Value::Array((0..n).map(|i| json!({"name": format!("E{i}")})).collect())
        })
    };
    let review = with_env(10_000);
    let reviewed = injector.review(&serde_json::to_vec(&review).unwrap());
    assert_eq!(reviewed.outcome, Outcome::Invalid);
    let answer: Value = serde_json::from_slice(&reviewed.body).unwrap();
    assert_eq!(answer["response"]["uid"], review["request"]["uid"]);
    assert_eq!(answer["response"]["allowed"], false);
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("holds more than 10000 JSON array elements")
            && message.contains("(limits.review_array_items in the injector config)"),
        "{message}"
    );
    // Below the limit the pod is decided as usual.
    let got = answer_of(&injector, &with_env(9_000));
    assert_eq!(got, Outcome::Mutated);
}

fn answer_of(injector: &Injector, review: &Value) -> Outcome {
    answer(injector, review).outcome
}

#[test]
fn limits_are_checked_at_start() {
    let problems = Config::parse(
        "server: {max_concurrent_reviews: 0, body_timeout: 0s, max_connections: 0, request_head_timeout: 0s}\nlimits: {token_requests: 0, token_annotation_bytes: 300000, token_annotations_total_bytes: 10}",
        "test",
    )
    .unwrap_err()
    .to_string();
    for needle in [
        "server.max_concurrent_reviews: must be between 1 and 1024",
        "server.body_timeout: must be above zero",
        "server.max_connections: must be between 1 and 65536",
        "server.request_head_timeout: must be above zero",
        "limits.token_requests: must be at least 1",
        "limits.token_annotation_bytes: 300000 is not between 1024 and 262144",
        "limits.token_annotations_total_bytes: 10 is not between 1024 and 262144",
    ] {
        assert!(problems.contains(needle), "{needle:?} in:\n{problems}");
    }
    let defaults = Config::default();
    assert_eq!(defaults.server.max_body, 2 * 1024 * 1024);
    assert_eq!(defaults.limits.token_requests, 32);
    assert!(!defaults.agent.allow_local_idp);
}

#[test]
fn start_jitter_reaches_the_agent_and_must_fit_its_timeouts() {
    let injector = Injector::new(Config::parse("agent: {start_jitter: 20s}", "test").unwrap());
    let pod = mutated_pod(&injector, &propeller_review(|_| {}));
    assert_eq!(
        agent_env(&pod)["FLYTE_AUTH_AGENT_REFRESH_START_JITTER"],
        json!("20s")
    );
    // Off by default: a lone pod's agent asks at once.
    let pod = mutated_pod(&default_injector(), &propeller_review(|_| {}));
    assert!(!agent_env(&pod).contains_key("FLYTE_AUTH_AGENT_REFRESH_START_JITTER"));
    // The wait comes before the first token: the startup probe and --once must outlast it.
    let problems = Config::parse("agent: {start_jitter: 2m, once_timeout: 1m}", "test")
        .unwrap_err()
        .to_string();
    for needle in [
        "agent.start_jitter: must be shorter than agent.startup_timeout (2m)",
        "agent.start_jitter: must be shorter than agent.once_timeout (1m)",
    ] {
        assert!(problems.contains(needle), "{needle:?} in:\n{problems}");
    }
}

/// Start pacing (issue 16): each injected pod's agent gets its own first-call time, spaced at the
/// configured IdP rate by the pod's number of calls; a dry run takes none; off by default.
#[test]
fn start_pacing_spaces_the_pods_first_calls_at_the_idp_rate() {
    let injector = Injector::new(
        Config::parse("agent: {start_pacing: {rate: 10, burst: 2}}", "test").unwrap(),
    );
    let start_at = |pod: &Value| -> Option<u64> {
        agent_env(pod)
            .get("FLYTE_AUTH_AGENT_START_AT")
            .map(|v| v.as_str().unwrap().parse().unwrap())
    };
    let review = propeller_review(|_| {});
    let first = mutated_pod(&injector, &review);
    let calls = serde_json::from_str::<Vec<Value>>(
        agent_env(&first)["FLYTE_AUTH_AGENT_TOKEN_REQUESTS"]
            .as_str()
            .unwrap(),
    )
    .unwrap()
    .len() as u64;
    assert!(calls >= 2, "the fixture's pod asks for several tokens");
    let now = flyte_auth_agent::pacing::to_unix_millis(std::time::SystemTime::now()) as u64;
    let t1 = start_at(&first).expect("a paced pod gets its time");
    assert!(
        t1 <= now + 1000,
        "the first pod of a quiet IdP starts (almost) at once: {t1} vs {now}"
    );
    // A dry run of the same pod creates nothing, so it takes no time from the pods that follow.
    let dry = propeller_review(|r| r["request"]["dryRun"] = json!(true));
    assert_eq!(start_at(&mutated_pod(&injector, &dry)), None);
    let t2 = start_at(&mutated_pod(&injector, &review)).unwrap();
    let t3 = start_at(&mutated_pod(&injector, &review)).unwrap();
    // Each pod uses `calls` of the IdP's 10 per second: the next one is that many tenths later
    // (to the millisecond the env var carries).
    for (a, b) in [(t1, t2), (t2, t3)] {
        assert!(
            (b - a).abs_diff(calls * 100) <= 1,
            "{a} → {b}: expected {} ms apart",
            calls * 100
        );
    }
    let pod = mutated_pod(&default_injector(), &review);
    assert_eq!(start_at(&pod), None, "off by default");
}

#[test]
fn start_pacing_settings_are_checked() {
    for (yaml, needle) in [
        (
            "agent: {start_pacing: {rate: -1}}",
            "agent.start_pacing.rate: must be between 0 (off) and 100000 calls per second",
        ),
        (
            "agent: {start_pacing: {rate: 10, burst: 0}}",
            "agent.start_pacing.burst: must be between 1 and 100000",
        ),
        (
            "agent: {start_pacing: {rate: 10, max_delay: 0s}}",
            "agent.start_pacing.max_delay: must be above zero",
        ),
        (
            "agent: {start_jitter: 30s, once_timeout: 60s, start_pacing: {rate: 10, max_delay: 30s}}",
            "agent.start_pacing.max_delay: with agent.start_jitter must be shorter than agent.once_timeout (1m)",
        ),
        (
            "agent: {start_pacing: {rate: 10, brust: 5}}",
            "unknown field `brust`",
        ),
    ] {
        let problems = Config::parse(yaml, "test").unwrap_err().to_string();
        assert!(problems.contains(needle), "{yaml}: {needle:?} in:\n{problems}");
    }
}

/// A change to a review.
type Edit = Box<dyn FnOnce(&mut Value)>;

/// The propeller pod with `edit` applied to its review.
fn propeller_review(edit: impl FnOnce(&mut Value)) -> Value {
    let mut review = yaml_file(&fixtures().join("reviews/propeller-tokens/review.yaml"));
    edit(&mut review);
    review
}

fn annotate(review: &mut Value, key: &str, value: &str) {
    review["request"]["object"]["metadata"]["annotations"][key] = json!(value);
}

fn token_request_json(edit: impl FnOnce(&mut Value)) -> String {
    let mut r = json!({
        "name": "api",
        "type": "CLIENT_CREDENTIALS",
        "client": {"clientId": "c", "clientSecret": {"group": "api-oauth", "key": "secret"}},
        "tokenEndpoint": "https://idp.example.com/token"
    });
    edit(&mut r);
    json!([r]).to_string()
}

#[test]
fn every_denial_names_the_problem_and_patches_nothing() {
    let injector = default_injector();
    let b32 = flyte_auth_proto::annotation::encode_text;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "not base32",
            Box::new(|r| annotate(r, "flyte.tokens/t0", "NOT-BASE32!")),
            "annotation flyte.tokens/t0: is not base32 in flytepropeller's alphabet",
        ),
        (
            "not text format",
            Box::new(move |r| annotate(r, "flyte.tokens/t0", &b32("name: \"a\" bogus: 1"))),
            "annotation flyte.tokens/t0: is not a flyteidl.core.OAuth2TokenRequest in protobuf text format",
        ),
        (
            "not t<number>",
            Box::new(|r| annotate(r, "flyte.tokens/token", "x")),
            "annotation flyte.tokens/token: is not t<number>",
        ),
        (
            "json annotation not JSON",
            Box::new(|r| annotate(r, "flyte.org/token-requests", "[{")),
            "annotation flyte.org/token-requests: is not JSON",
        ),
        (
            "json annotation not an array",
            Box::new(|r| annotate(r, "flyte.org/token-requests", "{}")),
            "annotation flyte.org/token-requests: is not a JSON array of token requests",
        ),
        (
            "missing client id",
            Box::new(|r| {
                annotate(r, "flyte.org/token-requests", &token_request_json(|t| {
                    t["client"]["clientId"] = json!("")
                }))
            }),
            "flyte.org/token-requests[0].client.clientId: is missing",
        ),
        (
            "name not a file name",
            Box::new(|r| {
                annotate(r, "flyte.org/token-requests", &token_request_json(|t| t["name"] = json!("../etc")))
            }),
            "flyte.org/token-requests[0].name: \"../etc\" contains '/'",
        ),
        (
            "plain http IdP",
            Box::new(|r| {
                annotate(r, "flyte.org/token-requests", &token_request_json(|t| {
                    t["tokenEndpoint"] = json!("http://idp.example.com/token")
                }))
            }),
            "flyte.org/token-requests[0].tokenEndpoint: http://idp.example.com/token is plain http",
        ),
        (
            "duplicate across the two forms",
            Box::new(|r| {
                annotate(r, "flyte.org/token-requests", &token_request_json(|t| t["name"] = json!("warehouse")))
            }),
            "flyte.org/token-requests[0].name: duplicate token request name \"warehouse\"",
        ),
        (
            "unknown type",
            Box::new(|r| {
                annotate(r, "flyte.org/token-requests", &token_request_json(|t| t["type"] = json!("PASSWORD")))
            }),
            "flyte.org/token-requests[0].type: unknown token request type \"PASSWORD\"",
        ),
        (
            "group not a Secret name",
            Box::new(|r| {
                annotate(r, "flyte.org/token-requests", &token_request_json(|t| {
                    t["client"]["clientSecret"]["group"] = json!("My_Secret")
                }))
            }),
            "flyte.org/token-requests[0].client.clientSecret.group: is the Kubernetes Secret's name, but \"My_Secret\" is not a DNS-1123 subdomain",
        ),
        (
            "key not a Secret key",
            Box::new(|r| {
                annotate(r, "flyte.org/token-requests", &token_request_json(|t| {
                    t["client"]["clientSecret"]["key"] = json!("a/b")
                }))
            }),
            "flyte.org/token-requests[0].client.clientSecret.key: \"a/b\" is not a Secret data key",
        ),
        (
            "two keys, one file",
            Box::new(|r| {
                let mut two: Value = serde_json::from_str(&token_request_json(|t| {
                    t["client"]["clientSecret"]["key"] = json!("Secret")
                })).unwrap();
                let mut second = two[0].clone();
                second["name"] = json!("api2");
                second["client"]["clientSecret"]["key"] = json!("secret");
                two.as_array_mut().unwrap().push(second);
                annotate(r, "flyte.org/token-requests", &two.to_string())
            }),
            "keys \"Secret\" and \"secret\" of Secret \"api-oauth\" would be the same file",
        ),
        (
            "unknown credential mode",
            Box::new(|r| annotate(r, "flyte.org/auth-agent-admin-mode", "kerberos")),
            "annotation flyte.org/auth-agent-admin-mode: unknown credential mode \"kerberos\"",
        ),
        (
            "volume name taken",
            Box::new(|r| {
                r["request"]["object"]["spec"]["volumes"] =
                    json!([{"name": "flyte-auth-agent-tokens", "emptyDir": {}}])
            }),
            "the pod already has a volume named \"flyte-auth-agent-tokens\"",
        ),
        (
            "container name taken",
            Box::new(|r| {
                r["request"]["object"]["spec"]["initContainers"] =
                    json!([{"name": "flyte-auth-agent", "image": "someone/else"}])
            }),
            "the pod already has a container named \"flyte-auth-agent\"",
        ),
        (
            "mount path taken",
            Box::new(|r| {
                r["request"]["object"]["spec"]["containers"][0]["volumeMounts"] =
                    json!([{"name": "x", "mountPath": "/var/run/flyte/tokens/"}])
            }),
            "already mounts something at /var/run/flyte/tokens, where the agent's token files go",
        ),
        (
            "object not a Pod",
            Box::new(|r| r["request"]["object"]["spec"]["containers"] = json!("main")),
            "request.object is not a Pod",
        ),
    ];
    let count = cases.len();
    for (what, edit, needle) in cases {
        let review = propeller_review(edit);
        let got = answer(&injector, &review);
        let response = &got.review["response"];
        assert_eq!(got.outcome, Outcome::Denied, "{what}: {}", got.review);
        assert_eq!(response["allowed"], false, "{what}");
        assert!(got.patch.is_none(), "{what}: a denial carries no patch");
        assert_eq!(response["uid"], review["request"]["uid"], "{what}");
        let message = response["status"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("flyte-auth-injector: ") && message.contains(needle),
            "{what}: expected {needle:?} in {message:?}"
        );
    }
    assert_eq!(count, 18);
}

/// The denial message of `review` by `injector`, which must deny it without a patch.
fn denial(injector: &Injector, review: &Value) -> String {
    let got = answer(injector, review);
    assert_eq!(got.outcome, Outcome::Denied, "{}", got.review);
    assert_eq!(got.review["response"]["allowed"], false);
    assert!(got.patch.is_none(), "a denial carries no patch");
    let message = got.review["response"]["status"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.starts_with("flyte-auth-injector: "), "{message}");
    message
}

fn assert_contains_all(message: &str, needles: &[&str]) {
    for needle in needles {
        assert!(message.contains(needle), "{needle:?} not in {message:?}");
    }
}

/// The pod of the harness review with `n` token requests.
fn many_requests(n: usize, json: bool) -> Value {
    serde_json::from_slice(&harness::review_with_requests("many", n, json)).unwrap()
}

#[test]
fn too_many_token_requests_are_denied_before_any_is_decoded() {
    let injector = default_injector();
    // Propeller's form: 21,000 annotations, one of them undecodable. Only the count is looked
    // at, so that one's decode error never shows (nor would 21,000 decodes happen).
    let mut review = many_requests(21_000, false);
    review["request"]["object"]["metadata"]["annotations"]["flyte.tokens/t7"] =
        json!("NOT-BASE32!");
    let message = denial(&injector, &review);
    assert_contains_all(
        &message,
        &[
            "the pod has 21000 token requests (21000 flyte.tokens/* annotations, 0 in flyte.org/token-requests)",
            "at most 32 are allowed (limits.token_requests in the injector config)",
            "limits.token_annotations_total_bytes",
        ],
    );
    assert!(!message.contains("base32"), "decoded: {message}");
    assert!(message.len() < 1024, "a short message: {}", message.len());

    // The JSON form, as in issue 11 (2.9 MB): counted without being parsed into values.
    let review = many_requests(21_000, true);
    let message = denial(&injector, &review);
    assert_contains_all(
        &message,
        &[
            "the pod has 21000 token requests (0 flyte.tokens/* annotations, 21000 in flyte.org/token-requests)",
            "limits.token_requests",
            "annotation flyte.org/token-requests (",
            "over 32768 bytes, the most one token annotation may hold (limits.token_annotation_bytes in the injector config)",
        ],
    );

    // 32 is allowed; 33 is not; the limit is the config's.
    let got = answer(&injector, &many_requests(32, true));
    assert_eq!(got.outcome, Outcome::Mutated, "{}", got.review);
    let message = denial(&injector, &many_requests(33, false));
    assert!(
        message.contains("the pod has 33 token requests"),
        "{message}"
    );
    let small = Injector::new(Config::parse("limits: {token_requests: 2}", "test").unwrap());
    let message = denial(&small, &many_requests(3, true));
    assert!(
        message.contains("at most 2 are allowed (limits.token_requests"),
        "{message}"
    );
}

#[test]
fn oversized_token_annotations_are_denied_naming_the_limit() {
    let injector = default_injector();
    let b32 = flyte_auth_proto::annotation::encode_text;
    // One request whose client id alone is 30,000 characters: over 32 KiB in base32.
    let big = b32(&format!(
        "name: \"big\" client {{ client_id: \"{}\" client_secret {{ group: \"g\" key: \"k\" }} }} token_endpoint: \"https://idp.example.com/token\"",
        "c".repeat(30_000)
    ));
    let review = propeller_review(|r| annotate(r, "flyte.tokens/t0", &big));
    let message = denial(&injector, &review);
    assert_contains_all(
        &message,
        &[
            &format!(
                "annotation flyte.tokens/t0 ({} bytes): over 32768 bytes",
                big.len()
            ),
            "limits.token_annotation_bytes in the injector config",
        ],
    );
    // Three that fit one by one, but not together.
    let medium = b32(&format!(
        "name: \"m\" client {{ client_id: \"{}\" client_secret {{ group: \"g\" key: \"k\" }} }} token_endpoint: \"https://idp.example.com/token\"",
        "c".repeat(15_000)
    ));
    assert!(medium.len() < 32 * 1024);
    let review = propeller_review(|r| {
        for i in 0..3 {
            annotate(r, &format!("flyte.tokens/t{i}"), &medium);
        }
    });
    let message = denial(&injector, &review);
    assert_contains_all(
        &message,
        &[
            "the token annotations (flyte.tokens/*, flyte.org/token-requests) hold",
            "at most 65536 are allowed (limits.token_annotations_total_bytes in the injector config)",
        ],
    );
    assert!(
        !message.contains("limits.token_annotation_bytes"),
        "{message}"
    );
}

#[test]
fn token_requests_may_not_reach_the_executor_credential_or_the_pods_own_network() {
    let injector = default_injector();
    let json_request = |edit: Box<dyn FnOnce(&mut Value)>| {
        propeller_review(move |r| {
            annotate(r, "flyte.org/token-requests", &token_request_json(edit))
        })
    };
    let endpoint = |url: &'static str| -> Box<dyn FnOnce(&mut Value)> {
        Box::new(move |t| t["tokenEndpoint"] = json!(url))
    };
    let allow = "set agent.allow_local_idp in the injector config to allow it";
    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        (
            "the Admin client Secret, another key",
            json_request(Box::new(|t| {
                t["client"]["clientSecret"] = json!({"group": "flyte-secret-auth", "key": "other"})
            })),
            vec!["flyte.org/token-requests[0].client.clientSecret.group: \"flyte-secret-auth\" is the Admin client Secret (admin.client_secret in the injector config)"],
        ),
        (
            "the Admin client Secret, propeller's form",
            propeller_review(|r| {
                let text = "name: \"steal\" client { client_id: \"c\" client_secret { group: \"flyte-secret-auth\" key: \"client_secret\" } } token_endpoint: \"https://idp.example.com/token\"";
                annotate(r, "flyte.tokens/t5", &flyte_auth_proto::annotation::encode_text(text))
            }),
            vec!["flyte.tokens/t5.client.clientSecret.group: \"flyte-secret-auth\" is the Admin client Secret"],
        ),
        (
            "loopback",
            json_request(endpoint("http://127.0.0.1:8080/token")),
            vec!["flyte.org/token-requests[0].tokenEndpoint: http://127.0.0.1:8080/token is a loopback address (127.0.0.0/8)", allow],
        ),
        (
            "loopback, IPv6",
            json_request(endpoint("https://[::1]:8443/token")),
            vec!["tokenEndpoint: https://[::1]:8443/token is a loopback address (::1)", allow],
        ),
        (
            "localhost",
            json_request(Box::new(|t| {
                t.as_object_mut().unwrap().remove("tokenEndpoint");
                t["idpDiscoveryEndpoint"] = json!("https://idp.localhost:9000");
            })),
            vec!["flyte.org/token-requests[0].idpDiscoveryEndpoint: https://idp.localhost:9000/ is a loopback name (localhost)", allow],
        ),
        (
            "cloud metadata",
            json_request(endpoint("https://169.254.169.254/token")),
            vec!["tokenEndpoint: https://169.254.169.254/token is a link-local address (169.254.0.0/16", allow],
        ),
        (
            "link-local, IPv6",
            json_request(endpoint("https://[fe80::1]/token")),
            vec!["is a link-local address (fe80::/10)", allow],
        ),
        (
            "unspecified",
            json_request(endpoint("https://0.0.0.0/token")),
            vec!["tokenEndpoint: https://0.0.0.0/token is an unspecified address", allow],
        ),
        (
            "a reserved data key",
            json_request(Box::new(|t| t["client"]["clientSecret"]["key"] = json!("..data"))),
            vec!["flyte.org/token-requests[0].client.clientSecret.key: \"..data\" starts with '..', which Kubernetes reserves in secret volumes"],
        ),
    ];
    for (what, review, needles) in &cases {
        let message = denial(&injector, review);
        for needle in needles {
            assert!(
                message.contains(needle),
                "{what}: {needle:?} not in {message:?}"
            );
        }
    }

    // With the key set, a local IdP is the platform engineer's choice (tests, a node-local IdP).
    let text = std::fs::read_to_string(fixtures().join("config.yaml"))
        .unwrap()
        .replace("agent:\n", "agent:\n  allow_local_idp: true\n");
    let allowing = Injector::new(Config::parse(&text, "test").unwrap());
    for (what, review, _) in &cases[2..8] {
        let got = answer(&allowing, review);
        assert_eq!(got.outcome, Outcome::Mutated, "{what}: {}", got.review);
    }
    // The Secret and the key stay refused whatever the key says.
    for (_, review, _) in [&cases[0], &cases[8]] {
        denial(&allowing, review);
    }
}

#[test]
fn a_mode_the_injector_cannot_serve_is_denied_naming_what_is_missing() {
    let config = "admin: {endpoint: 'dns:///a:81', insecure: true, mode: client-secret, client_id: x, client_secret: {group: g, key: k}}";
    let injector = Injector::new(Config::parse(config, "test").unwrap());
    let review =
        propeller_review(|r| annotate(r, "flyte.org/auth-agent-admin-mode", "token-exchange"));
    let got = answer(&injector, &review);
    assert_eq!(got.outcome, Outcome::Denied);
    let message = got.review["response"]["status"]["message"]
        .as_str()
        .unwrap();
    assert!(
        message.contains("mode token-exchange is not configured in the injector (admin.service_account_token: is missing"),
        "{message}"
    );

    let no_admin = Injector::new(Config::default());
    let got = answer(&no_admin, &review);
    let message = got.review["response"]["status"]["message"]
        .as_str()
        .unwrap();
    assert!(
        message.contains("no FlyteAdmin proxy is configured"),
        "{message}"
    );
}

#[test]
fn reviews_that_are_not_ours_pass_untouched() {
    let injector = default_injector();
    let cases: Vec<(&str, Edit, Outcome)> = vec![
        (
            "not a pod",
            Box::new(|r| r["request"]["kind"]["kind"] = json!("Deployment")),
            Outcome::Skipped,
        ),
        (
            "a subresource",
            Box::new(|r| r["request"]["subResource"] = json!("status")),
            Outcome::Skipped,
        ),
        (
            "an UPDATE",
            Box::new(|r| r["request"]["operation"] = json!("UPDATE")),
            Outcome::Skipped,
        ),
        (
            "CONNECT",
            Box::new(|r| r["request"]["operation"] = json!("CONNECT")),
            Outcome::Skipped,
        ),
        (
            "another opt-in value",
            Box::new(|r| {
                r["request"]["object"]["metadata"]["labels"]["flyte.org/auth-agent"] =
                    json!("disabled")
            }),
            Outcome::Skipped,
        ),
    ];
    for (what, edit, outcome) in cases {
        let review = propeller_review(edit);
        let got = answer(&injector, &review);
        assert_eq!(got.outcome, outcome, "{what}");
        assert_eq!(got.review["response"]["allowed"], true, "{what}");
        assert!(got.patch.is_none(), "{what}");
    }
    // Opted in, but nothing to do: allowed with a warning that says why.
    let bare = Injector::new(Config::default());
    let review = yaml_file(&fixtures().join("reviews/admin-only/review.yaml"));
    let got = answer(&bare, &review);
    assert_eq!(got.outcome, Outcome::Unchanged);
    assert!(got.patch.is_none());
    let warning = got.review["response"]["warnings"][0].as_str().unwrap();
    assert!(
        warning.contains("has no token requests and no Admin proxy"),
        "{warning}"
    );
}

#[test]
fn bodies_that_are_not_reviews_are_refused_with_a_review() {
    let injector = default_injector();
    let uid = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        ("empty", Vec::new(), "", "the body is not an AdmissionReview"),
        ("not JSON", b"<xml/>".to_vec(), "", "the body is not an AdmissionReview"),
        (
            "unknown operation",
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": uid, "operation": "EXPLODE"}}).to_string().into_bytes(),
            uid,
            "the body is not an AdmissionReview",
        ),
        (
            "v1beta1",
            json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}).to_string().into_bytes(),
            "",
            "expected an AdmissionReview of admission.k8s.io/v1",
        ),
        (
            "no request",
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).to_string().into_bytes(),
            "",
            "the AdmissionReview has no request",
        ),
    ];
    for (what, body, want_uid, needle) in cases {
        let reviewed = injector.review(&body);
        assert_eq!(reviewed.outcome, Outcome::Invalid, "{what}");
        let review: Value = serde_json::from_slice(&reviewed.body).unwrap();
        assert_eq!(review["apiVersion"], "admission.k8s.io/v1", "{what}");
        assert_eq!(review["kind"], "AdmissionReview", "{what}");
        assert_eq!(review["response"]["uid"], want_uid, "{what}");
        assert_eq!(review["response"]["allowed"], false, "{what}");
        let message = review["response"]["status"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{what}: {message}");
    }
}

mod no_panic {
    use super::*;
    use proptest::prelude::*;

    fn json_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            ".{0,12}".prop_map(Value::from),
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        json_leaf().prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map("[a-zA-Z]{1,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Places in the propeller review where arbitrary JSON goes.
    const POINTERS: &[&str] = &[
        "/request/object/spec/containers/0/env",
        "/request/object/spec/containers/0",
        "/request/object/spec/volumes",
        "/request/object/spec/initContainers",
        "/request/object/metadata/annotations/flyte.org~1token-requests",
        "/request/object/metadata/labels",
        "/request/object/spec",
        "/request/kind",
        "/request/uid",
    ];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
            let reviewed = default_injector().review(&body);
            prop_assert!(serde_json::from_slice::<Value>(&reviewed.body).is_ok());
        }

        #[test]
        fn arbitrary_json_anywhere_in_a_real_review(
            at in 0..POINTERS.len(),
            value in json_value(),
            annotation in ".{0,64}",
            token in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut review = propeller_review(|_| {});
            if let Some(slot) = review.pointer_mut(POINTERS[at]) {
                *slot = value;
            }
            annotate(&mut review, "flyte.tokens/t1", &annotation);
            annotate(&mut review, "flyte.tokens/t2", &flyte_auth_proto::annotation::encode_text(&String::from_utf8_lossy(&token)));
            let reviewed = default_injector().review(&serde_json::to_vec(&review).unwrap());
            let answer: Value = serde_json::from_slice(&reviewed.body).unwrap();
            prop_assert_eq!(answer["kind"].as_str(), Some("AdmissionReview"));
        }
    }
}

/// flytekit's auth env in the task container of the admin-only pod, annotated with `asked`,
/// under `admin.task_auth: <task_auth>` (`None`: the default).
fn flytekit_auth_env(task_auth: Option<&str>, asked: Option<&str>) -> Vec<(String, String)> {
    let mut config = std::fs::read_to_string(fixtures().join("config.yaml")).unwrap();
    if let Some(mode) = task_auth {
        config.push_str(&format!("  task_auth: {mode}\n"));
    }
    let injector = Injector::new(Config::parse(&config, "task_auth config").unwrap());
    let mut review = yaml_file(&fixtures().join("reviews/admin-only/review.yaml"));
    if let Some(asked) = asked {
        annotate(&mut review, "flyte.org/auth-agent-flytekit-auth", asked);
    }
    let pod = mutated_pod(&injector, &review);
    containers(&pod, "containers")[0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            let name = e["name"].as_str().unwrap();
            name.starts_with("FLYTE_CREDENTIALS_")
                .then(|| (name.to_string(), e["value"].as_str().unwrap().to_string()))
        })
        .collect()
}

#[test]
fn flytekit_auth_follows_the_config_and_what_the_pod_says_its_image_has() {
    let mode = |env: &[(String, String)]| {
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        let mode = env
            .iter()
            .find(|(k, _)| k == "FLYTE_CREDENTIALS_AUTH_MODE")
            .map(|(_, v)| v.clone())
            .unwrap();
        (mode, names.contains(&"FLYTE_CREDENTIALS_COMMAND"))
    };
    let external = ("external_process".to_string(), true);
    let package = ("flyte_auth_agent".to_string(), false);
    // auto (the default): what the pod's annotation asks for, external_process without one.
    assert_eq!(mode(&flytekit_auth_env(None, None)), external);
    assert_eq!(
        mode(&flytekit_auth_env(None, Some("flyte_auth_agent"))),
        package
    );
    assert_eq!(
        mode(&flytekit_auth_env(Some("auto"), Some("external_process"))),
        external
    );
    // A platform's choice for every pod wins over the annotation.
    assert_eq!(
        mode(&flytekit_auth_env(
            Some("external_process"),
            Some("flyte_auth_agent")
        )),
        external
    );
    assert_eq!(
        mode(&flytekit_auth_env(Some("flyte_auth_agent"), None)),
        package
    );

    // Anything else in the annotation is the pod author's mistake, named in the denial.
    let mut review = yaml_file(&fixtures().join("reviews/admin-only/review.yaml"));
    annotate(&mut review, "flyte.org/auth-agent-flytekit-auth", "pkce");
    assert_contains_all(
        &denial(&default_injector(), &review),
        &[
            "annotation flyte.org/auth-agent-flytekit-auth: \"pkce\" is not a flytekit auth mode",
            "expected flyte_auth_agent or external_process",
        ],
    );
    let problems = Config::parse(
        "admin: {endpoint: 'dns:///a:81', mode: client-secret, client_id: x, client_secret: {group: g, key: k}, task_auth: standard}",
        "test",
    )
    .unwrap_err()
    .to_string();
    // Named once: serde_yaml_ng's message starts with the path the error already names.
    assert!(
        problems.contains("admin.task_auth: unknown variant `standard`, expected one of `auto`, `external_process`, `flyte_auth_agent`")
            && !problems.contains("task_auth: admin.task_auth"),
        "{problems}"
    );
}
