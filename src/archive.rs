//! The archive stage: files whose fate is decided leave the drop folders for
//! `{state_dir}/archive/{tenant}/{yyyy-mm-dd}/{file id}-{name}`, where housekeeping deletes
//! them after `retention.local`.
//!
//! Takes the catalog ids of decided files (from intake, forwarding and a scan); claims them in
//! the catalog, moves them out of the drop folder, and records how each move ended. It is a
//! stage of its own, like reports, so that the drop folder itself knows no database.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::RenameFlags;

use crate::catalog::{Catalog, CatalogError, Departure, ForwardQueue, ToArchive, now_ms};
use crate::confine::Confined;
use crate::dropbox::{DropRoot, FileId, RelPath};
use crate::tenant::TenantId;

/// Moves decided files out of the drop folders. Blocking.
///
/// A file is first claimed in the catalog (`leaving`, with its destination), then moved, then
/// recorded where it ended. A file re-sent under the same name at any point of this is a new
/// file: the claim took the old record out of matching, and the move only takes the inode that
/// was recorded at arrival. A crash between the steps is settled by [`Archiver::settle_stale`].
#[derive(Clone)]
pub struct Archiver {
    pub catalog: Catalog,
    pub drop: DropRoot,
    pub archive_root: PathBuf,
}

impl Archiver {
    /// Archives those of `file_ids` that no open conversation needs.
    ///
    /// The files are moved first and their folders synced once for all of them, then how
    /// each move ended is recorded in one transaction that is not synced itself: if a power
    /// cut loses it, the claims are still `leaving`, and start-up settles them by looking
    /// ([`Archiver::settle_stale`]). So archiving a batch costs one synced commit and one
    /// sync per folder, not three syncs per file.
    pub fn archive(&self, file_ids: &[i64]) -> Result<(), CatalogError> {
        self.archive_with(self.catalog.forward_queue(), file_ids)
    }

    /// [`Archiver::archive`] for files all of `tenant` (a forwarder's batch): on PostgreSQL,
    /// under that tenant's writer lock, beside other tenants' (see `ForwardQueue::of`).
    pub fn archive_of(&self, tenant: &str, file_ids: &[i64]) -> Result<(), CatalogError> {
        self.archive_with(self.catalog.forward_queue().of(tenant), file_ids)
    }

    fn archive_with(&self, queue: ForwardQueue, file_ids: &[i64]) -> Result<(), CatalogError> {
        if file_ids.is_empty() {
            return Ok(());
        }
        let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
        let plan = |tenant: &str, file_id: i64, rel: &str| {
            let name = rel.rsplit('/').next().unwrap_or(rel);
            let dst = self
                .archive_root
                .join(tenant)
                .join(&day)
                .join(archive_name(file_id, name));
            dst.to_string_lossy().into_owned()
        };
        let claimed = queue.claim_for_archive(file_ids, now_ms(), &plan)?;
        let mut folders = Folders::default();
        let mut ended = Vec::with_capacity(claimed.len());
        let mut moved = Vec::new();
        for item in &claimed {
            match self.move_one(item, &mut folders) {
                Moved::Ended(how) => ended.push((item.file_id, how)),
                Moved::Unsynced(dirs) => moved.push((item.file_id, dirs)),
            }
        }
        let synced = folders.sync();
        // A move whose folders could not be synced stays claimed: the start-up or the
        // housekeeping pass settles it by looking where the file is.
        ended.extend(
            moved
                .into_iter()
                .filter(|(_, dirs)| dirs.iter().all(|d| synced.contains(d)))
                .map(|(file_id, _)| (file_id, Departure::Archived)),
        );
        queue.settle_departures(&ended, now_ms())
    }

    /// Settles claims older than `before` whose move was never recorded: done if the file is
    /// in the archive, back to present if it is still in the drop folder, gone otherwise.
    pub fn settle_stale(&self, before: i64) -> Result<(), CatalogError> {
        let stale = self.catalog.forward_queue().unsettled_departures(before)?;
        let ended: Vec<(i64, Departure)> = stale
            .iter()
            .map(|item| {
                let how = if is_that_file(Path::new(&item.archive_path), item) {
                    Departure::Archived
                } else if self.still_there(item) {
                    Departure::Stayed
                } else {
                    Departure::Gone
                };
                (item.file_id, how)
            })
            .collect();
        if !ended.is_empty() {
            tracing::info!(files = ended.len(), "settled moves to the archive left unrecorded");
        }
        self.catalog.forward_queue().settle_departures(&ended, now_ms())
    }

    /// The claimed file's folder, held open with no link on the way, and its name there.
    fn source(&self, item: &ToArchive) -> io::Result<(Confined, OwnedFd, String)> {
        let (Ok(tenant), Some(rel)) = (TenantId::parse(&item.tenant), RelPath::parse(&item.rel_path)) else {
            return Err(io::Error::new(io::ErrorKind::NotFound, "not a drop folder path"));
        };
        let confined = self.drop.confined(&tenant)?;
        let dir = confined.dir(rel.dir())?;
        Ok((confined, dir, rel.file_name().to_owned()))
    }

    /// Whether the claimed file is still in its drop folder, unmoved.
    fn still_there(&self, item: &ToArchive) -> bool {
        self.source(item)
            .and_then(|(confined, ..)| confined.metadata(&item.rel_path))
            .is_ok_and(|m| m.is_file() && FileId::of(&m).is_recorded(item.ino, item.dev))
    }

    /// Moves one claimed file, if the file at its path is still the one recorded. The move is
    /// made from its folder held open, so no link swapped in on the way can redirect it. A file
    /// moved is not archived until both its folders are synced.
    fn move_one(&self, item: &ToArchive, folders: &mut Folders) -> Moved {
        let dst = Path::new(&item.archive_path);
        let found = self
            .source(item)
            .and_then(|(confined, dir, name)| Ok((confined.metadata(&item.rel_path)?, dir, name)));
        let (dir, name) = match found {
            // Deleted by the tenant after it was decided (or moved before a crash): nothing
            // left to keep here.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Moved::Ended(if is_that_file(dst, item) {
                    Departure::Archived
                } else {
                    Departure::Gone
                });
            }
            Err(e) => return Moved::Ended(self.stays(item, &e)),
            // Replaced by a file of the same name: that one is a new arrival, not ours to move.
            // (Compared on a descriptor of the file, opened with no link followed.)
            Ok((meta, ..)) if !meta.is_file() || !FileId::of(&meta).is_recorded(item.ino, item.dev) => {
                return Moved::Ended(Departure::Gone);
            }
            Ok((_, dir, name)) => (dir, name),
        };
        let dst_dir = dst.parent().unwrap_or(Path::new("."));
        let moved = (|| -> io::Result<()> {
            std::fs::create_dir_all(dst_dir)?;
            Ok(rustix::fs::renameat(&dir, name.as_str(), rustix::fs::CWD, dst)?)
        })();
        if let Err(e) = moved {
            return Moved::Ended(self.stays(item, &e));
        }
        if is_that_file(dst, item) {
            return match folders.add(dir, dst_dir) {
                Ok(dirs) => Moved::Unsynced(dirs),
                Err(e) => Moved::Ended(self.stays(item, &e)),
            };
        }
        // Replaced between the check and the move: put the newcomer back where it was sent.
        tracing::warn!(tenant = %item.tenant, file = %item.rel_path, "a file re-sent while being archived; putting it back");
        if let Err(e) = rustix::fs::renameat_with(rustix::fs::CWD, dst, &dir, name.as_str(), RenameFlags::NOREPLACE) {
            tracing::warn!(tenant = %item.tenant, file = %item.rel_path, archived_as = %dst.display(), error = %e,
                "cannot put a re-sent file back; it stays in the archive");
        }
        Moved::Ended(Departure::Gone)
    }

    fn stays(&self, item: &ToArchive, e: &io::Error) -> Departure {
        tracing::warn!(tenant = %item.tenant, file = %item.rel_path, error = %e, "cannot archive; will try again");
        Departure::Stayed
    }
}

/// How one move went: ended, or made and waiting for its folders (keys in [`Folders`]) to be
/// synced.
enum Moved {
    Ended(Departure),
    Unsynced([FileId; 2]),
}

/// The folders files were moved out of and into, each held open once, to be synced once.
#[derive(Default)]
struct Folders {
    open: std::collections::HashMap<FileId, OwnedFd>,
}

impl Folders {
    /// Keeps `src` (an open folder) and `dst` to sync; gives their keys.
    fn add(&mut self, src: OwnedFd, dst: &Path) -> io::Result<[FileId; 2]> {
        let dst = rustix::fs::open(
            dst,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        let mut key = |fd: OwnedFd| -> io::Result<FileId> {
            let st = rustix::fs::fstat(&fd)?;
            let id = FileId {
                dev: st.st_dev,
                ino: st.st_ino,
            };
            self.open.entry(id).or_insert(fd);
            Ok(id)
        };
        Ok([key(src)?, key(dst)?])
    }

    /// Syncs each folder once; gives those synced.
    fn sync(self) -> std::collections::HashSet<FileId> {
        self.open
            .into_iter()
            .filter_map(|(id, fd)| match rustix::fs::fsync(&fd) {
                Ok(()) => Some(id),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot sync a folder after archiving; its moves are settled later");
                    None
                }
            })
            .collect()
    }
}

/// Whether `path` is the file recorded for `item` (inode and device, where recorded).
fn is_that_file(path: &Path, item: &ToArchive) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && FileId::of(&m).is_recorded(item.ino, item.dev))
}

/// `{file id}-{name}`, the name cut short (on a character boundary) where the whole would pass
/// the 255 bytes a file name may have; the id alone keeps it unique.
fn archive_name(file_id: i64, name: &str) -> String {
    let id = format!("{file_id}-");
    let mut keep = name.len().min(255 - id.len());
    while !name.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{id}{}", &name[..keep])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Files of one tenant in two folders leave together: each is in the archive under its
    /// id and recorded archived (no claim left unsettled); one replaced by another file of its
    /// name before the move is not taken, and the newcomer stays where it was sent.
    #[test]
    fn a_batch_leaves_together_and_a_replaced_file_stays() {
        use crate::catalog::{NewFile, Registered, Via};
        use crate::dropbox::FileKind;
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(&dir.path().join("var/dropsync.db")).unwrap();
        let drop = DropRoot::new(dir.path().join("drop"));
        let acme = TenantId::parse("acme").unwrap();
        drop.ensure_tenant(&acme).unwrap();
        std::fs::create_dir(drop.tenant_dir(&acme).join("sub")).unwrap();
        let mut ids = Vec::new();
        for name in ["a.bin", "b.bin", "sub/c.bin", "d.bin"] {
            let path = drop.tenant_dir(&acme).join(name);
            std::fs::write(&path, name).unwrap();
            let meta = std::fs::metadata(&path).unwrap();
            let rel = RelPath::parse(name).unwrap();
            let file = NewFile {
                tenant: "acme",
                rel: &rel,
                kind: FileKind::Unknown,
                via: Via::Sftp,
                size: meta.len(),
                mtime_ns: crate::fsutil::mtime_ns(&meta),
                ino: meta.ino(),
                dev: meta.dev(),
                sha256: None,
                duration_ms: None,
                audio_error: None,
            };
            match catalog.files().register_file(&file, now_ms(), "not ours").unwrap() {
                Registered::Unknown { file_id } => ids.push(file_id),
                other => panic!("{other:?}"),
            }
        }
        let replaced = drop.tenant_dir(&acme).join("d.bin");
        std::fs::write(replaced.with_file_name(".d.new"), "newcomer").unwrap();
        std::fs::rename(replaced.with_file_name(".d.new"), &replaced).unwrap();
        let archiver = Archiver {
            catalog: catalog.clone(),
            drop: drop.clone(),
            archive_root: dir.path().join("archive"),
        };
        archiver.archive(&ids).unwrap();
        let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
        let archived = dir.path().join("archive/acme").join(day);
        for (id, name) in ids.iter().zip(["a.bin", "b.bin", "c.bin"]) {
            let kept = std::fs::read_to_string(archived.join(format!("{id}-{name}"))).unwrap();
            assert!(kept.ends_with(name), "{kept}");
        }
        assert!(!drop.tenant_dir(&acme).join("a.bin").exists());
        assert!(!drop.tenant_dir(&acme).join("sub/c.bin").exists());
        assert_eq!(std::fs::read_to_string(&replaced).unwrap(), "newcomer");
        assert_eq!(std::fs::read_dir(&archived).unwrap().count(), 3);
        assert!(
            catalog
                .forward_queue()
                .unsettled_departures(i64::MAX)
                .unwrap()
                .is_empty()
        );
        // Settled for good: archiving them again claims nothing.
        archiver.archive(&ids).unwrap();
        assert_eq!(std::fs::read_dir(&archived).unwrap().count(), 3);
    }

    #[test]
    fn archive_names_fit_in_255_bytes() {
        assert_eq!(archive_name(7, "c1.wav"), "7-c1.wav");
        let long = "é".repeat(127) + "x.wav"; // 259 bytes
        let name = archive_name(123456, &long);
        assert!(name.len() <= 255, "{}", name.len());
        assert!(name.starts_with("123456-éé"));
    }
}
