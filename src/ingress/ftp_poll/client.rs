//! One FTP control connection (RFC 959) to a tenant's server: connect, explicit TLS (RFC 4217),
//! log in, list a folder tree, download with resume (REST, RFC 3659 §5), delete. Every step has
//! a time limit, since suppaftp has none of its own and a silent server must not hang a poller.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use suppaftp::tokio::{AsyncRustlsConnector, AsyncRustlsStream, ImplAsyncFtpStream};
use suppaftp::types::FileType;
use suppaftp::{FtpError, Mode};
use tokio::io::AsyncReadExt;

use super::data::{self, DataTls, Passive};
use super::listing::{self, Entry, Format};
pub use super::tls::Tls;
use crate::arrival::file::{ArrivingFile, Background};
use crate::backoff::Retry;
use crate::catalog::RemoteFile;
use crate::dropbox::{RelPath, is_temp_name};
use crate::tenant::FtpSource;

/// The control connection type; without TLS its data connections are plain TCP.
pub(super) type Control = ImplAsyncFtpStream<AsyncRustlsStream>;

/// A listing deeper than this is refused (a server could loop us through links or mounts).
const MAX_DEPTH: usize = 32;
/// A listing with more entries than this is refused rather than held in memory.
const MAX_ENTRIES: usize = 2_000_000;
/// Downloads are written to disk in chunks of this size.
const CHUNK: usize = 128 << 10;

#[derive(Debug, thiserror::Error)]
pub enum FtpPollError {
    #[error("{op}: {source}")]
    Ftp {
        op: String,
        #[source]
        source: FtpError,
    },
    #[error("{op}: no answer within {after:?}")]
    Timeout { op: String, after: Duration },
    #[error("TLS set-up: {0}")]
    Tls(#[source] rustls::Error),
    #[error("CA file {path}: {source}")]
    CaFile {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("password: {0}")]
    Password(String),
    #[error("{path}: {source}")]
    Local {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: the transfer ended after {got} of {expected} bytes")]
    Short { path: String, got: u64, expected: u64 },
    #[error("{path}: it changed while it was read (more than the {expected} bytes listed)")]
    Changed { path: String, expected: u64 },
    #[error("listing {path}: {why}")]
    Listing { path: String, why: String },
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
}

impl FtpPollError {
    /// Whether the control connection is still good for the next file. A refusal of one file
    /// (550 on RETR, a file that changed) is not the connection's fault; a drop or timeout is.
    pub fn keeps_session(&self) -> bool {
        match self {
            FtpPollError::Ftp {
                source: FtpError::UnexpectedResponse(r),
                ..
            } => r.status.code() >= 500,
            FtpPollError::Local { .. } | FtpPollError::Changed { .. } | FtpPollError::Catalog(_) => true,
            _ => false,
        }
    }

    /// A 4xx or 5xx reply about the thing asked for (not "closing the connection", 421, and
    /// not a missing feature): the connection is fine, the server refuses this one request.
    pub fn is_refusal(&self) -> bool {
        match self {
            FtpPollError::Ftp {
                source: FtpError::UnexpectedResponse(r),
                ..
            } => {
                let code = r.status.code();
                (400..600).contains(&code) && code != 421 && !not_implemented(code)
            }
            _ => false,
        }
    }

    /// The server's reply, for a refusal (its body carries the status code); else the whole
    /// error.
    pub fn reply_text(&self) -> String {
        match self {
            FtpPollError::Ftp {
                source: FtpError::UnexpectedResponse(r),
                ..
            } => one_line(&String::from_utf8_lossy(&r.body)),
            other => other.to_string(),
        }
    }
}

/// Whether the next poll may get further. Not after a permanent reply (5xx: a refused login, a
/// folder that is not there), our own settings (TLS, the password), a listing we refuse as the
/// server gives it, or a drop folder we may not write; after a timeout, a dropped connection, a
/// transient reply (4xx), a short or changing transfer, or a busy catalog.
impl Retry for FtpPollError {
    fn retry_helps(&self) -> bool {
        match self {
            FtpPollError::Ftp { source, .. } => match source {
                // 430: "invalid username or password", a 4xx that waiting does not mend.
                FtpError::UnexpectedResponse(r) => r.status.code() < 500 && r.status.code() != 430,
                FtpError::ConnectionError(e) => e.retry_helps(),
                FtpError::InvalidAddress(_) => false,
                FtpError::SecureError(_) | FtpError::BadResponse | FtpError::DataConnectionAlreadyOpen => true,
            },
            FtpPollError::Timeout { .. } | FtpPollError::Short { .. } | FtpPollError::Changed { .. } => true,
            FtpPollError::Tls(_)
            | FtpPollError::CaFile { .. }
            | FtpPollError::Password(_)
            | FtpPollError::Listing { .. } => false,
            FtpPollError::Local { source, .. } => source.retry_helps(),
            FtpPollError::Catalog(e) => e.retry_helps(),
        }
    }
}

type Result<T> = std::result::Result<T, FtpPollError>;

/// A listing of a source's folder tree.
#[derive(Debug, Default)]
pub struct Listing {
    pub files: Vec<RemoteFile>,
    /// Entries that cannot be mirrored, with the reason.
    pub skipped: Vec<(String, &'static str)>,
    /// Folders whose files may be missing from `files`: the server refused to list them, or
    /// said it cut their listing short.
    pub incomplete: Vec<IncompleteFolder>,
}

/// A folder the listing could not see whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncompleteFolder {
    /// Relative to the source's folder; "" is the source's folder itself.
    pub dir: String,
    /// What happened, in the server's words.
    pub why: String,
}

/// A logged-in control connection.
pub struct FtpClient {
    ftp: Control,
    timeout: Duration,
    /// The source's folder as an absolute server path.
    root: String,
    /// The server refused MLSD once: use LIST from then on.
    use_list: bool,
    /// EPSV until the server refuses it once, then PASV.
    passive: Passive,
    /// The server's address, which data connections go to.
    peer: SocketAddr,
    /// TLS for data connections, for ftps://.
    data_tls: Option<DataTls>,
}

impl FtpClient {
    /// Connects, secures (ftps), logs in and switches to binary mode.
    pub async fn connect(source: &FtpSource, tls: Option<&Tls>) -> Result<FtpClient> {
        let url = &source.url;
        let timeout = source.timeout;
        let password = match &source.password {
            Some(s) => s.load().map_err(FtpPollError::Password)?.expose().to_owned(),
            // RFC 1635: anonymous logins give an address as the password.
            None => "dropsync@".to_owned(),
        };
        let addr = format!("{}:{}", url.host, url.port);
        let op = format!("connecting to {addr}");
        let stream = timed(&op, timeout, async {
            tokio::net::TcpStream::connect(&addr)
                .await
                .map_err(FtpError::ConnectionError)
        })
        .await?;
        let _ = stream.set_nodelay(true);
        let peer = stream.peer_addr().map_err(|e| FtpPollError::Ftp {
            op: op.clone(),
            source: FtpError::ConnectionError(e),
        })?;
        let mut ftp = timed(&op, timeout, Control::connect_with_stream(stream)).await?;
        let mut data_tls = None;
        if let Some(tls) = tls {
            let connector = tokio_rustls::TlsConnector::from(tls.client_config()?);
            let name = rustls::pki_types::ServerName::try_from(url.host.clone())
                .map_err(|e| FtpPollError::Tls(rustls::Error::General(format!("server name {:?}: {e}", url.host))))?;
            data_tls = Some(DataTls {
                connector: connector.clone(),
                name,
            });
            ftp = timed(
                "AUTH TLS",
                timeout,
                ftp.into_secure(AsyncRustlsConnector::from(connector), &url.host),
            )
            .await?;
        }
        // EPSV (RFC 2428) connects the data channel to the address we already talk to, so a
        // server behind NAT that announces a private address in PASV still works.
        ftp.set_mode(Mode::ExtendedPassive);
        ftp.set_passive_nat_workaround(true);
        let user = url.user.clone();
        timed("login", timeout, ftp.login(user.as_str(), password.as_str())).await?;
        timed("TYPE I", timeout, ftp.transfer_type(FileType::Binary)).await?;
        // RFC 3659 §7.8: a server with MLSD lists MLST in its FEAT reply. A server without FEAT
        // is simply tried with MLSD.
        let use_list = match tokio::time::timeout(timeout, ftp.feat()).await {
            Ok(Ok(features)) => !features.keys().any(|k| k.eq_ignore_ascii_case("MLST")),
            _ => false,
        };
        // RFC 1738 §3.2.2: the URL path is relative to the login folder ("//abs" for an absolute
        // one). Commands below use absolute paths, since LIST changes the working folder.
        let root = if let Some(abs) = url.path.strip_prefix("//") {
            format!("/{abs}")
        } else {
            let home = match tokio::time::timeout(timeout, ftp.pwd()).await {
                Ok(Ok(home)) if home.starts_with('/') => home,
                _ => "/".to_owned(),
            };
            remote_path(&home, url.path.trim_matches('/'))
        };
        Ok(FtpClient {
            ftp,
            timeout,
            root,
            use_list,
            passive: Passive::Extended,
            peer,
            data_tls,
        })
    }

    /// The server path of `rel` (relative to the source's folder).
    pub fn remote(&self, rel: &str) -> String {
        remote_path(&self.root, rel)
    }

    /// Lists every file under the source's folder, depth first. Names that are not safe as
    /// local paths are skipped with a reason; files still being written under a temp name,
    /// hidden files and the reserved `reports` folder are left out. A sub-folder the server
    /// refuses to list (a 4xx or 5xx reply: no permission, a link loop) is skipped and named in
    /// `incomplete`, as is one whose listing the server says it cut short; the source's own
    /// folder failing fails the listing.
    pub async fn list_tree(&mut self) -> Result<Listing> {
        let root = self.root.clone();
        let root = root.as_str();
        let mut out = Listing::default();
        let mut entries_seen = 0usize;
        // Folders already listed, by MLSD's `unique` fact: a link to one is not followed. Not
        // every server lists a folder's own entry (`type=cdir`), so the source's folder is
        // asked for its own (MLST), or a link back up to it would be listed all over again.
        let mut seen_folders = HashSet::new();
        if !self.use_list
            && let Some(unique) = self.own_unique(root).await
        {
            seen_folders.insert(unique);
        }
        let mut stack = vec![(String::new(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            let remote_dir = remote_path(root, &dir);
            let (entries, closing) = match self.list_dir(&remote_dir).await {
                Ok(listed) => listed,
                Err(e) if !dir.is_empty() && e.is_refusal() => {
                    out.incomplete.push(IncompleteFolder {
                        dir,
                        why: format!("not listed: {}", e.reply_text()),
                    });
                    continue;
                }
                Err(e) => return Err(e),
            };
            if closing.to_ascii_lowercase().contains("truncat") {
                out.incomplete.push(IncompleteFolder {
                    dir: dir.clone(),
                    why: format!("listing cut short by the server: {}", one_line(&closing)),
                });
            }
            for entry in entries {
                entries_seen += 1;
                if entries_seen > MAX_ENTRIES {
                    return Err(FtpPollError::Listing {
                        path: root.to_owned(),
                        why: format!("more than {MAX_ENTRIES} entries"),
                    });
                }
                if let Entry::Current { unique } = &entry {
                    seen_folders.insert(unique.clone());
                    continue;
                }
                let name = entry.name();
                let rel = if dir.is_empty() {
                    name.to_owned()
                } else {
                    format!("{dir}/{name}")
                };
                if let Some(why) = listing::unsafe_name(name) {
                    out.skipped.push((rel, why));
                    continue;
                }
                if name.starts_with('.') {
                    continue;
                }
                match entry {
                    Entry::Dir { .. } if depth == 0 && name == crate::dropbox::REPORTS_DIR => {
                        out.skipped.push((rel, "is the reserved reports folder"));
                    }
                    Entry::Dir { .. } if depth + 1 >= MAX_DEPTH => {
                        out.skipped.push((rel, "is nested too deep"));
                    }
                    Entry::Dir { unique: Some(u), .. } if !seen_folders.insert(u.clone()) => {
                        out.skipped.push((
                            rel,
                            "is a folder listed already under another name (a link; not followed)",
                        ));
                    }
                    Entry::Dir { .. } => stack.push((rel, depth + 1)),
                    Entry::File { size, mtime_ms, .. } => {
                        if is_temp_name(name) {
                            continue;
                        }
                        match RelPath::parse(&rel) {
                            Some(_) => out.files.push(RemoteFile {
                                path: rel,
                                size,
                                mtime_ms,
                            }),
                            None => out.skipped.push((rel, "is not a valid path")),
                        }
                    }
                    Entry::Other { .. } => out.skipped.push((rel, "is a link or special file (not followed)")),
                    Entry::Current { .. } => {}
                }
            }
        }
        Ok(out)
    }

    /// The `unique` fact of `dir` itself (MLST, RFC 3659 §7), if the server gives one.
    async fn own_unique(&mut self, dir: &str) -> Option<String> {
        let reply = tokio::time::timeout(
            self.timeout,
            self.ftp
                .custom_command(format!("MLST {dir}"), &[suppaftp::Status::RequestedFileActionOk]),
        )
        .await
        .ok()?
        .ok()?;
        let text = String::from_utf8_lossy(&reply.body);
        // "250-Listing /", then " type=dir;unique=…; /", then "250 End".
        let facts = text.lines().find(|l| l.starts_with(' '))?;
        match listing::parse(&[facts.trim_start().to_owned()], Format::Mlsd).pop()? {
            Entry::Dir { unique, .. } => unique,
            Entry::Current { unique } => Some(unique),
            _ => None,
        }
    }

    /// One folder's entries, and the server's closing reply.
    async fn list_dir(&mut self, dir: &str) -> Result<(Vec<Entry>, String)> {
        if !self.use_list {
            match self.listing_command(&format!("MLSD {dir}")).await {
                Ok(reply) => return Ok((listing::parse(&reply.lines, Format::Mlsd), reply.closing)),
                Err(FtpPollError::Ftp {
                    source: FtpError::UnexpectedResponse(r),
                    ..
                }) if not_implemented(r.status.code()) => {
                    tracing::info!(reply = %r, "the server has no MLSD; listing with LIST");
                    self.use_list = true;
                }
                Err(e) => return Err(e),
            }
        }
        // LIST takes no standard options, and some servers read a path argument as `ls` flags:
        // change into the folder and list it.
        timed(&format!("CWD {dir}"), self.timeout, self.ftp.cwd(dir)).await?;
        let reply = self.listing_command("LIST").await?;
        Ok((listing::parse(&reply.lines, Format::List), reply.closing))
    }

    /// Runs a listing command, falling back from EPSV to PASV once if the server does not know
    /// EPSV. (FEAT already said whether MLSD exists, so a "not implemented" here is most likely
    /// EPSV; if it was MLSD after all, PASV fails the same way and the caller moves on to LIST.)
    async fn listing_command(&mut self, command: &str) -> Result<data::ListingReply> {
        loop {
            let result = data::list(
                &mut self.ftp,
                self.peer,
                command,
                self.passive,
                self.data_tls.as_ref(),
                self.timeout,
            )
            .await;
            match result {
                Err(FtpPollError::Ftp {
                    source: FtpError::UnexpectedResponse(r),
                    ..
                }) if self.passive == Passive::Extended && not_implemented(r.status.code()) => {
                    tracing::info!(reply = %r, "the server has no EPSV; using PASV");
                    self.passive = Passive::Classic;
                    self.ftp.set_mode(Mode::Passive);
                }
                other => return other,
            }
        }
    }

    /// Downloads `remote` into `file` (its temp file at `tmp`, opened by the caller), resuming
    /// after the bytes it keeps when the server takes REST, and checks it has `expected` bytes.
    /// Returns the writer, which the caller finishes while this connection moves on, and the
    /// bytes received now.
    pub async fn download(
        &mut self,
        remote: &str,
        mut file: ArrivingFile,
        tmp: &Path,
        expected: u64,
    ) -> Result<(Background, u64)> {
        let local = |source| FtpPollError::Local {
            path: tmp.to_path_buf(),
            source,
        };
        let op = format!("RETR {remote}");
        let mut stream = loop {
            if file.len() >= expected {
                file.restart().map_err(local)?;
            }
            let offset = file.len();
            if offset > 0 {
                let _ = self.ftp.resume_transfer(offset as usize).await;
            }
            match timed(&op, self.timeout, self.ftp.retr_as_stream(remote)).await {
                Ok(s) => break s,
                // A server that refuses REST (or RETR after it) gets one plain RETR.
                Err(FtpPollError::Ftp {
                    source: FtpError::UnexpectedResponse(r),
                    ..
                }) if offset > 0 => {
                    tracing::info!(file = remote, reply = %r, "the server would not resume; downloading from the start");
                    file.restart().map_err(local)?;
                }
                Err(e) => return Err(e),
            }
        };
        let offset = file.len();
        if offset > 0 {
            tracing::info!(file = remote, offset, "resuming an interrupted download");
        }
        // The disk is written on a blocking thread while the next chunk comes in.
        let mut writer = Background::start(file);
        let mut got = 0u64;
        loop {
            let mut buf = writer.buffer(CHUNK);
            // Fill a whole chunk before handing it over: fewer, larger writes.
            let mut eof = false;
            while buf.len() < CHUNK {
                let n = timed_io(&op, self.timeout, stream.read_buf(&mut buf)).await?;
                if n == 0 {
                    eof = true;
                    break;
                }
            }
            got += buf.len() as u64;
            if offset + got > expected {
                return Err(FtpPollError::Changed {
                    path: remote.to_owned(),
                    expected,
                });
            }
            writer.write(buf).await.map_err(|e| local(e.into()))?;
            if eof {
                break;
            }
        }
        timed(&op, self.timeout, stream.finish()).await?;
        if offset + got != expected {
            // What came is kept for a resume at the next poll.
            let _ = writer.finish().await;
            return Err(FtpPollError::Short {
                path: remote.to_owned(),
                got: offset + got,
                expected,
            });
        }
        Ok((writer, got))
    }

    pub async fn delete(&mut self, remote: &str) -> Result<()> {
        timed(&format!("DELE {remote}"), self.timeout, self.ftp.rm(remote)).await
    }

    /// Says goodbye; a server that does not answer is simply dropped.
    pub async fn quit(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ftp.quit()).await;
    }
}

/// A multi-line reply on one line, for status and logs.
fn one_line(reply: &str) -> String {
    reply
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" / ")
}

/// 500 (unknown command), 501, 502 (not implemented), 504: the server lacks a feature.
fn not_implemented(code: u32) -> bool {
    matches!(code, 500 | 501 | 502 | 504)
}

/// `root` joined with a relative path, for commands.
pub fn remote_path(root: &str, rel: &str) -> String {
    let root = root.trim_end_matches('/');
    match (root.is_empty(), rel.is_empty()) {
        (true, true) => "/".to_owned(),
        (true, false) => format!("/{rel}"),
        (false, true) => root.to_owned(),
        (false, false) => format!("{root}/{rel}"),
    }
}

pub(super) async fn timed<T>(
    op: &str,
    after: Duration,
    fut: impl Future<Output = suppaftp::FtpResult<T>>,
) -> Result<T> {
    match tokio::time::timeout(after, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(FtpPollError::Ftp {
            op: op.to_owned(),
            source,
        }),
        Err(_) => Err(FtpPollError::Timeout {
            op: op.to_owned(),
            after,
        }),
    }
}

async fn timed_io<T>(op: &str, after: Duration, fut: impl Future<Output = std::io::Result<T>>) -> Result<T> {
    timed(op, after, async { fut.await.map_err(FtpError::ConnectionError) }).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: suppaftp::Status) -> FtpPollError {
        FtpPollError::Ftp {
            op: "login".into(),
            source: FtpError::UnexpectedResponse(suppaftp::types::Response::new(code, b"as the server says".to_vec())),
        }
    }

    #[test]
    fn the_next_poll_may_help_after_a_4xx_or_a_drop_not_after_a_5xx_or_our_settings() {
        use suppaftp::Status;
        assert!(reply(Status::NotAvailable).retry_helps());
        assert!(reply(Status::CannotOpenDataConnection).retry_helps());
        assert!(!reply(Status::NotLoggedIn).retry_helps());
        assert!(!reply(Status::InvalidCredentials).retry_helps());
        assert!(!reply(Status::FileUnavailable).retry_helps());
        let io = |code| std::io::Error::from_raw_os_error(code);
        let dropped = FtpPollError::Ftp {
            op: "connect".into(),
            source: FtpError::ConnectionError(io(libc::ECONNREFUSED)),
        };
        assert!(dropped.retry_helps());
        let timeout = FtpPollError::Timeout {
            op: "LIST".into(),
            after: Duration::from_secs(5),
        };
        assert!(timeout.retry_helps());
        assert!(!FtpPollError::Password("ftp.pass: not found".into()).retry_helps());
        let local = |code| FtpPollError::Local {
            path: "acme/a.wav".into(),
            source: io(code),
        };
        assert!(local(libc::ENOSPC).retry_helps());
        assert!(!local(libc::EACCES).retry_helps());
    }

    #[test]
    fn remote_paths() {
        assert_eq!(remote_path("/", ""), "/");
        assert_eq!(remote_path("/", "a/b.wav"), "/a/b.wav");
        assert_eq!(remote_path("/out/", "a.wav"), "/out/a.wav");
        assert_eq!(remote_path("/out", ""), "/out");
    }
}
