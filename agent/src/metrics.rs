//! Prometheus metrics (through `prometheus-client`): token requests to IdPs by name and outcome,
//! IdP latency, cache hits and misses, and each token's seconds to expiry, computed at scrape
//! time; gRPC calls proxied to FlyteAdmin by method and status, and the latency the proxy adds.
//! Labels carry token request names, methods and outcomes only, never values.

use std::time::SystemTime;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::cache::Entries;

type NameLabel = [(&'static str, String); 1];
type OutcomeLabels = [(&'static str, String); 2];

/// The agent's metric families.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    token_requests: Family<OutcomeLabels, Counter>,
    idp_latency: Family<NameLabel, Histogram, fn() -> Histogram>,
    cache_hits: Family<NameLabel, Counter>,
    cache_misses: Family<NameLabel, Counter>,
    admin_calls: Family<OutcomeLabels, Counter>,
    admin_overhead: Histogram,
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
    /// Registers every family, plus a collector reading expiries from `entries` at scrape time.
    pub fn new(entries: Entries) -> Self {
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
        let admin_calls = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "admin_calls",
            "gRPC calls proxied to FlyteAdmin, by method and gRPC status as the task saw it",
            admin_calls.clone(),
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
        registry.register_collector(Box::new(ExpiryCollector(entries)));
        Self {
            registry,
            token_requests,
            idp_latency,
            cache_hits,
            cache_misses,
            admin_calls,
            admin_overhead,
        }
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

    /// Counts one proxied call (`method` is its path, or `denied`) with its gRPC status code.
    pub fn admin_call(&self, method: &str, code: u16) {
        let code = format!("{:?}", tonic::Code::from(i32::from(code)));
        self.admin_calls
            .get_or_create(&[("method", method.to_string()), ("code", code)])
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
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

struct ExpiryCollector(Entries);

impl std::fmt::Debug for ExpiryCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExpiryCollector")
    }
}

impl prometheus_client::collector::Collector for ExpiryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let now = SystemTime::now();
        let mut family = encoder.encode_descriptor(
            "token_seconds_to_expiry",
            "Seconds until the cached token expires (negative once expired)",
            None,
            MetricType::Gauge,
        )?;
        let mut rows: Vec<_> = self
            .0
            .iter()
            .map(|(name, token)| (name, token.seconds_to_expiry(now)))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, seconds) in rows {
            let labels = [("name", name.as_str())];
            ConstGauge::new(seconds).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
