//! Replies of a session, written in the order their requests came.
//!
//! Nothing that takes requests in may wait for a reply to be written. russh 0.65 hands a
//! channel's data to us from its connection loop, which waits while the channel's buffer
//! (`channel_buffer_size` messages) is full, and meanwhile sends nothing and reads no window
//! adjustment. A session that waited for its replies to leave before reading the next request
//! would wait on that loop, which waits on it. So replies are queued without a bound in count,
//! and what they hold is bounded elsewhere: a WRITE's data until it is on disk
//! (`WRITE_BUDGET`, the reader waits for the disk only), a READ's data until it is written
//! (`READ_BUDGET`, waited for by the session's read pump, never by the reader), and every
//! other reply is small; [`Outstanding`] ends a session whose client asks and never reads.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use russh_sftp::protocol::Packet;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

/// A reply, with the place of its request in the session (replies leave in request order) and
/// what it holds until it is written to the client.
pub(super) type Reply = (u64, Bytes, Held);

/// What a reply holds until it is written: a READ's share of `READ_BUDGET`, its part of the
/// session's outstanding bytes, and for an upload's CLOSE, the upload's place among those a
/// stop waits for.
#[derive(Default)]
pub(super) struct Held {
    pub _budget: Option<OwnedSemaphorePermit>,
    pub _outstanding: Option<Outstanding>,
    pub _upload: Option<InFlight>,
}

/// Hands a reply to the session's writer; never waits (blocking threads call it too).
pub(super) fn send_packet(tx: &mpsc::UnboundedSender<Reply>, seq: u64, p: Packet, held: Held) {
    match Bytes::try_from(p) {
        Ok(bytes) => {
            // An error only means the session is over: nobody is left to read the reply.
            let _ = tx.send((seq, bytes, held));
        }
        Err(e) => tracing::warn!(error = %e, "could not encode an sftp reply"),
    }
}

/// Bytes a session has taken in that its client has not had back yet: replies not written
/// (other than READ data, which `READ_BUDGET` bounds) and READs not answered yet. Legitimate
/// clients bound what they keep in flight; one past [`Outstanding::LIMIT`] asks and does not
/// read, and its session ends instead of growing.
#[derive(Clone, Default)]
pub(super) struct OutstandingBytes(Arc<AtomicUsize>);

impl OutstandingBytes {
    /// Counts `n` bytes until the returned guard is dropped; `None` past the limit.
    pub(super) fn take(&self, n: usize) -> Option<Outstanding> {
        let before = self.0.fetch_add(n, Ordering::Relaxed);
        let guard = Outstanding(self.0.clone(), n);
        (before + n <= Outstanding::LIMIT).then_some(guard)
    }
}

/// A share of [`OutstandingBytes`], given back when dropped.
pub(super) struct Outstanding(Arc<AtomicUsize>, usize);

impl Outstanding {
    /// 16 MiB: 128 Ki queued READs (4 GiB asked for at once in 32 KiB READs, as paramiko's
    /// prefetch does), or some hundreds of READDIR replies nobody reads.
    pub(super) const LIMIT: usize = 16 << 20;
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::Relaxed);
    }
}

/// Writes replies in the order their requests came, whatever order they are ready in. READs and
/// WRITEs run concurrently and finish out of order, but clients that pipeline writes (paramiko)
/// match each reply to the oldest request they wait for, and hang on any other order; OpenSSH's
/// own server answers in order too.
pub(super) async fn write_in_order<W: AsyncWrite + Unpin>(mut rx: mpsc::UnboundedReceiver<Reply>, mut writer: W) {
    let mut next = 0u64;
    let mut early: std::collections::BTreeMap<u64, (Bytes, Held)> = std::collections::BTreeMap::new();
    'replies: while let Some((seq, bytes, held)) = rx.recv().await {
        early.insert(seq, (bytes, held));
        while let Some((bytes, held)) = early.remove(&next) {
            next += 1;
            if writer.write_all(&bytes).await.is_err() {
                break 'replies;
            }
            drop(held);
        }
    }
    let _ = writer.shutdown().await;
}

/// One upload handle's place in [`super::SessionCtx::open_uploads`], given back when dropped:
/// with the handle when its connection is lost, or with its CLOSE's reply once that is written.
/// A stop that saw the count fall at the start of a CLOSE cut the connection before the client
/// heard that its file had arrived.
pub(super) struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    pub(super) fn count(uploads: &Arc<AtomicUsize>) -> Self {
        uploads.fetch_add(1, Ordering::Relaxed);
        InFlight(uploads.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
