//! 1000 concurrent cold reads of one name cause exactly one token request at the real IdP.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::*;
use flyte_auth_agent::config::{Config, Env};
use flyte_auth_agent::Agent;
use serde_json::json;

#[test]
fn a_thousand_cold_readers_cause_one_idp_request() {
    let idp = Idp::with_clients(&[("c", "secret-sf-1", "client_secret_basic")]);
    // Slow responses keep the name cold while all readers pile up behind the first.
    idp.fault(json!({"mode": "slow", "delay_ms": 500}));
    let pod = Pod::new();
    pod.secret("g", "client_secret", "secret-sf-1");
    let requests = json!([request(
        "api",
        "c",
        "g",
        ("idpDiscoveryEndpoint", &idp.issuer)
    )]);
    let env: HashMap<String, String> = pod.env(&requests).into_iter().collect();
    let env: Arc<dyn Env> = Arc::new(env);
    let config = Config::load(None, env.clone()).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tokens = rt.block_on(async {
        let agent = Agent::build(&config, env).unwrap();
        let cache = agent.cache().clone();
        let readers: Vec<_> = (0..1000)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move {
                    cache
                        .get("api")
                        .await
                        .map(|t| t.access_token.expose().to_string())
                })
            })
            .collect();
        let mut tokens = Vec::with_capacity(readers.len());
        for r in readers {
            tokens.push(r.await.unwrap().expect("every reader gets a token"));
        }
        tokens
    });
    assert_eq!(tokens.len(), 1000);
    assert!(tokens.iter().all(|t| t == &tokens[0]));
    assert_eq!(idp.token_requests(), 1, "counted at the IdP");
    assert_eq!(idp.stats()["discovery_requests"], 1, "discovery shared too");
}
