//! Everything that makes a file arrive in a drop folder. Each ingress only says "this file has
//! arrived" ([`IngressEvent::Arrived`]); it never parses or matches anything.
//!
//! [`sftp`] (uploads), [`ftp_poll`] (pulls from tenants' FTP servers) and [`watch`] (files any
//! other process closes or renames into a drop folder) all send the same event.

pub mod bans;
pub mod ftp_poll;
pub mod http;
pub mod sftp;
pub mod watch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::dropbox::RelPath;
use crate::tenant::TenantId;

pub use crate::arrival::{Arrived, KnownDigest};

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

/// Renames an ingress of ours makes on a client's behalf and announces itself (an SFTP RENAME
/// of a finished `x.partial` to `x`). The watcher sees them as it sees any other process's
/// rename: it looks here and leaves them alone, so that each arrival is announced once, by the
/// ingress that knows how it came. (Renames from our own temp names need no entry: the watcher
/// knows those by their names.) An entry lives from just before its rename until the watcher
/// sees it; one the watcher never sees (its queue overflowed, or the folder was not watched yet)
/// is dropped after [`OWN_RENAME_TTL`].
#[derive(Clone, Default)]
pub struct OwnRenames(Arc<Mutex<HashMap<PathBuf, Instant>>>);

/// How long a rename of ours waits for the watcher to see it. The watcher takes one within
/// milliseconds; this only bounds what a lost event leaves behind.
const OWN_RENAME_TTL: Duration = Duration::from_secs(60);

impl OwnRenames {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Instant>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// To be called just before renaming a file to `to`.
    pub fn expect(&self, to: &Path) {
        let now = Instant::now();
        let mut map = self.map();
        map.retain(|_, at| now.duration_since(*at) < OWN_RENAME_TTL);
        map.insert(to.to_path_buf(), now);
    }

    /// The rename did not happen: no event will come for it.
    pub fn cancel(&self, to: &Path) {
        self.map().remove(to);
    }

    /// Whether a rename to `to` that the watcher saw is one of ours (forgotten once seen).
    pub fn take(&self, to: &Path) -> bool {
        self.map().remove(to).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_renames_are_taken_once_and_cancelled_ones_not_at_all() {
        let own = OwnRenames::default();
        let (a, b) = (Path::new("/drop/acme/a.wav"), Path::new("/drop/acme/b.wav"));
        own.expect(a);
        own.expect(b);
        own.cancel(b);
        assert!(own.take(a), "the watcher's sighting of our rename");
        assert!(!own.take(a), "a second rename to the same name is someone else's");
        assert!(!own.take(b), "a rename that failed");
    }
}
