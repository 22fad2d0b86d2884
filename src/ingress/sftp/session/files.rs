//! File handles of a session: OPEN, WRITE, READ and CLOSE, and the uploads they make.
//!
//! An upload is written under a hidden temp name and put in place when its last handle is
//! closed (see [`super::super::pending`]); writes land at their offsets on the blocking pool,
//! concurrently. Any refused or failed WRITE poisons the upload: its last CLOSE then discards it
//! and answers with the reason.

use super::*;
use crate::arrival::digest::StreamDigest;
use crate::dropbox::FileKind;
use crate::ingress::KnownDigest;
use crate::ingress::sftp::fs::{FsResult, VPath};
use crate::ingress::sftp::pending::{Completing, Finished, Pending, Released};
use std::sync::Mutex;

/// The reply to a CLOSE of an upload that was discarded, and why.
fn discarded(id: u32, why: &str) -> Packet {
    status(id, StatusCode::Failure, &format!("upload discarded: {why}"))
}

/// What a STATUS reply is counted as among the bytes a client has not had back.
const SMALL_REPLY: usize = 64;

/// How much of a large upload is written between two starts of write-back.
const WRITEBACK_STEP: u64 = 1 << 20;

pub(super) struct UploadHandle {
    /// The upload, shared with the other handles that have it open and with in-flight writes.
    pub(super) pending: Arc<Pending>,
    /// A recording's SHA-256, taken as this handle's writes come in (a new upload only).
    pub(super) digest: StreamDigest,
    /// Writes waiting for this handle's writer thread.
    queue: Arc<Mutex<WriteQueue>>,
    /// Counted among the uploads a stop waits for; CLOSE hands it to its reply.
    in_flight: Option<InFlight>,
}

/// The writes of one handle waiting to land. One blocking thread at a time takes all there are:
/// a client with many writes in flight (OpenSSH keeps 64) costs a thread hand-off per batch,
/// not per write (profiles of 100 concurrent uploads showed the hand-offs). A file is written
/// by one thread at a time, far faster than one session can send.
#[derive(Default)]
pub(super) struct WriteQueue {
    jobs: Vec<WriteJob>,
    running: bool,
}

/// One WRITE: its data, where it goes, and what its reply needs.
struct WriteJob {
    id: u32,
    seq: u64,
    offset: u64,
    data: Bytes,
    /// Its share of `WRITE_BUDGET`, given back once the data is on disk (not when the reply
    /// is written: see `replies`).
    budget: tokio::sync::OwnedSemaphorePermit,
    /// Holds CLOSE off until the write has landed.
    gate: OwnedRwLockReadGuard<()>,
    /// Its reply, counted among the bytes the client has not had back.
    outstanding: Outstanding,
}

/// A handle's writer: lands its queued writes, batch after batch, until none are left.
fn write_queued(queue: &Mutex<WriteQueue>, pending: Arc<Pending>, tx: &mpsc::UnboundedSender<Reply>, durable: bool) {
    // The last write's gate is let go after this thread's reference to the upload: the last
    // CLOSE, which waits for the gate, then holds the only one, and closes the temp file before
    // its rename (see `put_in_place`).
    let mut last_gate = None;
    loop {
        let jobs = {
            let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.jobs.is_empty() {
                q.running = false;
                drop(q);
                drop(pending);
                drop(last_gate);
                return;
            }
            std::mem::take(&mut q.jobs)
        };
        for job in jobs {
            let reply = match write_one(&pending.file, job.offset, &job.data, durable) {
                Ok(()) => ok(job.id),
                Err(e) => {
                    let msg = format!("write failed: {e}");
                    pending.poison(&msg);
                    status(job.id, StatusCode::Failure, &msg)
                }
            };
            drop(job.data);
            drop(job.budget);
            // Released after the poison is set, so CLOSE (which waits for the gate) sees it.
            last_gate = Some(job.gate);
            let held = Held {
                _outstanding: Some(job.outstanding),
                ..Held::default()
            };
            send_packet(tx, job.seq, reply, held);
        }
    }
}

/// Writes `data` at `offset`. With a durable close, the disk starts on the data as it comes,
/// so the fsync at CLOSE has little left: on each write of a file's first MiB (a small file is
/// on its way to disk while the client still sends CLOSE), then once a MiB (a call per write
/// showed in profiles of many large uploads).
fn write_one(file: &File, offset: u64, data: &[u8], durable: bool) -> std::io::Result<()> {
    file.write_all_at(data, offset)?;
    if durable {
        let end = offset + data.len() as u64;
        if offset < WRITEBACK_STEP {
            crate::fsutil::start_writeback(file, offset, data.len() as u64);
        } else if end / WRITEBACK_STEP != offset / WRITEBACK_STEP {
            let boundary = end / WRITEBACK_STEP * WRITEBACK_STEP;
            crate::fsutil::start_writeback(file, boundary - WRITEBACK_STEP, WRITEBACK_STEP);
        }
    }
    Ok(())
}

/// Why a file may not grow to a size (a write, or a size set). Told to the client as it is.
#[derive(Debug, thiserror::Error)]
pub(super) enum GrowthRefused {
    /// Past `sftp.max_file_size`, which it gives.
    #[error("file larger than the limit of {} (sftp.max_file_size)", bytesize::ByteSize::b(*.0))]
    TooLarge(u64),
    /// Past the tenant's quota: files removed make room.
    #[error(transparent)]
    Quota(#[from] crate::limits::QuotaExceeded),
}

/// Whether an upload may reach `end` bytes (a write, or a size set); if so, its grant counts
/// them.
pub(super) fn may_grow(pending: &Pending, end: u64, max_file_size: u64) -> Result<(), GrowthRefused> {
    if end > max_file_size {
        return Err(GrowthRefused::TooLarge(max_file_size));
    }
    Ok(pending.grow_to(end)?)
}

impl Session {
    pub(super) async fn open(&mut self, id: u32, path: String, flags: OpenFlags) -> Result<Packet, SessionError> {
        let write = flags.intersects(OpenFlags::WRITE | OpenFlags::APPEND | OpenFlags::CREATE | OpenFlags::TRUNCATE);
        if !write {
            return Ok(match self.blocking(move |fs| fs.open_read(&path)).await? {
                Ok(f) => {
                    let handle = self.new_handle(OpenHandle::Read(Arc::new(f)));
                    Packet::Handle(HandleReply { id, handle })
                }
                Err(e) => fs_err(id, e),
            });
        }
        let truncate = flags.contains(OpenFlags::TRUNCATE);
        let exclusive = flags.contains(OpenFlags::EXCLUDE);
        // Counted against the quota from the start; a resumed upload with the file it continues.
        let (quotas, tenant) = (self.ctx.quotas.clone(), self.ctx.tenant.clone());
        let grant = move |v: &VPath, original: Option<(crate::dropbox::FileId, u64)>| {
            let granted = match original {
                Some((id, size)) => quotas.continue_file(&tenant, v.name(), id, size),
                None => quotas.open_file(&tenant, v.name()),
            };
            granted.map(Some).inspect_err(|e| {
                tracing::warn!(tenant = %tenant, file = %v, error = %e, "upload refused");
            })
        };
        // Without TRUNCATE an existing file is copied into the upload first: that can take long.
        let opened = if truncate {
            self.quick(|fs| fs.open_write(&path, truncate, exclusive, &grant))
        } else {
            self.blocking(move |fs| fs.open_write(&path, truncate, exclusive, &grant))
                .await?
        };
        let opened = match opened {
            Ok(opened) => opened,
            Err(e) => return Ok(fs_err(id, e)),
        };
        // A recording that starts empty is hashed as it arrives.
        let is_recording = matches!(
            FileKind::of(opened.pending.vpath().name(), &self.ctx.config.get().matching),
            FileKind::Recording
        );
        let digest = if is_recording && opened.fresh {
            StreamDigest::start()
        } else {
            StreamDigest::none()
        };
        let handle = self.new_handle(OpenHandle::Upload(UploadHandle {
            pending: opened.pending,
            digest,
            queue: Arc::default(),
            in_flight: Some(InFlight::count(&self.ctx.open_uploads)),
        }));
        Ok(Packet::Handle(HandleReply { id, handle }))
    }

    pub(super) async fn write(&mut self, w: russh_sftp::protocol::Write) -> Result<(), SessionError> {
        let max_file_size = self.ctx.max_file_size;
        let data = Bytes::from(w.data);
        let (pending, gate, queue) = match self.handles.get_mut(&w.handle) {
            Some(OpenHandle::Upload(u)) => {
                let end = w.offset.saturating_add(data.len() as u64);
                if let Err(refused) = may_grow(&u.pending, end, max_file_size) {
                    let msg = refused.to_string();
                    u.pending.poison(&msg);
                    return self.send(status(w.id, StatusCode::Failure, &msg)).await;
                }
                u.digest.write(w.offset, &data).await;
                let p = &u.pending;
                (p.clone(), p.gate.clone().read_owned().await, u.queue.clone())
            }
            Some(_) => {
                return self
                    .send(status(
                        w.id,
                        StatusCode::PermissionDenied,
                        "file is not open for writing",
                    ))
                    .await;
            }
            None => return self.send(status(w.id, StatusCode::Failure, "invalid handle")).await,
        };
        let outstanding = self.take_outstanding(SMALL_REPLY)?;
        // Waits for the disk only: the budget comes back as writes land, never with replies.
        let want = data.len().clamp(1, WRITE_BUDGET) as u32;
        let budget = self.write_budget.clone().acquire_many_owned(want).await?;
        metrics::counter!("dropsync_received_bytes_total", "via" => "sftp").increment(data.len() as u64);
        let job = WriteJob {
            id: w.id,
            seq: self.seq,
            offset: w.offset,
            data,
            budget,
            gate,
            outstanding,
        };
        let start_writer = {
            let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
            q.jobs.push(job);
            !std::mem::replace(&mut q.running, true)
        };
        if start_writer {
            while self.requests.try_join_next().is_some() {}
            let (tx, durable) = (self.tx.clone(), self.ctx.fsync_on_close);
            // The blocking thread answers by itself: no hop back through the runtime.
            self.requests
                .spawn_blocking(move || write_queued(&queue, pending, &tx, durable));
        }
        Ok(())
    }

    /// READ. Of a read-only handle, it goes to the session's read pump; of an upload (read
    /// back through sshfs, say), it is read at once, and holds the upload's CLOSE off until then.
    /// Neither waits for a reply to be written (see `replies`).
    pub(super) async fn read(&mut self, id: u32, handle: String, offset: u64, len: u32) -> Result<(), SessionError> {
        let len = (len as u64).min(MAX_DATA) as usize;
        let (file, gate) = match self.handles.get(&handle) {
            Some(OpenHandle::Read(f)) => {
                let job = ReadJob {
                    seq: self.seq,
                    id,
                    file: f.clone(),
                    offset,
                    len,
                    _queued: self.take_outstanding(QUEUED_READ_COST)?,
                };
                let reads = self.reads.as_ref().ok_or(SessionError::Ending)?;
                return reads.send(job).map_err(|_| SessionError::ReadPumpGone);
            }
            Some(OpenHandle::Upload(u)) => (u.pending.file.clone(), u.pending.gate.clone()),
            _ => return self.send(status(id, StatusCode::Failure, "invalid handle")).await,
        };
        // Lets go of the file before the gate (see `write_queued`).
        let gate = gate.read_owned().await;
        let outstanding = self.take_outstanding(len)?;
        // Waits for the disk only: the slot comes back once the data is read.
        let slot = self.slots.clone().acquire_owned().await?;
        let (tx, seq) = (self.tx.clone(), self.seq);
        while self.requests.try_join_next().is_some() {}
        self.requests.spawn_blocking(move || {
            let reply = read_reply(&file, id, offset, len);
            drop(file);
            drop(gate);
            drop(slot);
            let held = Held {
                _outstanding: Some(outstanding),
                ..Held::default()
            };
            send_packet(&tx, seq, reply, held);
        });
        Ok(())
    }

    /// CLOSE of any handle. An upload's comes back with its place among the uploads in
    /// flight, for the reply to hold until it is written.
    pub(super) async fn close(&mut self, id: u32, handle: &str) -> Result<(Packet, Option<InFlight>), SessionError> {
        let removed = self.handles.remove(handle);
        if removed.is_some() {
            metrics::gauge!("dropsync_sftp_handles").decrement(1.0);
        }
        match removed {
            None => Ok((status(id, StatusCode::Failure, "invalid handle"), None)),
            Some(OpenHandle::Read(_)) | Some(OpenHandle::Dir(_)) => Ok((ok(id), None)),
            Some(OpenHandle::Upload(mut u)) => {
                let in_flight = u.in_flight.take();
                Ok((self.close_upload(id, u).await?, in_flight))
            }
        }
    }

    /// CLOSE of an upload handle. The last one puts the upload in place and announces it (or
    /// finds it discarded, if a write failed, its other connection was lost, or it was removed).
    async fn close_upload(&mut self, id: u32, u: UploadHandle) -> Result<Packet, SessionError> {
        // Taken apart, so that the upload's last reference is the one finishing it, which can
        // close the temp file before it is renamed.
        let UploadHandle { pending, digest, .. } = u;
        // Every write sent before CLOSE has landed once we hold the gate.
        let all_written = pending.gate.clone().write_owned().await;
        let vpath = pending.vpath();
        let released = self.ctx.fs.pending.close(pending);
        drop(all_written);
        Ok(match released {
            // Other handles still have it open, or the client removed it: "done", unless it is
            // already doomed.
            Released::StillOpen(None) | Released::Discarded(None) => ok(id),
            Released::StillOpen(Some(why)) => discarded(id, &why),
            Released::Discarded(Some(why)) => {
                tracing::warn!(tenant = %self.ctx.tenant, file = %vpath, reason = %why, "upload discarded");
                discarded(id, &why)
            }
            Released::Last(upload) => match self.finish_upload(upload, digest).await? {
                Ok(()) => ok(id),
                Err(e) => fs_err(id, e),
            },
        })
    }

    /// Puts an upload whose last handle is gone in place, and announces it (once its folder is
    /// synced, if that is still to come).
    async fn finish_upload(&mut self, upload: Completing, digest: StreamDigest) -> Result<FsResult<()>, SessionError> {
        // Its digest, if every byte was hashed as one handle wrote it: it goes with the arrival.
        let meta = upload.file().metadata().ok();
        let size = meta.as_ref().map_or(0, |m| m.len());
        let digest = match &meta {
            Some(m) if upload.written_by_one_handle() => {
                digest.finish(size).await.map(|sha256| KnownDigest::of(m, sha256))
            }
            _ => None,
        };
        let durable = self.ctx.fsync_on_close;
        let finish = move |fs: &TenantFs| upload.finish(fs, durable, digest);
        // Without fsync, finishing is a rename.
        let finished = if durable {
            self.blocking(move |fs| finish(&fs)).await?
        } else {
            self.quick(finish)
        };
        Ok(match finished {
            Ok(Finished {
                arrived: Some(arrival),
                sync_folder: None,
            }) => {
                self.announce(&arrival.rel, arrival.digest).await;
                Ok(())
            }
            Ok(Finished {
                arrived,
                sync_folder: Some(folder),
            }) => {
                // The data is durable and the client may go on; the rename becomes durable
                // before the file is announced (a crash in between is undone by recover_uploads).
                if let Some(q) = &self.folder_syncs {
                    let _ = q.send((folder, arrived));
                }
                Ok(())
            }
            Ok(Finished { arrived: None, .. }) => Ok(()),
            Err(e) => Err(e),
        })
    }

    pub(super) async fn open_dir(&mut self, id: u32, path: String) -> Result<(), SessionError> {
        let reply = match self.blocking(move |fs| fs.open_dir(&path)).await? {
            Ok(listing) => {
                let handle = self.new_handle(OpenHandle::Dir(Box::new(listing)));
                Packet::Handle(HandleReply { id, handle })
            }
            Err(e) => fs_err(id, e),
        };
        self.send(reply).await
    }

    /// One batch of a listing: it goes to a blocking thread to be read from the disk, and
    /// comes back to its handle.
    pub(super) async fn read_dir(&mut self, id: u32, handle: String) -> Result<(), SessionError> {
        let mut listing = match self.handles.remove(&handle) {
            Some(OpenHandle::Dir(listing)) => listing,
            other => {
                if let Some(h) = other {
                    self.handles.insert(handle, h);
                }
                return self
                    .send(status(id, StatusCode::Failure, "not an open folder handle"))
                    .await;
            }
        };
        let (listing, batch) = self
            .blocking(move |fs| {
                let batch = fs.read_dir_batch(&mut listing, DIR_BATCH);
                (listing, batch)
            })
            .await?;
        self.handles.insert(handle, OpenHandle::Dir(listing));
        let reply = match batch {
            Ok(files) if files.is_empty() => status(id, StatusCode::Eof, "end of folder"),
            Ok(files) => Packet::Name(Name { id, files }),
            Err(e) => fs_err(id, e),
        };
        self.send(reply).await
    }

    /// The client went away: its unfinished uploads leave nothing behind. An upload another
    /// session also has open is discarded at that session's last CLOSE, unless that session was
    /// already told it is done: then it is kept (a client that reconnected and finished it).
    pub(super) async fn abort_all(&mut self) {
        let handles: Vec<OpenHandle> = self.handles.drain().map(|(_, h)| h).collect();
        for h in handles {
            let OpenHandle::Upload(UploadHandle { pending, digest, .. }) = h else {
                continue;
            };
            let all_written = pending.gate.clone().write_owned().await;
            let vpath = pending.vpath();
            let released = self
                .ctx
                .fs
                .pending
                .abort(pending, "the connection that was writing it was lost");
            drop(all_written);
            match released {
                Released::Last(upload) => {
                    tracing::info!(tenant = %self.ctx.tenant, file = %vpath, "upload not closed here but closed by another session; kept");
                    if let Ok(Err(e)) = self.finish_upload(upload, digest).await {
                        tracing::warn!(tenant = %self.ctx.tenant, file = %vpath, error = %e.message, "upload could not be put in place");
                    }
                }
                Released::Discarded(_) => {
                    tracing::info!(tenant = %self.ctx.tenant, file = %vpath, "upload not closed; discarded");
                }
                Released::StillOpen(_) => {
                    tracing::info!(tenant = %self.ctx.tenant, file = %vpath, "upload not closed; left to its other handles")
                }
            }
        }
    }
}

pub(super) fn attrs_of(id: u32, f: &File) -> Packet {
    match f.metadata() {
        Ok(m) => Packet::Attrs(Attrs {
            id,
            attrs: crate::ingress::sftp::ops::attrs(&m),
        }),
        Err(e) => status(id, StatusCode::Failure, &e.to_string()),
    }
}

/// A READ of a read-only handle, waiting for the read pump.
pub(super) struct ReadJob {
    seq: u64,
    id: u32,
    file: Arc<File>,
    offset: u64,
    len: usize,
    /// Counted among the bytes the client has not had back until the read is done.
    _queued: Outstanding,
}

/// Answers a session's READs of read-only handles in the order they came, each once its data
/// fits in `READ_BUDGET` (given back as the replies are written to the client), up to
/// `IN_FLIGHT` at once on the blocking pool. It, not the task reading requests, is what waits
/// for replies to leave: a client may ask for a whole file at once (paramiko's prefetch) and
/// read it as slowly as it likes, and the session still takes its other requests in.
pub(super) async fn pump_reads(mut queue: mpsc::UnboundedReceiver<ReadJob>, tx: mpsc::UnboundedSender<Reply>) {
    let budget = Arc::new(Semaphore::new(READ_BUDGET));
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut reading = tokio::task::JoinSet::new();
    while let Some(job) = queue.recv().await {
        let want = job.len.clamp(1, READ_BUDGET) as u32;
        let (Ok(budget), Ok(slot)) = (
            budget.clone().acquire_many_owned(want).await,
            slots.clone().acquire_owned().await,
        ) else {
            return;
        };
        while reading.try_join_next().is_some() {}
        let tx = tx.clone();
        reading.spawn_blocking(move || {
            let reply = read_reply(&job.file, job.id, job.offset, job.len);
            drop(slot);
            let held = Held {
                _budget: Some(budget),
                ..Held::default()
            };
            send_packet(&tx, job.seq, reply, held);
        });
    }
    while reading.join_next().await.is_some() {}
}

/// The reply to a READ of `len` bytes at `offset`: its data, EOF, or the error.
fn read_reply(file: &File, id: u32, offset: u64, len: usize) -> Packet {
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return status(id, StatusCode::Failure, &format!("read failed: {e}")),
        }
    }
    buf.truncate(filled);
    if buf.is_empty() {
        status(id, StatusCode::Eof, "end of file")
    } else {
        Packet::Data(Data { id, data: buf })
    }
}
