//! Onboarding: `dropsync tenant add ID --key KEY` writes `tenants.d/ID.toml` (the folder of the
//! config's first `include` pattern) and says what the contact centre needs to connect. KEY is
//! the key's text (as pasted from an e-mail), a file holding it, or `-` for standard input.

use std::path::{Path, PathBuf};

use russh::keys::HashAlg;
use russh::keys::ssh_key::PublicKey;

use crate::config::{self, Config};
use crate::ingress::sftp::auth::parse_authorized_keys;
use crate::ingress::sftp::host_keys;
use crate::tenant::TenantId;

/// What a new tenant needs to connect.
#[derive(Debug)]
pub struct Onboarded {
    pub file: PathBuf,
    pub username: String,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub key_fingerprint: String,
    /// Each host key as a client is shown it (`SHA256:… (TYPE)`); empty without `[sftp]`.
    pub host_key_fingerprints: Vec<String>,
}

/// The folder new tenant files go to: that of the config's first `include` pattern.
fn tenants_dir(config_file: &Path) -> Result<PathBuf, String> {
    let text =
        std::fs::read_to_string(config_file).map_err(|e| format!("cannot read {}: {e}", config_file.display()))?;
    let table: toml::Table = text.parse().map_err(|e| format!("{}: {e}", config_file.display()))?;
    let pattern = table
        .get("include")
        .and_then(|v| v.as_array())
        .and_then(|a| a.first())
        .and_then(|v| v.as_str())
        .ok_or_else(|| {
            format!(
                "{} has no include = [\"tenants.d/*.toml\"]: add one so tenants can be added",
                config_file.display()
            )
        })?;
    let base = config_file.parent().unwrap_or(Path::new("/"));
    let full = if Path::new(pattern).is_absolute() {
        PathBuf::from(pattern)
    } else {
        base.join(pattern)
    };
    full.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| format!("include pattern {pattern:?} has no folder"))
}

/// The public key(s) of `--key`, and where they came from.
#[derive(Debug, PartialEq, Eq)]
pub struct KeyText {
    pub text: String,
    pub source: KeySource,
}

#[derive(Debug, PartialEq, Eq)]
pub enum KeySource {
    /// The argument itself was the key.
    Given,
    File(PathBuf),
    Stdin,
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Given => f.write_str("the key given"),
            KeySource::File(path) => write!(f, "{}", path.display()),
            KeySource::Stdin => f.write_str("standard input"),
        }
    }
}

/// Reads `--key ARG`: `-` reads `stdin`; an existing file is read; anything else with a space in
/// it is taken as the key's text (a key line always has one). So a path that does not exist
/// and holds no space is "cannot read", not a key that fails to parse.
pub fn read_key_arg(arg: &str, mut stdin: impl std::io::Read) -> Result<KeyText, String> {
    if arg == "-" {
        let mut text = String::new();
        stdin
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
        return Ok(KeyText {
            text,
            source: KeySource::Stdin,
        });
    }
    let path = Path::new(arg);
    if path.exists() || !arg.trim().contains(' ') {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {arg}: {e}"))?;
        return Ok(KeyText {
            text,
            source: KeySource::File(path.to_path_buf()),
        });
    }
    Ok(KeyText {
        text: arg.to_owned(),
        source: KeySource::Given,
    })
}

pub fn add_tenant(cfg: &Config, id: &str, key: &KeyText) -> Result<Onboarded, String> {
    let id = TenantId::parse(id)?;
    if cfg.tenant(id.as_str()).is_some() {
        return Err(format!("tenant {id} exists already"));
    }
    let key_text = &key.text;
    let keys = parse_authorized_keys(key_text).map_err(|e| match &key.source {
        KeySource::Given => format!("not a file, and not a public key: {e}"),
        source => format!("{source}: {e}"),
    })?;
    if keys.is_empty() {
        return Err(format!("{} holds no public key", key.source));
    }
    let lines: Vec<String> = key_text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let dir = tenants_dir(&cfg.file)?;
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let file = dir.join(format!("{id}.toml"));
    if file.exists() {
        return Err(format!("{} exists already", file.display()));
    }
    let mut text = format!("# Added by `dropsync tenant add`.\n[[tenants]]\nid = \"{id}\"\nauthorized_keys = [\n");
    for l in &lines {
        text.push_str(&format!("  {},\n", toml::Value::String(l.clone())));
    }
    text.push_str("]\n");
    crate::fsutil::write_atomic(&file, text.as_bytes()).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    // The whole configuration must still load; if not, the new file goes away again.
    if let Err(e) = config::load(&cfg.file) {
        let _ = std::fs::remove_file(&file);
        return Err(format!("the configuration would not load with the new tenant:\n{e}"));
    }
    let first = PublicKey::from(keys[0].0.clone())
        .fingerprint(HashAlg::Sha256)
        .to_string();
    let host_key_fingerprints = cfg
        .sftp
        .as_ref()
        .map(|s| host_keys::fingerprints(&s.host_keys))
        .unwrap_or_default();
    Ok(Onboarded {
        file,
        username: id.to_string(),
        host: cfg.sftp.as_ref().map(|s| s.listen.ip().to_string()),
        port: cfg.sftp.as_ref().map(|s| s.listen.port()),
        key_fingerprint: first,
        host_key_fingerprints,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_argument_is_text_a_file_or_standard_input() {
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBgr2cdSg3Fb0Ll2OFMx0fd2jY8Ff3QPa1lMYFxnWcbz ops@acme";
        let given = read_key_arg(key, std::io::empty()).unwrap();
        assert_eq!((given.text.as_str(), given.source), (key, KeySource::Given));
        let stdin = read_key_arg("-", key.as_bytes()).unwrap();
        assert_eq!((stdin.text.as_str(), stdin.source), (key, KeySource::Stdin));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("with space.pub");
        std::fs::write(&file, key).unwrap();
        let read = read_key_arg(file.to_str().unwrap(), std::io::empty()).unwrap();
        assert_eq!((read.text.as_str(), read.source), (key, KeySource::File(file)));
        let missing = read_key_arg("acme.pub", std::io::empty()).unwrap_err();
        assert!(missing.starts_with("cannot read acme.pub: "), "{missing}");
    }
}
