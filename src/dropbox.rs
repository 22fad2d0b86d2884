//! Tenant drop folders on disk: `{state_dir}/drop/{tenant}/`.
//!
//! Takes absolute paths (from a watcher, a scan, an ingress) and gives back confined,
//! tenant-relative paths, or nothing. Knows which names are temporary, which files are
//! recordings, metadata or zip batches, and unpacks zip batches safely. Nothing here follows a
//! path out of a tenant's folder.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use crate::config::MatchingConfig;
use crate::fsutil;
use crate::matching::{MetadataFormat, extension};
use crate::tenant::TenantId;

/// The folder, inside each tenant's drop folder, where we write reports; never ingested.
pub const REPORTS_DIR: &str = "reports";

/// Suffixes that clients use while a file is still being written (WinSCP, rclone, lftp, ...).
const TEMP_SUFFIXES: &[&str] = &[".filepart", ".part", ".partial", ".tmp", ".upload"];

/// A path inside one tenant's drop folder: '/'-separated, no '.', '..' or empty parts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelPath(String);

impl RelPath {
    /// Validates a '/'-separated relative path.
    pub fn parse(raw: &str) -> Option<Self> {
        if raw.is_empty() || raw.starts_with('/') || raw.contains('\\') || raw.contains('\0') {
            return None;
        }
        if raw
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
        {
            return None;
        }
        Some(RelPath(raw.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }
    /// The folder part, "" for the tenant's root.
    pub fn dir(&self) -> &str {
        match self.0.rfind('/') {
            Some(i) => &self.0[..i],
            None => "",
        }
    }
    pub fn join_dir(dir: &str, name: &str) -> Option<Self> {
        if dir.is_empty() {
            Self::parse(name)
        } else {
            Self::parse(&format!("{dir}/{name}"))
        }
    }
    pub fn in_reports(&self) -> bool {
        self.0 == REPORTS_DIR || self.0.starts_with("reports/")
    }
}

/// What a file in a drop folder is, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Recording,
    Metadata(MetadataFormat),
    Zip,
    /// Not something we ingest; reported as rejected.
    Unknown,
}

impl FileKind {
    pub fn of(name: &str, matching: &MatchingConfig) -> Self {
        match extension(name) {
            Some(ext) if ext == "zip" => FileKind::Zip,
            Some(ext) if matching.is_recording_ext(&ext) => FileKind::Recording,
            Some(ext) => MetadataFormat::from_extension(&ext).map_or(FileKind::Unknown, FileKind::Metadata),
            None => FileKind::Unknown,
        }
    }
}

/// Names that are never ingested until renamed (SPEC §2 rule 2).
pub fn is_temp_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    name.starts_with('.') || TEMP_SUFFIXES.iter().any(|s| lower.ends_with(s))
}

/// The drop folders of all tenants.
#[derive(Debug, Clone)]
pub struct DropRoot {
    root: PathBuf,
}

impl DropRoot {
    pub fn new(root: PathBuf) -> Self {
        DropRoot { root }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn tenant_dir(&self, tenant: &TenantId) -> PathBuf {
        self.root.join(tenant.as_str())
    }
    pub fn path_of(&self, tenant: &TenantId, rel: &RelPath) -> PathBuf {
        self.tenant_dir(tenant).join(rel.as_str())
    }
    pub fn ensure_tenant(&self, tenant: &TenantId) -> io::Result<()> {
        fs::create_dir_all(self.tenant_dir(tenant).join(REPORTS_DIR))
    }

    /// Splits an absolute path under the drop root into tenant and relative path, if it is one
    /// we could ingest: inside a known tenant's folder, not a temp name, not in reports/.
    pub fn locate(&self, path: &Path) -> Option<(TenantId, RelPath)> {
        let rest = path.strip_prefix(&self.root).ok()?;
        let mut parts = Vec::new();
        for c in rest.components() {
            match c {
                Component::Normal(s) => parts.push(s.to_str()?),
                _ => return None,
            }
        }
        let (tenant, rel) = parts.split_first()?;
        let tenant = TenantId::parse(tenant).ok()?;
        let rel = RelPath::parse(&rel.join("/"))?;
        if rel.in_reports() || is_temp_name(rel.file_name()) {
            return None;
        }
        Some((tenant, rel))
    }

    /// The tenant whose drop folder holds `path`, if any.
    pub fn tenant_of(&self, path: &Path) -> Option<TenantId> {
        let rest = path.strip_prefix(&self.root).ok()?;
        match rest.components().next()? {
            Component::Normal(s) => TenantId::parse(s.to_str()?).ok(),
            _ => None,
        }
    }

    /// Checks that no folder between the tenant's root and `rel` is a symlink, so that a link
    /// planted in a drop folder cannot lead us out of it; then opens the file itself without
    /// following a link.
    pub fn open_confined(&self, tenant: &TenantId, rel: &RelPath) -> io::Result<File> {
        let base = self.tenant_dir(tenant);
        let mut dir = base.clone();
        let parts: Vec<&str> = rel.as_str().split('/').collect();
        for part in &parts[..parts.len() - 1] {
            dir.push(part);
            if !fs::symlink_metadata(&dir)?.is_dir() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a folder on the way is a link",
                ));
            }
        }
        fsutil::open_regular_nofollow(&base.join(rel.as_str()))
    }

    /// Creates the folder `dir` ("" for the root) inside a tenant's drop folder, one level at a
    /// time, refusing any level that is a link or not a folder. Returns its path.
    pub fn ensure_dir(&self, tenant: &TenantId, dir: &str) -> io::Result<PathBuf> {
        let mut path = self.tenant_dir(tenant);
        for part in dir.split('/').filter(|p| !p.is_empty()) {
            if part == "." || part == ".." {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "'.' or '..' in a folder name",
                ));
            }
            path.push(part);
            match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{} exists and is not a folder", path.display()),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::create_dir(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e),
                },
                Err(e) => return Err(e),
            }
        }
        Ok(path)
    }

    /// Every regular, non-temporary file of a tenant (for reconciliation), sorted by path. Our
    /// own temp files, which only a crash leaves behind, are removed on the way.
    pub fn scan_tenant(&self, tenant: &TenantId) -> io::Result<Vec<RelPath>> {
        self.scan(tenant, None)
    }

    /// Like [`DropRoot::scan_tenant`], limited to the folder `under` and below.
    pub fn scan(&self, tenant: &TenantId, under: Option<&RelPath>) -> io::Result<Vec<RelPath>> {
        let base = self.tenant_dir(tenant);
        let mut out = Vec::new();
        let mut stack = vec![under.map_or(String::new(), |u| u.as_str().to_owned())];
        while let Some(dir) = stack.pop() {
            let abs = if dir.is_empty() { base.clone() } else { base.join(&dir) };
            let entries = match fs::read_dir(&abs) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                let Some(rel) = RelPath::join_dir(&dir, &name) else {
                    continue;
                };
                let ft = entry.file_type()?;
                if ft.is_file() && fsutil::is_our_temp(&name) {
                    // Left by a crash mid-unzip; the archive is unpacked again.
                    let _ = fs::remove_file(entry.path());
                    continue;
                }
                if ft.is_dir() && !rel.in_reports() && !name.starts_with('.') {
                    stack.push(rel.0);
                } else if ft.is_file() && !rel.in_reports() && !is_temp_name(&name) {
                    out.push(rel);
                }
            }
        }
        out.sort();
        Ok(out)
    }
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
    /// File names now in place beside the archive.
    pub files: Vec<String>,
    /// Entries not unpacked, and why.
    pub refused: Vec<(String, String)>,
}

/// Unpacks `archive` into `dest` (SPEC §2 "Zip batch"): flat; entries with a folder part, `..`,
/// an absolute path, a link, a hidden or temp name, or a nested archive are refused one by one.
/// If the unpacked total would pass `max_bytes` (counted as bytes come out, not as the archive
/// claims), or the archive cannot be read, nothing is left behind and the reason is returned.
///
/// Entries are written under hidden temp names and renamed into place only once all are
/// complete and fsynced, so a crash leaves only temp names, which are never ingested.
pub fn unpack_zip(archive: &Path, dest: &Path, limits: &ZipLimits) -> Result<Unpacked, String> {
    let file = fsutil::open_regular_nofollow(archive).map_err(|e| format!("cannot be opened: {e}"))?;
    let archive_len = file.metadata().map_err(|e| format!("cannot be read: {e}"))?.len();
    let mut zip = zip::ZipArchive::new(file).map_err(|e| format!("is not a readable zip archive: {e}"))?;
    if zip.len() as u64 > limits.max_entries {
        return Err(format!(
            "has {} entries, more than the limit of {} (matching.zip_max_entries); nothing was unpacked",
            zip.len(),
            limits.max_entries
        ));
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
    let mut staged: Vec<(PathBuf, String)> = Vec::new();
    let cleanup = |staged: &[(PathBuf, String)]| {
        for (tmp, _) in staged {
            let _ = fs::remove_file(tmp);
        }
    };
    let mut total = 0u64;
    for i in 0..zip.len() {
        let mut entry = match zip.by_index(i) {
            Ok(e) => e,
            Err(e) => {
                cleanup(&staged);
                return Err(format!("entry {} cannot be read: {e}", i + 1));
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
        let refusal = if entry.is_symlink() {
            Some("is a link; links are not unpacked")
        } else if name.starts_with('/') || name.contains(':') && name.chars().nth(1) == Some(':') {
            Some("has an absolute path")
        } else if name.split(['/', '\\']).any(|p| p == "..") {
            Some("has '..' in its path")
        } else if name.contains('/') || name.contains('\\') {
            Some("is inside a folder; put the files at the top of the archive")
        } else if entry.enclosed_name().is_none() || name.is_empty() || name.contains('\0') {
            Some("has a name that is not safe to unpack")
        } else if is_temp_name(&name) {
            Some("is a hidden or temporary file")
        } else if extension(&name).as_deref() == Some("zip") {
            Some("is an archive inside the archive; archives are not unpacked twice")
        } else if entry.encrypted() {
            Some("is encrypted")
        } else {
            None
        };
        if let Some(why) = refusal {
            out.refused.push((name, why.to_owned()));
            continue;
        }
        let final_path = dest.join(&name);
        let tmp = fsutil::temp_beside(&final_path);
        let written = (|| -> io::Result<u64> {
            let mut f = File::create(&tmp)?;
            let budget = max_bytes.saturating_sub(total);
            let n = io::copy(&mut (&mut entry).take(budget + 1), &mut f)?;
            f.sync_all()?;
            Ok(n)
        })();
        staged.push((tmp, name.clone()));
        match written {
            Ok(n) => {
                total += n;
                if total > max_bytes {
                    cleanup(&staged);
                    return Err(limit_reason);
                }
            }
            Err(e) => {
                cleanup(&staged);
                return Err(format!("entry {name:?} cannot be unpacked: {e}"));
            }
        }
    }
    // Two entries with one name: the later wins, as an overwrite by upload would.
    for (tmp, name) in staged {
        if let Err(e) = fs::rename(&tmp, dest.join(&name)) {
            let _ = fs::remove_file(&tmp);
            out.refused.push((name, format!("could not be put in place: {e}")));
            continue;
        }
        if !out.files.contains(&name) {
            out.files.push(name);
        }
    }
    fsutil::sync_dir(dest).map_err(|e| format!("folder cannot be synced: {e}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use zip::write::SimpleFileOptions;

    #[test]
    fn rel_paths_refuse_escapes() {
        for ok in ["a.wav", "sub/a.wav", "a/b/c.csv", "..a", "a..b"] {
            assert!(RelPath::parse(ok).is_some(), "{ok}");
        }
        for bad in [
            "",
            "/a",
            "../a",
            "a/../../b",
            "a/./b",
            "a//b",
            "a\\b",
            "a/",
            "..",
            ".",
            "a\0b",
        ] {
            assert!(RelPath::parse(bad).is_none(), "{bad:?}");
        }
        let r = RelPath::parse("x/y/c1.wav").unwrap();
        assert_eq!((r.dir(), r.file_name()), ("x/y", "c1.wav"));
        assert_eq!(RelPath::parse("c1.wav").unwrap().dir(), "");
    }

    #[test]
    fn temp_names() {
        for t in [
            ".hidden",
            "a.wav.filepart",
            "a.csv.PART",
            "a.partial",
            "a.tmp",
            "a.upload",
            ".a.wav",
        ] {
            assert!(is_temp_name(t), "{t}");
        }
        for n in ["a.wav", "part.csv", "tmp.json"] {
            assert!(!is_temp_name(n), "{n}");
        }
    }

    #[test]
    fn locate_confines_to_tenant_folders() {
        let d = DropRoot::new(PathBuf::from("/s/drop"));
        let (t, r) = d.locate(Path::new("/s/drop/acme/sub/c1.wav")).unwrap();
        assert_eq!((t.as_str(), r.as_str()), ("acme", "sub/c1.wav"));
        for p in [
            "/s/drop/acme",
            "/s/other/acme/x",
            "/s/drop/acme/reports/x.csv",
            "/s/drop/acme/x.filepart",
            "/s/drop/Bad/x.wav",
            "/s/drop/acme/../x.wav",
        ] {
            assert!(d.locate(Path::new(p)).is_none(), "{p}");
        }
    }

    #[test]
    fn symlinks_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let d = DropRoot::new(dir.path().join("drop"));
        let acme = TenantId::parse("acme").unwrap();
        d.ensure_tenant(&acme).unwrap();
        let secret = dir.path().join("secret.wav");
        fs::write(&secret, b"secret").unwrap();
        let tdir = d.tenant_dir(&acme);
        std::os::unix::fs::symlink(&secret, tdir.join("link.wav")).unwrap();
        std::os::unix::fs::symlink(dir.path(), tdir.join("up")).unwrap();
        fs::write(tdir.join("ok.wav"), b"x").unwrap();
        assert!(d.open_confined(&acme, &RelPath::parse("link.wav").unwrap()).is_err());
        assert!(
            d.open_confined(&acme, &RelPath::parse("up/secret.wav").unwrap())
                .is_err()
        );
        assert!(d.open_confined(&acme, &RelPath::parse("ok.wav").unwrap()).is_ok());
        let scanned: Vec<String> = d.scan_tenant(&acme).unwrap().into_iter().map(|r| r.0).collect();
        assert_eq!(scanned, ["ok.wav"]);
    }

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
        let u = unpack_zip(&zip_path, &out, &limits(1 << 20)).unwrap();
        assert_eq!(u.files, ["c1.wav", "batch.csv"]);
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
        let u = unpack_zip(&zip_path, &out, &limits(1 << 20)).unwrap();
        assert_eq!(u.files, ["ok.wav"]);
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
        let err = unpack_zip(&zip_path, &out, &by_size).unwrap_err();
        assert!(err.contains("more than the limit of 10.0 MiB"), "{err}");
        assert!(listing(&out).is_empty(), "{:?}", listing(&out));
        // By ratio: well within the size limit, but over 200 times the archive's size.
        let err = unpack_zip(&zip_path, &out, &limits(1 << 30)).unwrap_err();
        assert!(err.contains("200 times its own size"), "{err}");
        assert!(listing(&out).is_empty(), "{:?}", listing(&out));
        // By entries.
        let few = ZipLimits {
            max_entries: 3,
            ..limits(1 << 30)
        };
        let err = unpack_zip(&zip_path, &out, &few).unwrap_err();
        assert!(err.contains("has 4 entries, more than the limit of 3"), "{err}");
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
            unpack_zip(&p, dir.path(), &limits(1 << 20))
                .unwrap_err()
                .contains("not a readable zip")
        );
    }
}
