//! [`Leases`]: which node holds which work when several nodes share one catalog (SPEC §12).
//! Used by the node's keeper (`app.rs`), intake's lanes (a tenant's turn), the FTP pollers (a
//! source) and housekeeping.
//!
//! Writes `nodes` (this node's heartbeat), `leases` (work held by name: `intake <tenant>`,
//! `ftp <source>`, `housekeeping`) and the lease columns of `conversations` being forwarded
//! (which [`super::ForwardQueue`] sets when it claims them).
//!
//! A lease runs until `until` (unix ms, the node's clock: nodes are expected to keep time with
//! NTP, and a skew eats into the lease). The keeper renews every lease its node holds a third of
//! a lease before it runs out, so a node that lives keeps its work, and a node that dies (or
//! stalls for a whole lease) has it taken over: its conversations go back to `ready` for any
//! node, its named leases may be taken by the next node that asks. A forward taken over is
//! replayed to the same keys, `metadata.json` last, so a lease lost at the wrong moment costs a
//! repeated write, never a lost or half conversation.
//!
//! One SQLite node keeps the same records (they cost one small write per keeper tick), but
//! takes named leases without asking: nothing else can share its database.

use std::sync::Arc;

use super::db::Db;
use super::sql::{Optional, params};
use super::{Node, Result};

/// Leases and heartbeats, for one node.
#[derive(Clone)]
pub struct Leases {
    pub(super) db: Db,
    pub(super) node: Arc<Node>,
}

/// A node as the catalog last heard of it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeStatus {
    pub node_id: String,
    pub started_at: i64,
    pub heartbeat_at: i64,
    pub version: String,
}

impl Leases {
    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node.id
    }

    /// How long a lease lasts unless renewed.
    pub fn lease_ms(&self) -> i64 {
        self.node.lease_ms
    }

    /// One keeper tick: this node's heartbeat, every lease it holds renewed until
    /// `now + lease`, and the conversations whose forwarding lease ran out (their node died or
    /// stalled) back to `ready`. Returns how many were taken back.
    pub fn keep(&self, now: i64, started_at: i64) -> Result<usize> {
        let (node, until) = (&self.node.id, now.saturating_add(self.node.lease_ms));
        self.db.write(|tx| {
            tx.execute(
                "INSERT INTO nodes (node_id, started_at, heartbeat_at, version) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (node_id) DO UPDATE SET started_at = excluded.started_at,
                    heartbeat_at = excluded.heartbeat_at, version = excluded.version",
                params![node, started_at, now, env!("CARGO_PKG_VERSION")],
            )?;
            tx.execute(
                "UPDATE conversations SET lease_until = ?2 WHERE state = 'forwarding' AND lease_owner = ?1",
                params![node, until],
            )?;
            tx.execute("UPDATE leases SET until = ?2 WHERE owner = ?1", params![node, until])?;
            tx.execute(
                "UPDATE conversations SET state = 'ready', next_attempt_at = ?1, changed_at = ?1,
                    detail = 'taken over: the node forwarding it stopped renewing its lease',
                    lease_owner = NULL, lease_until = NULL
                 WHERE state = 'forwarding' AND lease_until < ?1",
                params![now],
            )
        })
    }

    /// Takes the lease `name` for this node if no other node holds it unexpired; whether it
    /// is this node's now. Taking one this node holds renews it.
    pub fn try_take(&self, name: &str, now: i64) -> Result<bool> {
        if !self.db.is_shared() {
            return Ok(true);
        }
        let (node, until) = (&self.node.id, now.saturating_add(self.node.lease_ms));
        self.db.write_statement(|tx| {
            Ok(tx
                .query_row(
                    "INSERT INTO leases (name, owner, until) VALUES (?1, ?2, ?3)
                     ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until = excluded.until
                     WHERE leases.owner = excluded.owner OR leases.until < ?4
                     RETURNING owner",
                    params![name, node, until, now],
                    |r| r.get::<_, String>(0),
                )
                .optional()?
                .is_some())
        })
    }

    /// Gives lease `name` back, if this node holds it.
    pub fn release(&self, name: &str) -> Result<()> {
        if !self.db.is_shared() {
            return Ok(());
        }
        self.db.write_statement(|tx| {
            tx.execute(
                "DELETE FROM leases WHERE name = ?1 AND owner = ?2",
                params![name, self.node.id],
            )?;
            Ok(())
        })
    }

    /// Every node the catalog has heard of, by id.
    pub fn nodes(&self) -> Result<Vec<NodeStatus>> {
        self.db.read(|conn| {
            if !super::has_table(conn, "nodes")? {
                return Ok(Vec::new());
            }
            conn.query_map(
                "SELECT node_id, started_at, heartbeat_at, version FROM nodes ORDER BY node_id",
                params![],
                |r| {
                    Ok(NodeStatus {
                        node_id: r.get(0)?,
                        started_at: r.get(1)?,
                        heartbeat_at: r.get(2)?,
                        version: r.get(3)?,
                    })
                },
            )
        })
    }
}
