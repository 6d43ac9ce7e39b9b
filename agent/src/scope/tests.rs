//! Table tests of the method rules and the walk, and a property test over every request type
//! of Admin's services: a foreign project, domain or org at any identifier path never passes;
//! the execution's own scope everywhere passes for every method a task may call.

use super::*;
use proptest::prelude::*;
use prost::Message as _;

fn own() -> Scope {
    Scope {
        project: Some("flytesnacks".into()),
        domain: Some("development".into()),
        org: None,
    }
}

fn frame(m: &DynamicMessage) -> Vec<u8> {
    let bytes = m.encode_to_vec();
    let mut out = vec![0];
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(&bytes);
    out
}

fn input(path: &str) -> MessageDescriptor {
    let policy = Policy::new(own()).with_flyte2();
    policy.methods[path].input.clone()
}

/// A message of `desc` with string `value`s set at `paths` (dotted field names; a repeated
/// message field gets one element).
fn build(desc: &MessageDescriptor, paths: &[(&[String], &str)]) -> DynamicMessage {
    let mut m = DynamicMessage::new(desc.clone());
    for (path, value) in paths {
        set(&mut m, path, value);
    }
    m
}

fn set(m: &mut DynamicMessage, path: &[String], value: &str) {
    let desc = m.descriptor();
    let field = desc.get_field_by_name(&path[0]).unwrap();
    if path.len() == 1 {
        m.set_field(&field, Value::String(value.to_string()));
        return;
    }
    let child_desc = match field.kind() {
        prost_reflect::Kind::Message(d) => d,
        _ => unreachable!(),
    };
    if field.is_list() {
        let list = m.get_field_mut(&field);
        let Value::List(items) = list else {
            unreachable!()
        };
        if items.is_empty() {
            items.push(Value::Message(DynamicMessage::new(child_desc)));
        }
        let Value::Message(child) = &mut items[0] else {
            unreachable!()
        };
        set(child, &path[1..], value);
    } else if field.is_map() {
        let value_field = child_desc.map_entry_value_field();
        let prost_reflect::Kind::Message(vd) = value_field.kind() else {
            unreachable!()
        };
        let map = m.get_field_mut(&field);
        let Value::Map(entries) = map else {
            unreachable!()
        };
        let entry = entries
            .entry(prost_reflect::MapKey::String("k".into()))
            .or_insert_with(|| Value::Message(DynamicMessage::new(vd)));
        let Value::Message(child) = entry else {
            unreachable!()
        };
        set(child, &path[1..], value);
    } else {
        let Value::Message(child) = m.get_field_mut(&field) else {
            unreachable!()
        };
        set(child, &path[1..], value);
    }
}

/// Every path (at most `depth` messages deep, no message type twice on a path) to a string
/// field the policy reads, with its part.
fn scope_paths(desc: &MessageDescriptor, depth: usize) -> Vec<(Vec<String>, Part)> {
    let mut out = Vec::new();
    let mut stack = vec![desc.full_name().to_string()];
    collect(desc, depth, &mut Vec::new(), &mut stack, &mut out);
    out
}

fn collect(
    desc: &MessageDescriptor,
    depth: usize,
    prefix: &mut Vec<String>,
    stack: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, Part)>,
) {
    for field in desc.fields() {
        prefix.push(field.name().to_string());
        match field.kind() {
            prost_reflect::Kind::String if !field.is_list() && !field.is_map() => {
                if let Some(part) = part_of(desc, &field) {
                    out.push((prefix.clone(), part));
                }
            }
            prost_reflect::Kind::Message(child) if depth > 0 => {
                let child = if field.is_map() {
                    match child.map_entry_value_field().kind() {
                        prost_reflect::Kind::Message(v) => Some(v),
                        _ => None,
                    }
                } else {
                    Some(child)
                };
                if let Some(child) = child {
                    if !stack.contains(&child.full_name().to_string())
                        && child.full_name() != "google.protobuf.Any"
                    {
                        stack.push(child.full_name().to_string());
                        collect(&child, depth - 1, prefix, stack, out);
                        stack.pop();
                    }
                }
            }
            _ => {}
        }
        prefix.pop();
    }
}

#[test]
fn every_admin_method_has_a_rule_and_the_table_is_as_documented() {
    let policy = Policy::new(own()).with_flyte2();
    let admin = |p: &&String| !p.starts_with("/flyteidl2.");
    assert_eq!(
        policy.methods.keys().filter(admin).count(),
        flyte_auth_proto::services::paths().count()
    );
    let with = |rule| {
        let mut v: Vec<&str> = policy
            .methods
            .iter()
            .filter(|(p, e)| admin(p) && e.rule == rule)
            .map(|(p, _)| p.rsplit('/').next().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        with(Rule::Refused),
        [
            "CreateNodeEvent",
            "CreateTaskEvent",
            "CreateWorkflowEvent",
            "DeleteProjectAttributes",
            "DeleteProjectDomainAttributes",
            "DeleteWorkflowAttributes",
            "RegisterProject",
            "UpdateNamedEntity",
            "UpdateProject",
            "UpdateProjectAttributes",
            "UpdateProjectDomainAttributes",
            "UpdateWorkflowAttributes",
        ]
    );
    assert_eq!(
        with(Rule::ReadOnly),
        ["GetDomains", "GetVersion", "ListProjects", "UserInfo"]
    );
    assert_eq!(
        with(Rule::Open),
        ["GetOAuth2Metadata", "GetPublicClientConfig"]
    );
    assert_eq!(
        with(Rule::ProjectLevel),
        ["GetProject", "GetProjectAttributes"]
    );
}

#[test]
fn every_flyte2_method_has_a_rule_and_the_table_is_as_documented() {
    let policy = Policy::new(own()).with_flyte2();
    let flyte2: Vec<_> = policy
        .methods
        .iter()
        .filter(|(p, _)| p.starts_with("/flyteidl2."))
        .collect();
    // The services the Connect port proxies (`FLYTE2_METHODS`, checked against the pinned
    // flyteidl2 by agent/tests/flyte2.rs and against this table in proxy::connect's tests).
    assert_eq!(flyte2.len(), 45);
    let with = |rule| {
        let mut v: Vec<&str> = flyte2
            .iter()
            .filter(|(_, e)| e.rule == rule)
            .map(|(p, _)| p.trim_start_matches("/flyteidl2."))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        with(Rule::Refused),
        [
            "actions.ActionsService/Update",
            "project.ProjectService/CreateProject",
            "project.ProjectService/UpdateProject",
            "workflow.StateService/Put",
        ]
    );
    assert_eq!(
        with(Rule::ReadOnly),
        [
            "auth.IdentityService/UserInfo",
            "project.ProjectService/ListProjects"
        ]
    );
    assert_eq!(
        with(Rule::Open),
        [
            "auth.AuthMetadataService/GetOAuth2Metadata",
            "auth.AuthMetadataService/GetPublicClientConfig"
        ]
    );
    assert_eq!(
        with(Rule::ProjectLevel),
        ["project.ProjectService/GetProject"]
    );
    assert_eq!(with(Rule::Scoped).len(), 36);
}

#[test]
fn flyte2_methods_are_unknown_without_a_connect_port() {
    let path = "/flyteidl2.workflow.RunService/ListRuns";
    let e = Policy::new(own()).admit(path).unwrap_err();
    assert_eq!(e.reason, Reason::UnknownMethod);
    assert!(Policy::new(own()).with_flyte2().admit(path).is_ok());
}

/// flyteidl2's identifiers: `ProjectIdentifier` names the project `name` and the org
/// `organization`; a run's own `org`, `project`, `domain`.
#[test]
fn flyte2_identifiers_are_read_in_both_spellings() {
    let policy = Policy::new(Scope {
        org: Some("acme".into()),
        ..own()
    })
    .with_flyte2();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let path = "/flyteidl2.workflow.RunService/ListRuns";
    let entry = policy.admit(path).unwrap().unwrap();
    let (org, name, domain) = (
        s(&["project_id", "organization"]),
        s(&["project_id", "name"]),
        s(&["project_id", "domain"]),
    );
    let list = |o: &str, p: &str, d: &str| {
        let m = build(&entry.input, &[(&org, o), (&name, p), (&domain, d)]);
        policy.check_message(path, entry, &m.encode_to_vec())
    };
    assert_eq!(
        list("acme", "flytesnacks", "development").unwrap(),
        Named {
            project: Some("flytesnacks".into()),
            domain: Some("development".into()),
        }
    );
    let e = list("acme", "payroll", "development").unwrap_err();
    assert_eq!(e.reason, Reason::ForeignProject);
    assert_eq!(
        e.to_string(),
        "flyte-auth-agent: flyteidl2.workflow.RunService/ListRuns: project_id.name \"payroll\" is not this execution's project \"flytesnacks\""
    );
    assert_eq!(
        list("acme", "flytesnacks", "production")
            .unwrap_err()
            .reason,
        Reason::ForeignDomain
    );
    assert_eq!(
        list("other", "flytesnacks", "development")
            .unwrap_err()
            .reason,
        Reason::ForeignOrg
    );
    // ListRuns by org alone names no project.
    let m = build(&entry.input, &[(&s(&["org"]), "acme")]);
    assert_eq!(
        policy
            .check_message(path, entry, &m.encode_to_vec())
            .unwrap_err()
            .reason,
        Reason::Unscoped
    );
    // A nested run identifier (EnqueueAction's action_id.run) in the other spelling.
    let path = "/flyteidl2.workflow.QueueService/EnqueueAction";
    let entry = policy.admit(path).unwrap().unwrap();
    let run = |f: &str| s(&["action_id", "run", f]);
    let m = build(
        &entry.input,
        &[
            (&run("org"), "acme"),
            (&run("project"), "flytesnacks"),
            (&run("domain"), "staging"),
        ],
    );
    let e = policy
        .check_message(path, entry, &m.encode_to_vec())
        .unwrap_err();
    assert_eq!(
        e.detail,
        "action_id.run.domain \"staging\" is not this execution's domain \"development\""
    );
    // A field flyteidl2 2.0.51 does not know (number 999, varint) is refused by name.
    let mut bytes = build(
        &entry.input,
        &[
            (&run("org"), "acme"),
            (&run("project"), "flytesnacks"),
            (&run("domain"), "development"),
        ],
    )
    .encode_to_vec();
    assert!(policy.check_message(path, entry, &bytes).is_ok());
    bytes.extend_from_slice(&[0xb8, 0x3e, 1]);
    let e = policy.check_message(path, entry, &bytes).unwrap_err();
    assert_eq!(e.reason, Reason::Undecodable);
    assert!(e.detail.contains("unknown to flyteidl2 2.0.51"), "{e}");
    // GetProject names the project by `id`.
    let path = "/flyteidl2.project.ProjectService/GetProject";
    let entry = policy.admit(path).unwrap().unwrap();
    let m = build(&entry.input, &[(&s(&["id"]), "payroll")]);
    let e = policy
        .check_message(path, entry, &m.encode_to_vec())
        .unwrap_err();
    assert_eq!(e.reason, Reason::ForeignProject);
}

#[test]
fn refusals_name_method_field_and_value() {
    let policy = Policy::new(own()).with_flyte2();
    let path = "/flyteidl.service.AdminService/GetExecution";
    let entry = policy.admit(path).unwrap().unwrap();
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (p, d, n) = (
        s(&["id", "project"]),
        s(&["id", "domain"]),
        s(&["id", "name"]),
    );
    let ok = build(
        &entry.input,
        &[(&p, "flytesnacks"), (&d, "development"), (&n, "a1")],
    );
    assert_eq!(
        policy.check(path, entry, &frame(&ok)).unwrap(),
        Named {
            project: Some("flytesnacks".into()),
            domain: Some("development".into())
        }
    );
    let other = build(&entry.input, &[(&p, "other"), (&d, "development")]);
    let e = policy.check(path, entry, &frame(&other)).unwrap_err();
    assert_eq!(e.reason, Reason::ForeignProject);
    assert_eq!(
        e.to_string(),
        "flyte-auth-agent: flyteidl.service.AdminService/GetExecution: id.project \"other\" is not this execution's project \"flytesnacks\""
    );
    let long = "x".repeat(500);
    let e = policy
        .check(path, entry, &frame(&build(&entry.input, &[(&d, &long)])))
        .unwrap_err();
    assert_eq!(e.reason, Reason::ForeignDomain);
    assert!(e.to_string().len() < 250, "{e}");
    // Names nothing: refused, the method is not read-only.
    let e = policy
        .check(path, entry, &frame(&build(&entry.input, &[(&n, "a1")])))
        .unwrap_err();
    assert_eq!(e.reason, Reason::Unscoped);
}

#[test]
fn a_forged_nested_identifier_is_refused() {
    let policy = Policy::new(own()).with_flyte2();
    let path = "/flyteidl.service.AdminService/GetTaskExecution";
    let entry = policy.admit(path).unwrap().unwrap();
    let s = |v: &str| v.split('.').map(str::to_string).collect::<Vec<_>>();
    let forged = build(
        &entry.input,
        &[
            (&s("id.task_id.project"), "flytesnacks"),
            (&s("id.task_id.domain"), "development"),
            (&s("id.node_execution_id.execution_id.project"), "payroll"),
            (
                &s("id.node_execution_id.execution_id.domain"),
                "development",
            ),
        ],
    );
    let e = policy.check(path, entry, &frame(&forged)).unwrap_err();
    assert_eq!(e.reason, Reason::ForeignProject);
    assert!(
        e.detail
            .starts_with("id.node_execution_id.execution_id.project \"payroll\""),
        "{e}"
    );
}

#[test]
fn methods_and_bodies_refused_before_the_walk() {
    let policy = Policy::new(own()).with_flyte2();
    for (path, reason) in [
        (
            "/flyteidl.service.AdminService/CreateWorkflowEvent",
            Reason::AdminMethod,
        ),
        (
            "/flyteidl.service.AdminService/RegisterProject",
            Reason::AdminMethod,
        ),
        (
            "/flyteidl.service.AdminService/UpdateWorkflowAttributes",
            Reason::AdminMethod,
        ),
        (
            "/flyteidl.service.AdminService/NoSuchMethod",
            Reason::UnknownMethod,
        ),
        ("/grpc.health.v1.Health/Check", Reason::UnknownMethod),
    ] {
        assert_eq!(policy.admit(path).unwrap_err().reason, reason, "{path}");
    }
    assert!(policy
        .admit("/flyteidl.service.AuthMetadataService/GetPublicClientConfig")
        .unwrap()
        .is_none());
    // Without a scope, scoped methods are refused naming the missing setting.
    let none = Policy::new(Scope::default());
    let e = none
        .admit("/flyteidl.service.AdminService/GetExecution")
        .unwrap_err();
    assert_eq!(e.reason, Reason::NoScope);
    assert!(e.detail.contains(crate::env::ENV_ADMIN_PROJECT), "{e}");
    let project_only = Policy::new(Scope {
        project: Some("p".into()),
        ..Scope::default()
    });
    let e = project_only
        .admit("/flyteidl.service.AdminService/ListExecutions")
        .unwrap_err();
    assert!(e.detail.contains(crate::env::ENV_ADMIN_DOMAIN), "{e}");
    assert!(none
        .admit("/flyteidl.service.AdminService/GetVersion")
        .is_ok());

    let path = "/flyteidl.service.AdminService/GetVersion";
    let entry = policy.admit(path).unwrap().unwrap();
    assert_eq!(
        policy.check(path, entry, &[0, 0, 0, 0, 0]).unwrap(),
        Named::default()
    );
    for (body, reason) in [
        (&[][..], Reason::Undecodable),
        (&[1, 0, 0, 0, 0][..], Reason::Compressed),
        (&[0, 0, 0, 0, 1][..], Reason::Undecodable),
        (&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0][..], Reason::Undecodable),
        // Field 1 varint: unknown to GetVersionRequest.
        (&[0, 0, 0, 0, 2, 8, 1][..], Reason::Undecodable),
        // Field 1, length 5 but only 1 byte: truncated.
        (&[0, 0, 0, 0, 3, 10, 5, 1][..], Reason::Undecodable),
    ] {
        assert_eq!(
            policy.check(path, entry, body).unwrap_err().reason,
            reason,
            "{body:?}"
        );
    }
}

#[test]
fn project_named_by_id_and_by_flyte_url() {
    let policy = Policy::new(own()).with_flyte2();
    let s = |v: &str| v.split('.').map(str::to_string).collect::<Vec<_>>();
    let path = "/flyteidl.service.AdminService/GetProject";
    let entry = policy.admit(path).unwrap().unwrap();
    let ok = build(&entry.input, &[(&s("id"), "flytesnacks")]);
    assert!(policy.check(path, entry, &frame(&ok)).is_ok());
    let other = build(&entry.input, &[(&s("id"), "payroll")]);
    assert_eq!(
        policy
            .check(path, entry, &frame(&other))
            .unwrap_err()
            .reason,
        Reason::ForeignProject
    );
    let path = "/flyteidl.service.DataProxyService/GetData";
    let entry = policy.admit(path).unwrap().unwrap();
    let url = |u: &str| frame(&build(&entry.input, &[(&s("flyte_url"), u)]));
    assert!(policy
        .check(
            path,
            entry,
            &url("flyte://v1/flytesnacks/development/a1/n0/0/o")
        )
        .is_ok());
    for (u, reason) in [
        (
            "flyte://v1/payroll/development/a1/n0/0/o",
            Reason::ForeignProject,
        ),
        (
            "flyte://v1/flytesnacks/production/a1/n0/0/o",
            Reason::ForeignDomain,
        ),
        ("s3://bucket/key", Reason::Undecodable),
        ("flyte://v1//development", Reason::Undecodable),
    ] {
        assert_eq!(
            policy.check(path, entry, &url(u)).unwrap_err().reason,
            reason,
            "{u}"
        );
    }
    assert!(input("/flyteidl.service.AdminService/GetProject")
        .full_name()
        .ends_with("ProjectGetRequest"));
}

/// For each allowed method: (method, every scope path of its input type).
/// Every path to a scope field of one input type, with its part.
type ScopePaths = Vec<(Vec<String>, Part)>;

fn method_paths() -> Vec<(String, ScopePaths)> {
    let policy = Policy::new(own()).with_flyte2();
    let mut all: Vec<(String, ScopePaths)> = policy
        .methods
        .iter()
        .filter(|(_, e)| e.rule != Rule::Open)
        .map(|(p, e)| (p.clone(), scope_paths(&e.input, 6)))
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

fn own_value(part: Part) -> &'static str {
    match part {
        Part::Project => "flytesnacks",
        Part::Domain => "development",
        Part::Org => "",
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// A foreign project, domain or org at any identifier path of any request, alongside the
    /// own scope at other paths, is always refused.
    #[test]
    fn a_foreign_name_anywhere_never_passes(
        method in 0usize..1000,
        target in 0usize..10_000,
        others in proptest::collection::vec(0usize..10_000, 0..4),
        foreign in "[a-z][a-z0-9-]{0,12}",
    ) {
        let methods: Vec<_> = method_paths().into_iter().filter(|(_, p)| !p.is_empty()).collect();
        let (path, paths) = &methods[method % methods.len()];
        let policy = Policy::new(own()).with_flyte2();
        let (target_path, part) = &paths[target % paths.len()];
        prop_assume!(foreign != own_value(*part));
        let mut set_paths: Vec<(&[String], &str)> = others
            .iter()
            .map(|i| &paths[i % paths.len()])
            .filter(|(p, _)| p != target_path)
            .map(|(p, part)| (&p[..], own_value(*part)))
            .collect();
        set_paths.push((&target_path[..], foreign.as_str()));
        let desc = policy.methods[path].input.clone();
        let m = build(&desc, &set_paths);
        let verdict = policy.admit(path).and_then(|e| match e {
            Some(e) => policy.check(path, e, &frame(&m)),
            None => Ok(Named::default()),
        });
        prop_assert!(verdict.is_err(), "{path} with {target_path:?} = {foreign:?} passed");
    }

    /// A GetData URL naming another project or domain is refused too.
    #[test]
    fn a_foreign_flyte_url_never_passes(project in "[a-z]{1,8}", domain in "[a-z]{1,8}") {
        prop_assume!(project != "flytesnacks" || domain != "development");
        let policy = Policy::new(own()).with_flyte2();
        let path = "/flyteidl.service.DataProxyService/GetData";
        let entry = policy.admit(path).unwrap().unwrap();
        let url = format!("flyte://v1/{project}/{domain}/a1/n0/0/o");
        let m = build(&entry.input, &[(&["flyte_url".to_string()][..], url.as_str())]);
        prop_assert!(policy.check(path, entry, &frame(&m)).is_err());
    }
}

#[test]
fn the_own_scope_everywhere_passes_for_every_allowed_method() {
    let policy = Policy::new(own()).with_flyte2();
    let mut checked = 0;
    for (path, paths) in method_paths() {
        let entry = match policy.admit(&path) {
            Ok(Some(e)) => e,
            Ok(None) | Err(_) => continue,
        };
        let mut set_paths: Vec<(&[String], &str)> = paths
            .iter()
            .map(|(p, part)| (&p[..], own_value(*part)))
            .collect();
        let url = "flyte://v1/flytesnacks/development/a1/n0/0/o".to_string();
        let flyte_url = ["flyte_url".to_string()];
        if path.ends_with("/GetData") {
            set_paths.push((&flyte_url[..], url.as_str()));
        }
        let m = build(&entry.input, &set_paths);
        let verdict = policy.check(&path, entry, &frame(&m));
        match entry.rule {
            Rule::ReadOnly => assert!(verdict.is_ok(), "{path}: {verdict:?}"),
            _ if paths.is_empty() && !path.ends_with("/GetData") => {
                // Names nothing it could be scoped by (ListMatchableAttributes, CreateDownloadLocation…).
                assert_eq!(verdict.unwrap_err().reason, Reason::Unscoped, "{path}")
            }
            _ => {
                let needs_domain = entry.rule == Rule::Scoped;
                let has_domain =
                    path.ends_with("/GetData") || paths.iter().any(|(_, p)| *p == Part::Domain);
                if needs_domain && !has_domain {
                    assert_eq!(verdict.unwrap_err().reason, Reason::Unscoped, "{path}");
                } else {
                    assert!(verdict.is_ok(), "{path}: {verdict:?}");
                    checked += 1;
                }
            }
        }
    }
    assert!(
        checked > 40,
        "{checked} methods passed with their own scope"
    );
}
