//! Chats (SPEC §10): `POST /api/v1/chats` makes a conversation without audio from a chat's
//! messages and its metadata. The messages become `<stem>.transcript.json` (times in ISO 8601
//! UTC) and the metadata a one-row file in the tenant's own columns naming it, both written into
//! `api/<upload>/` of the tenant's drop folder as one durable batch and announced: from there on
//! it is any other arrival (a transcript stands where a recording would), forwarded as
//! `transcript.json` and `metadata.json` under the same keys and re-send rules.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::TenantCaller;
use super::calls::UploadState;
use super::error::{ApiError, ErrorBody};
use super::fields::{conversation_id, json_field, local_time, request_fields, required, text};
use super::upload::{file_stem, new_upload_id, one_row_file, place_all, tenant_row, upload_session};
use crate::dropbox::RelPath;
use crate::matching::TRANSCRIPT_SUFFIX;

/// Who may have written a message.
const SENDERS: [&str; 3] = ["user", "agent", "bot"];
/// Metadata fields this flow reads; any others are kept as columns of their own.
const KNOWN: [&str; 3] = ["agent", "date", "conversation_id"];
const WHEN: &str = "a date-time like 06/08/2024, 09:15 (day first) or 2024-08-06T09:15:00Z";

#[derive(Serialize, ToSchema)]
pub struct ChatAccepted {
    pub conversation_id: String,
}

#[utoipa::path(post, path = "/api/v1/chats", tag = "upload",
    request_body(content = Object, description = "{\"chats\": [{\"message\", \"time\": \"06/08/2024, 09:15\", \"sender\": \"user|agent|bot\", \"language\"}], \"metadata\": {\"agent\", \"date\", optional conversation_id and any other fields}} as JSON, or as form fields each holding JSON"),
    responses((status = 200, body = ChatAccepted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "the tenant's quota is full")))]
pub async fn post_chat(
    TenantCaller(tenant): TenantCaller,
    State(s): State<UploadState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ChatAccepted>, ApiError> {
    let request = request_fields(&headers, body).await?;
    let config = s.http.config.get();
    let t = config.tenant(tenant.as_str()).ok_or_else(ApiError::unauthorized)?;
    let mut problems = Vec::new();
    let messages = messages(json_field(&request, "chats")?, t.timezone, &mut problems);
    let metadata = match json_field(&request, "metadata")? {
        Some(Value::Object(m)) => m,
        Some(_) => return Err(ApiError::bad_request("metadata: not a JSON object")),
        None => return Err(ApiError::bad_request("metadata: required (a JSON object)")),
    };
    let agent = required(&metadata, "agent", "the agent's name or e-mail", &mut problems, |v| {
        Some(v.to_owned())
    });
    let at = required(&metadata, "date", WHEN, &mut problems, |v| local_time(v, t.timezone));
    let (Some(agent), Some(at), true) = (agent, at, problems.is_empty()) else {
        let mut e = ApiError::bad_request("the chat is missing or has malformed fields");
        e.details = problems;
        return Err(e);
    };
    let upload = new_upload_id();
    let conversation_id = conversation_id(&metadata)?.unwrap_or_else(|| format!("chat-{upload}"));
    let stem = file_stem(&t.mapping, &conversation_id)?;
    let transcript = format!("{stem}{TRANSCRIPT_SUFFIX}");
    let mut row = tenant_row(&metadata, &KNOWN, &t.mapping, &conversation_id, &agent, at);
    if let Some(column) = &t.mapping.recording {
        row.insert(column.clone(), transcript.clone().into());
    }
    let in_folder = |name: &str| {
        RelPath::parse(&format!("api/{upload}/{name}")).ok_or_else(|| ApiError::bad_request("bad conversation_id"))
    };
    let transcript_doc = json!({"conversation_id": conversation_id, "messages": messages});
    let mut transcript_bytes = serde_json::to_vec_pretty(&transcript_doc)
        .map_err(|e| ApiError::internal("writing the transcript failed", e))?;
    transcript_bytes.push(b'\n');
    let files = vec![
        (in_folder(&transcript)?, transcript_bytes),
        (in_folder(&format!("{stem}.json"))?, one_row_file(row)?),
    ];
    let _session = upload_session(&s, &tenant)?;
    place_all(&s, &tenant, Vec::new(), files).await?;
    tracing::info!(tenant = %tenant, conversation = %conversation_id, messages = messages.len(), "chat uploaded (http)");
    Ok(Json(ChatAccepted { conversation_id }))
}

/// The chat's messages as the transcript keeps them, each time in ISO 8601 UTC; what is wrong
/// with any of them is added to `problems`, naming the message.
fn messages(chats: Option<Value>, tz: chrono_tz::Tz, problems: &mut Vec<String>) -> Vec<Value> {
    let list = match chats {
        Some(Value::Array(list)) if !list.is_empty() => list,
        Some(Value::Array(_)) => {
            problems.push("chats: has no message".into());
            return Vec::new();
        }
        Some(_) => {
            problems.push("chats: not a list of messages".into());
            return Vec::new();
        }
        None => {
            problems.push("chats: required (a list of messages)".into());
            return Vec::new();
        }
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, item) in list.into_iter().enumerate() {
        let Value::Object(mut m) = item else {
            problems.push(format!("chats[{i}]: not an object"));
            continue;
        };
        let mut wrong = |p: String| problems.push(format!("chats[{i}].{p}"));
        if !m.get("message").is_some_and(Value::is_string) {
            wrong("message: required (text)".into());
        }
        match m.get("sender").and_then(Value::as_str) {
            Some(s) if SENDERS.contains(&s) => {}
            _ => wrong(format!("sender: required (one of {})", SENDERS.join(", "))),
        }
        if m.get("language").is_some_and(|l| !l.is_string()) {
            wrong("language: not text".into());
        }
        let time = text(&m, "time").map(|t| time_utc(t, tz));
        match time {
            Some(Some(t)) => {
                m.insert("time".into(), t.into());
            }
            Some(None) => wrong(format!("time: not {WHEN}")),
            None => wrong(format!("time: required ({WHEN})")),
        }
        out.push(Value::Object(m));
    }
    out
}

/// A message's time as an ISO 8601 instant in UTC: an instant as it is, a wall-clock time as
/// the tenant's (in the hour a DST change repeats, the earlier).
fn time_utc(text: &str, tz: chrono_tz::Tz) -> Option<String> {
    use chrono::TimeZone;
    let at = match crate::matching::parse_time(text, None, tz) {
        Ok(at) => at,
        Err(_) => tz
            .from_local_datetime(&local_time(text, tz)?)
            .earliest()?
            .with_timezone(&chrono::Utc),
    };
    Some(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}
