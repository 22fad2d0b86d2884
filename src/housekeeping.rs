//! After the fact: waiting rows and unclaimed recordings expire after `matching.grace`;
//! archived copies and orphans are deleted after `retention.local`; temp files of uploads that
//! never finished are deleted after `limits.stale_upload`; the catalog forgets what ended
//! before `retention.catalog` (counts kept). (Files whose fate is decided leave the drop
//! folders through [`crate::archive::Archiver`].)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

use crate::archive::Archiver;
use crate::catalog::{Catalog, CatalogError, ToPurge, ms, now_ms};
use crate::config::LiveConfig;
use crate::dropbox::{DropRoot, FileId, RelPath, Removal, is_temp_name};
use crate::fsutil;
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
    /// Tenants, their retention and `limits.stale_upload`, as reloaded.
    pub config: LiveConfig,
    /// Which temp files are being written now (never stale, however old).
    pub limits: Arc<Limits>,
    pub reports: Arc<Notify>,
}

/// Conversations the catalog forgets per sweep at most: a backlog of history (an upgrade, a
/// lowered `retention.catalog`) is worked off a slice at a time.
const PRUNE_PER_SWEEP: usize = 20_000;

impl Housekeeper {
    /// How often to look: often enough that no grace, retention or staleness period is overrun
    /// by more than an eighth.
    fn tick(&self) -> Duration {
        let config = self.config.get();
        let retention = config
            .tenants
            .iter()
            .map(|t| config.retention_of(t))
            .fold(config.retention.local, Duration::min);
        let shortest = self.grace.min(retention).min(config.limits.stale_upload);
        (shortest / 8).clamp(Duration::from_millis(250), Duration::from_secs(60))
    }
}

/// The lease of the node that does housekeeping.
const HOUSEKEEPING_LEASE: &str = "housekeeping";

impl Worker for Housekeeper {
    fn name(&self) -> String {
        "housekeeping".into()
    }

    async fn work(&mut self) -> Result<WorkerState, WorkerError> {
        // One node sweeps for all that share the catalog: the one holding this lease, which its
        // keeper renews while it lives (another takes it after a lease if it dies).
        if !self
            .catalog
            .run(|c| c.leases().try_take(HOUSEKEEPING_LEASE, now_ms()))
            .await?
        {
            return Ok(WorkerState::Idle);
        }
        let catalog = self.catalog.clone();
        let drop = self.drop.clone();
        let config = self.config.get();
        let grace = ms(self.grace);
        let retention = Retention {
            default_ms: ms(config.retention.local),
            per_tenant: config
                .tenants
                .iter()
                .map(|t| (t.id.to_string(), ms(config.retention_of(t))))
                .collect(),
        };
        if tokio::task::spawn_blocking(move || sweep(&catalog, &drop, grace, &retention)).await?? {
            self.reports.notify_one();
        }
        // Never forget a batch whose files a tenant's longer retention still keeps.
        let remembered = config
            .tenants
            .iter()
            .map(|t| config.retention_of(t))
            .fold(config.retention.catalog, Duration::max);
        let catalog = self.catalog.clone();
        let before = now_ms() - ms(remembered);
        let pruned = tokio::task::spawn_blocking(move || catalog.history().prune(before, PRUNE_PER_SWEEP)).await??;
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
        let (drop, limits, config) = (self.drop.clone(), self.limits.clone(), self.config.get());
        tokio::task::spawn_blocking(move || {
            for tenant in &config.tenants {
                remove_stale_uploads(&drop, &limits, &tenant.id, config.limits.stale_upload);
            }
            if let Some(http) = &config.http {
                remove_expired_pending(&config.pending_dir(), http.upload_url_ttl);
            }
        })
        .await?;
        // A pass seen whole: tests wait on it before they say "nothing was removed".
        metrics::counter!("dropsync_housekeeping_passes_total").increment(1);
        // A backlog of history (an upgrade, a shortened retention.catalog) is worked off
        // slice after slice, not a slice a tick; each slice holds the writer only briefly.
        Ok(if pruned.conversations >= PRUNE_PER_SWEEP {
            WorkerState::Busy
        } else {
            WorkerState::Idle
        })
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(self.tick()).await
    }
}

/// How long local copies are kept: each tenant's own, and for tenants no longer configured.
struct Retention {
    default_ms: i64,
    per_tenant: Vec<(String, i64)>,
}

/// One sweep; returns whether anything changed.
fn sweep(catalog: &Catalog, drop: &DropRoot, grace_ms: i64, retention: &Retention) -> Result<bool, CatalogError> {
    let now = now_ms();
    let (expired, orphaned) = catalog.files().expire(now, grace_ms)?;
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
    // One bounded batch per sweep; the next sweep takes the rest (and retries failures).
    //
    // Crash ordering: the batch's files are removed, then each folder they left is fsynced
    // once, then all are recorded purged in one transaction. A crash before the record leaves
    // rows whose file is gone: the next sweep finds them missing and records them then (after
    // syncing their folders again). A file is never recorded purged while its removal could
    // still be undone by a power cut, which would bring back an orphan as a new arrival, or an
    // archived copy that no sweep deletes any more.
    let per_tenant: Vec<(&str, i64)> = retention.per_tenant.iter().map(|(t, ms)| (t.as_str(), *ms)).collect();
    let mut gone = Vec::new();
    let mut folders = BTreeSet::new();
    for item in catalog
        .forward_queue()
        .purgeable(now, retention.default_ms, &per_tenant, 1000)?
    {
        match purge(drop, &item) {
            Ok(Removal::Removed | Removal::Missing) => folders.extend(folder_of(drop, &item)),
            // A new upload of the name that intake has not recorded yet: it is the tenant's,
            // and its arrival closes the orphan's record.
            Ok(Removal::Replaced) => {
                tracing::info!(tenant = %item.tenant, file = %item.path,
                    "an orphan past retention was replaced by a new file of its name; the new file stays");
                continue;
            }
            Err(e) => {
                tracing::warn!(tenant = %item.tenant, path = %item.path, error = %e, "cannot delete an expired local copy");
                continue;
            }
        }
        gone.push(item.file_id);
    }
    if let Some((dir, e)) = folders.iter().find_map(|dir| sync_folder(dir).err().map(|e| (dir, e))) {
        tracing::warn!(folder = %dir.display(), error = %e, "cannot sync a folder after deleting expired local copies; they are recorded at the next sweep");
        gone.clear();
    }
    catalog.forward_queue().mark_purged(&gone, now)?;
    let purged = gone.len();
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
    if let Some(found) = find_stale_uploads(drop, limits, tenant, stale) {
        remove_found(drop, limits, tenant, found, stale);
    }
}

/// Removes the HTTP API's waiting metadata whose upload URL has expired (written longer ago
/// than `ttl`, with an hour to spare): no recording can come for it any more.
fn remove_expired_pending(dir: &Path, ttl: Duration) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let cutoff = SystemTime::now() - ttl - Duration::from_secs(3600);
    for entry in entries.flatten() {
        let old = entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < cutoff);
        if old && entry.file_name().to_str().is_some_and(|n| n.ends_with(".json")) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!(file = %entry.path().display(), "expired upload metadata removed"),
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove expired upload metadata")
                }
            }
        }
    }
}

/// A stale upload found by the walk: its path, identity and size.
type Stale = (RelPath, FileId, u64);

/// The tenant's temp files unchanged for `stale` and not being written now (a batch of them).
fn find_stale_uploads(drop: &DropRoot, limits: &Limits, tenant: &TenantId, stale: Duration) -> Option<Vec<Stale>> {
    let cutoff = SystemTime::now() - stale;
    let mut found: Vec<Stale> = Vec::new();
    let walked = drop.for_each_held(tenant, |f| {
        let temp = f.name.to_str().is_some_and(is_temp_name);
        if temp && f.changed <= cutoff && found.len() < STALE_BATCH && !limits.is_being_written(tenant, f.id) {
            found.extend(f.rel.clone().map(|rel| (rel, f.id, f.size)));
        }
    });
    match walked {
        Ok(()) => Some(found),
        Err(e) => {
            tracing::warn!(tenant = %tenant, error = %e, "cannot look for stale uploads");
            None
        }
    }
}

/// Removes the stale uploads found, each only if it is still the file found.
fn remove_found(drop: &DropRoot, limits: &Limits, tenant: &TenantId, found: Vec<Stale>, stale: Duration) {
    let (mut removed, mut bytes) = (0u64, 0u64);
    for (rel, id, size) in found {
        // Asked again at the removal: an upload may have begun to continue it since the walk.
        match drop.remove_if_same(tenant, &rel, |found| {
            found == id && !limits.is_being_written(tenant, found)
        }) {
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

/// The folder a local copy past retention is (or was) in.
fn folder_of(drop: &DropRoot, item: &ToPurge) -> Option<PathBuf> {
    let path = match (item.archived, TenantId::parse(&item.tenant), RelPath::parse(&item.path)) {
        (true, ..) => PathBuf::from(&item.path),
        (false, Ok(tenant), Some(rel)) => drop.path_of(&tenant, &rel),
        _ => return None,
    };
    path.parent().map(Path::to_path_buf)
}

/// fsyncs `dir`, or its parent if `dir` went too (an archive's day folder, removed once empty).
fn sync_folder(dir: &Path) -> std::io::Result<()> {
    match fsutil::sync_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => dir.parent().map_or(Ok(()), fsutil::sync_dir),
        other => other,
    }
}

/// Deletes one local copy past retention. Archived copies are ours (state_dir); orphans are
/// removed from their drop folder held open, with no link followed on the way, and only while
/// the file at their path is still the one recorded (inode and device).
fn purge(drop: &DropRoot, item: &ToPurge) -> std::io::Result<Removal> {
    if item.archived {
        let path = Path::new(&item.path);
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Removal::Missing),
            Err(e) => return Err(e),
        }
        // Day folders go once empty; a non-empty one simply stays.
        if let Some(dir) = path.parent() {
            let _ = std::fs::remove_dir(dir);
        }
        return Ok(Removal::Removed);
    }
    match (TenantId::parse(&item.tenant), RelPath::parse(&item.path)) {
        (Ok(tenant), Some(rel)) => {
            match drop.remove_if_same(&tenant, &rel, |found| found.is_recorded(item.ino, item.dev)) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Removal::Missing),
                other => other,
            }
        }
        // Not a path we could have recorded in a drop folder: nothing to delete.
        _ => Ok(Removal::Missing),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{NewFile, Via};
    use crate::dropbox::FileKind;

    struct Fixture {
        _dir: tempfile::TempDir,
        catalog: Catalog,
        drop: DropRoot,
        acme: TenantId,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(&dir.path().join("dropsync.db")).unwrap();
        let drop = DropRoot::new(dir.path().join("drop"));
        let acme = TenantId::parse("acme").unwrap();
        drop.ensure_tenant(&acme).unwrap();
        Fixture {
            _dir: dir,
            catalog,
            drop,
            acme,
        }
    }

    /// Writes `rel` and records it as intake would, a while ago.
    fn arrived(fx: &Fixture, rel: &str, bytes: &[u8]) {
        let path = fx.drop.tenant_dir(&fx.acme).join(rel);
        std::fs::write(&path, bytes).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        let rel = RelPath::parse(rel).unwrap();
        let f = NewFile {
            tenant: "acme",
            rel: &rel,
            kind: FileKind::Recording,
            via: Via::Sftp,
            size: meta.len(),
            mtime_ns: 0,
            ino: std::os::unix::fs::MetadataExt::ino(&meta),
            dev: std::os::unix::fs::MetadataExt::dev(&meta),
            sha256: Some("00".into()),
            duration_ms: None,
            audio_error: None,
        };
        fx.catalog
            .files()
            .register_file(&f, now_ms() - 1000, "unknown")
            .unwrap();
    }

    #[test]
    fn expired_upload_metadata_is_removed_and_fresh_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (old, fresh) = (dir.path().join("a.json"), dir.path().join("b.json"));
        std::fs::write(&old, b"{}").unwrap();
        std::fs::write(&fresh, b"{}").unwrap();
        let long_ago = SystemTime::now() - Duration::from_secs(3 * 3600);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        remove_expired_pending(dir.path(), Duration::from_secs(3600));
        assert!(!old.exists(), "written 3 h ago, its URL expired 2 h ago");
        assert!(fresh.exists());
    }

    #[test]
    fn an_orphan_replaced_by_a_new_upload_of_its_name_is_not_purged() {
        let fx = fixture();
        let dir = fx.drop.tenant_dir(&fx.acme);
        arrived(&fx, "c1.wav", b"orphan");
        arrived(&fx, "c2.wav", b"orphan too");
        // A new upload of c1.wav, put in place by a rename (a new inode), that intake has not
        // recorded yet.
        std::fs::write(dir.join(".upload"), b"new upload").unwrap();
        std::fs::rename(dir.join(".upload"), dir.join("c1.wav")).unwrap();
        // Both become orphans and pass retention in this sweep (grace and retention of 0).
        let retention = Retention {
            default_ms: 0,
            per_tenant: vec![],
        };
        assert!(sweep(&fx.catalog, &fx.drop, 0, &retention).unwrap());
        assert_eq!(std::fs::read(dir.join("c1.wav")).unwrap(), b"new upload");
        assert!(!dir.join("c2.wav").exists(), "the orphan that stayed itself is purged");
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "c1.wav and reports/, nothing set aside: {left:?}");
    }

    #[test]
    fn a_stale_upload_resumed_after_the_walk_is_not_removed() {
        let fx = crate::limits::fixture(crate::tenant::Quota::default());
        let (drop, limits, acme) = (&fx.drops, &fx.limits, &fx.acme);
        let path = drop.tenant_dir(acme).join("c1.wav.part");
        std::fs::write(&path, b"left a day ago").unwrap();
        let found = find_stale_uploads(drop, limits, acme, Duration::ZERO).unwrap();
        assert_eq!(found.len(), 1);
        // Between the walk and the removal, a client resumes it: its upload covers it now.
        let id = FileId::of(&std::fs::metadata(&path).unwrap());
        let _resumed = limits.continue_file(acme, "c1.wav.part", id, 14).unwrap();
        remove_found(drop, limits, acme, found, Duration::ZERO);
        assert!(path.exists(), "a file being resumed was removed as stale");
    }
}
