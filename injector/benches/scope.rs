//! Benchmark: what reading a pod's execution scope adds to a review. `ScopeRules::execution`
//! (the namespace read back through the template, the pod's labels and env compared, the
//! execution id taken) for the propeller pod of the golden reviews, against the whole
//! `Injector::review` of that pod in the same run; and the namespace reading alone for the
//! default template and for the worst case this crate allows (a 62-character namespace of 27
//! dash-separated parts, read by an `{{ org }}-{{ project }}-{{ domain }}` template with no org
//! configured: every split is tried, and it is ambiguous).
//!
//! Run: `cargo bench -p flyte-auth-injector --bench scope`. Every loop is bounded by a count.

use std::path::Path;
use std::time::{Duration, Instant};

use flyte_auth_injector::config::Config;
use flyte_auth_injector::review::{Injector, Outcome};
use flyte_auth_injector::scope::{ScopeRules, ScopeSettings};
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

const RUNS: usize = 20_000;

/// p50 and p99 of `RUNS` runs of `f`, after a warm-up of a tenth as many.
fn time(mut f: impl FnMut()) -> (Duration, Duration) {
    for _ in 0..RUNS / 10 {
        f();
    }
    let mut samples: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    samples.sort();
    let at = |p: f64| samples[((RUNS as f64 * p) as usize).min(RUNS - 1)];
    (at(0.5), at(0.99))
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let config_text = std::fs::read_to_string(fixtures.join("config.yaml")).unwrap();
    let config = Config::parse(&config_text, "config.yaml").unwrap();
    let review_text =
        std::fs::read_to_string(fixtures.join("reviews/propeller-tokens/review.yaml")).unwrap();
    let review: Value = serde_yaml_ng::from_str(&review_text).unwrap();
    let body = serde_json::to_vec(&review).unwrap();
    let namespace = review["request"]["namespace"].as_str().unwrap().to_string();
    let pod: Pod = serde_json::from_value(review["request"]["object"].clone()).unwrap();
    let injector = Injector::new(config.clone());
    assert_eq!(injector.review(&body).outcome, Outcome::Mutated);
    let rules = ScopeRules::new(&config.scope).unwrap();
    assert!(rules
        .execution(Some(&namespace), &pod, true)
        .unwrap()
        .scope
        .is_some());

    let review_t = time(|| {
        std::hint::black_box(injector.review(std::hint::black_box(&body)));
    });
    let execution_t = time(|| {
        std::hint::black_box(
            rules
                .execution(Some(std::hint::black_box(&namespace)), &pod, true)
                .ok(),
        );
    });
    let default_t = time(|| {
        std::hint::black_box(
            rules
                .of_namespace(Some(std::hint::black_box("ml-team-development")))
                .ok(),
        );
    });
    let worst_ns = format!("{}production", "a-".repeat(26));
    assert_eq!(worst_ns.len(), 62);
    let org_rules = ScopeRules::new(&ScopeSettings {
        namespace_template: "{{ org }}-{{ project }}-{{ domain }}".into(),
        ..Default::default()
    })
    .unwrap();
    assert!(
        org_rules.of_namespace(Some(&worst_ns)).is_err(),
        "ambiguous"
    );
    let worst_t = time(|| {
        std::hint::black_box(
            org_rules
                .of_namespace(Some(std::hint::black_box(&worst_ns)))
                .ok(),
        );
    });

    println!("{:<62} {:>9} {:>9}", "", "p50 µs", "p99 µs");
    let row = |name: &str, (p50, p99): (Duration, Duration)| {
        println!("{name:<62} {:>9.2} {:>9.2}", us(p50), us(p99));
    };
    row(
        "floor: Injector::review of the propeller pod (whole review)",
        review_t,
    );
    row(
        "ScopeRules::execution of that pod (namespace, labels, env)",
        execution_t,
    );
    row(
        "of_namespace, default template, \"ml-team-development\"",
        default_t,
    );
    row(
        "of_namespace, org template, 62-char 27-part namespace",
        worst_t,
    );
    println!();
    println!(
        "scope share of a review: p50 {:.1}%, p99 {:.1}%; worst-case reading / whole review p50: {:.2}x",
        100.0 * execution_t.0.as_secs_f64() / review_t.0.as_secs_f64(),
        100.0 * execution_t.1.as_secs_f64() / review_t.1.as_secs_f64(),
        worst_t.0.as_secs_f64() / review_t.0.as_secs_f64(),
    );
}
