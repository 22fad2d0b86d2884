//! After the fact: waiting rows and unclaimed recordings expire after `matching.grace`;
//! archived copies and orphans are deleted after `retention.local`; the catalog forgets what
//! ended before `retention.catalog` (counts kept). (Files whose fate is
//! decided leave the drop folders through [`crate::dropbox::Archiver`].)

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::catalog::{Catalog, CatalogError, ms, now_ms};
use crate::dropbox::{Archiver, DropRoot, RelPath};
use crate::tenant::TenantId;
use crate::worker::{Worker, WorkerError, WorkerState};

/// How long a file may stay claimed for the archive before housekeeping settles it.
const UNSETTLED_CLAIM: Duration = Duration::from_secs(600);

/// Periodic expiry and retention.
pub struct Housekeeper {
    pub catalog: Catalog,
    pub drop: DropRoot,
    pub archiver: Archiver,
    pub grace: Duration,
    pub retention: Duration,
    pub catalog_retention: Duration,
    pub reports: Arc<Notify>,
}

/// Conversations the catalog forgets per sweep at most: a backlog of history (an upgrade, a
/// lowered `retention.catalog`) is worked off a slice at a time.
const PRUNE_PER_SWEEP: usize = 20_000;

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
        let catalog = self.catalog.clone();
        let before = now_ms() - ms(self.catalog_retention);
        let pruned = tokio::task::spawn_blocking(move || catalog.prune(before, PRUNE_PER_SWEEP)).await??;
        if pruned.conversations + pruned.files > 0 {
            tracing::info!(
                conversations = pruned.conversations,
                metadata_files = pruned.metadata_files,
                files = pruned.files,
                "catalog forgot history past retention.catalog (counts kept)"
            );
        }
        // A claim this old was not settled by its mover (a catalog error after the move).
        let archiver = self.archiver.clone();
        tokio::task::spawn_blocking(move || archiver.settle_stale(now_ms() - ms(UNSETTLED_CLAIM))).await??;
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
            // Archived copies are ours (state_dir); orphans are removed from their drop
            // folder held open, with no link followed on the way.
            let path = PathBuf::from(&item.path);
            let removed = if item.archived {
                std::fs::remove_file(&path)
            } else {
                match (TenantId::parse(&item.tenant), RelPath::parse(&item.path)) {
                    (Ok(t), Some(rel)) => remove_orphan(drop, &t, &rel),
                    _ => {
                        catalog.mark_purged(item.file_id, now)?;
                        continue;
                    }
                }
            };
            match removed {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(tenant = %item.tenant, path = %item.path, error = %e, "cannot delete an expired local copy");
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

/// Deletes an orphan from its tenant's drop folder.
fn remove_orphan(drop: &DropRoot, tenant: &TenantId, rel: &RelPath) -> std::io::Result<()> {
    let dir = drop.confined(tenant)?.dir(rel.dir())?;
    Ok(rustix::fs::unlinkat(
        &dir,
        rel.file_name(),
        rustix::fs::AtFlags::empty(),
    )?)
}
