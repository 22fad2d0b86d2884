//! Zip batches (SPEC §2): unpacked flat beside the archive, entry by entry, within limits and
//! within the tenant's quota (SPEC §8), each entry a file arriving like any other
//! ([`ArrivingFile`], then one [`Batch`] for the whole archive).

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use super::{ArrivingFile, Batch, Placed, Placement, Replace, WriteStop};
use crate::backoff::Retry;
use crate::config::MatchingConfig;
use crate::dropbox::{RelPath, is_temp_name};
use crate::limits::Limits;
use crate::matching::extension;
use crate::tenant::TenantId;

/// Bytes read from an entry at a time, each asked of the quota before it is written.
const CHUNK: usize = 256 << 10;

/// Whose quota a zip batch is unpacked into.
pub struct ZipQuota<'a> {
    pub limits: &'a Arc<Limits>,
    pub tenant: &'a TenantId,
}

/// Why a zip batch was not unpacked; nothing of it is left behind either way.
#[derive(Debug, thiserror::Error)]
pub enum UnzipError {
    /// The archive as it is cannot be taken (unreadable, past a limit or the quota): the
    /// tenant is told, and the same archive would be refused again.
    #[error("{0}")]
    Refused(String),
    /// Our side failed (reading the archive or writing the drop folder): a retry may help.
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

/// A refused archive is refused again; our side's failure may clear, as its I/O error says.
impl Retry for UnzipError {
    fn retry_helps(&self) -> bool {
        match self {
            UnzipError::Refused(_) => false,
            UnzipError::Io { source, .. } => source.retry_helps(),
        }
    }
}

/// Why an entry stopped being written.
enum Stop {
    Write(WriteStop),
    /// The archive's unpacked total passed its limit.
    Limit,
    /// The entry's data cannot be read from the archive.
    Corrupt(io::Error),
}

/// How much a zip batch may hold (SPEC §8).
#[derive(Debug, Clone, Copy)]
pub struct ZipLimits {
    pub max_unpacked: u64,
    pub max_entries: u64,
    pub max_ratio: u64,
}

impl ZipLimits {
    pub fn of(matching: &MatchingConfig) -> Self {
        ZipLimits {
            max_unpacked: matching.zip_max_unpacked,
            max_entries: matching.zip_max_entries,
            max_ratio: matching.zip_max_ratio,
        }
    }
}

/// What a zip batch gave, entry by entry.
#[derive(Debug, Default)]
pub struct Unpacked {
    /// Files now in place beside the archive, with their digests.
    pub files: Vec<Placed>,
    /// Entries not unpacked, and why.
    pub refused: Vec<(String, String)>,
}

/// Unpacks `archive` into `dest`, the folder `dest_rel` of the drop folder, held open (SPEC §2
/// "Zip batch"): flat; entries with a folder part, `..`, an absolute path, a link, a hidden or
/// temp name, or a nested archive are refused one by one. If the unpacked total would pass
/// its limit (counted as bytes come out, not as the archive claims), or the tenant's quota
/// (each entry is a file it holds, its bytes asked for as they come out), or the archive cannot
/// be read, nothing is left behind and the reason is returned.
///
/// Entries are written under temp names, hashed as they are written, and made durable and put
/// in place as one [`Batch`] once all are written; the caller records and announces them only
/// after this returns, so nothing is announced that a crash could take back (a crash before
/// leaves temp names only, and the zip is unpacked again at the next start, as its intake item
/// was not finished).
pub fn unpack_zip(
    file: File,
    dest: Arc<OwnedFd>,
    dest_rel: &str,
    limits: &ZipLimits,
    quota: &ZipQuota<'_>,
) -> Result<Unpacked, UnzipError> {
    let refused = |why: String| UnzipError::Refused(why);
    let archive_len = file
        .metadata()
        .map_err(|source| UnzipError::Io {
            what: "the archive cannot be read".into(),
            source,
        })?
        .len();
    let mut zip = zip::ZipArchive::new(file).map_err(|e| refused(format!("is not a readable zip archive: {e}")))?;
    if zip.len() as u64 > limits.max_entries {
        return Err(refused(format!(
            "has {} entries, more than the limit of {} (matching.zip_max_entries); nothing was unpacked",
            zip.len(),
            limits.max_entries
        )));
    }
    // Counted as bytes come out, whatever the archive claims.
    let by_ratio = archive_len.saturating_mul(limits.max_ratio);
    let (max_bytes, limit_reason) = if by_ratio < limits.max_unpacked {
        (
            by_ratio,
            format!(
                "unpacks to more than {} times its own size (matching.zip_max_ratio); nothing was unpacked",
                limits.max_ratio
            ),
        )
    } else {
        (
            limits.max_unpacked,
            format!(
                "unpacks to more than the limit of {} (matching.zip_max_unpacked); nothing was unpacked",
                bytesize::ByteSize::b(limits.max_unpacked)
            ),
        )
    };
    let mut out = Unpacked::default();
    let mut batch = Batch::new();
    let mut total = 0u64;
    // One buffer for the whole archive: zeroing a fresh one per entry cost more than the copy.
    let mut buf = vec![0u8; CHUNK];
    for i in 0..zip.len() {
        let mut entry = match zip.by_index(i) {
            Ok(e) => e,
            Err(e) => {
                batch.discard();
                return Err(refused(format!("entry {} cannot be read: {e}", i + 1)));
            }
        };
        let name = match entry.name() {
            Ok(n) => n.into_owned(),
            Err(_) => {
                out.refused
                    .push((format!("entry {}", i + 1), "has a name that is not valid text".into()));
                continue;
            }
        };
        if entry.is_dir() {
            continue;
        }
        let rel = match refusal(&entry, &name) {
            Some(why) => Err(why),
            None => RelPath::join_dir(dest_rel, &name).ok_or("has a name that is not safe to unpack"),
        };
        let rel = match rel {
            Ok(rel) => rel,
            Err(why) => {
                out.refused.push((name, why.to_owned()));
                continue;
            }
        };
        let grant = match quota.limits.open_file(quota.tenant, &name) {
            Ok(g) => g,
            Err(e) => {
                batch.discard();
                return Err(refused(format!("{e}; nothing was unpacked")));
            }
        };
        let io_error = |what: String| move |source| UnzipError::Io { what, source };
        let arriving = match ArrivingFile::create(dest.clone(), rel, Some(grant)) {
            Ok(f) => f,
            Err(e) => {
                batch.discard();
                return Err(io_error(format!("entry {name:?} cannot be unpacked"))(e));
            }
        };
        let written = write_entry(&mut entry, arriving, max_bytes.saturating_sub(total), &mut buf);
        let added = written.and_then(|w| {
            total += w.len();
            batch.add(w).map_err(|e| Stop::Write(WriteStop::Io(e)))
        });
        if let Err(stop) = added {
            batch.discard();
            return Err(match stop {
                Stop::Limit => refused(limit_reason),
                Stop::Write(WriteStop::Quota(e)) => refused(format!("{e}; nothing was unpacked")),
                Stop::Corrupt(e) => refused(format!("entry {name:?} cannot be read: {e}")),
                Stop::Write(WriteStop::Io(e)) => io_error(format!("entry {name:?} cannot be unpacked"))(e),
            });
        }
    }
    let Placement { placed, failed } = batch.place(Replace::Allowed).map_err(|source| UnzipError::Io {
        what: "entries cannot be made durable".into(),
        source,
    })?;
    out.files = placed;
    for (rel, e) in failed {
        out.refused
            .push((rel.file_name().to_owned(), format!("could not be put in place: {e}")));
    }
    Ok(out)
}

/// Why an entry is not unpacked at all, if it is not.
fn refusal(entry: &zip::read::ZipFile<'_, File>, name: &str) -> Option<&'static str> {
    if entry.is_symlink() {
        Some("is a link; links are not unpacked")
    } else if name.starts_with('/') || name.contains(':') && name.chars().nth(1) == Some(':') {
        Some("has an absolute path")
    } else if name.split(['/', '\\']).any(|p| p == "..") {
        Some("has '..' in its path")
    } else if name.contains('/') || name.contains('\\') {
        Some("is inside a folder; put the files at the top of the archive")
    } else if entry.enclosed_name().is_none() || name.is_empty() || name.contains('\0') {
        Some("has a name that is not safe to unpack")
    } else if is_temp_name(name) {
        Some("is a hidden or temporary file")
    } else if extension(name).as_deref() == Some("zip") {
        Some("is an archive inside the archive; archives are not unpacked twice")
    } else if entry.encrypted() {
        Some("is encrypted")
    } else {
        None
    }
}

/// Writes one entry into `file`, at most `budget` bytes, each chunk granted by the quota before
/// it is written. Nothing of it is left if it stops.
fn write_entry(
    entry: &mut impl Read,
    mut file: ArrivingFile,
    budget: u64,
    buf: &mut [u8],
) -> Result<super::Written, Stop> {
    let stopped = loop {
        let got = match entry.read(buf) {
            Ok(0) => break None,
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Some(Stop::Corrupt(e)),
        };
        if file.len() + got as u64 > budget {
            break Some(Stop::Limit);
        }
        if let Err(e) = file.append(&buf[..got]) {
            break Some(Stop::Write(e));
        }
    };
    match stopped {
        Some(stop) => {
            file.discard();
            Err(stop)
        }
        None => file.finish().map_err(|e| Stop::Write(WriteStop::Io(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::Path;

    fn unpack(zip: &Path, dest: &Path, limits: &ZipLimits) -> Result<Unpacked, String> {
        unpack_within(zip, dest, limits, &crate::limits::fixture(Default::default()))
    }

    fn unpack_within(
        zip: &Path,
        dest: &Path,
        limits: &ZipLimits,
        quota: &crate::limits::Fixture,
    ) -> Result<Unpacked, String> {
        use rustix::fs::{Mode, OFlags};
        let dir = rustix::fs::open(dest, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let quota = ZipQuota {
            limits: &quota.limits,
            tenant: &quota.acme,
        };
        let file = File::open(zip).map_err(|e| format!("cannot be opened: {e}"))?;
        unpack_zip(file, Arc::new(dir), "", limits, &quota).map_err(|e| e.to_string())
    }

    fn names(u: &Unpacked) -> Vec<&str> {
        u.files.iter().map(|p| p.rel.as_str()).collect()
    }
    use std::io::Write;
    use zip::write::SimpleFileOptions;

    fn make_zip(path: &Path, entries: &[(&str, &[u8])]) {
        let mut w = zip::ZipWriter::new(File::create(path).unwrap());
        for (name, data) in entries {
            w.start_file(*name, SimpleFileOptions::default()).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap();
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn zip_unpacks_flat_files_and_refuses_hostile_entries() {
        let dir = tempfile::tempdir().unwrap();
        let zip_path = dir.path().join("b.zip");
        make_zip(
            &zip_path,
            &[
                ("c1.wav", b"RIFF1"),
                ("batch.csv", b"a,b\n"),
                ("../evil.wav", b"x"),
                ("/etc/evil.wav", b"x"),
                ("sub/c2.wav", b"x"),
                ("..\\win.wav", b"x"),
                (".hidden", b"x"),
                ("inner.zip", b"PK"),
            ],
        );
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        let u = unpack(&zip_path, &out, &limits(1 << 20)).unwrap();
        assert_eq!(names(&u), ["c1.wav", "batch.csv"]);
        assert_eq!(listing(&out), ["batch.csv", "c1.wav"]);
        assert_eq!(fs::read(out.join("c1.wav")).unwrap(), b"RIFF1");
        let refused: Vec<&str> = u.refused.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            refused,
            [
                "../evil.wav",
                "/etc/evil.wav",
                "sub/c2.wav",
                "..\\win.wav",
                ".hidden",
                "inner.zip"
            ]
        );
        assert!(!dir.path().join("evil.wav").exists());
    }

    #[test]
    fn zip_links_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let zip_path = dir.path().join("l.zip");
        let mut w = zip::ZipWriter::new(File::create(&zip_path).unwrap());
        w.add_symlink("link.wav", "/etc/passwd", SimpleFileOptions::default())
            .unwrap();
        w.start_file("ok.wav", SimpleFileOptions::default()).unwrap();
        w.write_all(b"x").unwrap();
        w.finish().unwrap();
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        let u = unpack(&zip_path, &out, &limits(1 << 20)).unwrap();
        assert_eq!(names(&u), ["ok.wav"]);
        assert_eq!(u.refused[0].0, "link.wav");
        assert!(u.refused[0].1.contains("link"));
        assert_eq!(listing(&out), ["ok.wav"]);
    }

    #[test]
    fn zip_bomb_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let zip_path = dir.path().join("bomb.zip");
        let zeros = vec![0u8; 4 << 20];
        let mut w = zip::ZipWriter::new(File::create(&zip_path).unwrap());
        let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        for i in 0..4 {
            w.start_file(format!("z{i}.wav"), opts).unwrap();
            w.write_all(&zeros).unwrap();
        }
        w.finish().unwrap();
        assert!(
            fs::metadata(&zip_path).unwrap().len() < 200_000,
            "the archive should compress well"
        );
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        // By size: 16 MiB out of a 10 MiB allowance (whatever the ratio).
        let by_size = ZipLimits {
            max_ratio: 1_000_000,
            ..limits(10 << 20)
        };
        let err = unpack(&zip_path, &out, &by_size).unwrap_err();
        assert!(err.contains("more than the limit of 10.0 MiB"), "{err}");
        assert!(listing(&out).is_empty(), "{:?}", listing(&out));
        // By ratio: well within the size limit, but over 200 times the archive's size.
        let err = unpack(&zip_path, &out, &limits(1 << 30)).unwrap_err();
        assert!(err.contains("200 times its own size"), "{err}");
        assert!(listing(&out).is_empty(), "{:?}", listing(&out));
        // By entries.
        let few = ZipLimits {
            max_entries: 3,
            ..limits(1 << 30)
        };
        let err = unpack(&zip_path, &out, &few).unwrap_err();
        assert!(err.contains("has 4 entries, more than the limit of 3"), "{err}");
    }

    #[test]
    fn zips_are_unpacked_only_within_the_quota() {
        let dir = tempfile::tempdir().unwrap();
        let zip_path = dir.path().join("b.zip");
        make_zip(
            &zip_path,
            &[("a.wav", &[1; 600]), ("b.wav", &[2; 600]), ("c.wav", &[3; 10])],
        );
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        let files = crate::limits::fixture(crate::tenant::Quota {
            files: Some(2),
            ..Default::default()
        });
        let err = unpack_within(&zip_path, &out, &limits(1 << 20), &files).unwrap_err();
        assert_eq!(err, "quota exceeded: 2 files held (quota.files); nothing was unpacked");
        assert!(listing(&out).is_empty(), "{:?}", listing(&out));
        let bytes = crate::limits::fixture(crate::tenant::Quota {
            bytes: Some(1000),
            ..Default::default()
        });
        let err = unpack_within(&zip_path, &out, &limits(1 << 20), &bytes).unwrap_err();
        assert_eq!(err, "quota exceeded: 1000 B held (quota.bytes); nothing was unpacked");
        assert!(listing(&out).is_empty(), "{:?}", listing(&out));
        // Nothing stays counted by a refused zip; a zip that fits stays counted once unpacked.
        let mut probe = bytes.limits.open_file(&bytes.acme, "x.wav").unwrap();
        probe.grow_to(1000).unwrap();
        drop(probe);
        make_zip(&zip_path, &[("a.wav", &[1; 600])]);
        unpack_within(&zip_path, &out, &limits(1 << 20), &bytes).unwrap();
        let mut probe = bytes.limits.open_file(&bytes.acme, "x.wav").unwrap();
        assert!(probe.grow_to(401).is_err() && probe.grow_to(400).is_ok());
    }

    fn limits(max_unpacked: u64) -> ZipLimits {
        ZipLimits {
            max_unpacked,
            max_entries: 10_000,
            max_ratio: 200,
        }
    }

    #[test]
    fn not_a_zip_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.zip");
        fs::write(&p, b"not a zip at all").unwrap();
        assert!(
            unpack(&p, dir.path(), &limits(1 << 20))
                .unwrap_err()
                .contains("not a readable zip")
        );
    }
}
