//! Duration probing on arbitrary bytes under every recording extension: an error with a
//! reason, never a panic, a hang or a huge allocation.
#![no_main]

use std::io::{Seek, SeekFrom, Write};

use libfuzzer_sys::fuzz_target;

const EXTENSIONS: [&str; 11] = [
    "wav", "mp3", "flac", "ogg", "opus", "m4a", "aiff", "aif", "au", "gsm", "WAV",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let ext = EXTENSIONS[pick as usize % EXTENSIONS.len()];
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(bytes).unwrap();
    file.seek(SeekFrom::Start(0)).unwrap();
    let _ = dropsync::audio::duration_ms(&mut file, ext);
});
