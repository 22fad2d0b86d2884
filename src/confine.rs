//! Paths inside a folder, resolved by the kernel in one call that neither leaves the folder nor
//! follows a link (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`). A link that another
//! local writer puts in a drop folder (SPEC §3) between a check and its use cannot lead out of
//! it: there is no check apart from the use.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{Mode, OFlags, ResolveFlags};

/// A folder, held open, under which relative paths are resolved.
#[derive(Debug)]
pub struct Confined {
    root: OwnedFd,
}

impl Confined {
    /// Holds `path` (a real folder, not a link) open.
    pub fn open(path: &Path) -> io::Result<Confined> {
        let root = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Confined { root })
    }

    /// Opens `rel` ('/'-separated, relative; "" is the folder itself) with `flags`. A link on
    /// the way, or `..` out of the folder, is "no such file"; so is a link as the last part,
    /// unless `flags` has `O_PATH | O_NOFOLLOW` (then the link itself is opened).
    pub fn open_at(&self, rel: &str, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        let rel = if rel.is_empty() { "." } else { rel };
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        loop {
            match rustix::fs::openat2(&self.root, rel, flags | OFlags::CLOEXEC, mode, resolve) {
                Ok(fd) => return Ok(fd),
                // The kernel asks for a retry when a rename raced the lookup.
                Err(rustix::io::Errno::AGAIN) => continue,
                // A link (ELOOP) or a way out (EXDEV): nothing there, as far as the caller goes.
                Err(rustix::io::Errno::LOOP | rustix::io::Errno::XDEV) => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        "no such file (links are not followed)",
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The folder `rel` ("" for the root), held open for `*at` calls, listing and fsync.
    pub fn dir(&self, rel: &str) -> io::Result<OwnedFd> {
        self.open_at(
            rel,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
            Mode::empty(),
        )
    }

    /// The folder `rel`, created level by level if missing (a level that is a link or a file
    /// is an error), held open.
    pub fn ensure_dir(&self, rel: &str) -> io::Result<OwnedFd> {
        let mut dir = self.dir("")?;
        let mut path = String::new();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            match rustix::fs::mkdirat(&dir, part, Mode::from_raw_mode(0o750)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(part);
            dir = match self.dir(&path) {
                Ok(d) => d,
                // Say which: a link in the way (as everywhere else), or a file.
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) => {
                    let link = self.metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
                    return Err(if link {
                        io::Error::new(io::ErrorKind::NotFound, "no such file (links are not followed)")
                    } else {
                        io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            format!("{path} exists and is not a folder"),
                        )
                    });
                }
                Err(e) => return Err(e),
            };
        }
        Ok(dir)
    }

    /// What `rel` is, without following a link in its last part (a link shows as a link).
    pub fn metadata(&self, rel: &str) -> io::Result<std::fs::Metadata> {
        File::from(self.open_at(rel, OFlags::PATH | OFlags::NOFOLLOW, Mode::empty())?).metadata()
    }

    /// Opens the regular file `rel` for reading.
    pub fn open_file(&self, rel: &str) -> io::Result<File> {
        let file =
            File::from(self.open_at(rel, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK, Mode::empty())?);
        if !file.metadata()?.is_file() {
            return Err(io::Error::other("not a regular file"));
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_and_dot_dot_lead_nowhere() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("acme");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a.wav"), b"a").unwrap();
        std::fs::write(d.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(d.path(), root.join("up")).unwrap();
        std::os::unix::fs::symlink(d.path().join("secret"), root.join("s.wav")).unwrap();
        let c = Confined::open(&root).unwrap();
        assert_eq!(std::io::read_to_string(c.open_file("sub/a.wav").unwrap()).unwrap(), "a");
        for escape in ["up/secret", "../secret", "sub/../../secret", "s.wav", "/etc/passwd"] {
            let e = c.open_file(escape).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::NotFound, "{escape}: {e}");
        }
        assert!(c.metadata("s.wav").unwrap().file_type().is_symlink(), "the link itself");
        assert!(c.dir("up").is_err());
        assert!(c.ensure_dir("up/new").is_err(), "a link on the way");
        let e = c.ensure_dir("up").unwrap_err();
        assert_eq!(e.to_string(), "no such file (links are not followed)");
        let e = c.ensure_dir("sub/a.wav/x").unwrap_err();
        assert_eq!(e.to_string(), "sub/a.wav exists and is not a folder");
        assert!(!d.path().join("new").exists());
        assert!(c.ensure_dir("sub/x/y").is_ok() && root.join("sub/x/y").is_dir());
        assert!(c.dir("sub").is_ok() && c.dir("").is_ok());
    }
}
