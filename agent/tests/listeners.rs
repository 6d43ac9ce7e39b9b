//! The agent's trust boundary, against the real binary: what its listeners accept from a task or
//! another pod (connection caps, head sizes and deadlines), what its Admin proxy passes on, and
//! that its metrics stay bounded whatever paths a task sends.
//!
//! Header and trailer assertions need to see exactly what reached Admin, which the Python
//! stand-in cannot show (grpcio hides request trailers), so those tests put a small in-process
//! hyper HTTP/2 server where Admin would be that records every request. The credential is still
//! minted by the real oidc-provider.

mod common;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;

const PROPELLER_SECRET: &str = "propeller-secret-value";
/// Every bounded wait in this file: far longer than anything needs, short enough to fail.
const LIMIT: Duration = Duration::from_secs(30);

/// One request as it reached the recording Admin.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: HeaderMap,
    trailers: Option<HeaderMap>,
    /// The request body as received, or `None` when its stream broke off.
    body: Option<Bytes>,
}

/// An HTTP/2 server on loopback in Admin's place that records each request and answers gRPC OK.
struct Recorder {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    _rt: tokio::runtime::Runtime,
}

impl Recorder {
    fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let record = seen.clone();
        rt.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let record = record.clone();
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let record = record.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let collected = body.collect().await.ok();
                        let trailers = collected.as_ref().and_then(|c| c.trailers().cloned());
                        record.lock().unwrap().push(Seen {
                            path: parts.uri.path_and_query().unwrap().to_string(),
                            headers: parts.headers,
                            trailers,
                            body: collected.map(|c| c.to_bytes()),
                        });
                        let mut r = Response::new(Empty::<Bytes>::new());
                        r.headers_mut()
                            .insert("content-type", HeaderValue::from_static("application/grpc"));
                        r.headers_mut()
                            .insert("grpc-status", HeaderValue::from_static("0"));
                        Ok::<_, Infallible>(r)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Self {
            port,
            seen,
            _rt: rt,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// The agent's env for an Admin at `port` whose auth settings are all configured (so the agent
/// asks Admin nothing), with the credential from `idp`, plus `extra`.
fn admin_env(pod: &Pod, idp: &Idp, port: u16, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    pod.secret("flyte-admin", "client_secret", PROPELLER_SECRET);
    let mut env = pod.env(&json!([]));
    let token_endpoint = idp.token_endpoint();
    for (k, v) in [
        (
            "FLYTE_AUTH_AGENT_ADMIN_ENDPOINT",
            format!("127.0.0.1:{port}"),
        ),
        ("FLYTE_AUTH_AGENT_ADMIN_INSECURE", "true".into()),
        ("FLYTE_AUTH_AGENT_ADMIN_MODE", "client-secret".into()),
        ("FLYTE_AUTH_AGENT_ADMIN_CLIENT_ID", "flytepropeller".into()),
        (
            "FLYTE_AUTH_AGENT_ADMIN_CLIENT_SECRET",
            r#"{"group": "flyte-admin", "key": "client_secret"}"#.into(),
        ),
        ("FLYTE_AUTH_AGENT_ADMIN_TOKEN_ENDPOINT", token_endpoint),
        ("FLYTE_AUTH_AGENT_ADMIN_AUDIENCE", "flyteadmin".into()),
        ("FLYTE_AUTH_AGENT_ADMIN_SCOPES", "all".into()),
        (
            "FLYTE_AUTH_AGENT_ADMIN_AUTH_HEADER",
            "flyte-authorization".into(),
        ),
        // These tests send empty messages to made-up methods to test the transport; the
        // execution-scope policy, which would refuse them, is tested in admin_proxy.rs.
        ("FLYTE_AUTH_AGENT_ADMIN_POLICY", "unrestricted".into()),
    ] {
        env.push((k.to_string(), v));
    }
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

/// The IdP, the recording Admin and an agent proxying to it.
struct Proxied {
    idp: Idp,
    admin: Recorder,
    pod: Pod,
    agent: AgentProcess,
}

fn proxied(extra: &[(&str, &str)]) -> Proxied {
    let idp = Idp::with_clients(&[("flytepropeller", PROPELLER_SECRET, "client_secret_basic")]);
    let admin = Recorder::start();
    let pod = Pod::new();
    let env = admin_env(&pod, &idp, admin.port, extra);
    let agent = AgentProcess::start(&pod, &["serve"], &env);
    Proxied {
        idp,
        admin,
        pod,
        agent,
    }
}

/// A request body of given frames: what a task's gRPC library could send, trailers included;
/// with `open`, a client stream that never ends once they are sent.
struct Frames(VecDeque<Frame<Bytes>>, bool);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.0.pop_front() {
            None if self.1 => Poll::Pending,
            frame => Poll::Ready(frame.map(Ok)),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty() && !self.1
    }
}

type Sender = hyper::client::conn::http2::SendRequest<Frames>;

/// An HTTP/2 (prior knowledge) connection to the agent's socket, as grpc C-core opens one.
async fn h2(socket: &Path) -> Sender {
    let io = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// An empty gRPC message (the 5-byte frame header of a zero-length message).
fn message() -> Frame<Bytes> {
    Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))
}

fn grpc_request(
    uri: &str,
    headers: &[(&str, &str)],
    trailers: Option<HeaderMap>,
) -> Request<Frames> {
    let mut frames = VecDeque::from([message()]);
    frames.extend(trailers.map(Frame::trailers));
    let mut req = Request::post(uri)
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Frames(frames, false)).unwrap()
}

/// Sends one call; its gRPC status (from a trailers-only answer or the trailers), or the
/// transport error's text.
async fn call(sender: &mut Sender, req: Request<Frames>) -> Result<u16, String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let response = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = |h: &HeaderMap| {
        h.get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u16>().ok())
    };
    if let Some(code) = status(response.headers()) {
        return Ok(code);
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    body.trailers()
        .and_then(status)
        .ok_or_else(|| "no grpc-status".to_string())
}

#[test]
fn the_proxy_passes_no_credential_host_cookie_or_trailer_of_the_task() {
    let p = proxied(&[]);
    let forged = "Bearer forged-by-the-task";
    let mut trailers = HeaderMap::new();
    trailers.insert("authorization", HeaderValue::from_static(forged));
    trailers.insert("flyte-authorization", HeaderValue::from_static(forged));
    trailers.insert("x-task-trailer", HeaderValue::from_static("1"));
    let codes = rt().block_on(async {
        let mut sender = h2(p.agent.socket()).await;
        let mut codes = Vec::new();
        // Twice on one connection: the first call's trailers must not spoil the second.
        for _ in 0..2 {
            let req = grpc_request(
                "http://agent/flyteidl.service.AdminService/GetExecution",
                &[
                    ("authorization", forged),
                    ("flyte-authorization", forged),
                    ("authorization-bin", "Zm9yZ2Vk"),
                    ("flyte-authorization-bin", "Zm9yZ2Vk"),
                    ("cookie", "session=task"),
                    ("host", "evil.example"),
                    ("x-task-header", "kept"),
                ],
                Some(trailers.clone()),
            );
            codes.push(call(&mut sender, req).await);
        }
        codes
    });
    assert_eq!(codes, [Ok(0), Ok(0)], "{}", p.agent.output());
    let seen = p.admin.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for s in &seen {
        assert_eq!(s.path, "/flyteidl.service.AdminService/GetExecution");
        assert_eq!(s.trailers, None, "request trailers reached Admin: {s:?}");
        for gone in [
            "authorization",
            "authorization-bin",
            "flyte-authorization-bin",
            "cookie",
            "host",
        ] {
            assert!(s.headers.get(gone).is_none(), "{gone} reached Admin: {s:?}");
        }
        assert_eq!(s.headers["x-task-header"], "kept");
        // Exactly one credential, the executor's.
        let values: Vec<_> = s.headers.get_all("flyte-authorization").iter().collect();
        assert_eq!(values.len(), 1, "{s:?}");
        let token = values[0].to_str().unwrap().strip_prefix("Bearer ").unwrap();
        p.pod.sensitive.add(token);
        assert_eq!(
            p.idp.verify(token, "flyteadmin")["client_id"],
            json!("flytepropeller")
        );
    }
}

#[test]
fn non_canonical_paths_are_refused_before_the_allow_list_and_admin() {
    // `*` allows every method, so only the path rule can refuse these.
    let p = proxied(&[("FLYTE_AUTH_AGENT_ADMIN_ALLOWED_METHODS", "*")]);
    let bad = [
        "http://agent//x",
        "http://agent//flyteidl.service.AdminService/GetExecution",
        "http://agent/flyteidl.service.AdminService//GetExecution",
        "http://agent/flyteidl.service.AdminService/GetExecution?x=1",
        "http://agent/./flyteidl.service.AdminService/GetExecution",
        "http://agent/flyteidl.service.AdminService/../AdminService/GetExecution",
        "http://agent/flyteidl.service.AdminService%2FGetExecution/x",
        "http://agent/flyteidl.service.AdminService/GetExecution%2Fx",
        "http://agent/flyteidl.service.AdminService/GetExecution/extra",
        "http://agent/AdminService/GetExecution",
    ];
    let outcomes = rt().block_on(async {
        let mut outcomes = Vec::new();
        for uri in bad {
            // A fresh connection each, so one call's fate cannot decide another's.
            let mut sender = h2(p.agent.socket()).await;
            outcomes.push((uri, call(&mut sender, grpc_request(uri, &[], None)).await));
        }
        let mut sender = h2(p.agent.socket()).await;
        let good = grpc_request(
            "http://agent/flyteidl.service.AdminService/GetExecution",
            &[],
            None,
        );
        outcomes.push(("canonical", call(&mut sender, good).await));
        outcomes
    });
    for (uri, outcome) in &outcomes[..bad.len()] {
        // PERMISSION_DENIED from the agent itself, never Admin's OK.
        assert_eq!(outcome, &Ok(7), "{uri}");
    }
    assert_eq!(outcomes[bad.len()].1, Ok(0));
    let seen: Vec<_> = p.admin.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(seen, ["/flyteidl.service.AdminService/GetExecution"]);
    let refused = bad.len();
    let metrics = p.agent.health_get("/metrics").1;
    assert_contains(
        &metrics,
        &format!(
            r#"flyte_auth_agent_admin_calls_total{{method="denied",code="PermissionDenied"}} {refused}"#
        ),
    );
}

#[test]
fn twenty_thousand_distinct_methods_keep_the_metrics_bounded() {
    const CALLS: usize = 20_000;
    let p = proxied(&[(
        "FLYTE_AUTH_AGENT_ADMIN_ALLOWED_METHODS",
        "flyteidl.service.AdminService/*,flyteidl.service.AdminService/ListProjects",
    )]);
    let failures = rt().block_on(async {
        let sender = h2(p.agent.socket()).await;
        let mut calls = tokio::task::JoinSet::new();
        let mut failures = 0;
        for i in 0..CALLS {
            // Bounded in flight: below the socket's concurrent-stream limit.
            while calls.len() >= 64 {
                if !matches!(calls.join_next().await, Some(Ok(Ok(0)))) {
                    failures += 1;
                }
            }
            let mut sender = sender.clone();
            let uri = format!("http://agent/flyteidl.service.AdminService/Attack{i:05}");
            calls.spawn(async move { call(&mut sender, grpc_request(&uri, &[], None)).await });
        }
        let mut sender = sender.clone();
        let known = grpc_request(
            "http://agent/flyteidl.service.AdminService/ListProjects",
            &[],
            None,
        );
        if call(&mut sender, known).await != Ok(0) {
            failures += 1;
        }
        while let Some(done) = calls.join_next().await {
            if !matches!(done, Ok(Ok(0))) {
                failures += 1;
            }
        }
        failures
    });
    assert_eq!(failures, 0, "{}", p.agent.output());
    assert_eq!(p.admin.seen().len(), CALLS + 1);
    let metrics = p.agent.health_get("/metrics").1;
    let mut series: Vec<_> = metrics
        .lines()
        .filter(|l| l.starts_with("flyte_auth_agent_admin_calls_total{"))
        .collect();
    series.sort();
    assert_eq!(
        series,
        [
            r#"flyte_auth_agent_admin_calls_total{method="/flyteidl.service.AdminService/ListProjects",code="Ok"} 1"#,
            r#"flyte_auth_agent_admin_calls_total{method="other",code="Ok"} 20000"#,
        ],
        "{metrics}"
    );
    assert!(
        metrics.len() < 16 * 1024,
        "{} bytes of metrics",
        metrics.len()
    );
}

#[test]
fn policy_refusals_of_many_distinct_methods_keep_the_metrics_bounded() {
    const CALLS: usize = 2_000;
    // The default policy this time (the later env entry wins).
    let p = proxied(&[
        ("FLYTE_AUTH_AGENT_ADMIN_POLICY", "execution"),
        (flyte_auth_agent::env::ENV_ADMIN_PROJECT, "flytesnacks"),
        (flyte_auth_agent::env::ENV_ADMIN_DOMAIN, "development"),
    ]);
    let codes = rt().block_on(async {
        let sender = h2(p.agent.socket()).await;
        let mut calls = tokio::task::JoinSet::new();
        let mut codes = std::collections::BTreeMap::new();
        for i in 0..CALLS {
            while calls.len() >= 64 {
                let code = calls.join_next().await.and_then(|r| r.ok());
                *codes.entry(format!("{code:?}")).or_insert(0) += 1;
            }
            let mut sender = sender.clone();
            let uri = format!("http://agent/flyteidl.service.AdminService/Attack{i:05}");
            calls.spawn(async move { call(&mut sender, grpc_request(&uri, &[], None)).await });
        }
        while let Some(done) = calls.join_next().await {
            *codes.entry(format!("{:?}", done.ok())).or_insert(0) += 1;
        }
        codes
    });
    assert_eq!(
        codes,
        [(format!("{:?}", Some(Ok::<u16, String>(7))), CALLS)].into(),
        "{}",
        p.agent.output()
    );
    assert!(p.admin.seen().is_empty(), "Admin saw a refused call");
    let metrics = p.agent.health_get("/metrics").1;
    let series: Vec<_> = metrics
        .lines()
        .filter(|l| l.starts_with("flyte_auth_agent_admin_policy_refusals_total{"))
        .collect();
    assert_eq!(
        series,
        [format!(
            r#"flyte_auth_agent_admin_policy_refusals_total{{method="other",reason="unknown_method"}} {CALLS}"#
        )],
        "{metrics}"
    );
}

#[test]
fn refused_calls_whose_message_comes_after_the_refusal_keep_their_connection() {
    // h2 closes a connection once it has reset 1,024 of its streams itself (a defence against
    // reset floods), and a message arriving on a stream already answered and reset counts. gRPC
    // C-core writes a call's message without waiting for an answer, so the agent must answer a
    // refused call only once its request has ended, and never reset its stream: here every
    // message is sent after the agent has refused its call, 2,500 calls on one connection.
    const ROUNDS: u32 = 25;
    const PER_ROUND: u32 = 100; // the socket's h2_max_concurrent_streams
    let p = proxied(&[
        ("FLYTE_AUTH_AGENT_ADMIN_POLICY", "execution"),
        (flyte_auth_agent::env::ENV_ADMIN_PROJECT, "flytesnacks"),
        (flyte_auth_agent::env::ENV_ADMIN_DOMAIN, "development"),
    ]);
    let mut raw = RawH2::connect(p.agent.socket());
    let mut next_stream = 1u32;
    for round in 1..=ROUNDS {
        let streams: Vec<u32> = (0..PER_ROUND).map(|i| next_stream + 2 * i).collect();
        next_stream += 2 * PER_ROUND;
        for (i, id) in streams.iter().enumerate() {
            raw.headers(*id, &format!("/flyteidl.service.AdminService/Late{i:03}"));
        }
        let refused = (round * PER_ROUND) as usize;
        wait_for("the round's refusals", Duration::from_secs(30), || {
            (policy_refusals(&p.agent.health) == refused).then_some(())
        });
        for id in &streams {
            raw.data_end(*id, &[0, 0, 0, 0, 0]);
        }
        let seen = raw.answers_until(refused);
        assert_eq!(
            (seen.answers, seen.resets, seen.goaway),
            (refused, 0, false),
            "round {round}: {}",
            p.agent.output()
        );
    }
}

/// What a [`RawH2`] client read from the agent so far.
#[derive(Default, Clone, Copy)]
struct RawSeen {
    /// Trailers-only answers (HEADERS with END_STREAM).
    answers: usize,
    /// RST_STREAM frames.
    resets: usize,
    goaway: bool,
}

/// An HTTP/2 client at the frame level, which (unlike hyper's) keeps sending a request's
/// message after the server answered and reset the stream, as a client does whose frames
/// are already on the wire.
struct RawH2 {
    out: UnixStream,
    seen: Arc<(Mutex<RawSeen>, std::sync::Condvar)>,
}

impl RawH2 {
    fn connect(socket: &Path) -> Self {
        let mut out = unix(socket);
        out.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
        frame(&mut out, 0x4, 0, 0, &[]); // SETTINGS, all defaults
        let seen = Arc::new((Mutex::new(RawSeen::default()), std::sync::Condvar::new()));
        let (mut input, mut ack, shared) = (
            out.try_clone().unwrap(),
            out.try_clone().unwrap(),
            seen.clone(),
        );
        std::thread::spawn(move || {
            let mut head = [0u8; 9];
            while input.read_exact(&mut head).is_ok() {
                let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                let mut payload = vec![0; len];
                if input.read_exact(&mut payload).is_err() {
                    break;
                }
                let (kind, flags) = (head[3], head[4]);
                if kind == 0x4 && flags & 0x1 == 0 {
                    frame(&mut ack, 0x4, 0x1, 0, &[]); // SETTINGS ACK
                }
                let mut seen = shared.0.lock().unwrap();
                match kind {
                    0x1 if flags & 0x1 != 0 => seen.answers += 1,
                    0x3 => seen.resets += 1,
                    0x7 => seen.goaway = true,
                    _ => continue,
                }
                shared.1.notify_all();
            }
            shared.0.lock().unwrap().goaway = true;
            shared.1.notify_all();
        });
        Self { out, seen }
    }

    /// Opens stream `id` with a gRPC call's headers (HPACK literals, no huffman).
    fn headers(&mut self, id: u32, path: &str) {
        let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
        for (name_index, value) in [(4u8, path), (1, "agent")] {
            block.push(name_index); // literal without indexing, indexed name (:path, :authority)
            block.push(value.len() as u8);
            block.extend_from_slice(value.as_bytes());
        }
        block.extend_from_slice(&[0x0f, 0x10, 16]); // content-type (static index 31)
        block.extend_from_slice(b"application/grpc");
        block.extend_from_slice(&[0x00, 2, b't', b'e', 8]);
        block.extend_from_slice(b"trailers");
        frame(&mut self.out, 0x1, 0x4, id, &block); // END_HEADERS
    }

    /// Sends `data` on stream `id` and ends it.
    fn data_end(&mut self, id: u32, data: &[u8]) {
        frame(&mut self.out, 0x0, 0x1, id, data);
    }

    /// Waits until `answers` calls were answered, or the connection went away.
    fn answers_until(&self, answers: usize) -> RawSeen {
        let (lock, changed) = &*self.seen;
        let seen = changed
            .wait_timeout_while(lock.lock().unwrap(), Duration::from_secs(30), |s| {
                s.answers < answers && !s.goaway
            })
            .unwrap()
            .0;
        *seen
    }
}

fn frame(out: &mut UnixStream, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = (payload.len() as u32).to_be_bytes();
    let mut bytes = vec![len[1], len[2], len[3], kind, flags];
    bytes.extend_from_slice(&stream.to_be_bytes());
    bytes.extend_from_slice(payload);
    out.write_all(&bytes).unwrap();
}

/// How many calls the execution-scope policy has refused, from the agent's metrics.
fn policy_refusals(health: &str) -> usize {
    let metrics = reqwest::blocking::get(format!("http://{health}/metrics"))
        .and_then(|r| r.text())
        .unwrap_or_default();
    metrics
        .lines()
        .filter(|l| l.starts_with("flyte_auth_agent_admin_policy_refusals_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<usize>().ok())
        .sum()
}

/// An agent with no token requests and no Admin, with `extra` env.
fn bare_agent(pod: &Pod, extra: &[(&str, &str)]) -> AgentProcess {
    let mut env = pod.env(&json!([]));
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    AgentProcess::start(pod, &["serve"], &env)
}

/// Reads until the peer closes; what it sent before closing. Fails the test after [`LIMIT`].
fn until_closed(stream: &mut impl Read) -> Vec<u8> {
    let mut out = Vec::new();
    match stream.read_to_end(&mut out) {
        Ok(_) => out,
        // A reset is a close too (the peer dropped unread input).
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => out,
        Err(e) => panic!("still open after {LIMIT:?} ({e}); read {} bytes", out.len()),
    }
}

fn unix(socket: &Path) -> UnixStream {
    let s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s
}

#[test]
fn silent_socket_clients_are_closed_at_the_deadline_and_a_served_http2_connection_may_idle() {
    let pod = Pod::new();
    let agent = bare_agent(
        &pod,
        &[("FLYTE_AUTH_AGENT_LIMITS_REQUEST_HEAD_TIMEOUT", "1s")],
    );
    let runtime = rt();
    // flytekit's way: one HTTP/2 connection that serves a call, then idles.
    let mut served = runtime.block_on(h2(agent.socket()));
    let first = runtime.block_on(call(
        &mut served,
        grpc_request("http://agent/a.B/C", &[], None),
    ));
    // No admin section: the agent itself answers UNIMPLEMENTED.
    assert_eq!(first, Ok(12));

    let mut silent = unix(agent.socket());
    let mut partial_h1 = unix(agent.socket());
    partial_h1
        .write_all(b"GET /v1/tokens HTTP/1.1\r\n")
        .unwrap();
    let mut preface_only = unix(agent.socket());
    preface_only
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .unwrap();
    assert_eq!(until_closed(&mut silent), b"");
    let answer = until_closed(&mut partial_h1);
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // The server's SETTINGS frame may come first; then the connection ends.
    until_closed(&mut preface_only);

    // Past the deadline that closed the others, the served connection still takes calls.
    assert!(!served.is_closed());
    let second = runtime.block_on(call(
        &mut served,
        grpc_request("http://agent/a.B/C", &[], None),
    ));
    assert_eq!(second, Ok(12));
}

/// GET /v1/tokens over a new socket connection: the status, or why there was none.
fn list_tokens(socket: &Path) -> Result<u16, String> {
    rt().block_on(flyte_auth_agent::client::get(
        socket,
        "/v1/tokens",
        "application/json",
        Duration::from_secs(5),
    ))
    .map(|(status, _)| status.as_u16())
    .map_err(|e| e.to_string())
}

/// Opens a connection and completes one HTTP/1.1 request on it, so the server surely holds it.
fn held(socket: &Path) -> UnixStream {
    let mut s = unix(socket);
    s.write_all(b"GET /v1/tokens HTTP/1.1\r\nHost: agent\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
    s
}

#[test]
fn the_socket_closes_the_connection_beyond_its_cap_and_serves_again_once_one_ends() {
    let pod = Pod::new();
    let agent = bare_agent(
        &pod,
        &[
            ("FLYTE_AUTH_AGENT_LIMITS_SOCKET_MAX_CONNECTIONS", "3"),
            ("FLYTE_AUTH_AGENT_LIMITS_REQUEST_HEAD_TIMEOUT", "5m"),
        ],
    );
    let open: Vec<_> = (0..3).map(|_| held(agent.socket())).collect();
    let mut beyond = unix(agent.socket());
    assert_eq!(until_closed(&mut beyond), b"", "closed without an answer");
    assert!(list_tokens(agent.socket()).is_err());
    drop(open);
    wait_for("a request to be served again", LIMIT, || {
        list_tokens(agent.socket()).ok()
    });
    assert_eq!(list_tokens(agent.socket()), Ok(200));
}

fn tcp(addr: &str) -> std::net::TcpStream {
    let s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s
}

/// Sends `head` (ignoring a write the server cut short) and reads the answer until the close.
fn exchange(addr: &str, head: &[u8]) -> String {
    let mut s = tcp(addr);
    let _ = s.write_all(head);
    String::from_utf8_lossy(&until_closed(&mut s)).into_owned()
}

fn healthz(addr: &str) -> Option<u16> {
    reqwest::blocking::Client::new()
        .get(format!("http://{addr}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .ok()
        .map(|r| r.status().as_u16())
}

#[test]
fn the_health_port_refuses_oversized_heads_caps_connections_and_keeps_serving_healthz() {
    let pod = Pod::new();
    let agent = bare_agent(
        &pod,
        &[
            ("FLYTE_AUTH_AGENT_LIMITS_HEALTH_MAX_CONNECTIONS", "4"),
            ("FLYTE_AUTH_AGENT_LIMITS_REQUEST_HEAD_TIMEOUT", "5m"),
        ],
    );
    let addr = agent.health.clone();
    // One header of 64 KiB (the default health limit is 8 KiB), then 80 headers (limit 64).
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let answer = exchange(&addr, big.as_bytes());
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    let many: String = (0..80).map(|i| format!("X-H{i}: v\r\n")).collect();
    let answer = exchange(
        &addr,
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}Connection: close\r\n\r\n").as_bytes(),
    );
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    assert_eq!(healthz(&addr), Some(200));

    // Four silent connections fill the port; a fifth is closed at once, until one ends.
    let open: Vec<_> = (0..4).map(|_| tcp(&addr)).collect();
    let mut beyond = tcp(&addr);
    assert_eq!(until_closed(&mut beyond), b"");
    assert_eq!(healthz(&addr), None);
    drop(open);
    wait_for("/healthz to answer again", LIMIT, || healthz(&addr));
    assert_eq!(healthz(&addr), Some(200));
}

#[test]
fn calls_beyond_the_in_flight_cap_are_resource_exhausted_until_one_ends() {
    let p = proxied(&[("FLYTE_AUTH_AGENT_LIMITS_MAX_INFLIGHT_CALLS", "2")]);
    let uri = "http://agent/flyteidl.service.AdminService/GetExecution";
    rt().block_on(async {
        let mut sender = h2(p.agent.socket()).await;
        // Two client streams that never end: Admin (the recorder) answers only after the whole
        // request, so both stay in flight at the agent.
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut req = grpc_request(uri, &[], None);
            req.body_mut().1 = true;
            sender.ready().await.unwrap();
            let pending = sender.send_request(req);
            held.push(tokio::spawn(pending));
        }
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let code = call(&mut sender, grpc_request(uri, &[], None)).await;
            if code == Ok(8) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "a third call got {code:?}"
            );
            tokio::task::yield_now().await;
        }
        // Cancelled by the client (RST_STREAM), the held calls give their places back.
        for task in held {
            task.abort();
        }
        loop {
            let code = call(&mut sender, grpc_request(uri, &[], None)).await;
            if code == Ok(0) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "still refused: {code:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let metrics = p.agent.health_get("/metrics").1;
    assert!(
        metrics.contains(
            r#"method="/flyteidl.service.AdminService/GetExecution",code="ResourceExhausted"}"#
        ),
        "{metrics}"
    );
}

/// A `WorkflowExecutionGetRequest` for `project`, as one gRPC frame.
fn get_execution(project: &str) -> Bytes {
    let pool = flyte_auth_proto::admin_pool();
    let desc = pool
        .get_message_by_name("flyteidl.admin.WorkflowExecutionGetRequest")
        .unwrap();
    let id =
        serde_json::json!({"id": {"project": project, "domain": "development", "name": "seed"}});
    let request = prost_reflect::DynamicMessage::deserialize(desc, id).unwrap();
    let message = prost::Message::encode_to_vec(&request);
    let mut frame = vec![0];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    Bytes::from(frame)
}

#[test]
fn a_judged_unary_call_cannot_smuggle_a_second_message_to_admin() {
    let p = proxied(&[
        ("FLYTE_AUTH_AGENT_ADMIN_POLICY", "execution"),
        (flyte_auth_agent::env::ENV_ADMIN_PROJECT, "flytesnacks"),
        (flyte_auth_agent::env::ENV_ADMIN_DOMAIN, "development"),
    ]);
    let uri = "http://agent/flyteidl.service.AdminService/GetExecution";
    let own = get_execution("flytesnacks");
    let foreign = get_execution("payroll");
    let codes = rt().block_on(async {
        let mut sender = h2(p.agent.socket()).await;
        // The task's own request alone: judged and forwarded whole.
        let mut single = grpc_request(uri, &[], None);
        single.body_mut().0 = VecDeque::from([Frame::data(own.clone())]);
        let first = call(&mut sender, single).await;
        // The same, then a second message naming another project, on one stream.
        let mut smuggled = grpc_request(uri, &[], None);
        smuggled.body_mut().0 =
            VecDeque::from([Frame::data(own.clone()), Frame::data(foreign.clone())]);
        let second = call(&mut sender, smuggled).await;
        (first, second)
    });
    assert_eq!(codes.0, Ok(0), "{}", p.agent.output());
    assert_ne!(codes.1, Ok(0), "the smuggled call must not succeed");
    let seen = p.admin.seen();
    assert_eq!(
        seen[0].body.as_deref(),
        Some(&own[..]),
        "the judged call reaches Admin whole"
    );
    for s in &seen {
        let body = s.body.clone().unwrap_or_default();
        assert!(
            !body.windows(b"payroll".len()).any(|w| w == b"payroll"),
            "Admin received a message the policy did not read: {s:?}"
        );
    }
}
