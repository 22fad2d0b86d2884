//! [`History`]: forgetting old history. Used by housekeeping's sweep.
//!
//! Deletes from `conversations`, `recordings`, `deliveries`, `refusals`, `metadata_files` and
//! `files`, and keeps per-state counts in `conversation_counts`: only rows no other handle will
//! touch again (ended, and their files gone), so this is the one handle that writes every
//! table, and only to forget.
//!
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

use super::sql::{Sql, params};

use super::{Db, Result};

/// Forgetting old history: see the module doc.
#[derive(Clone)]
pub struct History {
    pub(super) db: Db,
}

/// Conversations forgotten in one transaction at most.
const BATCH: usize = 500;

/// Metadata files looked at per read: one CSV per call means one conversation per file.
const CANDIDATES: usize = 200;

/// What one call forgot.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub conversations: usize,
    pub metadata_files: usize,
    pub files: usize,
}

/// Where a pass over the candidates has got to: (left_at, file id) of the last one seen.
type Cursor = (i64, i64);

impl History {
    /// Forgets up to about `limit` conversations (and what goes with them) that ended before
    /// `before` (unix ms), in transactions of at most [`BATCH`] conversations.
    pub fn prune(&self, before: i64, limit: usize) -> Result<Pruned> {
        let mut pruned = Pruned::default();
        let mut cursor: Cursor = (i64::MIN, 0);
        while pruned.conversations < limit {
            let candidates = self.prunable_metadata_files(before, cursor)?;
            let Some(&(last, _)) = candidates.last() else {
                break;
            };
            cursor = last;
            let ids: Vec<i64> = candidates.iter().map(|(_, id)| *id).collect();
            let mut rest = &ids[..];
            while !rest.is_empty() {
                let step = self.prune_some(rest, before)?;
                pruned.conversations += step.conversations;
                pruned.metadata_files += step.metadata_files;
                rest = &rest[step.consumed..];
            }
        }
        pruned.files += self.prune_orphans(before)?;
        Ok(pruned)
    }

    /// Metadata files after `cursor` (in the order they left) whose file left before `before`
    /// and whose rows all ended before it, with where each stands in that order.
    fn prunable_metadata_files(&self, before: i64, cursor: Cursor) -> Result<Vec<(Cursor, i64)>> {
        self.db.read(|conn| {
            let query = "SELECT f.left_at, f.id, m.id FROM files f JOIN metadata_files m ON m.file_id = f.id
             WHERE f.state IN ('purged', 'gone') AND f.kind != 'recording' AND f.left_at < ?1
               AND (f.left_at > ?2 OR (f.left_at = ?2 AND f.id > ?3))
               AND m.status != 'parsing'
               AND NOT EXISTS (SELECT 1 FROM conversations c WHERE c.metadata_file_id = m.id
                    AND c.state IN ('waiting', 'ready', 'forwarding', 'failed', 'held'))
               AND NOT EXISTS (SELECT 1 FROM conversations c WHERE c.metadata_file_id = m.id
                    AND c.state IN ('forwarded', 'rejected', 'expired') AND c.changed_at >= ?1)
             ORDER BY f.left_at, f.id LIMIT ?4";
            let rows = conn.query_map(query, params![before, cursor.0, cursor.1, CANDIDATES as i64], |r| {
                Ok(((r.get(0)?, r.get(1)?), r.get(2)?))
            })?;
            Ok(rows.into_iter().collect())
        })
    }

    /// Forgets, in one transaction, up to [`BATCH`] conversations of `metadata_files`, in
    /// order, and each file's own records once none of its rows is left. The state of each row
    /// is checked again here, on the writer: one queued again meanwhile (`dropsync retry`) is
    /// kept, and so is its file.
    fn prune_some(&self, metadata_files: &[i64], before: i64) -> Result<Step> {
        self.db.write(|tx| {
            let mut step = Step::default();
            let mut counts: HashMap<(String, String), i64> = HashMap::new();
            for &metadata_file in metadata_files {
                let budget = BATCH - step.conversations;
                let convs: Vec<(i64, String, String)> = tx.query_map(
                    "SELECT id, tenant, state FROM conversations WHERE metadata_file_id = ?1
                       AND state IN ('forwarded', 'rejected', 'expired') AND changed_at < ?2 LIMIT ?3",
                    params![metadata_file, before, budget as i64],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?;
                for (id, tenant, state) in &convs {
                    forget_conversation(&tx, *id)?;
                    *counts.entry((tenant.clone(), state.clone())).or_default() += 1;
                }
                step.conversations += convs.len();
                if convs.len() == budget {
                    // Out of room: this file is taken up again by the next transaction.
                    break;
                }
                step.consumed += 1;
                let left: i64 = tx.query_row(
                    "SELECT count(*) FROM conversations WHERE metadata_file_id = ?1",
                    params![metadata_file],
                    |r| r.get(0),
                )?;
                if left == 0 {
                    forget_metadata_file(&tx, metadata_file)?;
                    step.metadata_files += 1;
                }
            }
            // The counts keep what is forgotten (the delete trigger took it off).
            for ((tenant, state), n) in counts {
                tx.execute(
                    "UPDATE conversation_counts SET n = n + ?3 WHERE tenant = ?1 AND state = ?2",
                    params![tenant, state, n],
                )?;
            }
            Ok(step)
        })
    }

    /// Orphan recordings (named by no row) deleted before `before`: their records go too.
    fn prune_orphans(&self, before: i64) -> Result<usize> {
        self.db.write(|tx| {
            let n = tx.execute(
                "DELETE FROM files WHERE id IN (
                    SELECT f.id FROM files f WHERE f.state IN ('purged', 'gone') AND f.left_at < ?1
                      AND f.orphan_since IS NOT NULL
                      AND NOT EXISTS (SELECT 1 FROM recordings r WHERE r.file_id = f.id)
                    LIMIT ?2)",
                params![before, BATCH as i64],
            )?;
            Ok(n)
        })
    }
}

/// Forgets a file's record once it has left the drop folder and nothing names it.
fn forget_file_if_unnamed(tx: &dyn Sql, file: i64) -> Result<()> {
    tx.execute(
        "DELETE FROM files WHERE id = ?1 AND state IN ('purged', 'gone')
           AND NOT EXISTS (SELECT 1 FROM recordings WHERE file_id = ?1)
           AND NOT EXISTS (SELECT 1 FROM metadata_files WHERE file_id = ?1)",
        params![file],
    )?;
    Ok(())
}

/// What one transaction of pruning did.
#[derive(Debug, Default)]
struct Step {
    conversations: usize,
    metadata_files: usize,
    /// How many of the metadata files given were dealt with (forgotten, or kept for good).
    consumed: usize,
}

/// A conversation with its recordings and deliveries; its recording files' records too, once
/// nothing names them.
fn forget_conversation(tx: &dyn Sql, id: i64) -> Result<()> {
    let files: Vec<Option<i64>> = tx.query_map(
        "DELETE FROM recordings WHERE conversation = ?1 RETURNING file_id",
        params![id],
        |r| r.get(0),
    )?;
    tx.execute("DELETE FROM deliveries WHERE conversation = ?1", params![id])?;
    tx.execute("DELETE FROM conversations WHERE id = ?1", params![id])?;
    for file in files.into_iter().flatten() {
        forget_file_if_unnamed(tx, file)?;
    }
    Ok(())
}

/// A metadata file none of whose rows is left: its refusals and records.
fn forget_metadata_file(tx: &dyn Sql, metadata_file: i64) -> Result<()> {
    use super::sql::{Optional, params};
    tx.execute(
        "DELETE FROM refusals WHERE metadata_file_id = ?1",
        params![metadata_file],
    )?;
    let file: Option<i64> = tx
        .query_row(
            "DELETE FROM metadata_files WHERE id = ?1 RETURNING file_id",
            params![metadata_file],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(file) = file {
        forget_file_if_unnamed(tx, file)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    /// A purged metadata file of `tenant` with conversations in `states`, all ended at 0.
    fn batch(cat: &Catalog, tenant: &str, states: &[&str]) -> i64 {
        cat.sql(|conn| {
            let file: i64 = conn.query_row(
                "INSERT INTO files (tenant, rel_path, dir, name, stem, kind, via, size, mtime_ns, arrived_at, state, left_at)
                 VALUES (?1, 'b.csv', '', 'b.csv', 'b', 'metadata', 'sftp', 1, 0, 0, 'purged', 0) RETURNING id",
                params![tenant],
                |r| r.get(0),
            )?;
            let m: i64 = conn.query_row(
                "INSERT INTO metadata_files (file_id, tenant, rel_path, dir, format, via, status, received_at)
                 VALUES (?1, ?2, 'b.csv', '', 'csv', 'sftp', 'parsed', 0) RETURNING id",
                params![file, tenant],
                |r| r.get(0),
            )?;
            for (row, state) in states.iter().enumerate() {
                conn.execute(
                    "INSERT INTO conversations (tenant, conversation_id, metadata_file_id, row_no, dir, state, via, received_at, changed_at)
                     VALUES (?1, ?2, ?3, ?4, '', ?5, 'sftp', 0, 0)",
                    params![tenant, format!("C-{m}-{row}"), m, row as i64 + 2, state],
                )?;
            }
            Ok(m)
        })
    }

    fn counts(cat: &Catalog) -> Vec<(String, String, i64)> {
        cat.sql(|conn| {
            conn.query_map(
                "SELECT tenant, state, n FROM conversation_counts WHERE n > 0 ORDER BY 1, 2",
                params![],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
        })
    }

    fn rows(cat: &Catalog) -> i64 {
        cat.sql(|c| c.query_row("SELECT count(*) FROM conversations", params![], |r| r.get(0)))
    }

    #[test]
    fn ended_batches_are_forgotten_in_bounded_steps_and_stay_counted() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        batch(&cat, "a", &vec!["forwarded"; BATCH * 2 + 3]);
        for _ in 0..5 {
            batch(&cat, "a", &["rejected"]);
        }
        let open = batch(&cat, "b", &["forwarded", "waiting"]);
        let pruned = cat.history().prune(1000, usize::MAX).unwrap();
        assert_eq!(pruned.conversations, BATCH * 2 + 3 + 5);
        assert_eq!(pruned.metadata_files, 6);
        assert_eq!(rows(&cat), 2, "the batch with an open row is kept whole");
        assert_eq!(
            counts(&cat),
            [
                ("a".into(), "forwarded".into(), (BATCH * 2 + 3) as i64),
                ("a".into(), "rejected".into(), 5),
                ("b".into(), "forwarded".into(), 1),
                ("b".into(), "waiting".into(), 1),
            ]
        );
        // Nothing is left to do: a second pass forgets nothing.
        assert_eq!(cat.history().prune(1000, usize::MAX).unwrap(), Pruned::default());
        let m: i64 = cat.sql(|c| {
            c.query_row(
                "SELECT count(*) FROM metadata_files WHERE id = ?1",
                params![open],
                |r| r.get(0),
            )
        });
        assert_eq!(m, 1);
    }

    #[test]
    fn a_row_queued_again_between_the_look_and_the_delete_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        let m = batch(&cat, "a", &["expired", "forwarded"]);
        let found = cat.history().prunable_metadata_files(1000, (i64::MIN, 0)).unwrap();
        assert_eq!(found.iter().map(|(_, id)| *id).collect::<Vec<_>>(), [m]);
        // `dropsync retry` (another process) gives the expired row another grace meanwhile.
        cat.sql(|c| {
            c.execute(
                "UPDATE conversations SET state = 'waiting' WHERE state = 'expired'",
                params![],
            )
        });
        let step = cat.history().prune_some(&[m], 1000).unwrap();
        assert_eq!((step.conversations, step.metadata_files, step.consumed), (1, 0, 1));
        assert_eq!(rows(&cat), 1);
        assert_eq!(
            counts(&cat),
            [("a".into(), "forwarded".into(), 1), ("a".into(), "waiting".into(), 1)]
        );
    }
}
