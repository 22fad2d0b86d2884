//! FTP polling: one poller per `[[tenants.ftp]]` source pulls new files from the tenant's own
//! server into its drop folder, where they arrive like uploads ([`IngressEvent::Arrived`], via
//! `ftp`).
//!
//! A poll: connect and log in, list the source's folder tree, record the listing in the catalog
//! (which tracks since when each file's size and mtime have been stable), then download every
//! file that has been stable for `min_age` and was not pulled at this size and mtime before, over
//! up to `connections` control connections at once. A download goes to a hidden temp name, is
//! checked against the listed size, fsynced, and renamed into place; that rename is the arrival.
//! An interrupted download is resumed with REST at the next poll. With `after_download =
//! "delete"` the remote file is deleted only once the catalog has recorded the local copy.
//!
//! Pollers never share a connection or a task, so a slow or broken server only delays itself;
//! errors back off per source. [`FtpPollers::apply`] starts, stops and restarts them when the
//! configuration is reloaded.

mod client;
pub mod listing;

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use client::FtpPollError;
use client::{FtpClient, Tls};

use super::{Arrived, Hint, IngressEvent, KnownDigest, ViaHints};
use crate::catalog::{Catalog, PollRecord, RemoteFileState, Via, now_ms};
use crate::config::LiveConfig;
use crate::dropbox::{DropRoot, FileKind, RelPath};
use crate::limits::Limits;
use crate::tenant::{AfterDownload, FtpSource, Tenant, TenantId};

/// After a failed poll the next one waits at least this long (doubling, with jitter).
const ERROR_RETRY_MIN: Duration = Duration::from_secs(1);
/// … and at most this long, or the poll interval if that is longer.
const ERROR_RETRY_MAX: Duration = Duration::from_secs(300);

/// What every poller needs from the rest of the daemon.
#[derive(Clone)]
pub struct PollContext {
    pub catalog: Catalog,
    pub drops: DropRoot,
    pub config: LiveConfig,
    pub events: mpsc::Sender<IngressEvent>,
    pub hints: ViaHints,
    pub quotas: Arc<Limits>,
}

/// The running pollers, by source key.
pub struct FtpPollers {
    ctx: PollContext,
    tracker: TaskTracker,
    cancel: CancellationToken,
    running: Mutex<HashMap<String, Running>>,
}

struct Running {
    /// The source's settings as started; a reload that changes them restarts the poller.
    settings: String,
    stop: CancellationToken,
}

/// Identifies a source in the catalog: tenant and URL (which holds no password).
pub fn source_key(tenant: &TenantId, source: &FtpSource) -> String {
    format!("{tenant} {}", source.url)
}

impl FtpPollers {
    pub fn new(ctx: PollContext, tracker: TaskTracker, cancel: CancellationToken) -> Self {
        FtpPollers {
            ctx,
            tracker,
            cancel,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// Makes the running pollers match `tenants`: starts new sources, stops removed ones, and
    /// restarts changed ones. Returns (started, stopped).
    pub fn apply(&self, tenants: &[Tenant]) -> (usize, usize) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let mut wanted = HashMap::new();
        for t in tenants {
            for source in &t.ftp {
                wanted.insert(source_key(&t.id, source), (t.id.clone(), source.clone()));
            }
        }
        let mut stopped = 0;
        running.retain(|key, r| {
            let keep = wanted.get(key).is_some_and(|(_, s)| format!("{s:?}") == r.settings);
            if !keep {
                r.stop.cancel();
                stopped += 1;
            }
            keep
        });
        let mut started = 0;
        for (key, (tenant, source)) in wanted {
            if running.contains_key(&key) {
                continue;
            }
            let stop = self.cancel.child_token();
            let settings = format!("{source:?}");
            let poller = Arc::new(Poller {
                key: key.clone(),
                tenant,
                source,
                ctx: self.ctx.clone(),
                warned: Mutex::new(HashSet::new()),
            });
            let span = tracing::info_span!("ftp", tenant = %poller.tenant, source = %poller.source.url);
            self.tracker.spawn(poller.run(stop.clone()).instrument(span));
            running.insert(key, Running { settings, stop });
            started += 1;
        }
        (started, stopped)
    }
}

/// Source locks: a restarted poller waits for its predecessor's poll to end, so two never
/// write the same temp file.
fn source_lock(key: &str) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: LazyLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> = LazyLock::new(Default::default);
    let mut locks = LOCKS.lock().unwrap_or_else(|p| p.into_inner());
    locks.entry(key.to_owned()).or_default().clone()
}

struct Poller {
    key: String,
    tenant: TenantId,
    source: FtpSource,
    ctx: PollContext,
    /// Remote names already warned about, so a bad name is logged once, not every poll.
    warned: Mutex<HashSet<String>>,
}

/// One file to pull.
struct Job {
    path: String,
    state: RemoteFileState,
    /// Bytes already in its temp file belong to this version (a download was cut short).
    resumable: bool,
}

/// A file received into its temp name, not yet durable.
struct Received {
    writer: crate::fsutil::BackgroundWriter,
    tmp: PathBuf,
    target: PathBuf,
    rel: RelPath,
    started: Instant,
}

/// A file's size once pulled, or why it was not.
type PullResult = Result<u64, (String, FtpPollError)>;
/// What finishing a file gives: (path, server path, size).
type Finished = Result<(String, String, u64), (String, FtpPollError)>;

/// Files one connection may have received and not yet made durable.
const MAX_FINISHING: usize = 4;

/// What one poll did.
#[derive(Default)]
struct PollSummary {
    listed: usize,
    pulled: usize,
    bytes: u64,
    waiting: usize,
    /// When the next settling file will have been stable for `min_age`.
    next_stable_at: Option<i64>,
    /// The first per-file failure.
    file_error: Option<String>,
}

impl Poller {
    async fn run(self: Arc<Self>, stop: CancellationToken) {
        if self.source.url.tls && self.source.tls_insecure_skip_verify {
            tracing::warn!(
                "TLS certificate verification is OFF for this source (tls_insecure_skip_verify): anyone on the path can read the password and the files"
            );
        } else if !self.source.url.tls && self.source.password.is_some() {
            tracing::warn!(
                "plain ftp://: the password and the files cross the network unencrypted; use ftps:// if the server has it"
            );
        }
        let tls = match Tls::for_source(&self.source) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "the source cannot be polled until its TLS settings are fixed");
                self.record(&PollRecord::failed(e.to_string())).await;
                return;
            }
        };
        tracing::info!(interval = ?self.source.poll_interval, min_age = ?self.source.min_age, "polling");
        // The source's row exists before its first download is counted in it.
        let (key, tenant, url) = (self.key.clone(), self.tenant.to_string(), self.source.url.to_string());
        if let Err(e) = self
            .ctx
            .catalog
            .run(move |c| c.ftp_register_source(&key, &tenant, &url))
            .await
        {
            tracing::warn!(error = %e, "cannot register the source in the catalog");
        }
        let lock = source_lock(&self.key);
        let mut errors_in_row = 0i64;
        loop {
            let started = Instant::now();
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                r = async {
                    let _held = lock.lock().await;
                    self.poll_once(tls.as_ref()).await
                } => r,
            };
            let delay = match result {
                Ok(summary) => {
                    errors_in_row = 0;
                    let took = started.elapsed();
                    if summary.pulled > 0 {
                        tracing::info!(
                            listed = summary.listed,
                            pulled = summary.pulled,
                            bytes = summary.bytes,
                            waiting = summary.waiting,
                            took_ms = took.as_millis() as u64,
                            "poll done"
                        );
                    } else {
                        tracing::debug!(
                            listed = summary.listed,
                            waiting = summary.waiting,
                            took_ms = took.as_millis() as u64,
                            "poll done"
                        );
                    }
                    metrics::counter!("dropsync_ftp_polls_total", "tenant" => self.tenant.to_string(), "result" => "ok").increment(1);
                    self.record(&PollRecord {
                        listed: true,
                        error: summary.file_error.clone(),
                        remote_files: summary.listed,
                        waiting: summary.waiting,
                    })
                    .await;
                    let mut delay = crate::backoff::jittered(self.source.poll_interval);
                    if let Some(at) = summary.next_stable_at {
                        let until = Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0));
                        delay = delay.min(until + Duration::from_millis(50));
                    }
                    delay
                }
                Err(e) => {
                    errors_in_row += 1;
                    tracing::warn!(error = %e, errors_in_row, "poll failed");
                    metrics::counter!("dropsync_ftp_polls_total", "tenant" => self.tenant.to_string(), "result" => "error").increment(1);
                    self.record(&PollRecord::failed(e.to_string())).await;
                    crate::backoff::exponential(
                        errors_in_row,
                        ERROR_RETRY_MIN,
                        ERROR_RETRY_MAX.max(self.source.poll_interval),
                    )
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn record(&self, poll: &PollRecord) {
        let (key, tenant, url, poll) = (
            self.key.clone(),
            self.tenant.to_string(),
            self.source.url.to_string(),
            poll.clone(),
        );
        if let Err(e) = self
            .ctx
            .catalog
            .run(move |c| c.ftp_record_poll(&key, &tenant, &url, now_ms(), &poll))
            .await
        {
            tracing::warn!(error = %e, "cannot record the poll in the catalog");
        }
    }

    async fn poll_once(self: &Arc<Self>, tls: Option<&Tls>) -> Result<PollSummary, FtpPollError> {
        let mut client = FtpClient::connect(&self.source, tls).await?;
        let listing = client.list_tree().await?;
        self.warn_skipped(&listing.skipped);
        let now = now_ms();
        let (key, files) = (self.key.clone(), listing.files);
        let listed = files.len();
        let applied = self
            .ctx
            .catalog
            .run(move |c| c.ftp_apply_listing(&key, &files, now))
            .await?;
        for path in &applied.vanished_partials {
            if let Ok(tmp) = self.temp_path(path) {
                let _ = std::fs::remove_file(tmp);
            }
        }

        let min_age = i64::try_from(self.source.min_age.as_millis()).unwrap_or(i64::MAX);
        let mut summary = PollSummary {
            listed,
            ..PollSummary::default()
        };
        let mut jobs = Vec::new();
        let mut deletes = Vec::new();
        for (path, state) in applied.files {
            if state.is_pulled() {
                if self.source.after_download == AfterDownload::Delete {
                    deletes.push(path);
                }
                continue;
            }
            summary.waiting += 1;
            let stable_at = state.stable_since.saturating_add(min_age);
            if stable_at <= now {
                let resumable = state.partial.as_deref() == Some(state.version().as_str());
                jobs.push(Job { path, state, resumable });
            } else {
                summary.next_stable_at = Some(summary.next_stable_at.map_or(stable_at, |t| t.min(stable_at)));
            }
        }
        // Recordings first and metadata last, so that rows find their recordings already here.
        let matching = self.ctx.config.get().matching.clone();
        jobs.sort_by_cached_key(|j| {
            let rank = match FileKind::of(j.path.rsplit('/').next().unwrap_or(&j.path), &matching) {
                FileKind::Recording => 0,
                FileKind::Zip | FileKind::Unknown => 1,
                FileKind::Metadata(_) => 2,
            };
            (rank, j.path.clone())
        });

        // Remote files already pulled but still there (a crash fell between the record and the
        // delete, or the delete failed): delete them now.
        for path in deletes {
            let remote = client.remote(&path);
            if let Err(e) = client.delete(&remote).await {
                self.note_file_error(&mut summary, &path, &e);
                if !e.keeps_session() {
                    return Err(e);
                }
            }
        }

        // Which version each temp file will hold, in one commit before any download starts.
        let marks: Vec<(String, String)> = jobs
            .iter()
            .filter(|j| !j.resumable)
            .map(|j| (j.path.clone(), j.state.version()))
            .collect();
        if !marks.is_empty() {
            let key = self.key.clone();
            self.ctx.catalog.run(move |c| c.ftp_mark_partials(&key, &marks)).await?;
        }
        // What the tenant's quota lets in now; the rest waits, and the source says so.
        let mut grants = Vec::with_capacity(jobs.len());
        let mut admitted = Vec::with_capacity(jobs.len());
        for job in jobs {
            let grant = self
                .ctx
                .quotas
                .open_file(&self.tenant, &job.path)
                .and_then(|mut g| g.grow_to(job.state.size).map(|()| g));
            match grant {
                Ok(g) => {
                    grants.push(g);
                    admitted.push(job);
                }
                Err(e) => {
                    tracing::warn!(error = %e, path = %job.path, "pulling paused until the tenant's drop folder has room");
                    summary.file_error = Some(format!("paused: {e}"));
                    break;
                }
            }
        }
        let queue = Arc::new(Mutex::new(VecDeque::from(admitted)));
        let pulls = self.pull_all(client, queue, tls).await;
        drop(grants);
        for outcome in pulls {
            match outcome {
                Ok(bytes) => {
                    summary.pulled += 1;
                    summary.bytes += bytes;
                    summary.waiting -= 1;
                }
                Err((path, e)) => self.note_file_error(&mut summary, &path, &e),
            }
        }
        Ok(summary)
    }

    /// Drains `queue` over up to `connections` control connections; the first is `first`, the
    /// others are opened only if there is more than one file. A connection that fails ends its
    /// worker; its file waits for the next poll.
    async fn pull_all(
        self: &Arc<Self>,
        first: FtpClient,
        queue: Arc<Mutex<VecDeque<Job>>>,
        tls: Option<&Tls>,
    ) -> Vec<PullResult> {
        let pending = queue.lock().unwrap_or_else(|p| p.into_inner()).len();
        let extra = (self.source.connections as usize).min(pending).saturating_sub(1);
        let mut workers = tokio::task::JoinSet::new();
        let span = tracing::Span::current();
        workers.spawn(
            self.clone()
                .pull_worker(Some(first), queue.clone(), tls.cloned())
                .instrument(span.clone()),
        );
        for _ in 0..extra {
            workers.spawn(
                self.clone()
                    .pull_worker(None, queue.clone(), tls.cloned())
                    .instrument(span.clone()),
            );
        }
        let mut out = Vec::new();
        while let Some(r) = workers.join_next().await {
            if let Ok(mut results) = r {
                out.append(&mut results);
            }
        }
        out
    }

    async fn pull_worker(
        self: Arc<Self>,
        client: Option<FtpClient>,
        queue: Arc<Mutex<VecDeque<Job>>>,
        tls: Option<Tls>,
    ) -> Vec<PullResult> {
        let mut results = Vec::new();
        let mut client = match client {
            Some(c) => c,
            None => match FtpClient::connect(&self.source, tls.as_ref()).await {
                Ok(c) => c,
                Err(e) => {
                    // Servers often cap connections per user; the other workers go on.
                    tracing::debug!(error = %e, "an extra FTP connection was refused");
                    return results;
                }
            },
        };
        // Files received but not yet durable and recorded. The connection moves on to the next
        // file meanwhile, so a transfer never waits for the disk or the catalog.
        let mut finishing = tokio::task::JoinSet::new();
        let mut session_ok = true;
        loop {
            while finishing.len() >= MAX_FINISHING {
                if let Some(done) = finishing.join_next().await {
                    self.finished(done, &mut client, &mut session_ok, &mut results).await;
                }
            }
            while let Some(done) = finishing.try_join_next() {
                self.finished(done, &mut client, &mut session_ok, &mut results).await;
            }
            if !session_ok {
                break;
            }
            let Some(job) = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front() else {
                break;
            };
            match self.fetch(&mut client, &job).await {
                Ok(received) => {
                    let remote = client.remote(&job.path);
                    finishing.spawn(
                        self.clone()
                            .finish(job, remote, received)
                            .instrument(tracing::Span::current()),
                    );
                }
                Err(e) => {
                    session_ok = e.keeps_session();
                    results.push(Err((job.path, e)));
                }
            }
        }
        while let Some(done) = finishing.join_next().await {
            self.finished(done, &mut client, &mut session_ok, &mut results).await;
        }
        if session_ok {
            client.quit().await;
        }
        results
    }

    /// Takes one finished file's outcome; with `after_download = "delete"`, deletes it on the
    /// server now that the catalog has it (a dead session leaves that to the next poll).
    async fn finished(
        &self,
        done: Result<Finished, tokio::task::JoinError>,
        client: &mut FtpClient,
        session_ok: &mut bool,
        results: &mut Vec<PullResult>,
    ) {
        let Ok(done) = done else {
            return;
        };
        match done {
            Ok((path, remote, size)) => {
                results.push(Ok(size));
                if self.source.after_download == AfterDownload::Delete
                    && *session_ok
                    && let Err(e) = client.delete(&remote).await
                {
                    tracing::warn!(file = %path, error = %e, "pulled, but the remote copy could not be deleted; trying again at the next poll");
                    *session_ok = e.keeps_session();
                }
            }
            Err(failed) => results.push(Err(failed)),
        }
    }

    /// Receives one file into its temp name (resuming what is there when it belongs to the
    /// same version), checked against the listed size; not yet fsynced.
    async fn fetch(&self, client: &mut FtpClient, job: &Job) -> Result<Received, FtpPollError> {
        let Some(rel) = RelPath::parse(&job.path) else {
            return Err(FtpPollError::Listing {
                path: job.path.clone(),
                why: "not a valid path".into(),
            });
        };
        let drops = self.ctx.drops.clone();
        let (tenant, dir) = (self.tenant.clone(), rel.dir().to_owned());
        let folder = tokio::task::spawn_blocking(move || drops.ensure_dir(&tenant, &dir))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r)
            .map_err(|source| FtpPollError::Local {
                path: self.ctx.drops.tenant_dir(&self.tenant).join(rel.dir()),
                source,
            })?;
        let tmp = folder.join(temp_name(&self.key, &job.path));
        let resume_from = if job.resumable {
            tokio::fs::metadata(&tmp).await.map_or(0, |m| m.len())
        } else {
            0
        };
        let remote = client.remote(&job.path);
        let started = Instant::now();
        match client.download(&remote, &tmp, resume_from, job.state.size).await {
            Ok((writer, received)) => {
                metrics::counter!("dropsync_received_bytes_total", "via" => "ftp").increment(received);
                Ok(Received {
                    writer,
                    tmp,
                    target: folder.join(rel.file_name()),
                    rel,
                    started,
                })
            }
            Err(e) => {
                if matches!(e, FtpPollError::Changed { .. }) {
                    let _ = tokio::fs::remove_file(&tmp).await;
                }
                Err(e)
            }
        }
    }

    /// Makes a received file durable and an arrival: fsync, rename into place, fsync the
    /// folder, record it in the catalog, tell intake.
    async fn finish(self: Arc<Self>, job: Job, remote: String, r: Received) -> Finished {
        let failed = |e: FtpPollError| (job.path.clone(), e);
        let local = |path: &PathBuf| {
            let path = path.clone();
            move |source| FtpPollError::Local { path, source }
        };
        let sha256 = r.writer.finish().await.map_err(local(&r.tmp)).map_err(failed)?;
        // The watcher sees the rename too; the hint makes either path record `via = ftp`, and
        // spares intake reading the file again for its digest.
        let meta = tokio::fs::metadata(&r.tmp)
            .await
            .map_err(local(&r.tmp))
            .map_err(failed)?;
        let digest = KnownDigest {
            size: meta.len(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            sha256,
        };
        self.ctx.hints.note_hint(
            r.target.clone(),
            Hint {
                via: Via::Ftp,
                digest: Some(digest),
            },
        );
        let (tmp, target) = (r.tmp.clone(), r.target.clone());
        tokio::task::spawn_blocking(move || {
            std::fs::rename(&tmp, &target)?;
            crate::fsutil::sync_dir(target.parent().unwrap_or(&target))
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r)
        .map_err(local(&r.target))
        .map_err(failed)?;
        let (key, path, size, mtime) = (self.key.clone(), job.path.clone(), job.state.size, job.state.mtime_ms);
        self.ctx
            .catalog
            .run(move |c| c.ftp_mark_downloaded(&key, &path, size, mtime, now_ms()))
            .await
            .map_err(|e| failed(e.into()))?;
        tracing::info!(file = %r.rel.as_str(), bytes = size, took_ms = r.started.elapsed().as_millis() as u64, "pulled");
        let _ = self
            .ctx
            .events
            .send(IngressEvent::Arrived(Arrived {
                tenant: self.tenant.clone(),
                rel: r.rel,
                via: Via::Ftp,
            }))
            .await;
        Ok((job.path, remote, size))
    }

    fn temp_path(&self, path: &str) -> std::io::Result<PathBuf> {
        let rel = RelPath::parse(path).ok_or_else(|| std::io::Error::other("bad path"))?;
        Ok(self
            .ctx
            .drops
            .path_of(&self.tenant, &rel)
            .with_file_name(temp_name(&self.key, path)))
    }

    fn note_file_error(&self, summary: &mut PollSummary, path: &str, e: &FtpPollError) {
        tracing::warn!(file = path, error = %e, "could not pull; trying again at the next poll");
        metrics::counter!("dropsync_ftp_file_errors_total", "tenant" => self.tenant.to_string()).increment(1);
        if summary.file_error.is_none() {
            summary.file_error = Some(e.to_string());
        }
    }

    fn warn_skipped(&self, skipped: &[(String, &'static str)]) {
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        for (path, why) in skipped {
            if warned.insert(path.clone()) {
                tracing::warn!(file = path.as_str(), "remote entry {why}: not pulled");
            }
        }
    }
}

/// The hidden name a download is written under, next to its final name. It ends in `.part`, not
/// `.tmp`, so the start-up scan keeps it for resuming.
fn temp_name(source_key: &str, path: &str) -> String {
    let digest = Sha256::digest(format!("{source_key}\n{path}").as_bytes());
    format!(".dropsync-ftp-{}.part", hex::encode(&digest[..8]))
}
