//! What the upload flows read from a request's fields: a body as JSON, an urlencoded form or
//! a multipart form of text fields alike (the platforms' examples send each), a field's text, a
//! required one parsed with its problem named, and a date-time as the platforms write it.

use axum::body::Bytes;
use axum::http::{HeaderMap, header};
use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use serde_json::{Map, Value};

use super::error::ApiError;

/// Text fields a multipart form may carry, and the bytes of each, at most.
pub const MAX_FIELDS: usize = 32;
pub const MAX_FIELD_BYTES: usize = 64 << 10;

/// The request's fields, from JSON, an urlencoded form or a multipart form (text fields
/// only); the body is already within `http.max_json_bytes`.
pub async fn request_fields(headers: &HeaderMap, body: Bytes) -> Result<Map<String, Value>, ApiError> {
    let kind = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if kind.starts_with("application/x-www-form-urlencoded") {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&body)
            .map_err(|e| ApiError::bad_request(format!("the form cannot be read: {e}")))?;
        return Ok(pairs.into_iter().map(|(k, v)| (k, Value::String(v))).collect());
    }
    if kind.starts_with("multipart/form-data") {
        return multipart_fields(kind, body).await;
    }
    match serde_json::from_slice(&body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad_request("the body is not a JSON object")),
        Err(e) => Err(ApiError::bad_request(format!("the body is not JSON: {e}"))),
    }
}

async fn multipart_fields(kind: &str, body: Bytes) -> Result<Map<String, Value>, ApiError> {
    let bad = |e: multer::Error| ApiError::bad_request(format!("the form cannot be read: {e}"));
    let boundary = multer::parse_boundary(kind).map_err(bad)?;
    // The body is whole already, within max_json_bytes: the form is read within it (axum's
    // extractor would hold it to its own 2 MB).
    let stream = futures_util::stream::once(async move { Ok::<_, std::convert::Infallible>(body) });
    let mut form = multer::Multipart::new(stream, boundary);
    let mut fields = Map::new();
    while let Some(field) = form.next_field().await.map_err(bad)? {
        if fields.len() >= MAX_FIELDS {
            return Err(ApiError::bad_request(format!("more than {MAX_FIELDS} form fields")));
        }
        let name = field.name().unwrap_or_default().to_owned();
        let value = field.text().await.map_err(bad)?;
        fields.insert(name, Value::String(value));
    }
    Ok(fields)
}

/// A field that holds JSON, given as JSON or as a JSON string (a form field).
pub fn json_field(fields: &Map<String, Value>, key: &str) -> Result<Option<Value>, ApiError> {
    match fields.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => serde_json::from_str(text)
            .map(Some)
            .map_err(|e| ApiError::bad_request(format!("{key}: not JSON: {e}"))),
        Some(v) => Ok(Some(v.clone())),
    }
}

/// The `conversation_id` a client gave, if any: text, or a number as written.
pub fn conversation_id(fields: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    match fields.get("conversation_id") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(Value::String(t)) if t.trim().is_empty() => Ok(None),
        Some(Value::String(t)) => Ok(Some(t.trim().to_owned())),
        Some(_) => Err(ApiError::bad_request("conversation_id: not text")),
    }
}

/// A field's text, if it has any.
pub fn text<'a>(fields: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    fields
        .get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// A required field, parsed; a missing or malformed one is added to `problems`.
pub fn required<T>(
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

/// A date-time as the platforms send it, read as the tenant's wall-clock time: ISO 8601 (an
/// offset or `Z` converted to the tenant's time zone; a space for the `T`; minutes without
/// seconds), `06/08/2024, 09:15` (day first, as the chat platform writes it; seconds
/// optional), or a date alone (midnight).
pub fn local_time(text: &str, tz: chrono_tz::Tz) -> Option<NaiveDateTime> {
    if let Ok(t) = crate::matching::parse_time(text, None, tz) {
        return Some(t.with_timezone(&tz).naive_local());
    }
    [
        "%d/%m/%Y, %H:%M:%S",
        "%d/%m/%Y, %H:%M",
        "%d/%m/%Y %H:%M:%S",
        "%d/%m/%Y %H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
    .or_else(|| {
        NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .ok()
            .map(|d| d.and_time(NaiveTime::MIN))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_date_times_are_the_tenants_wall_clock() {
        let at = |s: &str, tz| local_time(s, tz).map(|t| t.to_string());
        let jhb = chrono_tz::Africa::Johannesburg;
        assert_eq!(at("06/08/2024, 09:15", jhb).as_deref(), Some("2024-08-06 09:15:00"));
        assert_eq!(
            at("06/08/2024, 09:15:07", chrono_tz::UTC).as_deref(),
            Some("2024-08-06 09:15:07")
        );
        // An instant is shown in the tenant's zone (UTC+2): the row says what its CSV would.
        assert_eq!(at("2024-08-06T07:15:00Z", jhb).as_deref(), Some("2024-08-06 09:15:00"));
        assert_eq!(at("2024-08-06 09:15", jhb).as_deref(), Some("2024-08-06 09:15:00"));
        assert_eq!(at("2024-08-06", jhb).as_deref(), Some("2024-08-06 00:00:00"));
        assert_eq!(at("13/13/2024, 09:15", jhb), None);
        assert_eq!(at("yesterday", jhb), None);
    }
}
