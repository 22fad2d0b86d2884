//! Matching: metadata rows -> validated conversation submissions. No I/O of its own.
//!
//! Takes a tenant's [`Mapping`] and one row from [`readers`], gives back a [`Submission`] (the
//! canonical fields, every original column, and which recordings it needs) or a reason a person
//! can act on. [`join`] holds the rules by which the catalog joins submissions with arrived
//! recordings.

pub mod join;
pub mod readers;

use chrono::{DateTime, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};

use join::stem;
pub use join::{TRANSCRIPT_SUFFIX, is_transcript};
pub use readers::{MetadataFormat, ReadError, Record, RowRead, read_rows};

use crate::tenant::{Mapping, TimeColumns};

/// A recording a submission needs, looked up in the metadata file's own folder.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RecordingRef {
    /// Exactly this file name.
    Exact(String),
    /// `<stem>.<any recording extension>` (unmapped `recording`, and sidecar files).
    Stem(String),
}

impl RecordingRef {
    /// How the reference is shown in reports and stored in the catalog.
    pub fn display(&self) -> String {
        match self {
            RecordingRef::Exact(n) => n.clone(),
            RecordingRef::Stem(s) => format!("{s}.*"),
        }
    }
}

/// A row that passed validation: one conversation to forward once its recordings are in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    pub conversation_id: String,
    pub agent: String,
    pub contact_time: DateTime<Utc>,
    pub recordings: Vec<RecordingRef>,
    /// Every original column, in file order, verbatim.
    pub fields: Record,
}

/// What a row of a tenant's file is, once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowVerdict {
    Accepted(Submission),
    Rejected {
        conversation_id: Option<String>,
        recording: Option<String>,
        reason: String,
    },
}

/// Everything `map_row` needs that is not the row itself.
pub struct RowContext<'a> {
    pub mapping: &'a Mapping,
    pub timezone: chrono_tz::Tz,
    /// Allowed recording extensions, lower case.
    pub extensions: &'a [String],
    /// Stem of the metadata file (sidecar mode's conversation id and recording stem).
    pub file_stem: &'a str,
    /// Whether this is the first row of the file (sidecar files describe one conversation).
    pub first_row: bool,
}

/// The mapped columns a file of this tenant must carry, for whole-file checks on a header.
pub fn required_columns(mapping: &Mapping) -> Vec<&str> {
    let mut cols: Vec<&str> = Vec::new();
    cols.extend(mapping.conversation_id.as_deref());
    cols.push(&mapping.agent);
    match &mapping.time {
        TimeColumns::Single { column, .. } => cols.push(column),
        TimeColumns::Split { date, clock } => {
            cols.push(date);
            cols.push(clock);
        }
    }
    cols.extend(mapping.recording.as_deref());
    cols.extend(mapping.required_columns.iter().map(String::as_str));
    cols
}

/// For CSV/TSV, whose header is known before any row: the columns that are missing, if any, as
/// one reason for rejecting the whole file.
pub fn check_header(mapping: &Mapping, record: &Record) -> Result<(), String> {
    let missing: Vec<&str> = required_columns(mapping)
        .into_iter()
        .filter(|c| !record.iter().any(|(name, _)| name == c))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        let list: Vec<String> = missing.iter().map(|c| format!("{c:?}")).collect();
        Err(format!(
            "missing column{} {}",
            if missing.len() > 1 { "s" } else { "" },
            list.join(", ")
        ))
    }
}

fn value<'r>(record: &'r Record, column: &str) -> Option<&'r str> {
    record.iter().find(|(name, _)| name == column).map(|(_, v)| v.trim())
}

fn required<'r>(record: &'r Record, column: &str, what: &str) -> Result<&'r str, String> {
    match value(record, column) {
        None => Err(format!("{what}: column {column:?} is missing")),
        Some("") => Err(format!("{what}: column {column:?} is empty")),
        Some(v) => Ok(v),
    }
}

/// Validates one row against the tenant's mapping (SPEC §2, rule 3).
pub fn map_row(ctx: &RowContext<'_>, record: Record) -> RowVerdict {
    let m = ctx.mapping;
    let reject = |conversation_id: Option<&str>, recording: Option<&str>, reason: String| RowVerdict::Rejected {
        conversation_id: conversation_id.map(str::to_owned),
        recording: recording.map(str::to_owned),
        reason,
    };
    if m.is_sidecar() && !ctx.first_row {
        return reject(
            None,
            None,
            "a sidecar file describes one conversation: only its first row is used".into(),
        );
    }

    // Recordings first: an unmapped conversation_id defaults to the first recording's stem.
    let mut recordings = Vec::new();
    let recording_text = m
        .recording
        .as_deref()
        .and_then(|c| value(&record, c))
        .map(str::to_owned);
    if let Some(column) = &m.recording {
        let raw = match required(&record, column, "recording") {
            Ok(v) => v,
            Err(reason) => {
                return reject(
                    m.conversation_id.as_deref().and_then(|c| value(&record, c)),
                    None,
                    reason,
                );
            }
        };
        // A set beside the list: a cell naming thousands of files is checked in linear time.
        let mut seen = std::collections::HashSet::new();
        for name in raw.split(';').map(str::trim).filter(|n| !n.is_empty()) {
            if let Err(reason) = check_recording_name(name, ctx.extensions) {
                return reject(
                    m.conversation_id.as_deref().and_then(|c| value(&record, c)),
                    Some(raw),
                    reason,
                );
            }
            if seen.insert(name) {
                recordings.push(RecordingRef::Exact(name.to_owned()));
            }
        }
        // Its transcript is forwarded as `transcript.json`: a conversation has one at most.
        if recordings
            .iter()
            .filter(|r| matches!(r, RecordingRef::Exact(n) if join::is_transcript(n)))
            .count()
            > 1
        {
            return reject(
                m.conversation_id.as_deref().and_then(|c| value(&record, c)),
                Some(raw),
                "recording: names more than one transcript (a conversation has one at most)".into(),
            );
        }
        if recordings.is_empty() {
            return reject(None, Some(raw), format!("recording: column {column:?} names no file"));
        }
    }

    let conversation_id = match (&m.conversation_id, recordings.first()) {
        (Some(column), _) => match required(&record, column, "conversation_id") {
            Ok(v) => v.to_owned(),
            Err(reason) => return reject(None, recording_text.as_deref(), reason),
        },
        (None, Some(RecordingRef::Exact(name))) => stem(name).to_owned(),
        (None, _) => ctx.file_stem.to_owned(),
    };
    if let Err(reason) = check_conversation_id(&conversation_id) {
        return reject(Some(&conversation_id), recording_text.as_deref(), reason);
    }
    if recordings.is_empty() {
        recordings.push(RecordingRef::Stem(conversation_id.clone()));
    }
    let rejected = |reason: String| reject(Some(&conversation_id), recording_text.as_deref(), reason);

    let agent = match required(&record, &m.agent, "agent") {
        Ok(v) => v.to_owned(),
        Err(reason) => return rejected(reason),
    };
    let contact_time = match contact_time(&m.time, ctx.timezone, &record) {
        Ok(t) => t,
        Err(reason) => return rejected(reason),
    };
    for column in &m.required_columns {
        if let Err(reason) = required(&record, column, "required column") {
            return rejected(reason);
        }
    }
    RowVerdict::Accepted(Submission {
        conversation_id,
        agent,
        contact_time,
        recordings,
        fields: record,
    })
}

/// The extension of a file name, lower-cased, if it has one.
pub fn extension(name: &str) -> Option<String> {
    match name.rfind('.') {
        Some(i) if i > 0 && i + 1 < name.len() => Some(name[i + 1..].to_ascii_lowercase()),
        _ => None,
    }
}

/// A recording named in a row must be a plain file name with an allowed extension.
pub fn check_recording_name(name: &str, extensions: &[String]) -> Result<(), String> {
    if name.contains('/') || name.contains('\\') || name == "." || name == ".." || name.contains('\0') {
        return Err(format!(
            "recording {name:?} must be a plain file name in the same folder as the metadata file"
        ));
    }
    if join::is_transcript(name) {
        return Ok(());
    }
    match extension(name) {
        Some(ext) if extensions.contains(&ext) => Ok(()),
        Some(ext) => Err(format!(
            "recording {name:?}: extension {ext:?} is not a recording extension ({})",
            extensions.join(", ")
        )),
        None => Err(format!(
            "recording {name:?} has no extension ({})",
            extensions.join(", ")
        )),
    }
}

fn check_conversation_id(id: &str) -> Result<(), String> {
    if id.len() > 255 {
        return Err("conversation_id is longer than 255 bytes".into());
    }
    if id.chars().any(char::is_control) {
        return Err(format!("conversation_id {id:?} contains control characters"));
    }
    Ok(())
}

/// Validates a `contact_time_format` (strftime) at config time.
pub fn check_time_format(format: &str) -> Result<(), String> {
    use chrono::format::{Item, StrftimeItems};
    if StrftimeItems::new(format).any(|i| matches!(i, Item::Error)) {
        Err(format!("{format:?} is not a valid strftime format"))
    } else {
        Ok(())
    }
}

fn contact_time(columns: &TimeColumns, tz: chrono_tz::Tz, record: &Record) -> Result<DateTime<Utc>, String> {
    match columns {
        TimeColumns::Single { column, format } => {
            let raw = required(record, column, "contact_time")?;
            parse_time(raw, format.as_deref(), tz)
                .map_err(|why| format!("contact_time {raw:?} (column {column:?}) {why}"))
        }
        TimeColumns::Split { date, clock } => {
            let d = required(record, date, "contact_date")?;
            let c = required(record, clock, "contact_clock")?;
            let day = NaiveDate::parse_from_str(d, "%Y-%m-%d")
                .map_err(|_| format!("contact_date {d:?} (column {date:?}) is not a date like 2019-05-03"))?;
            let time = NaiveTime::parse_from_str(c, "%H:%M:%S")
                .or_else(|_| NaiveTime::parse_from_str(c, "%H:%M"))
                .map_err(|_| format!("contact_clock {c:?} (column {clock:?}) is not a time like 09:27:23"))?;
            localize(day.and_time(time), tz).map_err(|why| format!("contact time {d} {c} {why}"))
        }
    }
}

/// ISO 8601 (with offset, or naive in the tenant's zone), or the tenant's own strftime layout.
pub fn parse_time(raw: &str, format: Option<&str>, tz: chrono_tz::Tz) -> Result<DateTime<Utc>, String> {
    if let Some(fmt) = format {
        if let Ok(t) = DateTime::parse_from_str(raw, fmt) {
            return Ok(t.with_timezone(&Utc));
        }
        if let Ok(t) = NaiveDateTime::parse_from_str(raw, fmt) {
            return localize(t, tz);
        }
        if let Ok(d) = NaiveDate::parse_from_str(raw, fmt) {
            return localize(d.and_time(NaiveTime::MIN), tz);
        }
        return Err(format!("does not match the format {fmt:?}"));
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Ok(t.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f%#z",
        "%Y-%m-%d %H:%M:%S%.f%#z",
        "%Y-%m-%dT%H:%M%#z",
    ] {
        if let Ok(t) = DateTime::parse_from_str(raw, fmt) {
            return Ok(t.with_timezone(&Utc));
        }
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(raw, fmt) {
            return localize(t, tz);
        }
    }
    Err("is not an ISO 8601 date-time like 2019-05-03T09:27:23Z (set contact_time_format for other layouts)".into())
}

/// Reads a wall-clock time in `tz`. In the hour a DST change repeats, the earlier instant wins;
/// a time that DST skips does not exist and is refused.
fn localize(t: NaiveDateTime, tz: chrono_tz::Tz) -> Result<DateTime<Utc>, String> {
    match tz.from_local_datetime(&t) {
        LocalResult::Single(t) => Ok(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(early, _) => Ok(early.with_timezone(&Utc)),
        LocalResult::None => Err(format!(
            "does not exist in {} (skipped by a daylight-saving change)",
            tz.name()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exts() -> Vec<String> {
        crate::config::DEFAULT_RECORDING_EXTENSIONS
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn rec(pairs: &[(&str, &str)]) -> Record {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn acme() -> Mapping {
        Mapping {
            conversation_id: Some("Contact Reference".into()),
            agent: "Agent Email".into(),
            time: TimeColumns::Single {
                column: "Contact Date".into(),
                format: None,
            },
            recording: Some("Audio Filename".into()),
            required_columns: vec![],
        }
    }

    fn run(mapping: &Mapping, tz: chrono_tz::Tz, row: &[(&str, &str)]) -> RowVerdict {
        let e = exts();
        let ctx = RowContext {
            mapping,
            timezone: tz,
            extensions: &e,
            file_stem: "batch",
            first_row: true,
        };
        map_row(&ctx, rec(row))
    }

    fn reason(v: RowVerdict) -> String {
        match v {
            RowVerdict::Rejected { reason, .. } => reason,
            RowVerdict::Accepted(s) => panic!("accepted: {s:?}"),
        }
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn accepted_row_keeps_every_column_in_order() {
        let row = [
            ("Contact Reference", " C-1 "),
            ("Agent Email", "a@acme.example"),
            ("Contact Date", "2019-05-03T09:27:23Z"),
            ("Audio Filename", "c1.wav; c1b.WAV"),
            ("Queue", "sales"),
        ];
        let RowVerdict::Accepted(s) = run(&acme(), chrono_tz::UTC, &row) else {
            panic!()
        };
        assert_eq!(s.conversation_id, "C-1");
        assert_eq!(s.agent, "a@acme.example");
        assert_eq!(s.contact_time, utc("2019-05-03T09:27:23Z"));
        assert_eq!(
            s.recordings,
            [
                RecordingRef::Exact("c1.wav".into()),
                RecordingRef::Exact("c1b.WAV".into())
            ]
        );
        assert_eq!(s.fields, rec(&row));
    }

    /// Table-driven: each bad row and the words its reason must carry.
    #[test]
    fn rejected_rows_say_why() {
        let good = [
            ("Contact Reference", "C-1"),
            ("Agent Email", "a@x"),
            ("Contact Date", "2019-05-03 09:27:23"),
            ("Audio Filename", "c1.wav"),
        ];
        let cases: &[(&str, &str, &str)] = &[
            ("Agent Email", "", "agent: column \"Agent Email\" is empty"),
            ("Agent Email", "   ", "agent: column \"Agent Email\" is empty"),
            (
                "Contact Reference",
                "",
                "conversation_id: column \"Contact Reference\" is empty",
            ),
            ("Contact Date", "yesterday", "is not an ISO 8601 date-time"),
            ("Contact Date", "2019-02-30T10:00:00", "is not an ISO 8601 date-time"),
            (
                "Audio Filename",
                "c1.txt",
                "extension \"txt\" is not a recording extension",
            ),
            ("Audio Filename", "c1", "has no extension"),
            ("Audio Filename", "../c1.wav", "plain file name"),
            ("Audio Filename", "sub/c1.wav", "plain file name"),
            ("Audio Filename", "a\\c1.wav", "plain file name"),
            ("Audio Filename", "", "recording: column \"Audio Filename\" is empty"),
            ("Audio Filename", " ; ", "names no file"),
            (
                "Audio Filename",
                "a.transcript.json;b.transcript.json",
                "more than one transcript",
            ),
            (
                "Audio Filename",
                "c1.json",
                "extension \"json\" is not a recording extension",
            ),
            ("Contact Reference", "C\u{7}1", "control characters"),
        ];
        for (column, val, want) in cases {
            let row: Vec<(&str, &str)> = good
                .iter()
                .map(|(k, v)| if k == column { (*k, *val) } else { (*k, *v) })
                .collect();
            let got = reason(run(&acme(), chrono_tz::UTC, &row));
            assert!(got.contains(want), "{column}={val:?}: got {got:?}, want {want:?}");
        }
        let missing: Vec<_> = good.iter().filter(|(k, _)| *k != "Agent Email").copied().collect();
        assert!(reason(run(&acme(), chrono_tz::UTC, &missing)).contains("column \"Agent Email\" is missing"));
    }

    #[test]
    fn required_columns_must_have_values() {
        let mut m = acme();
        m.required_columns = vec!["Queue".into()];
        let row = [
            ("Contact Reference", "C"),
            ("Agent Email", "a"),
            ("Contact Date", "2019-05-03T09:27:23Z"),
            ("Audio Filename", "c.wav"),
            ("Queue", ""),
        ];
        assert!(reason(run(&m, chrono_tz::UTC, &row)).contains("required column: column \"Queue\" is empty"));
        assert_eq!(
            check_header(&m, &rec(&row[..3])),
            Err("missing columns \"Audio Filename\", \"Queue\"".into())
        );
        assert_eq!(check_header(&m, &rec(&row)), Ok(()));
    }

    /// Table-driven: time layouts and zones.
    #[test]
    #[allow(clippy::type_complexity)]
    fn contact_times() {
        let paris: chrono_tz::Tz = "Europe/Paris".parse().unwrap();
        let cases: &[(&str, Option<&str>, chrono_tz::Tz, Result<&str, &str>)] = &[
            ("2019-05-03T09:27:23Z", None, paris, Ok("2019-05-03T09:27:23Z")),
            (
                "2019-05-03T09:27:23+02:00",
                None,
                chrono_tz::UTC,
                Ok("2019-05-03T07:27:23Z"),
            ),
            (
                "2019-05-03T09:27:23.250+0200",
                None,
                chrono_tz::UTC,
                Ok("2019-05-03T07:27:23.250Z"),
            ),
            ("2019-05-03 09:27:23", None, chrono_tz::UTC, Ok("2019-05-03T09:27:23Z")),
            ("2019-05-03 09:27:23", None, paris, Ok("2019-05-03T07:27:23Z")),
            ("2019-05-03T09:27", None, chrono_tz::UTC, Ok("2019-05-03T09:27:00Z")),
            (
                "03/05/2019, 09:27",
                Some("%d/%m/%Y, %H:%M"),
                paris,
                Ok("2019-05-03T07:27:00Z"),
            ),
            (
                "03/05/2019",
                Some("%d/%m/%Y"),
                chrono_tz::UTC,
                Ok("2019-05-03T00:00:00Z"),
            ),
            (
                "2019-05-03",
                Some("%d/%m/%Y"),
                chrono_tz::UTC,
                Err("does not match the format"),
            ),
            (
                "2019-03-31 02:30:00",
                None,
                paris,
                Err("does not exist in Europe/Paris"),
            ),
            ("2019-10-27 02:30:00", None, paris, Ok("2019-10-27T00:30:00Z")),
            ("2019-05-03", None, chrono_tz::UTC, Err("is not an ISO 8601")),
        ];
        for (raw, fmt, tz, want) in cases {
            let got = parse_time(raw, *fmt, *tz);
            match want {
                Ok(w) => assert_eq!(got, Ok(utc(w)), "{raw}"),
                Err(w) => assert!(got.as_ref().unwrap_err().contains(w), "{raw}: {got:?}"),
            }
        }
    }

    #[test]
    fn split_date_and_clock() {
        let m = Mapping {
            conversation_id: Some("id".into()),
            agent: "agent".into(),
            time: TimeColumns::Split {
                date: "d".into(),
                clock: "t".into(),
            },
            recording: None,
            required_columns: vec![],
        };
        let RowVerdict::Accepted(s) = run(
            &m,
            chrono_tz::UTC,
            &[("id", "X"), ("agent", "a"), ("d", "2019-05-03"), ("t", "09:27:23")],
        ) else {
            panic!()
        };
        assert_eq!(s.contact_time, utc("2019-05-03T09:27:23Z"));
        assert_eq!(s.recordings, [RecordingRef::Stem("X".into())]);
        let r = reason(run(
            &m,
            chrono_tz::UTC,
            &[("id", "X"), ("agent", "a"), ("d", "03.05.2019"), ("t", "09:27:23")],
        ));
        assert!(r.contains("contact_date \"03.05.2019\""), "{r}");
    }

    #[test]
    fn conversation_id_defaults_to_recording_stem() {
        let mut m = acme();
        m.conversation_id = None;
        let RowVerdict::Accepted(s) = run(
            &m,
            chrono_tz::UTC,
            &[
                ("Agent Email", "a"),
                ("Contact Date", "2019-05-03T09:27:23Z"),
                ("Audio Filename", "call-7.mp3"),
            ],
        ) else {
            panic!()
        };
        assert_eq!(s.conversation_id, "call-7");
        // A chat's transcript stands where a recording would, and names the conversation alike.
        let RowVerdict::Accepted(s) = run(
            &m,
            chrono_tz::UTC,
            &[
                ("Agent Email", "a"),
                ("Contact Date", "2019-05-03T09:27:23Z"),
                ("Audio Filename", "chat-9.transcript.json"),
            ],
        ) else {
            panic!()
        };
        assert_eq!(s.conversation_id, "chat-9");
        assert_eq!(s.recordings, [RecordingRef::Exact("chat-9.transcript.json".into())]);
    }

    #[test]
    fn sidecar_takes_the_file_stem_and_first_row_only() {
        let m = Mapping {
            conversation_id: None,
            recording: None,
            ..acme()
        };
        assert!(m.is_sidecar());
        let row = [("Agent Email", "a"), ("Contact Date", "2019-05-03T09:27:23Z")];
        let RowVerdict::Accepted(s) = run(&m, chrono_tz::UTC, &row) else {
            panic!()
        };
        assert_eq!(s.conversation_id, "batch");
        assert_eq!(s.recordings, [RecordingRef::Stem("batch".into())]);
        let e = exts();
        let ctx = RowContext {
            mapping: &m,
            timezone: chrono_tz::UTC,
            extensions: &e,
            file_stem: "batch",
            first_row: false,
        };
        assert!(reason(map_row(&ctx, rec(&row))).contains("only its first row"));
    }

    #[test]
    fn time_formats_are_checked() {
        assert!(check_time_format("%d/%m/%Y, %H:%M").is_ok());
        assert!(check_time_format("%Q").is_err());
    }
}
