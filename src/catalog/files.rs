//! [`Files`]: arrivals and metadata rows, recording what came in and deciding, in the same
//! transaction, which conversations became complete. Used by intake (arrivals, rows, parse
//! progress, zip outcomes) and housekeeping (`expire`).
//!
//! Writes `files` (a new arrival, the record it replaces, orphan marks), `metadata_files` (the record and its parse
//! progress), `refusals`, `recordings` and `conversations` (a row's conversation is created,
//! made `waiting` or `ready`, or `expired`). It also deletes the `ftp_revisions` row an arrival
//! answers ([`FtpState`](super::FtpState) notes it): the revision is taken in the arrival's own
//! transaction, so a crash cannot take it without recording the new version, or the reverse.
//! Helpers in `rows.rs` and `revisions.rs` work inside its transactions.

use super::sql::{Optional, Sql, params};

use super::queue::OPEN_STATES;
use super::revisions::{resend_with_revision, take_revision};
use super::rows::{add_row, is_complete, make_ready};
use super::{Db, Result, Via};
use crate::dropbox::{FileKind, RelPath};
use crate::matching::RowVerdict;
use crate::matching::join::ArrivalKeys;

/// Arrivals, metadata rows and the conversations they make: see the module doc.
#[derive(Clone)]
pub struct Files {
    pub(super) db: Db,
    /// Set by [`Files::of`]: the tenant whose metadata files this handle's parse calls change.
    pub(super) tenant: Option<String>,
}

/// What recording an arrival did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    /// The same path, size and mtime is already recorded as present: nothing to do.
    Duplicate,
    /// A recording; `completed` conversations became ready (or identical re-sends) because of
    /// it; `decided` files are no longer needed (identical re-sends) and may leave.
    Recording {
        file_id: i64,
        completed: usize,
        decided: Vec<i64>,
    },
    /// A metadata file, to be parsed into rows.
    Metadata { file_id: i64, metadata_file_id: i64 },
    /// A zip batch, to be unpacked.
    Zip { file_id: i64, metadata_file_id: i64 },
    /// A file we do not ingest; already rejected with a reason.
    Unknown { file_id: i64 },
}

/// A metadata file or zip whose parse or unpack has not finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingParse {
    pub file_id: i64,
    pub metadata_file_id: i64,
    /// csv | tsv | json | jsonl | zip
    pub format: String,
    /// Rows already committed: a resumed parse goes on after them.
    pub rows_done: u64,
}

/// One row of a metadata file, checked by the matcher.
#[derive(Debug, Clone)]
pub struct RowInput {
    pub row_no: u64,
    pub verdict: RowVerdict,
}

/// How long one transaction of rows may hold the writer (it ends after the row that passes it).
const ROWS_SLICE: std::time::Duration = std::time::Duration::from_millis(5);

/// A file that has arrived in a drop folder.
pub struct NewFile<'a> {
    pub tenant: &'a str,
    pub rel: &'a RelPath,
    pub kind: FileKind,
    pub via: Via,
    pub size: u64,
    pub mtime_ns: i64,
    /// Tells a file re-sent under the same name from the one recorded before it.
    pub ino: u64,
    /// The device the inode is on.
    pub dev: u64,
    pub sha256: Option<String>,
    /// Recordings: the length read from the headers, if they could be read.
    pub duration_ms: Option<u64>,
    /// Recordings that are not readable audio of their extension's format, with the reason
    /// (only when `check_audio` is on): the rows that name them are rejected with it.
    pub audio_error: Option<String>,
}

fn kind_str(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Recording => "recording",
        FileKind::Metadata(_) => "metadata",
        FileKind::Zip => "zip",
        FileKind::Unknown => "unknown",
    }
}

impl Files {
    /// This handle for `tenant`'s files only: the rows of a metadata file being parsed
    /// (`add_rows`, `finish_metadata`) take that tenant's writer lock, so on PostgreSQL the
    /// parses of different tenants run at once (see [`super::db::Db::write_for`]). Every
    /// metadata file given to them must be `tenant`'s.
    pub fn of(mut self, tenant: &str) -> Files {
        self.tenant = Some(tenant.to_owned());
        self
    }

    /// Records an arrival. A recording is attached to every waiting row that names it in the
    /// same folder; a metadata, zip or unknown file gets an entry that will carry its report.
    pub fn register_file(&self, f: &NewFile<'_>, now: i64, unknown_reason: &str) -> Result<Registered> {
        let (mut out, result) = self.register_files(std::slice::from_ref(f), now, unknown_reason);
        result?;
        Ok(out.remove(0))
    }

    /// Records several arrivals, in transactions that each hold the writer for at most
    /// [`ROWS_SLICE`], so a burst of thousands (a folder filled by an FTP backfill or a mount)
    /// never keeps other tenants' intake and forwarding waiting.
    ///
    /// Their commits are not synced. A power cut that loses one loses records the start-up
    /// scan makes again from the files in the drop folder; whatever acts on a recorded file (a
    /// forward's claim, an archive claim, the end of a parse or an unpack) commits in full
    /// first, which makes the arrival durable before it, as the write-ahead log is written in
    /// order.
    ///
    /// Gives the outcomes of the files recorded, in order, and the error that stopped the
    /// rest, if one did: those recorded stay recorded (each slice is whole).
    pub fn register_files(
        &self,
        files: &[NewFile<'_>],
        now: i64,
        unknown_reason: &str,
    ) -> (Vec<Registered>, Result<()>) {
        self.db
            .sliced(files, ROWS_SLICE, |tx, f| register_in(tx, f, now, unknown_reason))
    }

    /// Commits a chunk of rows of a metadata file that is being parsed, with the resume point.
    /// Returns how many conversations the chunk completed, and the files identical re-sends no
    /// longer need.
    ///
    /// The chunk goes in as several transactions, each closed once it has held the writer for
    /// [`ROWS_SLICE`], so that one tenant's big file never keeps everyone else's intake and
    /// forwarding waiting. Their commits are not fsynced: a power cut that loses them loses rows
    /// and their resume point together, and the parse resumes earlier; whatever acts on a row
    /// (a forward's claim, the end of the parse) commits in full, which makes everything
    /// before it in the log durable first.
    pub fn add_rows(
        &self,
        metadata_file_id: i64,
        rows: &[RowInput],
        now: i64,
        grace_ms: i64,
    ) -> Result<(usize, Vec<i64>)> {
        let mut ready = 0;
        let mut decided = Vec::new();
        let mut rest = rows;
        while !rest.is_empty() {
            let (taken, slice_ready, slice_decided) = self.db.light_for(self.tenant.as_deref(), |tx| {
                let (mut ready, mut decided) = (0, Vec::new());
                let started = std::time::Instant::now();
                let (tenant, dir, via, file_name): (String, String, String, String) = tx.query_row(
                    "SELECT tenant, dir, via, rel_path FROM metadata_files WHERE id = ?1",
                    params![metadata_file_id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )?;
                if let Some(t) = self.tenant.as_ref().filter(|t| **t != tenant) {
                    return Err(super::CatalogError::WrongTenant(
                        format!("metadata file {metadata_file_id}"),
                        t.clone(),
                    ));
                }
                let mut taken = 0;
                for row in rest {
                    ready += add_row(
                        tx,
                        metadata_file_id,
                        &tenant,
                        &dir,
                        &via,
                        &file_name,
                        row,
                        now,
                        grace_ms,
                        &mut decided,
                    )?;
                    taken += 1;
                    if started.elapsed() >= ROWS_SLICE {
                        break;
                    }
                }
                tx.execute(
                    "UPDATE metadata_files SET rows_done = ?2 WHERE id = ?1",
                    params![metadata_file_id, rest[taken - 1].row_no as i64],
                )?;
                Ok((taken, ready, decided))
            })?;
            ready += slice_ready;
            decided.extend(slice_decided);
            rest = &rest[taken..];
        }
        Ok((ready, decided))
    }

    /// Ends parsing: the file is `parsed`, or rejected as a whole (its rows, if a resumed parse
    /// had committed any, are withdrawn).
    pub fn finish_metadata(&self, metadata_file_id: i64, outcome: std::result::Result<(), String>) -> Result<()> {
        self.db.write_for(self.tenant.as_deref(), |tx| {
            match &outcome {
                Ok(()) => {
                    tx.execute(
                        "UPDATE metadata_files SET status = 'parsed' WHERE id = ?1",
                        params![metadata_file_id],
                    )?;
                }
                Err(reason) => {
                    tx.execute(
                        "DELETE FROM recordings WHERE conversation IN (SELECT id FROM conversations WHERE metadata_file_id = ?1)",
                        params![metadata_file_id],
                    )?;
                    tx.execute(
                        "DELETE FROM conversations WHERE metadata_file_id = ?1",
                        params![metadata_file_id],
                    )?;
                    reject_metadata_file(&tx, metadata_file_id, reason)?;
                }
            }
            Ok(())
        })
    }

    /// Records what unpacking a zip batch gave: refused entries, or why the archive was rejected.
    pub fn finish_zip(
        &self,
        metadata_file_id: i64,
        outcome: std::result::Result<&[(String, String)], String>,
    ) -> Result<()> {
        self.db.write(|tx| {
            match &outcome {
                Ok(refused) => {
                    for (i, (name, reason)) in refused.iter().enumerate() {
                        tx.execute(
                            "INSERT OR REPLACE INTO refusals (metadata_file_id, line, name, reason) VALUES (?1, ?2, ?3, ?4)",
                            params![metadata_file_id, i as i64 + 1, name, reason],
                        )?;
                    }
                    tx.execute(
                        "UPDATE metadata_files SET status = 'parsed', report_stale = report_stale + 1 WHERE id = ?1",
                        params![metadata_file_id],
                    )?;
                }
                Err(reason) => {
                    reject_metadata_file(&tx, metadata_file_id, reason)?;
                }
            }
            Ok(())
        })
    }

    /// Whether this very file (path, size, mtime, inode) is recorded as present or leaving
    /// for the archive (a repeated event).
    pub fn is_present_unchanged(
        &self,
        tenant: &str,
        rel: &RelPath,
        size: u64,
        mtime_ns: i64,
        ino: u64,
    ) -> Result<bool> {
        self.db
            .read(|conn| Ok(same_file_recorded(&conn, tenant, rel.as_str(), size, mtime_ns, ino)?.is_some()))
    }

    /// Metadata files and zips of a tenant still being parsed or unpacked (a crash or a failed
    /// attempt interrupted them), by path.
    pub fn parsing_files(&self, tenant: &str) -> Result<Vec<String>> {
        self.db.read(|conn| {
            let query = "SELECT m.rel_path FROM metadata_files m JOIN files f ON f.id = m.file_id
             WHERE m.status = 'parsing' AND m.tenant = ?1 AND f.state = 'present' ORDER BY m.id";
            let rows = conn.query_map(query, params![tenant], |r| r.get(0))?;
            Ok(rows)
        })
    }

    /// The parse or unpack of this present file that has not finished, if any.
    pub fn pending_parse(&self, tenant: &str, rel: &RelPath) -> Result<Option<PendingParse>> {
        self.db.read(|conn| {
            conn.query_row(
                "SELECT m.file_id, m.id, m.format, m.rows_done FROM metadata_files m JOIN files f ON f.id = m.file_id
                 WHERE f.tenant = ?1 AND f.rel_path = ?2 AND f.state = 'present' AND m.status = 'parsing'",
                params![tenant, rel.as_str()],
                |r| {
                    Ok(PendingParse {
                        file_id: r.get(0)?,
                        metadata_file_id: r.get(1)?,
                        format: r.get(2)?,
                        rows_done: r.get::<_, i64>(3)? as u64,
                    })
                },
            )
            .optional()
        })
    }

    /// Waiting rows past their grace become `expired`; recordings nobody claimed within grace
    /// become orphans. Returns (expired, orphaned).
    pub fn expire(&self, now: i64, grace_ms: i64) -> Result<(usize, usize)> {
        self.db.write(|tx| {
            let concat = tx.pick("group_concat", "string_agg");
            let expired = tx.execute(
                &format!(
                    "UPDATE conversations SET state = 'expired', changed_at = ?1,
                    detail = 'recording never arrived in the same folder within the grace period: ' ||
                        (SELECT {concat}(coalesce(r.name, r.stem || '.*'), ', ') FROM recordings r
                         WHERE r.conversation = conversations.id AND r.file_id IS NULL)
                 WHERE state = 'waiting' AND deadline <= ?1"
                ),
                params![now],
            )?;
            let orphaned = tx.execute(
                "UPDATE files SET orphan_since = ?1
             WHERE state = 'present' AND kind = 'recording' AND orphan_since IS NULL AND arrived_at <= ?1 - ?2
               AND NOT EXISTS (SELECT 1 FROM recordings r WHERE r.file_id = files.id)",
                params![now, grace_ms],
            )?;
            Ok((expired, orphaned))
        })
    }
}

/// One arrival, inside the caller's transaction (see [`Files::register_file`]).
/// Two selects, each on its partial index: `state IN (…)` would scan the whole table.
pub(super) const SAME_FILE: &str = "SELECT id FROM files WHERE tenant = ?1 AND rel_path = ?2 AND state = 'present'
       AND size = ?3 AND mtime_ns = ?4 AND (ino IS NULL OR ino = ?5)
     UNION ALL
     SELECT id FROM files WHERE tenant = ?1 AND rel_path = ?2 AND state = 'leaving'
       AND size = ?3 AND mtime_ns = ?4 AND (ino IS NULL OR ino = ?5)
     LIMIT 1";

/// The file recorded as present or leaving at `rel` if it is this very file (size, mtime and,
/// when recorded, inode).
fn same_file_recorded(
    conn: &dyn Sql,
    tenant: &str,
    rel: &str,
    size: u64,
    mtime_ns: i64,
    ino: u64,
) -> Result<Option<i64>> {
    conn.query_row(
        SAME_FILE,
        params![tenant, rel, size as i64, mtime_ns, ino as i64],
        |r| r.get(0),
    )
    .optional()
}

fn register_in(tx: &dyn Sql, f: &NewFile<'_>, now: i64, unknown_reason: &str) -> Result<Registered> {
    if same_file_recorded(tx, f.tenant, f.rel.as_str(), f.size, f.mtime_ns, f.ino)?.is_some() {
        return Ok(Registered::Duplicate);
    }
    let revision = f.kind == FileKind::Recording && take_revision(tx, f.tenant, f.rel.as_str(), f.size)?;
    let existing: Option<(i64, String, bool)> = tx
        .query_row(
            &format!(
                "SELECT id, kind, EXISTS (SELECT 1 FROM recordings r JOIN conversations c ON c.id = r.conversation
                                      WHERE r.file_id = files.id AND c.state IN {OPEN_STATES})
             FROM files WHERE tenant = ?1 AND rel_path = ?2 AND state = 'present'"
            ),
            params![f.tenant, f.rel.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let kind = kind_str(f.kind);
    let name = f.rel.file_name();
    if let Some((id, old_kind, in_open_use)) = &existing {
        if old_kind == "recording" && kind == "recording" && *in_open_use {
            // Overwritten while open rows use it: same record, new content. Rows that were
            // complete with the old content are decided again with the new one. (A recording
            // only forwarded ones used is a new file: its record may be leaving for the archive.)
            tx.execute("UPDATE files SET size = ?2, mtime_ns = ?3, ino = ?4, sha256 = ?5, arrived_at = ?6, via = ?7, orphan_since = NULL,
                        duration_ms = ?8, audio_error = ?9, dev = ?10
                 WHERE id = ?1", params![
                id,
                f.size as i64,
                f.mtime_ns,
                f.ino as i64,
                f.sha256,
                now,
                f.via.as_str(),
                f.duration_ms.map(|d| d as i64),
                f.audio_error,
                f.dev as i64
            ])?;
            let convs: Vec<i64> = tx.query_map(
                "SELECT c.id FROM recordings r JOIN conversations c ON c.id = r.conversation
                     WHERE r.file_id = ?1 AND c.state = 'ready'",
                params![id],
                |r| r.get(0),
            )?;
            let mut decided = Vec::new();
            for c in &convs {
                make_ready(tx, *c, now, &mut decided)?;
            }
            return Ok(Registered::Recording {
                file_id: *id,
                completed: convs.len(),
                decided,
            });
        }
        // Any other overwrite is a new file; the old record is closed.
        tx.execute(
            "UPDATE files SET state = 'gone', left_at = ?2 WHERE id = ?1",
            params![id, now],
        )?;
    }
    let file_id: i64 = tx.query_row("INSERT INTO files (tenant, rel_path, dir, name, stem, kind, via, size, mtime_ns, sha256, arrived_at, ino, state,
                            duration_ms, audio_error, dev)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 'present', ?13, ?14, ?15) RETURNING id", params![
        f.tenant,
        f.rel.as_str(),
        f.rel.dir(),
        name,
        ArrivalKeys::of(name).stem,
        kind,
        f.via.as_str(),
        f.size as i64,
        f.mtime_ns,
        f.sha256,
        now,
        f.ino as i64,
        f.duration_ms.map(|d| d as i64),
        f.audio_error,
        f.dev as i64
    ], |r| r.get(0))?;
    let outcome = match f.kind {
        FileKind::Recording => {
            let mut decided = Vec::new();
            let mut completed = attach_arrival(tx, file_id, f.tenant, f.rel.dir(), name, now, &mut decided)?;
            if revision {
                completed += resend_with_revision(tx, file_id, f.tenant, f.rel.as_str(), now, &mut decided)?;
            }
            Registered::Recording {
                file_id,
                completed,
                decided,
            }
        }
        FileKind::Metadata(format) => Registered::Metadata {
            file_id,
            metadata_file_id: insert_metadata_file(tx, file_id, f, format.as_str(), "parsing", None, now)?,
        },
        FileKind::Zip => Registered::Zip {
            file_id,
            metadata_file_id: insert_metadata_file(tx, file_id, f, "zip", "parsing", None, now)?,
        },
        FileKind::Unknown => {
            insert_metadata_file(tx, file_id, f, "unknown", "rejected", Some(unknown_reason), now)?;
            Registered::Unknown { file_id }
        }
    };
    Ok(outcome)
}

fn reject_metadata_file(tx: &dyn Sql, metadata_file_id: i64, reason: &str) -> Result<()> {
    tx.execute(
        "UPDATE metadata_files SET status = 'rejected', reason = ?2, report_stale = report_stale + 1 WHERE id = ?1",
        params![metadata_file_id, reason],
    )?;
    Ok(())
}

fn insert_metadata_file(
    tx: &dyn Sql,
    file_id: i64,
    f: &NewFile<'_>,
    format: &str,
    status: &str,
    reason: Option<&str>,
    now: i64,
) -> Result<i64> {
    tx.query_row(
        "INSERT INTO metadata_files (file_id, tenant, rel_path, dir, format, via, status, reason, received_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) RETURNING id",
        params![
            file_id,
            f.tenant,
            f.rel.as_str(),
            f.rel.dir(),
            format,
            f.via.as_str(),
            status,
            reason,
            now
        ],
        |r| r.get(0),
    )
}

/// Attaches a newly arrived recording to the open recordings that name it; decides every
/// conversation that is now complete. Expired rows are revived: a late recording is still
/// forwarded rather than lost.
fn attach_arrival(
    tx: &dyn Sql,
    file_id: i64,
    tenant: &str,
    dir: &str,
    name: &str,
    now: i64,
    decided: &mut Vec<i64>,
) -> Result<usize> {
    // By name, then by stem: one indexed lookup each (an OR of the two would scan the folder).
    let keys = ArrivalKeys::of(name);
    // A recording that thousands of rows name is attached to each once, in linear time.
    let mut convs: Vec<i64> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (sql, key) in [
        (
            "UPDATE recordings SET file_id = ?1 WHERE tenant = ?2 AND dir = ?3 AND name = ?4 AND file_id IS NULL
               AND EXISTS (SELECT 1 FROM conversations c WHERE c.id = recordings.conversation AND c.state IN ('waiting', 'expired'))
             RETURNING conversation",
            keys.name,
        ),
        (
            "UPDATE recordings SET file_id = ?1 WHERE tenant = ?2 AND dir = ?3 AND stem = ?4 AND file_id IS NULL
               AND EXISTS (SELECT 1 FROM conversations c WHERE c.id = recordings.conversation AND c.state IN ('waiting', 'expired'))
             RETURNING conversation",
            keys.stem,
        ),
    ] {
        let query = sql;
        let found: Vec<i64> = tx.query_map(query, params![file_id, tenant, dir, key], |r| r.get(0))?;
        convs.extend(found.into_iter().filter(|c| seen.insert(*c)));
    }
    let mut completed = 0;
    for conv in convs {
        if is_complete(tx, conv)? {
            make_ready(tx, conv, now, decided)?;
            completed += 1;
        }
    }
    Ok(completed)
}
