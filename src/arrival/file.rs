//! A file written front to back into a drop folder (a zip entry, an FTP download, an HTTP body):
//! created under a temp name of ours, each chunk granted by the quota before it is written and
//! hashed as it is written, then handed over as [`Written`] to be made durable and put in place
//! ([`super::place`]). [`Background`] does the same on a blocking thread for an async writer,
//! so that a network connection never waits for the disk.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use rustix::fs::{AtFlags, Mode, OFlags};
use sha2::{Digest, Sha256};

use super::KnownDigest;
use crate::dropbox::RelPath;
use crate::fsutil::{self, FileId, TempKind};
use crate::limits::{FileGrant, QuotaExceeded};

/// Why a chunk was not written.
#[derive(Debug)]
pub enum WriteStop {
    Io(io::Error),
    /// The tenant's quota has no room for it.
    Quota(QuotaExceeded),
}

impl From<io::Error> for WriteStop {
    fn from(e: io::Error) -> Self {
        WriteStop::Io(e)
    }
}

impl From<WriteStop> for io::Error {
    fn from(e: WriteStop) -> Self {
        match e {
            WriteStop::Io(e) => e,
            WriteStop::Quota(e) => io::Error::new(io::ErrorKind::QuotaExceeded, e.to_string()),
        }
    }
}

impl std::fmt::Display for WriteStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteStop::Io(e) => e.fmt(f),
            WriteStop::Quota(e) => e.fmt(f),
        }
    }
}

/// How much written data may sit in the page cache before write-back is started, so that the
/// disk works while data still comes and the final sync has little left to do.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// Creates the temp file `tmp` in `dir` for reading and writing: a new file (`exclusive`) or the
/// one there (a resumed download); never through a link.
pub fn create_temp(dir: &OwnedFd, tmp: &str, exclusive: bool) -> io::Result<File> {
    let mut flags = OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if exclusive {
        flags |= OFlags::EXCL;
    }
    match rustix::fs::openat(dir, tmp, flags, Mode::from_raw_mode(0o640)) {
        Ok(fd) => Ok(File::from(fd)),
        Err(rustix::io::Errno::LOOP) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            "no such file (links are not followed)",
        )),
        Err(e) => Err(e.into()),
    }
}

/// A file being written, under its temp name.
pub struct ArrivingFile {
    dir: Arc<OwnedFd>,
    tmp: String,
    rel: RelPath,
    file: File,
    grant: Option<FileGrant>,
    hasher: Sha256,
    len: u64,
    /// Where write-back was last started.
    flushed: u64,
}

impl ArrivingFile {
    /// A new, empty file that will be `rel` (its folder is `dir`, held open), counted by `grant`
    /// from now on.
    pub fn create(dir: Arc<OwnedFd>, rel: RelPath, grant: Option<FileGrant>) -> io::Result<ArrivingFile> {
        let tmp = TempKind::Staged.name();
        let file = create_temp(&dir, &tmp, true)?;
        ArrivingFile::start(dir, tmp, rel, file, grant, 0)
    }

    /// The temp file `tmp` (created if missing) that will be `rel`, keeping its first `keep`
    /// bytes (a download resumed where it stopped; 0 starts it again). The kept bytes are read
    /// back for the digest.
    pub fn resume(
        dir: Arc<OwnedFd>,
        rel: RelPath,
        tmp: String,
        keep: u64,
        grant: Option<FileGrant>,
    ) -> io::Result<ArrivingFile> {
        let file = create_temp(&dir, &tmp, false)?;
        let keep = keep.min(file.metadata()?.len());
        file.set_len(keep)?;
        ArrivingFile::start(dir, tmp, rel, file, grant, keep)
    }

    fn start(
        dir: Arc<OwnedFd>,
        tmp: String,
        rel: RelPath,
        file: File,
        mut grant: Option<FileGrant>,
        len: u64,
    ) -> io::Result<ArrivingFile> {
        // The temp file is the grant's to count, not the walk of the folder's.
        if let Some(g) = grant.as_mut() {
            g.cover(FileId::of(&file.metadata()?));
        }
        let mut arriving = ArrivingFile {
            dir,
            tmp,
            rel,
            file,
            grant,
            hasher: Sha256::new(),
            len,
            flushed: len,
        };
        if len > 0
            && let Err(e) = arriving.hash_kept()
        {
            arriving.discard();
            return Err(e);
        }
        Ok(arriving)
    }

    /// Hashes the bytes the file starts with.
    fn hash_kept(&mut self) -> io::Result<()> {
        self.hasher = super::digest::hash_prefix(&self.file, self.len)?;
        Ok(())
    }

    /// Starts again from an empty file (a download that cannot be resumed after all).
    pub fn restart(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.hasher = Sha256::new();
        self.len = 0;
        self.flushed = 0;
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn rel(&self) -> &RelPath {
        &self.rel
    }

    /// Appends `chunk`, once the quota has granted it.
    pub fn append(&mut self, chunk: &[u8]) -> Result<(), WriteStop> {
        let end = self.len + chunk.len() as u64;
        if let Some(g) = self.grant.as_mut() {
            g.grow_to(end).map_err(WriteStop::Quota)?;
        }
        self.file.write_all_at(chunk, self.len)?;
        self.hasher.update(chunk);
        self.len = end;
        if self.len - self.flushed >= WRITEBACK_EVERY {
            fsutil::start_writeback(&self.file, self.flushed, self.len - self.flushed);
            self.flushed = self.len;
        }
        Ok(())
    }

    /// Done writing: the file and its digest, to be made durable and put in place. (What is
    /// still dirty is left to the batch's sync: starting write-back of each small file of a
    /// batch on its own costs a request each, where one `syncfs` sends them together.)
    pub fn finish(self) -> io::Result<Written> {
        let meta = self.file.metadata()?;
        let digest = (meta.len() == self.len).then(|| KnownDigest::of(&meta, self.hasher.clone().finalize().into()));
        let ArrivingFile {
            dir,
            tmp,
            rel,
            file,
            grant,
            ..
        } = self;
        Ok(Written {
            dir,
            tmp,
            rel,
            file: Some(file),
            grant,
            digest,
            len: meta.len(),
        })
    }

    /// Removes the temp file: nothing is left behind.
    pub fn discard(self) {
        let _ = rustix::fs::unlinkat(&*self.dir, self.tmp.as_str(), AtFlags::empty());
    }
}

/// A file written under its temp name, not yet durable nor in place.
pub struct Written {
    pub(super) dir: Arc<OwnedFd>,
    pub(super) tmp: String,
    pub(super) rel: RelPath,
    /// Open until its data is synced (see [`super::Batch`]).
    pub(super) file: Option<File>,
    pub(super) grant: Option<FileGrant>,
    pub(super) digest: Option<KnownDigest>,
    pub(super) len: u64,
}

impl Written {
    /// Its digest, taken as it was written (`None` if the file changed under its writer).
    pub fn digest(&self) -> Option<KnownDigest> {
        self.digest
    }

    pub fn rel(&self) -> &RelPath {
        &self.rel
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Removes the temp file: nothing is left behind.
    pub fn discard(self) {
        let _ = rustix::fs::unlinkat(&*self.dir, self.tmp.as_str(), AtFlags::empty());
    }
}

/// An [`ArrivingFile`] written on a blocking thread: the async writer queues chunks and goes on
/// reading from its network while earlier ones land.
pub struct Background {
    chunks: tokio::sync::mpsc::Sender<Vec<u8>>,
    spare: tokio::sync::mpsc::Receiver<Vec<u8>>,
    /// The writing thread, until its end was awaited (a failed write awaits it for its error).
    done: Option<tokio::task::JoinHandle<Result<Written, WriteStop>>>,
    /// Where the file is, for [`Background::discard`].
    dir: Arc<OwnedFd>,
    tmp: String,
}

impl Background {
    /// Takes over `file`; chunks are appended to it in the order they are queued.
    pub fn start(mut file: ArrivingFile) -> Background {
        let (dir, tmp) = (file.dir.clone(), file.tmp.clone());
        let (chunks, mut incoming) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        let (recycle, spare) = tokio::sync::mpsc::channel(4);
        let done = tokio::task::spawn_blocking(move || {
            while let Some(mut chunk) = incoming.blocking_recv() {
                // On a failure, what was written stays for a resume; the caller decides.
                file.append(&chunk)?;
                chunk.clear();
                let _ = recycle.try_send(chunk);
            }
            Ok(file.finish()?)
        });
        Background {
            chunks,
            spare,
            done: Some(done),
            dir,
            tmp,
        }
    }

    /// An empty buffer of at least `capacity` bytes, recycled when one is free.
    pub fn buffer(&mut self, capacity: usize) -> Vec<u8> {
        match self.spare.try_recv() {
            Ok(b) if b.capacity() >= capacity => b,
            _ => Vec::with_capacity(capacity),
        }
    }

    /// Queues `chunk`; waits only while earlier chunks are still being written.
    pub async fn write(&mut self, chunk: Vec<u8>) -> Result<(), WriteStop> {
        if self.chunks.send(chunk).await.is_err() {
            // The writer stopped: its error says why.
            let Some(done) = self.done.take() else {
                return Err(stopped_early());
            };
            return match done.await {
                Ok(Err(e)) => Err(e),
                Ok(Ok(_)) => Err(stopped_early()),
                Err(e) => Err(WriteStop::Io(io::Error::other(e.to_string()))),
            };
        }
        Ok(())
    }

    /// Writes what is queued; the file, written, not yet durable.
    pub async fn finish(self) -> Result<Written, WriteStop> {
        drop(self.chunks);
        let Some(done) = self.done else {
            return Err(stopped_early());
        };
        done.await.map_err(|e| WriteStop::Io(io::Error::other(e.to_string())))?
    }

    /// Stops writing and removes the file, whatever stopped it: nothing is left behind.
    pub async fn discard(self) {
        drop(self.chunks);
        if let Some(done) = self.done
            && let Ok(Ok(written)) = done.await
        {
            return written.discard();
        }
        let _ = rustix::fs::unlinkat(&*self.dir, self.tmp.as_str(), AtFlags::empty());
    }
}

fn stopped_early() -> WriteStop {
    WriteStop::Io(io::Error::other("the file writer stopped early"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn folder(dir: &std::path::Path) -> Arc<OwnedFd> {
        Arc::new(rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_resumed_file_keeps_its_start_and_its_digest_covers_all_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = TempKind::Pull.name_for("src\nc1.wav");
        fs::write(dir.path().join(&tmp), b"keep-and-drop").unwrap();
        let rel = RelPath::parse("c1.wav").unwrap();
        let arriving = ArrivingFile::resume(folder(dir.path()), rel, tmp.clone(), 4, None).unwrap();
        assert_eq!(arriving.len(), 4);
        let mut w = Background::start(arriving);
        let mut expected = b"keep".to_vec();
        // Enough chunks to pass the write-back threshold and to recycle buffers.
        for i in 0..40u8 {
            let mut buf = w.buffer(1 << 20);
            buf.resize(300_000, i);
            expected.extend_from_slice(&buf);
            w.write(buf).await.unwrap();
        }
        let written = w.finish().await.unwrap();
        assert_eq!(fs::read(dir.path().join(&tmp)).unwrap(), expected);
        let digest = written.digest.unwrap();
        assert_eq!(digest.sha256, <[u8; 32]>::from(Sha256::digest(&expected)));
        assert_eq!(digest.size, expected.len() as u64);
    }

    #[test]
    fn a_chunk_the_quota_refuses_is_not_written() {
        let fx = crate::limits::fixture(crate::tenant::Quota {
            bytes: Some(10),
            files: None,
            sessions: None,
        });
        let dir = fx.drops.tenant_dir(&fx.acme);
        let grant = fx.limits.open_file(&fx.acme, "c1.wav").unwrap();
        let rel = RelPath::parse("c1.wav").unwrap();
        let mut f = ArrivingFile::create(folder(&dir), rel, Some(grant)).unwrap();
        f.append(b"0123456789").unwrap();
        assert!(matches!(f.append(b"x"), Err(WriteStop::Quota(_))));
        assert_eq!(f.len(), 10);
        f.discard();
        let left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_file())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
