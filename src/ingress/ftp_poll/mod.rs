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
mod data;
pub mod listing;
mod pull;
mod tls;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use client::FtpPollError;
use client::{FtpClient, Tls};

use super::{Arrived, IngressEvent, KnownDigest};
use crate::backoff::Retry;
use crate::catalog::{Catalog, PollRecord, RemoteFileState, Via, now_ms};
use crate::config::LiveConfig;
use crate::dropbox::{DropRoot, FileKind, RelPath};
use crate::limits::{FileGrant, Limits};
use crate::tenant::{AfterDownload, FtpSource, Tenant, TenantId};
use crate::worker::{Worker, WorkerError, WorkerState, Workers};

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
    pub quotas: Arc<Limits>,
}

/// The running pollers, by source key.
pub struct FtpPollers {
    ctx: PollContext,
    workers: Workers,
    running: Mutex<HashMap<String, Running>>,
}

struct Running {
    /// The source's settings as started; a reload that changes them restarts the poller.
    settings: String,
    stop: CancellationToken,
    /// The labels of its last-poll gauge, cleared when it stops (a removed source must not
    /// look like one no longer polled).
    tenant: String,
    url: String,
}

/// Identifies a source in the catalog: tenant and URL (which holds no password).
pub fn source_key(tenant: &TenantId, source: &FtpSource) -> String {
    format!("{tenant} {}", source.url)
}

impl FtpPollers {
    pub fn new(ctx: PollContext, workers: Workers) -> Self {
        FtpPollers {
            ctx,
            workers,
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
                metrics::gauge!("dropsync_ftp_last_poll_timestamp_seconds", "tenant" => r.tenant.clone(), "source" => r.url.clone())
                    .set(f64::NAN);
                stopped += 1;
            }
            keep
        });
        let mut started = 0;
        for (key, (tenant, source)) in wanted {
            if running.contains_key(&key) {
                continue;
            }
            let stop = self.workers.cancel_token().child_token();
            let settings = format!("{source:?}");
            let poller = Arc::new(Poller {
                key: key.clone(),
                tenant,
                source,
                ctx: self.ctx.clone(),
                warned: Mutex::new(HashSet::new()),
                incomplete_said: Mutex::new(None),
            });
            let span = tracing::info_span!("ftp", tenant = %poller.tenant, source = %poller.source.url);
            let (tenant_label, url_label) = (poller.tenant.to_string(), poller.source.url.to_string());
            let worker = PollWorker {
                poller,
                tls: None,
                next_poll: Duration::ZERO,
                retry_soon: true,
            };
            self.workers.spawn_until_in(worker, stop.clone(), span);
            running.insert(
                key,
                Running {
                    settings,
                    stop,
                    tenant: tenant_label,
                    url: url_label,
                },
            );
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
    /// What the last listing could not see, so that it is logged once per change.
    incomplete_said: Mutex<Option<String>>,
}

/// One file to pull.
struct Job {
    path: String,
    state: RemoteFileState,
    /// Bytes already in its temp file belong to this version (a download was cut short).
    resumable: bool,
    /// Its place in the tenant's quota, once admitted: it covers the temp file while it is
    /// written, and is kept once the file is in place.
    grant: Option<FileGrant>,
}

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
    /// Folders the listing could not see whole, and why.
    incomplete: Option<String>,
}

/// A poller as a worker: one poll a unit; idle until the next poll is due. A failed poll is an
/// error for the runner, which backs the source off (1 s doubling, up to 5 min or the poll
/// interval; at once the longest if no retry soon mends the error); other sources never wait
/// for it.
struct PollWorker {
    poller: Arc<Poller>,
    /// Set up at the first unit: `None` until then.
    tls: Option<Option<Tls>>,
    next_poll: Duration,
    /// Whether the last poll's error may clear soon. A refused login is not tried again every
    /// second: a server that bans addresses after failed logins would ban us.
    retry_soon: bool,
}

impl Worker for PollWorker {
    /// A poll in flight is dropped on stop: a cut download resumes with REST next time.
    const ABORT_ON_STOP: bool = true;

    fn name(&self) -> String {
        "ftp poller".into()
    }

    /// A slow or silent FTP server is that source's problem, shown in `status`; it must never
    /// stop the watchdog and get the daemon restarted.
    fn watched(&self) -> bool {
        false
    }

    async fn work(&mut self) -> Result<WorkerState, WorkerError> {
        let p = self.poller.clone();
        let tls = match &self.tls {
            Some(tls) => tls.clone(),
            None => match p.start().await {
                Some(tls) => self.tls.insert(tls).clone(),
                None => return Ok(WorkerState::Done),
            },
        };
        let started = Instant::now();
        // One poll of a source at a time: across this node's pollers (a reload's old and new
        // one), and across the nodes that share the catalog (its lease; renewed by the keeper
        // while the poll runs, given back after it).
        let lease = format!("ftp {}", p.key);
        let ours = p.ctx.catalog.run({
            let lease = lease.clone();
            move |c| c.leases().try_take(&lease, now_ms())
        });
        if !ours.await? {
            self.next_poll = p.source.poll_interval;
            return Ok(WorkerState::Idle);
        }
        let lock = source_lock(&p.key);
        let result = {
            let _held = lock.lock().await;
            p.poll_once(tls.as_ref()).await
        };
        if let Err(e) = p.ctx.catalog.run(move |c| c.leases().release(&lease)).await {
            tracing::warn!(error = %e, "cannot give back the source's lease: it runs out instead");
        }
        match result {
            Ok(summary) => {
                self.next_poll = p.polled(&summary, started.elapsed()).await;
                Ok(WorkerState::Idle)
            }
            Err(e) => {
                self.retry_soon = e.retry_helps();
                metrics::counter!("dropsync_ftp_polls_total", "tenant" => p.tenant.to_string(), "result" => "error")
                    .increment(1);
                p.record(&PollRecord::failed(e.to_string())).await;
                Err(format!("poll failed: {e}").into())
            }
        }
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(self.next_poll).await
    }

    fn backoff(&self) -> (Duration, Duration) {
        let longest = ERROR_RETRY_MAX.max(self.poller.source.poll_interval);
        if self.retry_soon {
            (ERROR_RETRY_MIN, longest)
        } else {
            (longest, longest)
        }
    }
}

impl Poller {
    /// Warns about what the settings expose, reads the TLS settings and registers the source;
    /// `None` if the source cannot be polled until its settings are fixed.
    async fn start(&self) -> Option<Option<Tls>> {
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
                return None;
            }
        };
        tracing::info!(interval = ?self.source.poll_interval, min_age = ?self.source.min_age, "polling");
        // The source's row exists before its first download is counted in it.
        let (key, tenant, url) = (self.key.clone(), self.tenant.to_string(), self.source.url.to_string());
        if let Err(e) = self
            .ctx
            .catalog
            .run(move |c| c.ftp_state().ftp_register_source(&key, &tenant, &url))
            .await
        {
            tracing::warn!(error = %e, "cannot register the source in the catalog");
        }
        Some(tls)
    }

    /// Logs and records a good poll; returns when the next one is due.
    async fn polled(&self, summary: &PollSummary, took: Duration) -> Duration {
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
        metrics::counter!("dropsync_ftp_polls_total", "tenant" => self.tenant.to_string(), "result" => "ok")
            .increment(1);
        self.record(&PollRecord {
            listed: true,
            error: summary.file_error.clone(),
            remote_files: summary.listed,
            waiting: summary.waiting,
            incomplete: summary.incomplete.clone(),
        })
        .await;
        let mut delay = crate::backoff::jittered(self.source.poll_interval);
        if let Some(at) = summary.next_stable_at {
            let until = Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0));
            delay = delay.min(until + Duration::from_millis(50));
        }
        delay
    }

    async fn record(&self, poll: &PollRecord) {
        // For an alert on a source no longer polled (contrib/prometheus/alerts.yml).
        metrics::gauge!("dropsync_ftp_last_poll_timestamp_seconds", "tenant" => self.tenant.to_string(), "source" => self.source.url.to_string())
            .set(now_ms() as f64 / 1000.0);
        let (key, tenant, url, poll) = (
            self.key.clone(),
            self.tenant.to_string(),
            self.source.url.to_string(),
            poll.clone(),
        );
        if let Err(e) = self
            .ctx
            .catalog
            .run(move |c| c.ftp_state().ftp_record_poll(&key, &tenant, &url, now_ms(), &poll))
            .await
        {
            tracing::warn!(error = %e, "cannot record the poll in the catalog");
        }
    }

    async fn poll_once(self: &Arc<Self>, tls: Option<&Tls>) -> Result<PollSummary, FtpPollError> {
        let mut client = FtpClient::connect(&self.source, tls).await?;
        let listing = client.list_tree().await?;
        self.warn_skipped(&listing.skipped);
        let incomplete = self.say_incomplete(&listing.incomplete);
        let now = now_ms();
        let (key, files) = (self.key.clone(), listing.files);
        let dirs: Vec<String> = listing.incomplete.into_iter().map(|f| f.dir).collect();
        let listed = files.len();
        let applied = self
            .ctx
            .catalog
            .run(move |c| c.ftp_state().ftp_apply_listing(&key, &files, &dirs, now))
            .await?;
        for path in &applied.vanished_partials {
            self.remove_temp(path);
        }

        let min_age = i64::try_from(self.source.min_age.as_millis()).unwrap_or(i64::MAX);
        let mut summary = PollSummary {
            listed,
            incomplete,
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
                jobs.push(Job {
                    path,
                    state,
                    resumable,
                    grant: None,
                });
            } else {
                summary.next_stable_at = Some(summary.next_stable_at.map_or(stable_at, |t| t.min(stable_at)));
            }
        }
        // Recordings first and metadata last, so that rows find their recordings already here.
        let matching = self.ctx.config.get().matching.clone();
        let kind_of = |path: &str| FileKind::of(path.rsplit('/').next().unwrap_or(path), &matching);
        jobs.sort_by_cached_key(|j| {
            let rank = match kind_of(&j.path) {
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
                // Our copy is safe; only the clean-up on the server failed.
                tracing::warn!(file = path, error = %e, "pulled already, but the server refused to delete its copy; trying again at the next poll");
                if summary.file_error.is_none() {
                    summary.file_error = Some(format!("{path}: pulled, but the server refused to delete it: {e}"));
                }
                if !e.keeps_session() {
                    return Err(e);
                }
            }
        }

        // Which version each temp file will hold, in one commit before any download starts.
        // Files pulled before that changed since are revisions: their arrival re-sends the
        // conversations that used the version pulled before (SPEC §2 rule 4).
        let marks: Vec<(String, String)> = jobs
            .iter()
            .filter(|j| !j.resumable)
            .map(|j| (j.path.clone(), j.state.version()))
            .collect();
        let revisions: Vec<(String, u64)> = jobs
            .iter()
            .filter(|j| j.state.downloaded.is_some() && kind_of(&j.path) == FileKind::Recording)
            .map(|j| (j.path.clone(), j.state.size))
            .collect();
        if !marks.is_empty() || !revisions.is_empty() {
            let (key, tenant) = (self.key.clone(), self.tenant.to_string());
            self.ctx
                .catalog
                .run(move |c| {
                    c.ftp_state()
                        .ftp_mark_partials(&key, &tenant, &marks, &revisions, now_ms())
                })
                .await?;
        }
        // What the tenant's quota lets in now; the rest waits, and the source says so.
        let mut admitted = Vec::with_capacity(jobs.len());
        for mut job in jobs {
            let grant = self
                .ctx
                .quotas
                .open_file(&self.tenant, &job.path)
                .and_then(|mut g| g.grow_to(job.state.size).map(|()| g));
            match grant {
                Ok(g) => {
                    job.grant = Some(g);
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

    fn note_file_error(&self, summary: &mut PollSummary, path: &str, e: &FtpPollError) {
        tracing::warn!(file = path, error = %e, "could not pull; trying again at the next poll");
        metrics::counter!("dropsync_ftp_file_errors_total", "tenant" => self.tenant.to_string()).increment(1);
        if summary.file_error.is_none() {
            summary.file_error = Some(e.to_string());
        }
    }

    /// Says in the log, once per change, which folders the listing could not see whole;
    /// returns that for `status`.
    fn say_incomplete(&self, folders: &[client::IncompleteFolder]) -> Option<String> {
        let text = (!folders.is_empty()).then(|| {
            folders
                .iter()
                .map(|f| format!("{}: {}", if f.dir.is_empty() { "/" } else { &f.dir }, f.why))
                .collect::<Vec<_>>()
                .join("; ")
        });
        let mut said = self.incomplete_said.lock().unwrap_or_else(|p| p.into_inner());
        if *said != text {
            match &text {
                Some(t) => tracing::warn!(
                    folders = folders.len(),
                    "the listing is incomplete; what it could not see is not taken as gone: {t}"
                ),
                None => tracing::info!("the listing is complete again"),
            }
            said.clone_from(&text);
        }
        text
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
