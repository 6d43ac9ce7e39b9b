//! Resolves a flyteidl `Secret` reference to its value, by the rules flytekit's `SecretsManager`
//! uses inside a task, so a secret mounted for flytekit is found by the agent at the same place:
//!
//! - env var `<env_prefix><GROUP>[_<GROUP_VERSION>][_<KEY>]`, upper-cased, parts joined by `_`;
//! - file `<default_dir>/<group>[/<group_version>]/<file_prefix><key>`, every part lower-cased
//!   (the file prefix goes on the last part present).
//!
//! `mount_requirement` picks where to look: `ENV_VAR` only the env var, `FILE` only the file,
//! `ANY` the env var first, then the file (flytekit's order). A secret that names its own `env_var`
//! is looked for there before the derived env var name. The value is read anew on every
//! call, so a rotated Kubernetes Secret takes effect without a restart, and surrounding
//! whitespace (the trailing newline `kubectl create secret --from-file` keeps) is trimmed, as
//! flytekit's `.strip()` does.

use std::path::PathBuf;
use std::sync::Arc;

use flyte_auth_proto::flyteidl::core::{secret::MountType, Secret};

use crate::env::Env;
use crate::token::SecretString;

/// Where secrets live: the `FLYTE_SECRETS_*` settings propeller's secret webhook sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretsConfig {
    /// `FLYTE_SECRETS_DEFAULT_DIR`.
    pub default_dir: PathBuf,
    /// `FLYTE_SECRETS_ENV_PREFIX`.
    pub env_prefix: String,
    /// `FLYTE_SECRETS_FILE_PREFIX`.
    pub file_prefix: String,
}

impl Default for SecretsConfig {
    fn default() -> Self {
        Self {
            default_dir: PathBuf::from(crate::env::DEFAULT_SECRETS_DIR),
            env_prefix: crate::env::DEFAULT_SECRETS_ENV_PREFIX.into(),
            file_prefix: String::new(),
        }
    }
}

/// Why a secret could not be read. Messages name where the agent looked, never the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The reference has no group, so there is nowhere to look.
    #[error("secret reference has no group (the Kubernetes Secret name)")]
    NoGroup,
    /// The mount requirement is a number flyteidl does not define.
    #[error("secret mount_requirement {0} is not ANY, ENV_VAR or FILE")]
    UnknownMountType(i32),
    /// Neither the env var nor the file exists.
    #[error("secret not found: looked for {}", .tried.join(" and "))]
    NotFound {
        /// The env var and/or file path that were tried.
        tried: Vec<String>,
    },
    /// The file exists but could not be read.
    #[error("secret file {path} is unreadable: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The value is empty after trimming.
    #[error("secret at {0} is empty")]
    Empty(String),
    /// The file is not UTF-8 text.
    #[error("secret file {0} is not UTF-8 text")]
    NotUtf8(PathBuf),
}

/// Reads secrets by flytekit's rules from the environment and the secrets directory.
#[derive(Clone)]
pub struct SecretResolver {
    config: SecretsConfig,
    env: Arc<dyn Env>,
}

impl std::fmt::Debug for SecretResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretResolver")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SecretResolver {
    /// The prefix of env-var secrets (`FLYTE_SECRETS_ENV_PREFIX`).
    pub fn env_prefix(&self) -> &str {
        &self.config.env_prefix
    }

    /// A resolver over `config`, reading env vars through `env`.
    pub fn new(config: SecretsConfig, env: Arc<dyn Env>) -> Self {
        Self { config, env }
    }

    /// The env var flytekit would look in for this secret.
    pub fn env_var_name(&self, secret: &Secret) -> String {
        let parts: Vec<String> = [&secret.group, &secret.group_version, &secret.key]
            .into_iter()
            .filter(|p| !p.is_empty())
            .map(|p| p.to_uppercase())
            .collect();
        format!("{}{}", self.config.env_prefix, parts.join("_"))
    }

    /// The file flytekit would look in for this secret.
    pub fn file_path(&self, secret: &Secret) -> PathBuf {
        let mut parts: Vec<String> = [&secret.group, &secret.group_version, &secret.key]
            .into_iter()
            .filter(|p| !p.is_empty())
            .map(|p| p.to_lowercase())
            .collect();
        if let Some(last) = parts.last_mut() {
            *last = format!("{}{last}", self.config.file_prefix);
        }
        let mut path = self.config.default_dir.clone();
        path.extend(parts);
        path
    }

    /// Reads the secret now. Blocking file I/O: call it off the async runtime.
    pub fn read(&self, secret: &Secret) -> Result<SecretString, SecretError> {
        if secret.group.is_empty() {
            return Err(SecretError::NoGroup);
        }
        let mount = MountType::try_from(secret.mount_requirement)
            .map_err(|_| SecretError::UnknownMountType(secret.mount_requirement))?;
        let mut tried = Vec::with_capacity(2);
        if matches!(mount, MountType::Any | MountType::EnvVar) {
            let custom = Some(secret.env_var.clone()).filter(|v| !v.is_empty());
            for name in custom.into_iter().chain([self.env_var_name(secret)]) {
                if let Some(value) = self.env.var(&name) {
                    return non_empty(&value, || format!("env var {name}"));
                }
                tried.push(format!("env var {name}"));
            }
        }
        if matches!(mount, MountType::Any | MountType::File) {
            let path = self.file_path(secret);
            match std::fs::read(&path) {
                Ok(bytes) => {
                    let text =
                        String::from_utf8(bytes).map_err(|_| SecretError::NotUtf8(path.clone()))?;
                    return non_empty(&text, || format!("file {}", path.display()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    tried.push(format!("file {}", path.display()))
                }
                Err(source) => return Err(SecretError::Unreadable { path, source }),
            }
        }
        Err(SecretError::NotFound { tried })
    }
}

fn non_empty(value: &str, place: impl FnOnce() -> String) -> Result<SecretString, SecretError> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(SecretError::Empty(place()));
    }
    Ok(SecretString::new(trimmed))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn secret(group: &str, version: &str, key: &str, mount: MountType) -> Secret {
        Secret {
            group: group.into(),
            group_version: version.into(),
            key: key.into(),
            mount_requirement: mount as i32,
            ..Default::default()
        }
    }

    fn resolver(dir: &std::path::Path, env: &[(&str, &str)], file_prefix: &str) -> SecretResolver {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        SecretResolver::new(
            SecretsConfig {
                default_dir: dir.to_path_buf(),
                env_prefix: "_FSEC_".into(),
                file_prefix: file_prefix.into(),
            },
            Arc::new(env),
        )
    }

    #[test]
    fn names_follow_flytekit_case_rules() {
        let r = resolver(std::path::Path::new("/s"), &[], "pre-");
        let s = secret("My-App", "V2", "Client_Secret", MountType::Any);
        assert_eq!(r.env_var_name(&s), "_FSEC_MY-APP_V2_CLIENT_SECRET");
        assert_eq!(
            r.file_path(&s),
            PathBuf::from("/s/my-app/v2/pre-client_secret")
        );
        let no_version = secret("G", "", "K", MountType::Any);
        assert_eq!(r.env_var_name(&no_version), "_FSEC_G_K");
        assert_eq!(r.file_path(&no_version), PathBuf::from("/s/g/pre-k"));
        let group_only = secret("G", "", "", MountType::Any);
        assert_eq!(r.file_path(&group_only), PathBuf::from("/s/pre-g"));
    }

    #[test]
    fn any_prefers_env_then_file_and_trims() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("app")).unwrap();
        std::fs::write(dir.path().join("app/key"), "from-file\n").unwrap();
        let s = secret("app", "", "key", MountType::Any);
        let from_file = resolver(dir.path(), &[], "").read(&s).unwrap();
        assert_eq!(from_file.expose(), "from-file");
        let from_env = resolver(dir.path(), &[("_FSEC_APP_KEY", "from-env")], "")
            .read(&s)
            .unwrap();
        assert_eq!(from_env.expose(), "from-env");
    }

    #[test]
    fn mount_requirement_restricts_where_to_look() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("app")).unwrap();
        std::fs::write(dir.path().join("app/key"), "file").unwrap();
        let r = resolver(dir.path(), &[("_FSEC_APP_KEY", "env")], "");
        let env_only = r
            .read(&secret("app", "", "key", MountType::EnvVar))
            .unwrap();
        assert_eq!(env_only.expose(), "env");
        let file_only = r.read(&secret("app", "", "key", MountType::File)).unwrap();
        assert_eq!(file_only.expose(), "file");
        let missing = resolver(dir.path(), &[], "")
            .read(&secret("app", "", "key", MountType::EnvVar))
            .unwrap_err();
        assert_eq!(
            missing.to_string(),
            "secret not found: looked for env var _FSEC_APP_KEY"
        );
    }

    #[test]
    fn errors_name_the_place_never_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let r = resolver(dir.path(), &[("_FSEC_BLANK_K", "  \n")], "");
        let err = r
            .read(&secret("blank", "", "k", MountType::Any))
            .unwrap_err();
        assert_eq!(err.to_string(), "secret at env var _FSEC_BLANK_K is empty");
        let err = r
            .read(&secret("nope", "", "k", MountType::Any))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "secret not found: looked for env var _FSEC_NOPE_K and file {}",
                dir.path().join("nope/k").display()
            )
        );
        assert!(matches!(
            r.read(&secret("", "", "k", MountType::Any)),
            Err(SecretError::NoGroup)
        ));
        let mut odd = secret("g", "", "k", MountType::Any);
        odd.mount_requirement = 9;
        assert!(matches!(
            r.read(&odd),
            Err(SecretError::UnknownMountType(9))
        ));
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        std::fs::write(dir.path().join("bin/k"), [0xff, 0xfe]).unwrap();
        assert!(matches!(
            r.read(&secret("bin", "", "k", MountType::File)),
            Err(SecretError::NotUtf8(_))
        ));
        std::fs::create_dir_all(dir.path().join("dir/k")).unwrap();
        assert!(matches!(
            r.read(&secret("dir", "", "k", MountType::File)),
            Err(SecretError::Unreadable { .. })
        ));
    }

    #[test]
    fn a_custom_env_var_is_tried_first() {
        let r = resolver(
            std::path::Path::new("/none"),
            &[("MY_SECRET", "custom"), ("_FSEC_APP_KEY", "derived")],
            "",
        );
        let mut s = secret("app", "", "key", MountType::EnvVar);
        s.env_var = "MY_SECRET".into();
        assert_eq!(r.read(&s).unwrap().expose(), "custom");
        s.env_var = "UNSET".into();
        assert_eq!(r.read(&s).unwrap().expose(), "derived");
        let r = resolver(std::path::Path::new("/none"), &[], "");
        assert_eq!(
            r.read(&s).unwrap_err().to_string(),
            "secret not found: looked for env var UNSET and env var _FSEC_APP_KEY"
        );
    }

    #[test]
    fn a_rotated_file_is_read_anew() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("app")).unwrap();
        let r = resolver(dir.path(), &[], "");
        let s = secret("app", "", "key", MountType::File);
        std::fs::write(dir.path().join("app/key"), "old").unwrap();
        assert_eq!(r.read(&s).unwrap().expose(), "old");
        std::fs::write(dir.path().join("app/key"), "new").unwrap();
        assert_eq!(r.read(&s).unwrap().expose(), "new");
    }
}
