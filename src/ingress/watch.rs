//! Watches the drop folders with inotify and turns close-after-write and rename-into-place by
//! other processes into arrivals. Temp names are ignored until renamed; a queue overflow asks
//! for a full rescan. The start-up reconciliation scan lives in [`crate::intake`].
//!
//! Our own ingresses announce what they put in place themselves, with what they know of it
//! (how it came, its digest), so the watcher leaves their renames alone: a rename from one of
//! our temp names (`.dropsync-…`: an upload closing, a pull or a zip entry put in place), and
//! a client's RENAME that the SFTP server made ([`OwnRenames`]). A crash before an ingress
//! announced its file is healed by the start-up scan.
//!
//! The watch asks the kernel for the four kinds of event it uses ([`MASK`]) and no others: a
//! general-purpose watcher (the `notify` crate, used before) also takes every open, write and
//! attribute change, which the kernel queues one by one in the writer's own system calls. For a
//! 10,000-entry zip that was 60,000 events, 15 % of the unpacking thread's time and a third of a
//! core in the thread reading them; each upload's every write and each read of a file by intake
//! or forwarding added more.
//!
//! Recursion is ours: every folder under the root is watched, a folder created or moved in is
//! watched (with what is already in it) before it is scanned, and a folder moved away takes its
//! watches with it.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use rustix::event::{EventfdFlags, PollFd, PollFlags};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Arrived, IngressEvent, OwnRenames};
use crate::catalog::Via;
use crate::dropbox::DropRoot;

/// The events taken: a file closed after writing, the two halves of a rename, and a folder
/// created (files are created too, and ignored). Links are not followed and only folders are
/// watched.
const MASK: WatchMask = WatchMask::CLOSE_WRITE
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::CREATE)
    .union(WatchMask::DONT_FOLLOW)
    .union(WatchMask::ONLYDIR)
    .union(WatchMask::EXCL_UNLINK);

/// Bytes of events read at a time.
const EVENT_BUFFER: usize = 64 << 10;

/// How long the watch lets events gather after reading what was queued. A reader waiting on
/// the queue is woken by every event, in the writer's own system call (a cross-CPU wake-up:
/// 11 % of a zip's unpacking thread); a reader that sleeps between reads is woken once per
/// batch. The kernel queues 16,384 events by default, far more than arrive in this time, and
/// an overflow is answered by a rescan.
const GATHER: Duration = Duration::from_millis(10);

/// The drop folders, watched; [`DropWatch::run`] turns their events into ingress events.
pub struct DropWatch {
    inotify: Inotify,
    folders: Folders,
    handler: Handler,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot watch {path}: {source}")]
pub struct WatchError {
    path: String,
    source: io::Error,
}

/// Starts watching every folder under `drop` (before returning, so that a scan made after it
/// misses nothing); events reach `tx` once [`DropWatch::run`] runs. Renames in `own` are
/// announced by whoever made them.
pub fn start(drop: DropRoot, tx: mpsc::Sender<IngressEvent>, own: OwnRenames) -> Result<DropWatch, WatchError> {
    let root = drop.root().to_path_buf();
    let error = |source| WatchError {
        path: root.display().to_string(),
        source,
    };
    let inotify = Inotify::init().map_err(error)?;
    let mut folders = Folders::default();
    folders.watch_tree(&mut inotify.watches(), &root).map_err(error)?;
    Ok(DropWatch {
        inotify,
        folders,
        handler: Handler {
            drop,
            tx,
            own,
            from_ours: None,
        },
    })
}

impl DropWatch {
    /// Reads events on a thread of its own (see [`GATHER`]) until `cancel`, or until this
    /// future is dropped (the thread is told to stop either way).
    pub async fn run(self, cancel: CancellationToken) {
        let stop = match rustix::event::eventfd(0, EventfdFlags::CLOEXEC) {
            Ok(fd) => Stop(Arc::new(fd)),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the file watch; files are found by rescans only");
                return;
            }
        };
        let reader_stop = stop.0.clone();
        let mut reader = tokio::task::spawn_blocking(move || self.read_until(&reader_stop));
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = &mut reader => return,
        }
        drop(stop);
        let _ = reader.await;
    }

    fn read_until(mut self, stop: &OwnedFd) {
        let mut buffer = vec![0u8; EVENT_BUFFER];
        loop {
            let mut ready = [
                PollFd::new(&self.inotify, PollFlags::IN),
                PollFd::new(stop, PollFlags::IN),
            ];
            match rustix::event::poll(&mut ready, None) {
                Ok(_) if !ready[1].revents().is_empty() => return,
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    tracing::error!(error = %e, "the file watch stopped; files are found by rescans only");
                    return;
                }
            }
            self.read_queued(&mut buffer);
            std::thread::sleep(GATHER);
        }
    }

    /// Handles every event queued, until none is.
    fn read_queued(&mut self, buffer: &mut [u8]) {
        loop {
            let events = match self.inotify.read_events(buffer) {
                Ok(events) => events,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!(error = %e, "file watch error; rescanning drop folders");
                    self.handler.send(IngressEvent::Rescan { tenant: None });
                    return;
                }
            };
            let mut watches = self.inotify.watches();
            for event in events {
                self.handler.handle(&mut self.folders, &mut watches, event);
            }
        }
    }
}

/// Tells the reading thread to stop when dropped.
struct Stop(Arc<OwnedFd>);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = rustix::io::write(&*self.0, &1u64.to_ne_bytes());
    }
}

/// What an event is turned into.
struct Handler {
    drop: DropRoot,
    tx: mpsc::Sender<IngressEvent>,
    own: OwnRenames,
    /// The last rename's source seen (its cookie, and whether it was one of our temp names).
    /// inotify queues a rename's two halves one after the other.
    from_ours: Option<(u32, bool)>,
}

impl Handler {
    fn handle(&mut self, folders: &mut Folders, watches: &mut Watches, event: inotify::Event<&OsStr>) {
        let mask = event.mask;
        if mask.contains(EventMask::Q_OVERFLOW) {
            tracing::warn!("file watch queue overflowed; rescanning drop folders");
            return self.send(IngressEvent::Rescan { tenant: None });
        }
        if mask.contains(EventMask::IGNORED) {
            folders.paths.remove(&event.wd);
            return;
        }
        let (Some(dir), Some(name)) = (folders.paths.get(&event.wd), event.name) else {
            return;
        };
        let path = dir.join(name);
        if mask.contains(EventMask::ISDIR) {
            return self.folder_event(folders, watches, mask, path);
        }
        let announce = if mask.contains(EventMask::CLOSE_WRITE) {
            true
        } else if mask.contains(EventMask::MOVED_FROM) {
            let ours = name.to_str().is_some_and(crate::fsutil::is_ours);
            self.from_ours = Some((event.cookie, ours));
            false
        } else if mask.contains(EventMask::MOVED_TO) {
            let ours = self
                .from_ours
                .take()
                .is_some_and(|(cookie, ours)| ours && cookie == event.cookie);
            !ours && !self.own.take(&path)
        } else {
            false
        };
        if announce && let Some((tenant, rel)) = self.drop.locate(&path) {
            self.send(IngressEvent::Arrived(Arrived {
                tenant,
                rel,
                via: Via::Local,
                digest: None,
            }));
        }
    }

    /// A folder created is watched, then looked into (files written into it before its watch
    /// was in place sent no event); one moved in brings files no event will name, so its
    /// tenant's folder is reconciled; one moved away is no longer watched.
    fn folder_event(&mut self, folders: &mut Folders, watches: &mut Watches, mask: EventMask, path: PathBuf) {
        if mask.contains(EventMask::MOVED_FROM) {
            self.from_ours = None;
            folders.unwatch_tree(watches, &path);
            return;
        }
        if !mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
            return;
        }
        if let Err(e) = folders.watch_tree(watches, &path) {
            tracing::warn!(path = %path.display(), error = %e,
                "cannot watch a new folder (see fs.inotify.max_user_watches); its files are found by rescans");
        }
        let event = if mask.contains(EventMask::MOVED_TO) {
            self.from_ours = None;
            self.drop
                .tenant_of(&path)
                .map(|tenant| IngressEvent::Rescan { tenant: Some(tenant) })
        } else {
            self.drop
                .locate(&path)
                .map(|(tenant, rel)| IngressEvent::FolderCreated { tenant, rel })
        };
        if let Some(event) = event {
            self.send(event);
        }
    }

    /// The watch waits while intake is busy; if the kernel's queue overflows meanwhile, the
    /// overflow asks for a rescan, so nothing is lost.
    fn send(&self, event: IngressEvent) {
        let _ = self.tx.blocking_send(event);
    }
}

/// The folder each watch is on.
#[derive(Default)]
struct Folders {
    paths: HashMap<WatchDescriptor, PathBuf>,
}

impl Folders {
    /// Watches `top` and every folder under it (links are not followed). A folder that went
    /// away meanwhile is skipped.
    fn watch_tree(&mut self, watches: &mut Watches, top: &Path) -> io::Result<()> {
        let mut pending = vec![top.to_path_buf()];
        while let Some(dir) = pending.pop() {
            match watches.add(&dir, MASK) {
                Ok(wd) => {
                    self.paths.insert(wd, dir.clone());
                }
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(e),
            }
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(e),
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    pending.push(entry.path());
                }
            }
        }
        Ok(())
    }

    /// Stops watching `top` and every folder under it.
    fn unwatch_tree(&mut self, watches: &mut Watches, top: &Path) {
        self.paths.retain(|wd, path| {
            let inside = path.starts_with(top);
            if inside {
                // Already gone if the folder was removed meanwhile: nothing to undo.
                let _ = watches.remove(wd.clone());
            }
            !inside
        });
    }
}

/// Whether a folder went away (or was replaced by a file) while it was being watched.
fn gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dropbox::RelPath;
    use crate::tenant::TenantId;
    use std::fs;

    struct Watched {
        root: tempfile::TempDir,
        rx: mpsc::Receiver<IngressEvent>,
        cancel: CancellationToken,
    }

    impl Watched {
        fn start() -> Watched {
            let root = tempfile::tempdir().unwrap();
            fs::create_dir_all(root.path().join("acme/sub")).unwrap();
            let (tx, rx) = mpsc::channel(64);
            let watch = start(DropRoot::new(root.path().to_path_buf()), tx, OwnRenames::default()).unwrap();
            let cancel = CancellationToken::new();
            tokio::spawn(watch.run(cancel.clone()));
            Watched { root, rx, cancel }
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.root.path().join(rel)
        }

        async fn next(&mut self) -> IngressEvent {
            tokio::time::timeout(Duration::from_secs(10), self.rx.recv())
                .await
                .expect("an event within 10 s")
                .unwrap()
        }
    }

    fn arrived(rel: &str) -> IngressEvent {
        IngressEvent::Arrived(Arrived {
            tenant: TenantId::parse("acme").unwrap(),
            rel: RelPath::parse(rel).unwrap(),
            via: Via::Local,
            digest: None,
        })
    }

    #[tokio::test]
    async fn files_closed_or_renamed_in_arrive_and_our_own_renames_do_not() {
        let mut w = Watched::start();
        fs::write(w.path("acme/c1.wav"), b"RIFF").unwrap();
        assert_eq!(w.next().await, arrived("c1.wav"));
        // A rename from one of our temp names is announced by whoever made it.
        fs::write(w.path("acme/.dropsync-staged-0123456789abcdef"), b"RIFF").unwrap();
        fs::rename(w.path("acme/.dropsync-staged-0123456789abcdef"), w.path("acme/c2.wav")).unwrap();
        // A client's temp name renamed into place is an arrival (the barrier for the one above).
        fs::write(w.path("acme/c3.wav.part"), b"RIFF").unwrap();
        fs::rename(w.path("acme/c3.wav.part"), w.path("acme/c3.wav")).unwrap();
        assert_eq!(w.next().await, arrived("c3.wav"));
        w.cancel.cancel();
    }

    #[tokio::test]
    async fn folders_made_or_moved_in_later_are_watched_and_looked_into() {
        let mut w = Watched::start();
        fs::create_dir(w.path("acme/new")).unwrap();
        assert_eq!(
            w.next().await,
            IngressEvent::FolderCreated {
                tenant: TenantId::parse("acme").unwrap(),
                rel: RelPath::parse("new").unwrap()
            }
        );
        fs::write(w.path("acme/new/c1.wav"), b"RIFF").unwrap();
        assert_eq!(w.next().await, arrived("new/c1.wav"));
        // Moved in from outside, with a folder inside: looked into, and watched to the bottom.
        let outside = tempfile::tempdir().unwrap();
        fs::create_dir_all(outside.path().join("batch/deep")).unwrap();
        fs::rename(outside.path().join("batch"), w.path("acme/batch")).unwrap();
        assert_eq!(
            w.next().await,
            IngressEvent::Rescan {
                tenant: Some(TenantId::parse("acme").unwrap())
            }
        );
        fs::write(w.path("acme/batch/deep/c2.wav"), b"RIFF").unwrap();
        assert_eq!(w.next().await, arrived("batch/deep/c2.wav"));
        // Moved within: its files are named by where the folder is now.
        fs::rename(w.path("acme/batch"), w.path("acme/sub/batch")).unwrap();
        assert!(matches!(w.next().await, IngressEvent::Rescan { .. }));
        fs::write(w.path("acme/sub/batch/deep/c3.wav"), b"RIFF").unwrap();
        assert_eq!(w.next().await, arrived("sub/batch/deep/c3.wav"));
        w.cancel.cancel();
    }
}
