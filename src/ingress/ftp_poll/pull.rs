//! Pulling one poll's files: over up to `connections` control connections, each download into
//! a hidden temp file (resumed with REST when a version's bytes are already there) and checked
//! against the listed size. A connection's received files are then made durable and put in
//! place together ([`crate::arrival::Batch`]: their fsyncs issued together, each folder synced
//! once), recorded, and announced, while the connection goes on to the next files.
//!
//! Downloads are written through the drop folder held open (see [`crate::confine`]): the
//! file's folder is created and opened level by level with no link followed, and the temp file
//! is created, renamed into place and fsynced relative to that folder. A link that another
//! local writer plants in a drop folder, as a folder or at a temp name, fails that one file with
//! "links are not followed"; nothing is written outside the drop folder.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::AtFlags;

use super::*;
use crate::arrival::file::{ArrivingFile, Background};
use crate::arrival::{Batch, Placement, Replace};
use crate::fsutil::TempKind;

/// A file received into its temp name, not yet durable.
struct Received {
    writer: Background,
    pulled: Pulled,
}

/// What is known of a file pulled.
struct Pulled {
    job: Job,
    remote: String,
    /// Its temp file's path, for messages only; no I/O goes by it.
    tmp: PathBuf,
    started: Instant,
}

/// A file's size once pulled, or why it was not.
type PullResult = Result<u64, (String, FtpPollError)>;
/// What finishing a file gives: (path, server path, size).
type Finished = Result<(String, String, u64), (String, FtpPollError)>;

/// Batches of received files one connection may have waiting to be made durable.
const MAX_FINISHING: usize = 4;

/// Received files put in place together at most, and their bytes: enough to share the folder's
/// fsync and the catalog's commit, few enough that a file is announced soon after it came.
const BATCH_FILES: usize = 16;
const BATCH_BYTES: u64 = 64 << 20;

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
        let mut received: Vec<Received> = Vec::new();
        let mut session_ok = true;
        let span = tracing::Span::current();
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
            let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
            let Some(job) = next else {
                break;
            };
            match self.fetch(&mut client, job).await {
                Ok(file) => {
                    received.push(file);
                    let bytes: u64 = received.iter().map(|r| r.pulled.job.state.size).sum();
                    let more = !queue.lock().unwrap_or_else(|p| p.into_inner()).is_empty();
                    if !more || received.len() >= BATCH_FILES || bytes >= BATCH_BYTES {
                        let batch = std::mem::take(&mut received);
                        finishing.spawn(self.clone().finish(batch).instrument(span.clone()));
                    }
                }
                Err((path, e)) => {
                    session_ok = e.keeps_session();
                    results.push(Err((path, e)));
                }
            }
        }
        if !received.is_empty() {
            finishing.spawn(self.clone().finish(received).instrument(span));
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
        done: Result<Vec<Finished>, tokio::task::JoinError>,
        client: &mut FtpClient,
        session_ok: &mut bool,
        results: &mut Vec<PullResult>,
    ) {
        let Ok(done) = done else {
            return;
        };
        for done in done {
            self.finished_one(done, client, session_ok, results).await;
        }
    }

    async fn finished_one(
        &self,
        done: Finished,
        client: &mut FtpClient,
        session_ok: &mut bool,
        results: &mut Vec<PullResult>,
    ) {
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
    /// same version), checked against the listed size; not yet durable.
    async fn fetch(&self, client: &mut FtpClient, mut job: Job) -> Result<Received, (String, FtpPollError)> {
        let Some(rel) = RelPath::parse(&job.path) else {
            let why = "not a valid path".into();
            return Err((job.path.clone(), FtpPollError::Listing { path: job.path, why }));
        };
        let tmp_name = temp_name(&self.key, &job.path);
        let tmp = self.ctx.drops.path_of(&self.tenant, &rel).with_file_name(&tmp_name);
        let keep = if job.resumable { u64::MAX } else { 0 };
        let (drops, tenant, grant) = (self.ctx.drops.clone(), self.tenant.clone(), job.grant.take());
        let file = tokio::task::spawn_blocking(move || {
            let dir = drops.confined(&tenant)?.ensure_dir(rel.dir())?;
            ArrivingFile::resume(Arc::new(dir), rel, tmp_name, keep, grant)
        })
        .await
        .map_err(|e| io::Error::other(e.to_string()))
        .and_then(|r| r)
        .map_err(|source| FtpPollError::Local {
            path: tmp.clone(),
            source,
        });
        let file = match file {
            Ok(f) => f,
            Err(e) => return Err((job.path, e)),
        };
        let remote = client.remote(&job.path);
        let started = Instant::now();
        match client.download(&remote, file, &tmp, job.state.size).await {
            Ok((writer, received)) => {
                metrics::counter!("dropsync_received_bytes_total", "via" => "ftp").increment(received);
                Ok(Received {
                    writer,
                    pulled: Pulled {
                        job,
                        remote,
                        tmp,
                        started,
                    },
                })
            }
            Err(e) => {
                if matches!(e, FtpPollError::Changed { .. }) {
                    self.remove_temp(&job.path);
                }
                Err((job.path, e))
            }
        }
    }

    /// Makes a connection's received files durable and arrivals, together: synced, renamed
    /// into place, each folder synced once ([`Batch`]); then recorded in the catalog, one file
    /// at a time, and each announced to intake with its digest once it is recorded.
    async fn finish(self: Arc<Self>, received: Vec<Received>) -> Vec<Finished> {
        let local = |r: Pulled, source: io::Error| Err((r.job.path, FtpPollError::Local { path: r.tmp, source }));
        let mut out = Vec::with_capacity(received.len());
        let mut batch = Batch::new();
        let mut pulled = Vec::with_capacity(received.len());
        for Received { writer, pulled: r } in received {
            match writer.finish().await.map(|w| batch.add(w)) {
                Ok(Ok(())) => pulled.push(r),
                // The batch is gone: every file in it waits for the next poll.
                Ok(Err(e)) => {
                    let why = e.to_string();
                    out.extend(pulled.drain(..).map(|p| local(p, io::Error::other(why.clone()))));
                    out.push(local(r, e));
                }
                Err(e) => out.push(local(r, e.into())),
            }
        }
        let placing = tokio::task::spawn_blocking(move || batch.place(Replace::Allowed))
            .await
            .map_err(|e| io::Error::other(e.to_string()))
            .and_then(|r| r);
        let Placement { placed, failed } = match placing {
            Ok(done) => done,
            Err(e) => {
                let why = e.to_string();
                out.extend(pulled.into_iter().map(|r| local(r, io::Error::other(why.clone()))));
                return out;
            }
        };
        let mut failed: HashMap<String, io::Error> = failed
            .into_iter()
            .map(|(rel, e)| (rel.as_str().to_owned(), e))
            .collect();
        let mut placed: HashMap<String, Option<KnownDigest>> = placed
            .into_iter()
            .map(|p| (p.rel.as_str().to_owned(), p.digest))
            .collect();
        for r in pulled {
            if let Some(source) = failed.remove(&r.job.path) {
                out.push(local(r, source));
                continue;
            }
            let digest = placed.remove(&r.job.path).flatten();
            out.push(self.record_pulled(r, digest).await);
        }
        out
    }

    /// Records a pulled file, now in place, and announces it.
    async fn record_pulled(&self, r: Pulled, digest: Option<KnownDigest>) -> Finished {
        let Pulled {
            job, remote, started, ..
        } = r;
        let Some(rel) = RelPath::parse(&job.path) else {
            return Err((
                job.path.clone(),
                FtpPollError::Listing {
                    path: job.path,
                    why: "not a valid path".into(),
                },
            ));
        };
        let (key, path, size, mtime) = (self.key.clone(), job.path.clone(), job.state.size, job.state.mtime_ms);
        let recorded = self
            .ctx
            .catalog
            .run(move |c| c.ftp_state().ftp_mark_downloaded(&key, &path, size, mtime, now_ms()))
            .await;
        if let Err(e) = recorded {
            return Err((job.path, FtpPollError::from(e)));
        }
        tracing::info!(file = %rel.as_str(), bytes = size, took_ms = started.elapsed().as_millis() as u64, "pulled");
        // The digest goes with the arrival, sparing intake reading the file again for it. (The
        // watcher leaves the rename from our temp name alone: this is its only announcement.)
        let _ = self
            .ctx
            .events
            .send(IngressEvent::Arrived(Arrived {
                tenant: self.tenant.clone(),
                rel,
                via: Via::Ftp,
                digest,
            }))
            .await;
        Ok((job.path, remote, size))
    }

    /// Removes the temp file of `path`'s download (its remote file vanished), through the
    /// drop folder held open.
    pub(super) fn remove_temp(&self, path: &str) {
        let Some(rel) = RelPath::parse(path) else {
            return;
        };
        if let Ok(dir) = self.ctx.drops.confined(&self.tenant).and_then(|c| c.dir(rel.dir())) {
            let _ = rustix::fs::unlinkat(&dir, temp_name(&self.key, path).as_str(), AtFlags::empty());
        }
    }
}

/// The hidden name a download is written under, next to its final name: the same for the same
/// source and path, so that a download cut short is found and resumed.
fn temp_name(source_key: &str, path: &str) -> String {
    TempKind::Pull.name_for(&format!("{source_key}\n{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::Quota;

    #[test]
    fn a_download_is_counted_once_while_written_and_as_held_once_in_place() {
        let fx = crate::limits::fixture(Quota {
            bytes: Some(1000),
            files: None,
            sessions: None,
        });
        let (drops, limits, acme) = (&fx.drops, &fx.limits, &fx.acme);
        let fits = |n: u64| limits.open_file(acme, "c2.wav").and_then(|mut g| g.grow_to(n)).is_ok();
        let mut grant = limits.open_file(acme, "c1.wav").unwrap();
        grant.grow_to(600).unwrap();
        let dir = Arc::new(drops.confined(acme).unwrap().ensure_dir("").unwrap());
        let rel = RelPath::parse("c1.wav").unwrap();
        let mut file = ArrivingFile::resume(dir, rel, temp_name("src", "c1.wav"), 0, Some(grant)).unwrap();
        file.append(&[0; 600]).unwrap();
        // A walk while it downloads: 600 counted by its grant, not again by the walk.
        limits.refresh(drops);
        assert!(fits(400), "the temp file is counted twice");
        let mut batch = Batch::new();
        batch.add(file.finish().unwrap()).unwrap();
        let placement = batch.place(Replace::Allowed).unwrap();
        assert_eq!(placement.placed[0].rel.as_str(), "c1.wav");
        // In place: held at once, before any walk, and once after one.
        assert!(!fits(401), "the pulled file is not counted until the next walk");
        limits.refresh(drops);
        assert!(!fits(401) && fits(400));
    }
}
