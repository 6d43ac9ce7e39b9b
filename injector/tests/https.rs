//! The webhook over HTTPS on loopback: the real server (`server::run`, in-process on port 0, and
//! the binary for start-up and SIGTERM), clients that trust only the test's own CA, certificate
//! rotation by the kubelet's symlink swap, refusals, health, metrics and graceful shutdown.
//! Waits are bounded polls for a condition, never fixed sleeps.

#[allow(dead_code)] // The harness also serves the tests that run fk_tokens_task.py.
mod harness;
use harness::{review, review_with_requests, spawn_serve, write_config, write_config_with};

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use flyte_auth_injector::config::Config;
use flyte_auth_injector::review::Injector;
use flyte_auth_injector::server::{self, ServerError};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

// ---- certificates -------------------------------------------------------------------------

/// A test CA.
struct Ca {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A serving certificate (for `localhost` and 127.0.0.1) and its key.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl Ca {
    fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "flyte-auth-injector test CA");
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        Self { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A serving certificate valid until 1 January of `year`, with a fresh key.
    fn leaf(&self, year: i32) -> Leaf {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        params.not_after = rcgen::date_time_ymd(year, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

/// 1 January of `year`, as Unix seconds (the expiry gauge's value).
fn new_year(year: i32) -> i64 {
    let days = (1970..year)
        .map(|y| {
            if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 {
                366
            } else {
                365
            }
        })
        .sum::<i64>();
    days * 86_400
}

/// A directory laid out like a mounted Secret: `tls.crt` and `tls.key` are symlinks through
/// `..data` to a timestamped directory, and an update swaps `..data` in one rename, as the
/// kubelet's atomic writer does.
struct SecretDir {
    dir: tempfile::TempDir,
    generation: u32,
}

impl SecretDir {
    fn new(cert_pem: &str, key_pem: &str) -> Self {
        let mut s = Self {
            dir: tempfile::tempdir().unwrap(),
            generation: 0,
        };
        s.update(cert_pem, key_pem);
        for name in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), s.dir.path().join(name)).unwrap();
        }
        s
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("tls.key")
    }

    fn update(&mut self, cert_pem: &str, key_pem: &str) {
        self.generation += 1;
        let version = format!(
            "..2026_01_01_00_00_{:02}.{}",
            self.generation, self.generation
        );
        let target = self.dir.path().join(&version);
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("tls.crt"), cert_pem).unwrap();
        std::fs::write(target.join("tls.key"), key_pem).unwrap();
        let tmp = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("..data")).unwrap();
    }
}

// ---- the server ---------------------------------------------------------------------------

struct Server {
    addr: SocketAddr,
    injector: Arc<Injector>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ServerError>>,
}

fn test_config(secret: &SecretDir) -> Config {
    let mut config = Config::default();
    config.server.cert_file = secret.cert();
    config.server.key_file = secret.key();
    config.server.reload_interval = Duration::from_millis(100);
    config.server.shutdown_grace = Duration::from_secs(5);
    config
}

/// Starts the server and waits until it has loaded its certificate (the listener is bound
/// before `run` is first polled, so only a finished handshake says the files were read).
async fn start(config: Config, ca_pem: &str) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let injector = Arc::new(Injector::new(config));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server::run(listener, injector.clone(), shutdown.clone()));
    eventually("the server to serve TLS", || async {
        tls_connect(ca_pem, addr).await.is_ok()
    })
    .await;
    Server {
        addr,
        injector,
        shutdown,
        task,
    }
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }
}

/// A reqwest client trusting only `ca_pem`, resolving `localhost` to the server.
fn client(ca_pem: &str, addr: SocketAddr, http1_only: bool) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .resolve("localhost", addr)
        .timeout(Duration::from_secs(10));
    if http1_only {
        builder = builder.http1_only();
    }
    builder.build().unwrap()
}

/// A TLS connection trusting only `ca_pem`, with a fresh client config so no session is resumed
/// (a resumed session would report the certificate of the session it resumes).
async fn tls_connect(ca_pem: &str, addr: SocketAddr) -> std::io::Result<TlsStream> {
    let config = harness::client_config(ca_pem);
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
}

fn peer_leaf(stream: &TlsStream) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// One kept-alive HTTP/1.1 connection.
struct Conn {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(stream: TlsStream) -> Self {
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Self { send }
    }

    async fn request(&mut self, method: &str, path: &str, body: Vec<u8>) -> (u16, String, Bytes) {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        // A read response does not mean the dispatcher is free for the next one yet.
        self.send.ready().await.unwrap();
        let response = self.send.send_request(req).await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, content_type, body)
    }
}

/// Polls `check` every 20 ms until it holds, failing after 10 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of the sample `series` (name and labels, exactly as exposed).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

async fn metrics(client: &reqwest::Client, server: &Server) -> String {
    client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

// ---- reviews ------------------------------------------------------------------------------

fn parse(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

// ---- tests --------------------------------------------------------------------------------

#[tokio::test]
async fn a_review_over_https_gets_the_injectors_answer_on_kept_alive_connections() {
    let ca = Ca::new();
    let leaf = ca.leaf(2030);
    let secret = SecretDir::new(&leaf.cert_pem, &leaf.key_pem);
    let server = start(test_config(&secret), &ca.pem()).await;

    // reqwest, trusting only the test CA, over HTTP/1.1 and over HTTP/2 (ALPN).
    for http1_only in [true, false] {
        let client = client(&ca.pem(), server.addr, http1_only);
        for i in 0..3 {
            let uid = format!("uid-{http1_only}-{i}");
            let body = review(&uid, true);
            let response = client
                .post(server.url("/mutate?timeout=10s"))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let want = if http1_only {
                reqwest::Version::HTTP_11
            } else {
                reqwest::Version::HTTP_2
            };
            assert_eq!(response.version(), want);
            assert_eq!(response.headers()["content-type"], "application/json");
            let got = response.bytes().await.unwrap();
            assert_eq!(got.as_ref(), server.injector.review(&body).body.as_slice());
            let answer = parse(&got);
            assert_eq!(answer["kind"], "AdmissionReview");
            assert_eq!(answer["response"]["uid"], uid.as_str());
            assert_eq!(answer["response"]["allowed"], true, "{answer}");
            assert_eq!(answer["response"]["patchType"], "JSONPatch", "{answer}");
        }
    }

    // Five reviews on one TLS connection: keep-alive, exactly.
    let stream = tls_connect(&ca.pem(), server.addr).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut conn = Conn::open(stream).await;
    for i in 0..5 {
        let body = review(&format!("kept-{i}"), i % 2 == 0);
        let (status, content_type, got) = conn.request("POST", "/mutate", body.clone()).await;
        assert_eq!((status, content_type.as_str()), (200, "application/json"));
        assert_eq!(got.as_ref(), server.injector.review(&body).body.as_slice());
    }

    // A client with the usual public roots does not trust the webhook's private CA.
    let public = reqwest::Client::builder()
        .use_rustls_tls()
        .resolve("localhost", server.addr)
        .build()
        .unwrap();
    assert!(public.get(server.url("/healthz")).send().await.is_err());

    server.shutdown.cancel();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn init_certs_output_serves_a_patch_to_a_client_trusting_only_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca_pem = harness::init_certs(binary(), dir.path());
    let mut config = Config::default();
    config.server.cert_file = dir.path().join("tls.crt");
    config.server.key_file = dir.path().join("tls.key");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let injector = Arc::new(Injector::new(config));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server::run(listener, injector.clone(), shutdown.clone()));

    // The name the API server uses: the Service's DNS name.
    let host = "flyte-auth-injector.flyte.svc";
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .resolve(host, addr)
        .build()
        .unwrap();
    let url = format!("https://{host}:{}/mutate", addr.port());
    let body = review("from-init-certs", true);
    // The first tries may come before `run` has read the files.
    let deadline = Instant::now() + Duration::from_secs(10);
    let response = loop {
        match client.post(&url).body(body.clone()).send().await {
            Ok(response) => break response,
            Err(e) => assert!(Instant::now() < deadline, "not served: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(response.status(), 200);
    let answer = parse(&response.bytes().await.unwrap());
    assert_eq!(answer["response"]["uid"], "from-init-certs");
    assert_eq!(answer["response"]["allowed"], true);
    let patch = base64::engine::general_purpose::STANDARD
        .decode(answer["response"]["patch"].as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    assert!(!patch.0.is_empty());

    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_rotated_certificate_reaches_new_connections_while_old_ones_keep_working() {
    let ca = Ca::new();
    let first = ca.leaf(2030);
    let mut secret = SecretDir::new(&first.cert_pem, &first.key_pem);
    let server = start(test_config(&secret), &ca.pem()).await;
    let client = client(&ca.pem(), server.addr, true);

    let before = tls_connect(&ca.pem(), server.addr).await.unwrap();
    assert_eq!(peer_leaf(&before), first.der);
    let mut old = Conn::open(before).await;
    assert_eq!(
        metric(
            &metrics(&client, &server).await,
            "flyte_auth_injector_certificate_expiry_timestamp_seconds"
        ),
        Some(new_year(2030) as f64)
    );

    let second = ca.leaf(2031);
    secret.update(&second.cert_pem, &second.key_pem);
    eventually("new connections to see the new certificate", || async {
        peer_leaf(&tls_connect(&ca.pem(), server.addr).await.unwrap()) == second.der
    })
    .await;
    let text = metrics(&client, &server).await;
    assert_eq!(
        metric(
            &text,
            "flyte_auth_injector_certificate_reloads_total{result=\"ok\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "flyte_auth_injector_certificate_expiry_timestamp_seconds"
        ),
        Some(new_year(2031) as f64)
    );
    // The connection made before the rotation is still served.
    let (status, _, _) = old.request("GET", "/healthz", Vec::new()).await;
    assert_eq!(status, 200);

    // A new CA too (a re-run `init-certs`): served once the files change.
    let ca2 = Ca::new();
    let third = ca2.leaf(2032);
    secret.update(&third.cert_pem, &third.key_pem);
    eventually("the certificate of the new CA", || async {
        matches!(tls_connect(&ca2.pem(), server.addr).await, Ok(s) if peer_leaf(&s) == third.der)
    })
    .await;

    server.shutdown.cancel();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_bad_replacement_keeps_the_old_certificate_and_is_counted() {
    let ca = Ca::new();
    let good = ca.leaf(2030);
    let mut secret = SecretDir::new(&good.cert_pem, &good.key_pem);
    let server = start(test_config(&secret), &ca.pem()).await;
    let client = client(&ca.pem(), server.addr, true);

    // A new certificate with a garbage key, then one with another certificate's key.
    let next = ca.leaf(2031);
    secret.update(
        &next.cert_pem,
        "-----BEGIN PRIVATE KEY-----\nZ2FyYmFnZQ==\n-----END PRIVATE KEY-----\n",
    );
    let errors = |want: f64| {
        let client = client.clone();
        let server = &server;
        async move {
            metric(
                &metrics(&client, server).await,
                "flyte_auth_injector_certificate_reloads_total{result=\"error\"}",
            ) == Some(want)
        }
    };
    eventually("the garbage key to be counted", || errors(1.0)).await;
    let other = ca.leaf(2032);
    secret.update(&next.cert_pem, &other.key_pem);
    eventually("the mismatched key to be counted", || errors(2.0)).await;

    let stream = tls_connect(&ca.pem(), server.addr).await.unwrap();
    assert_eq!(
        peer_leaf(&stream),
        good.der,
        "the old certificate is still served"
    );
    let text = metrics(&client, &server).await;
    assert_eq!(
        metric(
            &text,
            "flyte_auth_injector_certificate_reloads_total{result=\"ok\"}"
        ),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "flyte_auth_injector_certificate_expiry_timestamp_seconds"
        ),
        Some(new_year(2030) as f64)
    );
    // Still polled, so a good pair afterwards is taken.
    secret.update(&next.cert_pem, &next.key_pem);
    eventually("the repaired pair to be served", || async {
        peer_leaf(&tls_connect(&ca.pem(), server.addr).await.unwrap()) == next.der
    })
    .await;

    server.shutdown.cancel();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_oversized_body_is_refused_with_a_review_naming_the_limit() {
    let ca = Ca::new();
    let leaf = ca.leaf(2030);
    let secret = SecretDir::new(&leaf.cert_pem, &leaf.key_pem);
    let mut config = test_config(&secret);
    config.server.max_body = 4096;
    let server = start(config, &ca.pem()).await;
    let client = client(&ca.pem(), server.addr, true);

    let mut body = review("big", true);
    assert!(body.len() < 4096);
    let response = client
        .post(server.url("/mutate"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    body.resize(5000, b' ');
    let response = client
        .post(server.url("/mutate"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let answer = parse(&response.bytes().await.unwrap());
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["response"]["allowed"], false, "{answer}");
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("AdmissionReview body is over 4096 bytes"),
        "{message}"
    );
    let text = metrics(&client, &server).await;
    assert_eq!(
        metric(
            &text,
            "flyte_auth_injector_reviews_total{outcome=\"invalid\"}"
        ),
        Some(1.0),
        "{text}"
    );

    server.shutdown.cancel();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn routes_health_and_metrics() {
    let ca = Ca::new();
    let leaf = ca.leaf(2030);
    let secret = SecretDir::new(&leaf.cert_pem, &leaf.key_pem);
    let server = start(test_config(&secret), &ca.pem()).await;
    let client = client(&ca.pem(), server.addr, true);

    for (method, path, status) in [
        (reqwest::Method::GET, "/mutate", 405),
        (reqwest::Method::GET, "/nope", 404),
        (reqwest::Method::POST, "/", 404),
        (reqwest::Method::GET, "/healthz", 200),
        (reqwest::Method::GET, "/readyz", 200),
        (reqwest::Method::GET, "/metrics", 200),
    ] {
        let response = client
            .request(method.clone(), server.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{method} {path}");
    }

    let mut outcomes = Vec::new();
    for (i, body) in [
        review("m1", true),
        review("m2", true),
        review("s1", false),
        b"{\"not\": \"a review\"}".to_vec(),
    ]
    .into_iter()
    .enumerate()
    {
        let want = server.injector.review(&body);
        outcomes.push(want.outcome.as_str());
        let got = client
            .post(server.url("/mutate"))
            .body(body)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(got.as_ref(), want.body.as_slice(), "review {i}");
    }
    assert_eq!(outcomes, ["mutated", "mutated", "skipped", "invalid"]);
    let text = metrics(&client, &server).await;
    for (series, value) in [
        (
            "flyte_auth_injector_reviews_total{outcome=\"mutated\"}",
            2.0,
        ),
        (
            "flyte_auth_injector_reviews_total{outcome=\"skipped\"}",
            1.0,
        ),
        (
            "flyte_auth_injector_reviews_total{outcome=\"invalid\"}",
            1.0,
        ),
        ("flyte_auth_injector_reviews_total{outcome=\"denied\"}", 0.0),
        ("flyte_auth_injector_review_duration_seconds_count", 4.0),
        (
            "flyte_auth_injector_certificate_reloads_total{result=\"ok\"}",
            0.0,
        ),
        (
            "flyte_auth_injector_certificate_reloads_total{result=\"error\"}",
            0.0,
        ),
    ] {
        assert_eq!(metric(&text, series), Some(value), "{series} in\n{text}");
    }

    server.shutdown.cancel();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn scopes_are_counted_by_where_they_came_from() {
    let ca = Ca::new();
    let leaf = ca.leaf(2030);
    let secret = SecretDir::new(&leaf.cert_pem, &leaf.key_pem);
    let mut config = test_config(&secret);
    let admin = Config::parse(
        "admin: {endpoint: 'dns:///flyteadmin:81', insecure: true, mode: client-secret, client_id: p, client_secret: {group: s, key: k}}",
        "test",
    )
    .unwrap();
    config.admin = admin.admin;
    let server = start(config, &ca.pem()).await;
    let client = client(&ca.pem(), server.addr, true);
    let in_namespace = |uid: &str, ns: &str| {
        let mut review: serde_json::Value = serde_json::from_slice(&review(uid, true)).unwrap();
        review["request"]["namespace"] = serde_json::json!(ns);
        serde_json::to_vec(&review).unwrap()
    };
    // The harness pod says it is flytesnacks/development: in ml-production it is denied.
    for body in [
        in_namespace("a", "flytesnacks-development"),
        in_namespace("b", "ml-production"),
        in_namespace("c", "batch-jobs"),
    ] {
        let status = client
            .post(server.url("/mutate"))
            .body(body)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
    }
    let text = metrics(&client, &server).await;
    for (series, value) in [
        (
            "flyte_auth_injector_scopes_total{source=\"namespace\"}",
            1.0,
        ),
        (
            "flyte_auth_injector_scopes_total{source=\"unmatched\"}",
            1.0,
        ),
        ("flyte_auth_injector_scopes_total{source=\"fallback\"}", 0.0),
        (
            "flyte_auth_injector_scopes_total{source=\"disagreed\"}",
            1.0,
        ),
    ] {
        assert_eq!(metric(&text, series), Some(value), "{series} in\n{text}");
    }
    server.shutdown.cancel();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn clients_that_never_say_hello_do_not_stop_others_being_served() {
    let ca = Ca::new();
    let leaf = ca.leaf(2030);
    let secret = SecretDir::new(&leaf.cert_pem, &leaf.key_pem);
    let server = start(test_config(&secret), &ca.pem()).await;

    // Silent connections, and one that stops half-way through its hello.
    let mut silent = Vec::new();
    for _ in 0..32 {
        silent.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let mut partial = TcpStream::connect(server.addr).await.unwrap();
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();

    let client = client(&ca.pem(), server.addr, true);
    for _ in 0..3 {
        let response = tokio::time::timeout(
            Duration::from_secs(5),
            client
                .post(server.url("/mutate"))
                .body(review("u", true))
                .send(),
        )
        .await
        .expect("served while other clients stall")
        .unwrap();
        assert_eq!(response.status(), 200);
    }
    drop(silent);
    server.shutdown.cancel();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_finishes_the_request_in_flight_and_returns_within_the_grace() {
    let ca = Ca::new();
    let leaf = ca.leaf(2030);
    let secret = SecretDir::new(&leaf.cert_pem, &leaf.key_pem);
    let server = start(test_config(&secret), &ca.pem()).await;

    // Headers with `Expect: 100-continue`: the server's "100 Continue" proves the handler is
    // reading the body, i.e. the request is in flight, before shutdown begins.
    let body = review("in-flight", true);
    let mut stream = tls_connect(&ca.pem(), server.addr).await.unwrap();
    let head = format!(
        "POST /mutate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\nexpect: 100-continue\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    while !seen.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        stream.read_exact(&mut byte).await.unwrap();
        seen.push(byte[0]);
    }
    assert!(
        seen.starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&seen)
    );

    server.shutdown.cancel();
    stream.write_all(&body).await.unwrap();
    let mut answer = Vec::new();
    // The server closes after answering; an unclean TLS close still leaves the bytes read.
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (_, json) = answer.split_once("\r\n\r\n").unwrap();
    assert_eq!(
        json.as_bytes(),
        server.injector.review(&body).body.as_slice()
    );

    tokio::time::timeout(Duration::from_secs(5), server.task)
        .await
        .expect("run returns within the grace period")
        .unwrap()
        .unwrap();
    assert!(
        TcpStream::connect(server.addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn start_up_without_a_certificate_or_key_names_the_file() {
    let ca = Ca::new();
    let leaf = ca.leaf(2030);
    let secret = SecretDir::new(&leaf.cert_pem, &leaf.key_pem);
    let missing = secret.dir.path().join("missing.pem");
    for (cert, key, want) in [
        (
            missing.clone(),
            secret.key(),
            "cannot read certificate file",
        ),
        (
            secret.cert(),
            missing.clone(),
            "cannot read private key file",
        ),
        (secret.key(), secret.key(), "certificate file"),
    ] {
        let mut config = test_config(&secret);
        config.server.cert_file = cert.clone();
        config.server.key_file = key.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let err = server::run(
            listener,
            Arc::new(Injector::new(config)),
            CancellationToken::new(),
        )
        .await
        .unwrap_err()
        .to_string();
        let named = if want.contains("private key") {
            &key
        } else {
            &cert
        };
        assert!(err.starts_with(want), "{err}");
        assert!(err.contains(&named.display().to_string()), "{err}");
    }
}

// ---- the binary ---------------------------------------------------------------------------

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_flyte-auth-injector")
}

#[tokio::test]
async fn the_binary_serves_and_exits_cleanly_on_sigterm() {
    let ca = Ca::new();
    let leaf = ca.leaf(2030);
    let secret = SecretDir::new(&leaf.cert_pem, &leaf.key_pem);
    let config = write_config(secret.dir.path(), &secret.cert(), &secret.key());
    let (mut child, addr) = spawn_serve(binary(), &config);
    let client = client(&ca.pem(), addr, true);
    let response = client
        .get(format!("https://localhost:{}/readyz", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running 10 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
}

#[test]
fn the_binary_names_a_missing_certificate_file() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("tls.crt");
    let config = write_config(dir.path(), &cert, &dir.path().join("tls.key"));
    let output = Command::new(binary())
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot read certificate file {}", cert.display())),
        "{stderr}"
    );
}

// ---- limits, against the binary ----------------------------------------------------------

/// The binary serving with extra `server` keys; killed when dropped.
struct Served {
    child: std::process::Child,
    addr: SocketAddr,
    ca_pem: String,
    _secret: SecretDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve_binary(server_keys: &str) -> Served {
    let ca = Ca::new();
    let leaf = ca.leaf(2030);
    let secret = SecretDir::new(&leaf.cert_pem, &leaf.key_pem);
    let config = write_config_with(
        secret.dir.path(),
        &secret.cert(),
        &secret.key(),
        server_keys,
    );
    let (child, addr) = spawn_serve(binary(), &config);
    Served {
        child,
        addr,
        ca_pem: ca.pem(),
        _secret: secret,
    }
}

impl Served {
    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    /// POSTs `body` to /mutate and returns the AdmissionReview answered.
    async fn review(&self, body: Vec<u8>) -> Value {
        let response = client(&self.ca_pem, self.addr, true)
            .post(self.url("/mutate"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        parse(&response.bytes().await.unwrap())
    }
}

fn refusal(answer: &Value) -> &str {
    assert_eq!(answer["response"]["allowed"], false, "{answer}");
    answer["response"]["status"]["message"].as_str().unwrap()
}

/// A request head for `POST /mutate` declaring `length` body bytes.
fn post_head(length: usize, expect_continue: bool) -> String {
    format!(
        "POST /mutate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n{}\r\n",
        if expect_continue { "expect: 100-continue\r\n" } else { "" }
    )
}

/// Reads one response head (up to the blank line), within 10 s.
async fn read_head(stream: &mut TlsStream) -> String {
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !seen.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8];
            stream.read_exact(&mut byte).await.unwrap();
            seen.push(byte[0]);
        }
    })
    .await
    .expect("a response head within 10 s");
    String::from_utf8(seen).unwrap()
}

/// Reads one whole response with a `content-length` body, within 10 s: its head and the
/// AdmissionReview it carries.
async fn read_review(stream: &mut TlsStream) -> (String, Value) {
    let head = read_head(stream).await;
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no content-length in {head}"))
        .parse()
        .unwrap();
    let mut body = vec![0u8; length];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut body))
        .await
        .expect("a response body within 10 s")
        .unwrap();
    (head, parse(&body))
}

#[tokio::test]
async fn the_binary_denies_21000_token_requests_naming_the_cap() {
    // max_body raised, so the review (3.2 MB, as in issue 11) reaches the cap on requests.
    let served = serve_binary("  max_body: 4194304\n");
    let body = review_with_requests("many", 21_000, true);
    assert!(
        body.len() > 2_097_152 && body.len() < 4_194_304,
        "{}",
        body.len()
    );
    let answer = served.review(body.clone()).await;
    assert_eq!(answer["response"]["uid"], "many");
    let message = refusal(&answer);
    assert!(
        message.contains("the pod has 21000 token requests")
            && message
                .contains("at most 32 are allowed (limits.token_requests in the injector config)"),
        "{message}"
    );
    // The task pod everyone else sends is still served.
    let answer = served.review(review("normal", true)).await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");

    // With the default max_body (2 MiB) the same body is refused from its content-length alone,
    // before it is sent: the client that waits for "100 Continue" gets the refusal instead.
    let served = serve_binary("");
    let mut stream = tls_connect(&served.ca_pem, served.addr).await.unwrap();
    stream
        .write_all(post_head(body.len(), true).as_bytes())
        .await
        .unwrap();
    let (head, answer) = read_review(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let message = refusal(&answer);
    assert!(
        message.contains("AdmissionReview body is over 2097152 bytes (server.max_body)"),
        "{message}"
    );
}

#[tokio::test]
async fn a_stalled_body_is_refused_and_its_connection_closed_after_body_timeout() {
    let served = serve_binary("  body_timeout: 300ms\n");
    let body = review("stalled", true);
    let mut stream = tls_connect(&served.ca_pem, served.addr).await.unwrap();
    // The whole length declared, half of it sent, then nothing.
    stream
        .write_all(post_head(body.len(), false).as_bytes())
        .await
        .unwrap();
    stream.write_all(&body[..body.len() / 2]).await.unwrap();
    stream.flush().await.unwrap();
    let (head, answer) = read_review(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let message = refusal(&answer);
    assert!(
        message.contains("the request body did not arrive within 300ms (server.body_timeout)"),
        "{message}"
    );
    // The rest of that body can never be told from a next request: the connection is closed.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the connection is still open 10 s later");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));

    let answer = served.review(review("after", true)).await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    let text = client(&served.ca_pem, served.addr, true)
        .get(served.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric(
            &text,
            "flyte_auth_injector_refused_reviews_total{reason=\"body_timeout\"}"
        ),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test]
async fn with_one_review_slot_a_second_review_waits_then_is_refused_naming_the_limit() {
    let served = serve_binary(
        "  max_concurrent_reviews: 1\n  review_queue_timeout: 300ms\n  body_timeout: 30s\n",
    );
    // The first review takes the slot: the server's "100 Continue" means its body is being read.
    let first = review("first", true);
    let mut holder = tls_connect(&served.ca_pem, served.addr).await.unwrap();
    holder
        .write_all(post_head(first.len(), true).as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut holder).await;
    assert!(head.starts_with("HTTP/1.1 100"), "{head}");

    let answer = served.review(review("second", true)).await;
    let message = refusal(&answer);
    assert!(
        message.contains("the webhook is busy: this review needs 1 of the 1 review slots (server.max_concurrent_reviews;")
            && message.contains("they stayed taken for 300ms (server.review_queue_timeout)"),
        "{message}"
    );

    // The holder's review is then decided as usual, and the slot is free again.
    holder.write_all(&first).await.unwrap();
    let (head, answer) = read_review(&mut holder).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(answer["response"]["uid"], "first");
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    let answer = served.review(review("third", true)).await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
}

/// Starts a review declaring `body`'s length and waits for the server's "100 Continue": from
/// then on it holds its review slots, until `body` is sent.
async fn hold_slots(served: &Served, body: &[u8]) -> TlsStream {
    let mut stream = tls_connect(&served.ca_pem, served.addr).await.unwrap();
    stream
        .write_all(post_head(body.len(), true).as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 100"), "{head}");
    stream
}

#[tokio::test]
async fn a_review_as_large_as_max_body_runs_alone_while_small_ones_share_the_slots() {
    let served = serve_binary(
        "  max_body: 65536\n  max_concurrent_reviews: 2\n  review_queue_timeout: 300ms\n  body_timeout: 30s\n",
    );
    // A small review holds one of the two slots; another small one still gets the other.
    let small = review("small", true);
    assert!(small.len() <= 65536 / 2);
    let mut holder = hold_slots(&served, &small).await;
    let answer = served.review(review("beside", true)).await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    holder.write_all(&small).await.unwrap();
    let (_, answer) = read_review(&mut holder).await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");

    // A review over half of max_body (JSON allows the trailing spaces) takes both slots.
    let mut large = review("large", true);
    large.resize(40_000, b' ');
    let mut holder = hold_slots(&served, &large).await;
    let message = refusal(&served.review(review("behind", true)).await).to_string();
    assert!(
        message.contains(
            "this review needs 1 of the 2 review slots (server.max_concurrent_reviews; one per 32768 bytes of body)"
        ),
        "{message}"
    );
    holder.write_all(&large).await.unwrap();
    let (_, answer) = read_review(&mut holder).await;
    assert_eq!(answer["response"]["uid"], "large");
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
}

#[tokio::test]
async fn connections_beyond_server_max_connections_are_closed_until_one_ends() {
    let ca = Ca::new();
    let leaf = ca.leaf(2030);
    let secret = SecretDir::new(&leaf.cert_pem, &leaf.key_pem);
    let mut config = test_config(&secret);
    config.server.max_connections = 2;
    let server = start(config, &ca.pem()).await;
    // Two kept-alive connections that have each been served hold both places.
    let mut held = Vec::new();
    for _ in 0..2 {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut conn = loop {
            // The readiness probe's connection may still hold a place for a moment.
            match tls_connect(&ca.pem(), server.addr).await {
                Ok(stream) => break Conn::open(stream).await,
                Err(e) => assert!(Instant::now() < deadline, "no place: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(conn.request("GET", "/healthz", Vec::new()).await.0, 200);
        held.push(conn);
    }
    eventually("a third connection to be closed at once", || async {
        tls_connect(&ca.pem(), server.addr).await.is_err()
    })
    .await;
    held.pop();
    eventually("a place to be free again", || async {
        match tls_connect(&ca.pem(), server.addr).await {
            Ok(stream) => {
                Conn::open(stream)
                    .await
                    .request("GET", "/healthz", Vec::new())
                    .await
                    .0
                    == 200
            }
            Err(_) => false,
        }
    })
    .await;
    server.shutdown.cancel();
}
