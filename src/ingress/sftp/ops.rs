//! What a client does to paths in its folder: REMOVE, MKDIR, RMDIR, RENAME, SETSTAT and
//! statvfs, with the attributes STAT and SETSTAT carry. Each acts on an open upload to the same
//! path as on a file (see [`super::pending`]).

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;

use russh_sftp::protocol::{FileAttributes, StatusCode};
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};

use super::fs::{FsError, FsResult, TenantFs, VPath};
use crate::dropbox::is_temp_name;
use crate::fsutil::is_ours;

impl TenantFs {
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
        if v.is_reports_folder() {
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
mod tests {
    use std::fs;

    use super::*;
    use crate::ingress::sftp::fs::tests::{fx, put};

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
    fn rename_refuses_to_clobber_unless_posix() {
        let (_d, t) = fx();
        fs::write(t.root().join("a"), b"a").unwrap();
        fs::write(t.root().join("b"), b"b").unwrap();
        assert_eq!(t.rename("/a", "/b", false).unwrap_err().code, StatusCode::Failure);
        t.rename("/a", "/b", true).unwrap();
        assert_eq!(fs::read(t.root().join("b")).unwrap(), b"a");
    }
}
