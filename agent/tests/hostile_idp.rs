//! The real agent binary against a misbehaving IdP: a small token endpoint on loopback that
//! answers each client with a script of hostile responses (huge or string `expires_in`, JWTs whose
//! `exp` is `u64::MAX`, `i64::MAX` or past, tokens with a newline, a control character or nothing,
//! a 10 kB `error_description` of control characters). The agent must stay up, never write or
//! serve a bad token, keep a valid one, answer with short clean errors, and back off from a token
//! that is expired on arrival instead of asking again at once.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::*;
use serde_json::{json, Value};

/// One scripted answer.
#[derive(Clone)]
struct Reply {
    status: u16,
    body: String,
}

impl Reply {
    fn ok(body: Value) -> Self {
        Self {
            status: 200,
            body: body.to_string(),
        }
    }
}

#[derive(Default)]
struct Script {
    /// Answers by client id; request n gets answer n, the last one repeating.
    replies: HashMap<String, Vec<Reply>>,
    /// When each client's requests arrived.
    hits: HashMap<String, Vec<Instant>>,
}

/// The misbehaving token endpoint: `POST /token` with `client_secret_basic`, answered from the
/// script of the client named in the Basic credentials.
struct HostileIdp {
    token_endpoint: String,
    script: Arc<Mutex<Script>>,
    _runtime: tokio::runtime::Runtime,
}

impl HostileIdp {
    fn start(replies: HashMap<String, Vec<Reply>>) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let script = Arc::new(Mutex::new(Script {
            replies,
            hits: HashMap::new(),
        }));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = script.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let script = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let reply = answer(&script, &req);
                        async move {
                            hyper::Response::builder()
                                .status(reply.status)
                                .header("content-type", "application/json")
                                .body(http_body_util::Full::new(bytes::Bytes::from(reply.body)))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            token_endpoint: format!("http://{addr}/token"),
            script,
            _runtime: runtime,
        }
    }

    fn hits(&self, client: &str) -> Vec<Instant> {
        let script = self.script.lock().unwrap();
        script.hits.get(client).cloned().unwrap_or_default()
    }
}

fn answer(script: &Mutex<Script>, req: &hyper::Request<hyper::body::Incoming>) -> Reply {
    let client = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.split(':').next().map(str::to_string))
        .unwrap_or_default();
    let mut script = script.lock().unwrap();
    let hits = script.hits.entry(client.clone()).or_default();
    hits.push(Instant::now());
    let n = hits.len() - 1;
    match script.replies.get(&client) {
        Some(replies) => replies[n.min(replies.len() - 1)].clone(),
        None => Reply {
            status: 401,
            body: json!({"error": "invalid_client"}).to_string(),
        },
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// An unsigned JWT-shaped token with `claims` (the agent reads `exp` without verifying).
fn jwt(claims: &str) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!("{}.{}.sig", b64(r#"{"alg":"none"}"#), b64(claims))
}

/// A good token for `client`, living `secs` seconds.
fn valid(client: &str, secs: u64) -> Reply {
    Reply::ok(
        json!({"access_token": format!("valid-{client}"), "token_type": "Bearer", "expires_in": secs}),
    )
}

fn bearer(token: &str, expires_in: Value) -> Reply {
    let mut body = json!({"access_token": token, "token_type": "Bearer"});
    if !expires_in.is_null() {
        body["expires_in"] = expires_in;
    }
    Reply::ok(body)
}

/// Clients whose answer is usable once clamped or converted.
fn survivable() -> Vec<(&'static str, Reply)> {
    vec![
        (
            "huge63",
            bearer("t-huge63", json!(9_223_372_036_854_775_808u64)),
        ),
        ("huge12", bearer("t-huge12", json!(1_000_000_000_000u64))),
        ("string", bearer("t-string", json!("3600"))),
        (
            "expmax",
            bearer(&jwt(&format!(r#"{{"exp":{}}}"#, u64::MAX)), Value::Null),
        ),
        (
            "expi64",
            bearer(&jwt(&format!(r#"{{"exp":{}}}"#, i64::MAX)), Value::Null),
        ),
    ]
}

/// The 400 with a 10 kB description of terminal escapes and line breaks.
fn noisy_refusal() -> Reply {
    Reply {
        status: 400,
        body: json!({
            "error": "invalid_client\u{1b}[2J",
            "error_description": "\u{1b}[31mFORGED LOG LINE\r\n\u{7}\u{0}".repeat(400),
        })
        .to_string(),
    }
}

/// Clients whose answers must never become a file or a 200: (client, script, hits to wait for).
fn refused() -> Vec<(&'static str, Vec<Reply>, usize)> {
    let past = jwt(&format!(r#"{{"exp":{}}}"#, now_secs() - 3600));
    vec![
        ("expired", vec![bearer(&past, Value::Null)], 1),
        ("expired0", vec![bearer(&past, json!(0))], 1),
        ("negative", vec![bearer("t-negative", json!(-5))], 1),
        ("noisy", vec![noisy_refusal()], 1),
        ("empty", vec![bearer("", json!(60))], 1),
        // A valid token first (refreshed after about 1.5 s), then a bad one: the valid one
        // must stay in the file.
        (
            "newline",
            vec![valid("newline", 2), bearer("evil\nline", json!(60))],
            2,
        ),
        (
            "control",
            vec![valid("control", 2), bearer("evil\u{7}bell", json!(60))],
            2,
        ),
    ]
}

/// A 503 message or status-listing error: short and free of control characters.
#[track_caller]
fn assert_clean(what: &str, text: &str) {
    assert!(
        text.chars().count() <= 512,
        "{what} is {} characters: {text:?}",
        text.chars().count()
    );
    assert!(
        !text.chars().any(|c| c.is_control()),
        "{what} carries control characters: {text:?}"
    );
}

#[test]
fn a_hostile_idp_cannot_crash_or_fool_the_agent() {
    let mut replies: HashMap<String, Vec<Reply>> = survivable()
        .into_iter()
        .map(|(c, r)| (c.to_string(), vec![r]))
        .collect();
    for (client, script, _) in refused() {
        replies.insert(client.to_string(), script);
    }
    let idp = HostileIdp::start(replies);
    let pod = Pod::new();
    pod.secret("g", "client_secret", "secret-hostile-1");
    for client in ["newline", "control"] {
        pod.sensitive.add(format!("valid-{client}"));
    }
    pod.sensitive.add("evil");
    let names: Vec<&str> = survivable()
        .iter()
        .map(|(c, _)| *c)
        .chain(refused().iter().map(|(c, _, _)| *c))
        .collect();
    let requests: Vec<Value> = names
        .iter()
        .map(|n| request(n, n, "g", ("tokenEndpoint", &idp.token_endpoint)))
        .collect();
    let agent = AgentProcess::start(&pod, &["serve"], &pod.env(&json!(requests)));

    // Every client has been answered as often as its script needs, and the agent has acted on
    // the last answer (its failure is logged).
    for (client, _, hits) in refused() {
        wait_for(client, Duration::from_secs(20), || {
            let failed = agent.output().lines().any(|l| {
                l.contains("token request failed") && l.contains(&format!("token_name={client}}}"))
            });
            (idp.hits(client).len() >= hits && failed).then_some(())
        });
    }
    // Before any reader asks for it (a reader may retry once a back-off ends, which would
    // blur the gaps): a token that arrives expired backs off like any failure: at least 0.5 s, 1 s, 2 s between
    // the IdP calls (the jittered lower halves of 1, 2 and 4 s), not a call per millisecond.
    let hits = wait_for(
        "four calls for the expired token",
        Duration::from_secs(20),
        || {
            let hits = idp.hits("expired");
            (hits.len() >= 4).then_some(hits)
        },
    );
    let gaps: Vec<f64> = hits
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    assert!(
        gaps[0] >= 0.45 && gaps[1] >= 0.95 && gaps[2] >= 1.95,
        "back-off between calls: {gaps:?}"
    );

    let (status, _) = agent.health_get("/healthz");
    assert_eq!(status, 200, "the agent is up");

    // Clamped or converted answers are served, with a sane expiry.
    let year = Duration::from_secs(366 * 86_400);
    for (client, _) in survivable() {
        let (status, body) = sget(agent.socket(), &format!("/v1/tokens/{client}"), "*/*");
        assert_eq!(status, 200, "{client}: {body}");
        let token: Value = serde_json::from_str(&body).unwrap();
        let expires_at = humantime::parse_rfc3339(token["expires_at"].as_str().unwrap()).unwrap();
        assert!(expires_at > SystemTime::now(), "{client}: {body}");
        assert!(expires_at < SystemTime::now() + year, "{client}: {body}");
        assert_eq!(
            pod.token_file(client).as_deref(),
            token["access_token"].as_str(),
            "{client}"
        );
        pod.sensitive.add(token["access_token"].as_str().unwrap());
    }
    let (_, body) = sget(agent.socket(), "/v1/tokens/string", "*/*");
    let token: Value = serde_json::from_str(&body).unwrap();
    let expires_at = humantime::parse_rfc3339(token["expires_at"].as_str().unwrap()).unwrap();
    let left = expires_at.duration_since(SystemTime::now()).unwrap();
    assert!(
        left > Duration::from_secs(3500) && left <= Duration::from_secs(3600),
        "\"3600\" read as an hour: {left:?}"
    );

    // Refused answers: no file (or the previous valid token), a short clean 503.
    for (client, _, _) in refused() {
        let previous =
            (client == "newline" || client == "control").then(|| format!("valid-{client}"));
        assert_eq!(pod.token_file(client), previous, "{client}");
        let (status, body) = wait_for(
            "the previous token to expire",
            Duration::from_secs(10),
            || {
                let (status, body) = sget(agent.socket(), &format!("/v1/tokens/{client}"), "*/*");
                (status != 200).then_some((status, body))
            },
        );
        assert_eq!(status, 503, "{client}: {body}");
        let err: Value = serde_json::from_str(&body).unwrap();
        let message = err["message"].as_str().unwrap();
        assert_clean(client, message);
        let expect = match client {
            "expired" | "expired0" => "already expired when issued",
            "negative" => "expires_in is negative",
            "noisy" => {
                "refused the token request (HTTP 400): invalid_client[2J: [31mFORGED LOG LINE"
            }
            "empty" => "access_token is empty",
            _ => "not an RFC 6750 token68 value",
        };
        assert_contains(message, expect);
    }
    let (_, list) = sget(agent.socket(), "/v1/tokens", "*/*");
    let list: Value = serde_json::from_str(&list).unwrap();
    for entry in list["tokens"].as_array().unwrap() {
        if let Some(error) = entry["error"].as_str() {
            assert_clean(entry["name"].as_str().unwrap(), error);
        }
    }

    let (code, out) = agent.stop();
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("panicked"), "{out}");
    assert!(
        !out.contains('\u{1b}') && !out.contains('\u{7}'),
        "IdP control characters reached the log"
    );
    assert!(!out.contains("FORGED LOG LINE\n"), "{out}");
}
