//! How rows and recordings are joined (SPEC §2), as rules the catalog applies when it records an
//! arrival or a row. Pure: the catalog finds candidates by folder with SQL, in the transaction
//! that records the change, and asks here what they mean.
//!
//! - A row's recording is looked for **in the metadata file's own folder**, by exact name, or by
//!   stem when the row names `<conversation_id>.<any recording extension>` ([`Lookup`]).
//! - An arriving recording answers to its name and to its stem ([`ArrivalKeys`]).
//! - A conversation is complete when every recording it names is present; when it is, its
//!   content ([`content_hash`]: agent, time, every field, each recording's name and bytes)
//!   decides against the send forwarded last ([`Resend`]): identical is done without sending,
//!   different is forwarded again over the same keys and reported `updated`. This is the one
//!   place that rule is made, for a row sent again and for an FTP recording revised alike.

use sha2::{Digest, Sha256};

use super::RecordingRef;

/// How a row's recording is looked up in its folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    Name(&'a str),
    Stem(&'a str),
}

impl RecordingRef {
    pub fn lookup(&self) -> Lookup<'_> {
        match self {
            RecordingRef::Exact(n) => Lookup::Name(n),
            RecordingRef::Stem(s) => Lookup::Stem(s),
        }
    }
}

/// The keys an arriving recording answers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArrivalKeys<'a> {
    pub name: &'a str,
    pub stem: &'a str,
}

impl<'a> ArrivalKeys<'a> {
    pub fn of(name: &'a str) -> Self {
        ArrivalKeys { name, stem: stem(name) }
    }
}

/// What a chat transcript's file name ends with (SPEC §10): it is a conversation's file like a
/// recording, forwarded as `transcript.json`, and answers to the stem before this suffix.
pub const TRANSCRIPT_SUFFIX: &str = ".transcript.json";

/// Whether `name` is a chat transcript's (`<stem>.transcript.json`, any case).
pub fn is_transcript(name: &str) -> bool {
    name.len() > TRANSCRIPT_SUFFIX.len()
        && name.is_char_boundary(name.len() - TRANSCRIPT_SUFFIX.len())
        && name[name.len() - TRANSCRIPT_SUFFIX.len()..].eq_ignore_ascii_case(TRANSCRIPT_SUFFIX)
}

/// A file name without its extension (a leading dot is not an extension); a transcript's
/// without its `.transcript.json`.
pub fn stem(name: &str) -> &str {
    if is_transcript(name) {
        return &name[..name.len() - TRANSCRIPT_SUFFIX.len()];
    }
    match name.rfind('.') {
        Some(i) if i > 0 => &name[..i],
        _ => name,
    }
}

/// What a complete conversation carries, fingerprinted: two sends with the same fingerprint are
/// the same call sent twice.
pub fn content_hash<'a>(
    agent: &str,
    contact_time: &str,
    fields_json: &str,
    recordings: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
) -> String {
    let mut h = Sha256::new();
    for part in [agent, contact_time, fields_json] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    for (name, sha) in recordings {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(sha.unwrap_or("").as_bytes());
    }
    hex::encode(h.finalize())
}

/// The send of a conversation forwarded last: its content, and the row it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastSent<'a> {
    pub content_hash: &'a str,
    pub metadata_file: &'a str,
    pub row_no: i64,
}

/// What a complete conversation is, against the send of it forwarded last (SPEC §2 rule 4).
/// The catalog applies it: `Identical` is recorded forwarded with its `detail` and its files
/// may leave; the others become ready to forward, `Updated` reported as such.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resend {
    /// Never forwarded: forward it.
    First,
    /// The same content as forwarded: done, nothing is sent again; `detail` says so.
    Identical { detail: String },
    /// Different content: forwarded again over the same keys, reported `updated`.
    Updated,
}

impl Resend {
    /// The rule, for a conversation whose content is now `content_hash`.
    pub fn decide(last: Option<LastSent<'_>>, content_hash: &str) -> Resend {
        match last {
            None => Resend::First,
            Some(last) if last.content_hash == content_hash => Resend::Identical {
                detail: format!(
                    "identical to the conversation already forwarded from row {} of {}; nothing sent again",
                    last.row_no, last.metadata_file
                ),
            },
            Some(_) => Resend::Updated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_answer_to_name_and_stem() {
        assert_eq!(
            ArrivalKeys::of("c1.wav"),
            ArrivalKeys {
                name: "c1.wav",
                stem: "c1"
            }
        );
        assert_eq!(ArrivalKeys::of(".hidden").stem, ".hidden");
        assert_eq!(ArrivalKeys::of("a.b.mp3").stem, "a.b");
        assert_eq!(RecordingRef::Stem("C-1".into()).lookup(), Lookup::Stem("C-1"));
        assert_eq!(ArrivalKeys::of("C-1.Transcript.JSON").stem, "C-1");
        assert_eq!(ArrivalKeys::of("a.b.transcript.json").stem, "a.b");
        assert!(!is_transcript(".transcript.json") && !is_transcript("x.json") && !is_transcript("ü"));
    }

    #[test]
    fn content_decides_identical_or_updated() {
        let a = content_hash("ann", "2019-05-03T09:27:23Z", "{}", [("c1.wav", Some("aa"))]);
        let same = content_hash("ann", "2019-05-03T09:27:23Z", "{}", [("c1.wav", Some("aa"))]);
        let other_bytes = content_hash("ann", "2019-05-03T09:27:23Z", "{}", [("c1.wav", Some("bb"))]);
        // Lengths are part of the fingerprint: moving a byte between fields changes it.
        let shifted = content_hash("an", "n2019-05-03T09:27:23Z", "{}", [("c1.wav", Some("aa"))]);
        let sent = |content_hash| LastSent {
            content_hash,
            metadata_file: "batch.csv",
            row_no: 2,
        };
        assert_eq!(Resend::decide(None, &a), Resend::First);
        let Resend::Identical { detail } = Resend::decide(Some(sent(&same)), &a) else {
            panic!("the same content is identical");
        };
        assert!(detail.contains("row 2 of batch.csv"), "{detail}");
        assert_eq!(Resend::decide(Some(sent(&other_bytes)), &a), Resend::Updated);
        assert_ne!(shifted, a);
    }
}
