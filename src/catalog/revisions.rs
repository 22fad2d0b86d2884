//! FTP files that changed after they were pulled: SPEC §2 rule 4 for a recording that changes on
//! the tenant's server. The poller notes the revision before it pulls the new version
//! ([`super::FtpState::ftp_mark_partials`]); when that version arrives, the conversations that
//! went out with the old one are sent again with the new bytes and reported `updated`, rather
//! than the new version becoming an orphan that no row claims.
//!
//! Only a noted revision does this: a file of the same name that arrives otherwise (a new call
//! that reuses a name after the old file was deleted from the server) is a new recording.

use super::sql::{Optional, Sql, params};

use super::queue::OPEN_STATES;
use super::rows::conversation_hash;
use super::{ConvState, Result};
use crate::matching::join::{LastSent, Resend};

/// Whether the recording arriving at `rel_path` with `size` bytes is the revision the poller
/// noted; the note is used up either way.
pub(super) fn take_revision(tx: &dyn Sql, tenant: &str, rel_path: &str, size: u64) -> Result<bool> {
    let noted: Option<i64> = tx
        .query_row(
            "DELETE FROM ftp_revisions WHERE tenant = ?1 AND rel_path = ?2 RETURNING size",
            params![tenant, rel_path],
            |r| r.get(0),
        )
        .optional()?;
    Ok(noted == Some(size as i64))
}

/// Sends again, with recording `file_id` in place of the earlier version at the same path,
/// every conversation whose latest send used that version and that has no newer send of its
/// own. A conversation whose other recordings are no longer kept (purged) cannot be sent whole
/// and stays as it is. A revision whose bytes are those already sent changes nothing (the
/// re-send rule, [`Resend`]): the conversation is not sent again, and the new file is
/// appended to `decided`, free to leave. Returns how many are sent again.
pub(super) fn resend_with_revision(
    tx: &dyn Sql,
    file_id: i64,
    tenant: &str,
    rel_path: &str,
    now: i64,
    decided: &mut Vec<i64>,
) -> Result<usize> {
    type Used = (i64, i64, Option<String>, String, i64);
    let used: Vec<Used> = tx.query_map(
        &format!(
            "SELECT r.conversation, r.file_id, c.content_hash, m.rel_path, c.row_no FROM files f
               JOIN recordings r ON r.file_id = f.id
               JOIN conversations c ON c.id = r.conversation
               JOIN metadata_files m ON m.id = c.metadata_file_id
             WHERE f.tenant = ?1 AND f.rel_path = ?2 AND f.id != ?3 AND f.kind = 'recording' AND c.state = 'forwarded'
               AND NOT EXISTS (SELECT 1 FROM conversations o WHERE o.tenant = c.tenant
                               AND o.conversation_id = c.conversation_id AND o.id != c.id
                               AND (o.state IN {OPEN_STATES}
                                    OR (o.state = 'forwarded' AND (o.forwarded_at, o.id) > (c.forwarded_at, c.id))))"
        ),
        params![tenant, rel_path, file_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
    )?;
    let name = rel_path.rsplit('/').next().unwrap_or(rel_path);
    let mut resent = 0;
    for (conv, old_file, sent_hash, metadata_file, row_no) in used {
        let lost: i64 = tx.query_row(
            "SELECT count(*) FROM recordings r JOIN files f ON f.id = r.file_id
                 WHERE r.conversation = ?1 AND r.file_id != ?2 AND f.state NOT IN ('present', 'leaving', 'archived')",
            params![conv, old_file],
            |r| r.get(0),
        )?;
        if lost > 0 {
            continue;
        }
        tx.execute(
            "UPDATE recordings SET file_id = ?3 WHERE conversation = ?1 AND file_id = ?2",
            params![conv, old_file, file_id],
        )?;
        let (_, _, hash) = conversation_hash(tx, conv)?;
        let last = sent_hash.as_deref().map(|content_hash| LastSent {
            content_hash,
            metadata_file: &metadata_file,
            row_no,
        });
        if let Resend::Identical { .. } = Resend::decide(last, &hash) {
            if !decided.contains(&file_id) {
                decided.push(file_id);
            }
            continue;
        }
        tx.execute("UPDATE conversations SET state = ?2, content_hash = ?3, updated = 1, next_attempt_at = ?4, attempts = 0,
                    detail = ?5, changed_at = ?4 WHERE id = ?1", params![
            conv,
            ConvState::Ready.as_str(),
            hash,
            now,
            format!("{name} changed on the FTP server after this conversation was forwarded: sending it again with the new version")
        ])?;
        resent += 1;
    }
    Ok(resent)
}
