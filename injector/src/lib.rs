//! The Flyte auth agent injector: a Kubernetes mutating admission webhook that adds the agent to
//! opted-in task pods as a native sidecar, mounts the client secrets their token requests name into
//! the sidecar only, and points the task's containers at its token files, socket and Admin proxy.
//!
//! [`review::Injector::review`] turns one AdmissionReview body into the answer (pure, no I/O);
//! [`scope`] reads the execution scope the Admin proxy acts in from the review's namespace;
//! [`server`] serves it over HTTPS with certificates re-read on rotation; [`certs`] is
//! `init-certs`, the serving certificate's bootstrap.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

pub mod certs;
pub mod config;
pub mod metrics;
pub mod mutate;
pub mod names;
pub mod requests;
pub mod review;
pub mod scope;
pub mod server;
pub mod tls;
