//! Object keys and `metadata.json` (SPEC §4): what a forwarded conversation looks like in any sink.

use chrono::{DateTime, SecondsFormat, Utc};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};

use crate::catalog::Work;

/// Everything but `[A-Za-z0-9._-]` is percent-encoded in a conversation id.
const KEY_UNSAFE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'.').remove(b'_').remove(b'-');

/// `conversation_id` as a key segment. "." and ".." are encoded too, so that no key segment
/// can mean "this folder" or "the parent folder" to the dir sink or to tools that mirror a bucket.
pub fn encode_conversation_id(id: &str) -> String {
    match id {
        "." => "%2E".into(),
        ".." => "%2E%2E".into(),
        _ => utf8_percent_encode(id, KEY_UNSAFE).to_string(),
    }
}

/// `{prefix}{tenant}/{yyyy}/{mm}/{dd}/{conversation_id}/`, the date being contact_time in UTC.
/// It depends only on the conversation, so a replay writes the same keys.
pub fn key_prefix(prefix: &str, tenant: &str, contact_time: DateTime<Utc>, conversation_id: &str) -> String {
    format!(
        "{prefix}{tenant}/{}/{}/",
        contact_time.format("%Y/%m/%d"),
        encode_conversation_id(conversation_id)
    )
}

pub struct RecordingEntry {
    pub file: String,
    pub key: String,
    pub bytes: u64,
    pub sha256: String,
    pub duration_ms: Option<u64>,
}

fn iso_ms(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// The `metadata.json` of a conversation; written last, its presence means "complete".
pub fn metadata_json(work: &Work, recordings: &[RecordingEntry], forwarded_at: i64) -> Vec<u8> {
    let doc = json!({
        "tenant": work.tenant,
        "conversation_id": work.conversation_id,
        "agent": work.agent,
        "contact_time": work.contact_time.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        // The conversation lasts as long as its longest recording (SPEC §9).
        "duration_ms": recordings.iter().filter_map(|r| r.duration_ms).max(),
        "recordings": recordings.iter().map(|r| json!({
            "file": r.file, "key": r.key, "bytes": r.bytes, "sha256": r.sha256, "duration_ms": r.duration_ms,
        })).collect::<Vec<_>>(),
        "fields": Value::Object(work.fields.clone()),
        "source": {"via": work.via.as_str(), "metadata_file": work.metadata_file, "row": work.row_no},
        "received_at": iso_ms(work.received_at),
        "forwarded_at": iso_ms(forwarded_at),
    });
    let mut out = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_spec_and_cannot_escape() {
        let t = DateTime::parse_from_rfc3339("2019-05-03T23:30:00-02:00")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(key_prefix("p/", "acme", t, "C-1"), "p/acme/2019/05/04/C-1/");
        assert_eq!(
            key_prefix("", "acme", t, "a/b c?é"),
            "acme/2019/05/04/a%2Fb%20c%3F%C3%A9/"
        );
        assert_eq!(key_prefix("", "acme", t, ".."), "acme/2019/05/04/%2E%2E/");
        assert_eq!(key_prefix("", "acme", t, "."), "acme/2019/05/04/%2E/");
        assert_eq!(key_prefix("", "acme", t, "a..b_c.d"), "acme/2019/05/04/a..b_c.d/");
    }
}
