//! Uploads into a tenant's folder over SFTP: OPEN for writing.
//!
//! An upload is written to a hidden temp name beside its target and renamed into place when its
//! last handle is closed, so a connection that drops mid-upload never leaves a file under its
//! final name. Until then the tenant's sessions see it under that name; what becomes of it is
//! [`super::pending`]'s. A resume or an append starts from a copy of the file, granted by the
//! quota before it is made.

use std::fs::File;
use std::io;
use std::sync::Arc;

use russh_sftp::protocol::StatusCode;
use rustix::fs::AtFlags;

use super::fs::{FsError, FsResult, TenantFs, VPath};
use super::pending::{Added, AlreadyOpen, Pending};
use crate::arrival::file::create_temp;
use crate::dropbox::FileId;
use crate::fsutil::{TempKind, is_ours};
use crate::limits::{FileGrant, QuotaExceeded};

/// Counts an upload against its tenant's quota, or says why it may not be written: a new file,
/// or one that continues the file it is given (its identity and size), which it replaces.
pub type Granter = dyn Fn(&VPath, Option<(FileId, u64)>) -> Result<Option<FileGrant>, QuotaExceeded>;

/// An upload opened for writing: a new one, or one already open (joined).
pub struct Opened {
    pub pending: Arc<Pending>,
    /// A new upload that starts empty (its digest can be taken as it is written).
    pub fresh: bool,
}

impl TenantFs {
    /// Opens `raw` for writing: `truncate` starts empty, otherwise the current content is kept
    /// (resumed uploads, appends); `exclusive` fails if it exists. An upload already open to
    /// the same place is joined. A new one is counted by `grant` (given what it holds) first.
    pub fn open_write(&self, raw: &str, truncate: bool, exclusive: bool, grant: &Granter) -> FsResult<Opened> {
        let v = VPath::parse(raw)?;
        self.writable(&v)?;
        if is_ours(v.name()) {
            return Err(FsError::denied(&v, "names starting with .dropsync- are reserved"));
        }
        let target = self.real(&v)?;
        let exists = || FsError::new(StatusCode::Failure, format!("{v}: already exists"));
        if exclusive && self.pending.get(&target).is_some() {
            return Err(exists());
        }
        // An OPEN with TRUNCATE starts a new upload (see `PendingUploads::add`); others join.
        if !truncate
            && !exclusive
            && let Some(pending) = self.pending.join(&target)
        {
            return Ok(Opened { pending, fresh: false });
        }
        let parent = self.parent_of(&v)?;
        let existing = match self.meta(&v) {
            Ok(m) if m.is_file() => true,
            Ok(_) => return Err(FsError::new(StatusCode::Failure, format!("{v}: not a regular file"))),
            Err(_) => false,
        };
        if existing && exclusive {
            return Err(exists());
        }
        // A resume or an append starts from a copy of the file, which replaces it when complete:
        // the grant counts the file in place of the walk of the folder (once, and as no further
        // file), before a byte of the copy is made.
        let kept = match existing && !truncate {
            true => {
                let src = self.dir.open_file(&v.rel()).map_err(|e| FsError::io(&v, &e))?;
                let meta = src.metadata().map_err(|e| FsError::io(&v, &e))?;
                Some((src, FileId::of(&meta), meta.len()))
            }
            false => None,
        };
        let original = kept.as_ref().map(|(_, id, len)| (*id, *len));
        let mut grant = grant(&v, original).map_err(|why| FsError::new(StatusCode::Failure, why.to_string()))?;
        let tmp_name = TempKind::Upload.name();
        let file = create_temp(&parent, &tmp_name, true).map_err(|e| FsError::io(&v, &e))?;
        let tmp = target.with_file_name(&tmp_name);
        // The temp file is this grant's to count, not the walk of the folder's.
        if let (Some(g), Ok(meta)) = (grant.as_mut(), file.metadata()) {
            g.cover(crate::dropbox::FileId::of(&meta));
        }
        if let Some((src, _, len)) = kept
            && let Err(e) = copy_prefix(&src, &file, len)
        {
            let _ = rustix::fs::unlinkat(&parent, tmp_name.as_str(), AtFlags::empty());
            return Err(FsError::io(&v, &e));
        }
        let fresh = !existing || truncate;
        let pending = Pending::new(file, parent, tmp, target, v.clone(), grant);
        match self.pending.add(pending, truncate, exclusive) {
            Ok(Added::Started(pending)) => Ok(Opened { pending, fresh }),
            // Another session opened the same file meanwhile: that upload it is.
            Ok(Added::Joined(pending)) => Ok(Opened { pending, fresh: false }),
            Err(AlreadyOpen) => Err(exists()),
        }
    }

    /// The upload open to `raw`, if there is one.
    pub fn pending_at(&self, raw: &str) -> Option<Arc<Pending>> {
        let v = VPath::parse(raw).ok()?;
        self.pending.get(&self.real(&v).ok()?)
    }
}

/// Copies the first `len` bytes of `src` to the start of `dst` inside the kernel
/// (`copy_file_range`: no bytes pass through this process, and a file system that can share
/// extents does). Stops early if `src` is shorter.
fn copy_prefix(src: &File, dst: &File, len: u64) -> io::Result<()> {
    let (mut off_in, mut off_out) = (0u64, 0u64);
    while off_in < len {
        // At most 1 GiB a call: the kernel copies less than asked anyway, and an `isize` holds it.
        let chunk = (len - off_in).min(1 << 30) as usize;
        if rustix::fs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), chunk)? == 0 {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::ingress::sftp::fs::tests::{close, fx, put};

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
}
