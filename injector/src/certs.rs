//! `init-certs`: the webhook's CA and serving certificate, like `flytepropeller webhook
//! init-certs`.
//!
//! One policy ([`bundle::check`]) decides whether what is stored can be kept; otherwise a new CA
//! and serving certificate are minted together ([`bundle::generate`]). Where they are stored is
//! the mode: files in `--cert-dir` ([`dir`]), or with `--kube` a `kubernetes.io/tls` Secret plus
//! the MutatingWebhookConfiguration's `caBundle` ([`api`]). `--kube --secret-only` stops after the
//! Secret: the Helm chart runs it before the injector Deployment exists (so its pods can start and
//! `helm install --wait` can finish) and the full run after, to set the `caBundle`; both apply the
//! same policy, so the full run keeps the Secret the first one wrote.

mod api;
mod bundle;
mod dir;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bundle::{Bundle, Invalid, Stored};

/// `init-certs` options.
#[derive(Debug, Clone, clap::Args)]
pub struct InitCertsArgs {
    /// Name of the Service the API server calls the webhook through (the certificate's SANs).
    #[arg(long, default_value = "flyte-auth-injector")]
    pub service_name: String,
    /// Namespace of that Service.
    #[arg(long, env = "POD_NAMESPACE", default_value = "flyte")]
    pub namespace: String,
    /// Directory for ca.crt, tls.crt and tls.key (without --kube).
    #[arg(long, default_value = "/etc/webhook/certs")]
    pub cert_dir: PathBuf,
    /// Store the certificate in a Secret and patch the webhook's caBundle through the API
    /// (in-cluster config, or KUBECONFIG) instead of writing --cert-dir.
    #[arg(long)]
    pub kube: bool,
    /// With --kube: only ensure the Secret; leave the MutatingWebhookConfiguration alone (no
    /// cluster-wide permission needed). A later run without it sets the caBundle.
    #[arg(long, requires = "kube")]
    pub secret_only: bool,
    /// Name of the kubernetes.io/tls Secret (with --kube).
    #[arg(long, default_value = "flyte-auth-injector-tls")]
    pub secret_name: String,
    /// Name of the MutatingWebhookConfiguration whose webhooks get the caBundle (with --kube).
    #[arg(long, default_value = "flyte-auth-injector")]
    pub webhook_name: String,
    /// Lifetime of a newly minted CA and certificate.
    #[arg(long, default_value = "3650d", value_parser = humantime::parse_duration)]
    pub valid_for: Duration,
    /// Renew when the certificate expires within this window.
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
    pub renew_before: Duration,
    /// How many times to look for the MutatingWebhookConfiguration before giving up (kustomize
    /// may apply it after the Job starts).
    #[arg(long, default_value_t = 8, hide = true)]
    pub webhook_wait_attempts: u32,
    /// First pause between those looks; it doubles, up to 30s.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration, hide = true)]
    pub webhook_wait_backoff: Duration,
}

/// Longest accepted `--valid-for`: a bound that keeps notAfter far inside X.509's date range.
const MAX_VALID_FOR: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Why `init-certs` failed. (kube's errors are boxed: they are large, and this is returned
/// through every step.)
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// A flag's value cannot be used.
    #[error("--{flag} {value:?}: {why}")]
    InvalidArg {
        /// The flag, without dashes.
        flag: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The system clock reads before 1970.
    #[error("the system clock is before the Unix epoch")]
    Clock,
    /// rcgen could not mint the certificates.
    #[error("generating the CA and serving certificate")]
    Generate(#[source] rcgen::Error),
    /// The certificate directory could not be created.
    #[error("creating certificate directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A certificate file exists but could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A certificate file could not be written (or its mode set).
    #[error("writing {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// No Kubernetes client configuration (neither KUBECONFIG nor in-cluster) was usable.
    // Shown, not chained: its message already spells out both attempts and their causes.
    #[error("loading Kubernetes client configuration: {0}")]
    KubeConfig(Box<kube::config::InferConfigError>),
    /// The Kubernetes client could not be built from that configuration.
    #[error("building the Kubernetes client")]
    KubeClient(#[source] Box<kube::Error>),
    /// An API call failed.
    #[error("{action} {object}")]
    Api {
        /// What was being done ("reading", "creating", …).
        action: &'static str,
        /// The object, e.g. `Secret flyte/flyte-auth-injector-tls`.
        object: String,
        /// The client's error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The Secret kept changing under us (optimistic-concurrency conflicts on every attempt).
    #[error("{object}: still conflicting after {attempts} attempts (another writer?)")]
    Conflict {
        /// The object.
        object: String,
        /// How many attempts were made.
        attempts: u32,
    },
    /// The MutatingWebhookConfiguration does not exist (it is created by the deploy manifests).
    #[error(
        "MutatingWebhookConfiguration {name} not found after {attempts} attempts; apply the \
         deploy manifests that create it, or pass --webhook-name"
    )]
    WebhookConfigMissing {
        /// Its name.
        name: String,
        /// How many times it was looked for.
        attempts: u32,
    },
}

/// What happened to the stored bundle; logged as "kept", "created" or "renewed (reason)".
#[derive(Debug)]
enum Outcome {
    /// The stored bundle was valid and is left as it was.
    Kept,
    /// Nothing was stored; a new bundle was minted.
    Created,
    /// Something was stored but could not be kept, for this reason.
    Renewed(Invalid),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Kept => f.write_str("kept"),
            Outcome::Created => f.write_str("created"),
            Outcome::Renewed(why) => write!(f, "renewed ({why})"),
        }
    }
}

/// The settings both modes share, checked once.
struct Plan {
    names: Vec<String>,
    valid_for: Duration,
    renew_before: Duration,
}

impl Plan {
    fn new(args: &InitCertsArgs) -> Result<Self, CertsError> {
        dns_label("service-name", &args.service_name)?;
        dns_label("namespace", &args.namespace)?;
        if args.valid_for.is_zero() || args.valid_for > MAX_VALID_FOR {
            return Err(CertsError::InvalidArg {
                flag: "valid-for",
                value: show(args.valid_for),
                why: "must be more than 0 and at most 100 years",
            });
        }
        if args.renew_before >= args.valid_for {
            // Allowed (tests use it to get a certificate due for renewal), but worth a word:
            // every run will replace the certificate.
            tracing::warn!(
                valid_for = %show(args.valid_for),
                renew_before = %show(args.renew_before),
                "--renew-before is not shorter than --valid-for: the next run will renew again"
            );
        }
        Ok(Plan {
            names: bundle::dns_names(&args.service_name, &args.namespace),
            valid_for: args.valid_for,
            renew_before: args.renew_before,
        })
    }

    /// Keeps `stored` if it is still good, otherwise mints a new bundle; `first` says nothing
    /// was there at all (so the outcome is "created", not "renewed").
    fn settle(&self, stored: &Stored, first: bool) -> Result<(Bundle, Outcome), CertsError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| CertsError::Clock)?;
        let outcome = match bundle::check(stored, &self.names, now, self.renew_before) {
            Ok(kept) => return Ok((kept, Outcome::Kept)),
            Err(_) if first => Outcome::Created,
            Err(why) => Outcome::Renewed(why),
        };
        let fresh =
            bundle::generate(&self.names, now, self.valid_for).map_err(CertsError::Generate)?;
        Ok((fresh, outcome))
    }
}

/// A duration as the flags spell it: whole days as `30d`, anything else in humantime's form
/// (which would render `3650d` as "9years 11months 27days 21h 50m 24s").
pub(crate) fn show(d: Duration) -> String {
    const DAY: u64 = 86_400;
    if d.subsec_nanos() == 0 && d.as_secs() % DAY == 0 && !d.is_zero() {
        format!("{}d", d.as_secs() / DAY)
    } else {
        humantime::format_duration(d).to_string()
    }
}

/// Rejects a name that cannot be a DNS label (RFC 1123), before it ends up in a SAN.
fn dns_label(flag: &'static str, value: &str) -> Result<(), CertsError> {
    crate::names::check_dns_label(value).map_err(|_| CertsError::InvalidArg {
        flag,
        value: value.to_owned(),
        why: "must be a DNS label (lower-case letters, digits and '-', at most 63)",
    })
}

/// Runs `init-certs`.
pub async fn run(args: InitCertsArgs) -> Result<(), CertsError> {
    let plan = Plan::new(&args)?;
    if args.kube {
        api::run(&args, &plan).await
    } else {
        // A one-shot command writing three small files: blocking I/O here stalls nothing else.
        dir::run(&args.cert_dir, &plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_shown_as_given() {
        assert_eq!(show(Duration::from_secs(3650 * 86_400)), "3650d");
        assert_eq!(show(Duration::from_secs(90)), "1m 30s");
        assert_eq!(show(Duration::ZERO), "0s");
    }

    #[test]
    fn dns_labels() {
        for good in ["flyte", "a", "flyte-auth-injector", "x1-2"] {
            assert!(dns_label("namespace", good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "Flyte", "a.b", "a_b", &"a".repeat(64)] {
            let e = dns_label("namespace", bad).unwrap_err().to_string();
            assert!(e.starts_with("--namespace"), "{e}");
        }
    }
}
