//! Pulling one poll's files: over up to `connections` control connections, each download into
//! a hidden temp file (resumed with REST when a version's bytes are already there), checked
//! against the listed size, fsynced, renamed into place and recorded; then the arrival.
//!
//! Downloads are written through the drop folder held open (see [`crate::confine`]): the
//! file's folder is created and opened level by level with no link followed, and the temp file
//! is created, renamed into place and fsynced relative to that folder. A link that another
//! local writer plants in a drop folder, as a folder or at a temp name, fails that one file with
//! "links are not followed"; nothing is written outside the drop folder.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, Mode, OFlags};

use super::*;

/// A file received into its temp name, not yet durable.
struct Received {
    writer: crate::fsutil::BackgroundWriter,
    /// The file's folder, held open: the temp file is renamed into place in it.
    dir: OwnedFd,
    tmp_name: String,
    /// Paths, for messages and the via hint only; no I/O goes by them.
    tmp: PathBuf,
    target: PathBuf,
    rel: RelPath,
    started: Instant,
    /// The file's place in the quota: covers the temp file, kept once it is in place.
    grant: Option<FileGrant>,
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
            let Some(mut job) = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front() else {
                break;
            };
            match self.fetch(&mut client, &mut job).await {
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
    async fn fetch(&self, client: &mut FtpClient, job: &mut Job) -> Result<Received, FtpPollError> {
        let Some(rel) = RelPath::parse(&job.path) else {
            return Err(FtpPollError::Listing {
                path: job.path.clone(),
                why: "not a valid path".into(),
            });
        };
        let target = self.ctx.drops.path_of(&self.tenant, &rel);
        let tmp_name = temp_name(&self.key, &job.path);
        let tmp = target.with_file_name(&tmp_name);
        let (drops, tenant, dir, name, mut grant) = (
            self.ctx.drops.clone(),
            self.tenant.clone(),
            rel.dir().to_owned(),
            tmp_name.clone(),
            job.grant.take(),
        );
        let (dir, file, grant) = tokio::task::spawn_blocking(move || {
            open_temp(&drops, &tenant, &dir, &name, grant.as_mut()).map(|(dir, file)| (dir, file, grant))
        })
        .await
        .map_err(|e| io::Error::other(e.to_string()))
        .and_then(|r| r)
        .map_err(|source| FtpPollError::Local {
            path: tmp.clone(),
            source,
        })?;
        let resume_from = match file.metadata() {
            Ok(m) if job.resumable => m.len(),
            _ => 0,
        };
        let remote = client.remote(&job.path);
        let started = Instant::now();
        match client.download(&remote, file, &tmp, resume_from, job.state.size).await {
            Ok((writer, received)) => {
                metrics::counter!("dropsync_received_bytes_total", "via" => "ftp").increment(received);
                Ok(Received {
                    writer,
                    dir,
                    tmp_name,
                    tmp,
                    target,
                    rel,
                    started,
                    grant,
                })
            }
            Err(e) => {
                if matches!(e, FtpPollError::Changed { .. }) {
                    let _ = rustix::fs::unlinkat(&dir, tmp_name.as_str(), AtFlags::empty());
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
        let meta = rustix::fs::statat(&r.dir, r.tmp_name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io::Error::from)
            .map_err(local(&r.tmp))
            .map_err(failed)?;
        let digest = KnownDigest {
            size: meta.st_size.max(0) as u64,
            mtime_ns: meta.st_mtime * 1_000_000_000 + meta.st_mtime_nsec as i64,
            sha256,
        };
        let (dir, tmp_name, name, grant) = (r.dir, r.tmp_name, r.rel.file_name().to_owned(), r.grant);
        tokio::task::spawn_blocking(move || put_in_place(&dir, &tmp_name, &name, grant))
            .await
            .map_err(|e| io::Error::other(e.to_string()))
            .and_then(|r| r)
            .map_err(local(&r.target))
            .map_err(failed)?;
        let (key, path, size, mtime) = (self.key.clone(), job.path.clone(), job.state.size, job.state.mtime_ms);
        self.ctx
            .catalog
            .run(move |c| c.ftp_state().ftp_mark_downloaded(&key, &path, size, mtime, now_ms()))
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

/// The folder `dir` of the tenant's drop folder, created if missing and held open, and the temp
/// file `name` in it, opened for reading and writing (created if missing). No link is followed:
/// not on the way to the folder, nor at the temp name. The temp file is `grant`'s to count from
/// here on, not the walk of the folder's (it would count it twice).
fn open_temp(
    drops: &DropRoot,
    tenant: &TenantId,
    dir: &str,
    name: &str,
    grant: Option<&mut FileGrant>,
) -> io::Result<(OwnedFd, File)> {
    let dir = drops.confined(tenant)?.ensure_dir(dir)?;
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat(&dir, name, flags, Mode::from_raw_mode(0o640)) {
        Ok(fd) => {
            let file = File::from(fd);
            if let Some(grant) = grant {
                grant.cover(crate::dropbox::FileId::of(&file.metadata()?));
            }
            Ok((dir, file))
        }
        Err(rustix::io::Errno::LOOP) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            "no such file (links are not followed)",
        )),
        Err(e) => Err(e.into()),
    }
}

/// Renames a received file from `tmp_name` into place as `name` in `dir`, then fsyncs the
/// folder. Its grant is kept as soon as it is in place: it counts as held at once, not only
/// from the next walk of the folder.
fn put_in_place(dir: &OwnedFd, tmp_name: &str, name: &str, grant: Option<FileGrant>) -> io::Result<()> {
    rustix::fs::renameat(dir, tmp_name, dir, name)?;
    if let Some(grant) = grant {
        grant.keep();
    }
    Ok(rustix::fs::fsync(dir)?)
}

/// The hidden name a download is written under, next to its final name. It ends in `.part`, not
/// `.tmp`, so the start-up scan keeps it for resuming.
fn temp_name(source_key: &str, path: &str) -> String {
    let digest = Sha256::digest(format!("{source_key}\n{path}").as_bytes());
    format!(".dropsync-ftp-{}.part", hex::encode(&digest[..8]))
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
        let (dir, mut file) = open_temp(drops, acme, "", ".dropsync-ftp-0.part", Some(&mut grant)).unwrap();
        std::io::Write::write_all(&mut file, &[0; 600]).unwrap();
        // A walk while it downloads: 600 counted by its grant, not again by the walk.
        limits.refresh(drops);
        assert!(fits(400), "the temp file is counted twice");
        drop(file);
        put_in_place(&dir, ".dropsync-ftp-0.part", "c1.wav", Some(grant)).unwrap();
        // In place: held at once, before any walk, and once after one.
        assert!(!fits(401), "the pulled file is not counted until the next walk");
        limits.refresh(drops);
        assert!(!fits(401) && fits(400));
    }
}
