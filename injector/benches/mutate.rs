//! Benchmark: the webhook's review of a typical task pod (propeller-like, opted in, three token
//! requests in the JSON annotation), in-process and over HTTPS, each against a floor measured in
//! the same run:
//! - in-process: `Injector::review` against parsing the same body into a `serde_json::Value`
//!   and writing it back (the least any webhook does with a review);
//! - HTTPS: `POST /mutate` against `GET /healthz` on the same kept-alive TLS connection (the
//!   least a request over that connection costs);
//! - memory: the real binary (`flyte-auth-injector serve`, built by cargo for this bench with the
//!   bench profile) idle after start, and after a load of reviews, from /proc/<pid>/status.
//!
//! Run: `cargo bench -p flyte-auth-injector --bench mutate`. Every loop is bounded by a count.

#[allow(dead_code)]
#[path = "../../agent/benches/common/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "../tests/harness/mod.rs"]
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
