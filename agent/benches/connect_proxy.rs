//! Benchmark: Connect unary calls as Flyte 2's SDK makes them (HTTP/1.1 keep-alive POSTs,
//! `application/proto`) to a minimal control plane on loopback TCP, directly (the floor) and
//! through the agent binary's Connect port (`admin.connect_port`; the agent forwards over its
//! HTTP/2 connection with the credential attached), in the same run: latency percentiles and
//! what the agent adds to them, forwarding unread (`policy: unrestricted`) and under the
//! execution-scope policy (the default), which gunzips and judges each request. The request is
//! the SDK's: an in-scope `ListRunsRequest`, gzipped as the SDK sends every body.
//!
//! Run: `cargo bench -p flyte-auth-agent --bench connect_proxy`. Every loop is bounded by a count.

mod common;

use common::{admin_agent_env, dir_with_secret, rss_kib, runtime, spawn_issuer, us};
use std::convert::Infallible;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const WARMUP: usize = 2_000;
const CALLS: usize = 20_000;
const METHOD: &str = "/flyteidl2.workflow.RunService/ListRuns";

/// The control plane: answers every call 200 with a 32-byte message, over HTTP/1.1 or h2c, and
/// counts the calls that carried a credential.
async fn control_plane(listener: TcpListener, credentialed: Arc<AtomicU64>) {
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        let credentialed = credentialed.clone();
        let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
            if req.headers().contains_key(http::header::AUTHORIZATION) {
                credentialed.fetch_add(1, Ordering::Relaxed);
            }
            async move {
                let _ = req.into_body().collect().await;
                let mut r = http::Response::new(Full::new(Bytes::from_static(&[0x0a; 32])));
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/proto"),
                );
                Ok::<_, Infallible>(r)
            }
        });
        tokio::spawn(async move {
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// p50 and p99 of `CALLS` sequential calls of `request` (gzipped) on one HTTP/1.1 keep-alive
/// connection to `addr`.
fn measure(rt: &tokio::runtime::Runtime, addr: &str, request: &Bytes) -> (Duration, Duration) {
    rt.block_on(async {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut samples = Vec::with_capacity(CALLS);
        for i in 0..WARMUP + CALLS {
            let req = http::Request::post(METHOD)
                .header(http::header::HOST, addr)
                .header(http::header::CONTENT_TYPE, "application/proto")
                .header(http::header::CONTENT_ENCODING, "gzip")
                .header("connect-protocol-version", "1")
                .body(Full::new(request.clone()))
                .unwrap();
            let t = Instant::now();
            sender.ready().await.unwrap();
            let response = sender.send_request(req).await.unwrap();
            assert_eq!(response.status(), 200, "a call failed");
            response.into_body().collect().await.unwrap();
            if i >= WARMUP {
                samples.push(t.elapsed());
            }
        }
        samples.sort();
        (samples[CALLS / 2], samples[CALLS * 99 / 100])
    })
}

/// The SDK's `Run.listall()` request in the execution's own project, gzipped.
fn list_runs() -> Bytes {
    use prost::Message as _;
    use prost_reflect::{DynamicMessage, Value};
    let pool = flyte_auth_proto::flyteidl2_pool();
    let desc = pool
        .get_message_by_name("flyteidl2.common.ProjectIdentifier")
        .unwrap();
    let mut project = DynamicMessage::new(desc);
    for (field, value) in [
        ("organization", "acme"),
        ("name", "flytesnacks"),
        ("domain", "development"),
    ] {
        project.set_field_by_name(field, Value::String(value.into()));
    }
    let desc = pool
        .get_message_by_name("flyteidl2.workflow.ListRunsRequest")
        .unwrap();
    let mut request = DynamicMessage::new(desc);
    request.set_field_by_name("project_id", Value::Message(project));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&request.encode_to_vec()).unwrap();
    Bytes::from(gz.finish().unwrap())
}

/// The agent binary with its Connect port in front of `plane`, under `policy`, once the port
/// accepts connections; the process and the port's address.
fn start_agent(dir: &std::path::Path, plane: &str, issuer: &str, policy: &str) -> (Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_flyte-auth-agent"));
    let agent = Command::new(&bin)
        .arg("serve")
        .env_clear()
        .envs(admin_agent_env(
            dir,
            plane,
            issuer,
            &[
                ("FLYTE_AUTH_AGENT_ADMIN_INSECURE", "true"),
                ("FLYTE_AUTH_AGENT_ADMIN_AUDIENCE", "flyte2"),
                ("FLYTE_AUTH_AGENT_ADMIN_POLICY", policy),
                ("FLYTE_AUTH_AGENT_ADMIN_PROJECT", "flytesnacks"),
                ("FLYTE_AUTH_AGENT_ADMIN_DOMAIN", "development"),
                ("FLYTE_AUTH_AGENT_ADMIN_ORG", "acme"),
                ("FLYTE_AUTH_AGENT_ADMIN_CONNECT_PORT", &port.to_string()),
                ("RUST_LOG", "error"),
            ],
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let through = format!("127.0.0.1:{port}");
    let started = Instant::now();
    while std::net::TcpStream::connect(&through).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the agent never opened its Connect port"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    (agent, through)
}

/// Stops `agent`; its RSS (KiB) just before.
fn stop(mut agent: Child) -> u64 {
    let (rss, _) = rss_kib(agent.id());
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(agent.id().to_string())
        .status();
    let _ = agent.wait();
    rss
}

fn main() {
    let secret = "bench-secret";
    // The issuer and the control plane on one runtime, the client on another, each agent in its
    // own process and work dir.
    let servers = runtime();
    let clients = runtime();
    let shutdown = CancellationToken::new();
    let issuer = spawn_issuer(&servers, secret, &shutdown);
    let credentialed = Arc::new(AtomicU64::new(0));
    let listener = servers.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let plane = listener.local_addr().unwrap().to_string();
    servers.spawn(control_plane(listener, credentialed.clone()));
    let request = list_runs();

    let direct = measure(&clients, &plane, &request);
    let mut rows = vec![("direct to the control plane (floor)", direct, 0)];
    for (label, policy) in [
        ("through the agent, unread", "unrestricted"),
        ("through the agent, judged (policy)", "execution"),
    ] {
        let work = dir_with_secret(secret);
        let (agent, through) = start_agent(work.path(), &plane, &issuer, policy);
        let before = credentialed.load(Ordering::Relaxed);
        let proxied = measure(&clients, &through, &request);
        let carried = credentialed.load(Ordering::Relaxed) - before;
        let rss = stop(agent);
        assert_eq!(
            carried,
            (WARMUP + CALLS) as u64,
            "every proxied call carried the credential ({policy})"
        );
        rows.push((label, proxied, rss));
    }
    shutdown.cancel();

    println!("Connect unary over loopback TCP (HTTP/1.1 keep-alive, a gzipped ListRuns of {} bytes, {CALLS} sequential calls after {WARMUP} warm-up):", request.len());
    println!("  {:<38} {:>9} {:>9}", "", "p50 µs", "p99 µs");
    for (label, (p50, p99), _) in &rows {
        println!("  {label:<38} {:>9.1} {:>9.1}", us(*p50), us(*p99));
    }
    for (label, (p50, p99), rss) in &rows[1..] {
        println!(
            "  {label}: adds p50 {:.1} µs, p99 {:.1} µs ({:.2}x / {:.2}x the floor); every call carried the credential; agent RSS {:.1} MiB",
            us(*p50) - us(direct.0),
            us(*p99) - us(direct.1),
            us(*p50) / us(direct.0),
            us(*p99) / us(direct.1),
            *rss as f64 / 1024.0,
        );
    }
    let (unread, judged) = (rows[1].1, rows[2].1);
    println!(
        "  the policy (gunzip, decode, walk) adds p50 {:.1} µs, p99 {:.1} µs over forwarding unread",
        us(judged.0) - us(unread.0),
        us(judged.1) - us(unread.1),
    );
}
