//! One tenant's drop folder as an SFTP file system (draft-ietf-secsh-filexfer-02 semantics),
//! confined to that folder. No sockets here: the session calls in with client paths.
//!
//! Confinement: client paths are normalised as in a chroot (`..` stops at `/`); backslashes and
//! NULs are refused; every folder on the way must be a real folder (a link is "no such file"),
//! and files are opened without following links. `/reports/` is read-only. Our own temp files
//! (`.dropsync-*`) are invisible.
//!
//! Here are the paths and what a path is (STAT, REALPATH, OPEN for reading); what is done to
//! them is in [`super::ops`], listings in [`super::listing`], OPEN for writing in
//! [`super::upload`] and an upload's life in [`super::pending`].

use std::fs::{self, File};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use russh_sftp::protocol::{FileAttributes, StatusCode};

use super::ops::attrs;
use super::pending::PendingUploads;
use crate::confine::Confined;
use crate::dropbox::REPORTS_DIR;
use crate::fsutil::is_ours;
use crate::ingress::OwnRenames;

/// An SFTP error: the status code and a message for the user.
#[derive(Debug, Clone, PartialEq)]
pub struct FsError {
    pub code: StatusCode,
    pub message: String,
}

impl FsError {
    pub fn new(code: StatusCode, message: impl Into<String>) -> Self {
        FsError {
            code,
            message: message.into(),
        }
    }
    pub(super) fn no_such(path: &VPath) -> Self {
        FsError::new(StatusCode::NoSuchFile, format!("{path}: no such file or folder"))
    }
    pub(super) fn denied(path: &VPath, why: &str) -> Self {
        FsError::new(StatusCode::PermissionDenied, format!("{path}: {why}"))
    }
    pub(super) fn io(path: &VPath, e: &io::Error) -> Self {
        let code = match e.kind() {
            io::ErrorKind::NotFound => StatusCode::NoSuchFile,
            io::ErrorKind::PermissionDenied => StatusCode::PermissionDenied,
            _ => StatusCode::Failure,
        };
        FsError::new(code, format!("{path}: {e}"))
    }
}

pub type FsResult<T> = Result<T, FsError>;

/// A normalised client path: components below the tenant's root.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VPath(Vec<String>);

impl std::fmt::Display for VPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "/{}", self.0.join("/"))
    }
}

impl VPath {
    /// Normalises a client path the way a chroot would; relative paths start at `/`.
    pub fn parse(raw: &str) -> FsResult<VPath> {
        if raw.contains('\\') || raw.contains('\0') {
            return Err(FsError::new(
                StatusCode::BadMessage,
                format!("{raw:?}: backslashes and NUL are not allowed in paths"),
            ));
        }
        let mut parts: Vec<String> = Vec::new();
        for part in raw.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                p => parts.push(p.to_owned()),
            }
        }
        Ok(VPath(parts))
    }
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
    pub fn name(&self) -> &str {
        self.0.last().map_or("", String::as_str)
    }
    pub fn parent(&self) -> VPath {
        VPath(self.0[..self.0.len().saturating_sub(1)].to_vec())
    }
    /// `/reports` itself.
    pub fn is_reports_folder(&self) -> bool {
        self.0.len() == 1 && self.in_reports()
    }
    /// `/reports` or anything under it.
    pub fn in_reports(&self) -> bool {
        self.0.first().is_some_and(|p| p == REPORTS_DIR)
    }
    fn hidden(&self) -> bool {
        self.0.iter().any(|p| is_ours(p))
    }
    /// The path relative to the drop folder ("a/b.wav").
    pub fn rel(&self) -> String {
        self.0.join("/")
    }
}

/// The tenant's folder, as its SFTP client sees it.
#[derive(Clone)]
pub struct TenantFs {
    pub(super) root: PathBuf,
    /// The drop folder held open: every path is resolved under it by the kernel, with no link
    /// followed (see [`crate::confine`]).
    pub(super) dir: Arc<Confined>,
    pub(super) owner: String,
    pub(super) pending: Arc<PendingUploads>,
    /// Client RENAMEs into place, announced by the session: the watcher leaves them alone.
    pub(super) own_renames: OwnRenames,
}

impl TenantFs {
    pub fn new(root: PathBuf, owner: &str, pending: Arc<PendingUploads>, own_renames: OwnRenames) -> io::Result<Self> {
        Ok(TenantFs {
            dir: Arc::new(Confined::open(&root)?),
            root,
            owner: owner.to_owned(),
            pending,
            own_renames,
        })
    }

    /// Where `v` is (the name open uploads are known by); our own files do not exist.
    pub(super) fn real(&self, v: &VPath) -> FsResult<PathBuf> {
        if v.hidden() {
            return Err(FsError::no_such(v));
        }
        Ok(self.root.join(v.rel()))
    }

    /// What `v` is, a link in its last part shown as a link.
    pub(super) fn meta(&self, v: &VPath) -> io::Result<fs::Metadata> {
        self.dir.metadata(&v.rel())
    }

    /// The folder `v` is in, held open (no link on the way).
    pub(super) fn parent_of(&self, v: &VPath) -> FsResult<OwnedFd> {
        self.dir
            .dir(&v.parent().rel())
            .map_err(|_| FsError::new(StatusCode::NoSuchFile, format!("{}: no such folder", v.parent())))
    }

    pub(super) fn writable(&self, v: &VPath) -> FsResult<()> {
        if v.is_root() || v.in_reports() {
            return Err(FsError::denied(v, "read-only (reports are written by dropsync)"));
        }
        Ok(())
    }

    pub fn realpath(&self, raw: &str) -> FsResult<String> {
        Ok(VPath::parse(raw)?.to_string())
    }

    /// `stat` and `lstat` alike: links are never followed, and a link shows as no such file.
    pub fn stat(&self, raw: &str) -> FsResult<FileAttributes> {
        let v = VPath::parse(raw)?;
        let p = self.real(&v)?;
        if let Some(up) = self.pending.get(&p) {
            return up.file.metadata().map(|m| attrs(&m)).map_err(|e| FsError::io(&v, &e));
        }
        let meta = self.meta(&v).map_err(|e| FsError::io(&v, &e))?;
        if meta.file_type().is_symlink() {
            return Err(FsError::no_such(&v));
        }
        Ok(attrs(&meta))
    }

    pub fn open_read(&self, raw: &str) -> FsResult<File> {
        let v = VPath::parse(raw)?;
        let p = self.real(&v)?;
        if let Some(up) = self.pending.get(&p) {
            return up.open_for_reading().map_err(|e| FsError::io(&v, &e));
        }
        self.dir.open_file(&v.rel()).map_err(|e| FsError::io(&v, &e))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::ingress::sftp::pending::{Finished, Pending, Released};

    /// A tenant's folder, with its reports folder.
    pub(in crate::ingress::sftp) fn fx() -> (tempfile::TempDir, TenantFs) {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("drop/acme");
        fs::create_dir_all(root.join("reports")).unwrap();
        (
            d,
            TenantFs::new(root, "acme", Arc::default(), OwnRenames::default()).unwrap(),
        )
    }

    /// An OPEN for writing, with no quota.
    pub(in crate::ingress::sftp) fn put(
        t: &TenantFs,
        raw: &str,
        truncate: bool,
        exclusive: bool,
    ) -> FsResult<Arc<Pending>> {
        t.open_write(raw, truncate, exclusive, &|_, _| Ok(None))
            .map(|o| o.pending)
    }

    /// CLOSE of a handle that is the last one.
    pub(in crate::ingress::sftp) fn close(t: &TenantFs, up: Arc<Pending>) -> FsResult<Finished> {
        let Released::Last(upload) = t.pending.close(up) else {
            panic!("not the last handle, or discarded");
        };
        upload.finish(t, true, None)
    }

    pub(in crate::ingress::sftp) fn write(up: &Pending, data: &[u8]) {
        std::io::Write::write_all(&mut &*up.file, data).unwrap();
    }

    #[test]
    fn paths_normalise_like_a_chroot() {
        for (raw, want) in [
            ("", "/"),
            (".", "/"),
            ("/", "/"),
            ("a/b", "/a/b"),
            ("/a/./b/", "/a/b"),
            ("../../etc/passwd", "/etc/passwd"),
            ("/a/../../b", "/b"),
        ] {
            assert_eq!(VPath::parse(raw).unwrap().to_string(), want, "{raw}");
        }
        assert_eq!(VPath::parse("a\\b").unwrap_err().code, StatusCode::BadMessage);
        assert_eq!(VPath::parse("a\0b").unwrap_err().code, StatusCode::BadMessage);
    }

    #[test]
    fn dot_dot_cannot_leave_the_tenant_folder() {
        let (d, t) = fx();
        fs::write(d.path().join("drop/secret.txt"), b"other").unwrap();
        fs::create_dir_all(d.path().join("drop/other")).unwrap();
        fs::write(d.path().join("drop/other/x.wav"), b"x").unwrap();
        for p in [
            "../secret.txt",
            "/../other/x.wav",
            "../../drop/secret.txt",
            "../other/x.wav",
        ] {
            assert_eq!(t.stat(p).unwrap_err().code, StatusCode::NoSuchFile, "{p}");
            assert!(t.open_read(p).is_err(), "{p}");
        }
    }

    #[test]
    fn links_are_never_followed() {
        let (d, t) = fx();
        let outside = d.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("s.wav"), b"s").unwrap();
        std::os::unix::fs::symlink(&outside, t.root().join("up")).unwrap();
        std::os::unix::fs::symlink(outside.join("s.wav"), t.root().join("s.wav")).unwrap();
        assert_eq!(t.stat("/up/s.wav").unwrap_err().code, StatusCode::NoSuchFile);
        assert_eq!(t.stat("/s.wav").unwrap_err().code, StatusCode::NoSuchFile);
        assert!(t.open_read("/s.wav").is_err());
        assert!(t.open_read("/up/s.wav").is_err());
        assert!(put(&t, "/up/new.wav", true, false).is_err());
        assert!(!outside.join("new.wav").exists());
        let names: Vec<String> = t.read_dir("/").unwrap().into_iter().map(|f| f.filename).collect();
        assert!(
            !names.contains(&"up".to_string()) && !names.contains(&"s.wav".to_string()),
            "{names:?}"
        );
    }

    #[test]
    fn internal_names_are_invisible_and_reserved() {
        let (_d, t) = fx();
        fs::write(t.root().join(".dropsync-upload-1-x.wav"), b"x").unwrap();
        assert_eq!(
            t.stat("/.dropsync-upload-1-x.wav").unwrap_err().code,
            StatusCode::NoSuchFile
        );
        assert!(put(&t, "/.dropsync-x", true, false).is_err());
        assert!(
            !t.read_dir("/")
                .unwrap()
                .iter()
                .any(|f| f.filename.starts_with(".dropsync"))
        );
    }
}
