//! One tenant's drop folder as an SFTP file system (draft-ietf-secsh-filexfer-02 semantics),
//! confined to that folder. No sockets here: the session calls in with client paths.
//!
//! Confinement: client paths are normalised as in a chroot (`..` stops at `/`); backslashes and
//! NULs are refused; every folder on the way must be a real folder (a link is "no such file"),
//! and files are opened without following links. `/reports/` is read-only. Our own temp files
//! (`.dropsync-*`) are invisible. Uploads (OPEN for writing, the last CLOSE) are in
//! [`super::upload`].

use std::fs::{self, File};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use russh_sftp::protocol::{FileAttributes, StatusCode};
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};

use super::pending::PendingUploads;
use crate::ingress::OwnRenames;

use crate::confine::Confined;
use crate::dropbox::{REPORTS_DIR, is_temp_name};
use crate::fsutil::is_ours;

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
    own_renames: OwnRenames,
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

    pub fn remove(&self, raw: &str) -> FsResult<()> {
        let v = VPath::parse(raw)?;
        self.writable(&v)?;
        let p = self.real(&v)?;
        let parent = self.parent_of(&v)?;
        let unlink = || rustix::fs::unlinkat(&parent, v.name(), AtFlags::empty()).map_err(io::Error::from);
        if self.pending.unlink(&p) {
            // The name goes now, with the file it replaces; the data with the last handle.
            return match unlink() {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(FsError::io(&v, &e)),
                _ => Ok(()),
            };
        }
        match self.meta(&v) {
            Ok(m) if m.is_dir() => Err(FsError::new(
                StatusCode::Failure,
                format!("{v}: is a folder (use rmdir)"),
            )),
            Ok(_) => unlink().map_err(|e| FsError::io(&v, &e)),
            Err(e) => Err(FsError::io(&v, &e)),
        }
    }

    pub fn mkdir(&self, raw: &str) -> FsResult<()> {
        let v = VPath::parse(raw)?;
        self.writable(&v)?;
        if is_ours(v.name()) {
            return Err(FsError::denied(&v, "names starting with .dropsync- are reserved"));
        }
        self.real(&v)?;
        let parent = self.parent_of(&v)?;
        let made = rustix::fs::mkdirat(&parent, v.name(), Mode::from_raw_mode(0o750)).map_err(io::Error::from);
        made.map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => FsError::new(StatusCode::Failure, format!("{v}: already exists")),
            _ => FsError::io(&v, &e),
        })
    }

    pub fn rmdir(&self, raw: &str) -> FsResult<()> {
        let v = VPath::parse(raw)?;
        if v.0.len() == 1 && v.in_reports() {
            return Err(FsError::denied(&v, "the reports folder cannot be removed"));
        }
        self.writable(&v)?;
        self.real(&v)?;
        match self.meta(&v) {
            Ok(m) if m.is_dir() => rustix::fs::unlinkat(&self.parent_of(&v)?, v.name(), AtFlags::REMOVEDIR)
                .map_err(|e| FsError::io(&v, &e.into())),
            Ok(_) => Err(FsError::new(StatusCode::Failure, format!("{v}: not a folder"))),
            Err(e) => Err(FsError::io(&v, &e)),
        }
    }

    /// Renames `from` to `to`. SFTP v3 RENAME fails if `to` exists; `posix-rename@openssh.com`
    /// replaces it (`overwrite`). Returns the new relative path if a file arrived by it.
    pub fn rename(&self, from: &str, to: &str, overwrite: bool) -> FsResult<Option<String>> {
        let (vf, vt) = (VPath::parse(from)?, VPath::parse(to)?);
        self.writable(&vf)?;
        self.writable(&vt)?;
        if is_ours(vt.name()) {
            return Err(FsError::denied(&vt, "names starting with .dropsync- are reserved"));
        }
        let (pf, pt) = (self.real(&vf)?, self.real(&vt)?);
        let exists = || FsError::new(StatusCode::Failure, format!("{vt}: already exists"));
        if !overwrite && self.pending.get(&pt).is_some() {
            return Err(exists());
        }
        if self.pending.get(&pf).is_some() {
            // Still open: it goes to its new name when its last handle is closed, replacing
            // what is there then (as any upload does); the client's RENAME is checked now.
            if !overwrite && self.meta(&vt).is_ok() {
                return Err(exists());
            }
            return match self.pending.retarget(&pf, &pt, vt.clone()) {
                true => Ok(None),
                false => Err(FsError::new(StatusCode::Failure, format!("{vt}: is being written"))),
            };
        }
        let meta = self.meta(&vf).map_err(|e| FsError::io(&vf, &e))?;
        let (from_dir, to_dir) = (self.parent_of(&vf)?, self.parent_of(&vt)?);
        // A file renamed to a final name arrives by this RENAME, and the session announces it:
        // the watcher, which sees the rename too, is to leave it alone.
        let arrives = meta.is_file() && !is_temp_name(vt.name());
        if arrives {
            self.own_renames.expect(&pt);
        }
        // Without overwrite the kernel refuses an existing target in the same step, so a file
        // another writer puts there meanwhile is never replaced (a check first would race it).
        let flags = match overwrite {
            true => RenameFlags::empty(),
            false => RenameFlags::NOREPLACE,
        };
        if let Err(e) = rustix::fs::renameat_with(&from_dir, vf.name(), &to_dir, vt.name(), flags) {
            self.own_renames.cancel(&pt);
            return Err(match e {
                rustix::io::Errno::EXIST => exists(),
                e => FsError::io(&vt, &e.into()),
            });
        }
        let _ = File::from(to_dir).sync_all();
        Ok(arrives.then(|| vt.rel()))
    }

    /// SETSTAT: times and size are applied; ownership and mode are the daemon's business.
    pub fn setstat(&self, raw: &str, a: &FileAttributes) -> FsResult<()> {
        let v = VPath::parse(raw)?;
        let p = self.real(&v)?;
        if let Some(up) = self.pending.get(&p) {
            if a.size.is_some() {
                up.sized_by_path();
            }
            return set_attrs(&up.file, a).map_err(|e| FsError::io(&v, &e));
        }
        let meta = self.meta(&v).map_err(|e| FsError::io(&v, &e))?;
        if meta.file_type().is_symlink() {
            return Err(FsError::no_such(&v));
        }
        if a.size.is_none() && a.mtime.is_none() && a.atime.is_none() {
            return Ok(());
        }
        self.writable(&v)?;
        // Only a new size needs write access. Times are set through a descriptor opened for
        // reading: closing one opened for writing is a close-after-write, which the watcher
        // would take for new content (rclone and sshfs set a file's times after uploading it).
        let how = match (meta.is_file(), a.size.is_some()) {
            (true, true) => OFlags::WRONLY,
            (true, false) => OFlags::RDONLY | OFlags::NONBLOCK,
            (false, _) => OFlags::RDONLY | OFlags::DIRECTORY,
        };
        let fd = self
            .dir
            .open_at(&v.rel(), how | OFlags::NOFOLLOW, Mode::empty())
            .map_err(|e| FsError::io(&v, &e))?;
        set_attrs(&File::from(fd), a).map_err(|e| FsError::io(&v, &e))
    }

    pub fn statvfs(&self) -> FsResult<[u64; 11]> {
        let s = rustix::fs::statvfs(&self.root)
            .map_err(|e| FsError::new(StatusCode::Failure, format!("statvfs failed: {e}")))?;
        Ok([
            s.f_bsize,
            s.f_frsize,
            s.f_blocks,
            s.f_bfree,
            s.f_bavail,
            s.f_files,
            s.f_ffree,
            s.f_favail,
            s.f_fsid,
            s.f_flag.bits(),
            s.f_namemax,
        ])
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Applies size and times from `a` to an open file (SETSTAT, FSETSTAT): a size needs `f` open
/// for writing, times do not.
pub fn set_attrs(f: &File, a: &FileAttributes) -> io::Result<()> {
    if let Some(size) = a.size
        && f.metadata()?.is_file()
    {
        f.set_len(size)?;
    }
    if a.mtime.is_some() || a.atime.is_some() {
        // futimens needs no write access, only ownership: `f` may be open for reading.
        let time = |t: Option<u32>| match t {
            Some(secs) => rustix::fs::Timespec {
                tv_sec: i64::from(secs),
                tv_nsec: 0,
            },
            None => rustix::fs::Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_OMIT,
            },
        };
        let times = rustix::fs::Timestamps {
            last_access: time(a.atime),
            last_modification: time(a.mtime),
        };
        rustix::fs::futimens(f, &times)?;
    }
    Ok(())
}

pub fn attrs(m: &fs::Metadata) -> FileAttributes {
    FileAttributes {
        size: Some(m.len()),
        uid: Some(m.uid()),
        user: None,
        gid: Some(m.gid()),
        group: None,
        permissions: Some(m.mode()),
        atime: Some(m.atime().clamp(0, u32::MAX as i64) as u32),
        mtime: Some(m.mtime().clamp(0, u32::MAX as i64) as u32),
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
    fn reports_are_read_only() {
        let (_d, t) = fx();
        fs::write(t.root().join("reports/b.csv.report.csv"), b"row").unwrap();
        assert!(t.open_read("/reports/b.csv.report.csv").is_ok());
        for e in [
            put(&t, "/reports/x.csv", true, false).map(|_| ()),
            t.remove("/reports/b.csv.report.csv"),
            t.mkdir("/reports/sub"),
            t.rmdir("/reports"),
            t.rename("/reports/b.csv.report.csv", "/b.csv", false).map(|_| ()),
        ] {
            assert_eq!(e.unwrap_err().code, StatusCode::PermissionDenied);
        }
        fs::write(t.root().join("a.wav"), b"a").unwrap();
        assert_eq!(
            t.rename("/a.wav", "/reports/a.wav", true).unwrap_err().code,
            StatusCode::PermissionDenied
        );
    }

    #[test]
    fn listings_come_in_batches_each_entry_once() {
        let (_d, t) = fx();
        fs::create_dir(t.root().join("many")).unwrap();
        for i in 0..2500 {
            fs::write(t.root().join(format!("many/f{i:04}")), b"x").unwrap();
        }
        let mut l = t.open_dir("/many").unwrap();
        let mut names = std::collections::BTreeSet::new();
        let mut batches = 0;
        loop {
            let batch = t.read_dir_batch(&mut l, 100).unwrap();
            if batch.is_empty() {
                break;
            }
            assert!(batch.len() <= 100);
            batches += 1;
            for f in batch {
                assert!(names.insert(f.filename.clone()), "{} twice", f.filename);
            }
        }
        assert_eq!(names.len(), 2502, "2,500 files, . and ..");
        assert!(batches >= 25);
    }

    #[test]
    fn resume_keeps_content_and_exclusive_refuses() {
        let (_d, t) = fx();
        fs::write(t.root().join("a.wav"), b"12345").unwrap();
        let up = put(&t, "/a.wav", false, false).unwrap();
        std::os::unix::fs::FileExt::write_at(&*up.file, b"67", 5).unwrap();
        close(&t, up).unwrap();
        assert_eq!(fs::read(t.root().join("a.wav")).unwrap(), b"1234567");
        assert_eq!(
            put(&t, "/a.wav", true, true).err().map(|e| e.code),
            Some(StatusCode::Failure)
        );
    }

    #[test]
    fn rename_refuses_to_clobber_unless_posix() {
        let (_d, t) = fx();
        fs::write(t.root().join("a"), b"a").unwrap();
        fs::write(t.root().join("b"), b"b").unwrap();
        assert_eq!(t.rename("/a", "/b", false).unwrap_err().code, StatusCode::Failure);
        t.rename("/a", "/b", true).unwrap();
        assert_eq!(fs::read(t.root().join("b")).unwrap(), b"a");
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
