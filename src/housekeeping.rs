//! After the fact: files whose fate is decided leave the drop folders for
//! `{state_dir}/archive/{tenant}/{yyyy-mm-dd}/{file id}-{name}`; waiting rows and unclaimed
//! recordings expire after `matching.grace`; archived copies and orphans are deleted after
//! `retention.local`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::catalog::{Catalog, CatalogError, ToArchive, ms, now_ms};
use crate::dropbox::{DropRoot, RelPath};
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

    /// Archives every decided file (start-up, after a crash between `forwarded` and the move).
    pub fn archive_all_decided(&self) -> Result<(), CatalogError> {
        let list = self.catalog.all_archivable()?;
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
            let dst = self.archive_root.join(tenant.as_str()).join(&day).join(format!(
                "{}-{}",
                item.file_id,
                rel.file_name()
            ));
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

    pub async fn run(self, cancel: CancellationToken) {
        let tick = self.tick();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(tick) => {}
            }
            let catalog = self.catalog.clone();
            let drop = self.drop.clone();
            let (grace, retention) = (ms(self.grace), ms(self.retention));
            let result = tokio::task::spawn_blocking(move || sweep(&catalog, &drop, grace, retention)).await;
            match result {
                Ok(Ok(true)) => self.reports.notify_one(),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "housekeeping failed"),
                Err(e) => tracing::error!(error = %e, "housekeeping task panicked"),
            }
        }
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
