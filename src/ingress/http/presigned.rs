//! Presigned form POST (SPEC §10), as S3's browser uploads work: `POST /asr/async/upload/vela`
//! takes the call's metadata and answers with a URL and the form fields to send with the file,
//! one of them a policy (expiry, key, size range, every other field's value) signed by
//! dropsync; `POST <url>` as `multipart/form-data`, the fields as given and the file last,
//! stores the recording. A field changed by the client, or one the policy does not name, is
//! refused with 403, as S3 refuses it.

use axum::Json;
use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use serde::Serialize;
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use super::TenantCaller;
use super::calls::UploadState;
use super::error::{ApiError, ErrorBody};
use super::fields::{MAX_FIELD_BYTES, MAX_FIELDS, local_time, request_fields, required};
use super::signed::Signer;
use super::upload::{Pending, await_recording, complete, live_tenant};
use crate::tenant::TenantId;

#[derive(Serialize, ToSchema)]
pub struct PresignedPost {
    /// Where to POST the form.
    pub url: String,
    /// Every field to send, as given, before the file.
    #[schema(value_type = Object)]
    pub fields: Map<String, Value>,
}

#[utoipa::path(post, path = "/asr/async/upload/vela", tag = "upload",
    request_body(content = Object, description = "{\"org_id\": tenant, \"metadata\": {\"email\", \"date_of_call\", …}} as JSON, or as form fields with metadata as a JSON string"),
    responses((status = 200, body = PresignedPost), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "another tenant's org_id, or the minute allocation is spent")))]
pub async fn presign(
    TenantCaller(tenant): TenantCaller,
    State(s): State<UploadState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<PresignedPost>, ApiError> {
    let request = request_fields(&headers, body).await?;
    let org = request.get("org_id").and_then(Value::as_str).unwrap_or_default();
    if org != tenant.as_str() {
        return Err(ApiError::forbidden(format!("org_id {org:?} is not the token's tenant")));
    }
    let metadata = match request.get("metadata") {
        Some(Value::Object(m)) => m.clone(),
        Some(Value::String(text)) => match serde_json::from_str(text) {
            Ok(Value::Object(m)) => m,
            _ => return Err(ApiError::bad_request("metadata: not a JSON object")),
        },
        _ => return Err(ApiError::bad_request("metadata: required (a JSON object)")),
    };
    if allocation_spent(&s, &tenant).await? {
        return Err(ApiError::forbidden(
            "the minute allocation of this month is spent (minute_allocation)",
        ));
    }
    let config = s.http.config.get();
    let t = config.tenant(tenant.as_str()).ok_or_else(ApiError::unauthorized)?;
    let mapping = &t.mapping;
    let mut problems = Vec::new();
    let agent = required(&metadata, "email", "the agent's e-mail", &mut problems, |v| {
        Some(v.to_owned())
    });
    let when = "a date-time like 2024-08-06 09:15:00 or 2024-08-06T09:15:00Z";
    let at = required(&metadata, "date_of_call", when, &mut problems, |v| {
        local_time(v, t.timezone)
    });
    let (Some(agent), Some(at)) = (agent, at) else {
        let mut e = ApiError::bad_request("the call's metadata is missing or malformed fields");
        e.details = problems.iter().map(|p| format!("metadata.{p}")).collect();
        return Err(e);
    };
    let consumed = ["email", "date_of_call", "conversation_id"];
    let (upload, _) = await_recording(&s, &tenant, mapping, &metadata, &consumed, &agent, at).await?;
    let limits = config
        .http
        .as_ref()
        .ok_or_else(|| ApiError::not_found("no upload API"))?;
    let now = chrono::Utc::now();
    let expires = now.timestamp() + limits.upload_url_ttl.as_secs() as i64;
    let date = now.format("%Y%m%dT%H%M%SZ").to_string();
    let mut fields = Map::new();
    fields.insert("key".into(), format!("{tenant}/{upload}").into());
    fields.insert("x-amz-algorithm".into(), "AWS4-HMAC-SHA256".into());
    fields.insert(
        "x-amz-credential".into(),
        format!("dropsync/{}/local/s3/aws4_request", &date[..8]).into(),
    );
    fields.insert("x-amz-date".into(), date.into());
    let mut conditions: Vec<Value> = fields.iter().map(|(k, v)| json!({ k: v })).collect();
    conditions.push(json!(["content-length-range", 1, limits.max_upload_bytes]));
    let expiration = chrono::DateTime::from_timestamp(expires, 0).unwrap_or(now);
    let policy = json!({
        "expiration": expiration.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "conditions": conditions,
    });
    let policy = base64::engine::general_purpose::STANDARD.encode(policy.to_string());
    fields.insert(
        "x-amz-signature".into(),
        s.signer.sign(&signed_text(&policy), expires).into(),
    );
    fields.insert("policy".into(), policy.into());
    Ok(Json(PresignedPost {
        url: format!("{}/api/presigned/{tenant}", limits.public_url),
        fields,
    }))
}

/// What a policy's signature covers.
fn signed_text(policy: &str) -> String {
    format!("post-policy\n{policy}")
}

/// Whether the tenant's minute allocation of this month is used up.
async fn allocation_spent(s: &UploadState, tenant: &TenantId) -> Result<bool, ApiError> {
    let config = s.http.config.get();
    let Some(t) = config.tenant(tenant.as_str()).cloned() else {
        return Ok(false);
    };
    if t.allocation.is_none() {
        return Ok(false);
    }
    let catalog = s.catalog.clone();
    let status = super::blocking("reading the minute allocation failed", move || {
        let allocations = crate::catalog::allocations_for(std::slice::from_ref(&t), crate::catalog::now_ms());
        catalog.minutes().status(&allocations)
    })
    .await?;
    Ok(status
        .get(tenant.as_str())
        .and_then(|m| m.minute_allocation.map(|a| m.seconds_used >= a * 60))
        .unwrap_or(false))
}

#[utoipa::path(post, path = "/api/presigned/{tenant}", tag = "upload",
    params(("tenant" = String, Path)),
    request_body(content = Object, content_type = "multipart/form-data", description = "the fields as given, then the file"),
    responses((status = 204, description = "stored, durable, and announced"), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn post_form(
    State(s): State<UploadState>,
    Path(tenant): Path<String>,
    form: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<StatusCode, ApiError> {
    let mut form = form.map_err(|e| ApiError::bad_request(e.body_text()))?;
    read_form(&mut form, async |fields, file| {
        let size = check_policy(&s.signer, &fields, chrono::Utc::now().timestamp())?;
        let key = field_value(&fields, "key").unwrap_or_default();
        let (owner, upload) = key
            .split_once('/')
            .ok_or_else(|| ApiError::forbidden("the key is not one dropsync gave"))?;
        if owner != tenant {
            return Err(ApiError::forbidden("the key is another tenant's"));
        }
        let tenant = live_tenant(&s, &tenant)?;
        let upload = upload.to_owned();
        let pending = Pending::read(&s.pending, &upload)?;
        complete(&s, &tenant, &upload, pending, file, size).await
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Reads the form's fields before its file (names in lower case): at most [`MAX_FIELDS`] of at
/// most [`MAX_FIELD_BYTES`] each, nothing read beyond that; then hands them and the file to
/// `then`.
pub async fn read_form<R>(
    form: &mut Multipart,
    then: impl for<'f> AsyncFnOnce(Vec<(String, String)>, axum::extract::multipart::Field<'f>) -> Result<R, ApiError>,
) -> Result<R, ApiError> {
    let bad =
        |e: axum::extract::multipart::MultipartError| ApiError::bad_request(format!("the form cannot be read: {e}"));
    let mut fields: Vec<(String, String)> = Vec::new();
    loop {
        let Some(mut field) = form.next_field().await.map_err(bad)? else {
            return Err(ApiError::bad_request(
                "the form has no file (the field named file, last)",
            ));
        };
        let name = field.name().unwrap_or_default().to_owned();
        if name.eq_ignore_ascii_case("file") || field.file_name().is_some() {
            return then(fields, field).await;
        }
        if fields.len() >= MAX_FIELDS {
            return Err(ApiError::bad_request(format!(
                "more than {MAX_FIELDS} fields before the file"
            )));
        }
        let mut value = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(bad)? {
            if value.len() + chunk.len() > MAX_FIELD_BYTES {
                return Err(ApiError::bad_request(format!(
                    "field {name:?} is longer than {MAX_FIELD_BYTES} bytes"
                )));
            }
            value.extend_from_slice(&chunk);
        }
        fields.push((name.to_ascii_lowercase(), String::from_utf8_lossy(&value).into_owned()));
    }
}

fn field_value<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// Checks the form against its signed policy, as S3 does: the signature, the expiry, every
/// condition, and every field named by one; the size range the file must fall in.
pub fn check_policy(
    signer: &Signer,
    fields: &[(String, String)],
    now: i64,
) -> Result<std::ops::RangeInclusive<u64>, ApiError> {
    let refused = |why: &str| ApiError::forbidden(format!("the form does not match its policy: {why}"));
    let policy = field_value(fields, "policy").ok_or_else(|| refused("no policy field"))?;
    let signature = field_value(fields, "x-amz-signature").ok_or_else(|| refused("no x-amz-signature field"))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(policy)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .ok_or_else(|| refused("the policy is not base64 JSON"))?;
    let expires = decoded["expiration"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .ok_or_else(|| refused("the policy has no expiration"))?
        .timestamp();
    signer
        .verify(&signed_text(policy), expires, signature, now)
        .map_err(|e| ApiError::forbidden(e.to_string()))?;
    check_conditions(&decoded, fields)
}

/// Checks the fields against a policy's conditions (its signature checked already): each field
/// a condition names holds its value, and every field is named by one; the size range.
pub fn check_conditions(
    decoded: &Value,
    fields: &[(String, String)],
) -> Result<std::ops::RangeInclusive<u64>, ApiError> {
    let refused = |why: &str| ApiError::forbidden(format!("the form does not match its policy: {why}"));
    let mut size = 0..=u64::MAX;
    let mut covered = vec!["policy", "x-amz-signature"];
    for condition in decoded["conditions"].as_array().map(Vec::as_slice).unwrap_or_default() {
        match condition {
            Value::Object(m) => {
                for (name, want) in m {
                    if field_value(fields, &name.to_ascii_lowercase()) != want.as_str() {
                        return Err(refused(&format!("field {name:?} was changed or left out")));
                    }
                    covered.push(name);
                }
            }
            Value::Array(a) if a.first().and_then(Value::as_str) == Some("content-length-range") => {
                let (min, max) = (a.get(1).and_then(Value::as_u64), a.get(2).and_then(Value::as_u64));
                size = min.unwrap_or(0)..=max.unwrap_or(u64::MAX);
            }
            _ => return Err(refused("a condition dropsync does not write")),
        }
    }
    if let Some((name, _)) = fields
        .iter()
        .find(|(n, _)| !covered.iter().any(|c| c.eq_ignore_ascii_case(n)))
    {
        return Err(refused(&format!("field {name:?} is not in the policy")));
    }
    Ok(size)
}
