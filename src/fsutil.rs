//! Durable file operations shared by the drop folders, reports and the dir sink, and a file's
//! identity whatever its name ([`FileId`]).
//!
//! "Atomic" here means: readers see the old file or the new one, never a part, and once the call
//! returns the new file survives a crash (data fsynced, then renamed, then the folder fsynced).

use std::fs::{self, File};
use std::io::{self, Read, Write};
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

/// A file's modification time in nanoseconds since the epoch, as the catalog records it.
pub fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    meta.mtime() * 1_000_000_000 + meta.mtime_nsec()
}

/// fsyncs a folder so that a rename or create inside it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The start of every name dropsync gives a file of its own inside a drop folder or the state
/// folder. Clients may not create, see or touch a name that starts with it.
pub const OUR_PREFIX: &str = ".dropsync-";

/// What one of our temp files is, which says what a crash leaves to do with it. Every temp name
/// has one format, `.dropsync-<kind>-<16 hex digits>`: hidden (a leading dot), so that no
/// watcher or scan takes it for an arrival, and of a fixed length, so that a final name of 255
/// bytes still has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TempKind {
    /// A client's upload in progress: at start-up renamed into place if it was marked complete,
    /// removed if not.
    Upload,
    /// A download from a tenant's FTP server: kept, and resumed at the next poll.
    Pull,
    /// A file written whole and then renamed (zip entries, reports, sink files, keys): removed
    /// at start-up, its writer starts again.
    Staged,
}

impl TempKind {
    fn tag(self) -> &'static str {
        match self {
            TempKind::Upload => "upload",
            TempKind::Pull => "pull",
            TempKind::Staged => "staged",
        }
    }

    /// A new temp name of this kind.
    pub fn name(self) -> String {
        format!("{OUR_PREFIX}{}-{:016x}", self.tag(), fastrand::u64(..))
    }

    /// The temp name of this kind for `key`: the same for the same key, so that a writer
    /// finds its own file again (a resumed download).
    pub fn name_for(self, key: &str) -> String {
        let digest = Sha256::digest(key.as_bytes());
        let mut eight = [0u8; 8];
        eight.copy_from_slice(&digest[..8]);
        format!("{OUR_PREFIX}{}-{:016x}", self.tag(), u64::from_be_bytes(eight))
    }

    /// The kind of temp file `name` is, if it is one of ours (names of earlier versions
    /// included: `.dropsync-<hex>.tmp` was a staged file, `.dropsync-ftp-<hex>.part` a pull).
    pub fn of(name: &str) -> Option<TempKind> {
        let rest = name.strip_prefix(OUR_PREFIX)?;
        let (tag, hex) = rest.split_once('-').unwrap_or(("", rest));
        let hex16 = |h: &str| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit());
        match tag {
            "upload" if hex16(hex) => Some(TempKind::Upload),
            "pull" if hex16(hex) => Some(TempKind::Pull),
            "staged" if hex16(hex) => Some(TempKind::Staged),
            "ftp" if hex.strip_suffix(".part").is_some_and(hex16) => Some(TempKind::Pull),
            "" if hex.strip_suffix(".tmp").is_some_and(hex16) => Some(TempKind::Staged),
            _ => None,
        }
    }
}

/// Whether `name` is reserved for our own files (see [`OUR_PREFIX`]).
pub fn is_ours(name: &str) -> bool {
    name.starts_with(OUR_PREFIX)
}

/// A staged temp name beside `path` (see [`TempKind`]).
pub fn temp_beside(path: &Path) -> PathBuf {
    path.with_file_name(TempKind::Staged.name())
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
        let tmp = TempKind::Staged.name();
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

/// Opens `path` for reading, never through a link (the archive's files, found by a path the
/// catalog recorded).
pub fn open_nofollow(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_have_one_format_and_say_their_kind() {
        for kind in [TempKind::Upload, TempKind::Pull, TempKind::Staged] {
            let name = kind.name();
            assert_eq!(TempKind::of(&name), Some(kind), "{name}");
            assert!(is_ours(&name) && name.len() == name.replace(kind.tag(), "").len() + kind.tag().len());
        }
        assert_eq!(TempKind::Pull.name_for("a\nb"), TempKind::Pull.name_for("a\nb"));
        assert_ne!(TempKind::Pull.name_for("a\nb"), TempKind::Pull.name_for("a\nc"));
        // Names of earlier versions, left by a crash before an upgrade.
        assert_eq!(TempKind::of(".dropsync-0123456789abcdef.tmp"), Some(TempKind::Staged));
        assert_eq!(
            TempKind::of(".dropsync-ftp-0123456789abcdef.part"),
            Some(TempKind::Pull)
        );
        for theirs in [
            ".dropsync-upload-x",
            ".dropsync-",
            "c1.wav",
            ".dropsync-staged-0123456789abcdef.wav",
        ] {
            assert_eq!(TempKind::of(theirs), None, "{theirs}");
        }
    }
}
