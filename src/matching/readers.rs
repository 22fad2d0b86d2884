//! Streaming metadata readers: CSV, TSV, a JSON array of objects, JSON Lines.
//!
//! Each reader calls back once per row, so memory is bounded by one row whatever the file's
//! size. A row that cannot be read (wrong field count, not an object) is a row error and reading
//! goes on; a problem with the file as a whole (not UTF-8, no header, broken JSON) ends reading
//! with [`ReadError::File`].

use std::cell::Cell;
use std::io::{BufRead, BufReader, Read};
use std::rc::Rc;

use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};

/// The kinds of metadata file, chosen by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataFormat {
    Csv,
    Tsv,
    JsonArray,
    JsonLines,
}

impl MetadataFormat {
    pub fn from_extension(ext: &str) -> Option<Self> {
        match ext.to_ascii_lowercase().as_str() {
            "csv" => Some(Self::Csv),
            "tsv" => Some(Self::Tsv),
            "json" => Some(Self::JsonArray),
            "jsonl" | "ndjson" => Some(Self::JsonLines),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Tsv => "tsv",
            Self::JsonArray => "json",
            Self::JsonLines => "jsonl",
        }
    }
}

/// One row's columns in file order, names trimmed of spaces and BOM.
pub type Record = Vec<(String, String)>;

/// What a reader hands its caller: the row number users see, and the row or why it is unreadable.
/// Row numbers: CSV/TSV count the header as row 1 (as a spreadsheet shows them), JSON counts
/// array elements from 1, JSON Lines counts lines.
pub struct RowRead {
    pub row: u64,
    pub record: Result<Record, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError<E> {
    /// The file as a whole cannot be read; the reason is for the tenant's report.
    #[error("{0}")]
    File(String),
    /// The caller's callback failed (e.g. the catalog); reading stopped.
    #[error(transparent)]
    Callback(E),
}

pub fn clean_column_name(name: &str) -> String {
    name.trim_start_matches('\u{feff}').trim().to_owned()
}

/// Bytes read since the last row began, shared between a [`Limited`] reader and its parser,
/// which resets it at each row. Parsers read ahead (a buffer's worth), so the limit is exact
/// to within that buffer.
#[derive(Clone)]
struct RowBudget {
    used: Rc<Cell<u64>>,
    limit: u64,
}

impl RowBudget {
    fn new(limit: u64) -> Self {
        RowBudget {
            used: Rc::new(Cell::new(0)),
            limit,
        }
    }
    fn next_row(&self) {
        self.used.set(0);
    }
    fn exceeded(&self) -> bool {
        self.used.get() > self.limit
    }
    /// The reason a file whose row `row` passed the limit is rejected.
    fn reason(&self, row: u64) -> String {
        format!(
            "row {row} is longer than {} (matching.max_field_bytes); the file was not read",
            bytesize::ByteSize::b(self.limit)
        )
    }
}

/// A reader that fails once the current row has taken more than its budget, so that a
/// gigabyte-long line or field costs a bounded amount of memory and time.
struct Limited<R> {
    inner: R,
    budget: RowBudget,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.budget.exceeded() {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "row too long"));
        }
        let room = (self.budget.limit.saturating_add(1) - self.budget.used.get()).min(buf.len() as u64) as usize;
        let n = self.inner.read(&mut buf[..room])?;
        self.budget.used.set(self.budget.used.get() + n as u64);
        Ok(n)
    }
}

/// Reads every row of `input` as `format`, calling `on_row` for each. A row (a line, a JSON
/// element) longer than `max_row_bytes` rejects the whole file with one reason.
pub fn read_rows<R: Read, E>(
    format: MetadataFormat,
    input: R,
    max_row_bytes: u64,
    mut on_row: impl FnMut(RowRead) -> Result<(), E>,
) -> Result<(), ReadError<E>> {
    let budget = RowBudget::new(max_row_bytes);
    let input = Limited {
        inner: input,
        budget: budget.clone(),
    };
    match format {
        MetadataFormat::Csv => read_delimited(b',', true, input, &budget, &mut on_row),
        MetadataFormat::Tsv => read_delimited(b'\t', false, input, &budget, &mut on_row),
        MetadataFormat::JsonArray => read_json_array(input, &budget, &mut on_row),
        MetadataFormat::JsonLines => read_json_lines(input, &budget, &mut on_row),
    }
}

fn read_delimited<R: Read, E>(
    delimiter: u8,
    quoting: bool,
    input: R,
    budget: &RowBudget,
    on_row: &mut impl FnMut(RowRead) -> Result<(), E>,
) -> Result<(), ReadError<E>> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .quoting(quoting)
        .has_headers(false)
        .flexible(true)
        .from_reader(input);
    let mut record = csv::StringRecord::new();
    let file_error = |e: &csv::Error, row: u64| {
        ReadError::File(if budget.exceeded() {
            budget.reason(row)
        } else {
            csv_error_reason(e)
        })
    };
    let header: Vec<String> = match reader.read_record(&mut record) {
        Ok(true) => record.iter().map(clean_column_name).collect(),
        Ok(false) => return Err(ReadError::File("the file is empty: expected a header row".into())),
        Err(e) => return Err(file_error(&e, 1)),
    };
    if header.iter().all(|h| h.is_empty()) {
        return Err(ReadError::File("the header row is empty".into()));
    }
    // A set, not a scan per column: a header of 150,000 columns takes milliseconds.
    let mut seen = std::collections::HashSet::with_capacity(header.len());
    if let Some(name) = header
        .iter()
        .find(|name| !name.is_empty() && !seen.insert(name.as_str()))
    {
        return Err(ReadError::File(format!("column {name:?} appears twice in the header")));
    }
    let mut row = 1u64;
    loop {
        budget.next_row();
        match reader.read_record(&mut record) {
            Ok(false) => return Ok(()),
            Ok(true) => {
                row += 1;
                // A blank line is not a row (spreadsheets often end with one).
                if record.len() == 1 && record[0].trim().is_empty() {
                    continue;
                }
                let result = if record.len() != header.len() {
                    Err(format!(
                        "has {} fields but the header has {}",
                        record.len(),
                        header.len()
                    ))
                } else {
                    Ok(header.iter().cloned().zip(record.iter().map(str::to_owned)).collect())
                };
                on_row(RowRead { row, record: result }).map_err(ReadError::Callback)?;
            }
            Err(e) => return Err(file_error(&e, row + 1)),
        }
    }
}

fn csv_error_reason(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::Utf8 { pos, .. } => match pos {
            Some(p) => format!("not UTF-8 text (row {}); save the file as UTF-8", p.record() + 1),
            None => "not UTF-8 text; save the file as UTF-8".into(),
        },
        csv::ErrorKind::Io(io) => format!("cannot be read: {io}"),
        _ => format!("cannot be read as CSV: {e}"),
    }
}

/// A JSON value as a column value: strings as they are, null as empty, others as compact JSON.
fn json_to_text(v: serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s,
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn object_to_record(v: serde_json::Value) -> Result<Record, String> {
    match v {
        serde_json::Value::Object(map) => Ok(map
            .into_iter()
            .map(|(k, v)| (clean_column_name(&k), json_to_text(v)))
            .collect()),
        other => Err(format!("is a JSON {} but should be an object", json_kind(&other))),
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// Skips a UTF-8 BOM at the start of a buffered reader.
fn skip_bom<R: BufRead>(r: &mut R) -> std::io::Result<()> {
    let buf = r.fill_buf()?;
    if buf.starts_with(&[0xEF, 0xBB, 0xBF]) {
        r.consume(3);
    }
    Ok(())
}

fn read_json_array<R: Read, E>(
    input: R,
    budget: &RowBudget,
    on_row: &mut impl FnMut(RowRead) -> Result<(), E>,
) -> Result<(), ReadError<E>> {
    let mut input = BufReader::with_capacity(64 * 1024, input);
    skip_bom(&mut input).map_err(|e| ReadError::File(format!("cannot be read: {e}")))?;
    let mut callback_error = None;
    let mut de = serde_json::Deserializer::from_reader(input);
    let rows = Cell::new(0);
    let seed = ArraySeed {
        on_row,
        callback_error: &mut callback_error,
        rows: &rows,
        budget,
    };
    let outcome = seed.deserialize(&mut de).and_then(|rows| de.end().map(|_| rows));
    if let Some(e) = callback_error {
        return Err(ReadError::Callback(e));
    }
    match outcome {
        Ok(0) => Err(ReadError::File(
            "the JSON array is empty: no conversations in it".into(),
        )),
        Ok(_) => Ok(()),
        Err(_) if budget.exceeded() => Err(ReadError::File(budget.reason(rows.get() + 1))),
        Err(e) if e.is_data() && e.line() == 1 && e.column() <= 1 => Err(ReadError::File(
            "is not a JSON array of objects (name JSON Lines files .jsonl)".into(),
        )),
        Err(e) => Err(ReadError::File(json_error_reason(&e))),
    }
}

fn json_error_reason(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    if msg.contains("invalid unicode") || msg.contains("UTF-8") {
        format!("not UTF-8 text ({msg})")
    } else {
        format!("is not valid JSON: {msg}")
    }
}

/// Deserializes the top-level array element by element, handing each to the callback, so the
/// array is never held in memory.
struct ArraySeed<'a, F, E> {
    on_row: &'a mut F,
    callback_error: &'a mut Option<E>,
    rows: &'a Cell<u64>,
    budget: &'a RowBudget,
}

impl<'de, F, E> DeserializeSeed<'de> for ArraySeed<'_, F, E>
where
    F: FnMut(RowRead) -> Result<(), E>,
{
    type Value = u64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, F, E> Visitor<'de> for ArraySeed<'_, F, E>
where
    F: FnMut(RowRead) -> Result<(), E>,
{
    type Value = u64;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON array of objects")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        self.budget.next_row();
        while let Some(value) = seq.next_element::<serde_json::Value>()? {
            self.budget.next_row();
            self.rows.set(self.rows.get() + 1);
            if let Err(e) = (self.on_row)(RowRead {
                row: self.rows.get(),
                record: object_to_record(value),
            }) {
                *self.callback_error = Some(e);
                return Err(serde::de::Error::custom("stopped"));
            }
        }
        Ok(self.rows.get())
    }
}

fn read_json_lines<R: Read, E>(
    input: R,
    budget: &RowBudget,
    on_row: &mut impl FnMut(RowRead) -> Result<(), E>,
) -> Result<(), ReadError<E>> {
    let mut input = BufReader::with_capacity(64 * 1024, input);
    skip_bom(&mut input).map_err(|e| ReadError::File(format!("cannot be read: {e}")))?;
    let mut line = Vec::new();
    let mut row = 0u64;
    let mut rows = 0u64;
    loop {
        line.clear();
        budget.next_row();
        let n = input.read_until(b'\n', &mut line).map_err(|e| {
            ReadError::File(if budget.exceeded() {
                budget.reason(row + 1)
            } else {
                format!("cannot be read: {e}")
            })
        })?;
        if n == 0 {
            break;
        }
        row += 1;
        let text = std::str::from_utf8(&line).map_err(|_| ReadError::File(format!("not UTF-8 text (line {row})")))?;
        if text.trim().is_empty() {
            continue;
        }
        rows += 1;
        let record = serde_json::from_str::<serde_json::Value>(text)
            .map_err(|e| format!("is not valid JSON: {e}"))
            .and_then(object_to_record);
        on_row(RowRead { row, record }).map_err(ReadError::Callback)?;
    }
    if rows == 0 {
        return Err(ReadError::File("the file has no lines: no conversations in it".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    type Rows = Vec<(u64, Result<Record, String>)>;

    fn collect(format: MetadataFormat, bytes: &[u8]) -> Result<Rows, String> {
        let mut out = Vec::new();
        read_rows::<_, ()>(format, bytes, 1 << 20, |r| {
            out.push((r.row, r.record));
            Ok(())
        })
        .map_err(|e| match e {
            ReadError::File(reason) => reason,
            ReadError::Callback(()) => unreachable!("the callback never fails"),
        })?;
        Ok(out)
    }

    fn rec(pairs: &[(&str, &str)]) -> Record {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn csv_with_bom_crlf_quotes_and_blank_lines() {
        let rows = collect(
            MetadataFormat::Csv,
            b"\xEF\xBB\xBF id , name\r\n1,\"a, b\"\r\n\r\n2,\"line\nbreak\"\r\n",
        )
        .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0], (2, Ok(rec(&[("id", "1"), ("name", "a, b")]))));
        assert_eq!(rows[1].1, Ok(rec(&[("id", "2"), ("name", "line\nbreak")])));
    }

    #[test]
    fn csv_row_with_wrong_field_count_is_a_row_error() {
        let rows = collect(MetadataFormat::Csv, b"a,b\n1,2\n1,2,3\n4,5\n").unwrap();
        assert_eq!(rows[1].1, Err("has 3 fields but the header has 2".into()));
        assert!(rows[2].1.is_ok());
    }

    #[test]
    fn csv_file_level_errors() {
        assert!(collect(MetadataFormat::Csv, b"").unwrap_err().contains("empty"));
        assert!(
            collect(MetadataFormat::Csv, b"a,a\n1,2\n")
                .unwrap_err()
                .contains("appears twice")
        );
        assert!(
            collect(MetadataFormat::Csv, b"a,b\n1,\xff\xfe\n")
                .unwrap_err()
                .contains("not UTF-8")
        );
    }

    #[test]
    fn tsv_keeps_quotes_literally() {
        let rows = collect(MetadataFormat::Tsv, b"a\tb\n\"x\ty\n").unwrap();
        assert_eq!(rows[0].1, Ok(rec(&[("a", "\"x"), ("b", "y")])));
    }

    #[test]
    fn json_array_streams_objects_and_stringifies_values() {
        let rows = collect(
            MetadataFormat::JsonArray,
            b"\xEF\xBB\xBF[{\"id\":\"C1\",\"n\":3,\"ok\":true,\"x\":null,\"tags\":[1,2]}, 5]",
        )
        .unwrap();
        assert_eq!(
            rows[0],
            (
                1,
                Ok(rec(&[
                    ("id", "C1"),
                    ("n", "3"),
                    ("ok", "true"),
                    ("x", ""),
                    ("tags", "[1,2]")
                ]))
            )
        );
        assert_eq!(rows[1], (2, Err("is a JSON number but should be an object".into())));
    }

    #[test]
    fn json_file_level_errors() {
        assert!(
            collect(MetadataFormat::JsonArray, b"{\"a\":1}")
                .unwrap_err()
                .contains("array")
        );
        assert!(
            collect(MetadataFormat::JsonArray, b"[{\"a\":1},")
                .unwrap_err()
                .contains("not valid JSON")
        );
        assert!(collect(MetadataFormat::JsonArray, b"[]").unwrap_err().contains("empty"));
        assert!(
            collect(MetadataFormat::JsonArray, b"[{\"a\":1}] x")
                .unwrap_err()
                .contains("not valid JSON")
        );
    }

    #[test]
    fn json_lines_rows_fail_alone() {
        let rows = collect(MetadataFormat::JsonLines, b"{\"a\":\"1\"}\r\n\nnot json\n{\"a\":\"2\"}").unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0], (1, Ok(rec(&[("a", "1")]))));
        assert_eq!(rows[1].0, 3);
        assert!(rows[1].1.as_ref().unwrap_err().contains("not valid JSON"));
        assert_eq!(rows[2], (4, Ok(rec(&[("a", "2")]))));
    }

    #[test]
    fn memory_is_bounded_by_a_row_not_the_file() {
        // A reader that produces rows forever would never finish if the reader buffered the file;
        // here we check the callback sees rows before the input ends.
        struct Endless(u64);
        impl Read for Endless {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let line = if self.0 == 0 {
                    "[".to_string()
                } else {
                    format!("{{\"id\":\"{}\"}},", self.0)
                };
                self.0 += 1;
                let n = line.len().min(buf.len());
                buf[..n].copy_from_slice(&line.as_bytes()[..n]);
                Ok(n)
            }
        }
        let mut seen = 0;
        let r = read_rows(MetadataFormat::JsonArray, Endless(0), u64::MAX, |_| {
            seen += 1;
            if seen == 1000 { Err("enough") } else { Ok(()) }
        });
        assert!(matches!(r, Err(ReadError::Callback("enough"))));
    }

    #[test]
    fn a_row_over_the_limit_rejects_the_file_with_one_reason() {
        let long = "x".repeat(5000);
        for (format, text) in [
            (MetadataFormat::Csv, format!("a,b\n1,2\n3,{long}\n")),
            (
                MetadataFormat::JsonLines,
                format!("{{\"a\":1}}\n{{\"a\":\"{long}\"}}\n"),
            ),
            (
                MetadataFormat::JsonArray,
                format!("[{{\"a\":1}},\n{{\"a\":\"{long}\"}}]"),
            ),
        ] {
            let mut seen = 0;
            let r = read_rows::<_, ()>(format, text.as_bytes(), 1024, |_| {
                seen += 1;
                Ok(())
            });
            match r {
                Err(ReadError::File(reason)) => {
                    assert!(
                        reason.contains("longer than 1.0 KiB (matching.max_field_bytes)"),
                        "{format:?}: {reason}"
                    )
                }
                _ => panic!("{format:?} read past its limit"),
            }
            assert!(seen <= 1, "{format:?}");
        }
    }

    #[test]
    fn a_wide_header_is_checked_in_linear_time() {
        let columns: Vec<String> = (0..150_000).map(|i| format!("c{i}")).collect();
        let mut text = columns.join(",");
        text.push('\n');
        text.push_str(&vec!["v"; 150_000].join(","));
        text.push('\n');
        let mut rows = 0;
        read_rows::<_, ()>(MetadataFormat::Csv, text.as_bytes(), 4 << 20, |r| {
            assert_eq!(r.record.unwrap().len(), 150_000);
            rows += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(rows, 1);
        let dup = format!("{},c7\n{}\n", columns.join(","), vec!["v"; 150_001].join(","));
        match read_rows::<_, ()>(MetadataFormat::Csv, dup.as_bytes(), 4 << 20, |_| Ok(())) {
            Err(ReadError::File(reason)) => assert_eq!(reason, "column \"c7\" appears twice in the header"),
            _ => panic!("duplicate column not found"),
        }
    }
}
