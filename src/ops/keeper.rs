//! The node's keeper (SPEC §12): every third of a lease, this node's heartbeat goes to the
//! catalog, every lease it holds is renewed, and the conversations of a node that stopped
//! renewing its own go back to the queue for any node (see `catalog/leases.rs`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::catalog::{Catalog, now_ms};
use crate::worker::{Worker, WorkerError, WorkerState};

pub struct Keeper {
    pub catalog: Catalog,
    /// When this node started (unix ms), for `status`.
    pub started_at: i64,
    /// Woken when conversations were taken back, so that a forwarder claims them now.
    pub forwarders: Arc<Notify>,
}

impl Worker for Keeper {
    fn name(&self) -> String {
        "keeper".into()
    }

    async fn work(&mut self) -> Result<WorkerState, WorkerError> {
        let started_at = self.started_at;
        let (taken, nodes) = self
            .catalog
            .run(move |c| {
                let leases = c.leases();
                Ok((leases.keep(now_ms(), started_at)?, leases.nodes()?))
            })
            .await?;
        // Every node's, as this one last read them: a node whose heartbeat falls behind is dead
        // or cut off, and its work is taken over a lease after its last renewal.
        for n in nodes {
            metrics::gauge!("dropsync_node_heartbeat_timestamp_seconds", "node" => n.node_id)
                .set(n.heartbeat_at as f64 / 1000.0);
        }
        if taken > 0 {
            tracing::warn!(
                taken,
                "conversations whose node stopped renewing its lease are queued again"
            );
            self.forwarders.notify_waiters();
        }
        Ok(WorkerState::Idle)
    }

    async fn wait_for_work(&mut self) {
        let lease = Duration::from_millis(self.catalog.leases().lease_ms().max(3) as u64);
        tokio::time::sleep(lease / 3).await
    }

    /// A few seconds at most: a lease is renewed a third of a lease before it runs out.
    fn backoff(&self) -> (Duration, Duration) {
        (Duration::from_millis(200), Duration::from_secs(5))
    }
}
