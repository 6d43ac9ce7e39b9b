//! A pod's token requests, from its annotations: `flyte.tokens/t<i>` (flytepropeller's form:
//! protobuf text format in propeller's base32, like its `flyte.secrets/s<i>`) and
//! `flyte.org/token-requests` (a JSON array in flyteidl's JSON form, with the agent's
//! extensions), checked by the agent's own rules, plus what Kubernetes needs of the secrets they
//! name (a Secret name and a data key it can mount), and what the injector's [`Policy`] forbids:
//! more requests or annotation bytes than its limits, the Admin client Secret, and an IdP on the
//! pod's own network (loopback, link-local, unspecified).
//!
//! The limits are checked first, on counts and lengths alone, so a pod with 20,000 requests
//! costs a walk over its annotation keys and one allocation-free scan of the JSON annotation,
//! never 20,000 decodes.

use std::collections::BTreeMap;
use std::fmt;

use flyte_auth_agent::config::{validate_token_requests, Endpoint, TokenRequest};
use flyte_auth_proto::annotation;
use flyte_auth_proto::flyteidl::core::{OAuth2TokenRequest, Secret};

use crate::config::{Config, PodLimits};

/// The prefix of propeller-style annotations: `flyte.tokens/t0`, `flyte.tokens/t1`, …
pub const TOKEN_ANNOTATION_PREFIX: &str = "flyte.tokens/";
/// The JSON annotation, for pod templates and hand-written pods.
pub const JSON_ANNOTATION: &str = "flyte.org/token-requests";
/// Where denial messages say the values came from.
const SOURCE: &str = "pod annotations";

/// The token requests of one pod.
#[derive(Debug, Clone, Default)]
pub struct PodRequests {
    /// Each request in flyteidl JSON (with extensions), as the agent reads them from
    /// `FLYTE_AUTH_AGENT_TOKEN_REQUESTS`.
    pub json: Vec<serde_json::Value>,
    /// The same requests, validated.
    pub requests: Vec<TokenRequest>,
}

impl PodRequests {
    /// Whether the pod asks for no tokens.
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }
}

/// What the injector's configuration allows a pod's token requests.
#[derive(Debug, Clone)]
pub struct Policy {
    /// `agent.allow_insecure_http`: plain `http://` IdPs off loopback.
    pub allow_insecure_http: bool,
    /// `agent.allow_local_idp`: loopback, link-local and unspecified IdP addresses.
    pub allow_local_idp: bool,
    /// `limits`: counts and sizes.
    pub limits: PodLimits,
    /// Secrets no token request may name: the Admin client Secret's.
    pub reserved_secrets: Vec<String>,
}

impl Policy {
    /// The policy of `config`.
    pub fn new(config: &Config) -> Self {
        Self {
            allow_insecure_http: config.agent.allow_insecure_http,
            allow_local_idp: config.agent.allow_local_idp,
            limits: config.limits.clone(),
            reserved_secrets: config.admin_secret_groups(),
        }
    }
}

/// At most this many problems of one kind are listed; a denial message stays readable and small
/// whatever the pod holds.
const LISTED: usize = 3;

/// Reads and checks the token requests in `annotations`. On failure, every problem, one line
/// each, naming the annotation and field.
pub fn from_annotations(
    annotations: &BTreeMap<String, String>,
    policy: &Policy,
) -> Result<PodRequests, Vec<String>> {
    check_limits(annotations, &policy.limits)?;
    let mut problems = Vec::new();
    let mut items = propeller_requests(annotations, &mut problems);
    items.extend(json_requests(annotations, &mut problems));
    let json: Vec<serde_json::Value> = items.iter().map(|(_, v)| v.clone()).collect();
    let paths: Vec<String> = items.iter().map(|(p, _)| p.clone()).collect();
    let requests = match validate_token_requests(items, SOURCE, policy.allow_insecure_http) {
        Ok(requests) => requests,
        Err(errors) => {
            problems.extend(
                errors
                    .0
                    .iter()
                    .map(|e| format!("{}: {}", e.field, e.problem)),
            );
            Vec::new()
        }
    };
    // The agent's rules know nothing of Kubernetes or of the injector's policy.
    for (request, path) in requests.iter().zip(&paths) {
        check_secret(&request.client_secret, path, policy, &mut problems);
        if !policy.allow_local_idp {
            problems.extend(local_idp(request, path));
        }
    }
    if problems.is_empty() {
        Ok(PodRequests { json, requests })
    } else {
        Err(problems)
    }
}

/// The requests in `flyte.tokens/t<i>` annotations, in flyteidl JSON, each with its annotation's
/// name, in propeller's order; what cannot be read is added to `problems`.
fn propeller_requests(
    annotations: &BTreeMap<String, String>,
    problems: &mut Vec<String>,
) -> Vec<(String, serde_json::Value)> {
    let mut items: Vec<(u64, String, serde_json::Value)> = Vec::new();
    for (key, value) in annotations.range(TOKEN_ANNOTATION_PREFIX.to_string()..) {
        let Some(suffix) = key.strip_prefix(TOKEN_ANNOTATION_PREFIX) else {
            break;
        };
        let Some(index) = suffix
            .strip_prefix('t')
            .filter(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|i| i.parse::<u64>().ok())
        else {
            problems.push(format!(
                "annotation {key}: is not t<number>; flytepropeller writes {TOKEN_ANNOTATION_PREFIX}t0, t1, …"
            ));
            continue;
        };
        match annotation::decode::<OAuth2TokenRequest>(value) {
            Ok(request) => items.push((index, key.clone(), flyte_auth_proto::to_json(&request))),
            Err(e) => problems.push(format!("annotation {key}: {e}")),
        }
    }
    // t2 before t10: propeller's order, not the map's.
    items.sort_by_key(|(index, _, _)| *index);
    items.into_iter().map(|(_, key, v)| (key, v)).collect()
}

/// The requests in the JSON annotation, each with its path (`flyte.org/token-requests[i]`); an
/// annotation that is not a JSON array is added to `problems`.
fn json_requests(
    annotations: &BTreeMap<String, String>,
    problems: &mut Vec<String>,
) -> Vec<(String, serde_json::Value)> {
    let Some(value) = annotations.get(JSON_ANNOTATION) else {
        return Vec::new();
    };
    match serde_json::from_str::<serde_json::Value>(value) {
        Ok(serde_json::Value::Array(values)) => values
            .into_iter()
            .enumerate()
            .map(|(i, v)| (format!("{JSON_ANNOTATION}[{i}]"), v))
            .collect(),
        Ok(_) => {
            problems.push(format!(
                "annotation {JSON_ANNOTATION}: is not a JSON array of token requests"
            ));
            Vec::new()
        }
        Err(e) => {
            problems.push(format!("annotation {JSON_ANNOTATION}: is not JSON: {e}"));
            Vec::new()
        }
    }
}

/// What the agent's rules do not check of the client secret of the request at `path`: that
/// Kubernetes can mount it (a Secret name and data key), and that it is not the Admin client
/// Secret.
fn check_secret(secret: &Secret, path: &str, policy: &Policy, problems: &mut Vec<String>) {
    if let Err(e) = crate::names::check_dns_subdomain(&secret.group) {
        problems.push(format!(
            "{path}.client.clientSecret.group: is the Kubernetes Secret's name, but {e}"
        ));
    }
    if let Err(e) = check_secret_key(&secret.key) {
        problems.push(format!("{path}.client.clientSecret.key: {e}"));
    }
    if !secret.group_version.is_empty() {
        if let Err(e) = crate::names::check_dns_label(&secret.group_version) {
            problems.push(format!("{path}.client.clientSecret.groupVersion: {e}"));
        }
    }
    if policy.reserved_secrets.contains(&secret.group) {
        problems.push(format!(
            "{path}.client.clientSecret.group: {:?} is the Admin client Secret (admin.client_secret in the injector config); the executor credential is the agent's alone and no token request may read it",
            secret.group
        ));
    }
}

/// The problem with the request at `path` when its IdP is on the pod's own network (loopback,
/// link-local, unspecified).
fn local_idp(request: &TokenRequest, path: &str) -> Option<String> {
    let (field, url) = match &request.endpoint {
        Endpoint::Token(url) => ("tokenEndpoint", url),
        Endpoint::Discovery(url) => ("idpDiscoveryEndpoint", url),
    };
    let kind = url
        .host_str()
        .and_then(flyte_auth_agent::hosts::local_host)?;
    Some(format!(
        "{path}.{field}: {url} is {kind}, which inside the pod is the pod itself (or the node's metadata service), and the agent would send it the client secret; set agent.allow_local_idp in the injector config to allow it"
    ))
}

/// Refuses a pod whose token annotations are too many or too large for `limits`, before any is
/// decoded: lengths and key counts only, and for the JSON annotation a scan that counts its
/// elements without building them.
fn check_limits(
    annotations: &BTreeMap<String, String>,
    limits: &PodLimits,
) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    let mut oversized = Listed::default();
    let mut propeller = 0usize;
    let mut total = 0usize;
    let tokens = annotations
        .range(TOKEN_ANNOTATION_PREFIX.to_string()..)
        .take_while(|(key, _)| key.starts_with(TOKEN_ANNOTATION_PREFIX));
    for (key, value) in tokens {
        propeller += 1;
        total = total.saturating_add(value.len());
        if value.len() > limits.token_annotation_bytes {
            oversized.push(format!("{key} ({} bytes)", value.len()));
        }
    }
    let mut in_json = 0usize;
    if let Some(value) = annotations.get(JSON_ANNOTATION) {
        total = total.saturating_add(value.len());
        if value.len() > limits.token_annotation_bytes {
            oversized.push(format!("{JSON_ANNOTATION} ({} bytes)", value.len()));
        }
        // Not an array, or not JSON: the decode below says so.
        in_json = count_array_elements(value).unwrap_or(0);
    }
    let requests = propeller.saturating_add(in_json);
    if requests > limits.token_requests {
        problems.push(format!(
            "the pod has {requests} token requests ({propeller} {TOKEN_ANNOTATION_PREFIX}* annotations, {in_json} in {JSON_ANNOTATION}); at most {} are allowed (limits.token_requests in the injector config)",
            limits.token_requests
        ));
    }
    if !oversized.is_empty() {
        problems.push(format!(
            "annotation {oversized}: over {} bytes, the most one token annotation may hold (limits.token_annotation_bytes in the injector config)",
            limits.token_annotation_bytes
        ));
    }
    if total > limits.token_annotations_total_bytes {
        problems.push(format!(
            "the token annotations ({TOKEN_ANNOTATION_PREFIX}*, {JSON_ANNOTATION}) hold {total} bytes; at most {} are allowed (limits.token_annotations_total_bytes in the injector config)",
            limits.token_annotations_total_bytes
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Items of one kind, the first few named and the rest counted.
#[derive(Default)]
struct Listed {
    shown: Vec<String>,
    more: usize,
}

impl Listed {
    fn push(&mut self, item: String) {
        if self.shown.len() < LISTED {
            self.shown.push(item);
        } else {
            self.more += 1;
        }
    }

    fn is_empty(&self) -> bool {
        self.shown.is_empty()
    }
}

impl fmt::Display for Listed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown.join(", "))?;
        if self.more > 0 {
            write!(f, " and {} more", self.more)?;
        }
        Ok(())
    }
}

/// The number of elements of the JSON array `text`, read without building them (each element
/// is skipped with `IgnoredAny`); `None` when `text` is not a JSON array.
fn count_array_elements(text: &str) -> Option<usize> {
    struct Count;
    impl<'de> serde::de::Visitor<'de> for Count {
        type Value = usize;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON array")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
            let mut n = 0usize;
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                n += 1;
            }
            Ok(n)
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    serde::Deserializer::deserialize_seq(&mut de, Count).ok()
}

/// Checks a Secret data key (`[-._a-zA-Z0-9]+`, at most 253 characters, not starting with `..`).
pub fn check_secret_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("is empty; it names the key in the Kubernetes Secret".into());
    }
    if key.len() > 253
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        || key == "."
        || key == ".."
    {
        return Err(format!(
            "{key:?} is not a Secret data key (letters, digits, '-', '_' and '.', at most 253)"
        ));
    }
    // The kubelet keeps its own `..data` and `..<timestamp>` entries in a secret volume, and
    // Kubernetes refuses such keys in a Secret, so the pod could never start.
    if key.starts_with("..") {
        return Err(format!(
            "{key:?} starts with '..', which Kubernetes reserves in secret volumes (the kubelet's ..data); no Secret can hold it or mount it"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_elements_are_counted_without_being_built() {
        assert_eq!(count_array_elements("[]"), Some(0));
        assert_eq!(count_array_elements(r#"[{"a":[1,2]}, 3, "x"]"#), Some(3));
        assert_eq!(count_array_elements("{}"), None);
        assert_eq!(count_array_elements("[1,"), None);
    }

    #[test]
    fn reserved_keys() {
        assert!(check_secret_key("..data").unwrap_err().contains("'..'"));
        assert!(check_secret_key("...x").is_err());
        assert!(check_secret_key(".x").is_ok());
        assert!(check_secret_key("a..b").is_ok());
    }
}
