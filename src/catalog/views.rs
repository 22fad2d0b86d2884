//! [`Reports`]: read models for the CLI and the reports, and the one operator action: retry.
//! Used by the report writer, the CLI (`status`, `conversations`, `retry`) and `/metrics`.
//!
//! Writes the "written as of" marks of reports (`metadata_files.report_stale`,
//! `tenant_reports`); the triggers of `schema.rs` set them stale in the transaction of the
//! change. `retry` also moves `failed` conversations back to `ready`, `expired` ones back to
//! `waiting`, and failed intake items back into [`IntakeQueue`](super::IntakeQueue): one
//! transaction, so `dropsync retry` re-queues all it names or nothing.

use std::collections::BTreeMap;

use super::sql::{Row, params};
use serde::Serialize;

use super::{ConvState, Db, Result};

/// Reports, the CLI's views and its retry: see the module doc.
#[derive(Clone)]
pub struct Reports {
    pub(super) db: Db,
}

/// One line of `<metadata file>.report.csv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportLine {
    pub row: Option<i64>,
    pub conversation_id: String,
    pub recording: String,
    /// forwarded, updated, waiting, rejected, expired, failed
    pub status: &'static str,
    pub detail: String,
}

/// A report that must be rewritten.
#[derive(Debug, Clone)]
pub struct StaleReport {
    pub metadata_file_id: i64,
    /// The change counter read with it; see [`Reports::report_written`].
    pub version: i64,
    pub tenant: String,
    pub rel_path: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrphanLine {
    pub recording: String,
    pub bytes: i64,
    pub received_at: i64,
    pub orphan_since: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConversationView {
    pub tenant: String,
    pub conversation_id: Option<String>,
    pub state: String,
    pub updated: bool,
    pub metadata_file: String,
    pub row: i64,
    pub recordings: Option<String>,
    pub contact_time: Option<String>,
    pub attempts: i64,
    pub detail: Option<String>,
    pub received_at: String,
    pub forwarded_at: Option<String>,
    /// Its longest recording, once they are all in.
    pub duration_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct TenantStatus {
    pub states: BTreeMap<String, i64>,
    pub orphans: i64,
    pub files_waiting: i64,
    /// Arrivals, settling files and rescans not yet taken in.
    pub intake_queued: i64,
    /// Of those, the ones that failed at least once and wait for a retry; the latest error.
    pub intake_retrying: i64,
    /// Arrivals that failed for good (`max_attempts`, or an error no retry mends), until
    /// `dropsync retry`.
    pub intake_failed: i64,
    pub intake_last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct StatusView {
    pub tenants: BTreeMap<String, TenantStatus>,
    pub recent_failures: Vec<ConversationView>,
    /// FTP sources polled so far (the CLI keeps those still configured).
    pub ftp_sources: Vec<super::FtpSourceStatus>,
    /// Minutes forwarded this month and allocated, per configured tenant (filled by the CLI).
    pub minutes: BTreeMap<String, super::MinutesStatus>,
    /// The nodes that share the catalog, with their last heartbeat (one, on SQLite).
    pub nodes: Vec<super::NodeStatus>,
}

/// Report status as tenants see it (SPEC §3).
fn report_status(state: &str, updated: bool) -> &'static str {
    match state {
        "forwarded" if updated => "updated",
        "forwarded" => "forwarded",
        "rejected" => "rejected",
        "expired" => "expired",
        "failed" => "failed",
        "held" => "held",
        _ => "waiting",
    }
}

pub(super) fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

const VIEW_COLUMNS: &str =
    "c.tenant, c.conversation_id, c.state, c.updated, m.rel_path, c.row_no, c.recording_text, c.contact_time,
     c.attempts, c.detail, c.received_at, c.forwarded_at,
     (SELECT max(f.duration_ms) FROM recordings r JOIN files f ON f.id = r.file_id WHERE r.conversation = c.id)";

fn view_from_row(r: &Row) -> Result<ConversationView> {
    Ok(ConversationView {
        tenant: r.get(0)?,
        conversation_id: r.get(1)?,
        state: r.get(2)?,
        updated: r.get(3)?,
        metadata_file: r.get(4)?,
        row: r.get(5)?,
        recordings: r.get(6)?,
        contact_time: r.get(7)?,
        attempts: r.get(8)?,
        detail: r.get(9)?,
        received_at: iso(r.get(10)?),
        forwarded_at: r.get::<_, Option<i64>>(11)?.map(iso),
        duration_ms: r.get(12)?,
    })
}

impl Reports {
    /// Reports flagged as out of date, after `after_id` (a pass goes through them all, even
    /// when some fail).
    pub fn stale_reports(&self, after_id: i64, limit: usize) -> Result<Vec<StaleReport>> {
        self.db.read(|conn| {
            let query = "SELECT id, report_stale, tenant, rel_path FROM metadata_files WHERE report_stale > 0 AND id > ?1 ORDER BY id LIMIT ?2";
            let rows = conn.query_map(query, params![after_id, limit as i64], |r| {
                Ok(StaleReport {
                    metadata_file_id: r.get(0)?,
                    version: r.get(1)?,
                    tenant: r.get(2)?,
                    rel_path: r.get(3)?,
                })
        })?;
        Ok(rows)
        })
    }

    /// The lines of one report, collected (tests, small reports).
    pub fn report_lines(&self, metadata_file_id: i64) -> Result<Vec<ReportLine>> {
        let mut lines = Vec::new();
        self.each_report_line(metadata_file_id, |l| lines.push(l))?;
        Ok(lines)
    }

    /// Streams the lines of one report to `f`, so a million-row report is never in memory.
    pub fn each_report_line(&self, metadata_file_id: i64, mut f: impl FnMut(ReportLine)) -> Result<()> {
        self.db.read(|conn| {
            let (status, reason): (String, Option<String>) = conn.query_row(
                "SELECT status, reason FROM metadata_files WHERE id = ?1",
                params![metadata_file_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            match status.as_str() {
                "rejected" => {
                    f(ReportLine {
                        row: None,
                        conversation_id: String::new(),
                        recording: String::new(),
                        status: "rejected",
                        detail: reason.unwrap_or_default(),
                    });
                    return Ok(());
                }
                // Failed part-way: the rows committed before the failure follow.
                "failed" => f(ReportLine {
                    row: None,
                    conversation_id: String::new(),
                    recording: String::new(),
                    status: "failed",
                    detail: reason.unwrap_or_default(),
                }),
                _ => {}
            }
            let query = "SELECT line, name, reason FROM refusals WHERE metadata_file_id = ?1 ORDER BY line";
            conn.for_each(query, params![metadata_file_id], |r| {
                f(ReportLine {
                    row: Some(r.get(0)?),
                    conversation_id: String::new(),
                    recording: r.get(1)?,
                    status: "rejected",
                    detail: r.get(2)?,
                });
                Ok(())
            })?;
            let query = "SELECT row_no, conversation_id, recording_text, state, updated, detail FROM conversations
             WHERE metadata_file_id = ?1 ORDER BY row_no";
            conn.for_each(query, params![metadata_file_id], |r| {
                f(ReportLine {
                    row: Some(r.get(0)?),
                    conversation_id: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                    recording: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                    status: report_status(&r.get::<_, String>(3)?, r.get(4)?),
                    detail: r.get::<_, Option<String>>(5)?.unwrap_or_default(),
                });
                Ok(())
            })?;
            Ok(())
        })
    }

    /// Marks a report written as of `version`; a change since then keeps it stale.
    pub fn report_written(&self, metadata_file_id: i64, version: i64) -> Result<()> {
        self.db.write_statement(|conn| {
            conn.execute(
                "UPDATE metadata_files SET report_stale = 0 WHERE id = ?1 AND report_stale = ?2",
                params![metadata_file_id, version],
            )?;
            Ok(())
        })
    }

    /// Tenants whose orphans.csv must be rewritten, with their change counter.
    pub fn stale_orphan_reports(&self) -> Result<Vec<(String, i64)>> {
        self.db.read(|conn| {
            let query = "SELECT tenant, orphans_stale FROM tenant_reports WHERE orphans_stale > 0";
            let rows = conn.query_map(query, params![], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows)
        })
    }

    pub fn orphan_lines(&self, tenant: &str) -> Result<Vec<OrphanLine>> {
        self.db.read(|conn| {
            let query = "SELECT rel_path, size, arrived_at, orphan_since FROM files
             WHERE tenant = ?1 AND state = 'present' AND orphan_since IS NOT NULL ORDER BY rel_path";
            let rows = conn.query_map(query, params![tenant], |r| {
                Ok(OrphanLine {
                    recording: r.get(0)?,
                    bytes: r.get(1)?,
                    received_at: r.get(2)?,
                    orphan_since: r.get(3)?,
                })
            })?;
            Ok(rows)
        })
    }

    pub fn orphan_report_written(&self, tenant: &str, version: i64) -> Result<()> {
        self.db.write(|conn| {
            conn.execute(
                "UPDATE tenant_reports SET orphans_stale = 0 WHERE tenant = ?1 AND orphans_stale = ?2",
                params![tenant, version],
            )?;
            Ok(())
        })
    }

    /// The latest send of each conversation, filtered.
    pub fn conversations(
        &self,
        tenant: Option<&str>,
        state: Option<ConvState>,
        limit: usize,
    ) -> Result<Vec<ConversationView>> {
        self.db.read(|conn| {
            let query = &format!(
                "SELECT {VIEW_COLUMNS} FROM conversations c JOIN metadata_files m ON m.id = c.metadata_file_id
             WHERE (?1 IS NULL OR c.tenant = ?1) AND (?2 IS NULL OR c.state = ?2)
             ORDER BY c.tenant, c.id DESC LIMIT ?3"
            );
            let rows = conn.query_map(
                query,
                params![tenant, state.map(ConvState::as_str), limit as i64],
                view_from_row,
            )?;
            Ok(rows)
        })
    }

    pub fn status(&self, tenant: Option<&str>) -> Result<StatusView> {
        let mut view = StatusView::default();
        {
            self.db.read(|conn| {
                // Counted by triggers (migration 8): a few rows, however long the history.
                let counts = if super::has_table(&conn, "conversation_counts")? {
                    "SELECT tenant, state, n FROM conversation_counts WHERE n > 0 AND (?1 IS NULL OR tenant = ?1)"
                } else {
                    "SELECT tenant, state, count(*) FROM conversations WHERE (?1 IS NULL OR tenant = ?1) GROUP BY tenant, state"
                };
                let query = counts;
                for r in conn.query_map(query, params![tenant], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
                })? {
                    let (t, s, n) = r;
                    view.tenants.entry(t).or_default().states.insert(s, n);
                }
                let query = "SELECT tenant, count(orphan_since), count(*) FROM files
                     WHERE state = 'present' AND (?1 IS NULL OR tenant = ?1) GROUP BY tenant";
                for r in conn.query_map(query, params![tenant], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                })? {
                    let (t, orphans, present) = r;
                    let entry = view.tenants.entry(t).or_default();
                    entry.orphans = orphans;
                    entry.files_waiting = present;
                }
                let query = "SELECT tenant, count(*) FILTER (WHERE failed_at IS NULL),
                            count(*) FILTER (WHERE attempts > 0 AND failed_at IS NULL),
                            count(*) FILTER (WHERE failed_at IS NOT NULL),
                            (SELECT q.rel_path || ': ' || q.last_error FROM intake_queue q
                             WHERE q.tenant = i.tenant AND q.attempts > 0 ORDER BY q.next_attempt_at DESC LIMIT 1)
                     FROM intake_queue i WHERE (?1 IS NULL OR tenant = ?1) GROUP BY tenant";
                for r in conn.query_map(query, params![tenant], |r| {
                    Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })? {
                    let (t, queued, retrying, failed, last_error) = r;
                    let entry = view.tenants.entry(t).or_default();
                    entry.intake_queued = queued;
                    entry.intake_retrying = retrying;
                    entry.intake_failed = failed;
                    entry.intake_last_error = last_error;
                }
                // SQLite's CROSS JOIN keeps this join order; PostgreSQL's planner finds it alone.
                let join = conn.pick("CROSS JOIN", "JOIN");
                let query = &format!(
                    // Each state from its index, then joined: with an OR the planner walked every
                    // conversation ever recorded (1.8 s at a million).
                    "SELECT {VIEW_COLUMNS} FROM (
                        SELECT id FROM conversations WHERE state = 'failed' AND (?1 IS NULL OR tenant = ?1)
                        UNION ALL
                        SELECT id FROM conversations WHERE state = 'ready' AND attempts > 0 AND (?1 IS NULL OR tenant = ?1)
                     ) f {join} conversations c ON c.id = f.id {join} metadata_files m ON m.id = c.metadata_file_id
                     ORDER BY c.changed_at DESC LIMIT 20"
                );
                view.recent_failures = conn.query_map(query, params![tenant], view_from_row)?;
                Ok(())
            })?;
        }
        view.ftp_sources = super::FtpState { db: self.db.clone() }.ftp_sources(tenant)?;
        Ok(view)
    }

    /// `dropsync retry`: failed conversations are due now; expired ones wait another grace
    /// period, and any of their recordings already present are attached. Returns how many.
    pub fn retry(&self, tenant: Option<&str>, conversation_id: Option<&str>, now: i64, grace_ms: i64) -> Result<usize> {
        let mut decided = Vec::new();
        self.db.write(|tx| {
            let intake = match conversation_id {
                None => super::IntakeQueue::retry_failed_intake(&tx, tenant, now)?,
                Some(_) => 0,
            };
            let failed = tx.execute(
                "UPDATE conversations SET state = 'ready', next_attempt_at = ?3, attempts = 0, changed_at = ?3
                 WHERE state = 'failed' AND (?1 IS NULL OR tenant = ?1) AND (?2 IS NULL OR conversation_id = ?2)",
                params![tenant, conversation_id, now],
            )?;
            let expired: Vec<i64> = tx.query_map(
                "UPDATE conversations SET state = 'waiting', deadline = ?3 + ?4, detail = NULL, changed_at = ?3
                     WHERE state = 'expired' AND (?1 IS NULL OR tenant = ?1) AND (?2 IS NULL OR conversation_id = ?2)
                     RETURNING id",
                params![tenant, conversation_id, now, grace_ms],
                |r| r.get(0),
            )?;
            for conv in &expired {
                tx.execute(
                    "UPDATE recordings SET file_id = (
                        SELECT f.id FROM files f WHERE f.tenant = recordings.tenant AND f.dir = recordings.dir AND f.state = 'present'
                          AND f.kind = 'recording' AND (f.name = recordings.name OR f.stem = recordings.stem)
                        ORDER BY f.arrived_at DESC, f.id DESC LIMIT 1)
                     WHERE conversation = ?1 AND file_id IS NULL",
                    params![conv],
                )?;
                let open: i64 = tx.query_row(
                    "SELECT count(*) FROM recordings WHERE conversation = ?1 AND file_id IS NULL",
                    params![conv],
                    |r| r.get(0),
                )?;
                if open == 0 {
                    super::rows::make_ready(&tx, *conv, now, &mut decided)?;
                }
            }
            Ok(intake + failed + expired.len())
        })
    }
}
