//! [`ForwardQueue`]: the forwarding queue and the life of files after forwarding: claim,
//! complete, retry, fail, archive, purge, and recovery at start-up. Used by forwarding, the
//! archiver, housekeeping (purges), intake (a file that left the drop folder) and start-up.
//!
//! Writes `conversations` (`ready -> forwarding -> forwarded`, `failed`, back to `waiting`),
//! `recordings` (keys written, a recording that left), `deliveries`, `files` after forwarding
//! (`leaving`, `archived`, `gone`, `purged`), and `minute_usage` (charged and given back
//! through `allocation.rs`'s helpers). These share one handle because they change in one
//! transaction: a claim charges its minutes (none counted twice, none shared), a failure gives
//! them back, and a completion decides which of its files the archive may take.

use super::sql::{Optional, Row, Sql, params};
use chrono::{DateTime, Utc};

use super::allocation::{Allocations, Verdict, charge, refund};
use super::{Db, Result, Via};

/// The forwarding queue and the files it frees: see the module doc.
#[derive(Clone)]
pub struct ForwardQueue {
    pub(super) db: Db,
    /// The node whose lease a claim takes (see `leases.rs`).
    pub(super) node: std::sync::Arc<super::Node>,
    /// Set by [`ForwardQueue::of`]: the tenant whose conversations and files this handle's
    /// per-conversation calls change.
    pub(super) tenant: Option<String>,
}

/// A conversation claimed for forwarding, with everything the sink needs.
#[derive(Debug, Clone)]
pub struct Work {
    pub id: i64,
    pub tenant: String,
    pub conversation_id: String,
    pub agent: String,
    pub contact_time: DateTime<Utc>,
    /// Every original column, in file order.
    pub fields: serde_json::Map<String, serde_json::Value>,
    pub metadata_file: String,
    pub row_no: i64,
    pub via: Via,
    pub received_at: i64,
    pub attempts: i64,
    pub recordings: Vec<WorkRecording>,
}

#[derive(Debug, Clone)]
pub struct WorkRecording {
    pub position: i64,
    pub file_id: i64,
    /// Inside the tenant's drop folder.
    pub rel_path: String,
    pub name: String,
    pub size: i64,
    pub mtime_ns: i64,
    /// Hashed when the file arrived.
    pub sha256: Option<String>,
    /// Where it is if it already left the drop folder (a conversation sent again because
    /// another of its recordings changed on the FTP server).
    pub archive_path: Option<String>,
    /// Read from its headers at intake.
    pub duration_ms: Option<u64>,
    /// The file recorded at arrival (device, inode): a file of the same name, size and mtime
    /// that replaced it since is another file. `None` for files recorded before migration 9.
    pub file: Option<(u64, u64)>,
}

/// One recording as it was written to the sink.
#[derive(Debug, Clone)]
pub struct Forwarded {
    pub position: i64,
    pub key: String,
    pub bytes: u64,
    pub sha256: String,
}

/// A file claimed for the archive (`leaving`): to move from `rel_path` to `archive_path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToArchive {
    pub file_id: i64,
    pub tenant: String,
    pub rel_path: String,
    pub archive_path: String,
    /// The inode and device recorded at arrival (`None` before migrations 4 and 7): what may
    /// be moved.
    pub ino: Option<u64>,
    pub dev: Option<u64>,
}

/// A file recorded as in a drop folder (present, or leaving for the archive).
#[derive(Debug, Clone)]
pub struct RecordedFile {
    pub file_id: i64,
    pub rel_path: String,
    pub size: u64,
    pub mtime_ns: i64,
    pub ino: Option<u64>,
    pub leaving: bool,
}

/// How a claimed file's move ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// It is at its `archive_path`.
    Archived,
    /// It is no longer in the drop folder, and not in the archive either (deleted, or replaced
    /// by a file of the same name that is not this one).
    Gone,
    /// It could not be moved: it stays, as present (unless a newer file took its name).
    Stayed,
}

/// A file to delete for good: an archived copy, or an orphan left in a drop folder.
#[derive(Debug, Clone)]
pub struct ToPurge {
    pub file_id: i64,
    pub tenant: String,
    /// Absolute for archived files; inside the drop folder for orphans.
    pub path: String,
    pub archived: bool,
    /// The inode and device recorded at arrival (`None` before migrations 4 and 7): what may
    /// be deleted.
    pub ino: Option<u64>,
    pub dev: Option<u64>,
}

/// Present and leaving files of a tenant, each select on its partial index.
pub(super) const RECORDED_FILES: &str =
    "SELECT id, rel_path, size, mtime_ns, ino, 0 FROM files WHERE tenant = ?1 AND state = 'present'
     UNION ALL
     SELECT id, rel_path, size, mtime_ns, ino, 1 FROM files WHERE tenant = ?1 AND state = 'leaving'";

/// Claims for the archive made before ?1 (the few leaving files, through their index).
pub(super) const UNSETTLED: &str = "SELECT id, tenant, rel_path, coalesce(archive_path, ''), ino, dev FROM files WHERE state = 'leaving' AND left_at <= ?1";

/// A conversation this node is forwarding: `forwarding` under its lease, the node's id bound
/// as parameter `node`. No owner: claimed before leases existed.
fn held_here(node: u8) -> String {
    format!("state = 'forwarding' AND (lease_owner IS NULL OR lease_owner = ?{node})")
}

/// States whose files must stay in the drop folder.
pub(super) const OPEN_STATES: &str = "('waiting', 'ready', 'forwarding', 'failed', 'held')";

impl ForwardQueue {
    /// This handle for `tenant`'s conversations only: its outcomes of a forward (`complete`,
    /// `retry_later`, `fail`) and its archive claims take that tenant's writer lock, so on
    /// PostgreSQL those of different tenants run at once (see [`super::db::Db::write_for`]).
    /// Every conversation and file given to them must be `tenant`'s.
    pub fn of(mut self, tenant: &str) -> ForwardQueue {
        self.tenant = Some(tenant.to_owned());
        self
    }

    /// Start-up recovery: a conversation this node left `forwarding` when it stopped (or one
    /// whose node's lease ran out, or one claimed before leases existed) is `ready` again; one
    /// another node is forwarding under a live lease is left to it. The replay overwrites the
    /// same keys. Returns how many were recovered.
    pub fn recover(&self, now: i64) -> Result<usize> {
        self.db.write(|conn| {
            conn.execute(
                "UPDATE conversations SET state = 'ready', next_attempt_at = ?1, changed_at = ?1,
                    lease_owner = NULL, lease_until = NULL
                 WHERE state = 'forwarding' AND (lease_owner IS NULL OR lease_owner = ?2 OR lease_until < ?1)",
                params![now, self.node.id],
            )
        })
    }

    /// Claims up to `limit` due conversations of the tenant whose turn it is after `after`
    /// (`ready -> forwarding`, committed before any byte is sent); returns that tenant, or
    /// `None` if nothing is due. A conversation is not claimed while another send of the same
    /// conversation is being forwarded, so two versions never race for the same keys.
    pub fn claim_turn(
        &self,
        after: &str,
        now: i64,
        limit: usize,
        allocations: &Allocations,
    ) -> Result<Option<(String, Vec<Work>)>> {
        // On PostgreSQL, whose turn it is is read first, and only that tenant's rows are
        // claimed, under its writer lock: other nodes' claims of other tenants, and other
        // tenants' forwards and parses, go on meanwhile. The tenant may have nothing due any
        // more by then (another node claimed it): an empty claim, and the next one starts
        // after that tenant.
        if self.db.is_shared() {
            let Some(tenant) = self.db.read(|c| super::turns::next_due_tenant(c, after, now))? else {
                return Ok(None);
            };
            let work = self
                .db
                .write_for(Some(&tenant), |tx| self.claim_of(tx, &tenant, now, limit, allocations))?;
            return Ok(Some((tenant, work)));
        }
        self.db.write(|tx| {
            let Some(tenant) = super::turns::next_due_tenant(tx, after, now)? else {
                return Ok(None);
            };
            let work = self.claim_of(tx, &tenant, now, limit, allocations)?;
            Ok(Some((tenant, work)))
        })
    }

    /// Claims up to `limit` of `tenant`'s due conversations (see [`ForwardQueue::claim_turn`]).
    fn claim_of(
        &self,
        tx: &dyn Sql,
        tenant: &str,
        now: i64,
        limit: usize,
        allocations: &Allocations,
    ) -> Result<Vec<Work>> {
        let from = tx.pick("conversations c INDEXED BY conv_ready", "conversations c");
        let ids: Vec<i64> = tx.query_map(
            &format!(
                "SELECT c.id FROM {from} WHERE c.state = 'ready' AND c.tenant = ?3 AND c.next_attempt_at <= ?1
                   AND NOT EXISTS (SELECT 1 FROM conversations o WHERE o.tenant = c.tenant
                                   AND o.conversation_id = c.conversation_id AND o.state = 'forwarding')
                 ORDER BY c.next_attempt_at, c.id LIMIT ?2"
            ),
            params![now, limit as i64, tenant],
            |r| r.get(0),
        )?;
        let mut out = Vec::with_capacity(ids.len());
        let mut claimed_keys = std::collections::HashSet::new();
        for id in ids {
            let work = super::turns::load_work(tx, id)?;
            // Two sends of one conversation in the same batch: take the older, leave the other.
            if !claimed_keys.insert((work.tenant.clone(), work.conversation_id.clone())) {
                continue;
            }
            // Counted against its tenant's minutes in this transaction, or held / rejected.
            if let Some(a) = allocations.get(&work.tenant)
                && let Verdict::Stop { state, detail } = charge(tx, id, &work.tenant, a)?
            {
                tx.execute(
                    "UPDATE conversations SET state = ?2, detail = ?3, changed_at = ?4 WHERE id = ?1",
                    params![id, state, detail, now],
                )?;
                continue;
            }
            tx.execute(
                "UPDATE conversations SET state = 'forwarding', attempts = attempts + 1, changed_at = ?2,
                    lease_owner = ?3, lease_until = ?4 WHERE id = ?1",
                params![id, now, self.node.id, now.saturating_add(self.node.lease_ms)],
            )?;
            out.push(Work {
                attempts: work.attempts + 1,
                ..work
            });
        }
        Ok(out)
    }

    /// When the next queued conversation is due, if any.
    pub fn next_due(&self) -> Result<Option<i64>> {
        self.db.read(|conn| {
            conn.query_row(
                "SELECT min(next_attempt_at) FROM conversations WHERE state = 'ready'",
                params![],
                |r| r.get(0),
            )
        })
    }

    /// `forwarding -> forwarded`, committed after the sink wrote everything. Returns the files
    /// that may now leave the drop folder.
    ///
    /// The commit is not synced ([`Db::light`]): the archive's claim of those files, a full
    /// commit that comes after it in the write-ahead log, makes it durable before any file
    /// leaves, so one WAL sync covers a forwarder's whole batch. A power cut before that loses
    /// only the state, and the conversation is forwarded again to the same keys, `metadata.json`
    /// last: a repeated write, never a lost one.
    pub fn complete(
        &self,
        conv: i64,
        recordings: &[Forwarded],
        sink: &str,
        key_prefix: &str,
        started_at: i64,
        now: i64,
    ) -> Result<Vec<i64>> {
        self.db.light_for(self.tenant.as_deref(), |tx| {
            let changed = tx.execute(
                &format!(
                    "UPDATE conversations SET state = 'forwarded', forwarded_at = ?2, changed_at = ?2, detail = NULL,
                        lease_owner = NULL, lease_until = NULL WHERE id = ?1 AND {}",
                    held_here(3)
                ),
                params![conv, now, self.node.id],
            )?;
            if changed != 1 {
                // Its lease ran out and another node took it over (this node stalled for a whole
                // lease): that node forwards it to the same keys and frees its files.
                tracing::warn!(conv, "a forward finished after its lease was taken over: left to the node that took it");
                return Ok(Vec::new());
            }
            for r in recordings {
                tx.execute("UPDATE recordings SET key = ?3, bytes = ?4, sha256 = ?5 WHERE conversation = ?1 AND position = ?2", params![conv, r.position, r.key, r.bytes as i64, r.sha256])?;
            }
            tx.execute("INSERT INTO deliveries (conversation, sink, key_prefix, started_at, finished_at) VALUES (?1, ?2, ?3, ?4, ?5)", params![conv, sink, key_prefix, started_at, now])?;
            files_of(tx, conv)
        })
    }

    /// A transient failure: back to `ready`, due again at `retry_at`.
    pub fn retry_later(&self, conv: i64, error: &str, retry_at: i64, now: i64) -> Result<()> {
        self.db.write_for(self.tenant.as_deref(), |conn| {
            conn.execute(
                &format!(
                    "UPDATE conversations SET state = 'ready', next_attempt_at = ?3, detail = ?2, changed_at = ?4,
                        lease_owner = NULL, lease_until = NULL WHERE id = ?1 AND {}",
                    held_here(5)
                ),
                params![conv, error, retry_at, now, self.node.id],
            )?;
            Ok(())
        })
    }

    /// A permanent failure: `failed`, until `dropsync retry`.
    pub fn fail(&self, conv: i64, error: &str, now: i64) -> Result<()> {
        self.db.write_for(self.tenant.as_deref(), |tx| {
            let failed = tx.execute(
                &format!(
                    "UPDATE conversations SET state = 'failed', detail = ?2, changed_at = ?3,
                            lease_owner = NULL, lease_until = NULL WHERE id = ?1 AND {}",
                    held_here(4)
                ),
                params![conv, error, now, self.node.id],
            )?;
            // Minutes are for what went out: a retry is charged again.
            if failed > 0 {
                refund(&tx, conv)?;
            }
            Ok(())
        })
    }

    /// A recording disappeared from the drop folder (deleted, or replaced while we read it):
    /// the file is gone, and the conversation waits for it again.
    pub fn recording_vanished(&self, conv: i64, file_id: i64, why: &str, now: i64, grace_ms: i64) -> Result<()> {
        self.db.write(|tx| {
            mark_gone(&tx, file_id, now)?;
            tx.execute("UPDATE conversations SET state = 'waiting', detail = ?2, deadline = CASE WHEN deadline > ?3 THEN deadline ELSE ?3 END, changed_at = ?4
                 WHERE id = ?1 AND state = 'forwarding'", params![conv, why, now.saturating_add(grace_ms), now])?;
            Ok(())
        })
    }

    /// Files that vanished from the drop folders behind our back (seen by a scan).
    pub fn files_gone(&self, file_ids: &[i64], now: i64) -> Result<()> {
        self.db.write(|tx| {
            for id in file_ids {
                mark_gone(&tx, *id, now)?;
            }
            Ok(())
        })
    }

    /// A path found missing when it was looked for: if it is recorded as present, it is gone.
    pub fn path_gone(&self, tenant: &str, rel: &crate::dropbox::RelPath, now: i64) -> Result<()> {
        self.db.write(|tx| {
            let id: Option<i64> = tx
                .query_row(
                    "SELECT id FROM files WHERE tenant = ?1 AND rel_path = ?2 AND state = 'present'",
                    params![tenant, rel.as_str()],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(id) = id {
                mark_gone(&tx, id, now)?;
            }
            Ok(())
        })
    }

    /// Files of a tenant recorded as in its drop folder, for reconciliation: present ones and
    /// ones leaving for the archive (whose record the archiver settles, not the scan).
    pub fn recorded_files(&self, tenant: &str) -> Result<Vec<RecordedFile>> {
        self.db.read(|conn| {
            let query = RECORDED_FILES;
            let rows = conn.query_map(query, params![tenant], |r| {
                Ok(RecordedFile {
                    file_id: r.get(0)?,
                    rel_path: r.get(1)?,
                    size: r.get::<_, i64>(2)? as u64,
                    mtime_ns: r.get(3)?,
                    ino: r.get::<_, Option<i64>>(4)?.map(|i| i as u64),
                    leaving: r.get::<_, i64>(5)? == 1,
                })
            })?;
            Ok(rows)
        })
    }

    /// Every present file of a tenant that may be ready to leave its drop folder (the
    /// reconciliation pass): candidates for [`ForwardQueue::claim_for_archive`].
    pub fn archive_candidates(&self, tenant: &str) -> Result<Vec<i64>> {
        self.db.read(|conn| {
            let ids = conn.query_map(
                "SELECT id FROM files WHERE tenant = ?1 AND state = 'present'
                   AND (kind != 'recording' OR EXISTS (SELECT 1 FROM recordings r WHERE r.file_id = files.id))",
                params![tenant],
                |r| r.get(0),
            )?;
            Ok(ids)
        })
    }

    /// Claims those of `file_ids` that no open conversation needs any more: they become
    /// `leaving`, bound for `plan(tenant, file id, rel_path)`, in one transaction. Checked and
    /// claimed together, so an arrival under the same name meanwhile is a new file of its own.
    pub fn claim_for_archive(
        &self,
        file_ids: &[i64],
        now: i64,
        plan: &dyn Fn(&str, i64, &str) -> String,
    ) -> Result<Vec<ToArchive>> {
        if file_ids.is_empty() {
            return Ok(Vec::new());
        }
        self.db.write_for(self.tenant.as_deref(), |tx| {
            let mut out = archivable(&tx, file_ids)?;
            if let Some(t) = &self.tenant
                && let Some(other) = out.iter().find(|item| item.tenant != *t)
            {
                return Err(super::CatalogError::WrongTenant(
                    format!("file {}", other.file_id),
                    t.clone(),
                ));
            }
            for item in &mut out {
                item.archive_path = plan(&item.tenant, item.file_id, &item.rel_path);
                tx.execute(
                    "UPDATE files SET state = 'leaving', archive_path = ?2, left_at = ?3 WHERE id = ?1",
                    params![item.file_id, item.archive_path, now],
                )?;
            }
            Ok(out)
        })
    }

    /// Records how the moves of claimed files ended, one transaction, not synced: a power cut
    /// that loses it leaves the claims `leaving`, which start-up settles by looking where each
    /// file is.
    pub fn settle_departures(&self, ended: &[(i64, Departure)], now: i64) -> Result<()> {
        if ended.is_empty() {
            return Ok(());
        }
        self.db.light_for(self.tenant.as_deref(), |tx| {
            for (file_id, how) in ended {
                match how {
                    Departure::Archived => {
                        tx.execute("UPDATE files SET state = 'archived', left_at = ?2 WHERE id = ?1 AND state = 'leaving'", params![file_id, now])?;
                    }
                    Departure::Gone => {
                        tx.execute("UPDATE files SET state = 'gone', archive_path = NULL, left_at = ?2 WHERE id = ?1 AND state = 'leaving'", params![file_id, now])?;
                    }
                    Departure::Stayed => {
                        // Present again, unless a newer file holds its name by now.
                        tx.execute("UPDATE files SET state = 'gone', archive_path = NULL, left_at = ?2 WHERE id = ?1 AND state = 'leaving'
                               AND EXISTS (SELECT 1 FROM files n WHERE n.tenant = files.tenant AND n.rel_path = files.rel_path
                                             AND n.state = 'present')", params![file_id, now])?;
                        tx.execute("UPDATE files SET state = 'present', archive_path = NULL, left_at = NULL WHERE id = ?1 AND state = 'leaving'", params![file_id])?;
                    }
                }
            }
            Ok(())
        })
    }

    /// Files claimed for the archive at or before `before` whose move was never settled (a
    /// crash, or a catalog error after the move).
    pub fn unsettled_departures(&self, before: i64) -> Result<Vec<ToArchive>> {
        self.db.read(|conn| {
            let query = UNSETTLED;
            let rows = conn.query_map(query, params![before], to_archive)?;
            Ok(rows)
        })
    }

    /// Archived copies older than their tenant's retention, and orphans unclaimed for as long:
    /// `keep_ms` for tenants `keep_for` does not name (tenant, ms).
    pub fn purgeable(&self, now: i64, keep_ms: i64, keep_for: &[(&str, i64)], limit: usize) -> Result<Vec<ToPurge>> {
        let shortest = keep_for.iter().map(|(_, ms)| *ms).fold(keep_ms, i64::min);
        let keep_for: serde_json::Map<String, serde_json::Value> =
            keep_for.iter().map(|(t, ms)| ((*t).to_owned(), (*ms).into())).collect();
        self.db.read(|conn| {
            // The shortest retention first (an index range), then each tenant's own.
            let keep = conn.pick(
                "SELECT key, value FROM json_each(?4)",
                "SELECT key, value::bigint FROM json_each_text(?4::json)",
            );
            let query = &format!(
                "WITH keep(tenant, ms) AS ({keep})
             SELECT id, f.tenant, archive_path, 1, ino, dev FROM files f LEFT JOIN keep k ON k.tenant = f.tenant
              WHERE state = 'archived' AND left_at <= ?1 - ?5 AND left_at <= ?1 - coalesce(k.ms, ?2)
             UNION ALL
             SELECT id, f.tenant, rel_path, 0, ino, dev FROM files f LEFT JOIN keep k ON k.tenant = f.tenant
              WHERE state = 'present' AND orphan_since IS NOT NULL AND orphan_since <= ?1 - ?5
                AND orphan_since <= ?1 - coalesce(k.ms, ?2)
             LIMIT ?3"
            );
            let keep_for = serde_json::Value::Object(keep_for).to_string();
            let rows = conn.query_map(query, params![now, keep_ms, limit as i64, keep_for, shortest], |r| {
                Ok(ToPurge {
                    file_id: r.get(0)?,
                    tenant: r.get(1)?,
                    path: r.get(2)?,
                    archived: r.get::<_, i64>(3)? == 1,
                    ino: r.get::<_, Option<i64>>(4)?.map(|i| i as u64),
                    dev: r.get::<_, Option<i64>>(5)?.map(|d| d as u64),
                })
            })?;
            Ok(rows)
        })
    }

    /// Records the local copies `file_ids` as deleted, in one transaction (one fsync, not one
    /// per file).
    pub fn mark_purged(&self, file_ids: &[i64], now: i64) -> Result<()> {
        if file_ids.is_empty() {
            return Ok(());
        }
        self.db.write(|tx| {
            {
                let query = "UPDATE files SET state = 'purged', left_at = coalesce(left_at, ?2) WHERE id = ?1";
                for id in file_ids {
                    tx.execute(query, params![id, now])?;
                }
            }
            Ok(())
        })
    }
}

/// The files a conversation used: its recordings and its metadata file.
pub(super) fn files_of(tx: &dyn Sql, conv: i64) -> Result<Vec<i64>> {
    tx
        .query_map("SELECT file_id FROM recordings WHERE conversation = ?1 AND file_id IS NOT NULL
             UNION SELECT m.file_id FROM metadata_files m JOIN conversations c ON c.metadata_file_id = m.id WHERE c.id = ?1", params![conv], |r| r.get(0))
}

fn mark_gone(tx: &dyn Sql, file_id: i64, now: i64) -> Result<()> {
    tx.execute(
        "UPDATE files SET state = 'gone', left_at = ?2 WHERE id = ?1 AND state = 'present'",
        params![file_id, now],
    )?;
    // Conversations that counted on it wait for it again; finished ones keep their record.
    tx.execute(
        "UPDATE conversations SET state = 'waiting', changed_at = ?2 WHERE state = 'ready'
           AND id IN (SELECT conversation FROM recordings WHERE file_id = ?1)",
        params![file_id, now],
    )?;
    tx.execute(
        "UPDATE recordings SET file_id = NULL WHERE file_id = ?1
           AND EXISTS (SELECT 1 FROM conversations c WHERE c.id = recordings.conversation
                       AND c.state IN ('waiting', 'expired', 'forwarding'))",
        params![file_id],
    )?;
    Ok(())
}

/// Of `candidates`, the present files no open conversation needs any more: recordings that a
/// forwarded conversation used, and metadata, zip and unknown files whose rows are all decided.
fn archivable(tx: &dyn Sql, candidates: &[i64]) -> Result<Vec<ToArchive>> {
    let mut out = Vec::new();
    // The subqueries name the file by ?1, not by `f.id`: uncorrelated, each is one index
    // lookup. (Correlated inside the OR, PostgreSQL's generic plan hashed them: a scan of
    // recordings and conversations per file.)
    let query = &format!(
        "SELECT f.id, f.tenant, f.rel_path, '', f.ino, f.dev FROM files f WHERE f.id = ?1 AND f.state = 'present' AND (
           (f.kind = 'recording'
              AND EXISTS (SELECT 1 FROM recordings r JOIN conversations c ON c.id = r.conversation
                          WHERE r.file_id = ?1 AND c.state = 'forwarded')
              AND NOT EXISTS (SELECT 1 FROM recordings r JOIN conversations c ON c.id = r.conversation
                              WHERE r.file_id = ?1 AND c.state IN {OPEN_STATES}))
           OR (f.kind != 'recording'
              AND EXISTS (SELECT 1 FROM metadata_files m WHERE m.file_id = ?1 AND m.status IN ('parsed', 'rejected')
                          AND NOT EXISTS (SELECT 1 FROM conversations c WHERE c.metadata_file_id = m.id AND c.state IN {OPEN_STATES}))))"
    );
    for id in candidates {
        if let Some(a) = tx.query_row(query, params![id], to_archive).optional()? {
            out.push(a);
        }
    }
    Ok(out)
}

fn to_archive(r: &Row) -> Result<ToArchive> {
    Ok(ToArchive {
        file_id: r.get(0)?,
        tenant: r.get(1)?,
        rel_path: r.get(2)?,
        archive_path: r.get(3)?,
        ino: r.get::<_, Option<i64>>(4)?.map(|i| i as u64),
        dev: r.get::<_, Option<i64>>(5)?.map(|d| d as u64),
    })
}
