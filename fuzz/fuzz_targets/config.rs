//! The configuration loader on arbitrary TOML: problems are reported with their key, never a
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dropsync.toml");
    std::fs::write(&path, data).unwrap();
    let _ = dropsync::config::load(&path);
});
