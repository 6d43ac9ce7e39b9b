//! A pod's token requests, from its annotations: `flyte.tokens/t<i>` (flytepropeller's form:
//! protobuf text format in propeller's base32, like its `flyte.secrets/s<i>`) and
//! `flyte.org/token-requests` (a JSON array in flyteidl's JSON form, with the agent's
//! extensions), checked by the agent's own rules, plus what Kubernetes needs of the secrets they
//! name (a Secret name and a data key it can mount).

use std::collections::BTreeMap;

use flyte_auth_agent::config::{validate_token_requests, TokenRequest};
use flyte_auth_proto::annotation;
use flyte_auth_proto::flyteidl::core::OAuth2TokenRequest;

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

/// Reads and checks the token requests in `annotations`. On failure, every problem, one line
/// each, naming the annotation and field.
pub fn from_annotations(
    annotations: &BTreeMap<String, String>,
    allow_insecure_http: bool,
) -> Result<PodRequests, Vec<String>> {
    let mut problems = Vec::new();
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
    let mut items: Vec<(String, serde_json::Value)> =
        items.into_iter().map(|(_, key, v)| (key, v)).collect();
    if let Some(value) = annotations.get(JSON_ANNOTATION) {
        match serde_json::from_str::<serde_json::Value>(value) {
            Ok(serde_json::Value::Array(values)) => items.extend(
                values
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| (format!("{JSON_ANNOTATION}[{i}]"), v)),
            ),
            Ok(_) => problems.push(format!(
                "annotation {JSON_ANNOTATION}: is not a JSON array of token requests"
            )),
            Err(e) => problems.push(format!("annotation {JSON_ANNOTATION}: is not JSON: {e}")),
        }
    }
    let json: Vec<serde_json::Value> = items.iter().map(|(_, v)| v.clone()).collect();
    let paths: Vec<String> = items.iter().map(|(p, _)| p.clone()).collect();
    let requests = match validate_token_requests(items, SOURCE, allow_insecure_http) {
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
    // The agent's rules say nothing of Kubernetes; the volume needs a Secret name and key.
    for (request, path) in requests.iter().zip(&paths) {
        let secret = &request.client_secret;
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
    }
    if problems.is_empty() {
        Ok(PodRequests { json, requests })
    } else {
        Err(problems)
    }
}

/// Checks a Secret data key (`[-._a-zA-Z0-9]+`, at most 253 characters).
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
    Ok(())
}
