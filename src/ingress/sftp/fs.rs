//! One tenant's drop folder as an SFTP file system (draft-ietf-secsh-filexfer-02 semantics),
//! confined to that folder. No sockets here: the session calls in with client paths.
//!
//! Confinement: client paths are normalised as in a chroot (`..` stops at `/`); backslashes and
//! NULs are refused; every folder on the way must be a real folder (a link is "no such file"),
//! and files are opened without following links. `/reports/` is read-only. Our own temp files
//! (`.dropsync-*`) are invisible.
//!
//! Uploads are written to a hidden temp name beside the target and renamed into place on close,
//! so a connection that drops mid-upload never leaves a file under its final name.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use russh_sftp::protocol::{FileAttributes, StatusCode};

use crate::dropbox::{REPORTS_DIR, is_temp_name};
use crate::fsutil;

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
    fn no_such(path: &VPath) -> Self {
        FsError::new(StatusCode::NoSuchFile, format!("{path}: no such file or folder"))
    }
    fn denied(path: &VPath, why: &str) -> Self {
        FsError::new(StatusCode::PermissionDenied, format!("{path}: {why}"))
    }
    fn io(path: &VPath, e: &io::Error) -> Self {
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
        self.0.iter().any(|p| is_internal(p))
    }
    /// The path relative to the drop folder ("a/b.wav").
    pub fn rel(&self) -> String {
        self.0.join("/")
    }
}

/// Our own files in a drop folder, never shown to or touched by clients.
pub fn is_internal(name: &str) -> bool {
    name.starts_with(".dropsync-")
}

/// What [`TenantFs::finish_upload`] leaves to its caller.
#[derive(Debug)]
pub struct FinishedUpload {
    /// The path relative to the drop folder, if the file may arrive.
    pub arrived: Option<String>,
    /// A folder to fsync before the arrival is announced (the rename is not durable yet).
    pub sync_folder: Option<PathBuf>,
}

/// The extended attribute that marks an upload temp file as complete; its value is the name
/// the file was renamed to.
const COMPLETE_XATTR: &std::ffi::CStr = c"user.dropsync.final";

/// Where our SFTP uploads are written until they are closed.
const UPLOAD_PREFIX: &str = ".dropsync-upload-";

fn mark_complete(file: &File, final_name: &str) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fsetxattr on a descriptor we own, with a valid C string and a byte buffer.
    let r = unsafe {
        libc::fsetxattr(
            file.as_raw_fd(),
            COMPLETE_XATTR.as_ptr(),
            final_name.as_ptr().cast(),
            final_name.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn completed_name(path: &Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut buf = [0u8; 1024];
    // SAFETY: lgetxattr with valid C strings and a buffer of the length given; it does not
    // follow links.
    let n = unsafe {
        libc::lgetxattr(
            c_path.as_ptr(),
            COMPLETE_XATTR.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let n = usize::try_from(n).ok()?;
    String::from_utf8(buf[..n].to_vec()).ok()
}

/// At start-up, before any session: upload temp files left by a crash are either complete
/// (marked at CLOSE, so the client was told "done"), and renamed into place, or partial, and
/// removed. Returns (renamed, removed).
pub fn recover_uploads(tenant_root: &Path) -> io::Result<(usize, usize)> {
    let mut found = Vec::new();
    let mut stack = vec![tenant_root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let ft = entry.file_type()?;
            let name = entry.file_name();
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() && name.to_str().is_some_and(|n| n.starts_with(UPLOAD_PREFIX)) {
                let mtime = entry.metadata()?.modified()?;
                found.push((mtime, entry.path()));
            }
        }
    }
    // Oldest first, so that of two completed uploads of one name the later one wins.
    found.sort();
    let (mut renamed, mut removed) = (0, 0);
    for (_, tmp) in found {
        let folder = tmp.parent().unwrap_or(tenant_root);
        // The marker names a file in the same folder, never a path and never one of ours.
        let target = completed_name(&tmp)
            .filter(|n| crate::dropbox::RelPath::parse(n).is_some_and(|r| r.dir().is_empty()) && !is_internal(n));
        match target {
            Some(name) => {
                fs::rename(&tmp, folder.join(name))?;
                fsutil::sync_dir(folder)?;
                renamed += 1;
            }
            None => {
                fs::remove_file(&tmp)?;
                removed += 1;
            }
        }
    }
    Ok((renamed, removed))
}

/// An upload in progress: data goes to `tmp`, which becomes `target` on close.
#[derive(Debug)]
pub struct Upload {
    pub file: File,
    pub tmp: PathBuf,
    pub target: PathBuf,
    pub vpath: VPath,
}

/// The tenant's folder, as its SFTP client sees it.
#[derive(Debug, Clone)]
pub struct TenantFs {
    root: PathBuf,
    owner: String,
}

impl TenantFs {
    pub fn new(root: PathBuf, owner: &str) -> Self {
        TenantFs {
            root,
            owner: owner.to_owned(),
        }
    }

    /// The real path of `v`, after checking that no folder on the way is a link.
    fn real(&self, v: &VPath) -> FsResult<PathBuf> {
        if v.hidden() {
            return Err(FsError::no_such(v));
        }
        let mut p = self.root.clone();
        for (i, part) in v.0.iter().enumerate() {
            p.push(part);
            if i + 1 < v.0.len() {
                match fs::symlink_metadata(&p) {
                    Ok(m) if m.is_dir() => {}
                    _ => return Err(FsError::no_such(v)),
                }
            }
        }
        Ok(p)
    }

    fn writable(&self, v: &VPath) -> FsResult<()> {
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
        let meta = fs::symlink_metadata(&p).map_err(|e| FsError::io(&v, &e))?;
        if meta.file_type().is_symlink() {
            return Err(FsError::no_such(&v));
        }
        Ok(attrs(&meta))
    }

    pub fn open_read(&self, raw: &str) -> FsResult<File> {
        let v = VPath::parse(raw)?;
        let p = self.real(&v)?;
        fsutil::open_regular_nofollow(&p).map_err(|e| FsError::io(&v, &e))
    }

    /// Opens `raw` for writing: `truncate` starts empty, otherwise the current content is kept
    /// (resumed uploads, appends); `exclusive` fails if it exists.
    pub fn open_write(&self, raw: &str, truncate: bool, exclusive: bool) -> FsResult<Upload> {
        let v = VPath::parse(raw)?;
        self.writable(&v)?;
        if is_internal(v.name()) {
            return Err(FsError::denied(&v, "names starting with .dropsync- are reserved"));
        }
        let target = self.real(&v)?;
        let parent = target.parent().unwrap_or(&self.root).to_path_buf();
        match fs::symlink_metadata(&parent) {
            Ok(m) if m.is_dir() => {}
            _ => {
                return Err(FsError::new(
                    StatusCode::NoSuchFile,
                    format!("{}: no such folder", v.parent()),
                ));
            }
        }
        let existing = match fs::symlink_metadata(&target) {
            Ok(m) if m.is_file() => true,
            Ok(_) => return Err(FsError::new(StatusCode::Failure, format!("{v}: not a regular file"))),
            Err(_) => false,
        };
        if existing && exclusive {
            return Err(FsError::new(StatusCode::Failure, format!("{v}: already exists")));
        }
        // A fixed-length name, so that an upload of a 255-byte name has a temp name too.
        let tmp = parent.join(format!("{UPLOAD_PREFIX}{:016x}", fastrand::u64(..)));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(&tmp)
            .map_err(|e| FsError::io(&v, &e))?;
        if existing && !truncate {
            let copied = fsutil::open_regular_nofollow(&target).and_then(|mut src| io::copy(&mut src, &mut file));
            if let Err(e) = copied {
                let _ = fs::remove_file(&tmp);
                return Err(FsError::io(&v, &e));
            }
        }
        Ok(Upload {
            file,
            tmp,
            target,
            vpath: v,
        })
    }

    /// Completes an upload. Returns the path relative to the drop folder if it is now a file
    /// that may arrive (not a temp name), and the folder the caller must still fsync before
    /// announcing it.
    ///
    /// Durable close, in one journal commit where the file system keeps extended attributes:
    /// the temp file is marked complete (`user.dropsync.final` = the final name) and fsynced,
    /// which makes its data, its marker and its (new) name durable; then it is renamed into
    /// place and CLOSE is answered. The rename becomes durable with the caller's folder fsync,
    /// off the client's path; a crash before that leaves a marked temp file, which
    /// [`recover_uploads`] renames into place at the next start. Without xattrs: fdatasync,
    /// rename, folder fsync, all before the answer.
    pub fn finish_upload(&self, upload: Upload, durable: bool) -> FsResult<FinishedUpload> {
        let v = upload.vpath.clone();
        let folder = upload.target.parent().unwrap_or(&self.root).to_path_buf();
        let marked = durable && mark_complete(&upload.file, v.name()).is_ok();
        let done = if marked {
            upload
                .file
                .sync_all()
                .and_then(|()| fs::rename(&upload.tmp, &upload.target))
        } else if durable {
            upload
                .file
                .sync_data()
                .and_then(|()| fs::rename(&upload.tmp, &upload.target))
                .and_then(|()| fsutil::sync_dir(&folder))
        } else {
            fs::rename(&upload.tmp, &upload.target)
        };
        if let Err(e) = done {
            let _ = fs::remove_file(&upload.tmp);
            return Err(FsError::io(&v, &e));
        }
        Ok(FinishedUpload {
            arrived: (!is_temp_name(v.name())).then(|| v.rel()),
            sync_folder: marked.then_some(folder),
        })
    }

    /// Drops an unfinished upload (the connection went away): nothing is left behind.
    pub fn abort_upload(&self, upload: Upload) {
        let _ = fs::remove_file(&upload.tmp);
    }

    /// Entries of a folder, our own temp files left out.
    pub fn read_dir(&self, raw: &str) -> FsResult<Vec<russh_sftp::protocol::File>> {
        let v = VPath::parse(raw)?;
        let p = self.real(&v)?;
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(FsError::new(StatusCode::Failure, format!("{v}: not a folder"))),
            Err(e) => return Err(FsError::io(&v, &e)),
        }
        let mut out = Vec::new();
        for name in [".", ".."] {
            if let Ok(m) = fs::symlink_metadata(&p) {
                out.push(entry(name, &m, &self.owner));
            }
        }
        for e in fs::read_dir(&p).map_err(|e| FsError::io(&v, &e))?.flatten() {
            let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if is_internal(&name) {
                continue;
            }
            let Ok(m) = e.path().symlink_metadata() else { continue };
            if m.file_type().is_symlink() {
                continue;
            }
            out.push(entry(&name, &m, &self.owner));
        }
        Ok(out)
    }

    pub fn remove(&self, raw: &str) -> FsResult<()> {
        let v = VPath::parse(raw)?;
        self.writable(&v)?;
        let p = self.real(&v)?;
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => Err(FsError::new(
                StatusCode::Failure,
                format!("{v}: is a folder (use rmdir)"),
            )),
            Ok(_) => fs::remove_file(&p).map_err(|e| FsError::io(&v, &e)),
            Err(e) => Err(FsError::io(&v, &e)),
        }
    }

    pub fn mkdir(&self, raw: &str) -> FsResult<()> {
        let v = VPath::parse(raw)?;
        self.writable(&v)?;
        if is_internal(v.name()) {
            return Err(FsError::denied(&v, "names starting with .dropsync- are reserved"));
        }
        let p = self.real(&v)?;
        fs::create_dir(&p).map_err(|e| match e.kind() {
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
        let p = self.real(&v)?;
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => fs::remove_dir(&p).map_err(|e| FsError::io(&v, &e)),
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
        if is_internal(vt.name()) {
            return Err(FsError::denied(&vt, "names starting with .dropsync- are reserved"));
        }
        let (pf, pt) = (self.real(&vf)?, self.real(&vt)?);
        let meta = fs::symlink_metadata(&pf).map_err(|e| FsError::io(&vf, &e))?;
        if !overwrite && fs::symlink_metadata(&pt).is_ok() {
            return Err(FsError::new(StatusCode::Failure, format!("{vt}: already exists")));
        }
        fs::rename(&pf, &pt).map_err(|e| FsError::io(&vt, &e))?;
        let _ = fsutil::sync_dir(pt.parent().unwrap_or(&self.root));
        Ok((meta.is_file() && !is_temp_name(vt.name())).then(|| vt.rel()))
    }

    /// SETSTAT: times and size are applied; ownership and mode are the daemon's business.
    pub fn setstat(&self, raw: &str, a: &FileAttributes) -> FsResult<()> {
        let v = VPath::parse(raw)?;
        let p = self.real(&v)?;
        let meta = fs::symlink_metadata(&p).map_err(|e| FsError::io(&v, &e))?;
        if meta.file_type().is_symlink() {
            return Err(FsError::no_such(&v));
        }
        if a.size.is_none() && a.mtime.is_none() && a.atime.is_none() {
            return Ok(());
        }
        self.writable(&v)?;
        let f = OpenOptions::new()
            .write(meta.is_file())
            .read(!meta.is_file())
            .custom_flags(libc::O_NOFOLLOW)
            .open(&p);
        let f = f.map_err(|e| FsError::io(&v, &e))?;
        set_attrs(&f, a).map_err(|e| FsError::io(&v, &e))
    }

    pub fn statvfs(&self) -> FsResult<[u64; 11]> {
        let c = std::ffi::CString::new(self.root.as_os_str().as_encoded_bytes())
            .map_err(|_| FsError::new(StatusCode::Failure, "bad root"))?;
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
            return Err(FsError::new(StatusCode::Failure, "statvfs failed"));
        }
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
            s.f_flag,
            s.f_namemax,
        ])
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Applies size and times from `a` to an open file (SETSTAT, FSETSTAT).
pub fn set_attrs(f: &File, a: &FileAttributes) -> io::Result<()> {
    if let Some(size) = a.size
        && f.metadata()?.is_file()
    {
        f.set_len(size)?;
    }
    if a.mtime.is_some() || a.atime.is_some() {
        let to_time = |s: u32| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s as u64);
        let mut times = fs::FileTimes::new();
        if let Some(m) = a.mtime {
            times = times.set_modified(to_time(m));
        }
        if let Some(at) = a.atime {
            times = times.set_accessed(to_time(at));
        }
        f.set_times(times)?;
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

fn entry(name: &str, m: &fs::Metadata, owner: &str) -> russh_sftp::protocol::File {
    let kind = if m.is_dir() { 'd' } else { '-' };
    let mode = m.mode();
    let mut perms = String::with_capacity(10);
    perms.push(kind);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        perms.push(if bits & 4 != 0 { 'r' } else { '-' });
        perms.push(if bits & 2 != 0 { 'w' } else { '-' });
        perms.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    let when = chrono::DateTime::from_timestamp(m.mtime(), 0)
        .map(|t| t.format("%b %e %H:%M").to_string())
        .unwrap_or_default();
    let longname = format!("{perms} 1 {owner:<8} {owner:<8} {:>10} {when} {name}", m.len());
    russh_sftp::protocol::File {
        filename: name.to_owned(),
        longname,
        attrs: attrs(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fx() -> (tempfile::TempDir, TenantFs) {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("drop/acme");
        fs::create_dir_all(root.join("reports")).unwrap();
        (d, TenantFs::new(root, "acme"))
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
        assert!(t.open_write("/up/new.wav", true, false).is_err());
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
            t.open_write("/reports/x.csv", true, false).map(|_| ()),
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
    fn uploads_appear_only_when_finished() {
        let (_d, t) = fx();
        let mut up = t.open_write("/c1.wav", true, false).unwrap();
        std::io::Write::write_all(&mut up.file, b"RIFF").unwrap();
        assert!(t.stat("/c1.wav").is_err(), "visible before close");
        assert_eq!(t.read_dir("/").unwrap().len(), 3, ". .. reports");
        assert_eq!(t.finish_upload(up, true).unwrap().arrived, Some("c1.wav".into()));
        assert_eq!(t.stat("/c1.wav").unwrap().size, Some(4));
        // A dropped upload leaves nothing.
        let up = t.open_write("/c2.wav", true, false).unwrap();
        t.abort_upload(up);
        let names: Vec<String> = fs::read_dir(t.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(!names.iter().any(|n| n.contains("c2")), "{names:?}");
        // Temp names are not arrivals, until renamed.
        let up = t.open_write("/c3.wav.filepart", true, false).unwrap();
        assert_eq!(t.finish_upload(up, true).unwrap().arrived, None);
        assert_eq!(
            t.rename("/c3.wav.filepart", "/c3.wav", false).unwrap(),
            Some("c3.wav".into())
        );
    }

    #[test]
    fn closed_uploads_are_recovered_after_a_crash_and_cut_ones_removed() {
        let (_d, t) = fx();
        fs::create_dir(t.root().join("sub")).unwrap();
        // Closed: marked complete (as CLOSE does), but a crash came before the rename.
        let mut done = t.open_write("/sub/c1.wav", true, false).unwrap();
        std::io::Write::write_all(&mut done.file, b"RIFF-all").unwrap();
        let xattrs = mark_complete(&done.file, "c1.wav").is_ok();
        // Cut: the connection went away mid-upload (or the daemon died).
        let mut cut = t.open_write("/c2.wav", true, false).unwrap();
        std::io::Write::write_all(&mut cut.file, b"RIF").unwrap();
        if !xattrs {
            // A file system without extended attributes: CLOSE makes everything durable before
            // it answers, and every temp file left is an unfinished one.
            let up = t.open_write("/c9.wav", true, false).unwrap();
            assert!(t.finish_upload(up, true).unwrap().sync_folder.is_none());
            drop((done, cut));
            assert_eq!(recover_uploads(t.root()).unwrap(), (0, 2));
            return;
        }
        // A marker naming something outside its folder is not followed.
        let evil = t.open_write("/c3.wav", true, false).unwrap();
        mark_complete(&evil.file, "../x.wav").unwrap();
        let (tmp_done, tmp_cut, tmp_evil) = (done.tmp.clone(), cut.tmp.clone(), evil.tmp.clone());
        drop((done, cut, evil));
        assert_eq!(recover_uploads(t.root()).unwrap(), (1, 2));
        assert_eq!(fs::read(t.root().join("sub/c1.wav")).unwrap(), b"RIFF-all");
        assert!(!tmp_done.exists() && !tmp_cut.exists() && !tmp_evil.exists());
        assert!(!t.root().join("c2.wav").exists());
        assert!(!t.root().parent().unwrap().join("x.wav").exists());
    }

    #[test]
    fn resume_keeps_content_and_exclusive_refuses() {
        let (_d, t) = fx();
        fs::write(t.root().join("a.wav"), b"12345").unwrap();
        let up = t.open_write("/a.wav", false, false).unwrap();
        std::os::unix::fs::FileExt::write_at(&up.file, b"67", 5).unwrap();
        t.finish_upload(up, true).unwrap();
        assert_eq!(fs::read(t.root().join("a.wav")).unwrap(), b"1234567");
        assert_eq!(
            t.open_write("/a.wav", true, true).unwrap_err().code,
            StatusCode::Failure
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
        assert!(t.open_write("/.dropsync-x", true, false).is_err());
        assert!(
            !t.read_dir("/")
                .unwrap()
                .iter()
                .any(|f| f.filename.starts_with(".dropsync"))
        );
    }
}
