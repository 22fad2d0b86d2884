//! Onboarding: `dropsync tenant add ID --key FILE` writes `tenants.d/ID.toml` (the folder of the
//! config's first `include` pattern) and says what the contact centre needs to connect.

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

pub fn add_tenant(cfg: &Config, id: &str, key_file: &Path) -> Result<Onboarded, String> {
    let id = TenantId::parse(id)?;
    if cfg.tenant(id.as_str()).is_some() {
        return Err(format!("tenant {id} exists already"));
    }
    let key_text = std::fs::read_to_string(key_file).map_err(|e| format!("cannot read {}: {e}", key_file.display()))?;
    let keys = parse_authorized_keys(&key_text).map_err(|e| format!("{}: {e}", key_file.display()))?;
    if keys.is_empty() {
        return Err(format!("{} holds no public key", key_file.display()));
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
