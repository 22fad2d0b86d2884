//! Uploads and crashes: a closed upload is marked complete on its temp file before it is put
//! in place ([`seal`]), so that at start-up a temp file left by a crash is either
//! renamed into place (the client was told "done") or removed (it was cut short).

use std::fs::{self, File};
use std::io;
use std::path::Path;

use crate::fsutil::{self, TempKind, is_ours};

/// The extended attribute that marks an upload temp file as complete; its value is the name
/// the file was renamed to.
const COMPLETE_XATTR: &str = "user.dropsync.final";

fn mark_complete(file: &File, final_name: &str) -> io::Result<()> {
    rustix::fs::fsetxattr(
        file,
        COMPLETE_XATTR,
        final_name.as_bytes(),
        rustix::fs::XattrFlags::empty(),
    )?;
    Ok(())
}

/// Makes an upload's data durable before it is renamed to `name`. Where the file system keeps
/// extended attributes, in one journal commit: the temp file is marked complete (its final
/// name) and fsynced, which makes its data, its marker and its name durable (`true`). The
/// rename that follows becomes durable with its folder's fsync, which the caller may make off
/// its client's path: a crash before it leaves a marked temp file, which [`recover_uploads`]
/// renames into place at the next start. Without extended attributes, only the data is synced
/// (`false`), and the caller fsyncs the folder after the rename, before it answers.
pub fn seal(file: &File, name: &str) -> io::Result<bool> {
    let marked = mark_complete(file, name).is_ok();
    if marked { file.sync_all() } else { file.sync_data() }?;
    Ok(marked)
}

fn completed_name(path: &Path) -> Option<String> {
    let mut buf = [0u8; 1024];
    // Not following links: a link named like our temp files is not ours.
    let n = rustix::fs::lgetxattr(path, COMPLETE_XATTR, &mut buf).ok()?;
    String::from_utf8(buf[..n].to_vec()).ok()
}

/// At start-up, before any session: upload temp files left by a crash are either complete
/// (marked at CLOSE, so the client was told "done"), and renamed into place, or partial, and
/// removed; staged files (zip entries, HTTP uploads, never announced) are removed, as their
/// writers start again. Only here: at any other time a staged file is being written. Returns
/// (renamed, removed).
pub fn recover_uploads(tenant_root: &Path) -> io::Result<(usize, usize)> {
    let mut found = Vec::new();
    let (mut renamed, mut removed) = (0, 0);
    let mut stack = vec![tenant_root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let ft = entry.file_type()?;
            let name = entry.file_name();
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() {
                match name.to_str().and_then(TempKind::of) {
                    Some(TempKind::Upload) => found.push((entry.metadata()?.modified()?, entry.path())),
                    Some(TempKind::Staged) => {
                        fs::remove_file(entry.path())?;
                        removed += 1;
                    }
                    _ => {}
                }
            }
        }
    }
    // Oldest first, so that of two completed uploads of one name the later one wins.
    found.sort();
    for (_, tmp) in found {
        let folder = tmp.parent().unwrap_or(tenant_root);
        // The marker names a file in the same folder, never a path and never one of ours.
        let target = completed_name(&tmp)
            .filter(|n| crate::dropbox::RelPath::parse(n).is_some_and(|r| r.dir().is_empty()) && !is_ours(n));
        match target {
            Some(name) => {
                fs::rename(&tmp, folder.join(name))?;
                fsutil::sync_dir(folder)?;
                renamed += 1;
            }
            None => {
                fs::remove_file(&tmp)?;
                removed += 1;
            }
        }
    }
    Ok((renamed, removed))
}
