//! The `dir` sink: the object layout as files under a local folder, each written atomically
//! (staged in `.dropsync-tmp/`, fsynced, renamed into place, folder fsynced), so a reader never
//! sees half a recording and `metadata.json` is durable only after the recordings are. What a
//! crash leaves in `.dropsync-tmp/` is cleared at the next start.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::SinkError;
use crate::fsutil;

#[derive(Debug, Clone)]
pub struct DirSink {
    root: PathBuf,
    staging: PathBuf,
}

const STAGING: &str = ".dropsync-tmp";

impl DirSink {
    pub fn new(root: PathBuf) -> Result<Self, SinkError> {
        let staging = root.join(STAGING);
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging)
            .map_err(|e| SinkError::permanent(format!("cannot create sink folder {}: {e}", root.display())))?;
        Ok(DirSink { root, staging })
    }

    pub fn describe(&self) -> String {
        format!("dir:{}", self.root.display())
    }

    fn path(&self, key: &str) -> Result<PathBuf, SinkError> {
        // Keys are built from validated parts; refuse anything that could still leave the root.
        if key.split('/').any(|p| p.is_empty() || p == "." || p == "..") || key.starts_with(STAGING) {
            return Err(SinkError::permanent(format!("refusing unsafe key {key:?}")));
        }
        Ok(self.root.join(key))
    }

    /// Copies an open recording to `key`; returns bytes and sha256 of what was written.
    pub async fn put_file(&self, key: &str, file: File) -> Result<(u64, [u8; 32]), SinkError> {
        let dst = self.path(key)?;
        let tmp = self.staging.join(format!("{:016x}", fastrand::u64(..)));
        tokio::task::spawn_blocking(move || fsutil::copy_atomic_via(file, &tmp, &dst))
            .await
            .map_err(|e| SinkError::transient(format!("copy task failed: {e}")))?
            .map_err(|e| SinkError::from_io("write recording", &e))
    }

    pub async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<(), SinkError> {
        let dst = self.path(key)?;
        let tmp = self.staging.join(format!("{:016x}", fastrand::u64(..)));
        tokio::task::spawn_blocking(move || fsutil::write_atomic_via(&tmp, &dst, &bytes))
            .await
            .map_err(|e| SinkError::transient(format!("write task failed: {e}")))?
            .map_err(|e| SinkError::from_io("write metadata.json", &e))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}
