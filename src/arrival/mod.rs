//! A file coming to be in a drop folder, whichever way it comes: an SFTP upload, an FTP pull, a
//! zip entry (and the HTTP API's uploads). Every path goes the same way, and each step is here:
//!
//! 1. **Created** under a temp name of ours ([`crate::fsutil::TempKind`]) in its folder, held
//!    open and reached with no link followed ([`crate::confine`]); from then on the temp file
//!    counts against the tenant's quota through the writer's grant, not through the walk
//!    of the folder.
//! 2. **Written**, each byte granted by the quota before it lands, and hashed as it is written
//!    when the writes come in order ([`digest`]; out-of-order writes and truncation handled).
//! 3. **Made durable**: the data synced (one fsync per file, issued together for a batch, or
//!    one `syncfs` for a large batch), then renamed into place (`RENAME_NOREPLACE` where a name
//!    must not be replaced), then each folder synced once for the batch ([`place`]). An SFTP
//!    upload is marked complete on its temp file instead, so that the client's answer does not
//!    wait for the folder ([`recover`] finishes what a crash cut).
//! 4. **Announced** once, by the writer that made it, with its digest and its origin in the
//!    event itself ([`Arrived`]): intake need not read it again for its SHA-256.
//!
//! Nothing is announced that a crash could take back, and nothing under a temp name is ever
//! taken in: a crash leaves temp files that start-up renames, resumes or removes by their kind.

pub mod digest;
pub mod file;
pub mod place;
pub mod recover;
pub mod zip;

pub use file::{ArrivingFile, WriteStop, Written};
pub use place::{Batch, Placed, Placement, Replace};
pub use zip::{Unpacked, UnzipError, ZipLimits, ZipQuota, unpack_zip};

use crate::dropbox::RelPath;
use crate::tenant::TenantId;

/// How a file reached its drop folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Sftp,
    Ftp,
    Http,
    Local,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Sftp => "sftp",
            Via::Ftp => "ftp",
            Via::Http => "http",
            Via::Local => "local",
        }
    }
    pub fn parse(s: &str) -> Via {
        match s {
            "sftp" => Via::Sftp,
            "ftp" => Via::Ftp,
            "http" => Via::Http,
            _ => Via::Local,
        }
    }
}

/// A file whose writer is done: closed after writing, or renamed to its final name. Each
/// arrival is announced once, by the writer that made it: the watcher leaves our own renames
/// into place to the writer that made them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrived {
    pub tenant: TenantId,
    pub rel: RelPath,
    pub via: Via,
    /// Its digest, if its writer hashed it while writing.
    pub digest: Option<KnownDigest>,
}

/// A file's SHA-256, valid while its size and mtime are these: what its writer computed while
/// writing it, so that intake need not read it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownDigest {
    pub size: u64,
    pub mtime_ns: i64,
    pub sha256: [u8; 32],
}

impl KnownDigest {
    /// `sha256` for the file `meta` describes.
    pub fn of(meta: &std::fs::Metadata, sha256: [u8; 32]) -> KnownDigest {
        KnownDigest {
            size: meta.len(),
            mtime_ns: crate::fsutil::mtime_ns(meta),
            sha256,
        }
    }
}
