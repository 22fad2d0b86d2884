//! Durable file operations shared by the drop folders, reports and the dir sink, and a file's
//! identity whatever its name ([`FileId`]).
//!
//! "Atomic" here means: readers see the old file or the new one, never a part, and once the call
//! returns the new file survives a crash (data fsynced, then renamed, then the folder fsynced).

use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};

use sha2::{Digest, Sha256};

/// Which file this is, whatever its name: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of(meta: &std::fs::Metadata) -> FileId {
        use std::os::unix::fs::MetadataExt;
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
    /// Whether this is the file recorded with `ino` and `dev` (either unknown for records
    /// older than the migration that added it: then that part is not compared).
    pub fn is_recorded(&self, ino: Option<u64>, dev: Option<u64>) -> bool {
        ino.is_none_or(|ino| ino == self.ino) && dev.is_none_or(|dev| dev == self.dev)
    }
    pub fn of_stat(st: &rustix::fs::Stat) -> FileId {
        FileId {
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }
}

/// fsyncs a folder so that a rename or create inside it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A temp name beside `path`, hidden (leading '.') so that no watcher takes it for an arrival,
/// and of a fixed length, so that a final name of 255 bytes still has a temp name.
pub fn temp_beside(path: &Path) -> PathBuf {
    path.with_file_name(temp_name())
}

/// The name part of [`temp_beside`].
pub fn temp_name() -> String {
    format!(".dropsync-{:016x}.tmp", fastrand::u64(..))
}

/// Whether a file name is one of our own temp names (left behind only by a crash).
pub fn is_our_temp(name: &str) -> bool {
    name.starts_with(".dropsync-") && name.ends_with(".tmp")
}

/// Whether a name is ours: temp files, SFTP uploads in progress (`.dropsync-…`).
pub fn is_our_temp_prefix(name: &str) -> bool {
    name.starts_with(".dropsync-")
}

/// Writes `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_via(&temp_beside(path), path, bytes)
}

/// Like [`write_atomic`], staging the data at `tmp` (same file system as `path`).
pub fn write_atomic_via(tmp: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let result = (|| {
        let mut f = File::create(tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(tmp);
    }
    result
}

/// A file written under a temp name beside its final path and put in place by [`AtomicFile::commit`];
/// dropped uncommitted, it leaves nothing behind. Its folder is held open from the start, so the
/// rename lands where the file was begun.
pub struct AtomicFile {
    dir: OwnedFd,
    tmp: String,
    name: String,
    file: Option<io::BufWriter<File>>,
}

impl AtomicFile {
    /// A file at `path` (a folder of ours, created if missing).
    pub fn create(path: &Path) -> io::Result<AtomicFile> {
        let folder = path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(folder)?;
        let dir = rustix::fs::open(
            folder,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        AtomicFile::create_in(dir, name)
    }

    /// A file named `name` in the folder `dir`, held open.
    pub fn create_in(dir: OwnedFd, name: &str) -> io::Result<AtomicFile> {
        let tmp = temp_name();
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let file = File::from(rustix::fs::openat(
            &dir,
            tmp.as_str(),
            flags,
            Mode::from_raw_mode(0o644),
        )?);
        Ok(AtomicFile {
            dir,
            tmp,
            name: name.to_owned(),
            file: Some(io::BufWriter::with_capacity(256 * 1024, file)),
        })
    }

    /// fsync, rename into place, fsync the folder.
    pub fn commit(mut self) -> io::Result<()> {
        let file = self
            .file
            .take()
            .expect("committed once")
            .into_inner()
            .map_err(|e| e.into_error())?;
        file.sync_all()?;
        let renamed = rustix::fs::renameat(&self.dir, self.tmp.as_str(), &self.dir, self.name.as_str());
        if let Err(e) = renamed {
            let _ = rustix::fs::unlinkat(&self.dir, self.tmp.as_str(), AtFlags::empty());
            return Err(e.into());
        }
        Ok(rustix::fs::fsync(&self.dir)?)
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.as_mut().expect("not committed").write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().expect("not committed").flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = rustix::fs::unlinkat(&self.dir, self.tmp.as_str(), AtFlags::empty());
        }
    }
}

/// Size and sha256 of everything `reader` yields, copying it to `out` on the way.
fn hash_copy(mut reader: impl Read, mut out: impl Write) -> io::Result<(u64, [u8; 32])> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        total += n as u64;
    }
    Ok((total, hasher.finalize().into()))
}

/// Size and sha256 of everything `reader` yields.
pub fn hash_reader(reader: impl Read) -> io::Result<(u64, [u8; 32])> {
    hash_copy(reader, io::sink())
}

/// Copies `input` to `dst` atomically and durably, staging it at `tmp` (same file system),
/// returning the bytes copied and their sha256.
pub fn copy_atomic_via(input: impl Read, tmp: &Path, dst: &Path) -> io::Result<(u64, [u8; 32])> {
    let dir = dst.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let result = (|| {
        let mut out = File::create(tmp)?;
        let copied = hash_copy(input, &mut out)?;
        out.sync_all()?;
        fs::rename(tmp, dst)?;
        sync_dir(dir)?;
        Ok(copied)
    })();
    if result.is_err() {
        let _ = fs::remove_file(tmp);
    }
    result
}

/// Asks the kernel to start writing `len` bytes of `file` from `offset` (0: to the end) to disk,
/// without waiting, so that a later fsync finds little left to do. Only a hint: errors are left
/// to that fsync.
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a descriptor the caller keeps open; it only starts write-back.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// How many threads [`sync_files`] fsyncs on at most. They only wait on the disk; on a virtio
/// disk 16 let 10,000 small files sync in about three quarters of the time that 4 did, and no
/// faster with 64.
const SYNC_THREADS: usize = 16;

/// fsyncs every file of `files` (each already asked to start its write-back with
/// [`start_writeback`], so the disk has been busy meanwhile), from a few threads at once: the
/// file system then commits its journal and flushes the disk's cache once for several of
/// them, where one fsync after another pays a commit each. Returns the first error.
pub fn sync_files(files: &[File]) -> io::Result<()> {
    let per_thread = files.len().div_ceil(SYNC_THREADS).max(1);
    std::thread::scope(|s| {
        let parts: Vec<_> = files
            .chunks(per_thread)
            .map(|part| s.spawn(move || part.iter().try_for_each(File::sync_all)))
            .collect();
        parts
            .into_iter()
            .map(|p| {
                p.join()
                    .unwrap_or_else(|_| Err(io::Error::other("an fsync thread panicked")))
            })
            .collect::<io::Result<Vec<()>>>()
            .map(drop)
    })
}

/// Writes a file from a stream of chunks on a blocking thread while the producer goes on, and
/// fsyncs it at the end. Write-back is started every [`WRITEBACK_EVERY`] bytes
/// (`sync_file_range`), so the disk works while data still arrives and the final fsync has little
/// left to do.
pub struct BackgroundWriter {
    chunks: tokio::sync::mpsc::Sender<Vec<u8>>,
    spare: tokio::sync::mpsc::Receiver<Vec<u8>>,
    done: tokio::task::JoinHandle<io::Result<[u8; 32]>>,
}

/// How much written data may sit in the page cache before write-back is started.
const WRITEBACK_EVERY: u64 = 8 << 20;

impl BackgroundWriter {
    /// Takes over `file` (open for reading too), positioned where the first chunk goes. The
    /// whole file's SHA-256 is computed on the way (bytes already before the position included),
    /// so nobody has to read the file again for it.
    pub fn start(mut file: File) -> BackgroundWriter {
        let (chunks, mut incoming) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        let (recycle, spare) = tokio::sync::mpsc::channel(4);
        let done = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let mut pos = file.stream_position()?;
            let mut hasher = Sha256::new();
            let mut prefix = if pos > 0 { vec![0u8; 1 << 20] } else { Vec::new() };
            let mut at = 0u64;
            while at < pos {
                let want = prefix.len().min((pos - at) as usize);
                let n = file.read_at(&mut prefix[..want], at)?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file is shorter than its start",
                    ));
                }
                hasher.update(&prefix[..n]);
                at += n as u64;
            }
            drop(prefix);
            let mut flushed = pos;
            while let Some(mut chunk) = incoming.blocking_recv() {
                hasher.update(&chunk);
                file.write_all(&chunk)?;
                pos += chunk.len() as u64;
                if pos - flushed >= WRITEBACK_EVERY {
                    start_writeback(&file, flushed, pos - flushed);
                    flushed = pos;
                }
                chunk.clear();
                let _ = recycle.try_send(chunk);
            }
            file.sync_all()?;
            Ok(hasher.finalize().into())
        });
        BackgroundWriter { chunks, spare, done }
    }

    /// An empty buffer of at least `capacity` bytes, recycled when one is free.
    pub fn buffer(&mut self, capacity: usize) -> Vec<u8> {
        match self.spare.try_recv() {
            Ok(b) if b.capacity() >= capacity => b,
            _ => Vec::with_capacity(capacity),
        }
    }

    /// Queues `chunk`; waits only while earlier chunks are still being written.
    pub async fn write(&mut self, chunk: Vec<u8>) -> io::Result<()> {
        if self.chunks.send(chunk).await.is_err() {
            // The writer stopped: its error says why.
            return match (&mut self.done).await {
                Ok(Err(e)) => Err(e),
                Ok(Ok(_)) => Err(io::Error::other("the file writer stopped early")),
                Err(e) => Err(io::Error::other(e.to_string())),
            };
        }
        Ok(())
    }

    /// Writes what is queued and fsyncs the file; returns the whole file's SHA-256.
    pub async fn finish(self) -> io::Result<[u8; 32]> {
        drop(self.chunks);
        self.done.await.map_err(|e| io::Error::other(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn background_writer_appends_chunks_after_the_start_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"keep").unwrap();
        let mut file = fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        file.seek(io::SeekFrom::Start(4)).unwrap();
        let mut w = BackgroundWriter::start(file);
        let mut expected = b"keep".to_vec();
        // Enough chunks to pass the write-back threshold and to recycle buffers.
        for i in 0..40u8 {
            let mut buf = w.buffer(1 << 20);
            buf.resize(300_000, i);
            expected.extend_from_slice(&buf);
            w.write(buf).await.unwrap();
        }
        let digest = w.finish().await.unwrap();
        assert_eq!(fs::read(&path).unwrap(), expected);
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&expected)));
    }
}
