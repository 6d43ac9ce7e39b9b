//! The injector's Prometheus metrics.
