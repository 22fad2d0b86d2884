//! Collecting configuration problems: each with its file and dotted key, all reported at once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::ConfigProblem;

/// Collects problems for one file.
pub(super) struct Problems<'a> {
    pub(super) file: &'a Path,
    pub(super) list: &'a mut Vec<ConfigProblem>,
}

impl Problems<'_> {
    pub(super) fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.list.push(ConfigProblem {
            file: self.file.to_path_buf(),
            key: key.into(),
            message: message.into(),
        });
    }

    pub(super) fn duration(&mut self, key: &str, raw: Option<&str>, default: Duration) -> Duration {
        match raw {
            None => default,
            Some(s) => match humantime::parse_duration(s) {
                Ok(d) => d,
                Err(e) => {
                    self.add(
                        key,
                        format!("{s:?} is not a duration like \"30s\", \"5m\", \"24h\" ({e})"),
                    );
                    default
                }
            },
        }
    }

    pub(super) fn size(&mut self, key: &str, raw: Option<&str>, default: u64) -> u64 {
        match raw {
            None => default,
            Some(s) => match s.trim().parse::<bytesize::ByteSize>() {
                Ok(b) => b.as_u64(),
                Err(e) => {
                    self.add(key, format!("{s:?} is not a size like \"64 MiB\" or \"3GiB\" ({e})"));
                    default
                }
            },
        }
    }

    pub(super) fn addr(&mut self, key: &str, raw: &str) -> Option<SocketAddr> {
        match raw.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.add(key, format!("{raw:?} is not an address like \"127.0.0.1:2022\""));
                None
            }
        }
    }
}

pub(super) fn resolve(base: &Path, raw: &str) -> PathBuf {
    let p = Path::new(raw);
    if p.is_absolute() { p.to_path_buf() } else { base.join(p) }
}

/// Parses one TOML file into `T`, reporting syntax errors, every unknown key and the first type
/// error (serde stops there) with their paths.
pub(super) fn parse_file<T: serde::de::DeserializeOwned>(file: &Path, problems: &mut Vec<ConfigProblem>) -> Option<T> {
    let mut p = Problems { file, list: problems };
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            p.add("", format!("cannot read: {e}"));
            return None;
        }
    };
    let value: toml::Value = match text.parse::<toml::Table>() {
        Ok(t) => toml::Value::Table(t),
        Err(e) => {
            p.add("", format!("not valid TOML: {}", e.to_string().trim()));
            return None;
        }
    };
    let mut unknown = Vec::new();
    // serde_ignored shows an Option layer as "?"; users think in plain dotted keys.
    let mut on_unknown =
        |path: serde_ignored::Path<'_>| unknown.push(path.to_string().replace(".?", "").replace("?.", ""));
    let de = serde_ignored::Deserializer::new(value, &mut on_unknown);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(de);
    for key in unknown {
        p.add(key, "unknown key");
    }
    match parsed {
        Ok(v) => Some(v),
        Err(e) => {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            p.add(key, e.inner().to_string());
            None
        }
    }
}
