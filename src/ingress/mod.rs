//! Everything that makes a file arrive in a drop folder. Each ingress only says "this file has
//! arrived" ([`IngressEvent::Arrived`]); it never parses or matches anything.
//!
//! [`sftp`] (uploads), [`ftp_poll`] (pulls from tenants' FTP servers) and [`watch`] (files any
//! other process closes or renames into a drop folder) all send the same event.

pub mod ftp_poll;
pub mod sftp;
pub mod watch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::catalog::Via;
use crate::dropbox::RelPath;
use crate::tenant::TenantId;

/// A file whose writer is done: closed after writing, or renamed to its final name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrived {
    pub tenant: TenantId,
    pub rel: RelPath,
    pub via: Via,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngressEvent {
    Arrived(Arrived),
    /// Events may have been lost: reconcile this tenant's drop folder (`None`: every tenant's,
    /// after the watch queue overflowed).
    Rescan {
        tenant: Option<TenantId>,
    },
    /// A file was removed or renamed away by its tenant: the catalog stops counting it.
    Gone {
        tenant: TenantId,
        rel: RelPath,
    },
    /// A folder appeared in a drop folder. Files written into it before the watch on it was in
    /// place sent no event; they are looked for, and count as arrived once they stop changing.
    FolderCreated {
        tenant: TenantId,
        rel: RelPath,
    },
}

/// What an ingress of ours knows about a file it wrote: how it came, and possibly its digest,
/// computed while writing. The watcher sees those files too, and may report them first; intake
/// asks here so that `via` is right either way, and so that it need not read the file again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hint {
    pub via: Via,
    pub digest: Option<KnownDigest>,
}

/// A file's SHA-256, valid while its size and mtime are these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownDigest {
    pub size: u64,
    pub mtime_ns: i64,
    pub sha256: [u8; 32],
}

#[derive(Clone, Default)]
pub struct ViaHints(Arc<Mutex<HashMap<PathBuf, Hint>>>);

/// Hints not taken (the file vanished before intake saw it) are dropped past this many.
const MAX_HINTS: usize = 100_000;

impl ViaHints {
    pub fn note(&self, path: PathBuf, via: Via) {
        self.note_hint(path, Hint { via, digest: None });
    }
    pub fn note_hint(&self, path: PathBuf, hint: Hint) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_HINTS {
            map.clear();
        }
        map.insert(path, hint);
    }
    pub fn take(&self, path: &Path) -> Option<Hint> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(path)
    }
}
