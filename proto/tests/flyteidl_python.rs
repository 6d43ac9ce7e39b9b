//! The generated types against the real PyPI flyteidl (tests/python/flyteidl_fixtures.py, run with
//! the tests/.venv Python that `tests/run` installs): bytes both ways, JSON in both spellings and
//! out, what JSON is accepted, and every descriptor of the file.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use flyte_auth_proto::flyteidl::core::{
    secret::MountType, Identity, OAuth2Client, OAuth2TokenRequest, Secret, SecurityContext,
};
use flyte_auth_proto::{annotation, descriptor_pool, from_json, to_json};
use prost::Message;
use prost_reflect::{DynamicMessage, Kind, MessageDescriptor, SerializeOptions};
use serde_json::{json, Value};

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("FLYTE_AUTH_TEST_PYTHON") {
        return p.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/.venv/bin/python");
    assert!(
        venv.exists(),
        "no Python venv with flyteidl at {}: run `tests/run` (it installs tests/requirements.txt), \
         or point FLYTE_AUTH_TEST_PYTHON at a Python that has those packages",
        venv.display()
    );
    venv
}

fn fixtures(mode: &str, stdin: &str) -> String {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/python/flyteidl_fixtures.py");
    let python = python();
    let mut child = Command::new(&python)
        .arg(&script)
        .arg(mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {} {}: {e}", python.display(), script.display()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "flyteidl_fixtures.py {mode} failed (its stderr is above)"
    );
    String::from_utf8(out.stdout).unwrap()
}

/// One JSON line per item to `mode`, one JSON line back per item.
fn fixtures_lines(mode: &str, items: &[Value]) -> Vec<Value> {
    let input: String = items.iter().map(|l| format!("{l}\n")).collect();
    let out: Vec<Value> = fixtures(mode, &input)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(out.len(), items.len(), "one answer per line");
    out
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
    assert_eq!(case["message"], T::full_name(), "{name}: message type");
    let bytes = unhex(case["hex"].as_str().unwrap());
    let decoded = T::decode(&bytes[..]).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        hex(&decoded.encode_to_vec()),
        case["hex"],
        "{name}: re-encoding differs"
    );
    assert_eq!(
        from_json::<T>(&case["json"]).unwrap_or_else(|e| panic!("{name}: {e}")),
        decoded,
        "{name}: camelCase JSON"
    );
    assert_eq!(
        from_json::<T>(&case["json_snake"]).unwrap_or_else(|e| panic!("{name}: {e}")),
        decoded,
        "{name}: snake_case JSON"
    );
    assert_eq!(to_json(&decoded), case["json"], "{name}: to_json");
    decoded
}

fn python_cases() -> serde_json::Map<String, Value> {
    let cases: Value = serde_json::from_str(&fixtures("encode", "")).unwrap();
    cases.as_object().unwrap().clone()
}

#[test]
fn python_bytes_and_json_decode_to_the_same_values() {
    let cases = python_cases();
    assert!(cases.len() >= 14, "{} cases", cases.len());
    for (name, case) in &cases {
        match case["message"].as_str().unwrap() {
            "flyteidl.core.OAuth2TokenRequest" => drop(check::<OAuth2TokenRequest>(name, case)),
            "flyteidl.core.OAuth2Client" => drop(check::<OAuth2Client>(name, case)),
            "flyteidl.core.Identity" => drop(check::<Identity>(name, case)),
            "flyteidl.core.Secret" => drop(check::<Secret>(name, case)),
            "flyteidl.core.SecurityContext" => drop(check::<SecurityContext>(name, case)),
            other => panic!("unexpected message {other}"),
        }
    }
}

#[test]
fn python_cases_decode_to_the_expected_rust_values() {
    let cases = python_cases();
    let secret = Secret {
        group: "warehouse-oauth".into(),
        group_version: "v2".into(),
        key: "client_secret".into(),
        mount_requirement: MountType::File as i32,
        env_var: "WAREHOUSE_SECRET".into(),
    };
    let client = OAuth2Client {
        client_id: "warehouse-reader".into(),
        client_secret: Some(secret),
    };
    let request = OAuth2TokenRequest {
        name: "warehouse".into(),
        r#type: 0,
        client: Some(client.clone()),
        idp_discovery_endpoint: "https://idp.example.com/.well-known/openid-configuration".into(),
        token_endpoint: "https://idp.example.com/oauth2/token".into(),
    };
    assert_eq!(
        check::<OAuth2TokenRequest>("token_request", &cases["token_request"]),
        request
    );
    assert_eq!(
        check::<OAuth2Client>("oauth2_client", &cases["oauth2_client"]),
        client
    );
    let identity = Identity {
        iam_role: "arn:aws:iam::1:role/r".into(),
        k8s_service_account: "sa".into(),
        oauth2_client: Some(OAuth2Client {
            client_id: "c".into(),
            client_secret: None,
        }),
        execution_identity: "alice".into(),
    };
    assert_eq!(check::<Identity>("identity", &cases["identity"]), identity);
    assert_eq!(
        check::<SecurityContext>("security_context", &cases["security_context"]),
        SecurityContext {
            run_as: Some(identity),
            secrets: vec![
                Secret {
                    group: "a".into(),
                    ..Default::default()
                },
                Secret {
                    group: "b".into(),
                    key: "k".into(),
                    ..Default::default()
                },
            ],
            tokens: vec![
                request,
                OAuth2TokenRequest {
                    name: "second".into(),
                    token_endpoint: "https://t".into(),
                    ..Default::default()
                },
            ],
        }
    );
    for (case, mount) in [
        ("secret_any", MountType::Any),
        ("secret_env_var", MountType::EnvVar),
        ("secret_file", MountType::File),
    ] {
        let decoded = check::<Secret>(case, &cases[case]);
        assert_eq!(decoded.mount_requirement(), mount, "{case}");
        assert_eq!((decoded.group.as_str(), decoded.key.as_str()), ("g", "k"));
    }
    assert_eq!(
        check::<Secret>("secret_custom_env_var", &cases["secret_custom_env_var"]).env_var,
        "MY_VAR"
    );
    assert_eq!(
        check::<OAuth2TokenRequest>(
            "token_request_empty_client",
            &cases["token_request_empty_client"]
        )
        .client,
        Some(OAuth2Client::default()),
        "an empty but present sub-message stays present"
    );
    assert_eq!(
        check::<Secret>("secret_empty", &cases["secret_empty"]),
        Secret::default()
    );
    assert_eq!(
        check::<SecurityContext>("empty_context", &cases["empty_context"]),
        SecurityContext::default()
    );
    let unknown =
        check::<OAuth2TokenRequest>("unknown_enum_numbers", &cases["unknown_enum_numbers"]);
    assert_eq!(unknown.r#type, 7);
    assert_eq!(
        unknown
            .client
            .unwrap()
            .client_secret
            .unwrap()
            .mount_requirement,
        9
    );
    let unicode = check::<OAuth2TokenRequest>("unicode", &cases["unicode"]);
    assert_eq!(unicode.name, "tök€n-ü 🔑");
    let client = unicode.client.unwrap();
    assert_eq!(client.client_id, "客户");
    assert_eq!(client.client_secret.unwrap().key, "ключ");
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
                mount_requirement: MountType::EnvVar as i32,
                env_var: "API_SECRET".into(),
                ..Default::default()
            }),
        }),
        idp_discovery_endpoint: "https://idp/".into(),
        token_endpoint: String::new(),
    };
    let ctx = SecurityContext {
        run_as: Some(Identity {
            k8s_service_account: "sa".into(),
            ..Default::default()
        }),
        tokens: vec![request.clone()],
        secrets: vec![
            Secret {
                group: "s".into(),
                ..Default::default()
            },
            Secret::default(),
        ],
    };
    let odd = OAuth2TokenRequest {
        name: "Zürich ☃".into(),
        r#type: 3,
        ..Default::default()
    };
    let decoded = fixtures_lines(
        "decode",
        &[
            json!({"message": "flyteidl.core.OAuth2TokenRequest", "hex": hex(&request.encode_to_vec())}),
            json!({"message": "flyteidl.core.SecurityContext", "hex": hex(&ctx.encode_to_vec())}),
            json!({"message": "flyteidl.core.OAuth2TokenRequest", "hex": hex(&odd.encode_to_vec())}),
        ],
    );
    let request_json = json!({
        "name": "api",
        "client": {"client_id": "cid", "client_secret": {"group": "grp", "key": "k", "mount_requirement": "ENV_VAR", "env_var": "API_SECRET"}},
        "idp_discovery_endpoint": "https://idp/"
    });
    assert_eq!(decoded[0], request_json);
    assert_eq!(
        decoded[1],
        json!({
            "run_as": {"k8s_service_account": "sa"},
            "secrets": [{"group": "s"}, {}],
            "tokens": [request_json],
        })
    );
    assert_eq!(decoded[2], json!({"name": "Zürich ☃", "type": 3}));
}

/// Our parse of `json`, rendered with proto field names as Python's answer is.
fn ours_snake(message: &MessageDescriptor, json: &Value) -> Result<Value, String> {
    macro_rules! parse {
        ($($t:ty),*) => {
            match message.full_name() {
                $(n if n == <$t as prost::Name>::full_name() => {
                    from_json::<$t>(json).map(|m| m.encode_to_vec()).map_err(|e| e.to_string())?
                })*
                other => panic!("no Rust type for {other}"),
            }
        };
    }
    let bytes = parse!(
        OAuth2TokenRequest,
        OAuth2Client,
        Identity,
        Secret,
        SecurityContext
    );
    let dynamic = DynamicMessage::decode(message.clone(), &bytes[..]).unwrap();
    Ok(dynamic
        .serialize_with_options(
            serde_json::value::Serializer,
            &SerializeOptions::new().use_proto_field_name(true),
        )
        .unwrap())
}

#[test]
fn json_is_accepted_and_rejected_as_python_does() {
    const TOKEN: &str = "flyteidl.core.OAuth2TokenRequest";
    const CONTEXT: &str = "flyteidl.core.SecurityContext";
    // Accepted by both, to the same value.
    let agree_ok = [
        (TOKEN, json!({})),
        (
            TOKEN,
            json!({"name": "n", "type": "CLIENT_CREDENTIALS", "tokenEndpoint": "https://t",
            "client": {"client_id": "c", "clientSecret": {"group": "g", "mount_requirement": "FILE", "envVar": "E"}}}),
        ),
        (
            TOKEN,
            json!({"idpDiscoveryEndpoint": "https://d", "idp_discovery_endpoint": "https://d"}),
        ),
        (TOKEN, json!({"type": 0})),
        (TOKEN, json!({"type": 7})),
        (TOKEN, json!({"type": -1})),
        (TOKEN, json!({"name": null, "client": null, "type": null})),
        (TOKEN, json!({"client": {}})),
        (
            TOKEN,
            json!({"client": {"clientSecret": {"mountRequirement": null}}}),
        ),
        (
            TOKEN,
            json!({"client": {"clientSecret": {"mountRequirement": "ENV_VAR", "key": "\u{0}\n\"\\"}}}),
        ),
        (TOKEN, json!({"name": "ключ 🔑"})),
        (
            CONTEXT,
            json!({"secrets": null, "tokens": [{}], "runAs": {}}),
        ),
        (
            CONTEXT,
            json!({"run_as": {"oauth2Client": {"client_id": "c"}, "executionIdentity": "e"},
            "secrets": [{"group": "a"}, {}], "tokens": [{"name": "a"}, {"name": "b", "type": 1}]}),
        ),
    ];
    // Rejected by both.
    let agree_err = [
        (TOKEN, json!({"bogus": 1})),
        (TOKEN, json!({"Name": "n"})),
        (TOKEN, json!({"token-endpoint": "t"})),
        (TOKEN, json!({"client": {"clientId": "c", "bogus": 1}})),
        (TOKEN, json!({"type": "PASSWORD"})),
        (TOKEN, json!({"type": "client_credentials"})),
        (
            TOKEN,
            json!({"client": {"clientSecret": {"mountRequirement": "FOO"}}}),
        ),
        (TOKEN, json!({"name": 5})),
        (TOKEN, json!({"name": ["n"]})),
        (TOKEN, json!({"client": 5})),
        (CONTEXT, json!({"secrets": {"group": "a"}})),
        (CONTEXT, json!({"secrets": [null]})),
        (
            CONTEXT,
            json!({"tokens": [{"client": {"clientSecret": {"mountRequirement": "X"}}}]}),
        ),
    ];
    // Python's json_format is laxer than the proto3 JSON mapping here; we keep to the mapping.
    let python_laxer = [
        (TOKEN, json!({"type": 1.5})),
        (TOKEN, json!({"type": true})),
        (TOKEN, json!({"type": "7"})),
        (TOKEN, json!({"type": 4294967296_u64})),
        (TOKEN, json!([])),
    ];
    let items: Vec<Value> = agree_ok
        .iter()
        .chain(&agree_err)
        .chain(&python_laxer)
        .map(|(m, j)| json!({"message": m, "json": j}))
        .collect();
    let answers = fixtures_lines("parse", &items);
    let pool = descriptor_pool();
    for (i, (item, answer)) in items.iter().zip(&answers).enumerate() {
        let message = pool
            .get_message_by_name(item["message"].as_str().unwrap())
            .unwrap();
        let ours = ours_snake(&message, &item["json"]);
        let json = &item["json"];
        if i < agree_ok.len() {
            assert_eq!(
                ours.as_ref().ok(),
                Some(&answer["ok"]),
                "{json}: Python {answer}, ours {ours:?}"
            );
        } else if i < agree_ok.len() + agree_err.len() {
            assert!(answer.get("error").is_some(), "{json}: Python {answer}");
            assert!(ours.is_err(), "{json}: Python {answer}, ours {ours:?}");
        } else {
            assert!(answer.get("ok").is_some(), "{json}: Python {answer}");
            assert!(ours.is_err(), "{json}: ours {ours:?}");
        }
    }
}

const FILES: [&str; 2] = [
    "flyteidl/core/security.proto",
    "flyteidl/service/auth.proto",
];

/// One file of our descriptor pool in the shape `flyteidl_fixtures.py descriptors` prints.
fn our_descriptors(name: &str) -> Value {
    let pool = descriptor_pool();
    let file = pool.get_file_by_name(name).unwrap();
    let mut messages = Vec::new();
    let mut enums: Vec<_> = file.enums().collect();
    let mut queue: Vec<_> = file.messages().collect();
    while let Some(m) = queue.pop() {
        queue.extend(m.child_messages());
        enums.extend(m.child_enums());
        let fields: Vec<Value> = m
            .fields()
            .map(|f| {
                let type_name = match f.kind() {
                    Kind::Message(t) => Some(t.full_name().to_owned()),
                    Kind::Enum(t) => Some(t.full_name().to_owned()),
                    _ => None,
                };
                json!({
                    "name": f.name(),
                    "number": f.number(),
                    "type": f.field_descriptor_proto().r#type,
                    "type_name": type_name,
                    "json_name": f.json_name(),
                    "repeated": f.is_list(),
                    "presence": f.supports_presence(),
                    "oneof": f.containing_oneof().map(|o| o.name().to_owned()),
                })
            })
            .collect();
        messages.push(json!({"name": m.full_name(), "fields": fields}));
    }
    messages.sort_by_key(|m| m["name"].as_str().unwrap().to_owned());
    enums.sort_by_key(|e| e.full_name().to_owned());
    let enums: Vec<Value> = enums
        .iter()
        .map(|e| {
            let values: Vec<Value> = e
                .values()
                .map(|v| json!({"name": v.name(), "number": v.number()}))
                .collect();
            json!({"name": e.full_name(), "values": values})
        })
        .collect();
    let services: Vec<Value> = file
        .services()
        .map(|s| {
            let methods: Vec<Value> = s
                .methods()
                .map(|m| {
                    json!({
                        "name": m.name(),
                        "input": m.input().full_name(),
                        "output": m.output().full_name(),
                        "client_streaming": m.is_client_streaming(),
                        "server_streaming": m.is_server_streaming(),
                    })
                })
                .collect();
            json!({"name": s.full_name(), "methods": methods})
        })
        .collect();
    json!({
        "file": file.name(),
        "package": file.package_name(),
        "syntax": file.file_descriptor_proto().syntax(),
        "messages": messages,
        "enums": enums,
        "services": services,
    })
}

#[test]
fn the_pool_holds_our_files_and_no_imports() {
    let files: Vec<_> = descriptor_pool()
        .files()
        .map(|f| f.name().to_owned())
        .collect();
    assert_eq!(files, FILES);
}

#[test]
fn every_descriptor_matches_flyteidl() {
    for file in FILES {
        descriptors_match(file);
    }
}

fn descriptors_match(file: &str) {
    let python: Value = serde_json::from_str(&fixtures("descriptors", file)).unwrap();
    let ours = our_descriptors(file);
    // Message by message first, for a readable failure.
    let names = |v: &Value| -> Vec<String> {
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&ours), names(&python), "messages");
    for (a, b) in ours["messages"]
        .as_array()
        .unwrap()
        .iter()
        .zip(python["messages"].as_array().unwrap())
    {
        assert_eq!(a, b, "fields of {}", a["name"]);
    }
    assert_eq!(ours, python);
}

/// One case through the annotation form: Python's text, encoded by propeller's rule, decodes to
/// the case's message here; returns our text of it for Python to parse back.
fn annotation_case<T>(name: &str, case: &Value) -> (Value, String)
where
    T: Message + prost::Name + Default + PartialEq + std::fmt::Debug,
{
    let expected = T::decode(&unhex(case["hex"].as_str().unwrap())[..]).unwrap();
    let python_text = case["text"].as_str().unwrap();
    let value = case["annotation"].as_str().unwrap();
    assert_eq!(
        annotation::encode_text(python_text),
        value,
        "{name}: base32"
    );
    assert_eq!(
        annotation::decode::<T>(value).unwrap(),
        expected,
        "{name}: decode"
    );
    let ours = annotation::to_text_format(&expected);
    (
        json!({"message": case["message"], "text": ours}),
        case["hex"].as_str().unwrap().to_string(),
    )
}

#[test]
fn annotations_match_python_text_format_and_propellers_base32() {
    let cases = python_cases();
    let mut ours = Vec::new();
    let mut want = Vec::new();
    for (name, case) in &cases {
        let (line, hex) = match case["message"].as_str().unwrap() {
            "flyteidl.core.OAuth2TokenRequest" => annotation_case::<OAuth2TokenRequest>(name, case),
            "flyteidl.core.OAuth2Client" => annotation_case::<OAuth2Client>(name, case),
            "flyteidl.core.Identity" => annotation_case::<Identity>(name, case),
            "flyteidl.core.Secret" => annotation_case::<Secret>(name, case),
            "flyteidl.core.SecurityContext" => annotation_case::<SecurityContext>(name, case),
            other => panic!("unexpected message {other}"),
        };
        ours.push(line);
        want.push((name.clone(), hex));
    }
    // Our text format parses in Python's text_format to the same bytes.
    for (answer, (name, hex)) in fixtures_lines("parse_text", &ours).iter().zip(want) {
        assert_eq!(answer["hex"], json!(hex), "{name}: {answer}");
    }
}

#[test]
fn admin_service_methods_match_flyteidl() {
    let python: Value = serde_json::from_str(&fixtures("admin_services", "")).unwrap();
    let ours: Value = flyte_auth_proto::services::FLYTEADMIN_SERVICES
        .iter()
        .map(|(service, methods)| json!([service, methods]))
        .collect();
    assert_eq!(ours, python);
    // The one service the crate has in full agrees with the list.
    let auth = descriptor_pool()
        .get_service_by_name("flyteidl.service.AuthMetadataService")
        .unwrap();
    let methods: Vec<String> = auth.methods().map(|m| m.name().to_string()).collect();
    assert!(flyte_auth_proto::services::FLYTEADMIN_SERVICES.contains(&(
        "flyteidl.service.AuthMetadataService",
        &["GetOAuth2Metadata", "GetPublicClientConfig"][..]
    )));
    assert_eq!(methods, ["GetOAuth2Metadata", "GetPublicClientConfig"]);
}

#[test]
fn committed_admin_descriptors_are_what_the_pinned_flyteidl_gives() {
    let python = unhex(fixtures("admin_descriptor_set", "").trim());
    assert!(
        python == flyte_auth_proto::ADMIN_DESCRIPTOR_SET,
        "proto/descriptors/flyteidl-admin.binpb differs from PyPI flyteidl's descriptors: \
         regenerate it with `tests/.venv/bin/python tests/python/flyteidl_fixtures.py \
         admin_descriptor_set | xxd -r -p > proto/descriptors/flyteidl-admin.binpb`"
    );
    // Every method the crate lists has its service and input type in the pool, and nothing more.
    let pool = flyte_auth_proto::admin_pool();
    for (service, methods) in flyte_auth_proto::services::FLYTEADMIN_SERVICES {
        let s = pool
            .get_service_by_name(service)
            .unwrap_or_else(|| panic!("{service} not in admin_pool"));
        let names: Vec<String> = s.methods().map(|m| m.name().to_string()).collect();
        assert_eq!(names, *methods, "{service}");
        for m in s.methods() {
            assert!(!m.is_client_streaming(), "{service}/{} streams", m.name());
        }
    }
}
