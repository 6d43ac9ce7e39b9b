//! The token request validator: flyteidl `OAuth2TokenRequest` objects in JSON (camelCase or
//! snake_case) with three optional agent extensions beside the proto fields, since flyteidl has
//! no place for them: `scopes` (list of strings, or one space-separated string), `audience`
//! (string) and `clientAuthMethod` / `client_auth_method` (`client_secret_basic`, the default,
//! `client_secret_post` or `private_key_jwt`; with `private_key_jwt` the client secret holds a PEM
//! private key, RSA or P-256).
//!
//! The agent runs it at start on its file and env ([`super::Config::load`]), reading every secret;
//! the injector runs it on a pod's annotations ([`validate_token_requests`]), reading none.

use std::collections::HashMap;

use flyte_auth_proto::flyteidl::core::secret::MountType;
use flyte_auth_proto::flyteidl::core::{o_auth2_token_request, OAuth2TokenRequest, Secret};
use serde_json::{Map, Value};
use url::Url;

use super::loader::{ConfigErrors, Loader};
use crate::assertion::AssertionKey;
use crate::env::{is_agent_owned, DEFAULT_SECRETS_ENV_PREFIX};
use crate::request::{check_idp_url, check_name, ClientAuth, Endpoint, TokenRequest};
use crate::secret::SecretResolver;

/// Validates token requests given as flyteidl JSON values (with the agent's extensions), each
/// with the path that names it in messages (`[0]`, or an annotation key), all from `source`, by
/// exactly the rules the agent applies at start, except that secrets are not read: for a caller
/// that has none to read, such as the injector validating a pod's annotations. Every problem is
/// reported, each naming its field (`[0].client.clientId`).
pub fn validate_token_requests(
    items: Vec<(String, Value)>,
    source: &str,
    allow_insecure_http: bool,
) -> Result<Vec<TokenRequest>, ConfigErrors> {
    let no_env = HashMap::<String, String>::new();
    let mut l = Loader::new(source, &no_env);
    let items = items
        .into_iter()
        .map(|(path, v)| (source.to_string(), path, v))
        .collect();
    let requests = collect(items, allow_insecure_http, None, &mut l, &mut Vec::new());
    l.finish(requests)
}

/// Every valid request of `items` (source, path, value), unique by name; problems go to `l`.
/// With a `resolver`, each client secret is read too.
pub(super) fn collect(
    items: Vec<(String, String, Value)>,
    allow_insecure_http: bool,
    resolver: Option<&SecretResolver>,
    l: &mut Loader<'_>,
    notices: &mut Vec<String>,
) -> Vec<TokenRequest> {
    let mut token_requests = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    for (source, path, value) in items {
        let reader = Reader {
            l,
            source: &source,
            path: &path,
            allow_insecure_http,
            resolver,
        };
        let Some(req) = reader.read(value, notices) else {
            continue;
        };
        if let Some(first) = seen.get(&req.name) {
            l.error(
                &source,
                &format!("{path}.name"),
                format!(
                    "duplicate token request name {:?} (first defined at {first})",
                    req.name
                ),
            );
            continue;
        }
        seen.insert(req.name.clone(), req.origin.clone());
        token_requests.push(req);
    }
    token_requests
}

const EXTENSION_KEYS: [&str; 4] = [
    "scopes",
    "audience",
    "clientAuthMethod",
    "client_auth_method",
];

/// The `clientAuthMethod` values a token request may use.
const CLIENT_AUTH_METHODS: [ClientAuth; 3] = [
    ClientAuth::ClientSecretBasic,
    ClientAuth::ClientSecretPost,
    ClientAuth::PrivateKeyJwt,
];

/// The agent's extensions of one request.
struct Extensions {
    scopes: Vec<String>,
    audience: Option<String>,
    client_auth: ClientAuth,
}

/// One token request being read: where it came from, what checking it needs, and the loader its
/// problems go to, each named `<path>.<field>`.
struct Reader<'r, 'e> {
    l: &'r mut Loader<'e>,
    source: &'r str,
    path: &'r str,
    allow_insecure_http: bool,
    resolver: Option<&'r SecretResolver>,
}

impl Reader<'_, '_> {
    /// Records a problem with `field` of the request (`""`: the request itself).
    fn error(&mut self, field: &str, problem: impl Into<String>) {
        let field = match field {
            "" => self.path.to_string(),
            f => format!("{}.{f}", self.path),
        };
        self.l.error(self.source, &field, problem);
    }

    /// The request, if it has no problem (each one found is recorded).
    fn read(mut self, value: Value, notices: &mut Vec<String>) -> Option<TokenRequest> {
        let Value::Object(mut obj) = value else {
            self.error("", "is not an object");
            return None;
        };
        let errors_before = self.l.errors.len();
        let ext = self.extensions(&mut obj);
        self.check_type(&mut obj);
        let mut proto: OAuth2TokenRequest = match flyte_auth_proto::from_json(&Value::Object(obj)) {
            Ok(p) => p,
            Err(e) => {
                self.error("", e.to_string());
                return None;
            }
        };
        if let Err(problem) = check_name(&proto.name) {
            self.error("name", problem);
        }
        let client = proto.client.take().unwrap_or_default();
        if client.client_id.trim().is_empty() {
            self.error("client.clientId", "is missing");
        }
        let client_secret = client.client_secret.unwrap_or_default();
        let endpoint = self.endpoint(&proto, notices);
        self.check_secret_ref(&client_secret);
        self.check_secret(&client_secret, ext.client_auth);
        if self.l.errors.len() > errors_before {
            return None;
        }
        Some(TokenRequest {
            name: proto.name,
            client_id: client.client_id,
            client_secret,
            endpoint: endpoint?,
            client_auth: ext.client_auth,
            scopes: ext.scopes,
            audience: ext.audience,
            origin: format!("{} {}", self.source, self.path),
        })
    }

    /// Takes the agent's extension keys out of `obj`, leaving the proto fields.
    fn extensions(&mut self, obj: &mut Map<String, Value>) -> Extensions {
        let mut ext = Extensions {
            scopes: Vec::new(),
            audience: None,
            client_auth: ClientAuth::ClientSecretBasic,
        };
        for key in EXTENSION_KEYS {
            let Some(value) = obj.remove(key) else {
                continue;
            };
            match (key, value) {
                ("scopes", Value::String(s)) => {
                    ext.scopes = s.split_whitespace().map(str::to_string).collect()
                }
                ("scopes", Value::Array(items)) => {
                    for item in items {
                        match item {
                            Value::String(s) if !s.is_empty() && !s.contains(' ') => {
                                ext.scopes.push(s)
                            }
                            other => {
                                self.error(key, format!("{other} is not a single scope string"))
                            }
                        }
                    }
                }
                ("audience", Value::String(s)) if !s.is_empty() => ext.audience = Some(s),
                (_, Value::String(s)) if key != "scopes" && key != "audience" => {
                    match ClientAuth::parse(&s, &CLIENT_AUTH_METHODS) {
                        Ok(method) => ext.client_auth = method,
                        Err(problem) => self.error(key, problem),
                    }
                }
                (_, other) => self.error(key, format!("{other} has the wrong type")),
            }
        }
        ext
    }

    /// Checks the `type` field by hand: an unknown name would otherwise fail the whole message
    /// in the JSON parser, hiding every other problem in it.
    fn check_type(&mut self, obj: &mut Map<String, Value>) {
        let Some(value) = obj.get("type") else { return };
        let known = match value {
            Value::String(s) => s == "CLIENT_CREDENTIALS",
            Value::Number(n) => {
                n.as_i64() == Some(o_auth2_token_request::Type::ClientCredentials as i64)
            }
            _ => false,
        };
        if !known {
            let problem =
                format!("unknown token request type {value}; only CLIENT_CREDENTIALS is supported");
            self.error("type", problem);
            obj.remove("type");
        }
    }

    /// The endpoint: `tokenEndpoint` if set (with a notice when discovery is set too), else
    /// `idpDiscoveryEndpoint`.
    fn endpoint(
        &mut self,
        proto: &OAuth2TokenRequest,
        notices: &mut Vec<String>,
    ) -> Option<Endpoint> {
        match (
            proto.token_endpoint.as_str(),
            proto.idp_discovery_endpoint.as_str(),
        ) {
            ("", "") => {
                self.error("", "neither tokenEndpoint nor idpDiscoveryEndpoint is set");
                None
            }
            (token, discovery) if !token.is_empty() => {
                if !discovery.is_empty() {
                    notices.push(format!(
                        "token request {:?} ({} {}) sets both tokenEndpoint and idpDiscoveryEndpoint; using tokenEndpoint",
                        proto.name, self.source, self.path
                    ));
                }
                self.url(token, "tokenEndpoint").map(Endpoint::Token)
            }
            (_, discovery) => self
                .url(discovery, "idpDiscoveryEndpoint")
                .map(Endpoint::Discovery),
        }
    }

    /// `s` as an IdP URL the agent may call.
    fn url(&mut self, s: &str, field: &str) -> Option<Url> {
        let checked = Url::parse(s)
            .map_err(|e| format!("{s:?} is not a URL: {e}"))
            .and_then(|u| check_idp_url(&u, self.allow_insecure_http).map(|()| u));
        checked.map_err(|problem| self.error(field, problem)).ok()
    }

    /// The parts of a client secret reference the resolver would otherwise act on blindly: a
    /// mount requirement flyteidl defines, and a custom env var inside the secrets' env prefix,
    /// so that a token request can never make the agent read (and send to an IdP) one of its
    /// own settings.
    fn check_secret_ref(&mut self, secret: &Secret) {
        if MountType::try_from(secret.mount_requirement).is_err() {
            let problem = format!(
                "{} is not ANY (0), ENV_VAR (1) or FILE (2)",
                secret.mount_requirement
            );
            self.error("client.clientSecret.mountRequirement", problem);
        }
        let var = secret.env_var.as_str();
        if var.is_empty() {
            return;
        }
        let prefix = self
            .resolver
            .map_or(DEFAULT_SECRETS_ENV_PREFIX, SecretResolver::env_prefix);
        let valid_name = var
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
        let problem = if !valid_name {
            format!("{var:?} is not an env var name (letters, digits, '_', '-', '.')")
        } else if !var.starts_with(prefix) || var.len() == prefix.len() || is_agent_owned(var) {
            format!(
                "{var:?} must start with the secrets env prefix {prefix:?} \
                 (FLYTE_SECRETS_ENV_PREFIX): the agent's other env vars are its configuration"
            )
        } else {
            return;
        };
        self.error("client.clientSecret.envVar", problem);
    }

    /// The secret's group is set and, with a resolver, the secret reads (as a private key, for
    /// `private_key_jwt`).
    fn check_secret(&mut self, secret: &Secret, client_auth: ClientAuth) {
        if secret.group.is_empty() {
            self.error("client.clientSecret.group", "is missing");
            return;
        }
        let Some(resolver) = self.resolver else {
            return;
        };
        let problem = match resolver.read(secret) {
            Err(e) => e.to_string(),
            Ok(value) if client_auth == ClientAuth::PrivateKeyJwt => {
                match AssertionKey::from_pem(&value) {
                    Err(e) => e.to_string(),
                    Ok(_) => return,
                }
            }
            Ok(_) => return,
        };
        self.error("client.clientSecret", problem);
    }
}
