//! The template's reading, table by table: the default template, custom ones, ambiguous splits,
//! unknown domains, orgs; the settings' checks; what a pod says of itself.

use super::*;
use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec};
use std::collections::BTreeMap;

fn rules(template: &str, domains: &[&str], org: Option<&str>) -> ScopeRules {
    ScopeRules::new(&ScopeSettings {
        namespace_template: template.into(),
        domains: domains.iter().map(|d| d.to_string()).collect(),
        org: org.map(str::to_string),
        fallback: None,
    })
    .unwrap_or_else(|e| panic!("{template}: {e:?}"))
}

const FLYTE_DOMAINS: &[&str] = &["development", "staging", "production"];

fn scope(project: &str, domain: &str, org: Option<&str>) -> Scope {
    Scope {
        project: project.into(),
        domain: domain.into(),
        org: org.map(str::to_string),
    }
}

#[test]
fn the_default_template_reads_project_dash_domain() {
    let r = ScopeRules::new(&ScopeSettings::default()).unwrap();
    for (ns, project, domain) in [
        ("flytesnacks-development", "flytesnacks", "development"),
        ("ml-team-development", "ml-team", "development"),
        ("ml-production", "ml", "production"),
        // The domain is the suffix: a project may end in another domain's name.
        ("a-staging-production", "a-staging", "production"),
        ("x-staging", "x", "staging"),
    ] {
        assert_eq!(
            r.of_namespace(Some(ns)),
            Ok(scope(project, domain, None)),
            "{ns}"
        );
    }
    for ns in [
        "flytesnacks",
        "flytesnacks-dev",           // not a known domain
        "flytesnacks-Development",   // not a namespace, not a domain
        "-development",              // no project
        "development",               // no project, no dash
        "a--development",            // "a-" is no DNS label, so no project
        "kube-system",               // not Flyte's
        "flytesnacks-development-x", // something after the domain
        "",
    ] {
        assert!(r.of_namespace(Some(ns)).is_err(), "{ns}");
    }
    assert_eq!(r.of_namespace(None), Err(NoMatch::NoNamespace));
    // What the API server never sends, only a forged review: refused before any reading, and
    // not echoed whole.
    let long = format!("{}-development", "a".repeat(1 << 20));
    let err = r.of_namespace(Some(&long)).unwrap_err();
    assert!(matches!(err, NoMatch::NotANamespace { .. }), "{err:?}");
    assert!(err.to_string().len() < 200, "{err}");
    let err = r.of_namespace(Some("ML-development")).unwrap_err();
    assert!(matches!(err, NoMatch::NotANamespace { .. }), "{err:?}");
}

#[test]
fn custom_templates_read_as_flyte_writes_them() {
    /// (template, namespace, the (project, domain) it reads as).
    type Case<'a> = (&'a str, &'a str, Option<(&'a str, &'a str)>);
    let cases: &[Case<'_>] = &[
        (
            "{{ domain }}-{{ project }}",
            "production-ml",
            Some(("ml", "production")),
        ),
        (
            "{{ domain }}-{{ project }}",
            "production-ml-team",
            Some(("ml-team", "production")),
        ),
        (
            "flyte-{{ project }}-{{ domain }}",
            "flyte-ml-staging",
            Some(("ml", "staging")),
        ),
        ("flyte-{{ project }}-{{ domain }}", "ml-staging", None),
        (
            "{{ project }}{{ domain }}",
            "mldevelopment",
            Some(("ml", "development")),
        ),
        (
            "{{ project }}-{{ domain }}-tasks",
            "ml-staging-tasks",
            Some(("ml", "staging")),
        ),
        ("{{ project }}-{{ domain }}-tasks", "ml-staging", None),
        // A placeholder used twice must read the same both times.
        (
            "{{ project }}-{{ domain }}-{{ project }}",
            "ml-staging-ml",
            Some(("ml", "staging")),
        ),
        (
            "{{ project }}-{{ domain }}-{{ project }}",
            "ml-staging-ai",
            None,
        ),
    ];
    for (template, ns, want) in cases {
        let got = rules(template, FLYTE_DOMAINS, None).of_namespace(Some(ns));
        match want {
            Some((p, d)) => assert_eq!(got, Ok(scope(p, d, None)), "{template} {ns}"),
            None => assert!(
                matches!(got, Err(NoMatch::NoReading { .. })),
                "{template} {ns}: {got:?}"
            ),
        }
    }
}

#[test]
fn an_ambiguous_namespace_matches_nothing_and_names_two_readings() {
    // Two domains where one ends the other: "a-team-prod" is (a, team-prod) or (a-team, prod).
    let r = rules(DEFAULT_TEMPLATE, &["prod", "team-prod"], None);
    let err = r.of_namespace(Some("a-team-prod")).unwrap_err();
    assert!(matches!(err, NoMatch::Ambiguous { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(r#"project "a", domain "team-prod""#)
            && message.contains(r#"project "a-team", domain "prod""#)
            && message.contains("a-team-prod"),
        "{message}"
    );
    assert_eq!(r.of_namespace(Some("b-prod")), Ok(scope("b", "prod", None)));
    // A project and a domain glued together can split two ways too.
    let r = rules("{{ project }}{{ domain }}", &["dev", "v"], None);
    assert!(matches!(
        r.of_namespace(Some("mldev")),
        Err(NoMatch::Ambiguous { .. })
    ));
}

#[test]
fn orgs_come_from_the_namespace_or_the_config() {
    let template = "{{ org }}-{{ project }}-{{ domain }}";
    // Without a configured org, "acme-ml-team-development" has two readings.
    let r = rules(template, FLYTE_DOMAINS, None);
    assert!(matches!(
        r.of_namespace(Some("acme-ml-team-development")),
        Err(NoMatch::Ambiguous { .. })
    ));
    assert_eq!(
        r.of_namespace(Some("acme-ml-development")),
        Ok(scope("ml", "development", Some("acme")))
    );
    // The configured org settles it, and a namespace of another org matches nothing.
    let r = rules(template, FLYTE_DOMAINS, Some("acme"));
    assert_eq!(
        r.of_namespace(Some("acme-ml-team-development")),
        Ok(scope("ml-team", "development", Some("acme")))
    );
    let err = r.of_namespace(Some("other-ml-development")).unwrap_err();
    assert!(err.to_string().contains(r#"org "acme""#), "{err}");
    // An org the template does not name is every scope's org.
    let r = rules(DEFAULT_TEMPLATE, FLYTE_DOMAINS, Some("acme"));
    assert_eq!(
        r.of_namespace(Some("ml-staging")),
        Ok(scope("ml", "staging", Some("acme")))
    );
}

fn problems(settings: ScopeSettings) -> Vec<(String, String)> {
    ScopeRules::new(&settings).err().unwrap_or_default()
}

#[test]
fn settings_are_checked_naming_the_field() {
    let with_template = |t: &str| ScopeSettings {
        namespace_template: t.into(),
        ..Default::default()
    };
    for (template, needle) in [
        ("{{ project }}", r#"no "{{ domain }}""#),
        ("{{ domain }}", r#"no "{{ project }}""#),
        ("flyte", r#"no "{{ project }}""#),
        (
            "{{project}}-{{domain}}",
            "is not a placeholder Flyte replaces",
        ),
        ("{{ project }}-{{ domain }}-{{ cluster }}", "{{ cluster }}"),
        (
            "{{ project }}_{{ domain }}",
            "lower-case letters, digits and '-' only",
        ),
        ("Flyte-{{ project }}-{{ domain }}", "lower-case letters"),
    ] {
        let p = problems(with_template(template));
        assert_eq!(p.len(), 1, "{template}: {p:?}");
        assert_eq!(p[0].0, "scope.namespace_template", "{template}");
        assert!(p[0].1.contains(needle), "{template}: {}", p[0].1);
    }
    let p = problems(ScopeSettings {
        domains: vec![],
        ..Default::default()
    });
    assert_eq!(p, [("scope.domains".to_string(), "is empty".to_string())]);
    let p = problems(ScopeSettings {
        domains: vec!["dev".into(), "Prod".into(), "dev".into()],
        ..Default::default()
    });
    let fields: Vec<&str> = p.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(fields, ["scope.domains[1]", "scope.domains[2]"], "{p:?}");
    assert!(p[1].1.contains("listed twice"), "{p:?}");
    let p = problems(ScopeSettings {
        org: Some("Acme Corp".into()),
        fallback: Some(FallbackScope {
            project: "-x".into(),
            domain: "dev".into(),
        }),
        ..Default::default()
    });
    let fields: Vec<&str> = p.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        fields,
        [
            "scope.org",
            "scope.fallback.project",
            "scope.fallback.domain"
        ],
        "{p:?}"
    );
    assert!(p[2].1.contains("not one of scope.domains"), "{p:?}");
}

fn pod(labels: &[(&str, &str)], env: &[(&str, &str)]) -> Pod {
    Pod {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "task".into(),
                env: Some(
                    env.iter()
                        .map(|(k, v)| EnvVar {
                            name: k.to_string(),
                            value: Some(v.to_string()),
                            value_from: None,
                        })
                        .collect(),
                ),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

#[test]
fn a_pod_that_names_another_scope_is_refused_naming_both() {
    let r = ScopeRules::new(&ScopeSettings::default()).unwrap();
    let ns = Some("flytesnacks-development");
    let agreeing = pod(
        &[("project", "flytesnacks"), ("domain", "development")],
        &[
            (ENV_EXECUTION_PROJECT, "flytesnacks"),
            (ENV_EXECUTION_DOMAIN, "development"),
            (ENV_EXECUTION_ID, "a1b2c3"),
        ],
    );
    let e = r.execution(ns, &agreeing, true).unwrap();
    assert_eq!(e.scope, Some(scope("flytesnacks", "development", None)));
    assert_eq!(e.id.as_deref(), Some("a1b2c3"));
    assert!(e.warnings.is_empty(), "{:?}", e.warnings);

    let lying = pod(
        &[("project", "payments"), ("domain", "development")],
        &[(ENV_EXECUTION_DOMAIN, "production")],
    );
    let problems = r.execution(ns, &lying, true).unwrap_err();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert_eq!(
        problems[0],
        r#"label "project" says project "payments", but namespace "flytesnacks-development" (scope.namespace_template "{{ project }}-{{ domain }}") is project "flytesnacks""#
    );
    assert!(
        problems[1].starts_with(
            r#"container "task" env FLYTE_INTERNAL_EXECUTION_DOMAIN says domain "production""#
        ) && problems[1].ends_with(r#"is domain "development""#),
        "{problems:?}"
    );
    // Without an Admin proxy there is no scope to keep, so nothing to disagree with.
    assert!(r.execution(ns, &lying, false).unwrap().scope.is_none());
}

#[test]
fn an_unmatched_namespace_gets_no_scope_or_the_fallback() {
    let r = ScopeRules::new(&ScopeSettings::default()).unwrap();
    let p = pod(&[("project", "ml")], &[]);
    let e = r.execution(Some("batch-jobs"), &p, true).unwrap();
    assert!(e.scope.is_none());
    assert_eq!(e.warnings.len(), 1);
    assert!(
        e.warnings[0].contains(r#"namespace "batch-jobs""#)
            && e.warnings[0].contains("no FlyteAdmin proxy")
            && e.warnings[0].contains("token requests are still served"),
        "{:?}",
        e.warnings
    );
    let r = ScopeRules::new(&ScopeSettings {
        fallback: Some(FallbackScope {
            project: "ml".into(),
            domain: "staging".into(),
        }),
        ..Default::default()
    })
    .unwrap();
    let e = r.execution(Some("batch-jobs"), &p, true).unwrap();
    assert_eq!(e.scope, Some(scope("ml", "staging", None)));
    assert!(
        e.warnings[0].contains("(scope.fallback)"),
        "{:?}",
        e.warnings
    );
    // The fallback is checked against the pod like a namespace's scope.
    let other = pod(&[("project", "payments")], &[]);
    let problems = r.execution(Some("batch-jobs"), &other, true).unwrap_err();
    assert!(
        problems[0].contains(r#"but scope.fallback is project "ml""#),
        "{problems:?}"
    );
}

#[test]
fn the_execution_id_comes_from_env_then_label_and_must_be_plain() {
    let r = ScopeRules::new(&ScopeSettings::default()).unwrap();
    let ns = Some("ml-staging");
    let by_label = pod(&[("execution-id", "f0e1d2")], &[]);
    assert_eq!(
        r.execution(ns, &by_label, false).unwrap().id.as_deref(),
        Some("f0e1d2")
    );
    let both = pod(&[("execution-id", "f0e1d2")], &[(ENV_EXECUTION_ID, "a1b2")]);
    assert_eq!(
        r.execution(ns, &both, false).unwrap().id.as_deref(),
        Some("a1b2")
    );
    let forged = pod(&[], &[(ENV_EXECUTION_ID, "x\n{\"level\":\"ERROR\"}")]);
    let e = r.execution(ns, &forged, false).unwrap();
    assert_eq!(e.id, None);
    assert!(
        e.warnings[0].contains("not a plain execution name"),
        "{:?}",
        e.warnings
    );
    let long = "a".repeat(129);
    let e = r
        .execution(ns, &pod(&[], &[(ENV_EXECUTION_ID, &long)]), false)
        .unwrap();
    assert_eq!(e.id, None);
}
