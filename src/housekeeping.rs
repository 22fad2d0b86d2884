//! After the fact: waiting rows and unclaimed recordings expire after `matching.grace`;
//! archived copies and orphans are deleted after `retention.local`; temp files of uploads that
//! never finished are deleted after `limits.stale_upload`. (Files whose fate is decided leave
//! the drop folders through [`crate::dropbox::Archiver`].)

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

use crate::catalog::{Catalog, CatalogError, ms, now_ms};
use crate::config::LiveConfig;
use crate::dropbox::{Archiver, DropRoot, FileId, RelPath, Removal, is_temp_name};
use crate::limits::Limits;
use crate::tenant::TenantId;
use crate::worker::{Worker, WorkerError, WorkerState};

/// How long a file may stay claimed for the archive before housekeeping settles it.
const UNSETTLED_CLAIM: Duration = Duration::from_secs(600);

/// Stale uploads removed per tenant and sweep; the next sweep takes the rest.
const STALE_BATCH: usize = 1000;

/// Periodic expiry and retention.
pub struct Housekeeper {
    pub catalog: Catalog,
    pub drop: DropRoot,
    pub archiver: Archiver,
    pub grace: Duration,
    pub retention: Duration,
    /// Tenants and `limits.stale_upload`, as reloaded.
    pub config: LiveConfig,
    /// Which temp files are being written now (never stale, however old).
    pub limits: Arc<Limits>,
    pub reports: Arc<Notify>,
}

impl Housekeeper {
    /// How often to look: often enough that no grace, retention or staleness period is overrun
    /// by more than an eighth.
    fn tick(&self) -> Duration {
        let shortest = self
            .grace
            .min(self.retention)
            .min(self.config.get().limits.stale_upload);
        (shortest / 8).clamp(Duration::from_millis(250), Duration::from_secs(60))
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
        // A claim this old was not settled by its mover (a catalog error after the move).
        let archiver = self.archiver.clone();
        tokio::task::spawn_blocking(move || archiver.settle_stale(now_ms() - ms(UNSETTLED_CLAIM))).await??;
        let (drop, limits, config) = (self.drop.clone(), self.limits.clone(), self.config.get());
        tokio::task::spawn_blocking(move || {
            for tenant in &config.tenants {
                remove_stale_uploads(&drop, &limits, &tenant.id, config.limits.stale_upload);
            }
        })
        .await?;
        // A pass seen whole: tests wait on it before they say "nothing was removed".
        metrics::counter!("dropsync_housekeeping_passes_total").increment(1);
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

/// Deletes the temp files of a tenant's uploads that never finished: temp names (client ones
/// like `.part`, dot-files, ours left by a cut) unchanged for `stale` and not being written
/// now. Each is deleted only if it is still the file found stale (a new upload under the same
/// name stays). Failures are logged and tried again at the next sweep.
fn remove_stale_uploads(drop: &DropRoot, limits: &Limits, tenant: &TenantId, stale: Duration) {
    let cutoff = SystemTime::now() - stale;
    let mut found: Vec<(RelPath, FileId, u64)> = Vec::new();
    let walked = drop.for_each_held(tenant, |f| {
        let temp = f.name.to_str().is_some_and(is_temp_name);
        if temp && f.changed <= cutoff && found.len() < STALE_BATCH && !limits.is_being_written(tenant, f.id) {
            found.extend(f.rel.clone().map(|rel| (rel, f.id, f.size)));
        }
    });
    if let Err(e) = walked {
        tracing::warn!(tenant = %tenant, error = %e, "cannot look for stale uploads");
        return;
    }
    let (mut removed, mut bytes) = (0u64, 0u64);
    for (rel, id, size) in found {
        match drop.remove_if_same(tenant, &rel, id) {
            Ok(Removal::Removed) => {
                tracing::info!(tenant = %tenant, file = %rel.as_str(), bytes = size, "stale upload removed");
                (removed, bytes) = (removed + 1, bytes + size);
            }
            Ok(Removal::Replaced) => {
                tracing::info!(tenant = %tenant, file = %rel.as_str(), "a stale upload was replaced by a new file; left alone")
            }
            Ok(Removal::Missing) => {}
            Err(e) => {
                tracing::warn!(tenant = %tenant, file = %rel.as_str(), error = %e, "cannot remove a stale upload")
            }
        }
    }
    if removed > 0 {
        metrics::counter!("dropsync_stale_uploads_removed_total", "tenant" => tenant.to_string()).increment(removed);
        tracing::info!(tenant = %tenant, removed, bytes, stale_after = %humantime::format_duration(stale),
            "stale uploads removed: temp files of uploads that never finished");
    }
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
