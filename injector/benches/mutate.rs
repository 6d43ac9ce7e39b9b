//! Benchmark: the webhook's review of a typical task pod (propeller-like, opted in, three token
//! requests in the JSON annotation), in-process and over HTTPS, each against a floor measured in
//! the same run:
//! - in-process: `Injector::review` against parsing the same body into a `serde_json::Value`
//!   and writing it back (the least any webhook does with a review);
//! - HTTPS: `POST /mutate` against `GET /healthz` on the same kept-alive TLS connection (the
//!   least a request over that connection costs);
//! - memory: the real binary (`flyte-auth-injector serve`, built by cargo for this bench with the
//!   bench profile) idle after start, and after a load of reviews, from /proc/<pid>/status;
//! - load: 1,000 reviews on 50 connections at once against a fresh binary: errors, p50/p99 and
//!   its peak RSS (VmHWM);
//! - attacks (issue 11): a fresh binary each, its VmHWM after the attack and whether it still
//!   answers a normal review: a review with 21,000 token requests (3.2 MB), three of them at
//!   once, 60 TLS connections that stall one byte short of the declared body, and four at once
//!   of the reviews whose typed parse costs most per byte (tiny objects: as many as
//!   `limits.review_array_items` allows, and 2 MB of them); and 60 HTTP/2 connections whose
//!   streams stall, whose unread bytes the connections hold up to their flow-control windows
//!   (the webhook's are 64 KiB). The first three also against `max_body: 4194304`, so the
//!   other limits are measured without the body limit doing the work.
//!
//! Run: `cargo bench -p flyte-auth-injector --bench mutate`. Every loop is bounded by a count
//! and every wait by a timeout. `-- burst 300 1000` runs only the load, with that many reviews
//! each (issue 16: a map task's N pods admitted at once).

#[allow(dead_code)]
#[path = "../../agent/benches/common/mod.rs"]
mod common;
#[path = "../tests/harness/mod.rs"]
#[allow(dead_code)] // The harness also serves the HTTPS tests.
mod harness;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{rss_kib, runtime, us};
use flyte_auth_injector::config::Config;
use flyte_auth_injector::review::Injector;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const IN_PROCESS: usize = 20_000;
const OVER_HTTPS: usize = 3_000;
const LOAD: usize = 5_000;

/// Per-call timings of `n` runs of `f` (after `n / 10` warm-up runs): sorted, plus the total.
fn time(n: usize, mut f: impl FnMut()) -> (Vec<Duration>, Duration) {
    for _ in 0..n / 10 {
        f();
    }
    let mut samples = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        f();
        samples.push(t.elapsed());
    }
    let total = start.elapsed();
    samples.sort();
    (samples, total)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// A CA and a serving certificate for `localhost` written to `dir`; returns the CA's PEM.
fn write_certs(dir: &Path) -> String {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    std::fs::write(dir.join("tls.crt"), leaf.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
    ca.pem()
}

/// One kept-alive HTTP/1.1 connection over TLS, trusting only `ca_pem`.
async fn connect(
    ca_pem: &str,
    addr: SocketAddr,
) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let config = harness::client_config(ca_pem);
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn call(
    send: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    body: &Bytes,
) -> usize {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(body.clone()))
        .unwrap();
    // The previous response being read is not enough: the dispatcher takes a moment to be free.
    send.ready().await.unwrap();
    let response = send.send_request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .len()
}

/// p50 and p99 of `n` calls on `send` after `n / 10` warm-up calls.
async fn time_calls(
    send: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    n: usize,
    method: &str,
    path: &str,
    body: &Bytes,
) -> (Duration, Duration) {
    for _ in 0..n / 10 {
        call(send, method, path, body).await;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        call(send, method, path, body).await;
        samples.push(t.elapsed());
    }
    samples.sort();
    (pct(&samples, 0.5), pct(&samples, 0.99))
}

fn main() {
    let rt = runtime();
    let body = harness::review("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", true);
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "burst") {
        let dir = tempfile::tempdir().unwrap();
        let ca_pem = write_certs(dir.path());
        // Also with start pacing on (issue 16): one lock and a few additions per review.
        let paced = "agent:\n  start_pacing: {rate: 47.5, burst: 25}\n";
        for n in args.iter().filter_map(|a| a.parse().ok()) {
            load(dir.path(), &ca_pem, &body, &rt, n, "");
            load(dir.path(), &ca_pem, &body, &rt, n, paced);
        }
        return;
    }
    let injector = Arc::new(Injector::new(Config::default()));
    let answer = injector.review(&body);
    println!(
        "review of a task pod with 3 token requests: {} bytes in, {} bytes out, outcome {}",
        body.len(),
        answer.body.len(),
        answer.outcome.as_str()
    );

    // In-process.
    let (floor, floor_total) = time(IN_PROCESS, || {
        let v: Value = serde_json::from_slice(std::hint::black_box(&body)).unwrap();
        std::hint::black_box(serde_json::to_vec(&v).unwrap());
    });
    let (reviews, reviews_total) = time(IN_PROCESS, || {
        std::hint::black_box(injector.review(std::hint::black_box(&body)));
    });
    let rate = |total: Duration| IN_PROCESS as f64 / total.as_secs_f64();

    // HTTPS, one kept-alive connection.
    let dir = tempfile::tempdir().unwrap();
    let ca_pem = write_certs(dir.path());
    let mut config = Config::default();
    config.server.cert_file = dir.path().join("tls.crt");
    config.server.key_file = dir.path().join("tls.key");
    let shutdown = CancellationToken::new();
    let (https_mutate, https_healthz) = rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(flyte_auth_injector::server::run(
            listener,
            Arc::new(Injector::new(config)),
            shutdown.clone(),
        ));
        let mut send = connect(&ca_pem, addr).await;
        let body = Bytes::from(body.clone());
        let empty = Bytes::new();
        let healthz = time_calls(&mut send, OVER_HTTPS, "GET", "/healthz", &empty).await;
        let mutate = time_calls(&mut send, OVER_HTTPS, "POST", "/mutate", &body).await;
        (mutate, healthz)
    });
    shutdown.cancel();

    // The binary's memory.
    let rss = binary_rss(dir.path(), &ca_pem, &body, &rt);

    println!();
    println!(
        "{:<44} {:>10} {:>10} {:>12}",
        "", "p50 µs", "p99 µs", "per second"
    );
    let row = |name: &str, p50: Duration, p99: Duration, per_s: Option<f64>| {
        println!(
            "{:<44} {:>10.1} {:>10.1} {:>12}",
            name,
            us(p50),
            us(p99),
            per_s.map(|r| format!("{r:.0}")).unwrap_or_default()
        )
    };
    row(
        "floor: serde_json Value parse + write",
        pct(&floor, 0.5),
        pct(&floor, 0.99),
        Some(rate(floor_total)),
    );
    row(
        "Injector::review (in-process, 1 thread)",
        pct(&reviews, 0.5),
        pct(&reviews, 0.99),
        Some(rate(reviews_total)),
    );
    row(
        "floor: GET /healthz, kept-alive TLS",
        https_healthz.0,
        https_healthz.1,
        None,
    );
    row(
        "POST /mutate, kept-alive TLS",
        https_mutate.0,
        https_mutate.1,
        None,
    );
    println!();
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!(
        "review / floor: p50 {:.2}x, p99 {:.2}x, throughput {:.2}x   (target: review p99 <= 2000 µs: {})",
        ratio(pct(&reviews, 0.5), pct(&floor, 0.5)),
        ratio(pct(&reviews, 0.99), pct(&floor, 0.99)),
        rate(reviews_total) / rate(floor_total),
        if pct(&reviews, 0.99) <= Duration::from_millis(2) { "met" } else { "MISSED" },
    );
    println!(
        "HTTPS /mutate / /healthz p50: {:.2}x ({:.1} µs more per review)",
        ratio(https_mutate.0, https_healthz.0),
        us(https_mutate.0) - us(https_healthz.0),
    );
    println!(
        "binary RSS (flyte-auth-injector serve, /proc/<pid>/status): idle {:.1} MiB (target <= 15: {}), after {LOAD} reviews on 4 connections {:.1} MiB, peak {:.1} MiB",
        rss.0 as f64 / 1024.0,
        if rss.0 <= 15 * 1024 { "met" } else { "MISSED" },
        rss.1 as f64 / 1024.0,
        rss.2 as f64 / 1024.0,
    );

    println!();
    load(dir.path(), &ca_pem, &body, &rt, 1000, "");
    println!();
    attacks(dir.path(), &ca_pem, &rt);
}

/// The binary's RSS idle after start, after `LOAD` reviews over 4 connections, and its peak, KiB.
fn binary_rss(
    dir: &Path,
    ca_pem: &str,
    body: &[u8],
    rt: &tokio::runtime::Runtime,
) -> (u64, u64, u64) {
    let config = harness::write_config(dir, &dir.join("tls.crt"), &dir.join("tls.key"));
    let (mut child, addr) =
        harness::spawn_serve(env!("CARGO_BIN_EXE_flyte-auth-injector"), &config);
    let pid = child.id();
    let body = Bytes::copy_from_slice(body);
    let idle = rt.block_on(async {
        // Ready: one request answered, then left alone briefly so start-up allocations settle.
        let mut send = connect(ca_pem, addr).await;
        call(&mut send, "GET", "/readyz", &Bytes::new()).await;
        drop(send);
        tokio::time::sleep(Duration::from_millis(500)).await;
        rss_kib(pid).0
    });
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let ca_pem = ca_pem.to_string();
            let body = body.clone();
            tasks.push(tokio::spawn(async move {
                let mut send = connect(&ca_pem, addr).await;
                for _ in 0..LOAD / 4 {
                    call(&mut send, "POST", "/mutate", &body).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let (after, peak) = rss_kib(pid);
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    (idle, after, peak)
}

/// The bench binary serving with extra `server` keys; killed when dropped.
struct Binary {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Binary {
    fn start(dir: &Path, server_keys: &str) -> Self {
        Self::start_with(dir, server_keys, "")
    }

    /// [`Binary::start`] with more top-level config `sections` (YAML at column 0).
    fn start_with(dir: &Path, server_keys: &str, sections: &str) -> Self {
        let config = harness::write_config_sections(
            dir,
            &dir.join("tls.crt"),
            &dir.join("tls.key"),
            server_keys,
            sections,
        );
        let (child, addr) =
            harness::spawn_serve(env!("CARGO_BIN_EXE_flyte-auth-injector"), &config);
        Self { child, addr }
    }

    /// VmHWM, MiB.
    fn peak_mib(&self) -> f64 {
        rss_kib(self.child.id()).1 as f64 / 1024.0
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// POSTs `body` to /mutate on a new connection: whether the review was allowed, or `None` when
/// there was no AdmissionReview answer within 20 s.
async fn review_allowed(ca_pem: &str, addr: SocketAddr, body: Bytes) -> Option<bool> {
    let attempt = async {
        let mut send = connect(ca_pem, addr).await;
        let req = http::Request::builder()
            .method("POST")
            .uri("/mutate")
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(body))
            .ok()?;
        send.ready().await.ok()?;
        let response = send.send_request(req).await.ok()?;
        let bytes = response.into_body().collect().await.ok()?.to_bytes();
        let answer: Value = serde_json::from_slice(&bytes).ok()?;
        answer["response"]["allowed"].as_bool()
    };
    tokio::time::timeout(Duration::from_secs(20), attempt)
        .await
        .ok()
        .flatten()
}

/// `reviews` reviews of `body` on 50 kept-alive connections at once, against a fresh binary
/// with the config `sections` added.
fn load(
    dir: &Path,
    ca_pem: &str,
    body: &[u8],
    rt: &tokio::runtime::Runtime,
    reviews: usize,
    sections: &str,
) {
    const CONNECTIONS: usize = 50;
    let binary = Binary::start_with(dir, "", sections);
    let addr = binary.addr;
    let body = Bytes::copy_from_slice(body);
    let started = Instant::now();
    let (mut samples, errors) = rt.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..CONNECTIONS {
            let ca_pem = ca_pem.to_string();
            let body = body.clone();
            // The reviews shared out as evenly as they go.
            let share = reviews / CONNECTIONS + usize::from(c < reviews % CONNECTIONS);
            tasks.push(tokio::spawn(async move {
                let mut send = connect(&ca_pem, addr).await;
                let mut samples = Vec::new();
                let mut errors = 0usize;
                for _ in 0..share {
                    let req = http::Request::builder()
                        .method("POST")
                        .uri("/mutate")
                        .header("host", "localhost")
                        .header("content-type", "application/json")
                        .body(Full::new(body.clone()))
                        .unwrap();
                    let t = Instant::now();
                    let answer = async {
                        send.ready().await.ok()?;
                        let response = send.send_request(req).await.ok()?;
                        let bytes = response.into_body().collect().await.ok()?.to_bytes();
                        let answer: Value = serde_json::from_slice(&bytes).ok()?;
                        answer["response"]["allowed"].as_bool()
                    };
                    match tokio::time::timeout(Duration::from_secs(20), answer).await {
                        Ok(Some(true)) => samples.push(t.elapsed()),
                        _ => errors += 1,
                    }
                }
                (samples, errors)
            }));
        }
        let mut all = Vec::new();
        let mut errors = 0;
        for t in tasks {
            let (s, e) = t.await.unwrap();
            all.extend(s);
            errors += e;
        }
        (all, errors)
    });
    let elapsed = started.elapsed();
    samples.sort();
    println!(
        "load: {reviews} reviews on {CONNECTIONS} connections at once (server.max_concurrent_reviews 4{}): {errors} errors, p50 {:.0} µs, p99 {:.0} µs, {:.0} reviews/s, peak RSS (VmHWM) {:.1} MiB",
        if sections.is_empty() { "" } else { ", start pacing on" },
        us(pct(&samples, 0.5)),
        us(pct(&samples, 0.99)),
        samples.len() as f64 / elapsed.as_secs_f64(),
        binary.peak_mib(),
    );
}

/// `connections` TLS connections, each declaring `declared` body bytes and sending `sent` of
/// them, then idle; returns how many were answered and closed by the server within 30 s, and
/// the longest time that took.
async fn stall(
    ca_pem: &str,
    addr: SocketAddr,
    connections: usize,
    declared: usize,
    sent: usize,
) -> (usize, Duration) {
    let hold = CancellationToken::new();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let config = harness::client_config(ca_pem);
        let hold = hold.clone();
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let tcp = TcpStream::connect(addr).await.ok()?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect("localhost".try_into().unwrap(), tcp)
                .await
                .ok()?;
            let (mut read, mut write) = tokio::io::split(tls);
            // The writer may block when the server does not read; it stays open (idle) until
            // the reader has seen the end.
            let writer = tokio::spawn(async move {
                let head = format!(
                    "POST /mutate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {declared}\r\n\r\n"
                );
                let chunk = vec![b' '; 64 * 1024];
                let send = async {
                    write.write_all(head.as_bytes()).await?;
                    let mut left = sent;
                    while left > 0 {
                        let n = left.min(chunk.len());
                        write.write_all(&chunk[..n]).await?;
                        left -= n;
                    }
                    write.flush().await
                };
                let _ = tokio::time::timeout(Duration::from_secs(30), send).await;
                hold.cancelled().await;
                drop(write);
            });
            let mut sink = Vec::new();
            let closed =
                tokio::time::timeout(Duration::from_secs(30), read.read_to_end(&mut sink)).await;
            let took = started.elapsed();
            drop(writer);
            closed.is_ok().then_some(took)
        }));
    }
    let mut closed = 0;
    let mut longest = Duration::ZERO;
    for t in tasks {
        if let Ok(Some(took)) = t.await {
            closed += 1;
            longest = longest.max(took);
        }
    }
    hold.cancel();
    (closed, longest)
}

/// A review with `n` of the smallest objects the typed parse builds at `field`: `env` (one-letter
/// env vars, 280 bytes each as structs) or `volumes` (3 KB each as a `Volume`), or, with `n`
/// `None`, as many env vars as `2_000_000` bytes hold. With `not_a_pod`, a field parsed after
/// them has the wrong type, so the typed parse fails once it has built them all.
fn review_of_small_objects(uid: &str, field: &str, n: Option<usize>, not_a_pod: bool) -> Vec<u8> {
    let mut review: Value = serde_json::from_slice(&harness::review(uid, true)).unwrap();
    if not_a_pod {
        review["request"]["object"]["spec"]["containers"][0]["image"] = 5.into();
    }
    let base = serde_json::to_vec(&review).unwrap().len();
    let each = br#"{"name":"a"},"#.len();
    let n = n.unwrap_or((2_000_000 - base - 64) / each);
    let items = Value::Array((0..n).map(|_| serde_json::json!({"name": "a"})).collect());
    match field {
        "volumes" => review["request"]["object"]["spec"]["volumes"] = items,
        _ => review["request"]["object"]["spec"]["containers"][0]["env"] = items,
    }
    serde_json::to_vec(&review).unwrap()
}

/// A request body that sends `n` bytes, then nothing, never ending.
struct Stalled(Option<Bytes>);

impl hyper::body::Body for Stalled {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        match self.0.take() {
            Some(data) => std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(data)))),
            None => std::task::Poll::Pending,
        }
    }
}

/// `connections` HTTP/2 connections, each with `streams` requests declaring `declared` bytes
/// and sending `sent` of them, then idle; returns how many streams were answered within 30 s.
async fn stall_h2(
    ca_pem: &str,
    addr: SocketAddr,
    connections: usize,
    streams: usize,
    declared: usize,
    sent: usize,
) -> usize {
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let mut config = harness::client_config(ca_pem);
        config.alpn_protocols = vec![b"h2".to_vec()];
        tasks.push(tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.ok()?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect("localhost".try_into().unwrap(), tcp)
                .await
                .ok()?;
            let (send, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                TokioIo::new(tls),
            )
            .await
            .ok()?;
            let driver = tokio::spawn(conn);
            let mut answered = 0usize;
            let mut calls = Vec::new();
            for _ in 0..streams {
                let mut send = send.clone();
                let req = http::Request::builder()
                    .method("POST")
                    .uri(format!("https://localhost:{}/mutate", addr.port()))
                    .header("content-type", "application/json")
                    .header("content-length", declared.to_string())
                    .body(Stalled(Some(Bytes::from(vec![b' '; sent]))))
                    .unwrap();
                calls.push(tokio::spawn(async move {
                    send.ready().await.ok()?;
                    let response = send.send_request(req).await.ok()?;
                    response.into_body().collect().await.ok().map(|_| ())
                }));
            }
            for call in calls {
                if let Ok(Ok(Some(()))) = tokio::time::timeout(Duration::from_secs(30), call).await
                {
                    answered += 1;
                }
            }
            driver.abort();
            Some(answered)
        }));
    }
    let mut answered = 0;
    for t in tasks {
        answered += t.await.ok().flatten().unwrap_or(0);
    }
    answered
}

fn attacks(dir: &Path, ca_pem: &str, rt: &tokio::runtime::Runtime) {
    let normal = Bytes::from(harness::review("normal", true));
    let many = Bytes::from(harness::review_with_requests("many", 21_000, true));
    let report = |name: &str, binary: &Binary, extra: String| {
        let after = rt.block_on(review_allowed(ca_pem, binary.addr, normal.clone()));
        let peak = binary.peak_mib();
        println!(
            "{name:<64} VmHWM {peak:>5.1} MiB (target <= 64: {}), normal review after: {}{extra}",
            if peak <= 64.0 { "met" } else { "MISSED" },
            match after {
                Some(true) => "answered",
                _ => "NOT ANSWERED",
            },
        );
    };
    // `n` copies of `body` at once against `binary`: what became of each.
    let at_once = |binary: &Binary, body: &Bytes, n: usize| -> String {
        rt.block_on(async {
            let tasks: Vec<_> = (0..n)
                .map(|_| {
                    let (ca_pem, body) = (ca_pem.to_string(), body.clone());
                    let addr = binary.addr;
                    tokio::spawn(async move { review_allowed(&ca_pem, addr, body).await })
                })
                .collect();
            let mut fates = Vec::new();
            for t in tasks {
                fates.push(fate(t.await.unwrap()));
            }
            fates.join(", ")
        })
    };
    println!(
        "attacks (a fresh binary each; the 21,000-request review is {:.1} MB):",
        many.len() as f64 / 1e6
    );
    for (label, keys) in [
        ("default config", ""),
        ("max_body 4 MiB", "  max_body: 4194304\n"),
    ] {
        let binary = Binary::start(dir, keys);
        let fates = at_once(&binary, &many, 1);
        report(
            &format!("{label}: one review with 21,000 token requests"),
            &binary,
            format!(", it: {fates}"),
        );

        let binary = Binary::start(dir, keys);
        let fates = at_once(&binary, &many, 3);
        report(
            &format!("{label}: three of them at once"),
            &binary,
            format!(", they: {fates}"),
        );

        let binary = Binary::start(dir, keys);
        let (closed, longest) = rt.block_on(stall(ca_pem, binary.addr, 60, 3_000_001, 3_000_000));
        report(
            &format!("{label}: 60 connections stalled at 3,000,000/3,000,001"),
            &binary,
            format!(
                ", closed by the server: {closed}/60, the last after {:.1} s",
                longest.as_secs_f64()
            ),
        );
    }
    // Under the default max_body: the most a stalled body can make the server buffer.
    let binary = Binary::start(dir, "");
    let (closed, longest) = rt.block_on(stall(ca_pem, binary.addr, 60, 2_000_001, 2_000_000));
    report(
        "default config: 60 connections stalled at 2,000,000/2,000,001",
        &binary,
        format!(
            ", closed by the server: {closed}/60, the last after {:.1} s",
            longest.as_secs_f64()
        ),
    );
    // HTTP/2 (which the webhook also speaks): stream bytes the handler has not read yet are
    // held by the connection, up to its flow-control window, whatever the review slots say.
    let binary = Binary::start(dir, "");
    let answered = rt.block_on(stall_h2(ca_pem, binary.addr, 60, 4, 2_000_001, 1_000_000));
    report(
        "default config: 60 HTTP/2 connections x 4 streams stalled at 1 MB/2 MB",
        &binary,
        format!(", streams answered: {answered}/240"),
    );
    // The parse's worst cases: the most tiny objects a review may hold (limits.review_array_items
    // is 10,000; the rest of the review has a few dozen), and 2 MB of them (over that limit).
    for (what, field, n, not_a_pod) in [
        ("9,950 empty volumes", "volumes", Some(9_950), false),
        (
            "9,950 empty volumes, not a Pod",
            "volumes",
            Some(9_950),
            true,
        ),
        ("9,950 one-letter env vars", "env", Some(9_950), false),
        ("2 MB of one-letter env vars", "env", None, false),
    ] {
        let binary = Binary::start(dir, "");
        let big = Bytes::from(review_of_small_objects("big", field, n, not_a_pod));
        let fates = at_once(&binary, &big, 4);
        report(
            &format!(
                "default config: 4 reviews of {what} ({:.2} MB) at once",
                big.len() as f64 / 1e6
            ),
            &binary,
            format!(", they: {fates}"),
        );
    }
}

/// What became of a review, for printing.
fn fate(answer: Option<bool>) -> &'static str {
    match answer {
        Some(true) => "allowed",
        Some(false) => "refused",
        None => "cut off (closed before the whole body was sent)",
    }
}
