//! What every HTTP upload flow shares: a call's metadata waiting for its recording
//! (`state_dir/http/pending/<upload>.json`, small, written atomically), and the recording's body
//! streamed into `api/<upload>/` of the tenant's drop folder through the arrival path (quota
//! granted as bytes come, hashed as written), its metadata written beside it as a one-row JSON
//! file in the tenant's own columns, both made durable as one batch and announced with their
//! digests: from there on it is any other arrival.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::StatusCode;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::calls::UploadState;
use super::error::ApiError;
use super::fields::conversation_id;
use crate::arrival::file::Background;
use crate::arrival::{Arrived, ArrivingFile, Batch, Placement, Replace, Via, WriteStop};
use crate::dropbox::RelPath;
use crate::ingress::IngressEvent;
use crate::tenant::{Mapping, TenantId, TimeColumns};

/// A call's metadata, waiting for its recording.
#[derive(Serialize, Deserialize)]
pub struct PendingCall {
    pub tenant: String,
    pub conversation_id: String,
    /// The metadata row in the tenant's own columns (its recording's column filled at upload).
    pub row: Map<String, Value>,
    /// What the recording's and the metadata file's names start with ([`file_stem`]).
    #[serde(default)]
    pub stem: Option<String>,
}

/// A [`PendingCall`] and where it is kept.
pub struct Pending {
    path: PathBuf,
    pub call: PendingCall,
}

impl Pending {
    /// Keeps `call` as upload `upload`'s, durably.
    pub async fn write(dir: &Path, upload: &str, call: &PendingCall) -> Result<(), ApiError> {
        let what = "keeping the metadata failed";
        let bytes = serde_json::to_vec(call).map_err(|e| ApiError::internal(what, e))?;
        let path = dir.join(format!("{upload}.json"));
        super::blocking(what, move || crate::fsutil::write_atomic(&path, &bytes)).await
    }

    /// Upload `upload`'s call; 404 if there is none (completed, or never asked for).
    pub fn read(dir: &Path, upload: &str) -> Result<Pending, ApiError> {
        let path = dir.join(format!("{upload}.json"));
        let bytes = std::fs::read(&path)
            .map_err(|_| ApiError::not_found("no such upload (it was completed, or never asked for)"))?;
        let call = serde_json::from_slice(&bytes).map_err(|e| ApiError::internal("reading the metadata failed", e))?;
        Ok(Pending { path, call })
    }
}

/// The tenant an upload URL names, if it is still configured (a removed tenant's URLs stop).
pub fn live_tenant(s: &UploadState, raw: &str) -> Result<TenantId, ApiError> {
    let tenant = TenantId::parse(raw).map_err(ApiError::not_found)?;
    if s.http.config.get().tenant(tenant.as_str()).is_none() {
        return Err(ApiError::forbidden(format!("tenant {tenant} no longer exists")));
    }
    Ok(tenant)
}

/// Keeps a call's metadata until its recording comes: its row in the tenant's own columns (each
/// field not in `consumed`, then the mapped ones), its conversation id the `conversation_id`
/// field's, or one made from the upload's. Returns the upload's id and the conversation's.
pub async fn await_recording(
    s: &UploadState,
    tenant: &TenantId,
    mapping: &Mapping,
    fields: &Map<String, Value>,
    consumed: &[&str],
    agent: &str,
    at: chrono::NaiveDateTime,
) -> Result<(String, String), ApiError> {
    let upload = new_upload_id();
    let conversation_id = conversation_id(fields)?.unwrap_or_else(|| format!("api-{upload}"));
    let stem = file_stem(mapping, &conversation_id)?;
    let row = tenant_row(fields, consumed, mapping, &conversation_id, agent, at);
    let call = PendingCall {
        tenant: tenant.to_string(),
        conversation_id: conversation_id.clone(),
        row,
        stem: Some(stem),
    };
    Pending::write(&s.pending, &upload, &call).await?;
    Ok((upload, conversation_id))
}

pub fn new_upload_id() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

/// What a conversation's files in its upload folder are named after. The conversation id
/// itself when it can name a file, so that the same call sent again carries the same names
/// (a re-send is identical, or `updated`, by its content, names included); and it must, when
/// the tenant's mapping finds a recording by the conversation id or the id by a file's stem.
/// Otherwise a digest of the id, which is as stable.
pub fn file_stem(mapping: &Mapping, conversation_id: &str) -> Result<String, ApiError> {
    // `;` separates a row's recordings; `<id>.json` must stay a metadata file's name.
    let usable = !conversation_id.is_empty()
        && conversation_id.len() <= 200
        && !conversation_id.starts_with('.')
        && !conversation_id
            .chars()
            .any(|c| c == '/' || c == '\\' || c == ';' || c.is_control())
        && !crate::matching::is_transcript(&format!("{conversation_id}.json"));
    if usable {
        return Ok(conversation_id.to_owned());
    }
    if mapping.conversation_id.is_some() && mapping.recording.is_some() {
        use sha2::Digest;
        return Ok(format!(
            "id-{}",
            &hex::encode(sha2::Sha256::digest(conversation_id))[..32]
        ));
    }
    Err(ApiError::bad_request(
        "conversation_id: cannot name a file (a slash, a semicolon, a leading dot, control characters, \
         a .transcript ending or over 200 bytes), and this tenant's mapping finds recordings by the \
         conversation id",
    ))
}

/// The row in the tenant's own columns: each field not in `consumed`, then the mapped ones.
pub fn tenant_row(
    fields: &Map<String, Value>,
    consumed: &[&str],
    mapping: &Mapping,
    conversation_id: &str,
    agent: &str,
    at: chrono::NaiveDateTime,
) -> Map<String, Value> {
    let mut row: Map<String, Value> = fields
        .iter()
        .filter(|(k, _)| !consumed.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    fill_row(&mut row, mapping, conversation_id, agent, at);
    row
}

/// The row in the tenant's columns (SPEC §5 mapping): what a contact centre's own CSV would say.
fn fill_row(row: &mut Map<String, Value>, mapping: &Mapping, id: &str, agent: &str, at: chrono::NaiveDateTime) {
    if let Some(column) = &mapping.conversation_id {
        row.insert(column.clone(), id.into());
    }
    row.insert(mapping.agent.clone(), agent.into());
    match &mapping.time {
        TimeColumns::Single { column, format: None } => {
            row.insert(column.clone(), at.format("%Y-%m-%dT%H:%M:%S").to_string().into());
        }
        TimeColumns::Single {
            column,
            format: Some(format),
        } => {
            row.insert(column.clone(), at.format(format).to_string().into());
        }
        TimeColumns::Split { date, clock } => {
            row.insert(date.clone(), at.format("%Y-%m-%d").to_string().into());
            row.insert(clock.clone(), at.format("%H:%M:%S").to_string().into());
        }
    }
}

/// Streams the recording in `body` (its size within `size`), writes the call's metadata beside
/// it, makes both durable and announces them; the recording's SHA-256 (hex). Nothing is left if
/// it stops.
pub async fn complete<S, E>(
    s: &UploadState,
    tenant: &TenantId,
    upload: &str,
    pending: Pending,
    body: S,
    size: RangeInclusive<u64>,
) -> Result<String, ApiError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let config = s.http.config.get();
    let body_timeout = config
        .http
        .as_ref()
        .map_or(std::time::Duration::from_secs(60), |h| h.body_timeout);
    let _session = upload_session(s, tenant)?;
    let folder = format!("api/{upload}");
    let Pending { path, call } = pending;
    let stem = call.stem.clone().unwrap_or_else(|| upload.to_owned());
    let named = |head: &[u8]| RelPath::parse(&format!("{folder}/{stem}.{}", sniff(head)));
    let received = receive(s, tenant, named, body, size, body_timeout).await?;
    let mut row = call.row;
    let recording = received.rel().file_name().to_owned();
    if let Some(column) = config.tenant(tenant.as_str()).and_then(|t| t.mapping.recording.clone()) {
        row.insert(column, recording.clone().into());
    }
    let metadata = one_row_file(row)?;
    let meta_rel =
        RelPath::parse(&format!("{folder}/{stem}.json")).ok_or_else(|| ApiError::bad_request("bad upload id"))?;
    let digests = place_all(s, tenant, vec![received], vec![(meta_rel, metadata)]).await?;
    let _ = std::fs::remove_file(&path);
    tracing::info!(tenant = %tenant, conversation = %call.conversation_id, recording = %recording, "call uploaded (http)");
    Ok(digests
        .into_iter()
        .find_map(|(name, digest)| (name == recording).then_some(digest))
        .unwrap_or_default())
}

/// A row as a metadata file: a JSON array of one object.
pub fn one_row_file(row: Map<String, Value>) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec_pretty(&vec![Value::Object(row)])
        .map_err(|e| ApiError::internal("writing the metadata failed", e))
}

/// Writes each of `small` (a call's metadata, a transcript: bytes already in memory) in the
/// tenant's folder, makes them and `received` durable as one batch, and announces them in that
/// order (recordings before the metadata that names them, the fast path): the
/// SHA-256 (hex) of each by file name. Nothing of them is left if writing fails; if putting some
/// in place fails, those that were put in place are announced, and the answer is the failure.
pub async fn place_all(
    s: &UploadState,
    tenant: &TenantId,
    received: Vec<crate::arrival::Written>,
    small: Vec<(RelPath, Vec<u8>)>,
) -> Result<Vec<(String, String)>, ApiError> {
    let (drops, quota, owner) = (s.drops.clone(), s.limits.clone(), tenant.clone());
    let placed = tokio::task::spawn_blocking(move || -> Result<Placement, ApiError> {
        let io = |e: std::io::Error| ApiError::internal("storing the upload failed", e);
        let mut batch = Batch::new();
        let mut held = received;
        for (rel, bytes) in small {
            let written = write_small(&drops, &quota, &owner, rel, &bytes);
            match written {
                Ok(w) => held.push(w),
                Err(e) => {
                    held.into_iter().for_each(crate::arrival::Written::discard);
                    return Err(e);
                }
            }
        }
        let mut held = held.into_iter();
        for w in held.by_ref() {
            if let Err(e) = batch.add(w) {
                held.for_each(crate::arrival::Written::discard);
                return Err(io(e));
            }
        }
        batch.place(Replace::Allowed).map_err(io)
    })
    .await
    .map_err(|e| ApiError::internal("storing the upload failed", e))??;
    // What was put in place is announced even if some of it failed: it is in the folder.
    let failed = placed
        .failed
        .first()
        .map(|(rel, e)| ApiError::internal("storing the upload failed", format!("{}: {e}", rel.as_str())));
    let mut digests = Vec::new();
    for p in placed.placed {
        if let Some(d) = &p.digest {
            digests.push((p.rel.file_name().to_owned(), hex::encode(d.sha256)));
        }
        let _ = s
            .events
            .send(IngressEvent::Arrived(Arrived {
                tenant: tenant.clone(),
                rel: p.rel,
                via: Via::Http,
                digest: p.digest,
            }))
            .await;
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(digests),
    }
}

/// One small file written (not yet durable) under the tenant's quota.
fn write_small(
    drops: &crate::dropbox::DropRoot,
    quota: &Arc<crate::limits::Limits>,
    owner: &TenantId,
    rel: RelPath,
    bytes: &[u8],
) -> Result<crate::arrival::Written, ApiError> {
    let io = |e: std::io::Error| ApiError::internal("storing the upload failed", e);
    let dir = Arc::new(
        drops
            .confined(owner)
            .and_then(|c| c.ensure_dir(rel.dir()))
            .map_err(io)?,
    );
    let grant = quota
        .open_file(owner, rel.file_name())
        .map_err(|e| ApiError::forbidden(format!("quota: {e}")))?;
    let mut file = ArrivingFile::create(dir, rel, Some(grant)).map_err(io)?;
    if let Err(e) = file.append(bytes) {
        file.discard();
        return Err(write_stop(e));
    }
    file.finish().map_err(io)
}

/// An upload in progress, counted with the tenant's SFTP sessions (`quota.sessions`); 403 past it.
pub fn upload_session(s: &UploadState, tenant: &TenantId) -> Result<crate::limits::SessionGrant, ApiError> {
    s.limits
        .open_session(tenant)
        .map_err(|e| ApiError::forbidden(format!("quota: {e}")))
}

pub fn too_large(max: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("larger than {} (http.max_upload_bytes)", bytesize::ByteSize::b(max)),
    )
}

fn write_stop(e: WriteStop) -> ApiError {
    match e {
        WriteStop::Quota(q) => ApiError::forbidden(format!("quota: {q}")),
        WriteStop::Io(e) => ApiError::internal("storing the upload failed", e),
    }
}

/// Streams a file of a batch into `rel`, durable, not announced (its name is one of ours).
pub async fn receive_held<S, E>(s: &UploadState, tenant: &TenantId, rel: RelPath, body: S) -> Result<(), ApiError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let config = s.http.config.get();
    let limits = config
        .http
        .as_ref()
        .ok_or_else(|| ApiError::not_found("no upload API"))?;
    let _session = upload_session(s, tenant)?;
    let written = receive(
        s,
        tenant,
        |_| Some(rel),
        body,
        1..=limits.max_upload_bytes,
        limits.body_timeout,
    )
    .await?;
    let placed = tokio::task::spawn_blocking(move || {
        let mut batch = Batch::new();
        batch.add(written)?;
        batch.place(Replace::Allowed)
    })
    .await
    .map_err(|e| ApiError::internal("storing the upload failed", e))?
    .map_err(|e| ApiError::internal("storing the upload failed", e))?;
    match placed.failed.first() {
        Some((rel, e)) => Err(ApiError::internal(
            "storing the upload failed",
            format!("{}: {e}", rel.as_str()),
        )),
        None => Ok(()),
    }
}

/// Streams the body into the file `name` gives for its first bytes; written, not yet durable.
/// Nothing is left if it stops.
pub async fn receive<S, E>(
    s: &UploadState,
    tenant: &TenantId,
    name: impl FnOnce(&[u8]) -> Option<RelPath>,
    mut stream: S,
    size: RangeInclusive<u64>,
    body_timeout: std::time::Duration,
) -> Result<crate::arrival::Written, ApiError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let max = *size.end();
    let first = next_chunk(&mut stream, body_timeout)
        .await?
        .ok_or_else(|| ApiError::bad_request("the recording is empty"))?;
    let rel = name(&first).ok_or_else(|| ApiError::bad_request("bad upload id"))?;
    let grant = s
        .limits
        .open_file(tenant, rel.file_name())
        .map_err(|e| ApiError::forbidden(format!("quota: {e}")))?;
    let (drops, owner) = (s.drops.clone(), tenant.clone());
    let file = tokio::task::spawn_blocking(move || {
        let dir = drops.confined(&owner)?.ensure_dir(rel.dir())?;
        ArrivingFile::create(Arc::new(dir), rel, Some(grant))
    })
    .await
    .map_err(|e| ApiError::internal("storing the upload failed", e))?
    .map_err(|e| ApiError::internal("storing the upload failed", e))?;
    let mut writer = Background::start(file);
    let mut total = 0u64;
    let mut chunk = Some(first);
    let stopped = loop {
        let Some(bytes) = chunk.take() else { break None };
        total += bytes.len() as u64;
        if total > max {
            break Some(too_large(max));
        }
        let mut buf = writer.buffer(bytes.len());
        buf.extend_from_slice(&bytes);
        if let Err(e) = writer.write(buf).await {
            break Some(write_stop(e));
        }
        chunk = match next_chunk(&mut stream, body_timeout).await {
            Ok(c) => c,
            Err(e) => break Some(e),
        };
    };
    let stopped = stopped.or_else(|| {
        (total < *size.start()).then(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("{total} bytes, fewer than the {} the upload asks for", size.start()),
            )
        })
    });
    metrics::counter!("dropsync_received_bytes_total", "via" => "http").increment(total);
    if let Some(e) = stopped {
        writer.discard().await;
        return Err(e);
    }
    writer.finish().await.map_err(write_stop)
}

/// The body's next chunk; `None` at its end. A body that stops coming for `timeout` ends it.
async fn next_chunk<S, E>(stream: &mut S, timeout: std::time::Duration) -> Result<Option<Bytes>, ApiError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    match tokio::time::timeout(timeout, stream.next()).await {
        Err(_) => Err(ApiError::bad_request("the body stopped coming (http.body_timeout)")),
        Ok(None) => Ok(None),
        Ok(Some(Err(e))) => Err(ApiError::bad_request(format!("the body could not be read: {e}"))),
        Ok(Some(Ok(chunk))) => Ok(Some(chunk)),
    }
}

/// A recording's kind from its first bytes (the names intake knows formats by).
fn sniff(head: &[u8]) -> &'static str {
    if head.starts_with(b"RIFF") {
        "wav"
    } else if head.starts_with(b"fLaC") {
        "flac"
    } else if head.starts_with(b"OggS") {
        "ogg"
    } else if head.get(4..8) == Some(b"ftyp") {
        "m4a"
    } else if head.starts_with(b"FORM") {
        "aiff"
    } else if head.starts_with(b"ID3") || (head.len() > 1 && head[0] == 0xFF && head[1] & 0xE0 == 0xE0) {
        "mp3"
    } else {
        "bin"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_named_after_the_conversation_when_it_can_name_one() {
        let both = Mapping::default();
        assert_eq!(file_stem(&both, "C-1").unwrap(), "C-1");
        // Ids that cannot name a file, or would be read as something else, are named by digest.
        for id in ["a/b", "x.Transcript", "c;d", ".hidden", &"é".repeat(101)] {
            let stem = file_stem(&both, id).unwrap();
            assert!(stem.starts_with("id-") && stem.len() == 35, "{id}: {stem}");
            assert_eq!(stem, file_stem(&both, id).unwrap(), "the same every time");
        }
        // Where the mapping finds the recording by the id itself, such an id is refused.
        let by_id = Mapping {
            recording: None,
            ..Mapping::default()
        };
        assert_eq!(file_stem(&by_id, "C-1").unwrap(), "C-1");
        assert!(file_stem(&by_id, "c;d").is_err());
        assert!(file_stem(&by_id, "x.transcript").is_err());
    }
}
