//! What the web console reads (SPEC §11): calls filtered and paged newest first, one
//! conversation with its recordings, sends and deliveries, a recording's file, and a tenant's
//! days (conversations by state, minutes charged). Each query is one indexed range however long
//! the history (`conv_tenant_received`, migration 11), so a page costs the same with 100,000
//! conversations as with ten.

use super::sql::{Optional, Row, params};
use serde::Serialize;

use super::db::Db;
use super::views::iso;
use super::{ConvState, Result};

pub struct Console {
    pub(super) db: Db,
}

/// Which calls a page lists.
#[derive(Debug, Clone, Default)]
pub struct CallFilter {
    pub tenant: Option<String>,
    pub state: Option<ConvState>,
    /// `YYYY-MM-DD`: contact time on that day (UTC).
    pub day: Option<String>,
    pub offset: usize,
    pub limit: usize,
}

/// A call as the console's table shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CallRow {
    pub id: i64,
    pub tenant: String,
    pub conversation_id: Option<String>,
    pub state: String,
    pub updated: bool,
    pub contact_time: Option<String>,
    pub received_at: String,
    pub duration_ms: Option<i64>,
    pub detail: Option<String>,
}

/// One send of a conversation: a row of a metadata file, as its report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CallSend {
    pub id: i64,
    pub metadata_file: String,
    pub row: i64,
    pub state: String,
    pub updated: bool,
    pub detail: Option<String>,
    pub received_at: String,
}

/// A recording of a conversation, and where it went.
#[derive(Debug, Clone, Serialize)]
pub struct RecordingDetail {
    pub name: String,
    /// The file that arrived for it, if one did.
    pub file_id: Option<i64>,
    pub bytes: Option<i64>,
    pub sha256: Option<String>,
    pub duration_ms: Option<i64>,
    /// Its object key, once forwarded.
    pub key: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CallDetail {
    pub call: CallRow,
    pub agent: Option<String>,
    pub via: String,
    /// Every original column, as a JSON object.
    pub fields: Option<String>,
    pub recordings: Vec<RecordingDetail>,
    /// Every send of the same conversation id, newest first.
    pub sends: Vec<CallSend>,
    /// Where it was delivered: sink and key prefix, when.
    pub deliveries: Vec<(String, String, String)>,
}

/// A metadata file (or zip) of an uploaded batch, and how far it got.
#[derive(Debug, Clone, Serialize)]
pub struct BatchFile {
    pub id: i64,
    pub rel_path: String,
    /// parsing | parsed | rejected | failed
    pub status: String,
    pub reason: Option<String>,
}

/// A recording's file, for playing it back.
#[derive(Debug, Clone)]
pub struct RecordingFile {
    pub rel_path: String,
    pub present: bool,
    pub archive_path: Option<String>,
    pub size: i64,
}

const CALL_COLUMNS: &str = "c.id, c.tenant, c.conversation_id, c.state, c.updated, c.contact_time, c.received_at,
     (SELECT max(f.duration_ms) FROM recordings r JOIN files f ON f.id = r.file_id WHERE r.conversation = c.id),
     c.detail";

fn call_row(r: &Row) -> Result<CallRow> {
    Ok(CallRow {
        id: r.get(0)?,
        tenant: r.get(1)?,
        conversation_id: r.get(2)?,
        state: r.get(3)?,
        updated: r.get(4)?,
        contact_time: r.get(5)?,
        received_at: iso(r.get(6)?),
        duration_ms: r.get(7)?,
        detail: r.get(8)?,
    })
}

impl Console {
    /// The calls `filter` asks for, newest first.
    pub fn calls(&self, filter: &CallFilter) -> Result<Vec<CallRow>> {
        self.db.read(|conn| {
            // A tenant's newest straight from `conv_tenant_received`; every tenant's from the key.
            let order = if filter.tenant.is_some() {
                "c.tenant DESC, c.received_at DESC, c.id DESC"
            } else {
                "c.id DESC"
            };
            let next_day = filter.day.as_deref().map(|d| format!("{d}T99"));
            let query = &format!(
                "SELECT {CALL_COLUMNS} FROM conversations c
             WHERE (?1 IS NULL OR c.tenant = ?1) AND (?2 IS NULL OR c.state = ?2)
               AND (?3 IS NULL OR (c.contact_time >= ?3 AND c.contact_time < ?4))
             ORDER BY {order} LIMIT ?5 OFFSET ?6"
            );
            let rows = conn.query_map(
                query,
                params![
                    filter.tenant,
                    filter.state.map(ConvState::as_str),
                    filter.day,
                    next_day,
                    filter.limit as i64,
                    filter.offset as i64
                ],
                call_row,
            )?;
            Ok(rows)
        })
    }

    /// Conversation `id` (the catalog's row id), if it is `tenant`'s (any tenant's for `None`).
    pub fn call(&self, id: i64, tenant: Option<&str>) -> Result<Option<CallDetail>> {
        self.db.read(|conn| {
            let found = conn
                .query_row(
                    &format!(
                        "SELECT {CALL_COLUMNS}, c.agent, c.via, c.fields FROM conversations c
                     WHERE c.id = ?1 AND (?2 IS NULL OR c.tenant = ?2)"
                    ),
                    params![id, tenant],
                    |r| Ok((call_row(r)?, r.get(9)?, r.get(10)?, r.get(11)?)),
                )
                .optional()?;
            let Some((call, agent, via, fields)) = found else {
                return Ok(None);
            };
            let recordings = conn
                .query_map("SELECT coalesce(r.name, r.stem || '.*'), r.file_id, coalesce(r.bytes, f.size), coalesce(r.sha256, f.sha256),
                            f.duration_ms, r.key
                     FROM recordings r LEFT JOIN files f ON f.id = r.file_id WHERE r.conversation = ?1 ORDER BY r.position", params![id], |r| {
                    Ok(RecordingDetail {
                        name: r.get(0)?,
                        file_id: r.get(1)?,
                        bytes: r.get(2)?,
                        sha256: r.get(3)?,
                        duration_ms: r.get(4)?,
                        key: r.get(5)?,
                    })
                })?;
            let sends = conn.query_map(
                "SELECT c.id, m.rel_path, c.row_no, c.state, c.updated, c.detail, c.received_at
                     FROM conversations c JOIN metadata_files m ON m.id = c.metadata_file_id
                     WHERE c.tenant = ?1 AND c.conversation_id = ?2 ORDER BY c.id DESC LIMIT 100",
                params![call.tenant, call.conversation_id],
                |r| {
                    Ok(CallSend {
                        id: r.get(0)?,
                        metadata_file: r.get(1)?,
                        row: r.get(2)?,
                        state: r.get(3)?,
                        updated: r.get(4)?,
                        detail: r.get(5)?,
                        received_at: iso(r.get(6)?),
                    })
                },
            )?;
            let deliveries = conn.query_map(
                "SELECT sink, key_prefix, finished_at FROM deliveries WHERE conversation = ?1 ORDER BY id DESC LIMIT 20",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?, iso(r.get(2)?))),
            )?;
            Ok(Some(CallDetail {
                call,
                agent,
                via,
                fields,
                recordings,
                sends,
                deliveries,
            }))
        })
    }

    /// File `file_id`, if it is `tenant`'s and a recording a conversation names.
    pub fn recording_file(&self, tenant: &str, file_id: i64) -> Result<Option<RecordingFile>> {
        self.db.read(|conn| {
            let found = conn
                .query_row(
                    "SELECT rel_path, state = 'present', archive_path, size FROM files
                 WHERE id = ?1 AND tenant = ?2 AND kind = 'recording'",
                    params![file_id, tenant],
                    |r| {
                        Ok(RecordingFile {
                            rel_path: r.get(0)?,
                            present: r.get(1)?,
                            archive_path: r.get(2)?,
                            size: r.get(3)?,
                        })
                    },
                )
                .optional()?;
            Ok(found)
        })
    }

    /// The metadata files and zips of `tenant`'s folder `dir` (an uploaded batch's).
    pub fn batch_files(&self, tenant: &str, dir: &str) -> Result<Vec<BatchFile>> {
        self.db.read(|conn| {
            let rows = conn
                .query_map("SELECT id, rel_path, status, reason FROM metadata_files WHERE tenant = ?1 AND dir = ?2 ORDER BY id LIMIT 100", params![tenant, dir], |r| {
                    Ok(BatchFile {
                        id: r.get(0)?,
                        rel_path: r.get(1)?,
                        status: r.get(2)?,
                        reason: r.get(3)?,
                    })
                })?;
            Ok(rows)
        })
    }

    /// `tenant`'s conversations received per day since `since_ms`, by state: (day, state, n),
    /// a day being `(received_at + offset_ms) / 86,400,000` (the tenant's zone's offset).
    pub fn days(&self, tenant: &str, since_ms: i64, offset_ms: i64) -> Result<Vec<(i64, String, i64)>> {
        self.db.read(|conn| {
            let rows = conn.query_map(
                "SELECT (received_at + ?3) / 86400000, state, count(*) FROM conversations
                 WHERE tenant = ?1 AND received_at >= ?2 GROUP BY 1, 2",
                params![tenant, since_ms, offset_ms],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            Ok(rows)
        })
    }

    /// Seconds charged to `tenant` in `month` (`YYYY-MM`) per day they were forwarded, for
    /// conversations received since `since_ms`: (day, seconds), days as in [`Console::days`].
    pub fn minutes_by_day(&self, tenant: &str, month: &str, since_ms: i64, offset_ms: i64) -> Result<Vec<(i64, i64)>> {
        self.db.read(|conn| {
            let rows = conn.query_map(
                "SELECT (coalesce(forwarded_at, received_at) + ?4) / 86400000, sum(charged_seconds) FROM conversations
                 WHERE tenant = ?1 AND received_at >= ?3 AND charged_month = ?2 GROUP BY 1",
                params![tenant, month, since_ms, offset_ms],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            Ok(rows)
        })
    }
}
