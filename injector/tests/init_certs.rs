//! `flyte-auth-injector init-certs`, run as the real binary.
//!
//! Offline mode: the files it writes, checked the way a TLS client checks them (rustls'
//! `WebPkiServerVerifier` trusting only the written `ca.crt`), and re-runs that keep, renew or
//! regenerate them.
//!
//! `--kube` mode: no real API server can run on this machine, so the binary talks to a STAND-IN
//! — a small HTTP/1 server on 127.0.0.1 in this test, named by a kubeconfig passed through
//! `KUBECONFIG` (plain http; kube's connector takes either) — that answers the calls
//! `init-certs` makes the way the API server does (404 `Status` objects, 201 on create, 409 on a
//! stale `resourceVersion` or an existing name, strategic-merge PATCH of webhooks by name) and
//! records every request, so the tests assert the exact sequence of calls and their bodies.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_flyte-auth-injector");
const NAMES: [&str; 4] = [
    "flyte-auth-injector",
    "flyte-auth-injector.flyte",
    "flyte-auth-injector.flyte.svc",
    "flyte-auth-injector.flyte.svc.cluster.local",
];
/// Longest a single `init-certs` run may take before the test gives up on it.
const RUN_LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Shared checks

/// The three PEM files / Secret keys.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pems {
    ca: Vec<u8>,
    crt: Vec<u8>,
    key: Vec<u8>,
}

/// tls.crt verifies as a server certificate for every name, trusting ONLY ca.crt; the SANs are
/// exactly `names`; the key is a PKCS#8 key whose public half is the certificate's.
fn assert_chain(pems: &Pems, names: &[&str]) {
    let ca = CertificateDer::from_pem_slice(&pems.ca).expect("ca.crt is a PEM certificate");
    let crt = CertificateDer::from_pem_slice(&pems.crt).expect("tls.crt is a PEM certificate");
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let verifier = WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    for name in names {
        verifier
            .verify_server_cert(
                &crt,
                &[],
                &ServerName::try_from(*name).unwrap(),
                &[],
                UnixTime::now(),
            )
            .unwrap_or_else(|e| panic!("tls.crt for {name}: {e}"));
    }
    // And not for a name it was not issued for.
    assert!(verifier
        .verify_server_cert(
            &crt,
            &[],
            &ServerName::try_from("other.flyte.svc").unwrap(),
            &[],
            UnixTime::now(),
        )
        .is_err());

    let (_, leaf) = x509_parser::parse_x509_certificate(&crt).unwrap();
    let sans: Vec<String> = leaf
        .subject_alternative_name()
        .unwrap()
        .expect("tls.crt has a SAN extension")
        .value
        .general_names
        .iter()
        .map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => d.to_string(),
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect();
    assert_eq!(sans, names);
    assert!(!leaf.is_ca());
    let eku = leaf
        .extended_key_usage()
        .unwrap()
        .expect("EKU present")
        .value;
    assert!(eku.server_auth);

    let (_, ca) = x509_parser::parse_x509_certificate(&ca).unwrap();
    assert!(ca.is_ca());
    let usage = ca.key_usage().unwrap().expect("CA key usage").value;
    assert!(usage.key_cert_sign());

    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(&pems.key).expect("tls.key parses");
    assert!(matches!(key, rustls_pki_types::PrivateKeyDer::Pkcs8(_)));
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).unwrap();
    assert_eq!(
        signing.public_key().expect("public key").as_ref(),
        leaf.public_key().raw,
        "tls.key is the key of tls.crt"
    );
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Success, and no key material in anything the binary printed.
fn assert_ok(out: &Output) -> String {
    let err = stderr(out);
    assert!(out.status.success(), "init-certs failed: {err}");
    assert!(
        !err.contains("PRIVATE KEY"),
        "key material in the log: {err}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("PRIVATE KEY"));
    err
}

fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("init-certs")
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("POD_NAMESPACE")
        .env_remove("FLYTE_AUTH_INJECTOR_LOG_FORMAT");
    cmd
}

// ---------------------------------------------------------------------------------------------
// Offline mode

fn offline(dir: &Path, extra: &[&str]) -> Output {
    command(&["--cert-dir", dir.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap()
}

fn read_dir_pems(dir: &Path) -> Pems {
    Pems {
        ca: fs::read(dir.join("ca.crt")).unwrap(),
        crt: fs::read(dir.join("tls.crt")).unwrap(),
        key: fs::read(dir.join("tls.key")).unwrap(),
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn offline_generates_a_chain_only_its_ca_trusts() {
    let tmp = tempfile::tempdir().unwrap();
    // A directory that does not exist yet: it is created.
    let dir = tmp.path().join("certs");
    let log = assert_ok(&offline(&dir, &[]));
    assert!(log.contains("created"), "{log}");

    assert_chain(&read_dir_pems(&dir), &NAMES);
    assert_eq!(mode(&dir.join("tls.key")), 0o600);
    assert_eq!(mode(&dir.join("tls.crt")), 0o644);
    assert_eq!(mode(&dir.join("ca.crt")), 0o644);
    let mut files: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["ca.crt", "tls.crt", "tls.key"],
        "no temp files left"
    );
}

#[test]
fn offline_other_service_and_namespace() {
    let tmp = tempfile::tempdir().unwrap();
    let out = command(&["--cert-dir", tmp.path().to_str().unwrap()])
        .args(["--service-name", "hook"])
        .env("POD_NAMESPACE", "tenant-a")
        .output()
        .unwrap();
    assert_ok(&out);
    assert_chain(
        &read_dir_pems(tmp.path()),
        &[
            "hook",
            "hook.tenant-a",
            "hook.tenant-a.svc",
            "hook.tenant-a.svc.cluster.local",
        ],
    );
}

#[test]
fn offline_rerun_keeps_the_files_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    assert_ok(&offline(tmp.path(), &[]));
    let first = read_dir_pems(tmp.path());
    let log = assert_ok(&offline(tmp.path(), &[]));
    assert!(log.contains("kept"), "{log}");
    assert_eq!(read_dir_pems(tmp.path()), first);

    // A kept key that others can read is narrowed to 0600, content untouched.
    fs::set_permissions(
        tmp.path().join("tls.key"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let log = assert_ok(&offline(tmp.path(), &[]));
    assert!(log.contains("kept"), "{log}");
    assert_eq!(mode(&tmp.path().join("tls.key")), 0o600);
    assert_eq!(read_dir_pems(tmp.path()), first);
}

#[test]
fn offline_renews_a_certificate_about_to_expire() {
    let tmp = tempfile::tempdir().unwrap();
    let log = assert_ok(&offline(
        tmp.path(),
        &["--valid-for", "1d", "--renew-before", "30d"],
    ));
    assert!(log.contains("next run will renew again"), "{log}");
    let short = read_dir_pems(tmp.path());

    let log = assert_ok(&offline(tmp.path(), &[]));
    assert!(log.contains("renewed (ca.crt expires at"), "{log}");
    let renewed = read_dir_pems(tmp.path());
    assert_ne!(
        renewed.ca, short.ca,
        "CA and certificate are renewed together"
    );
    assert_ne!(renewed.crt, short.crt);
    assert_ne!(renewed.key, short.key);
    assert_chain(&renewed, &NAMES);

    // The renewed one lasts the default ten years, so the next run keeps it.
    let log = assert_ok(&offline(tmp.path(), &[]));
    assert!(log.contains("kept"), "{log}");
}

#[test]
fn offline_regenerates_after_a_missing_or_corrupt_file() {
    let other = tempfile::tempdir().unwrap();
    assert_ok(&offline(other.path(), &[]));
    let other_key = fs::read(other.path().join("tls.key")).unwrap();
    let other_ca = fs::read(other.path().join("ca.crt")).unwrap();

    type Damage = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Damage, &str)> = vec![
        (
            "tls.key deleted",
            Box::new(|d| fs::remove_file(d.join("tls.key")).unwrap()),
            "renewed (tls.key is missing)",
        ),
        (
            "ca.crt deleted",
            Box::new(|d| fs::remove_file(d.join("ca.crt")).unwrap()),
            "renewed (ca.crt is missing)",
        ),
        (
            "tls.crt truncated",
            Box::new(|d| {
                let crt = fs::read(d.join("tls.crt")).unwrap();
                fs::write(d.join("tls.crt"), &crt[..crt.len() / 2]).unwrap();
            }),
            "renewed (tls.crt does not parse",
        ),
        (
            "tls.key of another certificate",
            Box::new(move |d| fs::write(d.join("tls.key"), &other_key).unwrap()),
            "renewed (tls.key does not match tls.crt)",
        ),
        (
            "ca.crt of another CA",
            Box::new(move |d| fs::write(d.join("ca.crt"), &other_ca).unwrap()),
            "renewed (tls.crt is not a valid serving certificate from ca.crt",
        ),
    ];
    for (what, damage, want) in cases {
        let tmp = tempfile::tempdir().unwrap();
        assert_ok(&offline(tmp.path(), &[]));
        damage(tmp.path());
        let log = assert_ok(&offline(tmp.path(), &[]));
        assert!(log.contains(want), "{what}: {log}");
        assert_chain(&read_dir_pems(tmp.path()), &NAMES);
        assert_eq!(mode(&tmp.path().join("tls.key")), 0o600, "{what}");
    }
}

/// The effective uid, from /proc (std has no getuid).
fn euid() -> u32 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[test]
fn offline_unwritable_dir_is_a_clear_error() {
    use std::os::unix::process::CommandExt as _;

    // A read-only directory. root ignores modes, so as root the binary runs as `nobody`.
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.path().join("ro");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o555)).unwrap();
    let mut cmd = command(&["--cert-dir", dir.to_str().unwrap()]);
    if euid() == 0 {
        cmd.uid(65534).gid(65534);
    }
    let out = cmd.output().unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    let want = format!(
        "writing {}: Permission denied",
        dir.join("ca.crt").display()
    );
    assert!(err.contains(&want), "{err}");
    assert_eq!(
        fs::read_dir(&dir).unwrap().count(),
        0,
        "nothing left behind"
    );

    // A directory that cannot exist (its parent is a file).
    let file = tmp.path().join("file");
    fs::write(&file, "").unwrap();
    let out = offline(&file.join("certs"), &[]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    let want = format!("{}: Not a directory", file.join("certs/ca.crt").display());
    assert!(err.contains(&want), "{err}");
}

#[test]
fn bad_flags_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    for (args, want) in [
        (
            &["--namespace", "Flyte"][..],
            "--namespace \"Flyte\": must be a DNS label",
        ),
        (&["--service-name", "a.b"][..], "--service-name \"a.b\""),
        (&["--valid-for", "0s"][..], "--valid-for \"0s\""),
        (&["--valid-for", "ten years"][..], "--valid-for"),
    ] {
        let out = offline(tmp.path(), args);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
    // --secret-only means something only with --kube; alone it is refused, not ignored.
    let out = offline(tmp.path(), &["--secret-only"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the following required arguments were not provided:\n  --kube"),
        "{}",
        stderr(&out)
    );
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
}

// ---------------------------------------------------------------------------------------------
// --kube mode against the stand-in API server

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    query: Option<String>,
    content_type: Option<String>,
    body: Value,
}

impl Recorded {
    /// "METHOD path?query", for comparing sequences at a glance.
    fn line(&self) -> String {
        match &self.query {
            Some(q) => format!("{} {}?{q}", self.method, self.path),
            None => format!("{} {}", self.method, self.path),
        }
    }
}

/// What the stand-in stores and has seen.
#[derive(Default)]
struct State {
    secrets: Vec<Value>,
    webhook_configs: Vec<Value>,
    /// GETs of MutatingWebhookConfigurations answered 404 before the stored one shows (apply
    /// ordering).
    webhook_config_hidden_for: usize,
    /// A Secret "another writer" creates just before our POST lands (which then gets 409).
    secret_created_meanwhile: Option<Value>,
    requests: Vec<Recorded>,
    resource_version: u64,
}

type Shared = Arc<Mutex<State>>;

/// The stand-in: binds 127.0.0.1:0, serves until the test's runtime ends; returns its URL.
async fn stand_in(state: Shared) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, hyper::Error>(answer(&state, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

fn status(code: StatusCode, reason: &str, message: String) -> Response<Full<Bytes>> {
    respond(
        code,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code.as_u16(),
        }),
    )
}

fn respond(code: StatusCode, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn named<'a>(objects: &'a mut [Value], name: &str) -> Option<&'a mut Value> {
    objects
        .iter_mut()
        .find(|o| o["metadata"]["name"].as_str() == Some(name))
}

/// Answers like the API server for the calls init-certs makes.
async fn answer(state: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    // Parsed the way the API server parses it (Go's url.ParseQuery skips empty pairs): kube's
    // URL builder sends `?&fieldManager=…`, which means just `fieldManager=…`.
    let query = req
        .uri()
        .query()
        .map(|q| {
            q.split('&')
                .filter(|pair| !pair.is_empty())
                .collect::<Vec<_>>()
                .join("&")
        })
        .filter(|q| !q.is_empty());
    let content_type = req
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = req.into_body().collect().await.unwrap().to_bytes();
    let body: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("request bodies are JSON")
    };
    let mut st = state.lock().unwrap();
    st.requests.push(Recorded {
        method: method.clone(),
        path: path.clone(),
        query,
        content_type,
        body: body.clone(),
    });
    st.resource_version += 1;
    let rv = st.resource_version.to_string();

    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["api", "v1", "namespaces", ns, "secrets", name]) => {
            match named(&mut st.secrets, name) {
                Some(s) if s["metadata"]["namespace"] == *ns => respond(StatusCode::OK, s.clone()),
                _ => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("secrets \"{name}\" not found"),
                ),
            }
        }
        ("POST", ["api", "v1", "namespaces", _ns, "secrets"]) => {
            let name = body["metadata"]["name"].as_str().unwrap_or_default();
            if let Some(mut other) = st.secret_created_meanwhile.take() {
                other["metadata"]["resourceVersion"] = json!(rv);
                st.secrets.push(other);
            }
            if named(&mut st.secrets, name).is_some() {
                return status(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    format!("secrets \"{name}\" already exists"),
                );
            }
            let mut created = body.clone();
            created["metadata"]["resourceVersion"] = json!(rv);
            st.secrets.push(created.clone());
            respond(StatusCode::CREATED, created)
        }
        ("PUT", ["api", "v1", "namespaces", _ns, "secrets", name]) => {
            let Some(stored) = named(&mut st.secrets, name) else {
                return status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("secrets \"{name}\" not found"),
                );
            };
            if body["metadata"]["resourceVersion"] != stored["metadata"]["resourceVersion"] {
                return status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    "the object has been modified".into(),
                );
            }
            *stored = body.clone();
            stored["metadata"]["resourceVersion"] = json!(rv);
            respond(StatusCode::OK, stored.clone())
        }
        (
            "GET",
            ["apis", "admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations", name],
        ) => {
            if st.webhook_config_hidden_for > 0 {
                st.webhook_config_hidden_for -= 1;
            } else if let Some(c) = named(&mut st.webhook_configs, name) {
                return respond(StatusCode::OK, c.clone());
            }
            status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("mutatingwebhookconfigurations.admissionregistration.k8s.io \"{name}\" not found"),
            )
        }
        (
            "PATCH",
            ["apis", "admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations", name],
        ) => {
            let Some(stored) = named(&mut st.webhook_configs, name) else {
                return status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("{name} not found"),
                );
            };
            // Strategic merge of `webhooks`, matched by name (their patchMergeKey).
            for patch in body["webhooks"].as_array().cloned().unwrap_or_default() {
                let hooks = stored["webhooks"].as_array_mut().unwrap();
                match hooks.iter_mut().find(|h| h["name"] == patch["name"]) {
                    Some(hook) => merge(hook, &patch),
                    None => hooks.push(patch),
                }
            }
            stored["metadata"]["resourceVersion"] = json!(rv);
            respond(StatusCode::OK, stored.clone())
        }
        _ => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no route {path}"),
        ),
    }
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn webhook_config(name: &str, ca_bundle: Option<&str>) -> Value {
    let hook = |hook_name: &str| {
        let mut client_config = json!({
            "service": {"name": "flyte-auth-injector", "namespace": "flyte", "path": "/mutate"}
        });
        if let Some(b) = ca_bundle {
            client_config["caBundle"] = json!(b);
        }
        json!({
            "name": hook_name,
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "clientConfig": client_config,
            "objectSelector": {"matchLabels": {"flyte.org/auth-agent": "enabled"}},
        })
    };
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "resourceVersion": "1"},
        "webhooks": [hook("pods.auth-agent.flyte.org"), hook("pods-reinvoked.auth-agent.flyte.org")],
    })
}

/// A kubeconfig naming the stand-in (plain http: kube's connector takes http or https).
fn kubeconfig(dir: &Path, server: &str, namespace: &str) -> PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: stand-in\n\
         clusters:\n- name: stand-in\n  cluster:\n    server: {server}\n\
         users:\n- name: stand-in\n  user: {{}}\n\
         contexts:\n- name: stand-in\n  context:\n    cluster: stand-in\n    user: stand-in\n    namespace: {namespace}\n"
    );
    fs::write(&path, text).unwrap();
    path
}

/// Runs `init-certs --kube …` against the stand-in, bounded by [`RUN_LIMIT`].
async fn kube_run(kubeconfig: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = command(&["--kube"]);
    cmd.args(args)
        .env("KUBECONFIG", kubeconfig)
        // Nothing may steer the client elsewhere than the kubeconfig's server.
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("all_proxy")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let pid = child.id();
    // The stand-in runs on this runtime, so the child is awaited off it.
    let waited = tokio::time::timeout(
        RUN_LIMIT,
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await;
    match waited {
        Ok(out) => out.unwrap().unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("init-certs --kube did not finish within {RUN_LIMIT:?}");
        }
    }
}

fn secret_pems(secret: &Value) -> Pems {
    let get = |k: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(
                secret["data"][k]
                    .as_str()
                    .unwrap_or_else(|| panic!("data.{k}")),
            )
            .unwrap()
    };
    Pems {
        ca: get("ca.crt"),
        crt: get("tls.crt"),
        key: get("tls.key"),
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

const SECRET_PATH: &str = "/api/v1/namespaces/flyte/secrets/flyte-auth-injector-tls";
const MWC_PATH: &str =
    "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/flyte-auth-injector";
const FIELD_MANAGER: &str = "fieldManager=flyte-auth-injector-init-certs";

fn lines(requests: &[Recorded]) -> Vec<String> {
    requests.iter().map(Recorded::line).collect()
}

/// The PATCH sets caBundle = base64(ca.crt) on every webhook, as a strategic merge by name.
fn assert_ca_patch(patch: &Recorded, ca: &[u8]) {
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/strategic-merge-patch+json")
    );
    assert_eq!(
        patch.body,
        json!({"webhooks": [
            {"name": "pods.auth-agent.flyte.org", "clientConfig": {"caBundle": b64(ca)}},
            {"name": "pods-reinvoked.auth-agent.flyte.org", "clientConfig": {"caBundle": b64(ca)}},
        ]})
    );
}

#[tokio::test]
async fn kube_creates_the_secret_and_sets_every_ca_bundle_then_keeps_them() {
    let state = Shared::default();
    state
        .lock()
        .unwrap()
        .webhook_configs
        .push(webhook_config("flyte-auth-injector", None));
    let server = stand_in(state.clone()).await;
    let tmp = tempfile::tempdir().unwrap();
    let kc = kubeconfig(tmp.path(), &server, "default");

    // First run: nothing there yet.
    let log = assert_ok(&kube_run(&kc, &[], &[]).await);
    assert!(log.contains("created"), "{log}");
    let requests = std::mem::take(&mut state.lock().unwrap().requests);
    assert_eq!(
        lines(&requests),
        [
            format!("GET {SECRET_PATH}"),
            format!("POST /api/v1/namespaces/flyte/secrets?{FIELD_MANAGER}"),
            format!("GET {MWC_PATH}"),
            format!("PATCH {MWC_PATH}?{FIELD_MANAGER}"),
        ]
    );
    let create = &requests[1];
    assert_eq!(create.content_type.as_deref(), Some("application/json"));
    assert_eq!(create.body["kind"], "Secret");
    assert_eq!(create.body["apiVersion"], "v1");
    assert_eq!(create.body["type"], "kubernetes.io/tls");
    assert_eq!(
        create.body["metadata"],
        json!({
            "name": "flyte-auth-injector-tls",
            "namespace": "flyte",
            "labels": {"app.kubernetes.io/managed-by": "flyte-auth-injector-init-certs"},
        })
    );
    let keys: BTreeSet<&str> = create.body["data"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, BTreeSet::from(["ca.crt", "tls.crt", "tls.key"]));
    let pems = secret_pems(&create.body);
    assert_chain(&pems, &NAMES);
    assert_ca_patch(&requests[3], &pems.ca);
    // The bundle the webhooks now trust verifies the served certificate.
    let stored_mwc = state.lock().unwrap().webhook_configs[0].clone();
    for hook in stored_mwc["webhooks"].as_array().unwrap() {
        let ca = base64::engine::general_purpose::STANDARD
            .decode(hook["clientConfig"]["caBundle"].as_str().unwrap())
            .unwrap();
        assert_chain(&Pems { ca, ..pems.clone() }, &NAMES);
        assert_eq!(
            hook["clientConfig"]["service"]["path"], "/mutate",
            "the rest of the webhook is untouched"
        );
    }

    // Second run: the Secret is valid and the caBundle matches, so nothing is written.
    let log = assert_ok(&kube_run(&kc, &[], &[]).await);
    assert!(log.contains("kept"), "{log}");
    assert!(log.contains("caBundle already matches"), "{log}");
    let requests = std::mem::take(&mut state.lock().unwrap().requests);
    assert_eq!(
        lines(&requests),
        [format!("GET {SECRET_PATH}"), format!("GET {MWC_PATH}")]
    );

    // Third run: someone reset one webhook's caBundle; the Secret is kept, the bundle restored.
    {
        let mut st = state.lock().unwrap();
        st.webhook_configs[0]["webhooks"][1]["clientConfig"]["caBundle"] = json!(b64(b"stale"));
    }
    let log = assert_ok(&kube_run(&kc, &[], &[]).await);
    assert!(log.contains("kept"), "{log}");
    assert_kept_secret_and_set_ca_bundle(&state.lock().unwrap().requests, &pems.ca);
    state.lock().unwrap().requests.clear();
    assert_eq!(
        secret_pems(&state.lock().unwrap().secrets[0]),
        pems,
        "the Secret is untouched"
    );
}

#[tokio::test]
async fn kube_invalid_secret_is_replaced_with_put() {
    let tmp = tempfile::tempdir().unwrap();
    // A Secret with a broken tls.crt, an extra key and a label someone else put there.
    let seeded = tmp.path().join("seed");
    assert_ok(&offline(&seeded, &[]));
    let seed = read_dir_pems(&seeded);
    let state = Shared::default();
    {
        let mut st = state.lock().unwrap();
        st.secrets.push(json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {
                "name": "flyte-auth-injector-tls", "namespace": "flyte", "resourceVersion": "7",
                "labels": {"team": "platform"},
            },
            "data": {
                "ca.crt": b64(&seed.ca), "tls.crt": b64(b"not a certificate"),
                "tls.key": b64(&seed.key), "extra": b64(b"keep me"),
            },
        }));
        st.webhook_configs
            .push(webhook_config("flyte-auth-injector", Some(&b64(&seed.ca))));
    }
    let server = stand_in(state.clone()).await;
    let kc = kubeconfig(tmp.path(), &server, "default");

    let log = assert_ok(&kube_run(&kc, &[], &[]).await);
    assert!(log.contains("renewed (tls.crt does not parse"), "{log}");
    let requests = std::mem::take(&mut state.lock().unwrap().requests);
    assert_eq!(
        lines(&requests),
        [
            format!("GET {SECRET_PATH}"),
            format!("PUT {SECRET_PATH}?{FIELD_MANAGER}"),
            format!("GET {MWC_PATH}"),
            format!("PATCH {MWC_PATH}?{FIELD_MANAGER}"),
        ]
    );
    let put = &requests[1];
    assert_eq!(put.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        put.body["metadata"]["resourceVersion"], "7",
        "optimistic concurrency on the version read"
    );
    assert_eq!(put.body["metadata"]["labels"], json!({"team": "platform"}));
    assert_eq!(put.body["type"], "kubernetes.io/tls");
    assert_eq!(put.body["data"]["extra"], json!(b64(b"keep me")));
    let pems = secret_pems(&put.body);
    assert_chain(&pems, &NAMES);
    assert_ne!(pems.ca, seed.ca, "a new CA (its old key is stored nowhere)");
    assert_ca_patch(&requests[3], &pems.ca);
}

#[tokio::test]
async fn kube_waits_for_the_webhook_configuration_with_names_from_flags_and_env() {
    let state = Shared::default();
    {
        let mut st = state.lock().unwrap();
        st.webhook_configs.push(webhook_config("tenant-hook", None));
        st.webhook_config_hidden_for = 2;
    }
    let server = stand_in(state.clone()).await;
    let tmp = tempfile::tempdir().unwrap();
    let kc = kubeconfig(tmp.path(), &server, "default");

    let args = [
        "--secret-name",
        "tenant-tls",
        "--webhook-name",
        "tenant-hook",
        "--service-name",
        "hook",
        "--webhook-wait-attempts",
        "3",
        "--webhook-wait-backoff",
        "10ms",
    ];
    let log = assert_ok(&kube_run(&kc, &args, &[("POD_NAMESPACE", "tenant-a")]).await);
    assert!(log.contains("not found yet"), "{log}");
    let requests = std::mem::take(&mut state.lock().unwrap().requests);
    let mwc = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/tenant-hook";
    assert_eq!(
        lines(&requests),
        [
            "GET /api/v1/namespaces/tenant-a/secrets/tenant-tls".to_owned(),
            format!("POST /api/v1/namespaces/tenant-a/secrets?{FIELD_MANAGER}"),
            format!("GET {mwc}"),
            format!("GET {mwc}"),
            format!("GET {mwc}"),
            format!("PATCH {mwc}?{FIELD_MANAGER}"),
        ]
    );
    assert_eq!(requests[1].body["metadata"]["namespace"], "tenant-a");
    assert_eq!(requests[1].body["metadata"]["name"], "tenant-tls");
    let pems = secret_pems(&requests[1].body);
    assert_chain(
        &pems,
        &[
            "hook",
            "hook.tenant-a",
            "hook.tenant-a.svc",
            "hook.tenant-a.svc.cluster.local",
        ],
    );
    assert_ca_patch(&requests[5], &pems.ca);
}

#[tokio::test]
async fn kube_missing_webhook_configuration_is_an_error_naming_it() {
    let state = Shared::default();
    let server = stand_in(state.clone()).await;
    let tmp = tempfile::tempdir().unwrap();
    let kc = kubeconfig(tmp.path(), &server, "default");

    let out = kube_run(
        &kc,
        &[
            "--webhook-wait-attempts",
            "3",
            "--webhook-wait-backoff",
            "10ms",
        ],
        &[],
    )
    .await;
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("MutatingWebhookConfiguration flyte-auth-injector not found after 3 attempts"),
        "{err}"
    );
    let requests = std::mem::take(&mut state.lock().unwrap().requests);
    assert_eq!(
        lines(&requests),
        [
            format!("GET {SECRET_PATH}"),
            format!("POST /api/v1/namespaces/flyte/secrets?{FIELD_MANAGER}"),
            format!("GET {MWC_PATH}"),
            format!("GET {MWC_PATH}"),
            format!("GET {MWC_PATH}"),
        ]
    );
}

#[tokio::test]
async fn kube_create_race_rereads_and_keeps_the_other_writers_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let theirs_dir = tmp.path().join("theirs");
    assert_ok(&offline(&theirs_dir, &[]));
    let theirs = read_dir_pems(&theirs_dir);
    let state = Shared::default();
    {
        let mut st = state.lock().unwrap();
        st.secret_created_meanwhile = Some(json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": "flyte-auth-injector-tls", "namespace": "flyte"},
            "data": {"ca.crt": b64(&theirs.ca), "tls.crt": b64(&theirs.crt), "tls.key": b64(&theirs.key)},
        }));
        st.webhook_configs
            .push(webhook_config("flyte-auth-injector", None));
    }
    let server = stand_in(state.clone()).await;
    let kc = kubeconfig(tmp.path(), &server, "default");

    let log = assert_ok(&kube_run(&kc, &[], &[]).await);
    assert!(log.contains("raced another writer"), "{log}");
    assert!(log.contains("kept"), "{log}");
    let requests = std::mem::take(&mut state.lock().unwrap().requests);
    assert_eq!(
        lines(&requests),
        [
            format!("GET {SECRET_PATH}"),
            format!("POST /api/v1/namespaces/flyte/secrets?{FIELD_MANAGER}"),
            format!("GET {SECRET_PATH}"),
            format!("GET {MWC_PATH}"),
            format!("PATCH {MWC_PATH}?{FIELD_MANAGER}"),
        ]
    );
    // The webhooks trust the Secret that won, not the one this run minted and lost.
    assert_ca_patch(&requests[4], &theirs.ca);
}

/// The calls of a run that keeps the Secret and sets the caBundle to `ca`: read the Secret, read
/// the webhook configuration, patch its caBundle.
fn assert_kept_secret_and_set_ca_bundle(requests: &[Recorded], ca: &[u8]) {
    assert_eq!(
        lines(requests),
        [
            format!("GET {SECRET_PATH}"),
            format!("GET {MWC_PATH}"),
            format!("PATCH {MWC_PATH}?{FIELD_MANAGER}"),
        ]
    );
    assert_ca_patch(&requests[2], ca);
}

/// No request of `requests` is about a MutatingWebhookConfiguration.
fn assert_no_webhook_request(requests: &[Recorded]) {
    let touched: Vec<String> = requests
        .iter()
        .filter(|r| r.path.contains("mutatingwebhookconfigurations"))
        .map(Recorded::line)
        .collect();
    assert!(
        touched.is_empty(),
        "--secret-only touched the webhook configuration: {touched:?}"
    );
}

/// `--secret-only` (the chart's pre-install run, before the webhook configuration exists): the
/// Secret is created, renewed and kept by the same policy as a full run, and not one request goes
/// to the MutatingWebhookConfiguration (it is neither waited for nor read; one that does exist is
/// left as it was).
#[tokio::test]
async fn kube_secret_only_ensures_the_secret_and_never_touches_the_webhook_configuration() {
    let state = Shared::default();
    let server = stand_in(state.clone()).await;
    let tmp = tempfile::tempdir().unwrap();
    let kc = kubeconfig(tmp.path(), &server, "default");
    let secret_only = |extra: &'static [&'static str]| {
        let kc = kc.clone();
        async move {
            let mut args = vec!["--secret-only"];
            args.extend_from_slice(extra);
            kube_run(&kc, &args, &[]).await
        }
    };
    let take = || std::mem::take(&mut state.lock().unwrap().requests);

    // Nothing there, no webhook configuration either: created at once, nothing waited for. The
    // short validity makes the next run's renewal due.
    let log = assert_ok(&secret_only(&["--valid-for", "1d", "--renew-before", "30d"]).await);
    assert!(log.contains("created"), "{log}");
    assert!(log.contains("caBundle left to a run without it"), "{log}");
    let requests = take();
    assert_eq!(
        lines(&requests),
        [
            format!("GET {SECRET_PATH}"),
            format!("POST /api/v1/namespaces/flyte/secrets?{FIELD_MANAGER}"),
        ]
    );
    let short = secret_pems(&requests[1].body);
    assert_chain(&short, &NAMES);

    // Due for renewal: replaced (PUT on the version read), as a full run would.
    state
        .lock()
        .unwrap()
        .webhook_configs
        .push(webhook_config("flyte-auth-injector", Some(&b64(&short.ca))));
    let log = assert_ok(&secret_only(&[]).await);
    assert!(log.contains("renewed (ca.crt expires at"), "{log}");
    let requests = take();
    assert_eq!(
        lines(&requests),
        [
            format!("GET {SECRET_PATH}"),
            format!("PUT {SECRET_PATH}?{FIELD_MANAGER}"),
        ]
    );
    let renewed = secret_pems(&requests[1].body);
    assert_ne!(renewed.ca, short.ca);
    assert_chain(&renewed, &NAMES);
    assert_eq!(
        state.lock().unwrap().webhook_configs[0],
        webhook_config("flyte-auth-injector", Some(&b64(&short.ca))),
        "the existing caBundle is left alone, though it no longer matches"
    );

    // Valid: kept, nothing written.
    let log = assert_ok(&secret_only(&[]).await);
    assert!(log.contains("kept"), "{log}");
    assert_eq!(lines(&take()), [format!("GET {SECRET_PATH}")]);
    assert_eq!(secret_pems(&state.lock().unwrap().secrets[0]), renewed);
}

/// The chart's two runs of one install: `--secret-only` before the release's objects exist, then
/// (once Helm has created the webhook configuration, without caBundle) the full run with the same
/// flags. The full run keeps the Secret byte for byte and only sets the caBundle to its CA.
#[tokio::test]
async fn kube_full_run_after_secret_only_keeps_the_secret_and_only_patches_the_ca_bundle() {
    let state = Shared::default();
    let server = stand_in(state.clone()).await;
    let tmp = tempfile::tempdir().unwrap();
    let kc = kubeconfig(tmp.path(), &server, "default");
    let flags = ["--valid-for", "365d", "--renew-before", "60d"];

    let pre: Vec<&str> = flags.iter().copied().chain(["--secret-only"]).collect();
    let log = assert_ok(&kube_run(&kc, &pre, &[]).await);
    assert!(log.contains("created"), "{log}");
    let requests = std::mem::take(&mut state.lock().unwrap().requests);
    assert_no_webhook_request(&requests);
    let written = state.lock().unwrap().secrets[0].clone();
    let pems = secret_pems(&written);
    assert_chain(&pems, &NAMES);

    state
        .lock()
        .unwrap()
        .webhook_configs
        .push(webhook_config("flyte-auth-injector", None));
    let log = assert_ok(&kube_run(&kc, &flags, &[]).await);
    assert!(log.contains("kept"), "{log}");
    assert!(log.contains("caBundle set to ca.crt"), "{log}");
    assert_kept_secret_and_set_ca_bundle(&state.lock().unwrap().requests, &pems.ca);
    state.lock().unwrap().requests.clear();
    assert_eq!(
        state.lock().unwrap().secrets[0],
        written,
        "the Secret (and its resourceVersion) is untouched"
    );
}
