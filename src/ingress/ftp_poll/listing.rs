//! Directory listings from FTP servers: MLSD (RFC 3659 §7, exact sizes and UTC times) when the
//! server has it, else LIST in the Unix `ls -l` or DOS/IIS format. Names come from a server we do
//! not control, so each one is checked before it can become a local path.

use std::time::UNIX_EPOCH;

use suppaftp::list::{File, ListParser};

/// One entry of a remote folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    File {
        name: String,
        size: u64,
        mtime_ms: i64,
    },
    Dir {
        name: String,
        /// MLSD's `unique` fact (RFC 3659 §7.5.2): the same folder reached twice (through a
        /// link the server shows as a folder) has the same one.
        unique: Option<String>,
    },
    /// A link or something else we do not follow.
    Other {
        name: String,
    },
    /// MLSD's entry for the listed folder itself (`type=cdir`), for its `unique` fact.
    Current {
        unique: String,
    },
}

impl Entry {
    pub fn name(&self) -> &str {
        match self {
            Entry::File { name, .. } | Entry::Dir { name, .. } | Entry::Other { name } => name,
            Entry::Current { .. } => ".",
        }
    }
}

/// Which listing command a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Mlsd,
    List,
}

/// Parses the lines of one listing. Lines that are not entries ("total 12", MLSD's parent
/// folder, blank lines) are left out, and so are lines no parser understands.
pub fn parse(lines: &[String], format: Format) -> Vec<Entry> {
    lines
        .iter()
        .filter_map(|line| {
            let line = line.trim_end_matches(['\r', '\n']);
            match format {
                Format::Mlsd => mlsd_entry(line),
                Format::List => entry(
                    &ListParser::parse_posix(line)
                        .or_else(|_| ListParser::parse_dos(line))
                        .ok()?,
                ),
            }
        })
        .collect()
}

/// One MLSD line (RFC 3659 §7.2): `fact=value;fact=value; name`. Parsed here rather than by
/// suppaftp, which drops a line with an empty fact (ProFTPD's `perm=;` on a folder the user
/// may not enter), and with it the very folder whose refusal must be reported.
fn mlsd_entry(line: &str) -> Option<Entry> {
    let (facts, name) = line.split_once(' ')?;
    let fact = |key: &str| {
        facts.split(';').find_map(|f| {
            let (k, v) = f.split_once('=')?;
            k.trim().eq_ignore_ascii_case(key).then_some(v)
        })
    };
    let unique = fact("unique").map(str::to_owned);
    let kind = fact("type")?.to_ascii_lowercase();
    let name = name.to_owned();
    // cdir/pdir are the folder itself and its parent (RFC 3659 §7.5.1).
    match kind.as_str() {
        "cdir" => unique.map(|unique| Entry::Current { unique }),
        "pdir" => None,
        _ if name.is_empty() || name == "." || name == ".." => None,
        "dir" => Some(Entry::Dir { name, unique }),
        // A file without a size cannot be checked once pulled.
        "file" => Some(Entry::File {
            name,
            size: fact("size")?.parse().ok()?,
            mtime_ms: fact("modify").and_then(mlsd_time).unwrap_or(0),
        }),
        _ => Some(Entry::Other { name }),
    }
}

/// `YYYYMMDDHHMMSS[.sss]` in UTC (RFC 3659 §2.3), as ms since the epoch.
fn mlsd_time(value: &str) -> Option<i64> {
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    let t = chrono::NaiveDateTime::parse_from_str(whole, "%Y%m%d%H%M%S").ok()?;
    let ms = match fraction.get(..fraction.len().min(3)) {
        Some(f) if !f.is_empty() => f.parse::<i64>().ok()? * 10_i64.pow(3 - f.len() as u32),
        _ => 0,
    };
    Some(t.and_utc().timestamp_millis() + ms)
}

fn entry(f: &File) -> Option<Entry> {
    let name = f.name().to_owned();
    if name.is_empty() || name == "." || name == ".." {
        return None;
    }
    Some(if f.is_directory() {
        Entry::Dir { name, unique: None }
    } else if f.is_file() {
        let mtime_ms = f
            .modified()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Entry::File {
            name,
            size: f.size() as u64,
            mtime_ms,
        }
    } else {
        Entry::Other { name }
    })
}

/// Why a remote name cannot be mirrored locally, if it cannot.
pub fn unsafe_name(name: &str) -> Option<&'static str> {
    if name.contains('/') || name.contains('\\') {
        Some("has a path separator in its name")
    } else if name.chars().any(char::is_control) {
        Some("has a control character in its name")
    } else if name.len() > 255 {
        Some("has a name longer than 255 bytes")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn mlsd_lines() {
        let got = parse(
            &lines(
                "type=cdir;modify=20261121090000;unique=FE00U1; .\n\
                 type=pdir;modify=20261121090000; ..\n\
                 type=file;size=1048576;modify=20261121093015.250; call 1.wav\n\
                 Type=dir;Modify=20261121093015;UNIQUE=fe00u2; 2026-11\n\
                 type=dir;modify=20261121093015; 2026-12\n\
                 modify=20261130113529;perm=;type=dir;unique=FE00U9BC9F1;UNIX.mode=00; locked\n\
                 type=OS.unix=slink:/etc;modify=20261121093015; link\n\
                 garbage",
            ),
            Format::Mlsd,
        );
        assert_eq!(
            got,
            vec![
                Entry::Current {
                    unique: "FE00U1".into()
                },
                Entry::File {
                    name: "call 1.wav".into(),
                    size: 1_048_576,
                    mtime_ms: 1_795_253_415_250,
                },
                Entry::Dir {
                    name: "2026-11".into(),
                    unique: Some("fe00u2".into()),
                },
                Entry::Dir {
                    name: "2026-12".into(),
                    unique: None,
                },
                Entry::Dir {
                    name: "locked".into(),
                    unique: Some("FE00U9BC9F1".into()),
                },
                Entry::Other { name: "link".into() },
            ]
        );
    }

    #[test]
    fn unix_and_dos_list_lines() {
        let got = parse(
            &lines(
                "total 8\n\
                 -rw-r--r--    1 1000     1000         2048 Jan 05  2025 a.wav\n\
                 drwxr-xr-x    2 1000     1000         4096 Jan 05  2025 sub\n\
                 lrwxrwxrwx    1 1000     1000            4 Jan 05  2025 l -> a.wav\n\
                 01-05-25  03:19PM                 1234 b.csv\n\
                 01-05-25  03:19PM       <DIR>          old",
            ),
            Format::List,
        );
        let names: Vec<_> = got
            .iter()
            .map(|e| (e.name().to_owned(), matches!(e, Entry::Dir { .. })))
            .collect();
        assert_eq!(
            names,
            vec![
                ("a.wav".into(), false),
                ("sub".into(), true),
                ("l".into(), false),
                ("b.csv".into(), false),
                ("old".into(), true),
            ]
        );
        assert!(matches!(got[0], Entry::File { size: 2048, .. }));
        assert!(matches!(got[2], Entry::Other { .. }), "links are not followed");
        assert!(matches!(got[3], Entry::File { size: 1234, .. }));
    }

    #[test]
    fn unsafe_names() {
        for bad in ["a/b", "a\\b", "a\nb", &"x".repeat(256)] {
            assert!(unsafe_name(bad).is_some(), "{bad:?}");
        }
        assert_eq!(unsafe_name("call 1 (copy).wav"), None);
    }
}
