//! Zip batches as a tenant could send them: unpacked flat into a temp folder or refused with a
//! reason, never a panic; nothing lands outside the folder, and the unpacked total stays within
//! the limit.
#![no_main]

use std::io::Write;
use std::sync::Arc;

use dropsync::arrival::{ZipLimits, ZipQuota, unpack_zip};
use dropsync::config::LiveConfig;
use dropsync::limits::Limits;
use dropsync::tenant::TenantId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("d.toml");
    std::fs::write(&file, "[[tenants]]\nid = \"acme\"\n").unwrap();
    let config = dropsync::config::load(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    let limits = Limits::new(LiveConfig::new(Arc::new(config)));
    let acme = TenantId::parse("acme").unwrap();
    let dest = dir.path().join("drop");
    std::fs::create_dir(&dest).unwrap();
    let mut archive = tempfile::tempfile().unwrap();
    archive.write_all(data).unwrap();
    let folder: std::os::fd::OwnedFd = std::fs::File::open(&dest).unwrap().into();
    let zip_limits = ZipLimits {
        max_unpacked: 1 << 20,
        max_entries: 64,
        max_ratio: 200,
    };
    let quota = ZipQuota {
        limits: &limits,
        tenant: &acme,
    };
    if let Ok(unpacked) = unpack_zip(archive, Arc::new(folder), "", &zip_limits, &quota) {
        let total: u64 = unpacked
            .files
            .iter()
            .map(|f| std::fs::metadata(dest.join(f.rel.as_str())).map(|m| m.len()).unwrap_or(0))
            .sum();
        assert!(total <= zip_limits.max_unpacked, "{total} bytes unpacked");
    }
    let beside: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(beside.len(), 1, "{beside:?}");
});
