use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::*;
use url::Url;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("secrets/app")).unwrap();
        std::fs::write(dir.path().join("secrets/app/secret"), "s3cr3t-value\n").unwrap();
        Self { dir }
    }

    fn env(&self, extra: &[(&str, &str)]) -> Arc<dyn Env> {
        let mut env: HashMap<String, String> = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.entry(ENV_SECRETS_DIR.into())
            .or_insert_with(|| self.dir.path().join("secrets").display().to_string());
        Arc::new(env)
    }

    fn yaml(&self, text: &str) -> std::path::PathBuf {
        let path = self.dir.path().join("agent.yaml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn load_json(&self, requests: &str) -> Result<Config, ConfigErrors> {
        Config::load(None, self.env(&[(ENV_TOKEN_REQUESTS, requests)]))
    }
}

fn request(name: &str) -> String {
    format!(
        r#"{{"name":"{name}","type":"CLIENT_CREDENTIALS","client":{{"clientId":"app","clientSecret":{{"group":"app","key":"secret"}}}},"tokenEndpoint":"https://idp.example/token"}}"#
    )
}

fn messages(errors: ConfigErrors) -> Vec<String> {
    errors.0.iter().map(ToString::to_string).collect()
}

#[test]
fn defaults_fit_a_pod() {
    let c = Config::load(None, Arc::new(HashMap::<String, String>::new())).unwrap();
    assert_eq!(c.tokens_dir, Path::new("/var/run/flyte/tokens"));
    assert_eq!(
        c.socket_path,
        Path::new("/var/run/flyte-auth-agent/agent.sock")
    );
    assert_eq!(c.health_addr.to_string(), "0.0.0.0:9911");
    assert_eq!((c.file_mode, c.socket_mode), (0o644, 0o666));
    assert_eq!(c.secrets.default_dir, Path::new("/etc/flyte/secrets"));
    assert_eq!(c.secrets.env_prefix, "_FSEC_");
    assert!(c.token_requests.is_empty());
}

#[test]
fn token_requests_from_env_json_camel_and_snake_case() {
    let f = Fixture::new();
    let json = format!(
        r#"[{}, {{"name":"snake","client":{{"client_id":"c2","client_secret":{{"group":"app","key":"secret","mount_requirement":"FILE"}}}},"idp_discovery_endpoint":"http://127.0.0.1:1/","scopes":"a b","audience":"flyteadmin","client_auth_method":"client_secret_post"}}]"#,
        request("camel")
    );
    let c = f.load_json(&json).unwrap();
    let [camel, snake] = &c.token_requests[..] else {
        panic!("two requests")
    };
    assert_eq!(camel.name, "camel");
    assert_eq!(camel.client_id, "app");
    assert_eq!(
        camel.endpoint,
        Endpoint::Token(Url::parse("https://idp.example/token").unwrap())
    );
    assert_eq!(camel.client_auth, ClientAuth::ClientSecretBasic);
    assert_eq!(snake.client_id, "c2");
    assert_eq!(
        snake.endpoint,
        Endpoint::Discovery(Url::parse("http://127.0.0.1:1/").unwrap())
    );
    assert_eq!(snake.scopes, ["a", "b"]);
    assert_eq!(snake.audience.as_deref(), Some("flyteadmin"));
    assert_eq!(snake.client_auth, ClientAuth::ClientSecretPost);
    assert_eq!(snake.origin, "env FLYTE_AUTH_AGENT_TOKEN_REQUESTS [1]");
}

#[test]
fn yaml_file_with_env_overrides() {
    let f = Fixture::new();
    let path = f.yaml(
        r#"
tokens_path_prefix: /from/file
socket: /file/agent.sock
file_mode: "0640"
idp: {timeout: 3s}
refresh: {at_fraction: 0.5, jitter: 0.2, min_backoff: 2s, max_backoff: 30s, retry_after_attempts: 3, start_jitter: 6s}
token_requests:
  - name: api
    tokenEndpoint: https://idp.example/token
    client: {clientId: app, clientSecret: {group: app, key: secret}}
    scopes: [all, offline]
"#,
    );
    let c = Config::load(Some(&path), f.env(&[(ENV_TOKENS_PATH_PREFIX, "/from/env")])).unwrap();
    assert_eq!(c.tokens_dir, Path::new("/from/env"));
    assert_eq!(c.socket_path, Path::new("/file/agent.sock"));
    assert_eq!(c.file_mode, 0o640);
    assert_eq!(c.idp.timeout, Duration::from_secs(3));
    assert_eq!(c.refresh.at_fraction, 0.5);
    assert_eq!(c.refresh.min_backoff, Duration::from_secs(2));
    assert_eq!(c.refresh.retry_after_attempts, 3);
    assert_eq!(c.refresh.start_jitter, Duration::from_secs(6));
    assert_eq!(c.token_requests[0].scopes, ["all", "offline"]);
    assert_eq!(
        c.token_requests[0].origin,
        format!("config file {} token_requests[0]", path.display())
    );
}

#[test]
fn every_bad_request_is_reported_at_once_naming_the_field() {
    let f = Fixture::new();
    let long = "x".repeat(256);
    let bad = |name: &str| request(name);
    let json = format!(
        "[{}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}]",
        bad(""),
        bad(".."),
        bad("a/b"),
        bad("nul\\u0000x"),
        bad(&long),
        bad("dup"),
        bad("dup"),
        r#"{"name":"typed","type":"PASSWORD","client":{"clientId":"app","clientSecret":{"group":"app","key":"secret"}},"tokenEndpoint":"https://idp/t"}"#,
        r#"{"name":"noend","client":{"clientId":"app","clientSecret":{"group":"app","key":"secret"}}}"#,
        r#"{"name":"badurl","client":{"clientId":"app","clientSecret":{"group":"app","key":"secret"}},"tokenEndpoint":"not a url"}"#,
        r#"{"name":"plain","client":{"clientId":"app","clientSecret":{"group":"app","key":"secret"}},"tokenEndpoint":"http://idp.example/t"}"#,
        r#"{"name":"noid","client":{"clientSecret":{"group":"app","key":"secret"}},"tokenEndpoint":"https://idp/t"}"#,
        r#"{"name":"nosecret","client":{"clientId":"app","clientSecret":{"group":"missing","key":"secret"}},"tokenEndpoint":"https://idp/t"}"#,
    );
    let errors = messages(f.load_json(&json).unwrap_err());
    let src = "env FLYTE_AUTH_AGENT_TOKEN_REQUESTS";
    let expected_starts = [
        format!("{src}: [0].name: is empty"),
        format!("{src}: [1].name: \"..\" is not a file name"),
        format!("{src}: [2].name: \"a/b\" contains '/'"),
        format!("{src}: [3].name: contains a NUL byte"),
        format!("{src}: [4].name: is 256 bytes"),
        format!("{src}: [6].name: duplicate token request name \"dup\" (first defined at {src} [5])"),
        format!("{src}: [7].type: unknown token request type \"PASSWORD\""),
        format!("{src}: [8]: neither tokenEndpoint nor idpDiscoveryEndpoint is set"),
        format!("{src}: [9].tokenEndpoint: \"not a url\" is not a URL"),
        format!("{src}: [10].tokenEndpoint: http://idp.example/t is plain http to a non-loopback host"),
        format!("{src}: [11].client.clientId: is missing"),
        format!("{src}: [12].client.clientSecret: secret not found: looked for env var _FSEC_MISSING_SECRET and file"),
    ];
    assert_eq!(errors.len(), expected_starts.len(), "{errors:#?}");
    for (got, want) in errors.iter().zip(&expected_starts) {
        assert!(
            got.starts_with(want.as_str()),
            "got {got:?}\nwant prefix {want:?}"
        );
    }
    assert!(!errors.join("\n").contains("s3cr3t-value"));
}

#[test]
fn structural_json_errors_name_the_path() {
    let f = Fixture::new();
    let errors = messages(
        f.load_json(r#"[{"name":"x","client":{"clientId":"a","bogus":1}}]"#)
            .unwrap_err(),
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("env FLYTE_AUTH_AGENT_TOKEN_REQUESTS: [0]: "),
        "{errors:?}"
    );
    assert!(errors[0].contains("bogus"), "{errors:?}");
    let errors = messages(f.load_json("{not json").unwrap_err());
    assert!(
        errors[0].starts_with("env FLYTE_AUTH_AGENT_TOKEN_REQUESTS: (value): not a JSON array"),
        "{errors:?}"
    );
    let errors = messages(f.load_json(r#"["str"]"#).unwrap_err());
    assert_eq!(
        errors,
        ["env FLYTE_AUTH_AGENT_TOKEN_REQUESTS: [0]: is not an object"]
    );
}

#[test]
fn both_endpoints_prefers_token_endpoint_with_a_notice() {
    let f = Fixture::new();
    let json = r#"[{"name":"both","client":{"clientId":"a","clientSecret":{"group":"app","key":"secret"}},"tokenEndpoint":"https://idp/t","idpDiscoveryEndpoint":"https://other/"}]"#;
    let c = f.load_json(json).unwrap();
    assert_eq!(
        c.token_requests[0].endpoint,
        Endpoint::Token(Url::parse("https://idp/t").unwrap())
    );
    assert_eq!(c.notices.len(), 1);
    assert!(
        c.notices[0].contains("using tokenEndpoint"),
        "{:?}",
        c.notices
    );
}

#[test]
fn insecure_http_needs_the_flag() {
    let f = Fixture::new();
    let json = r#"[{"name":"p","client":{"clientId":"a","clientSecret":{"group":"app","key":"secret"}},"tokenEndpoint":"http://idp.internal/t"}]"#;
    assert!(f.load_json(json).is_err());
    let env = f.env(&[
        (ENV_TOKEN_REQUESTS, json),
        ("FLYTE_AUTH_AGENT_ALLOW_INSECURE_HTTP", "true"),
    ]);
    assert!(Config::load(None, env).is_ok());
    for ok in [
        "http://127.0.0.1:8080/t",
        "http://localhost/t",
        "http://[::1]/t",
        "https://x/t",
    ] {
        assert!(
            check_idp_url(&Url::parse(ok).unwrap(), false).is_ok(),
            "{ok}"
        );
    }
    assert!(check_idp_url(&Url::parse("ftp://x/t").unwrap(), true).is_err());
}

#[test]
fn bad_top_level_values_each_reported() {
    let f = Fixture::new();
    let path = f.yaml("file_mode: \"999\"\nsocket_mode: \"0o660\"\nhealth_addr: nowhere\nlog_format: xml\nidp: {timeout: soon}\nrefresh: {at_fraction: 1.5}\n");
    let errors = messages(
        Config::load(Some(&path), f.env(&[("FLYTE_AUTH_AGENT_FILE_MODE", "abc")])).unwrap_err(),
    );
    let src = format!("config file {}", path.display());
    assert_eq!(
        errors,
        [
            format!("{src}: health_addr: \"nowhere\" is not an address like 0.0.0.0:9911"),
            format!("{src}: log_format: \"xml\" is not text or json"),
            "env FLYTE_AUTH_AGENT_FILE_MODE: file_mode: \"abc\" is not an octal file mode like \"0644\"".to_string(),
            format!("{src}: idp.timeout: \"soon\" is not a duration like 10s or 1h30m (expected number at 0)"),
            format!("{src}: refresh.at_fraction: 1.5 is not a fraction in [0, 1)"),
        ]
    );
}

#[test]
fn refresh_max_lifetime_defaults_to_a_year_and_is_checked() {
    let f = Fixture::new();
    let c = Config::load(None, f.env(&[])).unwrap();
    assert_eq!(c.refresh.max_lifetime, Duration::from_secs(365 * 86_400));
    let path = f.yaml("refresh: {max_lifetime: 2h}\n");
    let c = Config::load(Some(&path), f.env(&[])).unwrap();
    assert_eq!(c.refresh.max_lifetime, Duration::from_secs(7200));
    let src = format!("config file {}", path.display());
    for (yaml, field, problem) in [
        (
            "refresh: {max_lifetime: 0s}\n",
            "refresh.max_lifetime",
            "must be above zero and at most 100 years",
        ),
        (
            "refresh: {max_lifetime: 101years}\n",
            "refresh.max_lifetime",
            "must be above zero and at most 100 years",
        ),
        (
            "refresh: {max_lifetime: 1m}\n",
            "refresh.default_lifetime",
            "must not exceed refresh.max_lifetime",
        ),
    ] {
        let path = f.yaml(yaml);
        let errors = messages(Config::load(Some(&path), f.env(&[])).unwrap_err());
        assert_eq!(errors, [format!("{src}: {field}: {problem}")], "{yaml}");
    }
}

#[test]
fn start_jitter_and_retry_after_attempts_default_and_are_checked() {
    let f = Fixture::new();
    let c = Config::load(None, f.env(&[])).unwrap();
    assert_eq!(
        c.refresh.start_jitter,
        Duration::ZERO,
        "a lone pod starts at once"
    );
    assert_eq!(c.refresh.retry_after_attempts, 5);
    let path = f.yaml("refresh: {start_jitter: 1h, retry_after_attempts: 0}\n");
    let c = Config::load(Some(&path), f.env(&[])).unwrap();
    assert_eq!(c.refresh.start_jitter, Duration::from_secs(3600));
    assert_eq!(c.refresh.retry_after_attempts, 0);
    let src = format!("config file {}", path.display());
    let path = f.yaml("refresh: {start_jitter: 61m}\n");
    let errors = messages(Config::load(Some(&path), f.env(&[])).unwrap_err());
    assert_eq!(
        errors,
        [format!("{src}: refresh.start_jitter: must be at most 1h")]
    );
    let path = f.yaml("refresh: {start_jitter: soon}\n");
    let errors = messages(Config::load(Some(&path), f.env(&[])).unwrap_err());
    assert!(errors[0].contains("refresh.start_jitter"), "{errors:?}");
    let path = f.yaml("refresh: {retry_after_attempts: -1}\n");
    assert!(Config::load(Some(&path), f.env(&[])).is_err());
    // The injector sets it by env, which wins over the file.
    let path = f.yaml("refresh: {start_jitter: 5s}\n");
    let env = f.env(&[("FLYTE_AUTH_AGENT_REFRESH_START_JITTER", "20s")]);
    let c = Config::load(Some(&path), env).unwrap();
    assert_eq!(c.refresh.start_jitter, Duration::from_secs(20));
    let env = f.env(&[("FLYTE_AUTH_AGENT_REFRESH_START_JITTER", "2h")]);
    let errors = messages(Config::load(None, env).unwrap_err());
    assert!(
        errors
            .iter()
            .any(|e| e.contains("refresh.start_jitter: must be at most 1h")),
        "{errors:?}"
    );
}

#[test]
fn the_paced_start_is_read_from_its_env_var_and_checked() {
    let f = Fixture::new();
    let c = Config::load(None, f.env(&[])).unwrap();
    assert_eq!(c.refresh.start_at, None, "unpaced: no wait");
    let at = SystemTime::now() + Duration::from_secs(30);
    let ms = ms_of(at);
    let c = Config::load(None, f.env(&[("FLYTE_AUTH_AGENT_START_AT", &ms)])).unwrap();
    assert_eq!(c.refresh.start_at.map(ms_of), Some(ms.clone()));
    // Long past is fine (a pod that started late calls at once); far ahead or not a time is not.
    let c = Config::load(None, f.env(&[("FLYTE_AUTH_AGENT_START_AT", "1000")])).unwrap();
    assert!(c.refresh.start_at.is_some());
    let ahead = ms_of(SystemTime::now() + Duration::from_secs(7200));
    for (value, problem) in [
        (ahead.as_str(), "is more than 1h ahead of this node's clock"),
        ("soon", "\"soon\" is not a time in Unix milliseconds"),
        ("-1", "\"-1\" is not a time in Unix milliseconds"),
    ] {
        let errors = messages(
            Config::load(None, f.env(&[("FLYTE_AUTH_AGENT_START_AT", value)])).unwrap_err(),
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("env FLYTE_AUTH_AGENT_START_AT: start_at: ")
                && errors[0].ends_with(problem),
            "{value}: {errors:?}"
        );
    }
}

fn ms_of(t: SystemTime) -> String {
    crate::pacing::to_unix_millis(t).to_string()
}

#[test]
fn unknown_yaml_keys_and_syntax_errors_are_named() {
    let f = Fixture::new();
    let errors = messages(Config::load(Some(&f.yaml("tokens_dir: /x\n")), f.env(&[])).unwrap_err());
    assert!(
        errors[0].contains("unknown field `tokens_dir`"),
        "{errors:?}"
    );
    let errors =
        messages(Config::load(Some(&f.yaml("socket: [unclosed\n")), f.env(&[])).unwrap_err());
    assert!(errors[0].contains(": line "), "{errors:?}");
    let missing = f.dir.path().join("nope.yaml");
    let errors = messages(Config::load(Some(&missing), f.env(&[])).unwrap_err());
    assert!(errors[0].contains("cannot read it"), "{errors:?}");
}

#[test]
fn private_key_jwt_secret_must_be_a_key() {
    let f = Fixture::new();
    let json = r#"[{"name":"pk","client":{"clientId":"a","clientSecret":{"group":"app","key":"secret"}},"tokenEndpoint":"https://idp/t","clientAuthMethod":"private_key_jwt"}]"#;
    let errors = messages(f.load_json(json).unwrap_err());
    assert_eq!(
        errors,
        ["env FLYTE_AUTH_AGENT_TOKEN_REQUESTS: [0].client.clientSecret: client assertion: the client secret is not a PEM RSA or P-256 private key"]
    );
    let json = r#"[{"name":"pk","client":{"clientId":"a","clientSecret":{"group":"app","key":"secret"}},"tokenEndpoint":"https://idp/t","clientAuthMethod":"mtls"}]"#;
    let errors = messages(f.load_json(json).unwrap_err());
    assert!(
        errors[0].contains("[0].clientAuthMethod: \"mtls\" is not"),
        "{errors:?}"
    );
}

#[test]
fn names_are_single_safe_components() {
    for ok in ["api", "my-token_1", "a.b", "ünïcode"] {
        assert_eq!(check_name(ok), Ok(()), "{ok}");
    }
    for bad in ["", ".", "..", ".hidden", "a/b", "/", "a\0b", "line\nbreak"] {
        assert!(check_name(bad).is_err(), "{bad:?}");
    }
    assert!(check_name(&"x".repeat(255)).is_ok());
    assert!(check_name(&"x".repeat(256)).is_err());
}

#[test]
fn an_unreadable_ca_file_is_named_with_its_source() {
    let f = Fixture::new();
    let missing = f.dir.path().join("no-ca.pem");
    let path = f.yaml(&format!("idp: {{ca_file: {}}}\n", missing.display()));
    let errors = messages(Config::load(Some(&path), f.env(&[])).unwrap_err());
    assert_eq!(errors.len(), 1, "{errors:?}");
    let want = format!(
        "config file {}: idp.ca_file: cannot read {}: ",
        path.display(),
        missing.display()
    );
    assert!(errors[0].starts_with(&want), "{errors:?}");
    let env = f.env(&[("FLYTE_AUTH_AGENT_CA_FILE", "/nonexistent/ca.pem")]);
    let errors = messages(Config::load(None, env).unwrap_err());
    assert!(
        errors[0].starts_with(
            "env FLYTE_AUTH_AGENT_CA_FILE: idp.ca_file: cannot read /nonexistent/ca.pem: "
        ),
        "{errors:?}"
    );
    let ca = f.dir.path().join("ca.pem");
    std::fs::write(&ca, "pem").unwrap();
    let c = Config::load(
        None,
        f.env(&[("FLYTE_AUTH_AGENT_CA_FILE", ca.to_str().unwrap())]),
    )
    .unwrap();
    assert_eq!(c.idp.ca_file.as_deref(), Some(ca.as_path()));
}

#[test]
fn no_admin_endpoint_means_no_proxy() {
    let f = Fixture::new();
    let c = Config::load(None, f.env(&[])).unwrap();
    assert!(c.admin.is_none());
}

#[test]
fn admin_from_env_with_flyte_defaults() {
    let f = Fixture::new();
    let c = Config::load(
        None,
        f.env(&[
            (
                "FLYTE_AUTH_AGENT_ADMIN_ENDPOINT",
                "dns:///flyteadmin.flyte:81",
            ),
            ("FLYTE_AUTH_AGENT_ADMIN_MODE", "client-secret"),
            ("FLYTE_AUTH_AGENT_ADMIN_CLIENT_ID", "flytepropeller"),
            (
                "FLYTE_AUTH_AGENT_ADMIN_CLIENT_SECRET",
                r#"{"group": "app", "key": "secret"}"#,
            ),
            (
                "FLYTE_AUTH_AGENT_ADMIN_ALLOWED_METHODS",
                "flyteidl.service.AdminService/*, flyteidl.service.AuthMetadataService/*",
            ),
        ]),
    )
    .unwrap();
    let a = c.admin.unwrap();
    assert_eq!(
        a.address,
        AdminAddress::Tcp {
            host: "flyteadmin.flyte".into(),
            port: 81
        }
    );
    // TLS unless told otherwise; header, endpoint, audience and scopes come from Admin itself.
    assert_eq!(
        a.tls,
        Some(AdminTls {
            ca_file: None,
            server_name: None
        })
    );
    assert_eq!(
        (a.auth_header, a.token_endpoint, a.audience, a.scopes),
        (None, None, None, None)
    );
    assert_eq!(a.mode, AdminMode::ClientSecret);
    assert_eq!(a.client_auth, ClientAuth::ClientSecretBasic);
    assert_eq!(a.retry_buffer, 64 * 1024);
    assert_eq!(a.allowed_methods.patterns().len(), 2);
    assert!(!a
        .allowed_methods
        .allows("/flyteidl.service.DataProxyService/CreateUploadLocation"));
}

#[test]
fn admin_in_yaml_with_service_account_modes() {
    let f = Fixture::new();
    let sa = f.dir.path().join("sa-token");
    std::fs::write(&sa, "header.payload.signature").unwrap();
    for (mode, auth) in [
        ("jwt-bearer", ClientAuth::JwtBearer),
        ("token-exchange", ClientAuth::None),
    ] {
        let path = f.yaml(&format!(
            "admin:\n  endpoint: https://flyte.example.com\n  mode: {mode}\n  client_id: workload\n  token_file: {}\n  auth_header: Flyte-Authorization\n  scopes: [all, offline]\n",
            sa.display()
        ));
        let a = Config::load(Some(&path), f.env(&[]))
            .unwrap()
            .admin
            .unwrap();
        assert_eq!(a.client_auth, auth, "{mode}");
        assert_eq!(a.token_file.as_deref(), Some(sa.as_path()));
        assert_eq!(a.auth_header.unwrap().as_str(), "flyte-authorization");
        assert_eq!(a.scopes.unwrap(), ["all", "offline"]);
    }
}

#[test]
fn every_bad_admin_value_is_reported_at_once() {
    let f = Fixture::new();
    let path = f.yaml(
        "admin:\n  endpoint: https://flyte.example.com/api\n  insecure: true\n  auth_header: \"bad header\"\n  token_endpoint: ftp://idp/token\n  mode: kerberos\n  allowed_methods: [AdminService]\n  connect_timeout: soon\n",
    );
    let errors = messages(Config::load(Some(&path), f.env(&[])).unwrap_err());
    let joined = errors.join("\n");
    for needle in [
        "admin.endpoint: \"https://flyte.example.com/api\" is not an Admin endpoint",
        "admin.auth_header: \"bad header\" is not a valid header name",
        "admin.token_endpoint: ftp://idp/token has scheme \"ftp\"",
        "admin.mode: \"kerberos\" is not client-secret, jwt-bearer or token-exchange",
        "admin.allowed_methods: \"AdminService\" is not a method pattern",
        "admin.connect_timeout: \"soon\" is not a duration",
    ] {
        assert!(joined.contains(needle), "{needle:?} in:\n{joined}");
    }

    // Each mode names what it is missing; an https endpoint cannot be insecure.
    let missing = |extra: &str| {
        let path = f.yaml(&format!(
            "admin:\n  endpoint: https://flyte.example.com\n{extra}"
        ));
        messages(Config::load(Some(&path), f.env(&[])).unwrap_err()).join("\n")
    };
    assert_contains(
        &missing("  mode: client-secret\n"),
        "admin.client_id: is missing",
    );
    assert_contains(
        &missing("  mode: client-secret\n  client_id: x\n"),
        "admin.client_secret: is missing (mode client-secret)",
    );
    assert_contains(
        &missing("  mode: jwt-bearer\n  client_id: x\n"),
        "admin.token_file: is missing (mode jwt-bearer needs the projected service-account token)",
    );
    assert_contains(&missing("  client_id: x\n"), "admin.mode: is missing");
    assert_contains(
        &missing("  mode: client-secret\n  client_id: x\n  insecure: true\n  client_secret: {group: app, key: secret}\n"),
        "admin.insecure: is true but the endpoint is https://",
    );
    assert_contains(
        &missing(
            "  mode: client-secret\n  client_id: x\n  client_secret: {group: nope, key: secret}\n",
        ),
        "admin.client_secret: ",
    );
    let unreadable =
        missing("  mode: token-exchange\n  client_id: x\n  token_file: /nonexistent/token\n");
    assert_contains(
        &unreadable,
        "admin.token_file: cannot read /nonexistent/token",
    );
    assert!(!unreadable.contains("is missing"), "{unreadable}");
    // The env var's source is named, and a bad secret reference says what shape it wants.
    let errors = messages(
        Config::load(
            None,
            f.env(&[
                ("FLYTE_AUTH_AGENT_ADMIN_ENDPOINT", "flyteadmin:81"),
                ("FLYTE_AUTH_AGENT_ADMIN_MODE", "client-secret"),
                ("FLYTE_AUTH_AGENT_ADMIN_CLIENT_ID", "x"),
                ("FLYTE_AUTH_AGENT_ADMIN_CLIENT_SECRET", "app/secret"),
            ]),
        )
        .unwrap_err(),
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_contains(
        &errors[0],
        "env FLYTE_AUTH_AGENT_ADMIN_CLIENT_SECRET: admin.client_secret: not a flyteidl Secret",
    );
}

#[track_caller]
fn assert_contains(text: &str, needle: &str) {
    assert!(text.contains(needle), "expected {needle:?} in:\n{text}");
}

#[test]
fn validation_without_secrets_applies_the_agents_rules_and_reads_nothing() {
    let parse = |s: &str| -> Vec<(String, serde_json::Value)> {
        let values: Vec<serde_json::Value> = serde_json::from_str(s).unwrap();
        values
            .into_iter()
            .enumerate()
            .map(|(i, v)| (format!("[{i}]"), v))
            .collect()
    };
    // A secret that exists nowhere is fine here: the injector has no secrets to read.
    let ok = validate_token_requests(
        parse(&format!("[{}, {}]", request("a"), request("b"))),
        "annotation flyte.tokens/t0",
        false,
    )
    .unwrap();
    assert_eq!(
        ok.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    let errors = messages(
        validate_token_requests(
            parse(&format!(
                r#"[{}, {}, {{"name": "../x", "tokenEndpoint": "http://idp.example/token", "client": {{"clientId": "c", "clientSecret": {{"group": "g"}}}}}}, {{"name": "y", "type": "PASSWORD"}}]"#,
                request("a"),
                request("a")
            )),
            "annotation flyte.org/token-requests",
            false,
        )
        .unwrap_err(),
    );
    let joined = errors.join("\n");
    for needle in [
        "annotation flyte.org/token-requests: [1].name: duplicate token request name \"a\"",
        "[2].name: \"../x\" contains '/'",
        "[2].tokenEndpoint: http://idp.example/token is plain http to a non-loopback host",
        "[3].type: unknown token request type \"PASSWORD\"",
        "[3].client.clientId: is missing",
    ] {
        assert!(joined.contains(needle), "{needle:?} in:\n{joined}");
    }
}

#[test]
fn an_admin_section_for_an_agent_elsewhere_is_checked_and_carried_as_env() {
    let section = serde_json::json!({
        "endpoint": "dns:///flyteadmin.flyte:81",
        "insecure": true,
        "mode": "jwt-bearer",
        "client_id": "flytepropeller",
        "scopes": ["all", "offline"],
        "allowed_methods": ["flyteidl.service.AdminService/*"],
    });
    let checked = admin_section_env(section, "injector config", "/sa/token", false).unwrap();
    assert_eq!(checked.mode, AdminMode::JwtBearer);
    let env: HashMap<String, String> = checked.env.into_iter().collect();
    assert_eq!(env["FLYTE_AUTH_AGENT_ADMIN_SCOPES"], "all offline");
    assert_eq!(
        env["FLYTE_AUTH_AGENT_ADMIN_ALLOWED_METHODS"],
        "flyteidl.service.AdminService/*"
    );
    // The projected token does not exist here; it is mounted where the agent runs.
    assert_eq!(env["FLYTE_AUTH_AGENT_ADMIN_TOKEN_FILE"], "/sa/token");
    // The env reads back, through the agent's own loader, as the same section.
    let config = Config::load(None, Arc::new(env)).unwrap_err();
    assert!(
        config
            .to_string()
            .contains("admin.token_file: cannot read /sa/token"),
        "{config}"
    );

    let problems = |section: serde_json::Value| {
        admin_section_env(section, "injector config", "/sa/token", false)
            .unwrap_err()
            .to_string()
    };
    let p = problems(
        serde_json::json!({"endpoint": "x:1", "mode": "client-secret", "client_id": "c", "clinet_secret": {}}),
    );
    assert!(p.contains("unknown field `clinet_secret`"), "{p}");
    let p = problems(
        serde_json::json!({"endpoint": "x:1", "mode": "jwt-bearer", "client_id": "c", "token_file": "/t"}),
    );
    assert!(
        p.contains("admin.token_file: is set by the injector"),
        "{p}"
    );
    let p = problems(serde_json::json!({"endpoint": "grpc://x", "mode": "kerberos"}));
    for needle in [
        "injector config: admin.endpoint: \"grpc://x\" is not an Admin endpoint",
        "admin.mode: \"kerberos\" is not client-secret",
    ] {
        assert!(p.contains(needle), "{needle:?} in:\n{p}");
    }
    let p =
        problems(serde_json::json!({"endpoint": "x:1", "mode": "client-secret", "client_id": "c"}));
    assert!(
        p.contains("admin.client_secret: is missing (mode client-secret)"),
        "{p}"
    );
    // A client-secret section carries no token file.
    let checked = admin_section_env(
        serde_json::json!({"endpoint": "x:1", "mode": "client-secret", "client_id": "c", "client_secret": {"group": "g", "key": "k"}}),
        "injector config",
        "/sa/token",
        false,
    )
    .unwrap();
    assert!(checked
        .env
        .iter()
        .all(|(k, _)| k != "FLYTE_AUTH_AGENT_ADMIN_TOKEN_FILE"));
    assert_eq!(checked.client_secret.unwrap().group, "g");
}

#[test]
fn a_secret_reference_cannot_point_at_the_agents_settings() {
    let f = Fixture::new();
    let with_secret =
        |secret: &str| request("api").replace(r#"{"group":"app","key":"secret"}"#, secret);
    let cases = [
        (r#"{"group":"app","key":"secret","mountRequirement":99}"#, "client.clientSecret.mountRequirement: 99 is not ANY (0), ENV_VAR (1) or FILE (2)"),
        (r#"{"group":"app","key":"secret","envVar":"FLYTE_AUTH_AGENT_ADMIN_CLIENT_SECRET"}"#, "client.clientSecret.envVar: \"FLYTE_AUTH_AGENT_ADMIN_CLIENT_SECRET\" must start with the secrets env prefix \"_FSEC_\""),
        (r#"{"group":"app","key":"secret","envVar":"HOME"}"#, "\"HOME\" must start with the secrets env prefix"),
        (r#"{"group":"app","key":"secret","envVar":"_FSEC_A B"}"#, "\"_FSEC_A B\" is not an env var name"),
    ];
    for (secret, expected) in cases {
        let errors = messages(
            f.load_json(&format!("[{}]", with_secret(secret)))
                .unwrap_err(),
        );
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{secret}: {errors:?}"
        );
    }
    // The prefix is the configured one.
    let env = f.env(&[
        (
            ENV_TOKEN_REQUESTS,
            &format!(
                "[{}]",
                with_secret(r#"{"group":"app","key":"secret","envVar":"MY_APP_SECRET"}"#)
            ),
        ),
        ("FLYTE_SECRETS_ENV_PREFIX", "MY_"),
        ("MY_APP_SECRET", "value"),
    ]);
    let c = Config::load(None, env).unwrap();
    assert_eq!(c.token_requests[0].client_secret.env_var, "MY_APP_SECRET");
}
