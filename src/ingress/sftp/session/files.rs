//! File handles of a session: OPEN, WRITE, READ and CLOSE, and the uploads they make.
//!
//! An upload is written under a hidden temp name and put in place at CLOSE; writes land at their
//! offsets on the blocking pool, concurrently. Any refused or failed WRITE poisons the upload:
//! CLOSE then discards it and answers with the reason.

use super::digest::StreamDigest;
use super::*;
use crate::dropbox::FileKind;
use crate::ingress::{Hint, KnownDigest};
use std::os::unix::fs::MetadataExt;

pub(super) struct UploadHandle {
    /// Shared with in-flight writes; the `Upload` itself is taken on close.
    pub(super) file: Arc<File>,
    upload: Upload,
    /// Writes hold it shared; CLOSE takes it exclusively, so it waits for them.
    gate: Arc<RwLock<()>>,
    /// Counts the upload against the tenant's quota while it is open.
    pub(super) grant: FileGrant,
    /// Why a write was refused or failed: the upload is then discarded at CLOSE, never put
    /// under its final name (a partial file must not arrive as a recording).
    failed: Arc<Mutex<Option<String>>>,
    /// A recording's SHA-256, taken as its writes come in, for intake.
    digest: StreamDigest,
}

impl UploadHandle {
    fn poison(failed: &Mutex<Option<String>>, why: &str) {
        let mut f = failed.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some(why.to_owned());
        }
    }
}

impl Session {
    pub(super) async fn open(&mut self, id: u32, path: String, flags: OpenFlags) -> Result<Packet, String> {
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
        // Without TRUNCATE an existing file is copied into the upload first: that can take long.
        let opened = if truncate {
            self.quick(|fs| fs.open_write(&path, truncate, exclusive))
        } else {
            self.blocking(move |fs| fs.open_write(&path, truncate, exclusive))
                .await?
        };
        let upload = match opened {
            Ok(upload) => upload,
            Err(e) => return Ok(fs_err(id, e)),
        };
        // Counted against the quota from the start, with what a resumed upload already holds.
        let held = upload.file.metadata().ok().map(|m| m.len());
        let granted = self
            .ctx
            .quotas
            .open_file(&self.ctx.tenant, upload.vpath.name())
            .and_then(|mut g| g.grow_to(held.unwrap_or(0)).map(|()| g));
        let (grant, file) = match (granted, upload.file.try_clone()) {
            (Ok(grant), Ok(file)) => (grant, file),
            (Err(e), _) => {
                tracing::warn!(tenant = %self.ctx.tenant, error = %e, "upload refused");
                self.ctx.fs.abort_upload(upload);
                return Ok(status(id, StatusCode::Failure, &e.to_string()));
            }
            (_, Err(e)) => {
                self.ctx.fs.abort_upload(upload);
                return Ok(status(id, StatusCode::Failure, &e.to_string()));
            }
        };
        // A recording that starts empty is hashed as it arrives.
        let is_recording = matches!(
            FileKind::of(upload.vpath.name(), &self.ctx.config.get().matching),
            FileKind::Recording
        );
        let digest = if is_recording && held == Some(0) {
            StreamDigest::start()
        } else {
            StreamDigest::none()
        };
        let h = UploadHandle {
            file: Arc::new(file),
            upload,
            gate: Arc::new(RwLock::new(())),
            grant,
            failed: Arc::default(),
            digest,
        };
        let handle = self.new_handle(OpenHandle::Upload(h));
        Ok(Packet::Handle(HandleReply { id, handle }))
    }

    pub(super) async fn write(&mut self, w: russh_sftp::protocol::Write) -> Result<(), String> {
        let max_file_size = self.ctx.max_file_size;
        let data = Bytes::from(w.data);
        let (file, guard, failed): (Arc<File>, OwnedRwLockReadGuard<()>, _) = match self.handles.get_mut(&w.handle) {
            Some(OpenHandle::Upload(u)) => {
                let end = w.offset.saturating_add(data.len() as u64);
                let refused = if end > max_file_size {
                    Some(too_large(max_file_size))
                } else {
                    u.grant.grow_to(end).err().map(|e| e.to_string())
                };
                if let Some(msg) = refused {
                    UploadHandle::poison(&u.failed, &msg);
                    return self.send(status(w.id, StatusCode::Failure, &msg)).await;
                }
                u.digest.write(w.offset, &data).await;
                (u.file.clone(), u.gate.clone().read_owned().await, u.failed.clone())
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
        let permit = self.slots.clone().acquire_owned().await.map_err(|e| e.to_string())?;
        let (tx, seq) = (self.tx.clone(), self.seq);
        let durable = self.ctx.fsync_on_close;
        metrics::counter!("dropsync_received_bytes_total", "via" => "sftp").increment(data.len() as u64);
        while self.requests.try_join_next().is_some() {}
        // The blocking thread answers by itself: no hop back through the runtime.
        self.requests.spawn_blocking(move || {
            let (id, offset) = (w.id, w.offset);
            let done = file.write_all_at(&data, offset).map(|()| {
                // With a durable close, the disk starts on each write at once (for a small file,
                // while the client is still sending CLOSE), so the fsync at CLOSE has little left.
                if durable {
                    crate::fsutil::start_writeback(&file, offset, data.len() as u64);
                }
            });
            let reply = match done {
                Ok(()) => ok(id),
                Err(e) => {
                    let msg = format!("write failed: {e}");
                    UploadHandle::poison(&failed, &msg);
                    status(id, StatusCode::Failure, &msg)
                }
            };
            // Released after the poison is set, so CLOSE (which waits for the gate) sees it.
            drop(guard);
            send_packet_blocking(&tx, seq, reply, permit);
        });
        Ok(())
    }

    pub(super) async fn read(&mut self, id: u32, handle: String, offset: u64, len: u32) -> Result<(), String> {
        let file = match self.handles.get(&handle) {
            Some(OpenHandle::Read(f)) => f.clone(),
            Some(OpenHandle::Upload(u)) => u.file.clone(),
            _ => return self.send(status(id, StatusCode::Failure, "invalid handle")).await,
        };
        let permit = self.slots.clone().acquire_owned().await.map_err(|e| e.to_string())?;
        let (tx, seq) = (self.tx.clone(), self.seq);
        let len = (len as u64).min(MAX_DATA) as usize;
        while self.requests.try_join_next().is_some() {}
        self.requests.spawn_blocking(move || {
            let read = || {
                let mut buf = vec![0u8; len];
                let mut filled = 0;
                while filled < len {
                    match file.read_at(&mut buf[filled..], offset + filled as u64) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                buf.truncate(filled);
                Ok(buf)
            };
            let reply = match read() {
                Ok(data) if data.is_empty() => status(id, StatusCode::Eof, "end of file"),
                Ok(data) => Packet::Data(Data { id, data }),
                Err(e) => status(id, StatusCode::Failure, &format!("read failed: {e}")),
            };
            send_packet_blocking(&tx, seq, reply, permit);
        });
        Ok(())
    }

    pub(super) async fn close(&mut self, id: u32, handle: &str) -> Result<Packet, String> {
        match self.handles.remove(handle) {
            None => Ok(status(id, StatusCode::Failure, "invalid handle")),
            Some(OpenHandle::Read(_)) | Some(OpenHandle::Dir(_)) => Ok(ok(id)),
            Some(OpenHandle::Upload(u)) => {
                self.ctx.open_uploads.fetch_sub(1, Ordering::Relaxed);
                // Every write sent before CLOSE has landed once we hold the gate.
                let _all_written = u.gate.clone().write_owned().await;
                drop(u.file);
                let failed = u.failed.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(why) = failed {
                    tracing::warn!(tenant = %self.ctx.tenant, file = %u.upload.vpath, reason = %why, "upload discarded: a write was refused");
                    self.ctx.fs.abort_upload(u.upload);
                    return Ok(status(id, StatusCode::Failure, &format!("upload discarded: {why}")));
                }
                u.grant.keep();
                // How it came, and its digest if every byte was hashed as it arrived: noted
                // before the rename, which the watcher may report first.
                let meta = u.upload.file.metadata().ok();
                let size = meta.as_ref().map_or(0, |m| m.len());
                let digest = match &meta {
                    Some(m) => u.digest.finish(size).await.map(|sha256| KnownDigest {
                        size,
                        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
                        sha256,
                    }),
                    None => None,
                };
                let hint = (self.ctx.hints.clone(), u.upload.target.clone());
                let durable = self.ctx.fsync_on_close;
                let finish = move |fs: &TenantFs| {
                    hint.0.note_hint(hint.1, Hint { via: Via::Sftp, digest });
                    fs.finish_upload(u.upload, durable)
                };
                // Without fsync, finishing is a rename.
                let finished = if durable {
                    self.blocking(move |fs| finish(&fs)).await?
                } else {
                    self.quick(finish)
                };
                match finished {
                    Ok(FinishedUpload {
                        arrived: Some(rel),
                        sync_folder: None,
                    }) => {
                        self.announce(&rel).await;
                        Ok(ok(id))
                    }
                    Ok(FinishedUpload {
                        arrived,
                        sync_folder: Some(folder),
                    }) => {
                        // The data is durable and the client may go on; the rename becomes
                        // durable before the file is announced (a crash in between is undone
                        // by recover_uploads).
                        if let Some(q) = &self.folder_syncs {
                            let _ = q.send((folder, arrived));
                        }
                        Ok(ok(id))
                    }
                    Ok(FinishedUpload { arrived: None, .. }) => Ok(ok(id)),
                    Err(e) => Ok(fs_err(id, e)),
                }
            }
        }
    }

    /// The client went away: unfinished uploads leave nothing behind.
    pub(super) async fn abort_all(&mut self) {
        for (_, h) in self.handles.drain() {
            if let OpenHandle::Upload(u) = h {
                self.ctx.open_uploads.fetch_sub(1, Ordering::Relaxed);
                let _all_written = u.gate.clone().write_owned().await;
                tracing::info!(tenant = %self.ctx.tenant, file = %u.upload.vpath, "upload not closed; discarded");
                self.ctx.fs.abort_upload(u.upload);
            }
        }
    }
}

pub(super) fn attrs_of(id: u32, f: &File) -> Packet {
    match f.metadata() {
        Ok(m) => Packet::Attrs(Attrs {
            id,
            attrs: crate::ingress::sftp::fs::attrs(&m),
        }),
        Err(e) => status(id, StatusCode::Failure, &e.to_string()),
    }
}
