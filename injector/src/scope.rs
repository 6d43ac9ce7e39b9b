//! The execution scope of a pod: the Flyte project, domain (and org) its Admin proxy may act in.
//!
//! Pod labels and task env are written by whoever creates the pod; the namespace is not (the API
//! server puts the pod where its creator was allowed to). So the scope comes from the
//! AdmissionReview's namespace, read back through Flyte's own `namespace_mapping.template`
//! (flytestdlib `namespaceutils.GetNamespaceName`: plain replacement of `{{ org }}`,
//! `{{ project }}` and `{{ domain }}`). Reading a template backwards can be ambiguous
//! (`{{ project }}-{{ domain }}` and a project with a '-' in it), so domains come from a known
//! list, every placeholder's value must be a DNS-1123 label (flyteadmin's rule for project ids),
//! and a namespace with more than one reading matches nothing rather than a guess.
//!
//! Then what the pod says of itself (propeller's `project`/`domain` labels, the containers'
//! `FLYTE_INTERNAL_EXECUTION_PROJECT`/`_DOMAIN`) must agree with the namespace, or the pod is
//! denied: a pod claiming another project is either misplaced or lying.

use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;

use crate::names::{check_dns_label, is_label_byte};

/// Flyte's default `namespace_mapping.template`.
pub const DEFAULT_TEMPLATE: &str = "{{ project }}-{{ domain }}";
/// The project placeholder, spelled exactly as Flyte replaces it.
pub const PROJECT: &str = "{{ project }}";
/// The domain placeholder.
pub const DOMAIN: &str = "{{ domain }}";
/// The org placeholder.
pub const ORG: &str = "{{ org }}";
/// The pod label propeller writes the execution's project in.
pub const PROJECT_LABEL: &str = "project";
/// The pod label propeller writes the execution's domain in.
pub const DOMAIN_LABEL: &str = "domain";
/// The pod label propeller writes the execution's name in.
pub const EXECUTION_ID_LABEL: &str = "execution-id";
/// The task env var propeller writes the execution's project in.
pub const ENV_EXECUTION_PROJECT: &str = "FLYTE_INTERNAL_EXECUTION_PROJECT";
/// The task env var propeller writes the execution's domain in.
pub const ENV_EXECUTION_DOMAIN: &str = "FLYTE_INTERNAL_EXECUTION_DOMAIN";
/// The task env var propeller writes the execution's name in.
pub const ENV_EXECUTION_ID: &str = "FLYTE_INTERNAL_EXECUTION_ID";
/// Longest execution id passed to the agent (Flyte's execution names are far shorter).
const MAX_EXECUTION_ID: usize = 128;

/// The `scope` section of the injector config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScopeSettings {
    /// Flyte's `namespace_mapping.template`, the same string flyteadmin and propeller use.
    pub namespace_template: String,
    /// Every domain the Flyte install knows (flyteadmin's `domains`).
    pub domains: Vec<String>,
    /// The org, where Flyte uses orgs; with `{{ org }}` in the template the namespace must name
    /// this org.
    pub org: Option<String>,
    /// The scope of a pod whose namespace matches no reading of the template; absent: such a pod
    /// gets no Admin proxy.
    pub fallback: Option<FallbackScope>,
}

impl Default for ScopeSettings {
    fn default() -> Self {
        Self {
            namespace_template: DEFAULT_TEMPLATE.into(),
            domains: vec!["development".into(), "staging".into(), "production".into()],
            org: None,
            fallback: None,
        }
    }
}

/// `scope.fallback`: the scope for namespaces that match no template reading.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackScope {
    /// The project.
    pub project: String,
    /// The domain (one of `scope.domains`).
    pub domain: String,
}

/// One execution's scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The project.
    pub project: String,
    /// The domain.
    pub domain: String,
    /// The org (`None`: Flyte without orgs).
    pub org: Option<String>,
}

/// A piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Project,
    Domain,
    Org,
}

/// Why a namespace has no scope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoMatch {
    /// The review names no namespace.
    #[error("the AdmissionReview names no namespace")]
    NoNamespace,
    /// The review's namespace is no namespace name (only a forged review's can be).
    #[error(
        "the AdmissionReview's namespace {shown:?} is not a namespace name (a DNS-1123 label)"
    )]
    NotANamespace {
        /// Its first 70 characters.
        shown: String,
    },
    /// No reading of the template gives this namespace.
    #[error("namespace {namespace:?} is not scope.namespace_template {template:?} for any project, any domain of scope.domains {domains:?}{org}")]
    NoReading {
        /// The namespace.
        namespace: String,
        /// The template.
        template: String,
        /// The known domains.
        domains: Vec<String>,
        /// ", and org …" when one is configured.
        org: String,
    },
    /// More than one reading gives this namespace.
    #[error("namespace {namespace:?} reads as more than one scope under scope.namespace_template {template:?} ({first} and {second}); an ambiguous namespace gets no scope")]
    Ambiguous {
        /// The namespace.
        namespace: String,
        /// The template.
        template: String,
        /// One reading.
        first: String,
        /// Another.
        second: String,
    },
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "project {:?}, domain {:?}", self.project, self.domain)?;
        if let Some(org) = &self.org {
            write!(f, ", org {org:?}")?;
        }
        Ok(())
    }
}

/// The checked `scope` settings, ready to read namespaces.
#[derive(Debug, Clone)]
pub struct ScopeRules {
    template: String,
    parts: Vec<Part>,
    domains: Vec<String>,
    org: Option<String>,
    fallback: Option<Scope>,
}

impl ScopeRules {
    /// Checks `settings`; every problem is `(field, problem)`.
    pub fn new(settings: &ScopeSettings) -> Result<Self, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let mut err = |field: &str, problem: String| problems.push((field.to_string(), problem));
        let parts = match parse_template(&settings.namespace_template) {
            Ok(parts) => parts,
            Err(problem) => {
                err("scope.namespace_template", problem);
                Vec::new()
            }
        };
        if settings.domains.is_empty() {
            err("scope.domains", "is empty".into());
        }
        for (i, domain) in settings.domains.iter().enumerate() {
            if let Err(e) = check_dns_label(domain) {
                err(&format!("scope.domains[{i}]"), e);
            } else if settings.domains[..i].contains(domain) {
                err(
                    &format!("scope.domains[{i}]"),
                    format!("{domain:?} is listed twice"),
                );
            }
        }
        if let Some(org) = &settings.org {
            if let Err(e) = check_dns_label(org) {
                err("scope.org", e);
            }
        }
        let fallback = settings.fallback.as_ref().map(|f| {
            if let Err(e) = check_dns_label(&f.project) {
                err("scope.fallback.project", e);
            }
            if !settings.domains.contains(&f.domain) {
                err(
                    "scope.fallback.domain",
                    format!(
                        "{:?} is not one of scope.domains {:?}",
                        f.domain, settings.domains
                    ),
                );
            }
            Scope {
                project: f.project.clone(),
                domain: f.domain.clone(),
                org: settings.org.clone(),
            }
        });
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            template: settings.namespace_template.clone(),
            parts,
            domains: settings.domains.clone(),
            org: settings.org.clone(),
            fallback,
        })
    }

    /// The scope `scope.fallback` names, if any.
    pub fn fallback(&self) -> Option<&Scope> {
        self.fallback.as_ref()
    }

    /// The one scope whose namespace is `namespace`; pure.
    pub fn of_namespace(&self, namespace: Option<&str>) -> Result<Scope, NoMatch> {
        let namespace = match namespace {
            Some(ns) if !ns.is_empty() => ns,
            _ => return Err(NoMatch::NoNamespace),
        };
        // Bounds the reading below (every prefix of the rest for every placeholder), whatever
        // a forged review sends.
        if check_dns_label(namespace).is_err() {
            return Err(NoMatch::NotANamespace {
                shown: namespace.chars().take(70).collect(),
            });
        }
        let mut found = Vec::new();
        let mut bound = Bound::default();
        self.read(&self.parts, namespace, &mut bound, &mut found);
        match found.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(NoMatch::NoReading {
                namespace: namespace.into(),
                template: self.template.clone(),
                domains: self.domains.clone(),
                org: self
                    .org
                    .as_ref()
                    .map(|o| format!(", and org {o:?}"))
                    .unwrap_or_default(),
            }),
            [first, second, ..] => Err(NoMatch::Ambiguous {
                namespace: namespace.into(),
                template: self.template.clone(),
                first: first.to_string(),
                second: second.to_string(),
            }),
        }
    }

    /// Every reading of `rest` by `parts`, given what is `bound` so far (a placeholder used twice
    /// must read the same both times), added to `found`; stops at two, enough to call it
    /// ambiguous. Backtracking over at most a 63-byte namespace.
    fn read(&self, parts: &[Part], rest: &str, bound: &mut Bound, found: &mut Vec<Scope>) {
        if found.len() > 1 {
            return;
        }
        let Some((part, tail)) = parts.split_first() else {
            if rest.is_empty() {
                if let (Some(project), Some(domain)) = (&bound.project, &bound.domain) {
                    let scope = Scope {
                        project: project.clone(),
                        domain: domain.clone(),
                        org: bound.org.clone().or_else(|| self.org.clone()),
                    };
                    if !found.contains(&scope) {
                        found.push(scope);
                    }
                }
            }
            return;
        };
        if let Part::Literal(text) = part {
            if let Some(after) = rest.strip_prefix(text.as_str()) {
                self.read(tail, after, bound, found);
            }
            return;
        }
        let slot = match part {
            Part::Project => Slot::Project,
            Part::Domain => Slot::Domain,
            _ => Slot::Org,
        };
        if let Some(value) = bound.get(slot).cloned() {
            if let Some(after) = rest.strip_prefix(value.as_str()) {
                self.read(tail, after, bound, found);
            }
            return;
        }
        // Every prefix of `rest` that is a valid value for this placeholder.
        for end in (1..=rest.len()).filter(|&e| rest.is_char_boundary(e)) {
            let value = &rest[..end];
            let allowed = match slot {
                Slot::Domain => self.domains.iter().any(|d| d == value),
                Slot::Org => {
                    check_dns_label(value).is_ok() && self.org.as_ref().is_none_or(|o| o == value)
                }
                Slot::Project => check_dns_label(value).is_ok(),
            };
            if !allowed {
                continue;
            }
            bound.set(slot, Some(value.to_string()));
            self.read(tail, &rest[end..], bound, found);
            bound.set(slot, None);
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Slot {
    Project,
    Domain,
    Org,
}

/// Placeholder values chosen so far while reading a namespace.
#[derive(Debug, Default)]
struct Bound {
    project: Option<String>,
    domain: Option<String>,
    org: Option<String>,
}

impl Bound {
    fn get(&self, slot: Slot) -> Option<&String> {
        match slot {
            Slot::Project => self.project.as_ref(),
            Slot::Domain => self.domain.as_ref(),
            Slot::Org => self.org.as_ref(),
        }
    }

    fn set(&mut self, slot: Slot, value: Option<String>) {
        match slot {
            Slot::Project => self.project = value,
            Slot::Domain => self.domain = value,
            Slot::Org => self.org = value,
        }
    }
}

/// Splits a template into literals and placeholders; refuses one that cannot name a project's
/// namespace or that holds `{{ … }}` Flyte would not replace (it would stay in the name).
fn parse_template(template: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while !rest.is_empty() {
        let Some(start) = rest.find("{{") else {
            parts.push(Part::Literal(rest.to_string()));
            break;
        };
        if start > 0 {
            parts.push(Part::Literal(rest[..start].to_string()));
        }
        let after = &rest[start..];
        let (part, len) = [(PROJECT, Part::Project), (DOMAIN, Part::Domain), (ORG, Part::Org)]
            .into_iter()
            .find(|(p, _)| after.starts_with(p))
            .map(|(p, part)| (part, p.len()))
            .ok_or_else(|| {
                let shown: String = after.chars().take(20).collect();
                format!(
                    "{template:?}: {shown:?}… is not a placeholder Flyte replaces; the placeholders are {PROJECT:?}, {DOMAIN:?} and {ORG:?}, spaces included"
                )
            })?;
        parts.push(part);
        rest = &after[len..];
    }
    for (needed, placeholder) in [(Part::Project, PROJECT), (Part::Domain, DOMAIN)] {
        if !parts.contains(&needed) {
            return Err(format!(
                "{template:?} has no {placeholder:?}: a namespace must name the project and the domain"
            ));
        }
    }
    for part in &parts {
        if let Part::Literal(text) = part {
            if !text.bytes().all(is_label_byte) {
                return Err(format!(
                    "{template:?}: {text:?} holds characters no namespace can (lower-case letters, digits and '-' only)"
                ));
            }
        }
    }
    Ok(parts)
}

/// Where a pod says something about its execution, and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// `"project"` or `"domain"`.
    pub field: &'static str,
    /// The value the pod gives.
    pub value: String,
    /// Where (`label "project"`, `container "task" env FLYTE_INTERNAL_EXECUTION_PROJECT`).
    pub source: String,
}

/// Every project and domain the pod names in propeller's labels and its containers' env (plain
/// values; a `valueFrom` is not known here).
pub fn claims(pod: &Pod) -> Vec<Claim> {
    let mut claims = Vec::new();
    for (field, label) in [("project", PROJECT_LABEL), ("domain", DOMAIN_LABEL)] {
        if let Some(value) = pod.metadata.labels.as_ref().and_then(|l| l.get(label)) {
            claims.push(Claim {
                field,
                value: value.clone(),
                source: format!("label {label:?}"),
            });
        }
    }
    let Some(spec) = pod.spec.as_ref() else {
        return claims;
    };
    for container in spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
    {
        for var in container.env.iter().flatten() {
            let field = match var.name.as_str() {
                ENV_EXECUTION_PROJECT => "project",
                ENV_EXECUTION_DOMAIN => "domain",
                _ => continue,
            };
            if let Some(value) = &var.value {
                claims.push(Claim {
                    field,
                    value: value.clone(),
                    source: format!("container {:?} env {}", container.name, var.name),
                });
            }
        }
    }
    claims
}

/// Each claim that disagrees with `scope`, as a sentence naming both values and their sources;
/// `scope_source` says where the scope came from.
pub fn disagreements(pod: &Pod, scope: &Scope, scope_source: &str) -> Vec<String> {
    claims(pod)
        .into_iter()
        .filter_map(|claim| {
            let own = match claim.field {
                "project" => &scope.project,
                _ => &scope.domain,
            };
            (claim.value != *own).then(|| {
                // Label values are at most 63 characters, env values are not: only so much is
                // repeated back.
                let said: String = claim.value.chars().take(70).collect();
                format!(
                    "{} says {} {said:?}, but {scope_source} is {} {own:?}",
                    claim.source, claim.field, claim.field
                )
            })
        })
        .collect()
}

/// The execution id the pod reports (first `FLYTE_INTERNAL_EXECUTION_ID` of its containers, else
/// its `execution-id` label), for the agent's audit lines only; `Err` when it is there but not a
/// plain name (letters, digits, '-', '_', '.', at most 128), so it is not passed on.
pub fn execution_id(pod: &Pod) -> Result<Option<String>, String> {
    let from_env = pod.spec.as_ref().and_then(|spec| {
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .flat_map(|c| c.env.iter().flatten())
            .find(|v| v.name == ENV_EXECUTION_ID)
            .and_then(|v| v.value.clone())
            .map(|v| (v, format!("env {ENV_EXECUTION_ID}")))
    });
    let from_label = || {
        pod.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(EXECUTION_ID_LABEL))
            .map(|v| (v.clone(), format!("label {EXECUTION_ID_LABEL:?}")))
    };
    let Some((id, source)) = from_env.or_else(from_label) else {
        return Ok(None);
    };
    let plain = !id.is_empty()
        && id.len() <= MAX_EXECUTION_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if plain {
        Ok(Some(id))
    } else {
        Err(format!(
            "the pod's {source} is not a plain execution name (letters, digits, '-', '_', '.', at most {MAX_EXECUTION_ID}); the auth agent's audit lines carry no execution id"
        ))
    }
}

/// Where a pod's Admin scope came from (the metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeSource {
    /// Read from its namespace.
    Namespace,
    /// The namespace matched nothing; `scope.fallback`.
    Fallback,
    /// The namespace matched nothing and there is no fallback: no Admin proxy.
    Unmatched,
    /// The pod's labels or env disagreed: denied.
    Disagreed,
}

impl ScopeSource {
    /// Every source, for metrics that must exist from the start.
    pub const ALL: [ScopeSource; 4] = [
        Self::Namespace,
        Self::Fallback,
        Self::Unmatched,
        Self::Disagreed,
    ];

    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Namespace => "namespace",
            Self::Fallback => "fallback",
            Self::Unmatched => "unmatched",
            Self::Disagreed => "disagreed",
        }
    }
}

/// What the agent learns about the pod's execution.
#[derive(Debug, Clone, Default)]
pub struct Execution {
    /// Where the scope came from; `None` when no Admin proxy was wanted.
    pub source: Option<ScopeSource>,
    /// The scope its Admin proxy acts in; `None`: no Admin proxy.
    pub scope: Option<Scope>,
    /// The execution id the pod reports, for audit lines.
    pub id: Option<String>,
    /// What the requester should know (an unmatched namespace, an unusable execution id).
    pub warnings: Vec<String>,
    /// When the pod's agent may make its first IdP calls (`agent.start_pacing`); None: at once.
    pub start_at: Option<std::time::SystemTime>,
}

impl ScopeRules {
    /// The execution of `pod` created in `namespace`: its scope when it is to get an Admin
    /// proxy (`wants_admin`), checked against what the pod says of itself; `Err` lists every
    /// disagreement (the pod is denied). Pure.
    pub fn execution(
        &self,
        namespace: Option<&str>,
        pod: &Pod,
        wants_admin: bool,
    ) -> Result<Execution, Vec<String>> {
        let mut execution = Execution::default();
        match execution_id(pod) {
            Ok(id) => execution.id = id,
            Err(warning) => execution.warnings.push(warning),
        }
        if !wants_admin {
            return Ok(execution);
        }
        let (scope, source) = match self.of_namespace(namespace) {
            Ok(scope) => {
                execution.source = Some(ScopeSource::Namespace);
                let source = format!(
                    "namespace {:?} (scope.namespace_template {:?})",
                    namespace.unwrap_or_default(),
                    self.template
                );
                (scope, source)
            }
            Err(no_match) => match &self.fallback {
                Some(fallback) => {
                    execution.source = Some(ScopeSource::Fallback);
                    execution.warnings.push(format!(
                        "{no_match}; the FlyteAdmin proxy acts in the fallback scope, {fallback} (scope.fallback)"
                    ));
                    (fallback.clone(), "scope.fallback".to_string())
                }
                None => {
                    execution.source = Some(ScopeSource::Unmatched);
                    execution.warnings.push(format!(
                        "{no_match}; the pod gets no FlyteAdmin proxy (its token requests are still served). Set scope.fallback, or scope.namespace_template and scope.domains to match Flyte's namespace_mapping"
                    ));
                    return Ok(execution);
                }
            },
        };
        let problems = disagreements(pod, &scope, &source);
        if !problems.is_empty() {
            return Err(problems);
        }
        execution.scope = Some(scope);
        Ok(execution)
    }
}

#[cfg(test)]
mod tests;
