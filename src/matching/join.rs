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
//!   different is forwarded again over the same keys and reported `updated`.

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

/// A file name without its extension (a leading dot is not an extension).
pub fn stem(name: &str) -> &str {
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

/// What a complete conversation is, against the send of it forwarded last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resend {
    /// Never forwarded: forward it.
    First,
    /// The same content as forwarded: done, nothing is sent again.
    Identical,
    /// Different content: forwarded again over the same keys, reported `updated`.
    Updated,
}

impl Resend {
    pub fn decide(previous_hash: Option<&str>, hash: &str) -> Resend {
        match previous_hash {
            None => Resend::First,
            Some(p) if p == hash => Resend::Identical,
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
    }

    #[test]
    fn content_decides_identical_or_updated() {
        let a = content_hash("ann", "2019-05-03T09:27:23Z", "{}", [("c1.wav", Some("aa"))]);
        let same = content_hash("ann", "2019-05-03T09:27:23Z", "{}", [("c1.wav", Some("aa"))]);
        let other_bytes = content_hash("ann", "2019-05-03T09:27:23Z", "{}", [("c1.wav", Some("bb"))]);
        // Lengths are part of the fingerprint: moving a byte between fields changes it.
        let shifted = content_hash("an", "n2019-05-03T09:27:23Z", "{}", [("c1.wav", Some("aa"))]);
        assert_eq!(Resend::decide(None, &a), Resend::First);
        assert_eq!(Resend::decide(Some(&same), &a), Resend::Identical);
        assert_eq!(Resend::decide(Some(&other_bytes), &a), Resend::Updated);
        assert_ne!(shifted, a);
    }
}
