//! Intake: the stage between the ingresses and the catalog.
//!
//! Ingress events become durable work items first ([`lanes::Recorder`]); intake lanes
//! ([`lanes::Lane`]) take them a tenant at a time, in turn, so that one tenant's 3 GiB zip or
//! million-row CSV holds up only that tenant. Processing a unit of work ([`Intake::process`]):
//! recordings are hashed (unless their ingress hashed them while writing) and recorded, zip
//! batches unpacked into new work items, metadata files streamed through the matcher into the
//! catalog in chunks; rescans reconcile a tenant's folder with the catalog ([`scan`]). A unit
//! that fails is retried with backoff; the items around it go on.

pub mod lanes;
mod scan;
mod unzip;

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::archive::Archiver;
use crate::backoff::Retry;
use crate::catalog::{
    Catalog, CatalogError, IntakeItem, IntakeKind, IntakeOutcome, NewFile, NewIntake, PendingParse, Registered,
    RowInput, Via, ms, now_ms,
};
use crate::config::LiveConfig;
use crate::dropbox::{DropRoot, FileKind, RelPath};
use crate::limits::Limits;
use crate::matching::{self, MetadataFormat, ReadError, RowContext, RowVerdict};
use crate::tenant::{Tenant, TenantId};

/// Rows handed to the catalog at a time while parsing a metadata file, and the cells (columns
/// of all its rows) a chunk holds at most: a chunk of very wide rows (150,000 columns) is a few
/// rows, so what a parse holds in memory stays small whatever the file's shape.
const ROWS_PER_CHUNK: usize = 2000;
const CELLS_PER_CHUNK: usize = 200_000;

/// How long a file found without an event must stay unchanged before it counts as arrived.
const SETTLE: Duration = Duration::from_secs(1);

/// A failed work item is tried again after this long, doubling up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// As the catalog or the I/O error says, but for a file that left the drop folder meanwhile:
/// the next attempt finds it gone and records so.
impl Retry for IntakeError {
    fn retry_helps(&self) -> bool {
        match self {
            IntakeError::Catalog(e) => e.retry_helps(),
            IntakeError::Io(e) => e.kind() == std::io::ErrorKind::NotFound || e.retry_helps(),
        }
    }
}

/// An arrival checked and read, ready to be recorded.
struct Prepared {
    tenant: TenantId,
    rel: RelPath,
    via: Via,
    kind: FileKind,
    size: u64,
    mtime_ns: i64,
    ino: u64,
    dev: u64,
    sha256: Option<String>,
    duration_ms: Option<u64>,
    audio_error: Option<String>,
}

/// What a file on disk looks like: tells a changed or re-sent file from the one recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime_ns: i64,
    ino: u64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            size: meta.len(),
            mtime_ns: crate::fsutil::mtime_ns(meta),
            ino: meta.ino(),
        }
    }
}

/// What checking an arrival found.
enum Check {
    /// New or changed: to be recorded.
    New(Prepared),
    /// Recorded already with this size and mtime.
    Unchanged(RelPath),
    /// Gone, or not a regular file inside the drop folder: nothing to record.
    Skip,
}

/// Shared by the intake lanes; all methods block (run them off the runtime).
#[derive(Clone)]
pub struct Intake {
    pub catalog: Catalog,
    pub drop: DropRoot,
    /// The configuration in force (replaced on reload).
    pub config: LiveConfig,
    pub archiver: Archiver,
    /// Woken when conversations become ready.
    pub forwarder: Arc<Notify>,
    /// Woken when reports may be out of date.
    pub reports: Arc<Notify>,
    /// Tenants' quotas, which zip batches are unpacked within.
    pub quotas: Arc<Limits>,
}

impl Intake {
    fn stat(&self, tenant: &TenantId, rel: &RelPath) -> Option<Stamp> {
        let meta = std::fs::symlink_metadata(self.drop.path_of(tenant, rel)).ok()?;
        meta.is_file().then(|| Stamp::of(&meta))
    }

    fn tenant(&self, id: &TenantId) -> Option<Tenant> {
        self.config.get().tenant(id.as_str()).cloned()
    }

    /// The work item for a file: parsed and unpacked files are heavy (taken alone).
    pub fn file_item(&self, tenant: &TenantId, rel: &RelPath, via: Via, due: i64) -> NewIntake {
        let kind = FileKind::of(rel.file_name(), &self.config.get().matching);
        let heavy = matches!(kind, FileKind::Metadata(_) | FileKind::Zip);
        NewIntake::file(tenant.as_str(), rel.as_str(), via, heavy, due)
    }

    /// How a failed attempt at `item` ends: retried with backoff, or `failed` for good once it
    /// has failed `max_attempts` times or no retry can mend it (a poison file must not loop
    /// for ever, nor hide from its tenant).
    pub fn failed_attempt(&self, item: &IntakeItem, error: &str, retry_helps: bool, now: i64) -> IntakeOutcome {
        let attempt = item.attempts + 1;
        if !retry_helps || attempt >= i64::from(self.config.get().limits.max_attempts) {
            tracing::error!(tenant = %item.tenant, file = %item.rel_path, error, attempt,
                "intake failed for good; `dropsync retry` queues it again");
            return IntakeOutcome::Failed {
                error: error.to_owned(),
                at: now,
            };
        }
        let at = now + ms(crate::backoff::exponential(attempt, RETRY_MIN, RETRY_MAX));
        tracing::warn!(tenant = %item.tenant, file = %item.rel_path, error, attempt, "intake failed; will retry");
        IntakeOutcome::Retry {
            error: error.to_owned(),
            at,
        }
    }

    /// Processes one unit of a tenant's work; says for each item how it ended. Never fails as
    /// a whole: an item whose processing fails is retried later, on its own.
    pub fn process(&self, items: Vec<IntakeItem>) -> Vec<(IntakeItem, IntakeOutcome)> {
        let now = now_ms();
        let retry =
            |item: &IntakeItem, e: &IntakeError| self.failed_attempt(item, &e.to_string(), e.retry_helps(), now);
        let mut out = Vec::with_capacity(items.len());
        let mut files = Vec::new();
        for item in items {
            let Ok(tenant) = TenantId::parse(&item.tenant) else {
                out.push((item, IntakeOutcome::Done));
                continue;
            };
            if self.config.get().tenant(tenant.as_str()).is_none() {
                tracing::warn!(tenant = %tenant, file = %item.rel_path, "file in the drop folder of an unknown tenant; ignored");
                out.push((item, IntakeOutcome::Done));
                continue;
            }
            match item.kind {
                IntakeKind::Scan => {
                    let under = RelPath::parse(&item.rel_path);
                    let outcome = match self.scan(&tenant, under.as_ref()) {
                        Ok(()) => IntakeOutcome::Done,
                        Err(e) => retry(&item, &e),
                    };
                    out.push((item, outcome));
                }
                IntakeKind::Settle => match self.settled(&tenant, &item) {
                    Some(outcome) => out.push((item, outcome)),
                    None => files.push((tenant, item)),
                },
                IntakeKind::File => files.push((tenant, item)),
            }
        }
        if files.is_empty() {
            return out;
        }
        // Each file checked and hashed, all recorded in one transaction, then followed up.
        let mut prepared = Vec::with_capacity(files.len());
        for (tenant, item) in files {
            let Some(rel) = RelPath::parse(&item.rel_path) else {
                out.push((item, IntakeOutcome::Done));
                continue;
            };
            match self.prepare(&tenant, rel, &item) {
                Ok(Check::New(p)) => prepared.push((p, item)),
                Ok(Check::Skip) => out.push((item, IntakeOutcome::Done)),
                // Recorded as it is: its parse may still have to finish (a failed attempt).
                Ok(Check::Unchanged(rel)) => {
                    let outcome = match self.resume(&tenant, &rel, item.via) {
                        Ok(()) => IntakeOutcome::Done,
                        Err(e) => retry(&item, &e),
                    };
                    out.push((item, outcome));
                }
                Err(e) => {
                    let outcome = retry(&item, &e);
                    out.push((item, outcome));
                }
            }
        }
        // Those recorded are followed up; those an error stopped are tried again.
        let (registered, stopped) = self.register(&prepared);
        let mut prepared = prepared.into_iter();
        for ((p, item), outcome) in prepared.by_ref().zip(registered) {
            let outcome = match self.follow_up(&p, outcome) {
                Ok(()) => IntakeOutcome::Done,
                Err(e) => retry(&item, &e),
            };
            out.push((item, outcome));
        }
        if let Err(e) = stopped {
            for (_, item) in prepared {
                let outcome = retry(&item, &e);
                out.push((item, outcome));
            }
        }
        self.reports.notify_one();
        out
    }

    /// A settling file: gone (done), changed (settles again), or unchanged (`None`: it
    /// arrives now, as a file).
    fn settled(&self, tenant: &TenantId, item: &IntakeItem) -> Option<IntakeOutcome> {
        let Some(rel) = RelPath::parse(&item.rel_path) else {
            return Some(IntakeOutcome::Done);
        };
        match self.stat(tenant, &rel) {
            None => Some(IntakeOutcome::Done),
            Some(now) if Some(now.size) == item.size && Some(now.mtime_ns) == item.mtime_ns => None,
            Some(now) => Some(IntakeOutcome::Settling {
                size: now.size,
                mtime_ns: now.mtime_ns,
                at: now_ms() + ms(SETTLE),
            }),
        }
    }

    fn register(&self, prepared: &[(Prepared, IntakeItem)]) -> (Vec<Registered>, Result<(), IntakeError>) {
        if prepared.is_empty() {
            return (Vec::new(), Ok(()));
        }
        let news: Vec<NewFile<'_>> = prepared
            .iter()
            .map(|(p, _)| NewFile {
                tenant: p.tenant.as_str(),
                rel: &p.rel,
                kind: p.kind,
                via: p.via,
                size: p.size,
                mtime_ns: p.mtime_ns,
                ino: p.ino,
                dev: p.dev,
                sha256: p.sha256.clone(),
                duration_ms: p.duration_ms,
                audio_error: p.audio_error.clone(),
            })
            .collect();
        let (outcomes, stopped) = self
            .catalog
            .files()
            .register_files(&news, now_ms(), &self.unknown_reason());
        for ((p, _), outcome) in prepared.iter().zip(&outcomes) {
            if *outcome != Registered::Duplicate {
                metrics::counter!("dropsync_received_files_total", "tenant" => p.tenant.to_string(), "via" => p.via.as_str())
                    .increment(1);
            }
        }
        (outcomes, stopped.map_err(IntakeError::from))
    }

    fn unknown_reason(&self) -> String {
        format!(
            "not a recording ({}) or a metadata file (csv, tsv, json, jsonl, ndjson) or a zip batch",
            self.config.get().matching.recording_extensions.join(", ")
        )
    }

    /// Checks an arrival and reads what the catalog needs: hashes a recording unless its
    /// ingress hashed it while writing (the digest in the work item, if it still fits).
    fn prepare(&self, tenant: &TenantId, rel: RelPath, item: &IntakeItem) -> Result<Check, IntakeError> {
        let file = match self.drop.open_confined(tenant, &rel) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Removed, or renamed away: the catalog no longer counts it as present.
                self.catalog
                    .forward_queue()
                    .path_gone(tenant.as_str(), &rel, now_ms())?;
                return Ok(Check::Skip);
            }
            Err(e) => {
                tracing::warn!(tenant = %tenant, file = rel.as_str(), error = %e, "not a regular file inside the drop folder; ignored");
                return Ok(Check::Skip);
            }
        };
        let meta = file.metadata()?;
        let Stamp { size, mtime_ns, ino } = Stamp::of(&meta);
        if self
            .catalog
            .files()
            .is_present_unchanged(tenant.as_str(), &rel, size, mtime_ns, ino)?
        {
            return Ok(Check::Unchanged(rel));
        }
        let kind = FileKind::of(rel.file_name(), &self.config.get().matching);
        let known = item
            .sha256
            .as_deref()
            .filter(|_| item.size == Some(meta.len()) && item.mtime_ns == Some(mtime_ns));
        let sha256 = match (kind, known) {
            (FileKind::Recording, Some(known)) => {
                metrics::counter!("dropsync_recording_digests_total", "from" => "upload").increment(1);
                Some(known.to_owned())
            }
            (FileKind::Recording, None) => {
                metrics::counter!("dropsync_recording_digests_total", "from" => "disk").increment(1);
                Some(hex::encode(crate::fsutil::hash_reader(&file)?.1))
            }
            _ => None,
        };
        let (duration_ms, audio_error) = match kind {
            // A chat transcript has no length: it counts no minutes.
            FileKind::Recording if crate::matching::is_transcript(rel.file_name()) => (None, None),
            FileKind::Recording => self.probe(tenant, &rel, &file),
            _ => (None, None),
        };
        Ok(Check::New(Prepared {
            tenant: tenant.clone(),
            rel,
            via: item.via,
            kind,
            size,
            mtime_ns,
            ino,
            dev: meta.dev(),
            sha256,
            duration_ms,
            audio_error,
        }))
    }

    /// A recording's length from its headers; or, when it is not readable audio of its
    /// extension's format and `check_audio` is on, the reason its rows will be rejected.
    fn probe(&self, tenant: &TenantId, rel: &RelPath, file: &std::fs::File) -> (Option<u64>, Option<String>) {
        let ext = rel.file_name().rsplit_once('.').map_or("", |(_, e)| e);
        let result = file
            .try_clone()
            .map_err(|e| crate::audio::NotAudio::unreadable("audio", format!("cannot read it: {e}")))
            .and_then(|mut f| crate::audio::duration_ms(&mut f, ext));
        match result {
            Ok(ms) => (Some(ms), None),
            Err(e) => {
                tracing::warn!(tenant = %tenant, file = rel.as_str(), "{e}");
                metrics::counter!("dropsync_recordings_not_audio_total", "tenant" => tenant.to_string()).increment(1);
                (None, self.config.get().matching.check_audio.then(|| e.to_string()))
            }
        }
    }

    /// A file already recorded as it is: finishes its parse or unpack if an earlier attempt
    /// (or a crash) left it unfinished.
    fn resume(&self, tenant: &TenantId, rel: &RelPath, via: Via) -> Result<(), IntakeError> {
        let Some(PendingParse {
            file_id,
            metadata_file_id,
            format,
            rows_done,
        }) = self.catalog.files().pending_parse(tenant.as_str(), rel)?
        else {
            return Ok(());
        };
        let Some(t) = self.tenant(tenant) else { return Ok(()) };
        let span = tracing::info_span!("arrival", tenant = %tenant, file = rel.as_str(), via = via.as_str());
        let _g = span.enter();
        tracing::info!(rows_done, "resuming an interrupted parse");
        if format == "zip" {
            self.unpack(&t, file_id, metadata_file_id, rel, via)
        } else if let Some(f) = MetadataFormat::from_extension(&format) {
            self.parse_metadata(&t, file_id, metadata_file_id, rel, f, rows_done)
        } else {
            Ok(())
        }
    }

    /// What follows the record of an arrival.
    fn follow_up(&self, p: &Prepared, outcome: Registered) -> Result<(), IntakeError> {
        let Some(tenant) = self.tenant(&p.tenant) else {
            return Ok(());
        };
        let span = tracing::info_span!("arrival", tenant = %p.tenant, file = p.rel.as_str(), via = p.via.as_str());
        let _g = span.enter();
        match outcome {
            Registered::Duplicate => {}
            Registered::Recording { completed, decided, .. } => {
                tracing::info!(bytes = p.size, completed, "recording arrived");
                if completed > 0 {
                    self.forwarder.notify_one();
                }
                self.archiver.archive(&decided)?;
            }
            Registered::Metadata {
                file_id,
                metadata_file_id,
            } => {
                if let FileKind::Metadata(format) = p.kind {
                    self.parse_metadata(&tenant, file_id, metadata_file_id, &p.rel, format, 0)?;
                }
            }
            Registered::Zip {
                file_id,
                metadata_file_id,
            } => self.unpack(&tenant, file_id, metadata_file_id, &p.rel, p.via)?,
            Registered::Unknown { file_id } => {
                tracing::warn!("file rejected: {}", self.unknown_reason());
                self.archiver.archive(&[file_id])?;
            }
        }
        Ok(())
    }

    /// Streams a metadata file through the matcher into the catalog: a first pass finds
    /// whole-file problems (so a broken file leaves no rows behind), a second commits rows in
    /// chunks, skipping rows a crash-interrupted parse already committed.
    fn parse_metadata(
        &self,
        tenant: &Tenant,
        file_id: i64,
        id: i64,
        rel: &RelPath,
        format: MetadataFormat,
        resume_after: u64,
    ) -> Result<(), IntakeError> {
        tracing::info!(resume_after, "reading metadata file");
        crate::fault::panic_point("parse", rel.file_name());
        // This tenant's parse: on PostgreSQL, beside other tenants' (see `Files::of`).
        let files = self.catalog.files().of(tenant.id.as_str());
        let open = || self.drop.open_confined(&tenant.id, rel);
        let mapping = &tenant.mapping;
        let max_row_bytes = self.config.get().matching.max_field_bytes;
        let check = {
            let mut header_checked = matches!(format, MetadataFormat::JsonArray | MetadataFormat::JsonLines);
            let mut header_error = None;
            let mut rows = 0u64;
            let r = matching::read_rows(format, open()?, max_row_bytes, |row| {
                rows += 1;
                if !header_checked && let Ok(record) = &row.record {
                    header_checked = true;
                    if let Err(e) = matching::check_header(mapping, record) {
                        header_error = Some(e);
                        return Err(());
                    }
                }
                Ok(())
            });
            match (r, header_error) {
                (_, Some(e)) => Err(e),
                (Err(ReadError::File(e)), _) => Err(e),
                (Err(ReadError::Callback(())), _) => Err("cannot be read".to_string()),
                (Ok(()), _) if rows == 0 => Err("the file has a header but no rows".to_string()),
                (Ok(()), _) => Ok(()),
            }
        };
        if let Err(reason) = check {
            tracing::warn!(reason = %reason, "metadata file rejected");
            files.finish_metadata(id, Err(reason))?;
            self.archiver.archive(&[file_id])?;
            return Ok(());
        }

        let stem = rel.file_name().rsplit_once('.').map_or(rel.file_name(), |(s, _)| s);
        let grace = ms(self.config.get().matching.grace);
        let mut chunk: Vec<RowInput> = Vec::with_capacity(ROWS_PER_CHUNK);
        let mut chunk_cells = 0;
        let (mut accepted, mut rejected, mut ready) = (0u64, 0u64, 0usize);
        let mut decided = Vec::new();
        let mut first_row = true;
        let result = matching::read_rows(format, open()?, max_row_bytes, |row| -> Result<(), CatalogError> {
            let is_first = std::mem::replace(&mut first_row, false);
            if row.row <= resume_after {
                return Ok(());
            }
            let verdict = match row.record {
                Ok(record) => {
                    let ctx = RowContext {
                        mapping,
                        timezone: tenant.timezone,
                        extensions: &self.config.get().matching.recording_extensions,
                        file_stem: stem,
                        first_row: is_first,
                    };
                    matching::map_row(&ctx, record)
                }
                Err(reason) => RowVerdict::Rejected {
                    conversation_id: None,
                    recording: None,
                    reason,
                },
            };
            match &verdict {
                RowVerdict::Accepted(_) => accepted += 1,
                RowVerdict::Rejected { reason, .. } => {
                    rejected += 1;
                    tracing::info!(row = row.row, reason = %reason, "row rejected");
                }
            }
            chunk_cells += match &verdict {
                RowVerdict::Accepted(s) => s.fields.len(),
                RowVerdict::Rejected { .. } => 1,
            };
            chunk.push(RowInput {
                row_no: row.row,
                verdict,
            });
            if chunk.len() >= ROWS_PER_CHUNK || chunk_cells >= CELLS_PER_CHUNK {
                chunk_cells = 0;
                let (n, d) = files.add_rows(id, &chunk, now_ms(), grace)?;
                ready += n;
                decided.extend(d);
                chunk.clear();
                self.forwarder.notify_one();
            }
            Ok(())
        });
        match result {
            Ok(()) => {
                if !chunk.is_empty() {
                    let (n, d) = files.add_rows(id, &chunk, now_ms(), grace)?;
                    ready += n;
                    decided.extend(d);
                }
                files.finish_metadata(id, Ok(()))?;
                tracing::info!(accepted, rejected, ready, "metadata file read");
            }
            Err(ReadError::Callback(e)) => return Err(e.into()),
            // The file changed between the passes (it is being overwritten): the new version
            // arrives as its own event; this one is withdrawn.
            Err(ReadError::File(reason)) => files.finish_metadata(id, Err(reason))?,
        }
        if ready > 0 {
            self.forwarder.notify_one();
        }
        // Recordings of identical re-sends (done without sending) may leave now, and so may
        // the file itself if every row is decided.
        decided.push(file_id);
        self.archiver.archive(&decided)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arrival::UnzipError;

    fn io(code: i32) -> std::io::Error {
        std::io::Error::from_raw_os_error(code)
    }

    #[test]
    fn intake_retries_what_may_clear_and_a_file_that_left() {
        assert!(IntakeError::Io(io(libc::ENOSPC)).retry_helps());
        assert!(IntakeError::Io(io(libc::EIO)).retry_helps());
        // The next attempt finds it gone and records so.
        assert!(IntakeError::Io(io(libc::ENOENT)).retry_helps());
        assert!(!IntakeError::Io(io(libc::EACCES)).retry_helps());
        assert!(!IntakeError::Catalog(CatalogError::Corrupt("bad fields".into())).retry_helps());
    }

    #[test]
    fn a_refused_zip_is_refused_again_our_failure_may_clear() {
        let failed = |code| UnzipError::Io {
            what: "write entry".into(),
            source: io(code),
        };
        assert!(!UnzipError::Refused("past the entry limit".into()).retry_helps());
        assert!(failed(libc::ENOSPC).retry_helps());
        assert!(!failed(libc::EACCES).retry_helps());
    }
}
