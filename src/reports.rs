//! Reports for tenants: `{drop}/reports/<metadata file>.report.csv` (one line per row, or one
//! line for a file rejected as a whole) and `{drop}/reports/orphans.csv`, rewritten atomically
//! whenever the catalog flags them stale.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::backoff::Retry;
use crate::catalog::{Catalog, CatalogError, OrphanLine, ReportLine, now_ms};
use crate::dropbox::{DropRoot, REPORTS_DIR, RelPath};
use crate::fsutil;
use crate::tenant::TenantId;
use crate::worker::{Worker, WorkerError, WorkerState};
use std::io::Write as _;

/// The lease of the node writing reports (see `catalog/leases.rs`).
const REPORTS_LEASE: &str = "reports";

/// Changes within this window are written as one rewrite.
const DEBOUNCE: Duration = Duration::from_millis(200);

const REPORT_HEADER: [&str; 5] = ["row", "conversation_id", "recording", "status", "detail"];

fn write_line<W: std::io::Write>(w: &mut csv::Writer<W>, l: &ReportLine) -> csv::Result<()> {
    let row = l.row.map(|r| r.to_string()).unwrap_or_default();
    w.write_record([
        row.as_str(),
        &cell(&l.conversation_id),
        &cell(&l.recording),
        l.status,
        &cell(&l.detail),
    ])
}

/// A value as a spreadsheet may show it, never run it: a cell that would be read as a formula
/// (starting with `=`, `+`, `-`, `@`, a tab or a carriage return) gets a leading `'` (SPEC §3;
/// OWASP's advice on CSV injection).
pub fn cell(value: &str) -> std::borrow::Cow<'_, str> {
    match value.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => format!("'{value}").into(),
        _ => value.into(),
    }
}

pub fn report_csv(lines: &[ReportLine]) -> Vec<u8> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record(REPORT_HEADER);
    for l in lines {
        let _ = write_line(&mut w, l);
    }
    w.into_inner().unwrap_or_default()
}

/// The report's file name for a metadata file: `<name>.report.csv`, or, where that would pass
/// the 255 bytes a file name may have, the name cut short with a hash of the whole name, so
/// that two long names never share a report.
pub fn report_name(file_name: &str) -> String {
    const SUFFIX: &str = ".report.csv";
    const MAX: usize = 255;
    if file_name.len() + SUFFIX.len() <= MAX {
        return format!("{file_name}{SUFFIX}");
    }
    use sha2::Digest;
    let hash = hex::encode(&sha2::Sha256::digest(file_name.as_bytes())[..4]);
    let mut keep = MAX - SUFFIX.len() - hash.len() - 1;
    while !file_name.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}~{hash}{SUFFIX}", &file_name[..keep])
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
            &*cell(&l.recording),
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

/// A busy catalog may clear, a broken catalog row will not. Reports go into the tenant's own
/// folder, which the tenant changes under us (a link planted where `reports/` was, a folder
/// taken away and put back): whatever writing there met may be gone at the next try.
impl Retry for ReportError {
    fn retry_helps(&self) -> bool {
        match self {
            ReportError::Catalog(e) => e.retry_helps(),
            ReportError::Io(_) => true,
            ReportError::Csv(e) => matches!(e.kind(), csv::ErrorKind::Io(_)),
        }
    }
}

/// A report that could not be written, and when it is tried again.
#[derive(Debug, Clone, Copy)]
struct Failing {
    /// Failures in a row, for the backoff.
    failures: i64,
    /// Not before then; `None` when no retry mends it (a broken catalog row): not until the
    /// report changes, or the daemon restarts.
    not_before: Option<std::time::Instant>,
    /// The report's change counter when it failed.
    version: i64,
}

impl Failing {
    /// Whether the report at `version` waits still.
    fn waits(&self, version: i64, now: std::time::Instant) -> bool {
        match self.not_before {
            Some(at) => now < at,
            None => version == self.version,
        }
    }
}

/// A report that could not be written waits this long before the next try, doubling.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(300);

#[derive(Clone)]
pub struct Reporter {
    pub catalog: Catalog,
    pub drop: DropRoot,
    pub wake: Arc<Notify>,
    /// Reports that failed. Memory only: a restart tries them all again at once, which is
    /// what a restart is for.
    failing: Arc<Mutex<HashMap<i64, Failing>>>,
    /// How long the slowest report of the last pass took to write: big reports are rewritten
    /// less often.
    slowest_report: Duration,
}

impl Reporter {
    pub fn new(catalog: Catalog, drop: DropRoot, wake: Arc<Notify>) -> Self {
        Reporter {
            catalog,
            drop,
            wake,
            failing: Arc::default(),
            slowest_report: Duration::ZERO,
        }
    }

    /// Rewrites every stale report whose turn it is; one that cannot be written is logged and
    /// retried later, never in the way of the others. Blocking. Gives the time the slowest one
    /// took.
    pub fn write_stale(&self) -> Result<Duration, CatalogError> {
        let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        let mut after = 0;
        let mut slowest = Duration::ZERO;
        loop {
            let batch = self.catalog.reports().stale_reports(after, 200)?;
            for r in &batch {
                after = r.metadata_file_id;
                if failing
                    .get(&r.metadata_file_id)
                    .is_some_and(|f| f.waits(r.version, std::time::Instant::now()))
                {
                    continue;
                }
                let (Ok(tenant), Some(rel)) = (TenantId::parse(&r.tenant), RelPath::parse(&r.rel_path)) else {
                    self.catalog.reports().report_written(r.metadata_file_id, r.version)?;
                    continue;
                };
                let path = self.report_path(&tenant, &rel);
                let started = std::time::Instant::now();
                let written = self.write_report(r.metadata_file_id, &tenant, &rel);
                slowest = slowest.max(started.elapsed());
                match written {
                    Ok(()) => {
                        self.catalog.reports().report_written(r.metadata_file_id, r.version)?;
                        failing.remove(&r.metadata_file_id);
                    }
                    // A busy catalog holds up every report: the pass backs off as a whole.
                    Err(ReportError::Catalog(e)) if e.retry_helps() => return Err(e),
                    Err(e) => {
                        let failures = failing.get(&r.metadata_file_id).map_or(1, |f| f.failures + 1);
                        let not_before = if e.retry_helps() {
                            let delay = crate::backoff::exponential(failures, RETRY_MIN, RETRY_MAX);
                            tracing::warn!(tenant = %tenant, file = rel.as_str(), report = %path.display(), error = %e,
                                retry_in = ?delay, "cannot write report; the others go on");
                            Some(std::time::Instant::now() + delay)
                        } else {
                            tracing::error!(tenant = %tenant, file = rel.as_str(), report = %path.display(), error = %e,
                                "cannot write report, and no retry mends it; the others go on, it is tried again once it changes");
                            None
                        };
                        let version = r.version;
                        failing.insert(
                            r.metadata_file_id,
                            Failing {
                                failures,
                                not_before,
                                version,
                            },
                        );
                    }
                }
            }
            if batch.len() < 200 {
                break;
            }
        }
        self.write_orphans()?;
        Ok(slowest)
    }

    fn report_path(&self, tenant: &TenantId, rel: &RelPath) -> std::path::PathBuf {
        let mut path = self.drop.tenant_dir(tenant).join(REPORTS_DIR);
        if !rel.dir().is_empty() {
            path.push(rel.dir());
        }
        path.join(report_name(rel.file_name()))
    }

    /// A report file in the tenant's `reports/` folder (`dir` below it), the folder created
    /// and held open with no link followed: a link planted there leads nowhere.
    fn report_file(&self, tenant: &TenantId, dir: &str, name: &str) -> std::io::Result<fsutil::AtomicFile> {
        let folder = if dir.is_empty() {
            REPORTS_DIR.to_owned()
        } else {
            format!("{REPORTS_DIR}/{dir}")
        };
        let dir = self.drop.confined(tenant)?.ensure_dir(&folder)?;
        fsutil::AtomicFile::create_in(dir, name)
    }

    /// Streams one report into place; memory stays bounded by a line.
    fn write_report(&self, metadata_file_id: i64, tenant: &TenantId, rel: &RelPath) -> Result<(), ReportError> {
        let file = self.report_file(tenant, rel.dir(), &report_name(rel.file_name()))?;
        let mut w = csv::Writer::from_writer(file);
        w.write_record(REPORT_HEADER)?;
        let mut failed = None;
        self.catalog.reports().each_report_line(metadata_file_id, |l| {
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
        for (tenant, version) in self.catalog.reports().stale_orphan_reports()? {
            let Ok(tid) = TenantId::parse(&tenant) else { continue };
            let lines = self.catalog.reports().orphan_lines(&tenant)?;
            let written = self.report_file(&tid, "", "orphans.csv").and_then(|mut f| {
                f.write_all(&orphans_csv(&lines))?;
                f.commit()
            });
            match written {
                Ok(()) => self.catalog.reports().orphan_report_written(&tenant, version)?,
                Err(e) => tracing::warn!(tenant = %tenant, error = %e, "cannot write orphans.csv"),
            }
        }
        Ok(())
    }
}

/// The pause before the next pass. A big report is rewritten less often, so that rewriting it
/// takes a bounded share of the catalog's time (about a fifth) however large its file is. The
/// pass as a whole does not count: many small reports are work that must be done, and pausing
/// for their sum let the backlog outgrow the writer under load (the soak found reports minutes
/// behind).
fn pause_after(slowest_report: Duration) -> Duration {
    DEBOUNCE.max(slowest_report * 4)
}

impl Worker for Reporter {
    fn name(&self) -> String {
        "reports".into()
    }

    async fn work(&mut self) -> Result<WorkerState, WorkerError> {
        let this = self.clone();
        // One node writes reports at a time across the nodes that share the catalog: a pass
        // holds this lease (renewed by the keeper while it runs) and gives it back after, so
        // the next pass is whichever node's is due first. (On SQLite, with no other node, it is
        // taken without a write.)
        if !self
            .catalog
            .run(|c| c.leases().try_take(REPORTS_LEASE, now_ms()))
            .await?
        {
            return Ok(WorkerState::Idle);
        }
        let written = tokio::task::spawn_blocking(move || this.write_stale()).await;
        if let Err(e) = self.catalog.run(|c| c.leases().release(REPORTS_LEASE)).await {
            tracing::warn!(error = %e, "cannot give back the reports' lease: it runs out instead");
        }
        self.slowest_report = written??;
        Ok(WorkerState::Idle)
    }

    async fn wait_for_work(&mut self) {
        let pause = pause_after(self.slowest_report);
        tokio::select! {
            _ = self.wake.notified() => tokio::time::sleep(pause).await,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }

    /// A last pass, so reports match what happened before the stop.
    async fn stopping(&mut self) {
        let this = self.clone();
        let _ = tokio::task::spawn_blocking(move || this.write_stale()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_no_retry_mends_waits_for_a_change_others_for_their_time() {
        let now = std::time::Instant::now();
        let later = now + Duration::from_secs(5);
        let hopeless = Failing {
            failures: 1,
            not_before: None,
            version: 3,
        };
        assert!(hopeless.waits(3, later));
        assert!(!hopeless.waits(4, now));
        let busy = Failing {
            not_before: Some(later),
            ..hopeless
        };
        assert!(busy.waits(4, now));
        assert!(!busy.waits(3, later));

        let io = |code| ReportError::Io(std::io::Error::from_raw_os_error(code));
        assert!(io(libc::ENOSPC).retry_helps());
        // The tenant's folder: a link there now may be gone at the next try.
        assert!(io(libc::ENOENT).retry_helps());
        assert!(!ReportError::Catalog(CatalogError::Corrupt("bad row".into())).retry_helps());
        let csv_io = csv::Error::from(std::io::Error::from_raw_os_error(libc::EIO));
        assert!(ReportError::Csv(csv_io).retry_helps());
    }

    #[test]
    fn the_pause_between_passes_follows_the_slowest_report_not_the_pass() {
        // Small reports: the debounce only, however many a pass wrote.
        assert_eq!(pause_after(Duration::from_millis(3)), DEBOUNCE);
        // A big one: four times its own write, so it takes about a fifth of the time.
        assert_eq!(pause_after(Duration::from_secs(2)), Duration::from_secs(8));
    }

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
