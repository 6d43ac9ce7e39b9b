//! `--kube` mode: the bundle in a `kubernetes.io/tls` Secret, and its CA as the `caBundle` of
//! every webhook in the MutatingWebhookConfiguration, through the Kubernetes API.
//!
//! Requests, in order: GET the Secret; if it is missing POST it, if it is invalid PUT it back
//! (with the resourceVersion read, so a concurrent writer makes us re-read instead of being
//! overwritten); GET the MutatingWebhookConfiguration (retried while it does not exist yet);
//! PATCH it (strategic merge, webhooks matched by name) only when some caBundle differs. With
//! `--secret-only` the requests stop after the Secret.

use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, Config};

use super::bundle::{Bundle, Stored, CA_CRT, TLS_CRT, TLS_KEY};
use super::{CertsError, InitCertsArgs, Outcome, Plan};

/// Recorded in managedFields as the owner of what we write.
const FIELD_MANAGER: &str = "flyte-auth-injector-init-certs";
/// The Secret's type: the one cert-manager and `kubectl create secret tls` use.
const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";
/// Tries at writing the Secret when another writer keeps winning (409).
const SECRET_ATTEMPTS: u32 = 3;
/// Cap of the doubling pause while waiting for the MutatingWebhookConfiguration.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Ensures the Secret holds a valid bundle, then (unless `--secret-only`) that the webhooks trust
/// its CA.
pub(super) async fn run(args: &InitCertsArgs, plan: &Plan) -> Result<(), CertsError> {
    let config = Config::infer()
        .await
        .map_err(|e| CertsError::KubeConfig(Box::new(e)))?;
    let client = Client::try_from(config).map_err(|e| CertsError::KubeClient(Box::new(e)))?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &args.namespace);
    let ca_crt = ensure_secret(&secrets, args, plan).await?;
    if args.secret_only {
        tracing::info!(
            webhook = %args.webhook_name,
            "--secret-only: caBundle left to a run without it"
        );
        return Ok(());
    }
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client);
    ensure_ca_bundle(&webhooks, args, &ca_crt).await
}

/// Keeps a valid Secret, creates a missing one, rewrites an invalid one; returns the CA in force.
async fn ensure_secret(
    secrets: &Api<Secret>,
    args: &InitCertsArgs,
    plan: &Plan,
) -> Result<Vec<u8>, CertsError> {
    let object = format!("Secret {}/{}", args.namespace, args.secret_name);
    let post = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    for _ in 0..SECRET_ATTEMPTS {
        let existing = secrets
            .get_opt(&args.secret_name)
            .await
            .map_err(api_error("reading", &object))?;
        let stored = existing.as_ref().map(stored_in).unwrap_or_default();
        let (bundle, outcome) = plan.settle(&stored, existing.is_none())?;
        let (action, written) = match (&outcome, existing) {
            (Outcome::Kept, _) => {
                tracing::info!(secret = %object, "{outcome}");
                return Ok(bundle.ca_crt);
            }
            (_, None) => {
                let secret = new_secret(args, &bundle);
                ("creating", secrets.create(&post, &secret).await)
            }
            (_, Some(secret)) => {
                let secret = rewritten(secret, &bundle, &object);
                let put = secrets.replace(&args.secret_name, &post, &secret).await;
                ("updating", put)
            }
        };
        match written {
            Ok(_) => {
                tracing::info!(secret = %object, "{outcome}");
                return Ok(bundle.ca_crt);
            }
            // Created meanwhile (AlreadyExists) or changed since our read (Conflict): read again
            // and decide afresh; the other writer's bundle may well be kept.
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tracing::warn!(secret = %object, reason = %e.reason, "{action} raced another writer; reading again");
            }
            Err(source) => return Err(api_error(action, &object)(source)),
        }
    }
    Err(CertsError::Conflict {
        object,
        attempts: SECRET_ATTEMPTS,
    })
}

/// Sets every webhook's caBundle to `ca_crt`, patching only when one differs.
async fn ensure_ca_bundle(
    api: &Api<MutatingWebhookConfiguration>,
    args: &InitCertsArgs,
    ca_crt: &[u8],
) -> Result<(), CertsError> {
    let name = &args.webhook_name;
    let object = format!("MutatingWebhookConfiguration {name}");
    let attempts = args.webhook_wait_attempts.max(1);
    let mut pause = args.webhook_wait_backoff;
    let mut attempt = 1;
    let config = loop {
        match api.get_opt(name).await {
            Ok(Some(config)) => break config,
            Ok(None) if attempt < attempts => {
                // kustomize applies everything at once; the Job may run before the
                // configuration exists.
                tracing::info!(%object, attempt, retry_in = %super::show(pause), "not found yet");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_BACKOFF);
                attempt += 1;
            }
            Ok(None) => {
                return Err(CertsError::WebhookConfigMissing {
                    name: name.clone(),
                    attempts,
                })
            }
            Err(source) => return Err(api_error("reading", &object)(source)),
        }
    };

    let webhooks = config.webhooks.unwrap_or_default();
    if webhooks.is_empty() {
        tracing::warn!(%object, "has no webhooks; no caBundle to set");
        return Ok(());
    }
    let stale: Vec<&str> = webhooks
        .iter()
        .filter(|w| w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) != Some(ca_crt))
        .map(|w| w.name.as_str())
        .collect();
    if stale.is_empty() {
        tracing::info!(%object, "caBundle already matches ca.crt");
        return Ok(());
    }
    // Every webhook is named, so the patch states the whole intent; strategic merge matches
    // list entries by `name` (the API's patchMergeKey), so nothing else in them is touched.
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(ca_crt);
    let patch = serde_json::json!({
        "webhooks": webhooks
            .iter()
            .map(|w| serde_json::json!({"name": w.name, "clientConfig": {"caBundle": ca_bundle}}))
            .collect::<Vec<_>>()
    });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    api.patch(name, &params, &Patch::Strategic(patch))
        .await
        .map_err(api_error("patching", &object))?;
    tracing::info!(%object, webhooks = ?stale, "caBundle set to ca.crt");
    Ok(())
}

/// The bundle parts a Secret holds (each may be missing).
fn stored_in(secret: &Secret) -> Stored {
    let get = |key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| b.0.clone())
    };
    Stored {
        ca_crt: get(CA_CRT),
        tls_crt: get(TLS_CRT),
        tls_key: get(TLS_KEY),
    }
}

/// A new Secret holding `bundle`.
fn new_secret(args: &InitCertsArgs, bundle: &Bundle) -> Secret {
    let mut secret = Secret {
        metadata: ObjectMeta {
            name: Some(args.secret_name.clone()),
            namespace: Some(args.namespace.clone()),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_owned(),
                    FIELD_MANAGER.to_owned(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        type_: Some(TLS_SECRET_TYPE.to_owned()),
        ..Secret::default()
    };
    put_bundle(&mut secret, bundle);
    secret
}

/// `secret` as read, with the bundle's three keys replaced. Other keys, labels and annotations
/// are kept (someone put them there), and so is the type, which the API does not let us change.
fn rewritten(mut secret: Secret, bundle: &Bundle, object: &str) -> Secret {
    if secret.type_.as_deref() != Some(TLS_SECRET_TYPE) {
        tracing::warn!(
            secret = %object,
            r#type = secret.type_.as_deref().unwrap_or("Opaque"),
            "is not of type {TLS_SECRET_TYPE}; keeping its type (it is immutable)"
        );
    }
    // Omitted managedFields leave the server's record as it is.
    secret.metadata.managed_fields = None;
    put_bundle(&mut secret, bundle);
    secret
}

fn put_bundle(secret: &mut Secret, bundle: &Bundle) {
    let data = secret.data.get_or_insert_with(Default::default);
    data.insert(CA_CRT.to_owned(), ByteString(bundle.ca_crt.clone()));
    data.insert(TLS_CRT.to_owned(), ByteString(bundle.tls_crt.clone()));
    data.insert(TLS_KEY.to_owned(), ByteString(bundle.tls_key.clone()));
}

fn api_error<'a>(
    action: &'static str,
    object: &'a str,
) -> impl FnOnce(kube::Error) -> CertsError + 'a {
    move |source| CertsError::Api {
        action,
        object: object.to_owned(),
        source: Box::new(source),
    }
}
