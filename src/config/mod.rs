//! Configuration: TOML on disk -> a validated [`Config`].
//!
//! Loading is a pipeline (parse, collect unknown keys with their full path, deserialize into raw
//! serde structs, validate into typed values) that reports every problem it can find at once,
//! each with the file and key it belongs to, so `dropsync check-config` is one round trip.
//! Relative paths resolve against the folder of the file that names them.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod host_keys;
mod http;
mod problems;
mod raw;
mod sink;
mod tenants;

use problems::{Problems, parse_file, resolve};
use raw::{RawConfig, RawIncluded};
use sink::sink_config;
use tenants::{quota, tenant};

use host_keys::HostKeyKind;

pub use crate::secret::{Secret, SecretSource};
use crate::tenant::{Quota, Tenant};

/// Extensions that count as recordings unless `[matching] recording_extensions` says otherwise.
pub const DEFAULT_RECORDING_EXTENSIONS: &[&str] =
    &["wav", "mp3", "flac", "ogg", "opus", "m4a", "aiff", "aif", "au", "gsm"];

/// The validated configuration the daemon runs on.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was loaded from.
    pub file: PathBuf,
    pub state_dir: PathBuf,
    pub log_format: LogFormat,
    pub sftp: Option<SftpConfig>,
    pub sink: SinkConfig,
    pub matching: MatchingConfig,
    pub retention: RetentionConfig,
    pub forwarding: ForwardingConfig,
    pub intake: IntakeConfig,
    pub limits: LimitsConfig,
    pub catalog: CatalogConfig,
    pub metrics: Option<MetricsConfig>,
    pub http: Option<HttpConfig>,
    pub tenants: Vec<Tenant>,
}

/// This machine's host name, the default `node_id`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned())
}

impl Config {
    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("dropsync.db")
    }
    /// Where the HTTP API keeps a call's metadata until its recording comes.
    pub fn pending_dir(&self) -> PathBuf {
        self.state_dir.join("http/pending")
    }
    pub fn drop_root(&self) -> PathBuf {
        self.state_dir.join("drop")
    }
    pub fn archive_root(&self) -> PathBuf {
        self.state_dir.join("archive")
    }
    pub fn tenant(&self, id: &str) -> Option<&Tenant> {
        self.tenants.iter().find(|t| t.id.as_str() == id)
    }
    /// How long a tenant's local copies are kept: its own `retention`, or `[retention] local`.
    pub fn retention_of(&self, tenant: &Tenant) -> Duration {
        tenant.retention.unwrap_or(self.retention.local)
    }
    /// A tenant's quota: its own keys, the others from `[limits] quota`.
    pub fn quota_of(&self, tenant: &Tenant) -> Quota {
        tenant.quota.over(self.limits.quota)
    }
}

/// The configuration in force, replaced whole on reload (SIGHUP); readers take a snapshot.
#[derive(Clone)]
pub struct LiveConfig(std::sync::Arc<std::sync::RwLock<std::sync::Arc<Config>>>);

impl LiveConfig {
    pub fn new(config: std::sync::Arc<Config>) -> Self {
        LiveConfig(std::sync::Arc::new(std::sync::RwLock::new(config)))
    }
    pub fn get(&self) -> std::sync::Arc<Config> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
    pub fn set(&self, config: std::sync::Arc<Config>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = config;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `[sftp]`: the listener lands with the SFTP issue; the keys are fixed now so configs last.
#[derive(Debug, Clone)]
pub struct SftpConfig {
    pub listen: SocketAddr,
    /// The host key files: each read if it exists, else created of the type its name says.
    pub host_keys: Vec<PathBuf>,
    pub max_sessions: u32,
    pub max_sessions_per_ip: u32,
    pub login_grace: Duration,
    /// How long a peer may take to send its SSH identification (a silent peer holds a startup
    /// slot for nothing); at most `login_grace`.
    pub silent_grace: Duration,
    pub idle_timeout: Duration,
    pub max_auth_failures: u32,
    pub ban_time: Duration,
    pub max_file_size: u64,
    /// fsync an upload before it is renamed into place and CLOSE is answered (the default):
    /// after a power loss a final name never holds a partial file. Off trades that for speed,
    /// as OpenSSH's sftp-server does (clients may still ask with fsync@openssh.com).
    pub fsync_on_close: bool,
    /// Files and folders one SFTP session may hold open at once (each upload holds two
    /// descriptors): past it, OPEN fails and the client is told why.
    pub max_handles: u32,
    /// Session channels one connection may open at once.
    pub max_channels: u32,
    /// Connections not yet logged in, at once (OpenSSH's MaxStartups), in all and per source
    /// address (IPv6: per /64). They count apart from logged-in sessions, so that nobody's
    /// half-open connections can lock a tenant out.
    pub max_startups: u32,
    pub max_startups_per_source: u32,
    /// Sources never penalised for connections that do not log in (load balancers' health
    /// checks), as address patterns like `from=`.
    pub penalty_exempt: crate::addresses::AddressList,
}

pub use http::HttpConfig;
pub use sink::{ChecksumPolicy, S3SinkConfig, SinkConfig};

#[derive(Debug, Clone)]
pub struct MatchingConfig {
    pub grace: Duration,
    /// Lower-case, without the dot.
    pub recording_extensions: Vec<String>,
    pub zip_max_unpacked: u64,
    /// Entries a zip batch may hold.
    pub zip_max_entries: u64,
    /// How much larger than the archive its unpacked entries may be, in total.
    pub zip_max_ratio: u64,
    /// A metadata row (a line, a JSON element) longer than this rejects its file.
    pub max_field_bytes: u64,
    /// A recording that is not readable audio of its extension's format rejects its rows.
    pub check_audio: bool,
}

impl MatchingConfig {
    pub fn is_recording_ext(&self, ext: &str) -> bool {
        let ext = ext.to_ascii_lowercase();
        self.recording_extensions.contains(&ext)
    }
}

#[derive(Debug, Clone)]
pub struct RetentionConfig {
    pub local: Duration,
    /// How long the catalog remembers conversations that ended (and their files' records):
    /// `conversations`, reports' rows and the identical/updated rule look this far back.
    pub catalog: Duration,
}

#[derive(Debug, Clone)]
pub struct ForwardingConfig {
    pub workers: u32,
    pub retry_min: Duration,
    pub retry_max: Duration,
}

#[derive(Debug, Clone)]
pub struct IntakeConfig {
    /// Lanes that process arrivals, each serving one tenant at a time.
    pub lanes: u32,
}

#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Every tenant's quota, unless its own `quota` sets a key.
    pub quota: Quota,
    /// Failed attempts after which a unit of work (an intake item, a conversation that
    /// panicked) is `failed` until `dropsync retry`, so a poison file never loops for ever.
    pub max_attempts: u32,
    /// How long a temp file of an unfinished upload may sit untouched before housekeeping
    /// removes it.
    pub stale_upload: Duration,
}

/// SPEC §8's defaults: what one contact centre may hold in its drop folder at once.
const DEFAULT_QUOTA: Quota = Quota {
    bytes: Some(50 << 30),
    files: Some(100_000),
    sessions: Some(16),
};

#[derive(Debug, Clone)]
pub struct CatalogConfig {
    /// How long a write waits for a lock held by another process before it fails (and its
    /// work is retried).
    pub busy_timeout: Duration,
    /// The PostgreSQL catalog several nodes share (SPEC §12); `None`: SQLite in `state_dir`.
    pub url: Option<String>,
    /// This node's name in the shared catalog: the host name unless set.
    pub node_id: String,
    /// How long work a node claimed stays its own unless renewed (a third of it between
    /// renewals): how long a dead node's work waits before another takes it over.
    pub lease: Duration,
}

#[derive(Debug, Clone)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
}

/// One problem in one file, at one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub file: PathBuf,
    /// Dotted path of the key, empty for the file as a whole.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.message)
        }
    }
}

/// Every problem found while loading, in file order.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Loads and validates `file` and everything it includes.
pub fn load(file: &Path) -> Result<Config, ConfigError> {
    let mut problems = Vec::new();
    let file = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    let raw: Option<RawConfig> = parse_file(&file, &mut problems);
    let Some(raw) = raw else {
        return Err(ConfigError { problems });
    };
    let base = file.parent().unwrap_or(Path::new("/")).to_path_buf();
    let mut p = Problems {
        file: &file,
        list: &mut problems,
    };

    let state_dir = resolve(&base, raw.state_dir.as_deref().unwrap_or("var"));
    let log_format = match raw.log_format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            p.add("log_format", format!("{other:?} is not one of \"text\", \"json\""));
            LogFormat::Text
        }
    };

    let sftp = raw.sftp.map(|s| {
        let listen = p
            .addr("sftp.listen", s.listen.as_deref().unwrap_or("127.0.0.1:2022"))
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 2022)));
        SftpConfig {
            listen,
            host_keys: host_keys(&mut p, &base, &state_dir, s.host_key, s.host_keys),
            max_sessions: s.max_sessions.unwrap_or(256),
            max_sessions_per_ip: s.max_sessions_per_ip.unwrap_or(64),
            login_grace: p.duration("sftp.login_grace", s.login_grace.as_deref(), Duration::from_secs(30)),
            silent_grace: p.duration("sftp.silent_grace", s.silent_grace.as_deref(), Duration::from_secs(10)),
            idle_timeout: p.duration("sftp.idle_timeout", s.idle_timeout.as_deref(), Duration::from_secs(900)),
            max_auth_failures: s.max_auth_failures.unwrap_or(6),
            ban_time: p.duration("sftp.ban_time", s.ban_time.as_deref(), Duration::from_secs(600)),
            max_file_size: p.size("sftp.max_file_size", s.max_file_size.as_deref(), 16 << 30),
            fsync_on_close: s.fsync_on_close.unwrap_or(true),
            max_handles: s.max_handles.unwrap_or(256),
            max_channels: s.max_channels.unwrap_or(4),
            max_startups: s.max_startups.unwrap_or(100),
            max_startups_per_source: s.max_startups_per_source.unwrap_or(10),
            penalty_exempt: match crate::addresses::AddressList::parse(&s.penalty_exempt) {
                Ok(list) => list,
                Err(e) => {
                    p.add("sftp.penalty_exempt", e);
                    Default::default()
                }
            },
        }
    });

    let sink = sink_config(&mut p, &base, &state_dir, raw.sink.unwrap_or_default());

    let m = raw.matching.unwrap_or_default();
    let recording_extensions = match m.recording_extensions {
        None => DEFAULT_RECORDING_EXTENSIONS.iter().map(|s| s.to_string()).collect(),
        Some(list) => {
            let mut out = Vec::new();
            for (i, e) in list.iter().enumerate() {
                let e = e.trim().trim_start_matches('.').to_ascii_lowercase();
                if e.is_empty() || !e.chars().all(|c| c.is_ascii_alphanumeric()) {
                    p.add(
                        format!("matching.recording_extensions.{i}"),
                        "an extension is letters and digits, like \"wav\"",
                    );
                } else if ["csv", "tsv", "json", "jsonl", "ndjson", "zip"].contains(&e.as_str()) {
                    p.add(
                        format!("matching.recording_extensions.{i}"),
                        format!("{e:?} is a metadata or archive extension"),
                    );
                } else {
                    out.push(e);
                }
            }
            out
        }
    };
    let matching = MatchingConfig {
        grace: p.duration("matching.grace", m.grace.as_deref(), Duration::from_secs(24 * 3600)),
        recording_extensions,
        zip_max_unpacked: p.size("matching.zip_max_unpacked", m.zip_max_unpacked.as_deref(), 3 << 30),
        zip_max_entries: m.zip_max_entries.unwrap_or(10_000),
        zip_max_ratio: m.zip_max_ratio.unwrap_or(200),
        max_field_bytes: p.size("matching.max_field_bytes", m.max_field_bytes.as_deref(), 1 << 20),
        check_audio: m.check_audio.unwrap_or(true),
    };
    if matching.zip_max_entries == 0 {
        p.add("matching.zip_max_entries", "must be at least 1");
    }
    if matching.zip_max_ratio == 0 {
        p.add("matching.zip_max_ratio", "must be at least 1");
    }
    if matching.max_field_bytes < 1024 {
        p.add("matching.max_field_bytes", "must be at least 1 KiB");
    }
    let raw_retention = raw.retention.unwrap_or_default();
    let retention = RetentionConfig {
        local: p.duration(
            "retention.local",
            raw_retention.local.as_deref(),
            Duration::from_secs(7 * 24 * 3600),
        ),
        catalog: p.duration(
            "retention.catalog",
            raw_retention.catalog.as_deref(),
            Duration::from_secs(90 * 24 * 3600),
        ),
    };
    if retention.catalog < retention.local {
        p.add("retention.catalog", "must be at least retention.local");
    }
    let f = raw.forwarding.unwrap_or_default();
    let forwarding = ForwardingConfig {
        workers: f.workers.unwrap_or(4),
        retry_min: p.duration("forwarding.retry_min", f.retry_min.as_deref(), Duration::from_secs(5)),
        retry_max: p.duration("forwarding.retry_max", f.retry_max.as_deref(), Duration::from_secs(600)),
    };
    if forwarding.workers == 0 || forwarding.workers > 256 {
        p.add("forwarding.workers", "must be between 1 and 256");
    }
    if forwarding.retry_min > forwarding.retry_max {
        p.add("forwarding.retry_min", "must not be longer than forwarding.retry_max");
    }
    let intake = IntakeConfig {
        lanes: raw.intake.unwrap_or_default().lanes.unwrap_or(4),
    };
    if intake.lanes == 0 || intake.lanes > 256 {
        p.add("intake.lanes", "must be between 1 and 256");
    }
    let raw_limits = raw.limits.unwrap_or_default();
    let limits = LimitsConfig {
        quota: quota(&mut p, "limits.quota", raw_limits.quota.unwrap_or_default()).over(DEFAULT_QUOTA),
        max_attempts: raw_limits.max_attempts.unwrap_or(10),
        stale_upload: p.duration(
            "limits.stale_upload",
            raw_limits.stale_upload.as_deref(),
            Duration::from_secs(24 * 3600),
        ),
    };
    if limits.max_attempts == 0 {
        p.add("limits.max_attempts", "must be at least 1");
    }
    if limits.stale_upload < Duration::from_secs(1) {
        p.add("limits.stale_upload", "must be at least 1s");
    }
    let raw_catalog = raw.catalog.unwrap_or_default();
    let catalog = CatalogConfig {
        busy_timeout: p.duration(
            "catalog.busy_timeout",
            raw_catalog.busy_timeout.as_deref(),
            Duration::from_secs(30),
        ),
        url: raw_catalog.url.filter(|u| !u.is_empty()),
        node_id: raw_catalog.node_id.unwrap_or_else(host_name),
        lease: p.duration("catalog.lease", raw_catalog.lease.as_deref(), Duration::from_secs(60)),
    };
    if catalog.lease < Duration::from_secs(3) {
        p.add("catalog.lease", "must be at least 3s");
    }
    if let Some(url) = &catalog.url
        && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
    {
        p.add(
            "catalog.url",
            "must be a postgres:// URL (leave it out for SQLite in state_dir)",
        );
    }
    if catalog.node_id.is_empty() || catalog.node_id.len() > 64 {
        p.add("catalog.node_id", "must be 1 to 64 characters");
    }
    let metrics = raw
        .metrics
        .and_then(|m| p.addr("metrics.listen", &m.listen))
        .map(|listen| MetricsConfig { listen });
    let http = raw.http.map(|h| http::http(&mut p, &base, h));

    // Tenants: this file's, then each included file's, in glob order.
    let mut tenants = Vec::new();
    for (i, t) in raw.tenants.into_iter().enumerate() {
        if let Some(t) = tenant(&mut p, &base, &format!("tenants.{i}"), t) {
            tenants.push(t);
        }
    }
    let mut included_files = Vec::new();
    for (i, pattern) in raw.include.iter().enumerate() {
        let full = resolve(&base, pattern);
        match glob::glob(&full.to_string_lossy()) {
            Ok(paths) => {
                let mut found: Vec<PathBuf> = paths.filter_map(Result::ok).collect();
                found.sort();
                included_files.extend(found);
            }
            Err(e) => p.add(format!("include.{i}"), format!("bad pattern {pattern:?}: {e}")),
        }
    }
    for inc in included_files {
        let parsed: Option<RawIncluded> = parse_file(&inc, &mut problems);
        let Some(parsed) = parsed else { continue };
        let inc_base = inc.parent().unwrap_or(Path::new("/")).to_path_buf();
        let mut ip = Problems {
            file: &inc,
            list: &mut problems,
        };
        for (i, t) in parsed.tenants.into_iter().enumerate() {
            if let Some(t) = tenant(&mut ip, &inc_base, &format!("tenants.{i}"), t) {
                tenants.push(t);
            }
        }
    }
    let mut seen = BTreeSet::new();
    for t in &tenants {
        if !seen.insert(t.id.as_str().to_owned()) {
            problems.push(ConfigProblem {
                file: t.defined_in.clone(),
                key: "tenants.id".into(),
                message: format!("tenant {:?} is defined more than once", t.id.as_str()),
            });
        }
    }

    if !problems.is_empty() {
        return Err(ConfigError { problems });
    }
    Ok(Config {
        file,
        state_dir,
        log_format,
        sftp,
        sink,
        matching,
        retention,
        forwarding,
        intake,
        limits,
        catalog,
        metrics,
        http,
        tenants,
    })
}

/// `[sftp] host_keys`, or the older `host_key` as a one-key list; by default OpenSSH's three
/// names in `state_dir`.
fn host_keys(
    p: &mut Problems,
    base: &Path,
    state_dir: &Path,
    one: Option<String>,
    list: Option<Vec<String>>,
) -> Vec<PathBuf> {
    match (one, list) {
        (None, None) => host_keys::default_paths(state_dir),
        (Some(one), None) => vec![resolve(base, &one)],
        (Some(_), Some(_)) => {
            p.add(
                "sftp.host_key",
                "give host_keys alone (host_key is its older one-key form)",
            );
            Vec::new()
        }
        (None, Some(list)) => {
            if list.is_empty() {
                p.add("sftp.host_keys", "list at least one key file");
            }
            list.iter().map(|k| resolve(base, k)).collect()
        }
    }
}

/// Checks what only matters when the daemon runs: secrets and key files can be read.
pub fn check_runtime(config: &Config) -> Vec<ConfigProblem> {
    let mut out = Vec::new();
    for (i, key) in config.sftp.iter().flat_map(|s| s.host_keys.iter()).enumerate() {
        if !key.exists() && HostKeyKind::from_name(key).is_none() {
            out.push(ConfigProblem {
                file: config.file.clone(),
                key: format!("sftp.host_keys.{i}"),
                message: format!(
                    "{} does not exist and its name does not say which key to create: \
                     name it after its type (ed25519, ecdsa or rsa)",
                    key.display()
                ),
            });
        }
    }
    for t in &config.tenants {
        if let Some(f) = &t.authorized_keys_file
            && let Err(e) = std::fs::metadata(f)
        {
            out.push(ConfigProblem {
                file: t.defined_in.clone(),
                key: format!("tenants[{}].authorized_keys_file", t.id),
                message: format!("cannot read {}: {e}", f.display()),
            });
        }
        for (i, src) in t.ftp.iter().enumerate() {
            if let Some(Err(e)) = src.password.as_ref().map(SecretSource::load) {
                out.push(ConfigProblem {
                    file: t.defined_in.clone(),
                    key: format!("tenants[{}].ftp.{i}", t.id),
                    message: e,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
