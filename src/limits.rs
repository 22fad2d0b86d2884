//! Per-tenant quotas (SPEC §8), in one place that every ingress asks: how many bytes and files
//! a tenant holds in its drop folder, and how many SFTP sessions it has open.
//!
//! What a tenant holds is what the catalog records as present (refreshed every second by
//! [`UsageWorker`]) plus what is being written right now (uploads and downloads hold a
//! [`FileGrant`] while open). A file closed a moment ago and not yet recorded is counted again
//! once intake records it, a second or so later: quotas are a budget, not an exact ledger.
//!
//! Metadata files may pass the quota by a little ([`METADATA_HEADROOM_BYTES`] and
//! [`METADATA_HEADROOM_FILES`]): a tenant whose recordings fill its quota while they wait for
//! their metadata (audio first is the documented order) must still be able to send the CSV that
//! lets them leave.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::catalog::Catalog;
use crate::config::LiveConfig;
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

#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    /// Present in the drop folder, as the catalog records it.
    held_bytes: u64,
    held_files: u64,
    /// Being written now.
    open_bytes: u64,
    open_files: u64,
    sessions: u32,
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

    /// What the catalog records as present, per tenant (tenants not named hold nothing).
    pub fn set_held(&self, held: &HashMap<String, (u64, u64)>) {
        let mut usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        for (tenant, u) in usage.iter_mut() {
            let (bytes, files) = held.get(tenant).copied().unwrap_or((0, 0));
            (u.held_bytes, u.held_files) = (bytes, files);
        }
        for (tenant, (bytes, files)) in held {
            usage.entry(tenant.clone()).or_insert(Usage {
                held_bytes: *bytes,
                held_files: *files,
                ..Usage::default()
            });
        }
    }

    /// A new file named `name` is being written into the tenant's folder; refused if the
    /// tenant holds as many files as its quota allows, or its byte quota is spent.
    pub fn open_file(self: &Arc<Self>, tenant: &TenantId, name: &str) -> Result<FileGrant, QuotaExceeded> {
        let quota = self.quota(tenant.as_str());
        let metadata = crate::matching::extension(name)
            .and_then(|e| MetadataFormat::from_extension(&e))
            .is_some();
        let (headroom_bytes, headroom_files) = if metadata {
            (METADATA_HEADROOM_BYTES, METADATA_HEADROOM_FILES)
        } else {
            (0, 0)
        };
        self.with_usage(tenant.as_str(), |u| {
            if let Some(max) = quota.files
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
            Ok(())
        })?;
        Ok(FileGrant {
            limits: self.clone(),
            tenant: tenant.to_string(),
            bytes: 0,
            headroom: headroom_bytes,
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
    /// The file is complete and stays: it counts as held until the next refresh from the
    /// catalog has it, so a burst of uploads cannot slip past the quota meanwhile.
    pub fn keep(self) {
        let bytes = self.bytes;
        self.limits.with_usage(&self.tenant, |u| {
            u.held_bytes += bytes;
            u.held_files += 1;
        });
    }
}

impl Drop for FileGrant {
    fn drop(&mut self) {
        let bytes = self.bytes;
        self.limits.with_usage(&self.tenant, |u| {
            u.open_files = u.open_files.saturating_sub(1);
            u.open_bytes = u.open_bytes.saturating_sub(bytes);
        });
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

/// Refreshes what each tenant holds from the catalog, every second.
pub struct UsageWorker {
    pub limits: Arc<Limits>,
    pub catalog: Catalog,
}

impl Worker for UsageWorker {
    fn name(&self) -> String {
        "quota usage".into()
    }

    async fn work(&mut self) -> Result<WorkerState, WorkerError> {
        let held = self.catalog.run(|c| c.held_per_tenant()).await?;
        self.limits.set_held(&held);
        Ok(WorkerState::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(Duration::from_secs(1)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn limits(quota: Quota) -> Arc<Limits> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("d.toml");
        std::fs::write(&file, "[[tenants]]\nid = \"acme\"\n").unwrap();
        let mut config: Config = crate::config::load(&file).unwrap();
        config.limits.quota = quota;
        Limits::new(LiveConfig::new(Arc::new(config)))
    }

    #[test]
    fn bytes_files_and_sessions_are_counted_and_given_back() {
        let l = limits(Quota {
            bytes: Some(1000),
            files: Some(3),
            sessions: Some(1),
        });
        let acme = TenantId::parse("acme").unwrap();
        l.set_held(&HashMap::from([("acme".to_string(), (400, 1))]));
        let mut a = l.open_file(&acme, "a.wav").unwrap();
        a.grow_to(500).unwrap();
        let mut b = l.open_file(&acme, "b.wav").unwrap();
        // 400 held + 500 open: 100 left.
        assert_eq!(
            b.grow_to(101).unwrap_err().to_string(),
            "quota exceeded: 1000 B held (quota.bytes)"
        );
        b.grow_to(100).unwrap();
        assert!(
            l.open_file(&acme, "c.wav")
                .err()
                .unwrap()
                .to_string()
                .contains("3 files held")
        );
        // Metadata gets a little room past the quota, so recordings waiting for it can leave.
        let mut m = l.open_file(&acme, "batch.csv").unwrap();
        m.grow_to(10 << 10).unwrap();
        assert!(m.grow_to(METADATA_HEADROOM_BYTES + 1).is_err());
        drop((a, m));
        let _c = l.open_file(&acme, "c.wav").unwrap();
        let s = l.open_session(&acme).unwrap();
        assert!(
            l.open_session(&acme)
                .err()
                .unwrap()
                .to_string()
                .contains("1 sessions at once")
        );
        drop(s);
        l.open_session(&acme).unwrap();
    }
}
