//! What is added to a pod: the agent container, its volumes, and the task containers' mounts and
//! env, as JSONPatch `add`/`replace` operations against the pod the API server sent. Every value
//! is a typed `k8s-openapi` object; the pod is only read, so fields this crate's Kubernetes
//! version does not know are left exactly as they were.

use std::collections::BTreeMap;
use std::sync::Arc;

use flyte_auth_agent::env::{
    DEFAULT_SECRETS_ENV_PREFIX, ENV_ADMIN_DOMAIN, ENV_ADMIN_ORG, ENV_ADMIN_PROJECT,
    ENV_ALLOW_INSECURE_HTTP, ENV_EXECUTION_ID, ENV_HEALTH_ADDR, ENV_LOG_FILTER, ENV_LOG_FORMAT,
    ENV_REFRESH_START_JITTER, ENV_SECRETS_DIR, ENV_SECRETS_ENV_PREFIX, ENV_SECRETS_FILE_PREFIX,
    ENV_SOCKET, ENV_START_AT, ENV_TOKEN_REQUESTS,
};
pub use flyte_auth_agent::env::{ENV_TOKENS_PATH_PREFIX, SOCKET_FILE};
use flyte_auth_agent::pacing;
use flyte_auth_agent::secret::{SecretResolver, SecretsConfig};
use flyte_auth_proto::flyteidl::core::{secret::MountType, Secret};
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath,
    Pod, Probe, ProjectedVolumeSource, SeccompProfile, SecretKeySelector, SecretVolumeSource,
    SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

use crate::config::{
    AdminEnv, AgentSettings, Config, EnvConflict, InjectMode, TaskAuth, SA_TOKEN_FILE,
};
use crate::names::{check_dns_label, check_env_name};
use crate::requests::PodRequests;
use crate::scope::Execution;

/// The annotation marking a pod the injector has already changed (value: the mode).
pub const INJECTED_ANNOTATION: &str = "flyte.org/auth-agent-injected";
/// The env var flytekit reads Admin's endpoint from.
pub const ENV_PLATFORM_URL: &str = "FLYTE_PLATFORM_URL";
/// The env var that makes flytekit use plaintext (the unix socket).
pub const ENV_PLATFORM_INSECURE: &str = "FLYTE_PLATFORM_INSECURE";
/// The env var Flyte 2's SDK (`flyte`) reads its control plane's endpoint from in a task.
pub const ENV_FLYTE2_ENDPOINT: &str = "_U_EP_OVERRIDE";
/// The env var that makes Flyte 2's SDK use plaintext and send no credential.
pub const ENV_FLYTE2_INSECURE: &str = "_U_INSECURE";
/// The env var Flyte 2's SDK reads the org from (required by its task entry point).
pub const ENV_FLYTE2_ORG: &str = "_U_ORG_NAME";
/// Env vars by which Flyte 2's SDK would open its own session around the agent: a config
/// file (which beats the endpoint) and an API key (which carries its own endpoint and secret).
/// The injector sets them empty, which the SDK reads as unset.
pub const FLYTE2_BYPASS: [&str; 4] = [
    "UCTL_CONFIG",
    "FLYTECTL_CONFIG",
    "_UNION_EAGER_API_KEY",
    "EAGER_API_KEY",
];
/// The env var flytekit reads its Admin auth mode from (`[credentials] auth_mode`).
pub const ENV_CREDENTIALS_AUTH_MODE: &str = "FLYTE_CREDENTIALS_AUTH_MODE";
/// The env var flytekit reads the external-process command from (comma-separated argv).
pub const ENV_CREDENTIALS_COMMAND: &str = "FLYTE_CREDENTIALS_COMMAND";
/// The auth mode set in task containers: flytekit builds a `CommandAuthenticator`, which
/// is never interactive, needs no keyring and runs its command only after Admin answers
/// UNAUTHENTICATED (which the agent never does on its own). flytekit's default, `standard`
/// (PKCE), reads the keyring on construction and would open a browser on UNAUTHENTICATED.
pub const TASK_AUTH_MODE: &str = "external_process";
/// The auth mode of the flyte-auth-agent Python package (`flyte_auth_agent.flytekit_auth`):
/// sends no credential, asks Admin nothing before the first call and never logs in. flytekit
/// without the package refuses to build a client in this mode.
pub const TASK_AUTH_MODE_AGENT: &str = "flyte_auth_agent";
/// The pod annotation by which a pod asks for a flytekit auth mode under `admin.task_auth:
/// auto`: its value is `flyte_auth_agent` (the image has the package; `with_tokens` writes it)
/// or `external_process`.
pub const TASK_AUTH_ANNOTATION: &str = "flyte.org/auth-agent-flytekit-auth";
/// The command flytekit runs if Admin ever answers UNAUTHENTICATED (or UNKNOWN) through the agent.
///
/// flytekit splits it on commas into an argv and runs it without a shell, using its stdout
/// as a bearer token. A task pod cannot log in by design (the agent holds the credentials),
/// so the correct answer is to fail with a message saying where to look: the command prints
/// it to stderr and exits 1, and flytekit raises `AuthenticationError` with that text. It
/// prints no token and reads no secret. `python3` is the one program every flytekit image
/// has; the message must contain no comma (flytekit would split the argv there).
pub const TASK_AUTH_COMMAND: &str = "python3,-c,import sys; sys.exit('flyte-auth-agent: \
     Admin answered UNAUTHENTICATED or UNKNOWN through the auth agent; a task pod does not \
     log in itself (the agent authenticates its calls). See the log of the auth agent \
     container.')";

/// A pod's patch and what the requester should know about it.
#[derive(Debug, Clone, Default)]
pub struct Mutation {
    /// The operations, in order.
    pub patch: Patch,
    /// Warnings for the API client (kept or replaced env vars).
    pub warnings: Vec<String>,
}

/// Everything one pod gets, decided before any patch is written.
struct Plan<'a> {
    config: &'a Config,
    requests: &'a PodRequests,
    admin: Option<&'a AdminEnv>,
    execution: &'a Execution,
    secrets: SecretMounts,
    /// flytekit's auth mode in task containers.
    task_auth: &'static str,
}

impl Plan<'_> {
    fn sidecar(&self) -> bool {
        self.config.mode == InjectMode::Sidecar
    }

    /// The injected volumes' names: the agent's name and what each holds.
    fn volume_name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.config.agent.name)
    }

    fn tokens_volume(&self) -> String {
        self.volume_name("tokens")
    }

    fn socket_volume(&self) -> String {
        self.volume_name("socket")
    }

    fn secret_volume(&self, i: usize) -> String {
        self.volume_name(&format!("secret-{i}"))
    }

    fn sa_token_volume(&self) -> String {
        self.volume_name("sa-token")
    }

    fn socket_path(&self) -> String {
        format!(
            "{}/{SOCKET_FILE}",
            self.config.agent.socket_dir.trim_end_matches('/')
        )
    }
}

/// The client secrets the agent needs: files in one `secret` volume per Kubernetes Secret, and
/// env vars for the ones that must come from the environment.
#[derive(Debug, Default)]
struct SecretMounts {
    /// Secret name → (file path inside its volume → data key).
    files: BTreeMap<String, BTreeMap<String, String>>,
    /// Env var → (Secret name, data key).
    env: BTreeMap<String, (String, String)>,
}

/// The pod with the agent added, as a patch; or every reason it cannot be. `admin` is the
/// Admin proxy's settings, given only with `execution.scope` (the scope it acts in).
pub fn mutate(
    config: &Config,
    pod: &Pod,
    requests: &PodRequests,
    admin: Option<&AdminEnv>,
    execution: &Execution,
) -> Result<Mutation, Vec<String>> {
    let mut problems = Vec::new();
    // Never a proxy without the scope it must keep to.
    let admin = admin.filter(|_| execution.scope.is_some());
    let secrets = secret_mounts(config, requests, admin, &mut problems);
    let task_auth = task_auth(config, pod).unwrap_or_else(|problem| {
        problems.push(problem);
        TASK_AUTH_MODE
    });
    let plan = Plan {
        config,
        requests,
        admin,
        execution,
        secrets,
        task_auth,
    };
    let volumes = volumes(&plan);
    let mounts = task_mounts(&plan);
    check_collisions(&plan, pod, &volumes, &mounts, &mut problems);
    let agent = agent_container(&plan);
    if let Err(e) = check_dns_label(&agent.name) {
        problems.push(format!("agent.name in the injector config: {e}"));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(patch(&plan, pod, &agent, &volumes, &mounts))
}

/// The operations that add `agent`, `volumes` and the task containers' `mounts` and env to
/// `pod`, and mark it injected; warnings for env vars a container already sets.
fn patch(
    plan: &Plan<'_>,
    pod: &Pod,
    agent: &Container,
    volumes: &[Volume],
    mounts: &[VolumeMount],
) -> Mutation {
    let mut ops = Ops::default();
    let spec = pod.spec.as_ref();
    match spec.and_then(|s| s.init_containers.as_ref()) {
        // First, so that the pod's own init containers can use the tokens too.
        Some(_) => ops.add(&["spec", "initContainers", "0"], agent),
        None => ops.add(&["spec", "initContainers"], [agent]),
    }
    match spec.and_then(|s| s.volumes.as_ref()) {
        Some(_) => volumes
            .iter()
            .for_each(|v| ops.add(&["spec", "volumes", "-"], v)),
        None => ops.add(&["spec", "volumes"], volumes),
    }
    let mut warnings = Vec::new();
    let env = task_env(plan);
    let flyte2 = plan.sidecar() && plan.admin.is_some_and(|a| a.connect_port.is_some());
    let containers = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
    for (i, container) in containers.iter().enumerate() {
        // Only a proxied Flyte 2 container has a group of its own.
        let no_proxy = flyte2
            .then(|| no_proxy_env(container, &mut warnings))
            .flatten();
        let env = match no_proxy {
            None => std::borrow::Cow::Borrowed(&env),
            Some(group) => std::borrow::Cow::Owned([env.clone(), vec![group]].concat()),
        };
        patch_task_container(plan, i, container, mounts, &env, &mut ops, &mut warnings);
    }
    let mode = match plan.config.mode {
        InjectMode::Sidecar => "sidecar",
        InjectMode::InitOnly => "init-only",
    };
    match pod.metadata.annotations.as_ref() {
        Some(_) => ops.add(&["metadata", "annotations", INJECTED_ANNOTATION], mode),
        None => ops.add(
            &["metadata", "annotations"],
            BTreeMap::from([(INJECTED_ANNOTATION, mode)]),
        ),
    }
    Mutation {
        patch: Patch(ops.0),
        warnings,
    }
}

/// flytekit's auth mode for the pod's task containers: `admin.task_auth`, or under `auto` what
/// the pod's [`TASK_AUTH_ANNOTATION`] asks for. The annotation is the pod author's, but it only
/// picks between two modes that both send no credential: a wrong claim breaks that pod's own
/// flytekit client, nothing else.
fn task_auth(config: &Config, pod: &Pod) -> Result<&'static str, String> {
    let asked = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(TASK_AUTH_ANNOTATION));
    let asked = match asked.map(String::as_str) {
        None => None,
        Some(TASK_AUTH_MODE) => Some(TASK_AUTH_MODE),
        Some(TASK_AUTH_MODE_AGENT) => Some(TASK_AUTH_MODE_AGENT),
        Some(other) => {
            let shown: String = other.chars().take(64).collect();
            return Err(format!(
                "annotation {TASK_AUTH_ANNOTATION}: {shown:?} is not a flytekit auth mode the injector sets (expected {TASK_AUTH_MODE_AGENT} or {TASK_AUTH_MODE})"
            ));
        }
    };
    let auth = config
        .admin
        .as_ref()
        .map(|a| a.task_auth)
        .unwrap_or_default();
    Ok(match auth {
        TaskAuth::Auto => asked.unwrap_or(TASK_AUTH_MODE),
        TaskAuth::ExternalProcess => TASK_AUTH_MODE,
        TaskAuth::FlyteAuthAgent => TASK_AUTH_MODE_AGENT,
    })
}

/// Whether the injector has already changed this pod (re-invocation, or a pod copied from one).
pub fn already_injected(config: &Config, pod: &Pod) -> bool {
    let marked = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(INJECTED_ANNOTATION));
    marked && has_container(pod, &config.agent.name)
}

fn has_container(pod: &Pod, name: &str) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .any(|c| c.name == name)
    })
}

/// The secrets of every token request and of the Admin credential, by how the agent reads them.
fn secret_mounts(
    config: &Config,
    requests: &PodRequests,
    admin: Option<&AdminEnv>,
    problems: &mut Vec<String>,
) -> SecretMounts {
    let resolver = resolver(config);
    let mut mounts = SecretMounts::default();
    let admin_secret = admin.and_then(|a| a.client_secret.as_ref());
    let secrets = requests
        .requests
        .iter()
        .map(|r| (format!("token request {:?}", r.name), &r.client_secret))
        .chain(admin_secret.map(|s| ("admin.client_secret".to_string(), s)));
    for (what, secret) in secrets {
        let custom_env = Some(secret.env_var.as_str()).filter(|v| !v.is_empty());
        if secret.mount_requirement == MountType::EnvVar as i32 || custom_env.is_some() {
            let var = custom_env
                .map(str::to_string)
                .unwrap_or_else(|| resolver.env_var_name(secret));
            if let Err(e) = check_env_name(&var) {
                problems.push(format!("{what}: env var {e}"));
                continue;
            }
            let source = (secret.group.clone(), secret.key.clone());
            match mounts.env.get(&var) {
                // Kubernetes keeps the last of two entries with one name: one secret would
                // silently stand in for the other.
                Some(first) if *first != source => {
                    problems.push(format!(
                        "{what}: env var {var:?} would hold both key {:?} of Secret {:?} and key {:?} of Secret {:?}",
                        first.1, first.0, source.1, source.0
                    ));
                    continue;
                }
                _ => {
                    mounts.env.insert(var, source);
                }
            }
            if secret.mount_requirement == MountType::EnvVar as i32 {
                continue;
            }
        }
        let path = secret_file_path(&resolver, config, secret);
        let files = mounts.files.entry(secret.group.clone()).or_default();
        match files.get(&path) {
            Some(key) if *key != secret.key => problems.push(format!(
                "{what}: keys {key:?} and {:?} of Secret {:?} would be the same file {path:?} (flytekit lower-cases secret file names)",
                secret.key, secret.group
            )),
            _ => {
                files.insert(path, secret.key.clone());
            }
        }
    }
    mounts
}

/// The agent's secret lookup rules, over the directory the injector mounts secrets in.
fn resolver(config: &Config) -> SecretResolver {
    SecretResolver::new(
        SecretsConfig {
            default_dir: config.agent.secrets_dir.clone().into(),
            env_prefix: DEFAULT_SECRETS_ENV_PREFIX.into(),
            file_prefix: String::new(),
        },
        Arc::new(std::collections::HashMap::<String, String>::new()),
    )
}

/// Where the agent will look for `secret`, relative to its Secret's volume.
fn secret_file_path(resolver: &SecretResolver, config: &Config, secret: &Secret) -> String {
    let full = resolver.file_path(secret);
    let volume_root =
        std::path::Path::new(&config.agent.secrets_dir).join(secret_dir(&secret.group));
    full.strip_prefix(&volume_root)
        .unwrap_or(&full)
        .to_string_lossy()
        .into_owned()
}

/// The directory the volume of Secret `group` is mounted at, under the secrets dir (flytekit
/// lower-cases).
fn secret_dir(group: &str) -> String {
    group.to_lowercase()
}

fn volumes(plan: &Plan<'_>) -> Vec<Volume> {
    let agent = &plan.config.agent;
    let mut volumes = vec![in_memory(
        plan.tokens_volume(),
        agent.tokens_size_limit.clone(),
    )];
    if plan.sidecar() {
        volumes.push(in_memory(plan.socket_volume(), Quantity("1Mi".into())));
    }
    for (i, (group, files)) in plan.secrets.files.iter().enumerate() {
        volumes.push(Volume {
            name: plan.secret_volume(i),
            secret: Some(SecretVolumeSource {
                secret_name: Some(group.clone()),
                items: Some(
                    files
                        .iter()
                        .map(|(path, key)| KeyToPath {
                            key: key.clone(),
                            path: path.clone(),
                            mode: None,
                        })
                        .collect(),
                ),
                // Readable by the agent's non-root uid; no other container mounts it.
                default_mode: Some(0o444),
                optional: Some(false),
            }),
            ..Default::default()
        });
    }
    if let Some(sa) = plan.admin.and_then(|a| a.service_account_token.as_ref()) {
        volumes.push(Volume {
            name: plan.sa_token_volume(),
            projected: Some(ProjectedVolumeSource {
                default_mode: Some(0o444),
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(sa.audience.clone()),
                        expiration_seconds: Some(sa.expiration_seconds),
                        path: SA_TOKEN_FILE.into(),
                    }),
                    ..Default::default()
                }]),
            }),
            ..Default::default()
        });
    }
    volumes
}

/// An `emptyDir` in memory: tokens and the socket never touch the node's disk.
fn in_memory(name: String, size_limit: Quantity) -> Volume {
    Volume {
        name,
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            size_limit: Some(size_limit),
        }),
        ..Default::default()
    }
}

/// Refuses names the pod already uses for something else: the agent container's, and every
/// volume's, and mount paths a task container already mounts.
fn check_collisions(
    plan: &Plan<'_>,
    pod: &Pod,
    volumes: &[Volume],
    mounts: &[VolumeMount],
    problems: &mut Vec<String>,
) {
    let Some(spec) = pod.spec.as_ref() else {
        problems.push("the pod has no spec".into());
        return;
    };
    let name = &plan.config.agent.name;
    if has_container(pod, name) {
        problems.push(format!(
            "the pod already has a container named {name:?}; rename it, or set agent.name in the injector config"
        ));
    }
    for volume in volumes {
        if spec.volumes.iter().flatten().any(|v| v.name == volume.name) {
            problems.push(format!(
                "the pod already has a volume named {:?}; rename it, or set agent.name in the injector config",
                volume.name
            ));
        }
    }
    for container in &spec.containers {
        for mount in mounts {
            if container
                .volume_mounts
                .iter()
                .flatten()
                .any(|m| m.mount_path.trim_end_matches('/') == mount.mount_path)
            {
                problems.push(format!(
                    "container {:?} already mounts something at {}, where the agent's {} go",
                    container.name,
                    mount.mount_path,
                    if mount.name == plan.tokens_volume() {
                        "token files"
                    } else {
                        "socket"
                    }
                ));
            }
        }
    }
}

/// The agent: a native sidecar (or a plain init container in init-only mode), locked down.
fn agent_container(plan: &Plan<'_>) -> Container {
    let agent = &plan.config.agent;
    Container {
        name: agent.name.clone(),
        image: Some(agent.image.clone()),
        image_pull_policy: Some(agent.image_pull_policy.clone()),
        args: Some(agent_args(plan)),
        env: Some(agent_env(plan)),
        resources: Some(agent.resources.clone()),
        restart_policy: plan.sidecar().then(|| "Always".to_string()),
        startup_probe: plan.sidecar().then(|| startup_probe(agent)),
        liveness_probe: plan.sidecar().then(|| liveness_probe(agent)),
        security_context: Some(locked_down(agent)),
        // An init-only failure then shows its last log lines in the pod's status.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(agent_mounts(plan)),
        ..Default::default()
    }
}

/// `serve`; in init-only mode once, giving up after `agent.once_timeout`.
fn agent_args(plan: &Plan<'_>) -> Vec<String> {
    let mut args = vec!["serve".to_string()];
    if !plan.sidecar() {
        args.extend([
            "--once".into(),
            "--once-timeout".into(),
            humantime::format_duration(plan.config.agent.once_timeout).to_string(),
        ]);
    }
    args
}

/// A probe of the agent's health port at `path`, every second.
fn health_probe(agent: &AgentSettings, path: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(i32::from(agent.health_port)),
            ..Default::default()
        }),
        period_seconds: Some(1),
        timeout_seconds: Some(1),
        ..Default::default()
    }
}

/// Holds the task back until the agent has every token, for at most `agent.startup_timeout`.
fn startup_probe(agent: &AgentSettings) -> Probe {
    Probe {
        // /readyz answers 200 once every requested token is on disk: the task starts then.
        failure_threshold: Some(
            i32::try_from(agent.startup_timeout.as_secs().max(1)).unwrap_or(i32::MAX),
        ),
        ..health_probe(agent, "/readyz")
    }
}

/// Restarts an agent that stops answering.
fn liveness_probe(agent: &AgentSettings) -> Probe {
    Probe {
        period_seconds: Some(10),
        failure_threshold: Some(3),
        ..health_probe(agent, "/healthz")
    }
}

/// Non-root, read-only root, no privilege, no capabilities, the runtime's seccomp profile.
fn locked_down(agent: &AgentSettings) -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(agent.run_as_user),
        run_as_group: Some(agent.run_as_user),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..Default::default()
    }
}

/// What the agent mounts: the tokens it writes, its socket's directory, and (read-only) the
/// client secrets and the service-account token, which no other container gets.
fn agent_mounts(plan: &Plan<'_>) -> Vec<VolumeMount> {
    let agent = &plan.config.agent;
    let mut mounts = vec![mount(plan.tokens_volume(), agent.tokens_dir.clone(), false)];
    if plan.sidecar() {
        mounts.push(mount(plan.socket_volume(), agent.socket_dir.clone(), false));
    }
    for (i, group) in plan.secrets.files.keys().enumerate() {
        let dir = format!(
            "{}/{}",
            agent.secrets_dir.trim_end_matches('/'),
            secret_dir(group)
        );
        mounts.push(mount(plan.secret_volume(i), dir, true));
    }
    if plan
        .admin
        .is_some_and(|a| a.service_account_token.is_some())
    {
        let dir = agent.service_account_token_dir.clone();
        mounts.push(mount(plan.sa_token_volume(), dir, true));
    }
    mounts
}

/// Volume `name` mounted at `mount_path`.
fn mount(name: String, mount_path: String, read_only: bool) -> VolumeMount {
    VolumeMount {
        name,
        mount_path,
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

/// The agent's env: its token requests, directories, secrets lookup and Admin settings.
fn agent_env(plan: &Plan<'_>) -> Vec<EnvVar> {
    let agent = &plan.config.agent;
    let mut env = vec![
        env_value(
            ENV_TOKEN_REQUESTS,
            serde_json::Value::Array(plan.requests.json.clone()).to_string(),
        ),
        env_value(ENV_TOKENS_PATH_PREFIX, agent.tokens_dir.clone()),
        env_value(ENV_SECRETS_DIR, agent.secrets_dir.clone()),
        env_value(ENV_SECRETS_ENV_PREFIX, DEFAULT_SECRETS_ENV_PREFIX.into()),
        env_value(ENV_SECRETS_FILE_PREFIX, String::new()),
        env_value(ENV_LOG_FORMAT, agent.log_format.clone()),
        env_value(ENV_LOG_FILTER, agent.log_level.clone()),
    ];
    if plan.sidecar() {
        env.push(env_value(ENV_SOCKET, plan.socket_path()));
        env.push(env_value(
            ENV_HEALTH_ADDR,
            // The kubelet probes the pod IP; the health port serves no token.
            format!("0.0.0.0:{}", agent.health_port),
        ));
    }
    if agent.allow_insecure_http {
        env.push(env_value(ENV_ALLOW_INSECURE_HTTP, "true".into()));
    }
    if !agent.start_jitter.is_zero() {
        let jitter = humantime::format_duration(agent.start_jitter).to_string();
        env.push(env_value(ENV_REFRESH_START_JITTER, jitter));
    }
    if let Some(at) = plan.execution.start_at {
        env.push(env_value(
            ENV_START_AT,
            pacing::to_unix_millis(at).to_string(),
        ));
    }
    for (var, (group, key)) in &plan.secrets.env {
        env.push(EnvVar {
            name: var.clone(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: group.clone(),
                    key: key.clone(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
        });
    }
    if let Some(admin) = plan.admin {
        env.extend(admin.env.iter().map(|(k, v)| env_value(k, v.clone())));
        if let Some(scope) = &plan.execution.scope {
            env.push(env_value(ENV_ADMIN_PROJECT, scope.project.clone()));
            env.push(env_value(ENV_ADMIN_DOMAIN, scope.domain.clone()));
            if let Some(org) = &scope.org {
                env.push(env_value(ENV_ADMIN_ORG, org.clone()));
            }
        }
    }
    if let Some(id) = &plan.execution.id {
        env.push(env_value(ENV_EXECUTION_ID, id.clone()));
    }
    // Checked when the config was read, so this cannot fail here.
    let limits = plan.config.agent_limits_env().unwrap_or_default();
    env.extend(limits.into_iter().map(|(k, v)| env_value(&k, v)));
    env
}

/// An env var with a plain value.
fn env_value(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value),
        value_from: None,
    }
}

/// What every task container mounts: the token files read-only, and the socket's directory.
fn task_mounts(plan: &Plan<'_>) -> Vec<VolumeMount> {
    let agent = &plan.config.agent;
    let tokens_dir = agent.tokens_dir.trim_end_matches('/').to_string();
    let mut mounts = vec![mount(plan.tokens_volume(), tokens_dir, true)];
    if plan.sidecar() {
        let socket_dir = agent.socket_dir.trim_end_matches('/').to_string();
        mounts.push(mount(plan.socket_volume(), socket_dir, false));
    }
    mounts
}

/// The env every task container gets, in groups that are kept or replaced together.
fn task_env(plan: &Plan<'_>) -> Vec<Vec<EnvVar>> {
    let mut groups = vec![vec![env_value(
        ENV_TOKENS_PATH_PREFIX,
        plan.config.agent.tokens_dir.clone(),
    )]];
    if plan.sidecar() {
        groups.push(vec![env_value(ENV_SOCKET, plan.socket_path())]);
        if plan.admin.is_some() {
            // flytekit needs both: a unix:// endpoint with TLS would not connect. The
            // auth mode belongs to the same group: it is right only for the agent's
            // endpoint, and a container that keeps its own endpoint keeps its own auth.
            let mut group = vec![
                env_value(ENV_PLATFORM_URL, format!("unix://{}", plan.socket_path())),
                env_value(ENV_PLATFORM_INSECURE, "true".into()),
                env_value(ENV_CREDENTIALS_AUTH_MODE, plan.task_auth.into()),
            ];
            if plan.task_auth == TASK_AUTH_MODE {
                group.push(env_value(ENV_CREDENTIALS_COMMAND, TASK_AUTH_COMMAND.into()));
            }
            groups.push(group);
        }
        if let Some(port) = plan.admin.and_then(|a| a.connect_port) {
            groups.push(flyte2_env(plan, port));
        }
    }
    groups
}

/// Flyte 2's SDK, pointed at the agent's loopback port in plaintext (so it sends no
/// credential), with what would take it around the agent blanked. One group: a container
/// that keeps its own endpoint or key keeps its own way in.
fn flyte2_env(plan: &Plan<'_>, port: u16) -> Vec<EnvVar> {
    let mut group = vec![
        env_value(ENV_FLYTE2_ENDPOINT, format!("http://127.0.0.1:{port}")),
        env_value(ENV_FLYTE2_INSECURE, "true".into()),
    ];
    if let Some(org) = plan.execution.scope.as_ref().and_then(|s| s.org.clone()) {
        group.push(env_value(ENV_FLYTE2_ORG, org));
    }
    group.extend(
        FLYTE2_BYPASS
            .iter()
            .map(|var| env_value(var, String::new())),
    );
    group
}

/// The proxy variables under which the flyte SDK's HTTP client (pyqwest) sends even loopback
/// requests to the proxy, unless `NO_PROXY` names the address.
const PROXY_VARS: [&str; 4] = ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"];

/// For a container whose env sets a proxy: `NO_PROXY` and `no_proxy` with `127.0.0.1` added to
/// the container's own values (one group, kept or replaced per `env_conflict`), so the SDK's
/// calls reach the agent's loopback port. A value from a reference cannot be extended: a
/// warning says what to do. Proxies set through `envFrom` are not seen.
fn no_proxy_env(container: &Container, warnings: &mut Vec<String>) -> Option<Vec<EnvVar>> {
    let env = container.env.as_deref().unwrap_or_default();
    let find = |name: &str| env.iter().find(|e| e.name == name);
    let proxied = PROXY_VARS.iter().any(|name| {
        find(name).is_some_and(|e| {
            e.value_from.is_some() || e.value.as_deref().is_some_and(|v| !v.is_empty())
        })
    });
    if !proxied {
        return None;
    }
    let mut group = Vec::new();
    for name in ["NO_PROXY", "no_proxy"] {
        match find(name) {
            None => group.push(env_value(name, "127.0.0.1".into())),
            Some(e) if e.value_from.is_some() => warnings.push(format!(
                "container {:?}: {name} comes from a reference, so the auth agent cannot add 127.0.0.1 to it; without it the flyte SDK sends its calls to the agent to the proxy",
                container.name
            )),
            Some(e) => {
                let own = e.value.as_deref().unwrap_or_default();
                let covered = own
                    .split(',')
                    .map(str::trim)
                    .any(|entry| matches!(entry, "*" | "127.0.0.1" | "127.0.0.0/8"));
                if !covered {
                    let value = match own.trim() {
                        "" => "127.0.0.1".to_string(),
                        own => format!("{own},127.0.0.1"),
                    };
                    group.push(env_value(name, value));
                }
            }
        }
    }
    (!group.is_empty()).then_some(group)
}

/// Adds the mounts and env to container `i`, keeping or replacing env vars it already sets.
fn patch_task_container(
    plan: &Plan<'_>,
    i: usize,
    container: &Container,
    mounts: &[VolumeMount],
    env_groups: &[Vec<EnvVar>],
    ops: &mut Ops,
    warnings: &mut Vec<String>,
) {
    let index = i.to_string();
    let base = ["spec", "containers", index.as_str()];
    match container.volume_mounts.as_ref() {
        Some(_) => mounts
            .iter()
            .for_each(|m| ops.add(&[&base[..], &["volumeMounts", "-"]].concat(), m)),
        None => ops.add(&[&base[..], &["volumeMounts"]].concat(), mounts),
    }
    let existing = container.env.as_deref().unwrap_or_default();
    let position = |name: &str| existing.iter().position(|e| e.name == name);
    let mut added = Vec::new();
    for group in env_groups {
        let clashes: Vec<(usize, &EnvVar)> = group
            .iter()
            .filter_map(|e| position(&e.name).map(|j| (j, e)))
            .collect();
        if clashes.is_empty() {
            added.extend(group.iter().cloned());
            continue;
        }
        let names: Vec<&str> = group.iter().map(|e| e.name.as_str()).collect();
        match plan.config.env_conflict {
            EnvConflict::Keep => warnings.push(format!(
                "container {:?}: kept its own {} (env_conflict: keep); the auth agent's value is not set",
                container.name,
                names.join(" and ")
            )),
            EnvConflict::Replace => {
                warnings.push(format!(
                    "container {:?}: replaced its {} with the auth agent's (env_conflict: replace)",
                    container.name,
                    names.join(" and ")
                ));
                for var in group {
                    match position(&var.name) {
                        Some(j) => ops.replace(
                            &[&base[..], &["env", j.to_string().as_str()]].concat(),
                            var,
                        ),
                        None => added.push(var.clone()),
                    }
                }
            }
        }
    }
    if added.is_empty() {
        return;
    }
    match container.env.as_ref() {
        Some(_) => added
            .iter()
            .for_each(|e| ops.add(&[&base[..], &["env", "-"]].concat(), e)),
        None => ops.add(&[&base[..], &["env"]].concat(), &added),
    }
}

/// JSONPatch operations under construction.
#[derive(Default)]
struct Ops(Vec<PatchOperation>);

impl Ops {
    fn add(&mut self, path: &[&str], value: impl Serialize) {
        self.0.push(PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(path.iter().copied()),
            value: to_value(value),
        }));
    }

    fn replace(&mut self, path: &[&str], value: impl Serialize) {
        self.0.push(PatchOperation::Replace(ReplaceOperation {
            path: PointerBuf::from_tokens(path.iter().copied()),
            value: to_value(value),
        }));
    }
}

/// k8s-openapi types, strings and maps of strings always serialize.
fn to_value(value: impl Serialize) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(env: &[(&str, Option<&str>)]) -> Container {
        Container {
            name: "main".into(),
            env: Some(
                env.iter()
                    .map(|(name, value)| EnvVar {
                        name: name.to_string(),
                        value: value.map(String::from),
                        value_from: value.is_none().then(|| EnvVarSource {
                            secret_key_ref: Some(SecretKeySelector {
                                name: "proxy".into(),
                                key: "url".into(),
                                optional: None,
                            }),
                            ..Default::default()
                        }),
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn no_proxy(env: &[(&str, Option<&str>)]) -> (Vec<(String, String)>, Vec<String>) {
        let mut warnings = Vec::new();
        let group = no_proxy_env(&container(env), &mut warnings).unwrap_or_default();
        let vars = group
            .into_iter()
            .map(|e| (e.name, e.value.unwrap_or_default()))
            .collect();
        (vars, warnings)
    }

    #[test]
    fn a_proxied_container_gets_loopback_added_to_its_no_proxy() {
        let pair =
            |a: &str, b: &str| vec![("NO_PROXY".into(), a.into()), ("no_proxy".into(), b.into())];
        // No proxy, or an empty one: nothing.
        assert_eq!(no_proxy(&[]), (vec![], vec![]));
        assert_eq!(no_proxy(&[("HTTP_PROXY", Some(""))]), (vec![], vec![]));
        // A proxy, from a value or a reference: both spellings added, or extended.
        assert_eq!(
            no_proxy(&[("http_proxy", Some("http://p:3128"))]),
            (pair("127.0.0.1", "127.0.0.1"), vec![])
        );
        assert_eq!(
            no_proxy(&[
                ("ALL_PROXY", None),
                ("NO_PROXY", Some(".svc")),
                ("no_proxy", Some(""))
            ]),
            (pair(".svc,127.0.0.1", "127.0.0.1"), vec![])
        );
        // Already covered: left alone.
        assert_eq!(
            no_proxy(&[
                ("HTTP_PROXY", Some("http://p")),
                ("NO_PROXY", Some("a, 127.0.0.0/8")),
                ("no_proxy", Some("*"))
            ]),
            (vec![], vec![])
        );
        // A reference cannot be extended: a warning naming it, the other spelling still added.
        let (vars, warnings) = no_proxy(&[("HTTP_PROXY", Some("http://p")), ("NO_PROXY", None)]);
        assert_eq!(
            vars,
            vec![("no_proxy".to_string(), "127.0.0.1".to_string())]
        );
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("NO_PROXY comes from a reference"),
            "{warnings:?}"
        );
    }
}
