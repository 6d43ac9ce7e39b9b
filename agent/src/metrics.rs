//! Prometheus metrics (through `prometheus-client`): token requests to IdPs by name and outcome,
//! IdP latency, cache hits and misses, and each token's seconds to expiry, computed at scrape
//! time; gRPC calls proxied to FlyteAdmin by method and status, and the latency the proxy adds.
//! Labels carry token request names, methods and outcomes only, never values, and every label
//! comes from a bounded set: token request names from the configuration, gRPC methods from
//! [`MethodLabels`] (the rest are `other`), gRPC codes 0–16 by name, policy refusal reasons from
//! [`crate::scope::Reason`].

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::lock::lock;

type NameLabel = [(&'static str, String); 1];
type OutcomeLabels = [(&'static str, String); 2];

/// The agent's metric families.
#[derive(Debug)]
pub struct Metrics {
    /// Behind a lock so parts built later (the token cache) can add their own collectors.
    registry: Mutex<Registry>,
    token_requests: Family<OutcomeLabels, Counter>,
    idp_latency: Family<NameLabel, Histogram, fn() -> Histogram>,
    cache_hits: Family<NameLabel, Counter>,
    cache_misses: Family<NameLabel, Counter>,
    admin_calls: Family<CallLabels, Counter>,
    admin_refusals: Family<CallLabels, Counter>,
    admin_overhead: Histogram,
}

/// A proxied call's labels: its method (interned by [`MethodLabels`], so building the key
/// allocates nothing) and a fixed outcome (a gRPC code name or a refusal reason).
type CallLabels = (
    [(&'static str, Arc<str>); 1],
    [(&'static str, &'static str); 1],
);

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The per-name handles used on hot paths, so a cache hit costs one atomic add.
#[derive(Debug, Clone)]
pub struct NameMetrics {
    /// Cache hits for this name.
    pub hits: Counter,
    /// Cache misses for this name.
    pub misses: Counter,
    /// IdP call latency for this name.
    pub idp_latency: Histogram,
}

fn latency_histogram() -> Histogram {
    // 5 ms to ~20 s: loopback IdPs answer in milliseconds, remote ones in hundreds.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.005, 2.0, 12,
    ))
}

impl Metrics {
    /// Registers every family the agent counts into.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("flyte_auth_agent");
        let token_requests = Family::<OutcomeLabels, Counter>::default();
        let idp_latency = Family::<NameLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let cache_hits = Family::<NameLabel, Counter>::default();
        let cache_misses = Family::<NameLabel, Counter>::default();
        registry.register(
            "token_requests",
            "Token requests sent to IdPs, by token request name and outcome",
            token_requests.clone(),
        );
        registry.register(
            "idp_request_duration_seconds",
            "Time to obtain a token from the IdP",
            idp_latency.clone(),
        );
        registry.register(
            "cache_hits",
            "Token reads answered from the cache",
            cache_hits.clone(),
        );
        registry.register(
            "cache_misses",
            "Token reads that had to wait for the IdP",
            cache_misses.clone(),
        );
        let admin_calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "admin_calls",
            "gRPC calls proxied to FlyteAdmin, by method and gRPC status as the task saw it",
            admin_calls.clone(),
        );
        let admin_refusals = Family::<CallLabels, Counter>::default();
        registry.register(
            "admin_policy_refusals",
            "gRPC calls the execution-scope policy refused, by method and reason (a fixed set)",
            admin_refusals.clone(),
        );
        // 10 µs to ~40 ms: a credential from the cache costs microseconds, a cold one an IdP trip.
        let admin_overhead = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.00001, 2.0, 12),
        );
        registry.register(
            "admin_proxy_overhead_seconds",
            "Time from a proxied call's arrival until it is handed to the FlyteAdmin connection",
            admin_overhead.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            token_requests,
            idp_latency,
            cache_hits,
            cache_misses,
            admin_calls,
            admin_refusals,
            admin_overhead,
        }
    }

    /// Adds a collector read at scrape time (the token cache's seconds to expiry).
    pub fn register_collector(&self, collector: Box<dyn prometheus_client::collector::Collector>) {
        lock(&self.registry).register_collector(collector);
    }

    /// The handles for one token request name.
    pub fn for_name(&self, name: &str) -> NameMetrics {
        let label = [("name", name.to_string())];
        NameMetrics {
            hits: self.cache_hits.get_or_create(&label).clone(),
            misses: self.cache_misses.get_or_create(&label).clone(),
            idp_latency: self.idp_latency.get_or_create(&label).clone(),
        }
    }

    /// Counts one IdP token request with its outcome (`ok` or an error kind).
    pub fn token_request(&self, name: &str, outcome: &str) {
        self.token_requests
            .get_or_create(&[("name", name.to_string()), ("outcome", outcome.to_string())])
            .inc();
    }

    /// Counts one proxied call with its gRPC status code. `method` must come from a bounded set:
    /// a [`MethodLabels::label`], or [`DENIED`] for a call the agent refused itself.
    pub fn admin_call(&self, method: &Arc<str>, code: u16) {
        self.admin_calls
            .get_or_create(&([("method", method.clone())], [("code", code_label(code))]))
            .inc();
    }

    /// Counts a call the execution-scope policy refused; `method` must come from
    /// [`MethodLabels`], `reason` from [`crate::scope::Reason::as_str`].
    pub fn admin_refusal(&self, method: &Arc<str>, reason: &'static str) {
        self.admin_refusals
            .get_or_create(&([("method", method.clone())], [("reason", reason)]))
            .inc();
    }

    /// Records the time a call spent in the proxy before going upstream.
    pub fn admin_overhead(&self, elapsed: std::time::Duration) {
        self.admin_overhead.observe(elapsed.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &lock(&self.registry));
        out
    }
}

/// The `method` label of calls the agent refused before Admin saw them (not allowed, or not a
/// canonical gRPC path).
pub const DENIED: &str = "denied";
/// The `method` label of every method outside [`MethodLabels`].
pub const OTHER: &str = "other";

/// The gRPC methods that get their own `method` label: every method of the flyteidl services
/// Admin serves a task (and any other service the proto crate describes), plus the exact entries
/// of `admin.allowed_methods`. Paths
/// come from the task, so any other one is [`OTHER`]: 20,000 distinct paths are still one series.
#[derive(Debug, Clone)]
pub struct MethodLabels {
    known: Arc<HashSet<Arc<str>>>,
    other: Arc<str>,
    denied: Arc<str>,
}

impl MethodLabels {
    /// The known methods plus `extra` paths (`/pkg.Service/Method`, or without the leading `/`).
    pub fn new<'a>(extra: impl IntoIterator<Item = &'a str>) -> Self {
        let pool = flyte_auth_proto::descriptor_pool();
        let mut known: HashSet<Arc<str>> = HashSet::new();
        for service in pool.services() {
            for method in service.methods() {
                known.insert(format!("/{}/{}", service.full_name(), method.name()).into());
            }
        }
        known.extend(flyte_auth_proto::services::paths().map(Arc::from));
        for path in extra {
            let path = path.trim_start_matches('/');
            // A wildcard stands for paths the task chooses; only exact entries are labels.
            if !path.is_empty() && !path.contains('*') {
                known.insert(format!("/{path}").into());
            }
        }
        Self {
            known: Arc::new(known),
            other: OTHER.into(),
            denied: DENIED.into(),
        }
    }

    /// The label for a call to `path`: the path itself if it is known, else [`OTHER`].
    pub fn label(&self, path: &str) -> Arc<str> {
        self.known.get(path).unwrap_or(&self.other).clone()
    }

    /// The label of calls refused before Admin saw them: [`DENIED`].
    pub fn denied(&self) -> Arc<str> {
        self.denied.clone()
    }
}

/// The name of a gRPC status code, as tonic spells it; a number outside 0–16 is `Unknown`, which
/// is also what a gRPC client makes of it.
pub fn code_label(code: u16) -> &'static str {
    match code {
        0 => "Ok",
        1 => "Cancelled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_known_methods_or_other() {
        let labels = MethodLabels::new([
            "my.company.Gateway/Call",
            "/my.company.Gateway/Other",
            "my.company.Wild/*",
            "*",
        ]);
        for known in [
            "/flyteidl.service.AuthMetadataService/GetPublicClientConfig",
            "/flyteidl.service.AuthMetadataService/GetOAuth2Metadata",
            "/flyteidl.service.AdminService/GetExecution",
            "/flyteidl.service.AdminService/CreateExecution",
            "/flyteidl.service.DataProxyService/CreateUploadLocation",
            "/flyteidl.service.SignalService/SetSignal",
            "/my.company.Gateway/Call",
            "/my.company.Gateway/Other",
        ] {
            assert_eq!(&*labels.label(known), known);
        }
        for other in [
            "/my.company.Wild/Call",
            "/flyteidl.service.AdminService/NoSuchMethod",
            "/flyteidl.service.AdminService/GetExecution/",
            "/x.Y/Z0",
            "*",
            "",
        ] {
            assert_eq!(&*labels.label(other), OTHER, "{other}");
        }
    }

    #[test]
    fn every_code_label_is_one_of_seventeen_names() {
        let names: HashSet<_> = (0..=u16::MAX).map(code_label).collect();
        assert_eq!(names.len(), 17);
        for code in 0..=16u16 {
            assert_eq!(
                code_label(code),
                format!("{:?}", tonic::Code::from(i32::from(code)))
            );
        }
        assert_eq!(code_label(17), "Unknown");
        assert_eq!(code_label(u16::MAX), "Unknown");
    }

    #[test]
    fn twenty_thousand_paths_make_one_series() {
        let metrics = Metrics::new();
        let labels = MethodLabels::new([]);
        for i in 0..20_000 {
            let path = format!("/flyteidl.service.AdminService/Method{i}");
            metrics.admin_call(&labels.label(&path), 0);
        }
        let text = metrics.encode();
        let series: Vec<_> = text
            .lines()
            .filter(|l| l.starts_with("flyte_auth_agent_admin_calls_total{"))
            .collect();
        assert_eq!(
            series,
            [r#"flyte_auth_agent_admin_calls_total{method="other",code="Ok"} 20000"#]
        );
    }
}
