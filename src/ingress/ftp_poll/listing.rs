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
    },
    /// A link or something else we do not follow.
    Other {
        name: String,
    },
}

impl Entry {
    pub fn name(&self) -> &str {
        match self {
            Entry::File { name, .. } | Entry::Dir { name } | Entry::Other { name } => name,
        }
    }
}

/// Which listing command a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Mlsd,
    List,
}

/// Parses the lines of one listing. Lines that are not entries ("total 12", the `.`/`..` of
/// MLSD, blank lines) are left out, and so are lines no parser understands.
pub fn parse(lines: &[String], format: Format) -> Vec<Entry> {
    lines
        .iter()
        .filter_map(|line| {
            let line = line.trim_end_matches(['\r', '\n']);
            let file = match format {
                Format::Mlsd => {
                    // cdir/pdir are the folder itself and its parent (RFC 3659 §7.5.1).
                    // An entry is "facts; name"; without a type (or a file without a size) we
                    // cannot tell what it is.
                    let facts = line.split_once("; ").map_or("", |(f, _)| f).to_ascii_lowercase() + ";";
                    let is_file = facts.contains("type=file;");
                    if !facts.contains("type=")
                        || (is_file && !facts.contains("size="))
                        || facts.contains("type=cdir;")
                        || facts.contains("type=pdir;")
                    {
                        return None;
                    }
                    ListParser::parse_mlsd(line).ok()?
                }
                Format::List => ListParser::parse_posix(line)
                    .or_else(|_| ListParser::parse_dos(line))
                    .ok()?,
            };
            entry(&file)
        })
        .collect()
}

fn entry(f: &File) -> Option<Entry> {
    let name = f.name().to_owned();
    if name.is_empty() || name == "." || name == ".." {
        return None;
    }
    Some(if f.is_directory() {
        Entry::Dir { name }
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
                "type=cdir;modify=20261121090000; .\n\
                 type=pdir;modify=20261121090000; ..\n\
                 type=file;size=1048576;modify=20261121093015.250; call 1.wav\n\
                 Type=dir;Modify=20261121093015; 2026-11\n\
                 type=OS.unix=slink:/etc;modify=20261121093015; link\n\
                 garbage",
            ),
            Format::Mlsd,
        );
        assert_eq!(
            got,
            vec![
                Entry::File {
                    name: "call 1.wav".into(),
                    size: 1_048_576,
                    mtime_ms: 1_795_253_415_250,
                },
                Entry::Dir { name: "2026-11".into() },
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
