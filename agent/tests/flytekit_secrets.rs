//! The agent finds a secret exactly where flytekit's `SecretsManager` would, for the same
//! `FLYTE_SECRETS_*` settings: same env var names, same file paths, same values.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;

use flyte_auth_agent::secret::{SecretResolver, SecretsConfig};
use flyte_auth_proto::flyteidl::core::Secret;
use serde_json::{json, Value};

#[test]
fn resolution_matches_flytekit() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("secrets");
    let write = |rel: &str, value: &str| {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, value).unwrap();
    };
    // Mixed case in, lower case on disk; versions; a file prefix; whitespace to trim.
    write("warehouse-oauth/pfx-client_secret", "file-secret\n");
    write("versioned/v2/pfx-key", "  versioned-secret \n");
    write("grouponly/pfx-grouponly", "group-only-secret");
    let env: HashMap<String, String> = [
        ("FLYTE_SECRETS_DEFAULT_DIR", root.display().to_string()),
        ("FLYTE_SECRETS_FILE_PREFIX", "pfx-".to_string()),
        ("FLYTE_SECRETS_ENV_PREFIX", "_TEST_".to_string()),
        ("_TEST_FROM-ENV_API_KEY", "env-secret".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let cases = [
        ("Warehouse-OAuth", "", "Client_Secret"),
        ("versioned", "V2", "KEY"),
        ("grouponly", "", ""),
        ("from-env", "", "api_key"),
        ("missing", "", "k"),
    ];

    let input = json!({"cases": cases.iter().map(|(g, v, k)| json!({"group": g, "group_version": v, "key": k})).collect::<Vec<_>>()});
    let mut child = Command::new(common::python())
        .arg(common::workspace().join("tests/python/flytekit_secrets.py"))
        .env_clear()
        .envs(&env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let flytekit: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();

    let resolver = SecretResolver::new(
        SecretsConfig {
            default_dir: root.clone(),
            env_prefix: "_TEST_".into(),
            file_prefix: "pfx-".into(),
        },
        Arc::new(env.clone()),
    );
    for ((group, version, key), expected) in cases.iter().zip(&flytekit) {
        let secret = Secret {
            group: group.to_string(),
            group_version: version.to_string(),
            key: key.to_string(),
            ..Default::default()
        };
        assert_eq!(
            resolver.env_var_name(&secret),
            expected["env_var"],
            "{group}"
        );
        assert_eq!(
            resolver.file_path(&secret).display().to_string(),
            expected["file"],
            "{group}"
        );
        let ours = resolver.read(&secret).ok().map(|s| s.expose().to_string());
        assert_eq!(ours.as_deref(), expected["value"].as_str(), "{group}");
    }
    assert_eq!(
        flytekit[0]["value"], "file-secret",
        "the fixture exercises a real read"
    );
    assert_eq!(flytekit[3]["value"], "env-secret");
}
