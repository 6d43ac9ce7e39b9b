//! The execution scope: which FlyteAdmin calls a task may make through the agent. A task acts as
//! its execution, inside its own project and domain (`admin.project`, `admin.domain`,
//! `admin.org`, set per pod by the injector from the pod's namespace), never as the platform's
//! control loop whose credential the proxy attaches.
//!
//! Each method has one [`Rule`], fixed here for the 66 methods of flyteidl 1.16's Admin services
//! (56 of them AdminService's):
//! - **refused**: event writing (`CreateWorkflowEvent`, `CreateNodeEvent`, `CreateTaskEvent`:
//!   marking any execution succeeded or failed is propeller's job) and project administration
//!   (`RegisterProject`, `UpdateProject`, every `Update…Attributes`/`Delete…Attributes`, and
//!   `UpdateNamedEntity`, which archives entities and rewrites their descriptions);
//! - **open**: `AuthMetadataService/*`, which flytekit calls before it has a credential and
//!   which carries no request data;
//! - **read-only, unscoped**: `AdminService/GetVersion`, `AdminService/GetDomains`,
//!   `IdentityService/UserInfo` (platform facts that name no tenant) and
//!   `AdminService/ListProjects` (project names and descriptions, which Flyte shows every
//!   signed-in user and `FlyteRemote` users call; its `org` is still checked). They are still
//!   decoded, so any identifier they carry must be the scope;
//! - **project-level**: `GetProject`, `GetProjectAttributes` must name the execution's project
//!   (a domain is optional there);
//! - **scoped**: every other method must name the execution's project and domain, and nothing
//!   else. `ListMatchableAttributes` (whose request names no project and answers for every
//!   project), `CreateDownloadLocation` (a bare blob URL) and anything that is
//!   not a FlyteAdmin method of flyteidl 1.16 are therefore refused too.
//!
//! Flyte 2's control plane (the `flyteidl2` services the Connect port proxies) gets the same
//! classes from [`flyte2_rule`] ([`Policy::with_flyte2`]): its 45 methods, 36 of them scoped.
//!
//! A scoped request is decoded as its method's input type (descriptors from
//! [`flyte_auth_proto::admin_pool`] and [`flyte_auth_proto::flyteidl2_pool`]) and walked at every
//! depth: every non-empty string field named `project`, `domain`, `org` or `organization` (plus
//! `ProjectGetRequest.id` and `Project.id`, which name a project, flyteidl2's `ProjectIdentifier`,
//! `DomainIdentifier` and `OrgIdentifier`, which call theirs `name`, and the project and domain
//! inside `GetDataRequest.flyte_url`) must equal the scope; an empty `org` scope means only the
//! empty org. Requests with fields their IDL does not know, or a set `google.protobuf.Any`
//! (opaque bytes Admin might unpack), are refused: a newer Admin could read an identifier there
//! that this walk cannot see. How the message is found in a call's body (framing, gzip) is the
//! proxy's (`proxy::message`); [`Policy::check`] reads an uncompressed gRPC frame.

use std::collections::HashMap;
use std::fmt::Write as _;

use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, MessageDescriptor, ReflectMessage as _, Value,
};

/// The execution's own project, domain and org; `None` when the agent was not given one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// `admin.project` (`FLYTE_AUTH_AGENT_ADMIN_PROJECT`).
    pub project: Option<String>,
    /// `admin.domain` (`FLYTE_AUTH_AGENT_ADMIN_DOMAIN`).
    pub domain: Option<String>,
    /// `admin.org` (`FLYTE_AUTH_AGENT_ADMIN_ORG`); `None` is the empty org.
    pub org: Option<String>,
}

/// Why a call was refused: a fixed set, so it can be a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The method administers Admin (events, projects, attributes).
    AdminMethod,
    /// Not a FlyteAdmin method this policy knows.
    UnknownMethod,
    /// A project other than the execution's.
    ForeignProject,
    /// A domain other than the execution's.
    ForeignDomain,
    /// An org other than the execution's.
    ForeignOrg,
    /// The agent has no project or domain, so it cannot allow scoped calls.
    NoScope,
    /// The request names no project (or domain) and the method is not on the read-only list.
    Unscoped,
    /// A compressed message, which the policy cannot read.
    Compressed,
    /// Not one well-formed message of the method's input type.
    Undecodable,
    /// Larger than `admin.max_request_bytes`.
    TooLarge,
}

impl Reason {
    /// Every reason, for tests and metric docs.
    pub const ALL: [Reason; 10] = [
        Self::AdminMethod,
        Self::UnknownMethod,
        Self::ForeignProject,
        Self::ForeignDomain,
        Self::ForeignOrg,
        Self::NoScope,
        Self::Unscoped,
        Self::Compressed,
        Self::Undecodable,
        Self::TooLarge,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AdminMethod => "admin_method",
            Self::UnknownMethod => "unknown_method",
            Self::ForeignProject => "foreign_project",
            Self::ForeignDomain => "foreign_domain",
            Self::ForeignOrg => "foreign_org",
            Self::NoScope => "no_scope",
            Self::Unscoped => "unscoped",
            Self::Compressed => "compressed",
            Self::Undecodable => "undecodable",
            Self::TooLarge => "too_large",
        }
    }
}

/// A refused call: the reason (a label) and a message for the task naming method and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("flyte-auth-agent: {method}: {detail}")]
pub struct Refusal {
    /// Why, from a fixed set.
    pub reason: Reason,
    /// The method, `flyteidl.service.AdminService/GetExecution`.
    pub method: String,
    /// What was wrong, naming the field and (cut) value.
    pub detail: String,
}

/// What a method may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Never forwarded.
    Refused,
    /// Forwarded without reading the request.
    Open,
    /// Read; may name nothing, anything it names must be the scope.
    ReadOnly,
    /// Read; must name the scope's project (domain optional).
    ProjectLevel,
    /// Read; must name the scope's project and domain.
    Scoped,
}

const ADMIN: &str = "flyteidl.service.AdminService";

/// The rule for `service`/`method` of flyteidl 1.16's Admin services; `None`: not one of them.
pub fn rule(service: &str, method: &str) -> Option<Rule> {
    let known = flyte_auth_proto::services::FLYTEADMIN_SERVICES
        .iter()
        .any(|(s, ms)| *s == service && ms.contains(&method));
    if !known {
        return None;
    }
    Some(match (service, method) {
        ("flyteidl.service.AuthMetadataService", _) => Rule::Open,
        ("flyteidl.service.IdentityService", "UserInfo") => Rule::ReadOnly,
        (ADMIN, "GetVersion" | "GetDomains" | "ListProjects") => Rule::ReadOnly,
        (ADMIN, "GetProject" | "GetProjectAttributes") => Rule::ProjectLevel,
        (
            ADMIN,
            "CreateWorkflowEvent"
            | "CreateNodeEvent"
            | "CreateTaskEvent"
            | "RegisterProject"
            | "UpdateProject"
            | "UpdateProjectDomainAttributes"
            | "DeleteProjectDomainAttributes"
            | "UpdateProjectAttributes"
            | "DeleteProjectAttributes"
            | "UpdateWorkflowAttributes"
            | "DeleteWorkflowAttributes"
            | "UpdateNamedEntity",
        ) => Rule::Refused,
        _ => Rule::Scoped,
    })
}

/// The rule for `service`/`method` of the Flyte 2 (`flyteidl2` 2.0.51) services the agent
/// proxies on its Connect port ([`flyte_auth_proto::flyteidl2_pool`]); `None`: not one of them.
/// The same classes as Flyte 1's: the executor's own writes (an action's state, `StateService/Put`
/// and `ActionsService/Update`, which the SDK never calls) and project administration are
/// refused; discovery is open; `UserInfo` and `ListProjects` (its `org` checked) may name
/// nothing; `GetProject` must name the project; everything else the project and domain.
pub fn flyte2_rule(service: &str, method: &str) -> Option<Rule> {
    let known = flyte_auth_proto::flyteidl2_pool()
        .get_service_by_name(service)
        .is_some_and(|s| s.methods().any(|m| m.name() == method));
    if !known {
        return None;
    }
    Some(match (service, method) {
        ("flyteidl2.auth.AuthMetadataService", _) => Rule::Open,
        ("flyteidl2.auth.IdentityService", "UserInfo")
        | ("flyteidl2.project.ProjectService", "ListProjects") => Rule::ReadOnly,
        ("flyteidl2.project.ProjectService", "GetProject") => Rule::ProjectLevel,
        ("flyteidl2.project.ProjectService", "CreateProject" | "UpdateProject")
        | ("flyteidl2.workflow.StateService", "Put")
        | ("flyteidl2.actions.ActionsService", "Update") => Rule::Refused,
        _ => Rule::Scoped,
    })
}

/// A rule table: [`rule`] or [`flyte2_rule`].
type RuleOf = fn(&str, &str) -> Option<Rule>;

/// One method's rule and input type.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The rule.
    pub rule: Rule,
    input: MessageDescriptor,
    /// The IDL the method comes from, for messages: `flyteidl 1.16`, `flyteidl2 2.0.51`.
    idl: &'static str,
}

/// The policy: the scope and, per method path, its rule.
#[derive(Debug, Clone)]
pub struct Policy {
    scope: Scope,
    methods: HashMap<String, Entry>,
}

/// What a forwarded request named, for the audit line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Named {
    /// The first project the request named.
    pub project: Option<String>,
    /// The first domain the request named.
    pub domain: Option<String>,
}

/// Longest value quoted back in a refusal.
const MAX_QUOTED: usize = 64;

impl Policy {
    /// The policy for `scope` over every method in the admin descriptors.
    pub fn new(scope: Scope) -> Self {
        let mut policy = Self {
            scope,
            methods: HashMap::new(),
        };
        policy.add(flyte_auth_proto::admin_pool(), rule, "flyteidl 1.16");
        policy
    }

    /// Also judges Flyte 2's (flyteidl2) methods, which are otherwise refused as unknown. Only
    /// an agent with a Connect port needs them: their descriptors cost about 3.5 MiB of memory.
    pub fn with_flyte2(mut self) -> Self {
        let pool = flyte_auth_proto::flyteidl2_pool();
        self.add(pool, flyte2_rule, "flyteidl2 2.0.51");
        self
    }

    fn add(&mut self, pool: &DescriptorPool, rule_of: RuleOf, idl: &'static str) {
        for service in pool.services() {
            for m in service.methods() {
                if let Some(rule) = rule_of(service.full_name(), m.name()) {
                    let input = m.input();
                    let path = format!("/{}/{}", service.full_name(), m.name());
                    self.methods.insert(path, Entry { rule, input, idl });
                }
            }
        }
    }

    /// The scope.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// Decides what can be decided from the path alone: `Ok(None)` forwards without reading the
    /// request, `Ok(Some(entry))` needs [`Policy::check`] on the request, `Err` refuses.
    pub fn admit(&self, path: &str) -> Result<Option<&Entry>, Refusal> {
        let method = path.trim_start_matches('/');
        let refuse = |reason, detail: String| Refusal {
            reason,
            method: method.to_string(),
            detail,
        };
        let Some(entry) = self.methods.get(path) else {
            return Err(refuse(
                Reason::UnknownMethod,
                "is not a method of FlyteAdmin (flyteidl 1.16) or of Flyte 2's control plane (flyteidl2 2.0.51) that a task may call".into(),
            ));
        };
        match entry.rule {
            Rule::Refused => Err(refuse(
                Reason::AdminMethod,
                "writes execution events or administers projects, which a task may not do (the executor's and the platform's work)".into(),
            )),
            Rule::Open => Ok(None),
            Rule::ReadOnly => Ok(Some(entry)),
            Rule::ProjectLevel | Rule::Scoped => {
                let needs_domain = entry.rule == Rule::Scoped;
                let missing = if self.scope.project.is_none() {
                    Some(("admin.project", crate::env::ENV_ADMIN_PROJECT))
                } else if needs_domain && self.scope.domain.is_none() {
                    Some(("admin.domain", crate::env::ENV_ADMIN_DOMAIN))
                } else {
                    None
                };
                match missing {
                    Some((key, var)) => Err(refuse(
                        Reason::NoScope,
                        format!("the agent has no {key} ({var}), so it cannot tell this execution's calls from others'"),
                    )),
                    None => Ok(Some(entry)),
                }
            }
        }
    }

    /// Checks one uncompressed gRPC request body (one length-prefixed message) for `entry`'s
    /// method.
    pub fn check(&self, path: &str, entry: &Entry, body: &[u8]) -> Result<Named, Refusal> {
        let refuse = |(reason, detail)| Refusal {
            reason,
            method: path.trim_start_matches('/').to_string(),
            detail,
        };
        match unframe(body).map_err(refuse)? {
            (false, message) => self.check_message(path, entry, message),
            (true, _) => Err(refuse((
                Reason::Compressed,
                "the request is compressed; send it uncompressed (grpc-encoding identity)".into(),
            ))),
        }
    }

    /// Checks one request message (its bare, uncompressed bytes) for `entry`'s method.
    pub fn check_message(
        &self,
        path: &str,
        entry: &Entry,
        message: &[u8],
    ) -> Result<Named, Refusal> {
        let method = path.trim_start_matches('/');
        let refuse = |reason, detail: String| Refusal {
            reason,
            method: method.to_string(),
            detail,
        };
        let decoded = DynamicMessage::decode(entry.input.clone(), message).map_err(|e| {
            refuse(
                Reason::Undecodable,
                format!("the request is not a {}: {e}", entry.input.full_name()),
            )
        })?;
        let mut walk = Walk {
            scope: &self.scope,
            named: Named::default(),
            path: String::new(),
            idl: entry.idl,
        };
        walk.message(&decoded)
            .map_err(|(reason, detail)| refuse(reason, detail))?;
        let named = walk.named;
        let required = match entry.rule {
            Rule::Scoped => named.project.is_none() || named.domain.is_none(),
            Rule::ProjectLevel => named.project.is_none(),
            _ => false,
        };
        if required {
            return Err(refuse(
                Reason::Unscoped,
                format!("the request names no {}; only GetVersion, GetDomains, ListProjects, UserInfo and AuthMetadataService may name none", if named.project.is_none() { "project" } else { "domain" }),
            ));
        }
        Ok(named)
    }
}

/// The one message of an enveloped body (gRPC's length-prefixed message, or a Connect stream's
/// envelope: a flags byte, a 4-byte big-endian length, the message) and whether its flags say it
/// is compressed. Anything else (a second message, a cut one, other flags: Connect's end-stream
/// flag is the server's) is refused.
pub fn unframe(body: &[u8]) -> Result<(bool, &[u8]), Found> {
    match body {
        [flags @ (0 | 1), a, b, c, d, rest @ ..] => {
            let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
            if rest.len() != len {
                return Err((
                    Reason::Undecodable,
                    format!(
                        "the request is not one gRPC message ({} bytes after a {len}-byte frame header)",
                        rest.len()
                    ),
                ));
            }
            Ok((*flags == 1, rest))
        }
        _ => Err((
            Reason::Undecodable,
            "the request is not one gRPC message".into(),
        )),
    }
}

/// Which scope setting a string field names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Project,
    Domain,
    Org,
}

impl Part {
    fn name(self) -> &'static str {
        match self {
            Self::Project => "project",
            Self::Domain => "domain",
            Self::Org => "org",
        }
    }
}

fn part_of(message: &MessageDescriptor, field: &FieldDescriptor) -> Option<Part> {
    match (message.full_name(), field.name()) {
        (_, "project") => Some(Part::Project),
        (_, "domain") => Some(Part::Domain),
        // flyteidl2's `common` identifiers spell the org `organization`.
        (_, "org" | "organization") => Some(Part::Org),
        (
            "flyteidl.admin.ProjectGetRequest"
            | "flyteidl.admin.Project"
            | "flyteidl2.project.GetProjectRequest"
            | "flyteidl2.project.Project",
            "id",
        ) => Some(Part::Project),
        // flyteidl2 names a project, a domain and an org by `name` in their own identifiers.
        ("flyteidl2.common.ProjectIdentifier", "name") => Some(Part::Project),
        ("flyteidl2.common.DomainIdentifier", "name") => Some(Part::Domain),
        ("flyteidl2.common.OrgIdentifier", "name") => Some(Part::Org),
        _ => None,
    }
}

struct Walk<'a> {
    scope: &'a Scope,
    named: Named,
    /// The current field path, `id.execution_id.project`.
    path: String,
    /// The IDL whose descriptors decoded the request, for messages.
    idl: &'static str,
}

/// A refusal's reason and detail, before the method is attached.
pub type Found = (Reason, String);

impl Walk<'_> {
    fn message(&mut self, message: &DynamicMessage) -> Result<(), Found> {
        let desc = message.descriptor();
        if let Some(unknown) = message.unknown_fields().next() {
            return Err((
                Reason::Undecodable,
                format!(
                    "{}: field number {} is unknown to {}, so the request cannot be checked",
                    self.here(),
                    unknown.number(),
                    self.idl
                ),
            ));
        }
        if desc.full_name() == "google.protobuf.Any" {
            return Err((
                Reason::Undecodable,
                format!(
                    "{}: a google.protobuf.Any is opaque, so the request cannot be checked",
                    self.here()
                ),
            ));
        }
        for (field, value) in message.fields() {
            let len = self.path.len();
            if !self.path.is_empty() {
                self.path.push('.');
            }
            self.path.push_str(field.name());
            let result = self.value(&desc, &field, value);
            self.path.truncate(len);
            result?;
        }
        Ok(())
    }

    fn value(
        &mut self,
        desc: &MessageDescriptor,
        field: &FieldDescriptor,
        value: &Value,
    ) -> Result<(), Found> {
        match value {
            Value::String(s) => {
                if let Some(part) = part_of(desc, field) {
                    self.name(part, s)?;
                } else if desc.full_name() == "flyteidl.service.GetDataRequest"
                    && field.name() == "flyte_url"
                {
                    self.flyte_url(s)?;
                }
                Ok(())
            }
            Value::Message(m) => self.message(m),
            Value::List(items) => {
                for (i, item) in items.iter().enumerate() {
                    let len = self.path.len();
                    let _ = write!(self.path, "[{i}]");
                    let result = self.value(desc, field, item);
                    self.path.truncate(len);
                    result?;
                }
                Ok(())
            }
            Value::Map(entries) => {
                for (key, item) in entries {
                    if let Value::Message(m) = item {
                        let len = self.path.len();
                        let key = match key {
                            prost_reflect::MapKey::String(k) => quoted(k),
                            other => format!("{other:?}"),
                        };
                        let _ = write!(self.path, "[{key}]");
                        let result = self.message(m);
                        self.path.truncate(len);
                        result?;
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn here(&self) -> &str {
        if self.path.is_empty() {
            "the request"
        } else {
            &self.path
        }
    }

    /// Checks one named project, domain or org against the scope.
    fn name(&mut self, part: Part, value: &str) -> Result<(), Found> {
        if value.is_empty() {
            return Ok(());
        }
        let (own, reason, key, var) = match part {
            Part::Project => (
                self.scope.project.as_deref(),
                Reason::ForeignProject,
                "admin.project",
                crate::env::ENV_ADMIN_PROJECT,
            ),
            Part::Domain => (
                self.scope.domain.as_deref(),
                Reason::ForeignDomain,
                "admin.domain",
                crate::env::ENV_ADMIN_DOMAIN,
            ),
            Part::Org => (
                Some(self.scope.org.as_deref().unwrap_or("")),
                Reason::ForeignOrg,
                "admin.org",
                crate::env::ENV_ADMIN_ORG,
            ),
        };
        match own {
            Some(own) if own == value => {
                let slot = match part {
                    Part::Project => &mut self.named.project,
                    Part::Domain => &mut self.named.domain,
                    Part::Org => return Ok(()),
                };
                slot.get_or_insert_with(|| value.to_string());
                Ok(())
            }
            Some(own) => Err((
                reason,
                format!(
                    "{} {} is not this execution's {} {own:?}",
                    self.here(),
                    quoted(value),
                    part.name()
                ),
            )),
            None => Err((
                Reason::NoScope,
                format!(
                    "{} {} names a {}, but the agent has no {key} ({var})",
                    self.here(),
                    quoted(value),
                    part.name()
                ),
            )),
        }
    }

    /// `flyte://v1/<project>/<domain>/...`: the project and domain of a Flyte data URL.
    fn flyte_url(&mut self, url: &str) -> Result<(), Found> {
        let mut segments = url.strip_prefix("flyte://v1/").map(|r| r.split('/'));
        let parts = segments
            .as_mut()
            .and_then(|s| Some((s.next()?, s.next()?)))
            .filter(|(p, d)| !p.is_empty() && !d.is_empty());
        let Some((project, domain)) = parts else {
            return Err((
                Reason::Undecodable,
                format!(
                    "{} {} is not a flyte://v1/<project>/<domain>/... URL",
                    self.here(),
                    quoted(url)
                ),
            ));
        };
        let path = self.path.clone();
        self.path = format!("{path} (project)");
        let result = self.name(Part::Project, project);
        self.path = format!("{path} (domain)");
        let result = result.and_then(|()| self.name(Part::Domain, domain));
        self.path = path;
        result
    }
}

/// `value` quoted, cut to [`MAX_QUOTED`] characters.
fn quoted(value: &str) -> String {
    let mut cut: String = value.chars().take(MAX_QUOTED).collect();
    if cut.len() < value.len() {
        cut.push('…');
    }
    format!("{cut:?}")
}

#[cfg(test)]
mod tests;
