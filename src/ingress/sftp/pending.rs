//! Uploads in progress, seen by their tenant's sessions under the names they will have.
//!
//! An upload is written to a hidden temp file and put in place when its last handle is closed,
//! so intake never sees it half-written. Meanwhile the tenant's sessions see it where it is
//! going, as a local file system would show a file being written: STAT, LSTAT, READDIR and
//! SETSTAT answer from the temp file, a second OPEN writes to the same file, REMOVE and RENAME
//! act on it. sshfs depends on this: it looks a file up right after creating it, and opens it
//! again to append.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::fs::VPath;
use crate::limits::FileGrant;

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
    pub dir: OwnedFd,
    pub tmp: PathBuf,
    /// Writes hold it shared; the last CLOSE takes it exclusively, so it waits for them.
    pub gate: Arc<tokio::sync::RwLock<()>>,
    state: Mutex<PendingState>,
}

/// What may change while an upload is open.
pub struct PendingState {
    /// Where it goes when the last handle closes (a RENAME while open moves it).
    pub target: PathBuf,
    pub vpath: VPath,
    handles: usize,
    /// More than one handle wrote to it, or its size was set by path (SETSTAT): a digest taken
    /// from one handle's writes is not the file's.
    pub shared: bool,
    /// Why a write was refused or failed: the upload is discarded at its last CLOSE.
    pub failed: Option<String>,
    /// Counts it against the tenant's quota while it is open.
    pub grant: Option<FileGrant>,
    /// Removed by the client while open: it vanishes at its last CLOSE.
    removed: bool,
    /// A handle's CLOSE was answered "done" while others stayed open: the client was told the
    /// upload is complete, so losing the others' connections must not discard it.
    confirmed: bool,
}

/// What the last handle's CLOSE has to finish.
pub struct LastClose {
    pub target: PathBuf,
    pub vpath: VPath,
    pub shared: bool,
    pub failed: Option<String>,
    pub grant: Option<FileGrant>,
    pub removed: bool,
    pub confirmed: bool,
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

    pub fn state(&self) -> MutexGuard<'_, PendingState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the upload failed (the first reason is kept): it will be discarded.
    pub fn poison(&self, why: &str) {
        let mut s = self.state();
        if s.failed.is_none() {
            s.failed = Some(why.to_owned());
        }
    }

    /// The connection of one of its handles was lost: the upload is to be discarded, unless a
    /// CLOSE of another handle was already answered "done" (then it is kept; `false`).
    pub fn poison_unless_confirmed(&self, why: &str) -> bool {
        let mut s = self.state();
        if s.confirmed {
            return false;
        }
        s.failed.get_or_insert_with(|| why.to_owned());
        true
    }

    /// Why it will be discarded, if it will.
    pub fn failure(&self) -> Option<String> {
        self.state().failed.clone()
    }

    /// The temp file's name in [`Pending::dir`].
    pub fn tmp_name(&self) -> &str {
        self.tmp.file_name().and_then(|n| n.to_str()).unwrap_or_default()
    }

    pub fn vpath(&self) -> VPath {
        self.state().vpath.clone()
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
        let mut s = p.state();
        s.handles += 1;
        s.shared = true;
        drop(s);
        Some(p.clone())
    }

    /// Records a new upload, or, if another session opened one to the same place meanwhile,
    /// joins that one and returns it (`p` is then to be discarded). A `fresh` upload (OPEN with
    /// TRUNCATE) never joins: it takes the name from any upload still open there, which goes on
    /// alone to its own end. So writes still in flight from a connection that is dead but not
    /// yet noticed cannot land in a file its client is sending again.
    pub fn insert_or_join(&self, p: &Arc<Pending>, fresh: bool) -> Result<(), Arc<Pending>> {
        let target = p.state().target.clone();
        let mut map = self.map();
        if let Some(existing) = map.get(&target).filter(|_| !fresh) {
            let mut s = existing.state();
            s.handles += 1;
            s.shared = true;
            drop(s);
            return Err(existing.clone());
        }
        map.insert(target, p.clone());
        Ok(())
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

    /// One handle of `p` is closed (`closed`: by a CLOSE about to be answered "done") or its
    /// connection lost. The last one gets what it must finish, and the upload stops being
    /// visible.
    pub fn release(&self, p: &Arc<Pending>, closed: bool) -> Option<LastClose> {
        let mut map = self.map();
        let mut s = p.state();
        s.handles -= 1;
        if s.handles > 0 {
            s.confirmed |= closed && s.failed.is_none();
            return None;
        }
        if map.get(&s.target).is_some_and(|q| Arc::ptr_eq(q, p)) {
            map.remove(&s.target);
        }
        Some(LastClose {
            target: s.target.clone(),
            vpath: s.vpath.clone(),
            shared: s.shared,
            failed: s.failed.take(),
            grant: s.grant.take(),
            removed: s.removed,
            confirmed: s.confirmed,
        })
    }
}
