//! Whose turn it is to be forwarded: tenants with due conversations are taken in name order,
//! round-robin after the last one served, as the intake lanes take them. One tenant's backlog
//! then delays another's call by one claim of that tenant's, not by the whole backlog.
//!
//! Each look is an index seek per tenant (`conv_ready`, the ready conversations by tenant and
//! due time), never a walk through a tenant's backlog.

use rusqlite::{OptionalExtension, Transaction};

use super::Result;

/// The first tenant after `after` in name order, wrapping round to the first, that has a
/// conversation due at `now`; `after` itself comes last.
pub(super) fn next_due_tenant(tx: &Transaction<'_>, after: &str, now: i64) -> Result<Option<String>> {
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
fn due_after(tx: &Transaction<'_>, from: &str, upto: Option<&str>, now: i64) -> Result<Option<String>> {
    let mut cursor = from.to_owned();
    loop {
        // A tenant's earliest due time, first in its part of the index. Named, because the
        // planner otherwise takes `conv_state` and sorts the tenant's whole backlog each time.
        let next: Option<(String, i64)> = tx
            .prepare_cached(
                "SELECT tenant, next_attempt_at FROM conversations INDEXED BY conv_ready
                 WHERE state = 'ready' AND tenant > ?1 ORDER BY tenant, next_attempt_at LIMIT 1",
            )?
            .query_row([&cursor], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        match next {
            None => return Ok(None),
            Some((t, _)) if upto.is_some_and(|u| t.as_str() > u) => return Ok(None),
            Some((t, due)) if due <= now => return Ok(Some(t)),
            Some((t, _)) => cursor = t,
        }
    }
}
