//! Tenants: who a contact centre is (id = SFTP user name), how its metadata columns map onto our
//! canonical fields, and which of its FTP servers we poll.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::secret::SecretSource;

/// `[a-z0-9][a-z0-9_-]{0,62}`: safe as a folder name, an SFTP user name and an object-key part.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let bytes = raw.as_bytes();
        let first_ok = bytes
            .first()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let rest_ok = bytes[1.min(bytes.len())..]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-');
        if first_ok && rest_ok && bytes.len() <= 63 {
            Ok(TenantId(raw.to_owned()))
        } else {
            Err(format!(
                "{raw:?} is not a tenant id: 1 to 63 characters of a-z, 0-9, '_' and '-', starting with a letter or digit"
            ))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: TenantId,
    /// The config file that defines this tenant (the main file or an included one).
    pub defined_in: PathBuf,
    pub authorized_keys: Vec<String>,
    pub authorized_keys_file: Option<PathBuf>,
    /// One token a line: this tenant's upload API (SPEC §10).
    pub api_tokens_file: Option<PathBuf>,
    pub timezone: chrono_tz::Tz,
    pub mapping: Mapping,
    pub ftp: Vec<FtpSource>,
    /// This tenant's own quota keys; the others come from `[limits] quota`.
    pub quota: Quota,
    /// Minutes of audio it may have forwarded per calendar month in its time zone (SPEC §9).
    pub allocation: Option<MinuteAllocation>,
    /// How long its local copies are kept; `None`: `[retention] local`.
    pub retention: Option<Duration>,
}

/// A tenant's monthly minute allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinuteAllocation {
    pub minutes: u64,
    pub on_exceeded: OnExceeded,
}

/// What happens to a conversation that would pass the allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExceeded {
    /// It waits (`held`) until the allocation is raised or a new month begins.
    Hold,
    Reject,
}

/// How much a tenant may hold in its drop folder, and how many SFTP sessions it may have at
/// once (SPEC §8). `None`: not set here (a tenant's own quota), or no limit (the global one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    pub bytes: Option<u64>,
    pub files: Option<u64>,
    pub sessions: Option<u32>,
}

impl Quota {
    /// The keys set here, the others from `base`.
    pub fn over(self, base: Quota) -> Quota {
        Quota {
            bytes: self.bytes.or(base.bytes),
            files: self.files.or(base.files),
            sessions: self.sessions.or(base.sessions),
        }
    }
}

/// Which columns of a tenant's metadata files hold the canonical fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub conversation_id: Option<String>,
    pub agent: String,
    pub time: TimeColumns,
    pub recording: Option<String>,
    pub required_columns: Vec<String>,
}

impl Default for Mapping {
    /// Without a `[tenants.mapping]` table, columns are named after the canonical fields.
    fn default() -> Self {
        Mapping {
            conversation_id: Some("conversation_id".into()),
            agent: "agent".into(),
            time: TimeColumns::default(),
            recording: Some("recording".into()),
            required_columns: Vec::new(),
        }
    }
}

impl Mapping {
    /// One metadata file per conversation, its recording beside it with the same stem.
    pub fn is_sidecar(&self) -> bool {
        self.conversation_id.is_none() && self.recording.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimeColumns {
    /// One column, ISO 8601 unless `format` (strftime) says otherwise.
    Single { column: String, format: Option<String> },
    /// `YYYY-MM-DD` and `hh:mm:ss` in two columns.
    Split { date: String, clock: String },
}

impl Default for TimeColumns {
    fn default() -> Self {
        TimeColumns::Single {
            column: "contact_time".into(),
            format: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterDownload {
    Keep,
    Delete,
}

/// One `[[tenants.ftp]]` source.
#[derive(Debug, Clone)]
pub struct FtpSource {
    pub url: FtpUrl,
    pub password: Option<SecretSource>,
    pub poll_interval: Duration,
    pub min_age: Duration,
    pub after_download: AfterDownload,
    pub ca_file: Option<PathBuf>,
    /// SHA-256 of server keys (SubjectPublicKeyInfo) accepted whatever their certificate.
    pub tls_pin_sha256: Vec<[u8; 32]>,
    pub tls_insecure_skip_verify: bool,
    pub timeout: Duration,
    /// Control connections used at once for downloads (each carries one transfer).
    pub connections: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FtpUrl {
    /// Explicit TLS (AUTH TLS, RFC 4217) when true.
    pub tls: bool,
    pub user: String,
    pub host: String,
    pub port: u16,
    /// Remote folder, always starting with '/'.
    pub path: String,
}

impl std::fmt::Display for FtpUrl {
    /// The URL as configured (it never holds a password).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "ftps" } else { "ftp" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(f, "{scheme}://{}@{host}:{}{}", self.user, self.port, self.path)
    }
}

impl FtpUrl {
    /// `ftp://user@host[:port]/path` or `ftps://…`; a password in the URL is refused so that it
    /// never sits in a config file that is world-readable or committed.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(r) = raw.strip_prefix("ftps://") {
            (true, r)
        } else if let Some(r) = raw.strip_prefix("ftp://") {
            (false, r)
        } else {
            return Err("must start with ftp:// or ftps://".into());
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (user, hostport) = match authority.rfind('@') {
            Some(i) => (&authority[..i], &authority[i + 1..]),
            None => ("anonymous", authority),
        };
        if user.contains(':') {
            return Err("has a password in it: put the password in password_file or password_env".into());
        }
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let end = v6.find(']').ok_or("unclosed '[' in host")?;
            let port = &v6[end + 1..];
            (&v6[..end], port.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err("has no host".into());
        }
        let port = match port {
            None => 21,
            Some(p) => p.parse::<u16>().map_err(|_| format!("{p:?} is not a port"))?,
        };
        Ok(FtpUrl {
            tls,
            user: user.to_owned(),
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids() {
        for ok in ["a", "acme", "0-x_y", &"a".repeat(63)] {
            assert!(TenantId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "_a", "A", "a b", "a/b", "..", "a.b", &"a".repeat(64), "é"] {
            assert!(TenantId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ftp_urls() {
        let u = FtpUrl::parse("ftps://bob@ftp.example.com:2121/out/calls").unwrap();
        assert_eq!(
            u,
            FtpUrl {
                tls: true,
                user: "bob".into(),
                host: "ftp.example.com".into(),
                port: 2121,
                path: "/out/calls".into()
            }
        );
        let u = FtpUrl::parse("ftp://[::1]").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str(), u.user.as_str()),
            ("::1", 21, "/", "anonymous")
        );
        assert!(FtpUrl::parse("sftp://h/").is_err());
        assert!(FtpUrl::parse("ftp://u:p@h/").is_err());
        assert!(FtpUrl::parse("ftp://h:99999/").is_err());
    }
}
