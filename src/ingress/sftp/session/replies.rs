//! Replies of a session: in the order their requests came, each holding its request's slot
//! until it is written, so that no blocking thread ever waits on the client.

use bytes::Bytes;
use russh_sftp::protocol::Packet;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

/// A reply, with the place of its request in the session (replies leave in request order) and
/// a slot, held until the reply is written to the client: at most `IN_FLIGHT` replies wait.
pub(super) type Reply = (u64, Bytes, OwnedSemaphorePermit);

/// Hands a reply to the session's writer from a blocking thread, which must never wait on the
/// client: the request's
/// `slot` travels with the reply and is freed only once the reply is written, so at most
/// `IN_FLIGHT` such replies exist per session and the queue (twice that) always has room. A
/// client that stops reading stalls its own session, never the blocking pool.
pub(super) fn send_packet_blocking(tx: &mpsc::Sender<Reply>, seq: u64, p: Packet, slot: OwnedSemaphorePermit) {
    match Bytes::try_from(p) {
        Ok(bytes) => {
            if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send((seq, bytes, slot)) {
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
    let mut early: std::collections::BTreeMap<u64, (Bytes, OwnedSemaphorePermit)> = std::collections::BTreeMap::new();
    'replies: while let Some((seq, bytes, slot)) = rx.recv().await {
        early.insert(seq, (bytes, slot));
        while let Some((bytes, slot)) = early.remove(&next) {
            next += 1;
            if writer.write_all(&bytes).await.is_err() {
                break 'replies;
            }
            drop(slot);
        }
    }
    let _ = writer.shutdown().await;
}
