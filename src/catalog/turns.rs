//! Whose turn it is to be forwarded: tenants with due conversations are taken in name order,
//! round-robin after the last one served, as the intake lanes take them. One tenant's backlog
//! then delays another's call by one claim of that tenant's, not by the whole backlog.
//!
//! Each look is an index seek per tenant (`conv_ready`, the ready conversations by tenant and
//! due time), never a walk through a tenant's backlog. The conversation taken is then loaded
//! whole ([`load_work`]): its rows, recordings and files.

use super::sql::{Optional, Sql, params};

use chrono::{DateTime, Utc};

use super::queue::{Work, WorkRecording};
use super::{CatalogError, Result, Via};

/// The first tenant after `after` in name order, wrapping round to the first, that has a
/// conversation due at `now`; `after` itself comes last.
pub(super) fn next_due_tenant(tx: &dyn Sql, after: &str, now: i64) -> Result<Option<String>> {
    if let Some(t) = due_after(tx, after, None, now)? {
        return Ok(Some(t));
    }
    if after.is_empty() {
        return Ok(None);
    }
    // Round again from the start, up to and including `after`.
    due_after(tx, "", Some(after), now)
}

/// The first tenant above `from` (and at most `upto`) whose earliest ready conversation is due.
fn due_after(tx: &dyn Sql, from: &str, upto: Option<&str>, now: i64) -> Result<Option<String>> {
    let mut cursor = from.to_owned();
    loop {
        // A tenant's earliest due time, first in its part of the index. Named, because the
        // planner otherwise takes `conv_state` and sorts the tenant's whole backlog each time.
        // (PostgreSQL has no such hint; its planner takes the partial index for this query.)
        let next: Option<(String, i64)> = tx
            .query_row(
                tx.pick(
                    "SELECT tenant, next_attempt_at FROM conversations INDEXED BY conv_ready
                     WHERE state = 'ready' AND tenant > ?1 ORDER BY tenant, next_attempt_at LIMIT 1",
                    "SELECT tenant, next_attempt_at FROM conversations
                     WHERE state = 'ready' AND tenant > ?1 ORDER BY tenant, next_attempt_at LIMIT 1",
                ),
                params![&cursor],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match next {
            None => return Ok(None),
            Some((t, _)) if upto.is_some_and(|u| t.as_str() > u) => return Ok(None),
            Some((t, due)) if due <= now => return Ok(Some(t)),
            Some((t, _)) => cursor = t,
        }
    }
}

pub(super) fn load_work(tx: &dyn Sql, id: i64) -> Result<Work> {
    let mut work = tx
        .query_row("SELECT c.tenant, c.conversation_id, c.agent, c.contact_time, c.fields, m.rel_path, c.row_no, c.via, c.received_at, c.attempts
             FROM conversations c JOIN metadata_files m ON m.id = c.metadata_file_id WHERE c.id = ?1", params![id], |r| {
            let contact_time: String = r.get(3)?;
            let fields: String = r.get(4)?;
            Ok((
                Work {
                    id,
                    tenant: r.get(0)?,
                    conversation_id: r.get(1)?,
                    agent: r.get(2)?,
                    contact_time: DateTime::<Utc>::UNIX_EPOCH,
                    fields: serde_json::Map::new(),
                    metadata_file: r.get(5)?,
                    row_no: r.get(6)?,
                    via: Via::parse(&r.get::<_, String>(7)?),
                    received_at: r.get(8)?,
                    attempts: r.get(9)?,
                    recordings: Vec::new(),
                },
                contact_time,
                fields,
            ))
        })
        .optional()?
        .ok_or_else(|| CatalogError::Corrupt(format!("conversation {id} vanished")))
        .and_then(|(mut w, t, f)| {
            w.contact_time = DateTime::parse_from_rfc3339(&t)
                .map_err(|e| CatalogError::Corrupt(format!("conversation {id}: bad contact_time {t:?}: {e}")))?
                .with_timezone(&Utc);
            w.fields = serde_json::from_str(&f).map_err(|e| CatalogError::Corrupt(format!("conversation {id}: bad fields: {e}")))?;
            Ok(w)
        })?;
    work.recordings = tx.query_map(
        "SELECT r.position, f.id, f.rel_path, f.name, f.size, f.mtime_ns, f.sha256, f.archive_path, f.duration_ms,
                    f.dev, f.ino
             FROM recordings r JOIN files f ON f.id = r.file_id
             WHERE r.conversation = ?1 ORDER BY r.position",
        params![id],
        |r| {
            Ok(WorkRecording {
                position: r.get(0)?,
                file_id: r.get(1)?,
                rel_path: r.get(2)?,
                name: r.get(3)?,
                size: r.get(4)?,
                mtime_ns: r.get(5)?,
                sha256: r.get(6)?,
                archive_path: r.get(7)?,
                duration_ms: r.get::<_, Option<i64>>(8)?.map(|d| d.max(0) as u64),
                file: match (r.get::<_, Option<i64>>(9)?, r.get::<_, Option<i64>>(10)?) {
                    (Some(dev), Some(ino)) => Some((dev as u64, ino as u64)),
                    _ => None,
                },
            })
        },
    )?;
    Ok(work)
}
