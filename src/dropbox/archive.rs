//! Files whose fate is decided leave the drop folders for
//! `{state_dir}/archive/{tenant}/{yyyy-mm-dd}/{file id}-{name}`, where housekeeping deletes
//! them after `retention.local`.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::RenameFlags;

use super::{DropRoot, FileId, RelPath};
use crate::catalog::{Catalog, CatalogError, Departure, ToArchive, now_ms};
use crate::confine::Confined;
use crate::fsutil;
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
    pub fn archive(&self, file_ids: &[i64]) -> Result<(), CatalogError> {
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
        let claimed = self.catalog.claim_for_archive(file_ids, now_ms(), &plan)?;
        let ended: Vec<(i64, Departure)> = claimed.iter().map(|item| (item.file_id, self.move_one(item))).collect();
        self.catalog.settle_departures(&ended, now_ms())
    }

    /// Settles claims older than `before` whose move was never recorded: done if the file is
    /// in the archive, back to present if it is still in the drop folder, gone otherwise.
    pub fn settle_stale(&self, before: i64) -> Result<(), CatalogError> {
        let stale = self.catalog.unsettled_departures(before)?;
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
        self.catalog.settle_departures(&ended, now_ms())
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
    /// made from its folder held open, so no link swapped in on the way can redirect it.
    fn move_one(&self, item: &ToArchive) -> Departure {
        let dst = Path::new(&item.archive_path);
        let found = self
            .source(item)
            .and_then(|(confined, dir, name)| Ok((confined.metadata(&item.rel_path)?, dir, name)));
        let (dir, name) = match found {
            // Deleted by the tenant after it was decided (or moved before a crash): nothing
            // left to keep here.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return if is_that_file(dst, item) {
                    Departure::Archived
                } else {
                    Departure::Gone
                };
            }
            Err(e) => return self.stays(item, &e),
            // Replaced by a file of the same name: that one is a new arrival, not ours to move.
            // (Compared on a descriptor of the file, opened with no link followed.)
            Ok((meta, ..)) if !meta.is_file() || !FileId::of(&meta).is_recorded(item.ino, item.dev) => {
                return Departure::Gone;
            }
            Ok((_, dir, name)) => (dir, name),
        };
        let moved = (|| -> io::Result<()> {
            let dst_dir = dst.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dst_dir)?;
            rustix::fs::renameat(&dir, name.as_str(), rustix::fs::CWD, dst)?;
            fsutil::sync_dir(dst_dir)?;
            Ok(rustix::fs::fsync(&dir)?)
        })();
        if let Err(e) = moved {
            return self.stays(item, &e);
        }
        if is_that_file(dst, item) {
            return Departure::Archived;
        }
        // Replaced between the check and the move: put the newcomer back where it was sent.
        tracing::warn!(tenant = %item.tenant, file = %item.rel_path, "a file re-sent while being archived; putting it back");
        if let Err(e) = rustix::fs::renameat_with(rustix::fs::CWD, dst, &dir, name.as_str(), RenameFlags::NOREPLACE) {
            tracing::warn!(tenant = %item.tenant, file = %item.rel_path, archived_as = %dst.display(), error = %e,
                "cannot put a re-sent file back; it stays in the archive");
        }
        Departure::Gone
    }

    fn stays(&self, item: &ToArchive, e: &io::Error) -> Departure {
        tracing::warn!(tenant = %item.tenant, file = %item.rel_path, error = %e, "cannot archive; will try again");
        Departure::Stayed
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

    #[test]
    fn archive_names_fit_in_255_bytes() {
        assert_eq!(archive_name(7, "c1.wav"), "7-c1.wav");
        let long = "é".repeat(127) + "x.wav"; // 259 bytes
        let name = archive_name(123456, &long);
        assert!(name.len() <= 255, "{}", name.len());
        assert!(name.starts_with("123456-éé"));
    }
}
