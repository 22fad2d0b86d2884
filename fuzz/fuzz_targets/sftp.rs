//! The SFTP dispatcher over an in-memory stream, with the confined file system in a temp
//! folder: after INIT, every request type with arbitrary bodies. Each packet of the input is
//! one length byte and that many bytes (type, then body), so the framing stays valid and the
//! fuzzer spends its time on the requests. The session must answer or end, never panic, and
//! nothing may appear outside the tenant's folder.
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use dropsync::config::LiveConfig;
use dropsync::ingress::sftp::fs::TenantFs;
use dropsync::ingress::sftp::pending::PendingUploads;
use dropsync::ingress::sftp::session::{SessionCtx, serve};
use dropsync::tenant::TenantId;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("dropsync.toml");
    std::fs::write(
        &config_file,
        "state_dir = \"var\"\n[sink]\ntype = \"dir\"\npath = \"var/outbox\"\n[[tenants]]\nid = \"acme\"\n",
    )
    .unwrap();
    let config = Arc::new(dropsync::config::load(&config_file).unwrap());
    let root = dir.path().join("var/drop/acme");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(dir.path().join("var/secret"), b"outside").unwrap();
    let live = LiveConfig::new(config);
    let fs = TenantFs::new(
        root.clone(),
        "acme",
        Arc::new(PendingUploads::default()),
        Default::default(),
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (arrivals, mut events) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move { while events.recv().await.is_some() {} });
        let ctx = SessionCtx {
            tenant: TenantId::parse("acme").unwrap(),
            fs,
            arrivals,
            max_file_size: 1 << 20,
            max_handles: 16,
            fsync_on_close: false,
            open_uploads: Default::default(),
            quotas: dropsync::limits::Limits::new(live.clone()),
            config: live,
        };
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let session = tokio::spawn(serve(server, ctx, async {}));
        let mut stream = vec![0, 0, 0, 5, 1, 0, 0, 0, 3];
        let mut rest = data;
        while let Some((&n, tail)) = rest.split_first() {
            let body = &tail[..(n as usize).min(tail.len())];
            rest = &tail[body.len()..];
            if body.is_empty() {
                continue;
            }
            stream.extend_from_slice(&(body.len() as u32).to_be_bytes());
            stream.extend_from_slice(body);
        }
        let (mut read, mut write) = tokio::io::split(&mut client);
        let writer = async {
            let _ = write.write_all(&stream).await;
            let _ = write.shutdown().await;
        };
        let reader = async {
            let mut sink = Vec::new();
            let _ = read.read_to_end(&mut sink).await;
        };
        let done = tokio::time::timeout(Duration::from_secs(5), async { tokio::join!(writer, reader) }).await;
        assert!(done.is_ok(), "the session neither answered nor ended");
        let _ = session.await;
    });
    // Nothing escaped the tenant's folder.
    assert_eq!(std::fs::read(dir.path().join("var/secret")).unwrap(), b"outside");
    let outside: Vec<_> = std::fs::read_dir(dir.path().join("var"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(outside.len() <= 2, "{outside:?}");
});
