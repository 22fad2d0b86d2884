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

use serde::Deserialize;

use crate::tenant::{FtpSource, Mapping, Tenant, TenantId, TimeColumns};

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
    pub catalog: CatalogConfig,
    pub metrics: Option<MetricsConfig>,
    pub tenants: Vec<Tenant>,
}

impl Config {
    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("dropsync.db")
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
    pub host_key: PathBuf,
    pub max_sessions: u32,
    pub max_sessions_per_ip: u32,
    pub login_grace: Duration,
    pub idle_timeout: Duration,
    pub max_auth_failures: u32,
    pub ban_time: Duration,
    pub max_file_size: u64,
    /// fsync an upload before it is renamed into place and CLOSE is answered (the default):
    /// after a power loss a final name never holds a partial file. Off trades that for speed,
    /// as OpenSSH's sftp-server does (clients may still ask with fsync@openssh.com).
    pub fsync_on_close: bool,
}

#[derive(Debug, Clone)]
pub enum SinkConfig {
    Dir { path: PathBuf },
    S3(S3SinkConfig),
}

#[derive(Debug, Clone)]
pub struct S3SinkConfig {
    pub bucket: String,
    pub prefix: String,
    pub region: String,
    pub endpoint: Option<String>,
    pub path_style: bool,
    pub access_key_id_file: Option<PathBuf>,
    pub secret_access_key_file: Option<PathBuf>,
    pub checksums: ChecksumPolicy,
    pub multipart_threshold: u64,
    pub part_size: u64,
    pub part_concurrency: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumPolicy {
    WhenRequired,
    WhenSupported,
}

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
pub struct CatalogConfig {
    /// How long a write waits for a lock held by another process before it fails (and its
    /// work is retried).
    pub busy_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
}

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

// ---------------------------------------------------------------- raw (serde) layer

#[derive(Deserialize, Default)]
struct RawConfig {
    state_dir: Option<String>,
    log_format: Option<String>,
    #[serde(default)]
    include: Vec<String>,
    sftp: Option<RawSftp>,
    sink: Option<RawSink>,
    matching: Option<RawMatching>,
    retention: Option<RawRetention>,
    forwarding: Option<RawForwarding>,
    intake: Option<RawIntake>,
    catalog: Option<RawCatalog>,
    metrics: Option<RawMetrics>,
    #[serde(default)]
    tenants: Vec<RawTenant>,
}

#[derive(Deserialize, Default)]
struct RawIncluded {
    #[serde(default)]
    tenants: Vec<RawTenant>,
}

#[derive(Deserialize, Default)]
struct RawSftp {
    listen: Option<String>,
    host_key: Option<String>,
    max_sessions: Option<u32>,
    max_sessions_per_ip: Option<u32>,
    login_grace: Option<String>,
    idle_timeout: Option<String>,
    max_auth_failures: Option<u32>,
    ban_time: Option<String>,
    max_file_size: Option<String>,
    fsync_on_close: Option<bool>,
}

#[derive(Deserialize, Default)]
struct RawSink {
    #[serde(rename = "type")]
    kind: Option<String>,
    path: Option<String>,
    bucket: Option<String>,
    prefix: Option<String>,
    region: Option<String>,
    endpoint: Option<String>,
    path_style: Option<bool>,
    access_key_id_file: Option<String>,
    secret_access_key_file: Option<String>,
    checksums: Option<String>,
    multipart_threshold: Option<String>,
    part_size: Option<String>,
    part_concurrency: Option<u32>,
}

#[derive(Deserialize, Default)]
struct RawMatching {
    grace: Option<String>,
    recording_extensions: Option<Vec<String>>,
    zip_max_unpacked: Option<String>,
    zip_max_entries: Option<u64>,
    zip_max_ratio: Option<u64>,
    max_field_bytes: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawRetention {
    local: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawForwarding {
    workers: Option<u32>,
    retry_min: Option<String>,
    retry_max: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawIntake {
    lanes: Option<u32>,
}

#[derive(Deserialize, Default)]
struct RawCatalog {
    busy_timeout: Option<String>,
}

#[derive(Deserialize)]
struct RawMetrics {
    listen: String,
}

#[derive(Deserialize, Default)]
struct RawTenant {
    id: Option<String>,
    #[serde(default)]
    authorized_keys: Vec<String>,
    authorized_keys_file: Option<String>,
    timezone: Option<String>,
    mapping: Option<RawMapping>,
    #[serde(default)]
    ftp: Vec<RawFtp>,
}

#[derive(Deserialize, Default)]
struct RawMapping {
    conversation_id: Option<String>,
    agent: Option<String>,
    contact_time: Option<String>,
    contact_date: Option<String>,
    contact_clock: Option<String>,
    contact_time_format: Option<String>,
    recording: Option<String>,
    #[serde(default)]
    required_columns: Vec<String>,
}

#[derive(Deserialize, Default)]
struct RawFtp {
    url: Option<String>,
    password_file: Option<String>,
    password_env: Option<String>,
    poll_interval: Option<String>,
    min_age: Option<String>,
    after_download: Option<String>,
    ca_file: Option<String>,
    tls_insecure_skip_verify: Option<bool>,
    timeout: Option<String>,
    connections: Option<u32>,
}

// ---------------------------------------------------------------- loading

/// Collects problems for one file.
struct Problems<'a> {
    file: &'a Path,
    list: &'a mut Vec<ConfigProblem>,
}

impl Problems<'_> {
    fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.list.push(ConfigProblem {
            file: self.file.to_path_buf(),
            key: key.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, key: &str, raw: Option<&str>, default: Duration) -> Duration {
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

    fn size(&mut self, key: &str, raw: Option<&str>, default: u64) -> u64 {
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

    fn addr(&mut self, key: &str, raw: &str) -> Option<SocketAddr> {
        match raw.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.add(key, format!("{raw:?} is not an address like \"127.0.0.1:2022\""));
                None
            }
        }
    }
}

fn resolve(base: &Path, raw: &str) -> PathBuf {
    let p = Path::new(raw);
    if p.is_absolute() { p.to_path_buf() } else { base.join(p) }
}

/// Parses one TOML file into `T`, reporting syntax errors, every unknown key and the first type
/// error (serde stops there) with their paths.
fn parse_file<T: serde::de::DeserializeOwned>(file: &Path, problems: &mut Vec<ConfigProblem>) -> Option<T> {
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
            host_key: s
                .host_key
                .map(|h| resolve(&base, &h))
                .unwrap_or_else(|| state_dir.join("ssh_host_ed25519_key")),
            max_sessions: s.max_sessions.unwrap_or(256),
            max_sessions_per_ip: s.max_sessions_per_ip.unwrap_or(64),
            login_grace: p.duration("sftp.login_grace", s.login_grace.as_deref(), Duration::from_secs(30)),
            idle_timeout: p.duration("sftp.idle_timeout", s.idle_timeout.as_deref(), Duration::from_secs(900)),
            max_auth_failures: s.max_auth_failures.unwrap_or(6),
            ban_time: p.duration("sftp.ban_time", s.ban_time.as_deref(), Duration::from_secs(600)),
            max_file_size: p.size("sftp.max_file_size", s.max_file_size.as_deref(), 16 << 30),
            fsync_on_close: s.fsync_on_close.unwrap_or(true),
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
    let retention = RetentionConfig {
        local: p.duration(
            "retention.local",
            raw.retention.unwrap_or_default().local.as_deref(),
            Duration::from_secs(7 * 24 * 3600),
        ),
    };
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
    let catalog = CatalogConfig {
        busy_timeout: p.duration(
            "catalog.busy_timeout",
            raw.catalog.unwrap_or_default().busy_timeout.as_deref(),
            Duration::from_secs(30),
        ),
    };
    let metrics = raw
        .metrics
        .and_then(|m| p.addr("metrics.listen", &m.listen))
        .map(|listen| MetricsConfig { listen });

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
        catalog,
        metrics,
        tenants,
    })
}

fn sink_config(p: &mut Problems<'_>, base: &Path, state_dir: &Path, s: RawSink) -> SinkConfig {
    let kind = s.kind.as_deref().unwrap_or("dir");
    let s3_only = [
        ("bucket", s.bucket.is_some()),
        ("prefix", s.prefix.is_some()),
        ("region", s.region.is_some()),
        ("endpoint", s.endpoint.is_some()),
        ("path_style", s.path_style.is_some()),
        ("access_key_id_file", s.access_key_id_file.is_some()),
        ("secret_access_key_file", s.secret_access_key_file.is_some()),
        ("checksums", s.checksums.is_some()),
        ("multipart_threshold", s.multipart_threshold.is_some()),
        ("part_size", s.part_size.is_some()),
        ("part_concurrency", s.part_concurrency.is_some()),
    ];
    match kind {
        "dir" => {
            for (key, set) in s3_only {
                if set {
                    p.add(format!("sink.{key}"), "only used with type = \"s3\"");
                }
            }
            SinkConfig::Dir {
                path: s
                    .path
                    .map(|d| resolve(base, &d))
                    .unwrap_or_else(|| state_dir.join("outbox")),
            }
        }
        "s3" => {
            if s.path.is_some() {
                p.add("sink.path", "only used with type = \"dir\"");
            }
            let bucket = s.bucket.unwrap_or_default();
            if bucket.is_empty() {
                p.add("sink.bucket", "required with type = \"s3\"");
            }
            let mut prefix = s.prefix.unwrap_or_default();
            if !prefix.is_empty() && !prefix.ends_with('/') {
                prefix.push('/');
            }
            if s.access_key_id_file.is_some() != s.secret_access_key_file.is_some() {
                p.add(
                    "sink.access_key_id_file",
                    "set both access_key_id_file and secret_access_key_file, or neither",
                );
            }
            let checksums = match s.checksums.as_deref() {
                None | Some("when_required") => ChecksumPolicy::WhenRequired,
                Some("when_supported") => ChecksumPolicy::WhenSupported,
                Some(o) => {
                    p.add(
                        "sink.checksums",
                        format!("{o:?} is not one of \"when_required\", \"when_supported\""),
                    );
                    ChecksumPolicy::WhenRequired
                }
            };
            let part_size = p.size("sink.part_size", s.part_size.as_deref(), 16 << 20);
            if part_size < 5 << 20 {
                p.add("sink.part_size", "S3 needs parts of at least 5 MiB");
            }
            SinkConfig::S3(S3SinkConfig {
                bucket,
                prefix,
                region: s.region.unwrap_or_else(|| "us-east-1".into()),
                endpoint: s.endpoint,
                path_style: s.path_style.unwrap_or(false),
                access_key_id_file: s.access_key_id_file.map(|f| resolve(base, &f)),
                secret_access_key_file: s.secret_access_key_file.map(|f| resolve(base, &f)),
                checksums,
                multipart_threshold: p.size("sink.multipart_threshold", s.multipart_threshold.as_deref(), 32 << 20),
                part_size,
                part_concurrency: s.part_concurrency.unwrap_or(4).max(1),
            })
        }
        other => {
            p.add("sink.type", format!("{other:?} is not one of \"dir\", \"s3\""));
            SinkConfig::Dir {
                path: state_dir.join("outbox"),
            }
        }
    }
}

fn tenant(p: &mut Problems<'_>, base: &Path, at: &str, t: RawTenant) -> Option<Tenant> {
    let id = match t.id.as_deref() {
        None => {
            p.add(format!("{at}.id"), "required");
            None
        }
        Some(raw) => match TenantId::parse(raw) {
            Ok(id) => Some(id),
            Err(e) => {
                p.add(format!("{at}.id"), e);
                None
            }
        },
    };
    let timezone = match t.timezone.as_deref() {
        None => chrono_tz::UTC,
        Some(tz) => match tz.parse::<chrono_tz::Tz>() {
            Ok(tz) => tz,
            Err(_) => {
                p.add(
                    format!("{at}.timezone"),
                    format!("{tz:?} is not an IANA time zone like \"Europe/Paris\""),
                );
                chrono_tz::UTC
            }
        },
    };
    let mapping = mapping(p, &format!("{at}.mapping"), t.mapping);
    let mut ftp = Vec::new();
    for (i, raw) in t.ftp.into_iter().enumerate() {
        if let Some(src) = ftp_source(p, base, &format!("{at}.ftp.{i}"), raw) {
            ftp.push(src);
        }
    }
    for (i, key) in t.authorized_keys.iter().enumerate() {
        if key.split_whitespace().count() < 2 {
            p.add(
                format!("{at}.authorized_keys.{i}"),
                "not an OpenSSH public key line (\"ssh-ed25519 AAAA… comment\")",
            );
        }
    }
    Some(Tenant {
        id: id?,
        defined_in: p.file.to_path_buf(),
        authorized_keys: t.authorized_keys,
        authorized_keys_file: t.authorized_keys_file.map(|f| resolve(base, &f)),
        timezone,
        mapping: mapping?,
        ftp,
    })
}

fn mapping(p: &mut Problems<'_>, at: &str, m: Option<RawMapping>) -> Option<Mapping> {
    let Some(m) = m else {
        return Some(Mapping::default());
    };
    let mut ok = true;
    let mut non_empty = |p: &mut Problems<'_>, key: &str, v: Option<String>| -> Option<String> {
        match v {
            Some(s) if s.trim().is_empty() => {
                p.add(format!("{at}.{key}"), "a column name cannot be empty");
                ok = false;
                None
            }
            other => other.map(|s| s.trim().to_owned()),
        }
    };
    let conversation_id = non_empty(p, "conversation_id", m.conversation_id);
    let agent = non_empty(p, "agent", m.agent);
    let contact_time = non_empty(p, "contact_time", m.contact_time);
    let contact_date = non_empty(p, "contact_date", m.contact_date);
    let contact_clock = non_empty(p, "contact_clock", m.contact_clock);
    let recording = non_empty(p, "recording", m.recording);
    let agent = agent.unwrap_or_else(|| {
        p.add(format!("{at}.agent"), "required: the column that holds the agent");
        ok = false;
        String::new()
    });
    let time = match (contact_time, contact_date, contact_clock) {
        (Some(column), None, None) => TimeColumns::Single {
            column,
            format: m.contact_time_format,
        },
        (None, Some(date), Some(clock)) => {
            if m.contact_time_format.is_some() {
                p.add(format!("{at}.contact_time_format"), "only used with contact_time");
                ok = false;
            }
            TimeColumns::Split { date, clock }
        }
        (Some(_), _, _) => {
            p.add(
                format!("{at}.contact_time"),
                "map either contact_time, or contact_date and contact_clock, not both",
            );
            ok = false;
            TimeColumns::default()
        }
        _ => {
            p.add(
                format!("{at}.contact_time"),
                "required (or contact_date and contact_clock together)",
            );
            ok = false;
            TimeColumns::default()
        }
    };
    if let TimeColumns::Single { format: Some(f), .. } = &time
        && let Err(e) = crate::matching::check_time_format(f)
    {
        p.add(format!("{at}.contact_time_format"), e);
        ok = false;
    }
    let required_columns: Vec<String> = m.required_columns.iter().map(|c| c.trim().to_owned()).collect();
    ok.then_some(Mapping {
        conversation_id,
        agent,
        time,
        recording,
        required_columns,
    })
}

fn ftp_source(p: &mut Problems<'_>, base: &Path, at: &str, f: RawFtp) -> Option<FtpSource> {
    let Some(raw_url) = f.url else {
        p.add(
            format!("{at}.url"),
            "required, like \"ftps://user@ftp.example.com:21/outgoing\"",
        );
        return None;
    };
    let source = match crate::tenant::FtpUrl::parse(&raw_url) {
        Ok(url) => Some(url),
        Err(e) => {
            p.add(format!("{at}.url"), e);
            None
        }
    };
    let password = match (f.password_file, f.password_env) {
        (Some(file), None) => Some(SecretSource::File(resolve(base, &file))),
        (None, Some(var)) => Some(SecretSource::Env(var)),
        (None, None) => None,
        (Some(_), Some(_)) => {
            p.add(
                format!("{at}.password_file"),
                "set password_file or password_env, not both",
            );
            None
        }
    };
    let after_download = match f.after_download.as_deref() {
        None | Some("keep") => crate::tenant::AfterDownload::Keep,
        Some("delete") => crate::tenant::AfterDownload::Delete,
        Some(o) => {
            p.add(
                format!("{at}.after_download"),
                format!("{o:?} is not one of \"keep\", \"delete\""),
            );
            crate::tenant::AfterDownload::Keep
        }
    };
    let connections = f.connections.unwrap_or(4);
    if !(1..=16).contains(&connections) {
        p.add(format!("{at}.connections"), "must be between 1 and 16");
    }
    Some(FtpSource {
        connections: connections.clamp(1, 16),
        url: source?,
        password,
        poll_interval: p.duration(
            &format!("{at}.poll_interval"),
            f.poll_interval.as_deref(),
            Duration::from_secs(300),
        ),
        min_age: p.duration(&format!("{at}.min_age"), f.min_age.as_deref(), Duration::from_secs(120)),
        after_download,
        ca_file: f.ca_file.map(|c| resolve(base, &c)),
        tls_insecure_skip_verify: f.tls_insecure_skip_verify.unwrap_or(false),
        timeout: p.duration(&format!("{at}.timeout"), f.timeout.as_deref(), Duration::from_secs(60)),
    })
}

/// Checks what only matters when the daemon runs: secrets and key files can be read.
pub fn check_runtime(config: &Config) -> Vec<ConfigProblem> {
    let mut out = Vec::new();
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
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    fn problems(text: &str) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), "c.toml", text);
        match load(&f) {
            Ok(_) => vec![],
            Err(e) => e.problems.iter().map(|p| format!("{}: {}", p.key, p.message)).collect(),
        }
    }

    #[test]
    fn every_shipped_example_config_loads() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut examples = vec![root.join("config.example.toml")];
        for entry in std::fs::read_dir(root.join("examples")).into_iter().flatten().flatten() {
            if entry.path().extension().is_some_and(|e| e == "toml") {
                examples.push(entry.path());
            }
        }
        for ex in examples {
            let cfg = load(&ex).unwrap_or_else(|e| panic!("{} does not load:\n{e}", ex.display()));
            assert!(!cfg.tenants.is_empty(), "{} has no tenant", ex.display());
        }
    }

    #[test]
    fn minimal_config_gets_defaults_and_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), "c.toml", "[[tenants]]\nid = \"acme\"\n");
        let cfg = load(&f).unwrap();
        assert_eq!(cfg.state_dir, dir.path().join("var"));
        assert!(matches!(&cfg.sink, SinkConfig::Dir { path } if *path == dir.path().join("var/outbox")));
        assert_eq!(cfg.matching.grace, Duration::from_secs(86400));
        assert_eq!(cfg.retention.local, Duration::from_secs(7 * 86400));
        assert_eq!(cfg.matching.zip_max_unpacked, 3 << 30);
        assert!(cfg.sftp.is_none());
    }

    #[test]
    fn unknown_keys_are_reported_with_full_path_all_at_once() {
        let found = problems(
            "colour = 1\n[sink]\ntype = \"dir\"\npth = \"x\"\n[[tenants]]\nid = \"a\"\n[tenants.mapping]\nagent = \"A\"\ncontact_time = \"T\"\nrecordng = \"R\"\n",
        );
        assert!(found.contains(&"colour: unknown key".to_string()), "{found:?}");
        assert!(found.contains(&"sink.pth: unknown key".to_string()), "{found:?}");
        assert!(
            found.contains(&"tenants.0.mapping.recordng: unknown key".to_string()),
            "{found:?}"
        );
    }

    #[test]
    fn semantic_problems_are_all_reported() {
        let found = problems(
            "log_format = \"xml\"\n[matching]\ngrace = \"soon\"\n[[tenants]]\nid = \"Bad Id\"\ntimezone = \"Mars/Olympus\"\n[tenants.mapping]\ncontact_time = \"T\"\n",
        );
        let keys: Vec<&str> = found.iter().map(|s| s.split(':').next().unwrap()).collect();
        for k in [
            "log_format",
            "matching.grace",
            "tenants.0.id",
            "tenants.0.timezone",
            "tenants.0.mapping.agent",
        ] {
            assert!(keys.contains(&k), "{k} missing in {found:?}");
        }
    }

    #[test]
    fn type_errors_name_their_key() {
        let found = problems("[[tenants]]\nid = 5\n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("tenants[0].id") || found[0].starts_with("tenants.0.id"),
            "{found:?}"
        );
    }

    #[test]
    fn includes_add_tenants_and_duplicates_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "tenants.d/b.toml", "[[tenants]]\nid = \"b\"\n");
        write(dir.path(), "tenants.d/c.toml", "[[tenants]]\nid = \"c\"\nbogus = 1\n");
        let f = write(
            dir.path(),
            "c.toml",
            "include = [\"tenants.d/*.toml\"]\n[[tenants]]\nid = \"a\"\n",
        );
        let err = load(&f).unwrap_err();
        assert_eq!(err.problems.len(), 1);
        assert!(err.problems[0].file.ends_with("tenants.d/c.toml"));
        assert_eq!(err.problems[0].key, "tenants.0.bogus");
        std::fs::write(dir.path().join("tenants.d/c.toml"), "[[tenants]]\nid = \"a\"\n").unwrap();
        let err = load(&f).unwrap_err();
        assert!(err.problems[0].message.contains("more than once"));
        std::fs::write(dir.path().join("tenants.d/c.toml"), "[[tenants]]\nid = \"c\"\n").unwrap();
        let cfg = load(&f).unwrap();
        let ids: Vec<&str> = cfg.tenants.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
    }

    #[test]
    fn sink_keys_must_fit_the_type() {
        let found = problems("[sink]\ntype = \"dir\"\nbucket = \"b\"\n[[tenants]]\nid = \"a\"\n");
        assert_eq!(found, ["sink.bucket: only used with type = \"s3\""]);
        let found = problems("[sink]\ntype = \"s3\"\n[[tenants]]\nid = \"a\"\n");
        assert_eq!(found, ["sink.bucket: required with type = \"s3\""]);
    }

    #[test]
    fn ftp_urls_with_inline_passwords_are_refused() {
        let found = problems("[[tenants]]\nid = \"a\"\n[[tenants.ftp]]\nurl = \"ftp://u:hunter2@h/x\"\n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("password_file"), "{found:?}");
        assert!(
            !found[0].contains("hunter2"),
            "the secret leaked into the message: {found:?}"
        );
    }

    #[test]
    fn ftp_source_keys_are_checked() {
        let found = problems(
            "[[tenants]]\nid = \"a\"\n[[tenants.ftp]]\nurl = \"ftps://u@h/x\"\nconnections = 0\n\
             after_download = \"move\"\nmin_age = \"soon\"\npassword_file = \"p\"\npassword_env = \"P\"\n",
        );
        assert_eq!(found.len(), 4, "{found:?}");
        for key in ["connections", "after_download", "min_age", "password_file"] {
            assert!(found.iter().any(|p| p.contains(key)), "{key}: {found:?}");
        }
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "<secret>");
        assert_eq!(format!("{:?}", Some(s)), "Some(<secret>)");
    }
}
