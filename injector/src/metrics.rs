//! The injector's Prometheus metrics (through `prometheus-client`): reviews by outcome and their
//! latency, reviews refused before a decision by the limit they met, where each proxied pod's
//! execution scope came from, certificate reloads, and the serving certificate's expiry so operators can alert
//! before the API server starts refusing the webhook. Labels carry outcomes only, never pod data.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::review::Outcome;
use crate::scope::ScopeSource;

type Label = [(&'static str, &'static str); 1];

/// Why a review can be refused before a decision (the `reason` label).
pub const REFUSALS: [&str; 4] = ["too_large", "busy", "body_timeout", "unreadable"];

/// The injector's metric families.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reviews: Family<Label, Counter>,
    review_duration: Histogram,
    refused: Family<Label, Counter>,
    reloads: Family<Label, Counter>,
    scopes: Family<Label, Counter>,
    expiry: Gauge,
}

/// A counter family registered as `name`, labelled `label` with one series per value from the
/// start, so a rate or an alert on it never sees "absent".
fn counters(
    registry: &mut Registry,
    name: &str,
    help: &str,
    label: &'static str,
    values: &[&'static str],
) -> Family<Label, Counter> {
    let family = Family::<Label, Counter>::default();
    registry.register(name, help, family.clone());
    for value in values {
        let _ = family.get_or_create(&[(label, *value)]);
    }
    family
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every family.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("flyte_auth_injector");
        let reviews = counters(
            &mut registry,
            "reviews",
            "AdmissionReviews answered, by outcome (mutated, unchanged, skipped, denied, invalid)",
            "outcome",
            &Outcome::ALL.map(Outcome::as_str),
        );
        // 20 µs to ~80 ms: a review is pure CPU work of well under a millisecond; the top
        // buckets are there to show a starved process, not slow logic.
        let review_duration = Histogram::new(exponential_buckets(0.00002, 2.0, 13));
        registry.register(
            "review_duration_seconds",
            "Time from a whole request body to the answer, per review",
            review_duration.clone(),
        );
        let refused = counters(
            &mut registry,
            "refused_reviews",
            "Reviews refused before a decision, by the limit met (too_large: server.max_body, busy: server.max_concurrent_reviews, body_timeout: server.body_timeout, unreadable: the connection failed)",
            "reason",
            &REFUSALS,
        );
        let reloads = counters(
            &mut registry,
            "certificate_reloads",
            "Changed certificate files read after start, by result (ok, or error: old certificate kept)",
            "result",
            &["ok", "error"],
        );
        let scopes = counters(
            &mut registry,
            "scopes",
            "Pods to get an Admin proxy, by where its scope came from (namespace; fallback: scope.fallback; unmatched: no proxy; disagreed: labels or env named another scope, denied)",
            "source",
            &ScopeSource::ALL.map(ScopeSource::as_str),
        );
        let expiry = Gauge::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "Not-after of the certificate being served, in seconds since the Unix epoch",
            expiry.clone(),
        );
        Self {
            registry,
            reviews,
            review_duration,
            refused,
            reloads,
            scopes,
            expiry,
        }
    }

    /// Counts one review with its outcome and how long it took.
    pub fn review(&self, outcome: Outcome, elapsed: Duration) {
        self.reviews
            .get_or_create(&[("outcome", outcome.as_str())])
            .inc();
        self.review_duration.observe(elapsed.as_secs_f64());
    }

    /// Counts where one pod's Admin scope came from.
    pub fn scope(&self, source: ScopeSource) {
        self.scopes
            .get_or_create(&[("source", source.as_str())])
            .inc();
    }

    /// Counts one review refused before a decision; `reason` is one of [`REFUSALS`] (anything
    /// else is counted as `unreadable`, so the label set stays fixed).
    pub fn refused(&self, reason: &'static str) {
        let reason = if REFUSALS.contains(&reason) {
            reason
        } else {
            "unreadable"
        };
        self.refused.get_or_create(&[("reason", reason)]).inc();
    }

    /// Counts one certificate reload attempt.
    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reloads.get_or_create(&[("result", result)]).inc();
    }

    /// Sets the served certificate's not-after (Unix seconds).
    pub fn certificate_expiry(&self, not_after: i64) {
        self.expiry.set(not_after);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels() {
        let m = Metrics::new();
        m.review(Outcome::Mutated, Duration::from_micros(300));
        m.review(Outcome::Mutated, Duration::from_micros(300));
        m.review(Outcome::Denied, Duration::from_micros(300));
        m.reload(false);
        m.refused("busy");
        m.certificate_expiry(1_900_000_000);
        m.scope(ScopeSource::Unmatched);
        let text = m.encode();
        for line in [
            "flyte_auth_injector_reviews_total{outcome=\"mutated\"} 2",
            "flyte_auth_injector_reviews_total{outcome=\"denied\"} 1",
            "flyte_auth_injector_review_duration_seconds_count 3",
            "flyte_auth_injector_certificate_reloads_total{result=\"error\"} 1",
            "flyte_auth_injector_certificate_reloads_total{result=\"ok\"} 0",
            "flyte_auth_injector_reviews_total{outcome=\"skipped\"} 0",
            "flyte_auth_injector_certificate_expiry_timestamp_seconds 1900000000",
            "flyte_auth_injector_refused_reviews_total{reason=\"busy\"} 1",
            "flyte_auth_injector_refused_reviews_total{reason=\"body_timeout\"} 0",
            "flyte_auth_injector_scopes_total{source=\"unmatched\"} 1",
            "flyte_auth_injector_scopes_total{source=\"disagreed\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
