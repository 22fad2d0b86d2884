//! After the fact: files whose fate is decided leave the drop folders for
//! `{state_dir}/archive/{tenant}/{yyyy-mm-dd}/{file id}-{name}`; waiting rows and unclaimed
//! recordings expire after `matching.grace`; archived copies and orphans are deleted after
//! `retention.local`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::catalog::{Catalog, CatalogError, ToArchive, ms, now_ms};
use crate::dropbox::{DropRoot, RelPath};
use crate::fsutil;
use crate::tenant::TenantId;
use crate::worker::{Worker, WorkerError, WorkerState};

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

/// Periodic expiry and retention.
pub struct Housekeeper {
    pub catalog: Catalog,
    pub drop: DropRoot,
    pub grace: Duration,
    pub retention: Duration,
    pub reports: Arc<Notify>,
}

impl Housekeeper {
    /// How often to look: often enough that a grace or retention period is not overrun by much.
    fn tick(&self) -> Duration {
        (self.grace.min(self.retention) / 4).clamp(Duration::from_millis(250), Duration::from_secs(60))
    }
}

impl Worker for Housekeeper {
    fn name(&self) -> String {
        "housekeeping".into()
    }

    async fn work(&mut self) -> Result<WorkerState, WorkerError> {
        let catalog = self.catalog.clone();
        let drop = self.drop.clone();
        let (grace, retention) = (ms(self.grace), ms(self.retention));
        if tokio::task::spawn_blocking(move || sweep(&catalog, &drop, grace, retention)).await?? {
            self.reports.notify_one();
        }
        Ok(WorkerState::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(self.tick()).await
    }
}

/// One sweep; returns whether anything changed.
fn sweep(catalog: &Catalog, drop: &DropRoot, grace_ms: i64, retention_ms: i64) -> Result<bool, CatalogError> {
    let now = now_ms();
    let (expired, orphaned) = catalog.expire(now, grace_ms)?;
    if expired > 0 {
        tracing::warn!(
            expired,
            "rows expired: their recordings did not arrive within the grace period"
        );
    }
    if orphaned > 0 {
        tracing::warn!(
            orphaned,
            "recordings became orphans: no row claimed them within the grace period"
        );
    }
    let mut purged = 0;
    // One bounded batch per sweep; the next sweep takes the rest (and retries failures).
    {
        let batch = catalog.purgeable(now, retention_ms, 1000)?;
        for item in &batch {
            let path = if item.archived {
                PathBuf::from(&item.path)
            } else {
                match (TenantId::parse(&item.tenant), RelPath::parse(&item.path)) {
                    (Ok(t), Some(rel)) => drop.path_of(&t, &rel),
                    _ => {
                        catalog.mark_purged(item.file_id, now)?;
                        continue;
                    }
                }
            };
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot delete an expired local copy");
                    continue;
                }
            }
            if item.archived {
                // Day folders go once empty; a non-empty one simply stays.
                if let Some(dir) = path.parent() {
                    let _ = std::fs::remove_dir(dir);
                }
            }
            catalog.mark_purged(item.file_id, now)?;
            purged += 1;
        }
    }
    if purged > 0 {
        tracing::info!(purged, "local copies past retention deleted");
    }
    Ok(expired + orphaned + purged > 0)
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
