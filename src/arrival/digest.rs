//! Hashing a recording as it is uploaded, so that intake need not read it back for its SHA-256.
//!
//! Clients send a file's writes in offset order (OpenSSH, paramiko, rclone, WinSCP), even when
//! many are in flight, and the session task sees them in that order: each is handed, by
//! reference, to a hashing task of the upload's own, off the session's path. A write out of
//! order (a resumed or sparse upload, a rewrite) gives the digest up, and intake hashes the file
//! from disk as before. A size set below what was hashed (FSETSTAT, `ftruncate` through sshfs)
//! breaks the stream too: what the file keeps is read back and hashed again, and the stream goes
//! on from its new end.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Chunks queued for the hashing task at most; the session waits beyond (its client is then
/// faster than SHA-256, about 1.5 GB/s here).
const QUEUED: usize = 16;

/// What the hashing task is fed, in the order the session saw it.
enum Feed {
    /// The next bytes of the file.
    Data(Bytes),
    /// The file was cut to `len` bytes: hash its first `len` bytes again, read back from it.
    Restart { file: Arc<File>, len: u64 },
}

/// The hashing task: what feeds it, and what it gives at the end (nothing if a read-back failed).
type Hashing = (mpsc::Sender<Feed>, JoinHandle<Option<[u8; 32]>>);

pub struct StreamDigest {
    /// Bytes hashed so far: the offset the next write must have.
    next: u64,
    feed: Option<Hashing>,
}

impl StreamDigest {
    /// A digest for a new, empty upload.
    pub fn start() -> Self {
        let (tx, mut rx) = mpsc::channel::<Feed>(QUEUED);
        let task = tokio::spawn(async move {
            let mut h = Sha256::new();
            while let Some(feed) = rx.recv().await {
                match feed {
                    Feed::Data(chunk) => h.update(&chunk),
                    // Off the runtime: the kept part may be large. Writes after the cut are at
                    // or past `len` (others give the digest up), so they cannot change it.
                    Feed::Restart { file, len } => {
                        h = tokio::task::spawn_blocking(move || hash_prefix(&file, len).ok())
                            .await
                            .ok()??;
                    }
                }
            }
            Some(h.finalize().into())
        });
        StreamDigest {
            next: 0,
            feed: Some((tx, task)),
        }
    }

    /// No digest: the upload does not start empty, or is not a recording.
    pub fn none() -> Self {
        StreamDigest { next: 0, feed: None }
    }

    /// Takes a write at `offset`, as the client sent it.
    pub async fn write(&mut self, offset: u64, data: &Bytes) {
        let Some((tx, _)) = &self.feed else { return };
        if offset != self.next || tx.send(Feed::Data(data.clone())).await.is_err() {
            self.give_up();
            return;
        }
        self.next += data.len() as u64;
    }

    /// The upload's size was set to `size` (`file` is the upload). Below what was hashed, the
    /// hash starts again from what the file keeps; above, the stream goes on where it was (a
    /// hole not written in order leaves the file longer than what was hashed: no digest).
    pub async fn set_size(&mut self, size: u64, file: &Arc<File>) {
        let Some((tx, _)) = &self.feed else { return };
        if size >= self.next {
            return;
        }
        let restart = Feed::Restart {
            file: file.clone(),
            len: size,
        };
        if tx.send(restart).await.is_err() {
            self.give_up();
            return;
        }
        self.next = size;
    }

    fn give_up(&mut self) {
        if let Some((_, task)) = self.feed.take() {
            task.abort();
        }
    }

    /// The SHA-256 of the first `len` bytes, if every one of them was hashed in order and
    /// nothing was written past them.
    pub async fn finish(mut self, len: u64) -> Option<[u8; 32]> {
        let (tx, task) = self.feed.take()?;
        drop(tx);
        let digest = task.await.ok()??;
        (self.next == len).then_some(digest)
    }
}

/// A hasher fed the first `len` bytes of `file` (a file shorter than that is an error).
pub(super) fn hash_prefix(file: &File, len: u64) -> std::io::Result<Sha256> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; (len.min(1 << 20)) as usize];
    let mut at = 0u64;
    while at < len {
        let want = buf.len().min((len - at) as usize);
        match file.read_at(&mut buf[..want], at) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file is shorter than its start",
                ));
            }
            Ok(n) => {
                h.update(&buf[..n]);
                at += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(h)
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

    /// What a file holds after `steps`, and what the digest made of it.
    async fn upload(steps: &[Step]) -> (Vec<u8>, Option<[u8; 32]>) {
        let file = Arc::new(tempfile::tempfile().unwrap());
        let mut d = StreamDigest::start();
        for step in steps {
            match step {
                Step::Write(offset, data) => {
                    file.write_all_at(data, *offset).unwrap();
                    d.write(*offset, &Bytes::copy_from_slice(data)).await;
                }
                Step::SetSize(size) => {
                    file.set_len(*size).unwrap();
                    d.set_size(*size, &file).await;
                }
            }
        }
        let mut content = vec![0u8; file.metadata().unwrap().len() as usize];
        file.read_exact_at(&mut content, 0).unwrap();
        let digest = d.finish(content.len() as u64).await;
        (content, digest)
    }

    enum Step {
        Write(u64, &'static [u8]),
        SetSize(u64),
    }

    #[tokio::test]
    async fn a_shrink_then_regrow_never_gives_a_wrong_digest() {
        use Step::*;
        for steps in [
            // Shrunk under what was hashed, then written on where the stream had got to: the
            // bytes between are a hole now, not what was hashed.
            vec![Write(0, b"0123456789"), SetSize(4), Write(10, b"abcdef")],
            // Shrunk, then written on from the new end: the kept part is read back.
            vec![Write(0, b"0123456789"), SetSize(4), Write(4, b"abcdef")],
            // Shrunk to nothing and sent again from the start.
            vec![Write(0, b"0123456789"), SetSize(0), Write(0, b"abcdef")],
            // Grown with a hole, then written on from the old end: not all of it was hashed.
            vec![Write(0, b"0123"), SetSize(8), Write(4, b"ab")],
            // Grown, and the hole filled in order.
            vec![Write(0, b"0123"), SetSize(8), Write(4, b"abcd")],
        ] {
            let (content, digest) = upload(&steps).await;
            if let Some(digest) = digest {
                assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&content)), "{content:?}");
            }
        }
        // The read-back keeps the digest where the stream can go on.
        let (content, digest) = upload(&[Write(0, b"0123456789"), SetSize(4), Write(4, b"abcdef")]).await;
        assert_eq!(content, b"0123abcdef");
        assert_eq!(digest, Some(Sha256::digest(&content).into()));
    }
}
