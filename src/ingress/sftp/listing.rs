//! Folder listings (OPENDIR, READDIR): read from the disk a batch at a time, never held whole,
//! so that a folder of a million files costs a session one batch, not a copy of the folder.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use russh_sftp::protocol::StatusCode;

use super::fs::{FsError, FsResult, TenantFs, VPath};
use super::ops::attrs;
use crate::fsutil::is_ours;

/// A folder being listed (an OPENDIR handle).
pub struct Listing {
    v: VPath,
    key: PathBuf,
    names: rustix::fs::Dir,
    /// "." and "..", given with the first batch.
    head: Vec<russh_sftp::protocol::File>,
    open_uploads_listed: bool,
}

impl TenantFs {
    /// Opens a folder for listing (OPENDIR). Its entries are read a batch at a time, never
    /// held whole: a folder of a million files costs a session no more than one batch.
    pub fn open_dir(&self, raw: &str) -> FsResult<Listing> {
        let v = VPath::parse(raw)?;
        let key = self.real(&v)?;
        let folder = match self.meta(&v) {
            Ok(m) if m.is_dir() => m,
            Ok(_) => return Err(FsError::new(StatusCode::Failure, format!("{v}: not a folder"))),
            Err(e) => return Err(FsError::io(&v, &e)),
        };
        let fd = self.dir.dir(&v.rel()).map_err(|e| FsError::io(&v, &e))?;
        let names = rustix::fs::Dir::read_from(&fd).map_err(|e| FsError::io(&v, &e.into()))?;
        Ok(Listing {
            head: vec![entry(".", &folder, &self.owner), entry("..", &folder, &self.owner)],
            v,
            key,
            names,
            open_uploads_listed: false,
        })
    }

    /// Up to `max` more entries of a listing (READDIR); none at its end. Our own temp files
    /// and links are left out; uploads open in the folder come last, under their final names.
    pub fn read_dir_batch(&self, l: &mut Listing, max: usize) -> FsResult<Vec<russh_sftp::protocol::File>> {
        let mut out = std::mem::take(&mut l.head);
        let rel = l.v.rel();
        while out.len() < max {
            let Some(next) = l.names.read() else {
                if !l.open_uploads_listed {
                    l.open_uploads_listed = true;
                    for (name, up) in self.pending.in_folder(&l.key) {
                        if let Ok(m) = up.file.metadata() {
                            out.push(entry(&name, &m, &self.owner));
                        }
                    }
                }
                break;
            };
            let e = next.map_err(|e| FsError::io(&l.v, &e.into()))?;
            let Ok(name) = e.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name == "." || name == ".." || is_ours(&name) {
                continue;
            }
            let child = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let Ok(m) = self.dir.metadata(&child) else { continue };
            if m.file_type().is_symlink() || self.pending.get(&l.key.join(&name)).is_some() {
                continue;
            }
            out.push(entry(&name, &m, &self.owner));
        }
        Ok(out)
    }

    /// Every entry of a folder at once (for tests and small folders).
    pub fn read_dir(&self, raw: &str) -> FsResult<Vec<russh_sftp::protocol::File>> {
        let mut listing = self.open_dir(raw)?;
        let mut out = Vec::new();
        loop {
            let batch = self.read_dir_batch(&mut listing, 1000)?;
            if batch.is_empty() {
                return Ok(out);
            }
            out.extend(batch);
        }
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
    use std::fs;

    use crate::ingress::sftp::fs::tests::fx;

    #[test]
    fn listings_come_in_batches_each_entry_once() {
        let (_d, t) = fx();
        fs::create_dir(t.root().join("many")).unwrap();
        for i in 0..2500 {
            fs::write(t.root().join(format!("many/f{i:04}")), b"x").unwrap();
        }
        let mut l = t.open_dir("/many").unwrap();
        let mut names = std::collections::BTreeSet::new();
        let mut batches = 0;
        loop {
            let batch = t.read_dir_batch(&mut l, 100).unwrap();
            if batch.is_empty() {
                break;
            }
            assert!(batch.len() <= 100);
            batches += 1;
            for f in batch {
                assert!(names.insert(f.filename.clone()), "{} twice", f.filename);
            }
        }
        assert_eq!(names.len(), 2502, "2,500 files, . and ..");
        assert!(batches >= 25);
    }
}
