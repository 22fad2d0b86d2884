//! Zip batches at intake: unpacked within the tenant's limits and quota (see
//! [`crate::arrival::unpack_zip`]), each entry then a work item of its own, carrying the digest
//! taken as it was written.

use std::sync::Arc;

use super::{Intake, IntakeError};
use crate::arrival::{self, UnzipError, ZipLimits, ZipQuota};
use crate::catalog::{NewIntake, Via, now_ms};
use crate::dropbox::RelPath;
use crate::tenant::Tenant;

impl Intake {
    /// Unpacks the zip batch `rel` (recorded as `file_id`, reported as `id`), records what was
    /// refused, queues the entries, and sends the archive to the archive.
    pub(super) fn unpack(
        &self,
        tenant: &Tenant,
        file_id: i64,
        id: i64,
        rel: &RelPath,
        via: Via,
    ) -> Result<(), IntakeError> {
        tracing::info!("unpacking zip batch");
        // The archive and its folder, each held open with no link on the way.
        let confined = self.drop.confined(&tenant.id)?;
        let opened = confined
            .open_file(rel.as_str())
            .and_then(|f| Ok((f, confined.dir(rel.dir())?)));
        let unpacked = match opened {
            Ok((archive, dest)) => {
                let quota = ZipQuota {
                    limits: &self.quotas,
                    tenant: &tenant.id,
                };
                let limits = ZipLimits::of(&self.config.get().matching);
                arrival::unpack_zip(archive, Arc::new(dest), rel.dir(), &limits, &quota)
            }
            Err(e) => Err(UnzipError::Io {
                what: "the archive cannot be opened".into(),
                source: e,
            }),
        };
        match unpacked {
            Ok(unpacked) => {
                for (name, why) in &unpacked.refused {
                    tracing::warn!(entry = %name, reason = %why, "zip entry refused");
                }
                tracing::info!(
                    files = unpacked.files.len(),
                    refused = unpacked.refused.len(),
                    "zip batch unpacked"
                );
                self.catalog.files().finish_zip(id, Ok(&unpacked.refused))?;
                // Each entry is a work item of its own, taken in turn with other tenants' work
                // (recordings before metadata, as clients send them).
                let now = now_ms();
                let items: Vec<NewIntake> = unpacked
                    .files
                    .iter()
                    .map(|entry| {
                        let mut item = self.file_item(&tenant.id, &entry.rel, via, now);
                        item.known(entry.digest.as_ref());
                        item
                    })
                    .collect();
                self.catalog.intake_queue().enqueue_intake(&items, now)?;
                tracing::info!(files = items.len(), "zip entries announced");
            }
            // Our side failed: the item is tried again later, as any other.
            Err(UnzipError::Io { what, source }) => {
                tracing::warn!(error = %source, "{what}; the zip batch is unpacked again later");
                return Err(IntakeError::Io(source));
            }
            Err(UnzipError::Refused(reason)) => {
                tracing::warn!(reason = %reason, "zip batch rejected");
                self.catalog.files().finish_zip(id, Err(reason))?;
            }
        }
        self.archiver.archive(&[file_id])?;
        Ok(())
    }
}
