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

/// Why a tenant was not added. Each message carries its cause's own words; the cause is not
/// also a `source`, so that `dropsync: {:#}` does not say it twice.
#[derive(Debug, thiserror::Error)]
pub enum OnboardError {
    /// `--key`'s file, or standard input, cannot be read.
    #[error("cannot read {what}: {error}")]
    ReadKey { what: String, error: std::io::Error },
    #[error("{0}")]
    BadTenantId(String),
    #[error("tenant {0} exists already")]
    TenantExists(TenantId),
    /// `--key` was taken as the key's text, and is not one.
    #[error("not a file, and not a public key: {0}")]
    NotAKey(String),
    /// What `--key` named holds something that is not a public key.
    #[error("{from}: {error}")]
    BadKey { from: KeySource, error: String },
    #[error("{0} holds no public key")]
    NoKey(KeySource),
    #[error("cannot read {}: {error}", path.display())]
    ReadConfig { path: PathBuf, error: std::io::Error },
    #[error("{}: {error}", path.display())]
    ParseConfig { path: PathBuf, error: toml::de::Error },
    #[error("{} has no include = [\"tenants.d/*.toml\"]: add one so tenants can be added", .0.display())]
    NoInclude(PathBuf),
    #[error("include pattern {0:?} has no folder")]
    IncludeHasNoFolder(String),
    #[error("cannot create {}: {error}", path.display())]
    CreateDir { path: PathBuf, error: std::io::Error },
    #[error("{} exists already", .0.display())]
    FileExists(PathBuf),
    #[error("cannot write {}: {error}", path.display())]
    Write { path: PathBuf, error: std::io::Error },
    /// The new file is taken away again.
    #[error("the configuration would not load with the new tenant:\n{0}")]
    WouldNotLoad(config::ConfigError),
    #[error("no tenant {0}")]
    NoSuchTenant(String),
    /// Only the files `tenant add` and the API write are changed by them.
    #[error("tenant {id} is defined in {}; change it there", file.display())]
    NotOurs { id: String, file: PathBuf },
    #[error("{0}")]
    BadChange(String),
}

/// The folder new tenant files go to: that of the config's first `include` pattern.
fn tenants_dir(config_file: &Path) -> Result<PathBuf, OnboardError> {
    let path = || config_file.to_path_buf();
    let text =
        std::fs::read_to_string(config_file).map_err(|error| OnboardError::ReadConfig { path: path(), error })?;
    let table: toml::Table = text
        .parse()
        .map_err(|error| OnboardError::ParseConfig { path: path(), error })?;
    let pattern = table
        .get("include")
        .and_then(|v| v.as_array())
        .and_then(|a| a.first())
        .and_then(|v| v.as_str())
        .ok_or_else(|| OnboardError::NoInclude(path()))?;
    let base = config_file.parent().unwrap_or(Path::new("/"));
    let full = if Path::new(pattern).is_absolute() {
        PathBuf::from(pattern)
    } else {
        base.join(pattern)
    };
    full.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| OnboardError::IncludeHasNoFolder(pattern.to_owned()))
}

/// The public key(s) of `--key`, and where they came from.
#[derive(Debug, PartialEq, Eq)]
pub struct KeyText {
    pub text: String,
    pub source: KeySource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
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
pub fn read_key_arg(arg: &str, mut stdin: impl std::io::Read) -> Result<KeyText, OnboardError> {
    if arg == "-" {
        let mut text = String::new();
        stdin.read_to_string(&mut text).map_err(|error| OnboardError::ReadKey {
            what: "standard input".into(),
            error,
        })?;
        return Ok(KeyText {
            text,
            source: KeySource::Stdin,
        });
    }
    let path = Path::new(arg);
    if path.exists() || !arg.trim().contains(' ') {
        let text = std::fs::read_to_string(path).map_err(|error| OnboardError::ReadKey {
            what: arg.to_owned(),
            error,
        })?;
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

/// `dropsync tenant add ID --key KEY`: a tenant with its keys and nothing else.
pub fn add_tenant(cfg: &Config, id: &str, key: &KeyText) -> Result<Onboarded, OnboardError> {
    let spec = NewTenant {
        id: id.to_owned(),
        keys: key.text.clone(),
        ..NewTenant::default()
    };
    create_from(cfg, &spec, &key.source)
}

/// A tenant to create (the operator API's fields, SPEC §10).
#[derive(Debug, Default)]
pub struct NewTenant {
    pub id: String,
    /// OpenSSH public key lines.
    pub keys: String,
    pub timezone: Option<String>,
    pub mapping: Option<serde_json::Map<String, serde_json::Value>>,
    pub retention: Option<String>,
    pub minute_allocation: Option<u64>,
    /// Written to `tenants.d/<id>.tokens` (mode 0600) and named by `api_tokens_file`.
    pub api_token: Option<String>,
}

/// Writes `tenants.d/<id>.toml` (and its tokens file) for `spec`, checked as `tenant add` checks.
pub fn create(cfg: &Config, spec: &NewTenant) -> Result<Onboarded, OnboardError> {
    create_from(cfg, spec, &KeySource::Given)
}

fn create_from(cfg: &Config, spec: &NewTenant, source: &KeySource) -> Result<Onboarded, OnboardError> {
    let id = TenantId::parse(&spec.id).map_err(OnboardError::BadTenantId)?;
    if cfg.tenant(id.as_str()).is_some() {
        return Err(OnboardError::TenantExists(id));
    }
    let keys = parse_authorized_keys(&spec.keys).map_err(|error| match source {
        KeySource::Given => OnboardError::NotAKey(error),
        from => OnboardError::BadKey {
            from: from.clone(),
            error,
        },
    })?;
    if keys.is_empty() {
        return Err(OnboardError::NoKey(source.clone()));
    }
    let lines = key_lines(&spec.keys);
    let dir = tenants_dir(&cfg.file)?;
    std::fs::create_dir_all(&dir).map_err(|error| OnboardError::CreateDir {
        path: dir.clone(),
        error,
    })?;
    let file = dir.join(format!("{id}.toml"));
    let tokens_file = dir.join(format!("{id}.tokens"));
    if file.exists() {
        return Err(OnboardError::FileExists(file));
    }
    let text = tenant_toml(&id, &lines, spec);
    let write = |path: &Path, text: &str| {
        crate::fsutil::write_atomic(path, text.as_bytes()).map_err(|error| OnboardError::Write {
            path: path.to_path_buf(),
            error,
        })
    };
    if let Some(token) = &spec.api_token {
        write(&tokens_file, &format!("{token}\n"))?;
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&tokens_file, std::fs::Permissions::from_mode(0o600));
    }
    write(&file, &text)?;
    // The whole configuration must still load; if not, the new files go away again.
    if let Err(e) = config::load(&cfg.file) {
        let _ = std::fs::remove_file(&file);
        let _ = std::fs::remove_file(&tokens_file);
        return Err(OnboardError::WouldNotLoad(e));
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

/// The key lines of `text` (blank lines and comments left out), as they are written to the file.
fn key_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// The file of tenant `id`, if `tenant add` or the API wrote it (`tenants.d/<id>.toml`).
fn own_file(cfg: &Config, id: &str) -> Result<PathBuf, OnboardError> {
    let tenant = cfg
        .tenant(id)
        .ok_or_else(|| OnboardError::NoSuchTenant(id.to_owned()))?;
    let file = tenants_dir(&cfg.file)?.join(format!("{id}.toml"));
    let same = std::fs::canonicalize(&file).ok() == std::fs::canonicalize(&tenant.defined_in).ok();
    if !same {
        return Err(OnboardError::NotOurs {
            id: id.to_owned(),
            file: tenant.defined_in.clone(),
        });
    }
    Ok(file)
}

/// Removes tenant `id`'s file and its tokens file. Its drop folder and what was forwarded stay.
pub fn remove(cfg: &Config, id: &str) -> Result<(), OnboardError> {
    let file = own_file(cfg, id)?;
    let tokens = file.with_extension("tokens");
    std::fs::remove_file(&file).map_err(|error| OnboardError::Write { path: file, error })?;
    let _ = std::fs::remove_file(tokens);
    Ok(())
}

/// Keys a change may set (`null` removes the key; `authorized_keys` replaces the list).
const CHANGEABLE: [&str; 6] = [
    "authorized_keys",
    "timezone",
    "minute_allocation",
    "on_allocation_exceeded",
    "retention",
    "mapping",
];

/// Applies `changes` (a JSON object of [`CHANGEABLE`] keys) to tenant `id`'s file, which must
/// still load with them; if it does not, the file is put back as it was.
pub fn change(
    cfg: &Config,
    id: &str,
    changes: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), OnboardError> {
    let file = own_file(cfg, id)?;
    let before = std::fs::read_to_string(&file).map_err(|error| OnboardError::ReadConfig {
        path: file.clone(),
        error,
    })?;
    let mut table: toml::Table = before.parse().map_err(|error| OnboardError::ParseConfig {
        path: file.clone(),
        error,
    })?;
    let tenant = table
        .get_mut("tenants")
        .and_then(|t| t.as_array_mut())
        .and_then(|a| a.first_mut())
        .and_then(|t| t.as_table_mut())
        .ok_or_else(|| OnboardError::BadChange(format!("{} holds no [[tenants]] table", file.display())))?;
    for (key, value) in changes {
        if !CHANGEABLE.contains(&key.as_str()) {
            return Err(OnboardError::BadChange(format!(
                "{key:?} cannot be changed here (one of {})",
                CHANGEABLE.join(", ")
            )));
        }
        if value.is_null() {
            tenant.remove(key);
            continue;
        }
        if key == "authorized_keys" {
            let text = value
                .as_array()
                .map(|keys| keys.iter().filter_map(|k| k.as_str()).collect::<Vec<_>>().join("\n"))
                .ok_or_else(|| OnboardError::BadChange("authorized_keys: a list of key lines".into()))?;
            parse_authorized_keys(&text).map_err(OnboardError::NotAKey)?;
        }
        let value = toml::Value::try_from(value).map_err(|e| OnboardError::BadChange(format!("{key}: {e}")))?;
        tenant.insert(key.clone(), value);
    }
    let text = format!(
        "# Changed by the operator API.\n{}",
        toml::to_string(&table).unwrap_or_default()
    );
    let write = |text: &str| {
        crate::fsutil::write_atomic(&file, text.as_bytes()).map_err(|error| OnboardError::Write {
            path: file.clone(),
            error,
        })
    };
    write(&text)?;
    if let Err(e) = config::load(&cfg.file) {
        write(&before)?;
        return Err(OnboardError::WouldNotLoad(e));
    }
    Ok(())
}

/// Adds the key lines `keys` to tenant `id`'s keys.
pub fn add_keys(cfg: &Config, id: &str, keys: &str) -> Result<(), OnboardError> {
    let tenant = cfg
        .tenant(id)
        .ok_or_else(|| OnboardError::NoSuchTenant(id.to_owned()))?;
    let parsed = parse_authorized_keys(keys).map_err(OnboardError::NotAKey)?;
    if parsed.is_empty() {
        return Err(OnboardError::NoKey(KeySource::Given));
    }
    let mut all: Vec<serde_json::Value> = tenant.authorized_keys.iter().map(|k| k.clone().into()).collect();
    all.extend(key_lines(keys).into_iter().map(serde_json::Value::from));
    let mut changes = serde_json::Map::new();
    changes.insert("authorized_keys".into(), all.into());
    change(cfg, id, &changes)
}

/// The tenant's file: what `tenant add` always wrote, then the API's optional keys.
fn tenant_toml(id: &TenantId, keys: &[String], spec: &NewTenant) -> String {
    let how = if spec.api_token.is_some() {
        "the operator API"
    } else {
        "`dropsync tenant add`"
    };
    let mut text = format!("# Added by {how}.\n[[tenants]]\nid = \"{id}\"\nauthorized_keys = [\n");
    for l in keys {
        text.push_str(&format!("  {},\n", toml::Value::String(l.clone())));
    }
    text.push_str("]\n");
    let line = |key: &str, value: toml::Value| format!("{key} = {value}\n");
    if let Some(tz) = &spec.timezone {
        text.push_str(&line("timezone", tz.clone().into()));
    }
    if let Some(r) = &spec.retention {
        text.push_str(&line("retention", r.clone().into()));
    }
    if let Some(m) = spec.minute_allocation {
        text.push_str(&line("minute_allocation", (m.min(i64::MAX as u64) as i64).into()));
    }
    if spec.api_token.is_some() {
        text.push_str(&line("api_tokens_file", format!("{id}.tokens").into()));
    }
    if let Some(mapping) = &spec.mapping {
        text.push_str("[tenants.mapping]\n");
        for (key, value) in mapping {
            if let Ok(v) = toml::Value::try_from(value) {
                text.push_str(&format!("{} = {v}\n", toml::Value::String(key.clone())));
            }
        }
    }
    text
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
        let missing = read_key_arg("acme.pub", std::io::empty()).unwrap_err().to_string();
        assert!(missing.starts_with("cannot read acme.pub: "), "{missing}");
    }
}
