//! [`IntakeQueue`]: intake work items. Every arrival, settling file and rescan is recorded here
//! before it is processed, and removed only once it has been (SPEC §8 "one failure stays one
//! failure"). Used by intake's lanes and scans, and by forwarding (a recording that changed).
//!
//! Writes `intake_queue`, and marks a metadata file `failed` (or back to `parsing` on retry) in
//! `metadata_files` in the same transaction as the item that failed, so a report never shows
//! a failure the queue does not hold.
//!
//! # Crash ordering
//! Queue changes are committed without an fsync of their own ([`Db::light`](super::Db::light)): losing one
//! to a power cut only loses a hint, because the start-up scan of every drop folder finds the
//! file again, and processing an item twice is a no-op (a file already recorded with the same
//! size and mtime is a duplicate). The durable records that matter (files, rows,
//! conversations) keep their own full commits.

use super::sql::{Optional, Sql, params};

use super::{Db, Result, Via};

/// The intake work items: see the module doc.
#[derive(Clone)]
pub struct IntakeQueue {
    pub(super) db: Db,
}

/// What an intake work item asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntakeKind {
    /// A file whose writer is done: record it and follow it up.
    File,
    /// A file found without an event: it arrives once its size and mtime stop changing.
    Settle,
    /// Reconcile a tenant's folder (or one sub-folder) with the catalog.
    Scan,
}

impl IntakeKind {
    fn as_str(self) -> &'static str {
        match self {
            IntakeKind::File => "file",
            IntakeKind::Settle => "settle",
            IntakeKind::Scan => "scan",
        }
    }
    fn parse(s: &str) -> IntakeKind {
        match s {
            "settle" => IntakeKind::Settle,
            "scan" => IntakeKind::Scan,
            _ => IntakeKind::File,
        }
    }
}

/// A work item to record.
#[derive(Debug, Clone)]
pub struct NewIntake {
    pub tenant: String,
    pub kind: IntakeKind,
    /// Inside the tenant's folder; "" for a scan of all of it.
    pub rel_path: String,
    pub via: Via,
    /// Parsed or unpacked (metadata, zips) or a scan: taken alone, one per tenant at a time.
    pub heavy: bool,
    /// For `Settle`: the size and mtime last seen. For `File`: what `sha256` belongs to.
    pub size: Option<u64>,
    pub mtime_ns: Option<i64>,
    pub sha256: Option<String>,
    pub due: i64,
}

/// The order a tenant's items are taken in: scans, then light items together, then heavy ones.
const RANK_SCAN: i64 = 0;
const RANK_LIGHT: i64 = 1;
const RANK_HEAVY: i64 = 2;

impl NewIntake {
    fn rank(&self) -> i64 {
        match (self.kind, self.heavy) {
            (IntakeKind::Scan, _) => RANK_SCAN,
            (_, false) => RANK_LIGHT,
            (_, true) => RANK_HEAVY,
        }
    }

    /// A file to take in (parsed or unpacked if `heavy`).
    pub fn file(tenant: &str, rel_path: &str, via: Via, heavy: bool, due: i64) -> NewIntake {
        NewIntake {
            tenant: tenant.to_owned(),
            kind: IntakeKind::File,
            rel_path: rel_path.to_owned(),
            via,
            heavy,
            size: None,
            mtime_ns: None,
            sha256: None,
            due,
        }
    }

    /// The file's digest, taken by its writer, goes with the item: intake need not read it
    /// again while the file is as it was.
    pub fn known(&mut self, digest: Option<&crate::arrival::KnownDigest>) {
        if let Some(d) = digest {
            self.size = Some(d.size);
            self.mtime_ns = Some(d.mtime_ns);
            self.sha256 = Some(hex::encode(d.sha256));
        }
    }

    /// A scan of a tenant's folder ("") or of one sub-folder.
    pub fn scan(tenant: &str, rel_path: String, due: i64) -> NewIntake {
        NewIntake {
            tenant: tenant.to_owned(),
            kind: IntakeKind::Scan,
            rel_path,
            via: Via::Local,
            heavy: true,
            size: None,
            mtime_ns: None,
            sha256: None,
            due,
        }
    }
}

/// A work item taken by an intake lane.
#[derive(Debug, Clone)]
pub struct IntakeItem {
    pub id: i64,
    /// Compared when the item is finished: a new event meanwhile keeps the item queued.
    pub version: i64,
    pub tenant: String,
    pub kind: IntakeKind,
    pub rel_path: String,
    pub via: Via,
    pub size: Option<u64>,
    pub mtime_ns: Option<i64>,
    pub sha256: Option<String>,
    pub attempts: i64,
}

/// How processing an item ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntakeOutcome {
    Done,
    /// Failed: tried again at `at` (unix ms), with the error kept for `status`.
    Retry {
        error: String,
        at: i64,
    },
    /// Failed for good (`max_attempts` reached, or an error no retry can mend): kept, not
    /// due, until `dropsync retry`; a metadata file's report says why.
    Failed {
        error: String,
        at: i64,
    },
    /// Still changing: checked again at `at` against this size and mtime.
    Settling {
        size: u64,
        mtime_ns: i64,
        at: i64,
    },
}

/// The `next_attempt_at` of a failed item: after any due time a scan asks about.
const NEVER: i64 = i64::MAX;

impl IntakeQueue {
    /// `dropsync retry`: failed intake items are due again, with their attempts forgotten, and
    /// a metadata file they left half-parsed resumes where it stopped. Returns how many.
    pub(super) fn retry_failed_intake(tx: &dyn Sql, tenant: Option<&str>, now: i64) -> Result<usize> {
        tx.execute(
            "UPDATE metadata_files SET status = 'parsing', reason = NULL, report_stale = report_stale + 1
             WHERE status = 'failed' AND (?1 IS NULL OR tenant = ?1)",
            params![tenant],
        )?;
        tx.execute(
            "UPDATE intake_queue SET failed_at = NULL, attempts = 0, next_attempt_at = ?2
                 WHERE failed_at IS NOT NULL AND (?1 IS NULL OR tenant = ?1)",
            params![tenant, now],
        )
    }

    /// Records work items. A new event for an item already queued makes it due at once and
    /// bumps its version (so a lane processing the older event leaves it queued).
    pub fn enqueue_intake(&self, items: &[NewIntake], now: i64) -> Result<()> {
        self.db.light(|tx| {
            let query = "INSERT INTO intake_queue (tenant, kind, rel_path, via, rank, size, mtime_ns, sha256, enqueued_at, next_attempt_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (tenant, kind, rel_path) DO UPDATE SET
                    via = CASE WHEN excluded.via = 'local' THEN intake_queue.via ELSE excluded.via END,
                    size = coalesce(excluded.size, intake_queue.size),
                    mtime_ns = coalesce(excluded.mtime_ns, intake_queue.mtime_ns),
                    sha256 = CASE WHEN excluded.size IS NOT NULL THEN excluded.sha256 ELSE intake_queue.sha256 END,
                    version = intake_queue.version + 1,
                    -- A file failed for good and sent again gets a fresh set of attempts.
                    attempts = CASE WHEN intake_queue.failed_at IS NULL THEN intake_queue.attempts ELSE 0 END,
                    failed_at = NULL,
                    next_attempt_at = CASE WHEN excluded.next_attempt_at < intake_queue.next_attempt_at
                        THEN excluded.next_attempt_at ELSE intake_queue.next_attempt_at END";
            for i in items {
                tx.execute(query, params![
                    i.tenant,
                    i.kind.as_str(),
                    i.rel_path,
                    i.via.as_str(),
                    i.rank(),
                    i.size.map(|s| s as i64),
                    i.mtime_ns,
                    i.sha256,
                    now,
                    i.due
                ])?;
            }
            Ok(())
        })
    }

    /// The first tenant after `after` (in id order) with work due now: one index seek per
    /// tenant passed over, however long the queue.
    pub fn next_intake_tenant(&self, after: &str, now: i64) -> Result<Option<String>> {
        self.db.read(|conn| {
            conn.query_row(
                "SELECT tenant FROM intake_queue WHERE tenant > ?1 AND next_attempt_at <= ?2 ORDER BY tenant LIMIT 1",
                params![after, now],
                |r| r.get(0),
            )
            .optional()
        })
    }

    /// When the next intake item falls due, if any is queued.
    pub fn next_intake_due(&self) -> Result<Option<i64>> {
        self.db
            .read(|conn| conn.query_row("SELECT min(next_attempt_at) FROM intake_queue", params![], |r| r.get(0)))
    }

    /// Takes one unit of a tenant's due work: a scan or a heavy item alone, or up to `limit`
    /// light items. Scans come first, then light items (recordings before the metadata that
    /// names them is the fast path), then heavy ones, each in due order.
    pub fn claim_intake(&self, tenant: &str, now: i64, limit: usize) -> Result<Vec<IntakeItem>> {
        self.db.read(|conn| {
            let query =
                "SELECT id, version, kind, rel_path, via, size, mtime_ns, sha256, attempts, rank FROM intake_queue
             WHERE tenant = ?1 AND next_attempt_at <= ?2
             ORDER BY rank, next_attempt_at, id LIMIT ?3";
            let mut out = Vec::new();
            let rows = conn.query_map(query, params![tenant, now, limit as i64], |r| {
                Ok((
                    IntakeItem {
                        id: r.get(0)?,
                        version: r.get(1)?,
                        tenant: tenant.to_owned(),
                        kind: IntakeKind::parse(&r.get::<_, String>(2)?),
                        rel_path: r.get(3)?,
                        via: Via::parse(&r.get::<_, String>(4)?),
                        size: r.get::<_, Option<i64>>(5)?.map(|s| s as u64),
                        mtime_ns: r.get(6)?,
                        sha256: r.get(7)?,
                        attempts: r.get(8)?,
                    },
                    r.get::<_, i64>(9)?,
                ))
            })?;
            for row in rows {
                let (item, rank) = row;
                let alone = rank != RANK_LIGHT;
                if alone && !out.is_empty() {
                    break;
                }
                out.push(item);
                if alone {
                    break;
                }
            }
            Ok(out)
        })
    }

    /// Records how the items of one unit ended: done ones leave the queue (unless a newer
    /// event came meanwhile), failed ones wait for their retry.
    pub fn finish_intake(&self, outcomes: &[(IntakeItem, IntakeOutcome)]) -> Result<()> {
        self.db.light(|tx| {
            for (item, outcome) in outcomes {
                match outcome {
                    IntakeOutcome::Done => {
                        tx.execute("DELETE FROM intake_queue WHERE id = ?1 AND version = ?2", params![item.id, item.version])?;
                    }
                    IntakeOutcome::Retry { error, at } => {
                        tx.execute("UPDATE intake_queue SET attempts = attempts + 1, last_error = ?2,
                                next_attempt_at = CASE WHEN version = ?4 THEN ?3 ELSE next_attempt_at END
                             WHERE id = ?1", params![item.id, error, at, item.version])?;
                    }
                    IntakeOutcome::Failed { error, at } => {
                        // A newer event (the file sent again) gets a fresh try instead.
                        let failed = tx
                            .execute("UPDATE intake_queue SET attempts = attempts + 1, last_error = ?2, failed_at = ?3,
                                    next_attempt_at = ?4 WHERE id = ?1 AND version = ?5", params![item.id, error, at, NEVER, item.version])?;
                        if failed > 0 {
                            tx.execute("UPDATE metadata_files SET status = 'failed', reason = ?3, report_stale = report_stale + 1
                                 WHERE status = 'parsing' AND file_id IN
                                    (SELECT id FROM files WHERE tenant = ?1 AND rel_path = ?2 AND state = 'present')", params![item.tenant, item.rel_path, error])?;
                        } else {
                            tx.execute("UPDATE intake_queue SET attempts = attempts + 1, last_error = ?2 WHERE id = ?1", params![item.id, error])?;
                        }
                    }
                    IntakeOutcome::Settling { size, mtime_ns, at } => {
                        tx.execute("UPDATE intake_queue SET size = ?2, mtime_ns = ?3, next_attempt_at = ?4 WHERE id = ?1 AND version = ?5", params![item.id, *size as i64, mtime_ns, at, item.version])?;
                    }
                }
            }
            Ok(())
        })
    }
}
