//! Hashing a recording as it is uploaded, so that intake need not read it back for its SHA-256.
//!
//! Clients send a file's writes in offset order (OpenSSH, paramiko, rclone, WinSCP), even when
//! many are in flight, and the session task sees them in that order: each is handed, by
//! reference, to a hashing task of the upload's own, off the session's path. A write out of
//! order (a resumed or sparse upload, a rewrite) gives the digest up, and intake hashes the file
//! from disk as before.

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Chunks queued for the hashing task at most; the session waits beyond (its client is then
/// faster than SHA-256, about 1.5 GB/s here).
const QUEUED: usize = 16;

pub(super) struct StreamDigest {
    /// Bytes hashed so far: the offset the next write must have.
    next: u64,
    feed: Option<(mpsc::Sender<Bytes>, JoinHandle<[u8; 32]>)>,
}

impl StreamDigest {
    /// A digest for a new, empty upload.
    pub(super) fn start() -> Self {
        let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUED);
        let task = tokio::spawn(async move {
            let mut h = Sha256::new();
            while let Some(chunk) = rx.recv().await {
                h.update(&chunk);
            }
            h.finalize().into()
        });
        StreamDigest {
            next: 0,
            feed: Some((tx, task)),
        }
    }

    /// No digest: the upload does not start empty, or is not a recording.
    pub(super) fn none() -> Self {
        StreamDigest { next: 0, feed: None }
    }

    /// Takes a write at `offset`, as the client sent it.
    pub(super) async fn write(&mut self, offset: u64, data: &Bytes) {
        let Some((tx, _)) = &self.feed else { return };
        if offset != self.next || tx.send(data.clone()).await.is_err() {
            self.give_up();
            return;
        }
        self.next += data.len() as u64;
    }

    fn give_up(&mut self) {
        if let Some((_, task)) = self.feed.take() {
            task.abort();
        }
    }

    /// The SHA-256 of the first `len` bytes, if every one of them was hashed in order and
    /// nothing was written past them.
    pub(super) async fn finish(mut self, len: u64) -> Option<[u8; 32]> {
        let (tx, task) = self.feed.take()?;
        drop(tx);
        let digest = task.await.ok()?;
        (self.next == len).then_some(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_order_writes_give_the_file_digest_and_others_none() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let whole: [u8; 32] = Sha256::digest(&data).into();
        let mut d = StreamDigest::start();
        for (i, chunk) in data.chunks(32 * 1024).enumerate() {
            d.write((i * 32 * 1024) as u64, &Bytes::copy_from_slice(chunk)).await;
        }
        assert_eq!(d.finish(data.len() as u64).await, Some(whole));
        // A write out of order gives it up; so does a file longer than what was hashed.
        let mut d = StreamDigest::start();
        d.write(10, &Bytes::from_static(b"late")).await;
        assert_eq!(d.finish(14).await, None);
        let mut d = StreamDigest::start();
        d.write(0, &Bytes::from_static(b"abc")).await;
        assert_eq!(d.finish(4).await, None);
    }
}
