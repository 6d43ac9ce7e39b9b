//! One AdmissionReview in, one out: decode the request, decide (skip, deny or patch) and encode
//! the response. Pure: no I/O and no network, so the request path cannot wait on anything.

use std::collections::BTreeMap;

use base64::Engine as _;
use flyte_auth_agent::config::AdminMode;
use k8s_openapi::api::core::v1::Pod;
use kube_core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube_core::DynamicObject;

use crate::config::{AdminEnv, Config};
use crate::mutate;
use crate::requests;

/// The pod annotation that picks the Admin credential mode for one pod.
pub const ADMIN_MODE_ANNOTATION: &str = "flyte.org/auth-agent-admin-mode";
/// The only AdmissionReview version served.
const API_VERSION: &str = "admission.k8s.io/v1";

/// How a review ended, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A patch was returned.
    Mutated,
    /// Opted in, but there was nothing to add (already injected, or nothing requested).
    Unchanged,
    /// Not ours to touch (not a Pod CREATE, or not opted in): allowed as is.
    Skipped,
    /// The pod was refused, with a message.
    Denied,
    /// The body was not an AdmissionReview (refused, with a message).
    Invalid,
}

impl Outcome {
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mutated => "mutated",
            Self::Unchanged => "unchanged",
            Self::Skipped => "skipped",
            Self::Denied => "denied",
            Self::Invalid => "invalid",
        }
    }
}

/// The answer to one review.
#[derive(Debug, Clone)]
pub struct Reviewed {
    /// The AdmissionReview JSON to send back (HTTP 200, `application/json`).
    pub body: Vec<u8>,
    /// How it ended.
    pub outcome: Outcome,
}

/// The webhook's decision logic over a checked configuration.
#[derive(Debug, Clone)]
pub struct Injector {
    config: Config,
    /// The Admin env for each credential mode a pod may pick, or why that mode is unusable;
    /// worked out once, so a review only looks it up.
    admin: BTreeMap<&'static str, Result<Option<AdminEnv>, String>>,
}

impl Injector {
    /// An injector for `config` (already checked by [`Config::parse`]).
    pub fn new(config: Config) -> Self {
        let modes = [
            AdminMode::ClientSecret,
            AdminMode::JwtBearer,
            AdminMode::TokenExchange,
        ];
        let admin = modes
            .into_iter()
            .map(|mode| {
                let env = config.admin_env(Some(mode)).map_err(|e| {
                    e.0.iter()
                        .map(|e| format!("{}: {}", e.field, e.problem))
                        .collect::<Vec<_>>()
                        .join("; ")
                });
                (mode.as_str(), env)
            })
            .collect();
        Self { config, admin }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Answers one AdmissionReview request body. Never panics on any input; a body that is not
    /// a review gets a review that refuses, naming the problem.
    pub fn review(&self, body: &[u8]) -> Reviewed {
        let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(body) {
            Ok(review) => review,
            Err(e) => {
                return refuse(
                    uid_of(body).as_deref(),
                    &format!("the body is not an AdmissionReview: {e}"),
                )
            }
        };
        if review.types.api_version != API_VERSION || review.types.kind != "AdmissionReview" {
            return refuse(
                review.request.as_ref().map(|r| r.uid.as_str()),
                &format!(
                    "expected an AdmissionReview of {API_VERSION}, got kind {:?} of {:?}",
                    review.types.kind, review.types.api_version
                ),
            );
        }
        let request: AdmissionRequest<DynamicObject> = match review.try_into() {
            Ok(request) => request,
            Err(_) => return refuse(None, "the AdmissionReview has no request"),
        };
        let span = tracing::info_span!(
            "review",
            uid = %request.uid,
            namespace = request.namespace.as_deref().unwrap_or(""),
            pod = tracing::field::Empty,
        );
        let _entered = span.enter();
        let (response, outcome) = self.decide(&request, &span);
        match outcome {
            Outcome::Denied => {
                tracing::info!(outcome = outcome.as_str(), reason = %response.result.message, "pod denied")
            }
            _ => tracing::debug!(outcome = outcome.as_str(), "reviewed"),
        }
        Reviewed {
            body: encode(response),
            outcome,
        }
    }

    fn decide(
        &self,
        request: &AdmissionRequest<DynamicObject>,
        span: &tracing::Span,
    ) -> (AdmissionResponse, Outcome) {
        let allow = AdmissionResponse::from(request);
        let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
        if !is_pod || request.sub_resource.is_some() || request.operation != Operation::Create {
            return (allow, Outcome::Skipped);
        }
        let deny = |problems: Vec<String>| {
            (
                AdmissionResponse::from(request)
                    .deny(format!("flyte-auth-injector: {}", problems.join("; "))),
                Outcome::Denied,
            )
        };
        let pod = match request
            .object
            .as_ref()
            .map(serde_json::to_value)
            .transpose()
            .and_then(|v| v.map(serde_json::from_value::<Pod>).transpose())
        {
            Ok(Some(pod)) => pod,
            Ok(None) => return deny(vec!["request.object is missing".into()]),
            Err(e) => return deny(vec![format!("request.object is not a Pod: {e}")]),
        };
        let name = pod
            .metadata
            .name
            .as_deref()
            .or(pod.metadata.generate_name.as_deref())
            .unwrap_or("");
        span.record("pod", name);
        let opt_in = &self.config.opt_in;
        let opted_in = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(&opt_in.label))
            .is_some_and(|v| *v == opt_in.value);
        if !opted_in {
            return (allow, Outcome::Skipped);
        }
        if mutate::already_injected(&self.config, &pod) {
            return (allow, Outcome::Unchanged);
        }
        let no_annotations = BTreeMap::new();
        let annotations = pod.metadata.annotations.as_ref().unwrap_or(&no_annotations);
        let admin = match self.admin_for(annotations) {
            Ok(admin) => admin,
            Err(problem) => return deny(vec![problem]),
        };
        let requests =
            match requests::from_annotations(annotations, self.config.agent.allow_insecure_http) {
                Ok(requests) => requests,
                Err(problems) => return deny(problems),
            };
        if requests.is_empty() && admin.is_none() {
            let mut response = allow;
            response.warnings = Some(vec![format!(
                "{}={} is set but the pod has no token requests and no Admin proxy is configured; the auth agent was not added",
                opt_in.label, opt_in.value
            )]);
            return (response, Outcome::Unchanged);
        }
        match mutate::mutate(&self.config, &pod, &requests, admin) {
            Err(problems) => deny(problems),
            Ok(mutation) => {
                let warnings = mutation.warnings;
                match allow.with_patch(mutation.patch) {
                    Ok(mut response) => {
                        if !warnings.is_empty() {
                            response.warnings = Some(warnings);
                        }
                        (response, Outcome::Mutated)
                    }
                    Err(e) => deny(vec![format!("cannot encode the patch: {e}")]),
                }
            }
        }
    }

    /// The Admin settings for this pod: the configured mode, or the one its annotation picks.
    fn admin_for(
        &self,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Option<&AdminEnv>, String> {
        let configured = || {
            self.config
                .admin
                .as_ref()
                .and_then(|a| a.agent.get("mode"))
                .and_then(|m| m.as_str())
                .unwrap_or_default()
        };
        let requested = annotations.get(ADMIN_MODE_ANNOTATION).map(|m| m.trim());
        let mode = requested.unwrap_or_else(configured);
        if self.config.admin.is_none() {
            return match requested {
                Some(_) => Err(format!(
                    "annotation {ADMIN_MODE_ANNOTATION}: no FlyteAdmin proxy is configured in the injector, so there is no credential mode to pick"
                )),
                None => Ok(None),
            };
        }
        match self.admin.get(mode) {
            Some(Ok(env)) => Ok(env.as_ref()),
            Some(Err(problem)) => Err(format!(
                "annotation {ADMIN_MODE_ANNOTATION}: mode {mode} is not configured in the injector ({problem})"
            )),
            None => Err(format!(
                "annotation {ADMIN_MODE_ANNOTATION}: unknown credential mode {mode:?}; use client-secret, jwt-bearer or token-exchange"
            )),
        }
    }
}

/// A review refusing with `message`, for requests that never reached a decision (a body over the
/// size limit, one that is not a review); `uid` when it is known.
pub fn refuse(uid: Option<&str>, message: &str) -> Reviewed {
    let mut response = AdmissionResponse::invalid(format!("flyte-auth-injector: {message}"));
    response.uid = uid.unwrap_or_default().to_string();
    tracing::info!(
        outcome = Outcome::Invalid.as_str(),
        reason = message,
        "review refused"
    );
    Reviewed {
        body: encode(response),
        outcome: Outcome::Invalid,
    }
}

/// The request uid of a body that is JSON but not a well-formed review, so the refusal is still
/// matched to its request.
fn uid_of(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.pointer("/request/uid")?.as_str().map(str::to_string)
}

/// The response as an `admission.k8s.io/v1` AdmissionReview.
fn encode(response: AdmissionResponse) -> Vec<u8> {
    let mut review = response.into_review();
    // `invalid()` answers v1beta1; this webhook is registered for v1 only.
    review.types.api_version = API_VERSION.into();
    review.types.kind = "AdmissionReview".into();
    let mut value = serde_json::to_value(&review).unwrap_or_default();
    // kube-core writes the patch as an array of bytes; the documented wire form is base64.
    if let Some(patch) = value.pointer_mut("/response/patch") {
        let bytes: Vec<u8> = serde_json::from_value(patch.take()).unwrap_or_default();
        *patch = base64::engine::general_purpose::STANDARD
            .encode(bytes)
            .into();
    }
    serde_json::to_vec(&value).unwrap_or_default()
}
