//! Pulling one poll's files: over up to `connections` control connections, each download into
//! a hidden temp file (resumed with REST when a version's bytes are already there), checked
//! against the listed size, fsynced, renamed into place and recorded; then the arrival.

use std::sync::atomic::{AtomicBool, Ordering};

use super::*;

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

impl Poller {
    /// Drains `queue` over up to `connections` control connections; the first is `first`, the
    /// others are opened only if there is more than one file. A connection that fails ends its
    /// worker; its file waits for the next poll. A connection still logging in when the queue
    /// is empty and a worker ends is dropped: a server with slow logins (Pure-FTPd hashes
    /// passwords with argon2, about 3 s) must not hold the poll open after the files are in.
    pub(super) async fn pull_all(
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
                .pull_worker(Some(first), queue.clone(), tls.cloned(), None)
                .instrument(span.clone()),
        );
        let mut connecting = Vec::with_capacity(extra);
        for _ in 0..extra {
            let logged_in = Arc::new(AtomicBool::new(false));
            let handle = workers.spawn(
                self.clone()
                    .pull_worker(None, queue.clone(), tls.cloned(), Some(logged_in.clone()))
                    .instrument(span.clone()),
            );
            connecting.push((handle, logged_in));
        }
        let mut out = Vec::new();
        while let Some(r) = workers.join_next().await {
            if let Ok(mut results) = r {
                out.append(&mut results);
            }
            if queue.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
                for (handle, logged_in) in connecting.drain(..) {
                    if !logged_in.load(Ordering::Acquire) {
                        handle.abort();
                    }
                }
            }
        }
        out
    }

    async fn pull_worker(
        self: Arc<Self>,
        client: Option<FtpClient>,
        queue: Arc<Mutex<VecDeque<Job>>>,
        tls: Option<Tls>,
        logged_in: Option<Arc<AtomicBool>>,
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
        if let Some(flag) = &logged_in {
            // Set before the first file is taken: from here on this worker is never dropped.
            flag.store(true, Ordering::Release);
        }
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
        // The digest goes with the arrival, sparing intake reading the file again for it. (The
        // watcher leaves the rename from our temp name alone: this is its only announcement.)
        let meta = tokio::fs::metadata(&r.tmp)
            .await
            .map_err(local(&r.tmp))
            .map_err(failed)?;
        let digest = KnownDigest {
            size: meta.len(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            sha256,
        };
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
                digest: Some(digest),
            }))
            .await;
        Ok((job.path, remote, size))
    }

    pub(super) fn temp_path(&self, path: &str) -> std::io::Result<PathBuf> {
        let rel = RelPath::parse(path).ok_or_else(|| std::io::Error::other("bad path"))?;
        Ok(self
            .ctx
            .drops
            .path_of(&self.tenant, &rel)
            .with_file_name(temp_name(&self.key, path)))
    }
}

/// The hidden name a download is written under, next to its final name. It ends in `.part`, not
/// `.tmp`, so the start-up scan keeps it for resuming.
fn temp_name(source_key: &str, path: &str) -> String {
    let digest = Sha256::digest(format!("{source_key}\n{path}").as_bytes());
    format!(".dropsync-ftp-{}.part", hex::encode(&digest[..8]))
}
