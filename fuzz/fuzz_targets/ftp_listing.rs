//! FTP listings as a hostile server could send them (MLSD, Unix and DOS LIST): parsed into
//! entries or skipped, and every name checked before it could become a path.
#![no_main]

use dropsync::ingress::ftp_poll::listing::{self, Entry, Format};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for format in [Format::Mlsd, Format::List] {
        for entry in listing::parse(&lines, format) {
            if !matches!(entry, Entry::Current { .. }) {
                let _ = listing::unsafe_name(entry.name());
            }
        }
    }
});
