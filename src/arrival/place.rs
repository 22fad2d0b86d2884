//! Making written files durable and putting them in place, as a batch: the data of every file
//! synced, then each renamed from its temp name to its own, then each folder synced once, and
//! only then the quota's grants kept and the arrivals handed back to be announced. A crash
//! before the end leaves temp names only (removed at start-up; the writer starts again) or
//! renames not yet durable of files whose data is: nothing half-written under a final name, and
//! nothing announced that a crash could take back.
//!
//! Syncing a batch: a few files get one fsync each, issued together so that they share journal
//! commits. From [`SYNCFS_FROM`] files on, one `syncfs` of their file system covers them all for
//! the price of one journal commit, which is what `sync` after `unzip` costs; it also writes
//! back other files' dirty pages on that file system, which the kernel would write within 30 s
//! anyway, and at most [`UNSYNCED_BYTES`] of the batch's own wait for it at a time.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use rustix::fs::{AtFlags, RenameFlags};

use super::{KnownDigest, Written};
use crate::dropbox::RelPath;
use crate::fsutil;

/// Files in a batch from which one `syncfs` replaces their fsyncs.
pub const SYNCFS_FROM: usize = 32;

/// Bytes written and not yet synced at most: bounds the dirty pages a batch leaves waiting.
const UNSYNCED_BYTES: u64 = 64 << 20;

/// Written files waiting for a sync at most: bounds the descriptors held open.
const UNSYNCED_FILES: usize = 4096;

/// Whether a file may replace one already at its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// As an upload over an existing file would (the later of two with one name wins).
    Allowed,
    /// `RENAME_NOREPLACE`: a name already taken fails that file.
    Never,
}

/// A file now in place, durable, to be announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub rel: RelPath,
    pub digest: Option<KnownDigest>,
}

/// What placing a batch did.
#[derive(Debug, Default)]
pub struct Placement {
    /// Files in place and durable, to be announced.
    pub placed: Vec<Placed>,
    /// Files that could not be put in place, and why (their temp files removed).
    pub failed: Vec<(RelPath, io::Error)>,
}

/// Written files on their way into place (see the module's doc).
#[derive(Default)]
pub struct Batch {
    written: Vec<Written>,
    /// `written[synced..]` wait for their data to be synced.
    synced: usize,
    unsynced_bytes: u64,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    pub fn len(&self) -> usize {
        self.written.len()
    }

    pub fn is_empty(&self) -> bool {
        self.written.is_empty()
    }

    /// Adds a written file, syncing those waiting when too many wait. A failed sync discards
    /// the whole batch (nothing of it is left) and says why.
    pub fn add(&mut self, w: Written) -> io::Result<()> {
        self.unsynced_bytes += w.len;
        self.written.push(w);
        let waiting = self.written.len() - self.synced;
        if waiting == SYNCFS_FROM {
            // One syncfs will cover these: their descriptors need not stay open.
            self.written[self.synced..].iter_mut().for_each(|w| w.file = None);
        } else if waiting > SYNCFS_FROM {
            self.written.last_mut().map(|w| w.file.take());
        }
        if self.unsynced_bytes >= UNSYNCED_BYTES || waiting >= UNSYNCED_FILES {
            self.sync()?;
        }
        Ok(())
    }

    /// Syncs the data of the files waiting (see the module's doc).
    fn sync(&mut self) -> io::Result<()> {
        let waiting = &mut self.written[self.synced..];
        let synced = if waiting.len() >= SYNCFS_FROM {
            distinct_folders(waiting).try_for_each(|dir| Ok(rustix::fs::syncfs(dir)?))
        } else {
            let files: Vec<std::fs::File> = waiting.iter_mut().filter_map(|w| w.file.take()).collect();
            fsutil::sync_files(&files)
        };
        tracing::debug!(files = waiting.len(), bytes = self.unsynced_bytes, "arrivals synced");
        if let Err(e) = synced {
            self.discard_all();
            return Err(e);
        }
        self.synced = self.written.len();
        self.unsynced_bytes = 0;
        Ok(())
    }

    /// Syncs what is left, renames each file into place, syncs each folder once and keeps the
    /// grants. Of two files of one name, the later stays and is placed once. A failed sync
    /// discards the whole batch and says why.
    pub fn place(mut self, replace: Replace) -> io::Result<Placement> {
        self.sync()?;
        let mut failed = Vec::new();
        // Where each name went, so that a later file of the same name takes its place.
        let mut at: HashMap<(usize, String), usize> = HashMap::with_capacity(self.written.len());
        let mut placed: Vec<Option<Written>> = Vec::with_capacity(self.written.len());
        for w in std::mem::take(&mut self.written) {
            let name = w.rel.file_name().to_owned();
            if let Err(e) = rename_or_remove(&w.dir, &w.tmp, &w.dir, &name, replace) {
                failed.push((w.rel, e));
                continue;
            }
            let key = (w.dir.as_raw_fd() as usize, name);
            if let Some(earlier) = at.insert(key, placed.len()) {
                // Replaced: its grant goes with it.
                placed[earlier] = None;
            }
            placed.push(Some(w));
        }
        let placed: Vec<Written> = placed.into_iter().flatten().collect();
        distinct_folders(&placed).try_for_each(|dir| Ok::<_, io::Error>(rustix::fs::fsync(dir)?))?;
        Ok(Placement {
            placed: placed.into_iter().map(Written::keep).collect(),
            failed,
        })
    }

    /// Removes every temp file of the batch: nothing of it is left.
    pub fn discard(mut self) {
        self.discard_all();
    }

    fn discard_all(&mut self) {
        self.written.drain(..).for_each(Written::discard);
        self.synced = 0;
        self.unsynced_bytes = 0;
    }
}

/// Renames the temp file `tmp` in `dir` to `name` in `target_dir`, or removes it if that
/// fails: a temp file never outlives a failed rename.
pub fn rename_or_remove(
    dir: &OwnedFd,
    tmp: &str,
    target_dir: &OwnedFd,
    name: &str,
    replace: Replace,
) -> io::Result<()> {
    let flags = match replace {
        Replace::Allowed => RenameFlags::empty(),
        Replace::Never => RenameFlags::NOREPLACE,
    };
    rustix::fs::renameat_with(dir, tmp, target_dir, name, flags).map_err(|e| {
        let _ = rustix::fs::unlinkat(dir, tmp, AtFlags::empty());
        io::Error::from(e)
    })
}

impl Written {
    /// In place and durable: counted as held until the next walk of the folder finds it.
    fn keep(self) -> Placed {
        if let Some(grant) = self.grant {
            grant.keep();
        }
        Placed {
            rel: self.rel,
            digest: self.digest,
        }
    }
}

/// Each folder the files are in, once (files of one folder share its descriptor).
fn distinct_folders(files: &[Written]) -> impl Iterator<Item = &OwnedFd> {
    let mut seen: Vec<*const OwnedFd> = Vec::new();
    files.iter().filter_map(move |w| {
        let ptr = Arc::as_ptr(&w.dir);
        (!seen.contains(&ptr)).then(|| {
            seen.push(ptr);
            &*w.dir
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arrival::ArrivingFile;
    use rustix::fs::{Mode, OFlags};
    use std::fs;

    fn folder(dir: &std::path::Path) -> Arc<OwnedFd> {
        Arc::new(rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap())
    }

    fn written(dir: &Arc<OwnedFd>, name: &str, bytes: &[u8]) -> Written {
        let mut f = ArrivingFile::create(dir.clone(), RelPath::parse(name).unwrap(), None).unwrap();
        f.append(bytes).unwrap();
        f.finish().unwrap()
    }

    fn names(dir: &std::path::Path) -> Vec<String> {
        let mut n: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        n.sort();
        n
    }

    #[test]
    fn a_large_batch_is_placed_with_digests_and_the_later_of_two_names_wins() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = folder(tmp.path());
        let mut batch = Batch::new();
        for i in 0..SYNCFS_FROM + 10 {
            batch
                .add(written(&dir, &format!("c{i}.wav"), format!("call {i}").as_bytes()))
                .unwrap();
        }
        batch.add(written(&dir, "c0.wav", b"again")).unwrap();
        let Placement { placed, failed } = batch.place(Replace::Allowed).unwrap();
        assert!(failed.is_empty());
        assert_eq!(placed.len(), SYNCFS_FROM + 10, "c0.wav once");
        assert_eq!(fs::read(tmp.path().join("c0.wav")).unwrap(), b"again");
        let c0 = placed.iter().find(|p| p.rel.as_str() == "c0.wav").unwrap();
        assert_eq!(
            c0.digest.unwrap().sha256,
            <[u8; 32]>::from(<sha2::Sha256 as sha2::Digest>::digest(b"again"))
        );
        assert!(
            names(tmp.path()).iter().all(|n| !fsutil::is_ours(n)),
            "no temp file left"
        );
    }

    #[test]
    fn a_name_taken_is_kept_when_it_must_not_be_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = folder(tmp.path());
        fs::write(tmp.path().join("c1.wav"), b"theirs").unwrap();
        let mut batch = Batch::new();
        batch.add(written(&dir, "c1.wav", b"ours")).unwrap();
        batch.add(written(&dir, "c2.wav", b"ours")).unwrap();
        let Placement { placed, failed } = batch.place(Replace::Never).unwrap();
        assert_eq!(placed.len(), 1);
        assert_eq!(failed.len(), 1);
        assert_eq!(fs::read(tmp.path().join("c1.wav")).unwrap(), b"theirs");
        assert_eq!(names(tmp.path()), ["c1.wav", "c2.wav"]);
    }

    #[test]
    fn a_discarded_batch_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = folder(tmp.path());
        let mut batch = Batch::new();
        for i in 0..SYNCFS_FROM + 1 {
            batch.add(written(&dir, &format!("c{i}.wav"), b"x")).unwrap();
        }
        batch.discard();
        assert!(names(tmp.path()).is_empty());
    }
}
