//! Files whose fate is decided leave the drop folders for
//! `{state_dir}/archive/{tenant}/{yyyy-mm-dd}/{file id}-{name}`, where housekeeping deletes
//! them after `retention.local`.

use std::path::PathBuf;

use super::{DropRoot, RelPath};
use crate::catalog::{Catalog, CatalogError, ToArchive, now_ms};
use crate::fsutil;
use crate::tenant::TenantId;

/// Moves decided files out of the drop folders. Blocking.
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
        let list = self.catalog.archivable_among(file_ids)?;
        self.move_all(&list)
    }

    /// Moves each file, then records it. The catalog already says the file may go, so a crash
    /// between the two only repeats the move, which [`fsutil::move_durable`] tolerates.
    pub fn move_all(&self, list: &[ToArchive]) -> Result<(), CatalogError> {
        let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
        let mut moved: Vec<(i64, String)> = Vec::with_capacity(list.len());
        for item in list {
            let (Ok(tenant), Some(rel)) = (TenantId::parse(&item.tenant), RelPath::parse(&item.rel_path)) else {
                continue;
            };
            let src = self.drop.path_of(&tenant, &rel);
            let dst = self
                .archive_root
                .join(tenant.as_str())
                .join(&day)
                .join(archive_name(item.file_id, rel.file_name()));
            match fsutil::move_durable(&src, &dst) {
                Ok(()) => moved.push((item.file_id, dst.to_string_lossy().into_owned())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // Deleted by the tenant after it was decided: nothing left to keep.
                    self.catalog.files_gone(&[item.file_id], now_ms())?;
                }
                Err(e) => {
                    tracing::warn!(tenant = %tenant, file = rel.as_str(), error = %e, "cannot archive; will try again")
                }
            }
        }
        self.catalog.mark_archived(&moved, now_ms())
    }
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
