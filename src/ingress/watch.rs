//! Watches the drop folders with inotify (through `notify`) and turns close-after-write and
//! rename-into-place into arrivals. Temp names are ignored until renamed; a queue overflow asks
//! for a full rescan. The start-up reconciliation scan lives in [`crate::intake`].

use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RenameMode};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{Arrived, IngressEvent};
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

/// Starts watching every drop folder under `drop`, sending events to `tx`.
pub fn start(drop: DropRoot, tx: mpsc::Sender<IngressEvent>) -> Result<DropWatch, WatchError> {
    let root = drop.root().to_path_buf();
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
            EventKind::Modify(ModifyKind::Name(RenameMode::To)) => event.paths.first(),
            // A rename from one of our own temp names (an SFTP upload closing, a zip entry put
            // in place) is announced by whoever made it; a crash before that is healed by the
            // start-up scan.
            EventKind::Modify(ModifyKind::Name(RenameMode::Both))
                if event
                    .paths
                    .first()
                    .and_then(|p| p.file_name())
                    .and_then(|n| n.to_str())
                    .is_some_and(crate::fsutil::is_our_temp_prefix) =>
            {
                None
            }
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => event.paths.get(1),
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
