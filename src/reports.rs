//! Reports for tenants: `{drop}/reports/<metadata file>.report.csv` (one line per row, or one
//! line for a file rejected as a whole) and `{drop}/reports/orphans.csv`, rewritten atomically
//! whenever the catalog flags them stale.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::catalog::{Catalog, CatalogError, OrphanLine, ReportLine};
use crate::dropbox::{DropRoot, REPORTS_DIR, RelPath};
use crate::fsutil;
use crate::tenant::TenantId;

/// Changes within this window are written as one rewrite.
const DEBOUNCE: Duration = Duration::from_millis(200);

const REPORT_HEADER: [&str; 5] = ["row", "conversation_id", "recording", "status", "detail"];

fn write_line<W: std::io::Write>(w: &mut csv::Writer<W>, l: &ReportLine) -> csv::Result<()> {
    let row = l.row.map(|r| r.to_string()).unwrap_or_default();
    w.write_record([row.as_str(), &l.conversation_id, &l.recording, l.status, &l.detail])
}

pub fn report_csv(lines: &[ReportLine]) -> Vec<u8> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record(REPORT_HEADER);
    for l in lines {
        let _ = write_line(&mut w, l);
    }
    w.into_inner().unwrap_or_default()
}

pub fn orphans_csv(lines: &[OrphanLine]) -> Vec<u8> {
    let iso = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default()
    };
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record(["recording", "bytes", "received_at", "orphan_since", "detail"]);
    for l in lines {
        let _ = w.write_record([
            l.recording.as_str(),
            &l.bytes.to_string(),
            &iso(l.received_at),
            &iso(l.orphan_since),
            "no metadata row named this recording within the grace period",
        ]);
    }
    w.into_inner().unwrap_or_default()
}

#[derive(Debug, thiserror::Error)]
enum ReportError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Csv(#[from] csv::Error),
}

#[derive(Clone)]
pub struct Reporter {
    pub catalog: Catalog,
    pub drop: DropRoot,
    pub wake: Arc<Notify>,
}

impl Reporter {
    pub async fn run(self, cancel: CancellationToken) {
        loop {
            let this = self.clone();
            let started = std::time::Instant::now();
            match tokio::task::spawn_blocking(move || this.write_stale()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "cannot write reports"),
                Err(e) => tracing::error!(error = %e, "report task panicked"),
            }
            // Big reports are rewritten less often, so that they take a bounded share of the
            // catalog's time (about a fifth) however large a batch is.
            let pause = DEBOUNCE.max(started.elapsed() * 4);
            tokio::select! {
                _ = cancel.cancelled() => {
                    // Last pass so reports match what happened before the stop.
                    let this = self.clone();
                    let _ = tokio::task::spawn_blocking(move || this.write_stale()).await;
                    return;
                }
                _ = self.wake.notified() => tokio::time::sleep(pause).await,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }

    /// Rewrites every stale report. Blocking.
    pub fn write_stale(&self) -> Result<(), CatalogError> {
        loop {
            let batch = self.catalog.stale_reports(200)?;
            for r in &batch {
                let (Ok(tenant), Some(rel)) = (TenantId::parse(&r.tenant), RelPath::parse(&r.rel_path)) else {
                    self.catalog.report_written(r.metadata_file_id, r.version)?;
                    continue;
                };
                let path = self
                    .drop
                    .tenant_dir(&tenant)
                    .join(REPORTS_DIR)
                    .join(format!("{}.report.csv", rel.as_str()));
                match self.write_report(r.metadata_file_id, &path) {
                    Ok(()) => self.catalog.report_written(r.metadata_file_id, r.version)?,
                    Err(ReportError::Catalog(e)) => return Err(e),
                    Err(e) => {
                        tracing::warn!(tenant = %tenant, file = rel.as_str(), error = %e, "cannot write report");
                        return Ok(());
                    }
                }
            }
            if batch.len() < 200 {
                break;
            }
        }
        self.write_orphans()
    }

    /// Streams one report into place; memory stays bounded by a line.
    fn write_report(&self, metadata_file_id: i64, path: &std::path::Path) -> Result<(), ReportError> {
        let mut w = csv::Writer::from_writer(fsutil::AtomicFile::create(path)?);
        w.write_record(REPORT_HEADER)?;
        let mut failed = None;
        self.catalog.each_report_line(metadata_file_id, |l| {
            if failed.is_none() {
                failed = write_line(&mut w, &l).err();
            }
        })?;
        if let Some(e) = failed {
            return Err(e.into());
        }
        let file = w.into_inner().map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(file.commit()?)
    }

    fn write_orphans(&self) -> Result<(), CatalogError> {
        for (tenant, version) in self.catalog.stale_orphan_reports()? {
            let Ok(tid) = TenantId::parse(&tenant) else { continue };
            let lines = self.catalog.orphan_lines(&tenant)?;
            let path = self.drop.tenant_dir(&tid).join(REPORTS_DIR).join("orphans.csv");
            match fsutil::write_atomic(&path, &orphans_csv(&lines)) {
                Ok(()) => self.catalog.orphan_report_written(&tenant, version)?,
                Err(e) => tracing::warn!(tenant = %tenant, error = %e, "cannot write orphans.csv"),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_csv_quotes_what_needs_quoting() {
        let lines = [
            ReportLine {
                row: Some(2),
                conversation_id: "C-1".into(),
                recording: "c1.wav".into(),
                status: "forwarded",
                detail: String::new(),
            },
            ReportLine {
                row: None,
                conversation_id: String::new(),
                recording: String::new(),
                status: "rejected",
                detail: "missing column \"A\", \"B\"".into(),
            },
        ];
        let text = String::from_utf8(report_csv(&lines)).unwrap();
        assert_eq!(
            text,
            "row,conversation_id,recording,status,detail\n2,C-1,c1.wav,forwarded,\n,,,rejected,\"missing column \"\"A\"\", \"\"B\"\"\"\n"
        );
    }
}
