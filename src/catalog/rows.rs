//! A metadata row becoming a submission of its conversation, and a conversation whose
//! recordings are all in being decided: identical to what went out (done), or ready to forward.

use super::sql::{Optional, Sql, params};

use super::files::RowInput;
use super::{ConvState, Result};
use crate::matching::join::{LastSent, Lookup, Resend, content_hash};
use crate::matching::{RecordingRef, RowVerdict};

pub(super) fn is_complete(tx: &dyn Sql, conv: i64) -> Result<bool> {
    let open: i64 = tx.query_row(
        "SELECT count(*) FROM recordings WHERE conversation = ?1 AND file_id IS NULL",
        params![conv],
        |r| r.get(0),
    )?;
    Ok(open == 0)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn add_row(
    tx: &dyn Sql,
    metadata_file_id: i64,
    tenant: &str,
    dir: &str,
    via: &str,
    file_name: &str,
    row: &RowInput,
    now: i64,
    grace_ms: i64,
    decided: &mut Vec<i64>,
) -> Result<usize> {
    let insert_rejected = |conv_id: Option<&str>, recording: Option<&str>, reason: &str| -> Result<usize> {
        tx.execute("INSERT INTO conversations (tenant, conversation_id, metadata_file_id, row_no, dir, recording_text, state, detail, via, received_at, changed_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'rejected', ?7, ?8, ?9, ?9)", params![tenant, conv_id, metadata_file_id, row.row_no as i64, dir, recording, reason, via, now])?;
        Ok(0)
    };
    let sub = match &row.verdict {
        RowVerdict::Rejected {
            conversation_id,
            recording,
            reason,
        } => {
            return insert_rejected(conversation_id.as_deref(), recording.as_deref(), reason);
        }
        RowVerdict::Accepted(sub) => sub,
    };
    let recording_text: Vec<String> = sub.recordings.iter().map(RecordingRef::display).collect();
    let recording_text = recording_text.join(";");
    let earlier: Option<i64> = tx
        .query_row("SELECT row_no FROM conversations WHERE metadata_file_id = ?1 AND conversation_id = ?2 AND state != 'rejected' LIMIT 1", params![metadata_file_id, sub.conversation_id], |r| r.get(0))
        .optional()?;
    if let Some(earlier) = earlier {
        let reason = format!(
            "conversation_id {:?} is already used by row {earlier} of this file",
            sub.conversation_id
        );
        return insert_rejected(Some(&sub.conversation_id), Some(&recording_text), &reason);
    }
    // A later send of the same conversation replaces an earlier one that has not gone out yet.
    tx.execute(
        "UPDATE conversations SET state = 'rejected', changed_at = ?4, detail = ?3
         WHERE tenant = ?1 AND conversation_id = ?2 AND state IN ('waiting', 'ready', 'failed', 'expired', 'held')",
        params![
            tenant,
            sub.conversation_id,
            format!("replaced by a later send: row {} of {file_name}", row.row_no),
            now
        ],
    )?;
    let fields = serde_json::Value::Object(
        sub.fields
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect(),
    );
    let conv: i64 = tx.query_row("INSERT INTO conversations (tenant, conversation_id, metadata_file_id, row_no, dir, recording_text, state, agent, contact_time, fields, via, received_at, deadline, changed_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'waiting', ?7, ?8, ?9, ?10, ?11, ?12, ?11) RETURNING id", params![
        tenant,
        sub.conversation_id,
        metadata_file_id,
        row.row_no as i64,
        dir,
        recording_text,
        sub.agent,
        sub.contact_time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        fields.to_string(),
        via,
        now,
        now.saturating_add(grace_ms)
    ], |r| r.get(0))?;

    let mut all_present = true;
    for (pos, rec) in sub.recordings.iter().enumerate() {
        let (name, stem) = match rec.lookup() {
            Lookup::Name(n) => (Some(n), None),
            Lookup::Stem(s) => (None, Some(s)),
        };
        // The newest present recording of that name (or stem) in the same folder.
        // Two statements rather than `name = ? OR stem = ?`, which defeats both indexes.
        let sql = if name.is_some() {
            "SELECT id FROM files WHERE tenant = ?1 AND dir = ?2 AND name = ?3 AND state = 'present' AND kind = 'recording'
             ORDER BY arrived_at DESC, id DESC LIMIT 1"
        } else {
            "SELECT id FROM files WHERE tenant = ?1 AND dir = ?2 AND stem = ?3 AND state = 'present' AND kind = 'recording'
             ORDER BY arrived_at DESC, id DESC LIMIT 1"
        };
        let file: Option<i64> = tx
            .query_row(sql, params![tenant, dir, name.or(stem)], |r| r.get(0))
            .optional()?;
        if let Some(file) = file {
            tx.execute(
                "UPDATE files SET orphan_since = NULL WHERE id = ?1 AND orphan_since IS NOT NULL",
                params![file],
            )?;
        }
        all_present &= file.is_some();
        tx.execute("INSERT INTO recordings (conversation, position, tenant, dir, name, stem, file_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)", params![conv, pos as i64, tenant, dir, name, stem, file])?;
    }
    if all_present {
        make_ready(tx, conv, now, decided)?;
        return Ok(1);
    }
    Ok(0)
}

/// A conversation whose recordings are all in, decided by the re-send rule
/// ([`crate::matching::join::Resend`]) against the send forwarded last, and the verdict applied.
/// Appends to `decided` the files an identical re-send no longer needs.
pub(super) fn make_ready(tx: &dyn Sql, conv: i64, now: i64, decided: &mut Vec<i64>) -> Result<()> {
    // A recording that is not audio rejects its row, with the reason, before anything is sent.
    let recordings = recordings_of(tx, conv)?;
    if let Some(r) = recordings.iter().find(|r| r.audio_error.is_some()) {
        let why = r.audio_error.as_deref().unwrap_or_default();
        tx.execute(
            "UPDATE conversations SET state = 'rejected', detail = ?2, changed_at = ?3 WHERE id = ?1",
            params![conv, format!("{} is {why}", r.name), now],
        )?;
        return Ok(());
    }
    let (tenant, conversation_id, hash) = hash_with(tx, conv, &recordings)?;
    let last: Option<(String, String, i64)> = tx
        .query_row("SELECT c.content_hash, m.rel_path, c.row_no FROM conversations c JOIN metadata_files m ON m.id = c.metadata_file_id
             WHERE c.tenant = ?1 AND c.conversation_id = ?2 AND c.state = 'forwarded' AND c.id != ?3
             ORDER BY c.forwarded_at DESC, c.id DESC LIMIT 1", params![tenant, conversation_id, conv], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let last = last.as_ref().map(|(content_hash, metadata_file, row_no)| LastSent {
        content_hash,
        metadata_file,
        row_no: *row_no,
    });
    match Resend::decide(last, &hash) {
        Resend::Identical { detail } => {
            tx.execute("UPDATE conversations SET state = 'forwarded', content_hash = ?2, forwarded_at = ?3, changed_at = ?3, detail = ?4 WHERE id = ?1", params![conv, hash, now, detail])?;
            decided.extend(super::queue::files_of(tx, conv)?);
        }
        resend => {
            tx.execute("UPDATE conversations SET state = ?2, content_hash = ?3, updated = ?4, next_attempt_at = ?5, attempts = 0,
                        detail = NULL, changed_at = ?5 WHERE id = ?1", params![conv, ConvState::Ready.as_str(), hash, resend == Resend::Updated, now])?;
        }
    }
    Ok(())
}

/// A conversation's (tenant, conversation_id, content hash) as its recordings stand now.
pub(super) fn conversation_hash(tx: &dyn Sql, conv: i64) -> Result<(String, String, String)> {
    hash_with(tx, conv, &recordings_of(tx, conv)?)
}

/// A recording of a conversation, as its file stands.
struct RecordingFile {
    name: String,
    sha256: Option<String>,
    /// Why its file is not audio, if it is not.
    audio_error: Option<String>,
}

/// The files of `conv`'s recordings that are in, in position order.
fn recordings_of(tx: &dyn Sql, conv: i64) -> Result<Vec<RecordingFile>> {
    tx.query_map(
        "SELECT f.name, f.sha256, f.audio_error FROM recordings r JOIN files f ON f.id = r.file_id
         WHERE r.conversation = ?1 ORDER BY r.position",
        params![conv],
        |r| {
            Ok(RecordingFile {
                name: r.get(0)?,
                sha256: r.get(1)?,
                audio_error: r.get(2)?,
            })
        },
    )
}

/// [`conversation_hash`] with `conv`'s recordings already read.
fn hash_with(tx: &dyn Sql, conv: i64, recordings: &[RecordingFile]) -> Result<(String, String, String)> {
    let (tenant, conversation_id, agent, contact_time, fields): (String, String, String, String, String) = tx
        .query_row(
            "SELECT tenant, conversation_id, agent, contact_time, fields FROM conversations WHERE id = ?1",
            params![conv],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )?;
    let hash = content_hash(
        &agent,
        &contact_time,
        &fields,
        recordings.iter().map(|r| (r.name.as_str(), r.sha256.as_deref())),
    );
    Ok((tenant, conversation_id, hash))
}
