//! Shared by the HTTPS tests and the benchmark: the injector binary started on loopback, and
//! what the API server does as its client (TLS trusting only the webhook's CA, the review it
//! sends for a task pod).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use rustls_pki_types::pem::PemObject as _;

/// HTTP/1.1 over TLS 1.2/1.3, trusting only the certificates in `ca_pem`. A fresh config each
/// time, so no TLS session is resumed across callers.
pub fn client_config(ca_pem: &str) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// A task pod review as the API server sends it for a propeller-created pod with three token
/// requests in the JSON annotation; `opted_in` adds the opt-in label.
pub fn review(uid: &str, opted_in: bool) -> Vec<u8> {
    let requests: Vec<Value> = (1..=3)
        .map(|i| {
            json!({
                "name": format!("t{i}"),
                "type": "CLIENT_CREDENTIALS",
                "client": {"clientId": format!("c{i}"), "clientSecret": {"group": format!("g{i}"), "key": "k"}},
                "tokenEndpoint": "https://idp.example.com/token",
            })
        })
        .collect();
    let mut review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "flytesnacks-development",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:flyte:flytepropeller", "groups": ["system:serviceaccounts"]},
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": "f7a1b2c3d4e5f6a7b8c9-n0-0",
                    "namespace": "flytesnacks-development",
                    "labels": {
                        "domain": "development",
                        "execution-id": "f7a1b2c3d4e5f6a7b8c9",
                        "interruptible": "false",
                        "node-id": "n0",
                        "project": "flytesnacks",
                        "shard-key": "21",
                        "task-name": "workflows-example-fetch-data",
                        "workflow-name": "workflows-example-wf",
                    },
                    "annotations": {
                        "cluster-autoscaler.kubernetes.io/safe-to-evict": "false",
                        "flyte.org/token-requests": serde_json::to_string(&requests).unwrap(),
                    },
                    "ownerReferences": [{
                        "apiVersion": "flyte.lyft.com/v1alpha1",
                        "kind": "flyteworkflow",
                        "name": "f7a1b2c3d4e5f6a7b8c9",
                        "uid": "5d6e7f80-91a2-b3c4-d5e6-f708192a3b4c",
                        "blockOwnerDeletion": true,
                        "controller": true,
                    }],
                },
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": "default",
                    "containers": [{
                        "name": "f7a1b2c3d4e5f6a7b8c9-n0-0",
                        "image": "cr.flyte.org/flyteorg/flytekit:py3.11-1.16.0",
                        "args": ["pyflyte-fast-execute", "--additional-distribution", "s3://bucket/fast.tar.gz",
                                 "--dest-dir", ".", "--", "pyflyte-execute", "--inputs", "s3://bucket/inputs.pb",
                                 "--output-prefix", "s3://bucket/out", "--raw-output-data-prefix", "s3://bucket/raw",
                                 "--resolver", "flytekit.core.python_auto_container.default_task_resolver", "--",
                                 "task-module", "workflows.example", "task-name", "fetch_data"],
                        "env": [
                            {"name": "FLYTE_INTERNAL_EXECUTION_WORKFLOW", "value": "flytesnacks:development:workflows.example.wf"},
                            {"name": "FLYTE_INTERNAL_EXECUTION_ID", "value": "f7a1b2c3d4e5f6a7b8c9"},
                            {"name": "FLYTE_INTERNAL_EXECUTION_PROJECT", "value": "flytesnacks"},
                            {"name": "FLYTE_INTERNAL_EXECUTION_DOMAIN", "value": "development"},
                            {"name": "FLYTE_ATTEMPT_NUMBER", "value": "0"},
                            {"name": "FLYTE_INTERNAL_TASK_PROJECT", "value": "flytesnacks"},
                            {"name": "FLYTE_INTERNAL_TASK_DOMAIN", "value": "development"},
                            {"name": "FLYTE_INTERNAL_TASK_NAME", "value": "workflows.example.fetch_data"},
                            {"name": "FLYTE_INTERNAL_TASK_VERSION", "value": "v1"},
                        ],
                        "resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1", "memory": "1Gi"}},
                        "terminationMessagePolicy": "FallbackToLogsOnError",
                    }],
                    "tolerations": [],
                },
            },
        },
    });
    if opted_in {
        review["request"]["object"]["metadata"]["labels"]["flyte.org/auth-agent"] =
            "enabled".into();
    }
    serde_json::to_vec(&review).unwrap()
}

/// [`review`] with `n` more token requests: propeller's `flyte.tokens/t<i>` annotations, or
/// with `json` one `flyte.org/token-requests` array, each request valid on its own (the attack
/// of issue 11: 21,000 of them in 2.9 MB).
pub fn review_with_requests(uid: &str, n: usize, json: bool) -> Vec<u8> {
    let mut review: Value = serde_json::from_slice(&self::review(uid, true)).unwrap();
    let annotations = &mut review["request"]["object"]["metadata"]["annotations"];
    let request = |i: usize| {
        json!({
            "name": format!("r{i}"),
            "client": {"clientId": "c", "clientSecret": {"group": "g", "key": "k"}},
            "tokenEndpoint": "https://idp.example.com/token",
        })
    };
    if json {
        let all: Vec<Value> = (0..n).map(request).collect();
        annotations["flyte.org/token-requests"] = serde_json::to_string(&all).unwrap().into();
    } else {
        annotations
            .as_object_mut()
            .unwrap()
            .remove("flyte.org/token-requests");
        for i in 0..n {
            let text = format!(
                "name: \"r{i}\" client {{ client_id: \"c\" client_secret {{ group: \"g\" key: \"k\" }} }} token_endpoint: \"https://idp.example.com/token\""
            );
            annotations[format!("flyte.tokens/t{i}")] =
                flyte_auth_proto::annotation::encode_text(&text).into();
        }
    }
    serde_json::to_vec(&review).unwrap()
}

/// A config serving on 127.0.0.1 (any port) with `cert` and `key`, written into `dir`.
pub fn write_config(dir: &Path, cert: &Path, key: &Path) -> PathBuf {
    write_config_with(dir, cert, key, "")
}

/// [`write_config`] with more `server` keys (YAML lines, each indented by two spaces).
pub fn write_config_with(dir: &Path, cert: &Path, key: &Path, server: &str) -> PathBuf {
    write_config_sections(dir, cert, key, server, "")
}

/// [`write_config_with`], then `sections`: more top-level sections of the config (YAML starting
/// at column 0, such as `agent:` and `admin:`).
pub fn write_config_sections(
    dir: &Path,
    cert: &Path,
    key: &Path,
    server: &str,
    sections: &str,
) -> PathBuf {
    let path = dir.join("config.yaml");
    std::fs::write(
        &path,
        format!(
            "server:\n  listen: 127.0.0.1:0\n  cert_file: {}\n  key_file: {}\n{server}{sections}",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    path
}

/// `bin serve --config config` with JSON logs, and the address it logs once it serves (waited
/// for at most 10 s).
pub fn spawn_serve(bin: &str, config: &Path) -> (Child, SocketAddr) {
    let mut child = Command::new(bin)
        .args(["serve", "--config"])
        .arg(config)
        .env("FLYTE_AUTH_INJECTOR_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Drained for the process's whole life: a closed pipe would fail its later log writes.
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
            let _ = lines_tx.send(line.unwrap_or_default());
        }
    });
    let addr = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(10))
            .expect("the binary logs the address it serves");
        let Ok(log) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if let Some(addr) = log["fields"]["address"].as_str() {
            break addr.parse().unwrap();
        }
    };
    (child, addr)
}

/// `bin init-certs` for the Service `flyte-auth-injector.flyte` into `dir` (offline mode); the CA
/// certificate it wrote, which a client trusts to reach `flyte-auth-injector.flyte.svc`.
pub fn init_certs(bin: &str, dir: &Path) -> String {
    let output = Command::new(bin)
        .args([
            "init-certs",
            "--service-name",
            "flyte-auth-injector",
            "--namespace",
            "flyte",
        ])
        .arg("--cert-dir")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::read_to_string(dir.join("ca.crt")).unwrap()
}

/// Runs tests/python/fk_tokens_task.py with `args` (tests/.venv's Python, the flyte-auth-agent
/// package of this checkout on the path): the JSON it prints.
pub fn fk_tokens_task(args: &[&str]) -> Value {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let python = workspace.join("tests/.venv/bin/python");
    assert!(
        python.exists(),
        "no Python venv at {}: run `tests/run` (it installs tests/requirements.txt)",
        python.display()
    );
    let out = Command::new(python)
        .arg(workspace.join("tests/python/fk_tokens_task.py"))
        .args(args)
        // The package from this checkout, not whatever tests/.venv last installed.
        .env("PYTHONPATH", workspace.join("agent/python/src"))
        .current_dir(workspace)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fk_tokens_task.py {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
