//! The execution scope end to end through `Injector::review`: the agent container carries the
//! scope read from the review's namespace (never the pod's own `metadata.namespace`), a pod whose
//! labels or env name another scope is denied naming both, a namespace that matches no template
//! gets no Admin proxy (or the configured fallback) with a warning while its token requests are
//! still served, and the `scope` settings are checked at start naming the field.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use flyte_auth_agent::env::{
    ENV_ADMIN_DOMAIN, ENV_ADMIN_ORG, ENV_ADMIN_PREFIX, ENV_ADMIN_PROJECT, ENV_EXECUTION_ID,
    ENV_TOKEN_REQUESTS,
};
use flyte_auth_injector::config::Config;
use flyte_auth_injector::review::{Injector, Outcome};
use flyte_auth_injector::scope::ScopeSource;
use serde_json::{json, Map, Value};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The golden reviews' config with `extra` YAML appended.
fn injector(extra: &str) -> Injector {
    let base = std::fs::read_to_string(fixtures().join("config.yaml")).unwrap();
    let text = format!("{base}\n{extra}");
    Injector::new(Config::parse(&text, "scope test config").unwrap())
}

/// The propeller pod's review (labels project/domain, env FLYTE_INTERNAL_EXECUTION_*, two token
/// requests) with `edit` applied.
fn review(edit: impl FnOnce(&mut Value)) -> Value {
    let path = fixtures().join("reviews/propeller-tokens/review.yaml");
    let mut review: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut review);
    review
}

fn in_namespace(ns: &str) -> impl FnOnce(&mut Value) + '_ {
    move |r| r["request"]["namespace"] = json!(ns)
}

struct Answer {
    outcome: Outcome,
    scope: Option<ScopeSource>,
    review: Value,
    pod: Option<Value>,
}

impl Answer {
    fn warnings(&self) -> Vec<String> {
        self.review["response"]["warnings"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|w| w.as_str().unwrap().to_string())
            .collect()
    }

    fn message(&self) -> String {
        self.review["response"]["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn agent_env(&self) -> Map<String, Value> {
        let pod = self.pod.as_ref().expect("a mutated pod");
        pod["spec"]["initContainers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let value = e.get("value").cloned().unwrap_or(Value::Null);
                (e["name"].as_str().unwrap().to_string(), value)
            })
            .collect()
    }

    fn task_env_names(&self) -> Vec<String> {
        let pod = self.pod.as_ref().expect("a mutated pod");
        pod["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect()
    }
}

fn answer(injector: &Injector, review: &Value) -> Answer {
    let reviewed = injector.review(&serde_json::to_vec(review).unwrap());
    let answer: Value = serde_json::from_slice(&reviewed.body).unwrap();
    let pod = answer["response"]["patch"].as_str().map(|p| {
        let bytes = base64::engine::general_purpose::STANDARD.decode(p).unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        let mut pod = review["request"]["object"].clone();
        json_patch::patch(&mut pod, &patch).unwrap();
        pod
    });
    Answer {
        outcome: reviewed.outcome,
        scope: reviewed.scope,
        review: answer,
        pod,
    }
}

#[test]
fn the_agent_gets_the_scope_of_the_reviews_namespace() {
    // The pod's own metadata.namespace is the author's to write; only the review's counts.
    let got = answer(
        &injector(""),
        &review(|r| {
            r["request"]["object"]["metadata"]["namespace"] = json!("payments-production");
        }),
    );
    assert_eq!(got.outcome, Outcome::Mutated, "{}", got.review);
    assert_eq!(got.scope, Some(ScopeSource::Namespace));
    let env = got.agent_env();
    assert_eq!(env[ENV_ADMIN_PROJECT], "flytesnacks");
    assert_eq!(env[ENV_ADMIN_DOMAIN], "development");
    assert!(!env.contains_key(ENV_ADMIN_ORG), "no org configured");
    assert_eq!(env[ENV_EXECUTION_ID], "f7a1b2c3d4e5f6a7b8c9");
    assert!(got.warnings().is_empty(), "{:?}", got.warnings());

    // An author who leaves metadata.namespace out changes nothing.
    let got = answer(
        &injector(""),
        &review(|r| {
            r["request"]["object"]["metadata"]
                .as_object_mut()
                .unwrap()
                .remove("namespace");
        }),
    );
    assert_eq!(got.agent_env()[ENV_ADMIN_PROJECT], "flytesnacks");

    // A custom template with an org, and the org passed on.
    let injector = injector(
        "scope:\n  namespace_template: 'flyte-{{ org }}-{{ project }}-{{ domain }}'\n  org: acme\n",
    );
    let got = answer(
        &injector,
        &review(|r| {
            r["request"]["namespace"] = json!("flyte-acme-flytesnacks-development");
        }),
    );
    assert_eq!(got.outcome, Outcome::Mutated, "{}", got.review);
    let env = got.agent_env();
    assert_eq!(env[ENV_ADMIN_PROJECT], "flytesnacks");
    assert_eq!(env[ENV_ADMIN_DOMAIN], "development");
    assert_eq!(env[ENV_ADMIN_ORG], "acme");
}

#[test]
fn a_pod_naming_another_project_or_domain_is_denied_naming_both() {
    let injector = injector("");
    let cases: [(&str, &str, &str, &[&str]); 3] = [
        (
            "/request/object/metadata/labels/project",
            "payments",
            "project",
            &[
                r#"label "project" says project "payments""#,
                r#"namespace "flytesnacks-development""#,
                r#"is project "flytesnacks""#,
            ],
        ),
        (
            "/request/object/metadata/labels/domain",
            "production",
            "domain",
            &[
                r#"label "domain" says domain "production""#,
                r#"is domain "development""#,
            ],
        ),
        (
            "/request/object/spec/containers/0/env",
            "production",
            "env domain",
            &[
                r#"env FLYTE_INTERNAL_EXECUTION_DOMAIN says domain "production""#,
                r#"is domain "development""#,
            ],
        ),
    ];
    for (pointer, value, what, needles) in cases {
        let review = review(|r| {
            let target = r.pointer_mut(pointer).unwrap();
            match target {
                Value::Array(env) => {
                    for var in env.iter_mut() {
                        if var["name"] == "FLYTE_INTERNAL_EXECUTION_DOMAIN" {
                            var["value"] = json!(value);
                        }
                    }
                }
                other => *other = json!(value),
            }
        });
        let got = answer(&injector, &review);
        assert_eq!(got.outcome, Outcome::Denied, "{what}: {}", got.review);
        assert_eq!(got.scope, Some(ScopeSource::Disagreed), "{what}");
        assert!(got.pod.is_none(), "{what}: a denial carries no patch");
        let message = got.message();
        for needle in needles {
            assert!(
                message.contains(needle),
                "{what}: {needle:?} not in {message:?}"
            );
        }
    }
}

#[test]
fn an_unmatched_namespace_gets_no_admin_proxy_but_its_tokens() {
    let got = answer(&injector(""), &review(in_namespace("batch-jobs")));
    assert_eq!(got.outcome, Outcome::Mutated, "{}", got.review);
    assert_eq!(got.scope, Some(ScopeSource::Unmatched));
    let warnings = got.warnings();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains(r#"namespace "batch-jobs""#)
                && w.contains("no FlyteAdmin proxy")
                && w.contains("scope.fallback")),
        "{warnings:?}"
    );
    let env = got.agent_env();
    assert!(
        env.contains_key(ENV_TOKEN_REQUESTS),
        "token requests still served"
    );
    let admin: Vec<&String> = env
        .keys()
        .filter(|k| k.starts_with(ENV_ADMIN_PREFIX))
        .collect();
    assert!(admin.is_empty(), "no Admin env: {admin:?}");
    assert_eq!(
        env[ENV_EXECUTION_ID], "f7a1b2c3d4e5f6a7b8c9",
        "audit id kept"
    );
    let task = got.task_env_names();
    assert!(!task.iter().any(|n| n == "FLYTE_PLATFORM_URL"), "{task:?}");
    // The executor's Secret is not mounted for a pod that has no proxy.
    let pod = got.pod.as_ref().unwrap();
    let secrets: Vec<&Value> = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.pointer("/secret/secretName"))
        .collect();
    assert!(
        !secrets.contains(&&json!("flyte-secret-auth")),
        "{secrets:?}"
    );

    // A pod that wanted only the proxy is left alone, saying why.
    let got = answer(
        &injector(""),
        &review(|r| {
            in_namespace("batch-jobs")(r);
            r["request"]["object"]["metadata"]
                .as_object_mut()
                .unwrap()
                .remove("annotations");
        }),
    );
    assert_eq!(got.outcome, Outcome::Unchanged, "{}", got.review);
    assert!(got.pod.is_none());
    let warnings = got.warnings();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains("no FlyteAdmin proxy"), "{warnings:?}");
    assert!(warnings[1].contains("not added"), "{warnings:?}");
}

#[test]
fn an_unmatched_namespace_gets_the_fallback_scope_when_configured() {
    let injector = injector("scope:\n  fallback: {project: flytesnacks, domain: development}\n");
    let got = answer(&injector, &review(in_namespace("batch-jobs")));
    assert_eq!(got.outcome, Outcome::Mutated, "{}", got.review);
    assert_eq!(got.scope, Some(ScopeSource::Fallback));
    let env = got.agent_env();
    assert_eq!(env[ENV_ADMIN_PROJECT], "flytesnacks");
    assert_eq!(env[ENV_ADMIN_DOMAIN], "development");
    assert!(got
        .task_env_names()
        .iter()
        .any(|n| n == "FLYTE_PLATFORM_URL"));
    assert!(
        got.warnings()
            .iter()
            .any(|w| w.contains(r#"namespace "batch-jobs""#) && w.contains("(scope.fallback)")),
        "{:?}",
        got.warnings()
    );
    // The fallback is held against the pod's labels like a namespace's scope.
    let got = answer(
        &injector,
        &review(|r| {
            in_namespace("batch-jobs")(r);
            r["request"]["object"]["metadata"]["labels"]["project"] = json!("payments");
        }),
    );
    assert_eq!(got.outcome, Outcome::Denied, "{}", got.review);
    assert!(
        got.message()
            .contains(r#"but scope.fallback is project "flytesnacks""#),
        "{}",
        got.message()
    );
}

#[test]
fn scope_settings_are_checked_at_start_naming_the_field() {
    let problems = Config::parse(
        "scope:\n  namespace_template: '{{ project }}'\n  domains: [dev, dev]\n  fallback: {project: ml, domain: prod}\n",
        "config file scope.yaml",
    )
    .unwrap_err()
    .to_string();
    for needle in [
        r#"config file scope.yaml: scope.namespace_template: "{{ project }}" has no "{{ domain }}""#,
        r#"scope.domains[1]: "dev" is listed twice"#,
        r#"scope.fallback.domain: "prod" is not one of scope.domains"#,
    ] {
        assert!(problems.contains(needle), "{needle:?} in:\n{problems}");
    }
    let problems = Config::parse("scope: {template: x}", "test")
        .unwrap_err()
        .to_string();
    assert!(problems.contains("scope"), "{problems}");
    // One project for every pod's proxy would undo the scope: the admin section cannot set it.
    let base = std::fs::read_to_string(fixtures().join("config.yaml")).unwrap();
    let with_project = base.replace(
        "  mode: client-secret\n",
        "  mode: client-secret\n  project: flytesnacks\n",
    );
    assert_ne!(with_project, base);
    let problems = Config::parse(&with_project, "test")
        .unwrap_err()
        .to_string();
    assert!(problems.contains("admin.project"), "{problems}");
}
