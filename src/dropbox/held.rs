//! What a tenant holds in its drop folder, read from the folder itself, and taking a file away
//! only if it is still the one that was looked at.
//!
//! Takes a tenant; gives every regular file under its folder (reports/ aside, temp names and
//! hidden folders included) with its size, identity and change time, for quotas and for the
//! removal of stale uploads. The walk holds each folder open and opens the next level from it
//! without following a link, so a link planted in a drop folder leads nowhere.

use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, SystemTime};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags};

use super::{DropRoot, REPORTS_DIR, RelPath};
use crate::fsutil::{self, FileId};
use crate::limits::Holdings;
use crate::tenant::TenantId;

/// Quotas read what a tenant holds from here: its files' identities and sizes.
impl Holdings for DropRoot {
    fn walk_held(&self, tenant: &TenantId, visit: &mut dyn FnMut(FileId, u64)) -> io::Result<()> {
        self.for_each_held(tenant, |f| visit(f.id, f.size))
    }
}

/// One regular file a tenant holds.
#[derive(Debug)]
pub struct HeldFile<'a> {
    /// Its path in the drop folder; `None` for a name that is not UTF-8 (counted all the same).
    pub rel: Option<RelPath>,
    pub name: &'a OsStr,
    pub size: u64,
    pub id: FileId,
    /// Its last change of content, name or attributes (ctime: a client cannot set it back, as
    /// it can the mtime of an upload whose times it preserves).
    pub changed: SystemTime,
}

/// What became of a file that was to be removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    Removed,
    /// Another file holds the name now (a new upload): left alone.
    Replaced,
    /// Nothing is there any more.
    Missing,
}

impl DropRoot {
    /// Calls `visit` for every regular file under the tenant's folder, reports/ aside. Folders
    /// that vanish meanwhile are skipped; links are neither followed nor visited.
    pub fn for_each_held(&self, tenant: &TenantId, mut visit: impl FnMut(&HeldFile<'_>)) -> io::Result<()> {
        let root = self.confined(tenant)?.dir("")?;
        // Each folder held open, with its path (`None` under a name that is not UTF-8: its
        // files count all the same, under no path that could be removed).
        let mut stack: Vec<(OwnedFd, Option<String>)> = vec![(root, Some(String::new()))];
        while let Some((dir, rel_dir)) = stack.pop() {
            for entry in rustix::fs::Dir::read_from(&dir)? {
                let entry = entry?;
                let name = OsStr::from_bytes(entry.file_name().to_bytes());
                if name == "." || name == ".." || (rel_dir.as_deref() == Some("") && name == REPORTS_DIR) {
                    continue;
                }
                let st = match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => st,
                    // Gone since the listing.
                    Err(rustix::io::Errno::NOENT) => continue,
                    Err(e) => return Err(e.into()),
                };
                let rel = rel_dir
                    .as_deref()
                    .zip(name.to_str())
                    .and_then(|(d, n)| RelPath::join_dir(d, n));
                match FileType::from_raw_mode(st.st_mode) {
                    FileType::Directory => {
                        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                        match rustix::fs::openat(&dir, name, flags, Mode::empty()) {
                            Ok(fd) => stack.push((fd, rel.map(|r| r.as_str().to_owned()))),
                            // Gone, or swapped for something else, since the listing.
                            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP) => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                    FileType::RegularFile => visit(&HeldFile {
                        rel,
                        name,
                        size: st.st_size.max(0) as u64,
                        id: FileId::of_stat(&st),
                        changed: SystemTime::UNIX_EPOCH
                            + Duration::new(st.st_ctime.max(0) as u64, st.st_ctime_nsec.clamp(0, 999_999_999) as u32),
                    }),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Removes `rel` from the tenant's folder if it is still the file `id`; a file that took its
    /// name since (a new upload) is left alone.
    ///
    /// The file is first renamed aside to one of our temp names in its folder (held open, no
    /// link on the way), then the file under that temp name is compared: a file is never
    /// deleted by a name that another file may have taken between a check and the unlink. A
    /// newcomer caught by the rename is put back; if yet another file took the name meanwhile,
    /// the newcomer is kept as `<name>.kept-<n>` (see [`keep_aside`]).
    pub fn remove_if_same(
        &self,
        tenant: &TenantId,
        rel: &RelPath,
        is_it: impl Fn(FileId) -> bool,
    ) -> io::Result<Removal> {
        let dir = self.confined(tenant)?.dir(rel.dir())?;
        let name = rel.file_name();
        let same = |at: &str| -> io::Result<Option<bool>> {
            match rustix::fs::statat(&dir, at, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => Ok(Some(is_it(FileId::of_stat(&st)))),
                Err(rustix::io::Errno::NOENT) => Ok(None),
                Err(e) => Err(e.into()),
            }
        };
        match same(name)? {
            None => return Ok(Removal::Missing),
            Some(false) => return Ok(Removal::Replaced),
            Some(true) => {}
        }
        let aside = fsutil::TempKind::Staged.name();
        match rustix::fs::renameat_with(&dir, name, &dir, aside.as_str(), RenameFlags::NOREPLACE) {
            Ok(()) => {}
            Err(rustix::io::Errno::NOENT) => return Ok(Removal::Missing),
            Err(e) => return Err(e.into()),
        }
        if same(&aside)? == Some(true) {
            rustix::fs::unlinkat(&dir, aside.as_str(), AtFlags::empty())?;
            return Ok(Removal::Removed);
        }
        // Replaced between the check and the rename: the newcomer goes back where it was sent.
        match rustix::fs::renameat_with(&dir, aside.as_str(), &dir, name, RenameFlags::NOREPLACE) {
            Ok(()) => {}
            // Yet another file took the name meanwhile. The newcomer must not stay under our
            // temp name, which a later sweep would delete: it keeps one beside its own.
            Err(rustix::io::Errno::EXIST) => keep_aside(&dir, &aside, rel)?,
            Err(e) => return Err(e.into()),
        }
        Ok(Removal::Replaced)
    }
}

/// How many `.kept-<n>` names are tried before giving up.
const KEPT_NAMES: u32 = 100;

/// Renames the file at our temp name `aside` to `<name>.kept-<n>` (the first free `n`) beside
/// `rel`: no temp name (no leading dot, no temp suffix), so nothing deletes it as stale, and a
/// name that says what it was. Logged, for the operator to tell the tenant.
fn keep_aside(dir: &OwnedFd, aside: &str, rel: &RelPath) -> io::Result<()> {
    // Leading dots go (a dot-file is a temp name); the name is cut to fit in 255 bytes.
    let base = match rel.file_name().trim_start_matches('.') {
        "" => "file",
        base => base,
    };
    for n in 1..=KEPT_NAMES {
        let suffix = format!(".kept-{n}");
        let mut cut = base.len().min(255 - suffix.len());
        while !base.is_char_boundary(cut) {
            cut -= 1;
        }
        let kept = format!("{}{suffix}", &base[..cut]);
        match rustix::fs::renameat_with(dir, aside, dir, kept.as_str(), RenameFlags::NOREPLACE) {
            Ok(()) => {
                tracing::warn!(file = %rel.as_str(), kept = %kept,
                    "a new file caught while removing an old one lost its name to a third; kept under another name");
                return Ok(());
            }
            Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "{}: a new file is left at {aside}: no free .kept-<n> name",
            rel.as_str()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn fixture() -> (tempfile::TempDir, DropRoot, TenantId) {
        let dir = tempfile::tempdir().unwrap();
        let d = DropRoot::new(dir.path().join("drop"));
        let acme = TenantId::parse("acme").unwrap();
        d.ensure_tenant(&acme).unwrap();
        (dir, d, acme)
    }

    #[test]
    fn every_file_held_is_visited_links_and_reports_aside() {
        let (dir, d, acme) = fixture();
        let t = d.tenant_dir(&acme);
        std::fs::create_dir_all(t.join(".hidden/sub")).unwrap();
        std::fs::write(t.join("a.wav"), b"12345").unwrap();
        std::fs::write(t.join("c1.wav.part"), b"123").unwrap();
        std::fs::write(t.join(".hidden/sub/x"), b"1").unwrap();
        std::fs::write(t.join("reports/a.csv.report.csv"), b"ours").unwrap();
        std::fs::write(dir.path().join("outside"), vec![0; 1000]).unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside"), t.join("link.wav")).unwrap();
        std::os::unix::fs::symlink(dir.path(), t.join("up")).unwrap();
        let mut seen = Vec::new();
        d.for_each_held(&acme, |f| {
            seen.push((f.rel.as_ref().unwrap().as_str().to_owned(), f.size))
        })
        .unwrap();
        seen.sort();
        assert_eq!(
            seen,
            [
                (".hidden/sub/x".to_owned(), 1),
                ("a.wav".to_owned(), 5),
                ("c1.wav.part".to_owned(), 3)
            ]
        );
    }

    #[test]
    fn a_file_is_removed_only_while_it_is_the_one_looked_at() {
        let (_dir, d, acme) = fixture();
        let t = d.tenant_dir(&acme);
        let rel = RelPath::parse("c1.wav").unwrap();
        std::fs::write(t.join("c1.wav"), b"old").unwrap();
        let old = FileId::of(&std::fs::metadata(t.join("c1.wav")).unwrap());
        // A new upload of the same name, put in place by a rename (a new inode).
        std::fs::write(t.join("new"), b"new upload").unwrap();
        std::fs::rename(t.join("new"), t.join("c1.wav")).unwrap();
        assert_eq!(d.remove_if_same(&acme, &rel, |f| f == old).unwrap(), Removal::Replaced);
        assert_eq!(std::fs::read(t.join("c1.wav")).unwrap(), b"new upload");
        let new = FileId::of(&std::fs::metadata(t.join("c1.wav")).unwrap());
        assert_eq!(new.ino, std::fs::metadata(t.join("c1.wav")).unwrap().ino());
        assert_eq!(d.remove_if_same(&acme, &rel, |f| f == new).unwrap(), Removal::Removed);
        assert!(!t.join("c1.wav").exists());
        assert_eq!(d.remove_if_same(&acme, &rel, |f| f == new).unwrap(), Removal::Missing);
        let names: Vec<_> = std::fs::read_dir(&t).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["reports"], "nothing left aside");
    }

    #[test]
    fn a_record_without_a_device_or_inode_compares_what_it_has() {
        let id = FileId { dev: 1, ino: 2 };
        assert!(id.is_recorded(Some(2), Some(1)));
        assert!(!id.is_recorded(Some(2), Some(9)), "same inode on another device");
        assert!(!id.is_recorded(Some(3), Some(1)));
        assert!(id.is_recorded(Some(2), None) && id.is_recorded(None, None));
    }

    #[test]
    fn a_newcomer_caught_aside_whose_name_was_taken_again_keeps_a_name_that_is_no_temp_name() {
        let (_dir, d, acme) = fixture();
        let t = d.tenant_dir(&acme);
        std::fs::write(t.join("c1.wav.part"), b"stale").unwrap();
        let stale = FileId::of(&std::fs::metadata(t.join("c1.wav.part")).unwrap());
        let rel = RelPath::parse("c1.wav.part").unwrap();
        let calls = std::cell::Cell::new(0);
        // First look: still the stale file, but a newcomer takes the name before the rename
        // aside. Second look (aside): the newcomer; and a third file takes the name meanwhile.
        let removal = d.remove_if_same(&acme, &rel, |found| {
            calls.set(calls.get() + 1);
            if calls.get() == 1 {
                std::fs::write(t.join("new"), b"newcomer").unwrap();
                std::fs::rename(t.join("new"), t.join("c1.wav.part")).unwrap();
            } else {
                std::fs::write(t.join("c1.wav.part"), b"third").unwrap();
            }
            found == stale
        });
        assert_eq!(removal.unwrap(), Removal::Replaced);
        assert_eq!(std::fs::read(t.join("c1.wav.part")).unwrap(), b"third");
        let mut names: Vec<_> = std::fs::read_dir(&t)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["c1.wav.part", "c1.wav.part.kept-1", "reports"]);
        assert_eq!(std::fs::read(t.join("c1.wav.part.kept-1")).unwrap(), b"newcomer");
        assert!(!crate::dropbox::is_temp_name("c1.wav.part.kept-1"));
    }
}
