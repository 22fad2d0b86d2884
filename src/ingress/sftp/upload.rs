//! Uploads into a tenant's folder over SFTP: OPEN for writing, and the last CLOSE.
//!
//! An upload is written to a hidden temp name beside its target and renamed into place when its
//! last handle is closed, so a connection that drops mid-upload never leaves a file under its
//! final name. Until then the tenant's sessions see it under that name (see
//! [`super::pending`]). A resume or an append starts from a copy of the file, granted by the
//! quota before it is made.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use russh_sftp::protocol::StatusCode;
use rustix::fs::AtFlags;

use super::fs::{FsError, FsResult, TenantFs, VPath};
use super::pending::{LastClose, Pending};
use crate::arrival::file::create_temp;
use crate::arrival::recover::{put_in_place as rename_or_remove, seal};
use crate::dropbox::{FileId, is_temp_name};
use crate::fsutil::{TempKind, is_ours};
use crate::limits::FileGrant;

/// What [`TenantFs::finish_upload`] leaves to its caller.
#[derive(Debug)]
pub struct FinishedUpload {
    /// The path relative to the drop folder, if the file may arrive.
    pub arrived: Option<String>,
    /// A folder to fsync before the arrival is announced (the rename is not durable yet).
    pub sync_folder: Option<PathBuf>,
}

/// Counts an upload against its tenant's quota, or says why it may not be written: a new file,
/// or one that continues the file it is given (its identity and size), which it replaces.
pub type Granter = dyn Fn(&VPath, Option<(FileId, u64)>) -> Result<Option<FileGrant>, String>;

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
        if exclusive && self.pending.get(&target).is_some() {
            return Err(FsError::new(StatusCode::Failure, format!("{v}: already exists")));
        }
        // An OPEN with TRUNCATE starts a new upload (see `insert_or_join`); others join.
        if let Some(pending) = (!truncate).then(|| self.pending.join(&target)).flatten() {
            return self.reopen(pending, &v, exclusive);
        }
        let parent = self.parent_of(&v)?;
        let existing = match self.meta(&v) {
            Ok(m) if m.is_file() => true,
            Ok(_) => return Err(FsError::new(StatusCode::Failure, format!("{v}: not a regular file"))),
            Err(_) => false,
        };
        if existing && exclusive {
            return Err(FsError::new(StatusCode::Failure, format!("{v}: already exists")));
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
        let mut grant = grant(&v, original).map_err(|why| FsError::new(StatusCode::Failure, why))?;
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
        let pending = Arc::new(Pending::new(file, parent, tmp, target, v.clone(), grant));
        match self.pending.insert_or_join(&pending, truncate) {
            Ok(()) => Ok(Opened { pending, fresh }),
            // Another session opened the same file meanwhile: that upload it is.
            Err(theirs) => {
                self.discard_upload(&pending);
                self.reopen(theirs, &v, exclusive)
            }
        }
    }

    /// A further handle on an upload already open (joined by the caller).
    fn reopen(&self, pending: Arc<Pending>, v: &VPath, exclusive: bool) -> FsResult<Opened> {
        if exclusive {
            self.release(&pending, false);
            return Err(FsError::new(StatusCode::Failure, format!("{v}: already exists")));
        }
        Ok(Opened { pending, fresh: false })
    }

    /// The upload open to `raw`, if there is one.
    pub fn pending_at(&self, raw: &str) -> Option<Arc<Pending>> {
        let v = VPath::parse(raw).ok()?;
        self.pending.get(&self.real(&v).ok()?)
    }

    /// One handle of an upload is closed; the last one gets what it must finish.
    pub fn release(&self, pending: &Arc<Pending>, closed: bool) -> Option<LastClose> {
        self.pending.release(pending, closed)
    }

    /// Completes an upload. Returns the path relative to the drop folder if it is now a file
    /// that may arrive (not a temp name), and the folder the caller must still fsync before
    /// announcing it.
    ///
    /// Durable close ([`seal`]): marked complete and fsynced in one journal commit, renamed into
    /// place, and CLOSE answered; the caller fsyncs the folder off the client's path. Without
    /// extended attributes: fdatasync, rename, folder fsync, all before the answer.
    pub fn finish_upload(&self, upload: Arc<Pending>, last: &LastClose, durable: bool) -> FsResult<FinishedUpload> {
        let v = last.vpath.clone();
        let folder = last.target.parent().unwrap_or(&self.root).to_path_buf();
        let target_dir = match self.parent_of(&v) {
            Ok(d) => d,
            Err(e) => {
                self.discard_upload(&upload);
                return Err(e);
            }
        };
        let marked = match durable.then(|| seal(&upload.file, v.name())) {
            Some(Ok(marked)) => marked,
            Some(Err(e)) => {
                self.discard_upload(&upload);
                return Err(FsError::io(&v, &e));
            }
            None => false,
        };
        put_in_place(upload, &target_dir, v.name())
            .and_then(|()| match durable && !marked {
                true => File::from(target_dir.try_clone()?).sync_all(),
                false => Ok(()),
            })
            .map_err(|e| FsError::io(&v, &e))?;
        Ok(FinishedUpload {
            arrived: (!is_temp_name(v.name())).then(|| v.rel()),
            sync_folder: marked.then_some(folder),
        })
    }

    /// Drops an upload whose last handle is gone (refused, failed, removed, or its connection
    /// went away): nothing is left behind.
    pub fn discard_upload(&self, upload: &Pending) {
        let _ = rustix::fs::unlinkat(&upload.dir, upload.tmp_name(), AtFlags::empty());
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

/// Renames an upload's temp file to `name` in `target_dir`, or removes it if that fails. The
/// temp file is closed first unless something else still holds it (by the last CLOSE every
/// write and read of it has landed): a descriptor open for writing that is closed after the
/// rename is a close-after-write of the final name, which the watcher would announce as a
/// second arrival.
fn put_in_place(upload: Arc<Pending>, target_dir: &OwnedFd, name: &str) -> io::Result<()> {
    match Arc::try_unwrap(upload) {
        Ok(Pending { file, dir, tmp, .. }) => {
            drop(file);
            let tmp = tmp.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            rename_or_remove(&dir, tmp, target_dir, name)
        }
        Err(shared) => {
            tracing::debug!(file = name, "upload still held elsewhere; renamed open");
            rename_or_remove(&shared.dir, shared.tmp_name(), target_dir, name)
        }
    }
}
