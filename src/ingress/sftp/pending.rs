//! Uploads in progress, seen by their tenant's sessions under the names they will have, and
//! everything that happens to one from its OPEN to its end.
//!
//! An upload is written to a hidden temp file and put in place when its last handle is closed,
//! so intake never sees it half-written. Meanwhile the tenant's sessions see it where it is
//! going, as a local file system would show a file being written: STAT, LSTAT, READDIR and
//! SETSTAT answer from the temp file, a second OPEN writes to the same file, REMOVE and RENAME
//! act on it. sshfs depends on this: it looks a file up right after creating it, and opens it
//! again to append.
//!
//! Its life is told by the methods here and by nothing else: [`PendingUploads::add`] or
//! [`PendingUploads::join`] give a handle; [`Pending::poison`] dooms it; [`PendingUploads::close`]
//! (a CLOSE) and [`PendingUploads::abort`] (a connection lost) let a handle go, and the last one
//! gets its end: discarded, or a [`Completing`] upload whose [`Completing::finish`] seals it,
//! renames it into place and says what arrived.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rustix::fs::{AtFlags, Mode, OFlags};

use super::fs::{FsError, FsResult, TenantFs, VPath};
use crate::arrival::KnownDigest;
use crate::arrival::Replace;
use crate::arrival::place::rename_or_remove;
use crate::arrival::recover::seal;
use crate::dropbox::is_temp_name;
use crate::limits::{FileGrant, QuotaExceeded};

/// The uploads open in all sessions, by the real path they will take. Shared by every session,
/// so that two sessions of one tenant see (and join) each other's uploads.
#[derive(Default)]
pub struct PendingUploads {
    by_target: Mutex<HashMap<PathBuf, Arc<Pending>>>,
}

/// One upload in progress, shared by the handles that have it open.
pub struct Pending {
    /// The temp file, open for reading and writing.
    pub file: Arc<File>,
    /// The folder it is in, held open: it is renamed or removed there, whatever happens to the
    /// path meanwhile.
    dir: OwnedFd,
    tmp: PathBuf,
    /// Writes hold it shared; the last CLOSE takes it exclusively, so it waits for them.
    pub gate: Arc<tokio::sync::RwLock<()>>,
    state: Mutex<PendingState>,
}

/// What may change while an upload is open.
struct PendingState {
    /// Where it goes when the last handle closes (a RENAME while open moves it).
    target: PathBuf,
    vpath: VPath,
    handles: usize,
    /// More than one handle wrote to it, or its size was set by path (SETSTAT): a digest taken
    /// from one handle's writes is not the file's.
    shared: bool,
    /// Why a write was refused or failed: the upload is discarded at its last CLOSE.
    failed: Option<String>,
    /// Counts it against the tenant's quota while it is open.
    grant: Option<FileGrant>,
    /// Removed by the client while open: it vanishes at its last CLOSE.
    removed: bool,
    /// A handle's CLOSE was answered "done" while others stayed open: the client was told the
    /// upload is complete, so losing the others' connections must not discard it.
    confirmed: bool,
}

/// An OPEN's upload: the one it started, or one already open to the same place that it joined.
pub enum Added {
    Started(Arc<Pending>),
    Joined(Arc<Pending>),
}

/// An exclusive OPEN found an upload already open to the same place.
#[derive(Debug)]
pub struct AlreadyOpen;

/// What letting go of one handle leaves.
pub enum Released {
    /// Other handles still have it open: why it will be discarded, if it will.
    StillOpen(Option<String>),
    /// That was its last handle, and it is gone (temp file and all): removed by the client
    /// (`None`), or discarded, and why.
    Discarded(Option<String>),
    /// That was its last handle: it is to be put in place.
    Last(Completing),
}

/// An upload whose last handle is gone, to be put in place by [`Completing::finish`]. Until
/// then its grant counts it, so a walk of the folder meanwhile counts it neither twice nor not
/// at all.
pub struct Completing {
    upload: Arc<Pending>,
    target: PathBuf,
    vpath: VPath,
    shared: bool,
    grant: Option<FileGrant>,
}

/// What a finished upload leaves to its session.
#[derive(Debug)]
pub struct Finished {
    /// What arrived, if the file may arrive (not a temp name).
    pub arrived: Option<Arrival>,
    /// A folder to fsync before the arrival is announced (the rename is not durable yet).
    pub sync_folder: Option<PathBuf>,
}

/// A file arrived by an upload: its path relative to the drop folder, and its digest if it was
/// hashed as it was written.
#[derive(Debug)]
pub struct Arrival {
    pub rel: String,
    pub digest: Option<KnownDigest>,
}

impl Pending {
    pub fn new(
        file: File,
        dir: OwnedFd,
        tmp: PathBuf,
        target: PathBuf,
        vpath: VPath,
        grant: Option<FileGrant>,
    ) -> Pending {
        Pending {
            file: Arc::new(file),
            dir,
            tmp,
            gate: Arc::new(tokio::sync::RwLock::new(())),
            state: Mutex::new(PendingState {
                target,
                vpath,
                handles: 1,
                shared: false,
                failed: None,
                grant,
                removed: false,
                confirmed: false,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, PendingState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the upload failed (the first reason is kept): it will be discarded.
    pub fn poison(&self, why: &str) {
        self.state().failed.get_or_insert_with(|| why.to_owned());
    }

    /// The upload now reaches `end` bytes (a write, or a size set): refused, and not counted,
    /// past the tenant's quota.
    pub fn grow_to(&self, end: u64) -> Result<(), QuotaExceeded> {
        match self.state().grant.as_mut() {
            Some(grant) => grant.grow_to(end),
            None => Ok(()),
        }
    }

    /// Its size was set by path (SETSTAT): no one handle's writes make it any more.
    pub fn sized_by_path(&self) {
        self.state().shared = true;
    }

    pub fn vpath(&self) -> VPath {
        self.state().vpath.clone()
    }

    /// The temp file opened anew, for reading only: a copy of the upload's descriptor would keep
    /// it open for writing past the rename into place (see [`put_in_place`]).
    pub fn open_for_reading(&self) -> io::Result<File> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.dir, self.tmp_name(), flags, Mode::empty())?;
        Ok(File::from(fd))
    }

    /// The temp file's name in [`Pending::dir`].
    fn tmp_name(&self) -> &str {
        self.tmp.file_name().and_then(|n| n.to_str()).unwrap_or_default()
    }

    /// Removes the temp file: nothing of the upload is left behind.
    fn discard(&self) {
        let _ = rustix::fs::unlinkat(&self.dir, self.tmp_name(), AtFlags::empty());
    }
}

impl PendingUploads {
    fn map(&self) -> MutexGuard<'_, HashMap<PathBuf, Arc<Pending>>> {
        self.by_target.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The upload going to `target`, if one is open.
    pub fn get(&self, target: &Path) -> Option<Arc<Pending>> {
        self.map().get(target).cloned()
    }

    /// Opens the upload going to `target` once more, if there is one.
    pub fn join(&self, target: &Path) -> Option<Arc<Pending>> {
        let map = self.map();
        let p = map.get(target)?;
        add_handle(p);
        Some(p.clone())
    }

    /// Records a new upload, or, if another session opened one to the same place meanwhile,
    /// joins that one (`p` is then discarded), unless the OPEN is `exclusive`. A `fresh` upload
    /// (OPEN with TRUNCATE) never joins: it takes the name from any upload still open there,
    /// which goes on alone to its own end. So writes still in flight from a connection that is
    /// dead but not yet noticed cannot land in a file its client is sending again.
    pub fn add(&self, p: Pending, fresh: bool, exclusive: bool) -> Result<Added, AlreadyOpen> {
        let target = p.state().target.clone();
        let mut map = self.map();
        let existing = map.get(&target).filter(|_| !fresh).cloned();
        let Some(theirs) = existing else {
            let p = Arc::new(p);
            map.insert(target, p.clone());
            return Ok(Added::Started(p));
        };
        if !exclusive {
            add_handle(&theirs);
        }
        drop(map);
        p.discard();
        match exclusive {
            true => Err(AlreadyOpen),
            false => Ok(Added::Joined(theirs)),
        }
    }

    /// Uploads going into `folder`, by file name.
    pub fn in_folder(&self, folder: &Path) -> Vec<(String, Arc<Pending>)> {
        self.map()
            .iter()
            .filter(|(t, _)| t.parent() == Some(folder))
            .filter_map(|(t, p)| Some((t.file_name()?.to_str()?.to_owned(), p.clone())))
            .collect()
    }

    /// A RENAME of an open upload: it now goes to `to`. Fails (giving `false`) if another
    /// upload goes there already.
    pub fn retarget(&self, from: &Path, to: &Path, vpath: VPath) -> bool {
        let mut map = self.map();
        if map.contains_key(to) {
            return false;
        }
        let Some(p) = map.remove(from) else { return false };
        let mut s = p.state();
        s.target = to.to_path_buf();
        s.vpath = vpath;
        drop(s);
        map.insert(to.to_path_buf(), p);
        true
    }

    /// A REMOVE of an open upload: its name goes now, its data with its last handle.
    pub fn unlink(&self, target: &Path) -> bool {
        let Some(p) = self.map().remove(target) else {
            return false;
        };
        p.state().removed = true;
        true
    }

    /// A CLOSE of one handle of `p`, about to be answered "done" if the upload is not doomed:
    /// once it is, losing the other handles' connections no longer discards it.
    pub fn close(&self, p: Arc<Pending>) -> Released {
        self.let_go(p, None)
    }

    /// The connection of one handle of `p` was lost: the upload is discarded, unless a CLOSE of
    /// another handle was already answered "done" (a client that reconnected and finished it).
    pub fn abort(&self, p: Arc<Pending>, why: &str) -> Released {
        self.let_go(p, Some(why))
    }

    /// One handle of `p` goes, by a CLOSE or (`lost`, and why) with its connection. The last
    /// one ends the upload's visibility, and gets its end.
    fn let_go(&self, p: Arc<Pending>, lost: Option<&str>) -> Released {
        let mut map = self.map();
        let mut s = p.state();
        if let Some(why) = lost
            && !s.confirmed
        {
            s.failed.get_or_insert_with(|| why.to_owned());
        }
        s.handles -= 1;
        if s.handles > 0 {
            s.confirmed |= lost.is_none() && s.failed.is_none();
            return Released::StillOpen(s.failed.clone());
        }
        if map.get(&s.target).is_some_and(|q| Arc::ptr_eq(q, &p)) {
            map.remove(&s.target);
        }
        drop(map);
        let (removed, failed) = (s.removed, s.failed.take());
        if removed || failed.is_some() {
            let grant = s.grant.take();
            drop((s, grant));
            p.discard();
            return Released::Discarded(failed.filter(|_| !removed));
        }
        let (target, vpath, shared, grant) = (s.target.clone(), s.vpath.clone(), s.shared, s.grant.take());
        drop(s);
        Released::Last(Completing {
            upload: p,
            target,
            vpath,
            shared,
            grant,
        })
    }
}

/// One more handle has `p` open: its writes are no longer one handle's.
fn add_handle(p: &Pending) {
    let mut s = p.state();
    s.handles += 1;
    s.shared = true;
}

impl Completing {
    /// The temp file, every write landed.
    pub fn file(&self) -> &File {
        &self.upload.file
    }

    /// Whether one handle wrote all of it (then a digest taken from its writes is the file's).
    pub fn written_by_one_handle(&self) -> bool {
        !self.shared
    }

    pub fn vpath(&self) -> &VPath {
        &self.vpath
    }

    /// Puts the upload in place in `fs`, to arrive with `digest`, or discards it if that fails.
    ///
    /// Durable close ([`seal`]): marked complete and fsynced in one journal commit, renamed into
    /// place, and CLOSE answered; the caller fsyncs [`Finished::sync_folder`] off the client's
    /// path before it announces the arrival. Without extended attributes: fdatasync, rename,
    /// folder fsync, all before the answer.
    pub fn finish(self, fs: &TenantFs, durable: bool, digest: Option<KnownDigest>) -> FsResult<Finished> {
        let Completing {
            upload,
            target,
            vpath: v,
            grant,
            ..
        } = self;
        let folder = target.parent().unwrap_or(fs.root()).to_path_buf();
        let target_dir = match fs.parent_of(&v) {
            Ok(d) => d,
            Err(e) => {
                upload.discard();
                return Err(e);
            }
        };
        let marked = match durable.then(|| seal(&upload.file, v.name())) {
            Some(Ok(marked)) => marked,
            Some(Err(e)) => {
                upload.discard();
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
        // In place (over the file it continues, if any): the walk of the folder counts it now.
        if let Some(grant) = grant {
            grant.keep();
        }
        Ok(Finished {
            arrived: (!is_temp_name(v.name())).then(|| Arrival { rel: v.rel(), digest }),
            sync_folder: marked.then_some(folder),
        })
    }
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
            rename_or_remove(&dir, tmp, target_dir, name, Replace::Allowed)
        }
        Err(shared) => {
            tracing::debug!(file = name, "upload still held elsewhere; renamed open");
            rename_or_remove(&shared.dir, shared.tmp_name(), target_dir, name, Replace::Allowed)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use russh_sftp::protocol::FileAttributes;

    use super::*;
    use crate::arrival::recover::{recover_uploads, seal};
    use crate::ingress::sftp::fs::tests::{close, fx, put, write};

    /// What a finished upload says arrived.
    fn arrived(finished: FsResult<Finished>) -> Option<String> {
        finished.unwrap().arrived.map(|a| a.rel)
    }

    #[test]
    fn uploads_are_seen_by_the_tenant_while_open_and_arrive_at_the_last_close() {
        let (_d, t) = fx();
        let up = put(&t, "/c1.wav", true, false).unwrap();
        write(&up, b"RIFF");
        // The tenant sees it where it goes (sshfs looks a new file up at once)...
        assert_eq!(t.stat("/c1.wav").unwrap().size, Some(4));
        let names: Vec<String> = t.read_dir("/").unwrap().into_iter().map(|f| f.filename).collect();
        assert_eq!(names, [".", "..", "reports", "c1.wav"]);
        // ...but the drop folder has nothing under that name until the last handle closes.
        assert!(!t.root().join("c1.wav").exists());
        let again = put(&t, "/c1.wav", false, false).unwrap();
        assert!(Arc::ptr_eq(&up, &again), "a second OPEN joins the upload");
        std::os::unix::fs::FileExt::write_at(&*again.file, b"-more", 4).unwrap();
        assert!(
            matches!(t.pending.close(up), Released::StillOpen(None)),
            "not the last handle"
        );
        assert!(!t.root().join("c1.wav").exists());
        t.setstat(
            "/c1.wav",
            &FileAttributes {
                mtime: Some(1_500_000_000),
                ..FileAttributes::empty()
            },
        )
        .unwrap();
        assert_eq!(arrived(close(&t, again)), Some("c1.wav".into()));
        assert_eq!(fs::read(t.root().join("c1.wav")).unwrap(), b"RIFF-more");
        assert_eq!(t.stat("/c1.wav").unwrap().mtime, Some(1_500_000_000));
        // A dropped upload leaves nothing.
        let up = put(&t, "/c2.wav", true, false).unwrap();
        assert!(matches!(t.pending.abort(up, "lost"), Released::Discarded(Some(_))));
        let names: Vec<String> = fs::read_dir(t.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(!names.iter().any(|n| n.contains("c2")), "{names:?}");
        // Temp names are not arrivals, until renamed.
        let up = put(&t, "/c3.wav.filepart", true, false).unwrap();
        assert_eq!(arrived(close(&t, up)), None);
        assert_eq!(
            t.rename("/c3.wav.filepart", "/c3.wav", false).unwrap(),
            Some("c3.wav".into())
        );
    }

    #[test]
    fn an_upload_sent_again_or_finished_elsewhere_outlives_a_cut_connection() {
        let (_d, t) = fx();
        // Sent again from the start (TRUNCATE) while the cut upload is still open: a new upload,
        // so the cut one's late writes and its discarding cannot touch it.
        let cut = put(&t, "/a.wav", true, false).unwrap();
        let again = put(&t, "/a.wav", true, false).unwrap();
        assert!(!Arc::ptr_eq(&cut, &again), "a truncating OPEN started a new upload");
        write(&again, b"RIFF-whole");
        write(&cut, b"RIF");
        assert!(matches!(t.pending.abort(cut, "lost"), Released::Discarded(Some(_))));
        assert_eq!(arrived(close(&t, again)), Some("a.wav".into()));
        assert_eq!(fs::read(t.root().join("a.wav")).unwrap(), b"RIFF-whole");
        // Resumed by another session (no TRUNCATE) and closed there: confirmed, so a cut of
        // the first handle keeps it.
        let first = put(&t, "/b.wav", true, false).unwrap();
        write(&first, b"RIFF");
        let resumed = put(&t, "/b.wav", false, false).unwrap();
        assert!(Arc::ptr_eq(&first, &resumed));
        std::os::unix::fs::FileExt::write_at(&*resumed.file, b"-rest", 4).unwrap();
        assert!(matches!(t.pending.close(resumed), Released::StillOpen(None)));
        let Released::Last(kept) = t.pending.abort(first, "lost") else {
            panic!("confirmed by the other CLOSE, yet discarded");
        };
        // Kept by the session that lost it, and announced from there (no one else will).
        assert_eq!(arrived(kept.finish(&t, true, None)), Some("b.wav".into()));
        assert_eq!(fs::read(t.root().join("b.wav")).unwrap(), b"RIFF-rest");
        // Cut first: a later CLOSE elsewhere is not confirmed and finds the upload doomed.
        let first = put(&t, "/c.wav", true, false).unwrap();
        let other = put(&t, "/c.wav", false, false).unwrap();
        assert!(matches!(t.pending.abort(first, "lost"), Released::StillOpen(Some(_))));
        match t.pending.close(other) {
            Released::Discarded(why) => assert_eq!(why.as_deref(), Some("lost")),
            _ => panic!("a cut upload was kept"),
        }
        assert!(!t.root().join("c.wav").exists());
    }

    #[test]
    fn closed_uploads_are_recovered_after_a_crash_and_cut_ones_removed() {
        let (_d, t) = fx();
        fs::create_dir(t.root().join("sub")).unwrap();
        // Closed: marked complete (as CLOSE does), but a crash came before the rename.
        let done = put(&t, "/sub/c1.wav", true, false).unwrap();
        write(&done, b"RIFF-all");
        let xattrs = seal(&done.file, "c1.wav").unwrap();
        // Cut: the connection went away mid-upload (or the daemon died).
        let cut = put(&t, "/c2.wav", true, false).unwrap();
        write(&cut, b"RIF");
        if !xattrs {
            // A file system without extended attributes: CLOSE makes everything durable before
            // it answers, and every temp file left is an unfinished one.
            let up = put(&t, "/c9.wav", true, false).unwrap();
            assert!(close(&t, up).unwrap().sync_folder.is_none());
            drop((done, cut));
            assert_eq!(recover_uploads(t.root()).unwrap(), (0, 2));
            return;
        }
        // A marker naming something outside its folder is not followed.
        let evil = put(&t, "/c3.wav", true, false).unwrap();
        assert!(seal(&evil.file, "../x.wav").unwrap());
        let (tmp_done, tmp_cut, tmp_evil) = (done.tmp.clone(), cut.tmp.clone(), evil.tmp.clone());
        drop((done, cut, evil));
        assert_eq!(recover_uploads(t.root()).unwrap(), (1, 2));
        assert_eq!(fs::read(t.root().join("sub/c1.wav")).unwrap(), b"RIFF-all");
        assert!(!tmp_done.exists() && !tmp_cut.exists() && !tmp_evil.exists());
        assert!(!t.root().join("c2.wav").exists());
        assert!(!t.root().parent().unwrap().join("x.wav").exists());
    }

    #[test]
    fn open_uploads_can_be_renamed_and_removed() {
        let (_d, t) = fx();
        let up = put(&t, "/a.wav.part", true, false).unwrap();
        write(&up, b"a");
        assert_eq!(
            t.rename("/a.wav.part", "/a.wav", false).unwrap(),
            None,
            "arrives at close"
        );
        assert!(t.stat("/a.wav.part").is_err());
        assert_eq!(t.stat("/a.wav").unwrap().size, Some(1));
        assert_eq!(arrived(close(&t, up)), Some("a.wav".into()));
        assert_eq!(fs::read(t.root().join("a.wav")).unwrap(), b"a");
        // Removed while open: gone now, and nothing arrives at its close.
        let up = put(&t, "/a.wav", true, false).unwrap();
        t.remove("/a.wav").unwrap();
        assert!(t.stat("/a.wav").is_err() && !t.root().join("a.wav").exists());
        assert!(matches!(t.pending.close(up), Released::Discarded(None)));
        assert_eq!(fs::read_dir(t.root()).unwrap().count(), 1, "only reports/");
    }
}
