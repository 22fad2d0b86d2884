//! Forwarding: drains the catalog's durable queue into the sink.
//!
//! A worker claims one due conversation (committed as `forwarding`), writes its recordings and
//! then `metadata.json` under deterministic keys, commits `forwarded`, and moves its files to the
//! archive. Errors a retry may mend (a sink's outage or throttling, a busy catalog) send the
//! conversation back to the queue with exponential backoff and jitter; those it cannot (refused
//! credentials, a broken constraint) mark it `failed` until `dropsync retry`. Workers take
//! tenants in turn: each claim is a few conversations of the next tenant with work due.

pub mod dir;
pub mod layout;
pub mod s3;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tracing::Instrument;

use crate::archive::Archiver;
use crate::backoff::Retry;
use crate::catalog::{Catalog, Forwarded, NewIntake, Via, Work, allocations_for, ms, now_ms};
use crate::config::{LiveConfig, SinkConfig};
use crate::dropbox::{DropRoot, RelPath};
use crate::tenant::TenantId;
use crate::worker::{Worker, WorkerError, WorkerState};
use layout::RecordingEntry;

/// A sink's refusal or failure, and whether sending again later can succeed ([`Retry`]): a
/// transient one goes back to the queue with backoff, a permanent one marks the conversation
/// `failed`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    retry_helps: bool,
    pub message: String,
}

impl SinkError {
    pub fn transient(message: impl Into<String>) -> Self {
        SinkError {
            retry_helps: true,
            message: message.into(),
        }
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        SinkError {
            retry_helps: false,
            message: message.into(),
        }
    }
    /// Local I/O, as the error's kind says: a full disk or a busy device may clear; a
    /// permission problem, or a name the sink folder's file system cannot take (keys are
    /// shortened to fit S3, not every file system), will not.
    pub fn from_io(what: &str, e: &std::io::Error) -> Self {
        use std::io::ErrorKind::{NotFound, ReadOnlyFilesystem};
        // A sink's folder that is missing or read-only is storage that may come back (a mount
        // not there yet, remounted read-only after an error): its conversations wait, they do
        // not fail.
        let storage_away = matches!(e.kind(), NotFound | ReadOnlyFilesystem);
        SinkError {
            retry_helps: storage_away || e.retry_helps(),
            message: format!("{what}: {e}"),
        }
    }
}

impl Retry for SinkError {
    fn retry_helps(&self) -> bool {
        self.retry_helps
    }
}

/// The closed set of sinks.
pub enum Sink {
    Dir(dir::DirSink),
    S3(s3::S3Sink),
}

impl Sink {
    pub async fn from_config(config: &SinkConfig) -> Result<Sink, SinkError> {
        match config {
            SinkConfig::Dir { path } => Ok(Sink::Dir(dir::DirSink::new(path.clone())?)),
            SinkConfig::S3(cfg) => {
                let sink = s3::S3Sink::new(cfg.clone()).await?;
                sink.start_up().await;
                Ok(Sink::S3(sink))
            }
        }
    }
    fn prefix(&self) -> &str {
        match self {
            Sink::Dir(_) => "",
            Sink::S3(s) => s.prefix(),
        }
    }
    pub fn describe(&self) -> String {
        match self {
            Sink::Dir(d) => d.describe(),
            Sink::S3(s) => s.describe(),
        }
    }
    /// Writes a recording; returns the bytes written and their sha256 (hex). `arrival_sha256`
    /// is the hash taken when the file arrived; the caller has checked the file is unchanged.
    async fn put_file(
        &self,
        key: &str,
        file: std::fs::File,
        size: u64,
        arrival_sha256: Option<&str>,
    ) -> Result<(u64, String), SinkError> {
        match self {
            Sink::Dir(d) => d.put_file(key, file).await.map(|(n, sha)| (n, hex::encode(sha))),
            Sink::S3(s) => {
                let sha = match arrival_sha256 {
                    Some(sha) => sha.to_owned(),
                    None => {
                        let f = file.try_clone().map_err(|e| SinkError::from_io("read recording", &e))?;
                        let (_, sha) = tokio::task::spawn_blocking(move || crate::fsutil::hash_reader(f))
                            .await
                            .map_err(|e| SinkError::transient(e.to_string()))?
                            .map_err(|e| SinkError::from_io("read recording", &e))?;
                        hex::encode(sha)
                    }
                };
                s.put_file(key, file, size).await.map(|()| (size, sha))
            }
        }
    }
    async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<(), SinkError> {
        match self {
            Sink::Dir(d) => d.put_bytes(key, bytes).await,
            Sink::S3(s) => s.put_bytes(key, bytes).await,
        }
    }
}

/// Why one attempt did not end in `forwarded`.
enum Outcome {
    Sink(SinkError),
    /// A recording left the drop folder; the conversation waits for it again.
    Vanished {
        file_id: i64,
        why: String,
    },
    Catalog(crate::catalog::CatalogError),
    /// A recording is no longer what intake recorded (new bytes, or only new times, which
    /// send no event of their own): intake takes the file again, which re-decides the row.
    Changed {
        rel_path: String,
        why: String,
    },
}

/// Conversations a worker claims in one transaction: fewer commits, while several workers
/// still share a short queue.
const CLAIM_BATCH: usize = 8;

pub struct Forwarder {
    pub catalog: Catalog,
    pub drop: DropRoot,
    pub sink: Sink,
    pub archiver: Archiver,
    pub retry_min: Duration,
    pub retry_max: Duration,
    pub grace: Duration,
    /// Woken when work may be due.
    pub wake: Arc<Notify>,
    pub reports: Arc<Notify>,
    /// For the tenants' minute allocations, which a reload may change.
    pub config: LiveConfig,
    /// The tenant served last: forwarders take tenants in turn after it.
    pub last_served: std::sync::Mutex<String>,
}

/// One forward worker: claims a few due conversations, forwards them, repeats; idle until woken
/// or the next attempt is due.
pub struct ForwardWorker {
    pub index: u32,
    pub forwarder: Arc<Forwarder>,
}

impl Worker for ForwardWorker {
    fn name(&self) -> String {
        format!("forwarder {}", self.index)
    }

    async fn work(&mut self) -> Result<WorkerState, WorkerError> {
        // Minute allocations as they stand now: held conversations that fit again (raised by a
        // reload, a new month, seconds given back) go back to the queue before the claim. The
        // catalog derives its held lists again only when one of those changed.
        let allocations = allocations_for(&self.forwarder.config.get().tenants, now_ms());
        let forwarder = self.forwarder.clone();
        let claimed = self
            .forwarder
            .catalog
            .run(move |c| {
                let released = c.minutes().release_held(&allocations, now_ms())?;
                if released > 0 {
                    tracing::info!(released, "held conversations fit in their minute allocation again");
                }
                // Whose turn it is, then the claim (in one transaction on SQLite; on PostgreSQL
                // the turn is read first, see `claim_turn`). The next claim, by any of this
                // node's workers (they take turns on `last_served`), starts after this tenant,
                // even if it claimed nothing (all of it held, or waiting for another send).
                let mut last = forwarder.last_served.lock().unwrap_or_else(|p| p.into_inner());
                let claimed = c
                    .forward_queue()
                    .claim_turn(&last, now_ms(), CLAIM_BATCH, &allocations)?;
                if let Some((tenant, _)) = &claimed {
                    last.clone_from(tenant);
                }
                Ok(claimed)
            })
            .await?;
        let Some((tenant, batch)) = claimed else {
            return Ok(WorkerState::Idle);
        };
        if batch.is_empty() {
            return Ok(WorkerState::Idle);
        }
        // There was work: let another worker look for more, so parallelism builds up.
        self.forwarder.wake.notify_one();
        // Claimed conversations are finished even during shutdown: they are short, and if
        // the process dies anyway, the catalog replays them. They are sent together (each
        // waits mostly for its sink's fsyncs or round trips, which overlap), and their files
        // leave the drop folder together afterwards: one claim, one sync per folder, one record.
        let sends = batch
            .into_iter()
            .map(|work| self.forwarder.forward_one_catching_panics(work));
        let to_archive: Vec<i64> = futures_util::future::join_all(sends).await.concat();
        let archiver = self.forwarder.archiver.clone();
        match tokio::task::spawn_blocking(move || archiver.archive_of(&tenant, &to_archive)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot archive forwarded files; start-up will"),
            Err(e) => tracing::warn!(error = %e, "archive task failed; start-up will archive"),
        }
        Ok(WorkerState::Busy)
    }

    async fn wait_for_work(&mut self) {
        let wait = match self.forwarder.catalog.run(|c| c.forward_queue().next_due()).await {
            Ok(Some(due)) => Duration::from_millis((due - now_ms()).clamp(10, 5000) as u64),
            _ => Duration::from_secs(5),
        };
        tokio::select! {
            _ = self.forwarder.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

impl Forwarder {
    /// A panic while forwarding (a bug) counts as a failed attempt of that conversation only:
    /// it is tried again with backoff, and `failed` once it has been claimed `max_attempts`
    /// times. The worker goes on with the rest of the queue.
    ///
    /// Gives the files of a conversation forwarded that may now leave the drop folder.
    async fn forward_one_catching_panics(&self, work: Work) -> Vec<i64> {
        use futures_util::FutureExt;
        let (id, attempts, tenant) = (work.id, work.attempts, work.tenant.clone());
        let span = tracing::info_span!("forward", tenant = %work.tenant, conversation = %work.conversation_id);
        let payload = match std::panic::AssertUnwindSafe(self.forward_one(work))
            .catch_unwind()
            .await
        {
            Ok(to_archive) => return to_archive,
            Err(payload) => payload,
        };
        let error = crate::fault::panic_message(&*payload);
        let now = now_ms();
        let recorded = if attempts >= i64::from(self.config.get().limits.max_attempts) {
            span.in_scope(
                || tracing::error!(%error, attempts, "forwarding failed for good; `dropsync retry` re-queues it"),
            );
            self.catalog
                .run(move |c| c.forward_queue().of(&tenant).fail(id, &error, now))
                .await
        } else {
            let at = now + ms(crate::backoff::exponential(attempts, self.retry_min, self.retry_max));
            span.in_scope(|| tracing::error!(%error, attempts, "forwarding failed; will retry"));
            self.catalog
                .run(move |c| c.forward_queue().of(&tenant).retry_later(id, &error, at, now))
                .await
        };
        if let Err(e) = recorded {
            tracing::error!(error = %e, "cannot record the outcome; start-up recovery will replay it");
        }
        self.reports.notify_one();
        Vec::new()
    }

    async fn forward_one(&self, work: Work) -> Vec<i64> {
        // Instrumented, not entered: an entered span does not follow a future across awaits.
        let span = tracing::info_span!("forward", tenant = %work.tenant, conversation = %work.conversation_id, attempt = work.attempts);
        self.forward_one_in_span(work).instrument(span).await
    }

    async fn forward_one_in_span(&self, work: Work) -> Vec<i64> {
        let started = now_ms();
        let result = self.attempt(&work, started).await;
        let now = now_ms();
        let (id, tenant) = (work.id, work.tenant.clone());
        let recorded = match result {
            Ok(to_archive) => {
                self.reports.notify_one();
                return to_archive;
            }
            Err(Outcome::Vanished { file_id, why }) => {
                tracing::warn!(reason = %why, "recording left the drop folder; waiting for it again");
                let grace = ms(self.grace);
                self.catalog
                    .run(move |c| c.forward_queue().recording_vanished(id, file_id, &why, now, grace))
                    .await
            }
            Err(Outcome::Sink(e)) if !e.retry_helps() => {
                metrics::counter!("dropsync_sink_errors_total", "kind" => "permanent").increment(1);
                tracing::error!(error = %e, "forwarding failed permanently; `dropsync retry` re-queues it");
                self.catalog
                    .run(move |c| c.forward_queue().of(&tenant).fail(id, &e.message, now))
                    .await
            }
            Err(Outcome::Sink(e)) => {
                metrics::counter!("dropsync_sink_errors_total", "kind" => "transient").increment(1);
                let delay = crate::backoff::exponential(work.attempts, self.retry_min, self.retry_max);
                tracing::warn!(error = %e, retry_in = ?delay, "forwarding failed; will retry");
                let at = now + ms(delay);
                self.catalog
                    .run(move |c| c.forward_queue().of(&tenant).retry_later(id, &e.message, at, now))
                    .await
            }
            Err(Outcome::Changed { rel_path, why }) => {
                tracing::warn!(reason = %why, "recording changed; intake takes it again before the next attempt");
                let delay = crate::backoff::exponential(work.attempts, self.retry_min, self.retry_max);
                let at = now + ms(delay);
                self.catalog
                    .run(move |c| {
                        c.intake_queue()
                            .enqueue_intake(&[NewIntake::file(&tenant, &rel_path, Via::Local, false, now)], now)?;
                        c.forward_queue().of(&tenant).retry_later(id, &why, at, now)
                    })
                    .await
            }
            Err(Outcome::Catalog(e)) if !e.retry_helps() => {
                tracing::error!(error = %e, "catalog error while forwarding, which no retry mends; `dropsync retry` re-queues it");
                let msg = e.to_string();
                self.catalog
                    .run(move |c| c.forward_queue().of(&tenant).fail(id, &msg, now))
                    .await
            }
            Err(Outcome::Catalog(e)) => {
                tracing::error!(error = %e, "catalog error while forwarding; the conversation is replayed later");
                let at = now + ms(self.retry_min);
                let msg = e.to_string();
                self.catalog
                    .run(move |c| c.forward_queue().of(&tenant).retry_later(id, &msg, at, now))
                    .await
            }
        };
        if let Err(e) = recorded {
            tracing::error!(error = %e, "cannot record the outcome; start-up recovery will replay it");
        }
        self.reports.notify_one();
        Vec::new()
    }

    /// Sends the conversation and records it forwarded; gives its files that may now leave
    /// the drop folder.
    async fn attempt(&self, work: &Work, started: i64) -> Result<Vec<i64>, Outcome> {
        crate::fault::panic_point("forward", &work.conversation_id);
        let tenant = TenantId::parse(&work.tenant).map_err(|e| Outcome::Sink(SinkError::permanent(e)))?;
        let names: Vec<&str> = work.recordings.iter().map(|r| r.name.as_str()).collect();
        let keys = layout::ConversationKeys::new(
            self.sink.prefix(),
            &work.tenant,
            work.contact_time,
            &work.conversation_id,
            &names,
        )
        .map_err(|e| Outcome::Sink(SinkError::permanent(e.to_string())))?;
        let prefix = keys.folder.clone();
        let mut entries = Vec::with_capacity(work.recordings.len());
        let mut forwarded = Vec::with_capacity(work.recordings.len());
        for (rec, key_name) in work.recordings.iter().zip(&keys.names) {
            let vanished = |why: String| Outcome::Vanished {
                file_id: rec.file_id,
                why,
            };
            let rel = RelPath::parse(&rec.rel_path).ok_or_else(|| vanished(format!("bad path {:?}", rec.rel_path)))?;
            let (opened, from_archive) = match (self.drop.open_confined(&tenant, &rel), &rec.archive_path) {
                (Err(e), Some(archived)) if e.kind() == std::io::ErrorKind::NotFound => {
                    (crate::fsutil::open_nofollow(std::path::Path::new(archived)), true)
                }
                (opened, _) => (opened, false),
            };
            let file = match opened {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(vanished(format!("{} is no longer in the drop folder", rec.rel_path)));
                }
                Err(e) => return Err(Outcome::Sink(SinkError::from_io(&format!("open {}", rec.rel_path), &e))),
            };
            // If the file changed since it arrived, its new arrival event re-decides the row;
            // until then this attempt must not send a mix of old and new. Another file put in
            // its place with the same size and mtime (`rsync -t`, `cp -p`) is a change too; an
            // archived copy may have been copied across file systems, so only size and mtime
            // hold for it.
            let unchanged = |f: &std::fs::File| {
                use std::os::unix::fs::MetadataExt;
                f.metadata().is_ok_and(|m| {
                    m.len() as i64 == rec.size
                        && crate::fsutil::mtime_ns(&m) == rec.mtime_ns
                        && (from_archive || rec.file.is_none_or(|id| id == (m.dev(), m.ino())))
                })
            };
            if !unchanged(&file) {
                return Err(Outcome::Changed {
                    rel_path: rec.rel_path.clone(),
                    why: format!("{} changed after it arrived", rec.rel_path),
                });
            }
            let check = file
                .try_clone()
                .map_err(|e| Outcome::Sink(SinkError::from_io("open", &e)))?;
            let key = format!("{prefix}{key_name}");
            let (bytes, sha256) = self
                .sink
                .put_file(&key, file, rec.size as u64, rec.sha256.as_deref())
                .await
                .map_err(Outcome::Sink)?;
            if bytes as i64 != rec.size || !unchanged(&check) {
                return Err(Outcome::Changed {
                    rel_path: rec.rel_path.clone(),
                    why: format!("{} changed while it was being sent", rec.rel_path),
                });
            }
            entries.push(RecordingEntry {
                file: rec.name.clone(),
                key: key.clone(),
                bytes,
                sha256: sha256.clone(),
                duration_ms: rec.duration_ms,
            });
            forwarded.push(Forwarded {
                position: rec.position,
                key,
                bytes,
                sha256,
            });
        }
        let forwarded_at = now_ms();
        let doc = layout::metadata_json(work, &entries, forwarded_at);
        self.sink
            .put_bytes(&keys.metadata_json(), doc)
            .await
            .map_err(Outcome::Sink)?;

        let (id, sink, key_prefix) = (work.id, self.sink.describe(), prefix.clone());
        let tenant = work.tenant.clone();
        let to_archive = self
            .catalog
            .run(move |c| {
                c.forward_queue()
                    .of(&tenant)
                    .complete(id, &forwarded, &sink, &key_prefix, started, forwarded_at)
            })
            .await
            .map_err(Outcome::Catalog)?;
        tracing::info!(key_prefix = %prefix, recordings = entries.len(), "conversation forwarded");
        metrics::counter!("dropsync_forwarded_total", "tenant" => work.tenant.clone()).increment(1);
        metrics::histogram!("dropsync_forward_latency_seconds")
            .record((forwarded_at - work.received_at).max(0) as f64 / 1000.0);
        Ok(to_archive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_errors_no_retry_can_mend_are_permanent() {
        let helps = |code| SinkError::from_io("write", &std::io::Error::from_raw_os_error(code)).retry_helps();
        assert!(!helps(libc::ENAMETOOLONG));
        assert!(!helps(libc::EACCES));
        assert!(helps(libc::ENOSPC));
        assert!(helps(libc::EIO));
        // The sink's storage away: it may come back.
        assert!(helps(libc::ENOENT));
        assert!(helps(libc::EROFS));
    }
}
