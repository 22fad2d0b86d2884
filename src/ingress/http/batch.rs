//! Batch upload (SPEC §10), three steps: `POST /api/v1/calls/upload` hands out two signed
//! upload URLs (the metadata file and the zip of recordings); each `PUT` is held, durable, in
//! `api/<upload>/` under a name of ours that nothing else reads (it counts against the quota,
//! and an upload never processed is removed with the stale uploads); `POST
//! /api/v1/calls/process-upload` validates both and answers 422 listing every problem, or puts
//! both in place under their own names and announces them: the zip is unpacked and the rows
//! matched like any SFTP batch, and each row's result appears in `GET /api/v1/calls`.

use std::collections::HashSet;
use std::fs::File;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::TenantCaller;
use super::calls::{Signed, UploadState};
use super::error::{ApiError, ErrorBody};
use super::upload::{live_tenant, receive_held};
use crate::arrival::Arrived;
use crate::arrival::Via;
use crate::dropbox::RelPath;
use crate::ingress::IngressEvent;
use crate::matching::readers::{MetadataFormat, read_rows};
use crate::matching::{RecordingRef, RowContext, RowVerdict, check_header, extension, map_row};

/// The held names of a batch's two files, in `api/<upload>/`.
const HELD_METADATA: &str = ".dropsync-held-metadata";
const HELD_AUDIOS: &str = ".dropsync-held-audios";

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// e.g. "metadata.csv" (.csv, .tsv, .json, .jsonl)
    pub metadata_filename: String,
    /// e.g. "audios.zip"
    pub audios_filename: String,
}

#[derive(Serialize, ToSchema)]
pub struct BatchUrls {
    pub metadata_upload_url: String,
    pub metadata_key: String,
    pub audio_upload_url: String,
    pub audio_key: String,
    pub expires_in: u64,
}

#[utoipa::path(post, path = "/api/v1/calls/upload", tag = "upload", request_body = BatchRequest,
    responses((status = 200, description = "{\"status\":\"success\",\"data\":BatchUrls}"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn start(
    TenantCaller(tenant): TenantCaller,
    State(s): State<UploadState>,
    body: Result<Json<BatchRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(request) = body?;
    let mut problems = Vec::new();
    let metadata_ok = extension(&request.metadata_filename)
        .as_deref()
        .and_then(MetadataFormat::from_extension)
        .is_some();
    if !metadata_ok || !plain_name(&request.metadata_filename) {
        problems.push("metadata_filename: a plain file name ending in .csv, .tsv, .json or .jsonl".to_owned());
    }
    if extension(&request.audios_filename).as_deref() != Some("zip") || !plain_name(&request.audios_filename) {
        problems.push("audios_filename: a plain file name ending in .zip".to_owned());
    }
    if request.metadata_filename == request.audios_filename {
        problems.push("metadata_filename and audios_filename must differ".to_owned());
    }
    if !problems.is_empty() {
        let mut e = ApiError::bad_request("the file names cannot be used");
        e.details = problems;
        return Err(e);
    }
    let config = s.http.config.get();
    let limits = config
        .http
        .as_ref()
        .ok_or_else(|| ApiError::not_found("no upload API"))?;
    let upload = hex::encode(rand::random::<[u8; 8]>());
    let expires = chrono::Utc::now().timestamp() + limits.upload_url_ttl.as_secs() as i64;
    let url = |name: &str| {
        let target = format!("{tenant}/{upload}/{name}");
        let signature = s.signer.sign(&format!("batch/{target}"), expires);
        let query = format!("expires={expires}&signature={signature}");
        (format!("{}/api/batch/{target}?{query}", limits.public_url), target)
    };
    let (metadata_upload_url, metadata_key) = url(&request.metadata_filename);
    let (audio_upload_url, audio_key) = url(&request.audios_filename);
    let data = BatchUrls {
        metadata_upload_url,
        metadata_key,
        audio_upload_url,
        audio_key,
        expires_in: limits.upload_url_ttl.as_secs(),
    };
    Ok(Json(json!({"status": "success", "data": data})))
}

/// A name with no folder part and nothing hidden or temporary about it.
fn plain_name(name: &str) -> bool {
    RelPath::parse(name).is_some_and(|r| r.dir().is_empty()) && !crate::dropbox::is_temp_name(name)
}

#[utoipa::path(put, path = "/api/batch/{tenant}/{upload}/{name}", tag = "upload",
    params(("tenant" = String, Path), ("upload" = String, Path), ("name" = String, Path), Signed),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, description = "held, durable, until process-upload"), (status = 403, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn put_file(
    State(s): State<UploadState>,
    Path((tenant, upload, name)): Path<(String, String, String)>,
    signed: Result<Query<Signed>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let Query(signed) = signed.map_err(|_| ApiError::forbidden("the upload URL is not signed (expires, signature)"))?;
    let target = format!("{tenant}/{upload}/{name}");
    s.signer
        .verify(
            &format!("batch/{target}"),
            signed.expires,
            &signed.signature,
            chrono::Utc::now().timestamp(),
        )
        .map_err(|e| ApiError::forbidden(e.to_string()))?;
    let tenant = live_tenant(&s, &tenant)?;
    let held = if extension(&name).as_deref() == Some("zip") {
        HELD_AUDIOS
    } else {
        HELD_METADATA
    };
    let rel = RelPath::parse(&format!("api/{upload}/{held}")).ok_or_else(|| ApiError::bad_request("bad upload id"))?;
    receive_held(&s, &tenant, rel, body.into_data_stream()).await?;
    Ok(StatusCode::OK)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProcessRequest {
    pub metadata_key: String,
    pub audios_key: String,
}

#[utoipa::path(post, path = "/api/v1/calls/process-upload", tag = "upload", request_body = ProcessRequest,
    responses((status = 200, description = "{\"status\":\"success\",\"data\":{\"message\":…}}"), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody, description = "every problem found")))]
pub async fn process(
    TenantCaller(tenant): TenantCaller,
    State(s): State<UploadState>,
    body: Result<Json<ProcessRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(request) = body?;
    let parse = |key: &str| -> Result<(String, String), ApiError> {
        let mut parts = key.splitn(3, '/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(t), Some(u), Some(n))
                if t == tenant.as_str() && plain_name(n) && u.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                Ok((u.to_owned(), n.to_owned()))
            }
            _ => Err(ApiError::not_found(format!(
                "{key:?} is not a key of this tenant's uploads"
            ))),
        }
    };
    let (upload, metadata_name) = parse(&request.metadata_key)?;
    let (audios_upload, audios_name) = parse(&request.audios_key)?;
    if audios_upload != upload {
        return Err(ApiError::bad_request("the two keys belong to different uploads"));
    }
    let config = s.http.config.get();
    let t = config
        .tenant(tenant.as_str())
        .ok_or_else(ApiError::unauthorized)?
        .clone();
    let (drops, matching) = (s.drops.clone(), config.matching.clone());
    let owner = tenant.clone();
    let folder = format!("api/{upload}");
    let placed = tokio::task::spawn_blocking(move || -> Result<Vec<RelPath>, ApiError> {
        let io = |e: std::io::Error| ApiError::internal("reading the upload failed", e);
        let confined = drops.confined(&owner).map_err(io)?;
        let dir = confined
            .dir(&folder)
            .map_err(|_| ApiError::not_found("nothing was uploaded under these keys"))?;
        let open = |held: &str, key: &str| {
            confined
                .open_file(&format!("{folder}/{held}"))
                .map_err(|_| ApiError::not_found(format!("{key:?} was not uploaded")))
        };
        let metadata = open(HELD_METADATA, "metadata_key")?;
        let audios = open(HELD_AUDIOS, "audios_key")?;
        let problems = validate(&t, &matching, &metadata_name, metadata, audios);
        if !problems.is_empty() {
            return Err(ApiError::invalid(
                "the upload is not valid; nothing was queued",
                problems,
            ));
        }
        // Recordings first, then the file that names them; both durable before the answer.
        for (held, name) in [(HELD_AUDIOS, &audios_name), (HELD_METADATA, &metadata_name)] {
            rustix::fs::renameat(&dir, held, &dir, name.as_str()).map_err(|e| io(e.into()))?;
        }
        rustix::fs::fsync(&dir).map_err(|e| io(e.into()))?;
        Ok([audios_name, metadata_name]
            .iter()
            .filter_map(|n| RelPath::parse(&format!("{folder}/{n}")))
            .collect())
    })
    .await
    .map_err(|e| ApiError::internal("processing the upload failed", e))??;
    for rel in placed {
        let _ = s
            .events
            .send(IngressEvent::Arrived(Arrived {
                tenant: tenant.clone(),
                rel,
                via: Via::Http,
                digest: None,
            }))
            .await;
    }
    tracing::info!(tenant = %tenant, upload = %upload, "batch queued (http)");
    Ok(Json(
        json!({"status": "success", "data": {"message": "Files validated and queued for processing"}}),
    ))
}

/// Every problem with a batch: the metadata's missing columns, zip entries in folders or of
/// formats not allowed, and recordings the rows name that the zip lacks.
fn validate(
    tenant: &crate::tenant::Tenant,
    matching: &crate::config::MatchingConfig,
    metadata_name: &str,
    metadata: File,
    audios: File,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut entries: HashSet<String> = HashSet::new();
    match zip::ZipArchive::new(audios) {
        Err(e) => problems.push(format!("audios: not a readable zip archive: {e}")),
        Ok(mut zip) => {
            for i in 0..zip.len() {
                let Ok(entry) = zip.by_index_raw(i) else {
                    problems.push(format!("audios: entry {} cannot be read", i + 1));
                    continue;
                };
                let Ok(name) = entry.name().map(|n| n.into_owned()) else {
                    problems.push(format!("audios: entry {} has a name that is not valid text", i + 1));
                    continue;
                };
                if entry.is_dir() {
                    continue;
                }
                if name.contains('/') || name.contains('\\') {
                    problems.push(format!(
                        "audios: {name:?} is inside a folder; put the files at the top of the archive"
                    ));
                } else if !extension(&name).is_some_and(|e| matching.recording_extensions.contains(&e)) {
                    problems.push(format!(
                        "audios: {name:?} is not a recording format allowed ({})",
                        matching.recording_extensions.join(", ")
                    ));
                } else {
                    entries.insert(name);
                }
            }
        }
    }
    let format = extension(metadata_name)
        .as_deref()
        .and_then(MetadataFormat::from_extension);
    let Some(format) = format else {
        problems.push(format!(
            "metadata: {metadata_name:?} is not .csv, .tsv, .json or .jsonl"
        ));
        return problems;
    };
    let stem = metadata_name.rsplit_once('.').map_or(metadata_name, |(s, _)| s);
    let mut first = true;
    let mut header_checked = false;
    let read = read_rows::<_, ()>(
        format,
        std::io::BufReader::new(metadata),
        matching.max_field_bytes,
        |row| {
            let Ok(record) = row.record else { return Ok(()) };
            if !header_checked {
                header_checked = true;
                if let Err(missing) = check_header(&tenant.mapping, &record) {
                    problems.push(format!("metadata: {missing}"));
                    return Err(());
                }
            }
            let ctx = RowContext {
                mapping: &tenant.mapping,
                timezone: tenant.timezone,
                extensions: &matching.recording_extensions,
                file_stem: stem,
                first_row: first,
            };
            first = false;
            if let RowVerdict::Accepted(submission) = map_row(&ctx, record) {
                for wanted in submission.recordings {
                    let found = match &wanted {
                        RecordingRef::Exact(name) => entries.contains(name),
                        RecordingRef::Stem(stem) => entries
                            .iter()
                            .any(|e| e.rsplit_once('.').is_some_and(|(s, _)| s == stem)),
                    };
                    if !found {
                        problems.push(format!(
                            "metadata row {}: {} is not in the zip",
                            row.row,
                            wanted.display()
                        ));
                    }
                }
            }
            Ok(())
        },
    );
    if let Err(crate::matching::readers::ReadError::File(why)) = read {
        problems.push(format!("metadata: {why}"));
    }
    problems
}
