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
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody};
use super::fields::required;
use super::signed::{SignError, Signer};
use super::upload::{Pending, await_recording, complete, live_tenant, too_large};
use super::{HttpShared, TenantCaller};
use crate::catalog::{Catalog, ConvState};
use crate::dropbox::DropRoot;
use crate::ingress::IngressEvent;
use crate::limits::Limits;

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
    let at = date.and_time(time);
    let (upload, conversation_id) = await_recording(&s, &caller, mapping, &fields, &KNOWN, &agent, at).await?;
    let ttl = config.http.as_ref().map_or(3600, |h| h.upload_url_ttl.as_secs());
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
    let tenant = live_tenant(&s, &tenant)?;
    let pending = Pending::read(&s.pending, &upload)?;
    if pending.call.tenant != tenant.as_str() {
        return Err(ApiError::forbidden("the upload is another tenant's"));
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_upload_bytes) {
        return Err(too_large(limits.max_upload_bytes));
    }
    let etag = complete(
        &s,
        &tenant,
        &upload,
        pending,
        body.into_data_stream(),
        1..=limits.max_upload_bytes,
    )
    .await?;
    let mut answer = HeaderMap::new();
    if let Ok(v) = format!("\"{etag}\"").parse() {
        answer.insert(header::ETAG, v);
    }
    Ok((StatusCode::OK, answer))
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
    let list = super::blocking("listing calls failed", move || {
        catalog.reports().conversations(Some(tenant.as_str()), state, 10_000)
    })
    .await?;
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
    use super::{batch, chats, presigned};
    use axum::extract::DefaultBodyLimit;
    use axum::routing::{get, post, put};
    axum::Router::new()
        .route(
            "/api/v2/workspace/{tenant}/conversation/upload_data/",
            post(upload_data),
        )
        .route("/api/upload/{tenant}/{upload}", put(put_recording))
        .route("/asr/async/upload/vela", post(presigned::presign))
        // The form's file streams, within the policy's size range, not the JSON limit.
        .route(
            "/api/presigned/{tenant}",
            post(presigned::post_form).layer(DefaultBodyLimit::disable()),
        )
        .route("/api/v1/calls", get(list_calls))
        .route("/api/v1/calls/upload", post(batch::start))
        .route(
            "/api/batch/{tenant}/{upload}/{name}",
            put(batch::put_file).layer(DefaultBodyLimit::disable()),
        )
        .route("/api/v1/calls/process-upload", post(batch::process))
        .route("/api/v1/chats", post(chats::post_chat))
        .with_state(state)
}

/// The upload API's part of `/api/openapi.json`.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        upload_data,
        put_recording,
        list_calls,
        super::presigned::presign,
        super::presigned::post_form,
        super::batch::start,
        super::batch::put_file,
        super::batch::process,
        super::chats::post_chat
    ),
    components(schemas(
        UploadData,
        CallView,
        ErrorBody,
        super::presigned::PresignedPost,
        super::batch::BatchRequest,
        super::batch::BatchUrls,
        super::batch::ProcessRequest,
        super::chats::ChatAccepted
    ))
)]
pub struct UploadApi;
