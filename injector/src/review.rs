//! One AdmissionReview in, one out: decode the request, decide (skip, deny or patch) and encode
//! the response. Pure: no I/O and no network, so the request path cannot wait on anything.
//!
//! A body is parsed once into typed structs. When that fails, it is read again only for what
//! the answer needs (the request's kind, operation and uid), skipping the object unbuilt: a
//! generic JSON tree of a 2 MB body of small objects would cost tens of MB.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine as _;
use flyte_auth_agent::pacing::Pacer;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde::Deserialize;

use crate::config::{AdminEnv, Config, ADMIN_MODES};
use crate::mutate;
use crate::requests;
use crate::scope::{Execution, ScopeRules, ScopeSource};

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
    /// Every outcome, for metrics that must exist from the start.
    pub const ALL: [Outcome; 5] = [
        Self::Mutated,
        Self::Unchanged,
        Self::Skipped,
        Self::Denied,
        Self::Invalid,
    ];

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
    /// Where the pod's Admin scope came from, when it was to get an Admin proxy.
    pub scope: Option<ScopeSource>,
}

/// The webhook's decision logic over a checked configuration.
#[derive(Debug, Clone)]
pub struct Injector {
    config: Config,
    /// The Admin env for each credential mode a pod may pick, or why that mode is unusable;
    /// worked out once, so a review only looks it up.
    admin: BTreeMap<&'static str, Result<Option<AdminEnv>, String>>,
    /// What token requests may ask for.
    policy: requests::Policy,
    /// How a namespace reads as an execution scope, or why the `scope` settings are unusable
    /// (only for a config that [`Config::parse`] did not check).
    scope: Result<ScopeRules, String>,
    /// The first-call times of `agent.start_pacing`, shared by every review (and every clone:
    /// the schedule is one per process); None when off.
    pacer: Option<Arc<Pacer>>,
}

impl Injector {
    /// An injector for `config` (already checked by [`Config::parse`]).
    pub fn new(config: Config) -> Self {
        let admin = ADMIN_MODES
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
        let policy = requests::Policy::new(&config);
        let scope = ScopeRules::new(&config.scope).map_err(|problems| {
            problems
                .iter()
                .map(|(field, problem)| format!("{field}: {problem}"))
                .collect::<Vec<_>>()
                .join("; ")
        });
        let pacing = config.agent.start_pacing;
        let pacer = pacing
            .enabled()
            .then(|| Arc::new(Pacer::new(pacing.rate, pacing.burst, pacing.max_delay)));
        Self {
            config,
            admin,
            policy,
            scope,
            pacer,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Answers one AdmissionReview request body. Never panics on any input; a body that is not
    /// a review gets a review that refuses, naming the problem.
    pub fn review(&self, body: &[u8]) -> Reviewed {
        let limit = self.config.limits.review_array_items;
        if array_items_over(body, limit) {
            return refuse(
                uid_of(body).as_deref(),
                &format!(
                    "the AdmissionReview holds more than {limit} JSON array elements (containers, env vars, volumes, args… all together); at most {limit} are allowed (limits.review_array_items in the injector config)"
                ),
            );
        }
        // One typed parse in the common case; a body whose object is not a Pod is read again
        // untyped, to tell "not ours" (allowed) from "a Pod that does not parse" (denied).
        match serde_json::from_slice::<AdmissionReview<Pod>>(body) {
            Ok(review) => match self.request_of(review) {
                Ok(mut request) => {
                    let pod = request
                        .object
                        .take()
                        .ok_or("request.object is missing".to_string());
                    self.answer(&request, pod)
                }
                Err(refused) => refused,
            },
            Err(typed_error) => match serde_json::from_slice::<AdmissionReview<Unread>>(body) {
                Ok(review) => match self.request_of(review) {
                    Ok(request) => self.answer(
                        &request,
                        Err(format!("request.object is not a Pod: {typed_error}")),
                    ),
                    Err(refused) => refused,
                },
                Err(e) => refuse(
                    uid_of(body).as_deref(),
                    &format!("the body is not an AdmissionReview: {e}"),
                ),
            },
        }
    }

    /// Decides on one request, logging under its own span.
    fn answer<T: kube_core::Resource>(
        &self,
        request: &AdmissionRequest<T>,
        pod: Result<Pod, String>,
    ) -> Reviewed {
        let span = tracing::info_span!(
            "review",
            uid = %request.uid,
            namespace = request.namespace.as_deref().unwrap_or(""),
            pod = tracing::field::Empty,
        );
        let _entered = span.enter();
        let (decision, scope) = self.decide(request, pod, &span);
        let (answer, outcome) = decision.answer(request);
        match outcome {
            Outcome::Denied => {
                tracing::info!(outcome = outcome.as_str(), reason = %answer.response.result.message, "pod denied")
            }
            _ => tracing::debug!(outcome = outcome.as_str(), "reviewed"),
        }
        Reviewed {
            body: encode(answer),
            outcome,
            scope,
        }
    }

    /// The request of a v1 review, or the refusal of anything else.
    fn request_of<T: kube_core::Resource>(
        &self,
        review: AdmissionReview<T>,
    ) -> Result<AdmissionRequest<T>, Reviewed> {
        if review.types.api_version != API_VERSION || review.types.kind != "AdmissionReview" {
            return Err(refuse(
                review.request.as_ref().map(|r| r.uid.as_str()),
                &format!(
                    "expected an AdmissionReview of {API_VERSION}, got kind {:?} of {:?}",
                    review.types.kind, review.types.api_version
                ),
            ));
        }
        review
            .try_into()
            .map_err(|_| refuse(None, "the AdmissionReview has no request"))
    }

    /// The decision on one request, and where the pod's scope came from if it was read.
    fn decide<T: kube_core::Resource>(
        &self,
        request: &AdmissionRequest<T>,
        pod: Result<Pod, String>,
        span: &tracing::Span,
    ) -> (Decision, Option<ScopeSource>) {
        let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
        if !is_pod || request.sub_resource.is_some() || request.operation != Operation::Create {
            return (Decision::Skip, None);
        }
        let pod = match pod {
            Ok(pod) => pod,
            Err(problem) => return (Decision::Deny(vec![problem]), None),
        };
        let name = pod
            .metadata
            .name
            .as_deref()
            .or(pod.metadata.generate_name.as_deref())
            .unwrap_or("");
        span.record("pod", name);
        if !self.opted_in(&pod) {
            return (Decision::Skip, None);
        }
        if mutate::already_injected(&self.config, &pod) {
            return (Decision::Unchanged(Vec::new()), None);
        }
        // The review's namespace, not the pod's metadata.namespace: the API server fills in the
        // first, the pod's author writes (or omits) the second. A dry run creates no pod, so it
        // takes no paced start from the ones that will.
        self.inject(request.namespace.as_deref(), &pod, !request.dry_run)
    }

    /// Whether the pod carries the opt-in label with its value.
    fn opted_in(&self, pod: &Pod) -> bool {
        let opt_in = &self.config.opt_in;
        pod.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(&opt_in.label))
            .is_some_and(|v| *v == opt_in.value)
    }

    /// The decision on an opted-in pod not injected yet: its Admin proxy and scope, then (in
    /// [`Self::add_agent`]) its token requests and the patch.
    fn inject(
        &self,
        namespace: Option<&str>,
        pod: &Pod,
        paced: bool,
    ) -> (Decision, Option<ScopeSource>) {
        let no_annotations = BTreeMap::new();
        let annotations = pod.metadata.annotations.as_ref().unwrap_or(&no_annotations);
        let admin = match self.admin_for(annotations) {
            Ok(admin) => admin,
            Err(problem) => return (Decision::Deny(vec![problem]), None),
        };
        let rules = match &self.scope {
            Ok(rules) => rules,
            Err(problem) => {
                let problem = format!("the injector's scope settings: {problem}");
                return (Decision::Deny(vec![problem]), None);
            }
        };
        let execution = match rules.execution(namespace, pod, admin.is_some()) {
            Ok(execution) => execution,
            Err(problems) => return (Decision::Deny(problems), Some(ScopeSource::Disagreed)),
        };
        // No scope, no proxy: a proxy with no scope would act anywhere.
        let admin = admin.filter(|_| execution.scope.is_some());
        let source = execution.source;
        (
            self.add_agent(pod, annotations, admin, execution, paced),
            source,
        )
    }

    /// The agent added for the pod's token requests and Admin proxy, if it has either.
    fn add_agent(
        &self,
        pod: &Pod,
        annotations: &BTreeMap<String, String>,
        admin: Option<&AdminEnv>,
        mut execution: Execution,
        paced: bool,
    ) -> Decision {
        let requests = match requests::from_annotations(annotations, &self.policy) {
            Ok(requests) => requests,
            Err(problems) => return Decision::Deny(problems),
        };
        let mut warnings = std::mem::take(&mut execution.warnings);
        if requests.is_empty() && admin.is_none() {
            let opt_in = &self.config.opt_in;
            warnings.push(format!(
                "{}={} is set but the pod has no token requests and no Admin proxy; the auth agent was not added",
                opt_in.label, opt_in.value
            ));
            return Decision::Unchanged(warnings);
        }
        if let Some(pacer) = self.pacer.as_ref().filter(|_| paced) {
            // One IdP call per token request, and one for the Admin credential. A pod denied
            // below leaves its calls unused: the schedule errs towards the IdP's side.
            let calls = requests.requests.len() + usize::from(admin.is_some());
            let calls = u32::try_from(calls).unwrap_or(u32::MAX);
            execution.start_at = Some(pacer.reserve(SystemTime::now(), calls));
        }
        match mutate::mutate(&self.config, pod, &requests, admin, &execution) {
            Err(problems) => Decision::Deny(problems),
            Ok(mutation) => {
                warnings.extend(mutation.warnings);
                Decision::Mutate(mutation.patch, warnings)
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
        body: encode(Answer::from(response)),
        outcome: Outcome::Invalid,
        scope: None,
    }
}

/// The request uid of a body that is JSON but not a well-formed review, so the refusal is still
/// matched to its request; read without building anything else.
fn uid_of(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Review {
        request: Option<Request>,
    }
    #[derive(Deserialize)]
    struct Request {
        uid: Option<String>,
    }
    serde_json::from_slice::<Review>(body).ok()?.request?.uid
}

/// Whether the JSON `body` holds more than `limit` array elements, all arrays together; found by
/// a scan that builds nothing and stops at the first element over. A body that is not JSON is
/// not over (the parse that follows says what is wrong with it).
fn array_items_over(body: &[u8], limit: usize) -> bool {
    use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
    use std::cell::Cell;

    const OVER: &str = "array elements over the limit";
    #[derive(Clone, Copy)]
    struct Count<'a> {
        left: &'a Cell<usize>,
        over: &'a Cell<bool>,
    }
    impl<'de> DeserializeSeed<'de> for Count<'_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
            de.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Count<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element_seed(self)?.is_some() {
                // Read after the element: its own arrays have been counted by then.
                let Some(left) = self.left.get().checked_sub(1) else {
                    self.over.set(true);
                    return Err(A::Error::custom(OVER));
                };
                self.left.set(left);
            }
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while map.next_key::<serde::de::IgnoredAny>()?.is_some() {
                map.next_value_seed(self)?;
            }
            Ok(())
        }
    }
    let (left, over) = (Cell::new(limit), Cell::new(false));
    let mut de = serde_json::Deserializer::from_slice(body);
    let _ = Count {
        left: &left,
        over: &over,
    }
    .deserialize(&mut de);
    over.get()
}

/// An object that is skipped, not built: the stand-in for a review's object when it is not a
/// Pod, so that telling "not ours" from "a Pod that does not parse" costs no allocation per
/// field of the object.
#[derive(Debug, Clone, Default)]
struct Unread {
    meta: ObjectMeta,
}

impl<'de> Deserialize<'de> for Unread {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(de)?;
        Ok(Self::default())
    }
}

impl kube_core::Resource for Unread {
    type DynamicType = ();
    type Scope = kube_core::NamespaceResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        "".into()
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        "".into()
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        "".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.meta
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.meta
    }
}

/// What was decided about one request, before it is written as a response.
enum Decision {
    /// Not ours to touch: allowed as is.
    Skip,
    /// Opted in, but nothing was added; what the requester should know.
    Unchanged(Vec<String>),
    /// Refused, for every reason listed.
    Deny(Vec<String>),
    /// The patch, and what the requester should know.
    Mutate(json_patch::Patch, Vec<String>),
}

impl Decision {
    /// The response to `request`, and how the review ended.
    fn answer<T: kube_core::Resource>(self, request: &AdmissionRequest<T>) -> (Answer, Outcome) {
        let mut answer = Answer::from(AdmissionResponse::from(request));
        let outcome = match self {
            Self::Skip => Outcome::Skipped,
            Self::Unchanged(warnings) => {
                answer.warn(warnings);
                Outcome::Unchanged
            }
            Self::Deny(problems) => {
                let message = format!("flyte-auth-injector: {}", problems.join("; "));
                answer.response = answer.response.deny(message);
                Outcome::Denied
            }
            Self::Mutate(patch, warnings) => {
                answer.warn(warnings);
                answer.patch = Some(patch);
                Outcome::Mutated
            }
        };
        (answer, outcome)
    }
}

/// A response and the patch that goes with it.
struct Answer {
    response: AdmissionResponse,
    patch: Option<json_patch::Patch>,
}

impl Answer {
    /// Adds `warnings` for the requester, if there are any.
    fn warn(&mut self, warnings: Vec<String>) {
        if !warnings.is_empty() {
            self.response.warnings = Some(warnings);
        }
    }
}

impl From<AdmissionResponse> for Answer {
    fn from(response: AdmissionResponse) -> Self {
        Self {
            response,
            patch: None,
        }
    }
}

/// The answer as an `admission.k8s.io/v1` AdmissionReview.
fn encode(answer: Answer) -> Vec<u8> {
    let mut review = answer.response.into_review();
    // `invalid()` answers v1beta1; this webhook is registered for v1 only.
    review.types.api_version = API_VERSION.into();
    review.types.kind = "AdmissionReview".into();
    let mut value = serde_json::to_value(&review).unwrap_or_default();
    // The documented wire form is a base64 string (kube-core's `with_patch` would write an array
    // of byte values), so the patch is encoded here.
    if let (Some(patch), Some(response)) = (answer.patch, value.get_mut("response")) {
        let bytes = serde_json::to_vec(&patch).unwrap_or_default();
        response["patch"] = base64::engine::general_purpose::STANDARD
            .encode(bytes)
            .into();
        response["patchType"] = "JSONPatch".into();
    }
    serde_json::to_vec(&value).unwrap_or_default()
}

#[cfg(test)]
mod array_items {
    use super::array_items_over;

    #[test]
    fn every_array_counts_and_the_limit_is_inclusive() {
        assert!(!array_items_over(b"[1,2,3]", 3));
        assert!(array_items_over(b"[1,2,3,4]", 3));
        assert!(!array_items_over(br#"{"a":[1],"b":{"c":[[2]]}}"#, 3));
        assert!(array_items_over(br#"{"a":[1],"b":{"c":[[2,3]]}}"#, 3));
        assert!(!array_items_over(b"not json [1,2,3,4]", 3));
        assert!(!array_items_over(br#"{"a":"[1,2,3,4]"}"#, 3));
    }
}
