//! Reconciling one tenant's drop folder with the catalog: at start-up, when the watcher lost
//! events, when a folder was moved in (whole folder), and when a new sub-folder appeared
//! (that folder only). A scan only enqueues work; the files themselves are processed as
//! ordinary work items, in turn with other tenants'.

use std::collections::HashMap;

use super::{Intake, IntakeError, SETTLE};
use crate::catalog::{IntakeKind, NewIntake, RecordedFile, Via, ms, now_ms};
use crate::dropbox::RelPath;
use crate::tenant::TenantId;

impl Intake {
    /// Reconciles `under` (a new sub-folder) or, with `None`, the tenant's whole folder.
    pub(super) fn scan(&self, tenant: &TenantId, under: Option<&RelPath>) -> Result<(), IntakeError> {
        match under {
            Some(dir) => self.scan_new_folder(tenant, dir),
            None => self.scan_tenant(tenant),
        }
    }

    /// Files in a new folder that no event announced (written before the watch on it was in
    /// place): each arrives once it has stopped changing for [`SETTLE`].
    fn scan_new_folder(&self, tenant: &TenantId, dir: &RelPath) -> Result<(), IntakeError> {
        let due = now_ms() + ms(SETTLE);
        let mut items = Vec::new();
        for rel in self.drop.scan(tenant, Some(dir))? {
            if let Some(stamp) = self.stat(tenant, &rel) {
                items.push(NewIntake {
                    kind: IntakeKind::Settle,
                    size: Some(stamp.size),
                    mtime_ns: Some(stamp.mtime_ns),
                    ..self.file_item(tenant, &rel, Via::Local, due)
                });
            }
        }
        self.catalog.intake_queue().enqueue_intake(&items, now_ms())?;
        Ok(())
    }

    /// Files that vanished are marked gone; files not recorded yet (or changed since) and
    /// parses left unfinished become work items; files whose fate is decided leave the folder.
    fn scan_tenant(&self, tenant: &TenantId) -> Result<(), IntakeError> {
        crate::fault::panic_point("scan", tenant.as_str());
        metrics::counter!("dropsync_rescans_total", "tenant" => tenant.to_string()).increment(1);
        let on_disk = self.drop.scan_tenant(tenant)?;
        let mut recorded: HashMap<String, RecordedFile> = self
            .catalog
            .forward_queue()
            .recorded_files(tenant.as_str())?
            .into_iter()
            .map(|f| (f.rel_path.clone(), f))
            .collect();
        let now = now_ms();
        let mut items = Vec::new();
        for rel in on_disk {
            let known = recorded.remove(rel.as_str());
            let unchanged = match (known, self.stat(tenant, &rel)) {
                (Some(f), Some(disk)) => {
                    (f.size, f.mtime_ns) == (disk.size, disk.mtime_ns) && f.ino.is_none_or(|ino| ino == disk.ino)
                }
                _ => false,
            };
            if !unchanged {
                items.push(self.file_item(tenant, &rel, Via::Local, now));
            }
        }
        // What is still in `recorded` is no longer on disk. (Files leaving for the archive are
        // the archiver's to settle.)
        let gone: Vec<i64> = recorded
            .into_values()
            .filter(|f| !f.leaving)
            .map(|f| f.file_id)
            .collect();
        if !gone.is_empty() {
            tracing::info!(tenant = %tenant, files = gone.len(), "files left the drop folder behind our back");
            self.catalog.forward_queue().files_gone(&gone, now)?;
        }
        for rel in self.catalog.files().parsing_files(tenant.as_str())? {
            if let Some(rel) = RelPath::parse(&rel) {
                items.push(self.file_item(tenant, &rel, Via::Local, now));
            }
        }
        if !items.is_empty() {
            tracing::info!(tenant = %tenant, files = items.len(), "scan found files to take in");
        }
        self.catalog.intake_queue().enqueue_intake(&items, now)?;
        let candidates = self.catalog.forward_queue().archive_candidates(tenant.as_str())?;
        self.archiver.archive(&candidates)?;
        Ok(())
    }
}
