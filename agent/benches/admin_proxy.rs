//! Benchmark: unary gRPC calls (AuthMetadataService.GetPublicClientConfig) from a tonic client
//! to a minimal tonic server over a unix socket, directly (the floor) and through the agent
//! binary's Admin proxy, in the same run: latency percentiles, throughput, CPU per call (this
//! process's client and server, and the agent), and the agent's RSS under that load. All three
//! parties share the machine's cores, so when throughput is CPU-bound the agent's CPU per call
//! against the floor's is what bounds the throughput ratio.
//!
//! A third row sends the same calls as `AdminService/GetExecution` of the agent's own execution
//! (a real WorkflowExecutionGetRequest, which the execution-scope policy reads and judges; the
//! upstream answers it as GetPublicClientConfig): its p50 against the second row's is what the
//! policy adds to a call end to end (GetPublicClientConfig is forwarded unread).
//!
//! Run: `cargo bench -p flyte-auth-agent --bench admin_proxy`. Every loop is bounded by a count.

mod common;

use common::{admin_agent_env, dir_with_secret, rss_kib, runtime, spawn_issuer, us};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use flyte_auth_proto::flyteidl::service::auth_metadata_service_client::AuthMetadataServiceClient;
use flyte_auth_proto::flyteidl::service::auth_metadata_service_server::{
    AuthMetadataService, AuthMetadataServiceServer,
};
use flyte_auth_proto::flyteidl::service::{
    OAuth2MetadataRequest, OAuth2MetadataResponse, PublicClientAuthConfigRequest,
    PublicClientAuthConfigResponse,
};
use futures_util::future::BoxFuture;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

const WARMUP: usize = 2_000;
const LATENCY_CALLS: usize = 20_000;
const THROUGHPUT_CONNECTIONS: usize = 4;
const THROUGHPUT_IN_FLIGHT: usize = 8;
const THROUGHPUT_CALLS: usize = 100_000;

/// The upstream: answers GetPublicClientConfig with a fixed body and counts the calls that
/// carried a credential, so the run also proves the proxy attached one.
#[derive(Default)]
struct Minimal {
    with_credential: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl AuthMetadataService for Minimal {
    async fn get_o_auth2_metadata(
        &self,
        _req: tonic::Request<OAuth2MetadataRequest>,
    ) -> Result<tonic::Response<OAuth2MetadataResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in the benchmark"))
    }

    async fn get_public_client_config(
        &self,
        req: tonic::Request<PublicClientAuthConfigRequest>,
    ) -> Result<tonic::Response<PublicClientAuthConfigResponse>, tonic::Status> {
        if req.metadata().contains_key("authorization") {
            self.with_credential.fetch_add(1, Ordering::Relaxed);
        }
        Ok(tonic::Response::new(PublicClientAuthConfigResponse {
            client_id: "flytectl".into(),
            redirect_uri: "http://localhost:53593/callback".into(),
            scopes: vec!["all".into()],
            authorization_metadata_key: "authorization".into(),
            service_http_endpoint: String::new(),
            audience: "flyteadmin".into(),
        }))
    }
}

const GET_EXECUTION: &str = "/flyteidl.service.AdminService/GetExecution";
const GET_CONFIG: &str = "/flyteidl.service.AuthMetadataService/GetPublicClientConfig";

/// Answers GetExecution as GetPublicClientConfig (prost skips the request's fields, which the
/// empty PublicClientAuthConfigRequest does not have).
#[derive(Clone)]
struct AsConfig(AuthMetadataServiceServer<Minimal>);

impl tower_service::Service<http::Request<Incoming>> for AsConfig {
    type Response = <AuthMetadataServiceServer<Minimal> as tower_service::Service<
        http::Request<Incoming>,
    >>::Response;
    type Error = std::convert::Infallible;
    type Future = <AuthMetadataServiceServer<Minimal> as tower_service::Service<
        http::Request<Incoming>,
    >>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower_service::Service::<http::Request<Incoming>>::poll_ready(&mut self.0, cx)
    }

    fn call(&mut self, mut req: http::Request<Incoming>) -> Self::Future {
        if req.uri().path() == GET_EXECUTION {
            *req.uri_mut() = GET_CONFIG.parse().unwrap();
        }
        self.0.call(req)
    }
}

async fn serve_minimal(listener: UnixListener, service: AuthMetadataServiceServer<Minimal>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let service = TowerToHyperService::new(AsConfig(service.clone()));
        tokio::spawn(async move {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A tonic transport over one HTTP/2 connection on a unix socket; with a request frame, every
/// call is sent as GetExecution with that frame as its body.
#[derive(Clone)]
struct H2(
    hyper::client::conn::http2::SendRequest<tonic::body::Body>,
    Option<bytes::Bytes>,
);

impl tower_service::Service<http::Request<tonic::body::Body>> for H2 {
    type Response = http::Response<Incoming>;
    type Error = hyper::Error;
    type Future = BoxFuture<'static, Result<http::Response<Incoming>, hyper::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        let mut path = req.uri().path().to_string();
        if let Some(frame) = &self.1 {
            path = GET_EXECUTION.into();
            *req.body_mut() = tonic::body::Body::new(http_body_util::Full::new(frame.clone()));
        }
        *req.uri_mut() = format!("http://localhost{path}").parse().unwrap();
        let fut = self.0.send_request(req);
        Box::pin(fut)
    }
}

type Client = AuthMetadataServiceClient<H2>;

async fn client(socket: &Path, get_execution: Option<bytes::Bytes>) -> Client {
    let stream = UnixStream::connect(socket).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    AuthMetadataServiceClient::new(H2(sender, get_execution))
}

async fn call(client: &mut Client) {
    let r = client
        .get_public_client_config(PublicClientAuthConfigRequest {})
        .await
        .expect("call succeeds");
    assert_eq!(r.get_ref().audience, "flyteadmin");
}

struct Figures {
    p50: Duration,
    p99: Duration,
    rps: f64,
    /// CPU per call in the throughput phase: this process (client and server), and the agent.
    cpu_self: Duration,
    cpu_agent: Duration,
}

/// CPU time a process has used (user + system), from /proc.
fn cpu(pid: Option<u32>) -> Duration {
    let path = pid.map_or("/proc/self/stat".to_string(), |p| format!("/proc/{p}/stat"));
    let stat = std::fs::read_to_string(path).unwrap();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let ticks = fields[11] + fields[12];
    Duration::from_secs_f64(ticks as f64 / 100.0)
}

fn measure(
    rt: &tokio::runtime::Runtime,
    socket: &Path,
    agent: Option<u32>,
    get_execution: Option<bytes::Bytes>,
) -> Figures {
    rt.block_on(async {
        let mut c = client(socket, get_execution.clone()).await;
        for _ in 0..WARMUP {
            call(&mut c).await;
        }
        let mut samples = Vec::with_capacity(LATENCY_CALLS);
        for _ in 0..LATENCY_CALLS {
            let t = Instant::now();
            call(&mut c).await;
            samples.push(t.elapsed());
        }
        samples.sort();
        let per_task = THROUGHPUT_CALLS / (THROUGHPUT_CONNECTIONS * THROUGHPUT_IN_FLIGHT);
        let mut clients = Vec::new();
        for _ in 0..THROUGHPUT_CONNECTIONS {
            clients.push(client(socket, get_execution.clone()).await);
        }
        let (self_before, agent_before) = (cpu(None), agent.map(|p| cpu(Some(p))));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for c in &clients {
            for _ in 0..THROUGHPUT_IN_FLIGHT {
                let mut c = c.clone();
                tasks.push(tokio::spawn(async move {
                    for _ in 0..per_task {
                        call(&mut c).await;
                    }
                }));
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
        let elapsed = started.elapsed();
        let calls = (per_task * THROUGHPUT_CONNECTIONS * THROUGHPUT_IN_FLIGHT) as u32;
        let cpu_agent = match (agent, agent_before) {
            (Some(p), Some(before)) => cpu(Some(p)).saturating_sub(before) / calls,
            _ => Duration::ZERO,
        };
        Figures {
            p50: samples[samples.len() / 2],
            p99: samples[samples.len() * 99 / 100],
            rps: f64::from(calls) / elapsed.as_secs_f64(),
            cpu_self: cpu(None).saturating_sub(self_before) / calls,
            cpu_agent,
        }
    })
}

/// A framed WorkflowExecutionGetRequest for flytesnacks/development.
fn get_execution_frame() -> bytes::Bytes {
    use prost::Message as _;
    let desc = flyte_auth_proto::admin_pool()
        .get_message_by_name("flyteidl.admin.WorkflowExecutionGetRequest")
        .unwrap();
    let m = prost_reflect::DynamicMessage::deserialize(
        desc,
        serde_json::json!({"id": {"project": "flytesnacks", "domain": "development", "name": "a1b2c3d4e5"}}),
    )
    .unwrap();
    let body = m.encode_to_vec();
    let mut out = vec![0];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out.into()
}

fn main() {
    let secret = "bench-secret";
    let work = dir_with_secret(secret);
    let dir = work.path();

    // The issuer and the upstream on one runtime, the client on another, the agent in its own
    // process: three parties, as in a pod, sharing the machine's cores.
    let servers = runtime();
    let clients = runtime();
    let shutdown = CancellationToken::new();
    let issuer = spawn_issuer(&servers, secret, &shutdown);
    let upstream_sock = dir.join("admin.sock");
    let minimal = Minimal::default();
    let with_credential = minimal.with_credential.clone();
    let listener = servers
        .block_on(async { UnixListener::bind(&upstream_sock) })
        .unwrap();
    servers.spawn(serve_minimal(
        listener,
        AuthMetadataServiceServer::new(minimal),
    ));

    let agent_sock = dir.join("run/agent.sock");
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_flyte-auth-agent"));
    let mut agent = Command::new(&bin)
        .arg("serve")
        .env_clear()
        .envs(admin_agent_env(
            dir,
            &format!("unix://{}", upstream_sock.display()),
            &issuer,
            &[
                ("FLYTE_AUTH_AGENT_ADMIN_AUDIENCE", "flyteadmin"),
                ("FLYTE_AUTH_AGENT_ADMIN_PROJECT", "flytesnacks"),
                ("FLYTE_AUTH_AGENT_ADMIN_DOMAIN", "development"),
                ("RUST_LOG", "warn"),
            ],
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !agent_sock.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "agent never bound its socket"
        );
        std::thread::sleep(Duration::from_millis(1));
    }

    let direct = measure(&clients, &upstream_sock, None, None);
    let credentialed_before = with_credential.load(Ordering::Relaxed);
    let proxied = measure(&clients, &agent_sock, Some(agent.id()), None);
    let scoped = measure(
        &clients,
        &agent_sock,
        Some(agent.id()),
        Some(get_execution_frame()),
    );
    let credentialed = with_credential.load(Ordering::Relaxed) - credentialed_before;
    let (rss, hwm) = rss_kib(agent.id());
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(agent.id().to_string())
        .status();
    let _ = agent.wait();
    shutdown.cancel();

    let total = (WARMUP
        + LATENCY_CALLS
        + THROUGHPUT_CALLS / (THROUGHPUT_CONNECTIONS * THROUGHPUT_IN_FLIGHT)
            * THROUGHPUT_CONNECTIONS
            * THROUGHPUT_IN_FLIGHT) as u64;
    assert_eq!(
        credentialed,
        2 * total,
        "every proxied call carried the credential"
    );

    println!("unary gRPC over unix sockets (tonic client and server; {LATENCY_CALLS} sequential calls; throughput: {THROUGHPUT_CONNECTIONS} connections x {THROUGHPUT_IN_FLIGHT} in flight, {THROUGHPUT_CALLS} calls):");
    println!(
        "  {:<34} {:>9} {:>9} {:>11} {:>20} {:>14}",
        "", "p50 µs", "p99 µs", "calls/s", "CPU µs/call cli+srv", "agent µs/call"
    );
    for (label, f) in [
        ("direct (the floor)", &direct),
        ("through the agent's Admin proxy", &proxied),
        ("  as GetExecution, policy-checked", &scoped),
    ] {
        println!(
            "  {label:<34} {:>9.1} {:>9.1} {:>11.0} {:>20.1} {:>14.1}",
            us(f.p50),
            us(f.p99),
            f.rps,
            us(f.cpu_self),
            us(f.cpu_agent)
        );
    }
    println!(
        "  added by the agent: p50 {:.1} µs (target <= 150), p99 {:.1} µs (target <= 500); throughput {:.2}x direct (target >= 0.80)",
        us(proxied.p50) - us(direct.p50),
        us(proxied.p99) - us(direct.p99),
        proxied.rps / direct.rps
    );
    println!(
        "  added by the execution-scope policy (GetExecution vs the unread call): p50 {:.1} µs (target <= 10), p99 {:.1} µs",
        us(scoped.p50) - us(proxied.p50),
        us(scoped.p99) - us(proxied.p99),
    );
    let total = 2 * total;
    println!(
        "  agent RSS after {total} proxied calls: {:.1} MiB (peak {:.1} MiB); every call carried the credential",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
}
