//! The generated types against the real PyPI flyteidl: bytes both ways, JSON both spellings, and
//! every field's name, number and type.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use flyte_auth_proto::flyteidl::core::{OAuth2Client, OAuth2TokenRequest, Secret, SecurityContext};
use flyte_auth_proto::{descriptor_pool, from_json, to_json};
use prost::Message;
use serde_json::{json, Value};

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("FLYTE_AUTH_TEST_PYTHON") {
        return p.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/.venv/bin/python");
    assert!(
        venv.exists(),
        "no Python venv with flyteidl at {}: run `tests/run` (it installs tests/requirements.txt)",
        venv.display()
    );
    venv
}

fn fixtures(mode: &str, stdin: &str) -> String {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/python/flyteidl_fixtures.py");
    let mut child = Command::new(python())
        .arg(script)
        .arg(mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run flyteidl_fixtures.py");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "flyteidl_fixtures.py {mode} failed");
    String::from_utf8(out.stdout).unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Decodes Python's bytes as `T`, re-encodes them identically, and parses both JSON spellings to
/// the same value, which renders back to Python's camelCase JSON.
fn check<T: Message + prost::Name + Default + PartialEq + std::fmt::Debug>(
    name: &str,
    case: &Value,
) -> T {
    let bytes = unhex(case["hex"].as_str().unwrap());
    let decoded = T::decode(&bytes[..]).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        hex(&decoded.encode_to_vec()),
        case["hex"],
        "{name}: re-encoding differs"
    );
    assert_eq!(
        from_json::<T>(&case["json"]).unwrap(),
        decoded,
        "{name}: camelCase JSON"
    );
    assert_eq!(
        from_json::<T>(&case["json_snake"]).unwrap(),
        decoded,
        "{name}: snake_case JSON"
    );
    assert_eq!(to_json(&decoded), case["json"], "{name}: to_json");
    decoded
}

#[test]
fn python_bytes_and_json_decode_to_the_same_values() {
    let cases: Value = serde_json::from_str(&fixtures("encode", "")).unwrap();
    let cases = cases.as_object().unwrap();
    assert!(cases.len() >= 8);
    for (name, case) in cases {
        match case["message"].as_str().unwrap() {
            "flyteidl.core.OAuth2TokenRequest" => drop(check::<OAuth2TokenRequest>(name, case)),
            "flyteidl.core.Secret" => drop(check::<Secret>(name, case)),
            "flyteidl.core.SecurityContext" => drop(check::<SecurityContext>(name, case)),
            other => panic!("unexpected message {other}"),
        }
    }
    let full: OAuth2TokenRequest = check("token_request", &cases["token_request"]);
    let client = full.client.unwrap();
    assert_eq!(client.client_id, "warehouse-reader");
    let secret = client.client_secret.unwrap();
    assert_eq!(
        (
            secret.group.as_str(),
            secret.group_version.as_str(),
            secret.key.as_str()
        ),
        ("warehouse-oauth", "v2", "client_secret")
    );
    assert_eq!(secret.mount_requirement, 2);
    assert_eq!(secret.env_var, "WAREHOUSE_SECRET");
    assert_eq!(full.token_endpoint, "https://idp.example.com/oauth2/token");
    let ctx: SecurityContext = check("security_context", &cases["security_context"]);
    assert_eq!(ctx.tokens.len(), 2);
    assert_eq!(ctx.run_as.unwrap().execution_identity, "alice");
    let unicode: OAuth2TokenRequest = check("unicode", &cases["unicode"]);
    assert_eq!(unicode.name, "tök€n-ü");
}

#[test]
fn rust_bytes_decode_in_python() {
    let request = OAuth2TokenRequest {
        name: "api".into(),
        r#type: 0,
        client: Some(OAuth2Client {
            client_id: "cid".into(),
            client_secret: Some(Secret {
                group: "grp".into(),
                key: "k".into(),
                mount_requirement: 1,
                ..Default::default()
            }),
        }),
        idp_discovery_endpoint: "https://idp/".into(),
        token_endpoint: String::new(),
    };
    let ctx = SecurityContext {
        tokens: vec![request.clone()],
        secrets: vec![Secret {
            group: "s".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let lines = [
        json!({"message": "flyteidl.core.OAuth2TokenRequest", "hex": hex(&request.encode_to_vec())}),
        json!({"message": "flyteidl.core.SecurityContext", "hex": hex(&ctx.encode_to_vec())}),
    ];
    let input: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let decoded: Vec<Value> = fixtures("decode", &input)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        decoded[0],
        json!({
            "name": "api",
            "client": {"client_id": "cid", "client_secret": {"group": "grp", "key": "k", "mount_requirement": "ENV_VAR"}},
            "idp_discovery_endpoint": "https://idp/"
        })
    );
    assert_eq!(decoded[1]["tokens"][0], decoded[0]);
    assert_eq!(decoded[1]["secrets"], json!([{"group": "s"}]));
}

#[test]
fn every_field_matches_flyteidl() {
    let python: Vec<Value> = serde_json::from_str(&fixtures("descriptors", "")).unwrap();
    let pool = descriptor_pool();
    for f in &python {
        let message = pool
            .get_message_by_name(f["message"].as_str().unwrap())
            .expect("message exists");
        let field = message
            .get_field_by_name(f["name"].as_str().unwrap())
            .unwrap_or_else(|| panic!("{}.{} missing", f["message"], f["name"]));
        assert_eq!(
            u64::from(field.number()),
            f["number"].as_u64().unwrap(),
            "{f}"
        );
        assert_eq!(
            field.field_descriptor_proto().r#type.map(i64::from),
            f["type"].as_i64(),
            "{f}"
        );
        assert_eq!(field.json_name(), f["json_name"], "{f}");
        assert_eq!(field.is_list(), f["repeated"].as_bool().unwrap(), "{f}");
    }
    let ours: usize = [
        "Secret",
        "OAuth2Client",
        "Identity",
        "OAuth2TokenRequest",
        "SecurityContext",
    ]
    .iter()
    .map(|n| {
        pool.get_message_by_name(&format!("flyteidl.core.{n}"))
            .unwrap()
            .fields()
            .count()
    })
    .sum();
    assert_eq!(ours, python.len(), "no field of ours that flyteidl lacks");
}
