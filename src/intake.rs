//! Intake: the stage between the ingresses and the catalog.
//!
//! Takes [`IngressEvent`]s; for each arrived file, records it in the catalog (recordings are
//! hashed first), unpacks zip batches, and streams metadata files through the matcher into the
//! catalog in chunks. At start-up, and whenever the watcher lost events, it reconciles every drop
//! folder with the catalog. It wakes the forwarder when conversations become ready.

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::catalog::{Catalog, CatalogError, NewFile, Registered, RowInput, Via, ms, now_ms};
use crate::config::LiveConfig;
use crate::dropbox::{self, DropRoot, FileKind, RelPath};
use crate::housekeeping::Archiver;
use crate::ingress::{Arrived, IngressEvent, ViaHints};
use crate::matching::{self, MetadataFormat, ReadError, RowContext, RowVerdict};
use crate::ops::Liveness;
use crate::tenant::{Tenant, TenantId};

/// Rows committed per transaction while parsing a metadata file.
const ROWS_PER_CHUNK: usize = 2000;

/// How long a file found without an event must stay unchanged before it counts as arrived.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// An arrival checked and read, ready to be recorded.
struct Prepared {
    tenant: TenantId,
    rel: RelPath,
    via: Via,
    kind: FileKind,
    size: u64,
    mtime_ns: i64,
    sha256: Option<String>,
}

/// Arrivals recorded in one transaction at most (a burst of uploads or a big scan).
const BATCH: usize = 256;

/// Shared by the intake task and start-up; all methods block (run them off the runtime).
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
    /// How files written by our own ingresses arrived.
    pub hints: ViaHints,
    /// Where the loop shows the watchdog it is alive.
    pub liveness: Arc<Liveness>,
}

impl Intake {
    /// Consumes ingress events until cancelled. `tx` feeds files that are settling back in.
    pub async fn run(
        self,
        mut rx: mpsc::Receiver<IngressEvent>,
        tx: mpsc::Sender<IngressEvent>,
        tracker: TaskTracker,
        cancel: CancellationToken,
    ) {
        loop {
            self.liveness.idle("intake");
            let event = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => continue,
                e = rx.recv() => match e { Some(e) => e, None => return },
            };
            self.liveness.busy("intake");
            // Arrivals already queued behind this one are recorded together.
            let mut batch = Vec::new();
            let mut other = None;
            match event {
                IngressEvent::Arrived(a) => {
                    batch.push(a);
                    while batch.len() < BATCH {
                        match rx.try_recv() {
                            Ok(IngressEvent::Arrived(a)) => batch.push(a),
                            Ok(e) => {
                                other = Some(e);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                }
                e => other = Some(e),
            }
            let this = self.clone();
            let result = tokio::task::spawn_blocking(move || -> Result<Vec<IngressEvent>, IntakeError> {
                if !batch.is_empty() {
                    this.handle_batch(&batch)?;
                }
                match other {
                    None | Some(IngressEvent::Arrived(_)) => Ok(Vec::new()),
                    Some(IngressEvent::Rescan) => this.reconcile().map(|()| Vec::new()),
                    Some(IngressEvent::FolderCreated { tenant, rel }) => this.unannounced_in(&tenant, &rel),
                    Some(IngressEvent::Settling {
                        arrived,
                        size,
                        mtime_ns,
                    }) => this.settled(arrived, size, mtime_ns),
                }
            })
            .await;
            match result {
                Ok(Ok(settling)) if !settling.is_empty() => {
                    let (tx, cancel) = (tx.clone(), cancel.clone());
                    tracker.spawn(async move {
                        tokio::select! {
                            _ = cancel.cancelled() => {}
                            _ = tokio::time::sleep(SETTLE) => {
                                for e in settling {
                                    if tx.send(e).await.is_err() { break; }
                                }
                            }
                        }
                    });
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "intake failed; the file will be picked up by the next scan"),
                Err(e) => tracing::error!(error = %e, "intake task panicked"),
            }
            self.reports.notify_one();
        }
    }

    /// Files in a new folder that no event announced: each is checked again after [`SETTLE`].
    /// (Lost to a crash or stop meanwhile? The start-up scan finds them.)
    fn unannounced_in(&self, tenant: &TenantId, dir: &RelPath) -> Result<Vec<IngressEvent>, IntakeError> {
        let mut out = Vec::new();
        for rel in self.drop.scan(tenant, Some(dir))? {
            if let Some((size, mtime_ns)) = self.stat(tenant, &rel) {
                let arrived = Arrived {
                    tenant: tenant.clone(),
                    rel,
                    via: Via::Local,
                };
                out.push(IngressEvent::Settling {
                    arrived,
                    size,
                    mtime_ns,
                });
            }
        }
        Ok(out)
    }

    /// A settling file arrives if it did not change; otherwise it settles again.
    fn settled(&self, a: Arrived, size: u64, mtime_ns: i64) -> Result<Vec<IngressEvent>, IntakeError> {
        match self.stat(&a.tenant, &a.rel) {
            None => Ok(Vec::new()),
            Some((s, m)) if (s, m) == (size, mtime_ns) => self.handle(&a).map(|()| Vec::new()),
            Some((size, mtime_ns)) => Ok(vec![IngressEvent::Settling {
                arrived: a,
                size,
                mtime_ns,
            }]),
        }
    }

    fn stat(&self, tenant: &TenantId, rel: &RelPath) -> Option<(u64, i64)> {
        let meta = std::fs::symlink_metadata(self.drop.path_of(tenant, rel)).ok()?;
        meta.is_file()
            .then(|| (meta.len(), meta.mtime() * 1_000_000_000 + meta.mtime_nsec()))
    }

    fn tenant(&self, id: &TenantId) -> Option<Tenant> {
        self.config.get().tenant(id.as_str()).cloned()
    }

    /// Handles one arrival. Never fails because of the file's content: bad input is recorded
    /// and reported; errors returned here are the catalog's or the disk's.
    pub fn handle(&self, a: &Arrived) -> Result<(), IntakeError> {
        self.handle_batch(std::slice::from_ref(a))
    }

    /// Handles arrivals that queued up together: each file is checked and hashed, all are
    /// recorded in one transaction, then each gets its follow-up (parse, unpack, archive).
    pub fn handle_batch(&self, batch: &[Arrived]) -> Result<(), IntakeError> {
        let mut prepared = Vec::with_capacity(batch.len());
        for a in batch {
            if let Some(p) = self.prepare(a)? {
                prepared.push(p);
            }
        }
        if prepared.is_empty() {
            return Ok(());
        }
        let news: Vec<NewFile<'_>> = prepared
            .iter()
            .map(|p| NewFile {
                tenant: p.tenant.as_str(),
                rel: &p.rel,
                kind: p.kind,
                via: p.via,
                size: p.size,
                mtime_ns: p.mtime_ns,
                sha256: p.sha256.clone(),
            })
            .collect();
        let outcomes = self.catalog.register_files(&news, now_ms(), &self.unknown_reason())?;
        for (p, outcome) in prepared.iter().zip(outcomes) {
            if outcome != Registered::Duplicate {
                metrics::counter!("dropsync_received_files_total", "tenant" => p.tenant.to_string(), "via" => p.via.as_str())
                    .increment(1);
            }
            self.follow_up(p, outcome)?;
        }
        Ok(())
    }

    fn unknown_reason(&self) -> String {
        format!(
            "not a recording ({}) or a metadata file (csv, tsv, json, jsonl, ndjson) or a zip batch",
            self.config.get().matching.recording_extensions.join(", ")
        )
    }

    /// Checks an arrival and reads what the catalog needs; `None` if there is nothing to record
    /// (unknown tenant, gone, not a regular file, or already recorded as it is).
    fn prepare(&self, a: &Arrived) -> Result<Option<Prepared>, IntakeError> {
        if self.tenant(&a.tenant).is_none() {
            tracing::warn!(tenant = %a.tenant, file = a.rel.as_str(), "file in the drop folder of an unknown tenant; ignored");
            return Ok(None);
        }
        let file = match self.drop.open_confined(&a.tenant, &a.rel) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                tracing::warn!(tenant = %a.tenant, file = a.rel.as_str(), error = %e, "not a regular file inside the drop folder; ignored");
                return Ok(None);
            }
        };
        let meta = file.metadata()?;
        let mtime_ns = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
        if self
            .catalog
            .is_present_unchanged(a.tenant.as_str(), &a.rel, meta.len(), mtime_ns)?
        {
            return Ok(None);
        }
        let kind = FileKind::of(a.rel.file_name(), &self.config.get().matching);
        let hint = self.hints.take(&self.drop.path_of(&a.tenant, &a.rel));
        let known = hint
            .and_then(|h| h.digest)
            .filter(|d| d.size == meta.len() && d.mtime_ns == mtime_ns)
            .map(|d| d.sha256);
        let sha256 = match kind {
            FileKind::Recording => Some(hex::encode(match known {
                Some(digest) => digest,
                None => crate::fsutil::hash_reader(&file)?.1,
            })),
            _ => None,
        };
        let via = hint.map_or(a.via, |h| h.via);
        Ok(Some(Prepared {
            tenant: a.tenant.clone(),
            rel: a.rel.clone(),
            via,
            kind,
            size: meta.len(),
            mtime_ns,
            sha256,
        }))
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
        let open = || self.drop.open_confined(&tenant.id, rel);
        let mapping = &tenant.mapping;
        let check = {
            let mut header_checked = matches!(format, MetadataFormat::JsonArray | MetadataFormat::JsonLines);
            let mut header_error = None;
            let mut rows = 0u64;
            let r = matching::read_rows(format, open()?, |row| {
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
            self.catalog.finish_metadata(id, Err(reason))?;
            self.archiver.archive(&[file_id])?;
            return Ok(());
        }

        let stem = rel.file_name().rsplit_once('.').map_or(rel.file_name(), |(s, _)| s);
        let grace = ms(self.config.get().matching.grace);
        let mut chunk: Vec<RowInput> = Vec::with_capacity(ROWS_PER_CHUNK);
        let (mut accepted, mut rejected, mut ready) = (0u64, 0u64, 0usize);
        let mut decided = Vec::new();
        let mut first_row = true;
        let result = matching::read_rows(format, open()?, |row| -> Result<(), CatalogError> {
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
            chunk.push(RowInput {
                row_no: row.row,
                verdict,
            });
            if chunk.len() >= ROWS_PER_CHUNK {
                let (n, d) = self.catalog.add_rows(id, &chunk, now_ms(), grace)?;
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
                    let (n, d) = self.catalog.add_rows(id, &chunk, now_ms(), grace)?;
                    ready += n;
                    decided.extend(d);
                }
                self.catalog.finish_metadata(id, Ok(()))?;
                tracing::info!(accepted, rejected, ready, "metadata file read");
            }
            Err(ReadError::Callback(e)) => return Err(e.into()),
            // The file changed between the passes (it is being overwritten): the new version
            // arrives as its own event; this one is withdrawn.
            Err(ReadError::File(reason)) => self.catalog.finish_metadata(id, Err(reason))?,
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

    fn unpack(&self, tenant: &Tenant, file_id: i64, id: i64, rel: &RelPath, via: Via) -> Result<(), IntakeError> {
        let archive = self.drop.path_of(&tenant.id, rel);
        let dest = archive.parent().unwrap_or(self.drop.root()).to_path_buf();
        match dropbox::unpack_zip(&archive, &dest, self.config.get().matching.zip_max_unpacked) {
            Ok(unpacked) => {
                for (name, why) in &unpacked.refused {
                    tracing::warn!(entry = %name, reason = %why, "zip entry refused");
                }
                tracing::info!(
                    files = unpacked.files.len(),
                    refused = unpacked.refused.len(),
                    "zip batch unpacked"
                );
                self.catalog.finish_zip(id, Ok(&unpacked.refused))?;
                // Recordings first, as clients send them, so metadata finds them present.
                let mut names = unpacked.files;
                names.sort_by_key(|n| !matches!(FileKind::of(n, &self.config.get().matching), FileKind::Recording));
                for name in names {
                    if let Some(rel) = RelPath::join_dir(rel.dir(), &name) {
                        self.handle(&Arrived {
                            tenant: tenant.id.clone(),
                            rel,
                            via,
                        })?;
                    }
                }
            }
            Err(reason) => {
                tracing::warn!(reason = %reason, "zip batch rejected");
                self.catalog.finish_zip(id, Err(reason))?;
            }
        }
        self.archiver.archive(&[file_id])?;
        Ok(())
    }

    /// Brings the catalog in line with the drop folders: files that vanished are marked gone,
    /// files not yet recorded (or changed) arrive now, parses a crash interrupted are resumed,
    /// and files whose fate is decided leave the drop folders.
    pub fn reconcile(&self) -> Result<(), IntakeError> {
        for (file_id, id, tenant, rel, format, rows_done) in self.catalog.interrupted_parses()? {
            let (Ok(tid), Some(rel)) = (TenantId::parse(&tenant), RelPath::parse(&rel)) else {
                continue;
            };
            let Some(t) = self.tenant(&tid) else { continue };
            tracing::info!(tenant = %tid, file = rel.as_str(), "resuming an interrupted parse");
            if format == "zip" {
                self.unpack(&t, file_id, id, &rel, Via::Local)?;
            } else if let Some(f) = MetadataFormat::from_extension(&format) {
                self.parse_metadata(&t, file_id, id, &rel, f, rows_done)?;
            }
        }
        let config = self.config.get();
        for tenant in &config.tenants {
            let on_disk = self.drop.scan_tenant(&tenant.id)?;
            let on_disk_set: std::collections::HashSet<&str> = on_disk.iter().map(RelPath::as_str).collect();
            let gone: Vec<i64> = self
                .catalog
                .present_files(tenant.id.as_str())?
                .into_iter()
                .filter(|(_, rel, _, _)| !on_disk_set.contains(rel.as_str()))
                .map(|(id, ..)| id)
                .collect();
            if !gone.is_empty() {
                tracing::info!(tenant = %tenant.id, files = gone.len(), "files left the drop folder behind our back");
                self.catalog.files_gone(&gone, now_ms())?;
            }
            // Recordings before metadata, so rows find their recordings present (the fast path).
            let mut ordered = on_disk;
            ordered.sort_by_key(|r| {
                !matches!(
                    FileKind::of(r.file_name(), &self.config.get().matching),
                    FileKind::Recording
                )
            });
            let arrivals: Vec<Arrived> = ordered
                .into_iter()
                .map(|rel| Arrived {
                    tenant: tenant.id.clone(),
                    rel,
                    via: Via::Local,
                })
                .collect();
            for chunk in arrivals.chunks(BATCH) {
                self.handle_batch(chunk)?;
            }
        }
        self.archiver.archive_all_decided()?;
        self.forwarder.notify_one();
        Ok(())
    }
}
