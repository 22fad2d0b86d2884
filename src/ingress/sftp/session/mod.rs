//! One SFTP session (draft-ietf-secsh-filexfer-02, version 3) over an SSH channel.
//!
//! Packets are decoded with russh-sftp's types, but dispatched here: READ and WRITE run
//! concurrently with positioned I/O and reply in any order (the protocol allows it), which is
//! what lets OpenSSH's client keep 64 requests in flight. Everything else runs in order. A
//! per-handle gate makes CLOSE wait for the writes before it; a closed upload is fsynced, renamed
//! into place and announced as an arrival. When the connection ends, unfinished uploads vanish.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use russh_sftp::protocol::{
    Attrs, Data, ExtendedReply, Handle as HandleReply, Name, Open, OpenDir, OpenFlags, Packet, Status, StatusCode,
    Version,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::{OwnedRwLockReadGuard, Semaphore, mpsc};

use super::fs::{FsError, TenantFs};
use super::ops::set_attrs;
use super::pending::Arrival;
use crate::catalog::Via;
use crate::config::LiveConfig;
use crate::dropbox::RelPath;
use crate::ingress::{Arrived, IngressEvent, KnownDigest};
use crate::limits::Limits;
use crate::tenant::TenantId;

/// Largest READ/WRITE payload we announce in `limits@openssh.com` (as OpenSSH does).
pub const MAX_DATA: u64 = 255 * 1024;
/// Largest packet we accept: a maximal WRITE plus headers.
const MAX_PACKET: usize = 256 * 1024 + 1024;
/// READs of one session being read from disk at once.
const IN_FLIGHT: usize = 64;
/// Bytes of WRITE data one session holds until they are on disk; the session reads no further
/// request meanwhile, and russh's channel buffer, then TCP, hold the client back. Only the disk
/// frees it. 32 of OpenSSH's 255 KiB writes (it keeps 64 in flight): with 4 MiB, a 1 GiB
/// upload took a fifth longer here, russh's loop stopping more often, and its replies with it.
const WRITE_BUDGET: usize = 8 << 20;
/// Bytes of READ data one session holds until they are written to the client. Waited for by
/// the session's read pump, never by the task reading requests (see `replies`).
const READ_BUDGET: usize = 4 << 20;
/// What a READ waiting in the read pump's queue is counted as (see [`replies::Outstanding`]).
const QUEUED_READ_COST: usize = 128;
/// Entries per READDIR reply.
const DIR_BATCH: usize = 100;

/// What a session needs from the daemon.
#[derive(Clone)]
pub struct SessionCtx {
    pub tenant: TenantId,
    pub fs: TenantFs,
    pub arrivals: mpsc::Sender<IngressEvent>,
    pub max_file_size: u64,
    /// Handles this session may hold open at once.
    pub max_handles: usize,
    pub fsync_on_close: bool,
    /// Uploads open in this session, each until its CLOSE is answered (a stop waits for them,
    /// up to its deadline). Counted by [`replies::InFlight`].
    pub open_uploads: Arc<std::sync::atomic::AtomicUsize>,
    pub quotas: Arc<Limits>,
    /// The configuration in force (which names are recordings, hashed as they arrive).
    pub config: LiveConfig,
}

mod ended;
mod files;
mod packets;
pub use ended::SessionError;
use packets::{fs_err, ok, status, take_string, unit_reply, version};
mod replies;

use files::{GrowthRefused, UploadHandle, attrs_of, may_grow};
use replies::{Held, InFlight, Outstanding, OutstandingBytes, Reply, send_packet, write_in_order};

enum OpenHandle {
    Upload(UploadHandle),
    Read(Arc<File>),
    Dir(Box<super::listing::Listing>),
}

/// Serves SFTP on `stream` until the client goes away, then runs `ended` while the stream is
/// still open: russh closes a channel when its stream is dropped, and an exit status sent after
/// that close is lost (scp then exits 1 after a good upload).
pub async fn serve<S, E>(stream: S, ctx: SessionCtx, ended: E)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    E: std::future::Future<Output = ()>,
{
    let (mut reader, writer) = tokio::io::split(stream);
    let (tx, rx) = mpsc::unbounded_channel::<Reply>();
    let write_task = tokio::spawn(write_in_order(rx, writer));
    let outstanding = OutstandingBytes::default();
    let (reads, read_queue) = mpsc::unbounded_channel();
    let read_pump = tokio::spawn(files::pump_reads(read_queue, tx.clone()));
    let (folder_syncs, pending) = mpsc::unbounded_channel();
    let mut session = Session {
        handles: HashMap::new(),
        next_handle: 0,
        tx,
        seq: 0,
        next_seq: 0,
        slots: Arc::new(Semaphore::new(IN_FLIGHT)),
        write_budget: Arc::new(Semaphore::new(WRITE_BUDGET)),
        outstanding,
        reads: Some(reads),
        requests: tokio::task::JoinSet::new(),
        folder_syncs: Some(folder_syncs),
        ctx,
    };
    session.requests.spawn(sync_folders_then_announce(
        pending,
        session.ctx.arrivals.clone(),
        session.ctx.tenant.clone(),
    ));
    if let Err(why) = session.run(&mut reader).await {
        tracing::debug!(tenant = %session.ctx.tenant, "sftp session ended: {why}");
    }
    metrics::gauge!("dropsync_sftp_handles").decrement(session.handles.len() as f64);
    // Unfinished uploads first (each waits for its writes): one that another session's CLOSE
    // confirmed is put in place, and announced with the folder syncer's last batch. Closing
    // its queue then lets the syncer finish what is queued, and end.
    session.abort_all().await;
    // READs not answered yet have nobody left to answer.
    session.reads = None;
    read_pump.abort();
    let _ = read_pump.await;
    session.folder_syncs = None;
    while session.requests.join_next().await.is_some() {}
    drop(session);
    let _ = write_task.await;
    ended.await;
    drop(reader);
}

struct Session {
    ctx: SessionCtx,
    handles: HashMap<String, OpenHandle>,
    next_handle: u64,
    tx: mpsc::UnboundedSender<Reply>,
    /// The place of the request being handled; every request gets exactly one reply.
    seq: u64,
    next_seq: u64,
    /// Reads of upload handles being read (the read pump has its own).
    slots: Arc<Semaphore>,
    /// WRITE data not on disk yet, in bytes (`WRITE_BUDGET`).
    write_budget: Arc<Semaphore>,
    /// What the client has not had back yet (see [`replies::Outstanding`]).
    outstanding: OutstandingBytes,
    /// READs of read-only handles, for the read pump (see [`files::pump_reads`]).
    reads: Option<mpsc::UnboundedSender<files::ReadJob>>,
    /// WRITE requests in flight; waited for before the session ends.
    requests: tokio::task::JoinSet<()>,
    /// Closed uploads whose rename is not durable yet: their folders, and what to announce.
    folder_syncs: Option<mpsc::UnboundedSender<(std::path::PathBuf, Option<Arrival>)>>,
}

/// How long the folder syncer waits for more closes before one fsync covers them all.
const FOLDER_SYNC_WINDOW: std::time::Duration = std::time::Duration::from_millis(10);

/// Makes the renames of closed uploads durable, one folder fsync per batch of closes, then
/// announces the files. A client closing files one after another would otherwise pay a second
/// journal commit per file.
async fn sync_folders_then_announce(
    mut pending: mpsc::UnboundedReceiver<(std::path::PathBuf, Option<Arrival>)>,
    arrivals: mpsc::Sender<IngressEvent>,
    tenant: TenantId,
) {
    while let Some(first) = pending.recv().await {
        tokio::time::sleep(FOLDER_SYNC_WINDOW).await;
        let mut batch = vec![first];
        while let Ok(more) = pending.try_recv() {
            batch.push(more);
        }
        let folders: std::collections::BTreeSet<std::path::PathBuf> = batch.iter().map(|(f, _)| f.clone()).collect();
        let synced =
            tokio::task::spawn_blocking(move || folders.iter().try_for_each(|f| crate::fsutil::sync_dir(f))).await;
        if !matches!(synced, Ok(Ok(()))) {
            tracing::warn!(tenant = %tenant, "could not fsync a folder after uploads");
        }
        for (_, arrived) in batch {
            if let Some(Arrival { rel, digest }) = arrived {
                announce(&arrivals, &tenant, &rel, digest).await;
            }
        }
    }
}

impl Session {
    /// Sends the current request's reply. It never waits: see `replies` for why, and for what
    /// bounds the replies waiting to be written.
    async fn send(&self, p: Packet) -> Result<(), SessionError> {
        self.send_holding(p, None).await
    }

    /// Sends the current request's reply, holding `upload` in flight until it is written.
    async fn send_holding(&self, p: Packet, upload: Option<InFlight>) -> Result<(), SessionError> {
        let bytes = Bytes::try_from(p).map_err(SessionError::Encode)?;
        let outstanding = self.take_outstanding(bytes.len())?;
        let held = Held {
            _outstanding: Some(outstanding),
            _upload: upload,
            ..Held::default()
        };
        self.tx
            .send((self.seq, bytes, held))
            .map_err(|_| SessionError::ClientGone)
    }

    /// Counts `n` more bytes the client has not had back, or ends the session past the limit.
    fn take_outstanding(&self, n: usize) -> Result<Outstanding, SessionError> {
        self.outstanding.take(n).ok_or_else(|| {
            tracing::warn!(tenant = %self.ctx.tenant, "sftp session ended: its client sends requests and does not read the replies");
            SessionError::RepliesNotRead
        })
    }

    async fn run<R: AsyncRead + Unpin>(&mut self, reader: &mut R) -> Result<(), SessionError> {
        let mut initialised = false;
        loop {
            let len = match reader.read_u32().await {
                Ok(n) => n as usize,
                Err(_) => return Ok(()),
            };
            if len == 0 || len > MAX_PACKET {
                return Err(SessionError::PacketSize(len));
            }
            // Read into spare capacity: zeroing each packet's buffer first showed in profiles.
            let mut buf = BytesMut::with_capacity(len);
            while buf.len() < len {
                let want = (len - buf.len()) as u64;
                if (&mut *reader).take(want).read_buf(&mut buf).await? == 0 {
                    return Err(SessionError::MidPacket);
                }
            }
            self.seq = self.next_seq;
            self.next_seq += 1;
            let mut bytes = buf.freeze();
            let raw_id = if bytes.len() >= 5 {
                u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]])
            } else {
                0
            };
            let packet = match Packet::try_from(&mut bytes) {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(tenant = %self.ctx.tenant, error = %e, "undecodable sftp packet");
                    self.send(status(
                        raw_id,
                        StatusCode::OpUnsupported,
                        "unsupported or malformed request",
                    ))
                    .await?;
                    continue;
                }
            };
            if !initialised {
                let Packet::Init(_) = packet else {
                    return Err(SessionError::NotInit);
                };
                initialised = true;
                self.send(Packet::Version(version())).await?;
                continue;
            }
            self.dispatch(packet).await?;
        }
    }

    fn new_handle(&mut self, h: OpenHandle) -> String {
        metrics::gauge!("dropsync_sftp_handles").increment(1.0);
        self.next_handle += 1;
        let name = format!("h{}", self.next_handle);
        self.handles.insert(name.clone(), h);
        name
    }

    /// Runs blocking file-system work off the runtime.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(TenantFs) -> T + Send + 'static,
    ) -> Result<T, SessionError> {
        let fs = self.ctx.fs.clone();
        Ok(tokio::task::spawn_blocking(move || f(fs)).await?)
    }

    /// Runs a short file-system call (create, stat, mkdir, a rename without fsync) right on this
    /// task. A trip through the blocking pool costs two thread wake-ups per request, most of
    /// what a small file's OPEN and CLOSE take on a busy machine; calls that can take long
    /// (fsync, copying or removing a file, reading a folder, data) still go there.
    fn quick<T>(&self, f: impl FnOnce(&TenantFs) -> T) -> T {
        f(&self.ctx.fs)
    }

    /// A file-system call whose only answer is a status.
    async fn unit_op(
        &self,
        id: u32,
        f: impl FnOnce(TenantFs) -> super::fs::FsResult<()> + Send + 'static,
    ) -> Result<(), SessionError> {
        let reply = unit_reply(id, self.blocking(f).await?);
        self.send(reply).await
    }

    async fn dispatch(&mut self, packet: Packet) -> Result<(), SessionError> {
        // Each handle holds descriptors: one session must not use up the daemon's.
        if let Packet::Open(Open { id, .. }) | Packet::OpenDir(OpenDir { id, .. }) = &packet
            && self.handles.len() >= self.ctx.max_handles
        {
            let msg = format!(
                "too many open files: this session holds {} (sftp.max_handles); close some first",
                self.handles.len()
            );
            tracing::warn!(tenant = %self.ctx.tenant, max = self.ctx.max_handles, "open refused: too many handles");
            return self.send(status(*id, StatusCode::Failure, &msg)).await;
        }
        match packet {
            Packet::Write(w) => self.write(w).await,
            Packet::Read(r) => self.read(r.id, r.handle, r.offset, r.len).await,
            Packet::Open(o) => {
                let reply = self.open(o.id, o.filename, o.pflags).await?;
                self.send(reply).await
            }
            Packet::Close(c) => {
                let (reply, upload) = self.close(c.id, &c.handle).await?;
                self.send_holding(reply, upload).await
            }
            Packet::OpenDir(o) => self.open_dir(o.id, o.path).await,
            Packet::ReadDir(r) => self.read_dir(r.id, r.handle).await,
            Packet::Stat(s) => self.stat(s.id, s.path).await,
            Packet::Lstat(s) => self.stat(s.id, s.path).await,
            Packet::Fstat(f) => {
                let reply = match self.handles.get(&f.handle) {
                    Some(OpenHandle::Upload(u)) => attrs_of(f.id, &u.pending.file),
                    Some(OpenHandle::Read(file)) => attrs_of(f.id, file),
                    _ => status(f.id, StatusCode::Failure, "not an open file handle"),
                };
                self.send(reply).await
            }
            Packet::SetStat(s) => {
                // A size set on a file counts like bytes written: a sparse file at its
                // apparent size.
                if let Some(size) = s.attrs.size {
                    if let Some(pending) = self.ctx.fs.pending_at(&s.path) {
                        // Being written: its own quota grant grows.
                        if let Err(why) = may_grow(&pending, size, self.ctx.max_file_size) {
                            return self.send(status(s.id, StatusCode::Failure, &why.to_string())).await;
                        }
                    }
                    let held = self.quick(|fs| fs.stat(&s.path)).ok().and_then(|a| a.size).unwrap_or(0);
                    if let Err(why) = self.may_be_resized(size, held) {
                        return self.send(status(s.id, StatusCode::Failure, &why.to_string())).await;
                    }
                }
                let (path, attrs) = (s.path, s.attrs);
                self.unit_op(s.id, move |fs| fs.setstat(&path, &attrs)).await
            }
            Packet::FSetStat(s) => {
                let max_file_size = self.ctx.max_file_size;
                let reply = match self.handles.get_mut(&s.handle) {
                    Some(OpenHandle::Upload(u)) => {
                        let refused = s.attrs.size.map(|size| may_grow(&u.pending, size, max_file_size));
                        let set = match refused {
                            Some(Err(why)) => Err(why.to_string()),
                            _ => set_attrs(&u.pending.file, &s.attrs).map_err(|e| e.to_string()),
                        };
                        match (set, s.attrs.size) {
                            (Ok(()), Some(size)) => {
                                u.digest.set_size(size, &u.pending.file).await;
                                ok(s.id)
                            }
                            (Ok(()), None) => ok(s.id),
                            (Err(why), _) => status(s.id, StatusCode::Failure, &why),
                        }
                    }
                    Some(OpenHandle::Read(_)) => status(s.id, StatusCode::PermissionDenied, "file is open for reading"),
                    _ => status(s.id, StatusCode::Failure, "not an open file handle"),
                };
                self.send(reply).await
            }
            Packet::Remove(r) => {
                let path = r.filename.clone();
                let result = self.blocking(move |fs| fs.remove(&path)).await?;
                if result.is_ok() {
                    self.announce_gone(&r.filename).await;
                }
                self.send(unit_reply(r.id, result)).await
            }
            Packet::MkDir(m) => {
                let reply = unit_reply(m.id, self.quick(|fs| fs.mkdir(&m.path)));
                self.send(reply).await
            }
            Packet::RmDir(r) => self.unit_op(r.id, move |fs| fs.rmdir(&r.path)).await,
            Packet::RealPath(r) => {
                let reply = match self.ctx.fs.realpath(&r.path) {
                    Ok(p) => Packet::Name(Name {
                        id: r.id,
                        files: vec![russh_sftp::protocol::File::dummy(p)],
                    }),
                    Err(e) => fs_err(r.id, e),
                };
                self.send(reply).await
            }
            Packet::Rename(r) => self.rename(r.id, r.oldpath, r.newpath, false).await,
            Packet::ReadLink(r) => {
                self.send(status(r.id, StatusCode::NoSuchFile, "links are not supported"))
                    .await
            }
            Packet::Symlink(s) => {
                self.send(status(s.id, StatusCode::PermissionDenied, "links are not allowed"))
                    .await
            }
            Packet::Extended(e) => self.extended(e.id, e.request, Bytes::from(e.data)).await,
            other => {
                let id = other.get_request_id();
                self.send(status(id, StatusCode::OpUnsupported, "unexpected packet"))
                    .await
            }
        }
    }

    /// Whether a file holding `held` bytes may be made `size` bytes long (by SETSTAT).
    fn may_be_resized(&self, size: u64, held: u64) -> Result<(), GrowthRefused> {
        if size > self.ctx.max_file_size {
            return Err(GrowthRefused::TooLarge(self.ctx.max_file_size));
        }
        let extra = size.saturating_sub(held);
        Ok(self.ctx.quotas.check_growth(&self.ctx.tenant, extra)?)
    }

    async fn announce(&self, rel: &str, digest: Option<KnownDigest>) {
        announce(&self.ctx.arrivals, &self.ctx.tenant, rel, digest).await;
    }

    /// Tells intake that a file the tenant removed (or renamed away) is gone, so that the
    /// catalog, and the tenant's quota, stop counting it.
    async fn announce_gone(&self, raw: &str) {
        let Some(rel) = super::fs::VPath::parse(raw).ok().and_then(|v| RelPath::parse(&v.rel())) else {
            return;
        };
        if crate::dropbox::is_temp_name(rel.file_name()) {
            return;
        }
        let event = IngressEvent::Gone {
            tenant: self.ctx.tenant.clone(),
            rel,
        };
        let _ = self.ctx.arrivals.send(event).await;
    }

    async fn stat(&self, id: u32, path: String) -> Result<(), SessionError> {
        let reply = match self.quick(|fs| fs.stat(&path)) {
            Ok(attrs) => Packet::Attrs(Attrs { id, attrs }),
            Err(e) => fs_err(id, e),
        };
        self.send(reply).await
    }

    async fn rename(&self, id: u32, from: String, to: String, overwrite: bool) -> Result<(), SessionError> {
        let from_path = from.clone();
        let result = self.blocking(move |fs| fs.rename(&from, &to, overwrite)).await?;
        let reply = match result {
            Ok(arrived) => {
                self.announce_gone(&from_path).await;
                if let Some(rel) = arrived {
                    self.announce(&rel, None).await;
                }
                ok(id)
            }
            Err(e) => fs_err(id, e),
        };
        self.send(reply).await
    }

    async fn extended(&mut self, id: u32, request: String, mut data: Bytes) -> Result<(), SessionError> {
        match request.as_str() {
            "posix-rename@openssh.com" => match (take_string(&mut data), take_string(&mut data)) {
                (Some(from), Some(to)) => self.rename(id, from, to, true).await,
                _ => {
                    self.send(status(id, StatusCode::BadMessage, "malformed posix-rename"))
                        .await
                }
            },
            "limits@openssh.com" => {
                let mut b = BytesMut::with_capacity(32);
                b.put_u64(MAX_PACKET as u64 - 1024);
                b.put_u64(MAX_DATA);
                b.put_u64(MAX_DATA);
                b.put_u64(0);
                self.send(Packet::ExtendedReply(ExtendedReply { id, data: b.to_vec() }))
                    .await
            }
            "statvfs@openssh.com" => {
                let reply = match self.ctx.fs.statvfs() {
                    Ok(fields) => {
                        let mut b = BytesMut::with_capacity(88);
                        for f in fields {
                            b.put_u64(f);
                        }
                        Packet::ExtendedReply(ExtendedReply { id, data: b.to_vec() })
                    }
                    Err(e) => fs_err(id, e),
                };
                self.send(reply).await
            }
            "fsync@openssh.com" => {
                let reply = match take_string(&mut data).and_then(|h| self.handles.get(&h)) {
                    Some(OpenHandle::Upload(u)) => {
                        // An fsync takes milliseconds: not on the session task.
                        let file = u.pending.file.clone();
                        match self.blocking(move |_| file.sync_all()).await? {
                            Ok(()) => ok(id),
                            Err(e) => status(id, StatusCode::Failure, &e.to_string()),
                        }
                    }
                    Some(_) => ok(id),
                    None => status(id, StatusCode::Failure, "invalid handle"),
                };
                self.send(reply).await
            }
            other => {
                self.send(status(
                    id,
                    StatusCode::OpUnsupported,
                    &format!("{other} is not supported"),
                ))
                .await
            }
        }
    }
}

/// Tells intake that `rel` has arrived (the only announcement of it: the watcher leaves our
/// renames alone), with its digest if it was hashed as it was written.
async fn announce(arrivals: &mpsc::Sender<IngressEvent>, tenant: &TenantId, rel: &str, digest: Option<KnownDigest>) {
    if let Some(rel) = RelPath::parse(rel) {
        tracing::info!(tenant = %tenant, file = rel.as_str(), "upload complete");
        let event = IngressEvent::Arrived(Arrived {
            tenant: tenant.clone(),
            rel,
            via: Via::Sftp,
            digest,
        });
        let _ = arrivals.send(event).await;
    }
}
