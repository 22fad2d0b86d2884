//! [`Minutes`]: minute allocations and usage (SPEC §9). Used by forwarding (releasing held
//! conversations), `/metrics` and the CLI's `status`.
//!
//! Writes `conversations` (`held -> ready`) and, through [`charge`] and [`refund`] called in
//! [`ForwardQueue`](super::ForwardQueue)'s transactions (a claim, a failure), `minute_usage`
//! and the conversation's charge.
//!
//! Minute allocations (SPEC §9). A conversation counts its longest recording, rounded up to
//! the second. It is charged to the tenant's month when it is first claimed for forwarding, in
//! the claim's own transaction, so concurrent forwarders and restarts never count it twice or
//! let two conversations share the last minutes. A re-send is charged the difference from what
//! the conversation was charged before (given back when shorter), the same way. One that would pass the allocation is `held`
//! (behind any conversation held before it, so they go out in arrival order) or `rejected`.
//! Held ones are released in arrival order while they fit: when the allocation is raised, when
//! it is removed, or when a new month begins.
//!
//! The held lists are derived again only when something could let one of them move: the
//! allocations (a reload, a new month), or a change the writer connection counts in
//! `temp.held_room` (seconds given back, a held or released conversation leaving the queue
//! otherwise). Every forwarder pass asks, and most passes are told there is nothing to do.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use super::sql::{Optional, Sql, params};
use serde::Serialize;

use super::{Db, Result};
use crate::tenant::{OnExceeded, Tenant};

/// Minute allocations and usage: see the module doc.
#[derive(Clone)]
pub struct Minutes {
    pub(super) db: Db,
    /// Taken only with the writer held.
    pub(super) held_derived: std::sync::Arc<HeldDerived>,
}

/// A tenant's allocation as it applies now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocationNow {
    /// `None`: unlimited (its minutes are still counted).
    pub seconds: Option<u64>,
    pub on_exceeded: OnExceeded,
    /// The current month in the tenant's time zone, `YYYY-MM`.
    pub month: String,
}

/// Allocations by tenant id, for every configured tenant.
pub type Allocations = HashMap<String, AllocationNow>;

/// Every tenant's allocation at `now_ms`, its month taken in the tenant's time zone.
pub fn allocations_for(tenants: &[Tenant], now_ms: i64) -> Allocations {
    let now = chrono::DateTime::from_timestamp_millis(now_ms).unwrap_or_default();
    tenants
        .iter()
        .map(|t| {
            let a = AllocationNow {
                seconds: t.allocation.map(|a| a.minutes.saturating_mul(60)),
                on_exceeded: t.allocation.map_or(OnExceeded::Hold, |a| a.on_exceeded),
                month: now.with_timezone(&t.timezone).format("%Y-%m").to_string(),
            };
            (t.id.to_string(), a)
        })
        .collect()
}

/// A tenant's minutes this month, for `status` and metrics.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MinutesStatus {
    /// `YYYY-MM` in the tenant's time zone.
    pub month: String,
    pub seconds_used: u64,
    pub minutes_used: f64,
    /// `None`: unlimited.
    pub minute_allocation: Option<u64>,
}

/// What the allocation says about forwarding one conversation now.
pub(super) enum Verdict {
    Go,
    Stop { state: &'static str, detail: String },
}

/// Counts, on the writer connection only, the changes that can make room for held
/// conversations or take the head off a tenant's held list. Triggers count them in the same
/// transaction as the change, whatever code made it. TEMP: nothing to migrate, and a restart
/// derives the held lists anyway. Going from `held` or `ready` to `forwarding` or `held` is not
/// counted (it takes room, never gives it); neither is a release (`held` to `ready`).
const HELD_ROOM: &str = "
CREATE TEMP TABLE IF NOT EXISTS held_room (changes INTEGER NOT NULL);
INSERT INTO held_room SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM held_room);
CREATE TEMP TRIGGER IF NOT EXISTS held_room_left AFTER UPDATE OF state ON main.conversations
WHEN OLD.state IN ('held', 'ready') AND NEW.state NOT IN ('held', 'ready', 'forwarding') BEGIN
    UPDATE held_room SET changes = changes + 1;
END;
CREATE TEMP TRIGGER IF NOT EXISTS held_room_refund AFTER UPDATE OF seconds ON main.minute_usage
WHEN NEW.seconds < OLD.seconds BEGIN
    UPDATE held_room SET changes = changes + 1;
END;
";

/// Installs the `held_room` count on a writer connection.
pub(super) fn count_held_room(conn: &rusqlite::Connection) -> Result<()> {
    Ok(conn.execute_batch(HELD_ROOM)?)
}

/// What the held lists were last derived for: the allocations, and the `held_room` count then.
pub(super) type HeldDerived = Mutex<Option<(Allocations, i64)>>;

/// The seconds a conversation counts: its longest recording, rounded up.
fn seconds_of(tx: &dyn Sql, conv: i64) -> Result<u64> {
    let ms: Option<i64> = tx.query_row(
        "SELECT max(f.duration_ms) FROM recordings r JOIN files f ON f.id = r.file_id WHERE r.conversation = ?1",
        params![conv],
        |r| r.get(0),
    )?;
    Ok((ms.unwrap_or(0).max(0) as u64).div_ceil(1000))
}

/// A send of a conversation against what its sends were charged so far.
struct Owed {
    /// What this send counts.
    seconds: u64,
    /// What the sends of the same conversation were charged and kept (this one included, if
    /// it was charged before: a retry, or an FTP revision sent again in the same row).
    counted: i64,
}

impl Owed {
    /// What charging this send adds: all of it the first time, the difference for a re-send
    /// (negative: given back), nothing for a retry.
    fn due(&self) -> i64 {
        self.seconds as i64 - self.counted
    }
}

/// What `conv` owes now. The sum over the conversation's sends is what it was charged in all:
/// the length of its last charged send, whichever row carries which part, or more when a
/// shorter re-send found fewer seconds in its month than it had to give back.
fn owed(tx: &dyn Sql, conv: i64) -> Result<Owed> {
    let counted: i64 = tx.query_row(
        "SELECT coalesce(sum(o.charged_seconds), 0) FROM conversations c JOIN conversations o
               ON o.tenant = c.tenant AND o.conversation_id = c.conversation_id
             WHERE c.id = ?1 AND o.charged_month IS NOT NULL",
        params![conv],
        |r| r.get(0),
    )?;
    Ok(Owed {
        seconds: seconds_of(tx, conv)?,
        counted,
    })
}

/// Seconds charged to `tenant` in `month`.
fn used(conn: &dyn Sql, tenant: &str, month: &str) -> Result<u64> {
    let s: Option<i64> = conn
        .query_row(
            "SELECT seconds FROM minute_usage WHERE tenant = ?1 AND month = ?2",
            params![tenant, month],
            |r| r.get(0),
        )
        .optional()?;
    Ok(s.unwrap_or(0).max(0) as u64)
}

fn minutes(seconds: u64) -> String {
    format!("{}:{:02}", seconds / 60, seconds % 60)
}

/// Decides, inside the claim's transaction, whether `conv` of `tenant` may be forwarded now,
/// and charges it if so: what it owes (see [`Owed::due`]) goes to this month, and what the
/// month changed by onto the row's `charged_seconds`. A re-send that adds seconds is held or
/// rejected like a first send when they do not fit; one that gives seconds back always goes,
/// giving back at most what the month has (a month never drops below zero).
pub(super) fn charge(tx: &dyn Sql, conv: i64, tenant: &str, a: &AllocationNow) -> Result<Verdict> {
    let owed = owed(tx, conv)?;
    let due = owed.due();
    if due > 0
        && let Some(allocated) = a.seconds
        && let Some(stop) = over_allocation(tx, conv, tenant, a, allocated, &owed)?
    {
        return Ok(stop);
    }
    if due != 0 {
        // The row keeps what the month actually changed by, not `due`: a shorter re-send in a
        // month with fewer seconds than it gives back gives back only those, and `refund` and
        // later re-sends must take back and count only what was given.
        let before = used(tx, tenant, &a.month)? as i64;
        let applied = (before + due).max(0) - before;
        tx.execute(
            "INSERT INTO minute_usage (tenant, month, seconds) VALUES (?1, ?2, ?3)
             ON CONFLICT(tenant, month) DO UPDATE SET seconds = ?3",
            params![tenant, a.month, before + applied],
        )?;
        tx.execute("UPDATE conversations SET charged_month = ?2, charged_seconds = coalesce(charged_seconds, 0) + ?3 WHERE id = ?1", params![conv, a.month, applied])?;
    }
    Ok(Verdict::Go)
}

/// Why `conv` (owing `owed.due()` > 0 seconds) may not go now under an allocation of
/// `allocated` seconds.
fn over_allocation(
    tx: &dyn Sql,
    conv: i64,
    tenant: &str,
    a: &AllocationNow,
    allocated: u64,
    owed: &Owed,
) -> Result<Option<Verdict>> {
    if a.on_exceeded == OnExceeded::Hold {
        // Only one that arrived before it: those released with it arrived before the ones that
        // stay held, and must not be held again behind them.
        let earlier: Option<i64> = tx
            .query_row("SELECT h.id FROM conversations h, conversations c WHERE c.id = ?2 AND h.tenant = ?1 AND h.state = 'held'
                   AND (h.received_at, h.id) < (c.received_at, c.id) LIMIT 1", params![tenant, conv], |r| r.get(0))
            .optional()?;
        if earlier.is_some() {
            return Ok(Some(Verdict::Stop {
                state: "held",
                detail: "minute allocation: waiting behind conversations held before it".into(),
            }));
        }
    }
    let used = used(tx, tenant, &a.month)?;
    let due = owed.due().max(0) as u64;
    if used + due > allocated {
        let what = if owed.counted == 0 {
            format!("this conversation ({})", minutes(due))
        } else {
            format!(
                "this re-send ({}, {} more than the {} counted before)",
                minutes(owed.seconds),
                minutes(due),
                minutes(owed.counted.max(0) as u64)
            )
        };
        let detail = format!(
            "minute allocation exceeded: {what} would pass the {} minutes of {} ({} used)",
            allocated / 60,
            a.month,
            minutes(used)
        );
        let state = match a.on_exceeded {
            OnExceeded::Hold => "held",
            OnExceeded::Reject => "rejected",
        };
        return Ok(Some(Verdict::Stop { state, detail }));
    }
    Ok(None)
}

/// Gives back what a send that will not be forwarded was charged (taking back what a shorter
/// re-send gave back).
pub(super) fn refund(tx: &dyn Sql, conv: i64) -> Result<()> {
    let charged: Option<(String, String, i64)> = tx
        .query_row("SELECT tenant, charged_month, charged_seconds FROM conversations WHERE id = ?1 AND charged_month IS NOT NULL", params![conv], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    if let Some((tenant, month, seconds)) = charged {
        tx.execute(
            "UPDATE minute_usage SET seconds = CASE WHEN seconds > ?3 THEN seconds - ?3 ELSE 0 END WHERE tenant = ?1 AND month = ?2",
            params![tenant, month, seconds],
        )?;
        tx.execute(
            "UPDATE conversations SET charged_month = NULL, charged_seconds = NULL WHERE id = ?1",
            params![conv],
        )?;
    }
    Ok(())
}

impl Minutes {
    /// Releases held conversations, in arrival order, while they fit in their tenant's
    /// allocation now (all of them if it has none any more). Returns how many. Does nothing,
    /// without a transaction, unless the allocations or the `held_room` count changed since the
    /// held lists were last derived; the ones that do not fit are not touched.
    pub fn release_held(&self, allocations: &Allocations, now: i64) -> Result<usize> {
        // SQLite counts, on its one writer connection, what could make room; PostgreSQL has
        // no such count (other nodes change rows too), so its held lists are derived each time.
        // There, which tenants have any is read first (most claims find none), and each one's
        // are released under its own writer lock, beside other tenants' work.
        if self.db.is_shared() {
            let tenants = self.db.read(held_tenants)?;
            let mut released = 0;
            for tenant in tenants {
                released += self.db.write_for(Some(&tenant), |tx| {
                    release_tenant(tx, &tenant, allocations.get(&tenant), now)
                })?;
            }
            return Ok(released);
        }
        // SQLite from here.
        let mut derived = self.held_derived.lock().unwrap_or_else(|p| p.into_inner());
        let released = self.db.write(|tx| {
            let changes: i64 = tx.query_row("SELECT changes FROM temp.held_room", params![], |r| r.get(0))?;
            if derived
                .as_ref()
                .is_some_and(|(a, was)| *was == changes && a == allocations)
            {
                return Ok((0, changes));
            }
            let tenants = held_tenants(tx)?;
            let mut released = 0;
            for tenant in tenants {
                released += release_tenant(tx, &tenant, allocations.get(&tenant), now)?;
            }
            Ok((released, changes))
        })?;
        *derived = Some((allocations.clone(), released.1));
        Ok(released.0)
    }

    /// Each tenant's minutes forwarded this month, and its allocation.
    pub fn status(&self, allocations: &Allocations) -> Result<BTreeMap<String, MinutesStatus>> {
        self.db.read(|conn| {
            let counted = super::has_table(&conn, "minute_usage")?;
            let mut out = BTreeMap::new();
            for (tenant, a) in allocations {
                let seconds = if counted { used(&conn, tenant, &a.month)? } else { 0 };
                out.insert(
                    tenant.clone(),
                    MinutesStatus {
                        month: a.month.clone(),
                        seconds_used: seconds,
                        minutes_used: (seconds as f64 / 60.0 * 100.0).round() / 100.0,
                        minute_allocation: a.seconds.map(|s| s / 60),
                    },
                );
            }
            Ok(out)
        })
    }
}

/// The tenants with held conversations.
fn held_tenants(tx: &dyn Sql) -> Result<Vec<String>> {
    tx.query_map(
        "SELECT DISTINCT tenant FROM conversations WHERE state = 'held'",
        params![],
        |r| r.get(0),
    )
}

/// Releases `tenant`'s held conversations in arrival order while they fit in `allocation`;
/// stops at the first that does not, reading no further. Returns how many.
fn release_tenant(tx: &dyn Sql, tenant: &str, allocation: Option<&AllocationNow>, now: i64) -> Result<usize> {
    let mut room = match allocation {
        Some(AllocationNow {
            seconds: Some(allocated),
            month,
            ..
        }) => Some(allocated.saturating_sub(used(tx, tenant, month)?)),
        _ => None,
    };
    let mut fit = Vec::new();
    let held: Vec<i64> = tx.query_map(
        "SELECT id FROM conversations WHERE tenant = ?1 AND state = 'held' ORDER BY received_at, id",
        params![tenant],
        |r| r.get(0),
    )?;
    for conv in held {
        if let Some(room) = room.as_mut() {
            let seconds = seconds_of(tx, conv)?;
            if seconds > *room {
                break;
            }
            *room -= seconds;
        }
        fit.push(conv);
    }
    for conv in &fit {
        tx.execute("UPDATE conversations SET state = 'ready', detail = NULL, next_attempt_at = ?2, changed_at = ?2 WHERE id = ?1", params![conv, now])?;
    }
    Ok(fit.len())
}
