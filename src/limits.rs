//! Per-tenant quotas (SPEC §8), in one place that every ingress asks: how many bytes and files
//! a tenant holds in its drop folder, and how many SFTP sessions it has open.
//!
//! What a tenant holds is every file in its drop folder, read from the folder itself by
//! [`UsageWorker`] (temp names, hidden files and files intake has not recorded yet included:
//! SPEC §8 "Everything held counts"), plus what is being written right now (uploads, downloads
//! and zip entries hold a [`FileGrant`] while open). A file being written under a grant is
//! counted by its grant alone: the walk skips the file the grant covers. A file continued by an
//! upload (a resume or an append, written to a copy) is counted by that upload's grant too, in
//! place of the original, which the walk then skips as well. A file completed while a walk runs
//! is counted twice until the next one, never not at all.
//!
//! Metadata files may pass the quota by a little ([`METADATA_HEADROOM_BYTES`] and
//! [`METADATA_HEADROOM_FILES`]): a tenant whose recordings fill its quota while they wait for
//! their metadata (audio first is the documented order) must still be able to send the CSV that
//! lets them leave.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::LiveConfig;
use crate::fsutil::FileId;
use crate::matching::MetadataFormat;
use crate::tenant::{Quota, TenantId};
use crate::worker::{Worker, WorkerError, WorkerState};

/// Why a quota refused something; shown to the tenant as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("quota exceeded: {0}")]
pub struct QuotaExceeded(String);

/// How far a metadata file may take a tenant past its quota.
pub const METADATA_HEADROOM_BYTES: u64 = 16 << 20;
pub const METADATA_HEADROOM_FILES: u64 = 16;

#[derive(Debug, Default, Clone)]
struct Usage {
    /// In the drop folder, as the last walk found it (plus files completed since).
    held_bytes: u64,
    held_files: u64,
    /// Bytes and files completed (added) or taken over by an upload (taken away) while a walk
    /// of the folder runs: applied to what the walk finds, as the walk may have passed their
    /// folder already, and took which files are covered before it began.
    changed_while_walking: Option<(i64, i64)>,
    /// Being written now.
    open_bytes: u64,
    open_files: u64,
    /// The files being written now, which the walk leaves to their grants.
    covered: HashSet<FileId>,
    sessions: u32,
}

/// Where what a tenant holds is read from: its drop folder (`dropbox::DropRoot` implements
/// it). A trait here so that quotas, which every writer into a drop folder asks, do not depend
/// on the drop folder in turn.
pub trait Holdings {
    /// Calls `visit` with the identity and size of every file the tenant holds.
    fn walk_held(&self, tenant: &TenantId, visit: &mut dyn FnMut(FileId, u64)) -> std::io::Result<()>;
}

pub struct Limits {
    config: LiveConfig,
    usage: Mutex<HashMap<String, Usage>>,
}

impl Limits {
    pub fn new(config: LiveConfig) -> Arc<Limits> {
        Arc::new(Limits {
            config,
            usage: Mutex::new(HashMap::new()),
        })
    }

    fn quota(&self, tenant: &str) -> Quota {
        let config = self.config.get();
        config.tenant(tenant).map(|t| config.quota_of(t)).unwrap_or_default()
    }

    fn with_usage<R>(&self, tenant: &str, f: impl FnOnce(&mut Usage) -> R) -> R {
        let mut usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        f(usage.entry(tenant.to_owned()).or_default())
    }

    /// Reads what each configured tenant holds from its drop folder; returns how long it took.
    /// Blocking.
    pub fn refresh(&self, drops: &dyn Holdings) -> Duration {
        let started = std::time::Instant::now();
        for tenant in &self.config.get().tenants {
            let id = tenant.id.as_str();
            let covered = self.with_usage(id, |u| {
                u.changed_while_walking = Some((0, 0));
                u.covered.clone()
            });
            let (mut bytes, mut files) = (0u64, 0u64);
            let walked = drops.walk_held(&tenant.id, &mut |id, size| {
                if !covered.contains(&id) {
                    bytes += size;
                    files += 1;
                }
            });
            if let Err(e) = &walked {
                tracing::warn!(tenant = %tenant.id, error = %e, "cannot read what the tenant holds; its quota counts the last reading");
            }
            let (bytes, files) = self.with_usage(id, |u| {
                let (changed_bytes, changed_files) = u.changed_while_walking.take().unwrap_or_default();
                if walked.is_ok() {
                    u.held_bytes = bytes.saturating_add_signed(changed_bytes);
                    u.held_files = files.saturating_add_signed(changed_files);
                }
                (u.held_bytes, u.held_files)
            });
            metrics::gauge!("dropsync_tenant_held_bytes", "tenant" => id.to_owned()).set(bytes as f64);
            metrics::gauge!("dropsync_tenant_held_files", "tenant" => id.to_owned()).set(files as f64);
            // Beside what it holds, so that an alert can say "near its quota"; no quota is NaN
            // (a quota removed by a reload must not keep its old value).
            let quota = self.quota(id);
            let or_none = |max: Option<u64>| max.map_or(f64::NAN, |m| m as f64);
            metrics::gauge!("dropsync_tenant_quota_bytes", "tenant" => id.to_owned()).set(or_none(quota.bytes));
            metrics::gauge!("dropsync_tenant_quota_files", "tenant" => id.to_owned()).set(or_none(quota.files));
        }
        started.elapsed()
    }

    /// What the tenant holds now (bytes, files; uploads in progress included), and its quota.
    pub fn held(&self, tenant: &str) -> (u64, u64, Quota) {
        let quota = self.quota(tenant);
        let (bytes, files) = self.with_usage(tenant, |u| (u.held_bytes + u.open_bytes, u.held_files + u.open_files));
        (bytes, files, quota)
    }

    /// Whether `id` is a file being written under a grant now.
    pub fn is_being_written(&self, tenant: &TenantId, id: FileId) -> bool {
        self.with_usage(tenant.as_str(), |u| u.covered.contains(&id))
    }

    /// A new file named `name` is being written into the tenant's folder; refused if the
    /// tenant holds as many files as its quota allows, or its byte quota is spent.
    pub fn open_file(self: &Arc<Self>, tenant: &TenantId, name: &str) -> Result<FileGrant, QuotaExceeded> {
        self.grant(tenant, name, None)
    }

    /// An upload continues the file `original` of `size` bytes (a resume or an append, written
    /// to a copy that replaces it when complete): the grant counts it from now on, in place of
    /// the walk, so it is never counted twice and takes no further file of the quota. Refused
    /// only if the tenant's byte quota is spent already. If the upload is not kept, the
    /// original counts as held again.
    ///
    /// The original is taken out of what the last walk found at once. A file that walk had not
    /// seen (put there by something other than an upload since) is counted short until the
    /// next walk.
    pub fn continue_file(
        self: &Arc<Self>,
        tenant: &TenantId,
        name: &str,
        original: FileId,
        size: u64,
    ) -> Result<FileGrant, QuotaExceeded> {
        self.grant(tenant, name, Some((original, size)))
    }

    /// A grant for a new file, or for one continuing `original`.
    fn grant(
        self: &Arc<Self>,
        tenant: &TenantId,
        name: &str,
        original: Option<(FileId, u64)>,
    ) -> Result<FileGrant, QuotaExceeded> {
        let quota = self.quota(tenant.as_str());
        // A chat transcript is a conversation's file like a recording, not its metadata.
        let metadata = !crate::matching::is_transcript(name)
            && crate::matching::extension(name)
                .and_then(|e| MetadataFormat::from_extension(&e))
                .is_some();
        let (headroom_bytes, headroom_files) = if metadata {
            (METADATA_HEADROOM_BYTES, METADATA_HEADROOM_FILES)
        } else {
            (0, 0)
        };
        self.with_usage(tenant.as_str(), |u| {
            // A continued file takes the place of one held: no further file of the quota.
            if let Some(max) = quota.files
                && original.is_none()
                && u.held_files + u.open_files >= max + headroom_files
            {
                return Err(QuotaExceeded(format!("{max} files held (quota.files)")));
            }
            if let Some(max) = quota.bytes
                && u.held_bytes + u.open_bytes >= max + headroom_bytes
            {
                return Err(bytes_exceeded(max));
            }
            u.open_files += 1;
            if let Some((id, size)) = original {
                // Counted by this grant from now on, no longer as held.
                u.held_files = u.held_files.saturating_sub(1);
                u.held_bytes = u.held_bytes.saturating_sub(size);
                u.open_bytes += size;
                u.covered.insert(id);
                if let Some((b, f)) = &mut u.changed_while_walking {
                    (*b, *f) = (*b - signed(size), *f - 1);
                }
            }
            Ok(())
        })?;
        Ok(FileGrant {
            limits: self.clone(),
            tenant: tenant.to_string(),
            bytes: original.map_or(0, |(_, size)| size),
            headroom: headroom_bytes,
            covers: None,
            original,
        })
    }

    /// Whether the tenant may grow a file it already holds by `extra` bytes (a size set on a
    /// closed file); nothing is counted, the catalog sees the new size when it is recorded.
    pub fn check_growth(&self, tenant: &TenantId, extra: u64) -> Result<(), QuotaExceeded> {
        let quota = self.quota(tenant.as_str());
        self.with_usage(tenant.as_str(), |u| match quota.bytes {
            Some(max) if u.held_bytes + u.open_bytes + extra > max => Err(bytes_exceeded(max)),
            _ => Ok(()),
        })
    }

    /// An SFTP session of the tenant begins; refused past its `sessions` quota.
    pub fn open_session(self: &Arc<Self>, tenant: &TenantId) -> Result<SessionGrant, QuotaExceeded> {
        let quota = self.quota(tenant.as_str());
        self.with_usage(tenant.as_str(), |u| {
            if let Some(max) = quota.sessions
                && u.sessions >= max
            {
                return Err(QuotaExceeded(format!("{max} sessions at once (quota.sessions)")));
            }
            u.sessions += 1;
            Ok(())
        })?;
        metrics::gauge!("dropsync_tenant_sessions", "tenant" => tenant.to_string()).increment(1.0);
        Ok(SessionGrant {
            limits: self.clone(),
            tenant: tenant.to_string(),
        })
    }
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn bytes_exceeded(max: u64) -> QuotaExceeded {
    QuotaExceeded(format!("{} held (quota.bytes)", bytesize::ByteSize::b(max)))
}

/// A file being written, counted against its tenant's quota until dropped.
pub struct FileGrant {
    limits: Arc<Limits>,
    tenant: String,
    bytes: u64,
    /// How far past the byte quota this file may go (metadata files).
    headroom: u64,
    /// The file being written, counted here and not by the walk of the folder.
    covers: Option<FileId>,
    /// The file this upload continues, and its size: counted here in place of the walk until
    /// the upload replaces it, or counted as held again if it does not.
    original: Option<(FileId, u64)>,
}

impl FileGrant {
    /// The file now reaches `end` bytes (a write landed there, or a size was set); refused,
    /// and not counted, if that passes the tenant's byte quota. A sparse file counts at its
    /// apparent size.
    pub fn grow_to(&mut self, end: u64) -> Result<(), QuotaExceeded> {
        if end <= self.bytes {
            return Ok(());
        }
        let quota = self.limits.quota(&self.tenant);
        let (extra, headroom) = (end - self.bytes, self.headroom);
        self.limits.with_usage(&self.tenant, |u| {
            if let Some(max) = quota.bytes
                && u.held_bytes + u.open_bytes + extra > max + headroom
            {
                return Err(bytes_exceeded(max));
            }
            u.open_bytes += extra;
            Ok(())
        })?;
        self.bytes = end;
        Ok(())
    }
}

impl FileGrant {
    /// This grant counts the file `id` (its temp file), which the walk of the folder then
    /// leaves out: one file is never counted twice.
    pub fn cover(&mut self, id: FileId) {
        self.limits.with_usage(&self.tenant, |u| u.covered.insert(id));
        self.covers = Some(id);
    }

    /// The file is complete and stays: it counts as held at once (the next walk finds it
    /// under its name), so a burst of uploads cannot slip past the quota meanwhile.
    /// An upload that continued a file has replaced it by now (renamed over it): the original
    /// is gone and counts no more.
    pub fn keep(mut self) {
        let bytes = self.bytes;
        self.limits.with_usage(&self.tenant, |u| held_again(u, bytes));
        // Replaced: not held again when the grant is dropped.
        self.original = None;
    }
}

impl Drop for FileGrant {
    fn drop(&mut self) {
        let (bytes, covers, original) = (self.bytes, self.covers, self.original);
        self.limits.with_usage(&self.tenant, |u| {
            u.open_files = u.open_files.saturating_sub(1);
            u.open_bytes = u.open_bytes.saturating_sub(bytes);
            if let Some(id) = covers {
                u.covered.remove(&id);
            }
            // Not replaced: the original stays where it was, and is held as before.
            if let Some((id, size)) = original {
                u.covered.remove(&id);
                held_again(u, size);
            }
        });
    }
}

/// A file of `bytes` is held from now on (counted before the next walk finds it).
fn held_again(u: &mut Usage, bytes: u64) {
    u.held_bytes += bytes;
    u.held_files += 1;
    if let Some((b, f)) = &mut u.changed_while_walking {
        (*b, *f) = (*b + signed(bytes), *f + 1);
    }
}

/// An open SFTP session, counted until dropped.
pub struct SessionGrant {
    limits: Arc<Limits>,
    tenant: String,
}

impl Drop for SessionGrant {
    fn drop(&mut self) {
        self.limits
            .with_usage(&self.tenant, |u| u.sessions = u.sessions.saturating_sub(1));
        metrics::gauge!("dropsync_tenant_sessions", "tenant" => self.tenant.clone()).decrement(1.0);
    }
}

/// Reads what each tenant holds from its folder: every second, or less often where a walk
/// takes long, so that walking never takes more than a twentieth of a core.
pub struct UsageWorker {
    pub limits: Arc<Limits>,
    pub drops: Arc<dyn Holdings + Send + Sync>,
    pub last_walk: Duration,
}

impl Worker for UsageWorker {
    fn name(&self) -> String {
        "quota usage".into()
    }

    async fn work(&mut self) -> Result<WorkerState, WorkerError> {
        let (limits, drops) = (self.limits.clone(), self.drops.clone());
        self.last_walk = tokio::task::spawn_blocking(move || limits.refresh(&*drops)).await?;
        Ok(WorkerState::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(Duration::from_secs(1).max(self.last_walk * 20)).await
    }
}

/// Quotas of a tenant "acme" whose drop folder is in a temp folder, for tests elsewhere.
#[cfg(test)]
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub drops: crate::dropbox::DropRoot,
    pub limits: Arc<Limits>,
    pub acme: TenantId,
}

#[cfg(test)]
pub fn fixture(quota: Quota) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("d.toml");
    std::fs::write(&file, "[[tenants]]\nid = \"acme\"\n").unwrap();
    let mut config: crate::config::Config = crate::config::load(&file).unwrap();
    config.limits.quota = quota;
    let drops = crate::dropbox::DropRoot::new(dir.path().join("drop"));
    let acme = TenantId::parse("acme").unwrap();
    drops.ensure_tenant(&acme).unwrap();
    Fixture {
        dir,
        drops,
        limits: Limits::new(LiveConfig::new(Arc::new(config))),
        acme,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_files_and_sessions_are_counted_and_given_back() {
        let fx = fixture(Quota {
            bytes: Some(1000),
            files: Some(3),
            sessions: Some(1),
        });
        let (l, acme) = (&fx.limits, &fx.acme);
        std::fs::write(fx.drops.tenant_dir(acme).join("held.wav.part"), vec![0; 400]).unwrap();
        l.refresh(&fx.drops);
        let mut a = l.open_file(acme, "a.wav").unwrap();
        a.grow_to(500).unwrap();
        let mut b = l.open_file(acme, "b.wav").unwrap();
        // 400 held + 500 open: 100 left.
        assert_eq!(
            b.grow_to(101).unwrap_err().to_string(),
            "quota exceeded: 1000 B held (quota.bytes)"
        );
        b.grow_to(100).unwrap();
        assert!(
            l.open_file(acme, "c.wav")
                .err()
                .unwrap()
                .to_string()
                .contains("3 files held")
        );
        // Metadata gets a little room past the quota, so recordings waiting for it can leave.
        let mut m = l.open_file(acme, "batch.csv").unwrap();
        m.grow_to(10 << 10).unwrap();
        assert!(m.grow_to(METADATA_HEADROOM_BYTES + 1).is_err());
        drop((a, m));
        let _c = l.open_file(acme, "c.wav").unwrap();
        let s = l.open_session(acme).unwrap();
        assert!(
            l.open_session(acme)
                .err()
                .unwrap()
                .to_string()
                .contains("1 sessions at once")
        );
        drop(s);
        l.open_session(acme).unwrap();
    }

    #[test]
    fn a_file_being_written_is_counted_once_and_a_kept_one_stays_counted() {
        let fx = fixture(Quota {
            bytes: Some(1000),
            files: None,
            sessions: None,
        });
        let (l, acme) = (&fx.limits, &fx.acme);
        let dir = fx.drops.tenant_dir(acme);
        // An upload in progress: 600 bytes on disk under its temp name, counted by its grant.
        let tmp = dir.join(".dropsync-upload-0000000000000001");
        std::fs::write(&tmp, vec![0; 600]).unwrap();
        let mut up = l.open_file(acme, "c1.wav.part").unwrap();
        up.grow_to(600).unwrap();
        up.cover(FileId::of(&std::fs::metadata(&tmp).unwrap()));
        assert!(l.is_being_written(acme, FileId::of(&std::fs::metadata(&tmp).unwrap())));
        l.refresh(&fx.drops);
        let mut other = l.open_file(acme, "c2.wav").unwrap();
        other.grow_to(400).unwrap();
        drop(other);
        // Closed: renamed to its (temp) final name and kept; it counts before and after a walk.
        std::fs::rename(&tmp, dir.join("c1.wav.part")).unwrap();
        up.keep();
        assert!(l.open_file(acme, "c2.wav").unwrap().grow_to(401).is_err());
        l.refresh(&fx.drops);
        assert!(l.open_file(acme, "c2.wav").unwrap().grow_to(401).is_err());
        assert!(l.open_file(acme, "c2.wav").unwrap().grow_to(400).is_ok());
        // Removed: room again at the next walk.
        std::fs::remove_file(dir.join("c1.wav.part")).unwrap();
        l.refresh(&fx.drops);
        assert!(l.open_file(acme, "c2.wav").unwrap().grow_to(1000).is_ok());
    }

    #[test]
    fn metadata_may_pass_a_full_quota_but_a_transcript_may_not() {
        let fx = fixture(Quota {
            bytes: Some(1000),
            files: None,
            sessions: None,
        });
        let (l, acme) = (&fx.limits, &fx.acme);
        let mut full = l.open_file(acme, "c1.wav").unwrap();
        full.grow_to(1000).unwrap();
        full.keep();
        assert!(l.open_file(acme, "c2.wav").is_err());
        assert!(l.open_file(acme, "batch.json").unwrap().grow_to(2000).is_ok());
        assert!(l.open_file(acme, "c2.transcript.json").is_err());
    }

    #[test]
    fn a_continued_file_counts_once_and_as_no_further_file() {
        let fx = fixture(Quota {
            bytes: Some(1000),
            files: Some(1),
            sessions: None,
        });
        let (l, acme) = (&fx.limits, &fx.acme);
        let dir = fx.drops.tenant_dir(acme);
        std::fs::write(dir.join("c1.wav.part"), vec![0; 600]).unwrap();
        let original = FileId::of(&std::fs::metadata(dir.join("c1.wav.part")).unwrap());
        l.refresh(&fx.drops);
        // At its `files` quota, with 600 of 1000 bytes held: a resume may add 400.
        let mut up = l.continue_file(acme, "c1.wav.part", original, 600).unwrap();
        l.refresh(&fx.drops);
        assert!(l.is_being_written(acme, original));
        up.grow_to(1000).unwrap();
        assert!(up.grow_to(1001).is_err());
        // Not kept (discarded): the original is held again, at once and after a walk.
        drop(up);
        assert!(l.open_file(acme, "c2.wav").is_err(), "the original is held again");
        l.refresh(&fx.drops);
        // Kept: the copy replaced the original and counts once.
        let mut up = l.continue_file(acme, "c1.wav.part", original, 600).unwrap();
        up.grow_to(900).unwrap();
        std::fs::write(dir.join(".copy"), vec![0; 900]).unwrap();
        std::fs::rename(dir.join(".copy"), dir.join("c1.wav.part")).unwrap();
        up.keep();
        let mut again = l.continue_file(acme, "c1.wav.part", original, 900).unwrap();
        again.grow_to(1000).unwrap();
        drop(again);
        l.refresh(&fx.drops);
        let mut again = l.continue_file(acme, "c1.wav.part", original, 900).unwrap();
        again.grow_to(1000).unwrap();
    }
}
