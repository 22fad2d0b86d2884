//! Replies of a session: in the order their requests came, each holding its request's slot
//! until it is written, so that no blocking thread ever waits on the client.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use russh_sftp::protocol::Packet;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

/// A reply, with the place of its request in the session (replies leave in request order) and
/// what it holds until it is written to the client.
pub(super) type Reply = (u64, Bytes, Held);

/// What a reply holds until it is written: its request's slot (at most `IN_FLIGHT` replies
/// wait), and for an upload's CLOSE, the upload's place among those a stop waits for.
pub(super) struct Held {
    pub _slot: OwnedSemaphorePermit,
    pub _upload: Option<InFlight>,
}

/// Hands a reply to the session's writer from a blocking thread, which must never wait on the
/// client: the request's
/// `slot` travels with the reply and is freed only once the reply is written, so at most
/// `IN_FLIGHT` such replies exist per session and the queue (twice that) always has room. A
/// client that stops reading stalls its own session, never the blocking pool.
pub(super) fn send_packet_blocking(tx: &mpsc::Sender<Reply>, seq: u64, p: Packet, slot: OwnedSemaphorePermit) {
    match Bytes::try_from(p) {
        Ok(bytes) => {
            let held = Held {
                _slot: slot,
                _upload: None,
            };
            if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send((seq, bytes, held)) {
                tracing::error!("sftp reply queue full: a reply was dropped (a bug; the session will stall)");
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not encode an sftp reply"),
    }
}

/// Writes replies in the order their requests came, whatever order they are ready in. READs and
/// WRITEs run concurrently and finish out of order, but clients that pipeline writes (paramiko)
/// match each reply to the oldest request they wait for, and hang on any other order; OpenSSH's
/// own server answers in order too. At most `IN_FLIGHT` + 1 replies wait here.
pub(super) async fn write_in_order<W: AsyncWrite + Unpin>(mut rx: mpsc::Receiver<Reply>, mut writer: W) {
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
