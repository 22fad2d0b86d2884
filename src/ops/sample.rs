//! The mapping step of onboarding (SPEC §10, `POST /api/admin/tenants/{id}/sample`): a sample
//! of a contact centre's metadata file is read (CSV, TSV, JSON or JSON Lines, its first
//! [`SAMPLE_ROWS`] rows), each column is checked against the field it could fill, and a mapping
//! is suggested with the problems seen: which column holds unique ids, which one e-mail-like
//! agents, which one ISO 8601 date-times, which one recording file names.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;
use utoipa::ToSchema;

use crate::matching::{MetadataFormat, Record, extension, parse_time, read_rows};
use crate::tenant::Mapping;

/// Rows read at most.
pub const SAMPLE_ROWS: usize = 1000;

#[derive(Debug, Serialize, ToSchema)]
pub struct SampleReport {
    /// The sample's columns, in file order.
    pub columns: Vec<String>,
    /// The column suggested for each field (absent: none fits).
    pub suggested_mapping: BTreeMap<String, String>,
    pub problems: Vec<String>,
    /// For each field, every column, those that fit it best first, with what they hold that
    /// does not fit (the onboarding wizard's drop-downs).
    pub fit: BTreeMap<String, Vec<ColumnFit>>,
}

/// How well a column fits a field.
#[derive(Debug, Serialize, ToSchema)]
pub struct ColumnFit {
    pub column: String,
    /// Of the sample's rows, the share whose value fits (0 to 1).
    pub share: f64,
    /// The first value that does not fit, if any: "row 3 is not ISO 8601".
    pub problem: Option<String>,
}

/// The format of a sample: from its Content-Type, else from its first bytes.
pub fn format_of(content_type: &str, head: &[u8]) -> MetadataFormat {
    let kind = content_type.split(';').next().unwrap_or("").trim();
    match kind {
        "text/tab-separated-values" => MetadataFormat::Tsv,
        "application/x-ndjson" | "application/jsonl" => MetadataFormat::JsonLines,
        "application/json" => MetadataFormat::JsonArray,
        "text/csv" => MetadataFormat::Csv,
        _ => {
            let text = String::from_utf8_lossy(&head[..head.len().min(4096)]);
            let start = text.trim_start();
            if start.starts_with('[') {
                MetadataFormat::JsonArray
            } else if start.starts_with('{') {
                MetadataFormat::JsonLines
            } else if text.lines().next().is_some_and(|l| l.contains('\t')) {
                MetadataFormat::Tsv
            } else {
                MetadataFormat::Csv
            }
        }
    }
}

/// Reads `sample` and suggests a mapping; `current` is the tenant's mapping if it has one, whose
/// columns the sample is checked to carry.
pub fn suggest(
    sample: &[u8],
    format: MetadataFormat,
    current: Option<&Mapping>,
    extensions: &[String],
    max_field_bytes: u64,
) -> SampleReport {
    let mut problems = Vec::new();
    let mut records: Vec<Record> = Vec::new();
    let mut rows: Vec<u64> = Vec::new();
    let read = read_rows::<_, ()>(format, sample, max_field_bytes, |row| {
        match row.record {
            Ok(r) => {
                records.push(r);
                rows.push(row.row);
            }
            Err(why) => problems.push(format!("row {}: {why}", row.row)),
        }
        if records.len() >= SAMPLE_ROWS { Err(()) } else { Ok(()) }
    });
    if let Err(crate::matching::ReadError::File(why)) = read {
        problems.push(format!("the sample cannot be read: {why}"));
    }
    let mut columns: Vec<String> = Vec::new();
    for r in &records {
        for (name, _) in r {
            if !columns.contains(name) {
                columns.push(name.clone());
            }
        }
    }
    if records.is_empty() {
        problems.push("the sample has no rows".into());
    }
    let values = |column: &str| -> Vec<&str> {
        records
            .iter()
            .map(|r| r.iter().find(|(n, _)| n == column).map_or("", |(_, v)| v.trim()))
            .collect()
    };
    let share = |column: &str, test: &dyn Fn(&str) -> bool| {
        let v = values(column);
        let filled: Vec<&&str> = v.iter().filter(|x| !x.is_empty()).collect();
        if filled.is_empty() {
            0.0
        } else {
            filled.iter().filter(|x| test(x)).count() as f64 / v.len() as f64
        }
    };
    let named = |column: &str, words: &[&str]| {
        let lower = column.to_ascii_lowercase();
        words.iter().any(|w| lower.contains(w))
    };
    let is_time = |v: &str| parse_time(v, None, chrono_tz::UTC).is_ok();
    let is_recording = |v: &str| extension(v).is_some_and(|e| extensions.contains(&e));
    let is_agent = |v: &str| v.contains('@');
    let pick = |score: &dyn Fn(&str) -> f64| {
        columns
            .iter()
            .map(|c| (score(c), c))
            .filter(|(s, _)| *s >= 0.5)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, c)| c.clone())
    };
    let mut suggested = BTreeMap::new();
    let time = pick(&|c: &str| share(c, &is_time) + if named(c, &["date", "time"]) { 0.25 } else { 0.0 });
    let recording = pick(&|c: &str| {
        share(c, &is_recording)
            + if named(c, &["file", "audio", "record"]) {
                0.25
            } else {
                0.0
            }
    });
    let agent = pick(&|c: &str| {
        share(c, &is_agent)
            + if named(c, &["agent", "user", "email", "operator"]) {
                0.5
            } else {
                0.0
            }
    });
    let taken: Vec<Option<&String>> = vec![time.as_ref(), recording.as_ref(), agent.as_ref()];
    let id = pick(&|c: &str| {
        if taken.contains(&Some(&c.to_owned())) {
            return 0.0;
        }
        let v = values(c);
        let unique = v.iter().filter(|x| !x.is_empty()).collect::<HashSet<_>>().len() as f64 / v.len().max(1) as f64;
        unique * 0.5
            + if named(c, &["id", "reference", "conversation", "call", "contact"]) {
                0.5
            } else {
                0.0
            }
    });
    for (field, column) in [
        ("conversation_id", id),
        ("agent", agent),
        ("contact_time", time),
        ("recording", recording),
    ] {
        match column {
            Some(c) => {
                suggested.insert(field.to_owned(), c);
            }
            None => problems.push(format!("no column looks like {field}")),
        }
    }
    if let Some(c) = suggested.get("contact_time") {
        let bad = values(c).iter().filter(|v| !is_time(v)).count();
        if bad > 0 {
            problems.push(format!(
                "{c}: {bad} row(s) are not ISO 8601 date-times (give a format in the mapping)"
            ));
        }
    }
    if let Some(c) = suggested.get("conversation_id") {
        let v = values(c);
        if v.iter().collect::<HashSet<_>>().len() < v.len() {
            problems.push(format!(
                "{c}: the same id appears in more than one row (a later row updates the earlier)"
            ));
        }
    }
    let missing: Vec<&str> = current
        .map(crate::matching::required_columns)
        .unwrap_or_default()
        .into_iter()
        .filter(|c| !columns.iter().any(|k| k == c))
        .collect();
    if !records.is_empty() && !missing.is_empty() {
        problems.push(format!(
            "the tenant's current mapping needs columns the sample lacks: {}",
            missing.join(", ")
        ));
    }
    type Test<'t> = &'t dyn Fn(&str) -> bool;
    let fields: [(&str, Test<'_>, &str); 4] = [
        ("conversation_id", &|v: &str| !v.is_empty(), "is empty"),
        ("agent", &|v: &str| !v.is_empty(), "is empty"),
        ("contact_time", &is_time, "is not an ISO 8601 date-time"),
        ("recording", &is_recording, "is not a recording's file name"),
    ];
    let fit = fields
        .iter()
        .map(|(field, test, says)| {
            let mut ranked: Vec<ColumnFit> = columns
                .iter()
                .map(|c| {
                    let first_bad = values(c).iter().position(|v| !test(v));
                    ColumnFit {
                        column: c.clone(),
                        share: share(c, *test),
                        problem: first_bad.map(|i| format!("{c}: row {} {says}", rows[i])),
                    }
                })
                .collect();
            // The suggested column first, then by share; ties keep the file's order.
            let suggested_column = suggested.get(*field);
            ranked.sort_by(|a, b| {
                (Some(&b.column) == suggested_column)
                    .cmp(&(Some(&a.column) == suggested_column))
                    .then(b.share.total_cmp(&a.share))
            });
            ((*field).to_owned(), ranked)
        })
        .collect();
    SampleReport {
        columns,
        suggested_mapping: suggested,
        problems,
        fit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_gets_a_mapping_and_its_problems() {
        let csv = "Call Ref,Agent Email,Started,Audio,Queue\n\
                   c1,ann@acme.example,2024-08-06T09:15:00Z,c1.wav,sales\n\
                   c2,bob@acme.example,2024-08-06T09:20:00Z,c2.mp3,sales\n\
                   c2,bob@acme.example,06/08/2024 09:25,c3.wav,support\n";
        let exts: Vec<String> = ["wav", "mp3"].iter().map(|s| s.to_string()).collect();
        let report = suggest(
            csv.as_bytes(),
            MetadataFormat::Csv,
            Some(&Mapping::default()),
            &exts,
            1 << 20,
        );
        assert_eq!(report.columns, ["Call Ref", "Agent Email", "Started", "Audio", "Queue"]);
        let m = &report.suggested_mapping;
        assert_eq!(m["conversation_id"], "Call Ref");
        assert_eq!(m["agent"], "Agent Email");
        assert_eq!(m["contact_time"], "Started");
        assert_eq!(m["recording"], "Audio");
        let problems = report.problems.join("\n");
        assert!(problems.contains("Started: 1 row(s) are not ISO 8601"), "{problems}");
        assert!(problems.contains("Call Ref: the same id"), "{problems}");
        assert!(
            problems.contains("needs columns the sample lacks: conversation_id, agent"),
            "{problems}"
        );
        // Each field's columns, the fitting ones first, with the first row that does not fit.
        let time = &report.fit["contact_time"];
        assert_eq!(time[0].column, "Started");
        assert_eq!(
            time[0].problem.as_deref(),
            Some("Started: row 4 is not an ISO 8601 date-time")
        );
        assert!((time[0].share - 2.0 / 3.0).abs() < 1e-9);
        let recording = &report.fit["recording"];
        assert_eq!(recording[0].column, "Audio");
        assert_eq!(recording[0].problem, None);
        assert_eq!(recording.len(), 5);
    }

    #[test]
    fn formats_come_from_the_content_type_or_the_first_bytes() {
        assert_eq!(format_of("text/csv; charset=utf-8", b"a\tb"), MetadataFormat::Csv);
        assert_eq!(format_of("", b"  [{\"a\":1}]"), MetadataFormat::JsonArray);
        assert_eq!(
            format_of("application/octet-stream", b"{\"a\":1}\n"),
            MetadataFormat::JsonLines
        );
        assert_eq!(format_of("", b"a\tb\n1\t2\n"), MetadataFormat::Tsv);
    }
}
