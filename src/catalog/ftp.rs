//! [`FtpState`]: what the FTP pollers know of each source. Used by the FTP poller; the CLI's
//! `status` reads it through [`Reports`](super::Reports).
//!
//! Writes `ftp_sources`, `ftp_files` and `ftp_revisions` (a changed file noted before it is
//! pulled again; [`Files`](super::Files) takes the note when the new version arrives).
//!
//! FTP sources: what each remote file looked like when last listed, since when it has been
//! stable, and which version of it was pulled.
//!
//! Crash ordering: a file is pulled (fsynced and renamed into the drop folder) before
//! [`FtpState::ftp_mark_downloaded`] commits; a crash in between pulls it again, which the
//! intake sees as the same file arriving twice (a no-op). A remote delete
//! (`after_download = "delete"`) is only sent after that commit.

use std::collections::HashMap;

use super::sql::{Sql, params};
use serde::Serialize;

use super::{Db, Result};

/// What the FTP pollers know of each source: see the module doc.
#[derive(Clone)]
pub struct FtpState {
    pub(super) db: Db,
}

/// One file of a listing, its path relative to the source's folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    pub path: String,
    pub size: u64,
    pub mtime_ms: i64,
}

/// What the catalog knows of one listed remote file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFileState {
    pub size: u64,
    pub mtime_ms: i64,
    pub stable_since: i64,
    /// The version (see [`version_tag`]) a partial download on disk belongs to.
    pub partial: Option<String>,
    /// (size, mtime) of the version pulled last.
    pub downloaded: Option<(u64, i64)>,
}

impl RemoteFileState {
    /// Whether the version listed now is the one already pulled.
    pub fn is_pulled(&self) -> bool {
        self.downloaded == Some((self.size, self.mtime_ms))
    }
    pub fn version(&self) -> String {
        version_tag(self.size, self.mtime_ms)
    }
}

/// Names one version of a remote file, to tell whether a partial download can be resumed.
pub fn version_tag(size: u64, mtime_ms: i64) -> String {
    format!("{size}:{mtime_ms}")
}

/// The outcome of [`FtpState::ftp_apply_listing`].
#[derive(Debug, Default)]
pub struct AppliedListing {
    /// Every listed file, by path, with its state after this listing.
    pub files: HashMap<String, RemoteFileState>,
    pub new: usize,
    pub changed: usize,
    /// Files gone from the server whose partial download on disk is now useless.
    pub vanished_partials: Vec<String>,
    pub vanished: usize,
}

/// How one poll ended, for `status`.
#[derive(Debug, Clone)]
pub struct PollRecord {
    /// The listing completed (files may still have failed).
    pub listed: bool,
    /// The first thing that went wrong, if anything did.
    pub error: Option<String>,
    pub remote_files: usize,
    pub waiting: usize,
    /// Folders the listing could not see whole, and why.
    pub incomplete: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FtpSourceStatus {
    pub tenant: String,
    pub url: String,
    pub last_poll_at: Option<String>,
    pub last_ok_at: Option<String>,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    pub errors_in_row: i64,
    pub files_pulled: i64,
    pub bytes_pulled: i64,
    pub remote_files: i64,
    pub waiting: i64,
    /// Folders the last listing could not see whole (refused, or cut short by the server),
    /// in the server's words; their files are neither pulled nor taken as gone meanwhile.
    pub listing_incomplete: Option<String>,
}

impl PollRecord {
    /// A poll that ended before its listing was complete.
    pub fn failed(error: String) -> Self {
        PollRecord {
            listed: false,
            error: Some(error),
            remote_files: 0,
            waiting: 0,
            incomplete: None,
        }
    }
}

impl FtpSourceStatus {
    pub fn never_polled(tenant: &str, url: &str) -> Self {
        FtpSourceStatus {
            tenant: tenant.to_owned(),
            url: url.to_owned(),
            last_poll_at: None,
            last_ok_at: None,
            last_error: None,
            last_error_at: None,
            errors_in_row: 0,
            files_pulled: 0,
            bytes_pulled: 0,
            remote_files: 0,
            waiting: 0,
            listing_incomplete: None,
        }
    }
}

/// Rows written per transaction when a listing is recorded: a few milliseconds of the writer.
const WRITE_BATCH: usize = 500;

/// Whether `path` lies in folder `dir` ("" is the source's folder: everything does).
fn is_under(path: &str, dir: &str) -> bool {
    dir.is_empty() || path.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/'))
}

impl FtpState {
    /// Records a listing of `source`: new files start settling, changed ones settle again,
    /// vanished ones are forgotten, except under the `incomplete` folders (refused or cut
    /// short), where a file missing from the listing is kept as it was. Writes nothing when
    /// nothing changed, so re-polling an unchanged server costs one read.
    pub fn ftp_apply_listing(
        &self,
        source: &str,
        listing: &[RemoteFile],
        incomplete: &[String],
        now: i64,
    ) -> Result<AppliedListing> {
        // Read on a reader, written in bounded batches: a listing of millions of files never
        // holds the writer (everyone's intake and forwarding) for more than one batch. Only
        // this source's poller writes its rows, so nothing changes them between read and write,
        // and a crash between batches is repaired by the next poll's diff.
        let mut known: HashMap<String, RemoteFileState> = self.db.read(|conn| {
            let rows = conn.query_map(
                "SELECT path, size, mtime, stable_since, partial, downloaded_size, downloaded_mtime
                 FROM ftp_files WHERE source = ?1",
                params![source],
                |r| {
                    let downloaded = match (r.get::<_, Option<i64>>(5)?, r.get::<_, Option<i64>>(6)?) {
                        (Some(s), Some(m)) => Some((s as u64, m)),
                        _ => None,
                    };
                    Ok((
                        r.get::<_, String>(0)?,
                        RemoteFileState {
                            size: r.get::<_, i64>(1)? as u64,
                            mtime_ms: r.get(2)?,
                            stable_since: r.get(3)?,
                            partial: r.get(4)?,
                            downloaded,
                        },
                    ))
                },
            )?;
            Ok(rows.into_iter().collect())
        })?;
        let mut out = AppliedListing::default();
        let mut upserts = Vec::new();
        for f in listing {
            let state = match known.remove(&f.path) {
                Some(mut s) => {
                    if (s.size, s.mtime_ms) != (f.size, f.mtime_ms) {
                        s.size = f.size;
                        s.mtime_ms = f.mtime_ms;
                        s.stable_since = now;
                        out.changed += 1;
                        upserts.push(f);
                    }
                    s
                }
                None => {
                    out.new += 1;
                    upserts.push(f);
                    RemoteFileState {
                        size: f.size,
                        mtime_ms: f.mtime_ms,
                        stable_since: now,
                        partial: None,
                        downloaded: None,
                    }
                }
            };
            out.files.insert(f.path.clone(), state);
        }
        // What is left in `known` was not listed this time; under an incomplete folder, that
        // says nothing.
        known.retain(|path, _| !incomplete.iter().any(|dir| is_under(path, dir)));
        out.vanished = known.len();
        out.vanished_partials = known
            .iter()
            .filter(|(_, s)| s.partial.is_some())
            .map(|(p, _)| p.clone())
            .collect();
        if upserts.is_empty() && known.is_empty() {
            return Ok(out);
        }
        for batch in upserts.chunks(WRITE_BATCH) {
            self.db.write(|tx| {
                for f in batch {
                    tx.execute(
                        "INSERT INTO ftp_files (source, path, size, mtime, first_seen_at, stable_since)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?5)
                         ON CONFLICT(source, path) DO UPDATE SET
                            size = excluded.size, mtime = excluded.mtime, stable_since = excluded.stable_since",
                        params![source, f.path, f.size as i64, f.mtime_ms, now],
                    )?;
                }
                Ok(())
            })?;
        }
        let vanished: Vec<&String> = known.keys().collect();
        for batch in vanished.chunks(WRITE_BATCH) {
            self.db.write(|tx| {
                for path in batch {
                    tx.execute(
                        "DELETE FROM ftp_files WHERE source = ?1 AND path = ?2",
                        params![source, path],
                    )?;
                    tx.execute(
                        "DELETE FROM ftp_revisions WHERE source = ?1 AND rel_path = ?2",
                        params![source, path],
                    )?;
                }
                Ok(())
            })?;
        }
        Ok(out)
    }

    /// Notes, before downloads start, which version (see [`version_tag`]) the bytes in each
    /// (path, version) temp file will belong to, and which of the files are `revisions`
    /// (path, size): pulled before, changed since, so their arrival re-sends what used them.
    pub fn ftp_mark_partials(
        &self,
        source: &str,
        tenant: &str,
        marks: &[(String, String)],
        revisions: &[(String, u64)],
        now: i64,
    ) -> Result<()> {
        self.db.write(|tx| {
            {
                let query = "UPDATE ftp_files SET partial = ?3 WHERE source = ?1 AND path = ?2";
                for (path, version) in marks {
                    tx.execute(query, params![source, path, version])?;
                }
                for (path, size) in revisions {
                    tx.execute(
                        "INSERT INTO ftp_revisions (tenant, rel_path, source, size, noted_at) VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT(tenant, rel_path) DO UPDATE SET source = excluded.source, size = excluded.size,
                            noted_at = excluded.noted_at",
                        params![tenant, path, source, *size as i64, now],
                    )?;
                }
            }
            Ok(())
        })
    }

    /// Records that `path` at (`size`, `mtime_ms`) is durably in the drop folder.
    pub fn ftp_mark_downloaded(&self, source: &str, path: &str, size: u64, mtime_ms: i64, now: i64) -> Result<()> {
        self.db.write(|tx| {
            tx.execute(
                "UPDATE ftp_files SET partial = NULL, downloaded_at = ?5, downloaded_size = ?3, downloaded_mtime = ?4
             WHERE source = ?1 AND path = ?2",
                params![source, path, size as i64, mtime_ms, now],
            )?;
            tx.execute(
                "UPDATE ftp_sources SET files_pulled = files_pulled + 1, bytes_pulled = bytes_pulled + ?2
             WHERE source = ?1",
                params![source, size as i64],
            )?;
            Ok(())
        })
    }

    /// Records how a poll of `source` ended.
    pub fn ftp_record_poll(&self, source: &str, tenant: &str, url: &str, now: i64, poll: &PollRecord) -> Result<()> {
        self.db.write(|tx| {
            register_source(&tx, source, tenant, url)?;
            tx.execute(
                "UPDATE ftp_sources SET last_poll_at = ?2 WHERE source = ?1",
                params![source, now],
            )?;
            if poll.listed {
                tx.execute(
                    "UPDATE ftp_sources SET last_ok_at = ?2, remote_files = ?3, waiting = ?4, listing_incomplete = ?5
                 WHERE source = ?1",
                    params![
                        source,
                        now,
                        poll.remote_files as i64,
                        poll.waiting as i64,
                        poll.incomplete
                    ],
                )?;
            }
            match &poll.error {
            // A good poll clears the error: status shows what is wrong now, not what was.
            None => tx.execute(
                "UPDATE ftp_sources SET errors_in_row = 0, last_error = NULL, last_error_at = NULL WHERE source = ?1",
                params![source],
            )?,
            Some(e) => tx.execute(
                "UPDATE ftp_sources SET last_error = ?2, last_error_at = ?3, errors_in_row = errors_in_row + 1
                 WHERE source = ?1",
                params![source, e, now],
            )?,
        };
            Ok(())
        })
    }

    /// Registers a source so that downloads can be counted before its first poll ends.
    pub fn ftp_register_source(&self, source: &str, tenant: &str, url: &str) -> Result<()> {
        self.db.write(|tx| register_source(tx, source, tenant, url))
    }

    /// Every source the catalog has seen, optionally of one tenant.
    pub fn ftp_sources(&self, tenant: Option<&str>) -> Result<Vec<FtpSourceStatus>> {
        self.db.read(|conn| {
            if !super::has_table(&conn, "ftp_sources")? {
                return Ok(Vec::new());
            }
            let query = "SELECT tenant, url, last_poll_at, last_ok_at, last_error, last_error_at, errors_in_row,
                    files_pulled, bytes_pulled, remote_files, waiting, listing_incomplete
             FROM ftp_sources WHERE (?1 IS NULL OR tenant = ?1) ORDER BY tenant, url";
            let iso = |v: Option<i64>| v.map(super::views::iso);
            let rows = conn.query_map(query, params![tenant], |r| {
                Ok(FtpSourceStatus {
                    tenant: r.get(0)?,
                    url: r.get(1)?,
                    last_poll_at: iso(r.get(2)?),
                    last_ok_at: iso(r.get(3)?),
                    last_error: r.get(4)?,
                    last_error_at: iso(r.get(5)?),
                    errors_in_row: r.get(6)?,
                    files_pulled: r.get(7)?,
                    bytes_pulled: r.get(8)?,
                    remote_files: r.get(9)?,
                    waiting: r.get(10)?,
                    listing_incomplete: r.get(11)?,
                })
            })?;
            Ok(rows)
        })
    }
}

/// Adds `source` to `ftp_sources` unless it is there already.
fn register_source(conn: &dyn Sql, source: &str, tenant: &str, url: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO ftp_sources (source, tenant, url) VALUES (?1, ?2, ?3) ON CONFLICT(source) DO NOTHING",
        params![source, tenant, url],
    )?;
    Ok(())
}
