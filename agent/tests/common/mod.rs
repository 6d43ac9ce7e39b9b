//! Test harness: the real `oidc-provider` (tests/idp) and the real agent binary, both on
//! loopback, started per test and stopped when dropped. Every wait is bounded and polls a
//! condition; nothing sleeps for a fixed time.
//!
//! Every agent's log output is kept; [`AgentProcess::stop`] asserts that no client secret and no
//! token value any test saw appears in it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub mod fleet;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Polls `f` every 20 ms until it returns `Some`, failing the test after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts that `text` contains `needle`, showing `text` when it does not.
#[track_caller]
/// The audit events in the agent's JSON log (tracing target `audit`).
pub fn audit_events(output: &str) -> Vec<Value> {
    output
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == json!("audit"))
        .collect()
}

pub fn assert_contains(text: &str, needle: &str) {
    assert!(text.contains(needle), "expected {needle:?} in:\n{text}");
}

/// A running `oidc-provider`.
pub struct Idp {
    child: Child,
    pub issuer: String,
    http: reqwest::blocking::Client,
}

impl Idp {
    /// Starts the IdP with `config` (see tests/idp/README.md).
    pub fn start(config: Value) -> Self {
        let server = workspace().join("tests/idp/server.mjs");
        let modules = workspace().join("tests/idp/node_modules/oidc-provider");
        assert!(
            modules.exists(),
            "oidc-provider is not installed: run `tests/run` (it runs `npm ci --prefix tests/idp`)"
        );
        let mut child = Command::new("node")
            .arg(&server)
            .env("IDP_CONFIG", config.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node tests/idp/server.mjs");
        // Bounded: a peer that never says where it listens fails the test instead of hanging it.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            panic!("the test IdP did not print its address within 30 s");
        };
        let info: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("IdP said {line:?}: {e}"));
        let issuer = info["issuer"].as_str().expect("issuer").to_string();
        // The harness trusts the test CA the IdP serves with (config `test_ca`), if any.
        let mut http = reqwest::blocking::Client::builder();
        if let Some(ca) = config["test_ca"].as_str() {
            let pem = std::fs::read(ca).unwrap();
            http = http.add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
        }
        let http = http.build().unwrap();
        Self {
            child,
            issuer,
            http,
        }
    }

    /// Starts the IdP with one client per `(client_id, secret, auth method)`.
    pub fn with_clients(clients: &[(&str, &str, &str)]) -> Self {
        let clients: Vec<Value> = clients
            .iter()
            .map(|(id, secret, method)| json!({"client_id": id, "client_secret": secret, "token_endpoint_auth_method": method}))
            .collect();
        Self::start(json!({ "clients": clients }))
    }

    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    /// The discovery document.
    pub fn discovery(&self) -> Value {
        self.http
            .get(self.discovery_url())
            .send()
            .unwrap()
            .json()
            .unwrap()
    }

    pub fn token_endpoint(&self) -> String {
        self.discovery()["token_endpoint"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn stats(&self) -> Value {
        self.http
            .get(format!("{}/__test/stats", self.issuer))
            .send()
            .unwrap()
            .json()
            .unwrap()
    }

    pub fn token_requests(&self) -> u64 {
        self.stats()["token_requests"].as_u64().unwrap()
    }

    pub fn control(&self, what: &str, body: Value) {
        let r = self
            .http
            .post(format!("{}/__test/{what}", self.issuer))
            .json(&body)
            .send()
            .unwrap();
        assert!(
            r.status().is_success(),
            "IdP control {what}: {}",
            r.status()
        );
    }

    pub fn fault(&self, body: Value) {
        self.control("fault", body)
    }

    pub fn reset(&self) {
        self.control("reset", json!({}))
    }

    /// The IdP's JWKS, for verifying tokens.
    pub fn jwks(&self) -> jsonwebtoken::jwk::JwkSet {
        let uri = self.discovery()["jwks_uri"].as_str().unwrap().to_string();
        self.http.get(uri).send().unwrap().json().unwrap()
    }

    /// Verifies `token` against the IdP's JWKS and returns its claims.
    pub fn verify(&self, token: &str, audience: &str) -> Value {
        let header = jsonwebtoken::decode_header(token).expect("JWT header");
        let jwks = self.jwks();
        let jwk = match &header.kid {
            Some(kid) => jwks.find(kid).expect("key in JWKS"),
            None => &jwks.keys[0],
        };
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
        let mut validation = jsonwebtoken::Validation::new(header.alg);
        validation.set_audience(&[audience]);
        validation.set_issuer(&[&self.issuer]);
        jsonwebtoken::decode::<Value>(token, &key, &validation)
            .expect("token verifies against the IdP's JWKS")
            .claims
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Strings that must never appear in agent output: client secrets and every token seen.
#[derive(Clone, Default)]
pub struct Sensitive(Arc<Mutex<Vec<String>>>);

impl Sensitive {
    pub fn add(&self, s: impl Into<String>) {
        let s = s.into();
        if !s.is_empty() {
            self.0.lock().unwrap().push(s);
        }
    }

    pub fn assert_absent(&self, what: &str, text: &str) {
        for s in self.0.lock().unwrap().iter() {
            assert!(
                !text.contains(s.as_str()),
                "{what} contains a secret or token value"
            );
        }
    }
}

/// A directory laid out like the agent's pod: secrets, tokens, socket.
pub struct Pod {
    pub dir: tempfile::TempDir,
    pub sensitive: Sensitive,
}

impl Pod {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            sensitive: Sensitive::default(),
        }
    }

    pub fn secrets_dir(&self) -> PathBuf {
        self.dir.path().join("secrets")
    }

    pub fn tokens_dir(&self) -> PathBuf {
        self.dir.path().join("tokens")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run/agent.sock")
    }

    /// Writes a secret where flytekit's rules put `<group>/<key>`.
    pub fn secret(&self, group: &str, key: &str, value: &str) {
        let dir = self.secrets_dir().join(group);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(key), format!("{value}\n")).unwrap();
        self.sensitive.add(value);
    }

    pub fn token_file(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.tokens_dir().join(name)).ok()
    }

    /// The env a pod gives the agent, plus `requests` as FLYTE_AUTH_AGENT_TOKEN_REQUESTS.
    pub fn env(&self, requests: &Value) -> Vec<(String, String)> {
        vec![
            (
                "FLYTE_TOKENS_PATH_PREFIX".into(),
                self.tokens_dir().display().to_string(),
            ),
            (
                "FLYTE_AUTH_AGENT_SOCKET".into(),
                self.socket().display().to_string(),
            ),
            (
                "FLYTE_SECRETS_DEFAULT_DIR".into(),
                self.secrets_dir().display().to_string(),
            ),
            ("FLYTE_AUTH_AGENT_HEALTH_ADDR".into(), "127.0.0.1:0".into()),
            (
                "FLYTE_AUTH_AGENT_TOKEN_REQUESTS".into(),
                requests.to_string(),
            ),
            ("FLYTE_AUTH_AGENT_IDP_TIMEOUT".into(), "2s".into()),
        ]
    }
}

/// A token request in flyteidl JSON form with a file secret `<group>/client_secret`.
pub fn request(name: &str, client_id: &str, group: &str, endpoint: (&str, &str)) -> Value {
    let mut r = json!({
        "name": name,
        "type": "CLIENT_CREDENTIALS",
        "client": {"clientId": client_id, "clientSecret": {"group": group, "key": "client_secret", "mountRequirement": "FILE"}},
    });
    r[endpoint.0] = json!(endpoint.1);
    r
}

/// The agent binary running as a child process.
pub struct AgentProcess {
    child: Option<Child>,
    output: Arc<Mutex<String>>,
    pub health: String,
    sensitive: Sensitive,
    socket: PathBuf,
}

/// The agent binary: cargo's for the agent's own tests; for another package's tests (the
/// injector's), the one cargo built beside them (`cargo test --workspace` builds it).
pub fn agent_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = option_env!("CARGO_BIN_EXE_flyte-auth-agent") {
            return bin.to_string();
        }
        let exe = std::env::current_exe().unwrap();
        // target/<profile>/deps/<test> → target/<profile>/flyte-auth-agent
        let bin = exe
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("flyte-auth-agent");
        assert!(
            bin.exists(),
            "{} is missing: run `cargo build -p flyte-auth-agent` (tests/run builds it)",
            bin.display()
        );
        bin.display().to_string()
    })
}

impl AgentProcess {
    /// Starts `flyte-auth-agent <args>` with exactly `env` (plus PATH) and waits until it logs
    /// the address it serves on.
    pub fn start(pod: &Pod, args: &[&str], env: &[(String, String)]) -> Self {
        let mut child = Command::new(agent_bin())
            .args(args)
            .env_clear()
            .env(
                "RUST_LOG",
                std::env::var("AGENT_LOG")
                    .unwrap_or("debug,h2=info,hyper=info,hyper_util=info".into()),
            )
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start agent");
        let output = Arc::new(Mutex::new(String::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut o = output.lock().unwrap();
                    o.push_str(&line);
                    o.push('\n');
                }
            });
        }
        let mut agent = Self {
            child: Some(child),
            output,
            health: String::new(),
            sensitive: pod.sensitive.clone(),
            socket: pod.socket(),
        };
        if args.contains(&"--once") {
            return agent;
        }
        agent.health = wait_for(
            "agent to log its addresses",
            Duration::from_secs(10),
            || {
                let out = agent.output();
                if let Some(status) = agent.child.as_mut().unwrap().try_wait().unwrap() {
                    panic!("agent exited early with {status}:\n{out}");
                }
                let line = out.lines().find(|l| l.contains("serving"))?;
                // `log_format: json` writes the address as a field.
                if let Ok(event) = serde_json::from_str::<Value>(line) {
                    return Some(event["health"].as_str()?.to_string());
                }
                let start = line.find("health=")? + "health=".len();
                Some(line[start..].split_whitespace().next()?.to_string())
            },
        );
        agent
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// GET on the health port: status and body.
    pub fn health_get(&self, path: &str) -> (u16, String) {
        let r = reqwest::blocking::get(format!("http://{}{path}", self.health)).unwrap();
        (r.status().as_u16(), r.text().unwrap())
    }

    pub fn wait_ready(&self, limit: Duration) {
        wait_for("agent /readyz", limit, || {
            (self.health_get("/readyz").0 == 200).then_some(())
        });
    }

    /// Waits for the process to exit; returns its exit code and output, after checking the
    /// output holds no secret.
    pub fn wait_exit(mut self, limit: Duration) -> (i32, String) {
        let mut child = self.child.take().unwrap();
        let status = wait_for("agent to exit", limit, || child.try_wait().unwrap());
        // Let the reader threads drain what the process wrote last.
        std::thread::sleep(Duration::from_millis(50));
        let out = self.output();
        self.sensitive.assert_absent("agent output", &out);
        (status.code().unwrap_or(-1), out)
    }

    /// SIGTERM, then wait for exit.
    pub fn stop(self) -> (i32, String) {
        let pid = self.child.as_ref().unwrap().id();
        let ok = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(ok.success());
        self.wait_exit(Duration::from_secs(10))
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            // A test that did not stop the agent itself still gets its output checked.
            if !std::thread::panicking() {
                self.sensitive.assert_absent("agent output", &self.output());
            }
        }
    }
}

/// A runtime for one blocking call from a test.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// [`socket_get`] from a plain test: status and body.
pub fn sget(socket: &std::path::Path, path: &str, accept: &str) -> (u16, String) {
    rt().block_on(socket_get(socket, path, accept))
}

/// GET over the agent's unix socket with a blocking hyper-free client: status and body.
pub async fn socket_get(socket: &Path, path: &str, accept: &str) -> (u16, String) {
    let (status, body) =
        flyte_auth_agent::client::get(socket, path, accept, Duration::from_secs(30))
            .await
            .expect("socket GET");
    (status.as_u16(), String::from_utf8(body.to_vec()).unwrap())
}

/// The test venv's Python (with flytekit and flyteidl), or `FLYTE_AUTH_TEST_PYTHON`.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("FLYTE_AUTH_TEST_PYTHON") {
        return p.into();
    }
    let venv = workspace().join("tests/.venv/bin/python");
    assert!(
        venv.exists(),
        "no Python venv at {}: run `tests/run` (it installs tests/requirements.txt)",
        venv.display()
    );
    venv
}

/// The FlyteAdmin stand-in (tests/admin/standin.py): a gRPC server with PyPI flyteidl's
/// servicers that verifies bearer JWTs against the IdP's JWKS, as FlyteAdmin does.
pub struct Admin {
    child: Option<Child>,
    stdout: Option<BufReader<std::process::ChildStdout>>,
    pub port: u16,
    config: Value,
}

impl Admin {
    /// Starts it with `config` (tests/admin/README.md); `issuer` is required there.
    pub fn start(config: Value) -> Self {
        let (child, stdout, info) =
            start_standin(python(), "tests/admin/standin.py", "ADMIN_CONFIG", &config);
        let port = info["port"].as_u64().unwrap_or(0) as u16;
        Self {
            child: Some(child),
            stdout: Some(stdout),
            port,
            config,
        }
    }

    /// `host:port`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Sends a control command and returns its answer.
    pub fn control(&mut self, command: Value) -> Value {
        use std::io::Write as _;
        let child = self.child.as_mut().expect("running");
        let stdin = child.stdin.as_mut().unwrap();
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
        let stdout = self.stdout.as_mut().unwrap();
        let line = read_line(stdout).expect("the Admin stand-in exited instead of answering");
        serde_json::from_str(&line).unwrap()
    }

    /// Every call the stand-in saw, in order.
    pub fn calls(&mut self) -> Vec<Value> {
        self.control(json!({"cmd": "stats"}))["calls"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Every call that needed a token (AuthMetadataService calls left out), in order.
    pub fn authenticated_calls(&mut self) -> Vec<Value> {
        self.calls()
            .into_iter()
            .filter(|c| c["exempt"] != json!(true))
            .collect()
    }

    /// Stops it (stdin closed, as its README says) and waits for the exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            wait_for("Admin stand-in to exit", Duration::from_secs(10), || {
                child.try_wait().unwrap()
            });
        }
        self.stdout = None;
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let mut config = self.config.clone();
        config["port"] = json!(self.port);
        *self = Self::start(config);
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts a Python stand-in (`script`, under the workspace) with `config` in env `config_var`;
/// the process, its stdout, and the JSON line it prints once it listens (where it listens).
fn start_standin(
    python: PathBuf,
    script: &str,
    config_var: &str,
    config: &Value,
) -> (Child, BufReader<std::process::ChildStdout>, Value) {
    let mut child = Command::new(python)
        .arg(workspace().join(script))
        .env(config_var, config.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {script}: {e}"));
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let line = read_line(&mut stdout)
        .unwrap_or_else(|| panic!("{script} exited before saying where it listens"));
    let info = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("{script} said {line:?} instead of where it listens: {e}"));
    (child, stdout, info)
}

/// One line from the stand-in. A blocking read: it answers every command at once, and if it dies
/// its stdout closes, which ends the read.
fn read_line<R: BufRead>(reader: &mut R) -> Option<String> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(n) if n > 0 => Some(line),
        _ => None,
    }
}

/// A P-256 key pair: PKCS#8 PEM for the agent's secret, public JWK for the IdP's client entry.
pub fn p256_key() -> (String, Value) {
    use base64::Engine as _;
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    let key = loop {
        if let Ok(k) = p256::ecdsa::SigningKey::from_slice(&rand::random::<[u8; 32]>()) {
            break k;
        }
    };
    let pem = key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
    let point = key.verifying_key().to_encoded_point(false);
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap()), "use": "sig", "alg": "ES256"});
    (pem, jwk)
}

/// A service-account-like token: an ES256 JWT signed with `pem` (from [`p256_key`]), with a
/// fresh `jti`, valid for ten minutes.
pub fn signed_jwt(pem: &str, iss: &str, sub: &str, aud: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "iss": iss, "sub": sub, "aud": [aud],
        "iat": now, "nbf": now, "exp": now + 600,
        "jti": format!("{:032x}", rand::random::<u128>()),
    });
    let key = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &key,
    )
    .unwrap()
}

/// A CA and a server certificate for `name` (a DNS name or IP), as PEM files in `dir`: (ca, cert, key).
pub fn test_pki(
    dir: &std::path::Path,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// The Flyte 2 venv's Python (`flyte` 2.12.1, the stand-in's packages).
pub fn flyte2_python() -> PathBuf {
    let python = workspace().join("tests/.venv-flyte2/bin/python");
    assert!(
        python.exists(),
        "no venv at {}: run `tests/run` (it installs tests/requirements-flyte2.txt)",
        python.display()
    );
    python
}

/// The Flyte 2 control-plane stand-in (tests/flyte2/standin.py), stopped when dropped.
pub struct ControlPlane {
    child: Child,
    pub address: String,
    http: reqwest::blocking::Client,
}

impl ControlPlane {
    /// Starts it with `config` (tests/flyte2/README.md).
    pub fn start(config: Value) -> Self {
        let (child, _, info) = start_standin(
            flyte2_python(),
            "tests/flyte2/standin.py",
            "FLYTE2_CONFIG",
            &config,
        );
        Self {
            child,
            address: info["address"].as_str().unwrap().to_string(),
            http: reqwest::blocking::Client::new(),
        }
    }

    /// Started for `idp`'s tokens, announcing `flyte-authorization` as the header and the IdP's
    /// token endpoint, with org `org`; SelectCluster answers `cluster_endpoint`.
    pub fn for_idp(idp: &Idp, org: &str, cluster_endpoint: &str) -> Self {
        let discovery = idp.discovery();
        Self::start(json!({
            "issuer": idp.issuer,
            "jwks_uri": discovery["jwks_uri"],
            "token_endpoint": discovery["token_endpoint"],
            "auth_header": "flyte-authorization",
            "cluster_endpoint": cluster_endpoint,
            "org": org,
        }))
    }

    /// Every call it saw that needed a token, in order.
    pub fn calls(&self) -> Vec<Value> {
        let all: Vec<Value> = self
            .http
            .get(format!("http://{}/control/calls", self.address))
            .send()
            .unwrap()
            .json()
            .unwrap();
        all.into_iter()
            .filter(|c| c["exempt"] != json!(true))
            .collect()
    }

    /// Refuses every token issued until now; returns the revocation time (seconds).
    pub fn revoke(&self) -> f64 {
        let answer: Value = self
            .http
            .post(format!("http://{}/control/revoke", self.address))
            .send()
            .unwrap()
            .json()
            .unwrap();
        answer["revoked_before"].as_f64().unwrap()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port (bound and released: the agent binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs tests/python/flyte2_task.py (`a0`, `remote`, `denied`) with only `env` (plus `PATH` and
/// `HOME`), as a Flyte 2 task container; its exit code (a signal as its negative number) and its
/// one JSON line. `agent`'s log is shown if the line is not JSON.
pub fn flyte2_task(args: &[&str], env: &[(String, String)], agent: &AgentProcess) -> (i32, Value) {
    use std::os::unix::process::ExitStatusExt as _;
    let out = Command::new(flyte2_python())
        .arg(workspace().join("tests/python/flyte2_task.py"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        .envs(env.iter().cloned())
        .env("FLYTE2_DRIVER_TIMEOUT", "60")
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let result = serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "the task printed {stdout:?}: {e}\nagent: {}",
            agent.output()
        )
    });
    let code = out
        .status
        .code()
        .unwrap_or_else(|| -out.status.signal().unwrap_or(0));
    (code, result)
}
