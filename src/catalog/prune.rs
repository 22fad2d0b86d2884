//! Forgetting old history, so that what the catalog holds, and what reading it costs, follows
//! the retention window and not the age of the installation.
//!
//! A metadata file is forgotten once its file has left the drop folder and the archive (its
//! record is `purged` or `gone`) before `before`, and every row it had ended (`forwarded`,
//! `rejected`, `expired`) before `before`: its conversations with their recordings and
//! deliveries, its refusals, its record, and the records of recording files nothing else
//! names. Orphan recordings purged before `before` go too (a recording the tenant deleted
//! before any row named it or it became an orphan keeps its record). Work is done in short batches, each
//! its own transaction, so the writer is never held long; a crash between batches leaves rows
//! that the next sweep finds again. Per-state counts keep what was forgotten (migration 8).

use std::collections::HashMap;

use rusqlite::{Transaction, params};

use super::{Catalog, Result};

/// Conversations forgotten in one transaction.
const BATCH: i64 = 500;

/// What one call forgot.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub conversations: usize,
    pub metadata_files: usize,
    pub files: usize,
}

impl Catalog {
    /// Forgets up to about `limit` conversations (and what goes with them) that ended before
    /// `before` (unix ms), in batches.
    pub fn prune(&self, before: i64, limit: usize) -> Result<Pruned> {
        let mut pruned = Pruned::default();
        while pruned.conversations < limit {
            let Some(metadata_file) = self.prunable_metadata_file(before)? else {
                break;
            };
            loop {
                let (conversations, finished) = self.prune_batch(metadata_file)?;
                pruned.conversations += conversations;
                if finished {
                    pruned.metadata_files += 1;
                    break;
                }
            }
        }
        pruned.files += self.prune_orphans(before)?;
        Ok(pruned)
    }

    /// The oldest metadata file whose file and rows all ended before `before`.
    fn prunable_metadata_file(&self, before: i64) -> Result<Option<i64>> {
        use rusqlite::OptionalExtension;
        let conn = self.read()?;
        Ok(conn
            .prepare_cached(
                "SELECT m.id FROM files f JOIN metadata_files m ON m.file_id = f.id
                 WHERE f.state IN ('purged', 'gone') AND f.left_at < ?1 AND f.kind != 'recording'
                   AND m.status != 'parsing'
                   AND NOT EXISTS (SELECT 1 FROM conversations c WHERE c.metadata_file_id = m.id
                        AND c.state IN ('waiting', 'ready', 'forwarding', 'failed', 'held'))
                   AND NOT EXISTS (SELECT 1 FROM conversations c WHERE c.metadata_file_id = m.id
                        AND c.state IN ('forwarded', 'rejected', 'expired') AND c.changed_at >= ?1)
                 ORDER BY f.left_at LIMIT 1",
            )?
            .query_row([before], |r| r.get(0))
            .optional()?)
    }

    /// Forgets a batch of one metadata file's conversations; the file's own records once none
    /// is left. Returns how many conversations, and whether the file is done.
    fn prune_batch(&self, metadata_file: i64) -> Result<(usize, bool)> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let convs: Vec<(i64, String, String)> = tx
            .prepare_cached("SELECT id, tenant, state FROM conversations WHERE metadata_file_id = ?1 LIMIT ?2")?
            .query_map(params![metadata_file, BATCH], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut counts: HashMap<(String, String), i64> = HashMap::new();
        let mut recording_files = Vec::new();
        for (id, tenant, state) in &convs {
            let files: Vec<Option<i64>> = tx
                .prepare_cached("DELETE FROM recordings WHERE conversation = ?1 RETURNING file_id")?
                .query_map([id], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            recording_files.extend(files.into_iter().flatten());
            tx.prepare_cached("DELETE FROM deliveries WHERE conversation = ?1")?
                .execute([id])?;
            tx.prepare_cached("DELETE FROM conversations WHERE id = ?1")?
                .execute([id])?;
            *counts.entry((tenant.clone(), state.clone())).or_default() += 1;
        }
        // The counts keep what is forgotten (the delete trigger took it off).
        for ((tenant, state), n) in counts {
            tx.prepare_cached("UPDATE conversation_counts SET n = n + ?3 WHERE tenant = ?1 AND state = ?2")?
                .execute(params![tenant, state, n])?;
        }
        for file in recording_files {
            forget_file_if_unnamed(&tx, file)?;
        }
        let finished = (convs.len() as i64) < BATCH;
        if finished {
            tx.prepare_cached("DELETE FROM refusals WHERE metadata_file_id = ?1")?
                .execute([metadata_file])?;
            let file: Option<i64> = tx
                .prepare_cached("DELETE FROM metadata_files WHERE id = ?1 RETURNING file_id")?
                .query_row([metadata_file], |r| r.get(0))
                .ok();
            if let Some(file) = file {
                forget_file_if_unnamed(&tx, file)?;
            }
        }
        tx.commit()?;
        Ok((convs.len(), finished))
    }

    /// Orphan recordings (named by no row) deleted before `before`: their records go too.
    fn prune_orphans(&self, before: i64) -> Result<usize> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let n = tx
            .prepare_cached(
                "DELETE FROM files WHERE id IN (
                    SELECT f.id FROM files f WHERE f.state IN ('purged', 'gone') AND f.left_at < ?1
                      AND f.orphan_since IS NOT NULL
                      AND NOT EXISTS (SELECT 1 FROM recordings r WHERE r.file_id = f.id)
                    LIMIT ?2)",
            )?
            .execute(params![before, BATCH])?;
        tx.commit()?;
        Ok(n)
    }
}

/// Forgets a file's record once it has left the drop folder and nothing names it.
fn forget_file_if_unnamed(tx: &Transaction<'_>, file: i64) -> Result<()> {
    tx.prepare_cached(
        "DELETE FROM files WHERE id = ?1 AND state IN ('purged', 'gone')
           AND NOT EXISTS (SELECT 1 FROM recordings WHERE file_id = ?1)
           AND NOT EXISTS (SELECT 1 FROM metadata_files WHERE file_id = ?1)",
    )?
    .execute([file])?;
    Ok(())
}
