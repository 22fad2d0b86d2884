//! One call at a time (SPEC §10): `POST /api/v2/workspace/{tenant}/conversation/upload_data/`
//! takes the call's metadata and answers with a signed upload URL; `PUT` of the recording to it
//! completes the conversation. `GET /api/v1/calls` lists the tenant's conversations.
//!
//! The metadata waits in `state_dir/http/pending/<upload>.json` (small, written atomically)
//! until its recording comes. The PUT streams the recording into `api/<upload>/` of the
//! tenant's drop folder through the arrival path (quota granted as bytes come, hashed as
//! written), writes the metadata beside it as a one-row JSON file in the tenant's own columns,
//! makes both durable as one batch, and announces them: from there on it is any other arrival.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use chrono::{NaiveDate, NaiveTime};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody};
use super::signed::{SignError, Signer};
use super::{HttpShared, TenantCaller};
use crate::arrival::file::Background;
use crate::arrival::{Arrived, ArrivingFile, Batch, Placement, Replace, Via, WriteStop};
use crate::catalog::{Catalog, ConvState};
use crate::dropbox::{DropRoot, RelPath};
use crate::ingress::IngressEvent;
use crate::limits::Limits;
use crate::tenant::{Mapping, TenantId, TimeColumns};

/// What the upload side needs.
#[derive(Clone)]
pub struct UploadState {
    pub http: HttpShared,
    pub signer: Arc<Signer>,
    pub drops: DropRoot,
    pub limits: Arc<Limits>,
    pub events: mpsc::Sender<IngressEvent>,
    pub catalog: Catalog,
    /// `state_dir/http/pending`.
    pub pending: PathBuf,
}

impl axum::extract::FromRef<UploadState> for HttpShared {
    fn from_ref(state: &UploadState) -> HttpShared {
        state.http.clone()
    }
}

/// A call's metadata, waiting for its recording.
#[derive(Serialize, Deserialize)]
struct PendingCall {
    tenant: String,
    conversation_id: String,
    /// The metadata row in the tenant's own columns (its recording's column filled at PUT).
    row: Map<String, Value>,
}

#[derive(Serialize, ToSchema)]
pub struct UploadData {
    pub conversation_id: String,
    /// PUT the recording here (no Authorization header).
    pub upload_url: String,
    pub expires_in: u64,
}

/// Fields this flow reads; any others are kept as columns of their own.
const KNOWN: [&str; 4] = ["call_date", "call_time", "agent", "conversation_id"];

#[utoipa::path(post, path = "/api/v2/workspace/{tenant}/conversation/upload_data/", tag = "upload",
    params(("tenant" = String, Path, description = "the token's tenant")),
    request_body(content = Object, description = "call_date (YYYY-MM-DD), call_time (hh:mm:ss), agent; optional conversation_id, channel_id, direction, language, speakers and any other fields"),
    responses((status = 200, body = UploadData), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn upload_data(
    TenantCaller(caller): TenantCaller,
    State(s): State<UploadState>,
    Path(tenant): Path<String>,
    body: Result<Json<Map<String, Value>>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<UploadData>, ApiError> {
    if tenant != caller.as_str() {
        return Err(ApiError::forbidden(format!("the token is not {tenant:?}'s")));
    }
    let Json(fields) = body?;
    let config = s.http.config.get();
    let mapping = &config
        .tenant(caller.as_str())
        .ok_or_else(ApiError::unauthorized)?
        .mapping;
    let mut problems = Vec::new();
    let date = required(
        &fields,
        "call_date",
        "a date like 2024-08-06 (YYYY-MM-DD)",
        &mut problems,
        |v| NaiveDate::parse_from_str(v, "%Y-%m-%d").ok(),
    );
    let time = required(
        &fields,
        "call_time",
        "a time like 09:15:00 (hh:mm:ss)",
        &mut problems,
        |v| NaiveTime::parse_from_str(v, "%H:%M:%S").ok(),
    );
    let agent = required(&fields, "agent", "text", &mut problems, |v| Some(v.to_owned()));
    let (Some(date), Some(time), Some(agent)) = (date, time, agent) else {
        let mut e = ApiError::bad_request("the call's metadata is missing or malformed fields");
        e.details = problems;
        return Err(e);
    };
    let upload = hex::encode(rand::random::<[u8; 8]>());
    let conversation_id = text(&fields, "conversation_id").map_or_else(|| format!("api-{upload}"), str::to_owned);
    let mut row = Map::new();
    for (key, value) in &fields {
        if !KNOWN.contains(&key.as_str()) {
            row.insert(key.clone(), value.clone());
        }
    }
    fill_row(&mut row, mapping, &conversation_id, &agent, date.and_time(time));
    let pending = PendingCall {
        tenant: caller.to_string(),
        conversation_id: conversation_id.clone(),
        row,
    };
    let bytes = serde_json::to_vec(&pending).map_err(|e| ApiError::internal("keeping the metadata failed", e))?;
    let path = s.pending.join(format!("{upload}.json"));
    tokio::task::spawn_blocking(move || crate::fsutil::write_atomic(&path, &bytes))
        .await
        .map_err(|e| ApiError::internal("keeping the metadata failed", e))?
        .map_err(|e| ApiError::internal("keeping the metadata failed", e))?;
    let ttl = s
        .http
        .config
        .get()
        .http
        .as_ref()
        .map_or(3600, |h| h.upload_url_ttl.as_secs());
    let expires = chrono::Utc::now().timestamp() + ttl as i64;
    let target = format!("{caller}/{upload}");
    let base = config.http.as_ref().map(|h| h.public_url.clone()).unwrap_or_default();
    Ok(Json(UploadData {
        conversation_id,
        upload_url: format!(
            "{base}/api/upload/{target}?expires={expires}&signature={}",
            s.signer.sign(&target, expires)
        ),
        expires_in: ttl,
    }))
}

/// A field's text, if it has any.
fn text<'a>(fields: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    fields
        .get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// A required field, parsed; a missing or malformed one is added to `problems`.
fn required<T>(
    fields: &Map<String, Value>,
    key: &str,
    what: &str,
    problems: &mut Vec<String>,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Option<T> {
    let Some(raw) = text(fields, key) else {
        problems.push(format!("{key}: required ({what})"));
        return None;
    };
    let parsed = parse(raw);
    if parsed.is_none() {
        problems.push(format!("{key}: not {what}"));
    }
    parsed
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

#[derive(Deserialize, IntoParams)]
pub struct Signed {
    pub expires: i64,
    pub signature: String,
}

#[utoipa::path(put, path = "/api/upload/{tenant}/{upload}", tag = "upload",
    params(("tenant" = String, Path), ("upload" = String, Path), Signed),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, description = "stored, durable, and announced"), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn put_recording(
    State(s): State<UploadState>,
    Path((tenant, upload)): Path<(String, String)>,
    signed: Result<Query<Signed>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, HeaderMap), ApiError> {
    let Query(signed) = signed.map_err(|_| ApiError::forbidden("the upload URL is not signed (expires, signature)"))?;
    let target = format!("{tenant}/{upload}");
    s.signer
        .verify(
            &target,
            signed.expires,
            &signed.signature,
            chrono::Utc::now().timestamp(),
        )
        .map_err(|e: SignError| ApiError::forbidden(e.to_string()))?;
    let config = s.http.config.get();
    let limits = config
        .http
        .clone()
        .ok_or_else(|| ApiError::not_found("no upload API"))?;
    let tenant = TenantId::parse(&tenant).map_err(ApiError::not_found)?;
    if config.tenant(tenant.as_str()).is_none() {
        return Err(ApiError::forbidden(format!("tenant {tenant} no longer exists")));
    }
    let pending_path = s.pending.join(format!("{upload}.json"));
    let pending: PendingCall = match std::fs::read(&pending_path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|e| ApiError::internal("reading the metadata failed", e))?
        }
        Err(_) => {
            return Err(ApiError::not_found(
                "no such upload (it was completed, or never asked for)",
            ));
        }
    };
    if pending.tenant != tenant.as_str() {
        return Err(ApiError::forbidden("the upload is another tenant's"));
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_upload_bytes) {
        return Err(too_large(limits.max_upload_bytes));
    }
    // Counted with the tenant's SFTP sessions (quota.sessions).
    let _session = s
        .limits
        .open_session(&tenant)
        .map_err(|e| ApiError::forbidden(format!("quota: {e}")))?;
    let folder = format!("api/{upload}");
    let received = receive(&s, &tenant, &folder, &upload, body, &limits).await?;
    let mut row = pending.row;
    let recording = received.rel().file_name().to_owned();
    let mapping = config
        .tenant(tenant.as_str())
        .map(|t| t.mapping.clone())
        .unwrap_or_default();
    if let Some(column) = &mapping.recording {
        row.insert(column.clone(), recording.clone().into());
    }
    let metadata = serde_json::to_vec_pretty(&vec![Value::Object(row)])
        .map_err(|e| ApiError::internal("writing the metadata failed", e))?;
    let (drops, quota, tenant2, meta_rel) = (
        s.drops.clone(),
        s.limits.clone(),
        tenant.clone(),
        RelPath::parse(&format!("{folder}/{upload}.json")).ok_or_else(|| ApiError::bad_request("bad upload id"))?,
    );
    let placed = tokio::task::spawn_blocking(move || -> Result<Placement, ApiError> {
        let io = |e: std::io::Error| ApiError::internal("storing the upload failed", e);
        let dir = Arc::new(
            drops
                .confined(&tenant2)
                .and_then(|c| c.ensure_dir(meta_rel.dir()))
                .map_err(io)?,
        );
        let grant = quota
            .open_file(&tenant2, meta_rel.file_name())
            .map_err(|e| ApiError::forbidden(format!("quota: {e}")))?;
        let mut file = ArrivingFile::create(dir, meta_rel, Some(grant)).map_err(io)?;
        if let Err(e) = file.append(&metadata) {
            file.discard();
            return Err(write_stop(e));
        }
        let mut batch = Batch::new();
        batch.add(received).map_err(io)?;
        batch.add(file.finish().map_err(io)?).map_err(io)?;
        batch.place(Replace::Allowed).map_err(io)
    })
    .await
    .map_err(|e| ApiError::internal("storing the upload failed", e))??;
    if let Some((rel, e)) = placed.failed.first() {
        return Err(ApiError::internal(
            "storing the upload failed",
            format!("{}: {e}", rel.as_str()),
        ));
    }
    let _ = std::fs::remove_file(&pending_path);
    let mut answer = HeaderMap::new();
    for p in placed.placed {
        if p.rel.file_name() == recording
            && let Some(d) = &p.digest
            && let Ok(v) = format!("\"{}\"", hex::encode(d.sha256)).parse()
        {
            answer.insert(header::ETAG, v);
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
    tracing::info!(tenant = %tenant, conversation = %pending.conversation_id, recording = %recording, "call uploaded (http)");
    Ok((StatusCode::OK, answer))
}

fn too_large(max: u64) -> ApiError {
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

/// Streams the body into `folder/<upload>.<kind>`, named by what its first bytes say it is;
/// written, not yet durable. Nothing is left if it stops.
async fn receive(
    s: &UploadState,
    tenant: &TenantId,
    folder: &str,
    upload: &str,
    body: Body,
    limits: &crate::config::HttpConfig,
) -> Result<crate::arrival::Written, ApiError> {
    let mut stream = body.into_data_stream();
    let first = next_chunk(&mut stream, limits.body_timeout)
        .await?
        .ok_or_else(|| ApiError::bad_request("the recording is empty"))?;
    let name = format!("{upload}.{}", sniff(&first));
    let rel = RelPath::parse(&format!("{folder}/{name}")).ok_or_else(|| ApiError::bad_request("bad upload id"))?;
    let grant = s
        .limits
        .open_file(tenant, &name)
        .map_err(|e| ApiError::forbidden(format!("quota: {e}")))?;
    let (drops, tenant2, rel2) = (s.drops.clone(), tenant.clone(), rel.clone());
    let file = tokio::task::spawn_blocking(move || {
        let dir = drops.confined(&tenant2)?.ensure_dir(rel2.dir())?;
        ArrivingFile::create(Arc::new(dir), rel2, Some(grant))
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
        if total > limits.max_upload_bytes {
            break Some(too_large(limits.max_upload_bytes));
        }
        let mut buf = writer.buffer(bytes.len());
        buf.extend_from_slice(&bytes);
        if let Err(e) = writer.write(buf).await {
            break Some(write_stop(e));
        }
        chunk = match next_chunk(&mut stream, limits.body_timeout).await {
            Ok(c) => c,
            Err(e) => break Some(e),
        };
    };
    metrics::counter!("dropsync_received_bytes_total", "via" => "http").increment(total);
    if let Some(e) = stopped {
        writer.discard().await;
        return Err(e);
    }
    writer.finish().await.map_err(write_stop)
}

/// The body's next chunk; `None` at its end. A body that stops coming for `timeout` ends it.
async fn next_chunk(
    stream: &mut axum::body::BodyDataStream,
    timeout: std::time::Duration,
) -> Result<Option<axum::body::Bytes>, ApiError> {
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

#[derive(Deserialize, IntoParams)]
pub struct CallsQuery {
    /// waiting, forwarded, rejected, expired, failed, held, …
    pub status: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct CallView {
    pub id: Option<String>,
    pub state: String,
    pub detail: Option<String>,
    pub contact_time: Option<String>,
    pub duration_ms: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/calls", tag = "upload", params(CallsQuery),
    responses((status = 200, body = [CallView]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list_calls(
    TenantCaller(tenant): TenantCaller,
    State(s): State<UploadState>,
    query: Result<Query<CallsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<CallView>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let state = match q.status.as_deref() {
        None => None,
        Some(st) => Some(ConvState::parse(st).ok_or_else(|| ApiError::bad_request(format!("unknown status {st:?}")))?),
    };
    let catalog = s.catalog.clone();
    let list =
        tokio::task::spawn_blocking(move || catalog.reports().conversations(Some(tenant.as_str()), state, 10_000))
            .await
            .map_err(|e| ApiError::internal("listing calls failed", e))?
            .map_err(|e| ApiError::internal("listing calls failed", e))?;
    Ok(Json(
        list.into_iter()
            .map(|c| CallView {
                id: c.conversation_id,
                state: c.state,
                detail: c.detail,
                contact_time: c.contact_time,
                duration_ms: c.duration_ms,
            })
            .collect(),
    ))
}

pub fn routes(state: UploadState) -> axum::Router {
    use axum::routing::{get, post, put};
    axum::Router::new()
        .route(
            "/api/v2/workspace/{tenant}/conversation/upload_data/",
            post(upload_data),
        )
        .route("/api/upload/{tenant}/{upload}", put(put_recording))
        .route("/api/v1/calls", get(list_calls))
        .with_state(state)
}

/// The upload API's part of `/api/openapi.json`.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(upload_data, put_recording, list_calls),
    components(schemas(UploadData, CallView, ErrorBody))
)]
pub struct UploadApi;
