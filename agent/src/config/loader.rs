//! The loader every part of the configuration is read with: a value comes from its env var if
//! set, else from the file, and a value that does not parse becomes a [`ConfigError`] naming the
//! field and that source, while reading goes on so that every problem is reported at once.

use std::time::Duration;

use crate::env::Env;

/// One configuration problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where the value came from (`config file a.yaml`, `env FLYTE_…`).
    pub source: String,
    /// The field, as a path.
    pub field: String,
    /// What is wrong.
    pub problem: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.source, self.field, self.problem)
    }
}

/// Every problem found in a configuration, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// A single problem.
    pub fn one(source: &str, field: &str, problem: impl Into<String>) -> Self {
        Self(vec![ConfigError {
            source: source.to_string(),
            field: field.to_string(),
            problem: problem.into(),
        }])
    }
}

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Collects values and problems while one configuration is read.
pub(super) struct Loader<'a> {
    /// How messages name the file (`config file a.yaml`, or the injector's source).
    pub(super) file_source: String,
    pub(super) env: &'a dyn Env,
    pub(super) errors: Vec<ConfigError>,
    /// With [`Loader::recording`]: each value taken from the file, paired with the env var that
    /// would have overridden it, in the order read. The value is in the form that var carries,
    /// since the file's values are handed over as the strings the env would hold.
    pub(super) from_file: Option<Vec<(String, String)>>,
}

impl<'a> Loader<'a> {
    /// A loader naming the file `file_source` and reading overrides from `env`.
    pub(super) fn new(file_source: &str, env: &'a dyn Env) -> Self {
        Self {
            file_source: file_source.to_string(),
            env,
            errors: Vec::new(),
            from_file: None,
        }
    }

    /// A loader that also writes down what it takes from the file, as env ([`Loader::from_file`]):
    /// reading a section with no env this way turns it into the env that carries it.
    pub(super) fn recording(file_source: &str, env: &'a dyn Env) -> Self {
        Self {
            from_file: Some(Vec::new()),
            ..Self::new(file_source, env)
        }
    }

    /// `value`, unless a problem was found while reading it.
    pub(super) fn finish<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(ConfigErrors(self.errors))
        }
    }

    pub(super) fn error(&mut self, source: &str, field: &str, problem: impl Into<String>) {
        self.errors.push(ConfigError {
            source: source.to_string(),
            field: field.to_string(),
            problem: problem.into(),
        });
    }

    /// A problem with the file as a whole rather than one value (a missing or inconsistent
    /// field), named by the file.
    pub(super) fn file_error(&mut self, field: &str, problem: impl Into<String>) {
        let source = self.file_source.clone();
        self.error(&source, field, problem);
    }

    /// The env var if set, else the file's value, with where it came from.
    pub(super) fn pick(
        &mut self,
        env_var: Option<&str>,
        file: Option<String>,
    ) -> Option<(String, String)> {
        if let Some(var) = env_var {
            if let Some(v) = self.env.var(var) {
                return Some((v, format!("env {var}")));
            }
        }
        let value = file?;
        if let (Some(var), Some(read)) = (env_var, self.from_file.as_mut()) {
            // A value read twice is carried once.
            if !read.iter().any(|(v, _)| v == var) {
                read.push((var.to_string(), value.clone()));
            }
        }
        Some((value, self.file_source.clone()))
    }

    /// The value [`Loader::pick`] finds, parsed; `default` when there is none or it does not
    /// parse (the problem is recorded).
    pub(super) fn parsed<T>(
        &mut self,
        field: &str,
        env_var: Option<&str>,
        file: Option<String>,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> T {
        match self.pick(env_var, file) {
            None => default,
            Some((raw, source)) => match parse(raw.trim()) {
                Ok(v) => v,
                Err(problem) => {
                    self.error(&source, field, problem);
                    default
                }
            },
        }
    }
}

pub(super) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 10s or 1h30m ({e})"))
}

pub(super) fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!("{s:?} is not an octal file mode like \"0644\"")),
    }
}

pub(super) fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(format!("{s:?} is not true or false")),
    }
}
