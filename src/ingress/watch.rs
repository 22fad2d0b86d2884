//! Watches the drop folders with inotify (through `notify`) and turns close-after-write and
//! rename-into-place by other processes into arrivals. Temp names are ignored until renamed; a
//! queue overflow asks for a full rescan. The start-up reconciliation scan lives in
//! [`crate::intake`].
//!
//! Our own ingresses announce what they put in place themselves, with what they know of it
//! (how it came, its digest), so the watcher leaves their renames alone: a rename from one of
//! our temp names (`.dropsync-…`: an upload closing, a pull or a zip entry put in place), and
//! a client's RENAME that the SFTP server made ([`OwnRenames`]). A crash before an ingress
//! announced its file is healed by the start-up scan.

use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RenameMode};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{Arrived, IngressEvent, OwnRenames};
use crate::catalog::Via;
use crate::dropbox::DropRoot;

/// Keeps the watch alive; dropping it stops watching.
pub struct DropWatch {
    _watcher: RecommendedWatcher,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot watch {path}: {source}")]
pub struct WatchError {
    path: String,
    source: notify::Error,
}

/// Starts watching every drop folder under `drop`, sending events to `tx`; renames in `own`
/// are announced by whoever made them.
pub fn start(drop: DropRoot, tx: mpsc::Sender<IngressEvent>, own: OwnRenames) -> Result<DropWatch, WatchError> {
    let root = drop.root().to_path_buf();
    // The last rename's source seen (its inotify cookie, and whether it was one of our temp
    // names). inotify queues a rename's two halves one after the other, as notify pairs them.
    let mut from_ours: Option<(Option<usize>, bool)> = None;
    let handler = move |res: notify::Result<notify::Event>| {
        let event = match res {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "file watch error; rescanning drop folders");
                let _ = tx.blocking_send(IngressEvent::Rescan { tenant: None });
                return;
            }
        };
        if event.need_rescan() {
            tracing::warn!("file watch queue overflowed; rescanning drop folders");
            let _ = tx.blocking_send(IngressEvent::Rescan { tenant: None });
            return;
        }
        if let (EventKind::Create(CreateKind::Folder), Some(path)) = (event.kind, event.paths.first()) {
            if let Some((tenant, rel)) = drop.locate(path) {
                let _ = tx.blocking_send(IngressEvent::FolderCreated { tenant, rel });
            }
            return;
        }
        let path = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => event.paths.first(),
            EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
                let ours = event
                    .paths
                    .first()
                    .and_then(|p| p.file_name())
                    .and_then(|n| n.to_str())
                    .is_some_and(crate::fsutil::is_ours);
                from_ours = Some((event.tracker(), ours));
                None
            }
            // Every rename ends in a `To` (notify adds a `Both` when it saw the source too:
            // taking both would announce the file twice).
            EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
                let ours = from_ours
                    .take()
                    .is_some_and(|(cookie, ours)| ours && cookie == event.tracker());
                event.paths.first().filter(|p| !ours && !own.take(p))
            }
            _ => None,
        };
        let Some(path) = path else { return };
        // A folder moved in brings files no event will name: reconcile that tenant's folder.
        if path.is_dir() {
            if let Some(tenant) = drop.tenant_of(path) {
                let _ = tx.blocking_send(IngressEvent::Rescan { tenant: Some(tenant) });
            }
            return;
        }
        if let Some((tenant, rel)) = drop.locate(path) {
            // blocking_send: the watcher thread waits when intake is busy; if inotify's own
            // queue overflows meanwhile we get a rescan, so nothing is lost.
            let _ = tx.blocking_send(IngressEvent::Arrived(Arrived {
                tenant,
                rel,
                via: Via::Local,
                digest: None,
            }));
        }
    };
    let mut watcher = notify::recommended_watcher(handler).map_err(|e| WatchError {
        path: root.display().to_string(),
        source: e,
    })?;
    watcher.watch(&root, RecursiveMode::Recursive).map_err(|e| WatchError {
        path: root.display().to_string(),
        source: e,
    })?;
    Ok(DropWatch { _watcher: watcher })
}
