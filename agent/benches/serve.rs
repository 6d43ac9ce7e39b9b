//! Benchmark: the agent serving a cached token over its unix socket, against a floor measured in
//! the same run (a minimal hyper HTTP/1.1 server on a unix socket returning a fixed 40-byte
//! body), plus the agent binary's RSS after 10k requests with 10 token requests configured, its
//! time from start to ready against one IdP round trip, and the binary's size.
//!
//! Then the health port under attack (it is reachable from other pods): 150 connections each
//! sending 400 KB of a request head that never ends, and 8,000 connections opened (1,000 at a
//! time, each with 16 KB of an unfinished head) and closed; the agent binary's peak RSS (VmHWM)
//! after each, and whether `/healthz` still answers.
//!
//! Run: `cargo bench -p flyte-auth-agent --bench serve` (everything), or with `-- health` for the
//! attacks alone. Every loop is bounded by a count, every socket operation by a timeout.

mod common;

use common::{dir_with_secret, rss_kib, runtime, spawn_issuer, us};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use flyte_auth_agent::config::{Config, Env};
use flyte_auth_agent::{Agent, BoundSocket};

const WARMUP: usize = 2_000;
const LATENCY_REQUESTS: usize = 20_000;
const THROUGHPUT_CONNECTIONS: usize = 8;
const THROUGHPUT_REQUESTS: usize = 200_000;
const RSS_REQUESTS: usize = 10_000;
const RSS_TOKENS: usize = 10;

/// The floor: the least an HTTP/1.1 server on a unix socket can do per request.
async fn floor_server(listener: UnixListener) {
    static BODY: &[u8; 40] = b"0123456789012345678901234567890123456789";
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|_req| async {
                Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(BODY))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(socket: &Path) -> Sender {
    let stream = UnixStream::connect(socket).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn one(sender: &mut Sender, path: &str) -> usize {
    sender.ready().await.unwrap();
    let req = Request::get(path)
        .header("host", "agent")
        .header("accept", "text/plain")
        .body(Empty::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    resp.into_body().collect().await.unwrap().to_bytes().len()
}

struct Figures {
    p50: Duration,
    p99: Duration,
    rps: f64,
    body: usize,
}

/// Sequential keep-alive latency, then throughput over several connections.
fn measure(socket: &Path, path: &str) -> Figures {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut lat, body) = rt.block_on(async {
        let mut s = connect(socket).await;
        let mut body = 0;
        for _ in 0..WARMUP {
            body = one(&mut s, path).await;
        }
        let mut lat = Vec::with_capacity(LATENCY_REQUESTS);
        for _ in 0..LATENCY_REQUESTS {
            let t = Instant::now();
            one(&mut s, path).await;
            lat.push(t.elapsed());
        }
        (lat, body)
    });
    lat.sort();
    let rps = rt.block_on(async {
        let per = THROUGHPUT_REQUESTS / THROUGHPUT_CONNECTIONS;
        let mut senders = Vec::new();
        for _ in 0..THROUGHPUT_CONNECTIONS {
            senders.push(connect(socket).await);
        }
        let start = Instant::now();
        let tasks: Vec<_> = senders
            .into_iter()
            .map(|mut s| {
                let path = path.to_string();
                tokio::spawn(async move {
                    for _ in 0..per {
                        one(&mut s, &path).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        (per * THROUGHPUT_CONNECTIONS) as f64 / start.elapsed().as_secs_f64()
    });
    Figures {
        p50: lat[lat.len() / 2],
        p99: lat[lat.len() * 99 / 100],
        rps,
        body,
    }
}

/// Token requests for `n` names against `issuer`, with the secret file under `secrets`.
fn requests(issuer: &str, n: usize) -> String {
    let items: Vec<_> = (0..n)
        .map(|i| {
            serde_json::json!({
                "name": format!("t{i}"),
                "idpDiscoveryEndpoint": issuer,
                "client": {"clientId": "bench", "clientSecret": {"group": "bench", "key": "secret"}},
            })
        })
        .collect();
    serde_json::Value::Array(items).to_string()
}

fn pod_env(dir: &Path, secrets: &Path, issuer: &str, n: usize) -> Vec<(String, String)> {
    vec![
        (
            "FLYTE_TOKENS_PATH_PREFIX".into(),
            dir.join("tokens").display().to_string(),
        ),
        (
            "FLYTE_AUTH_AGENT_SOCKET".into(),
            dir.join("agent.sock").display().to_string(),
        ),
        (
            "FLYTE_SECRETS_DEFAULT_DIR".into(),
            secrets.display().to_string(),
        ),
        ("FLYTE_AUTH_AGENT_HEALTH_ADDR".into(), "127.0.0.1:0".into()),
        (
            "FLYTE_AUTH_AGENT_TOKEN_REQUESTS".into(),
            requests(issuer, n),
        ),
    ]
}

fn main() {
    if std::env::args().any(|a| a == "health") {
        health_attacks();
        return;
    }
    let secret = "bench-secret";
    let work = dir_with_secret(secret);
    let dir = work.path();

    // The embedded issuer and both servers run on their own runtime; the client on this thread.
    let servers = runtime();
    let shutdown = CancellationToken::new();
    let issuer = spawn_issuer(&servers, secret, &shutdown);

    let floor_sock = dir.join("floor.sock");
    servers.spawn(floor_server(
        servers
            .block_on(async { UnixListener::bind(&floor_sock) })
            .unwrap(),
    ));

    let agent_dir = dir.join("inproc");
    let env: Arc<dyn Env> = Arc::new(
        pod_env(&agent_dir, &dir.join("secrets"), &issuer, 1)
            .into_iter()
            .collect::<std::collections::HashMap<_, _>>(),
    );
    let config = Config::load(None, env.clone()).unwrap();
    let agent_sock = config.socket_path.clone();
    let agent = Agent::build(&config, env).unwrap();
    let cache = agent.cache().clone();
    let (socket, health) = servers.block_on(async {
        (
            BoundSocket::bind(&config.socket_path, 0o600).unwrap(),
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
        )
    });
    servers.spawn(agent.serve(socket, health, shutdown.clone()));
    servers.block_on(async { cache.get("t0").await.unwrap() });

    let floor = measure(&floor_sock, "/");
    let served = measure(&agent_sock, "/v1/tokens/t0");
    println!("token serving over the unix socket (HTTP/1.1 keep-alive, {LATENCY_REQUESTS} sequential requests; throughput over {THROUGHPUT_CONNECTIONS} connections, {THROUGHPUT_REQUESTS} requests):");
    println!(
        "  {:<28} {:>9} {:>9} {:>11} {:>7}",
        "", "p50 µs", "p99 µs", "req/s", "body B"
    );
    for (label, f) in [
        ("floor (hyper, 40 B body)", &floor),
        ("agent (cached token)", &served),
    ] {
        println!(
            "  {label:<28} {:>9.1} {:>9.1} {:>11.0} {:>7}",
            us(f.p50),
            us(f.p99),
            f.rps,
            f.body
        );
    }
    println!(
        "  ratio agent/floor: p50 {:.2}x (target <= 1.5), p99 {:.2}x (target <= 2.0), throughput {:.2}x; agent {:.0} req/s (target >= 30000)",
        us(served.p50) / us(floor.p50),
        us(served.p99) / us(floor.p99),
        served.rps / floor.rps,
        served.rps
    );

    // The real binary: start to ready, then RSS after RSS_REQUESTS with RSS_TOKENS names.
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_flyte-auth-agent"));
    let idp_round_trip = servers.block_on(async {
        let client = reqwest::Client::new();
        let t = Instant::now();
        let doc: serde_json::Value = client
            .get(format!("{issuer}/.well-known/openid-configuration"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        client
            .get(doc["jwks_uri"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let resp = client
            .post(doc["token_endpoint"].as_str().unwrap())
            .basic_auth("bench", Some(secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
        resp.bytes().await.unwrap();
        t.elapsed()
    });
    let proc_dir = dir.join("proc");
    std::fs::create_dir_all(&proc_dir).unwrap();
    let started = Instant::now();
    let mut child = Command::new(&bin)
        .arg("serve")
        .env_clear()
        .envs(pod_env(
            &proc_dir,
            &dir.join("secrets"),
            &issuer,
            RSS_TOKENS,
        ))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let last_file = proc_dir.join("tokens").join(format!("t{}", RSS_TOKENS - 1));
    let all_written =
        || (0..RSS_TOKENS).all(|i| proc_dir.join("tokens").join(format!("t{i}")).exists());
    while !all_written() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "agent never became ready"
        );
        std::thread::sleep(Duration::from_micros(100));
    }
    let to_ready = started.elapsed();
    assert!(last_file.exists());
    let proc_sock = proc_dir.join("agent.sock");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut s = connect(&proc_sock).await;
        for i in 0..RSS_REQUESTS {
            one(&mut s, &format!("/v1/tokens/t{}", i % RSS_TOKENS)).await;
        }
    });
    let (rss, hwm) = rss_kib(child.id());
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    let size = std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(0);
    println!("agent binary ({}):", bin.display());
    println!(
        "  start to ready with {RSS_TOKENS} token requests: {:.1} ms; one IdP round trip (discovery + JWKS + token, cold client): {:.1} ms; overhead {:.1} ms (target <= 20 ms)",
        to_ready.as_secs_f64() * 1e3,
        idp_round_trip.as_secs_f64() * 1e3,
        (to_ready.as_secs_f64() - idp_round_trip.as_secs_f64()) * 1e3
    );
    println!(
        "  RSS after {RSS_REQUESTS} requests: {:.1} MiB (peak {:.1} MiB; target <= 12 MiB)",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!("  binary size: {:.1} MiB", size as f64 / (1024.0 * 1024.0));
    shutdown.cancel();
}

const ATTACK_HEADS: usize = 150;
const ATTACK_HEAD_BYTES: usize = 400 * 1024;
const CHURN_CONNECTIONS: usize = 8_000;
const CHURN_BATCH: usize = 1_000;
const CHURN_HEAD_BYTES: usize = 16 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to `addr` with every operation bounded by [`IO_TIMEOUT`].
fn attacker(addr: &str) -> Option<std::net::TcpStream> {
    let s = std::net::TcpStream::connect(addr).ok()?;
    s.set_write_timeout(Some(IO_TIMEOUT)).ok()?;
    s.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
    Some(s)
}

/// An unfinished request head of about `bytes`: one header value that never ends.
fn endless_head(bytes: usize) -> Vec<u8> {
    let mut head = b"GET /healthz HTTP/1.1\r\nHost: agent\r\nX-Pad: ".to_vec();
    head.resize(bytes, b'a');
    head
}

/// `/healthz` over a fresh connection: its status, if it answered within [`IO_TIMEOUT`].
fn healthz(addr: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = attacker(addr)?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let line = String::from_utf8_lossy(&answer);
    line.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// The agent binary with no token requests, its health port on loopback: (child, health address).
fn bare_agent(dir: &Path) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_flyte-auth-agent"));
    let mut child = Command::new(&bin)
        .arg("serve")
        .env_clear()
        .env("FLYTE_TOKENS_PATH_PREFIX", dir.join("tokens"))
        .env("FLYTE_AUTH_AGENT_SOCKET", dir.join("agent.sock"))
        .env("FLYTE_SECRETS_DEFAULT_DIR", dir.join("secrets"))
        .env("FLYTE_AUTH_AGENT_HEALTH_ADDR", "127.0.0.1:0")
        .env("FLYTE_AUTH_AGENT_TOKEN_REQUESTS", "[]")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // The agent logs to stderr.
    let stdout = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        // The address, then keep draining so the agent never blocks on a full pipe.
        let mut sent = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sent {
                continue;
            }
            if let Some(rest) = line.split("health=").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                let _ = tx.send(addr.to_string());
                sent = true;
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the agent logged its health address");
    (child, addr)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn health_attacks() {
    use std::io::Write;
    let work = tempfile::tempdir().unwrap();
    let (mut child, addr) = bare_agent(work.path());
    assert_eq!(healthz(&addr), Some(200));
    let (rss, hwm) = rss_kib(child.id());
    println!(
        "health port under attack (agent binary, default limits), at start: RSS {:.1} MiB, peak {:.1} MiB",
        mib(rss),
        mib(hwm)
    );

    // 1. Heads that never end, all held open while /healthz is asked.
    let started = Instant::now();
    let head = endless_head(ATTACK_HEAD_BYTES);
    let mut held = Vec::new();
    let mut cut_short = 0;
    for _ in 0..ATTACK_HEADS {
        let Some(mut s) = attacker(&addr) else {
            cut_short += 1;
            continue;
        };
        // The agent answers 431 and closes after its limit, or closes an over-cap connection.
        if s.write_all(&head).is_err() {
            cut_short += 1;
        }
        held.push(s);
    }
    let during = (0..10).find_map(|_| healthz(&addr).filter(|s| *s == 200));
    let (rss, hwm) = rss_kib(child.id());
    println!(
        "  {ATTACK_HEADS} x {} KB unfinished heads ({cut_short} cut short by the agent) in {:.1} s: RSS {:.1} MiB, peak {:.1} MiB (target <= 32 MiB); /healthz during: {}",
        ATTACK_HEAD_BYTES / 1024,
        started.elapsed().as_secs_f64(),
        mib(rss),
        mib(hwm),
        during.map_or("no answer".to_string(), |s| s.to_string()),
    );
    drop(held);

    // 2. Churn: many connections, each with part of a head, opened in batches and closed.
    let started = Instant::now();
    let head = endless_head(CHURN_HEAD_BYTES);
    let mut refused = 0;
    for _ in 0..CHURN_CONNECTIONS / CHURN_BATCH {
        let batch: Vec<_> = (0..CHURN_BATCH)
            .filter_map(|_| {
                let mut s = attacker(&addr)?;
                if s.write_all(&head).is_err() {
                    refused += 1;
                }
                Some(s)
            })
            .collect();
        drop(batch);
    }
    let after = (0..10).find_map(|_| healthz(&addr).filter(|s| *s == 200));
    let (rss, hwm) = rss_kib(child.id());
    println!(
        "  {CHURN_CONNECTIONS} connections ({CHURN_BATCH} at a time, {} KB heads, {refused} cut short) in {:.1} s: RSS after {:.1} MiB, peak {:.1} MiB (target <= 32 MiB); /healthz after: {}",
        CHURN_HEAD_BYTES / 1024,
        started.elapsed().as_secs_f64(),
        mib(rss),
        mib(hwm),
        after.map_or("no answer".to_string(), |s| s.to_string()),
    );
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}
