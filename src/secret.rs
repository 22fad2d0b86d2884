//! Secrets (passwords, keys): read from a file or the environment when needed, never shown.

use std::fmt;
use std::path::PathBuf;

/// A secret value (password, key) whose `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

/// Where a secret is read from when it is needed; never inline in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

impl SecretSource {
    pub fn load(&self) -> Result<Secret, String> {
        match self {
            SecretSource::File(path) => std::fs::read_to_string(path)
                .map(|s| Secret(s.trim_end_matches(['\r', '\n']).to_owned()))
                .map_err(|e| format!("cannot read {}: {e}", path.display())),
            SecretSource::Env(name) => std::env::var(name)
                .map(Secret)
                .map_err(|_| format!("environment variable {name} is not set")),
        }
    }
}
