//! Object keys and `metadata.json` (SPEC §4): what a forwarded conversation looks like in any sink.

use chrono::{DateTime, SecondsFormat, Utc};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::catalog::Work;
use crate::dropbox::is_transcript;

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

/// The longest name one folder entry may have on the file systems we write to (NAME_MAX).
const MAX_SEGMENT: usize = 255;
/// S3's longest key; the dir sink keeps to it too, so both sinks hold the same keys.
const MAX_KEY: usize = 1024;
/// `~` and 16 hex digits of a SHA-256: what a shortened name ends with.
const HASH_TAIL: usize = 17;
/// The shortest a shortened name may be: a readable head and its hash tail.
const MIN_SHORTENED: usize = HASH_TAIL + 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the sink prefix {prefix:?} leaves no room for a key within {MAX_KEY} bytes")]
pub struct KeyTooLong {
    prefix: String,
}

/// Where a conversation's objects go: its folder and the key name of each recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationKeys {
    /// `{prefix}{tenant}/{yyyy}/{mm}/{dd}/{conversation_id}/`.
    pub folder: String,
    /// The name of each recording under `folder`, in the order given.
    pub names: Vec<String>,
}

impl ConversationKeys {
    /// `{prefix}{tenant}/{yyyy}/{mm}/{dd}/{conversation_id}/`, the date being contact_time in
    /// UTC, and a name per recording. They depend only on the conversation, so a replay writes
    /// the same keys. Every name a tenant may use (ids and file names up to 255 bytes) fits: a
    /// segment past 255 bytes, or a key past 1,024 bytes, is shortened to a readable head and a
    /// hash of the whole (`metadata.json` keeps the original id).
    pub fn new(
        prefix: &str,
        tenant: &str,
        contact_time: DateTime<Utc>,
        conversation_id: &str,
        recordings: &[&str],
    ) -> Result<ConversationKeys, KeyTooLong> {
        let base = format!("{prefix}{tenant}/{}/", contact_time.format("%Y/%m/%d"));
        let room = MAX_KEY.saturating_sub(base.len() + 1);
        let too_long = || KeyTooLong {
            prefix: prefix.to_owned(),
        };
        // The folder leaves room for the longest name any recording may have, not just this
        // send's, so that a re-send with other names keeps the same folder. It gives way
        // first; only a very long sink prefix makes file names shorten too.
        let folder_max = MAX_SEGMENT.min(room.saturating_sub(MAX_SEGMENT));
        let (folder_max, name_max) = if folder_max >= MIN_SHORTENED {
            (folder_max, MAX_SEGMENT)
        } else {
            (MIN_SHORTENED, room.saturating_sub(MIN_SHORTENED))
        };
        if name_max < MIN_SHORTENED.max(METADATA_JSON.len()) {
            return Err(too_long());
        }
        let folder = format!("{base}{}/", shorten_id(conversation_id, folder_max));
        let names = recordings
            .iter()
            .map(|n| {
                if is_transcript(n) {
                    TRANSCRIPT_JSON.to_owned()
                } else {
                    shorten_file_name(n, name_max)
                }
            })
            .collect();
        Ok(ConversationKeys { folder, names })
    }

    pub fn metadata_json(&self) -> String {
        format!("{}{METADATA_JSON}", self.folder)
    }
}

const METADATA_JSON: &str = "metadata.json";
/// A chat's transcript, whatever its name in the drop folder (a conversation has one at most).
const TRANSCRIPT_JSON: &str = "transcript.json";

/// The id's key segment if it fits in `max` bytes; else the encoding of as many of its first
/// characters as fit (never half a character's escapes), and `~` with 16 hex digits of the
/// SHA-256 of the whole id, so distinct ids stay distinct and an id is shortened the same way
/// every time.
fn shorten_id(id: &str, max: usize) -> String {
    let encoded = encode_conversation_id(id);
    if encoded.len() <= max {
        return encoded;
    }
    let budget = max.saturating_sub(HASH_TAIL);
    let mut head = String::with_capacity(budget);
    let mut buf = [0u8; 4];
    for c in id.chars() {
        let escaped = utf8_percent_encode(c.encode_utf8(&mut buf), KEY_UNSAFE).to_string();
        if head.len() + escaped.len() > budget {
            break;
        }
        head.push_str(&escaped);
    }
    with_hash_tail(&head, id)
}

/// `head~` and 16 hex digits of the SHA-256 of `whole`.
fn with_hash_tail(head: &str, whole: &str) -> String {
    let digest = hex::encode(Sha256::digest(whole.as_bytes()));
    format!("{head}~{}", &digest[..HASH_TAIL - 1])
}

/// The longest start of `s` within `max` bytes that ends on a character boundary.
fn head_within(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A recording's name shortened like a folder, keeping its extension so the object still says
/// what it holds.
fn shorten_file_name(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_owned();
    }
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && ext.len() + 1 + MIN_SHORTENED <= max => {
            let head = head_within(stem, max - ext.len() - 1 - HASH_TAIL);
            format!("{}.{ext}", with_hash_tail(head, name))
        }
        _ => with_hash_tail(head_within(name, max.saturating_sub(HASH_TAIL)), name),
    }
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

/// The `metadata.json` of a conversation; written last, its presence means "complete". A chat's
/// transcript is listed as `transcript`, apart from the recordings.
pub fn metadata_json(work: &Work, files: &[RecordingEntry], forwarded_at: i64) -> Vec<u8> {
    let (transcripts, recordings): (Vec<&RecordingEntry>, Vec<&RecordingEntry>) =
        files.iter().partition(|r| is_transcript(&r.file));
    let mut doc = json!({
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
    if let Some(t) = transcripts.first() {
        doc["transcript"] = json!({"file": t.file, "key": t.key, "bytes": t.bytes, "sha256": t.sha256});
    }
    let mut out = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(prefix: &str, id: &str) -> String {
        let t = DateTime::parse_from_rfc3339("2019-05-03T23:30:00-02:00")
            .unwrap()
            .with_timezone(&Utc);
        ConversationKeys::new(prefix, "acme", t, id, &["c1.wav"])
            .unwrap()
            .folder
    }

    #[test]
    fn keys_follow_the_spec_and_cannot_escape() {
        assert_eq!(folder("p/", "C-1"), "p/acme/2019/05/04/C-1/");
        assert_eq!(folder("", "a/b c?é"), "acme/2019/05/04/a%2Fb%20c%3F%C3%A9/");
        assert_eq!(folder("", ".."), "acme/2019/05/04/%2E%2E/");
        assert_eq!(folder("", "."), "acme/2019/05/04/%2E/");
        assert_eq!(folder("", "a..b_c.d"), "acme/2019/05/04/a..b_c.d/");
        let keys = ConversationKeys::new("", "acme", Utc::now(), "c", &["c.wav", "c.Transcript.json"]).unwrap();
        assert_eq!(keys.names, ["c.wav", "transcript.json"], "a transcript has one name");
    }

    #[test]
    fn long_ids_are_shortened_the_same_way_every_time() {
        // 84 CJK characters: 252 bytes, valid; percent-encoded 756 bytes.
        let id = "話".repeat(84);
        let f = folder("", &id);
        let segment = f.trim_end_matches('/').rsplit('/').next().unwrap();
        assert!((247..=255).contains(&segment.len()), "{segment}");
        assert!(segment.starts_with("%E8%A9%B1%E8%A9%B1"), "{segment}");
        assert!(!segment.contains("~~") && segment.matches('~').count() == 1);
        assert_eq!(f, folder("", &id), "deterministic");
        assert_ne!(f, folder("", &"話".repeat(83)), "distinct ids stay distinct");
        // No escape is split by the cut.
        let head = segment.split('~').next().unwrap();
        assert!(head.len().is_multiple_of(9), "{head}");
        // An id that fits is left alone.
        assert_eq!(
            folder("", &"a".repeat(255)),
            format!("acme/2019/05/04/{}/", "a".repeat(255))
        );
    }

    #[test]
    fn keys_stay_within_s3s_limit_whatever_the_prefix() {
        let t = Utc::now();
        let id = "é".repeat(127);
        let name = format!("{}.wav", "n".repeat(251));
        for prefix_len in [0, 300, 600, 900] {
            let prefix = "pref/".repeat(prefix_len / 5);
            let keys = ConversationKeys::new(&prefix, "acme", t, &id, &[&name]).unwrap();
            let longest = keys.folder.len() + keys.names[0].len().max(13);
            assert!(longest <= MAX_KEY, "{prefix_len}: {longest}");
            assert!(keys.folder.split('/').all(|s| s.len() <= MAX_SEGMENT));
            assert!(keys.names[0].ends_with(".wav") && keys.names[0].len() <= MAX_SEGMENT);
        }
        // A re-send with other names goes to the same folder.
        let prefix = "pref/".repeat(120);
        let one = ConversationKeys::new(&prefix, "acme", t, &id, &["a.wav"]).unwrap();
        let other = ConversationKeys::new(&prefix, "acme", t, &id, &[&name]).unwrap();
        assert_eq!(one.folder, other.folder);
        let absurd = "p".repeat(1000);
        assert!(ConversationKeys::new(&absurd, "acme", t, "c", &["c.wav"]).is_err());
    }
}
