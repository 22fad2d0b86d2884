//! Tenant drop folders on disk: `{state_dir}/drop/{tenant}/`.
//!
//! Takes absolute paths (from a watcher, a scan, an ingress) and gives back confined,
//! tenant-relative paths, or nothing. Knows which names are temporary, which files are
//! recordings, metadata or zip batches. Nothing here
//! follows a path out of a tenant's folder, and nothing here knows the catalog: moving decided
//! files to the archive is a stage of its own ([`crate::archive`]).

mod held;

use std::fs::{self, File};
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::config::MatchingConfig;
use crate::confine::Confined;
pub use crate::matching::is_transcript;
use crate::matching::{MetadataFormat, extension};

use crate::tenant::TenantId;
// A file's identity is below the drop folder (quotas key files by it too); named here as well.
pub use crate::fsutil::FileId;
pub use held::{HeldFile, Removal};

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
    /// A conversation's file that rows name: audio, or a chat transcript
    /// (`<stem>.transcript.json`, forwarded as `transcript.json`).
    Recording,
    Metadata(MetadataFormat),
    Zip,
    /// Not something we ingest; reported as rejected.
    Unknown,
}

impl FileKind {
    pub fn of(name: &str, matching: &MatchingConfig) -> Self {
        if is_transcript(name) {
            return FileKind::Recording;
        }
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

    /// A tenant's drop folder held open, for paths resolved under it with no link followed
    /// (see [`crate::confine`]).
    pub fn confined(&self, tenant: &TenantId) -> io::Result<Confined> {
        Confined::open(&self.tenant_dir(tenant))
    }

    /// Opens the regular file `rel` of a tenant's drop folder, with no link followed on the
    /// way or at the end, and no way out of the folder.
    pub fn open_confined(&self, tenant: &TenantId, rel: &RelPath) -> io::Result<File> {
        self.confined(tenant)?.open_file(rel.as_str())
    }

    /// Every regular, non-temporary file of a tenant (for reconciliation), sorted by path. Our
    /// own temp files are skipped: they are being written (those a crash left are removed at
    /// start-up, by `arrival::recover`).
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A staged file is being written (a zip entry, an HTTP upload) whenever a scan runs: the
    /// scan leaves it alone; only start-up recovery removes those a crash left.
    #[test]
    fn a_scan_leaves_files_being_written_alone() {
        let root = tempfile::tempdir().unwrap();
        let drops = DropRoot::new(root.path().to_path_buf());
        let acme = TenantId::parse("acme").unwrap();
        let dir = drops.tenant_dir(&acme).join("api/u1");
        fs::create_dir_all(&dir).unwrap();
        let staged = dir.join(crate::fsutil::TempKind::Staged.name());
        fs::write(&staged, b"RIFF").unwrap();
        fs::write(dir.join("c1.wav"), b"RIFF").unwrap();
        let found = drops.scan_tenant(&acme).unwrap();
        assert_eq!(found, [RelPath::parse("api/u1/c1.wav").unwrap()]);
        assert!(staged.exists(), "a scan must not remove a file being written");
        assert_eq!(
            crate::arrival::recover::recover_uploads(&drops.tenant_dir(&acme)).unwrap(),
            (0, 1)
        );
        assert!(!staged.exists(), "start-up recovery removes it");
    }

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
}
