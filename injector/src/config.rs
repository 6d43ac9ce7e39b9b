//! The injector's configuration: how it serves, which pods opt in, what the injected agent looks
//! like, and the FlyteAdmin settings every injected agent gets. Read once at start from YAML
//! (`--config`, usually a ConfigMap); every problem is reported at once, naming the field.

use flyte_auth_agent::env;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flyte_auth_agent::config::{admin_section_env, limits_section_env, AdminMode};
use flyte_auth_agent::config::{ConfigError, ConfigErrors};
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::Deserialize;

use crate::scope::{ScopeRules, ScopeSettings};

/// The label value a pod opts in with, by default.
pub const DEFAULT_OPT_IN_LABEL: &str = "flyte.org/auth-agent";

/// How the agent is added to a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InjectMode {
    /// A native sidecar (init container with `restartPolicy: Always`, Kubernetes 1.29+): tokens
    /// are refreshed for the pod's life, the socket and the Admin proxy are served.
    Sidecar,
    /// A plain init container running `serve --once`: tokens are written once before the task
    /// starts and never refreshed; no socket, no proxy. For clusters without native sidecars.
    InitOnly,
}

/// What to do when a task container already sets an env var the injector would set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EnvConflict {
    /// Leave the container's value; the response carries a warning.
    Keep,
    /// Replace it with the injector's; the response carries a warning.
    Replace,
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The HTTPS server.
    pub server: ServerConfig,
    /// Which pods are injected.
    pub opt_in: OptIn,
    /// Native sidecar or init-only.
    pub mode: InjectMode,
    /// Task env vars that already exist.
    pub env_conflict: EnvConflict,
    /// The injected agent container.
    pub agent: AgentSettings,
    /// FlyteAdmin proxy settings; absent: no proxy, no platform env for the task.
    pub admin: Option<AdminSettings>,
    /// Bounds on what one pod may ask for.
    pub limits: PodLimits,
    /// How a pod's execution scope (project, domain, org) is read from its namespace.
    pub scope: ScopeSettings,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::default(),
            opt_in: OptIn::default(),
            mode: InjectMode::Sidecar,
            env_conflict: EnvConflict::Keep,
            agent: AgentSettings::default(),
            admin: None,
            limits: PodLimits::default(),
            scope: ScopeSettings::default(),
        }
    }
}

/// The webhook's HTTPS server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// PEM certificate chain (re-read when it changes).
    pub cert_file: PathBuf,
    /// PEM private key (re-read when it changes).
    pub key_file: PathBuf,
    /// How often the certificate files are checked for changes.
    #[serde(deserialize_with = "de_duration")]
    pub reload_interval: Duration,
    /// Largest AdmissionReview body accepted, in bytes.
    pub max_body: usize,
    /// How long a request body may take to arrive once its review is admitted; a slower one is
    /// refused and its connection closed.
    #[serde(deserialize_with = "de_duration")]
    pub body_timeout: Duration,
    /// Review slots: reviews read and decided at once. A review takes one slot per
    /// `max_body / max_concurrent_reviews` bytes it declares (all without a length), so the
    /// bodies read and parsed at once total at most about `max_body`.
    pub max_concurrent_reviews: usize,
    /// How long a review waits for one of the `max_concurrent_reviews` slots before it is
    /// refused.
    #[serde(deserialize_with = "de_duration")]
    pub review_queue_timeout: Duration,
    /// Most connections open at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// How long a new connection may take to send a complete request head (HTTP/1.1) or the
    /// HTTP/2 preface and a first request, after its TLS handshake.
    #[serde(deserialize_with = "de_duration")]
    pub request_head_timeout: Duration,
    /// How long open connections get to finish on shutdown.
    #[serde(deserialize_with = "de_duration")]
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            cert_file: "/etc/webhook/certs/tls.crt".into(),
            key_file: "/etc/webhook/certs/tls.key".into(),
            reload_interval: Duration::from_secs(10),
            max_body: DEFAULT_MAX_BODY,
            // The API server sends a review's body at once, and gives the whole call 10 s
            // (the webhook's timeoutSeconds): the queue wait and the body read together stay
            // well under it, so the refusal's message reaches the user instead of a timeout.
            body_timeout: Duration::from_secs(3),
            max_concurrent_reviews: 4,
            review_queue_timeout: Duration::from_secs(3),
            // The API server multiplexes reviews over a few HTTP/2 connections per replica.
            max_connections: 128,
            request_head_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// The default `server.max_body`: 2 MiB. etcd refuses a request over 1.5 MiB, so no Pod can be
/// stored larger than that; a review carries the Pod as JSON (field names instead of protobuf
/// tags) plus a small envelope (uid, userInfo, options), hence a third more. The API server's
/// own 3 MiB request limit would let a reviewer buffer bodies no Pod can ever have.
pub const DEFAULT_MAX_BODY: usize = 2 * 1024 * 1024;

/// Bounds on what one pod may ask for, checked before its annotations are decoded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PodLimits {
    /// Token requests per pod, both annotation forms together.
    pub token_requests: usize,
    /// Bytes of one token annotation's value (`flyte.tokens/t<i>` or `flyte.org/token-requests`).
    pub token_annotation_bytes: usize,
    /// Bytes of all token annotations' values together.
    pub token_annotations_total_bytes: usize,
    /// JSON array elements in one AdmissionReview, all arrays together (containers, env vars,
    /// volumes, args…), counted before the typed parse: one element can cost 3 KB as a struct
    /// (a `Volume`), so this bounds what parsing a review can allocate.
    pub review_array_items: usize,
}

impl Default for PodLimits {
    fn default() -> Self {
        // A token request is 200-400 bytes of JSON, ~600 in propeller's base32 text format, so
        // 32 of them fit in either form with room to spare; Kubernetes allows 256 KiB for all
        // of a pod's annotations.
        Self {
            token_requests: 32,
            token_annotation_bytes: 32 * 1024,
            token_annotations_total_bytes: 64 * 1024,
            // A task pod has a few hundred; 10,000 empty volumes parse into ~31 MB.
            review_array_items: 10_000,
        }
    }
}

/// The opt-in label.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptIn {
    /// Label key.
    pub label: String,
    /// Label value.
    pub value: String,
}

impl Default for OptIn {
    fn default() -> Self {
        Self {
            label: DEFAULT_OPT_IN_LABEL.into(),
            value: "enabled".into(),
        }
    }
}

/// The injected agent container and its volumes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSettings {
    /// Container name (and the prefix of the injected volumes' names).
    pub name: String,
    /// Image of the agent.
    pub image: String,
    /// Pull policy.
    pub image_pull_policy: String,
    /// Requests and limits.
    pub resources: ResourceRequirements,
    /// The uid (and gid) the agent runs as.
    pub run_as_user: i64,
    /// Port of the agent's health and metrics server (`/readyz` is the startup probe).
    pub health_port: u16,
    /// Where token files are written (task containers get it read-only).
    pub tokens_dir: String,
    /// Size limit of the tokens directory (in memory).
    pub tokens_size_limit: Quantity,
    /// Where the agent's socket lives (shared with task containers).
    pub socket_dir: String,
    /// Where referenced client secrets are mounted in the agent container.
    pub secrets_dir: String,
    /// Where the projected service-account token is mounted in the agent container.
    pub service_account_token_dir: String,
    /// `RUST_LOG` for the agent.
    pub log_level: String,
    /// `text` or `json`.
    pub log_format: String,
    /// How long the agent may take to have every token before the pod is failed (startup probe).
    #[serde(deserialize_with = "de_duration")]
    pub startup_timeout: Duration,
    /// Init-only mode: how long the agent keeps retrying before failing the pod.
    #[serde(deserialize_with = "de_duration")]
    pub once_timeout: Duration,
    /// The agent's `refresh.start_jitter`: each token's first IdP call waits a draw from
    /// [0, this), so that the pods of a map task do not all reach a rate-limited IdP at once
    /// (set it near (pods − the IdP's burst) / its rate; README "Fleet start"). 0: at once.
    #[serde(deserialize_with = "de_duration")]
    pub start_jitter: Duration,
    /// Start pacing: each admitted pod's agent gets its own time for its first IdP calls, spaced
    /// at the IdP's limit, so a fan-out of any size costs the IdP one call per token (README
    /// "Fleet start"). Off unless `rate` is set.
    pub start_pacing: StartPacing,
    /// Allow `http://` IdP endpoints off loopback (never in production).
    pub allow_insecure_http: bool,
    /// Allow token requests whose token or discovery endpoint is loopback, link-local or
    /// unspecified. Off: in the pod such an "IdP" is the task itself (it shares the network
    /// namespace), and the agent would send it the client secret; link-local is cloud metadata.
    pub allow_local_idp: bool,
    /// The agent's own `limits` section (what its socket and health port accept), checked by the
    /// agent's rules at start and passed to it as `FLYTE_AUTH_AGENT_LIMITS_*`; unset keys keep the
    /// agent's defaults.
    pub limits: serde_json::Value,
}

impl Default for AgentSettings {
    fn default() -> Self {
        let quantity = |s: &str| Quantity(s.to_string());
        Self {
            name: "flyte-auth-agent".into(),
            image: "ghcr.io/flyteorg/flyte-auth-agent:0.1.0".into(),
            image_pull_policy: "IfNotPresent".into(),
            resources: ResourceRequirements {
                requests: Some(BTreeMap::from([
                    ("cpu".to_string(), quantity("10m")),
                    ("memory".to_string(), quantity("24Mi")),
                ])),
                limits: Some(BTreeMap::from([("memory".to_string(), quantity("64Mi"))])),
                ..Default::default()
            },
            run_as_user: 65532,
            health_port: env::DEFAULT_HEALTH_PORT,
            tokens_dir: env::DEFAULT_TOKENS_DIR.into(),
            tokens_size_limit: quantity("1Mi"),
            socket_dir: env::DEFAULT_SOCKET_DIR.into(),
            secrets_dir: env::DEFAULT_SECRETS_DIR.into(),
            service_account_token_dir: "/var/run/secrets/flyte-auth-agent".into(),
            log_level: "info".into(),
            log_format: "json".into(),
            startup_timeout: Duration::from_secs(120),
            once_timeout: Duration::from_secs(60),
            start_jitter: Duration::ZERO,
            start_pacing: StartPacing::default(),
            allow_insecure_http: false,
            limits: serde_json::Value::Null,
            allow_local_idp: false,
        }
    }
}

/// The IdP limit the injector paces its pods' first calls at (`agent.start_pacing`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StartPacing {
    /// Client-credentials calls per second the pods of this injector may start with: the IdP's
    /// limit for the client (or tenant) the fan-outs share, divided by the injector's replicas;
    /// a little under it leaves room for other callers. 0: off.
    pub rate: f64,
    /// Calls the IdP allows at once (its bucket), likewise this replica's share.
    pub burst: u32,
    /// The longest a pod waits for its time; a bigger fan-out than rate × this waits this and
    /// then meets the IdP's limit (and its `Retry-After`) as an unpaced pod would.
    #[serde(deserialize_with = "de_duration")]
    pub max_delay: Duration,
}

impl Default for StartPacing {
    fn default() -> Self {
        Self {
            rate: 0.0,
            burst: 1,
            // Under the default once_timeout (60s) and startup_timeout (120s).
            max_delay: Duration::from_secs(45),
        }
    }
}

impl StartPacing {
    /// Whether pods are paced.
    pub fn enabled(&self) -> bool {
        self.rate > 0.0
    }
}

/// The projected service-account token for `jwt-bearer` and `token-exchange`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceAccountToken {
    /// The audience the IdP expects in the token.
    pub audience: String,
    /// Requested lifetime; the kubelet refreshes it at 80%.
    #[serde(default = "default_sa_expiry")]
    pub expiration_seconds: i64,
}

fn default_sa_expiry() -> i64 {
    3600
}

/// Which flytekit auth mode task containers get with the Admin proxy (`admin.task_auth`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskAuth {
    /// `flyte_auth_agent` for pods that say their image has the flyte-auth-agent Python package
    /// (the annotation [`crate::mutate::TASK_AUTH_ANNOTATION`], written by `with_tokens`),
    /// `external_process` for the rest.
    #[default]
    Auto,
    /// flytekit's `external_process` mode for every pod: works with any flytekit image.
    ExternalProcess,
    /// The flyte-auth-agent package's `flyte_auth_agent` mode for every pod: for platforms
    /// whose task images all have the package; flytekit refuses to start a client without it.
    FlyteAuthAgent,
}

/// The `admin` section: the agent's own `admin` keys (passed to it as
/// `FLYTE_AUTH_AGENT_ADMIN_*`), plus what only the injector needs.
#[derive(Debug, Clone, Deserialize)]
pub struct AdminSettings {
    /// The projected service-account token, for pods whose mode needs one.
    #[serde(default)]
    pub service_account_token: Option<ServiceAccountToken>,
    /// flytekit's auth mode in task containers.
    #[serde(default)]
    pub task_auth: TaskAuth,
    /// Every other key, as the agent reads it (`endpoint`, `mode`, `client_id`, …).
    #[serde(flatten)]
    pub agent: serde_json::Map<String, serde_json::Value>,
}

/// The agent's Admin env for one credential mode, checked at start.
#[derive(Debug, Clone)]
pub struct AdminEnv {
    /// The mode.
    pub mode: AdminMode,
    /// `FLYTE_AUTH_AGENT_ADMIN_*` vars.
    pub env: Vec<(String, String)>,
    /// The client secret to mount, if the mode uses one.
    pub client_secret: Option<flyte_auth_proto::flyteidl::core::Secret>,
    /// The service-account token to project, if the mode uses one.
    pub service_account_token: Option<ServiceAccountToken>,
    /// `admin.connect_port`: where task containers' Flyte 2 SDK is pointed.
    pub connect_port: Option<u16>,
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// One or more fields are wrong.
    #[error("{0}")]
    Invalid(ConfigErrors),
}

/// Kubernetes' limit on the total size of an object's annotations.
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

/// Every Admin credential mode, each of which a pod may pick by annotation.
pub const ADMIN_MODES: [AdminMode; 3] = [
    AdminMode::ClientSecret,
    AdminMode::JwtBearer,
    AdminMode::TokenExchange,
];

/// The service-account token file name inside its projected volume.
pub const SA_TOKEN_FILE: &str = "token";

impl Config {
    /// Reads and checks the YAML file at `path`.
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &format!("config file {}", path.display())).map_err(LoadError::Invalid)
    }

    /// Parses and checks YAML `text` from `source` (for messages).
    pub fn parse(text: &str, source: &str) -> Result<Config, ConfigErrors> {
        let config: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            let de = serde_yaml_ng::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| {
                let field = e.path().to_string();
                let problem = e.into_inner().to_string();
                // serde_yaml_ng starts its message with the path too.
                let problem = match problem.strip_prefix(&format!("{field}: ")) {
                    Some(rest) => rest.to_string(),
                    None => problem,
                };
                ConfigErrors(vec![ConfigError {
                    source: source.to_string(),
                    field,
                    problem,
                }])
            })?
        };
        config.check(source)?;
        Ok(config)
    }

    /// The env that carries `agent.limits` to the agent.
    pub fn agent_limits_env(&self) -> Result<Vec<(String, String)>, ConfigErrors> {
        limits_section_env(self.agent.limits.clone(), "injector config").map_err(|e| {
            ConfigErrors(
                e.0.into_iter()
                    .map(|mut e| {
                        e.field = format!("agent.{}", e.field);
                        e
                    })
                    .collect(),
            )
        })
    }

    /// Every problem serde cannot see, section by section.
    fn check(&self, source: &str) -> Result<(), ConfigErrors> {
        let mut problems = Problems::new(source);
        self.opt_in.check(&mut problems);
        self.agent.check(&mut problems);
        self.server.check(&mut problems);
        self.limits.check(&mut problems);
        if let Some(admin) = &self.admin {
            self.check_admin(admin, &mut problems);
        }
        if let Err(scope) = ScopeRules::new(&self.scope) {
            for (field, problem) in scope {
                problems.add(field, problem);
            }
        }
        // By the agent's own rules, which name their own source.
        if let Err(limits) = self.agent_limits_env() {
            problems.extend(limits);
        }
        problems.into_result()
    }

    /// The `admin` section: it needs the sidecar, a usable service-account token, settings the
    /// agent's own rules accept, and no scope of its own.
    fn check_admin(&self, admin: &AdminSettings, problems: &mut Problems<'_>) {
        if self.mode == InjectMode::InitOnly {
            problems.add(
                "admin",
                "the Admin proxy needs the sidecar; mode init-only has no socket",
            );
        }
        if let Some(sa) = &admin.service_account_token {
            sa.check(problems);
        }
        match self.admin_env(None) {
            Ok(env) => {
                let vars = env.iter().flat_map(|e| &e.env).map(|(var, _)| var.as_str());
                scoped_admin_keys(vars, problems);
            }
            Err(errors) => problems.extend(errors),
        }
    }

    /// The Kubernetes Secrets that hold the executor credential: the `group` of
    /// `admin.client_secret`, for whichever mode a pod picks. No token request may name them.
    pub fn admin_secret_groups(&self) -> Vec<String> {
        let mut groups: Vec<String> = ADMIN_MODES
            .into_iter()
            .filter_map(|mode| self.admin_env(Some(mode)).ok().flatten())
            .filter_map(|env| env.client_secret.map(|s| s.group))
            .collect();
        // Also when no mode's settings check out (the Secret exists all the same).
        let configured = self
            .admin
            .as_ref()
            .and_then(|a| a.agent.get("client_secret"))
            .and_then(|s| s.get("group"))
            .and_then(|g| g.as_str());
        groups.extend(configured.map(str::to_string));
        groups.sort();
        groups.dedup();
        groups
    }

    /// The agent's Admin env for `mode` (`None`: the configured one), checked by the agent's own
    /// rules; `Ok(None)` when no Admin proxy is configured.
    pub fn admin_env(&self, mode: Option<AdminMode>) -> Result<Option<AdminEnv>, ConfigErrors> {
        let Some(admin) = &self.admin else {
            return Ok(None);
        };
        let mut section = admin.agent.clone();
        if let Some(mode) = mode {
            section.insert("mode".into(), mode.as_str().into());
        }
        if section.get("mode").and_then(|m| m.as_str()) == Some(AdminMode::JwtBearer.as_str()) {
            // The assertion is the service-account token: a configured secret (for pods on
            // client-secret) would only be mounted and read for nothing.
            section.remove("client_secret");
            section.remove("client_auth_method");
        }
        let token_file = format!(
            "{}/{SA_TOKEN_FILE}",
            self.agent.service_account_token_dir.trim_end_matches('/')
        );
        let checked = admin_section_env(
            serde_json::Value::Object(section),
            "injector config",
            &token_file,
            self.agent.allow_insecure_http,
        )?;
        let needs_sa = matches!(
            checked.mode,
            AdminMode::JwtBearer | AdminMode::TokenExchange
        );
        let service_account_token = if needs_sa {
            match &admin.service_account_token {
                Some(sa) => Some(sa.clone()),
                None => {
                    return Err(ConfigErrors(vec![ConfigError {
                        source: "injector config".into(),
                        field: "admin.service_account_token".into(),
                        problem: format!(
                            "is missing (mode {} needs the audience of the projected service-account token)",
                            checked.mode.as_str()
                        ),
                    }]))
                }
            }
        } else {
            None
        };
        Ok(Some(AdminEnv {
            mode: checked.mode,
            env: checked.env,
            client_secret: checked.client_secret,
            service_account_token,
            connect_port: checked.connect_port,
        }))
    }
}

/// The problems found in a configuration, each naming its field and the configuration's source.
struct Problems<'a> {
    source: &'a str,
    errors: Vec<ConfigError>,
}

impl<'a> Problems<'a> {
    fn new(source: &'a str) -> Self {
        Self {
            source,
            errors: Vec::new(),
        }
    }

    fn add(&mut self, field: impl Into<String>, problem: impl Into<String>) {
        self.errors.push(ConfigError {
            source: self.source.to_string(),
            field: field.into(),
            problem: problem.into(),
        });
    }

    /// Problems the agent's own rules found; they name their own source.
    fn extend(&mut self, errors: ConfigErrors) {
        self.errors.extend(errors.0);
    }

    fn into_result(self) -> Result<(), ConfigErrors> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(self.errors))
        }
    }
}

impl OptIn {
    /// A label key Kubernetes accepts, and a value to match.
    fn check(&self, problems: &mut Problems<'_>) {
        if let Err(e) = crate::names::check_label_key(&self.label) {
            problems.add("opt_in.label", e);
        }
        if self.value.is_empty() {
            problems.add("opt_in.value", "is empty");
        }
    }
}

impl AgentSettings {
    /// A container Kubernetes accepts, absolute mount paths, a non-root user, and settings the
    /// agent understands.
    fn check(&self, problems: &mut Problems<'_>) {
        if let Err(e) = crate::names::check_dns_label(&self.name) {
            problems.add("agent.name", e);
        }
        if self.image.trim().is_empty() {
            problems.add("agent.image", "is empty");
        }
        if !["Always", "IfNotPresent", "Never"].contains(&self.image_pull_policy.as_str()) {
            problems.add(
                "agent.image_pull_policy",
                format!(
                    "{:?} is not Always, IfNotPresent or Never",
                    self.image_pull_policy
                ),
            );
        }
        for (field, dir) in [
            ("agent.tokens_dir", &self.tokens_dir),
            ("agent.socket_dir", &self.socket_dir),
            ("agent.secrets_dir", &self.secrets_dir),
            (
                "agent.service_account_token_dir",
                &self.service_account_token_dir,
            ),
        ] {
            if !dir.starts_with('/') || dir.contains(':') || dir.split('/').any(|c| c == "..") {
                problems.add(
                    field,
                    format!("{dir:?} is not an absolute path without '..' or ':'"),
                );
            }
        }
        if self.run_as_user <= 0 {
            problems.add("agent.run_as_user", "must be a non-root uid (above 0)");
        }
        if self.health_port == 0 {
            problems.add("agent.health_port", "must not be 0");
        }
        if !["text", "json"].contains(&self.log_format.as_str()) {
            problems.add(
                "agent.log_format",
                format!("{:?} is not text or json", self.log_format),
            );
        }
        if self.startup_timeout < Duration::from_secs(1) {
            problems.add("agent.startup_timeout", "must be at least 1s");
        }
        self.check_first_call_wait(problems);
    }

    /// The waits before a pod's first IdP call (its start jitter, its paced start) and the
    /// pacing settings themselves.
    fn check_first_call_wait(&self, problems: &mut Problems<'_>) {
        // The wait comes before the first token, so the probe and init-only mode must outlast it.
        for (timeout, key) in [
            (self.startup_timeout, "agent.startup_timeout"),
            (self.once_timeout, "agent.once_timeout"),
        ] {
            if self.start_jitter >= timeout {
                problems.add(
                    "agent.start_jitter",
                    format!(
                        "must be shorter than {key} ({}), or a pod's agent may fail before its first IdP call",
                        humantime::format_duration(timeout)
                    ),
                );
            } else if self.start_pacing.enabled()
                && self.start_jitter + self.start_pacing.max_delay >= timeout
            {
                problems.add(
                    "agent.start_pacing.max_delay",
                    format!(
                        "with agent.start_jitter must be shorter than {key} ({}), or a paced pod's agent may fail before its first IdP call",
                        humantime::format_duration(timeout)
                    ),
                );
            }
        }
        let pacing = &self.start_pacing;
        if !(pacing.rate.is_finite() && (0.0..=100_000.0).contains(&pacing.rate)) {
            problems.add(
                "agent.start_pacing.rate",
                "must be between 0 (off) and 100000 calls per second",
            );
        }
        if pacing.enabled() {
            if !(1..=100_000).contains(&pacing.burst) {
                problems.add("agent.start_pacing.burst", "must be between 1 and 100000");
            }
            if pacing.max_delay.is_zero() {
                problems.add("agent.start_pacing.max_delay", "must be above zero");
            }
        }
    }
}

impl ServerConfig {
    /// Bounds that leave the server able to accept, read and answer a review.
    fn check(&self, problems: &mut Problems<'_>) {
        if self.max_body < 1024 {
            problems.add("server.max_body", "must be at least 1024 bytes");
        }
        if self.body_timeout.is_zero() {
            problems.add("server.body_timeout", "must be above zero");
        }
        if !(1..=1024).contains(&self.max_concurrent_reviews) {
            problems.add(
                "server.max_concurrent_reviews",
                "must be between 1 and 1024",
            );
        }
        if !(1..=65_536).contains(&self.max_connections) {
            problems.add("server.max_connections", "must be between 1 and 65536");
        }
        if self.request_head_timeout.is_zero() {
            problems.add("server.request_head_timeout", "must be above zero");
        }
        if self.reload_interval.is_zero() {
            problems.add("server.reload_interval", "must be above zero");
        }
    }
}

impl PodLimits {
    /// Limits a task pod can meet and Kubernetes' own annotation limit does not make moot.
    fn check(&self, problems: &mut Problems<'_>) {
        if self.token_requests == 0 {
            problems.add("limits.token_requests", "must be at least 1");
        }
        if self.review_array_items < 100 {
            problems.add("limits.review_array_items", "must be at least 100");
        }
        // Kubernetes refuses a pod whose annotations total more than 256 KiB.
        for (field, bytes) in [
            ("limits.token_annotation_bytes", self.token_annotation_bytes),
            (
                "limits.token_annotations_total_bytes",
                self.token_annotations_total_bytes,
            ),
        ] {
            if !(1024..=MAX_ANNOTATIONS_BYTES).contains(&bytes) {
                problems.add(
                    field,
                    format!("{bytes} is not between 1024 and {MAX_ANNOTATIONS_BYTES} (256 KiB, Kubernetes' limit for all annotations)"),
                );
            }
        }
    }
}

impl ServiceAccountToken {
    /// An audience, and a lifetime within the API server's bounds for a projected token.
    fn check(&self, problems: &mut Problems<'_>) {
        if self.audience.is_empty() {
            problems.add("admin.service_account_token.audience", "is empty");
        }
        if !(600..=(1 << 32)).contains(&self.expiration_seconds) {
            problems.add(
                "admin.service_account_token.expiration_seconds",
                format!("{} is not between 600 and 2^32", self.expiration_seconds),
            );
        }
    }
}

/// Refuses the Admin env `vars` that would fix the scope: it is each pod's own, from its
/// namespace, and one configured for every agent would let every task act in that one project.
fn scoped_admin_keys<'v>(vars: impl Iterator<Item = &'v str>, problems: &mut Problems<'_>) {
    let scoped = [
        env::ENV_ADMIN_PROJECT,
        env::ENV_ADMIN_DOMAIN,
        env::ENV_ADMIN_ORG,
    ];
    for var in vars.filter(|var| scoped.contains(var)) {
        let key = var.trim_start_matches(env::ENV_ADMIN_PREFIX).to_lowercase();
        problems.add(
            format!("admin.{key}"),
            "is derived for each pod from its namespace (the scope section); remove it",
        );
    }
}

fn de_duration<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(de)?;
    humantime::parse_duration(s.trim()).map_err(|e| {
        serde::de::Error::custom(format!("{s:?} is not a duration like 10s or 1h30m ({e})"))
    })
}
